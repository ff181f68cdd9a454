//! A chat model from one GGUF file: the tokenizer rebuilt from the file's metadata, the chat
//! template the file carries (`tokenizer.chat_template`, rendered with minijinja the way
//! transformers' `apply_chat_template` renders it with jinja2), and generation through
//! [`Llama`](super::llama::Llama).
//!
//! ```no_run
//! # use prompt2model::models::{chat::{ChatModel, ChatMessage}, sampling::SamplingConfig};
//! let model = ChatModel::load(std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"), tch::Device::cuda_if_available())?;
//! let reply = model.chat(&[ChatMessage::user("What is 2 + 2?")], &SamplingConfig::greedy(32))?;
//! # anyhow::Ok(())
//! ```

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::json;
use tch::Device;
use tokenizers::Tokenizer;

use super::gguf::{GgufFile, GgufValue, GgufValueType};
use super::llama::{Generated, Llama, Steer, SteeredRow};
use super::precision::Precision;
use super::sampling::SamplingConfig;

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// GPT-2's byte → printable-character table (`bytes_to_unicode`): byte-level BPE vocabularies spell
/// every byte as one of these characters (space is `Ġ`, newline `Ċ`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

/// Which pre-tokenization a rebuilt tokenizer follows where the two references disagree.
///
/// For the StarCoder family of `tokenizer.ggml.pre` names (`smollm`, `starcoder`, `refact`, ...)
/// the original `tokenizer.json` (and llama.cpp) splits every digit into its own pre-token before
/// GPT-2's regex, while transformers' GGUF loader ignores the name and applies GPT-2's regex alone.
/// The two give the same ids on ASCII digits (these vocabularies have no multi-digit tokens and
/// no `Ġ`+digit merges) but differ where a space or another numeric character meets a non-ASCII
/// numeric one: `" ½"` is `[216, 16738]` (`Ġ`, `½`) originally and `[3351, 138]` in transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenizerFlavor {
    /// The tokenizer the model was trained with (= llama.cpp): the default.
    #[default]
    Original,
    /// Exactly what `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds.
    TransformersGguf,
}

/// The pre-tokenizer (as tokenizer.json) for llama.cpp's `tokenizer.ggml.pre` names of byte-level
/// vocabularies. The names and their splits follow llama.cpp's `llama-vocab.cpp`, which mirror the
/// `tokenizer.json` of the original models.
fn pre_tokenizer_for(pre: &str, flavor: TokenizerFlavor) -> Result<serde_json::Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    // Llama 3's split (also used by several derivatives).
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Ok(match pre {
        // GPT-2's own regex inside ByteLevel.
        "default" | "gpt-2" | "gpt2" | "phi-2" | "olmo" | "jais" => byte_level(true),
        // StarCoder-family vocabularies (SmolLM, SmolLM2 among them): every digit is its own
        // pre-token (`Digits(individual_digits=True)`), then GPT-2's split. This is the
        // `tokenizer.json` of HuggingFaceTB/SmolLM2-*; llama.cpp's regex is `\p{N}` then GPT-2's.
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "command-r"
            if flavor == TokenizerFlavor::TransformersGguf =>
        {
            byte_level(true)
        }
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "command-r" => {
            json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
            })
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "smaug-bpe" | "dbrx" => {
            split(LLAMA3)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2),
        other => bail!("tokenizer.ggml.pre `{other}` is not supported by this tokenizer builder"),
    })
}

/// llama.cpp's `tokenizer.ggml.pre` name of a tokenizer.json's pre-tokenizer: the name whose
/// split [`pre_tokenizer_for`] builds is the file's (both read through `tokenizers`, so spelling
/// differences of the JSON do not matter).
fn pre_tokenizer_name(tokenizer: &serde_json::Value, source: &Path) -> Result<String> {
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    let canonical = |v: &serde_json::Value| -> Option<serde_json::Value> {
        let p: PreTokenizerWrapper = serde_json::from_value(v.clone()).ok()?;
        serde_json::to_value(p).ok()
    };
    let ours = canonical(&tokenizer["pre_tokenizer"]);
    for name in ["smollm", "gpt-2", "llama-bpe", "qwen2"] {
        let theirs = pre_tokenizer_for(name, TokenizerFlavor::Original)?;
        if ours.is_some() && canonical(&theirs) == ours {
            return Ok(name.to_string());
        }
    }
    bail!(
        "{}: its pre_tokenizer {} is none of the byte-level splits llama.cpp names (smollm, gpt-2, llama-bpe, qwen2)",
        source.display(),
        crate::util::text::excerpt(&tokenizer["pre_tokenizer"].to_string(), 200)
    )
}

/// Whether a tokenizer.json's post-processor adds BOS (a special token before the sequence) and
/// EOS (one after it); `(false, false)` for none or one that adds nothing (ByteLevel).
fn added_specials(post: &serde_json::Value) -> (bool, bool) {
    let Some(single) = post["single"].as_array().filter(|_| post["type"] == "TemplateProcessing")
    else {
        return (false, false);
    };
    let seq = single.iter().position(|p| p.get("Sequence").is_some()).unwrap_or(single.len());
    let special = |p: &serde_json::Value| p.get("SpecialToken").is_some();
    (single[..seq].iter().any(special), single[seq..].iter().any(special))
}

/// A `tokenizers::Tokenizer` rebuilt from a GGUF's `tokenizer.ggml.*` metadata, with the special
/// token ids the model and chat template need.
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub unk_token_id: Option<i64>,
    /// Token strings of the ids above (what chat templates see as `bos_token`, ...).
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
}

impl GgufTokenizer {
    /// The tokenizer.json (tokenizers' serialisation) this file describes.
    ///
    /// Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is built; SentencePiece vocabularies
    /// (`"llama"`) are refused with an error. What it builds is what transformers builds from the
    /// same file (`integrations/gguf/gguf_tokenizer_mapping.py`): the vocabulary in file order
    /// (tokens outside the byte alphabet re-spelled byte by byte), the file's merges, control
    /// tokens (type 3) as special added tokens, user-defined ones (type 4) as plain added tokens,
    /// ByteLevel decoding; BOS / EOS added by a post-processor only when the file asks for it.
    pub fn tokenizer_json(g: &GgufFile, flavor: TokenizerFlavor) -> Result<serde_json::Value> {
        let model = g.get_str("tokenizer.ggml.model")?;
        ensure!(
            model == "gpt2",
            "{}: tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)",
            g.path().display()
        );
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let types = g.get_i64_array_opt("tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            ensure!(
                t.len() == tokens.len(),
                "{}: {} token types for {} tokens",
                g.path().display(),
                t.len(),
                tokens.len()
            );
        }
        let pre = g.get_str_opt("tokenizer.ggml.pre")?.unwrap_or("default");
        let table = bytes_to_unicode();
        let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
        let spell = |t: &str| -> String {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        };

        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // A duplicated spelling keeps its first id, as a Python dict comprehension keeps the last;
            // both are unreachable for well-formed files, so refuse them instead of choosing.
            ensure!(
                vocab.insert(spell(t), json!(i)).is_none(),
                "{}: token {t:?} appears twice in the vocabulary",
                g.path().display()
            );
        }
        let merges: Vec<serde_json::Value> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| anyhow!("merge {m:?} is not `left right`"))
            })
            .collect::<Result<_>>()?;

        let mut added = Vec::new();
        if let Some(types) = &types {
            for (i, (&t, &ty)) in tokens.iter().zip(types).enumerate() {
                // Control tokens spelled outside the byte alphabet are llama.cpp mislabels
                // (transformers skips them too).
                let special = ty == 3 && t.chars().all(|c| alphabet.contains(&c));
                if special || ty == 4 {
                    added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
                }
            }
        }

        let id = |k: &str| g.get_i64_opt(k);
        let add_bos = g.get_bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = g.get_bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let post = if add_bos || add_eos {
            let mut single = vec![];
            let mut special = serde_json::Map::new();
            let mut piece = |key: &str, single: &mut Vec<serde_json::Value>| -> Result<()> {
                let tid = id(key)?
                    .ok_or_else(|| anyhow!("{key} is required when the file asks to add it"))?;
                let tok = tokens
                    .get(tid as usize)
                    .ok_or_else(|| anyhow!("{key} {tid} outside the vocabulary"))?
                    .to_string();
                single.push(json!({"SpecialToken": {"id": tok, "type_id": 0}}));
                special.insert(tok.clone(), json!({"id": tok, "ids": [tid], "tokens": [tok]}));
                Ok(())
            };
            if add_bos {
                piece("tokenizer.ggml.bos_token_id", &mut single)?;
            }
            single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
            if add_eos {
                piece("tokenizer.ggml.eos_token_id", &mut single)?;
            }
            let mut pair = single.clone();
            pair.extend(single.iter().map(|p| {
                if p.get("Sequence").is_some() {
                    json!({"Sequence": {"id": "B", "type_id": 1}})
                } else {
                    p.clone()
                }
            }));
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
        } else {
            serde_json::Value::Null
        };

        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer_for(pre, flavor)?,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        }))
    }

    /// The `tokenizer.ggml.*` metadata (model, pre-tokenizer name, tokens, their types, merges,
    /// whether BOS / EOS are added) of a byte-level BPE `tokenizer.json`: the inverse of
    /// [`GgufTokenizer::tokenizer_json`], which rebuilds the same tokenizer from it. The special
    /// token ids are the model's ([`super::llama::LlamaConfig::gguf_metadata`]). `vocab_size` is
    /// the model's embedding rows: ids the tokenizer does not use become `[PAD<id>]` tokens of
    /// type unused (5), as `convert_hf_to_gguf.py` pads them. `source` names the file in errors.
    pub fn gguf_metadata(
        tokenizer: &serde_json::Value,
        vocab_size: usize,
        source: &Path,
    ) -> Result<Vec<(String, GgufValue)>> {
        let at = source.display();
        let model = &tokenizer["model"];
        ensure!(
            model["type"] == "BPE",
            "{at}: model.type {} is not BPE: only byte-level BPE tokenizers go into a GGUF here",
            model["type"]
        );
        ensure!(
            tokenizer["normalizer"].is_null(),
            "{at}: a normalizer is set; llama.cpp's byte-level BPE has none"
        );
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![1i32; vocab_size]; // normal
        let mut place = |id: u64, text: &str| -> Result<()> {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                anyhow!(
                    "{at}: token {text:?} has id {id}, outside the model's {vocab_size} embeddings"
                )
            })?;
            *slot = Some(text.to_string());
            Ok(())
        };
        let vocab = model["vocab"].as_object().ok_or_else(|| anyhow!("{at}: no model.vocab"))?;
        for (text, id) in vocab {
            place(id.as_u64().ok_or_else(|| anyhow!("{at}: vocab id of {text:?}"))?, text)?;
        }
        for t in tokenizer["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
                bail!("{at}: an added token without id or content: {t}")
            };
            place(id, text)?;
            // Control (3) for special tokens, user-defined (4) otherwise: what tokenizer_json reads.
            types[id as usize] = if t["special"].as_bool().unwrap_or(false) { 3 } else { 4 };
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = 5; // unused
                    format!("[PAD{i}]")
                })
            })
            .collect();
        let merges: Vec<String> = model["merges"]
            .as_array()
            .ok_or_else(|| anyhow!("{at}: no model.merges"))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(pair) if pair.len() == 2 => Ok(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or(""),
                    pair[1].as_str().unwrap_or("")
                )),
                other => bail!("{at}: merge {other} is neither `a b` nor [a, b]"),
            })
            .collect::<Result<_>>()?;
        let (add_bos, add_eos) = added_specials(&tokenizer["post_processor"]);
        Ok(vec![
            ("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into())),
            (
                "tokenizer.ggml.pre".into(),
                GgufValue::String(pre_tokenizer_name(tokenizer, source)?),
            ),
            ("tokenizer.ggml.tokens".into(), GgufValue::strings(tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                GgufValue::Array(
                    GgufValueType::I32,
                    types.into_iter().map(GgufValue::I32).collect(),
                ),
            ),
            ("tokenizer.ggml.merges".into(), GgufValue::strings(merges)),
            ("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(add_bos)),
            ("tokenizer.ggml.add_eos_token".into(), GgufValue::Bool(add_eos)),
        ])
    }

    /// The tokenizer the model was trained with ([`TokenizerFlavor::Original`]).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        Self::from_gguf_flavor(g, TokenizerFlavor::Original)
    }

    pub fn from_gguf_flavor(g: &GgufFile, flavor: TokenizerFlavor) -> Result<Self> {
        let spec = Self::tokenizer_json(g, flavor)?;
        let tokenizer = Tokenizer::from_bytes(serde_json::to_vec(&spec)?)
            .map_err(|e| anyhow!("{}: building the tokenizer: {e}", g.path().display()))?;
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let name = |id: Option<i64>| id.and_then(|i| tokens.get(i as usize)).map(|s| s.to_string());
        let bos = g.get_i64_opt("tokenizer.ggml.bos_token_id")?;
        let eos = g.get_i64_opt("tokenizer.ggml.eos_token_id")?;
        let pad = g.get_i64_opt("tokenizer.ggml.padding_token_id")?;
        let unk = g.get_i64_opt("tokenizer.ggml.unknown_token_id")?;
        Ok(GgufTokenizer {
            tokenizer,
            bos_token_id: bos,
            eos_token_id: eos,
            pad_token_id: pad,
            unk_token_id: unk,
            bos_token: name(bos),
            eos_token: name(eos),
            pad_token: name(pad),
            unk_token: name(unk),
            add_bos_token: g.get_bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            add_eos_token: g.get_bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds BOS / EOS where the file asks for them (as
    /// `tokenizer(text)` does; `apply_chat_template` encodes without).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i))
            .collect::<Result<_, _>>()
            .context("negative token id")?;
        self.tokenizer.decode(&ids, skip_special_tokens).map_err(|e| anyhow!("detokenizing: {e}"))
    }

    /// The underlying `tokenizers` tokenizer (e.g. to save it as tokenizer.json).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

// ---------------------------------------------------------------------------------------------
// Chat template
// ---------------------------------------------------------------------------------------------

/// Who speaks a chat turn. Serialises as transformers' role strings (`"system"`, `"user"`,
/// `"assistant"`), which is what chat templates compare against and what the teacher's request
/// JSON (and so its cache keys) carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat turn, as transformers' message dicts (`{"role": ..., "content": ...}`): the input of
/// the chat template here and of every teacher backend (re-exported as `teacher::ChatMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage { role, content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which is what transformers'
/// `tojson` filter does (jinja2's own `tojson`, and minijinja's, escape `<>&'` for HTML; chat
/// templates must not). Separators are Python's defaults: `", "` and `": "` without indent, `","`
/// and `": "` with one.
fn py_json(
    v: &minijinja::Value,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let nl = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("tojson: {e}"),
                    )
                })?;
                // Python's float repr: shortest round-trip, always with a '.' or exponent.
                let s = if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
                    format!("{f:.1}")
                } else {
                    format!("{f:?}")
                };
                out.push_str(match s.as_str() {
                    "NaN" => "NaN",
                    "inf" => "Infinity",
                    "-inf" => "-Infinity",
                    s => s,
                });
            }
        }
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<minijinja::Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_json(item, indent, level + 1, out)?;
            }
            if !items.is_empty() {
                nl(out, level);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<minijinja::Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&serde_json::to_string(&k.to_string()).unwrap());
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, level + 1, out)?;
            }
            if !keys.is_empty() {
                nl(out, level);
            }
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap()),
    }
    Ok(())
}

/// A Hugging Face chat template compiled with minijinja, configured as transformers configures
/// jinja2 for `apply_chat_template`: `trim_blocks`, `lstrip_blocks`, loop controls, the
/// `raise_exception` and `strftime_now` globals, Python-style `tojson`, and Python string / dict
/// methods (`.strip()`, `.startswith()`, `.items()`, ...) through minijinja-contrib's pycompat.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<minijinja::Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("chat template raised: {msg}"),
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_filter(
            "tojson",
            |v: minijinja::Value,
             kwargs: minijinja::value::Kwargs|
             -> Result<String, minijinja::Error> {
                let indent: Option<usize> = kwargs.get("indent")?;
                kwargs.assert_all_used()?;
                let mut s = String::new();
                py_json(&v, indent, 0, &mut s)?;
                Ok(s)
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("compiling the chat template: {e:#}"))?;
        Ok(ChatTemplate { env })
    }

    /// Render `messages`; `extra` holds the other variables transformers passes (`bos_token`,
    /// `eos_token`, ...).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        // Built from minijinja values (not a serde_json map, which would sort keys) so that a
        // message renders its keys in declaration order, as a Python dict would.
        let extra = minijinja::Value::from_serialize(extra);
        let ctx = minijinja::context! {
            messages => minijinja::Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            ..extra
        };
        let tmpl = self.env.get_template("chat")?;
        tmpl.render(ctx).map_err(|e| anyhow!("rendering the chat template: {e:#}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Chat model
// ---------------------------------------------------------------------------------------------

/// A generation with its token counts (for cost accounting).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    /// The generated text, special tokens removed.
    pub text: String,
    /// Tokens of the prompt (after the chat template), without padding.
    pub prompt_tokens: usize,
    /// Tokens generated, the closing EOS included when there is one.
    pub completion_tokens: usize,
    /// Generation ended on an EOS token (rather than on `max_new_tokens`).
    pub stopped_on_eos: bool,
}

/// One request of [`ChatModel::chat_json_requests`]: a conversation, its number of choices and
/// its sampling (seed included).
#[derive(Debug, Clone)]
pub struct JsonRequest {
    pub messages: Vec<ChatMessage>,
    pub n: usize,
    pub sampling: SamplingConfig,
}

/// Token budget of one value in structured (JSON-field) generation.
pub const MAX_JSON_FIELD_TOKENS: usize = 64;

/// Which library runs a [`ChatModel`]'s forward passes when it generates. Tokenisation, the chat
/// template and sampling are ours either way (see [`crate::models::llama_cpp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecodingEngine {
    /// tch: the weights dequantised to f32 (or bf16, [`ChatModel::set_precision`]); fastest for
    /// batches (a generator round, an executor batch), and what the parity tests check.
    #[default]
    Libtorch,
    /// llama.cpp in process, on the GGUF's quantised blocks: about 3× the tch engine at batch 1
    /// (`benches/README.md`). Needs the `llama-cpp` cargo feature (on by default).
    LlamaCpp,
}

impl DecodingEngine {
    pub fn is_libtorch(&self) -> bool {
        *self == DecodingEngine::Libtorch
    }

    /// Checks that `precision` means something on this engine: llama.cpp multiplies the GGUF's
    /// own quantised weights, so a non-f32 precision (which casts libtorch's weights) would change
    /// nothing yet name a precision in reports. `names` are the two settings as the user set
    /// them (flags or file fields), for the message.
    pub fn check_precision(self, precision: Precision, names: (&str, &str)) -> Result<()> {
        if !self.is_libtorch() && !precision.is_f32() {
            bail!(
                "{} {precision} is the libtorch engine's: llama.cpp multiplies the GGUF's own \
                 quantised weights (drop {} or set {} libtorch)",
                names.0,
                names.0,
                names.1
            );
        }
        Ok(())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DecodingEngine::Libtorch => "libtorch",
            DecodingEngine::LlamaCpp => "llama-cpp",
        }
    }
}

impl std::fmt::Display for DecodingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DecodingEngine {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "libtorch" | "tch" | "torch" => Ok(DecodingEngine::Libtorch),
            "llama-cpp" | "llama.cpp" | "llamacpp" => Ok(DecodingEngine::LlamaCpp),
            other => bail!("unknown decoding engine `{other}`: use `libtorch` or `llama-cpp`"),
        }
    }
}

/// A llama-family chat model loaded from one GGUF file.
pub struct ChatModel {
    model: Llama,
    path: std::path::PathBuf,
    /// Set by [`ChatModel::set_engine`]: generation runs on llama.cpp instead of `model`.
    #[cfg(feature = "llama-cpp")]
    llama_cpp: Option<super::llama_cpp::LlamaCppEngine>,
    tokenizer: GgufTokenizer,
    template: Option<ChatTemplate>,
    template_vars: serde_json::Map<String, serde_json::Value>,
    eos_token_ids: Vec<i64>,
    pad_token_id: i64,
    /// Rows generated together; longer inputs are split into batches of this size.
    pub max_batch: usize,
    /// Tokens containing `"` (structured generation stops a value on them), found once.
    quote_tokens: std::sync::OnceLock<Vec<i64>>,
}

impl ChatModel {
    /// Load the model, tokenizer ([`TokenizerFlavor::Original`]) and chat template from a GGUF file.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::load_with_flavor(path, device, TokenizerFlavor::Original)
    }

    /// As [`load`](Self::load), choosing the tokenizer flavor.
    pub fn load_with_flavor(path: &Path, device: Device, flavor: TokenizerFlavor) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let model = Llama::from_gguf(&g, device)
            .with_context(|| format!("loading the model from {}", path.display()))?;
        let tokenizer = GgufTokenizer::from_gguf_flavor(&g, flavor)?;
        let template =
            g.get_str_opt("tokenizer.chat_template")?.map(ChatTemplate::new).transpose()?;
        let mut template_vars = serde_json::Map::new();
        for (k, v) in [
            ("bos_token", &tokenizer.bos_token),
            ("eos_token", &tokenizer.eos_token),
            ("pad_token", &tokenizer.pad_token),
            ("unk_token", &tokenizer.unk_token),
        ] {
            if let Some(v) = v {
                template_vars.insert(k.into(), json!(v));
            }
        }
        let mut eos_token_ids = model.config.eos_token_ids.clone();
        if eos_token_ids.is_empty() {
            bail!("{}: no EOS token id in the metadata", path.display());
        }
        eos_token_ids.dedup();
        // transformers pads with the pad token, or with EOS when there is none.
        let pad_token_id = tokenizer.pad_token_id.unwrap_or(eos_token_ids[0]);
        Ok(ChatModel {
            model,
            path: path.to_path_buf(),
            #[cfg(feature = "llama-cpp")]
            llama_cpp: None,
            tokenizer,
            template,
            template_vars,
            eos_token_ids,
            pad_token_id,
            max_batch: 32,
            quote_tokens: Default::default(),
        })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The precision the weights are stored and multiplied in (see
    /// [`crate::models::precision`]); f32 by default, bf16 halves the bytes each token reads.
    pub fn set_precision(&mut self, precision: Precision) {
        self.model.set_inference_precision(precision);
    }

    /// Generate with `engine` from now on. llama.cpp loads the same GGUF file and computes on as
    /// many threads as libtorch does (`OMP_NUM_THREADS`); the tch model stays loaded beside it.
    pub fn set_engine(&mut self, engine: DecodingEngine) -> Result<()> {
        match engine {
            DecodingEngine::Libtorch => {
                #[cfg(feature = "llama-cpp")]
                {
                    self.llama_cpp = None;
                }
                Ok(())
            }
            #[cfg(feature = "llama-cpp")]
            DecodingEngine::LlamaCpp => {
                let threads = tch::get_num_threads().max(1) as usize;
                self.llama_cpp = Some(super::llama_cpp::LlamaCppEngine::load(&self.path, threads)?);
                Ok(())
            }
            #[cfg(not(feature = "llama-cpp"))]
            DecodingEngine::LlamaCpp => bail!(
                "this build has no llama.cpp to decode {} with: build with the default features \
                 (the `llama-cpp` feature needs cmake and libclang, which scripts/setup.sh \
                 installs)",
                self.path.display()
            ),
        }
    }

    pub fn engine(&self) -> DecodingEngine {
        #[cfg(feature = "llama-cpp")]
        if self.llama_cpp.is_some() {
            return DecodingEngine::LlamaCpp;
        }
        DecodingEngine::Libtorch
    }

    /// [`Llama::generate_steered`] on the engine in use.
    fn generate_steered(
        &self,
        rows: &[SteeredRow],
        generators: &[SamplingConfig],
        steer: &mut dyn FnMut(usize, i64) -> Steer,
    ) -> Result<Vec<Generated>> {
        #[cfg(feature = "llama-cpp")]
        if let Some(engine) = &self.llama_cpp {
            return engine.generate_steered(rows, generators, steer);
        }
        self.model.generate_steered(rows, generators, self.pad_token_id, steer)
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The conversation as the prompt text (`apply_chat_template(..., tokenize=False)`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| anyhow!("the GGUF file has no tokenizer.chat_template"))?;
        t.render(messages, add_generation_prompt, &self.template_vars)
    }

    /// The prompt token ids of a conversation (`apply_chat_template(..., tokenize=True)`, which
    /// encodes without adding special tokens: the template writes them).
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<i64>> {
        let text = self.apply_chat_template(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Generate from token-id prompts, in batches of `max_batch`.
    pub fn generate_ids(
        &self,
        prompts: &[Vec<i64>],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Generated>> {
        let mut out = Vec::with_capacity(prompts.len());
        let mut stop_at_eos = super::llama::stop_at_eos(&self.eos_token_ids);
        for chunk in prompts.chunks(self.max_batch.max(1)) {
            let rows: Vec<SteeredRow> =
                chunk.iter().map(|p| SteeredRow { prompt: p.clone(), generator: 0 }).collect();
            out.extend(self.generate_steered(
                &rows,
                std::slice::from_ref(cfg),
                &mut stop_at_eos,
            )?);
        }
        Ok(out)
    }

    fn finish(&self, prompts: &[Vec<i64>], cfg: &SamplingConfig) -> Result<Vec<Completion>> {
        let gens = self.generate_ids(prompts, cfg)?;
        prompts
            .iter()
            .zip(gens)
            .map(|(p, g)| {
                Ok(Completion {
                    text: self.tokenizer.decode(&g.tokens, true)?,
                    prompt_tokens: p.len(),
                    completion_tokens: g.tokens.len(),
                    stopped_on_eos: g.stopped_on_eos,
                })
            })
            .collect()
    }

    /// Reply to one conversation, with token counts.
    pub fn chat_with_usage(
        &self,
        messages: &[ChatMessage],
        cfg: &SamplingConfig,
    ) -> Result<Completion> {
        Ok(self.chat_batch_with_usage(&[messages.to_vec()], cfg)?.remove(0))
    }

    /// Reply to several conversations (batched, left-padded), with token counts.
    pub fn chat_batch_with_usage(
        &self,
        conversations: &[Vec<ChatMessage>],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Completion>> {
        let prompts =
            conversations.iter().map(|m| self.chat_prompt_ids(m)).collect::<Result<Vec<_>>>()?;
        self.finish(&prompts, cfg)
    }

    /// Raw completion of text prompts (no chat template; BOS added only if the file asks), with
    /// token counts.
    pub fn complete_with_usage(
        &self,
        prompts: &[String],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Completion>> {
        let ids =
            prompts.iter().map(|p| self.tokenizer.encode(p, true)).collect::<Result<Vec<_>>>()?;
        ensure!(ids.iter().all(|p| !p.is_empty()), "an empty prompt has no token to continue from");
        self.finish(&ids, cfg)
    }

    /// Replies that are a flat JSON object of string `fields`, decoded field by field (at most
    /// [`MAX_JSON_FIELD_TOKENS`] tokens each): after the chat prompt the object's opening
    /// (`{"input": "`) is forced, the model writes the value until it samples a token containing
    /// `"` (or EOS, or reaches the field's budget), the value is cut at the quote, and the next
    /// field's key (`", "output": "`) is forced in place of that token, all in one generation pass
    /// (one prefill per distinct prompt). The reply is the object serialised by serde (so always
    /// valid JSON); `completion_tokens` counts the sampled tokens. All rows draw from one
    /// generator seeded with `cfg.seed`.
    pub fn chat_json_batch_with_usage(
        &self,
        conversations: &[Vec<ChatMessage>],
        fields: &[String],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Completion>> {
        let prompts: Vec<Vec<i64>> =
            conversations.iter().map(|m| self.chat_prompt_ids(m)).collect::<Result<_>>()?;
        let rows: Vec<(Vec<i64>, usize)> = prompts.into_iter().map(|p| (p, 0)).collect();
        self.json_rows(&rows, std::slice::from_ref(cfg), fields)
    }

    /// Several structured requests generated together (as one batch of all their choices, in
    /// chunks of whole requests of at most `max_batch` rows): request `i`'s `n` choices share one
    /// prefill and draw from a generator seeded with its own `sampling.seed`, so a request's
    /// replies do not depend on the sampling of the requests batched with it.
    pub fn chat_json_requests(
        &self,
        requests: &[JsonRequest],
        fields: &[String],
    ) -> Result<Vec<Vec<Completion>>> {
        let mut out = Vec::with_capacity(requests.len());
        let mut start = 0;
        while start < requests.len() {
            // Whole requests up to `max_batch` rows (at least one request).
            let mut end = start + 1;
            let mut rows = requests[start].n.max(1);
            while end < requests.len() && rows + requests[end].n.max(1) <= self.max_batch.max(1) {
                rows += requests[end].n.max(1);
                end += 1;
            }
            let chunk = &requests[start..end];
            let mut batch: Vec<(Vec<i64>, usize)> = Vec::with_capacity(rows);
            for (g, req) in chunk.iter().enumerate() {
                let ids = self.chat_prompt_ids(&req.messages)?;
                batch.extend(std::iter::repeat_n((ids, g), req.n.max(1)));
            }
            let samplings: Vec<SamplingConfig> = chunk.iter().map(|r| r.sampling.clone()).collect();
            let mut completions = self.json_rows(&batch, &samplings, fields)?.into_iter();
            for req in chunk {
                out.push(completions.by_ref().take(req.n.max(1)).collect());
            }
            start = end;
        }
        Ok(out)
    }

    /// The structured decoder behind both entry points: `rows` are (chat prompt ids, index into
    /// `samplings`).
    fn json_rows(
        &self,
        rows: &[(Vec<i64>, usize)],
        samplings: &[SamplingConfig],
        fields: &[String],
    ) -> Result<Vec<Completion>> {
        ensure!(!fields.is_empty(), "structured generation needs at least one field");
        let quote_tokens = self.quote_token_ids()?;
        let opening = self.tokenizer.encode(&format!("{{\"{}\": \"", fields[0]), false)?;
        let steered: Vec<SteeredRow> = rows
            .iter()
            .map(|(ids, g)| SteeredRow {
                prompt: ids.iter().chain(&opening).copied().collect(),
                generator: *g,
            })
            .collect();
        // A small model often never closes a value: a per-field cap keeps one runaway field from
        // spending the whole budget (a dataset example's field is a sentence or two).
        let caps: Vec<usize> =
            samplings.iter().map(|s| s.max_new_tokens.clamp(1, MAX_JSON_FIELD_TOKENS)).collect();
        // Room for every field's value and the forced keys between them.
        let keys: Vec<Vec<i64>> = fields
            .iter()
            .skip(1)
            .map(|f| self.tokenizer.encode(&format!("\", \"{f}\": \""), false))
            .collect::<Result<_>>()?;
        let longest_key = keys.iter().map(Vec::len).max().unwrap_or(0);
        let budget = |cap: usize| fields.len() * (cap + longest_key + 8);
        let generators: Vec<SamplingConfig> = samplings
            .iter()
            .zip(&caps)
            .map(|(s, &cap)| SamplingConfig { max_new_tokens: budget(cap), ..s.clone() })
            .collect();

        struct RowState {
            field: usize,
            current: Vec<i64>,
            values: Vec<String>,
            sampled: usize,
            all_closed: bool,
        }
        let mut state: Vec<RowState> = rows
            .iter()
            .map(|_| RowState {
                field: 0,
                current: vec![],
                values: vec![],
                sampled: 0,
                all_closed: true,
            })
            .collect();
        let clean = |text: &str| {
            text.split('"').next().unwrap_or("").trim_end_matches('\\').trim().to_string()
        };
        let mut error: Option<anyhow::Error> = None;
        let mut steer = |r: usize, token: i64| -> Steer {
            let st = &mut state[r];
            st.sampled += 1;
            let quote = quote_tokens.binary_search(&token).is_ok();
            let eos = self.eos_token_ids.contains(&token);
            let cap = caps[rows[r].1];
            if !quote && !eos && st.current.len() + 1 < cap {
                st.current.push(token);
                return Steer::Keep;
            }
            // The value ends here: at a quote, at EOS, or at the field's cap.
            if !eos {
                st.current.push(token);
            }
            let (value, tail) = match (
                self.tokenizer.decode(&st.current, true),
                self.tokenizer.decode(&[token], true),
            ) {
                (Ok(v), Ok(t)) => (
                    clean(&v),
                    if eos { String::new() } else { t.split('"').next().unwrap_or("").to_string() },
                ),
                (Err(e), _) | (_, Err(e)) => {
                    error.get_or_insert(e);
                    return Steer::Stop;
                }
            };
            st.all_closed &= quote;
            st.values.push(value);
            st.current.clear();
            st.field += 1;
            if st.field == fields.len() {
                return Steer::Stop;
            }
            // Feed the value's last piece and the next key instead of the sampled token.
            match self.tokenizer.encode(&format!("{tail}\", \"{}\": \"", fields[st.field]), false) {
                Ok(ids) if !ids.is_empty() => Steer::Replace(ids),
                Ok(_) => Steer::Stop,
                Err(e) => {
                    error.get_or_insert(e);
                    Steer::Stop
                }
            }
        };
        self.generate_steered(&steered, &generators, &mut steer)?;
        if let Some(e) = error {
            return Err(e.context("structured generation"));
        }
        rows.iter()
            .zip(state)
            .map(|((prompt, _), mut st)| {
                // A row that ran out of budget mid-object keeps what it wrote; missing fields are empty.
                if st.values.len() < fields.len() {
                    st.values.push(clean(&self.tokenizer.decode(&st.current, true)?));
                    st.all_closed = false;
                }
                st.values.resize(fields.len(), String::new());
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .cloned()
                    .zip(st.values.into_iter().map(serde_json::Value::String))
                    .collect();
                Ok(Completion {
                    text: serde_json::to_string(&object)?,
                    prompt_tokens: prompt.len(),
                    completion_tokens: st.sampled,
                    stopped_on_eos: st.all_closed,
                })
            })
            .collect()
    }

    /// Ids of every vocabulary token whose text contains a double quote.
    fn quote_token_ids(&self) -> Result<Vec<i64>> {
        if let Some(ids) = self.quote_tokens.get() {
            return Ok(ids.clone());
        }
        let vocab = self.tokenizer.inner().get_vocab(true);
        let mut ids = Vec::new();
        for (_, id) in vocab {
            if self.tokenizer.decode(&[id as i64], false)?.contains('"') {
                ids.push(id as i64);
            }
        }
        ids.sort_unstable();
        ensure!(!ids.is_empty(), "the tokenizer has no token with a double quote");
        Ok(self.quote_tokens.get_or_init(|| ids).clone())
    }

    /// Reply to one conversation.
    pub fn chat(&self, messages: &[ChatMessage], cfg: &SamplingConfig) -> Result<String> {
        Ok(self.chat_with_usage(messages, cfg)?.text)
    }

    /// Reply to several conversations.
    pub fn chat_batch(
        &self,
        conversations: &[Vec<ChatMessage>],
        cfg: &SamplingConfig,
    ) -> Result<Vec<String>> {
        Ok(self.chat_batch_with_usage(conversations, cfg)?.into_iter().map(|c| c.text).collect())
    }

    /// Raw completion of text prompts.
    pub fn complete(&self, prompts: &[String], cfg: &SamplingConfig) -> Result<Vec<String>> {
        Ok(self.complete_with_usage(prompts, cfg)?.into_iter().map(|c| c.text).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        let distinct: std::collections::HashSet<_> = t.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn template_like_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no') }}{% endif %}\n  {{ m.content.strip() | upper }}|{{ m | tojson }}\n{% endfor %}",
        )
        .unwrap();
        let out = t.render(&[ChatMessage::user(" <hi> ")], false, &Default::default()).unwrap();
        assert_eq!(out, "  <HI>|{\"role\": \"user\", \"content\": \" <hi> \"}\n");
        assert!(t.render(&[ChatMessage::system("")], false, &Default::default()).is_err());
    }

    #[test]
    fn messages_serialise_as_role_strings() {
        // The teacher's cache keys hash this form: it must stay `{"role": "user", ...}`.
        let m = ChatMessage::user("hi");
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"role":"user","content":"hi"}"#);
        for role in [Role::System, Role::User, Role::Assistant] {
            assert_eq!(serde_json::to_value(role).unwrap(), serde_json::json!(role.as_str()));
        }
        let back: ChatMessage =
            serde_json::from_str(r#"{"role":"assistant","content":"x"}"#).unwrap();
        assert_eq!(back, ChatMessage::assistant("x"));
    }
}

//! The files that make a packaged model folder load with `transformers` as it is:
//! `AutoTokenizer.from_pretrained(dir)` and `AutoModelForCausalLM` (decoder students, llama
//! layout) or `AutoModelForSeq2SeqLM` (BERT2BERT as `EncoderDecoderModel`, T5), no extra
//! arguments, and then
//!
//! ```python
//! ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
//!                               return_tensors="pt", return_dict=True)
//! out = model.generate(**ids)          # generation_config.json: p2m predict's settings
//! ```
//!
//! gives what `p2m predict` gives (tests/deploy_transformers.rs checks it token for token).
//!
//! - `tokenizer_config.json`: the tokenizer class that reads `tokenizer.json` as it is (the model
//!   type's own class would rebuild it from a vocabulary), the special tokens, padding and
//!   truncation on the side `p2m` uses, and the prompt: a `chat_template` that puts the last user
//!   message into the training input ([`crate::trainer::model_input`]:
//!   `<task i>{instruction}\nExample:\n{input}\nLabel:\n`) with the special tokens the tokenizer
//!   adds around a text (`apply_chat_template` tokenizes without adding them), and the same text
//!   as a plain field, [`INPUT_TEMPLATE_FIELD`], for code that formats the input itself.
//! - `special_tokens_map.json`: the same special tokens.
//! - `generation_config.json`: greedy, `max_new_tokens`, `repetition_penalty`, and the EOS / pad
//!   (/ decoder start) ids `p2m predict` generates with ([`crate::executor::ExecutorConfig`]).
//!
//! Where the two can differ: transformers' repetition penalty also counts the pad token of a
//! left-padded row of a batch (see [`crate::models::llama::Llama::generate`]); one input per call,
//! or a penalty of 1, agrees exactly. `p2m` cuts a source longer than `max_source_len` tokens
//! (decoders keep its end); transformers only does when asked (`truncation=True`, with
//! `model_max_length` and `truncation_side` from this file).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Map, Value};

use crate::executor::ExecutorConfig;
use crate::trainer::model_input;
use crate::util::fs::write_json;

pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The field of `tokenizer_config.json` that holds the model's input with [`INPUT_PLACEHOLDER`]
/// where the example goes (its last occurrence: the instruction comes first and may contain it).
pub const INPUT_TEMPLATE_FIELD: &str = "p2m_input_template";
pub const INPUT_PLACEHOLDER: &str = "{input}";

/// Which transformers model class loads a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// llama-family decoder: `AutoModelForCausalLM`.
    CausalLm,
    /// BERT2BERT (`EncoderDecoderModel`) or T5: `AutoModelForSeq2SeqLM`.
    Seq2Seq,
}

impl Architecture {
    /// From a folder's `config.json`, by the same rules as [`crate::trainer::Student::from_dir`].
    pub fn of_config(config: &Value) -> Result<Architecture> {
        let model_type = config.get("model_type").and_then(Value::as_str);
        if config.get("encoder").is_some() && config.get("decoder").is_some()
            || model_type == Some("t5")
            || config.get("d_model").is_some()
        {
            Ok(Architecture::Seq2Seq)
        } else if matches!(model_type, Some("llama") | Some("mistral")) {
            Ok(Architecture::CausalLm)
        } else {
            anyhow::bail!("not a T5, BERT2BERT or llama-family config (model_type {model_type:?})")
        }
    }

    pub fn auto_class(self) -> &'static str {
        match self {
            Architecture::CausalLm => "AutoModelForCausalLM",
            Architecture::Seq2Seq => "AutoModelForSeq2SeqLM",
        }
    }

    /// The hub's `pipeline_tag`.
    pub fn pipeline_tag(self) -> &'static str {
        match self {
            Architecture::CausalLm => "text-generation",
            Architecture::Seq2Seq => "text2text-generation",
        }
    }
}

/// The ids generation works with, as [`crate::trainer::Student`] takes them from the config.
#[derive(Debug, Clone, PartialEq)]
struct GenerationIds {
    eos: Vec<i64>,
    pad: i64,
    bos: Option<i64>,
    decoder_start: Option<i64>,
}

fn ids_field(config: &Value, key: &str) -> Vec<i64> {
    match config.get(key) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        Some(v) => v.as_i64().into_iter().collect(),
        None => vec![],
    }
}

fn generation_ids(config: &Value, arch: Architecture) -> Result<GenerationIds> {
    let one = |key: &str| config.get(key).and_then(Value::as_i64);
    let eos = ids_field(config, "eos_token_id");
    anyhow::ensure!(!eos.is_empty(), "config.json has no `eos_token_id`");
    Ok(match arch {
        // Student::pad_id: the pad id, else the first EOS.
        Architecture::CausalLm => GenerationIds {
            pad: one("pad_token_id").unwrap_or(eos[0]),
            bos: one("bos_token_id"),
            decoder_start: None,
            eos,
        },
        Architecture::Seq2Seq => GenerationIds {
            pad: one("pad_token_id").context("config.json has no `pad_token_id`")?,
            bos: None,
            decoder_start: Some(
                one("decoder_start_token_id")
                    .context("config.json has no `decoder_start_token_id`")?,
            ),
            eos,
        },
    })
}

/// The special tokens the tokenizer's post-processor puts before and after a text (BERT's
/// `[CLS]` … `[SEP]`, T5's `</s>`, none for SmolLM2), as token strings.
fn added_around(tok: &tokenizers::Tokenizer) -> Result<(String, String)> {
    let enc = tok.encode("x", true).map_err(|e| anyhow!("tokenizer.json: {e}"))?;
    let mask = enc.get_special_tokens_mask();
    let ids = enc.get_ids();
    let text = |range: &[u32]| -> Result<String> {
        range
            .iter()
            .map(|&id| {
                tok.id_to_token(id).ok_or_else(|| anyhow!("tokenizer.json: no token for id {id}"))
            })
            .collect()
    };
    let lead = mask.iter().take_while(|&&m| m == 1).count();
    let trail = mask.iter().rev().take_while(|&&m| m == 1).count();
    anyhow::ensure!(
        lead + trail < ids.len(),
        "tokenizer.json: a text encodes to special tokens only"
    );
    Ok((text(&ids[..lead])?, text(&ids[ids.len() - trail..])?))
}

/// The training input around its example: `(before, after)`, so that
/// `before + input + after == model_input(task_id, instruction, input)`.
pub fn input_parts(task_id: u32, instruction: &str) -> (String, String) {
    // A private-use character marks where the input goes; the instruction comes first, so the
    // last occurrence is the input's whatever the instruction holds.
    const MARK: &str = "\u{F8FF}";
    let whole = model_input(task_id, instruction, MARK);
    let (before, after) = whole.rsplit_once(MARK).expect("the mark is in the input");
    (before.to_string(), after.to_string())
}

/// A Jinja string literal holding `text` exactly (JSON's escapes are Jinja's, and both Jinja and
/// minijinja read `\uXXXX`).
fn jinja_literal(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// The chat template: the last user message is the example's input, rendered into the training
/// input with the tokenizer's own special tokens around it. Other roles are ignored (the model
/// was trained on one input per call, without a system prompt or turns), and
/// `add_generation_prompt` changes nothing: the input ends with the `Label:` cue the model answers.
pub fn chat_template(task_id: u32, instruction: &str, prefix: &str, suffix: &str) -> String {
    let (before, after) = input_parts(task_id, instruction);
    format!(
        "{{#- prompt2model-rs: the last user message is the input of one example; other messages are ignored. -#}}\n\
         {{%- set ns = namespace(input=\"\") -%}}\n\
         {{%- for message in messages -%}}\n\
         {{%- if message[\"role\"] == \"user\" -%}}{{%- set ns.input = message[\"content\"] -%}}{{%- endif -%}}\n\
         {{%- endfor -%}}\n\
         {{{{- {} -}}}}{{{{- ns.input -}}}}{{{{- {} -}}}}",
        jinja_literal(&format!("{prefix}{before}")),
        jinja_literal(&format!("{after}{suffix}")),
    )
}

/// The special tokens by transformers' names (`bos_token`, `eos_token`, …), as token strings.
fn special_tokens(
    tok: &tokenizers::Tokenizer,
    ids: &GenerationIds,
    arch: Architecture,
) -> Result<Map<String, Value>> {
    let name = |id: i64| -> Result<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| tok.id_to_token(id))
            .ok_or_else(|| anyhow!("tokenizer.json has no token for id {id} (from config.json)"))
    };
    let mut map = Map::new();
    map.insert("eos_token".into(), name(ids.eos[0])?.into());
    map.insert("pad_token".into(), name(ids.pad)?.into());
    if let Some(bos) = ids.bos {
        map.insert("bos_token".into(), name(bos)?.into());
    }
    if arch == Architecture::Seq2Seq {
        // BERT-family vocabularies: the tokens BertTokenizer knows by name, when present.
        for (key, token) in [
            ("cls_token", "[CLS]"),
            ("sep_token", "[SEP]"),
            ("unk_token", "[UNK]"),
            ("mask_token", "[MASK]"),
        ] {
            if tok.token_to_id(token).is_some() {
                map.insert(key.into(), token.into());
            }
        }
        if tok.token_to_id("<unk>").is_some() && !map.contains_key("unk_token") {
            map.insert("unk_token".into(), "<unk>".into());
        }
    }
    Ok(map)
}

/// Writes `tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json` into a
/// model folder that holds `config.json` and `tokenizer.json`; returns the architecture.
pub fn write_transformers_files(
    dir: &Path,
    instruction: &str,
    executor: &ExecutorConfig,
) -> Result<Architecture> {
    let config_path = dir.join("config.json");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let arch =
        Architecture::of_config(&config).with_context(|| format!("{}", config_path.display()))?;
    let ids =
        generation_ids(&config, arch).with_context(|| format!("{}", config_path.display()))?;
    let tok_path = dir.join("tokenizer.json");
    let tok = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow!("{}: not a tokenizer.json ({e})", tok_path.display()))?;
    let (prefix, suffix) = added_around(&tok)?;
    let specials = special_tokens(&tok, &ids, arch)?;

    let (before, after) = input_parts(executor.task_id, instruction);
    // p2m truncates a decoder's source from the left (the `Label:` cue at the end survives) and an
    // encoder's from the right; decoders generate left-padded.
    let side = match arch {
        Architecture::CausalLm => "left",
        Architecture::Seq2Seq => "right",
    };
    let mut tokenizer_config = json!({
        // The class that wraps tokenizer.json as it is; the model type's own class (LlamaTokenizer,
        // BertTokenizer) would rebuild the pipeline from a vocabulary and can tokenise differently.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": executor.max_source_len,
        "padding_side": side,
        "truncation_side": side,
        // p2m decodes with the tokenizer's own decoder and nothing else.
        "clean_up_tokenization_spaces": false,
        "chat_template": chat_template(executor.task_id, instruction, &prefix, &suffix),
    });
    let obj = tokenizer_config.as_object_mut().expect("an object");
    obj.insert(INPUT_TEMPLATE_FIELD.into(), format!("{before}{INPUT_PLACEHOLDER}{after}").into());
    obj.extend(specials.clone());
    write_json(&dir.join(TOKENIZER_CONFIG), &tokenizer_config)?;
    write_json(&dir.join(SPECIAL_TOKENS_MAP), &Value::Object(specials))?;

    let mut generation = json!({
        "do_sample": false,
        "num_beams": 1,
        "max_new_tokens": executor.max_new_tokens,
        "repetition_penalty": executor.repetition_penalty,
        "eos_token_id": if ids.eos.len() == 1 { json!(ids.eos[0]) } else { json!(ids.eos) },
        "pad_token_id": ids.pad,
    });
    let g = generation.as_object_mut().expect("an object");
    if let Some(bos) = ids.bos {
        g.insert("bos_token_id".into(), bos.into());
    }
    if let Some(start) = ids.decoder_start {
        g.insert("decoder_start_token_id".into(), start.into());
    }
    write_json(&dir.join(GENERATION_CONFIG), &generation)?;
    Ok(arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_template_renders_the_training_input_exactly() {
        // Quotes, backslashes, braces, newlines, non-ASCII and the placeholder itself in the
        // instruction: the template must still render `model_input` byte for byte.
        let instruction = "Say \"hi\" \\ {input} {{ x }} {% raw %}\n\tto 日本 😀";
        let input = "a \"b\"\n{{ c }} 😀";
        let template = chat_template(3, instruction, "[CLS]", "[SEP]");
        let mut env = minijinja::Environment::new();
        env.add_template("chat", &template).unwrap();
        let messages = vec![
            minijinja::context! { role => "system", content => "ignored" },
            minijinja::context! { role => "user", content => "not this one" },
            minijinja::context! { role => "user", content => input },
        ];
        let out = env
            .get_template("chat")
            .unwrap()
            .render(minijinja::context! { messages => messages, add_generation_prompt => true })
            .unwrap();
        assert_eq!(out, format!("[CLS]{}[SEP]", model_input(3, instruction, input)));
        let (before, after) = input_parts(3, instruction);
        assert_eq!(format!("{before}{input}{after}"), model_input(3, instruction, input));
    }

    #[test]
    fn the_architecture_follows_the_config() {
        let bert2bert = json!({"encoder": {}, "decoder": {}, "model_type": "encoder-decoder"});
        assert_eq!(Architecture::of_config(&bert2bert).unwrap(), Architecture::Seq2Seq);
        assert_eq!(
            Architecture::of_config(&json!({"model_type": "llama"})).unwrap(),
            Architecture::CausalLm
        );
        assert!(Architecture::of_config(&json!({"model_type": "gpt2"})).is_err());
        let llama = json!({"model_type": "llama", "eos_token_id": [2, 7], "pad_token_id": null});
        let ids = generation_ids(&llama, Architecture::CausalLm).unwrap();
        assert_eq!((ids.eos, ids.pad), (vec![2, 7], 2));
    }
}

//! A trained decoder student as llama.cpp and Ollama take it: one GGUF file (`p2m export RUN
//! --gguf`) with the weights, the tokenizer and the student's input template as its chat template,
//! and an Ollama `Modelfile` beside it. The same writer makes the f16 GGUF the llama.cpp engine
//! decodes a student with ([`engine_gguf`], cached under the weights' hash).
//!
//! The file is what llama.cpp's `convert_hf_to_gguf.py` writes for a `LlamaForCausalLM` folder:
//! the `llama.*` hyper-parameters and special tokens ([`crate::models::llama::LlamaConfig::gguf_metadata`]), the
//! `tokenizer.ggml.*` vocabulary ([`GgufTokenizer::gguf_metadata`]), tensors under llama.cpp's
//! names ([`gguf_weight_name`]) with Q and K rows in its rotary layout ([`rope_permutation`]),
//! norms in f32 and matrices in the chosen type. Each of these is the inverse of what the
//! project's GGUF reader does, so a student exported and read back computes the same function.

pub mod gguf_writer;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::{Device, Kind};

use crate::models::chat::GgufTokenizer;
use crate::models::gguf::{rope_permutation, GgmlType, GgufValue};
use crate::models::llama::{gguf_weight_name, rope_permuted_heads, Llama};
use gguf_writer::{write_gguf, TensorData};

/// How the matrices of an exported GGUF are stored (norms are always f32, as llama.cpp's
/// converter keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufType {
    F32,
    /// Half precision: what the llama.cpp engine decodes students with.
    #[default]
    F16,
    /// 8-bit blocks of 32 with an f16 scale: half the size of f16.
    Q8_0,
}

impl GgufType {
    pub fn as_str(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::F16 => "f16",
            GgufType::Q8_0 => "q8_0",
        }
    }

    fn ggml_type(self) -> GgmlType {
        match self {
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

impl std::fmt::Display for GgufType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GgufType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufType::F32),
            "f16" => Ok(GgufType::F16),
            "q8_0" | "q8" => Ok(GgufType::Q8_0),
            other => bail!("GGUF type `{other}`: use f16, q8_0 or f32"),
        }
    }
}

/// The input a student was trained on (`trainer::model_input`): `<task {task_id}>{instruction}`,
/// `\nExample:\n`, the input, `\nLabel:\n`, for an Ollama `Modelfile`. The instruction is fixed
/// in an export; the input is the user's prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    pub task_id: u32,
    pub instruction: String,
}

impl PromptTemplate {
    /// The text before the input.
    fn head(&self) -> String {
        format!("<task {}>{}\nExample:\n", self.task_id, self.instruction)
    }

    const TAIL: &'static str = "\nLabel:\n";

    /// The template in Go's template syntax (Ollama's `TEMPLATE`): the user's prompt as the input.
    fn go_template(&self) -> Result<String> {
        let text = format!("{}{{{{ .Prompt }}}}{}", go_literal(&self.head()), Self::TAIL);
        ensure!(
            !text.contains("\"\"\""),
            "the instruction contains `\"\"\"`, which ends a Modelfile's TEMPLATE; remove it"
        );
        Ok(text)
    }
}

/// Literal text in a Go template: `{{` would open an action, so it is written as one.
fn go_literal(s: &str) -> String {
    s.replace("{{", "{{\"{{\"}}")
}

/// The generation settings a Modelfile carries (the executor's).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelfileSettings {
    pub max_new_tokens: usize,
    pub repetition_penalty: f64,
}

/// An Ollama `Modelfile` for `model.gguf` in the same folder: the template, the stop token,
/// greedy decoding and the executor's repetition penalty over the whole context (Ollama's
/// default looks back 64 tokens only; the executor penalises every token of prompt and output).
pub fn ollama_modelfile(
    template: &PromptTemplate,
    stop: &str,
    settings: &ModelfileSettings,
) -> Result<String> {
    ensure!(!stop.contains('"'), "stop token {stop:?} contains a quote");
    Ok(format!(
        "# Written by `p2m export --gguf`: the student with the input template it was trained on.\n\
         # ollama create <name> -f Modelfile && ollama run <name> \"<your input>\"\n\
         FROM ./model.gguf\n\
         TEMPLATE \"\"\"{}\"\"\"\n\
         PARAMETER stop \"{stop}\"\n\
         PARAMETER temperature 0\n\
         PARAMETER repeat_penalty {}\n\
         PARAMETER repeat_last_n -1\n\
         PARAMETER num_predict {}\n",
        template.go_template()?,
        settings.repetition_penalty,
        settings.max_new_tokens,
    ))
}

/// Make an exported file readable by every user (atomic writes create their temporary files
/// owner-only, and Ollama's server usually runs as a user of its own).
pub fn readable_by_all(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("making {} readable", path.display()))?;
    }
    Ok(())
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
    /// The token generation stops on (what a Modelfile's `stop` names).
    pub eos_token: Option<String>,
}

/// Write the decoder student in `model_dir` (`config.json` of a `LlamaForCausalLM`,
/// `model.safetensors`, `tokenizer.json`: what `Llama::save_hf_dir` and `Student::save` write) as
/// a GGUF at `out`, atomically. `chat_template`, when given, becomes `tokenizer.chat_template`
/// (the packaged model's: [`crate::deploy::transformers::chat_template`], which puts a user
/// message into the training input).
pub fn export_gguf(
    model_dir: &Path,
    ty: GgufType,
    chat_template: Option<&str>,
    name: &str,
    out: &Path,
) -> Result<Exported> {
    let config_path = model_dir.join("config.json");
    let config: serde_json::Value = crate::util::fs::read_json(
        &config_path,
        "expected the config.json of a trained decoder student",
    )?;
    ensure!(
        config["model_type"] == "llama",
        "{}: model_type {} — only decoder (llama-family) students export to GGUF; an \
         encoder-decoder student has no llama.cpp architecture here",
        config_path.display(),
        config["model_type"]
    );
    let llama = Llama::load_hf_dir(model_dir, Device::Cpu)
        .with_context(|| format!("loading the student in {}", model_dir.display()))?;
    let c = &llama.config;
    let tok_path = model_dir.join("tokenizer.json");
    let tokenizer: serde_json::Value =
        crate::util::fs::read_json(&tok_path, "expected the student's tokenizer.json")?;

    let mut metadata: Vec<(String, GgufValue)> = Vec::new();
    let mut config_meta = c.gguf_metadata()?.into_iter();
    metadata.extend(config_meta.next()); // general.architecture first, as llama.cpp writes it
    metadata.push(("general.name".into(), GgufValue::String(name.into())));
    metadata.push(("general.file_type".into(), GgufValue::U32(ty.file_type())));
    if ty == GgufType::Q8_0 {
        metadata.push(("general.quantization_version".into(), GgufValue::U32(2)));
    }
    metadata.extend(config_meta);
    metadata.extend(GgufTokenizer::gguf_metadata(&tokenizer, c.vocab_size, &tok_path)?);
    if let Some(t) = chat_template {
        metadata.push(("tokenizer.chat_template".into(), GgufValue::String(t.to_string())));
    }

    let tensors = gguf_tensors(&llama, ty)?;
    write_gguf(out, &metadata, &tensors)?;
    readable_by_all(out)?;
    let eos_token = c.eos_token_ids.first().and_then(|&id| {
        metadata.iter().find(|(k, _)| k == "tokenizer.ggml.tokens").and_then(|(_, v)| {
            v.as_array()?.get(usize::try_from(id).ok()?)?.as_str().map(str::to_string)
        })
    });
    Ok(Exported {
        path: out.to_path_buf(),
        bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        tensors: tensors.len(),
        eos_token,
    })
}

/// Every weight of `llama` under its GGUF name and in its GGUF layout: vectors in f32, matrices
/// as `ty` (Q8_0 falls back to f16 for rows that are not whole blocks, as llama.cpp's converter
/// does), Q and K rows permuted into llama.cpp's rotary layout.
fn gguf_tensors(llama: &Llama, ty: GgufType) -> Result<Vec<TensorData>> {
    let mut out = Vec::new();
    for (hf, t) in llama.named_parameters() {
        let name =
            gguf_weight_name(&hf).ok_or_else(|| anyhow!("weight `{hf}` has no GGUF name"))?;
        let shape: Vec<u64> = t.size().iter().map(|&d| d as u64).collect();
        let t = t.detach().to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let mut data = Vec::<f32>::try_from(t.view([-1])).context("reading a weight")?;
        if let Some(n_head) = rope_permuted_heads(&hf, &llama.config) {
            data = rope_permutation(&data, shape[0] as usize, shape[1] as usize, n_head);
        }
        let ggml = match (shape.len(), ty) {
            (1, _) => GgmlType::F32,
            (_, GgufType::Q8_0) if !shape[shape.len() - 1].is_multiple_of(32) => GgmlType::F16,
            (_, ty) => ty.ggml_type(),
        };
        out.push(TensorData::encode(&name, &shape, &data, ggml)?);
    }
    Ok(out)
}

/// The name of the format of [`engine_gguf`]'s files; changing how a student is written changes
/// it, so no file of an older writer is reused.
const ENGINE_GGUF_FORMAT: &str = "p2m-student-gguf/1 f16";

/// The f16 GGUF of the decoder student in `model_dir` that the llama.cpp engine decodes with:
/// written on first use under `cache/student-gguf/`, named by the sha256 of the student's
/// weights, config and tokenizer (and the writer's format), so a retrained student never meets
/// the file of an older one. Kept out of the model folder, whose files are stage outputs the
/// pipeline fingerprints.
pub fn engine_gguf(model_dir: &Path, cache: &Path) -> Result<PathBuf> {
    let mut parts = vec![ENGINE_GGUF_FORMAT.to_string()];
    let mut files: Vec<PathBuf> = std::fs::read_dir(model_dir)
        .with_context(|| format!("reading {}", model_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json" || n == "tokenizer.json" || n.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    for f in &files {
        let hash =
            crate::util::fs::sha256_file(f).with_context(|| format!("hashing {}", f.display()))?;
        parts.push(format!("{} {hash}", f.file_name().unwrap_or_default().to_string_lossy()));
    }
    let key = crate::util::fs::sha256_hex(parts.join("\n").as_bytes());
    let path = cache.join("student-gguf").join(format!("{}.f16.gguf", &key[..32]));
    if !path.exists() {
        export_gguf(model_dir, GgufType::F16, None, "p2m student", &path)
            .with_context(|| format!("writing the llama.cpp copy of {}", model_dir.display()))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modelfile_names_the_template_and_settings() {
        let t = PromptTemplate { task_id: 0, instruction: "Add {{x}}.".into() };
        let settings = ModelfileSettings { max_new_tokens: 32, repetition_penalty: 2.0 };
        let m = ollama_modelfile(&t, "<|im_end|>", &settings).unwrap();
        assert!(m.contains("FROM ./model.gguf\n"));
        assert!(m.contains(
            "TEMPLATE \"\"\"<task 0>Add {{\"{{\"}}x}}.\nExample:\n{{ .Prompt }}\nLabel:\n\"\"\""
        ));
        for line in [
            "PARAMETER stop \"<|im_end|>\"",
            "PARAMETER temperature 0",
            "PARAMETER repeat_penalty 2",
            "PARAMETER num_predict 32",
        ] {
            assert!(m.contains(line), "{line} in\n{m}");
        }
        let bad = PromptTemplate { task_id: 0, instruction: "a \"\"\" b".into() };
        assert!(ollama_modelfile(&bad, "x", &settings).is_err());
        assert_eq!("Q8_0".parse::<GgufType>().unwrap(), GgufType::Q8_0);
        assert!("q4".parse::<GgufType>().unwrap_err().to_string().contains("f16, q8_0"));
    }
}

//! The executor: a trained student over a test set, batched, predictions written next to inputs
//! and references.
//!
//! Generation settings are the reference's (`GenerationModelExecutor`): greedy decoding with a
//! repetition penalty of 2.0 and a cap on new tokens. The input each example gets is the same
//! textualisation the student was trained on ([`crate::trainer::model_input`]).
//!
//! Every input of a task starts with the same text — `<task i>`, the instruction, `Example:` —
//! often hundreds of tokens (Temporal's instruction is about 300) before a short input. A decoder
//! student computes that shared token prefix once and copies its keys and values into each batch
//! ([`ExecutorConfig::prefix_cache`], on by default; `p2m predict --no-prefix-cache` or
//! `[executor] prefix_cache = false` in a run's config is the plain path, kept to measure against).
//! This is exact in principle: a causal decoder's keys and values at a position depend only on the
//! tokens up to it. An encoder-decoder student (BERT2BERT, T5) gets no such saving: its encoder is
//! bidirectional, so the encoder states of the shared text depend on the input that follows it and
//! cannot be reused; what can be shared already is (the encoder runs once per batch, and each
//! decoder layer's cross-attention keys and values are computed once per batch, not per step).
//!
//! Two engines run a decoder student's forward passes ([`ExecutorConfig::engine`]): libtorch on
//! the trained f32 weights (the default), or llama.cpp on an f16 GGUF of them
//! ([`crate::export::engine_gguf`]), which prefills the instruction the inputs of a batch share
//! once ([`crate::models::llama_cpp::LlamaCppEngine::generate_sharing_prefix`]).

use std::path::Path;

use anyhow::Context;
use polars::prelude::{Column, DataFrame};

use crate::data::loaders::{string_column, INPUT, PREDICTION};
use crate::models::chat::DecodingEngine;
use crate::models::precision::{self, Precision};
use crate::models::sampling::SamplingConfig;
use crate::trainer::student::StudentModel;
use crate::trainer::{model_input, Student};

/// How predictions are generated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    pub max_new_tokens: usize,
    pub repetition_penalty: f64,
    pub batch_size: usize,
    pub max_source_len: usize,
    /// The task id put in front of the instruction (the reference predicts as task 0).
    pub task_id: u32,
    /// `bf16`: the student's linear layers multiply in bf16 while predicting (weights cast once;
    /// see [`crate::models::precision`]). Left out of the file when f32.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Decoder students: prefill the token prefix every input shares (task tag, instruction,
    /// template) once and reuse its keys and values for every example (see
    /// [`Student::generate`]); `false` is the plain path that prefills each whole input. The
    /// greedy outputs are the same token ids up to float summation order (tests/prefix_cache.rs
    /// measures it). Encoder-decoder students have no exact prefix to reuse (a bidirectional
    /// encoder's states of the shared text depend on the rest of the input) and ignore it. Left
    /// out of the file when on, so run fingerprints and earlier configs are unchanged.
    #[serde(skip_serializing_if = "is_true")]
    pub prefix_cache: bool,
    /// What runs a decoder student's forward passes: `libtorch` (default) or `llama-cpp` (the
    /// student written as an f16 GGUF, [`crate::export::engine_gguf`]). Left out of the file when
    /// libtorch, so older configs and fingerprints are unchanged.
    #[serde(skip_serializing_if = "DecodingEngine::is_libtorch")]
    pub engine: DecodingEngine,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_new_tokens: 64,
            repetition_penalty: 2.0,
            batch_size: 16,
            max_source_len: 512,
            task_id: 0,
            precision: Precision::F32,
            prefix_cache: true,
            engine: DecodingEngine::Libtorch,
        }
    }
}

impl ExecutorConfig {
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            repetition_penalty: self.repetition_penalty,
            ..SamplingConfig::greedy(self.max_new_tokens)
        }
    }
}

/// The trained student in `model_dir`, ready to generate on `cfg.engine`; for llama.cpp its GGUF
/// is written on first use under `cache` (see [`crate::export::engine_gguf`]; `None`: the
/// project's cache, [`crate::config::Paths::from_env`], looked up only then).
pub fn load_student(
    model_dir: &Path,
    device: tch::Device,
    cfg: &ExecutorConfig,
    cache: Option<&Path>,
) -> anyhow::Result<Student> {
    let mut student = Student::from_dir(model_dir, device)?;
    if !cfg.engine.is_libtorch() {
        cfg.engine.check_precision(cfg.precision, ("precision", "engine"))?;
        anyhow::ensure!(
            matches!(student.model, StudentModel::Decoder(_)),
            "{}: the llama-cpp engine decodes decoder-only students; this one is an \
             encoder-decoder (use engine libtorch)",
            model_dir.display()
        );
        let gguf = match cache {
            Some(cache) => crate::export::engine_gguf(model_dir, cache)?,
            None => {
                crate::export::engine_gguf(model_dir, &crate::config::Paths::from_env()?.cache)?
            }
        };
        student.use_llama_cpp(&gguf)?;
    }
    Ok(student)
}

/// Keeps the prefix every input of `instruction` starts with (the `<task i>` tag, the
/// instruction and the template up to the input) prefilled in `student` for all later calls,
/// when `cfg.prefix_cache`: what a served model does once at load
/// ([`Student::keep_shared_prefix`]). The prefix is the shared start of two prompts whose inputs
/// differ from their first character, so it ends where an input's text begins; a prompt that does
/// not start with it (an input whose first token merges with the template's last) is generated
/// as before. Returns the kept prefix's length in tokens (0: none kept).
pub fn keep_instruction_prefix(
    student: &Student,
    instruction: &str,
    cfg: &ExecutorConfig,
) -> anyhow::Result<usize> {
    if !cfg.prefix_cache {
        return Ok(0);
    }
    let probes = ["0", "x"].map(|input| model_input(cfg.task_id, instruction, input));
    student.keep_shared_prefix(&probes, cfg.max_source_len)
}

/// Adds (or replaces) the `prediction` column of a common-schema frame with the student's outputs.
pub fn predict_frame(
    student: &Student,
    instruction: &str,
    frame: &DataFrame,
    cfg: &ExecutorConfig,
) -> anyhow::Result<DataFrame> {
    let inputs = string_column(frame, INPUT)
        .context("the test set needs an `input` column (common schema)")?;
    let sources: Vec<String> =
        inputs.iter().map(|i| model_input(cfg.task_id, instruction, i)).collect();
    let predictions = precision::autocast(cfg.precision, || {
        student.generate(
            &sources,
            cfg.max_source_len,
            &cfg.sampling(),
            cfg.batch_size,
            cfg.prefix_cache,
        )
    })?;
    let mut out = frame.clone();
    if out.column(PREDICTION).is_ok() {
        out = out.drop(PREDICTION)?;
    }
    out.with_column(Column::new(PREDICTION.into(), predictions))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_optional_in_files_and_left_out_when_libtorch() {
        let old: ExecutorConfig = toml::from_str("max_new_tokens = 32").unwrap();
        assert_eq!(old.engine, DecodingEngine::Libtorch);
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("engine").is_none(), "{json}");
        let cpp: ExecutorConfig = toml::from_str("engine = \"llama-cpp\"").unwrap();
        assert_eq!(cpp.engine, DecodingEngine::LlamaCpp);
        assert_eq!(serde_json::to_value(&cpp).unwrap()["engine"], "llama-cpp");
    }
}

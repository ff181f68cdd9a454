//! The executor: a trained student over a test set, batched, predictions written next to inputs
//! and references.
//!
//! Generation settings are the reference's (`GenerationModelExecutor`): greedy decoding with a
//! repetition penalty of 2.0 and a cap on new tokens. The input each example gets is the same
//! textualisation the student was trained on ([`crate::trainer::model_input`]).

use anyhow::Context;
use polars::prelude::{Column, DataFrame};

use crate::data::loaders::{string_column, INPUT, PREDICTION};
use crate::models::precision::{self, Precision};
use crate::models::sampling::SamplingConfig;
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
        student.generate(&sources, cfg.max_source_len, &cfg.sampling(), cfg.batch_size)
    })?;
    let mut out = frame.clone();
    if out.column(PREDICTION).is_ok() {
        out = out.drop(PREDICTION)?;
    }
    out.with_column(Column::new(PREDICTION.into(), predictions))?;
    Ok(out)
}

//! The evaluator: exact re-implementations of the paper's metrics. Every score carries a
//! signature (metric, parameters, implementation and the reference it is tested against), in the
//! spirit of sacrebleu, so a number in a report says exactly how it was computed.
//!
//! - [`exact_match`]: raw string equality (the Prompt2Model reference) and SQuAD-official
//!   normalisation, multi-reference.
//! - [`chrf`]: chrF / chrF++ identical to sacrebleu 2.x.
//! - [`bertscore`]: BERTScore P/R/F1 as the bert_score package computes them.
//! - [`kendall`]: Kendall's tau-b with scipy's two-sided p-value.

pub mod bertscore;
pub mod bootstrap;
pub mod chrf;
mod error;
pub mod exact_match;
pub mod kendall;
mod metric;
pub mod pystr;
#[rustfmt::skip]
mod pystr_tables;

pub use error::MetricError;
pub use metric::{score, Metric, Score};

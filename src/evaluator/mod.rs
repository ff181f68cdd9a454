//! The evaluator: exact re-implementations of the paper's metrics. Every score carries a
//! signature (metric, parameters, implementation and the reference it is tested against), in the
//! spirit of sacrebleu, so a number in a report says exactly how it was computed.
//!
//! - [`exact_match`]: raw string equality (the Prompt2Model reference) and SQuAD-official
//!   normalisation, multi-reference.
//! - [`chrf`]: chrF / chrF++ identical to sacrebleu 2.x.
//! - [`bertscore`]: BERTScore P/R/F1 as the bert_score package computes them.
//! - [`kendall`]: Kendall's tau-b with scipy's two-sided p-value.
//! - [`macro_f1`]: macro-averaged F1 over answers as labels, as scikit-learn.
//! - [`bootstrap`]: percentile-bootstrap intervals and paired tests.
//! - [`metric_choice`]: which metrics judge a run (accuracy and macro-F1 for a classification task).
//! - [`baselines`]: the majority class, the copied input and the most frequent training output,
//!   scored beside the student, with a paired test against the best of them.
//!
//! Everything but BERTScore lives in the `p2m-metrics` crate (`crates/metrics`), which does not
//! link libtorch, so its `p2m-score` command starts without loading it; this module re-exports it
//! under the paths the rest of the project uses.

pub mod baselines;
pub mod bertscore;
pub mod metric_choice;

pub use p2m_metrics::{bootstrap, chrf, exact_match, kendall, macro_f1, pystr};
pub use p2m_metrics::{score, Metric, MetricError, Score};

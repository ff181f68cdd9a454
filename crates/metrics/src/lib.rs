//! The paper's corpus metrics, exact re-implementations each with a signature (sacrebleu's idea):
//! exact match (raw and SQuAD-normalised), chrF / chrF++ as sacrebleu 2.x, Kendall's tau-b with
//! scipy's p-value, and percentile-bootstrap intervals; macro-F1 as scikit-learn for
//! classification tasks; plus the predictions-file reader and the seeded RNG the intervals draw
//! from.
//!
//! Why a crate of its own: the main crate links libtorch, and a binary that links it loads
//! `libtorch_cpu.so` (~0.3 s) before `main` even when it never touches a tensor (torch-sys links
//! it with `--no-as-needed`). Scoring needs none of it, so `p2m-score` is built from this crate
//! alone. The main crate re-exports everything here under `prompt2model::evaluator` (and the RNG
//! and readers under `util::rng`, `data::predictions`), where BERTScore, which does need an
//! encoder, joins them.

pub mod bootstrap;
pub mod chrf;
mod error;
pub mod exact_match;
pub mod frame;
pub mod kendall;
pub mod macro_f1;
mod metric;
pub mod predictions;
pub mod pystr;
#[rustfmt::skip]
mod pystr_tables;
pub mod rng;
pub mod scoring;

pub use error::MetricError;
pub use metric::{score, Metric, Score};

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
pub mod exact_match;
pub mod kendall;
pub mod pystr;
#[rustfmt::skip]
mod pystr_tables;

use std::fmt;

use serde::Serialize;

/// Errors of the metric functions (shared by `chrf`, `exact_match` and `kendall`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// Two inputs that must be parallel have different lengths.
    #[error("length mismatch: {left_name} has {left} items but {right_name} has {right}")]
    LengthMismatch { left_name: &'static str, left: usize, right_name: &'static str, right: usize },
    /// A corpus metric was asked to score zero segments.
    #[error("empty corpus: nothing to score")]
    EmptyCorpus,
    /// Segment `index` has no reference at all (sacrebleu and the SQuAD script crash on this).
    #[error("segment {index} has no reference")]
    NoReferences { index: usize },
    /// An input value is NaN (position `index` of `which`).
    #[error("{which}[{index}] is NaN")]
    NanInput { which: &'static str, index: usize },
    /// The metric configuration is unusable.
    #[error("invalid metric configuration: {0}")]
    InvalidConfig(String),
}

impl MetricError {
    /// A corpus of `left` predictions (named `left_name`) against `right` reference lists: the two
    /// must be parallel and not empty.
    pub fn check_corpus(left_name: &'static str, left: usize, right: usize) -> Result<(), MetricError> {
        if left != right {
            return Err(MetricError::LengthMismatch { left_name, left, right_name: "references", right });
        }
        if left == 0 {
            return Err(MetricError::EmptyCorpus);
        }
        Ok(())
    }
}

/// A corpus-level metric over predictions and references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Metric {
    /// Exact match, plain string equality (as the Prompt2Model reference evaluator).
    #[serde(rename = "em")]
    ExactMatch,
    /// Exact match after the official SQuAD v1.1 answer normalisation.
    #[serde(rename = "em-squad")]
    ExactMatchSquad,
    /// chrF++ (character 6-grams, word 2-grams, beta 2), as sacrebleu's defaults.
    #[serde(rename = "chrf++")]
    ChrfPlusPlus,
}

impl Metric {
    /// Every metric, in the order the command line lists them.
    pub const ALL: [Metric; 3] =
        [Metric::ExactMatch, Metric::ExactMatchSquad, Metric::ChrfPlusPlus];

    pub fn name(self) -> &'static str {
        match self {
            Metric::ExactMatch => "em",
            Metric::ExactMatchSquad => "em-squad",
            Metric::ChrfPlusPlus => "chrf++",
        }
    }

    /// Parse the names used in `data/tasks.toml` and on the command line.
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name.trim()))
    }

    /// How the paper prints it.
    pub fn display_name(self) -> &'static str {
        match self {
            Metric::ExactMatch => "EM",
            Metric::ExactMatchSquad => "EM (SQuAD-normalised)",
            Metric::ChrfPlusPlus => "chrF++",
        }
    }
}

/// A corpus score in percent, with its signature.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub metric: Metric,
    /// 0–100.
    pub value: f64,
    pub n: usize,
    pub signature: String,
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {:.2}  (n={}; {})",
            self.metric.display_name(),
            self.value,
            self.n,
            self.signature
        )
    }
}

/// Score predictions against per-row reference lists.
pub fn score<P: AsRef<str>, R: AsRef<str>>(
    metric: Metric,
    predictions: &[P],
    references: &[Vec<R>],
) -> Result<Score, MetricError> {
    let (value, signature) = match metric {
        Metric::ExactMatch | Metric::ExactMatchSquad => {
            let norm = if metric == Metric::ExactMatch {
                exact_match::EmNormalization::Raw
            } else {
                exact_match::EmNormalization::Squad
            };
            let v = exact_match::corpus_exact_match(predictions, references, norm)?;
            (
                100.0 * v,
                format!("{}|nrefs:{}", exact_match::signature(norm), chrf::nrefs_label(references)),
            )
        }
        Metric::ChrfPlusPlus => {
            let cfg = chrf::ChrfConfig::chrf_plus_plus();
            let v = chrf::corpus_chrf(predictions, references, &cfg)?;
            (v, cfg.signature(chrf::nrefs_label(references)))
        }
    };
    Ok(Score { metric, value, n: predictions.len(), signature })
}

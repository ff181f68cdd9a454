//! The paper's corpus metrics by name, and [`score`]: one entry point that returns a score with
//! its signature.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::MetricError;
use crate::{chrf, exact_match, macro_f1};

/// A corpus-level metric over predictions and references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Macro-averaged F1 over the answers as class labels (scikit-learn's
    /// `f1_score(average="macro")`): a classification task's headline beside accuracy.
    #[serde(rename = "macro-f1")]
    MacroF1,
}

impl Metric {
    /// Every metric, in the order the command line lists them.
    pub const ALL: [Metric; 4] =
        [Metric::ExactMatch, Metric::ExactMatchSquad, Metric::ChrfPlusPlus, Metric::MacroF1];

    pub fn name(self) -> &'static str {
        match self {
            Metric::ExactMatch => "em",
            Metric::ExactMatchSquad => "em-squad",
            Metric::ChrfPlusPlus => "chrf++",
            Metric::MacroF1 => "macro-f1",
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
            Metric::MacroF1 => "macro-F1",
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
pub fn score<P: AsRef<str> + Sync, R: AsRef<str> + Sync>(
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
        Metric::MacroF1 => {
            let v = macro_f1::corpus_macro_f1(predictions, references)?;
            (
                100.0 * v,
                format!("{}|nrefs:{}", macro_f1::signature(), chrf::nrefs_label(references)),
            )
        }
    };
    Ok(Score { metric, value, n: predictions.len(), signature })
}

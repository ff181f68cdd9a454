//! The errors of the metric functions.

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
    pub fn check_corpus(
        left_name: &'static str,
        left: usize,
        right: usize,
    ) -> Result<(), MetricError> {
        if left != right {
            return Err(MetricError::LengthMismatch {
                left_name,
                left,
                right_name: "references",
                right,
            });
        }
        if left == 0 {
            return Err(MetricError::EmptyCorpus);
        }
        Ok(())
    }
}

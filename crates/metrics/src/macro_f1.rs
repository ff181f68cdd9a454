//! Macro-averaged F1 over the answers as class labels: the headline of a classification task
//! next to accuracy (exact match), because accuracy alone cannot tell a model that learned the
//! classes from one that answers the majority class (on 40 reviews, 20 of each, "positive" to
//! everything is 50 % accurate but has macro-F1 33.3).
//!
//! Defined as scikit-learn's `f1_score(y_true, y_pred, average="macro")`: the labels are the
//! union of the gold labels and the predictions (compared as raw strings, as raw exact match
//! does), each label's F1 is `2·TP / (2·TP + FP + FN)`, and the score is their unweighted mean.
//! Every label of that union occurs at least once as gold or as a prediction, so no F1 is 0/0 and
//! scikit-learn's `zero_division` setting never applies.
//!
//! It is a corpus-level metric (the mean of per-class ratios is not a mean over examples), so the
//! bootstrap recomputes it from per-example `(gold, predicted)` label pairs on every resample
//! ([`LabelPairs::score`]), counting only the labels that occur in that resample, as
//! scikit-learn would on the resampled rows.
//!
//! Several references: the gold label of a row is the reference the prediction equals, if any,
//! else the first reference (a prediction matching any accepted answer is a true positive, as
//! exact match counts it). With one reference per row this is exactly scikit-learn's input.

use std::collections::HashMap;

use crate::error::MetricError;

/// Per-example `(gold, predicted)` label indices into [`LabelPairs::labels`].
#[derive(Debug, Clone)]
pub struct LabelPairs {
    /// Every label seen as gold or as a prediction, in order of first appearance.
    pub labels: Vec<String>,
    /// One `(gold, predicted)` pair per example.
    pub pairs: Vec<(u32, u32)>,
}

impl LabelPairs {
    /// The label pairs of a corpus (errors: different lengths, an empty corpus, a row without
    /// references).
    pub fn new<P, R, S>(predictions: &[P], references: &[R]) -> Result<LabelPairs, MetricError>
    where
        P: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        MetricError::check_corpus("predictions", predictions.len(), references.len())?;
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut labels: Vec<String> = Vec::new();
        let mut id = |label: &str| -> u32 {
            if let Some(&i) = index.get(label) {
                return i;
            }
            let i = labels.len() as u32;
            labels.push(label.to_string());
            index.insert(label.to_string(), i);
            i
        };
        let mut pairs = Vec::with_capacity(predictions.len());
        for (i, (p, r)) in predictions.iter().zip(references).enumerate() {
            let (p, r) = (p.as_ref(), r.as_ref());
            let gold = gold_label(p, r).ok_or(MetricError::NoReferences { index: i })?;
            let g = id(gold);
            pairs.push((g, id(p)));
        }
        Ok(LabelPairs { labels, pairs })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Macro-F1 in `[0, 1]` of the examples at `idx` (repetitions count; NaN when `idx` is
    /// empty): the mean F1 over the labels that occur in those examples.
    pub fn score(&self, idx: &[usize]) -> f64 {
        if idx.is_empty() {
            return f64::NAN;
        }
        // Per label: true positives, gold occurrences, predicted occurrences.
        let k = self.labels.len();
        let (mut tp, mut gold, mut pred) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
        for &i in idx {
            let (g, p) = self.pairs[i];
            gold[g as usize] += 1;
            pred[p as usize] += 1;
            if g == p {
                tp[g as usize] += 1;
            }
        }
        let (mut sum, mut present) = (0.0f64, 0usize);
        for c in 0..k {
            // 2·TP + FP + FN = gold + predicted occurrences.
            let denominator = gold[c] + pred[c];
            if denominator > 0 {
                sum += 2.0 * tp[c] as f64 / denominator as f64;
                present += 1;
            }
        }
        sum / present as f64
    }

    /// Macro-F1 of every example together.
    pub fn corpus(&self) -> f64 {
        self.score(&(0..self.len()).collect::<Vec<_>>())
    }
}

/// The gold label of one row: the reference equal to the prediction, else the first reference
/// (`None` without references).
pub fn gold_label<'r, S: AsRef<str>>(prediction: &str, references: &'r [S]) -> Option<&'r str> {
    references
        .iter()
        .map(AsRef::as_ref)
        .find(|r| *r == prediction)
        .or_else(|| references.first().map(AsRef::as_ref))
}

/// Corpus macro-F1, a fraction in `[0, 1]` (not percent), as
/// `sklearn.metrics.f1_score(gold, predictions, average="macro")`.
pub fn corpus_macro_f1<P, R, S>(predictions: &[P], references: &[R]) -> Result<f64, MetricError>
where
    P: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Ok(LabelPairs::new(predictions, references)?.corpus())
}

/// Reproducibility signature, e.g. `macro-f1|labels:raw|impl:prompt2model-rs-0.1.0` (the
/// scorer appends `|nrefs:N`).
pub fn signature() -> String {
    format!("macro-f1|labels:raw|impl:prompt2model-rs-{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(gold: &[&str]) -> Vec<Vec<String>> {
        gold.iter().map(|g| vec![g.to_string()]).collect()
    }

    #[test]
    fn macro_f1_by_hand() {
        // gold: a a b b, predicted: a b b b → F1(a) = 2·1/(2+1) = 2/3, F1(b) = 2·2/(2+3) = 4/5.
        let v = corpus_macro_f1(&["a", "b", "b", "b"], &refs(&["a", "a", "b", "b"])).unwrap();
        assert!((v - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-15, "{v}");
        // A constant answer on a balanced set: F1 = 2/3 for the answered class, 0 for the other.
        let gold: Vec<&str> =
            (0..40).map(|i| if i < 20 { "positive" } else { "negative" }).collect();
        let v = corpus_macro_f1(&["positive"; 40], &refs(&gold)).unwrap();
        assert!((v - 1.0 / 3.0).abs() < 1e-15, "{v}");
        // A predicted label that is never gold counts as a class with F1 0 (scikit-learn's union).
        let v = corpus_macro_f1(&["a", "c"], &refs(&["a", "b"])).unwrap();
        assert!((v - 1.0 / 3.0).abs() < 1e-15, "{v}");
        assert_eq!(corpus_macro_f1(&["x"], &refs(&["x"])).unwrap(), 1.0);
    }

    #[test]
    fn several_references_and_errors() {
        // The prediction equals the second reference: a true positive of that label.
        let r = vec![vec!["yes".to_string(), "Yes".to_string()], vec!["no".to_string()]];
        assert_eq!(corpus_macro_f1(&["Yes", "no"], &r).unwrap(), 1.0);
        assert_eq!(gold_label("maybe", &["yes", "Yes"]), Some("yes"));
        assert_eq!(gold_label("x", &[] as &[&str]), None);
        assert!(matches!(
            corpus_macro_f1(&["a"], &[Vec::<String>::new()]),
            Err(MetricError::NoReferences { index: 0 })
        ));
        assert!(matches!(
            corpus_macro_f1(&["a", "b"], &refs(&["a"])),
            Err(MetricError::LengthMismatch { .. })
        ));
        assert!(matches!(
            corpus_macro_f1(&[] as &[&str], &refs(&[])),
            Err(MetricError::EmptyCorpus)
        ));
    }

    #[test]
    fn a_resample_counts_only_its_own_labels() {
        let pairs = LabelPairs::new(&["a", "b", "c"], &refs(&["a", "b", "b"])).unwrap();
        // Rows 0 and 0 again: only label `a`, predicted right twice.
        assert_eq!(pairs.score(&[0, 0]), 1.0);
        // Row 2 alone: gold b predicted c → both labels present, both F1 0.
        assert_eq!(pairs.score(&[2]), 0.0);
        assert!(pairs.score(&[]).is_nan());
        assert_eq!(pairs.labels, ["a", "b", "c"]);
    }
}

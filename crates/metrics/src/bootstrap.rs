//! Confidence intervals for corpus scores by the percentile bootstrap over test examples (Efron &
//! Tibshirani 1993): resample the examples with replacement, recompute the corpus score, and take
//! the 2.5th and 97.5th percentiles. The score is recomputed the way the metric defines it (chrF++
//! from summed n-gram statistics, not a mean of sentence scores), and every resample is drawn from
//! a seeded [`SplitMix64`], so an interval is reproducible from its signature.

use serde::{Deserialize, Serialize};

use crate::error::MetricError;
use crate::macro_f1::LabelPairs;
use crate::metric::Metric;
use crate::rng::SplitMix64;
use crate::{chrf, exact_match};

/// How intervals are computed (the project's defaults: 1,000 resamples, 95 %, seed 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    pub resamples: usize,
    pub confidence: f64,
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig { resamples: 1000, confidence: 0.95, seed: 0 }
    }
}

impl BootstrapConfig {
    pub fn signature(&self) -> String {
        format!(
            "bootstrap:percentile|resamples:{}|conf:{}|seed:{}",
            self.resamples, self.confidence, self.seed
        )
    }
}

/// A score with its bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} [{:.2}, {:.2}]", self.value, self.low, self.high)
    }
}

/// The percentile interval of `score` over `n` examples: `score` gets the indices of one resample
/// (with repetitions) and returns the corpus score of those examples.
pub fn bootstrap(n: usize, cfg: &BootstrapConfig, score: impl Fn(&[usize]) -> f64) -> Interval {
    let all: Vec<usize> = (0..n).collect();
    let value = score(&all);
    if n == 0 || cfg.resamples == 0 {
        return Interval { value, low: value, high: value, n };
    }
    let mut rng = SplitMix64::new(cfg.seed);
    let mut idx = vec![0usize; n];
    let stats: Vec<f64> = (0..cfg.resamples)
        .map(|_| {
            for slot in idx.iter_mut() {
                *slot = rng.below(n as u64) as usize;
            }
            score(&idx)
        })
        .collect();
    percentile_interval(value, stats, cfg.confidence, n)
}

/// The central `confidence` interval of resampled statistics around `value` (non-empty `stats`).
fn percentile_interval(value: f64, mut stats: Vec<f64>, confidence: f64, n: usize) -> Interval {
    stats.sort_by(|a, b| a.total_cmp(b));
    let alpha = (1.0 - confidence) / 2.0;
    let at = |q: f64| {
        // Linear interpolation between order statistics (numpy's default `percentile`).
        let pos = q * (stats.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        stats[lo] + (stats[hi] - stats[lo]) * (pos - lo as f64)
    };
    Interval { value, low: at(alpha), high: at(1.0 - alpha), n }
}

/// The interval of the mean of per-example values (exact match, BERTScore F1), in their units.
pub fn mean_interval(values: &[f64], cfg: &BootstrapConfig) -> Interval {
    bootstrap(values.len(), cfg, |idx| {
        if idx.is_empty() {
            f64::NAN
        } else {
            idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64
        }
    })
}

/// A corpus metric over a fixed set of examples, recomputable on any resample of them: per-example
/// values for exact match, per-example n-gram statistics for chrF++ (summed, then scored, as the
/// metric defines the corpus score), per-example (gold, predicted) labels for macro-F1 (counted
/// per label, then averaged over the labels of the resample).
#[derive(Debug)]
pub struct CorpusScorer {
    metric: Metric,
    /// Exact match: one value per example (0 or 100). chrF++: the statistics, one row each.
    /// Macro-F1: the label pairs.
    values: Vec<f64>,
    stats: Vec<Vec<u64>>,
    labels: Option<LabelPairs>,
}

impl CorpusScorer {
    pub fn new<P: AsRef<str>, R: AsRef<str>>(
        metric: Metric,
        predictions: &[P],
        references: &[Vec<R>],
    ) -> Result<CorpusScorer, MetricError> {
        MetricError::check_corpus("predictions", predictions.len(), references.len())?;
        let mut scorer =
            CorpusScorer { metric, values: Vec::new(), stats: Vec::new(), labels: None };
        match metric {
            Metric::ExactMatch | Metric::ExactMatchSquad => {
                let norm = if metric == Metric::ExactMatch {
                    exact_match::EmNormalization::Raw
                } else {
                    exact_match::EmNormalization::Squad
                };
                scorer.values =
                    predictions
                        .iter()
                        .zip(references)
                        .map(|(p, r)| {
                            if exact_match::exact_match(p.as_ref(), r, norm) {
                                100.0
                            } else {
                                0.0
                            }
                        })
                        .collect();
            }
            Metric::ChrfPlusPlus => {
                let chrf_cfg = chrf::ChrfConfig::chrf_plus_plus();
                scorer.stats = predictions
                    .iter()
                    .zip(references)
                    .enumerate()
                    .map(|(i, (p, r))| {
                        chrf::segment_statistics(p.as_ref(), r, &chrf_cfg).map_err(|e| match e {
                            MetricError::NoReferences { .. } => {
                                MetricError::NoReferences { index: i }
                            }
                            other => other,
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            Metric::MacroF1 => scorer.labels = Some(LabelPairs::new(predictions, references)?),
        }
        Ok(scorer)
    }

    /// How many examples.
    pub fn len(&self) -> usize {
        self.values.len().max(self.stats.len()).max(self.labels.as_ref().map_or(0, LabelPairs::len))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The corpus score of the examples at `idx` (repetitions count), in percent.
    pub fn score(&self, idx: &[usize]) -> f64 {
        match self.metric {
            Metric::ExactMatch | Metric::ExactMatchSquad => {
                if idx.is_empty() {
                    f64::NAN
                } else {
                    idx.iter().map(|&i| self.values[i]).sum::<f64>() / idx.len() as f64
                }
            }
            Metric::ChrfPlusPlus => {
                let width = self.stats.first().map(Vec::len).unwrap_or(0);
                let mut sum = vec![0u64; width];
                for &i in idx {
                    for (s, v) in sum.iter_mut().zip(&self.stats[i]) {
                        *s += v;
                    }
                }
                chrf::score_from_statistics(&sum, &chrf::ChrfConfig::chrf_plus_plus())
            }
            Metric::MacroF1 => {
                100.0 * self.labels.as_ref().expect("built with the label pairs").score(idx)
            }
        }
    }

    /// The score of every example together.
    pub fn corpus(&self) -> f64 {
        self.score(&(0..self.len()).collect::<Vec<_>>())
    }
}

/// A metric of [`Metric`] with its bootstrap interval, in percent as [`crate::score`] reports it.
pub fn metric_interval<P: AsRef<str> + Sync, R: AsRef<str> + Sync>(
    metric: Metric,
    predictions: &[P],
    references: &[Vec<R>],
    cfg: &BootstrapConfig,
) -> Result<Interval, MetricError> {
    Ok(score_with_interval(metric, predictions, references, cfg)?.interval)
}

/// A metric's score with its interval, and the per-example scorer behind both (kept for paired
/// tests and τ intervals).
pub struct ScoredInterval {
    pub score: crate::Score,
    pub interval: Interval,
    pub scorer: CorpusScorer,
}

/// [`crate::score`] and its bootstrap interval over the same examples.
pub fn score_with_interval<P: AsRef<str> + Sync, R: AsRef<str> + Sync>(
    metric: Metric,
    predictions: &[P],
    references: &[Vec<R>],
    cfg: &BootstrapConfig,
) -> Result<ScoredInterval, MetricError> {
    let score = crate::score(metric, predictions, references)?;
    let scorer = CorpusScorer::new(metric, predictions, references)?;
    let interval = bootstrap(scorer.len(), cfg, |idx| scorer.score(idx));
    // The scorer recomputes the corpus score from per-example statistics: on all examples it is
    // the metric's own value, or the interval would be around another number.
    assert!(
        (interval.value - score.value).abs() <= 1e-9 * score.value.abs().max(1.0),
        "{}: the bootstrap's full-sample score {} differs from the metric's {}",
        metric.name(),
        interval.value,
        score.value
    );
    Ok(ScoredInterval { score, interval, scorer })
}

/// A paired comparison of two systems on the same examples (Koehn 2004): A − B on all examples
/// with the percentile interval of A − B over the resamples, and the one-sided p-value of
/// "A scores higher than B" (the share of resamples in which A does not beat B). One set of
/// resamples gives both, so "the interval lies above 0" and "p < 2.5 %" agree but for ties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// A − B, with its interval (`n`: the examples).
    pub difference: Interval,
    pub p_value: f64,
}

/// [`PairedDifference`] of `a` against `b` (both scored on the same examples, in the same order).
pub fn paired_difference(
    a: &CorpusScorer,
    b: &CorpusScorer,
    cfg: &BootstrapConfig,
) -> Result<PairedDifference, MetricError> {
    MetricError::check_corpus("system B's examples", b.len(), a.len())?;
    let n = a.len();
    let delta = a.corpus() - b.corpus();
    if n == 0 || cfg.resamples == 0 {
        return Ok(PairedDifference {
            difference: Interval { value: delta, low: delta, high: delta, n },
            p_value: f64::NAN,
        });
    }
    let mut rng = SplitMix64::new(cfg.seed);
    let mut idx = vec![0usize; n];
    let mut not_better = 0usize;
    let mut differences = Vec::with_capacity(cfg.resamples);
    for _ in 0..cfg.resamples {
        for slot in idx.iter_mut() {
            *slot = rng.below(n as u64) as usize;
        }
        let (sa, sb) = (a.score(&idx), b.score(&idx));
        if sa <= sb {
            not_better += 1;
        }
        differences.push(sa - sb);
    }
    Ok(PairedDifference {
        difference: percentile_interval(delta, differences, cfg.confidence, n),
        p_value: not_better as f64 / cfg.resamples as f64,
    })
}

/// Paired bootstrap test (Koehn 2004) of "system A scores higher than system B" on the same
/// examples: the share of resamples in which A does not beat B (a one-sided p-value), with
/// A − B on all examples ([`paired_difference`] without the interval).
pub fn paired_bootstrap(
    a: &CorpusScorer,
    b: &CorpusScorer,
    cfg: &BootstrapConfig,
) -> Result<(f64, f64), MetricError> {
    let d = paired_difference(a, b, cfg)?;
    Ok((d.difference.value, d.p_value))
}

/// The percentile interval of Kendall's τ-b between the models' scores on two test sets, each
/// resampled over its own examples (the same resample for every model, so the models stay paired).
pub fn kendall_interval(
    first: &[CorpusScorer],
    second: &[CorpusScorer],
    cfg: &BootstrapConfig,
) -> Interval {
    let n = (
        first.first().map(CorpusScorer::len).unwrap_or(0),
        second.first().map(CorpusScorer::len).unwrap_or(0),
    );
    let tau = |a: &[f64], b: &[f64]| {
        crate::kendall::kendall_tau_b(a, b).map(|k| k.tau).unwrap_or(f64::NAN)
    };
    let all = |len: usize| (0..len).collect::<Vec<_>>();
    let (ia, ib) = (all(n.0), all(n.1));
    let value = tau(
        &first.iter().map(|s| s.score(&ia)).collect::<Vec<_>>(),
        &second.iter().map(|s| s.score(&ib)).collect::<Vec<_>>(),
    );
    let mut rng = SplitMix64::new(cfg.seed);
    let (mut ra, mut rb) = (vec![0usize; n.0], vec![0usize; n.1]);
    let mut stats: Vec<f64> = Vec::with_capacity(cfg.resamples);
    for _ in 0..cfg.resamples {
        for slot in ra.iter_mut() {
            *slot = rng.below(n.0 as u64) as usize;
        }
        for slot in rb.iter_mut() {
            *slot = rng.below(n.1 as u64) as usize;
        }
        let t = tau(
            &first.iter().map(|s| s.score(&ra)).collect::<Vec<_>>(),
            &second.iter().map(|s| s.score(&rb)).collect::<Vec<_>>(),
        );
        // A resample where every model ties on one side has no τ: it is left out.
        if t.is_finite() {
            stats.push(t);
        }
    }
    if stats.is_empty() {
        return Interval { value, low: f64::NAN, high: f64::NAN, n: first.len() };
    }
    percentile_interval(value, stats, cfg.confidence, first.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_contain_the_score_and_shrink_with_more_data() {
        let cfg = BootstrapConfig::default();
        let small: Vec<f64> = (0..20).map(|i| if i % 2 == 0 { 100.0 } else { 0.0 }).collect();
        let large: Vec<f64> = (0..2000).map(|i| if i % 2 == 0 { 100.0 } else { 0.0 }).collect();
        let (a, b) = (mean_interval(&small, &cfg), mean_interval(&large, &cfg));
        assert_eq!((a.value, b.value), (50.0, 50.0));
        assert!(a.low < 50.0 && a.high > 50.0 && b.low < 50.0 && b.high > 50.0);
        assert!(b.high - b.low < (a.high - a.low) / 5.0, "{a} vs {b}");
        // The binomial standard error at n = 2000 is 1.12 points: the 95 % interval is about ±2.2.
        assert!((b.high - b.low - 4.4).abs() < 0.6, "{b}");
        assert_eq!(mean_interval(&small, &cfg), mean_interval(&small, &cfg), "seeded");
    }

    #[test]
    fn corpus_chrf_is_recomputed_from_statistics_per_resample() {
        let preds = ["the cat sat", "a dog", "on the mat", "birds fly high"];
        let refs: Vec<Vec<&str>> =
            vec![vec!["the cat sat down"], vec!["the dog"], vec!["on a mat"], vec!["birds fly"]];
        let iv = metric_interval(Metric::ChrfPlusPlus, &preds, &refs, &BootstrapConfig::default())
            .unwrap();
        let corpus = crate::metric::score(Metric::ChrfPlusPlus, &preds, &refs).unwrap().value;
        assert!((iv.value - corpus).abs() < 1e-9, "the interval's centre is the corpus score");
        assert!(iv.low <= iv.value && iv.value <= iv.high);
        let em = metric_interval(
            Metric::ExactMatchSquad,
            &["Paris", "x"],
            &[vec!["paris"], vec!["y"]],
            &BootstrapConfig::default(),
        )
        .unwrap();
        assert_eq!(em.value, 50.0);
    }

    #[test]
    fn macro_f1_is_recomputed_per_resample_and_paired_against_a_constant_answer() {
        let refs: Vec<Vec<String>> =
            (0..40).map(|i| vec![if i % 2 == 0 { "pos" } else { "neg" }.to_string()]).collect();
        let constant = vec!["pos".to_string(); 40];
        // Right on 36 of 40.
        let learned: Vec<String> = (0..40)
            .map(|i| {
                let right = if i % 2 == 0 { "pos" } else { "neg" };
                if i % 10 == 3 {
                    "pos".into()
                } else {
                    right.to_string()
                }
            })
            .collect();
        let cfg = BootstrapConfig::default();
        let c = score_with_interval(Metric::MacroF1, &constant, &refs, &cfg).unwrap();
        assert!((c.score.value - 100.0 / 3.0).abs() < 1e-9, "{}", c.score);
        // On a resample with g "pos" rows of n the constant answer scores g / (g + n): below
        // 50 whenever a "neg" row was drawn.
        assert!(c.interval.low < c.interval.value && c.interval.high < 50.0, "{}", c.interval);
        let l = score_with_interval(Metric::MacroF1, &learned, &refs, &cfg).unwrap();
        assert!(l.interval.low < l.interval.value && l.interval.value < l.interval.high);
        assert!(c.score.signature.starts_with("macro-f1|labels:raw|"), "{}", c.score.signature);
        let (delta, p) = paired_bootstrap(&l.scorer, &c.scorer, &cfg).unwrap();
        assert!(delta > 50.0 && p < 0.01, "{delta} {p}");
        // The same constant answer against itself is never better.
        let (delta, p) = paired_bootstrap(&c.scorer, &c.scorer, &cfg).unwrap();
        assert_eq!((delta, p), (0.0, 1.0));
    }

    #[test]
    fn paired_bootstrap_and_kendall_interval() {
        let refs: Vec<Vec<String>> = (0..40).map(|i| vec![format!("answer {i}")]).collect();
        let good: Vec<String> =
            (0..40).map(|i| if i % 4 == 0 { "x".into() } else { format!("answer {i}") }).collect();
        let bad: Vec<String> =
            (0..40).map(|i| if i % 2 == 0 { "x".into() } else { format!("answer {i}") }).collect();
        let a = CorpusScorer::new(Metric::ExactMatch, &good, &refs).unwrap();
        let b = CorpusScorer::new(Metric::ExactMatch, &bad, &refs).unwrap();
        assert_eq!((a.corpus(), b.corpus()), (75.0, 50.0));
        let (delta, p) = paired_bootstrap(&a, &b, &BootstrapConfig::default()).unwrap();
        assert_eq!(delta, 25.0);
        assert!(p < 0.01, "A is better on every resample: p = {p}");
        let (_, p_rev) = paired_bootstrap(&b, &a, &BootstrapConfig::default()).unwrap();
        assert!(p_rev > 0.99);
        // The interval of A − B comes from the same resamples: above 0 where p is near 0.
        let d = paired_difference(&a, &b, &BootstrapConfig::default()).unwrap();
        assert_eq!((d.difference.value, d.p_value), (delta, p));
        assert!(d.difference.low > 0.0 && d.difference.low <= 25.0 && d.difference.high >= 25.0);
        let r = paired_difference(&b, &a, &BootstrapConfig::default()).unwrap();
        assert!(r.difference.high < 0.0, "{}", r.difference);
        // Three systems ranked the same on both "test sets": τ = 1, and the interval holds it.
        let mid: Vec<String> =
            (0..40).map(|i| if i % 3 == 0 { "x".into() } else { format!("answer {i}") }).collect();
        let c = CorpusScorer::new(Metric::ExactMatch, &mid, &refs).unwrap();
        let first = vec![
            CorpusScorer::new(Metric::ExactMatch, &good, &refs).unwrap(),
            CorpusScorer::new(Metric::ExactMatch, &mid, &refs).unwrap(),
            CorpusScorer::new(Metric::ExactMatch, &bad, &refs).unwrap(),
        ];
        let second = vec![a, c, b];
        let iv = kendall_interval(&first, &second, &BootstrapConfig::default());
        assert_eq!(iv.value, 1.0);
        assert!(iv.low <= 1.0 && iv.high == 1.0 && iv.low > -1.0, "{iv}");
    }
}

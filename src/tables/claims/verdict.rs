//! The rule that turns a measurement into a verdict on one of the paper's claims. Pure: an
//! interval, what the claim expects of it and what stands in the way go in, a verdict and the
//! sentence that says why come out. [`RULE`] is the rule as the report prints it.

use serde::{Deserialize, Serialize};

/// What became of a claim here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Reproduced,
    NotReproduced,
    Inconclusive,
    NotTestable,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotTestable => "not testable here",
        }
    }
}

/// What a claim says of the quantity measured for it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Expectation {
    /// The quantity is above `threshold`: a difference A − B above 0 ("A > B"), τ above 0, a
    /// cost ratio above 10.
    Above { threshold: f64 },
    /// The quantity is below `threshold`: a difference A − B below 0 ("A < B").
    Below { threshold: f64 },
    /// The quantity, a difference A − B, lies within ± `margin` ("A ≈ B").
    Within { margin: f64 },
}

impl Expectation {
    /// The value the quantity is judged against: the threshold, or 0 (the centre of a margin).
    pub fn reference(&self) -> f64 {
        match self {
            Expectation::Above { threshold } | Expectation::Below { threshold } => *threshold,
            Expectation::Within { .. } => 0.0,
        }
    }

    /// "> 0", "within ±2": as the report's tables print it.
    pub fn describe(&self) -> String {
        match self {
            Expectation::Above { threshold } => format!("> {}", number(*threshold)),
            Expectation::Below { threshold } => format!("< {}", number(*threshold)),
            Expectation::Within { margin } => format!("within ±{}", number(*margin)),
        }
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A measured quantity: its value on all the data and its 95 % interval. A quantity computed
/// rather than sampled (a cost ratio, [`Estimate::exact`]) has no interval: `low == value == high`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// Whether `low`–`high` is a sampling interval (false: a computed value).
    pub sampled: bool,
}

impl Estimate {
    /// A sampled quantity with its 95 % interval.
    pub fn interval(value: f64, low: f64, high: f64) -> Estimate {
        Estimate { value, low, high, sampled: true }
    }

    /// A computed quantity: no sampling interval.
    pub fn exact(value: f64) -> Estimate {
        Estimate { value, low: value, high: value, sampled: false }
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sampled {
            write!(f, "{:.2} [{:.2}, {:.2}]", self.value, self.low, self.high)
        } else {
            write!(f, "{:.2}", self.value)
        }
    }
}

/// What keeps a measurement from deciding a claim, whatever its interval says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "why", rename_all = "kebab-case")]
pub enum Obstacle {
    /// Nothing here can test the claim: the two arms are the same (identical weights, or
    /// identical in what the claim varies), or the cells were not run at this scale.
    NotTestable(String),
    /// Measured, but on something that cannot stand for what the claim is about (a test sample on
    /// which the teacher scores outside its whole-test-set interval): no verdict either way.
    Unreliable(String),
    /// The estimate is an upper bound of the quantity (a cost ratio over a lower-bound cost): it
    /// can show the claim false, never true.
    UpperBound(String),
}

/// A verdict and the sentence that says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub why: String,
}

/// Kendall's τ of Table 3 is evidence only over at least this many students that learned the
/// task (each beats its trivial baseline on the real test): the grid issue #22 asks for.
pub const MIN_STUDENTS_THAT_LEARN: usize = 6;

/// The rule, as the report prints it.
pub const RULE: [&str; 6] = [
    "Each claim is a statement about one measured quantity (a paired difference A − B on the same test examples, Kendall's τ, a share of duplicates, a cost ratio), with its 95 % interval (paired percentile bootstrap, 1,000 seeded resamples, unless the row says otherwise).",
    "\"Above t\" (A > B is A − B above 0; τ > 0): the whole interval above t → reproduced; the whole interval below t → not reproduced (the opposite holds); an interval that contains t → inconclusive. \"Below t\" (A < B) the same, mirrored.",
    "\"Within ±m\" (A ≈ B, with the margin m stated in data/claims.toml): the whole interval inside [−m, m] → reproduced; the whole interval outside it (above m or below −m) → not reproduced; otherwise → inconclusive.",
    "Not testable here, whatever the numbers: the two arms trained identical weights (sha256 of the trained weights), or are identical in what the claim varies (the training rows, sha256 of assembly/train.jsonl, for data retrieval; the student model for model retrieval), or the cells were not run at this scale (\"paper scale: not run here\"). Such a claim is never reproduced: equal scores there are equal by construction, not by measurement.",
    "Inconclusive, whatever the interval: the test sample is not representative (the teacher's score on the sample lies outside the 95 % interval of its score on the whole real test set), or both arms score 0 (the metric's floor: two students that learned nothing agree on every example, which says nothing about the claim), or no student of the comparison beats its trivial baseline (the input copied, the most frequent training answer, the majority class: paired bootstrap, one-sided, p < 0.05); where only one of two does not, the verdict stands and the row names it; Kendall's τ, unless at least 6 of the students it ranks beat their trivial baselines (a ranking of students that learned nothing says nothing about the claim). Not testable here: τ is undefined because every student scored the same on one test set.",
    "A computed quantity (a cost ratio) has no sampling interval: its value is compared with t. Where it is only an upper bound (a generation cost that is a lower bound), it can show the claim false but not true: a bound above t → inconclusive.",
];

/// The verdict on a claim that expects `expect` of `estimate`, given the obstacles found.
pub fn judge(
    expect: Expectation,
    estimate: Option<&Estimate>,
    obstacles: &[Obstacle],
) -> Judgement {
    let not_testable: Vec<&str> = obstacles
        .iter()
        .filter_map(|o| match o {
            Obstacle::NotTestable(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    if !not_testable.is_empty() {
        return Judgement { verdict: Verdict::NotTestable, why: not_testable.join("; ") };
    }
    let Some(e) = estimate else {
        return Judgement { verdict: Verdict::NotTestable, why: "nothing was measured".into() };
    };
    if !(e.value.is_finite() && e.low.is_finite() && e.high.is_finite()) {
        return Judgement {
            verdict: Verdict::Inconclusive,
            why: format!("the estimate or its interval is undefined ({e})"),
        };
    }
    let interval = if e.sampled {
        format!("the 95 % interval [{:.2}, {:.2}]", e.low, e.high)
    } else {
        format!("the value {:.2}", e.value)
    };
    let (mut verdict, mut why) = match expect {
        Expectation::Above { threshold: t } => {
            if e.low > t {
                (Verdict::Reproduced, format!("{interval} lies above {}", number(t)))
            } else if e.high < t {
                (
                    Verdict::NotReproduced,
                    format!("{interval} lies below {}: the opposite holds", number(t)),
                )
            } else {
                (Verdict::Inconclusive, format!("{interval} contains {}", number(t)))
            }
        }
        Expectation::Below { threshold: t } => {
            if e.high < t {
                (Verdict::Reproduced, format!("{interval} lies below {}", number(t)))
            } else if e.low > t {
                (
                    Verdict::NotReproduced,
                    format!("{interval} lies above {}: the opposite holds", number(t)),
                )
            } else {
                (Verdict::Inconclusive, format!("{interval} contains {}", number(t)))
            }
        }
        Expectation::Within { margin: m } => {
            if e.low >= -m && e.high <= m {
                (Verdict::Reproduced, format!("{interval} lies within ±{}", number(m)))
            } else if e.low > m || e.high < -m {
                (Verdict::NotReproduced, format!("{interval} lies outside ±{}", number(m)))
            } else {
                (Verdict::Inconclusive, format!("{interval} reaches beyond ±{}", number(m)))
            }
        }
    };
    for o in obstacles {
        match o {
            Obstacle::UpperBound(reason) => {
                // Only what holds for every quantity at or below the estimate stands.
                let stands = match expect {
                    Expectation::Above { threshold } => e.high < threshold,
                    Expectation::Below { threshold } => e.high < threshold,
                    Expectation::Within { margin } => e.high < -margin,
                };
                if !stands && verdict != Verdict::Inconclusive {
                    why = format!("{why}, but it is an upper bound ({reason}), which cannot show the claim true");
                    verdict = Verdict::Inconclusive;
                } else {
                    why = format!("{why} (an upper bound: {reason})");
                }
            }
            Obstacle::Unreliable(reason) => {
                if verdict != Verdict::Inconclusive {
                    why = format!("{why}, but {reason}");
                    verdict = Verdict::Inconclusive;
                } else {
                    why = format!("{why}; and {reason}");
                }
            }
            Obstacle::NotTestable(_) => unreachable!("handled above"),
        }
    }
    Judgement { verdict, why }
}

/// What decides whether two arms of an ablation differ in what it varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Varied {
    /// The training data (data retrieval): the arms must train on different rows.
    Data,
    /// The student model (model retrieval): the arms must train different models.
    Model,
}

/// One arm of a comparison: what it trained, for telling identical arms apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArmIdentity {
    pub label: String,
    /// sha256 of the trained weights.
    pub weights_sha256: Option<String>,
    /// sha256 of the training rows as assembled.
    pub train_rows_sha256: Option<String>,
    /// The model trained (the run's model choice).
    pub student: Option<String>,
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Why two arms cannot test a claim that varies `varied`, if they cannot: identical trained
/// weights, or no difference in what the claim varies (or no way to tell).
pub fn identical_arms(a: &ArmIdentity, b: &ArmIdentity, varied: Varied) -> Option<Obstacle> {
    let (Some(wa), Some(wb)) = (&a.weights_sha256, &b.weights_sha256) else {
        return Some(Obstacle::NotTestable(format!(
            "no trained weights to compare for `{}` or `{}`",
            a.label, b.label
        )));
    };
    if wa == wb {
        return Some(Obstacle::NotTestable(format!(
            "`{}` and `{}` trained identical weights (sha256 {}…): their scores are equal by construction",
            a.label,
            b.label,
            short(wa)
        )));
    }
    match varied {
        Varied::Data => match (&a.train_rows_sha256, &b.train_rows_sha256) {
            (Some(ra), Some(rb)) if ra == rb => Some(Obstacle::NotTestable(format!(
                "`{}` and `{}` trained on identical rows (sha256 {}…): the ablation removed no data",
                a.label,
                b.label,
                short(ra)
            ))),
            (Some(_), Some(_)) => None,
            _ => Some(Obstacle::NotTestable(format!(
                "no training rows to compare for `{}` or `{}`",
                a.label, b.label
            ))),
        },
        Varied::Model => match (&a.student, &b.student) {
            (Some(sa), Some(sb)) if sa == sb => Some(Obstacle::NotTestable(format!(
                "`{}` and `{}` both trained `{sa}`: model retrieval chose the ablation's model",
                a.label, b.label
            ))),
            (Some(_), Some(_)) => None,
            _ => Some(Obstacle::NotTestable(format!(
                "no model choice recorded for `{}` or `{}`",
                a.label, b.label
            ))),
        },
    }
}

/// Newcombe's hybrid score interval (method 10, from two Wilson intervals) of the difference
/// `x1/n1 − x2/n2` of two independent proportions, in percentage points.
pub fn difference_of_proportions(x1: usize, n1: usize, x2: usize, n2: usize) -> Estimate {
    const Z: f64 = 1.959_963_984_540_054;
    let wilson = |x: usize, n: usize| -> (f64, f64, f64) {
        if n == 0 {
            return (f64::NAN, f64::NAN, f64::NAN);
        }
        let (p, n) = (x as f64 / n as f64, n as f64);
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        (p, centre - half, centre + half)
    };
    let (p1, l1, u1) = wilson(x1, n1);
    let (p2, l2, u2) = wilson(x2, n2);
    let d = p1 - p2;
    let low = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let high = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    Estimate::interval(100.0 * d, 100.0 * low, 100.0 * high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(value: f64, low: f64, high: f64) -> Estimate {
        Estimate::interval(value, low, high)
    }
    const ABOVE0: Expectation = Expectation::Above { threshold: 0.0 };

    #[test]
    fn a_directional_claim_follows_where_the_interval_lies() {
        let j = judge(ABOVE0, Some(&est(5.0, 1.0, 9.0)), &[]);
        assert_eq!(j.verdict, Verdict::Reproduced, "{}", j.why);
        assert!(j.why.contains("[1.00, 9.00] lies above 0"), "{}", j.why);
        let j = judge(ABOVE0, Some(&est(-5.0, -9.0, -1.0)), &[]);
        assert_eq!(j.verdict, Verdict::NotReproduced);
        assert!(j.why.contains("opposite"), "{}", j.why);
        for (low, high) in [(-1.0, 9.0), (0.0, 9.0), (-9.0, 0.0), (0.0, 0.0)] {
            let j = judge(ABOVE0, Some(&est(0.0, low, high)), &[]);
            assert_eq!(j.verdict, Verdict::Inconclusive, "[{low}, {high}]: {}", j.why);
        }
        // A sampled interval is printed as one, even when it is a point.
        assert_eq!(est(0.0, 0.0, 0.0).to_string(), "0.00 [0.00, 0.00]");
        assert!(judge(ABOVE0, Some(&est(0.0, 0.0, 0.0)), &[])
            .why
            .contains("[0.00, 0.00] contains 0"));
        assert_eq!(Estimate::exact(108.0).to_string(), "108.00");
        let below = Expectation::Below { threshold: 0.0 };
        assert_eq!(judge(below, Some(&est(-5.0, -9.0, -1.0)), &[]).verdict, Verdict::Reproduced);
        assert_eq!(judge(below, Some(&est(5.0, 1.0, 9.0)), &[]).verdict, Verdict::NotReproduced);
        assert_eq!(judge(below, Some(&est(0.0, -1.0, 9.0)), &[]).verdict, Verdict::Inconclusive);
        // τ > 0 is the same rule on τ itself; a ratio above 10 on the ratio.
        let j = judge(Expectation::Above { threshold: 10.0 }, Some(&Estimate::exact(108.0)), &[]);
        assert_eq!(j.verdict, Verdict::Reproduced);
        assert!(j.why.contains("the value 108.00 lies above 10"), "{}", j.why);
    }

    #[test]
    fn an_equivalence_claim_needs_the_interval_inside_the_margin() {
        let within = Expectation::Within { margin: 3.0 };
        assert_eq!(judge(within, Some(&est(0.5, -2.0, 2.9)), &[]).verdict, Verdict::Reproduced);
        assert_eq!(judge(within, Some(&est(0.0, -3.0, 3.0)), &[]).verdict, Verdict::Reproduced);
        assert_eq!(judge(within, Some(&est(0.5, -4.0, 2.0)), &[]).verdict, Verdict::Inconclusive);
        assert_eq!(judge(within, Some(&est(8.0, 3.5, 12.0)), &[]).verdict, Verdict::NotReproduced);
        assert_eq!(
            judge(within, Some(&est(-8.0, -12.0, -3.5)), &[]).verdict,
            Verdict::NotReproduced
        );
        assert_eq!(within.describe(), "within ±3");
        assert_eq!(ABOVE0.describe(), "> 0");
    }

    #[test]
    fn identical_weights_are_never_reproduced() {
        let arm = |label: &str, w: &str, rows: &str, student: &str| ArmIdentity {
            label: label.into(),
            weights_sha256: Some(w.into()),
            train_rows_sha256: Some(rows.into()),
            student: Some(student.into()),
        };
        let p2m = arm("Prompt2Model", "aaaa1111bbbb2222", "rows1", "decoder");
        let same = arm("w/o model retrieval", "aaaa1111bbbb2222", "rows1", "decoder");
        let obstacle = identical_arms(&p2m, &same, Varied::Model).expect("identical");
        // Even an interval far above 0 is not evidence here.
        let j = judge(ABOVE0, Some(&est(9.0, 5.0, 12.0)), std::slice::from_ref(&obstacle));
        assert_eq!(j.verdict, Verdict::NotTestable);
        assert!(j.why.contains("identical weights (sha256 aaaa1111bbbb…)"), "{}", j.why);
        // So is an equivalence claim whose arms are the same model.
        let j = judge(Expectation::Within { margin: 2.0 }, Some(&est(0.0, 0.0, 0.0)), &[obstacle]);
        assert_eq!(j.verdict, Verdict::NotTestable);

        // Different weights, same rows: the data ablation removed nothing; the model ablation is
        // a test (rows are meant to be the same there).
        let other_model = arm("w/o model retrieval", "cccc", "rows1", "tiny:32:1:2");
        assert!(identical_arms(&p2m, &other_model, Varied::Model).is_none());
        let same_rows = arm("w/o data retrieval", "dddd", "rows1", "decoder");
        let o = identical_arms(&p2m, &same_rows, Varied::Data).expect("same rows");
        assert!(matches!(&o, Obstacle::NotTestable(w) if w.contains("identical rows")), "{o:?}");
        assert!(identical_arms(&p2m, &arm("x", "eeee", "rows2", "decoder"), Varied::Data).is_none());
        // Same student, different weights (different data): not a model-retrieval test.
        let o = identical_arms(&p2m, &same_rows, Varied::Model).expect("same student");
        assert!(matches!(&o, Obstacle::NotTestable(w) if w.contains("both trained `decoder`")));
        // Nothing to compare is not a test either.
        let unknown = ArmIdentity { label: "?".into(), ..Default::default() };
        assert!(matches!(
            identical_arms(&p2m, &unknown, Varied::Data),
            Some(Obstacle::NotTestable(_))
        ));
    }

    #[test]
    fn an_unrepresentative_sample_or_cells_not_run_overrule_the_interval() {
        let unrep = Obstacle::Unreliable(
            "the teacher scores 8.38 on the sample, outside [29.1, 32.2] on the whole set".into(),
        );
        let j = judge(ABOVE0, Some(&est(20.0, 10.0, 30.0)), std::slice::from_ref(&unrep));
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(j.why.contains("lies above 0, but the teacher scores 8.38"), "{}", j.why);
        let j = judge(ABOVE0, Some(&est(-20.0, -30.0, -10.0)), &[unrep]);
        assert_eq!(j.verdict, Verdict::Inconclusive);
        let j = judge(ABOVE0, None, &[Obstacle::NotTestable("paper scale: not run here".into())]);
        assert_eq!(
            (j.verdict, j.why.as_str()),
            (Verdict::NotTestable, "paper scale: not run here")
        );
        assert_eq!(judge(ABOVE0, None, &[]).verdict, Verdict::NotTestable);
        let nan = est(f64::NAN, f64::NAN, f64::NAN);
        assert_eq!(judge(ABOVE0, Some(&nan), &[]).verdict, Verdict::Inconclusive);
    }

    #[test]
    fn an_upper_bound_can_only_refute() {
        let bound = Obstacle::UpperBound("the generation cost is a lower bound".into());
        let above10 = Expectation::Above { threshold: 10.0 };
        let j = judge(above10, Some(&Estimate::exact(4000.0)), std::slice::from_ref(&bound));
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.why);
        let j = judge(above10, Some(&Estimate::exact(3.0)), &[bound]);
        assert_eq!(j.verdict, Verdict::NotReproduced, "{}", j.why);
    }

    #[test]
    fn newcombes_interval_of_two_proportions() {
        // Newcombe (1998), Table II, method 10: 56/70 − 48/80 → [0.0524, 0.3339]; 9/10 − 3/10 →
        // [0.1705, 0.8090]; 6/7 − 2/7 → [0.0582, 0.8062].
        for ((x1, n1, x2, n2), (low, high)) in [
            ((56, 70, 48, 80), (5.24, 33.39)),
            ((9, 10, 3, 10), (17.05, 80.90)),
            ((6, 7, 2, 7), (5.82, 80.62)),
        ] {
            let e = difference_of_proportions(x1, n1, x2, n2);
            assert!((e.low - low).abs() < 0.01 && (e.high - high).abs() < 0.01, "{e}");
        }
        // The paper's own counts: 120 of 200 duplicates without high-diversity prompting, 25 with.
        let e = difference_of_proportions(120, 200, 25, 200);
        assert!((e.value - 47.5).abs() < 1e-9 && e.low > 38.0 && e.high < 56.0, "{e}");
        let none = difference_of_proportions(0, 10, 0, 10);
        assert_eq!(none.value, 0.0);
        assert!(none.low < 0.0 && none.high > 0.0, "{none}");
    }
}

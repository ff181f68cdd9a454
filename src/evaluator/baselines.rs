//! The numbers a trivial model gets, beside every score: the majority class of the training data
//! (classification), the input copied as the answer and the most frequent training output
//! (generation). Each is a vector of predictions scored with the same metrics and the same
//! bootstrap on the same test examples as the student, and a paired bootstrap test (the one of
//! [`crate::evaluator::bootstrap::paired_bootstrap`]) says whether the student beats the best of
//! them: a score without it cannot tell a model that learned the task from one that learned the
//! prior (EM 50 on a balanced two-class set is exactly what "positive" to everything gets).

use std::collections::HashMap;
use std::fmt::Write as _;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::diagnostics::DataDiagnostics;
use crate::data::examples::Example;
use crate::data::label_set::fold_label;
use crate::evaluator::bootstrap::{
    paired_bootstrap, score_with_interval, BootstrapConfig, CorpusScorer, Interval,
};
use crate::evaluator::{Metric, MetricError};

/// The one-sided p-value under which "the student beats the baseline" is taken as shown.
pub const SIGNIFICANCE: f64 = 0.05;

/// A trivial model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineKind {
    /// The training data's most frequent label, for every input (classification).
    MajorityClass,
    /// The input itself as the answer (generation).
    CopyInput,
    /// The training data's most frequent output, for every input (generation).
    MostFrequentOutput,
}

impl BaselineKind {
    /// The baselines of a classification task or of a generation task.
    pub fn for_task(classification: bool) -> &'static [BaselineKind] {
        if classification {
            &[BaselineKind::MajorityClass]
        } else {
            &[BaselineKind::CopyInput, BaselineKind::MostFrequentOutput]
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            BaselineKind::MajorityClass => "majority class",
            BaselineKind::CopyInput => "copy the input",
            BaselineKind::MostFrequentOutput => "most frequent training output",
        }
    }
}

/// A baseline's predictions on a test set.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    pub kind: BaselineKind,
    /// The constant answer, for the majority class and the most frequent output.
    pub answer: Option<String>,
    pub predictions: Vec<String>,
}

impl Baseline {
    /// `majority class ("positive")`, `copy the input`.
    pub fn name(&self) -> String {
        match &self.answer {
            Some(a) => {
                format!("{} (\"{}\")", self.kind.describe(), crate::util::text::flat_excerpt(a, 40))
            }
            None => self.kind.describe().to_string(),
        }
    }
}

/// The predictions of baseline `kind` for `test_inputs`, learned from `train` (the examples the
/// student trains on). `labels` is the task's label set: the majority class is the most frequent
/// training output that is one of them (folded; the answer is the set's spelling of it), or
/// the most frequent output when there is no set. `None` when `train` has no output to take
/// (a constant baseline with no training rows).
pub fn baseline_predictions(
    kind: BaselineKind,
    train: &[Example],
    labels: Option<&[String]>,
    test_inputs: &[String],
) -> Option<Baseline> {
    let constant = |answer: String| Baseline {
        kind,
        predictions: vec![answer.clone(); test_inputs.len()],
        answer: Some(answer),
    };
    match kind {
        BaselineKind::CopyInput => {
            Some(Baseline { kind, answer: None, predictions: test_inputs.to_vec() })
        }
        BaselineKind::MostFrequentOutput => most_frequent_output(train, |_| true).map(constant),
        BaselineKind::MajorityClass => {
            let keys: Option<Vec<String>> =
                labels.map(|l| l.iter().map(|l| fold_label(l)).collect());
            // The largest class by folded output, then its most frequent spelling.
            let mut classes: HashMap<String, usize> = HashMap::new();
            for e in train {
                let key = fold_label(&e.output);
                if !key.is_empty() && keys.as_ref().is_none_or(|k| k.contains(&key)) {
                    *classes.entry(key).or_default() += 1;
                }
            }
            let mut ranked: Vec<(String, usize)> = classes.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let (majority, _) = ranked.into_iter().next()?;
            // Answered as the label set spells it (the instruction's `positive`, not the data's
            // `Positive`): a constant answer a person would write from the instruction. Without
            // a set, its most frequent spelling in the data.
            let stated = labels.and_then(|l| l.iter().find(|l| fold_label(l) == majority));
            match stated {
                Some(label) => Some(constant(label.trim().to_string())),
                None => most_frequent_output(train, |o| fold_label(o) == majority).map(constant),
            }
        }
    }
}

/// The most frequent trimmed, non-empty output among those `keep` accepts (ties: the smaller in
/// byte order, so the choice is reproducible).
fn most_frequent_output(train: &[Example], keep: impl Fn(&str) -> bool) -> Option<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in train {
        let o = e.output.trim();
        if !o.is_empty() && keep(o) {
            *counts.entry(o).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(o, _)| o.to_string())
}

/// Every baseline of `kinds` that can be built (see [`baseline_predictions`]).
pub fn baselines(
    kinds: &[BaselineKind],
    train: &[Example],
    labels: Option<&[String]>,
    test_inputs: &[String],
) -> Vec<Baseline> {
    kinds.iter().filter_map(|&k| baseline_predictions(k, train, labels, test_inputs)).collect()
}

/// The baselines of a run: the majority class when `diagnostics` see a classification task (its
/// label set), else the copied input and the most frequent training output.
pub fn baselines_for_run(
    diagnostics: Option<&DataDiagnostics>,
    train: &[Example],
    test_inputs: &[String],
) -> Vec<Baseline> {
    let labels = diagnostics.and_then(DataDiagnostics::label_set);
    baselines(BaselineKind::for_task(labels.is_some()), train, labels, test_inputs)
}

/// One system's score on one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemScore {
    /// `student` or the baseline's name.
    pub system: String,
    /// `None` for the student.
    pub baseline: Option<BaselineKind>,
    pub metric: Metric,
    pub interval: Interval,
    pub signature: String,
}

/// The paired test of the student against the best baseline on the headline metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineTest {
    pub baseline: String,
    pub metric: Metric,
    /// Student − baseline on all test examples, in the metric's points.
    pub delta: f64,
    /// One-sided: the share of resamples in which the student does not beat the baseline.
    pub p_value: f64,
    /// `delta > 0` and `p_value < SIGNIFICANCE`.
    pub better: bool,
}

impl BaselineTest {
    /// `better than the baseline` or `not better than the baseline`: the verdict alone, for a
    /// table column beside the numbers.
    pub fn outcome(&self) -> &'static str {
        if self.better {
            "better than the baseline"
        } else {
            "not better than the baseline"
        }
    }

    /// The verdict with the best baseline's name, the difference and p, for a table cell:
    /// `not better than the baseline (copy the input: Δ +0.00, p = 1.000)`.
    pub fn brief(&self) -> String {
        format!(
            "{} ({}: Δ {:+.2}, p = {:.3})",
            self.outcome(),
            self.baseline,
            self.delta,
            self.p_value
        )
    }

    /// `better than the baseline …` or `not better than the baseline …`, with the numbers.
    pub fn verdict(&self) -> String {
        format!(
            "{}: student − {} = {:+.2} {} points, p = {:.3} (paired bootstrap, one-sided; the share of resamples in which the student does not beat it)",
            self.outcome(),
            self.baseline,
            self.delta,
            self.metric.display_name(),
            self.p_value
        )
    }
}

/// The student beside its baselines on one test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineComparison {
    pub test_set: String,
    /// The student's scores, then each baseline's, metric by metric.
    pub rows: Vec<SystemScore>,
    /// Against the baseline with the highest headline score (`None` without baselines).
    pub test: Option<BaselineTest>,
}

/// Score `student`'s predictions and every baseline's on `references` with each of `metrics`
/// (the first is the headline: it picks the best baseline and is the paired test's), each with
/// its bootstrap interval under `cfg`, and test "student − best baseline".
pub fn compare_to_baselines(
    test_set: &str,
    student: &[String],
    references: &[Vec<String>],
    baselines: &[Baseline],
    metrics: &[Metric],
    cfg: &BootstrapConfig,
) -> Result<BaselineComparison, MetricError> {
    let headline = *metrics.first().ok_or_else(|| {
        MetricError::InvalidConfig("compare_to_baselines needs at least one metric".into())
    })?;
    let mut rows = Vec::new();
    let mut headline_scorers: Vec<CorpusScorer> = Vec::new();
    let systems = std::iter::once(("student".to_string(), None, student))
        .chain(baselines.iter().map(|b| (b.name(), Some(b.kind), b.predictions.as_slice())));
    for (system, baseline, predictions) in systems {
        for &metric in metrics {
            let scored = score_with_interval(metric, predictions, references, cfg)?;
            rows.push(SystemScore {
                system: system.clone(),
                baseline,
                metric,
                interval: scored.interval,
                signature: format!("{}|{}", scored.score.signature, cfg.signature()),
            });
            if metric == headline {
                headline_scorers.push(scored.scorer);
            }
        }
    }
    let best = headline_scorers
        .iter()
        .enumerate()
        .skip(1)
        .max_by(|a, b| a.1.corpus().total_cmp(&b.1.corpus()).then(b.0.cmp(&a.0)));
    let test = match best {
        Some((i, scorer)) => {
            let (delta, p_value) = paired_bootstrap(&headline_scorers[0], scorer, cfg)?;
            Some(BaselineTest {
                baseline: baselines[i - 1].name(),
                metric: headline,
                delta,
                p_value,
                better: delta > 0.0 && p_value < SIGNIFICANCE,
            })
        }
        None => None,
    };
    Ok(BaselineComparison { test_set: test_set.to_string(), rows, test })
}

impl BaselineComparison {
    /// The rows as a table (test set, system, metric, value, 95 % low and high, n, signature),
    /// for the evaluation report.
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        DataFrame::new_infer_height(vec![
            Column::new("test set".into(), vec![self.test_set.clone(); r.len()]),
            Column::new("system".into(), r.iter().map(|s| s.system.clone()).collect::<Vec<_>>()),
            Column::new("metric".into(), r.iter().map(|s| s.metric.name()).collect::<Vec<_>>()),
            Column::new("value".into(), r.iter().map(|s| s.interval.value).collect::<Vec<_>>()),
            Column::new("95% low".into(), r.iter().map(|s| s.interval.low).collect::<Vec<_>>()),
            Column::new("95% high".into(), r.iter().map(|s| s.interval.high).collect::<Vec<_>>()),
            Column::new("n".into(), r.iter().map(|s| s.interval.n as u64).collect::<Vec<_>>()),
            Column::new(
                "signature".into(),
                r.iter().map(|s| s.signature.clone()).collect::<Vec<_>>(),
            ),
        ])
    }

    /// A Markdown table (one row per system, one column per metric) and the paired test's
    /// verdict, for the card and the run summary.
    pub fn to_markdown(&self) -> String {
        let metrics: Vec<Metric> = {
            let mut m: Vec<Metric> = Vec::new();
            for r in &self.rows {
                if !m.contains(&r.metric) {
                    m.push(r.metric);
                }
            }
            m
        };
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| {} test set | {} |",
            self.test_set,
            metrics
                .iter()
                .map(|m| format!("{} [95 % CI]", m.display_name()))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(md, "|---|{}", "---:|".repeat(metrics.len()));
        let mut systems: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        for system in systems {
            let cells: Vec<String> = metrics
                .iter()
                .map(|m| {
                    self.rows
                        .iter()
                        .find(|r| r.system == system && r.metric == *m)
                        .map_or("—".into(), |r| r.interval.to_string())
                })
                .collect();
            let name = if system == "student" {
                "**student**".to_string()
            } else {
                format!("baseline: {}", system.replace('|', "\\|"))
            };
            let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
        }
        if let Some(t) = &self.test {
            let _ = writeln!(md, "\nThe student is {}.", t.verdict());
        }
        md
    }
}

/// A baseline as a row of a table whose systems (Table 2's arms, a live table's cells) trained
/// on different data but were scored on the same test examples: the copied input is the same
/// for all of them, a constant answer the same for those whose training data had the same most
/// frequent output. Each distinct baseline is one row, naming the systems that gave it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableBaseline {
    /// The baseline's name ([`Baseline::name`]).
    pub system: String,
    pub kind: BaselineKind,
    pub metric: Metric,
    pub interval: Interval,
    /// The systems whose training data gave this baseline, in the order given.
    pub from: Vec<String>,
}

impl TableBaseline {
    /// `baseline: majority class ("positive")`, for a table's system column.
    pub fn label(&self) -> String {
        format!("baseline: {}", self.system)
    }

    /// Where the baseline comes from, for a table's notes column: the copied input needs no
    /// training data; a constant answer is the most frequent output of the named systems' data.
    pub fn provenance(&self) -> String {
        match self.kind {
            BaselineKind::CopyInput => "trivial: the input itself".into(),
            _ => format!("trivial: from the training data of {}", self.from.join(", ")),
        }
    }
}

/// The baseline rows of several systems' comparisons on the same test examples, each distinct
/// baseline (the same name, metric and score) once, in first-seen order, with the systems that
/// gave it. `comparisons` pairs each system's name with its comparison.
pub fn distinct_baselines<'a>(
    comparisons: impl IntoIterator<Item = (&'a str, &'a BaselineComparison)>,
) -> Vec<TableBaseline> {
    let mut out: Vec<TableBaseline> = Vec::new();
    for (system, comparison) in comparisons {
        for row in &comparison.rows {
            let Some(kind) = row.baseline else { continue };
            let same = |t: &&mut TableBaseline| {
                t.system == row.system && t.metric == row.metric && t.interval == row.interval
            };
            match out.iter_mut().find(same) {
                Some(t) if t.from.iter().any(|f| f == system) => {}
                Some(t) => t.from.push(system.to_string()),
                None => out.push(TableBaseline {
                    system: row.system.clone(),
                    kind,
                    metric: row.metric,
                    interval: row.interval.clone(),
                    from: vec![system.to_string()],
                }),
            }
        }
    }
    out
}

/// A system of a table (an arm, a cell) against the best of the baselines of its own training
/// data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersusBaseline {
    /// What the table groups systems by (the task), where it groups them.
    pub group: Option<String>,
    pub system: String,
    pub test: BaselineTest,
}

/// The systems against their best baselines as a table: group (named `group_column`, where
/// there is one), system (named `system_column`), best baseline, metric, Δ, p and the verdict.
pub fn versus_frame(
    rows: &[VersusBaseline],
    group_column: Option<&str>,
    system_column: &str,
) -> PolarsResult<DataFrame> {
    let mut columns = Vec::new();
    if let Some(g) = group_column {
        columns.push(Column::new(
            g.into(),
            rows.iter().map(|r| r.group.clone().unwrap_or_default()).collect::<Vec<_>>(),
        ));
    }
    columns.extend([
        Column::new(
            system_column.into(),
            rows.iter().map(|r| r.system.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "best baseline".into(),
            rows.iter().map(|r| r.test.baseline.clone()).collect::<Vec<_>>(),
        ),
        Column::new("metric".into(), rows.iter().map(|r| r.test.metric.name()).collect::<Vec<_>>()),
        Column::new(
            format!("Δ ({system_column} − baseline, points)").into(),
            rows.iter().map(|r| r.test.delta).collect::<Vec<_>>(),
        ),
        Column::new(
            format!("p ({system_column} not better)").into(),
            rows.iter().map(|r| r.test.p_value).collect::<Vec<_>>(),
        ),
        Column::new(
            "verdict".into(),
            rows.iter().map(|r| r.test.outcome().to_string()).collect::<Vec<_>>(),
        ),
    ]);
    DataFrame::new_infer_height(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced_test() -> (Vec<String>, Vec<Vec<String>>) {
        let inputs = (0..40).map(|i| format!("review {i}")).collect();
        let refs = (0..40)
            .map(|i| vec![if i < 20 { "positive" } else { "negative" }.to_string()])
            .collect();
        (inputs, refs)
    }

    fn one_class_training() -> Vec<Example> {
        let mut train: Vec<Example> =
            (0..30).map(|i| Example::new(format!("r{i}"), "positive")).collect();
        train.extend((0..4).map(|i| Example::new(format!("s{i}"), "Positive")));
        train.extend((0..20).map(|i| Example::new(format!("t{i}"), "N/A")));
        train
    }

    #[test]
    fn baselines_from_the_training_data() {
        let train = one_class_training();
        let inputs = vec!["a".to_string(), "b".to_string()];
        let labels = vec!["positive".to_string(), "negative".to_string()];
        let majority =
            baseline_predictions(BaselineKind::MajorityClass, &train, Some(&labels), &inputs)
                .unwrap();
        assert_eq!(majority.predictions, ["positive", "positive"]);
        assert_eq!(majority.name(), "majority class (\"positive\")");
        // Without a label set the most frequent output wins whatever it is.
        let mut noisy = train.clone();
        noisy.extend((0..20).map(|i| Example::new(format!("u{i}"), "N/A")));
        let mfo =
            baseline_predictions(BaselineKind::MostFrequentOutput, &noisy, None, &inputs).unwrap();
        assert_eq!(mfo.answer.as_deref(), Some("N/A"));
        let majority =
            baseline_predictions(BaselineKind::MajorityClass, &noisy, Some(&labels), &inputs)
                .unwrap();
        assert_eq!(majority.answer.as_deref(), Some("positive"), "N/A is not a label");
        // The offline teacher's sentiment data (#27): `Positive` 5, `positive` 1, `Negative` 1.
        // The majority answer is the instruction's spelling, which the test set uses.
        let capitalised: Vec<Example> = ["Positive"; 5]
            .into_iter()
            .chain(["positive", "Negative"])
            .enumerate()
            .map(|(i, o)| Example::new(format!("v{i}"), o))
            .collect();
        let majority =
            baseline_predictions(BaselineKind::MajorityClass, &capitalised, Some(&labels), &inputs)
                .unwrap();
        assert_eq!(majority.answer.as_deref(), Some("positive"));
        let unstated =
            baseline_predictions(BaselineKind::MajorityClass, &capitalised, None, &inputs).unwrap();
        assert_eq!(unstated.answer.as_deref(), Some("Positive"), "no set: the data's spelling");
        let copy = baseline_predictions(BaselineKind::CopyInput, &[], None, &inputs).unwrap();
        assert_eq!((copy.name(), copy.predictions), ("copy the input".to_string(), inputs.clone()));
        assert_eq!(
            baseline_predictions(BaselineKind::MostFrequentOutput, &[], None, &inputs),
            None
        );
        assert_eq!(BaselineKind::for_task(true), [BaselineKind::MajorityClass]);
        assert_eq!(baselines(BaselineKind::for_task(false), &[], None, &inputs).len(), 1);
        // A run's: from its diagnostics.
        let prompt =
            crate::prompt_parser::ParsedPrompt::new("Answer \"positive\" or \"negative\".", vec![]);
        let d = crate::data::diagnostics::diagnose(&train, &prompt, 0);
        let run = baselines_for_run(Some(&d), &train, &inputs);
        assert_eq!(run.len(), 1);
        assert_eq!(run[0].name(), "majority class (\"positive\")");
        let kinds: Vec<BaselineKind> =
            baselines_for_run(None, &train, &inputs).iter().map(|b| b.kind).collect();
        assert_eq!(kinds, [BaselineKind::CopyInput, BaselineKind::MostFrequentOutput]);
    }

    #[test]
    fn a_constant_answer_student_is_not_better_than_the_majority_baseline() {
        let (inputs, refs) = balanced_test();
        let labels = vec!["positive".to_string(), "negative".to_string()];
        let b =
            baselines(BaselineKind::for_task(true), &one_class_training(), Some(&labels), &inputs);
        let student = vec!["positive".to_string(); 40];
        let metrics = [Metric::ExactMatch, Metric::MacroF1];
        let cfg = BootstrapConfig::default();
        let c = compare_to_baselines("real", &student, &refs, &b, &metrics, &cfg).unwrap();
        assert_eq!(c.rows.len(), 4);
        assert_eq!((c.rows[0].system.as_str(), c.rows[0].interval.value), ("student", 50.0));
        assert_eq!(c.rows[2].system, "majority class (\"positive\")");
        assert_eq!(c.rows[2].interval, c.rows[0].interval, "the same answers, the same interval");
        let t = c.test.as_ref().unwrap();
        assert_eq!((t.delta, t.p_value, t.better), (0.0, 1.0, false));
        assert!(t.verdict().starts_with("not better than the baseline"), "{}", t.verdict());
        let md = c.to_markdown();
        assert!(md.contains("| **student** | 50.00 ["), "{md}");
        assert!(md.contains("| baseline: majority class (\"positive\") | 50.00 ["), "{md}");
        assert!(md.contains("The student is not better than the baseline"), "{md}");
        assert_eq!(c.frame().unwrap().height(), 4);
    }

    #[test]
    fn a_student_that_learned_beats_the_best_baseline() {
        let (inputs, refs) = balanced_test();
        // Wrong on rows 0 and 10 only: EM 95.
        let student: Vec<String> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| if i % 10 == 0 { "negative".into() } else { r[0].clone() })
            .collect();
        let train: Vec<Example> = (0..10)
            .map(|i| Example::new(format!("t{i}"), if i < 6 { "negative" } else { "positive" }))
            .collect();
        let b = baselines(BaselineKind::for_task(false), &train, None, &inputs);
        let c = compare_to_baselines(
            "real",
            &student,
            &refs,
            &b,
            &[Metric::ExactMatch],
            &BootstrapConfig::default(),
        )
        .unwrap();
        // Copy-the-input scores 0, the most frequent output ("negative") 50: the best baseline.
        let t = c.test.unwrap();
        assert_eq!(t.baseline, "most frequent training output (\"negative\")");
        assert_eq!(t.delta, 45.0);
        assert!(t.better && t.p_value < 0.01, "{t:?}");
        assert!(t.verdict().starts_with("better than the baseline"));
        // No baselines: no test; no metric: an error.
        let c = compare_to_baselines(
            "real",
            &student,
            &refs,
            &[],
            &[Metric::ExactMatch],
            &BootstrapConfig::default(),
        )
        .unwrap();
        assert!(c.test.is_none());
        assert!(compare_to_baselines(
            "real",
            &student,
            &refs,
            &[],
            &[],
            &BootstrapConfig::default()
        )
        .is_err());
    }

    #[test]
    fn a_table_shows_each_distinct_baseline_once_with_whose_data_gave_it() {
        let (inputs, refs) = balanced_test();
        let cfg = BootstrapConfig::default();
        let student = vec!["positive".to_string(); 40];
        // Two cells trained on data whose most frequent output is "negative", one on "positive".
        let train = |answer: &str| -> Vec<Example> {
            (0..5).map(|i| Example::new(format!("t{i}"), answer)).collect()
        };
        let kinds = BaselineKind::for_task(false);
        let compare = |answer: &str| {
            let b = baselines(kinds, &train(answer), None, &inputs);
            compare_to_baselines("real", &student, &refs, &b, &[Metric::ExactMatch], &cfg).unwrap()
        };
        let (a, b, c) = (compare("negative"), compare("negative"), compare("positive"));
        let rows = distinct_baselines([("a", &a), ("b", &b), ("c", &c)]);
        let shown: Vec<(&str, Vec<&str>)> = rows
            .iter()
            .map(|r| (r.system.as_str(), r.from.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            shown,
            [
                ("copy the input", vec!["a", "b", "c"]),
                ("most frequent training output (\"negative\")", vec!["a", "b"]),
                ("most frequent training output (\"positive\")", vec!["c"]),
            ]
        );
        assert_eq!(rows[0].provenance(), "trivial: the input itself");
        assert_eq!(rows[1].provenance(), "trivial: from the training data of a, b");
        assert_eq!(rows[2].label(), "baseline: most frequent training output (\"positive\")");
        assert_eq!(rows[1].interval.value, 50.0);
        // The verdicts as a table: the constant "positive" student equals c's best baseline.
        let versus: Vec<VersusBaseline> = [("a", &a), ("c", &c)]
            .iter()
            .map(|(s, x)| VersusBaseline {
                group: Some("sentiment".into()),
                system: s.to_string(),
                test: x.test.clone().unwrap(),
            })
            .collect();
        let t = &versus[1].test;
        assert_eq!((t.delta, t.better), (0.0, false));
        assert!(t.brief().starts_with("not better than the baseline (most frequent training output (\"positive\"): Δ +0.00, p = "), "{}", t.brief());
        let frame = versus_frame(&versus, Some("task"), "row").unwrap();
        let names: Vec<String> = frame.get_column_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(
            names,
            [
                "task",
                "row",
                "best baseline",
                "metric",
                "Δ (row − baseline, points)",
                "p (row not better)",
                "verdict"
            ]
        );
        let verdicts = crate::data::loaders::string_column(&frame, "verdict").unwrap();
        assert_eq!(verdicts, ["not better than the baseline", "not better than the baseline"]);
        assert_eq!(versus_frame(&versus, None, "arm").unwrap().width(), 6);
    }
}

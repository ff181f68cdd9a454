//! The data gate: before training, a run stops when its examples are degenerate — a classification
//! task with a class missing or one class holding nearly every row, or most rows flagged — and
//! says why and what to do, unless the user accepts the data (`--accept-data`). Training on such
//! data spends the run's time on a model that can only answer the prior.
//!
//! [`check_data`] is a pure function of the [`DataDiagnostics`] and the thresholds ([`DataGate`],
//! part of a run's configuration), so the report can state both.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::diagnostics::{DataDiagnostics, RowFlag};

/// The gate's thresholds (a run's settings; the defaults are what the run uses unless its
/// configuration says otherwise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataGate {
    /// Stop a classification task when a label of its set has no row at all: the student cannot
    /// learn a class it never sees. Default true.
    pub refuse_missing_class: bool,
    /// Stop a classification task when its largest class holds more than this share of the
    /// labelled rows (default 0.9), or any task when one output is more than this share of all
    /// rows: a student trained on it answers that class.
    pub max_majority_share: f64,
    /// Stop when more than this share of all rows is flagged (empty, N/A, copies, looping text,
    /// duplicates, contradictions, outside the answer set; default 0.5).
    pub max_flagged_share: f64,
    /// Stop when fewer rows than this are left without a flag (default 1).
    pub min_clean_rows: usize,
}

impl Default for DataGate {
    fn default() -> Self {
        DataGate {
            refuse_missing_class: true,
            max_majority_share: 0.9,
            max_flagged_share: 0.5,
            min_clean_rows: 1,
        }
    }
}

impl DataGate {
    /// The thresholds in one sentence, for reports.
    pub fn describe(&self) -> String {
        format!(
            "the data gate stops a run before training when {}a classification task's largest class holds more than {:.0} % of the labelled rows (another task's most frequent output, of all rows), more than {:.0} % of the rows are flagged, or fewer than {} rows are unflagged",
            if self.refuse_missing_class { "a classification task misses a class of its label set, " } else { "" },
            100.0 * self.max_majority_share,
            100.0 * self.max_flagged_share,
            self.min_clean_rows
        )
    }
}

/// Why the gate stopped a run: each reason, and what to do about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRefusal {
    pub reasons: Vec<String>,
    pub fixes: Vec<String>,
}

impl fmt::Display for DataRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the generated data is not fit to train on, so the run stops before training:"
        )?;
        for r in &self.reasons {
            writeln!(f, "  - {r}")?;
        }
        writeln!(f, "What to do:")?;
        for (i, fix) in self.fixes.iter().enumerate() {
            if i + 1 < self.fixes.len() {
                writeln!(f, "  - {fix}")?;
            } else {
                write!(f, "  - {fix}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for DataRefusal {}

/// How the fixes name the run folder until [`DataRefusal::naming_run`] puts the real one in.
const RUN_DIR: &str = "runs/<name>";

impl DataRefusal {
    /// The refusal with its fixes naming `run_dir` (e.g. `p2m serve runs/reviews`).
    pub fn naming_run(mut self, run_dir: &Path) -> DataRefusal {
        let dir = run_dir.display().to_string();
        for fix in &mut self.fixes {
            *fix = fix.replace(RUN_DIR, &dir);
        }
        self
    }
}

/// What the gate decided for a run that goes on to training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum GateOutcome {
    /// The data passed the thresholds.
    Passed,
    /// The data would have been refused for `reasons`; the user accepted it (`--accept-data`).
    Accepted { reasons: Vec<String> },
}

impl GateOutcome {
    /// A paragraph for the reports and the card.
    pub fn to_markdown(&self, gate: &DataGate) -> String {
        match self {
            GateOutcome::Passed => format!("The data passed the gate ({}).", gate.describe()),
            GateOutcome::Accepted { reasons } => format!(
                "**The data was accepted as it is (`--accept-data`)** although the gate would have stopped the run ({}):\n\n{}",
                gate.describe(),
                reasons.iter().map(|r| format!("- {r}")).collect::<Vec<_>>().join("\n")
            ),
        }
    }
}

/// The gate for a run: [`check_data`], with a refusal turned into [`GateOutcome::Accepted`] when
/// `accept_data` (the user's `--accept-data`).
pub fn gate_run(
    diagnostics: &DataDiagnostics,
    gate: &DataGate,
    accept_data: bool,
) -> Result<GateOutcome, DataRefusal> {
    match check_data(diagnostics, gate) {
        Ok(()) => Ok(GateOutcome::Passed),
        Err(refusal) if accept_data => Ok(GateOutcome::Accepted { reasons: refusal.reasons }),
        Err(refusal) => Err(refusal),
    }
}

/// Whether `diagnostics` pass `gate`: `Ok` or the reasons to stop and the fixes.
pub fn check_data(diagnostics: &DataDiagnostics, gate: &DataGate) -> Result<(), DataRefusal> {
    let d = diagnostics;
    let pct = |x: f64| format!("{:.0} %", 100.0 * x);
    let mut reasons = Vec::new();
    if let Some(labels) = &d.labels {
        if gate.refuse_missing_class && !labels.missing.is_empty() {
            reasons.push(format!(
                "classification task ({} labels, {}) with no example of {}",
                labels.label_set.labels.len(),
                labels.label_set.source.describe(),
                labels.missing.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", ")
            ));
        }
        if labels.labelled_rows > 0 && labels.majority_share > gate.max_majority_share {
            reasons.push(format!(
                "one class holds {} of the {} labelled rows (\"{}\"; the limit is {}): a student trained on it learns to answer that class",
                pct(labels.majority_share),
                labels.labelled_rows,
                labels.majority_label.as_deref().unwrap_or(""),
                pct(gate.max_majority_share)
            ));
        }
    }
    if d.flagged_share > gate.max_flagged_share {
        let mut by_flag: Vec<(RowFlag, usize)> =
            RowFlag::ALL.iter().map(|&f| (f, d.count(f))).filter(|(_, n)| *n > 0).collect();
        by_flag.sort_by_key(|(_, rows)| std::cmp::Reverse(*rows));
        reasons.push(format!(
            "{} of {} rows are flagged ({}; the limit is {}): {}",
            d.flagged_rows,
            d.examples,
            pct(d.flagged_share),
            pct(gate.max_flagged_share),
            by_flag
                .iter()
                .map(|(f, n)| format!("{} {n}", f.describe()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let (None, Some(top)) = (&d.labels, d.top_outputs.first()) {
        let top_share = top.rows as f64 / d.examples as f64;
        if top_share > gate.max_majority_share {
            reasons.push(format!(
                "one output is {} of the {} rows (\"{}\"; the limit is {}): a student trained on it learns to give that output",
                pct(top_share),
                d.examples,
                crate::util::text::flat_excerpt(&top.text, 60),
                pct(gate.max_majority_share)
            ));
        }
    }
    let clean = d.examples - d.flagged_rows;
    if clean < gate.min_clean_rows {
        reasons.push(format!(
            "{clean} of {} rows are unflagged (at least {} needed)",
            d.examples, gate.min_clean_rows
        ));
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(DataRefusal {
        reasons,
        fixes: vec![
            format!("look at the rows on the review page (`p2m serve {RUN_DIR}`, then /review): reject or correct them, or sharpen the instruction and demonstrations there, then `p2m run` again"),
            "generate with another teacher (`--teacher openai --base-url …`) or more examples (`--n`), then run again".into(),
            "train on this data anyway with `--accept-data` (the report and the card then say the data was accepted as it is)".into(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::diagnostics::diagnose;
    use crate::data::examples::Example;
    use crate::prompt_parser::ParsedPrompt;

    fn sentiment() -> ParsedPrompt {
        ParsedPrompt::new(
            "Given a product review, answer \"positive\" or \"negative\".",
            vec![Example::new("Great.", "positive"), Example::new("Awful.", "negative")],
        )
    }

    fn reviews(labels: impl Fn(usize) -> &'static str) -> Vec<Example> {
        (0..40)
            .map(|i| Example::new(format!("Review number {i} of a kettle."), labels(i)))
            .collect()
    }

    #[test]
    fn one_class_is_refused_with_the_reason_and_the_fixes() {
        let d = diagnose(&reviews(|_| "positive"), &sentiment(), 0);
        let refusal = check_data(&d, &DataGate::default()).unwrap_err();
        assert_eq!(refusal.reasons.len(), 2, "{refusal}");
        assert!(refusal.reasons[0].contains("no example of \"negative\""), "{refusal}");
        assert!(refusal.reasons[1]
            .contains("one class holds 100 % of the 40 labelled rows (\"positive\""));
        let text = refusal.to_string();
        for needle in ["p2m serve runs/<name>", "another teacher", "--accept-data"] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let named = refusal.clone().naming_run(Path::new("runs/reviews"));
        assert!(named.to_string().contains("`p2m serve runs/reviews`, then /review"), "{named}");
        // The thresholds are settings: without the missing-class rule and with a 100 % ceiling
        // the same data passes.
        let lenient = DataGate {
            refuse_missing_class: false,
            max_majority_share: 1.0,
            ..DataGate::default()
        };
        assert_eq!(check_data(&d, &lenient), Ok(()));
        // --accept-data: the run goes on, and the outcome keeps the reasons for the card.
        let accepted = gate_run(&d, &DataGate::default(), true).unwrap();
        assert_eq!(accepted, GateOutcome::Accepted { reasons: refusal.reasons.clone() });
        let md = accepted.to_markdown(&DataGate::default());
        assert!(md.contains("`--accept-data`") && md.contains("- classification task"), "{md}");
        assert_eq!(gate_run(&d, &DataGate::default(), false), Err(refusal));
        assert_eq!(gate_run(&d, &lenient, false), Ok(GateOutcome::Passed));
    }

    #[test]
    fn balanced_data_passes_and_mostly_flagged_data_does_not() {
        let balanced = diagnose(&reviews(|i| ["positive", "negative"][i % 2]), &sentiment(), 0);
        assert_eq!(check_data(&balanced, &DataGate::default()), Ok(()));
        // 95 % of one class is over the default 90 %.
        let skewed =
            diagnose(&reviews(|i| if i < 38 { "positive" } else { "negative" }), &sentiment(), 0);
        let r = check_data(&skewed, &DataGate::default()).unwrap_err();
        assert_eq!(r.reasons.len(), 1);
        assert!(r.reasons[0].contains("95 %"), "{r}");
        // A generation task with most outputs N/A.
        let prompt = ParsedPrompt::new("Summarise the review in one sentence.", vec![]);
        let rows: Vec<Example> = (0..10)
            .map(|i| {
                Example::new(
                    format!("Review number {i} of a kettle."),
                    if i < 6 { "N/A" } else { "Fine kettle." },
                )
            })
            .collect();
        let d = diagnose(&rows, &prompt, 0);
        assert!(!d.is_classification());
        let r = check_data(&d, &DataGate::default()).unwrap_err();
        assert_eq!(
            r.reasons,
            ["6 of 10 rows are flagged (60 %; the limit is 50 %): N/A or placeholder output 6"]
        );
        // One output for nearly every row of a generation task.
        let rows: Vec<Example> = (0..20)
            .map(|i| Example::new(format!("Review number {i} of a kettle."), "A kettle."))
            .collect();
        let r = check_data(&diagnose(&rows, &prompt, 0), &DataGate::default()).unwrap_err();
        assert_eq!(r.reasons, ["one output is 100 % of the 20 rows (\"A kettle.\"; the limit is 90 %): a student trained on it learns to give that output"]);
        let none = diagnose(&[], &prompt, 0);
        assert!(check_data(&none, &DataGate::default()).unwrap_err().reasons[0]
            .starts_with("0 of 0 rows are unflagged"));
    }

    #[test]
    fn settings_read_from_toml_with_defaults_and_unknown_fields_refused() {
        let g: DataGate = toml::from_str("max_majority_share = 0.8").unwrap();
        assert_eq!(g, DataGate { max_majority_share: 0.8, ..DataGate::default() });
        assert!(toml::from_str::<DataGate>("max_majority = 0.8").is_err());
        assert!(DataGate::default().describe().contains("more than 90 % of the labelled rows"));
    }
}

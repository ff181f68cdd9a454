//! Which metric judges a run: the one the user set (`--metric`, the configuration's `metric`),
//! else the paper task's own (data/tasks.toml), else what the task is — accuracy (exact match) and
//! macro-F1 when the instruction or the data shows an answer set, chrF++ for free text. The
//! choice carries its reason, which the report and the card print.
//!
//! Why not always chrF++: on a two-class task a student that answers one class to everything gets
//! a high chrF++ (the answers share most characters with the references) while being exactly as
//! good as the majority-class answer; accuracy and macro-F1 show that at once.

use serde::{Deserialize, Serialize};

use crate::data::diagnostics::DataDiagnostics;
use crate::evaluator::Metric;

/// The run's headline metrics and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricChoice {
    /// The first judges the run (student selection, the summary's number); the others are
    /// printed beside it as headline too.
    pub headline: Vec<Metric>,
    pub why: String,
}

impl MetricChoice {
    /// The metric the run is judged by.
    pub fn primary(&self) -> Metric {
        self.headline[0]
    }

    /// `"em + macro-f1"`.
    pub fn names(&self) -> String {
        self.headline.iter().map(|m| m.name()).collect::<Vec<_>>().join(" + ")
    }
}

/// The metrics a run is judged by (module docs): `override_metric` (the user's) first, then
/// `task_metric` (a paper task's), then the task the diagnostics see.
pub fn choose_metric(
    diagnostics: Option<&DataDiagnostics>,
    task_metric: Option<Metric>,
    override_metric: Option<Metric>,
) -> MetricChoice {
    if let Some(m) = override_metric {
        return MetricChoice {
            headline: vec![m],
            why: format!(
                "{} was asked for (`--metric` or the configuration's `metric`)",
                m.display_name()
            ),
        };
    }
    if let Some(m) = task_metric {
        return MetricChoice {
            headline: vec![m],
            why: format!(
                "{} is the paper's metric for this task (data/tasks.toml)",
                m.display_name()
            ),
        };
    }
    match diagnostics.and_then(|d| d.labels.as_ref()) {
        Some(labels) => MetricChoice {
            headline: vec![Metric::ExactMatch, Metric::MacroF1],
            why: format!(
                "a classification task: the answers come from {} labels, {}; accuracy (exact match) and macro-F1 say whether the student tells the classes apart, which chrF++ does not",
                labels.label_set.labels.len(),
                labels.label_set.source.describe()
            ),
        },
        None => MetricChoice {
            headline: vec![Metric::ChrfPlusPlus],
            why: "free-text answers (no answer set stated or seen in the data): chrF++ gives partial credit, BERTScore is reported beside it".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::diagnostics::diagnose;
    use crate::data::examples::Example;
    use crate::prompt_parser::ParsedPrompt;

    #[test]
    fn a_label_set_makes_accuracy_and_macro_f1_the_headline() {
        let prompt = ParsedPrompt::new("Answer \"positive\" or \"negative\".", vec![]);
        let rows: Vec<Example> = (0..20)
            .map(|i| Example::new(format!("review {i}"), ["positive", "negative"][i % 2]))
            .collect();
        let d = diagnose(&rows, &prompt, 0);
        let c = choose_metric(Some(&d), None, None);
        assert_eq!(c.headline, [Metric::ExactMatch, Metric::MacroF1]);
        assert_eq!((c.primary(), c.names().as_str()), (Metric::ExactMatch, "em + macro-f1"));
        assert!(c.why.contains("2 labels, stated by the instruction"), "{}", c.why);
        // The user's choice and a paper task's metric win, in that order.
        let c = choose_metric(Some(&d), Some(Metric::ExactMatchSquad), Some(Metric::ChrfPlusPlus));
        assert_eq!(c.headline, [Metric::ChrfPlusPlus]);
        assert!(c.why.contains("--metric"));
        let c = choose_metric(Some(&d), Some(Metric::ExactMatchSquad), None);
        assert_eq!(c.headline, [Metric::ExactMatchSquad]);
        assert!(c.why.contains("data/tasks.toml"));
    }

    #[test]
    fn free_text_keeps_chrf() {
        let prompt = ParsedPrompt::new("Summarise the text.", vec![]);
        let rows: Vec<Example> =
            (0..5).map(|i| Example::new(format!("text {i}"), format!("summary {i}"))).collect();
        let c = choose_metric(Some(&diagnose(&rows, &prompt, 0)), None, None);
        assert_eq!(c.headline, [Metric::ChrfPlusPlus]);
        assert_eq!(choose_metric(None, None, None), c);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"chrf++\""), "{json}");
        assert_eq!(serde_json::from_str::<MetricChoice>(&json).unwrap(), c);
    }
}

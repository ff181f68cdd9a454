//! People correcting a run's task and data (the paper's future work, §6): the parsed instruction
//! and demonstrations, and each generated example accepted, edited or rejected.
//!
//! The teacher's output (`generation/examples.jsonl`) is never touched. A review lives in its own
//! folder of the run, `review/`:
//! - `examples.jsonl`: what training uses from now on (accepted and edited rows, and rows not yet
//!   looked at; rejected rows are left out),
//! - `parsed.json`: the reviewed instruction and demonstrations (the student's input template and
//!   the packaged model use it),
//! - `decisions.json`: the state of every example (so the page shows what was decided),
//! - `log.jsonl`: append-only, one line per change (when, which example, before, after).
//!
//! `p2m run` picks the reviewed files up ([`RunLayout::examples_for_assembly`],
//! [`RunLayout::parsed_for_training`]); their hashes enter the fingerprints
//! of assembly and training, so exactly assembly, training, evaluation and packaging are redone.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::examples::{read_examples_jsonl, write_examples_jsonl, Example};
use crate::pipeline::layout::RunLayout;
use crate::prompt_parser::ParsedPrompt;
use crate::util::fs::write_json;

pub const DECISIONS_FILE: &str = "decisions.json";
pub const LOG_FILE: &str = "log.jsonl";

/// What a person decided about one generated example.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not looked at yet: kept, as the teacher wrote it.
    #[default]
    Pending,
    Accepted,
    Edited,
    Rejected,
}

/// One generated example as the review page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewItem {
    /// Its line in `generation/examples.jsonl` (0-based): the stable id of the example.
    pub index: usize,
    pub status: Status,
    pub input: String,
    pub output: String,
    /// The teacher's text, for comparison after an edit.
    pub original: Example,
    /// What the data diagnostics flag the teacher's example for
    /// ([`crate::data::diagnostics::RowFlag::describe`]: empty, N/A, copied input or
    /// demonstration, looping text, duplicate, conflicting output, outside the answer set): the
    /// same flags the run's data check counts.
    pub flags: Vec<String>,
}

/// Everything the review page needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReviewState {
    pub instruction: String,
    pub demonstrations: Vec<Example>,
    /// Whether the instruction or demonstrations were changed by a review.
    pub prompt_reviewed: bool,
    pub items: Vec<ReviewItem>,
}

/// One decision sent by the page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub index: usize,
    pub status: Status,
    /// The example's text after the review (ignored unless `status` is `edited`).
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
}

/// What a save sends: the prompt as reviewed and the decisions that changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSubmission {
    pub instruction: String,
    pub demonstrations: Vec<Example>,
    #[serde(default)]
    pub decisions: Vec<Decision>,
}

/// What a save did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SaveSummary {
    pub changed: usize,
    pub kept: usize,
    pub rejected: usize,
    pub edited: usize,
    pub prompt_changed: bool,
}

/// One line of `log.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub time: String,
    /// `example` or `prompt`.
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

/// A run folder's review: reads the teacher's output and any earlier review, saves new ones
/// where the pipeline looks for them ([`RunLayout::reviewed_examples`],
/// [`RunLayout::reviewed_parsed`]).
pub struct Review {
    layout: RunLayout,
}

impl Review {
    /// The review of `run_dir`; it needs the run's parse and generation stages to be done.
    pub fn open(run_dir: &Path) -> Result<Review> {
        let layout = RunLayout::new(run_dir.to_path_buf());
        for f in [layout.generated(), layout.parsed()] {
            anyhow::ensure!(
                f.is_file(),
                "{} has no {}: review needs a run whose parse and generation stages are done (run `p2m run` first)",
                run_dir.display(),
                f.strip_prefix(run_dir).unwrap_or(&f).display()
            );
        }
        Ok(Review { layout })
    }

    fn dir(&self) -> PathBuf {
        self.layout.review_dir()
    }

    fn generated(&self) -> Result<Vec<Example>> {
        let path = self.layout.generated();
        read_examples_jsonl(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn original_prompt(&self) -> Result<ParsedPrompt> {
        read_parsed(&self.layout.parsed())
    }

    fn decisions(&self) -> Result<HashMap<usize, Decision>> {
        let path = self.dir().join(DECISIONS_FILE);
        if !path.is_file() {
            return Ok(HashMap::new());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let list: Vec<Decision> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a list of review decisions (delete it to start the review over)",
                path.display()
            )
        })?;
        Ok(list.into_iter().map(|d| (d.index, d)).collect())
    }

    /// The prompt and every generated example with its decision and flags.
    pub fn state(&self) -> Result<ReviewState> {
        let generated = self.generated()?;
        let decisions = self.decisions()?;
        let original = self.original_prompt()?;
        let reviewed_path = self.layout.reviewed_parsed();
        let (prompt, prompt_reviewed) = if reviewed_path.is_file() {
            (read_parsed(&reviewed_path)?, true)
        } else {
            (original, false)
        };
        // The flags of the data diagnostics (one implementation: the page flags what the run's
        // data check counts), judged against the prompt the page shows.
        let flags = crate::data::diagnostics::diagnose(&generated, &prompt, 0).row_flags;
        let items = generated
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let d = decisions.get(&index);
                let status = d.map(|d| d.status).unwrap_or_default();
                let (input, output) = match d {
                    Some(d) if d.status == Status::Edited => (
                        d.input.clone().unwrap_or_else(|| e.input.clone()),
                        d.output.clone().unwrap_or_else(|| e.output.clone()),
                    ),
                    _ => (e.input.clone(), e.output.clone()),
                };
                ReviewItem {
                    index,
                    status,
                    input,
                    output,
                    original: e.clone(),
                    flags: flags[index].iter().map(|f| f.describe().to_string()).collect(),
                }
            })
            .collect();
        Ok(ReviewState {
            instruction: prompt.instruction,
            demonstrations: prompt.demonstrations,
            prompt_reviewed,
            items,
        })
    }

    /// Apply a submission: write the reviewed examples, prompt and decisions (each atomically)
    /// and append what changed to the log.
    pub fn save(&self, submission: &ReviewSubmission) -> Result<SaveSummary> {
        anyhow::ensure!(
            !submission.instruction.trim().is_empty(),
            "the instruction is empty: write what the model should do"
        );
        let generated = self.generated()?;
        let mut decisions = self.decisions()?;
        let before_state = self.state()?;
        let now = chrono::Utc::now().to_rfc3339();
        let mut log = Vec::new();
        for d in &submission.decisions {
            anyhow::ensure!(
                d.index < generated.len(),
                "decision for example {} but the run has {} generated examples",
                d.index,
                generated.len()
            );
            let mut d = d.clone();
            if d.status == Status::Edited {
                let e = &generated[d.index];
                let input = d.input.take().unwrap_or_else(|| e.input.clone());
                let output = d.output.take().unwrap_or_else(|| e.output.clone());
                anyhow::ensure!(
                    !input.trim().is_empty(),
                    "example {}: the edited input is empty (reject the example instead)",
                    d.index
                );
                if input == e.input && output == e.output {
                    d.status = Status::Accepted;
                } else {
                    d.input = Some(input);
                    d.output = Some(output);
                }
            } else {
                d.input = None;
                d.output = None;
            }
            let before = &before_state.items[d.index];
            let after_text = |d: &Decision| {
                serde_json::json!({
                    "status": d.status,
                    "input": d.input.clone().unwrap_or_else(|| generated[d.index].input.clone()),
                    "output": d.output.clone().unwrap_or_else(|| generated[d.index].output.clone()),
                })
            };
            let before_json = serde_json::json!({
                "status": before.status, "input": before.input, "output": before.output,
            });
            let after_json = after_text(&d);
            if before_json != after_json {
                log.push(LogEntry {
                    time: now.clone(),
                    what: "example".into(),
                    index: Some(d.index),
                    before: before_json,
                    after: after_json,
                });
            }
            decisions.insert(d.index, d);
        }
        let prompt_changed = submission.instruction != before_state.instruction
            || submission.demonstrations != before_state.demonstrations;
        if prompt_changed {
            log.push(LogEntry {
                time: now.clone(),
                what: "prompt".into(),
                index: None,
                before: serde_json::json!({ "instruction": before_state.instruction, "demonstrations": before_state.demonstrations }),
                after: serde_json::json!({ "instruction": submission.instruction, "demonstrations": submission.demonstrations }),
            });
        }

        let dir = self.dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut summary = SaveSummary { changed: log.len(), prompt_changed, ..Default::default() };
        let mut kept = Vec::new();
        for (i, e) in generated.iter().enumerate() {
            match decisions.get(&i) {
                Some(d) if d.status == Status::Rejected => summary.rejected += 1,
                Some(d) if d.status == Status::Edited => {
                    summary.edited += 1;
                    kept.push(Example::new(
                        d.input.clone().unwrap_or_else(|| e.input.clone()),
                        d.output.clone().unwrap_or_else(|| e.output.clone()),
                    ));
                }
                _ => kept.push(e.clone()),
            }
        }
        summary.kept = kept.len();
        if log.is_empty() {
            return Ok(summary);
        }
        // The log first: a save that stops half-way leaves a log line too many, never a change
        // without its line.
        append_log(&dir.join(LOG_FILE), &log)?;
        let mut list: Vec<&Decision> =
            decisions.values().filter(|d| d.status != Status::Pending).collect();
        list.sort_by_key(|d| d.index);
        write_json(&dir.join(DECISIONS_FILE), &list)?;
        let (examples_path, parsed_path) =
            (self.layout.reviewed_examples(), self.layout.reviewed_parsed());
        write_examples_jsonl(&examples_path, &kept)
            .with_context(|| format!("writing {}", examples_path.display()))?;
        if prompt_changed || parsed_path.is_file() {
            let parsed = ParsedPrompt::new(
                submission.instruction.clone(),
                submission.demonstrations.clone(),
            );
            write_json(&parsed_path, &parsed)?;
        }
        Ok(summary)
    }
}

fn read_parsed(path: &Path) -> Result<ParsedPrompt> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!("{}: not a parsed prompt (instruction, demonstrations)", path.display())
    })
}

fn append_log(path: &Path, entries: &[LogEntry]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    f.write_all(text.as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::diagnostics::RowFlag;

    fn run_with(examples: &[Example]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("generation")).unwrap();
        std::fs::create_dir_all(dir.path().join("parse")).unwrap();
        let layout = RunLayout::new(dir.path().to_path_buf());
        write_examples_jsonl(&layout.generated(), examples).unwrap();
        let parsed =
            ParsedPrompt::new("Answer with the capital.", vec![Example::new("France", "Paris")]);
        write_json(&layout.parsed(), &parsed).unwrap();
        dir
    }

    #[test]
    fn the_page_flags_what_the_data_diagnostics_flag() {
        let ex = [
            Example::new("Chile", "Santiago"),
            Example::new(" chile", "Valparaiso"),
            Example::new("Peru", ""),
            Example::new("Lima", "lima"),
            Example::new("France", "Paris"),
            Example::new("Chile", "Santiago"),
            Example::new("Spain", "N/A"),
        ];
        let dir = run_with(&ex);
        let state = Review::open(dir.path()).unwrap().state().unwrap();
        let flags: Vec<Vec<&str>> =
            state.items.iter().map(|i| i.flags.iter().map(String::as_str).collect()).collect();
        let conflicting = RowFlag::ConflictingOutput.describe();
        assert_eq!(flags[0], [conflicting]);
        assert_eq!(flags[1], [conflicting]);
        assert_eq!(flags[2], [RowFlag::Empty.describe()]);
        assert_eq!(flags[3], [RowFlag::CopiesInput.describe()]);
        assert_eq!(flags[4], [RowFlag::CopiesDemonstration.describe()], "the prompt's own example");
        assert_eq!(flags[5], [RowFlag::Duplicate.describe(), conflicting]);
        assert_eq!(flags[6], [RowFlag::NotAvailable.describe()]);
        // The same flags, row by row, as the diagnostics the run's data check counts.
        let parsed =
            ParsedPrompt::new("Answer with the capital.", vec![Example::new("France", "Paris")]);
        let d = crate::data::diagnostics::diagnose(&ex, &parsed, 0);
        for (item, row) in state.items.iter().zip(&d.row_flags) {
            let expected: Vec<&str> = row.iter().map(|f| f.describe()).collect();
            assert_eq!(item.flags, expected);
        }
    }

    #[test]
    fn a_save_writes_the_reviewed_data_and_a_log_and_keeps_the_teachers_file() {
        let ex = vec![
            Example::new("Chile", "Santiago"),
            Example::new("Peru", "Cusco"),
            Example::new("L", "L"),
        ];
        let run = run_with(&ex);
        let layout = RunLayout::new(run.path().to_path_buf());
        let original = std::fs::read(layout.generated()).unwrap();
        let review = Review::open(run.path()).unwrap();
        assert_eq!(
            (layout.examples_for_assembly(), layout.parsed_for_training()),
            (layout.generated(), layout.parsed()),
            "nothing reviewed yet"
        );
        let s = review
            .save(&ReviewSubmission {
                instruction: "Answer with the capital city only.".into(),
                demonstrations: vec![Example::new("France", "Paris")],
                decisions: vec![
                    Decision { index: 0, status: Status::Accepted, input: None, output: None },
                    Decision {
                        index: 1,
                        status: Status::Edited,
                        input: None,
                        output: Some("Lima".into()),
                    },
                    Decision { index: 2, status: Status::Rejected, input: None, output: None },
                ],
            })
            .unwrap();
        assert_eq!((s.kept, s.edited, s.rejected, s.prompt_changed), (2, 1, 1, true));
        assert_eq!(std::fs::read(layout.generated()).unwrap(), original);
        assert_eq!(layout.examples_for_assembly(), layout.reviewed_examples());
        assert_eq!(layout.parsed_for_training(), layout.reviewed_parsed());
        let kept = read_examples_jsonl(&layout.examples_for_assembly()).unwrap();
        assert_eq!(kept, vec![Example::new("Chile", "Santiago"), Example::new("Peru", "Lima")]);
        let parsed = read_parsed(&layout.parsed_for_training()).unwrap();
        assert_eq!(parsed.instruction, "Answer with the capital city only.");
        let log = std::fs::read_to_string(layout.review_dir().join(LOG_FILE)).unwrap();
        assert_eq!(log.lines().count(), 4, "three examples and the prompt: {log}");

        // The page sees the decisions; a second identical save changes and logs nothing.
        let state = review.state().unwrap();
        assert!(state.prompt_reviewed);
        assert_eq!(state.items[1].output, "Lima");
        assert_eq!(state.items[1].original.output, "Cusco");
        assert_eq!(state.items[2].status, Status::Rejected);
        let again = review
            .save(&ReviewSubmission {
                instruction: state.instruction.clone(),
                demonstrations: state.demonstrations.clone(),
                decisions: vec![Decision {
                    index: 1,
                    status: Status::Edited,
                    input: None,
                    output: Some("Lima".into()),
                }],
            })
            .unwrap();
        assert_eq!(again.changed, 0);
        let log2 = std::fs::read_to_string(layout.review_dir().join(LOG_FILE)).unwrap();
        assert_eq!(log, log2);
    }

    #[test]
    fn bad_submissions_are_refused_with_the_reason() {
        let run = run_with(&[Example::new("Chile", "Santiago")]);
        let review = Review::open(run.path()).unwrap();
        let sub = |instruction: &str, index: usize, input: Option<&str>| ReviewSubmission {
            instruction: instruction.into(),
            demonstrations: vec![],
            decisions: vec![Decision {
                index,
                status: Status::Edited,
                input: input.map(str::to_string),
                output: None,
            }],
        };
        let e = review.save(&sub(" ", 0, None)).unwrap_err().to_string();
        assert!(e.contains("instruction is empty"), "{e}");
        let e = review.save(&sub("x", 5, None)).unwrap_err().to_string();
        assert!(e.contains("example 5") && e.contains("1 generated"), "{e}");
        let e = review.save(&sub("x", 0, Some(""))).unwrap_err().to_string();
        assert!(e.contains("edited input is empty"), "{e}");
        assert!(!RunLayout::new(run.path().to_path_buf()).reviewed_examples().exists());
        let e = Review::open(tempfile::tempdir().unwrap().path()).err().unwrap().to_string();
        assert!(e.contains("p2m run"), "{e}");
    }
}

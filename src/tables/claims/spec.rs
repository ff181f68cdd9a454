//! The paper's claims as data (`data/claims.toml`): each claim in one sentence, which comparison
//! of which table tests it, and what it expects; the paper's own numbers for it are looked up in
//! `data/paper_results.toml` (never typed twice), and a claim the paper's numbers do not support
//! as stated is refused when the file is read.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::verdict::{judge, Estimate, Expectation, Varied, Verdict};
use crate::data::paper::PaperResults;
use crate::tables::cells::LiveTables;
use crate::tables::table1_live::TEACHER_ROW;

pub const CLAIMS_FILE: &str = "claims.toml";

/// What a scale of the claims run does beyond the tables' cells.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsScale {
    pub description: String,
    #[serde(default)]
    pub diversity: DiversitySpec,
}

/// The diversity ablation at a scale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiversitySpec {
    /// Raw examples generated per arm (the paper: 200); 0: not run at this scale.
    #[serde(default)]
    pub n: usize,
    /// The task whose prompt the teacher generates for (data/tasks.toml).
    #[serde(default)]
    pub task: String,
    /// The teacher when the cells' teacher is `recorded`, which cannot generate anew (the authors
    /// recorded only their high-diversity generations): `local` (the offline SmolLM2) or `none`.
    #[serde(default)]
    pub teacher_if_recorded: RecordedFallback,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedFallback {
    #[default]
    None,
    Local,
}

/// Which comparison tests a claim; every quantity is `first − second` unless said otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClaimTest {
    /// Live Table 1 on `task`'s real test set: row `first` (`prompt2model`) − row `second` (an
    /// ablation's row id of data/live_tables.toml, or `teacher`), paired on the same examples. `varies`: what an
    /// ablation changes (`data` or `model`), so identical arms are told apart.
    Table1 {
        task: String,
        first: String,
        second: String,
        #[serde(default)]
        varies: Option<Varied>,
    },
    /// Table 2: arm `first` − arm `second` (SQuAD EM, paired on the same questions).
    Table2 { first: String, second: String },
    /// Table 2's cost: arm `annotation`'s data cost over arm `generation`'s.
    Table2Cost { annotation: String, generation: String },
    /// Live Table 3: Kendall's τ × 100 on `task`.
    Table3Tau { task: String },
    /// The diversity ablation: the share of duplicate inputs without high-diversity prompting
    /// minus the share with it (percentage points).
    Diversity,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimSpec {
    pub id: String,
    /// Where the paper makes the claim ("Table 1", …).
    pub section: String,
    /// The claim in one sentence.
    pub claim: String,
    pub test: ClaimTest,
    pub expect: Expectation,
    /// Why this margin or threshold, or anything else a reader should know.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsFile {
    pub scales: BTreeMap<String, ClaimsScale>,
    pub claims: Vec<ClaimSpec>,
}

/// The paper's numbers for a claim: as a sentence, and the value of the claim's quantity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaperEvidence {
    pub text: String,
    pub value: f64,
}

/// A Table 1 row's label (the paper's system name): `teacher` is gpt-3.5-turbo's row.
pub fn table1_label<'a>(live: &'a LiveTables, row: &str) -> Option<&'a str> {
    if row == TEACHER_ROW {
        return Some("gpt-3.5-turbo");
    }
    live.table1.rows.iter().find(|r| r.id == row).map(|r| r.label.as_str())
}

impl ClaimSpec {
    /// The paper's numbers for this claim; an error names what is missing.
    pub fn paper_evidence(&self, paper: &PaperResults, live: &LiveTables) -> Result<PaperEvidence> {
        Ok(match &self.test {
            ClaimTest::Table1 { task, first, second, .. } => {
                let value = |row: &str| -> Result<(String, f64)> {
                    let label = table1_label(live, row).with_context(|| {
                        format!("no Table 1 row `{row}` in data/live_tables.toml (or `teacher`)")
                    })?;
                    let v = paper
                        .table1
                        .row
                        .iter()
                        .find(|r| r.system == label)
                        .and_then(|r| r.value(task))
                        .with_context(|| {
                            format!("the paper prints no {task} number for `{label}` in Table 1")
                        })?;
                    Ok((label.to_string(), v))
                };
                let ((la, a), (lb, b)) = (value(first)?, value(second)?);
                PaperEvidence { text: format!("{la} {a} vs {lb} {b}"), value: a - b }
            }
            ClaimTest::Table2 { first, second } => {
                let value = |arm: &str| -> Result<f64> {
                    paper.table2.row.iter().find(|r| r.arm == arm).map(|r| r.squad).with_context(
                        || format!("no Table 2 arm `{arm}` in data/paper_results.toml"),
                    )
                };
                let (a, b) = (value(first)?, value(second)?);
                PaperEvidence { text: format!("{first} {a} vs {second} {b} EM"), value: a - b }
            }
            ClaimTest::Table2Cost { annotation, generation } => {
                let cost = |arm: &str| -> Result<f64> {
                    paper
                        .table2
                        .row
                        .iter()
                        .find(|r| r.arm == arm)
                        .and_then(|r| r.cost_usd)
                        .with_context(|| format!("the paper prints no cost for Table 2's `{arm}`"))
                };
                let (a, g) = (cost(annotation)?, cost(generation)?);
                PaperEvidence {
                    text: format!("{annotation} ${a} vs {generation} ${g} ({:.0}×)", a / g),
                    value: a / g,
                }
            }
            ClaimTest::Table3Tau { task } => {
                let row = paper
                    .table3
                    .row
                    .iter()
                    .find(|r| &r.task == task)
                    .with_context(|| format!("no Table 3 τ for `{task}` in the paper"))?;
                PaperEvidence {
                    text: format!(
                        "τ×100 = {} (p = {:.2}, {} models)",
                        row.tau, row.p, paper.table3.models
                    ),
                    value: row.tau,
                }
            }
            ClaimTest::Diversity => {
                let d = &paper.diversity;
                PaperEvidence {
                    text: format!(
                        "{} → {} duplicate inputs of {} (without → with)",
                        d.without, d.with, d.of
                    ),
                    value: 100.0 * (d.without as f64 - d.with as f64) / d.of as f64,
                }
            }
        })
    }

    /// The quantity the claim is about, in words.
    pub fn quantity(&self, live: &LiveTables, metric_of: impl Fn(&str) -> String) -> String {
        match &self.test {
            ClaimTest::Table1 { task, first, second, .. } => format!(
                "{} on {task}: {} − {}",
                metric_of(task),
                table1_label(live, first).unwrap_or(first),
                table1_label(live, second).unwrap_or(second)
            ),
            ClaimTest::Table2 { first, second } => format!("SQuAD EM: {first} − {second}"),
            ClaimTest::Table2Cost { annotation, generation } => {
                format!("data cost: {annotation} ÷ {generation}")
            }
            ClaimTest::Table3Tau { task } => format!("Kendall's τ × 100 on {task}"),
            ClaimTest::Diversity => {
                "duplicate inputs (% of raw examples): without − with high-diversity prompting"
                    .into()
            }
        }
    }
}

impl ClaimsFile {
    /// Read and check `data/claims.toml`: unique ids, the tables' rows and the paper's numbers
    /// exist, and the paper's numbers satisfy each claim as stated.
    pub fn load(data_dir: &Path, paper: &PaperResults, live: &LiveTables) -> Result<ClaimsFile> {
        let path = data_dir.join(CLAIMS_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: ClaimsFile = toml::from_str(&text)
            .with_context(|| format!("{}: not a claims file", path.display()))?;
        file.check(paper, live).with_context(|| path.display().to_string())?;
        Ok(file)
    }

    fn check(&self, paper: &PaperResults, live: &LiveTables) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.claims {
            if !seen.insert(c.id.as_str()) {
                bail!("claim id `{}` appears twice; ids must be unique", c.id);
            }
            if let ClaimTest::Table1 { first, second, varies, .. } = &c.test {
                if first != "prompt2model" || second == "prompt2model" {
                    bail!("claim `{}`: Table 1 pairs `prompt2model` (first) with the teacher or an ablation row (second); a claim that the other row scores higher expects `below`", c.id);
                }
                if second != TEACHER_ROW && varies.is_none() {
                    bail!("claim `{}`: an ablation needs `varies = \"data\"` or `\"model\"` (what it changes), so identical arms are recognised", c.id);
                }
            }
            let evidence = c
                .paper_evidence(paper, live)
                .with_context(|| format!("claim `{}`: the paper's evidence", c.id))?;
            let own = judge(c.expect, Some(&Estimate::exact(evidence.value)), &[]);
            if own.verdict != Verdict::Reproduced {
                bail!(
                    "claim `{}`: the paper's own numbers ({}; the quantity is {:.2}) do not satisfy `expect` ({}); state the claim as the paper's numbers show it",
                    c.id,
                    evidence.text,
                    evidence.value,
                    c.expect.describe()
                );
            }
        }
        for (name, s) in &self.scales {
            if s.diversity.n > 0 && s.diversity.task.is_empty() {
                bail!("scale `{name}`: diversity.n = {} needs diversity.task (a task of data/tasks.toml)", s.diversity.n);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Paths;

    fn load_all() -> (PaperResults, LiveTables) {
        let paths = Paths::from_env().unwrap();
        (
            crate::data::paper::load_paper_results(&paths.data).unwrap(),
            LiveTables::load(&paths.data).unwrap(),
        )
    }

    #[test]
    fn the_claims_file_holds_every_claim_of_the_issue_with_the_papers_numbers() {
        let paths = Paths::from_env().unwrap();
        let (paper, live) = load_all();
        let file = ClaimsFile::load(&paths.data, &paper, &live).unwrap();
        let count =
            |f: &dyn Fn(&ClaimTest) -> bool| file.claims.iter().filter(|c| f(&c.test)).count();
        // Table 1: the teacher comparison per task, and each ablation the paper has a number for
        // (Temporal without data retrieval is N/A in the paper).
        for task in ["squad", "temporal", "mconala"] {
            assert_eq!(
                count(
                    &|t| matches!(t, ClaimTest::Table1 { task: k, second, .. } if k == task && second == TEACHER_ROW)
                ),
                1,
                "{task}"
            );
            let ablations = count(
                &|t| matches!(t, ClaimTest::Table1 { task: k, second, .. } if k == task && second != TEACHER_ROW),
            );
            assert_eq!(ablations, if task == "temporal" { 1 } else { 2 }, "{task}");
            assert_eq!(count(&|t| matches!(t, ClaimTest::Table3Tau { task: k } if k == task)), 1);
        }
        assert_eq!(count(&|t| matches!(t, ClaimTest::Table2 { .. })), 3);
        assert_eq!(count(&|t| matches!(t, ClaimTest::Table2Cost { .. })), 1);
        assert_eq!(count(&|t| matches!(t, ClaimTest::Diversity)), 1);
        let teacher = file.claims.iter().find(|c| c.id == "table1-squad-vs-teacher").unwrap();
        let e = teacher.paper_evidence(&paper, &live).unwrap();
        assert_eq!(e.text, "Prompt2Model 61.5 vs gpt-3.5-turbo 42.1");
        assert!((e.value - 19.4).abs() < 1e-9);
        let d = file.claims.iter().find(|c| c.test == ClaimTest::Diversity).unwrap();
        assert_eq!(d.paper_evidence(&paper, &live).unwrap().value, 47.5);
        assert!(file.scales.contains_key("smoke") && file.scales.contains_key("laptop"));
    }

    #[test]
    fn a_claim_the_papers_numbers_do_not_support_is_refused() {
        let (paper, live) = load_all();
        let parse = |claims: &str| -> Result<()> {
            let file: ClaimsFile =
                toml::from_str(&format!("[scales.smoke]\ndescription = \"x\"\n{claims}"))?;
            file.check(&paper, &live)
        };
        // MCoNaLa: the paper's student without data retrieval scored *higher* (16.6 vs 13.1).
        let wrong = "[[claims]]\nid = \"x\"\nsection = \"Table 1\"\nclaim = \"…\"\n\
            test = { kind = \"table1\", task = \"mconala\", first = \"prompt2model\", second = \"no-data-retrieval\", varies = \"data\" }\n\
            expect = { kind = \"above\", threshold = 0.0 }\n";
        let e = format!("{:#}", parse(wrong).unwrap_err());
        assert!(
            e.contains("do not satisfy") && e.contains("13.1 vs w/o data retrieval 16.6"),
            "{e}"
        );
        let right = wrong.replace("kind = \"above\"", "kind = \"below\"");
        parse(&right).unwrap();
        let swapped = right.replace(
            "first = \"prompt2model\", second = \"no-data-retrieval\"",
            "first = \"no-data-retrieval\", second = \"prompt2model\"",
        );
        assert!(format!("{:#}", parse(&swapped).unwrap_err()).contains("expects `below`"));
        // The paper prints N/A for Temporal without data retrieval: no evidence, no claim.
        let na = right.replace("mconala", "temporal");
        assert!(format!("{:#}", parse(&na).unwrap_err()).contains("prints no temporal number"));
        // An ablation must say what it varies.
        let e = format!("{:#}", parse(&right.replace(", varies = \"data\"", "")).unwrap_err());
        assert!(e.contains("varies"), "{e}");
        // Unknown fields are named.
        let e = format!("{:#}", parse(&right.replace("section", "sektion")).unwrap_err());
        assert!(e.contains("sektion"), "{e}");
    }
}

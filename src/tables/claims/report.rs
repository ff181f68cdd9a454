//! The claims report: one row per claim (the paper's numbers, ours with the interval, the verdict
//! and why), the details, Table 1's teacher-sample check, the forest plot, `claims.json` and the
//! manifest, in `reports/claims-<scale>/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::Serialize;

use super::verdict::{self, Estimate, Verdict};
use crate::report::figures::{ForestPanel, ForestRow};
use crate::report::{Manifest, Report, ReportTable};
use crate::tables::round2;

/// One claim's row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimRow {
    pub id: String,
    pub section: String,
    pub claim: String,
    /// The paper's numbers, as a sentence.
    pub paper: String,
    /// The paper's value of the claim's quantity.
    pub paper_value: f64,
    pub quantity: String,
    pub expect: String,
    /// What the quantity is judged against (0 for a difference; ± the margin around it).
    pub threshold: f64,
    pub ours: Option<Estimate>,
    pub p_value: Option<f64>,
    /// Which test gave the interval and p.
    pub test: Option<String>,
    pub n: Option<usize>,
    pub scale: String,
    pub verdict: Verdict,
    pub why: String,
    /// Which cells the number comes from (relative to the cells' folder).
    pub source: String,
}

pub struct ClaimsReport {
    pub scale: String,
    pub teacher: String,
    pub rows: Vec<ClaimRow>,
    /// Live Table 1's teacher on the sample beside the whole test set.
    pub teacher_sample: Option<DataFrame>,
    pub notes: Vec<String>,
    pub manifest: Manifest,
}

impl ClaimsReport {
    /// The claims table: one row per claim, its verdict and why.
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let s = |f: &dyn Fn(&ClaimRow) -> String| r.iter().map(f).collect::<Vec<_>>();
        DataFrame::new_infer_height(vec![
            Column::new("id".into(), s(&|x| x.id.clone())),
            Column::new("section".into(), s(&|x| x.section.clone())),
            Column::new("claim".into(), s(&|x| x.claim.clone())),
            Column::new("paper".into(), s(&|x| x.paper.clone())),
            Column::new("quantity".into(), s(&|x| format!("{} ({})", x.quantity, x.expect))),
            Column::new(
                "paper value".into(),
                r.iter().map(|x| round2(x.paper_value)).collect::<Vec<_>>(),
            ),
            Column::new(
                "ours [95 %]".into(),
                r.iter().map(|x| x.ours.map(|e| e.to_string())).collect::<Vec<_>>(),
            ),
            Column::new("p".into(), r.iter().map(|x| x.p_value.map(round2)).collect::<Vec<_>>()),
            Column::new("n".into(), r.iter().map(|x| x.n.map(|n| n as u32)).collect::<Vec<_>>()),
            Column::new("scale".into(), s(&|x| x.scale.clone())),
            Column::new("verdict".into(), s(&|x| x.verdict.label().to_string())),
            Column::new("why".into(), s(&|x| x.why.clone())),
        ])
    }

    /// Per claim: the numbers unrounded, the test behind them and the cells they come from.
    pub fn details_frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let f = |g: &dyn Fn(&Estimate) -> f64| {
            r.iter().map(|x| x.ours.as_ref().map(g)).collect::<Vec<_>>()
        };
        DataFrame::new_infer_height(vec![
            Column::new("id".into(), r.iter().map(|x| x.id.clone()).collect::<Vec<_>>()),
            Column::new(
                "quantity".into(),
                r.iter().map(|x| x.quantity.clone()).collect::<Vec<_>>(),
            ),
            Column::new("expect".into(), r.iter().map(|x| x.expect.clone()).collect::<Vec<_>>()),
            Column::new("paper value".into(), r.iter().map(|x| x.paper_value).collect::<Vec<_>>()),
            Column::new("ours".into(), f(&|e| e.value)),
            Column::new("low".into(), f(&|e| e.low)),
            Column::new("high".into(), f(&|e| e.high)),
            Column::new("p".into(), r.iter().map(|x| x.p_value).collect::<Vec<_>>()),
            Column::new("test".into(), r.iter().map(|x| x.test.clone()).collect::<Vec<_>>()),
            Column::new("source".into(), r.iter().map(|x| x.source.clone()).collect::<Vec<_>>()),
        ])
    }

    /// How many claims got each verdict, in the rule's order.
    pub fn tally(&self) -> Vec<(Verdict, usize)> {
        [Verdict::Reproduced, Verdict::NotReproduced, Verdict::Inconclusive, Verdict::NotTestable]
            .into_iter()
            .map(|v| (v, self.rows.iter().filter(|r| r.verdict == v).count()))
            .collect()
    }

    pub fn report(&self) -> Result<Report> {
        let mut claims = ReportTable::new(
            "claims",
            "The paper's claims re-tested here: the paper's numbers, ours with the 95 % interval, and a verdict",
            self.frame()?,
        );
        claims.decimals = 2;
        let mut details = ReportTable::new(
            "claims_details",
            "Each claim's numbers unrounded, the test behind them and the cells they come from",
            self.details_frame()?,
        );
        details.decimals = 4;
        let mut tables = vec![claims, details];
        if let Some(t) = &self.teacher_sample {
            tables.push(ReportTable::new(
                "claims_teacher_sample",
                "Table 1's teacher on the students' test sample beside its whole real test set (is the sample representative?)",
                t.clone(),
            ));
        }
        let tally = self
            .tally()
            .iter()
            .map(|(v, n)| format!("{n} {}", v.label()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut notes = vec![format!("{} claims: {tally}.", self.rows.len())];
        notes.extend(self.notes.iter().cloned());
        notes.push("The forest plot shows each measured quantity with its 95 % interval (blue dot, black whisker) beside the paper's value (grey cross) and the claim's threshold (dashed); the cost ratio, computed without an interval, is in the table only.".into());
        Ok(Report {
            name: format!("claims-{}", self.scale),
            title: format!(
                "The paper's claims, re-tested (scale {}, teacher {})",
                self.scale, self.teacher
            ),
            tables,
            notes,
            manifest: self.manifest.clone(),
        })
    }

    /// The forest plot's panels: one per table, each quantity in its own unit.
    pub fn forest_panels(&self) -> Vec<ForestPanel> {
        let panel = |title: &str, axis: &str, pick: &dyn Fn(&ClaimRow) -> bool| ForestPanel {
            title: title.into(),
            axis: axis.into(),
            rows: self
                .rows
                .iter()
                .filter(|r| pick(r))
                .map(|r| ForestRow {
                    label: format!("{} ({})", r.id, r.verdict.label()),
                    ours: r.ours.map(|e| (e.value, e.low, e.high)),
                    paper: Some(r.paper_value),
                    reference: r.threshold,
                })
                .collect(),
        };
        vec![
            panel(
                "Table 1: Prompt2Model − the other row, real test set",
                "points of the task's metric (EM or chrF++)",
                &|r| r.section == "Table 1",
            ),
            panel("Table 2: one arm − another", "SQuAD EM points", &|r| {
                r.section == "Table 2" && !r.quantity.starts_with("data cost")
            }),
            panel("Table 3: Kendall's τ × 100, generated vs real test set", "τ × 100", &|r| {
                r.section == "Table 3"
            }),
            panel(
                "Diversity ablation: duplicate share without − with high-diversity prompting",
                "percentage points",
                &|r| r.id.starts_with("diversity"),
            ),
        ]
    }

    /// Write `reports/claims-<scale>/`: tables, the forest plot, `claims.json`, the manifest.
    pub fn write(&self, reports_dir: &Path) -> Result<PathBuf> {
        let report = self.report()?;
        let stem = report.name.clone();
        let title = report.title.clone();
        let panels = self.forest_panels();
        let json = serde_json::json!({
            "scale": self.scale,
            "teacher": self.teacher,
            "rule": verdict::RULE,
            "claims": self.rows,
        });
        report
            .write(reports_dir, |dir| {
                crate::util::fs::write_json(&dir.join("claims.json"), &json)?;
                let mut files = vec!["claims.json".to_string()];
                let title = format!("{title}: ours (blue, 95 % interval), the paper (grey ×)");
                files.extend(crate::report::figures::forest(dir, &stem, &title, &panels)?);
                Ok(files)
            })
            .context("writing the claims report")
    }
}

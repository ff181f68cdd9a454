//! Table 3, live: students fine-tuned here on each task's generated training data (one cell each,
//! [`super::cells`]), scored on the generated and on the real test set; Kendall's τ-b between the
//! two rankings with its p-value and a bootstrap interval over test examples; beside it the
//! paper's τ and the τ of the authors' recorded runs.

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::Serialize;

use super::cells::CellPlan;
use super::round2;
use crate::data::registry::Registry;
use crate::data::tasks::Task;
use crate::evaluator::baselines::{
    compare_to_baselines, distinct_baselines, BaselineComparison, BaselineTest, TableBaseline,
};
use crate::evaluator::bootstrap::{kendall_interval, BootstrapConfig, CorpusScorer, Interval};
use crate::evaluator::kendall::{kendall_tau_b, KendallTau};
use crate::evaluator::Metric;
use crate::pipeline::evaluate::find_interval;
use crate::report::figures::{ScatterPanel, ScatterPoint};
use crate::report::{Manifest, Report, ReportTable};

/// One student on both test sets.
#[derive(Debug, Clone, Serialize)]
pub struct LiveStudent {
    pub task: String,
    pub cell: String,
    pub label: String,
    pub student: String,
    pub train_rows: Option<usize>,
    pub generated: Interval,
    pub real: Interval,
    /// A sanity row (untrained, random): shown, not in τ.
    pub sanity: bool,
    /// The student against the best baseline of its own training data on the real test set.
    pub versus_baseline: Option<BaselineTest>,
}

#[derive(Debug, Clone)]
pub struct LiveTaskResult {
    pub task: String,
    pub paper_column: String,
    pub metric: Metric,
    pub students: usize,
    pub tau: Option<KendallTau>,
    pub tau_interval: Option<Interval>,
    pub n_generated: usize,
    pub n_real: usize,
    pub paper_tau: Option<f64>,
    pub recorded_tau: Option<f64>,
}

pub struct Table3Live {
    pub scale: String,
    pub teacher: String,
    pub students: Vec<LiveStudent>,
    /// Per task, what trivial answers score on the real test set (each distinct baseline of the
    /// cells' training data once): shown beside the students, ranked nowhere.
    pub baselines: Vec<(String, TableBaseline)>,
    pub results: Vec<LiveTaskResult>,
    pub notes: Vec<String>,
    pub manifest: Manifest,
}

/// A cell's predictions on one test set.
pub struct CellPredictions {
    pub inputs: Vec<String>,
    pub references: Vec<Vec<String>>,
    pub predictions: Vec<String>,
}

/// Read `evaluation/predictions_<set>.parquet` of a cell (references joined by ` ||| `).
pub fn read_predictions(path: &Path) -> Result<CellPredictions> {
    let frame = crate::report::read_parquet(path)?;
    let col = |name: &str| -> Result<Vec<String>> {
        crate::data::loaders::string_column(&frame, name)
            .map_err(|e| anyhow::anyhow!("{}: column `{name}` ({e})", path.display()))
    };
    let references = col("references")?
        .into_iter()
        .map(|r| r.split(" ||| ").map(str::to_string).collect())
        .collect();
    Ok(CellPredictions { inputs: col("input")?, references, predictions: col("prediction")? })
}

/// A cell's predictions on the real test set beside the baselines of its own run (learned from
/// its training rows, scored on its test examples: [`crate::pipeline::stages::run_baselines`]),
/// on `metric`, with the paired test against the best.
pub fn cell_versus_baselines(
    dir: &Path,
    real: &CellPredictions,
    metric: Metric,
    cfg: &BootstrapConfig,
) -> Result<BaselineComparison> {
    let layout = crate::pipeline::layout::RunLayout::new(dir.to_path_buf());
    let trivial = crate::pipeline::stages::run_baselines(&layout, &real.inputs)
        .with_context(|| format!("the baselines of the run {}", dir.display()))?;
    compare_to_baselines("real", &real.predictions, &real.references, &trivial, &[metric], cfg)
        .with_context(|| format!("scoring the baselines of the run {}", dir.display()))
}

/// Assemble the table from finished cells (every cell must be done).
pub fn collect(plan: &CellPlan, registry: &Registry) -> Result<Table3Live> {
    super::cells::ensure_all_done(plan)?;
    let tasks = crate::data::tasks::load_tasks(&registry.paths.data)?;
    let paper = crate::data::paper::load_paper_results(&registry.paths.data)?;
    let recorded = super::table3::recorded(registry).ok();
    let bootstrap = BootstrapConfig::default();
    let mut manifest = Manifest::new(
        &format!("table3-live-{}", plan.scale),
        &registry.paths.root,
        serde_json::json!({
            "source": "live", "scale": plan.scale, "teacher": plan.teacher.name(),
            "cells": plan.cells.iter().map(|c| serde_json::json!({ "id": c.id, "config": c.config })).collect::<Vec<_>>(),
            "runs": plan.runs_dir,
            "tau_interval": bootstrap.signature(),
        }),
    );
    manifest.metric_signatures.insert("kendall".into(), crate::evaluator::kendall::signature());
    let mut students = Vec::new();
    let mut baselines = Vec::new();
    let mut results = Vec::new();
    let mut notes = vec![format!(
        "Scale `{}` ({}); teacher `{}`. Every student is one `p2m run` (its folder under {}), fine-tuned on the task's generated training data and scored on the same generated and real test examples; each score's interval is its run's 95 % bootstrap interval, τ's interval resamples both test sets (1,000 seeded resamples, the same resample for every student).",
        plan.scale,
        plan.scale_spec.description,
        plan.teacher.name(),
        plan.runs_dir.display()
    )];
    let task_ids: Vec<String> = {
        let mut v: Vec<String> = plan.cells.iter().map(|c| c.task.clone()).collect();
        v.dedup();
        v
    };
    for task_id in &task_ids {
        let task: &Task = crate::data::tasks::find(&tasks, task_id).context("task")?;
        let metric = task.metric();
        let mut gen_scorers = Vec::new();
        let mut real_scorers = Vec::new();
        let mut first_inputs: Option<(String, Vec<String>, Vec<String>)> = None;
        let mut comparisons: Vec<(String, BaselineComparison)> = Vec::new();
        for cell in plan.cells.iter().filter(|c| &c.task == task_id) {
            let dir = plan.dir(cell);
            let info = crate::pipeline::runs::RunInfo::read(&dir)?;
            let g = read_predictions(&dir.join("evaluation/predictions_generated.parquet"))?;
            let (gi, gr, gp) = (g.inputs, g.references, g.predictions);
            let r = read_predictions(&dir.join("evaluation/predictions_real.parquet"))?;
            let comparison = cell_versus_baselines(&dir, &r, metric, &bootstrap)?;
            let (ri, rr, rp) = (r.inputs, r.references, r.predictions);
            match &first_inputs {
                None => first_inputs = Some((cell.id.clone(), gi.clone(), ri.clone())),
                Some((other, g0, r0)) => anyhow::ensure!(
                    g0 == &gi && r0 == &ri,
                    "cells {other} and {} were scored on different test examples; they must share the task's test sets (same scale and seed)",
                    cell.id
                ),
            }
            gen_scorers.push(CorpusScorer::new(metric, &gp, &gr)?);
            real_scorers.push(CorpusScorer::new(metric, &rp, &rr)?);
            let generated =
                find_interval(&info.metrics, "generated", metric.name()).with_context(|| {
                    format!("{}: no generated {} in its metrics", cell.id, metric.name())
                })?;
            let real = find_interval(&info.metrics, "real", metric.name()).with_context(|| {
                format!("{}: no real {} in its metrics", cell.id, metric.name())
            })?;
            let train_rows = std::fs::read_to_string(dir.join("assembly/train.jsonl"))
                .ok()
                .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count());
            let choice: Option<serde_json::Value> =
                std::fs::read_to_string(dir.join("model-retrieval/choice.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
            students.push(LiveStudent {
                task: task_id.clone(),
                cell: cell.id.clone(),
                label: cell.label.clone(),
                student: choice
                    .and_then(|c| c["student"].as_str().map(str::to_string))
                    .or_else(|| cell.config.student.clone())
                    .unwrap_or_default(),
                train_rows,
                generated,
                real,
                sanity: cell.sanity,
                versus_baseline: comparison.test.clone(),
            });
            comparisons.push((cell.label.clone(), comparison));
        }
        baselines.extend(
            distinct_baselines(comparisons.iter().map(|(label, c)| (label.as_str(), c)))
                .into_iter()
                .map(|b| (task_id.clone(), b)),
        );
        // τ ranks the close students only: sanity rows (untrained, random) would order working
        // models against broken ones whatever the test set.
        let in_tau: Vec<bool> =
            students.iter().filter(|s| &s.task == task_id).map(|s| !s.sanity).collect();
        let keep = |v: Vec<CorpusScorer>| -> Vec<CorpusScorer> {
            v.into_iter().zip(&in_tau).filter(|(_, k)| **k).map(|(s, _)| s).collect()
        };
        let (gen_scorers, real_scorers) = (keep(gen_scorers), keep(real_scorers));
        let sanity = in_tau.iter().filter(|k| !**k).count();
        if sanity > 0 {
            notes.push(format!(
                "{task_id}: {sanity} sanity row(s) (untrained or random students) are shown but left out of τ, which ranks the {} close students",
                in_tau.len() - sanity
            ));
        }
        let mine: Vec<&LiveStudent> =
            students.iter().filter(|s| &s.task == task_id && !s.sanity).collect();
        let xs: Vec<f64> = gen_scorers.iter().map(CorpusScorer::corpus).collect();
        let ys: Vec<f64> = real_scorers.iter().map(CorpusScorer::corpus).collect();
        let tau = if mine.len() >= 2 { kendall_tau_b(&xs, &ys).ok() } else { None };
        let tau_interval =
            (mine.len() >= 2).then(|| kendall_interval(&gen_scorers, &real_scorers, &bootstrap));
        if mine.len() < 2 {
            notes.push(format!("{task_id}: fewer than two students, so no ranking to compare"));
        } else if tau.as_ref().is_some_and(|t| !t.tau.is_finite()) {
            notes.push(format!(
                "{task_id}: τ is undefined: every student scored the same on one test set (generated: {}; real: {}), so there is no ranking to compare",
                xs.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", "),
                ys.iter().map(|y| format!("{y:.2}")).collect::<Vec<_>>().join(", ")
            ));
        }
        let paper_tau = paper.table3.row.iter().find(|r| &r.task == task_id).map(|r| r.tau);
        let recorded_tau = recorded
            .as_ref()
            .and_then(|t| t.results.iter().find(|r| &r.task == task_id))
            .and_then(|r| r.tau.as_ref().map(|t| 100.0 * t.tau));
        results.push(LiveTaskResult {
            task: task_id.clone(),
            paper_column: task.paper_column.clone(),
            metric,
            students: mine.len(),
            tau,
            tau_interval,
            n_generated: gen_scorers.first().map(CorpusScorer::len).unwrap_or(0),
            n_real: real_scorers.first().map(CorpusScorer::len).unwrap_or(0),
            paper_tau,
            recorded_tau,
        });
    }
    notes.push(format!("Baselines: the rows `baseline: …` of the students' table are what a trivial answer scores on the same real test examples (the input copied as the answer; the most frequent output of a student's training data, one row per distinct answer, naming whose data gave it), each with its interval; they rank nothing. Each student is tested against the best baseline of its own training data (paired bootstrap, one-sided, \"better\" where p < {}).", crate::evaluator::baselines::SIGNIFICANCE));
    notes.extend(plan.reuse_notes());
    if recorded.is_none() {
        notes.push("the recorded runs could not be re-scored here (mirror missing?): the `τ×100 recorded` column is empty".into());
    }
    Ok(Table3Live {
        scale: plan.scale.clone(),
        teacher: plan.teacher.name().into(),
        students,
        baselines,
        results,
        notes,
        manifest,
    })
}

impl Table3Live {
    pub fn summary_frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.results;
        let opt = |f: &dyn Fn(&LiveTaskResult) -> Option<f64>| r.iter().map(f).collect::<Vec<_>>();
        DataFrame::new_infer_height(vec![
            Column::new(
                "Task".into(),
                r.iter().map(|x| x.paper_column.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "Metric".into(),
                r.iter().map(|x| x.metric.display_name().to_string()).collect::<Vec<_>>(),
            ),
            Column::new("Students".into(), r.iter().map(|x| x.students as u32).collect::<Vec<_>>()),
            Column::new(
                "n generated / real".into(),
                r.iter().map(|x| format!("{} / {}", x.n_generated, x.n_real)).collect::<Vec<_>>(),
            ),
            Column::new(
                "τ×100 live".into(),
                opt(&|x| x.tau.as_ref().map(|t| round2(100.0 * t.tau))),
            ),
            Column::new(
                "95 % interval".into(),
                r.iter()
                    .map(|x| {
                        x.tau_interval
                            .as_ref()
                            .map(|i| format!("[{:.1}, {:.1}]", 100.0 * i.low, 100.0 * i.high))
                    })
                    .collect::<Vec<_>>(),
            ),
            Column::new("p live".into(), opt(&|x| x.tau.as_ref().map(|t| round2(t.p_value)))),
            Column::new("τ×100 recorded".into(), opt(&|x| x.recorded_tau.map(round2))),
            Column::new("τ×100 paper".into(), opt(&|x| x.paper_tau)),
        ])
    }

    /// Every student, then the baselines of each task (on the real test set only: they rank
    /// nothing), and whether each student beats the best baseline of its own training data.
    pub fn students_frame(&self) -> PolarsResult<DataFrame> {
        let s = &self.students;
        let b = &self.baselines;
        // Interval's Display: `value [low, high]`, two decimals.
        let text = |f: fn(&LiveStudent) -> String,
                    baseline: fn(&TableBaseline) -> Option<String>| {
            s.iter()
                .map(|x| Some(f(x)))
                .chain(b.iter().map(|(_, x)| baseline(x)))
                .collect::<Vec<_>>()
        };
        DataFrame::new_infer_height(vec![
            Column::new(
                "task".into(),
                s.iter()
                    .map(|x| x.task.clone())
                    .chain(b.iter().map(|(t, _)| t.clone()))
                    .collect::<Vec<_>>(),
            ),
            Column::new("student".into(), text(|x| x.label.clone(), |x| Some(x.label()))),
            Column::new("model".into(), text(|x| x.student.clone(), |x| Some(x.provenance()))),
            Column::new(
                "train rows".into(),
                s.iter()
                    .map(|x| x.train_rows.map(|n| n as u32))
                    .chain(b.iter().map(|_| None))
                    .collect::<Vec<_>>(),
            ),
            Column::new("generated test".into(), text(|x| x.generated.to_string(), |_| None)),
            Column::new(
                "real test".into(),
                text(|x| x.real.to_string(), |x| Some(x.interval.to_string())),
            ),
            Column::new(
                "real test against the best baseline".into(),
                s.iter()
                    .map(|x| x.versus_baseline.as_ref().map(BaselineTest::brief))
                    .chain(b.iter().map(|_| None))
                    .collect::<Vec<_>>(),
            ),
            Column::new("cell".into(), text(|x| x.cell.clone(), |_| None)),
        ])
    }

    pub fn scatter_panels(&self) -> Vec<ScatterPanel> {
        self.results
            .iter()
            .map(|r| ScatterPanel {
                title: match (&r.tau, &r.tau_interval) {
                    (Some(t), Some(i)) => format!(
                        "{}: τ = {:.3} [{:.3}, {:.3}] (p = {:.2})",
                        r.paper_column, t.tau, i.low, i.high, t.p_value
                    ),
                    _ => format!("{}: τ undefined", r.paper_column),
                },
                x_desc: format!("{} on the generated test set", r.metric.display_name()),
                y_desc: format!("{} on the real test set", r.metric.display_name()),
                points: self
                    .students
                    .iter()
                    .filter(|s| s.task == r.task)
                    .map(|s| ScatterPoint {
                        label: s.label.clone(),
                        x: s.generated.value,
                        y: s.real.value,
                        x_interval: Some((s.generated.low, s.generated.high)),
                        y_interval: Some((s.real.low, s.real.high)),
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn report(&self) -> Result<Report> {
        Ok(Report {
            name: format!("table3-live-{}", self.scale),
            title: format!(
                "Table 3 (live, scale {}, teacher {}): do generated test sets rank models like real ones?",
                self.scale, self.teacher
            ),
            tables: vec![
                ReportTable::new(
                    "table3",
                    "Kendall's τ-b between the students' rankings on the generated and the real test set (live), beside the authors' recorded runs and the paper",
                    self.summary_frame()?,
                ),
                ReportTable::new("table3_students", "Every student's scores (95 % bootstrap intervals)", self.students_frame()?),
            ],
            notes: self.notes.clone(),
            manifest: self.manifest.clone(),
        })
    }

    /// Write the report (tables, scatter figure with interval bars, manifest); returns its folder.
    pub fn write(&self, reports_dir: &Path) -> Result<std::path::PathBuf> {
        let report = self.report()?;
        let panels = self.scatter_panels();
        let stem = report.name.clone();
        report
            .write(reports_dir, |dir| {
                crate::report::figures::scatter(dir, &stem, &report.title, &panels)
            })
            .context("writing the live Table 3 report")
    }
}

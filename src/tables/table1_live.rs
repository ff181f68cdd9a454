//! Table 1, live: the paper's rows re-run here as pipeline configurations (one cell each,
//! [`super::cells`]): Prompt2Model, without model retrieval, without data retrieval, scored on the
//! real test set with the task's metric and BERTScore, each with a 95 % bootstrap interval; the
//! teacher's row is the authors' recorded gpt-3.5-turbo outputs re-scored on exactly the same test
//! examples, and a paired bootstrap test says how sure "Prompt2Model beats the teacher" is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::Serialize;

use super::cells::CellPlan;
use super::table3_live::read_predictions;
use crate::data::loaders::{self, HfDisk};
use crate::data::recorded::GPT_BASELINE;
use crate::data::registry::Registry;
use crate::data::tasks::Task;
use crate::evaluator::bootstrap::{
    bootstrap, paired_bootstrap, BootstrapConfig, CorpusScorer, Interval,
};
use crate::pipeline::config::TeacherSource;
use crate::pipeline::evaluate::find_interval;
use crate::report::{Manifest, Report, ReportTable};

/// One row × task.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRow {
    pub task: String,
    pub row: String,
    pub label: String,
    pub metric: String,
    pub real: Option<Interval>,
    pub bertscore: Option<Interval>,
    pub generated: Option<Interval>,
    pub paper: Option<f64>,
    /// What the run trained: the student and its data, for telling identical rows apart.
    pub student: String,
    pub model_sha256: Option<String>,
    pub cell: Option<String>,
}

pub struct Table1Live {
    pub scale: String,
    pub teacher: String,
    pub rows: Vec<LiveRow>,
    /// Per task: Prompt2Model − teacher on the same examples, and the one-sided p-value.
    pub paired: Vec<(String, f64, f64)>,
    pub notes: Vec<String>,
    pub manifest: Manifest,
}

/// The Prompt2Model cell of a task on the real test set: what the teacher's row is paired with.
struct PromptToModelReal {
    inputs: Vec<String>,
    references: Vec<Vec<String>>,
    scorer: CorpusScorer,
    dir: PathBuf,
    metrics: Vec<crate::pipeline::evaluate::MetricResult>,
}

/// The authors' gpt-3.5-turbo output for each real test input of `task`.
fn recorded_teacher_outputs(registry: &Registry, task: &Task) -> Result<HashMap<String, String>> {
    if task.id == "squad" {
        // Stored alone, in SQuAD dev order: paired with the registry's inputs by position.
        let test = loaders::load_dataset(registry, &task.test_dataset)?;
        let inputs = loaders::string_column(&test.frame, loaders::INPUT)?;
        let folder = format!("{GPT_BASELINE}/gpt_output");
        let (disk, local, _) = loaders::load_registered_hf_disk(registry, &folder)?;
        let HfDisk::Dataset(frame) = disk else {
            bail!("{}: expected one dataset", local.display())
        };
        let outputs = loaders::string_column(&frame, "output")?;
        anyhow::ensure!(
            outputs.len() == inputs.len(),
            "{}: {} outputs for {} questions",
            local.display(),
            outputs.len(),
            inputs.len()
        );
        Ok(inputs.into_iter().zip(outputs).collect())
    } else {
        let folder = format!("{GPT_BASELINE}/results/{}_gpt_results", task.recorded_name);
        let p = super::load_recorded_predictions(registry, &folder)?;
        Ok(p.inputs.into_iter().zip(p.predictions).collect())
    }
}

/// Assemble the table from finished cells.
pub fn collect(plan: &CellPlan, registry: &Registry) -> Result<Table1Live> {
    super::cells::ensure_all_done(plan)?;
    let tasks = crate::data::tasks::load_tasks(&registry.paths.data)?;
    let paper = crate::data::paper::load_paper_results(&registry.paths.data)?;
    let bootstrap_cfg = BootstrapConfig::default();
    let manifest = Manifest::new(
        &format!("table1-live-{}", plan.scale),
        &registry.paths.root,
        serde_json::json!({
            "source": "live", "scale": plan.scale, "teacher": plan.teacher.name(),
            "cells": plan.cells.iter().map(|c| serde_json::json!({ "id": c.id, "config": c.config })).collect::<Vec<_>>(),
            "runs": plan.runs_dir,
            "paired_test": format!("paired bootstrap, one-sided|{}", bootstrap_cfg.signature()),
        }),
    );
    let mut rows = Vec::new();
    let mut paired = Vec::new();
    let mut notes = vec![format!(
        "Scale `{}` ({}); teacher `{}`. Each row is one `p2m run` (folders under {}), scored on the same real test examples; intervals are 95 % bootstrap intervals (1,000 seeded resamples).",
        plan.scale,
        plan.scale_spec.description,
        plan.teacher.name(),
        plan.runs_dir.display()
    )];
    let mut task_ids: Vec<String> = plan.cells.iter().map(|c| c.task.clone()).collect();
    task_ids.dedup();
    for task_id in &task_ids {
        let task = crate::data::tasks::find(&tasks, task_id).context("task")?;
        let metric = task.metric();
        let paper_value = |system: &str| {
            paper.table1.row.iter().find(|r| r.system == system).and_then(|r| r.value(task_id))
        };
        let mut p2m_real: Option<PromptToModelReal> = None;
        let mut by_model: Vec<(String, String, String)> = Vec::new();
        for cell in plan.cells.iter().filter(|c| &c.task == task_id) {
            let dir = plan.dir(cell);
            let info = crate::pipeline::runs::RunInfo::read(&dir)?;
            let choice: serde_json::Value =
                std::fs::read_to_string(dir.join("model-retrieval/choice.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
            let student = choice["student"].as_str().unwrap_or("").to_string();
            let sha = crate::util::fs::sha256_file(&dir.join("model/model.safetensors")).ok();
            if let Some(s) = &sha {
                let assembly = std::fs::read_to_string(dir.join("assembly/stage.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["summary"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let why = choice["why"].as_str().unwrap_or("").to_string();
                by_model.push((
                    cell.label.clone(),
                    s.clone(),
                    format!("{student}: {why}; data: {assembly}"),
                ));
            }
            if cell.row == "prompt2model" {
                let r = read_predictions(&dir.join("evaluation/predictions_real.parquet"))?;
                p2m_real = Some(PromptToModelReal {
                    scorer: CorpusScorer::new(metric, &r.predictions, &r.references)?,
                    inputs: r.inputs,
                    references: r.references,
                    dir: dir.clone(),
                    metrics: info.metrics.clone(),
                });
            }
            rows.push(LiveRow {
                task: task_id.clone(),
                row: cell.row.clone(),
                label: cell.label.clone(),
                metric: metric.name().into(),
                real: find_interval(&info.metrics, "real", metric.name()),
                bertscore: find_interval(&info.metrics, "real", "bertscore-f1"),
                generated: find_interval(&info.metrics, "generated", metric.name()),
                paper: paper_value(&cell.label),
                student,
                model_sha256: sha,
                cell: Some(cell.id.clone()),
            });
        }
        // Rows that trained the very same model are the same row: say so, and why.
        let mut groups: Vec<(String, Vec<String>, String)> = Vec::new();
        for (label, sha, why) in &by_model {
            match groups.iter_mut().find(|g| &g.0 == sha) {
                Some(g) => g.1.push(label.clone()),
                None => groups.push((sha.clone(), vec![label.clone()], why.clone())),
            }
        }
        for (sha, labels, why) in groups.into_iter().filter(|g| g.1.len() > 1) {
            notes.push(format!(
                "{}: {} trained identical weights (sha256 {}…), so their scores are equal by construction, not by measurement; the student and data were {}",
                task.paper_column,
                labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", "),
                &sha[..12],
                why
            ));
        }
        // The teacher's row, on exactly the examples the students were scored on.
        let teacher_label = match plan.teacher {
            TeacherSource::Recorded => "gpt-3.5-turbo".to_string(),
            _ => format!("the teacher ({})", plan.teacher.name()),
        };
        let mut teacher_row = LiveRow {
            task: task_id.clone(),
            row: "teacher".into(),
            label: teacher_label.clone(),
            metric: metric.name().into(),
            real: None,
            bertscore: None,
            generated: None,
            paper: paper_value("gpt-3.5-turbo"),
            student: match plan.teacher {
                TeacherSource::Recorded => "the teacher itself (recorded outputs)".into(),
                _ => "the teacher itself (its answers from the same prompt)".into(),
            },
            model_sha256: None,
            cell: None,
        };
        match (plan.teacher, &p2m_real) {
            (TeacherSource::Recorded, Some(PromptToModelReal { inputs, references, scorer: p2m, .. })) => {
                let outputs = recorded_teacher_outputs(registry, task)?;
                let found: Vec<Option<&String>> = inputs.iter().map(|i| outputs.get(i)).collect();
                let missing = found.iter().filter(|o| o.is_none()).count();
                if missing > 0 {
                    notes.push(format!("{}: {missing} of the {} real test inputs have no recorded gpt-3.5-turbo output, so the teacher row and the paired test are left out", task.paper_column, inputs.len()));
                } else {
                    let teacher_preds: Vec<String> =
                        found.into_iter().map(|o| o.expect("checked").clone()).collect();
                    let teacher = CorpusScorer::new(metric, &teacher_preds, references)?;
                    teacher_row.real =
                        Some(bootstrap(teacher.len(), &bootstrap_cfg, |idx| teacher.score(idx)));
                    let (delta, p) = paired_bootstrap(p2m, &teacher, &bootstrap_cfg)?;
                    paired.push((task_id.clone(), delta, p));
                }
            }
            (TeacherSource::Recorded, None) => {}
            (_, Some(PromptToModelReal { inputs, references, scorer: p2m, dir, metrics })) => {
                match read_predictions(&dir.join("evaluation/predictions_real-teacher.parquet")) {
                    Ok(t) if &t.inputs == inputs => {
                        let teacher = CorpusScorer::new(metric, &t.predictions, references)?;
                        teacher_row.real = Some(bootstrap(teacher.len(), &bootstrap_cfg, |idx| teacher.score(idx)));
                        teacher_row.bertscore = find_interval(metrics, "real-teacher", "bertscore-f1");
                        let (delta, p) = paired_bootstrap(p2m, &teacher, &bootstrap_cfg)?;
                        paired.push((task_id.clone(), delta, p));
                    }
                    Ok(_) => notes.push(format!("{}: the teacher answered other real test examples than the students were scored on; its row is left out", task.paper_column)),
                    _ => notes.push(format!(
                        "{}: no teacher answers on the real test set in the Prompt2Model cell (its configuration needs `teacher_answers_real = true`, as data/live_tables.toml sets)",
                        task.paper_column
                    )),
                }
            }
            (_, None) => {}
        }
        rows.push(teacher_row);
    }
    Ok(Table1Live {
        scale: plan.scale.clone(),
        teacher: plan.teacher.name().into(),
        rows,
        paired,
        notes,
        manifest,
    })
}

impl Table1Live {
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let iv = |i: &Option<Interval>| {
            i.as_ref().map(|i| format!("{:.2} [{:.2}, {:.2}]", i.value, i.low, i.high))
        };
        DataFrame::new_infer_height(vec![
            Column::new("task".into(), r.iter().map(|x| x.task.clone()).collect::<Vec<_>>()),
            Column::new("system".into(), r.iter().map(|x| x.label.clone()).collect::<Vec<_>>()),
            Column::new("metric".into(), r.iter().map(|x| x.metric.clone()).collect::<Vec<_>>()),
            Column::new(
                "real test (95 %)".into(),
                r.iter().map(|x| iv(&x.real)).collect::<Vec<_>>(),
            ),
            Column::new(
                "BERTScore F1 (95 %)".into(),
                r.iter().map(|x| iv(&x.bertscore)).collect::<Vec<_>>(),
            ),
            Column::new(
                "generated test (95 %)".into(),
                r.iter().map(|x| iv(&x.generated)).collect::<Vec<_>>(),
            ),
            Column::new("paper".into(), r.iter().map(|x| x.paper).collect::<Vec<_>>()),
            Column::new("student".into(), r.iter().map(|x| x.student.clone()).collect::<Vec<_>>()),
        ])
    }

    pub fn paired_frame(&self) -> PolarsResult<DataFrame> {
        let p = &self.paired;
        DataFrame::new_infer_height(vec![
            Column::new("task".into(), p.iter().map(|x| x.0.clone()).collect::<Vec<_>>()),
            Column::new(
                "Prompt2Model − teacher".into(),
                p.iter().map(|x| super::round2(x.1)).collect::<Vec<_>>(),
            ),
            Column::new(
                "p (one-sided, paired bootstrap)".into(),
                p.iter().map(|x| super::round2(x.2)).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn report(&self) -> Result<Report> {
        Ok(Report {
            name: format!("table1-live-{}", self.scale),
            title: format!("Table 1 (live, scale {}, teacher {}): downstream performance on the real test sets", self.scale, self.teacher),
            tables: vec![
                ReportTable::new("table1", "Table 1, live: every row re-run here, every score with its 95 % bootstrap interval", self.frame()?),
                ReportTable::new("table1_paired", "Is Prompt2Model better than its teacher on the same examples? (paired bootstrap)", self.paired_frame()?),
            ],
            notes: self.notes.clone(),
            manifest: self.manifest.clone(),
        })
    }

    pub fn write(&self, reports_dir: &Path) -> Result<std::path::PathBuf> {
        let report = self.report()?;
        let bars: Vec<crate::report::figures::IntervalBar> = self
            .rows
            .iter()
            .filter_map(|r| {
                r.real.as_ref().map(|i| crate::report::figures::IntervalBar {
                    label: format!("{} · {}", r.task, r.label),
                    value: i.value,
                    low: i.low,
                    high: i.high,
                })
            })
            .collect();
        let stem = report.name.clone();
        let title = report.title.clone();
        report
            .write(reports_dir, |dir| {
                if bars.is_empty() {
                    return Ok(Vec::new());
                }
                crate::report::figures::interval_bars(
                    dir,
                    &stem,
                    &title,
                    "score on the real test set (95 % interval)",
                    &bars,
                )
            })
            .context("writing the live Table 1 report")
    }
}

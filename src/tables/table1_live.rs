//! Table 1, live: the paper's rows re-run here as pipeline configurations (one cell each,
//! [`super::cells`]): Prompt2Model, without model retrieval, without data retrieval, scored on the
//! real test set with the task's metric and BERTScore, each with a 95 % bootstrap interval; the
//! teacher's row is the authors' recorded gpt-3.5-turbo outputs re-scored on exactly the same test
//! examples, and a paired bootstrap test says how sure "Prompt2Model beats the teacher" is (and
//! one per ablation row: how far it is from Prompt2Model on the same examples). Where the real test
//! set is a sample, the teacher's score on the sample stands beside its score on the whole set, so
//! a reader (and the claims report) sees whether the sample is representative.

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
use crate::evaluator::baselines::{
    distinct_baselines, versus_frame, BaselineComparison, VersusBaseline,
};
use crate::evaluator::bootstrap::{
    bootstrap, paired_difference, BootstrapConfig, CorpusScorer, Interval, PairedDifference,
};
use crate::evaluator::Metric;
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
    /// sha256 of the training rows as assembled (`assembly/train.jsonl`).
    pub train_rows_sha256: Option<String>,
    pub cell: Option<String>,
}

/// The row id of the teacher's row in [`PairedRows::second`].
pub const TEACHER_ROW: &str = "teacher";

/// A paired comparison of two rows of a task on the same real test examples.
#[derive(Debug, Clone, Serialize)]
pub struct PairedRows {
    pub task: String,
    /// Row ids: `first` − `second` (`prompt2model` against the teacher or an ablation row).
    pub first: String,
    pub second: String,
    pub paired: PairedDifference,
}

/// The teacher's score on the students' test sample beside its score on the whole real test set.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherSample {
    pub task: String,
    pub sample: Interval,
    pub whole: Option<Interval>,
    /// Why there is no whole-set score, where there is none.
    pub why_no_whole: Option<String>,
}

impl TeacherSample {
    /// Whether the sample score lies in the whole set's 95 % interval (`None`: not known).
    pub fn representative(&self) -> Option<bool> {
        self.whole.as_ref().map(|w| w.low <= self.sample.value && self.sample.value <= w.high)
    }
}

pub struct Table1Live {
    pub scale: String,
    pub teacher: String,
    pub rows: Vec<LiveRow>,
    /// Per task: Prompt2Model − teacher and Prompt2Model − each ablation row, on the same examples.
    pub paired: Vec<PairedRows>,
    /// Per task where the teacher has a row: its score on the sample and on the whole test set.
    pub teacher_samples: Vec<TeacherSample>,
    /// Per task, each row (a cell) against the best baseline of its own training data.
    pub versus_baseline: Vec<VersusBaseline>,
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

/// The recorded teacher's score on the whole real test set of `task`, with its interval; `None`
/// with the reason where some test input has no recorded output.
fn recorded_teacher_whole_set(
    registry: &Registry,
    task: &Task,
    metric: Metric,
    outputs: &HashMap<String, String>,
    cfg: &BootstrapConfig,
) -> Result<std::result::Result<Interval, String>> {
    let test = loaders::load_dataset(registry, &task.test_dataset)?;
    let inputs = loaders::string_column(&test.frame, loaders::INPUT)?;
    let references = loaders::string_list_column(&test.frame, loaders::REFERENCES)?;
    let predictions: Vec<Option<&String>> = inputs.iter().map(|i| outputs.get(i)).collect();
    let missing = predictions.iter().filter(|p| p.is_none()).count();
    if missing > 0 {
        return Ok(Err(format!(
            "{missing} of the {} inputs of `{}` have no recorded output",
            inputs.len(),
            task.test_dataset
        )));
    }
    let predictions: Vec<&String> = predictions.into_iter().flatten().collect();
    let scorer = CorpusScorer::new(metric, &predictions, &references)?;
    Ok(Ok(bootstrap(scorer.len(), cfg, |idx| scorer.score(idx))))
}

/// One note per task on whether the students' test sample stands for the whole test set.
fn teacher_sample_notes(tasks: &[Task], samples: &[TeacherSample]) -> Vec<String> {
    let mut notes = Vec::new();
    for t in samples {
        let column = tasks.iter().find(|x| x.id == t.task).map(|x| x.paper_column.as_str());
        let column = column.unwrap_or(t.task.as_str());
        match (&t.whole, t.representative()) {
            (Some(w), Some(false)) => notes.push(format!(
                "{column}: the teacher scores {:.2} on the {} test examples the students were scored on, outside the 95 % interval of its score on the whole real test set ({w}, n = {}): the sample is not representative of the test set, so the comparison with the teacher holds for the sample only",
                t.sample.value, t.sample.n, w.n
            )),
            (Some(w), _) => notes.push(format!(
                "{column}: the teacher scores {:.2} on the {} test examples, inside the interval of its whole-test-set score ({w}, n = {})",
                t.sample.value, t.sample.n, w.n
            )),
            (None, _) => notes.push(format!(
                "{column}: the teacher's score on the whole real test set is not known ({}), so whether the {}-example sample is representative is not checked",
                t.why_no_whole.as_deref().unwrap_or("not computed"),
                t.sample.n
            )),
        }
    }
    notes
}

/// A task's baseline rows (each distinct baseline of its rows' training data once) and each
/// row against the best of its own baselines; `comparisons` pairs each row's label with its
/// comparison on the real test set.
fn baselines_of_task(
    task_id: &str,
    metric: Metric,
    comparisons: Vec<(String, BaselineComparison)>,
) -> (Vec<LiveRow>, Vec<VersusBaseline>) {
    let rows = distinct_baselines(comparisons.iter().map(|(label, c)| (label.as_str(), c)))
        .into_iter()
        .map(|b| LiveRow {
            task: task_id.to_string(),
            row: b.label(),
            label: b.label(),
            metric: metric.name().into(),
            real: Some(b.interval.clone()),
            bertscore: None,
            generated: None,
            paper: None,
            student: b.provenance(),
            model_sha256: None,
            train_rows_sha256: None,
            cell: None,
        })
        .collect();
    let versus = comparisons
        .into_iter()
        .filter_map(|(label, c)| {
            c.test.map(|test| VersusBaseline {
                group: Some(task_id.to_string()),
                system: label,
                test,
            })
        })
        .collect();
    (rows, versus)
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
    let mut teacher_samples = Vec::new();
    let mut versus_baseline = Vec::new();
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
        // Every other row's predictions on the real test set, paired with Prompt2Model's below.
        let mut other_real: Vec<(String, super::table3_live::CellPredictions)> = Vec::new();
        let mut by_model: Vec<(String, String, String)> = Vec::new();
        // Each row beside the baselines of its own training data, on its real test examples.
        let mut comparisons: Vec<(String, BaselineComparison)> = Vec::new();
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
            let train_rows_sha256 =
                crate::util::fs::sha256_file(&dir.join("assembly/train.jsonl")).ok();
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
            let r = read_predictions(&dir.join("evaluation/predictions_real.parquet"))?;
            comparisons.push((
                cell.label.clone(),
                super::table3_live::cell_versus_baselines(&dir, &r, metric, &bootstrap_cfg)?,
            ));
            if cell.row == "prompt2model" {
                p2m_real = Some(PromptToModelReal {
                    scorer: CorpusScorer::new(metric, &r.predictions, &r.references)?,
                    inputs: r.inputs,
                    references: r.references,
                    dir: dir.clone(),
                    metrics: info.metrics.clone(),
                });
            } else {
                other_real.push((cell.row.clone(), r));
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
                train_rows_sha256,
                cell: Some(cell.id.clone()),
            });
        }
        // Each ablation row against Prompt2Model, on the same examples.
        if let Some(p2m) = &p2m_real {
            for (row, r) in &other_real {
                if r.inputs != p2m.inputs {
                    notes.push(format!("{}: `{row}` was scored on other real test examples than Prompt2Model, so the two are not compared", task.paper_column));
                    continue;
                }
                let other = CorpusScorer::new(metric, &r.predictions, &r.references)?;
                paired.push(PairedRows {
                    task: task_id.clone(),
                    first: "prompt2model".into(),
                    second: row.clone(),
                    paired: paired_difference(&p2m.scorer, &other, &bootstrap_cfg)?,
                });
            }
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
            train_rows_sha256: None,
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
                    let sample = bootstrap(teacher.len(), &bootstrap_cfg, |idx| teacher.score(idx));
                    teacher_row.real = Some(sample.clone());
                    paired.push(PairedRows {
                        task: task_id.clone(),
                        first: "prompt2model".into(),
                        second: TEACHER_ROW.into(),
                        paired: paired_difference(p2m, &teacher, &bootstrap_cfg)?,
                    });
                    let whole = recorded_teacher_whole_set(
                        registry,
                        task,
                        metric,
                        &outputs,
                        &bootstrap_cfg,
                    )?;
                    teacher_samples.push(TeacherSample {
                        task: task_id.clone(),
                        sample,
                        why_no_whole: whole.as_ref().err().cloned(),
                        whole: whole.ok(),
                    });
                }
            }
            (TeacherSource::Recorded, None) => {}
            (_, Some(PromptToModelReal { inputs, references, scorer: p2m, dir, metrics })) => {
                match read_predictions(&dir.join("evaluation/predictions_real-teacher.parquet")) {
                    Ok(t) if &t.inputs == inputs => {
                        let teacher = CorpusScorer::new(metric, &t.predictions, references)?;
                        let sample = bootstrap(teacher.len(), &bootstrap_cfg, |idx| teacher.score(idx));
                        teacher_row.real = Some(sample.clone());
                        teacher_row.bertscore = find_interval(metrics, "real-teacher", "bertscore-f1");
                        paired.push(PairedRows {
                            task: task_id.clone(),
                            first: "prompt2model".into(),
                            second: TEACHER_ROW.into(),
                            paired: paired_difference(p2m, &teacher, &bootstrap_cfg)?,
                        });
                        teacher_samples.push(TeacherSample {
                            task: task_id.clone(),
                            sample,
                            whole: None,
                            why_no_whole: Some(format!("the {} teacher answered only the sample", plan.teacher.name())),
                        });
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
        let (baseline_rows, versus) = baselines_of_task(task_id, metric, comparisons);
        rows.extend(baseline_rows);
        versus_baseline.extend(versus);
    }
    notes.extend(plan.reuse_notes());
    notes.extend(teacher_sample_notes(&tasks, &teacher_samples));
    notes.push(format!("Baselines: the rows `baseline: …` are what a trivial answer scores on the same real test examples (the input copied as the answer; the most frequent output of a row's training data, one row per distinct answer, naming whose data gave it; the majority class where the data has a label set), each with its interval. `table1_baselines` tests each row against the best of its own baselines (paired bootstrap, one-sided, \"better\" where p < {}).", crate::evaluator::baselines::SIGNIFICANCE));
    Ok(Table1Live {
        scale: plan.scale.clone(),
        teacher: plan.teacher.name().into(),
        rows,
        paired,
        teacher_samples,
        versus_baseline,
        notes,
        manifest,
    })
}

fn interval_text(i: &Interval) -> String {
    format!("[{:.2}, {:.2}]", i.low, i.high)
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

    /// Prompt2Model against the teacher, per task (paired bootstrap on the same examples).
    pub fn paired_frame(&self) -> PolarsResult<DataFrame> {
        let p: Vec<&PairedRows> = self.paired.iter().filter(|p| p.second == TEACHER_ROW).collect();
        let [difference, interval, p_value] = paired_columns(&p, "Prompt2Model − teacher");
        let task = Column::new("task".into(), p.iter().map(|x| x.task.clone()).collect::<Vec<_>>());
        DataFrame::new_infer_height(vec![task, difference, interval, p_value])
    }

    /// Prompt2Model against each ablation row, per task, and whether the two trained the same.
    pub fn ablations_frame(&self) -> PolarsResult<DataFrame> {
        let p: Vec<&PairedRows> = self.paired.iter().filter(|p| p.second != TEACHER_ROW).collect();
        let row = |task: &str, id: &str| self.rows.iter().find(|r| r.task == task && r.row == id);
        let same = |x: &PairedRows, field: fn(&LiveRow) -> &Option<String>| match (
            row(&x.task, &x.first).map(field),
            row(&x.task, &x.second).map(field),
        ) {
            (Some(Some(a)), Some(Some(b))) => Some(a == b),
            _ => None,
        };
        let [difference, interval, p_value] = paired_columns(&p, "Prompt2Model − row");
        DataFrame::new_infer_height(vec![
            Column::new("task".into(), p.iter().map(|x| x.task.clone()).collect::<Vec<_>>()),
            Column::new(
                "row".into(),
                p.iter()
                    .map(|x| row(&x.task, &x.second).map(|r| r.label.clone()).unwrap_or_default())
                    .collect::<Vec<_>>(),
            ),
            difference,
            interval,
            p_value,
            Column::new(
                "same weights".into(),
                p.iter().map(|x| same(x, |r| &r.model_sha256)).collect::<Vec<_>>(),
            ),
            Column::new(
                "same training rows".into(),
                p.iter().map(|x| same(x, |r| &r.train_rows_sha256)).collect::<Vec<_>>(),
            ),
        ])
    }

    /// The teacher on the sample beside the teacher on the whole real test set.
    pub fn teacher_sample_frame(&self) -> PolarsResult<DataFrame> {
        let t = &self.teacher_samples;
        DataFrame::new_infer_height(vec![
            Column::new("task".into(), t.iter().map(|x| x.task.clone()).collect::<Vec<_>>()),
            Column::new(
                "teacher on the sample (95 %)".into(),
                t.iter().map(|x| x.sample.to_string()).collect::<Vec<_>>(),
            ),
            Column::new("sample n".into(), t.iter().map(|x| x.sample.n as u32).collect::<Vec<_>>()),
            Column::new(
                "teacher on the whole test set (95 %)".into(),
                t.iter().map(|x| x.whole.as_ref().map(Interval::to_string)).collect::<Vec<_>>(),
            ),
            Column::new(
                "whole n".into(),
                t.iter().map(|x| x.whole.as_ref().map(|w| w.n as u32)).collect::<Vec<_>>(),
            ),
            Column::new(
                "sample representative".into(),
                t.iter().map(TeacherSample::representative).collect::<Vec<_>>(),
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
                ReportTable::new("table1_ablations", "Prompt2Model against each ablation row on the same examples (paired bootstrap), and whether the two trained the same weights or rows", self.ablations_frame()?),
                ReportTable::new("table1_baselines", "Does each row beat a trivial answer? The row against the best baseline of its own training data on the same real test examples (paired bootstrap)", versus_frame(&self.versus_baseline, Some("task"), "row")?),
                ReportTable::new("table1_teacher_sample", "Is the test sample representative? The teacher's score on the sample beside its score on the whole real test set", self.teacher_sample_frame()?),
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

/// The paired test's three columns (difference named `difference`, its interval, its p), the same
/// for Prompt2Model against the teacher and against each ablation.
fn paired_columns(p: &[&PairedRows], difference: &str) -> [Column; 3] {
    [
        Column::new(
            difference.into(),
            p.iter().map(|x| super::round2(x.paired.difference.value)).collect::<Vec<_>>(),
        ),
        Column::new(
            "95 % interval".into(),
            p.iter().map(|x| interval_text(&x.paired.difference)).collect::<Vec<_>>(),
        ),
        Column::new(
            "p (one-sided, paired bootstrap)".into(),
            p.iter().map(|x| super::round2(x.paired.p_value)).collect::<Vec<_>>(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_representative_when_the_teachers_score_on_it_lies_in_the_whole_sets_interval() {
        let iv = |value: f64, low: f64, high: f64, n: usize| Interval { value, low, high, n };
        let sample = |value: f64, whole: Option<Interval>| TeacherSample {
            task: "temporal".into(),
            sample: iv(value, value - 9.0, value + 9.0, 60),
            whole,
            why_no_whole: None,
        };
        let whole = iv(30.66, 26.87, 34.66, 860);
        assert_eq!(sample(30.0, Some(whole.clone())).representative(), Some(true));
        assert_eq!(sample(8.38, Some(whole.clone())).representative(), Some(false));
        assert_eq!(sample(8.38, None).representative(), None);
        let tasks = crate::data::tasks::load_tasks(&crate::config::Paths::from_env().unwrap().data)
            .unwrap();
        let notes = teacher_sample_notes(&tasks, &[sample(8.38, Some(whole)), sample(9.0, None)]);
        assert!(notes[0].starts_with("Temporal: the teacher scores 8.38 on the 60 test examples"));
        assert!(notes[0].contains("not representative"), "{}", notes[0]);
        assert!(notes[1].contains("not checked"), "{}", notes[1]);
    }
}

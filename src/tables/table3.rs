//! Table 3: do generated test sets rank models like the real test sets? Kendall's tau-b between
//! the model rankings by the task metric on the generated test set and on the real test set.
//!
//! Every recorded model with predictions on both test sets takes part. A model recorded under
//! several settings contributes one pair, chosen by a fixed rule (see [`preference`]) and the
//! report lists every pair with the one chosen marked.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::Serialize;

use super::{round2, score_recorded};
use crate::data::recorded::{self, RecordedRun, TestSet};
use crate::data::registry::Registry;
use crate::data::tasks::{self, Task};
use crate::evaluator::bootstrap::{kendall_interval, BootstrapConfig, CorpusScorer, Interval};
use crate::evaluator::kendall::{kendall_tau_b, KendallTau};
use crate::evaluator::Metric;
use crate::report::figures::{ScatterPanel, ScatterPoint};
use crate::report::{Manifest, Report, ReportTable};

/// One model × setting with scores on both test sets.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub task: String,
    pub model: String,
    pub config: String,
    pub post_filter: bool,
    /// The two scores, each with its 95 % bootstrap interval over its test examples.
    pub generated: Interval,
    pub real: Interval,
    pub selected: bool,
    pub generated_folder: String,
    pub real_folder: String,
}

#[derive(Debug, Clone)]
pub struct TaskResult {
    pub task: String,
    pub paper_column: String,
    pub metric: Metric,
    pub models: Vec<String>,
    pub tau: Option<KendallTau>,
    /// τ's 95 % bootstrap interval, where every model was scored on the same generated and the
    /// same real examples (resampled together, so the models stay paired).
    pub tau_interval: Option<Interval>,
    pub paper_tau: Option<f64>,
    pub paper_p: Option<f64>,
}

pub struct Table3 {
    pub tasks: Vec<Task>,
    pub results: Vec<TaskResult>,
    pub pairs: Vec<Pair>,
    pub notes: Vec<String>,
    pub manifest: Manifest,
    pub paper_models: u32,
}

/// Rule for a model recorded under several settings: no post-filter first (the paper's test-set
/// predictions are unfiltered), then the paper's generator setting (initial/max temperature
/// 0.3/1.4 with duplicate filtering), then the default run.
fn preference(config: &str, post_filter: bool) -> (u8, u8) {
    let cfg = match config {
        "0.3_1.4_with_filtering" => 0,
        "default" => 1,
        _ => 2,
    };
    (post_filter as u8, cfg)
}

pub fn recorded(registry: &Registry) -> Result<Table3> {
    let tasks = tasks::load_tasks(&registry.paths.data)?;
    let paper = crate::data::paper::load_paper_results(&registry.paths.data)?;
    let mut manifest = Manifest::new(
        "table3",
        &registry.paths.root,
        serde_json::json!({ "source": "recorded", "selection": "per model: without post-filter, then 0.3_1.4_with_filtering, then default" }),
    );
    let runs = recorded::discover(registry);
    let mut pairs = Vec::new();
    let mut results = Vec::new();
    let mut notes = Vec::new();

    for task in &tasks {
        let metric = task.metric();
        // (model, config, post_filter) → [generated, real]
        let mut by_key: BTreeMap<(String, String, bool), [Option<&RecordedRun>; 2]> =
            BTreeMap::new();
        for r in runs.iter().filter(|r| r.task == task.recorded_name) {
            let slot =
                by_key.entry((r.model.clone(), r.config.clone(), r.post_filter)).or_default();
            slot[if r.test_set == TestSet::GeneratedTest { 0 } else { 1 }] = Some(r);
        }
        let mut task_pairs = Vec::new();
        // The scorers of each pair and a fingerprint of the references they were scored against.
        let mut scorers: Vec<[(CorpusScorer, String); 2]> = Vec::new();
        for ((model, config, post_filter), [gen, real]) in by_key {
            let (Some(gen), Some(real)) = (gen, real) else { continue };
            let (g, r) =
                (score_recorded(registry, gen, metric)?, score_recorded(registry, real, metric)?);
            manifest.add_inputs(g.files.into_iter().chain(r.files));
            let (g_refs, r_refs) = (g.references_key, r.references_key);
            let (g, r) = (g.scored, r.scored);
            manifest.metric_signatures.insert(
                metric.name().into(),
                format!("{}|{}", r.score.signature, BootstrapConfig::default().signature()),
            );
            task_pairs.push(Pair {
                task: task.id.clone(),
                model,
                config,
                post_filter,
                generated: g.interval,
                real: r.interval,
                selected: false,
                generated_folder: gen.folder.clone(),
                real_folder: real.folder.clone(),
            });
            scorers.push([(g.scorer, g_refs), (r.scorer, r_refs)]);
        }
        // One pair per model.
        let mut best: BTreeMap<String, usize> = BTreeMap::new();
        for (i, p) in task_pairs.iter().enumerate() {
            let better = match best.get(&p.model) {
                None => true,
                Some(&j) => {
                    preference(&p.config, p.post_filter)
                        < preference(&task_pairs[j].config, task_pairs[j].post_filter)
                }
            };
            if better {
                best.insert(p.model.clone(), i);
            }
        }
        for &i in best.values() {
            task_pairs[i].selected = true;
        }
        let selected: Vec<&Pair> = task_pairs.iter().filter(|p| p.selected).collect();
        let x: Vec<f64> = selected.iter().map(|p| p.generated.value).collect();
        let y: Vec<f64> = selected.iter().map(|p| p.real.value).collect();
        let tau = if selected.len() >= 2 { Some(kendall_tau_b(&x, &y)?) } else { None };
        let chosen: Vec<[(CorpusScorer, String); 2]> = scorers
            .into_iter()
            .zip(&task_pairs)
            .filter(|(_, p)| p.selected)
            .map(|(s, _)| s)
            .collect();
        let same_examples = |side: usize| chosen.windows(2).all(|w| w[0][side].1 == w[1][side].1);
        let tau_interval = if tau.is_none() {
            None
        } else if same_examples(0) && same_examples(1) {
            let (first, second): (Vec<CorpusScorer>, Vec<CorpusScorer>) =
                chosen.into_iter().map(|[(g, _), (r, _)]| (g, r)).unzip();
            Some(kendall_interval(&first, &second, &BootstrapConfig::default()))
        } else {
            notes.push(format!(
                "{}: no interval for τ: the recorded models were scored on different generated (or real) test examples, so a resample cannot keep them paired; each score's own interval is in the pairs table and the figure.",
                task.paper_column
            ));
            None
        };
        let paper_row = paper.table3.row.iter().find(|r| r.task == task.id);
        if selected.len() < 2 {
            notes.push(format!(
                "{}: {} recorded model(s) have predictions on both a generated and the real test set, too few for a ranking; the real-test-set prediction folders are missing upstream (see the mirror README).",
                task.paper_column,
                selected.len()
            ));
        } else {
            notes.push(format!(
                "{}: {} models ({}); the paper used {}.",
                task.paper_column,
                selected.len(),
                selected.iter().map(|p| p.model.as_str()).collect::<Vec<_>>().join(", "),
                paper.table3.models
            ));
        }
        results.push(TaskResult {
            task: task.id.clone(),
            paper_column: task.paper_column.clone(),
            metric,
            models: selected.iter().map(|p| p.model.clone()).collect(),
            tau,
            tau_interval,
            paper_tau: paper_row.map(|r| r.tau),
            paper_p: paper_row.map(|r| r.p),
        });
        pairs.extend(task_pairs);
    }
    notes.push("τ is Kendall's tau-b (×100 in the table, as the paper prints it) with scipy's two-sided p-value; 'exact' marks the exact null distribution (no ties, n ≤ 33), otherwise the normal approximation.".into());
    Ok(Table3 { tasks, results, pairs, notes, manifest, paper_models: paper.table3.models })
}

impl Table3 {
    pub fn summary_frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.results;
        DataFrame::new_infer_height(vec![
            Column::new(
                "Task".into(),
                r.iter().map(|x| x.paper_column.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "Metric".into(),
                r.iter().map(|x| x.metric.display_name().to_string()).collect::<Vec<_>>(),
            ),
            Column::new(
                "Models".into(),
                r.iter().map(|x| x.models.len() as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "τ×100 ours".into(),
                r.iter().map(|x| x.tau.as_ref().map(|t| 100.0 * t.tau)).collect::<Vec<_>>(),
            ),
            Column::new(
                "τ×100 95 % CI".into(),
                r.iter()
                    .map(|x| {
                        x.tau_interval
                            .as_ref()
                            .map(|i| format!("[{:.2}, {:.2}]", 100.0 * i.low, 100.0 * i.high))
                    })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "p ours".into(),
                r.iter().map(|x| x.tau.as_ref().map(|t| t.p_value)).collect::<Vec<_>>(),
            ),
            Column::new(
                "p method".into(),
                r.iter()
                    .map(|x| x.tau.as_ref().map(|t| format!("{:?}", t.method).to_lowercase()))
                    .collect::<Vec<_>>(),
            ),
            Column::new("τ×100 paper".into(), r.iter().map(|x| x.paper_tau).collect::<Vec<_>>()),
            Column::new("p paper".into(), r.iter().map(|x| x.paper_p).collect::<Vec<_>>()),
            Column::new(
                "Models paper".into(),
                r.iter().map(|_| self.paper_models).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn pairs_frame(&self) -> PolarsResult<DataFrame> {
        let p = &self.pairs;
        let rank = |task: &str, pick: fn(&Pair) -> f64, me: &Pair| -> Option<f64> {
            if !me.selected {
                return None;
            }
            let scores: Vec<f64> =
                p.iter().filter(|q| q.task == task && q.selected).map(pick).collect();
            let mine = pick(me);
            let above = scores.iter().filter(|&&s| s > mine).count() as f64;
            let ties = scores.iter().filter(|&&s| s == mine).count() as f64;
            Some(above + (ties + 1.0) / 2.0)
        };
        DataFrame::new_infer_height(vec![
            Column::new("task".into(), p.iter().map(|x| x.task.clone()).collect::<Vec<_>>()),
            Column::new("model".into(), p.iter().map(|x| x.model.clone()).collect::<Vec<_>>()),
            Column::new("config".into(), p.iter().map(|x| x.config.clone()).collect::<Vec<_>>()),
            Column::new("post_filter".into(), p.iter().map(|x| x.post_filter).collect::<Vec<_>>()),
            Column::new("selected".into(), p.iter().map(|x| x.selected).collect::<Vec<_>>()),
            Column::new(
                "generated_test".into(),
                p.iter().map(|x| x.generated.value).collect::<Vec<_>>(),
            ),
            Column::new(
                "generated_low".into(),
                p.iter().map(|x| x.generated.low).collect::<Vec<_>>(),
            ),
            Column::new(
                "generated_high".into(),
                p.iter().map(|x| x.generated.high).collect::<Vec<_>>(),
            ),
            Column::new("real_test".into(), p.iter().map(|x| x.real.value).collect::<Vec<_>>()),
            Column::new("real_low".into(), p.iter().map(|x| x.real.low).collect::<Vec<_>>()),
            Column::new("real_high".into(), p.iter().map(|x| x.real.high).collect::<Vec<_>>()),
            Column::new(
                "rank_generated".into(),
                p.iter().map(|x| rank(&x.task, |q| q.generated.value, x)).collect::<Vec<_>>(),
            ),
            Column::new(
                "rank_real".into(),
                p.iter().map(|x| rank(&x.task, |q| q.real.value, x)).collect::<Vec<_>>(),
            ),
        ])
    }

    /// Rounded values for snapshot tests.
    #[allow(clippy::type_complexity)]
    pub fn snapshot_rows(&self) -> Vec<(String, Vec<String>, Option<f64>, Option<f64>)> {
        self.results
            .iter()
            .map(|r| {
                (
                    r.task.clone(),
                    r.models.clone(),
                    r.tau.as_ref().map(|t| round2(100.0 * t.tau)),
                    r.tau.as_ref().map(|t| round2(t.p_value)),
                )
            })
            .collect()
    }

    pub fn scatter_panels(&self) -> Vec<ScatterPanel> {
        self.results
            .iter()
            .filter(|r| r.tau.is_some())
            .map(|r| {
                let t = r.tau.as_ref().expect("filtered");
                ScatterPanel {
                    title: format!(
                        "{}: τ = {:.3} (p = {:.2}); paper τ = {:.3} (p = {:.2})",
                        r.paper_column,
                        t.tau,
                        t.p_value,
                        r.paper_tau.unwrap_or(f64::NAN) / 100.0,
                        r.paper_p.unwrap_or(f64::NAN)
                    ),
                    x_desc: format!("{} on the generated test set", r.metric.display_name()),
                    y_desc: format!("{} on the real test set", r.metric.display_name()),
                    points: self
                        .pairs
                        .iter()
                        .filter(|p| p.task == r.task && p.selected)
                        .map(|p| ScatterPoint {
                            label: p.model.clone(),
                            x: p.generated.value,
                            y: p.real.value,
                            x_interval: Some((p.generated.low, p.generated.high)),
                            y_interval: Some((p.real.low, p.real.high)),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub fn report(&self) -> Result<Report> {
        Ok(Report {
            name: "table3".into(),
            title: "Table 3 — do generated test sets rank models like real ones? (recorded runs)"
                .into(),
            tables: vec![
                ReportTable::new(
                    "table3",
                    "Table 3: Kendall's τ between rankings on generated and real test sets",
                    self.summary_frame()?,
                ),
                ReportTable::new(
                    "table3_models",
                    "Per-model scores (every recorded pair; `selected` pairs are ranked)",
                    self.pairs_frame()?,
                ),
            ],
            notes: self.notes.clone(),
            manifest: self.manifest.clone(),
        })
    }
}

/// Re-score the authors' recorded runs and write the report; returns the report folder.
pub fn run_recorded(registry: &Registry) -> Result<std::path::PathBuf> {
    let table = recorded(registry)?;
    let report = table.report()?;
    let panels = table.scatter_panels();
    report
        .write(&registry.paths.reports, |dir| {
            if panels.is_empty() {
                return Ok(Vec::new());
            }
            crate::report::figures::scatter(
                dir,
                "table3",
                "Table 3: generated vs real test-set scores per model",
                &panels,
            )
        })
        .context("writing the Table 3 report")
}

//! What `p2m runs list` and `p2m runs show NAME` print: every run's stages, status, metrics, cost
//! and where its artefacts are.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::evaluate::MetricResult;
use super::stage::{read_record, Stage, Status};
use super::RunManifest;

/// One run folder, as read back.
pub struct RunInfo {
    pub dir: PathBuf,
    pub manifest: RunManifest,
    /// Per stage: `done`, `running` (interrupted or in progress) or `—` (not reached).
    pub stages: Vec<(Stage, String, Option<super::stage::StageRecord>)>,
    pub metrics: Vec<MetricResult>,
    pub teacher_cost_usd: Option<f64>,
}

impl RunInfo {
    pub fn read(dir: &Path) -> Result<RunInfo> {
        let manifest: RunManifest = super::read_json(&dir.join("run.json"))?;
        let stages = Stage::ALL
            .iter()
            .map(|&s| {
                let rec = read_record(dir, s);
                let status = match rec.as_ref().map(|r| r.status) {
                    Some(Status::Done) => "done",
                    Some(Status::Running) => "running",
                    None => "—",
                };
                (s, status.to_string(), rec)
            })
            .collect();
        let metrics = super::read_json(&dir.join(Stage::Evaluate.name()).join("metrics.json"))
            .unwrap_or_default();
        let teacher_cost_usd = super::read_json::<crate::dataset_generator::GenerationLog>(
            &dir.join(Stage::Generate.name()).join(crate::dataset_generator::LOG_FILE),
        )
        .ok()
        .map(|l| l.cost_usd);
        Ok(RunInfo { dir: dir.to_path_buf(), manifest, stages, metrics, teacher_cost_usd })
    }

    pub fn status(&self) -> String {
        let done = self.stages.iter().filter(|s| s.1 == "done").count();
        if done == self.stages.len() {
            "complete".into()
        } else {
            let next = self.stages.iter().find(|s| s.1 != "done").map(|s| s.0.name()).unwrap_or("");
            format!("{done}/{} stages (next: {next})", self.stages.len())
        }
    }

    /// The run's own metric on each test set, e.g. `generated chrf++ 41.2 [38.0, 44.5]`.
    pub fn headline(&self, metric: &str) -> String {
        self.metrics
            .iter()
            .filter(|m| m.metric == metric)
            .map(|m| format!("{} {}", m.test_set, m.display()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Every run folder under `runs_dir` (newest first).
pub fn list(runs_dir: &Path) -> Result<Vec<RunInfo>> {
    let mut out = Vec::new();
    if !runs_dir.exists() {
        return Ok(out);
    }
    for e in
        std::fs::read_dir(runs_dir).with_context(|| format!("listing {}", runs_dir.display()))?
    {
        let p = e?.path();
        if p.join("run.json").exists() {
            if let Ok(info) = RunInfo::read(&p) {
                out.push(info);
            }
        }
    }
    out.sort_by(|a, b| b.manifest.updated.cmp(&a.manifest.updated));
    Ok(out)
}

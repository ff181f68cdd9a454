//! What `p2m runs list` and `p2m runs show NAME` print: every run's stages, status, metrics, cost
//! and where its artefacts are.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::evaluate::MetricResult;
use super::layout::RunLayout;
use super::stage::{read_record, read_stage_json, Stage, StageRecord, Status};
use super::RunManifest;

/// One run folder, as read back.
pub struct RunInfo {
    pub dir: PathBuf,
    pub manifest: RunManifest,
    /// Per stage: its record, where the stage was reached (`running`: interrupted or in progress).
    pub stages: Vec<(Stage, Option<StageRecord>)>,
    pub metrics: Vec<MetricResult>,
    pub teacher_cost_usd: Option<f64>,
}

/// How far a run got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every stage is done.
    Complete,
    /// `done` of the stages are done; `next` is the first that is not.
    Partial { done: usize, next: Stage },
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunStatus::Complete => f.write_str("complete"),
            RunStatus::Partial { done, next } => {
                write!(f, "{done}/{} stages (next: {})", Stage::ALL.len(), next.name())
            }
        }
    }
}

/// A stage's state in a listing: `done`, `running` or `—` (not reached).
pub fn stage_state(record: Option<&StageRecord>) -> &'static str {
    match record.map(|r| r.status) {
        Some(Status::Done) => "done",
        Some(Status::Running) => "running",
        None => "—",
    }
}

impl RunInfo {
    pub fn read(dir: &Path) -> Result<RunInfo> {
        let layout = RunLayout::new(dir.to_path_buf());
        let manifest: RunManifest = read_stage_json(&layout.manifest())?;
        let stages = Stage::ALL.iter().map(|&s| (s, read_record(dir, s))).collect();
        let metrics = read_stage_json(&layout.metrics()).unwrap_or_default();
        let teacher_cost_usd =
            read_stage_json::<crate::dataset_generator::GenerationLog>(&layout.generation_log())
                .ok()
                .map(|l| l.cost_usd);
        Ok(RunInfo { dir: dir.to_path_buf(), manifest, stages, metrics, teacher_cost_usd })
    }

    pub fn status(&self) -> RunStatus {
        let is_done =
            |r: &Option<StageRecord>| r.as_ref().is_some_and(|r| r.status == Status::Done);
        match self.stages.iter().find(|(_, r)| !is_done(r)) {
            None => RunStatus::Complete,
            Some((next, _)) => RunStatus::Partial {
                done: self.stages.iter().filter(|(_, r)| is_done(r)).count(),
                next: *next,
            },
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
        if RunLayout::new(p.clone()).manifest().exists() {
            if let Ok(info) = RunInfo::read(&p) {
                out.push(info);
            }
        }
    }
    out.sort_by(|a, b| b.manifest.updated.cmp(&a.manifest.updated));
    Ok(out)
}

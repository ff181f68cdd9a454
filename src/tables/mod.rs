//! Reproductions of the paper's tables. The `experiments/` binaries are thin wrappers around these
//! functions so that tests (snapshot and regression) run exactly what users run.

pub mod cells;
pub mod claims;
pub mod jobs;
pub mod retrieval;
pub mod table1;
pub mod table1_live;
pub mod table2;
pub mod table3;
pub mod table3_live;

use anyhow::{Context, Result};

use crate::data::loaders::{self, HfDisk};
use crate::data::recorded::RecordedRun;
use crate::data::registry::{Registry, ResolvedFile};
use crate::evaluator::bootstrap::{score_with_interval, BootstrapConfig, ScoredInterval};
use crate::evaluator::Metric;

/// Predictions and references of a recorded prediction folder (columns `output`, `output_col`).
pub struct RecordedPredictions {
    pub predictions: Vec<String>,
    pub references: Vec<Vec<String>>,
    pub inputs: Vec<String>,
    pub files: Vec<ResolvedFile>,
}

pub fn load_recorded_predictions(registry: &Registry, folder: &str) -> Result<RecordedPredictions> {
    let (disk, local, files) = loaders::load_registered_hf_disk(registry, folder)?;
    let frame = match disk {
        HfDisk::Dataset(df) => df,
        HfDisk::Dict(_) => anyhow::bail!(
            "{}: expected a single dataset of predictions, found a DatasetDict",
            local.display()
        ),
    };
    let common = loaders::p2m_to_common(&frame, &local)?;
    let predictions = loaders::string_column(&common, loaders::PREDICTION)
        .with_context(|| format!("{}: no `output` (prediction) column", local.display()))?;
    Ok(RecordedPredictions {
        predictions,
        references: loaders::string_list_column(&common, loaders::REFERENCES)?,
        inputs: loaders::string_column(&common, loaders::INPUT)?,
        files,
    })
}

/// A recorded run's score with its interval, and what it was scored on.
pub struct RecordedScore {
    pub scored: ScoredInterval,
    pub files: Vec<ResolvedFile>,
    /// A fingerprint of the references in order: equal keys mean the same test examples.
    pub references_key: String,
}

/// Score a recorded run with a metric, with its bootstrap interval (the project's defaults).
pub fn score_recorded(
    registry: &Registry,
    run: &RecordedRun,
    metric: Metric,
) -> Result<RecordedScore> {
    let p = load_recorded_predictions(registry, &run.folder)?;
    let scored =
        score_with_interval(metric, &p.predictions, &p.references, &BootstrapConfig::default())
            .with_context(|| run.folder.clone())?;
    let references_key =
        crate::util::fs::sha256_hex(serde_json::to_string(&p.references)?.as_bytes());
    Ok(RecordedScore { scored, files: p.files, references_key })
}

/// Round for display and snapshots (half away from zero, as people read tables).
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

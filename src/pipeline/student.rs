//! Which student is trained: the model retriever's choice mapped to what trains here, and
//! `--select-student K` (each candidate trained briefly, the best on the validation split kept).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::assemble::Row;
use super::config::Resolved;
use crate::config::Paths;
use crate::models::registry::ModelRegistry;

/// Which student is trained, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudentChoice {
    /// What `--student` takes: `decoder`, `warm-start`, `tiny:H:L:A` or a model folder.
    pub student: String,
    pub why: String,
    /// The model retriever's top candidates, when it ran.
    pub candidates: Vec<String>,
    /// Students that can be trained here, best first (what `--select-student K` tries).
    #[serde(default)]
    pub trainable: Vec<String>,
}

/// What `--select-student` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudentSelection {
    pub metric: String,
    pub steps: u64,
    pub validation_examples: usize,
    /// (student, score on the generated validation split)
    pub scores: Vec<(String, f64)>,
    pub chosen: String,
}

/// Train each of the first `k` trainable students for `steps` optimizer steps, score it on the
/// validation rows with the run's metric, and return the best (ties: the earlier candidate).
#[allow(clippy::too_many_arguments)] // each argument is one input of the selection
pub(super) fn select_student(
    choice: &StudentChoice,
    k: usize,
    steps: u64,
    train: &[crate::trainer::TextPair],
    validation: &[Row],
    instruction: &str,
    metric: crate::evaluator::Metric,
    resolved: &Resolved,
    models: &ModelRegistry,
    device: tch::Device,
    stage_dir: &Path,
) -> Result<StudentSelection> {
    let mut pool: Vec<String> = Vec::new();
    for s in std::iter::once(&choice.student).chain(&choice.trainable) {
        if !pool.contains(s) {
            pool.push(s.clone());
        }
    }
    pool.truncate(k);
    anyhow::ensure!(
        !validation.is_empty(),
        "--select-student needs a validation split (the assembly made none)"
    );
    let val: Vec<&Row> = validation.iter().take(64).collect();
    let refs: Vec<Vec<String>> = val.iter().map(|r| vec![r.output.clone()]).collect();
    let sources: Vec<String> =
        val.iter().map(|r| crate::trainer::model_input(0, instruction, &r.input)).collect();
    let mut scores = Vec::new();
    for (i, candidate) in pool.iter().enumerate() {
        eprintln!("  selection: training `{candidate}` for {steps} steps");
        let spec: crate::trainer::StudentSpec = candidate.parse()?;
        let mut student =
            crate::trainer::Student::build(&spec, models, device, resolved.train.seed)?;
        let cfg = crate::trainer::TrainConfig { max_steps: Some(steps), ..resolved.train.clone() };
        let candidate_dir = stage_dir.join("selection").join(i.to_string());
        let mut trainer = crate::trainer::Trainer::new(cfg, &mut student, candidate_dir.clone());
        trainer.label = format!("selection {candidate}");
        trainer.train(train, &[])?;
        let predictions = student.generate(
            &sources,
            resolved.executor.max_source_len,
            &resolved.executor.sampling(),
            resolved.executor.batch_size,
        )?;
        let score = crate::evaluator::score(metric, &predictions, &refs)?.value;
        // The candidate's weights served only this score (kept in selection.json); a rerun
        // retrains candidates anyway, so its folder (weights and checkpoints) goes.
        crate::util::fs::remove_dir_if_present(&candidate_dir)
            .with_context(|| format!("removing {}", candidate_dir.display()))?;
        eprintln!(
            "  selection: `{candidate}` scores {score:.2} {} on {} validation examples",
            metric.name(),
            val.len()
        );
        scores.push((candidate.clone(), score));
    }
    let best = scores.iter().fold(None::<&(String, f64)>, |b, c| match b {
        Some(b) if b.1 >= c.1 => Some(b),
        _ => Some(c),
    });
    let chosen = best.map(|b| b.0.clone()).context("no candidate student")?;
    Ok(StudentSelection {
        metric: metric.name().into(),
        steps,
        validation_examples: val.len(),
        scores,
        chosen,
    })
}

pub(super) fn choose_student(
    paths: &Paths,
    models: &ModelRegistry,
    query: &str,
    retrieval: bool,
    default_student: &str,
    user_chose: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<StudentChoice> {
    // The students that train here without a download, after whatever retrieval finds.
    let local: Vec<String> =
        [default_student, "decoder", "warm-start"].iter().map(|s| s.to_string()).collect();
    if user_chose || !retrieval {
        let why = if user_chose {
            "chosen with --student (or the config)"
        } else {
            "model retrieval off: the scale's default student"
        };
        return Ok(StudentChoice {
            student: default_student.into(),
            why: why.into(),
            candidates: vec![],
            trainable: local,
        });
    }
    let search = crate::model_retriever::ModelSearch {
        instruction: query.to_string(),
        index: None,
        config: crate::model_retriever::ModelRetrieverConfig::default(),
        fetch: false,
        show_progress: false,
    };
    let out = crate::model_retriever::retrieve_models(paths, &search, None, rt)?;
    let candidates: Vec<String> =
        out.ranking.models.iter().map(|m| format!("{} (score {:.1})", m.name, m.score)).collect();
    let top = out.ranking.models.first().map(|m| m.name.clone()).unwrap_or_default();
    use crate::model_retriever::TrainableSource;
    let plan = out.trainable.context("the model retriever ranked no model")?;
    Ok(match &plan.source {
        TrainableSource::Registered { registry_id, available: true, .. } => {
            let dir = models.resolve(registry_id)?.dir;
            StudentChoice { student: dir.display().to_string(), why: format!("the model retriever's top model `{top}`, registered here as `{registry_id}`"), candidates, trainable: local }
        }
        TrainableSource::Hub { repo } if !paths.offline => match crate::model_retriever::fetch_trainable(models, &plan) {
            Ok(dir) => StudentChoice { student: dir.display().to_string(), why: format!("the model retriever's top model `{repo}`, fetched from the hub"), candidates, trainable: local },
            Err(e) => StudentChoice {
                student: default_student.into(),
                why: format!(
                    "the model retriever's top model `{repo}` could not be fetched from the hub ({}); the scale's default student instead",
                    e.chain().map(|c| c.to_string()).last().unwrap_or_default()
                ),
                candidates,
                trainable: local,
            },
        },
        _ => StudentChoice {
            student: default_student.into(),
            why: format!("the model retriever's top model `{top}` cannot be trained here (offline, no weights); the scale's default student instead"),
            candidates,
            trainable: local,
        },
    })
}

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
    /// The model retriever's candidates, best first, when it ran: the hub index's top models and
    /// the students that train here, merged (`name (score S)`).
    pub candidates: Vec<String>,
    /// Students that can be trained here, best first (what `--select-student K` tries).
    #[serde(default)]
    pub trainable: Vec<String>,
    /// The merged ranking with its scores (BM25, downloads and their basis, matched terms).
    #[serde(default)]
    pub ranking: Vec<crate::model_retriever::Candidate>,
    /// Each candidate ranked above the chosen one, and why it was passed over.
    #[serde(default)]
    pub passed_over: Vec<(String, String)>,
    /// The scale's default student: what "w/o model retrieval" trains.
    #[serde(default)]
    pub default_student: String,
    /// The student is the scale's default. With model retrieval on, the "w/o model retrieval"
    /// ablation then trains the same student, and cannot be measured here (the why says so).
    #[serde(default)]
    pub same_as_default: bool,
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
            resolved.executor.prefix_cache,
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

/// The student of a run: the model retriever's best-ranked candidate that trains here (the hub
/// index's models and the registered students ranked together; online a hub model is fetched),
/// the user's `--student`, or, with model retrieval off or nothing trainable ranked, the scale's
/// default. The choice carries the ranking, the scores and the reason.
pub fn choose_student(
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
    let mut choice = StudentChoice {
        student: default_student.into(),
        why: String::new(),
        candidates: vec![],
        trainable: local,
        ranking: vec![],
        passed_over: vec![],
        default_student: default_student.into(),
        same_as_default: true,
    };
    if user_chose || !retrieval {
        choice.why = if user_chose {
            "chosen with --student (or the config)".into()
        } else {
            "model retrieval off: the scale's default student".into()
        };
        return Ok(choice);
    }
    let search = crate::model_retriever::ModelSearch {
        instruction: query.to_string(),
        index: None,
        config: crate::model_retriever::ModelRetrieverConfig::default(),
        fetch: true,
        show_progress: false,
    };
    let out = crate::model_retriever::retrieve_models_with(paths, models, &search, None, rt)?;
    choice.candidates = out.candidates.iter().map(|c| c.label()).collect();
    choice.ranking = out.candidates.clone();
    choice.passed_over = out.choice.passed_over.clone();
    let passed = if out.choice.passed_over.is_empty() {
        String::new()
    } else {
        format!(
            "; passed over: {}",
            out.choice
                .passed_over
                .iter()
                .map(|(name, why)| format!("`{name}` ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match (&out.choice.student, &out.choice.name, out.choice.rank) {
        (Some(student), Some(name), Some(rank)) => {
            let score = out.candidates.get(rank - 1).map(|c| c.score).unwrap_or(0.0);
            choice.student = student.clone();
            choice.same_as_default = student == default_student;
            choice.why = format!(
                "the model retriever's best-ranked model that trains here: `{name}` (rank {rank} of {}, score {score:.1}){passed}",
                out.candidates.len()
            );
            if choice.same_as_default {
                choice.why.push_str(&format!(
                    ". It is the scale's default student `{default_student}`: the \"w/o model retrieval\" ablation trains the same student here, so that ablation cannot be measured"
                ));
            }
        }
        _ => {
            choice.why = format!(
                "no candidate of the model retriever trains here{passed}; the scale's default student `{default_student}` instead, so the \"w/o model retrieval\" ablation trains the same student here and cannot be measured"
            );
        }
    }
    Ok(choice)
}

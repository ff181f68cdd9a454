//! Retrieval quality on the paper's three prompts: the top-5 of the model retriever and of the
//! dataset retriever for each task, and the ranks of the models and datasets a person would choose
//! (`data/retrieval_judgements.toml`). Every sentence of the report's notes is built from this run's
//! ranks and settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::Deserialize;

use crate::config::Paths;
use crate::data::registry::Registry;
use crate::dataset_retriever::{open_dataset_retriever, DatasetIndex};
use crate::model_retriever::{self as mr, IndexSource, ModelIndex, ModelRetrieverConfig};
use crate::prompt_parser::{detect_language, Language};
use crate::report::{Manifest, Report, ReportTable};
use crate::teacher::Teacher;

/// Rows of `data/retrieval_judgements.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judgements {
    pub model: Vec<ModelJudgement>,
    pub dataset: Vec<DatasetJudgement>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelJudgement {
    pub task: String,
    pub model: String,
    pub why: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetJudgement {
    pub task: String,
    pub dataset: String,
    pub why: String,
}

pub const JUDGEMENTS_FILE: &str = "retrieval_judgements.toml";

pub fn load_judgements(data_dir: &Path) -> Result<Judgements> {
    let path = data_dir.join(JUDGEMENTS_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "{}: expected [[model]] and [[dataset]] tables with task, model/dataset and why",
            path.display()
        )
    })
}

fn rank_text(rank: Option<u32>, of: usize) -> String {
    match rank {
        Some(r) => format!("rank {r} of {of}"),
        None => format!("not ranked (of {of})"),
    }
}

/// Run both retrievers on every paper task and write `reports/retrieval/`; returns the report
/// folder. With a teacher the model query is HyDE's hypothetical model card.
pub fn run(paths: &Paths, teacher: Option<&dyn Teacher>) -> Result<PathBuf> {
    let registry = Registry::load(paths.clone())?;
    let tasks = crate::data::tasks::load_tasks(&paths.data)?;
    let judgements = load_judgements(&paths.data)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    // Models.
    let source = IndexSource::from_registry(&registry)?;
    let (index, _) = ModelIndex::load_or_build(&source, &paths.cache, true)?;
    let cfg = ModelRetrieverConfig::default();
    let all_cfg = ModelRetrieverConfig { first_stage_depth: usize::MAX, ..Default::default() };
    let (
        mut m_task,
        mut m_rank,
        mut m_name,
        mut m_score,
        mut m_bm25,
        mut m_dl,
        mut m_size,
        mut m_terms,
    ) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut j_task, mut j_model, mut j_rank, mut j_rank_all, mut j_why) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut queries = Vec::new();
    let mut model_sentences = Vec::new();
    for task in &tasks {
        let instruction = task.instruction.trim().to_string();
        let query = match teacher {
            Some(t) => rt.block_on(mr::hyde_query(t, &instruction))?,
            None => instruction.clone(),
        };
        queries.push((task.id.clone(), query.clone()));
        let top = index.rank(&query, &cfg, Some(5));
        for m in &top.models {
            m_task.push(task.id.clone());
            m_rank.push(m.rank as u32);
            m_name.push(m.name.clone());
            m_score.push(m.score);
            m_bm25.push(m.bm25);
            m_dl.push(m.downloads);
            m_size.push(mr::format_size(m.size_bytes));
            m_terms.push(
                m.matched_terms
                    .iter()
                    .take(5)
                    .map(|t| t.word.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        let staged = index.rank(&query, &cfg, None);
        let full = index.rank(&query, &all_cfg, None);
        for j in judgements.model.iter().filter(|j| j.task == task.id) {
            let rank = staged.models.iter().find(|m| m.name == j.model).map(|m| m.rank as u32);
            j_task.push(task.id.clone());
            j_model.push(j.model.clone());
            j_rank.push(rank);
            j_rank_all.push(full.models.iter().find(|m| m.name == j.model).map(|m| m.rank as u32));
            j_why.push(j.why.clone());
            model_sentences.push(format!(
                "{}: {} ({}) {}",
                task.id,
                j.model,
                j.why,
                rank_text(rank, staged.eligible)
            ));
        }
    }
    let models_top5 = df!("task" => m_task, "rank" => m_rank, "model" => m_name, "score" => m_score, "bm25" => m_bm25,
        "downloads" => m_dl, "size" => m_size, "top matched terms" => m_terms)?;
    let models_judged = df!("task" => j_task, "model a person would choose" => j_model, "rank (first stage 1,000)" => j_rank,
        "rank (all eligible)" => j_rank_all, "why" => j_why)?;

    // Datasets.
    let (retriever, _) = open_dataset_retriever(paths, None, true)?;
    let n_datasets = retriever.index.entries.len();
    let (mut d_task, mut d_rank, mut d_name, mut d_score, mut d_local) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut k_task, mut k_name, mut k_rank, mut k_why) = (vec![], vec![], vec![], vec![]);
    let (mut b_task, mut b_name, mut b_rank) = (vec![], vec![], vec![]);
    let mut dataset_sentences = Vec::new();
    for task in &tasks {
        let all = retriever.retrieve(task.instruction.trim(), None)?;
        for c in all.iter().take(5) {
            d_task.push(task.id.clone());
            d_rank.push(c.rank as u32);
            d_name.push(c.name.clone());
            d_score.push(c.score);
            d_local.push(c.loadable());
        }
        let language = detect_language(&task.instruction);
        for j in judgements.dataset.iter().filter(|j| j.task == task.id) {
            let rank = all.iter().find(|c| c.name == j.dataset).map(|c| c.rank as u32);
            k_task.push(task.id.clone());
            k_name.push(j.dataset.clone());
            k_rank.push(rank);
            k_why.push(j.why.clone());
            if rank.is_some() {
                dataset_sentences.push(format!(
                    "{} ({} instruction): {} {}",
                    task.id,
                    language.name(),
                    j.dataset,
                    rank_text(rank, n_datasets)
                ));
            }
        }
        if let Some(b) = all.iter().find(|c| c.loadable()) {
            b_task.push(task.id.clone());
            b_name.push(b.name.clone());
            b_rank.push(b.rank as u32);
        }
    }
    let datasets_top5 = df!("task" => d_task, "rank" => d_rank, "dataset" => d_name, "cosine" => d_score, "loadable here" => d_local)?;
    let datasets_judged = df!("task" => k_task, "dataset a person would choose" => k_name, format!("rank of {n_datasets}") => k_rank, "why" => k_why)?;
    let best_loadable = df!("task" => b_task, "best loadable dataset" => b_name, format!("rank of {n_datasets}") => b_rank)?;

    let mut manifest = Manifest::new(
        "retrieval",
        &paths.root,
        serde_json::json!({ "model_retriever": cfg, "dataset_encoder": retriever.encoder.id, "dataset_top_k": 25,
                            "query": if teacher.is_some() { "HyDE" } else { "instruction" }, "queries": queries,
                            "judgements": paths.data.join(JUDGEMENTS_FILE) }),
    );
    manifest.add_inputs([
        registry.resolve_file(mr::MODEL_INDEX_FILE)?,
        DatasetIndex::from_registry(&registry)?.1,
    ]);
    let non_english: Vec<&str> = tasks
        .iter()
        .filter(|t| detect_language(&t.instruction) != Language::English)
        .map(|t| t.id.as_str())
        .collect();
    let mut notes = vec![
        format!(
            "Model query: {}. Score = BM25 (k1 1.2, b 0.75) × log10(downloads + {}) over the best {} by BM25 (the reference code); \
             models above {} and non-encoder-decoders are removed first. `rank (all eligible)` ranks every eligible card.",
            if teacher.is_some() { "HyDE (a hypothetical model card by the teacher)" } else { "the task's instruction (no teacher; HyDE off)" },
            cfg.downloads_offset,
            cfg.first_stage_depth,
            mr::format_size(cfg.size_limit_bytes),
        ),
        format!("Models a person would choose ({JUDGEMENTS_FILE}), as ranked in this run: {}.", model_sentences.join("; ")),
        format!(
            "Datasets a person would choose, as ranked in this run (dense search over {n_datasets} descriptions with `{}`): {}.",
            retriever.encoder.id,
            if dataset_sentences.is_empty() { "none of them is in the index".to_string() } else { dataset_sentences.join("; ") }
        ),
    ];
    if !non_english.is_empty() {
        notes.push(format!(
            "Not in English: the instruction of {} (detected by the prompt parser); the dataset query is that instruction, encoded with `{}`.",
            non_english.join(", "),
            retriever.encoder.id
        ));
    }
    let mut t4 = ReportTable::new(
        "datasets_top5",
        &format!("Dataset retriever: top-5 per task ({}, inner product)", retriever.encoder.id),
        datasets_top5,
    );
    t4.decimals = 4;
    let report = Report {
        name: "retrieval".into(),
        title: "Retrieval quality on the paper's three prompts".into(),
        tables: vec![
            ReportTable::new(
                "models_judged",
                "Model retriever: ranks of the models a person would choose",
                models_judged,
            ),
            ReportTable::new("models_top5", "Model retriever: top-5 per task", models_top5),
            ReportTable::new(
                "datasets_judged",
                "Dataset retriever: ranks of the datasets a person would choose",
                datasets_judged,
            ),
            t4,
            ReportTable::new(
                "datasets_best_loadable",
                "Dataset retriever: the best dataset loadable offline",
                best_loadable,
            ),
        ],
        notes,
        manifest,
    };
    report.write(&paths.reports, |_| Ok(Vec::new()))
}

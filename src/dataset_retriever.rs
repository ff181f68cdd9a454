//! The dataset retriever (Prompt2Model §3.2, with the reference's later LLM reranking and column
//! selection).
//!
//! 1. **Index.** The 2,494 entries of `prompt2model/dataset_index.json` (name → description,
//!    evaluation metadata), in name order as the reference sorts them.
//! 2. **Dense retrieval.** Every description is encoded once with a sentence encoder (MiniLM
//!    offline; the paper's DataFinder encoder online, fetched from the hub, see
//!    [`choose_encoder`]) and the matrix is cached on disk
//!    (`retrieval/dataset_embeddings-<encoder>.bin`), keyed by the index's and the encoder
//!    weights' sha256. A query is the instruction's embedding; search is an exact inner product
//!    (MiniLM's embeddings are L2-normalised, so cosine similarity; DataFinder's CLS vectors are
//!    not, as in the reference), top-25.
//! 3. **Choice.** Optionally an LLM reranks the candidates by majority over several sampled votes,
//!    names that are not candidates counting as abstentions ([`llm_rerank`]). Without an LLM the
//!    user picks in the terminal ([`interactive_pick`]) or names the dataset in a config file
//!    ([`SelectionConfig`]); by default the best-ranked dataset that can be loaded here is taken.
//! 4. **Columns.** The LLM names input columns and one output column as JSON, validated against
//!    the dataset's columns ([`validate_column_choice`]); or the user/config does; or each local
//!    format's natural columns are used.
//! 5. **Textualise.** Each row's input is its input columns as `col: value` lines; the output
//!    column gives the references; at most 3,000 rows per split; saved in the registry's common
//!    schema (`<split>.parquet`) with a `retrieved_dataset.json` that says what was chosen and why.
//!
//! Online any dataset of the index loads from the hub ([`crate::hub_datasets`]). Offline only
//! datasets with a local source (or a hub copy in the cache) can be loaded: `data/datasets.toml` names each local
//! dataset's names in the index (`hf_index_names`), and those whose format has a loader are marked
//! loadable.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model_retriever::IndexError;
use crate::models::bert::BertEncoder;
use crate::registry::{Registry, ResolvedFile};
use crate::retrieval::binfile::{self, Reader, Writer};
use crate::teacher::{ChatRequest, SamplingParams, Teacher};

/// Registry path of the dataset index.
pub const DATASET_INDEX_FILE: &str = "prompt2model/dataset_index.json";
/// The offline encoder of descriptions and queries (model registry id).
pub const DEFAULT_ENCODER: &str = "all-MiniLM-L6-v2";
/// The paper's encoder (DataFinder), fetched from the hub when online (model registry id).
pub const DATAFINDER_ENCODER: &str = "datafinder-huggingface-prompt-queries";
/// Registry formats with a common-schema loader.
pub const LOADABLE_FORMATS: &[&str] = &["squad-json", "conala-json", "temporal-json", "p2m-hf-disk"];

const EMB_MAGIC: &str = "P2M-DATASET-EMBEDDINGS";
const EMB_FORMAT: u32 = 1;

// ---------------------------------------------------------------------------------------------
// The index

#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub description: String,
    /// `task` of each evaluation_metadata entry (e.g. `question-answering`).
    pub tasks: Vec<String>,
    /// `config` of the first evaluation_metadata entry (the hub config to load, e.g. `plain_text`).
    pub eval_config: Option<String>,
    /// `col_mapping` of each evaluation_metadata entry (source column → task role).
    pub col_mappings: Vec<serde_json::Value>,
}

pub struct DatasetIndex {
    pub entries: Vec<DatasetInfo>,
    pub path: PathBuf,
    pub sha256: String,
}

impl DatasetIndex {
    /// Read and validate an index file (a JSON object: name → {description, ...}).
    pub fn load(path: &Path, sha256: Option<String>) -> Result<Self, IndexError> {
        let bad = |detail: String, fix: &str| IndexError::Empty { path: path.to_path_buf(), detail, fix: fix.to_string() };
        if !path.is_file() {
            return Err(IndexError::Missing {
                what: "dataset index",
                path: path.to_path_buf(),
                fix: "run `p2m data fetch hf-dataset-index`, set P2M_MIRROR to the data mirror, or pass --index with a dataset_index.json".into(),
            });
        }
        let bytes = fs::read(path).map_err(|e| bad(e.to_string(), "check the file's permissions"))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!("not valid JSON at line {}, column {}: {e}", e.line(), e.column()), "the file is truncated or corrupt: re-fetch it (`p2m data fetch hf-dataset-index`)")
        })?;
        let obj = value.as_object().ok_or_else(|| bad("the top level is not a JSON object of name → entry".into(), "use the reference's dataset_index.json"))?;
        let mut entries = Vec::with_capacity(obj.len());
        for (name, entry) in obj {
            let description = entry.get("description").and_then(|d| d.as_str()).ok_or_else(|| {
                bad(format!("entry `{name}`: field `description` is missing or not a string"), "repair or remove that entry")
            })?;
            let meta: &[serde_json::Value] = entry.get("evaluation_metadata").and_then(|m| m.as_array()).map(Vec::as_slice).unwrap_or_default();
            let tasks = meta.iter().filter_map(|m| m.get("task").and_then(|t| t.as_str()).map(str::to_string)).collect();
            let eval_config = meta.first().and_then(|m| m.get("config")).and_then(|c| c.as_str()).map(str::to_string);
            let col_mappings = meta.iter().filter_map(|m| m.get("col_mapping").filter(|c| c.is_object()).cloned()).collect();
            entries.push(DatasetInfo { name: name.clone(), description: description.to_string(), tasks, eval_config, col_mappings });
        }
        if entries.is_empty() {
            return Err(bad("the index has no datasets".into(), "use the full index (`prompt2model/dataset_index.json` from the data mirror)"));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let sha256 = match sha256 {
            Some(s) => s,
            None => crate::registry::sha256_file(path).map_err(|e| bad(e.to_string(), "check the file"))?,
        };
        Ok(DatasetIndex { entries, path: path.to_path_buf(), sha256 })
    }

    /// The registry's verified copy of the full index.
    pub fn from_registry(registry: &Registry) -> Result<(Self, ResolvedFile)> {
        let resolved = registry.resolve_file(DATASET_INDEX_FILE)?;
        Ok((Self::load(&resolved.local, Some(resolved.sha256.clone()))?, resolved))
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The description embeddings: `n × dim`, row-major, in index order.
pub struct Embeddings {
    pub dim: usize,
    pub matrix: Vec<f32>,
}

/// The encoder and the key its embeddings are cached under.
pub struct Encoder {
    pub encoder: BertEncoder,
    pub id: String,
    /// sha256 of the weights file: a different checkpoint means different embeddings.
    pub weights_sha256: String,
}

impl Encoder {
    /// Load a registered sentence encoder on the CPU (small enough; deterministic).
    pub fn from_registry(models: &crate::models::weights::ModelRegistry, id: &str) -> Result<Self> {
        let resolved = models.resolve(id)?;
        let weights_sha256 = resolved
            .files
            .get("model.safetensors")
            .map(|f| f.sha256.clone())
            .with_context(|| format!("model `{id}` has no model.safetensors"))?;
        let encoder = BertEncoder::from_registry(models, id, tch::Device::Cpu)?;
        Ok(Encoder { encoder, id: id.to_string(), weights_sha256 })
    }

    /// A BERT-family encoder whose only source is the hub (DataFinder): its folder in the cache
    /// when an earlier run fetched it, else (online) fetched with hf-hub, a `pytorch_model.bin`
    /// converted once to `model.safetensors`, and loaded with the registry's pooling settings.
    pub fn from_hub(models: &crate::models::weights::ModelRegistry, id: &str) -> Result<Self> {
        let entry = models.model(id)?;
        if entry.family != crate::models::weights::Family::Bert {
            bail!("model `{id}` is of family {:?}, not a BERT-family encoder", entry.family);
        }
        let hf = entry.hf.as_ref().with_context(|| format!("data/models.toml: model `{id}` names no hub repository (hf = {{ repo = ... }})"))?;
        let dir = models.model_dir(id);
        // model.safetensors is written last, so its presence means the folder is complete.
        let complete = dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() && (dir.join("tokenizer.json").is_file() || dir.join("vocab.txt").is_file());
        if !complete {
            if models.paths.offline {
                bail!("`{id}` is not in the cache ({}) and P2M_OFFLINE=1 forbids fetching it from the hub ({}); fix: run once online, or use --encoder minilm", dir.display(), hf.repo);
            }
            fetch_hub_encoder(&models.paths.cache, &hf.repo, hf.revision.as_deref(), &dir).with_context(|| format!("fetching `{id}` from the hub ({})", hf.repo))?;
        }
        let weights_sha256 = crate::models::weights::sha256_file(&dir.join("model.safetensors"))?;
        let mut encoder = BertEncoder::from_dir(&dir, tch::Device::Cpu).with_context(|| format!("loading `{id}` from {}", dir.display()))?;
        encoder.apply_entry(entry)?;
        Ok(Encoder { encoder, id: id.to_string(), weights_sha256 })
    }

    /// Embeddings of texts as rows of a flat `f32` vector.
    pub fn embed(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let t = self.encoder.embed_sentences(texts)?;
        let dim = t.size().get(1).copied().unwrap_or(0) as usize;
        let flat: Vec<f32> = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).context("reading embeddings")?;
        Ok((flat, dim))
    }
}

/// Fetch a BERT encoder's files with hf-hub (honours `HF_ENDPOINT`, `HF_TOKEN`) into `dir`:
/// config, tokenizer (`tokenizer.json`, else `vocab.txt`), optional tokenizer settings, and the
/// weights (`model.safetensors`, else `pytorch_model.bin` converted to it). Each file goes through
/// a temporary file and a rename; the weights come last.
fn fetch_hub_encoder(cache: &Path, repo: &str, revision: Option<&str>, dir: &Path) -> Result<()> {
    let (files, weights) = crate::download::block_on(async {
        let api = crate::download::hf_hub_api(&cache.join("hf-hub"), false).context("hf-hub client")?;
        let r = api.repo(match revision {
            Some(rev) => hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, rev.to_string()),
            None => hf_hub::Repo::model(repo.to_string()),
        });
        let mut files = vec![("config.json", r.get("config.json").await.with_context(|| format!("{repo}/config.json"))?)];
        match r.get("tokenizer.json").await {
            Ok(p) => files.push(("tokenizer.json", p)),
            Err(first) => files.push(("vocab.txt", r.get("vocab.txt").await.with_context(|| format!("{repo}: neither tokenizer.json ({first}) nor vocab.txt"))?)),
        }
        // Optional: settings the tokenizer falls back to defaults without.
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            if let Ok(p) = r.get(name).await {
                files.push((name, p));
            }
        }
        let weights = match r.get("model.safetensors").await {
            Ok(p) => ("model.safetensors", p),
            Err(first) => ("pytorch_model.bin", r.get("pytorch_model.bin").await.with_context(|| format!("{repo}: neither model.safetensors ({first}) nor pytorch_model.bin"))?),
        };
        Ok::<_, anyhow::Error>((files, weights))
    })??;
    let copy = |name: &str, from: &Path| -> Result<()> { Ok(crate::registry::copy_atomically(from, &dir.join(name))?) };
    for (name, path) in &files {
        copy(name, path)?;
    }
    match weights {
        ("model.safetensors", p) => copy("model.safetensors", &p)?,
        (_, p) => crate::models::torch_pickle::convert_to_safetensors(&p, &dir.join("model.safetensors")).with_context(|| format!("converting {repo}/pytorch_model.bin to safetensors"))?,
    }
    Ok(())
}

/// `--encoder`: `minilm`, `datafinder` or a registered BERT-family model id; by default DataFinder
/// online (the paper's encoder) and MiniLM offline. When a hub encoder cannot be had, MiniLM is
/// used instead and the returned notes (also printed on stderr) say why.
pub fn choose_encoder(models: &crate::models::weights::ModelRegistry, requested: Option<&str>, offline: bool) -> Result<(Encoder, Vec<String>)> {
    let id = match requested.unwrap_or(if offline { "minilm" } else { "datafinder" }) {
        "minilm" => DEFAULT_ENCODER,
        "datafinder" => DATAFINDER_ENCODER,
        other => other,
    };
    let entry = models.model(id).map_err(|e| anyhow::anyhow!("--encoder {id}: {e}; use minilm, datafinder or a BERT-family id of data/models.toml"))?;
    if entry.wheel().is_some() {
        return Ok((Encoder::from_registry(models, id)?, vec![]));
    }
    match Encoder::from_hub(models, id) {
        Ok(e) => Ok((e, vec![])),
        Err(e) => {
            let note = format!("encoder `{id}` unavailable ({e:#}); using {DEFAULT_ENCODER} instead");
            eprintln!("warning: {note}");
            Ok((Encoder::from_registry(models, DEFAULT_ENCODER)?, vec![note]))
        }
    }
}

/// Encode every description, or read the cached matrix when it was made from the same index and
/// encoder weights. Returns whether it was (re)computed.
pub fn load_or_encode(index: &DatasetIndex, encoder: &Encoder, cache_dir: &Path, show_progress: bool) -> Result<(Embeddings, bool)> {
    let path = cache_dir.join("retrieval").join(format!("dataset_embeddings-{}.bin", encoder.id));
    if let Ok(bytes) = fs::read(&path) {
        match read_embeddings(&bytes, &path.display().to_string(), index, encoder) {
            Ok(Some(e)) => return Ok((e, false)),
            Ok(None) => tracing::info!(path = %path.display(), "description embeddings are for another index or encoder: re-encoding"),
            Err(e) => tracing::warn!(path = %path.display(), "description embeddings unreadable ({e:#}): re-encoding"),
        }
    }
    let n = index.entries.len();
    let pb = if show_progress { indicatif::ProgressBar::new(n as u64) } else { indicatif::ProgressBar::hidden() };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} encoding dataset descriptions [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    let mut matrix = Vec::new();
    let mut dim = 0;
    for chunk in index.entries.chunks(128) {
        let texts: Vec<&str> = chunk.iter().map(|e| e.description.as_str()).collect();
        let (rows, d) = encoder.embed(&texts)?;
        dim = d;
        matrix.extend(rows);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let mut w = Writer::default();
    w.str(EMB_MAGIC);
    w.u32(EMB_FORMAT);
    w.str(&index.sha256);
    w.str(&encoder.id);
    w.str(&encoder.weights_sha256);
    w.u64(n as u64);
    w.u64(dim as u64);
    w.f32s(&matrix);
    binfile::write_atomically(&path, &w.buf)?;
    Ok((Embeddings { dim, matrix }, true))
}

fn read_embeddings(bytes: &[u8], what: &str, index: &DatasetIndex, encoder: &Encoder) -> Result<Option<Embeddings>> {
    let mut r = Reader::new(bytes, what);
    if r.str()? != EMB_MAGIC || r.u32()? != EMB_FORMAT {
        return Ok(None);
    }
    if r.str()? != index.sha256 || r.str()? != encoder.id || r.str()? != encoder.weights_sha256 {
        return Ok(None);
    }
    let n = r.u64()? as usize;
    let dim = r.u64()? as usize;
    let matrix = r.f32s()?;
    anyhow::ensure!(n == index.entries.len() && matrix.len() == n * dim, "{what}: {n} × {dim} header but {} values", matrix.len());
    Ok(Some(Embeddings { dim, matrix }))
}

// ---------------------------------------------------------------------------------------------
// Local sources and ranking

/// A local dataset that an index entry maps to.
#[derive(Debug, Clone, Serialize)]
pub struct LocalSource {
    pub registry_id: String,
    pub format: String,
    /// Whether the format has a common-schema loader.
    pub loadable: bool,
}

/// Index name → local dataset, from the registry's `hf_index_names`.
pub fn local_sources(registry: &Registry) -> BTreeMap<String, LocalSource> {
    let mut out = BTreeMap::new();
    for d in registry.datasets() {
        for name in &d.hf_index_names {
            out.insert(
                name.clone(),
                LocalSource { registry_id: d.id.clone(), format: d.format.clone(), loadable: LOADABLE_FORMATS.contains(&d.format.as_str()) },
            );
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub rank: usize,
    pub name: String,
    pub score: f64,
    pub description: String,
    pub tasks: Vec<String>,
    pub local: Option<LocalSource>,
}

impl Candidate {
    pub fn loadable(&self) -> bool {
        self.local.as_ref().is_some_and(|l| l.loadable)
    }
}

/// The `k` nearest descriptions to a query embedding (all of them with `k = n`).
pub fn rank(index: &DatasetIndex, emb: &Embeddings, query: &[f32], k: usize, local: &BTreeMap<String, LocalSource>) -> Vec<Candidate> {
    crate::retrieval::dense::top_k(&emb.matrix, emb.dim, query, k)
        .into_iter()
        .enumerate()
        .map(|(i, (row, score))| {
            let e = &index.entries[row];
            Candidate { rank: i + 1, name: e.name.clone(), score, description: e.description.clone(), tasks: e.tasks.clone(), local: local.get(&e.name).cloned() }
        })
        .collect()
}

/// The dataset retriever, ready to answer queries.
pub struct DatasetRetriever {
    pub index: DatasetIndex,
    pub embeddings: Embeddings,
    pub encoder: Encoder,
    pub local: BTreeMap<String, LocalSource>,
    /// Whether the description embeddings were computed in this process.
    pub encoded_now: bool,
}

impl DatasetRetriever {
    pub fn new(index: DatasetIndex, encoder: Encoder, local: BTreeMap<String, LocalSource>, cache_dir: &Path, show_progress: bool) -> Result<Self> {
        let (embeddings, encoded_now) = load_or_encode(&index, &encoder, cache_dir, show_progress)?;
        Ok(DatasetRetriever { index, embeddings, encoder, local, encoded_now })
    }

    /// Rank by the instruction's embedding; `k = None` ranks all.
    pub fn retrieve(&self, instruction: &str, k: Option<usize>) -> Result<Vec<Candidate>> {
        let (q, _) = self.encoder.embed(&[instruction])?;
        Ok(rank(&self.index, &self.embeddings, &q, k.unwrap_or(self.index.entries.len()), &self.local))
    }
}

// ---------------------------------------------------------------------------------------------
// LLM reranking and column selection

/// `text` with its whitespace flattened, at most `max` characters (with a marker when cut).
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}…", flat.chars().take(max).collect::<String>())
    }
}

/// The first JSON object in a model's answer (code fences and prose around it are ignored).
pub fn first_json_object(text: &str) -> Option<serde_json::Value> {
    let bytes = text.as_bytes();
    for (start, _) in text.match_indices('{') {
        let mut depth = 0i32;
        let mut in_str = false;
        let mut esc = false;
        for (i, &b) in bytes.iter().enumerate().skip(start) {
            if in_str {
                match b {
                    _ if esc => esc = false,
                    b'\\' => esc = true,
                    b'"' => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Ok(v) = serde_json::from_str(&text[start..=i]) {
                            return Some(v);
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    None
}

pub fn rerank_prompt(instruction: &str, candidates: &[Candidate]) -> String {
    let mut p = format!(
        "A user wants to train a model for this task:\n\"{}\"\n\nHere are candidate datasets from the Hugging Face hub:\n",
        instruction.trim()
    );
    for c in candidates {
        p.push_str(&format!("- {}: {}\n", c.name, excerpt(&c.description, 300)));
    }
    p.push_str(
        "\nWhich one dataset is the most useful training data for the task? Answer with JSON only, \
         {\"name\": \"<dataset name exactly as listed>\"}, or {\"name\": null} if none is suitable.\n",
    );
    p
}

#[derive(Debug, Clone, Serialize)]
pub struct RerankOutcome {
    /// The majority choice (ties: the better-ranked candidate); `None` when every vote abstained.
    pub chosen: Option<String>,
    pub votes: BTreeMap<String, usize>,
    /// Votes for no dataset, for a name that is not a candidate, or unparseable.
    pub abstentions: usize,
}

/// Count votes: each answer must name a candidate exactly.
pub fn tally_votes(answers: &[String], candidates: &[Candidate]) -> RerankOutcome {
    let mut votes: BTreeMap<String, usize> = BTreeMap::new();
    let mut abstentions = 0;
    for a in answers {
        let name = first_json_object(a).and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
        match name {
            Some(n) if candidates.iter().any(|c| c.name == n) => *votes.entry(n).or_default() += 1,
            _ => abstentions += 1,
        }
    }
    let chosen = candidates.iter().filter(|c| votes.contains_key(&c.name)).max_by(|a, b| votes[&a.name].cmp(&votes[&b.name]).then(b.rank.cmp(&a.rank))).map(|c| c.name.clone());
    RerankOutcome { chosen, votes, abstentions }
}

/// Ask the teacher `votes` times (one request, `n = votes`, temperature 0.7) which candidate fits.
pub async fn llm_rerank(teacher: &dyn Teacher, instruction: &str, candidates: &[Candidate], votes: u32, seed: u64) -> Result<RerankOutcome> {
    let params = SamplingParams { temperature: 0.7, n: votes.max(1), max_tokens: Some(60), seed: Some(seed), ..Default::default() };
    let response = teacher.chat(&ChatRequest::user(rerank_prompt(instruction, candidates), params)).await.context("dataset reranking: the teacher did not answer")?;
    let answers: Vec<String> = response.choices.into_iter().map(|c| c.content).collect();
    Ok(tally_votes(&answers, candidates))
}

/// Input columns and one output column of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnChoice {
    pub input: Vec<String>,
    pub output: String,
}

/// Validate an LLM's column answer (`{"input": [...], "output": "..."}`) against the columns.
pub fn validate_column_choice(answer: &str, columns: &[String]) -> Result<ColumnChoice, String> {
    let v = first_json_object(answer).ok_or("no JSON object in the answer")?;
    let input: Vec<String> = match v.get("input") {
        Some(serde_json::Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).ok_or("`input` must be a list of column names")).collect::<Result<_, _>>()?,
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => return Err("field `input` (a list of column names) is missing".into()),
    };
    let output = match v.get("output") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        _ => return Err("field `output` (one column name) is missing".into()),
    };
    check_columns(&ColumnChoice { input, output }, columns)
}

fn check_columns(choice: &ColumnChoice, columns: &[String]) -> Result<ColumnChoice, String> {
    if choice.input.is_empty() {
        return Err("no input column".into());
    }
    for c in choice.input.iter().chain(std::iter::once(&choice.output)) {
        if !columns.contains(c) {
            return Err(format!("`{c}` is not a column (columns: {})", columns.join(", ")));
        }
    }
    if choice.input.contains(&choice.output) {
        return Err(format!("the output column `{}` is also an input column", choice.output));
    }
    Ok(choice.clone())
}

pub fn column_prompt(instruction: &str, dataset: &str, description: &str, columns: &[String], example: &BTreeMap<String, String>) -> String {
    let mut p = format!(
        "A user wants to train a model for this task:\n\"{}\"\n\nThe dataset `{dataset}` ({}) has the columns: {}.\nAn example row:\n",
        instruction.trim(),
        excerpt(description, 200),
        columns.join(", ")
    );
    for c in columns {
        p.push_str(&format!("{c}: {}\n", excerpt(example.get(c).map(String::as_str).unwrap_or(""), 200)));
    }
    p.push_str("\nWhich columns should be the model's input, and which single column is the output it must produce? Answer with JSON only: {\"input\": [\"<column>\", ...], \"output\": \"<column>\"}\n");
    p
}

/// Ask the teacher for columns (temperature 0, then sampled retries) until an answer validates.
pub async fn llm_select_columns(
    teacher: &dyn Teacher,
    instruction: &str,
    dataset: &str,
    description: &str,
    columns: &[String],
    example: &BTreeMap<String, String>,
    attempts: u32,
) -> Result<ColumnChoice> {
    let prompt = column_prompt(instruction, dataset, description, columns, example);
    let mut problems = Vec::new();
    for attempt in 0..attempts.max(1) {
        let params = SamplingParams { temperature: if attempt == 0 { 0.0 } else { 0.7 }, n: 1, max_tokens: Some(80), seed: Some(attempt as u64), ..Default::default() };
        let response = teacher.chat(&ChatRequest::user(prompt.clone(), params)).await.context("column selection: the teacher did not answer")?;
        let answer = response.choices.first().map(|c| c.content.clone()).unwrap_or_default();
        match validate_column_choice(&answer, columns) {
            Ok(choice) => return Ok(choice),
            Err(e) => problems.push(format!("attempt {}: {e}", attempt + 1)),
        }
    }
    bail!(
        "column selection for `{dataset}`: no valid answer from the teacher ({}); name the columns with --config or --interactive",
        problems.join("; ")
    )
}

// ---------------------------------------------------------------------------------------------
// The non-LLM paths: a config file or the terminal

/// `--config FILE` (TOML): the dataset and its columns, chosen by a person.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// A name of the dataset index (e.g. `squad`).
    pub dataset: String,
    /// The hub config to load when the dataset comes from the hub (e.g. `plain_text`).
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub input_columns: Vec<String>,
    #[serde(default)]
    pub output_column: Option<String>,
    #[serde(default)]
    pub max_rows_per_split: Option<usize>,
}

impl SelectionConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}\n  expected: dataset = \"squad\", config = \"plain_text\" (optional), input_columns = [\"question\", \"context\"], output_column = \"answers\"", path.display()))
    }
}

fn read_line(input: &mut dyn BufRead) -> Result<String> {
    let mut line = String::new();
    input.read_line(&mut line).context("reading the terminal")?;
    Ok(line.trim().to_string())
}

/// List the candidates and let the user pick one by number (empty answer: none).
pub fn interactive_pick(candidates: &[Candidate], input: &mut dyn BufRead, out: &mut dyn Write) -> Result<Option<usize>> {
    writeln!(out, "Datasets retrieved for your instruction (✓ = loadable here):")?;
    for (i, c) in candidates.iter().enumerate() {
        writeln!(out, "{:>3}) {} {:<40} {}", i + 1, if c.loadable() { "✓" } else { " " }, c.name, excerpt(&c.description, 100))?;
    }
    loop {
        write!(out, "Which dataset should be used? Give a number 1–{} (Enter: none, use generated data only): ", candidates.len())?;
        out.flush()?;
        let answer = read_line(input)?;
        if answer.is_empty() {
            return Ok(None);
        }
        match answer.parse::<usize>() {
            Ok(n) if (1..=candidates.len()).contains(&n) => return Ok(Some(n - 1)),
            _ => writeln!(out, "`{answer}` is not a number between 1 and {}.", candidates.len())?,
        }
    }
}

/// Show the columns and an example row; read the input columns and the output column.
pub fn interactive_columns(columns: &[String], example: &BTreeMap<String, String>, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<ColumnChoice> {
    writeln!(out, "Example row:")?;
    for c in columns {
        writeln!(out, "  {c}: {}", excerpt(example.get(c).map(String::as_str).unwrap_or(""), 120))?;
    }
    loop {
        write!(out, "Input column(s), comma-separated, from {}: ", columns.join(", "))?;
        out.flush()?;
        let inputs: Vec<String> = read_line(input)?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        write!(out, "Output column (one of {}): ", columns.join(", "))?;
        out.flush()?;
        let output = read_line(input)?;
        match check_columns(&ColumnChoice { input: inputs, output }, columns) {
            Ok(c) => return Ok(c),
            Err(e) => writeln!(out, "{e}; try again.")?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Local datasets as raw columns, textualisation and saving

/// One column of a raw split: text, or a list of texts (SQuAD's answers).
#[derive(Debug, Clone)]
pub enum RawColumn {
    Text(Vec<String>),
    List(Vec<Vec<String>>),
}

impl RawColumn {
    fn len(&self) -> usize {
        match self {
            RawColumn::Text(v) => v.len(),
            RawColumn::List(v) => v.len(),
        }
    }
    fn text(&self, i: usize) -> String {
        match self {
            RawColumn::Text(v) => v[i].clone(),
            RawColumn::List(v) => v[i].join(" | "),
        }
    }
}

/// A split of a local dataset with the source's own column names.
pub struct RawSplit {
    pub split: String,
    pub ids: Vec<String>,
    pub columns: Vec<(String, RawColumn)>,
}

impl RawSplit {
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|(n, _)| n.clone()).collect()
    }
    pub fn rows(&self) -> usize {
        self.ids.len()
    }
    pub fn example(&self, row: usize) -> BTreeMap<String, String> {
        self.columns.iter().filter(|(_, c)| row < c.len()).map(|(n, c)| (n.clone(), c.text(row))).collect()
    }
    fn column(&self, name: &str) -> Option<&RawColumn> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// Load a local dataset with its source's column names (what a hub copy of it would have).
pub fn load_raw(registry: &Registry, registry_id: &str) -> Result<(Vec<RawSplit>, Vec<ResolvedFile>)> {
    let entry = registry.dataset(registry_id)?;
    let loaded = crate::datasets::load_dataset(registry, registry_id)?;
    let df = &loaded.frame;
    let text = |c: &str| crate::datasets::string_column(df, c).map_err(|e| anyhow::anyhow!("{registry_id}: column `{c}`: {e}"));
    let refs = crate::datasets::string_list_column(df, crate::datasets::REFERENCES)?;
    let first = |r: &Vec<Vec<String>>| r.iter().map(|x| x.first().cloned().unwrap_or_default()).collect::<Vec<_>>();
    let columns = match entry.format.as_str() {
        "squad-json" => vec![
            ("title".to_string(), RawColumn::Text(text("title")?)),
            ("context".to_string(), RawColumn::Text(text("context")?)),
            ("question".to_string(), RawColumn::Text(text("question")?)),
            ("answers".to_string(), RawColumn::List(refs)),
        ],
        "conala-json" => vec![
            ("intent".to_string(), RawColumn::Text(text("intent")?)),
            ("rewritten_intent".to_string(), RawColumn::Text(text(crate::datasets::INPUT)?)),
            ("snippet".to_string(), RawColumn::Text(first(&refs))),
        ],
        "temporal-json" => vec![("input".to_string(), RawColumn::Text(text(crate::datasets::INPUT)?)), ("output".to_string(), RawColumn::Text(first(&refs)))],
        // NQ-Open's hub columns: `question` and `answer` (a list).
        "p2m-hf-disk" => vec![("question".to_string(), RawColumn::Text(text(crate::datasets::INPUT)?)), ("answer".to_string(), RawColumn::List(refs))],
        other => bail!("dataset `{registry_id}` has format `{other}`, which has no loader for retrieval ({})", LOADABLE_FORMATS.join(", ")),
    };
    let split = entry.splits.first().cloned().unwrap_or_else(|| "train".into());
    Ok((vec![RawSplit { split, ids: text(crate::datasets::ID)?, columns }], loaded.files))
}

/// The natural columns of each local format (used when nobody chose).
pub use crate::hub_datasets::default_hub_columns;

pub fn default_columns(format: &str) -> Option<ColumnChoice> {
    let c = |i: &[&str], o: &str| Some(ColumnChoice { input: i.iter().map(|s| s.to_string()).collect(), output: o.to_string() });
    match format {
        "squad-json" => c(&["question", "context"], "answers"),
        "conala-json" => c(&["rewritten_intent"], "snippet"),
        "temporal-json" => c(&["input"], "output"),
        "p2m-hf-disk" => c(&["question"], "answer"),
        _ => None,
    }
}

/// Textualise one split into the common schema: input = `col: value` lines of the input columns,
/// references = the output column (every answer for a list column), at most `max_rows` rows in
/// source order.
pub fn textualize(split: &RawSplit, choice: &ColumnChoice, max_rows: usize) -> Result<DataFrame> {
    let names = split.column_names();
    check_columns(choice, &names).map_err(|e| anyhow::anyhow!("split `{}`: {e}", split.split))?;
    let n = split.rows().min(max_rows);
    let inputs_cols: Vec<&RawColumn> = choice.input.iter().map(|c| split.column(c).expect("checked")).collect();
    let output = split.column(&choice.output).expect("checked");
    let mut inputs = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    for i in 0..n {
        let lines: Vec<String> = choice.input.iter().zip(&inputs_cols).map(|(name, col)| format!("{name}: {}", col.text(i))).collect();
        inputs.push(lines.join("\n").trim().to_string());
        refs.push(match output {
            RawColumn::Text(v) => vec![v[i].clone()],
            RawColumn::List(v) => v[i].clone(),
        });
    }
    Ok(crate::datasets::common_frame(split.ids[..n].to_vec(), inputs, &refs, None)?)
}

/// What `retrieved_dataset.json` records.
#[derive(Debug, Clone, Serialize)]
pub struct SavedDataset {
    pub dataset: String,
    pub registry_id: String,
    pub columns: ColumnChoice,
    /// How the dataset and columns were chosen.
    pub chosen_by: String,
    pub max_rows_per_split: usize,
    pub splits: BTreeMap<String, usize>,
    pub files: Vec<String>,
    pub inputs: Vec<ResolvedFile>,
    /// Where a hub dataset came from (absent for local datasets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<HubSource>,
}

/// The hub origin of a saved dataset.
#[derive(Debug, Clone, Serialize)]
pub struct HubSource {
    pub dataset: String,
    pub config: String,
    pub config_chosen_by: String,
    /// The datasets-server `/rows` URL (first split; pages add `offset` and `length`).
    pub url: String,
    /// Whether the rows came from the local cache of an earlier fetch.
    pub from_cache: bool,
    pub cache_dir: PathBuf,
}

/// Textualise every split and write `<out>/<split>.parquet` plus `retrieved_dataset.json`
/// (each file through a temporary file and a rename).
#[allow(clippy::too_many_arguments)] // each argument is one recorded fact of the saved dataset
pub fn save(out: &Path, dataset: &str, registry_id: &str, splits: &[RawSplit], choice: &ColumnChoice, max_rows: usize, chosen_by: &str, inputs: Vec<ResolvedFile>) -> Result<SavedDataset> {
    save_with_source(out, dataset, registry_id, splits, choice, max_rows, chosen_by, inputs, None)
}

/// [`save`], recording the hub origin of the rows.
#[allow(clippy::too_many_arguments)] // each argument is one recorded fact of the saved dataset
pub fn save_with_source(
    out: &Path,
    dataset: &str,
    registry_id: &str,
    splits: &[RawSplit],
    choice: &ColumnChoice,
    max_rows: usize,
    chosen_by: &str,
    inputs: Vec<ResolvedFile>,
    source: Option<HubSource>,
) -> Result<SavedDataset> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut saved = SavedDataset {
        dataset: dataset.into(),
        registry_id: registry_id.into(),
        columns: choice.clone(),
        chosen_by: chosen_by.into(),
        max_rows_per_split: max_rows,
        splits: BTreeMap::new(),
        files: Vec::new(),
        inputs,
        source,
    };
    for split in splits {
        let mut df = textualize(split, choice, max_rows)?;
        let name = format!("{}.parquet", split.split);
        let path = out.join(&name);
        let tmp = tempfile::NamedTempFile::new_in(out)?;
        ParquetWriter::new(tmp.as_file()).finish(&mut df).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tmp.persist(&path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
        saved.splits.insert(split.split.clone(), df.height());
        saved.files.push(name);
    }
    binfile::write_atomically(&out.join("retrieved_dataset.json"), serde_json::to_string_pretty(&saved)?.as_bytes())?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(rank: usize, name: &str) -> Candidate {
        Candidate { rank, name: name.into(), score: 1.0 / rank as f64, description: String::new(), tasks: vec![], local: None }
    }

    #[test]
    fn votes_count_only_candidates_and_ties_go_to_the_better_rank() {
        let c = [cand(1, "squad"), cand(2, "adversarial_qa"), cand(3, "trivia_qa")];
        let answers = ["{\"name\": \"trivia_qa\"}", "```json\n{\"name\": \"adversarial_qa\"}\n```", "{\"name\": \"made_up\"}", "no idea", "{\"name\": null}"]
            .map(String::from);
        let o = tally_votes(&answers, &c);
        assert_eq!(o.chosen.as_deref(), Some("adversarial_qa"), "1–1 tie: rank 2 beats rank 3");
        assert_eq!(o.abstentions, 3);
        let o = tally_votes(&["{\"name\":\"trivia_qa\"}".into(), "{\"name\":\"trivia_qa\"}".into(), "{\"name\":\"squad\"}".into()], &c);
        assert_eq!(o.chosen.as_deref(), Some("trivia_qa"));
        assert_eq!(tally_votes(&["nothing".into()], &c).chosen, None);
    }

    #[test]
    fn column_answers_are_validated() {
        let cols: Vec<String> = ["context", "question", "answers"].map(String::from).to_vec();
        let ok = validate_column_choice("Sure: {\"input\": [\"context\", \"question\"], \"output\": \"answers\"} done", &cols).unwrap();
        assert_eq!(ok, ColumnChoice { input: vec!["context".into(), "question".into()], output: "answers".into() });
        assert!(validate_column_choice("{\"input\": [\"passage\"], \"output\": \"answers\"}", &cols).unwrap_err().contains("`passage` is not a column"));
        assert!(validate_column_choice("{\"input\": [\"answers\"], \"output\": \"answers\"}", &cols).unwrap_err().contains("also an input"));
        assert!(validate_column_choice("{\"input\": []}", &cols).is_err());
        assert!(validate_column_choice("no json", &cols).unwrap_err().contains("no JSON"));
    }

    #[test]
    fn json_objects_are_found_inside_prose() {
        let v = first_json_object("x {bad} then {\"a\": \"}\"} tail").unwrap();
        assert_eq!(v["a"], "}");
    }

    #[test]
    fn textualise_writes_col_value_lines_and_caps_rows() {
        let split = RawSplit {
            split: "train".into(),
            ids: vec!["a".into(), "b".into(), "c".into()],
            columns: vec![
                ("question".into(), RawColumn::Text(vec!["q1".into(), "q2".into(), "q3".into()])),
                ("context".into(), RawColumn::Text(vec!["c1".into(), "c2".into(), "c3".into()])),
                ("answers".into(), RawColumn::List(vec![vec!["x".into(), "y".into()], vec!["z".into()], vec![]])),
            ],
        };
        let choice = ColumnChoice { input: vec!["question".into(), "context".into()], output: "answers".into() };
        let df = textualize(&split, &choice, 2).unwrap();
        assert_eq!(df.height(), 2);
        assert_eq!(crate::datasets::string_column(&df, "input").unwrap(), ["question: q1\ncontext: c1", "question: q2\ncontext: c2"]);
        assert_eq!(crate::datasets::string_list_column(&df, "references").unwrap(), [vec!["x".to_string(), "y".to_string()], vec!["z".to_string()]]);
    }

    #[test]
    fn interactive_pick_retries_until_a_valid_number() {
        let c = [cand(1, "squad"), cand(2, "trivia_qa")];
        let mut input: &[u8] = b"7\nabc\n2\n";
        let mut out = Vec::new();
        assert_eq!(interactive_pick(&c, &mut input, &mut out).unwrap(), Some(1));
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("trivia_qa") && shown.contains("`7` is not a number between 1 and 2"), "{shown}");
        let mut input: &[u8] = b"\n";
        assert_eq!(interactive_pick(&c, &mut input, &mut Vec::new()).unwrap(), None);
        let cols: Vec<String> = ["q", "a"].map(String::from).to_vec();
        let mut input: &[u8] = b"q\nq\nq\na\n";
        let choice = interactive_columns(&cols, &BTreeMap::new(), &mut input, &mut Vec::new()).unwrap();
        assert_eq!(choice, ColumnChoice { input: vec!["q".into()], output: "a".into() });
    }
}

//! The index of dataset descriptions, its encoders and exact dense search over it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::textualise::LOADABLE_FORMATS;
use crate::config::Paths;
use crate::data::registry::{Registry, ResolvedFile};
use crate::model_retriever::IndexError;
use crate::models::bert::BertEncoder;
use crate::retrieval::binfile::{Reader, Writer};

/// Registry path of the dataset index.
pub const DATASET_INDEX_FILE: &str = "prompt2model/dataset_index.json";
/// The offline encoder of descriptions and queries (model registry id).
pub const DEFAULT_ENCODER: &str = "all-MiniLM-L6-v2";
/// The paper's encoder (DataFinder), fetched from the hub when online (model registry id).
pub const DATAFINDER_ENCODER: &str = "datafinder-huggingface-prompt-queries";
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
        let bad = |detail: String, fix: &str| IndexError::Empty {
            path: path.to_path_buf(),
            detail,
            fix: fix.to_string(),
        };
        if !path.is_file() {
            return Err(IndexError::Missing {
                what: "dataset index",
                path: path.to_path_buf(),
                fix: "run `p2m data fetch hf-dataset-index`, set P2M_MIRROR to the data mirror, or pass --index with a dataset_index.json".into(),
            });
        }
        let bytes =
            fs::read(path).map_err(|e| bad(e.to_string(), "check the file's permissions"))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            bad(
                format!("not valid JSON at line {}, column {}: {e}", e.line(), e.column()),
                "the file is truncated or corrupt: re-fetch it (`p2m data fetch hf-dataset-index`)",
            )
        })?;
        let obj = value.as_object().ok_or_else(|| {
            bad(
                "the top level is not a JSON object of name → entry".into(),
                "use the reference's dataset_index.json",
            )
        })?;
        let mut entries = Vec::with_capacity(obj.len());
        for (name, entry) in obj {
            let description =
                entry.get("description").and_then(|d| d.as_str()).ok_or_else(|| {
                    bad(
                        format!("entry `{name}`: field `description` is missing or not a string"),
                        "repair or remove that entry",
                    )
                })?;
            let meta: &[serde_json::Value] = entry
                .get("evaluation_metadata")
                .and_then(|m| m.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let tasks = meta
                .iter()
                .filter_map(|m| m.get("task").and_then(|t| t.as_str()).map(str::to_string))
                .collect();
            let eval_config = meta
                .first()
                .and_then(|m| m.get("config"))
                .and_then(|c| c.as_str())
                .map(str::to_string);
            let col_mappings = meta
                .iter()
                .filter_map(|m| m.get("col_mapping").filter(|c| c.is_object()).cloned())
                .collect();
            entries.push(DatasetInfo {
                name: name.clone(),
                description: description.to_string(),
                tasks,
                eval_config,
                col_mappings,
            });
        }
        if entries.is_empty() {
            return Err(bad(
                "the index has no datasets".into(),
                "use the full index (`prompt2model/dataset_index.json` from the data mirror)",
            ));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let sha256 = match sha256 {
            Some(s) => s,
            None => crate::util::fs::sha256_file(path)
                .map_err(|e| bad(e.to_string(), "check the file"))?,
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
    pub fn from_registry(
        models: &crate::models::registry::ModelRegistry,
        id: &str,
    ) -> Result<Self> {
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
    pub fn from_hub(models: &crate::models::registry::ModelRegistry, id: &str) -> Result<Self> {
        let entry = models.model(id)?;
        if entry.family != crate::models::registry::Family::Bert {
            bail!("model `{id}` is of family {:?}, not a BERT-family encoder", entry.family);
        }
        let hf = entry.hf.as_ref().with_context(|| {
            format!(
                "data/models.toml: model `{id}` names no hub repository (hf = {{ repo = ... }})"
            )
        })?;
        let dir = models.model_dir(id);
        // model.safetensors is written last, so its presence means the folder is complete.
        let complete = dir.join("config.json").is_file()
            && dir.join("model.safetensors").is_file()
            && (dir.join("tokenizer.json").is_file() || dir.join("vocab.txt").is_file());
        if !complete {
            if models.paths.offline {
                bail!("`{id}` is not in the cache ({}) and P2M_OFFLINE=1 forbids fetching it from the hub ({}); fix: run once online, or use --encoder minilm", dir.display(), hf.repo);
            }
            fetch_hub_encoder(&models.paths.cache, &hf.repo, hf.revision.as_deref(), &dir)
                .with_context(|| format!("fetching `{id}` from the hub ({})", hf.repo))?;
        }
        let weights_sha256 = crate::util::fs::sha256_file(&dir.join("model.safetensors"))
            .context("hashing the encoder weights")?;
        let mut encoder = BertEncoder::from_dir(&dir, tch::Device::Cpu)
            .with_context(|| format!("loading `{id}` from {}", dir.display()))?;
        encoder.apply_entry(entry)?;
        Ok(Encoder { encoder, id: id.to_string(), weights_sha256 })
    }

    /// Embeddings of texts as rows of a flat `f32` vector.
    pub fn embed(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let t = self.encoder.embed_sentences(texts)?;
        let dim = t.size().get(1).copied().unwrap_or(0) as usize;
        let flat: Vec<f32> = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1))
            .context("reading embeddings")?;
        Ok((flat, dim))
    }
}

/// Fetch a BERT encoder's files with hf-hub (honours `HF_ENDPOINT`, `HF_TOKEN`) into `dir`:
/// config, tokenizer (`tokenizer.json`, else `vocab.txt`), optional tokenizer settings, and the
/// weights (`model.safetensors`, else `pytorch_model.bin` converted to it). Each file goes through
/// a temporary file and a rename; the weights come last.
fn fetch_hub_encoder(cache: &Path, repo: &str, revision: Option<&str>, dir: &Path) -> Result<()> {
    let (files, weights) = crate::util::runtime::block_on(async {
        let api =
            crate::download::hf_hub_api(&cache.join("hf-hub"), false).context("hf-hub client")?;
        let r = api.repo(match revision {
            Some(rev) => hf_hub::Repo::with_revision(
                repo.to_string(),
                hf_hub::RepoType::Model,
                rev.to_string(),
            ),
            None => hf_hub::Repo::model(repo.to_string()),
        });
        let mut files = vec![(
            "config.json",
            r.get("config.json").await.with_context(|| format!("{repo}/config.json"))?,
        )];
        match r.get("tokenizer.json").await {
            Ok(p) => files.push(("tokenizer.json", p)),
            Err(first) => files.push((
                "vocab.txt",
                r.get("vocab.txt").await.with_context(|| {
                    format!("{repo}: neither tokenizer.json ({first}) nor vocab.txt")
                })?,
            )),
        }
        // Optional: settings the tokenizer falls back to defaults without.
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            if let Ok(p) = r.get(name).await {
                files.push((name, p));
            }
        }
        let weights = match r.get("model.safetensors").await {
            Ok(p) => ("model.safetensors", p),
            Err(first) => (
                "pytorch_model.bin",
                r.get("pytorch_model.bin").await.with_context(|| {
                    format!("{repo}: neither model.safetensors ({first}) nor pytorch_model.bin")
                })?,
            ),
        };
        Ok::<_, anyhow::Error>((files, weights))
    })??;
    let copy = |name: &str, from: &Path| -> Result<()> {
        crate::util::fs::copy_atomic(from, &dir.join(name))
            .with_context(|| format!("copying {} into {}", from.display(), dir.display()))
    };
    for (name, path) in &files {
        copy(name, path)?;
    }
    match weights {
        ("model.safetensors", p) => copy("model.safetensors", &p)?,
        (_, p) => {
            crate::models::torch_pickle::convert_to_safetensors(&p, &dir.join("model.safetensors"))
                .with_context(|| format!("converting {repo}/pytorch_model.bin to safetensors"))?
        }
    }
    Ok(())
}

/// `--encoder`: `minilm`, `datafinder` or a registered BERT-family model id; by default DataFinder
/// online (the paper's encoder) and MiniLM offline. When a hub encoder cannot be had, MiniLM is
/// used instead: the returned note says so in one plain line, and the error itself is printed on
/// stderr.
pub fn choose_encoder(
    models: &crate::models::registry::ModelRegistry,
    requested: Option<&str>,
    offline: bool,
) -> Result<(Encoder, Vec<String>)> {
    let id = match requested.unwrap_or(if offline { "minilm" } else { "datafinder" }) {
        "minilm" => DEFAULT_ENCODER,
        "datafinder" => DATAFINDER_ENCODER,
        other => other,
    };
    let entry = models.model(id).map_err(|e| {
        anyhow::anyhow!(
            "--encoder {id}: {e}; use minilm, datafinder or a BERT-family id of data/models.toml"
        )
    })?;
    if entry.wheel().is_some() {
        return Ok((Encoder::from_registry(models, id)?, vec![]));
    }
    match Encoder::from_hub(models, id) {
        Ok(e) => Ok((e, vec![])),
        Err(e) => {
            // The note is one plain line (it goes into the model card); the error chain, with its
            // URLs and network errors, goes to the log only.
            eprintln!(
                "warning: encoder `{id}` unavailable ({e:#}); using {DEFAULT_ENCODER} instead"
            );
            let why = if offline { "offline" } else { "could not be fetched from the hub" };
            let note = format!(
                "{why}: the dataset retriever's encoder `{id}` was unavailable, {DEFAULT_ENCODER} was used"
            );
            Ok((Encoder::from_registry(models, DEFAULT_ENCODER)?, vec![note]))
        }
    }
}

/// Encode every description, or read the cached matrix when it was made from the same index and
/// encoder weights. Returns whether it was (re)computed.
pub fn load_or_encode(
    index: &DatasetIndex,
    encoder: &Encoder,
    cache_dir: &Path,
    show_progress: bool,
) -> Result<(Embeddings, bool)> {
    let path = cache_dir.join("retrieval").join(format!("dataset_embeddings-{}.bin", encoder.id));
    if let Ok(bytes) = fs::read(&path) {
        match read_embeddings(&bytes, &path.display().to_string(), index, encoder) {
            Ok(Some(e)) => return Ok((e, false)),
            Ok(None) => {
                tracing::info!(path = %path.display(), "description embeddings are for another index or encoder: re-encoding")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "description embeddings unreadable ({e:#}): re-encoding")
            }
        }
    }
    let n = index.entries.len();
    let pb = crate::util::progress::Progress::new(
        show_progress,
        "encoding dataset descriptions",
        n as u64,
        "descriptions",
    );
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
    crate::util::fs::write_atomic(&path, &w.buf)
        .with_context(|| format!("writing {}", &path.display()))?;
    Ok((Embeddings { dim, matrix }, true))
}

fn read_embeddings(
    bytes: &[u8],
    what: &str,
    index: &DatasetIndex,
    encoder: &Encoder,
) -> Result<Option<Embeddings>> {
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
    anyhow::ensure!(
        n == index.entries.len() && matrix.len() == n * dim,
        "{what}: {n} × {dim} header but {} values",
        matrix.len()
    );
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
                LocalSource {
                    registry_id: d.id.clone(),
                    format: d.format.clone(),
                    loadable: LOADABLE_FORMATS.contains(&d.format.as_str()),
                },
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
pub fn rank(
    index: &DatasetIndex,
    emb: &Embeddings,
    query: &[f32],
    k: usize,
    local: &BTreeMap<String, LocalSource>,
) -> Vec<Candidate> {
    crate::retrieval::dense::top_k(&emb.matrix, emb.dim, query, k)
        .into_iter()
        .enumerate()
        .map(|(i, (row, score))| {
            let e = &index.entries[row];
            Candidate {
                rank: i + 1,
                name: e.name.clone(),
                score,
                description: e.description.clone(),
                tasks: e.tasks.clone(),
                local: local.get(&e.name).cloned(),
            }
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
    pub fn new(
        index: DatasetIndex,
        encoder: Encoder,
        local: BTreeMap<String, LocalSource>,
        cache_dir: &Path,
        show_progress: bool,
    ) -> Result<Self> {
        let (embeddings, encoded_now) = load_or_encode(&index, &encoder, cache_dir, show_progress)?;
        Ok(DatasetRetriever { index, embeddings, encoder, local, encoded_now })
    }

    /// Rank by the instruction's embedding; `k = None` ranks all.
    pub fn retrieve(&self, instruction: &str, k: Option<usize>) -> Result<Vec<Candidate>> {
        let (q, _) = self.encoder.embed(&[instruction])?;
        Ok(rank(
            &self.index,
            &self.embeddings,
            &q,
            k.unwrap_or(self.index.entries.len()),
            &self.local,
        ))
    }
}

/// The dataset retriever over the registry's index (or the one at `index_path`) with the offline
/// encoder (MiniLM); also returns the registry it was opened from.
pub fn open_dataset_retriever(
    paths: &Paths,
    index_path: Option<&Path>,
    show_progress: bool,
) -> Result<(DatasetRetriever, Registry)> {
    let models = crate::models::registry::ModelRegistry::load(paths.clone())?;
    let encoder = Encoder::from_registry(&models, DEFAULT_ENCODER)?;
    open_dataset_retriever_with(paths, index_path, encoder, show_progress)
}

/// The dataset retriever with a given encoder (MiniLM, DataFinder, ...).
pub fn open_dataset_retriever_with(
    paths: &Paths,
    index_path: Option<&Path>,
    encoder: Encoder,
    show_progress: bool,
) -> Result<(DatasetRetriever, Registry)> {
    let registry = Registry::load(paths.clone())?;
    let index = match index_path {
        Some(p) => DatasetIndex::load(p, None)?,
        None => DatasetIndex::from_registry(&registry)?.0,
    };
    let local = local_sources(&registry);
    Ok((DatasetRetriever::new(index, encoder, local, &paths.cache, show_progress)?, registry))
}

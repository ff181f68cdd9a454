//! The dataset registry and file resolution.
//!
//! `data/datasets.toml` says what each dataset is; `data/files.tsv` lists every upstream file with
//! its size, sha256 and URL. A file is looked for, in order, in the cache, in the local mirror, at
//! its upstream URL and finally on the Hugging Face hub; whatever the origin, its bytes must hash to
//! the registered sha256 or the file is refused. Downloads go to a temporary file in the cache and are
//! renamed into place only once verified, so a killed run never leaves a half-written file behind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::util::fs::FileError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "dataset `{dataset}`: file `{file}` was not found.\n  looked in:\n{}\n  fix: {hint}",
        looked_in.iter().map(|p| format!("    - {p}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound { dataset: String, file: String, looked_in: Vec<String>, hint: String },
    #[error(
        "checksum mismatch for {path} (dataset `{dataset}`): expected sha256 {expected}, found {actual}. \
         The file was refused; replace it with the registered upstream file or delete it to re-fetch"
    )]
    ChecksumMismatch { dataset: String, path: PathBuf, expected: String, actual: String },
    #[error("{path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("registry {path}: {detail}")]
    Registry { path: PathBuf, detail: String },
    #[error("unknown dataset `{0}`; `p2m data list` shows the registry")]
    UnknownDataset(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("download of {url} failed: {detail}")]
    Download { url: String, detail: String },
}

pub type DataResult<T> = std::result::Result<T, DataError>;

/// One row of `data/files.tsv`.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub url: Option<String>,
    pub source: String,
}

/// A Hugging Face hub repository (a dataset's or a model's), optionally pinned to a revision.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HfSource {
    pub repo: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// One `[[dataset]]` of `data/datasets.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    pub id: String,
    pub title: String,
    pub format: String,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub file_prefix: Option<String>,
    #[serde(default)]
    pub splits: Vec<String>,
    #[serde(default)]
    pub rows: Option<u64>,
    pub license: String,
    pub citation: String,
    pub homepage: String,
    #[serde(default)]
    pub hf: Option<HfSource>,
    #[serde(default)]
    pub task: Option<String>,
    /// Names of this dataset in the Hugging Face dataset index of the dataset retriever
    /// (`prompt2model/dataset_index.json`), so a retrieved dataset can be loaded from here.
    #[serde(default)]
    pub hf_index_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DatasetsToml {
    dataset: Vec<DatasetEntry>,
}

/// Where a resolved file came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Cache,
    Mirror,
    Download { url: String },
    Hub { repo: String },
}

/// A verified local copy of a registered file.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedFile {
    pub dataset: String,
    pub path: String,
    pub local: PathBuf,
    pub sha256: String,
    pub origin: Origin,
}

pub struct Registry {
    pub paths: Paths,
    datasets: Vec<DatasetEntry>,
    files: BTreeMap<String, FileEntry>,
    /// Files already hashed in this process (local path → sha256), so a folder read twice is
    /// hashed once.
    verified: Mutex<BTreeMap<PathBuf, String>>,
}

impl Registry {
    /// Read `data/datasets.toml` and `data/files.tsv` and check that they agree.
    pub fn load(paths: Paths) -> DataResult<Self> {
        let toml_path = paths.data.join("datasets.toml");
        let text = fs::read_to_string(&toml_path).map_err(FileError::at(&toml_path))?;
        let parsed: DatasetsToml = toml::from_str(&text)
            .map_err(|e| DataError::Registry { path: toml_path.clone(), detail: e.to_string() })?;
        let tsv_path = paths.data.join("files.tsv");
        let files = read_files_tsv(&tsv_path)?;
        let mut seen = std::collections::BTreeSet::new();
        for d in &parsed.dataset {
            if !seen.insert(d.id.clone()) {
                return Err(DataError::Registry {
                    path: toml_path,
                    detail: format!("dataset id `{}` appears twice", d.id),
                });
            }
            for f in &d.files {
                if !files.contains_key(f) {
                    return Err(DataError::Registry {
                        path: toml_path,
                        detail: format!(
                            "dataset `{}` names file `{f}`, which has no row in {} (add its bytes, sha256 and URL there)",
                            d.id,
                            tsv_path.display()
                        ),
                    });
                }
            }
        }
        Ok(Registry {
            paths,
            datasets: parsed.dataset,
            files,
            verified: Mutex::new(BTreeMap::new()),
        })
    }

    /// Load with the locations from the environment (see [`crate::config`]).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self::load(Paths::from_env()?)?)
    }

    pub fn datasets(&self) -> &[DatasetEntry] {
        &self.datasets
    }

    pub fn dataset(&self, id: &str) -> DataResult<&DatasetEntry> {
        self.datasets
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| DataError::UnknownDataset(id.to_string()))
    }

    pub fn file_entry(&self, path: &str) -> Option<&FileEntry> {
        self.files.get(path)
    }

    /// All registered files of a dataset (its `files`, or every file under its `file_prefix`).
    pub fn dataset_files(&self, id: &str) -> DataResult<Vec<&FileEntry>> {
        let d = self.dataset(id)?;
        let mut out: Vec<&FileEntry> = d.files.iter().filter_map(|f| self.files.get(f)).collect();
        if let Some(prefix) = &d.file_prefix {
            out.extend(self.files.values().filter(|f| f.path.starts_with(prefix.as_str())));
        }
        Ok(out)
    }

    /// Registered files whose path starts with `prefix` (e.g. a `save_to_disk` folder).
    pub fn files_under(&self, prefix: &str) -> Vec<&FileEntry> {
        self.files.values().filter(|f| f.path.starts_with(prefix)).collect()
    }

    /// The dataset a file belongs to (for error messages and manifests).
    pub fn owner_of(&self, path: &str) -> String {
        self.datasets
            .iter()
            .find(|d| {
                d.files.iter().any(|f| f == path)
                    || d.file_prefix.as_deref().is_some_and(|p| path.starts_with(p))
            })
            .map(|d| d.id.clone())
            .unwrap_or_else(|| "(unregistered)".to_string())
    }

    /// Resolve one registered file to a verified local copy.
    pub fn resolve_file(&self, path: &str) -> DataResult<ResolvedFile> {
        let dataset = self.owner_of(path);
        let entry = self.files.get(path).ok_or_else(|| DataError::NotFound {
            dataset: dataset.clone(),
            file: path.to_string(),
            looked_in: vec![format!("{} (no such row)", self.paths.data.join("files.tsv").display())],
            hint: "register the file in data/files.tsv (scripts/registry-from-manifest.sh regenerates it from the mirror)".into(),
        })?;
        let mut looked_in = Vec::new();

        let cached = self.cache_path(path);
        looked_in.push(format!("cache: {}", cached.display()));
        if cached.is_file() {
            return self.verify(&dataset, entry, &cached, Origin::Cache);
        }
        if let Some(mirror) = &self.paths.mirror {
            let mirrored = mirror.join(path);
            looked_in.push(format!("mirror: {}", mirrored.display()));
            if mirrored.is_file() {
                return self.verify(&dataset, entry, &mirrored, Origin::Mirror);
            }
        } else {
            looked_in
                .push("mirror: none configured (P2M_MIRROR unset and no ../shared/mirror)".into());
        }
        if let Some(url) = &entry.url {
            if self.paths.offline {
                looked_in.push(format!("upstream: {url} (skipped: P2M_OFFLINE=1)"));
            } else {
                looked_in.push(format!("upstream: {url}"));
                match download_verified(url, &cached, entry) {
                    Ok(()) => {
                        return self.verify(
                            &dataset,
                            entry,
                            &cached,
                            Origin::Download { url: url.clone() },
                        )
                    }
                    Err(e @ DataError::ChecksumMismatch { .. }) => return Err(e),
                    Err(e) => looked_in.push(format!("  ↳ {e}")),
                }
            }
        } else {
            looked_in
                .push("upstream: no URL registered for this file (mirror-only artefact)".into());
        }
        if let Some(hf) = self.dataset(&dataset).ok().and_then(|d| d.hf.clone()) {
            if !self.paths.offline {
                looked_in.push(format!("hub: {} (hf-hub, file {path})", hf.repo));
                match fetch_from_hub(&hf, path, &cached, &self.paths.cache.join("hf-hub")) {
                    Ok(()) => {
                        return self.verify(
                            &dataset,
                            entry,
                            &cached,
                            Origin::Hub { repo: hf.repo.clone() },
                        )
                    }
                    Err(e) => looked_in.push(format!("  ↳ {e}")),
                }
            }
        }
        Err(DataError::NotFound {
            dataset,
            file: path.to_string(),
            looked_in,
            hint: format!(
                "set P2M_MIRROR to a folder holding `{path}` (the shared data mirror), or put the file at {} \
                 (sha256 {}), or allow network access",
                cached.display(),
                entry.sha256
            ),
        })
    }

    /// Resolve every registered file under `dir` (a Hugging Face `save_to_disk` folder) and return a
    /// local folder that holds all of them. The mirror's folder is used when it has every file;
    /// otherwise the files are gathered in the cache.
    pub fn resolve_dir(&self, dir: &str) -> DataResult<(PathBuf, Vec<ResolvedFile>)> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let entries = self.files_under(&prefix);
        if entries.is_empty() {
            return Err(DataError::NotFound {
                dataset: self.owner_of(&prefix),
                file: prefix.clone(),
                looked_in: vec![format!(
                    "{} (no registered file under this folder)",
                    self.paths.data.join("files.tsv").display()
                )],
                hint: "check the folder name; `p2m data list` shows the registry".into(),
            });
        }
        let mut resolved = Vec::with_capacity(entries.len());
        for e in &entries {
            resolved.push(self.resolve_file(&e.path)?);
        }
        let all_in_mirror = resolved.iter().all(|r| r.origin == Origin::Mirror);
        if all_in_mirror {
            let mirror = self.paths.mirror.as_ref().expect("mirror origin implies a mirror");
            return Ok((mirror.join(dir), resolved));
        }
        // Mixed origins: make the cache hold the whole folder.
        for r in resolved.iter_mut() {
            let target = self.cache_path(&r.path);
            if r.local != target {
                crate::util::fs::copy_atomic(&r.local, &target).map_err(FileError::at(&target))?;
                r.local = target;
            }
        }
        Ok((self.paths.cache.join("files").join(dir), resolved))
    }

    fn cache_path(&self, path: &str) -> PathBuf {
        self.paths.cache.join("files").join(path)
    }

    fn verify(
        &self,
        dataset: &str,
        entry: &FileEntry,
        local: &Path,
        origin: Origin,
    ) -> DataResult<ResolvedFile> {
        let known = self.verified.lock().unwrap().get(local).cloned();
        let actual = match known {
            Some(sha) => sha,
            None => crate::util::fs::sha256_file(local).map_err(FileError::at(local))?,
        };
        if actual != entry.sha256 {
            return Err(DataError::ChecksumMismatch {
                dataset: dataset.to_string(),
                path: local.to_path_buf(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
        self.verified.lock().unwrap().insert(local.to_path_buf(), actual.clone());
        Ok(ResolvedFile {
            dataset: dataset.to_string(),
            path: entry.path.clone(),
            local: local.to_path_buf(),
            sha256: actual,
            origin,
        })
    }
}

fn read_files_tsv(path: &Path) -> DataResult<BTreeMap<String, FileEntry>> {
    let text = fs::read_to_string(path).map_err(FileError::at(path))?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l).unwrap_or_default();
    if header != "path\tbytes\tsha256\turl\tsource" {
        return Err(DataError::Registry {
            path: path.to_path_buf(),
            detail: "line 1: expected the header `path<TAB>bytes<TAB>sha256<TAB>url<TAB>source`"
                .into(),
        });
    }
    let mut files = BTreeMap::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let bad = |detail: String| DataError::Registry {
            path: path.to_path_buf(),
            detail: format!("line {}: {detail}", i + 1),
        };
        if cols.len() != 5 {
            return Err(bad(format!("expected 5 tab-separated fields, found {}", cols.len())));
        }
        let bytes = cols[1]
            .parse()
            .map_err(|_| bad(format!("field `bytes` is not a number: `{}`", cols[1])))?;
        if cols[2].len() != 64 || !cols[2].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("field `sha256` is not 64 hex digits: `{}`", cols[2])));
        }
        files.insert(
            cols[0].to_string(),
            FileEntry {
                path: cols[0].to_string(),
                bytes,
                sha256: cols[2].to_ascii_lowercase(),
                url: (!cols[3].is_empty()).then(|| cols[3].to_string()),
                source: cols[4].to_string(),
            },
        );
    }
    Ok(files)
}

/// Download `url` into `target` (size and sha256 verified before the final rename).
pub fn download_verified(url: &str, target: &Path, entry: &FileEntry) -> DataResult<()> {
    use crate::download::{download_to_temp_blocking, DownloadError, Expected};
    let parent = target.parent().expect("cache paths have a parent");
    let expected = Expected { bytes: Some(entry.bytes), sha256: &entry.sha256, label: &entry.path };
    let tmp = download_to_temp_blocking(url, parent, &expected).map_err(|e| match e {
        DownloadError::Checksum { url, expected, actual } => DataError::ChecksumMismatch {
            dataset: entry.path.clone(),
            path: PathBuf::from(url),
            expected,
            actual,
        },
        DownloadError::Http { url, detail } => DataError::Download { url, detail },
        DownloadError::Unresolved(u) => DataError::Download {
            url: u.url,
            detail: format!("the host name does not resolve (not retried): {}", u.detail),
        },
        DownloadError::Io { path, source } => FileError { path, source }.into(),
    })?;
    tmp.persist(target).map_err(|e| FileError { path: target.to_path_buf(), source: e.error })?;
    Ok(())
}

/// Fetch a file from a Hugging Face dataset repository with hf-hub (honours `HF_ENDPOINT` and
/// `HF_TOKEN`), then place it at `target`; the caller verifies its hash.
fn fetch_from_hub(hf: &HfSource, path: &str, target: &Path, hub_cache: &Path) -> DataResult<()> {
    let err = |detail: String| DataError::Download {
        url: format!("hf://datasets/{}/{path}", hf.repo),
        detail,
    };
    let fetched = crate::util::runtime::block_on(async {
        let api = crate::download::hf_hub_api(hub_cache, false).map_err(|e| err(e.to_string()))?;
        let repo = match &hf.revision {
            Some(rev) => {
                hf_hub::Repo::with_revision(hf.repo.clone(), hf_hub::RepoType::Dataset, rev.clone())
            }
            None => hf_hub::Repo::new(hf.repo.clone(), hf_hub::RepoType::Dataset),
        };
        api.repo(repo).get(path).await.map_err(|e| err(e.to_string()))
    })
    .map_err(|e| err(e.to_string()))??;
    Ok(crate::util::fs::copy_atomic(&fetched, target).map_err(FileError::at(target))?)
}

//! Publishing a run to the Hugging Face hub: the packaged model folder (`runs/<name>/model/`, its
//! `README.md` the hub card with YAML front matter) to a model repository and, when asked, the
//! generated data (`runs/<name>/dataset/`: parquet splits and their card) to a dataset repository.
//!
//! hf-hub only downloads, so this speaks the hub's HTTP API itself, as the hub's own Python client
//! (`huggingface_hub` 2.5: `HfApi.create_repo`, `_commit_api.py`, `lfs.py`) does:
//!
//! 1. `POST {endpoint}/api/repos/create` `{"name", "organization", "type"[, "visibility"]}`; a 409
//!    is a repository that exists already, which is fine.
//! 2. `POST {endpoint}/api/{models|datasets}/{repo}/preupload/main` with each file's path, size
//!    and first 512 bytes: the hub says which files go through Git LFS (and which its
//!    `.gitignore` drops). A hub without the endpoint (404) leaves the local rule: LFS for files
//!    over 10 MiB or with a NUL byte in their first 512 bytes (binary).
//! 3. Git LFS batch API for the LFS files (`{endpoint}/[datasets/]{repo}.git/info/lfs/objects/batch`,
//!    `application/vnd.git-lfs+json`, basic transfer): an object the hub holds already comes back
//!    without actions and is not sent again, which is what makes an interrupted publish
//!    resumable; the others are PUT to the returned `href` with the returned headers only (the
//!    storage host never sees the hub token), then confirmed on the `verify` action when given.
//! 4. One commit, `POST {endpoint}/api/{models|datasets}/{repo}/commit/main` as NDJSON: a header
//!    line, then a `file` line (base64 content) per regular file and an `lfsFile` line
//!    (path, sha256, size) per LFS file.
//!
//! Every request goes through the project's retry policy ([`crate::util::http`]). The token lives
//! in a [`HubToken`], whose `Debug` does not show it, and every error detail a server sends back is
//! scrubbed of it before it reaches a message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::pipeline::package::MANIFEST_FILE;
use crate::util::http::{error_chain, status_is_retryable, Failed, Failure, RetryPolicy, Retrying};
use crate::util::text::flat_excerpt;

/// Files larger than this go through Git LFS when the hub does not say (the hub's own threshold).
pub const LFS_THRESHOLD: u64 = 10 * 1024 * 1024;

/// The hub used when no endpoint is given.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A hub access token. Never printed: `Debug` shows `HubToken(<redacted>)` and there is no
/// `Display`.
#[derive(Clone)]
pub struct HubToken(String);

impl std::fmt::Debug for HubToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubToken(<redacted>)")
    }
}

impl HubToken {
    /// The token in environment variable `var` (the name, never the value, is in the error).
    pub fn from_env(var: &str) -> Result<HubToken> {
        match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(HubToken(t.trim().to_string())),
            _ => bail!(
                "no hub token: the environment variable {var} is not set (or empty); fix: create a token with write access at https://huggingface.co/settings/tokens and export {var}=<token> (or name another variable with --token-env)"
            ),
        }
    }

    /// `text` with every occurrence of the token replaced (server answers may echo requests).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.0, "<token>")
        }
    }
}

/// Model or dataset repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    /// The `type` of `api/repos/create`.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        }
    }

    /// The path segment of the API (`api/models/...`).
    fn api_segment(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }

    /// What precedes the repository id in its web and git URLs.
    fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
        }
    }
}

/// `owner/name`, checked against the hub's rules for repository ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoId {
    pub owner: String,
    pub name: String,
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

impl std::str::FromStr for RepoId {
    type Err = anyhow::Error;

    /// The rules of `huggingface_hub`'s `validate_repo_id`: ASCII letters, digits, `-`, `_`,
    /// `.`; 1–96 characters per part, not starting or ending with `-` or `.`; no `--` or `..`; not
    /// ending in `.git`. An owner is required here (a repository is created under someone).
    fn from_str(s: &str) -> Result<RepoId> {
        let fix = "fix: give the repository as OWNER/NAME (your user name or organisation, then a name of letters, digits, `-`, `_`, `.`)";
        let Some((owner, name)) = s.split_once('/') else {
            bail!("repository `{s}` has no owner; {fix}");
        };
        let part_ok = |p: &str| {
            (1..=96).contains(&p.len())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        if !part_ok(owner) || !part_ok(name) || s.contains("--") || s.contains("..") {
            bail!("repository `{s}` is not a valid hub id; {fix}");
        }
        if s.ends_with(".git") {
            bail!("repository `{s}` ends in `.git`; {fix}");
        }
        Ok(RepoId { owner: owner.into(), name: name.into() })
    }
}

/// One file to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadFile {
    /// Its path in the repository (`/`-separated).
    pub path_in_repo: String,
    pub local: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// Through Git LFS (the local rule until the hub's preupload answer says otherwise).
    pub lfs: bool,
    /// Its first 512 bytes (what the hub's preupload endpoint decides on).
    sample: Vec<u8>,
}

/// What one repository gets.
#[derive(Clone, Debug)]
pub struct UploadPlan {
    pub repo: RepoId,
    pub repo_type: RepoType,
    pub folder: PathBuf,
    pub files: Vec<UploadFile>,
}

impl UploadPlan {
    /// Every file of `folder`, with the local LFS rule (see the module docs).
    pub fn of_folder(folder: &Path, repo: RepoId, repo_type: RepoType) -> Result<UploadPlan> {
        let mut files = Vec::new();
        let listed = crate::util::fs::list_files(folder)
            .with_context(|| format!("listing {}", folder.display()))?;
        for local in listed {
            let rel = local.strip_prefix(folder).expect("listed under the folder");
            let path_in_repo =
                rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
            let path_in_repo = path_in_repo.join("/");
            let bytes =
                std::fs::read(&local).with_context(|| format!("reading {}", local.display()))?;
            let sample = bytes[..bytes.len().min(512)].to_vec();
            let size = bytes.len() as u64;
            let lfs = size > 0 && (size > LFS_THRESHOLD || sample.contains(&0));
            let sha256 = crate::util::fs::sha256_hex(&bytes);
            files.push(UploadFile { path_in_repo, local, size, sha256, lfs, sample });
        }
        if files.is_empty() {
            bail!("{} has no files to upload", folder.display());
        }
        Ok(UploadPlan { repo, repo_type, folder: folder.to_path_buf(), files })
    }

    /// The repository's page.
    pub fn url(&self, endpoint: &str) -> String {
        format!("{}/{}{}", endpoint.trim_end_matches('/'), self.repo_type.url_prefix(), self.repo)
    }

    /// One line per file: path, size, LFS or not.
    pub fn listing(&self) -> String {
        let mut s = format!(
            "{} repository {} ← {}\n",
            self.repo_type.as_str(),
            self.repo,
            self.folder.display()
        );
        for f in &self.files {
            s.push_str(&format!(
                "  {:<32} {:>12} bytes  {}  sha256 {}\n",
                f.path_in_repo,
                f.size,
                if f.lfs { "LFS    " } else { "regular" },
                &f.sha256[..16]
            ));
        }
        s
    }
}

/// The model repository's plan for a run folder (`runs/<name>`) or its `model/` folder: refuses
/// a folder that is not a packaged model or whose `README.md` lacks the hub's front matter.
pub fn plan_model(run_or_model: &Path, repo: RepoId) -> Result<UploadPlan> {
    let model = if run_or_model.join(MANIFEST_FILE).is_file() {
        run_or_model.to_path_buf()
    } else {
        run_or_model.join("model")
    };
    if !model.join(MANIFEST_FILE).is_file() {
        bail!(
            "{} has no packaged model ({MANIFEST_FILE} missing); fix: finish the run with `p2m run` (its package stage writes model/), then publish runs/<name>",
            model.display()
        );
    }
    let readme = model.join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap_or_default();
    if !has_front_matter(&text) {
        bail!(
            "{} has no hub front matter (a `---` YAML block at its top); fix: re-package the run with this version of `p2m run` (it writes README.md with the card's YAML header)",
            readme.display()
        );
    }
    UploadPlan::of_folder(&model, repo, RepoType::Model)
}

/// The dataset repository's plan for a run folder: `dataset/` with its card and parquet splits.
pub fn plan_dataset(run: &Path, repo: RepoId) -> Result<UploadPlan> {
    let dir = run.join("dataset");
    let readme = dir.join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap_or_default();
    if !has_front_matter(&text) {
        bail!(
            "{} is missing or has no hub front matter; fix: re-package the run with this version of `p2m run` (it writes dataset/ with parquet splits and a dataset card)",
            readme.display()
        );
    }
    let plan = UploadPlan::of_folder(&dir, repo, RepoType::Dataset)?;
    if !plan.files.iter().any(|f| f.path_in_repo.ends_with(".parquet")) {
        bail!("{} has no parquet split; fix: re-package the run with `p2m run`", dir.display());
    }
    Ok(plan)
}

/// A `---` line, YAML, a closing `---` line.
fn has_front_matter(text: &str) -> bool {
    text.strip_prefix("---\n").is_some_and(|rest| rest.contains("\n---\n"))
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub url: String,
    /// The commit's id, as the hub answered.
    pub commit: Option<String>,
    pub files: usize,
    /// LFS objects sent, and the ones the hub held already (not sent again).
    pub lfs_uploaded: usize,
    pub lfs_present: usize,
}

/// A hub to publish to.
pub struct Hub {
    endpoint: String,
    token: HubToken,
    http: reqwest::Client,
    retry: RetryPolicy,
}

/// An answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self, what: &str) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow!(
                "{what}: the hub's answer is not JSON ({e}): {}",
                flat_excerpt(&String::from_utf8_lossy(&self.body), 200)
            )
        })
    }
}

impl Hub {
    pub fn new(endpoint: &str, token: HubToken) -> Result<Hub> {
        let http = crate::download::http_client()?;
        let retry = RetryPolicy::new(4, Duration::from_millis(500), Duration::from_secs(8));
        Ok(Hub { endpoint: endpoint.trim_end_matches('/').to_string(), token, http, retry })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends the request `build` makes (again on each retry) and returns its answer when its
    /// status is 2xx or in `accept`; any other answer is an error naming `what`, the status and
    /// the hub's reason, scrubbed of the token.
    async fn send(
        &self,
        what: &str,
        accept: &[u16],
        build: impl Fn() -> Result<reqwest::RequestBuilder, Failed>,
    ) -> Result<Answer> {
        let once = || async {
            let response = build()?.send().await.map_err(|e| Failed::transport(&e))?;
            let status = response.status();
            if status.is_success() || accept.contains(&status.as_u16()) {
                let body = response.bytes().await.map_err(|e| Failed {
                    failure: Failure::Transient,
                    detail: format!("reading the answer: {}", error_chain(&e)),
                })?;
                return Ok(Answer { status: status.as_u16(), body: body.to_vec() });
            }
            let failed = Failed::status(&response, String::new());
            let body = response.text().await.unwrap_or_default();
            let why = crate::util::text::error_answer(&body);
            Err(Failed { detail: format!("HTTP {status}: {why}"), ..failed })
        };
        let on_retry = |f: &Failed, r: Retrying| {
            tracing::warn!(
                retry = r.retry,
                wait_ms = r.wait.as_millis() as u64,
                "hub: {what}: {}; retrying",
                self.token.scrub(&f.detail)
            );
        };
        match self.retry.run(once, |f| f.failure, on_retry).await {
            Ok(a) => Ok(a),
            Err(gave_up) => {
                let hint = match gave_up.error.failure {
                    Failure::Status { code: 401, .. } => "; fix: the token in the environment is not valid for this hub (check it, or create one at https://huggingface.co/settings/tokens)",
                    Failure::Status { code: 403, .. } => "; fix: the token needs write access to this owner (a `write` token, or membership of the organisation)",
                    Failure::Status { code, .. } if status_is_retryable(code) => "; fix: the hub is busy or failing: run the same command again later (files the hub holds already are not sent again)",
                    Failure::Unresolved | Failure::Transient => "; fix: check the network connection and --endpoint, then run the same command again (files the hub holds already are not sent again)",
                    _ => "",
                };
                Err(anyhow!("{what}: {}{hint}", self.token.scrub(&gave_up.describe())))
            }
        }
    }

    /// A request with the bearer token.
    fn authed(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, Failed> {
        Ok(self.http.request(method, url).bearer_auth(&self.token.0))
    }

    /// Creates the repository; one that exists already (409) is fine.
    pub async fn create_repo(&self, plan: &UploadPlan, private: bool) -> Result<()> {
        let mut body = json!({
            "name": plan.repo.name,
            "organization": plan.repo.owner,
            "type": plan.repo_type.as_str(),
        });
        if private {
            body["visibility"] = "private".into();
        }
        let url = format!("{}/api/repos/create", self.endpoint);
        let what = format!("creating the {} repository {}", plan.repo_type.as_str(), plan.repo);
        self.send(&what, &[409], || Ok(self.authed(reqwest::Method::POST, &url)?.json(&body)))
            .await?;
        Ok(())
    }

    /// Asks the hub which files go through LFS and which it ignores; updates `plan.files` (the
    /// ignored ones are dropped). A hub without the endpoint (404) keeps the local rule.
    pub async fn preupload(&self, plan: &mut UploadPlan) -> Result<()> {
        let files: Vec<Value> = plan
            .files
            .iter()
            .map(|f| {
                json!({
                    "path": f.path_in_repo,
                    "sample": base64::engine::general_purpose::STANDARD.encode(&f.sample),
                    "size": f.size,
                })
            })
            .collect();
        let body = json!({ "files": files });
        let url = format!(
            "{}/api/{}/{}/preupload/main",
            self.endpoint,
            plan.repo_type.api_segment(),
            plan.repo
        );
        let what = format!("asking {} which files go through LFS", plan.repo);
        let answer = self
            .send(&what, &[404], || Ok(self.authed(reqwest::Method::POST, &url)?.json(&body)))
            .await?;
        if answer.status == 404 {
            return Ok(());
        }
        let v = answer.json(&what)?;
        let modes: HashMap<String, (String, bool)> = v["files"]
            .as_array()
            .ok_or_else(|| anyhow!("{what}: the answer has no `files` list"))?
            .iter()
            .filter_map(|f| {
                Some((
                    f["path"].as_str()?.to_string(),
                    (
                        f["uploadMode"].as_str().unwrap_or("").to_string(),
                        f["shouldIgnore"].as_bool().unwrap_or(false),
                    ),
                ))
            })
            .collect();
        plan.files.retain(|f| !modes.get(&f.path_in_repo).is_some_and(|(_, ignore)| *ignore));
        for f in &mut plan.files {
            if let Some((mode, _)) = modes.get(&f.path_in_repo) {
                // Empty files cannot go through LFS (the hub's client commits them as regular).
                f.lfs = mode == "lfs" && f.size > 0;
            }
        }
        Ok(())
    }

    /// Sends the LFS objects the hub does not hold yet; returns (sent, held already).
    pub async fn upload_lfs(&self, plan: &UploadPlan) -> Result<(usize, usize)> {
        let lfs: Vec<&UploadFile> = plan.files.iter().filter(|f| f.lfs).collect();
        if lfs.is_empty() {
            return Ok((0, 0));
        }
        let objects: Vec<Value> =
            lfs.iter().map(|f| json!({"oid": f.sha256, "size": f.size})).collect();
        let body = json!({
            "operation": "upload",
            "transfers": ["basic"],
            "objects": objects,
            "hash_algo": "sha256",
            "ref": {"name": "main"},
        });
        let url = format!(
            "{}/{}{}.git/info/lfs/objects/batch",
            self.endpoint,
            plan.repo_type.url_prefix(),
            plan.repo
        );
        let what = format!("the LFS batch request of {}", plan.repo);
        let answer = self
            .send(&what, &[], || {
                Ok(self
                    .authed(reqwest::Method::POST, &url)?
                    .header("Accept", "application/vnd.git-lfs+json")
                    .header("Content-Type", "application/vnd.git-lfs+json")
                    .body(body.to_string()))
            })
            .await?;
        let v = answer.json(&what)?;
        let answered = v["objects"]
            .as_array()
            .ok_or_else(|| anyhow!("{what}: the answer has no `objects`"))?;
        let (mut sent, mut present) = (0, 0);
        for file in lfs {
            let obj = answered
                .iter()
                .find(|o| o["oid"].as_str() == Some(file.sha256.as_str()))
                .ok_or_else(|| {
                    anyhow!("{what}: the answer says nothing of {}", file.path_in_repo)
                })?;
            if let Some(err) = obj.get("error") {
                bail!(
                    "{what}: the hub refuses {} ({}): {}",
                    file.path_in_repo,
                    err["code"],
                    self.token.scrub(err["message"].as_str().unwrap_or(""))
                );
            }
            match obj.get("actions").and_then(|a| a.get("upload")) {
                None => present += 1,
                Some(upload) => {
                    self.put_object(file, upload).await?;
                    if let Some(verify) = obj["actions"].get("verify") {
                        self.verify_object(file, verify).await?;
                    }
                    sent += 1;
                }
            }
        }
        Ok((sent, present))
    }

    /// PUTs a file's bytes to an LFS upload action (its own headers only, never the token).
    async fn put_object(&self, file: &UploadFile, action: &Value) -> Result<()> {
        let href = action["href"]
            .as_str()
            .ok_or_else(|| anyhow!("the LFS upload action of {} has no href", file.path_in_repo))?;
        if action["header"].get("chunk_size").is_some() {
            bail!(
                "the hub asks for a multipart upload of {} ({} bytes), which p2m publish does not speak; fix: upload it with `huggingface-cli upload`",
                file.path_in_repo,
                file.size
            );
        }
        let headers: Vec<(String, String)> = action["header"]
            .as_object()
            .map(|h| {
                h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
            })
            .unwrap_or_default();
        let what = format!("uploading {} ({} bytes)", file.path_in_repo, file.size);
        self.send(&what, &[], || {
            // Read per attempt: only one copy of the bytes is held, and a file changed since the
            // plan is caught rather than committed under a stale sha256.
            let bytes = std::fs::read(&file.local).map_err(|e| Failed {
                failure: Failure::Permanent,
                detail: format!("reading {}: {e}", file.local.display()),
            })?;
            if crate::util::fs::sha256_hex(&bytes) != file.sha256 {
                return Err(Failed {
                    failure: Failure::Permanent,
                    detail: format!("{} changed while publishing", file.local.display()),
                });
            }
            let mut request = self.http.put(href).body(bytes);
            for (k, v) in &headers {
                request = request.header(k, v);
            }
            Ok(request)
        })
        .await?;
        Ok(())
    }

    /// POSTs `{oid, size}` to an LFS verify action.
    async fn verify_object(&self, file: &UploadFile, action: &Value) -> Result<()> {
        let href = action["href"]
            .as_str()
            .ok_or_else(|| anyhow!("the LFS verify action of {} has no href", file.path_in_repo))?;
        let body = json!({"oid": file.sha256, "size": file.size});
        let what = format!("verifying the upload of {}", file.path_in_repo);
        self.send(&what, &[], || Ok(self.authed(reqwest::Method::POST, href)?.json(&body))).await?;
        Ok(())
    }

    /// The commit: every file of the plan, regular ones inline, LFS ones as pointers.
    pub async fn commit(&self, plan: &UploadPlan, summary: &str) -> Result<Option<String>> {
        let mut ndjson = json!({"key": "header", "value": {"summary": summary, "description": ""}})
            .to_string()
            + "\n";
        for f in &plan.files {
            let line = if f.lfs {
                json!({"key": "lfsFile", "value": {
                    "path": f.path_in_repo, "algo": "sha256", "oid": f.sha256, "size": f.size}})
            } else {
                let bytes = std::fs::read(&f.local)
                    .with_context(|| format!("reading {}", f.local.display()))?;
                json!({"key": "file", "value": {
                    "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
                    "path": f.path_in_repo,
                    "encoding": "base64"}})
            };
            ndjson.push_str(&line.to_string());
            ndjson.push('\n');
        }
        let url = format!(
            "{}/api/{}/{}/commit/main",
            self.endpoint,
            plan.repo_type.api_segment(),
            plan.repo
        );
        let what = format!("committing {} files to {}", plan.files.len(), plan.repo);
        // A commit re-sent after a lost answer commits the same files again: no harm done.
        let answer = self
            .send(&what, &[], || {
                Ok(self
                    .authed(reqwest::Method::POST, &url)?
                    .header("Content-Type", "application/x-ndjson")
                    .body(ndjson.clone()))
            })
            .await?;
        let v = answer.json(&what)?;
        Ok(v["commitOid"].as_str().map(str::to_string))
    }

    /// Creates the repository, uploads the LFS objects it lacks, commits every file.
    pub async fn publish(
        &self,
        mut plan: UploadPlan,
        private: bool,
        summary: &str,
    ) -> Result<Published> {
        self.create_repo(&plan, private).await?;
        self.preupload(&mut plan).await?;
        let (lfs_uploaded, lfs_present) = self.upload_lfs(&plan).await?;
        let commit = self.commit(&plan, summary).await?;
        Ok(Published {
            url: plan.url(&self.endpoint),
            commit,
            files: plan.files.len(),
            lfs_uploaded,
            lfs_present,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        let ok: RepoId = "alice/capitals-v1.2_x".parse().unwrap();
        assert_eq!((ok.owner.as_str(), ok.name.as_str()), ("alice", "capitals-v1.2_x"));
        for bad in [
            "capitals",
            "a/b/c",
            "alice/-x",
            "alice/x.",
            "al--ice/x",
            "alice/x..y",
            "alice/x.git",
            "alice/café",
            "/x",
            "alice/",
        ] {
            let e = bad.parse::<RepoId>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("fix:"), "{bad}: {e}");
        }
        assert!(format!("a/{}", "x".repeat(97)).parse::<RepoId>().is_err());
    }

    #[test]
    fn the_token_is_never_shown() {
        let t = HubToken("hf_secret123".into());
        assert_eq!(format!("{t:?}"), "HubToken(<redacted>)");
        assert_eq!(t.scrub("Bearer hf_secret123 refused"), "Bearer <token> refused");
    }

    #[test]
    fn large_and_binary_files_go_through_lfs_and_front_matter_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join(MANIFEST_FILE), "{}").unwrap();
        std::fs::write(model.join("sub/weights.bin"), [1u8, 0, 2]).unwrap();
        std::fs::write(model.join("empty.txt"), b"").unwrap();
        std::fs::write(model.join("README.md"), "# no front matter\n").unwrap();
        let repo: RepoId = "alice/m".parse().unwrap();
        let e = plan_model(dir.path(), repo.clone()).unwrap_err().to_string();
        assert!(e.contains("README.md") && e.contains("front matter") && e.contains("fix:"), "{e}");
        std::fs::write(model.join("README.md"), "---\nlicense: \"mit\"\n---\n\n# m\n").unwrap();
        let plan = plan_model(dir.path(), repo.clone()).unwrap();
        let lfs: Vec<(&str, bool)> =
            plan.files.iter().map(|f| (f.path_in_repo.as_str(), f.lfs)).collect();
        assert_eq!(
            lfs,
            [
                ("README.md", false),
                ("empty.txt", false),
                ("p2m.json", false),
                ("sub/weights.bin", true)
            ]
        );
        assert_eq!(plan.files[3].sha256, crate::util::fs::sha256_hex(&[1, 0, 2]));
        assert_eq!(plan.url("http://h/"), "http://h/alice/m");
        let e = plan_model(&dir.path().join("nowhere"), repo.clone()).unwrap_err().to_string();
        assert!(e.contains("nowhere/model") && e.contains("p2m run"), "{e}");
        let e = plan_dataset(dir.path(), repo).unwrap_err().to_string();
        assert!(e.contains("dataset/README.md"), "{e}");
    }
}

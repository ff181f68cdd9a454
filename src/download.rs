//! Verified HTTP downloads, shared by the dataset registry and the model registry.
//!
//! A download streams into a temporary file beside its destination while hashing, is retried by
//! the one HTTP retry policy ([`crate::util::http`]: connection errors, 5xx, 429, short bodies;
//! not a host name that does not resolve), and is handed back only once its size and sha256
//! match; the caller renames it into place. A killed run therefore never leaves a half-written
//! file where a verified one is expected.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::util::http::{error_chain, Failed, Failure, GaveUp, RetryPolicy, Retrying, Unresolved};
use crate::util::runtime::block_on;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("download of {url} failed: {detail}")]
    Http { url: String, detail: String },
    /// The host name does not resolve (offline?): not retried.
    #[error(transparent)]
    Unresolved(#[from] Unresolved),
    #[error("{url} served bytes with sha256 {actual}, expected {expected}")]
    Checksum { url: String, expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What the downloaded bytes must be.
pub struct Expected<'a> {
    pub bytes: Option<u64>,
    pub sha256: &'a str,
    /// Shown beside the progress bar.
    pub label: &'a str,
}

/// Environment variables naming a CA bundle, first set wins (OpenSSL's, pip's, requests', curl's).
const CA_BUNDLE_VARS: [&str; 4] =
    ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"];

/// An HTTP client with timeouts and our user agent. rustls trusts only its built-in roots; behind
/// a TLS-intercepting proxy (corporate or sandbox egress) pip works because it is told about the
/// proxy's CA, so the same settings are honoured here, in addition to the built-in roots.
pub fn http_client() -> Result<reqwest::Client, DownloadError> {
    let err = |detail: String| DownloadError::Http { url: "(client setup)".into(), detail };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("prompt2model-rs/", env!("CARGO_PKG_VERSION")));
    for var in CA_BUNDLE_VARS {
        if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let pem = std::fs::read(&path)
                .map_err(|e| err(format!("{var}={}: {e}", Path::new(&path).display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                err(format!(
                    "{var}={}: not a PEM bundle: {}",
                    Path::new(&path).display(),
                    error_chain(&e)
                ))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
            break;
        }
    }
    builder.build().map_err(|e| err(error_chain(&e)))
}

/// How one download attempt failed.
enum Attempt {
    /// Over HTTP: the policy decides whether to try again.
    Failed(Failed),
    /// Here (the disk, the checksum): ends the download.
    Fatal(DownloadError),
}

/// The retry policy of downloads and package-index pages: 3 retries after 0.5, 1 and 2 s.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::new(3, Duration::from_millis(500), Duration::from_secs(4))
}

/// Download `url` into a temporary file in `dir` whose size and sha256 match `expected`.
pub async fn download_to_temp(
    client: &reqwest::Client,
    url: &str,
    dir: &Path,
    expected: &Expected<'_>,
) -> Result<tempfile::NamedTempFile, DownloadError> {
    let classify = |a: &Attempt| match a {
        Attempt::Failed(f) => f.failure,
        Attempt::Fatal(_) => Failure::Permanent,
    };
    let on_retry = |a: &Attempt, r: Retrying| {
        if let Attempt::Failed(f) = a {
            tracing::warn!(%url, retry = r.retry, wait_ms = r.wait.as_millis() as u64, "download: {}; retrying", f.detail);
        }
    };
    let gave_up = match retry_policy()
        .run(|| download_once(client, url, dir, expected), classify, on_retry)
        .await
    {
        Ok(tmp) => return Ok(tmp),
        Err(gave_up) => gave_up,
    };
    match gave_up.error {
        Attempt::Fatal(e) => Err(e),
        Attempt::Failed(f) => {
            let gave_up = GaveUp { error: f, attempts: gave_up.attempts, why: gave_up.why };
            Err(match gave_up.unresolved(url) {
                Some(u) => u.into(),
                None => DownloadError::Http { url: url.into(), detail: gave_up.describe() },
            })
        }
    }
}

/// The blocking form, for synchronous callers (inside an async runtime or not).
pub fn download_to_temp_blocking(
    url: &str,
    dir: &Path,
    expected: &Expected<'_>,
) -> Result<tempfile::NamedTempFile, DownloadError> {
    let client = http_client()?;
    block_on(download_to_temp(&client, url, dir, expected))
        .map_err(|e| DownloadError::Http { url: url.into(), detail: e.to_string() })?
}

/// An hf-hub client that keeps its files under `hub_cache` (inside the project cache, not
/// ~/.cache/huggingface, so `P2M_CACHE` alone decides what a run can reuse) and honours
/// `HF_ENDPOINT` (when set and not empty) and `HF_TOKEN`.
pub fn hf_hub_api(
    hub_cache: &Path,
    progress: bool,
) -> Result<hf_hub::api::tokio::Api, hf_hub::api::tokio::ApiError> {
    let mut builder = hf_hub::api::tokio::ApiBuilder::from_env()
        .with_progress(progress)
        .with_cache_dir(hub_cache.to_path_buf());
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty()) {
        builder = builder.with_endpoint(endpoint);
    }
    builder.build()
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    dir: &Path,
    expected: &Expected<'_>,
) -> Result<tempfile::NamedTempFile, Attempt> {
    use futures_util::StreamExt;
    let io = |e: std::io::Error| {
        Attempt::Fatal(DownloadError::Io { path: dir.to_path_buf(), source: e })
    };
    let response =
        client.get(url).send().await.map_err(|e| Attempt::Failed(Failed::transport(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(Attempt::Failed(Failed::status(&response, format!("HTTP {status}"))));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new().prefix(".download-").tempfile_in(dir).map_err(io)?;
    let progress =
        indicatif::ProgressBar::new(expected.bytes.or(response.content_length()).unwrap_or(0));
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("static template"),
    );
    progress.set_message(expected.label.to_string());
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let detail = format!("body interrupted after {received} bytes: {}", error_chain(&e));
            Attempt::Failed(Failed { failure: Failure::Transient, detail })
        })?;
        hasher.update(&chunk);
        tmp.write_all(&chunk).map_err(io)?;
        received += chunk.len() as u64;
        progress.set_position(received);
    }
    progress.finish_and_clear();
    if let Some(bytes) = expected.bytes {
        if received != bytes {
            let detail = format!("received {received} bytes, expected {bytes}");
            return Err(Attempt::Failed(Failed { failure: Failure::Transient, detail }));
        }
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected.sha256 {
        return Err(Attempt::Fatal(DownloadError::Checksum {
            url: url.into(),
            expected: expected.sha256.to_string(),
            actual,
        }));
    }
    tmp.flush().map_err(io)?;
    Ok(tmp)
}

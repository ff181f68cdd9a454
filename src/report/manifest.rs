//! The run manifest: everything needed to say which run produced a report's numbers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::data::registry::ResolvedFile;

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub report: String,
    pub created_utc: String,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub command_line: Vec<String>,
    /// The run's settings (flags, scale, seeds, ...).
    pub config: serde_json::Value,
    /// Every input file with its verified sha256 and where it was read from.
    pub inputs: Vec<ResolvedFile>,
    /// Metric name → signature.
    pub metric_signatures: BTreeMap<String, String>,
    pub tool_versions: BTreeMap<String, String>,
    /// Files in the report folder (filled in when the report is written).
    pub files: Vec<String>,
}

impl Manifest {
    pub fn new(report: &str, root: &Path, config: serde_json::Value) -> Self {
        let (git_commit, git_dirty) = git_state(root);
        Manifest {
            report: report.to_string(),
            created_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            git_commit,
            git_dirty,
            command_line: redact_args(std::env::args()),
            config,
            inputs: Vec::new(),
            metric_signatures: BTreeMap::new(),
            tool_versions: tool_versions(),
            files: Vec::new(),
        }
    }

    /// Add input files, once each, in a stable order.
    pub fn add_inputs(&mut self, files: impl IntoIterator<Item = ResolvedFile>) {
        for f in files {
            if !self.inputs.iter().any(|g| g.path == f.path) {
                self.inputs.push(f);
            }
        }
        self.inputs.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

/// Secrets never reach a manifest: the value of any flag that looks like a key or token is replaced.
fn redact_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut redact_next = false;
    for a in args {
        let lower = a.to_ascii_lowercase();
        let secretish = ["key", "token", "secret", "password"].iter().any(|s| lower.contains(s));
        if redact_next {
            out.push("<redacted>".into());
            redact_next = false;
        } else if a.starts_with("--") && secretish {
            match a.split_once('=') {
                Some((flag, _)) => out.push(format!("{flag}=<redacted>")),
                None => {
                    out.push(a);
                    redact_next = true;
                }
            }
        } else {
            out.push(a);
        }
    }
    out
}

pub(crate) fn git_state(root: &Path) -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    (commit, dirty)
}

pub fn tool_versions() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("prompt2model-rs".into(), env!("CARGO_PKG_VERSION").into());
    v.insert("rustc".into(), env!("P2M_RUSTC_VERSION").into());
    // The binary's own commit; `git_commit` is the checkout's at run time (they differ when a
    // binary is carried to another machine or the tree moved on after the build).
    v.insert("prompt2model-rs build commit".into(), env!("P2M_BUILD_COMMIT").into());
    for pair in env!("P2M_DEP_VERSIONS").split(',').filter(|s| !s.is_empty()) {
        if let Some((name, version)) = pair.split_once('=') {
            v.insert(name.into(), version.into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_redacted_from_the_command_line() {
        let args = ["table1", "--api-key", "sk-123", "--token=abc", "--n", "5"].map(String::from);
        let out = super::redact_args(args.into_iter());
        assert_eq!(out, ["table1", "--api-key", "<redacted>", "--token=<redacted>", "--n", "5"]);
    }
}

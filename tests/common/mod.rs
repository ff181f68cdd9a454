//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prompt2model::config::Paths;
use prompt2model::data::registry::Registry;

pub mod browser;
pub mod datasets_server;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A paper task's prompt as a user writes it (`data/tasks.toml`).
pub fn task_prompt(id: &str) -> String {
    let tasks = prompt2model::data::tasks::load_tasks(&repo_root().join("data"))
        .expect("data/tasks.toml loads");
    prompt2model::data::tasks::find(&tasks, id)
        .unwrap_or_else(|| panic!("no task `{id}`"))
        .prompt
        .clone()
}

/// The shared mirror; tests that re-score the recorded runs need it (CI has it beside the clone).
pub fn mirror() -> PathBuf {
    let dir = std::env::var_os("P2M_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/mirror"));
    assert!(
        dir.join("MANIFEST.tsv").is_file(),
        "these tests need the data mirror at {} (set P2M_MIRROR to its folder)",
        dir.display()
    );
    dir
}

/// A registry over the real data/ and the mirror, with a private cache and no network.
pub fn mirror_registry(cache: &std::path::Path) -> Registry {
    Registry::load(Paths::with(&repo_root(), Some(mirror()), cache.to_path_buf(), true))
        .expect("registry loads")
}

/// One canned HTTP response.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A loopback HTTP server that answers successive requests with the given replies (the last one
/// repeats), counts requests, and stops after `max_requests` so no test can loop forever.
pub struct TestServer {
    pub url: String,
    pub requests: Arc<Mutex<usize>>,
}

pub fn serve(replies: Vec<Reply>, max_requests: usize) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(0usize));
    let counter = requests.clone();
    thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            read_request_head(&mut stream);
            let n = {
                let mut c = counter.lock().unwrap();
                *c += 1;
                *c
            };
            let reply = replies.get(n - 1).or(replies.last()).cloned().unwrap();
            let reason = if reply.status == 200 { "OK" } else { "Error" };
            let header = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                reply.status,
                reply.body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&reply.body);
        }
    });
    TestServer { url, requests }
}

/// The request line and headers of an HTTP request (up to the blank line), as text.
pub fn read_request_head(stream: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).to_string()
}

/// A loopback stand-in for the Hugging Face hub, speaking the parts of its protocol hf-hub uses
/// (metadata from a `Range: bytes=0-0` GET with `ETag`/`X-Repo-Commit`/`Content-Range`, then ranged
/// downloads). Serves `files` (name → bytes) under `/<repo>/resolve/<rev>/<name>`; records request paths;
/// stops after `max_requests`.
pub fn fake_hub(
    files: Vec<(String, Vec<u8>)>,
    max_requests: usize,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let head = read_request_head(&mut stream);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let Some((_, body)) =
                files.iter().find(|(name, _)| path.ends_with(&format!("/resolve/main/{name}")))
            else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let range = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string)
                })
                .and_then(|r| {
                    r.trim().split_once('-').map(|(a, b)| {
                        (
                            a.parse::<usize>().unwrap_or(0),
                            b.parse::<usize>().unwrap_or(body.len() - 1),
                        )
                    })
                });
            let (start, end) = range.unwrap_or((0, body.len() - 1));
            let end = end.min(body.len() - 1);
            let slice = &body[start..=end];
            let header = format!(
                "HTTP/1.1 206 Partial Content\r\nETag: \"etag-{}\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\nContent-Range: bytes {start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len(),
                body.len(),
                slice.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(slice);
        }
    });
    (url, seen)
}

/// Held by every test that points `HF_ENDPOINT` (process-wide, read by hf-hub at call time) at its
/// own fake hub, for as long as it uses it: all integration tests share one process.
pub fn hub_endpoint_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hex sha256 of bytes (what the registries pin).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One of this package's binaries (`env!("CARGO_BIN_EXE_…")`) as a user starts it here: from the
/// checkout, offline, one libtorch thread, quiet, its report under `reports`.
pub fn offline_command(program: &str, reports: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.current_dir(repo_root())
        .env("P2M_REPORTS", reports)
        .env("P2M_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn");
    c
}

/// The `table2` binary at the smoke scale as a user starts it, its runs in `runs` and its report
/// under `reports` (offline, quiet).
pub fn table2_smoke(
    reports: &std::path::Path,
    runs: &std::path::Path,
    args: &[&str],
) -> std::process::Command {
    let mut c = offline_command(env!("CARGO_BIN_EXE_table2"), reports);
    c.args(["--scale", "smoke", "--cpu", "--runs-dir"]).arg(runs).args(args);
    c
}

/// stdout and stderr of a finished command, which must have succeeded.
pub fn output_ok(out: std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "command failed:\n{text}");
    text
}

const HOW_TO_FIX: &str =
    "the reference venv needs transformers and torch (scripts/requirements-reference.txt): \
     run `bash scripts/setup.sh --python`, or point P2M_PYTHON at a Python that has them";

pub fn python() -> PathBuf {
    match std::env::var_os("P2M_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".venv/bin/python"),
    }
}

/// Runs a script of tests/reference (in the reference venv `$P2M_PYTHON`, default
/// `<crate>/.venv/bin/python`) with `args` and its last argument as the JSON it writes.
pub fn reference(script: &str, args: &[&Path], out: &Path) -> serde_json::Value {
    let python = python();
    let script = repo_root().join("tests/reference").join(script);
    let res = Command::new(&python)
        .arg(&script)
        .args(args)
        .arg(out)
        .env("OMP_NUM_THREADS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {HOW_TO_FIX}", python.display()));
    assert!(
        res.status.success(),
        "{} {} failed ({HOW_TO_FIX}):\n{}",
        python.display(),
        script.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

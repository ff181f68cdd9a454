//! The online path for hub-only models: hf-hub against a loopback server that speaks the parts of
//! the Hugging Face hub protocol hf-hub uses (metadata from a `Range: bytes=0-0` GET with
//! `ETag`/`X-Repo-Commit`/`Content-Range`, then ranged downloads).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use prompt2model::config::Paths;
use prompt2model::models::weights::{FileOrigin, ModelError, ModelRegistry, PackageIndex, Sources};

/// Serves `files` (name → bytes) under `/<repo>/resolve/<rev>/<name>`; records request paths;
/// stops after `max_requests`.
fn fake_hub(files: Vec<(String, Vec<u8>)>, max_requests: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let Some((_, body)) = files.iter().find(|(name, _)| path.ends_with(&format!("/resolve/main/{name}"))) else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            let range = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_string))
                .and_then(|r| r.trim().split_once('-').map(|(a, b)| (a.parse::<usize>().unwrap_or(0), b.parse::<usize>().unwrap_or(body.len() - 1))));
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

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn registry(root: &std::path::Path, cache: &std::path::Path, config_sha: &str, offline: bool) -> ModelRegistry {
    let text = format!(
        r#"
[[model]]
id = "hub-only"
kind = "model"
family = "t5"
format = "safetensors"
title = "a hub-only test model"
hf = {{ repo = "org/tiny-t5" }}
license = "test"
offline = {{ kind = "none", reason = "no wheel carries it" }}

[[model.file]]
name = "config.json"
sha256 = "{config_sha}"

[[model.file]]
name = "weights.bin"
"#
    );
    let paths = Paths::with(root, None, cache.to_path_buf(), offline);
    let sources = Sources { wheel_dirs: vec![], index: PackageIndex::PypiJson { base: "http://127.0.0.1:9".into() }, offline };
    ModelRegistry::parse(&text, root.join("models.toml"), paths).unwrap().with_sources(sources)
}

#[test]
fn hub_only_models_are_fetched_with_hf_hub_and_verified() {
    let config = br#"{"d_model": 8}"#.to_vec();
    let weights: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (url, seen) = fake_hub(vec![("config.json".into(), config.clone()), ("weights.bin".into(), weights.clone())], 40);
    // hf-hub reads the endpoint from the environment; this test binary sets it once, for itself.
    std::env::set_var("HF_ENDPOINT", &url);
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();

    // Offline, a hub-only model is an error that says so.
    let err = registry(root.path(), cache.path(), &sha256(&config), true).resolve("hub-only").unwrap_err();
    assert!(matches!(err, ModelError::NoOfflineSource { .. }), "{err}");

    let resolved = registry(root.path(), cache.path(), &sha256(&config), false).resolve("hub-only").unwrap();
    assert_eq!(std::fs::read(&resolved.files["config.json"].local).unwrap(), config);
    assert_eq!(std::fs::read(&resolved.files["weights.bin"].local).unwrap(), weights);
    assert!(resolved.files["config.json"].verified && !resolved.files["weights.bin"].verified);
    assert_eq!(resolved.files["config.json"].origin, FileOrigin::Hub { repo: "org/tiny-t5".into() });
    assert!(seen.lock().unwrap().iter().any(|p| p.contains("org/tiny-t5/resolve/main/weights.bin")));

    // A pinned hash that does not match is refused.
    let cache2 = tempfile::tempdir().unwrap();
    let err = registry(root.path(), cache2.path(), &"0".repeat(64), false).resolve("hub-only").unwrap_err();
    assert!(err.to_string().contains(&sha256(&config)), "{err}");
}

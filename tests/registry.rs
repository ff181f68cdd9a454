//! The registry: consistency of data/, resolution order, checksum refusal, clear not-found errors,
//! and downloads from a (loopback) upstream.

use crate::common;

use std::fs;

use prompt2model::config::Paths;
use prompt2model::data::registry::{DataError, Origin, Registry};
use prompt2model::util::fs::sha256_file;

#[test]
fn every_registered_dataset_resolves_from_the_mirror_with_matching_hashes() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let mut checked = 0;
    for d in registry.datasets() {
        let files = registry.dataset_files(&d.id).unwrap();
        assert!(!files.is_empty(), "dataset {} has no files", d.id);
        // Hash every small dataset fully; the large recorded-run collection is sampled below.
        if d.id == "p2m-runs" {
            continue;
        }
        for f in files {
            let r = registry.resolve_file(&f.path).unwrap();
            assert_eq!(r.origin, Origin::Mirror);
            assert_eq!(r.sha256, f.sha256);
            checked += 1;
        }
    }
    assert_eq!(checked, 15, "every file of the non-collection datasets");
    let runs = registry.dataset_files("p2m-runs").unwrap();
    assert!(runs.len() > 300, "p2m-runs lists {} files", runs.len());
}

#[test]
fn registry_matches_the_mirror_manifest() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let manifest = fs::read_to_string(common::mirror().join("MANIFEST.tsv")).unwrap();
    let mut rows = 0;
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let entry = registry
            .file_entry(cols[0])
            .unwrap_or_else(|| panic!("{} missing from data/files.tsv", cols[0]));
        assert_eq!(entry.sha256, cols[2], "{}", cols[0]);
        assert_eq!(entry.bytes.to_string(), cols[1], "{}", cols[0]);
        rows += 1;
    }
    assert_eq!(rows, 347);
}

#[test]
fn a_corrupted_file_is_refused_showing_both_hashes() {
    let mirror = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    fs::create_dir_all(mirror.path().join("temporal")).unwrap();
    let good = fs::read(common::mirror().join("temporal/temporal.json")).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 1;
    fs::write(mirror.path().join("temporal/temporal.json"), &bad).unwrap();
    let registry = Registry::load(Paths::with(
        &common::repo_root(),
        Some(mirror.path().to_path_buf()),
        cache.path().to_path_buf(),
        true,
    ))
    .unwrap();
    let err = registry.resolve_file("temporal/temporal.json").unwrap_err();
    let actual = sha256_file(&mirror.path().join("temporal/temporal.json")).unwrap();
    match &err {
        DataError::ChecksumMismatch { expected, actual: got, dataset, .. } => {
            assert_eq!(dataset, "temporal");
            assert_eq!(got, &actual);
            assert_eq!(expected, &registry.file_entry("temporal/temporal.json").unwrap().sha256);
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&actual) && msg.contains("expected sha256"), "{msg}");
}

#[test]
fn a_missing_file_without_mirror_or_network_names_dataset_places_and_fix() {
    let cache = tempfile::tempdir().unwrap();
    let registry =
        Registry::load(Paths::with(&common::repo_root(), None, cache.path().to_path_buf(), true))
            .unwrap();
    let err = registry.resolve_file("squad/dev-v1.1.json").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(msg.contains("dataset `squad-v1.1-dev`"), "{msg}");
    assert!(msg.contains("cache:") && msg.contains("mirror: none configured"), "{msg}");
    assert!(msg.contains("P2M_OFFLINE"), "{msg}");
    assert!(msg.contains("fix: set P2M_MIRROR"), "{msg}");
}

/// A throwaway data/ folder with one Temporal-format dataset of one file, registered with the
/// sha256 of `body` and, optionally, an upstream URL and a Hugging Face dataset repository.
fn tiny_registry(
    root: &std::path::Path,
    cache: &std::path::Path,
    body: &[u8],
    url: Option<&str>,
    hf_repo: Option<&str>,
) -> Registry {
    let data = root.join("data");
    fs::create_dir_all(&data).unwrap();
    let hf = hf_repo.map(|r| format!("hf = {{ repo = \"{r}\" }}\n")).unwrap_or_default();
    fs::write(
        data.join("datasets.toml"),
        format!(
            r#"[[dataset]]
id = "tiny"
title = "tiny"
format = "temporal-json"
files = ["tiny/t.json"]
license = "test"
citation = "test"
homepage = "test"
{hf}"#
        ),
    )
    .unwrap();
    let url = url.map(|u| format!("{u}/t.json")).unwrap_or_default();
    let row = format!("tiny/t.json\t{}\t{}\t{url}\ttest\n", body.len(), common::sha256_hex(body));
    fs::write(data.join("files.tsv"), format!("path\tbytes\tsha256\turl\tsource\n{row}")).unwrap();
    Registry::load(Paths::with(root, None, cache.to_path_buf(), false)).unwrap()
}

#[test]
fn downloads_retry_transient_errors_verify_and_land_atomically() {
    let body = br#"[["[Posted: 2013-03-22] today", "today == 2013-03-22", "date"]]"#.to_vec();
    let server = common::serve(
        vec![
            common::Reply { status: 503, body: b"busy".to_vec() },
            common::Reply { status: 200, body: body[..10].to_vec() }, // short body: retried
            common::Reply { status: 200, body: body.clone() },
        ],
        10,
    );
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = tiny_registry(root.path(), cache.path(), &body, Some(&server.url), None);
    let r = registry.resolve_file("tiny/t.json").unwrap();
    assert_eq!(r.origin, Origin::Download { url: format!("{}/t.json", server.url) });
    assert_eq!(fs::read(&r.local).unwrap(), body);
    assert_eq!(*server.requests.lock().unwrap(), 3);
    // A second resolution is served by the cache.
    let again = registry.resolve_file("tiny/t.json").unwrap();
    assert_eq!(again.origin, Origin::Cache);
    let loaded = prompt2model::data::loaders::load_dataset(&registry, "tiny").unwrap();
    assert_eq!(loaded.frame.height(), 1);
}

#[test]
fn a_download_with_wrong_bytes_is_refused_and_leaves_nothing_behind() {
    let body = b"the registered bytes".to_vec();
    let server = common::serve(
        vec![common::Reply { status: 200, body: b"something else entirely".to_vec() }],
        10,
    );
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = tiny_registry(root.path(), cache.path(), &body, Some(&server.url), None);
    let err = registry.resolve_file("tiny/t.json").unwrap_err();
    assert!(
        err.to_string().contains("received 23 bytes, expected 20")
            || matches!(err, DataError::ChecksumMismatch { .. } | DataError::NotFound { .. }),
        "{err}"
    );
    let leftovers: Vec<_> = walk(cache.path());
    assert!(leftovers.is_empty(), "cache holds {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn the_task_prompts_are_the_papers_verbatim() {
    let tasks = prompt2model::data::tasks::load_tasks(&common::repo_root().join("data")).unwrap();
    assert_eq!(
        tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["squad", "temporal", "mconala"]
    );
    let md = fs::read_to_string(common::mirror().join("prompt2model/prompt_examples.md")).unwrap();
    for t in &tasks {
        let heading = format!("### {}\n\n```text\n\"\"\"", t.source.section);
        let start = md
            .find(&heading)
            .unwrap_or_else(|| panic!("section {} not in prompt_examples.md", t.source.section))
            + heading.len();
        let end = start + md[start..].find("\"\"\"\n```").unwrap();
        assert_eq!(t.prompt, md[start..end], "task {}", t.id);
        assert!(
            t.prompt.starts_with(&t.instruction),
            "task {}: instruction is the prompt's head",
            t.id
        );
        for d in &t.demonstrations {
            assert!(
                t.prompt.contains(&format!("input=\"{}\"\noutput=\"{}\"", d.input, d.output)),
                "task {}: {:?}",
                t.id,
                d.input
            );
        }
    }
    assert_eq!(tasks.iter().map(|t| t.demonstrations.len()).collect::<Vec<_>>(), [3, 12, 6]);
}

#[test]
fn a_dataset_with_a_hub_source_is_fetched_with_hf_hub() {
    // A file with no mirror copy and no upstream URL, but a Hugging Face dataset repository.
    let body = br#"[["[Posted: 2020-01-01] tomorrow", "tomorrow == 2020-01-02", "date"]]"#.to_vec();
    let (url, seen) = common::fake_hub(vec![("tiny/t.json".into(), body.clone())], 20);
    // hf-hub reads its endpoint from the environment, which all tests share.
    let _hub = common::hub_endpoint_lock();
    std::env::set_var("HF_ENDPOINT", &url);
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = tiny_registry(root.path(), cache.path(), &body, None, Some("org/tiny"));
    let r = registry.resolve_file("tiny/t.json").unwrap();
    assert_eq!(r.origin, Origin::Hub { repo: "org/tiny".into() });
    assert_eq!(fs::read(&r.local).unwrap(), body);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|p| p.contains("datasets/org/tiny/resolve/main/tiny/t.json")),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        prompt2model::data::loaders::load_dataset(&registry, "tiny").unwrap().frame.height(),
        1
    );
}

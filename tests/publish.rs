//! `p2m publish` against a loopback fake Hugging Face hub: a smoke run (the fake teacher's, as
//! tests/pipeline.rs makes it) is packaged, listed by `--dry-run` without a request, refused
//! without a token or with a wrong one, published with a commit the hub keeps refusing (the
//! weights reach LFS storage, the commit does not), then published again: nothing is sent twice,
//! and the hub holds every file of `model/` and `dataset/` byte for byte (weights and parquet
//! through Git LFS under their sha256), and the token is in no output and no file.
//!
//! The fake hub speaks the part of the hub's API the hub's Python client uses for an upload
//! (`huggingface_hub` 2.5: `api/repos/create`, `preupload`, the LFS batch API with basic
//! transfers and verify, the NDJSON commit) and checks what a real hub would: the bearer token on
//! every API request and none on the storage PUT, the LFS media types, each object's sha256 and
//! size, that every LFS pointer of a commit names a stored object.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::common;
use crate::fake_openai::{FakeServer, ServerConfig};
use crate::pipeline::{fake_args, ok, p2m, prompt_file, run_blocking, PROMPT};

const TOKEN: &str = "hf_p2mFakeHubToken7f3a9c21";

/// A committed file: its bytes and, when it came as an LFS pointer, its oid.
#[derive(Clone, Debug)]
struct Stored {
    bytes: Vec<u8>,
    lfs_oid: Option<String>,
}

/// One request as the fake hub saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

#[derive(Default)]
struct HubState {
    base: String,
    /// (type, owner/name) → visibility.
    repos: HashMap<(String, String), String>,
    objects: HashMap<String, Vec<u8>>,
    files: HashMap<(String, String), BTreeMap<String, Stored>>,
    seen: Vec<Seen>,
    /// The next PUTs answered 503.
    fail_puts: usize,
    /// The next commits answered 503.
    fail_commits: usize,
}

type Shared = Arc<Mutex<HubState>>;

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The hub's own LFS rule as far as this test needs it: the default `.gitattributes` patterns,
/// files over 10 MiB, binary samples.
fn hub_wants_lfs(path: &str, size: u64, sample: &[u8]) -> bool {
    [".safetensors", ".parquet", ".bin", ".gguf"].iter().any(|e| path.ends_with(e))
        || size > 10 * 1024 * 1024
        || sample.contains(&0)
}

async fn handle(
    State(hub): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let auth = header(&headers, "authorization").map(str::to_string);
    let mut st = hub.lock().unwrap();
    st.seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        authorization: auth.clone(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    // The storage host: no hub token, the ticket the batch answer gave, the bytes of the oid.
    if method == Method::PUT {
        let ["lfs-storage", oid] = parts.as_slice() else { return answer(404, json!({})) };
        if auth.is_some() {
            return answer(400, json!({"error": "the storage host got an Authorization header"}));
        }
        if header(&headers, "x-ticket") != Some(&format!("ticket-{oid}")) {
            return answer(403, json!({"error": "no upload ticket"}));
        }
        if st.fail_puts > 0 {
            st.fail_puts -= 1;
            return answer(503, json!({"error": "storage busy (test)"}));
        }
        if common::sha256_hex(&body) != *oid {
            return answer(400, json!({"error": "sha256 mismatch"}));
        }
        st.objects.insert(oid.to_string(), body.to_vec());
        return answer(200, json!({}));
    }
    if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        // Echoes what it got, as servers' error pages do: the client must scrub it.
        return answer(
            401,
            json!({"error": format!("Invalid credentials in Authorization header: {}", auth.unwrap_or_default())}),
        );
    }
    let json_body = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    match parts.as_slice() {
        ["api", "repos", "create"] => {
            let b = json_body();
            let (Some(name), Some(org), Some(ty)) =
                (b["name"].as_str(), b["organization"].as_str(), b["type"].as_str())
            else {
                return answer(400, json!({"error": "name, organization, type required"}));
            };
            let key = (ty.to_string(), format!("{org}/{name}"));
            if st.repos.contains_key(&key) {
                return answer(409, json!({"error": "You already created this repo"}));
            }
            let visibility = b["visibility"].as_str().unwrap_or("public").to_string();
            st.repos.insert(key, visibility);
            answer(200, json!({"url": format!("{}/{org}/{name}", st.base)}))
        }
        ["api", kind @ ("models" | "datasets"), owner, name, "preupload", "main"] => {
            let key = (kind.trim_end_matches('s').to_string(), format!("{owner}/{name}"));
            if !st.repos.contains_key(&key) {
                return answer(404, json!({"error": "Repository not found"}));
            }
            let files: Vec<Value> = json_body()["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let p = f["path"].as_str().unwrap();
                    let sample = base64::engine::general_purpose::STANDARD
                        .decode(f["sample"].as_str().unwrap())
                        .unwrap();
                    assert!(sample.len() <= 512);
                    let lfs = hub_wants_lfs(p, f["size"].as_u64().unwrap(), &sample);
                    json!({"path": p, "uploadMode": if lfs {"lfs"} else {"regular"}, "shouldIgnore": false})
                })
                .collect();
            answer(200, json!({"files": files, "commitOid": "0".repeat(40)}))
        }
        [rest @ .., "info", "lfs", "objects", "batch"] => {
            let (kind, owner, name) = match rest {
                ["datasets", owner, name] => ("dataset", owner, name),
                [owner, name] => ("model", owner, name),
                _ => return answer(404, json!({})),
            };
            let Some(name) = name.strip_suffix(".git") else { return answer(404, json!({})) };
            if !st.repos.contains_key(&(kind.to_string(), format!("{owner}/{name}"))) {
                return answer(404, json!({"message": "Repository not found"}));
            }
            let lfs_type = "application/vnd.git-lfs+json";
            if header(&headers, "accept") != Some(lfs_type)
                || header(&headers, "content-type") != Some(lfs_type)
            {
                return answer(406, json!({"message": "git-lfs media types required"}));
            }
            let b = json_body();
            if b["operation"] != "upload"
                || !b["transfers"].as_array().unwrap().contains(&json!("basic"))
            {
                return answer(422, json!({"message": "upload with basic transfer only"}));
            }
            let base = st.base.clone();
            let objects: Vec<Value> = b["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let (oid, size) = (o["oid"].as_str().unwrap(), o["size"].as_u64().unwrap());
                    if st.objects.contains_key(oid) {
                        json!({"oid": oid, "size": size})
                    } else {
                        json!({"oid": oid, "size": size, "authenticated": true, "actions": {
                            "upload": {"href": format!("{base}/lfs-storage/{oid}"), "header": {"X-Ticket": format!("ticket-{oid}")}},
                            "verify": {"href": format!("{base}/lfs-verify/{oid}"), "header": {}},
                        }})
                    }
                })
                .collect();
            answer(200, json!({"transfer": "basic", "objects": objects}))
        }
        ["lfs-verify", oid] => {
            let b = json_body();
            match st.objects.get(*oid) {
                Some(o) if b["oid"] == *oid && b["size"] == o.len() => answer(200, json!({})),
                _ => answer(404, json!({"error": "object not stored"})),
            }
        }
        ["api", kind @ ("models" | "datasets"), owner, name, "commit", "main"] => {
            let key = (kind.trim_end_matches('s').to_string(), format!("{owner}/{name}"));
            if !st.repos.contains_key(&key) {
                return answer(404, json!({"error": "Repository not found"}));
            }
            if header(&headers, "content-type") != Some("application/x-ndjson") {
                return answer(415, json!({"error": "NDJSON expected"}));
            }
            if st.fail_commits > 0 {
                st.fail_commits -= 1;
                return answer(503, json!({"error": "commit service unavailable (test)"}));
            }
            let lines: Vec<Value> = body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            if lines.first().map(|l| l["key"] != "header" || !l["value"]["summary"].is_string())
                != Some(false)
            {
                return answer(400, json!({"error": "the first line must be the header"}));
            }
            let mut files = BTreeMap::new();
            for l in &lines[1..] {
                let v = &l["value"];
                let p = v["path"].as_str().unwrap().to_string();
                let stored = match l["key"].as_str() {
                    Some("file") if v["encoding"] == "base64" => Stored {
                        bytes: base64::engine::general_purpose::STANDARD
                            .decode(v["content"].as_str().unwrap())
                            .unwrap(),
                        lfs_oid: None,
                    },
                    Some("lfsFile") if v["algo"] == "sha256" => {
                        let oid = v["oid"].as_str().unwrap();
                        match st.objects.get(oid) {
                            Some(o) if v["size"] == o.len() => {
                                Stored { bytes: o.clone(), lfs_oid: Some(oid.to_string()) }
                            }
                            _ => {
                                return answer(
                                    422,
                                    json!({"error": format!("LFS pointer of {p} names no stored object")}),
                                )
                            }
                        }
                    }
                    _ => return answer(400, json!({"error": format!("bad line {l}")})),
                };
                files.insert(p, stored);
            }
            st.files.entry(key).or_default().extend(files);
            let base = st.base.clone();
            answer(
                200,
                json!({"success": true, "commitOid": "c0ffee".repeat(6) + "0000", "commitUrl": format!("{base}/{owner}/{name}/commit/x")}),
            )
        }
        _ => answer(404, json!({"error": format!("no route {method} {path}")})),
    }
}

/// Starts the fake hub on loopback; its base URL and state.
async fn start_fake_hub() -> (String, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state: Shared = Arc::new(Mutex::new(HubState { base: base.clone(), ..Default::default() }));
    let app = axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, state)
}

/// `p2m publish` with `args`, the token in `HF_TOKEN` when given; its output (stdout + stderr)
/// and whether it succeeded.
async fn publish(runs: &Path, args: &[&str], token: Option<&str>) -> (bool, String) {
    let mut c = p2m(runs, &[&["publish"], args].concat());
    c.env_remove("HF_TOKEN");
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    let out = run_blocking(c).await;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every file under `dir` by its `/`-separated relative path.
fn folder_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    prompt2model::util::fs::list_files(dir)
        .unwrap()
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// The hub holds exactly the files of `dir`, byte for byte; the ones whose names end in
/// `lfs_suffix` came as LFS pointers with their sha256.
fn hub_holds(hub: &Shared, kind: &str, repo: &str, dir: &Path, lfs_suffix: &str) {
    let st = hub.lock().unwrap();
    let held = st.files.get(&(kind.to_string(), repo.to_string())).expect("committed");
    let local = folder_files(dir);
    assert_eq!(held.keys().collect::<Vec<_>>(), local.keys().collect::<Vec<_>>(), "{repo}");
    for (path, bytes) in &local {
        let stored = &held[path];
        assert!(stored.bytes == *bytes, "{repo}: {path} differs on the hub");
        if path.ends_with(lfs_suffix) {
            assert_eq!(
                stored.lfs_oid.as_deref(),
                Some(common::sha256_hex(bytes).as_str()),
                "{path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_pushes_the_model_and_its_data_to_a_fake_hub_and_resumes() {
    let teacher = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    ok(run_blocking(p2m(
        &runs,
        &fake_args(prompt.to_str().unwrap(), &teacher.base_url, "capitals"),
    ))
    .await);
    let run = runs.join("capitals");
    let run_arg = run.to_str().unwrap();
    let (endpoint, hub) = start_fake_hub().await;
    let target = [
        "--repo",
        "alice/capitals",
        "--dataset-repo",
        "alice/capitals-data",
        "--endpoint",
        &endpoint,
    ];
    let mut outputs = Vec::new();

    // The dry run lists every file with its size and LFS or not, and sends nothing.
    let (success, out) =
        publish(&runs, &[&[run_arg], &target[..], &["--dry-run"]].concat(), None).await;
    assert!(success, "{out}");
    for (rel, bytes) in
        folder_files(&run.join("model")).iter().chain(&folder_files(&run.join("dataset")))
    {
        // Each file's line: its path, then its size (README.md is in both folders).
        let listed = out.lines().any(|l| {
            l.trim_start().starts_with(&format!("{rel} "))
                && l.contains(&format!(" {} bytes", bytes.len()))
        });
        assert!(listed, "{rel} ({} bytes) not listed:\n{out}", bytes.len());
    }
    let weights = out.lines().find(|l| l.contains("model.safetensors")).unwrap();
    assert!(weights.contains("LFS"), "{weights}");
    assert!(out.contains("nothing was sent"), "{out}");
    assert!(hub.lock().unwrap().seen.is_empty(), "the dry run sent requests");
    outputs.push(out);

    // No token, then a wrong one: refused, and the wrong token is not repeated.
    let (success, out) = publish(&runs, &[&[run_arg], &target[..]].concat(), None).await;
    assert!(!success && out.contains("HF_TOKEN") && out.contains("fix:"), "{out}");
    let wrong = "hf_wrongTokenA1b2C3";
    let (success, out) = publish(&runs, &[&[run_arg], &target[..]].concat(), Some(wrong)).await;
    assert!(!success && out.contains("HTTP 401") && out.contains("fix:"), "{out}");
    assert!(!out.contains(wrong), "the wrong token was printed:\n{out}");

    // The first PUT meets a busy storage host (retried), every commit attempt a 503: the
    // publish fails after its retries with the weights in LFS storage and nothing committed.
    {
        let mut st = hub.lock().unwrap();
        st.fail_puts = 1;
        st.fail_commits = 5;
    }
    let (success, out) =
        publish(&runs, &[&[run_arg], &target[..], &["--private"]].concat(), Some(TOKEN)).await;
    assert!(
        !success && out.contains("HTTP 503") && out.contains("run the same command again"),
        "{out}"
    );
    let (puts_first, objects_first) = {
        let st = hub.lock().unwrap();
        assert!(st.files.is_empty(), "nothing committed");
        assert_eq!(
            st.repos.get(&("model".into(), "alice/capitals".into())).map(String::as_str),
            Some("private")
        );
        (st.seen.iter().filter(|s| s.method == "PUT").count(), st.objects.len())
    };
    assert!(
        objects_first >= 1 && puts_first == objects_first + 1,
        "{puts_first} PUTs for {objects_first} objects"
    );
    outputs.push(out);

    // Again: the objects are on the hub already, only the commits are sent.
    let (success, out) = publish(&runs, &[&[run_arg], &target[..]].concat(), Some(TOKEN)).await;
    assert!(success, "{out}");
    assert!(out.contains(&format!("{endpoint}/alice/capitals ")), "{out}");
    assert!(out.contains(&format!("{endpoint}/datasets/alice/capitals-data ")), "{out}");
    let model_line = out.lines().find(|l| l.contains("/alice/capitals ")).unwrap();
    assert!(
        model_line.contains(&format!("LFS: 0 sent, {objects_first} already on the hub")),
        "{out}"
    );
    outputs.push(out);
    {
        let st = hub.lock().unwrap();
        // Each object was sent once (the model's in the first run, the dataset's in the second),
        // but for the PUT the storage host answered 503.
        let puts = st.seen.iter().filter(|s| s.method == "PUT").count();
        assert_eq!(puts, st.objects.len() + 1, "an object was sent twice");
        assert!(st.objects.len() > objects_first, "the dataset's parquet went through LFS");
        for s in st.seen.iter().filter(|s| s.method == "PUT") {
            assert!(s.authorization.is_none(), "the storage host saw the token: {s:?}");
        }
        assert!(st.seen.iter().all(|s| !s.path.contains(TOKEN)));
    }
    hub_holds(&hub, "model", "alice/capitals", &run.join("model"), ".safetensors");
    hub_holds(&hub, "dataset", "alice/capitals-data", &run.join("dataset"), ".parquet");
    {
        let st = hub.lock().unwrap();
        let readme = String::from_utf8(
            st.files[&("model".to_string(), "alice/capitals".to_string())]["README.md"]
                .bytes
                .clone(),
        )
        .unwrap();
        assert!(
            readme.starts_with("---\n")
                && readme.contains("pipeline_tag:")
                && readme.contains("model-index:"),
            "{readme}"
        );
        let parquet = st.files[&("dataset".to_string(), "alice/capitals-data".to_string())]
            .keys()
            .filter(|p| p.ends_with(".parquet"))
            .count();
        assert_eq!(parquet, 3, "train, validation, test");
    }

    // The token is in no output and in no file of the run.
    for out in &outputs {
        assert!(!out.contains(TOKEN), "the token was printed:\n{out}");
    }
    for (rel, bytes) in folder_files(&runs) {
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the token is in {rel}"
        );
    }
}

/// A run without a packaged model, and a model README without front matter, are refused with
/// the folder and the fix, before any request.
#[tokio::test]
async fn publish_refuses_a_run_without_a_publishable_model() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = runs.join("half");
    std::fs::create_dir_all(&run).unwrap();
    let args = [
        "publish",
        run.to_str().unwrap(),
        "--repo",
        "alice/half",
        "--endpoint",
        "http://127.0.0.1:9",
    ];
    let out = run_blocking(p2m(&runs, &args)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("half/model") && err.contains("p2m run"),
        "{err}"
    );

    std::fs::create_dir_all(run.join("model")).unwrap();
    std::fs::write(run.join("model/p2m.json"), "{}").unwrap();
    std::fs::write(run.join("model/README.md"), "# a card without front matter\n").unwrap();
    let out = run_blocking(p2m(&runs, &args)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("README.md")
            && err.contains("front matter")
            && err.contains("fix:"),
        "{err}"
    );

    let out =
        run_blocking(p2m(&runs, &["publish", run.to_str().unwrap(), "--repo", "no-owner"])).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-owner") && err.contains("OWNER/NAME"),
        "{err}"
    );
}

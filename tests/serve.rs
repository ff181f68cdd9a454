//! `p2m serve` as users and their programs meet it: on a run made by `p2m run` (smoke scale, a
//! loopback fake teacher), the API through reqwest and through the `openai` Python package, a real
//! browser on the page and on the review page, load from 32 concurrent clients, bad input, a
//! bearer token, and SIGTERM with a request in flight.

use crate::common;
use crate::common::browser::{png_colour_stats, Browser};
use crate::fake_openai::{FakeServer, ServerConfig};
use crate::pipeline::{fake_args, ok, p2m, prompt_file, run_blocking, PROMPT};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prompt2model::serve::load::run_load;

/// A smoke run under `dir/runs/<name>`; returns the run folder and the teacher's request count.
async fn smoke_run(dir: &Path, name: &str) -> (PathBuf, FakeServer) {
    let server = FakeServer::start(ServerConfig::default()).await;
    let runs = dir.join("runs");
    let prompt = prompt_file(dir, PROMPT);
    let args = fake_args(prompt.to_str().unwrap(), &server.base_url, name);
    ok(run_blocking(p2m(&runs, &args)).await);
    (runs.join(name), server)
}

/// `p2m serve` as a child process on a free port.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(target: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Served {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2m"));
    c.arg("serve")
        .arg(target)
        .args(["--port", "0", "--cpu"])
        .args(extra)
        .current_dir(common::repo_root())
        .env("P2M_OFFLINE", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("p2m serve printed nothing").unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in `{first}`"))
        .trim_end_matches('/')
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    Served { child, url }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text })))
}

/// A 4xx with an OpenAI-shaped error whose message contains `needle`.
async fn expect_refusal(url: &str, body: impl Into<reqwest::Body>, status: u16, needle: &str) {
    let (got, v) = post(url, body).await;
    assert_eq!(got, status, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error message: {v}"));
    assert!(message.contains(needle), "`{needle}` not in `{message}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_the_apis_load_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _teacher) = smoke_run(dir.path(), "serve-api").await;
    let server = start_server(&run, &[], &[]);
    let base = server.url.clone();
    let http = reqwest::Client::new();

    let health: serde_json::Value =
        http.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], "serve-api");
    let page = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("<textarea id=\"input\"") && !page.contains("https://"),
        "self-contained page"
    );

    // The page's description carries the run's baselines as its evaluation wrote them: the
    // student beside trivial answers on each test set, each score with its interval, and the
    // paired test's verdict.
    let info: serde_json::Value =
        http.get(format!("{base}/api/info")).send().await.unwrap().json().await.unwrap();
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("evaluation/baselines.json")).unwrap(),
    )
    .unwrap();
    let sets = info["baselines"].as_array().unwrap();
    assert_eq!(sets.len(), written.as_array().unwrap().len(), "{info}");
    assert!(!sets.is_empty() && info["baselines_note"].is_null(), "{info}");
    for (set, file) in sets.iter().zip(written.as_array().unwrap()) {
        assert_eq!(set["rows"], file["rows"]);
        let rows = set["rows"].as_array().unwrap();
        assert_eq!(rows[0]["system"], "student");
        let baseline = rows.iter().find(|r| !r["baseline"].is_null()).expect("a baseline row");
        let i = &baseline["interval"];
        assert!(
            i["low"].as_f64() <= i["value"].as_f64() && i["value"].as_f64() <= i["high"].as_f64()
        );
        let verdict = set["verdict"].as_str().unwrap();
        assert!(verdict.contains("better than the baseline: student − "), "{verdict}");
    }
    let page = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Beside trivial answers") && page.contains("baselines_note"));

    // Our API: one input and several; the same input gives the same (greedy) output.
    let (s, one) = post(&format!("{base}/v1/predict"), r#"{"input": "Chile"}"#).await;
    assert_eq!(s, 200, "{one}");
    let chile = one["output"].as_str().unwrap().to_string();
    let (s, many) =
        post(&format!("{base}/v1/predict"), r#"{"inputs": ["Chile", "Spain", "Peru"]}"#).await;
    assert_eq!(s, 200, "{many}");
    assert_eq!(many["outputs"].as_array().unwrap().len(), 3);
    assert_eq!(many["outputs"][0], chile, "batched and single decoding agree");

    // OpenAI's shapes, through reqwest …
    let (s, chat) = post(
        &format!("{base}/v1/chat/completions"),
        r#"{"model": "gpt-3.5-turbo", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "Chile"}], "temperature": 0.7}"#,
    )
    .await;
    assert_eq!(s, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["content"], chile);
    assert!(chat["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let (s, comp) =
        post(&format!("{base}/v1/completions"), r#"{"prompt": ["Chile", "Spain"]}"#).await;
    assert_eq!(s, 200, "{comp}");
    assert_eq!(comp["choices"][1]["index"], 1);
    assert_eq!(comp["choices"][0]["text"], chile);

    // … and through the `openai` package, as an application would after changing its base URL.
    let script = format!(
        r#"
import json, openai
client = openai.OpenAI(base_url="{base}/v1", api_key="unused")
chat = client.chat.completions.create(model="gpt-3.5-turbo", messages=[{{"role": "user", "content": "Chile"}}])
comp = client.completions.create(model="any", prompt="Chile", max_tokens=8)
models = client.models.list()
print(json.dumps({{"chat": chat.choices[0].message.content, "comp": comp.choices[0].text, "models": [m.id for m in models.data]}}))
"#
    );
    let python = std::env::var("P2M_PYTHON").expect(
        "P2M_PYTHON: the test venv's python (scripts/test.sh sets it; `bash scripts/setup.sh --python` makes it)",
    );
    let out = Command::new(python).arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chat"], chile);
    assert_eq!(v["models"][0], "serve-api");
    assert!(v["comp"].is_string());

    // Bad input: each a 4xx saying what is wrong; the server keeps answering.
    let predict = format!("{base}/v1/predict");
    let huge = format!("{{\"input\": \"{}\"}}", "a".repeat(10 << 20));
    expect_refusal(&predict, huge, 413, "--max-body-bytes").await;
    expect_refusal(&predict, r#"{"input": "Chile""#, 400, "JSON").await;
    expect_refusal(&predict, vec![b'{', 0xff, 0xfe, b'}'], 400, "JSON").await;
    expect_refusal(&predict, r#"{"input": "   "}"#, 400, "input 0 is empty").await;
    let long = serde_json::json!({ "input": "word ".repeat(10_000) }).to_string();
    expect_refusal(&predict, long, 400, "tokens with the instruction").await;
    expect_refusal(&predict, r#"{"text": "Chile"}"#, 422, "unknown field `text`").await;
    expect_refusal(&predict, r#"{}"#, 400, "missing field `input`").await;
    expect_refusal(
        &predict,
        r#"{"input": "Chile", "max_new_tokens": 100000}"#,
        400,
        "max new tokens",
    )
    .await;
    expect_refusal(
        &format!("{base}/v1/chat/completions"),
        r#"{"messages": []}"#,
        400,
        "role `user`",
    )
    .await;
    expect_refusal(
        &format!("{base}/v1/chat/completions"),
        r#"{"messages": [{"role": "user", "content": "x"}], "stream": true}"#,
        400,
        "stream",
    )
    .await;
    let r = http.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (s, _) = post(&predict, r#"{"input": "Chile"}"#).await;
    assert_eq!(s, 200, "still answering after the bad requests");

    // Load: 32 clients for 20 s, closed loop.
    let pid = server.child.id();
    let rss_before = rss_kib(pid);
    let report = run_load(
        &predict,
        serde_json::json!({ "input": "Chile" }),
        32,
        Duration::from_secs(20),
        None,
    )
    .await;
    let rss_after = rss_kib(pid);
    println!("load: {report}; server RSS {rss_before} → {rss_after} KiB");
    assert!(report.ok > 0, "{report}");
    assert_eq!(report.server_errors + report.transport_errors, 0, "{report}");
    assert!(
        rss_after < rss_before + 256 * 1024,
        "memory grew by {} KiB under load",
        rss_after.saturating_sub(rss_before)
    );

    // The metrics saw all of it, and concurrent requests were decoded together.
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "p2m_requests_total{endpoint=\"/v1/predict\",status=\"200\"}",
        "p2m_requests_total{endpoint=\"/v1/predict\",status=\"400\"}",
        "p2m_errors_total{kind=\"client\"}",
        "p2m_request_duration_seconds_bucket",
        "p2m_queue_depth",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics:\n{metrics}");
    }
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let (sum, count) = (value("p2m_batch_size_sum"), value("p2m_batch_size_count"));
    assert!(sum / count > 1.5, "mean batch {:.2} under 32 concurrent clients", sum / count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_api_and_sigterm_finishes_the_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _teacher) = smoke_run(dir.path(), "serve-token").await;
    let model = run.join("model");
    let server = start_server(
        &model,
        &["--token-env", "P2M_TEST_TOKEN"],
        &[("P2M_TEST_TOKEN", "s3cret-token")],
    );
    let http = reqwest::Client::new();
    let predict = format!("{}/v1/predict", server.url);
    let r = http.post(&predict).json(&serde_json::json!({ "input": "Chile" })).send().await;
    let r = r.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("Bearer"));
    let r = http
        .post(&predict)
        .bearer_auth("s3cret-token")
        .json(&serde_json::json!({ "input": "Chile" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A model folder (not a run folder) has no review.
    let r = http
        .get(format!("{}/api/review", server.url))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // ... nor baselines: the page says that none are known, and why.
    let info: serde_json::Value =
        http.get(format!("{}/api/info", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["baselines"], serde_json::json!([]), "{info}");
    let note = info["baselines_note"].as_str().unwrap();
    assert!(note.starts_with("No baselines are known") && note.contains("model folder"), "{note}");

    // SIGTERM while a long request is being decoded: it is answered, then the server stops.
    let inputs: Vec<String> = (0..64).map(|i| format!("country number {i}")).collect();
    let long = tokio::spawn({
        let (http, predict) = (http.clone(), predict.clone());
        async move {
            http.post(&predict)
                .bearer_auth("s3cret-token")
                .json(&serde_json::json!({ "inputs": inputs, "max_new_tokens": 256 }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = server;
    let kill =
        Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    assert_eq!(long.await.unwrap().expect("an answer, not a dropped connection"), 200);
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "p2m serve exits cleanly on SIGTERM: {status:?}");

    // A full queue answers 429 with Retry-After at once (one decoding, one waiting, the rest refused).
    let small = start_server(&model, &["--queue", "1", "--max-batch", "1"], &[]);
    let predict = format!("{}/v1/predict", small.url);
    let body = serde_json::json!({
        "inputs": (0..16).map(|i| format!("country {i}")).collect::<Vec<_>>(),
        "max_new_tokens": 128,
    });
    let answers = futures_util::future::join_all((0..8).map(|_| {
        let (http, predict, body) = (http.clone(), predict.clone(), body.clone());
        async move {
            let r = http.post(&predict).json(&body).send().await.unwrap();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.text().await.unwrap())
        }
    }))
    .await;
    assert!(answers.iter().any(|(s, _, _)| *s == 200), "{answers:?}");
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(!busy.is_empty(), "8 concurrent requests on a queue of 1: {answers:?}");
    assert!(busy
        .iter()
        .all(|(_, retry, text)| retry.as_deref() == Some("1") && text.contains("queue is full")));
    assert!(answers.iter().all(|(s, _, _)| *s == 200 || *s == 429), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_uses_the_page_and_reviews_the_data_and_the_next_run_trains_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let (run, teacher) = smoke_run(dir.path(), "serve-review").await;
    let server = start_server(&run, &[], &[]);
    let base = server.url.clone();
    let (_, expected) = post(&format!("{base}/v1/predict"), r#"{"input": "Chile"}"#).await;
    let expected = expected["output"].as_str().unwrap().to_string();
    let shots = common::repo_root().join("reports").join("serve");
    std::fs::create_dir_all(&shots).unwrap();

    let base_for_browser = base.clone();
    let shots_dir = shots.clone();
    let (output, demo_png) = tokio::task::spawn_blocking(move || {
        let mut b = Browser::start();
        b.navigate(&base_for_browser);
        b.wait_for(
            "document.querySelectorAll('#demos button').length > 0 && document.getElementById('input').value",
            "the page to show the demonstrations",
            Duration::from_secs(30),
        );
        b.eval("document.getElementById('input').value = 'Chile'; document.getElementById('run').click(); true");
        let output = b.wait_for(
            "document.getElementById('latency').textContent && document.getElementById('output').textContent",
            "the model's output in the page",
            Duration::from_secs(60),
        );
        let status = b.eval("document.getElementById('status').textContent");
        assert_eq!(status, "", "the page reported an error");
        // The run's baselines are on the page, with the paired test's verdict.
        let baselines = b.eval(
            "document.getElementById('baselines-box').hidden ? '' : document.getElementById('baselines').textContent",
        );
        let baselines = baselines.as_str().unwrap();
        assert!(
            baselines.contains("baseline: ") && baselines.contains("The student is "),
            "the page shows no baselines: {baselines}"
        );
        let png = b.screenshot();
        std::fs::write(shots_dir.join("demo.png"), &png).unwrap();
        (output.as_str().unwrap().to_string(), png)
    })
    .await
    .unwrap();
    assert_eq!(output, expected, "the page shows what the API answers");
    let (colours, top) = png_colour_stats(&demo_png);
    assert!(colours > 50 && top < 0.95, "the screenshot is blank: {colours} colours, top {top:.2}");

    // Review: edit one example's output, reject another, change the instruction, save, reload.
    let generated = run.join("generation/examples.jsonl");
    let teacher_file = std::fs::read(&generated).unwrap();
    let base_for_browser = base.clone();
    let shots_dir = shots.clone();
    let (after_reload, review_png) = tokio::task::spawn_blocking(move || {
        let mut b = Browser::start();
        b.navigate(&format!("{base_for_browser}/review"));
        b.wait_for(
            "document.querySelectorAll('#rows tr').length >= 2",
            "the examples table",
            Duration::from_secs(30),
        );
        b.eval(
            r#"(() => {
                const rows = document.querySelectorAll('#rows tr');
                const out = rows[0].querySelector('textarea.edit-output');
                out.value = 'EDITED BY THE BROWSER TEST';
                out.dispatchEvent(new Event('change'));
                rows[1].querySelector('button.reject').click();
                const ins = document.getElementById('instruction');
                ins.value = ins.value + ' Answer with the city only.';
                document.getElementById('save').click();
                return true;
            })()"#,
        );
        b.wait_for(
            "document.getElementById('save-status').textContent.startsWith('Saved')",
            "the save to finish",
            Duration::from_secs(30),
        );
        b.call("Page.reload", serde_json::json!({}));
        b.wait_for(
            "document.querySelectorAll('#rows tr').length >= 2",
            "the reloaded table",
            Duration::from_secs(30),
        );
        let after = b.eval(
            r#"(() => {
                const rows = document.querySelectorAll('#rows tr');
                return {
                    first_output: rows[0].querySelector('textarea.edit-output').value,
                    first_class: rows[0].className,
                    second_class: rows[1].className,
                    instruction: document.getElementById('instruction').value,
                };
            })()"#,
        );
        let png = b.screenshot();
        std::fs::write(shots_dir.join("review.png"), &png).unwrap();
        (after, png)
    })
    .await
    .unwrap();
    assert_eq!(after_reload["first_output"], "EDITED BY THE BROWSER TEST", "{after_reload}");
    assert_eq!(after_reload["first_class"], "edited");
    assert_eq!(after_reload["second_class"], "rejected");
    assert!(after_reload["instruction"].as_str().unwrap().ends_with("Answer with the city only."));
    let (colours, top) = png_colour_stats(&review_png);
    assert!(colours > 50 && top < 0.95, "the review screenshot is blank");

    // The teacher's output is untouched; the review folder holds the data and the log.
    assert_eq!(std::fs::read(&generated).unwrap(), teacher_file);
    let reviewed = std::fs::read_to_string(run.join("review/examples.jsonl")).unwrap();
    let n_generated = String::from_utf8_lossy(&teacher_file).lines().count();
    assert_eq!(reviewed.lines().count(), n_generated - 1, "one rejected");
    assert!(reviewed.contains("EDITED BY THE BROWSER TEST"));
    let log = std::fs::read_to_string(run.join("review/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "two examples and the prompt:\n{log}");
    drop(server);

    // The next run trains on the review: assembly onwards is redone, nothing before, no teacher call.
    let requests = teacher.state.request_count();
    let runs = run.parent().unwrap().to_path_buf();
    let prompt = dir.path().join("prompt.txt");
    let args = fake_args(prompt.to_str().unwrap(), &teacher.base_url, "serve-review");
    let out = ok(run_blocking(p2m(&runs, &args)).await);
    assert_eq!(teacher.state.request_count(), requests, "{out}");
    for (stage, state) in [
        ("parse", "cached"),
        ("generation", "cached"),
        ("assembly", "ran"),
        ("training", "ran"),
        ("evaluation", "ran"),
        ("package", "ran"),
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(stage) && l.contains(state)),
            "{stage} should be {state}:\n{out}"
        );
    }
    let train = std::fs::read_to_string(run.join("assembly/train.jsonl")).unwrap()
        + &std::fs::read_to_string(run.join("assembly/validation.jsonl")).unwrap()
        + &std::fs::read_to_string(run.join("assembly/test.jsonl")).unwrap();
    assert!(train.contains("EDITED BY THE BROWSER TEST"), "the edit reached the assembled data");
    let manifest = std::fs::read_to_string(run.join("model/p2m.json")).unwrap();
    assert!(
        manifest.contains("Answer with the city only."),
        "the packaged model has the reviewed instruction"
    );
}

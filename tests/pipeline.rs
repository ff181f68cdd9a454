//! `p2m run` as a user runs it: a loopback OpenAI-compatible teacher or the recorded teacher, a
//! tiny student (scale `smoke`), kills at stage boundaries and mid-stage, edits, and bad input.

use crate::common;
use crate::fake_openai::{FakeServer, ServerConfig};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const PROMPT: &str = "Given the name of a country, answer with the name of its capital city.\n\nInput: France\nOutput: Paris\n\nInput: Japan\nOutput: Tokyo\n";

/// `p2m run …` with its runs under `runs` and no network.
pub(crate) fn p2m(runs: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2m"));
    c.args(args)
        .current_dir(common::repo_root())
        .env("P2M_RUNS", runs)
        .env("P2M_OFFLINE", "1")
        .env("RUST_LOG", "warn");
    c
}

pub(crate) fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "p2m failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

pub(crate) fn prompt_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("prompt.txt");
    std::fs::write(&p, text).unwrap();
    p
}

/// The arguments of a smoke run against the fake teacher at `url` (unthrottled; 20 examples).
pub(crate) fn fake_args<'a>(prompt: &'a str, url: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--prompt-file",
        prompt,
        "--name",
        name,
        "--scale",
        "smoke",
        "--teacher",
        "openai",
        "--base-url",
        url,
        "--model",
        "fake-model",
        "--requests-per-minute",
        "0",
        "--no-dataset-retrieval",
        "--test-dataset",
        "temporal",
    ]
}

fn stage_json(run: &Path, stage: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join(stage).join("stage.json")).unwrap())
        .unwrap()
}

fn weights_sha(run: &Path) -> String {
    common::sha256_hex(&std::fs::read(run.join("model/model.safetensors")).unwrap())
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("evaluation/metrics.json")).unwrap())
        .unwrap()
}

pub(crate) async fn run_blocking(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_against_a_fake_teacher_packages_a_model_and_a_rerun_is_free() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let args = fake_args(prompt.to_str().unwrap(), &server.base_url, "capitals");
    let out = ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("capitals");
    let model = run.join("model");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "p2m.json",
        "model_card.md",
        "prompt.txt",
    ] {
        assert!(model.join(f).is_file(), "model/{f} missing; output:\n{out}");
    }
    // Disk: resume checkpoints go once training is done, and the packaged weights share the
    // trained weights' bytes (a hard link) instead of a second copy.
    assert!(!run.join("training/checkpoints").exists(), "checkpoints left after training");
    {
        use std::os::unix::fs::MetadataExt;
        let packaged = std::fs::metadata(model.join("model.safetensors")).unwrap();
        let trained = std::fs::metadata(run.join("training/final/model.safetensors")).unwrap();
        assert_eq!(packaged.ino(), trained.ino(), "model/ holds a copy, not a link");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("p2m.json")).unwrap()).unwrap();
    assert!(manifest["instruction"].as_str().unwrap().contains("capital city"));
    assert_eq!(manifest["demonstrations"].as_array().unwrap().len(), 2);
    let m = metrics(&run);
    for set in ["generated", "real"] {
        for metric in ["em", "em-squad", "chrf++"] {
            let r = m
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["test_set"] == set && r["metric"] == metric)
                .unwrap_or_else(|| panic!("{set} {metric} in {m}"));
            let (v, lo, hi) = (
                r["value"].as_f64().unwrap(),
                r["low"].as_f64().unwrap(),
                r["high"].as_f64().unwrap(),
            );
            assert!(lo <= v && v <= hi, "{r}");
            assert!(r["signature"]
                .as_str()
                .unwrap()
                .contains("bootstrap:percentile|resamples:1000"));
        }
    }
    let card = std::fs::read_to_string(model.join("model_card.md")).unwrap();
    assert!(
        card.contains("## Metrics") && card.contains("95 %") && card.contains("fake-model"),
        "{card}"
    );
    assert!(
        run.join("evaluation/report/metrics.png").is_file()
            && run.join("evaluation/predictions_real.parquet").is_file()
    );
    let requests = server.state.request_count();
    assert!(requests > 0);

    // A rerun: every stage up to date, no teacher call.
    let again = ok(run_blocking(p2m(&runs, &args)).await);
    assert_eq!(
        server.state.request_count(),
        requests,
        "a finished run makes no teacher call:\n{again}"
    );
    assert!(again.matches("cached").count() >= 8, "{again}");

    // The packaged model predicts on its own (instruction and settings from p2m.json).
    let inputs = dir.path().join("in.jsonl");
    std::fs::write(
        &inputs,
        "{\"input\": \"Chile\"}\n{\"input\": \"Spain\", \"output\": \"Madrid\"}\n",
    )
    .unwrap();
    let preds = dir.path().join("preds.parquet");
    let out = ok(run_blocking(p2m(
        &runs,
        &[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--input",
            inputs.to_str().unwrap(),
            "--out",
            preds.to_str().unwrap(),
        ],
    ))
    .await);
    assert!(preds.is_file() && out.contains("2 predictions"), "{out}");
    // The same as JSON lines (the file named .jsonl is JSON lines, not parquet), the same answers;
    // an output name that is neither is refused before predicting.
    let predict_to = |name: &str| {
        let path = dir.path().join(name);
        let args: Vec<String> = ["predict", "--model", model.to_str().unwrap(), "--input"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                inputs.to_str().unwrap().to_string(),
                "--out".into(),
                path.display().to_string(),
            ])
            .collect();
        (path, args)
    };
    let (jsonl, args) = predict_to("preds.jsonl");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run_blocking(p2m(&runs, &refs)).await);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let parquet = prompt2model::report::read_parquet(&preds).unwrap();
    let from_parquet = prompt2model::data::loaders::string_column(&parquet, "prediction").unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["input"], "Chile");
    assert!(lines[0].get("output").is_none() && lines[1]["output"] == "Madrid", "{lines:?}");
    for (line, p) in lines.iter().zip(&from_parquet) {
        assert_eq!(line["prediction"].as_str().unwrap(), p);
    }
    // bf16 products while predicting: a flag, the same two rows.
    let (bf16, mut args) = predict_to("preds-bf16.jsonl");
    args.extend(["--precision".to_string(), "bf16".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(run_blocking(p2m(&runs, &refs)).await);
    assert_eq!(std::fs::read_to_string(&bf16).unwrap().lines().count(), 2, "{out}");
    let (csv, args) = predict_to("preds.csv");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = run_blocking(p2m(&runs, &refs)).await;
    let text = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success() && text.contains(".jsonl") && text.contains("preds.csv"),
        "{text}"
    );
    assert!(!csv.exists());

    // `p2m runs` finds it.
    let list = ok(run_blocking(p2m(&runs, &["runs", "list"])).await);
    assert!(list.contains("capitals") && list.contains("complete"), "{list}");
    let show = ok(run_blocking(p2m(&runs, &["runs", "show", "capitals"])).await);
    assert!(
        show.contains("examples.jsonl") && show.contains("training") && show.contains("chrf++"),
        "{show}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_teacher_trains_on_the_authors_generations() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let out = ok(run_blocking(p2m(
        &runs,
        &["run", "--task", "temporal", "--teacher", "recorded", "--scale", "smoke"],
    ))
    .await);
    let run = runs.join("temporal-recorded");
    let gen = stage_json(&run, "generation");
    assert!(gen["summary"].as_str().unwrap().contains("recorded from gpt-3.5-turbo"), "{gen}");
    let notes = std::fs::read_to_string(run.join("assembly/notes.json")).unwrap();
    assert!(
        notes.contains("removed from the training pool"),
        "the recorded generated test set is held out: {notes}"
    );
    assert!(run.join("model/p2m.json").is_file(), "{out}");
    let m = metrics(&run);
    assert!(m
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["test_set"] == "real" && r["metric"] == "chrf++"));
    // Only paper tasks have recorded generations.
    let prompt = prompt_file(dir.path(), PROMPT);
    let bad = run_blocking(p2m(
        &runs,
        &[
            "run",
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--teacher",
            "recorded",
            "--scale",
            "smoke",
        ],
    ))
    .await;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--teacher recorded needs a paper task"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_generated_examples_redoes_exactly_the_stages_after_generation() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let args = fake_args(prompt.to_str().unwrap(), &server.base_url, "edit");
    ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("edit");
    let examples = run.join("generation/examples.jsonl");
    let text = std::fs::read_to_string(&examples).unwrap();
    let kept: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&examples, kept.join("\n") + "\n").unwrap();
    let before = server.state.request_count();
    let out = ok(run_blocking(p2m(&runs, &args)).await);
    assert_eq!(server.state.request_count(), before, "no teacher call: {out}");
    let ran =
        |stage: &str| out.lines().any(|l| l.trim_start().starts_with(stage) && l.contains(" ran "));
    for stage in ["parse", "dataset-retrieval", "generation", "model-retrieval"] {
        assert!(!ran(stage), "{stage} should be cached:\n{out}");
    }
    for stage in ["assembly", "training", "evaluation", "package"] {
        assert!(ran(stage), "{stage} should run again:\n{out}");
    }
    assert_eq!(
        std::fs::read_to_string(&examples).unwrap(),
        kept.join("\n") + "\n",
        "the edit is kept"
    );
}

/// Wait until `ready` holds (polling), then SIGKILL the child.
fn kill_when(child: &mut std::process::Child, ready: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("p2m ended ({status}) before {what}");
        }
        assert!(start.elapsed() < Duration::from_secs(180), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_generation_mid_training_and_between_stages_then_resumed_ends_as_an_uninterrupted_run(
) {
    let dir = tempfile::tempdir().unwrap();
    let prompt = prompt_file(dir.path(), PROMPT);
    // More training than the smoke default, so a kill can land between checkpoints.
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "max_train_examples = 200\nnum_examples = 40\n[train]\nbatch_size = 4\ncheckpoint_every = 1\nepochs = 2\n").unwrap();
    let args = |url: &str, name: &str| -> Vec<String> {
        let mut a: Vec<String> = fake_args(prompt.to_str().unwrap(), url, name)
            .into_iter()
            .map(str::to_string)
            .collect();
        a.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
        a
    };
    let as_refs = |v: &[String]| v.iter().map(String::to_string).collect::<Vec<_>>();

    // The uninterrupted reference run.
    let clean_server = FakeServer::start(ServerConfig::default()).await;
    let clean_runs = dir.path().join("clean");
    let a = as_refs(&args(&clean_server.base_url, "r"));
    ok(run_blocking(p2m(&clean_runs, &a.iter().map(String::as_str).collect::<Vec<_>>())).await);

    // The same run, killed three times. The server holds every request after its 3rd answer, so
    // the first kill lands mid-generation with no answer lost (nothing is paid twice).
    let server =
        FakeServer::start(ServerConfig { freeze_after_ok: Some(3), ..Default::default() }).await;
    let runs = dir.path().join("killed");
    let run = runs.join("r");
    let a = as_refs(&args(&server.base_url, "r"));
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let state = server.state.clone();
    let mut child = p2m(&runs, &argv).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let journal = run.join("generation/checkpoint.jsonl");
    tokio::task::block_in_place(|| {
        kill_when(
            &mut child,
            || state.frozen.load(std::sync::atomic::Ordering::SeqCst) && journal.exists(),
            "generation was under way",
        );
    });
    assert_eq!(stage_json(&run, "generation")["status"], "running");
    server.unfreeze();

    // Second: right after generation finished (a stage boundary).
    let mut child = p2m(&runs, &argv).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let gen_record = run.join("generation/stage.json");
    tokio::task::block_in_place(|| {
        kill_when(
            &mut child,
            || std::fs::read_to_string(&gen_record).is_ok_and(|t| t.contains("\"done\"")),
            "generation was done",
        );
    });

    // Third: mid-training, once a few checkpoints exist.
    let mut child = p2m(&runs, &argv).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let checkpoints = run.join("training/checkpoints");
    tokio::task::block_in_place(|| {
        kill_when(
            &mut child,
            || {
                std::fs::read_dir(&checkpoints).is_ok_and(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
                        .count()
                        >= 2
                })
            },
            "training had checkpoints",
        );
    });
    assert_eq!(stage_json(&run, "training")["status"], "running");

    // Finish.
    ok(run_blocking(p2m(&runs, &argv)).await);
    let answered = server.state.ok_digests.lock().unwrap().clone();
    let unique: std::collections::HashSet<&String> = answered.iter().collect();
    assert_eq!(unique.len(), answered.len(), "no request answered twice (nothing paid twice)");
    assert_eq!(weights_sha(&run), weights_sha(&clean_runs.join("r")), "identical final weights");
    assert_eq!(metrics(&run), metrics(&clean_runs.join("r")), "identical metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let fail = |args: Vec<String>| {
        let out =
            p2m(&runs, &args.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap();
        assert!(!out.status.success(), "should fail: {args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let err = fail(s(&["run", "--prompt-file", empty.to_str().unwrap(), "--scale", "smoke"]));
    assert!(err.contains("the prompt is empty"), "{err}");
    let err = fail(s(&["run", "--task", "nope", "--scale", "smoke"]));
    assert!(
        err.contains("unknown task `nope`") && err.contains("squad") && err.contains("temporal"),
        "{err}"
    );
    let err = fail(s(&["run", "--task", "temporal", "--teacher", "recorded", "--scale", "huge"]));
    assert!(err.contains("unknown scale `huge`") && err.contains("laptop"), "{err}");
    let prompt = prompt_file(dir.path(), PROMPT);
    // An unreachable teacher: the URL is named and the offline teacher suggested.
    let err = fail(s(&[
        "run",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--scale",
        "smoke",
        "--teacher",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--requests-per-minute",
        "0",
        "--no-dataset-retrieval",
        "--name",
        "unreachable",
    ]));
    assert!(err.contains("127.0.0.1:9") && err.contains("--teacher local"), "{err}");
    // A priced model without a budget: the estimate, and how to allow it.
    let err = fail(s(&[
        "run",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--scale",
        "smoke",
        "--teacher",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "gpt-3.5-turbo",
        "--no-dataset-retrieval",
        "--name",
        "priced",
    ]));
    assert!(err.contains("would cost about $") && err.contains("--budget"), "{err}");
    let err = fail(s(&[
        "run",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--scale",
        "smoke",
        "--teacher",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "gpt-3.5-turbo",
        "--budget",
        "0.0001",
        "--no-dataset-retrieval",
        "--name",
        "priced",
    ]));
    assert!(err.contains("would cost about $"), "a budget below the estimate stops too: {err}");
    // Another prompt in the same run folder is refused without --force.
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "Translate English to French.\n\nInput: cat\nOutput: chat\n").unwrap();
    let err = fail(s(&[
        "run",
        "--prompt-file",
        other.to_str().unwrap(),
        "--scale",
        "smoke",
        "--name",
        "priced",
        "--teacher",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ]));
    assert!(err.contains("another prompt") && err.contains("--force"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_without_demonstrations_runs_with_a_warning_and_a_japanese_one_is_noted() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let prompt = prompt_file(dir.path(), "Answer with the capital city of the given country.");
    let mut args = fake_args(prompt.to_str().unwrap(), &server.base_url, "nodemos");
    args.push("--interactive");
    let mut c = p2m(&runs, &args);
    c.stdin(Stdio::null());
    let out = ok(run_blocking(c).await);
    assert!(out.contains("no demonstrations"), "{out}");
    assert!(
        out.contains("not a terminal: running on autopilot"),
        "--interactive without a terminal says so once: {out}"
    );
    let ja = dir.path().join("ja.txt");
    std::fs::write(&ja, "国の名前が与えられたら、その首都の名前を答えてください。\n\nInput: フランス\nOutput: パリ\n").unwrap();
    let out =
        ok(run_blocking(p2m(&runs, &fake_args(ja.to_str().unwrap(), &server.base_url, "ja")))
            .await);
    assert!(out.contains("Japanese"), "{out}");
    // With --translate-instruction the retrievers search with the teacher's translation.
    let mut args = fake_args(ja.to_str().unwrap(), &server.base_url, "ja-translated");
    args.push("--translate-instruction");
    ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("ja-translated");
    let query = std::fs::read_to_string(run.join("parse/retrieval_query.txt")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("parse/parsed.json")).unwrap())
            .unwrap();
    assert!(
        !query.trim().is_empty() && query != parsed["instruction"].as_str().unwrap(),
        "{query}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_student_trains_each_candidate_briefly_and_reports_every_score() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let config = dir.path().join("run.toml");
    // Two tiny students of different sizes stand in for the candidates (the smoke scale).
    std::fs::write(
        &config,
        "selection_steps = 2\nselect_candidates = [\"tiny:32:1:2\", \"tiny:48:1:2\"]\n",
    )
    .unwrap();
    let mut args = fake_args(prompt.to_str().unwrap(), &server.base_url, "select");
    args.extend(["--select-student", "2", "--config", config.to_str().unwrap()]);
    let out = ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("select");
    let sel: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("training/selection.json")).unwrap(),
    )
    .unwrap();
    let scores = sel["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2, "{sel}");
    assert_eq!(scores[0][0], "tiny:32:1:2");
    let best = scores.iter().map(|s| s[1].as_f64().unwrap()).fold(f64::MIN, f64::max);
    let chosen = scores.iter().find(|s| s[0] == sel["chosen"]).unwrap();
    assert_eq!(chosen[1].as_f64().unwrap(), best, "the best candidate is kept");
    let report = std::fs::read_to_string(run.join("evaluation/report/README.md")).unwrap();
    assert!(
        report.contains("student selection") && report.contains("tiny:32:1:2"),
        "{report}\n{out}"
    );
}

/// A full disk mid-stage: writes past a file-size limit fail (EFBIG, as ENOSPC would), the stage
/// is not marked done, the error names what failed, and a rerun with room finishes the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_mid_stage_leaves_it_unfinished_and_a_rerun_completes() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let args = fake_args(prompt.to_str().unwrap(), &server.base_url, "full");
    // 1 MiB per file: the teacher cache and the examples fit, the student's weights do not.
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec \"$0\" {}",
        args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
    );
    let mut c = Command::new("bash");
    c.args(["-c", &script, env!("CARGO_BIN_EXE_p2m")])
        .current_dir(common::repo_root())
        .env("P2M_RUNS", &runs)
        .env("P2M_OFFLINE", "1")
        .env("RUST_LOG", "warn");
    let out = run_blocking(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run should fail: {err}");
    assert!(err.contains("stage `training` failed") && err.contains("File too large"), "{err}");
    let run = runs.join("full");
    assert_eq!(stage_json(&run, "generation")["status"], "done");
    assert_eq!(
        stage_json(&run, "training")["status"],
        "running",
        "the failed stage is not marked done"
    );
    ok(run_blocking(p2m(&runs, &args)).await);
    assert_eq!(stage_json(&run, "training")["status"], "done");
    assert!(run.join("model/model.safetensors").is_file());
}

/// `--budget`: a priced teacher's run stops before its first call unless the estimate fits; within
/// the run the budget caps the paid calls, the run stops cleanly with everything kept, and a rerun
/// with a larger budget continues without paying for any answer twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_a_priced_run_cleanly_and_a_larger_one_continues_it() {
    // One choice per request whatever `n` asks (as llama.cpp's server): far more requests than the
    // estimate assumes.
    let server = FakeServer::start(ServerConfig { ignore_n: true, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let base: Vec<String> = fake_args(prompt.to_str().unwrap(), &server.base_url, "budget")
        .into_iter()
        .map(|a| if a == "fake-model" { "gpt-3.5-turbo".to_string() } else { a.to_string() })
        .collect();
    let with = |extra: &[&str]| -> Command {
        let mut a = base.clone();
        a.extend(extra.iter().map(|x| x.to_string()));
        p2m(&runs, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run_blocking(with(&[])).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("would cost about $"), "{err}");
    assert_eq!(server.state.request_count(), 0, "nothing is sent before the budget allows it");
    let suggested = err
        .split("pass --budget ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();

    let out = run_blocking(with(&["--budget", &suggested])).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("stopped at the budget"), "{err}");
    let run = runs.join("budget");
    assert_eq!(stage_json(&run, "generation")["status"], "running");
    let paid_first = server.state.ok_count();
    assert!(paid_first > 0);

    ok(run_blocking(with(&["--budget", "100"])).await);
    assert!(run.join("model/p2m.json").is_file());
    let answered = server.state.ok_digests.lock().unwrap().clone();
    let unique: std::collections::HashSet<&String> = answered.iter().collect();
    assert_eq!(unique.len(), answered.len(), "no answer paid for twice");
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("generation/generation_log.json")).unwrap(),
    )
    .unwrap();
    assert!(log["cost_usd"].as_f64().unwrap() > 0.0, "the spend is tracked: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_folder_in_use_stops_naming_the_holder_or_waits_with_wait() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let args = ["run", "--task", "temporal", "--teacher", "recorded", "--scale", "smoke"];
    let mut first = p2m(&runs, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // The holder writes its pid into the lock file once it holds the lock.
    let lock = runs.join("temporal-recorded").join("run.lock");
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid")) {
        assert!(first.try_wait().unwrap().is_none(), "the first run ended before it was seen");
        assert!(start.elapsed() < Duration::from_secs(60), "no lock written");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = run_blocking(p2m(&runs, &args)).await;
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("in use by another process") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    assert!(err.contains("--wait"), "{err}");
    assert!(first.wait().unwrap().success());
    // With --wait a run queues behind the holder (here this test process) and goes on once it
    // lets go, finding every stage done.
    let held = std::fs::OpenOptions::new().read(true).write(true).open(&lock).unwrap();
    held.lock().unwrap();
    let mut waiting = args.to_vec();
    waiting.push("--wait");
    let third = p2m(&runs, &waiting).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut third = third;
    assert!(third.try_wait().unwrap().is_none(), "it waits while the folder is held");
    held.unlock().unwrap();
    let out = ok(run_blocking_child(third).await);
    assert!(out.contains("waiting for"), "{out}");
    assert!(!out.contains("] starting"), "every stage was done by the first run: {out}");
}

async fn run_blocking_child(child: std::process::Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap()
}

/// A sentiment prompt (answer `positive` or `negative`) and a balanced real test set of 20 reviews.
fn sentiment_files(dir: &Path, framing: &str) -> (PathBuf, PathBuf) {
    let prompt = prompt_file(
        dir,
        &format!("Classify the sentiment of a product review{framing}. Answer with exactly one word: positive or negative.\n\nInput: Works perfectly, I love it.\nOutput: positive\n\nInput: It broke after one day.\nOutput: negative\n"),
    );
    let test = dir.join("reviews.jsonl");
    let rows: String = (0..20)
        .map(|i| {
            let (text, label) = if i % 2 == 0 {
                ("great value", "positive")
            } else {
                ("waste of money", "negative")
            };
            format!("{{\"input\": \"Review {i}: {text}.\", \"output\": \"{label}\"}}\n")
        })
        .collect();
    std::fs::write(&test, rows).unwrap();
    (prompt, test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_class_data_stops_before_training_and_accepted_it_is_no_better_than_the_majority() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (prompt, test) = sentiment_files(dir.path(), " written by our happy customers");
    let (prompt, test) = (prompt.to_str().unwrap(), test.to_str().unwrap());
    let mut args = fake_args(prompt, &server.base_url, "reviews");
    let at = args.iter().position(|a| *a == "temporal").unwrap();
    args[at] = test;
    let refused = run_blocking(p2m(&runs, &args)).await;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("negative") && err.contains("--accept-data"), "{err}");
    assert!(err.contains("review"), "the fix names the review page: {err}");
    let run = runs.join("reviews");
    assert!(!run.join("training/final").exists(), "nothing was trained");
    let diagnostics = std::fs::read_to_string(run.join("assembly/diagnostics.json")).unwrap();
    assert!(diagnostics.contains("positive"), "{diagnostics}");

    // Accepted as it is: trained, judged by accuracy and macro-F1, beside the majority answer.
    args.push("--accept-data");
    let out = ok(run_blocking(p2m(&runs, &args)).await);
    let choice = std::fs::read_to_string(run.join("evaluation/metric_choice.json")).unwrap();
    assert!(choice.contains("macro-f1"), "{choice}");
    let baselines = std::fs::read_to_string(run.join("evaluation/baselines.json")).unwrap();
    assert!(baselines.contains("majority"), "{baselines}");
    assert!(out.contains("not better than the baseline"), "{out}");
    let card = std::fs::read_to_string(run.join("model/model_card.md")).unwrap();
    assert!(card.contains("--accept-data") && card.contains("majority"), "{card}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_classification_data_trains_and_is_judged_by_accuracy_and_macro_f1() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (prompt, test) = sentiment_files(dir.path(), "");
    let (prompt, test) = (prompt.to_str().unwrap(), test.to_str().unwrap());
    let mut args = fake_args(prompt, &server.base_url, "balanced");
    let at = args.iter().position(|a| *a == "temporal").unwrap();
    args[at] = test;
    ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("balanced");
    let gate = std::fs::read_to_string(run.join("training/data_gate.json")).unwrap();
    assert!(gate.contains("passed"), "{gate}");
    let choice: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("evaluation/metric_choice.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(choice["headline"], serde_json::json!(["em", "macro-f1"]), "{choice}");
}

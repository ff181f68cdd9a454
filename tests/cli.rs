//! The `p2m` binary as a user runs it.

use crate::common;

use std::process::Command;

fn p2m(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_p2m"))
        .args(args)
        .current_dir(common::repo_root())
        .output()
        .unwrap()
}

#[test]
fn score_jsonl_with_multiple_references_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preds.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"prediction": "The Denver Broncos", "references": ["Denver Broncos", "the Denver Broncos"]}"#, "\n",
            r#"{"prediction": "Santa Clara", "references": "Santa Clara, California"}"#, "\n",
        ),
    )
    .unwrap();
    let out = p2m(&[
        "score",
        "-p",
        path.to_str().unwrap(),
        "-m",
        "em",
        "-m",
        "em-squad",
        "-m",
        "chrf++",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scores = v["scores"].as_array().unwrap();
    assert_eq!(scores[0]["value"], 0.0); // raw: neither matches exactly
    assert_eq!(scores[1]["value"], 50.0); // SQuAD normalisation drops "The"
    let expected = prompt2model::evaluator::score(
        prompt2model::evaluator::Metric::ChrfPlusPlus,
        &["The Denver Broncos", "Santa Clara"],
        &[vec!["Denver Broncos", "the Denver Broncos"], vec!["Santa Clara, California"]],
    )
    .unwrap();
    assert!((scores[2]["value"].as_f64().unwrap() - expected.value).abs() < 1e-12);
    assert!(scores[2]["signature"].as_str().unwrap().contains("nrefs:var"));
}

#[test]
fn score_csv_with_reference_columns_prints_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preds.csv");
    std::fs::write(&path, "pred,gold\nabc,abc\nabd,xyz\n").unwrap();
    let out = p2m(&[
        "score",
        "-p",
        path.to_str().unwrap(),
        "--prediction-col",
        "pred",
        "--reference-col",
        "gold",
        "-m",
        "em",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("EM = 50.00, 95% CI [0.00, 100.00]  (n=2; em|norm:raw"), "{text}");
    assert!(
        text.trim_end().ends_with("bootstrap:percentile|resamples:1000|conf:0.95|seed:0)"),
        "{text}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preds.jsonl");
    std::fs::write(&path, "{\"prediction\": \"a\", \"references\": [\"a\"]}\n{\"pred\": \"b\"}\n")
        .unwrap();
    let out = p2m(&["score", "-p", path.to_str().unwrap(), "-m", "em"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2")
            && err.contains("no field `prediction`")
            && err.contains("--prediction-col"),
        "{err}"
    );

    let out = p2m(&["score", "-p", "/nonexistent/preds.txt", "-m", "em"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --format"));
}

#[test]
fn table2_names_a_bad_scale_and_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_table2"))
        .args(["--scale", "nosuch"])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no scale `nosuch`") && err.contains("laptop"), "{err}");
}

#[test]
fn bertscore_runs_on_a_recorded_prediction_set() {
    // gpt-3.5-turbo's recorded MCoNaLa outputs (210 rows), scored with the offline encoder.
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let p = prompt2model::tables::load_recorded_predictions(
        &registry,
        "p2m_runs/baseline/gpt_baseline/results/jp2python_gpt_results",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jp2python.jsonl");
    let lines: Vec<String> = p
        .predictions
        .iter()
        .zip(&p.references)
        .map(|(pred, refs)| {
            serde_json::json!({ "prediction": pred, "references": refs }).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = p2m(&["score", "-p", path.to_str().unwrap(), "--bertscore", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &v["bertscore"];
    assert_eq!(b["n"], 210);
    let f1 = b["f1"].as_f64().unwrap();
    assert!(f1 > 0.3 && f1 < 1.0, "F1 {f1}");
    assert!(b["signature"]
        .as_str()
        .unwrap()
        .starts_with("BERTScore|model:all-MiniLM-L6-v2|layer:6"));
    // The same numbers as the library computes directly.
    let models = prompt2model::models::registry::ModelRegistry::from_env().unwrap();
    let scorer = prompt2model::evaluator::bertscore::BertScorer::offline_default(&models).unwrap();
    let direct = scorer.score_multi(&p.predictions, &p.references).unwrap().mean();
    assert!((direct.2 - f1).abs() < 1e-9, "{} vs {f1}", direct.2);
}

/// Every command that calls an LLM takes the one `TeacherArgs`, whose default is the reference's
/// 80 requests a minute, for any server: `p2m generate` against a server that allows 90/min (one
/// request of burst) is never rate-limited, while the same run with `--requests-per-minute 0`
/// (no limit) is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_teacher_command_defaults_to_80_requests_a_minute() {
    use crate::fake_openai::{FakeServer, ServerConfig};
    for command in ["generate", "diversity", "retrieve-model", "retrieve-dataset"] {
        let help = String::from_utf8(p2m(&[command, "--help"]).stdout).unwrap();
        assert!(
            help.contains("--requests-per-minute") && help.contains("[default: 80]"),
            "{command} --help:\n{help}"
        );
        assert!(help.contains("--teacher"), "{command} --help:\n{help}");
    }
    let run = |base_url: String, extra: &'static [&'static str]| async move {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap().to_string();
        let mut args = vec![
            "generate",
            "--task",
            "temporal",
            "--n",
            "12",
            "--deterministic-parse",
            "--teacher",
            "openai",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args
            .into_iter()
            .map(str::to_string)
            .chain(["--base-url".into(), base_url, "--out".into(), out])
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_p2m"))
                .args(&args)
                .current_dir(common::repo_root())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    // The server allows a little more than 80/min, so network jitter between paced requests is not a 429.
    let limited = || ServerConfig { rpm_limit: Some(90.0), rpm_burst: 1.0, ..Default::default() };

    let server = FakeServer::start(limited()).await;
    run(server.base_url.clone(), &[]).await;
    let seen = server.state.seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "the run should need several requests, saw {}", seen.len());
    assert_eq!(
        server.state.rate_limited.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the default pacing kept under the server's limit"
    );
    for w in seen.windows(2) {
        let gap = w[1].at.duration_since(w[0].at).as_secs_f64();
        assert!(gap > 0.6, "requests {gap:.3} s apart; 80/min paces them 0.75 s apart");
    }

    let server = FakeServer::start(limited()).await;
    run(server.base_url.clone(), &["--requests-per-minute", "0"]).await;
    assert!(
        server.state.rate_limited.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "without a limit the same run exceeds 80/min (so the first run's pacing came from the default)"
    );
}

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
    assert!(text.starts_with("EM = 50.00  (n=2; em|norm:raw"), "{text}");
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

//! The `p2m-score` binary as a user runs it: the same numbers as the library, intervals by
//! default, clear errors, and no libtorch among the libraries it loads.

use std::process::{Command, Output};

use p2m_metrics::bootstrap::{score_with_interval, BootstrapConfig};
use p2m_metrics::{score, Metric};

fn p2m_score(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p2m-score")).args(args).output().unwrap()
}

const PREDICTIONS: [&str; 4] = ["The Denver Broncos", "Santa Clara", "1998", "Levi's Stadium"];

fn references() -> Vec<Vec<&'static str>> {
    vec![
        vec!["Denver Broncos", "the Denver Broncos"],
        vec!["Santa Clara, California"],
        vec!["1998"],
        vec!["Levi's Stadium in Santa Clara"],
    ]
}

fn write_jsonl(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("preds.jsonl");
    let lines: Vec<String> = PREDICTIONS
        .iter()
        .zip(references())
        .map(|(p, r)| serde_json::json!({ "prediction": p, "references": r }).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn scores_and_intervals_are_the_librarys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_jsonl(dir.path());
    let out =
        p2m_score(&["-p", path.to_str().unwrap(), "-m", "em-squad", "-m", "chrf++", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scores = v["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    for (got, metric) in scores.iter().zip([Metric::ExactMatchSquad, Metric::ChrfPlusPlus]) {
        let want =
            score_with_interval(metric, &PREDICTIONS, &references(), &BootstrapConfig::default())
                .unwrap();
        assert_eq!(got["metric"], metric.name());
        assert_eq!(got["value"].as_f64().unwrap(), want.score.value);
        assert_eq!(got["signature"], want.score.signature.as_str());
        assert_eq!(got["interval"]["low"].as_f64().unwrap(), want.interval.low);
        assert_eq!(got["interval"]["high"].as_f64().unwrap(), want.interval.high);
        assert!(want.interval.low <= want.score.value && want.score.value <= want.interval.high);
        assert_eq!(got["bootstrap"], BootstrapConfig::default().signature().as_str());
    }
    // SQuAD normalisation: rows 1 and 3 match.
    assert_eq!(scores[0]["value"], 50.0);
}

#[test]
fn without_resamples_it_prints_the_scores_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_jsonl(dir.path());
    let out = p2m_score(&["-p", path.to_str().unwrap(), "-m", "chrf++", "--resamples", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let want = score(Metric::ChrfPlusPlus, &PREDICTIONS, &references()).unwrap();
    assert_eq!(text.trim_end(), want.to_string());
    assert!(!text.contains("CI"), "{text}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preds.csv");
    std::fs::write(&path, "pred,gold\nabc,abc\n").unwrap();
    let out = p2m_score(&["-p", path.to_str().unwrap(), "-m", "em"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no column `prediction`") && err.contains("pred, gold"), "{err}");

    let out = p2m_score(&["-p", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metric") && err.contains("chrf++"), "{err}");
}

/// What the crate split is for: the binary's dynamic dependencies (`ldd`, as the loader resolves
/// them) hold no libtorch, c10 or CUDA runtime.
#[test]
fn the_binary_does_not_link_libtorch() {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_p2m-score"))
        .output()
        .expect("ldd (libc-bin) lists a binary's shared libraries");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libc.so"), "ldd printed no libraries: {libs}");
    for lib in ["libtorch", "libc10", "libcudart", "libgomp"] {
        assert!(!libs.contains(lib), "p2m-score links {lib}:\n{libs}");
    }
}

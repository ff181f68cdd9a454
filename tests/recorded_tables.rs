//! Regression pins on the recorded reproductions: any change in a metric, loader or selection rule
//! that moves a reported number fails here (values rounded to 2 decimals).

use crate::common;

use prompt2model::tables::{table1, table3};

#[test]
fn table1_recorded_snapshot() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let t = table1::recorded(&registry).unwrap();
    // The done-when criterion: gpt-3.5-turbo on Temporal and MCoNaLa equals the paper to ±0.05.
    for task in ["temporal", "mconala"] {
        let c = t.cells.iter().find(|c| c.system == "gpt-3.5-turbo" && c.task == task).unwrap();
        let (ours, paper) = (c.reproduced.unwrap(), c.paper.unwrap());
        assert!((ours - paper).abs() <= 0.05, "{task}: {ours} vs paper {paper}");
        // ... and the authors' own result file to floating-point precision.
        assert!(
            (ours - c.authors_recorded.unwrap()).abs() < 1e-9,
            "{task}: {ours} vs {:?}",
            c.authors_recorded
        );
    }
    // Every reproduced cell carries its bootstrap interval around the value.
    for c in t.cells.iter().filter(|c| c.reproduced.is_some()) {
        let (v, i) = (c.reproduced.unwrap(), c.interval.as_ref().unwrap());
        assert!(i.low <= v && v <= i.high && i.low < i.high, "{} {}: {i:?}", c.system, c.task);
    }
    insta::assert_yaml_snapshot!("table1_recorded", t.snapshot_rows());
}

#[test]
fn table3_recorded_snapshot() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let t = table3::recorded(&registry).unwrap();
    for p in &t.pairs {
        for i in [&p.generated, &p.real] {
            assert!(i.low <= i.value && i.value <= i.high, "{} {}: {i:?}", p.task, p.model);
        }
    }
    // A τ interval only where the models share their test examples; otherwise a note says why.
    for r in t.results.iter().filter(|r| r.tau.is_some()) {
        match &r.tau_interval {
            Some(i) => assert!(i.low <= i.value && i.value <= i.high, "{}: {i:?}", r.task),
            None => assert!(
                t.notes
                    .iter()
                    .any(|n| n.starts_with(&r.paper_column) && n.contains("no interval for τ")),
                "{}: no τ interval and no note saying why",
                r.task
            ),
        }
    }
    insta::assert_yaml_snapshot!("table3_recorded", t.snapshot_rows());
}

#[test]
fn reports_are_written_whole_with_manifest_and_figures() {
    let cache = tempfile::tempdir().unwrap();
    let reports = tempfile::tempdir().unwrap();
    let mut registry = common::mirror_registry(cache.path());
    registry.paths.reports = reports.path().to_path_buf();
    let dir = table1::run_recorded(&registry).unwrap();
    for f in [
        "table1.parquet",
        "table1.csv",
        "table1.md",
        "table1.tex",
        "table1_long.parquet",
        "table1.png",
        "table1.svg",
        "manifest.json",
        "README.md",
    ] {
        let p = dir.join(f);
        assert!(p.is_file() && std::fs::metadata(&p).unwrap().len() > 0, "{f} missing or empty");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["metric_signatures"]["chrf++"].as_str().unwrap().contains("nc:6|nw:2"));
    let inputs = manifest["inputs"].as_array().unwrap();
    assert!(inputs
        .iter()
        .any(|i| i["path"] == "squad/dev-v1.1.json" && i["sha256"].as_str().unwrap().len() == 64));
    let tex = std::fs::read_to_string(dir.join("table1.tex")).unwrap();
    assert!(tex.contains("\\toprule") && tex.contains("gpt-3.5-turbo"));
    // Re-running replaces the report atomically and leaves no staging folders behind.
    table1::run_recorded(&registry).unwrap();
    let names: Vec<String> = std::fs::read_dir(reports.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["table1"]);

    let dir3 = table3::run_recorded(&registry).unwrap();
    for f in ["table3.parquet", "table3_models.csv", "table3.png", "table3.svg", "manifest.json"] {
        assert!(dir3.join(f).is_file(), "{f} missing");
    }
}

//! The live Table 2 at `--scale smoke`: all four arms train and evaluate, deterministically, and
//! the report is complete. The table is pinned (insta); a change in the trainer, executor, data
//! draws or metrics that moves a number fails here.

use crate::common;

use prompt2model::models::registry::ModelRegistry;
use prompt2model::tables::table2::{self, Options};

fn options(runs: &std::path::Path) -> Options {
    let mut opts = Options::new("smoke");
    opts.runs_dir = Some(runs.to_path_buf());
    opts.device = tch::Device::Cpu;
    opts.progress = false;
    opts
}

#[test]
fn table2_smoke_is_deterministic_and_complete() {
    let cache = tempfile::tempdir().unwrap();
    let reports = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let mut registry = common::mirror_registry(cache.path());
    registry.paths.reports = reports.path().to_path_buf();
    let models = ModelRegistry::from_env().unwrap();
    let (table, dir) = table2::run(&registry, &models, &options(runs.path())).unwrap();

    let arms: Vec<&str> = table.arms.iter().map(|a| a.arm.as_str()).collect();
    assert_eq!(
        arms,
        ["retrieval only", "generation only", "retrieval + generation", "custom annotation"]
    );
    assert_eq!(table.arms.iter().map(|a| a.train_examples).collect::<Vec<_>>(), [24, 24, 48, 24]);
    assert!(table.arms.iter().all(|a| a.test_examples == 24 && a.paper_em.is_some()));
    // Every score carries its bootstrap interval, and the arms are compared pairwise.
    for a in &table.arms {
        for i in [&a.em_squad, &a.em_raw, &a.chrf] {
            assert!(i.low <= i.value && i.value <= i.high && i.n == 24, "{}: {i:?}", a.arm);
        }
    }
    assert_eq!(table.paired.len(), 4);
    for t in &table.paired {
        assert!((0.0..=1.0).contains(&t.p_value), "{t:?}");
        let (a, b) = (
            table.arms.iter().find(|r| r.arm == t.arm).unwrap(),
            table.arms.iter().find(|r| r.arm == t.against).unwrap(),
        );
        assert!((t.delta - (a.em_squad.value - b.em_squad.value)).abs() < 1e-9, "{t:?}");
    }
    let annotation = &table.arms[3];
    assert!(
        annotation.cost_usd.unwrap() > 0.0 && annotation.cost_basis.contains("paragraphs"),
        "{}",
        annotation.cost_basis
    );
    for f in [
        "table2.md",
        "table2.tex",
        "table2.csv",
        "table2.parquet",
        "table2_details.md",
        "table2_paired.md",
        "table2_learning_curves.csv",
        "table2.png",
        "table2.svg",
        "table2_learning_curves.png",
        "predictions_custom_annotation.parquet",
        "manifest.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing from {}", dir.display());
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let inputs: Vec<&str> = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(inputs.iter().any(|p| p.contains("squad/dev-v1.1.json")), "{inputs:?}");
    assert!(inputs.iter().any(|p| p.contains("SQuAD_0.3_1.4_with_filtering")), "{inputs:?}");
    assert!(manifest["metric_signatures"]["em-squad"].is_string());

    // Determinism: a second run (fresh run folder) gives the same table.
    let runs2 = tempfile::tempdir().unwrap();
    let again = table2::compute(&registry, &models, &options(runs2.path())).unwrap();
    assert_eq!(again.snapshot_rows(), table.snapshot_rows());
    // And a run over the finished folder loads the students instead of training again.
    let reused = table2::compute(&registry, &models, &options(runs.path())).unwrap();
    assert_eq!(reused.snapshot_rows(), table.snapshot_rows());

    insta::assert_yaml_snapshot!("table2_smoke", table.snapshot_rows());
}

#[test]
fn an_unknown_scale_lists_the_known_ones() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let models = ModelRegistry::from_env().unwrap();
    let err = table2::compute(&registry, &models, &Options::new("galactic"))
        .err()
        .expect("unknown scale");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("galactic")
            && msg.contains("laptop")
            && msg.contains("smoke")
            && msg.contains("table2_scales.toml"),
        "{msg}"
    );
}

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
    // The transformed arm needs a live teacher: without one it is skipped, and the report says so.
    let skipped = "\"retrieval (transformed) + generation\" skipped: it needs a live teacher";
    assert!(table.notes.iter().any(|n| n.contains(skipped)), "{:?}", table.notes);
    for t in &table.paired {
        assert!((0.0..=1.0).contains(&t.p_value), "{t:?}");
        let (a, b) = (
            table.arms.iter().find(|r| r.arm == t.arm).unwrap(),
            table.arms.iter().find(|r| r.arm == t.against).unwrap(),
        );
        assert!((t.delta - (a.em_squad.value - b.em_squad.value)).abs() < 1e-9, "{t:?}");
    }
    // Beside them, what trivial answers score on the same questions, with intervals: the copied
    // question and each arm's most frequent training answer; each arm tested against its best.
    let names: Vec<&str> = table.baselines.iter().map(|b| b.system.as_str()).collect();
    assert!(names.contains(&"copy the input"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("most frequent training output (")), "{names:?}");
    for b in &table.baselines {
        let i = &b.interval;
        assert!(i.low <= i.value && i.value <= i.high && i.n == 24, "{b:?}");
        assert!(!b.from.is_empty());
    }
    for a in &table.arms {
        let t = a.versus_baseline.as_ref().unwrap_or_else(|| panic!("{}: no baseline test", a.arm));
        let best = table
            .baselines
            .iter()
            .find(|b| {
                b.system == t.baseline
                    && b.metric == prompt2model::evaluator::Metric::ExactMatchSquad
            })
            .unwrap_or_else(|| panic!("{}: {} is not a baseline row", a.arm, t.baseline));
        assert!((t.delta - (a.em_squad.value - best.interval.value)).abs() < 1e-9, "{t:?}");
        if a.em_squad.value <= best.interval.value {
            assert_eq!(t.outcome(), "not better than the baseline", "{}: {t:?}", a.arm);
            assert!(!t.better && t.p_value >= 0.05);
        }
    }
    // At the smoke scale no arm answers a question exactly: each equals its best baseline (EM 0)
    // and is reported as not better than it.
    assert!(table
        .arms
        .iter()
        .all(|a| a.versus_baseline.as_ref().unwrap().outcome() == "not better than the baseline"));
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
        "table2_baselines.md",
        "table2_baselines.csv",
        "table2_learning_curves.csv",
        "table2.png",
        "table2.svg",
        "table2_learning_curves.png",
        "predictions_custom_annotation.parquet",
        "manifest.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing from {}", dir.display());
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains(skipped), "the report's notes say why the arm is missing:\n{readme}");
    // The written table carries the baseline rows with their intervals, and the verdicts.
    let csv = std::fs::read_to_string(dir.join("table2.csv")).unwrap();
    let copy = csv
        .lines()
        .find(|l| l.starts_with("baseline: copy the input,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert_eq!(copy.matches(" [").count(), 3, "EM, raw EM and chrF++ with intervals: {copy}");
    assert_eq!(csv.lines().count(), 1 + 4 + table.baseline_rows().len(), "{csv}");
    // A constant answer's row names the arms whose training data gave it.
    assert!(
        csv.lines().any(|l| l.contains("baseline: most frequent training output (")
            && table.arms.iter().any(|a| l.contains(&format!(", of {}", a.arm)))),
        "{csv}"
    );
    let verdicts = std::fs::read_to_string(dir.join("table2_baselines.csv")).unwrap();
    assert_eq!(verdicts.lines().count(), 1 + 4, "{verdicts}");
    assert_eq!(verdicts.matches(",not better than the baseline").count(), 4, "{verdicts}");
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
    assert_eq!(reused.baseline_snapshot_rows(), table.baseline_snapshot_rows());
    insta::assert_yaml_snapshot!("table2_smoke_baselines", table.baseline_snapshot_rows());
}

/// The arms keep their meaning under the shared assembly: "retrieval + generation" trains on
/// exactly the rows of "retrieval only" and "generation only" together, retrieved rows as task 1.
#[test]
fn the_combined_arm_is_the_union_of_the_single_source_arms() {
    let cache = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let prepared = table2::prepare(&registry, &options(runs.path())).unwrap();
    let sources = |id: &str| -> Vec<String> {
        let mut v: Vec<String> =
            prepared.arm(id).unwrap().train().iter().map(|p| p.source.clone()).collect();
        v.sort();
        v
    };
    let (retrieval, generation) = (sources("retrieval_only"), sources("generation_only"));
    assert!(retrieval.iter().all(|s| s.starts_with("<task 1>")), "retrieved rows are task 1");
    assert!(generation.iter().all(|s| s.starts_with("<task 0>")));
    let mut union = [retrieval, generation].concat();
    union.sort();
    assert_eq!(sources("retrieval_generation"), union);
}

/// With a live teacher (the loopback fake), the fifth arm runs: the retrieval arm's rows rewritten
/// into SQuAD's format beside the generated rows, tested against the untransformed combination;
/// the four other arms' numbers are the pinned ones, and a second plan of the table (a cell
/// process, a rerun) replays the teacher's answers instead of asking again.
#[test]
fn the_transformed_arm_runs_with_a_live_teacher() {
    use crate::fake_openai::{FakeServer, ServerConfig};
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = rt.block_on(FakeServer::start(ServerConfig::default()));
    let cache = tempfile::tempdir().unwrap();
    let reports = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let mut registry = common::mirror_registry(cache.path());
    registry.paths.reports = reports.path().to_path_buf();
    let models = ModelRegistry::from_env().unwrap();
    let mut opts = options(runs.path());
    opts.teacher = Some(prompt2model::teacher::TeacherSettings {
        kind: prompt2model::teacher::TeacherKind::Openai,
        base_url: server.base_url.clone(),
        model: "fake-gpt".into(),
        api_key_env: "P2M_TEST_TABLE2_NO_KEY".into(),
        requests_per_minute: None,
        ..Default::default()
    });
    let prepared = table2::prepare(&registry, &opts).unwrap();
    let asked = server.state.request_count();
    // The retrieval arm's 24 training and 8 validation rows, and the plan.
    assert_eq!(asked, 1 + 24 + 8);
    let arm = prepared.arm("retrieval_transformed_generation").unwrap();
    let train = arm.train();
    assert!(train.iter().filter(|p| p.source.starts_with("<task 1>")).count() > 0);
    assert!(
        train
            .iter()
            .filter(|p| p.source.starts_with("<task 1>"))
            .all(|p| p.source.contains("Question: ")),
        "the retrieved rows are the teacher's rewrites"
    );
    drop(prepared);
    let (table, dir) = table2::run(&registry, &models, &opts).unwrap();
    assert_eq!(server.state.request_count(), asked, "planned again from the cache");
    let arms: Vec<&str> = table.arms.iter().map(|a| a.arm.as_str()).collect();
    assert_eq!(
        arms,
        [
            "retrieval only",
            "generation only",
            "retrieval + generation",
            "retrieval (transformed) + generation",
            "custom annotation"
        ]
    );
    let new = &table.arms[3];
    assert!(new.train_examples > 24 && new.train_examples <= 48, "{}", new.train_examples);
    assert!(new.paper_em.is_none() && new.em_squad.low <= new.em_squad.value);
    assert!(new.cost_basis.contains("transform"), "{}", new.cost_basis);
    assert!(new.versus_baseline.is_some());
    assert_eq!(table.paired.len(), 6);
    assert!(table.paired.iter().any(|t| t.arm == new.arm && t.against == "retrieval + generation"));
    assert!(
        table
            .notes
            .iter()
            .any(|n| n
                .starts_with("Arm \"retrieval (transformed) + generation\": the retrieval arm's")),
        "{:?}",
        table.notes
    );
    let md = std::fs::read_to_string(dir.join("table2.md")).unwrap();
    assert!(
        md.contains("retrieval (transformed) + generation")
            && !md.contains("skipped: it needs a live teacher")
    );
    // The other arms are untouched by the fifth: the pinned numbers.
    let mut rows = table.snapshot_rows();
    rows.remove(3);
    insta::assert_yaml_snapshot!("table2_smoke", rows);
}

/// The `table2` binary with `--teacher openai …`: five cells, and the cell processes of the local
/// runner are given the same teacher and replay its answers (the parent planned the table and
/// asked them once).
#[test]
fn table2_with_a_teacher_passes_it_to_its_cells() {
    use crate::fake_openai::{FakeServer, ServerConfig};
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = rt.block_on(FakeServer::start(ServerConfig::default()));
    let dir = tempfile::tempdir().unwrap();
    let (runs, reports) = (dir.path().join("runs"), dir.path().join("reports"));
    let teacher = [
        "--teacher",
        "openai",
        "--base-url",
        &server.base_url,
        "--model",
        "fake-gpt",
        "--api-key-env",
        "P2M_TEST_TABLE2_NO_KEY",
        "--requests-per-minute",
        "0",
    ];
    let cmd = |extra: &[&str]| {
        let args: Vec<&str> = teacher.iter().chain(extra).copied().collect();
        common::table2_smoke(&reports, &runs, &args)
    };
    let listed = common::output_ok(cmd(&["--list-cells"]).output().unwrap());
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("retrieval_transformed_generation") && l.ends_with("to run"))
            && listed.contains("5 cells"),
        "{listed}"
    );
    let asked = server.state.request_count();
    assert_eq!(asked, 1 + 24 + 8);
    common::output_ok(cmd(&["--jobs", "2"]).output().unwrap());
    assert_eq!(server.state.request_count(), asked, "the cells replayed the answers");
    assert!(runs.join("retrieval_transformed_generation/arm.json").is_file());
    let md = std::fs::read_to_string(reports.join("table2/table2.md")).unwrap();
    assert!(md.contains("| retrieval (transformed) + generation |"), "{md}");
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

#[test]
fn table2_cells_run_alone_or_in_parallel_and_collect_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let reports = dir.path().join("reports");
    let cmd = |args: &[&str]| common::table2_smoke(&reports, &runs, args);

    let listed = common::output_ok(cmd(&["--list-cells"]).output().unwrap());
    let ids = ["retrieval_only", "generation_only", "retrieval_generation", "custom_annotation"];
    for id in ids {
        assert!(listed.lines().any(|l| l.starts_with(id) && l.ends_with("to run")), "{listed}");
    }
    // One cell alone, in its own process.
    common::output_ok(cmd(&["--cell", "generation_only"]).output().unwrap());
    let listed = common::output_ok(cmd(&["--list-cells"]).output().unwrap());
    assert!(listed.lines().any(|l| l.starts_with("generation_only") && l.ends_with("done")));
    // Collecting an unfinished table names the missing cells.
    let refused = cmd(&["--collect-only"]).output().unwrap();
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && text.contains("3 of 4 Table 2 cells are not done")
            && text.contains("custom_annotation"),
        "{text}"
    );
    // The rest through the local runner, two processes at a time; then the table.
    let ran = common::output_ok(cmd(&["--jobs", "2"]).output().unwrap());
    assert!(ran.contains("1 done, 3 to run"), "{ran}");
    for id in ids {
        let arm = runs.join(id);
        assert!(arm.join("arm.json").is_file() && arm.join("student/final").is_dir(), "{id}");
        assert!(!arm.join("student/checkpoints").exists(), "{id}: checkpoints left after training");
    }
    let cells_table = std::fs::read_to_string(reports.join("table2/table2.md")).unwrap();

    // The same table as one process running the four arms in turn.
    let runs_seq = dir.path().join("runs-seq");
    let reports_seq = dir.path().join("reports-seq");
    common::output_ok(common::table2_smoke(&reports_seq, &runs_seq, &[]).output().unwrap());
    let sequential = std::fs::read_to_string(reports_seq.join("table2/table2.md")).unwrap();
    assert_eq!(cells_table, sequential);

    // The Slurm files: one array task per arm, the scale's resources, a collector.
    let sbatch = dir.path().join("sbatch");
    common::output_ok(cmd(&["--emit-slurm", sbatch.to_str().unwrap()]).output().unwrap());
    let cells = std::fs::read_to_string(sbatch.join("cells.sbatch")).unwrap();
    assert!(
        cells.contains("#SBATCH --array=0-3%4")
            && cells.contains("#SBATCH --time=00:05:00")
            && cells.contains("#SBATCH --mem=4G")
            && cells.contains(
                "CELLS=(retrieval_only generation_only retrieval_generation custom_annotation)"
            ),
        "{cells}"
    );
    let collect = std::fs::read_to_string(sbatch.join("collect.sbatch")).unwrap();
    assert!(collect.contains("--collect-only"), "{collect}");
}

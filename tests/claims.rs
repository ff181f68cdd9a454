//! The claims report at the smoke scale as users run it (`claims --scale smoke`): every cell of
//! Tables 1–3 run by the local runner, every claim of data/claims.toml judged, the report complete
//! and pinned; Table 1's ablation cells either differ from Prompt2Model in weights or rows or are
//! reported as identical (and then never "reproduced"). The diversity cell with a served teacher.

use crate::common;

use std::path::Path;
use std::process::Command;

use prompt2model::tables::claims::spec::{ClaimTest, ClaimsFile};

fn claims(cells: &Path, reports: &Path, args: &[&str]) -> Command {
    let mut c = common::offline_command(env!("CARGO_BIN_EXE_claims"), reports);
    c.args(["--scale", "smoke", "--cpu", "--cells-dir"]).arg(cells).args(args);
    c
}

fn sha(path: &Path) -> String {
    prompt2model::util::fs::sha256_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_smoke_claims_report_judges_every_claim_from_the_tables_cells() {
    let dir = tempfile::tempdir().unwrap();
    let (cells, reports) = (dir.path().join("cells"), dir.path().join("reports"));
    std::fs::create_dir_all(&cells).unwrap();
    let listed = common::output_ok(claims(&cells, &reports, &["--list-cells"]).output().unwrap());
    // 9 Table 1 cells, 24 Table 3 students, 4 Table 2 arms; no diversity cell at this scale.
    assert_eq!(listed.matches("to run").count(), 9 + 24 + 4, "{listed}");
    for prefix in
        ["table1:squad-prompt2model", "table3:temporal-tiny32-24", "table2:retrieval_only"]
    {
        assert!(listed.contains(prefix), "{prefix} in\n{listed}");
    }

    let started = std::time::Instant::now();
    let out = common::output_ok(claims(&cells, &reports, &["--jobs", "2"]).output().unwrap());
    println!("smoke claims: {:.0} s\n{out}", started.elapsed().as_secs_f64());
    let report = reports.join("claims-smoke");
    for f in [
        "claims.md",
        "claims.csv",
        "claims.parquet",
        "claims.tex",
        "claims_details.csv",
        "claims_teacher_sample.csv",
        "claims.json",
        "claims-smoke.png",
        "claims-smoke.svg",
        "manifest.json",
        "README.md",
    ] {
        assert!(report.join(f).is_file(), "{f} missing from {}:\n{out}", report.display());
    }

    // Every claim of the file has a row and a verdict, and the rule is written into the report.
    let data = common::repo_root().join("data");
    let paper = prompt2model::data::paper::load_paper_results(&data).unwrap();
    let live = prompt2model::tables::cells::LiveTables::load(&data).unwrap();
    let file = ClaimsFile::load(&data, &paper, &live).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("claims.json")).unwrap())
            .unwrap();
    let rows = json["claims"].as_array().unwrap();
    assert_eq!(rows.len(), file.claims.len());
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{id}"));
    for c in &file.claims {
        let r = row(&c.id);
        let verdict = r["verdict"].as_str().unwrap();
        assert!(
            ["reproduced", "not-reproduced", "inconclusive", "not-testable"].contains(&verdict),
            "{r}"
        );
        assert!(!r["why"].as_str().unwrap().is_empty(), "{r}");
        assert_eq!(r["scale"], "smoke");
    }
    let readme = std::fs::read_to_string(report.join("README.md")).unwrap();
    assert!(readme.contains("Verdict rule:") && readme.contains("never reproduced"), "{readme}");
    assert!(readme.contains("claims-smoke.png"), "the forest plot is shown: {readme}");

    // Issue #22, item 8: each Table 1 ablation cell trains different weights or rows from its
    // Prompt2Model cell, or the report says they are identical (and the claim is not testable).
    let t1 = cells.join("table1/smoke/recorded");
    for c in &file.claims {
        let ClaimTest::Table1 { task, second, .. } = &c.test else { continue };
        if second == "teacher" {
            continue;
        }
        let (p2m, other) =
            (t1.join(format!("{task}-prompt2model")), t1.join(format!("{task}-{second}")));
        let same_weights = sha(&p2m.join("model/model.safetensors"))
            == sha(&other.join("model/model.safetensors"));
        let same_rows =
            sha(&p2m.join("assembly/train.jsonl")) == sha(&other.join("assembly/train.jsonl"));
        let r = row(&c.id);
        let why = r["why"].as_str().unwrap();
        if same_weights {
            assert_eq!(r["verdict"], "not-testable", "{r}");
            assert!(why.contains("identical weights"), "{r}");
        } else if same_rows && second == "no-data-retrieval" {
            assert_eq!(r["verdict"], "not-testable", "{r}");
            assert!(why.contains("identical rows"), "{r}");
        }
        println!("{}: same weights {same_weights}, same rows {same_rows}: {}", c.id, r["verdict"]);
    }
    // The teacher is compared on a 16-example sample: it says whether that sample stands for the
    // whole test set, and a sample that does not makes the comparison inconclusive.
    let sample = std::fs::read_to_string(report.join("claims_teacher_sample.csv")).unwrap();
    assert_eq!(sample.lines().count(), 1 + 3, "{sample}");
    for task in ["squad", "temporal", "mconala"] {
        let r = row(&format!("table1-{task}-vs-teacher"));
        let line = sample.lines().find(|l| l.starts_with(task)).unwrap();
        if line.ends_with(",false") {
            assert_eq!(r["verdict"], "inconclusive", "{r}\n{sample}");
            assert!(r["why"].as_str().unwrap().contains("not representative"), "{r}");
        }
    }
    // No diversity ablation at the smoke scale, and the report says why.
    let d = row("diversity-duplicates");
    assert_eq!(d["verdict"], "not-testable");
    assert!(d["why"].as_str().unwrap().contains("no diversity ablation"), "{d}");
    // Each number comes from the cells the manifest names.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("manifest.json")).unwrap())
            .unwrap();
    let sources = &manifest["config"]["sources"];
    assert_eq!(sources["table1"]["config"]["cells"].as_array().map(Vec::len), Some(9));
    assert_eq!(sources["table3"]["config"]["cells"].as_array().map(Vec::len), Some(24));
    assert_eq!(sources["table2"]["config"]["scale"], "smoke");

    // Everything is done: a rerun runs nothing and writes the same claims.
    let claims_csv = std::fs::read_to_string(report.join("claims.csv")).unwrap();
    let details_csv = std::fs::read_to_string(report.join("claims_details.csv")).unwrap();
    let again = common::output_ok(claims(&cells, &reports, &[]).output().unwrap());
    assert!(again.contains("37 done, 0 to run"), "{again}");
    assert_eq!(std::fs::read_to_string(report.join("claims.csv")).unwrap(), claims_csv);
    // Pinned: a change in the tables, the trainer or the rule that moves a verdict fails here.
    insta::assert_snapshot!("claims_smoke", claims_csv);
    insta::assert_snapshot!("claims_smoke_details", details_csv);
    // The same cells as a Slurm array of `claims --cell <table>:<id>` and a collector.
    let sbatch = dir.path().join("sbatch");
    common::output_ok(
        claims(&cells, &reports, &["--emit-slurm", sbatch.to_str().unwrap()]).output().unwrap(),
    );
    let array = std::fs::read_to_string(sbatch.join("cells.sbatch")).unwrap();
    assert!(
        array.contains("#SBATCH --array=0-36%8") && array.contains("table2:custom_annotation"),
        "{array}"
    );
    assert!(array.contains("--cell \"${CELLS[$SLURM_ARRAY_TASK_ID]}\""), "{array}");
    let collect = std::fs::read_to_string(sbatch.join("collect.sbatch")).unwrap();
    assert!(
        collect.contains("claims' '--scale' 'smoke'") && collect.contains("--collect-only"),
        "{collect}"
    );
    // A cell id names its table.
    let bad = claims(&cells, &reports, &["--cell", "table9:x"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no table `table9`"));
}

#[test]
fn the_diversity_cell_runs_the_ablation_with_the_cells_teacher_and_resumes_from_its_record() {
    use crate::fake_openai::{FakeServer, ServerConfig};
    use prompt2model::tables::claims::spec::{ClaimsScale, DiversitySpec, RecordedFallback};
    use prompt2model::tables::claims::{DiversityCell, Options};
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = runtime.block_on(FakeServer::start(ServerConfig::default()));
    let dir = tempfile::tempdir().unwrap();
    let paths = prompt2model::config::Paths::from_env().unwrap();
    let settings = prompt2model::teacher::TeacherSettings {
        kind: prompt2model::teacher::TeacherKind::Openai,
        base_url: server.base_url.clone(),
        model: "fake-model".into(),
        api_key_env: "P2M_TEST_CLAIMS_NO_KEY".into(),
        requests_per_minute: None,
        discover: false,
        ..Default::default()
    };
    let opts = Options {
        scale: "test".into(),
        teacher: prompt2model::pipeline::config::TeacherSource::Openai,
        teacher_settings: Some(settings),
        cells_root: dir.path().to_path_buf(),
        device: tch::Device::Cpu,
    };
    let spec = ClaimsScale {
        description: "test".into(),
        diversity: DiversitySpec {
            n: 20,
            task: "temporal".into(),
            teacher_if_recorded: RecordedFallback::None,
        },
    };
    let cell = DiversityCell::plan(&paths, "test", &spec, &opts).unwrap().unwrap();
    assert!(cell.finished().is_none());
    let record = cell.run().unwrap();
    let r = &record.report;
    assert_eq!(
        (r.n, r.with_high_diversity.examples, r.without_high_diversity.examples),
        (20, 20, 20)
    );
    assert!(record.teacher.contains("fake-model") && record.teacher_why.contains("openai"));
    assert!(
        cell.dir.join("result.json").is_file() && cell.dir.join("teacher_cache.sqlite").is_file()
    );
    assert_eq!(cell.finished().map(|f| f.report), Some(record.report.clone()));
    // With the recorded teacher and no stand-in, there is no cell, and it says why.
    let recorded =
        Options { teacher: prompt2model::pipeline::config::TeacherSource::Recorded, ..opts };
    let why = DiversityCell::plan(&paths, "test", &spec, &recorded).unwrap().unwrap_err();
    assert!(why.contains("cannot generate anew"), "{why}");
    drop(server);
}

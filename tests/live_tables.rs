//! The live Table 3 at the smoke scale as users run it: every cell a `p2m run` of its own, run by
//! the local runner, and the same grid as a Slurm array on a real single-node Slurm cluster
//! (slurmctld + slurmd + munge on this machine), whose collected table must equal the local one;
//! Table 2's arms go through the same cluster.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn table3(reports: &Path, args: &[&str]) -> Command {
    let mut c = common::offline_command(env!("CARGO_BIN_EXE_table3"), reports);
    c.args(["--source", "live", "--scale", "smoke"]).args(args);
    c
}

/// The per-student scores and the per-task τ of a written report, without the folder paths.
fn table_values(report: &Path) -> (String, String) {
    let students = std::fs::read_to_string(report.join("table3_students.csv")).unwrap();
    // The last column is the cell id, the same in both; everything else must match exactly.
    let summary = std::fs::read_to_string(report.join("table3.csv")).unwrap();
    (summary, students)
}

#[test]
fn the_live_table3_runs_every_cell_and_a_rerun_runs_none() {
    let dir = tempfile::tempdir().unwrap();
    let (cells, reports) = (dir.path().join("cells"), dir.path().join("reports"));
    let cells_arg = cells.to_str().unwrap();
    let listed = common::output_ok(
        table3(&reports, &["--cells-dir", cells_arg, "--list-cells"]).output().unwrap(),
    );
    assert_eq!(listed.matches("to run").count(), 24, "8 students × 3 tasks:\n{listed}");

    let started = Instant::now();
    let out = common::output_ok(
        table3(&reports, &["--cells-dir", cells_arg, "--jobs", "2"]).output().unwrap(),
    );
    println!("smoke live Table 3: {:.0} s\n{out}", started.elapsed().as_secs_f64());
    let report = reports.join("table3-live-smoke");
    for f in
        ["table3.md", "table3.csv", "table3_students.csv", "table3-live-smoke.png", "manifest.json"]
    {
        assert!(report.join(f).is_file(), "{f} missing from {}:\n{out}", report.display());
    }
    let (summary, students) = table_values(&report);
    // 24 students, then per task the baselines of their training data on the real test set.
    // The student column: `baseline: …`, quoted where the name holds a quote or a comma.
    let baselines: Vec<&str> = students
        .lines()
        .filter(|l| l.contains(",baseline: ") || l.contains(",\"baseline: "))
        .collect();
    assert_eq!(students.lines().count(), 1 + 24 + baselines.len(), "{students}");
    for task in ["squad", "temporal", "mconala"] {
        let mine: Vec<&&str> =
            baselines.iter().filter(|l| l.starts_with(&format!("{task},"))).collect();
        assert!(
            mine.iter().any(|l| l.contains(",baseline: copy the input,")),
            "{task}: {students}"
        );
        assert!(
            mine.iter().any(|l| l.contains("baseline: most frequent training output (")),
            "{task}: {students}"
        );
    }
    // A baseline row has its real-test interval and nothing else to rank; every student says
    // whether it beats the best baseline of its own training data.
    assert!(baselines.iter().all(|l| l.contains(" [") && l.contains("trivial: ")), "{students}");
    let verdicts =
        students.lines().skip(1).filter(|l| l.contains("better than the baseline (")).count();
    assert_eq!(verdicts, 24, "{students}");
    for task in ["SQuAD", "Temporal", "MCoNaLa"] {
        let line = summary
            .lines()
            .find(|l| l.contains(task))
            .unwrap_or_else(|| panic!("{task}: {summary}"));
        assert!(line.contains(",8,"), "8 students for {task}: {line}");
    }
    // τ is defined where the students differ, and its interval holds it.
    let md = std::fs::read_to_string(report.join("table3.md")).unwrap();
    assert!(md.contains("τ×100 live") && md.contains("τ×100 paper"), "{md}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["config"]["cells"].as_array().map(Vec::len),
        Some(24),
        "24 cells in the manifest"
    );
    // The untrained student really was not trained.
    let untrained =
        cells.join("table3/smoke/recorded/temporal-tiny32-untrained/training/stage.json");
    let stage = std::fs::read_to_string(untrained).unwrap();
    assert!(stage.contains("0 optimizer steps"), "{stage}");

    // Every cell is done: a rerun runs none and writes the same table.
    let again = common::output_ok(table3(&reports, &["--cells-dir", cells_arg]).output().unwrap());
    assert!(again.contains("24 done, 0 to run"), "{again}");
    assert_eq!(table_values(&report), (summary.clone(), students.clone()));
    // The smoke table is pinned (students' scores and τ per task).
    insta::assert_snapshot!("table3_live_smoke", summary);
    insta::assert_snapshot!("table3_live_smoke_students", students);
    // A bad cell id says which exist.
    let bad = table3(&reports, &["--cells-dir", cells_arg, "--cell", "nope"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--list-cells"));
}

/// A single-node Slurm cluster for the length of a test: munged, slurmctld and slurmd as root,
/// configured in a temporary folder on free ports.
struct SlurmCluster {
    conf: PathBuf,
    daemons: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl SlurmCluster {
    fn start() -> SlurmCluster {
        for tool in ["slurmctld", "slurmd", "sbatch", "squeue", "munged"] {
            assert!(
                Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success()),
                "{tool} is not installed: `bash scripts/setup.sh --python` installs slurm-wlm and munge"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let d = dir.path().display();
        let conf = dir.path().join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=p2mtest\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n\
                 SchedulerType=sched/backfill\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/log/slurmctld.log\n\
                 SlurmdLogFile={d}/log/slurmd.log\nSlurmctldPort={}\nSlurmdPort={}\nReturnToService=2\nMpiDefault=none\n\
                 JobCompType=jobcomp/none\nAccountingStorageType=accounting_storage/none\n\
                 NodeName={host} CPUs=2 RealMemory=12000 State=UNKNOWN\nPartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port()
            ),
        )
        .unwrap();
        // munged: one per machine; start it if it is not running (the package makes the key).
        let munge_up =
            Command::new("pgrep").args(["-x", "munged"]).output().is_ok_and(|o| o.status.success());
        if !munge_up {
            let _ = std::fs::create_dir_all("/run/munge");
            let status = Command::new("munged").arg("--force").status().unwrap();
            assert!(status.success(), "munged did not start");
        }
        let daemon = |name: &str| {
            Command::new(name)
                .args(["-D", "-f"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"))
        };
        let ctld = daemon("slurmctld");
        std::thread::sleep(Duration::from_secs(1));
        let slurmd = daemon("slurmd");
        let cluster = SlurmCluster { conf, daemons: vec![ctld, slurmd], _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cluster.cmd("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(Instant::now() < deadline, "the Slurm node did not come up (state `{state}`)");
            std::thread::sleep(Duration::from_millis(500));
        }
        cluster
    }

    /// Wait until no job is queued or running (fails after `limit`).
    fn wait_until_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let queue = self.cmd("squeue").args(["-h"]).output().unwrap();
            let pending = String::from_utf8_lossy(&queue.stdout).trim().to_string();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Slurm jobs still queued after {limit:?}:\n{pending}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

#[test]
fn the_emitted_slurm_array_runs_on_a_real_cluster_and_collects_the_same_table() {
    if !nix_is_root() {
        println!("SKIPPED: the Slurm daemons need root here (slurmd runs jobs as their users); CI runs as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = SlurmCluster::start();

    // The same grid, once locally and once through Slurm, into separate cell folders and reports.
    let local_reports = dir.path().join("local-reports");
    let local_cells = dir.path().join("local-cells");
    common::output_ok(
        table3(&local_reports, &["--cells-dir", local_cells.to_str().unwrap(), "--jobs", "2"])
            .output()
            .unwrap(),
    );

    let slurm_reports = dir.path().join("slurm-reports");
    let slurm_cells = dir.path().join("slurm-cells");
    let sbatch_dir = dir.path().join("sbatch");
    let emitted = common::output_ok(
        table3(
            &slurm_reports,
            &[
                "--cells-dir",
                slurm_cells.to_str().unwrap(),
                "--emit-slurm",
                sbatch_dir.to_str().unwrap(),
                "--slurm-parallel",
                "2",
            ],
        )
        .output()
        .unwrap(),
    );
    let cells_sbatch = std::fs::read_to_string(sbatch_dir.join("cells.sbatch")).unwrap();
    assert!(cells_sbatch.contains("#SBATCH --array=0-23%2"), "{cells_sbatch}");
    assert!(
        cells_sbatch.contains("#SBATCH --mem=3G")
            && cells_sbatch.contains("#SBATCH --time=00:10:00")
    );
    let collect = std::fs::read_to_string(sbatch_dir.join("collect.sbatch")).unwrap();
    assert!(collect.contains("--collect-only"), "{collect}");

    // Submit as a user would (the submitting environment travels with the jobs).
    let submitted = cluster
        .cmd("bash")
        .arg(sbatch_dir.join("submit.sh"))
        .env("P2M_REPORTS", &slurm_reports)
        .env("P2M_OFFLINE", "1")
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    let text = common::output_ok(submitted);
    assert!(text.contains("collect: job"), "{emitted}\n{text}");
    cluster.wait_until_idle(Duration::from_secs(15 * 60));
    let collect_log = sbatch_dir.join("collect.log");
    let log = std::fs::read_to_string(&collect_log).unwrap_or_else(|e| {
        panic!(
            "no collector output {} ({e}); a cell failed? logs in {}",
            collect_log.display(),
            sbatch_dir.display()
        )
    });
    assert!(log.contains("report:"), "{log}");
    for i in 0..24 {
        assert!(sbatch_dir.join(format!("cell-{i}.log")).is_file(), "array task {i} left no log");
    }
    // The collected table equals the local one, number for number.
    let local = table_values(&local_reports.join("table3-live-smoke"));
    let slurm = table_values(&slurm_reports.join("table3-live-smoke"));
    assert_eq!(local, slurm);

    // Table 2's arms as a Slurm array of their own: the collected table equals a local run.
    let t2_local = dir.path().join("t2-local-reports");
    common::output_ok(
        common::table2_smoke(&t2_local, &dir.path().join("t2-local-runs"), &[]).output().unwrap(),
    );
    let t2_reports = dir.path().join("t2-slurm-reports");
    let t2_sbatch = dir.path().join("t2-sbatch");
    let t2_runs = dir.path().join("t2-slurm-runs");
    common::output_ok(
        common::table2_smoke(&t2_reports, &t2_runs, &["--emit-slurm", t2_sbatch.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let submitted = cluster
        .cmd("bash")
        .arg(t2_sbatch.join("submit.sh"))
        .env("P2M_REPORTS", &t2_reports)
        .env("P2M_OFFLINE", "1")
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    common::output_ok(submitted);
    cluster.wait_until_idle(Duration::from_secs(10 * 60));
    let log = std::fs::read_to_string(t2_sbatch.join("collect.log")).unwrap_or_default();
    assert!(log.contains("report:"), "Table 2 collector: {log}; logs in {}", t2_sbatch.display());
    for i in 0..4 {
        assert!(t2_sbatch.join(format!("cell-{i}.log")).is_file(), "Table 2 task {i} left no log");
    }
    let read = |d: &Path| std::fs::read_to_string(d.join("table2/table2.md")).unwrap();
    assert_eq!(read(&t2_local), read(&t2_reports));
}

fn nix_is_root() -> bool {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap().trim() == "0"
}

#[test]
fn the_live_table1_reruns_the_papers_rows_and_tests_them_against_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let (cells, reports) = (dir.path().join("cells"), dir.path().join("reports"));
    let run = |args: &[&str]| {
        let mut c = common::offline_command(env!("CARGO_BIN_EXE_table1"), &reports);
        c.args(["--source", "live", "--scale", "smoke", "--cells-dir", cells.to_str().unwrap()])
            .args(args);
        common::output_ok(c.output().unwrap())
    };
    let out = run(&["--jobs", "2"]);
    assert!(out.contains("9 cells at scale smoke (0 done, 9 to run"), "{out}");
    let report = reports.join("table1-live-smoke");
    let table = std::fs::read_to_string(report.join("table1.csv")).unwrap();
    // The system column: `baseline: …`, quoted where the name holds a quote or a comma.
    let is_baseline = |l: &&str| l.contains(",baseline: ") || l.contains(",\"baseline: ");
    let baselines = table.lines().filter(is_baseline).count();
    assert_eq!(
        table.lines().count(),
        1 + 12 + baselines,
        "3 tasks × (3 rows + the teacher), and the baselines:\n{table}"
    );
    // Each task has the copied input and its rows' most frequent training output as baselines,
    // scored on the same real test examples with intervals.
    assert_eq!(table.matches(",baseline: copy the input,").count(), 3, "{table}");
    for task in ["squad", "temporal", "mconala"] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{task},"))
                && is_baseline(&l)
                && l.contains("baseline: most frequent training output (")
                && l.contains("trivial: from the training data of ")),
            "{task}:\n{table}"
        );
    }
    for system in ["Prompt2Model", "w/o model retrieval", "w/o data retrieval", "gpt-3.5-turbo"] {
        assert_eq!(table.matches(&format!(",{system},")).count(), 3, "{system}:\n{table}");
    }
    // Every score has an interval; the teacher is scored on the students' own 16 examples.
    let md = std::fs::read_to_string(report.join("table1.md")).unwrap();
    assert_eq!(
        md.matches(" [").count(),
        12 + 9 + baselines,
        "real-test intervals for 12 rows and the baselines, generated for 9:\n{md}"
    );
    // Each of the 9 rows against the best baseline of its own training data, with the verdict.
    let versus = std::fs::read_to_string(report.join("table1_baselines.csv")).unwrap();
    assert_eq!(versus.lines().count(), 1 + 9, "{versus}");
    assert!(
        versus.lines().skip(1).all(|l| l.ends_with(",better than the baseline")
            || l.ends_with(",not better than the baseline")),
        "{versus}"
    );
    let paired = std::fs::read_to_string(report.join("table1_paired.csv")).unwrap();
    assert_eq!(paired.lines().count(), 1 + 3, "{paired}");
    // Offline, model retrieval falls back to the default student: identical rows are said to be.
    let readme = std::fs::read_to_string(report.join("README.md")).unwrap();
    assert!(
        readme.contains("trained identical weights") && readme.contains("by construction"),
        "{readme}"
    );
    assert!(report.join("table1-live-smoke.png").is_file());
    let again = run(&[]);
    assert!(again.contains("9 done, 0 to run"), "{again}");
    // A Table 3 student that trains what a Table 1 cell trained (the scale's student on the same
    // 24 Temporal rows) takes that cell's training and evaluation instead of computing them.
    let mut t3 = table3(&reports, &["--cells-dir", cells.to_str().unwrap()]);
    common::output_ok(t3.args(["--cell", "temporal-tiny32-24"]).output().unwrap());
    let t1_cell = cells.join("table1/smoke/recorded/temporal-no-model-retrieval");
    let t3_cell = cells.join("table3/smoke/recorded/temporal-tiny32-24");
    for stage in ["training", "evaluation"] {
        let record = |dir: &Path| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join(stage).join("stage.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let (t1, t3) = (record(&t1_cell), record(&t3_cell));
        assert_eq!(t3["reused_from"], t1_cell.to_str().unwrap(), "{stage}: {t3}");
        assert_eq!(t3["outputs"], t1["outputs"], "{stage}");
    }
    // The smoke table is pinned: a change in the pipeline, trainer or metrics that moves a
    // number fails here.
    insta::assert_snapshot!("table1_live_smoke", table);
    insta::assert_snapshot!("table1_live_smoke_paired", paired);
    insta::assert_snapshot!("table1_live_smoke_baselines", versus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_table1_with_a_served_teacher_scores_the_teachers_own_answers() {
    use crate::fake_openai::{FakeServer, ServerConfig};
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (cells, reports) = (dir.path().join("cells"), dir.path().join("reports"));
    let mut c = common::offline_command(env!("CARGO_BIN_EXE_table1"), &reports);
    c.args(["--source", "live", "--scale", "smoke", "--cells-dir", cells.to_str().unwrap()])
        .args(["--teacher", "openai", "--base-url", &server.base_url, "--model", "fake-model"])
        .args(["--requests-per-minute", "0", "--jobs", "2"]);
    let out = common::output_ok(crate::pipeline::run_blocking(c).await);
    assert!(out.contains("9 cells at scale smoke (0 done, 9 to run"), "{out}");
    // The Prompt2Model cell asked its teacher to answer the real test examples, scored them.
    let cell = cells.join("table1/smoke/openai/temporal-prompt2model");
    assert!(cell.join("evaluation/predictions_real-teacher.parquet").is_file(), "{out}");
    let metrics = std::fs::read_to_string(cell.join("evaluation/metrics.json")).unwrap();
    assert!(metrics.contains("\"real-teacher\""), "{metrics}");
    // ... and the table has the teacher's row, with its interval, and the paired test per task.
    let report = reports.join("table1-live-smoke");
    let table = std::fs::read_to_string(report.join("table1.csv")).unwrap();
    let teacher_rows: Vec<&str> =
        table.lines().filter(|l| l.contains(",the teacher (openai),")).collect();
    assert_eq!(teacher_rows.len(), 3, "{table}");
    assert!(teacher_rows.iter().all(|l| l.contains(" [")), "{table}");
    let paired = std::fs::read_to_string(report.join("table1_paired.csv")).unwrap();
    assert_eq!(paired.lines().count(), 1 + 3, "{paired}");
}

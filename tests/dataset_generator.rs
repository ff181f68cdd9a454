//! The dataset generator end to end against the fault-injecting server (`tests/fake_openai`):
//! exactly N unique examples despite faults, zero requests on replay, a SIGKILLed run resumed
//! without re-billing, budget exhaustion keeping what was accepted, and the diversity ablation.

use crate::fake_openai;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_openai::{FakeServer, Fault, ServerConfig};
use prompt2model::data::examples::{read_examples_jsonl, Example};
use prompt2model::dataset_generator::{
    self, diversity_experiment, generate, GenerateError, GenerationLog, GeneratorConfig,
};
use prompt2model::prompt_parser::{parse_deterministic, ParsedPrompt};
use prompt2model::teacher::{
    CacheMode, CachedTeacher, OpenAiConfig, OpenAiTeacher, Teacher, TeacherError,
};

fn temporal_prompt() -> ParsedPrompt {
    parse_deterministic(&crate::common::task_prompt("temporal")).unwrap()
}

fn teacher_cfg(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "fake-gpt".into(),
        backend_name: "fake".into(),
        api_key_env: "P2M_TEST_GEN_NO_KEY".into(),
        require_api_key: Some(false),
        request_timeout_secs: 0.5,
        max_retries: 6,
        backoff_base_ms: 20,
        backoff_max_ms: 200,
        requests_per_minute: None,
        max_concurrency: 5,
        initial_concurrency: 5,
        ..Default::default()
    }
}

fn gen_cfg(n: usize) -> GeneratorConfig {
    GeneratorConfig { num_examples: n, max_tokens: Some(300), seed: 7, ..Default::default() }
}

fn faulty() -> ServerConfig {
    ServerConfig {
        faults: vec![
            Fault::RateLimitSecs("1"),
            Fault::Status500,
            Fault::NonJson,
            Fault::Stall(Duration::from_millis(1500)),
            Fault::Truncated,
            Fault::WrongSchema,
            Fault::Status503,
            Fault::EmptyChoices,
            Fault::RateLimitDate(1),
        ],
        fault_period: 16,
        max_faults_per_request: 2,
        ..Default::default()
    }
}

async fn run(
    base_url: &str,
    cache: &Path,
    mode: CacheMode,
    out: &Path,
    cfg: &GeneratorConfig,
    budget: Option<u64>,
) -> (Result<(Vec<Example>, GenerationLog), GenerateError>, u64, u64) {
    let teacher =
        OpenAiTeacher::new(OpenAiConfig { max_api_calls: budget, ..teacher_cfg(base_url) })
            .unwrap();
    let cached = CachedTeacher::open(teacher, cache, mode).unwrap();
    let r = generate(&cached, &temporal_prompt(), cfg, out, None).await;
    (r, cached.hits(), cached.misses())
}

fn assert_valid(examples: &[Example], n: usize) {
    assert_eq!(examples.len(), n);
    let inputs: HashSet<&str> = examples.iter().map(|e| e.input.as_str()).collect();
    assert_eq!(inputs.len(), n, "unique inputs");
    assert!(examples.iter().all(|e| !e.input.trim().is_empty() && !e.output.trim().is_empty()));
    assert!(
        examples.iter().all(|e| e.input.starts_with("[Posted: 2020-01-01] Event number ")),
        "parsed from the fake model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_n_examples_despite_faults_then_zero_requests_on_replay() {
    let server = FakeServer::start(faulty()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("teacher_cache.sqlite");
    let out1 = dir.path().join("run1");
    let cfg = gen_cfg(60);

    let (r, _, misses) =
        run(&server.base_url, &cache, CacheMode::ReadWrite, &out1, &cfg, None).await;
    let (examples, log) = r.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{}",
        serde_json::to_string(&GenerationLog { temperature_curve: vec![], ..log.clone() }).unwrap()
    );
    assert_valid(&examples, 60);
    assert!(
        server.state.faults_injected.load(std::sync::atomic::Ordering::SeqCst) >= 5,
        "faults were injected"
    );
    assert!(log.complete && log.stop_reason.is_none());
    assert!(log.accepted >= 60 && log.candidates >= log.accepted);
    assert!(log.duplicate_inputs > 0, "the first round repeats itself");
    assert!(log.rejected.contains_key("no_json"), "refusals are rejected: {:?}", log.rejected);
    assert!(!log.errors.is_empty(), "bad bodies surface as failed requests: {:?}", log.errors);
    assert_eq!(misses, log.requests, "every request went past the (empty) cache once");
    let temps: Vec<f64> = log.temperature_curve.iter().map(|p| p.temperature).collect();
    assert!(
        (temps[0] - 0.5).abs() < 1e-12
            && temps.windows(2).all(|w| w[0] <= w[1])
            && temps.iter().all(|&t| t < 1.7),
        "{temps:?}"
    );
    assert!(log.templates.len() >= 2, "templates vary with k: {:?}", log.templates);
    assert!(log.prompt_tokens > 0 && log.completion_tokens > 0);
    assert!(log.teacher_stats.retries > 0);
    // Files: examples (atomic JSONL), the log, the checkpoint.
    assert_eq!(
        read_examples_jsonl(&out1.join(dataset_generator::EXAMPLES_FILE)).unwrap(),
        examples
    );
    let on_disk: GenerationLog =
        serde_json::from_slice(&std::fs::read(out1.join(dataset_generator::LOG_FILE)).unwrap())
            .unwrap();
    assert_eq!(on_disk.accepted, log.accepted);
    assert!(out1.join(dataset_generator::CHECKPOINT_FILE).exists());
    let requests_after_run1 = server.state.request_count();

    // A fresh output directory, replay-only against the cache: the same requests, all hits.
    let out2 = dir.path().join("run2");
    let (r, hits, misses) =
        run(&server.base_url, &cache, CacheMode::ReplayOnly, &out2, &cfg, None).await;
    let (replayed, log2) = r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.state.request_count(), requests_after_run1, "zero requests on replay");
    assert_eq!(replayed, examples, "deterministic");
    assert_eq!(misses, 0);
    assert_eq!(hits, log2.successful_requests);
    assert_eq!(log2.cost_usd, 0.0);
    assert_eq!(log2.cached_responses, log2.successful_requests);

    // The first directory again: the checkpoint is complete, nothing to do.
    let (r, hits, misses) =
        run(&server.base_url, &cache, CacheMode::ReadWrite, &out1, &cfg, None).await;
    assert_eq!(r.unwrap().0, examples);
    assert_eq!((hits, misses), (0, 0));
    assert_eq!(server.state.request_count(), requests_after_run1);

    // Replay-only with another seed: the first request misses; the run stops loudly.
    let out3 = dir.path().join("run3");
    let cfg3 = GeneratorConfig { seed: 8, ..cfg.clone() };
    let (r, _, _) = run(&server.base_url, &cache, CacheMode::ReplayOnly, &out3, &cfg3, None).await;
    let e = r.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, GenerateError::Stopped(s) if matches!(s.source, Some(TeacherError::ReplayMiss { .. }))),
        "{msg}"
    );
    assert!(msg.contains("generation stopped at 0 of 60"), "{msg}");
    assert!(format!("{:?}", e).contains("Hint"), "{e:?}");
    assert_eq!(server.state.request_count(), requests_after_run1);
}

/// Runs `generate` when started as the child of `sigkill_mid_run_then_resume_rebills_nothing`.
/// Not a test: the child process of the SIGKILL test below, which runs it with `--ignored`
/// (ignored, so a normal run does not count it as a passed test).
#[test]
#[ignore = "the SIGKILL test's child process; run by that test"]
fn child_generate_for_kill_test() {
    let (Ok(url), Ok(out)) =
        (std::env::var("P2M_KILL_CHILD_URL"), std::env::var("P2M_KILL_CHILD_OUT"))
    else {
        return;
    };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let out = Path::new(&out);
        let r = run(
            &url,
            &out.join("teacher_cache.sqlite"),
            CacheMode::ReadWrite,
            out,
            &gen_cfg(30),
            None,
        )
        .await;
        eprintln!("child finished (it should have been killed): {:?}", r.0.map(|x| x.0.len()));
    });
    std::process::exit(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_resume_rebills_nothing() {
    let cfg = gen_cfg(30);
    // Baseline: an uninterrupted run on its own server.
    let base_server = FakeServer::start(faulty()).await;
    let base_dir = tempfile::tempdir().unwrap();
    let (r, _, _) = run(
        &base_server.base_url,
        &base_dir.path().join("teacher_cache.sqlite"),
        CacheMode::ReadWrite,
        base_dir.path(),
        &cfg,
        None,
    )
    .await;
    let (baseline, _) = r.unwrap();

    // The server answers 7 requests, then holds every further one (dropping it unanswered).
    let server = FakeServer::start(ServerConfig { freeze_after_ok: Some(7), ..faulty() }).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dataset_generator::child_generate_for_kill_test",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("P2M_KILL_CHILD_URL", &server.base_url)
        .env("P2M_KILL_CHILD_OUT", dir.path())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !server.state.frozen.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(child.try_wait().unwrap().is_none(), "the child ended before the kill");
        assert!(t0.elapsed() < Duration::from_secs(60), "the child made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await; // let it commit what it received
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    let answered_before_kill = server.state.ok_digest_set();
    let ok_before = server.state.ok_count();
    assert!(ok_before >= 7);
    let cache_path = dir.path().join("teacher_cache.sqlite");
    {
        let probe = CachedTeacher::open(
            OpenAiTeacher::new(teacher_cfg(&server.base_url)).unwrap(),
            &cache_path,
            CacheMode::ReplayOnly,
        )
        .unwrap();
        assert_eq!(
            probe.len().unwrap(),
            5 * ok_before as u64,
            "every answered call was committed before the kill"
        );
    }

    server.unfreeze();
    let (r, hits, _) =
        run(&server.base_url, &cache_path, CacheMode::ReadWrite, dir.path(), &cfg, None).await;
    let (examples, log) = r.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "killed after {ok_before} answered calls; resumed from round {:?} with {hits} cache hits; {} requests after the kill",
        log.resumed_from_round,
        server.state.ok_count() - ok_before
    );
    assert_valid(&examples, 30);
    assert_eq!(examples, baseline, "a killed and resumed run ends where an uninterrupted one does");
    assert_eq!(log.runs, 2);
    let answered_after: Vec<String> = server.state.ok_digests.lock().unwrap()[ok_before..].to_vec();
    let rebilled: Vec<&String> =
        answered_after.iter().filter(|d| answered_before_kill.contains(*d)).collect();
    assert!(
        rebilled.is_empty(),
        "{} calls answered before the kill were made again",
        rebilled.len()
    );
    assert!(
        hits > 0 || log.resumed_from_round.is_some(),
        "resumed from the checkpoint and/or the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhaustion_keeps_what_was_accepted_and_a_rerun_resumes() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("teacher_cache.sqlite");
    let cfg = gen_cfg(40);
    let (r, _, _) =
        run(&server.base_url, &cache, CacheMode::ReadWrite, dir.path(), &cfg, Some(3)).await;
    let e = r.unwrap_err();
    assert!(e.is_budget_exhausted(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("budget") && msg.contains("checkpoint.jsonl") && msg.contains("rerun"),
        "{msg}"
    );
    let (partial, log) = e.partial().unwrap();
    let partial = partial.to_vec();
    assert!(!partial.is_empty() && partial.len() < 40);
    assert_eq!(log.errors.get("budget_exhausted"), Some(&2));
    assert!(!log.complete);
    assert_eq!(server.state.request_count(), 3);
    assert_eq!(
        read_examples_jsonl(&dir.path().join(dataset_generator::EXAMPLES_FILE)).unwrap(),
        partial
    );
    let journal =
        std::fs::read_to_string(dir.path().join(dataset_generator::CHECKPOINT_FILE)).unwrap();
    for ex in &partial {
        assert!(
            journal.contains(&serde_json::to_string(&ex.input).unwrap()),
            "checkpointed: {}",
            ex.input
        );
    }
    let answered_first = server.state.ok_digest_set();

    // More budget: resumes from the checkpoint and finishes; nothing answered before is re-sent.
    let (r, _, _) =
        run(&server.base_url, &cache, CacheMode::ReadWrite, dir.path(), &cfg, None).await;
    let (examples, log) = r.unwrap_or_else(|e| panic!("{e}"));
    assert_valid(&examples, 40);
    assert_eq!(log.runs, 2);
    assert_eq!(log.resumed_from_round, Some(0));
    let first_inputs: Vec<&str> = partial.iter().map(|e| e.input.as_str()).collect();
    let final_inputs: Vec<&str> =
        examples.iter().take(partial.len()).map(|e| e.input.as_str()).collect();
    assert_eq!(first_inputs, final_inputs, "what was accepted is kept, in order");
    let answered: Vec<String> = server.state.ok_digests.lock().unwrap().clone();
    assert!(answered[3..].iter().all(|d| !answered_first.contains(d)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diversity_ablation_counts_duplicates() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let teacher = OpenAiTeacher::new(teacher_cfg(&server.base_url)).unwrap();
    let report =
        diversity_experiment(&teacher as &dyn Teacher, &temporal_prompt(), 40, &gen_cfg(40))
            .await
            .unwrap();
    for arm in [&report.with_high_diversity, &report.without_high_diversity] {
        assert_eq!(arm.examples, 40);
        assert_eq!(arm.unique_inputs + arm.duplicate_inputs, 40);
    }
    assert!(
        report.with_high_diversity.high_diversity && !report.without_high_diversity.high_diversity
    );
    assert!(
        report.without_high_diversity.duplicate_inputs
            > report.with_high_diversity.duplicate_inputs,
        "{report:?}"
    );
    // The paper's numbers beside it come from data/paper_results.toml, as printed in §3.3.
    let paper = prompt2model::data::paper::load_paper_results(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data"),
    )
    .unwrap();
    assert_eq!((paper.diversity.without, paper.diversity.with, paper.diversity.of), (120, 25, 200));
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("duplicate_inputs"));
}

#[tokio::test]
async fn invalid_configs_are_rejected() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let teacher = OpenAiTeacher::new(teacher_cfg(&server.base_url)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        GeneratorConfig { num_examples: 0, ..Default::default() },
        GeneratorConfig { initial_temperature: 1.8, max_temperature: 1.7, ..Default::default() },
        GeneratorConfig { max_temperature: 2.5, ..Default::default() },
    ] {
        let e = generate(&teacher, &temporal_prompt(), &cfg, dir.path(), None).await.unwrap_err();
        assert!(matches!(e, GenerateError::Config(_)), "{e}");
    }
    assert_eq!(server.state.request_count(), 0);
    // A checkpoint written for another configuration is not silently reused.
    let (r, _, _) = run(
        &server.base_url,
        &dir.path().join("c.sqlite"),
        CacheMode::ReadWrite,
        dir.path(),
        &gen_cfg(5),
        None,
    )
    .await;
    r.unwrap();
    let other = GeneratorConfig { seed: 99, ..gen_cfg(5) };
    let (r, _, _) = run(
        &server.base_url,
        &dir.path().join("c.sqlite"),
        CacheMode::ReadWrite,
        dir.path(),
        &other,
        None,
    )
    .await;
    assert!(matches!(r, Err(GenerateError::Checkpoint { .. })));
    let fresh = GeneratorConfig { resume: false, ..other };
    let (r, _, _) = run(
        &server.base_url,
        &dir.path().join("c.sqlite"),
        CacheMode::ReadWrite,
        dir.path(),
        &fresh,
        None,
    )
    .await;
    assert_valid(&r.unwrap().0, 5);
}

/// The command as a user runs it, against the fault-injecting server: 200 valid unique
/// examples (JSONL + parquet), a report with the diversity ablation's figure, then the same
/// command with `--replay-only` from the recorded cache, without a single request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2m_generate_200_against_the_fault_server_then_replay_only() {
    let server = FakeServer::start(faulty()).await;
    let dir = tempfile::tempdir().unwrap();
    let run1 = dir.path().join("run1");
    let cache = run1.join("teacher_cache.sqlite");
    let base_url = server.base_url.clone();
    let p2m = move |out: std::path::PathBuf, extra: Vec<String>| {
        let mut args: Vec<String> = [
            "generate",
            "--task",
            "temporal",
            "--n",
            "200",
            "--backend",
            "openai",
            "--model",
            "fake-gpt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--base-url".into(),
            base_url.clone(),
            "--api-key-env".into(),
            "P2M_TEST_GEN_NO_KEY".into(),
        ]);
        args.extend([
            "--request-timeout".into(),
            "0.5".into(),
            "--deterministic-parse".into(),
            "--diversity-ablation".into(),
        ]);
        args.extend(["--out".into(), out.display().to_string()]);
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_p2m"))
                .args(&args)
                .current_dir(crate::common::repo_root())
                .output()
                .unwrap()
        })
    };

    let out = p2m(run1.clone(), vec![]).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let examples = read_examples_jsonl(&run1.join(dataset_generator::EXAMPLES_FILE)).unwrap();
    assert_valid(&examples, 200);
    assert!(
        server.state.faults_injected.load(std::sync::atomic::Ordering::SeqCst) >= 5,
        "faults were injected"
    );
    let read_parquet = |path: std::path::PathBuf| {
        use polars::prelude::SerReader;
        polars::prelude::ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap()
    };
    let frame = read_parquet(run1.join("examples.parquet"));
    assert_eq!(frame.height(), 200);
    let names: Vec<String> = frame.get_column_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["input", "output"]);
    let readme = std::fs::read_to_string(run1.join("report/README.md")).unwrap();
    assert!(
        readme.contains("the paper (gpt-3.5-turbo) reports 120/200 without and 25/200 with"),
        "{readme}"
    );
    assert!(readme.contains("diversity.png"), "the figure is shown in the report: {readme}");
    let table = std::fs::read_to_string(run1.join("report/diversity.md")).unwrap();
    assert!(
        table.contains("Duplicate inputs with and without generated examples in the prompt"),
        "{table}"
    );
    for figure in ["diversity.png", "diversity.svg", "temperature_curve.png"] {
        assert!(run1.join("report").join(figure).is_file(), "{figure} in the report");
    }
    let diversity = read_parquet(run1.join("report/diversity.parquet"));
    let duplicates: Vec<u64> =
        diversity.column("duplicate inputs").unwrap().u64().unwrap().into_no_null_iter().collect();
    // The fake model repeats itself from a 20-input space without generated examples in the prompt.
    assert!(duplicates[0] >= 150 && duplicates[1] < duplicates[0], "{duplicates:?}");
    let requests = server.state.request_count();

    // The same command, replay-only from the recorded cache into a fresh folder: no request at all.
    let run2 = dir.path().join("run2");
    let out = p2m(
        run2.clone(),
        vec!["--replay-only".into(), "--cache".into(), cache.display().to_string()],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.state.request_count(), requests, "zero requests on replay");
    assert_eq!(
        read_examples_jsonl(&run2.join(dataset_generator::EXAMPLES_FILE)).unwrap(),
        examples
    );
    // The same duplicates from the cache alone (the request counts include transient failures,
    // which differ between a live run and its replay).
    let replayed = read_parquet(run2.join("report/diversity.parquet"));
    assert_eq!(
        replayed.column("duplicate inputs").unwrap(),
        diversity.column("duplicate inputs").unwrap()
    );
    eprintln!("live:\n{diversity}\nreplayed:\n{replayed}");
}

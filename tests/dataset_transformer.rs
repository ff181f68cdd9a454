//! The dataset transformer (issue #26): retrieved rows rewritten by the teacher into the task's
//! format — against the loopback fake teacher (`tests/fake_openai`: a plan asked once, one
//! request per row, malformed answers dropped and counted, a replay-only rerun without a
//! request), through `p2m run --transform-retrieved`, and against a real llama.cpp server
//! (llama-cpp-python serving the project's SmolLM2 GGUF).

use crate::fake_openai::{FakeServer, ServerConfig};

use std::collections::BTreeMap;
use std::path::Path;

use prompt2model::data::examples::{read_examples_jsonl, Example};
use prompt2model::dataset_transformer::{
    self as dt, TransformConfig, TransformLog, TRANSFORMED_FILE, TRANSFORM_LOG_FILE,
};
use prompt2model::prompt_parser::ParsedPrompt;
use prompt2model::teacher::{CacheMode, CachedTeacher, Teacher, TeacherKind, TeacherSettings};

const NO_KEY: &str = "P2M_TEST_TRANSFORM_NO_KEY";

/// An OpenAI-compatible teacher at `base_url`, unthrottled.
fn settings(base_url: &str, model: &str) -> TeacherSettings {
    TeacherSettings {
        kind: TeacherKind::Openai,
        base_url: base_url.into(),
        model: model.into(),
        api_key_env: NO_KEY.into(),
        requests_per_minute: None,
        request_timeout_secs: 60.0,
        ..Default::default()
    }
}

fn squad_like_prompt() -> ParsedPrompt {
    ParsedPrompt::new(
        "Answer the question about the passage with a span of the passage.",
        vec![Example::new(
            "Passage: Paris is the capital of France.\nQuestion: What is the capital of France?",
            "Paris",
        )],
    )
}

/// Ten retrieved rows, four of which the fake teacher answers badly (prose, no keys, an empty
/// input, and a second row with the same input as another).
fn rows() -> Vec<Example> {
    let mut rows: Vec<Example> = (0..6)
        .map(|i| Example::new(format!("question: who wrote book {i}?"), format!("author {i}")))
        .collect();
    rows.insert(2, Example::new("question: MALFORMED row", "x"));
    rows.insert(4, Example::new("question: NOKEYS row", "y"));
    rows.push(Example::new("question: EMPTY row", "z"));
    rows.push(Example::new("question: TWIN row a", "t1"));
    rows.push(Example::new("question: TWIN row b", "t2"));
    rows
}

fn shapes(server: &FakeServer) -> Vec<&'static str> {
    server.state.seen.lock().unwrap().iter().map(|s| s.response_format).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_is_asked_once_each_row_once_and_bad_answers_are_dropped_and_counted() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("teacher_cache.sqlite");
    let prompt = squad_like_prompt();
    let rows = rows();
    assert_eq!(rows.len(), 11);
    let cfg = TransformConfig { max_rows: 10, batch_size: 4, ..Default::default() };
    let teacher = CachedTeacher::open(
        settings(&server.base_url, "fake-gpt").build().unwrap(),
        &cache,
        CacheMode::ReadWrite,
    )
    .unwrap();
    let t = dt::transform(&teacher, &prompt, &rows, &cfg, None).await.unwrap();

    // One plan request (free text: no response_format), then one structured request per row.
    assert_eq!(server.state.request_count(), 1 + 10, "{:?}", shapes(&server));
    let formats = shapes(&server);
    assert_eq!(formats.iter().filter(|f| **f == "none").count(), 1, "{formats:?}");
    assert_eq!(formats.iter().filter(|f| **f == "json_schema").count(), 10, "{formats:?}");
    assert_eq!(server.state.answered_twice(), 0);

    // The cap of 10 left one row out; which rows were sent is the seeded sample's business, so
    // the expected counts are derived from the sample itself.
    let sample = dt::rows_to_transform(rows.len(), 10, cfg.seed);
    assert_eq!(sample.len(), 10);
    let sent: Vec<&Example> = sample.iter().map(|&i| &rows[i]).collect();
    let has = |tag: &str| sent.iter().filter(|r| r.input.contains(tag)).count() as u64;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (tag, reason) in
        [("MALFORMED", "no_json"), ("NOKEYS", "missing_keys"), ("EMPTY", "empty_field")]
    {
        if has(tag) > 0 {
            expected.insert(reason.into(), has(tag));
        }
    }
    if has("TWIN") > 1 {
        expected.insert("duplicate_input".into(), has("TWIN") - 1);
    }
    // At most one row is left out, so at least three kinds of bad answer were sent.
    assert!(expected.len() >= 3, "{expected:?}");
    let log = &t.log;
    assert_eq!(log.dropped, expected, "{log:#?}");
    assert_eq!(log.rows_offered, 11);
    assert_eq!(log.rows_asked, 10);
    assert_eq!(log.transformed as u64 + log.dropped_total(), 10);
    assert_eq!(log.requests, 11);
    assert_eq!(log.cached_responses, 0);
    assert!(log.plan.starts_with("1. Use the row's question"), "{}", log.plan);
    assert_eq!(t.examples.len(), log.transformed);
    assert_eq!(t.origin.len(), t.examples.len());
    for (e, &from) in t.examples.iter().zip(&t.origin) {
        assert!(!e.input.is_empty() && !e.output.is_empty());
        assert_eq!(e.output, rows[from].output, "each example comes from its row");
        if !rows[from].input.contains("TWIN") {
            assert_eq!(e.input, format!("Question: {}", rows[from].input));
        }
    }
    let line = log.describe();
    assert!(line.contains(&format!("{} of 10 rows", log.transformed)), "{line}");
    assert!(line.contains("no_json") || !expected.contains_key("no_json"), "{line}");

    // Written atomically beside each other; read back the same.
    dt::write_transformed(dir.path(), &t).unwrap();
    assert_eq!(read_examples_jsonl(&dir.path().join(TRANSFORMED_FILE)).unwrap(), t.examples);
    let read: TransformLog = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(TRANSFORM_LOG_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(&read, log);

    // A replay-only rerun over the same cache: the same examples and not one request.
    let before = server.state.request_count();
    drop(teacher);
    let replay = CachedTeacher::open(
        settings(&server.base_url, "fake-gpt").build().unwrap(),
        &cache,
        CacheMode::ReplayOnly,
    )
    .unwrap();
    let again = dt::transform(&replay, &prompt, &rows, &cfg, None).await.unwrap();
    assert_eq!(again.examples, t.examples);
    assert_eq!(again.log.dropped, t.log.dropped);
    assert_eq!(again.log.cached_responses, 11);
    assert_eq!(again.log.cost_usd, 0.0);
    assert_eq!(server.state.request_count(), before, "zero requests on replay");

    // A replay-only run that needs an answer never recorded stops (fatal), naming the miss, and
    // hands back what it had.
    let more = TransformConfig { max_rows: 11, ..cfg.clone() };
    let err = dt::transform(&replay, &prompt, &rows, &more, None).await.unwrap_err();
    assert!(err.to_string().contains("replay-only"), "{err}");
    assert_eq!(server.state.request_count(), before);
}

/// Writes a retrieved-dataset folder as `p2m retrieve-dataset --out` leaves it (`train.parquet`
/// with `input` and `references`).
fn retrieved_folder(dir: &Path, rows: &[Example]) {
    use prompt2model::data::loaders::common_frame;
    std::fs::create_dir_all(dir).unwrap();
    let frame = common_frame(
        (0..rows.len()).map(|i| format!("r{i}")).collect(),
        rows.iter().map(|r| r.input.clone()).collect(),
        &rows.iter().map(|r| vec![r.output.clone()]).collect::<Vec<_>>(),
        None,
    )
    .unwrap();
    prompt2model::util::fs::write_parquet_atomic(&frame, &dir.join("train.parquet")).unwrap();
}

/// `p2m run --retrieved DIR --transform-retrieved`: the transformed rows are what the run trains
/// on beside the generated ones, the counts are in the stage's summary, notes and the card, the
/// setting is in the stage's fingerprint, and a rerun makes no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2m_run_transforms_the_retrieved_rows_and_the_card_counts_them() {
    use crate::pipeline::{fake_args, ok, p2m, prompt_file, run_blocking, PROMPT};
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let retrieved = dir.path().join("retrieved");
    retrieved_folder(&retrieved, &rows());
    let mut args = fake_args(prompt.to_str().unwrap(), &server.base_url, "capitals");
    args.retain(|a| *a != "--no-dataset-retrieval");
    let retrieved_arg = retrieved.display().to_string();
    args.extend(["--retrieved", &retrieved_arg, "--transform-retrieved", "--transform-rows", "8"]);
    let out = ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("capitals");
    let stage = run.join("dataset-retrieval");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stage.join("stage.json")).unwrap()).unwrap();
    assert_eq!(record["settings"]["transform"]["config"]["max_rows"], 8, "{record}");
    let log: TransformLog =
        serde_json::from_str(&std::fs::read_to_string(stage.join(TRANSFORM_LOG_FILE)).unwrap())
            .unwrap();
    assert_eq!((log.rows_offered, log.rows_asked), (11, 8));
    assert_eq!(log.transformed as u64 + log.dropped_total(), 8);
    let summary = record["summary"].as_str().unwrap();
    assert!(summary.contains(&log.describe()), "{summary}");
    let kept = read_examples_jsonl(&stage.join("retrieved.jsonl")).unwrap();
    assert_eq!(kept.len(), log.transformed, "the source is the transformed rows");
    assert!(kept.iter().all(|e| e.input.starts_with("Question: ")), "{kept:?}");
    let card = std::fs::read_to_string(run.join("model/model_card.md")).unwrap();
    assert!(card.contains("transformed into the task's format"), "{card}");
    let run_json = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(run_json.contains("\"transform_retrieved\": true"), "{run_json}");

    // A rerun: every stage up to date, not one request.
    let requests = server.state.request_count();
    let again = ok(run_blocking(p2m(&runs, &args)).await);
    assert_eq!(server.state.request_count(), requests, "{again}\n{out}");
}

/// The recorded teacher answers nothing: `--transform-retrieved` with it is refused before
/// anything runs, naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_teacher_cannot_transform() {
    use crate::pipeline::{p2m, run_blocking};
    let dir = tempfile::tempdir().unwrap();
    let out = run_blocking(p2m(
        dir.path(),
        &["run", "--task", "temporal", "--teacher", "recorded", "--transform-retrieved"],
    ))
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--transform-retrieved needs a live teacher")
            && err.contains("--teacher local or openai"),
        "{err}"
    );
    assert!(!dir.path().join("temporal-recorded").exists(), "nothing was started");
}

/// `p2m retrieve-dataset --transform`: the chosen dataset (a hub dataset through the fake
/// datasets server, chosen and its columns named by the fake teacher) is saved, then its rows
/// rewritten into `transformed.jsonl` with the log beside; a second run replays every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_dataset_transform_writes_the_rewritten_rows() {
    use crate::retrievers::{hub_datasets, hub_index, p2m_retrieve_dataset};
    let teacher = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let index = hub_index(dir.path());
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let hub = crate::common::datasets_server::fake_datasets_server(hub_datasets(), vec![], 50);
    let args: Vec<String> = [
        "--instruction",
        "Answer a question about a Wikipedia passage with a span of the passage.",
        "--index",
        index.to_str().unwrap(),
        "--encoder",
        "minilm",
        "--max-rows-per-split",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--transform",
        "--transform-rows",
        "6",
        "--teacher",
        "openai",
        "--base-url",
        &teacher.base_url,
        "--model",
        "fake-gpt",
        "--api-key-env",
        NO_KEY,
        "--requests-per-minute",
        "0",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = |args: Vec<String>| {
        let (cache, url) = (cache.clone(), hub.url.clone());
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            p2m_retrieve_dataset(&cache, &url, &[], &refs)
        })
    };
    let first = run(args.clone()).await.unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let v: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let log: TransformLog = serde_json::from_value(v["transform"].clone()).unwrap();
    assert_eq!(log.rows_asked, 6);
    assert_eq!(log.transformed, 6, "{log:?}");
    let rows = read_examples_jsonl(&out.join(TRANSFORMED_FILE)).unwrap();
    assert_eq!(rows.len(), 6);
    // The rows as the retriever saved them (the columns the fake teacher named), rewritten.
    assert!(
        rows.iter()
            .all(|e| e.input.starts_with("Question: id: ") && e.input.contains("\ncontext: ctx ")),
        "{rows:?}"
    );
    assert!(out.join(TRANSFORM_LOG_FILE).is_file() && out.join("teacher_cache.sqlite").is_file());

    let asked = teacher.state.request_count();
    let second = run(args).await.unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(teacher.state.request_count(), asked, "every answer replayed from the cache");
    assert_eq!(read_examples_jsonl(&out.join(TRANSFORMED_FILE)).unwrap(), rows);
}

/// Against a real llama.cpp server (llama-cpp-python serving the project's SmolLM2-135M GGUF, as
/// the teacher tests start it): ten retrieved rows transformed, every answer a valid
/// `{"input", "output"}` object (the schema goes as llama-cpp-python's `json_object` +
/// `schema`), and a replay-only rerun without a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rows_transformed_by_a_real_llama_cpp_server_are_valid_objects() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::teacher_servers::LlamaServer::start(dir.path()).await;
    let base_url = format!("{}/v1", server.root);
    let cache = dir.path().join("teacher_cache.sqlite");
    let teacher = CachedTeacher::open(
        settings(&base_url, "smollm2").build().unwrap(),
        &cache,
        CacheMode::ReadWrite,
    )
    .unwrap();
    let questions = [
        ("who wrote the play hamlet", "William Shakespeare"),
        ("what is the capital of australia", "Canberra"),
        ("how many legs does a spider have", "eight"),
        ("who painted the mona lisa", "Leonardo da Vinci"),
        ("what is the largest planet in the solar system", "Jupiter"),
        ("in which year did the berlin wall fall", "1989"),
        ("what is the chemical symbol for gold", "Au"),
        ("who was the first person to walk on the moon", "Neil Armstrong"),
        ("what is the longest river in africa", "the Nile"),
        ("which language is spoken in brazil", "Portuguese"),
    ];
    let rows: Vec<Example> =
        questions.iter().map(|(q, a)| Example::new(format!("question: {q}"), *a)).collect();
    let cfg = TransformConfig { max_rows: 10, row_max_tokens: 160, ..Default::default() };
    let t0 = std::time::Instant::now();
    let t = dt::transform(&teacher, &squad_like_prompt(), &rows, &cfg, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", server.log_tail()));
    let wall = t0.elapsed().as_secs_f64();
    let log = &t.log;
    let stats = teacher.stats();
    eprintln!(
        "llama.cpp transform: {} of {} rows kept in {wall:.0} s ({} requests, {}+{} tokens), dropped {:?}; plan:\n{}\nexamples: {:#?}",
        log.transformed, log.rows_asked, log.requests, log.prompt_tokens, log.completion_tokens, log.dropped, log.plan, t.examples
    );
    assert_eq!((log.rows_asked, log.requests), (10, 11));
    assert!(!log.plan.is_empty());
    // Every answer parsed as an object with both keys: nothing dropped for its form (a row may
    // still be dropped for what it says: an input the model repeated, or copied from the prompt).
    for malformed in ["no_json", "invalid_json", "truncated_json", "missing_keys"] {
        assert!(!log.dropped.contains_key(malformed), "{malformed}: {:?}", log.dropped);
    }
    assert!(log.transformed > 0);
    assert!(t.examples.iter().all(|e| !e.input.trim().is_empty() && !e.output.trim().is_empty()));
    let e = &stats.endpoints[0];
    assert_eq!(e.response_format, "json_object+schema", "{e:?}");

    // Replay-only: the same examples, no request.
    let seen = stats.http_attempts;
    drop(teacher);
    let replay = CachedTeacher::open(
        settings(&base_url, "smollm2").build().unwrap(),
        &cache,
        CacheMode::ReplayOnly,
    )
    .unwrap();
    let again = dt::transform(&replay, &squad_like_prompt(), &rows, &cfg, None).await.unwrap();
    assert_eq!(again.examples, t.examples);
    assert_eq!((again.log.cached_responses, replay.stats().http_attempts), (11, 0));
    assert!(seen >= 11);
}

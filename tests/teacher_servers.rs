//! Teachers on real inference servers (issue #15): structured output with fallbacks, slots instead
//! of timeouts, backends named from what the server reports, and a fleet of endpoints — against
//! loopback fakes (`tests/fake_openai`), and against a real llama.cpp server: llama-cpp-python's
//! OpenAI-compatible server, built from PyPI by `scripts/llama-server.sh` (the wheel is kept in the
//! project's cache) and serving the project's own SmolLM2-135M-Instruct GGUF.

use crate::fake_openai;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_openai::{FakeServer, ServerConfig};
use prompt2model::data::examples::{read_examples_jsonl, Example};
use prompt2model::dataset_generator::{self, generate, GenerationLog, GeneratorConfig};
use prompt2model::prompt_parser::{parse_deterministic, ParsedPrompt};
use prompt2model::teacher::fleet::FleetTeacher;
use prompt2model::teacher::structured::ResponseFormat;
use prompt2model::teacher::{
    Accounting, CacheMode, CachedTeacher, ChatRequest, OpenAiConfig, OpenAiTeacher, Pricing,
    SamplingParams, Teacher, TeacherError, TeacherKind, TeacherSettings,
};
use serde_json::json;

const NO_KEY: &str = "P2M_TEST_SERVERS_NO_KEY";

fn client(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "fake-gpt".into(),
        backend_name: "fake".into(),
        api_key_env: NO_KEY.into(),
        require_api_key: Some(false),
        request_timeout_secs: 5.0,
        max_retries: 4,
        backoff_base_ms: 20,
        backoff_max_ms: 200,
        requests_per_minute: None,
        max_concurrency: 8,
        initial_concurrency: 8,
        ..Default::default()
    }
}

/// Settings of an OpenAI-compatible teacher at `base_url` (commas: a fleet), unthrottled.
fn settings(base_url: &str) -> TeacherSettings {
    TeacherSettings {
        kind: TeacherKind::Openai,
        base_url: base_url.into(),
        model: "fake-gpt".into(),
        api_key_env: NO_KEY.into(),
        requests_per_minute: None,
        request_timeout_secs: 5.0,
        ..Default::default()
    }
}

/// A generator-style request whose answer is an `{"input", "output"}` object.
fn structured(tag: &str) -> ChatRequest {
    ChatRequest::user(
        format!("[low-quality examples]:\nsomething {tag}\n\n[new example (in JSON)]:"),
        SamplingParams {
            temperature: 0.7,
            n: 1,
            seed: Some(7),
            max_tokens: Some(100),
            json_fields: Some(vec!["input".into(), "output".into()]),
            ..Default::default()
        },
    )
}

fn plain(tag: &str) -> ChatRequest {
    ChatRequest::user(
        format!("[new example (in JSON)]: {tag}"),
        SamplingParams { n: 1, seed: Some(1), max_tokens: Some(50), ..Default::default() },
    )
}

fn shapes(server: &FakeServer) -> Vec<&'static str> {
    server.state.seen.lock().unwrap().iter().map(|s| s.response_format).collect()
}

fn temporal_prompt() -> ParsedPrompt {
    parse_deterministic(&crate::common::task_prompt("temporal")).unwrap()
}

fn assert_valid(examples: &[Example], n: usize) {
    assert_eq!(examples.len(), n);
    let inputs: HashSet<&str> = examples.iter().map(|e| e.input.as_str()).collect();
    assert_eq!(inputs.len(), n, "unique inputs");
    assert!(examples.iter().all(|e| !e.input.trim().is_empty() && !e.output.trim().is_empty()));
}

// ---------------------------------------------------------------------------------------------
// Structured output

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_fallbacks_are_taken_and_remembered() {
    // Only llama-cpp-python's shape: `json_schema` is refused once (with a 500 naming
    // response_format, as llama-cpp-python 0.3 does: a refusal, not a lost request to retry),
    // then never sent again.
    let server = FakeServer::start(ServerConfig {
        accept_formats: Some(vec!["json_object+schema"]),
        refuse_status: 500,
        ..Default::default()
    })
    .await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    assert_eq!(t.response_format(), ResponseFormat::JsonSchema);
    t.chat(&structured("a")).await.unwrap();
    assert_eq!(shapes(&server), ["json_schema", "json_object+schema"]);
    let sent = server.state.seen.lock().unwrap()[1].format_value.clone().unwrap();
    assert_eq!(sent["schema"]["required"], json!(["input", "output"]), "{sent}");
    assert_eq!(sent["schema"]["additionalProperties"], json!(false));
    let first = server.state.seen.lock().unwrap()[0].format_value.clone().unwrap();
    assert_eq!(first["json_schema"]["schema"], sent["schema"], "the same schema in both shapes");
    for i in 0..3 {
        t.chat(&structured(&format!("b{i}"))).await.unwrap();
    }
    assert_eq!(shapes(&server)[2..], ["json_object+schema"; 3]);
    assert_eq!(t.response_format(), ResponseFormat::JsonObjectSchema);
    let st = t.stats();
    assert_eq!((st.calls, st.http_attempts, st.format_fallbacks, st.retries), (4, 5, 1, 0));
    assert_eq!(st.endpoints[0].lost, 0, "a refusal is not a lost request");
    assert_eq!(st.endpoints[0].response_format, "json_object+schema");
    t.chat(&plain("c")).await.unwrap();
    assert_eq!(
        *shapes(&server).last().unwrap(),
        "none",
        "an unstructured request asks for nothing"
    );

    // A server that takes no shape at all: down to the prompt alone, remembered.
    let none =
        FakeServer::start(ServerConfig { accept_formats: Some(vec![]), ..Default::default() })
            .await;
    let t = OpenAiTeacher::new(client(&none.base_url)).unwrap();
    t.chat(&structured("a")).await.unwrap();
    assert_eq!(shapes(&none), ["json_schema", "json_object+schema", "json_object", "none"]);
    t.chat(&structured("b")).await.unwrap();
    assert_eq!(shapes(&none)[4..], ["none"]);
    assert_eq!(t.response_format(), ResponseFormat::None);
    assert_eq!(t.stats().format_fallbacks, 3);

    // A whole round at once: each first request is refused at most once, later ones never.
    let server = FakeServer::start(ServerConfig {
        accept_formats: Some(vec!["json_object+schema"]),
        latency: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let round: Vec<ChatRequest> = (0..5).map(|i| structured(&format!("r{i}"))).collect();
    assert!(t.chat_batch(&round).await.iter().all(Result::is_ok));
    let refused = shapes(&server).iter().filter(|s| **s == "json_schema").count();
    assert!((1..=5).contains(&refused), "{refused}");
    let before = shapes(&server).len();
    let round: Vec<ChatRequest> = (5..10).map(|i| structured(&format!("r{i}"))).collect();
    assert!(t.chat_batch(&round).await.iter().all(Result::is_ok));
    assert_eq!(shapes(&server)[before..], ["json_object+schema"; 5]);

    // A 400 for another reason (the prompt): every shape is tried, the error is returned, and
    // the endpoint does not step down for it.
    let server = FakeServer::start(ServerConfig::default()).await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let bad = ChatRequest { messages: structured("x").messages, ..structured("x") };
    let bad = ChatRequest::user(format!("BAD_REQUEST {}", bad.messages[0].content), bad.params);
    let e = t.chat(&bad).await.unwrap_err();
    assert!(matches!(e, TeacherError::Status { status: 400, .. }), "{e}");
    assert_eq!(server.state.request_count(), 4);
    assert_eq!(t.response_format(), ResponseFormat::JsonSchema, "nothing learnt from a bad prompt");
    t.chat(&structured("ok")).await.unwrap();
    assert_eq!(*shapes(&server).last().unwrap(), "json_schema");

    // The configured first shape: `none` sends no response_format at all.
    let server = FakeServer::start(ServerConfig::default()).await;
    let t = OpenAiTeacher::new(OpenAiConfig {
        response_format: ResponseFormat::None,
        ..client(&server.base_url)
    })
    .unwrap();
    t.chat(&structured("off")).await.unwrap();
    assert_eq!(shapes(&server), ["none"]);
}

/// The prompt parser and the retrievers' LLM calls ask for their JSON the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parser_and_the_retrievers_use_the_same_mechanism() {
    let server = FakeServer::start(ServerConfig {
        accept_formats: Some(vec!["json_object+schema"]),
        ..Default::default()
    })
    .await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let cfg = prompt2model::prompt_parser::ParserConfig { max_attempts: 1, ..Default::default() };
    // The fake echoes parsing prompts (not a valid parse): only what was asked matters here.
    let _ = prompt2model::prompt_parser::parse_with_teacher(
        &t,
        "Translate into French.\n\ninput=\"cat\"\noutput=\"chat\"",
        &cfg,
    )
    .await;
    let seen = server.state.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.response_format).collect::<Vec<_>>(),
        ["json_schema", "json_object+schema"]
    );
    let schema = &seen[1].format_value.as_ref().unwrap()["schema"];
    assert_eq!(schema["required"], json!(["Instruction", "Demonstrations"]), "{schema}");

    let columns: Vec<String> = ["question", "context", "answer"].map(String::from).to_vec();
    let example = columns.iter().map(|c| (c.clone(), format!("a {c}"))).collect();
    let choice = prompt2model::dataset_retriever::llm_select_columns(
        &t,
        "Answer questions.",
        "acme/qa",
        "QA pairs",
        &columns,
        &example,
        1,
    )
    .await
    .unwrap();
    assert_eq!(choice.output, "answer");
    let last = server.state.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.response_format, "json_object+schema", "the shape learnt by the parser's call");
    let schema = &last.format_value.unwrap()["schema"];
    assert_eq!(schema["properties"]["output"]["enum"], json!(columns));
}

// ---------------------------------------------------------------------------------------------
// Slots and names

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_cap_what_is_in_flight_and_waiting_for_one_is_not_timed() {
    // A llama.cpp server with 2 slots and 400 ms per answer; the request timeout is 1 s. Eight
    // requests at once: six wait for a slot (up to 1.2 s), none is slow, none is sent twice.
    let server = FakeServer::start(ServerConfig {
        owned_by: "llamacpp",
        props_slots: Some(2),
        latency: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let t = TeacherSettings { request_timeout_secs: 1.0, ..settings(&server.base_url) }
        .build_openai()
        .unwrap();
    assert_eq!(t.backend(), "llama.cpp");
    let e = &t.stats().endpoints[0];
    assert_eq!(e.slots, 2);
    assert!(
        e.slots_source.contains("/props") && e.backend_source.contains("owned_by=llamacpp"),
        "{e:?}"
    );
    let reqs: Vec<ChatRequest> = (0..8).map(|i| plain(&format!("s{i}"))).collect();
    let t0 = Instant::now();
    assert!(t.chat_batch(&reqs).await.iter().all(Result::is_ok));
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(server.state.max_in_flight.load(Ordering::SeqCst), 2, "never more than the slots");
    assert_eq!(server.state.request_count(), 8, "nothing sent twice");
    let st = t.stats();
    assert_eq!((st.slow_requests, st.retries, st.timeouts), (0, 0, 0));
    assert!(st.queue_secs > 3.0, "six requests queued 0.4–1.2 s each: {}", st.queue_secs);
    assert!((3.0..5.0).contains(&st.decode_secs), "8 × 0.4 s in slots: {}", st.decode_secs);
    let e = &st.endpoints[0];
    assert!(e.slot_utilisation() > 0.8, "{} over {wall:.2} s", e.slot_utilisation());
    assert!(wall < 2.5, "{wall}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_named_from_what_the_server_reports() {
    let llama_python = FakeServer::start(ServerConfig {
        owned_by: "me",
        openapi_title: Some("🦙 llama.cpp Python API"),
        ..Default::default()
    })
    .await;
    let t = settings(&llama_python.base_url).build_openai().unwrap();
    assert_eq!(t.backend(), "llama-cpp-python");
    let e = &t.stats().endpoints[0];
    assert_eq!(e.slots, 1, "one request at a time: {e:?}");
    assert_eq!(llama_python.state.request_count(), 0, "discovery is not a chat request");
    assert!(llama_python.state.probes.load(Ordering::SeqCst) >= 2);

    let vllm = FakeServer::start(ServerConfig { owned_by: "vllm", ..Default::default() }).await;
    let t = settings(&vllm.base_url).build_openai().unwrap();
    assert_eq!((t.backend(), t.stats().endpoints[0].slots), ("vllm", 5), "vLLM: the default slots");
    let t = TeacherSettings {
        backend_name: Some("my-vllm".into()),
        slots: Some(16),
        ..settings(&vllm.base_url)
    }
    .build_openai()
    .unwrap();
    assert_eq!(
        (t.backend(), t.stats().endpoints[0].slots),
        ("my-vllm", 16),
        "the user's settings win"
    );
    let probes = vllm.state.probes.load(Ordering::SeqCst);
    let t = TeacherSettings { discover: false, ..settings(&vllm.base_url) }.build_openai().unwrap();
    assert_eq!(t.backend(), "openai-compatible");
    assert_eq!(vllm.state.probes.load(Ordering::SeqCst), probes, "no discovery when it is off");
    // Nothing listening: built anyway (the first request will report it), with the default name.
    let t = settings("http://127.0.0.1:9/v1").build_openai().unwrap();
    assert_eq!(t.backend(), "openai-compatible");
}

// ---------------------------------------------------------------------------------------------
// Fleets

#[test]
fn fleet_shards_by_request_id_in_proportion_to_slots() {
    let accounting = Arc::new(Accounting::new(Pricing::FREE, None));
    let ep = |url: &str, slots: usize| {
        OpenAiTeacher::with_accounting(
            OpenAiConfig { max_concurrency: slots, initial_concurrency: slots, ..client(url) },
            accounting.clone(),
        )
        .unwrap()
    };
    let fleet = FleetTeacher::new(
        vec![ep("http://127.0.0.1:1/v1", 1), ep("http://127.0.0.1:2/v1", 3)],
        "fake",
        "fake-gpt",
        3,
    )
    .unwrap();
    let firsts: Vec<usize> = (0..800).map(|i| fleet.ranking(&plain(&i.to_string()))[0]).collect();
    let second = firsts.iter().filter(|&&i| i == 1).count() as f64 / 800.0;
    assert!((0.68..0.82).contains(&second), "3 of 4 slots get ~75 %: {second}");
    assert_eq!(fleet.ranking(&plain("7")), fleet.ranking(&plain("7")), "stable per request");
    let separate = OpenAiTeacher::new(client("http://127.0.0.1:3/v1")).unwrap();
    assert!(FleetTeacher::new(vec![ep("http://127.0.0.1:1/v1", 1), separate], "f", "m", 3).is_err());
    assert!(FleetTeacher::new(
        vec![ep("http://127.0.0.1:1/v1", 1), ep("http://127.0.0.1:1/v1", 1)],
        "f",
        "m",
        3
    )
    .is_err());
}

/// Two loopback servers, one of which dies mid-run: N valid examples, nothing lost (every answer
/// is in the one cache), nothing answered twice, and the rerun replays without either server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_finishes_when_one_endpoint_dies_and_pays_nothing_twice() {
    // The fake's answers depend on arrival order, so how many requests a run needs varies; the
    // dying server gets 8 of 9 shares and dies after 2 answers, so it surely gets more than that.
    let dying = FakeServer::start(ServerConfig {
        die_after_ok: Some(2),
        latency: Duration::from_millis(40),
        ..Default::default()
    })
    .await;
    let healthy = FakeServer::start(ServerConfig {
        latency: Duration::from_millis(40),
        ..Default::default()
    })
    .await;
    let fleet_url = format!("{}#slots=8,{}#slots=1", dying.base_url, healthy.base_url);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("teacher_cache.sqlite");
    let cfg =
        GeneratorConfig { num_examples: 40, max_tokens: Some(300), seed: 7, ..Default::default() };
    let fleet = settings(&fleet_url).build_openai().unwrap();
    assert_eq!(fleet.backend(), "fake", "both report owned_by=fake");
    let cached = CachedTeacher::open(fleet, &cache, CacheMode::ReadWrite).unwrap();
    let (examples, log) =
        generate(&cached, &temporal_prompt(), &cfg, &dir.path().join("run1"), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_valid(&examples, 40);
    assert!(dying.state.dead.load(Ordering::SeqCst));
    let (ok_dying, ok_healthy) = (dying.state.ok_count(), healthy.state.ok_count());
    assert_eq!(ok_dying, 2);
    assert!(ok_healthy > 2, "{ok_healthy}");
    let mut answered: Vec<String> = dying.state.ok_digests.lock().unwrap().clone();
    answered.extend(healthy.state.ok_digests.lock().unwrap().iter().cloned());
    let distinct: HashSet<&String> = answered.iter().collect();
    assert_eq!(distinct.len(), answered.len(), "a request answered twice is paid twice");
    assert_eq!(
        cached.len().unwrap(),
        5 * (ok_dying + ok_healthy) as u64,
        "every answer (5 choices each) is in the one cache: nothing lost"
    );
    let st = &log.teacher_stats;
    let by_url: HashMap<&str, &prompt2model::teacher::EndpointStats> =
        st.endpoints.iter().map(|e| (e.base_url.as_str(), e)).collect();
    assert!(by_url[dying.base_url.as_str()].out_of_service, "{st:?}");
    assert!(by_url[dying.base_url.as_str()].lost > 0);
    assert!(!by_url[healthy.base_url.as_str()].out_of_service);
    assert_eq!(st.slots, 9);
    eprintln!(
        "fleet: {ok_dying} answers from the endpoint that died, {ok_healthy} from the other; {:?}",
        log.errors
    );

    // Replay-only, with neither server needed: the same examples, not one request.
    let requests = healthy.state.request_count();
    healthy.kill();
    let replay = TeacherSettings {
        backend_name: Some("fake".into()),
        discover: false,
        ..settings(&fleet_url)
    }
    .build_openai()
    .unwrap();
    let cached = CachedTeacher::open(replay, &cache, CacheMode::ReplayOnly).unwrap();
    let (again, _) = generate(&cached, &temporal_prompt(), &cfg, &dir.path().join("run2"), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, examples);
    assert_eq!(healthy.state.request_count(), requests);
}

/// The same through the command line: `--base-url A,B`, the endpoint lines in the summary, and
/// `--replay-only` with no request (and no discovery) at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2m_generate_against_a_fleet_with_a_dying_endpoint() {
    // As above: the dying server gets most shares (8 slots against 3), so it surely dies.
    let dying =
        FakeServer::start(ServerConfig { die_after_ok: Some(2), ..Default::default() }).await;
    let healthy = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let urls = format!("{}#slots=8,{}#slots=3", dying.base_url, healthy.base_url);
    let run = |out: PathBuf, extra: &[&str]| {
        let mut args: Vec<String> = [
            "generate",
            "--task",
            "temporal",
            "--n",
            "30",
            "--backend",
            "openai",
            "--model",
            "fake-gpt",
            "--deterministic-parse",
            "--requests-per-minute",
            "0",
            "--api-key-env",
            NO_KEY,
            "--base-url",
            &urls,
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(out.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_p2m"))
                .args(&args)
                .current_dir(crate::common::repo_root())
                .output()
                .unwrap()
        })
    };
    let run1 = dir.path().join("run1");
    let out = run(run1.clone(), &[]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let examples = read_examples_jsonl(&run1.join(dataset_generator::EXAMPLES_FILE)).unwrap();
    assert_valid(&examples, 30);
    assert!(stdout.contains("teacher fake / fake-gpt"), "{stdout}");
    assert!(
        stdout.contains("taken out of service") && stdout.contains("3 slot(s) [setting]"),
        "{stdout}"
    );
    assert!(dying.state.dead.load(Ordering::SeqCst));
    let mut answered: Vec<String> = dying.state.ok_digests.lock().unwrap().clone();
    answered.extend(healthy.state.ok_digests.lock().unwrap().iter().cloned());
    assert_eq!(answered.iter().collect::<HashSet<_>>().len(), answered.len(), "nothing paid twice");
    let log: GenerationLog =
        serde_json::from_slice(&std::fs::read(run1.join(dataset_generator::LOG_FILE)).unwrap())
            .unwrap();
    assert_eq!(log.backend, "fake");
    assert_eq!(log.teacher_stats.endpoints.len(), 2);

    let (requests, probes) =
        (healthy.state.request_count(), healthy.state.probes.load(Ordering::SeqCst));
    let run2 = dir.path().join("run2");
    let cache = run1.join("teacher_cache.sqlite").display().to_string();
    let out = run(run2.clone(), &["--replay-only", "--cache", &cache]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        read_examples_jsonl(&run2.join(dataset_generator::EXAMPLES_FILE)).unwrap(),
        examples
    );
    assert_eq!(healthy.state.request_count(), requests, "zero requests on replay");
    assert_eq!(healthy.state.probes.load(Ordering::SeqCst), probes, "no discovery on replay");
}

// ---------------------------------------------------------------------------------------------
// The real server

/// A loopback HTTP proxy that forwards to `upstream` and logs every request it forwards: the
/// count of what reached the server.
struct CountingProxy {
    base_url: String,
    log: Arc<Mutex<Vec<(String, String, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingProxy {
    async fn start(upstream_root: String) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<(String, String, u16)>>> = Arc::default();
        let (log2, client) = (log.clone(), reqwest::Client::new());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let (log, client, upstream) = (log2.clone(), client.clone(), upstream_root.clone());
                tokio::spawn(async move {
                    let Some((line, headers, body)) = fake_openai::read_request(&mut stream).await
                    else {
                        return;
                    };
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
                    let digest = crate::common::sha256_hex(&body);
                    let mut rb = client
                        .request(method.parse().unwrap(), format!("{upstream}{path}"))
                        .body(body);
                    if let Some(ct) = headers.get("content-type") {
                        rb = rb.header("content-type", ct);
                    }
                    let (status, bytes) = match rb.send().await {
                        Ok(r) => {
                            (r.status().as_u16(), r.bytes().await.unwrap_or_default().to_vec())
                        }
                        Err(_) => (502, b"{}".to_vec()),
                    };
                    log.lock().unwrap().push((format!("{method} {path}"), digest, status));
                    fake_openai::respond(&mut stream, status, &[], &bytes).await;
                });
            }
        });
        CountingProxy { base_url: format!("http://{addr}/v1"), log, task }
    }

    fn chat_requests(&self) -> Vec<(String, u16)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p.starts_with("POST ") && p.contains("/chat/completions"))
            .map(|(_, d, s)| (d.clone(), *s))
            .collect()
    }
}

/// The llama.cpp server process; killed when dropped.
pub(crate) struct LlamaServer {
    child: Child,
    pub(crate) root: String,
    log: PathBuf,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    /// Install (or reuse) llama-cpp-python with `scripts/llama-server.sh`, start it on a free
    /// port and wait until it serves. Panics — never skips — when it cannot.
    pub(crate) async fn start(log_dir: &Path) -> LlamaServer {
        let repo = crate::common::repo_root();
        let script = repo.join("scripts/llama-server.sh");
        let install = tokio::task::spawn_blocking({
            let script = script.clone();
            move || Command::new("bash").arg(&script).arg("install").output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            install.status.success(),
            "installing llama-cpp-python (scripts/llama-server.sh install) failed:\n{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = log_dir.join("llama-server.log");
        let child = Command::new("bash")
            .arg(&script)
            .args(["serve", &port.to_string()])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut server = LlamaServer { child, root: format!("http://127.0.0.1:{port}"), log };
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the llama.cpp server exited ({status}):\n{}", server.log_tail());
            }
            let up = client
                .get(format!("{}/v1/models", server.root))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return server;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "the llama.cpp server did not come up in 3 minutes:\n{}",
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Run p2m with `args`; panics after `limit`.
async fn p2m(args: Vec<String>, limit: Duration) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_p2m"))
            .args(&args)
            .current_dir(crate::common::repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        // Drain the pipes on threads so a chatty child never blocks.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let o = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut b).ok();
            b
        });
        let e = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut err, &mut b).ok();
            b
        });
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "p2m {} ran past {limit:?}; stderr:\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&e.join().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        std::process::Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
    })
    .await
    .unwrap()
}

/// The command against a real llama.cpp server (llama-cpp-python serving the project's
/// SmolLM2 GGUF): 20 valid examples, no request reaching the server twice (counted on a proxy in
/// front of it), then `--replay-only` reproduces them from the cache without a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2m_generate_against_a_real_llama_cpp_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = LlamaServer::start(dir.path()).await;
    let proxy = CountingProxy::start(server.root.clone()).await;
    let out1 = dir.path().join("run1");
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["generate", "--task", "temporal", "--n", "20", "--backend", "openai", "--base-url"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend([proxy.base_url.clone(), "--model".into(), "smollm2".into()]);
        a.extend([
            "--api-key-env".into(),
            NO_KEY.into(),
            "--out".into(),
            out.display().to_string(),
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let t0 = Instant::now();
    let out = p2m(args(&out1, &[]), Duration::from_secs(40 * 60)).await;
    let wall = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "p2m generate against llama.cpp failed:\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_tail()
    );
    let examples = read_examples_jsonl(&out1.join(dataset_generator::EXAMPLES_FILE)).unwrap();
    assert_valid(&examples, 20);
    let log: GenerationLog =
        serde_json::from_slice(&std::fs::read(out1.join(dataset_generator::LOG_FILE)).unwrap())
            .unwrap();
    let chats = proxy.chat_requests();
    let mut bodies: HashMap<&str, usize> = HashMap::new();
    for (d, _) in &chats {
        *bodies.entry(d.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = bodies.iter().filter(|(_, n)| **n > 1).collect();
    let statuses: HashMap<u16, usize> = chats.iter().fold(HashMap::new(), |mut m, (_, s)| {
        *m.entry(*s).or_default() += 1;
        m
    });
    let e = &log.teacher_stats.endpoints[0];
    eprintln!(
        "real llama.cpp server: {} examples in {wall:.0} s, {} chat requests (statuses {statuses:?}), {} sent twice; \
         backend {} ({}), {} slot(s) [{}], response_format {}; queue {:.1} s, in slots {:.1} s, {:.1} completion tokens/s, \
         slot utilisation {:.0} %; rejected {:?}\n{stdout}",
        examples.len(),
        chats.len(),
        twice.len(),
        log.backend,
        e.backend_source,
        e.slots,
        e.slots_source,
        e.response_format,
        e.queue_secs,
        e.decode_secs,
        e.tokens_per_sec(),
        e.slot_utilisation() * 100.0,
        log.rejected
    );
    assert!(twice.is_empty(), "requests sent to the server twice: {twice:?}");
    assert_eq!(log.backend, "llama-cpp-python", "named from what the server reports");
    assert_eq!(e.slots, 1, "{e:?}");
    assert_eq!(e.response_format, "json_object+schema", "{e:?}");
    // A request may run past the slow mark on a loaded machine (the suite runs tests in parallel
    // on 2 cores): it is waited for, never sent again, which `twice` above checks on the proxy.
    eprintln!("slow requests (waited for, not resent): {}", log.teacher_stats.slow_requests);

    // Replay-only into a fresh folder: the same examples, not one request (nor a discovery GET).
    let seen = proxy.log.lock().unwrap().len();
    let out2 = dir.path().join("run2");
    let cache = out1.join("teacher_cache.sqlite").display().to_string();
    let out =
        p2m(args(&out2, &["--replay-only", "--cache", &cache]), Duration::from_secs(300)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        read_examples_jsonl(&out2.join(dataset_generator::EXAMPLES_FILE)).unwrap(),
        examples
    );
    assert_eq!(proxy.log.lock().unwrap().len(), seen, "zero requests on replay");
}

//! Teacher throughput (issue #4's benchmark), printed as JSON:
//!
//! 1. **Throttling.** The OpenAI-compatible backend against the fault-injecting loopback server
//!    (`tests/fake_openai`) that enforces a requests-per-minute limit and adds latency to every
//!    answer. With the limit configured on the client, the achieved rate should be ≥ 95 % of it
//!    with zero 429s.
//! 2. **Local teacher.** SmolLM2-135M-Instruct on tch: completion tokens per second for a request
//!    with n = 5 choices (one shared prefill, five decoded rows).
//! 3. **A real server** (`--real-server URL`, e.g. llama.cpp's server started by
//!    `scripts/bench-llama-server.sh`): the same throttling measurement against it — achieved
//!    requests per minute vs the limit — plus completion tokens per second, slot utilisation and
//!    queue vs in-slot time, for a limit below the server's capacity and for no limit (the
//!    server's own capacity). Requests are the generator's: structured `{"input", "output"}`
//!    answers, one choice, 64 tokens at most. The backend and its slots are discovered.
//!
//! `cargo bench --bench teacher` (release). Arguments: `--rpm 600 --requests 150 --latency-ms 200`;
//! `--no-local` skips section 2; `--real-server URL [--real-model smollm2] [--real-rpm 30]
//! [--real-requests 40] [--only-real]`.

// The module allows its own dead code (the bench uses a part of it).
#[path = "../tests/fake_openai/mod.rs"]
mod fake_openai;

use std::time::{Duration, Instant};

use fake_openai::{FakeServer, ServerConfig};
use prompt2model::teacher::local::LocalTeacher;
use prompt2model::teacher::{
    ChatRequest, OpenAiConfig, OpenAiTeacher, SamplingParams, Teacher, TeacherKind, TeacherSettings,
};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// `requests` generator-style requests at the server behind `teacher`; achieved rate from the
/// spacing of the answers (steady state: one answer per request sent).
async fn real_server_run(
    teacher: &dyn Teacher,
    requests: usize,
    limit: Option<f64>,
) -> serde_json::Value {
    use futures_util::future::join_all;
    let reqs: Vec<ChatRequest> = (0..requests)
        .map(|i| {
            ChatRequest::user(
                "Write one new example of a sentence with a date phrase and the date it refers to. Reply as JSON with fields input and output.",
                SamplingParams {
                    temperature: 0.8,
                    n: 1,
                    seed: Some(1000 + i as u64),
                    max_tokens: Some(64),
                    json_fields: Some(vec!["input".into(), "output".into()]),
                    ..Default::default()
                },
            )
        })
        .collect();
    let before = teacher.stats();
    let t0 = Instant::now();
    let done: Vec<(Instant, bool)> = join_all(reqs.iter().map(|r| async move {
        let ok = teacher.chat(r).await.is_ok();
        (Instant::now(), ok)
    }))
    .await;
    let wall = t0.elapsed().as_secs_f64();
    let after = teacher.stats();
    let mut times: Vec<Instant> = done.iter().map(|d| d.0).collect();
    times.sort();
    let span = times.last().unwrap().duration_since(times[0]).as_secs_f64().max(1e-9);
    let achieved = (times.len() - 1) as f64 / span * 60.0;
    let completion = after.completion_tokens - before.completion_tokens;
    let busy = after.decode_secs - before.decode_secs;
    let slots = after.slots.max(1) as f64;
    serde_json::json!({
        "limit_rpm": limit, "requests": requests, "ok": done.iter().filter(|d| d.1).count(),
        "achieved_rpm": achieved, "fraction_of_limit": limit.map(|l| achieved / l),
        "wall_s": wall, "completion_tokens": completion,
        "prompt_tokens": after.prompt_tokens - before.prompt_tokens,
        "completion_tokens_per_s": completion as f64 / wall,
        "slot_utilisation": (busy / (slots * wall)).min(1.0),
        "queue_s": after.queue_secs - before.queue_secs, "in_slots_s": busy,
        "http_requests": after.http_attempts - before.http_attempts,
        "retries": after.retries - before.retries, "slow": after.slow_requests - before.slow_requests,
    })
}

/// Section 3: the real server at `url`.
async fn real_server(url: &str, quick: bool) -> serde_json::Value {
    let model = arg_str("--real-model").unwrap_or_else(|| "smollm2".into());
    let limit = arg("--real-rpm", 30.0);
    let requests = if quick { 4 } else { arg("--real-requests", 40.0) as usize };
    let settings = |rpm: Option<f64>| TeacherSettings {
        kind: TeacherKind::Openai,
        base_url: url.to_string(),
        model: model.clone(),
        api_key_env: "P2M_BENCH_NO_KEY".into(),
        requests_per_minute: rpm,
        ..Default::default()
    };
    let limited = settings(Some(limit)).build_openai().expect("the real server");
    // Warm-up: discovery is done; this settles the response_format step and the server's caches.
    let _ = real_server_run(limited.as_ref(), 2, None).await;
    let e = limited.stats().endpoints[0].clone();
    let with_limit = real_server_run(limited.as_ref(), requests, Some(limit)).await;
    let free = settings(None).build_openai().expect("the real server");
    let _ = real_server_run(free.as_ref(), 1, None).await;
    let unlimited = real_server_run(free.as_ref(), requests, None).await;
    serde_json::json!({
        "base_url": url, "model": model, "backend": e.backend, "backend_source": e.backend_source,
        "slots": e.slots, "slots_source": e.slots_source, "response_format": e.response_format,
        "with_limit": with_limit, "unlimited": unlimited,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let (true, Some(url)) =
        (std::env::args().any(|a| a == "--only-real"), arg_str("--real-server"))
    {
        let quick = !std::env::args().any(|a| a == "--bench");
        let real = real_server(&url, quick).await;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "real_server": real })).unwrap()
        );
        return;
    }
    // `cargo test --all-targets` runs benches once as tests (`--bench` absent): keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rpm = arg("--rpm", 600.0);
    let requests = if quick { 12 } else { arg("--requests", 150.0) as usize };
    let latency = Duration::from_millis(arg("--latency-ms", 200.0) as u64);

    let server = FakeServer::start(ServerConfig {
        rpm_limit: Some(rpm),
        rpm_burst: 2.0,
        latency,
        max_requests: 100_000,
        ..Default::default()
    })
    .await;
    let teacher = OpenAiTeacher::new(OpenAiConfig {
        base_url: server.base_url.clone(),
        model: "fake-gpt".into(),
        backend_name: "fake".into(),
        api_key_env: "P2M_BENCH_NO_KEY".into(),
        require_api_key: Some(false),
        requests_per_minute: Some(rpm),
        rpm_burst: 1.0,
        request_timeout_secs: 10.0,
        max_concurrency: 32,
        initial_concurrency: 32,
        ..Default::default()
    })
    .expect("client");
    let reqs: Vec<ChatRequest> = (0..requests)
        .map(|i| {
            ChatRequest::user(
                format!("[new example (in JSON)]: {i}"),
                SamplingParams {
                    n: 1,
                    seed: Some(i as u64),
                    max_tokens: Some(64),
                    ..Default::default()
                },
            )
        })
        .collect();
    let t0 = Instant::now();
    let results = teacher.chat_batch(&reqs).await;
    let wall = t0.elapsed().as_secs_f64();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let seen = server.state.seen.lock().unwrap().clone();
    let first = seen.iter().map(|s| s.at).min().expect("requests seen");
    let last = seen.iter().map(|s| s.at).max().expect("requests seen");
    // Rate between the first and the last request sent (the first burst token is free).
    let achieved = (seen.len().saturating_sub(1)) as f64
        / last.duration_since(first).as_secs_f64().max(1e-9)
        * 60.0;
    let throttling = serde_json::json!({
        "limit_rpm": rpm, "requests": requests, "ok": ok, "latency_ms": latency.as_millis() as u64,
        "achieved_rpm": achieved, "fraction_of_limit": achieved / rpm,
        "server_429s": server.state.rate_limited.load(std::sync::atomic::Ordering::SeqCst), "wall_s": wall,
    });

    let local = if quick || std::env::args().any(|a| a == "--no-local") {
        serde_json::Value::Null
    } else {
        let teacher = LocalTeacher::offline_default(None, Default::default(), Default::default())
            .expect("SmolLM2 (run scripts/setup.sh)");
        let req = ChatRequest::user(
            "Write one example of a question about geography and its answer.",
            SamplingParams {
                temperature: 0.8,
                n: 5,
                seed: Some(3),
                max_tokens: Some(64),
                ..Default::default()
            },
        );
        let _ = teacher.chat(&req).await.expect("warm-up");
        let t0 = Instant::now();
        let mut tokens = 0u64;
        for seed in 0..3u64 {
            let r = ChatRequest {
                params: SamplingParams { seed: Some(10 + seed), ..req.params.clone() },
                ..req.clone()
            };
            tokens += teacher.chat(&r).await.expect("generation").usage.completion_tokens;
        }
        let secs = t0.elapsed().as_secs_f64();

        // A generator round: 5 structured requests of 5 choices. Sent one at a time, each is
        // decoded alone (5 rows); sent together, the local teacher decodes them as one batch of
        // 25 rows. Different seeds per request, so tokens per second is the comparable figure.
        let structured = |seed: u64| {
            ChatRequest::user(
                "Write one new example of a date phrase in a short sentence and the date it refers to. Reply as JSON with fields input and output.",
                SamplingParams { temperature: 0.8, n: 5, seed: Some(seed), max_tokens: Some(64), json_fields: Some(vec!["input".into(), "output".into()]), ..Default::default() },
            )
        };
        let t1 = Instant::now();
        let mut one_at_a_time = 0u64;
        for seed in 100..105u64 {
            one_at_a_time += teacher
                .chat(&structured(seed))
                .await
                .expect("structured generation")
                .usage
                .completion_tokens;
        }
        let secs_one = t1.elapsed().as_secs_f64();
        let round: Vec<ChatRequest> = (200..205u64).map(structured).collect();
        let t2 = Instant::now();
        let together: u64 = teacher
            .chat_batch(&round)
            .await
            .into_iter()
            .map(|r| r.expect("structured generation").usage.completion_tokens)
            .sum();
        let secs_together = t2.elapsed().as_secs_f64();
        serde_json::json!({
            "model": teacher.model(), "choices_per_request": 5, "completion_tokens": tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs,
            "structured_round": {
                "requests": 5, "choices_per_request": 5,
                "one_at_a_time": { "completion_tokens": one_at_a_time, "seconds": secs_one, "tokens_per_s": one_at_a_time as f64 / secs_one },
                "batched": { "completion_tokens": together, "seconds": secs_together, "tokens_per_s": together as f64 / secs_together },
            },
        })
    };
    let real = match arg_str("--real-server") {
        Some(url) => real_server(&url, quick).await,
        None => serde_json::Value::Null,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({ "throttling": throttling, "local_teacher": local, "real_server": real })
        )
        .unwrap()
    );
}

//! The OpenAI-compatible backend and the record/replay cache against a fault-injecting server on
//! loopback (`tests/fake_openai`).

use crate::fake_openai;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fake_openai::{FakeServer, Fault, ServerConfig};
use prompt2model::teacher::{
    CacheMode, CachedTeacher, ChatRequest, OpenAiConfig, OpenAiTeacher, SamplingParams, Teacher,
    TeacherError,
};

fn client(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "fake-gpt".into(),
        backend_name: "fake".into(),
        api_key_env: "P2M_TEST_NO_SUCH_KEY".into(),
        require_api_key: Some(false),
        request_timeout_secs: 0.6,
        max_retries: 4,
        backoff_base_ms: 20,
        backoff_max_ms: 200,
        requests_per_minute: None,
        max_concurrency: 8,
        initial_concurrency: 8,
        ..Default::default()
    }
}

fn gen_request(tag: &str, n: u32) -> ChatRequest {
    let prompt = format!("[low-quality examples]:\nsomething {tag}\n\n[new example (in JSON)]:");
    ChatRequest::user(
        prompt,
        SamplingParams {
            temperature: 0.7,
            n,
            seed: Some(7),
            max_tokens: Some(100),
            ..Default::default()
        },
    )
}

async fn one_fault(
    fault: Fault,
) -> (Result<prompt2model::teacher::ChatResponse, TeacherError>, OpenAiTeacher, FakeServer, Duration)
{
    let server = FakeServer::start(ServerConfig {
        faults: vec![fault],
        fault_period: 1,
        max_faults_per_request: 1,
        lifetime: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let t0 = Instant::now();
    let r = t.chat(&gen_request("x", 2)).await;
    (r, t, server, t0.elapsed())
}

#[tokio::test]
async fn retries_transient_faults_and_honours_retry_after() {
    // 429 with delay-seconds: one retry, after ≥ 1 s.
    let (r, t, s, dt) = one_fault(Fault::RateLimitSecs("1")).await;
    assert_eq!(r.unwrap().choices.len(), 2);
    assert!(dt >= Duration::from_millis(1000), "Retry-After: 1 honoured ({dt:?})");
    let st = t.stats();
    assert_eq!((st.retries, st.rate_limited, st.http_attempts, st.calls), (1, 1, 2, 1));
    assert_eq!(s.state.request_count(), 2);

    // 429 with an HTTP date 2 s ahead (1-second resolution: waits 1–2 s).
    let (r, t, _s, dt) = one_fault(Fault::RateLimitDate(2)).await;
    assert!(r.is_ok());
    assert!(dt >= Duration::from_millis(900), "HTTP-date Retry-After honoured ({dt:?})");
    assert_eq!(t.stats().rate_limited, 1);

    for f in [Fault::Status500, Fault::Status503, Fault::Truncated] {
        let (r, t, _s, _) = one_fault(f.clone()).await;
        assert_eq!(r.unwrap_or_else(|e| panic!("{f:?}: {e}")).choices.len(), 2, "{f:?}");
        assert_eq!(t.stats().retries, 1, "{f:?}");
    }

    // A stall past the 0.6 s request timeout: counted slow and waited for — never sent twice
    // (issue #15: a second send is a second bill).
    let (r, t, s, dt) = one_fault(Fault::Stall(Duration::from_secs(2))).await;
    assert_eq!(r.unwrap().choices.len(), 2);
    let st = t.stats();
    assert_eq!((st.slow_requests, st.timeouts, st.retries, st.http_attempts), (1, 0, 0, 1));
    assert_eq!(s.state.request_count(), 1, "a slow request is not sent again");
    assert!(dt >= Duration::from_secs(2) && dt < Duration::from_millis(3500), "{dt:?}");

    // Past `abandon_after_secs` it is given up — still not sent again, and not worth a resend.
    let server = FakeServer::start(ServerConfig {
        faults: vec![Fault::Stall(Duration::from_secs(3))],
        fault_period: 1,
        max_faults_per_request: 1,
        ..Default::default()
    })
    .await;
    let t = OpenAiTeacher::new(OpenAiConfig {
        abandon_after_secs: Some(1.0),
        ..client(&server.base_url)
    })
    .unwrap();
    let e = t.chat(&gen_request("x", 2)).await.unwrap_err();
    assert!(matches!(e, TeacherError::Timeout(_)) && !e.is_transient() && !e.is_retryable(), "{e}");
    assert_eq!((t.stats().timeouts, t.stats().slow_requests), (1, 1));
    assert_eq!(server.state.request_count(), 1);
}

#[tokio::test]
async fn typed_errors_for_bad_bodies_and_client_errors() {
    let (r, t, _s, _) = one_fault(Fault::NonJson).await;
    assert!(matches!(r, Err(TeacherError::MalformedJson { .. })), "{r:?}");
    assert_eq!(t.stats().http_attempts, 1, "malformed JSON is not retried by the backend");
    let (r, _t, _s, _) = one_fault(Fault::WrongSchema).await;
    assert!(matches!(&r, Err(TeacherError::Schema(m)) if m.contains("choices")), "{r:?}");
    let (r, _t, _s, _) = one_fault(Fault::EmptyChoices).await;
    assert!(matches!(r, Err(TeacherError::EmptyChoices)), "{r:?}");

    let server = FakeServer::start(ServerConfig::default()).await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let r = t.chat(&ChatRequest::user("BAD_REQUEST please", SamplingParams::default())).await;
    match r {
        Err(e @ TeacherError::Status { status: 400, .. }) => {
            assert!(!e.is_retryable() && !e.is_fatal() && !e.is_transient());
            assert!(e.to_string().contains("maximum context length"), "{e}");
        }
        other => panic!("expected a 400: {other:?}"),
    }
    assert_eq!(t.stats().http_attempts, 1, "4xx is not retried");

    // Persistent 503s exhaust the retries.
    let server = FakeServer::start(ServerConfig {
        faults: vec![Fault::Status503],
        fault_period: 1,
        max_faults_per_request: 100,
        ..Default::default()
    })
    .await;
    let t =
        OpenAiTeacher::new(OpenAiConfig { max_retries: 2, ..client(&server.base_url) }).unwrap();
    let r = t.chat(&gen_request("y", 1)).await;
    assert!(matches!(&r, Err(TeacherError::RetriesExhausted { attempts: 3, .. })), "{r:?}");
    assert_eq!(server.state.request_count(), 3);

    // Nothing listening: a connection error (retried, then reported).
    let t = OpenAiTeacher::new(OpenAiConfig { max_retries: 1, ..client("http://127.0.0.1:9/v1") })
        .unwrap();
    let r = t.chat(&gen_request("z", 1)).await;
    assert!(
        matches!(&r, Err(TeacherError::RetriesExhausted { last, .. }) if matches!(**last, TeacherError::Connection(_))),
        "{r:?}"
    );
}

/// A host name that does not resolve (offline, or misspelt) is not retried: one attempt, and an
/// error that says so in its type. `.invalid` never resolves (RFC 6761).
#[tokio::test]
async fn a_server_name_that_does_not_resolve_is_not_retried() {
    let t = OpenAiTeacher::new(client("http://p2m-no-such-host.invalid/v1")).unwrap();
    let e = t.chat(&gen_request("offline", 1)).await.unwrap_err();
    assert!(matches!(&e, TeacherError::Unresolved(u) if u.url.contains(".invalid")), "{e:?}");
    assert!(!e.is_retryable() && !e.is_fatal() && e.is_lost(), "{e}");
    assert!(e.to_string().contains("does not resolve"), "{e}");
    let st = t.stats();
    assert_eq!((st.http_attempts, st.retries), (1, 0), "tried once");
}

#[tokio::test]
async fn n_choices_and_servers_that_ignore_n() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let r = t.chat(&gen_request("n", 5)).await.unwrap();
    assert_eq!(r.choices.len(), 5);
    assert_eq!(r.choices.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert!(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
    assert_eq!(server.state.request_count(), 1);

    let server = FakeServer::start(ServerConfig { ignore_n: true, ..Default::default() }).await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    let r = t.chat(&gen_request("n", 3)).await.unwrap();
    assert_eq!(r.choices.len(), 3);
    assert_eq!(server.state.request_count(), 3, "follow-up requests fill the missing choices");
    let distinct: std::collections::HashSet<_> =
        r.choices.iter().map(|c| c.content.clone()).collect();
    assert_eq!(distinct.len(), 3, "follow-ups use other seeds");
}

#[tokio::test]
async fn concurrency_shrinks_on_429_and_grows_back() {
    let server = FakeServer::start(ServerConfig {
        faults: vec![Fault::RateLimitSecs("0")],
        fault_period: 1,
        max_faults_per_request: 1,
        latency: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let t = OpenAiTeacher::new(client(&server.base_url)).unwrap();
    assert_eq!(t.concurrency().limit(), 8);
    let reqs: Vec<ChatRequest> = (0..8).map(|i| gen_request(&format!("c{i}"), 1)).collect();
    let results = t.chat_batch(&reqs).await;
    assert!(results.iter().all(Result::is_ok));
    let after = t.concurrency().limit();
    assert!(after < 8, "halved on the 429 burst, then grew by ~1 per window: {after}");
    for i in 0..40 {
        // Bodies already faulted once: the server answers them at once.
        t.chat(&reqs[i % reqs.len()]).await.unwrap();
    }
    assert_eq!(t.concurrency().limit(), 8, "grows back on success");
}

/// Achieved throughput against a server that enforces 120 RPM, with 1 s of latency per answer:
/// with the limit configured, the client keeps to it (no 429) and still reaches it.
#[tokio::test]
async fn rpm_throttling_reaches_the_limit_without_429() {
    let server_cfg = ServerConfig {
        rpm_limit: Some(120.0),
        rpm_burst: 2.0,
        latency: Duration::from_secs(1),
        ..Default::default()
    };
    let server = FakeServer::start(server_cfg.clone()).await;
    let t = OpenAiTeacher::new(OpenAiConfig {
        requests_per_minute: Some(120.0),
        rpm_burst: 1.0,
        request_timeout_secs: 5.0,
        ..client(&server.base_url)
    })
    .unwrap();
    let reqs: Vec<ChatRequest> = (0..7).map(|i| gen_request(&format!("r{i}"), 1)).collect();
    let t0 = Instant::now();
    let results = t.chat_batch(&reqs).await;
    let wall = t0.elapsed();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        server.state.rate_limited.load(Ordering::SeqCst),
        0,
        "no 429 when the limit is known"
    );
    let seen = server.state.seen.lock().unwrap().clone();
    let first = seen.iter().map(|s| s.at).min().unwrap();
    let last = seen.iter().map(|s| s.at).max().unwrap();
    let rpm = (seen.len() - 1) as f64 / last.duration_since(first).as_secs_f64() * 60.0;
    assert!((100.0..=132.0).contains(&rpm), "achieved {rpm:.1} RPM against a 120 RPM limit");
    assert!(wall < Duration::from_secs(6), "requests overlap the latency: {wall:?}");

    // Control: the same burst unthrottled trips the server's limit.
    let server = FakeServer::start(server_cfg).await;
    let t = OpenAiTeacher::new(OpenAiConfig {
        max_retries: 0,
        request_timeout_secs: 5.0,
        ..client(&server.base_url)
    })
    .unwrap();
    let results = t.chat_batch(&reqs).await;
    assert!(results.iter().any(|r| matches!(r, Err(TeacherError::Status { status: 429, .. }))));
    assert!(server.state.rate_limited.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn budget_is_a_typed_error() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let t = OpenAiTeacher::new(OpenAiConfig { max_api_calls: Some(2), ..client(&server.base_url) })
        .unwrap();
    t.chat(&gen_request("b1", 1)).await.unwrap();
    t.chat(&gen_request("b2", 1)).await.unwrap();
    let e = t.chat(&gen_request("b3", 1)).await.unwrap_err();
    assert!(matches!(e, TeacherError::BudgetExhausted { limit: 2, used: 2 }));
    assert!(e.is_fatal() && e.to_string().contains("budget"));
    assert_eq!(server.state.request_count(), 2);
    let st = t.stats();
    assert_eq!((st.calls, st.succeeded, st.max_calls), (2, 2, Some(2)));
}

#[tokio::test]
async fn cost_accounting_uses_the_configured_price() {
    let server = FakeServer::start(ServerConfig::default()).await;
    let t = OpenAiTeacher::new(OpenAiConfig {
        model: "gpt-3.5-turbo".into(),
        ..client(&server.base_url)
    })
    .unwrap();
    let r = t.chat(&gen_request("cost", 2)).await.unwrap();
    let expected = r.usage.prompt_tokens as f64 * 0.0015 / 1000.0
        + r.usage.completion_tokens as f64 * 0.002 / 1000.0;
    assert!((r.cost_usd - expected).abs() < 1e-12);
    assert!((t.stats().cost_usd - expected).abs() < 1e-12);
}

#[tokio::test]
async fn cache_records_then_replays_and_fails_loudly_on_replay_miss() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("teacher.sqlite");
    let server = FakeServer::start(ServerConfig::default()).await;
    let reqs: Vec<ChatRequest> = (0..4).map(|i| gen_request(&format!("k{i}"), 3)).collect();
    let first = {
        let t = CachedTeacher::open(
            OpenAiTeacher::new(client(&server.base_url)).unwrap(),
            &db,
            CacheMode::ReadWrite,
        )
        .unwrap();
        let r: Vec<_> = t.chat_batch(&reqs).await.into_iter().map(Result::unwrap).collect();
        assert_eq!((t.hits(), t.misses()), (0, 4));
        assert_eq!(t.len().unwrap(), 12);
        assert!(r.iter().all(|x| !x.cached && x.choices.len() == 3));
        r
    };
    assert_eq!(server.state.request_count(), 4);
    // Reopened (a new process would do the same): all hits, no request.
    let t = CachedTeacher::open(
        OpenAiTeacher::new(client(&server.base_url)).unwrap(),
        &db,
        CacheMode::ReplayOnly,
    )
    .unwrap();
    let again: Vec<_> = t.chat_batch(&reqs).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(server.state.request_count(), 4);
    assert_eq!((t.hits(), t.misses()), (4, 0));
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.choices, b.choices);
        assert_eq!(a.usage, b.usage, "usage is apportioned and summed back exactly");
        assert!(b.cached && b.cost_usd == 0.0);
    }
    // Fewer choices than recorded: still a hit. More: a miss — loudly, in replay-only mode.
    let mut fewer = reqs[0].clone();
    fewer.params.n = 2;
    assert_eq!(t.chat(&fewer).await.unwrap().choices, first[0].choices[..2].to_vec());
    let mut other = reqs[0].clone();
    other.params.seed = Some(8);
    let e = t.chat(&other).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TeacherError::ReplayMiss { .. }) && e.is_fatal());
    assert!(
        msg.contains("sha256:") && msg.contains("Hint:") && msg.contains("teacher.sqlite"),
        "{msg}"
    );
    assert_eq!(server.state.request_count(), 4);

    // Read-write with more choices than recorded: only the missing ones are requested.
    let t = CachedTeacher::open(
        OpenAiTeacher::new(client(&server.base_url)).unwrap(),
        &db,
        CacheMode::ReadWrite,
    )
    .unwrap();
    let mut more = reqs[1].clone();
    more.params.n = 5;
    let r = t.chat(&more).await.unwrap();
    assert_eq!(r.choices.len(), 5);
    assert_eq!(r.choices[..3], first[1].choices[..]);
    assert_eq!(server.state.seen.lock().unwrap().last().unwrap().n, 2);
    assert_eq!(t.len().unwrap(), 14);
}

#[tokio::test]
async fn concurrent_identical_requests_call_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start(ServerConfig {
        latency: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let t = CachedTeacher::open(
        OpenAiTeacher::new(client(&server.base_url)).unwrap(),
        dir.path().join("c.sqlite"),
        CacheMode::ReadWrite,
    )
    .unwrap();
    let reqs = vec![gen_request("same", 2); 4];
    let r = t.chat_batch(&reqs).await;
    assert!(r.iter().all(Result::is_ok));
    assert_eq!(server.state.request_count(), 1);
    assert_eq!((t.hits(), t.misses()), (3, 1));
}

/// The API key: never in the cache file bytes, never in errors, never in `Debug`.
#[tokio::test]
async fn api_key_never_leaks() {
    const KEY: &str = "sk-test-P2M-SECRET-0123456789abcdef";
    const WRONG: &str = "sk-wrong-P2M-SECRET-fedcba9876543210";
    std::env::set_var("P2M_TEST_KEY_GOOD", KEY);
    std::env::set_var("P2M_TEST_KEY_WRONG", WRONG);
    let server = FakeServer::start(ServerConfig {
        expect_key: Some(KEY.into()),
        faults: vec![Fault::Status500],
        fault_period: 3,
        max_faults_per_request: 1,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.sqlite");
    {
        let cfg = OpenAiConfig {
            api_key_env: "P2M_TEST_KEY_GOOD".into(),
            require_api_key: Some(true),
            ..client(&server.base_url)
        };
        let teacher = OpenAiTeacher::new(cfg).unwrap();
        assert!(!format!("{teacher:?}").contains(KEY));
        let t = CachedTeacher::open(teacher, &db, CacheMode::ReadWrite).unwrap();
        let reqs: Vec<ChatRequest> = (0..6).map(|i| gen_request(&format!("key{i}"), 2)).collect();
        for r in t.chat_batch(&reqs).await {
            r.unwrap();
        }
        assert!(server
            .state
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {KEY}"))));
        assert!(server.state.faults_injected.load(Ordering::SeqCst) > 0);
    }
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(bytes.len() > 4096);
    let needle = b"P2M-SECRET";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the key is in the cache files");

    // A wrong key: 401, and the server echoes what it received — the error must not.
    let cfg = OpenAiConfig { api_key_env: "P2M_TEST_KEY_WRONG".into(), ..client(&server.base_url) };
    let t = OpenAiTeacher::new(cfg).unwrap();
    let e = t.chat(&gen_request("wrong", 1)).await.unwrap_err();
    assert!(matches!(e, TeacherError::Status { status: 401, .. }) && e.is_fatal());
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("Incorrect API key") && !shown.contains("P2M-SECRET"), "{shown}");

    // A 500 whose body echoes the Authorization header, until retries run out.
    let echo = FakeServer::start(ServerConfig {
        faults: vec![Fault::Status500],
        fault_period: 1,
        max_faults_per_request: 10,
        ..Default::default()
    })
    .await;
    let cfg = OpenAiConfig {
        api_key_env: "P2M_TEST_KEY_GOOD".into(),
        max_retries: 1,
        ..client(&echo.base_url)
    };
    let e = OpenAiTeacher::new(cfg).unwrap().chat(&gen_request("echo", 1)).await.unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("internal error") && !shown.contains("P2M-SECRET"), "{shown}");

    // Missing key where one is required: the error names the variable, nothing else.
    let e = OpenAiTeacher::new(OpenAiConfig {
        api_key_env: "P2M_TEST_KEY_UNSET".into(),
        require_api_key: Some(true),
        ..client(&server.base_url)
    })
    .unwrap_err();
    assert!(
        matches!(e, TeacherError::MissingApiKey { .. })
            && e.to_string().contains("P2M_TEST_KEY_UNSET")
    );
}

#[tokio::test]
async fn refresh_mode_calls_again_and_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.sqlite");
    let server = FakeServer::start(ServerConfig::default()).await;
    let req = gen_request("refresh", 2);
    let t = CachedTeacher::open(
        OpenAiTeacher::new(client(&server.base_url)).unwrap(),
        &db,
        CacheMode::ReadWrite,
    )
    .unwrap();
    t.chat(&req).await.unwrap();
    t.chat(&req).await.unwrap();
    assert_eq!(server.state.request_count(), 1);
    let t = CachedTeacher::open(
        OpenAiTeacher::new(client(&server.base_url)).unwrap(),
        &db,
        CacheMode::Refresh,
    )
    .unwrap();
    let r = t.chat(&req).await.unwrap();
    assert!(!r.cached);
    assert_eq!(server.state.request_count(), 2);
    assert_eq!(t.len().unwrap(), 2, "overwritten, not duplicated");
}

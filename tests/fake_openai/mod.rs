//! A fault-injecting OpenAI-compatible chat-completions server on loopback, for the teacher and
//! generator tests. Hand-written HTTP/1.1 over tokio (one request per connection,
//! `Connection: close`), so that faults (truncated bodies, stalls) are exact.
//!
//! - Bounded: it answers at most `max_requests` requests (503 afterwards) and stops accepting
//!   after `lifetime`; it is also stopped when dropped.
//! - Faults are injected on a fixed schedule (`faults` cycled every `fault_period` requests), at
//!   most `max_faults_per_request` times for the same request body, so every request eventually
//!   succeeds and runs are deterministic.
//! - Like a real server it answers discovery (`GET /v1/models`, and `/props` when it plays
//!   llama.cpp); those GETs are counted apart (`probes`), not as requests.
//! - `response_format`: it takes every shape, or only the ones in `accept_formats` (400 for the
//!   others, as llama-cpp-python does for `json_schema`); each request's shape is in [`Seen`].
//! - It can die mid-run (`die_after_ok`, [`FakeServer::kill`]): it stops listening and drops every
//!   open connection unanswered.
//! - Its "model" answers generation prompts with JSON examples derived deterministically from
//!   (prompt, seed, choice index), in varied layouts (plain JSON, code fences with prose, cut-off
//!   arrays, `input="…"` lines, the odd refusal) — see [`fake_answer`].
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with `Retry-After: <value>` (delay-seconds).
    RateLimitSecs(&'static str),
    /// 429 with `Retry-After` as an HTTP date `secs` in the future.
    RateLimitDate(u64),
    Status500,
    Status503,
    /// Respond only after this long (past the client's timeout).
    Stall(Duration),
    /// Announce a longer Content-Length than sent, then close.
    Truncated,
    /// 200 with an HTML body.
    NonJson,
    /// 200 with JSON that is not a chat completion.
    WrongSchema,
    /// 200 with `choices: []`.
    EmptyChoices,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub faults: Vec<Fault>,
    /// Requests per fault cycle: request `i` gets `faults[i % period]` when that index exists.
    pub fault_period: usize,
    pub max_faults_per_request: u32,
    /// Added to every successful answer.
    pub latency: Duration,
    /// Server-side requests-per-minute limit (token bucket, `rpm_burst` deep): 429 beyond it.
    pub rpm_limit: Option<f64>,
    pub rpm_burst: f64,
    pub max_requests: usize,
    pub lifetime: Duration,
    /// When set, a request whose bearer token differs gets 401, echoing what it received.
    pub expect_key: Option<String>,
    /// Answer one choice per request whatever `n` says (like llama.cpp).
    pub ignore_n: bool,
    /// After this many successful answers, hold every further request and then drop it unanswered.
    pub freeze_after_ok: Option<usize>,
    /// The `owned_by` of `GET /v1/models`.
    pub owned_by: &'static str,
    /// Serve llama.cpp's `GET /props` with this `total_slots`.
    pub props_slots: Option<usize>,
    /// The `response_format` shapes accepted (`json_schema`, `json_object+schema`,
    /// `json_object`); `None`: all. A request without one is always accepted.
    pub accept_formats: Option<Vec<&'static str>>,
    /// After this many successful answers the server dies (see [`FakeServer::kill`]).
    pub die_after_ok: Option<usize>,
    /// The status of a refused `response_format` (llama-cpp-python 0.3 answers 500).
    pub refuse_status: u16,
    /// Serve `GET /openapi.json` with this title (llama-cpp-python's is "🦙 llama.cpp Python API").
    pub openapi_title: Option<&'static str>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            faults: Vec::new(),
            fault_period: 1,
            max_faults_per_request: 2,
            latency: Duration::ZERO,
            rpm_limit: None,
            rpm_burst: 2.0,
            max_requests: 5_000,
            lifetime: Duration::from_secs(240),
            expect_key: None,
            ignore_n: false,
            freeze_after_ok: None,
            owned_by: "fake",
            props_slots: None,
            accept_formats: None,
            die_after_ok: None,
            openapi_title: None,
            refuse_status: 400,
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub status: u16,
    pub fault: Option<Fault>,
    pub body_digest: String,
    pub n: u64,
    pub authorization: Option<String>,
    /// The request's `response_format` shape (`json_schema`, `json_object+schema`,
    /// `json_object`, or `none`).
    pub response_format: &'static str,
    /// The request's `response_format` value as sent.
    pub format_value: Option<Value>,
}

#[derive(Default)]
pub struct ServerState {
    /// Every request received.
    pub requests: AtomicUsize,
    /// Successful completions fully written.
    pub ok: AtomicUsize,
    pub faults_injected: AtomicUsize,
    /// 429s from the RPM limit (not the fault schedule).
    pub rate_limited: AtomicUsize,
    pub frozen: AtomicBool,
    freeze_disabled: AtomicBool,
    /// Chat requests being handled now, and the most at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Discovery GETs answered (not counted in `requests`).
    pub probes: AtomicUsize,
    /// Dead: nothing is answered any more.
    pub dead: AtomicBool,
    /// Answers promised under `die_after_ok` (taken before answering, so concurrent requests
    /// cannot both slip in as the last one).
    answers_reserved: AtomicUsize,
    die: tokio::sync::Notify,
    pub seen: Mutex<Vec<Seen>>,
    /// Digests of request bodies that got a successful answer.
    pub ok_digests: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, u32>>,
    cursor: AtomicUsize,
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl ServerState {
    pub fn ok_digest_set(&self) -> HashSet<String> {
        self.ok_digests.lock().unwrap().iter().cloned().collect()
    }
    pub fn ok_count(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    /// Request bodies answered successfully more than once (each a second bill).
    pub fn answered_twice(&self) -> usize {
        let all = self.ok_digests.lock().unwrap();
        all.len() - all.iter().collect::<HashSet<_>>().len()
    }
    fn kill(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.die.notify_one();
        }
    }
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start(cfg: ServerConfig) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState::default());
        let st = state.clone();
        let cfg = Arc::new(cfg);
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + cfg.lifetime;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = st.die.notified() => break,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        let (st, cfg) = (st.clone(), cfg.clone());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(cfg.lifetime, handle(stream, st, cfg)).await;
                        });
                    }
                }
            }
        });
        FakeServer { addr, base_url: format!("http://{addr}/v1"), state, task }
    }

    /// Die now: stop listening (connections are refused) and drop every open connection
    /// unanswered.
    pub fn kill(&self) {
        self.state.kill();
    }

    /// Release a freeze (held requests are dropped unanswered) and never freeze again.
    pub fn unfreeze(&self) {
        self.state.freeze_disabled.store(true, Ordering::SeqCst);
        self.state.frozen.store(false, Ordering::SeqCst);
    }
}

pub async fn read_request(
    stream: &mut TcpStream,
) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some((request_line, headers, body))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub async fn respond(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    body: &[u8],
) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    let ok = stream.write_all(&all).await.is_ok() && stream.flush().await.is_ok();
    let _ = stream.shutdown().await;
    ok
}

fn take_rpm_token(state: &ServerState, cfg: &ServerConfig) -> bool {
    let Some(rpm) = cfg.rpm_limit else { return true };
    let mut b = state.bucket.lock().unwrap();
    let now = Instant::now();
    let (level, last) = b.get_or_insert((cfg.rpm_burst, now));
    *level = (*level + now.duration_since(*last).as_secs_f64() * rpm / 60.0).min(cfg.rpm_burst);
    *last = now;
    if *level >= 1.0 {
        *level -= 1.0;
        true
    } else {
        false
    }
}

fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [(m - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn h64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().unwrap())
}

/// The fake model's answer to `prompt` for choice `i` (deterministic).
pub fn fake_answer(prompt: &str, seed: u64, i: u64) -> String {
    if let Some(answer) = retriever_answer(prompt) {
        return answer;
    }
    if let Some(answer) = transform_answer(prompt) {
        return answer;
    }
    if !prompt.contains("[new example (in JSON)]:") {
        // Not a generation prompt (e.g. a parsing or translation prompt): echo something short.
        return format!("ECHO {}", &prompt.chars().take(40).collect::<String>());
    }
    let h = h64(&[prompt, &seed.to_string(), &i.to_string()]);
    // The user's instruction of the tests' sentiment prompts (the generator's own meta-examples
    // mention sentiment too, so the marker is the instruction's phrase).
    if prompt.contains("sentiment of a product review") {
        return sentiment_example(prompt, h);
    }
    // Without generated examples in the prompt the "model" repeats itself a lot (a small input
    // space); with them it ranges widely — a caricature of what the paper measured.
    let no_generated = prompt.contains("[low-quality examples]:\nN/A\n");
    let x = if no_generated {
        h64(&["small", &seed.to_string(), &i.to_string()]) % 20
    } else {
        h % 100_000
    };
    let input = format!("[Posted: 2020-01-01] Event number {x} happened last year.");
    let base = format!("last year == {}", 2019 - (x % 50) as i64);
    let output = if h.is_multiple_of(10) { format!("{base} (alternative reading)") } else { base };
    let obj = json!({"input": input, "output": output}).to_string();
    match (h >> 8) % 20 {
        0..=9 => obj,
        10..=12 => format!(
            "Sure! Here is a new example:\n```json\n{obj}\n```\nLet me know if you need more."
        ),
        13..=14 => format!("[{obj}, {{\"input\": \"[Posted: 2020-01-01] cut off"),
        15..=16 => format!("input=\"{input}\"\noutput=\"{output}\""),
        17 => format!("{{\"input\": \"{input}\",\n \"output\": \"{output}\"}}"),
        18 => "I'm sorry, but I cannot help with that.".to_string(),
        _ => format!(
            "New example:\n{{\"input\": \"{input}\", \"output\": \"{output}\"}}\nThat's all."
        ),
    }
}

/// Answers to the dataset transformer's prompts: a plan for the plan prompt; for a row, an
/// `{"input", "output"}` object built from it, or a malformed answer where the row asks for one
/// (a row holding `MALFORMED` gets prose, `NOKEYS` an object without the keys, `EMPTY` an empty
/// input, `TWIN` the same input as every other `TWIN` row).
fn transform_answer(prompt: &str) -> Option<String> {
    if prompt.contains("[rows of the found dataset]:") {
        return Some(
            "1. Use the row's question as the question.\n2. Use its answer column as the answer."
                .into(),
        );
    }
    let row = prompt.split("[dataset row]:\n").nth(1)?.split("\n\nAnswer with one JSON").next()?;
    let (input, answer) = row.split_once("\nanswer column: ")?;
    Some(if input.contains("MALFORMED") {
        "I am not sure how to rewrite this row.".into()
    } else if input.contains("NOKEYS") {
        json!({"question": input}).to_string()
    } else if input.contains("EMPTY") {
        json!({"input": "", "output": answer}).to_string()
    } else if input.contains("TWIN") {
        json!({"input": "Question: the twin row", "output": answer}).to_string()
    } else {
        format!(
            "```json\n{}\n```",
            json!({"input": format!("Question: {input}"), "output": answer})
        )
    })
}

/// A sentiment example: reviews labelled `positive` or `negative` half and half — or, when the
/// instruction says the reviews come from happy customers, every one `positive` (a teacher that
/// follows the prompt's framing into one class: what the data gate must catch).
fn sentiment_example(prompt: &str, h: u64) -> String {
    let x = h % 100_000;
    let label = if prompt.contains("happy customers") || h.is_multiple_of(2) {
        "positive"
    } else {
        "negative"
    };
    let input = format!("Review {x}: the product arrived and I used it for a week.");
    json!({"input": input, "output": label}).to_string()
}

/// Answers to the retrievers' prompts: a model card for HyDE, the first listed candidate for
/// dataset reranking, and "every column but the last → the last" for column selection.
fn retriever_answer(prompt: &str) -> Option<String> {
    if prompt.trim_end().ends_with("Hypothetical model card:") {
        return Some(
            "---\nlanguage: en\ntags:\n- question-answering\n- t5\npipeline_tag: text2text-generation\n---\n\n# T5 for extractive question answering\n\nGiven a question and a context passage, the model generates the answer span. Fine-tuned on SQuAD.".into(),
        );
    }
    if prompt.contains("Which one dataset is the most useful") {
        let first = prompt.lines().find_map(|l| {
            l.strip_prefix("- ").and_then(|r| r.split_once(':')).map(|(n, _)| n.to_string())
        })?;
        return Some(format!("{{\"name\": \"{first}\"}}"));
    }
    if prompt.contains("which single column is the output") {
        let cols: Vec<&str> =
            prompt.split("has the columns: ").nth(1)?.split(".\n").next()?.split(", ").collect();
        let (out, inputs) = cols.split_last()?;
        return Some(serde_json::json!({"input": inputs, "output": out}).to_string());
    }
    None
}

/// Counts a chat request in flight while alive.
struct InFlight<'a>(&'a ServerState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a ServerState) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The shape of a request's `response_format`.
fn format_shape(req: &Value) -> &'static str {
    match req.get("response_format") {
        None | Some(Value::Null) => "none",
        Some(rf) => match (rf.get("type").and_then(Value::as_str), rf.get("schema")) {
            (Some("json_schema"), _) => "json_schema",
            (Some("json_object"), Some(_)) => "json_object+schema",
            (Some("json_object"), None) => "json_object",
            _ => "unknown",
        },
    }
}

async fn handle(mut stream: TcpStream, state: Arc<ServerState>, cfg: Arc<ServerConfig>) {
    let Some((request_line, headers, body)) = read_request(&mut stream).await else { return };
    if state.dead.load(Ordering::SeqCst) {
        return; // dropped unanswered
    }
    if request_line.starts_with("GET /v1/models ") {
        state.probes.fetch_add(1, Ordering::SeqCst);
        let list = json!({"object": "list", "data": [{"id": "fake-gpt", "object": "model", "owned_by": cfg.owned_by}]});
        respond(&mut stream, 200, &[], list.to_string().as_bytes()).await;
        return;
    }
    if let (true, Some(n)) = (request_line.starts_with("GET /props "), cfg.props_slots) {
        state.probes.fetch_add(1, Ordering::SeqCst);
        respond(&mut stream, 200, &[], json!({"total_slots": n}).to_string().as_bytes()).await;
        return;
    }
    if let (true, Some(title)) = (request_line.starts_with("GET /openapi.json "), cfg.openapi_title)
    {
        state.probes.fetch_add(1, Ordering::SeqCst);
        respond(&mut stream, 200, &[], json!({"info": {"title": title}}).to_string().as_bytes())
            .await;
        return;
    }
    if request_line.starts_with("GET ") && !request_line.starts_with("GET /v1/chat") {
        state.probes.fetch_add(1, Ordering::SeqCst);
        respond(&mut stream, 404, &[], br#"{"error":{"message":"not found"}}"#).await;
        return;
    }
    let index = state.requests.fetch_add(1, Ordering::SeqCst);
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let shape = parsed.as_ref().map(format_shape).unwrap_or("none");
    let format_value = parsed.as_ref().and_then(|v| v.get("response_format")).cloned();
    let _in_flight = InFlight::enter(&state);
    let digest = hex::encode(Sha256::digest(&body));
    let auth = headers.get("authorization").cloned();
    let record = |status: u16, fault: Option<Fault>, n: u64| {
        state.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            status,
            fault,
            body_digest: digest.clone(),
            n,
            authorization: auth.clone(),
            response_format: shape,
            format_value: format_value.clone(),
        });
    };
    if state.frozen.load(Ordering::SeqCst) {
        while state.frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return; // dropped unanswered
    }
    if index >= cfg.max_requests {
        record(503, None, 0);
        respond(
            &mut stream,
            503,
            &[],
            br#"{"error":{"message":"test server request budget exhausted"}}"#,
        )
        .await;
        return;
    }
    if !request_line.starts_with("POST /v1/chat/completions ") {
        record(404, None, 0);
        respond(&mut stream, 404, &[], br#"{"error":{"message":"not found"}}"#).await;
        return;
    }
    if let Some(key) = &cfg.expect_key {
        if auth.as_deref() != Some(&format!("Bearer {key}")) {
            record(401, None, 0);
            let msg =
                json!({"error": {"message": format!("Incorrect API key provided: {}", auth.clone().unwrap_or_default())}}).to_string();
            respond(&mut stream, 401, &[], msg.as_bytes()).await;
            return;
        }
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        record(400, None, 0);
        respond(&mut stream, 400, &[], br#"{"error":{"message":"invalid JSON"}}"#).await;
        return;
    };
    let n = req.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    let seed = req.get("seed").and_then(Value::as_u64).unwrap_or(0);
    let prompt = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if prompt.contains("BAD_REQUEST") {
        record(400, None, n);
        respond(
            &mut stream,
            400,
            &[],
            br#"{"error":{"message":"This model's maximum context length is exceeded"}}"#,
        )
        .await;
        return;
    }
    if let Some(accepted) = &cfg.accept_formats {
        if shape != "none" && !accepted.contains(&shape) {
            record(cfg.refuse_status, None, n);
            let msg = json!({"error": {"message": format!("validation error: ('body', 'response_format', 'type'): {shape} is not supported")}});
            respond(&mut stream, cfg.refuse_status, &[], msg.to_string().as_bytes()).await;
            return;
        }
    }
    if !take_rpm_token(&state, &cfg) {
        state.rate_limited.fetch_add(1, Ordering::SeqCst);
        record(429, None, n);
        respond(
            &mut stream,
            429,
            &[("Retry-After", "1".into())],
            br#"{"error":{"message":"Rate limit reached for requests"}}"#,
        )
        .await;
        return;
    }

    // Fault schedule.
    let fault = {
        let mut attempts = state.attempts.lock().unwrap();
        let a = attempts.entry(digest.clone()).or_insert(0);
        *a += 1;
        if *a <= cfg.max_faults_per_request && !cfg.faults.is_empty() && cfg.fault_period > 0 {
            let c = state.cursor.fetch_add(1, Ordering::SeqCst) % cfg.fault_period;
            cfg.faults.get(c).cloned()
        } else {
            None
        }
    };
    if let Some(f) = fault.clone() {
        state.faults_injected.fetch_add(1, Ordering::SeqCst);
        let echo = auth.clone().unwrap_or_default();
        match f {
            Fault::RateLimitSecs(v) => {
                record(429, fault, n);
                respond(
                    &mut stream,
                    429,
                    &[("Retry-After", v.to_string())],
                    br#"{"error":{"message":"Rate limit reached"}}"#,
                )
                .await;
            }
            Fault::RateLimitDate(secs) => {
                record(429, fault, n);
                let date = http_date(SystemTime::now() + Duration::from_secs(secs));
                respond(
                    &mut stream,
                    429,
                    &[("Retry-After", date)],
                    br#"{"error":{"message":"Rate limit reached"}}"#,
                )
                .await;
            }
            Fault::Status500 => {
                record(500, fault, n);
                let msg = format!(
                    "{{\"error\":{{\"message\":\"internal error while serving {echo}\"}}}}"
                );
                respond(&mut stream, 500, &[], msg.as_bytes()).await;
            }
            Fault::Status503 => {
                record(503, fault, n);
                respond(&mut stream, 503, &[], br#"{"error":{"message":"overloaded"}}"#).await;
            }
            Fault::Stall(d) => {
                record(0, fault, n);
                tokio::time::sleep(d).await;
                // A slow answer is still an answer (and a bill) when the client waited for it.
                let body = completion(&prompt, seed, n, &cfg);
                if respond(&mut stream, 200, &[], body.as_bytes()).await {
                    state.ok_digests.lock().unwrap().push(digest.clone());
                    state.ok.fetch_add(1, Ordering::SeqCst);
                }
            }
            Fault::Truncated => {
                record(200, fault, n);
                let full = completion(&prompt, seed, n, &cfg);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    full.len() + 100
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&full.as_bytes()[..full.len() / 2]).await;
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
            }
            Fault::NonJson => {
                record(200, fault, n);
                respond(&mut stream, 200, &[], b"<html><body>502 Bad Gateway</body></html>").await;
            }
            Fault::WrongSchema => {
                record(200, fault, n);
                respond(
                    &mut stream,
                    200,
                    &[],
                    br#"{"id":"x","object":"chat.completion","result":"?"}"#,
                )
                .await;
            }
            Fault::EmptyChoices => {
                record(200, fault, n);
                respond(
                    &mut stream,
                    200,
                    &[],
                    br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":0}}"#,
                )
                .await;
            }
        }
        return;
    }

    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if !state.freeze_disabled.load(Ordering::SeqCst)
        && cfg.freeze_after_ok.is_some_and(|k| state.ok.load(Ordering::SeqCst) >= k)
    {
        state.frozen.store(true, Ordering::SeqCst);
    }
    if state.frozen.load(Ordering::SeqCst) {
        while state.frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return;
    }
    if state.dead.load(Ordering::SeqCst) {
        return; // died while this request was being decoded: dropped unanswered
    }
    if cfg.die_after_ok.is_some_and(|k| state.answers_reserved.fetch_add(1, Ordering::SeqCst) >= k)
    {
        state.kill();
        return; // past the last answer it gives: dropped unanswered
    }
    record(200, None, n);
    let body = completion(&prompt, seed, n, &cfg);
    if respond(&mut stream, 200, &[], body.as_bytes()).await {
        state.ok_digests.lock().unwrap().push(digest);
        let ok = state.ok.fetch_add(1, Ordering::SeqCst) + 1;
        if cfg.die_after_ok.is_some_and(|k| ok >= k) {
            state.kill();
        }
    }
}

fn completion(prompt: &str, seed: u64, n: u64, cfg: &ServerConfig) -> String {
    let n = if cfg.ignore_n { 1 } else { n };
    let choices: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "message": {"role": "assistant", "content": fake_answer(prompt, seed, i)}, "finish_reason": "stop"}))
        .collect();
    let completion_tokens: u64 = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap().len() as u64 / 4 + 1)
        .sum();
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "fake-gpt",
        "choices": choices,
        "usage": {"prompt_tokens": prompt.len() as u64 / 4 + 1, "completion_tokens": completion_tokens, "total_tokens": 0}
    })
    .to_string()
}

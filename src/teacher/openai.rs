//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`) over reqwest + tokio:
//! OpenAI itself, vLLM, llama.cpp's server, llama-cpp-python's server, Ollama (`/v1`), LiteLLM
//! proxies, … One [`OpenAiTeacher`] is one endpoint; [`super::fleet::FleetTeacher`] spreads
//! requests over several.
//!
//! - The API key is read only from an environment variable (default `OPENAI_API_KEY`), sent as a
//!   bearer header marked sensitive, and never logged, cached or put into an error (every text a
//!   server sends back goes through [`redact`] first; `Debug` prints `<redacted>`).
//! - `n` choices per request; servers that ignore `n` (llama.cpp) get follow-up requests until
//!   `n` choices are in.
//! - Structured output: a request with `json_fields` or `json_schema` carries its schema as
//!   `response_format`, stepping down a ladder of shapes where the server refuses one and
//!   remembering the step that worked ([`super::structured`]).
//! - Slots, not timeouts: at most `max_concurrency` requests are in flight (the server's slots:
//!   set, or discovered by [`super::discover`]); a request waiting for a slot is not timed.
//!   Once sent, a request that takes longer than `request_timeout_secs` is counted *slow* and kept
//!   waiting — never sent twice (against a paid API a second send is a second bill); only after
//!   `abandon_after_secs` is it given up, still without a resend. Queue time (slot + rate limit)
//!   and decode time (in the slot) are counted separately ([`EndpointStats`]).
//! - Concurrency adapts below the slot cap (AIMD): halves on 429s and slow requests, grows by ~1
//!   per window of successes, within `1..=max_concurrency`.
//! - Requests-per-minute and tokens-per-minute token buckets (estimated tokens before a request,
//!   the server's actual usage settled after); a 429 pauses every request for its delay.
//! - Retries with exponential backoff and jitter for requests refused before any work (429, 408,
//!   409) or lost (connection errors, 5xx, truncated bodies), honouring `Retry-After` (seconds or
//!   HTTP date) and `retry-after-ms`.
//! - Typed errors for non-retryable 4xx, malformed JSON, wrong schema, empty choices, truncated
//!   bodies.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::download::error_chain;
use crate::util::rng::SplitMix64;
use crate::util::text::excerpt;

use super::structured::{self, ResponseFormat};
use super::{
    estimate_tokens, redact, Accounting, ChatRequest, ChatResponse, Choice, EndpointStats, Pricing,
    SamplingParams, Teacher, TeacherError, TeacherStats, Usage,
};

/// Configuration of an OpenAI-compatible backend. Every field has a default (serde too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL up to and including `/v1`.
    pub base_url: String,
    pub model: String,
    /// Backend name recorded in the cache key (`openai`, `vllm`, `llama.cpp`, `ollama`, …).
    pub backend_name: String,
    /// Name of the environment variable holding the API key (the key itself is never configured).
    pub api_key_env: String,
    /// Whether a missing key is an error; `None`: required only for api.openai.com.
    pub require_api_key: Option<bool>,
    /// Seconds a sent request may take before it counts as slow (logged, concurrency halved);
    /// a slow request is kept waiting and never sent again.
    pub request_timeout_secs: f64,
    /// Seconds after which a sent request is given up ([`TeacherError::Timeout`], not sent
    /// again); `None` waits as long as the connection lives.
    pub abandon_after_secs: Option<f64>,
    pub connect_timeout_secs: f64,
    /// Retries per request after the first attempt (429/408/409 and lost requests only).
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest `Retry-After` honoured (longer ones are clipped to this), seconds.
    pub max_retry_after_secs: f64,
    /// Requests-per-minute limit; `None` = unthrottled. Reference default: 80.
    pub requests_per_minute: Option<f64>,
    /// Requests that may start back to back before pacing applies.
    pub rpm_burst: f64,
    /// Tokens-per-minute limit (prompt + completion); `None` = unthrottled.
    pub tokens_per_minute: Option<f64>,
    /// Token-bucket size for TPM; default: 10 seconds' worth.
    pub tpm_burst: Option<f64>,
    /// Completion tokens per choice assumed before the server reports usage.
    pub completion_tokens_estimate: u32,
    /// The slots: most requests in flight at once (the server's parallel decoding slots; the
    /// reference's `max_batch_size` is 5). The adaptive concurrency stays below it.
    pub max_concurrency: usize,
    /// Starting concurrency (clipped to `1..=max_concurrency`).
    pub initial_concurrency: usize,
    /// Send the request's `seed` (OpenAI, vLLM, llama.cpp and Ollama accept it).
    pub send_seed: bool,
    /// The first `response_format` shape tried for structured requests (the ladder goes down
    /// from there; [`ResponseFormat::None`] sends none).
    pub response_format: ResponseFormat,
    /// Budget of API calls for this teacher; `None` = unlimited.
    pub max_api_calls: Option<u64>,
    /// Price override; default from [`Pricing::for_model`].
    pub pricing: Option<Pricing>,
    /// Seed of the retry-jitter RNG (jitter never affects results).
    pub jitter_seed: u64,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-3.5-turbo".into(),
            backend_name: "openai".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            require_api_key: None,
            request_timeout_secs: 120.0,
            abandon_after_secs: Some(1800.0),
            connect_timeout_secs: 10.0,
            max_retries: 6,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            max_retry_after_secs: 120.0,
            requests_per_minute: Some(80.0),
            rpm_burst: 1.0,
            tokens_per_minute: None,
            tpm_burst: None,
            completion_tokens_estimate: 256,
            max_concurrency: 5,
            initial_concurrency: 5,
            send_seed: true,
            response_format: ResponseFormat::JsonSchema,
            max_api_calls: None,
            pricing: None,
            jitter_seed: 0x5EED,
        }
    }
}

impl OpenAiConfig {
    /// api.openai.com with `model` (key from `OPENAI_API_KEY`).
    pub fn openai(model: impl Into<String>) -> Self {
        OpenAiConfig { model: model.into(), ..Default::default() }
    }
    /// The configuration a command line gives: api.openai.com when the base URL is OpenAI's,
    /// otherwise an OpenAI-compatible server at `base_url`, named
    /// [`super::discover::UNKNOWN_BACKEND`] until discovery or the user names it.
    pub fn for_base_url(base_url: &str, model: &str) -> Self {
        if base_url.contains("api.openai.com") {
            Self::openai(model)
        } else {
            Self::local(base_url, model, super::discover::UNKNOWN_BACKEND)
        }
    }
    /// A vLLM server, e.g. `http://localhost:8000/v1`.
    pub fn vllm(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self::local(base_url, model, "vllm")
    }
    /// A llama.cpp server, e.g. `http://localhost:8080/v1`.
    pub fn llama_cpp(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self::local(base_url, model, "llama.cpp")
    }
    /// Ollama's OpenAI-compatible endpoint at `http://localhost:11434/v1`.
    pub fn ollama(model: impl Into<String>) -> Self {
        Self::local("http://localhost:11434/v1", model, "ollama")
    }
    fn local(base_url: impl Into<String>, model: impl Into<String>, backend: &str) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            backend_name: backend.into(),
            require_api_key: Some(false),
            requests_per_minute: None,
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<(), TeacherError> {
        let bad = |m: String| Err(TeacherError::Config(m));
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return bad(format!(
                "base_url `{}` must start with http:// or https://",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return bad("model is empty".into());
        }
        if !(self.request_timeout_secs > 0.0 && self.request_timeout_secs.is_finite()) {
            return bad("request_timeout_secs must be > 0".into());
        }
        if let Some(a) = self.abandon_after_secs {
            if !(a > 0.0 && a.is_finite()) {
                return bad("abandon_after_secs must be > 0 (or unset to wait for ever)".into());
            }
        }
        if !(self.connect_timeout_secs > 0.0 && self.connect_timeout_secs.is_finite()) {
            return bad("connect_timeout_secs must be > 0".into());
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency (slots) must be ≥ 1".into());
        }
        for (name, v) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return bad(format!("{name} must be > 0"));
                }
            }
        }
        if self.rpm_burst.is_nan() || self.rpm_burst < 1.0 {
            return bad("rpm_burst must be ≥ 1".into());
        }
        if self.max_api_calls == Some(0) {
            return bad("max_api_calls must be > 0 (or unset for no limit)".into());
        }
        Ok(())
    }
}

/// The API key; `Debug` never shows it.
struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Counters and timings of one endpoint (see [`EndpointStats`]).
#[derive(Debug, Default)]
struct EndpointMetrics {
    http_attempts: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
    slow: AtomicU64,
    format_refusals: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    queue_us: AtomicU64,
    decode_us: AtomicU64,
    /// First slot taken, last slot released.
    window: Mutex<Option<(Instant, Instant)>>,
    /// Lost attempts since the last answer (a fleet takes the endpoint out past a threshold).
    consecutive_lost: AtomicU32,
}

impl EndpointMetrics {
    fn slot_taken(&self, at: Instant) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some((at, at));
        }
    }
    fn slot_released(&self, sent: Instant) {
        let now = Instant::now();
        self.decode_us.fetch_add(now.duration_since(sent).as_micros() as u64, Ordering::SeqCst);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (first, last) = w.get_or_insert((sent, now));
        *last = (*last).max(now);
        *first = (*first).min(sent);
    }
}

/// Where an endpoint's name and slot count came from (set by the builder after discovery).
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub backend_source: String,
    pub slots_source: String,
}

/// An OpenAI-compatible chat-completions teacher: one endpoint.
pub struct OpenAiTeacher {
    cfg: OpenAiConfig,
    endpoint: String,
    client: reqwest::Client,
    api_key: Option<ApiKey>,
    accounting: Arc<Accounting>,
    limiter: RateLimiter,
    concurrency: AdaptiveConcurrency,
    jitter: Mutex<SplitMix64>,
    /// Index into [`ResponseFormat::LADDER`]: the shape structured requests start with.
    format_step: AtomicUsize,
    metrics: EndpointMetrics,
    provenance: Provenance,
    /// Lost attempts in a row after which the endpoint takes itself out (fleets only).
    remove_after_lost: Option<u32>,
    out_of_service: AtomicBool,
}

impl std::fmt::Debug for OpenAiTeacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiTeacher")
            .field("endpoint", &self.endpoint)
            .field("model", &self.cfg.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl OpenAiTeacher {
    /// Build the backend; reads the key from `cfg.api_key_env`.
    pub fn new(cfg: OpenAiConfig) -> Result<Self, TeacherError> {
        let pricing = cfg.pricing.unwrap_or_else(|| Pricing::for_model(&cfg.model));
        let accounting = Arc::new(Accounting::new(pricing, cfg.max_api_calls));
        Self::with_accounting(cfg, accounting)
    }

    /// Like [`OpenAiTeacher::new`] but sharing `accounting` (one budget for several teachers).
    pub fn with_accounting(
        cfg: OpenAiConfig,
        accounting: Arc<Accounting>,
    ) -> Result<Self, TeacherError> {
        cfg.validate()?;
        let api_key = read_api_key(&cfg.api_key_env);
        let required =
            cfg.require_api_key.unwrap_or_else(|| cfg.base_url.contains("api.openai.com"));
        if required && api_key.is_none() {
            return Err(TeacherError::MissingApiKey { env: cfg.api_key_env.clone() });
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs_f64(cfg.connect_timeout_secs))
            // Dead peers show up as connection errors (lost, retried) rather than as requests
            // that never end.
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("prompt2model-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TeacherError::Config(format!("cannot build the HTTP client: {e}")))?;
        let endpoint = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
        let tpm_burst = cfg.tpm_burst.or(cfg.tokens_per_minute.map(|t| t / 6.0));
        Ok(OpenAiTeacher {
            endpoint,
            client,
            api_key: api_key.map(ApiKey),
            accounting,
            limiter: RateLimiter::new(
                cfg.requests_per_minute,
                cfg.rpm_burst,
                cfg.tokens_per_minute,
                tpm_burst,
            ),
            concurrency: AdaptiveConcurrency::new(cfg.initial_concurrency, cfg.max_concurrency),
            jitter: Mutex::new(SplitMix64::new(cfg.jitter_seed)),
            format_step: AtomicUsize::new(cfg.response_format.index()),
            metrics: EndpointMetrics::default(),
            provenance: Provenance {
                backend_source: "configuration".into(),
                slots_source: "configuration".into(),
            },
            remove_after_lost: None,
            out_of_service: AtomicBool::new(false),
            cfg,
        })
    }

    /// Record where the name and the slots came from (shown in [`EndpointStats`]).
    pub fn set_provenance(&mut self, provenance: Provenance) {
        self.provenance = provenance;
    }

    /// Take the endpoint out of service after `n` lost attempts in a row (a fleet's setting:
    /// its requests then go to the other endpoints).
    pub fn set_remove_after_lost(&mut self, n: Option<u32>) {
        self.remove_after_lost = n;
    }

    /// Taken out after repeated lost requests (see [`Self::set_remove_after_lost`]).
    pub fn is_out_of_service(&self) -> bool {
        self.out_of_service.load(Ordering::SeqCst)
    }

    /// Take the endpoint out of service now.
    pub fn take_out_of_service(&self) {
        if !self.out_of_service.swap(true, Ordering::SeqCst) {
            tracing::warn!(endpoint = %self.cfg.base_url, "endpoint taken out of service");
        }
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.cfg
    }

    pub fn accounting(&self) -> &Arc<Accounting> {
        &self.accounting
    }

    pub fn concurrency(&self) -> &AdaptiveConcurrency {
        &self.concurrency
    }

    /// The `response_format` shape structured requests start with now.
    pub fn response_format(&self) -> ResponseFormat {
        ResponseFormat::from_index(self.format_step.load(Ordering::SeqCst))
    }

    fn key(&self) -> Option<&str> {
        self.api_key.as_ref().map(|k| k.0.as_str())
    }

    /// What this endpoint did so far.
    pub fn endpoint_stats(&self) -> EndpointStats {
        let m = &self.metrics;
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let active = m
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(a, b)| b.duration_since(a).as_secs_f64())
            .unwrap_or(0.0);
        EndpointStats {
            base_url: self.cfg.base_url.clone(),
            backend: self.cfg.backend_name.clone(),
            backend_source: self.provenance.backend_source.clone(),
            slots: self.cfg.max_concurrency as u64,
            slots_source: self.provenance.slots_source.clone(),
            response_format: self.response_format().name().to_string(),
            http_attempts: load(&m.http_attempts),
            answered: load(&m.answered),
            lost: load(&m.lost),
            slow: load(&m.slow),
            format_refusals: load(&m.format_refusals),
            prompt_tokens: load(&m.prompt_tokens),
            completion_tokens: load(&m.completion_tokens),
            queue_secs: load(&m.queue_us) as f64 / 1e6,
            decode_secs: load(&m.decode_us) as f64 / 1e6,
            active_secs: active,
            out_of_service: self.is_out_of_service(),
        }
    }

    fn body(
        &self,
        req: &ChatRequest,
        p: &SamplingParams,
        format: Option<(ResponseFormat, &Value)>,
    ) -> Vec<u8> {
        let mut b = json!({
            "model": self.cfg.model,
            "messages": req.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>(),
            "temperature": p.temperature,
            "top_p": p.top_p,
            "n": p.n,
        });
        let o = b.as_object_mut().expect("object");
        if let Some(mt) = p.max_tokens {
            o.insert("max_tokens".into(), json!(mt));
        }
        if let (true, Some(seed)) = (self.cfg.send_seed, p.seed) {
            o.insert("seed".into(), json!(seed));
        }
        if p.presence_penalty != 0.0 {
            o.insert("presence_penalty".into(), json!(p.presence_penalty));
        }
        if p.frequency_penalty != 0.0 {
            o.insert("frequency_penalty".into(), json!(p.frequency_penalty));
        }
        if let Some(rf) = format.and_then(|(f, schema)| f.payload(schema)) {
            o.insert("response_format".into(), rf);
        }
        serde_json::to_vec(&b).expect("serialisable")
    }

    async fn chat_impl(&self, req: &ChatRequest) -> Result<ChatResponse, TeacherError> {
        if req.messages.is_empty() {
            return Err(TeacherError::Config("a chat request needs at least one message".into()));
        }
        let n = req.params.n.max(1);
        let mut choices: Vec<Choice> = Vec::with_capacity(n as usize);
        let mut usage = Usage::default();
        let mut cost = 0.0;
        let mut round = 0u64;
        while (choices.len() as u32) < n {
            let want = n - choices.len() as u32;
            let mut p = req.params.clone();
            p.n = want;
            if round > 0 {
                // The server ignored `n`: ask again for the rest, with a different seed so that
                // seed-honouring servers do not repeat the same sample.
                p.seed = p.seed.map(|s| s.wrapping_add(round));
            }
            self.accounting.reserve_call()?;
            match self.call_structured(req, &p).await {
                Ok((got, u)) => {
                    cost += self.accounting.record_success(&u);
                    usage += u;
                    for c in got.into_iter().take(want as usize) {
                        let index = choices.len() as u32;
                        choices.push(Choice { index, ..c });
                    }
                }
                Err(e) => {
                    self.accounting.record_failure();
                    return Err(e);
                }
            }
            round += 1;
        }
        Ok(ChatResponse { choices, usage, cost_usd: cost, cached: false })
    }

    /// One call, with the request's schema as `response_format` when it has one: refused shapes
    /// are replaced by the next on the ladder at once, and the shape that worked is remembered.
    async fn call_structured(
        &self,
        req: &ChatRequest,
        p: &SamplingParams,
    ) -> Result<(Vec<Choice>, Usage), TeacherError> {
        let Some(schema) = structured::schema_for(p) else {
            return self.call_with_retries(req, p, &self.body(req, p, None), false).await;
        };
        let mut step = self.response_format();
        loop {
            let body = self.body(req, p, Some((step, &schema)));
            let with_format = step != ResponseFormat::None;
            match self.call_with_retries(req, p, &body, with_format).await {
                Ok(r) => {
                    let before = self.format_step.fetch_max(step.index(), Ordering::SeqCst);
                    if step.index() > before {
                        tracing::info!(endpoint = %self.cfg.base_url, response_format = step.name(), "structured output: the server takes this shape; kept for its later requests");
                    }
                    return Ok(r);
                }
                Err(TeacherError::Status { status, body: msg, .. })
                    if with_format && structured::is_refusal(status, &msg) =>
                {
                    self.metrics.format_refusals.fetch_add(1, Ordering::SeqCst);
                    let next = ResponseFormat::from_index(
                        step.next().index().max(self.format_step.load(Ordering::SeqCst)),
                    );
                    tracing::info!(endpoint = %self.cfg.base_url, refused = step.name(), next = next.name(), status, body = %excerpt(&msg, 200), "structured output: response_format refused; trying the next shape");
                    step = next;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send `body` until answered: retried when refused before any work (429, 408, 409) or lost
    /// (connection errors, 5xx, truncated bodies) — except a refusal of its `response_format`
    /// (`with_format`), which is returned at once for the next shape.
    async fn call_with_retries(
        &self,
        req: &ChatRequest,
        p: &SamplingParams,
        body: &[u8],
        with_format: bool,
    ) -> Result<(Vec<Choice>, Usage), TeacherError> {
        let prompt_est = req.estimated_prompt_tokens();
        let per_choice =
            p.max_tokens.unwrap_or(u32::MAX).min(self.cfg.completion_tokens_estimate) as u64;
        let est = prompt_est + per_choice * p.n as u64;
        let mut attempt: u32 = 0;
        loop {
            let queued_at = Instant::now();
            let permit = self.concurrency.acquire().await;
            self.limiter.acquire(est).await;
            if self.is_out_of_service() {
                return Err(TeacherError::Connection(format!(
                    "{} was taken out of service after repeated lost requests",
                    self.cfg.base_url
                )));
            }
            let sent_at = Instant::now();
            self.metrics
                .queue_us
                .fetch_add(sent_at.duration_since(queued_at).as_micros() as u64, Ordering::SeqCst);
            self.metrics.slot_taken(sent_at);
            self.metrics.http_attempts.fetch_add(1, Ordering::SeqCst);
            self.accounting.record_http_attempt();
            let result = self.send_once(body, prompt_est).await;
            self.metrics.slot_released(sent_at);
            match result {
                Ok((choices, usage)) => {
                    self.concurrency.on_success();
                    self.limiter.settle(est, usage.total());
                    self.metrics.answered.fetch_add(1, Ordering::SeqCst);
                    self.metrics.consecutive_lost.store(0, Ordering::SeqCst);
                    self.metrics.prompt_tokens.fetch_add(usage.prompt_tokens, Ordering::SeqCst);
                    self.metrics
                        .completion_tokens
                        .fetch_add(usage.completion_tokens, Ordering::SeqCst);
                    drop(permit);
                    return Ok((choices, usage));
                }
                Err(e) => {
                    if let (true, TeacherError::Status { status, body, .. }) = (with_format, &e) {
                        if structured::is_refusal(*status, body) {
                            return Err(e);
                        }
                    }
                    if e.kind() == "rate_limited" {
                        self.concurrency.on_congestion();
                    }
                    if e.is_lost() {
                        self.metrics.lost.fetch_add(1, Ordering::SeqCst);
                        let run = self.metrics.consecutive_lost.fetch_add(1, Ordering::SeqCst) + 1;
                        if self.remove_after_lost.is_some_and(|k| run >= k) {
                            self.take_out_of_service();
                        }
                    }
                    if e.kind() == "timeout" {
                        self.accounting.record_timeout();
                    }
                    if !e.is_retryable() || self.is_out_of_service() {
                        return Err(e);
                    }
                    if attempt >= self.cfg.max_retries {
                        return Err(if attempt == 0 {
                            e
                        } else {
                            TeacherError::RetriesExhausted {
                                attempts: attempt + 1,
                                last: Box::new(e),
                            }
                        });
                    }
                    let delay = self.retry_delay(attempt, &e);
                    if e.kind() == "rate_limited" {
                        self.limiter.cool_down(delay);
                    }
                    self.accounting.record_retry(&e);
                    tracing::warn!(endpoint = %self.cfg.base_url, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, error = %e, "teacher request refused or lost; retrying");
                    drop(permit);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    fn retry_delay(&self, attempt: u32, e: &TeacherError) -> Duration {
        let mut rng = self.jitter.lock().unwrap_or_else(|p| p.into_inner());
        if let TeacherError::Status { retry_after: Some(ra), .. } = e {
            let ra = (*ra).min(Duration::from_secs_f64(self.cfg.max_retry_after_secs));
            // Honour it, plus a little jitter (≤ 10 %, ≤ 250 ms) so waiting clients do not
            // return in lockstep.
            let jitter = rng.next_f64() * (ra.as_secs_f64() * 0.1).min(0.25);
            return ra + Duration::from_secs_f64(jitter);
        }
        let exp = self
            .cfg
            .backoff_base_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.cfg.backoff_max_ms) as f64;
        // "Equal jitter": half fixed, half uniform.
        Duration::from_secs_f64((exp / 2.0 + rng.next_f64() * exp / 2.0) / 1000.0)
    }

    /// Send once and wait for the answer: past `request_timeout_secs` the request counts as slow
    /// and is kept waiting; past `abandon_after_secs` it is given up (never sent again).
    async fn send_once(
        &self,
        body: &[u8],
        prompt_est: u64,
    ) -> Result<(Vec<Choice>, Usage), TeacherError> {
        let exchange = self.exchange(body, prompt_est);
        tokio::pin!(exchange);
        let slow_after = Duration::from_secs_f64(self.cfg.request_timeout_secs);
        let abandon_after = self.cfg.abandon_after_secs.map(Duration::from_secs_f64);
        if abandon_after.is_some_and(|a| a <= slow_after) {
            let a = abandon_after.expect("checked");
            return tokio::time::timeout(a, exchange)
                .await
                .unwrap_or(Err(TeacherError::Timeout(a)));
        }
        match tokio::time::timeout(slow_after, &mut exchange).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics.slow.fetch_add(1, Ordering::SeqCst);
                self.concurrency.on_congestion();
                tracing::warn!(endpoint = %self.cfg.base_url, after_s = slow_after.as_secs_f64(), "teacher request is slow; still waiting for it (it is not sent again)");
                match abandon_after {
                    Some(a) => tokio::time::timeout(a - slow_after, exchange)
                        .await
                        .unwrap_or(Err(TeacherError::Timeout(a))),
                    None => exchange.await,
                }
            }
        }
    }

    async fn exchange(
        &self,
        body: &[u8],
        prompt_est: u64,
    ) -> Result<(Vec<Choice>, Usage), TeacherError> {
        let mut rb = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(k) = self.key() {
            rb = rb.bearer_auth(k);
        }
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_from_headers(resp.headers(), SystemTime::now());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| TeacherError::Truncated(redact(&error_chain(&e), self.key())))?;
        if !(200..300).contains(&status) {
            let text = redact(&String::from_utf8_lossy(&bytes), self.key());
            return Err(TeacherError::Status {
                status,
                body: excerpt(text.trim(), 500),
                retry_after,
            });
        }
        parse_completion(&bytes, prompt_est, self.key())
    }

    fn transport_error(&self, e: reqwest::Error) -> TeacherError {
        if e.is_body() || e.is_decode() {
            TeacherError::Truncated(redact(&error_chain(&e), self.key()))
        } else {
            // Connect errors and connect timeouts included: the request never reached the server.
            TeacherError::Connection(redact(&error_chain(&e), self.key()))
        }
    }
}

/// The API key from the environment variable `env` (trimmed; empty counts as unset).
pub(crate) fn read_api_key(env: &str) -> Option<String> {
    match std::env::var(env) {
        Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
        _ => None,
    }
}

impl Teacher for OpenAiTeacher {
    fn backend(&self) -> &str {
        &self.cfg.backend_name
    }
    fn model(&self) -> &str {
        &self.cfg.model
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        Box::pin(self.chat_impl(request))
    }
    fn stats(&self) -> TeacherStats {
        let e = self.endpoint_stats();
        TeacherStats {
            concurrency_limit: self.concurrency.limit() as u64,
            slow_requests: e.slow,
            format_fallbacks: e.format_refusals,
            queue_secs: e.queue_secs,
            decode_secs: e.decode_secs,
            slots: e.slots,
            endpoints: vec![e],
            ..self.accounting.snapshot()
        }
    }
}

/// Parse a chat-completions body into choices and usage (usage estimated when absent).
pub fn parse_completion(
    bytes: &[u8],
    prompt_tokens_estimate: u64,
    secret: Option<&str>,
) -> Result<(Vec<Choice>, Usage), TeacherError> {
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) if e.is_eof() => {
            return Err(TeacherError::Truncated(format!(
                "the JSON body ends early after {} bytes ({e})",
                bytes.len()
            )));
        }
        Err(e) => {
            let text = redact(&String::from_utf8_lossy(bytes), secret);
            return Err(TeacherError::MalformedJson {
                detail: e.to_string(),
                excerpt: excerpt(&text, 200),
            });
        }
    };
    let schema = |m: String| TeacherError::Schema(redact(&m, secret));
    let obj =
        v.as_object().ok_or_else(|| schema("the top-level JSON value is not an object".into()))?;
    if let Some(err) = obj.get("error") {
        return Err(schema(format!(
            "an `error` object in a 2xx response: {}",
            excerpt(&err.to_string(), 300)
        )));
    }
    let arr = obj
        .get("choices")
        .ok_or_else(|| {
            schema(format!(
                "no `choices` field (fields: {})",
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?
        .as_array()
        .ok_or_else(|| schema("`choices` is not an array".into()))?;
    if arr.is_empty() {
        return Err(TeacherError::EmptyChoices);
    }
    let mut choices = Vec::with_capacity(arr.len());
    for (i, c) in arr.iter().enumerate() {
        let content = c
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .or_else(|| c.get("text").and_then(Value::as_str))
            .ok_or_else(|| schema(format!("choice {i} has no string `message.content`")))?;
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
        let finish_reason = c.get("finish_reason").and_then(Value::as_str).map(str::to_string);
        choices.push(Choice { index, content: content.to_string(), finish_reason });
    }
    choices.sort_by_key(|c| c.index);
    let usage = match obj.get("usage").filter(|u| u.is_object()) {
        Some(u) => Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        },
        None => Usage {
            prompt_tokens: prompt_tokens_estimate,
            completion_tokens: choices.iter().map(|c| estimate_tokens(&c.content)).sum(),
        },
    };
    Ok((choices, usage))
}

// ---------------------------------------------------------------------------------------------
// Retry-After

/// The wait a server asks for: `retry-after-ms`, else `Retry-After` (seconds or an HTTP date).
pub(crate) fn retry_after_from_headers(
    h: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = h
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| parse_retry_after(s, now))
}

/// `Retry-After`: delay-seconds (fractions tolerated) or an HTTP date (a date in the past is 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = parse_http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// HTTP dates (RFC 9110 §5.6.7): IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete
/// RFC 850 form `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let month = |m: &str| -> Option<u32> {
        let names =
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
        names.iter().position(|n| m.eq_ignore_ascii_case(n)).map(|i| i as u32 + 1)
    };
    let hms = |t: &str| -> Option<(u32, u32, u32)> {
        let mut it = t.split(':').map(|x| x.parse::<u32>().ok());
        let r = (it.next()??, it.next()??, it.next()??);
        (it.next().is_none() && r.0 < 24 && r.1 < 60 && r.2 < 61).then_some(r)
    };
    let toks: Vec<&str> = s.split_whitespace().collect();
    let (y, mo, d, (hh, mm, ss)) = if let Some((_, rest)) = s.split_once(',') {
        let t: Vec<&str> = rest.split_whitespace().collect();
        match t.as_slice() {
            [d, m, y, time, "GMT"] => {
                (y.parse::<i64>().ok()?, month(m)?, d.parse::<u32>().ok()?, hms(time)?)
            }
            [dmy, time, "GMT"] => {
                let p: Vec<&str> = dmy.split('-').collect();
                if p.len() != 3 {
                    return None;
                }
                let yy = p[2].parse::<i64>().ok()?;
                let y = if p[2].len() == 2 {
                    if yy >= 70 {
                        1900 + yy
                    } else {
                        2000 + yy
                    }
                } else {
                    yy
                };
                (y, month(p[1])?, p[0].parse::<u32>().ok()?, hms(time)?)
            }
            _ => return None,
        }
    } else {
        match toks.as_slice() {
            [_, m, d, time, y] => {
                (y.parse::<i64>().ok()?, month(m)?, d.parse::<u32>().ok()?, hms(time)?)
            }
            _ => return None,
        }
    };
    if !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + (hh * 3600 + mm * 60 + ss) as i64;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Adaptive concurrency (the dynamic batch size)

/// AIMD concurrency limit: `on_congestion` halves it (at most once per 500 ms, so one burst of
/// 429s counts once), `on_success` adds `1/limit` (≈ +1 per window of successes).
#[derive(Debug)]
pub struct AdaptiveConcurrency {
    state: Mutex<AcState>,
    max: usize,
    notify: tokio::sync::Notify,
}

#[derive(Debug)]
struct AcState {
    limit: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct ConcurrencyPermit<'a> {
    ac: &'a AdaptiveConcurrency,
}

impl Drop for ConcurrencyPermit<'_> {
    fn drop(&mut self) {
        {
            let mut s = self.ac.state.lock().unwrap_or_else(|p| p.into_inner());
            s.in_flight -= 1;
        }
        self.ac.notify.notify_waiters();
    }
}

impl AdaptiveConcurrency {
    pub fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        AdaptiveConcurrency {
            state: Mutex::new(AcState {
                limit: initial.clamp(1, max) as f64,
                in_flight: 0,
                last_decrease: None,
            }),
            max,
            notify: tokio::sync::Notify::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).limit.floor() as usize
    }

    pub fn in_flight(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).in_flight
    }

    pub async fn acquire(&self) -> ConcurrencyPermit<'_> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if (s.in_flight as f64) < s.limit.floor() {
                    s.in_flight += 1;
                    return ConcurrencyPermit { ac: self };
                }
            }
            notified.await;
        }
    }

    pub fn on_success(&self) {
        let grew = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.limit.floor();
            s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
            s.limit.floor() > before
        };
        if grew {
            self.notify.notify_waiters();
        }
    }

    pub fn on_congestion(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.last_decrease.is_some_and(|t| now.duration_since(t) < Duration::from_millis(500)) {
            return;
        }
        s.last_decrease = Some(now);
        s.limit = (s.limit / 2.0).max(1.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

#[derive(Debug)]
struct Bucket {
    rate_per_sec: f64,
    capacity: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: f64, capacity: f64) -> Self {
        let capacity = capacity.max(1.0);
        Bucket { rate_per_sec: per_minute / 60.0, capacity, level: capacity, last: Instant::now() }
    }
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.rate_per_sec).min(self.capacity);
        self.last = now;
    }
    /// How long until `cost` can be taken (costs above the capacity need a full bucket and
    /// leave it in debt).
    fn wait_for(&self, cost: f64) -> Duration {
        let need = cost.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate_per_sec)
        }
    }
}

/// Requests-per-minute and tokens-per-minute token buckets plus a global cool-down (set by 429s).
/// Waiters are served in FIFO order.
#[derive(Debug)]
pub struct RateLimiter {
    turn: tokio::sync::Mutex<()>,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    cooldown_until: Option<Instant>,
}

impl RateLimiter {
    pub fn new(rpm: Option<f64>, rpm_burst: f64, tpm: Option<f64>, tpm_burst: Option<f64>) -> Self {
        RateLimiter {
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(LimiterState {
                rpm: rpm.map(|r| Bucket::new(r, rpm_burst)),
                tpm: tpm.map(|t| Bucket::new(t, tpm_burst.unwrap_or(t / 6.0))),
                cooldown_until: None,
            }),
        }
    }

    /// Wait for one request slot and `est_tokens` tokens.
    pub async fn acquire(&self, est_tokens: u64) {
        let _turn = self.turn.lock().await;
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let mut w =
                    s.cooldown_until.map(|c| c.saturating_duration_since(now)).unwrap_or_default();
                if let Some(b) = s.rpm.as_mut() {
                    b.refill(now);
                    w = w.max(b.wait_for(1.0));
                }
                if let Some(b) = s.tpm.as_mut() {
                    b.refill(now);
                    w = w.max(b.wait_for(est_tokens as f64));
                }
                if w.is_zero() {
                    if let Some(b) = s.rpm.as_mut() {
                        b.level -= 1.0;
                    }
                    if let Some(b) = s.tpm.as_mut() {
                        b.level -= est_tokens as f64;
                    }
                    return;
                }
                w
            };
            // Re-check at least every 250 ms so a new cool-down is noticed.
            tokio::time::sleep(wait.min(Duration::from_millis(250))).await;
        }
    }

    /// After a response: replace the estimate by the actual token count.
    pub fn settle(&self, est_tokens: u64, actual_tokens: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = s.tpm.as_mut() {
            b.level = (b.level + est_tokens as f64 - actual_tokens as f64).min(b.capacity);
        }
    }

    /// Pause every request for `d` (after a 429).
    pub fn cool_down(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + d;
        s.cooldown_until = Some(s.cooldown_until.map_or(until, |c| c.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse_http_date("yesterday"), None);
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5", now), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now + Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn completion_parsing() {
        let ok = br#"{"choices":[{"index":1,"message":{"role":"assistant","content":"b"},"finish_reason":"stop"},{"index":0,"message":{"content":"a"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        let (c, u) = parse_completion(ok, 0, None).unwrap();
        assert_eq!(c.iter().map(|c| c.content.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(u, Usage { prompt_tokens: 3, completion_tokens: 2 });
        assert!(matches!(
            parse_completion(b"{\"choices\":[]}", 0, None),
            Err(TeacherError::EmptyChoices)
        ));
        assert!(matches!(parse_completion(b"{\"foo\":1}", 0, None), Err(TeacherError::Schema(_))));
        assert!(matches!(
            parse_completion(b"<html>", 0, None),
            Err(TeacherError::MalformedJson { .. })
        ));
        assert!(matches!(
            parse_completion(b"{\"choices\":[{\"mess", 0, None),
            Err(TeacherError::Truncated(_))
        ));
        assert!(matches!(
            parse_completion(br#"{"choices":[{"message":{"content":null}}]}"#, 0, None),
            Err(TeacherError::Schema(_))
        ));
    }

    #[tokio::test]
    async fn aimd_shrinks_and_grows() {
        let ac = AdaptiveConcurrency::new(8, 8);
        ac.on_congestion();
        assert_eq!(ac.limit(), 4);
        ac.on_congestion(); // within 500 ms: one burst counts once
        assert_eq!(ac.limit(), 4);
        for _ in 0..30 {
            ac.on_success();
        }
        assert_eq!(ac.limit(), 8);
        let p1 = ac.acquire().await;
        assert_eq!(ac.in_flight(), 1);
        drop(p1);
        assert_eq!(ac.in_flight(), 0);
    }

    #[tokio::test]
    async fn concurrency_limit_blocks_until_release() {
        let ac = Arc::new(AdaptiveConcurrency::new(1, 1));
        let p = ac.acquire().await;
        let ac2 = ac.clone();
        let h = tokio::spawn(async move {
            let _p = ac2.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!h.is_finished());
        drop(p);
        tokio::time::timeout(Duration::from_secs(2), h).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tpm_bucket_uses_estimates_then_actual_usage() {
        // 6000 tokens/min = 100/s, bucket of 100.
        let lim = RateLimiter::new(None, 1.0, Some(6000.0), Some(100.0));
        let t0 = Instant::now();
        lim.acquire(100).await; // the full bucket
        lim.settle(100, 10); // the answer used 10: 90 come back
        lim.acquire(100).await; // needs 10 more: ~0.1 s
        let dt = t0.elapsed().as_secs_f64();
        assert!((0.05..0.5).contains(&dt), "{dt}");
        lim.acquire(100).await; // without a refund: ~1 s
        let dt2 = t0.elapsed().as_secs_f64() - dt;
        assert!((0.8..1.6).contains(&dt2), "{dt2}");
        // A request larger than the bucket waits for a full bucket, then goes into debt.
        let big = RateLimiter::new(None, 1.0, Some(6000.0), Some(100.0));
        big.acquire(150).await;
        let t1 = Instant::now();
        big.acquire(1).await; // 50 of debt + 1 token: ~0.5 s at 100/s
        let waited = t1.elapsed().as_secs_f64();
        assert!((0.4..1.2).contains(&waited), "{waited}");
    }

    #[tokio::test]
    async fn rpm_bucket_paces() {
        let lim = RateLimiter::new(Some(600.0), 1.0, None, None); // 10/s
        let t0 = Instant::now();
        for _ in 0..5 {
            lim.acquire(0).await;
        }
        let dt = t0.elapsed().as_secs_f64();
        assert!((0.35..0.8).contains(&dt), "{dt}");
    }
}

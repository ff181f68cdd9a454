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
//!   per window of successes, within `1..=max_concurrency` ([`super::limits`]).
//! - Requests-per-minute and tokens-per-minute token buckets (estimated tokens before a request,
//!   the server's actual usage settled after); a 429 pauses every request for its delay
//!   ([`super::limits`]).
//! - Retries by the one HTTP retry policy ([`crate::util::http`]), with exponential backoff and
//!   jitter, for requests refused before any work (429, 408) or lost (connection errors, 5xx but
//!   501, truncated bodies), honouring `Retry-After` (seconds or HTTP date, clipped to
//!   `max_retry_after_secs`) and `retry-after-ms`; a host name that does not resolve is not
//!   retried ([`TeacherError::Unresolved`]).
//! - Typed errors for non-retryable 4xx, malformed JSON, wrong schema, empty choices, truncated
//!   bodies.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::util::http::{
    error_chain, retry_after_from_headers, Failure, LongRetryAfter, RetryPolicy, Retrying, Stop,
    Unresolved,
};
use crate::util::text::excerpt;

use super::limits::{AdaptiveConcurrency, RateLimiter};
use super::structured::{self, ResponseFormat};
use super::{
    estimate_tokens, redact, Accounting, ChatRequest, ChatResponse, Choice, EndpointStats, Pricing,
    SamplingParams, Teacher, TeacherError, TeacherErrorKind, TeacherStats, Usage,
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
    /// Retries per request after the first attempt (429/408 and lost requests only).
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
    /// The one HTTP retry policy with this endpoint's numbers and jitter.
    retry: RetryPolicy,
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
            retry: RetryPolicy::new(
                cfg.max_retries,
                Duration::from_millis(cfg.backoff_base_ms),
                Duration::from_millis(cfg.backoff_max_ms),
            )
            // A teacher's caller cannot do better than wait: a longer Retry-After is clipped.
            .with_max_retry_after(
                Duration::from_secs_f64(cfg.max_retry_after_secs),
                LongRetryAfter::Clip,
            )
            .with_jitter(cfg.jitter_seed),
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

    /// Send `body` until answered: retried by the endpoint's [`RetryPolicy`] when refused before
    /// any work (429, 408) or lost (connection errors, 5xx, truncated bodies) — except a refusal
    /// of its `response_format` (`with_format`), which is returned at once for the next shape.
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
        let classify = |e: &TeacherError| {
            if refused_format(with_format, e) || self.is_out_of_service() {
                Failure::Permanent
            } else {
                e.failure()
            }
        };
        let on_retry = |e: &TeacherError, r: Retrying| {
            if e.kind() == TeacherErrorKind::RateLimited {
                self.limiter.cool_down(r.wait);
            }
            self.accounting.record_retry(e);
            tracing::warn!(endpoint = %self.cfg.base_url, attempt = r.retry, delay_ms = r.wait.as_millis() as u64, error = %e, "teacher request refused or lost; retrying");
        };
        let attempt = || self.attempt(body, prompt_est, est, with_format);
        self.retry.run(attempt, classify, on_retry).await.map_err(|gave_up| {
            if gave_up.why == Stop::Exhausted && gave_up.attempts > 1 {
                TeacherError::RetriesExhausted {
                    attempts: gave_up.attempts,
                    last: Box::new(gave_up.error),
                }
            } else {
                gave_up.error
            }
        })
    }

    /// One attempt: wait for a slot and the rate limit, send, record what came back.
    async fn attempt(
        &self,
        body: &[u8],
        prompt_est: u64,
        est: u64,
        with_format: bool,
    ) -> Result<(Vec<Choice>, Usage), TeacherError> {
        let queued_at = Instant::now();
        let _permit = self.concurrency.acquire().await;
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
        let (choices, usage) = result.inspect_err(|e| {
            if !refused_format(with_format, e) {
                self.note_failure(e);
            }
        })?;
        self.concurrency.on_success();
        self.limiter.settle(est, usage.total());
        self.metrics.answered.fetch_add(1, Ordering::SeqCst);
        self.metrics.consecutive_lost.store(0, Ordering::SeqCst);
        self.metrics.prompt_tokens.fetch_add(usage.prompt_tokens, Ordering::SeqCst);
        self.metrics.completion_tokens.fetch_add(usage.completion_tokens, Ordering::SeqCst);
        Ok((choices, usage))
    }

    /// What a failed attempt tells about the endpoint: congestion (429s halve the concurrency),
    /// lost requests (counted; too many in a row take a fleet's endpoint out), timeouts.
    fn note_failure(&self, e: &TeacherError) {
        if e.kind() == TeacherErrorKind::RateLimited {
            self.concurrency.on_congestion();
        }
        if e.is_lost() {
            self.metrics.lost.fetch_add(1, Ordering::SeqCst);
            let run = self.metrics.consecutive_lost.fetch_add(1, Ordering::SeqCst) + 1;
            if self.remove_after_lost.is_some_and(|k| run >= k) {
                self.take_out_of_service();
            }
        }
        if e.kind() == TeacherErrorKind::Timeout {
            self.accounting.record_timeout();
        }
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
        if Failure::of_transport(&e) == Failure::Unresolved {
            TeacherError::Unresolved(Unresolved {
                url: self.cfg.base_url.clone(),
                detail: redact(&error_chain(&e), self.key()),
            })
        } else if e.is_body() || e.is_decode() {
            TeacherError::Truncated(redact(&error_chain(&e), self.key()))
        } else {
            // Connect errors and connect timeouts included: the request never reached the server.
            TeacherError::Connection(redact(&error_chain(&e), self.key()))
        }
    }
}

/// A server's refusal of the `response_format` of a request that carried one (`with_format`):
/// not a failure of the endpoint, and answered by the next shape rather than a retry.
fn refused_format(with_format: bool, e: &TeacherError) -> bool {
    matches!((with_format, e), (true, TeacherError::Status { status, body, .. }) if structured::is_refusal(*status, body))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Teacher LLMs: the models that write the synthetic training data (Prompt2Model §3.3) and parse
//! the user's prompt (§3.1).
//!
//! - [`Teacher`]: one object-safe async interface: chat messages + sampling parameters in, `n`
//!   choices + token usage out. Backends: [`openai::OpenAiTeacher`] (any OpenAI-compatible chat
//!   completions server: OpenAI, vLLM, llama.cpp server, llama-cpp-python, Ollama; one endpoint,
//!   with its slots, rate limit and structured-output fallbacks), [`fleet::FleetTeacher`]
//!   (several endpoints, requests sharded by request id, failing endpoints taken out) and the
//!   in-process local model wired up elsewhere; wrappers: [`cache::CachedTeacher`]
//!   (record/replay).
//! - [`structured`]: structured output over the API (a JSON schema sent as `response_format`,
//!   with fallbacks where a server refuses a shape); [`discover`]: what a server is and how many
//!   requests it decodes at once (`/v1/models`, llama.cpp's `/props`, …); [`limits`]: an
//!   endpoint's adaptive concurrency and its requests- and tokens-per-minute limits.
//! - [`Accounting`]: run accounting shared by the backends: calls, HTTP attempts, retries, tokens
//!   in/out, cost ([`Pricing`] per model) and the max-API-calls budget
//!   ([`TeacherError::BudgetExhausted`]; the caller keeps what it has).
//! - [`settings::TeacherSettings`]: which teacher answers, as data; every command builds its teacher
//!   through it, so the defaults (80 requests a minute) are the same everywhere.
//! - Small shared helpers: a token estimate ([`estimate_tokens`]) and secret redaction ([`redact`]).

pub mod cache;
pub mod discover;
pub mod fleet;
pub mod limits;
pub mod local;
pub mod openai;
pub mod settings;
pub mod structured;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::util::http::Failure;

pub use cache::{CacheMode, CachedTeacher};
pub use fleet::FleetTeacher;
pub use openai::{OpenAiConfig, OpenAiTeacher};
pub use settings::{EndpointSettings, TeacherKind, TeacherSettings, DEFAULT_REQUESTS_PER_MINUTE};

// ---------------------------------------------------------------------------------------------
// Requests and responses

/// One chat turn and its speaker: defined with the chat template in the models layer, which the
/// local teacher runs on; the serde form (`{"role": "user", "content": ...}`) is what requests,
/// and so cache keys, serialise.
pub use crate::models::chat::{ChatMessage, Role};

/// Sampling parameters of one request. `n` is the number of choices wanted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    /// Completion-token cap per choice; `None` lets the server decide.
    pub max_tokens: Option<u32>,
    pub n: u32,
    /// Sampling seed (sent where the backend supports it; always part of the cache key).
    pub seed: Option<u64>,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    /// The answer is a flat JSON object of these string fields (e.g. `["input", "output"]`). HTTP
    /// backends ask the server for it as structured output (the schema of
    /// [`structured::object_of_strings`] as `response_format`, see [`structured`]); the local
    /// teacher decodes the object field by field (structured generation), because a 135M model
    /// will not reliably write JSON unaided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_fields: Option<Vec<String>>,
    /// The answer is JSON following this JSON Schema (the prompt parser's and the retrievers'
    /// answers). HTTP backends send it as `response_format` (with fallbacks, see [`structured`]);
    /// the local teacher only sees what the prompt says. Ignored when `json_fields` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: None,
            n: 1,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            json_fields: None,
            json_schema: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
}

impl ChatRequest {
    /// A single-turn request: one user message.
    pub fn user(prompt: impl Into<String>, params: SamplingParams) -> Self {
        ChatRequest { messages: vec![ChatMessage::user(prompt)], params }
    }

    /// Rough prompt-token estimate of the whole conversation (see [`estimate_tokens`]).
    pub fn estimated_prompt_tokens(&self) -> u64 {
        self.messages.iter().map(|m| estimate_tokens(&m.content) + 4).sum::<u64>() + 3
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub content: String,
    pub finish_reason: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// What this response cost in this run (0 when replayed from a cache or a local model).
    pub cost_usd: f64,
    /// True when the response was replayed from a cache rather than billed.
    pub cached: bool,
}

// ---------------------------------------------------------------------------------------------
// The trait

/// A teacher LLM. Object safe: use it as `&dyn Teacher` / `Box<dyn Teacher>`.
///
/// Implementations return exactly the requested `params.n` choices where they can (the OpenAI
/// backend issues follow-up requests when a server ignores `n`), fail with a typed
/// [`TeacherError`], and never put secrets into errors.
pub trait Teacher: Send + Sync {
    /// Backend name, part of the cache key (e.g. `openai`, `vllm`, `local-tch`).
    fn backend(&self) -> &str;
    /// Model name, part of the cache key.
    fn model(&self) -> &str;
    /// One chat completion with `request.params.n` choices.
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>>;
    /// Many requests at once; results come back in request order. The default runs them
    /// concurrently; backends bound the concurrency themselves (the OpenAI backend adapts it).
    fn chat_batch<'a>(
        &'a self,
        requests: &'a [ChatRequest],
    ) -> BoxFuture<'a, Vec<Result<ChatResponse, TeacherError>>> {
        Box::pin(futures_util::future::join_all(requests.iter().map(|r| self.chat(r))))
    }
    /// Counters of this teacher (and of the teachers it wraps).
    fn stats(&self) -> TeacherStats {
        TeacherStats::default()
    }
}

impl<T: Teacher + ?Sized> Teacher for Box<T> {
    fn backend(&self) -> &str {
        (**self).backend()
    }
    fn model(&self) -> &str {
        (**self).model()
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        (**self).chat(request)
    }
    fn chat_batch<'a>(
        &'a self,
        requests: &'a [ChatRequest],
    ) -> BoxFuture<'a, Vec<Result<ChatResponse, TeacherError>>> {
        (**self).chat_batch(requests)
    }
    fn stats(&self) -> TeacherStats {
        (**self).stats()
    }
}

impl<T: Teacher + ?Sized> Teacher for Arc<T> {
    fn backend(&self) -> &str {
        (**self).backend()
    }
    fn model(&self) -> &str {
        (**self).model()
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        (**self).chat(request)
    }
    fn chat_batch<'a>(
        &'a self,
        requests: &'a [ChatRequest],
    ) -> BoxFuture<'a, Vec<Result<ChatResponse, TeacherError>>> {
        (**self).chat_batch(requests)
    }
    fn stats(&self) -> TeacherStats {
        (**self).stats()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything a teacher call can fail with. Messages never contain the API key: backends pass
/// every server-provided text through [`redact`].
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("no API key: set the environment variable `{env}` (the key is read only from there)")]
    MissingApiKey { env: String },
    #[error("invalid teacher configuration: {0}")]
    Config(String),
    #[error("API-call budget exhausted: {used} of {limit} calls used; raise the budget (max_api_calls) to continue; everything obtained so far is kept")]
    BudgetExhausted { limit: u64, used: u64 },
    #[error("HTTP {status} from the teacher server: {body}")]
    Status { status: u16, body: String, retry_after: Option<Duration> },
    /// A request abandoned after this long in its slot (it is never sent again: a slow request
    /// may still be answered, and billed, by the server).
    #[error("request abandoned after {0:?} without an answer (not sent again)")]
    Timeout(Duration),
    #[error("connection error: {0}")]
    Connection(String),
    /// The server's host name does not resolve (no network, or a misspelt address): not retried.
    #[error(transparent)]
    Unresolved(#[from] crate::util::http::Unresolved),
    #[error("truncated response body: {0}")]
    Truncated(String),
    #[error("malformed JSON in the response: {detail} (body starts: {excerpt:?})")]
    MalformedJson { detail: String, excerpt: String },
    #[error("response does not follow the chat-completions schema: {0}")]
    Schema(String),
    #[error("response has no choices")]
    EmptyChoices,
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: Box<TeacherError> },
    #[error("replay-only cache miss: no recorded response for request sha256:{digest} (backend `{backend}`, model `{model}`, choice {choice}) in {cache}. Hint: {hint}")]
    ReplayMiss {
        digest: String,
        backend: String,
        model: String,
        choice: u32,
        cache: String,
        hint: &'static str,
    },
    #[error("teacher cache error: {0}")]
    Cache(String),
    #[error("teacher backend error: {0}")]
    Backend(String),
}

/// What kind of failure a [`TeacherError`] is: the keys of error counters in logs and run
/// records ([`TeacherErrorKind::as_str`]), and what the backends branch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TeacherErrorKind {
    MissingApiKey,
    Config,
    BudgetExhausted,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx.
    ServerError,
    /// Any other HTTP status.
    ClientError,
    Timeout,
    Connection,
    Unresolved,
    TruncatedBody,
    MalformedJson,
    WrongSchema,
    EmptyChoices,
    RetriesExhausted,
    ReplayMiss,
    Cache,
    Backend,
}

impl TeacherErrorKind {
    /// The stable name (`rate_limited`, `server_error`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TeacherErrorKind::MissingApiKey => "missing_api_key",
            TeacherErrorKind::Config => "config",
            TeacherErrorKind::BudgetExhausted => "budget_exhausted",
            TeacherErrorKind::RateLimited => "rate_limited",
            TeacherErrorKind::ServerError => "server_error",
            TeacherErrorKind::ClientError => "client_error",
            TeacherErrorKind::Timeout => "timeout",
            TeacherErrorKind::Connection => "connection",
            TeacherErrorKind::Unresolved => "unresolved",
            TeacherErrorKind::TruncatedBody => "truncated_body",
            TeacherErrorKind::MalformedJson => "malformed_json",
            TeacherErrorKind::WrongSchema => "wrong_schema",
            TeacherErrorKind::EmptyChoices => "empty_choices",
            TeacherErrorKind::RetriesExhausted => "retries_exhausted",
            TeacherErrorKind::ReplayMiss => "replay_miss",
            TeacherErrorKind::Cache => "cache",
            TeacherErrorKind::Backend => "backend",
        }
    }
}

impl std::fmt::Display for TeacherErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TeacherError {
    /// What this failure is to the one HTTP retry policy ([`crate::util::http`]): a status (with
    /// the wait the server asked for), a lost exchange (a connection error, a truncated body), a
    /// host name that does not resolve, or something no retry changes.
    pub fn failure(&self) -> Failure {
        match self {
            TeacherError::Status { status, retry_after, .. } => {
                Failure::of_status(*status, *retry_after)
            }
            TeacherError::Connection(_) | TeacherError::Truncated(_) => Failure::Transient,
            TeacherError::Unresolved(_) => Failure::Unresolved,
            _ => Failure::Permanent,
        }
    }

    /// Worth retrying the same HTTP request: the request was refused before any work (429, 408)
    /// or lost (a connection error, a truncated body, a 5xx but 501), as the one retry policy
    /// says ([`crate::util::http`]). Not a request that was merely slow
    /// ([`TeacherError::Timeout`]): it is never sent twice; not a host name that does not resolve.
    pub fn is_retryable(&self) -> bool {
        self.failure().is_retryable()
    }

    /// The request (or its answer) was lost on the way: a connection error, a truncated body, a
    /// 5xx, a host that does not resolve — directly or as the last error of exhausted retries.
    /// What makes a fleet take an endpoint out and send the request to another.
    pub fn is_lost(&self) -> bool {
        match self {
            TeacherError::Status { status, .. } => *status >= 500,
            TeacherError::Connection(_)
            | TeacherError::Truncated(_)
            | TeacherError::Unresolved(_) => true,
            TeacherError::RetriesExhausted { last, .. } => last.is_lost(),
            _ => false,
        }
    }

    /// Ends a whole run: nothing later can succeed without a change by the user.
    pub fn is_fatal(&self) -> bool {
        match self {
            TeacherError::MissingApiKey { .. }
            | TeacherError::Config(_)
            | TeacherError::BudgetExhausted { .. }
            | TeacherError::ReplayMiss { .. }
            | TeacherError::Cache(_) => true,
            TeacherError::Status { status, .. } => matches!(status, 401 | 403 | 404),
            _ => false,
        }
    }

    /// Worth sending the same request again later, at the caller's level: bad bodies (malformed
    /// JSON, wrong schema, empty choices, truncation) and the retryable transport errors of
    /// backends that do not retry themselves. Not: fatal errors, non-retryable 4xx, and
    /// [`TeacherError::RetriesExhausted`] (the backend already tried hard).
    pub fn is_transient(&self) -> bool {
        match self {
            TeacherError::MalformedJson { .. }
            | TeacherError::Schema(_)
            | TeacherError::EmptyChoices => true,
            _ => self.is_retryable() && !self.is_fatal(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TeacherErrorKind {
        match self {
            TeacherError::MissingApiKey { .. } => TeacherErrorKind::MissingApiKey,
            TeacherError::Config(_) => TeacherErrorKind::Config,
            TeacherError::BudgetExhausted { .. } => TeacherErrorKind::BudgetExhausted,
            TeacherError::Status { status: 429, .. } => TeacherErrorKind::RateLimited,
            TeacherError::Status { status, .. } if *status >= 500 => TeacherErrorKind::ServerError,
            TeacherError::Status { .. } => TeacherErrorKind::ClientError,
            TeacherError::Timeout(_) => TeacherErrorKind::Timeout,
            TeacherError::Connection(_) => TeacherErrorKind::Connection,
            TeacherError::Unresolved(_) => TeacherErrorKind::Unresolved,
            TeacherError::Truncated(_) => TeacherErrorKind::TruncatedBody,
            TeacherError::MalformedJson { .. } => TeacherErrorKind::MalformedJson,
            TeacherError::Schema(_) => TeacherErrorKind::WrongSchema,
            TeacherError::EmptyChoices => TeacherErrorKind::EmptyChoices,
            TeacherError::RetriesExhausted { .. } => TeacherErrorKind::RetriesExhausted,
            TeacherError::ReplayMiss { .. } => TeacherErrorKind::ReplayMiss,
            TeacherError::Cache(_) => TeacherErrorKind::Cache,
            TeacherError::Backend(_) => TeacherErrorKind::Backend,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accounting

/// One `[[model]]` of `data/pricing.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    prefix: Option<String>,
    exact: Option<String>,
    input_per_1k_usd: f64,
    output_per_1k_usd: f64,
    #[allow(dead_code)] // documentation in the data file
    source: String,
}

/// `data/pricing.toml`, parsed once (a broken table fails the build's tests, not a run).
fn price_table() -> &'static [PriceEntry] {
    #[derive(Deserialize)]
    struct Table {
        model: Vec<PriceEntry>,
    }
    static TABLE: std::sync::OnceLock<Vec<PriceEntry>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        toml::from_str::<Table>(include_str!("../../data/pricing.toml"))
            .expect("data/pricing.toml parses (tested)")
            .model
    })
}

/// Price per 1,000 tokens in US dollars.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub input_per_1k_usd: f64,
    pub output_per_1k_usd: f64,
}

impl Pricing {
    pub const FREE: Pricing = Pricing { input_per_1k_usd: 0.0, output_per_1k_usd: 0.0 };

    /// The price of a model name from `data/pricing.toml` (first matching entry; compiled in);
    /// unknown models (local servers) are free. Override with a configured [`Pricing`].
    pub fn for_model(model: &str) -> Pricing {
        let m = model.to_ascii_lowercase();
        price_table()
            .iter()
            .find(|e| match (&e.exact, &e.prefix) {
                (Some(x), _) => m == x.to_ascii_lowercase(),
                (None, Some(p)) => m.starts_with(&p.to_ascii_lowercase()),
                (None, None) => false,
            })
            .map(|e| Pricing {
                input_per_1k_usd: e.input_per_1k_usd,
                output_per_1k_usd: e.output_per_1k_usd,
            })
            .unwrap_or(Pricing::FREE)
    }

    pub fn cost(&self, usage: &Usage) -> f64 {
        usage.prompt_tokens as f64 / 1000.0 * self.input_per_1k_usd
            + usage.completion_tokens as f64 / 1000.0 * self.output_per_1k_usd
    }
}

/// Counters of a teacher (stack), serialisable into run logs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TeacherStats {
    /// Logical calls sent to a backend (what the budget counts).
    pub calls: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// HTTP requests actually sent, retries included.
    pub http_attempts: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub timeouts: u64,
    pub server_errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub max_calls: Option<u64>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Current concurrency limit of an adaptive backend (0 when not applicable).
    pub concurrency_limit: u64,
    /// Requests still unanswered after the request timeout: kept waiting, never sent twice.
    pub slow_requests: u64,
    /// Requests a server refused for their `response_format`, sent again with the next shape.
    pub format_fallbacks: u64,
    /// Seconds requests waited for a slot and the rate limit, summed over requests.
    pub queue_secs: f64,
    /// Seconds requests held a slot (sent until answered, the server's queue and decoding),
    /// summed over requests.
    pub decode_secs: f64,
    /// In-flight request caps (slots), summed over the endpoints (0: not an HTTP backend).
    pub slots: u64,
    /// One entry per endpoint of an HTTP backend (several for a fleet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStats>,
}

/// What one endpoint (one OpenAI-compatible server) did: what it is, how its requests went, and
/// where their time went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointStats {
    pub base_url: String,
    /// The backend name: the user's, or what the server reported (see [`discover`]).
    pub backend: String,
    /// How the name was found (`setting`, `/v1/models owned_by=…`, `/props`, …).
    pub backend_source: String,
    /// The in-flight request cap.
    pub slots: u64,
    /// Where the cap came from (`setting`, `server /props total_slots`, `default`, …).
    pub slots_source: String,
    /// The `response_format` shape structured requests use now (see [`structured`]).
    pub response_format: String,
    /// HTTP requests sent, answered (2xx), lost (connection, truncated, 5xx) and slow.
    pub http_attempts: u64,
    pub answered: u64,
    pub lost: u64,
    pub slow: u64,
    pub format_refusals: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub queue_secs: f64,
    pub decode_secs: f64,
    /// From the first request taking a slot to the last one leaving it.
    pub active_secs: f64,
    /// Taken out of a fleet after repeated failures.
    pub out_of_service: bool,
}

impl EndpointStats {
    /// Completion tokens per second of slot time (decode throughput across the slots).
    pub fn tokens_per_sec(&self) -> f64 {
        if self.active_secs > 0.0 {
            self.completion_tokens as f64 / self.active_secs
        } else {
            0.0
        }
    }

    /// Fraction of the slots' time (slots × active seconds) that requests held them.
    pub fn slot_utilisation(&self) -> f64 {
        let cap = self.slots as f64 * self.active_secs;
        if cap > 0.0 {
            (self.decode_secs / cap).min(1.0)
        } else {
            0.0
        }
    }
}

/// Thread-safe run accounting: calls, tokens, cost and the max-API-calls budget.
#[derive(Debug)]
pub struct Accounting {
    pricing: Pricing,
    max_calls: Option<u64>,
    calls: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    http_attempts: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    timeouts: AtomicU64,
    server_errors: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cost_usd: Mutex<f64>,
}

impl Accounting {
    pub fn new(pricing: Pricing, max_calls: Option<u64>) -> Self {
        Accounting {
            pricing,
            max_calls,
            calls: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            http_attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cost_usd: Mutex::new(0.0),
        }
    }

    pub fn pricing(&self) -> Pricing {
        self.pricing
    }

    /// Take one call from the budget, or fail with [`TeacherError::BudgetExhausted`].
    pub fn reserve_call(&self) -> Result<(), TeacherError> {
        match self.max_calls {
            None => {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Some(limit) => self
                .calls
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c < limit).then_some(c + 1))
                .map(|_| ())
                .map_err(|used| TeacherError::BudgetExhausted { limit, used }),
        }
    }

    /// Record a billed response; returns its cost.
    pub fn record_success(&self, usage: &Usage) -> f64 {
        self.succeeded.fetch_add(1, Ordering::SeqCst);
        self.prompt_tokens.fetch_add(usage.prompt_tokens, Ordering::SeqCst);
        self.completion_tokens.fetch_add(usage.completion_tokens, Ordering::SeqCst);
        let cost = self.pricing.cost(usage);
        *self.cost_usd.lock().unwrap_or_else(|p| p.into_inner()) += cost;
        cost
    }

    pub fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::SeqCst);
    }

    pub fn record_http_attempt(&self) {
        self.http_attempts.fetch_add(1, Ordering::SeqCst);
    }

    /// Record a request given up after `abandon_after_secs` (not sent again).
    pub fn record_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::SeqCst);
    }

    /// Record one failed HTTP attempt that will be retried.
    pub fn record_retry(&self, cause: &TeacherError) {
        self.retries.fetch_add(1, Ordering::SeqCst);
        match cause.kind() {
            TeacherErrorKind::RateLimited => self.rate_limited.fetch_add(1, Ordering::SeqCst),
            TeacherErrorKind::Timeout => self.timeouts.fetch_add(1, Ordering::SeqCst),
            TeacherErrorKind::ServerError => self.server_errors.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
    }

    pub fn snapshot(&self) -> TeacherStats {
        TeacherStats {
            calls: self.calls.load(Ordering::SeqCst),
            succeeded: self.succeeded.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            http_attempts: self.http_attempts.load(Ordering::SeqCst),
            retries: self.retries.load(Ordering::SeqCst),
            rate_limited: self.rate_limited.load(Ordering::SeqCst),
            timeouts: self.timeouts.load(Ordering::SeqCst),
            server_errors: self.server_errors.load(Ordering::SeqCst),
            prompt_tokens: self.prompt_tokens.load(Ordering::SeqCst),
            completion_tokens: self.completion_tokens.load(Ordering::SeqCst),
            cost_usd: *self.cost_usd.lock().unwrap_or_else(|p| p.into_inner()),
            max_calls: self.max_calls,
            ..TeacherStats::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Rough token count without a tokenizer: ~4 characters per token for ASCII text (the usual
/// rule of thumb for GPT tokenizers), one token per non-ASCII character (CJK text is about one
/// token per character in cl100k). Used for throttling estimates and the prompt-length cutoff;
/// the real usage reported by the server is what gets billed.
pub fn estimate_tokens(text: &str) -> u64 {
    let mut ascii = 0u64;
    let mut other = 0u64;
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4) + other
}

/// Replace every occurrence of `secret` (and anything that looks like a bearer token or an
/// OpenAI-style key) by `[REDACTED]`.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut out = match secret {
        Some(s) if !s.is_empty() => text.replace(s, "[REDACTED]"),
        _ => text.to_string(),
    };
    for prefix in ["Bearer ", "bearer ", "sk-"] {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(prefix) {
            let (head, tail) = rest.split_at(pos);
            result.push_str(head);
            let glued = result.chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric());
            if prefix == "sk-" && glued {
                // part of a longer word ("task-…"): not a key
                result.push_str(prefix);
                rest = &tail[prefix.len()..];
                continue;
            }
            let token_len = tail[prefix.len()..]
                .char_indices()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .map(|(i, _)| i)
                .unwrap_or(tail.len() - prefix.len());
            if token_len >= 8 {
                result.push_str(if prefix == "sk-" { "" } else { prefix });
                result.push_str("[REDACTED]");
            } else {
                result.push_str(&tail[..prefix.len() + token_len]);
            }
            rest = &tail[prefix.len() + token_len..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_exact_under_contention() {
        let acc = Arc::new(Accounting::new(Pricing::FREE, Some(5)));
        let ok: usize = (0..8)
            .map(|_| {
                let a = acc.clone();
                std::thread::spawn(move || (0..3).filter(|_| a.reserve_call().is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(ok, 5);
        assert!(matches!(
            acc.reserve_call(),
            Err(TeacherError::BudgetExhausted { limit: 5, used: 5 })
        ));
    }

    #[test]
    fn pricing_of_the_paper_time() {
        assert!(
            price_table().iter().all(|e| e.prefix.is_some() != e.exact.is_some()),
            "each entry has a prefix or an exact name"
        );
        assert_eq!(Pricing::for_model("gpt-3.5-turbo-16k-0613").input_per_1k_usd, 0.003);
        assert_eq!(Pricing::for_model("GPT-4").output_per_1k_usd, 0.06);
        assert_eq!(
            Pricing::for_model("gpt-4o"),
            Pricing::FREE,
            "neither `gpt-4` exactly nor a dated gpt-4-0 snapshot"
        );
        let p = Pricing::for_model("gpt-3.5-turbo-0613");
        let cost = p.cost(&Usage { prompt_tokens: 2000, completion_tokens: 1000 });
        assert!((cost - (0.003 + 0.002)).abs() < 1e-12);
        assert_eq!(Pricing::for_model("HuggingFaceTB/SmolLM2-1.7B-Instruct"), Pricing::FREE);
    }

    #[test]
    fn redaction() {
        let s = "bad key sk-abcdefghijklmnop and Bearer xyz123456789 and MYSECRETVALUE";
        let r = redact(s, Some("MYSECRETVALUE"));
        assert!(
            !r.contains("abcdefghijklmnop")
                && !r.contains("xyz123456789")
                && !r.contains("MYSECRETVALUE"),
            "{r}"
        );
        assert_eq!(redact("sk-1 short", None), "sk-1 short");
        assert_eq!(redact("task-0123456789 stays", None), "task-0123456789 stays");
    }
}

//! The routes: the page, the prediction API in its own and OpenAI's shapes, health, metrics and
//! the review API. Every error is JSON in OpenAI's shape (`{"error": {"message", "type"}}`) with a
//! message that says what was wrong and what to send instead.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::batcher::{Job, JobError};
use super::AppState;
use crate::review::{ReviewState, ReviewSubmission, SaveSummary};
use crate::trainer::model_input;

const PAGE: &str = include_str!("page.html");
const REVIEW_PAGE: &str = include_str!("review.html");

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after_s: None }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let hint = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => " (the body is over the server's --max-body-bytes)",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "",
            _ => " (send a JSON object; see GET / for the fields)",
        };
        ApiError::new(r.status(), format!("{}{hint}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        let body = serde_json::json!({ "error": { "message": self.message, "type": kind, "code": self.status.as_u16() } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// All routes, with the body limit, the bearer token on the API, and metrics on everything.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/predict", post(predict))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/api/review", get(review_state).post(review_save))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/review", get(|| async { Html(REVIEW_PAGE) }))
        .route("/api/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route: see GET / for the page and POST /v1/predict, /v1/chat/completions, /v1/completions for the API")
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), refuse_oversized_bodies))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let response = next.run(req).await;
    state.metrics.record(&endpoint, response.status().as_u16());
    if endpoint.starts_with("/v1/") && endpoint != "/v1/models" {
        state.metrics.latency.observe(start.elapsed().as_secs_f64());
    }
    response
}

/// Bodies up to this size are read and dropped before a 413, so that a client still sending reads
/// the refusal instead of a reset connection (what nginx's lingering close does); beyond it the
/// connection is closed at once.
const DRAIN_LIMIT: u64 = 64 << 20;

/// A declared Content-Length over the limit gets 413 with a message before any handler runs.
async fn refuse_oversized_bodies(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.config.max_body_bytes as u64;
    match declared {
        Some(n) if n > limit => {
            if n <= DRAIN_LIMIT {
                use futures_util::StreamExt as _;
                let mut body = req.into_body().into_data_stream();
                while let Some(Ok(_)) = body.next().await {}
            }
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is {n} bytes; this server takes at most {limit} (--max-body-bytes)"
                ),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.config.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server needs `Authorization: Bearer <token>` (the token the server was started with)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Compare without returning early, so timing says nothing about where a guess went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
struct Info {
    name: String,
    instruction: String,
    demonstrations: Vec<crate::data::examples::Example>,
    student: String,
    metrics: Vec<crate::pipeline::evaluate::MetricResult>,
    /// The student beside trivial answers per test set, each with its paired verdict.
    baselines: Vec<BaselinesInfo>,
    /// Why there are none, where there are none.
    baselines_note: Option<String>,
    auth_required: bool,
    review: bool,
    max_new_tokens: usize,
}

/// One test set's comparison as the page shows it.
#[derive(Serialize)]
struct BaselinesInfo {
    test_set: String,
    rows: Vec<crate::evaluator::baselines::SystemScore>,
    /// `better than the baseline: …` / `not better than the baseline: …`, with the numbers.
    verdict: Option<String>,
}

async fn info(State(s): State<Arc<AppState>>) -> Json<Info> {
    Json(Info {
        name: s.manifest.name.clone(),
        instruction: s.manifest.instruction.clone(),
        demonstrations: s.manifest.demonstrations.clone(),
        student: s.manifest.student.clone(),
        metrics: s.manifest.metrics.clone(),
        baselines: s
            .baselines
            .iter()
            .map(|c| BaselinesInfo {
                test_set: c.test_set.clone(),
                rows: c.rows.clone(),
                verdict: c.test.as_ref().map(|t| t.verdict()),
            })
            .collect(),
        baselines_note: s.baselines_note.clone(),
        auth_required: s.config.token.is_some(),
        review: s.review.is_some(),
        max_new_tokens: s.manifest.executor.max_new_tokens,
    })
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "model": s.manifest.name,
        "queue_depth": s.batcher.depth(),
        "uptime_s": s.started.elapsed().as_secs_f64(),
    }))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

/// Outputs for inputs, with token counts.
struct Predicted {
    outputs: Vec<String>,
    prompt_tokens: usize,
    completion_tokens: Vec<usize>,
    max_new_tokens: usize,
}

/// Check the inputs against the limits, queue them and wait for the outputs.
async fn run_model(
    s: &Arc<AppState>,
    inputs: Vec<String>,
    max_new_tokens: Option<usize>,
) -> Result<Predicted, ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::bad(
            "no inputs: send `input` (a string) or `inputs` (a list of strings)",
        ));
    }
    if inputs.len() > s.config.max_inputs {
        return Err(ApiError::bad(format!(
            "{} inputs in one request; this server takes at most {} (--max-inputs): split the request",
            inputs.len(),
            s.config.max_inputs
        )));
    }
    if let Some(i) = inputs.iter().position(|x| x.trim().is_empty()) {
        return Err(ApiError::bad(format!(
            "input {i} is empty: send the text the model should work on"
        )));
    }
    let max_new_tokens = max_new_tokens.unwrap_or(s.manifest.executor.max_new_tokens);
    if max_new_tokens == 0 || max_new_tokens > s.config.max_new_tokens_limit {
        return Err(ApiError::bad(format!(
            "max new tokens {max_new_tokens}: ask for 1 to {} (--max-new-tokens-limit)",
            s.config.max_new_tokens_limit
        )));
    }
    // Count tokens as the model will read them (instruction and template included).
    let counting = s.clone();
    let sources: Vec<String> = inputs
        .iter()
        .map(|i| model_input(s.manifest.task_id, &s.manifest.instruction, i))
        .collect();
    let counts = tokio::task::spawn_blocking(move || {
        sources
            .iter()
            .map(|x| counting.tokenizer.encode(x.as_str(), true).map(|e| e.len()))
            .collect::<Result<Vec<usize>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("counting tokens: {e}")))?
    .map_err(|e| ApiError::bad(format!("the input could not be tokenised: {e}")))?;
    if let Some((i, n)) = counts.iter().enumerate().find(|(_, &n)| n > s.max_input_tokens) {
        return Err(ApiError::bad(format!(
            "input {i} is {n} tokens with the instruction; this model reads at most {} (--max-input-tokens): shorten it",
            s.max_input_tokens
        )));
    }
    let n_inputs = inputs.len();
    let (job, reply) = Job::new(inputs, max_new_tokens, s.config.request_timeout);
    if s.batcher.submit(job).is_err() {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the queue is full ({} requests waiting): retry shortly",
                s.config.batch.queue_capacity
            ),
            retry_after_s: Some(1),
        });
    }
    let outputs = match tokio::time::timeout(s.config.request_timeout, reply).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no answer within {:.0} s (--request-timeout); the server is overloaded or the input too long",
                    s.config.request_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))
        }
        Ok(Ok(Err(e @ JobError::Expired { .. }))) => {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                retry_after_s: Some(1),
            })
        }
        Ok(Ok(Err(e))) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Ok(Ok(Ok(outputs))) => outputs,
    };
    debug_assert_eq!(outputs.len(), n_inputs);
    s.metrics.generated_outputs.inc_by(outputs.len() as u64);
    let completion_tokens = outputs
        .iter()
        .map(|o| s.tokenizer.encode(o.as_str(), false).map(|e| e.len()).unwrap_or(0))
        .collect();
    Ok(Predicted { outputs, prompt_tokens: counts.iter().sum(), completion_tokens, max_new_tokens })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    inputs: Option<Vec<String>>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
}

#[derive(Serialize)]
struct PredictResponse {
    model: String,
    /// The first output (the only one for a single `input`).
    output: String,
    outputs: Vec<String>,
    latency_ms: f64,
}

async fn predict(
    State(s): State<Arc<AppState>>,
    body: Result<Json<PredictRequest>, JsonRejection>,
) -> ApiResult<PredictResponse> {
    let start = Instant::now();
    let Json(req) = body?;
    let inputs = match (req.input, req.inputs) {
        (Some(one), None) => vec![one],
        (None, Some(many)) => many,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("send either `input` or `inputs`, not both"))
        }
        (None, None) => {
            return Err(ApiError::bad(
                "missing field `input` (a string) or `inputs` (a list of strings)",
            ))
        }
    };
    let p = run_model(&s, inputs, req.max_new_tokens).await?;
    Ok(Json(PredictResponse {
        model: s.manifest.name.clone(),
        output: p.outputs[0].clone(),
        outputs: p.outputs,
        latency_ms: start.elapsed().as_secs_f64() * 1e3,
    }))
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<ChatMessageIn>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<usize>,
}

#[derive(Deserialize)]
struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

/// A message's text: a string, or the text parts of a list of content parts.
fn message_text(content: &serde_json::Value) -> Option<String> {
    match content {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(parts) => Some(
            parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

fn check_openai_options(stream: Option<bool>, n: Option<usize>) -> Result<(), ApiError> {
    if stream == Some(true) {
        return Err(ApiError::bad("`stream: true` is not supported by this server; send `stream: false` (outputs are short)"));
    }
    if n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad(
            "`n` must be 1: decoding is greedy, so every choice would be the same",
        ));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn finish_reason(tokens: usize, max_new_tokens: usize) -> &'static str {
    if tokens >= max_new_tokens {
        "length"
    } else {
        "stop"
    }
}

/// The model's instruction is fixed: the last user message is the input. Any `model` name is
/// accepted (an application written for another model works unchanged) and the answer names this
/// one.
async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let Json(req) = body?;
    check_openai_options(req.stream, req.n)?;
    let last_user = req.messages.iter().rev().find(|m| m.role == "user").ok_or_else(|| {
        ApiError::bad("no message with role `user`: its content is the model's input")
    })?;
    let input = message_text(&last_user.content).ok_or_else(|| {
        ApiError::bad("the user message's `content` must be a string or a list of text parts")
    })?;
    let p = run_model(&s, vec![input], req.max_completion_tokens.or(req.max_tokens)).await?;
    let completion = p.completion_tokens[0];
    Ok(Json(serde_json::json!({
        "id": format!("chatcmpl-{}", crate::util::rng::fnv1a64(format!("{:?}{}", Instant::now(), p.outputs[0]).as_bytes())),
        "object": "chat.completion",
        "created": unix_now(),
        "model": s.manifest.name,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": p.outputs[0] },
            "finish_reason": finish_reason(completion, p.max_new_tokens),
        }],
        "usage": { "prompt_tokens": p.prompt_tokens, "completion_tokens": completion, "total_tokens": p.prompt_tokens + completion },
    })))
}

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    prompt: serde_json::Value,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<usize>,
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let Json(req) = body?;
    check_openai_options(req.stream, req.n)?;
    let inputs: Vec<String> = match &req.prompt {
        serde_json::Value::String(p) => vec![p.clone()],
        serde_json::Value::Array(list) if list.iter().all(|p| p.is_string()) => {
            list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect()
        }
        serde_json::Value::Null => {
            return Err(ApiError::bad("missing field `prompt` (a string or a list of strings)"))
        }
        _ => {
            return Err(ApiError::bad(
                "`prompt` must be a string or a list of strings (token ids are not accepted)",
            ))
        }
    };
    let p = run_model(&s, inputs, req.max_tokens).await?;
    let completion: usize = p.completion_tokens.iter().sum();
    let choices: Vec<serde_json::Value> = p
        .outputs
        .iter()
        .zip(&p.completion_tokens)
        .enumerate()
        .map(|(i, (text, &tokens))| {
            serde_json::json!({ "index": i, "text": text, "logprobs": null, "finish_reason": finish_reason(tokens, p.max_new_tokens) })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "id": format!("cmpl-{}", crate::util::rng::fnv1a64(format!("{:?}{}", Instant::now(), p.outputs[0]).as_bytes())),
        "object": "text_completion",
        "created": unix_now(),
        "model": s.manifest.name,
        "choices": choices,
        "usage": { "prompt_tokens": p.prompt_tokens, "completion_tokens": completion, "total_tokens": p.prompt_tokens + completion },
    })))
}

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{ "id": s.manifest.name, "object": "model", "created": 0, "owned_by": "p2m" }],
    }))
}

fn review_of(s: &AppState) -> Result<&std::sync::Mutex<crate::review::Review>, ApiError> {
    s.review.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no review here: start the server on a run folder (`p2m serve runs/<name>`) whose generation stage is done",
        )
    })
}

async fn review_state(State(s): State<Arc<AppState>>) -> ApiResult<ReviewState> {
    let state = tokio::task::spawn_blocking(move || {
        let review = review_of(&s)?.lock().expect("review lock");
        review
            .state()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(state))
}

async fn review_save(
    State(s): State<Arc<AppState>>,
    body: Result<Json<ReviewSubmission>, JsonRejection>,
) -> ApiResult<SaveSummary> {
    let Json(submission) = body?;
    let summary = tokio::task::spawn_blocking(move || {
        let review = review_of(&s)?.lock().expect("review lock");
        // What the submission asks is checked by `save`; its refusals are the client's to fix.
        review.save(&submission).map_err(|e| ApiError::bad(format!("{e:#}")))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(summary))
}

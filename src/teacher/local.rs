//! The in-process teacher: a llama-family chat model on tch (offline default:
//! SmolLM2-135M-Instruct from its PyPI wheel). It answers the same [`Teacher`] calls as the HTTP
//! backends, so the generator, parser, cache and accounting treat it alike.
//!
//! The `n` choices of a request are generated together as one batch of `n` copies of the
//! conversation, sampled from one generator seeded with the request's seed, so a request is
//! reproducible and a cache replay is exact.
//!
//! Structured requests (`json_fields`) that arrive together — the generator sends a round's
//! requests concurrently — are decoded as one batch of all their choices
//! ([`ChatModel::chat_json_requests`]): on a CPU a decoding step of 25 rows costs little more
//! than one of 5, because each step reads all the weights once. Each request keeps its own seeded
//! generator; batching changes only floating-point summation order, and the record/replay cache
//! keeps whatever was answered.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::{
    Accounting, ChatRequest, ChatResponse, Choice, Pricing, Teacher, TeacherError, TeacherStats,
    Usage,
};
use crate::models::chat::{ChatModel, Completion, DecodingEngine, JsonRequest};
use crate::models::precision::Precision;
use crate::models::sampling::SamplingConfig;

/// Completion tokens per choice when a request sets no `max_tokens`, and the most a request may
/// ask for: the generator sizes `max_tokens` for a 4k-context API model (thousands of tokens), which
/// a CPU-bound 135M model would spend rambling; one generated example fits well within this.
const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// How long the first structured request of a batch waits for the others of its round.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(30);

/// A structured request waiting to be batched, with where its answer goes.
struct PendingJson {
    request: JsonRequest,
    fields: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Completion>, String>>,
}

pub struct LocalTeacher {
    /// libtorch tensors are `Send` but not `Sync`: one generation at a time, on a blocking thread.
    model: Arc<Mutex<ChatModel>>,
    /// Structured requests not yet taken by a generation batch.
    queue: Arc<Mutex<Vec<PendingJson>>>,
    name: String,
    accounting: Accounting,
}

impl LocalTeacher {
    /// Load a GGUF chat model with its weights in `precision`, decoding on `engine`; `name` goes
    /// into cache keys and reports (with `+bf16` appended for bf16 weights and `+llama-cpp` for
    /// llama.cpp, whose answers differ from the f32 libtorch engine's).
    pub fn load(
        gguf: &Path,
        name: &str,
        max_calls: Option<u64>,
        precision: Precision,
        engine: DecodingEngine,
    ) -> anyhow::Result<Self> {
        engine.check_precision(
            precision,
            ("local_precision (--local-precision)", "local_engine (--local-engine)"),
        )?;
        let mut model = ChatModel::load(gguf, crate::models::default_device())?;
        model.set_precision(precision);
        model.set_engine(engine)?;
        let mut name = name.to_string();
        if !precision.is_f32() {
            name = format!("{name}+{precision}");
        }
        if !engine.is_libtorch() {
            name = format!("{name}+{engine}");
        }
        Ok(LocalTeacher {
            model: Arc::new(Mutex::new(model)),
            queue: Default::default(),
            name,
            accounting: Accounting::new(Pricing::FREE, max_calls),
        })
    }

    /// The registry's offline default teacher (SmolLM2-135M-Instruct, GGUF Q4_1).
    pub fn offline_default(
        max_calls: Option<u64>,
        precision: Precision,
        engine: DecodingEngine,
    ) -> anyhow::Result<Self> {
        let registry = crate::models::registry::ModelRegistry::from_env()?;
        let path = registry.resolve_main_file(DEFAULT_TEACHER)?;
        Self::load(&path, DEFAULT_TEACHER, max_calls, precision, engine)
    }
}

/// Registry id of the offline teacher.
pub const DEFAULT_TEACHER: &str = "SmolLM2-135M-Instruct-Q4_1";

impl LocalTeacher {
    /// Queue a structured request and wait for the batch that takes it. Every call starts a
    /// blocking task that waits [`BATCH_WINDOW`], takes the model, then takes the whole queue:
    /// the first task of a round serves the round; the later ones find the queue empty.
    async fn batched_json(
        &self,
        request: JsonRequest,
        fields: Vec<String>,
    ) -> Result<Vec<Completion>, TeacherError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(PendingJson {
            request,
            fields,
            reply,
        });
        let (model, queue) = (self.model.clone(), self.queue.clone());
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(BATCH_WINDOW);
            let model = model.lock();
            let batch = std::mem::take(&mut *queue.lock().unwrap_or_else(|p| p.into_inner()));
            let Ok(model) = model else {
                for p in batch {
                    let _ = p.reply.send(Err("the local model panicked earlier".into()));
                }
                return;
            };
            serve_json_batch(&model, batch);
        });
        answer
            .await
            .map_err(|_| {
                TeacherError::Backend("the generation thread ended without an answer".into())
            })?
            .map_err(TeacherError::Backend)
    }
}

/// Generate every queued request, those with the same fields together, and send each its answer.
fn serve_json_batch(model: &ChatModel, mut batch: Vec<PendingJson>) {
    while !batch.is_empty() {
        let fields = batch[0].fields.clone();
        let (group, rest): (Vec<PendingJson>, Vec<PendingJson>) =
            batch.into_iter().partition(|p| p.fields == fields);
        batch = rest;
        let requests: Vec<JsonRequest> = group.iter().map(|p| p.request.clone()).collect();
        match model.chat_json_requests(&requests, &fields) {
            Ok(answers) => {
                for (p, a) in group.into_iter().zip(answers) {
                    let _ = p.reply.send(Ok(a));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for p in group {
                    let _ = p.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

impl Teacher for LocalTeacher {
    fn backend(&self) -> &str {
        "local-tch"
    }

    fn model(&self) -> &str {
        &self.name
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        Box::pin(async move {
            self.accounting.reserve_call()?;
            let n = request.params.n.max(1) as usize;
            let cfg = SamplingConfig {
                max_new_tokens: request
                    .params
                    .max_tokens
                    .map(|t| t as usize)
                    .unwrap_or(DEFAULT_MAX_NEW_TOKENS)
                    .min(DEFAULT_MAX_NEW_TOKENS),
                temperature: request.params.temperature.max(0.0),
                top_p: request.params.top_p,
                repetition_penalty: 1.0,
                seed: request.params.seed.unwrap_or(0),
            };
            let result = match request.params.json_fields.clone() {
                Some(fields) => {
                    self.batched_json(
                        JsonRequest { messages: request.messages.clone(), n, sampling: cfg },
                        fields,
                    )
                    .await
                }
                None => {
                    let conversations = vec![request.messages.clone(); n];
                    let model = self.model.clone();
                    tokio::task::spawn_blocking(move || {
                        let model = model.lock().map_err(|_| {
                            TeacherError::Backend("the local model panicked earlier".into())
                        })?;
                        model
                            .chat_batch_with_usage(&conversations, &cfg)
                            .map_err(|e| TeacherError::Backend(format!("{e:#}")))
                    })
                    .await
                    .map_err(|e| TeacherError::Backend(format!("generation thread failed: {e}")))
                    .and_then(|r| r)
                }
            };
            let completions = match result {
                Ok(c) => c,
                Err(e) => {
                    self.accounting.record_failure();
                    return Err(e);
                }
            };
            let mut usage = Usage::default();
            let choices = completions
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    // The prompt is billed once, as an API bills one request with n choices.
                    if i == 0 {
                        usage.prompt_tokens = c.prompt_tokens as u64;
                    }
                    usage.completion_tokens += c.completion_tokens as u64;
                    Choice {
                        index: i as u32,
                        content: c.text,
                        finish_reason: Some(
                            if c.stopped_on_eos { "stop" } else { "length" }.into(),
                        ),
                    }
                })
                .collect();
            let cost_usd = self.accounting.record_success(&usage);
            Ok(ChatResponse { choices, usage, cost_usd, cached: false })
        })
    }

    fn stats(&self) -> TeacherStats {
        self.accounting.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A precision the llama.cpp engine cannot honour is refused before anything loads, naming
    /// both settings and the fix (the same check `p2m chat --engine` makes).
    #[test]
    fn a_bf16_teacher_on_llama_cpp_is_refused_with_the_settings_named() {
        let err = LocalTeacher::load(
            Path::new("/nonexistent/model.gguf"),
            DEFAULT_TEACHER,
            None,
            Precision::Bf16,
            DecodingEngine::LlamaCpp,
        )
        .err()
        .expect("bf16 on llama.cpp must be refused")
        .to_string();
        assert!(
            err.contains("local_precision (--local-precision) bf16")
                && err.contains("set local_engine (--local-engine) libtorch"),
            "{err}"
        );
        assert!(!err.contains("/nonexistent"), "checked before loading: {err}");
    }
}

//! A fleet: several OpenAI-compatible endpoints (of one kind or several) answering as one teacher.
//!
//! - **Sharding by request id.** Each request goes to the endpoint ranked first for its id (the
//!   digest the cache keys it by: messages, sampling parameters and seed) by weighted rendezvous
//!   hashing, weighted by the endpoints' slots. The same request goes to the same endpoint in
//!   every run, and taking an endpoint out moves only its own share.
//! - **Per endpoint**: its own rate limit, slot cap, `response_format` step and counters (each is
//!   an [`OpenAiTeacher`]); one [`Accounting`] for all, so the API-call budget and the cost are
//!   the fleet's.
//! - **Failing endpoints are taken out.** An endpoint whose attempts are lost
//!   ([`TeacherError::is_lost`]: connection errors, 5xx, truncated bodies) `remove_after_lost`
//!   times in a row takes itself out of service; requests waiting on it give up at once, and a
//!   request that was lost there (or ran out of retries on 429s) is sent to the next endpoint in
//!   its ranking. Other errors (a 400, a malformed body, the budget) are the request's, not the
//!   endpoint's, and are returned as they are.
//! - **One cache.** Put the fleet inside one [`super::CachedTeacher`]: every answer is recorded
//!   once whichever endpoint gave it, so nothing is paid twice and a rerun replays. The cache key
//!   uses the fleet's [`Teacher::backend`] name, not an endpoint's, so it does not depend on which
//!   endpoint answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::cache::request_digest;
use super::openai::OpenAiTeacher;
use super::{
    Accounting, ChatRequest, ChatResponse, Teacher, TeacherError, TeacherErrorKind, TeacherStats,
};

/// Lost attempts in a row after which a fleet endpoint is taken out (a default).
pub const DEFAULT_REMOVE_AFTER_LOST: u32 = 3;

/// Several endpoints as one teacher (see the module docs).
pub struct FleetTeacher {
    endpoints: Vec<OpenAiTeacher>,
    backend: String,
    model: String,
    accounting: Arc<Accounting>,
    rerouted: AtomicU64,
}

impl std::fmt::Debug for FleetTeacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTeacher")
            .field("backend", &self.backend)
            .field("model", &self.model)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl FleetTeacher {
    /// A fleet of `endpoints`, which must share one [`Accounting`]
    /// ([`OpenAiTeacher::with_accounting`]). `backend` and `model` name the fleet in the cache
    /// key and the logs. Each endpoint is taken out after `remove_after_lost` lost attempts in a
    /// row.
    pub fn new(
        mut endpoints: Vec<OpenAiTeacher>,
        backend: impl Into<String>,
        model: impl Into<String>,
        remove_after_lost: u32,
    ) -> Result<Self, TeacherError> {
        let Some(first) = endpoints.first() else {
            return Err(TeacherError::Config("a fleet needs at least one endpoint".into()));
        };
        let accounting = first.accounting().clone();
        if endpoints.iter().any(|e| !Arc::ptr_eq(e.accounting(), &accounting)) {
            return Err(TeacherError::Config(
                "the endpoints of a fleet must share one Accounting (one budget)".into(),
            ));
        }
        let mut urls: Vec<&str> = endpoints.iter().map(|e| e.config().base_url.as_str()).collect();
        urls.sort_unstable();
        if urls.windows(2).any(|w| w[0] == w[1]) {
            return Err(TeacherError::Config(format!(
                "an endpoint is named twice in the fleet: {}",
                urls.join(", ")
            )));
        }
        for e in &mut endpoints {
            e.set_remove_after_lost(Some(remove_after_lost.max(1)));
        }
        Ok(FleetTeacher {
            endpoints,
            backend: backend.into(),
            model: model.into(),
            accounting,
            rerouted: AtomicU64::new(0),
        })
    }

    pub fn endpoints(&self) -> &[OpenAiTeacher] {
        &self.endpoints
    }

    /// Requests sent to another endpoint after theirs failed.
    pub fn rerouted(&self) -> u64 {
        self.rerouted.load(Ordering::SeqCst)
    }

    /// The endpoints in the order `request` tries them: weighted rendezvous hashing of its id.
    pub fn ranking(&self, request: &ChatRequest) -> Vec<usize> {
        let id = request_digest(&self.backend, &self.model, request);
        let mut scored: Vec<(f64, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let h = Sha256::digest(format!("{id}\0{}", e.config().base_url).as_bytes());
                let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
                // Uniform in (0, 1]; -ln(u) / weight is exponential with rate = weight, so an
                // endpoint wins in proportion to its slots.
                let u = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                let weight = e.config().max_concurrency.max(1) as f64;
                (-u.ln() / weight, i)
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    async fn chat_impl(&self, request: &ChatRequest) -> Result<ChatResponse, TeacherError> {
        let mut last: Option<TeacherError> = None;
        for i in self.ranking(request) {
            let e = &self.endpoints[i];
            if e.is_out_of_service() {
                continue;
            }
            if last.is_some() {
                self.rerouted.fetch_add(1, Ordering::SeqCst);
            }
            match e.chat(request).await {
                Ok(r) => return Ok(r),
                Err(err) if reroutable(&err) || e.is_out_of_service() => {
                    tracing::warn!(endpoint = %e.config().base_url, error = %err, "fleet: the request failed at this endpoint; trying the next");
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(match last {
            Some(e) => e,
            None => TeacherError::Connection(
                "every endpoint of the fleet is out of service after repeated lost requests".into(),
            ),
        })
    }
}

/// Worth another endpoint: lost there, or refused there (429) until its retries ran out.
fn reroutable(e: &TeacherError) -> bool {
    let rate_limited = |e: &TeacherError| e.kind() == TeacherErrorKind::RateLimited;
    e.is_lost()
        || rate_limited(e)
        || matches!(e, TeacherError::RetriesExhausted { last, .. } if rate_limited(last))
}

impl Teacher for FleetTeacher {
    fn backend(&self) -> &str {
        &self.backend
    }
    fn model(&self) -> &str {
        &self.model
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        Box::pin(self.chat_impl(request))
    }
    fn stats(&self) -> TeacherStats {
        let endpoints: Vec<_> = self.endpoints.iter().map(OpenAiTeacher::endpoint_stats).collect();
        TeacherStats {
            concurrency_limit: self.endpoints.iter().map(|e| e.concurrency().limit() as u64).sum(),
            slow_requests: endpoints.iter().map(|e| e.slow).sum(),
            format_fallbacks: endpoints.iter().map(|e| e.format_refusals).sum(),
            queue_secs: endpoints.iter().map(|e| e.queue_secs).sum(),
            decode_secs: endpoints.iter().map(|e| e.decode_secs).sum(),
            slots: endpoints.iter().map(|e| e.slots).sum(),
            endpoints,
            ..self.accounting.snapshot()
        }
    }
}

//! Record/replay of teacher responses in SQLite.
//!
//! Each choice is stored under a content-addressed key: the SHA-256 of a canonical JSON (sorted
//! keys, no whitespace) of `{backend, model, messages, sampling params (without n), seed, choice
//! index}` — never a key or secret. A request for `n` choices is a hit when all `n` keys are
//! present; otherwise only the missing choices are requested from the wrapped teacher.
//!
//! Durability: WAL journal with `synchronous=NORMAL`; every response is committed before it is
//! returned to the caller, so a process killed with SIGKILL loses nothing it has handed out and a
//! rerun repeats no call whose answer was used. (WAL + NORMAL survives process crashes; only an OS
//! crash or power loss can roll back the last transactions.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{ChatRequest, ChatResponse, Choice, Teacher, TeacherError, TeacherStats, Usage};

/// Version of the key scheme; bump when the canonical form changes.
const KEY_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Replay hits, record misses (the default).
    #[default]
    ReadWrite,
    /// Replay only: a miss is an error ([`TeacherError::ReplayMiss`]); nothing is called.
    ReplayOnly,
    /// Ignore existing entries, call the teacher and overwrite them.
    Refresh,
}

/// A teacher with a record/replay cache in front of it.
pub struct CachedTeacher<T: Teacher> {
    inner: T,
    conn: Mutex<Connection>,
    path: PathBuf,
    mode: CacheMode,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Single flight per request digest: concurrent identical requests call once.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<T: Teacher> std::fmt::Debug for CachedTeacher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTeacher")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("backend", &self.inner.backend())
            .field("model", &self.inner.model())
            .finish_non_exhaustive()
    }
}

struct Row {
    content: String,
    finish_reason: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> TeacherError + '_ {
    move |e| TeacherError::Cache(format!("{}: {e}", path.display()))
}

impl<T: Teacher> CachedTeacher<T> {
    /// Open (or create) the cache database at `path` around `inner`.
    pub fn open(inner: T, path: impl AsRef<Path>, mode: CacheMode) -> Result<Self, TeacherError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                TeacherError::Cache(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(&path).map_err(db_err(&path))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db_err(&path))?;
        let mode_name: String =
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(db_err(&path))?;
        if !mode_name.eq_ignore_ascii_case("wal") {
            return Err(TeacherError::Cache(format!(
                "{}: cannot switch to WAL (journal_mode={mode_name})",
                path.display()
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS requests (
                 digest TEXT PRIMARY KEY,
                 backend TEXT NOT NULL,
                 model TEXT NOT NULL,
                 request_json TEXT NOT NULL,
                 created_unix INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS choices (
                 key TEXT PRIMARY KEY,
                 request_digest TEXT NOT NULL,
                 choice_index INTEGER NOT NULL,
                 content TEXT NOT NULL,
                 finish_reason TEXT,
                 prompt_tokens INTEGER NOT NULL,
                 completion_tokens INTEGER NOT NULL,
                 cost_usd REAL NOT NULL,
                 created_unix INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS choices_by_request ON choices(request_digest);",
        )
        .map_err(db_err(&path))?;
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('key_version', ?1)",
            params![KEY_VERSION.to_string()],
        )
        .map_err(db_err(&path))?;
        let v: String = conn
            .query_row("SELECT value FROM meta WHERE key='key_version'", [], |r| r.get(0))
            .map_err(db_err(&path))?;
        if v != KEY_VERSION.to_string() {
            return Err(TeacherError::Cache(format!(
                "{}: key scheme v{v}, this build uses v{KEY_VERSION}",
                path.display()
            )));
        }
        Ok(CachedTeacher {
            inner,
            conn: Mutex::new(conn),
            path,
            mode,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn mode(&self) -> CacheMode {
        self.mode
    }
    /// Requests answered entirely from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
    /// Requests that needed (or, replay-only, would have needed) the wrapped teacher.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::SeqCst)
    }

    /// Number of stored choices.
    pub fn len(&self) -> Result<u64, TeacherError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT COUNT(*) FROM choices", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err(&self.path))
    }

    pub fn is_empty(&self) -> Result<bool, TeacherError> {
        Ok(self.len()? == 0)
    }

    fn lookup(&self, keys: &[String]) -> Result<Vec<Option<Row>>, TeacherError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached("SELECT content, finish_reason, prompt_tokens, completion_tokens FROM choices WHERE key = ?1")
            .map_err(db_err(&self.path))?;
        keys.iter()
            .map(|k| {
                stmt.query_row(params![k], |r| {
                    Ok(Row {
                        content: r.get(0)?,
                        finish_reason: r.get(1)?,
                        prompt_tokens: r.get::<_, i64>(2)? as u64,
                        completion_tokens: r.get::<_, i64>(3)? as u64,
                    })
                })
                .optional()
                .map_err(db_err(&self.path))
            })
            .collect()
    }

    fn store(
        &self,
        req: &ChatRequest,
        digest: &str,
        new: &[(u32, String, &Choice)],
        usage: Usage,
        cost: f64,
    ) -> Result<(), TeacherError> {
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let k = new.len().max(1) as u64;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(db_err(&self.path))?;
        tx.execute(
            "INSERT OR IGNORE INTO requests(digest, backend, model, request_json, created_unix) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                digest,
                self.inner.backend(),
                self.inner.model(),
                canonical_request_json(self.inner.backend(), self.inner.model(), req, None),
                now
            ],
        )
        .map_err(db_err(&self.path))?;
        for (j, (index, key, choice)) in new.iter().enumerate() {
            // The request's usage and cost are apportioned over its choices (remainder to the
            // first), so sums over the table stay exact.
            let j = j as u64;
            let share = |total: u64| total / k + if j == 0 { total % k } else { 0 };
            tx.execute(
                "INSERT OR REPLACE INTO choices(key, request_digest, choice_index, content, finish_reason, prompt_tokens, completion_tokens, cost_usd, created_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key,
                    digest,
                    *index as i64,
                    choice.content,
                    choice.finish_reason,
                    share(usage.prompt_tokens) as i64,
                    share(usage.completion_tokens) as i64,
                    cost / k as f64,
                    now
                ],
            )
            .map_err(db_err(&self.path))?;
        }
        tx.commit().map_err(db_err(&self.path))
    }

    fn flight_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(digest.to_string()).or_default().clone()
    }

    fn release_flight(&self, digest: &str) {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(digest).is_some_and(|a| Arc::strong_count(a) == 1) {
            m.remove(digest);
        }
    }

    fn hit_response(rows: Vec<Row>) -> ChatResponse {
        let mut usage = Usage::default();
        let choices = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                usage += Usage {
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                };
                Choice { index: i as u32, content: r.content, finish_reason: r.finish_reason }
            })
            .collect();
        ChatResponse { choices, usage, cost_usd: 0.0, cached: true }
    }

    async fn chat_impl(&self, req: &ChatRequest) -> Result<ChatResponse, TeacherError> {
        let backend = self.inner.backend().to_string();
        let model = self.inner.model().to_string();
        let n = req.params.n.max(1);
        let digest = request_digest(&backend, &model, req);
        let keys: Vec<String> = (0..n).map(|i| choice_key(&backend, &model, req, i)).collect();

        if self.mode != CacheMode::Refresh {
            let rows = self.lookup(&keys)?;
            if rows.iter().all(Option::is_some) {
                self.hits.fetch_add(1, Ordering::SeqCst);
                return Ok(Self::hit_response(rows.into_iter().flatten().collect()));
            }
            if self.mode == CacheMode::ReplayOnly {
                self.misses.fetch_add(1, Ordering::SeqCst);
                let first = rows.iter().position(Option::is_none).unwrap_or(0);
                return Err(TeacherError::ReplayMiss {
                    digest: keys[first].clone(),
                    backend,
                    model,
                    choice: first as u32,
                    cache: self.path.display().to_string(),
                    hint: "the prompt, sampling parameters, seed or model differ from the recorded run, or this is not the cache \
                           the run was recorded into; run without replay-only to record the missing responses",
                });
            }
        }

        let flight = self.flight_lock(&digest);
        let result = async {
            let _guard = flight.lock().await;
            // Another task may have recorded it while we waited.
            let rows = if self.mode == CacheMode::Refresh {
                keys.iter().map(|_| None).collect()
            } else {
                self.lookup(&keys)?
            };
            if rows.iter().all(Option::is_some) {
                self.hits.fetch_add(1, Ordering::SeqCst);
                return Ok(Self::hit_response(rows.into_iter().flatten().collect()));
            }
            self.misses.fetch_add(1, Ordering::SeqCst);
            let missing: Vec<u32> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_none())
                .map(|(i, _)| i as u32)
                .collect();
            let mut sub = req.clone();
            sub.params.n = missing.len() as u32;
            if missing.len() < n as usize {
                // Only some choices are missing: a different seed, so a seeded server does not
                // repeat the choices we already have.
                sub.params.seed = sub.params.seed.map(|s| s.wrapping_add(missing[0] as u64));
            }
            let resp = self.inner.chat(&sub).await?;
            let new: Vec<(u32, String, &Choice)> = missing
                .iter()
                .zip(resp.choices.iter())
                .map(|(&i, c)| (i, keys[i as usize].clone(), c))
                .collect();
            // Committed before anything is returned.
            self.store(req, &digest, &new, resp.usage, resp.cost_usd)?;
            let mut by_index: Vec<Option<Choice>> = rows
                .into_iter()
                .map(|r| {
                    r.map(|r| Choice {
                        index: 0,
                        content: r.content,
                        finish_reason: r.finish_reason,
                    })
                })
                .collect();
            for (i, _, c) in &new {
                by_index[*i as usize] = Some((*c).clone());
            }
            let choices = by_index
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| Choice { index: i as u32, ..c })
                .collect();
            Ok(ChatResponse { choices, usage: resp.usage, cost_usd: resp.cost_usd, cached: false })
        }
        .await;
        drop(flight);
        self.release_flight(&digest);
        result
    }
}

impl<T: Teacher> Teacher for CachedTeacher<T> {
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        Box::pin(self.chat_impl(request))
    }
    fn stats(&self) -> TeacherStats {
        let mut s = self.inner.stats();
        s.cache_hits += self.hits();
        s.cache_misses += self.misses();
        s
    }
}

/// The backend names recorded for `model` in the cache at `path` (none when there is no
/// cache): what a replay-only run keys its requests by when it cannot ask the server.
pub fn recorded_backends(path: &Path, model: &str) -> Result<Vec<String>, TeacherError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(db_err(path))?;
    let mut stmt = match conn
        .prepare("SELECT DISTINCT backend FROM requests WHERE model = ?1 ORDER BY backend")
    {
        Ok(s) => s,
        Err(_) => return Ok(Vec::new()), // not a teacher cache (yet)
    };
    let rows = stmt
        .query_map(params![model], |r| r.get::<_, String>(0))
        .map_err(db_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err(path));
    rows
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Floats rounded to 1e-9 so that `0.1 + 0.2` and `0.3` key alike.
fn canon_f64(x: f64) -> Value {
    let r = (x * 1e9).round() / 1e9;
    json!(if r == 0.0 { 0.0 } else { r })
}

fn key_value(backend: &str, model: &str, req: &ChatRequest, choice: Option<u32>) -> Value {
    let p = &req.params;
    let mut v = json!({
        "v": KEY_VERSION,
        "backend": backend,
        "model": model,
        "messages": req.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>(),
        "params": {
            "temperature": canon_f64(p.temperature),
            "top_p": canon_f64(p.top_p),
            "max_tokens": p.max_tokens,
            "presence_penalty": canon_f64(p.presence_penalty),
            "frequency_penalty": canon_f64(p.frequency_penalty),
        },
        "seed": p.seed,
    });
    // Structured generation changes the answer: part of the key, but only when asked for, so the
    // keys of every other request stay what they were.
    if let Some(fields) = &p.json_fields {
        v["params"]["json_fields"] = json!(fields);
    }
    if let Some(schema) = &p.json_schema {
        v["params"]["json_schema"] = schema.clone();
    }
    if let Some(c) = choice {
        v.as_object_mut().expect("object").insert("choice".into(), json!(c));
    }
    v
}

/// Canonical JSON of a request (with `choice` when given) — what the keys hash.
pub fn canonical_request_json(
    backend: &str,
    model: &str,
    req: &ChatRequest,
    choice: Option<u32>,
) -> String {
    crate::util::json::canonical_json(&key_value(backend, model, req, choice))
}

/// Hex SHA-256 of the canonical request without a choice index (groups a request's choices).
pub fn request_digest(backend: &str, model: &str, req: &ChatRequest) -> String {
    hex::encode(Sha256::digest(canonical_request_json(backend, model, req, None).as_bytes()))
}

/// The cache key of choice `choice` of `req`.
pub fn choice_key(backend: &str, model: &str, req: &ChatRequest, choice: u32) -> String {
    hex::encode(Sha256::digest(
        canonical_request_json(backend, model, req, Some(choice)).as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher::{ChatMessage, SamplingParams};

    fn req(t: f64, n: u32) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user("hi")],
            params: SamplingParams { temperature: t, n, seed: Some(1), ..Default::default() },
        }
    }

    #[test]
    fn keys_are_canonical() {
        let a = choice_key("openai", "m", &req(0.1 + 0.2, 5), 0);
        let b = choice_key("openai", "m", &req(0.3, 1), 0);
        assert_eq!(a, b, "n is not part of the key; floats are rounded");
        assert_ne!(a, choice_key("openai", "m", &req(0.3, 1), 1));
        assert_ne!(a, choice_key("vllm", "m", &req(0.3, 1), 0));
        assert_eq!(a.len(), 64);
        let j = canonical_request_json("openai", "m", &req(0.3, 1), Some(0));
        assert!(j.starts_with("{\"backend\":\"openai\",\"choice\":0,"), "{j}");
    }
}

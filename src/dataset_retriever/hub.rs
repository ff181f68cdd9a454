//! Loading a retrieved dataset from the live Hugging Face hub through the **datasets-server** JSON
//! API (`/splits`, `/rows`), so that any dataset of the index can become training data without
//! parquet/struct support in polars.
//!
//! * Endpoint: `HF_DATASETS_SERVER` (default <https://datasets-server.huggingface.co>); a token in
//!   `HF_TOKEN` is sent as `Authorization: Bearer …` (gated datasets) and never logged.
//! * Config: the one asked for; else the index entry's `evaluation_metadata[0].config`; else
//!   `default`; else the first the server lists. Splits: every split the server lists for it.
//! * Rows: pages of at most 100 (the server's limit) until the per-split cap or the end; 429, 5xx,
//!   timeouts and dropped connections are retried with exponential backoff, honouring
//!   `Retry-After` (the one policy of [`crate::util::http`]); a host name that does not resolve
//!   is not retried, and the error says so in a type ([`crate::util::http::Unresolved`]).
//! * Cache: `<cache>/hub-datasets/<dataset>/<config>/<split>.jsonl` (the rows as the server sent
//!   them) and `meta.json`, written last, each through a temporary file and a rename. A rerun
//!   reads the cache and needs no network, so the same dataset also loads offline afterwards.
//! * Columns: nested values are flattened ([`flatten_rows`]): scalars are text, lists of scalars
//!   are lists, structs become one column per field (`answers.text`), anything else its JSON text;
//!   class labels become their names.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dataset_retriever::{ColumnChoice, RawColumn, RawSplit};
use crate::util::http::{
    error_chain, Failed, Failure, LongRetryAfter, RetryPolicy, Retrying, Stop,
};
use crate::util::text::flat_excerpt;

pub const DEFAULT_ENDPOINT: &str = "https://datasets-server.huggingface.co";
/// The most rows `/rows` returns per request.
pub const PAGE_ROWS: usize = 100;
/// The longest `Retry-After` honoured; a server asking for more is reported instead of waited on.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const META_FORMAT: u32 = 1;

const SERVER_FIX: &str = "HF_DATASETS_SERVER must be the datasets server's base URL (default https://datasets-server.huggingface.co)";

/// How to reach the datasets server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub endpoint: String,
    /// Sent as a bearer token; `Debug` output of this struct is never logged.
    pub token: Option<String>,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
}

impl ServerConfig {
    pub fn from_env() -> Self {
        let env =
            |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        ServerConfig {
            endpoint: env("HF_DATASETS_SERVER")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token: env("HF_TOKEN"),
            max_retries: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
        }
    }
}

/// One `(config, split)` the server lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRef {
    pub config: String,
    pub split: String,
}

/// One page of `/rows`.
#[derive(Debug, Clone)]
pub struct RowsPage {
    pub features: Value,
    /// `(row_idx, row)`.
    pub rows: Vec<(u64, Value)>,
    pub num_rows_total: u64,
    /// Cells the server cut short (very long values).
    pub truncated_cells: usize,
}

pub struct Client {
    cfg: ServerConfig,
    http: reqwest::Client,
}

impl Client {
    pub fn new(cfg: ServerConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("prompt2model-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client { cfg, http })
    }

    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Url> {
        let mut url =
            reqwest::Url::parse(&format!("{}/{path}", self.cfg.endpoint)).map_err(|e| {
                anyhow!("`{}/{path}` is not a URL ({e}); fix: {SERVER_FIX}", self.cfg.endpoint)
            })?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(url)
    }

    /// The retry policy of this server's requests ([`crate::util::http`]).
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.cfg.max_retries, self.cfg.backoff_base, self.cfg.backoff_max)
            .with_max_retry_after(MAX_RETRY_AFTER, LongRetryAfter::Report)
    }

    /// GET a JSON document once.
    async fn get_json_once(&self, url: &reqwest::Url) -> Result<Value, Failed> {
        let mut request = self.http.get(url.clone()).timeout(self.cfg.timeout);
        if let Some(token) = &self.cfg.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| Failed::transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            let failed = Failed::status(&response, String::new());
            let body = response.text().await.unwrap_or_default();
            let why = crate::util::text::error_answer(&body);
            return Err(Failed { detail: format!("HTTP {status}: {why}"), ..failed });
        }
        let bytes = response.bytes().await.map_err(|e| Failed {
            failure: Failure::Transient,
            detail: format!("reading the answer: {}", error_chain(&e)),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Failed {
            failure: Failure::Permanent,
            detail: format!(
                "the answer is not JSON ({e}; it starts: {:?})",
                flat_excerpt(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)]), 300)
            ),
        })
    }

    /// GET a JSON document, retrying what a retry can fix (429, 5xx, timeouts, connection
    /// errors). A host name that does not resolve is not retried: the error holds a
    /// [`crate::util::http::Unresolved`], which callers find with
    /// [`crate::util::http::find_unresolved`].
    async fn get_json(&self, url: &reqwest::Url) -> Result<Value> {
        let on_retry = |f: &Failed, r: Retrying| {
            tracing::warn!(%url, retry = r.retry, wait_ms = r.wait.as_millis() as u64, "datasets server: {}; retrying", f.detail);
        };
        let gave_up = match self
            .retry_policy()
            .run(|| self.get_json_once(url), |f| f.failure, on_retry)
            .await
        {
            Ok(v) => return Ok(v),
            Err(gave_up) => gave_up,
        };
        if let Some(unresolved) = gave_up.unresolved(url.as_str()) {
            return Err(anyhow::Error::new(unresolved).context(format!(
                "GET {url}: no network? fix: check the network and HF_DATASETS_SERVER, or set P2M_OFFLINE=1 to use only the datasets on this machine"
            )));
        }
        let detail = &gave_up.error.detail;
        match (gave_up.why, gave_up.error.failure) {
            (Stop::Exhausted, _) => bail!("GET {url}: gave up after {} attempts, last: {detail}; fix: try again later, or check the network and HF_DATASETS_SERVER", gave_up.attempts),
            (Stop::WaitTooLong(d), _) => bail!(
                "GET {url}: {detail}; the server asks to wait {} s; fix: try again later",
                d.as_secs()
            ),
            (_, Failure::Status { code, .. }) => {
                let fix = match code {
                    401 | 403 => "the dataset is gated or private: accept its terms on huggingface.co and set HF_TOKEN to a token with access",
                    404 => "check the dataset name, --config and the split (the error above lists what the server knows)",
                    _ => SERVER_FIX,
                };
                bail!("GET {url}: {detail}; fix: {fix}")
            }
            _ => bail!("GET {url}: {detail}; fix: {SERVER_FIX}"),
        }
    }

    /// Every `(config, split)` of a dataset.
    pub async fn splits(&self, dataset: &str) -> Result<Vec<SplitRef>> {
        let url = self.url("splits", &[("dataset", dataset)])?;
        let v = self.get_json(&url).await?;
        let list = v.get("splits").and_then(|s| s.as_array()).ok_or_else(|| {
            anyhow!("GET {url}: no `splits` list in the answer; fix: {SERVER_FIX}")
        })?;
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let field = |k: &str| {
                s.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| {
                    anyhow!("GET {url}: splits[{i}] has no string `{k}`; fix: {SERVER_FIX}")
                })
            };
            out.push(SplitRef { config: field("config")?, split: field("split")? });
        }
        if out.is_empty() {
            bail!("GET {url}: the server lists no splits for `{dataset}` (it may still be processing it); fix: try again later, or choose another dataset");
        }
        Ok(out)
    }

    /// One page of rows.
    pub async fn rows(
        &self,
        dataset: &str,
        config: &str,
        split: &str,
        offset: usize,
        length: usize,
    ) -> Result<RowsPage> {
        let (offset_s, length_s) = (offset.to_string(), length.min(PAGE_ROWS).to_string());
        let url = self.url(
            "rows",
            &[
                ("dataset", dataset),
                ("config", config),
                ("split", split),
                ("offset", &offset_s),
                ("length", &length_s),
            ],
        )?;
        let v = self.get_json(&url).await?;
        let bad = |what: String| anyhow!("GET {url}: {what}; fix: {SERVER_FIX}");
        let list = v
            .get("rows")
            .and_then(|r| r.as_array())
            .ok_or_else(|| bad("no `rows` list in the answer".into()))?;
        let num_rows_total = v
            .get("num_rows_total")
            .and_then(|n| n.as_u64())
            .ok_or_else(|| bad("no integer `num_rows_total` in the answer".into()))?;
        let features = v.get("features").cloned().unwrap_or(Value::Array(vec![]));
        let mut rows = Vec::with_capacity(list.len());
        let mut truncated_cells = 0;
        for (i, r) in list.iter().enumerate() {
            let idx = r
                .get("row_idx")
                .and_then(|x| x.as_u64())
                .ok_or_else(|| bad(format!("rows[{i}] has no integer `row_idx`")))?;
            let row = r
                .get("row")
                .filter(|x| x.is_object())
                .cloned()
                .ok_or_else(|| bad(format!("rows[{i}] has no object `row`")))?;
            truncated_cells +=
                r.get("truncated_cells").and_then(|t| t.as_array()).map_or(0, |t| t.len());
            rows.push((idx, row));
        }
        Ok(RowsPage { features, rows, num_rows_total, truncated_cells })
    }

    /// The first `cap` rows of a split (fewer when the split is shorter), page by page.
    pub async fn fetch_split(
        &self,
        dataset: &str,
        config: &str,
        split: &str,
        cap: usize,
    ) -> Result<RowsPage> {
        let mut all = RowsPage {
            features: Value::Array(vec![]),
            rows: Vec::new(),
            num_rows_total: 0,
            truncated_cells: 0,
        };
        loop {
            let offset = all.rows.len();
            let want = cap.saturating_sub(offset).min(PAGE_ROWS);
            if want == 0 {
                break;
            }
            let page = self.rows(dataset, config, split, offset, want).await?;
            let got = page.rows.len();
            if offset == 0 {
                all.features = page.features;
            }
            all.num_rows_total = page.num_rows_total;
            all.truncated_cells += page.truncated_cells;
            all.rows.extend(page.rows.into_iter().take(want));
            if got == 0 || all.rows.len() as u64 >= all.num_rows_total {
                break;
            }
        }
        Ok(all)
    }
}

/// Choose the config: asked for → the index's evaluation config → `default` → the first listed.
pub fn choose_config(
    listed: &[SplitRef],
    asked: Option<&str>,
    index_config: Option<&str>,
) -> Result<(String, String), String> {
    let mut configs: Vec<&str> = Vec::new();
    for s in listed {
        if !configs.contains(&s.config.as_str()) {
            configs.push(&s.config);
        }
    }
    if let Some(c) = asked {
        return if configs.contains(&c) {
            Ok((c.to_string(), "asked for".into()))
        } else {
            Err(format!(
                "config `{c}` is not one of the dataset's configs ({})",
                configs.join(", ")
            ))
        };
    }
    if let Some(c) = index_config.filter(|c| configs.contains(c)) {
        return Ok((c.to_string(), "the index's evaluation_metadata config".into()));
    }
    if configs.contains(&"default") {
        return Ok(("default".into(), "`default`".into()));
    }
    configs
        .first()
        .map(|c| (c.to_string(), "the first config the server lists".into()))
        .ok_or_else(|| "the server lists no configs".into())
}

// ---------------------------------------------------------------------------------------------
// Flattening

enum Flat {
    Text(String),
    List(Vec<String>),
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn flatten_value(prefix: &str, v: &Value, out: &mut Vec<(String, Flat)>) {
    match v {
        Value::Object(fields) => {
            for (k, x) in fields {
                flatten_value(&format!("{prefix}.{k}"), x, out);
            }
        }
        Value::Array(items) => match items.iter().map(scalar_text).collect::<Option<Vec<_>>>() {
            Some(texts) => out.push((prefix.to_string(), Flat::List(texts))),
            None => out.push((prefix.to_string(), Flat::Text(v.to_string()))),
        },
        Value::Null => {}
        other => out.push((prefix.to_string(), Flat::Text(scalar_text(other).unwrap_or_default()))),
    }
}

/// Class-label names of top-level features (`ClassLabel`, or a `Sequence` of them), so labels are
/// written as words, not indices, when they become references.
fn label_names(features: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for f in features.as_array().into_iter().flatten() {
        let (Some(name), Some(ty)) = (f.get("name").and_then(|n| n.as_str()), f.get("type")) else {
            continue;
        };
        let inner = if ty.get("_type").and_then(|t| t.as_str()) == Some("Sequence") {
            ty.get("feature").unwrap_or(&Value::Null)
        } else {
            ty
        };
        if inner.get("_type").and_then(|t| t.as_str()) == Some("ClassLabel") {
            if let Some(names) = inner.get("names").and_then(|n| n.as_array()) {
                out.insert(
                    name.to_string(),
                    names.iter().map(|n| n.as_str().unwrap_or_default().to_string()).collect(),
                );
            }
        }
    }
    out
}

fn label_of(names: &[String], v: &Value) -> Value {
    match v.as_i64() {
        Some(i) if i >= 0 && (i as usize) < names.len() => Value::String(names[i as usize].clone()),
        _ => v.clone(),
    }
}

/// Rows as the server sends them → one column per scalar, list or struct field (`parent.field`),
/// top-level columns in the order the features list them, a struct's fields in name order. A column that is a list in any row is a list column;
/// missing values are empty.
pub fn flatten_rows(split: &str, rows: &[(u64, Value)], features: &Value) -> RawSplit {
    let labels = label_names(features);
    let mut order: Vec<String> = Vec::new();
    let mut is_list: BTreeMap<String, bool> = BTreeMap::new();
    let mut flat_rows: Vec<BTreeMap<String, Flat>> = Vec::with_capacity(rows.len());
    let feature_order: Vec<String> = features
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect();
    for (_, row) in rows {
        let mut flat = Vec::new();
        let obj = row.as_object();
        let mut keys: Vec<&String> = obj.map(|o| o.keys().collect()).unwrap_or_default();
        // Features first (the dataset's column order), then anything else the rows carry.
        keys.sort_by_key(|k| feature_order.iter().position(|f| f == *k).unwrap_or(usize::MAX));
        for k in keys {
            let v = &obj.expect("has keys")[k.as_str()];
            let v = match (labels.get(k.as_str()), v) {
                (Some(names), Value::Array(items)) => {
                    Value::Array(items.iter().map(|x| label_of(names, x)).collect())
                }
                (Some(names), x) => label_of(names, x),
                (None, x) => x.clone(),
            };
            flatten_value(k, &v, &mut flat);
        }
        let mut map = BTreeMap::new();
        for (name, value) in flat {
            if !is_list.contains_key(&name) {
                order.push(name.clone());
            }
            let list = matches!(value, Flat::List(_));
            *is_list.entry(name.clone()).or_insert(false) |= list;
            map.insert(name, value);
        }
        flat_rows.push(map);
    }
    let mut columns = Vec::with_capacity(order.len());
    for name in order {
        let column = if is_list[&name] {
            RawColumn::List(
                flat_rows
                    .iter()
                    .map(|r| match r.get(&name) {
                        Some(Flat::List(v)) => v.clone(),
                        Some(Flat::Text(t)) => vec![t.clone()],
                        None => vec![],
                    })
                    .collect(),
            )
        } else {
            RawColumn::Text(
                flat_rows
                    .iter()
                    .map(|r| match r.get(&name) {
                        Some(Flat::Text(t)) => t.clone(),
                        _ => String::new(),
                    })
                    .collect(),
            )
        };
        columns.push((name, column));
    }
    RawSplit {
        split: split.to_string(),
        ids: rows.iter().map(|(i, _)| i.to_string()).collect(),
        columns,
    }
}

// ---------------------------------------------------------------------------------------------
// Column choice without an LLM or a person

/// Names that mark a column as what a model should produce.
const OUTPUT_NAMES: &[&str] = &[
    "target",
    "tags",
    "label",
    "labels",
    "answer",
    "answers",
    "output",
    "summary",
    "target_text",
    "completion",
    "response",
];
/// Preferred output columns when the index has no col_mapping, best first.
const OUTPUT_HEURISTIC: &[&str] = &[
    "answers.text",
    "answer",
    "answers",
    "answer.text",
    "output",
    "target",
    "summary",
    "highlights",
    "abstract",
    "response",
    "completion",
    "label",
    "labels",
    "ner_tags",
    "tags",
    "snippet",
    "code",
    "translation",
];

fn id_like(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "id"
        || n == "idx"
        || n == "guid"
        || n.ends_with("_id")
        || n.ends_with(".id")
        || n.ends_with("answer_start")
}

/// Columns of a hub dataset when nobody chose: from the index's `evaluation_metadata[].col_mapping`
/// (a column mapped to a target/label/answer name is the output, the other mapped columns are the
/// inputs; a struct mapping such as SQuAD's `answers: {text, answer_start}` gives `answers.text`),
/// else by name. Returns the choice and how it was made.
pub fn default_hub_columns(
    columns: &[String],
    col_mappings: &[Value],
) -> Result<(ColumnChoice, String)> {
    for mapping in col_mappings {
        let Some(m) = mapping.as_object() else { continue };
        let mut inputs = Vec::new();
        let mut output = None;
        for (src, dst) in m {
            match dst {
                Value::String(d) if OUTPUT_NAMES.contains(&d.as_str()) => {
                    output = output.or(Some(src.clone()))
                }
                Value::String(_) => inputs.push(src.clone()),
                Value::Object(fields) => {
                    // A struct: its `text` field is the answer when the struct is answer-like; its
                    // other fields (offsets) are not model input.
                    let answer_like = OUTPUT_NAMES.contains(&src.as_str());
                    for (sub, sub_dst) in fields {
                        let name = format!("{src}.{sub}");
                        if answer_like {
                            if sub_dst.as_str() == Some("text") {
                                output = output.or(Some(name));
                            }
                        } else {
                            inputs.push(name);
                        }
                    }
                }
                _ => {}
            }
        }
        inputs.retain(|c| columns.contains(c));
        if let Some(out) = output.filter(|o| columns.contains(o)) {
            if !inputs.is_empty() {
                let how = format!(
                    "from the index's evaluation_metadata col_mapping ({})",
                    Value::Object(m.clone())
                );
                return Ok((ColumnChoice { input: inputs, output: out }, how));
            }
        }
    }
    let lower: Vec<String> = columns.iter().map(|c| c.to_ascii_lowercase()).collect();
    let (output, how) = match OUTPUT_HEURISTIC.iter().find_map(|h| lower.iter().position(|c| c == h)) {
        Some(i) => (columns[i].clone(), format!("by name: `{}` is an output-like name; the other non-id columns are inputs", columns[i])),
        None => match columns.iter().rev().find(|c| !id_like(c)) {
            Some(last) => (last.clone(), format!("guessed: no output-like column name, so the last column `{last}` is the output and the other non-id columns are inputs (choose with --config, --interactive or --teacher)")),
            None => bail!("no usable columns ({}); name them with --config", columns.join(", ")),
        },
    };
    // Sibling fields of a struct output (answers.answer_start beside answers.text) are not input.
    let parent = output.rsplit_once('.').map(|(p, _)| format!("{p}."));
    let input: Vec<String> = columns
        .iter()
        .filter(|c| {
            **c != output
                && !id_like(c)
                && !parent.as_ref().is_some_and(|p| c.starts_with(p.as_str()))
        })
        .cloned()
        .collect();
    if input.is_empty() {
        bail!(
            "only the output column `{output}` is usable ({}); name the columns with --config",
            columns.join(", ")
        );
    }
    Ok((ColumnChoice { input, output }, how))
}

// ---------------------------------------------------------------------------------------------
// The on-disk cache

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedSplit {
    pub split: String,
    pub rows: usize,
    pub num_rows_total: u64,
    pub truncated_cells: usize,
    pub features: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheMeta {
    pub format: u32,
    pub dataset: String,
    pub config: String,
    pub config_chosen_by: String,
    pub endpoint: String,
    pub fetched_at: String,
    pub max_rows_per_split: usize,
    pub splits: Vec<CachedSplit>,
}

impl CacheMeta {
    /// Whether the cached rows cover `cap` rows of every split (or the whole split).
    fn covers(&self, cap: usize) -> bool {
        self.splits.iter().all(|s| s.rows >= cap || s.rows as u64 >= s.num_rows_total)
    }
}

/// A path component for a dataset or config name (`org/name` → `org--name`; never `..`).
fn component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '/' => out.push_str("--"),
            c if c.is_ascii_alphanumeric() || "._-".contains(c) => out.push(c),
            _ => out.push('_'),
        }
    }
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

fn dataset_dir(cache: &Path, dataset: &str) -> PathBuf {
    cache.join("hub-datasets").join(component(dataset))
}

fn read_meta(dir: &Path) -> Option<CacheMeta> {
    let path = dir.join("meta.json");
    let bytes = fs::read(&path).ok()?;
    match serde_json::from_slice::<CacheMeta>(&bytes) {
        Ok(m) if m.format == META_FORMAT => Some(m),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), "unreadable hub dataset cache ({e}): fetching again");
            None
        }
    }
}

/// The cached configs of a dataset (folders with a complete `meta.json`).
pub fn cached_configs(cache: &Path, dataset: &str) -> Vec<CacheMeta> {
    let Ok(entries) = fs::read_dir(dataset_dir(cache, dataset)) else { return vec![] };
    let mut metas: Vec<CacheMeta> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| read_meta(&e.path()))
        .filter(|m| m.dataset == dataset)
        .collect();
    metas.sort_by(|a, b| a.config.cmp(&b.config));
    metas
}

fn write_split(path: &Path, rows: &[(u64, Value)]) -> Result<()> {
    let mut text = String::new();
    for (idx, row) in rows {
        text.push_str(&serde_json::json!({"row_idx": idx, "row": row}).to_string());
        text.push('\n');
    }
    crate::util::fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_split(path: &Path, limit: usize) -> Result<Vec<(u64, Value)>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the cached rows {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().take(limit) {
        let v: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "{}: line {} is not JSON; delete the folder to fetch it again",
                path.display(),
                i + 1
            )
        })?;
        let idx = v.get("row_idx").and_then(|x| x.as_u64()).with_context(|| {
            format!(
                "{}: line {} has no row_idx; delete the folder to fetch it again",
                path.display(),
                i + 1
            )
        })?;
        rows.push((idx, v.get("row").cloned().unwrap_or(Value::Null)));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Loading

/// What to load.
#[derive(Debug, Clone)]
pub struct HubRequest {
    pub dataset: String,
    /// `--hf-config` / the selection file's `config`.
    pub config: Option<String>,
    /// The index entry's `evaluation_metadata[0].config`.
    pub index_config: Option<String>,
    pub max_rows_per_split: usize,
}

/// A hub dataset, flattened.
pub struct HubDataset {
    pub dataset: String,
    pub config: String,
    pub config_chosen_by: String,
    pub splits: Vec<RawSplit>,
    /// The `/rows` URL of the first split, without paging (what `retrieved_dataset.json` records).
    pub source_url: String,
    pub from_cache: bool,
    pub cache_dir: PathBuf,
    pub notes: Vec<String>,
}

fn from_cache(dir: &Path, meta: &CacheMeta, cap: usize) -> Result<HubDataset> {
    let mut splits = Vec::with_capacity(meta.splits.len());
    let mut notes = Vec::new();
    for s in &meta.splits {
        let rows = read_split(&dir.join(format!("{}.jsonl", component(&s.split))), cap)?;
        if rows.len() < s.rows.min(cap) {
            bail!("{}: {} rows cached for split `{}` but meta.json says {}; delete {} to fetch it again", dir.display(), rows.len(), s.split, s.rows, dir.display());
        }
        if rows.len() < cap && (rows.len() as u64) < s.num_rows_total {
            notes.push(format!(
                "split `{}`: only {} of the asked {cap} rows are cached (offline)",
                s.split,
                rows.len()
            ));
        }
        splits.push(flatten_rows(&s.split, &rows, &s.features));
    }
    Ok(HubDataset {
        dataset: meta.dataset.clone(),
        config: meta.config.clone(),
        config_chosen_by: meta.config_chosen_by.clone(),
        splits,
        source_url: rows_url(
            &meta.endpoint,
            &meta.dataset,
            &meta.config,
            meta.splits.first().map_or("", |s| s.split.as_str()),
        ),
        from_cache: true,
        cache_dir: dir.to_path_buf(),
        notes,
    })
}

fn rows_url(endpoint: &str, dataset: &str, config: &str, split: &str) -> String {
    match reqwest::Url::parse(&format!("{endpoint}/rows")) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs([
                ("dataset", dataset),
                ("config", config),
                ("split", split),
            ]);
            u.to_string()
        }
        Err(_) => format!("{endpoint}/rows?dataset={dataset}&config={config}&split={split}"),
    }
}

/// The cached copy that answers a request without the network, if any: the asked config, else
/// the index's config, else `default`, else the first cached one.
pub fn find_cached(cache: &Path, req: &HubRequest) -> Option<CacheMeta> {
    let metas = cached_configs(cache, &req.dataset);
    let pick = |c: &str| metas.iter().find(|m| m.config == c).cloned();
    match req.config.as_deref() {
        Some(c) => pick(c),
        None => req
            .index_config
            .as_deref()
            .and_then(pick)
            .or_else(|| pick("default"))
            .or_else(|| metas.first().cloned()),
    }
}

/// Load a dataset: from the cache when it holds enough rows, else (online) from the server,
/// caching what was fetched.
pub fn load(
    cache: &Path,
    offline: bool,
    server: &ServerConfig,
    req: &HubRequest,
) -> Result<HubDataset> {
    let cap = req.max_rows_per_split;
    let cached = find_cached(cache, req);
    if let Some(meta) = &cached {
        if meta.covers(cap) || offline {
            let dir = dataset_dir(cache, &req.dataset).join(component(&meta.config));
            return from_cache(&dir, meta, cap);
        }
    }
    if offline {
        bail!(
            "`{}` is not in the hub dataset cache ({}) and P2M_OFFLINE=1 forbids fetching it; fix: run once online, or choose a dataset loadable here",
            req.dataset,
            dataset_dir(cache, &req.dataset).display()
        );
    }
    let client = Client::new(server.clone())?;
    crate::util::runtime::block_on(async {
        let listed = client.splits(&req.dataset).await?;
        let (config, chosen_by) =
            choose_config(&listed, req.config.as_deref(), req.index_config.as_deref()).map_err(
                |e| {
                    anyhow!(
                        "`{}` on {}: {e}; fix: pass --config with one of them",
                        req.dataset,
                        client.endpoint()
                    )
                },
            )?;
        let dir = dataset_dir(cache, &req.dataset).join(component(&config));
        let mut meta = CacheMeta {
            format: META_FORMAT,
            dataset: req.dataset.clone(),
            config: config.clone(),
            config_chosen_by: chosen_by,
            endpoint: client.endpoint().to_string(),
            fetched_at: chrono::Utc::now().to_rfc3339(),
            max_rows_per_split: cap,
            splits: Vec::new(),
        };
        let mut notes = Vec::new();
        for s in listed.iter().filter(|s| s.config == config) {
            let page = client.fetch_split(&req.dataset, &config, &s.split, cap).await?;
            if page.truncated_cells > 0 {
                notes.push(format!(
                    "split `{}`: the server truncated {} long cells",
                    s.split, page.truncated_cells
                ));
            }
            write_split(&dir.join(format!("{}.jsonl", component(&s.split))), &page.rows)?;
            meta.splits.push(CachedSplit {
                split: s.split.clone(),
                rows: page.rows.len(),
                num_rows_total: page.num_rows_total,
                truncated_cells: page.truncated_cells,
                features: page.features,
            });
        }
        // meta.json last: its presence means every split file is complete.
        let meta_path = dir.join("meta.json");
        crate::util::fs::write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())
            .with_context(|| format!("writing {}", meta_path.display()))?;
        let mut loaded = from_cache(&dir, &meta, cap)?;
        loaded.from_cache = false;
        loaded.notes.extend(notes);
        Ok(loaded)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_rows_flatten_to_columns() {
        let features = json!([{"name": "id", "type": {}}, {"name": "question", "type": {}}, {"name": "answers", "type": {}},
                              {"name": "label", "type": {"_type": "ClassLabel", "names": ["neg", "pos"]}}]);
        let rows = vec![
            (
                0,
                json!({"id": "a", "question": "q?", "answers": {"text": ["x", "y"], "answer_start": [1, 5]}, "label": 1, "meta": {"k": [{"deep": 1}]}}),
            ),
            (
                1,
                json!({"id": "b", "question": "r?", "answers": {"text": ["z"], "answer_start": [2]}, "label": 0, "extra": true}),
            ),
        ];
        let s = flatten_rows("train", &rows, &features);
        // Top-level columns in feature order; a struct's fields in name order (JSON objects are
        // read without their key order).
        assert_eq!(
            s.column_names(),
            ["id", "question", "answers.answer_start", "answers.text", "label", "meta.k", "extra"]
        );
        assert_eq!(s.ids, ["0", "1"]);
        let ex = s.example(0);
        assert_eq!(ex["answers.text"], "x | y");
        assert_eq!(ex["label"], "pos", "class labels become names");
        assert_eq!(ex["meta.k"], "[{\"deep\":1}]", "a list of structs is kept as JSON text");
        assert_eq!(s.example(1)["meta.k"], "", "missing values are empty");
        assert_eq!(s.example(1)["extra"], "true");
        assert!(matches!(s.columns[3].1, RawColumn::List(_)));
    }

    #[test]
    fn columns_from_col_mapping_then_names() {
        let cols: Vec<String> =
            ["id", "title", "context", "question", "answers.text", "answers.answer_start"]
                .map(String::from)
                .to_vec();
        let squad = json!({"question": "question", "context": "context", "answers": {"text": "text", "answer_start": "answer_start"}});
        let (c, how) = default_hub_columns(&cols, &[squad]).unwrap();
        assert_eq!(
            c,
            ColumnChoice {
                input: vec!["context".into(), "question".into()],
                output: "answers.text".into()
            }
        );
        assert!(how.contains("col_mapping"), "{how}");
        let (c, how) = default_hub_columns(&cols, &[]).unwrap();
        assert_eq!(
            c,
            ColumnChoice {
                input: vec!["title".into(), "context".into(), "question".into()],
                output: "answers.text".into()
            }
        );
        assert!(how.starts_with("by name"), "{how}");
        let cls: Vec<String> = ["text", "label"].map(String::from).to_vec();
        let (c, _) =
            default_hub_columns(&cls, &[json!({"text": "text", "label": "target"})]).unwrap();
        assert_eq!(c, ColumnChoice { input: vec!["text".into()], output: "label".into() });
        let odd: Vec<String> = ["premise", "verdict"].map(String::from).to_vec();
        let (c, how) =
            default_hub_columns(&odd, &[json!({"missing": "target", "premise": "text"})]).unwrap();
        assert_eq!(c.output, "verdict");
        assert!(how.starts_with("guessed"), "{how}");
        assert!(default_hub_columns(&["id".to_string()], &[]).is_err());
    }

    #[test]
    fn config_choice_order() {
        let l = |c: &str| SplitRef { config: c.into(), split: "train".into() };
        let listed = [l("plain_text"), l("default"), l("other")];
        assert_eq!(choose_config(&listed, Some("other"), Some("plain_text")).unwrap().0, "other");
        assert!(choose_config(&listed, Some("nope"), None)
            .unwrap_err()
            .contains("plain_text, default, other"));
        assert_eq!(choose_config(&listed, None, Some("plain_text")).unwrap().0, "plain_text");
        assert_eq!(choose_config(&listed, None, Some("gone")).unwrap().0, "default");
        assert_eq!(choose_config(&[l("b"), l("a")], None, None).unwrap().0, "b");
    }

    #[test]
    fn cache_paths_are_single_components() {
        assert_eq!(component("neulab/conala"), "neulab--conala");
        assert_eq!(component("../x"), "_..--x");
        assert_eq!(component("a b"), "a_b");
        assert!(dataset_dir(Path::new("/c"), "org/name").ends_with("hub-datasets/org--name"));
    }
}

//! The dataset transformer: retrieved rows rewritten by the teacher into examples of the user's
//! task (the retrieve-and-transform idea of the Python reference's later `dataset_transformer`,
//! written here for this project).
//!
//! A retrieved dataset rarely has the task's shape (Table 2: NQ-Open questions without passages
//! for a SQuAD task of passage + question), so its rows are not fed to the student as they are:
//!
//! 1. **Plan.** One request: the instruction, the prompt's demonstrations and a few retrieved rows
//!    (the first [`TransformConfig::plan_rows`] of those to transform); the teacher writes a short
//!    plan for turning one row into one example of the task.
//! 2. **Transform.** One request per row: the instruction, the demonstrations, the plan and the
//!    row; the answer is an `{"input", "output"}` JSON object, asked for as the generator asks
//!    (`json_fields`: a JSON schema as `response_format` over the OpenAI-compatible API, the keys
//!    forced by the local teacher), and parsed by the generator's own extraction
//!    ([`crate::dataset_generator::extract_examples`]).
//! 3. **Drop and count.** A row whose answer has no object, misses a key, has an empty field,
//!    repeats an input already kept or copies a demonstration is dropped, and counted by reason
//!    ([`TransformLog::dropped`]); so is a row whose request failed (a rerun asks it again).
//!
//! Every request is at temperature 0 with a fixed seed, so the same rows, prompt and teacher make
//! the same requests: behind the run's one teacher cache ([`crate::teacher::CachedTeacher`]) a
//! rerun replays every answer already paid for (resume is a rerun; no journal is needed), and a
//! replay-only rerun makes no request at all. At most [`TransformConfig::max_rows`] rows are
//! transformed (a seeded sample, in the rows' order), so the cost is bounded and estimated before
//! a paid call ([`crate::pipeline::budget::estimate_transform_cost`]).

mod prompts;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use prompts::{plan_prompt, transform_prompt, ROW_CHARS, SAMPLE_ROW_CHARS};

use crate::data::examples::{write_examples_jsonl, Example};
use crate::dataset_generator::extract_examples;
use crate::prompt_parser::ParsedPrompt;
use crate::teacher::{ChatRequest, ChatResponse, SamplingParams, Teacher, TeacherError};
use crate::util::fs::write_json;
use crate::util::progress::Progress;

/// The transformed rows, as `{input, output}` JSON lines.
pub const TRANSFORMED_FILE: &str = "transformed.jsonl";
/// The step's counts, plan and cost ([`TransformLog`]).
pub const TRANSFORM_LOG_FILE: &str = "transform_log.json";
/// Rows transformed when nothing says otherwise (`--transform-rows`).
pub const DEFAULT_TRANSFORM_ROWS: usize = 100;

/// How the transform step runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    /// Rows transformed at most (a seeded sample of the retrieved rows, in their order).
    pub max_rows: usize,
    /// Rows the plan prompt shows.
    pub plan_rows: usize,
    /// Completion-token cap of the plan.
    pub plan_max_tokens: u32,
    /// Completion-token cap of each transformed row.
    pub row_max_tokens: u32,
    /// Requests handed to the teacher at once (it bounds its own concurrency; this sets how
    /// often progress is shown and how soon a fatal error stops the step).
    pub batch_size: usize,
    /// The sample's seed and every request's sampling seed.
    pub seed: u64,
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            max_rows: DEFAULT_TRANSFORM_ROWS,
            plan_rows: 3,
            plan_max_tokens: 300,
            row_max_tokens: 300,
            batch_size: 16,
            seed: 42,
        }
    }
}

/// What the step did: rows asked and kept, why the others were dropped, requests and cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformLog {
    pub backend: String,
    pub model: String,
    /// Retrieved rows offered, and those sent to the teacher (the cap's sample).
    pub rows_offered: usize,
    pub rows_asked: usize,
    pub transformed: usize,
    /// Dropped rows by reason (`no_json`, `missing_keys`, `empty_field`, `truncated_json`,
    /// `invalid_json`, `duplicate_input`, `copies_demonstration`, `request_failed`).
    pub dropped: BTreeMap<String, u64>,
    /// Requests (the plan included), those answered from the cache, and those that failed.
    pub requests: u64,
    pub cached_responses: u64,
    pub failed_requests: u64,
    /// Tokens and cost of the answers billed in this invocation (replayed ones cost nothing).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Tokens of the answers replayed from the cache (what they cost when they were paid for).
    pub replayed_prompt_tokens: u64,
    pub replayed_completion_tokens: u64,
    pub plan: String,
    pub elapsed_secs: f64,
}

impl TransformLog {
    /// Every answer's tokens, billed now or replayed: the step's whole price at `pricing`.
    pub fn full_cost(&self, pricing: &crate::teacher::Pricing) -> f64 {
        pricing.cost(&crate::teacher::Usage {
            prompt_tokens: self.prompt_tokens + self.replayed_prompt_tokens,
            completion_tokens: self.completion_tokens + self.replayed_completion_tokens,
        })
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// One line for summaries, notes and the card: `12 of 20 retrieved rows transformed by M
    /// (dropped 8: no_json 5, missing_keys 3)`.
    pub fn describe(&self) -> String {
        let dropped = if self.dropped.is_empty() {
            "none dropped".to_string()
        } else {
            let parts: Vec<String> = self.dropped.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("dropped {}: {}", self.dropped_total(), parts.join(", "))
        };
        let sampled = if self.rows_asked < self.rows_offered {
            format!(" (a sample of the {} retrieved)", self.rows_offered)
        } else {
            String::new()
        };
        format!(
            "{} of {} rows{sampled} transformed into the task's format by {} ({dropped}; {} requests, {} replayed from the cache, ${:.4})",
            self.transformed, self.rows_asked, self.model, self.requests, self.cached_responses, self.cost_usd
        )
    }

    fn bump(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    fn count_answer(&mut self, resp: &ChatResponse) {
        self.requests += 1;
        if resp.cached {
            self.cached_responses += 1;
            self.replayed_prompt_tokens += resp.usage.prompt_tokens;
            self.replayed_completion_tokens += resp.usage.completion_tokens;
        } else {
            self.prompt_tokens += resp.usage.prompt_tokens;
            self.completion_tokens += resp.usage.completion_tokens;
            self.cost_usd += resp.cost_usd;
        }
    }
}

/// The step's result: the examples kept, in the rows' order, and the log.
#[derive(Debug, Clone)]
pub struct Transformed {
    pub examples: Vec<Example>,
    /// For each example, the index of the row it was rewritten from (in the rows given).
    pub origin: Vec<usize>,
    pub log: TransformLog,
}

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("the teacher wrote no plan for transforming the retrieved rows: {0}")]
    Plan(String),
    /// A failure no later request can get past (budget, replay-only miss, configuration): what
    /// was transformed so far comes with it.
    #[error("transforming the retrieved rows stopped after {} of {} rows: {source}", .partial.log.transformed + .partial.log.dropped_total() as usize, .partial.log.rows_asked)]
    Stopped { partial: Box<Transformed>, source: TeacherError },
}

impl TransformError {
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self, TransformError::Stopped { source: TeacherError::BudgetExhausted { .. }, .. })
    }
}

/// The indices of the rows transformed under a cap of `max_rows`: a seeded sample, in the rows'
/// order (all of them when there are fewer).
pub fn rows_to_transform(n_rows: usize, max_rows: usize, seed: u64) -> Vec<usize> {
    if max_rows == 0 {
        return Vec::new();
    }
    crate::util::rng::seeded_subset(n_rows, max_rows, seed, 0x7A_F0_12)
}

fn plan_request(prompt: &ParsedPrompt, sample: &[Example], cfg: &TransformConfig) -> ChatRequest {
    ChatRequest::user(
        plan_prompt(prompt, sample),
        SamplingParams {
            temperature: 0.0,
            max_tokens: Some(cfg.plan_max_tokens),
            seed: Some(cfg.seed),
            ..Default::default()
        },
    )
}

/// The request that rewrites `row` (what the cost estimate and the tests count too).
pub fn row_request(
    prompt: &ParsedPrompt,
    plan: &str,
    row: &Example,
    cfg: &TransformConfig,
) -> ChatRequest {
    ChatRequest::user(
        transform_prompt(prompt, plan, row),
        SamplingParams {
            temperature: 0.0,
            max_tokens: Some(cfg.row_max_tokens),
            seed: Some(cfg.seed),
            json_fields: Some(vec!["input".into(), "output".into()]),
            ..Default::default()
        },
    )
}

/// Transform `rows` (capped at `cfg.max_rows`) into examples of `prompt`'s task with `teacher`:
/// one plan request, then one request per row (see the module docs).
pub async fn transform(
    teacher: &dyn Teacher,
    prompt: &ParsedPrompt,
    rows: &[Example],
    cfg: &TransformConfig,
    progress: Option<&Progress>,
) -> Result<Transformed, TransformError> {
    let started = Instant::now();
    let chosen_idx = rows_to_transform(rows.len(), cfg.max_rows, cfg.seed);
    let chosen: Vec<Example> = chosen_idx.iter().map(|&i| rows[i].clone()).collect();
    let mut log = TransformLog {
        backend: teacher.backend().to_string(),
        model: teacher.model().to_string(),
        rows_offered: rows.len(),
        rows_asked: chosen.len(),
        ..Default::default()
    };
    if chosen.is_empty() {
        return Ok(Transformed { examples: Vec::new(), origin: Vec::new(), log });
    }
    let sample = &chosen[..cfg.plan_rows.clamp(1, chosen.len())];
    let plan = match teacher.chat(&plan_request(prompt, sample, cfg)).await {
        Ok(resp) => {
            log.count_answer(&resp);
            resp.choices
                .into_iter()
                .next()
                .map(|c| c.content.trim().to_string())
                .unwrap_or_default()
        }
        Err(e) if e.is_fatal() => {
            log.requests += 1;
            log.failed_requests += 1;
            let partial = Box::new(Transformed { examples: Vec::new(), origin: Vec::new(), log });
            return Err(TransformError::Stopped { partial, source: e });
        }
        Err(e) => return Err(TransformError::Plan(e.to_string())),
    };
    if plan.is_empty() {
        return Err(TransformError::Plan("the answer was empty".into()));
    }
    log.plan = plan.clone();
    if let Some(pb) = progress {
        pb.set_length(chosen.len() as u64);
    }
    let demo_inputs: HashSet<&str> = prompt.demonstrations.iter().map(|d| d.input.trim()).collect();
    let mut seen = HashSet::new();
    let (mut examples, mut origin) = (Vec::new(), Vec::new());
    let batch = cfg.batch_size.max(1);
    for (chunk, chunk_idx) in chosen.chunks(batch).zip(chosen_idx.chunks(batch)) {
        let requests: Vec<ChatRequest> =
            chunk.iter().map(|row| row_request(prompt, &plan, row, cfg)).collect();
        let mut fatal = None;
        for (result, &row_index) in teacher.chat_batch(&requests).await.into_iter().zip(chunk_idx) {
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    log.requests += 1;
                    log.failed_requests += 1;
                    log.bump("request_failed");
                    if e.is_fatal() && fatal.is_none() {
                        fatal = Some(e);
                    }
                    continue;
                }
            };
            log.count_answer(&resp);
            let answer = resp.choices.first().map(|c| c.content.as_str()).unwrap_or_default();
            let extraction = extract_examples(answer);
            let Some(example) = extraction.examples.into_iter().next() else {
                log.bump(extraction.rejected.unwrap_or("no_json"));
                continue;
            };
            if demo_inputs.contains(example.input.trim()) {
                log.bump("copies_demonstration");
            } else if !seen.insert(example.input.clone()) {
                log.bump("duplicate_input");
            } else {
                examples.push(example);
                origin.push(row_index);
            }
        }
        log.transformed = examples.len();
        if let Some(pb) = progress {
            pb.inc(chunk.len() as u64);
            pb.set_message(format!("kept {} dropped {}", examples.len(), log.dropped_total()));
        }
        if let Some(source) = fatal {
            log.elapsed_secs = started.elapsed().as_secs_f64();
            let partial = Box::new(Transformed { examples, origin, log });
            return Err(TransformError::Stopped { partial, source });
        }
    }
    log.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(Transformed { examples, origin, log })
}

/// Write `dir/transformed.jsonl` and `dir/transform_log.json` (each atomically).
pub fn write_transformed(dir: &Path, t: &Transformed) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(TRANSFORMED_FILE);
    write_examples_jsonl(&path, &t.examples)
        .with_context(|| format!("writing {}", path.display()))?;
    write_json(&dir.join(TRANSFORM_LOG_FILE), &t.log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_takes_a_seeded_sample_in_order() {
        let a = rows_to_transform(50, 10, 1);
        assert_eq!(a.len(), 10);
        assert_eq!(a, rows_to_transform(50, 10, 1), "seeded");
        assert_ne!(a, rows_to_transform(50, 10, 2), "the seed draws another sample");
        assert!(a.windows(2).all(|w| w[0] < w[1]), "in the rows' order: {a:?}");
        assert_eq!(rows_to_transform(50, 100, 1), (0..50).collect::<Vec<_>>());
        assert!(rows_to_transform(50, 0, 1).is_empty());
    }

    #[test]
    fn the_log_says_what_was_kept_and_dropped() {
        let mut log = TransformLog {
            model: "m".into(),
            rows_offered: 30,
            rows_asked: 20,
            transformed: 12,
            requests: 21,
            ..Default::default()
        };
        log.bump("no_json");
        log.bump("no_json");
        log.bump("missing_keys");
        let d = log.describe();
        assert!(d.starts_with("12 of 20 rows (a sample of the 30 retrieved) transformed"), "{d}");
        assert!(d.contains("dropped 3: missing_keys 1, no_json 2"), "{d}");
    }
}

//! The generator's settings, its log and its errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::examples::Example;
use crate::teacher::{TeacherError, TeacherStats};

/// File names inside the output directory.
pub const EXAMPLES_FILE: &str = "examples.jsonl";
pub const LOG_FILE: &str = "generation_log.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.jsonl";

/// Version of the prompt templates and the request schedule (part of the checkpoint fingerprint).
pub(crate) const ALGORITHM_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// `N`: unique examples wanted.
    pub num_examples: usize,
    pub initial_temperature: f64,
    pub max_temperature: f64,
    /// Choices per request (`n`); reference default 5.
    pub responses_per_request: u32,
    /// Requests per round; reference default 5.
    pub max_batch_size: usize,
    /// Completion-token cap per request; `None`: `context_window − prompt − token_buffer` as the
    /// reference does (it sizes against 4,000 tokens with a 300-token buffer).
    pub max_tokens: Option<u32>,
    pub context_window: u32,
    pub token_buffer: u32,
    /// Prompts whose estimated length reaches this are drawn again (reference: 3,500).
    pub context_cutoff_tokens: u64,
    pub top_p: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    /// Seed of every random choice (examples shown, templates, meta-examples, request seeds).
    pub seed: u64,
    /// Show previously generated examples in the prompt (the paper's high-diversity few-shot
    /// prompting); `false` is the ablation: the user's demonstrations only.
    pub high_diversity: bool,
    /// Most generated examples shown in one prompt (reference: 10).
    pub max_generated_examples_in_prompt: usize,
    /// Self-consistency filtering (majority output per input); when off every candidate counts.
    pub filter_duplicated_examples: bool,
    /// Drop candidates whose input copies one of the user's demonstrations.
    pub drop_demonstration_copies: bool,
    /// Attempts per request at the generator level, on top of the backend's own retries, for
    /// failures worth repeating ([`TeacherError::is_transient`]: malformed JSON, wrong schema,
    /// empty choices, …). Repeating the same request keeps runs reproducible under faults.
    pub request_attempts: u32,
    /// Stop after this many consecutive rounds in which every request failed.
    pub max_failed_rounds: u32,
    /// Stop after this many consecutive rounds that accept nothing new.
    pub max_rounds_without_progress: u32,
    /// Resume from `checkpoint.jsonl` in the output directory when present.
    pub resume: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            num_examples: 200,
            initial_temperature: 0.5,
            max_temperature: 1.7,
            responses_per_request: 5,
            max_batch_size: 5,
            max_tokens: None,
            context_window: 4000,
            token_buffer: 300,
            context_cutoff_tokens: 3500,
            top_p: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 42,
            high_diversity: true,
            max_generated_examples_in_prompt: 10,
            filter_duplicated_examples: true,
            drop_demonstration_copies: true,
            request_attempts: 3,
            max_failed_rounds: 3,
            max_rounds_without_progress: 50,
            resume: true,
        }
    }
}

impl GeneratorConfig {
    /// The paper's SQuAD run: temperatures 0.3 → 1.4.
    pub fn paper_squad() -> Self {
        GeneratorConfig { initial_temperature: 0.3, max_temperature: 1.4, ..Default::default() }
    }

    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: &str| Err(GenerateError::Config(m.to_string()));
        if self.num_examples == 0 {
            return bad("num_examples must be > 0");
        }
        if !(0.0..=2.0).contains(&self.initial_temperature)
            || !(0.0..=2.0).contains(&self.max_temperature)
        {
            return bad("temperatures must lie in [0, 2]");
        }
        if self.initial_temperature > self.max_temperature {
            return bad("initial_temperature must be ≤ max_temperature");
        }
        if self.responses_per_request == 0 || self.max_batch_size == 0 {
            return bad("responses_per_request and max_batch_size must be > 0");
        }
        if self.request_attempts == 0 {
            return bad("request_attempts must be > 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must lie in (0, 1]");
        }
        Ok(())
    }

    /// The annealed temperature after `accepted` of `n` examples.
    pub fn temperature(&self, accepted: usize, n: usize) -> f64 {
        let t = self.initial_temperature
            + (self.max_temperature - self.initial_temperature) * accepted as f64 / n.max(1) as f64;
        t.clamp(0.0, 2.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Log

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemperaturePoint {
    pub round: u64,
    /// Accepted examples when the round started.
    pub accepted: usize,
    pub temperature: f64,
    pub requests: usize,
}

/// What a generation did, cumulative over resumed runs; serialises to JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationLog {
    pub backend: String,
    pub model: String,
    pub target: usize,
    pub rounds: u64,
    /// Requests sent by the generator (generator-level retries included).
    pub requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Responses replayed from a cache (not billed).
    pub cached_responses: u64,
    pub choices: u64,
    /// Choices cut off by the token limit (`finish_reason = length`).
    pub truncated_choices: u64,
    /// Parsed `(input, output)` candidates.
    pub candidates: u64,
    /// Choices that yielded no candidate, and dropped candidates, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Candidates whose input had been generated before.
    pub duplicate_inputs: u64,
    /// Inputs seen with more than one distinct output (resolved by self-consistency).
    pub conflicting_inputs: u64,
    pub accepted: u64,
    /// Prompt templates used (SIMPLE / MIDDLE / COMPLEX).
    pub templates: BTreeMap<String, u64>,
    pub temperature_curve: Vec<TemperaturePoint>,
    /// Billed tokens and cost (cache replays excluded).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub cached_prompt_tokens: u64,
    pub cached_completion_tokens: u64,
    pub runs: u32,
    pub resumed_from_round: Option<u64>,
    pub complete: bool,
    pub stop_reason: Option<String>,
    /// Wall-clock seconds over every run of this generation (a resumed run adds to the journal's).
    pub elapsed_secs: f64,
    /// The teacher's own counters at the end of the latest run.
    pub teacher_stats: TeacherStats,
}

impl GenerationLog {
    pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a generation stopped before `N` examples. Everything accepted so far is in
/// `examples` (and checkpointed; a rerun resumes from it).
#[derive(Debug, thiserror::Error)]
#[error("generation stopped at {} of {target} examples: {reason}. The accepted examples are checkpointed in {} (and written to {EXAMPLES_FILE}); rerun to resume from them", examples.len(), checkpoint.display())]
pub struct Stopped {
    pub reason: String,
    #[source]
    pub source: Option<TeacherError>,
    pub target: usize,
    pub checkpoint: PathBuf,
    pub examples: Vec<Example>,
    pub log: GenerationLog,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid generator configuration: {0}")]
    Config(String),
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
    #[error(transparent)]
    File(#[from] crate::util::fs::FileError),
    #[error(transparent)]
    Stopped(Box<Stopped>),
}

impl GenerateError {
    /// True when the run ended because the API-call budget ran out.
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self, GenerateError::Stopped(s) if matches!(s.source, Some(TeacherError::BudgetExhausted { .. })))
    }

    /// The partial result of a stopped run.
    pub fn partial(&self) -> Option<(&[Example], &GenerationLog)> {
        match self {
            GenerateError::Stopped(s) => Some((&s.examples, &s.log)),
            _ => None,
        }
    }
}

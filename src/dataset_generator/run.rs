//! The generation loop: rounds of batched requests, parsing, filtering and annealing, journaled
//! after every round.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use super::config::*;
use super::extract::{extract_examples, self_consistency};
use super::journal::{fingerprint, Journal, JournalLine, RoundRecord};
use super::templates::build_prompt;
use crate::data::examples::{write_examples_jsonl, Example};
use crate::prompt_parser::{format_demonstrations, ParsedPrompt};
use crate::teacher::{
    estimate_tokens, ChatRequest, ChatResponse, SamplingParams, Teacher, TeacherError,
    TeacherErrorKind,
};
use crate::util::fs::{write_atomic, FileError};
use crate::util::progress::Progress;
use crate::util::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopAt {
    /// `n` unique accepted examples.
    Unique(usize),
    /// `n` raw candidates (the diversity experiment).
    Raw(usize),
}

pub(super) struct Core<'a> {
    teacher: &'a dyn Teacher,
    cfg: &'a GeneratorConfig,
    instruction: &'a str,
    high_quality: String,
    demo_inputs: HashSet<String>,
    rng: SplitMix64,
    round: u64,
    pub(super) candidates: Vec<Example>,
    seen_inputs: HashSet<String>,
    accepted: Vec<Example>,
    pub(super) log: GenerationLog,
    /// Seconds spent by earlier runs of a resumed generation (from the journal).
    elapsed_before: f64,
    started: Instant,
}

enum RoundEnd {
    Continue,
    Stop { reason: String, source: Option<TeacherError> },
}

impl<'a> Core<'a> {
    pub(super) fn new(
        teacher: &'a dyn Teacher,
        prompt: &'a ParsedPrompt,
        cfg: &'a GeneratorConfig,
        target: usize,
    ) -> Self {
        let high_quality = if prompt.demonstrations.is_empty() {
            "N/A".to_string()
        } else {
            format_demonstrations(&prompt.demonstrations)
        };
        Core {
            teacher,
            cfg,
            instruction: &prompt.instruction,
            high_quality,
            demo_inputs: prompt.demonstrations.iter().map(|d| d.input.trim().to_string()).collect(),
            rng: SplitMix64::new(cfg.seed),
            round: 0,
            candidates: Vec::new(),
            seen_inputs: HashSet::new(),
            accepted: Vec::new(),
            log: GenerationLog {
                backend: teacher.backend().to_string(),
                model: teacher.model().to_string(),
                target,
                ..Default::default()
            },
            elapsed_before: 0.0,
            started: Instant::now(),
        }
    }

    /// Wall-clock seconds of the whole generation: earlier runs plus this one.
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    fn revote(&mut self) {
        if self.cfg.filter_duplicated_examples {
            let (acc, conflicts) = self_consistency(&self.candidates);
            self.accepted = acc;
            self.log.conflicting_inputs = conflicts as u64;
        } else {
            self.accepted = self.candidates.clone();
        }
        self.log.accepted = self.accepted.len() as u64;
    }

    /// Restore from journal round records.
    fn restore(&mut self, rounds: Vec<RoundRecord>) {
        let mut curve = Vec::new();
        for r in rounds {
            for c in &r.candidates {
                self.seen_inputs.insert(c.input.clone());
            }
            self.candidates.extend(r.candidates);
            self.rng = SplitMix64::new(r.rng);
            self.round = r.round + 1;
            curve.push(r.point);
            self.log = r.log;
        }
        self.elapsed_before = self.log.elapsed_secs;
        self.log.temperature_curve = curve;
        self.revote();
    }

    fn max_tokens_for(&self, prompt: &str) -> u32 {
        match self.cfg.max_tokens {
            Some(m) => m,
            None => {
                let est = estimate_tokens(prompt) as i64;
                (self.cfg.context_window as i64 - est - self.cfg.token_buffer as i64).max(64) as u32
            }
        }
    }

    /// Send a batch; transient failures are sent again (same requests) up to
    /// `request_attempts` times. Returns the final results and the kinds of the failures that
    /// were retried.
    async fn send(
        &self,
        reqs: &[ChatRequest],
    ) -> (Vec<Result<ChatResponse, TeacherError>>, Vec<TeacherErrorKind>) {
        let mut retried = Vec::new();
        let mut results: Vec<Option<Result<ChatResponse, TeacherError>>> =
            self.teacher.chat_batch(reqs).await.into_iter().map(Some).collect();
        for _ in 1..self.cfg.request_attempts {
            if results.iter().any(|r| matches!(r, Some(Err(e)) if e.is_fatal())) {
                break;
            }
            let retry: Vec<usize> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r, Some(Err(e)) if e.is_transient()))
                .map(|(i, _)| i)
                .collect();
            if retry.is_empty() {
                break;
            }
            let sub: Vec<ChatRequest> = retry.iter().map(|&i| reqs[i].clone()).collect();
            let again = self.teacher.chat_batch(&sub).await;
            for (&i, r) in retry.iter().zip(again) {
                if let Some(Err(e)) = &results[i] {
                    tracing::debug!(request = i, error = %e, "sending a failed generation request again");
                    retried.push(e.kind());
                }
                results[i] = Some(r);
            }
        }
        (results.into_iter().map(|r| r.expect("filled")).collect(), retried)
    }

    async fn round(&mut self, stop: StopAt) -> (RoundEnd, RoundRecord) {
        let (have, n) = match stop {
            StopAt::Unique(n) => (self.accepted.len(), n),
            StopAt::Raw(n) => (self.candidates.len(), n),
        };
        let per_req = self.cfg.responses_per_request as usize;
        let batch = self.cfg.max_batch_size.min((n - have).div_ceil(per_req)).max(1);
        let temperature = self.cfg.temperature(have, n);
        let point =
            TemperaturePoint { round: self.round, accepted: have, temperature, requests: batch };
        let mut reqs = Vec::with_capacity(batch);
        for _ in 0..batch {
            let p = build_prompt(
                &mut self.rng,
                self.instruction,
                &self.high_quality,
                &self.accepted,
                self.cfg,
            );
            GenerationLog::bump(&mut self.log.templates, p.template.name());
            let seed = self.rng.next_u64() >> 33; // < 2^31: accepted by every server
            let params = SamplingParams {
                temperature,
                top_p: self.cfg.top_p,
                max_tokens: Some(self.max_tokens_for(&p.text)),
                n: self.cfg.responses_per_request,
                seed: Some(seed),
                presence_penalty: self.cfg.presence_penalty,
                frequency_penalty: self.cfg.frequency_penalty,
                json_fields: Some(vec!["input".into(), "output".into()]),
                json_schema: None,
            };
            reqs.push(ChatRequest::user(p.text, params));
        }

        let (results, retried) = self.send(&reqs).await;
        for kind in retried {
            self.log.requests += 1;
            self.log.failed_requests += 1;
            GenerationLog::bump(&mut self.log.errors, kind.as_str());
        }
        let before: HashSet<String> = self.accepted.iter().map(|e| e.input.clone()).collect();
        let mut new_candidates = Vec::new();
        let mut fatal: Option<TeacherError> = None;
        let mut last_error: Option<TeacherError> = None;
        let mut successes = 0;
        for r in results {
            self.log.requests += 1;
            match r {
                Ok(resp) => {
                    successes += 1;
                    self.log.successful_requests += 1;
                    if resp.cached {
                        self.log.cached_responses += 1;
                        self.log.cached_prompt_tokens += resp.usage.prompt_tokens;
                        self.log.cached_completion_tokens += resp.usage.completion_tokens;
                    } else {
                        self.log.prompt_tokens += resp.usage.prompt_tokens;
                        self.log.completion_tokens += resp.usage.completion_tokens;
                        self.log.cost_usd += resp.cost_usd;
                    }
                    for choice in resp.choices {
                        self.log.choices += 1;
                        if choice.finish_reason.as_deref() == Some("length") {
                            self.log.truncated_choices += 1;
                        }
                        let ex = extract_examples(&choice.content);
                        if let Some(reason) = ex.rejected {
                            GenerationLog::bump(&mut self.log.rejected, reason);
                        }
                        for e in ex.examples {
                            if self.cfg.drop_demonstration_copies
                                && self.demo_inputs.contains(e.input.trim())
                            {
                                GenerationLog::bump(&mut self.log.rejected, "copies_demonstration");
                                continue;
                            }
                            self.log.candidates += 1;
                            if !self.seen_inputs.insert(e.input.clone()) {
                                self.log.duplicate_inputs += 1;
                            }
                            new_candidates.push(e);
                        }
                    }
                }
                Err(e) => {
                    self.log.failed_requests += 1;
                    GenerationLog::bump(&mut self.log.errors, e.kind().as_str());
                    if e.is_fatal() {
                        if fatal.is_none() {
                            fatal = Some(e);
                        }
                    } else {
                        last_error = Some(e);
                    }
                }
            }
        }
        self.candidates.extend(new_candidates.iter().cloned());
        self.revote();
        self.log.rounds += 1;
        self.log.elapsed_secs = self.elapsed();
        self.log.temperature_curve.push(point.clone());
        let new_accepted: Vec<Example> =
            self.accepted.iter().filter(|e| !before.contains(&e.input)).cloned().collect();
        let record = RoundRecord {
            round: self.round,
            rng: self.rng.state,
            point,
            candidates: new_candidates,
            new_accepted,
            accepted_total: self.accepted.len(),
            log: GenerationLog { temperature_curve: Vec::new(), ..self.log.clone() },
        };
        self.round += 1;
        let end = match (fatal, successes) {
            (Some(e), _) => RoundEnd::Stop { reason: e.to_string(), source: Some(e) },
            (None, 0) => RoundEnd::Stop { reason: String::new(), source: last_error },
            _ => RoundEnd::Continue,
        };
        (end, record)
    }

    /// Run rounds until `stop`; `journal` gets every round.
    pub(super) async fn run(
        &mut self,
        stop: StopAt,
        mut journal: Option<&mut Journal>,
        progress: Option<&Progress>,
    ) -> Result<Option<(String, Option<TeacherError>)>, GenerateError> {
        let mut failed_rounds = 0u32;
        let mut stalled = 0u32;
        loop {
            let (have, n) = match stop {
                StopAt::Unique(n) => (self.accepted.len(), n),
                StopAt::Raw(n) => (self.candidates.len(), n),
            };
            if let Some(pb) = progress {
                pb.set_position(have.min(n) as u64);
            }
            if have >= n {
                return Ok(None);
            }
            let (end, record) = self.round(stop).await;
            let grew = match stop {
                StopAt::Unique(_) => record.accepted_total > have,
                StopAt::Raw(_) => !record.candidates.is_empty(),
            };
            if let Some(j) = journal.as_deref_mut() {
                j.append(&JournalLine::Round(Box::new(record)))?;
            }
            if let Some(pb) = progress {
                pb.set_message(format!(
                    "T={:.2} requests={} cached={} rejected={}",
                    self.cfg.temperature(have, n),
                    self.log.requests,
                    self.log.cached_responses,
                    self.log.rejected.values().sum::<u64>()
                ));
            }
            match end {
                RoundEnd::Stop { reason, source: Some(e) } if e.is_fatal() => {
                    return Ok(Some((reason, Some(e))))
                }
                RoundEnd::Stop { source, .. } => {
                    failed_rounds += 1;
                    if failed_rounds >= self.cfg.max_failed_rounds {
                        let reason = match &source {
                            Some(e) => format!("{failed_rounds} consecutive rounds failed entirely; last error: {e}"),
                            None => format!("{failed_rounds} consecutive rounds failed entirely"),
                        };
                        return Ok(Some((reason, source)));
                    }
                }
                RoundEnd::Continue => failed_rounds = 0,
            }
            if grew {
                stalled = 0;
            } else {
                stalled += 1;
                if stalled >= self.cfg.max_rounds_without_progress {
                    return Ok(Some((
                        format!("no new example in {stalled} consecutive rounds"),
                        None,
                    )));
                }
            }
        }
    }
}

/// The progress of generating `n` examples, as the CLI shows it: a bar on a terminal, a plain
/// line now and then in a log ([`Progress`]).
pub fn default_progress_bar(n: usize) -> Progress {
    Progress::new(true, "generating", n as u64, "examples")
}

/// Generate `cfg.num_examples` examples for `prompt` with `teacher`, writing
/// `out_dir/examples.jsonl`, `out_dir/generation_log.json` and the journal
/// `out_dir/checkpoint.jsonl` (resumed from when present and `cfg.resume`).
///
/// When the run cannot finish (budget exhausted, replay-only miss, persistent failures) it
/// returns [`GenerateError::Stopped`] carrying every example accepted so far (also written to
/// `examples.jsonl` and kept in the checkpoint).
pub async fn generate(
    teacher: &dyn Teacher,
    prompt: &ParsedPrompt,
    cfg: &GeneratorConfig,
    out_dir: &Path,
    progress: Option<&Progress>,
) -> Result<(Vec<Example>, GenerationLog), GenerateError> {
    cfg.validate()?;
    std::fs::create_dir_all(out_dir).map_err(FileError::at(out_dir))?;
    let n = cfg.num_examples;
    let checkpoint = out_dir.join(CHECKPOINT_FILE);
    let fp = fingerprint(teacher, prompt, cfg);
    let header = JournalLine::Header {
        version: ALGORITHM_VERSION,
        fingerprint: fp.clone(),
        backend: teacher.backend().into(),
        model: teacher.model().into(),
    };

    let mut core = Core::new(teacher, prompt, cfg, n);
    let mut journal = if cfg.resume && checkpoint.exists() {
        let (lines, valid) = Journal::read(&checkpoint)?;
        let mut it = lines.into_iter();
        match it.next() {
            Some(JournalLine::Header { fingerprint, .. }) if fingerprint == fp => {
                let rounds: Vec<RoundRecord> = it
                    .map(|l| match l {
                        JournalLine::Round(r) => Ok(*r),
                        JournalLine::Header { .. } => Err(GenerateError::Checkpoint {
                            path: checkpoint.clone(),
                            detail: "a second header".into(),
                        }),
                    })
                    .collect::<Result<_, _>>()?;
                let resumed_round = rounds.last().map(|r| r.round);
                core.restore(rounds);
                if let Some(r) = resumed_round {
                    core.log.resumed_from_round = Some(r);
                    tracing::info!(
                        round = r,
                        accepted = core.accepted.len(),
                        "resuming from {}",
                        checkpoint.display()
                    );
                }
                Journal::reopen(&checkpoint, valid)?
            }
            Some(JournalLine::Header { .. }) => {
                return Err(GenerateError::Checkpoint {
                    path: checkpoint,
                    detail:
                        "written by a different prompt, teacher or generator configuration; delete it or set resume = false to start over"
                            .into(),
                });
            }
            _ => Journal::create(&checkpoint, &header)?,
        }
    } else {
        Journal::create(&checkpoint, &header)?
    };
    core.log.target = n;
    core.log.runs += 1;
    core.log.complete = false;
    core.log.stop_reason = None;
    if let Some(pb) = progress {
        pb.set_length(n as u64);
    }

    let stop = core.run(StopAt::Unique(n), Some(&mut journal), progress).await?;
    let mut examples = core.accepted.clone();
    examples.truncate(n);
    let mut log = core.log.clone();
    log.elapsed_secs = core.elapsed();
    log.teacher_stats = teacher.stats();
    log.complete = stop.is_none();
    log.stop_reason = stop.as_ref().map(|(r, _)| r.clone());

    write_examples_jsonl(&out_dir.join(EXAMPLES_FILE), &examples)
        .map_err(FileError::at(&out_dir.join(EXAMPLES_FILE)))?;
    let log_json = serde_json::to_vec_pretty(&log).expect("serialisable");
    write_atomic(&out_dir.join(LOG_FILE), &log_json)
        .map_err(FileError::at(&out_dir.join(LOG_FILE)))?;
    if let Some(pb) = progress {
        pb.set_position(examples.len() as u64);
        pb.finish();
    }
    match stop {
        None => Ok((examples, log)),
        Some((reason, source)) => Err(GenerateError::Stopped(Box::new(Stopped {
            reason,
            source,
            target: n,
            checkpoint,
            examples,
            log,
        }))),
    }
}

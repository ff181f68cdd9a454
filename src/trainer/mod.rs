//! The trainer: every task as text-to-text, a student fine-tuned with AdamW on tch.
//!
//! What the reference (`prompt2model.model_trainer.GenerationModelTrainer` on top of the
//! Hugging Face `Trainer`) does, and so what this does:
//! - each example becomes `<task {id}>{instruction}\nExample:\n{input}\nLabel:\n` → `output`
//!   ([`model_input`]); generated data is task 0, retrieved data task 1; the datasets are
//!   concatenated and shuffled with a seeded RNG;
//! - AdamW, learning rate 5e-5, 3 epochs (the paper's settings are [`TrainConfig::default`]);
//!   weight decay, warm-up, the linear schedule, gradient accumulation and clipping as the
//!   `Trainer` defines them.
//!
//! What it adds: length-bucketed batches, a validation loss per epoch with optional early stopping,
//! checkpoints that hold *all* training state (weights, optimizer moments, step, the data order is a
//! function of the seed) so that a run killed at any moment resumes to bit-identical final weights
//! on CPU, and a hard stop on a non-finite loss that leaves the last good checkpoint in place.
//!
//! With [`TrainConfig::lora`] it trains LoRA adapters on a frozen base instead
//! ([`crate::models::lora`]): only the adapters are in AdamW and in the checkpoints (the base is
//! rebuilt from the student's spec on resume), and `final/` holds them merged into the weights.
//!
//! Students are the encoder-decoder models of [`crate::models`] ([`Student`]).

pub mod adamw;
pub mod student;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::models::lora::LoraConfig;
use crate::models::precision::{self, Precision};
use crate::models::seq2seq::IGNORE_INDEX;
use crate::util::fs::{read_json, write_json};
use crate::util::progress::Progress;
use crate::util::rng::SplitMix64;
use adamw::{AdamW, AdamWParams};
pub use student::{Student, StudentSpec};

/// The reference's textualisation of one example (`TextualizeProcessor`).
pub fn model_input(task_id: u32, instruction: &str, input: &str) -> String {
    format!("<task {task_id}>{instruction}\nExample:\n{input}\nLabel:\n")
}

/// One training pair, already textualised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextPair {
    pub source: String,
    pub target: String,
}

/// `(input, output)` rows of one dataset as the student's text-to-text pairs: each input wrapped
/// in the template `<task {task_id}>{instruction}\nExample:\n{input}\nLabel:\n` ([`model_input`]).
pub fn apply_template(task_id: u32, instruction: &str, rows: &[(String, String)]) -> Vec<TextPair> {
    rows.iter()
        .map(|(i, o)| TextPair { source: model_input(task_id, instruction, i), target: o.clone() })
        .collect()
}

/// Concatenates datasets and shuffles them with `seed` (the reference's `concatenate_datasets` +
/// `shuffle(seed)`; the permutation is ours, the property — a seeded, reproducible order — is theirs).
pub fn concatenate_and_shuffle(parts: Vec<Vec<TextPair>>, seed: u64) -> Vec<TextPair> {
    let mut all: Vec<TextPair> = parts.into_iter().flatten().collect();
    SplitMix64::new(seed).shuffle(&mut all);
    all
}

/// Hyper-parameters and run settings. The defaults are the paper's (lr 5e-5, 3 epochs) and the
/// Hugging Face `Trainer`'s (batch 8, no weight decay, no warm-up, linear decay, clip at 1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub epochs: usize,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accumulation: usize,
    pub weight_decay: f64,
    /// Fraction of the optimizer steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    /// `linear` (decay to 0 at the last step) or `constant`.
    pub schedule: String,
    /// Global gradient-norm clip; `None` (or ≤ 0 in TOML) disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Source/target token limits (longer sequences are truncated, keeping the final special token).
    pub max_source_len: usize,
    pub max_target_len: usize,
    /// Sort examples by length within windows of this many batches, so batches pad little.
    pub bucket_window: usize,
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (0: at the end of each epoch only).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Stop when the validation loss has not improved for this many epochs.
    pub early_stopping_patience: Option<usize>,
    /// Autocast on CUDA (ignored on CPU). tch exposes no autocast dtype, so this is libtorch's
    /// CUDA default, fp16, and there is no loss scaling: off by default; the non-finite-loss stop
    /// guards a run that underflows.
    pub mixed_precision: bool,
    /// The precision of the linear layers' matmuls on any device: `bf16` is CPU autocast's rule
    /// (bf16 matmuls on the f32 master weights, f32 elsewhere; see
    /// [`crate::models::precision`]). Left out of the file when f32, so earlier configs and their
    /// fingerprints are unchanged.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Stop after this many optimizer steps in total (a budget for small scales; `None`: all epochs).
    pub max_steps: Option<u64>,
    /// Train LoRA adapters on a frozen base instead of every weight ([`crate::models::lora`]);
    /// merged into the saved weights at the end. Left out of the file when off, so earlier
    /// configs and their fingerprints are unchanged; when on, its settings enter the fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 5e-5,
            epochs: 3,
            batch_size: 8,
            grad_accumulation: 1,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            schedule: "linear".into(),
            max_grad_norm: Some(1.0),
            max_source_len: 512,
            max_target_len: 128,
            bucket_window: 50,
            seed: 42,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            early_stopping_patience: None,
            mixed_precision: false,
            precision: Precision::F32,
            max_steps: None,
            lora: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let fix = "fix the training configuration";
        anyhow::ensure!(
            self.learning_rate > 0.0 && self.learning_rate.is_finite(),
            "learning_rate must be a positive number ({fix})"
        );
        anyhow::ensure!(self.epochs >= 1, "epochs must be at least 1 ({fix})");
        anyhow::ensure!(
            self.batch_size >= 1 && self.grad_accumulation >= 1,
            "batch_size and grad_accumulation must be at least 1 ({fix})"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.warmup_ratio),
            "warmup_ratio must be in [0, 1) ({fix})"
        );
        anyhow::ensure!(
            matches!(self.schedule.as_str(), "linear" | "constant"),
            "schedule `{}`: use `linear` or `constant`",
            self.schedule
        );
        anyhow::ensure!(
            self.max_source_len >= 2 && self.max_target_len >= 2,
            "max_source_len and max_target_len must be at least 2 ({fix})"
        );
        anyhow::ensure!(self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1 ({fix})");
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        Ok(())
    }
}

/// A tokenised example: source ids, label ids (target tokens + EOS, no decoder start).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub source: Vec<i64>,
    pub labels: Vec<i64>,
}

/// A padded batch on the model's device.
pub struct TrainingBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
    pub examples: usize,
    pub tokens: i64,
}

/// Pads sources with `pad` (mask 0) and labels with [`IGNORE_INDEX`], to the batch's longest.
pub fn collate(items: &[&Encoded], pad: i64, device: Device) -> TrainingBatch {
    let src_len = items.iter().map(|e| e.source.len()).max().unwrap_or(1).max(1);
    let tgt_len = items.iter().map(|e| e.labels.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(items.len() * src_len);
    let mut mask = Vec::with_capacity(items.len() * src_len);
    let mut labels = Vec::with_capacity(items.len() * tgt_len);
    let mut tokens = 0i64;
    for e in items {
        ids.extend(
            e.source.iter().copied().chain(std::iter::repeat_n(pad, src_len - e.source.len())),
        );
        mask.extend(
            std::iter::repeat_n(1i64, e.source.len())
                .chain(std::iter::repeat_n(0, src_len - e.source.len())),
        );
        labels.extend(
            e.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(IGNORE_INDEX, tgt_len - e.labels.len())),
        );
        tokens += (e.source.len() + e.labels.len()) as i64;
    }
    let n = items.len() as i64;
    TrainingBatch {
        input_ids: Tensor::from_slice(&ids).view([n, src_len as i64]).to_device(device),
        attention_mask: Tensor::from_slice(&mask).view([n, src_len as i64]).to_device(device),
        labels: Tensor::from_slice(&labels).view([n, tgt_len as i64]).to_device(device),
        examples: items.len(),
        tokens,
    }
}

/// The batches of one epoch, as index lists: a seeded shuffle, then (when `window > 0`) sorting by
/// source length inside windows of `window` batches, then a seeded shuffle of the batch order. A
/// pure function of `(lengths, batch_size, window, seed, epoch)`, which is what makes resuming exact.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    window: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64::new(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    if window > 0 {
        for chunk in order.chunks_mut(window * batch_size) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
    rng.shuffle(&mut batches);
    batches
}

/// Per-step record (the learning curve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Per-epoch record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_loss: Option<f64>,
}

/// Everything besides tensors that a checkpoint needs to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Fingerprint of (config, data, student) — resuming with anything else is refused.
    pub fingerprint: String,
    pub optimizer_step: u64,
    /// Forward passes done (micro-batches) in the current epoch.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
    /// Sum of losses and count of micro-batches in the current epoch so far.
    pub epoch_loss_sum: f64,
    pub epoch_batches: usize,
    pub best_validation: Option<f64>,
    pub epochs_without_improvement: usize,
    pub examples_seen: u64,
    pub finished: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub output_dir: PathBuf,
    pub student: String,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub optimizer_steps: u64,
    pub epochs_run: usize,
    pub steps: Vec<StepLog>,
    pub epochs: Vec<EpochLog>,
    pub resumed_from_step: Option<u64>,
    pub parameters: i64,
    pub seconds: f64,
    pub examples_per_second: f64,
    pub tokens_per_second: f64,
    pub stopped_early: bool,
    pub device: String,
}

/// Errors the caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("loss became {loss} at optimizer step {step} (epoch {epoch}); training stopped. The last good checkpoint is kept in {checkpoint}. Lower the learning rate or check the data.")]
    NonFiniteLoss { loss: f64, step: u64, epoch: usize, checkpoint: String },
    #[error("{dir}: holds a checkpoint of a different run (config, data or student differ: {found} vs {expected}); use a new output directory or delete it")]
    ForeignCheckpoint { dir: String, found: String, expected: String },
}

/// The folder of `final/` that holds a LoRA run's adapters in PEFT's layout (`keep_adapters`).
pub const ADAPTER_DIR: &str = "adapter";

/// What to do about an unreadable trainer file.
const START_OVER: &str = "not a valid file of this kind (delete it to start over)";

/// A training run writing into `output_dir`:
/// `checkpoints/step-<n>/` (model + tokenizer + `optimizer.safetensors` + `trainer_state.json`)
/// and, at the end, `final/` with the model, tokenizer and `training_summary.json`.
pub struct Trainer<'a> {
    pub config: TrainConfig,
    pub student: &'a mut Student,
    pub output_dir: PathBuf,
    /// Show progress: a bar on a terminal, else a plain line at most every 20 s
    /// ([`crate::util::progress`]).
    pub progress: bool,
    /// Label for logs and the summary (e.g. the Table 2 arm).
    pub label: String,
    /// Keep `checkpoints/` once `final/` is written. They exist to resume a killed training and
    /// are model plus AdamW state (~1.6 GB each for SmolLM2-135M), so the pipeline and Table 2
    /// turn this off; `p2m train` keeps them.
    pub keep_checkpoints: bool,
}

impl<'a> Trainer<'a> {
    pub fn new(
        config: TrainConfig,
        student: &'a mut Student,
        output_dir: impl Into<PathBuf>,
    ) -> Self {
        Trainer {
            config,
            student,
            output_dir: output_dir.into(),
            progress: true,
            label: String::new(),
            keep_checkpoints: true,
        }
    }

    /// Trains on `train` (and reports the loss on `validation` after each epoch), resuming from
    /// the newest checkpoint in `output_dir` when there is one. A finished run found in
    /// `output_dir` is loaded and returned without training again. Without `keep_checkpoints`,
    /// `checkpoints/` is removed once `final/` holds the result.
    pub fn train(
        &mut self,
        train: &[TextPair],
        validation: &[TextPair],
    ) -> anyhow::Result<TrainSummary> {
        let summary = self.train_to_final(train, validation)?;
        if !self.keep_checkpoints {
            let checkpoints = self.output_dir.join("checkpoints");
            crate::util::fs::remove_dir_if_present(&checkpoints)
                .with_context(|| format!("removing {}", checkpoints.display()))?;
        }
        Ok(summary)
    }

    fn train_to_final(
        &mut self,
        train: &[TextPair],
        validation: &[TextPair],
    ) -> anyhow::Result<TrainSummary> {
        self.config.validate()?;
        anyhow::ensure!(!train.is_empty(), "no training examples: the training set is empty");
        let cfg = self.config.clone();
        let fingerprint = run_fingerprint(&cfg, train, validation, &self.student.describe());
        fs::create_dir_all(&self.output_dir)
            .with_context(|| format!("creating {}", self.output_dir.display()))?;

        let final_dir = self.output_dir.join("final");
        if let Ok(summary) =
            read_json::<TrainSummary>(&final_dir.join("training_summary.json"), START_OVER)
        {
            let state: TrainerState = read_json(&final_dir.join("trainer_state.json"), START_OVER)?;
            if state.fingerprint != fingerprint {
                return Err(TrainError::ForeignCheckpoint {
                    dir: final_dir.display().to_string(),
                    found: state.fingerprint,
                    expected: fingerprint,
                }
                .into());
            }
            self.student.load_weights(&final_dir)?;
            tracing::info!(
                "{}: finished run found in {}; loaded it",
                self.label,
                final_dir.display()
            );
            return Ok(summary);
        }

        let train_enc = self.student.encode_pairs(train, cfg.max_source_len, cfg.max_target_len)?;
        let val_enc =
            self.student.encode_pairs(validation, cfg.max_source_len, cfg.max_target_len)?;
        let lengths: Vec<usize> = train_enc.iter().map(|e| e.source.len()).collect();
        let batches_per_epoch = lengths.len().div_ceil(cfg.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(cfg.grad_accumulation) as u64;
        let mut total_steps = steps_per_epoch * cfg.epochs as u64;
        if let Some(max) = cfg.max_steps {
            total_steps = total_steps.min(max);
        }
        let warmup = (cfg.warmup_ratio * total_steps as f64).ceil() as u64;

        if let Some(lora) = &cfg.lora {
            self.student.attach_lora(lora, cfg.seed)?;
        }
        let params = AdamWParams { weight_decay: cfg.weight_decay, ..AdamWParams::default() };
        let mut optimizer = AdamW::new(self.student.trainable_parameters(), params);
        let mut state = TrainerState {
            fingerprint: fingerprint.clone(),
            optimizer_step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            steps: vec![],
            epochs: vec![],
            epoch_loss_sum: 0.0,
            epoch_batches: 0,
            best_validation: None,
            epochs_without_improvement: 0,
            examples_seen: 0,
            finished: false,
        };
        let mut resumed_from = None;
        let checkpoint_found = latest_checkpoint(&self.output_dir)?;
        if let Some(ckpt) = &checkpoint_found {
            let saved: TrainerState = read_json(&ckpt.join("trainer_state.json"), START_OVER)?;
            if saved.fingerprint != fingerprint {
                return Err(TrainError::ForeignCheckpoint {
                    dir: ckpt.display().to_string(),
                    found: saved.fingerprint,
                    expected: fingerprint,
                }
                .into());
            }
            if cfg.lora.is_some() {
                self.student.load_adapters(ckpt)?;
            } else {
                self.student.load_weights(ckpt)?;
            }
            let moments = adamw::read_state(&ckpt.join("optimizer.safetensors"))?;
            optimizer.load_state(
                &moments,
                saved.optimizer_step,
                &ckpt.join("optimizer.safetensors").display().to_string(),
            )?;
            tracing::info!(
                "{}: resuming from {} (optimizer step {})",
                self.label,
                ckpt.display(),
                saved.optimizer_step
            );
            resumed_from = Some(saved.optimizer_step);
            state = saved;
        }

        let device = self.student.device();
        let use_autocast = cfg.mixed_precision && device.is_cuda();
        let label = if self.label.is_empty() { "train" } else { &self.label };
        let bar = Progress::new(self.progress, label, total_steps, "steps");
        bar.set_position(state.optimizer_step);
        let started = Instant::now();
        let (mut run_examples, mut run_tokens) = (0u64, 0i64);
        let mut stopped_early = false;
        let mut last_checkpoint = checkpoint_found
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none yet)".into());

        'epochs: while state.epoch < cfg.epochs && state.optimizer_step < total_steps {
            let batches =
                epoch_batches(&lengths, cfg.batch_size, cfg.bucket_window, cfg.seed, state.epoch);
            // Optimizer steps group `grad_accumulation` consecutive batches; an epoch's last group may be short.
            while state.batch_in_epoch < batches.len() {
                let group_start = state.batch_in_epoch;
                let group_end = (group_start + cfg.grad_accumulation).min(batches.len());
                let group_examples: usize =
                    batches[group_start..group_end].iter().map(Vec::len).sum();
                optimizer.zero_grad();
                let mut group_loss = 0.0;
                for (offset, batch_idx) in batches[group_start..group_end].iter().enumerate() {
                    // Held through the forward pass: a resumed run draws what the original did.
                    let _generator = seed_dropout(cfg.seed, state.optimizer_step, offset as u64);
                    let items: Vec<&Encoded> = batch_idx.iter().map(|&i| &train_enc[i]).collect();
                    let batch = self.student.collate(&items);
                    let loss = precision::autocast(cfg.precision, || {
                        if use_autocast {
                            tch::autocast(true, || self.student.loss(&batch, true))
                        } else {
                            self.student.loss(&batch, true)
                        }
                    });
                    let loss_value = loss.double_value(&[]);
                    if !loss_value.is_finite() {
                        bar.abandon();
                        return Err(TrainError::NonFiniteLoss {
                            loss: loss_value,
                            step: state.optimizer_step,
                            epoch: state.epoch,
                            checkpoint: last_checkpoint,
                        }
                        .into());
                    }
                    // Each pass weighs by its share of the group's examples, so the accumulated
                    // gradient is that of the mean loss over the whole group.
                    (loss * (batch.examples as f64 / group_examples as f64)).backward();
                    group_loss += loss_value * batch.examples as f64 / group_examples as f64;
                    run_examples += batch.examples as u64;
                    run_tokens += batch.tokens;
                }
                let grad_norm = optimizer.clip_grad_norm(cfg.max_grad_norm.filter(|n| *n > 0.0));
                let lr = adamw::scheduled_lr(
                    cfg.learning_rate,
                    state.optimizer_step,
                    total_steps,
                    warmup,
                    cfg.schedule == "linear",
                );
                optimizer.step(lr);
                state.optimizer_step += 1;
                state.batch_in_epoch = group_end;
                state.epoch_loss_sum += group_loss;
                state.epoch_batches += 1;
                state.examples_seen += group_examples as u64;
                state.steps.push(StepLog {
                    step: state.optimizer_step,
                    epoch: state.epoch,
                    loss: group_loss,
                    lr,
                    grad_norm,
                });
                bar.set_position(state.optimizer_step);
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "epoch {}, loss {group_loss:.4}, {:.1} ex/s",
                    state.epoch + 1,
                    run_examples as f64 / secs
                ));

                let at_epoch_end = state.batch_in_epoch >= batches.len();
                let out_of_steps = state.optimizer_step >= total_steps;
                if at_epoch_end || out_of_steps {
                    let train_loss = state.epoch_loss_sum / state.epoch_batches.max(1) as f64;
                    let validation_loss = if val_enc.is_empty() {
                        None
                    } else {
                        Some(self.student.mean_loss(&val_enc, cfg.batch_size)?)
                    };
                    state.epochs.push(EpochLog { epoch: state.epoch, train_loss, validation_loss });
                    if let Some(v) = validation_loss {
                        if state.best_validation.is_none_or(|b| v < b) {
                            state.best_validation = Some(v);
                            state.epochs_without_improvement = 0;
                        } else {
                            state.epochs_without_improvement += 1;
                        }
                    }
                    state.epoch += 1;
                    state.batch_in_epoch = 0;
                    state.epoch_loss_sum = 0.0;
                    state.epoch_batches = 0;
                    if let (Some(p), Some(_)) = (cfg.early_stopping_patience, validation_loss) {
                        if state.epochs_without_improvement >= p {
                            stopped_early = true;
                        }
                    }
                }
                let periodic = cfg.checkpoint_every > 0
                    && state.optimizer_step.is_multiple_of(cfg.checkpoint_every as u64);
                if periodic || at_epoch_end || out_of_steps {
                    last_checkpoint =
                        self.write_checkpoint(&state, &optimizer)?.display().to_string();
                }
                if stopped_early || out_of_steps {
                    break 'epochs;
                }
                if at_epoch_end {
                    break;
                }
            }
        }
        bar.finish_and_clear();

        state.finished = true;
        let secs = started.elapsed().as_secs_f64();
        let summary = TrainSummary {
            output_dir: self.output_dir.clone(),
            student: self.student.describe(),
            train_examples: train.len(),
            validation_examples: validation.len(),
            optimizer_steps: state.optimizer_step,
            epochs_run: state.epochs.len(),
            steps: state.steps.clone(),
            epochs: state.epochs.clone(),
            resumed_from_step: resumed_from,
            parameters: optimizer.num_parameters(),
            seconds: secs,
            examples_per_second: run_examples as f64 / secs.max(1e-9),
            tokens_per_second: run_tokens as f64 / secs.max(1e-9),
            stopped_early,
            device: format!("{device:?}"),
        };
        self.write_final(&final_dir, &state, &summary)?;
        Ok(summary)
    }

    /// Writes `final/`: the model and tokenizer, the trainer state, config and summary. A LoRA
    /// run first keeps its adapters apart when asked (PEFT's layout, `final/adapter/`), then
    /// ships them merged: the packaged model is a plain model of its architecture.
    fn write_final(
        &mut self,
        final_dir: &Path,
        state: &TrainerState,
        summary: &TrainSummary,
    ) -> anyhow::Result<()> {
        let lora = self.config.lora.clone();
        crate::util::fs::write_dir_atomic(final_dir, |tmp| {
            if lora.as_ref().is_some_and(|l| l.keep_adapters) {
                self.student.write_adapters(&tmp.join(ADAPTER_DIR))?;
            }
            if lora.is_some() {
                self.student.merge_lora();
            }
            self.student.save(tmp)?;
            write_json(&tmp.join("trainer_state.json"), state)?;
            write_json(&tmp.join("training_config.json"), &self.config)?;
            write_json(&tmp.join("training_summary.json"), summary)
        })
    }

    fn write_checkpoint(&self, state: &TrainerState, optimizer: &AdamW) -> anyhow::Result<PathBuf> {
        let dir =
            self.output_dir.join("checkpoints").join(format!("step-{:08}", state.optimizer_step));
        crate::util::fs::write_dir_atomic(&dir, |tmp| {
            // A LoRA checkpoint holds the adapters only: the frozen base is rebuilt from the
            // student's spec on resume.
            if self.config.lora.is_some() {
                self.student.write_adapters(tmp)?;
            } else {
                self.student.save(tmp)?;
            }
            let moments: Vec<(String, Tensor)> = optimizer
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous()))
                .collect();
            Tensor::write_safetensors(&moments, tmp.join("optimizer.safetensors"))?;
            write_json(&tmp.join("training_config.json"), &self.config)?;
            // Written last: a checkpoint folder exists only once it is complete (the rename), and
            // its state file is what `latest_checkpoint` trusts.
            write_json(&tmp.join("trainer_state.json"), state)
        })?;
        // Keep the newest `keep_checkpoints`.
        let mut all = list_checkpoints(&self.output_dir)?;
        while all.len() > self.config.keep_checkpoints {
            let old = all.remove(0);
            fs::remove_dir_all(&old)
                .with_context(|| format!("removing old checkpoint {}", old.display()))?;
        }
        Ok(dir)
    }
}

/// Dropout draws from libtorch's one generator: seeds it for a forward pass from (seed, step,
/// pass) and holds it ([`crate::models::seed_libtorch`]) until the guard drops.
fn seed_dropout(seed: u64, step: u64, pass: u64) -> std::sync::MutexGuard<'static, ()> {
    let mut rng = SplitMix64::new(
        seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407) ^ pass.wrapping_mul(0x9FB2_1C65_1E98_DF25),
    );
    crate::models::seed_libtorch((rng.next_u64() >> 1) as i64)
}

fn run_fingerprint(
    cfg: &TrainConfig,
    train: &[TextPair],
    validation: &[TextPair],
    student: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Fields that change where a run goes, not how it is stored, are left out on purpose.
    let mut c = cfg.clone();
    c.checkpoint_every = 0;
    c.keep_checkpoints = 1;
    h.update(serde_json::to_vec(&c).expect("config serialises"));
    h.update(student.as_bytes());
    for (tag, set) in [(b"T", train), (b"V", validation)] {
        for p in set {
            h.update(tag);
            h.update((p.source.len() as u64).to_le_bytes());
            h.update(p.source.as_bytes());
            h.update((p.target.len() as u64).to_le_bytes());
            h.update(p.target.as_bytes());
        }
    }
    hex::encode(&h.finalize()[..16])
}

fn list_checkpoints(output_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = output_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .filter(|p| p.join("trainer_state.json").exists())
        .collect();
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint in `output_dir`, if any.
pub fn latest_checkpoint(output_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(list_checkpoints(output_dir)?.pop())
}

/// Loads a TOML training configuration (unknown keys are errors that name the file).
pub fn load_train_config(path: &Path) -> anyhow::Result<TrainConfig> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: TrainConfig = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid training configuration", path.display()))?;
    cfg.validate().with_context(|| path.display().to_string())?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textualisation_is_the_references() {
        assert_eq!(model_input(0, "Answer.", "Q: x"), "<task 0>Answer.\nExample:\nQ: x\nLabel:\n");
    }

    #[test]
    fn epoch_batches_cover_every_example_once_and_depend_only_on_the_seed() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 91 + 1).collect();
        let a = epoch_batches(&lengths, 8, 4, 7, 0);
        let b = epoch_batches(&lengths, 8, 4, 7, 0);
        assert_eq!(a, b);
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_ne!(a, epoch_batches(&lengths, 8, 4, 7, 1), "epochs differ");
        // Bucketing: within a batch lengths are close (sorted windows).
        let spread: usize = a
            .iter()
            .map(|bt| {
                bt.iter().map(|&i| lengths[i]).max().unwrap()
                    - bt.iter().map(|&i| lengths[i]).min().unwrap()
            })
            .sum();
        let unbucketed: usize = epoch_batches(&lengths, 8, 0, 7, 0)
            .iter()
            .map(|bt| {
                bt.iter().map(|&i| lengths[i]).max().unwrap()
                    - bt.iter().map(|&i| lengths[i]).min().unwrap()
            })
            .sum();
        assert!(spread < unbucketed, "{spread} vs {unbucketed}");
    }

    #[test]
    fn collate_pads_sources_and_ignores_padded_labels() {
        let a = Encoded { source: vec![5, 6, 7], labels: vec![9, 2] };
        let b = Encoded { source: vec![5], labels: vec![8, 8, 2] };
        let batch = collate(&[&a, &b], 0, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(batch.input_ids.view([-1])).unwrap(), [5, 6, 7, 5, 0, 0]);
        assert_eq!(
            Vec::<i64>::try_from(batch.attention_mask.view([-1])).unwrap(),
            [1, 1, 1, 1, 0, 0]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.labels.view([-1])).unwrap(),
            [9, 2, IGNORE_INDEX, 8, 8, 2]
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_field() {
        let cfg = TrainConfig { schedule: "cosine".into(), ..TrainConfig::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("schedule"));
        let err = toml::from_str::<TrainConfig>("learning_rat = 1e-4").unwrap_err().to_string();
        assert!(err.contains("learning_rat"), "{err}");
    }
}

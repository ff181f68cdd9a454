//! The common interface of the encoder-decoder students (T5 / flan-T5 in [`super::t5`], the
//! BERT2BERT warm start in [`super::encoder_decoder`]): encode once, decode step by step with a
//! key/value cache, teacher-forced training loss, and batched generation on top of
//! [`super::sampling`].
//!
//! Semantics follow Hugging Face transformers (5.x) so that a Rust model and its PyTorch twin agree
//! on every number:
//! - labels are padded with `-100`; decoder inputs are the labels shifted right with the decoder
//!   start token in front and `-100` replaced by the pad id (`_shift_right` / `shift_tokens_right`);
//! - the loss is the mean token cross-entropy over the labels that are not `-100`;
//! - generation feeds the decoder start token, takes the last position's logits, applies the
//!   repetition penalty over the *decoder* ids seen so far (start token included: that is
//!   `input_ids` of transformers' logits processors for an encoder-decoder), selects the next
//!   token, stops a row at EOS and the whole batch at `max_new_tokens`.
//!
//! Everything here is device-agnostic: tensors are moved to the model's device on entry.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::Context;
use tch::{nn, Device, Kind, Reduction, Tensor};

use crate::models::sampling::{select_batch, SamplingConfig};
use crate::util::{rng::fnv1a64, rng::SplitMix64};

/// Label value that the loss ignores (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// The three token ids every seq2seq model needs for training and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// First decoder input (T5: the pad id 0; BERT2BERT: `[CLS]`).
    pub decoder_start: i64,
    /// Ends a generated sequence (T5: `</s>` = 1; BERT2BERT: `[SEP]`).
    pub eos: i64,
    /// Replaces `-100` in shifted labels; fills finished rows during generation.
    pub pad: i64,
}

/// Keys and values of one decoder layer, kept across generation steps.
#[derive(Debug, Default)]
pub struct LayerCache {
    /// Self-attention keys/values `[batch, heads, past, head_dim]`; grows by the new tokens each step.
    pub self_kv: Option<(Tensor, Tensor)>,
    /// Cross-attention keys/values `[batch, heads, src_len, head_dim]`: a function of the encoder
    /// states only, so computed at the first step and reused unchanged.
    pub cross_kv: Option<(Tensor, Tensor)>,
}

/// Decoder key/value cache: one [`LayerCache`] per decoder layer.
#[derive(Debug, Default)]
pub struct DecoderCache {
    pub layers: Vec<LayerCache>,
}

impl DecoderCache {
    pub fn new(num_layers: usize) -> Self {
        DecoderCache { layers: (0..num_layers).map(|_| LayerCache::default()).collect() }
    }

    /// Number of decoder positions already in the cache (the offset of the next token).
    pub fn seq_len(&self) -> i64 {
        self.layers.first().and_then(|l| l.self_kv.as_ref()).map(|(k, _)| k.size()[2]).unwrap_or(0)
    }
}

/// Teacher-forced outputs: `logits` `[batch, tgt_len, vocab]` and the scalar mean loss.
#[derive(Debug)]
pub struct Seq2SeqOutput {
    pub loss: Tensor,
    pub logits: Tensor,
}

/// A trainable encoder-decoder language model.
///
/// `train` switches dropout on (as `model.train()` in PyTorch); parity tests and generation use
/// `false`. The trainer optimises `var_store().trainable_variables()` (AdamW).
pub trait Seq2SeqModel {
    fn special_tokens(&self) -> SpecialTokens;
    fn vocab_size(&self) -> i64;
    fn num_decoder_layers(&self) -> usize;
    fn device(&self) -> Device;
    /// The variables (HF names) of the model; AdamW is built on it.
    fn var_store(&self) -> &nn::VarStore;
    /// Writes `config.json` and `model.safetensors` (Hugging Face names) into `dir`.
    fn save_pretrained(&self, dir: &Path) -> anyhow::Result<()>;

    /// The linear layers LoRA may adapt, by transformers module name (the weight's name without
    /// `.weight`); empty for a model that does not support LoRA.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        Vec::new()
    }

    /// The module names LoRA adapts when no targets are given.
    fn lora_default_targets(&self) -> &'static [&'static str] {
        &[]
    }

    /// Encoder output `[batch, src_len, d_model]`. `attention_mask` is 1 for tokens, 0 for padding.
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor;

    /// Decoder logits `[batch, new_len, vocab]` for `decoder_input_ids` `[batch, new_len]`.
    ///
    /// Without a cache the ids are the whole decoder input (teacher forcing, causal mask). With a
    /// cache they are the *new* tokens only: their positions start at `cache.seq_len()`, their
    /// keys/values are appended to the cache, and cross-attention keys/values are computed once.
    /// `decoder_attention_mask` (`[batch, past + new_len]`, 1 = attend) masks decoder keys on top
    /// of the causal mask; `None` means causal only (transformers' default).
    fn decode(
        &self,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        encoder_states: &Tensor,
        encoder_mask: &Tensor,
        cache: Option<&mut DecoderCache>,
        train: bool,
    ) -> Tensor;

    /// The decoder key mask transformers uses when it builds decoder inputs from labels:
    /// `T5ForConditionalGeneration` passes none (causal only), `EncoderDecoderModel` masks the pad
    /// positions (`decoder_input_ids != pad`). Models override this to match their reference.
    fn decoder_mask_for_labels(&self, _decoder_input_ids: &Tensor) -> Option<Tensor> {
        None
    }

    /// One incremental decoding step (inference, no dropout): logits of the new tokens.
    fn decode_step(
        &self,
        decoder_input_ids: &Tensor,
        encoder_states: &Tensor,
        encoder_mask: &Tensor,
        cache: &mut DecoderCache,
    ) -> Tensor {
        self.decode(decoder_input_ids, None, encoder_states, encoder_mask, Some(cache), false)
    }

    /// Teacher-forced forward pass with `labels` `[batch, tgt_len]` (`-100` = ignored): decoder
    /// inputs are the shifted labels, the loss is the mean cross-entropy over non-ignored labels.
    fn forward_labels(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Seq2SeqOutput {
        let device = self.device();
        let input_ids = input_ids.to_device(device);
        let attention_mask = attention_mask.to_device(device);
        let labels = labels.to_device(device).to_kind(Kind::Int64);
        let tokens = self.special_tokens();
        let decoder_input_ids = shift_right(&labels, tokens.decoder_start, tokens.pad);
        let decoder_mask = self.decoder_mask_for_labels(&decoder_input_ids);
        let encoder_states = self.encode(&input_ids, &attention_mask, train);
        let logits = self.decode(
            &decoder_input_ids,
            decoder_mask.as_ref(),
            &encoder_states,
            &attention_mask,
            None,
            train,
        );
        let loss = seq2seq_loss(&logits, &labels);
        Seq2SeqOutput { loss, logits }
    }

    /// The training loss (scalar tensor with a graph when gradients are on).
    fn forward_train(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Tensor {
        self.forward_labels(input_ids, attention_mask, labels, train).loss
    }
}

/// transformers' `_shift_right` / `shift_tokens_right`: `[start, l0, l1, ...]` with `-100` → pad.
pub fn shift_right(labels: &Tensor, decoder_start: i64, pad: i64) -> Tensor {
    let (batch, len) = labels.size2().expect("labels must be [batch, tgt_len]");
    let start = Tensor::full([batch, 1], decoder_start, (Kind::Int64, labels.device()));
    let shifted = Tensor::cat(&[start, labels.narrow(1, 0, len - 1).to_kind(Kind::Int64)], 1);
    shifted.masked_fill(&shifted.eq(IGNORE_INDEX), pad)
}

/// Mean cross-entropy over the labels that are not [`IGNORE_INDEX`], computed in f32.
pub fn seq2seq_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let vocab = *logits.size().last().expect("logits [.., vocab]");
    logits.to_kind(Kind::Float).view([-1, vocab]).cross_entropy_loss::<Tensor>(
        &labels.to_device(logits.device()).to_kind(Kind::Int64).view([-1]),
        None,
        Reduction::Mean,
        IGNORE_INDEX,
        0.0,
    )
}

/// Batched generation with a KV cache.
///
/// Returns, per row, the generated tokens *after* the decoder start token, up to and including EOS
/// when the row produced it (no padding). Rows stop independently at EOS; the loop stops when all
/// rows have or after `cfg.max_new_tokens` steps. Greedy when `cfg.temperature == 0`, otherwise
/// seeded temperature/top-p sampling (one [`SplitMix64`] for the batch, drawn row by row).
pub fn generate<M: Seq2SeqModel + ?Sized>(
    model: &M,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    cfg: &SamplingConfig,
) -> Vec<Vec<i64>> {
    tch::no_grad(|| {
        let device = model.device();
        let input_ids = input_ids.to_device(device).to_kind(Kind::Int64);
        let attention_mask = attention_mask.to_device(device);
        let batch = input_ids.size()[0] as usize;
        let mut out: Vec<Vec<i64>> = vec![Vec::new(); batch];
        if batch == 0 || cfg.max_new_tokens == 0 {
            return out;
        }
        let tokens = model.special_tokens();
        let encoder_states = model.encode(&input_ids, &attention_mask, false);
        let mut cache = DecoderCache::new(model.num_decoder_layers());
        // transformers' repetition penalty looks at the decoder `input_ids`, which start with the
        // decoder start token (for T5 that is the pad id, which therefore gets penalised too).
        let mut seen: Vec<Vec<i64>> = vec![vec![tokens.decoder_start]; batch];
        let mut finished = vec![false; batch];
        let mut rng = SplitMix64::new(cfg.seed);
        let mut next = Tensor::full([batch as i64, 1], tokens.decoder_start, (Kind::Int64, device));
        for _ in 0..cfg.max_new_tokens {
            let logits = model.decode_step(&next, &encoder_states, &attention_mask, &mut cache);
            let last = logits.select(1, -1);
            let chosen = select_batch(&last, &seen, &finished, tokens.pad, cfg, &mut rng);
            for (row, &tok) in chosen.iter().enumerate() {
                if finished[row] {
                    continue;
                }
                out[row].push(tok);
                seen[row].push(tok);
                if tok == tokens.eos {
                    finished[row] = true;
                }
            }
            if finished.iter().all(|&f| f) {
                break;
            }
            // Finished rows keep decoding pad (as transformers does); their outputs are ignored.
            next = Tensor::from_slice(&chosen).view([batch as i64, 1]).to_device(device);
        }
        out
    })
}

// ------------------------------------------------------------------------------------------------
// Shared building blocks
// ------------------------------------------------------------------------------------------------

/// The additive mask value: transformers adds `torch.finfo(float32).min` to masked scores, which
/// softmax turns into an exact zero weight (unlike `-inf`, a fully masked row stays finite).
pub const MASK_VALUE: f64 = f32::MIN as f64;

/// `[batch, src]` 0/1 key mask → additive `[batch, 1, 1, src]` f32 mask (0 or [`MASK_VALUE`]).
pub fn additive_key_mask(mask: &Tensor) -> Tensor {
    (mask.eq(0).to_kind(Kind::Float) * MASK_VALUE).unsqueeze(1).unsqueeze(1)
}

/// Additive causal mask `[1, 1, new, past + new]` for queries at positions `past..past + new`,
/// combined with an optional `[batch, past + new]` key mask. `None` when nothing is masked (a
/// single new token with no key mask), which saves an addition per layer.
pub fn causal_additive_mask(
    new_len: i64,
    past: i64,
    key_mask: Option<&Tensor>,
    device: Device,
) -> Option<Tensor> {
    let total = past + new_len;
    // Built as a boolean "blocked" mask first and converted once, as transformers' mask utilities
    // do, so a position blocked twice gets MASK_VALUE rather than an overflow to -inf.
    let mut blocked = if new_len > 1 {
        let q = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1);
        let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
        // Key j is visible from query i iff j <= i.
        Some(k.gt_tensor(&q).unsqueeze(0).unsqueeze(0))
    } else {
        None
    };
    if let Some(m) = key_mask {
        let (b, len) = m.size2().expect("decoder mask [batch, past + new]");
        assert_eq!(len, total, "decoder attention mask must cover past and new positions");
        let km = m.to_device(device).eq(0).view([b, 1, 1, len]);
        blocked = Some(match blocked {
            Some(c) => c.logical_or(&km),
            None => km,
        });
    }
    blocked.map(|b| b.to_kind(Kind::Float) * MASK_VALUE)
}

/// Reads every tensor of a safetensors file (or of all shards listed in a
/// `*.safetensors.index.json`) into a name → tensor map on the CPU.
pub fn read_safetensors_map(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".index.json") {
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        let shards: BTreeSet<String> = index["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", path.display()))?
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut all = HashMap::new();
        for shard in shards {
            all.extend(read_safetensors_map(&dir.join(shard))?);
        }
        return Ok(all);
    }
    let tensors = Tensor::read_safetensors(path)
        .with_context(|| format!("reading safetensors {}", path.display()))?;
    Ok(tensors.into_iter().collect())
}

/// The weights file of a model directory: `model.safetensors`, else a sharded index.
pub fn weights_file_in(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    for name in ["model.safetensors", "model.safetensors.index.json"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("no model.safetensors (or model.safetensors.index.json) in {}", dir.display())
}

/// What a weight load did, for logging: which checkpoint tensors were not used.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Variables filled from the checkpoint.
    pub loaded: Vec<String>,
    /// Variables the checkpoint did not have (left as they were).
    pub missing: Vec<String>,
    /// Checkpoint tensors no variable asked for.
    pub unused: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{file}: tensor {name} has shape {found:?}, the model expects {expected:?}")]
    Shape { file: String, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{file}: {} model tensor(s) missing, e.g. {}", missing.len(), missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    Missing { file: String, missing: Vec<String> },
}

/// Copies checkpoint tensors into `vs` variables. `lookup(var_name)` lists the checkpoint names to
/// try for a variable, in order (aliases of tied or renamed weights). Shapes must match exactly;
/// dtype is converted to the variable's. `strict`: every variable must be found.
pub fn load_into_var_store(
    vs: &nn::VarStore,
    tensors: &HashMap<String, Tensor>,
    lookup: &dyn Fn(&str) -> Vec<String>,
    strict: bool,
    file: &str,
) -> anyhow::Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut used = BTreeSet::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        let found = lookup(&name).into_iter().find(|n| tensors.contains_key(n));
        match found {
            Some(src_name) => {
                let src = &tensors[&src_name];
                if src.size() != var.size() {
                    return Err(WeightsError::Shape {
                        file: file.into(),
                        name: src_name,
                        expected: var.size(),
                        found: src.size(),
                    }
                    .into());
                }
                tch::no_grad(|| var.copy_(&src.to_kind(var.kind())));
                used.insert(src_name);
                report.loaded.push(name);
            }
            None => report.missing.push(name),
        }
    }
    report.unused = tensors.keys().filter(|k| !used.contains(*k)).cloned().collect();
    report.unused.sort();
    if strict && !report.missing.is_empty() {
        return Err(WeightsError::Missing { file: file.into(), missing: report.missing }.into());
    }
    Ok(report)
}

/// Writes all variables of `vs` (their names are the Hugging Face names) as one safetensors file.
pub fn save_var_store(vs: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&vars, path).with_context(|| format!("writing {}", path.display()))
}

/// Deterministic `N(0, std^2)` f32 values for the parameter `name`, independent of libtorch's global
/// generator (which other threads, e.g. parallel tests, also draw from) and of the device.
///
/// The stream is [`SplitMix64`] (SplitMix64) seeded with `seed ^ fnv1a64(name)`; consecutive pairs of
/// uniforms `u1, u2` give, by Box-Muller, `r = sqrt(-2 ln(1 - u1))`, `t = 2 pi u2`, the values
/// `f32(std * r * cos t)` and `f32(std * r * sin t)`, in that order, filling the tensor row-major.
/// `scripts/parity/make_seq2seq_fixtures.py` (`seeded_normal`) computes the same numbers with numpy.
pub fn seeded_normal(shape: &[i64], std: f64, seed: u64, name: &str) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let mut rng = SplitMix64::new(seed ^ fnv1a64(name.as_bytes()));
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (rng.next_f64(), rng.next_f64());
        let r = (-2.0 * (1.0 - u1).ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((std * r * t.cos()) as f32);
        out.push((std * r * t.sin()) as f32);
    }
    out.truncate(n);
    Tensor::from_slice(&out).view(shape)
}

/// A dense layer `y = x W^T (+ b)` with PyTorch's `[out, in]` weight layout.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA adapter while a LoRA training runs ([`super::lora`]).
    pub lora: Option<super::lora::LoraAdapter>,
}

impl Linear {
    /// In the precision [`super::precision::linear`] picks (f32 unless autocast or bf16 weights),
    /// plus the LoRA adapter's term when one is attached.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = super::precision::linear(x, &self.weight, self.bias.as_ref());
        super::lora::adapted(y, x, self.lora.as_ref())
    }
}

/// `[batch, len, heads * head_dim]` → `[batch, heads, len, head_dim]`.
pub fn split_heads(x: &Tensor, heads: i64, head_dim: i64) -> Tensor {
    let (b, t, _) = x.size3().expect("[batch, len, hidden]");
    x.view([b, t, heads, head_dim]).transpose(1, 2)
}

/// `[batch, heads, len, head_dim]` → `[batch, len, heads * head_dim]`.
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, t, d) = x.size4().expect("[batch, heads, len, head_dim]");
    x.transpose(1, 2).contiguous().view([b, t, h * d])
}

/// Self-attention keys/values for the new positions, appended to the layer cache when there is one
/// (the cache then holds all positions so far and the returned tensors are the full history).
pub fn cached_self_kv(k: Tensor, v: Tensor, cache: Option<&mut LayerCache>) -> (Tensor, Tensor) {
    match cache {
        None => (k, v),
        Some(c) => {
            let (k, v) = match c.self_kv.take() {
                Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
                None => (k, v),
            };
            c.self_kv = Some((k.shallow_clone(), v.shallow_clone()));
            (k, v)
        }
    }
}

/// Cross-attention keys/values: taken from the cache when present, else computed by `compute` (and
/// stored when there is a cache), so the encoder states are projected once per generation.
pub fn cached_cross_kv(
    cache: Option<&mut LayerCache>,
    compute: impl FnOnce() -> (Tensor, Tensor),
) -> (Tensor, Tensor) {
    match cache {
        None => compute(),
        Some(c) => {
            if let Some((k, v)) = &c.cross_kv {
                return (k.shallow_clone(), v.shallow_clone());
            }
            let (k, v) = compute();
            c.cross_kv = Some((k.shallow_clone(), v.shallow_clone()));
            (k, v)
        }
    }
}

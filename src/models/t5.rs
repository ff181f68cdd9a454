//! T5 (v1.0, e.g. `t5-small`) and T5 v1.1 / flan-T5 (the Prompt2Model paper's student) in tch,
//! numerically matching transformers' `T5ForConditionalGeneration` (5.x).
//!
//! What distinguishes T5 from a textbook transformer, and is reproduced here:
//! - RMS layer norm (no mean subtraction, no bias), variance accumulated in f32, pre-norm blocks;
//! - no absolute positions: a learned bias per (relative-position bucket, head) is added to the
//!   attention scores. Only the first layer of each stack owns the table; the bias it computes is
//!   reused by the other layers. Buckets are bidirectional in the encoder, causal in the decoder;
//!   cross-attention has no position bias;
//! - attention scores are *not* scaled by `1/sqrt(d_kv)`: T5 folds that factor into the
//!   initialisation of the query projection (std `(d_model * d_kv)^-0.5`);
//! - feed-forward `relu` (v1.0) or gated GELU (`gated-gelu`, v1.1/flan: `gelu_new(wi_0 x) * wi_1 x`
//!   with the tanh approximation);
//! - one embedding matrix `shared` for encoder and decoder inputs. With `tie_word_embeddings`
//!   (v1.0) it is also the output projection and the decoder output is first multiplied by
//!   `d_model^-0.5`; v1.1/flan have an untied `lm_head` and no rescaling.
//!
//! Variables carry the Hugging Face names (`shared.weight`,
//! `encoder.block.0.layer.0.SelfAttention.q.weight`, ..., `lm_head.weight`), so HF safetensors load
//! directly and [`T5ForConditionalGeneration::save_pretrained`] writes files transformers can load.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

pub use crate::models::activation::Activation;
use crate::models::seq2seq::{
    additive_key_mask, cached_cross_kv, cached_self_kv, causal_additive_mask, load_into_var_store,
    merge_heads, read_safetensors_map, save_var_store, seeded_normal, split_heads, weights_file_in,
    DecoderCache, LayerCache, Linear, LoadReport, Seq2SeqModel, SpecialTokens,
};

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

fn d_32128() -> i64 {
    32128
}
fn d_32() -> i64 {
    32
}
fn d_128() -> i64 {
    128
}
fn d_dropout() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-6
}
fn d_one() -> f64 {
    1.0
}
fn d_relu() -> String {
    "relu".into()
}
fn d_true() -> bool {
    true
}
fn d_eos() -> i64 {
    1
}
fn d_model_type() -> String {
    "t5".into()
}

/// transformers allows `eos_token_id` to be a list; generation here stops at one id, the first.
fn int_or_first<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrList {
        Int(i64),
        List(Vec<i64>),
    }
    match IntOrList::deserialize(d)? {
        IntOrList::Int(i) => Ok(i),
        IntOrList::List(v) => {
            v.first().copied().ok_or_else(|| serde::de::Error::custom("empty eos_token_id list"))
        }
    }
}

/// The fields of a Hugging Face T5 `config.json` that the model uses (defaults as in
/// `transformers.T5Config`). Unknown fields are kept in `extra` and written back on save.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "d_model_type")]
    pub model_type: String,
    #[serde(default = "d_32128")]
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    /// `None` → same as `num_layers`.
    #[serde(default)]
    pub num_decoder_layers: Option<i64>,
    pub num_heads: i64,
    #[serde(default = "d_32")]
    pub relative_attention_num_buckets: i64,
    #[serde(default = "d_128")]
    pub relative_attention_max_distance: i64,
    #[serde(default = "d_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_one")]
    pub initializer_factor: f64,
    /// `"relu"` (v1.0), `"gated-gelu"` (v1.1/flan), or generally `[gated-]{relu,gelu,gelu_new,silu}`.
    #[serde(default = "d_relu")]
    pub feed_forward_proj: String,
    /// v1.0: true (shared input/output embedding, output rescaled by `d_model^-0.5`); flan: false.
    /// A missing key means true, as in transformers.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: i64,
    /// An integer, or a list in some configs (the first id is used).
    #[serde(default = "d_eos", deserialize_with = "int_or_first")]
    pub eos_token_id: i64,
    /// T5 starts decoding with the pad id; transformers' default when absent is `pad_token_id`.
    #[serde(default)]
    pub decoder_start_token_id: Option<i64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl T5Config {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: T5Config = serde_json::from_str(&text)
            .with_context(|| format!("parsing T5 config {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.feed_forward()?;
        anyhow::ensure!(
            self.d_model > 0 && self.d_kv > 0 && self.num_heads > 0 && self.d_ff > 0,
            "T5 config: sizes must be positive"
        );
        anyhow::ensure!(
            self.relative_attention_num_buckets >= 4,
            "T5 config: need at least 4 relative attention buckets"
        );
        Ok(())
    }

    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    pub fn decoder_start(&self) -> i64 {
        self.decoder_start_token_id.unwrap_or(self.pad_token_id)
    }

    /// `(gated, activation)` parsed as transformers does: `"gated-gelu"` is the v1.1 special case
    /// meaning `gelu_new`; otherwise `"[gated-]ACT"`.
    pub fn feed_forward(&self) -> anyhow::Result<(bool, Activation)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => anyhow::bail!(
                "T5 config: feed_forward_proj {:?} is not `ACT` or `gated-ACT`",
                self.feed_forward_proj
            ),
        };
        let act = if self.feed_forward_proj == "gated-gelu" {
            Activation::GeluNew
        } else {
            Activation::parse(act)?
        };
        Ok((gated, act))
    }

    /// A T5 v1.0-style configuration (relu, tied) of the given size, for tests.
    pub fn tiny(vocab_size: i64, d_model: i64, num_layers: i64, num_heads: i64) -> Self {
        T5Config {
            model_type: d_model_type(),
            vocab_size,
            d_model,
            d_kv: d_model / num_heads,
            d_ff: 2 * d_model,
            num_layers,
            num_decoder_layers: None,
            num_heads,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            initializer_factor: 1.0,
            feed_forward_proj: "relu".into(),
            tie_word_embeddings: true,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: Some(0),
            extra: Default::default(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Layers
// ------------------------------------------------------------------------------------------------

/// T5's RMS norm: `w * x / sqrt(mean(x^2) + eps)`, statistics in f32 (as transformers, so that
/// half-precision activations do not lose the variance).
#[derive(Debug)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(p: nn::Path, d: i64, eps: f64) -> Self {
        T5LayerNorm { weight: p.var("weight", &[d], nn::Init::Const(1.0)), eps }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.to_kind(Kind::Float).pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>);
        let x = x * (variance + self.eps).rsqrt();
        let x = if matches!(self.weight.kind(), Kind::Half | Kind::BFloat16) {
            x.to_kind(self.weight.kind())
        } else {
            x
        };
        &self.weight * x
    }
}

/// Weights are created zero-filled; [`T5ForConditionalGeneration::new`] draws them afterwards
/// (see [`init_std`]) and loading overwrites them.
fn no_bias_linear(p: nn::Path, in_dim: i64, out_dim: i64) -> Linear {
    Linear {
        weight: p.var("weight", &[out_dim, in_dim], nn::Init::Const(0.0)),
        bias: None,
        lora: None,
    }
}

/// Relative position → bucket, exactly transformers' `T5Attention._relative_position_bucket`
/// (same tensor ops in the same order, so the float log rounds identically).
///
/// Half of the buckets (per direction when bidirectional) are exact offsets `0..max_exact`; the
/// rest cover `max_exact..max_distance` logarithmically; farther offsets share the last bucket.
/// In the causal case only keys at or before the query exist, so only `memory - query <= 0` counts.
pub fn relative_position_bucket(
    relative_position: &Tensor,
    bidirectional: bool,
    num_buckets: i64,
    max_distance: i64,
) -> Tensor {
    let mut num_buckets = num_buckets;
    let (mut buckets, rel) = if bidirectional {
        num_buckets /= 2;
        (relative_position.gt(0).to_kind(Kind::Int64) * num_buckets, relative_position.abs())
    } else {
        (relative_position.zeros_like(), -relative_position.clamp_max(0))
    };
    let max_exact = num_buckets / 2;
    let is_small = rel.lt(max_exact);
    let large = (rel.to_kind(Kind::Float) / max_exact).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (num_buckets - max_exact);
    let large = (large.to_kind(Kind::Int64) + max_exact).clamp_max(num_buckets - 1);
    buckets += rel.where_self(&is_small, &large);
    buckets
}

#[derive(Debug)]
struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `[num_buckets, heads]`, first layer of a stack only.
    relative_attention_bias: Option<Tensor>,
    heads: i64,
    d_kv: i64,
    dropout: f64,
}

impl T5Attention {
    fn new(p: nn::Path, cfg: &T5Config, has_bias: bool) -> Self {
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        T5Attention {
            q: no_bias_linear(&p / "q", d, inner),
            k: no_bias_linear(&p / "k", d, inner),
            v: no_bias_linear(&p / "v", d, inner),
            o: no_bias_linear(&p / "o", inner, d),
            relative_attention_bias: has_bias.then(|| {
                (&p / "relative_attention_bias").var(
                    "weight",
                    &[cfg.relative_attention_num_buckets, cfg.num_heads],
                    nn::Init::Const(0.0),
                )
            }),
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            dropout: cfg.dropout_rate,
        }
    }

    /// `[1, heads, q_len, k_len]` position bias for queries at `past..past + q_len`.
    fn compute_bias(
        &self,
        cfg: &T5Config,
        q_len: i64,
        k_len: i64,
        past: i64,
        bidirectional: bool,
    ) -> Tensor {
        let table = self.relative_attention_bias.as_ref().expect("first layer owns the bias table");
        let device = table.device();
        let context = Tensor::arange(q_len, (Kind::Int64, device)).unsqueeze(1) + past;
        let memory = Tensor::arange(k_len, (Kind::Int64, device)).unsqueeze(0);
        let buckets = relative_position_bucket(
            &(memory - context),
            bidirectional,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        );
        Tensor::embedding(table, &buckets, -1, false, false).permute([2, 0, 1]).unsqueeze(0)
    }

    /// Scores `q k^T + bias` (unscaled), softmax in f32, dropout, weighted values, output projection.
    /// `bias` already contains the additive mask.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        // Functional adds (not `+=`): libtorch's in-place ops would clash with autograd's saved tensors.
        let scores = q.matmul(&k.transpose(-1, -2));
        let scores = match bias {
            Some(b) => scores + b,
            None => scores,
        };
        let weights =
            scores.softmax(-1, Kind::Float).to_kind(q.kind()).dropout(self.dropout, train);
        self.o.forward(&merge_heads(&weights.matmul(v)))
    }

    fn self_attention(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let q = split_heads(&self.q.forward(x), self.heads, self.d_kv);
        let k = split_heads(&self.k.forward(x), self.heads, self.d_kv);
        let v = split_heads(&self.v.forward(x), self.heads, self.d_kv);
        let (k, v) = cached_self_kv(k, v, cache);
        self.attend(&q, &k, &v, bias, train)
    }

    fn cross_attention(
        &self,
        x: &Tensor,
        encoder_states: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let q = split_heads(&self.q.forward(x), self.heads, self.d_kv);
        let (k, v) = cached_cross_kv(cache, || {
            (
                split_heads(&self.k.forward(encoder_states), self.heads, self.d_kv),
                split_heads(&self.v.forward(encoder_states), self.heads, self.d_kv),
            )
        });
        // Cross-attention has no position bias: transformers adds zeros plus the encoder mask.
        self.attend(&q, &k, &v, Some(mask), train)
    }
}

#[derive(Debug)]
struct T5FeedForward {
    wi: Option<Linear>,
    wi_0: Option<Linear>,
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
    dropout: f64,
}

impl T5FeedForward {
    fn new(p: nn::Path, cfg: &T5Config) -> anyhow::Result<Self> {
        let (gated, act) = cfg.feed_forward()?;
        let (wi, wi_0, wi_1) = if gated {
            (
                None,
                Some(no_bias_linear(&p / "wi_0", cfg.d_model, cfg.d_ff)),
                Some(no_bias_linear(&p / "wi_1", cfg.d_model, cfg.d_ff)),
            )
        } else {
            (Some(no_bias_linear(&p / "wi", cfg.d_model, cfg.d_ff)), None, None)
        };
        Ok(T5FeedForward {
            wi,
            wi_0,
            wi_1,
            wo: no_bias_linear(&p / "wo", cfg.d_ff, cfg.d_model),
            act,
            dropout: cfg.dropout_rate,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.act.apply(&wi.forward(x)),
            (None, Some(w0), Some(w1)) => self.act.apply(&w0.forward(x)) * w1.forward(x),
            _ => unreachable!("feed-forward built either plain or gated"),
        };
        self.wo.forward(&h.dropout(self.dropout, train))
    }
}

/// One T5 block: `layer.0` self-attention, (decoder) `layer.1` cross-attention, last `layer` FF;
/// each sub-layer is `x + dropout(sublayer(rms_norm(x)))`.
#[derive(Debug)]
struct T5Block {
    self_attn: T5Attention,
    self_norm: T5LayerNorm,
    cross: Option<(T5Attention, T5LayerNorm)>,
    ff: T5FeedForward,
    ff_norm: T5LayerNorm,
    dropout: f64,
}

impl T5Block {
    fn new(p: nn::Path, cfg: &T5Config, is_decoder: bool, has_bias: bool) -> anyhow::Result<Self> {
        let l = &p / "layer";
        let eps = cfg.layer_norm_epsilon;
        let self_attn = T5Attention::new(&l / 0 / "SelfAttention", cfg, has_bias);
        let self_norm = T5LayerNorm::new(&l / 0 / "layer_norm", cfg.d_model, eps);
        let (cross, ff_idx) = if is_decoder {
            (
                Some((
                    T5Attention::new(&l / 1 / "EncDecAttention", cfg, false),
                    T5LayerNorm::new(&l / 1 / "layer_norm", cfg.d_model, eps),
                )),
                2,
            )
        } else {
            (None, 1)
        };
        let ff = T5FeedForward::new(&l / ff_idx / "DenseReluDense", cfg)?;
        let ff_norm = T5LayerNorm::new(&l / ff_idx / "layer_norm", cfg.d_model, eps);
        Ok(T5Block { self_attn, self_norm, cross, ff, ff_norm, dropout: cfg.dropout_rate })
    }

    fn forward(
        &self,
        x: &Tensor,
        self_bias: Option<&Tensor>,
        enc: Option<(&Tensor, &Tensor)>,
        mut cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let h = self.self_attn.self_attention(
            &self.self_norm.forward(x),
            self_bias,
            cache.as_deref_mut(),
            train,
        );
        let mut x = x + h.dropout(self.dropout, train);
        if let (Some((attn, norm)), Some((states, mask))) = (&self.cross, enc) {
            let h = attn.cross_attention(&norm.forward(&x), states, mask, cache, train);
            x = &x + h.dropout(self.dropout, train);
        }
        let h = self.ff.forward(&self.ff_norm.forward(&x), train);
        &x + h.dropout(self.dropout, train)
    }
}

#[derive(Debug)]
struct T5Stack {
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    is_decoder: bool,
    dropout: f64,
}

impl T5Stack {
    fn new(p: nn::Path, cfg: &T5Config, is_decoder: bool) -> anyhow::Result<Self> {
        let n = if is_decoder { cfg.decoder_layers() } else { cfg.num_layers };
        let blocks = (0..n)
            .map(|i| T5Block::new(&p / "block" / i, cfg, is_decoder, i == 0))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(T5Stack {
            blocks,
            final_layer_norm: T5LayerNorm::new(
                &p / "final_layer_norm",
                cfg.d_model,
                cfg.layer_norm_epsilon,
            ),
            is_decoder,
            dropout: cfg.dropout_rate,
        })
    }
}

/// transformers' T5 `_init_weights` standard deviation for a variable, `None` for the layer norms
/// (constant `initializer_factor`). The query's `(d_model * d_kv)^-0.5` is where T5 puts the
/// `1/sqrt(d_kv)` that other transformers apply to the scores.
pub fn init_std(cfg: &T5Config, name: &str) -> Option<f64> {
    let f = cfg.initializer_factor;
    let pow = |x: i64| f * (x as f64).powf(-0.5);
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let last = module.rsplit('.').next().unwrap_or(module);
    match last {
        "shared" | "lm_head" => Some(f),
        "q" => Some(pow(cfg.d_model * cfg.d_kv)),
        "k" | "v" | "relative_attention_bias" | "wi" | "wi_0" | "wi_1" => Some(pow(cfg.d_model)),
        "o" => Some(pow(cfg.num_heads * cfg.d_kv)),
        "wo" => Some(pow(cfg.d_ff)),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------------

/// `T5ForConditionalGeneration`: shared embedding, encoder stack, decoder stack, LM head.
pub struct T5ForConditionalGeneration {
    vs: nn::VarStore,
    config: T5Config,
    shared: Tensor,
    encoder: T5Stack,
    decoder: T5Stack,
    /// Untied output projection (v1.1/flan); `None` when tied to `shared`.
    lm_head: Option<Tensor>,
}

impl std::fmt::Debug for T5ForConditionalGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5ForConditionalGeneration")
            .field("config", &self.config)
            .field("device", &self.vs.device())
            .finish()
    }
}

impl T5ForConditionalGeneration {
    /// The architecture with zero-filled weights (layer norms at 1), to be loaded or initialised.
    fn build(config: T5Config, device: Device) -> anyhow::Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let shared = (&root / "shared").var(
            "weight",
            &[config.vocab_size, config.d_model],
            nn::Init::Const(0.0),
        );
        let encoder = T5Stack::new(&root / "encoder", &config, false)?;
        let decoder = T5Stack::new(&root / "decoder", &config, true)?;
        let lm_head = (!config.tie_word_embeddings).then(|| {
            (&root / "lm_head").var(
                "weight",
                &[config.vocab_size, config.d_model],
                nn::Init::Const(0.0),
            )
        });
        Ok(T5ForConditionalGeneration { vs, config, shared, encoder, decoder, lm_head })
    }

    /// A randomly initialised model with transformers' `_init_weights` distributions ([`init_std`]),
    /// drawn by [`seeded_normal`] from `seed` and each variable's name: reproducible, and
    /// independent of libtorch's global generator and of the device.
    pub fn new(config: T5Config, device: Device, seed: u64) -> anyhow::Result<Self> {
        let model = Self::build(config, device)?;
        tch::no_grad(|| {
            for (name, mut var) in model.vs.variables() {
                match init_std(&model.config, &name) {
                    Some(std) => {
                        var.copy_(&seeded_normal(&var.size(), std, seed, &name).to_kind(var.kind()))
                    }
                    None => {
                        let _ = var.fill_(model.config.initializer_factor);
                    }
                }
            }
        });
        Ok(model)
    }

    /// Loads `config.json` and `model.safetensors` (or a sharded index) from a Hugging Face model
    /// directory. Every model variable must be in the checkpoint.
    pub fn from_pretrained(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let mut model = Self::build(config, device)?;
        model.load_safetensors(&weights_file_in(dir)?, true)?;
        Ok(model)
    }

    /// Fills the variables from a safetensors file with HF names. The shared embedding is also
    /// found as `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` (tied copies some
    /// exporters keep). Unused tensors (e.g. the `EncDecAttention.relative_attention_bias` that old
    /// checkpoints carry and transformers ignores) are listed in the report.
    pub fn load_safetensors(&mut self, path: &Path, strict: bool) -> anyhow::Result<LoadReport> {
        let tensors = read_safetensors_map(path)?;
        self.load_tensors(&tensors, strict, &path.display().to_string())
    }

    pub fn load_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        strict: bool,
        source: &str,
    ) -> anyhow::Result<LoadReport> {
        let lookup = |name: &str| -> Vec<String> {
            if name == "shared.weight" {
                vec![
                    name.into(),
                    "encoder.embed_tokens.weight".into(),
                    "decoder.embed_tokens.weight".into(),
                ]
            } else {
                vec![name.into()]
            }
        };
        load_into_var_store(&self.vs, tensors, &lookup, strict, source)
    }

    /// Writes `config.json` and `model.safetensors` (HF names; the tied head is not duplicated,
    /// transformers re-ties it on load).
    pub fn save_pretrained(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cfg = serde_json::to_value(&self.config)?;
        let obj = cfg.as_object_mut().expect("config is an object");
        obj.entry("architectures")
            .or_insert_with(|| serde_json::json!(["T5ForConditionalGeneration"]));
        obj.entry("is_encoder_decoder").or_insert(serde_json::Value::Bool(true));
        obj.insert("num_decoder_layers".into(), self.config.decoder_layers().into());
        obj.insert("decoder_start_token_id".into(), self.config.decoder_start().into());
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
        save_var_store(&self.vs, &dir.join("model.safetensors"))
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.shared, &ids.to_kind(Kind::Int64), -1, false, false)
    }
}

impl Seq2SeqModel for T5ForConditionalGeneration {
    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            decoder_start: self.config.decoder_start(),
            eos: self.config.eos_token_id,
            pad: self.config.pad_token_id,
        }
    }

    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn num_decoder_layers(&self) -> usize {
        self.decoder.blocks.len()
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn save_pretrained(&self, dir: &Path) -> anyhow::Result<()> {
        T5ForConditionalGeneration::save_pretrained(self, dir)
    }

    /// Every attention projection (self and cross) and feed-forward matrix of both stacks.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (prefix, stack) in [("encoder", &mut self.encoder), ("decoder", &mut self.decoder)] {
            for (i, block) in stack.blocks.iter_mut().enumerate() {
                let p = format!("{prefix}.block.{i}.layer");
                let T5Block { self_attn, cross, ff, .. } = block;
                let ff_name = format!("{p}.{}.DenseReluDense", if cross.is_some() { 2 } else { 1 });
                let attentions = std::iter::once((format!("{p}.0.SelfAttention"), self_attn))
                    .chain(cross.as_mut().map(|(c, _)| (format!("{p}.1.EncDecAttention"), c)));
                for (name, att) in attentions {
                    let T5Attention { q, k, v, o, .. } = att;
                    out.extend([
                        (format!("{name}.q"), q),
                        (format!("{name}.k"), k),
                        (format!("{name}.v"), v),
                        (format!("{name}.o"), o),
                    ]);
                }
                let T5FeedForward { wi, wi_0, wi_1, wo, .. } = ff;
                for (n, l) in [("wi", wi), ("wi_0", wi_0), ("wi_1", wi_1)] {
                    if let Some(l) = l {
                        out.push((format!("{ff_name}.{n}"), l));
                    }
                }
                out.push((format!("{ff_name}.wo"), wo));
            }
        }
        out
    }

    fn lora_default_targets(&self) -> &'static [&'static str] {
        &["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]
    }

    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let device = self.device();
        let input_ids = input_ids.to_device(device);
        let len = input_ids.size()[1];
        let stack = &self.encoder;
        debug_assert!(!stack.is_decoder);
        // Position bias (first layer's table) plus the padding mask, computed once and shared by all
        // layers, as transformers passes the first layer's bias down the stack.
        let bias = stack.blocks[0].self_attn.compute_bias(&self.config, len, len, 0, true)
            + additive_key_mask(&attention_mask.to_device(device));
        let mut x = self.embed(&input_ids).dropout(self.config.dropout_rate, train);
        for block in &stack.blocks {
            x = block.forward(&x, Some(&bias), None, None, train);
        }
        stack.final_layer_norm.forward(&x).dropout(stack.dropout, train)
    }

    fn decode(
        &self,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        encoder_states: &Tensor,
        encoder_mask: &Tensor,
        mut cache: Option<&mut DecoderCache>,
        train: bool,
    ) -> Tensor {
        let device = self.device();
        let ids = decoder_input_ids.to_device(device);
        let new_len = ids.size()[1];
        let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        let stack = &self.decoder;
        debug_assert!(stack.is_decoder);
        let self_bias = stack.blocks[0].self_attn.compute_bias(
            &self.config,
            new_len,
            past + new_len,
            past,
            false,
        );
        let self_bias = match causal_additive_mask(new_len, past, decoder_attention_mask, device) {
            Some(m) => self_bias + m,
            None => self_bias,
        };
        let cross_mask = additive_key_mask(&encoder_mask.to_device(device));
        let encoder_states = encoder_states.to_device(device);
        let mut x = self.embed(&ids).dropout(self.config.dropout_rate, train);
        for (i, block) in stack.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(
                &x,
                Some(&self_bias),
                Some((&encoder_states, &cross_mask)),
                layer_cache,
                train,
            );
        }
        let x = stack.final_layer_norm.forward(&x).dropout(stack.dropout, train);
        match &self.lm_head {
            Some(w) => x.linear::<Tensor>(w, None),
            // Tied v1.0 head: transformers rescales the decoder output by d_model^-0.5 first.
            None => {
                (x * (self.config.d_model as f64).powf(-0.5)).linear::<Tensor>(&self.shared, None)
            }
        }
    }
}

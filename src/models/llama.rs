//! A llama-family decoder (SmolLM2, Llama 2/3 without rope scaling, TinyLlama, ...) in tch, loaded
//! from a GGUF checkpoint or from Hugging Face safetensors, with a per-layer KV cache and batched
//! generation.
//!
//! The computation mirrors transformers' `LlamaForCausalLM` (v5) operation for operation, because
//! the parity tests compare our logits with PyTorch's at 1e-4 and our greedy generations token for
//! token:
//! - RMSNorm in f32: `w * (x * rsqrt(mean(x²) + eps))`.
//! - rotary embeddings in the "rotate half" layout, `inv_freq = 1 / theta^(2i/d)`, angles
//!   `position * inv_freq` (an element-wise product, as transformers computes it).
//! - attention through `scaled_dot_product_attention`, dispatched like transformers' sdpa path: no
//!   padding → no mask (causal flag in the prefill, GQA inside the kernel); padding → a boolean
//!   mask with the KV heads repeated (`repeat_kv`).
//! - SwiGLU MLP `down(silu(gate(x)) * up(x))`, tied or untied LM head.
//!
//! GGUF weights are dequantised to f32 at load (see `gguf.rs`); attn_q / attn_k rows are put back
//! from llama.cpp's interleaved rotary layout into Hugging Face's layout, as transformers does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use super::gguf::{reverse_rope_permutation, GgufFile};
use super::lora::{self, adapted, LoraAdapter, LoraConfig, LoraSlot, TrainingMode};
use super::precision::{linear, Precision};
use super::sampling::{apply_repetition_penalty, select, SamplingConfig};
use crate::util::rng::SplitMix64;

/// The hyper-parameters of a llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension; `hidden_size / num_attention_heads` unless the checkpoint says otherwise.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// The LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<i64>,
    /// Generation stops on any of these.
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

/// Where each weight of a decoder layer lives: its transformers (`LlamaForCausalLM`) name under
/// `model.layers.{i}.` and its llama.cpp (GGUF) name under `blk.{i}.`, both before `.weight`. The
/// one table every loader and writer of either format goes through.
const LAYER_WEIGHT_NAMES: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The weights outside the layers: (transformers name, GGUF name).
const GLOBAL_WEIGHT_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF (llama.cpp) name of a transformers `LlamaForCausalLM` weight name, `None` for a name
/// that is not one of its weights.
pub fn gguf_weight_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_WEIGHT_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let suffix = rest.strip_suffix(".weight")?;
    let (_, g) = LAYER_WEIGHT_NAMES.iter().find(|(h, _)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}.weight"))
}

/// How many heads a weight's rows are permuted over in a GGUF (llama.cpp's rotary layout, see
/// [`super::gguf::reverse_rope_permutation`]): the attention heads for Q, the KV heads for K,
/// `None` for every other weight.
pub fn rope_permuted_heads(hf: &str, config: &LlamaConfig) -> Option<usize> {
    if hf.ends_with(".self_attn.q_proj.weight") {
        Some(config.num_attention_heads)
    } else if hf.ends_with(".self_attn.k_proj.weight") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// The architecture every key of [`LlamaConfig::gguf_metadata`] is filed under.
const GGUF_ARCH: &str = "llama";

impl LlamaConfig {
    /// The `general.architecture`, `llama.*` and special-token `tokenizer.ggml.*` metadata of a
    /// GGUF holding this model, as llama.cpp's `convert_hf_to_gguf.py` writes them; the inverse
    /// of [`LlamaConfig::from_gguf`] (which reads back an equal config; the epsilon and rope base
    /// as f32, the format's width).
    pub fn gguf_metadata(&self) -> Result<Vec<(String, super::gguf::GgufValue)>> {
        use super::gguf::GgufValue::{String as S, F32, U32};
        let key = |k: &str| format!("{GGUF_ARCH}.{k}");
        let u32_of = |what: &str, v: usize| -> Result<super::gguf::GgufValue> {
            Ok(U32(u32::try_from(v).map_err(|_| anyhow!("{what} {v} does not fit a GGUF u32"))?))
        };
        let mut out = vec![
            ("general.architecture".to_string(), S(GGUF_ARCH.into())),
            (key("vocab_size"), u32_of("vocab_size", self.vocab_size)?),
            (key("context_length"), u32_of("context length", self.max_position_embeddings)?),
            (key("embedding_length"), u32_of("hidden size", self.hidden_size)?),
            (key("block_count"), u32_of("layer count", self.num_hidden_layers)?),
            (key("feed_forward_length"), u32_of("intermediate size", self.intermediate_size)?),
            (key("attention.head_count"), u32_of("head count", self.num_attention_heads)?),
            (key("attention.head_count_kv"), u32_of("KV head count", self.num_key_value_heads)?),
            (key("attention.key_length"), u32_of("head_dim", self.head_dim)?),
            (key("attention.value_length"), u32_of("head_dim", self.head_dim)?),
            (key("rope.dimension_count"), u32_of("head_dim", self.head_dim)?),
            (key("rope.freq_base"), F32(self.rope_theta as f32)),
            (key("attention.layer_norm_rms_epsilon"), F32(self.rms_norm_eps as f32)),
        ];
        let id = |what: &str, v: i64| -> Result<super::gguf::GgufValue> {
            Ok(U32(u32::try_from(v).map_err(|_| anyhow!("{what} {v} is not a token id"))?))
        };
        if let Some(b) = self.bos_token_id {
            out.push(("tokenizer.ggml.bos_token_id".into(), id("bos_token_id", b)?));
        }
        // from_gguf reads EOS and an end-of-turn token; a third stop token has no key.
        match self.eos_token_ids.as_slice() {
            [] => {}
            [eos] => out.push(("tokenizer.ggml.eos_token_id".into(), id("eos_token_id", *eos)?)),
            [eos, eot] => {
                out.push(("tokenizer.ggml.eos_token_id".into(), id("eos_token_id", *eos)?));
                out.push(("tokenizer.ggml.eot_token_id".into(), id("eos_token_id", *eot)?));
            }
            more => bail!(
                "the model stops on {} tokens {more:?}; a GGUF records at most two (eos and eot)",
                more.len()
            ),
        }
        if let Some(p) = self.pad_token_id {
            out.push(("tokenizer.ggml.padding_token_id".into(), id("pad_token_id", p)?));
        }
        Ok(out)
    }

    /// From the `llama.*` (generally `<general.architecture>.*`) metadata of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        ensure!(
            matches!(arch, "llama"),
            "{}: architecture `{arch}` is not a llama-family decoder this loader handles",
            g.path().display()
        );
        let key = |k: &str| format!("{arch}.{k}");
        let num_attention_heads = g.get_i64(&key("attention.head_count"))? as usize;
        let hidden_size = g.get_i64(&key("embedding_length"))? as usize;
        if let Some(t) = g.get_str_opt(&key("rope.scaling.type"))? {
            ensure!(
                t == "none"
                    || t == "linear"
                        && g.get_f64_opt(&key("rope.scaling.factor"))?.unwrap_or(1.0) == 1.0,
                "{}: rope scaling `{t}` is not implemented",
                g.path().display()
            );
        }
        // The vocabulary size: the metadata key when present, else the token list (as transformers).
        let vocab_size = match g.get_i64_opt(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let head_dim = match g.get_i64_opt(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None => g
                .get_i64_opt(&key("rope.dimension_count"))?
                .map(|v| v as usize)
                .unwrap_or(hidden_size / num_attention_heads),
        };
        let eos = g.get_i64_opt("tokenizer.ggml.eos_token_id")?;
        let mut eos_token_ids: Vec<i64> = eos.into_iter().collect();
        // Newer converters also record an end-of-turn token; generation should stop on it too.
        if let Some(eot) = g.get_i64_opt("tokenizer.ggml.eot_token_id")? {
            if !eos_token_ids.contains(&eot) {
                eos_token_ids.push(eot);
            }
        }
        Ok(LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: g.get_i64(&key("feed_forward_length"))? as usize,
            num_hidden_layers: g.get_i64(&key("block_count"))? as usize,
            num_attention_heads,
            num_key_value_heads: g
                .get_i64_opt(&key("attention.head_count_kv"))?
                .map(|v| v as usize)
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            // llama.cpp's default when the key is absent.
            rope_theta: g.get_f64_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            max_position_embeddings: g
                .get_i64_opt(&key("context_length"))?
                .map(|v| v as usize)
                .unwrap_or(2048),
            // As transformers: tied exactly when the file has no separate output matrix.
            tie_word_embeddings: !g.has_tensor("output.weight"),
            bos_token_id: g.get_i64_opt("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
            pad_token_id: g.get_i64_opt("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// From a Hugging Face `config.json` of a `LlamaForCausalLM` (transformers v4 or v5 layout).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let int = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        let req =
            |k: &str| int(k).ok_or_else(|| anyhow!("{}: missing integer `{k}`", path.display()));
        if let Some(act) = v.get("hidden_act").and_then(|x| x.as_str()) {
            ensure!(
                act == "silu",
                "{}: hidden_act `{act}` is not supported (only silu)",
                path.display()
            );
        }
        for flag in ["attention_bias", "mlp_bias"] {
            ensure!(
                !v.get(flag).and_then(|x| x.as_bool()).unwrap_or(false),
                "{}: `{flag}: true` is not supported",
                path.display()
            );
        }
        // v5 nests rope settings in `rope_parameters`; v4 has `rope_theta` and `rope_scaling`.
        let rope = v.get("rope_parameters").filter(|x| x.is_object());
        let rope_type = rope
            .and_then(|r| r.get("rope_type"))
            .or_else(|| {
                v.get("rope_scaling").filter(|x| !x.is_null()).map(|s| {
                    s.get("rope_type").or(s.get("type")).unwrap_or(&serde_json::Value::Null)
                })
            })
            .and_then(|x| x.as_str())
            .unwrap_or("default");
        ensure!(
            rope_type == "default",
            "{}: rope type `{rope_type}` is not implemented",
            path.display()
        );
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or(v.get("rope_theta"))
            .and_then(|x| x.as_f64())
            .unwrap_or(10_000.0);
        let ids = |k: &str| -> Vec<i64> {
            match v.get(k) {
                Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
                _ => vec![],
            }
        };
        let hidden_size = req("hidden_size")?;
        let num_attention_heads = req("num_attention_heads")?;
        Ok(LlamaConfig {
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: int("num_key_value_heads").unwrap_or(num_attention_heads),
            head_dim: int("head_dim").unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: int("max_position_embeddings").unwrap_or(2048),
            // LlamaConfig's default is untied.
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
            pad_token_id: ids("pad_token_id").first().copied(),
        })
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.num_attention_heads > 0 && self.num_key_value_heads > 0,
            "head counts must be positive"
        );
        ensure!(
            self.num_attention_heads.is_multiple_of(self.num_key_value_heads),
            "{} attention heads are not a multiple of {} KV heads",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(
            self.head_dim.is_multiple_of(2),
            "rotary embeddings need an even head_dim, got {}",
            self.head_dim
        );
        Ok(())
    }
}

/// One decoder layer's weights, as `[out, in]` matrices (the layout of `nn.Linear`).
struct Layer {
    input_layernorm: Tensor,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    post_attention_layernorm: Tensor,
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
    /// LoRA adapters on the projections while a LoRA training runs, indexed by [`Projection`].
    lora: [Option<LoraAdapter>; 7],
}

/// A layer's linear projections, by their transformers module names (PEFT's target names).
#[derive(Debug, Clone, Copy)]
enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    fn module(self) -> &'static str {
        match self {
            Projection::Q => "self_attn.q_proj",
            Projection::K => "self_attn.k_proj",
            Projection::V => "self_attn.v_proj",
            Projection::O => "self_attn.o_proj",
            Projection::Gate => "mlp.gate_proj",
            Projection::Up => "mlp.up_proj",
            Projection::Down => "mlp.down_proj",
        }
    }
}

impl Layer {
    fn weight_mut(&mut self, p: Projection) -> &mut Tensor {
        match p {
            Projection::Q => &mut self.q_proj,
            Projection::K => &mut self.k_proj,
            Projection::V => &mut self.v_proj,
            Projection::O => &mut self.o_proj,
            Projection::Gate => &mut self.gate_proj,
            Projection::Up => &mut self.up_proj,
            Projection::Down => &mut self.down_proj,
        }
    }

    fn weight(&self, p: Projection) -> &Tensor {
        match p {
            Projection::Q => &self.q_proj,
            Projection::K => &self.k_proj,
            Projection::V => &self.v_proj,
            Projection::O => &self.o_proj,
            Projection::Gate => &self.gate_proj,
            Projection::Up => &self.up_proj,
            Projection::Down => &self.down_proj,
        }
    }

    /// The projection of `x`, with its LoRA adapter's term when one is attached.
    fn project(&self, p: Projection, x: &Tensor) -> Tensor {
        adapted(linear(x, self.weight(p), None), x, self.lora[p as usize].as_ref())
    }
}

/// A llama-family causal LM.
pub struct Llama {
    pub config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// A shallow clone of `embed_tokens` when the embeddings are tied.
    lm_head: Tensor,
    /// `1 / theta^(2i/d)`, `[head_dim / 2]` f32.
    inv_freq: Tensor,
    device: Device,
}

/// Keys and values of every layer for a batch, preallocated to `capacity` positions so that a
/// decoding step writes in place instead of concatenating (`[batch, kv_heads, capacity, head_dim]`).
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// Positions filled so far.
    len: i64,
    capacity: i64,
}

impl KvCache {
    pub fn new(model: &Llama, batch: i64, capacity: i64) -> Self {
        let c = &model.config;
        let shape = [batch, c.num_key_value_heads as i64, capacity, c.head_dim as i64];
        let alloc = || Tensor::zeros(shape, (Kind::Float, model.device));
        KvCache {
            keys: (0..c.num_hidden_layers).map(|_| alloc()).collect(),
            values: (0..c.num_hidden_layers).map(|_| alloc()).collect(),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Row `i` becomes a copy of row `index[i]` (prompts prefilled once, shared by several rows).
    fn select_rows(&mut self, index: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, index);
        }
    }
}

/// The keys and values of a token sequence that begins many prompts (a task's instruction and
/// template), computed once and copied into each batch's [`KvCache`] by
/// [`Llama::generate_steered_after`]: the prompts' shared text is prefilled once per run instead
/// of once per example. A decoder's keys and values at a position depend only on the tokens up to
/// it (causal attention, positions counted from the first token), so the prefix's are the same
/// whatever follows it.
pub struct PrefixCache {
    tokens: Vec<i64>,
    /// Per layer, `[1, kv_heads, tokens, head_dim]`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

impl PrefixCache {
    pub fn tokens(&self) -> &[i64] {
        &self.tokens
    }

    /// How many leading tokens of `prompt` this cache can stand for: their common length, but
    /// one token short of the whole prompt (its last token must be fed to give the logits of the
    /// first generated token).
    fn usable_for(&self, prompt: &[i64]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        common.min(prompt.len().saturating_sub(1))
    }
}

/// One row of [`Llama::generate_steered`]: its prompt and which seeded generator it draws from.
#[derive(Debug, Clone)]
pub struct SteeredRow {
    pub prompt: Vec<i64>,
    pub generator: usize,
}

/// What [`Llama::generate_steered`] does with a row's sampled token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    /// Keep the token and go on sampling.
    Keep,
    /// Drop the sampled token and feed these instead, one per step, before sampling again.
    Replace(Vec<i64>),
    /// Keep the token and end the row.
    Finish,
    /// Drop the token and end the row.
    Stop,
}

/// Which attention mask a forward pass uses.
pub enum AttnMask<'a> {
    /// No padding anywhere: plain causal attention over the cache and the new tokens.
    Causal,
    /// `[batch, past + new]` 1/0 (any integer or bool kind) marking real (1) and padding (0) key
    /// positions, over the cache positions followed by the new tokens.
    Padded(&'a Tensor),
}

/// The generated tokens of one row: without padding, with the EOS token when one ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub tokens: Vec<i64>,
    pub stopped_on_eos: bool,
}

impl Llama {
    /// Load from a GGUF file (dequantised to f32 on `device`).
    pub fn from_gguf(g: &GgufFile, device: Device) -> Result<Self> {
        let config = LlamaConfig::from_gguf(g)?;
        config.validate()?;
        let load = |name: &str| -> Result<Tensor> {
            let (data, shape) = g.tensor_f32(name)?;
            Ok(Tensor::from_slice(&data).reshape(&shape).to_device(device))
        };
        // Q and K rows come back from llama.cpp's rotary layout; K uses the KV head count.
        let load_qk = |name: &str, n_head: usize| -> Result<Tensor> {
            let (data, shape) = g.tensor_f32(name)?;
            ensure!(shape.len() == 2, "{name}: expected a matrix, got shape {shape:?}");
            let (rows, cols) = (shape[0] as usize, shape[1] as usize);
            let data = reverse_rope_permutation(&data, rows, cols, n_head);
            Ok(Tensor::from_slice(&data).reshape(&shape).to_device(device))
        };
        let c = &config;
        // Every weight by its transformers name, through the one name table.
        let gguf = |hf: &str| gguf_weight_name(hf).expect("a LlamaForCausalLM weight name");
        let weight = |hf: &str| match rope_permuted_heads(hf, c) {
            Some(n_head) => load_qk(&gguf(hf), n_head),
            None => load(&gguf(hf)),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| weight(&format!("model.layers.{i}.{s}.weight"));
            layers.push(Layer {
                input_layernorm: p("input_layernorm")?,
                q_proj: p("self_attn.q_proj")?,
                k_proj: p("self_attn.k_proj")?,
                v_proj: p("self_attn.v_proj")?,
                o_proj: p("self_attn.o_proj")?,
                post_attention_layernorm: p("post_attention_layernorm")?,
                gate_proj: p("mlp.gate_proj")?,
                up_proj: p("mlp.up_proj")?,
                down_proj: p("mlp.down_proj")?,
                lora: Default::default(),
            });
        }
        let embed_tokens = weight("model.embed_tokens.weight")?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            weight("lm_head.weight")?
        };
        let norm = weight("model.norm.weight")?;
        Self::assemble(config, embed_tokens, layers, norm, lm_head, device)
    }

    /// Load a GGUF checkpoint from a path.
    pub fn load_gguf(path: &Path, device: Device) -> Result<Self> {
        let g = GgufFile::open(path)?;
        Self::from_gguf(&g, device)
    }

    /// Load a Hugging Face checkpoint directory: `config.json` plus `model.safetensors` or the
    /// shards named in `model.safetensors.index.json`. Module names are those of transformers'
    /// `LlamaForCausalLM` (`model.layers.{i}.self_attn.q_proj.weight`, ...).
    pub fn load_hf_dir(dir: &Path, device: Device) -> Result<Self> {
        let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{}: no weight_map", index.display()))?;
            let mut names: Vec<&str> = map.values().filter_map(|x| x.as_str()).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        Self::from_safetensors(config, &files, device)
    }

    /// Build from safetensors files and a config.
    pub fn from_safetensors(
        config: LlamaConfig,
        files: &[PathBuf],
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for f in files {
            let read =
                Tensor::read_safetensors(f).with_context(|| format!("reading {}", f.display()))?;
            tensors.extend(read);
        }
        let mut take = |name: &str| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| anyhow!("tensor `{name}` not found in {files:?}"))?;
            Ok(t.to_kind(Kind::Float).to_device(device))
        };
        let c = &config;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            layers.push(Layer {
                input_layernorm: take(&p("input_layernorm"))?,
                q_proj: take(&p("self_attn.q_proj"))?,
                k_proj: take(&p("self_attn.k_proj"))?,
                v_proj: take(&p("self_attn.v_proj"))?,
                o_proj: take(&p("self_attn.o_proj"))?,
                post_attention_layernorm: take(&p("post_attention_layernorm"))?,
                gate_proj: take(&p("mlp.gate_proj"))?,
                up_proj: take(&p("mlp.up_proj"))?,
                down_proj: take(&p("mlp.down_proj"))?,
                lora: Default::default(),
            });
        }
        let embed_tokens = take("model.embed_tokens.weight")?;
        let norm = take("model.norm.weight")?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            take("lm_head.weight")?
        };
        Self::assemble(config, embed_tokens, layers, norm, lm_head, device)
    }

    fn assemble(
        config: LlamaConfig,
        embed_tokens: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Tensor,
        device: Device,
    ) -> Result<Self> {
        let c = &config;
        let (h, kv, hd) = (c.hidden_size as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let q_out = c.num_attention_heads as i64 * hd;
        let check = |what: &str, t: &Tensor, want: &[i64]| -> Result<()> {
            ensure!(t.size() == want, "{what}: shape {:?}, config implies {want:?}", t.size());
            Ok(())
        };
        check("token embedding", &embed_tokens, &[c.vocab_size as i64, h])?;
        check("lm head", &lm_head, &[c.vocab_size as i64, h])?;
        check("final norm", &norm, &[h])?;
        for (i, l) in layers.iter().enumerate() {
            check(&format!("layer {i} q_proj"), &l.q_proj, &[q_out, h])?;
            check(&format!("layer {i} k_proj"), &l.k_proj, &[kv * hd, h])?;
            check(&format!("layer {i} v_proj"), &l.v_proj, &[kv * hd, h])?;
            check(&format!("layer {i} o_proj"), &l.o_proj, &[h, q_out])?;
            check(&format!("layer {i} gate_proj"), &l.gate_proj, &[c.intermediate_size as i64, h])?;
            check(&format!("layer {i} up_proj"), &l.up_proj, &[c.intermediate_size as i64, h])?;
            check(&format!("layer {i} down_proj"), &l.down_proj, &[h, c.intermediate_size as i64])?;
            check(&format!("layer {i} norms"), &l.input_layernorm, &[h])?;
            check(&format!("layer {i} norms"), &l.post_attention_layernorm, &[h])?;
        }
        // transformers: inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in f32 on the
        // CPU at init. `1.0 / t` is `t.reciprocal() * 1.0` in PyTorch, i.e. `reciprocal`.
        let exponents =
            Tensor::arange_start_step(0, hd, 2, (Kind::Float, Device::Cpu)) / (hd as f64);
        let inv_freq = Tensor::pow_scalar(c.rope_theta, &exponents).reciprocal().to_device(device);
        Ok(Llama { config, embed_tokens, layers, norm, lm_head, inv_freq, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Keeps the first `k` transformer layers (embeddings, final norm and LM head stay): a
    /// shallower model on the same pretrained weights, saved with `num_hidden_layers = k`.
    pub fn keep_first_layers(&mut self, k: usize) -> Result<()> {
        ensure!(
            (1..=self.layers.len()).contains(&k),
            "keep the first {k} layers: the model has {} (1 to {} can be kept)",
            self.layers.len(),
            self.layers.len()
        );
        self.layers.truncate(k);
        self.config.num_hidden_layers = k;
        Ok(())
    }

    /// Stores the weight matrices (embeddings, projections, LM head) in `precision` for inference:
    /// bf16 halves the bytes every decoded token reads. Norms and the activations stay f32 (see
    /// [`super::precision`]). Not for a model that is being trained (its weights are the f32
    /// masters the optimizer updates; train with [`super::precision::autocast`] instead).
    pub fn set_inference_precision(&mut self, precision: Precision) {
        let tied = self.lm_head.data_ptr() == self.embed_tokens.data_ptr();
        self.embed_tokens = precision.cast_for_inference(&self.embed_tokens);
        self.lm_head = if tied {
            self.embed_tokens.shallow_clone()
        } else {
            precision.cast_for_inference(&self.lm_head)
        };
        for l in &mut self.layers {
            for w in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ] {
                *w = precision.cast_for_inference(w);
            }
        }
    }

    /// Token embeddings in f32 whatever the storage kind (the residual stream is f32).
    fn embed(&self, input_ids: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        if x.kind() == Kind::Float {
            x
        } else {
            x.to_kind(Kind::Float)
        }
    }

    /// transformers' `LlamaRMSNorm` in f32.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        w * (x * (var + self.config.rms_norm_eps).rsqrt())
    }

    /// A layer's queries, keys and values of `x` `[batch, seq, hidden]` (after the input norm and
    /// the rotary embedding), as `[batch, heads, seq, head_dim]`.
    fn rotated_qkv(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let c = &self.config;
        let (b, t, _) = x.size3().expect("[batch, seq, hidden]");
        let (nh, kvh, hd) =
            (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let h = self.rms_norm(x, &layer.input_layernorm);
        let q = layer.project(Projection::Q, &h).view([b, t, nh, hd]).transpose(1, 2);
        let k = layer.project(Projection::K, &h).view([b, t, kvh, hd]).transpose(1, 2);
        let v = layer.project(Projection::V, &h).view([b, t, kvh, hd]).transpose(1, 2);
        let q = &q * cos + rotate_half(&q) * sin;
        let k = &k * cos + rotate_half(&k) * sin;
        (q, k, v)
    }

    /// The MLP half of a layer with its residual: `x + down(silu(gate(n(x))) · up(n(x)))`.
    fn feed_forward(&self, layer: &Layer, x: Tensor) -> Tensor {
        let h = self.rms_norm(&x, &layer.post_attention_layernorm);
        let gated = layer.project(Projection::Gate, &h).silu() * layer.project(Projection::Up, &h);
        let mlp = layer.project(Projection::Down, &gated);
        x + mlp
    }

    /// `cos` and `sin` of the rotary angles for `[batch, seq]` positions: `[batch, 1, seq, head_dim]`.
    fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.unsqueeze(-1).to_kind(Kind::Float) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().unsqueeze(1), emb.sin().unsqueeze(1))
    }

    /// Run `input_ids` (`[batch, seq]`, i64) at `positions` (`[batch, seq]`) through the model,
    /// appending their keys and values to `cache`. Returns logits `[batch, seq, vocab]`, or
    /// `[batch, vocab]` for the last position only when `last_only` (what generation needs: the
    /// LM head is the most expensive matmul of a small model).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: AttnMask<'_>,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let c = &self.config;
        let (b, t) = input_ids.size2().context("input_ids must be [batch, seq]")?;
        ensure!(
            positions.size() == [b, t],
            "positions {:?} do not match input_ids {:?}",
            positions.size(),
            [b, t]
        );
        ensure!(
            cache.keys.first().is_none_or(|k| k.size()[0] == b),
            "cache batch does not match input batch {b}"
        );
        let past = cache.len;
        let total = past + t;
        ensure!(
            total <= cache.capacity,
            "KV cache holds {} positions, {} needed",
            cache.capacity,
            total
        );
        let (min_id, max_id) = (input_ids.min().int64_value(&[]), input_ids.max().int64_value(&[]));
        ensure!(
            min_id >= 0 && (max_id as usize) < c.vocab_size,
            "token ids {min_id}..={max_id} outside the vocabulary of {}",
            c.vocab_size
        );

        let (nh, kvh, hd) =
            (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let n_rep = nh / kvh;
        let input_ids = input_ids.to_device(self.device);
        let (cos, sin) = self.rotary(&positions.to_device(self.device));

        // With padding, the boolean mask of the visible keys (see `visible_keys`).
        let bool_mask = match mask {
            AttnMask::Causal => None,
            AttnMask::Padded(m) => {
                ensure!(
                    m.size() == [b, total],
                    "mask {:?} must be [batch, past + seq] = {:?}",
                    m.size(),
                    [b, total]
                );
                Some(visible_keys(&m.to_device(self.device), past))
            }
        };
        if bool_mask.is_none() {
            ensure!(
                past == 0 || t == 1,
                "causal attention with a cache takes one token at a time; pass a mask"
            );
        }

        let mut x = self.embed(&input_ids);
        for (l, layer) in self.layers.iter().enumerate() {
            let residual = x.shallow_clone();
            let (q, k, v) = self.rotated_qkv(layer, &x, &cos, &sin);
            cache.keys[l].narrow(2, past, t).copy_(&k);
            cache.values[l].narrow(2, past, t).copy_(&v);
            let keys = cache.keys[l].narrow(2, 0, total);
            let values = cache.values[l].narrow(2, 0, total);
            let scale = (hd as f64).powf(-0.5);
            let attn = match &bool_mask {
                // As transformers' sdpa path without a mask: GQA inside the kernel, causal in the
                // prefill (a single new token attends to everything cached).
                None => Tensor::scaled_dot_product_attention::<Tensor>(
                    &q,
                    &keys,
                    &values,
                    None,
                    0.0,
                    t > 1,
                    scale,
                    n_rep > 1,
                ),
                // With a mask: the query heads that share a KV head attend as one group, the same
                // sums as transformers' `repeat_kv` + sdpa without copying the keys and values
                // `n_rep` times (at a batch of 25 long rows those copies cost more than the
                // matmuls).
                Some(m) => grouped_attention(&q, &keys, &values, m, n_rep, scale),
            };
            let attn = attn.transpose(1, 2).reshape([b, t, nh * hd]);
            x = self.feed_forward(layer, residual + layer.project(Projection::O, &attn));
        }
        cache.len = total;
        let x = if last_only { x.select(1, t - 1) } else { x };
        let x = self.rms_norm(&x, &self.norm);
        Ok(linear(&x, &self.lm_head, None))
    }

    /// Every weight under its transformers (`LlamaForCausalLM`) name; a tied LM head is the
    /// embedding and is listed once.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out =
            vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            out.extend([
                (p("input_layernorm"), l.input_layernorm.shallow_clone()),
                (p("self_attn.q_proj"), l.q_proj.shallow_clone()),
                (p("self_attn.k_proj"), l.k_proj.shallow_clone()),
                (p("self_attn.v_proj"), l.v_proj.shallow_clone()),
                (p("self_attn.o_proj"), l.o_proj.shallow_clone()),
                (p("post_attention_layernorm"), l.post_attention_layernorm.shallow_clone()),
                (p("mlp.gate_proj"), l.gate_proj.shallow_clone()),
                (p("mlp.up_proj"), l.up_proj.shallow_clone()),
                (p("mlp.down_proj"), l.down_proj.shallow_clone()),
            ]);
        }
        out.push(("model.norm.weight".to_string(), self.norm.shallow_clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.shallow_clone()));
        }
        out
    }

    /// Makes every weight a trainable leaf (gradients on). The tied LM head shares the embedding's
    /// storage and flag.
    pub fn set_trainable(&self) {
        for (_, t) in self.named_parameters() {
            let _ = t.set_requires_grad(true);
        }
    }

    /// The projections LoRA adapts by default: all seven of every layer, as the reference's
    /// `peft_trainer` (q, k, v, o and the MLP's gate, up and down).
    pub const LORA_TARGETS: [&'static str; 7] =
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// Attaches fresh LoRA adapters to the projections `cfg` targets and freezes every base weight
    /// (only the adapters get gradients). Returns how many layers were adapted.
    pub fn attach_lora(
        &mut self,
        cfg: &LoraConfig,
        seed: u64,
        training: &TrainingMode,
        student: &str,
    ) -> Result<usize> {
        for (_, t) in self.named_parameters() {
            let _ = t.set_requires_grad(false);
        }
        let slots: Vec<LoraSlot<'_>> = self
            .layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, layer)| {
                let Layer {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    gate_proj,
                    up_proj,
                    down_proj,
                    lora,
                    ..
                } = layer;
                let weights =
                    [&*q_proj, &*k_proj, &*v_proj, &*o_proj, &*gate_proj, &*up_proj, &*down_proj];
                Projection::ALL.into_iter().zip(weights).zip(lora.iter_mut()).map(
                    move |((p, weight), adapter)| LoraSlot {
                        module: format!("model.layers.{i}.{}", p.module()),
                        weight,
                        adapter,
                    },
                )
            })
            .collect();
        lora::attach(slots, cfg, &Self::LORA_TARGETS, seed, training, student)
    }

    /// The attached adapters by module name (`model.layers.<i>.self_attn.q_proj`, ...).
    pub fn lora_adapters(&self) -> Vec<(String, &LoraAdapter)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for p in Projection::ALL {
                if let Some(a) = &layer.lora[p as usize] {
                    out.push((format!("model.layers.{i}.{}", p.module()), a));
                }
            }
        }
        out
    }

    /// Folds every adapter into its weight (`W + B·A·α/r`) and removes it: the model is again a
    /// plain llama that computes what base and adapters computed together (without dropout).
    pub fn merge_lora(&mut self) {
        for layer in &mut self.layers {
            for p in Projection::ALL {
                if let Some(a) = layer.lora[p as usize].take() {
                    let merged = a.merged(layer.weight(p));
                    *layer.weight_mut(p) = merged;
                }
            }
        }
    }

    /// Overwrites the weights with those of a safetensors file with transformers names (every
    /// weight must be there, with its shape).
    pub fn load_weights(&self, path: &Path) -> Result<()> {
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
        tch::no_grad(|| -> Result<()> {
            for (name, mut t) in self.named_parameters() {
                let s = saved
                    .get(&name)
                    .ok_or_else(|| anyhow!("{}: no tensor `{name}`", path.display()))?;
                ensure!(
                    s.size() == t.size(),
                    "{}: `{name}` has shape {:?}, the model {:?}",
                    path.display(),
                    s.size(),
                    t.size()
                );
                t.copy_(&s.to_kind(Kind::Float).to_device(self.device));
            }
            Ok(())
        })
    }

    /// Writes `config.json` (a transformers `LlamaConfig`) and `model.safetensors`.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let c = &self.config;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta, "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings, "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_ids, "pad_token_id": c.pad_token_id,
        });
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        let tensors: Vec<(String, Tensor)> = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))
            .with_context(|| format!("writing {}", dir.join("model.safetensors").display()))
    }

    /// Teacher-forced forward over whole sequences, with gradients (training): `input_ids` and
    /// `attention_mask` `[batch, seq]`, RIGHT-padded; positions count the real tokens from 0.
    /// Returns logits `[batch, seq, vocab]`. The same computation as [`Llama::forward`] without the
    /// cache (which is written in place and so cannot carry gradients).
    pub fn forward_train(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.lm_head_logits(&self.hidden_states_train(input_ids, attention_mask))
    }

    /// The LM head: logits `[.., vocab]` of final hidden states `[.., hidden]` (the output of
    /// [`Llama::hidden_states_train`]).
    pub fn lm_head_logits(&self, hidden: &Tensor) -> Tensor {
        linear(hidden, &self.lm_head, None)
    }

    /// [`Llama::forward_train`] up to the LM head: the final-normed hidden states
    /// `[batch, seq, hidden]`. The trainer applies the head only where a label is, since the
    /// vocabulary-wide logits are the largest tensor of a step and an instruction-tuning loss
    /// covers a few target tokens after a long prompt.
    pub fn hidden_states_train(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let c = &self.config;
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        let (nh, kvh, hd) =
            (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
        let n_rep = nh / kvh;
        let input_ids = input_ids.to_device(self.device);
        let mask = attention_mask.to_device(self.device);
        let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let (cos, sin) = self.rotary(&positions);
        let bool_mask = visible_keys(&mask, 0);
        let scale = (hd as f64).powf(-0.5);
        let mut x = self.embed(&input_ids);
        for layer in &self.layers {
            let residual = x.shallow_clone();
            let (q, k, v) = self.rotated_qkv(layer, &x, &cos, &sin);
            let (k, v) = (repeat_kv(&k, n_rep), repeat_kv(&v, n_rep));
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&bool_mask),
                0.0,
                false,
                scale,
                false,
            );
            let attn = attn.transpose(1, 2).reshape([b, t, nh * hd]);
            x = self.feed_forward(layer, residual + layer.project(Projection::O, &attn));
        }
        self.rms_norm(&x, &self.norm)
    }

    /// Logits `[seq, vocab]` at every position of one unpadded sequence.
    pub fn logits(&self, ids: &[i64]) -> Result<Tensor> {
        ensure!(!ids.is_empty(), "empty input");
        let n = ids.len() as i64;
        let input = Tensor::from_slice(ids).view([1, n]);
        let positions = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
        let mut cache = KvCache::new(self, 1, n);
        Ok(self.forward(&input, &positions, AttnMask::Causal, &mut cache, false)?.squeeze_dim(0))
    }

    /// Generate up to `cfg.max_new_tokens` tokens after each prompt, batched with LEFT padding.
    ///
    /// As transformers' `generate`: positions come from the attention mask (`cumsum - 1`, so a row's
    /// first real token is at position 0 whatever its padding), a row that emits one of
    /// `eos_token_ids` is finished and gets `pad_id` from then on, and the loop ends when every row
    /// is finished. Token selection (greedy, temperature / top-p, repetition penalty) is
    /// `sampling::select` with one seeded generator for the batch, drawn in row order.
    ///
    /// The repetition penalty sees a row's prompt and generated tokens, but not its padding:
    /// transformers penalises the pad id of padded rows too (it gathers over the padded
    /// `input_ids`), which makes a row's output depend on its batch mates whenever pad is a real
    /// token (here pad = `<|im_end|>` = EOS). We keep rows independent of batching; with
    /// `repetition_penalty == 1` (and for unpadded rows always) the two agree exactly.
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        cfg: &SamplingConfig,
        eos_token_ids: &[i64],
        pad_id: i64,
    ) -> Result<Vec<Generated>> {
        self.generate_after(None, prompts, cfg, eos_token_ids, pad_id)
    }

    /// [`Llama::generate`] with the keys and values of a shared prefix taken from `prefix` (see
    /// [`Llama::generate_steered_after`]); `None` is [`Llama::generate`].
    pub fn generate_after(
        &self,
        prefix: Option<&PrefixCache>,
        prompts: &[Vec<i64>],
        cfg: &SamplingConfig,
        eos_token_ids: &[i64],
        pad_id: i64,
    ) -> Result<Vec<Generated>> {
        let rows: Vec<SteeredRow> =
            prompts.iter().map(|p| SteeredRow { prompt: p.clone(), generator: 0 }).collect();
        self.generate_steered_after(
            prefix,
            &rows,
            std::slice::from_ref(cfg),
            pad_id,
            &mut stop_at_eos(eos_token_ids),
        )
    }

    /// Prefills `tokens` (at positions `0..n`, batch 1) and keeps their keys and values for
    /// [`Llama::generate_after`]: the text every prompt of a task starts with, computed once.
    pub fn prefill_prefix(&self, tokens: &[i64]) -> Result<PrefixCache> {
        let _guard = tch::no_grad_guard();
        ensure!(!tokens.is_empty(), "a prefix needs at least one token");
        let n = tokens.len() as i64;
        let input = Tensor::from_slice(tokens).view([1, n]);
        let positions = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
        let mut cache = KvCache::new(self, 1, n);
        // Only the keys and values are kept; the last position's logits go unused.
        let _ = self.forward(&input, &positions, AttnMask::Causal, &mut cache, true)?;
        Ok(PrefixCache { tokens: tokens.to_vec(), keys: cache.keys, values: cache.values })
    }

    /// Generation whose caller looks at every sampled token and decides what happens to it
    /// ([`Steer`]): keep it, replace it by forced tokens (fed one per step, e.g. the next key of a
    /// JSON object being written field by field), or end the row. One forward pass per step for
    /// the whole batch: a structured reply costs one prefill, not one per field.
    ///
    /// Rows with the same prompt share one prefill (a teacher request's `n` choices, or several
    /// requests batched together). `generators[row.generator]` is the sampling of a row
    /// (temperature, top-p, repetition penalty) and seeds the generator it draws from, so rows of
    /// different requests sample independently of each other. Each step draws for the unfinished,
    /// unforced rows in row order. A finished row's `tokens` end with the token that finished it
    /// when [`Steer::Finish`] kept it; `stopped_on_eos` says whether the caller ended the row
    /// (rather than the step budget, the largest `max_new_tokens` of `generators`).
    pub fn generate_steered(
        &self,
        rows: &[SteeredRow],
        generators: &[SamplingConfig],
        pad_id: i64,
        steer: &mut dyn FnMut(usize, i64) -> Steer,
    ) -> Result<Vec<Generated>> {
        self.generate_steered_after(None, rows, generators, pad_id, steer)
    }

    /// [`Llama::generate_steered`] after a prefilled shared prefix: the first `k` tokens of every
    /// row, where `k` is the longest start of `prefix` that every prompt of the batch begins with
    /// (at most each prompt's length − 1), are not computed again; their keys and values are
    /// copied from `prefix` into every row of the batch's cache. Each row's remaining tokens
    /// (its suffix) follow, left-padded to the longest suffix: a row is laid out as
    /// `prefix | pad … | suffix`, its mask 0 on the pads, and its positions `cumsum(mask) − 1`,
    /// so the suffix continues at position `k` as it would right after the prefix. With `k = 0`
    /// (no prefix, or one no prompt shares) this is exactly the plain path: `pad … | prompt`.
    ///
    /// The repetition penalty still sees each row's whole prompt. The outputs are those of the
    /// plain path up to float summation order: the prefix's keys and values come from a batch-1
    /// causal pass rather than from each padded batch, and the suffix's softmax sums over the
    /// same visible keys in another arrangement of masked positions — differences of the size
    /// that a row's padding (its batch mates) already makes on the plain path.
    pub fn generate_steered_after(
        &self,
        prefix: Option<&PrefixCache>,
        rows: &[SteeredRow],
        generators: &[SamplingConfig],
        pad_id: i64,
        steer: &mut dyn FnMut(usize, i64) -> Steer,
    ) -> Result<Vec<Generated>> {
        let _guard = tch::no_grad_guard();
        if rows.is_empty() {
            return Ok(vec![]);
        }
        SteeredState::check(rows, generators)?;
        let b = rows.len();
        // The shared prefix's length in this batch (0: none).
        let k = prefix.map_or(0, |p| rows.iter().map(|r| p.usable_for(&r.prompt)).min().unwrap());
        let suffix_len = |r: &SteeredRow| r.prompt.len() - k;
        let max_suffix = rows.iter().map(suffix_len).max().unwrap();
        let max_new_tokens = generators.iter().map(|g| g.max_new_tokens).max().unwrap_or(0);
        let capacity = (k + max_suffix + max_new_tokens) as i64;
        let padded = rows.iter().any(|r| suffix_len(r) != max_suffix);

        // Distinct prompts, each prefilled once; `source[row]` is the prefilled row it copies.
        let mut distinct: Vec<usize> = Vec::new();
        let mut source: Vec<i64> = Vec::with_capacity(b);
        for (i, r) in rows.iter().enumerate() {
            match distinct.iter().position(|&d| rows[d].prompt == r.prompt) {
                Some(d) => source.push(d as i64),
                None => {
                    source.push(distinct.len() as i64);
                    distinct.push(i);
                }
            }
        }
        let shared = distinct.len() < b;

        // Left padding of the suffixes: row r is `[prefix] pad … pad suffix`, mask 1…1 0…0 1…1.
        let mut ids = Vec::with_capacity(distinct.len() * max_suffix);
        for &d in &distinct {
            let suffix = &rows[d].prompt[k..];
            ids.extend(std::iter::repeat_n(pad_id, max_suffix - suffix.len()));
            ids.extend_from_slice(suffix);
        }
        let mut mask = Vec::with_capacity(b * capacity as usize);
        for r in rows {
            mask.extend(std::iter::repeat_n(1i64, k));
            mask.extend(std::iter::repeat_n(0i64, max_suffix - suffix_len(r)));
            mask.extend(std::iter::repeat_n(1i64, suffix_len(r) + max_new_tokens));
        }
        let mut mask = Tensor::from_slice(&mask).view([b as i64, capacity]);
        // positions = cumsum(mask) - 1, padding set to 1 (transformers' `masked_fill_(mask == 0, 1)`).
        let mut positions_all = (mask.cumsum(1, Kind::Int64) - 1).masked_fill(&mask.eq(0), 1);
        let prefill_rows =
            Tensor::from_slice(&distinct.iter().map(|&d| d as i64).collect::<Vec<_>>());

        let mut cache = KvCache::new(self, distinct.len() as i64, capacity);
        if let Some(p) = prefix.filter(|_| k > 0) {
            let stored = cache.keys.iter().chain(&cache.values);
            for (to, from) in stored.zip(p.keys.iter().chain(&p.values)) {
                // `[1, kv, k, d]` broadcast over the batch.
                to.narrow(2, 0, k as i64).copy_(&from.narrow(2, 0, k as i64));
            }
            cache.len = k as i64;
        }
        let mut input = Tensor::from_slice(&ids).view([distinct.len() as i64, max_suffix as i64]);
        let mut state = SteeredState::new(rows, generators);
        // The row each position of the batch holds: finished rows leave the batch (see below).
        let mut active: Vec<usize> = (0..b).collect();
        for step in 0..max_new_tokens {
            let (start, len) = (cache.len(), input.size()[1]);
            let (positions, key_mask) = if step == 0 {
                (
                    positions_all.index_select(0, &prefill_rows).narrow(1, start, len),
                    mask.index_select(0, &prefill_rows).narrow(1, 0, start + len),
                )
            } else {
                (positions_all.narrow(1, start, len), mask.narrow(1, 0, start + len))
            };
            // Several new tokens after cached ones need the mask (causal attention with a cache
            // takes one token at a time).
            let m = if padded || (start > 0 && len > 1) {
                AttnMask::Padded(&key_mask)
            } else {
                AttnMask::Causal
            };
            let mut logits = self.forward(&input, &positions, m, &mut cache, true)?;
            if step == 0 && shared {
                let index = Tensor::from_slice(&source);
                logits = logits.index_select(0, &index);
                cache.select_rows(&index);
            }
            let logits = logits.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
            let vocab = logits.size()[1] as usize;
            let flat: Vec<f32> =
                Vec::<f32>::try_from(logits.view([-1])).context("reading logits")?;
            let mut next = vec![pad_id; active.len()];
            for (at, (&r, slot)) in active.iter().zip(next.iter_mut()).enumerate() {
                if let Some(token) =
                    state.step_row(r, || flat[at * vocab..(at + 1) * vocab].to_vec(), steer)?
                {
                    *slot = token;
                }
            }
            if state.all_finished() {
                break;
            }
            // A finished row would go on being computed and thrown away until the batch's longest
            // row ends (short answers beside one that runs to the token budget). Once half the
            // batch has finished, the rest continue alone: their caches, masks and positions are
            // selected out — a copy of the cache, so it is done at most log2(batch) times.
            let going: Vec<usize> =
                (0..active.len()).filter(|&at| !state.finished[active[at]]).collect();
            if going.len() * 2 <= active.len() {
                let index =
                    Tensor::from_slice(&going.iter().map(|&at| at as i64).collect::<Vec<_>>());
                cache.select_rows(&index);
                mask = mask.index_select(0, &index);
                positions_all = positions_all.index_select(0, &index);
                next = going.iter().map(|&at| next[at]).collect();
                active = going.iter().map(|&at| active[at]).collect();
            }
            input = Tensor::from_slice(&next).view([active.len() as i64, 1]);
        }
        Ok(state.out)
    }
}

/// The steering of plain generation: a row ends, keeping the token, when it samples one of
/// `eos_token_ids`.
pub fn stop_at_eos(eos_token_ids: &[i64]) -> impl FnMut(usize, i64) -> Steer + '_ {
    |_row, token| if eos_token_ids.contains(&token) { Steer::Finish } else { Steer::Keep }
}

/// The rows' bookkeeping in steered generation, the same for every engine: what each row has
/// seen (for the repetition penalty), its forced tokens, whether it ended, its output, and one
/// seeded generator per [`SamplingConfig`].
pub struct SteeredState<'a> {
    rows: &'a [SteeredRow],
    generators: &'a [SamplingConfig],
    pub out: Vec<Generated>,
    seen: Vec<Vec<i64>>,
    forced: Vec<std::collections::VecDeque<i64>>,
    finished: Vec<bool>,
    rngs: Vec<SplitMix64>,
}

impl<'a> SteeredState<'a> {
    /// What both engines require of a request: a token in every prompt, an existing generator
    /// for every row.
    pub fn check(rows: &[SteeredRow], generators: &[SamplingConfig]) -> Result<()> {
        ensure!(rows.iter().all(|r| !r.prompt.is_empty()), "every prompt needs at least one token");
        ensure!(
            rows.iter().all(|r| r.generator < generators.len()),
            "a row names a generator that does not exist"
        );
        Ok(())
    }

    pub fn new(rows: &'a [SteeredRow], generators: &'a [SamplingConfig]) -> Self {
        let b = rows.len();
        SteeredState {
            rows,
            generators,
            out: vec![Generated { tokens: vec![], stopped_on_eos: false }; b],
            seen: rows.iter().map(|r| r.prompt.clone()).collect(),
            forced: vec![Default::default(); b],
            finished: vec![false; b],
            rngs: generators.iter().map(|g| SplitMix64::new(g.seed)).collect(),
        }
    }

    /// Row `r`'s token for this step, to feed next (`None`: the row has ended, now or before).
    /// `logits` gives the row's next-token logits when a token is to be sampled (a forced token
    /// needs none). Rows must be stepped in row order: they draw from shared generators.
    pub fn step_row(
        &mut self,
        r: usize,
        logits: impl FnOnce() -> Vec<f32>,
        steer: &mut dyn FnMut(usize, i64) -> Steer,
    ) -> Result<Option<i64>> {
        if self.finished[r] {
            return Ok(None);
        }
        let token = match self.forced[r].pop_front() {
            Some(t) => t,
            None => {
                let g = &self.generators[self.rows[r].generator];
                let mut row = logits();
                apply_repetition_penalty(&mut row, &self.seen[r], g.repetition_penalty);
                let sampled = select(&row, g, &mut self.rngs[self.rows[r].generator]);
                match steer(r, sampled) {
                    Steer::Keep => sampled,
                    Steer::Finish => {
                        self.finished[r] = true;
                        self.out[r].stopped_on_eos = true;
                        self.out[r].tokens.push(sampled);
                        return Ok(None);
                    }
                    Steer::Stop => {
                        self.finished[r] = true;
                        self.out[r].stopped_on_eos = true;
                        return Ok(None);
                    }
                    Steer::Replace(tokens) => {
                        let mut tokens = std::collections::VecDeque::from(tokens);
                        let first = tokens
                            .pop_front()
                            .context("Steer::Replace needs at least one token")?;
                        self.forced[r] = tokens;
                        first
                    }
                }
            }
        };
        self.out[r].tokens.push(token);
        self.seen[r].push(token);
        Ok(Some(token))
    }

    /// The length so far of row `r` (prompt and generated tokens): the position of its next token.
    pub fn seen_len(&self, r: usize) -> usize {
        self.seen[r].len()
    }

    pub fn all_finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }
}

/// `cat(-x2, x1)` over the last dimension's halves (transformers' `rotate_half`).
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap() / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// The boolean attention mask `[batch, 1, seq, total]` for queries at absolute positions
/// `past..total` over a `[batch, total]` 1/0 key mask: key s is visible to query t when s ≤ t and
/// s is not padding. A padding query also sees itself, so that no row of the softmax is empty (an
/// all-masked row would give NaN, and NaN values at padding positions would leak into real rows
/// through 0 · NaN).
fn visible_keys(key_mask: &Tensor, past: i64) -> Tensor {
    let (b, total) = key_mask.size2().expect("[batch, total] key mask");
    let device = key_mask.device();
    let keys_ok = key_mask.ne(0).view([b, 1, 1, total]);
    let q_pos =
        Tensor::arange_start(past, total, (Kind::Int64, device)).view([1, 1, total - past, 1]);
    let k_pos = Tensor::arange(total, (Kind::Int64, device)).view([1, 1, 1, total]);
    k_pos.le_tensor(&q_pos).logical_and(&keys_ok).logical_or(&k_pos.eq_tensor(&q_pos))
}

/// Masked attention for grouped-query heads: `q` `[b, kv * n_rep, t, d]`, `keys`/`values`
/// `[b, kv, s, d]`, `mask` `[b, 1, t, s]` (true = visible). Query head `h` uses KV head
/// `h / n_rep`, as after `repeat_kv`.
fn grouped_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    n_rep: i64,
    scale: f64,
) -> Tensor {
    let (b, nh, t, d) = q.size4().expect("[b, heads, t, d] queries");
    let (kvh, s) = (nh / n_rep, keys.size()[2]);
    let q = q.reshape([b, kvh, n_rep * t, d]);
    let scores = (q.matmul(&keys.transpose(-1, -2)) * scale).view([b, kvh, n_rep, t, s]);
    let visible = mask.view([b, 1, 1, t, s]);
    let probs =
        scores.masked_fill(&visible.logical_not(), f64::NEG_INFINITY).softmax(-1, scores.kind());
    probs.view([b, kvh, n_rep * t, s]).matmul(values).view([b, nh, t, d])
}

/// `[b, kv, s, d]` → `[b, kv * n_rep, s, d]`, each KV head repeated `n_rep` times in place
/// (transformers' `repeat_kv`).
fn repeat_kv(x: &Tensor, n_rep: i64) -> Tensor {
    if n_rep == 1 {
        return x.shallow_clone();
    }
    let (b, kv, s, d) = x.size4().expect("[b, kv, s, d]");
    x.unsqueeze(2).expand([b, kv, n_rep, s, d], false).reshape([b, kv * n_rep, s, d])
}

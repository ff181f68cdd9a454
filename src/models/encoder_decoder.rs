//! A BERT2BERT encoder-decoder warm-started from one BERT checkpoint (MiniLM offline): the student
//! the pipeline can train when no T5 weights are available. It is transformers'
//! `EncoderDecoderModel` with a `BertModel` encoder and a `BertLMHeadModel` decoder
//! (`is_decoder=True`, `add_cross_attention=True`), numerically matching transformers 5.x:
//!
//! - encoder: BERT embeddings (word + token type 0 + absolute position) → post-LN layers with
//!   bidirectional self-attention (scores scaled by `1/sqrt(head_dim)`), exact GELU;
//! - decoder: the same BERT layers with causal self-attention, plus a cross-attention sub-layer
//!   (same shape as self-attention, its own post-LN) between self-attention and feed-forward;
//!   positions continue from the cache length during incremental decoding;
//! - LM head: BERT's prediction head (dense → activation → LayerNorm) and an output projection tied
//!   to the decoder's word embeddings, plus a bias;
//! - decoder start = `[CLS]`, EOS = `[SEP]`, pad = `[PAD]`; when decoder inputs come from labels the
//!   decoder also masks pad keys (`EncoderDecoderModel` builds `decoder_attention_mask` that way).
//!
//! Encoder and decoder are *separate* copies of the BERT weights (`tie_encoder_decoder=False`).
//! Weights the BERT checkpoint does not have — the cross-attention layers and, for a plain
//! `BertModel` checkpoint such as MiniLM, the prediction head — are new.
//!
//! **Initialisation of new weights** (documented so that PyTorch can reproduce it exactly): every
//! new variable is set from its name alone: `*LayerNorm.weight` ← 1, `*.bias` ← 0, any other weight
//! ← [`seeded_normal`]`(shape, initializer_range, seed, name)` (a SplitMix64 stream keyed by seed and
//! name, Box-Muller; not libtorch's global generator, so concurrent threads cannot perturb it).
//! These are transformers' distributions: normal(0, initializer_range) for linear layers,
//! ones/zeros for LayerNorm, zero biases. `scripts/parity/make_seq2seq_fixtures.py` applies the same
//! procedure (in numpy) to a transformers model, so a Rust warm start and its PyTorch twin start
//! from identical weights. A fully random model ([`Bert2Bert::new`]) initialises every variable this
//! way (and zeroes the `[PAD]` row of the word embeddings, as `nn.Embedding(padding_idx=...)`).
//!
//! Variables carry the `EncoderDecoderModel` names (`encoder.embeddings.word_embeddings.weight`,
//! `decoder.bert.encoder.layer.0.crossattention.self.query.weight`, `decoder.cls.predictions.bias`,
//! ...), so [`Bert2Bert::save_pretrained`] writes a directory transformers can load.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::models::activation::Activation;
use crate::models::bert::BertConfig;
use crate::models::seq2seq::{
    additive_key_mask, cached_cross_kv, cached_self_kv, causal_additive_mask, load_into_var_store,
    merge_heads, read_safetensors_map, save_var_store, seeded_normal, split_heads, weights_file_in,
    DecoderCache, LayerCache, Linear, LoadReport, Seq2SeqModel, SpecialTokens,
};

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

fn d_encoder_decoder() -> String {
    "encoder-decoder".into()
}

/// transformers' `EncoderDecoderConfig` restricted to BERT halves of equal width (so no
/// `enc_to_dec_proj`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderDecoderConfig {
    #[serde(default = "d_encoder_decoder")]
    pub model_type: String,
    pub encoder: BertConfig,
    pub decoder: BertConfig,
    pub decoder_start_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl EncoderDecoderConfig {
    /// Encoder and decoder both shaped like `bert` (the warm-start case).
    pub fn from_bert(bert: BertConfig, tokens: SpecialTokens) -> Self {
        EncoderDecoderConfig {
            model_type: d_encoder_decoder(),
            encoder: bert.clone(),
            decoder: bert,
            decoder_start_token_id: tokens.decoder_start,
            eos_token_id: tokens.eos,
            pad_token_id: tokens.pad,
            extra: Default::default(),
        }
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: EncoderDecoderConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing encoder-decoder config {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.encoder.validate()?;
        self.decoder.validate()?;
        anyhow::ensure!(
            self.encoder.hidden_size == self.decoder.hidden_size,
            "encoder-decoder config: encoder and decoder hidden sizes differ ({} vs {}); enc_to_dec_proj is not supported",
            self.encoder.hidden_size,
            self.decoder.hidden_size
        );
        Ok(())
    }

    fn tokens(&self) -> SpecialTokens {
        SpecialTokens {
            decoder_start: self.decoder_start_token_id,
            eos: self.eos_token_id,
            pad: self.pad_token_id,
        }
    }
}

/// `[CLS]` / `[SEP]` / `[PAD]` ids of a BERT WordPiece `tokenizer.json` (looked up in
/// `added_tokens`, then in the model vocabulary), as decoder start / EOS / pad.
pub fn bert_special_tokens(tokenizer_json: &Path) -> anyhow::Result<SpecialTokens> {
    let text = std::fs::read_to_string(tokenizer_json)
        .with_context(|| format!("reading {}", tokenizer_json.display()))?;
    let tok: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", tokenizer_json.display()))?;
    let find = |content: &str| -> anyhow::Result<i64> {
        if let Some(added) = tok["added_tokens"].as_array() {
            if let Some(id) =
                added.iter().find(|t| t["content"] == content).and_then(|t| t["id"].as_i64())
            {
                return Ok(id);
            }
        }
        tok["model"]["vocab"][content]
            .as_i64()
            .with_context(|| format!("{}: no {content} token", tokenizer_json.display()))
    };
    Ok(SpecialTokens { decoder_start: find("[CLS]")?, eos: find("[SEP]")?, pad: find("[PAD]")? })
}

// ------------------------------------------------------------------------------------------------
// Layers (parameters are created zero-filled and initialised afterwards, see the module docs)
// ------------------------------------------------------------------------------------------------

fn zeros(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    p.var(name, dims, nn::Init::Const(0.0))
}

fn linear(p: nn::Path, in_dim: i64, out_dim: i64) -> Linear {
    Linear {
        weight: zeros(&p, "weight", &[out_dim, in_dim]),
        bias: Some(zeros(&p, "bias", &[out_dim])),
        lora: None,
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(p: nn::Path, d: i64, eps: f64) -> Self {
        LayerNorm { weight: zeros(&p, "weight", &[d]), bias: zeros(&p, "bias", &[d]), eps }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

#[derive(Debug)]
struct BertEmbeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: f64,
}

impl BertEmbeddings {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        BertEmbeddings {
            word: zeros(&(&p / "word_embeddings"), "weight", &[c.vocab_size, c.hidden_size]),
            position: zeros(
                &(&p / "position_embeddings"),
                "weight",
                &[c.max_position_embeddings, c.hidden_size],
            ),
            token_type: zeros(
                &(&p / "token_type_embeddings"),
                "weight",
                &[c.type_vocab_size, c.hidden_size],
            ),
            norm: LayerNorm::new(&p / "LayerNorm", c.hidden_size, c.layer_norm_eps),
            dropout: c.hidden_dropout_prob,
        }
    }

    /// Word + token type 0 + absolute positions `past..past + len` (summed in transformers' order).
    fn forward(&self, ids: &Tensor, past: i64, train: bool) -> Tensor {
        let len = ids.size()[1];
        let max = self.position.size()[0];
        assert!(
            past + len <= max,
            "sequence of {} positions exceeds max_position_embeddings = {max}",
            past + len
        );
        let words = Tensor::embedding(&self.word, &ids.to_kind(Kind::Int64), -1, false, false);
        let x = words + self.token_type.get(0) + self.position.narrow(0, past, len);
        self.norm.forward(&x).dropout(self.dropout, train)
    }
}

/// `BertAttention`: multi-head attention (self or cross) + `BertSelfOutput` (dense, dropout,
/// residual, LayerNorm).
#[derive(Debug)]
struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: i64,
    head_dim: i64,
    attn_dropout: f64,
    hidden_dropout: f64,
}

impl BertAttention {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let s = &p / "self";
        let o = &p / "output";
        let h = c.hidden_size;
        BertAttention {
            query: linear(&s / "query", h, h),
            key: linear(&s / "key", h, h),
            value: linear(&s / "value", h, h),
            dense: linear(&o / "dense", h, h),
            norm: LayerNorm::new(&o / "LayerNorm", h, c.layer_norm_eps),
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            attn_dropout: c.attention_probs_dropout_prob,
            hidden_dropout: c.hidden_dropout_prob,
        }
    }

    fn attend(
        &self,
        x: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        // transformers' eager attention: (q k^T) * head_dim^-0.5, + additive mask, softmax.
        // Functional adds (not `+=`): libtorch's in-place ops would clash with autograd's saved tensors.
        let scores = q.matmul(&k.transpose(-1, -2)) * (self.head_dim as f64).powf(-0.5);
        let scores = match mask {
            Some(m) => scores + m,
            None => scores,
        };
        let weights =
            scores.softmax(-1, Kind::Float).to_kind(q.kind()).dropout(self.attn_dropout, train);
        let h = self
            .dense
            .forward(&merge_heads(&weights.matmul(v)))
            .dropout(self.hidden_dropout, train);
        self.norm.forward(&(h + x))
    }

    fn self_attention(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let q = split_heads(&self.query.forward(x), self.heads, self.head_dim);
        let k = split_heads(&self.key.forward(x), self.heads, self.head_dim);
        let v = split_heads(&self.value.forward(x), self.heads, self.head_dim);
        let (k, v) = cached_self_kv(k, v, cache);
        self.attend(x, &q, &k, &v, mask, train)
    }

    fn cross_attention(
        &self,
        x: &Tensor,
        encoder_states: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let q = split_heads(&self.query.forward(x), self.heads, self.head_dim);
        let (k, v) = cached_cross_kv(cache, || {
            (
                split_heads(&self.key.forward(encoder_states), self.heads, self.head_dim),
                split_heads(&self.value.forward(encoder_states), self.heads, self.head_dim),
            )
        });
        self.attend(x, &q, &k, &v, Some(mask), train)
    }
}

/// `BertLayer`: attention, (decoder) cross-attention, feed-forward (`intermediate` → activation →
/// `output.dense` → dropout → residual → LayerNorm).
#[derive(Debug)]
struct BertLayer {
    attention: BertAttention,
    crossattention: Option<BertAttention>,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    act: Activation,
    dropout: f64,
}

impl BertLayer {
    fn new(p: nn::Path, c: &BertConfig, cross: bool) -> Self {
        BertLayer {
            attention: BertAttention::new(&p / "attention", c),
            crossattention: cross.then(|| BertAttention::new(&p / "crossattention", c)),
            intermediate: linear(&p / "intermediate" / "dense", c.hidden_size, c.intermediate_size),
            output: linear(&p / "output" / "dense", c.intermediate_size, c.hidden_size),
            output_norm: LayerNorm::new(
                &p / "output" / "LayerNorm",
                c.hidden_size,
                c.layer_norm_eps,
            ),
            act: c.hidden_act,
            dropout: c.hidden_dropout_prob,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        enc: Option<(&Tensor, &Tensor)>,
        mut cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let mut h = self.attention.self_attention(x, mask, cache.as_deref_mut(), train);
        if let (Some(cross), Some((states, enc_mask))) = (&self.crossattention, enc) {
            h = cross.cross_attention(&h, states, enc_mask, cache, train);
        }
        let ff = self
            .output
            .forward(&self.act.apply(&self.intermediate.forward(&h)))
            .dropout(self.dropout, train);
        self.output_norm.forward(&(ff + h))
    }
}

#[derive(Debug)]
struct BertStack {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
}

impl BertStack {
    /// `p` is the `BertModel` prefix (`encoder` or `decoder.bert`).
    fn new(p: nn::Path, c: &BertConfig, cross: bool) -> Self {
        let layers = (0..c.num_hidden_layers)
            .map(|i| BertLayer::new(&p / "encoder" / "layer" / i, c, cross))
            .collect();
        BertStack { embeddings: BertEmbeddings::new(&p / "embeddings", c), layers }
    }
}

/// `BertLMPredictionHead`: transform (dense, activation, LayerNorm), then the word embeddings as
/// output projection plus a bias.
#[derive(Debug)]
struct LmHead {
    dense: Linear,
    act: Activation,
    norm: LayerNorm,
    bias: Tensor,
}

// ------------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------------

/// transformers' `EncoderDecoderModel(BertModel, BertLMHeadModel)`.
pub struct Bert2Bert {
    vs: nn::VarStore,
    config: EncoderDecoderConfig,
    encoder: BertStack,
    decoder: BertStack,
    head: LmHead,
}

impl std::fmt::Debug for Bert2Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert2Bert")
            .field("config", &self.config)
            .field("device", &self.vs.device())
            .finish()
    }
}

/// Checkpoint names to try for a BERT variable `rest` (the name without the `encoder.` /
/// `decoder.bert.` prefix): bare `BertModel` names, `bert.`-prefixed ones (`BertForMaskedLM`,
/// `BertForPreTraining`), and the old TF-converted `gamma`/`beta` LayerNorm names.
fn bert_checkpoint_names(rest: &str) -> Vec<String> {
    let mut names = vec![rest.to_string(), format!("bert.{rest}")];
    for (new, old) in
        [("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta")]
    {
        if let Some(stem) = rest.strip_suffix(new) {
            names.push(format!("{stem}{old}"));
            names.push(format!("bert.{stem}{old}"));
        }
    }
    names
}

impl Bert2Bert {
    fn build(config: EncoderDecoderConfig, device: Device) -> anyhow::Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let encoder = BertStack::new(&root / "encoder", &config.encoder, false);
        let decoder = BertStack::new(&root / "decoder" / "bert", &config.decoder, true);
        let pred = &root / "decoder" / "cls" / "predictions";
        let d = &config.decoder;
        let head = LmHead {
            dense: linear(&pred / "transform" / "dense", d.hidden_size, d.hidden_size),
            act: d.hidden_act,
            norm: LayerNorm::new(
                &pred / "transform" / "LayerNorm",
                d.hidden_size,
                d.layer_norm_eps,
            ),
            bias: zeros(&pred, "bias", &[d.vocab_size]),
        };
        Ok(Bert2Bert { vs, config, encoder, decoder, head })
    }

    /// A randomly initialised model (every variable drawn as described in the module docs).
    pub fn new(config: EncoderDecoderConfig, device: Device, seed: u64) -> anyhow::Result<Self> {
        let model = Self::build(config, device)?;
        let mut names: Vec<String> = model.vs.variables().into_keys().collect();
        names.sort();
        model.init_variables(&names, seed);
        // nn.Embedding(padding_idx=pad) starts with a zero pad row.
        tch::no_grad(|| {
            for (emb, pad) in [
                (&model.encoder.embeddings.word, model.config.encoder.pad_token_id_or(0)),
                (&model.decoder.embeddings.word, model.config.decoder.pad_token_id_or(0)),
            ] {
                if (0..emb.size()[0]).contains(&pad) {
                    let _ = emb.get(pad).fill_(0.0);
                }
            }
        });
        Ok(model)
    }

    /// Warm start from a BERT model directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json` for the `[CLS]`/`[SEP]`/`[PAD]` ids): encoder and decoder get copies of the
    /// BERT weights, the rest is initialised from `seed` (module docs). The report's `missing` lists
    /// the new variables.
    pub fn warm_start(
        bert_dir: &Path,
        device: Device,
        seed: u64,
    ) -> anyhow::Result<(Self, LoadReport)> {
        let bert = BertConfig::from_file(&bert_dir.join("config.json"))?;
        let tokens = bert_special_tokens(&bert_dir.join("tokenizer.json"))?;
        Self::warm_start_from(bert, &weights_file_in(bert_dir)?, tokens, device, seed)
    }

    /// [`Bert2Bert::warm_start`] with the pieces given explicitly.
    pub fn warm_start_from(
        bert: BertConfig,
        weights: &Path,
        tokens: SpecialTokens,
        device: Device,
        seed: u64,
    ) -> anyhow::Result<(Self, LoadReport)> {
        let model = Self::build(EncoderDecoderConfig::from_bert(bert, tokens), device)?;
        let tensors = read_safetensors_map(weights)?;
        let lookup = |name: &str| -> Vec<String> {
            if let Some(rest) = name.strip_prefix("encoder.") {
                bert_checkpoint_names(rest)
            } else if let Some(rest) = name.strip_prefix("decoder.bert.") {
                bert_checkpoint_names(rest)
            } else if let Some(rest) = name.strip_prefix("decoder.") {
                // The prediction head of a BertForMaskedLM / BertForPreTraining checkpoint.
                vec![rest.to_string()]
            } else {
                vec![]
            }
        };
        let report = load_into_var_store(
            &model.vs,
            &tensors,
            &lookup,
            false,
            &weights.display().to_string(),
        )?;
        anyhow::ensure!(
            report
                .missing
                .iter()
                .all(|n| n.contains(".crossattention.") || n.starts_with("decoder.cls.")),
            "{}: not a BERT checkpoint for this config; missing {:?}",
            weights.display(),
            report
                .missing
                .iter()
                .filter(|n| !(n.contains(".crossattention.") || n.starts_with("decoder.cls.")))
                .take(5)
                .collect::<Vec<_>>()
        );
        model.init_variables(&report.missing, seed);
        Ok((model, report))
    }

    /// Loads a directory written by [`Bert2Bert::save_pretrained`] or transformers'
    /// `EncoderDecoderModel.save_pretrained` (BERT halves).
    pub fn from_pretrained(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let config = EncoderDecoderConfig::from_file(&dir.join("config.json"))?;
        let mut model = Self::build(config, device)?;
        model.load_safetensors(&weights_file_in(dir)?, true)?;
        Ok(model)
    }

    /// Fills variables from a safetensors file with `EncoderDecoderModel` names (tied copies of the
    /// output projection are accepted as aliases). With `strict == false` absent variables are left
    /// as they are: this is how the parity test puts the fixture's new (cross-attention and head)
    /// weights into a warm-started model.
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
            match name {
                "decoder.bert.embeddings.word_embeddings.weight" => {
                    vec![name.into(), "decoder.cls.predictions.decoder.weight".into()]
                }
                "decoder.cls.predictions.bias" => {
                    vec![name.into(), "decoder.cls.predictions.decoder.bias".into()]
                }
                _ => vec![name.into()],
            }
        };
        load_into_var_store(&self.vs, tensors, &lookup, strict, source)
    }

    /// Writes `config.json` (an `EncoderDecoderConfig` transformers understands) and
    /// `model.safetensors`.
    pub fn save_pretrained(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cfg = serde_json::to_value(&self.config)?;
        let obj = cfg.as_object_mut().expect("config is an object");
        obj.entry("architectures").or_insert_with(|| serde_json::json!(["EncoderDecoderModel"]));
        obj.insert("is_encoder_decoder".into(), true.into());
        obj["encoder"]
            .as_object_mut()
            .expect("encoder config is an object")
            .insert("architectures".into(), serde_json::json!(["BertModel"]));
        let dec = obj["decoder"].as_object_mut().expect("decoder config is an object");
        dec.insert("is_decoder".into(), true.into());
        dec.insert("add_cross_attention".into(), true.into());
        dec.insert("architectures".into(), serde_json::json!(["BertLMHeadModel"]));
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
        save_var_store(&self.vs, &dir.join("model.safetensors"))
    }

    pub fn config(&self) -> &EncoderDecoderConfig {
        &self.config
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Initialises the named variables per the module docs: `LayerNorm.weight` → 1, `.bias` → 0,
    /// else [`seeded_normal`] with the half's `initializer_range`.
    fn init_variables(&self, names: &[String], seed: u64) {
        let vars = self.vs.variables();
        tch::no_grad(|| {
            for name in names {
                let mut var = vars[name].shallow_clone();
                if name.ends_with("LayerNorm.weight") {
                    let _ = var.fill_(1.0);
                } else if name.ends_with(".bias") {
                    let _ = var.fill_(0.0);
                } else {
                    let half = if name.starts_with("encoder.") {
                        &self.config.encoder
                    } else {
                        &self.config.decoder
                    };
                    var.copy_(
                        &seeded_normal(&var.size(), half.initializer_range, seed, name)
                            .to_kind(var.kind()),
                    );
                }
            }
        });
    }
}

impl Seq2SeqModel for Bert2Bert {
    fn special_tokens(&self) -> SpecialTokens {
        self.config.tokens()
    }

    fn vocab_size(&self) -> i64 {
        self.config.decoder.vocab_size
    }

    fn num_decoder_layers(&self) -> usize {
        self.decoder.layers.len()
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn save_pretrained(&self, dir: &Path) -> anyhow::Result<()> {
        Bert2Bert::save_pretrained(self, dir)
    }

    /// The attention (self and cross) and feed-forward layers of both stacks; the LM head's
    /// transform stays out, as in PEFT's `all-linear` for a BERT.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (prefix, stack) in [("encoder", &mut self.encoder), ("decoder.bert", &mut self.decoder)]
        {
            for (i, layer) in stack.layers.iter_mut().enumerate() {
                let p = format!("{prefix}.encoder.layer.{i}");
                let BertLayer { attention, crossattention, intermediate, output, .. } = layer;
                for (kind, att) in std::iter::once(("attention", attention))
                    .chain(crossattention.as_mut().map(|c| ("crossattention", c)))
                {
                    let BertAttention { query, key, value, dense, .. } = att;
                    out.push((format!("{p}.{kind}.self.query"), query));
                    out.push((format!("{p}.{kind}.self.key"), key));
                    out.push((format!("{p}.{kind}.self.value"), value));
                    out.push((format!("{p}.{kind}.output.dense"), dense));
                }
                out.push((format!("{p}.intermediate.dense"), intermediate));
                out.push((format!("{p}.output.dense"), output));
            }
        }
        out
    }

    fn lora_default_targets(&self) -> &'static [&'static str] {
        &["query", "key", "value", "dense"]
    }

    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let device = self.device();
        let mask = additive_key_mask(&attention_mask.to_device(device));
        let mut x = self.encoder.embeddings.forward(&input_ids.to_device(device), 0, train);
        for layer in &self.encoder.layers {
            x = layer.forward(&x, Some(&mask), None, None, train);
        }
        x
    }

    fn decoder_mask_for_labels(&self, decoder_input_ids: &Tensor) -> Option<Tensor> {
        // EncoderDecoderModel.forward: decoder_attention_mask = (decoder_input_ids != pad).
        Some(decoder_input_ids.ne(self.config.pad_token_id).to_kind(Kind::Int64))
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
        let self_mask = causal_additive_mask(new_len, past, decoder_attention_mask, device);
        let cross_mask = additive_key_mask(&encoder_mask.to_device(device));
        let encoder_states = encoder_states.to_device(device);
        let mut x = self.decoder.embeddings.forward(&ids, past, train);
        for (i, layer) in self.decoder.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(
                &x,
                self_mask.as_ref(),
                Some((&encoder_states, &cross_mask)),
                layer_cache,
                train,
            );
        }
        let h = self.head.norm.forward(&self.head.act.apply(&self.head.dense.forward(&x)));
        super::precision::linear(&h, &self.decoder.embeddings.word, Some(&self.head.bias))
    }
}

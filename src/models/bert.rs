//! BERT-family encoders (BERT, MiniLM, RoBERTa, XLM-RoBERTa) in tch, for inference.
//!
//! The layout follows Hugging Face transformers' `BertModel` / `XLMRobertaModel` in eval mode:
//! embeddings (word + position + token type, then LayerNorm) followed by post-LayerNorm
//! transformer layers. Weights are read from the standard `model.safetensors` names, with or
//! without the `bert.` / `roberta.` prefix that task heads add; dropout is the identity at
//! inference and is not modelled. Everything runs under `no_grad`.
//!
//! [`BertEncoder`] pairs the model with its `tokenizer.json` (the `tokenizers` crate, i.e. the same
//! Rust code as Python's "fast" tokenizers) and provides sentence embeddings the way
//! sentence-transformers computes them (mean pooling over real tokens, then L2 normalisation when
//! the model folder's `modules.json` has a `Normalize` module, as all-MiniLM-L6-v2 does).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::activation::Activation;

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

/// How position ids are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionIds {
    /// BERT: 0, 1, 2, ... for every row.
    Absolute,
    /// RoBERTa / XLM-R: real tokens count up from `padding_idx + 1`; padding gets `padding_idx`
    /// (so the first 2 rows of the position table are never used by text).
    PaddingOffset { padding_idx: i64 },
}

/// A Hugging Face `config.json` of a BERT-family model: what the inference encoder here needs and
/// what the BERT2BERT halves ([`super::encoder_decoder`]) need. Missing fields take transformers'
/// `BertConfig` defaults; unknown fields are kept in `extra` and serialised back, so a config read
/// and written again keeps them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Used in training only (inference does not model dropout).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    /// 2 for BERT; 1 for RoBERTa / XLM-R (whose single row is still added, as transformers does).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// Standard deviation of newly initialised weights.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// `None` when the file has none: RoBERTa-style position ids then assume 1, and BERT2BERT
    /// assumes transformers' default 0 (see [`BertConfig::pad_token_id_or`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    /// Every other field of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> Activation {
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_positions() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: BertConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing BERT config {}", path.display()))?;
        config.validate().with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.position_embedding_type != "absolute" {
            bail!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            );
        }
        Ok(())
    }

    /// A small BERT configuration for tests and tiny students (exact GELU, 64 positions, pad 0).
    pub fn tiny(
        vocab_size: i64,
        hidden_size: i64,
        num_hidden_layers: usize,
        num_attention_heads: i64,
    ) -> Self {
        BertConfig {
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size: 2 * hidden_size,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            position_embedding_type: default_pos_type(),
            extra: Default::default(),
        }
    }

    /// The pad id, or `default` when the file names none.
    pub fn pad_token_id_or(&self, default: i64) -> i64 {
        self.pad_token_id.unwrap_or(default)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// RoBERTa-style models number positions after the padding index.
    pub fn position_ids(&self) -> PositionIds {
        match self.model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => {
                PositionIds::PaddingOffset { padding_idx: self.pad_token_id_or(1) }
            }
            _ => PositionIds::Absolute,
        }
    }

    /// The longest input (special tokens included) the position table allows.
    pub fn max_input_length(&self) -> i64 {
        match self.position_ids() {
            PositionIds::Absolute => self.max_position_embeddings,
            PositionIds::PaddingOffset { padding_idx } => {
                self.max_position_embeddings - padding_idx - 1
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Weights
// ------------------------------------------------------------------------------------------------

/// The tensors of a checkpoint, with the task-head prefix removed, handed out by name so that a
/// missing weight is reported by its full name.
struct WeightMap {
    tensors: HashMap<String, Tensor>,
    source: String,
}

impl WeightMap {
    fn read_safetensors(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let named = Tensor::read_safetensors(path)
            .with_context(|| format!("reading weights {}", path.display()))?;
        // Task checkpoints (BertForMaskedLM, XLMRobertaForMaskedLM, ...) nest the encoder under a
        // prefix; find it from the word embeddings and keep only the encoder's tensors.
        let anchor = "embeddings.word_embeddings.weight";
        let prefix = named
            .iter()
            .find_map(|(name, _)| name.strip_suffix(anchor).map(str::to_string))
            .ok_or_else(|| {
                anyhow!(
                    "{}: no `{anchor}` tensor; is this a BERT-family checkpoint?",
                    path.display()
                )
            })?;
        let mut tensors = HashMap::new();
        for (name, t) in named {
            if let Some(rest) = name.strip_prefix(prefix.as_str()) {
                // Floating weights are cast (f16/bf16 checkpoints run in f32 by default); integer
                // buffers such as `position_ids` are kept as they are.
                let t = if t.is_floating_point() { t.to_kind(kind) } else { t };
                tensors.insert(rest.to_string(), t.to_device(device));
            }
        }
        Ok(WeightMap { tensors, source: path.display().to_string() })
    }

    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| anyhow!("{}: missing weight `{name}`", self.source))
    }

    /// LayerNorm weights under either naming (`weight`/`bias`, or TF-era `gamma`/`beta`).
    fn take_layer_norm(&mut self, prefix: &str, eps: f64) -> Result<LayerNorm> {
        let weight = self
            .take(&format!("{prefix}.weight"))
            .or_else(|_| self.take(&format!("{prefix}.gamma")))?;
        let bias = self
            .take(&format!("{prefix}.bias"))
            .or_else(|_| self.take(&format!("{prefix}.beta")))?;
        Ok(LayerNorm { weight, bias, eps })
    }

    fn take_linear(&mut self, prefix: &str) -> Result<Linear> {
        Ok(Linear {
            weight: self.take(&format!("{prefix}.weight"))?,
            bias: self.take(&format!("{prefix}.bias"))?,
        })
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        super::precision::linear(x, &self.weight, Some(&self.bias))
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let last = *x.size().last().expect("LayerNorm input has a last dimension");
        x.layer_norm([last], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

// ------------------------------------------------------------------------------------------------
// Model
// ------------------------------------------------------------------------------------------------

struct Embeddings {
    word: Tensor,
    position: Tensor,
    /// Absent only in checkpoints that have no token-type table at all.
    token_type: Option<Tensor>,
    norm: LayerNorm,
    position_ids: PositionIds,
}

impl Embeddings {
    fn forward(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>) -> Tensor {
        let (batch, seq) = input_ids.size2().expect("input_ids is [batch, seq]");
        let positions = match self.position_ids {
            PositionIds::Absolute => Tensor::arange(seq, (Kind::Int64, input_ids.device()))
                .unsqueeze(0)
                .expand([batch, seq], false),
            PositionIds::PaddingOffset { padding_idx } => {
                // As transformers' create_position_ids_from_input_ids: depends on the pad id in
                // the input, not on the attention mask.
                let real = input_ids.ne(padding_idx).to_kind(Kind::Int64);
                real.cumsum(1, Kind::Int64) * &real + padding_idx
            }
        };
        let mut x = Tensor::embedding(&self.word, input_ids, -1, false, false)
            + Tensor::embedding(&self.position, &positions, -1, false, false);
        if let Some(table) = &self.token_type {
            x += match token_type_ids {
                Some(tt) => Tensor::embedding(table, tt, -1, false, false),
                // All-zero token types: row 0 broadcast over every position.
                None => table.get(0).view([1, 1, -1]),
            };
        }
        self.norm.forward(&x)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

impl Layer {
    fn forward(&self, x: &Tensor, keep: &Tensor, heads: i64, act: Activation) -> Tensor {
        let (batch, seq, hidden) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let head_dim = hidden / heads;
        let split = |t: Tensor| t.view([batch, seq, heads, head_dim]).transpose(1, 2);
        let q = split(self.query.forward(x));
        let k = split(self.key.forward(x));
        let v = split(self.value.forward(x));
        // `keep` is [batch, 1, 1, seq], true on real tokens: padding keys get no weight. Every
        // row has at least one real token ([CLS]), so no softmax row is empty.
        let ctx =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(keep), 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).contiguous().view([batch, seq, hidden]);
        let a = self.attn_norm.forward(&(self.attn_out.forward(&ctx) + x));
        let h = self.intermediate.forward(&a);
        let h = act.apply(&h);
        self.out_norm.forward(&(self.output.forward(&h) + a))
    }
}

/// A BERT-family encoder with its weights on one device.
pub struct BertModel {
    pub config: BertConfig,
    pub device: Device,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Load from a `model.safetensors` (f32 compute).
    pub fn load(config: BertConfig, weights: &Path, device: Device) -> Result<Self> {
        Self::load_with_kind(config, weights, device, Kind::Float)
    }

    /// Load, casting floating weights to `kind` (e.g. `Kind::Half` on a GPU).
    pub fn load_with_kind(
        config: BertConfig,
        weights: &Path,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let mut w = WeightMap::read_safetensors(weights, device, kind)?;
        let eps = config.layer_norm_eps;
        let embeddings = Embeddings {
            word: w.take("embeddings.word_embeddings.weight")?,
            position: w.take("embeddings.position_embeddings.weight")?,
            token_type: w.take("embeddings.token_type_embeddings.weight").ok(),
            norm: w.take_layer_norm("embeddings.LayerNorm", eps)?,
            position_ids: config.position_ids(),
        };
        let word_rows = embeddings.word.size()[0];
        if word_rows != config.vocab_size {
            bail!(
                "{}: word embeddings have {word_rows} rows but config.vocab_size is {}",
                weights.display(),
                config.vocab_size
            );
        }
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: w.take_linear(&format!("{p}.attention.self.query"))?,
                key: w.take_linear(&format!("{p}.attention.self.key"))?,
                value: w.take_linear(&format!("{p}.attention.self.value"))?,
                attn_out: w.take_linear(&format!("{p}.attention.output.dense"))?,
                attn_norm: w.take_layer_norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                intermediate: w.take_linear(&format!("{p}.intermediate.dense"))?,
                output: w.take_linear(&format!("{p}.output.dense"))?,
                out_norm: w.take_layer_norm(&format!("{p}.output.LayerNorm"), eps)?,
            });
        }
        // Whatever is left (pooler, buffers) is not used by the encoder's hidden states.
        Ok(BertModel { config, device, embeddings, layers })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// All hidden states of a padded batch: `[embeddings, layer 1, ..., layer n]`, each
    /// `[batch, seq, hidden]`. `attention_mask` is 1 on real tokens, 0 on padding.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> Vec<Tensor> {
        self.forward_layers(input_ids, attention_mask, token_type_ids, self.layers.len())
    }

    /// The first `n_layers + 1` hidden states only (layers above are not run), as bert_score does
    /// when it truncates the encoder to the layer it scores with.
    pub fn forward_layers(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        n_layers: usize,
    ) -> Vec<Tensor> {
        assert!(
            n_layers <= self.layers.len(),
            "asked for {n_layers} layers of a {}-layer model",
            self.layers.len()
        );
        let _guard = tch::no_grad_guard();
        let input_ids = input_ids.to_device(self.device);
        let keep = attention_mask.to_device(self.device).ne(0).unsqueeze(1).unsqueeze(1);
        let token_type_ids = token_type_ids.map(|t| t.to_device(self.device));
        let mut states = Vec::with_capacity(n_layers + 1);
        let mut h = self.embeddings.forward(&input_ids, token_type_ids.as_ref());
        for layer in &self.layers[..n_layers] {
            let next =
                layer.forward(&h, &keep, self.config.num_attention_heads, self.config.hidden_act);
            states.push(h);
            h = next;
        }
        states.push(h);
        states
    }
}

// ------------------------------------------------------------------------------------------------
// Tokenizer + model
// ------------------------------------------------------------------------------------------------

/// sentence-transformers pooling (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

/// A padded batch on the model's device.
pub struct EncoderBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    /// Tokens per row, special tokens included.
    pub lengths: Vec<i64>,
}

/// A BERT-family model with its tokenizer and the sentence-embedding settings of its folder.
pub struct BertEncoder {
    pub model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    /// Truncation length, special tokens included.
    max_length: usize,
    /// The tokenizer's own `model_max_length` (what bert_score truncates at).
    pub tokenizer_max_length: usize,
    pub pad_id: i64,
    pub cls_id: Option<i64>,
    pub sep_id: Option<i64>,
    pub pooling: Pooling,
    pub normalize: bool,
    /// sentence-transformers' `do_lower_case`.
    pub lowercase: bool,
    /// Sentences per forward pass in [`BertEncoder::embed_sentences`].
    pub batch_size: usize,
}

impl BertEncoder {
    /// Load a Hugging Face-style folder: `config.json`, `model.safetensors`, `tokenizer.json`,
    /// and when present `tokenizer_config.json`, `special_tokens_map.json`,
    /// `sentence_bert_config.json`, `modules.json`, `1_Pooling/config.json`.
    pub fn from_dir(dir: &Path, device: Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let model = BertModel::load(config, &dir.join("model.safetensors"), device)?;
        let tok_config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() || !dir.join("vocab.txt").is_file() {
            tokenizers::Tokenizer::from_file(&tok_path)
                .map_err(|e| anyhow!("{}: {e}", tok_path.display()))?
        } else {
            // Older hub repos ship only the slow tokenizer's files.
            let lower = tok_config
                .as_ref()
                .and_then(|c| c.get("do_lower_case"))
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            wordpiece_from_vocab(&dir.join("vocab.txt"), lower)?
        };

        let special_map = read_json_opt(&dir.join("special_tokens_map.json"))?;
        let st_config = read_json_opt(&dir.join("sentence_bert_config.json"))?;
        let modules = read_json_opt(&dir.join("modules.json"))?;
        let pooling_config = read_json_opt(&dir.join("1_Pooling").join("config.json"))?;

        let position_limit = model.config.max_input_length().max(1) as usize;
        // transformers uses a huge sentinel when a tokenizer has no limit; the position table
        // is the real bound then.
        let tokenizer_max_length = tok_config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(|v| v.as_f64())
            .filter(|&v| v > 0.0 && v < 1e9)
            .map(|v| v as usize)
            .unwrap_or(position_limit)
            .min(position_limit);
        let max_length = st_config
            .as_ref()
            .and_then(|c| c.get("max_seq_length"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(tokenizer_max_length)
            .min(position_limit);
        let lowercase = st_config
            .as_ref()
            .and_then(|c| c.get("do_lower_case"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let normalize = modules.as_ref().and_then(|m| m.as_array()).is_some_and(|mods| {
            mods.iter().any(|m| {
                m.get("type").and_then(|t| t.as_str())
                    == Some("sentence_transformers.models.Normalize")
            })
        });
        let pooling = match &pooling_config {
            None => Pooling::Mean,
            Some(p) => {
                let on = |k: &str| p.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                if on("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else if on("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if on("pooling_mode_max_tokens") {
                    Pooling::Max
                } else {
                    bail!(
                        "{}: unsupported pooling mode (mean, cls and max are)",
                        dir.join("1_Pooling/config.json").display()
                    )
                }
            }
        };

        let special = |name: &str| -> Option<String> {
            [&tok_config, &special_map].into_iter().flatten().find_map(|c| match c.get(name)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|v| v.as_str()).map(str::to_string)
                }
                _ => None,
            })
        };
        let id_of = |token: &str| tokenizer.token_to_id(token).map(i64::from);
        let cls_id = special("cls_token")
            .and_then(|t| id_of(&t))
            .or_else(|| id_of("[CLS]"))
            .or_else(|| id_of("<s>"));
        let sep_id = special("sep_token")
            .and_then(|t| id_of(&t))
            .or_else(|| id_of("[SEP]"))
            .or_else(|| id_of("</s>"));
        let pad_id = special("pad_token")
            .and_then(|t| id_of(&t))
            .or(model.config.pad_token_id)
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id as i64))
            .unwrap_or(0);

        let mut encoder = BertEncoder {
            model,
            tokenizer,
            max_length,
            tokenizer_max_length,
            pad_id,
            cls_id,
            sep_id,
            pooling,
            normalize,
            lowercase,
            batch_size: 32,
        };
        encoder.set_max_length(max_length)?;
        Ok(encoder)
    }

    /// Resolve a registered model (verified files in the cache) and load it.
    pub fn from_registry(
        registry: &crate::models::registry::ModelRegistry,
        id: &str,
        device: Device,
    ) -> Result<Self> {
        let entry = registry.model(id)?;
        if entry.family != crate::models::registry::Family::Bert {
            bail!(
                "model `{}` is of family {:?}, not a BERT-family encoder",
                entry.id,
                entry.family
            );
        }
        let resolved = registry.resolve(id)?;
        let mut encoder = Self::from_dir(&resolved.dir, device)
            .with_context(|| format!("loading model `{}`", entry.id))?;
        encoder.apply_entry(entry)?;
        Ok(encoder)
    }

    /// The registry's sentence-embedding settings for a model (`max_seq_length`, `pooling`,
    /// `normalize`), over what its folder says: repos that are not sentence-transformers folders
    /// (DataFinder's tevatron encoder) carry no pooling files.
    pub fn apply_entry(&mut self, entry: &crate::models::registry::ModelEntry) -> Result<()> {
        if let Some(n) = entry.max_seq_length {
            self.set_max_length(n)?;
        }
        if let Some(p) = &entry.pooling {
            self.pooling = match p.as_str() {
                "mean" => Pooling::Mean,
                "cls" => Pooling::Cls,
                "max" => Pooling::Max,
                other => bail!(
                    "data/models.toml: model `{}`: pooling `{other}` is not mean, cls or max",
                    entry.id
                ),
            };
        }
        if let Some(n) = entry.normalize {
            self.normalize = n;
        }
        Ok(())
    }

    /// The tokenizer, with this encoder's truncation and no padding.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Change the truncation length (special tokens included). The tokenizer.json's own
    /// padding/truncation settings (all-MiniLM-L6-v2 ships fixed 128) are always replaced.
    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        let limit = self.model.config.max_input_length() as usize;
        if max_length == 0 || max_length > limit {
            bail!("max_length {max_length} is outside 1..={limit} (the model's position table)");
        }
        self.tokenizer.with_padding(None);
        self.tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length,
                strategy: tokenizers::TruncationStrategy::LongestFirst,
                stride: 0,
                direction: tokenizers::TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("setting truncation: {e}"))?;
        self.max_length = max_length;
        Ok(())
    }

    /// Token ids with special tokens, truncated to [`Self::max_length`]. Texts are used as given.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().iter().map(|&i| i64::from(i)).collect()).collect())
    }

    /// Right-pad id sequences with the pad id; the mask is 1 on real tokens.
    pub fn pad(&self, ids: &[Vec<i64>]) -> EncoderBatch {
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(ids.len() * longest);
        let mut mask = Vec::with_capacity(ids.len() * longest);
        for row in ids {
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(self.pad_id, longest - row.len()));
            mask.extend(std::iter::repeat_n(1i64, row.len()));
            mask.extend(std::iter::repeat_n(0i64, longest - row.len()));
        }
        let shape = [ids.len() as i64, longest as i64];
        EncoderBatch {
            input_ids: Tensor::from_slice(&flat).view(shape).to_device(self.model.device),
            attention_mask: Tensor::from_slice(&mask).view(shape).to_device(self.model.device),
            lengths: ids.iter().map(|r| r.len() as i64).collect(),
        }
    }

    /// Hidden states `0..=n_layers` (all layers when `None`) of already tokenized rows, padded
    /// together as one batch; token types are all 0, as transformers defaults them.
    pub fn hidden_states_of_ids(
        &self,
        ids: &[Vec<i64>],
        n_layers: Option<usize>,
    ) -> (Vec<Tensor>, EncoderBatch) {
        let batch = self.pad(ids);
        let n = n_layers.unwrap_or(self.model.num_layers());
        let states = self.model.forward_layers(&batch.input_ids, &batch.attention_mask, None, n);
        (states, batch)
    }

    /// Tokenize, pad and run: every hidden state of the batch and the batch itself.
    pub fn hidden_states(&self, texts: &[&str]) -> Result<(Vec<Tensor>, EncoderBatch)> {
        let ids = self.tokenize(texts)?;
        Ok(self.hidden_states_of_ids(&ids, None))
    }

    /// Sentence embeddings `[n, hidden]` (f32, on the model's device) as sentence-transformers'
    /// `encode`: texts stripped (and lowercased when the folder says so), truncated to
    /// [`Self::max_length`], length-sorted batches, pooling over real tokens of the last layer,
    /// then L2-normalised when [`Self::normalize`] is set.
    pub fn embed_sentences(&self, texts: &[&str]) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let prepared: Vec<String> = texts
            .iter()
            .map(|t| if self.lowercase { t.trim().to_lowercase() } else { t.trim().to_string() })
            .collect();
        let refs: Vec<&str> = prepared.iter().map(String::as_str).collect();
        let ids = self.tokenize(&refs)?;
        // Length bucketing: longest first, so each batch pads little.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut pooled: Vec<Option<Tensor>> = (0..ids.len()).map(|_| None).collect();
        for chunk in order.chunks(self.batch_size.max(1)) {
            let rows: Vec<Vec<i64>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let (states, batch) = self.hidden_states_of_ids(&rows, None);
            let last = states.last().expect("at least the embeddings output").to_kind(Kind::Float);
            let mask = batch.attention_mask.to_kind(Kind::Float).unsqueeze(-1);
            let vectors = match self.pooling {
                Pooling::Mean => {
                    (&last * &mask).sum_dim_intlist(1, false, Kind::Float)
                        / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9)
                }
                Pooling::Cls => last.select(1, 0),
                // Padding set to a large negative value so it never wins, as sentence-transformers.
                Pooling::Max => last.masked_fill(&mask.eq(0.0), -1e9).amax(1, false),
            };
            for (k, &i) in chunk.iter().enumerate() {
                pooled[i] = Some(vectors.get(k as i64));
            }
        }
        if pooled.is_empty() {
            return Ok(Tensor::zeros(
                [0, self.model.config.hidden_size],
                (Kind::Float, self.model.device),
            ));
        }
        let stacked = Tensor::stack(
            &pooled.into_iter().map(|t| t.expect("every row pooled")).collect::<Vec<_>>(),
            0,
        );
        Ok(if self.normalize { l2_normalize(&stacked) } else { stacked })
    }
}

/// Rows divided by their L2 norm (floored at 1e-12, as torch.nn.functional.normalize).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
    x / norm
}

/// A BERT WordPiece tokenizer from a `vocab.txt` (what transformers' `BertTokenizerFast` builds
/// from the slow tokenizer's files): BERT normalisation (clean text, CJK spacing, lowercasing and
/// accent stripping when `lowercase`), whitespace/punctuation pre-splitting, `##` continuation,
/// `[CLS] … [SEP]` around each text, the vocabulary's bracketed specials kept whole.
pub fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    let text =
        std::fs::read_to_string(vocab).with_context(|| format!("reading {}", vocab.display()))?;
    let tokens: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let id = |t: &str| tokens.iter().position(|x| *x == t).map(|i| i as u32);
    let (Some(cls), Some(sep)) = (id("[CLS]"), id("[SEP]")) else {
        bail!("{}: no [CLS] or [SEP] token; is this a BERT WordPiece vocabulary?", vocab.display())
    };
    if id("[UNK]").is_none() {
        bail!("{}: no [UNK] token; is this a BERT WordPiece vocabulary?", vocab.display());
    }
    let path =
        vocab.to_str().with_context(|| format!("{}: the path is not UTF-8", vocab.display()))?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| anyhow!("{}: {e}", vocab.display()))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(tokenizers::normalizers::bert::BertNormalizer::new(
        true, true, None, lowercase,
    )));
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::bert::BertPreTokenizer));
    tok.with_post_processor(Some(tokenizers::processors::bert::BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    tok.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    let specials: Vec<tokenizers::AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| id(t).is_some())
        .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_bert_and_xlmr() {
        let bert: BertConfig = serde_json::from_str(
            r#"{"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,"intermediate_size":1536,
                "vocab_size":30522,"model_type":"bert","pad_token_id":0}"#,
        )
        .unwrap();
        assert_eq!(bert.position_ids(), PositionIds::Absolute);
        assert_eq!(bert.max_input_length(), 512);
        assert_eq!(bert.hidden_act, Activation::Gelu);
        let xlmr: BertConfig = serde_json::from_str(
            r#"{"hidden_size":768,"num_hidden_layers":12,"num_attention_heads":12,"intermediate_size":3072,
                "vocab_size":250002,"model_type":"xlm-roberta","pad_token_id":1,"max_position_embeddings":514,
                "type_vocab_size":1,"layer_norm_eps":1e-5,"hidden_act":"gelu","output_past":true}"#,
        )
        .unwrap();
        assert_eq!(xlmr.position_ids(), PositionIds::PaddingOffset { padding_idx: 1 });
        assert_eq!(xlmr.max_input_length(), 512);
        // Unknown fields survive a round trip (BERT2BERT writes its halves back this way).
        let back = serde_json::to_value(&xlmr).unwrap();
        assert_eq!(back["output_past"], serde_json::json!(true));
        assert_eq!(back["hidden_act"], serde_json::json!("gelu"));
        assert_eq!(back["num_hidden_layers"], serde_json::json!(12));
        // A config without a pad id does not gain one.
        assert!(serde_json::to_value(&bert).unwrap().get("pad_token_id").is_some());
        let mut no_pad = bert.clone();
        no_pad.pad_token_id = None;
        assert!(serde_json::to_value(&no_pad).unwrap().get("pad_token_id").is_none());
        assert_eq!(no_pad.pad_token_id_or(0), 0);
    }
}

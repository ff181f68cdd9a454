//! The student: a model and its tokenizer, loaded, tokenised for, trained on, saved.
//!
//! Two kinds, as the reference supports:
//! - **encoder-decoder** ([`Seq2SeqModel`]): offline by default the BERT2BERT warm-started from
//!   all-MiniLM-L6-v2 (no T5 weights exist offline); any T5 / flan-T5 or BERT2BERT folder in the
//!   Hugging Face layout works too;
//! - **decoder-only** ([`Llama`]): SmolLM2-135M-Instruct offline (its GGUF, dequantised), or any
//!   llama-family folder. The sequence is prompt + target + EOS, the loss covers the target tokens
//!   only (prompt positions are labelled −100), sources are truncated from the left so the
//!   `Label:` cue at the end survives, and generation left-pads (as transformers does).
//!
//! A trained student's `final/` folder is again such a folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`).

use std::path::Path;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::{Encoded, TextPair};
use crate::models::bert::BertConfig;
use crate::models::encoder_decoder::{bert_special_tokens, Bert2Bert, EncoderDecoderConfig};
use crate::models::llama::{Llama, PrefixCache};
use crate::models::lora::{self, LoraAdapter, LoraConfig, PeftTask, TrainingMode};
use crate::models::registry::ModelRegistry;
use crate::models::sampling::SamplingConfig;
use crate::models::seq2seq::{
    generate, load_into_var_store, read_safetensors_map, weights_file_in, Seq2SeqModel,
    IGNORE_INDEX,
};
use crate::models::t5::T5ForConditionalGeneration;

/// Which student to build (the `student` field of a scale or of `p2m train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StudentSpec {
    /// BERT2BERT warm-started from a BERT model of the registry (default all-MiniLM-L6-v2).
    WarmStart {
        #[serde(default = "default_encoder")]
        encoder: String,
    },
    /// A randomly initialised small BERT2BERT on a registry model's tokenizer (tests, smoke runs).
    Tiny {
        #[serde(default = "default_encoder")]
        tokenizer_of: String,
        hidden: i64,
        layers: i64,
        heads: i64,
    },
    /// A decoder-only llama-family model of the registry (default SmolLM2-135M-Instruct, GGUF),
    /// optionally cut to its first `layers` transformer layers (a shallower student of the same
    /// pretrained weights) and with its first `frozen_layers` layers frozen (no gradient, no
    /// update): the close students of Table 3 that differ in depth and in what is trained.
    Decoder {
        #[serde(default = "default_decoder")]
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layers: Option<usize>,
        #[serde(default, skip_serializing_if = "is_zero")]
        frozen_layers: usize,
    },
    /// A model folder in the Hugging Face layout (T5 / flan-T5, BERT2BERT or llama-family).
    Pretrained { path: std::path::PathBuf },
}

impl std::str::FromStr for StudentSpec {
    type Err = anyhow::Error;

    /// `warm-start`, `decoder`, `decoder:layers=K,freeze=N` (either option alone too),
    /// `tiny:HIDDEN:LAYERS:HEADS` or a model folder with `config.json` (what `--student` takes).
    fn from_str(s: &str) -> anyhow::Result<StudentSpec> {
        use anyhow::Context;
        if s == "warm-start" {
            return Ok(StudentSpec::default());
        }
        if s == "decoder" {
            return Ok(StudentSpec::decoder(default_decoder()));
        }
        if let Some(rest) = s.strip_prefix("decoder:") {
            let (mut layers, mut frozen_layers) = (None, 0);
            for option in rest.split(',') {
                let (key, value) = option.split_once('=').with_context(|| {
                    format!("student `{s}`: expected decoder:layers=K,freeze=N (got `{option}`)")
                })?;
                let n: usize = value.trim().parse().with_context(|| {
                    format!("student `{s}`: `{key}` takes a whole number (got `{value}`)")
                })?;
                match key.trim() {
                    "layers" => {
                        anyhow::ensure!(n >= 1, "student `{s}`: layers must be at least 1");
                        layers = Some(n);
                    }
                    "freeze" => frozen_layers = n,
                    other => anyhow::bail!(
                        "student `{s}`: unknown option `{other}` (decoder options: layers=K keeps the first K layers, freeze=N freezes the first N)"
                    ),
                }
            }
            if let Some(k) = layers {
                anyhow::ensure!(
                    frozen_layers < k,
                    "student `{s}`: freeze={frozen_layers} would freeze all {k} layers kept; freeze fewer"
                );
            }
            return Ok(StudentSpec::Decoder { model: default_decoder(), layers, frozen_layers });
        }
        if let Some(rest) = s.strip_prefix("tiny:") {
            let parts: Vec<i64> = rest
                .split(':')
                .map(|p| p.parse::<i64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("student `{s}`: expected tiny:HIDDEN:LAYERS:HEADS"))?;
            anyhow::ensure!(parts.len() == 3, "student `{s}`: expected tiny:HIDDEN:LAYERS:HEADS");
            return Ok(StudentSpec::Tiny {
                tokenizer_of: default_encoder(),
                hidden: parts[0],
                layers: parts[1],
                heads: parts[2],
            });
        }
        let path = std::path::PathBuf::from(s);
        anyhow::ensure!(
            path.join("config.json").exists(),
            "student `{s}`: not `warm-start`, `decoder`, `tiny:H:L:A`, or a model folder with config.json"
        );
        Ok(StudentSpec::Pretrained { path })
    }
}

fn default_decoder() -> String {
    crate::teacher::local::DEFAULT_TEACHER.into()
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl StudentSpec {
    /// A registry decoder, whole and fully trained.
    pub fn decoder(model: impl Into<String>) -> Self {
        StudentSpec::Decoder { model: model.into(), layers: None, frozen_layers: 0 }
    }
}

/// The transformer layer a llama weight belongs to (`model.layers.<i>.…`), if any.
fn llama_layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// Cut a decoder to its first `layers` layers and freeze its first `frozen` (after it was made
/// trainable): the frozen weights keep their pretrained values, as the optimizer only updates
/// weights that require a gradient.
fn shape_decoder(llama: &mut Llama, layers: Option<usize>, frozen: usize) -> anyhow::Result<()> {
    if let Some(k) = layers {
        llama.keep_first_layers(k)?;
    }
    let total = llama.config.num_hidden_layers;
    anyhow::ensure!(
        frozen < total,
        "decoder student: freezing {frozen} of its {total} layers leaves none to train"
    );
    llama.set_trainable();
    for (name, t) in llama.named_parameters() {
        if llama_layer_of(&name).is_some_and(|i| i < frozen) {
            let _ = t.set_requires_grad(false);
        }
    }
    Ok(())
}

fn default_encoder() -> String {
    "all-MiniLM-L6-v2".into()
}

impl Default for StudentSpec {
    fn default() -> Self {
        StudentSpec::WarmStart { encoder: default_encoder() }
    }
}

/// The network of a student.
pub enum StudentModel {
    Seq2Seq(Box<dyn Seq2SeqModel>),
    Decoder(Box<Llama>),
}

pub struct Student {
    pub model: StudentModel,
    pub tokenizer: tokenizers::Tokenizer,
    /// Stable description (enters the run fingerprint and reports).
    pub name: String,
    /// Set by [`Student::use_llama_cpp`]: a decoder student generates on llama.cpp.
    llama_cpp: AttachedEngine,
    /// Set by [`Student::keep_shared_prefix`]: a prefix every later call may start from.
    kept_prefix: KeptPrefix,
    /// Set by [`Student::attach_lora`] until [`Student::merge_lora`].
    lora: Option<LoraState>,
}

/// A student's LoRA training: its settings, the adapters' dropout switch, and the adapters
/// (shallow clones of those inside the model) by module name.
struct LoraState {
    config: LoraConfig,
    mode: TrainingMode,
    adapters: Vec<(String, LoraAdapter)>,
}

/// The prefix a served decoder student keeps between calls ([`Student::keep_shared_prefix`]).
#[derive(Default)]
struct KeptPrefix(std::sync::Mutex<Option<PrefixCache>>);

/// The llama.cpp engine a decoder student generates with, once attached (empty in builds
/// without the `llama-cpp` feature).
#[derive(Default)]
struct AttachedEngine(
    #[cfg(feature = "llama-cpp")] Option<crate::models::llama_cpp::LlamaCppEngine>,
);

pub fn plain_tokenizer(path: &Path) -> anyhow::Result<tokenizers::Tokenizer> {
    let mut tok = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{}: not a tokenizer.json ({e})", path.display()))?;
    // Batches are padded by the collator and lengths capped by the trainer: the file's own
    // padding/truncation settings (MiniLM's pads and cuts everything to 128) must not apply.
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
    Ok(tok)
}

impl Student {
    pub fn build(
        spec: &StudentSpec,
        registry: &ModelRegistry,
        device: Device,
        seed: u64,
    ) -> anyhow::Result<Self> {
        match spec {
            StudentSpec::WarmStart { encoder } => {
                let resolved = registry.resolve(encoder)?;
                let config = BertConfig::from_file(resolved.path("config.json")?)?;
                let tok_path = resolved.path("tokenizer.json")?;
                let tokens = bert_special_tokens(tok_path)?;
                let (model, _report) = Bert2Bert::warm_start_from(
                    config,
                    resolved.path("model.safetensors")?,
                    tokens,
                    device,
                    seed,
                )?;
                Ok(Student {
                    model: StudentModel::Seq2Seq(Box::new(model)),
                    tokenizer: plain_tokenizer(tok_path)?,
                    name: format!("bert2bert-warm-start({encoder}, seed {seed})"),
                    llama_cpp: AttachedEngine::default(),
                    lora: None,
                    kept_prefix: KeptPrefix::default(),
                })
            }
            StudentSpec::Tiny { tokenizer_of, hidden, layers, heads } => {
                let tok_path = registry.resolve_file(tokenizer_of, "tokenizer.json")?;
                let tokenizer = plain_tokenizer(&tok_path)?;
                let tokens = bert_special_tokens(&tok_path)?;
                let layers_n = usize::try_from(*layers)
                    .map_err(|_| anyhow!("tiny student: {layers} layers (must not be negative)"))?;
                let mut bert = BertConfig::tiny(
                    tokenizer.get_vocab_size(true) as i64,
                    *hidden,
                    layers_n,
                    *heads,
                );
                bert.max_position_embeddings = 512;
                bert.pad_token_id = Some(tokens.pad);
                let model =
                    Bert2Bert::new(EncoderDecoderConfig::from_bert(bert, tokens), device, seed)?;
                Ok(Student { model: StudentModel::Seq2Seq(Box::new(model)), tokenizer, name: format!("bert2bert-tiny(h{hidden} l{layers} a{heads}, {tokenizer_of} tokenizer, seed {seed})"), llama_cpp: AttachedEngine::default(), kept_prefix: KeptPrefix::default(), lora: None })
            }
            StudentSpec::Decoder { model, layers, frozen_layers } => {
                let path = registry.resolve_main_file(model)?;
                anyhow::ensure!(
                    path.extension().is_some_and(|e| e == "gguf"),
                    "decoder student `{model}`: only GGUF registry models are supported here; pass a model folder instead"
                );
                let g = crate::models::gguf::GgufFile::open(&path)?;
                let mut llama = Llama::from_gguf(&g, device)?;
                let tokenizer = crate::models::chat::GgufTokenizer::from_gguf(&g)?.inner().clone();
                shape_decoder(&mut llama, *layers, *frozen_layers)?;
                let mut name = format!("decoder({model}");
                if let Some(k) = layers {
                    name.push_str(&format!(", first {k} layers"));
                }
                if *frozen_layers > 0 {
                    name.push_str(&format!(", first {frozen_layers} frozen"));
                }
                name.push(')');
                Ok(Student {
                    model: StudentModel::Decoder(Box::new(llama)),
                    tokenizer,
                    name,
                    llama_cpp: AttachedEngine::default(),
                    lora: None,
                    kept_prefix: KeptPrefix::default(),
                })
            }
            StudentSpec::Pretrained { path } => Self::from_dir(path, device),
        }
    }

    /// Loads a model folder: BERT2BERT when `config.json` has `encoder`/`decoder` sections, else T5.
    pub fn from_dir(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "{}: a student folder needs config.json, model.safetensors and tokenizer.json",
                dir.display()
            )
        })?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", config_path.display()))?;
        let model = if config.get("encoder").is_some() && config.get("decoder").is_some() {
            StudentModel::Seq2Seq(Box::new(Bert2Bert::from_pretrained(dir, device)?))
        } else if config.get("model_type").and_then(|m| m.as_str()) == Some("t5")
            || config.get("d_model").is_some()
        {
            StudentModel::Seq2Seq(Box::new(T5ForConditionalGeneration::from_pretrained(
                dir, device,
            )?))
        } else if matches!(
            config.get("model_type").and_then(|m| m.as_str()),
            Some("llama") | Some("mistral")
        ) {
            let llama = Llama::load_hf_dir(dir, device)?;
            llama.set_trainable();
            StudentModel::Decoder(Box::new(llama))
        } else {
            anyhow::bail!("{}: not a T5, BERT2BERT or llama-family config", config_path.display());
        };
        let tokenizer = plain_tokenizer(&dir.join("tokenizer.json"))?;
        Ok(Student {
            model,
            tokenizer,
            name: format!("pretrained({})", dir.display()),
            llama_cpp: AttachedEngine::default(),
            lora: None,
            kept_prefix: KeptPrefix::default(),
        })
    }

    pub fn describe(&self) -> String {
        self.name.clone()
    }

    /// Generate with llama.cpp from now on, on `gguf`: this decoder student's own weights as a
    /// GGUF ([`crate::export::engine_gguf`]). llama.cpp computes on as many threads as libtorch
    /// (`OMP_NUM_THREADS`); the tch model stays loaded (training, the parity tests).
    pub fn use_llama_cpp(&mut self, gguf: &Path) -> anyhow::Result<()> {
        let StudentModel::Decoder(m) = &self.model else {
            anyhow::bail!(
                "{}: the llama-cpp engine decodes decoder-only students; this one is an \
                 encoder-decoder (use the libtorch engine)",
                self.name
            )
        };
        #[cfg(feature = "llama-cpp")]
        {
            let threads = tch::get_num_threads().max(1) as usize;
            let engine = crate::models::llama_cpp::LlamaCppEngine::load(gguf, threads)?;
            anyhow::ensure!(
                engine.vocab_size() == m.config.vocab_size,
                "{}: {} tokens, the student has {}",
                gguf.display(),
                engine.vocab_size(),
                m.config.vocab_size
            );
            self.llama_cpp.0 = Some(engine);
            Ok(())
        }
        #[cfg(not(feature = "llama-cpp"))]
        {
            let _ = m;
            anyhow::bail!(
                "this build has no llama.cpp to decode {} with: build with the default features",
                gguf.display()
            )
        }
    }

    /// The library that runs the student's forward passes when it generates.
    pub fn engine(&self) -> crate::models::chat::DecodingEngine {
        #[cfg(feature = "llama-cpp")]
        if self.llama_cpp.0.is_some() {
            return crate::models::chat::DecodingEngine::LlamaCpp;
        }
        crate::models::chat::DecodingEngine::Libtorch
    }

    /// A decoder student's generated ids for `prompts`, on the engine in use (llama.cpp prefills
    /// the prefix the prompts share once; libtorch continues after `prefix` when given).
    fn generate_decoder(
        &self,
        m: &Llama,
        prefix: Option<&PrefixCache>,
        prompts: Vec<Vec<i64>>,
        sampling: &SamplingConfig,
        eos: &[i64],
        pad: i64,
    ) -> anyhow::Result<Vec<Vec<i64>>> {
        #[cfg(feature = "llama-cpp")]
        if let Some(engine) = &self.llama_cpp.0 {
            use crate::models::llama::{stop_at_eos, SteeredRow};
            let rows: Vec<SteeredRow> =
                prompts.into_iter().map(|prompt| SteeredRow { prompt, generator: 0 }).collect();
            let generated = engine.generate_sharing_prefix(
                &rows,
                std::slice::from_ref(sampling),
                &mut stop_at_eos(eos),
            )?;
            return Ok(generated.into_iter().map(|g| g.tokens).collect());
        }
        Ok(m.generate_after(prefix, &prompts, sampling, eos, pad)?
            .into_iter()
            .map(|g| g.tokens)
            .collect())
    }

    pub fn device(&self) -> Device {
        match &self.model {
            StudentModel::Seq2Seq(m) => m.device(),
            StudentModel::Decoder(m) => m.device(),
        }
    }

    /// Padding id of batches.
    pub fn pad_id(&self) -> i64 {
        match &self.model {
            StudentModel::Seq2Seq(m) => m.special_tokens().pad,
            StudentModel::Decoder(m) => {
                m.config.pad_token_id.or(m.config.eos_token_ids.first().copied()).unwrap_or(0)
            }
        }
    }

    fn eos_ids(&self) -> Vec<i64> {
        match &self.model {
            StudentModel::Seq2Seq(m) => vec![m.special_tokens().eos],
            StudentModel::Decoder(m) => m.config.eos_token_ids.clone(),
        }
    }

    /// The trainable weights by name (what AdamW optimises and checkpoints hold).
    pub fn parameters(&self) -> std::collections::HashMap<String, Tensor> {
        match &self.model {
            StudentModel::Seq2Seq(m) => m.var_store().variables(),
            StudentModel::Decoder(m) => m.named_parameters().into_iter().collect(),
        }
    }

    /// What the optimizer trains: the LoRA adapters by their PEFT names while adapters are
    /// attached (the base is frozen), else every weight that requires a gradient.
    pub fn trainable_parameters(&self) -> std::collections::HashMap<String, Tensor> {
        if self.lora.is_some() {
            lora::named_tensors(&self.lora_adapters()).into_iter().collect()
        } else {
            self.parameters()
        }
    }

    /// Attaches fresh LoRA adapters (seeded by `seed`) to the linear layers `cfg` targets and
    /// freezes the base weights.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, seed: u64) -> anyhow::Result<()> {
        anyhow::ensure!(self.lora.is_none(), "{}: LoRA adapters are attached already", self.name);
        let mode = TrainingMode::default();
        let adapters: Vec<(String, LoraAdapter)> = match &mut self.model {
            StudentModel::Decoder(m) => {
                m.attach_lora(cfg, seed, &mode, &self.name)?;
                m.lora_adapters().into_iter().map(|(n, a)| (n, a.shallow_clone())).collect()
            }
            StudentModel::Seq2Seq(m) => {
                anyhow::ensure!(
                    !m.linears_mut().is_empty(),
                    "{}: this encoder-decoder does not support LoRA; train it fully (leave out --lora-rank)",
                    self.name
                );
                for (_, t) in m.var_store().variables() {
                    let _ = t.set_requires_grad(false);
                }
                let defaults = m.lora_default_targets();
                let slots: Vec<lora::LoraSlot<'_>> = m
                    .linears_mut()
                    .into_iter()
                    .map(|(module, l)| lora::LoraSlot {
                        module,
                        weight: &l.weight,
                        adapter: &mut l.lora,
                    })
                    .collect();
                lora::attach(slots, cfg, defaults, seed, &mode, &self.name)?;
                m.linears_mut()
                    .into_iter()
                    .filter_map(|(n, l)| l.lora.as_ref().map(|a| (n, a.shallow_clone())))
                    .collect()
            }
        };
        tracing::info!(
            "{}: LoRA r={} α={} on {} linear layers",
            self.name,
            cfg.rank,
            cfg.alpha,
            adapters.len()
        );
        self.lora = Some(LoraState { config: cfg.clone(), mode, adapters });
        Ok(())
    }

    /// The attached adapters by module name (empty without LoRA).
    pub fn lora_adapters(&self) -> Vec<(String, &LoraAdapter)> {
        self.lora.iter().flat_map(|l| l.adapters.iter().map(|(n, a)| (n.clone(), a))).collect()
    }

    /// Writes the attached adapters into `dir` in PEFT's layout ([`lora::write_peft_dir`]).
    pub fn write_adapters(&self, dir: &Path) -> anyhow::Result<()> {
        let cfg = &self.lora.as_ref().context("no LoRA adapters attached")?.config;
        let task = match self.model {
            StudentModel::Decoder(_) => PeftTask::CausalLm,
            StudentModel::Seq2Seq(_) => PeftTask::Seq2SeqLm,
        };
        let tensors = lora::named_tensors(&self.lora_adapters());
        lora::write_peft_dir(dir, &tensors, cfg, task, &self.name)
    }

    /// Restores the attached adapters from a folder written by [`Student::write_adapters`].
    pub fn load_adapters(&self, dir: &Path) -> anyhow::Result<()> {
        lora::load_tensors(&dir.join("adapter_model.safetensors"), &self.lora_adapters())
    }

    /// Folds the adapters into the weights (`W + B·A·α/r`) and removes them: the student is again
    /// a plain model of its architecture, saved and served as a full fine-tune is.
    pub fn merge_lora(&mut self) {
        match &mut self.model {
            StudentModel::Decoder(m) => m.merge_lora(),
            StudentModel::Seq2Seq(m) => {
                for (_, l) in m.linears_mut() {
                    if let Some(a) = l.lora.take() {
                        let merged = a.merged(&l.weight);
                        tch::no_grad(|| l.weight.copy_(&merged));
                    }
                }
            }
        }
        self.lora = None;
    }

    /// Token ids of `text`, at most `max_len`: encoder-decoder sources keep their head and the
    /// closing special token; decoder prompts keep their tail (the `Label:` cue is at the end).
    fn encode_one(&self, text: &str, max_len: usize) -> anyhow::Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenising {:?}: {e}", crate::util::text::excerpt(text, 60)))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > max_len {
            match self.model {
                StudentModel::Seq2Seq(_) => {
                    // Keep the closing special token ([SEP] / </s>), as the tokenizers' own truncation does.
                    let last = *ids.last().expect("non-empty");
                    ids.truncate(max_len - 1);
                    ids.push(last);
                }
                StudentModel::Decoder(_) => {
                    ids.drain(..ids.len() - max_len);
                }
            }
        }
        Ok(ids)
    }

    /// Tokenises training pairs. Encoder-decoder: the source with its special tokens; labels are
    /// the target's ids *after* the decoder start token (BERT's leading `[CLS]` is the decoder
    /// start, so it is dropped; T5's targets already end in `</s>`). Decoder-only: the prompt, and
    /// labels = the target's ids + EOS.
    pub fn encode_pairs(
        &self,
        pairs: &[TextPair],
        max_source: usize,
        max_target: usize,
    ) -> anyhow::Result<Vec<Encoded>> {
        pairs
            .iter()
            .map(|p| {
                let source = self.encode_one(&p.source, max_source)?;
                let labels = match &self.model {
                    StudentModel::Seq2Seq(m) => {
                        let (start, pad) =
                            (m.special_tokens().decoder_start, m.special_tokens().pad);
                        let mut labels = self.encode_one(&p.target, max_target + 1)?;
                        if start != pad && labels.first() == Some(&start) {
                            labels.remove(0);
                        }
                        labels.truncate(max_target.max(1));
                        labels
                    }
                    StudentModel::Decoder(m) => {
                        let enc = self
                            .tokenizer
                            .encode(p.target.as_str(), false)
                            .map_err(|e| anyhow!("tokenising a target: {e}"))?;
                        let mut labels: Vec<i64> =
                            enc.get_ids().iter().map(|&i| i as i64).collect();
                        labels.truncate(max_target.saturating_sub(1).max(1));
                        labels.push(
                            m.config
                                .eos_token_ids
                                .first()
                                .copied()
                                .context("the decoder has no EOS id")?,
                        );
                        labels
                    }
                };
                Ok(Encoded { source, labels })
            })
            .collect()
    }

    /// A padded batch in the model's layout (see [`super::collate`] for encoder-decoders; for a
    /// decoder, `prompt ++ labels` right-padded, labels −100 over the prompt and the padding).
    pub fn collate(&self, items: &[&Encoded]) -> super::TrainingBatch {
        let device = self.device();
        let pad = self.pad_id();
        match &self.model {
            StudentModel::Seq2Seq(_) => super::collate(items, pad, device),
            StudentModel::Decoder(_) => {
                let len =
                    items.iter().map(|e| e.source.len() + e.labels.len()).max().unwrap_or(1).max(1);
                let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
                let mut tokens = 0i64;
                for e in items {
                    let n = e.source.len() + e.labels.len();
                    ids.extend(
                        e.source
                            .iter()
                            .chain(&e.labels)
                            .copied()
                            .chain(std::iter::repeat_n(pad, len - n)),
                    );
                    mask.extend(
                        std::iter::repeat_n(1i64, n).chain(std::iter::repeat_n(0, len - n)),
                    );
                    labels.extend(
                        std::iter::repeat_n(IGNORE_INDEX, e.source.len())
                            .chain(e.labels.iter().copied())
                            .chain(std::iter::repeat_n(IGNORE_INDEX, len - n)),
                    );
                    tokens += n as i64;
                }
                let b = items.len() as i64;
                super::TrainingBatch {
                    input_ids: Tensor::from_slice(&ids).view([b, len as i64]).to_device(device),
                    attention_mask: Tensor::from_slice(&mask)
                        .view([b, len as i64])
                        .to_device(device),
                    labels: Tensor::from_slice(&labels).view([b, len as i64]).to_device(device),
                    examples: items.len(),
                    tokens,
                }
            }
        }
    }

    /// Mean token cross-entropy of a batch (`train` switches dropout on where the model has it).
    pub fn loss(&self, batch: &super::TrainingBatch, train: bool) -> Tensor {
        // The adapters' dropout follows `train` for this forward pass only.
        let _lora_mode = self.lora.as_ref().map(|l| LoraTraining::on(&l.mode, train));
        match &self.model {
            StudentModel::Seq2Seq(m) => {
                m.forward_train(&batch.input_ids, &batch.attention_mask, &batch.labels, train)
            }
            StudentModel::Decoder(m) => {
                // Position t predicts token t + 1 (transformers' causal-LM loss): the labels move
                // one to the left and the last position predicts nothing. The LM head runs only at
                // the positions that have a target: the same mean over the same terms as
                // transformers' full-logits loss, without the `[batch, seq, vocab]` logits (the
                // largest tensor of a step: 270 MB in f32 at 4 × 344 tokens) when the prompt is
                // masked, as in instruction tuning (24 targets after a 320-token prompt).
                let hidden = m.hidden_states_train(&batch.input_ids, &batch.attention_mask);
                let (b, t, h) = hidden.size3().expect("[batch, seq, hidden]");
                let nothing =
                    Tensor::full([b, 1], IGNORE_INDEX, (Kind::Int64, batch.labels.device()));
                let targets = Tensor::cat(&[batch.labels.narrow(1, 1, t - 1), nothing], 1)
                    .reshape([b * t])
                    .to_device(hidden.device());
                let kept = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
                let logits = m
                    .lm_head_logits(&hidden.reshape([b * t, h]).index_select(0, &kept))
                    .to_kind(Kind::Float);
                logits.cross_entropy_loss::<Tensor>(
                    &targets.index_select(0, &kept),
                    None,
                    Reduction::Mean,
                    IGNORE_INDEX,
                    0.0,
                )
            }
        }
    }

    pub fn mean_loss(&self, examples: &[Encoded], batch_size: usize) -> anyhow::Result<f64> {
        let (mut sum, mut n) = (0.0, 0usize);
        tch::no_grad(|| {
            for chunk in examples.chunks(batch_size.max(1)) {
                let items: Vec<&Encoded> = chunk.iter().collect();
                let loss = self.loss(&self.collate(&items), false).double_value(&[]);
                sum += loss * chunk.len() as f64;
                n += chunk.len();
            }
        });
        Ok(sum / n.max(1) as f64)
    }

    /// Replaces the weights with those in `dir/model.safetensors` (every variable must be there).
    pub fn load_weights(&mut self, dir: &Path) -> anyhow::Result<()> {
        let path = weights_file_in(dir)?;
        match &self.model {
            StudentModel::Seq2Seq(m) => {
                let tensors = read_safetensors_map(&path)?;
                load_into_var_store(
                    m.var_store(),
                    &tensors,
                    &|n| vec![n.to_string()],
                    true,
                    &path.display().to_string(),
                )?;
            }
            StudentModel::Decoder(m) => m.load_weights(&path)?,
        }
        Ok(())
    }

    /// Writes the model (Hugging Face layout) and its tokenizer into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        match &self.model {
            StudentModel::Seq2Seq(m) => m.save_pretrained(dir)?,
            StudentModel::Decoder(m) => m.save_hf_dir(dir)?,
        }
        self.tokenizer
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow!("writing {}: {e}", dir.join("tokenizer.json").display()))?;
        Ok(())
    }

    /// Generates for each source text (already textualised), batched; special tokens are removed
    /// from the decoded text.
    ///
    /// `prefix_cache` (decoder students): the token prefix the prompts share — a task's
    /// `<task i>` tag, instruction and template, see [`shared_prefix`] — is prefilled once for
    /// the call and its keys and values copied into every batch ([`Llama::generate_after`]),
    /// instead of being computed again for every example. Encoder-decoder students ignore it: a
    /// bidirectional encoder's states of the prefix depend on the rest of the source, so there is
    /// nothing exact to reuse (the encoder runs once per batch and the cross-attention keys and
    /// values are computed once per batch already).
    pub fn generate(
        &self,
        sources: &[String],
        max_source: usize,
        sampling: &SamplingConfig,
        batch_size: usize,
        prefix_cache: bool,
    ) -> anyhow::Result<Vec<String>> {
        let pad = self.pad_id();
        let eos = self.eos_ids();
        let encoded: Vec<Vec<i64>> = sources
            .iter()
            .map(|s| self.encode_one(s, max_source))
            .collect::<anyhow::Result<_>>()?;
        // Longest first keeps batches tight; outputs go back to input order.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
        let kept = self.kept_prefix.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh;
        let prefix: Option<&PrefixCache> = match &self.model {
            // llama.cpp shares the prefix itself.
            StudentModel::Decoder(m) if prefix_cache && self.engine().is_libtorch() => {
                // The kept prefix where every prompt starts with it (and goes on after it), else
                // this call's own.
                let covers = |k: &&PrefixCache| {
                    let t = k.tokens();
                    encoded.iter().all(|p| p.len() > t.len() && p.starts_with(t))
                };
                match kept.as_ref().filter(covers) {
                    Some(k) => Some(k),
                    None => {
                        let tokens = shared_prefix(&encoded, max_source);
                        fresh =
                            (!tokens.is_empty()).then(|| m.prefill_prefix(&tokens)).transpose()?;
                        fresh.as_ref()
                    }
                }
            }
            _ => None,
        };
        let mut out = vec![String::new(); sources.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let generated: Vec<Vec<i64>> = match &self.model {
                StudentModel::Seq2Seq(m) => {
                    let items: Vec<Encoded> = chunk
                        .iter()
                        .map(|&i| Encoded { source: encoded[i].clone(), labels: vec![] })
                        .collect();
                    let refs: Vec<&Encoded> = items.iter().collect();
                    let batch = super::collate(&refs, pad, self.device());
                    generate(m.as_ref(), &batch.input_ids, &batch.attention_mask, sampling)
                }
                StudentModel::Decoder(m) => {
                    let prompts: Vec<Vec<i64>> =
                        chunk.iter().map(|&i| encoded[i].clone()).collect();
                    self.generate_decoder(m, prefix, prompts, sampling, &eos, pad)?
                }
            };
            for (&i, ids) in chunk.iter().zip(generated) {
                let ids: Vec<u32> = ids
                    .into_iter()
                    .filter(|t| !eos.contains(t) && *t != pad)
                    .map(|t| t as u32)
                    .collect();
                out[i] = self
                    .tokenizer
                    .decode(&ids, true)
                    .map_err(|e| anyhow!("decoding: {e}"))?
                    .trim()
                    .to_string();
            }
        }
        Ok(out)
    }
}

/// Sets a [`TrainingMode`] for a scope and turns it off when the scope ends.
struct LoraTraining(TrainingMode);

impl LoraTraining {
    fn on(mode: &TrainingMode, train: bool) -> Self {
        mode.set(train);
        LoraTraining(mode.clone())
    }
}

impl Drop for LoraTraining {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Student {
    /// Prefills the token prefix `sources` share and keeps it for every later
    /// [`Student::generate`] with `prefix_cache` whose prompts all start with it. A served model
    /// needs it: its requests come one or a few at a time, and a call's own shared prefix is the
    /// whole prompt when it has one input, so each request would prefill the instruction again.
    /// Only for a student whose weights no longer change (the kept keys and values are those of
    /// the weights now). Returns the kept prefix's length in tokens; 0 (nothing kept) for an
    /// encoder-decoder (nothing exact to reuse), the llama.cpp engine (it shares prefixes itself)
    /// or sources that share no token.
    pub fn keep_shared_prefix(
        &self,
        sources: &[String],
        max_source: usize,
    ) -> anyhow::Result<usize> {
        let StudentModel::Decoder(m) = &self.model else { return Ok(0) };
        if !self.engine().is_libtorch() {
            return Ok(0);
        }
        let encoded: Vec<Vec<i64>> = sources
            .iter()
            .map(|s| self.encode_one(s, max_source))
            .collect::<anyhow::Result<_>>()?;
        let tokens = shared_prefix(&encoded, max_source);
        let prefix = (!tokens.is_empty()).then(|| m.prefill_prefix(&tokens)).transpose()?;
        *self.kept_prefix.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = prefix;
        Ok(tokens.len())
    }
}

/// The longest run of token ids every prompt starts with — the ids themselves, so the boundary
/// is exact whatever the tokenizer does where the shared text meets each input. Prompts at
/// `max_source` tokens were (or may have been) cut from the left and lost the shared start; they
/// are left out of the comparison so that one long input does not cancel the prefix for all, and
/// share less (or none) of it in their batch (see [`Llama::generate_steered_after`]).
pub fn shared_prefix(prompts: &[Vec<i64>], max_source: usize) -> Vec<i64> {
    let whole: Vec<&Vec<i64>> = prompts.iter().filter(|p| p.len() < max_source).collect();
    let considered = if whole.is_empty() { prompts.iter().collect() } else { whole };
    let Some((first, rest)) = considered.split_first() else { return vec![] };
    let len = rest.iter().fold(first.len(), |len, p| {
        first[..len].iter().zip(p.iter()).take_while(|(a, b)| a == b).count()
    });
    first[..len].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_options_parse_and_bad_ones_are_named() {
        let parse = |s: &str| s.parse::<StudentSpec>();
        assert_eq!(parse("decoder").unwrap(), StudentSpec::decoder(default_decoder()));
        assert_eq!(
            parse("decoder:layers=12,freeze=4").unwrap(),
            StudentSpec::Decoder { model: default_decoder(), layers: Some(12), frozen_layers: 4 }
        );
        assert_eq!(
            parse("decoder:freeze=20").unwrap(),
            StudentSpec::Decoder { model: default_decoder(), layers: None, frozen_layers: 20 }
        );
        for (bad, says) in [
            ("decoder:layers=0", "at least 1"),
            ("decoder:layers=4,freeze=4", "would freeze all 4"),
            ("decoder:depth=4", "unknown option `depth`"),
            ("decoder:layers=x", "whole number"),
            ("decoder:layers", "expected decoder:layers=K"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn a_plain_decoder_spec_serialises_as_before() {
        let json = serde_json::to_value(StudentSpec::decoder("m")).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "decoder", "model": "m"}));
        let cut: StudentSpec =
            toml::from_str("kind = \"decoder\"\nlayers = 8\nfrozen_layers = 2").unwrap();
        assert_eq!(
            cut,
            StudentSpec::Decoder { model: default_decoder(), layers: Some(8), frozen_layers: 2 }
        );
    }

    #[test]
    fn the_shared_prefix_is_the_common_start_of_the_untruncated_prompts() {
        let p = |v: &[i64]| v.to_vec();
        assert_eq!(shared_prefix(&[p(&[1, 2, 3, 4]), p(&[1, 2, 5]), p(&[1, 2, 3])], 10), [1, 2]);
        assert_eq!(shared_prefix(&[p(&[1, 2, 3])], 10), [1, 2, 3]);
        assert_eq!(shared_prefix(&[p(&[1, 2]), p(&[3, 2])], 10), Vec::<i64>::new());
        assert_eq!(shared_prefix(&[], 10), Vec::<i64>::new());
        // A prompt cut to max_source (4) does not cancel the others' prefix...
        assert_eq!(shared_prefix(&[p(&[9, 3, 4, 5]), p(&[1, 2, 3]), p(&[1, 2, 4])], 4), [1, 2]);
        // ...unless every prompt was cut.
        assert_eq!(shared_prefix(&[p(&[9, 3, 4, 5]), p(&[9, 3, 7, 5])], 4), [9, 3]);
    }

    #[test]
    fn llama_weights_name_their_layer() {
        assert_eq!(llama_layer_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(llama_layer_of("model.embed_tokens.weight"), None);
        assert_eq!(llama_layer_of("model.norm.weight"), None);
    }
}

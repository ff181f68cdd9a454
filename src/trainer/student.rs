//! The student: an encoder-decoder model and its tokenizer, loaded, tokenised for, saved.
//!
//! Offline the default student is the BERT2BERT encoder-decoder warm-started from
//! all-MiniLM-L6-v2 (no T5 weights exist offline); any T5 / flan-T5 or BERT2BERT folder in the
//! Hugging Face layout (`config.json`, `model.safetensors`, `tokenizer.json`) works too, which is
//! what a trained student's `final/` folder is.

use std::path::Path;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::{Encoded, TextPair};
use crate::models::encoder_decoder::{bert_special_tokens, Bert2Bert, BertConfig, EncoderDecoderConfig};
use crate::models::sampling::SamplingConfig;
use crate::models::seq2seq::{generate, load_into_var_store, read_safetensors_map, weights_file_in, Seq2SeqModel};
use crate::models::t5::T5ForConditionalGeneration;
use crate::models::weights::ModelRegistry;

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
    /// A model folder in the Hugging Face layout (T5 / flan-T5 or BERT2BERT).
    Pretrained { path: std::path::PathBuf },
}

fn default_encoder() -> String {
    "all-MiniLM-L6-v2".into()
}

impl Default for StudentSpec {
    fn default() -> Self {
        StudentSpec::WarmStart { encoder: default_encoder() }
    }
}

pub struct Student {
    pub model: Box<dyn Seq2SeqModel>,
    pub tokenizer: tokenizers::Tokenizer,
    /// Stable description (enters the run fingerprint and reports).
    pub name: String,
}

fn plain_tokenizer(path: &Path) -> anyhow::Result<tokenizers::Tokenizer> {
    let mut tok = tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("{}: not a tokenizer.json ({e})", path.display()))?;
    // Batches are padded by the collator and lengths capped by the trainer: the file's own
    // padding/truncation settings (MiniLM's pads and cuts everything to 128) must not apply.
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
    Ok(tok)
}

impl Student {
    pub fn build(spec: &StudentSpec, registry: &ModelRegistry, device: Device, seed: u64) -> anyhow::Result<Self> {
        match spec {
            StudentSpec::WarmStart { encoder } => {
                let resolved = registry.resolve(encoder)?;
                let config = BertConfig::from_file(resolved.path("config.json")?)?;
                let tok_path = resolved.path("tokenizer.json")?;
                let tokens = bert_special_tokens(tok_path)?;
                let (model, _report) = Bert2Bert::warm_start_from(config, resolved.path("model.safetensors")?, tokens, device, seed)?;
                Ok(Student { model: Box::new(model), tokenizer: plain_tokenizer(tok_path)?, name: format!("bert2bert-warm-start({encoder}, seed {seed})") })
            }
            StudentSpec::Tiny { tokenizer_of, hidden, layers, heads } => {
                let tok_path = registry.resolve_file(tokenizer_of, "tokenizer.json")?;
                let tokenizer = plain_tokenizer(&tok_path)?;
                let tokens = bert_special_tokens(&tok_path)?;
                let mut bert = BertConfig::tiny(tokenizer.get_vocab_size(true) as i64, *hidden, *layers, *heads);
                bert.max_position_embeddings = 512;
                bert.pad_token_id = tokens.pad;
                let model = Bert2Bert::new(EncoderDecoderConfig::from_bert(bert, tokens), device, seed)?;
                Ok(Student { model: Box::new(model), tokenizer, name: format!("bert2bert-tiny(h{hidden} l{layers} a{heads}, {tokenizer_of} tokenizer, seed {seed})") })
            }
            StudentSpec::Pretrained { path } => Self::from_dir(path, device),
        }
    }

    /// Loads a model folder: BERT2BERT when `config.json` has `encoder`/`decoder` sections, else T5.
    pub fn from_dir(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("{}: a student folder needs config.json, model.safetensors and tokenizer.json", dir.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;
        let model: Box<dyn Seq2SeqModel> = if config.get("encoder").is_some() && config.get("decoder").is_some() {
            Box::new(Bert2Bert::from_pretrained(dir, device)?)
        } else if config.get("model_type").and_then(|m| m.as_str()) == Some("t5") || config.get("d_model").is_some() {
            Box::new(T5ForConditionalGeneration::from_pretrained(dir, device)?)
        } else {
            anyhow::bail!("{}: neither a T5 nor a BERT2BERT encoder-decoder config", config_path.display());
        };
        let tokenizer = plain_tokenizer(&dir.join("tokenizer.json"))?;
        Ok(Student { model, tokenizer, name: format!("pretrained({})", dir.display()) })
    }

    pub fn describe(&self) -> String {
        self.name.clone()
    }

    fn encode_one(&self, text: &str, max_len: usize) -> anyhow::Result<Vec<i64>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| anyhow!("tokenising {:?}: {e}", crate::teacher::excerpt(text, 60)))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > max_len {
            // Keep the closing special token ([SEP] / </s>), as the tokenizers' own truncation does.
            let last = *ids.last().expect("non-empty");
            ids.truncate(max_len - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// Tokenises training pairs: the source with its special tokens; the labels are the target's
    /// ids *after* the decoder start token (BERT's leading `[CLS]` is the decoder start, so it is
    /// dropped from the labels; T5's targets already end in `</s>` and have no start token).
    pub fn encode_pairs(&self, pairs: &[TextPair], max_source: usize, max_target: usize) -> anyhow::Result<Vec<Encoded>> {
        let start = self.model.special_tokens().decoder_start;
        let pad = self.model.special_tokens().pad;
        pairs
            .iter()
            .map(|p| {
                let source = self.encode_one(&p.source, max_source)?;
                let mut labels = self.encode_one(&p.target, max_target + 1)?;
                if start != pad && labels.first() == Some(&start) {
                    labels.remove(0);
                }
                labels.truncate(max_target.max(1));
                Ok(Encoded { source, labels })
            })
            .collect()
    }

    pub fn mean_loss(&self, examples: &[Encoded], batch_size: usize) -> anyhow::Result<f64> {
        Ok(super::mean_loss(self.model.as_ref(), examples, batch_size))
    }

    /// Replaces the weights with those in `dir/model.safetensors` (every variable must be there).
    pub fn load_weights(&mut self, dir: &Path) -> anyhow::Result<()> {
        let path = weights_file_in(dir)?;
        let tensors = read_safetensors_map(&path)?;
        load_into_var_store(self.model.var_store(), &tensors, &|n| vec![n.to_string()], true, &path.display().to_string())?;
        Ok(())
    }

    /// Writes the model (Hugging Face layout) and its tokenizer into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        self.model.save_pretrained(dir)?;
        self.tokenizer.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow!("writing {}: {e}", dir.join("tokenizer.json").display()))?;
        Ok(())
    }

    /// Generates for each source text (already textualised), batched; special tokens are removed
    /// from the decoded text.
    pub fn generate(&self, sources: &[String], max_source: usize, sampling: &SamplingConfig, batch_size: usize) -> anyhow::Result<Vec<String>> {
        let pad = self.model.special_tokens().pad;
        let eos = self.model.special_tokens().eos;
        let device = self.model.device();
        let encoded: Vec<Vec<i64>> = sources.iter().map(|s| self.encode_one(s, max_source)).collect::<anyhow::Result<_>>()?;
        // Longest first inside the call keeps batches tight; outputs go back to input order.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
        let mut out = vec![String::new(); sources.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let items: Vec<super::Encoded> = chunk.iter().map(|&i| super::Encoded { source: encoded[i].clone(), labels: vec![] }).collect();
            let refs: Vec<&super::Encoded> = items.iter().collect();
            let batch = super::collate(&refs, pad, device);
            let generated = generate(self.model.as_ref(), &batch.input_ids, &batch.attention_mask, sampling);
            for (&i, ids) in chunk.iter().zip(generated) {
                let ids: Vec<u32> = ids.into_iter().filter(|&t| t != eos && t != pad).map(|t| t as u32).collect();
                out[i] = self.tokenizer.decode(&ids, true).map_err(|e| anyhow!("decoding: {e}"))?.trim().to_string();
            }
        }
        Ok(out)
    }
}

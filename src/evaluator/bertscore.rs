//! BERTScore (Zhang et al., ICLR 2020) computed exactly as the `bert_score` package (0.3.13)
//! computes it, on the encoders of [`crate::models::bert`].
//!
//! What bert_score does, and therefore what this does, step by step:
//!
//! 1. **Tokens.** Each sentence is stripped and encoded with special tokens, truncated at the
//!    tokenizer's `model_max_length` (512 for BERT, MiniLM and XLM-R). An empty sentence is just
//!    `[CLS] [SEP]`. bert_score's default is the slow Python tokenizer; this uses the `tokenizers`
//!    crate (the "fast" tokenizer), which agrees on ordinary text — the signature says `tok:fast`.
//! 2. **Embeddings.** The encoder is cut after `layer` layers (0 = the embeddings output) and the
//!    last remaining hidden state is used for every token, special tokens included.
//! 3. **Weights.** Without idf every token weighs 1 except the CLS and SEP ids, which weigh 0. With
//!    idf, `idf(t) = ln((N + 1) / (df(t) + 1))` over the N *reference* sentences (the flattened
//!    reference list), unseen tokens `ln(N + 1)`; CLS/SEP occur in every reference, so they get 0.
//! 4. **Greedy matching.** Embeddings are L2-normalised; for each candidate token the best cosine
//!    over the reference tokens (precision) and for each reference token the best over the
//!    candidate tokens (recall), CLS/SEP included as match targets; P and R are the weighted means
//!    (weights normalised per sentence), F = 2PR / (P + R).
//!    Pairs are processed in batches of `batch_size` and zero-padded to the batch's longest
//!    sentence, and bert_score takes the max over the padded similarity row *including* the
//!    zeros of padding: a token whose cosines are all negative scores 0 when its partner is
//!    shorter than the batch's longest. That quirk is reproduced (same batching) so scores match.
//! 5. **Edge cases.** A candidate or reference of exactly 2 tokens (empty text) gets P = R = 0;
//!    a NaN F (0/0) becomes 0.
//! 6. **Several references.** Pairs are scored against each reference and P, R, F are each
//!    maximised separately over a candidate's references.
//! 7. **Rescaling.** With a baseline `b` (per P/R/F), `s' = (s - b) / (1 - b)`, after step 6.
//!
//! ## Baseline files
//! bert_score ships `bert_score/rescale_baseline/<lang>/<model>.tsv` (comma-separated despite the
//! extension, header `LAYER,P,R,F`, one row per layer from 0) for `en` (about 30 models: BERT,
//! RoBERTa, XLM-R, DeBERTa, ALBERT, XLNet, DistilBERT, ...; none for all-MiniLM-L6-v2) and for
//! `cs de es et fi fr it lv pt zh` (multilingual BERT, XLM, XLM-R), plus `en-sci` (SciBERT). Row
//! `layer` is used (`pandas.read_csv(path).iloc[num_layers]`). [`Baseline::from_csv`] reads these
//! files; [`Baseline::XLM_ROBERTA_BASE_EN_L9`] holds the paper's model's row.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::models::bert::BertEncoder;

/// The bert_score release whose behaviour this reproduces (and the parity fixtures were made with).
pub const BERT_SCORE_REFERENCE_VERSION: &str = "0.3.13";

/// What that release calls itself in its hash strings: the 0.3.13 wheel still sets
/// `bert_score.__version__ = "0.3.12"`.
pub const BERT_SCORE_HASH_VERSION: &str = "0.3.12";

/// The offline default model (a `data/models.toml` id).
pub const DEFAULT_OFFLINE_MODEL: &str = "all-MiniLM-L6-v2";

/// Baseline values for rescaling, one per score.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub p: f64,
    pub r: f64,
    pub f: f64,
    /// Where the values came from, for the signature (e.g. `en/xlm-roberta-base.tsv`).
    pub source: String,
    /// One of the files bert_score ships (its hash then says `-rescaled`, else `-custom-rescaled`).
    pub shipped: bool,
}

impl Baseline {
    /// bert_score 0.3.13, `rescale_baseline/en/xlm-roberta-base.tsv`, layer 9 (the default layer).
    pub const XLM_ROBERTA_BASE_EN_L9: (f64, f64, f64) = (0.81658614, 0.8165717, 0.81639785);

    /// The paper's model's English baseline at its default layer.
    pub fn xlm_roberta_base_en() -> Self {
        let (p, r, f) = Self::XLM_ROBERTA_BASE_EN_L9;
        Baseline { p, r, f, source: "en/xlm-roberta-base.tsv".into(), shipped: true }
    }

    /// Row `layer` (0-based, as pandas' `iloc`) of a bert_score baseline file's text.
    pub fn from_csv(text: &str, layer: usize, source: &str) -> Result<Self> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().ok_or_else(|| anyhow!("{source}: empty baseline file"))?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        if columns != ["LAYER", "P", "R", "F"] {
            bail!("{source}: expected the header `LAYER,P,R,F`, found `{header}`");
        }
        let rows: Vec<&str> = lines.collect();
        let row = rows.get(layer).ok_or_else(|| {
            anyhow!("{source}: no row for layer {layer} (the file has {} rows)", rows.len())
        })?;
        let values: Vec<f64> = row
            .split(',')
            .skip(1)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .with_context(|| format!("{source}: bad number `{v}` in `{row}`"))
            })
            .collect::<Result<_>>()?;
        if values.len() != 3 {
            bail!("{source}: row `{row}` does not have 4 fields");
        }
        Ok(Baseline {
            p: values[0],
            r: values[1],
            f: values[2],
            source: source.to_string(),
            shipped: false,
        })
    }

    pub fn from_file(path: &Path, layer: usize) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let source = match (path.parent().and_then(|p| p.file_name()), path.file_name()) {
            (Some(lang), Some(name)) => {
                format!("{}/{}", lang.to_string_lossy(), name.to_string_lossy())
            }
            _ => path.display().to_string(),
        };
        let mut baseline = Self::from_csv(&text, layer, &source)?;
        baseline.shipped = path.components().any(|c| c.as_os_str() == "rescale_baseline");
        Ok(baseline)
    }

    fn apply(&self, value: f64, base: f64) -> f64 {
        (value - base) / (1.0 - base)
    }
}

/// Settings of a BERTScore computation.
#[derive(Debug, Clone)]
pub struct BertScoreConfig {
    /// Hidden state used: 0 = embeddings output, n = after the n-th layer (bert_score's `num_layers`).
    pub layer: usize,
    pub idf: bool,
    pub baseline: Option<Baseline>,
    /// bert_score's `batch_size` (default 64): sentences per forward pass and pairs per matching
    /// batch. Scores depend on it slightly (the padding quirk of step 4), as in bert_score.
    pub batch_size: usize,
}

impl BertScoreConfig {
    pub fn new(layer: usize) -> Self {
        BertScoreConfig { layer, idf: false, baseline: None, batch_size: 64 }
    }
}

/// Per-candidate scores, in input order (fractions, not percent).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BertScores {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    pub signature: String,
}

impl BertScores {
    pub fn len(&self) -> usize {
        self.f1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.f1.is_empty()
    }

    /// Corpus means (P, R, F1), as reports print them.
    pub fn mean(&self) -> (f64, f64, f64) {
        let m = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        (m(&self.precision), m(&self.recall), m(&self.f1))
    }
}

/// Token weights: explicit values and the default for ids not listed (bert_score's `idf_dict`,
/// a `defaultdict`).
#[derive(Debug, Clone)]
pub struct IdfWeights {
    pub weights: HashMap<i64, f64>,
    pub default: f64,
}

impl IdfWeights {
    pub fn get(&self, id: i64) -> f64 {
        self.weights.get(&id).copied().unwrap_or(self.default)
    }
}

/// A BERTScore scorer: one encoder at one layer.
pub struct BertScorer {
    encoder: BertEncoder,
    model_name: String,
    config: BertScoreConfig,
}

impl BertScorer {
    /// Score with `encoder` (called `model_name` in signatures). Truncation is set to the
    /// tokenizer's `model_max_length`, as bert_score.
    pub fn new(
        mut encoder: BertEncoder,
        model_name: &str,
        config: BertScoreConfig,
    ) -> Result<Self> {
        if config.layer > encoder.model.num_layers() {
            bail!(
                "BERTScore layer {} is out of range: `{model_name}` has {} layers (0 = embeddings)",
                config.layer,
                encoder.model.num_layers()
            );
        }
        if config.batch_size == 0 {
            bail!("BERTScore batch_size must be at least 1");
        }
        // bert_score encodes with `add_prefix_space=True` for byte-level BPE tokenizers (RoBERTa,
        // GPT-2); that is not reproduced here, so such models are refused rather than scored
        // differently. XLM-R (SentencePiece) and WordPiece models are unaffected.
        if matches!(encoder.model.config.model_type.as_str(), "roberta" | "gpt2") {
            bail!("`{model_name}` ({}) uses a byte-level BPE tokenizer, which BERTScore here does not support yet", encoder.model.config.model_type);
        }
        if encoder.cls_id.is_none() || encoder.sep_id.is_none() {
            bail!("`{model_name}`: the tokenizer has no CLS/SEP tokens, which BERTScore excludes from the weights");
        }
        let limit = encoder.tokenizer_max_length;
        encoder.set_max_length(limit)?;
        Ok(BertScorer { encoder, model_name: model_name.to_string(), config })
    }

    /// A registered encoder (`data/models.toml`), at its registered `bertscore_layer` unless
    /// `layer` is given.
    pub fn from_registry(
        registry: &crate::models::registry::ModelRegistry,
        id: &str,
        layer: Option<usize>,
        idf: bool,
        baseline: Option<Baseline>,
        device: Device,
    ) -> Result<Self> {
        let entry = registry.model(id)?;
        let layer = match layer.or(entry.bertscore_layer) {
            Some(l) => l,
            None => {
                bail!("model `{}` has no bertscore_layer in the registry; pass a layer", entry.id)
            }
        };
        let encoder = BertEncoder::from_registry(registry, id, device)?;
        let config = BertScoreConfig { layer, idf, baseline, batch_size: 64 };
        Self::new(encoder, &entry.id, config)
    }

    /// The offline default: all-MiniLM-L6-v2 at its registered layer, no idf, no rescaling, on the
    /// GPU when there is one.
    pub fn offline_default(registry: &crate::models::registry::ModelRegistry) -> Result<Self> {
        Self::from_registry(
            registry,
            DEFAULT_OFFLINE_MODEL,
            None,
            false,
            None,
            Device::cuda_if_available(),
        )
    }

    pub fn config(&self) -> &BertScoreConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut BertScoreConfig {
        &mut self.config
    }

    pub fn encoder(&self) -> &BertEncoder {
        &self.encoder
    }

    /// sacrebleu-style signature: everything that determines the numbers.
    pub fn signature(&self, nrefs: impl std::fmt::Display) -> String {
        let rescale = match &self.config.baseline {
            None => "no".to_string(),
            Some(b) => format!("yes({})", b.source),
        };
        format!(
            "BERTScore|model:{}|layer:{}|idf:{}|rescale:{}|nrefs:{}|maxlen:{}|bs:{}|tok:fast|impl:prompt2model-rs-{}|ref:bert_score-{}",
            self.model_name,
            self.config.layer,
            if self.config.idf { "yes" } else { "no" },
            rescale,
            nrefs,
            self.encoder.max_length(),
            self.config.batch_size,
            env!("CARGO_PKG_VERSION"),
            BERT_SCORE_REFERENCE_VERSION,
        )
    }

    /// bert_score's own hash string for these settings (its `get_hash`, with the
    /// `(hug_trans=...)` part left out since transformers is not involved), e.g.
    /// `all-MiniLM-L6-v2_L6_no-idf_version=0.3.12_fast-tokenizer`.
    pub fn bert_score_hash(&self) -> String {
        let mut msg = format!(
            "{}_L{}{}_version={}",
            self.model_name,
            self.config.layer,
            if self.config.idf { "_idf" } else { "_no-idf" },
            BERT_SCORE_HASH_VERSION
        );
        if let Some(b) = &self.config.baseline {
            msg += if b.shipped { "-rescaled" } else { "-custom-rescaled" };
        }
        msg + "_fast-tokenizer"
    }

    /// Token ids as bert_score's `sent_encode`: stripped, special tokens, truncated.
    pub fn encode(&self, sentences: &[&str]) -> Result<Vec<Vec<i64>>> {
        let stripped: Vec<&str> = sentences.iter().map(|s| s.trim()).collect();
        self.encoder.tokenize(&stripped)
    }

    /// The token weights for these references: idf over them, or 1 with CLS/SEP at 0.
    pub fn idf_weights(&self, references: &[&str]) -> Result<IdfWeights> {
        if !self.config.idf {
            let mut weights = HashMap::new();
            weights.insert(self.encoder.sep_id.expect("checked in new"), 0.0);
            weights.insert(self.encoder.cls_id.expect("checked in new"), 0.0);
            return Ok(IdfWeights { weights, default: 1.0 });
        }
        let n = references.len() as f64;
        let mut df: HashMap<i64, usize> = HashMap::new();
        for ids in self.encode(references)? {
            for id in ids.into_iter().collect::<HashSet<_>>() {
                *df.entry(id).or_default() += 1;
            }
        }
        let weights =
            df.into_iter().map(|(id, c)| (id, ((n + 1.0) / (c as f64 + 1.0)).ln())).collect();
        Ok(IdfWeights { weights, default: (n + 1.0).ln() })
    }

    /// One reference per candidate.
    pub fn score<C: AsRef<str>, R: AsRef<str>>(
        &self,
        candidates: &[C],
        references: &[R],
    ) -> Result<BertScores> {
        if candidates.len() != references.len() {
            bail!("BERTScore: {} candidates but {} references", candidates.len(), references.len());
        }
        let refs: Vec<Vec<&str>> = references.iter().map(|r| vec![r.as_ref()]).collect();
        self.score_multi(candidates, &refs)
    }

    /// Any number (at least one) of references per candidate; P, R and F1 are each the best over
    /// a candidate's references.
    pub fn score_multi<C: AsRef<str>, R: AsRef<str>>(
        &self,
        candidates: &[C],
        references: &[Vec<R>],
    ) -> Result<BertScores> {
        if candidates.len() != references.len() {
            bail!(
                "BERTScore: {} candidates but {} reference lists",
                candidates.len(),
                references.len()
            );
        }
        if let Some(i) = references.iter().position(|r| r.is_empty()) {
            bail!("BERTScore: candidate {i} has no reference");
        }
        let first = references.first().map(Vec::len).unwrap_or(1);
        let nrefs = if references.iter().all(|r| r.len() == first) {
            first.to_string()
        } else {
            "var".to_string()
        };
        let signature = self.signature(nrefs);
        // Flatten to (candidate, reference) pairs, remembering each candidate's group.
        let mut cands_flat: Vec<&str> = Vec::new();
        let mut refs_flat: Vec<&str> = Vec::new();
        let mut groups = Vec::with_capacity(candidates.len());
        for (c, rs) in candidates.iter().zip(references) {
            let start = refs_flat.len();
            for r in rs {
                cands_flat.push(c.as_ref());
                refs_flat.push(r.as_ref());
            }
            groups.push(start..refs_flat.len());
        }
        let (p, r, f) = self.score_pairs(&cands_flat, &refs_flat)?;
        let mut out =
            BertScores { precision: Vec::new(), recall: Vec::new(), f1: Vec::new(), signature };
        for g in groups {
            let best =
                |v: &[f32]| v[g.clone()].iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let (mut bp, mut br, mut bf) = (best(&p), best(&r), best(&f));
            if let Some(b) = &self.config.baseline {
                bp = b.apply(bp, b.p);
                br = b.apply(br, b.r);
                bf = b.apply(bf, b.f);
            }
            out.precision.push(bp);
            out.recall.push(br);
            out.f1.push(bf);
        }
        Ok(out)
    }

    /// Raw (unrescaled) P, R, F of aligned pairs, in f32 as bert_score computes them.
    fn score_pairs(&self, cands: &[&str], refs: &[&str]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        if cands.is_empty() {
            return Ok((Vec::new(), Vec::new(), Vec::new()));
        }
        let _guard = tch::no_grad_guard();
        let idf = self.idf_weights(refs)?;

        // Embed every distinct sentence once, longest first so that batches pad little.
        let mut unique: Vec<&str> = Vec::new();
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        for s in refs.iter().chain(cands) {
            index_of.entry(s).or_insert_with(|| {
                unique.push(s);
                unique.len() - 1
            });
        }
        let ids = self.encode(&unique)?;
        let mut order: Vec<usize> = (0..unique.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        // Per sentence: its token embeddings [len, dim] (f32, CPU) and weights [len].
        let mut stats: Vec<Option<(Tensor, Vec<f32>)>> = (0..unique.len()).map(|_| None).collect();
        for chunk in order.chunks(self.config.batch_size) {
            let rows: Vec<Vec<i64>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let (states, batch) = self.encoder.hidden_states_of_ids(&rows, Some(self.config.layer));
            let emb =
                states.last().expect("hidden states").to_kind(Kind::Float).to_device(Device::Cpu);
            for (k, &i) in chunk.iter().enumerate() {
                let len = batch.lengths[k];
                let e = emb.get(k as i64).narrow(0, 0, len).contiguous();
                // bert_score builds the weights in Python floats and stores them as float32.
                let w: Vec<f32> = ids[i].iter().map(|&t| idf.get(t) as f32).collect();
                stats[i] = Some((e, w));
            }
        }
        let stats: Vec<(Tensor, Vec<f32>)> =
            stats.into_iter().map(|s| s.expect("every sentence embedded")).collect();

        // Greedy matching in bert_score's batches of pairs.
        let device = self.encoder.model.device;
        let (mut ps, mut rs, mut fs) = (
            Vec::with_capacity(cands.len()),
            Vec::with_capacity(cands.len()),
            Vec::with_capacity(cands.len()),
        );
        for start in (0..cands.len()).step_by(self.config.batch_size) {
            let end = (start + self.config.batch_size).min(cands.len());
            let pick = |sents: &[&str]| -> Vec<&(Tensor, Vec<f32>)> {
                sents[start..end].iter().map(|s| &stats[index_of[s]]).collect()
            };
            let (p, r, f) = greedy_match(&pick(refs), &pick(cands), device);
            ps.extend(p);
            rs.extend(r);
            fs.extend(f);
        }
        Ok((ps, rs, fs))
    }
}

/// P, R, F of one batch of aligned pairs, each side given as per-sentence (token embeddings
/// `[len, dim]`, token weights): bert_score's `greedy_cos_idf` on `pad_batch_stats` output.
fn greedy_match(
    refs: &[&(Tensor, Vec<f32>)],
    hyps: &[&(Tensor, Vec<f32>)],
    device: Device,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (ref_emb, ref_mask, ref_idf, ref_lens) = pad_stats(refs, device);
    let (hyp_emb, hyp_mask, hyp_idf, hyp_lens) = pad_stats(hyps, device);
    let ref_emb = &ref_emb / ref_emb.norm_scalaropt_dim(2, [-1], true);
    let hyp_emb = &hyp_emb / hyp_emb.norm_scalaropt_dim(2, [-1], true);
    // [B, hyp_len, ref_len]; padding rows/columns multiplied to 0 (and 0 can win a max: see the
    // module notes).
    let sim = hyp_emb.bmm(&ref_emb.transpose(1, 2));
    let masks = hyp_mask.unsqueeze(2).bmm(&ref_mask.unsqueeze(1));
    let sim = sim * masks;
    let word_precision = sim.amax(2, false);
    let word_recall = sim.amax(1, false);
    let hyp_scale = &hyp_idf / hyp_idf.sum_dim_intlist(1, true, Kind::Float);
    let ref_scale = &ref_idf / ref_idf.sum_dim_intlist(1, true, Kind::Float);
    let p = (word_precision * hyp_scale).sum_dim_intlist(1, false, Kind::Float);
    let r = (word_recall * ref_scale).sum_dim_intlist(1, false, Kind::Float);
    let f = 2.0 * &p * &r / (&p + &r);
    let to_vec = |t: &Tensor| -> Vec<f32> {
        Vec::<f32>::try_from(t.to_device(Device::Cpu)).expect("a 1-d f32 tensor")
    };
    let (p, r, f) = (to_vec(&p), to_vec(&r), to_vec(&f));
    let (mut ps, mut rs, mut fs) =
        (Vec::with_capacity(p.len()), Vec::with_capacity(p.len()), Vec::with_capacity(p.len()));
    for k in 0..p.len() {
        // bert_score: F is computed first; P and R of 2-token (empty) sides are then set to 0,
        // and a NaN F to 0.
        let empty = hyp_lens[k] == 2 || ref_lens[k] == 2;
        if empty {
            tracing::warn!(
                "BERTScore: empty {} detected; setting its P and R to 0",
                if hyp_lens[k] == 2 { "candidate" } else { "reference" }
            );
        }
        ps.push(if empty { 0.0 } else { p[k] });
        rs.push(if empty { 0.0 } else { r[k] });
        fs.push(if f[k].is_nan() { 0.0 } else { f[k] });
    }
    (ps, rs, fs)
}

/// Pad a batch of per-sentence (embeddings, weights) the way bert_score's `pad_batch_stats` does:
/// embeddings padded with 2.0 (masked out later), weights with 0; the mask is 1.0 on real tokens.
fn pad_stats(stats: &[&(Tensor, Vec<f32>)], device: Device) -> (Tensor, Tensor, Tensor, Vec<i64>) {
    let lens: Vec<i64> = stats.iter().map(|(e, _)| e.size()[0]).collect();
    let longest = lens.iter().copied().max().unwrap_or(0);
    let dim = stats[0].0.size()[1];
    let padded: Vec<Tensor> = stats
        .iter()
        .map(|(e, _)| {
            let pad = longest - e.size()[0];
            if pad == 0 {
                e.shallow_clone()
            } else {
                Tensor::cat(
                    &[e.shallow_clone(), Tensor::full([pad, dim], 2.0, (Kind::Float, Device::Cpu))],
                    0,
                )
            }
        })
        .collect();
    let emb = Tensor::stack(&padded, 0).to_device(device);
    let mut weights = Vec::with_capacity(stats.len() * longest as usize);
    let mut mask = Vec::with_capacity(stats.len() * longest as usize);
    for ((_, w), &len) in stats.iter().zip(&lens) {
        weights.extend_from_slice(w);
        weights.extend(std::iter::repeat_n(0f32, (longest - len) as usize));
        mask.extend(std::iter::repeat_n(1f32, len as usize));
        mask.extend(std::iter::repeat_n(0f32, (longest - len) as usize));
    }
    let shape = [stats.len() as i64, longest];
    let weights = Tensor::from_slice(&weights).view(shape).to_device(device);
    let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
    (emb, mask, weights, lens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_rows_are_read_by_position() {
        let text = "LAYER,P,R,F\n0,0.1,0.2,0.3\n1,0.4,0.5,0.6\n";
        let b = Baseline::from_csv(text, 1, "x/y.tsv").unwrap();
        assert_eq!((b.p, b.r, b.f), (0.4, 0.5, 0.6));
        assert!(Baseline::from_csv(text, 2, "x/y.tsv").is_err());
        assert!(Baseline::from_csv("A,B\n", 0, "bad").is_err());
        assert!((b.apply(0.7, b.p) - 0.5).abs() < 1e-12);
    }

    fn sentence(rows: &[[f32; 2]]) -> (Tensor, Vec<f32>) {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        (Tensor::from_slice(&flat).view([rows.len() as i64, 2]), vec![1.0; rows.len()])
    }

    #[test]
    fn greedy_matching_keeps_bert_scores_padding_quirk() {
        // Every candidate token of pair 0 points away from every reference token (cosines < 0).
        let hyp0 = sentence(&[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]);
        let ref0 = sentence(&[[-1.0, 0.1], [-1.0, -0.1], [-1.0, 0.0]]);
        // Pair 1 has a longer reference, so pair 0's reference is padded within the batch.
        let hyp1 = sentence(&[[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]);
        let ref1 = sentence(&[[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]]);
        let alone = greedy_match(&[&ref0], &[&hyp0], Device::Cpu);
        let cos = 1.0 / (1.0f32 + 0.01).sqrt();
        assert!((alone.0[0] + cos).abs() < 1e-6, "{alone:?}");
        assert!((alone.1[0] + (2.0 * cos + 1.0) / 3.0).abs() < 1e-6, "{alone:?}");
        let batched = greedy_match(&[&ref0, &ref1], &[&hyp0, &hyp1], Device::Cpu);
        // In the batch, the zeros of the padded reference column win the max: P = 0, R unchanged
        // (the candidate side is not padded), F = 2·0·R/(0+R) = 0.
        assert_eq!(batched.0[0], 0.0);
        assert!((batched.1[0] - alone.1[0]).abs() < 1e-6);
        assert_eq!(batched.2[0], 0.0);
        assert!((batched.2[1] - 1.0).abs() < 1e-6, "pair 1 matches itself: {batched:?}");
    }
}

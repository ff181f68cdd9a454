//! chrF (Popović 2015) and chrF++ (Popović 2017), numerically identical to sacrebleu 2.x
//! (`sacrebleu.metrics.CHRF`, checked against sacrebleu 2.6.0).
//!
//! Why a port and not "a chrF": chrF variants differ in whitespace handling, word tokenisation,
//! smoothing and how multiple references are combined, and those choices move scores by points.
//! Every step below mirrors `sacrebleu/metrics/chrf.py` and `sacrebleu/metrics/helpers.py`:
//!
//! 1. *Pre-processing*: optional Python `str.lower()` (`lowercase`, off by default).
//! 2. *Character n-grams* (orders `1..=char_order`): unless `whitespace` is set, all Python
//!    whitespace is deleted first (`''.join(line.split())`), then every window of `n`
//!    **code points** is an n-gram. Emoji built from several code points are several characters.
//! 3. *Word n-grams* (orders `1..=word_order`, chrF++ only): `line.split()` on Python whitespace,
//!    then `_remove_punctuation`: a token longer than one character whose *last* character is in
//!    `string.punctuation` is split into `token[:-1]`, `token[-1]`; otherwise one whose *first*
//!    character is punctuation is split into `token[0]`, `token[1:]` (only one split, so `(hi)`
//!    gives `(hi` and `)`, sacrebleu issue #124). N-grams are token windows.
//! 4. *Statistics* per order: `[hyp count, ref count, matches]` where matches is the clipped
//!    intersection `Σ min(hyp, ref)`, and the hyp count is **0 when the reference has no n-gram of
//!    that order** (`hyp_count if ref_ngrams else 0`).
//! 5. *Multiple references*: for each hypothesis the reference whose sentence-level score
//!    (`_compute_f_score`) is strictly the best is kept (ties keep the earliest), and only its
//!    statistics enter the corpus sums.
//! 6. *Corpus score*: statistics are summed over sentences and `_compute_f_score` is applied once:
//!    with the default effective-order smoothing, precision and recall are averaged over the orders
//!    where both the hypothesis and the reference had n-grams, then combined with
//!    `F_β = (1+β²)·P·R / (β²·P + R)`; with `eps_smoothing` the per-order F scores (with 1e-16 for
//!    undefined terms) are averaged instead. Floating-point operations are performed in the same
//!    order as in Python, so results are bit-identical, not merely close.
//!
//! Hot path: n-grams are never allocated as strings. Character n-grams of order ≤ 6 are packed
//! losslessly into `u128` keys (21 bits per code point), longer ones are `&str` slices of the
//! whitespace-free sentence; word n-grams are `&[&str]` windows of the token list. Only the
//! reference side is counted, in reusable hash maps with a small FxHash-style hasher (collision
//! resistance is irrelevant: keys are compared exactly, so the counts are exact), and the
//! hypothesis n-grams consume those counts (see `match_order`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::error::MetricError;
use crate::pystr;

/// sacrebleu version the implementation is verified against (used in signatures).
pub const SACREBLEU_REFERENCE_VERSION: &str = "2.6.0";

/// chrF parameters, with the same meaning and defaults as `sacrebleu.metrics.CHRF`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChrfConfig {
    /// Maximum character n-gram order (sacrebleu `char_order`, default 6).
    pub char_order: usize,
    /// Maximum word n-gram order (`word_order`): 0 = chrF, 2 = chrF++.
    pub word_order: usize,
    /// Recall weight β (default 2). Must be finite and > 0 (β = 0 makes sacrebleu divide by 0).
    pub beta: f64,
    /// Python `str.lower()` hypotheses and references first.
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams.
    pub whitespace: bool,
    /// chrF++.py/NLTK/Moses epsilon smoothing instead of sacrebleu's effective order.
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    /// chrF++, the metric the paper reports.
    fn default() -> Self {
        Self::chrf_plus_plus()
    }
}

impl ChrfConfig {
    /// chrF++ as `sacrebleu.corpus_chrf(..., word_order=2)`: `nc:6, nw:2, β=2`.
    pub const fn chrf_plus_plus() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 2,
            beta: 2.0,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }

    /// Plain chrF (sacrebleu's defaults): `nc:6, nw:0, β=2`.
    pub const fn chrf() -> Self {
        ChrfConfig { word_order: 0, ..Self::chrf_plus_plus() }
    }

    /// Total number of n-gram orders (`char_order + word_order`).
    pub fn order(&self) -> usize {
        self.char_order + self.word_order
    }

    /// sacrebleu's score name: `chrF{β}` plus one `+` per word order (`chrF2++`).
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    /// Reproducibility signature in sacrebleu's style, e.g.
    /// `chrF2++|nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|impl:prompt2model-rs-0.1.0|ref:sacrebleu-2.6.0`.
    ///
    /// `nrefs` is the number of references per segment, or `var` when it varies (see
    /// [`nrefs_label`]); anything `Display` is accepted. The fields between the name and `impl`
    /// are exactly sacrebleu's `CHRF.get_signature().format()` without its `version` field.
    pub fn signature(&self, nrefs: impl std::fmt::Display) -> String {
        format!(
            "{}|nrefs:{}|case:{}|eff:{}|nc:{}|nw:{}|space:{}|impl:prompt2model-rs-{}|ref:sacrebleu-{}",
            self.name(),
            nrefs,
            if self.lowercase { "lc" } else { "mixed" },
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            if self.whitespace { "yes" } else { "no" },
            env!("CARGO_PKG_VERSION"),
            SACREBLEU_REFERENCE_VERSION,
        )
    }

    fn validate(&self) -> Result<(), MetricError> {
        if self.order() == 0 {
            return Err(MetricError::InvalidConfig(
                "char_order + word_order must be at least 1".into(),
            ));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(MetricError::InvalidConfig(format!(
                "beta must be finite and > 0, got {}",
                self.beta
            )));
        }
        Ok(())
    }
}

/// sacrebleu's `nrefs` signature value: the common number of references per segment, or `var`.
pub fn nrefs_label<R: AsRef<[S]>, S>(refs: &[R]) -> String {
    let mut counts = refs.iter().map(|r| r.as_ref().len());
    match counts.next() {
        Some(first) if counts.all(|c| c == first) => first.to_string(),
        Some(_) => "var".to_string(),
        None => "0".to_string(),
    }
}

// ----------------------------------------------------------------------------------------------
// n-gram extraction
// ----------------------------------------------------------------------------------------------

/// FxHash-style hasher (rustc's): a rotate/xor/multiply per 8 bytes. Keys are compared exactly
/// by the map, so the hash only has to be fast and reasonably spread.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 8 {
            self.add(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
            bytes = &bytes[8..];
        }
        if bytes.len() >= 4 {
            self.add(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64);
            bytes = &bytes[4..];
        }
        for &b in bytes {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxMap<K> = HashMap<K, u32, BuildHasherDefault<FxHasher>>;

/// `CHRF._get_match_statistics` for one order → `[hyp count, ref count, matches]`, given the
/// hypothesis and reference n-grams as key lists (with repetitions).
///
/// The reference is counted into `map` (a reusable `collections.Counter`), then every hypothesis
/// occurrence consumes one remaining reference count if there is one; the number of successful
/// consumptions is exactly the clipped intersection `Σ min(hyp count, ref count)`. No map is built
/// for the hypothesis.
fn match_order<K: Hash + Eq + Copy>(hyp: &[K], r: &[K], map: &mut FxMap<K>) -> [u64; 3] {
    if r.is_empty() {
        // "Don't count hits if no reference exists for that n-gram" (sacrebleu)
        return [0, 0, 0];
    }
    let mut matches = 0u64;
    if !hyp.is_empty() {
        map.clear();
        map.reserve(r.len());
        for &k in r {
            *map.entry(k).or_insert(0) += 1;
        }
        for k in hyp {
            if let Some(c) = map.get_mut(k) {
                if *c > 0 {
                    *c -= 1;
                    matches += 1;
                }
            }
        }
    }
    [hyp.len() as u64, r.len() as u64, matches]
}

/// The pre-processed text of one segment, owning what the n-gram slices borrow.
struct Segment<'s> {
    /// After optional lower-casing.
    text: Cow<'s, str>,
    /// Drop Python whitespace from the character stream (`not cfg.whitespace`).
    strip: bool,
    /// `text` without Python whitespace (or `text` itself with `whitespace`), materialised only
    /// for the `&str`-keyed path (`char_order > MAX_PACKED_ORDER`).
    stripped: Option<Cow<'s, str>>,
}

/// Character n-grams up to this order are packed losslessly into a `u128` key (21 bits per code
/// point: 6 × 21 = 126 bits), which hashes and compares much faster than a string slice. Longer
/// orders (never used in practice) fall back to `&str` keys.
const MAX_PACKED_ORDER: usize = 6;

impl<'s> Segment<'s> {
    fn new(s: &'s str, cfg: &ChrfConfig) -> Segment<'s> {
        let text: Cow<'s, str> =
            if cfg.lowercase { Cow::Owned(pystr::lower(s)) } else { Cow::Borrowed(s) };
        let strip = !cfg.whitespace;
        let stripped = (cfg.char_order > MAX_PACKED_ORDER).then(|| match &text {
            _ if !strip => text.clone(),
            Cow::Borrowed(b) if !b.chars().any(pystr::is_space) => Cow::Borrowed(*b),
            t => Cow::Owned(t.chars().filter(|&c| !pystr::is_space(c)).collect()),
        });
        Segment { text, strip, stripped }
    }

    /// The characters that character n-grams are taken from: `''.join(line.split())`, or the
    /// whole line with `whitespace`.
    fn char_stream(&self) -> impl Iterator<Item = char> + '_ {
        let strip = self.strip;
        self.text.chars().filter(move |&c| !(strip && pystr::is_space(c)))
    }

    /// `CHRF._remove_punctuation(text)`.
    fn words(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for w in pystr::split(&self.text) {
            let mut it = w.chars();
            let first = it.next().expect("split() yields non-empty words");
            let Some(last) = it.next_back() else {
                out.push(w); // len(w) == 1
                continue;
            };
            if pystr::is_punctuation(last) {
                let cut = w.len() - last.len_utf8();
                out.push(&w[..cut]);
                out.push(&w[cut..]);
            } else if pystr::is_punctuation(first) {
                let cut = first.len_utf8();
                out.push(&w[..cut]);
                out.push(&w[cut..]);
            } else {
                out.push(w);
            }
        }
        out
    }
}

/// Character n-grams of orders `1..=char_order`, one key list per order.
enum CharKeys<'a> {
    Packed(Vec<Vec<u128>>),
    Slices(Vec<Vec<&'a str>>),
}

/// All n-grams of one segment as key lists: char orders `1..=nc`, then word orders `1..=nw`.
struct Ngrams<'a> {
    chars: CharKeys<'a>,
    words: Vec<Vec<&'a [&'a str]>>,
}

/// Reusable hash maps for the packed character orders (the hot path), so that scoring a corpus
/// does not allocate a map per segment and order.
#[derive(Default)]
struct Workspace {
    char_maps: Vec<FxMap<u128>>,
}

impl<'a> Ngrams<'a> {
    fn new(seg: &'a Segment<'_>, words: &'a [&'a str], cfg: &ChrfConfig) -> Ngrams<'a> {
        let chars = if cfg.char_order <= MAX_PACKED_ORDER {
            // keys of order n: c[i] c[i+1] … c[i+n-1], 21 bits each, built from those of order n-1
            let codes: Vec<u128> = seg.char_stream().map(|c| c as u128).collect();
            let mut keys = codes.clone();
            let mut orders = Vec::with_capacity(cfg.char_order);
            for n in 1..=cfg.char_order {
                if n > 1 {
                    keys.truncate((codes.len() + 1).saturating_sub(n));
                    for (i, k) in keys.iter_mut().enumerate() {
                        *k = (*k << 21) | codes[i + n - 1];
                    }
                }
                orders.push(keys.clone());
            }
            CharKeys::Packed(orders)
        } else {
            let chars: &str =
                seg.stripped.as_deref().expect("materialised for char_order > MAX_PACKED_ORDER");
            let mut offsets: Vec<usize> = chars.char_indices().map(|(i, _)| i).collect();
            offsets.push(chars.len());
            let n_chars = offsets.len() - 1;
            CharKeys::Slices(
                (1..=cfg.char_order)
                    .map(|n| {
                        let count = (n_chars + 1).saturating_sub(n);
                        (0..count).map(|i| &chars[offsets[i]..offsets[i + n]]).collect()
                    })
                    .collect(),
            )
        };
        let words = (1..=cfg.word_order).map(|n| words.windows(n).collect()).collect();
        Ngrams { chars, words }
    }

    /// Flattened `[hyp, ref, match] × order` statistics of `self` (hypothesis) against `r`.
    fn stats_against(&self, r: &Ngrams<'_>, ws: &mut Workspace, out: &mut Vec<u64>) {
        out.clear();
        match (&self.chars, &r.chars) {
            (CharKeys::Packed(h), CharKeys::Packed(r)) => {
                if ws.char_maps.len() < h.len() {
                    ws.char_maps.resize_with(h.len(), FxMap::default);
                }
                for ((h, r), map) in h.iter().zip(r).zip(&mut ws.char_maps) {
                    out.extend_from_slice(&match_order(h, r, map));
                }
            }
            (CharKeys::Slices(h), CharKeys::Slices(r)) => {
                for (h, r) in h.iter().zip(r) {
                    out.extend_from_slice(&match_order(h, r, &mut FxMap::default()));
                }
            }
            _ => unreachable!("hypothesis and reference n-grams are built with the same config"),
        }
        for (h, r) in self.words.iter().zip(&r.words) {
            out.extend_from_slice(&match_order(h, r, &mut FxMap::default()));
        }
    }
}

// ----------------------------------------------------------------------------------------------
// scoring
// ----------------------------------------------------------------------------------------------

/// `CHRF._compute_f_score`: the chrF score in `[0, 100]` of (summed) statistics
/// `[hyp, ref, match] × (char_order + word_order)`.
///
/// Operation order follows the Python code exactly so the result is bit-identical. Panics if
/// `stats` is shorter than `3 * cfg.order()`.
pub fn score_from_statistics(stats: &[u64], cfg: &ChrfConfig) -> f64 {
    let eps = 1e-16;
    let factor = cfg.beta * cfg.beta;
    let order = cfg.order();
    let mut score = 0.0f64;
    let mut effective_order = 0usize;
    let (mut avg_prec, mut avg_rec) = (0.0f64, 0.0f64);

    for i in 0..order {
        let (n_hyp, n_ref, n_match) = (stats[3 * i], stats[3 * i + 1], stats[3 * i + 2]);
        // chrF++.py style EPS smoothing (also used by Moses and NLTK)
        let prec = if n_hyp > 0 { n_match as f64 / n_hyp as f64 } else { eps };
        let rec = if n_ref > 0 { n_match as f64 / n_ref as f64 } else { eps };
        let denom = factor * prec + rec;
        score += if denom > 0.0 { (1.0 + factor) * prec * rec / denom } else { eps };
        // sacreBLEU <2.0.0 style effective order smoothing
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective_order += 1;
        }
    }

    if cfg.eps_smoothing {
        return 100.0 * score / order as f64;
    }
    if effective_order == 0 {
        avg_prec = 0.0;
        avg_rec = 0.0;
    } else {
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
    }
    if avg_prec + avg_rec != 0.0 {
        let mut score = (1.0 + factor) * avg_prec * avg_rec;
        score /= factor * avg_prec + avg_rec;
        100.0 * score
    } else {
        0.0
    }
}

/// Statistics of one hypothesis against its references: those of the reference with the best
/// sentence-level score (first one on ties), as `CHRF._compute_segment_statistics`.
///
/// Errors if `refs` is empty or `cfg` is invalid.
pub fn segment_statistics<S: AsRef<str>>(
    hyp: &str,
    refs: &[S],
    cfg: &ChrfConfig,
) -> Result<Vec<u64>, MetricError> {
    cfg.validate()?;
    if refs.is_empty() {
        return Err(MetricError::NoReferences { index: 0 });
    }
    let mut best = Vec::with_capacity(3 * cfg.order());
    let mut scratch = Vec::with_capacity(3 * cfg.order());
    best_stats(hyp, refs, cfg, &mut Workspace::default(), &mut best, &mut scratch);
    Ok(best)
}

fn best_stats<S: AsRef<str>>(
    hyp: &str,
    refs: &[S],
    cfg: &ChrfConfig,
    ws: &mut Workspace,
    best: &mut Vec<u64>,
    scratch: &mut Vec<u64>,
) {
    let hseg = Segment::new(hyp, cfg);
    let hwords = if cfg.word_order > 0 { hseg.words() } else { Vec::new() };
    let hng = Ngrams::new(&hseg, &hwords, cfg);
    let mut best_f = -1.0f64;
    best.clear();
    for r in refs {
        let rseg = Segment::new(r.as_ref(), cfg);
        let rwords = if cfg.word_order > 0 { rseg.words() } else { Vec::new() };
        let rng = Ngrams::new(&rseg, &rwords, cfg);
        hng.stats_against(&rng, ws, scratch);
        let f = score_from_statistics(scratch, cfg);
        if f > best_f {
            best_f = f;
            std::mem::swap(best, scratch);
        }
    }
}

/// Corpus-level chrF / chrF++ in `[0, 100]`, identical to
/// `sacrebleu.corpus_chrf(hyps, ref_streams, char_order, word_order, beta)` (`.score`).
///
/// `refs[i]` are the references of `hyps[i]` (any number ≥ 1; sacrebleu's layout is the
/// transpose, reference *streams*, padded with `None` for a variable count). Errors on a length
/// mismatch, an empty corpus, a hypothesis without references or an invalid config — the cases
/// where sacrebleu raises or silently truncates (`zip`).
pub fn corpus_chrf<H, R, S>(hyps: &[H], refs: &[R], cfg: &ChrfConfig) -> Result<f64, MetricError>
where
    H: AsRef<str> + Sync,
    R: AsRef<[S]> + Sync,
    S: AsRef<str>,
{
    cfg.validate()?;
    MetricError::check_corpus("hypotheses", hyps.len(), refs.len())?;
    if let Some(i) = refs.iter().position(|r| r.as_ref().is_empty()) {
        return Err(MetricError::NoReferences { index: i });
    }
    // The statistics are integer counts summed over segments, so splitting the corpus over threads
    // gives exactly the single-threaded totals; small corpora stay on one thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = hyps.len().div_ceil(threads.max(1)).max(PARALLEL_MIN_SEGMENTS);
    let total = std::thread::scope(|scope| {
        let parts: Vec<_> = hyps
            .chunks(chunk)
            .zip(refs.chunks(chunk))
            .map(|(h, r)| scope.spawn(move || summed_stats(h, r, cfg)))
            .collect();
        let mut total = vec![0u64; 3 * cfg.order()];
        for part in parts {
            for (t, s) in total.iter_mut().zip(part.join().expect("a chrF worker panicked")) {
                *t += s;
            }
        }
        total
    });
    Ok(score_from_statistics(&total, cfg))
}

/// Below this many segments per thread, a thread costs more than it saves.
const PARALLEL_MIN_SEGMENTS: usize = 2048;

/// The corpus statistics of `hyps` against `refs` (each with at least one reference), summed.
fn summed_stats<H, R, S>(hyps: &[H], refs: &[R], cfg: &ChrfConfig) -> Vec<u64>
where
    H: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    let width = 3 * cfg.order();
    let mut total = vec![0u64; width];
    let mut best = Vec::with_capacity(width);
    let mut scratch = Vec::with_capacity(width);
    let mut ws = Workspace::default();
    for (h, r) in hyps.iter().zip(refs) {
        best_stats(h.as_ref(), r.as_ref(), cfg, &mut ws, &mut best, &mut scratch);
        for (t, s) in total.iter_mut().zip(&best) {
            *t += s;
        }
    }
    total
}

/// Sentence-level chrF, identical to `sacrebleu.sentence_chrf(hyp, refs, ...)` (`.score`).
///
/// Returns `0.0` when `refs` is empty or `cfg` is invalid (sacrebleu raises); use
/// [`try_sentence_chrf`] to get those as errors.
pub fn sentence_chrf<S: AsRef<str>>(hyp: &str, refs: &[S], cfg: &ChrfConfig) -> f64 {
    try_sentence_chrf(hyp, refs, cfg).unwrap_or(0.0)
}

/// [`sentence_chrf`] that reports an empty reference list or an invalid config as an error.
pub fn try_sentence_chrf<S: AsRef<str>>(
    hyp: &str,
    refs: &[S],
    cfg: &ChrfConfig,
) -> Result<f64, MetricError> {
    let stats = segment_statistics(hyp, refs, cfg)?;
    Ok(score_from_statistics(&stats, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp() -> ChrfConfig {
        ChrfConfig::chrf_plus_plus()
    }

    #[test]
    fn a_corpus_split_over_threads_scores_exactly_as_one_thread() {
        // Enough segments for several workers; the totals are integer sums, so equality is exact.
        let n = 3 * PARALLEL_MIN_SEGMENTS + 17;
        let hyps: Vec<String> =
            (0..n).map(|i| format!("the cat {} sat on mat {}", i % 97, i % 13)).collect();
        let refs: Vec<Vec<String>> = (0..n)
            .map(|i| vec![format!("a cat {} sat on the mat {}", i % 89, i % 7), "x".into()])
            .collect();
        let one_thread = score_from_statistics(&summed_stats(&hyps, &refs, &pp()), &pp());
        assert_eq!(corpus_chrf(&hyps, &refs, &pp()).unwrap(), one_thread);
    }

    /// Expected values computed with sacrebleu 2.6.0:
    /// `CHRF(word_order=2).corpus_score(hyps, streams).score` / `.sentence_score(h, refs).score`,
    /// compared bit-for-bit (the port performs the same float operations in the same order).
    #[test]
    fn matches_sacrebleu_values() {
        let hyps = [
            "The cat sat on the mat.",
            "東京は日本の首都です。",
            "",
            "(hi) there, friend!",
            "  \u{9} ",
        ];
        let refs: Vec<Vec<&str>> = vec![
            vec!["The cat is on the mat.", "A cat sat on a mat!"],
            vec!["日本の首都は東京です。"],
            vec!["nothing here"],
            vec!["hi there friend", "(hi) there, friends!"],
            vec!["whitespace"],
        ];
        let cfg = ChrfConfig::chrf_plus_plus();
        assert_eq!(corpus_chrf(&hyps, &refs, &cfg).unwrap(), 55.68776108084011);
        let sent = [69.43695278069349, 36.24716553287982, 0.0, 84.69357571588779, 0.0];
        for (i, want) in sent.iter().enumerate() {
            assert_eq!(sentence_chrf(hyps[i], &refs[i], &cfg), *want, "pp sentence {i}");
        }
        let cfg = ChrfConfig::chrf();
        assert_eq!(corpus_chrf(&hyps, &refs, &cfg).unwrap(), 53.0924705263057);
        let sent = [67.17273492330233, 42.288359788359784, 0.0, 89.02263497716442, 0.0];
        for (i, want) in sent.iter().enumerate() {
            assert_eq!(sentence_chrf(hyps[i], &refs[i], &cfg), *want, "c sentence {i}");
        }
        let cfg =
            ChrfConfig { lowercase: true, eps_smoothing: true, ..ChrfConfig::chrf_plus_plus() };
        assert_eq!(corpus_chrf(&hyps, &refs, &cfg).unwrap(), 55.61580943263094);
        let sent = [69.42671676320066, 31.71626984126984, 0.0, 84.6830150137816, 1.25e-15];
        for (i, want) in sent.iter().enumerate() {
            assert_eq!(sentence_chrf(hyps[i], &refs[i], &cfg), *want, "lc_eps sentence {i}");
        }
        let cfg = ChrfConfig {
            word_order: 1,
            whitespace: true,
            beta: 1.0,
            char_order: 4,
            ..ChrfConfig::chrf_plus_plus()
        };
        assert_eq!(corpus_chrf(&hyps, &refs, &cfg).unwrap(), 67.76848986354241);
        let sent = [82.53021113415323, 47.888888888888886, 0.0, 91.01054084945174, 0.0];
        for (i, want) in sent.iter().enumerate() {
            assert_eq!(sentence_chrf(hyps[i], &refs[i], &cfg), *want, "ws_b1 sentence {i}");
        }
        assert_eq!(
            sentence_chrf("👍\u{1f3fd} ok 🇯🇵", &["👍 ok 🇯🇵!"], &ChrfConfig::chrf_plus_plus()),
            39.51732673267326
        );
        assert_eq!(
            sentence_chrf(
                "👍\u{1f3fd} ok 🇯🇵",
                &["👍 ok 🇯🇵!"],
                &ChrfConfig { lowercase: true, ..ChrfConfig::chrf_plus_plus() }
            ),
            39.51732673267326
        );
        assert_eq!(sentence_chrf("ΟΔΥΣΣΕΥΣ", &["οδυσσευς"], &ChrfConfig::chrf_plus_plus()), 0.0);
        assert_eq!(
            sentence_chrf(
                "ΟΔΥΣΣΕΥΣ",
                &["οδυσσευς"],
                &ChrfConfig { lowercase: true, ..ChrfConfig::chrf_plus_plus() }
            ),
            100.0
        );
        assert_eq!(sentence_chrf("a\u{1c}b", &["a b"], &ChrfConfig::chrf_plus_plus()), 100.0);
        assert_eq!(
            sentence_chrf(
                "a\u{1c}b",
                &["a b"],
                &ChrfConfig { lowercase: true, ..ChrfConfig::chrf_plus_plus() }
            ),
            100.0
        );
    }

    #[test]
    fn word_tokenisation_follows_remove_punctuation() {
        let cfg = pp();
        let seg = Segment::new("(hi) a, .x y. Hello!! 日本。 ", &cfg);
        assert_eq!(
            seg.words(),
            ["(hi", ")", "a", ",", ".", "x", "y", ".", "Hello!", "!", "日本。"]
        );
        // whitespace is Python's: U+001C separates words and is removed from char n-grams
        let seg = Segment::new("a\u{1c}b\u{3000}c\u{200b}d", &cfg);
        assert_eq!(seg.words(), ["a", "b", "c\u{200b}d"]);
        assert_eq!(seg.char_stream().collect::<String>(), "abc\u{200b}d");
        let long = ChrfConfig { char_order: 7, ..cfg };
        assert_eq!(Segment::new("a\u{1c}b c", &long).stripped.as_deref(), Some("abc"));
    }

    #[test]
    fn errors_and_degenerate_inputs() {
        let cfg = pp();
        let e: [&str; 0] = [];
        assert_eq!(corpus_chrf(&e, &Vec::<Vec<&str>>::new(), &cfg), Err(MetricError::EmptyCorpus));
        assert!(matches!(
            corpus_chrf(&["a"], &[vec!["a"], vec!["b"]], &cfg),
            Err(MetricError::LengthMismatch { .. })
        ));
        assert_eq!(
            corpus_chrf(&["a"], &[Vec::<&str>::new()], &cfg),
            Err(MetricError::NoReferences { index: 0 })
        );
        assert_eq!(sentence_chrf("a", &e, &cfg), 0.0);
        assert!(try_sentence_chrf("a", &e, &cfg).is_err());
        let bad = ChrfConfig { beta: 0.0, ..cfg };
        assert!(matches!(
            corpus_chrf(&["a"], &[vec!["a"]], &bad),
            Err(MetricError::InvalidConfig(_))
        ));
        let bad = ChrfConfig { char_order: 0, word_order: 0, ..cfg };
        assert!(try_sentence_chrf("a", &["a"], &bad).is_err());
        // identical strings score 100, empty or whitespace-only hypotheses 0
        assert_eq!(sentence_chrf("The cat sat.", &["The cat sat."], &cfg), 100.0);
        assert_eq!(sentence_chrf("", &["The cat"], &cfg), 0.0);
        assert_eq!(sentence_chrf(" \t\u{3000}", &["The cat"], &cfg), 0.0);
        assert_eq!(sentence_chrf("", &[""], &cfg), 0.0);
    }

    #[test]
    fn signature_format() {
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            pp().signature(1),
            format!("chrF2++|nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|impl:prompt2model-rs-{v}|ref:sacrebleu-2.6.0")
        );
        let c = ChrfConfig {
            lowercase: true,
            eps_smoothing: true,
            whitespace: true,
            ..ChrfConfig::chrf()
        };
        assert_eq!(
            c.signature("var"),
            format!("chrF2|nrefs:var|case:lc|eff:no|nc:6|nw:0|space:yes|impl:prompt2model-rs-{v}|ref:sacrebleu-2.6.0")
        );
        assert_eq!(nrefs_label(&[vec!["a"], vec!["b", "c"]]), "var");
        assert_eq!(nrefs_label(&[vec!["a", "b"], vec!["b", "c"]]), "2");
    }
}

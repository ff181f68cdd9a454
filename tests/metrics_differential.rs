//! Differential test of the metric ports against the Python reference implementations.
//!
//! A seeded generator builds several hundred chrF++ corpora (ASCII with punctuation, Japanese,
//! emoji with modifiers/ZWJ/flags, mixed scripts, Python-only whitespace such as U+001C, empty and
//! whitespace-only segments, 1–4 and variable numbers of references, 1-element corpora, identical
//! hypothesis/reference, and some non-default chrF configurations), SQuAD-style answers (articles,
//! punctuation, case, Unicode word boundaries, final sigma), and Kendall rankings (n = 0..60 plus
//! some large n; with and without ties; all-tied; exact and asymptotic branches, including the
//! closed-form and `4c = n(n-1)` exact cases), and classification corpora for macro-F1 (1–8
//! classes, case variants, labels predicted but never gold, constant answers, one row). The cases
//! are written to a JSON file and scored by `tests/reference/metrics_reference.py` with sacrebleu
//! 2.6.0, the official SQuAD v1.1 normalisation, scipy 1.17.1 and scikit-learn 1.9.1, run by the
//! interpreter in `$P2M_PYTHON` (default: `<crate>/.venv/bin/python`, created by
//! `bash scripts/test.sh`).
//!
//! Tolerances: chrF corpus and sentence scores 1e-9 (they are in fact bit-identical), EM and the
//! normalised strings exactly, Kendall τ and p 1e-12 (NaN must match NaN), macro-F1 1e-12 (numpy
//! sums the per-class F1 pairwise, we sum them in order). The Python `str`
//! tables embedded in `evaluator::pystr` are also compared with the interpreter code point by
//! code point; an interpreter whose `unicodedata.unidata_version` is not the one the tables were
//! generated from (`pystr::UNIDATA_VERSION`) fails the test, with instructions, since the tables
//! cannot be checked against it.
//!
//! A missing or incomplete Python environment is a test *failure* with instructions, never a
//! silent pass.

use std::path::{Path, PathBuf};
use std::process::Command;

use prompt2model::evaluator::chrf::{self, ChrfConfig};
use prompt2model::evaluator::exact_match::{self, EmNormalization};
use prompt2model::evaluator::kendall::{self, KendallMethod};
use prompt2model::evaluator::macro_f1;
use prompt2model::evaluator::pystr;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

const N_CHRF_CORPORA: usize = 400;
const N_EM_CASES: usize = 1500;
const N_KENDALL_RANDOM: usize = 500;
const N_MACRO_F1_CORPORA: usize = 300;

// ---------------------------------------------------------------------------------------------
// JSON exchange format (see metrics_reference.py)
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct Input {
    chrf: Vec<ChrfCase>,
    em: Vec<EmCase>,
    kendall: Vec<KendallCase>,
    macro_f1: Vec<MacroF1Case>,
    unicode_tables: bool,
}

#[derive(Serialize, Clone)]
struct ChrfCase {
    config: PyChrfConfig,
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
}

#[derive(Serialize, Clone, Copy)]
struct PyChrfConfig {
    char_order: usize,
    word_order: usize,
    beta: u32,
    lowercase: bool,
    whitespace: bool,
    eps_smoothing: bool,
}

impl PyChrfConfig {
    fn to_rust(self) -> ChrfConfig {
        ChrfConfig {
            char_order: self.char_order,
            word_order: self.word_order,
            beta: self.beta as f64,
            lowercase: self.lowercase,
            whitespace: self.whitespace,
            eps_smoothing: self.eps_smoothing,
        }
    }
}

#[derive(Serialize)]
struct EmCase {
    pred: String,
    refs: Vec<String>,
}

/// One classification corpus: `gold[i]` is the label of row `i`, `pred[i]` the prediction.
#[derive(Serialize)]
struct MacroF1Case {
    gold: Vec<String>,
    pred: Vec<String>,
}

#[derive(Serialize)]
struct KendallCase {
    /// f64 bit patterns (so ±inf and -0.0 survive JSON)
    x: Vec<u64>,
    y: Vec<u64>,
}

#[derive(Deserialize)]
struct Output {
    versions: serde_json::Value,
    chrf: Vec<ChrfOut>,
    em: Vec<EmOut>,
    kendall: Vec<KendallOut>,
    /// f64 bit patterns of `f1_score(gold, pred, average="macro")`.
    macro_f1: Vec<u64>,
    unicode: Option<UnicodeOut>,
}

#[derive(Deserialize)]
struct ChrfOut {
    corpus: u64,
    sentences: Vec<u64>,
    signature: String,
}

#[derive(Deserialize)]
struct EmOut {
    norm_pred: String,
    norm_refs: Vec<String>,
    squad: bool,
    raw: bool,
}

#[derive(Deserialize)]
struct KendallOut {
    tau: u64,
    p: u64,
}

#[derive(Deserialize)]
struct UnicodeOut {
    unidata_version: String,
    python: String,
    space: Vec<u32>,
    word: Vec<(u32, u32)>,
    cased: Vec<(u32, u32)>,
    case_ignorable: Vec<(u32, u32)>,
    lower: Vec<(u32, String)>,
}

// ---------------------------------------------------------------------------------------------
// generators
// ---------------------------------------------------------------------------------------------

struct Gen {
    rng: StdRng,
}

const ASCII_WORDS: &[&str] = &[
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "a",
    "an",
    "The",
    "Cat",
    "dog",
    "run",
    "running",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "Hello",
    "world",
    "it's",
    "don't",
    "U.S.",
    "e-mail",
    "3.14",
    "42",
    "(hi)",
    "hi",
    "there",
    "friend",
    "New",
    "York",
    "co-operate",
    "O'Neil",
    "#tag",
    "@user",
    "C++",
    "rock'n'roll",
    "...",
    "!",
    "?",
    "-",
    "x",
    "I",
    "model",
    "prompt",
    "answer",
    "question",
    "THE",
    "aN",
];
const PUNCT: &[&str] = &[
    "!", "\"", "#", "$", "%", "&", "'", "(", ")", "*", "+", ",", "-", ".", "/", ":", ";", "<", "=",
    ">", "?", "@", "[", "\\", "]", "^", "_", "`", "{", "|", "}", "~", "。", "、", "«", "»", "—",
    "¿",
];
const JAPANESE: &[&str] = &[
    "東京",
    "は",
    "日本",
    "の",
    "首都",
    "です",
    "。",
    "、",
    "カタカナ",
    "ひらがな",
    "漢字",
    "「引用」",
    "東京タワー",
    "ｔｈｅ",
    "１２３",
    "ｶﾀｶﾅ",
    "私は学生です。",
];
const EMOJI: &[&str] =
    &["😀", "👍", "👍🏽", "🇯🇵", "👨\u{200d}👩\u{200d}👧", "❤\u{fe0f}", "🎉", "🙂🙃", "🤖!", "(😀)"];
const MIXED: &[&str] = &[
    "ΟΔΥΣΣΕΥΣ",
    "Σοφία",
    "ΣΑΣ",
    "Σ.",
    "Привет",
    "мир",
    "مرحبا",
    "नमस्ते",
    "İstanbul",
    "Straße",
    "ǅemal",
    "e\u{301}",
    "thé",
    "the\u{301}",
    "Ⓐ",
    "²",
    "½",
    "٣",
    "ﬁ",
    "Ω",
    "\u{212a}",
    "ǈ",
    "ᾼ",
    "ΐ",
    "ß",
    "Ǆ",
    "\u{345}",
    "Ꭰ",
    // case pairs added after Unicode 14 (CPython 3.11 leaves them alone, Rust's own
    // `to_lowercase` would not): they pin the port to the reference interpreter's tables
    "\u{A7CB}",
    "X\u{10D50}Y",
];
/// separators: Python whitespace of many kinds, plus two characters that are NOT Python
/// whitespace (U+200B, U+FEFF) and therefore glue words together
const SEPS: &[&str] = &[
    " ",
    " ",
    " ",
    " ",
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "\u{3000}",
    "\u{a0}",
    "\u{2009}",
    "\u{1c}",
    "\u{1f}",
    "\u{85}",
    "\u{2028}",
    "\u{200b}",
    "\u{feff}",
    "\r\n",
    " \u{180e} ",
];
const WS_ONLY: &[&str] =
    &[" ", "\t", "  \n ", "\u{3000}", "\u{1c}\u{1d}", "\u{a0}\u{2009}", "\u{85}"];

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen { rng: StdRng::seed_from_u64(seed) }
    }
    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }
    fn range(&mut self, lo: usize, hi_incl: usize) -> usize {
        self.rng.random_range(lo..=hi_incl)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    fn word(&mut self, style: usize) -> String {
        let pool = match style {
            0 => ASCII_WORDS,
            1 => {
                if self.chance(0.8) {
                    JAPANESE
                } else {
                    ASCII_WORDS
                }
            }
            2 => {
                if self.chance(0.5) {
                    EMOJI
                } else {
                    ASCII_WORDS
                }
            }
            _ => [ASCII_WORDS, JAPANESE, EMOJI, MIXED][self.below(4)],
        };
        let mut w = self.pick(pool).to_string();
        if self.chance(0.15) {
            w = format!("{}{w}", self.pick(PUNCT));
        }
        if self.chance(0.2) {
            w.push_str(self.pick(PUNCT));
        }
        w
    }

    fn sentence_from_words(&mut self, words: &[String]) -> String {
        let mut s = String::new();
        if self.chance(0.1) {
            s.push_str(self.pick(SEPS));
        }
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                s.push_str(if self.chance(0.85) { " " } else { self.pick(SEPS) });
            }
            s.push_str(w);
        }
        if self.chance(0.1) {
            s.push_str(self.pick(SEPS));
        }
        s
    }

    fn words(&mut self, style: usize) -> Vec<String> {
        let n = self.range(0, 14);
        (0..n).map(|_| self.word(style)).collect()
    }

    /// A perturbed copy of `words`.
    fn perturb(&mut self, words: &[String], style: usize) -> Vec<String> {
        let mut w = words.to_vec();
        let ops = self.range(0, 4);
        for _ in 0..ops {
            match self.below(6) {
                0 if !w.is_empty() => {
                    let i = self.below(w.len());
                    w.remove(i);
                }
                1 => {
                    let i = self.below(w.len() + 1);
                    let nw = self.word(style);
                    w.insert(i, nw);
                }
                2 if w.len() > 1 => {
                    let i = self.below(w.len() - 1);
                    w.swap(i, i + 1);
                }
                3 if !w.is_empty() => {
                    let i = self.below(w.len());
                    w[i] = if self.chance(0.5) { w[i].to_uppercase() } else { w[i].to_lowercase() };
                }
                4 if !w.is_empty() => {
                    let i = self.below(w.len());
                    w[i].push_str(self.pick(PUNCT));
                }
                _ if !w.is_empty() => {
                    let i = self.below(w.len());
                    w[i] = self.word(style);
                }
                _ => {}
            }
        }
        w
    }

    fn special_or(&mut self, s: String) -> String {
        match self.below(40) {
            0 => String::new(),
            1 => self.pick(WS_ONLY).to_string(),
            _ => s,
        }
    }

    fn chrf_case(&mut self, idx: usize) -> ChrfCase {
        let config = if idx % 4 == 3 {
            PyChrfConfig {
                char_order: self.range(1, 8),
                word_order: self.range(0, 3),
                beta: self.range(1, 3) as u32,
                lowercase: self.chance(0.5),
                whitespace: self.chance(0.3),
                eps_smoothing: self.chance(0.3),
            }
        } else {
            PyChrfConfig {
                char_order: 6,
                word_order: 2,
                beta: 2,
                lowercase: false,
                whitespace: false,
                eps_smoothing: false,
            }
        };
        let style = self.below(4);
        let n = if self.chance(0.12) { 1 } else { self.range(2, 20) };
        let variable = self.chance(0.3);
        let fixed_k = self.range(1, 4);
        let identical = self.chance(0.08);
        let mut hyps = Vec::with_capacity(n);
        let mut refs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = if variable { self.range(1, 4) } else { fixed_k };
            let base = self.words(style);
            let mut rs: Vec<String> = (0..k)
                .map(|j| {
                    let w = if j == 0 { base.clone() } else { self.perturb(&base, style) };
                    let s = self.sentence_from_words(&w);
                    self.special_or(s)
                })
                .collect();
            if self.chance(0.2) {
                self.shuffle(&mut rs);
            }
            let hyp = if identical || self.chance(0.05) {
                rs[self.below(rs.len())].clone()
            } else if self.chance(0.1) {
                let w = self.words(style);
                self.sentence_from_words(&w)
            } else {
                let w = self.perturb(&base, style);
                self.sentence_from_words(&w)
            };
            hyps.push(self.special_or(hyp));
            refs.push(rs);
        }
        ChrfCase { config, hyps, refs }
    }

    fn squad_answer(&mut self) -> String {
        const CORE: &[&str] = &[
            "Eiffel Tower",
            "1889",
            "Paris, France",
            "apple a day",
            "Theory of relativity",
            "U.S.A.",
            "it's",
            "the_cat",
            "ΟΔΥΣΣΕΥΣ",
            "İstanbul",
            "Straße",
            "東京タワー",
            "²the",
            "an\u{200b}x",
            "the\u{1c}end",
            "Ⓐ the",
            "thé",
            "the\u{301}",
            "a-b",
            "—the—",
            "«the»",
            "『the』",
            "(the)",
            "Anne",
            "Thea",
            "then",
            "other",
            "ａ",
            "the2",
            "A.D. 1066",
            "an/a",
            "THE END",
            "Σ",
            "ǅ",
            "ﬁne",
            "the\u{a0}end",
            "naïve",
            "naı\u{308}ve",
            "42%",
            "$3.50",
            "New York City",
            "e.g.",
            "x'the'y",
            "the-the",
            "an\u{300}",
            "\u{A7CB}the",
            "ΘΕΣ\u{A7CB}",
        ];
        const ARTICLES: &[&str] = &["the", "The", "THE", "a", "A", "an", "An", "AN", "tHe"];
        let mut words: Vec<String> = Vec::new();
        let n = self.range(1, 3);
        for _ in 0..n {
            if self.chance(0.3) {
                words.push(self.pick(ARTICLES).to_string());
            }
            words.push(self.pick(CORE).to_string());
        }
        let mut s = String::new();
        if self.chance(0.1) {
            s.push_str(self.pick(SEPS));
        }
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                s.push_str(if self.chance(0.8) { " " } else { self.pick(SEPS) });
            }
            s.push_str(w);
        }
        if self.chance(0.2) {
            s.push_str(self.pick(PUNCT));
        }
        if self.chance(0.05) {
            s = self.pick(WS_ONLY).to_string();
        }
        if self.chance(0.03) {
            s.clear();
        }
        s
    }

    fn em_case(&mut self) -> EmCase {
        let k = self.range(0, 4);
        let refs: Vec<String> = (0..k).map(|_| self.squad_answer()).collect();
        let pred = if !refs.is_empty() && self.chance(0.6) {
            let r = refs[self.below(refs.len())].clone();
            match self.below(6) {
                0 => r,
                1 => r.to_uppercase(),
                2 => format!("the {r}"),
                3 => format!("{r}."),
                4 => format!("  {}  ", r.replace(' ', "\t")),
                _ => format!("A {}!", r.to_lowercase()),
            }
        } else {
            self.squad_answer()
        };
        EmCase { pred, refs }
    }

    /// A classification corpus: mostly right, some wrong, sometimes a label that is never gold,
    /// a case variant of a gold label, or one constant answer for every row.
    fn macro_f1_case(&mut self, idx: usize) -> MacroF1Case {
        const LABELS: &[&str] = &[
            "positive",
            "negative",
            "neutral",
            "Positive",
            "yes",
            "no",
            "A",
            "B",
            "C",
            "D",
            "négatif",
            "東京",
            "",
            " positive",
            "N/A",
            "entailment",
        ];
        let n = if idx.is_multiple_of(50) { 1 } else { self.range(1, 80) };
        let k = self.range(1, 8);
        let mut classes: Vec<&str> = LABELS.to_vec();
        self.shuffle(&mut classes);
        let (classes, others) = classes.split_at(k);
        let gold: Vec<String> = (0..n).map(|_| self.pick(classes).to_string()).collect();
        let constant = self.chance(0.15).then(|| self.pick(classes).to_string());
        let accuracy = self.rng.random::<f64>();
        let pred = gold
            .iter()
            .map(|g| match &constant {
                Some(c) => c.clone(),
                None if self.chance(accuracy) => g.clone(),
                None if self.chance(0.2) => self.pick(others).to_string(),
                None => self.pick(classes).to_string(),
            })
            .collect();
        MacroF1Case { gold, pred }
    }

    /// A permutation of 0..n with exactly `k` inversions (random Lehmer code).
    fn perm_with_inversions(&mut self, n: usize, mut k: usize) -> Vec<f64> {
        let mut code = vec![0usize; n];
        for (i, d) in code.iter_mut().enumerate() {
            // position i can hold up to n-1-i inversions; the later positions up to cap_rest
            let cap_here = n - 1 - i;
            let cap_rest: usize = (i + 1..n).map(|j| n - 1 - j).sum();
            let lo = k.saturating_sub(cap_rest);
            let hi = cap_here.min(k);
            *d = if lo >= hi { lo } else { self.range(lo, hi) };
            k -= *d;
        }
        let mut avail: Vec<usize> = (0..n).collect();
        code.iter().map(|&d| avail.remove(d) as f64).collect()
    }

    fn kendall_cases(&mut self) -> Vec<(Vec<f64>, Vec<f64>)> {
        let mut out: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
        let iota = |n: usize| (0..n).map(|i| i as f64).collect::<Vec<f64>>();
        // degenerate sizes and constant inputs (NaN results)
        out.push((vec![], vec![]));
        out.push((vec![1.0], vec![2.0]));
        out.push((vec![3.0, 3.0], vec![1.0, 2.0]));
        out.push((vec![1.0, 2.0], vec![5.0, 5.0]));
        out.push((vec![0.0, -0.0, 0.0], vec![1.0, 2.0, 3.0]));
        out.push((vec![7.0; 40], iota(40)));
        // closed-form exact branches: 0 or 1 inversion (or their mirror), any n
        for &n in &[2usize, 3, 5, 20, 34, 45, 60, 100, 169, 170, 171, 172, 173, 200] {
            let x = iota(n);
            out.push((x.clone(), iota(n))); // dis = 0
            let mut y1 = iota(n);
            y1.swap(0, 1); // dis = 1
            out.push((x.clone(), y1.clone()));
            y1.reverse(); // dis = tot - 1
            out.push((x.clone(), y1));
            let mut rev = iota(n);
            rev.reverse(); // dis = tot
            out.push((x.clone(), rev));
            let mut mid = iota(n);
            mid.swap(n / 2 - 1, n / 2);
            out.push((mid, x));
        }
        // 4c == n(n-1) (tau exactly 0, exact p = 1) and c = 2 near the edges
        for &n in &[4usize, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29, 32, 33] {
            let half = n * (n - 1) / 4;
            out.push((iota(n), self.perm_with_inversions(n, half)));
            out.push((iota(n), self.perm_with_inversions(n, 2)));
            out.push((iota(n), self.perm_with_inversions(n, n * (n - 1) / 2 - 2)));
        }
        // min(dis, tot - dis) <= 1 with n > 33 and the asymptotic neighbour c = 2
        for &n in &[34usize, 40, 60] {
            out.push((iota(n), self.perm_with_inversions(n, 1)));
            out.push((iota(n), self.perm_with_inversions(n, 2)));
            out.push((iota(n), self.perm_with_inversions(n, n * (n - 1) / 2 - 1)));
        }
        // random cases
        for i in 0..N_KENDALL_RANDOM {
            let n = self.range(2, 60);
            let (x, y) = match i % 6 {
                // permutations without ties (exact for n <= 33, asymptotic above)
                0 | 1 => {
                    let mut y = iota(n);
                    self.shuffle(&mut y);
                    let mut x = iota(n);
                    if self.chance(0.5) {
                        self.shuffle(&mut x);
                    }
                    (x, y)
                }
                // integer ratings with ties in both
                2 => {
                    let kx = self.range(2, 7);
                    let ky = self.range(2, 7);
                    let x = (0..n).map(|_| self.below(kx) as f64).collect();
                    let y = (0..n).map(|_| self.below(ky) as f64).collect();
                    (x, y)
                }
                // ties in one variable only
                3 => {
                    let k = self.range(2, n.max(2));
                    let x = (0..n).map(|_| self.below(k) as f64).collect();
                    let mut y = iota(n);
                    self.shuffle(&mut y);
                    if self.chance(0.5) {
                        (y, x)
                    } else {
                        (x, y)
                    }
                }
                // real-valued scores, correlated, with occasional duplicates, ±0 and ±inf
                4 => {
                    let mut x: Vec<f64> =
                        (0..n).map(|_| self.rng.random::<f64>() * 2.0 - 1.0).collect();
                    let mut y: Vec<f64> =
                        x.iter().map(|v| v + 0.7 * (self.rng.random::<f64>() - 0.5)).collect();
                    for v in x.iter_mut().chain(y.iter_mut()) {
                        match self.below(25) {
                            0 => *v = 0.0,
                            1 => *v = -0.0,
                            2 => *v = f64::INFINITY,
                            3 => *v = f64::NEG_INFINITY,
                            4 => *v = (*v * 4.0).round() / 4.0,
                            _ => {}
                        }
                    }
                    (x, y)
                }
                // near-constant: one variable has just two values, one of them rare
                _ => {
                    let mut x = vec![1.0; n];
                    let flips = self.range(0, 2.min(n - 1));
                    for _ in 0..flips {
                        let i = self.below(n);
                        x[i] = 2.0;
                    }
                    let y = (0..n).map(|_| self.below(5) as f64).collect();
                    (x, y)
                }
            };
            out.push((x, y));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Python runner
// ---------------------------------------------------------------------------------------------

const HOW_TO_FIX: &str =
    "run `bash scripts/test.sh` (it creates .venv with sacrebleu==2.6.0, scipy==1.17.1 and \
     scikit-learn==1.9.1), or point P2M_PYTHON at a Python that has exactly those versions";

fn python_interpreter() -> PathBuf {
    match std::env::var_os("P2M_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv").join("bin").join("python"),
    }
}

fn run_reference(input: &Input) -> Output {
    let python = python_interpreter();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/metrics_reference.py");
    assert!(script.is_file(), "reference script missing: {}", script.display());
    if !python.exists() {
        panic!(
            "metrics_differential: the Python reference interpreter {} does not exist.\n\
             This test compares the Rust metrics against sacrebleu/scipy and cannot pass without them: {HOW_TO_FIX}.",
            python.display()
        );
    }
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("p2m-metrics-diff-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let in_path = dir.join("in.json");
    let out_path = dir.join("out.json");
    std::fs::write(&in_path, serde_json::to_vec(input).unwrap()).unwrap();
    let res = Command::new(&python).arg(&script).arg(&in_path).arg(&out_path).output();
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            panic!("metrics_differential: cannot run {}: {e}.\n{HOW_TO_FIX}.", python.display())
        }
    };
    if !res.status.success() {
        panic!(
            "metrics_differential: the Python reference failed ({}).\nstderr:\n{}\n{HOW_TO_FIX}.",
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
    }
    let out: Output =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).expect("reference output JSON");
    if std::env::var_os("P2M_DIFF_KEEP").is_some() {
        eprintln!("metrics_differential: kept {} and {}", in_path.display(), out_path.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// comparison helpers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    compared: usize,
    bit_identical: usize,
    /// largest |ours - reference| among finite, non-identical values
    max_abs_diff: f64,
    failures: Vec<String>,
}

impl Tally {
    fn float(&mut self, what: impl FnOnce() -> String, ours: f64, reference: f64, tol: f64) {
        self.compared += 1;
        if ours.to_bits() == reference.to_bits() || (ours.is_nan() && reference.is_nan()) {
            self.bit_identical += 1;
            return;
        }
        let ok = !ours.is_nan()
            && !reference.is_nan()
            && (ours == reference || (ours - reference).abs() <= tol);
        if ok && ours != reference {
            self.max_abs_diff = self.max_abs_diff.max((ours - reference).abs());
        }
        if !ok {
            self.failures.push(format!("{}: ours {ours:?} vs reference {reference:?}", what()));
        }
    }
    fn exact<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: impl FnOnce() -> String,
        ours: T,
        reference: T,
    ) {
        self.compared += 1;
        if ours == reference {
            self.bit_identical += 1;
        } else {
            self.failures.push(format!("{}: ours {ours:?} vs reference {reference:?}", what()));
        }
    }
}

fn in_ranges(r: &[(u32, u32)], c: u32) -> bool {
    let i = r.partition_point(|&(_, hi)| hi < c);
    i < r.len() && r[i].0 <= c
}

/// Code points compared with the interpreter. Release builds (what `scripts/test.sh` runs) check
/// all of them; debug builds, where the check is slow, check planes 0–3 and 14, which hold every
/// code point assigned in Unicode 14 (planes 4–13 are unassigned, 15–16 private use) — and
/// assert that the interpreter's tables have nothing outside that area.
#[allow(clippy::single_range_in_vec_init)] // a list of ranges, which has one element in release
fn code_points_to_check() -> Vec<std::ops::Range<u32>> {
    if cfg!(debug_assertions) {
        vec![0..0x4_0000, 0xE_0000..0xF_0000]
    } else {
        vec![0..0x11_0000]
    }
}

/// Why the `pystr` tables cannot be compared with the reference output, if they cannot: the
/// section is missing (the test always requests it) or comes from another Unicode version. Either
/// is a test failure, never a skip.
fn unicode_problem(u: Option<&UnicodeOut>) -> Option<String> {
    let python = python_interpreter();
    let Some(u) = u else {
        return Some(format!(
            "pystr tables NOT CHECKED: the reference output has no `unicode` section although the \
             test requested it (`unicode_tables: true`); tests/reference/metrics_reference.py, run \
             by {}, must write one.",
            python.display()
        ));
    };
    (u.unidata_version != pystr::UNIDATA_VERSION).then(|| {
        format!(
            "pystr tables NOT CHECKED: the reference interpreter {} (Python {}) has \
             unicodedata.unidata_version {}, but crates/metrics/src/pystr_tables.rs was generated from \
             Unicode {} (pystr::UNIDATA_VERSION).\n\
             Either run the test with a Python whose Unicode version is {} (set P2M_PYTHON to it, or \
             recreate .venv from it: `rm -rf .venv && bash scripts/setup.sh --python` builds .venv \
             from the `python3` on PATH and prints its Unicode version), or, to move the tables to \
             Unicode {}, regenerate them with that interpreter:\n\
             \x20   {} tests/reference/metrics_reference.py --rust-tables\n\
             and put its output into crates/metrics/src/pystr_tables.rs (below the module doc comment).",
            python.display(),
            u.python,
            u.unidata_version,
            pystr::UNIDATA_VERSION,
            pystr::UNIDATA_VERSION,
            u.unidata_version,
            python.display(),
        )
    })
}

/// Compare `evaluator::pystr` with the interpreter code point by code point (the Unicode versions
/// agree: see [`unicode_problem`]).
fn check_unicode(u: &UnicodeOut, t: &mut Tally) -> String {
    assert_eq!(u.unidata_version, pystr::UNIDATA_VERSION);
    let areas = code_points_to_check();
    let covered = |c: u32| areas.iter().any(|r| r.contains(&c));
    let ranges_inside = [&u.word, &u.cased, &u.case_ignorable]
        .iter()
        .all(|rs| rs.iter().all(|&(a, b)| covered(a) && covered(b)));
    let points_inside = u.space.iter().chain(u.lower.iter().map(|(c, _)| c)).all(|&c| covered(c));
    assert!(
        ranges_inside && points_inside,
        "the interpreter's Unicode tables reach outside the checked area"
    );

    let lower: std::collections::HashMap<u32, &str> =
        u.lower.iter().map(|(c, s)| (*c, s.as_str())).collect();
    let mut n = 0usize;
    let mut buf = String::new();
    for cp in areas.into_iter().flatten() {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        n += 1;
        let checks = [
            ("isspace", pystr::is_space(c), u.space.binary_search(&cp).is_ok()),
            ("\\w", pystr::is_word(c), in_ranges(&u.word, cp)),
            ("cased", pystr::is_cased(c), in_ranges(&u.cased, cp)),
            ("case_ignorable", pystr::is_case_ignorable(c), in_ranges(&u.case_ignorable, cp)),
        ];
        for (name, ours, py) in checks {
            if ours != py {
                t.failures.push(format!("pystr {name}(U+{cp:04X}): ours {ours} vs Python {py}"));
            }
        }
        buf.clear();
        pystr::lower_char(c, &mut buf);
        let same = match lower.get(&cp) {
            Some(want) => buf == *want,
            None => buf.len() == c.len_utf8() && buf.starts_with(c),
        };
        if !same {
            t.failures.push(format!(
                "pystr lower(U+{cp:04X}): ours {buf:?} vs Python {:?}",
                lower.get(&cp)
            ));
        }
    }
    t.compared += n;
    format!(
        "{n} code points{} x 5 properties identical (Python {}, Unicode {})",
        if cfg!(debug_assertions) { " (planes 0-3, 14: debug build)" } else { "" },
        u.python,
        u.unidata_version
    )
}

// ---------------------------------------------------------------------------------------------
// the test
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_match_python_references() {
    let seed: u64 =
        std::env::var("P2M_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_2023);
    let mut g = Gen::new(seed);
    let chrf_cases: Vec<ChrfCase> = (0..N_CHRF_CORPORA).map(|i| g.chrf_case(i)).collect();
    let em_cases: Vec<EmCase> = (0..N_EM_CASES).map(|_| g.em_case()).collect();
    let kendall_cases = g.kendall_cases();
    let macro_f1_cases: Vec<MacroF1Case> =
        (0..N_MACRO_F1_CORPORA).map(|i| g.macro_f1_case(i)).collect();
    let input = Input {
        chrf: chrf_cases.clone(),
        em: em_cases,
        kendall: kendall_cases
            .iter()
            .map(|(x, y)| KendallCase {
                x: x.iter().map(|v| v.to_bits()).collect(),
                y: y.iter().map(|v| v.to_bits()).collect(),
            })
            .collect(),
        macro_f1: macro_f1_cases,
        // Always requested: a missing `unicode` section in the output is a failure.
        unicode_tables: true,
    };
    let t_python = std::time::Instant::now();
    let out = run_reference(&input);
    let t_python = t_python.elapsed();
    let t_rust = std::time::Instant::now();
    assert_eq!(out.chrf.len(), input.chrf.len());
    assert_eq!(out.em.len(), input.em.len());
    assert_eq!(out.kendall.len(), input.kendall.len());
    assert_eq!(out.macro_f1.len(), input.macro_f1.len());

    // ---- chrF ---------------------------------------------------------------------------------
    let mut corpus = Tally::default();
    let mut sentence = Tally::default();
    let mut sig = Tally::default();
    for (i, (case, r)) in input.chrf.iter().zip(&out.chrf).enumerate() {
        let cfg = case.config.to_rust();
        let ours = chrf::corpus_chrf(&case.hyps, &case.refs, &cfg).expect("valid corpus");
        corpus.float(
            || format!("chrF corpus #{i} ({cfg:?})"),
            ours,
            f64::from_bits(r.corpus),
            1e-9,
        );
        assert_eq!(r.sentences.len(), case.hyps.len());
        for (j, (h, rs)) in case.hyps.iter().zip(&case.refs).enumerate() {
            let ours = chrf::sentence_chrf(h, rs, &cfg);
            sentence.float(
                || format!("chrF sentence #{i}.{j} hyp {h:?} refs {rs:?}"),
                ours,
                f64::from_bits(r.sentences[j]),
                1e-9,
            );
        }
        // signature: ours is `{name}|{sacrebleu fields}|impl:..|ref:..`, sacrebleu's ends in `|version:..`
        let ours_sig = cfg.signature(chrf::nrefs_label(&case.refs));
        let core = ours_sig
            .split_once('|')
            .map(|x| x.1)
            .unwrap_or("")
            .split("|impl:")
            .next()
            .unwrap()
            .to_string();
        let theirs =
            r.signature.rsplit_once("|version:").map(|x| x.0).unwrap_or(&r.signature).to_string();
        sig.exact(|| format!("chrF signature #{i}"), core, theirs);
    }

    // ---- exact match --------------------------------------------------------------------------
    let mut em = Tally::default();
    let mut em_hits = (0usize, 0usize);
    let mut em_rows: (Vec<&str>, Vec<&Vec<String>>) = (Vec::new(), Vec::new());
    for (i, (case, r)) in input.em.iter().zip(&out.em).enumerate() {
        em.exact(
            || format!("SQuAD normalize #{i} {:?}", case.pred),
            exact_match::normalize_squad_answer(&case.pred),
            r.norm_pred.clone(),
        );
        for (rf, want) in case.refs.iter().zip(&r.norm_refs) {
            em.exact(
                || format!("SQuAD normalize #{i} ref {rf:?}"),
                exact_match::normalize_squad_answer(rf),
                want.clone(),
            );
        }
        em.exact(
            || format!("EM squad #{i} {:?} vs {:?}", case.pred, case.refs),
            exact_match::exact_match(&case.pred, &case.refs, EmNormalization::Squad),
            r.squad,
        );
        em.exact(
            || format!("EM raw #{i} {:?} vs {:?}", case.pred, case.refs),
            exact_match::exact_match(&case.pred, &case.refs, EmNormalization::Raw),
            r.raw,
        );
        if !case.refs.is_empty() {
            em_hits.0 += r.squad as usize;
            em_hits.1 += 1;
            em_rows.0.push(&case.pred);
            em_rows.1.push(&case.refs);
        }
    }
    let corpus_em =
        exact_match::corpus_exact_match(&em_rows.0, &em_rows.1, EmNormalization::Squad).unwrap();
    em.exact(|| "corpus SQuAD EM".into(), corpus_em, em_hits.0 as f64 / em_hits.1 as f64);

    // ---- Kendall ------------------------------------------------------------------------------
    let mut kt = Tally::default();
    let mut methods = [0usize; 3];
    for (i, ((x, y), r)) in kendall_cases.iter().zip(&out.kendall).enumerate() {
        let ours = kendall::kendall_tau_b(x, y).expect("no NaN inputs");
        methods[match ours.method {
            KendallMethod::Exact => 0,
            KendallMethod::Asymptotic => 1,
            KendallMethod::Undefined => 2,
        }] += 1;
        let desc = || format!("n={} x={x:?} y={y:?}", x.len());
        kt.float(|| format!("Kendall tau #{i} {}", desc()), ours.tau, f64::from_bits(r.tau), 1e-12);
        kt.float(|| format!("Kendall p #{i} {}", desc()), ours.p_value, f64::from_bits(r.p), 1e-12);
    }

    // ---- macro-F1 -----------------------------------------------------------------------------
    let mut mf = Tally::default();
    for (i, (case, r)) in input.macro_f1.iter().zip(&out.macro_f1).enumerate() {
        let refs: Vec<[&str; 1]> = case.gold.iter().map(|g| [g.as_str()]).collect();
        let ours = macro_f1::corpus_macro_f1(&case.pred, &refs).expect("a valid corpus");
        mf.float(
            || format!("macro-F1 #{i} gold {:?} pred {:?}", case.gold, case.pred),
            ours,
            f64::from_bits(*r),
            1e-12,
        );
    }

    // ---- Python str tables ----------------------------------------------------------------------
    let mut uni = Tally::default();
    let uni_problem = unicode_problem(out.unicode.as_ref());
    let uni_msg = match (&out.unicode, &uni_problem) {
        (Some(u), None) => check_unicode(u, &mut uni),
        _ => "FAILED: not compared (see the message below)".into(),
    };

    let t_rust = t_rust.elapsed();
    println!(
        "metrics_differential (seed {seed:#x}, reference {}; python {:.1}s, rust {:.1}s):\n\
         \x20 chrF: {} corpora ({} bit-identical), {} sentences ({} bit-identical), {} signatures\n\
         \x20 EM:   {} comparisons over {} SQuAD-style cases (normalised strings, squad EM, raw EM, corpus EM)\n\
         \x20 Kendall: {} cases, {} tau+p values ({} bit-identical, max |diff| {:e}); methods exact/asymptotic/undefined = {:?}\n\
         \x20 macro-F1: {} corpora ({} bit-identical, max |diff| {:e})\n\
         \x20 pystr tables: {uni_msg}",
        out.versions,
        t_python.as_secs_f64(),
        t_rust.as_secs_f64(),
        corpus.compared,
        corpus.bit_identical,
        sentence.compared,
        sentence.bit_identical,
        sig.compared,
        em.compared,
        input.em.len(),
        kendall_cases.len(),
        kt.compared,
        kt.bit_identical,
        kt.max_abs_diff,
        methods,
        mf.compared,
        mf.bit_identical,
        mf.max_abs_diff,
    );

    let failures: Vec<&String> =
        [&corpus, &sentence, &sig, &em, &kt, &mf, &uni].iter().flat_map(|t| &t.failures).collect();
    let mut problems: Vec<String> = Vec::new();
    if !failures.is_empty() {
        for f in failures.iter().take(25) {
            eprintln!("MISMATCH {f}");
        }
        problems.push(format!(
            "{} mismatches against the Python references (first 25 above)",
            failures.len()
        ));
    }
    problems.extend(uni_problem);
    if !problems.is_empty() {
        panic!("{}", problems.join("\n\n"));
    }
}

/// The checks around the table comparison fail rather than skip: another Unicode version, or no
/// `unicode` section at all. (No Python needed.)
#[test]
fn unicode_table_check_cannot_be_skipped() {
    let other = UnicodeOut {
        unidata_version: "99.0.0".into(),
        python: "3.99.0".into(),
        space: vec![],
        word: vec![],
        cased: vec![],
        case_ignorable: vec![],
        lower: vec![],
    };
    let msg = unicode_problem(Some(&other)).expect("another Unicode version is a failure");
    assert!(
        msg.contains("99.0.0")
            && msg.contains(pystr::UNIDATA_VERSION)
            && msg.contains("tests/reference/metrics_reference.py --rust-tables")
            && msg.contains("crates/metrics/src/pystr_tables.rs"),
        "{msg}"
    );
    let missing = unicode_problem(None).expect("a missing section is a failure");
    assert!(missing.contains("no `unicode` section"), "{missing}");
    let same = UnicodeOut { unidata_version: pystr::UNIDATA_VERSION.into(), ..other };
    assert_eq!(unicode_problem(Some(&same)), None);
}

//! Exact match (EM) for question answering, in the two flavours the harness needs.
//!
//! * [`EmNormalization::Raw`]: plain string equality `prediction == reference`. This is what the
//!   Python Prompt2Model reference evaluator does, and it is the default we report for table
//!   reproduction.
//! * [`EmNormalization::Squad`]: the normalisation of the *official* SQuAD v1.1 evaluation script
//!   (`evaluate-v1.1.py`, `normalize_answer`), which is what "SQuAD EM" means in the literature:
//!
//!   ```python
//!   def normalize_answer(s):
//!       def remove_articles(text): return re.sub(r'\b(a|an|the)\b', ' ', text)
//!       def white_space_fix(text): return ' '.join(text.split())
//!       def remove_punc(text):     return ''.join(ch for ch in text if ch not in set(string.punctuation))
//!       def lower(text):           return text.lower()
//!       return white_space_fix(remove_articles(remove_punc(lower(s))))
//!   ```
//!
//! The Rust port must agree with that script on *every* input, not just on ASCII, because model
//! outputs contain arbitrary Unicode. Rust's `char::is_whitespace`, `char::is_alphanumeric` and
//! `str::to_lowercase` do **not** have Python's semantics (e.g. Python treats U+001C..U+001F as
//! whitespace, `re`'s `\w` is `str.isalnum()` — general categories L*/N* — and excludes combining
//! marks that Rust's `Alphabetic` includes, and the Unicode versions differ). The [`crate::pystr`] module
//! therefore embeds tables generated from CPython itself
//! (`python tests/reference/metrics_reference.py --rust-tables`), and
//! `tests/metrics_differential.rs` re-checks them exhaustively against the Python it runs.
//!
//! The regex is implemented without the `regex` crate: `\b(a|an|the)\b` can only match a
//! *maximal* run of `\w` characters (the `\b` on both sides forces non-word characters or the
//! string edge around it), and `re.sub` scans the original string left to right without
//! overlaps, so "replace every maximal word run equal to `a`, `an` or `the` by a space" is exactly
//! equivalent.

pub use crate::error::MetricError;
use crate::pystr;

/// Which string normalisation to apply before comparing prediction and reference.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EmNormalization {
    /// Byte-for-byte equality, no normalisation (Prompt2Model's Python evaluator).
    #[default]
    Raw,
    /// Official SQuAD v1.1 `normalize_answer` (lower-case, drop ASCII punctuation, drop the
    /// articles `a`/`an`/`the` as whole words, collapse whitespace).
    Squad,
}

impl EmNormalization {
    /// Short name used in signatures (`raw` / `squad`).
    pub fn as_str(self) -> &'static str {
        match self {
            EmNormalization::Raw => "raw",
            EmNormalization::Squad => "squad",
        }
    }
}

impl std::fmt::Display for EmNormalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The official SQuAD v1.1 `normalize_answer`, reproduced exactly (see the module docs).
///
/// The four steps are applied in the script's order: `lower` → `remove_punc` →
/// `remove_articles` → `white_space_fix`.
pub fn normalize_squad_answer(s: &str) -> String {
    // 1. text.lower()   (full Unicode lowering with Python's Final_Sigma rule)
    let lowered = pystr::lower(s);
    // 2. remove string.punctuation characters
    let no_punc: String = lowered.chars().filter(|&c| !pystr::is_punctuation(c)).collect();
    // 3. re.sub(r'\b(a|an|the)\b', ' ', text): replace maximal \w runs equal to an article.
    let mut no_art = String::with_capacity(no_punc.len());
    let mut rest = no_punc.as_str();
    while let Some(c) = rest.chars().next() {
        if pystr::is_word(c) {
            let end = rest
                .char_indices()
                .find(|&(_, c)| !pystr::is_word(c))
                .map_or(rest.len(), |(i, _)| i);
            let run = &rest[..end];
            if matches!(run, "a" | "an" | "the") {
                no_art.push(' ');
            } else {
                no_art.push_str(run);
            }
            rest = &rest[end..];
        } else {
            no_art.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    // 4. ' '.join(text.split())   (split on Python's Unicode whitespace)
    let mut out = String::with_capacity(no_art.len());
    for (i, w) in pystr::split(&no_art).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// Normalise `s` according to `norm` (borrowing when nothing needs to change).
pub fn normalize(s: &str, norm: EmNormalization) -> std::borrow::Cow<'_, str> {
    match norm {
        EmNormalization::Raw => std::borrow::Cow::Borrowed(s),
        EmNormalization::Squad => std::borrow::Cow::Owned(normalize_squad_answer(s)),
    }
}

/// Exact match of one prediction against several references: the maximum over references
/// (`metric_max_over_ground_truths` in the SQuAD script). Returns `false` when there are no
/// references (the SQuAD script would crash on `max([])`; "no gold answer matches" is the only
/// sensible boolean).
pub fn exact_match<S: AsRef<str>>(
    prediction: &str,
    references: &[S],
    norm: EmNormalization,
) -> bool {
    if references.is_empty() {
        return false;
    }
    let p = normalize(prediction, norm);
    references.iter().any(|r| normalize(r.as_ref(), norm) == p)
}

/// Corpus exact match: the fraction (in `[0, 1]`, *not* percent) of predictions that match at
/// least one of their references. `references[i]` are the gold answers of `predictions[i]`.
///
/// Errors (never a silently wrong number): different lengths, an empty corpus, or a prediction
/// without any reference (the official script crashes on that too).
pub fn corpus_exact_match<P, R, S>(
    predictions: &[P],
    references: &[R],
    norm: EmNormalization,
) -> Result<f64, MetricError>
where
    P: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    MetricError::check_corpus("predictions", predictions.len(), references.len())?;
    let mut hits = 0usize;
    for (i, (p, r)) in predictions.iter().zip(references).enumerate() {
        let r = r.as_ref();
        if r.is_empty() {
            return Err(MetricError::NoReferences { index: i });
        }
        if exact_match(p.as_ref(), r, norm) {
            hits += 1;
        }
    }
    // Same operation as the SQuAD script's `exact_match / total` (before its `100.0 *`).
    Ok(hits as f64 / predictions.len() as f64)
}

/// Reproducibility signature, e.g. `em|norm:squad|impl:prompt2model-rs-0.1.0`.
///
/// It deliberately has no `nrefs` field: the number of gold answers is a property of the data,
/// not of the metric, and `evaluator::score` appends `|nrefs:N` (or `|nrefs:var`) itself. Use
/// [`signature_with_nrefs`] for a self-contained string.
pub fn signature(norm: EmNormalization) -> String {
    format!("em|norm:{}|impl:prompt2model-rs-{}", norm.as_str(), env!("CARGO_PKG_VERSION"))
}

/// [`signature`] followed by `|nrefs:{nrefs}` (pass a count or `"var"`).
pub fn signature_with_nrefs(norm: EmNormalization, nrefs: impl std::fmt::Display) -> String {
    format!("{}|nrefs:{nrefs}", signature(norm))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed with the official SQuAD v1.1 `normalize_answer` under
    /// CPython 3.11.7 (see `tests/reference/metrics_reference.py`).
    #[test]
    fn squad_normalisation_matches_python() {
        let cases: &[(&str, &str)] = &[
            ("The Eiffel Tower!", "eiffel tower"),
            ("an apple", "apple"),
            ("A", ""),
            ("the the", ""),
            ("Theory of a cat", "theory of cat"),
            ("U.S.A.", "usa"),
            ("it's", "its"),
            // '_' is string.punctuation, removed *before* the article regex runs
            ("the_cat", "thecat"),
            ("a-an-the", "aanthe"),
            // combining acute is not \w, so `the` is a whole word and goes away
            ("the\u{301} end", "\u{301} end"),
            ("th\u{e9} end", "th\u{e9} end"),
            // Final_Sigma context of str.lower()
            ("ΟΔΥΣΣΕΥΣ", "οδυσσευς"),
            ("ΟΔΥΣΣΕΥΣ.", "οδυσσευς"),
            ("Σ", "σ"),
            ("AΣ\u{301}b", "aσ\u{301}b"),
            ("İstanbul", "i\u{307}stanbul"),
            // '²' is a digit for str.isalnum, so `the` is not a whole word
            ("²the", "²the"),
            // U+200B is neither \w nor whitespace
            ("an\u{200b}x", "\u{200b}x"),
            // U+001C is Python whitespace (Rust disagrees)
            ("the\u{1c}end", "end"),
            // U+24B6 is So: not \w for Python (Rust's is_alphabetic says yes)
            ("Ⓐ the", "ⓐ"),
            ("  Hello,\tWORLD \u{3000} ", "hello world"),
            ("", ""),
            ("...", ""),
            ("ａ the ｔｈｅ", "ａ ｔｈｅ"),
            ("東京の the 塔", "東京の 塔"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_squad_answer(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn exact_match_raw_and_squad() {
        assert!(exact_match("Paris", &["London", "Paris"], EmNormalization::Raw));
        assert!(!exact_match("paris", &["Paris"], EmNormalization::Raw));
        assert!(exact_match("paris.", &["The Paris"], EmNormalization::Squad));
        assert!(!exact_match("x", &[] as &[&str], EmNormalization::Squad));
        // "" vs "the": both normalise to ""
        assert!(exact_match("", &["the"], EmNormalization::Squad));
    }

    #[test]
    fn corpus_exact_match_fraction_and_errors() {
        let preds = ["Paris", "the cat", "x"];
        let refs = vec![vec!["paris"], vec!["Cat", "dog"], vec!["y"]];
        assert_eq!(corpus_exact_match(&preds, &refs, EmNormalization::Squad).unwrap(), 2.0 / 3.0);
        assert_eq!(corpus_exact_match(&preds, &refs, EmNormalization::Raw).unwrap(), 0.0);
        assert!(matches!(
            corpus_exact_match(&preds[..2], &refs, EmNormalization::Raw),
            Err(MetricError::LengthMismatch { .. })
        ));
        let empty: [&str; 0] = [];
        let no_refs: Vec<Vec<&str>> = vec![];
        assert!(matches!(
            corpus_exact_match(&empty, &no_refs, EmNormalization::Raw),
            Err(MetricError::EmptyCorpus)
        ));
        assert!(matches!(
            corpus_exact_match(&["a"], &[Vec::<&str>::new()], EmNormalization::Raw),
            Err(MetricError::NoReferences { index: 0 })
        ));
    }

    #[test]
    fn python_str_semantics() {
        use pystr::*;
        for c in ['\u{1c}', '\u{1f}', '\u{85}', '\u{a0}', '\u{3000}', '\t'] {
            assert!(is_space(c), "{c:?}");
        }
        for c in ['\u{200b}', '\u{feff}', 'a', '\u{180e}'] {
            assert!(!is_space(c), "{c:?}");
        }
        assert_eq!(split(" a\u{1c}b\u{3000}\u{3000}c ").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(is_word('_') && is_word('²') && is_word('東') && is_word('٣'));
        assert!(!is_word('\u{301}') && !is_word('Ⓐ') && !is_word('-'));
        assert_eq!(lower("ΣΑΣ ΣΑΣ. Σ"), "σας σας. σ");
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            signature(EmNormalization::Squad),
            format!("em|norm:squad|impl:prompt2model-rs-{v}")
        );
        assert_eq!(
            signature_with_nrefs(EmNormalization::Raw, "var"),
            format!("em|norm:raw|impl:prompt2model-rs-{v}|nrefs:var")
        );
    }
}

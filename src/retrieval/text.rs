//! The text analyzer of the BM25 index.
//!
//! The Python reference builds its model index with retriv's `SparseRetriever` and its default
//! preprocessing: lowercasing, `&` → `and`, punctuation removal, whitespace tokenisation, NLTK's
//! English stop-word list and NLTK's Snowball English stemmer. This analyzer does the same steps in
//! that order (stop words are removed before stemming, as there); it differs in that it removes
//! *every* non-alphanumeric character (Unicode-aware) rather than retriv's ASCII punctuation set,
//! so `état` stays one token and `C++` becomes `c`, and in that it splits text in scripts written
//! without spaces (Chinese, Japanese, Korean) into character bigrams (retriv would keep a whole
//! Japanese sentence as one token, which matches nothing).
//!
//! [`ANALYZER_VERSION`] names this behaviour; on-disk indices record it and are rebuilt when it
//! changes.

use std::collections::HashSet;
use std::sync::OnceLock;

use rust_stemmers::{Algorithm, Stemmer};

/// Bumped whenever tokenisation, stop words or stemming change (invalidates cached indices).
pub const ANALYZER_VERSION: &str = "lower+amp+punct+cjk-bigrams+nltk-stop+snowball-en/2";

/// NLTK's English stop-word list (179 words), the list retriv's `stopwords="english"` loads.
pub const ENGLISH_STOP_WORDS: &[&str] = &[
    "i",
    "me",
    "my",
    "myself",
    "we",
    "our",
    "ours",
    "ourselves",
    "you",
    "you're",
    "you've",
    "you'll",
    "you'd",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "she's",
    "her",
    "hers",
    "herself",
    "it",
    "it's",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "what",
    "which",
    "who",
    "whom",
    "this",
    "that",
    "that'll",
    "these",
    "those",
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "a",
    "an",
    "the",
    "and",
    "but",
    "if",
    "or",
    "because",
    "as",
    "until",
    "while",
    "of",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "in",
    "out",
    "on",
    "off",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "all",
    "any",
    "both",
    "each",
    "few",
    "more",
    "most",
    "other",
    "some",
    "such",
    "no",
    "nor",
    "not",
    "only",
    "own",
    "same",
    "so",
    "than",
    "too",
    "very",
    "s",
    "t",
    "can",
    "will",
    "just",
    "don",
    "don't",
    "should",
    "should've",
    "now",
    "d",
    "ll",
    "m",
    "o",
    "re",
    "ve",
    "y",
    "ain",
    "aren",
    "aren't",
    "couldn",
    "couldn't",
    "didn",
    "didn't",
    "doesn",
    "doesn't",
    "hadn",
    "hadn't",
    "hasn",
    "hasn't",
    "haven",
    "haven't",
    "isn",
    "isn't",
    "ma",
    "mightn",
    "mightn't",
    "mustn",
    "mustn't",
    "needn",
    "needn't",
    "shan",
    "shan't",
    "shouldn",
    "shouldn't",
    "wasn",
    "wasn't",
    "weren",
    "weren't",
    "won",
    "won't",
    "wouldn",
    "wouldn't",
];

fn stop_words() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| ENGLISH_STOP_WORDS.iter().copied().collect())
}

/// Han, Hiragana, Katakana and Hangul: scripts written without spaces between words.
fn is_cjk(ch: char) -> bool {
    matches!(ch as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x20000..=0x2FA1F) // CJK extensions B–F, compatibility supplement
}

/// Lowercase, `&` → `and`, every character that is neither a letter nor a digit separates
/// words. Runs of CJK characters (no spaces between words) become overlapping character bigrams,
/// as Lucene's CJK analyzer does, and a script change separates words (`Pythonで` → `python`, `で`),
/// so a Japanese instruction still matches `python`. Stop words are kept (see [`Analyzer::analyze`]).
pub fn raw_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut cjk: Vec<char> = Vec::new();
    fn flush_cjk(cjk: &mut Vec<char>, out: &mut Vec<String>) {
        match cjk.len() {
            0 => {}
            1 => out.push(cjk[0].to_string()),
            _ => out.extend(cjk.windows(2).map(|w| w.iter().collect::<String>())),
        }
        cjk.clear();
    }
    fn flush_word(word: &mut String, out: &mut Vec<String>) {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
    }
    for ch in text.chars() {
        if is_cjk(ch) {
            flush_word(&mut word, &mut out);
            cjk.push(ch);
        } else if ch.is_alphanumeric() {
            flush_cjk(&mut cjk, &mut out);
            word.extend(ch.to_lowercase());
        } else {
            flush_word(&mut word, &mut out);
            flush_cjk(&mut cjk, &mut out);
            if ch == '&' {
                out.push("and".into());
            }
        }
    }
    flush_word(&mut word, &mut out);
    flush_cjk(&mut cjk, &mut out);
    out
}

/// The analyzer: [`raw_tokens`], minus stop words, stemmed.
pub struct Analyzer {
    stemmer: Stemmer,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl Analyzer {
    pub fn new() -> Self {
        Analyzer { stemmer: Stemmer::create(Algorithm::English) }
    }

    /// The Snowball English stem of one lowercase word.
    pub fn stem(&self, word: &str) -> String {
        self.stemmer.stem(word).into_owned()
    }

    /// Index terms of a text, in order, duplicates kept (term frequency matters to BM25).
    pub fn analyze(&self, text: &str) -> Vec<String> {
        let stops = stop_words();
        raw_tokens(text)
            .into_iter()
            .filter(|t| !stops.contains(t.as_str()))
            .map(|t| self.stem(&t))
            .collect()
    }

    /// Like [`Analyzer::analyze`], but each term paired with the first surface word that produced it
    /// (so explanations can say "matched `translation` (stem `translat`)").
    pub fn analyze_with_surface(&self, text: &str) -> Vec<(String, String)> {
        let stops = stop_words();
        raw_tokens(text)
            .into_iter()
            .filter(|t| !stops.contains(t.as_str()))
            .map(|t| (self.stem(&t), t))
            .collect()
    }
}

pub fn is_stop_word(word: &str) -> bool {
    stop_words().contains(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_word_list_is_nltks_179() {
        assert_eq!(ENGLISH_STOP_WORDS.len(), 179);
        assert_eq!(stop_words().len(), 179, "no duplicates");
    }

    #[test]
    fn tokens_lowercase_and_drop_punctuation() {
        assert_eq!(
            raw_tokens("Hello, World! T5-base & BART."),
            ["hello", "world", "t5", "base", "and", "bart"]
        );
        assert_eq!(raw_tokens("  ...  "), Vec::<String>::new());
        assert_eq!(raw_tokens("Éclair über"), ["éclair", "über"]);
        assert_eq!(
            raw_tokens("Pythonで1行のコード"),
            ["python", "で", "1", "行の", "のコ", "コー", "ード"]
        );
        assert_eq!(raw_tokens("日本語 a"), ["日本", "本語", "a"]);
    }

    #[test]
    fn snowball_english_stems() {
        // Values of NLTK's SnowballStemmer("english") (Porter2).
        let a = Analyzer::new();
        for (word, stem) in [
            ("running", "run"),
            ("translation", "translat"),
            ("summarization", "summar"),
            ("questions", "question"),
            ("answering", "answer"),
            ("generously", "generous"),
            ("normalization", "normal"),
            ("expressions", "express"),
            ("dates", "date"),
            ("generation", "generat"),
            ("python", "python"),
            ("japanese", "japanes"),
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("skies", "sky"),
            ("dying", "die"),
            ("news", "news"),
        ] {
            assert_eq!(a.stem(word), stem, "{word}");
        }
    }

    #[test]
    fn analyze_removes_stop_words_before_stemming() {
        let a = Analyzer::new();
        assert_eq!(
            a.analyze("The models are answering the questions"),
            ["model", "answer", "question"]
        );
        // "don't" splits into "don" and "t", both NLTK stop words.
        assert_eq!(a.analyze("Don't translate"), ["translat"]);
        let with = a.analyze_with_surface("Translating news");
        assert_eq!(
            with,
            [
                ("translat".to_string(), "translating".to_string()),
                ("news".to_string(), "news".to_string())
            ]
        );
    }
}

//! Python `str` semantics needed by the metrics (CPython 3.11, Unicode 14.0.0 tables).
//!
//! Everything here is table-driven so that it does not depend on the Unicode version of the Rust
//! toolchain; `tests/metrics_differential.rs` compares the tables with the Python interpreter
//! it runs, code point by code point.
//!
//! Shared by exact match (SQuAD's `normalize_answer`) and chrF++ (sacrebleu's tokenisation).

pub use crate::pystr_tables::UNIDATA_VERSION;
use crate::pystr_tables::{CASED, CASE_IGNORABLE, LOWER, SPACE, WORD};

fn in_ranges(ranges: &[(u32, u32)], c: u32) -> bool {
    // ranges are sorted, disjoint, inclusive
    let i = ranges.partition_point(|&(_, hi)| hi < c);
    i < ranges.len() && ranges[i].0 <= c
}

/// `str.isspace()` for one character; also exactly the separators of `str.split()`.
#[inline]
pub fn is_space(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return matches!(u, 0x09..=0x0D | 0x1C..=0x20);
    }
    SPACE.binary_search(&u).is_ok()
}

/// `re`'s Unicode word character (`\w`): `str.isalnum()` or `_`.
#[inline]
pub fn is_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    in_ranges(WORD, c as u32)
}

/// Unicode `Cased` property as CPython's database has it.
pub fn is_cased(c: char) -> bool {
    in_ranges(CASED, c as u32)
}

/// Unicode `Case_Ignorable` property as CPython's database has it.
pub fn is_case_ignorable(c: char) -> bool {
    in_ranges(CASE_IGNORABLE, c as u32)
}

/// `str.split()` without arguments: runs of Python whitespace separate words, and leading or
/// trailing whitespace yields no empty strings.
pub fn split(s: &str) -> impl Iterator<Item = &str> + '_ {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Lower-case mapping of one character *outside* the Final_Sigma context (what
/// `chr(c).lower()` returns). U+0130 is the only character whose lower form is two characters.
pub fn lower_char(c: char, out: &mut String) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
        return;
    }
    let u = c as u32;
    if u == 0x130 {
        out.push_str("i\u{307}");
        return;
    }
    match LOWER.binary_search_by_key(&u, |&(from, _)| from) {
        Ok(i) => out.push(char::from_u32(LOWER[i].1).expect("table holds valid chars")),
        Err(_) => out.push(c),
    }
}

/// `str.lower()`, including CPython's `handle_capital_sigma`: U+03A3 becomes final sigma
/// U+03C2 when preceded by a cased letter and not followed by one (skipping case-ignorable
/// characters on both sides), else U+03C3.
pub fn lower(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    if s.is_ascii() {
        out.push_str(s);
        out.make_ascii_lowercase();
        return out;
    }
    for (i, c) in s.char_indices() {
        if c == '\u{3A3}' {
            out.push(if final_sigma(&s[..i], &s[i + c.len_utf8()..]) {
                '\u{3C2}'
            } else {
                '\u{3C3}'
            });
        } else {
            lower_char(c, &mut out);
        }
    }
    out
}

fn final_sigma(before: &str, after: &str) -> bool {
    let prev = before.chars().rev().find(|&c| !is_case_ignorable(c));
    if !prev.is_some_and(is_cased) {
        return false;
    }
    let next = after.chars().find(|&c| !is_case_ignorable(c));
    !next.is_some_and(is_cased)
}

/// Python's `string.punctuation` (ASCII only: `remove_punc` and sacrebleu leave e.g. `「` or `—` alone).
#[inline]
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
}

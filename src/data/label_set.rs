//! The answer set an instruction states ("answer \"positive\" or \"negative\"", "exactly one
//! word: A or B", "(yes/no)", "one of: x, y, z"), and the folding under which an output counts as
//! one of its labels ("Positive." is a variant of "positive").
//!
//! Why a parser of our own instead of asking the teacher: the diagnostics run on every run,
//! offline and in tests, and must say *why* they see a label set (the phrase is kept). It is
//! deliberately strict: a list of alternatives is a label set only with a word that asks for an
//! answer in its sentence ("answer", "label", "classify", "one of", "whether" …) and, for unquoted
//! words, only where the list closes its clause; the demonstrations then confirm it (every
//! demonstration's output must be one of the labels) or veto it. A missed set only means the run
//! is judged as a generation task (chrF++), as before. Known limit: an unquoted list joined to a
//! word before it by a comma ("for each review, positive or negative") takes that word in; quoted
//! labels or a colon before the list avoid it.

use serde::{Deserialize, Serialize};

use crate::data::examples::Example;

/// An answer set stated by the instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatedLabels {
    /// The labels as the instruction spells them, in its order.
    pub labels: Vec<String>,
    /// The instruction's phrase they were read from (one sentence), for the report.
    pub phrase: String,
}

/// An output folded for comparison with labels: surrounding whitespace and quotes dropped, a
/// trailing `.`, `!`, `?` or `。` dropped, inner whitespace runs made one space, lower-cased. So
/// `" Positive. "`, `"positive"` and `"\"POSITIVE\""` are one label; `"not positive"` is not.
pub fn fold_label(text: &str) -> String {
    let mut t = text.trim();
    loop {
        let before = t;
        t = t.trim_end_matches(['.', '!', '?', '。', '！', '？']).trim();
        for (open, close) in QUOTES {
            if t.len() >= open.len_utf8() + close.len_utf8()
                && t.starts_with(*open)
                && t.ends_with(*close)
            {
                t = t[open.len_utf8()..t.len() - close.len_utf8()].trim();
            }
        }
        if t == before {
            break;
        }
    }
    t.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Quote pairs around a label.
const QUOTES: &[(char, char)] = &[
    ('"', '"'),
    ('\'', '\''),
    ('`', '`'),
    ('“', '”'),
    ('‘', '’'),
    ('«', '»'),
    ('「', '」'),
    ('『', '』'),
];

/// Words that ask for an answer: a list of alternatives in a sentence with one of them is read
/// as the answer set.
const TRIGGERS: &[&str] = &[
    "answer",
    "answers",
    "respond",
    "response",
    "reply",
    "output",
    "outputs",
    "label",
    "labels",
    "labeled",
    "labelled",
    "classify",
    "classified",
    "class",
    "classes",
    "category",
    "categories",
    "choose",
    "choices",
    "options",
    "select",
    "pick",
    "return",
    "write",
    "say",
    "predict",
    "either",
    "one",
    "word",
    "whether",
    "tag",
];

/// The longest a quoted label may be (characters); longer quotes are text, not labels.
const MAX_QUOTED_LABEL: usize = 40;

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    /// `,` or `and` (a list), `or`, `/`, `|` (alternatives), `:`.
    Comma,
    Or,
    Colon,
    /// Anything else: brackets, other punctuation. Ends a list.
    Other,
}

fn tokenize(sentence: &str) -> Vec<Token> {
    let chars: Vec<char> = sentence.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // A quote opens at a word boundary (so the apostrophe of "it's" is not one).
        let at_boundary = i == 0 || !chars[i - 1].is_alphanumeric();
        if let Some(&(_, close)) = QUOTES.iter().find(|(open, _)| *open == c) {
            if at_boundary {
                if let Some(len) = chars[i + 1..].iter().position(|&d| d == close) {
                    let inner: String = chars[i + 1..i + 1 + len].iter().collect();
                    let inner = inner.trim().to_string();
                    out.push(if inner.is_empty() || inner.chars().count() > MAX_QUOTED_LABEL {
                        Token::Other
                    } else {
                        Token::Quoted(inner)
                    });
                    i += len + 2;
                    continue;
                }
            }
        }
        if c.is_alphanumeric() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || (matches!(chars[i], '-' | '_' | '\'' | '’')
                        && chars.get(i + 1).is_some_and(|d| d.is_alphanumeric())))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(match word.to_lowercase().as_str() {
                "or" => Token::Or,
                "and" => Token::Comma,
                _ => Token::Word(word),
            });
            continue;
        }
        out.push(match c {
            ',' | '、' | '，' => Token::Comma,
            '/' | '|' => Token::Or,
            ':' | '：' => Token::Colon,
            _ => Token::Other,
        });
        i += 1;
    }
    out
}

/// Every quoted span of `text` (at most 40 characters; the quotes of [`fold_label`]), e.g. the
/// `N/A` of 'the output should just be "N/A"'.
pub fn quoted_spans(text: &str) -> Vec<String> {
    tokenize(text)
        .into_iter()
        .filter_map(|t| match t {
            Token::Quoted(q) => Some(q),
            _ => None,
        })
        .collect()
}

/// A list of alternatives in one sentence.
struct Run {
    items: Vec<String>,
    quoted: bool,
    /// Has an `or`, `/` or `|` between two items (not only commas).
    alternatives: bool,
    after_colon: bool,
    /// Nothing but punctuation follows it in the sentence.
    closes_clause: bool,
    /// A trigger word comes before it in the sentence.
    triggered: bool,
    /// The sentence is a question ("Is the review positive or negative?").
    question: bool,
}

fn runs(sentence: &str) -> Vec<Run> {
    let tokens = tokenize(sentence);
    let question = sentence.trim_end().ends_with(['?', '？']);
    let item = |t: &Token| match t {
        Token::Word(w) => Some((w.clone(), false)),
        Token::Quoted(q) => Some((q.clone(), true)),
        _ => None,
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Some(first) = item(&tokens[i]) else {
            i += 1;
            continue;
        };
        let mut items = vec![first];
        let mut alternatives = false;
        let mut j = i + 1;
        loop {
            // One separator: `,`, `or`, `, or`, `, and`, `/`, `|`.
            let mut k = j;
            let mut saw_or = false;
            let mut seps = 0;
            while k < tokens.len() && matches!(tokens[k], Token::Comma | Token::Or) && seps < 2 {
                saw_or |= tokens[k] == Token::Or;
                k += 1;
                seps += 1;
            }
            if seps == 0 {
                break;
            }
            match tokens.get(k).and_then(item) {
                Some(next) => {
                    alternatives |= saw_or;
                    items.push(next);
                    j = k + 1;
                }
                None => break,
            }
        }
        if items.len() >= 2 {
            let triggered = tokens[..i].iter().any(|t| match t {
                Token::Word(w) => TRIGGERS.contains(&w.to_lowercase().as_str()),
                _ => false,
            });
            out.push(Run {
                quoted: items.iter().any(|(_, q)| *q),
                items: items.into_iter().map(|(s, _)| s).collect(),
                alternatives,
                after_colon: i > 0 && tokens[i - 1] == Token::Colon,
                closes_clause: !matches!(tokens.get(j), Some(Token::Word(_) | Token::Quoted(_))),
                triggered,
                question,
            });
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The instruction's sentences (split at line breaks and at `.`, `!`, `?`, `;` followed by
/// whitespace), each with its closing punctuation.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let bytes: Vec<(usize, char)> = line.char_indices().collect();
        for (n, &(i, c)) in bytes.iter().enumerate() {
            let next_is_space = bytes.get(n + 1).is_none_or(|&(_, d)| d.is_whitespace());
            if matches!(c, '.' | '!' | '?' | ';' | '。' | '！' | '？') && next_is_space {
                let end = i + c.len_utf8();
                if !line[start..end].trim().is_empty() {
                    out.push(line[start..end].trim());
                }
                start = end;
            }
        }
        if !line[start..].trim().is_empty() {
            out.push(line[start..].trim());
        }
    }
    out
}

/// The answer set `instruction` states, if it states one that `demonstrations` do not contradict
/// (see the module docs for what counts).
pub fn stated_labels(instruction: &str, demonstrations: &[Example]) -> Option<StatedLabels> {
    for sentence in sentences(instruction) {
        for run in runs(sentence) {
            if !(run.alternatives || run.after_colon) {
                continue;
            }
            let asked = run.triggered || run.question || run.after_colon;
            let shaped = run.quoted || run.closes_clause || !demonstrations.is_empty();
            if !(asked && shaped) {
                continue;
            }
            let folded: Vec<String> = run.items.iter().map(|l| fold_label(l)).collect();
            if demonstrations.iter().any(|d| !folded.contains(&fold_label(&d.output))) {
                continue;
            }
            let mut labels: Vec<String> = Vec::new();
            for (label, key) in run.items.iter().zip(&folded) {
                if !labels.iter().any(|l| fold_label(l) == *key) {
                    labels.push(label.clone());
                }
            }
            if labels.len() >= 2 {
                return Some(StatedLabels { labels, phrase: sentence.to_string() });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(instruction: &str, demos: &[(&str, &str)]) -> Option<Vec<String>> {
        let demos: Vec<Example> = demos.iter().map(|(i, o)| Example::new(*i, *o)).collect();
        stated_labels(instruction, &demos).map(|s| s.labels)
    }

    #[test]
    fn folding_drops_case_whitespace_quotes_and_a_final_stop() {
        assert_eq!(fold_label(" Positive. "), "positive");
        assert_eq!(fold_label("\"POSITIVE\""), "positive");
        assert_eq!(fold_label("“Very  good”!"), "very good");
        assert_eq!(fold_label("not positive"), "not positive");
        assert_eq!(fold_label("'"), "'");
        assert_eq!(fold_label(""), "");
    }

    #[test]
    fn stated_sets_in_the_usual_phrasings() {
        let sentiment = "Given a product review, answer \"positive\" or \"negative\".";
        assert_eq!(labels(sentiment, &[]).unwrap(), ["positive", "negative"]);
        let s = stated_labels(sentiment, &[]).unwrap();
        assert_eq!(s.phrase, sentiment);
        assert_eq!(
            labels("Read the claim. Answer with exactly one word: A or B.", &[("x", "A")]).unwrap(),
            ["A", "B"]
        );
        assert_eq!(labels("Is the answer correct (yes/no)?", &[]).unwrap(), ["yes", "no"]);
        assert_eq!(
            labels("Classify the news as one of: world, sports, business, or science", &[])
                .unwrap(),
            ["world", "sports", "business", "science"]
        );
        assert_eq!(
            labels("Label each pair 'entailment', 'neutral' or 'contradiction'.", &[]).unwrap(),
            ["entailment", "neutral", "contradiction"]
        );
        assert_eq!(
            labels("Tell whether the review is positive or negative.", &[]).unwrap(),
            ["positive", "negative"]
        );
        assert_eq!(
            labels("Is this review positive or negative?", &[]).unwrap(),
            ["positive", "negative"]
        );
        // Repeated spellings are one label.
        assert_eq!(labels("Answer Yes, yes or No.", &[]).unwrap(), ["Yes", "No"]);
    }

    #[test]
    fn free_text_instructions_state_no_set() {
        for instruction in [
            "Given the name of a country, answer with the name of its capital city.",
            "Translate the sentence into French or German, whichever the user asks for.",
            "Answer the question or say unknown if you cannot.",
            "Summarise the article in one or two sentences.",
            "Write a short poem about cats and dogs.",
            "",
        ] {
            assert_eq!(labels(instruction, &[]), None, "{instruction}");
        }
        // An unquoted list that does not close its clause needs the demonstrations to agree.
        let cls = "Classify the review as positive or negative based on its tone.";
        assert_eq!(labels(cls, &[]), None);
        assert_eq!(
            labels(cls, &[("great", "positive"), ("awful", "Negative.")]).unwrap(),
            ["positive", "negative"]
        );
    }

    #[test]
    fn quoted_spans_of_an_instruction() {
        let t = "If nothing is found, the output should just be 'N/A', i.e., output=\"N/A\"; it's fine.";
        assert_eq!(quoted_spans(t), ["N/A", "N/A"]);
    }

    #[test]
    fn demonstrations_veto_a_set_they_do_not_fit() {
        let s = "Answer \"positive\" or \"negative\".";
        assert_eq!(labels(s, &[("fine", "neutral")]), None);
        assert!(labels(s, &[("fine", " Positive ")]).is_some());
    }
}

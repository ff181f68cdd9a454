//! The prompt parser (Prompt2Model §3.1): split a free-form prompt into an instruction and
//! demonstrations.
//!
//! - **LLM mode** ([`parse_with_teacher`]): the reference's few-shot parsing prompt
//!   (neulab/prompt2model `prompt_parser/instr_parser_prompt.py`) through any [`Teacher`]; the
//!   answer must be a JSON object with `Instruction` and `Demonstrations`; it is validated (the
//!   instruction and every demonstration must occur in the prompt, whitespace-normalised) and
//!   retried a bounded number of times.
//! - **Deterministic mode** ([`parse_deterministic`]): common layouts without a model:
//!   `input="…"` / `output="…"` pairs (the paper's prompts; straight or curly quotes, on separate
//!   lines or one line), `Input:` / `Output:` pairs (also `入力：`/`出力：`, `输入：`/`输出：`), numbered
//!   or bulleted examples and `Example N:` headers. A lead-in line such as "Here are some
//!   examples:" is dropped from the instruction.
//! - [`detect_language`] by script (English / Japanese / Chinese / Korean / other) and an
//!   optional translation of a non-English instruction through the teacher
//!   ([`translate_instruction`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::examples::Example;
use crate::teacher::{ChatRequest, SamplingParams, Teacher, TeacherError};
use crate::util::json_scan::json_values;

/// Language of a prompt, by script (and, for Latin script, common English words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Language {
    #[default]
    #[serde(rename = "en")]
    English,
    #[serde(rename = "ja")]
    Japanese,
    #[serde(rename = "zh")]
    Chinese,
    #[serde(rename = "ko")]
    Korean,
    #[serde(rename = "other")]
    Other,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::English => "English",
            Language::Japanese => "Japanese",
            Language::Chinese => "Chinese",
            Language::Korean => "Korean",
            Language::Other => "non-English",
        }
    }
}

/// A parsed prompt: what the dataset generator needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedPrompt {
    pub instruction: String,
    pub demonstrations: Vec<Example>,
    pub language: Language,
}

impl ParsedPrompt {
    /// Build one, detecting the language of the instruction.
    pub fn new(instruction: impl Into<String>, demonstrations: Vec<Example>) -> Self {
        let instruction = instruction.into();
        let language = detect_language(&instruction);
        ParsedPrompt { instruction, demonstrations, language }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the prompt is empty")]
    Empty,
    #[error("LLM mode needs a teacher")]
    NoTeacher,
    #[error("LLM prompt parsing failed after {attempts} attempts: {}", problems.join("; "))]
    Llm { attempts: u32, problems: Vec<String> },
    #[error("translation failed: {0}")]
    Translation(String),
    #[error(transparent)]
    Teacher(#[from] TeacherError),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseMode {
    /// Layout rules only; no model.
    Deterministic,
    /// The teacher only (errors when it cannot produce a valid parse).
    Llm,
    /// The teacher, falling back to the layout rules when it fails (the default).
    #[default]
    Auto,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParserConfig {
    pub mode: ParseMode,
    /// Teacher calls per parse (first at temperature 0, then `retry_temperature`).
    pub max_attempts: u32,
    pub retry_temperature: f64,
    pub max_tokens: Option<u32>,
}

impl Default for ParserConfig {
    fn default() -> Self {
        ParserConfig {
            mode: ParseMode::Auto,
            max_attempts: 3,
            retry_temperature: 0.3,
            max_tokens: None,
        }
    }
}

/// Parse `prompt` according to `cfg.mode`.
pub async fn parse_prompt(
    prompt: &str,
    teacher: Option<&dyn Teacher>,
    cfg: &ParserConfig,
) -> Result<ParsedPrompt, ParseError> {
    match (cfg.mode, teacher) {
        (ParseMode::Deterministic, _) | (ParseMode::Auto, None) => parse_deterministic(prompt),
        (ParseMode::Llm, None) => Err(ParseError::NoTeacher),
        (ParseMode::Llm, Some(t)) => parse_with_teacher(t, prompt, cfg).await,
        (ParseMode::Auto, Some(t)) => match parse_with_teacher(t, prompt, cfg).await {
            Ok(p) => Ok(p),
            Err(ParseError::Teacher(e)) if e.is_fatal() => Err(ParseError::Teacher(e)),
            Err(e) => {
                tracing::warn!(error = %e, "LLM prompt parsing failed; using the deterministic parser");
                parse_deterministic(prompt)
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic parsing

/// Parse with layout rules only.
pub fn parse_deterministic(prompt: &str) -> Result<ParsedPrompt, ParseError> {
    if prompt.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let scan = extract_demonstrations(prompt);
    let instruction = match scan.start {
        Some(start) if !scan.examples.is_empty() => strip_lead_in(&prompt[..start]),
        _ => prompt.trim().to_string(),
    };
    let demonstrations = if scan.start.is_some() { scan.examples } else { Vec::new() };
    Ok(ParsedPrompt::new(instruction, demonstrations))
}

/// Demonstrations found in a text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DemoScan {
    /// Byte offset where the demonstrations start (their first line, or an `Example 1:` header).
    pub start: Option<usize>,
    /// Byte offset just after the last complete demonstration.
    pub end: usize,
    /// Complete `(input, output)` pairs, trimmed; incomplete ones are dropped.
    pub examples: Vec<Example>,
}

/// The demonstrations as the generator shows them (the paper's prompt format).
pub fn format_demonstrations(demos: &[Example]) -> String {
    demos
        .iter()
        .map(|d| format!("input=\"{}\"\noutput=\"{}\"", d.input, d.output))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Input,
    Output,
}

const MARKERS: [(&str, Kind); 6] = [
    ("input", Kind::Input),
    ("output", Kind::Output),
    ("入力", Kind::Input),
    ("出力", Kind::Output),
    ("输入", Kind::Input),
    ("输出", Kind::Output),
];

/// Markers accepted in the middle of a line (after whitespace): exact spellings only, to avoid
/// prose like "the output: …".
const INLINE_MARKERS: [(&str, Kind); 12] = [
    ("Input:", Kind::Input),
    ("Output:", Kind::Output),
    ("INPUT:", Kind::Input),
    ("OUTPUT:", Kind::Output),
    ("input=", Kind::Input),
    ("output=", Kind::Output),
    ("Input=", Kind::Input),
    ("Output=", Kind::Output),
    ("入力：", Kind::Input),
    ("出力：", Kind::Output),
    ("输入：", Kind::Input),
    ("输出：", Kind::Output),
];

/// A marker (`input=`, `Output:`, `入力：`, …) at byte `pos`: its kind and where its value starts.
fn marker_at(text: &str, pos: usize) -> Option<(Kind, usize)> {
    let rest = text.get(pos..)?;
    for (word, kind) in MARKERS {
        let Some(head) = rest.get(..word.len()) else { continue };
        if !head.eq_ignore_ascii_case(word) {
            continue;
        }
        let after = &rest[word.len()..];
        let trimmed = after.trim_start_matches([' ', '\t']);
        if let Some(c @ ('=' | ':' | '：')) = trimmed.chars().next() {
            return Some((kind, pos + word.len() + (after.len() - trimmed.len()) + c.len_utf8()));
        }
    }
    None
}

fn inline_marker_at(text: &str, pos: usize) -> Option<(Kind, usize)> {
    let rest = text.get(pos..)?;
    INLINE_MARKERS.iter().find(|(w, _)| rest.starts_with(w)).map(|(w, k)| (*k, pos + w.len()))
}

fn skip_hspace(text: &str, pos: usize) -> usize {
    pos + text[pos..].len() - text[pos..].trim_start_matches([' ', '\t', '\u{3000}']).len()
}

fn skip_space(text: &str, pos: usize) -> usize {
    pos + text[pos..].len() - text[pos..].trim_start().len()
}

/// Skip a list enumerator at `pos`: `1.`, `1)`, `(1)`, `-`, `*`, `•`.
fn skip_enumerator(text: &str, pos: usize) -> usize {
    let rest = &text[pos..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 {
        let after = &rest[digits..];
        if after.starts_with(['.', ')', '、', '．']) {
            let c = after.chars().next().expect("non-empty");
            return skip_hspace(text, pos + digits + c.len_utf8());
        }
        return pos;
    }
    if let Some(inner) = rest.strip_prefix('(') {
        let d = inner.len() - inner.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if d > 0 && inner[d..].starts_with(')') {
            return skip_hspace(text, pos + d + 2);
        }
        return pos;
    }
    for b in ["- ", "* ", "• "] {
        if rest.starts_with(b) {
            return skip_hspace(text, pos + b.len());
        }
    }
    pos
}

/// Byte offsets of line starts.
fn line_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .filter(move |&i| i <= text.len())
}

fn line_at(text: &str, start: usize) -> &str {
    let rest = &text[start..];
    &rest[..rest.find('\n').unwrap_or(rest.len())]
}

/// `Example 1:`, `### Example 2`, `例1：`, `Sample 3.` … alone on a line.
fn is_example_header(line: &str) -> bool {
    let l = line.trim().trim_start_matches('#').trim().trim_end_matches([':', '：', '.']).trim();
    let lower = l.to_lowercase();
    for w in ["example", "examples", "sample", "demonstration", "例", "示例", "样例", "例題"]
    {
        if let Some(rest) = lower.strip_prefix(w) {
            let rest = rest.trim().trim_start_matches(['#', '№']);
            return rest.chars().all(|c| c.is_ascii_digit() || c.is_whitespace())
                && rest.chars().count() <= 4;
        }
    }
    false
}

/// Skip blank space, `Example N:` header lines and an enumerator before the next marker.
fn skip_gap(text: &str, mut pos: usize) -> usize {
    loop {
        pos = skip_space(text, pos);
        let line = line_at(text, pos);
        if !line.is_empty()
            && is_example_header(line)
            && marker_at(text, skip_enumerator(text, pos)).is_none()
        {
            pos += line.len();
            continue;
        }
        return skip_enumerator(text, pos);
    }
}

fn closers(open: char) -> Option<&'static [char]> {
    match open {
        '"' => Some(&['"', '”']),
        '“' => Some(&['”', '"']),
        '「' => Some(&['」']),
        '『' => Some(&['』']),
        '\'' => Some(&['\'']),
        '‘' => Some(&['’', '\'']),
        _ => None,
    }
}

/// Read a value starting at `vstart`; `next` is the marker kind that may follow on the same line.
/// Returns the value and the byte offset after it.
fn read_value(text: &str, vstart: usize, next: Kind) -> (String, usize) {
    let q = skip_hspace(text, vstart);
    if let Some(open) = text[q..].chars().next() {
        if let Some(cl) = closers(open) {
            let body = q + open.len_utf8();
            // The closing quote is the first one followed (after spaces) by the end of the line,
            // the end of the text, or the next marker on the same line.
            for (off, c) in text[body..].char_indices() {
                if !cl.contains(&c) {
                    continue;
                }
                let after = body + off + c.len_utf8();
                let t = skip_hspace(text, after);
                let ends = t >= text.len()
                    || text[t..].starts_with('\n')
                    || text[t..].starts_with("\r\n")
                    || marker_at(text, t).is_some_and(|(k, _)| k == next);
                if ends {
                    return (text[body..body + off].to_string(), after);
                }
            }
        }
    }
    // Unquoted: up to a blank line, a line that starts with a marker, an inline marker of the
    // next kind, or the end.
    let mut start = q;
    if text[q..].starts_with('\n') || text[q..].starts_with("\r\n") {
        start = skip_space(text, q);
    }
    let mut end = text.len();
    let mut i = start;
    while i < text.len() {
        let c = text[i..].chars().next().expect("in bounds");
        if c == '\n' {
            let next_line = i + 1;
            if text[next_line..].trim_start_matches([' ', '\t', '\r']).starts_with('\n') {
                end = i;
                break;
            }
            if next_line <= text.len()
                && marker_at(text, skip_enumerator(text, skip_hspace(text, next_line))).is_some()
            {
                end = i;
                break;
            }
        } else if i > start && text[..i].ends_with(char::is_whitespace) {
            if let Some((k, _)) = inline_marker_at(text, i) {
                if k == next {
                    end = i;
                    break;
                }
            }
        }
        i += c.len_utf8();
    }
    (text[start..end].trim().to_string(), end)
}

/// Find and read the demonstrations of `text`.
pub fn extract_demonstrations(text: &str) -> DemoScan {
    // The first input marker at the start of a line (after indentation and an enumerator) …
    let mut first: Option<(usize, usize)> = None; // (line start, marker position)
    for ls in line_starts(text) {
        let p = skip_enumerator(text, skip_hspace(text, ls));
        if let Some((Kind::Input, _)) = marker_at(text, p) {
            first = Some((ls, p));
            break;
        }
    }
    // … or else inline, after whitespace (`… my problems. Input: What is CI/CD? Output: …`).
    if first.is_none() {
        for (i, c) in text.char_indices() {
            if i > 0
                && text[..i].ends_with(char::is_whitespace)
                && matches!(inline_marker_at(text, i), Some((Kind::Input, _)))
            {
                first = Some((i, i));
                break;
            }
            let _ = c;
        }
    }
    let Some((mut start, mut pos)) = first else { return DemoScan::default() };
    // An `Example 1:` header line right above belongs to the demonstrations.
    if start > 0 {
        let before = text[..start].trim_end();
        let prev_line_start = before.rfind('\n').map_or(0, |i| i + 1);
        if is_example_header(&before[prev_line_start..]) {
            start = prev_line_start;
        }
    }
    let mut examples = Vec::new();
    let mut end = pos;
    while let Some((Kind::Input, vstart)) = marker_at(text, pos) {
        let (input, after_in) = read_value(text, vstart, Kind::Output);
        let opos = skip_space(text, after_in);
        let Some((Kind::Output, ostart)) = marker_at(text, opos) else { break };
        let (output, after_out) = read_value(text, ostart, Kind::Input);
        let (input, output) = (input.trim().to_string(), output.trim().to_string());
        if !input.is_empty() && !output.is_empty() {
            examples.push(Example { input, output });
            end = after_out;
        }
        pos = skip_gap(text, after_out);
        if pos >= text.len() {
            break;
        }
    }
    DemoScan { start: Some(start), end, examples }
}

/// The instruction: the text before the demonstrations, without a trailing lead-in line such as
/// "Here are some examples:".
fn strip_lead_in(before: &str) -> String {
    let t = before.trim_end();
    let last_start = t.rfind('\n').map_or(0, |i| i + 1);
    let last = t[last_start..].trim();
    let lower = last.to_lowercase();
    let lead_in = (last.ends_with(':') || last.ends_with('：'))
        && last.chars().count() <= 300
        && [
            "example",
            "demonstration",
            "sample",
            "here are",
            "here is",
            "for instance",
            "例",
            "以下",
            "示例",
            "样例",
        ]
        .iter()
        .any(|w| lower.contains(w));
    let kept = if lead_in { &t[..last_start] } else { t };
    kept.trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Language

/// Language of `text` by script: kana → Japanese; Hangul → Korean; Han without kana → Chinese;
/// Latin script with common English function words → English; anything else → Other.
pub fn detect_language(text: &str) -> Language {
    let (mut kana, mut han, mut hangul, mut latin_words, mut other) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, words: &mut Vec<String>, latin_words: &mut usize| {
        if !cur.is_empty() {
            *latin_words += 1;
            words.push(std::mem::take(cur).to_lowercase());
        }
    };
    for c in text.chars() {
        let u = c as u32;
        let is_latin = c.is_ascii_alphabetic() || (0xC0..=0x24F).contains(&u) && c.is_alphabetic();
        if is_latin {
            cur.push(c);
            continue;
        }
        flush(&mut cur, &mut words, &mut latin_words);
        match u {
            0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9D => kana += 1,
            0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => han += 1,
            0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => hangul += 1,
            _ if c.is_alphabetic() => other += 1,
            _ => {}
        }
    }
    flush(&mut cur, &mut words, &mut latin_words);
    let total = kana + han + hangul + latin_words + other;
    if total == 0 {
        return Language::Other;
    }
    let share = |n: usize| n as f64 / total as f64;
    if kana > 0 && share(kana + han) >= 0.2 {
        return Language::Japanese;
    }
    if share(hangul) >= 0.2 {
        return Language::Korean;
    }
    if share(han) >= 0.2 {
        return Language::Chinese;
    }
    if share(latin_words) >= 0.6 {
        const EN: [&str; 32] = [
            "the", "a", "an", "and", "or", "of", "to", "in", "is", "are", "be", "for", "with",
            "that", "this", "on", "it", "as", "by", "from", "your", "you", "each", "if", "should",
            "will", "can", "not", "which", "given", "what", "into",
        ];
        let hits = words.iter().filter(|w| EN.contains(&w.as_str())).count();
        if hits * 100 >= words.len() * 8 || (words.len() < 8 && hits > 0) {
            return Language::English;
        }
    }
    Language::Other
}

// ---------------------------------------------------------------------------------------------
// LLM parsing (the reference's prompt)

const METAPROMPT_INSTRUCTION: &str = "\nAs a PromptParser, your objective is to carefully analyze prompts and divide them into two distinct components: an 'Instruction' that provides the primary description of the task, and 'Demonstrations' which are optional examples showcasing the task. Your aim is to generate a JSON dictionary response containing the `Instruction` and `Demonstrations` fields, corresponding to these two components. In case there are no demonstrations provided, the 'Demonstrations' field should be marked as 'N/A'. When including demonstrations, only consider complete examples that consist of both input and output pairs, disregarding any incomplete ones. It is crucial to maintain the precise formatting, word choice, and punctuation exactly as presented in the original prompt. Here are some parsed output you can refer to.\n";

/// (prompt, instruction, demonstrations) — the reference's six worked parses (Apache-2.0,
/// neulab/prompt2model).
const METAPROMPT_EXAMPLES: [(&str, &str, &str); 6] = [
    (
        r#"I am trying to cluster entity strings on Wikipedia according to the Wikipedia article title they refer to. To help me with this, for a given entity name, please provide me with a comprehensive set of alternative names that could refer to the same entity. Entities may be weirdly truncated or ambiguous - e.g. "Wind" may refer to the band "Earth, Wind, and Fire" or to "rescue service". For each entity, I will provide you with a sentence where this entity is used to help you understand what this entity refers to. Generate a comprehensive set of alternate entity names as a JSON-formatted list.

Entity: "fictional character"
Context Sentence: "Jenna Marshall is a fictional character created by Sara Shepard for the `` Pretty Little Liars '' book series , and later developed for the Freeform television series adaptation by I. Marlene King and portrayed by Tammin Sursok ."
Alternate Entity Names: ["fictional characters", "characters", "character"]

Entity: "Catholicism"
Context Sentence: "At home , significantly more electorate residents spoke Italian , Cantonese , Mandarin and Greek at home , and whilst the top three religions (Catholicism , no religion and Anglicanism) differed little from other parts of Perth , Buddhism and Eastern Orthodox adherents outnumbered those of the Uniting Church ."
Alternate Entity Names: ["Catholic Church", "Roman Catholic", "Catholic"]

Entity: "Wind"
Context Sentence: "Illinois musicians with a # 1 Billboard Hot 100 hit include artists from the 1950s : Sam Cooke (d. 1964) ; from the 1960s : The Buckinghams ; from the 1970s : Earth , Wind & Fire , The Chi-Lites , The Staple Singers , Minnie Riperton , Styx ; from the 1980s : Chicago , Cheap Trick , REO Speedwagon , Survivor , Richard Marx ; from the 1990s : R. Kelly ; from the 2000s : Kanye West , Twista , Plain White T 's ."
"#,
        r#"I am trying to cluster entity strings on Wikipedia according to the Wikipedia article title they refer to. To help me with this, for a given entity name, please provide me with a comprehensive set of alternative names that could refer to the same entity. Entities may be weirdly truncated or ambiguous - e.g. "Wind" may refer to the band "Earth, Wind, and Fire" or to "rescue service". For each entity, I will provide you with a sentence where this entity is used to help you understand what this entity refers to. Generate a comprehensive set of alternate entity names as a JSON-formatted list."#,
        r#"Entity: "fictional character"
Context Sentence: "Jenna Marshall is a fictional character created by Sara Shepard for the `` Pretty Little Liars '' book series , and later developed for the Freeform television series adaptation by I. Marlene King and portrayed by Tammin Sursok ."
Alternate Entity Names: ["fictional characters", "characters", "character"]

Entity: "Catholicism"
Context Sentence: "At home , significantly more electorate residents spoke Italian , Cantonese , Mandarin and Greek at home , and whilst the top three religions (Catholicism , no religion and Anglicanism) differed little from other parts of Perth , Buddhism and Eastern Orthodox adherents outnumbered those of the Uniting Church ."
Alternate Entity Names: ["Catholic Church", "Roman Catholic", "Catholic"]"#,
    ),
    (
        r#"You are an expert baker answering users' questions. Reply as agent.

Example conversation:

User: Hey can you help me with something

Agent: Sure! What do you need help with?

User: I want to bake a cake but don't know what temperature to set the oven to.

Agent: For most cakes, the oven should be preheated to 350°F (177°C).

Current conversation:

User: [Insert user's question]

Agent:"#,
        "You are an expert baker answering users' questions. Reply as agent.",
        r#"User: Hey can you help me with something

Agent: Sure! What do you need help with?

User: I want to bake a cake but don't know what temperature to set the oven to.

Agent: For most cakes, the oven should be preheated to 350°F (177°C)."#,
    ),
    (
        "You are given a list of integers. A list is shown by comma-separated numbers between two brackets. For example, [7,3,6] is a list. The number in location one is 7, the number in location two is 3, and the number in location three is 6. You should answer with a list such that every element at each location is equal to the product of elements at every other location in the input array. For example, if a list has four numbers, the answer you give should be created like this: First element of your list = product of second, third, and fourth elements in the given list. Second element of your list = product of First, third and fourth elements in the given list, etc.",
        "You are given a list of integers. A list is shown by comma-separated numbers between two brackets. For example, [7,3,6] is a list. The number in location one is 7, the number in location two is 3, and the number in location three is 6. You should answer with a list such that every element at each location is equal to the product of elements at every other location in the input array. For example, if a list has four numbers, the answer you give should be created like this: First element of your list = product of second, third, and fourth elements in the given list. Second element of your list = product of First, third and fourth elements in the given list, etc.",
        "N/A",
    ),
    (
        "I am learning Japanese. Please translate some Japanese sentences to English. For example, Japanese: その日、人類は思い出した。ヤツらに支配されていた恐怖を鳥籠の中に囚われていた屈辱を English: On that day, humanity remembered the fear of being dominated by them and the humiliation of being trapped in a birdcage.",
        "I am learning Japanese. Please translate some Japanese sentences to English.",
        "Japanese: その日、人類は思い出した。ヤツらに支配されていた恐怖を鳥籠の中に囚われていた屈辱を English: On that day, humanity remembered the fear of being dominated by them and the humiliation of being trapped in a birdcage.",
    ),
    (
        "来到美国后，我需要学习如何自己做饭。你能告诉我一些菜需要准备的原料么？这里有一些例子：1. 菜名：西红柿炒蛋。原料：2. 菜名：青椒肉丝炒肉。原料：瘦肉、青椒、调味料（如大蒜、姜、料酒、生抽、盐、糖、鸡精或味精、胡椒粉）、植物油。",
        "来到美国后，我需要学习如何自己做饭。你能告诉我一些菜需要准备的原料么？",
        "2. 菜名：青椒肉丝炒肉。原料：瘦肉、青椒、调味料（如大蒜、姜、料酒、生抽、盐、糖、鸡精或味精、胡椒粉）、植物油。",
    ),
    (
        "As a programer, I am learning software development. Here are some of my problems. Input: What is CI/CD? Output: CI/CD is a way to automate and speed up software development by continuously integrating code changes and deploying them quickly and reliably. Input: What is Git? Output:",
        "As a programer, I am learning software development. Here are some of my problems.",
        " Input: What is CI/CD? Output: CI/CD is a way to automate and speed up software development by continuously integrating code changes and deploying them quickly and reliably.",
    ),
];

fn demonstration_block(prompt: &str, parse: Option<(&str, &str)>) -> String {
    let mut s = format!("Prompt: \"\"\"\n{prompt}\n\"\"\"\n\nParsed Outputs:\n");
    if let Some((instruction, demos)) = parse {
        // Python's json.dumps(…, ensure_ascii=False) layout: `{"k": v, "k": v}`.
        s.push_str(&format!(
            "{{\"Instruction\": {}, \"Demonstrations\": {}}}",
            serde_json::to_string(instruction).expect("string"),
            serde_json::to_string(demos).expect("string")
        ));
    }
    s
}

/// The reference's instruction-parsing prompt for `user_prompt`.
pub fn parsing_prompt(user_prompt: &str) -> String {
    let mut sections = vec![METAPROMPT_INSTRUCTION.to_string()];
    for (p, i, d) in METAPROMPT_EXAMPLES {
        sections.push(demonstration_block(p, Some((i, d))));
    }
    let mut all = sections.join("\n\n------\n\n") + "\n\n------\n\n";
    all.push_str("After seeing these parsed output, please parse this prompt:\n\n");
    all.push_str(&demonstration_block(user_prompt, None));
    all
}

fn normalise_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn get_ci<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
        .or_else(|| m.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// Validate a teacher's parse of `prompt`; the problem in words when it is not acceptable.
pub fn validate_llm_parse(prompt: &str, answer: &str) -> Result<ParsedPrompt, String> {
    let obj = json_values(answer)
        .into_iter()
        .find_map(|v| match v {
            Value::Object(m) if get_ci(&m, "instruction").is_some() => Some(m),
            _ => None,
        })
        .ok_or_else(|| "the answer has no JSON object with an `Instruction` field".to_string())?;
    let instruction = get_ci(&obj, "instruction")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if instruction.is_empty() || instruction == "N/A" {
        return Err("`Instruction` is empty".into());
    }
    let demos: Vec<Example> = match get_ci(&obj, "demonstrations") {
        None | Some(Value::Null) => return Err("the answer has no `Demonstrations` field".into()),
        Some(Value::String(s)) if s.trim().is_empty() || s.trim() == "N/A" => Vec::new(),
        Some(Value::String(s)) => {
            let found = extract_demonstrations(s).examples;
            if found.is_empty() {
                tracing::warn!("the demonstrations are not input/output pairs; none are kept");
            }
            found
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for x in a {
                let m = x.as_object().ok_or("a demonstration is not an object")?;
                let field =
                    |k: &str| get_ci(m, k).and_then(Value::as_str).map(|s| s.trim().to_string());
                match (field("input"), field("output")) {
                    (Some(i), Some(o)) if !i.is_empty() && !o.is_empty() => {
                        out.push(Example { input: i, output: o })
                    }
                    _ => return Err("a demonstration lacks a non-empty `input` or `output`".into()),
                }
            }
            out
        }
        Some(_) => return Err("`Demonstrations` is neither a string nor a list".into()),
    };
    let hay = normalise_ws(prompt);
    if !hay.contains(&normalise_ws(&instruction)) {
        return Err("the instruction is not a verbatim part of the prompt".into());
    }
    for d in &demos {
        if !hay.contains(&normalise_ws(&d.input)) || !hay.contains(&normalise_ws(&d.output)) {
            return Err(format!(
                "demonstration {:?} is not a verbatim part of the prompt",
                crate::util::text::excerpt(&d.input, 60)
            ));
        }
    }
    Ok(ParsedPrompt::new(instruction, demos))
}

/// The JSON Schema of a parse (`{"Instruction": "…", "Demonstrations": "…"}`), sent to HTTP
/// teachers as structured output (see [`crate::teacher::structured`]).
pub fn parse_answer_schema() -> Value {
    crate::teacher::structured::object_of_strings(&["Instruction", "Demonstrations"])
}

/// Parse `prompt` with the teacher: at most `cfg.max_attempts` calls, each answer validated.
pub async fn parse_with_teacher(
    teacher: &dyn Teacher,
    prompt: &str,
    cfg: &ParserConfig,
) -> Result<ParsedPrompt, ParseError> {
    if prompt.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let text = parsing_prompt(prompt);
    let attempts = cfg.max_attempts.max(1);
    let mut problems = Vec::new();
    for attempt in 0..attempts {
        let params = SamplingParams {
            temperature: if attempt == 0 { 0.0 } else { cfg.retry_temperature },
            top_p: 1.0,
            max_tokens: cfg.max_tokens,
            n: 1,
            seed: Some(attempt as u64),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            json_fields: None,
            json_schema: Some(parse_answer_schema()),
        };
        match teacher.chat(&ChatRequest::user(text.clone(), params)).await {
            Err(e) if e.is_fatal() => return Err(ParseError::Teacher(e)),
            Err(e) => problems.push(format!("attempt {}: {e}", attempt + 1)),
            Ok(resp) => {
                let answer = resp.choices.first().map(|c| c.content.as_str()).unwrap_or("");
                match validate_llm_parse(prompt, answer) {
                    Ok(p) => return Ok(p),
                    Err(problem) => problems.push(format!("attempt {}: {problem}", attempt + 1)),
                }
            }
        }
    }
    Err(ParseError::Llm { attempts, problems })
}

// ---------------------------------------------------------------------------------------------
// Translation

fn strip_wrapping(s: &str) -> String {
    let mut t = s.trim();
    if t.starts_with("```") {
        t = t.trim_start_matches('`');
        t = t.split_once('\n').map_or("", |(first, rest)| {
            if first.trim().chars().all(char::is_alphanumeric) {
                rest
            } else {
                t
            }
        });
        t = t.trim_end().trim_end_matches('`').trim();
    }
    for (a, b) in [('"', '"'), ('“', '”'), ('「', '」')] {
        if t.len() > 2 && t.starts_with(a) && t.ends_with(b) {
            t = &t[a.len_utf8()..t.len() - b.len_utf8()];
        }
    }
    t.trim().to_string()
}

/// Translate `text` (in `from`) into English through the teacher.
pub async fn translate_to_english(
    teacher: &dyn Teacher,
    text: &str,
    from: Language,
    max_attempts: u32,
) -> Result<String, ParseError> {
    let prompt = format!(
        "Translate the following {} task description into English. Keep code, identifiers, anything in backticks or quotes, numbers and line breaks exactly as they are. Reply with the translation only.\n\n{text}",
        from.name()
    );
    let mut last = String::new();
    for attempt in 0..max_attempts.max(1) {
        let params = SamplingParams {
            temperature: 0.0,
            n: 1,
            seed: Some(attempt as u64),
            ..Default::default()
        };
        match teacher.chat(&ChatRequest::user(prompt.clone(), params)).await {
            Err(e) if e.is_fatal() => return Err(ParseError::Teacher(e)),
            Err(e) => last = e.to_string(),
            Ok(r) => {
                let t = strip_wrapping(r.choices.first().map(|c| c.content.as_str()).unwrap_or(""));
                if !t.is_empty() {
                    return Ok(t);
                }
                last = "empty translation".into();
            }
        }
    }
    Err(ParseError::Translation(last))
}

/// A copy of `parsed` with its instruction translated into English (unchanged when already
/// English). Demonstrations are kept as they are: they define the task's input/output language.
pub async fn translate_instruction(
    teacher: &dyn Teacher,
    parsed: &ParsedPrompt,
) -> Result<ParsedPrompt, ParseError> {
    if parsed.language == Language::English {
        return Ok(parsed.clone());
    }
    let instruction =
        translate_to_english(teacher, &parsed.instruction, parsed.language, 3).await?;
    Ok(ParsedPrompt {
        instruction,
        demonstrations: parsed.demonstrations.clone(),
        language: Language::English,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let p = parse_deterministic(
            "Translate to French.\n\nInput: cat\nOutput: chat\n\nInput: dog\nOutput: chien\n",
        )
        .unwrap();
        assert_eq!(p.instruction, "Translate to French.");
        assert_eq!(
            p.demonstrations,
            vec![Example::new("cat", "chat"), Example::new("dog", "chien")]
        );
        let p = parse_deterministic(
            "Answer.\nExample 1:\nInput: 1+1\nOutput: 2\nExample 2:\nInput: 2+2\nOutput: 4",
        )
        .unwrap();
        assert_eq!(p.instruction, "Answer.");
        assert_eq!(p.demonstrations.len(), 2);
        let p = parse_deterministic(
            "Sum them.\n1. input=\"1 2\" output=\"3\"\n2. input=“2 2” output=“4”\n",
        )
        .unwrap();
        assert_eq!(p.demonstrations, vec![Example::new("1 2", "3"), Example::new("2 2", "4")]);
        let p = parse_deterministic("As a programer, I am learning software development. Here are some of my problems. Input: What is CI/CD? Output: CI/CD is a way. Input: What is Git? Output:").unwrap();
        assert_eq!(
            p.instruction,
            "As a programer, I am learning software development. Here are some of my problems."
        );
        assert_eq!(p.demonstrations, vec![Example::new("What is CI/CD?", "CI/CD is a way.")]);
        let p = parse_deterministic("Just do it.").unwrap();
        assert_eq!((p.instruction.as_str(), p.demonstrations.len()), ("Just do it.", 0));
        let p = parse_deterministic("翻訳してください。\n\n入力：猫\n出力：cat").unwrap();
        assert_eq!(p.demonstrations, vec![Example::new("猫", "cat")]);
        assert_eq!(p.language, Language::Japanese);
    }

    #[test]
    fn languages() {
        assert_eq!(
            detect_language("Your task is to generate an answer to a natural question."),
            Language::English
        );
        assert_eq!(
            detect_language(
                "Pythonで1行のコードを生成し、StackOverflowの日本語の質問を解決してください。"
            ),
            Language::Japanese
        );
        assert_eq!(detect_language("来到美国后，我需要学习如何自己做饭。"), Language::Chinese);
        assert_eq!(detect_language("다음 문장을 영어로 번역하세요."), Language::Korean);
        assert_eq!(
            detect_language("Traduisez la phrase suivante en anglais, s'il vous plaît, avec soin."),
            Language::Other
        );
        assert_eq!(detect_language("Переведите это предложение."), Language::Other);
    }

    #[test]
    fn reference_parsing_prompt_shape() {
        let p = parsing_prompt("Do X.");
        assert!(p.starts_with("\nAs a PromptParser"));
        assert!(p.ends_with(
            "After seeing these parsed output, please parse this prompt:\n\nPrompt: \"\"\"\nDo X.\n\"\"\"\n\nParsed Outputs:\n"
        ));
        assert_eq!(p.matches("\n\n------\n\n").count(), 7);
        assert!(p.contains(
            "{\"Instruction\": \"You are an expert baker answering users' questions. Reply as agent.\", \"Demonstrations\": \"User:"
        ));
    }
}

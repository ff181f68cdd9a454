//! What a run's examples look like before anything is trained on them: the label distribution of a
//! classification task (with case and whitespace variants folded and shown), the outputs outside
//! the answer set the instruction states, the rows that are empty, N/A, copies of their input or
//! of a demonstration, looping text, duplicates or contradictions, input and output lengths, the
//! languages of the inputs, and a few seeded random rows.
//!
//! Why: the paper's own analysis is that the generated data decides the result, and a run with
//! one class (or mostly "N/A") trains a model that answers the prior. [`diagnose`] is a pure
//! function over the examples and the parsed prompt, so the same numbers come out after
//! generation, after review and after assembly; [`crate::data::gate`] turns them into a go or a
//! refusal, and [`DataDiagnostics::to_markdown`] into a section of the reports and the card.
//!
//! When is a task a classification task? When the instruction states an answer set
//! ([`crate::data::label_set`]), else when the demonstrations' outputs are short and at least
//! half the usable rows give one of them, else when the usable outputs (not empty, not N/A) come
//! from 2 to [`MAX_DATA_CLASSES`] values and [`MIN_REPEATED_SHARE`] of the rows give a value
//! given at least twice.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use serde::{Deserialize, Serialize};

use crate::data::examples::Example;
use crate::data::label_set::{fold_label, quoted_spans, stated_labels};
use crate::prompt_parser::{detect_language, ParsedPrompt};
use crate::util::fs::{read_json, write_atomic, write_json};
use crate::util::rng::{salt, seeded_subset};
use crate::util::text::flat_excerpt;

/// The most classes a label set read from the data alone may have.
pub const MAX_DATA_CLASSES: usize = 20;
/// The share of usable rows whose output occurs at least twice, for the data alone to make a
/// classification task.
pub const MIN_REPEATED_SHARE: f64 = 0.8;
/// The most words of a demonstration's output, for the demonstrations to make a label set.
pub const MAX_LABEL_WORDS: usize = 3;
/// Random rows shown.
pub const SAMPLE_ROWS: usize = 5;
/// Characters of a shown input or output.
const SHOWN_CHARS: usize = 200;
/// Inputs shorter than this (characters) are too short to tell their language.
const MIN_LANGUAGE_CHARS: usize = 20;

/// Outputs that say "no answer" or are a template's field name, folded ([`fold_label`], then a
/// final `:` dropped).
const NOT_AVAILABLE: &[&str] = &[
    "n/a",
    "na",
    "none",
    "null",
    "nil",
    "nan",
    "unknown",
    "undefined",
    "not applicable",
    "no answer",
    "-",
    "--",
    "…",
    "...",
    "todo",
    "tbd",
    "output",
    "input",
    "answer",
    "label",
    "[output]",
    "<output>",
];

/// What a row was flagged for. A row can carry several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowFlag {
    /// The input or the output is blank.
    Empty,
    /// The output says there is no answer ("N/A", "none", "unknown") or is a template's field
    /// name ("Output:"), and is neither one of the task's labels nor an answer the prompt gives
    /// (a demonstration's output, a quoted value of the instruction).
    NotAvailable,
    /// The output is the input (folded).
    CopiesInput,
    /// The input is one of the prompt's demonstrations (folded).
    CopiesDemonstration,
    /// The input or output loops: most of its word trigrams (or, for text without spaces,
    /// character 4-grams) are repeats.
    RepeatedText,
    /// The same input and output (folded) as an earlier row.
    Duplicate,
    /// Another row has the same input (folded) with another output.
    ConflictingOutput,
    /// Classification with a known answer set: the output is none of its labels, even folded.
    OffFormat,
}

impl RowFlag {
    pub const ALL: [RowFlag; 8] = [
        RowFlag::Empty,
        RowFlag::NotAvailable,
        RowFlag::CopiesInput,
        RowFlag::CopiesDemonstration,
        RowFlag::RepeatedText,
        RowFlag::Duplicate,
        RowFlag::ConflictingOutput,
        RowFlag::OffFormat,
    ];

    /// How reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            RowFlag::Empty => "empty input or output",
            RowFlag::NotAvailable => "N/A or placeholder output",
            RowFlag::CopiesInput => "output copies the input",
            RowFlag::CopiesDemonstration => "input copies a demonstration",
            RowFlag::RepeatedText => "looping text",
            RowFlag::Duplicate => "duplicate of an earlier row",
            RowFlag::ConflictingOutput => "same input, another output elsewhere",
            RowFlag::OffFormat => "output outside the answer set",
        }
    }
}

/// Where a task's label set comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum LabelSource {
    /// The instruction states it; `phrase` is its sentence.
    Instruction { phrase: String },
    /// The demonstrations' outputs, which most generated rows repeat.
    Demonstrations,
    /// The generated outputs themselves: a few values, each repeated.
    Data,
}

impl LabelSource {
    pub fn describe(&self) -> String {
        match self {
            LabelSource::Instruction { phrase } => {
                format!("stated by the instruction (\"{phrase}\")")
            }
            LabelSource::Demonstrations => {
                "the demonstrations' outputs (short, and most generated rows give one)".into()
            }
            LabelSource::Data => {
                format!("the generated outputs (at most {MAX_DATA_CLASSES} values, each repeated)")
            }
        }
    }
}

/// The answer set of a classification task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    /// As the source spells them.
    pub labels: Vec<String>,
    pub source: LabelSource,
}

/// One spelling of a class in the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// The output, trimmed.
    pub text: String,
    pub rows: usize,
}

/// One class of a classification task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    /// The label as the label set spells it.
    pub label: String,
    pub rows: usize,
    /// Of the rows that give a label.
    pub share: f64,
    /// Every spelling in the data, most frequent first ("positive" 30, "Positive" 4).
    pub variants: Vec<Variant>,
}

/// The label distribution of a classification task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelDistribution {
    pub label_set: LabelSet,
    /// Every label of the set (missing ones with 0 rows), most rows first.
    pub classes: Vec<ClassCount>,
    /// Rows whose output is one of the labels (folded).
    pub labelled_rows: usize,
    /// Labelled rows whose output differs from the label's own spelling (case, spaces, quotes, a
    /// final stop): an exact-match metric counts them wrong.
    pub variant_rows: usize,
    /// Labels of the set no row gives.
    pub missing: Vec<String>,
    /// The largest class's label and share of the labelled rows.
    pub majority_label: Option<String>,
    pub majority_share: f64,
    /// Shannon entropy of the classes, bits; and divided by log2 of the set's size (1 = uniform).
    pub entropy_bits: f64,
    pub normalized_entropy: f64,
    /// The most frequent outputs outside the set (trimmed), with their counts: what "off format"
    /// looks like.
    pub off_format_outputs: Vec<Variant>,
}

/// Lengths of a text column, in characters (and mean words).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub min_chars: usize,
    pub median_chars: f64,
    pub mean_chars: f64,
    pub max_chars: usize,
    pub mean_words: f64,
}

/// One row shown in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// Its position in the examples (0-based).
    pub index: usize,
    /// Excerpts (whitespace flattened).
    pub input: String,
    pub output: String,
    pub flags: Vec<RowFlag>,
}

/// The diagnostics of one set of examples (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataDiagnostics {
    pub examples: usize,
    /// Present for a classification task.
    pub labels: Option<LabelDistribution>,
    /// Rows per flag (a row can count under several).
    pub flag_counts: BTreeMap<RowFlag, usize>,
    /// Rows with at least one flag, and their share of all rows.
    pub flagged_rows: usize,
    pub flagged_share: f64,
    /// Distinct inputs (folded).
    pub distinct_inputs: usize,
    /// The most frequent outputs (trimmed), with their counts (at most 5, only outputs given at
    /// least twice): a generation task whose outputs collapse to a few shows here.
    pub top_outputs: Vec<Variant>,
    pub input_length: LengthStats,
    pub output_length: LengthStats,
    /// The prompt's language and the inputs' languages (rows per language; inputs shorter than
    /// 20 characters are counted as `too short to tell`).
    pub prompt_language: String,
    pub input_languages: BTreeMap<String, usize>,
    /// Seeded random rows (seed and salt `diagnose`).
    pub sample: Vec<SampleRow>,
    /// Every row's flags, in order (not in the JSON: the review page and the gate's callers get
    /// them from here).
    #[serde(skip)]
    pub row_flags: Vec<Vec<RowFlag>>,
}

impl DataDiagnostics {
    /// A classification task: a label set was found.
    pub fn is_classification(&self) -> bool {
        self.labels.is_some()
    }

    /// The rows carrying `flag`.
    pub fn count(&self, flag: RowFlag) -> usize {
        self.flag_counts.get(&flag).copied().unwrap_or(0)
    }

    /// The share of all rows carrying `flag`.
    pub fn share(&self, flag: RowFlag) -> f64 {
        share(self.count(flag), self.examples)
    }

    /// The task's labels when it is a classification task.
    pub fn label_set(&self) -> Option<&[String]> {
        self.labels.as_ref().map(|l| l.label_set.labels.as_slice())
    }

    /// One line for a stage summary and `p2m runs show`, e.g. `60 examples; classification, 2
    /// labels, missing "negative", largest class 100 %; 26 flagged (43 %)`.
    pub fn summary_line(&self) -> String {
        let task = match &self.labels {
            Some(l) => format!(
                "classification, {} labels{}, largest class {:.0} %",
                l.label_set.labels.len(),
                if l.missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", missing {}",
                        l.missing.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ")
                    )
                },
                100.0 * l.majority_share
            ),
            None => "free-text outputs".into(),
        };
        format!(
            "{} examples; {task}; {} flagged ({:.0} %)",
            self.examples,
            self.flagged_rows,
            100.0 * self.flagged_share
        )
    }

    /// Write `<dir>/<stem>.json` and `<dir>/<stem>.md` (atomically) and return their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
        let json = dir.join(format!("{stem}.json"));
        let md = dir.join(format!("{stem}.md"));
        write_json(&json, self)?;
        write_atomic(&md, self.to_markdown().as_bytes())
            .with_context(|| format!("writing {}", md.display()))?;
        Ok(vec![json, md])
    }

    /// Read diagnostics written by [`DataDiagnostics::write`] (without the per-row flags).
    pub fn read(path: &Path) -> anyhow::Result<DataDiagnostics> {
        read_json(path, "not the data diagnostics of a run; delete it and run the stage again")
    }
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The diagnostics of `examples` made from `prompt`; `seed` draws the rows shown.
pub fn diagnose(examples: &[Example], prompt: &ParsedPrompt, seed: u64) -> DataDiagnostics {
    let n = examples.len();
    let inputs: Vec<String> = examples.iter().map(|e| fold_label(&e.input)).collect();
    let outputs: Vec<String> = examples.iter().map(|e| fold_label(&e.output)).collect();
    let label_set = find_label_set(examples, &outputs, prompt);
    let label_keys: Vec<String> = label_set
        .as_ref()
        .map(|s| s.labels.iter().map(|l| fold_label(l)).collect())
        .unwrap_or_default();
    let is_label = |key: &str| label_keys.iter().any(|k| k == key);
    // "No answer" values the prompt itself gives as answers (a demonstration's output, a quoted
    // 'N/A' in the instruction, as the paper's Temporal prompt does) are answers, not flags.
    let prompt_answers: Vec<String> = prompt
        .demonstrations
        .iter()
        .map(|d| fold_label(&d.output))
        .chain(quoted_spans(&prompt.instruction).iter().map(|q| fold_label(q)))
        .filter(|a| is_not_available(a))
        .collect();

    // Flags, row by row.
    let demo_inputs: Vec<String> =
        prompt.demonstrations.iter().map(|d| fold_label(&d.input)).collect();
    let mut outputs_by_input: HashMap<&str, Vec<&str>> = HashMap::new();
    for (i, o) in inputs.iter().zip(&outputs) {
        outputs_by_input.entry(i.as_str()).or_default().push(o.as_str());
    }
    let mut seen_pairs: HashMap<(&str, &str), usize> = HashMap::new();
    let mut row_flags = Vec::with_capacity(n);
    for (row, e) in examples.iter().enumerate() {
        let (input, output) = (inputs[row].as_str(), outputs[row].as_str());
        let mut flags = Vec::new();
        let blank = e.input.trim().is_empty() || e.output.trim().is_empty();
        let not_available = !blank
            && !is_label(output)
            && is_not_available(output)
            && !prompt_answers.iter().any(|a| a == output);
        if blank {
            flags.push(RowFlag::Empty);
        }
        if not_available {
            flags.push(RowFlag::NotAvailable);
        }
        if !blank && input == output {
            flags.push(RowFlag::CopiesInput);
        }
        if !input.is_empty() && demo_inputs.iter().any(|d| d == input) {
            flags.push(RowFlag::CopiesDemonstration);
        }
        if loops(&e.input) || loops(&e.output) {
            flags.push(RowFlag::RepeatedText);
        }
        if *seen_pairs.entry((input, output)).or_insert(row) != row {
            flags.push(RowFlag::Duplicate);
        }
        if !input.is_empty() && outputs_by_input[input].iter().any(|o| *o != output) {
            flags.push(RowFlag::ConflictingOutput);
        }
        if label_set.is_some() && !blank && !not_available && !is_label(output) {
            flags.push(RowFlag::OffFormat);
        }
        row_flags.push(flags);
    }
    let mut flag_counts: BTreeMap<RowFlag, usize> = BTreeMap::new();
    for flags in &row_flags {
        for f in flags {
            *flag_counts.entry(*f).or_default() += 1;
        }
    }
    let flagged_rows = row_flags.iter().filter(|f| !f.is_empty()).count();

    let labels = label_set.map(|set| label_distribution(set, examples, &outputs));

    let mut output_counts: HashMap<&str, usize> = HashMap::new();
    for e in examples {
        *output_counts.entry(e.output.trim()).or_default() += 1;
    }
    let top_outputs = most_frequent(output_counts, 5).into_iter().filter(|v| v.rows >= 2).collect();

    let mut input_languages: BTreeMap<String, usize> = BTreeMap::new();
    for e in examples {
        let language = if e.input.trim().chars().count() < MIN_LANGUAGE_CHARS {
            "too short to tell"
        } else {
            detect_language(&e.input).name()
        };
        *input_languages.entry(language.to_string()).or_default() += 1;
    }

    let sample = seeded_subset(n, SAMPLE_ROWS, seed, salt(b"diagnose"))
        .into_iter()
        .map(|i| SampleRow {
            index: i,
            input: flat_excerpt(&examples[i].input, SHOWN_CHARS),
            output: flat_excerpt(&examples[i].output, SHOWN_CHARS),
            flags: row_flags[i].clone(),
        })
        .collect();

    let mut distinct = inputs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    DataDiagnostics {
        examples: n,
        labels,
        flag_counts,
        flagged_rows,
        flagged_share: share(flagged_rows, n),
        distinct_inputs: distinct.len(),
        top_outputs,
        input_length: lengths(examples.iter().map(|e| e.input.as_str())),
        output_length: lengths(examples.iter().map(|e| e.output.as_str())),
        prompt_language: prompt.language.name().to_string(),
        input_languages,
        sample,
        row_flags,
    }
}

fn is_not_available(folded: &str) -> bool {
    let key = folded.trim_end_matches([':', '：']).trim();
    key.is_empty() || NOT_AVAILABLE.contains(&key)
}

/// The label set, by the first of the three sources that gives one (module docs).
fn find_label_set(
    examples: &[Example],
    outputs: &[String],
    prompt: &ParsedPrompt,
) -> Option<LabelSet> {
    if let Some(stated) = stated_labels(&prompt.instruction, &prompt.demonstrations) {
        return Some(LabelSet {
            labels: stated.labels,
            source: LabelSource::Instruction { phrase: stated.phrase },
        });
    }
    let usable: Vec<&str> = examples
        .iter()
        .zip(outputs)
        .filter(|(e, o)| !e.input.trim().is_empty() && !o.is_empty() && !is_not_available(o))
        .map(|(_, o)| o.as_str())
        .collect();
    if usable.is_empty() {
        return None;
    }
    let demos = &prompt.demonstrations;
    if demos.len() >= 2
        && demos.iter().all(|d| {
            let words = d.output.split_whitespace().count();
            (1..=MAX_LABEL_WORDS).contains(&words)
        })
    {
        let mut labels: Vec<String> = Vec::new();
        for d in demos {
            if !labels.iter().any(|l| fold_label(l) == fold_label(&d.output)) {
                labels.push(d.output.trim().to_string());
            }
        }
        let keys: Vec<String> = labels.iter().map(|l| fold_label(l)).collect();
        let fitting = usable.iter().filter(|o| keys.iter().any(|k| k == *o)).count();
        if labels.len() >= 2 && 2 * fitting >= usable.len() {
            return Some(LabelSet { labels, source: LabelSource::Demonstrations });
        }
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for o in &usable {
        *counts.entry(o).or_default() += 1;
    }
    let repeated: usize = counts.values().filter(|&&c| c >= 2).sum();
    if (2..=MAX_DATA_CLASSES).contains(&counts.len())
        && usable.len() >= 4
        && share(repeated, usable.len()) >= MIN_REPEATED_SHARE
    {
        // The most frequent spelling of each folded value names it.
        let mut spellings: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
        for (e, o) in examples.iter().zip(outputs) {
            if counts.get(o.as_str()).is_some_and(|&c| c >= 2) {
                *spellings.entry(o.as_str()).or_default().entry(e.output.trim()).or_default() += 1;
            }
        }
        let mut classes: Vec<(usize, String)> = spellings
            .into_iter()
            .map(|(key, s)| (counts[key], most_frequent(s, 1).remove(0).text))
            .collect();
        classes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        return Some(LabelSet {
            labels: classes.into_iter().map(|(_, l)| l).collect(),
            source: LabelSource::Data,
        });
    }
    None
}

/// `counts` as variants, most rows first, ties alphabetically; at most `k`.
fn most_frequent(counts: HashMap<&str, usize>, k: usize) -> Vec<Variant> {
    let mut v: Vec<Variant> =
        counts.into_iter().map(|(text, rows)| Variant { text: text.to_string(), rows }).collect();
    v.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.text.cmp(&b.text)));
    v.truncate(k);
    v
}

fn label_distribution(
    set: LabelSet,
    examples: &[Example],
    outputs: &[String],
) -> LabelDistribution {
    let keys: Vec<String> = set.labels.iter().map(|l| fold_label(l)).collect();
    let mut spellings: Vec<HashMap<&str, usize>> = vec![HashMap::new(); keys.len()];
    let mut off: HashMap<&str, usize> = HashMap::new();
    let mut variant_rows = 0;
    for (e, o) in examples.iter().zip(outputs) {
        let text = e.output.trim();
        match keys.iter().position(|k| k == o) {
            Some(c) => {
                *spellings[c].entry(text).or_default() += 1;
                if text != set.labels[c].trim() {
                    variant_rows += 1;
                }
            }
            None if !text.is_empty() && !is_not_available(o) => {
                *off.entry(text).or_default() += 1;
            }
            None => {}
        }
    }
    let labelled_rows: usize = spellings.iter().map(|s| s.values().sum::<usize>()).sum();
    let mut classes: Vec<ClassCount> = set
        .labels
        .iter()
        .zip(spellings)
        .map(|(label, s)| {
            let rows = s.values().sum();
            let variants = most_frequent(s, usize::MAX);
            ClassCount { label: label.clone(), rows, share: share(rows, labelled_rows), variants }
        })
        .collect();
    classes.sort_by_key(|c| std::cmp::Reverse(c.rows));
    let missing = classes.iter().filter(|c| c.rows == 0).map(|c| c.label.clone()).collect();
    let majority = classes.first().filter(|c| c.rows > 0);
    let entropy_bits: f64 = classes
        .iter()
        .filter(|c| c.rows > 0)
        .map(|c| -c.share * c.share.log2())
        .sum::<f64>()
        .max(0.0);
    let normalized_entropy =
        if classes.len() >= 2 { entropy_bits / (classes.len() as f64).log2() } else { 0.0 };
    LabelDistribution {
        majority_label: majority.map(|c| c.label.clone()),
        majority_share: majority.map_or(0.0, |c| c.share),
        label_set: set,
        classes,
        labelled_rows,
        variant_rows,
        missing,
        entropy_bits,
        normalized_entropy,
        off_format_outputs: most_frequent(off, 5),
    }
}

/// Whether `text` loops (see [`RowFlag::RepeatedText`]).
fn loops(text: &str) -> bool {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let repeats = |total: usize, distinct: usize| distinct * 2 < total;
    if words.len() >= 12 {
        let grams: Vec<&[String]> = words.windows(3).collect();
        let mut distinct = grams.clone();
        distinct.sort_unstable();
        distinct.dedup();
        return repeats(grams.len(), distinct.len());
    }
    let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if words.len() < 6 && chars.len() >= 30 {
        let grams: Vec<&[char]> = chars.windows(4).collect();
        let mut distinct = grams.clone();
        distinct.sort_unstable();
        distinct.dedup();
        return repeats(grams.len(), distinct.len());
    }
    false
}

fn lengths<'a>(texts: impl Iterator<Item = &'a str>) -> LengthStats {
    let (mut chars, mut words): (Vec<usize>, Vec<usize>) =
        texts.map(|t| (t.chars().count(), t.split_whitespace().count())).unzip();
    if chars.is_empty() {
        return LengthStats::default();
    }
    chars.sort_unstable();
    let n = chars.len();
    let median = if n % 2 == 1 {
        chars[n / 2] as f64
    } else {
        (chars[n / 2 - 1] + chars[n / 2]) as f64 / 2.0
    };
    words.sort_unstable();
    LengthStats {
        min_chars: chars[0],
        median_chars: median,
        mean_chars: chars.iter().sum::<usize>() as f64 / n as f64,
        max_chars: chars[n - 1],
        mean_words: words.iter().sum::<usize>() as f64 / n as f64,
    }
}

/// A Markdown table cell: `|` escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

impl DataDiagnostics {
    /// The diagnostics as a Markdown section (for the generation report, the run summary and the
    /// model card), under a `###` heading.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let pct = |x: f64| format!("{:.1} %", 100.0 * x);
        let _ = writeln!(md, "### The data: {} examples\n", self.examples);
        match &self.labels {
            Some(d) => {
                let _ = writeln!(
                    md,
                    "Classification: {} labels, {}.\n",
                    d.label_set.labels.len(),
                    d.label_set.source.describe()
                );
                let _ = writeln!(md, "| label | rows | share | spellings in the data |");
                let _ = writeln!(md, "|---|---:|---:|---|");
                for c in &d.classes {
                    let spellings = c
                        .variants
                        .iter()
                        .map(|v| format!("\"{}\" {}", cell(&v.text), v.rows))
                        .collect::<Vec<_>>()
                        .join(" + ");
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        cell(&c.label),
                        c.rows,
                        pct(c.share),
                        if spellings.is_empty() { "—".into() } else { spellings }
                    );
                }
                let _ = writeln!(
                    md,
                    "\n{} of {} rows give a label; entropy {:.2} bits ({:.2} of the uniform); largest class {}.",
                    d.labelled_rows,
                    self.examples,
                    d.entropy_bits,
                    d.normalized_entropy,
                    match &d.majority_label {
                        Some(l) => format!("\"{}\" at {}", cell(l), pct(d.majority_share)),
                        None => "none".into(),
                    }
                );
                if !d.missing.is_empty() {
                    let _ = writeln!(
                        md,
                        "\n**Missing classes**: {} (no generated row has them).",
                        d.missing
                            .iter()
                            .map(|l| format!("\"{}\"", cell(l)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                if d.variant_rows > 0 {
                    let _ = writeln!(
                        md,
                        "\n{} rows spell their label differently from the set (case, spaces, quotes, a final stop): exact match counts those wrong.",
                        d.variant_rows
                    );
                }
                if !d.off_format_outputs.is_empty() {
                    let _ = writeln!(
                        md,
                        "\nOutside the answer set ({} rows), most frequent: {}.",
                        self.count(RowFlag::OffFormat),
                        d.off_format_outputs
                            .iter()
                            .map(|v| format!("\"{}\" {}", cell(&flat_excerpt(&v.text, 60)), v.rows))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            None => {
                let _ = writeln!(
                    md,
                    "Generation: the outputs are free text (no answer set stated or seen)."
                );
                if !self.top_outputs.is_empty() {
                    let _ = writeln!(
                        md,
                        "\nMost frequent outputs: {}.",
                        self.top_outputs
                            .iter()
                            .map(|v| format!("\"{}\" {}", cell(&flat_excerpt(&v.text, 60)), v.rows))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        let _ = writeln!(
            md,
            "\n**Flagged rows: {} of {} ({})**; {} distinct inputs.\n",
            self.flagged_rows,
            self.examples,
            pct(self.flagged_share),
            self.distinct_inputs
        );
        let _ = writeln!(md, "| flag | rows | share |");
        let _ = writeln!(md, "|---|---:|---:|");
        for flag in RowFlag::ALL {
            let rows = self.count(flag);
            if rows > 0 {
                let _ =
                    writeln!(md, "| {} | {} | {} |", flag.describe(), rows, pct(self.share(flag)));
            }
        }
        if self.flagged_rows == 0 {
            let _ = writeln!(md, "| none | 0 | 0.0 % |");
        }
        let _ = writeln!(md, "\n| lengths (characters) | min | median | mean | max | mean words |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for (name, l) in [("input", &self.input_length), ("output", &self.output_length)] {
            let _ = writeln!(
                md,
                "| {name} | {} | {:.1} | {:.1} | {} | {:.1} |",
                l.min_chars, l.median_chars, l.mean_chars, l.max_chars, l.mean_words
            );
        }
        let _ = writeln!(
            md,
            "\nLanguages of the inputs (the prompt's: {}): {}.",
            self.prompt_language,
            self.input_languages
                .iter()
                .map(|(l, n)| format!("{l} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !self.sample.is_empty() {
            let _ = writeln!(md, "\n| row | input | output | flags |");
            let _ = writeln!(md, "|---:|---|---|---|");
            for r in &self.sample {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    r.index,
                    cell(&r.input),
                    cell(&r.output),
                    r.flags.iter().map(|f| f.describe()).collect::<Vec<_>>().join("; ")
                );
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentiment_prompt() -> ParsedPrompt {
        ParsedPrompt::new(
            "Given a product review, answer \"positive\" or \"negative\".",
            vec![
                Example::new("I love it, works great.", "positive"),
                Example::new("Broke after two days.", "negative"),
                Example::new("Exactly what I needed.", "positive"),
            ],
        )
    }

    /// The issue's data: one class (two spellings), N/A, placeholders, off-format answers and
    /// a looping row that copies its input.
    fn degenerate() -> Vec<Example> {
        let mut rows = Vec::new();
        for i in 0..30 {
            rows.push(Example::new(
                format!("Review {i}: the product is fine and arrived on time."),
                "positive",
            ));
        }
        for i in 0..4 {
            rows.push(Example::new(
                format!("Review {} of a blender that works well.", i + 30),
                "Positive",
            ));
        }
        for i in 0..20 {
            rows.push(Example::new(format!("Review {} about shoes.", i + 40), "N/A"));
        }
        rows.push(Example::new("Review about a lamp.", "Output:"));
        rows.push(Example::new("Review about a chair.", "Satisfied"));
        let junk = "This is a JSON file with a lot of data. This is a JSON file with a lot of data. This is a JSON file with a lot of data.";
        for _ in 0..3 {
            rows.push(Example::new(junk, junk));
        }
        rows.push(Example::new("I love it, works great.", "positive"));
        rows
    }

    #[test]
    fn the_issues_data_one_class_na_rows_and_off_format_outputs() {
        let rows = degenerate();
        let d = diagnose(&rows, &sentiment_prompt(), 7);
        assert_eq!(d.examples, 60);
        let l = d.labels.as_ref().expect("the instruction states a label set");
        assert!(matches!(l.label_set.source, LabelSource::Instruction { .. }));
        assert_eq!(l.labelled_rows, 35);
        assert_eq!(l.classes[0].label, "positive");
        assert_eq!(l.classes[0].rows, 35);
        assert_eq!(
            l.classes[0].variants,
            [
                Variant { text: "positive".into(), rows: 31 },
                Variant { text: "Positive".into(), rows: 4 }
            ]
        );
        assert_eq!(l.variant_rows, 4);
        assert_eq!(l.missing, ["negative"]);
        assert_eq!(l.majority_share, 1.0);
        assert_eq!(l.entropy_bits, 0.0);
        assert_eq!(d.count(RowFlag::NotAvailable), 21, "N/A and Output:");
        // "Satisfied" and the looping junk are outside the answer set.
        assert_eq!(d.count(RowFlag::OffFormat), 4);
        assert_eq!(l.off_format_outputs[0].rows, 3);
        assert_eq!(l.off_format_outputs[1], Variant { text: "Satisfied".into(), rows: 1 });
        assert_eq!(d.count(RowFlag::CopiesInput), 3);
        assert_eq!(d.count(RowFlag::RepeatedText), 3);
        assert_eq!(d.count(RowFlag::Duplicate), 2);
        assert_eq!(d.count(RowFlag::CopiesDemonstration), 1);
        assert_eq!(d.flagged_rows, 21 + 1 + 3 + 1);
        assert_eq!(d.sample.len(), SAMPLE_ROWS);
        assert_eq!(d.sample, diagnose(&rows, &sentiment_prompt(), 7).sample, "seeded");
        let md = d.to_markdown();
        for needle in [
            "**Missing classes**: \"negative\"",
            "\"positive\" 31 + \"Positive\" 4",
            "| N/A or placeholder output | 21 | 35.0 % |",
            "\"Satisfied\" 1",
        ] {
            assert!(md.contains(needle), "{needle} in\n{md}");
        }
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["labels"]["label_set"]["source"]["from"], "instruction");
        assert_eq!(json["flag_counts"]["not_available"], 21);
        assert!(json.get("row_flags").is_none());
        assert_eq!(
            d.summary_line(),
            "60 examples; classification, 2 labels, missing \"negative\", largest class 100 %; 26 flagged (43 %)"
        );
        assert_eq!(d.label_set().unwrap(), ["positive", "negative"]);
        let dir = tempfile::tempdir().unwrap();
        let files = d.write(dir.path(), "diagnostics").unwrap();
        assert_eq!(std::fs::read_to_string(&files[1]).unwrap(), md);
        let back = DataDiagnostics::read(&files[0]).unwrap();
        assert_eq!(back, DataDiagnostics { row_flags: Vec::new(), ..d });
    }

    #[test]
    fn a_balanced_classification_set_has_full_entropy_and_no_flags() {
        let rows: Vec<Example> = (0..40)
            .map(|i| {
                let label = if i % 2 == 0 { "positive" } else { "negative" };
                Example::new(format!("Review number {i} of a kettle."), label)
            })
            .collect();
        let d = diagnose(&rows, &sentiment_prompt(), 0);
        let l = d.labels.clone().unwrap();
        assert_eq!(l.missing, Vec::<String>::new());
        assert_eq!(l.majority_share, 0.5);
        assert!((l.entropy_bits - 1.0).abs() < 1e-12 && (l.normalized_entropy - 1.0).abs() < 1e-12);
        assert_eq!((d.flagged_rows, d.distinct_inputs), (0, 40));
        assert!(d.to_markdown().contains("| none | 0 | 0.0 % |"));
    }

    #[test]
    fn label_sets_from_the_demonstrations_and_from_the_data() {
        // No stated set; short demonstration outputs that most rows repeat.
        let prompt = ParsedPrompt::new(
            "Decide the topic of the headline.",
            vec![Example::new("Stocks fall", "business"), Example::new("Team wins cup", "sports")],
        );
        let rows: Vec<Example> = (0..10)
            .map(|i| {
                Example::new(format!("Headline {i}"), if i < 7 { "business" } else { "weather" })
            })
            .collect();
        let l = diagnose(&rows, &prompt, 0).labels.unwrap();
        assert_eq!(l.label_set.source, LabelSource::Demonstrations);
        assert_eq!(l.missing, ["sports"]);
        assert_eq!(l.off_format_outputs, [Variant { text: "weather".into(), rows: 3 }]);
        // No demonstrations: a few repeated values make the set.
        let bare = ParsedPrompt::new("Decide the topic of the headline.", vec![]);
        let rows: Vec<Example> = (0..12)
            .map(|i| Example::new(format!("Headline {i}"), ["World", "world", "Tech"][i % 3]))
            .collect();
        let d = diagnose(&rows, &bare, 0);
        let l = d.labels.clone().unwrap();
        assert_eq!(l.label_set.source, LabelSource::Data);
        assert_eq!(l.label_set.labels, ["World", "Tech"]);
        assert_eq!(l.classes[0].rows, 8);
        assert_eq!(d.count(RowFlag::OffFormat), 0);
    }

    #[test]
    fn free_text_is_a_generation_task() {
        let prompt = ParsedPrompt::new(
            "Given the name of a country, answer with the name of its capital city.",
            vec![Example::new("France", "Paris"), Example::new("Japan", "Tokyo")],
        );
        let rows: Vec<Example> = ["Spain", "Italy", "Peru", "Chile", "Spain", "Kenya"]
            .iter()
            .zip(["Madrid", "Rome", "Lima", "Santiago", "Barcelona", "Nairobi"])
            .map(|(i, o)| Example::new(*i, o))
            .collect();
        let d = diagnose(&rows, &prompt, 0);
        assert!(!d.is_classification());
        assert_eq!(d.count(RowFlag::ConflictingOutput), 2);
        assert_eq!(d.count(RowFlag::Duplicate), 0);
        assert_eq!(d.distinct_inputs, 5);
        assert_eq!(d.input_languages["too short to tell"], 6);
        assert!(d.to_markdown().contains("Generation: the outputs are free text"));
        let empty = diagnose(&[], &prompt, 0);
        assert_eq!((empty.examples, empty.flagged_share, empty.sample.len()), (0, 0.0, 0));
    }

    #[test]
    fn no_answer_is_an_answer_where_the_prompt_says_so() {
        let rows: Vec<Example> = (0..4)
            .map(|i| Example::new(format!("[Posted: 2020-01-0{i}] Nothing happened."), "N/A"))
            .collect();
        let plain = ParsedPrompt::new("Give the dates the text refers to.", vec![]);
        assert_eq!(diagnose(&rows, &plain, 0).count(RowFlag::NotAvailable), 4);
        let said =
            ParsedPrompt::new("Give the dates; if there is none, the output is 'N/A'.", vec![]);
        assert_eq!(diagnose(&rows, &said, 0).count(RowFlag::NotAvailable), 0);
        let shown = ParsedPrompt::new(
            "Give the dates the text refers to.",
            vec![Example::new("[Posted: 2020-01-01] Hello.", "N/A")],
        );
        assert_eq!(diagnose(&rows, &shown, 0).count(RowFlag::NotAvailable), 0);
    }

    #[test]
    fn looping_text_and_lengths() {
        assert!(loops("the cat the cat the cat the cat the cat the cat the cat"));
        assert!(!loops(
            "A quick brown fox jumps over the lazy dog near the quiet river bank today."
        ));
        assert!(loops("ははははははははははははははははははははははははははははははははは"));
        assert!(!loops("東京は日本の首都であり、人口が最も多い都市として知られている大都市です。"));
        let l = lengths(["ab", "abcd", "abcdef"].into_iter());
        assert_eq!((l.min_chars, l.median_chars, l.mean_chars, l.max_chars), (2, 4.0, 4.0, 6));
    }
}

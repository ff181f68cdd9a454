//! Choosing among the candidates: the LLM's rerank (majority over sampled votes) and column
//! choice, a config file, or a person at the terminal.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::index::Candidate;
use super::textualise::{check_columns, ColumnChoice};
use crate::teacher::{ChatRequest, SamplingParams, Teacher};
use crate::util::json_scan::first_json_object;
use crate::util::text::flat_excerpt;

pub fn rerank_prompt(instruction: &str, candidates: &[Candidate]) -> String {
    let mut p = format!(
        "A user wants to train a model for this task:\n\"{}\"\n\nHere are candidate datasets from the Hugging Face hub:\n",
        instruction.trim()
    );
    for c in candidates {
        p.push_str(&format!("- {}: {}\n", c.name, flat_excerpt(&c.description, 300)));
    }
    p.push_str(RERANK_QUESTION);
    p
}

/// The question after the candidates (on one line: the JSON shape is part of the prompt).
const RERANK_QUESTION: &str = "\nWhich one dataset is the most useful training data for the task? Answer with JSON only, {\"name\": \"<dataset name exactly as listed>\"}, or {\"name\": null} if none is suitable.\n";

#[derive(Debug, Clone, Serialize)]
pub struct RerankOutcome {
    /// The majority choice (ties: the better-ranked candidate); `None` when every vote abstained.
    pub chosen: Option<String>,
    pub votes: BTreeMap<String, usize>,
    /// Votes for no dataset, for a name that is not a candidate, or unparseable.
    pub abstentions: usize,
}

/// The JSON Schema of a rerank vote, `{"name": <a candidate's name> | null}`, sent to HTTP
/// teachers as structured output (see [`crate::teacher::structured`]).
pub fn rerank_schema(candidates: &[Candidate]) -> serde_json::Value {
    let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
    serde_json::json!({
        "type": "object",
        "properties": {"name": {"anyOf": [{"type": "string", "enum": names}, {"type": "null"}]}},
        "required": ["name"],
        "additionalProperties": false,
    })
}

/// The JSON Schema of a column choice, `{"input": [<column>, …], "output": <column>}`.
pub fn column_schema(columns: &[String]) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "input": {"type": "array", "items": {"type": "string", "enum": columns}},
            "output": {"type": "string", "enum": columns},
        },
        "required": ["input", "output"],
        "additionalProperties": false,
    })
}

/// Count votes: each answer must name a candidate exactly.
pub fn tally_votes(answers: &[String], candidates: &[Candidate]) -> RerankOutcome {
    let mut votes: BTreeMap<String, usize> = BTreeMap::new();
    let mut abstentions = 0;
    for a in answers {
        let name = first_json_object(a)
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
        match name {
            Some(n) if candidates.iter().any(|c| c.name == n) => *votes.entry(n).or_default() += 1,
            _ => abstentions += 1,
        }
    }
    let chosen = candidates
        .iter()
        .filter(|c| votes.contains_key(&c.name))
        .max_by(|a, b| votes[&a.name].cmp(&votes[&b.name]).then(b.rank.cmp(&a.rank)))
        .map(|c| c.name.clone());
    RerankOutcome { chosen, votes, abstentions }
}

/// Ask the teacher `votes` times (one request, `n = votes`, temperature 0.7) which candidate fits.
pub async fn llm_rerank(
    teacher: &dyn Teacher,
    instruction: &str,
    candidates: &[Candidate],
    votes: u32,
    seed: u64,
) -> Result<RerankOutcome> {
    let params = SamplingParams {
        temperature: 0.7,
        n: votes.max(1),
        max_tokens: Some(60),
        seed: Some(seed),
        json_schema: Some(rerank_schema(candidates)),
        ..Default::default()
    };
    let response = teacher
        .chat(&ChatRequest::user(rerank_prompt(instruction, candidates), params))
        .await
        .context("dataset reranking: the teacher did not answer")?;
    let answers: Vec<String> = response.choices.into_iter().map(|c| c.content).collect();
    Ok(tally_votes(&answers, candidates))
}

/// Validate an LLM's column answer (`{"input": [...], "output": "..."}`) against the columns.
pub fn validate_column_choice(answer: &str, columns: &[String]) -> Result<ColumnChoice, String> {
    let v = first_json_object(answer).ok_or("no JSON object in the answer")?;
    let input: Vec<String> = match v.get("input") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or("`input` must be a list of column names"))
            .collect::<Result<_, _>>()?,
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => return Err("field `input` (a list of column names) is missing".into()),
    };
    let output = match v.get("output") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => return Err("field `output` (one column name) is missing".into()),
    };
    check_columns(&ColumnChoice { input, output }, columns)
}

pub fn column_prompt(
    instruction: &str,
    dataset: &str,
    description: &str,
    columns: &[String],
    example: &BTreeMap<String, String>,
) -> String {
    let mut p = format!(
        "A user wants to train a model for this task:\n\"{}\"\n\nThe dataset `{dataset}` ({}) has the columns: {}.\nAn example row:\n",
        instruction.trim(),
        flat_excerpt(description, 200),
        columns.join(", ")
    );
    for c in columns {
        p.push_str(&format!(
            "{c}: {}\n",
            flat_excerpt(example.get(c).map(String::as_str).unwrap_or(""), 200)
        ));
    }
    p.push_str("\nWhich columns should be the model's input, and which single column is the output it must produce? Answer with JSON only: {\"input\": [\"<column>\", ...], \"output\": \"<column>\"}\n");
    p
}

/// Ask the teacher for columns (temperature 0, then sampled retries) until an answer validates.
pub async fn llm_select_columns(
    teacher: &dyn Teacher,
    instruction: &str,
    dataset: &str,
    description: &str,
    columns: &[String],
    example: &BTreeMap<String, String>,
    attempts: u32,
) -> Result<ColumnChoice> {
    let prompt = column_prompt(instruction, dataset, description, columns, example);
    let mut problems = Vec::new();
    for attempt in 0..attempts.max(1) {
        let params = SamplingParams {
            temperature: if attempt == 0 { 0.0 } else { 0.7 },
            n: 1,
            max_tokens: Some(80),
            seed: Some(attempt as u64),
            json_schema: Some(column_schema(columns)),
            ..Default::default()
        };
        let response = teacher
            .chat(&ChatRequest::user(prompt.clone(), params))
            .await
            .context("column selection: the teacher did not answer")?;
        let answer = response.choices.first().map(|c| c.content.clone()).unwrap_or_default();
        match validate_column_choice(&answer, columns) {
            Ok(choice) => return Ok(choice),
            Err(e) => problems.push(format!("attempt {}: {e}", attempt + 1)),
        }
    }
    bail!(
        "column selection for `{dataset}`: no valid answer from the teacher ({}); name the columns with --config or --interactive",
        problems.join("; ")
    )
}

// ---------------------------------------------------------------------------------------------
// The non-LLM paths: a config file or the terminal

/// `--config FILE` (TOML): the dataset and its columns, chosen by a person.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// A name of the dataset index (e.g. `squad`).
    pub dataset: String,
    /// The hub config to load when the dataset comes from the hub (e.g. `plain_text`).
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub input_columns: Vec<String>,
    #[serde(default)]
    pub output_column: Option<String>,
    #[serde(default)]
    pub max_rows_per_split: Option<usize>,
}

impl SelectionConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}\n  expected: dataset = \"squad\", config = \"plain_text\" (optional), input_columns = [\"question\", \"context\"], output_column = \"answers\"", path.display()))
    }
}

fn read_line(input: &mut dyn BufRead) -> Result<String> {
    let mut line = String::new();
    input.read_line(&mut line).context("reading the terminal")?;
    Ok(line.trim().to_string())
}

/// List the candidates and let the user pick one by number (empty answer: none).
pub fn interactive_pick(
    candidates: &[Candidate],
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<Option<usize>> {
    writeln!(out, "Datasets retrieved for your instruction (✓ = loadable here):")?;
    for (i, c) in candidates.iter().enumerate() {
        writeln!(
            out,
            "{:>3}) {} {:<40} {}",
            i + 1,
            if c.loadable() { "✓" } else { " " },
            c.name,
            flat_excerpt(&c.description, 100)
        )?;
    }
    loop {
        write!(out, "Which dataset should be used? Give a number 1–{} (Enter: none, use generated data only): ", candidates.len())?;
        out.flush()?;
        let answer = read_line(input)?;
        if answer.is_empty() {
            return Ok(None);
        }
        match answer.parse::<usize>() {
            Ok(n) if (1..=candidates.len()).contains(&n) => return Ok(Some(n - 1)),
            _ => writeln!(out, "`{answer}` is not a number between 1 and {}.", candidates.len())?,
        }
    }
}

/// Show the columns and an example row; read the input columns and the output column.
pub fn interactive_columns(
    columns: &[String],
    example: &BTreeMap<String, String>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<ColumnChoice> {
    writeln!(out, "Example row:")?;
    for c in columns {
        writeln!(
            out,
            "  {c}: {}",
            flat_excerpt(example.get(c).map(String::as_str).unwrap_or(""), 120)
        )?;
    }
    loop {
        write!(out, "Input column(s), comma-separated, from {}: ", columns.join(", "))?;
        out.flush()?;
        let inputs: Vec<String> = read_line(input)?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        write!(out, "Output column (one of {}): ", columns.join(", "))?;
        out.flush()?;
        let output = read_line(input)?;
        match check_columns(&ColumnChoice { input: inputs, output }, columns) {
            Ok(c) => return Ok(c),
            Err(e) => writeln!(out, "{e}; try again.")?,
        }
    }
}

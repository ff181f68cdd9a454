//! `{input, output}` examples: the unit of data every stage passes on (generated, retrieved,
//! annotated), and their files (JSON lines for people and tools, parquet for analysis).

use std::path::Path;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util::fs::write_atomic;

/// One `(input, output)` example.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub input: String,
    pub output: String,
}

impl Example {
    pub fn new(input: impl Into<String>, output: impl Into<String>) -> Self {
        Example { input: input.into(), output: output.into() }
    }
}

/// Examples as JSON lines `{"input": …, "output": …}`, written atomically.
pub fn write_examples_jsonl(path: &Path, examples: &[Example]) -> std::io::Result<()> {
    let mut s = String::new();
    for e in examples {
        s.push_str(&serde_json::to_string(e).expect("serialisable"));
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

/// Read examples written by [`write_examples_jsonl`] (blank lines skipped; a bad line is an
/// `InvalidData` error naming its line number).
pub fn read_examples_jsonl(path: &Path) -> std::io::Result<Vec<Example>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {}: {e} (each line must be a JSON object {{\"input\": \"…\", \"output\": \"…\"}})", i + 1),
                )
            })
        })
        .collect()
}

/// The examples as a frame with columns `input` and `output`.
pub fn examples_frame(examples: &[Example]) -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(vec![
        Column::new("input".into(), examples.iter().map(|e| e.input.clone()).collect::<Vec<_>>()),
        Column::new("output".into(), examples.iter().map(|e| e.output.clone()).collect::<Vec<_>>()),
    ])
}

/// Write the examples as parquet (atomically).
pub fn write_examples_parquet(path: &Path, examples: &[Example]) -> anyhow::Result<()> {
    crate::util::fs::write_parquet_atomic(&examples_frame(examples)?, path)
}

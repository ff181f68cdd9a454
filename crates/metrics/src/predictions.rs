//! Reading a user's predictions file for `p2m score`: JSONL, CSV or parquet, with the prediction
//! column and one or more reference columns named by the user. A reference column may hold a
//! string or a list of strings (several references per row).

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
}

impl Format {
    /// Every format, by the name the command line uses.
    pub const ALL: [(&'static str, Format); 3] =
        [("jsonl", Format::Jsonl), ("csv", Format::Csv), ("parquet", Format::Parquet)];

    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name.trim())).map(|(_, f)| f)
    }

    pub fn from_path(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("jsonl") | Some("ndjson") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some("parquet") => Ok(Format::Parquet),
            _ => bail!(
                "{}: cannot tell the format from the extension; pass --format jsonl|csv|parquet",
                path.display()
            ),
        }
    }
}

/// Predictions and per-row references.
pub struct Scored {
    pub predictions: Vec<String>,
    pub references: Vec<Vec<String>>,
}

pub fn read(
    path: &Path,
    format: Format,
    prediction_col: &str,
    reference_cols: &[String],
) -> Result<Scored> {
    if reference_cols.is_empty() {
        bail!("name at least one reference column with --reference-col");
    }
    match format {
        Format::Jsonl => read_jsonl(path, prediction_col, reference_cols),
        Format::Csv => {
            let df = CsvReadOptions::default()
                .with_has_header(true)
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(|e| anyhow!("{}: not a readable CSV file: {e}", path.display()))?;
            from_frame(path, &df, prediction_col, reference_cols)
        }
        Format::Parquet => {
            let df = crate::frame::read_parquet(path)?;
            from_frame(path, &df, prediction_col, reference_cols)
        }
    }
}

fn read_jsonl(path: &Path, prediction_col: &str, reference_cols: &[String]) -> Result<Scored> {
    let text = fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut predictions = Vec::new();
    let mut references = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let obj = value.as_object().ok_or_else(|| anyhow!("{}: expected a JSON object", at()))?;
        let pred = match obj.get(prediction_col) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) => String::new(),
            Some(other) => {
                bail!("{}: field `{prediction_col}` must be a string, found {other}", at())
            }
            None => bail!(
                "{}: no field `{prediction_col}` (set the prediction field with --prediction-col)",
                at()
            ),
        };
        let mut refs = Vec::new();
        for col in reference_cols {
            match obj.get(col.as_str()) {
                Some(serde_json::Value::String(s)) => refs.push(s.clone()),
                Some(serde_json::Value::Array(items)) => {
                    for item in items {
                        refs.push(
                            item.as_str()
                                .ok_or_else(|| {
                                    anyhow!(
                                        "{}: field `{col}` must hold strings, found {item}",
                                        at()
                                    )
                                })?
                                .to_string(),
                        );
                    }
                }
                Some(other) => bail!(
                    "{}: field `{col}` must be a string or a list of strings, found {other}",
                    at()
                ),
                None => bail!(
                    "{}: no field `{col}` (set the reference field(s) with --reference-col)",
                    at()
                ),
            }
        }
        predictions.push(pred);
        references.push(refs);
    }
    if predictions.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(Scored { predictions, references })
}

fn from_frame(
    path: &Path,
    df: &DataFrame,
    prediction_col: &str,
    reference_cols: &[String],
) -> Result<Scored> {
    let names = df.get_column_names_owned();
    let missing = |c: &str| {
        anyhow!(
            "{}: no column `{c}` (columns: {})",
            path.display(),
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    if df.column(prediction_col).is_err() {
        return Err(missing(prediction_col));
    }
    let predictions = crate::frame::string_column(df, prediction_col)?;
    let mut references = vec![Vec::new(); df.height()];
    for col in reference_cols {
        let c = df.column(col).map_err(|_| missing(col))?;
        if matches!(c.dtype(), DataType::List(_)) {
            for (row, refs) in crate::frame::string_list_column(df, col)?.into_iter().enumerate() {
                references[row].extend(refs);
            }
        } else {
            for (row, r) in crate::frame::string_column(df, col)?.into_iter().enumerate() {
                references[row].push(r);
            }
        }
    }
    if predictions.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(Scored { predictions, references })
}

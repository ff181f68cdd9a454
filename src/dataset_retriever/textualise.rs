//! A chosen dataset as `{input, references}` rows: raw splits with their source's column names,
//! the chosen columns written as `col: value` lines, saved in the registry's common schema.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::registry::{Registry, ResolvedFile};
use crate::util::fs::write_atomic;

/// Local formats with a loader for retrieval.
pub const LOADABLE_FORMATS: &[&str] =
    &["squad-json", "conala-json", "temporal-json", "p2m-hf-disk"];

/// Input columns and one output column of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnChoice {
    pub input: Vec<String>,
    pub output: String,
}

pub(crate) fn check_columns(
    choice: &ColumnChoice,
    columns: &[String],
) -> Result<ColumnChoice, String> {
    if choice.input.is_empty() {
        return Err("no input column".into());
    }
    for c in choice.input.iter().chain(std::iter::once(&choice.output)) {
        if !columns.contains(c) {
            return Err(format!("`{c}` is not a column (columns: {})", columns.join(", ")));
        }
    }
    if choice.input.contains(&choice.output) {
        return Err(format!("the output column `{}` is also an input column", choice.output));
    }
    Ok(choice.clone())
}

/// One column of a raw split: text, or a list of texts (SQuAD's answers).
#[derive(Debug, Clone)]
pub enum RawColumn {
    Text(Vec<String>),
    List(Vec<Vec<String>>),
}

impl RawColumn {
    fn len(&self) -> usize {
        match self {
            RawColumn::Text(v) => v.len(),
            RawColumn::List(v) => v.len(),
        }
    }
    fn text(&self, i: usize) -> String {
        match self {
            RawColumn::Text(v) => v[i].clone(),
            RawColumn::List(v) => v[i].join(" | "),
        }
    }
}

/// A split of a local dataset with the source's own column names.
pub struct RawSplit {
    pub split: String,
    pub ids: Vec<String>,
    pub columns: Vec<(String, RawColumn)>,
}

impl RawSplit {
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|(n, _)| n.clone()).collect()
    }
    pub fn rows(&self) -> usize {
        self.ids.len()
    }
    pub fn example(&self, row: usize) -> BTreeMap<String, String> {
        self.columns
            .iter()
            .filter(|(_, c)| row < c.len())
            .map(|(n, c)| (n.clone(), c.text(row)))
            .collect()
    }
    fn column(&self, name: &str) -> Option<&RawColumn> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// Load a local dataset with its source's column names (what a hub copy of it would have).
pub fn load_raw(
    registry: &Registry,
    registry_id: &str,
) -> Result<(Vec<RawSplit>, Vec<ResolvedFile>)> {
    let entry = registry.dataset(registry_id)?;
    let loaded = crate::data::loaders::load_dataset(registry, registry_id)?;
    let df = &loaded.frame;
    let text = |c: &str| {
        crate::data::loaders::string_column(df, c)
            .map_err(|e| anyhow::anyhow!("{registry_id}: column `{c}`: {e}"))
    };
    let refs = crate::data::loaders::string_list_column(df, crate::data::loaders::REFERENCES)?;
    let first = |r: &Vec<Vec<String>>| {
        r.iter().map(|x| x.first().cloned().unwrap_or_default()).collect::<Vec<_>>()
    };
    let columns = match entry.format.as_str() {
        "squad-json" => vec![
            ("title".to_string(), RawColumn::Text(text("title")?)),
            ("context".to_string(), RawColumn::Text(text("context")?)),
            ("question".to_string(), RawColumn::Text(text("question")?)),
            ("answers".to_string(), RawColumn::List(refs)),
        ],
        "conala-json" => vec![
            ("intent".to_string(), RawColumn::Text(text("intent")?)),
            ("rewritten_intent".to_string(), RawColumn::Text(text(crate::data::loaders::INPUT)?)),
            ("snippet".to_string(), RawColumn::Text(first(&refs))),
        ],
        "temporal-json" => vec![
            ("input".to_string(), RawColumn::Text(text(crate::data::loaders::INPUT)?)),
            ("output".to_string(), RawColumn::Text(first(&refs))),
        ],
        // NQ-Open's hub columns: `question` and `answer` (a list).
        "p2m-hf-disk" => vec![
            ("question".to_string(), RawColumn::Text(text(crate::data::loaders::INPUT)?)),
            ("answer".to_string(), RawColumn::List(refs)),
        ],
        other => bail!(
            "dataset `{registry_id}` has format `{other}`, which has no loader for retrieval ({})",
            LOADABLE_FORMATS.join(", ")
        ),
    };
    let split = entry.splits.first().cloned().unwrap_or_else(|| "train".into());
    Ok((vec![RawSplit { split, ids: text(crate::data::loaders::ID)?, columns }], loaded.files))
}

/// The natural columns of each local format (used when nobody chose).
pub fn default_columns(format: &str) -> Option<ColumnChoice> {
    let c = |i: &[&str], o: &str| {
        Some(ColumnChoice {
            input: i.iter().map(|s| s.to_string()).collect(),
            output: o.to_string(),
        })
    };
    match format {
        "squad-json" => c(&["question", "context"], "answers"),
        "conala-json" => c(&["rewritten_intent"], "snippet"),
        "temporal-json" => c(&["input"], "output"),
        "p2m-hf-disk" => c(&["question"], "answer"),
        _ => None,
    }
}

/// Textualise one split into the common schema: input = `col: value` lines of the input columns,
/// references = the output column (every answer for a list column), at most `max_rows` rows in
/// source order.
pub fn columns_as_text(
    split: &RawSplit,
    choice: &ColumnChoice,
    max_rows: usize,
) -> Result<DataFrame> {
    let names = split.column_names();
    check_columns(choice, &names).map_err(|e| anyhow::anyhow!("split `{}`: {e}", split.split))?;
    let n = split.rows().min(max_rows);
    let inputs_cols: Vec<&RawColumn> =
        choice.input.iter().map(|c| split.column(c).expect("checked")).collect();
    let output = split.column(&choice.output).expect("checked");
    let mut inputs = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    for i in 0..n {
        let lines: Vec<String> = choice
            .input
            .iter()
            .zip(&inputs_cols)
            .map(|(name, col)| format!("{name}: {}", col.text(i)))
            .collect();
        inputs.push(lines.join("\n").trim().to_string());
        refs.push(match output {
            RawColumn::Text(v) => vec![v[i].clone()],
            RawColumn::List(v) => v[i].clone(),
        });
    }
    Ok(crate::data::loaders::common_frame(split.ids[..n].to_vec(), inputs, &refs, None)?)
}

/// What `retrieved_dataset.json` records.
#[derive(Debug, Clone, Serialize)]
pub struct SavedDataset {
    pub dataset: String,
    pub registry_id: String,
    pub columns: ColumnChoice,
    /// How the dataset and columns were chosen.
    pub chosen_by: String,
    pub max_rows_per_split: usize,
    pub splits: BTreeMap<String, usize>,
    pub files: Vec<String>,
    pub inputs: Vec<ResolvedFile>,
    /// Where a hub dataset came from (absent for local datasets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<HubSource>,
}

/// The hub origin of a saved dataset.
#[derive(Debug, Clone, Serialize)]
pub struct HubSource {
    pub dataset: String,
    pub config: String,
    pub config_chosen_by: String,
    /// The datasets-server `/rows` URL (first split; pages add `offset` and `length`).
    pub url: String,
    /// Whether the rows came from the local cache of an earlier fetch.
    pub from_cache: bool,
    pub cache_dir: PathBuf,
}

/// Textualise every split and write `<out>/<split>.parquet` plus `retrieved_dataset.json`
/// (each file through a temporary file and a rename).
#[allow(clippy::too_many_arguments)] // each argument is one recorded fact of the saved dataset
pub fn save(
    out: &Path,
    dataset: &str,
    registry_id: &str,
    splits: &[RawSplit],
    choice: &ColumnChoice,
    max_rows: usize,
    chosen_by: &str,
    inputs: Vec<ResolvedFile>,
) -> Result<SavedDataset> {
    save_with_source(out, dataset, registry_id, splits, choice, max_rows, chosen_by, inputs, None)
}

/// [`save`], recording the hub origin of the rows.
#[allow(clippy::too_many_arguments)] // each argument is one recorded fact of the saved dataset
pub fn save_with_source(
    out: &Path,
    dataset: &str,
    registry_id: &str,
    splits: &[RawSplit],
    choice: &ColumnChoice,
    max_rows: usize,
    chosen_by: &str,
    inputs: Vec<ResolvedFile>,
    source: Option<HubSource>,
) -> Result<SavedDataset> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut saved = SavedDataset {
        dataset: dataset.into(),
        registry_id: registry_id.into(),
        columns: choice.clone(),
        chosen_by: chosen_by.into(),
        max_rows_per_split: max_rows,
        splits: BTreeMap::new(),
        files: Vec::new(),
        inputs,
        source,
    };
    for split in splits {
        let df = columns_as_text(split, choice, max_rows)?;
        let name = format!("{}.parquet", split.split);
        crate::report::write_parquet_atomic(&df, &out.join(&name))?;
        saved.splits.insert(split.split.clone(), df.height());
        saved.files.push(name);
    }
    let meta_path = out.join("retrieved_dataset.json");
    write_atomic(&meta_path, serde_json::to_string_pretty(&saved)?.as_bytes())
        .with_context(|| format!("writing {}", meta_path.display()))?;
    Ok(saved)
}

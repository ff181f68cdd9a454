//! Loaders into polars frames with one common schema:
//!
//! | column       | type        | meaning                                             |
//! |--------------|-------------|-----------------------------------------------------|
//! | `id`         | str         | a stable row id from the source                     |
//! | `input`      | str         | the model input as the paper's pipeline textualises it |
//! | `references` | list[str]   | every gold output (SQuAD keeps all its answers)     |
//! | `prediction` | str, optional | a system's output, when the source has one        |
//!
//! Source-specific columns (e.g. SQuAD's `question`, `context`) may follow.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Deserialize;

use crate::data::registry::{DataError, DataResult, Registry, ResolvedFile};

pub const ID: &str = "id";
pub const INPUT: &str = "input";
pub const REFERENCES: &str = "references";
pub const PREDICTION: &str = "prediction";

fn malformed(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), detail: detail.into() }
}

fn polars_err(path: &Path) -> impl FnOnce(PolarsError) -> DataError + '_ {
    move |e| malformed(path, e.to_string())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> DataResult<T> {
    let bytes = fs::read(path).map_err(|source| {
        DataError::File(crate::util::fs::FileError { path: path.to_path_buf(), source })
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        malformed(
            path,
            format!("not a valid {what} file at line {}, column {}: {e}", e.line(), e.column()),
        )
    })
}

/// A `list[str]` column from per-row string lists.
pub fn list_column(name: &str, rows: &[Vec<String>]) -> Column {
    let series: Vec<Series> =
        rows.iter().map(|r| Series::new(PlSmallStr::EMPTY, r.as_slice())).collect();
    Column::new(name.into(), series)
}

/// Build a frame in the common schema.
pub fn common_frame(
    ids: Vec<String>,
    inputs: Vec<String>,
    references: &[Vec<String>],
    predictions: Option<Vec<String>>,
) -> PolarsResult<DataFrame> {
    let mut cols = vec![
        Column::new(ID.into(), ids),
        Column::new(INPUT.into(), inputs),
        list_column(REFERENCES, references),
    ];
    if let Some(p) = predictions {
        cols.push(Column::new(PREDICTION.into(), p));
    }
    DataFrame::new_infer_height(cols)
}

pub use p2m_metrics::frame::{string_column, string_list_column};

// ---------------------------------------------------------------------------------------------
// SQuAD v1.1 JSON

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}
#[derive(Deserialize)]
struct SquadArticle {
    title: String,
    paragraphs: Vec<SquadParagraph>,
}
#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
struct SquadQa {
    id: String,
    question: String,
    answers: Vec<SquadAnswer>,
}
#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
}

/// SQuAD v1.1 (official JSON). `input` is the paper prompt's layout,
/// `Question: {question} Context: {context}`; every gold answer is kept, in file order.
pub fn load_squad_json(path: &Path) -> DataResult<DataFrame> {
    let file: SquadFile = read_json(path, "SQuAD v1.1 JSON")?;
    let (mut ids, mut inputs, mut refs, mut titles, mut questions, mut contexts) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for article in &file.data {
        for paragraph in &article.paragraphs {
            for qa in &paragraph.qas {
                if qa.answers.is_empty() {
                    return Err(malformed(
                        path,
                        format!(
                            "question id {} has no answers (SQuAD v1.1 has at least one)",
                            qa.id
                        ),
                    ));
                }
                ids.push(qa.id.clone());
                inputs.push(format!("Question: {} Context: {}", qa.question, paragraph.context));
                refs.push(qa.answers.iter().map(|a| a.text.clone()).collect::<Vec<_>>());
                titles.push(article.title.clone());
                questions.push(qa.question.clone());
                contexts.push(paragraph.context.clone());
            }
        }
    }
    let mut df = common_frame(ids, inputs, &refs, None).map_err(polars_err(path))?;
    df.hstack_mut(&[
        Column::new("title".into(), titles),
        Column::new("question".into(), questions),
        Column::new("context".into(), contexts),
    ])
    .map_err(polars_err(path))?;
    Ok(df)
}

// ---------------------------------------------------------------------------------------------
// CoNaLa / MCoNaLa JSON

#[derive(Deserialize)]
struct ConalaRow {
    intent: Option<String>,
    rewritten_intent: Option<String>,
    snippet: String,
    question_id: i64,
}

/// CoNaLa and MCoNaLa: `input` is the rewritten intent (falling back to the raw intent when the
/// annotators left none), the reference is the snippet.
pub fn load_conala_json(path: &Path) -> DataResult<DataFrame> {
    let rows: Vec<ConalaRow> = read_json(path, "CoNaLa JSON")?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut inputs = Vec::with_capacity(rows.len());
    let mut refs = Vec::with_capacity(rows.len());
    let mut intents = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let input = row.rewritten_intent.clone().or(row.intent.clone()).ok_or_else(|| {
            malformed(
                path,
                format!(
                    "row {i} (question_id {}) has neither `rewritten_intent` nor `intent`",
                    row.question_id
                ),
            )
        })?;
        ids.push(format!("{}-{i}", row.question_id));
        inputs.push(input);
        refs.push(vec![row.snippet]);
        intents.push(row.intent.unwrap_or_default());
    }
    let mut df = common_frame(ids, inputs, &refs, None).map_err(polars_err(path))?;
    df.hstack_mut(&[Column::new("intent".into(), intents)]).map_err(polars_err(path))?;
    Ok(df)
}

// ---------------------------------------------------------------------------------------------
// Temporal (ScatterShot) JSON: [[input, output, "date"], ...]

pub fn load_temporal_json(path: &Path) -> DataResult<DataFrame> {
    let rows: Vec<Vec<String>> = read_json(path, "Temporal JSON ([input, output, kind] rows)")?;
    let mut inputs = Vec::with_capacity(rows.len());
    let mut refs = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let [input, output, _kind]: [String; 3] = row.try_into().map_err(|r: Vec<String>| {
            malformed(
                path,
                format!("row {i}: expected [input, output, kind], found {} fields", r.len()),
            )
        })?;
        inputs.push(input);
        refs.push(vec![output]);
    }
    let ids = (0..inputs.len()).map(|i| i.to_string()).collect();
    common_frame(ids, inputs, &refs, None).map_err(polars_err(path))
}

// ---------------------------------------------------------------------------------------------
// Hugging Face `save_to_disk` folders

/// A `datasets.Dataset` (one frame) or a `datasets.DatasetDict` (a frame per split).
#[derive(Debug)]
pub enum HfDisk {
    Dataset(DataFrame),
    Dict(BTreeMap<String, DataFrame>),
}

#[derive(Deserialize)]
struct HfState {
    #[serde(rename = "_data_files")]
    data_files: Vec<HfDataFile>,
}
#[derive(Deserialize)]
struct HfDataFile {
    filename: String,
}
#[derive(Deserialize)]
struct HfDict {
    splits: Vec<String>,
}

/// Read a `save_to_disk` folder: `state.json` names the Arrow IPC *stream* shards, read in order
/// and stacked; a `dataset_dict.json` makes it a dict of such folders.
pub fn load_hf_disk(dir: &Path) -> DataResult<HfDisk> {
    let dict_json = dir.join("dataset_dict.json");
    if dict_json.is_file() {
        let dict: HfDict = read_json(&dict_json, "dataset_dict.json")?;
        let mut splits = BTreeMap::new();
        for split in dict.splits {
            splits.insert(split.clone(), load_hf_dataset(&dir.join(&split))?);
        }
        return Ok(HfDisk::Dict(splits));
    }
    Ok(HfDisk::Dataset(load_hf_dataset(dir)?))
}

fn load_hf_dataset(dir: &Path) -> DataResult<DataFrame> {
    let state_path = dir.join("state.json");
    if !state_path.is_file() {
        return Err(malformed(
            dir,
            "not a Hugging Face save_to_disk folder: no state.json or dataset_dict.json",
        ));
    }
    let state: HfState = read_json(&state_path, "state.json")?;
    if state.data_files.is_empty() {
        return Err(malformed(&state_path, "field `_data_files` is empty"));
    }
    let mut frame: Option<DataFrame> = None;
    for shard in &state.data_files {
        let path = dir.join(&shard.filename);
        let file = fs::File::open(&path).map_err(|source| {
            DataError::File(crate::util::fs::FileError { path: path.clone(), source })
        })?;
        let df = IpcStreamReader::new(file)
            .finish()
            .map_err(|e| malformed(&path, format!("not a readable Arrow IPC stream: {e}")))?;
        match frame.as_mut() {
            None => frame = Some(df),
            Some(acc) => {
                acc.vstack_mut_owned(df).map_err(polars_err(&path))?;
            }
        }
    }
    Ok(frame.expect("at least one shard"))
}

/// Map a raw frame with the Prompt2Model column names (`input_col`, `output_col`, `output`) onto the
/// common schema.
pub fn p2m_to_common(df: &DataFrame, path: &Path) -> DataResult<DataFrame> {
    let need = |c: &str| -> DataResult<Vec<String>> {
        string_column(df, c).map_err(|_| {
            malformed(
                path,
                format!("missing string column `{c}` (found: {:?})", df.get_column_names()),
            )
        })
    };
    let inputs = need("input_col")?;
    let outputs = need("output_col")?;
    let predictions = if df.column("output").is_ok() { Some(need("output")?) } else { None };
    let ids = (0..inputs.len()).map(|i| i.to_string()).collect();
    let refs: Vec<Vec<String>> = outputs.into_iter().map(|o| vec![o]).collect();
    common_frame(ids, inputs, &refs, predictions).map_err(polars_err(path))
}

// ---------------------------------------------------------------------------------------------
// Registry-level entry points

/// A loaded dataset and the verified files it came from (for run manifests).
pub struct Loaded {
    pub frame: DataFrame,
    pub files: Vec<ResolvedFile>,
}

/// Load a registry dataset into the common schema by its `format`.
pub fn load_dataset(registry: &Registry, id: &str) -> DataResult<Loaded> {
    let entry = registry.dataset(id)?;
    let file = entry.files.first().ok_or_else(|| DataError::Registry {
        path: registry.paths.data.join("datasets.toml"),
        detail: format!("dataset `{id}` lists no files to load"),
    })?;
    let (frame, local, files) = match entry.format.as_str() {
        "p2m-hf-disk" => {
            // A save_to_disk folder: every file of the entry lives in it.
            let dir = Path::new(file)
                .parent()
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_default();
            let (disk, local, files) = load_registered_hf_disk(registry, &dir)?;
            let frame = match disk {
                HfDisk::Dataset(df) => p2m_to_common(&df, &local)?,
                HfDisk::Dict(_) => {
                    return Err(malformed(&local, "expected a single dataset, found a DatasetDict"))
                }
            };
            (frame, local, files)
        }
        format => {
            let resolved = registry.resolve_file(file)?;
            let frame = match format {
                "squad-json" => load_squad_json(&resolved.local)?,
                "conala-json" => load_conala_json(&resolved.local)?,
                "temporal-json" => load_temporal_json(&resolved.local)?,
                other => {
                    return Err(DataError::Registry {
                        path: registry.paths.data.join("datasets.toml"),
                        detail: format!("dataset `{id}` has format `{other}`, which has no common-schema loader (squad-json, conala-json, temporal-json, p2m-hf-disk)"),
                    })
                }
            };
            (frame, resolved.local.clone(), vec![resolved])
        }
    };
    if let Some(rows) = entry.rows {
        if frame.height() as u64 != rows {
            return Err(malformed(
                &local,
                format!("expected {rows} rows (data/datasets.toml), found {}", frame.height()),
            ));
        }
    }
    Ok(Loaded { frame, files })
}

/// Load a registered `save_to_disk` folder (e.g. a recorded run under `p2m_runs/`).
pub fn load_registered_hf_disk(
    registry: &Registry,
    dir: &str,
) -> DataResult<(HfDisk, PathBuf, Vec<ResolvedFile>)> {
    let (local, files) = registry.resolve_dir(dir)?;
    Ok((load_hf_disk(&local)?, local, files))
}

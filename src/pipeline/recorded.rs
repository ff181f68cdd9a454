//! The `recorded` teacher: the paper authors' gpt-3.5-turbo generations for the paper's tasks, read
//! from their recorded runs (`data/recorded_teachers.toml` names the folders), so the pipeline
//! trains on the paper's own teacher data without the API.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::assemble::SourceRows;
use crate::data::examples::Example;
use crate::data::loaders::{self, HfDisk};
use crate::data::registry::{Registry, ResolvedFile};

pub const RECORDED_TEACHERS_FILE: &str = "recorded_teachers.toml";

/// One `[[task]]` of `data/recorded_teachers.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedTeacher {
    pub id: String,
    pub model: String,
    pub generated: String,
    pub generated_test: String,
    #[serde(default)]
    pub retrieved: Option<String>,
    pub note: String,
    /// Whether the paper's pipeline retrieved a dataset for this task.
    pub paper_retrieved: bool,
    /// Where `paper_retrieved` is read from (the paper's table).
    pub paper_retrieval_evidence: String,
}

/// Where the dataset-retrieval stage of a recorded-teacher run takes its retrieved data from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RecordedRetrieval {
    /// The authors' recorded retrieved data: a registry folder ([`recorded_splits`] reads it).
    Recorded { folder: String },
    /// The paper retrieved for this task, but the authors' recorded run holds no retrieved data:
    /// the dataset retriever runs offline and the best dataset loadable here is taken, a stand-in
    /// for the paper's choice. `why` says so, for the stage's summary and the report.
    RetrieveOffline { why: String },
    /// The paper retrieved nothing for this task (Temporal): no retrieved data, as in the paper.
    NotInPaper { why: String },
}

/// What a recorded-teacher run retrieves for its task, from `data/recorded_teachers.toml`.
pub fn retrieval_plan(teacher: &RecordedTeacher) -> RecordedRetrieval {
    match (&teacher.retrieved, teacher.paper_retrieved) {
        (Some(folder), _) => RecordedRetrieval::Recorded { folder: folder.clone() },
        (None, true) => RecordedRetrieval::RetrieveOffline {
            why: format!(
                "the paper retrieved a dataset for `{}` ({}), but the authors' recorded run holds none: the dataset retriever ran offline and the best-ranked dataset loadable here was taken, a stand-in for the paper's choice",
                teacher.id, teacher.paper_retrieval_evidence
            ),
        },
        (None, false) => RecordedRetrieval::NotInPaper {
            why: format!(
                "none: the paper retrieved no dataset for `{}` ({})",
                teacher.id, teacher.paper_retrieval_evidence
            ),
        },
    }
}

#[derive(Deserialize)]
struct File {
    task: Vec<RecordedTeacher>,
}

pub fn load(data_dir: &Path) -> Result<Vec<RecordedTeacher>> {
    let path = data_dir.join(RECORDED_TEACHERS_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(toml::from_str::<File>(&text).with_context(|| format!("parsing {}", path.display()))?.task)
}

/// The recorded teacher of a paper task, or an error naming the tasks that have one.
pub fn for_task(data_dir: &Path, task: Option<&str>) -> Result<RecordedTeacher> {
    let all = load(data_dir)?;
    let known = all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ");
    let Some(task) = task else {
        anyhow::bail!("--teacher recorded needs a paper task (--task {known}): only they have recorded generations; for another prompt use --teacher local or openai");
    };
    all.iter().find(|t| t.id == task).cloned().with_context(|| format!("no recorded generation for task `{task}` in data/{RECORDED_TEACHERS_FILE} (it has: {known})"))
}

/// A recorded `save_to_disk` folder as an assembly source: a DatasetDict keeps its own splits
/// (`train`, `val`/`validation`, `test`), a single Dataset is one pool.
pub fn recorded_splits(
    registry: &Registry,
    folder: &str,
) -> Result<(SourceRows, Vec<ResolvedFile>)> {
    let (disk, local, files) = loaders::load_registered_hf_disk(registry, folder)?;
    let frames: Vec<(String, polars::prelude::DataFrame)> = match disk {
        HfDisk::Dataset(df) => vec![("train".to_string(), df)],
        HfDisk::Dict(d) => d.into_iter().collect(),
    };
    let mut splits = Vec::new();
    for (name, frame) in frames {
        let rows = input_output_rows(&frame)
            .with_context(|| format!("{}: split `{name}`", local.display()))?;
        splits.push((name, rows));
    }
    Ok((super::assemble::source_from_splits(splits), files))
}

fn input_output_rows(frame: &polars::prelude::DataFrame) -> Result<Vec<Example>> {
    let inputs = loaders::string_column(frame, "input_col").context("no `input_col` column")?;
    let outputs = loaders::string_column(frame, "output_col").context("no `output_col` column")?;
    Ok(inputs.into_iter().zip(outputs).map(|(i, o)| Example::new(i, o)).collect())
}

/// `{input_col, output_col}` rows of a recorded `save_to_disk` folder (a DatasetDict's splits in
/// the given order).
pub fn recorded_examples(
    registry: &Registry,
    folder: &str,
    splits: &[&str],
) -> Result<(Vec<Example>, Vec<ResolvedFile>)> {
    let (disk, local, files) = loaders::load_registered_hf_disk(registry, folder)?;
    let frames = match disk {
        HfDisk::Dataset(df) => vec![df],
        HfDisk::Dict(mut d) => splits.iter().filter_map(|s| d.remove(*s)).collect::<Vec<_>>(),
    };
    anyhow::ensure!(!frames.is_empty(), "{}: none of the splits {splits:?}", local.display());
    let mut out = Vec::new();
    for frame in frames {
        out.extend(input_output_rows(&frame).with_context(|| local.display().to_string())?);
    }
    Ok((out, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
    }

    #[test]
    fn every_paper_task_has_a_retrieval_plan_as_the_paper_retrieved() {
        let plan = |task: &str| retrieval_plan(&for_task(&data_dir(), Some(task)).unwrap());
        assert!(
            matches!(plan("mconala"), RecordedRetrieval::Recorded { folder } if folder.ends_with("retrived_jp2python"))
        );
        match plan("squad") {
            RecordedRetrieval::RetrieveOffline { why } => {
                assert!(
                    why.contains("stand-in for the paper's choice") && why.contains("50.2"),
                    "{why}"
                )
            }
            other => panic!("squad: {other:?}"),
        }
        assert!(
            matches!(plan("temporal"), RecordedRetrieval::NotInPaper { why } if why.contains("N/A"))
        );
    }
}

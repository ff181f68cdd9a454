//! The `recorded` teacher: the paper authors' gpt-3.5-turbo generations for the paper's tasks, read
//! from their recorded runs (`data/recorded_teachers.toml` names the folders), so the pipeline
//! trains on the paper's own teacher data without the API.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

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
        let inputs = loaders::string_column(&frame, "input_col")
            .with_context(|| format!("{}: no `input_col` column", local.display()))?;
        let outputs = loaders::string_column(&frame, "output_col")
            .with_context(|| format!("{}: no `output_col` column", local.display()))?;
        out.extend(inputs.into_iter().zip(outputs).map(|(i, o)| Example::new(i, o)));
    }
    Ok((out, files))
}

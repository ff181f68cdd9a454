//! The paper's tasks, read from `data/tasks.toml` (tasks are data, not code).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::registry::DataError;
use crate::evaluator::Metric;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Demonstration {
    pub input: String,
    pub output: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PromptSource {
    pub file: String,
    pub section: String,
}

/// One `[[task]]` of `data/tasks.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    pub name: String,
    /// Column header in the paper's tables.
    pub paper_column: String,
    pub metric: String,
    /// Registry id of the real test set.
    pub test_dataset: String,
    /// The task's name in the authors' recorded runs (`p2m_runs/`).
    pub recorded_name: String,
    pub source: PromptSource,
    /// The prompt exactly as a user writes it.
    pub prompt: String,
    pub instruction: String,
    #[serde(rename = "demonstration")]
    pub demonstrations: Vec<Demonstration>,
}

impl Task {
    pub fn metric(&self) -> Metric {
        Metric::parse(&self.metric).expect("validated when tasks.toml is loaded")
    }
}

#[derive(Debug, Deserialize)]
struct TasksToml {
    task: Vec<Task>,
}

/// Read and validate `data/tasks.toml`.
pub fn load_tasks(data_dir: &Path) -> Result<Vec<Task>, DataError> {
    let path = data_dir.join("tasks.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| {
        DataError::File(crate::util::fs::FileError { path: path.clone(), source })
    })?;
    let parsed: TasksToml = toml::from_str(&text)
        .map_err(|e| DataError::Registry { path: path.clone(), detail: e.to_string() })?;
    for t in &parsed.task {
        if Metric::parse(&t.metric).is_none() {
            return Err(DataError::Registry {
                path,
                detail: format!(
                    "task `{}`: field `metric` = `{}` is not one of {}",
                    t.id,
                    t.metric,
                    Metric::ALL.map(Metric::name).join(", ")
                ),
            });
        }
    }
    Ok(parsed.task)
}

pub fn find<'a>(tasks: &'a [Task], id: &str) -> Option<&'a Task> {
    tasks.iter().find(|t| t.id == id)
}

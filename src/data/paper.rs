//! The paper's printed numbers (`data/paper_results.toml`): only ever the "paper" column beside a
//! reproduced value, never an input to a computation.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::registry::DataError;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table1Row {
    pub system: String,
    pub squad: Option<f64>,
    pub mconala: Option<f64>,
    pub temporal: Option<f64>,
}

impl Table1Row {
    pub fn value(&self, task: &str) -> Option<f64> {
        match task {
            "squad" => self.squad,
            "mconala" => self.mconala,
            "temporal" => self.temporal,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table1 {
    pub caption: String,
    pub tasks: Vec<String>,
    pub row: Vec<Table1Row>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table2Row {
    pub arm: String,
    pub examples: u32,
    pub squad: f64,
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table2 {
    pub caption: String,
    pub row: Vec<Table2Row>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table3Row {
    pub task: String,
    /// Kendall's tau × 100, as printed.
    pub tau: f64,
    pub p: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Table3 {
    pub caption: String,
    pub models: u32,
    pub row: Vec<Table3Row>,
}

/// §3.3's ablation of high-diversity few-shot prompting: duplicate inputs among `of` generated
/// examples without and with generated examples in the prompt (gpt-3.5-turbo).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct PaperDiversity {
    pub without: usize,
    pub with: usize,
    pub of: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PaperResults {
    pub table1: Table1,
    pub table2: Table2,
    pub table3: Table3,
    pub diversity: PaperDiversity,
}

pub fn load_paper_results(data_dir: &Path) -> Result<PaperResults, DataError> {
    let path = data_dir.join("paper_results.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| {
        DataError::File(crate::util::fs::FileError { path: path.clone(), source })
    })?;
    toml::from_str(&text).map_err(|e| DataError::Registry { path, detail: e.to_string() })
}

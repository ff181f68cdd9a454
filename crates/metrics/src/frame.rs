//! Reading string columns out of polars frames, shared by the predictions reader here and the
//! table and data loaders of the main crate (which re-export these).

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::*;

/// Reads a parquet file into a frame; the error names the file.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not a readable parquet file: {e}", path.display()))
}

/// The values of a string column (nulls become empty strings, as the Python reference's `str()` of
/// a missing generation would be compared).
pub fn string_column(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    let col = df.column(name)?.as_materialized_series().cast(&DataType::String)?;
    Ok(col.str()?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
}

/// The values of a `list[str]` column.
pub fn string_list_column(df: &DataFrame, name: &str) -> PolarsResult<Vec<Vec<String>>> {
    let col = df.column(name)?.as_materialized_series().clone();
    let list = col.list()?;
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        match list.get_as_series(i) {
            Some(s) => {
                out.push(s.str()?.iter().map(|v| v.unwrap_or_default().to_string()).collect())
            }
            None => out.push(Vec::new()),
        }
    }
    Ok(out)
}

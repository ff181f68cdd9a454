//! Everything the pipeline reads as data: the dataset registry and its files, loaders into polars
//! frames, the paper's tasks and printed numbers, the authors' recorded runs, `{input, output}`
//! example files and users' prediction files.

pub mod examples;
pub mod loaders;
pub mod paper;
pub use p2m_metrics::predictions;
pub mod recorded;
pub mod registry;
pub mod tasks;

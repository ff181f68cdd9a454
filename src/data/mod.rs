//! Everything the pipeline reads as data: the dataset registry and its files, loaders into polars
//! frames, the paper's tasks and printed numbers, the authors' recorded runs, `{input, output}`
//! example files and users' prediction files; and what a run's examples look like before training
//! ([`diagnostics`], with the answer set an instruction states, [`label_set`]) and whether they are
//! fit to train on ([`gate`]).

pub mod diagnostics;
pub mod examples;
pub mod gate;
pub mod label_set;
pub mod loaders;
pub mod paper;
pub use p2m_metrics::predictions;
pub mod recorded;
pub mod registry;
pub mod tasks;

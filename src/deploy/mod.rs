//! Making a packaged model (`runs/<name>/model/`) usable where people deploy models, beside
//! `p2m predict` / `p2m serve`:
//!
//! - [`transformers`]: the files `transformers`' Auto classes read (`tokenizer_config.json` with a
//!   chat template that renders the training input, `special_tokens_map.json`,
//!   `generation_config.json` with `p2m predict`'s settings);
//! - [`hub`]: the Hugging Face hub cards — the model folder's `README.md` with YAML front matter
//!   (licence, base model, datasets, pipeline tag, metrics with intervals) and the run's
//!   `dataset/` folder (the generated data as parquet splits with their provenance, and its card);
//! - [`publish`]: `p2m publish`, both folders to the hub through its HTTP API (repository
//!   creation, Git LFS for the weights, one commit).

pub mod hub;
pub mod publish;
pub mod transformers;

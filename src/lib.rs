//! prompt2model-rs: a reproducible research harness for *Prompt2Model: Generating Deployable Models
//! from Natural Language Instructions* (Viswanathan et al., EMNLP 2023 demo).
//!
//! One module per concern of the pipeline. What exists today:
//! - [`cli`]: logging and error reporting shared by the binaries.
//! - [`config`]: where data, caches and reports live (environment overrides).
//! - [`registry`]: the dataset registry (`data/datasets.toml`, `data/files.tsv`) and file resolution
//!   (cache → local mirror → upstream download → Hugging Face hub), always sha256-verified.
//! - [`download`]: verified, retried HTTP downloads (shared by both registries).
//! - [`datasets`]: loaders into polars frames with one common schema.
//! - [`tasks`]: the paper's three tasks as data (`data/tasks.toml`) and the paper's printed numbers.
//! - [`evaluator`]: exact metrics (exact match, chrF++, Kendall's tau-b), each score with a signature.
//! - [`models`]: the tch model stack (T5, warm-started encoder-decoder, sampling).
//! - [`predictions`]: reading users' prediction files (JSONL, CSV, parquet).
//! - [`recorded`]: the paper authors' recorded runs and their folder-name conventions.
//! - [`report`]: tables (parquet, CSV, Markdown, LaTeX), figures and run manifests.
//! - [`prompt_parser`]: a free-form prompt → instruction + demonstrations (LLM or deterministic).
//! - [`teacher`]: teacher LLM backends (OpenAI-compatible HTTP), accounting, record/replay cache.
//! - [`dataset_generator`]: the paper's high-diversity, temperature-annealed, self-consistent generator.
//! - [`trainer`]: text-to-text fine-tuning of a student (own AdamW, exact resume from checkpoints).
//! - [`executor`]: batched predictions of a trained student over a test set.
//! - [`tables`]: the reproductions of the paper's tables, shared by `experiments/` and the tests.
//! - [`retrieval`]: BM25, the text analyzer and exact dense search shared by the retrievers.
//! - [`model_retriever`]: HyDE + BM25 over the Hugging Face model cards (§3.4).
//! - [`dataset_retriever`]: dense retrieval over the Hugging Face dataset index, reranking, column
//!   selection and textualisation (§3.2).
//! - [`hub_datasets`]: a retrieved dataset from the live hub (datasets-server rows, flattened, cached).
//! - [`retrieve_cli`]: `p2m retrieve-model` and `p2m retrieve-dataset`.

pub mod cli;
pub mod config;
pub mod dataset_generator;
pub mod dataset_retriever;
pub mod datasets;
pub mod download;
pub mod evaluator;
pub mod executor;
pub mod generate_cli;
pub mod hub_datasets;
pub mod model_retriever;
pub mod models;
pub mod predictions;
pub mod prompt_parser;
pub mod recorded;
pub mod registry;
pub mod report;
pub mod retrieval;
pub mod retrieve_cli;
pub mod tables;
pub mod tasks;
pub mod teacher;
pub mod train_cli;
pub mod trainer;

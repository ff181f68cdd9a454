//! prompt2model-rs: a reproducible research harness for *Prompt2Model: Generating Deployable Models
//! from Natural Language Instructions* (Viswanathan et al., EMNLP 2023 demo).
//!
//! The map, in pipeline order (§ = the paper's section). Argument parsing lives in the binaries
//! (`src/bin/p2m/`, `experiments/`); everything here is callable from code and tests.
//!
//! - [`prompt_parser`] (§3.1): a free-form prompt → instruction + demonstrations (LLM or layout rules).
//! - [`dataset_retriever`] (§3.2): dense search over the dataset index, LLM rerank, column choice,
//!   textualisation, hub datasets through the datasets server.
//! - [`dataset_generator`] (§3.3): high-diversity few-shot prompting, temperature annealing,
//!   self-consistency filtering, a resumable journal, the diversity ablation and its report.
//! - [`dataset_transformer`]: retrieved rows rewritten by the teacher into the task's format (a
//!   plan, then one structured answer per row; the reference's later retrieve-and-transform).
//! - [`model_retriever`] (§3.4): HyDE + BM25 × log(downloads) over the model cards.
//! - [`trainer`] (§3.5): text-to-text fine-tuning of a student (own AdamW, exact resume).
//! - [`executor`]: batched predictions of a trained student (libtorch or llama.cpp).
//! - [`export`]: a trained decoder student as a GGUF for llama.cpp and Ollama.
//! - [`evaluator`] (§3.6): exact match, chrF++, BERTScore, Kendall's τ, each score with a signature.
//! - [`pipeline`]: the stages chained into one resumable run (`p2m run`): a prompt in, a trained,
//!   evaluated, packaged model out.
//! - [`review`]: people correcting a run's instruction and generated examples (the paper's future
//!   work); the pipeline trains on what they kept.
//! - [`serve`] (§3.6, the demo): the packaged model as a web page and an OpenAI-compatible API
//!   (`p2m serve`), with the review page.
//! - [`tables`]: the paper's Tables 1–3, shared by `experiments/` and the tests.
//!
//! Underneath: [`teacher`] (LLM backends, accounting, record/replay cache), [`models`] (the tch
//! model stack and the model registry), [`retrieval`] (BM25, text analysis, dense search, binary
//! caches), [`data`] (dataset registry, loaders, tasks, the paper's numbers, examples and
//! prediction files), [`report`] (tables, figures, manifests), [`download`] (verified downloads,
//! hf-hub), [`deploy`] (the files transformers and the hub read), [`config`] (where data, caches and reports live) and [`util`] (atomic files, hashing,
//! seeded randomness, JSON in model answers, excerpts).

pub mod prompt_parser;

pub mod dataset_retriever;

pub mod dataset_generator;

pub mod dataset_transformer;

pub mod model_retriever;

pub mod trainer;

pub mod executor;

pub mod export;

pub mod evaluator;

pub mod pipeline;

pub mod review;

pub mod serve;

pub mod tables;

pub mod teacher;

pub mod models;

pub mod retrieval;

pub mod data;

pub mod report;

pub mod download;

pub mod config;

pub mod util;

pub mod deploy;

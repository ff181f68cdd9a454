//! The integration tests, compiled as one test binary.
//!
//! Every test binary links libtorch and polars; as separate binaries (one per file) they took
//! about 1 GB of disk each in debug builds and most of CI's time went to linking. One binary
//! links once. Tests still run in parallel threads, so a test that touches process-wide state
//! (environment variables) takes the lock for it in `common`.

mod common;
mod fake_openai;

mod bertscore;
mod claims;
mod cli;
mod data_diagnostics;
mod dataset_generator;
mod dataset_transformer;
mod deploy_transformers;
#[cfg(feature = "llama-cpp")]
mod export_gguf;
mod live_tables;
#[cfg(feature = "llama-cpp")]
mod llama_cpp;
mod loaders;
mod metrics_differential;
mod models_bert;
mod models_hub;
mod models_llama;
mod models_seq2seq;
mod models_weights;
mod offline_models;
mod pipeline;
mod prefix_cache;
mod prompt_parser;
mod publish;
mod recorded_tables;
mod registry;
mod retrievers;
mod serve;
mod table2;
mod teacher_openai;
mod teacher_servers;
mod trainer;
mod trainer_lora;

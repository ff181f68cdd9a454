//! `p2m`: the user's entry point to prompt2model-rs. Each subcommand's arguments and output live in
//! its own file here; the work is done by the library.
//!
//! The paper's tables are their own binaries: `cargo run --release --bin table1` (and `table2`,
//! `table3`, `retrieval`).

#[path = "../shared/mod.rs"]
mod shared;

mod data;
mod export;
mod generate;
mod publish;
mod retrieve;
mod run;
mod score;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "p2m",
    version,
    about = "Prompt2Model, reproducibly: from a prompt to a small deployable model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score a predictions file (JSONL, CSV or parquet) against its references.
    Score(score::ScoreArgs),
    /// The dataset registry.
    #[command(subcommand)]
    Data(DataCommand),
    /// Generate a training dataset from a prompt with a teacher LLM.
    Generate(generate::GenerateArgs),
    /// The paper's diversity ablation: duplicates with and without high-diversity prompting.
    Diversity(generate::DiversityArgs),
    /// Chat with the offline teacher model (SmolLM2-135M-Instruct).
    Chat(generate::ChatArgs),
    /// The model registry (data/models.toml).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Fine-tune a student on examples (text-to-text); resumes from its checkpoints when re-run.
    Train(train::TrainArgs),
    /// Predict with a trained student over a JSONL of inputs; writes parquet.
    Predict(train::PredictArgs),
    /// A run's decoder student as a GGUF for llama.cpp and Ollama (with a Modelfile).
    Export(export::ExportArgs),
    /// Publish a run's packaged model (and its generated data) to the Hugging Face hub.
    Publish(Box<publish::PublishArgs>),
    /// Retrieve pretrained models for an instruction (HyDE + BM25 over the Hugging Face model cards).
    RetrieveModel(retrieve::RetrieveModelArgs),
    /// Retrieve datasets for an instruction (dense retrieval over the Hugging Face dataset index).
    RetrieveDataset(retrieve::RetrieveDatasetArgs),
    /// Prompt2Model end to end: a prompt in, a trained, evaluated, packaged model out (resumable).
    Run(Box<run::RunArgs>),
    /// Serve a run's model: a web page, an OpenAI-compatible API and the review page.
    Serve(Box<serve::ServeArgs>),
    /// The runs of `p2m run`.
    #[command(subcommand)]
    Runs(RunsCommand),
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Every run: status and headline metric.
    List,
    /// One run: every stage, its time and output, the metrics, where everything is.
    Show {
        /// The run's name (its folder under runs/).
        name: String,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the registered models and whether each has an offline source.
    List,
    /// Fetch and sha256-verify every model with an offline source into the cache.
    Fetch,
}

#[derive(Subcommand)]
enum DataCommand {
    /// List the registered datasets.
    List,
    /// Resolve and sha256-verify every file of a dataset (or of all datasets), fetching what is missing.
    Fetch {
        /// Dataset ids; none means all.
        ids: Vec<String>,
    },
}

fn main() -> ExitCode {
    shared::main_with(|| match Cli::parse().command {
        Command::Score(args) => score::score(args),
        Command::Data(DataCommand::List) => data::data_list(),
        Command::Data(DataCommand::Fetch { ids }) => data::data_fetch(ids),
        Command::Generate(args) => generate::generate(args),
        Command::Chat(args) => generate::chat(args),
        Command::Diversity(args) => generate::diversity(args),
        Command::Models(ModelsCommand::List) => data::models_list(),
        Command::Models(ModelsCommand::Fetch) => {
            prompt2model::models::registry::fetch_offline_models(
                &prompt2model::config::Paths::from_env()?,
            )
        }
        Command::Train(args) => train::train(args),
        Command::Predict(args) => train::predict(args),
        Command::Export(args) => export::export(args),
        Command::Publish(args) => publish::publish(*args),
        Command::RetrieveModel(args) => retrieve::retrieve_model(args),
        Command::RetrieveDataset(args) => retrieve::retrieve_dataset(args),
        Command::Run(args) => run::run(*args),
        Command::Serve(args) => serve::serve(*args),
        Command::Runs(RunsCommand::List) => run::list(),
        Command::Runs(RunsCommand::Show { name }) => run::show(name),
    })
}

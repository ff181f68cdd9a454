//! Table 2 of the paper, live: SQuAD students trained on retrieved, generated, both, or
//! human-annotated data, evaluated on held-out SQuAD questions, with the cost of each kind of data.
//! `cargo run --release --bin table2` (default scale `laptop`) writes `reports/table2/`.

#[path = "../src/bin/shared/mod.rs"]
#[allow(dead_code)] // each binary uses part of the shared arguments
mod shared;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prompt2model::data::registry::Registry;
use prompt2model::models::registry::ModelRegistry;
use prompt2model::tables::table2::{self, GeneratedSource, Options};

#[derive(Parser)]
#[command(
    about = "Re-run Table 2 (SQuAD: retrieval only / generation only / both / custom annotation)"
)]
struct Args {
    /// A scale of data/table2_scales.toml: smoke (seconds), laptop (~30 min on 2 CPU cores), paper.
    #[arg(long, default_value = "laptop")]
    scale: String,
    /// Train the generation arm on a dataset written by `p2m generate` (a folder with
    /// examples.jsonl) instead of the authors' recorded gpt-3.5-turbo data.
    #[arg(long, value_name = "DIR")]
    generated: Option<PathBuf>,
    /// Seed of the article split, the draws, the shuffles and the student initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where each arm's student, checkpoints and predictions go (default .cache/runs/table2/<scale>);
    /// a killed run started again resumes from there.
    #[arg(long, value_name = "DIR")]
    runs_dir: Option<PathBuf>,
    /// Run on the CPU even when a GPU is visible.
    #[arg(long)]
    cpu: bool,
}

fn main() -> ExitCode {
    shared::main_with(|| {
        let args = Args::parse();
        let registry = Registry::from_env()?;
        let models = ModelRegistry::from_env()?;
        let mut opts = Options::new(&args.scale);
        opts.generated =
            args.generated.map(GeneratedSource::Dir).unwrap_or(GeneratedSource::Recorded);
        opts.seed = args.seed;
        opts.runs_dir = args.runs_dir;
        if args.cpu {
            opts.device = tch::Device::Cpu;
        }
        let (_table, dir) = table2::run(&registry, &models, &opts)?;
        println!("{}", std::fs::read_to_string(dir.join("table2.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

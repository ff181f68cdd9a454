//! `p2m-score`: score a predictions file with exact match and chrF++, each score with its
//! signature and bootstrap interval, without loading libtorch (`p2m score` does the same and adds
//! BERTScore).

use std::process::ExitCode;

use clap::Parser;
use p2m_metrics::scoring::{self, ScoreFileArgs};

/// Score a predictions file (JSONL, CSV or parquet) with exact match and chrF++; each score comes
/// with its signature and a 95 % bootstrap interval. `p2m score` is the same plus BERTScore.
#[derive(Parser)]
#[command(name = "p2m-score", version)]
struct Cli {
    #[command(flatten)]
    file: ScoreFileArgs,
}

fn main() -> ExitCode {
    scoring::exit_with(scoring::run(&Cli::parse().file))
}

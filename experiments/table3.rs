//! Table 3 of the paper: Kendall's tau between model rankings on generated and real test sets.
//! `cargo run --release --bin table3` writes `reports/table3/`.

use std::process::ExitCode;

use clap::Parser;
use prompt2model::registry::Registry;
use prompt2model::tables::{table3, Source};

#[derive(Parser)]
#[command(about = "Reproduce Table 3 (generated vs real test sets: Kendall's tau of model rankings)")]
struct Args {
    /// Where the numbers come from.
    #[arg(long, value_enum, default_value = "recorded")]
    source: Source,
}

fn main() -> ExitCode {
    prompt2model::cli::main_with(|| {
        let args = Args::parse();
        let registry = Registry::from_env()?;
        let dir = table3::run(&registry, args.source)?;
        println!("{}", std::fs::read_to_string(dir.join("table3.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

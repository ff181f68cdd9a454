//! Table 1 of the paper: downstream quality on SQuAD (EM), MCoNaLa ja→Python (chrF++) and
//! Temporal (chrF++). `cargo run --release --bin table1` writes `reports/table1/`.

use std::process::ExitCode;

use clap::Parser;
use prompt2model::registry::Registry;
use prompt2model::tables::{table1, Source};

#[derive(Parser)]
#[command(about = "Reproduce Table 1 (downstream performance on real test sets)")]
struct Args {
    /// Where the numbers come from.
    #[arg(long, value_enum, default_value = "recorded")]
    source: Source,
}

fn main() -> ExitCode {
    prompt2model::cli::main_with(|| {
        let args = Args::parse();
        let registry = Registry::from_env()?;
        let dir = table1::run(&registry, args.source)?;
        println!("{}", std::fs::read_to_string(dir.join("table1.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

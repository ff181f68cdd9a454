//! Table 3 of the paper: Kendall's tau between model rankings on generated and real test sets.
//! `cargo run --release --bin table3` re-scores the authors' recorded runs into `reports/table3/`;
//! `--source live` fine-tunes students here, one cell each (see src/tables/cells.rs).

#[path = "../src/bin/shared/mod.rs"]
#[allow(dead_code)] // each binary uses part of the shared arguments
mod shared;

use std::process::ExitCode;

use clap::Parser;
use prompt2model::data::registry::Registry;
use prompt2model::tables::{cells::LiveTable, table3, table3_live};

#[derive(Parser)]
#[command(
    about = "Reproduce Table 3 (generated vs real test sets: Kendall's tau of model rankings)"
)]
struct Args {
    /// Where the numbers come from: `recorded` re-scores the paper authors' recorded outputs;
    /// `live` fine-tunes and scores students here (data/live_tables.toml).
    #[arg(long, default_value = "recorded", value_parser = ["recorded", "live"])]
    source: String,
    #[command(flatten)]
    live: shared::LiveArgs,
}

fn main() -> ExitCode {
    shared::main_with(|| {
        let args = Args::parse();
        let registry = Registry::from_env()?;
        let dir = if args.source == "live" {
            let Some(plan) = args.live.run_cells(LiveTable::Table3)? else { return Ok(()) };
            table3_live::collect(&plan, &registry)?.write(&registry.paths.reports)?
        } else {
            table3::run_recorded(&registry)?
        };
        println!("{}", std::fs::read_to_string(dir.join("table3.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

//! Table 1 of the paper: downstream quality on SQuAD (EM), MCoNaLa ja→Python (chrF++) and
//! Temporal (chrF++). `cargo run --release --bin table1` re-scores the authors' recorded runs into
//! `reports/table1/`; `--source live` re-runs the rows here, one cell each (src/tables/cells.rs).

#[path = "../src/bin/shared/mod.rs"]
#[allow(dead_code)] // each binary uses part of the shared arguments
mod shared;

use std::process::ExitCode;

use clap::Parser;
use prompt2model::data::registry::Registry;
use prompt2model::tables::{cells::LiveTable, table1, table1_live};

#[derive(Parser)]
#[command(about = "Reproduce Table 1 (downstream performance on real test sets)")]
struct Args {
    /// Where the numbers come from: `recorded` re-scores the paper authors' recorded outputs;
    /// `live` re-runs the paper's rows here on the pipeline (data/live_tables.toml).
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
            let Some(plan) = args.live.run_cells(LiveTable::Table1)? else { return Ok(()) };
            table1_live::collect(&plan, &registry)?.write(&registry.paths.reports)?
        } else {
            table1::run_recorded(&registry)?
        };
        println!("{}", std::fs::read_to_string(dir.join("table1.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

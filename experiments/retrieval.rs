//! Retrieval quality on the paper's three prompts: the top-5 of the model retriever and of the
//! dataset retriever for each task, and the ranks of the models and datasets a person would choose.
//! `cargo run --release --bin retrieval` writes `reports/retrieval/`.

#[path = "../src/bin/shared/mod.rs"]
#[allow(dead_code)] // each binary uses part of the shared arguments
mod shared;

use std::process::ExitCode;

use clap::Parser;
use prompt2model::config::Paths;
use prompt2model::tables::retrieval;

#[derive(Parser)]
#[command(about = "Retrieval quality on the paper's three prompts (model and dataset retrievers)")]
struct Args {
    /// The LLM for HyDE (default none: the instruction is the query).
    #[command(flatten)]
    teacher: shared::TeacherArgs,
}

fn main() -> ExitCode {
    shared::main_with(|| {
        let args = Args::parse();
        let teacher = args.teacher.build_optional()?;
        let dir = retrieval::run(&Paths::from_env()?, teacher.as_deref())?;
        println!("{}", std::fs::read_to_string(dir.join("README.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

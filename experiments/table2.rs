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
    /// Run this one arm (a cell) in this process: what each job of the local runner and of the
    /// Slurm array does.
    #[arg(long, value_name = "ID")]
    cell: Option<String>,
    /// Print the cells (one per arm; done or not) and stop.
    #[arg(long)]
    list_cells: bool,
    /// Arms trained at once, each as a process of its own (1: one after the other, in this process).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Write cells.sbatch, collect.sbatch and submit.sh into DIR (a Slurm array, one arm per
    /// task; resources from the scale's `slurm` entry) instead of training here.
    #[arg(long, value_name = "DIR")]
    emit_slurm: Option<PathBuf>,
    /// Array tasks running at once on the cluster (`--array=0-3%K`).
    #[arg(long, default_value_t = 4)]
    slurm_parallel: usize,
    /// Assemble the table from finished arms only (what the Slurm collector runs).
    #[arg(long)]
    collect_only: bool,
    /// The teacher of the "retrieval (transformed) + generation" arm, which rewrites the
    /// retrieved rows into SQuAD's format: `--teacher openai --base-url …` or `--teacher local`.
    /// Default `recorded`: the authors' generations answer nothing, so that arm is skipped (the
    /// report says so).
    #[command(flatten)]
    teacher: shared::TeacherArgs,
}

/// How a child process (local runner, Slurm node) is started for the same table.
fn child_args(args: &Args, runs_dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![
        "--scale".into(),
        args.scale.clone(),
        "--seed".into(),
        args.seed.to_string(),
        "--runs-dir".into(),
        runs_dir.display().to_string(),
    ];
    if let Some(g) = &args.generated {
        out.push("--generated".into());
        out.push(g.display().to_string());
    }
    if args.cpu {
        out.push("--cpu".into());
    }
    if args.teacher.choice.is_some() {
        out.extend(args.teacher.to_args());
    }
    out
}

fn main() -> ExitCode {
    shared::main_with(|| {
        let args = Args::parse();
        let registry = Registry::from_env()?;
        let models = ModelRegistry::from_env()?;
        let mut opts = Options::new(&args.scale);
        opts.generated =
            args.generated.clone().map(GeneratedSource::Dir).unwrap_or(GeneratedSource::Recorded);
        opts.seed = args.seed;
        opts.runs_dir = match &args.runs_dir {
            // Children and cluster nodes get it as an absolute path.
            Some(d) => {
                std::fs::create_dir_all(d)?;
                Some(d.canonicalize()?)
            }
            None => None,
        };
        if args.cpu {
            opts.device = tch::Device::Cpu;
        }
        if args.teacher.choice == Some(shared::TeacherChoice::None) {
            anyhow::bail!("--teacher none: Table 2 takes local or openai (the transformed arm) or recorded (the default)");
        }
        opts.teacher = args.teacher.settings(shared::TeacherChoice::Recorded);
        let prepared = table2::prepare(&registry, &opts)?;
        if let Some(id) = &args.cell {
            let record = prepared.run_arm(id, &models, &opts)?;
            println!(
                "{id}: trained on {} examples in {:.1} s; predictions in {}",
                record.train_examples,
                record.summary.seconds,
                prepared.runs_dir.join(id).display()
            );
            return Ok(());
        }
        let jobs = prepared.jobs();
        if args.list_cells {
            for (id, done) in jobs.ids.iter().zip(&jobs.done) {
                println!("{id:<28} {}", if *done { "done" } else { "to run" });
            }
            println!("{} cells; runs in {}", jobs.ids.len(), jobs.runs_dir.display());
            return Ok(());
        }
        let program = std::env::current_exe()?;
        let child = child_args(&args, &prepared.runs_dir);
        if let Some(dir) = &args.emit_slurm {
            for f in prompt2model::tables::cells::emit_slurm(
                &jobs,
                dir,
                &program,
                &child,
                args.slurm_parallel,
            )? {
                println!("wrote {}", f.display());
            }
            println!("submit with: bash {}/submit.sh ({} cells)", dir.display(), jobs.ids.len());
            return Ok(());
        }
        if !args.collect_only {
            if args.jobs > 1 {
                prompt2model::tables::cells::run_missing(&jobs, &program, &child, args.jobs)?;
            } else {
                prepared.run_all(&models, &opts)?;
            }
        }
        let table = prepared.collect()?;
        let dir = table2::write_report(&registry, &table)?;
        println!("{}", std::fs::read_to_string(dir.join("table2.md"))?);
        println!("report: {}", dir.display());
        Ok(())
    })
}

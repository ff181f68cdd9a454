//! The paper's claims, each re-tested live with a verdict: `cargo run --release --bin claims`
//! runs the cells of Tables 1–3 and the diversity ablation that are missing at `--scale` (each a
//! process of its own, `--jobs N` at a time, or a Slurm array with `--emit-slurm DIR`), then writes
//! `reports/claims-<scale>/` (src/tables/claims/; the claims are data/claims.toml).

#[path = "../src/bin/shared/mod.rs"]
#[allow(dead_code)] // each binary uses part of the shared arguments
mod shared;

use std::process::ExitCode;

use clap::Parser;
use prompt2model::data::registry::Registry;
use prompt2model::tables::cells::{emit_slurm, run_missing};
use prompt2model::tables::claims::{self, ClaimsPlan, Options};

#[derive(Parser)]
#[command(
    about = "Re-test the paper's claims (data/claims.toml) on live cells, each with a verdict"
)]
struct Args {
    /// Scale (smoke, laptop, paper), teacher, `--cell`, `--list-cells`, `--jobs`, `--emit-slurm`,
    /// `--collect-only`, `--cells-dir`: as the live tables. A cell here is `<table>:<id>`.
    #[command(flatten)]
    live: shared::LiveArgs,
    /// Run on the CPU even when a GPU is visible.
    #[arg(long)]
    cpu: bool,
}

impl Args {
    /// How a child process (the local runner, a Slurm node) is started for the same claims.
    fn child_args(&self, opts: &Options) -> Vec<String> {
        let mut a = vec!["--scale".to_string(), self.live.scale.clone()];
        a.extend(self.live.server.to_args());
        a.extend(["--cells-dir".to_string(), opts.cells_root.display().to_string()]);
        if self.cpu {
            a.push("--cpu".into());
        }
        a
    }
}

fn main() -> ExitCode {
    shared::main_with(|| {
        let args = Args::parse();
        let registry = Registry::from_env()?;
        let paths = &registry.paths;
        let cells_root = match &args.live.cells_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                d.canonicalize()?
            }
            None => paths.cache.join("runs"),
        };
        let opts = Options {
            scale: args.live.scale.clone(),
            teacher: args.live.teacher()?,
            teacher_settings: args.live.server.settings(shared::TeacherChoice::Recorded),
            cells_root,
            device: if args.cpu {
                tch::Device::Cpu
            } else {
                prompt2model::models::default_device()
            },
        };
        if let Some(id) = &args.live.cell {
            println!("{}", claims::run_cell(&registry, &opts, id)?);
            return Ok(());
        }
        let plan = ClaimsPlan::new(&registry, opts.clone())?;
        let jobs = plan.jobs();
        if args.live.list_cells {
            for (id, done) in jobs.ids.iter().zip(&jobs.done) {
                println!("{id:<44} {}", if *done { "done" } else { "to run" });
            }
            println!("{} cells; logs in {}", jobs.ids.len(), jobs.runs_dir.display());
            return Ok(());
        }
        let program = std::env::current_exe()?;
        let child = args.child_args(&opts);
        if let Some(dir) = &args.live.emit_slurm {
            for f in emit_slurm(&jobs, dir, &program, &child, args.live.slurm_parallel)? {
                println!("wrote {}", f.display());
            }
            println!("submit with: bash {}/submit.sh ({} cells)", dir.display(), jobs.ids.len());
            return Ok(());
        }
        if !args.live.collect_only {
            match plan.not_runnable_here() {
                Some(why) => {
                    println!("{why}: the report says so for every claim whose cells are missing")
                }
                None => {
                    run_missing(&jobs, &program, &child, args.live.jobs)?;
                }
            }
        }
        let report = plan.collect(&registry)?;
        let dir = report.write(&paths.reports)?;
        println!("{}", std::fs::read_to_string(dir.join("claims.md"))?);
        for (verdict, n) in report.tally() {
            println!("{n:>3} {}", verdict.label());
        }
        println!("report: {}", dir.display());
        Ok(())
    })
}

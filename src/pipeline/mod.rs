//! The pipeline: Prompt2Model end to end, from a prompt to a trained, evaluated, packaged model, in
//! a run folder that resumes after a kill (`p2m run`).
//!
//! Stages, in order, each a call into its stage's module: parse the prompt ([`crate::prompt_parser`])
//! → retrieve a dataset ([`crate::dataset_retriever`]) → generate examples
//! ([`crate::dataset_generator`], or the authors' recorded generations) → retrieve a model
//! ([`crate::model_retriever`]) → assemble train/validation/test ([`assemble`]) → train
//! ([`crate::trainer`]) → evaluate ([`evaluate`]) → package ([`package`]). Each writes into
//! `runs/<name>/<stage>/` with a `stage.json` ([`stage`]): a rerun skips what is done and redoes a
//! stage, and everything after it, when what it reads changed.

pub mod assemble;
pub mod budget;
pub mod config;
pub mod context;
pub mod evaluate;
pub mod layout;
pub mod package;
pub mod recorded;
pub mod reuse;
pub mod runs;
pub mod stage;
pub mod stages;
pub mod student;

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::teacher::Teacher;
pub use budget::{estimate_generation_cost, estimate_transform_cost, ConfirmCost, CostEstimate};
use config::RunConfig;
use context::RunContext;
use evaluate::MetricResult;
use stage::{run_stage, Outcome, Stage, StageRecord};
pub use stages::read_retrieved_dir;

/// Where runs live: `P2M_RUNS`, else `<root>/runs`.
pub fn runs_dir(paths: &Paths) -> PathBuf {
    std::env::var_os("P2M_RUNS").map(PathBuf::from).unwrap_or_else(|| paths.root.join("runs"))
}

/// A question to a person: (question, default) → answer.
pub type Ask = Box<dyn Fn(&str, &str) -> String>;
/// The next line a person typed (with its newline; empty at the end of input): the interactive
/// dataset choice reads through it, so the library never reads standard input itself.
pub type ReadLine = Box<dyn Fn() -> std::io::Result<String>>;

/// How a run is carried out (not what it is: that is [`RunConfig`]).
pub struct RunOptions {
    pub runs_dir: PathBuf,
    /// Redo this stage and everything after it.
    pub from: Option<Stage>,
    /// Start over when the run folder holds another prompt.
    pub force: bool,
    /// Ask a person at each decision (stdin must be a terminal).
    pub interactive: bool,
    /// The user confirmed a paid generation's estimate interactively.
    pub confirm_cost: Option<ConfirmCost>,
    /// Ask a person: (question, default) → answer (the default when they just press Enter).
    pub ask: Option<Ask>,
    /// Lines typed by a person, for the interactive dataset choice.
    pub read_line: Option<ReadLine>,
    /// When another process runs in the same folder: wait for it (else stop, naming it).
    pub wait: bool,
    pub device: tch::Device,
    /// Folders of other runs (searched up to 4 levels down) whose finished stages this run may
    /// take when they computed the same thing ([`reuse`]): the live tables pass their cells root.
    pub reuse_roots: Vec<PathBuf>,
}

impl RunOptions {
    /// A run nobody watches (table cells, tests): every default taken, nothing asked, and a
    /// folder in use by another process refused at once rather than waited for.
    pub fn unattended(runs_dir: PathBuf, device: tch::Device) -> RunOptions {
        RunOptions {
            runs_dir,
            from: None,
            force: false,
            interactive: false,
            confirm_cost: None,
            ask: None,
            read_line: None,
            wait: false,
            device,
            reuse_roots: Vec::new(),
        }
    }
}

/// `run.json`: what the run folder holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunManifest {
    pub name: String,
    pub prompt_sha256: String,
    pub config: RunConfig,
    pub resolved: serde_json::Value,
    pub created: String,
    pub updated: String,
    pub git_commit: Option<String>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub model_dir: PathBuf,
    pub stages: Vec<(Stage, bool, StageRecord)>,
    pub metrics: Vec<MetricResult>,
    pub teacher_cost_usd: f64,
    pub teacher_calls: u64,
}

/// Run (or resume) the pipeline: open the run, then each stage in order, each skipped when its
/// fingerprint says it is done (see the module docs).
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<RunSummary> {
    let ctx = RunContext::open(cfg, opts)?;
    let layout = &ctx.layout;
    for (what, path, original) in [
        ("examples", layout.examples_for_assembly(), layout.generated()),
        ("instruction", layout.parsed_for_training(), layout.parsed()),
    ] {
        if path != original {
            println!("[review] the reviewed {what} are used: {}", path.display());
        }
    }
    let mut stages = Vec::new();
    for stage in stages::all() {
        let inputs = stage.inputs(&ctx)?;
        let (outcome, record) = match reuse::find_reusable(&ctx, stage.as_ref(), &inputs)? {
            Some((from_dir, from)) => {
                let record =
                    stage::adopt_stage(layout.dir(), stage.stage(), inputs, &from_dir, &from)?;
                stage.after_reuse(&ctx, &layout.dir().join(stage.stage().name()))?;
                (Outcome::Reused, record)
            }
            None => run_stage(layout.dir(), stage.stage(), inputs, |dir| stage.run(&ctx, dir))?,
        };
        stages.push((stage.stage(), outcome != Outcome::Skipped, record));
    }
    let metrics: Vec<MetricResult> = stage::read_stage_json(&layout.metrics())?;
    let (teacher_calls, teacher_cost_usd) = match ctx.built_teacher() {
        Some(t) => (t.stats().calls, t.stats().cost_usd),
        None => (0, 0.0),
    };
    Ok(RunSummary {
        dir: layout.dir().to_path_buf(),
        model_dir: layout.model(),
        stages,
        metrics,
        teacher_cost_usd,
        teacher_calls,
    })
}

//! `p2m run` (Prompt2Model end to end, resumable) and `p2m runs list|show`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use prompt2model::config::Paths;
use prompt2model::pipeline::config::{RunConfig, TeacherSource};
use prompt2model::pipeline::runs::{self, RunInfo};
use prompt2model::pipeline::stage::Stage;
use prompt2model::pipeline::{self, RunOptions};

use crate::shared::TeacherArgs;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A paper task of data/tasks.toml (squad, temporal, mconala): its prompt, test set and metric.
    #[arg(long, conflicts_with = "prompt_file")]
    pub task: Option<String>,
    /// A file holding a prompt (an instruction and a few demonstrations).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// The run's name: its folder is runs/<name>/ (default: the task, or the prompt file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// A TOML file with any field of the run configuration (src/pipeline/config.rs); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Ask at each decision (the dataset, the cost), showing the default.
    #[arg(long)]
    pub interactive: bool,
    /// smoke | laptop | paper (data/run_scales.toml).
    #[arg(long)]
    pub scale: Option<String>,
    /// The teacher: --teacher local (offline SmolLM2, default), openai (--base-url …) or recorded
    /// (the paper authors' gpt-3.5-turbo generations, paper tasks only).
    #[command(flatten)]
    pub server: TeacherArgs,
    /// Stop before a paid generation unless its estimated cost (USD) fits.
    #[arg(long)]
    pub budget: Option<f64>,
    #[arg(long)]
    pub no_dataset_retrieval: bool,
    /// Train the default student instead of the retrieved one.
    #[arg(long)]
    pub no_model_retrieval: bool,
    #[arg(long)]
    pub no_generation: bool,
    /// warm-start | decoder | tiny:H:L:A | a model folder (implies no model retrieval).
    #[arg(long)]
    pub student: Option<String>,
    /// Train the K best candidate students briefly, keep the best on the generated validation
    /// split (the run's metric), then train it fully; every candidate's score goes in the report.
    #[arg(long)]
    pub select_student: Option<usize>,
    /// Keep the trainer's resume checkpoints after training finished (removed by default: they
    /// are model plus optimizer state, ~1.6 GB each for the default student).
    #[arg(long)]
    pub keep_checkpoints: bool,
    /// Train even when the data gate finds the training data degenerate (one class, mostly
    /// flagged rows); the report and the card say it was accepted as it was.
    #[arg(long)]
    pub accept_data: bool,
    /// The retrieved rows' share of the training cut when both sources have rows (0-1; default:
    /// equal numbers of generated and retrieved rows, as the paper).
    #[arg(long)]
    pub retrieved_share: Option<f64>,
    /// Reuse a generation: a folder with examples.jsonl (from `p2m generate` or another run).
    #[arg(long)]
    pub generated: Option<PathBuf>,
    /// Reuse a retrieved dataset: a folder from `p2m retrieve-dataset --out`.
    #[arg(long)]
    pub retrieved: Option<PathBuf>,
    /// Rewrite the retrieved rows into the task's format with the teacher before training on
    /// them (a plan, then one {"input", "output"} answer per row; rows it cannot rewrite are
    /// dropped and counted in the report and the card).
    #[arg(long)]
    pub transform_retrieved: bool,
    /// Retrieved rows transformed at most, when the transform is on (--transform-retrieved, or
    /// `transform_retrieved = true` in --config): a seeded sample; default 100.
    #[arg(long)]
    pub transform_rows: Option<usize>,
    /// The real test set: a registry id (`p2m data list`) or a JSONL file of {input, output}.
    #[arg(long)]
    pub test_dataset: Option<String>,
    /// Examples to generate (default: the scale's).
    #[arg(long)]
    pub n: Option<usize>,
    /// Search datasets and models with the teacher's English translation of a non-English instruction.
    #[arg(long)]
    pub translate_instruction: bool,
    /// Redo this stage and everything after it.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Stage::ALL.map(Stage::name)))]
    pub from: Option<String>,
    /// Start over if runs/<name> holds another prompt.
    #[arg(long)]
    pub force: bool,
    /// When another process runs in the same run folder, wait for it to finish (default: stop
    /// at once, naming it).
    #[arg(long)]
    pub wait: bool,
    /// Take finished stages (training, evaluation) from run folders under DIR that computed the
    /// same thing — the same student, rows and settings — instead of computing them again; the
    /// stage record names the run it came from. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub reuse_stages_from: Vec<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train and predict on the CPU even when a GPU is there.
    #[arg(long)]
    pub cpu: bool,
}

fn build_config(args: &RunArgs, paths: &Paths) -> Result<RunConfig> {
    let mut cfg = match &args.config {
        Some(p) => RunConfig::read(p)?,
        None => RunConfig::default(),
    };
    if let Some(t) = &args.task {
        cfg.task = Some(t.clone());
    }
    if let Some(p) = &args.prompt_file {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading the prompt file {}", p.display()))?;
        cfg.prompt = Some(text);
        cfg.prompt_source = format!("prompt file {}", p.display());
    }
    if cfg.prompt.is_none() {
        match &cfg.task {
            Some(id) => {
                let tasks = prompt2model::data::tasks::load_tasks(&paths.data)?;
                let t = prompt2model::data::tasks::find(&tasks, id).with_context(|| {
                    format!("unknown task `{id}`; data/tasks.toml has: {}", tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", "))
                })?;
                cfg.prompt = Some(t.prompt.clone());
                cfg.prompt_source = format!("the paper's {} prompt (data/tasks.toml)", t.id);
            }
            None => bail!("say what to do: --task squad|temporal|mconala, --prompt-file FILE, or --config run.toml with `task` or `prompt`"),
        }
    }
    if let Some(choice) = args.server.choice {
        cfg.teacher = choice
            .source()
            .context("`p2m run` needs a teacher: --teacher local, openai or recorded")?;
    }
    cfg.name = match (&args.name, &cfg.task, &args.prompt_file) {
        (Some(n), _, _) => n.clone(),
        _ if !cfg.name.is_empty() => cfg.name.clone(),
        (None, _, Some(p)) => {
            p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into())
        }
        (None, Some(t), None) => format!("{t}-{}", cfg.teacher.name()),
        (None, None, None) => "run".into(),
    };
    if let Some(s) = &args.scale {
        cfg.scale = s.clone();
    }
    // The teacher's server settings: the flags', unless a config file set them and no teacher flag
    // was given (a fleet written in run.toml stays as written).
    let from_file = args.config.is_some()
        && cfg.teacher_settings != prompt2model::teacher::TeacherSettings::default()
        && args.server.choice.is_none();
    if cfg.teacher != TeacherSource::Recorded && !from_file {
        cfg.teacher_settings =
            args.server.settings(cfg.teacher.into()).expect("a live teacher was chosen");
    }
    if args.budget.is_some() {
        cfg.budget_usd = args.budget;
    }
    cfg.dataset_retrieval &= !args.no_dataset_retrieval;
    cfg.model_retrieval &= !args.no_model_retrieval && args.student.is_none();
    cfg.generation &= !args.no_generation;
    if let Some(s) = &args.student {
        s.parse::<prompt2model::trainer::StudentSpec>()?;
        cfg.student = Some(s.clone());
    }
    cfg.generated_dir = args.generated.clone().or(cfg.generated_dir);
    cfg.retrieved_dir = args.retrieved.clone().or(cfg.retrieved_dir);
    cfg.transform_retrieved |= args.transform_retrieved;
    cfg.transform_rows = args.transform_rows.or(cfg.transform_rows);
    cfg.test_dataset = args.test_dataset.clone().or(cfg.test_dataset);
    cfg.num_examples = args.n.or(cfg.num_examples);
    cfg.translate_instruction |= args.translate_instruction;
    cfg.keep_checkpoints |= args.keep_checkpoints;
    cfg.accept_data |= args.accept_data;
    cfg.retrieved_share = args.retrieved_share.or(cfg.retrieved_share);
    if let Some(k) = args.select_student {
        anyhow::ensure!(k >= 1, "--select-student takes a number of candidates (1 or more)");
        cfg.select_student = k;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    Ok(cfg)
}

pub fn run(args: RunArgs) -> Result<()> {
    let paths = Paths::from_env()?;
    let cfg = build_config(&args, &paths)?;
    let interactive = args.interactive && std::io::stdin().is_terminal();
    if args.interactive && !interactive {
        eprintln!("note: --interactive, but standard input is not a terminal: running on autopilot (every default taken)");
    }
    let confirm: Option<pipeline::ConfirmCost> = if interactive {
        Some(Box::new(|est: &pipeline::CostEstimate| {
            eprint!(
                "pay about ${:.2} ({} requests to {})? [y/N] ",
                est.usd, est.requests, est.model
            );
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).is_ok() && line.trim().eq_ignore_ascii_case("y")
        }))
    } else {
        None
    };
    let ask: Option<pipeline::Ask> = if interactive {
        Some(Box::new(|question: &str, default: &str| {
            eprint!("{question} [{default}]: ");
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(_) if !line.trim().is_empty() => line.trim().to_string(),
                _ => default.to_string(),
            }
        }))
    } else {
        None
    };
    let device = if args.cpu { tch::Device::Cpu } else { prompt2model::models::default_device() };
    let read_line: Option<pipeline::ReadLine> = if interactive {
        Some(Box::new(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            Ok(line)
        }))
    } else {
        None
    };
    let opts = RunOptions {
        ask,
        read_line,
        wait: args.wait,
        runs_dir: pipeline::runs_dir(&paths),
        from: args.from.as_deref().and_then(Stage::parse),
        force: args.force,
        interactive,
        confirm_cost: confirm,
        device,
        reuse_roots: args.reuse_stages_from.clone(),
    };
    let summary = pipeline::run(&cfg, &opts)?;
    println!("\nrun {} ({})", cfg.name, summary.dir.display());
    for (stage, ran, rec) in &summary.stages {
        println!(
            "  {:<18} {:<8} {:>8.1} s  {}",
            stage.name(),
            match (ran, &rec.reused_from) {
                (true, Some(_)) => "reused",
                (true, None) => "ran",
                (false, _) => "cached",
            },
            rec.total_seconds,
            rec.summary
        );
    }
    println!("metrics (95 % bootstrap intervals):");
    for m in &summary.metrics {
        println!("  {:<10} {}", m.test_set, m.display());
    }
    println!(
        "teacher calls this time: {} (cost ${:.4}); model: {} (README.md; loads in transformers); report: {}",
        summary.teacher_calls,
        summary.teacher_cost_usd,
        summary.model_dir.display(),
        summary.dir.join(Stage::Evaluate.name()).join("report").display()
    );
    Ok(())
}

pub fn list() -> Result<()> {
    let paths = Paths::from_env()?;
    let dir = pipeline::runs_dir(&paths);
    let all = runs::list(&dir)?;
    if all.is_empty() {
        println!("no runs in {} (start one with `p2m run --task temporal`)", dir.display());
    }
    for r in all {
        let metric = r.manifest.config.metric.clone().unwrap_or_else(|| headline_metric(&r));
        println!("{:<24} {:<28} {}", r.manifest.name, r.status(), r.headline(&metric));
    }
    Ok(())
}

fn headline_metric(r: &RunInfo) -> String {
    r.manifest
        .config
        .task
        .as_deref()
        .map(|t| if t == "squad" { "em-squad" } else { "chrf++" })
        .unwrap_or("chrf++")
        .to_string()
}

pub fn show(name: String) -> Result<()> {
    let paths = Paths::from_env()?;
    let dir = pipeline::runs_dir(&paths).join(&name);
    anyhow::ensure!(
        dir.join("run.json").exists(),
        "no run `{name}` in {} (see `p2m runs list`)",
        dir.parent().unwrap_or(&dir).display()
    );
    let r = RunInfo::read(&dir)?;
    println!(
        "run {} — {}\n  folder: {}\n  prompt: {}\n  teacher: {:?}, scale {}",
        r.manifest.name,
        r.status(),
        r.dir.display(),
        r.manifest.config.prompt_source,
        r.manifest.config.teacher,
        r.manifest.config.scale
    );
    for (stage, rec) in &r.stages {
        let status = runs::stage_state(rec.as_ref());
        let detail = rec
            .as_ref()
            .map(|x| format!("{:>8.1} s  {}", x.total_seconds, x.summary))
            .unwrap_or_default();
        println!("  {:<18} {:<8} {}", stage.name(), status, detail);
    }
    println!(
        "  artefacts: generated examples {}, training sets {}, predictions {}, model {}",
        r.dir.join(Stage::Generate.name()).join("examples.jsonl").display(),
        r.dir.join(Stage::Assemble.name()).display(),
        r.dir.join(Stage::Evaluate.name()).display(),
        r.dir.join("model").display()
    );
    if let Some(c) = r.teacher_cost_usd {
        println!("  teacher cost: ${c:.4}");
    }
    for m in &r.metrics {
        println!("  {:<10} {}", m.test_set, m.display());
    }
    Ok(())
}

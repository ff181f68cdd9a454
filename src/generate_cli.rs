//! `p2m generate` and `p2m chat`: the dataset generator and the teacher from the command line.
//! Kept out of `main.rs` so the binaries stay thin and the wiring is testable.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;

use crate::dataset_generator::{self, Example, GeneratorConfig};
use crate::prompt_parser::{self, ParseMode, ParserConfig};
use crate::teacher::cache::{CacheMode, CachedTeacher};
use crate::teacher::local::LocalTeacher;
use crate::teacher::openai::{OpenAiConfig, OpenAiTeacher};
use crate::teacher::Teacher;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The in-process model (offline default: SmolLM2-135M-Instruct).
    Local,
    /// Any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama).
    Openai,
}

#[derive(clap::Args, Debug)]
pub struct TeacherArgs {
    /// Which teacher answers.
    #[arg(long, value_enum, default_value = "local")]
    pub backend: Backend,
    /// Base URL of the OpenAI-compatible server, up to and including `/v1`.
    #[arg(long, default_value = "https://api.openai.com/v1")]
    pub base_url: String,
    /// Model name at the server.
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub model: String,
    /// Environment variable that holds the API key (the key is never passed on the command line).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests-per-minute limit of the server, if known (avoids 429s).
    #[arg(long)]
    pub requests_per_minute: Option<f64>,
    /// Stop after this many billed calls (everything obtained so far is kept).
    #[arg(long)]
    pub max_api_calls: Option<u64>,
    /// Seconds before an unanswered request is abandoned and retried (OpenAI-compatible backend).
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout: f64,
}

impl TeacherArgs {
    pub fn build(&self) -> Result<Box<dyn Teacher>> {
        Ok(match self.backend {
            Backend::Local => Box::new(LocalTeacher::offline_default(self.max_api_calls)?),
            Backend::Openai => {
                let mut cfg = OpenAiConfig::for_base_url(&self.base_url, &self.model);
                cfg.api_key_env = self.api_key_env.clone();
                cfg.requests_per_minute = self.requests_per_minute;
                cfg.max_api_calls = self.max_api_calls;
                cfg.request_timeout_secs = self.request_timeout;
                Box::new(OpenAiTeacher::new(cfg)?)
            }
        })
    }
}

/// Where the prompt comes from: a paper task or a file.
#[derive(clap::Args, Debug)]
pub struct PromptArgs {
    /// A task of data/tasks.toml whose prompt to use (squad, temporal, mconala).
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub task: Option<String>,
    /// A file holding a free-form prompt (instruction + demonstrations).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
}

impl PromptArgs {
    /// The prompt text: the file's, or the task's as a user writes it (data/tasks.toml).
    pub fn read(&self) -> Result<String> {
        if let Some(path) = &self.prompt_file {
            return std::fs::read_to_string(path).with_context(|| format!("reading the prompt file {}", path.display()));
        }
        let id = self.task.as_deref().expect("clap requires --task or --prompt-file");
        let paths = crate::config::Paths::from_env()?;
        let tasks = crate::tasks::load_tasks(&paths.data)?;
        match crate::tasks::find(&tasks, id) {
            Some(t) => Ok(t.prompt.clone()),
            None => bail!("unknown task `{id}`; data/tasks.toml has: {}", tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Unique examples to generate.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Output folder: examples.jsonl, examples.parquet, generation_log.json, the teacher cache.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// Teacher cache (SQLite); default: <out>/teacher_cache.sqlite.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Answer only from the cache; fail on a miss.
    #[arg(long)]
    pub replay_only: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Annealing start temperature (default 0.5; the paper's SQuAD run used 0.3).
    #[arg(long)]
    pub initial_temperature: Option<f64>,
    /// Annealing end temperature (default 1.7; the paper's SQuAD run used 1.4).
    #[arg(long)]
    pub max_temperature: Option<f64>,
    /// Ablation: show only the user's demonstrations, never earlier generated examples.
    #[arg(long)]
    pub no_high_diversity: bool,
    /// Parse the prompt with layout rules only (no teacher call).
    #[arg(long)]
    pub deterministic_parse: bool,
    /// Also run the paper's diversity ablation (duplicates among the first `--n` raw examples
    /// with and without high-diversity prompting, same teacher and settings) and put its table and
    /// figure in the report. Both arms cost teacher calls (they anneal the temperature by raw
    /// examples, so they do not repeat this run's rounds); they go through the same cache, so a
    /// rerun or `--replay-only` replays them.
    #[arg(long)]
    pub diversity_ablation: bool,
}

/// Write the examples as parquet beside the JSONL the generator wrote (temp file, then rename).
pub fn write_examples_parquet(path: &Path, examples: &[Example]) -> Result<()> {
    let df = DataFrame::new_infer_height(vec![
        Column::new("input".into(), examples.iter().map(|e| e.input.clone()).collect::<Vec<_>>()),
        Column::new("output".into(), examples.iter().map(|e| e.output.clone()).collect::<Vec<_>>()),
    ])?;
    crate::report::write_parquet_atomic(&df, path)
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let prompt = args.prompt.read()?;
    let mode = if args.replay_only { CacheMode::ReplayOnly } else { CacheMode::ReadWrite };
    let cache_path = args.cache.clone().unwrap_or_else(|| args.out.join("teacher_cache.sqlite"));
    let teacher = CachedTeacher::open(args.teacher.build()?, &cache_path, mode)?;
    let mut cfg = GeneratorConfig { num_examples: args.n, high_diversity: !args.no_high_diversity, ..GeneratorConfig::default() };
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(t) = args.initial_temperature {
        cfg.initial_temperature = t;
    }
    if let Some(t) = args.max_temperature {
        cfg.max_temperature = t;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (examples, log, diversity) = runtime.block_on(async {
        let parser = ParserConfig { mode: if args.deterministic_parse { ParseMode::Deterministic } else { ParseMode::Auto }, ..ParserConfig::default() };
        let parsed = prompt_parser::parse_prompt(&prompt, Some(&teacher), &parser).await?;
        tracing::info!(language = parsed.language.name(), demonstrations = parsed.demonstrations.len(), "prompt parsed");
        let progress = dataset_generator::default_progress_bar(cfg.num_examples);
        let result = dataset_generator::generate(&teacher, &parsed, &cfg, &args.out, Some(&progress)).await;
        progress.finish_and_clear();
        let (examples, log) = result?;
        let diversity = if args.diversity_ablation {
            tracing::info!(n = cfg.num_examples, "diversity ablation: two arms of raw examples, with and without high-diversity prompting");
            // The arms differ only in high-diversity prompting and otherwise use this run's settings and seed.
            let base = GeneratorConfig { high_diversity: true, ..cfg.clone() };
            Some(dataset_generator::diversity_experiment(&teacher, &parsed, cfg.num_examples, &base).await?)
        } else {
            None
        };
        anyhow::Ok((examples, log, diversity))
    })?;
    write_examples_parquet(&args.out.join("examples.parquet"), &examples)?;
    let report = write_generation_report(&args.out, &prompt, &log, &cfg, diversity.as_ref())?;
    let stats = teacher.stats();
    println!(
        "{} examples in {} (examples.jsonl, examples.parquet, generation_log.json); report {}; teacher calls {}, cache hits {}, tokens {}+{}, cost ${:.4}",
        examples.len(),
        args.out.display(),
        report.display(),
        stats.calls,
        stats.cache_hits,
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.cost_usd
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One chat completion from the offline teacher model.
pub fn chat(args: ChatArgs) -> Result<()> {
    use crate::models::chat::{ChatMessage, ChatModel};
    let registry = crate::models::weights::ModelRegistry::from_env()?;
    let path = registry.resolve_main_file(crate::teacher::local::DEFAULT_TEACHER)?;
    let model = ChatModel::load(&path, crate::models::default_device())?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(ChatMessage::system(s.clone()));
    }
    messages.push(ChatMessage::user(args.prompt.clone()));
    let cfg = crate::models::sampling::SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        repetition_penalty: 1.0,
        seed: args.seed,
    };
    let out = model.chat_with_usage(&messages, &cfg)?;
    println!("{}", out.text);
    tracing::info!(prompt_tokens = out.prompt_tokens, completion_tokens = out.completion_tokens, "done");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reports

fn counts_frame(rows: &[(String, f64)]) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        Column::new("quantity".into(), rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
    ])?)
}

/// `DIR/report/`: what the generation did (from `generation_log.json`), the temperature curve,
/// and the manifest (teacher, settings, the prompt's sha256 through the config).
pub fn write_generation_report(
    out: &Path,
    prompt: &str,
    log: &dataset_generator::GenerationLog,
    cfg: &GeneratorConfig,
    diversity: Option<&dataset_generator::DiversityReport>,
) -> Result<PathBuf> {
    use crate::report::{figures, Manifest, Report, ReportTable};
    let paths = crate::config::Paths::from_env()?;
    let mut rows: Vec<(String, f64)> = vec![
        ("target examples".into(), log.target as f64),
        ("accepted examples".into(), log.accepted as f64),
        ("rounds".into(), log.rounds as f64),
        ("requests".into(), log.requests as f64),
        ("failed requests".into(), log.failed_requests as f64),
        ("responses replayed from the cache".into(), log.cached_responses as f64),
        ("choices".into(), log.choices as f64),
        ("choices cut at the token limit".into(), log.truncated_choices as f64),
        ("parsed candidates".into(), log.candidates as f64),
        ("duplicate inputs".into(), log.duplicate_inputs as f64),
        ("inputs with conflicting outputs".into(), log.conflicting_inputs as f64),
        ("prompt tokens (billed)".into(), log.prompt_tokens as f64),
        ("completion tokens (billed)".into(), log.completion_tokens as f64),
        ("cost (USD)".into(), log.cost_usd),
    ];
    rows.extend(log.rejected.iter().map(|(k, v)| (format!("rejected: {k}"), *v as f64)));
    rows.extend(log.errors.iter().map(|(k, v)| (format!("request error: {k}"), *v as f64)));
    let mut table = ReportTable::new("generation", "Generation summary", counts_frame(&rows)?);
    table.decimals = 4;
    let curve = DataFrame::new_infer_height(vec![
        Column::new("round".into(), log.temperature_curve.iter().map(|p| p.round).collect::<Vec<_>>()),
        Column::new("accepted".into(), log.temperature_curve.iter().map(|p| p.accepted as u64).collect::<Vec<_>>()),
        Column::new("temperature".into(), log.temperature_curve.iter().map(|p| p.temperature).collect::<Vec<_>>()),
        Column::new("requests".into(), log.temperature_curve.iter().map(|p| p.requests as u64).collect::<Vec<_>>()),
    ])?;
    use sha2::Digest;
    let manifest = Manifest::new(
        "report",
        &paths.root,
        serde_json::json!({
            "backend": log.backend, "model": log.model, "generator": cfg,
            "prompt_sha256": hex::encode(sha2::Sha256::digest(prompt.as_bytes())), "output_dir": out,
        }),
    );
    let mut tables = vec![table, ReportTable::new("temperature_curve", "Temperature annealing per round", curve)];
    let mut notes = Vec::new();
    if let Some(d) = diversity {
        tables.push(diversity_table(d)?);
        notes.push(diversity_note(d));
    }
    let report = Report {
        name: "report".into(),
        title: format!("Dataset generation: {} examples from {} / {}", log.accepted, log.backend, log.model),
        tables,
        notes: vec![format!(
            "Temperatures anneal from {} to {} with the accepted fraction (T = T0 + (Tmax − T0) · accepted / N); high-diversity prompting {}; self-consistency filtering {}.",
            cfg.initial_temperature,
            cfg.max_temperature,
            if cfg.high_diversity { "on" } else { "off" },
            if cfg.filter_duplicated_examples { "on" } else { "off" }
        )]
        .into_iter()
        .chain(notes)
        .collect(),
        manifest,
    };
    let points: Vec<(f64, f64)> = log.temperature_curve.iter().map(|p| (p.accepted as f64, p.temperature)).collect();
    report.write(out, |dir| {
        let mut files = Vec::new();
        if !points.is_empty() {
            files.extend(figures::line_chart(dir, "temperature_curve", "Temperature by accepted examples", "accepted examples", "temperature", &[figures::Curve { label: log.model.clone(), points }])?);
        }
        if let Some(d) = diversity {
            files.extend(diversity_figure(dir, d)?);
        }
        Ok(files)
    })
}

/// The ablation as a table: duplicates with and without high-diversity prompting, the paper's beside.
fn diversity_table(report: &dataset_generator::DiversityReport) -> Result<crate::report::ReportTable> {
    let (paper_without, paper_with, paper_n) = report.paper;
    let pct = |d: usize, n: usize| d as f64 * 100.0 / n.max(1) as f64;
    let (without, with) = (&report.without_high_diversity, &report.with_high_diversity);
    let frame = DataFrame::new_infer_height(vec![
        Column::new("prompting".into(), vec!["without high-diversity".to_string(), "with high-diversity".to_string()]),
        Column::new("examples".into(), vec![without.examples as u64, with.examples as u64]),
        Column::new("duplicate inputs".into(), vec![without.duplicate_inputs as u64, with.duplicate_inputs as u64]),
        Column::new("duplicates (%)".into(), vec![pct(without.duplicate_inputs, without.examples), pct(with.duplicate_inputs, with.examples)]),
        Column::new("paper duplicates (%)".into(), vec![pct(paper_without, paper_n), pct(paper_with, paper_n)]),
        Column::new("requests".into(), vec![without.requests, with.requests]),
    ])?;
    Ok(crate::report::ReportTable::new("diversity", "Duplicate inputs with and without generated examples in the prompt", frame))
}

fn diversity_note(report: &dataset_generator::DiversityReport) -> String {
    let (paper_without, paper_with, paper_n) = report.paper;
    format!(
        "Diversity ablation over the first {} raw examples: {} duplicate inputs without high-diversity prompting, {} with; the paper (gpt-3.5-turbo) reports {paper_without}/{paper_n} without and {paper_with}/{paper_n} with.",
        report.n, report.without_high_diversity.duplicate_inputs, report.with_high_diversity.duplicate_inputs
    )
}

/// The ablation as paired bars (this teacher vs the paper), `diversity.png/svg`.
fn diversity_figure(dir: &Path, report: &dataset_generator::DiversityReport) -> Result<Vec<String>> {
    use crate::report::figures;
    let (paper_without, paper_with, paper_n) = report.paper;
    let pct = |d: usize, n: usize| d as f64 * 100.0 / n.max(1) as f64;
    let arm = |label: &str, paper: usize, a: &dataset_generator::DiversityArm| figures::BarGroup {
        label: label.into(),
        paper: Some(pct(paper, paper_n)),
        reproduced: Some(pct(a.duplicate_inputs, a.examples)),
    };
    let panels = [figures::BarPanel {
        title: "duplicate inputs (%)".into(),
        axis: "duplicates (%)".into(),
        groups: vec![arm("without", paper_without, &report.without_high_diversity), arm("with", paper_with, &report.with_high_diversity)],
    }];
    figures::paired_bars(dir, "diversity", "Duplicates: paper (gpt-3.5-turbo) vs this teacher", &panels)
}

#[derive(clap::Args, Debug)]
pub struct DiversityArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Raw examples generated per arm (the paper: 200).
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// Record/replay cache (default `<cache>/teacher/diversity.sqlite`): a rerun replays.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long)]
    pub replay_only: bool,
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The paper's diversity ablation: duplicates among `n` raw generated examples with and without
/// high-diversity few-shot prompting; writes `reports/diversity/` with the paper's numbers beside.
pub fn diversity(args: DiversityArgs) -> Result<()> {
    use crate::report::{Manifest, Report};
    let prompt = args.prompt.read()?;
    let paths = crate::config::Paths::from_env()?;
    let mode = if args.replay_only { CacheMode::ReplayOnly } else { CacheMode::ReadWrite };
    let cache_path = args.cache.clone().unwrap_or_else(|| paths.cache.join("teacher/diversity.sqlite"));
    if let Some(dir) = cache_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let teacher = CachedTeacher::open(args.teacher.build()?, &cache_path, mode)?;
    let mut cfg = GeneratorConfig { num_examples: args.n, ..GeneratorConfig::default() };
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let parser = ParserConfig { mode: ParseMode::Deterministic, ..ParserConfig::default() };
        let parsed = prompt_parser::parse_prompt(&prompt, Some(&teacher), &parser).await?;
        anyhow::Ok(dataset_generator::diversity_experiment(&teacher, &parsed, args.n, &cfg).await?)
    })?;
    let stats = teacher.stats();
    let mut manifest = Manifest::new("diversity", &paths.root, serde_json::json!({ "task": args.prompt.task, "n": args.n, "generator": cfg, "teacher_backend": teacher.backend(), "teacher_model": teacher.model() }));
    manifest.tool_versions.insert("teacher".into(), format!("{} / {}", teacher.backend(), teacher.model()));
    let r = Report {
        name: "diversity".into(),
        title: format!("High-diversity few-shot prompting: duplicates among {} generated examples ({})", args.n, teacher.model()),
        tables: vec![diversity_table(&report)?],
        notes: vec![
            diversity_note(&report),
            format!("Teacher calls {} (cache hits {}), tokens {}+{}, cost ${:.4}.", stats.calls, stats.cache_hits, stats.prompt_tokens, stats.completion_tokens, stats.cost_usd),
        ],
        manifest,
    };
    let dir = r.write(&paths.reports, |dir| diversity_figure(dir, &report))?;
    println!("{}", std::fs::read_to_string(dir.join("diversity.md"))?);
    println!("report: {}", dir.display());
    Ok(())
}

//! `p2m generate`, `p2m diversity` and `p2m chat`: the dataset generator, its diversity ablation
//! and the offline teacher from the command line.

use std::path::PathBuf;

use anyhow::Result;
use prompt2model::config::Paths;
use prompt2model::data::examples::write_examples_parquet;
use prompt2model::data::paper::load_paper_results;
use prompt2model::dataset_generator::report::{
    diversity_figure, diversity_note, diversity_table, write_generation_report,
};
use prompt2model::dataset_generator::{self, GeneratorConfig};
use prompt2model::prompt_parser::{self, ParseMode, ParserConfig};
use prompt2model::teacher::cache::{recorded_backends, CacheMode, CachedTeacher};
use prompt2model::teacher::{Teacher, TeacherKind, TeacherStats};

use crate::shared::{PromptArgs, TeacherArgs, TeacherChoice};

/// The teacher of a command that records into (or replays from) `cache_path`. Replay-only, the
/// servers are not contacted at all: the backend name the requests were keyed by comes from
/// `--backend-name` or from the cache itself.
fn cached_teacher_source(
    args: &TeacherArgs,
    command: &str,
    replay_only: bool,
    cache_path: &std::path::Path,
) -> Result<Box<dyn Teacher>> {
    let Some(mut settings) = args.settings(TeacherChoice::Local) else {
        anyhow::bail!("`{command}` needs a live teacher; use --teacher local (offline) or --teacher openai --base-url …");
    };
    if replay_only && settings.kind == TeacherKind::Openai {
        settings.discover = false;
        if settings.backend_name.is_none() {
            let recorded = recorded_backends(cache_path, &settings.model)?;
            match recorded.as_slice() {
                [one] => {
                    tracing::info!(backend = %one, cache = %cache_path.display(), "replay-only: the backend name recorded in the cache");
                    settings.backend_name = Some(one.clone());
                }
                [] => {}
                several => anyhow::bail!(
                    "{} holds answers of model `{}` from several backends ({}); name one with --backend-name",
                    cache_path.display(),
                    settings.model,
                    several.join(", ")
                ),
            }
        }
    }
    settings.build()
}

/// One line per endpoint of an HTTP teacher: what answered, how its time was spent.
fn endpoint_lines(stats: &TeacherStats) -> Vec<String> {
    stats
        .endpoints
        .iter()
        .map(|e| {
            format!(
                "  {} ({}): {} slot(s) [{}], response_format {}, {} answered, {} lost, {} slow, queue {:.1} s, in slots {:.1} s, {:.1} completion tokens/s, slot utilisation {:.0} %{}",
                e.base_url,
                e.backend,
                e.slots,
                e.slots_source,
                e.response_format,
                e.answered,
                e.lost,
                e.slow,
                e.queue_secs,
                e.decode_secs,
                e.tokens_per_sec(),
                e.slot_utilisation() * 100.0,
                if e.out_of_service { ", taken out of service" } else { "" }
            )
        })
        .collect()
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

pub fn generate(args: GenerateArgs) -> Result<()> {
    let prompt = args.prompt.read()?;
    let mode = if args.replay_only { CacheMode::ReplayOnly } else { CacheMode::ReadWrite };
    let cache_path = args.cache.clone().unwrap_or_else(|| args.out.join("teacher_cache.sqlite"));
    let teacher = CachedTeacher::open(
        cached_teacher_source(&args.teacher, "generate", args.replay_only, &cache_path)?,
        &cache_path,
        mode,
    )?;
    let mut cfg = GeneratorConfig {
        num_examples: args.n,
        high_diversity: !args.no_high_diversity,
        ..GeneratorConfig::default()
    };
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
    let paper = load_paper_results(&Paths::from_env()?.data)?.diversity;
    let report = write_generation_report(
        &args.out,
        &prompt,
        &log,
        &cfg,
        diversity.as_ref().map(|d| (d, &paper)),
    )?;
    let stats = teacher.stats();
    println!(
        "{} examples in {} (examples.jsonl, examples.parquet, generation_log.json); report {}; teacher {} / {}: calls {}, HTTP requests {}, cache hits {}, tokens {}+{}, cost ${:.4}",
        examples.len(),
        args.out.display(),
        report.display(),
        teacher.backend(),
        teacher.model(),
        stats.calls,
        stats.http_attempts,
        stats.cache_hits,
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.cost_usd
    );
    for line in endpoint_lines(&stats) {
        println!("{line}");
    }
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
    /// `bf16` stores the weight matrices in bf16 (half the bytes read per token; outputs may
    /// differ slightly from f32's, the default).
    #[arg(long, default_value = "f32")]
    pub precision: prompt2model::models::precision::Precision,
    /// `llama-cpp` decodes with llama.cpp in process, on the GGUF's quantised weights (about 3×
    /// the default `libtorch` engine at batch 1); `--precision` applies to `libtorch` only.
    #[arg(long, default_value = "libtorch")]
    pub engine: prompt2model::models::chat::DecodingEngine,
}

/// One chat completion from the offline teacher model.
pub fn chat(args: ChatArgs) -> Result<()> {
    use prompt2model::models::chat::{ChatMessage, ChatModel};
    let registry = prompt2model::models::registry::ModelRegistry::from_env()?;
    let path = registry.resolve_main_file(prompt2model::teacher::local::DEFAULT_TEACHER)?;
    args.engine.check_precision(args.precision, ("--precision", "--engine"))?;
    let mut model = ChatModel::load(&path, prompt2model::models::default_device())?;
    model.set_precision(args.precision);
    model.set_engine(args.engine)?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(ChatMessage::system(s.clone()));
    }
    messages.push(ChatMessage::user(args.prompt.clone()));
    let cfg = prompt2model::models::sampling::SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        repetition_penalty: 1.0,
        seed: args.seed,
    };
    let out = model.chat_with_usage(&messages, &cfg)?;
    println!("{}", out.text);
    tracing::info!(
        prompt_tokens = out.prompt_tokens,
        completion_tokens = out.completion_tokens,
        "done"
    );
    Ok(())
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
    use prompt2model::report::{Manifest, Report};
    let prompt = args.prompt.read()?;
    let paths = Paths::from_env()?;
    let paper = load_paper_results(&paths.data)?.diversity;
    let mode = if args.replay_only { CacheMode::ReplayOnly } else { CacheMode::ReadWrite };
    let cache_path =
        args.cache.clone().unwrap_or_else(|| paths.cache.join("teacher/diversity.sqlite"));
    if let Some(dir) = cache_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let teacher = CachedTeacher::open(
        cached_teacher_source(&args.teacher, "diversity", args.replay_only, &cache_path)?,
        &cache_path,
        mode,
    )?;
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
    let mut manifest = Manifest::new(
        "diversity",
        &paths.root,
        serde_json::json!({ "task": args.prompt.task, "n": args.n, "generator": cfg, "teacher_backend": teacher.backend(), "teacher_model": teacher.model() }),
    );
    manifest
        .tool_versions
        .insert("teacher".into(), format!("{} / {}", teacher.backend(), teacher.model()));
    let r = Report {
        name: "diversity".into(),
        title: format!(
            "High-diversity few-shot prompting: duplicates among {} generated examples ({})",
            args.n,
            teacher.model()
        ),
        tables: vec![diversity_table(&report, &paper)?],
        notes: vec![
            diversity_note(&report, &paper),
            format!(
                "Teacher calls {} (cache hits {}), tokens {}+{}, cost ${:.4}.",
                stats.calls,
                stats.cache_hits,
                stats.prompt_tokens,
                stats.completion_tokens,
                stats.cost_usd
            ),
        ],
        manifest,
    };
    let dir = r.write(&paths.reports, |dir| diversity_figure(dir, &report, &paper))?;
    println!("{}", std::fs::read_to_string(dir.join("diversity.md"))?);
    println!("report: {}", dir.display());
    Ok(())
}

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
}

impl TeacherArgs {
    pub fn build(&self) -> Result<Box<dyn Teacher>> {
        Ok(match self.backend {
            Backend::Local => Box::new(LocalTeacher::offline_default(self.max_api_calls)?),
            Backend::Openai => {
                let mut cfg = if self.base_url.contains("api.openai.com") {
                    OpenAiConfig::openai(self.model.clone())
                } else {
                    OpenAiConfig::vllm(self.base_url.clone(), self.model.clone())
                };
                cfg.api_key_env = self.api_key_env.clone();
                cfg.requests_per_minute = self.requests_per_minute;
                cfg.max_api_calls = self.max_api_calls;
                Box::new(OpenAiTeacher::new(cfg)?)
            }
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A task of data/tasks.toml whose prompt to use (squad, temporal, mconala).
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub task: Option<String>,
    /// A file holding a free-form prompt (instruction + demonstrations).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
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
}

fn read_prompt(args: &GenerateArgs) -> Result<String> {
    if let Some(path) = &args.prompt_file {
        return std::fs::read_to_string(path).with_context(|| format!("reading the prompt file {}", path.display()));
    }
    let id = args.task.as_deref().expect("clap requires --task or --prompt-file");
    let paths = crate::config::Paths::from_env()?;
    let tasks = crate::tasks::load_tasks(&paths.data)?;
    match crate::tasks::find(&tasks, id) {
        Some(t) => Ok(t.prompt.clone()),
        None => bail!("unknown task `{id}`; data/tasks.toml has: {}", tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")),
    }
}

/// Write the examples as parquet beside the JSONL the generator wrote (temp file, then rename).
pub fn write_examples_parquet(path: &Path, examples: &[Example]) -> Result<()> {
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("input".into(), examples.iter().map(|e| e.input.clone()).collect::<Vec<_>>()),
        Column::new("output".into(), examples.iter().map(|e| e.output.clone()).collect::<Vec<_>>()),
    ])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    ParquetWriter::new(tmp.as_file()).finish(&mut df).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tmp.persist(path)?;
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let prompt = read_prompt(&args)?;
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
    let (examples, _log) = runtime.block_on(async {
        let parser = ParserConfig { mode: if args.deterministic_parse { ParseMode::Deterministic } else { ParseMode::Auto }, ..ParserConfig::default() };
        let parsed = prompt_parser::parse_prompt(&prompt, Some(&teacher), &parser).await?;
        tracing::info!(language = parsed.language.name(), demonstrations = parsed.demonstrations.len(), "prompt parsed");
        let progress = dataset_generator::default_progress_bar(cfg.num_examples);
        let result = dataset_generator::generate(&teacher, &parsed, &cfg, &args.out, Some(&progress)).await;
        progress.finish_and_clear();
        anyhow::Ok(result?)
    })?;
    write_examples_parquet(&args.out.join("examples.parquet"), &examples)?;
    let stats = teacher.stats();
    println!(
        "{} examples in {} (examples.jsonl, examples.parquet, generation_log.json); teacher calls {}, cache hits {}, tokens {}+{}, cost ${:.4}",
        examples.len(),
        args.out.display(),
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
    let id = crate::teacher::local::DEFAULT_TEACHER;
    let file = registry.model(id)?.files.first().map(|f| f.name.clone()).context("the teacher model lists no files")?;
    let path = registry.resolve_file(id, &file)?;
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

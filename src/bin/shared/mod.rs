//! What every binary shares (included with `#[path]` by `src/bin/p2m/main.rs` and the
//! `experiments/` binaries; the library has no argument parsing): logging, error reporting, and the
//! arguments several commands take — one `TeacherArgs`, one `PromptArgs`, one `InstructionArgs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use prompt2model::config::Paths;
use prompt2model::data::tasks;
use prompt2model::teacher::structured::ResponseFormat;
use prompt2model::teacher::{
    EndpointSettings, Teacher, TeacherSettings, DEFAULT_REQUESTS_PER_MINUTE,
};

/// Log to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Run a binary's body; print the error chain and exit non-zero on failure.
pub fn main_with(body: impl FnOnce() -> Result<()>) -> ExitCode {
    init_tracing();
    p2m_metrics::scoring::exit_with(body())
}

/// `--teacher`: which LLM answers (`none` only where a command can do without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeacherChoice {
    /// No LLM: the retrievers query with the instruction and take choices from a person, a
    /// config file or their defaults.
    None,
    /// The in-process offline model (SmolLM2-135M-Instruct).
    Local,
    /// Any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama).
    Openai,
    /// The paper authors' recorded gpt-3.5-turbo generations (`p2m run` on a paper task only).
    Recorded,
}

impl From<prompt2model::pipeline::config::TeacherSource> for TeacherChoice {
    fn from(source: prompt2model::pipeline::config::TeacherSource) -> TeacherChoice {
        use prompt2model::pipeline::config::TeacherSource;
        match source {
            TeacherSource::Local => TeacherChoice::Local,
            TeacherSource::Openai => TeacherChoice::Openai,
            TeacherSource::Recorded => TeacherChoice::Recorded,
        }
    }
}

impl TeacherChoice {
    /// The teacher the library knows this as; None for `none`.
    pub fn source(self) -> Option<prompt2model::pipeline::config::TeacherSource> {
        use prompt2model::pipeline::config::TeacherSource;
        match self {
            TeacherChoice::None => None,
            TeacherChoice::Local => Some(TeacherSource::Local),
            TeacherChoice::Openai => Some(TeacherSource::Openai),
            TeacherChoice::Recorded => Some(TeacherSource::Recorded),
        }
    }
}

/// The teacher flags of every command that calls an LLM (generate, diversity, the retrievers, the
/// retrieval report): one set of flags with one set of defaults, so two commands pointed at the
/// same server behave the same.
#[derive(clap::Args, Debug, Clone)]
pub struct TeacherArgs {
    /// Which teacher answers (default: `local` for generate, diversity and run, `none` for the
    /// retrievers, `recorded` for the live tables; `recorded` only for `p2m run` on a paper task
    /// and the live tables).
    #[arg(long = "teacher", visible_alias = "backend", value_enum)]
    pub choice: Option<TeacherChoice>,
    /// Base URL of the OpenAI-compatible server, up to and including `/v1`. Several (commas, or
    /// the flag repeated) make a fleet: requests are sharded over them and a failing one is taken
    /// out. Per-endpoint settings after `#`: `http://h:8080/v1#slots=1&rpm=0&backend=llama.cpp`.
    #[arg(long, value_delimiter = ',', default_value = "https://api.openai.com/v1")]
    pub base_url: Vec<String>,
    /// Model name at the server.
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub model: String,
    /// Environment variable that holds the API key (the key is never passed on the command line).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests-per-minute limit of each server (the reference's 80 by default; 0 = no limit).
    #[arg(long, default_value_t = DEFAULT_REQUESTS_PER_MINUTE)]
    pub requests_per_minute: f64,
    /// Stop after this many billed calls (everything obtained so far is kept).
    #[arg(long)]
    pub max_api_calls: Option<u64>,
    /// Seconds after which a sent request counts as slow (OpenAI-compatible backend): logged and
    /// kept waiting, never sent a second time (waiting for a slot does not count).
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout: f64,
    /// Requests in flight per server (its slots); default: what the server reports (llama.cpp's
    /// /props, llama-cpp-python: 1), else 5.
    #[arg(long)]
    pub slots: Option<usize>,
    /// Backend name in the teacher cache's keys and the logs; default: what the server reports
    /// (llama.cpp, llama-cpp-python, vllm, ollama, openai, …).
    #[arg(long)]
    pub backend_name: Option<String>,
    /// The first response_format shape for structured answers; a server that refuses it gets the
    /// next (json-schema → json-object-schema → json-object → none).
    #[arg(long, value_enum, default_value_t = ResponseFormatArg::JsonSchema)]
    pub response_format: ResponseFormatArg,
    /// Do not ask the servers what they are (name: --backend-name or `openai-compatible`; slots:
    /// --slots or 5).
    #[arg(long)]
    pub no_discover: bool,
    /// The local teacher's weights: `f32` (default) or `bf16` (faster batched generation on CPUs
    /// with AVX-512 BF16; slightly different answers, cached separately).
    #[arg(long, default_value = "f32")]
    pub local_precision: prompt2model::models::precision::Precision,
    /// The local teacher's decoding engine: `libtorch` (default) or `llama-cpp` (llama.cpp in
    /// process on the GGUF's quantised weights; different answers, cached separately).
    #[arg(long, default_value = "libtorch")]
    pub local_engine: prompt2model::models::chat::DecodingEngine,
}

/// The name clap parses `value` from, so a child process parses exactly what was given.
fn value_name<V: clap::ValueEnum>(value: &V) -> String {
    value.to_possible_value().expect("no value is skipped").get_name().to_string()
}

/// `--response-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseFormatArg {
    JsonSchema,
    JsonObjectSchema,
    JsonObject,
    None,
}

impl From<ResponseFormatArg> for ResponseFormat {
    fn from(a: ResponseFormatArg) -> Self {
        match a {
            ResponseFormatArg::JsonSchema => ResponseFormat::JsonSchema,
            ResponseFormatArg::JsonObjectSchema => ResponseFormat::JsonObjectSchema,
            ResponseFormatArg::JsonObject => ResponseFormat::JsonObject,
            ResponseFormatArg::None => ResponseFormat::None,
        }
    }
}

impl TeacherArgs {
    /// The settings these flags describe, with `default` when `--teacher` was not given; `None`
    /// for `--teacher none`.
    pub fn settings(&self, default: TeacherChoice) -> Option<TeacherSettings> {
        let kind = self.choice.unwrap_or(default).source()?.kind()?;
        let mut urls = self.base_url.iter().map(|u| u.trim()).filter(|u| !u.is_empty());
        let first = urls.next().unwrap_or("https://api.openai.com/v1").to_string();
        Some(TeacherSettings {
            kind,
            base_url: first,
            // Parsed (with any `#…` settings) when the teacher is built.
            endpoints: urls
                .map(|u| EndpointSettings { base_url: u.to_string(), ..Default::default() })
                .collect(),
            model: self.model.clone(),
            api_key_env: self.api_key_env.clone(),
            requests_per_minute: (self.requests_per_minute > 0.0)
                .then_some(self.requests_per_minute),
            max_api_calls: self.max_api_calls,
            request_timeout_secs: self.request_timeout,
            backend_name: self.backend_name.clone(),
            slots: self.slots,
            response_format: self.response_format.into(),
            discover: !self.no_discover,
            local_precision: self.local_precision,
            local_engine: self.local_engine,
        })
    }

    /// These flags as a child process is given them (the API key stays in its environment
    /// variable, which the child inherits; only the variable's name travels).
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(choice) = self.choice {
            a.extend(["--teacher".to_string(), value_name(&choice)]);
        }
        a.extend(["--base-url".to_string(), self.base_url.join(",")]);
        a.extend(["--model".to_string(), self.model.clone()]);
        a.extend(["--api-key-env".to_string(), self.api_key_env.clone()]);
        a.extend(["--requests-per-minute".to_string(), self.requests_per_minute.to_string()]);
        a.extend(["--request-timeout".to_string(), self.request_timeout.to_string()]);
        if let Some(n) = self.max_api_calls {
            a.extend(["--max-api-calls".to_string(), n.to_string()]);
        }
        if let Some(n) = self.slots {
            a.extend(["--slots".to_string(), n.to_string()]);
        }
        if let Some(b) = &self.backend_name {
            a.extend(["--backend-name".to_string(), b.clone()]);
        }
        a.extend(["--response-format".to_string(), value_name(&self.response_format)]);
        if self.no_discover {
            a.push("--no-discover".into());
        }
        if !self.local_precision.is_f32() {
            a.extend(["--local-precision".to_string(), self.local_precision.to_string()]);
        }
        if !self.local_engine.is_libtorch() {
            a.extend(["--local-engine".to_string(), self.local_engine.to_string()]);
        }
        a
    }

    /// The teacher of a command that needs one (`local` unless told otherwise).
    #[allow(dead_code)] // not every binary that includes this module generates
    pub fn build_required(&self, command: &str) -> Result<Box<dyn Teacher>> {
        match self.settings(TeacherChoice::Local) {
            Some(s) => s.build(),
            None => bail!("`{command}` needs a live teacher; use --teacher local (offline) or --teacher openai --base-url …"),
        }
    }

    /// The teacher of a command that can do without one (`none` unless told otherwise).
    #[allow(dead_code)]
    pub fn build_optional(&self) -> Result<Option<Box<dyn Teacher>>> {
        if self.choice == Some(TeacherChoice::Recorded) {
            bail!("--teacher recorded is for `p2m run` on a paper task; here use none, local or openai");
        }
        self.settings(TeacherChoice::None).map(|s| s.build()).transpose()
    }
}

/// Where the prompt comes from: a paper task or a file.
#[derive(clap::Args, Debug, Clone)]
pub struct PromptArgs {
    /// A task of data/tasks.toml whose prompt to use (squad, temporal, mconala).
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub task: Option<String>,
    /// A file holding a free-form prompt (instruction + demonstrations).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
}

#[allow(dead_code)]
impl PromptArgs {
    /// The prompt text: the file's, or the task's as a user writes it (data/tasks.toml).
    pub fn read(&self) -> Result<String> {
        if let Some(path) = &self.prompt_file {
            return std::fs::read_to_string(path)
                .with_context(|| format!("reading the prompt file {}", path.display()));
        }
        let id = self.task.as_deref().expect("clap requires --task or --prompt-file");
        Ok(find_task(&Paths::from_env()?, id)?.prompt)
    }
}

/// An instruction: given, or a paper task's.
#[derive(clap::Args, Debug, Clone)]
pub struct InstructionArgs {
    /// The task instruction.
    #[arg(long, required_unless_present = "task", conflicts_with = "task")]
    pub instruction: Option<String>,
    /// Use the instruction of a paper task of data/tasks.toml (squad, temporal, mconala).
    #[arg(long)]
    pub task: Option<String>,
}

#[allow(dead_code)]
impl InstructionArgs {
    pub fn text(&self, paths: &Paths) -> Result<String> {
        if let Some(i) = &self.instruction {
            if i.trim().is_empty() {
                bail!("--instruction is empty; describe the task in a sentence or two");
            }
            return Ok(i.clone());
        }
        let id = self.task.as_deref().expect("clap requires --instruction or --task");
        Ok(find_task(paths, id)?.instruction.trim().to_string())
    }

    /// The whole prompt: a paper task's (instruction and demonstrations), else the instruction.
    pub fn prompt(&self, paths: &Paths) -> Result<String> {
        match &self.task {
            Some(id) if self.instruction.is_none() => Ok(find_task(paths, id)?.prompt),
            _ => self.text(paths),
        }
    }
}

/// A paper task by id, or an error listing the valid ids.
fn find_task(paths: &Paths, id: &str) -> Result<tasks::Task> {
    let all = tasks::load_tasks(&paths.data)?;
    match tasks::find(&all, id) {
        Some(t) => Ok(t.clone()),
        None => bail!(
            "unknown task `{id}`; data/tasks.toml has: {}",
            all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A tokio runtime for the binaries' async calls (two workers: the machine's cores).
#[allow(dead_code)]
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// The live tables' flags (`table1`/`table3 --source live`): which cells, where, how many at once.
#[derive(clap::Args, Debug, Clone)]
#[allow(dead_code)] // the table binaries use it; p2m includes this file too
pub struct LiveArgs {
    /// Scale of the live cells (data/live_tables.toml): smoke, laptop or paper.
    #[arg(long, default_value = "laptop")]
    pub scale: String,
    /// Teacher of the cells' pipeline runs: `--teacher recorded` (default: the authors'
    /// gpt-3.5-turbo data, offline), `local` (the offline SmolLM2) or `openai` (any
    /// OpenAI-compatible server: --base-url, --model, --api-key-env, …).
    #[command(flatten)]
    pub server: TeacherArgs,
    /// Run this one cell in this process (what each job of the local runner and of the Slurm
    /// array does).
    #[arg(long)]
    pub cell: Option<String>,
    /// Print the cells (id, task, row, done or not) and stop.
    #[arg(long)]
    pub list_cells: bool,
    /// Cells run at once by the local runner.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Write cells.sbatch, collect.sbatch and submit.sh into DIR (a Slurm array, one cell per
    /// task) instead of running the cells here.
    #[arg(long)]
    pub emit_slurm: Option<std::path::PathBuf>,
    /// Array tasks running at once on the cluster (`--array=0-N%K`).
    #[arg(long, default_value_t = 8)]
    pub slurm_parallel: usize,
    /// Assemble the table from finished cells only (what the Slurm collector runs).
    #[arg(long)]
    pub collect_only: bool,
    /// Where the cells' runs live [default: <cache>/runs].
    #[arg(long)]
    pub cells_dir: Option<std::path::PathBuf>,
}

#[allow(dead_code)] // the table binaries use it; p2m includes this file too
impl LiveArgs {
    pub fn teacher(&self) -> Result<prompt2model::pipeline::config::TeacherSource> {
        let choice = self.server.choice.unwrap_or(TeacherChoice::Recorded);
        choice
            .source()
            .context("the live tables need a teacher: --teacher recorded, local or openai")
    }

    /// The cells, planned from data/live_tables.toml.
    pub fn plan(
        &self,
        paths: &prompt2model::config::Paths,
        table: prompt2model::tables::cells::LiveTable,
    ) -> Result<prompt2model::tables::cells::CellPlan> {
        let root = match &self.cells_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                d.canonicalize()?
            }
            None => paths.cache.join("runs"),
        };
        let mut plan =
            prompt2model::tables::cells::plan(paths, table, &self.scale, self.teacher()?, &root)?;
        if let Some(settings) = self.server.settings(TeacherChoice::Recorded) {
            plan.set_teacher_settings(&settings);
        }
        Ok(plan)
    }

    /// How a child process (local runner, Slurm node) is started for these cells.
    pub fn child_args(&self, plan: &prompt2model::tables::cells::CellPlan) -> Vec<String> {
        let root = plan.runs_dir.parent().and_then(|p| p.parent()).and_then(|p| p.parent());
        let mut args = vec!["--source".into(), "live".into(), "--scale".into(), self.scale.clone()];
        args.extend(self.server.to_args());
        if let Some(root) = root {
            args.push("--cells-dir".into());
            args.push(root.display().to_string());
        }
        args
    }

    /// Everything but the assembly: one cell, the list, the Slurm files, or the missing cells.
    /// Returns the plan when the table should now be assembled.
    pub fn run_cells(
        &self,
        table: prompt2model::tables::cells::LiveTable,
    ) -> Result<Option<prompt2model::tables::cells::CellPlan>> {
        let paths = prompt2model::config::Paths::from_env()?;
        let plan = self.plan(&paths, table)?;
        if let Some(id) = &self.cell {
            let summary = plan.run_cell(id, prompt2model::models::default_device())?;
            for m in &summary.metrics {
                println!("{id}: {} {}", m.test_set, m.display());
            }
            return Ok(None);
        }
        if self.list_cells {
            for c in &plan.cells {
                println!(
                    "{:<28} {:<9} {:<22} {}",
                    c.id,
                    c.task,
                    c.row,
                    if plan.is_done(c) { "done" } else { "to run" }
                );
            }
            println!("{} cells; runs in {}", plan.cells.len(), plan.runs_dir.display());
            return Ok(None);
        }
        let program = std::env::current_exe()?;
        if let Some(dir) = &self.emit_slurm {
            let files = prompt2model::tables::cells::emit_slurm(
                &plan.jobs(),
                dir,
                &program,
                &self.child_args(&plan),
                self.slurm_parallel,
            )?;
            for f in files {
                println!("wrote {}", f.display());
            }
            println!(
                "submit with: bash {}/submit.sh ({} cells, {} at a time)",
                dir.display(),
                plan.cells.len(),
                self.slurm_parallel
            );
            return Ok(None);
        }
        if !self.collect_only {
            prompt2model::tables::cells::run_missing(
                &plan.jobs(),
                &program,
                &self.child_args(&plan),
                self.jobs,
            )?;
        }
        Ok(Some(plan))
    }
}

//! What every stage of a run may use, opened once: the run's settings resolved, its task and
//! recorded data, its metric and real test set, the registries, the run folder (locked for this
//! process) and the teacher, built on first use.

use std::cell::OnceCell;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::{Resolved, RunConfig, TeacherSource};
use super::layout::RunLayout;
use super::recorded::{self, RecordedTeacher};
use super::stage::{self, Stage};
use super::{RunManifest, RunOptions};
use crate::config::Paths;
use crate::data::diagnostics::DataDiagnostics;
use crate::data::registry::Registry;
use crate::data::tasks::Task;
use crate::evaluator::metric_choice::{choose_metric, MetricChoice};
use crate::evaluator::Metric;
use crate::models::registry::ModelRegistry;
use crate::teacher::cache::{CacheMode, CachedTeacher};
use crate::teacher::{Teacher, TeacherKind};
use crate::util::fs::{sha256_hex, write_json};
use crate::util::lock::FolderLock;

/// A live teacher behind the run's one SQLite cache (so no answer is paid for twice).
pub type RunTeacher = CachedTeacher<Box<dyn Teacher>>;

/// One run, open.
pub struct RunContext<'a> {
    pub paths: Paths,
    pub registry: Registry,
    pub models: ModelRegistry,
    /// The configuration with a person's interactive answers applied.
    pub cfg: RunConfig,
    pub resolved: Resolved,
    pub opts: &'a RunOptions,
    pub name: String,
    pub prompt: String,
    pub task: Option<Task>,
    /// The paper authors' recorded run, when the teacher is `recorded`.
    pub recorded: Option<RecordedTeacher>,
    /// The metric the configuration names: the user's (`--metric`), else the paper task's; `None`
    /// leaves it to the data ([`RunContext::metric_choice`]).
    pub configured_metric: Option<Metric>,
    /// The real test set: a registry id or a JSONL file.
    pub test_dataset: Option<String>,
    pub layout: RunLayout,
    /// What the teacher is, in one line (fingerprints, provenance, the card).
    pub teacher_id: String,
    pub rt: tokio::runtime::Runtime,
    teacher: OnceCell<RunTeacher>,
    /// Paid calls this invocation may make (from `--budget` and the estimated price of a call).
    max_calls: Option<u64>,
    _lock: FolderLock,
}

impl<'a> RunContext<'a> {
    /// Check the configuration, ask a person what `--interactive` asks, open (or start over) the
    /// run folder under its lock, write `run.json`, forget the stages `--from` redoes, and pass
    /// the budget gate.
    pub fn open(cfg: &RunConfig, opts: &'a RunOptions) -> Result<RunContext<'a>> {
        Self::open_with(Paths::from_env()?, cfg, opts)
    }

    /// [`RunContext::open`] with the paths given (tests, embedding).
    pub fn open_with(
        paths: Paths,
        cfg: &RunConfig,
        opts: &'a RunOptions,
    ) -> Result<RunContext<'a>> {
        let registry = Registry::load(paths.clone())?;
        let models = ModelRegistry::load(paths.clone())?;
        let name = cfg.name.trim().to_string();
        anyhow::ensure!(
            !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..",
            "the run name `{name}` is not a folder name; pass --name with letters, digits, - or _"
        );
        let prompt = cfg.prompt.clone().unwrap_or_default();
        if prompt.trim().is_empty() {
            bail!("the prompt is empty: write an instruction (and a few demonstrations) into the prompt file, or use --task squad|temporal|mconala");
        }
        let cfg = ask_settings(cfg, opts, &paths)?;
        let resolved = cfg.resolve(&paths.data)?;
        let task = match &cfg.task {
            Some(id) => {
                let tasks = crate::data::tasks::load_tasks(&paths.data)?;
                Some(crate::data::tasks::find(&tasks, id).cloned().with_context(|| {
                    format!(
                        "unknown task `{id}`; data/tasks.toml has: {}",
                        tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })?)
            }
            None => None,
        };
        let recorded = if cfg.teacher == TeacherSource::Recorded {
            Some(recorded::for_task(&paths.data, cfg.task.as_deref())?)
        } else {
            None
        };
        anyhow::ensure!(
            !(cfg.transform_retrieved && cfg.teacher == TeacherSource::Recorded),
            "--transform-retrieved needs a live teacher to rewrite the retrieved rows; the recorded teacher answers nothing (use --teacher local or openai)"
        );
        let configured_metric = match cfg.metric.clone().or_else(|| task.as_ref().map(|t| t.metric.clone())) {
            Some(name) => Some(Metric::parse(&name).with_context(|| {
                format!(
                    "unknown metric `{name}` (the run configuration's `metric`, or the task's in data/tasks.toml); the metrics are {}",
                    Metric::ALL.map(|m| m.name()).join(", ")
                )
            })?),
            None => None,
        };
        let test_dataset =
            cfg.test_dataset.clone().or_else(|| task.as_ref().map(|t| t.test_dataset.clone()));

        let layout = RunLayout::new(opts.runs_dir.join(&name));
        let lock = FolderLock::acquire(&layout.lock(), opts.wait)?;
        open_folder(&layout, &cfg, &resolved, &prompt, opts, &paths)?;
        if let Some(from) = opts.from {
            for s in Stage::ALL.into_iter().filter(|s| *s >= from) {
                let _ = std::fs::remove_file(stage::record_path(layout.dir(), s));
            }
        }
        // Before the first paid call (parsing is one): the estimate, and the budget or a yes.
        let not_done = |s: Stage| {
            stage::read_record(layout.dir(), s).is_none_or(|r| r.status != stage::Status::Done)
        };
        let pending = super::budget::Pending {
            generation: cfg.generation
                && cfg.generated_dir.is_none()
                && recorded.is_none()
                && not_done(Stage::Generate),
            transform: resolved.transform.is_some()
                && cfg.dataset_retrieval
                && recorded.is_none()
                && not_done(Stage::RetrieveDatasets),
        };
        let max_calls =
            super::budget::gate(&cfg, &resolved, &prompt, pending, opts.confirm_cost.as_ref())?;
        let teacher_id = teacher_identity(&cfg);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(RunContext {
            paths,
            registry,
            models,
            cfg,
            resolved,
            opts,
            name,
            prompt,
            task,
            recorded,
            configured_metric,
            test_dataset,
            layout,
            teacher_id,
            rt,
            teacher: OnceCell::new(),
            max_calls,
            _lock: lock,
        })
    }

    /// The live teacher, built on first use (loading the local model or reaching a server costs
    /// time); None with the recorded teacher.
    pub fn teacher(&self) -> Result<Option<&RunTeacher>> {
        if self.cfg.teacher == TeacherSource::Recorded {
            return Ok(None);
        }
        if let Some(t) = self.teacher.get() {
            return Ok(Some(t));
        }
        let built = self.build_teacher()?;
        Ok(Some(self.teacher.get_or_init(|| built)))
    }

    /// The teacher when one was built during this invocation (for its call count and cost).
    pub fn built_teacher(&self) -> Option<&RunTeacher> {
        self.teacher.get()
    }

    fn build_teacher(&self) -> Result<RunTeacher> {
        let mut settings = self.cfg.teacher_settings.clone();
        settings.kind = self.cfg.teacher.kind().context("the recorded teacher answers nothing")?;
        if settings.kind == TeacherKind::Openai {
            let urls: Vec<&str> = std::iter::once(settings.base_url.as_str())
                .chain(settings.endpoints.iter().map(|e| e.base_url.as_str()))
                .collect();
            let key = std::env::var(&settings.api_key_env).ok();
            self.rt.block_on(reach_any(&urls, key.as_deref()))?;
        }
        if let Some(m) = self.max_calls {
            settings.max_api_calls = Some(settings.max_api_calls.map_or(m, |x| x.min(m)));
        }
        let inner = settings.build().map_err(|e| {
            if settings.kind == TeacherKind::Openai {
                e.context(format!(
                    "the teacher at {} is not usable; fix the URL or key, or use --teacher local",
                    settings.base_url
                ))
            } else {
                e
            }
        })?;
        Ok(CachedTeacher::open(inner, self.layout.teacher_cache(), CacheMode::ReadWrite)?)
    }

    /// The metrics the run is judged by, and why: the configured one, else what the data shows
    /// (the one decision both `--select-student` and evaluation use).
    pub fn metric_choice(&self, diagnostics: Option<&DataDiagnostics>) -> MetricChoice {
        // Both names were checked when the context was opened.
        let user = self.cfg.metric.as_deref().and_then(Metric::parse);
        let task = self.task.as_ref().and_then(|t| Metric::parse(&t.metric));
        choose_metric(diagnostics, task, user)
    }

    /// What identifies the real test set in a fingerprint: a file by its content (so editing it
    /// redoes evaluation, and `data/x.jsonl` vs `/abs/data/x.jsonl` is the same set), a registry
    /// id by its name.
    pub fn real_test_identity(&self) -> serde_json::Value {
        match self.test_dataset.as_deref() {
            None => serde_json::Value::Null,
            Some(spec) => match crate::util::fs::sha256_file(Path::new(spec)) {
                Ok(sha) if Path::new(spec).is_file() => serde_json::json!({ "file_sha256": sha }),
                _ => serde_json::json!(spec),
            },
        }
    }
}

/// `--interactive`: the number of examples and the temperatures, before anything runs (they are
/// settings, so they are part of the run's configuration and fingerprints).
fn ask_settings(cfg: &RunConfig, opts: &RunOptions, paths: &Paths) -> Result<RunConfig> {
    let mut asked = cfg.clone();
    let Some(ask) = &opts.ask else { return Ok(asked) };
    if !(cfg.generation && cfg.generated_dir.is_none() && cfg.teacher != TeacherSource::Recorded) {
        return Ok(asked);
    }
    let r = cfg.resolve(&paths.data)?;
    let n = ask("examples to generate", &r.num_examples.to_string());
    asked.num_examples =
        Some(n.trim().parse().with_context(|| format!("`{n}` is not a number of examples"))?);
    let t = ask(
        "temperatures: start and end of the annealing",
        &format!("{} {}", r.generator.initial_temperature, r.generator.max_temperature),
    );
    let v: Vec<f64> = t
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("`{t}`: two numbers, e.g. `0.5 1.7`"))?;
    anyhow::ensure!(v.len() == 2, "`{t}`: two numbers, e.g. `0.5 1.7`");
    let mut g = cfg.generator.clone().unwrap_or_default();
    g.insert("initial_temperature".into(), toml::Value::Float(v[0]));
    g.insert("max_temperature".into(), toml::Value::Float(v[1]));
    asked.generator = Some(g);
    Ok(asked)
}

/// The run folder holds one prompt: another prompt is refused (or, with `--force`, the folder is
/// emptied, all but its lock); then `run.json` is (re)written.
fn open_folder(
    layout: &RunLayout,
    cfg: &RunConfig,
    resolved: &Resolved,
    prompt: &str,
    opts: &RunOptions,
    paths: &Paths,
) -> Result<()> {
    let dir = layout.dir();
    let prompt_sha = sha256_hex(prompt.as_bytes());
    let now = chrono::Utc::now().to_rfc3339();
    let mut created = now.clone();
    if let Ok(previous) = super::stage::read_stage_json::<RunManifest>(&layout.manifest()) {
        if previous.prompt_sha256 != prompt_sha {
            if !opts.force {
                bail!(
                    "{} was started with another prompt ({}); pass --force to start it over, or --name for a new run",
                    dir.display(),
                    previous.config.prompt_source
                );
            }
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("clearing {}", dir.display()))?
            {
                let path = entry?.path();
                if path == layout.lock() {
                    continue;
                }
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.with_context(|| format!("clearing {}", path.display()))?;
            }
        } else {
            created = previous.created;
        }
    }
    write_json(
        &layout.manifest(),
        &RunManifest {
            name: cfg.name.trim().into(),
            prompt_sha256: prompt_sha,
            config: cfg.clone(),
            resolved: serde_json::to_value(resolved)?,
            created,
            updated: now,
            git_commit: crate::report::manifest::git_state(&paths.root).0,
        },
    )
}

/// What the teacher is, in one line.
pub fn teacher_identity(cfg: &RunConfig) -> String {
    match cfg.teacher {
        TeacherSource::Local => format!("local:{}", crate::teacher::local::DEFAULT_TEACHER),
        TeacherSource::Openai => {
            let more: String =
                cfg.teacher_settings.endpoints.iter().map(|e| format!(",{}", e.base_url)).collect();
            format!("openai:{}{more}:{}", cfg.teacher_settings.base_url, cfg.teacher_settings.model)
        }
        TeacherSource::Recorded => "recorded".into(),
    }
}

/// Fail fast, naming the URLs, when no server of the teacher answers: `teacher::discover` asks
/// each (one reachable server of a fleet is enough; any HTTP answer counts).
async fn reach_any(base_urls: &[&str], api_key: Option<&str>) -> Result<()> {
    let mut failures = Vec::new();
    for base_url in base_urls {
        // A fleet's per-server settings follow a `#`; they are never sent.
        let base = base_url.split('#').next().unwrap_or(base_url).trim_end_matches('/');
        match crate::teacher::discover::discover(base, api_key).await {
            Ok(_) => return Ok(()),
            Err(e) => failures.push(format!("{base} ({e})")),
        }
    }
    bail!(
        "the teacher at {} is unreachable; start the server or fix --base-url, or use --teacher local (offline)",
        failures.join(", ")
    )
}

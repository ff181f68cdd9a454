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
pub mod config;
pub mod evaluate;
pub mod package;
pub mod recorded;
pub mod runs;
pub mod stage;
pub mod student;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Paths;
use crate::data::examples::{read_examples_jsonl, write_examples_jsonl, Example};
use crate::data::registry::Registry;
use crate::models::registry::ModelRegistry;
use crate::prompt_parser::{self, Language, ParseMode, ParsedPrompt, ParserConfig};
use crate::teacher::cache::{CacheMode, CachedTeacher};
use crate::teacher::{Teacher, TeacherKind};
use crate::util::fs::{sha256_hex, write_atomic, write_json};
use assemble::{assemble, Row};
use config::{Resolved, RunConfig, TeacherSource};
use evaluate::MetricResult;
use stage::{run_stage, Outcome, Stage, StageInputs, StageOutputs, StageRecord};
use student::{choose_student, select_student, StudentChoice, StudentSelection};

/// Where runs live: `P2M_RUNS`, else `<root>/runs`.
pub fn runs_dir(paths: &Paths) -> PathBuf {
    std::env::var_os("P2M_RUNS").map(PathBuf::from).unwrap_or_else(|| paths.root.join("runs"))
}

/// A person's yes or no to a paid generation's estimate.
pub type ConfirmCost = Box<dyn Fn(&CostEstimate) -> bool>;
/// A question to a person: (question, default) → answer.
pub type Ask = Box<dyn Fn(&str, &str) -> String>;

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
    pub device: tch::Device,
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

/// A paid teacher's cost before its first call.
#[derive(Debug, Clone, Serialize)]
pub struct CostEstimate {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usd: f64,
    pub model: String,
}

fn teacher_identity(cfg: &RunConfig) -> String {
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

/// The teacher, built on first use (loading the local model or checking a server costs time) and
/// recorded in the run's one SQLite cache, so no answer is paid for twice.
struct LazyTeacher<'a> {
    cfg: &'a RunConfig,
    cache: PathBuf,
    /// Paid calls this invocation may make (from `--budget` and the estimated price of a call).
    max_calls: Option<u64>,
    built: Option<CachedTeacher<Box<dyn Teacher>>>,
}

impl LazyTeacher<'_> {
    fn get(&mut self) -> Result<Option<&CachedTeacher<Box<dyn Teacher>>>> {
        if self.cfg.teacher == TeacherSource::Recorded {
            return Ok(None);
        }
        if self.built.is_none() {
            let mut settings = self.cfg.teacher_settings.clone();
            settings.kind = if self.cfg.teacher == TeacherSource::Local {
                TeacherKind::Local
            } else {
                TeacherKind::Openai
            };
            if settings.kind == TeacherKind::Openai {
                let urls: Vec<&str> = std::iter::once(settings.base_url.as_str())
                    .chain(settings.endpoints.iter().map(|e| e.base_url.as_str()))
                    .collect();
                probe_servers(&urls)?;
            }
            if let Some(m) = self.max_calls {
                settings.max_api_calls = Some(settings.max_api_calls.map_or(m, |x| x.min(m)));
            }
            let inner = settings.build().map_err(|e| {
                if settings.kind == TeacherKind::Openai {
                    e.context(format!("the teacher at {} is not usable; fix the URL or key, or use --teacher local", settings.base_url))
                } else {
                    e
                }
            })?;
            self.built = Some(CachedTeacher::open(inner, &self.cache, CacheMode::ReadWrite)?);
        }
        Ok(self.built.as_ref())
    }
}

/// Fail fast, naming the URLs, when no server of the teacher answers (any HTTP answer, even a 404
/// for a server without `/models`, counts as reachable; one reachable server of a fleet is enough).
fn probe_servers(base_urls: &[&str]) -> Result<()> {
    let mut failures = Vec::new();
    for base_url in base_urls {
        // A fleet's per-server settings follow a `#`; they are never sent.
        let base = base_url.split('#').next().unwrap_or(base_url).trim_end_matches('/');
        let url = format!("{base}/models");
        let reached = crate::download::block_on(async {
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(20))
                .build()?;
            client.get(&url).send().await.map(|_| ())
        })?;
        match reached {
            Ok(()) => return Ok(()),
            Err(e) => failures.push(format!("{base} ({})", crate::download::error_chain(&e))),
        }
    }
    bail!(
        "the teacher at {} is unreachable; start the server or fix --base-url, or use --teacher local (offline)",
        failures.join(", ")
    )
}

/// Every file under `dir`, sorted (for fingerprints); none when it does not exist.
fn list_files_of(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::util::fs::list_files(dir).with_context(|| format!("listing {}", dir.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// A stage's JSON file; a bad one says which stage to redo.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let stage = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    crate::util::fs::read_json(
        path,
        &format!("not the JSON this stage writes; rerun with --from {stage}"),
    )
}

/// What identifies a real test set in a stage's fingerprint: a file by its content (so editing it
/// redoes evaluation, and `data/x.jsonl` vs `/abs/data/x.jsonl` is the same set), a registry id by
/// its name.
fn test_set_identity(spec: Option<&str>) -> serde_json::Value {
    match spec {
        None => serde_json::Value::Null,
        Some(spec) => match crate::util::fs::sha256_file(Path::new(spec)) {
            Ok(sha) if Path::new(spec).is_file() => serde_json::json!({ "file_sha256": sha }),
            _ => serde_json::json!(spec),
        },
    }
}

/// The real test set of a run: a registry dataset or a JSONL file, seeded subsample.
fn real_test_set(
    registry: &Registry,
    spec: &str,
    max: usize,
    seed: u64,
) -> Result<evaluate::TestSet> {
    let path = Path::new(spec);
    let (inputs, references, source) = if path.extension().is_some_and(|e| e == "jsonl") {
        let rows = read_examples_jsonl(path)
            .with_context(|| format!("reading the test set {}", path.display()))?;
        (
            rows.iter().map(|r| r.input.clone()).collect::<Vec<_>>(),
            rows.iter().map(|r| vec![r.output.clone()]).collect::<Vec<_>>(),
            path.display().to_string(),
        )
    } else {
        let ids: Vec<String> = registry.datasets().iter().map(|d| d.id.clone()).collect();
        anyhow::ensure!(ids.contains(&spec.to_string()), "unknown test dataset `{spec}`: give a JSONL file of {{input, output}} or a registry id ({})", ids.join(", "));
        let loaded = crate::data::loaders::load_dataset(registry, spec)?;
        (
            crate::data::loaders::string_column(&loaded.frame, crate::data::loaders::INPUT)?,
            crate::data::loaders::string_list_column(
                &loaded.frame,
                crate::data::loaders::REFERENCES,
            )?,
            format!("registry:{spec}"),
        )
    };
    let total = inputs.len();
    let mut idx: Vec<usize> = (0..total).collect();
    let mut note = None;
    if max > 0 && total > max {
        crate::util::rng::SplitMix64::new(seed ^ 0x7265_616c).shuffle(&mut idx);
        idx.truncate(max);
        idx.sort_unstable();
        note = Some(format!("{max} of {total} examples of {source} (seeded draw, seed {seed}; the scale's max_test_examples)"));
    }
    Ok(evaluate::TestSet {
        name: "real".into(),
        source,
        inputs: idx.iter().map(|&i| inputs[i].clone()).collect(),
        references: idx.iter().map(|&i| references[i].clone()).collect(),
        note,
    })
}

/// Estimated cost of generating `n` examples with a priced teacher (None for free ones).
pub fn estimate_generation_cost(
    cfg: &RunConfig,
    resolved: &Resolved,
    prompt: &str,
) -> Option<CostEstimate> {
    if cfg.teacher != TeacherSource::Openai {
        return None;
    }
    let pricing = crate::teacher::Pricing::for_model(&cfg.teacher_settings.model);
    if pricing == crate::teacher::Pricing::FREE {
        return None;
    }
    let g = &resolved.generator;
    // Twice the bare minimum of requests: duplicates and unparsable answers are usual.
    let requests =
        2 * (resolved.num_examples as u64).div_ceil(g.responses_per_request.max(1) as u64);
    // Each request: the template and meta-examples (~1,200 tokens), the prompt, and up to ten
    // earlier examples about as long as the prompt's own.
    let prompt_tokens = requests * (1200 + 2 * crate::teacher::estimate_tokens(prompt));
    let completion_tokens = requests * g.responses_per_request as u64 * 120;
    let usd = crate::teacher::Pricing::cost(
        &pricing,
        &crate::teacher::Usage { prompt_tokens, completion_tokens },
    );
    Some(CostEstimate {
        requests,
        prompt_tokens,
        completion_tokens,
        usd,
        model: cfg.teacher_settings.model.clone(),
    })
}

/// Run (or resume) the pipeline; see the module docs.
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<RunSummary> {
    let paths = Paths::from_env()?;
    let registry = Registry::load(paths.clone())?;
    let models = ModelRegistry::load(paths.clone())?;
    let name = cfg.name.trim();
    anyhow::ensure!(
        !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..",
        "the run name `{name}` is not a folder name; pass --name with letters, digits, - or _"
    );
    let prompt = cfg.prompt.clone().unwrap_or_default();
    if prompt.trim().is_empty() {
        bail!("the prompt is empty: write an instruction (and a few demonstrations) into the prompt file, or use --task squad|temporal|mconala");
    }
    // Interactive: the number of examples and the temperatures, before anything runs (they are
    // settings, so they are part of the run's configuration and fingerprints).
    let mut asked = cfg.clone();
    if let Some(ask) = &opts.ask {
        let r = cfg.resolve(&paths.data)?;
        if cfg.generation && cfg.generated_dir.is_none() && cfg.teacher != TeacherSource::Recorded {
            let n = ask("examples to generate", &r.num_examples.to_string());
            asked.num_examples = Some(
                n.trim().parse().with_context(|| format!("`{n}` is not a number of examples"))?,
            );
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
        }
    }
    let cfg = &asked;
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
    let metric_name = cfg
        .metric
        .clone()
        .or_else(|| task.as_ref().map(|t| t.metric.clone()))
        .unwrap_or_else(|| "chrf++".into());
    anyhow::ensure!(
        crate::evaluator::Metric::parse(&metric_name).is_some(),
        "unknown metric `{metric_name}` (em, em-squad, chrf++)"
    );
    let test_dataset =
        cfg.test_dataset.clone().or_else(|| task.as_ref().map(|t| t.test_dataset.clone()));

    // The run folder: one prompt per folder.
    let dir = opts.runs_dir.join(name);
    let manifest_path = dir.join("run.json");
    let prompt_sha = sha256_hex(prompt.as_bytes());
    let now = chrono::Utc::now().to_rfc3339();
    let mut created = now.clone();
    if let Ok(previous) = read_json::<RunManifest>(&manifest_path) {
        if previous.prompt_sha256 != prompt_sha {
            if !opts.force {
                bail!(
                    "{} was started with another prompt ({}); pass --force to start it over, or --name for a new run",
                    dir.display(),
                    previous.config.prompt_source
                );
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        } else {
            created = previous.created;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_json(
        &manifest_path,
        &RunManifest {
            name: name.into(),
            prompt_sha256: prompt_sha,
            config: cfg.clone(),
            resolved: serde_json::to_value(&resolved)?,
            created,
            updated: now,
            git_commit: crate::report::manifest::git_state(&paths.root).0,
        },
    )?;
    if let Some(from) = opts.from {
        for s in Stage::ALL.into_iter().filter(|s| *s >= from) {
            let _ = std::fs::remove_file(stage::record_path(&dir, s));
        }
    }
    // Before the first paid call (parsing is one): the estimate, and the budget or the user's yes.
    let generation_pending = cfg.generation
        && cfg.generated_dir.is_none()
        && recorded.is_none()
        && stage::read_record(&dir, Stage::Generate)
            .is_none_or(|r| r.status != stage::Status::Done);
    let mut max_calls = None;
    if let Some(est) =
        estimate_generation_cost(cfg, &resolved, &prompt).filter(|_| generation_pending)
    {
        eprintln!(
            "estimate: about {} requests, {} prompt + {} completion tokens, ${:.2} at {}'s prices",
            est.requests, est.prompt_tokens, est.completion_tokens, est.usd, est.model
        );
        let covered = cfg.budget_usd.is_some_and(|b| b >= est.usd);
        let confirmed = !covered && opts.confirm_cost.as_ref().is_some_and(|ask| ask(&est));
        if !covered && !confirmed {
            bail!(
                "generation would cost about ${:.2} ({} requests to {}); pass --budget {:.2} (or more) to allow it",
                est.usd,
                est.requests,
                est.model,
                (est.usd * 100.0).ceil() / 100.0
            );
        }
        // The budget caps this invocation's paid calls at the estimated price of one call.
        if let Some(budget) = cfg.budget_usd {
            let per_call = est.usd / est.requests.max(1) as f64;
            max_calls = Some((budget / per_call).floor() as u64);
        }
    }
    let mut teacher =
        LazyTeacher { cfg, cache: dir.join("teacher_cache.sqlite"), max_calls, built: None };
    let teacher_id = teacher_identity(cfg);
    let rt = runtime()?;
    let mut stages: Vec<(Stage, bool, StageRecord)> = Vec::new();
    let mut record = |s: Stage, (o, r): (Outcome, StageRecord)| {
        stages.push((s, o == Outcome::Ran, r));
    };

    // 1. Parse the prompt.
    let parsed_path = dir.join(Stage::Parse.name()).join("parsed.json");
    let parse_mode = if cfg.teacher == TeacherSource::Recorded {
        "layout rules"
    } else {
        "LLM, layout rules as fallback"
    };
    record(
        Stage::Parse,
        run_stage(
            &dir,
            Stage::Parse,
            StageInputs {
                settings: serde_json::json!({ "prompt": prompt, "teacher": teacher_id, "mode": parse_mode, "translate": cfg.translate_instruction }),
                files: vec![],
            },
            |stage_dir| {
                let parser = ParserConfig {
                    mode: if cfg.teacher == TeacherSource::Recorded {
                        ParseMode::Deterministic
                    } else {
                        ParseMode::Auto
                    },
                    ..ParserConfig::default()
                };
                let t = teacher.get()?;
                let parsed = rt.block_on(prompt_parser::parse_prompt(
                    &prompt,
                    t.map(|t| t as &dyn Teacher),
                    &parser,
                ))?;
                let mut notes = Vec::new();
                if parsed.demonstrations.is_empty() {
                    notes.push("the prompt has no demonstrations: the generator works from the instruction alone (add a few `input`/`output` examples for better data)".to_string());
                }
                if parsed.language != Language::English {
                    notes.push(format!("the instruction is in {} (detected); the dataset retriever's encoder reads English best", parsed.language.name()));
                }
                for n in &notes {
                    eprintln!("warning: {n}");
                }
                // What the retrievers search with: the instruction, or its English translation.
                let query = if cfg.translate_instruction && parsed.language != Language::English {
                    let t = teacher.get()?.context(
                        "--translate-instruction needs a live teacher (--teacher local or openai)",
                    )?;
                    let english = rt.block_on(translate_to_english(t, &parsed.instruction))?;
                    notes.push(format!(
                        "the retrievers search with the teacher's English translation: {}",
                        crate::util::text::flat_excerpt(&english, 200)
                    ));
                    english
                } else {
                    parsed.instruction.clone()
                };
                write_atomic(&stage_dir.join("retrieval_query.txt"), query.as_bytes())?;
                write_json(&stage_dir.join("parsed.json"), &parsed)?;
                write_json(&stage_dir.join("notes.json"), &notes)?;
                Ok(StageOutputs {
                    files: vec![
                        stage_dir.join("parsed.json"),
                        stage_dir.join("retrieval_query.txt"),
                    ],
                    summary: format!(
                        "instruction of {} characters ({}), {} demonstrations",
                        parsed.instruction.chars().count(),
                        parsed.language.name(),
                        parsed.demonstrations.len()
                    ),
                })
            },
        )?,
    );
    let parsed: ParsedPrompt = read_json(&parsed_path)?;
    let query_path = dir.join(Stage::Parse.name()).join("retrieval_query.txt");
    let retrieval_query = std::fs::read_to_string(&query_path)
        .with_context(|| format!("reading {}", query_path.display()))?;

    // 2. Retrieve a dataset.
    let retrieved_path = dir.join(Stage::RetrieveDatasets.name()).join("retrieved.jsonl");
    let retrieval_settings = serde_json::json!({
        "enabled": cfg.dataset_retrieval, "retrieved_dir": cfg.retrieved_dir, "recorded": recorded.as_ref().and_then(|r| r.retrieved.clone()),
        "teacher": if cfg.teacher == TeacherSource::Openai { teacher_id.clone() } else { "none".into() }, "exclude": test_set_identity(test_dataset.as_deref()), "interactive": opts.interactive,
    });
    record(
        Stage::RetrieveDatasets,
        run_stage(
            &dir,
            Stage::RetrieveDatasets,
            StageInputs {
                settings: retrieval_settings,
                files: vec![parsed_path.clone(), query_path.clone()],
            },
            |stage_dir| {
                let (rows, what): (Vec<Example>, String) = if !cfg.dataset_retrieval {
                    (vec![], "off (--no-dataset-retrieval)".into())
                } else if let Some(folder) = recorded.as_ref().and_then(|r| r.retrieved.clone()) {
                    let (rows, _) = recorded::recorded_examples(&registry, &folder, &["train"])?;
                    let n = rows.len();
                    (rows, format!("{n} rows of the authors' recorded retrieved data {folder}"))
                } else if recorded.is_some() {
                    (vec![], "none: the authors retrieved no dataset for this task".into())
                } else if let Some(src) = &cfg.retrieved_dir {
                    let rows = read_retrieved_dir(src)?;
                    let n = rows.len();
                    (rows, format!("{n} rows from {}", src.display()))
                } else {
                    retrieve_dataset_rows(
                        &paths,
                        &retrieval_query,
                        test_dataset.as_deref(),
                        opts.interactive,
                        if cfg.teacher == TeacherSource::Openai { teacher.get()? } else { None },
                        stage_dir,
                        &rt,
                    )?
                };
                write_examples_jsonl(&stage_dir.join("retrieved.jsonl"), &rows)?;
                Ok(StageOutputs { files: vec![stage_dir.join("retrieved.jsonl")], summary: what })
            },
        )?,
    );

    // 3. Generate examples.
    let gen_dir = dir.join(Stage::Generate.name());
    let examples_path = gen_dir.join(crate::dataset_generator::EXAMPLES_FILE);
    let gen_test_path = gen_dir.join("generated_test.jsonl");
    let generation_settings = serde_json::json!({
        "enabled": cfg.generation, "teacher": teacher_id, "generator": resolved.generator, "generated_dir": cfg.generated_dir,
        "recorded": recorded.as_ref().map(|r| (&r.generated, &r.generated_test)),
    });
    record(
        Stage::Generate,
        run_stage(
            &dir,
            Stage::Generate,
            StageInputs { settings: generation_settings, files: vec![parsed_path.clone()] },
            |stage_dir| {
                let mut files = vec![stage_dir.join(crate::dataset_generator::EXAMPLES_FILE)];
                let summary = if let Some(r) = &recorded {
                    let (rows, _) =
                        recorded::recorded_examples(&registry, &r.generated, &["train"])?;
                    let (test, _) = recorded::recorded_examples(
                        &registry,
                        &r.generated_test,
                        &["test", "train"],
                    )?;
                    write_examples_jsonl(&files[0], &rows)?;
                    write_examples_jsonl(&stage_dir.join("generated_test.jsonl"), &test)?;
                    files.push(stage_dir.join("generated_test.jsonl"));
                    format!(
                        "{} examples and a generated test set of {} recorded from {} ({}; {})",
                        rows.len(),
                        test.len(),
                        r.model,
                        r.generated,
                        r.note
                    )
                } else if let Some(src) = &cfg.generated_dir {
                    let from = src.join(crate::dataset_generator::EXAMPLES_FILE);
                    let rows = read_examples_jsonl(&from).with_context(|| {
                        format!("--generated {}: expected {}", src.display(), from.display())
                    })?;
                    write_examples_jsonl(&files[0], &rows)?;
                    format!("{} examples reused from {}", rows.len(), from.display())
                } else if !cfg.generation {
                    write_examples_jsonl(&files[0], &[])?;
                    "off (--no-generation)".into()
                } else {
                    let t = teacher.get()?.expect("a live teacher");
                    let progress =
                        crate::dataset_generator::default_progress_bar(resolved.num_examples);
                    let result = rt.block_on(crate::dataset_generator::generate(
                        t,
                        &parsed,
                        &resolved.generator,
                        stage_dir,
                        Some(&progress),
                    ));
                    progress.finish_and_clear();
                    let (rows, log) = result.map_err(|e| {
                        let why = if e.is_budget_exhausted() {
                            "generation stopped at the budget; everything accepted so far is kept, and a rerun with a larger --budget continues from it (answers already paid for are replayed from the run's cache)"
                        } else {
                            "generation stopped; everything accepted so far is kept, and a rerun continues from it"
                        };
                        anyhow::anyhow!(e).context(why)
                    })?;
                    files.push(stage_dir.join(crate::dataset_generator::LOG_FILE));
                    format!(
                        "{} examples from {} in {} requests (${:.4})",
                        rows.len(),
                        t.model(),
                        log.requests,
                        log.cost_usd
                    )
                };
                Ok(StageOutputs { files, summary })
            },
        )?,
    );

    // 4. Retrieve a model.
    let choice_path = dir.join(Stage::RetrieveModel.name()).join("choice.json");
    record(
        Stage::RetrieveModel,
        run_stage(
            &dir,
            Stage::RetrieveModel,
            StageInputs {
                settings: serde_json::json!({ "enabled": cfg.model_retrieval, "default_student": resolved.student, "offline": paths.offline }),
                files: vec![query_path.clone()],
            },
            |stage_dir| {
                let mut choice = choose_student(
                    &paths,
                    &models,
                    &retrieval_query,
                    cfg.model_retrieval,
                    &resolved.student,
                    cfg.student.is_some(),
                    &rt,
                )?;
                if let Some(ask) = &opts.ask {
                    eprintln!("students that train here:");
                    for (i, s) in choice.trainable.iter().enumerate() {
                        eprintln!("  {}) {s}", i + 1);
                    }
                    if !choice.candidates.is_empty() {
                        eprintln!(
                            "the model retriever's ranking: {}",
                            choice.candidates.join(", ")
                        );
                    }
                    let pick = ask("student (a number of the list, or a student: decoder, warm-start, tiny:H:L:A, a folder)", &choice.student);
                    let picked = match pick.trim().parse::<usize>() {
                        Ok(i) if (1..=choice.trainable.len()).contains(&i) => {
                            choice.trainable[i - 1].clone()
                        }
                        _ => pick.trim().to_string(),
                    };
                    if picked != choice.student {
                        picked.parse::<crate::trainer::StudentSpec>()?;
                        choice.why = format!(
                            "picked in the terminal (the default was `{}`: {})",
                            choice.student, choice.why
                        );
                        choice.student = picked;
                    }
                }
                write_json(&stage_dir.join("choice.json"), &choice)?;
                Ok(StageOutputs {
                    files: vec![stage_dir.join("choice.json")],
                    summary: format!("student `{}`: {}", choice.student, choice.why),
                })
            },
        )?,
    );
    let choice: StudentChoice = read_json(&choice_path)?;

    // A person's review (the review page of `p2m serve`) replaces the teacher's examples from
    // assembly on and the parsed prompt from training on; the teacher's files stay as they were.
    let reviewed = crate::review::reviewed_inputs(&dir);
    for (what, path) in [("examples", &reviewed.examples), ("instruction", &reviewed.parsed)] {
        if let Some(p) = path {
            println!("[review] the reviewed {what} are used: {}", p.display());
        }
    }
    let examples_path = reviewed.examples.clone().unwrap_or(examples_path);
    let (parsed_path, parsed) = match &reviewed.parsed {
        Some(p) => (p.clone(), read_json::<ParsedPrompt>(p)?),
        None => (parsed_path, parsed),
    };

    // 5. Assemble train / validation / test.
    let asm_dir = dir.join(Stage::Assemble.name());
    let mut asm_inputs = vec![examples_path.clone(), retrieved_path.clone()];
    if gen_test_path.exists() {
        asm_inputs.push(gen_test_path.clone());
    }
    record(
        Stage::Assemble,
        run_stage(
            &dir,
            Stage::Assemble,
            StageInputs {
                settings: serde_json::json!({ "split": cfg.split, "max_train": resolved.max_train_examples, "max_validation": resolved.max_validation_examples }),
                files: asm_inputs,
            },
            |stage_dir| {
                let generated = read_examples_jsonl(&examples_path)
                    .with_context(|| format!("reading {}", examples_path.display()))?;
                let retrieved = read_examples_jsonl(&retrieved_path)?;
                let fixed_test = if gen_test_path.exists() {
                    Some(read_examples_jsonl(&gen_test_path)?)
                } else {
                    None
                };
                anyhow::ensure!(
                !generated.is_empty() || !retrieved.is_empty(),
                "no training data: generation produced no examples and no dataset was retrieved; turn generation on or give --retrieved DIR"
            );
                let source = read_json::<serde_json::Value>(
                    &dir.join(Stage::RetrieveDatasets.name()).join("stage.json"),
                )
                .ok()
                .and_then(|v| v["summary"].as_str().map(str::to_string))
                .unwrap_or_default();
                let split = config::SplitConfig {
                    max_validation: cfg.split.max_validation.min(resolved.max_validation_examples),
                    ..cfg.split.clone()
                };
                let a = assemble(
                    &generated,
                    &teacher_id,
                    &retrieved,
                    &source,
                    fixed_test.as_deref(),
                    &split,
                    resolved.max_train_examples,
                );
                let mut files = Vec::new();
                for (name, rows) in
                    [("train", &a.train), ("validation", &a.validation), ("test", &a.test)]
                {
                    let path = stage_dir.join(format!("{name}.jsonl"));
                    let text: String = rows
                        .iter()
                        .map(|r| serde_json::to_string(r).expect("serialisable") + "\n")
                        .collect();
                    write_atomic(&path, text.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    crate::report::write_parquet_atomic(
                        &assemble::rows_frame(rows)?,
                        &stage_dir.join(format!("{name}.parquet")),
                    )?;
                    files.push(path);
                }
                write_json(&stage_dir.join("notes.json"), &a.notes)?;
                Ok(StageOutputs {
                    files,
                    summary: format!(
                        "train {} ({} generated, {} retrieved), validation {}, generated test {}",
                        a.train.len(),
                        a.train.iter().filter(|r| r.task_id == 0).count(),
                        a.train.iter().filter(|r| r.task_id == 1).count(),
                        a.validation.len(),
                        a.test.len()
                    ),
                })
            },
        )?,
    );
    let read_rows = |name: &str| -> Result<Vec<Row>> {
        let path = asm_dir.join(format!("{name}.jsonl"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).with_context(|| {
                    format!(
                        "{}: a row is not {{input, output, task_id, provenance}}",
                        path.display()
                    )
                })
            })
            .collect()
    };

    // 6. Train.
    let train_dir = dir.join(Stage::Train.name());
    let train_inputs = vec![
        asm_dir.join("train.jsonl"),
        asm_dir.join("validation.jsonl"),
        choice_path.clone(),
        parsed_path.clone(),
    ];
    record(
        Stage::Train,
        run_stage(
            &dir,
            Stage::Train,
            StageInputs {
                settings: serde_json::json!({ "train": resolved.train, "select_student": cfg.select_student, "selection_steps": cfg.selection_steps, "select_candidates": cfg.select_candidates, "metric": metric_name }),
                files: train_inputs,
            },
            |stage_dir| {
                let to_pairs = |rows: &[Row], task: u32| -> Vec<crate::trainer::TextPair> {
                    let pairs: Vec<(String, String)> = rows
                        .iter()
                        .filter(|r| r.task_id == task)
                        .map(|r| (r.input.clone(), r.output.clone()))
                        .collect();
                    crate::trainer::apply_template(task, &parsed.instruction, &pairs)
                };
                let (train_rows, val_rows) = (read_rows("train")?, read_rows("validation")?);
                // Keep the assembled (already shuffled) order: template each row by its task.
                let train: Vec<crate::trainer::TextPair> = train_rows
                    .iter()
                    .map(|r| crate::trainer::TextPair {
                        source: crate::trainer::model_input(
                            r.task_id,
                            &parsed.instruction,
                            &r.input,
                        ),
                        target: r.output.clone(),
                    })
                    .collect();
                let validation = to_pairs(&val_rows, 0);
                let chosen_student = if cfg.select_student > 1 {
                    let metric = crate::evaluator::Metric::parse(&metric_name).expect("checked");
                    let mut pool = choice.clone();
                    if !cfg.select_candidates.is_empty() {
                        pool.student = cfg.select_candidates[0].clone();
                        pool.trainable = cfg.select_candidates.clone();
                    }
                    let selection = select_student(
                        &pool,
                        cfg.select_student,
                        cfg.selection_steps,
                        &train,
                        &val_rows,
                        &parsed.instruction,
                        metric,
                        &resolved,
                        &models,
                        opts.device,
                        stage_dir,
                    )?;
                    write_json(&stage_dir.join("selection.json"), &selection)?;
                    selection.chosen
                } else {
                    choice.student.clone()
                };
                let spec: crate::trainer::StudentSpec = chosen_student.parse()?;
                let mut student = crate::trainer::Student::build(
                    &spec,
                    &models,
                    opts.device,
                    resolved.train.seed,
                )?;
                let mut trainer =
                    crate::trainer::Trainer::new(resolved.train.clone(), &mut student, stage_dir);
                trainer.label = name.to_string();
                trainer.keep_checkpoints = cfg.keep_checkpoints;
                let summary = trainer.train(&train, &validation)?;
                let final_dir = stage_dir.join("final");
                let mut files = list_files_of(&final_dir)?;
                if stage_dir.join("selection.json").exists() {
                    files.push(stage_dir.join("selection.json"));
                }
                Ok(StageOutputs {
                files,
                summary: format!(
                    "{} on {} examples: {} optimizer steps, final train loss {:.4}{}, {:.1} examples/s",
                    chosen_student,
                    summary.train_examples,
                    summary.optimizer_steps,
                    summary.epochs.last().map(|e| e.train_loss).unwrap_or(f64::NAN),
                    summary.epochs.last().and_then(|e| e.validation_loss).map(|v| format!(", validation loss {v:.4}")).unwrap_or_default(),
                    summary.examples_per_second
                ),
            })
            },
        )?,
    );

    // 7. Evaluate.
    let eval_dir = dir.join(Stage::Evaluate.name());
    let mut eval_inputs = list_files_of(&train_dir.join("final"))?;
    if train_dir.join("selection.json").exists() {
        eval_inputs.push(train_dir.join("selection.json"));
    }
    eval_inputs.extend([asm_dir.join("test.jsonl"), parsed_path.clone()]);
    let bertscore_id = evaluate::bertscore_model(paths.offline);
    let eval_settings = serde_json::json!({
        "executor": resolved.executor, "bootstrap": cfg.bootstrap, "real_test": test_set_identity(test_dataset.as_deref()), "max_test": resolved.max_test_examples,
        "bertscore": resolved.bertscore.then_some(bertscore_id), "seed": cfg.seed,
        "teacher_answers_real": (cfg.teacher_answers_real && cfg.teacher != TeacherSource::Recorded).then(|| teacher_identity(cfg)),
    });
    record(
        Stage::Evaluate,
        run_stage(
            &dir,
            Stage::Evaluate,
            StageInputs { settings: eval_settings, files: eval_inputs },
            |stage_dir| {
                let student =
                    crate::trainer::Student::from_dir(&train_dir.join("final"), opts.device)?;
                let test_rows = read_rows("test")?;
                let mut sets = Vec::new();
                if !test_rows.is_empty() {
                    let mut idx: Vec<usize> = (0..test_rows.len()).collect();
                    let mut note = None;
                    if resolved.max_test_examples > 0 && idx.len() > resolved.max_test_examples {
                        crate::util::rng::SplitMix64::new(cfg.seed ^ 0x0067_656e).shuffle(&mut idx);
                        idx.truncate(resolved.max_test_examples);
                        idx.sort_unstable();
                        note = Some(format!("{} of {} generated test examples (seeded draw; the scale's max_test_examples)", idx.len(), test_rows.len()));
                    }
                    sets.push(evaluate::TestSet {
                        name: "generated".into(),
                        source: "assembly/test.jsonl".into(),
                        inputs: idx.iter().map(|&i| test_rows[i].input.clone()).collect(),
                        references: idx
                            .iter()
                            .map(|&i| vec![test_rows[i].output.clone()])
                            .collect(),
                        note,
                    });
                }
                if let Some(spec) = &test_dataset {
                    sets.push(real_test_set(
                        &registry,
                        spec,
                        resolved.max_test_examples,
                        cfg.seed,
                    )?);
                }
                anyhow::ensure!(!sets.is_empty(), "nothing to evaluate on: no generated test split and no real test set (give --test-dataset)");
                // BERTScore with the paper's encoder online; the offline one when it cannot be had.
                let mut bertscore_note = None;
                let mut scorer_id = bertscore_id;
                let scorer = if resolved.bertscore {
                    let load = |id: &str| {
                        crate::evaluator::bertscore::BertScorer::from_registry(
                            &models,
                            id,
                            None,
                            false,
                            None,
                            opts.device,
                        )
                    };
                    match load(bertscore_id) {
                        Ok(s) => Some(s),
                        Err(e) if !paths.offline => {
                            scorer_id = evaluate::bertscore_model(true);
                            bertscore_note = Some(format!(
                                "BERTScore: `{bertscore_id}` could not be loaded ({}); `{scorer_id}` used instead",
                                e.chain().last().map(|c| c.to_string()).unwrap_or_default()
                            ));
                            Some(load(scorer_id)?)
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                let (mut results, mut files) = evaluate::evaluate(
                    &student,
                    &parsed.instruction,
                    &resolved.executor,
                    &sets,
                    scorer.as_ref(),
                    scorer_id,
                    &cfg.bootstrap,
                    stage_dir,
                )?;
                // The teacher's row: the teacher answers the real examples from the same prompt.
                let real = sets.iter().find(|s| s.name == "real");
                if let (true, Some(real)) = (cfg.teacher_answers_real, real) {
                    if let Some(t) = teacher.get()? {
                        eprintln!("  the teacher answers {} real test examples", real.inputs.len());
                        let predictions = rt.block_on(evaluate::teacher_answers(
                            t,
                            &parsed,
                            &real.inputs,
                            resolved.executor.max_new_tokens,
                            cfg.seed,
                        ))?;
                        let (more, file) = evaluate::score_predictions(
                            "real-teacher",
                            real,
                            &predictions,
                            scorer.as_ref(),
                            scorer_id,
                            &cfg.bootstrap,
                            stage_dir,
                        )?;
                        results.extend(more);
                        files.push(file);
                    }
                }
                write_json(&stage_dir.join("metrics.json"), &results)?;
                let mut notes: Vec<String> = sets.iter().filter_map(|s| s.note.clone()).collect();
                notes.extend(bertscore_note);
                if let Ok(sel) = read_json::<StudentSelection>(&train_dir.join("selection.json")) {
                    notes.push(format!(
                    "student selection ({} optimizer steps each, {} on {} generated validation examples): {}; chosen `{}`",
                    sel.steps,
                    sel.metric,
                    sel.validation_examples,
                    sel.scores.iter().map(|(s, v)| format!("`{s}` {v:.2}")).collect::<Vec<_>>().join(", "),
                    sel.chosen
                ));
                }
                write_json(&stage_dir.join("notes.json"), &notes)?;
                files.push(stage_dir.join("metrics.json"));
                evaluate::write_report(&paths, stage_dir, name, &metric_name, &results, &notes)?;
                let headline: Vec<String> = results
                    .iter()
                    .filter(|r| r.metric == metric_name)
                    .map(|r| format!("{} {}", r.test_set, r.display()))
                    .collect();
                Ok(StageOutputs { files, summary: headline.join("; ") })
            },
        )?,
    );
    let metrics: Vec<MetricResult> = read_json(&eval_dir.join("metrics.json"))?;

    // 8. Package.
    let model_dir = dir.join("model");
    let mut pkg_inputs = list_files_of(&train_dir.join("final"))?;
    pkg_inputs.extend([eval_dir.join("metrics.json"), parsed_path.clone(), choice_path.clone()]);
    let teacher_cost = match &recorded {
        Some(_) => None,
        None => read_json::<crate::dataset_generator::GenerationLog>(
            &gen_dir.join(crate::dataset_generator::LOG_FILE),
        )
        .ok()
        .map(|l| l.cost_usd),
    };
    record(
        Stage::Package,
        run_stage(
            &dir,
            Stage::Package,
            StageInputs {
                settings: serde_json::json!({ "executor": resolved.executor, "name": name }),
                files: pkg_inputs,
            },
            |_stage_dir| {
                let mut sources = Vec::new();
                let rows =
                    |f: &str| read_examples_jsonl(&gen_dir.join(f)).map(|r| r.len()).unwrap_or(0);
                sources.push(match &recorded {
                Some(r) => format!("generated: {} examples by {} recorded in the paper authors' runs ({}; the mirror's MANIFEST.tsv gives their licence)", rows(crate::dataset_generator::EXAMPLES_FILE), r.model, r.generated),
                None => format!("generated: {} examples by {teacher_id} (the teacher's terms of use apply to its outputs)", rows(crate::dataset_generator::EXAMPLES_FILE)),
            });
                let retrieved_rows =
                    read_examples_jsonl(&retrieved_path).map(|r| r.len()).unwrap_or(0);
                if retrieved_rows > 0 {
                    let what = stage::read_record(&dir, Stage::RetrieveDatasets)
                        .map(|r| r.summary)
                        .unwrap_or_default();
                    sources.push(format!("retrieved: {what}"));
                }
                if let Some(spec) = &test_dataset {
                    match registry.dataset(spec) {
                        Ok(d) => sources.push(format!(
                            "real test set: {} ({} rows, licence {}; {})",
                            d.id,
                            d.rows.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
                            d.license,
                            d.title
                        )),
                        Err(_) => sources.push(format!("real test set: {spec}")),
                    }
                }
                let card = package::CardFacts {
                    sources,
                    name: name.to_string(),
                    task: task.as_ref().map(|t| t.name.clone()),
                    prompt_source: cfg.prompt_source.clone(),
                    teacher: match &recorded {
                        Some(r) => format!(
                            "the paper authors' recorded {} generations ({})",
                            r.model, r.generated
                        ),
                        None => teacher_id.clone(),
                    },
                    teacher_cost_usd: teacher_cost,
                    stages: Stage::ALL
                        .iter()
                        .filter(|s| **s != Stage::Package)
                        .filter_map(|s| {
                            stage::read_record(&dir, *s).map(|r| (s.name().to_string(), r.summary))
                        })
                        .collect(),
                    student: choice.clone(),
                    metrics: metrics.clone(),
                    metric: metric_name.clone(),
                    notes: [
                        Stage::Parse,
                        Stage::RetrieveDatasets,
                        Stage::Assemble,
                        Stage::Evaluate,
                    ]
                    .iter()
                    .filter_map(|s| {
                        read_json::<Vec<String>>(&dir.join(s.name()).join("notes.json")).ok()
                    })
                    .flatten()
                    .collect(),
                };
                let files = package::package(
                    &train_dir.join("final"),
                    &model_dir,
                    &prompt,
                    &parsed,
                    &resolved.executor,
                    &card,
                )?;
                Ok(StageOutputs {
                    files,
                    summary: format!("{} (model_card.md, p2m.json)", model_dir.display()),
                })
            },
        )?,
    );
    let (teacher_calls, teacher_cost_usd) = match teacher.built.as_ref() {
        Some(t) => {
            let s = t.stats();
            (s.calls, s.cost_usd)
        }
        None => (0, 0.0),
    };
    Ok(RunSummary { dir, model_dir, stages, metrics, teacher_cost_usd, teacher_calls })
}

/// The instruction in English, by the teacher (greedy), for the retrievers.
async fn translate_to_english(teacher: &dyn Teacher, instruction: &str) -> Result<String> {
    use crate::teacher::{ChatRequest, SamplingParams};
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: Some(300),
        n: 1,
        seed: Some(0),
        ..Default::default()
    };
    let prompt = format!(
        "Translate this task description into English. Answer with the translation only.\n\n{}",
        instruction.trim()
    );
    let response = teacher.chat(&ChatRequest::user(prompt, params)).await.with_context(|| {
        format!("translating the instruction with {} {}", teacher.backend(), teacher.model())
    })?;
    let text = response.choices.first().map(|c| c.content.trim().to_string()).unwrap_or_default();
    anyhow::ensure!(
        !text.is_empty(),
        "the teacher returned an empty translation; run without --translate-instruction"
    );
    Ok(text)
}

/// Retrieve a dataset for the instruction (excluding the real test set's own dataset) and
/// textualise it into `stage_dir/dataset/`; returns its rows.
fn retrieve_dataset_rows(
    paths: &Paths,
    query: &str,
    exclude: Option<&str>,
    interactive: bool,
    teacher: Option<&CachedTeacher<Box<dyn Teacher>>>,
    stage_dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> Result<(Vec<Example>, String)> {
    use crate::dataset_retriever::{select_dataset, Chooser, SelectionRequest};
    // The paper's DataFinder encoder online, MiniLM offline (or when DataFinder cannot be fetched).
    let models = ModelRegistry::load(paths.clone())?;
    let (encoder, encoder_notes) =
        crate::dataset_retriever::choose_encoder(&models, None, paths.offline)?;
    let (retriever, registry) =
        crate::dataset_retriever::open_dataset_retriever_with(paths, None, encoder, false)?;
    let request = SelectionRequest {
        instruction: query.to_string(),
        top_k: 25,
        max_rows_per_split: 3000,
        hf_config: None,
        out: Some(stage_dir.join("dataset")),
        exclude_registry_ids: exclude.map(|e| vec![e.to_string()]).unwrap_or_default(),
        within_top_k: true,
    };
    let (stdin, mut stderr) = (std::io::stdin(), std::io::stderr());
    let mut stdin = stdin.lock();
    let chooser = match teacher {
        _ if interactive => Chooser::Interactive { input: &mut stdin, output: &mut stderr },
        Some(t) => Chooser::Llm { teacher: t, votes: 3 },
        None => Chooser::Default,
    };
    let mut fallback_note = None;
    let selection = match select_dataset(&retriever, &registry, paths, &request, chooser, rt) {
        Ok(s) => s,
        // Online, a chosen hub dataset that cannot be loaded (no network, a gated dataset) is not
        // the end of the run: the best dataset that loads here is taken instead, and said so.
        Err(e) if !paths.offline && !interactive => {
            fallback_note = Some(format!(
                "the chosen dataset could not be loaded ({}); the best of the top {} that loads here instead",
                e.chain().last().map(|c| c.to_string()).unwrap_or_default(),
                request.top_k
            ));
            let local = Paths { offline: true, ..paths.clone() };
            select_dataset(&retriever, &registry, &local, &request, Chooser::Default, rt)?
        }
        Err(e) => return Err(e),
    };
    let notes: Vec<String> = encoder_notes
        .into_iter()
        .chain(fallback_note)
        .chain(selection.notes.iter().cloned())
        .collect();
    write_json(&stage_dir.join("notes.json"), &notes)?;
    let Some(chosen) = &selection.chosen else {
        return Ok((vec![], "no dataset chosen (generated data only)".into()));
    };
    let rows = read_retrieved_dir(&stage_dir.join("dataset"))?;
    let n = rows.len();
    Ok((rows, format!("{n} rows of `{}` ({})", chosen.name, selection.chosen_by)))
}

/// The `{input, references}` rows of a retrieved dataset folder as examples (first reference).
pub fn read_retrieved_dir(dir: &Path) -> Result<Vec<Example>> {
    let mut rows = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading the retrieved dataset folder {} (made by `p2m retrieve-dataset --out`)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no <split>.parquet files (made by `p2m retrieve-dataset --out`)",
        dir.display()
    );
    for f in files {
        let frame = crate::report::read_parquet(&f)?;
        let inputs = crate::data::loaders::string_column(&frame, crate::data::loaders::INPUT)?;
        let refs =
            crate::data::loaders::string_list_column(&frame, crate::data::loaders::REFERENCES)?;
        rows.extend(
            inputs
                .into_iter()
                .zip(refs)
                .filter_map(|(i, r)| r.into_iter().next().map(|o| Example::new(i, o))),
        );
    }
    Ok(rows)
}

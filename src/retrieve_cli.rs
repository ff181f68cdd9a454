//! `p2m retrieve-model` and `p2m retrieve-dataset`: the two retrievers from the command line,
//! with text output that explains each result, or `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::config::Paths;
use crate::dataset_retriever::{self as dr, Candidate, ColumnChoice, DatasetIndex, DatasetRetriever, SelectionConfig};
use crate::hub_datasets as hub;
use crate::model_retriever::{self as mr, IndexSource, ModelIndex, ModelRetrieverConfig};
use crate::registry::Registry;
use crate::teacher::cache::{CacheMode, CachedTeacher};
use crate::teacher::local::LocalTeacher;
use crate::teacher::openai::{OpenAiConfig, OpenAiTeacher};
use crate::teacher::Teacher;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeacherKind {
    /// No LLM: the instruction is the query; choices come from the terminal, a config file or defaults.
    None,
    /// The in-process offline model (SmolLM2-135M-Instruct).
    Local,
    /// An OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama).
    Openai,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RetrieverTeacherArgs {
    /// The LLM for HyDE (models), reranking and column selection (datasets).
    #[arg(long, value_enum, default_value = "none")]
    pub teacher: TeacherKind,
    /// Base URL of the OpenAI-compatible server, up to and including `/v1`.
    #[arg(long, default_value = "https://api.openai.com/v1")]
    pub base_url: String,
    /// Model name at the server.
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub model: String,
    /// Environment variable that holds the API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Record/replay teacher calls in this SQLite file.
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
}

impl RetrieverTeacherArgs {
    pub fn build(&self) -> Result<Option<Box<dyn Teacher>>> {
        let inner: Box<dyn Teacher> = match self.teacher {
            TeacherKind::None => return Ok(None),
            TeacherKind::Local => Box::new(LocalTeacher::offline_default(None)?),
            TeacherKind::Openai => {
                let mut cfg = OpenAiConfig::for_base_url(&self.base_url, &self.model);
                cfg.api_key_env = self.api_key_env.clone();
                Box::new(OpenAiTeacher::new(cfg)?)
            }
        };
        Ok(Some(match &self.teacher_cache {
            Some(path) => Box::new(CachedTeacher::open(inner, path, CacheMode::ReadWrite)?),
            None => inner,
        }))
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct InstructionArgs {
    /// The task instruction.
    #[arg(long, required_unless_present = "task", conflicts_with = "task")]
    pub instruction: Option<String>,
    /// Use the instruction of a paper task of data/tasks.toml (squad, temporal, mconala).
    #[arg(long)]
    pub task: Option<String>,
}

impl InstructionArgs {
    pub fn text(&self, paths: &Paths) -> Result<String> {
        if let Some(i) = &self.instruction {
            if i.trim().is_empty() {
                bail!("--instruction is empty; describe the task in a sentence or two");
            }
            return Ok(i.clone());
        }
        let id = self.task.as_deref().expect("clap requires --instruction or --task");
        let tasks = crate::tasks::load_tasks(&paths.data)?;
        match crate::tasks::find(&tasks, id) {
            Some(t) => Ok(t.instruction.trim().to_string()),
            None => bail!("unknown task `{id}`; data/tasks.toml has: {}", tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RetrieveModelArgs {
    #[command(flatten)]
    pub instruction: InstructionArgs,
    /// Models to return.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Largest model kept (units: B, KB, MB, GB, KiB, MiB, GiB).
    #[arg(long, default_value = "3GB")]
    pub size_limit: String,
    /// Also rank decoder-only models (the paper keeps encoder-decoders only).
    #[arg(long)]
    pub allow_decoder_only: bool,
    /// Score = BM25 × log10(downloads + OFFSET): 2 as the reference code, 1 as the paper's formula.
    #[arg(long, default_value_t = 2.0)]
    pub downloads_offset: f64,
    /// BM25 candidates kept before the downloads rescaling.
    #[arg(long, default_value_t = 1000)]
    pub first_stage_depth: usize,
    /// A model_info.tar.gz or folder of JSON cards instead of the registry's index.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Fetch the top model (online: hf-hub; offline: the fallback student's weights).
    #[arg(long)]
    pub fetch: bool,
    #[command(flatten)]
    pub teacher: RetrieverTeacherArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// The whole model-retrieval step as a value (what `--json` prints).
#[derive(Debug, serde::Serialize)]
pub struct ModelRetrievalOutput {
    pub instruction: String,
    pub query_source: String,
    pub config: ModelRetrieverConfig,
    pub index: serde_json::Value,
    pub ranking: mr::Ranking,
    pub trainable: Option<mr::TrainablePlan>,
}

/// Run the model retriever (also used by the retrieval report).
pub fn retrieve_model(args: &RetrieveModelArgs) -> Result<ModelRetrievalOutput> {
    let paths = Paths::from_env()?;
    let instruction = args.instruction.text(&paths)?;
    let source = match &args.index {
        Some(p) => IndexSource::from_path(p)?,
        None => IndexSource::from_registry(&Registry::load(paths.clone())?)?,
    };
    let show = !args.json && std::io::stderr().is_terminal();
    let (index, rebuilt) = ModelIndex::load_or_build(&source, &paths.cache, show)?;
    let cfg = ModelRetrieverConfig {
        top_k: args.top_k,
        first_stage_depth: args.first_stage_depth,
        size_limit_bytes: mr::parse_size(&args.size_limit)?,
        allow_decoder_only: args.allow_decoder_only,
        downloads_offset: args.downloads_offset,
        ..Default::default()
    };
    let teacher = args.teacher.build()?;
    let (query, query_source) = match &teacher {
        None => (instruction.clone(), "the instruction (no teacher: HyDE off)".to_string()),
        Some(t) => {
            let card = runtime()?.block_on(mr::hyde_query(t.as_ref(), &instruction))?;
            (card, format!("HyDE: a hypothetical model card written by {} `{}`", t.backend(), t.model()))
        }
    };
    let ranking = index.rank(&query, &cfg, Some(cfg.top_k));
    if ranking.models.is_empty() {
        bail!(
            "no model matched: {} eligible cards (removed {} above the size limit, {} not encoder-decoder), none shares a term with the query.\n  \
             fix: rephrase the instruction, raise --size-limit, or pass --allow-decoder-only",
            ranking.eligible,
            ranking.removed_by_size,
            ranking.removed_by_architecture
        );
    }
    let models = crate::models::weights::ModelRegistry::load(paths.clone())?;
    let trainable = ranking.models.first().map(|m| mr::plan_trainable(&models, &m.name, paths.offline));
    if args.fetch {
        if let Some(plan) = &trainable {
            let dir = mr::fetch_trainable(&models, plan).with_context(|| format!("fetching `{}`", plan.retrieved))?;
            eprintln!("fetched into {}", dir.display());
        }
    }
    Ok(ModelRetrievalOutput {
        instruction,
        query_source,
        config: cfg,
        index: json!({ "source": source.path, "sha256": source.sha256, "stats": index.stats, "rebuilt": rebuilt,
                       "cache": paths.cache.join("retrieval").join("model_index.bin") }),
        ranking,
        trainable,
    })
}

pub fn retrieve_model_cmd(args: RetrieveModelArgs) -> Result<()> {
    let out = retrieve_model(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let s = &out.index["stats"];
    println!(
        "model index: {} cards indexed of {} files (skipped: {} empty, {} without description, {} without size, {} blocklisted); {}",
        s["indexed"], s["files"], s["empty"], s["no_description"], s["no_size"], s["blocked"],
        if out.index["rebuilt"].as_bool() == Some(true) { "built now" } else { "from the cache" }
    );
    println!("query: {}", out.query_source);
    if out.query_source.starts_with("HyDE") {
        for line in out.ranking.query.lines().take(12) {
            println!("  | {line}");
        }
    }
    let r = &out.ranking;
    println!(
        "filters: size ≤ {}, {}: {} eligible ({} removed by size, {} by architecture); {} share a term with the query",
        mr::format_size(out.config.size_limit_bytes),
        if out.config.allow_decoder_only { "encoder-decoder or decoder-only" } else { "encoder-decoder only" },
        r.eligible,
        r.removed_by_size,
        r.removed_by_architecture,
        r.matched
    );
    println!("score = BM25 × log10(downloads + {}) over the best {} by BM25\n", out.config.downloads_offset, out.config.first_stage_depth);
    for m in &r.models {
        println!(
            "{:>2}. {}  score {:.3} = BM25 {:.3} × log10({} + {})",
            m.rank, m.name, m.score, m.bm25, m.downloads, out.config.downloads_offset
        );
        println!("    {}, {} ({})", mr::format_size(m.size_bytes), m.architecture.as_str(), m.architecture_reason);
        let terms: Vec<String> = m.matched_terms.iter().map(|t| format!("{} ×{}", t.word, t.tf)).collect();
        println!("    matched: {}", terms.join(", "));
    }
    if let Some(t) = &out.trainable {
        println!("\ntrainable: {}", t.explanation);
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct RetrieveDatasetArgs {
    #[command(flatten)]
    pub instruction: InstructionArgs,
    /// Candidates to list (the reference's 25).
    #[arg(long, default_value_t = 25)]
    pub top_k: usize,
    /// Votes of the LLM reranking (with --teacher).
    #[arg(long, default_value_t = 3)]
    pub votes: u32,
    /// Pick the dataset and its columns in the terminal.
    #[arg(long, conflicts_with = "config")]
    pub interactive: bool,
    /// A TOML file naming the dataset and columns (dataset, input_columns, output_column).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Textualise the chosen dataset into this folder (`<split>.parquet`, retrieved_dataset.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rows kept per split.
    #[arg(long, default_value_t = 3000)]
    pub max_rows_per_split: usize,
    /// A dataset_index.json instead of the registry's.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// The encoder of descriptions and queries: `datafinder` (the paper's; hub only), `minilm`
    /// (offline) or a BERT-family id of data/models.toml. Default: datafinder online, minilm offline.
    #[arg(long)]
    pub encoder: Option<String>,
    /// The hub config of a dataset loaded from the hub (default: the index's evaluation config,
    /// else `default`, else the first the server lists).
    #[arg(long)]
    pub hf_config: Option<String>,
    #[command(flatten)]
    pub teacher: RetrieverTeacherArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The dataset retriever over the registry's (or a given) index, with the offline encoder.
pub fn open_dataset_retriever(paths: &Paths, index_path: Option<&PathBuf>, show_progress: bool) -> Result<(DatasetRetriever, Registry)> {
    let models = crate::models::weights::ModelRegistry::load(paths.clone())?;
    let encoder = dr::Encoder::from_registry(&models, dr::DEFAULT_ENCODER)?;
    open_dataset_retriever_with(paths, index_path, encoder, show_progress)
}

/// The dataset retriever with a given encoder (MiniLM, DataFinder, ...).
pub fn open_dataset_retriever_with(paths: &Paths, index_path: Option<&PathBuf>, encoder: dr::Encoder, show_progress: bool) -> Result<(DatasetRetriever, Registry)> {
    let registry = Registry::load(paths.clone())?;
    let index = match index_path {
        Some(p) => DatasetIndex::load(p, None)?,
        None => DatasetIndex::from_registry(&registry)?.0,
    };
    let local = dr::local_sources(&registry);
    Ok((DatasetRetriever::new(index, encoder, local, &paths.cache, show_progress)?, registry))
}

pub fn retrieve_dataset_cmd(args: RetrieveDatasetArgs) -> Result<()> {
    let paths = Paths::from_env()?;
    let instruction = args.instruction.text(&paths)?;
    let show = !args.json && std::io::stderr().is_terminal();
    let models = crate::models::weights::ModelRegistry::load(paths.clone())?;
    let (encoder, encoder_notes) = dr::choose_encoder(&models, args.encoder.as_deref(), paths.offline)?;
    let (retriever, registry) = open_dataset_retriever_with(&paths, args.index.as_ref(), encoder, show)?;
    let all = retriever.retrieve(&instruction, None)?;
    let top: Vec<Candidate> = all.iter().take(args.top_k).cloned().collect();
    let best_loadable = all.iter().find(|c| c.loadable()).cloned();
    // Online every dataset of the index loads from the hub (datasets-server); offline only those
    // with a local source or a hub copy in the cache.
    let config = args.config.as_ref().map(|p| SelectionConfig::read(p)).transpose()?;
    let hf_config = args.hf_config.clone().or_else(|| config.as_ref().and_then(|c| c.config.clone()));
    let info_of = |name: &str| retriever.index.entries.iter().find(|e| e.name == name);
    let hub_request = |c: &Candidate, max_rows: usize| hub::HubRequest {
        dataset: c.name.clone(),
        config: hf_config.clone(),
        index_config: info_of(&c.name).and_then(|i| i.eval_config.clone()),
        max_rows_per_split: max_rows,
    };
    let max_rows = config.as_ref().and_then(|c| c.max_rows_per_split).unwrap_or(args.max_rows_per_split);
    let from_hub = |c: &Candidate| !c.loadable() && (!paths.offline || hub::find_cached(&paths.cache, &hub_request(c, max_rows)).is_some());
    let best_usable = all.iter().find(|c| c.loadable() || from_hub(c)).cloned();
    let teacher = args.teacher.build()?;
    let rt = runtime()?;

    // Which dataset.
    let mut notes: Vec<String> = encoder_notes;
    let (chosen, chosen_by): (Option<Candidate>, String) = if let Some(cfg) = &config {
        let c = all.iter().find(|c| c.name == cfg.dataset).cloned().with_context(|| format!("{}: dataset `{}` is not in the index", args.config.as_ref().unwrap().display(), cfg.dataset))?;
        (Some(c), "config file".into())
    } else if args.interactive {
        let stdin = std::io::stdin();
        let pick = dr::interactive_pick(&top, &mut stdin.lock(), &mut std::io::stderr())?;
        (pick.map(|i| top[i].clone()), "picked in the terminal".into())
    } else if let Some(t) = &teacher {
        let outcome = rt.block_on(dr::llm_rerank(t.as_ref(), &instruction, &top, args.votes, 0))?;
        notes.push(format!("LLM rerank ({} `{}`): votes {:?}, {} abstentions", t.backend(), t.model(), outcome.votes, outcome.abstentions));
        match outcome.chosen {
            Some(name) => (top.iter().find(|c| c.name == name).cloned(), "LLM rerank".into()),
            None => (best_usable.clone(), "best loadable (the LLM chose none)".into()),
        }
    } else if best_usable.as_ref().is_some_and(|c| !c.loadable()) {
        (best_usable.clone(), if paths.offline { "best-ranked dataset loadable here (its hub copy is cached)" } else { "best-ranked dataset (online: loaded from the hub)" }.into())
    } else {
        (best_usable.clone(), "best-ranked dataset loadable here".into())
    };
    let mut chosen = chosen;
    if let Some(c) = &chosen {
        if !c.loadable() && !from_hub(c) {
            notes.push(format!("`{}` has no local source here (offline, and no hub copy in the cache); using the best loadable dataset instead", c.name));
            chosen = best_loadable.clone();
        }
    }

    let mut saved = None;
    if let (Some(out), Some(c)) = (&args.out, &chosen) {
        // The rows with their source's column names: the local copy when there is one, else the hub.
        let (splits, inputs, source, format) = match &c.local {
            Some(local) if local.loadable => {
                let (splits, inputs) = dr::load_raw(&registry, &local.registry_id)?;
                (splits, inputs, None, Some(local.format.clone()))
            }
            _ => {
                let loaded = hub::load(&paths.cache, paths.offline, &hub::ServerConfig::from_env(), &hub_request(c, max_rows)).with_context(|| format!("loading `{}` from the hub", c.name))?;
                notes.extend(loaded.notes.iter().cloned());
                notes.push(format!(
                    "`{}` config `{}` ({}) {}",
                    c.name,
                    loaded.config,
                    loaded.config_chosen_by,
                    if loaded.from_cache { format!("read from the cache {}", loaded.cache_dir.display()) } else { format!("fetched from {} into {}", loaded.source_url, loaded.cache_dir.display()) }
                ));
                let source = dr::HubSource {
                    dataset: loaded.dataset.clone(),
                    config: loaded.config.clone(),
                    config_chosen_by: loaded.config_chosen_by.clone(),
                    url: loaded.source_url.clone(),
                    from_cache: loaded.from_cache,
                    cache_dir: loaded.cache_dir.clone(),
                };
                let splits: Vec<dr::RawSplit> = loaded.splits.into_iter().filter(|s| s.rows() > 0).collect();
                anyhow::ensure!(!splits.is_empty(), "`{}` config `{}`: every split is empty on the datasets server; choose another dataset", c.name, source.config);
                (splits, Vec::new(), Some(source), None)
            }
        };
        let columns = splits[0].column_names();
        let example = splits[0].example(0);
        let (choice, columns_by): (ColumnChoice, String) = if let Some(cfg) = config.as_ref().filter(|c| !c.input_columns.is_empty()) {
            (ColumnChoice { input: cfg.input_columns.clone(), output: cfg.output_column.clone().context("the config names input_columns but no output_column")? }, "the config file".into())
        } else if args.interactive {
            let stdin = std::io::stdin();
            (dr::interactive_columns(&columns, &example, &mut stdin.lock(), &mut std::io::stderr())?, "picked in the terminal".into())
        } else if let Some(t) = &teacher {
            (rt.block_on(dr::llm_select_columns(t.as_ref(), &instruction, &c.name, &c.description, &columns, &example, 3))?, format!("LLM column selection ({} `{}`)", t.backend(), t.model()))
        } else if let Some(format) = &format {
            (dr::default_columns(format).context("no default columns for this format")?, format!("the natural columns of the local `{format}` format"))
        } else {
            let mappings = info_of(&c.name).map(|i| i.col_mappings.clone()).unwrap_or_default();
            dr::default_hub_columns(&columns, &mappings)?
        };
        notes.push(format!("columns: {columns_by}"));
        // A split without the chosen columns (an unlabelled test split) is left out, and said so.
        let wanted: Vec<&String> = choice.input.iter().chain(std::iter::once(&choice.output)).collect();
        let (usable, skipped): (Vec<dr::RawSplit>, Vec<dr::RawSplit>) = splits.into_iter().partition(|s| wanted.iter().all(|w| s.column_names().contains(w)));
        for s in &skipped {
            notes.push(format!("split `{}` lacks some of the chosen columns; left out", s.split));
        }
        anyhow::ensure!(!usable.is_empty(), "no split of `{}` has the columns {:?}", c.name, wanted);
        let (registry_id, chosen_by) = match &source {
            Some(s) => (format!("hub:{}/{}", s.dataset, s.config), format!("{chosen_by}; columns: {columns_by}")),
            None => (c.local.as_ref().map(|l| l.registry_id.clone()).unwrap_or_default(), chosen_by.clone()),
        };
        saved = Some(dr::save_with_source(out, &c.name, &registry_id, &usable, &choice, max_rows, &chosen_by, inputs, source)?);
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "instruction": instruction, "encoder": retriever.encoder.id, "index": retriever.index.path, "index_sha256": retriever.index.sha256,
                "candidates": top, "best_loadable": best_loadable, "best_usable": best_usable.as_ref().map(|c| &c.name), "chosen": chosen.as_ref().map(|c| &c.name), "chosen_by": chosen_by,
                "notes": notes, "saved": saved,
            }))?
        );
        return Ok(());
    }
    println!(
        "dataset index: {} datasets, descriptions encoded with {} ({}); query: the instruction\n",
        retriever.index.entries.len(),
        retriever.encoder.id,
        if retriever.encoded_now { "encoded now" } else { "from the cache" }
    );
    for c in &top {
        let mark = match &c.local {
            Some(l) if l.loadable => format!("✓ loadable here ({})", l.registry_id),
            _ if from_hub(c) => if paths.offline { "✓ hub copy in the cache".to_string() } else { "✓ from the hub".to_string() },
            Some(l) => format!("local copy `{}` has no loader ({})", l.registry_id, l.format),
            None => "no local source".into(),
        };
        let desc: String = c.description.split_whitespace().collect::<Vec<_>>().join(" ");
        let desc: String = if desc.chars().count() > 110 { format!("{}…", desc.chars().take(110).collect::<String>()) } else { desc };
        println!("{:>3}. {:<36} {:.4}  {}\n     {}", c.rank, c.name, c.score, mark, desc);
    }
    match &best_loadable {
        Some(b) => println!("\nbest loadable dataset: {} (rank {} of {})", b.name, b.rank, all.len()),
        None => println!("\nno dataset of the index is loadable here"),
    }
    for n in &notes {
        println!("note: {n}");
    }
    match (&chosen, &saved) {
        (Some(c), Some(s)) => println!(
            "chosen: {} ({}); input columns {:?} → output `{}`; rows {:?} → {}",
            c.name,
            s.chosen_by,
            s.columns.input,
            s.columns.output,
            s.splits,
            args.out.as_ref().unwrap().display()
        ),
        (Some(c), None) => println!("chosen: {} ({}); pass --out DIR to textualise it", c.name, chosen_by),
        (None, _) => println!("chosen: none (generated data only)"),
    }
    Ok(())
}

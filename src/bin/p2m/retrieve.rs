//! `p2m retrieve-model` and `p2m retrieve-dataset`: the two retrievers from the command line, with
//! text output that explains each result, or `--json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use prompt2model::config::Paths;
use prompt2model::data::registry::Registry;
use prompt2model::dataset_retriever::{
    self as dr, select_dataset, Chooser, SelectionConfig, SelectionRequest,
};
use prompt2model::dataset_transformer as dt;
use prompt2model::model_retriever::{self as mr, ModelRetrieverConfig, ModelSearch};
use prompt2model::teacher::cache::{CacheMode, CachedTeacher};
use prompt2model::teacher::Teacher;

use crate::shared::{runtime, InstructionArgs, TeacherArgs};

/// The retrievers' LLM, wrapped in a record/replay cache when one is named.
fn retriever_teacher(
    args: &TeacherArgs,
    cache: Option<&PathBuf>,
) -> Result<Option<Box<dyn Teacher>>> {
    let Some(inner) = args.build_optional()? else { return Ok(None) };
    Ok(Some(match cache {
        Some(path) => Box::new(CachedTeacher::open(inner, path, CacheMode::ReadWrite)?),
        None => inner,
    }))
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
    /// Online, fetch the chosen hub model with hf-hub (without it, the model is only named).
    #[arg(long)]
    pub fetch: bool,
    /// The LLM for HyDE (models), reranking and column selection (datasets).
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// Record/replay teacher calls in this SQLite file.
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run the model retriever as the command's flags say.
pub fn run_model_retriever(args: &RetrieveModelArgs) -> Result<mr::ModelRetrievalOutput> {
    let paths = Paths::from_env()?;
    let search = ModelSearch {
        instruction: args.instruction.text(&paths)?,
        index: args.index.clone(),
        config: ModelRetrieverConfig {
            top_k: args.top_k,
            first_stage_depth: args.first_stage_depth,
            size_limit_bytes: mr::parse_size(&args.size_limit)?,
            allow_decoder_only: args.allow_decoder_only,
            downloads_offset: args.downloads_offset,
            ..Default::default()
        },
        fetch: args.fetch,
        show_progress: !args.json,
    };
    let teacher = retriever_teacher(&args.teacher, args.teacher_cache.as_ref())?;
    let out = mr::retrieve_models(&paths, &search, teacher.as_deref(), &runtime()?)?;
    if let Some(dir) = &out.fetched {
        eprintln!("fetched into {}", dir.display());
    }
    Ok(out)
}

pub fn retrieve_model(args: RetrieveModelArgs) -> Result<()> {
    let out = run_model_retriever(&args)?;
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
    println!(
        "score = BM25 × log10(downloads + {}) over the best {} by BM25\n",
        out.config.downloads_offset, out.config.first_stage_depth
    );
    for m in &r.models {
        println!(
            "{:>2}. {}  score {:.3} = BM25 {:.3} × log10({} + {})",
            m.rank, m.name, m.score, m.bm25, m.downloads, out.config.downloads_offset
        );
        println!(
            "    {}, {} ({})",
            mr::format_size(m.size_bytes),
            m.architecture.as_str(),
            m.architecture_reason
        );
        let terms: Vec<String> =
            m.matched_terms.iter().map(|t| format!("{} ×{}", t.word, t.tf)).collect();
        println!("    matched: {}", terms.join(", "));
    }
    if let Some(t) = &out.trainable {
        println!("\nthe top hub model here: {}", t.explanation);
    }
    println!("\nbeside the index, the students that train here (data/models.toml [model.student]), ranked together:");
    for c in &out.candidates {
        println!(
            "{:>2}. {}  score {:.3} = BM25 {:.3} × log10({} + {}) (downloads: {})",
            c.rank,
            c.label(),
            c.score,
            c.bm25,
            c.downloads,
            out.config.downloads_offset,
            c.downloads_basis
        );
    }
    for (name, why) in &out.choice.passed_over {
        println!("passed over: {name}: {why}");
    }
    match (&out.choice.name, &out.choice.student) {
        (Some(name), Some(student)) => println!("chosen: {name} → --student {student}"),
        _ => println!("chosen: none of the candidates trains here (the pipeline trains the scale's default student)"),
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
    /// The LLM for HyDE (models), reranking and column selection (datasets).
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// Record/replay teacher calls in this SQLite file (with --transform, default
    /// `<out>/teacher_cache.sqlite`).
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    /// Rewrite the chosen dataset's rows into the task's format with the teacher (a plan, then
    /// one `{"input", "output"}` answer per row) into `<out>/transformed.jsonl`; needs --out and
    /// --teacher local|openai. With --task the task's demonstrations are shown to the teacher.
    #[arg(long, requires = "out")]
    pub transform: bool,
    /// Rows transformed at most (a seeded sample).
    #[arg(long, default_value_t = prompt2model::dataset_transformer::DEFAULT_TRANSFORM_ROWS)]
    pub transform_rows: usize,
    /// Stop before a paid transform unless its estimated cost (USD) fits.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--transform`: the saved rows of `out` rewritten by the teacher into the task's format, after
/// the cost estimate (a priced teacher needs a `--budget` that covers it).
fn transform_saved(
    args: &RetrieveDatasetArgs,
    paths: &Paths,
    teacher: Option<&dyn Teacher>,
    out: &std::path::Path,
) -> Result<dt::Transformed> {
    let teacher = teacher.context(
        "--transform needs a teacher to rewrite the rows: --teacher local or --teacher openai --base-url …",
    )?;
    let prompt = args.instruction.prompt(paths)?;
    let parsed = prompt2model::prompt_parser::parse_deterministic(&prompt)?;
    let rows = prompt2model::pipeline::assemble::retrieved_folder_rows(out)?.all_rows();
    let cfg = dt::TransformConfig { max_rows: args.transform_rows, ..Default::default() };
    if let Some(est) =
        prompt2model::pipeline::estimate_transform_cost(teacher.model(), &prompt, rows.len(), &cfg)
    {
        eprintln!(
            "estimate: about {} requests, {} prompt + {} completion tokens, ${:.2} at {}'s prices",
            est.requests, est.prompt_tokens, est.completion_tokens, est.usd, est.model
        );
        anyhow::ensure!(
            args.budget.is_some_and(|b| b >= est.usd),
            "the transform would cost about ${:.2} ({} requests to {}); pass --budget {:.2} (or more) to allow it",
            est.usd,
            est.requests,
            est.model,
            (est.usd * 100.0).ceil() / 100.0
        );
    }
    let progress =
        prompt2model::util::progress::Progress::new(!args.json, "transforming", 0, "rows");
    let result = runtime()?.block_on(dt::transform(teacher, &parsed, &rows, &cfg, Some(&progress)));
    progress.finish_and_clear();
    let transformed = match result {
        Ok(t) => t,
        Err(e) => {
            if let dt::TransformError::Stopped { partial, .. } = &e {
                dt::write_transformed(out, partial)?;
            }
            return Err(anyhow::anyhow!(e).context(
                "the transform stopped; what was transformed is in the output folder, and a rerun continues from the teacher cache",
            ));
        }
    };
    dt::write_transformed(out, &transformed)?;
    Ok(transformed)
}

pub fn retrieve_dataset(args: RetrieveDatasetArgs) -> Result<()> {
    let paths = Paths::from_env()?;
    let instruction = args.instruction.text(&paths)?;
    let show = !args.json;
    let models = prompt2model::models::registry::ModelRegistry::load(paths.clone())?;
    let (encoder, encoder_notes) =
        dr::choose_encoder(&models, args.encoder.as_deref(), paths.offline)?;
    let (retriever, registry): (dr::DatasetRetriever, Registry) =
        dr::open_dataset_retriever_with(&paths, args.index.as_deref(), encoder, show)?;
    let config = args.config.as_ref().map(|p| SelectionConfig::read(p)).transpose()?;
    let cache = args.teacher_cache.clone().or_else(|| {
        args.transform.then(|| args.out.as_ref().map(|o| o.join("teacher_cache.sqlite"))).flatten()
    });
    let teacher = retriever_teacher(&args.teacher, cache.as_ref())?;
    let (stdin, mut stderr) = (std::io::stdin(), std::io::stderr());
    let mut stdin = stdin.lock();
    let chooser = match (&config, &teacher) {
        (Some(config), _) => {
            Chooser::Config { config, path: args.config.as_deref().expect("a config was read") }
        }
        _ if args.interactive => Chooser::Interactive { input: &mut stdin, output: &mut stderr },
        (None, Some(t)) => Chooser::Llm { teacher: t.as_ref(), votes: args.votes },
        (None, None) => Chooser::Default,
    };
    let request = SelectionRequest {
        instruction: instruction.clone(),
        top_k: args.top_k,
        max_rows_per_split: args.max_rows_per_split,
        hf_config: args.hf_config.clone(),
        out: args.out.clone(),
        exclude_registry_ids: Vec::new(),
        within_top_k: false,
    };
    let selection = select_dataset(&retriever, &registry, &paths, &request, chooser, &runtime()?)?;
    let mut notes = encoder_notes;
    notes.extend(selection.notes.iter().cloned());
    let transformed = match (&args.out, &selection.saved) {
        (Some(out), Some(_)) if args.transform => {
            Some(transform_saved(&args, &paths, teacher.as_deref(), out)?)
        }
        _ if args.transform => {
            notes.push(
                "--transform: no dataset was chosen and saved, so nothing was transformed".into(),
            );
            None
        }
        _ => None,
    };
    let (top, best_loadable, best_usable, chosen, chosen_by, saved) = (
        &selection.top,
        &selection.best_loadable,
        &selection.best_usable,
        &selection.chosen,
        &selection.chosen_by,
        &selection.saved,
    );

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "instruction": instruction, "encoder": retriever.encoder.id, "index": retriever.index.path, "index_sha256": retriever.index.sha256,
                "candidates": top, "best_loadable": best_loadable, "best_usable": best_usable.as_ref().map(|c| &c.name), "chosen": chosen.as_ref().map(|c| &c.name), "chosen_by": chosen_by,
                "notes": notes, "saved": saved, "transform": transformed.as_ref().map(|t| &t.log),
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
    for (c, mark) in top.iter().zip(&selection.top_availability) {
        let desc: String = c.description.split_whitespace().collect::<Vec<_>>().join(" ");
        let desc: String = if desc.chars().count() > 110 {
            format!("{}…", desc.chars().take(110).collect::<String>())
        } else {
            desc
        };
        println!("{:>3}. {:<36} {:.4}  {}\n     {}", c.rank, c.name, c.score, mark, desc);
    }
    match &best_loadable {
        Some(b) => println!(
            "\nbest loadable dataset: {} (rank {} of {})",
            b.name,
            b.rank,
            selection.all.len()
        ),
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
        (Some(c), None) => {
            println!("chosen: {} ({}); pass --out DIR to textualise it", c.name, chosen_by)
        }
        (None, _) => println!("chosen: none (generated data only)"),
    }
    if let (Some(t), Some(out)) = (&transformed, &args.out) {
        println!(
            "transformed: {} → {} ({})",
            t.log.describe(),
            out.join(dt::TRANSFORMED_FILE).display(),
            dt::TRANSFORM_LOG_FILE
        );
    }
    Ok(())
}

//! Table 2 of the paper, re-run for real: SQuAD students trained on retrieved data only, generated
//! data only, both, or human-annotated data, each evaluated by exact match on the same held-out
//! SQuAD questions, with the cost of each kind of data.
//!
//! What is available offline, and so what each arm is (the report says all of this):
//! - **Held-out test / custom annotation.** Only the SQuAD v1.1 *dev* set is here. It is split by
//!   article (seeded): half the articles are the annotation pool the "custom annotation" arm trains
//!   on, the other half the test set every arm is evaluated on. No arm ever trains on a test article.
//! - **Generation.** By default the gpt-3.5-turbo data the authors generated for SQuAD
//!   (`p2m_runs/.../SQuAD_0.3_1.4_with_filtering`); `--generated DIR` uses a dataset written by the
//!   project's own generator (`p2m generate`), whose log carries its measured cost.
//! - **Retrieval.** The paper retrieved the Children's Book Test; offline only its one-example dummy
//!   exists. The arm runs the project's dataset retriever on the SQuAD instruction and trains on
//!   the best-ranked dataset that is loadable here and is not SQuAD itself (offline: NQ-Open, from
//!   the recorded runs: questions without a context passage); a scale may name a dataset instead.
//!
//! Sizes, student and hyper-parameters come from a *scale* in `data/table2_scales.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame, IdxCa, IdxSize, PolarsResult};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::examples::Example;
use crate::data::loaders::{self, HfDisk};
use crate::data::registry::{Registry, ResolvedFile};
use crate::evaluator::bootstrap::{
    paired_bootstrap, score_with_interval, BootstrapConfig, CorpusScorer, Interval,
};
use crate::evaluator::Metric;
use crate::executor::{self, ExecutorConfig};
use crate::models::registry::ModelRegistry;
use crate::pipeline::assemble::{assemble_sources, Cut, Row, SourceRows};
use crate::pipeline::config::SplitConfig;
use crate::report::figures::{self, BarGroup, BarPanel};
use crate::report::{Manifest, Report, ReportTable};
use crate::teacher::{estimate_tokens, Pricing};
use crate::trainer::{self, StepLog, Student, StudentSpec, TextPair, TrainConfig, Trainer};
use crate::util::rng::SplitMix64;

/// The authors' generated SQuAD training data (gpt-3.5-turbo, temperatures 0.3→1.4, filtered).
pub const RECORDED_GENERATED: &str =
    "p2m_runs/generation/generated_dataset/SQuAD_0.3_1.4_with_filtering";
pub const SQUAD_DATASET: &str = "squad-v1.1-dev";

/// One scale of `data/table2_scales.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub description: String,
    pub examples_per_source: usize,
    pub validation_examples: usize,
    /// 0 = every question of the held-out articles.
    pub test_examples: usize,
    /// The retrieval arm's dataset: `auto` runs the dataset retriever on the SQuAD instruction
    /// and takes the best-ranked dataset loadable here other than SQuAD itself; anything else is
    /// a registry id (data/datasets.toml).
    #[serde(default = "default_retrieval_dataset")]
    pub retrieval_dataset: String,
    #[serde(default)]
    pub student: StudentSpec,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    /// What one arm (a cell) asks of a cluster node (`table2 --emit-slurm`).
    pub slurm: crate::tables::cells::SlurmResources,
}

fn default_retrieval_dataset() -> String {
    "auto".into()
}

/// The retrieval arm's data: `(input, output)` rows of the chosen dataset, what was chosen and why.
struct Retrieved {
    rows: Pairs,
    registry_id: String,
    note: String,
    files: Vec<ResolvedFile>,
}

/// Loads a local dataset's rows through the dataset retriever's own textualisation (its natural
/// columns as `col: value` lines), so the arm sees what `p2m retrieve-dataset` would save.
fn retrieved_rows(registry: &Registry, registry_id: &str) -> Result<(Pairs, Vec<ResolvedFile>)> {
    let entry = registry.dataset(registry_id)?;
    let choice = crate::dataset_retriever::default_columns(&entry.format).with_context(|| {
        format!(
            "dataset `{registry_id}` (format {}) has no default columns for retrieval",
            entry.format
        )
    })?;
    let (splits, files) = crate::dataset_retriever::load_raw(registry, registry_id)?;
    let mut rows = Vec::new();
    for split in &splits {
        let frame = crate::dataset_retriever::columns_as_text(split, &choice, usize::MAX)?;
        let inputs = loaders::string_column(&frame, loaders::INPUT)?;
        let refs = loaders::string_list_column(&frame, loaders::REFERENCES)?;
        rows.extend(
            inputs
                .into_iter()
                .zip(refs)
                .map(|(i, r)| (i, r.into_iter().next().unwrap_or_default())),
        );
    }
    Ok((rows, files))
}

fn choose_retrieved(
    registry: &Registry,
    setting: &str,
    instruction: &str,
    progress: bool,
) -> Result<Retrieved> {
    if setting != "auto" {
        let (rows, files) = retrieved_rows(registry, setting)?;
        let note = format!(
            "Retrieval arm: dataset `{setting}` as configured by the scale ({} rows).",
            rows.len()
        );
        return Ok(Retrieved { rows, registry_id: setting.to_string(), note, files });
    }
    let (retriever, _) =
        crate::dataset_retriever::open_dataset_retriever(&registry.paths, None, progress)?;
    let ranked = retriever.retrieve(instruction, None)?;
    let chosen = ranked
        .iter()
        .find(|c| c.loadable() && c.local.as_ref().is_some_and(|l| l.registry_id != SQUAD_DATASET))
        .context("the dataset retriever found no dataset loadable here other than SQuAD")?;
    let local = chosen.local.as_ref().expect("loadable");
    let (rows, files) = retrieved_rows(registry, &local.registry_id)?;
    let squad_rank = ranked
        .iter()
        .find(|c| c.name == "squad")
        .map(|c| c.rank.to_string())
        .unwrap_or_else(|| "—".into());
    let top: Vec<String> =
        ranked.iter().take(5).map(|c| format!("{} ({:.3})", c.name, c.score)).collect();
    let note = format!(
        "Retrieval arm: the dataset retriever (MiniLM dense search over the {} dataset descriptions) ranks for the SQuAD instruction: {}; `squad` itself at {squad_rank}, excluded because it is the task's own test data. The best-ranked dataset loadable here is `{}` (rank {}, registry `{}`, {} rows). The paper retrieved the Children's Book Test, of which only a one-example dummy exists offline.",
        ranked.len(),
        top.join(", "),
        chosen.name,
        chosen.rank,
        local.registry_id,
        rows.len()
    );
    Ok(Retrieved { rows, registry_id: local.registry_id.clone(), note, files })
}

/// How the annotation cost is estimated: SQuAD's crowdworkers were paid $9/hour and asked to
/// spend 4 minutes per paragraph (Rajpurkar et al., 2016, §3); so an annotated set costs
/// `paragraphs × minutes / 60 × rate`, over the distinct paragraphs its questions come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    pub annotation_usd_per_hour: f64,
    pub annotation_minutes_per_paragraph: f64,
    /// The teacher whose price applies to the recorded generated data.
    pub recorded_teacher: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ScalesFile {
    cost_model: CostModel,
    #[serde(flatten)]
    scales: BTreeMap<String, Scale>,
}

/// Loads the scales (and the cost model) from `data/table2_scales.toml`.
pub fn load_scales(data_dir: &Path) -> Result<(BTreeMap<String, Scale>, CostModel)> {
    let path = data_dir.join("table2_scales.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: ScalesFile = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid scales file", path.display()))?;
    for (name, s) in &file.scales {
        s.train.validate().with_context(|| format!("{}: scale `{name}`", path.display()))?;
        if s.examples_per_source == 0 {
            bail!("{}: scale `{name}`: examples_per_source must be at least 1", path.display());
        }
    }
    Ok((file.scales, file.cost_model))
}

/// Where the generation arm's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum GeneratedSource {
    /// The authors' recorded gpt-3.5-turbo data ([`RECORDED_GENERATED`]).
    Recorded,
    /// A folder written by `p2m generate` (`examples.jsonl`, `generation_log.json`).
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scale: String,
    pub generated: GeneratedSource,
    pub seed: u64,
    /// Where students and predictions of each arm are kept (resumable); default
    /// `<cache>/runs/table2/<scale>`.
    pub runs_dir: Option<PathBuf>,
    pub device: Device,
    pub progress: bool,
}

impl Options {
    pub fn new(scale: &str) -> Self {
        Options {
            scale: scale.into(),
            generated: GeneratedSource::Recorded,
            seed: 42,
            runs_dir: None,
            device: crate::models::default_device(),
            progress: true,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct ArmResult {
    pub arm: String,
    /// Where the training data came from (registry ids / folders).
    pub data: String,
    pub train_examples: usize,
    /// Each score with its 95 % percentile-bootstrap interval over the test questions.
    pub em_squad: Interval,
    pub em_raw: Interval,
    /// chrF++ against the gold answers: not in the paper's Table 2, but graded where EM is all or
    /// nothing, so small-scale runs still show how far each arm's answers are from the gold ones.
    pub chrf: Interval,
    pub test_examples: usize,
    pub cost_usd: Option<f64>,
    pub cost_basis: String,
    pub paper_examples: Option<u32>,
    pub paper_em: Option<f64>,
    pub paper_cost_usd: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub final_validation_loss: Option<f64>,
    pub optimizer_steps: u64,
    pub train_seconds: f64,
    pub examples_per_second: f64,
    pub predict_seconds: Option<f64>,
    pub train_peak_rss_mb: Option<f64>,
    pub predict_peak_rss_mb: Option<f64>,
}

/// A paired bootstrap test between two arms on the same test questions (SQuAD-normalised EM).
#[derive(Debug, Clone, Serialize)]
pub struct PairedTest {
    pub arm: String,
    pub against: String,
    /// `arm` − `against`, EM points, on all test questions.
    pub delta: f64,
    /// One-sided: the share of resamples in which `arm` does not beat `against`.
    pub p_value: f64,
}

/// The pairs the paper's Table 2 argues from: the combined data against each single source, and
/// generated data against a person's annotation (the cost question).
const PAIRED_TESTS: [(&str, &str); 4] = [
    ("retrieval + generation", "retrieval only"),
    ("retrieval + generation", "generation only"),
    ("retrieval + generation", "custom annotation"),
    ("generation only", "custom annotation"),
];

pub struct Table2 {
    pub scale_name: String,
    pub scale: Scale,
    pub arms: Vec<ArmResult>,
    pub paired: Vec<PairedTest>,
    pub curves: Vec<(String, Vec<StepLog>)>,
    pub predictions: Vec<(String, DataFrame)>,
    pub notes: Vec<String>,
    pub manifest: Manifest,
}

/// `(input, output)` rows.
type Pairs = Vec<(String, String)>;

fn slug(arm: &str) -> String {
    arm.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// `(input, output)` rows of a recorded `save_to_disk` folder (columns `input_col`, `output_col`).
fn recorded_pairs(registry: &Registry, folder: &str) -> Result<(Pairs, Vec<ResolvedFile>)> {
    let (disk, local, files) = loaders::load_registered_hf_disk(registry, folder)?;
    let frame = match disk {
        HfDisk::Dataset(df) => df,
        HfDisk::Dict(mut d) => d
            .remove("train")
            .with_context(|| format!("{}: a DatasetDict without a train split", local.display()))?,
    };
    let inputs = loaders::string_column(&frame, "input_col")
        .with_context(|| format!("{}: no `input_col` column", local.display()))?;
    let outputs = loaders::string_column(&frame, "output_col")
        .with_context(|| format!("{}: no `output_col` column", local.display()))?;
    Ok((inputs.into_iter().zip(outputs).collect(), files))
}

/// SQuAD split by article: `(pool, test)` row indices.
fn split_by_article(titles: &[String], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut articles: Vec<&String> = titles.iter().collect::<BTreeSet<_>>().into_iter().collect();
    SplitMix64::new(seed ^ 0x5155_4144).shuffle(&mut articles);
    let pool_articles: BTreeSet<&String> = articles[..articles.len() / 2].iter().copied().collect();
    (0..titles.len()).partition(|&i| pool_articles.contains(&titles[i]))
}

/// Everything the arms share, and the arms themselves: data drawn, nothing trained. Cheap and
/// deterministic, so every cell process plans the same arms.
pub struct Prepared {
    pub scale_name: String,
    pub scale: Scale,
    pub instruction: String,
    test_frame: DataFrame,
    pub arms: Vec<ArmPlan>,
    paper: crate::data::paper::Table2,
    notes: Vec<String>,
    manifest: Manifest,
    pub runs_dir: PathBuf,
}

/// One arm: its data, its cost, and the key that says whether a finished arm folder is its own.
pub struct ArmPlan {
    pub name: &'static str,
    /// The cell id (and folder name): the arm's name as a slug.
    pub id: String,
    data: String,
    train: Vec<TextPair>,
    validation: Vec<TextPair>,
    cost: (Option<f64>, String),
    /// sha256 of everything that decides the arm's result (scale, seed, data, test questions).
    key: String,
}

/// A finished arm, as its cell leaves it in `<runs dir>/<arm>/arm.json` beside
/// `predictions.parquet`; the table is assembled from these.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmRecord {
    pub key: String,
    pub arm: String,
    pub data: String,
    pub train_examples: usize,
    pub cost_usd: Option<f64>,
    pub cost_basis: String,
    pub summary: crate::trainer::TrainSummary,
    /// Prediction's wall time, and the process's peak resident memory while training and while
    /// predicting ([`crate::util::mem`]); absent in records written before they were measured.
    #[serde(default)]
    pub predict_seconds: Option<f64>,
    #[serde(default)]
    pub train_peak_rss_mb: Option<f64>,
    #[serde(default)]
    pub predict_peak_rss_mb: Option<f64>,
}

const ARM_RECORD: &str = "arm.json";
const ARM_PREDICTIONS: &str = "predictions.parquet";

/// Draws every arm's data (nothing is trained).
pub fn prepare(registry: &Registry, opts: &Options) -> Result<Prepared> {
    let data_dir = &registry.paths.data;
    let (scales, cost_model) = load_scales(data_dir)?;
    let scale = scales
        .get(&opts.scale)
        .with_context(|| {
            format!(
                "no scale `{}` in {} (have: {})",
                opts.scale,
                data_dir.join("table2_scales.toml").display(),
                scales.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?
        .clone();
    let tasks = crate::data::tasks::load_tasks(data_dir)?;
    let squad_task =
        crate::data::tasks::find(&tasks, "squad").context("data/tasks.toml has no `squad` task")?;
    let instruction = squad_task.instruction.clone();
    let paper = crate::data::paper::load_paper_results(data_dir)?.table2;
    let runs_dir = opts
        .runs_dir
        .clone()
        .unwrap_or_else(|| registry.paths.cache.join("runs/table2").join(&opts.scale));
    let mut manifest = Manifest::new(
        "table2",
        &registry.paths.root,
        serde_json::json!({ "scale": opts.scale, "scale_settings": scale, "cost_model": cost_model, "generated": opts.generated, "seed": opts.seed, "retrieval_dataset_setting": scale.retrieval_dataset, "device": format!("{:?}", opts.device), "runs_dir": runs_dir }),
    );
    let mut notes = vec![format!("Scale `{}`: {}.", opts.scale, scale.description)];

    // --- SQuAD: annotation pool and held-out test set, split by article ---------------------------
    let squad = loaders::load_dataset(registry, SQUAD_DATASET)?;
    manifest.add_inputs(squad.files.clone());
    let frame = &squad.frame;
    let titles = loaders::string_column(frame, "title")?;
    let contexts = loaders::string_column(frame, "context")?;
    let inputs = loaders::string_column(frame, loaders::INPUT)?;
    let references = loaders::string_list_column(frame, loaders::REFERENCES)?;
    let (pool_idx, mut test_idx) = split_by_article(&titles, opts.seed);
    let test_articles: BTreeSet<&String> = test_idx.iter().map(|&i| &titles[i]).collect();
    let all_test = test_idx.len();
    if scale.test_examples > 0 && scale.test_examples < test_idx.len() {
        SplitMix64::new(opts.seed ^ 0x7E57).shuffle(&mut test_idx);
        test_idx.truncate(scale.test_examples);
        test_idx.sort();
    }
    let test_frame = frame
        .take(&IdxCa::from_vec("idx".into(), test_idx.iter().map(|&i| i as IdxSize).collect()))?
        .select([loaders::ID, loaders::INPUT, loaders::REFERENCES])?;
    notes.push(format!(
        "Only the SQuAD v1.1 dev set is available here. Its {} articles are split in two (seed {}): {} questions of {} articles form the annotation pool, {} questions of {} articles the held-out test set; {} of these are evaluated. No arm trains on a held-out article.",
        titles.iter().collect::<BTreeSet<_>>().len(),
        opts.seed,
        pool_idx.len(),
        pool_idx.iter().map(|&i| &titles[i]).collect::<BTreeSet<_>>().len(),
        all_test,
        test_articles.len(),
        test_idx.len()
    ));

    let annotated_rows: Vec<(String, String)> = pool_idx
        .iter()
        .map(|&i| (inputs[i].clone(), references[i].first().cloned().unwrap_or_default()))
        .collect();
    let annotated_context: Vec<&String> = pool_idx.iter().map(|&i| &contexts[i]).collect();

    // --- generated and retrieved data -------------------------------------------------------------
    let (generated_rows, generated_cost, generated_basis) = match &opts.generated {
        GeneratedSource::Recorded => {
            let (rows, files) = recorded_pairs(registry, RECORDED_GENERATED)?;
            manifest.add_inputs(files);
            (rows, None, format!("recorded gpt-3.5-turbo data ({RECORDED_GENERATED})"))
        }
        GeneratedSource::Dir(dir) => {
            let path = dir.join(crate::dataset_generator::EXAMPLES_FILE);
            let examples = crate::data::examples::read_examples_jsonl(&path)
                .with_context(|| format!("reading generated examples {}", path.display()))?;
            let log_path = dir.join(crate::dataset_generator::LOG_FILE);
            let log: Option<crate::dataset_generator::GenerationLog> =
                std::fs::read_to_string(&log_path).ok().and_then(|t| serde_json::from_str(&t).ok());
            let cost = log.as_ref().map(|l| l.cost_usd);
            let basis = match &log {
                Some(l) => format!(
                    "generated by the project's generator ({} / {}), {}",
                    l.backend,
                    l.model,
                    dir.display()
                ),
                None => format!(
                    "generated data in {} (no generation_log.json: cost unknown)",
                    dir.display()
                ),
            };
            (examples.into_iter().map(|e| (e.input, e.output)).collect(), cost, basis)
        }
    };
    let retrieved =
        choose_retrieved(registry, &scale.retrieval_dataset, &instruction, opts.progress)?;
    manifest.add_inputs(retrieved.files.clone());
    notes.push(retrieved.note.clone());
    let retrieved_rows = retrieved.rows;
    let retrieved_id = retrieved.registry_id;
    let generated_id = match &opts.generated {
        GeneratedSource::Recorded => RECORDED_GENERATED.to_string(),
        GeneratedSource::Dir(d) => d.display().to_string(),
    };
    notes.push(format!("Generation arm: {generated_basis}, {} rows.", generated_rows.len()));

    let n = scale.examples_per_source;
    let v = scale.validation_examples;
    // Every arm's data is assembled as `p2m run` assembles it (pipeline::assemble): each source
    // split and capped on its own, here at `n` training and `v` validation rows, no test split
    // carved (every arm is tested on the held-out SQuAD articles), and no cut over the sources
    // together: "retrieval + generation" trains on exactly the rows of the two single-source arms,
    // n + n, as the paper's 3,000 + 3,000. Generated data is task 0, retrieved data task 1, as the
    // reference; annotated SQuAD stands in for a user's own data: task 0, the task the student is
    // asked to do at test time.
    let split =
        SplitConfig { max_train: n, max_validation: v, seed: opts.seed, ..SplitConfig::default() };
    let no_cut = Cut { max_train: 0, max_validation: 0, retrieved_share: None };
    let source = |rows: &[(String, String)]| {
        SourceRows::tested_elsewhere(
            rows.iter().map(|(i, o)| Example::new(i.clone(), o.clone())).collect(),
        )
    };
    let (gen_source, ret_source, ann_source) =
        (source(&generated_rows), source(&retrieved_rows), source(&annotated_rows));
    let nothing = SourceRows::default();
    let generation_only =
        assemble_sources(&gen_source, &generated_id, &nothing, "", &split, &no_cut);
    let retrieval_only =
        assemble_sources(&nothing, "", &ret_source, &retrieved_id, &split, &no_cut);
    let both =
        assemble_sources(&gen_source, &generated_id, &ret_source, &retrieved_id, &split, &no_cut);
    let annotation = assemble_sources(&ann_source, SQUAD_DATASET, &nothing, "", &split, &no_cut);
    let (gen_train, ret_train) = (generation_only.train.len(), retrieval_only.train.len());
    if gen_train < n || ret_train < n {
        notes.push(format!(
            "Fewer rows than the scale asks for: generated {gen_train} / retrieved {ret_train} of {n}."
        ));
    }
    notes.push(format!(
        "Each arm's data is split as `p2m run` splits it (src/pipeline/assemble.rs): every source on its own, a seeded 0.7 : 0.1 share of its rows for training and validation, capped at {n} and {v}; \"retrieval + generation\" is the union of the two single-source arms' rows ({}).",
        both.mix.describe()
    ));
    // The annotation arm's cost counts the distinct paragraphs its training questions come from.
    let context_of: std::collections::HashMap<&str, &str> = pool_idx
        .iter()
        .zip(&annotated_context)
        .map(|(&i, c)| (inputs[i].as_str(), c.as_str()))
        .collect();
    let ann_paragraphs = annotation
        .train
        .iter()
        .filter_map(|r| context_of.get(r.input.as_str()))
        .collect::<BTreeSet<_>>()
        .len();
    let pairs = |rows: &[Row]| -> Vec<TextPair> {
        rows.iter()
            .map(|r| TextPair {
                source: trainer::model_input(r.task_id, &instruction, &r.input),
                target: r.output.clone(),
            })
            .collect()
    };
    let pricing = Pricing::for_model(&cost_model.recorded_teacher);
    let gen_cost = |rows: &[Row]| -> (Option<f64>, String) {
        match (&opts.generated, generated_cost) {
            (GeneratedSource::Dir(_), Some(total)) => (
                Some(total * rows.len() as f64 / generated_rows.len().max(1) as f64),
                "measured (generation log), prorated to the rows used".into(),
            ),
            (GeneratedSource::Dir(_), None) => (None, "unknown (no generation log)".into()),
            (GeneratedSource::Recorded, _) => {
                let tokens: u64 = rows
                    .iter()
                    .map(|r| estimate_tokens(&r.input) + estimate_tokens(&r.output))
                    .sum();
                (Some(tokens as f64 / 1000.0 * pricing.output_per_1k_usd), format!("lower bound: completion tokens of the rows used (~{tokens}, estimated) at {} output prices; the prompts were not recorded", cost_model.recorded_teacher))
            }
        }
    };
    let annotation_cost = ann_paragraphs as f64 * cost_model.annotation_minutes_per_paragraph
        / 60.0
        * cost_model.annotation_usd_per_hour;

    struct Arm {
        name: &'static str,
        data: String,
        train: Vec<TextPair>,
        validation: Vec<TextPair>,
        cost: (Option<f64>, String),
    }
    let arm_list = vec![
        Arm { name: "retrieval only", data: retrieved_id.clone(), train: pairs(&retrieval_only.train), validation: pairs(&retrieval_only.validation), cost: (Some(0.0), "retrieved data is free".into()) },
        Arm { name: "generation only", data: generated_id.clone(), train: pairs(&generation_only.train), validation: pairs(&generation_only.validation), cost: gen_cost(&generation_only.train) },
        Arm {
            name: "retrieval + generation",
            data: format!("{retrieved_id} + {generated_id}"),
            train: pairs(&both.train),
            validation: pairs(&both.validation),
            cost: gen_cost(&generation_only.train),
        },
        Arm {
            name: "custom annotation",
            data: format!("{SQUAD_DATASET} (annotation-pool articles)"),
            train: pairs(&annotation.train),
            validation: pairs(&annotation.validation),
            cost: (
                Some(annotation_cost),
                format!(
                    "{ann_paragraphs} SQuAD paragraphs × {} min at ${}/h (SQuAD's crowdworker rate and time per paragraph)",
                    cost_model.annotation_minutes_per_paragraph, cost_model.annotation_usd_per_hour
                ),
            ),
        },
    ];

    let test_ids = loaders::string_column(&test_frame, loaders::ID)?;
    let arms = arm_list
        .into_iter()
        .map(|a| {
            let key = crate::util::fs::sha256_hex(
                serde_json::to_string(&serde_json::json!({
                    "scale": scale, "seed": opts.seed, "arm": a.name, "train": a.train,
                    "validation": a.validation, "test": test_ids, "instruction": instruction,
                }))?
                .as_bytes(),
            );
            Ok(ArmPlan {
                name: a.name,
                id: slug(a.name),
                data: a.data,
                train: a.train,
                validation: a.validation,
                cost: a.cost,
                key,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared {
        scale_name: opts.scale.clone(),
        scale,
        instruction,
        test_frame,
        arms,
        paper,
        notes,
        manifest,
        runs_dir,
    })
}

impl ArmPlan {
    /// The arm's training pairs, in training order.
    pub fn train(&self) -> &[TextPair] {
        &self.train
    }
}

impl Prepared {
    pub fn arm(&self, id: &str) -> Result<&ArmPlan> {
        self.arms.iter().find(|a| a.id == id).with_context(|| {
            format!(
                "no arm `{id}` in Table 2 (cells: {})",
                self.arms.iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn arm_dir(&self, arm: &ArmPlan) -> PathBuf {
        self.runs_dir.join(&arm.id)
    }

    /// The arm's finished record, if its folder holds one made with exactly this plan.
    pub fn finished(&self, arm: &ArmPlan) -> Option<ArmRecord> {
        let dir = self.arm_dir(arm);
        let record: ArmRecord =
            serde_json::from_str(&std::fs::read_to_string(dir.join(ARM_RECORD)).ok()?).ok()?;
        (record.key == arm.key && dir.join(ARM_PREDICTIONS).is_file()).then_some(record)
    }

    /// Train and evaluate one arm (a cell): its student resumes from the arm's folder after a
    /// kill; the predictions and then `arm.json` are written atomically, last of all.
    pub fn run_arm(&self, id: &str, models: &ModelRegistry, opts: &Options) -> Result<ArmRecord> {
        let arm = self.arm(id)?;
        if let Some(done) = self.finished(arm) {
            return Ok(done);
        }
        let arm_dir = self.arm_dir(arm);
        let mut student = Student::build(&self.scale.student, models, opts.device, opts.seed)?;
        let mut trainer =
            Trainer::new(self.scale.train.clone(), &mut student, arm_dir.join("student"));
        trainer.progress = opts.progress;
        trainer.label = arm.name.to_string();
        // `student/final/` is all the table uses once the arm is trained.
        trainer.keep_checkpoints = false;
        tracing::info!("table2: training `{}` on {} examples", arm.name, arm.train.len());
        let training = crate::util::mem::Phase::start();
        let summary = trainer
            .train(&arm.train, &arm.validation)
            .with_context(|| format!("training the `{}` arm", arm.name))?;
        let train_peak_rss_mb = training.peak_mb();
        // The optimizer's state, gradients and activations are freed: return them before
        // predicting (see crate::util::mem).
        crate::util::mem::release_free_memory();
        let predicting = crate::util::mem::Phase::start();
        let predict_start = std::time::Instant::now();
        let predicted = executor::predict_frame(
            &student,
            &self.instruction,
            &self.test_frame,
            &self.scale.executor,
        )
        .with_context(|| format!("predicting with the `{}` arm", arm.name))?;
        let predict_seconds = predict_start.elapsed().as_secs_f64();
        let predict_peak_rss_mb = predicting.peak_mb();
        crate::report::write_parquet_atomic(&predicted, &arm_dir.join(ARM_PREDICTIONS))?;
        let record = ArmRecord {
            key: arm.key.clone(),
            arm: arm.name.to_string(),
            data: arm.data.clone(),
            train_examples: arm.train.len(),
            cost_usd: arm.cost.0,
            cost_basis: arm.cost.1.clone(),
            summary,
            predict_seconds: Some(predict_seconds),
            train_peak_rss_mb,
            predict_peak_rss_mb,
        };
        crate::util::fs::write_json(&arm_dir.join(ARM_RECORD), &record)?;
        Ok(record)
    }

    /// Every arm in this process, one after the other (finished arms are loaded, an interrupted
    /// one resumes).
    pub fn run_all(&self, models: &ModelRegistry, opts: &Options) -> Result<()> {
        for arm in &self.arms {
            self.run_arm(&arm.id, models, opts)?;
            // The arm's student is gone: its memory goes back before the next arm trains.
            crate::util::mem::release_free_memory();
        }
        if let Some(mb) = crate::util::mem::run_peak_resident_mb() {
            tracing::info!("table2: peak resident memory of the run {:.0} MB", mb);
        }
        Ok(())
    }

    /// The cells (one per arm) as jobs for the local runner and the Slurm writer.
    pub fn jobs(&self) -> crate::tables::cells::CellJobs {
        crate::tables::cells::CellJobs {
            table: "table2".into(),
            scale: self.scale_name.clone(),
            detail: "one SQuAD student per arm".into(),
            ids: self.arms.iter().map(|a| a.id.clone()).collect(),
            done: self.arms.iter().map(|a| self.finished(a).is_some()).collect(),
            runs_dir: self.runs_dir.clone(),
            slurm: self.scale.slurm.clone(),
        }
    }

    /// Assemble the table from finished arms (unfinished ones are named, with how to make them):
    /// scores with intervals from each arm's predictions, paired tests between arms.
    pub fn collect(self) -> Result<Table2> {
        let records: Vec<Option<ArmRecord>> = self.arms.iter().map(|a| self.finished(a)).collect();
        let missing: Vec<&str> = self
            .arms
            .iter()
            .zip(&records)
            .filter(|(_, r)| r.is_none())
            .map(|(a, _)| a.id.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} of {} Table 2 cells are not done ({}) in {}: run the table without --collect-only, or `--cell ID` for each",
                missing.len(),
                self.arms.len(),
                missing.join(", "),
                self.runs_dir.display()
            );
        }
        let Prepared { scale_name, scale, arms, paper, mut notes, mut manifest, runs_dir, .. } =
            self;
        let mut results = Vec::new();
        let mut curves = Vec::new();
        let mut predictions = Vec::new();
        let mut signatures = BTreeMap::new();
        let bootstrap_cfg = BootstrapConfig::default();
        let mut em_scorers: Vec<(String, CorpusScorer)> = Vec::new();
        for (arm, record) in arms.iter().zip(records) {
            let record = record.expect("checked above");
            let path = runs_dir.join(&arm.id).join(ARM_PREDICTIONS);
            let predicted = crate::report::read_parquet(&path)
                .with_context(|| format!("reading the `{}` arm's predictions", arm.name))?;
            let preds = loaders::string_column(&predicted, loaders::PREDICTION)?;
            let refs = loaders::string_list_column(&predicted, loaders::REFERENCES)?;
            let mut scored = BTreeMap::new();
            for metric in [Metric::ExactMatchSquad, Metric::ExactMatch, Metric::ChrfPlusPlus] {
                let s = score_with_interval(metric, &preds, &refs, &bootstrap_cfg)?;
                signatures.insert(
                    metric.name().to_string(),
                    format!("{}|{}", s.score.signature, bootstrap_cfg.signature()),
                );
                scored.insert(metric.name(), s.interval);
                if metric == Metric::ExactMatchSquad {
                    em_scorers.push((arm.name.to_string(), s.scorer));
                }
            }
            let take = |m: Metric| scored[m.name()].clone();
            let paper_row = paper.row.iter().find(|r| r.arm == arm.name);
            let summary = &record.summary;
            let last_epoch = summary.epochs.last();
            results.push(ArmResult {
                arm: record.arm.clone(),
                data: record.data.clone(),
                train_examples: record.train_examples,
                em_squad: take(Metric::ExactMatchSquad),
                em_raw: take(Metric::ExactMatch),
                chrf: take(Metric::ChrfPlusPlus),
                test_examples: preds.len(),
                cost_usd: record.cost_usd,
                cost_basis: record.cost_basis.clone(),
                paper_examples: paper_row.map(|r| r.examples),
                paper_em: paper_row.map(|r| r.squad),
                paper_cost_usd: paper_row.and_then(|r| r.cost_usd),
                final_train_loss: last_epoch.map(|e| e.train_loss),
                final_validation_loss: last_epoch.and_then(|e| e.validation_loss),
                optimizer_steps: summary.optimizer_steps,
                train_seconds: summary.seconds,
                examples_per_second: summary.examples_per_second,
                predict_seconds: record.predict_seconds,
                train_peak_rss_mb: record.train_peak_rss_mb,
                predict_peak_rss_mb: record.predict_peak_rss_mb,
            });
            curves.push((arm.name.to_string(), summary.steps.clone()));
            predictions.push((arm.name.to_string(), predicted));
        }
        manifest.metric_signatures = signatures;
        let scorer_of = |name: &str| em_scorers.iter().find(|(a, _)| a == name).map(|(_, s)| s);
        let mut paired = Vec::new();
        for (arm, against) in PAIRED_TESTS {
            let (Some(a), Some(b)) = (scorer_of(arm), scorer_of(against)) else { continue };
            let (delta, p_value) = paired_bootstrap(a, b, &bootstrap_cfg)?;
            paired.push(PairedTest { arm: arm.into(), against: against.into(), delta, p_value });
        }
        notes.push(format!("Intervals: 95 % percentile bootstrap over the {} test questions ({}). Paired tests (Koehn 2004): the same resamples score both arms; p is the share of resamples in which the first arm does not beat the second (one-sided), so a small p supports \"first > second\" and a p near 1 the reverse.", results.first().map(|r: &ArmResult| r.test_examples).unwrap_or(0), bootstrap_cfg.signature()));
        notes.push("EM is reported with the official SQuAD answer normalisation (primary, as the paper's SQuAD numbers) and as raw string equality (the Prompt2Model reference evaluator). chrF++ (sacrebleu's defaults) is added because it gives partial credit: at small scales, where EM is often zero for every arm, it still shows which arm's answers come closer.".into());
        notes.push("Cost: the paper's column counts the teacher's API bill (generation) and crowdworker pay (annotation); ours is computed as the `cost basis` column says.".into());
        notes.push(format!("Each arm is a cell (`table2 --cell ID`, one process; `--list-cells`, `--emit-slurm DIR`): its student, predictions and `arm.json` are in {}/<arm>/.", runs_dir.display()));
        Ok(Table2 {
            scale_name,
            scale,
            arms: results,
            paired,
            curves,
            predictions,
            notes,
            manifest,
        })
    }
}

/// Runs the four arms in this process, one after the other (finished arms are loaded, an
/// interrupted one resumes), then assembles the table.
pub fn compute(registry: &Registry, models: &ModelRegistry, opts: &Options) -> Result<Table2> {
    let prepared = prepare(registry, opts)?;
    prepared.run_all(models, opts)?;
    prepared.collect()
}

impl Table2 {
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let a = &self.arms;
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), a.iter().map(|r| r.arm.clone()).collect::<Vec<_>>()),
            Column::new(
                "train examples".into(),
                a.iter().map(|r| r.train_examples as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "EM (SQuAD norm.) [95 % CI]".into(),
                a.iter().map(|r| r.em_squad.to_string()).collect::<Vec<_>>(),
            ),
            Column::new(
                "EM (raw) [95 % CI]".into(),
                a.iter().map(|r| r.em_raw.to_string()).collect::<Vec<_>>(),
            ),
            Column::new("paper EM".into(), a.iter().map(|r| r.paper_em).collect::<Vec<_>>()),
            Column::new(
                "chrF++ [95 % CI]".into(),
                a.iter().map(|r| r.chrf.to_string()).collect::<Vec<_>>(),
            ),
            Column::new(
                "paper examples".into(),
                a.iter().map(|r| r.paper_examples.map(|x| x as u64)).collect::<Vec<_>>(),
            ),
            Column::new("cost ($)".into(), a.iter().map(|r| r.cost_usd).collect::<Vec<_>>()),
            Column::new(
                "paper cost ($)".into(),
                a.iter().map(|r| r.paper_cost_usd).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn paired_frame(&self) -> PolarsResult<DataFrame> {
        let p = &self.paired;
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), p.iter().map(|t| t.arm.clone()).collect::<Vec<_>>()),
            Column::new("against".into(), p.iter().map(|t| t.against.clone()).collect::<Vec<_>>()),
            Column::new("Δ EM (points)".into(), p.iter().map(|t| t.delta).collect::<Vec<_>>()),
            Column::new(
                "p (arm not better)".into(),
                p.iter().map(|t| t.p_value).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn details_frame(&self) -> PolarsResult<DataFrame> {
        let a = &self.arms;
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), a.iter().map(|r| r.arm.clone()).collect::<Vec<_>>()),
            Column::new(
                "training data".into(),
                a.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "test examples".into(),
                a.iter().map(|r| r.test_examples as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "optimizer steps".into(),
                a.iter().map(|r| r.optimizer_steps).collect::<Vec<_>>(),
            ),
            Column::new(
                "final train loss".into(),
                a.iter().map(|r| r.final_train_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "final validation loss".into(),
                a.iter().map(|r| r.final_validation_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "train seconds".into(),
                a.iter().map(|r| r.train_seconds).collect::<Vec<_>>(),
            ),
            Column::new(
                "train examples/s".into(),
                a.iter().map(|r| r.examples_per_second).collect::<Vec<_>>(),
            ),
            Column::new(
                "predict seconds".into(),
                a.iter().map(|r| r.predict_seconds).collect::<Vec<_>>(),
            ),
            Column::new(
                "train peak RSS (MB)".into(),
                a.iter().map(|r| r.train_peak_rss_mb).collect::<Vec<_>>(),
            ),
            Column::new(
                "predict peak RSS (MB)".into(),
                a.iter().map(|r| r.predict_peak_rss_mb).collect::<Vec<_>>(),
            ),
            Column::new(
                "cost basis".into(),
                a.iter().map(|r| r.cost_basis.clone()).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn curves_frame(&self) -> PolarsResult<DataFrame> {
        let rows: Vec<(&String, &StepLog)> = self
            .curves
            .iter()
            .flat_map(|(arm, steps)| steps.iter().map(move |s| (arm, s)))
            .collect();
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), rows.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>()),
            Column::new("step".into(), rows.iter().map(|(_, s)| s.step).collect::<Vec<_>>()),
            Column::new(
                "epoch".into(),
                rows.iter().map(|(_, s)| s.epoch as u64).collect::<Vec<_>>(),
            ),
            Column::new("loss".into(), rows.iter().map(|(_, s)| s.loss).collect::<Vec<_>>()),
            // Learning rates are ~1e-5: as text in scientific notation, not rounded to 0.0000.
            Column::new(
                "lr".into(),
                rows.iter().map(|(_, s)| format!("{:.3e}", s.lr)).collect::<Vec<_>>(),
            ),
            Column::new(
                "grad norm".into(),
                rows.iter().map(|(_, s)| s.grad_norm).collect::<Vec<_>>(),
            ),
        ])
    }

    /// Rounded rows for snapshot tests: (arm, train examples, EM squad, EM raw, chrF++, cost, final
    /// train loss, final validation loss).
    #[allow(clippy::type_complexity)]
    pub fn snapshot_rows(
        &self,
    ) -> Vec<(String, usize, f64, f64, f64, Option<f64>, Option<f64>, Option<f64>)> {
        self.arms
            .iter()
            .map(|r| {
                (
                    r.arm.clone(),
                    r.train_examples,
                    super::round2(r.em_squad.value),
                    super::round2(r.em_raw.value),
                    super::round2(r.chrf.value),
                    r.cost_usd.map(super::round2),
                    r.final_train_loss.map(super::round2),
                    r.final_validation_loss.map(super::round2),
                )
            })
            .collect()
    }

    pub fn report(&self) -> Result<Report> {
        let mut curves = ReportTable::new(
            "table2_learning_curves",
            "Training loss per optimizer step",
            self.curves_frame()?,
        );
        curves.decimals = 4;
        Ok(Report {
            name: "table2".into(),
            title: format!(
                "Table 2 — SQuAD students by training data (scale `{}`)",
                self.scale_name
            ),
            tables: vec![
                ReportTable::new(
                    "table2",
                    "Table 2: exact match on held-out SQuAD questions, paper beside",
                    self.frame()?,
                ),
                ReportTable::new(
                    "table2_paired",
                    "Paired bootstrap tests between arms (SQuAD-normalised EM, same test questions)",
                    self.paired_frame()?,
                ),
                ReportTable::new(
                    "table2_details",
                    "Training details per arm",
                    self.details_frame()?,
                ),
                curves,
            ],
            notes: self.notes.clone(),
            manifest: self.manifest.clone(),
        })
    }

    /// Writes the figures (bars with the paper's values, learning curves) and the predictions.
    fn write_extras(&self, dir: &Path) -> Result<Vec<String>> {
        let mut files = figures::paired_bars(
            dir,
            "table2",
            &format!("Table 2: SQuAD EM by training data (scale {})", self.scale_name),
            &[BarPanel {
                title: "SQuAD exact match".into(),
                axis: "EM (%)".into(),
                groups: self
                    .arms
                    .iter()
                    .map(|a| BarGroup {
                        label: a.arm.clone(),
                        paper: a.paper_em,
                        reproduced: Some(a.em_squad.value),
                        reproduced_interval: Some((a.em_squad.low, a.em_squad.high)),
                    })
                    .collect(),
            }],
        )?;
        let series: Vec<figures::Curve> = self
            .curves
            .iter()
            .map(|(arm, steps)| figures::Curve {
                label: arm.clone(),
                points: steps.iter().map(|s| (s.step as f64, s.loss)).collect(),
            })
            .collect();
        files.extend(figures::line_chart(
            dir,
            "table2_learning_curves",
            "Training loss by arm",
            "optimizer step",
            "loss",
            &series,
        )?);
        for (arm, frame) in &self.predictions {
            let name = format!("predictions_{}.parquet", slug(arm));
            crate::report::write_parquet_atomic(frame, &dir.join(&name))?;
            files.push(name);
        }
        Ok(files)
    }
}

/// Writes `reports/table2/` for a computed table; returns the folder.
pub fn write_report(registry: &Registry, table: &Table2) -> Result<PathBuf> {
    let report = table.report()?;
    report
        .write(&registry.paths.reports, |dir| table.write_extras(dir))
        .context("writing the Table 2 report")
}

/// Runs Table 2 at a scale and writes `reports/table2/`; returns the table and the folder.
pub fn run(
    registry: &Registry,
    models: &ModelRegistry,
    opts: &Options,
) -> Result<(Table2, PathBuf)> {
    let table = compute(registry, models, opts)?;
    let dir = write_report(registry, &table)?;
    Ok((table, dir))
}

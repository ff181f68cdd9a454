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

mod prepare;
mod report;
mod train;
mod transformed;

pub use prepare::prepare;
pub use report::{run, write_report};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame, IdxCa, IdxSize, PolarsResult};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::examples::Example;
use crate::data::loaders::{self, HfDisk};
use crate::data::registry::{Registry, ResolvedFile};
use crate::evaluator::baselines::{
    baselines, compare_to_baselines, distinct_baselines, versus_frame, BaselineComparison,
    BaselineKind, BaselineTest, TableBaseline, VersusBaseline,
};
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
    /// A live teacher for the "retrieval (transformed) + generation" arm; `None` (the recorded
    /// teacher) skips that arm, and the report says why.
    pub teacher: Option<crate::teacher::TeacherSettings>,
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
            teacher: None,
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
    /// The arm against the best of its baselines (its own training data's most frequent answer,
    /// the copied question) on SQuAD-normalised EM; `None` without a baseline.
    pub versus_baseline: Option<BaselineTest>,
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
/// The transformed arm, when it runs, against the untransformed combination and generation alone.
const PAIRED_TESTS: [(&str, &str); 6] = [
    ("retrieval + generation", "retrieval only"),
    ("retrieval + generation", "generation only"),
    ("retrieval + generation", "custom annotation"),
    ("generation only", "custom annotation"),
    ("retrieval (transformed) + generation", "retrieval + generation"),
    ("retrieval (transformed) + generation", "generation only"),
];

pub struct Table2 {
    pub scale_name: String,
    pub scale: Scale,
    pub arms: Vec<ArmResult>,
    /// What trivial answers score on the same test questions: each distinct baseline of the
    /// arms' training data, per metric.
    pub baselines: Vec<TableBaseline>,
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

/// Runs the four arms in this process, one after the other (finished arms are loaded, an
/// interrupted one resumes), then assembles the table.
pub fn compute(registry: &Registry, models: &ModelRegistry, opts: &Options) -> Result<Table2> {
    let prepared = prepare(registry, opts)?;
    prepared.run_all(models, opts)?;
    prepared.collect()
}

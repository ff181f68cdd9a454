//! A run's settings as data: the scale's (`data/run_scales.toml`), then a `--config` TOML file,
//! then the command line, each overriding the one before. Everything a run does is decided here,
//! recorded in `run.json`, and fingerprinted stage by stage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::evaluator::bootstrap::BootstrapConfig;
use crate::executor::ExecutorConfig;
use crate::teacher::TeacherSettings;
use crate::trainer::TrainConfig;

/// Which teacher writes the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherSource {
    /// The offline SmolLM2-135M-Instruct, in process.
    Local,
    /// An OpenAI-compatible server.
    Openai,
    /// The paper authors' recorded gpt-3.5-turbo generations (`data/recorded_teachers.toml`).
    Recorded,
}

impl TeacherSource {
    /// The teacher's one display name (`local`, `openai`, `recorded`): run and cell folder names,
    /// reports, the command line.
    pub fn name(self) -> &'static str {
        match self {
            TeacherSource::Local => "local",
            TeacherSource::Openai => "openai",
            TeacherSource::Recorded => "recorded",
        }
    }

    /// The live backend it is built as; None for the recorded teacher, which answers nothing.
    pub fn kind(self) -> Option<crate::teacher::TeacherKind> {
        match self {
            TeacherSource::Local => Some(crate::teacher::TeacherKind::Local),
            TeacherSource::Openai => Some(crate::teacher::TeacherKind::Openai),
            TeacherSource::Recorded => None,
        }
    }
}

/// How generated examples are split (the reference's `DatasetSplitter`: 0.7/0.1/0.2 with caps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    pub train: f64,
    pub validation: f64,
    pub test: f64,
    pub max_train: usize,
    pub max_validation: usize,
    pub max_test: usize,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            train: 0.7,
            validation: 0.1,
            test: 0.2,
            max_train: 3500,
            max_validation: 500,
            max_test: 1000,
            seed: 42,
        }
    }
}

/// One `[<scale>]` of `data/run_scales.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunScale {
    pub description: String,
    pub num_examples: usize,
    pub max_train_examples: usize,
    /// Validation rows kept (the per-epoch validation loss), at most.
    pub max_validation_examples: usize,
    pub max_test_examples: usize,
    pub student: String,
    pub bertscore: bool,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
}

pub const SCALES_FILE: &str = "run_scales.toml";

pub fn load_scales(data_dir: &Path) -> Result<BTreeMap<String, RunScale>> {
    let path = data_dir.join(SCALES_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!("{}: not a table of scales (see the comment at its top)", path.display())
    })
}

/// Everything a run is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run folder's name (`runs/<name>/`).
    pub name: String,
    /// A paper task of `data/tasks.toml` (its prompt, real test set and metric).
    pub task: Option<String>,
    /// The prompt text (instruction + demonstrations); for a paper task, its prompt.
    pub prompt: Option<String>,
    /// Where the prompt came from (a file or a task), for reports.
    pub prompt_source: String,
    pub scale: String,
    pub teacher: TeacherSource,
    /// The teacher's server settings (`openai`; `local` uses only `max_api_calls`).
    pub teacher_settings: TeacherSettings,
    /// Stop before the first paid call unless the estimated cost fits (USD).
    pub budget_usd: Option<f64>,
    pub dataset_retrieval: bool,
    pub model_retrieval: bool,
    pub generation: bool,
    /// Reuse a generation (`examples.jsonl` of `p2m generate` or of another run).
    pub generated_dir: Option<PathBuf>,
    /// Reuse a retrieved dataset (`p2m retrieve-dataset --out DIR`).
    pub retrieved_dir: Option<PathBuf>,
    /// Rewrite the retrieved rows into the task's format with the teacher before training on
    /// them ([`crate::dataset_transformer`]; `--transform-retrieved`). Left out of `run.json`
    /// when off, so earlier runs' files stay as they were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transform_retrieved: bool,
    /// Rows transformed at most (`--transform-rows`; default
    /// [`crate::dataset_transformer::DEFAULT_TRANSFORM_ROWS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform_rows: Option<usize>,
    /// The student when model retrieval is off or cannot be followed here (default: the scale's).
    pub student: Option<String>,
    /// The real test set: a registry id of data/datasets.toml or a JSONL file of {input, output}
    /// (default: the task's).
    pub test_dataset: Option<String>,
    pub num_examples: Option<usize>,
    pub max_train_examples: Option<usize>,
    pub max_test_examples: Option<usize>,
    pub bertscore: Option<bool>,
    /// Metric the run is judged by (default: the task's, else chrF++).
    pub metric: Option<String>,
    pub split: SplitConfig,
    /// The retrieved rows' share (0–1) of the training and validation cuts when both generated
    /// and retrieved rows exist (`assemble::Cut`); default: equal numbers, as the paper's Table 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieved_share: Option<f64>,
    pub bootstrap: BootstrapConfig,
    /// Trainer settings over the scale's (only the fields given).
    pub train: Option<toml::Table>,
    pub executor: Option<toml::Table>,
    pub generator: Option<toml::Table>,
    /// Translate a non-English instruction to English through the teacher for the retrievers.
    pub translate_instruction: bool,
    /// Train the best K candidate students for `selection_steps` optimizer steps each, keep the one
    /// with the best score on the generated validation split, then train it fully (1 = off).
    pub select_student: usize,
    /// The short budget of each candidate (optimizer steps).
    pub selection_steps: u64,
    /// The candidates of `select_student`, instead of the retrieved and local students.
    pub select_candidates: Vec<String>,
    /// Keep the trainer's resume checkpoints after training finished. They exist to resume a
    /// killed training; once `training/final/` is written they are dead weight (model plus AdamW
    /// state, about 1.6 GB each for the default student), so they are removed by default.
    pub keep_checkpoints: bool,
    /// Also ask the teacher (local or openai) to answer the real test set from the same prompt,
    /// scored like the student (`real-teacher` in metrics.json): the paper's teacher row.
    pub teacher_answers_real: bool,
    /// Train although the data gate refused the data (`--accept-data`); the card says so.
    pub accept_data: bool,
    /// When the data is degenerate enough to stop before training (`[data_gate]`).
    pub data_gate: crate::data::gate::DataGate,
    pub seed: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: String::new(),
            task: None,
            prompt: None,
            prompt_source: String::new(),
            scale: "laptop".into(),
            teacher: TeacherSource::Local,
            teacher_settings: TeacherSettings::default(),
            budget_usd: None,
            dataset_retrieval: true,
            model_retrieval: true,
            generation: true,
            generated_dir: None,
            retrieved_dir: None,
            transform_retrieved: false,
            transform_rows: None,
            student: None,
            test_dataset: None,
            num_examples: None,
            max_train_examples: None,
            max_test_examples: None,
            bertscore: None,
            metric: None,
            split: SplitConfig::default(),
            retrieved_share: None,
            bootstrap: BootstrapConfig::default(),
            train: None,
            executor: None,
            generator: None,
            translate_instruction: false,
            select_student: 1,
            selection_steps: 24,
            select_candidates: Vec::new(),
            keep_checkpoints: false,
            teacher_answers_real: false,
            accept_data: false,
            data_gate: crate::data::gate::DataGate::default(),
            seed: 42,
        }
    }
}

impl RunConfig {
    /// Read a `--config` file (every field optional; unknown fields are refused by name).
    pub fn read(path: &Path) -> Result<RunConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a run configuration (fields: see `p2m run --help` and src/pipeline/config.rs)", path.display()))
    }
}

/// A table of overrides applied onto a serialisable settings struct, field by field.
pub fn with_overrides<T: Serialize + for<'de> Deserialize<'de>>(
    base: &T,
    overrides: Option<&toml::Table>,
    what: &str,
) -> Result<T> {
    let Some(over) = overrides else { return Ok(toml::from_str(&toml::to_string(base)?)?) };
    let mut table: toml::Table = toml::from_str(&toml::to_string(base)?)?;
    for (k, v) in over {
        if !table.contains_key(k)
            // Fields left out of the serialised base at their default value.
            && !matches!(
                k.as_str(),
                "max_steps"
                    | "max_grad_norm"
                    | "early_stopping_patience"
                    | "precision"
                    | "prefix_cache"
                    | "engine"
                    | "lora"
            )
        {
            bail!(
                "[{what}] has no field `{k}` (fields: {})",
                table.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        table.insert(k.clone(), v.clone());
    }
    toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("[{what}]: a value has the wrong type"))
}

/// The settings a run resolves to (scale + config + command line), as the stages use them.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub num_examples: usize,
    pub max_validation_examples: usize,
    pub max_train_examples: usize,
    pub max_test_examples: usize,
    pub student: String,
    pub bertscore: bool,
    /// Checked to lie in 0–1; `None`: equal numbers of generated and retrieved rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieved_share: Option<f64>,
    pub train: TrainConfig,
    pub executor: ExecutorConfig,
    pub generator: crate::dataset_generator::GeneratorConfig,
    /// The transform of retrieved rows, when it is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<crate::dataset_transformer::TransformConfig>,
}

impl RunConfig {
    pub fn resolve(&self, data_dir: &Path) -> Result<Resolved> {
        let scales = load_scales(data_dir)?;
        let Some(scale) = scales.get(&self.scale) else {
            bail!(
                "unknown scale `{}`; {} has: {}",
                self.scale,
                data_dir.join(SCALES_FILE).display(),
                scales.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        if let Some(share) = self.retrieved_share {
            anyhow::ensure!(
                (0.0..=1.0).contains(&share),
                "retrieved_share = {share}: the retrieved rows' share of the training cut must lie between 0 and 1 (0.5 = equal numbers; leave it out for the default)"
            );
        }
        anyhow::ensure!(
            self.transform_rows != Some(0),
            "transform_rows = 0: the transform needs at least one row (leave --transform-rows out for the default {}, or drop --transform-retrieved)",
            crate::dataset_transformer::DEFAULT_TRANSFORM_ROWS
        );
        let num_examples = self.num_examples.unwrap_or(scale.num_examples);
        let mut train = with_overrides(&scale.train, self.train.as_ref(), "train")?;
        train.seed = self.seed;
        let generator_base = crate::dataset_generator::GeneratorConfig {
            num_examples,
            seed: self.seed,
            ..Default::default()
        };
        let mut generator = with_overrides(&generator_base, self.generator.as_ref(), "generator")?;
        generator.num_examples = num_examples;
        let transform =
            self.transform_retrieved.then(|| crate::dataset_transformer::TransformConfig {
                max_rows: self
                    .transform_rows
                    .unwrap_or(crate::dataset_transformer::DEFAULT_TRANSFORM_ROWS),
                seed: self.seed,
                ..Default::default()
            });
        Ok(Resolved {
            num_examples,
            max_validation_examples: scale.max_validation_examples,
            max_train_examples: self.max_train_examples.unwrap_or(scale.max_train_examples),
            max_test_examples: self.max_test_examples.unwrap_or(scale.max_test_examples),
            student: self.student.clone().unwrap_or_else(|| scale.student.clone()),
            bertscore: self.bertscore.unwrap_or(scale.bertscore),
            retrieved_share: self.retrieved_share,
            train,
            executor: with_overrides(&scale.executor, self.executor.as_ref(), "executor")?,
            generator,
            transform,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
    }

    #[test]
    fn retrieved_share_is_checked_and_absent_from_the_json_unless_given() {
        let default = serde_json::to_value(RunConfig::default()).unwrap();
        assert!(default.get("retrieved_share").is_none(), "run.json of earlier runs unchanged");
        let resolved = RunConfig::default().resolve(&data_dir()).unwrap();
        assert_eq!(resolved.retrieved_share, None);
        let given = RunConfig { retrieved_share: Some(0.25), ..Default::default() };
        assert_eq!(given.resolve(&data_dir()).unwrap().retrieved_share, Some(0.25));
        let bad = RunConfig { retrieved_share: Some(1.5), ..Default::default() };
        let err = bad.resolve(&data_dir()).unwrap_err().to_string();
        assert!(err.contains("retrieved_share = 1.5") && err.contains("between 0 and 1"), "{err}");
        let parsed: RunConfig = toml::from_str("retrieved_share = 0.5").unwrap();
        assert_eq!(parsed.retrieved_share, Some(0.5));
    }

    /// LoRA is off by default and absent from run.json then (fingerprints of earlier runs
    /// unchanged); `[train.lora]` switches it on with the reference's defaults for what it leaves
    /// out, and the training settings (so the training stage's fingerprint) carry it.
    #[test]
    fn lora_is_off_by_default_and_a_train_lora_table_switches_it_on() {
        let resolved = RunConfig::default().resolve(&data_dir()).unwrap();
        assert_eq!(resolved.train.lora, None);
        assert!(serde_json::to_value(&resolved).unwrap()["train"].get("lora").is_none());
        let parsed: RunConfig = toml::from_str(
            "[train.lora]
rank = 16
targets = [\"q_proj\", \"v_proj\"]",
        )
        .unwrap();
        let on = parsed.resolve(&data_dir()).unwrap();
        let lora = on.train.lora.clone().expect("LoRA on");
        assert_eq!((lora.rank, lora.alpha, lora.dropout), (16, 16.0, 0.05));
        assert_eq!(lora.targets, ["q_proj", "v_proj"]);
        assert_eq!(serde_json::to_value(&on).unwrap()["train"]["lora"]["rank"], 16);
        let bad: RunConfig = toml::from_str(
            "[train.lora]
rnak = 4",
        )
        .unwrap();
        let err = format!("{:#}", bad.resolve(&data_dir()).unwrap_err());
        assert!(err.contains("rnak"), "{err}");
    }

    /// The transform of retrieved rows is off by default and then absent from run.json and the
    /// resolved settings (earlier runs' files and fingerprints unchanged); on, it carries its cap
    /// and the run's seed.
    #[test]
    fn the_transform_is_off_by_default_and_absent_from_the_json_unless_on() {
        let default = serde_json::to_value(RunConfig::default()).unwrap();
        assert!(
            default.get("transform_retrieved").is_none() && default.get("transform_rows").is_none()
        );
        let resolved = RunConfig::default().resolve(&data_dir()).unwrap();
        assert!(resolved.transform.is_none());
        assert!(serde_json::to_value(&resolved).unwrap().get("transform").is_none());
        let on: RunConfig =
            toml::from_str("transform_retrieved = true\ntransform_rows = 7\nseed = 3").unwrap();
        let t = on.resolve(&data_dir()).unwrap().transform.unwrap();
        assert_eq!((t.max_rows, t.seed), (7, 3));
        assert_eq!(serde_json::to_value(&on).unwrap()["transform_retrieved"], true);
        let zero = RunConfig { transform_rows: Some(0), ..on.clone() };
        let err = zero.resolve(&data_dir()).unwrap_err().to_string();
        assert!(err.contains("transform_rows = 0"), "{err}");
        let default_cap: RunConfig = toml::from_str("transform_retrieved = true").unwrap();
        assert_eq!(
            default_cap.resolve(&data_dir()).unwrap().transform.unwrap().max_rows,
            crate::dataset_transformer::DEFAULT_TRANSFORM_ROWS
        );
    }

    /// The executor's prefix cache is on by default, absent from run.json then (fingerprints of
    /// earlier runs unchanged), and switched off by `[executor] prefix_cache = false`; fields left
    /// out of the file at their default (`precision`) can be set the same way.
    #[test]
    fn the_prefix_cache_is_on_by_default_and_a_config_file_switches_it_off() {
        let resolved = RunConfig::default().resolve(&data_dir()).unwrap();
        assert!(resolved.executor.prefix_cache);
        let json = serde_json::to_value(&resolved).unwrap();
        assert!(json["executor"].get("prefix_cache").is_none(), "{json}");
        let parsed: RunConfig =
            toml::from_str("[executor]\nprefix_cache = false\nprecision = \"bf16\"").unwrap();
        let off = parsed.resolve(&data_dir()).unwrap();
        assert!(!off.executor.prefix_cache);
        assert_eq!(off.executor.precision, crate::models::precision::Precision::Bf16);
        assert_eq!(serde_json::to_value(&off).unwrap()["executor"]["prefix_cache"], false);
        let old: ExecutorConfig = toml::from_str("batch_size = 4").unwrap();
        assert!(old.prefix_cache, "a config file without the field keeps the cache on");
        // The engine is such a field too: a run's evaluation on llama.cpp.
        let parsed: RunConfig = toml::from_str("[executor]\nengine = \"llama-cpp\"").unwrap();
        let cpp = parsed.resolve(&data_dir()).unwrap();
        assert_eq!(cpp.executor.engine, crate::models::chat::DecodingEngine::LlamaCpp);
    }
}

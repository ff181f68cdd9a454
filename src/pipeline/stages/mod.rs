//! The eight stages of a run, one file each. A stage declares what it reads — its settings and its
//! input files, from which [`super::stage::run_stage`] computes its fingerprint — and runs in its
//! own folder. It reads nothing it did not declare: the files through [`super::layout::RunLayout`],
//! the settings from the [`RunContext`]. To change a stage, open its file here.

mod assemble;
mod evaluate;
mod generate;
mod package;
mod parse;
mod retrieve_dataset;
mod retrieve_model;
mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::assemble::Row;
use super::context::RunContext;
pub(super) use super::stage::read_stage_json;
use super::stage::{Stage, StageInputs, StageOutputs};

pub use evaluate::run_baselines;
pub use retrieve_dataset::read_retrieved_dir;

/// One stage of the pipeline.
pub trait PipelineStage {
    fn stage(&self) -> Stage;
    /// The settings and files the stage reads: its fingerprint.
    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs>;
    /// Do the work in `dir` (the stage's folder) and say which files it wrote.
    fn run(&self, ctx: &RunContext, dir: &Path) -> Result<StageOutputs>;
    /// What the stage's outputs depend on, from the settings and input hashes of its record in
    /// `run_dir` (this run's or another's), for taking another run's finished stage
    /// ([`super::reuse`]); `None`: the stage is always computed by its own run.
    fn reuse_key(
        &self,
        _run_dir: &Path,
        _settings: &serde_json::Value,
        _inputs: &BTreeMap<String, String>,
    ) -> Option<String> {
        None
    }
    /// After another run's stage folder was copied into `dir`: rewrite what names the run.
    fn after_reuse(&self, _ctx: &RunContext, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Every stage, in order.
pub fn all() -> Vec<Box<dyn PipelineStage>> {
    vec![
        Box::new(parse::Parse),
        Box::new(retrieve_dataset::RetrieveDataset),
        Box::new(generate::Generate),
        Box::new(retrieve_model::RetrieveModel),
        Box::new(assemble::Assemble),
        Box::new(train::Train),
        Box::new(evaluate::Evaluate),
        Box::new(package::Package),
    ]
}

/// Every file under `dir`, sorted (for fingerprints); none when it does not exist.
fn list_files_of(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::util::fs::list_files(dir).with_context(|| format!("listing {}", dir.display()))
}

/// The paths among `paths` that exist: inputs that only some runs have.
fn existing(paths: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    paths.into_iter().filter(|p| p.is_file()).collect()
}

/// An assembled split's rows.
fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| {
                format!("{}: a row is not {{input, output, task_id, provenance}}", path.display())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Each stage called directly on a context over a temporary run folder: the paper's Temporal
    //! prompt with the authors' recorded generations, the smoke scale's tiny student, offline.
    use super::*;
    use crate::config::Paths;
    use crate::pipeline::config::{RunConfig, TeacherSource};
    use crate::pipeline::stage::{fingerprint, run_stage};
    use crate::pipeline::RunOptions;

    fn options(runs: &Path) -> RunOptions {
        RunOptions::unattended(runs.to_path_buf(), tch::Device::Cpu)
    }

    fn config() -> RunConfig {
        let paths = Paths::from_env().unwrap();
        let tasks = crate::data::tasks::load_tasks(&paths.data).unwrap();
        let task = crate::data::tasks::find(&tasks, "temporal").unwrap();
        RunConfig {
            name: "unit".into(),
            task: Some("temporal".into()),
            prompt: Some(task.prompt.clone()),
            prompt_source: "the paper's temporal prompt".into(),
            scale: "smoke".into(),
            teacher: TeacherSource::Recorded,
            model_retrieval: false,
            ..RunConfig::default()
        }
    }

    fn open<'a>(cfg: &RunConfig, opts: &'a RunOptions) -> RunContext<'a> {
        let paths = Paths { offline: true, ..Paths::from_env().unwrap() };
        RunContext::open_with(paths, cfg, opts).unwrap()
    }

    /// Run every stage before `stage` (skipping those done), then `stage` itself; its record.
    fn run_through(ctx: &RunContext, stage: Stage) -> crate::pipeline::stage::StageRecord {
        let mut last = None;
        for s in all().into_iter().filter(|s| s.stage() <= stage) {
            let inputs = s.inputs(ctx).unwrap();
            let (_, record) =
                run_stage(ctx.layout.dir(), s.stage(), inputs, |dir| s.run(ctx, dir)).unwrap();
            last = Some(record);
        }
        last.unwrap()
    }

    #[test]
    fn parse_splits_the_prompt_with_the_layout_rules_for_the_recorded_teacher() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        let rec = run_through(&ctx, Stage::Parse);
        let parsed: crate::prompt_parser::ParsedPrompt =
            read_stage_json(&ctx.layout.parsed()).unwrap();
        assert!(!parsed.demonstrations.is_empty(), "{}", rec.summary);
        assert_eq!(
            std::fs::read_to_string(ctx.layout.retrieval_query()).unwrap(),
            parsed.instruction
        );
        assert_eq!(rec.settings["mode"], "layout rules");
    }

    #[test]
    fn dataset_retrieval_says_the_authors_retrieved_nothing_for_temporal() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        let rec = run_through(&ctx, Stage::RetrieveDatasets);
        assert!(rec.summary.contains("retrieved no dataset"), "{}", rec.summary);
        assert_eq!(std::fs::read_to_string(ctx.layout.retrieved()).unwrap(), "");
    }

    #[test]
    fn generation_writes_the_recorded_examples_and_their_test_set() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        let rec = run_through(&ctx, Stage::Generate);
        let rows = crate::data::examples::read_examples_jsonl(&ctx.layout.generated()).unwrap();
        let test =
            crate::data::examples::read_examples_jsonl(&ctx.layout.generated_test()).unwrap();
        assert!(rows.len() > 100 && !test.is_empty(), "{}", rec.summary);
    }

    #[test]
    fn model_retrieval_off_takes_the_scales_student() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        run_through(&ctx, Stage::RetrieveModel);
        let choice: crate::pipeline::student::StudentChoice =
            read_stage_json(&ctx.layout.choice()).unwrap();
        assert_eq!(choice.student, ctx.resolved.student);
        assert!(choice.why.contains("model retrieval off"), "{}", choice.why);
    }

    #[test]
    fn assembly_holds_the_recorded_test_set_out_of_training() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        run_through(&ctx, Stage::Assemble);
        let train = read_rows(&ctx.layout.split("train")).unwrap();
        let test = read_rows(&ctx.layout.split("test")).unwrap();
        assert_eq!(train.len(), ctx.resolved.max_train_examples);
        let held: std::collections::HashSet<&str> = test.iter().map(|r| r.input.as_str()).collect();
        assert!(train.iter().all(|r| !held.contains(r.input.as_str())));
        assert!(train.iter().all(|r| r.provenance == "generated:recorded"));
    }

    #[test]
    fn training_writes_final_weights_and_a_metric_change_does_not_retrain() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        run_through(&ctx, Stage::Train);
        assert!(list_files_of(&ctx.layout.trained()).unwrap().len() >= 2);
        drop(ctx);
        // The same run judged by another metric: training's fingerprint is the same,
        // evaluation's is not (it scores with the metric).
        let train = all().into_iter().find(|s| s.stage() == Stage::Train).unwrap();
        let evaluate = all().into_iter().find(|s| s.stage() == Stage::Evaluate).unwrap();
        let prints = |cfg: &RunConfig| {
            let ctx = open(cfg, &opts);
            let dir = ctx.layout.dir().to_path_buf();
            let fp = |s: &dyn PipelineStage| fingerprint(&dir, &s.inputs(&ctx).unwrap()).unwrap().0;
            (fp(train.as_ref()), fp(evaluate.as_ref()))
        };
        let em = RunConfig { metric: Some("em".into()), ..cfg.clone() };
        let (a, b) = (prints(&cfg), prints(&em));
        assert_eq!(a.0, b.0, "training does not depend on the metric");
        assert_ne!(a.1, b.1, "evaluation does");
        // With --select-student the metric picks the student, so it is training's too.
        let select = |metric: &str| RunConfig {
            select_student: 2,
            metric: Some(metric.into()),
            ..cfg.clone()
        };
        assert_ne!(prints(&select("em")).0, prints(&select("chrf++")).0);
    }

    /// One decision of the metric for `--select-student` and evaluation: the configured one, else
    /// the data's (accuracy and macro-F1 for a label set), and a bad name refused naming the field.
    #[test]
    fn the_metric_is_the_configured_one_else_the_datas() {
        use crate::data::diagnostics::diagnose;
        use crate::data::examples::Example;
        use crate::evaluator::Metric;
        use crate::prompt_parser::ParsedPrompt;
        let runs = tempfile::tempdir().unwrap();
        let opts = options(runs.path());
        let prompt = ParsedPrompt::new("Answer \"positive\" or \"negative\".", vec![]);
        let rows: Vec<Example> = (0..20)
            .map(|i| Example::new(format!("review {i}"), ["positive", "negative"][i % 2]))
            .collect();
        let labelled = diagnose(&rows, &prompt, 0);
        let custom = RunConfig {
            name: "custom".into(),
            task: None,
            teacher: TeacherSource::Local,
            prompt: Some(
                "Answer \"positive\" or \"negative\".\n\nInput: good\nOutput: positive\n".into(),
            ),
            ..config()
        };
        let ctx = open(&custom, &opts);
        assert_eq!(ctx.configured_metric, None);
        assert_eq!(
            ctx.metric_choice(Some(&labelled)).headline,
            [Metric::ExactMatch, Metric::MacroF1]
        );
        assert_eq!(ctx.metric_choice(None).primary(), Metric::ChrfPlusPlus);
        drop(ctx);
        // A paper task keeps its metric whatever the data looks like; the user's wins over both.
        let ctx = open(&config(), &opts);
        assert_eq!(ctx.metric_choice(Some(&labelled)).primary(), Metric::ChrfPlusPlus);
        drop(ctx);
        let chosen = RunConfig { metric: Some("macro-f1".into()), ..config() };
        let ctx = open(&chosen, &opts);
        assert_eq!(ctx.metric_choice(None).headline, [Metric::MacroF1]);
        drop(ctx);
        let bad = RunConfig { metric: Some("bleu".into()), ..config() };
        let err = RunContext::open_with(
            Paths { offline: true, ..Paths::from_env().unwrap() },
            &bad,
            &opts,
        )
        .err()
        .unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("`bleu`") && text.contains("`metric`") && text.contains("chrf++"),
            "{text}"
        );
    }

    #[test]
    fn evaluation_scores_the_generated_and_the_real_test_set_with_intervals() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        run_through(&ctx, Stage::Evaluate);
        let metrics: Vec<crate::pipeline::evaluate::MetricResult> =
            read_stage_json(&ctx.layout.metrics()).unwrap();
        for set in ["generated", "real"] {
            let m = metrics.iter().find(|m| m.test_set == set && m.metric == "chrf++").unwrap();
            assert!(m.low <= m.value && m.value <= m.high && m.n > 0, "{m:?}");
            assert_eq!(m.n, ctx.resolved.max_test_examples);
        }
    }

    #[test]
    fn package_writes_the_model_folder_and_its_inputs_include_what_the_card_reads() {
        let runs = tempfile::tempdir().unwrap();
        let (cfg, opts) = (config(), options(runs.path()));
        let ctx = open(&cfg, &opts);
        run_through(&ctx, Stage::Package);
        for f in ["p2m.json", "model_card.md", "prompt.txt"] {
            assert!(ctx.layout.model().join(f).is_file(), "{f}");
        }
        let package = all().into_iter().find(|s| s.stage() == Stage::Package).unwrap();
        let inputs = package.inputs(&ctx).unwrap();
        for read in [ctx.layout.notes(Stage::Assemble), record_path_of(&ctx, Stage::Train)] {
            assert!(inputs.files.contains(&read), "{} is declared", read.display());
        }
    }

    /// Two runs that train the same student on the same rows under other names and other model
    /// choice explanations: the second takes the first's training and evaluation (records say
    /// so, the weights and scores are the first's, its report carries its own name); a run with
    /// another learning rate computes its own.
    #[test]
    fn a_run_takes_training_and_evaluation_from_a_run_that_computed_the_same() {
        use crate::pipeline::stage::read_record;
        let runs = tempfile::tempdir().unwrap();
        let mut opts = options(runs.path());
        opts.reuse_roots = vec![runs.path().to_path_buf()];
        let a = crate::pipeline::run(&RunConfig { name: "a".into(), ..config() }, &opts).unwrap();
        assert!(a.stages.iter().all(|(_, ran, r)| *ran && r.reused_from.is_none()));
        let choice: crate::pipeline::student::StudentChoice =
            read_stage_json(&a.dir.join("model-retrieval/choice.json")).unwrap();
        // The same student named by the configuration: another explanation in choice.json.
        let b_cfg = RunConfig { name: "b".into(), student: Some(choice.student), ..config() };
        let b = crate::pipeline::run(&b_cfg, &opts).unwrap();
        let (ra, rb) = (
            read_record(&a.dir, Stage::Train).unwrap(),
            read_record(&b.dir, Stage::Train).unwrap(),
        );
        assert_ne!(ra.fingerprint, rb.fingerprint, "the explanation is in the fingerprint");
        for stage in [Stage::Train, Stage::Evaluate] {
            let rec = read_record(&b.dir, stage).unwrap();
            assert_eq!(rec.reused_from.as_deref(), Some(a.dir.to_str().unwrap()), "{stage:?}");
            assert_eq!(rec.outputs, read_record(&a.dir, stage).unwrap().outputs);
        }
        assert!(read_record(&b.dir, Stage::Package).unwrap().reused_from.is_none());
        assert_eq!(
            serde_json::to_value(&a.metrics).unwrap(),
            serde_json::to_value(&b.metrics).unwrap()
        );
        let report =
            std::fs::read_to_string(b.dir.join("evaluation/report/manifest.json")).unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["config"]["run"], "b", "{report}");
        let readme = std::fs::read_to_string(b.dir.join("evaluation/report/README.md")).unwrap();
        assert!(readme.contains("copied here"), "{readme}");
        // Rerun: up to date, nothing copied again.
        let again = crate::pipeline::run(&b_cfg, &opts).unwrap();
        assert!(again.stages.iter().all(|(_, ran, _)| !ran));
        // Another learning rate trains anew.
        let mut lr = toml::Table::new();
        lr.insert("learning_rate".into(), toml::Value::Float(3e-3));
        let c = crate::pipeline::run(
            &RunConfig { name: "c".into(), train: Some(lr), ..config() },
            &opts,
        )
        .unwrap();
        for stage in [Stage::Train, Stage::Evaluate] {
            assert!(read_record(&c.dir, stage).unwrap().reused_from.is_none(), "{stage:?}");
        }
        // Run a is changed (c's learning rate): b, which took a's stages, is still what a run like
        // b computes, and is taken itself rather than the changed a.
        let mut lr = toml::Table::new();
        lr.insert("learning_rate".into(), toml::Value::Float(3e-3));
        crate::pipeline::run(&RunConfig { name: "a".into(), train: Some(lr), ..config() }, &opts)
            .unwrap();
        let d =
            crate::pipeline::run(&RunConfig { name: "d".into(), ..b_cfg.clone() }, &opts).unwrap();
        let rec = read_record(&d.dir, Stage::Train).unwrap();
        assert_eq!(rec.reused_from.as_deref(), Some(b.dir.to_str().unwrap()));
    }

    fn record_path_of(ctx: &RunContext, stage: Stage) -> PathBuf {
        crate::pipeline::stage::record_path(ctx.layout.dir(), stage)
    }
}

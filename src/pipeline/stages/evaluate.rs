//! Stage 7: the trained student on the generated test split and the real test set, every metric
//! with its interval ([`crate::pipeline::evaluate`]); with `teacher_answers_real`, the teacher's
//! own answers to the real set beside it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::{existing, list_files_of, read_rows, read_stage_json, PipelineStage};
use crate::data::diagnostics::DataDiagnostics;
use crate::data::examples::{read_examples_jsonl, Example};
use crate::data::registry::Registry;
use crate::evaluator::baselines::{
    baselines_for_run, compare_to_baselines, Baseline, BaselineComparison,
};
use crate::evaluator::bertscore::BertScorer;
use crate::evaluator::metric_choice::MetricChoice;
use crate::pipeline::config::TeacherSource;
use crate::pipeline::context::RunContext;
use crate::pipeline::evaluate::{self, TestSet};
use crate::pipeline::layout::RunLayout;
use crate::pipeline::stage::{fingerprint_of, read_record, Stage, StageInputs, StageOutputs};
use crate::pipeline::student::StudentSelection;
use crate::prompt_parser::ParsedPrompt;
use crate::util::fs::write_json;
use crate::util::rng::{salt, seeded_subset};

pub struct Evaluate;

impl PipelineStage for Evaluate {
    fn stage(&self) -> Stage {
        Stage::Evaluate
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let (cfg, layout) = (&ctx.cfg, &ctx.layout);
        let mut files = list_files_of(&layout.trained())?;
        // The data diagnostics decide the headline metric of a prompt that is no paper task.
        files.extend(existing([layout.selection(), layout.data_diagnostics()]));
        files.extend([layout.split("test"), layout.parsed_for_training()]);
        Ok(StageInputs {
            settings: serde_json::json!({
                "executor": ctx.resolved.executor, "bootstrap": cfg.bootstrap, "real_test": ctx.real_test_identity(), "max_test": ctx.resolved.max_test_examples,
                "bertscore": ctx.resolved.bertscore.then_some(evaluate::bertscore_model(ctx.paths.offline)), "seed": cfg.seed,
                "teacher_answers_real": (cfg.teacher_answers_real && cfg.teacher != TeacherSource::Recorded).then(|| ctx.teacher_id.clone()),
                "metric": ctx.configured_metric.map(|m| m.name()),
            }),
            files,
        })
    }

    /// Predictions and scores depend on the trained weights, the test examples and the settings,
    /// all in the fingerprint (the run's name only titles the report, rewritten after a copy).
    fn reuse_key(
        &self,
        _run_dir: &Path,
        settings: &serde_json::Value,
        inputs: &BTreeMap<String, String>,
    ) -> Option<String> {
        Some(fingerprint_of(settings, inputs))
    }

    /// The report under this run's name, saying where its numbers were computed.
    fn after_reuse(&self, ctx: &RunContext, dir: &Path) -> Result<()> {
        let layout = &ctx.layout;
        let results: Vec<evaluate::MetricResult> = read_stage_json(&layout.metrics())?;
        let choice: MetricChoice = read_stage_json(&layout.metric_choice())?;
        let mut notes: Vec<String> = read_stage_json(&layout.notes(Stage::Evaluate))?;
        if let Some(from) = read_record(layout.dir(), Stage::Evaluate).and_then(|r| r.reused_from) {
            notes.push(format!("Computed by the run {from} (the same trained weights, test examples and settings) and copied here."));
        }
        evaluate::write_report(
            &ctx.paths,
            dir,
            &ctx.name,
            choice.primary().name(),
            &results,
            &notes,
        )?;
        Ok(())
    }

    fn run(&self, ctx: &RunContext, dir: &Path) -> Result<StageOutputs> {
        let (cfg, layout, resolved) = (&ctx.cfg, &ctx.layout, &ctx.resolved);
        let parsed: ParsedPrompt = read_stage_json(&layout.parsed_for_training())?;
        let student = crate::executor::load_student(
            &layout.trained(),
            ctx.opts.device,
            &resolved.executor,
            Some(&ctx.paths.cache),
        )?;
        let mut sets = Vec::new();
        let test_rows = read_rows(&layout.split("test"))?;
        if !test_rows.is_empty() {
            let idx =
                seeded_subset(test_rows.len(), resolved.max_test_examples, cfg.seed, salt(b"gen"));
            let note = (idx.len() < test_rows.len()).then(|| {
                format!(
                    "{} of {} generated test examples (seeded draw; the scale's max_test_examples)",
                    idx.len(),
                    test_rows.len()
                )
            });
            sets.push(TestSet {
                name: "generated".into(),
                source: "assembly/test.jsonl".into(),
                inputs: idx.iter().map(|&i| test_rows[i].input.clone()).collect(),
                references: idx.iter().map(|&i| vec![test_rows[i].output.clone()]).collect(),
                note,
            });
        }
        if let Some(spec) = &ctx.test_dataset {
            sets.push(real_test_set(&ctx.registry, spec, resolved.max_test_examples, cfg.seed)?);
        }
        anyhow::ensure!(!sets.is_empty(), "nothing to evaluate on: no generated test split and no real test set (give --test-dataset)");
        let (scorer, scorer_id, bertscore_note) = bertscorer(ctx)?;
        let evaluate::Evaluated { mut results, mut files, predictions } = evaluate::evaluate(
            &student,
            &parsed.instruction,
            &resolved.executor,
            &sets,
            scorer.as_ref(),
            scorer_id,
            &cfg.bootstrap,
            dir,
        )?;
        // The teacher's row: the teacher answers the real examples from the same prompt.
        let real = sets.iter().find(|s| s.name == "real");
        if let (true, Some(real)) = (cfg.teacher_answers_real, real) {
            if let Some(t) = ctx.teacher()? {
                eprintln!("  the teacher answers {} real test examples", real.inputs.len());
                let predictions = ctx.rt.block_on(evaluate::teacher_answers(
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
                    dir,
                )?;
                results.extend(more);
                files.push(file);
            }
        }
        write_json(&layout.metrics(), &results)?;
        // The metric fitted to the task, and the student beside what trivial answers get.
        let diagnostics = DataDiagnostics::read(&layout.data_diagnostics()).ok();
        let choice = ctx.metric_choice(diagnostics.as_ref());
        write_json(&layout.metric_choice(), &choice)?;
        let headline_metric = choice.primary().name().to_string();
        let comparisons =
            compare_with_baselines(ctx, &sets, &predictions, diagnostics.as_ref(), &choice)?;
        write_json(&layout.baselines(), &comparisons)?;
        files.extend([layout.metric_choice(), layout.baselines()]);
        let mut notes: Vec<String> = sets.iter().filter_map(|s| s.note.clone()).collect();
        notes.push(format!("The run is judged by {}: {}.", choice.names(), choice.why));
        notes.extend(comparisons.iter().filter_map(|c| {
            c.test.as_ref().map(|t| format!("{} test set: {}", c.test_set, t.verdict()))
        }));
        notes.extend(bertscore_note);
        if let Ok(sel) = read_stage_json::<StudentSelection>(&layout.selection()) {
            notes.push(format!(
                "student selection ({} optimizer steps each, {} on {} generated validation examples): {}; chosen `{}`",
                sel.steps,
                sel.metric,
                sel.validation_examples,
                sel.scores.iter().map(|(s, v)| format!("`{s}` {v:.2}")).collect::<Vec<_>>().join(", "),
                sel.chosen
            ));
        }
        write_json(&layout.notes(Stage::Evaluate), &notes)?;
        files.push(layout.metrics());
        evaluate::write_report(&ctx.paths, dir, &ctx.name, &headline_metric, &results, &notes)?;
        let headline: Vec<String> = results
            .iter()
            .filter(|r| r.metric == headline_metric)
            .map(|r| format!("{} {}", r.test_set, r.display()))
            .chain(comparisons.iter().filter_map(|c| c.test.as_ref().map(|t| t.verdict())))
            .collect();
        Ok(StageOutputs { files, summary: headline.join("; ") })
    }
}

/// Each test set's student predictions beside the baselines of the run's training data, on the
/// headline metrics, with the paired test against the best.
fn compare_with_baselines(
    ctx: &RunContext,
    sets: &[TestSet],
    predictions: &[Vec<String>],
    diagnostics: Option<&DataDiagnostics>,
    choice: &MetricChoice,
) -> Result<Vec<BaselineComparison>> {
    let train = task_training_examples(&ctx.layout)?;
    let mut out = Vec::new();
    for (set, predictions) in sets.iter().zip(predictions) {
        let baselines = baselines_for_run(diagnostics, &train, &set.inputs);
        out.push(compare_to_baselines(
            &set.name,
            predictions,
            &set.references,
            &baselines,
            &choice.headline,
            &ctx.cfg.bootstrap,
        )?);
    }
    Ok(out)
}

/// The rows a run's student trains on for the task itself (task 0 of `assembly/train.jsonl`;
/// retrieved rows of other tasks answer other questions): what its baselines are learned from.
fn task_training_examples(layout: &RunLayout) -> Result<Vec<Example>> {
    Ok(read_rows(&layout.split("train"))?
        .into_iter()
        .filter(|r| r.task_id == 0)
        .map(|r| Example::new(r.input, r.output))
        .collect())
}

/// The baselines of a run folder for `test_inputs`, as its evaluation builds them: from its
/// task's training rows and its data diagnostics' label set. The live tables score each cell's
/// baselines with this, so a table's baseline row is the one its run's report has.
pub fn run_baselines(layout: &RunLayout, test_inputs: &[String]) -> Result<Vec<Baseline>> {
    let train = task_training_examples(layout)?;
    let diagnostics = DataDiagnostics::read(&layout.data_diagnostics()).ok();
    Ok(baselines_for_run(diagnostics.as_ref(), &train, test_inputs))
}

/// BERTScore with the paper's encoder online; the offline one when it cannot be had (said in a
/// note). None when the scale turns BERTScore off.
fn bertscorer(ctx: &RunContext) -> Result<(Option<BertScorer>, &'static str, Option<String>)> {
    let wanted = evaluate::bertscore_model(ctx.paths.offline);
    if !ctx.resolved.bertscore {
        return Ok((None, wanted, None));
    }
    let load =
        |id: &str| BertScorer::from_registry(&ctx.models, id, None, false, None, ctx.opts.device);
    match load(wanted) {
        Ok(s) => Ok((Some(s), wanted, None)),
        Err(e) if !ctx.paths.offline => {
            let fallback = evaluate::bertscore_model(true);
            // One plain line for the notes and the card; the error chain goes to the log.
            eprintln!("warning: BERTScore: `{wanted}` could not be loaded: {e:#}");
            let note = format!(
                "BERTScore: `{wanted}` could not be fetched from the hub, `{fallback}` was used"
            );
            Ok((Some(load(fallback)?), fallback, Some(note)))
        }
        Err(e) => Err(e),
    }
}

/// The real test set of a run: a registry dataset or a JSONL file, seeded subsample.
fn real_test_set(registry: &Registry, spec: &str, max: usize, seed: u64) -> Result<TestSet> {
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
        use crate::data::loaders::{string_column, string_list_column, INPUT, REFERENCES};
        (
            string_column(&loaded.frame, INPUT)?,
            string_list_column(&loaded.frame, REFERENCES)?,
            format!("registry:{spec}"),
        )
    };
    let total = inputs.len();
    let idx = seeded_subset(total, max, seed, salt(b"real"));
    let note = (idx.len() < total).then(|| {
        format!("{max} of {total} examples of {source} (seeded draw, seed {seed}; the scale's max_test_examples)")
    });
    Ok(TestSet {
        name: "real".into(),
        source,
        inputs: idx.iter().map(|&i| inputs[i].clone()).collect(),
        references: idx.iter().map(|&i| references[i].clone()).collect(),
        note,
    })
}

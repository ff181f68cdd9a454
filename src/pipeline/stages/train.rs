//! Stage 6: the student fine-tuned text-to-text on the assembled rows ([`crate::trainer`]);
//! with `--select-student K`, the K candidates first trained briefly and the best kept.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::{list_files_of, read_rows, read_stage_json, PipelineStage};
use crate::data::diagnostics::DataDiagnostics;
use crate::data::gate::{gate_run, DataGate};
use crate::pipeline::context::RunContext;
use crate::pipeline::stage::{fingerprint_of, Stage, StageInputs, StageOutputs};
use crate::pipeline::student::{select_student, StudentChoice};
use crate::prompt_parser::ParsedPrompt;
use crate::trainer::{apply_template, model_input, Student, StudentSpec, TextPair, Trainer};
use crate::util::fs::{sha256_file, write_json};

pub struct Train;

impl PipelineStage for Train {
    fn stage(&self) -> Stage {
        Stage::Train
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let cfg = &ctx.cfg;
        let layout = &ctx.layout;
        let mut settings = serde_json::json!({ "train": ctx.resolved.train, "select_student": cfg.select_student, "selection_steps": cfg.selection_steps, "select_candidates": cfg.select_candidates });
        // The metric decides only which candidate `--select-student` keeps.
        if cfg.select_student > 1 {
            settings["metric"] = serde_json::json!(ctx.configured_metric.map(|m| m.name()));
        }
        // The data gate's settings, where they are not the defaults (so earlier runs keep their
        // fingerprints): accepting refused data, other thresholds.
        if cfg.accept_data {
            settings["accept_data"] = serde_json::json!(true);
        }
        if cfg.data_gate != DataGate::default() {
            settings["data_gate"] = serde_json::json!(cfg.data_gate);
        }
        Ok(StageInputs {
            settings,
            files: vec![
                layout.split("train"),
                layout.split("validation"),
                layout.choice(),
                layout.parsed_for_training(),
                layout.data_diagnostics(),
            ],
        })
    }

    /// The model choice's file explains as well as decides ("model retrieval off", the
    /// retriever's ranking): only the student it names — and, with `--select-student`, the
    /// candidates — changes the weights, so two runs that differ in the explanation alone train
    /// the same thing.
    fn reuse_key(
        &self,
        run_dir: &Path,
        settings: &serde_json::Value,
        inputs: &BTreeMap<String, String>,
    ) -> Option<String> {
        let choice_file = format!("{}/choice.json", Stage::RetrieveModel.name());
        let mut inputs = inputs.clone();
        let recorded = inputs.remove(&choice_file)?;
        // The file as the stage read it, or nothing to compare.
        let path = run_dir.join(&choice_file);
        if sha256_file(&path).ok()? != recorded {
            return None;
        }
        let choice: StudentChoice = read_stage_json(&path).ok()?;
        let mut settings = settings.clone();
        settings["student"] = serde_json::json!(choice.student);
        if settings["select_student"].as_u64().unwrap_or(0) > 1 {
            settings["trainable"] = serde_json::json!(choice.trainable);
        }
        Some(fingerprint_of(&settings, &inputs))
    }

    fn run(&self, ctx: &RunContext, dir: &Path) -> Result<StageOutputs> {
        let (cfg, layout) = (&ctx.cfg, &ctx.layout);
        // Before any training time is spent: is the data worth training on?
        let diagnostics = DataDiagnostics::read(&layout.data_diagnostics())?;
        let outcome = gate_run(&diagnostics, &cfg.data_gate, cfg.accept_data)
            .map_err(|refusal| anyhow::Error::new(refusal.naming_run(layout.dir())))?;
        write_json(&layout.data_gate(), &outcome)?;
        let parsed: ParsedPrompt = read_stage_json(&layout.parsed_for_training())?;
        let choice: StudentChoice = read_stage_json(&layout.choice())?;
        let train_rows = read_rows(&layout.split("train"))?;
        let val_rows = read_rows(&layout.split("validation"))?;
        // Keep the assembled (already shuffled) order: template each row by its task.
        let train: Vec<TextPair> = train_rows
            .iter()
            .map(|r| TextPair {
                source: model_input(r.task_id, &parsed.instruction, &r.input),
                target: r.output.clone(),
            })
            .collect();
        let val_pairs: Vec<(String, String)> = val_rows
            .iter()
            .filter(|r| r.task_id == 0)
            .map(|r| (r.input.clone(), r.output.clone()))
            .collect();
        let validation = apply_template(0, &parsed.instruction, &val_pairs);
        let chosen_student = if cfg.select_student > 1 {
            // The metric evaluation will judge by (the data decides it where no metric is set).
            let metric = ctx.metric_choice(Some(&diagnostics)).primary();
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
                &ctx.resolved,
                &ctx.models,
                ctx.opts.device,
                dir,
            )?;
            write_json(&layout.selection(), &selection)?;
            selection.chosen
        } else {
            choice.student.clone()
        };
        let spec: StudentSpec = chosen_student.parse()?;
        let mut student =
            Student::build(&spec, &ctx.models, ctx.opts.device, ctx.resolved.train.seed)?;
        let mut trainer = Trainer::new(ctx.resolved.train.clone(), &mut student, dir);
        trainer.label = ctx.name.clone();
        trainer.keep_checkpoints = cfg.keep_checkpoints;
        let summary = trainer.train(&train, &validation)?;
        let mut files = list_files_of(&layout.trained())?;
        files.push(layout.data_gate());
        if layout.selection().exists() {
            files.push(layout.selection());
        }
        let last = summary.epochs.last();
        Ok(StageOutputs {
            files,
            summary: format!(
                "{} on {} examples: {} optimizer steps, final train loss {:.4}{}, {:.1} examples/s",
                chosen_student,
                summary.train_examples,
                summary.optimizer_steps,
                last.map(|e| e.train_loss).unwrap_or(f64::NAN),
                last.and_then(|e| e.validation_loss)
                    .map(|v| format!(", validation loss {v:.4}"))
                    .unwrap_or_default(),
                summary.examples_per_second
            ),
        })
    }
}

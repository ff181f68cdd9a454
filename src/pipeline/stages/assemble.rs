//! Stage 5: train / validation / test from the generated (or reviewed) and retrieved examples
//! ([`crate::pipeline::assemble`]).

use std::path::Path;

use anyhow::{Context, Result};

use super::retrieve_dataset::RETRIEVED_STEM;
use super::{existing, read_stage_json, PipelineStage};
use crate::data::diagnostics::diagnose;
use crate::data::examples::{read_examples_jsonl, Example};
use crate::pipeline::assemble::{assemble_sources, read_source_rows, rows_frame, Cut, SourceRows};
use crate::pipeline::config::SplitConfig;
use crate::pipeline::context::RunContext;
use crate::pipeline::stage::{record_path, Stage, StageInputs, StageOutputs, StageRecord};
use crate::prompt_parser::ParsedPrompt;
use crate::util::fs::{write_atomic, write_json};

pub struct Assemble;

impl PipelineStage for Assemble {
    fn stage(&self) -> Stage {
        Stage::Assemble
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let layout = &ctx.layout;
        // The prompt too: the data diagnostics read the answer set it states.
        let mut files =
            vec![layout.examples_for_assembly(), layout.retrieved(), layout.parsed_for_training()];
        // The retrieved data's own splits where it has them; the generated test set where one
        // was recorded apart; the records of generation and retrieval, whose settings and
        // summaries name the rows' provenance.
        let retrieved_dir = layout.stage_dir(Stage::RetrieveDatasets);
        files.extend(existing([
            retrieved_dir.join(format!("{RETRIEVED_STEM}_validation.jsonl")),
            retrieved_dir.join(format!("{RETRIEVED_STEM}_test.jsonl")),
            layout.generated_test(),
            record_path(layout.dir(), Stage::RetrieveDatasets),
            record_path(layout.dir(), Stage::Generate),
        ]));
        let mut settings = serde_json::json!({ "split": ctx.cfg.split, "max_train": ctx.resolved.max_train_examples, "max_validation": ctx.resolved.max_validation_examples });
        // Only a share that was asked for enters the fingerprint: runs without one keep theirs.
        if let Some(share) = ctx.resolved.retrieved_share {
            settings["retrieved_share"] = serde_json::json!(share);
        }
        Ok(StageInputs { settings, files })
    }

    fn run(&self, ctx: &RunContext, _dir: &Path) -> Result<StageOutputs> {
        let layout = &ctx.layout;
        let examples_path = layout.examples_for_assembly();
        let generated = read_examples_jsonl(&examples_path)
            .with_context(|| format!("reading {}", examples_path.display()))?;
        let retrieved =
            read_source_rows(&layout.stage_dir(Stage::RetrieveDatasets), RETRIEVED_STEM)?;
        let fixed_test = if layout.generated_test().is_file() {
            Some(read_examples_jsonl(&layout.generated_test())?)
        } else {
            None
        };
        anyhow::ensure!(
            !generated.is_empty() || !retrieved.is_empty(),
            "no training data: generation produced no examples and no dataset was retrieved; turn generation on or give --retrieved DIR"
        );
        let source =
            read_stage_json::<StageRecord>(&record_path(layout.dir(), Stage::RetrieveDatasets))
                .map(|r| r.summary)
                .unwrap_or_default();
        let split = SplitConfig {
            max_validation: ctx.cfg.split.max_validation.min(ctx.resolved.max_validation_examples),
            ..ctx.cfg.split.clone()
        };
        let generated = SourceRows { train: generated, validation: None, test: fixed_test };
        let a = assemble_sources(
            &generated,
            &ctx.teacher_id,
            &retrieved,
            &source,
            &split,
            &Cut::of(&ctx.resolved),
        );
        let mut files = Vec::new();
        for (name, rows) in [("train", &a.train), ("validation", &a.validation), ("test", &a.test)]
        {
            let path = layout.split(name);
            let text: String = rows
                .iter()
                .map(|r| serde_json::to_string(r).expect("serialisable") + "\n")
                .collect();
            write_atomic(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            crate::report::write_parquet_atomic(
                &rows_frame(rows)?,
                &path.with_extension("parquet"),
            )?;
            files.push(path);
        }
        write_json(&layout.notes(Stage::Assemble), &a.notes)?;
        // What the teacher's rows that will be trained on look like (the gate before training
        // reads it; the card shows it).
        let parsed: ParsedPrompt = read_stage_json(&layout.parsed_for_training())?;
        let generated_train: Vec<Example> = a
            .train
            .iter()
            .filter(|r| r.task_id == 0)
            .map(|r| Example::new(r.input.clone(), r.output.clone()))
            .collect();
        let diagnostics = diagnose(&generated_train, &parsed, ctx.cfg.seed);
        let path = layout.data_diagnostics();
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("a file name");
        files.extend(diagnostics.write(path.parent().expect("in the stage folder"), stem)?);
        Ok(StageOutputs {
            files,
            summary: format!(
                "train {} ({} generated, {} retrieved), validation {}, generated test {}; data: {}",
                a.train.len(),
                a.train.iter().filter(|r| r.task_id == 0).count(),
                a.train.iter().filter(|r| r.task_id == 1).count(),
                a.validation.len(),
                a.test.len(),
                diagnostics.summary_line()
            ),
        })
    }
}

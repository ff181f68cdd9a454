//! Stage 3: examples written by the teacher ([`crate::dataset_generator`]), or the authors'
//! recorded generations, or a generation reused from another folder.

use std::path::Path;

use anyhow::{Context, Result};

use super::{read_stage_json, PipelineStage};
use crate::data::examples::{read_examples_jsonl, write_examples_jsonl};
use crate::pipeline::context::RunContext;
use crate::pipeline::recorded;
use crate::pipeline::stage::{Stage, StageInputs, StageOutputs};
use crate::prompt_parser::ParsedPrompt;
use crate::teacher::Teacher;

pub struct Generate;

impl PipelineStage for Generate {
    fn stage(&self) -> Stage {
        Stage::Generate
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let cfg = &ctx.cfg;
        Ok(StageInputs {
            settings: serde_json::json!({
                "enabled": cfg.generation, "teacher": ctx.teacher_id, "generator": ctx.resolved.generator, "generated_dir": cfg.generated_dir,
                "recorded": ctx.recorded.as_ref().map(|r| (&r.generated, &r.generated_test)),
            }),
            files: vec![ctx.layout.parsed()],
        })
    }

    fn run(&self, ctx: &RunContext, dir: &Path) -> Result<StageOutputs> {
        let layout = &ctx.layout;
        let examples = layout.generated();
        let mut files = vec![examples.clone()];
        let summary = if let Some(r) = &ctx.recorded {
            let (rows, _) = recorded::recorded_examples(&ctx.registry, &r.generated, &["train"])?;
            let (test, _) =
                recorded::recorded_examples(&ctx.registry, &r.generated_test, &["test", "train"])?;
            write_examples_jsonl(&examples, &rows)?;
            write_examples_jsonl(&layout.generated_test(), &test)?;
            files.push(layout.generated_test());
            format!(
                "{} examples and a generated test set of {} recorded from {} ({}; {})",
                rows.len(),
                test.len(),
                r.model,
                r.generated,
                r.note
            )
        } else if let Some(src) = &ctx.cfg.generated_dir {
            let from = src.join(crate::dataset_generator::EXAMPLES_FILE);
            let rows = read_examples_jsonl(&from).with_context(|| {
                format!("--generated {}: expected {}", src.display(), from.display())
            })?;
            write_examples_jsonl(&examples, &rows)?;
            format!("{} examples reused from {}", rows.len(), from.display())
        } else if !ctx.cfg.generation {
            write_examples_jsonl(&examples, &[])?;
            "off (--no-generation)".into()
        } else {
            let parsed: ParsedPrompt = read_stage_json(&layout.parsed())?;
            let t = ctx.teacher()?.context("generation needs a live teacher")?;
            let progress =
                crate::dataset_generator::default_progress_bar(ctx.resolved.num_examples);
            let result = ctx.rt.block_on(crate::dataset_generator::generate(
                t,
                &parsed,
                &ctx.resolved.generator,
                dir,
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
            files.push(layout.generation_log());
            format!(
                "{} examples from {} in {} requests (${:.4})",
                rows.len(),
                t.model(),
                log.requests,
                log.cost_usd
            )
        };
        Ok(StageOutputs { files, summary })
    }
}

//! Stage 4: which student is trained ([`crate::model_retriever`] through
//! [`crate::pipeline::student::choose_student`]), or a person's pick with `--interactive`.

use std::path::Path;

use anyhow::{Context, Result};

use super::PipelineStage;
use crate::pipeline::context::RunContext;
use crate::pipeline::stage::{Stage, StageInputs, StageOutputs};
use crate::pipeline::student::choose_student;
use crate::util::fs::write_json;

pub struct RetrieveModel;

impl PipelineStage for RetrieveModel {
    fn stage(&self) -> Stage {
        Stage::RetrieveModel
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        Ok(StageInputs {
            settings: serde_json::json!({ "enabled": ctx.cfg.model_retrieval, "default_student": ctx.resolved.student, "offline": ctx.paths.offline }),
            files: vec![ctx.layout.retrieval_query()],
        })
    }

    fn run(&self, ctx: &RunContext, _dir: &Path) -> Result<StageOutputs> {
        let query_path = ctx.layout.retrieval_query();
        let query = std::fs::read_to_string(&query_path)
            .with_context(|| format!("reading {}", query_path.display()))?;
        let mut choice = choose_student(
            &ctx.paths,
            &ctx.models,
            &query,
            ctx.cfg.model_retrieval,
            &ctx.resolved.student,
            ctx.cfg.student.is_some(),
            &ctx.rt,
        )?;
        if let Some(ask) = &ctx.opts.ask {
            eprintln!("students that train here:");
            for (i, s) in choice.trainable.iter().enumerate() {
                eprintln!("  {}) {s}", i + 1);
            }
            if !choice.candidates.is_empty() {
                eprintln!("the model retriever's ranking: {}", choice.candidates.join(", "));
            }
            let pick = ask(
                "student (a number of the list, or a student: decoder, warm-start, tiny:H:L:A, a folder)",
                &choice.student,
            );
            let picked = match pick.trim().parse::<usize>() {
                Ok(i) if (1..=choice.trainable.len()).contains(&i) => {
                    choice.trainable[i - 1].clone()
                }
                _ => pick.trim().to_string(),
            };
            if picked != choice.student {
                picked.parse::<crate::trainer::StudentSpec>()?;
                choice.why = format!(
                    "picked in the terminal (the default was `{}`: {})",
                    choice.student, choice.why
                );
                choice.student = picked;
                choice.same_as_default = choice.student == choice.default_student;
            }
        }
        let out = ctx.layout.choice();
        write_json(&out, &choice)?;
        Ok(StageOutputs {
            files: vec![out],
            summary: format!("student `{}`: {}", choice.student, choice.why),
        })
    }
}

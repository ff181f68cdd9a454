//! Stage 1: the prompt → instruction + demonstrations ([`crate::prompt_parser`]), and what the
//! retrievers search with (the instruction, or the teacher's English translation of it).

use std::path::Path;

use anyhow::{Context, Result};

use super::PipelineStage;
use crate::pipeline::config::TeacherSource;
use crate::pipeline::context::RunContext;
use crate::pipeline::stage::{Stage, StageInputs, StageOutputs};
use crate::prompt_parser::{self, Language, ParseMode, ParserConfig};
use crate::teacher::Teacher;
use crate::util::fs::{write_atomic, write_json};

pub struct Parse;

fn mode(ctx: &RunContext) -> ParseMode {
    if ctx.cfg.teacher == TeacherSource::Recorded {
        ParseMode::Deterministic
    } else {
        ParseMode::Auto
    }
}

impl PipelineStage for Parse {
    fn stage(&self) -> Stage {
        Stage::Parse
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let mode = match mode(ctx) {
            ParseMode::Deterministic => "layout rules",
            _ => "LLM, layout rules as fallback",
        };
        Ok(StageInputs {
            settings: serde_json::json!({ "prompt": ctx.prompt, "teacher": ctx.teacher_id, "mode": mode, "translate": ctx.cfg.translate_instruction }),
            files: vec![],
        })
    }

    fn run(&self, ctx: &RunContext, _dir: &Path) -> Result<StageOutputs> {
        let parser = ParserConfig { mode: mode(ctx), ..ParserConfig::default() };
        let teacher = ctx.teacher()?;
        let parsed = ctx.rt.block_on(prompt_parser::parse_prompt(
            &ctx.prompt,
            teacher.map(|t| t as &dyn Teacher),
            &parser,
        ))?;
        let mut notes = Vec::new();
        if parsed.demonstrations.is_empty() {
            notes.push("the prompt has no demonstrations: the generator works from the instruction alone (add a few `input`/`output` examples for better data)".to_string());
        }
        if parsed.language != Language::English {
            notes.push(format!(
                "the instruction is in {} (detected); the dataset retriever's encoder reads English best",
                parsed.language.name()
            ));
        }
        for n in &notes {
            eprintln!("warning: {n}");
        }
        let query = if ctx.cfg.translate_instruction && parsed.language != Language::English {
            let t = teacher.context(
                "--translate-instruction needs a live teacher (--teacher local or openai)",
            )?;
            let english = ctx.rt.block_on(translate_to_english(t, &parsed.instruction))?;
            notes.push(format!(
                "the retrievers search with the teacher's English translation: {}",
                crate::util::text::flat_excerpt(&english, 200)
            ));
            english
        } else {
            parsed.instruction.clone()
        };
        let layout = &ctx.layout;
        write_atomic(&layout.retrieval_query(), query.as_bytes())?;
        write_json(&layout.parsed(), &parsed)?;
        write_json(&layout.notes(Stage::Parse), &notes)?;
        Ok(StageOutputs {
            files: vec![layout.parsed(), layout.retrieval_query()],
            summary: format!(
                "instruction of {} characters ({}), {} demonstrations",
                parsed.instruction.chars().count(),
                parsed.language.name(),
                parsed.demonstrations.len()
            ),
        })
    }
}

/// The instruction in English, by the teacher (greedy), for the retrievers.
async fn translate_to_english(teacher: &dyn Teacher, instruction: &str) -> Result<String> {
    use crate::teacher::{ChatRequest, SamplingParams};
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: Some(300),
        n: 1,
        seed: Some(0),
        ..Default::default()
    };
    let prompt = format!(
        "Translate this task description into English. Answer with the translation only.\n\n{}",
        instruction.trim()
    );
    let response = teacher.chat(&ChatRequest::user(prompt, params)).await.with_context(|| {
        format!("translating the instruction with {} {}", teacher.backend(), teacher.model())
    })?;
    let text = response.choices.first().map(|c| c.content.trim().to_string()).unwrap_or_default();
    anyhow::ensure!(
        !text.is_empty(),
        "the teacher returned an empty translation; run without --translate-instruction"
    );
    Ok(text)
}

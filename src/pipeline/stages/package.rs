//! Stage 8: the deployable folder `model/` — weights, tokenizer, `p2m.json` (instruction,
//! template, generation settings) and a model card that says where the data came from
//! ([`crate::pipeline::package`]).

use std::path::Path;

use anyhow::Result;

use super::{existing, list_files_of, read_stage_json, PipelineStage};
use crate::data::diagnostics::DataDiagnostics;
use crate::data::examples::read_examples_jsonl;
use crate::data::gate::GateOutcome;
use crate::evaluator::baselines::BaselineComparison;
use crate::evaluator::metric_choice::MetricChoice;
use crate::pipeline::context::RunContext;
use crate::pipeline::evaluate::MetricResult;
use crate::pipeline::package::{self, CardFacts};
use crate::pipeline::stage::{read_record, record_path, Stage, StageInputs, StageOutputs};
use crate::pipeline::student::StudentChoice;
use crate::prompt_parser::ParsedPrompt;

pub struct Package;

/// The stages whose notes the card repeats.
const NOTED: [Stage; 4] = [Stage::Parse, Stage::RetrieveDatasets, Stage::Assemble, Stage::Evaluate];

impl PipelineStage for Package {
    fn stage(&self) -> Stage {
        Stage::Package
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let layout = &ctx.layout;
        let mut files = list_files_of(&layout.trained())?;
        files.extend([layout.metrics(), layout.parsed_for_training(), layout.choice()]);
        // What the card reads besides: every earlier stage's record (its summary) and notes, the
        // row counts of the data, and the generation's cost.
        files.extend(existing(
            Stage::ALL
                .into_iter()
                .filter(|s| *s != Stage::Package)
                .map(|s| record_path(layout.dir(), s))
                .chain(NOTED.map(|s| layout.notes(s)))
                .chain([layout.generated(), layout.retrieved(), layout.generation_log()])
                .chain([
                    layout.data_diagnostics(),
                    layout.data_gate(),
                    layout.metric_choice(),
                    layout.baselines(),
                ]),
        ));
        Ok(StageInputs {
            settings: serde_json::json!({
                "executor": ctx.resolved.executor, "name": ctx.name, "prompt_source": ctx.cfg.prompt_source,
                "task": ctx.task.as_ref().map(|t| &t.name), "teacher": ctx.teacher_id, "real_test": ctx.real_test_identity(),
            }),
            files,
        })
    }

    fn run(&self, ctx: &RunContext, _dir: &Path) -> Result<StageOutputs> {
        let layout = &ctx.layout;
        let rows = |p: &Path| read_examples_jsonl(p).map(|r| r.len()).unwrap_or(0);
        let generated_rows = rows(&layout.generated());
        let mut sources = vec![match &ctx.recorded {
            Some(r) => format!("generated: {generated_rows} examples by {} recorded in the paper authors' runs ({}; the mirror's MANIFEST.tsv gives their licence)", r.model, r.generated),
            None => format!("generated: {generated_rows} examples by {} (the teacher's terms of use apply to its outputs)", ctx.teacher_id),
        }];
        if rows(&layout.retrieved()) > 0 {
            let what = read_record(layout.dir(), Stage::RetrieveDatasets)
                .map(|r| r.summary)
                .unwrap_or_default();
            sources.push(format!("retrieved: {what}"));
        }
        if let Some(spec) = &ctx.test_dataset {
            match ctx.registry.dataset(spec) {
                Ok(d) => sources.push(format!(
                    "real test set: {} ({} rows, licence {}; {})",
                    d.id,
                    d.rows.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
                    d.license,
                    d.title
                )),
                Err(_) => sources.push(format!("real test set: {spec}")),
            }
        }
        let teacher_cost_usd = match &ctx.recorded {
            Some(_) => None,
            None => {
                read_stage_json::<crate::dataset_generator::GenerationLog>(&layout.generation_log())
                    .ok()
                    .map(|l| l.cost_usd)
            }
        };
        let parsed: ParsedPrompt = read_stage_json(&layout.parsed_for_training())?;
        let metrics: Vec<MetricResult> = read_stage_json(&layout.metrics())?;
        let choice: StudentChoice = read_stage_json(&layout.choice())?;
        let choice_of_metric = read_stage_json::<MetricChoice>(&layout.metric_choice()).ok();
        let data_check = DataDiagnostics::read(&layout.data_diagnostics()).ok().map(|d| {
            let gate = read_stage_json::<GateOutcome>(&layout.data_gate())
                .map(|g| g.to_markdown(&ctx.cfg.data_gate))
                .unwrap_or_default();
            format!("{}\n\n{gate}", d.to_markdown())
        });
        let card = CardFacts {
            sources,
            name: ctx.name.clone(),
            task: ctx.task.as_ref().map(|t| t.name.clone()),
            prompt_source: ctx.cfg.prompt_source.clone(),
            teacher: match &ctx.recorded {
                Some(r) => {
                    format!("the paper authors' recorded {} generations ({})", r.model, r.generated)
                }
                None => ctx.teacher_id.clone(),
            },
            teacher_cost_usd,
            stages: Stage::ALL
                .iter()
                .filter(|s| **s != Stage::Package)
                .filter_map(|s| {
                    read_record(layout.dir(), *s).map(|r| (s.name().to_string(), r.summary))
                })
                .collect(),
            student: choice,
            metrics,
            metric: choice_of_metric.as_ref().map(|c| c.names()).unwrap_or_else(|| {
                let diagnostics = DataDiagnostics::read(&layout.data_diagnostics()).ok();
                ctx.metric_choice(diagnostics.as_ref()).names()
            }),
            metric_why: choice_of_metric.map(|c| c.why),
            data_check,
            baselines: read_stage_json::<Vec<BaselineComparison>>(&layout.baselines())
                .map(|all| {
                    all.iter()
                        .map(|c| format!("{} test set:\n\n{}", c.test_set, c.to_markdown()))
                        .collect()
                })
                .unwrap_or_default(),
            notes: NOTED
                .iter()
                .filter_map(|s| read_stage_json::<Vec<String>>(&layout.notes(*s)).ok())
                .flatten()
                .collect(),
        };
        let model_dir = layout.model();
        let files = package::package(
            &layout.trained(),
            &model_dir,
            &ctx.prompt,
            &parsed,
            &ctx.resolved.executor,
            &card,
        )?;
        Ok(StageOutputs {
            files,
            summary: format!("{} (model_card.md, p2m.json)", model_dir.display()),
        })
    }
}

//! Stage 8: the deployable folder `model/` — weights, tokenizer, `p2m.json` (instruction,
//! template, generation settings), the files transformers reads, and a model card (with the hub's
//! front matter) that says where the data came from ([`crate::pipeline::package`]) — and the
//! generated data as a hub dataset folder `dataset/` ([`crate::deploy::hub`]).

use std::path::Path;

use anyhow::Result;

use super::{existing, list_files_of, read_rows, read_stage_json, PipelineStage};
use crate::data::diagnostics::DataDiagnostics;
use crate::data::examples::read_examples_jsonl;
use crate::data::gate::GateOutcome;
use crate::deploy::hub::{self, DatasetFacts, Licence};
use crate::deploy::transformers::Architecture;
use crate::evaluator::baselines::BaselineComparison;
use crate::evaluator::metric_choice::MetricChoice;
use crate::pipeline::assemble::Row;
use crate::pipeline::context::RunContext;
use crate::pipeline::evaluate::MetricResult;
use crate::pipeline::package::{self, CardFacts};
use crate::pipeline::stage::{read_record, record_path, Stage, StageInputs, StageOutputs};
use crate::pipeline::student::StudentChoice;
use crate::prompt_parser::ParsedPrompt;

pub struct Package;

/// The assembled splits the dataset folder publishes (their generated rows).
const SPLITS: [&str; 3] = ["train", "validation", "test"];

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
                .chain(SPLITS.map(|s| layout.split(s)))
                .chain([
                    layout.data_diagnostics(),
                    layout.data_gate(),
                    layout.metric_choice(),
                    layout.baselines(),
                    layout.selection(),
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
        let splits: Vec<(&str, Vec<Row>)> =
            SPLITS.iter().map(|s| Ok((*s, read_rows(&layout.split(s))?))).collect::<Result<_>>()?;
        let hub_facts = HubFacts::gather(ctx, &choice, &splits, &metrics);
        let card = CardFacts {
            licences: hub_facts.licences.clone(),
            base_model: hub_facts.base_model.clone(),
            datasets: hub_facts.datasets.clone(),
            test_sets: hub_facts.test_sets.clone(),
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
        let mut files = package::package(
            &layout.trained(),
            &model_dir,
            &ctx.prompt,
            &parsed,
            &ctx.resolved.executor,
            &card,
        )?;
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
        let log = match &ctx.recorded {
            Some(_) => None,
            None => {
                read_stage_json::<crate::dataset_generator::GenerationLog>(&layout.generation_log())
                    .ok()
            }
        };
        let dataset_dir = layout.dataset();
        let counts = hub::write_dataset_folder(
            &dataset_dir,
            &splits,
            &DatasetFacts {
                name: &ctx.name,
                instruction: &parsed.instruction,
                teacher: &card.teacher,
                log: log.as_ref(),
                licence: hub_facts.generated_licence,
                architecture: Architecture::of_config(&config)?,
            },
        )?;
        files.extend(crate::util::fs::list_files(&dataset_dir)?);
        let rows: usize = counts.iter().map(|(_, n)| n).sum();
        Ok(StageOutputs {
            files,
            summary: format!(
                "{} (README.md, p2m.json, transformers files); {} ({rows} generated rows, README.md)",
                model_dir.display(),
                dataset_dir.display()
            ),
        })
    }
}

/// What the hub's front matter says beyond the card's prose.
struct HubFacts {
    licences: Vec<Licence>,
    generated_licence: Licence,
    base_model: Option<String>,
    datasets: Vec<String>,
    test_sets: Vec<(String, String, String)>,
}

impl HubFacts {
    fn gather(
        ctx: &RunContext,
        choice: &StudentChoice,
        splits: &[(&str, Vec<Row>)],
        metrics: &[MetricResult],
    ) -> HubFacts {
        use crate::trainer::StudentSpec;
        // The registry model the trained student started from (none for a random initialisation
        // or a folder): the chosen one, or what `--select-student` kept.
        let trained =
            read_stage_json::<crate::pipeline::student::StudentSelection>(&ctx.layout.selection())
                .map(|s| s.chosen)
                .unwrap_or_else(|_| choice.student.clone());
        let base = match trained.parse::<StudentSpec>() {
            Ok(StudentSpec::WarmStart { encoder }) => ctx.models.model(&encoder).ok(),
            Ok(StudentSpec::Decoder { model, .. }) => ctx.models.model(&model).ok(),
            _ => None,
        };
        let mut licences = Vec::new();
        if let Some(m) = base {
            licences
                .push(Licence { what: format!("base model {}", m.id), licence: m.license.clone() });
        }
        let generated_licence = Licence {
            what: "generated data".into(),
            licence: match &ctx.recorded {
                Some(r) => format!("unknown: the paper authors' recorded {} generations (see the mirror's MANIFEST.tsv)", r.model),
                None => format!("unknown: outputs of {} under its provider's terms of use", ctx.teacher_id),
            },
        };
        licences.push(generated_licence.clone());
        // Retrieved datasets by the names the index gives them (hub names), from the rows' provenance.
        let mut retrieved: Vec<String> = splits
            .iter()
            .flat_map(|(_, rows)| rows.iter())
            .filter_map(|r| r.provenance.strip_prefix("retrieved:").map(str::to_string))
            .collect();
        retrieved.sort();
        retrieved.dedup();
        for name in &retrieved {
            let known = ctx.registry.datasets().iter().find(|d| d.hf_index_names.contains(name));
            licences.push(Licence {
                what: format!("retrieved dataset {name}"),
                licence: known
                    .map(|d| d.license.clone())
                    .unwrap_or_else(|| "unknown here (see the dataset's own card)".into()),
            });
        }
        let mut datasets = retrieved;
        let mut test_sets = Vec::new();
        if metrics.iter().any(|m| m.test_set == "generated") {
            test_sets.push((
                "generated".to_string(),
                "p2m-generated".to_string(),
                "the run's generated test split (dataset/test.parquet)".to_string(),
            ));
        }
        if metrics.iter().any(|m| m.test_set == "real") {
            let (id, name) = match ctx.test_dataset.as_deref().map(|s| (s, ctx.registry.dataset(s)))
            {
                Some((_, Ok(d))) => {
                    let id = d.hf.as_ref().map(|h| h.repo.clone()).unwrap_or_else(|| d.id.clone());
                    if d.hf.is_some() && !datasets.contains(&id) {
                        datasets.push(id.clone());
                    }
                    (id, d.title.clone())
                }
                Some((spec, Err(_))) => (spec.to_string(), spec.to_string()),
                None => ("real".to_string(), "the real test set".to_string()),
            };
            test_sets.push(("real".to_string(), id, name));
        }
        HubFacts {
            licences,
            generated_licence,
            base_model: base.and_then(|m| m.hf.as_ref().map(|h| h.repo.clone())),
            datasets,
            test_sets,
        }
    }
}

//! Stage 2: a dataset for the instruction ([`crate::dataset_retriever`]): the authors' recorded
//! retrieval, a folder the user gave, or the retriever's choice, textualised into
//! `{input, output}` rows.

use std::io::{BufRead, Read};
use std::path::Path;

use anyhow::{Context, Result};

use super::PipelineStage;
use crate::config::Paths;
use crate::data::examples::Example;
use crate::models::registry::ModelRegistry;
use crate::pipeline::assemble::{retrieved_folder_rows, write_source_rows, SourceRows};
use crate::pipeline::config::TeacherSource;
use crate::pipeline::context::{RunContext, RunTeacher};
use crate::pipeline::layout::RunLayout;
use crate::pipeline::recorded::{self, RecordedRetrieval};
use crate::pipeline::stage::{Stage, StageInputs, StageOutputs};
use crate::pipeline::ReadLine;
use crate::util::fs::write_json;

pub struct RetrieveDataset;

impl PipelineStage for RetrieveDataset {
    fn stage(&self) -> Stage {
        Stage::RetrieveDatasets
    }

    fn inputs(&self, ctx: &RunContext) -> Result<StageInputs> {
        let cfg = &ctx.cfg;
        let mut settings = serde_json::json!({
            "enabled": cfg.dataset_retrieval, "retrieved_dir": cfg.retrieved_dir, "recorded": ctx.recorded.as_ref().map(recorded::retrieval_plan),
            "teacher": if cfg.teacher == TeacherSource::Openai { ctx.teacher_id.clone() } else { "none".into() }, "exclude": ctx.real_test_identity(), "interactive": ctx.opts.interactive,
        });
        // Only a transform that is on enters the fingerprint: runs without one keep theirs.
        if let Some(t) = &ctx.resolved.transform {
            settings["transform"] = serde_json::json!({ "config": t, "teacher": ctx.teacher_id });
        }
        Ok(StageInputs { settings, files: vec![ctx.layout.parsed(), ctx.layout.retrieval_query()] })
    }

    fn run(&self, ctx: &RunContext, dir: &Path) -> Result<StageOutputs> {
        let cfg = &ctx.cfg;
        // The notes of this stage are this run's (the hub retrieval and the transform write them).
        let _ = std::fs::remove_file(ctx.layout.notes(Stage::RetrieveDatasets));
        let query = || -> Result<String> {
            let query_path = ctx.layout.retrieval_query();
            std::fs::read_to_string(&query_path)
                .with_context(|| format!("reading {}", query_path.display()))
        };
        // The retrieved source keeps the splits it has (the recorded retrived_jp2python's
        // train/val/test, a hub dataset's <split>.parquet): assembly splits only what is missing.
        let (source, what): (SourceRows, String) = if !cfg.dataset_retrieval {
            (SourceRows::default(), "off (--no-dataset-retrieval)".into())
        } else if let Some(teacher) = &ctx.recorded {
            match recorded::retrieval_plan(teacher) {
                RecordedRetrieval::Recorded { folder } => {
                    let (rows, _) = recorded::recorded_splits(&ctx.registry, &folder)?;
                    let what = format!(
                        "{} rows of the authors' recorded retrieved data {folder} ({})",
                        rows.len(),
                        split_sizes(&rows)
                    );
                    (rows, what)
                }
                // The paper retrieved here but the authors' run recorded nothing: the retriever
                // runs offline (MiniLM, no LLM) and takes the best dataset loadable here.
                RecordedRetrieval::RetrieveOffline { why } => {
                    let offline = Paths { offline: true, ..ctx.paths.clone() };
                    let (rows, what) = retrieve_dataset_rows(
                        &offline,
                        &query()?,
                        ctx.test_dataset.as_deref(),
                        None,
                        None,
                        &ctx.layout,
                        &ctx.rt,
                    )?;
                    (rows, format!("{what}; {why}"))
                }
                RecordedRetrieval::NotInPaper { why } => (SourceRows::default(), why),
            }
        } else if let Some(src) = &cfg.retrieved_dir {
            let rows = retrieved_folder_rows(src)?;
            let what =
                format!("{} rows from {} ({})", rows.len(), src.display(), split_sizes(&rows));
            (rows, what)
        } else {
            let teacher = if cfg.teacher == TeacherSource::Openai { ctx.teacher()? } else { None };
            let terminal = if ctx.opts.interactive { ctx.opts.read_line.as_ref() } else { None };
            retrieve_dataset_rows(
                &ctx.paths,
                &query()?,
                ctx.test_dataset.as_deref(),
                terminal,
                teacher,
                &ctx.layout,
                &ctx.rt,
            )?
        };
        let (source, what, mut files) = match &ctx.resolved.transform {
            Some(t) if !source.is_empty() => transform_source(ctx, dir, &source, what, t)?,
            _ => (source, what, Vec::new()),
        };
        files.extend(write_source_rows(
            &ctx.layout.stage_dir(Stage::RetrieveDatasets),
            RETRIEVED_STEM,
            &source,
        )?);
        Ok(StageOutputs { files, summary: what })
    }
}

/// The transform step ([`crate::dataset_transformer`]) over the retrieved rows: the teacher's
/// rewrites become the source (a training pool that assembly splits), its counts go in the
/// summary and the notes (so in the card), its plan and log beside the rows.
fn transform_source(
    ctx: &RunContext,
    dir: &Path,
    source: &SourceRows,
    what: String,
    cfg: &crate::dataset_transformer::TransformConfig,
) -> Result<(SourceRows, String, Vec<std::path::PathBuf>)> {
    use crate::dataset_transformer::{transform, write_transformed, TRANSFORM_LOG_FILE};
    let parsed: crate::prompt_parser::ParsedPrompt = super::read_stage_json(&ctx.layout.parsed())?;
    let teacher = ctx.teacher()?.context(
        "the transform of retrieved rows needs a live teacher (--teacher local or openai)",
    )?;
    let rows = source.all_rows();
    let progress = crate::util::progress::Progress::new(true, "transforming", 0, "rows");
    let result = ctx.rt.block_on(transform(teacher, &parsed, &rows, cfg, Some(&progress)));
    progress.finish_and_clear();
    let transformed = match result {
        Ok(t) => t,
        Err(e) => {
            if let crate::dataset_transformer::TransformError::Stopped { partial, .. } = &e {
                write_transformed(dir, partial)?;
            }
            let why = if e.is_budget_exhausted() {
                "the transform stopped at the budget; a rerun with a larger --budget continues (answers already paid for are replayed from the run's cache)"
            } else {
                "the transform of retrieved rows stopped; a rerun continues (answers already paid for are replayed from the run's cache)"
            };
            return Err(anyhow::anyhow!(e).context(why));
        }
    };
    write_transformed(dir, &transformed)?;
    let line = transformed.log.describe();
    let notes_path = ctx.layout.notes(Stage::RetrieveDatasets);
    let mut notes: Vec<String> = super::read_stage_json(&notes_path).unwrap_or_default();
    notes.push(format!("Retrieved data transformed: {line}."));
    write_json(&notes_path, &notes)?;
    let summary = format!("{what}; {line}");
    let rows = SourceRows::pool(transformed.examples);
    Ok((rows, summary, vec![dir.join(TRANSFORM_LOG_FILE)]))
}

/// The stem of the stage's row files (`retrieved.jsonl`, `retrieved_validation.jsonl`, …).
pub const RETRIEVED_STEM: &str = "retrieved";

/// `3000 train, 300 validation, 300 test` (the splits a source has).
fn split_sizes(rows: &SourceRows) -> String {
    let mut parts = vec![format!("{} train", rows.train.len())];
    if let Some(v) = &rows.validation {
        parts.push(format!("{} validation", v.len()));
    }
    if let Some(t) = &rows.test {
        parts.push(format!("{} test", t.len()));
    }
    parts.join(", ")
}

/// Lines from a person at a terminal, as the dataset chooser reads them; the binary supplies the
/// lines (the library never reads standard input itself).
struct TerminalLines<'a> {
    read_line: &'a ReadLine,
    line: String,
    pos: usize,
}

impl Read for TerminalLines<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for TerminalLines<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos >= self.line.len() {
            self.line = (self.read_line)()?;
            self.pos = 0;
        }
        Ok(&self.line.as_bytes()[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.line.len());
    }
}

/// Retrieve a dataset for the instruction (excluding the real test set's own dataset) and
/// textualise it into the stage's `dataset/` folder; returns its rows.
fn retrieve_dataset_rows(
    paths: &Paths,
    query: &str,
    exclude: Option<&str>,
    terminal: Option<&ReadLine>,
    teacher: Option<&RunTeacher>,
    layout: &RunLayout,
    rt: &tokio::runtime::Runtime,
) -> Result<(SourceRows, String)> {
    use crate::dataset_retriever::{select_dataset, Chooser, SelectionRequest};
    // The paper's DataFinder encoder online, MiniLM offline (or when DataFinder cannot be fetched).
    let models = ModelRegistry::load(paths.clone())?;
    let (encoder, encoder_notes) =
        crate::dataset_retriever::choose_encoder(&models, None, paths.offline)?;
    let (retriever, registry) =
        crate::dataset_retriever::open_dataset_retriever_with(paths, None, encoder, false)?;
    let request = SelectionRequest {
        instruction: query.to_string(),
        top_k: 25,
        max_rows_per_split: 3000,
        hf_config: None,
        out: Some(layout.retrieved_dataset()),
        exclude_registry_ids: exclude.map(|e| vec![e.to_string()]).unwrap_or_default(),
        within_top_k: true,
    };
    let mut stderr = std::io::stderr();
    let mut lines =
        terminal.map(|read_line| TerminalLines { read_line, line: String::new(), pos: 0 });
    let interactive = lines.is_some();
    let chooser = match (&mut lines, teacher) {
        (Some(input), _) => Chooser::Interactive { input, output: &mut stderr },
        (None, Some(t)) => Chooser::Llm { teacher: t, votes: 3 },
        (None, None) => Chooser::Default,
    };
    let mut fallback_note = None;
    let selection = match select_dataset(&retriever, &registry, paths, &request, chooser, rt) {
        Ok(s) => s,
        // Online, a chosen hub dataset that cannot be loaded (no network, a gated dataset) is not
        // the end of the run: the best dataset that loads here is taken instead, and said so.
        Err(e) if !paths.offline && !interactive => {
            // A plain line for the notes and the card; the error chain goes to the log.
            eprintln!("warning: the chosen dataset could not be loaded: {e:#}");
            fallback_note = Some(format!(
                "the chosen dataset could not be loaded from the hub, the best of the top {} that loads here was used",
                request.top_k
            ));
            let local = Paths { offline: true, ..paths.clone() };
            select_dataset(&retriever, &registry, &local, &request, Chooser::Default, rt)?
        }
        Err(e) => return Err(e),
    };
    let notes: Vec<String> = encoder_notes
        .into_iter()
        .chain(fallback_note)
        .chain(selection.notes.iter().cloned())
        .collect();
    write_json(&layout.notes(Stage::RetrieveDatasets), &notes)?;
    let Some(chosen) = &selection.chosen else {
        return Ok((SourceRows::default(), "no dataset chosen (generated data only)".into()));
    };
    let rows = retrieved_folder_rows(&layout.retrieved_dataset())?;
    let what = format!(
        "{} rows of `{}` ({}; {})",
        rows.len(),
        chosen.name,
        selection.chosen_by,
        split_sizes(&rows)
    );
    Ok((rows, what))
}

/// The `{input, references}` rows of a retrieved dataset folder as examples (first reference),
/// every split together.
pub fn read_retrieved_dir(dir: &Path) -> Result<Vec<Example>> {
    Ok(retrieved_folder_rows(dir)?.all_rows())
}

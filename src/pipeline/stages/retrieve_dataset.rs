//! Stage 2: a dataset for the instruction ([`crate::dataset_retriever`]): the authors' recorded
//! retrieval, a folder the user gave, or the retriever's choice, textualised into
//! `{input, output}` rows.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::PipelineStage;
use crate::config::Paths;
use crate::data::examples::{write_examples_jsonl, Example};
use crate::models::registry::ModelRegistry;
use crate::pipeline::config::TeacherSource;
use crate::pipeline::context::{RunContext, RunTeacher};
use crate::pipeline::layout::RunLayout;
use crate::pipeline::recorded;
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
        Ok(StageInputs {
            settings: serde_json::json!({
                "enabled": cfg.dataset_retrieval, "retrieved_dir": cfg.retrieved_dir, "recorded": ctx.recorded.as_ref().and_then(|r| r.retrieved.clone()),
                "teacher": if cfg.teacher == TeacherSource::Openai { ctx.teacher_id.clone() } else { "none".into() }, "exclude": ctx.real_test_identity(), "interactive": ctx.opts.interactive,
            }),
            files: vec![ctx.layout.parsed(), ctx.layout.retrieval_query()],
        })
    }

    fn run(&self, ctx: &RunContext, _dir: &Path) -> Result<StageOutputs> {
        let cfg = &ctx.cfg;
        let (rows, what): (Vec<Example>, String) = if !cfg.dataset_retrieval {
            (vec![], "off (--no-dataset-retrieval)".into())
        } else if let Some(folder) = ctx.recorded.as_ref().and_then(|r| r.retrieved.clone()) {
            let (rows, _) = recorded::recorded_examples(&ctx.registry, &folder, &["train"])?;
            let n = rows.len();
            (rows, format!("{n} rows of the authors' recorded retrieved data {folder}"))
        } else if ctx.recorded.is_some() {
            (vec![], "none: the authors retrieved no dataset for this task".into())
        } else if let Some(src) = &cfg.retrieved_dir {
            let rows = read_retrieved_dir(src)?;
            let n = rows.len();
            (rows, format!("{n} rows from {}", src.display()))
        } else {
            let query_path = ctx.layout.retrieval_query();
            let query = std::fs::read_to_string(&query_path)
                .with_context(|| format!("reading {}", query_path.display()))?;
            let teacher = if cfg.teacher == TeacherSource::Openai { ctx.teacher()? } else { None };
            let terminal = if ctx.opts.interactive { ctx.opts.read_line.as_ref() } else { None };
            retrieve_dataset_rows(
                &ctx.paths,
                &query,
                ctx.test_dataset.as_deref(),
                terminal,
                teacher,
                &ctx.layout,
                &ctx.rt,
            )?
        };
        let out = ctx.layout.retrieved();
        write_examples_jsonl(&out, &rows)?;
        Ok(StageOutputs { files: vec![out], summary: what })
    }
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
) -> Result<(Vec<Example>, String)> {
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
            fallback_note = Some(format!(
                "the chosen dataset could not be loaded ({}); the best of the top {} that loads here instead",
                e.chain().last().map(|c| c.to_string()).unwrap_or_default(),
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
        return Ok((vec![], "no dataset chosen (generated data only)".into()));
    };
    let rows = read_retrieved_dir(&layout.retrieved_dataset())?;
    let n = rows.len();
    Ok((rows, format!("{n} rows of `{}` ({})", chosen.name, selection.chosen_by)))
}

/// The `{input, references}` rows of a retrieved dataset folder as examples (first reference).
pub fn read_retrieved_dir(dir: &Path) -> Result<Vec<Example>> {
    let mut rows = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading the retrieved dataset folder {} (made by `p2m retrieve-dataset --out`)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no <split>.parquet files (made by `p2m retrieve-dataset --out`)",
        dir.display()
    );
    for f in files {
        let frame = crate::report::read_parquet(&f)?;
        let inputs = crate::data::loaders::string_column(&frame, crate::data::loaders::INPUT)?;
        let refs =
            crate::data::loaders::string_list_column(&frame, crate::data::loaders::REFERENCES)?;
        rows.extend(
            inputs
                .into_iter()
                .zip(refs)
                .filter_map(|(i, r)| r.into_iter().next().map(|o| Example::new(i, o))),
        );
    }
    Ok(rows)
}

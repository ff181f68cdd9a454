//! §3.2 end to end for one instruction: rank the index, choose a dataset (a config file, a person,
//! an LLM, or the best one that loads here), choose its columns, load its rows (local copy or the
//! hub) and textualise them into a folder. `p2m retrieve-dataset` and the pipeline both call
//! [`select_dataset`]; the binary only prints the result.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::choice::{
    interactive_columns, interactive_pick, llm_rerank, llm_select_columns, SelectionConfig,
};
use super::hub::{self, default_hub_columns};
use super::index::{Candidate, DatasetRetriever};
use super::textualise::{
    default_columns, load_raw, save_with_source, ColumnChoice, HubSource, RawSplit, SavedDataset,
};
use crate::config::Paths;
use crate::data::registry::Registry;
use crate::teacher::Teacher;

/// Who chooses the dataset and its columns.
pub enum Chooser<'a> {
    /// A TOML file naming the dataset (and optionally the columns); `path` is for messages.
    Config { config: &'a SelectionConfig, path: &'a Path },
    /// A person at a terminal.
    Interactive { input: &'a mut dyn BufRead, output: &'a mut dyn Write },
    /// An LLM: a majority over `votes` sampled reranks, then its column choice.
    Llm { teacher: &'a dyn Teacher, votes: u32 },
    /// Nobody: the best-ranked dataset that loads here and its natural columns.
    Default,
}

/// What to retrieve and where to put it.
#[derive(Debug, Clone)]
pub struct SelectionRequest {
    pub instruction: String,
    /// Candidates shown (and offered to the LLM or the person); the reference's 25.
    pub top_k: usize,
    /// Rows kept per split.
    pub max_rows_per_split: usize,
    /// The hub config of a dataset loaded from the hub.
    pub hf_config: Option<String>,
    /// Textualise the chosen dataset into this folder.
    pub out: Option<PathBuf>,
    /// Registry ids never to choose (e.g. the dataset the real test set comes from).
    pub exclude_registry_ids: Vec<String>,
    /// Choose only among the `top_k` candidates (as the reference, which shows the top 25), not
    /// the best loadable dataset at any rank; with none of them usable, no dataset is chosen.
    pub within_top_k: bool,
}

/// The outcome: the ranking, what was chosen and why, and what was saved.
#[derive(Debug, Clone)]
pub struct Selection {
    pub all: Vec<Candidate>,
    pub top: Vec<Candidate>,
    /// Per candidate of `top`: whether and from where it loads here.
    pub top_availability: Vec<String>,
    pub best_loadable: Option<Candidate>,
    pub best_usable: Option<Candidate>,
    pub chosen: Option<Candidate>,
    pub chosen_by: String,
    pub notes: Vec<String>,
    pub saved: Option<SavedDataset>,
}

/// The ranking for the request's instruction without the datasets that hold the test set, and a
/// note for each one left out.
fn retrieve_excluding(
    retriever: &DatasetRetriever,
    request: &SelectionRequest,
) -> Result<(Vec<Candidate>, Vec<String>)> {
    let mut all = retriever.retrieve(&request.instruction, None)?;
    let excluded = |c: &Candidate| {
        c.local.as_ref().is_some_and(|l| request.exclude_registry_ids.contains(&l.registry_id))
    };
    let notes = all
        .iter()
        .filter(|c| excluded(c))
        .map(|c| {
            format!(
                "`{}` (rank {}) left out: it holds the test set ({})",
                c.name,
                c.rank,
                c.local.as_ref().map(|l| l.registry_id.as_str()).unwrap_or("")
            )
        })
        .collect();
    all.retain(|c| !excluded(c));
    Ok((all, notes))
}

/// Rank, choose, load and save (see the module docs). LLM calls run on `runtime`.
pub fn select_dataset(
    retriever: &DatasetRetriever,
    registry: &Registry,
    paths: &Paths,
    request: &SelectionRequest,
    mut chooser: Chooser<'_>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Selection> {
    let (all, mut notes) = retrieve_excluding(retriever, request)?;
    let top: Vec<Candidate> = all.iter().take(request.top_k).cloned().collect();
    let pool = if request.within_top_k { &all[..request.top_k.min(all.len())] } else { &all[..] };
    let best_loadable = pool.iter().find(|c| c.loadable()).cloned();
    // Online every dataset of the index loads from the hub (datasets-server); offline only those
    // with a local source or a hub copy in the cache.
    let config = match &chooser {
        Chooser::Config { config, .. } => Some(*config),
        _ => None,
    };
    let hf_config = request.hf_config.clone().or_else(|| config.and_then(|c| c.config.clone()));
    let info_of = |name: &str| retriever.index.entries.iter().find(|e| e.name == name);
    let max_rows = config.and_then(|c| c.max_rows_per_split).unwrap_or(request.max_rows_per_split);
    let hub_request = |c: &Candidate| hub::HubRequest {
        dataset: c.name.clone(),
        config: hf_config.clone(),
        index_config: info_of(&c.name).and_then(|i| i.eval_config.clone()),
        max_rows_per_split: max_rows,
    };
    let from_hub = |c: &Candidate| {
        !c.loadable()
            && (!paths.offline || hub::find_cached(&paths.cache, &hub_request(c)).is_some())
    };
    let best_usable = pool.iter().find(|c| c.loadable() || from_hub(c)).cloned();
    if request.within_top_k && best_usable.is_none() {
        notes.push(format!(
            "none of the top {} datasets loads here: no dataset retrieved",
            request.top_k
        ));
    }
    let top_availability = top
        .iter()
        .map(|c| match &c.local {
            Some(l) if l.loadable => format!("✓ loadable here ({})", l.registry_id),
            _ if from_hub(c) => {
                if paths.offline { "✓ hub copy in the cache" } else { "✓ from the hub" }.to_string()
            }
            Some(l) => format!("local copy `{}` has no loader ({})", l.registry_id, l.format),
            None => "no local source".into(),
        })
        .collect();

    // Which dataset.
    let (mut chosen, chosen_by): (Option<Candidate>, String) = match &mut chooser {
        Chooser::Config { config, path } => {
            let c = all.iter().find(|c| c.name == config.dataset).cloned().with_context(|| {
                format!("{}: dataset `{}` is not in the index", path.display(), config.dataset)
            })?;
            (Some(c), "config file".into())
        }
        Chooser::Interactive { input, output } => {
            let pick = interactive_pick(&top, *input, *output)?;
            (pick.map(|i| top[i].clone()), "picked in the terminal".into())
        }
        Chooser::Llm { teacher, votes } => {
            let outcome =
                runtime.block_on(llm_rerank(*teacher, &request.instruction, &top, *votes, 0))?;
            notes.push(format!(
                "LLM rerank ({} `{}`): votes {:?}, {} abstentions",
                teacher.backend(),
                teacher.model(),
                outcome.votes,
                outcome.abstentions
            ));
            match outcome.chosen {
                Some(name) => (top.iter().find(|c| c.name == name).cloned(), "LLM rerank".into()),
                None => (best_usable.clone(), "best loadable (the LLM chose none)".into()),
            }
        }
        Chooser::Default if best_usable.as_ref().is_some_and(|c| !c.loadable()) => (
            best_usable.clone(),
            if paths.offline {
                "best-ranked dataset loadable here (its hub copy is cached)"
            } else {
                "best-ranked dataset (online: loaded from the hub)"
            }
            .into(),
        ),
        Chooser::Default => (best_usable.clone(), "best-ranked dataset loadable here".into()),
    };
    if let Some(c) = &chosen {
        if !c.loadable() && !from_hub(c) {
            notes.push(format!(
                "`{}` has no local source here (offline, and no hub copy in the cache); using the best loadable dataset instead",
                c.name
            ));
            chosen = best_loadable.clone();
        }
    }

    let mut saved = None;
    if let (Some(out), Some(c)) = (&request.out, &chosen) {
        // The rows with their source's column names: the local copy when there is one, else the hub.
        let (splits, inputs, source, format) = match &c.local {
            Some(local) if local.loadable => {
                let (splits, inputs) = load_raw(registry, &local.registry_id)?;
                (splits, inputs, None, Some(local.format.clone()))
            }
            _ => {
                let loaded = hub::load(
                    &paths.cache,
                    paths.offline,
                    &hub::ServerConfig::from_env(),
                    &hub_request(c),
                )
                .with_context(|| format!("loading `{}` from the hub", c.name))?;
                notes.extend(loaded.notes.iter().cloned());
                notes.push(format!(
                    "`{}` config `{}` ({}) {}",
                    c.name,
                    loaded.config,
                    loaded.config_chosen_by,
                    if loaded.from_cache {
                        format!("read from the cache {}", loaded.cache_dir.display())
                    } else {
                        format!(
                            "fetched from {} into {}",
                            loaded.source_url,
                            loaded.cache_dir.display()
                        )
                    }
                ));
                let source = HubSource {
                    dataset: loaded.dataset.clone(),
                    config: loaded.config.clone(),
                    config_chosen_by: loaded.config_chosen_by.clone(),
                    url: loaded.source_url.clone(),
                    from_cache: loaded.from_cache,
                    cache_dir: loaded.cache_dir.clone(),
                };
                let splits: Vec<RawSplit> =
                    loaded.splits.into_iter().filter(|s| s.rows() > 0).collect();
                anyhow::ensure!(
                    !splits.is_empty(),
                    "`{}` config `{}`: every split is empty on the datasets server; choose another dataset",
                    c.name,
                    source.config
                );
                (splits, Vec::new(), Some(source), None)
            }
        };
        let columns = splits[0].column_names();
        let example = splits[0].example(0);
        let (choice, columns_by): (ColumnChoice, String) = match &mut chooser {
            Chooser::Config { config, .. } if !config.input_columns.is_empty() => (
                ColumnChoice {
                    input: config.input_columns.clone(),
                    output: config
                        .output_column
                        .clone()
                        .context("the config names input_columns but no output_column")?,
                },
                "the config file".into(),
            ),
            Chooser::Interactive { input, output } => (
                interactive_columns(&columns, &example, *input, *output)?,
                "picked in the terminal".into(),
            ),
            Chooser::Llm { teacher, .. } => (
                runtime.block_on(llm_select_columns(
                    *teacher,
                    &request.instruction,
                    &c.name,
                    &c.description,
                    &columns,
                    &example,
                    3,
                ))?,
                format!("LLM column selection ({} `{}`)", teacher.backend(), teacher.model()),
            ),
            _ => match &format {
                Some(format) => (
                    default_columns(format).context("no default columns for this format")?,
                    format!("the natural columns of the local `{format}` format"),
                ),
                None => {
                    let mappings =
                        info_of(&c.name).map(|i| i.col_mappings.clone()).unwrap_or_default();
                    default_hub_columns(&columns, &mappings)?
                }
            },
        };
        notes.push(format!("columns: {columns_by}"));
        // A split without the chosen columns (an unlabelled test split) is left out, and said so.
        let wanted: Vec<&String> =
            choice.input.iter().chain(std::iter::once(&choice.output)).collect();
        let (usable, skipped): (Vec<RawSplit>, Vec<RawSplit>) =
            splits.into_iter().partition(|s| wanted.iter().all(|w| s.column_names().contains(w)));
        for s in &skipped {
            notes.push(format!("split `{}` lacks some of the chosen columns; left out", s.split));
        }
        anyhow::ensure!(
            !usable.is_empty(),
            "no split of `{}` has the columns {:?}",
            c.name,
            wanted
        );
        let (registry_id, chosen_by) = match &source {
            Some(s) => (
                format!("hub:{}/{}", s.dataset, s.config),
                format!("{chosen_by}; columns: {columns_by}"),
            ),
            None => (
                c.local.as_ref().map(|l| l.registry_id.clone()).unwrap_or_default(),
                chosen_by.clone(),
            ),
        };
        saved = Some(save_with_source(
            out,
            &c.name,
            &registry_id,
            &usable,
            &choice,
            max_rows,
            &chosen_by,
            inputs,
            source,
        )?);
    }
    Ok(Selection {
        all,
        top,
        top_availability,
        best_loadable,
        best_usable,
        chosen,
        chosen_by,
        notes,
        saved,
    })
}

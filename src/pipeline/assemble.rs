//! Train, validation and test sets from generated and retrieved examples, as the reference
//! assembles them (its `process_dataset_lists`): **each source is split and capped on its own** —
//! 0.7/0.1/0.2 of its rows, at most 3,500/500/1,000 of each, a seeded draw — and a source that
//! brings splits of its own keeps them (the authors' recorded MCoNaLa retrieval has train/val/test,
//! a retrieved hub dataset its `<split>.parquet` files, a recorded generation its generated test
//! set): only the splits it lacks are carved from its rows. Generated rows are task 0, retrieved
//! rows task 1, as the reference numbers them.
//!
//! A run's **training cut** (`max_train_examples`) then holds both sources in a stated share
//! (`retrieved_share`; by default equal numbers when both exist, as the paper's Table 2 pairs 3,000
//! of each), and a source with fewer rows than its share leaves the rest to the other; the
//! validation cut follows the same share. Without retrieved rows the cut keeps the first generated
//! rows of the seeded split, so such a run trains on exactly what it trained on before sources were
//! split separately. The generated test split is the run's "generated test set"; a retrieved
//! source's test split is held out as the reference holds it out, and not evaluated (it is not the
//! task's data). Every row keeps where it came from; [`Mix`] and the notes say what was used.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame, PolarsResult};
use serde::{Deserialize, Serialize};

use super::config::SplitConfig;
use crate::data::examples::{read_examples_jsonl, write_examples_jsonl, Example};
use crate::util::rng::{salt, seeded_subset, SplitMix64};

/// One assembled row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub input: String,
    pub output: String,
    /// 0: generated (or the user's own data), 1: retrieved, as the reference numbers them.
    pub task_id: u32,
    /// `generated:<teacher>` or `retrieved:<dataset>`.
    pub provenance: String,
}

/// One source's rows as they reach assembly: a pool to split, and whichever splits the source
/// brings of its own (those are kept, and only the missing ones are carved from `train`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceRows {
    /// The training rows; the pool the missing splits are carved from.
    pub train: Vec<Example>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Vec<Example>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<Example>>,
}

impl SourceRows {
    /// Rows without splits: validation and test are carved from them.
    pub fn pool(rows: Vec<Example>) -> Self {
        SourceRows { train: rows, validation: None, test: None }
    }

    /// Rows whose test set lies elsewhere (Table 2 tests every arm on held-out SQuAD articles):
    /// only a validation split is carved.
    pub fn tested_elsewhere(rows: Vec<Example>) -> Self {
        SourceRows { train: rows, validation: None, test: Some(Vec::new()) }
    }

    /// Rows of every split.
    pub fn len(&self) -> usize {
        self.train.len()
            + self.validation.as_ref().map_or(0, Vec::len)
            + self.test.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row of every split, train first.
    pub fn all_rows(&self) -> Vec<Example> {
        let mut all = self.train.clone();
        all.extend(self.validation.iter().flatten().cloned());
        all.extend(self.test.iter().flatten().cloned());
        all
    }
}

/// The files a source's rows are kept in between stages: `<stem>.jsonl` (the training rows, or all
/// of them when the source has no splits), `<stem>_validation.jsonl` and `<stem>_test.jsonl` (only
/// the splits the source has). Returns the files written.
pub fn write_source_rows(dir: &Path, stem: &str, rows: &SourceRows) -> Result<Vec<PathBuf>> {
    let mut files = vec![dir.join(format!("{stem}.jsonl"))];
    write_examples_jsonl(&files[0], &rows.train)
        .with_context(|| format!("writing {}", files[0].display()))?;
    for (split, part) in [("validation", &rows.validation), ("test", &rows.test)] {
        let path = dir.join(format!("{stem}_{split}.jsonl"));
        match part {
            Some(part) => {
                write_examples_jsonl(&path, part)
                    .with_context(|| format!("writing {}", path.display()))?;
                files.push(path);
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing the stale {}", path.display()))
                }
                _ => {}
            },
        }
    }
    Ok(files)
}

/// Read what [`write_source_rows`] wrote (a missing `<stem>.jsonl` is an error naming it; missing
/// split files mean the source has no such split).
pub fn read_source_rows(dir: &Path, stem: &str) -> Result<SourceRows> {
    let read = |path: PathBuf| -> Result<Vec<Example>> {
        read_examples_jsonl(&path).with_context(|| format!("reading {}", path.display()))
    };
    let optional = |split: &str| -> Result<Option<Vec<Example>>> {
        let path = dir.join(format!("{stem}_{split}.jsonl"));
        if path.exists() {
            read(path).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(SourceRows {
        train: read(dir.join(format!("{stem}.jsonl")))?,
        validation: optional("validation")?,
        test: optional("test")?,
    })
}

/// Which split a split name of a dataset is (`val`, `dev` and `validation` are validation).
pub fn split_role(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "train" => Some("train"),
        "validation" | "val" | "valid" | "dev" => Some("validation"),
        "test" => Some("test"),
        _ => None,
    }
}

/// A source from named splits (a `DatasetDict`, a folder of `<split>.parquet`): its train split is
/// the pool, its validation and test splits are kept. A source without a train split (NQ-Open's
/// validation questions only) is one pool of all its rows, as are splits of unknown names.
pub fn source_from_splits(splits: Vec<(String, Vec<Example>)>) -> SourceRows {
    let has_train = splits.iter().any(|(name, _)| split_role(name) == Some("train"));
    if !has_train {
        return SourceRows::pool(splits.into_iter().flat_map(|(_, rows)| rows).collect());
    }
    let mut source = SourceRows::default();
    for (name, rows) in splits {
        match split_role(&name) {
            Some("validation") => source.validation.get_or_insert_with(Vec::new).extend(rows),
            Some("test") => source.test.get_or_insert_with(Vec::new).extend(rows),
            _ => source.train.extend(rows),
        }
    }
    source
}

/// A retrieved dataset folder (`p2m retrieve-dataset --out`, the dataset-retrieval stage's
/// `dataset/`): its `<split>.parquet` files of `{input, references}` (first reference as the
/// output), the splits kept as [`source_from_splits`] keeps them.
pub fn retrieved_folder_rows(dir: &Path) -> Result<SourceRows> {
    use crate::data::loaders::{string_column, string_list_column, INPUT, REFERENCES};
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
    let mut splits = Vec::new();
    for f in files {
        let frame = crate::report::read_parquet(&f)?;
        let inputs = string_column(&frame, INPUT).with_context(|| f.display().to_string())?;
        let refs =
            string_list_column(&frame, REFERENCES).with_context(|| f.display().to_string())?;
        let rows = inputs
            .into_iter()
            .zip(refs)
            .filter_map(|(i, r)| r.into_iter().next().map(|o| Example::new(i, o)))
            .collect();
        let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        splits.push((name, rows));
    }
    Ok(source_from_splits(splits))
}

/// The cuts of one run over all sources together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cut {
    /// Training rows kept of both sources (0 = all).
    pub max_train: usize,
    /// Validation rows kept of both sources (0 = all).
    pub max_validation: usize,
    /// The retrieved rows' share of a cut when both sources have rows (0–1); `None`: equal numbers.
    pub retrieved_share: Option<f64>,
}

impl Cut {
    /// The cuts of a run's assembly stage: the scale's sizes and the run's share.
    pub fn of(resolved: &super::config::Resolved) -> Cut {
        Cut {
            max_train: resolved.max_train_examples,
            max_validation: resolved.max_validation_examples,
            retrieved_share: resolved.retrieved_share,
        }
    }
}

/// The training and validation mix actually used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    pub train_generated: usize,
    pub train_retrieved: usize,
    pub validation_generated: usize,
    pub validation_retrieved: usize,
    /// Retrieved rows held out as the retrieved source's test split (not evaluated).
    pub held_out_retrieved: usize,
    /// What the run asked for (`retrieved_share`); `None`: the default, equal numbers.
    pub retrieved_share_asked: Option<f64>,
    /// Retrieved rows over all training rows.
    pub retrieved_share_used: f64,
}

impl Mix {
    /// One sentence for the notes, the report and the model card.
    pub fn describe(&self) -> String {
        let asked = match self.retrieved_share_asked {
            Some(s) => format!("retrieved_share {s}"),
            None => "the default: equal numbers when both sources have rows".into(),
        };
        format!(
            "training mix: {} generated + {} retrieved rows (retrieved share {:.2}; asked: {asked}); validation: {} generated + {} retrieved",
            self.train_generated,
            self.train_retrieved,
            self.retrieved_share_used,
            self.validation_generated,
            self.validation_retrieved
        )
    }
}

/// The assembled sets and what assembly did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Assembled {
    pub train: Vec<Row>,
    pub validation: Vec<Row>,
    /// The generated test split (or the given generated test set): the run's generated test set.
    pub test: Vec<Row>,
    /// Test rows of the retrieved source, held out as the reference holds them out; not evaluated.
    #[serde(default)]
    pub held_out: Vec<Row>,
    #[serde(default)]
    pub mix: Mix,
    pub notes: Vec<String>,
}

/// One source split into its three parts (each already capped and seeded).
struct SourceSplit {
    train: Vec<Row>,
    validation: Vec<Row>,
    test: Vec<Row>,
}

/// Split one source as the reference does. `seed` is the stream of this source's shuffle; `what`
/// names the source in notes.
fn split_source(
    source: &SourceRows,
    task_id: u32,
    provenance: &str,
    what: &str,
    split: &SplitConfig,
    seed: u64,
    notes: &mut Vec<String>,
) -> SourceSplit {
    let row = |e: &Example| Row {
        input: e.input.clone(),
        output: e.output.clone(),
        task_id,
        provenance: provenance.to_string(),
    };
    // A given split is capped like a carved one, by a seeded draw that keeps its order.
    let given = |rows: &[Example], cap: usize, name: &str, notes: &mut Vec<String>| -> Vec<Row> {
        let keep = match cap {
            0 => Vec::new(),
            _ => seeded_subset(rows.len(), cap, seed, salt(&name.as_bytes()[..4])),
        };
        if keep.len() < rows.len() {
            notes.push(format!(
                "{what} {name} split cut from {} to {} rows (a seeded draw; the cap per source)",
                rows.len(),
                keep.len()
            ));
        }
        keep.into_iter().map(|i| row(&rows[i])).collect()
    };
    let mut pool: Vec<&Example> = source.train.iter().collect();
    let held: HashSet<&str> =
        source.validation.iter().chain(&source.test).flatten().map(|e| e.input.as_str()).collect();
    if !held.is_empty() {
        let before = pool.len();
        pool.retain(|e| !held.contains(e.input.as_str()));
        if before > pool.len() {
            notes.push(format!(
                "{} {what} examples whose input is in the {what} {} were removed from the training pool",
                before - pool.len(),
                if source.test.as_ref().is_some_and(|t| !t.is_empty()) { "test set" } else { "validation split" }
            ));
        }
    }
    SplitMix64::new(seed).shuffle(&mut pool);
    // `n × share / of`, rounded: the proportion of the splits still to be carved.
    let n = pool.len() as f64;
    let carve = |share: f64, of: f64, cap: usize| ((n * share / of).round() as usize).min(cap);
    let (n_test, n_val) = match (&source.test, &source.validation) {
        (None, None) => (
            carve(split.test, 1.0, split.max_test),
            carve(split.validation, 1.0, split.max_validation),
        ),
        (Some(_), None) => {
            (0, carve(split.validation, split.train + split.validation, split.max_validation))
        }
        (None, Some(_)) => (carve(split.test, split.train + split.test, split.max_test), 0),
        (Some(_), Some(_)) => (0, 0),
    };
    let n_train = pool.len().saturating_sub(n_test + n_val).min(split.max_train);
    let test = match &source.test {
        Some(t) => given(t, split.max_test, "test", notes),
        None => pool[..n_test].iter().map(|e| row(e)).collect(),
    };
    let validation = match &source.validation {
        Some(v) => given(v, split.max_validation, "validation", notes),
        None => pool[n_test..n_test + n_val].iter().map(|e| row(e)).collect(),
    };
    let train = pool[n_test + n_val..n_test + n_val + n_train].iter().map(|e| row(e)).collect();
    SourceSplit { train, validation, test }
}

/// How many rows of each source a cut of `cap` keeps: `(generated, retrieved)`. Everything when
/// there is no cut or it is not needed; otherwise the retrieved share (default one half, rounded)
/// of the cap when both sources have rows, a source short of its share leaving the rest to the
/// other.
pub fn cut_counts(
    generated: usize,
    retrieved: usize,
    cap: usize,
    share: Option<f64>,
) -> (usize, usize) {
    if cap == 0 || generated + retrieved <= cap {
        return (generated, retrieved);
    }
    let target = match (generated, retrieved) {
        (0, _) => cap,
        (_, 0) => 0,
        _ => (cap as f64 * share.unwrap_or(0.5).clamp(0.0, 1.0)).round() as usize,
    };
    let k_ret = target.min(retrieved);
    let k_gen = (cap - k_ret).min(generated);
    (k_gen, (cap - k_gen).min(retrieved))
}

/// Split each source on its own (the generated source with `split.seed`, the retrieved one with a
/// stream of its own), cut training and validation to the run's sizes in the share `cut` states,
/// and shuffle the training rows together.
pub fn assemble_sources(
    generated: &SourceRows,
    generated_by: &str,
    retrieved: &SourceRows,
    retrieved_from: &str,
    split: &SplitConfig,
    cut: &Cut,
) -> Assembled {
    let mut notes = Vec::new();
    let gen_prov = format!("generated:{generated_by}");
    let ret_prov = format!("retrieved:{retrieved_from}");
    let gen = split_source(generated, 0, &gen_prov, "generated", split, split.seed, &mut notes);
    let ret = split_source(
        retrieved,
        1,
        &ret_prov,
        "retrieved",
        split,
        split.seed ^ salt(b"retrv"),
        &mut notes,
    );
    let (mut gen_train, mut ret_train) = (gen.train, ret.train);
    let (k_gen, k_ret) =
        cut_counts(gen_train.len(), ret_train.len(), cut.max_train, cut.retrieved_share);
    if k_gen + k_ret < gen_train.len() + ret_train.len() {
        notes.push(format!(
            "training rows cut from {} generated + {} retrieved to {k_gen} + {k_ret} (the scale's max_train_examples {}; the first rows of each source's seeded split)",
            gen_train.len(),
            ret_train.len(),
            cut.max_train
        ));
    }
    gen_train.truncate(k_gen);
    ret_train.truncate(k_ret);
    let (mut gen_val, mut ret_val) = (gen.validation, ret.validation);
    let (v_gen, v_ret) =
        cut_counts(gen_val.len(), ret_val.len(), cut.max_validation, cut.retrieved_share);
    gen_val.truncate(v_gen);
    ret_val.truncate(v_ret);
    let mix = Mix {
        train_generated: gen_train.len(),
        train_retrieved: ret_train.len(),
        validation_generated: gen_val.len(),
        validation_retrieved: ret_val.len(),
        held_out_retrieved: ret.test.len(),
        retrieved_share_asked: cut.retrieved_share,
        retrieved_share_used: ret_train.len() as f64
            / (gen_train.len() + ret_train.len()).max(1) as f64,
    };
    notes.push(mix.describe());
    if !ret.test.is_empty() {
        notes.push(format!(
            "{} retrieved rows held out as the retrieved data's test split (as the reference holds it out; the generated test set is the generated data's own)",
            ret.test.len()
        ));
    }
    let mut train = gen_train;
    train.extend(ret_train);
    SplitMix64::new(split.seed ^ salt(b"train")).shuffle(&mut train);
    let mut validation = gen_val;
    validation.extend(ret_val);
    Assembled { train, validation, test: gen.test, held_out: ret.test, mix, notes }
}

/// The rows as a frame (input, output, task_id, provenance).
pub fn rows_frame(rows: &[Row]) -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(vec![
        Column::new("input".into(), rows.iter().map(|r| r.input.clone()).collect::<Vec<_>>()),
        Column::new("output".into(), rows.iter().map(|r| r.output.clone()).collect::<Vec<_>>()),
        Column::new("task_id".into(), rows.iter().map(|r| r.task_id).collect::<Vec<_>>()),
        Column::new(
            "provenance".into(),
            rows.iter().map(|r| r.provenance.clone()).collect::<Vec<_>>(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize, tag: &str) -> Vec<Example> {
        (0..n).map(|i| Example::new(format!("{tag}{i}"), format!("o{i}"))).collect()
    }

    /// A generated pool (with an optional given test set) and a retrieved pool, the default share.
    fn assemble(
        generated: &[Example],
        generated_by: &str,
        retrieved: &[Example],
        retrieved_from: &str,
        fixed_test: Option<&[Example]>,
        split: &SplitConfig,
        max_train: usize,
    ) -> Assembled {
        let generated = SourceRows {
            train: generated.to_vec(),
            validation: None,
            test: fixed_test.map(<[Example]>::to_vec),
        };
        assemble_sources(
            &generated,
            generated_by,
            &SourceRows::pool(retrieved.to_vec()),
            retrieved_from,
            split,
            &Cut { max_train, max_validation: split.max_validation, retrieved_share: None },
        )
    }

    fn inputs(rows: &[Row]) -> HashSet<String> {
        rows.iter().map(|r| r.input.clone()).collect()
    }

    fn count(rows: &[Row], task: u32) -> usize {
        rows.iter().filter(|r| r.task_id == task).count()
    }

    #[test]
    fn each_source_is_split_seventy_ten_twenty_on_its_own() {
        let a = assemble(&ex(100, "g"), "t", &ex(10, "r"), "ds", None, &SplitConfig::default(), 0);
        // Generated: 70/10/20. Retrieved: 7 train, 1 validation, 2 held out.
        assert_eq!((count(&a.train, 0), count(&a.validation, 0), a.test.len()), (70, 10, 20));
        assert_eq!((count(&a.train, 1), count(&a.validation, 1), a.held_out.len()), (7, 1, 2));
        assert!(a.train.iter().filter(|r| r.task_id == 1).all(|r| r.provenance == "retrieved:ds"));
        assert!(a.test.iter().all(|r| r.task_id == 0), "the generated test set is generated");
        for (x, y) in [(&a.train, &a.test), (&a.validation, &a.test), (&a.train, &a.held_out)] {
            assert!(inputs(x).is_disjoint(&inputs(y)));
        }
        assert_eq!(
            a.train,
            assemble(&ex(100, "g"), "t", &ex(10, "r"), "ds", None, &SplitConfig::default(), 0)
                .train,
            "seeded"
        );
        assert_eq!((a.mix.train_generated, a.mix.train_retrieved), (70, 7));
    }

    #[test]
    fn per_source_caps_apply_to_each_source() {
        let split =
            SplitConfig { max_train: 30, max_validation: 4, max_test: 5, ..Default::default() };
        let a = assemble_sources(
            &SourceRows::pool(ex(100, "g")),
            "t",
            &SourceRows::pool(ex(200, "r")),
            "ds",
            &split,
            &Cut { max_train: 0, max_validation: 0, retrieved_share: None },
        );
        assert_eq!((count(&a.train, 0), count(&a.train, 1)), (30, 30));
        assert_eq!((count(&a.validation, 0), count(&a.validation, 1)), (4, 4));
        assert_eq!((a.test.len(), a.held_out.len()), (5, 5));
    }

    /// A run without retrieved rows trains on what it trained on before the sources were split
    /// separately: the cut keeps the first rows of the seeded generated split. (These inputs are
    /// what the earlier single-pool assembly chose for the same call.)
    #[test]
    fn without_retrieved_rows_the_cut_keeps_the_earlier_rows() {
        let a = assemble(&ex(20, "g"), "t", &[], "", None, &SplitConfig::default(), 5);
        let train: Vec<&str> = a.train.iter().map(|r| r.input.as_str()).collect();
        let mut pool: Vec<usize> = (0..20).collect();
        SplitMix64::new(42).shuffle(&mut pool);
        // Test 4, validation 2, then the training slice's first 5, shuffled with the train stream.
        let mut expected: Vec<String> = pool[6..11].iter().map(|i| format!("g{i}")).collect();
        SplitMix64::new(42 ^ salt(b"train")).shuffle(&mut expected);
        assert_eq!(train, expected);
        assert_eq!(a.validation.len(), 2);
        assert!(a.notes.iter().any(|n| n.contains("cut from 14 generated + 0 retrieved to 5 + 0")));
        assert!(a.notes.iter().any(|n| n.starts_with("training mix: 5 generated + 0 retrieved")));
    }

    #[test]
    fn the_training_cut_holds_both_sources_in_equal_numbers_by_default() {
        // MCoNaLa's case: a few hundred generated rows beside 3,000 retrieved ones.
        let gen = SourceRows { train: ex(400, "g"), validation: None, test: Some(ex(50, "t")) };
        let ret = SourceRows {
            train: ex(3000, "r"),
            validation: Some(ex(400, "rv")),
            test: Some(ex(400, "rt")),
        };
        let split = SplitConfig { max_validation: 8, ..Default::default() };
        let cut = Cut { max_train: 64, max_validation: 8, retrieved_share: None };
        let a = assemble_sources(&gen, "t", &ret, "ds", &split, &cut);
        assert_eq!((count(&a.train, 0), count(&a.train, 1)), (32, 32));
        assert_eq!((count(&a.validation, 0), count(&a.validation, 1)), (4, 4));
        assert_eq!(a.held_out.len(), 400, "the retrieved test split is its own, held out");
        assert!(inputs(&a.held_out).iter().all(|i| i.starts_with("rt")));
        assert!(a
            .train
            .iter()
            .filter(|r| r.task_id == 1)
            .all(|r| r.input.starts_with('r') && !r.input.starts_with("rv")));
        assert!((a.mix.retrieved_share_used - 0.5).abs() < 1e-12);
        assert!(a.notes.iter().any(|n| n.contains("32 generated + 32 retrieved")), "{:?}", a.notes);
    }

    #[test]
    fn a_stated_share_is_kept_and_a_short_source_leaves_the_rest_to_the_other() {
        let split = SplitConfig::default();
        let both = |gen: usize, ret: usize, share: Option<f64>| {
            let a = assemble_sources(
                &SourceRows::pool(ex(gen, "g")),
                "t",
                &SourceRows::pool(ex(ret, "r")),
                "ds",
                &split,
                &Cut { max_train: 20, max_validation: 0, retrieved_share: share },
            );
            (count(&a.train, 0), count(&a.train, 1))
        };
        assert_eq!(both(100, 100, Some(0.25)), (15, 5));
        assert_eq!(both(100, 100, Some(0.0)), (20, 0));
        assert_eq!(both(100, 100, Some(1.0)), (0, 20));
        // 10 generated rows → 7 for training: retrieved rows fill the other 13.
        assert_eq!(both(10, 100, None), (7, 13));
        assert_eq!(both(100, 4, None), (17, 3), "4 retrieved rows → 3 train, the rest generated");
        assert_eq!(both(0, 100, None), (0, 20));
    }

    #[test]
    fn cut_counts_cover_the_edges() {
        assert_eq!(cut_counts(5, 5, 0, None), (5, 5), "0 = no cut");
        assert_eq!(cut_counts(5, 5, 10, Some(0.9)), (5, 5), "a cut that is not needed");
        assert_eq!(cut_counts(50, 50, 25, None), (12, 13), "rounded half up for retrieved");
        assert_eq!(cut_counts(50, 0, 25, Some(0.5)), (25, 0), "one source takes all");
    }

    #[test]
    fn a_fixed_test_set_is_removed_from_the_pool() {
        let gen = ex(50, "g");
        let test = gen[..5].to_vec();
        let a = assemble(&gen, "t", &[], "", Some(&test), &SplitConfig::default(), 0);
        assert_eq!(a.test.len(), 5);
        assert!(a
            .train
            .iter()
            .chain(&a.validation)
            .all(|r| !test.iter().any(|t| t.input == r.input)));
        assert_eq!(a.train.len() + a.validation.len(), 45);
        assert!(a.notes.iter().any(|n| n.contains("removed from the training pool")));
    }

    #[test]
    fn sources_from_named_splits_keep_them() {
        let s = source_from_splits(vec![
            ("train".into(), ex(3, "a")),
            ("val".into(), ex(2, "b")),
            ("test".into(), ex(1, "c")),
        ]);
        assert_eq!((s.train.len(), s.validation.unwrap().len(), s.test.unwrap().len()), (3, 2, 1));
        let only = source_from_splits(vec![("validation".into(), ex(4, "v"))]);
        assert_eq!(only, SourceRows::pool(ex(4, "v")), "no train split: one pool");
    }

    #[test]
    fn source_rows_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = SourceRows { train: ex(3, "a"), validation: Some(ex(2, "b")), test: None };
        let files = write_source_rows(dir.path(), "retrieved", &s).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(read_source_rows(dir.path(), "retrieved").unwrap(), s);
        let pool = SourceRows::pool(ex(2, "p"));
        write_source_rows(dir.path(), "retrieved", &pool).unwrap();
        assert_eq!(read_source_rows(dir.path(), "retrieved").unwrap(), pool, "stale splits go");
    }
}

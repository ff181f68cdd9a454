//! Train, validation and test sets from generated and retrieved examples, as the reference
//! assembles them: generated examples split 0.7/0.1/0.2 (capped at 3,500/500/1,000, seeded),
//! retrieved examples added to training as task 1 beside the generated task 0, all training rows
//! shuffled together. Every row keeps where it came from.

use std::collections::HashSet;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::config::SplitConfig;
use crate::data::examples::Example;
use crate::util::rng::SplitMix64;

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

/// The assembled sets and what assembly dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Assembled {
    pub train: Vec<Row>,
    pub validation: Vec<Row>,
    pub test: Vec<Row>,
    pub notes: Vec<String>,
}

/// Split `generated` (unless `fixed_test` is given: then it is the test set, and generated rows
/// whose input is in it are dropped from the pool first), add `retrieved` to training, shuffle,
/// and cap training at `max_train` (0 = no cap): generated rows are kept first and retrieved rows
/// fill the remainder.
pub fn assemble(
    generated: &[Example],
    generated_by: &str,
    retrieved: &[Example],
    retrieved_from: &str,
    fixed_test: Option<&[Example]>,
    split: &SplitConfig,
    max_train: usize,
) -> Assembled {
    let mut notes = Vec::new();
    let row = |e: &Example, task_id: u32, provenance: &str| Row {
        input: e.input.clone(),
        output: e.output.clone(),
        task_id,
        provenance: provenance.to_string(),
    };
    let gen_prov = format!("generated:{generated_by}");
    let mut pool: Vec<&Example> = generated.iter().collect();
    let mut test: Vec<Row> = Vec::new();
    if let Some(t) = fixed_test {
        let held: HashSet<&str> = t.iter().map(|e| e.input.as_str()).collect();
        let before = pool.len();
        pool.retain(|e| !held.contains(e.input.as_str()));
        if before > pool.len() {
            notes.push(format!("{} generated examples whose input is in the generated test set were removed from the training pool", before - pool.len()));
        }
        test = t.iter().map(|e| row(e, 0, &gen_prov)).collect();
    }
    SplitMix64::new(split.seed).shuffle(&mut pool);
    let n = pool.len();
    let (n_test, n_val) = if fixed_test.is_some() {
        (
            0,
            ((n as f64 * split.validation / (split.train + split.validation)).round() as usize)
                .min(split.max_validation),
        )
    } else {
        (
            ((n as f64 * split.test).round() as usize).min(split.max_test),
            ((n as f64 * split.validation).round() as usize).min(split.max_validation),
        )
    };
    let n_train = n.saturating_sub(n_test + n_val).min(split.max_train);
    if fixed_test.is_none() {
        test = pool[..n_test].iter().map(|e| row(e, 0, &gen_prov)).collect();
    }
    let validation: Vec<Row> =
        pool[n_test..n_test + n_val].iter().map(|e| row(e, 0, &gen_prov)).collect();
    let mut train: Vec<Row> = pool[n_test + n_val..n_test + n_val + n_train]
        .iter()
        .map(|e| row(e, 0, &gen_prov))
        .collect();
    // The cap keeps the task's own (generated) rows first; retrieved rows, a seeded draw, fill
    // what is left. A cut over both alike lets a large retrieved set crowd out the generated
    // rows, which are the only ones written for this exact task (measured: 4 of 256 rows).
    let cap = if max_train > 0 { max_train } else { usize::MAX };
    if train.len() > cap {
        notes.push(format!(
            "generated training rows cut from {} to {} (the scale's max_train_examples)",
            train.len(),
            cap
        ));
        train.truncate(cap);
    }
    let ret_prov = format!("retrieved:{retrieved_from}");
    let mut retrieved_rows: Vec<Row> = retrieved.iter().map(|e| row(e, 1, &ret_prov)).collect();
    let room = cap - train.len();
    if retrieved_rows.len() > room {
        SplitMix64::new(split.seed ^ 0x0072_6574_7276).shuffle(&mut retrieved_rows);
        notes.push(format!(
            "retrieved training rows cut from {} to {} (max_train_examples {} less the {} generated rows, which are kept first; a seeded draw)",
            retrieved_rows.len(),
            room,
            cap,
            train.len()
        ));
        retrieved_rows.truncate(room);
    }
    train.extend(retrieved_rows);
    SplitMix64::new(split.seed ^ 0x0074_7261_696e).shuffle(&mut train);
    Assembled { train, validation, test, notes }
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

    #[test]
    fn generated_rows_split_seventy_ten_twenty_and_retrieved_rows_join_training() {
        let a = assemble(&ex(100, "g"), "t", &ex(10, "r"), "ds", None, &SplitConfig::default(), 0);
        assert_eq!((a.train.len(), a.validation.len(), a.test.len()), (70 + 10, 10, 20));
        assert_eq!(
            a.train.iter().filter(|r| r.task_id == 1 && r.provenance == "retrieved:ds").count(),
            10
        );
        let inputs = |rows: &[Row]| rows.iter().map(|r| r.input.clone()).collect::<HashSet<_>>();
        assert!(
            inputs(&a.train).is_disjoint(&inputs(&a.test))
                && inputs(&a.validation).is_disjoint(&inputs(&a.test))
        );
        assert_eq!(
            a.train,
            assemble(&ex(100, "g"), "t", &ex(10, "r"), "ds", None, &SplitConfig::default(), 0)
                .train,
            "seeded"
        );
        let capped = assemble(&ex(100, "g"), "t", &[], "", None, &SplitConfig::default(), 16);
        assert_eq!(capped.train.len(), 16);
        assert_eq!(capped.notes.len(), 1);
    }

    #[test]
    fn the_training_cap_keeps_generated_rows_and_fills_with_retrieved() {
        let a = assemble(&ex(10, "g"), "t", &ex(300, "r"), "ds", None, &SplitConfig::default(), 16);
        assert_eq!(a.train.len(), 16);
        assert_eq!(a.train.iter().filter(|r| r.task_id == 0).count(), 7, "all 7 generated rows");
        assert_eq!(a.train.iter().filter(|r| r.task_id == 1).count(), 9);
        assert!(a.notes.iter().any(|n| n.contains("retrieved training rows cut from 300 to 9")));
        let many =
            assemble(&ex(100, "g"), "t", &ex(30, "r"), "ds", None, &SplitConfig::default(), 50);
        assert!(many.train.iter().all(|r| r.task_id == 0), "generated rows fill the cap first");
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
    }
}

//! The paper authors' recorded runs (`p2m_runs/` in the mirror, zhaochenyang20/prompt2model_test
//! upstream). Prediction folders are named
//! `<model>_<task>[_<generator config>]_<test set>_dataset_<with|without>_post_filter`, where the
//! test set is `real` (the task's real test set) or `generated_test` (a held-out part of the
//! generated data), e.g. `flan-t5-base_normalization_0.3_1.4_with_filtering_real_dataset_without_post_filter`.
//! Discovery reads the registry's file table, not a directory listing, so it sees the same runs
//! whether the files come from the mirror, the cache or a download.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::data::registry::Registry;

pub const GENERATED_DATASETS: &str = "p2m_runs/generation/generated_dataset";
pub const GPT_BASELINE: &str = "p2m_runs/baseline/gpt_baseline";

/// Task names used in the recorded runs.
pub const RECORDED_TASKS: [&str; 5] = ["SQuAD", "normalization", "jp2python", "NQ", "Chinese2SQL"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestSet {
    Real,
    GeneratedTest,
}

/// One recorded prediction folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RecordedRun {
    /// Registry folder, e.g. `p2m_runs/generation/generated_dataset/<name>`.
    pub folder: String,
    pub model: String,
    pub task: String,
    /// Generator configuration between task and test set (`default` when absent), e.g.
    /// `0.3_1.4_with_filtering` (initial/max temperature 0.3/1.4, duplicate filtering on).
    pub config: String,
    pub test_set: TestSet,
    pub post_filter: bool,
}

impl RecordedRun {
    /// Parse a folder name; `None` for folders that are not prediction folders.
    pub fn parse(name: &str) -> Option<(String, String, String, TestSet, bool)> {
        let (rest, post_filter) = if let Some(r) = name.strip_suffix("_dataset_with_post_filter") {
            (r, true)
        } else if let Some(r) = name.strip_suffix("_dataset_without_post_filter") {
            (r, false)
        } else {
            return None;
        };
        let (rest, test_set) = if let Some(r) = rest.strip_suffix("_generated_test") {
            (r, TestSet::GeneratedTest)
        } else if let Some(r) = rest.strip_suffix("_real") {
            (r, TestSet::Real)
        } else {
            return None;
        };
        for task in RECORDED_TASKS {
            let marker = format!("_{task}");
            if let Some(pos) = rest.find(&marker) {
                let after = &rest[pos + marker.len()..];
                if !(after.is_empty() || after.starts_with('_')) {
                    continue;
                }
                let model = rest[..pos].to_string();
                let config = after.trim_start_matches('_');
                let config =
                    if config.is_empty() { "default".to_string() } else { config.to_string() };
                return Some((model, task.to_string(), config, test_set, post_filter));
            }
        }
        None
    }
}

/// Every recorded prediction folder in the registry.
pub fn discover(registry: &Registry) -> Vec<RecordedRun> {
    let prefix = format!("{GENERATED_DATASETS}/");
    let mut names = BTreeSet::new();
    for f in registry.files_under(&prefix) {
        if let Some(name) = f.path[prefix.len()..].split('/').next() {
            names.insert(name.to_string());
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let (model, task, config, test_set, post_filter) = RecordedRun::parse(&name)?;
            Some(RecordedRun {
                folder: format!("{prefix}{name}"),
                model,
                task,
                config,
                test_set,
                post_filter,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_naming_scheme() {
        let p = RecordedRun::parse(
            "flan-t5-base_normalization_0.3_1.4_with_filtering_real_dataset_without_post_filter",
        )
        .unwrap();
        assert_eq!(
            p,
            (
                "flan-t5-base".into(),
                "normalization".into(),
                "0.3_1.4_with_filtering".into(),
                TestSet::Real,
                false
            )
        );
        let p = RecordedRun::parse("long-t5-tglobal-base-16384-book-summary_jp2python_generated_test_dataset_with_post_filter").unwrap();
        assert_eq!(
            p,
            (
                "long-t5-tglobal-base-16384-book-summary".into(),
                "jp2python".into(),
                "default".into(),
                TestSet::GeneratedTest,
                true
            )
        );
        assert!(RecordedRun::parse("flan-t5-base_SQuAD_0.3_1.4_with_filtering").is_none());
        assert!(RecordedRun::parse("retrived_jp2python").is_none());
    }
}

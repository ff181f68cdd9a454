//! The files of a run folder, each named once: the stage that writes a file and the stages that
//! read it both ask [`RunLayout`], so a file name is never spelled twice.
//!
//! ```text
//! runs/<name>/
//!   run.json  run.lock  teacher_cache.sqlite
//!   parse/              parsed.json  retrieval_query.txt  notes.json
//!   dataset-retrieval/  retrieved.jsonl  notes.json  dataset/<split>.parquet
//!   generation/         examples.jsonl  generated_test.jsonl  generation_log.json  …
//!   model-retrieval/    choice.json
//!   assembly/           {train,validation,test}.{jsonl,parquet}  notes.json
//!   training/           final/  selection.json  (checkpoints while training)
//!   evaluation/         metrics.json  notes.json  predictions_<set>.parquet  report files
//!   package/            stage.json only: the model goes to model/, the data to dataset/
//!   model/              weights, tokenizer, p2m.json, transformers' files, README.md (hub card), model_card.md
//!   dataset/            the generated rows of each split (parquet, with provenance) and README.md
//!   review/             the reviewed examples and prompt (`p2m serve`'s review page)
//! ```

use std::path::{Path, PathBuf};

use super::stage::Stage;

/// Where everything of one run lives.
#[derive(Debug, Clone)]
pub struct RunLayout {
    dir: PathBuf,
}

impl RunLayout {
    pub fn new(dir: PathBuf) -> RunLayout {
        RunLayout { dir }
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A stage's folder.
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.dir.join(stage.name())
    }

    /// `run.json`: the run's configuration and resolved settings.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("run.json")
    }

    /// The advisory lock that keeps a second process out of the folder ([`crate::util::lock`]).
    pub fn lock(&self) -> PathBuf {
        self.dir.join("run.lock")
    }

    /// Every teacher answer of the run (record and replay).
    pub fn teacher_cache(&self) -> PathBuf {
        self.dir.join("teacher_cache.sqlite")
    }

    /// A stage's notes (`notes.json`, a list of sentences for the report and the card).
    pub fn notes(&self, stage: Stage) -> PathBuf {
        self.stage_dir(stage).join("notes.json")
    }

    pub fn parsed(&self) -> PathBuf {
        self.stage_dir(Stage::Parse).join("parsed.json")
    }

    /// What the retrievers search with: the instruction, or its English translation.
    pub fn retrieval_query(&self) -> PathBuf {
        self.stage_dir(Stage::Parse).join("retrieval_query.txt")
    }

    pub fn retrieved(&self) -> PathBuf {
        self.stage_dir(Stage::RetrieveDatasets).join("retrieved.jsonl")
    }

    /// The textualised retrieved dataset (`<split>.parquet`).
    pub fn retrieved_dataset(&self) -> PathBuf {
        self.stage_dir(Stage::RetrieveDatasets).join("dataset")
    }

    /// The teacher's examples as written by generation.
    pub fn generated(&self) -> PathBuf {
        self.stage_dir(Stage::Generate).join(crate::dataset_generator::EXAMPLES_FILE)
    }

    /// A generated test set recorded apart (the recorded teacher's).
    pub fn generated_test(&self) -> PathBuf {
        self.stage_dir(Stage::Generate).join("generated_test.jsonl")
    }

    pub fn generation_log(&self) -> PathBuf {
        self.stage_dir(Stage::Generate).join(crate::dataset_generator::LOG_FILE)
    }

    pub fn choice(&self) -> PathBuf {
        self.stage_dir(Stage::RetrieveModel).join("choice.json")
    }

    /// An assembled split: `train`, `validation` or `test`, as JSONL (the parquet twin beside it).
    pub fn split(&self, name: &str) -> PathBuf {
        self.stage_dir(Stage::Assemble).join(format!("{name}.jsonl"))
    }

    /// The diagnostics of the generated training rows (`.json`, and `.md` beside it).
    pub fn data_diagnostics(&self) -> PathBuf {
        self.stage_dir(Stage::Assemble).join("diagnostics.json")
    }

    /// What the data gate decided before training.
    pub fn data_gate(&self) -> PathBuf {
        self.stage_dir(Stage::Train).join("data_gate.json")
    }

    /// The metric the run is judged by, and why.
    pub fn metric_choice(&self) -> PathBuf {
        self.stage_dir(Stage::Evaluate).join("metric_choice.json")
    }

    /// The student against the trivial answers, per test set.
    pub fn baselines(&self) -> PathBuf {
        self.stage_dir(Stage::Evaluate).join("baselines.json")
    }

    /// The trained weights and tokenizer.
    pub fn trained(&self) -> PathBuf {
        self.stage_dir(Stage::Train).join("final")
    }

    /// What `--select-student` measured.
    pub fn selection(&self) -> PathBuf {
        self.stage_dir(Stage::Train).join("selection.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.stage_dir(Stage::Evaluate).join("metrics.json")
    }

    /// The packaged model (`p2m predict`, `p2m serve`).
    pub fn model(&self) -> PathBuf {
        self.dir.join("model")
    }

    /// The generated data as a hub dataset folder (parquet splits and a dataset card).
    pub fn dataset(&self) -> PathBuf {
        self.dir.join("dataset")
    }

    /// What a person's review saved (`crate::review`).
    pub fn review_dir(&self) -> PathBuf {
        self.dir.join("review")
    }

    /// The reviewed examples: accepted and edited rows, rejected ones left out.
    pub fn reviewed_examples(&self) -> PathBuf {
        self.review_dir().join("examples.jsonl")
    }

    /// The reviewed instruction and demonstrations.
    pub fn reviewed_parsed(&self) -> PathBuf {
        self.review_dir().join("parsed.json")
    }

    /// The examples assembly reads: a person's reviewed ones where the review page saved them,
    /// else the teacher's.
    pub fn examples_for_assembly(&self) -> PathBuf {
        Some(self.reviewed_examples()).filter(|p| p.is_file()).unwrap_or_else(|| self.generated())
    }

    /// The parsed prompt training and what follows read: the reviewed one where it exists.
    pub fn parsed_for_training(&self) -> PathBuf {
        Some(self.reviewed_parsed()).filter(|p| p.is_file()).unwrap_or_else(|| self.parsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_under_its_stage_folder_and_review_files_win_where_saved() {
        let run = tempfile::tempdir().unwrap();
        let l = RunLayout::new(run.path().to_path_buf());
        assert_eq!(l.parsed(), run.path().join("parse/parsed.json"));
        assert_eq!(l.split("train"), run.path().join("assembly/train.jsonl"));
        assert_eq!(l.trained(), run.path().join("training/final"));
        assert_eq!(l.examples_for_assembly(), l.generated());
        assert_eq!(l.parsed_for_training(), l.parsed());
        std::fs::create_dir_all(l.review_dir()).unwrap();
        std::fs::write(l.reviewed_examples(), "").unwrap();
        assert_eq!(l.examples_for_assembly(), run.path().join("review/examples.jsonl"));
        assert_eq!(l.parsed_for_training(), l.parsed(), "only the saved file is replaced");
    }
}

//! The checkpoint journal (`checkpoint.jsonl`): one line per round, appended and fsynced, so a
//! killed generation resumes where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{
    GenerateError, GenerationLog, GeneratorConfig, TemperaturePoint, ALGORITHM_VERSION,
};
use crate::data::examples::Example;
use crate::prompt_parser::ParsedPrompt;
use crate::teacher::Teacher;
use crate::util::fs::{sha256_hex, FileError};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum JournalLine {
    Header { version: u32, fingerprint: String, backend: String, model: String },
    Round(Box<RoundRecord>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RoundRecord {
    pub(super) round: u64,
    /// RNG state after the round.
    pub(super) rng: u64,
    pub(super) point: TemperaturePoint,
    /// Candidates parsed in this round, in order.
    pub(super) candidates: Vec<Example>,
    /// Inputs accepted for the first time in this round (with their current outputs).
    pub(super) new_accepted: Vec<Example>,
    pub(super) accepted_total: usize,
    /// Cumulative counters after the round (temperature curve left out; rebuilt from `point`s).
    pub(super) log: GenerationLog,
}

pub(super) struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    pub(super) fn append(&mut self, line: &JournalLine) -> Result<(), GenerateError> {
        let mut s = serde_json::to_string(line).expect("serialisable");
        s.push('\n');
        self.file.write_all(s.as_bytes()).map_err(FileError::at(&self.path))?;
        Ok(self.file.sync_data().map_err(FileError::at(&self.path))?)
    }

    pub(super) fn create(path: &Path, header: &JournalLine) -> Result<Journal, GenerateError> {
        let file = std::fs::File::create(path).map_err(FileError::at(path))?;
        let mut j = Journal { path: path.to_path_buf(), file };
        j.append(header)?;
        Ok(j)
    }

    /// Read a journal: its lines and the byte length of the valid prefix (a torn last line, from
    /// a kill during a write, is dropped).
    pub(super) fn read(path: &Path) -> Result<(Vec<JournalLine>, u64), GenerateError> {
        let text = std::fs::read_to_string(path).map_err(FileError::at(path))?;
        let mut lines = Vec::new();
        let mut good = 0usize;
        let mut pos = 0usize;
        let chunks: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, chunk) in chunks.iter().enumerate() {
            pos += chunk.len();
            let last = i + 1 == chunks.len();
            if !chunk.ends_with('\n') {
                break; // torn write
            }
            match serde_json::from_str::<JournalLine>(chunk.trim_end()) {
                Ok(l) => {
                    lines.push(l);
                    good = pos;
                }
                Err(_) if last => break,
                Err(e) => {
                    return Err(GenerateError::Checkpoint {
                        path: path.to_path_buf(),
                        detail: format!("line {} is corrupt: {e}", i + 1),
                    });
                }
            }
        }
        Ok((lines, good as u64))
    }

    pub(super) fn reopen(path: &Path, valid_len: u64) -> Result<Journal, GenerateError> {
        let file =
            std::fs::OpenOptions::new().write(true).open(path).map_err(FileError::at(path))?;
        file.set_len(valid_len).map_err(FileError::at(path))?;
        drop(file);
        let file =
            std::fs::OpenOptions::new().append(true).open(path).map_err(FileError::at(path))?;
        Ok(Journal { path: path.to_path_buf(), file })
    }
}

pub(super) fn fingerprint(
    teacher: &dyn Teacher,
    prompt: &ParsedPrompt,
    cfg: &GeneratorConfig,
) -> String {
    let v = serde_json::json!({
        "algorithm": ALGORITHM_VERSION,
        "backend": teacher.backend(),
        "model": teacher.model(),
        "instruction": prompt.instruction,
        "demonstrations": prompt.demonstrations,
        "seed": cfg.seed,
        "t0": cfg.initial_temperature,
        "tmax": cfg.max_temperature,
        "n_choices": cfg.responses_per_request,
        "batch": cfg.max_batch_size,
        "max_tokens": cfg.max_tokens,
        "context_window": cfg.context_window,
        "token_buffer": cfg.token_buffer,
        "cutoff": cfg.context_cutoff_tokens,
        "top_p": cfg.top_p,
        "presence": cfg.presence_penalty,
        "frequency": cfg.frequency_penalty,
        "high_diversity": cfg.high_diversity,
        "max_shown": cfg.max_generated_examples_in_prompt,
        "filter": cfg.filter_duplicated_examples,
        "drop_copies": cfg.drop_demonstration_copies,
    });
    sha256_hex(crate::util::json::canonical_json(&v).as_bytes())
}

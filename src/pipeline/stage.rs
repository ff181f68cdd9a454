//! A stage's record (`<run>/<stage>/stage.json`) and the rule that decides whether it runs again.
//!
//! A stage's *fingerprint* is the sha256 of its settings and of the contents of every file it
//! reads (the outputs of the stages before it). `stage.json` is written with status `running` and
//! the fingerprint before the stage starts, and rewritten as `done` with the hashes of its outputs
//! and its timings after they were all written (atomically), so:
//! - a done stage with the same fingerprint is skipped; its outputs are passed on as they are now
//!   (an output edited by hand, e.g. `generation/examples.jsonl`, is kept, and the stages that read
//!   it see new input hashes and run again);
//! - a stage that was running when the process died, with the same fingerprint, runs again inside
//!   the same folder, so its own resume (the generator's journal and teacher cache, the trainer's
//!   checkpoints) picks up where it stopped;
//! - a stage whose fingerprint changed starts over in an emptied folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::util::fs::{sha256_file, sha256_hex, write_atomic};

/// The stages of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Parse,
    RetrieveDatasets,
    Generate,
    RetrieveModel,
    Assemble,
    Train,
    Evaluate,
    Package,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Parse,
        Stage::RetrieveDatasets,
        Stage::Generate,
        Stage::RetrieveModel,
        Stage::Assemble,
        Stage::Train,
        Stage::Evaluate,
        Stage::Package,
    ];

    /// The stage's folder name under the run folder (also its name on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::RetrieveDatasets => "dataset-retrieval",
            Stage::Generate => "generation",
            Stage::RetrieveModel => "model-retrieval",
            Stage::Assemble => "assembly",
            Stage::Train => "training",
            Stage::Evaluate => "evaluation",
            Stage::Package => "package",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Done,
}

/// `stage.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub status: Status,
    pub fingerprint: String,
    /// What the fingerprint covers: the settings, and the sha256 of every input file.
    pub settings: Value,
    pub inputs: BTreeMap<String, String>,
    /// Output files (relative to the run folder) and their sha256 when the stage finished.
    pub outputs: BTreeMap<String, String>,
    /// A one-line account of what the stage produced.
    pub summary: String,
    pub started: String,
    pub seconds: f64,
    /// Seconds of every attempt, resumed ones included.
    pub total_seconds: f64,
    /// Where the outputs were copied from when another run had already computed the same thing
    /// (the live tables' cells: [`crate::pipeline::reuse`]); `seconds` is then the copy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

/// The inputs of a stage: settings and files it reads.
pub struct StageInputs {
    pub settings: Value,
    pub files: Vec<PathBuf>,
}

/// What a finished stage hands on.
pub struct StageOutputs {
    pub files: Vec<PathBuf>,
    pub summary: String,
}

/// Fingerprint of settings and files (files by their path relative to `run_dir` and contents).
pub fn fingerprint(
    run_dir: &Path,
    inputs: &StageInputs,
) -> Result<(String, BTreeMap<String, String>)> {
    let mut hashes = BTreeMap::new();
    for f in &inputs.files {
        let sha =
            sha256_file(f).with_context(|| format!("hashing the stage input {}", f.display()))?;
        hashes.insert(relative(run_dir, f), sha);
    }
    Ok((fingerprint_of(&inputs.settings, &hashes), hashes))
}

/// The fingerprint of settings and input hashes (relative path → sha256).
pub fn fingerprint_of(settings: &Value, inputs: &BTreeMap<String, String>) -> String {
    let canonical = crate::util::json::canonical_json(
        &serde_json::json!({ "settings": settings, "inputs": inputs }),
    );
    sha256_hex(canonical.as_bytes())
}

fn relative(run_dir: &Path, f: &Path) -> String {
    f.strip_prefix(run_dir).unwrap_or(f).display().to_string()
}

pub fn record_path(run_dir: &Path, stage: Stage) -> PathBuf {
    run_dir.join(stage.name()).join("stage.json")
}

pub fn read_record(run_dir: &Path, stage: Stage) -> Option<StageRecord> {
    let text = std::fs::read_to_string(record_path(run_dir, stage)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(run_dir: &Path, record: &StageRecord) -> Result<()> {
    let path = record_path(run_dir, record.stage);
    write_atomic(&path, serde_json::to_string_pretty(record)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A stage's JSON file; a bad one says which stage to redo.
pub fn read_stage_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let stage = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    crate::util::fs::read_json(
        path,
        &format!("not the JSON this stage writes; rerun with --from {stage}"),
    )
}

/// What [`run_stage`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Ran,
    /// Copied from another run that computed the same thing ([`adopt_stage`]).
    Reused,
}

/// Run `body` for `stage` unless its record says it is done with the same fingerprint and its
/// outputs exist; see the module docs. `body` gets the stage folder.
pub fn run_stage(
    run_dir: &Path,
    stage: Stage,
    inputs: StageInputs,
    body: impl FnOnce(&Path) -> Result<StageOutputs>,
) -> Result<(Outcome, StageRecord)> {
    let dir = run_dir.join(stage.name());
    let (fp, hashes) = fingerprint(run_dir, &inputs)?;
    let previous = read_record(run_dir, stage);
    if let Some(rec) = previous.as_ref().filter(|r| r.is_up_to_date(run_dir, &fp)) {
        eprintln!("[{}] up to date: {} (fingerprint {})", stage.name(), rec.summary, &fp[..12]);
        return Ok((Outcome::Skipped, rec.clone()));
    }
    let resumed = previous.as_ref().is_some_and(|r| r.resumes(&fp));
    let earlier_seconds =
        previous.as_ref().filter(|_| resumed).map(|r| r.total_seconds).unwrap_or(0.0);
    if !resumed && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| {
            format!("clearing {} (its inputs or settings changed)", dir.display())
        })?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = chrono::Utc::now().to_rfc3339();
    let mut record = StageRecord {
        stage,
        status: Status::Running,
        fingerprint: fp,
        settings: inputs.settings,
        inputs: hashes,
        outputs: BTreeMap::new(),
        summary: String::new(),
        started,
        seconds: 0.0,
        total_seconds: earlier_seconds,
        reused_from: None,
    };
    write_record(run_dir, &record)?;
    eprintln!("[{}] {}", stage.name(), if resumed { "resuming" } else { "starting" });
    let clock = Instant::now();
    let out = body(&dir).with_context(|| {
        format!(
            "stage `{}` failed (its folder {} is kept; a rerun resumes it)",
            stage.name(),
            dir.display()
        )
    })?;
    for f in &out.files {
        let sha = sha256_file(f).with_context(|| format!("hashing the output {}", f.display()))?;
        record.outputs.insert(relative(run_dir, f), sha);
    }
    record.seconds = clock.elapsed().as_secs_f64();
    record.total_seconds += record.seconds;
    record.summary = out.summary;
    record.status = Status::Done;
    write_record(run_dir, &record)?;
    eprintln!("[{}] done in {:.1} s: {}", stage.name(), record.seconds, record.summary);
    Ok((Outcome::Ran, record))
}

impl StageRecord {
    /// Done, and its outputs are all still in `run_dir`.
    pub fn is_finished_in(&self, run_dir: &Path) -> bool {
        self.status == Status::Done && self.outputs.keys().all(|f| run_dir.join(f).exists())
    }

    /// Finished with fingerprint `fp`: [`run_stage`] skips it.
    fn is_up_to_date(&self, run_dir: &Path, fp: &str) -> bool {
        self.fingerprint == fp && self.is_finished_in(run_dir)
    }

    /// Interrupted while running with fingerprint `fp`: [`run_stage`] resumes it in its folder.
    fn resumes(&self, fp: &str) -> bool {
        self.status == Status::Running && self.fingerprint == fp
    }
}

/// Whether `stage` is up to date here with fingerprint `fp`, or resumes here (rather than copying
/// another run's): what [`run_stage`] would skip or resume.
pub fn done_or_resumable(run_dir: &Path, stage: Stage, fp: &str) -> bool {
    read_record(run_dir, stage).is_some_and(|rec| rec.is_up_to_date(run_dir, fp) || rec.resumes(fp))
}

/// Take another run's finished `stage` as this run's: every file of its stage folder and every
/// output it declared elsewhere (the trained model) copied here (copies, not links: a later
/// stage that rewrites a file must not change the other run), then a `done` record with this
/// run's fingerprint and inputs, the other run's output hashes (checked after the copy) and
/// `reused_from`. What it replaces here is removed first.
pub fn adopt_stage(
    run_dir: &Path,
    stage: Stage,
    inputs: StageInputs,
    from_dir: &Path,
    from: &StageRecord,
) -> Result<StageRecord> {
    let clock = Instant::now();
    let (fp, hashes) = fingerprint(run_dir, &inputs)?;
    let dir = run_dir.join(stage.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| {
            format!("clearing {} before taking {}", dir.display(), from_dir.display())
        })?;
    }
    let source = from_dir.join(stage.name());
    let mut copies: Vec<String> = crate::util::fs::list_files(&source)
        .with_context(|| format!("listing {}", source.display()))?
        .iter()
        .filter(|f| **f != source.join("stage.json"))
        .map(|f| relative(from_dir, f))
        .collect();
    copies.extend(from.outputs.keys().cloned());
    copies.sort();
    copies.dedup();
    for f in &copies {
        let (src, dst) = (from_dir.join(f), run_dir.join(f));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Through a temporary name, so a killed copy never looks like a finished file.
        let tmp = dst.with_extension("reuse-partial");
        std::fs::copy(&src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("renaming {}", tmp.display()))?;
    }
    for (f, sha) in &from.outputs {
        let got = sha256_file(&run_dir.join(f))?;
        anyhow::ensure!(
            &got == sha,
            "{}: {f} changed since its stage finished (sha256 {got}, recorded {sha}); rerun that run's stage `{}`, or this one without reuse",
            from_dir.display(),
            stage.name()
        );
    }
    let seconds = clock.elapsed().as_secs_f64();
    let record = StageRecord {
        stage,
        status: Status::Done,
        fingerprint: fp,
        settings: inputs.settings,
        inputs: hashes,
        outputs: from.outputs.clone(),
        summary: from.summary.clone(),
        started: chrono::Utc::now().to_rfc3339(),
        seconds,
        total_seconds: seconds,
        reused_from: Some(from_dir.display().to_string()),
    };
    write_record(run_dir, &record)?;
    eprintln!(
        "[{}] reused from {} ({} files copied in {seconds:.1} s): {}",
        stage.name(),
        from_dir.display(),
        copies.len(),
        record.summary
    );
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_skipped_redone_on_new_inputs_and_resumed_after_a_crash() {
        let run = tempfile::tempdir().unwrap();
        let input = run.path().join("in.txt");
        std::fs::write(&input, "a").unwrap();
        let inputs =
            || StageInputs { settings: serde_json::json!({"k": 1}), files: vec![input.clone()] };
        let body = |dir: &Path| -> Result<StageOutputs> {
            let f = dir.join("out.txt");
            std::fs::write(&f, "x")?;
            Ok(StageOutputs { files: vec![f], summary: "one file".into() })
        };
        assert_eq!(run_stage(run.path(), Stage::Parse, inputs(), body).unwrap().0, Outcome::Ran);
        assert_eq!(
            run_stage(run.path(), Stage::Parse, inputs(), body).unwrap().0,
            Outcome::Skipped
        );
        std::fs::write(&input, "b").unwrap();
        let (o, rec) = run_stage(run.path(), Stage::Parse, inputs(), body).unwrap();
        assert_eq!(o, Outcome::Ran);
        assert_eq!(rec.outputs["parse/out.txt"], sha256_hex(b"x"));
        // A crash mid-stage leaves `running`; the rerun keeps the folder (resume), then finishes.
        std::fs::write(&input, "c").unwrap();
        let failed =
            run_stage(run.path(), Stage::Parse, inputs(), |dir: &Path| -> Result<StageOutputs> {
                std::fs::write(dir.join("partial"), "p")?;
                anyhow::bail!("killed")
            });
        assert!(failed.is_err());
        assert_eq!(read_record(run.path(), Stage::Parse).unwrap().status, Status::Running);
        let (o, _) =
            run_stage(run.path(), Stage::Parse, inputs(), |dir: &Path| -> Result<StageOutputs> {
                assert!(dir.join("partial").exists(), "a resumed stage keeps its folder");
                body(dir)
            })
            .unwrap();
        assert_eq!(o, Outcome::Ran);
    }
}

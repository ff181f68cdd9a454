//! Stages shared between runs: a run may take a finished stage from another run folder that
//! computed the same thing, instead of computing it again.
//!
//! Why: the live tables' cells often train the same student on the same rows under different
//! names — Table 1's "w/o model retrieval" and a Table 3 student, or two Table 1 rows whose model
//! retrieval fell back to the same default — and training plus prediction is nearly all of a
//! cell's time. The stage fingerprint cannot find those on its own: it hashes the model choice's
//! explanation as well as the choice. So a stage that opts in ([`super::stages::PipelineStage::reuse_key`])
//! names what its outputs depend on; a run whose options list folders to search
//! ([`super::RunOptions::reuse_roots`]) looks there for a finished stage with the same key, and
//! copies it ([`super::stage::adopt_stage`], the record says `reused_from`). A stage that is done or
//! half-done in the run itself is never replaced by another run's.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::context::RunContext;
use super::stage::{self, StageInputs, StageRecord};
use super::stages::PipelineStage;

/// How deep under a root run folders are looked for (`<table>/<scale>/<teacher>/<cell>`).
const MAX_DEPTH: usize = 4;

/// The run folders under `root` (folders holding `run.json`), at most [`MAX_DEPTH`] levels down.
pub fn run_folders(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if dir.join("run.json").is_file() {
            out.push(dir.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut dirs: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        for d in dirs {
            walk(&d, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    walk(root, MAX_DEPTH, &mut out);
    out
}

/// Another run's finished stage this run may take, when `stage` opts in, the run's options name
/// folders to search and the run has not done (or started) the stage itself.
pub fn find_reusable(
    ctx: &RunContext,
    stage: &dyn PipelineStage,
    inputs: &StageInputs,
) -> Result<Option<(PathBuf, StageRecord)>> {
    if ctx.opts.reuse_roots.is_empty() {
        return Ok(None);
    }
    let run_dir = ctx.layout.dir();
    let (fp, hashes) = stage::fingerprint(run_dir, inputs)?;
    if stage::done_or_resumable(run_dir, stage.stage(), &fp) {
        return Ok(None);
    }
    let Some(key) = stage.reuse_key(run_dir, &inputs.settings, &hashes) else {
        return Ok(None);
    };
    let own = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    for root in &ctx.opts.reuse_roots {
        for other in run_folders(root) {
            if std::fs::canonicalize(&other).unwrap_or_else(|_| other.clone()) == own {
                continue;
            }
            let Some(rec) = matching(stage, &other, &key) else { continue };
            // Take the first computation, not a copy of it, so every note names the cell that ran
            // — while that run still holds the same thing.
            if let Some(origin) = rec.reused_from.as_ref().map(PathBuf::from) {
                if let Some(first) = matching(stage, &origin, &key) {
                    return Ok(Some((origin, first)));
                }
            }
            return Ok(Some((other, rec)));
        }
    }
    Ok(None)
}

/// The record of `stage` in the run `dir` when it is finished there and its key is `key`.
fn matching(stage: &dyn PipelineStage, dir: &Path, key: &str) -> Option<StageRecord> {
    let rec = stage::read_record(dir, stage.stage())?;
    let usable = rec.is_finished_in(dir)
        && stage.reuse_key(dir, &rec.settings, &rec.inputs).as_deref() == Some(key);
    usable.then_some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folders_are_found_at_the_cells_depth_and_not_below_a_run() {
        let root = tempfile::tempdir().unwrap();
        for d in ["table1/laptop/recorded/a", "table3/laptop/recorded/b", "x/y/z/w/too-deep"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
            std::fs::write(root.path().join(d).join("run.json"), "{}").unwrap();
        }
        // A folder inside a run is not another run.
        std::fs::create_dir_all(root.path().join("table1/laptop/recorded/a/training")).unwrap();
        std::fs::write(root.path().join("table1/laptop/recorded/a/training/run.json"), "{}")
            .unwrap();
        let found = run_folders(root.path());
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["table1/laptop/recorded/a", "table3/laptop/recorded/b"]);
    }
}

//! Cells as jobs, whichever table they belong to (the live Tables 1 and 3, Table 2's arms): the
//! local runner, `--jobs N` processes at a time ([`run_missing`]), and the Slurm array with its
//! collector ([`emit_slurm`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What one cell asks of a cluster node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    /// `--time`, e.g. `00:20:00`.
    pub time: String,
    /// `--mem`, e.g. `6G`.
    pub mem: String,
    pub cpus: u32,
    #[serde(default)]
    pub gpus: u32,
}

/// A table's cells as jobs: what the local runner ([`run_missing`]) and the Slurm writer
/// ([`emit_slurm`]) need, whichever table they belong to.
#[derive(Debug, Clone)]
pub struct CellJobs {
    pub table: String,
    pub scale: String,
    /// Anything else that names the cells' configuration (for the scripts' comments).
    pub detail: String,
    pub ids: Vec<String>,
    /// Per id: finished with exactly its configuration.
    pub done: Vec<bool>,
    /// Where the cells' folders and logs go.
    pub runs_dir: PathBuf,
    pub slurm: SlurmResources,
}

/// Run every cell that is not done, `jobs` at a time, each as `program args… --cell ID` (a
/// process of its own, its output in `<runs dir>/<cell>.log`). Every cell runs; then, if any
/// failed, the error names them and where their logs are.
pub fn run_missing(cells: &CellJobs, program: &Path, args: &[String], jobs: usize) -> Result<()> {
    let todo: Vec<&String> =
        cells.ids.iter().zip(&cells.done).filter(|(_, done)| !**done).map(|(id, _)| id).collect();
    let total = cells.ids.len();
    println!(
        "{}: {} cells at scale {} ({} done, {} to run, {} at a time) in {}",
        cells.table,
        total,
        cells.scale,
        total - todo.len(),
        todo.len(),
        jobs.max(1),
        cells.runs_dir.display()
    );
    std::fs::create_dir_all(&cells.runs_dir)
        .with_context(|| format!("creating {}", cells.runs_dir.display()))?;
    let mut queue = todo.into_iter();
    let mut running: Vec<(String, std::process::Child, Instant)> = Vec::new();
    let mut failed = Vec::new();
    let mut finished = 0usize;
    loop {
        while running.len() < jobs.max(1) {
            let Some(id) = queue.next() else { break };
            let log_path = cells.runs_dir.join(format!("{id}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let child = Command::new(program)
                .args(args)
                .args(["--cell", id])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} for cell {id}", program.display()))?;
            running.push((id.clone(), child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].1.try_wait()? {
                let (id, _, started) = running.remove(i);
                finished += 1;
                let log = cells.runs_dir.join(format!("{id}.log"));
                if status.success() {
                    println!(
                        "  [{finished}] {id} done in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                } else {
                    println!(
                        "  [{finished}] {id} FAILED ({status}); its output: {}",
                        log.display()
                    );
                    // The end of it, which usually says why, so a reader need not open the log.
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    for line in &lines[lines.len().saturating_sub(6)..] {
                        println!("      {line}");
                    }
                    failed.push(id);
                }
            } else {
                i += 1;
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} cells failed ({}); their logs are in {}; rerun to retry them",
        failed.len(),
        failed.join(", "),
        cells.runs_dir.display()
    );
    Ok(())
}

/// Write `cells.sbatch` (a Slurm array, one cell per task, `%K` at a time), `collect.sbatch` (the
/// table from the cells) and `submit.sh` (both, the second `--dependency=afterok` on the first)
/// into `dir`. `program` and `args` are how a node starts the table binary (an absolute path: the
/// nodes share this file system).
pub fn emit_slurm(
    cells: &CellJobs,
    dir: &Path,
    program: &Path,
    args: &[String],
    max_parallel: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    anyhow::ensure!(!cells.ids.is_empty(), "{}: no cells to submit", cells.table);
    let r = &cells.slurm;
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let command: String = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let ids: String = cells.ids.join(" ");
    let cwd = std::env::current_dir()?;
    let gpus = if r.gpus > 0 { format!("#SBATCH --gres=gpu:{}\n", r.gpus) } else { String::new() };
    let name = format!("p2m-{}-{}", cells.table, cells.scale);
    let array_script = format!(
        "#!/bin/bash\n# {n} cells of {table} at scale {scale} ({detail}): one per array task.\n\
         # Written by `{table} --emit-slurm`; resources from the scale's `slurm` entry in data/.\n\
         #SBATCH --job-name={name}-cells\n#SBATCH --array=0-{last}%{k}\n#SBATCH --time={time}\n#SBATCH --mem={mem}\n\
         #SBATCH --cpus-per-task={cpus}\n{gpus}#SBATCH --output={out}/cell-%a.log\n#SBATCH --chdir={cwd}\n\
         set -euo pipefail\nCELLS=({ids})\nexport OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}\n\
         exec {command} --cell \"${{CELLS[$SLURM_ARRAY_TASK_ID]}}\"\n",
        n = cells.ids.len(),
        table = cells.table,
        scale = cells.scale,
        detail = cells.detail,
        last = cells.ids.len() - 1,
        k = max_parallel.max(1),
        time = r.time,
        mem = r.mem,
        cpus = r.cpus,
        out = dir.display(),
        cwd = cwd.display(),
    );
    let collect = format!(
        "#!/bin/bash\n# Assembles {table} from its cells once every array task has succeeded.\n\
         #SBATCH --job-name={name}-collect\n#SBATCH --time=00:30:00\n#SBATCH --mem={mem}\n#SBATCH --cpus-per-task=1\n\
         #SBATCH --output={out}/collect.log\n#SBATCH --chdir={cwd}\nset -euo pipefail\nexec {command} --collect-only\n",
        table = cells.table,
        mem = r.mem,
        out = dir.display(),
        cwd = cwd.display(),
    );
    let submit = format!(
        "#!/bin/bash\n# Submit the cells, then the collector after all of them succeeded.\nset -euo pipefail\n\
         cd {d}\ncells=$(sbatch --parsable cells.sbatch)\ncollect=$(sbatch --parsable --dependency=afterok:${{cells%%;*}} collect.sbatch)\n\
         echo \"cells: job $cells; collect: job $collect (output in {d})\"\n",
        d = quote(&dir.display().to_string())
    );
    let mut written = Vec::new();
    for (file, text) in
        [("cells.sbatch", array_script), ("collect.sbatch", collect), ("submit.sh", submit)]
    {
        let path = dir.join(file);
        crate::util::fs::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    Ok(written)
}

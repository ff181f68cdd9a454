//! Live tables as **cells**: every row of Table 1 and every student of Table 3, per task, is one
//! `p2m run` (the pipeline) whose settings are data (`data/live_tables.toml`). A cell is one
//! process (`table3 --source live --cell ID`) writing one run folder under
//! `<cells root>/<table>/<scale>/<teacher>/<cell>/`; the pipeline's stage fingerprints make it
//! idempotent (a finished cell is skipped, a changed setting redoes what it touches, a killed cell
//! resumes). The table binary runs whatever is missing, `--jobs N` at a time, or writes a Slurm
//! array that runs them on a cluster (both in [`super::jobs`]); then it assembles the table from
//! the cells.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use super::jobs::{emit_slurm, run_missing, CellJobs, SlurmResources};
use crate::config::Paths;
use crate::pipeline::config::{RunConfig, TeacherSource};
use crate::pipeline::runs::{RunInfo, RunStatus};
use crate::pipeline::{RunOptions, RunSummary};

pub const LIVE_TABLES_FILE: &str = "live_tables.toml";

/// Which live table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LiveTable {
    Table1,
    Table3,
}

impl LiveTable {
    pub fn name(self) -> &'static str {
        match self {
            LiveTable::Table1 => "table1",
            LiveTable::Table3 => "table3",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveScale {
    pub description: String,
    /// The paper tasks (data/tasks.toml ids) this scale runs.
    pub tasks: Vec<String>,
    pub slurm: SlurmResources,
}

/// A row of Table 1 or a student of Table 3.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    pub id: String,
    pub label: String,
    /// Only at these scales (empty: all).
    #[serde(default)]
    pub scales: Vec<String>,
    /// Only for these tasks (empty: all of the scale's).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Run-configuration fields (src/pipeline/config.rs) on top of the table's defaults.
    #[serde(default)]
    pub run: toml::Table,
    /// A sanity row (an untrained or random model): shown, but left out of Table 3's τ.
    #[serde(default)]
    pub sanity: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Run-configuration fields every cell of the table gets.
    #[serde(default)]
    pub run: toml::Table,
    /// Per scale, fields every cell of the table gets at that scale (after `run`, before a row's
    /// own): the cuts that fit a table into a scale's time.
    #[serde(default)]
    pub scale_run: BTreeMap<String, toml::Table>,
    pub rows: Vec<RowSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveTables {
    pub scales: BTreeMap<String, LiveScale>,
    pub table1: TableSpec,
    pub table3: TableSpec,
}

impl LiveTables {
    pub fn load(data_dir: &Path) -> Result<LiveTables> {
        let path = data_dir.join(LIVE_TABLES_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a live-tables file", path.display()))
    }

    fn spec(&self, table: LiveTable) -> &TableSpec {
        match table {
            LiveTable::Table1 => &self.table1,
            LiveTable::Table3 => &self.table3,
        }
    }
}

/// One cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `<task>-<row>`: the run folder's name.
    pub id: String,
    pub task: String,
    pub row: String,
    pub label: String,
    pub config: RunConfig,
    /// From its row: shown, but left out of Table 3's τ.
    pub sanity: bool,
}

/// Every cell of a table at a scale, and where their runs live.
#[derive(Debug, Clone)]
pub struct CellPlan {
    pub table: LiveTable,
    pub scale: String,
    pub teacher: TeacherSource,
    pub scale_spec: LiveScale,
    pub cells: Vec<Cell>,
    /// The runs' parent folder.
    pub runs_dir: PathBuf,
    /// The root of every table's cells: a cell takes finished stages from any cell under it that
    /// computed the same thing ([`crate::pipeline::reuse`]).
    pub cells_root: PathBuf,
}

/// `base` with the fields of `over` replacing its own (unknown fields refused by name).
fn overlay(base: &RunConfig, over: &toml::Table, what: &str) -> Result<RunConfig> {
    let mut table: toml::Table = toml::from_str(&toml::to_string(base)?)?;
    for (k, v) in over {
        table.insert(k.clone(), v.clone());
    }
    toml::Value::Table(table).try_into().with_context(|| {
        format!("{what}: not run-configuration fields (see src/pipeline/config.rs)")
    })
}

/// The cells of `table` at `scale` with `teacher`, their runs under `cells_root`.
pub fn plan(
    paths: &Paths,
    table: LiveTable,
    scale: &str,
    teacher: TeacherSource,
    cells_root: &Path,
) -> Result<CellPlan> {
    let live = LiveTables::load(&paths.data)?;
    let scale_spec = live.scales.get(scale).cloned().with_context(|| {
        format!(
            "unknown scale `{scale}`; data/{LIVE_TABLES_FILE} has: {}",
            live.scales.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let tasks = crate::data::tasks::load_tasks(&paths.data)?;
    let spec = live.spec(table);
    let mut cells = Vec::new();
    for task_id in &scale_spec.tasks {
        let task = crate::data::tasks::find(&tasks, task_id).with_context(|| {
            format!("data/{LIVE_TABLES_FILE}: scale `{scale}` names task `{task_id}`, not in data/tasks.toml")
        })?;
        for row in &spec.rows {
            if (!row.scales.is_empty() && !row.scales.iter().any(|s| s == scale))
                || (!row.tasks.is_empty() && !row.tasks.iter().any(|t| t == task_id))
            {
                continue;
            }
            let id = format!("{task_id}-{}", row.id);
            let base = RunConfig {
                name: id.clone(),
                task: Some(task.id.clone()),
                prompt: Some(task.prompt.clone()),
                prompt_source: format!("the paper's {} prompt (data/tasks.toml)", task.id),
                scale: scale.to_string(),
                teacher,
                ..RunConfig::default()
            };
            let with_table = overlay(&base, &spec.run, &format!("[{}] run", table.name()))?;
            let with_scale = match spec.scale_run.get(scale) {
                Some(over) => {
                    overlay(&with_table, over, &format!("[{}.scale_run.{scale}]", table.name()))?
                }
                None => with_table,
            };
            let config =
                overlay(&with_scale, &row.run, &format!("{} row `{}`", table.name(), row.id))?;
            cells.push(Cell {
                id,
                task: task.id.clone(),
                row: row.id.clone(),
                label: row.label.clone(),
                config,
                sanity: row.sanity,
            });
        }
    }
    anyhow::ensure!(!cells.is_empty(), "{} has no cells at scale `{scale}`", table.name());
    let runs_dir = cells_root.join(table.name()).join(scale).join(teacher.name());
    Ok(CellPlan {
        table,
        scale: scale.to_string(),
        teacher,
        scale_spec,
        cells,
        runs_dir,
        cells_root: cells_root.to_path_buf(),
    })
}

impl CellPlan {
    /// Every cell's teacher server settings (a `local` or `openai` teacher's; `recorded` has none).
    pub fn set_teacher_settings(&mut self, settings: &crate::teacher::TeacherSettings) {
        for c in &mut self.cells {
            c.config.teacher_settings = settings.clone();
        }
    }

    pub fn cell(&self, id: &str) -> Result<&Cell> {
        self.cells.iter().find(|c| c.id == id).with_context(|| {
            format!(
                "no cell `{id}` in {} at scale {}; --list-cells shows them",
                self.table.name(),
                self.scale
            )
        })
    }

    pub fn dir(&self, cell: &Cell) -> PathBuf {
        self.runs_dir.join(&cell.id)
    }

    /// A cell is done when its run is complete with exactly this configuration.
    pub fn is_done(&self, cell: &Cell) -> bool {
        match RunInfo::read(&self.dir(cell)) {
            Ok(info) => {
                info.status() == RunStatus::Complete
                    && serde_json::to_value(&info.manifest.config).ok()
                        == serde_json::to_value(&cell.config).ok()
            }
            Err(_) => false,
        }
    }

    /// Run one cell in this process (what `--cell ID` does, locally or on a cluster node).
    pub fn run_cell(&self, id: &str, device: tch::Device) -> Result<RunSummary> {
        let cell = self.cell(id)?;
        std::fs::create_dir_all(&self.runs_dir)
            .with_context(|| format!("creating {}", self.runs_dir.display()))?;
        // A second process on the same cell stops at once, naming the one that runs it.
        let mut opts = RunOptions::unattended(self.runs_dir.clone(), device);
        opts.reuse_roots = vec![self.cells_root.clone()];
        crate::pipeline::run(&cell.config, &opts)
            .with_context(|| format!("cell {} ({})", cell.id, self.dir(cell).display()))
    }

    /// One note per cell that took stages from another cell: which stages, from which run.
    pub fn reuse_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for cell in &self.cells {
            let dir = self.dir(cell);
            let mut by_origin: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for stage in crate::pipeline::stage::Stage::ALL {
                if let Some(from) =
                    crate::pipeline::stage::read_record(&dir, stage).and_then(|r| r.reused_from)
                {
                    let from = Path::new(&from);
                    let shown = from.strip_prefix(&self.cells_root).unwrap_or(from);
                    by_origin.entry(shown.display().to_string()).or_default().push(stage.name());
                }
            }
            for (origin, stages) in by_origin {
                notes.push(format!(
                    "cell `{}` reuses the {} stage{} of the cell {origin} (same student, rows and settings): computed once",
                    cell.id,
                    stages.join(" and "),
                    if stages.len() > 1 { "s" } else { "" }
                ));
            }
        }
        notes
    }

    /// The cells as jobs for the local runner and the Slurm writer.
    pub fn jobs(&self) -> CellJobs {
        CellJobs {
            table: self.table.name().to_string(),
            scale: self.scale.clone(),
            detail: format!("teacher {}", self.teacher.name()),
            ids: self.cells.iter().map(|c| c.id.clone()).collect(),
            done: self.cells.iter().map(|c| self.is_done(c)).collect(),
            runs_dir: self.runs_dir.clone(),
            slurm: self.scale_spec.slurm.clone(),
        }
    }
}

/// Refuse an unfinished table: name the cells that are missing and how to make them.
pub fn ensure_all_done(plan: &CellPlan) -> Result<()> {
    let missing: Vec<&str> =
        plan.cells.iter().filter(|c| !plan.is_done(c)).map(|c| c.id.as_str()).collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} cells are not done ({}): run the table without --collect-only, or `--cell ID` for each",
            missing.len(),
            plan.cells.len(),
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_take_the_table_then_the_scale_then_the_row_settings() {
        let paths = Paths::from_env().unwrap();
        let root = tempfile::tempdir().unwrap();
        let laptop =
            plan(&paths, LiveTable::Table1, "laptop", TeacherSource::Recorded, root.path())
                .unwrap();
        assert_eq!(laptop.cells.len(), 9);
        let c = laptop.cell("temporal-no-model-retrieval").unwrap();
        assert_eq!((c.config.max_train_examples, c.config.max_test_examples), (Some(64), Some(60)));
        assert!(!c.config.model_retrieval && c.config.dataset_retrieval);
        assert_eq!(c.config.scale, "laptop");
        let smoke =
            plan(&paths, LiveTable::Table1, "smoke", TeacherSource::Recorded, root.path()).unwrap();
        assert_eq!(smoke.cell("temporal-prompt2model").unwrap().config.max_train_examples, None);
        let t3 =
            plan(&paths, LiveTable::Table3, "smoke", TeacherSource::Recorded, root.path()).unwrap();
        assert_eq!(t3.cells.len(), 24);
        assert!(t3.cells.iter().all(|c| !c.config.dataset_retrieval && !c.config.model_retrieval));
        assert!(t3.runs_dir.ends_with("table3/smoke/recorded"));
        let e = plan(&paths, LiveTable::Table3, "huge", TeacherSource::Recorded, root.path());
        assert!(e.unwrap_err().to_string().contains("smoke"));
        let e = t3.cell("nope").unwrap_err().to_string();
        assert!(e.contains("--list-cells"), "{e}");
    }

    #[test]
    fn a_cell_that_took_stages_from_another_is_named_with_them() {
        let paths = Paths::from_env().unwrap();
        let root = tempfile::tempdir().unwrap();
        let p =
            plan(&paths, LiveTable::Table1, "smoke", TeacherSource::Recorded, root.path()).unwrap();
        assert!(p.reuse_notes().is_empty());
        let origin = p.dir(p.cell("mconala-prompt2model").unwrap());
        let taker = p.dir(p.cell("mconala-no-model-retrieval").unwrap());
        for (folder, stage) in [("training", "train"), ("evaluation", "evaluate")] {
            std::fs::create_dir_all(taker.join(folder)).unwrap();
            let record = serde_json::json!({
                "stage": stage,
                "status": "done", "fingerprint": "f", "settings": {}, "inputs": {}, "outputs": {},
                "summary": "", "started": "", "seconds": 0.0, "total_seconds": 0.0,
                "reused_from": origin.display().to_string(),
            });
            std::fs::write(taker.join(folder).join("stage.json"), record.to_string()).unwrap();
        }
        assert_eq!(
            p.reuse_notes(),
            ["cell `mconala-no-model-retrieval` reuses the training and evaluation stages of the cell table1/smoke/recorded/mconala-prompt2model (same student, rows and settings): computed once"]
        );
    }

    /// Table 3's laptop students are close: at least six SmolLM2 fine-tunings per task that
    /// differ in data, epochs, learning rate, depth and frozen layers, the untrained, MiniLM and
    /// random ones marked as sanity rows (outside τ); every student spec parses.
    #[test]
    fn table3_laptop_rows_are_close_students_beside_sanity_rows() {
        let paths = Paths::from_env().unwrap();
        let root = tempfile::tempdir().unwrap();
        let p = plan(&paths, LiveTable::Table3, "laptop", TeacherSource::Recorded, root.path())
            .unwrap();
        for task in ["squad", "temporal", "mconala"] {
            let cells: Vec<&Cell> = p.cells.iter().filter(|c| c.task == task).collect();
            let close: Vec<&Cell> = cells.iter().copied().filter(|c| !c.sanity).collect();
            assert!(close.len() >= 6, "{task}: {} close students", close.len());
            for c in &cells {
                let spec = c.config.student.as_deref().unwrap_or_default();
                spec.parse::<crate::trainer::StudentSpec>().unwrap();
                assert_eq!(
                    c.sanity,
                    !spec.starts_with("decoder") || c.row == "smollm2-untrained",
                    "{}",
                    c.id
                );
            }
            assert!(close.iter().any(|c| c.config.student.as_deref() == Some("decoder:layers=24")));
            assert!(close.iter().any(|c| c.config.student.as_deref() == Some("decoder:freeze=15")));
            assert!(close.iter().any(|c| c
                .config
                .train
                .as_ref()
                .is_some_and(|t| t.contains_key("lora"))));
        }
    }

    #[test]
    fn the_slurm_files_name_the_array_the_resources_and_the_collector() {
        let paths = Paths::from_env().unwrap();
        let root = tempfile::tempdir().unwrap();
        let p = plan(&paths, LiveTable::Table3, "laptop", TeacherSource::Recorded, root.path())
            .unwrap();
        let out = root.path().join("slurm");
        let files = emit_slurm(
            &p.jobs(),
            &out,
            Path::new("/opt/p2m/table3"),
            &["--source".into(), "live".into()],
            3,
        )
        .unwrap();
        assert_eq!(files.len(), 3);
        let cells = std::fs::read_to_string(out.join("cells.sbatch")).unwrap();
        for needle in [
            "#SBATCH --array=0-32%3",
            "#SBATCH --time=01:00:00",
            "#SBATCH --mem=8G",
            "#SBATCH --cpus-per-task=2",
            "'/opt/p2m/table3' '--source' 'live' --cell",
        ] {
            assert!(cells.contains(needle), "{needle} in\n{cells}");
        }
        assert!(!cells.contains("--gres"), "no GPU at the laptop scale");
        let submit = std::fs::read_to_string(out.join("submit.sh")).unwrap();
        assert!(submit.contains("--dependency=afterok:"), "{submit}");
    }
}

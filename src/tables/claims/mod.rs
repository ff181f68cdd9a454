//! The paper's claims, each re-tested live with a verdict (`cargo run --release --bin claims`).
//!
//! The claims are data (`data/claims.toml`, [`spec`]): each names the comparison of a table that
//! tests it. The numbers come from the tables' own code, run on their own cells: live Table 1
//! (its paired tests against the teacher and between rows, its teacher-sample check), live
//! Table 3 (τ and its interval), Table 2 (its arms; the paired difference with the same seeded
//! resamples as its paired tests) and the generator's diversity ablation (`diversity`, a cell of
//! its own). One plan holds every cell of every table at a scale ([`ClaimsPlan::jobs`]): the binary
//! runs the missing ones (`--jobs N`, or a Slurm array), each as `claims --cell <table>:<id>`, then
//! [`ClaimsPlan::collect`] reads them, `judge` measures each claim and [`verdict`] turns the
//! measurement into a verdict; `report` writes `reports/claims-<scale>/`.

mod diversity;
mod judge;
mod report;
pub mod spec;
pub mod verdict;

pub use diversity::{DiversityCell, DiversityRecord};
pub use report::{ClaimRow, ClaimsReport};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use self::judge::{claim_task, Sources};
use self::spec::{ClaimsFile, ClaimsScale};
use super::cells::{self, CellJobs, CellPlan, LiveTable, LiveTables, SlurmResources};
use super::table1_live;
use super::table2;
use super::table3_live;
use crate::data::registry::Registry;
use crate::evaluator::bootstrap::BootstrapConfig;
use crate::pipeline::config::TeacherSource;
use crate::report::Manifest;
use crate::teacher::TeacherSettings;

/// What a claims run is: a scale, the cells' teacher, where the cells live.
#[derive(Debug, Clone)]
pub struct Options {
    /// smoke | laptop | paper (data/claims.toml, data/live_tables.toml, data/table2_scales.toml).
    pub scale: String,
    pub teacher: TeacherSource,
    /// The cells' teacher server (a `local` or `openai` teacher); `None` with `recorded`.
    pub teacher_settings: Option<TeacherSettings>,
    /// The cells' parent folder: `table1/`, `table3/`, `table2/` and `diversity/` below it.
    pub cells_root: PathBuf,
    pub device: tch::Device,
}

/// The ids of the cells of each table in [`ClaimsPlan::jobs`]: `<table>:<cell>`.
const TABLE1: &str = "table1";
const TABLE3: &str = "table3";
const TABLE2: &str = "table2";
const DIVERSITY: &str = "diversity";

/// Every cell behind the claims at a scale.
pub struct ClaimsPlan {
    pub opts: Options,
    pub file: ClaimsFile,
    pub scale_spec: ClaimsScale,
    pub live: LiveTables,
    pub table1: CellPlan,
    pub table3: CellPlan,
    pub table2: table2::Prepared,
    pub table2_opts: table2::Options,
    pub diversity: std::result::Result<DiversityCell, String>,
    /// Where the runner's logs go.
    pub logs_dir: PathBuf,
}

fn table2_options(opts: &Options) -> table2::Options {
    let mut t = table2::Options::new(&opts.scale);
    t.runs_dir = Some(opts.cells_root.join(TABLE2).join(&opts.scale));
    t.device = opts.device;
    t.progress = false;
    t
}

fn live_plan(registry: &Registry, opts: &Options, table: LiveTable) -> Result<CellPlan> {
    let mut plan =
        cells::plan(&registry.paths, table, &opts.scale, opts.teacher, &opts.cells_root)?;
    if let Some(s) = &opts.teacher_settings {
        plan.set_teacher_settings(s);
    }
    Ok(plan)
}

/// Run one cell, `<table>:<id>`, in this process (what each job of the runner and of the Slurm
/// array does); plans only that cell's table.
pub fn run_cell(registry: &Registry, opts: &Options, id: &str) -> Result<String> {
    let (table, cell) = id.split_once(':').with_context(|| {
        format!("cell `{id}`: expected `<table>:<cell>` (table1, table3, table2, diversity); --list-cells shows them")
    })?;
    match table {
        TABLE1 | TABLE3 => {
            let which = if table == TABLE1 { LiveTable::Table1 } else { LiveTable::Table3 };
            let summary = live_plan(registry, opts, which)?.run_cell(cell, opts.device)?;
            Ok(summary
                .metrics
                .iter()
                .map(|m| format!("{id}: {} {}", m.test_set, m.display()))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        TABLE2 => {
            let t2 = table2_options(opts);
            let prepared = table2::prepare(registry, &t2)?;
            let models = crate::models::registry::ModelRegistry::from_env()?;
            let record = prepared.run_arm(cell, &models, &t2)?;
            Ok(format!(
                "{id}: trained on {} examples in {:.1} s",
                record.train_examples, record.summary.seconds
            ))
        }
        DIVERSITY => {
            let file = load_file(registry)?;
            let spec = scale_spec(&file, &opts.scale)?;
            let d = DiversityCell::plan(&registry.paths, &opts.scale, &spec, opts)?
                .map_err(|why| anyhow::anyhow!("no diversity cell at this scale: {why}"))?;
            anyhow::ensure!(
                cell == d.task,
                "no diversity cell `{cell}`; this scale's is `{}`",
                d.task
            );
            let r = d.run()?.report;
            Ok(format!(
                "{id}: duplicate inputs {} of {} with high-diversity prompting, {} of {} without",
                r.with_high_diversity.duplicate_inputs,
                r.with_high_diversity.examples,
                r.without_high_diversity.duplicate_inputs,
                r.without_high_diversity.examples
            ))
        }
        other => bail!("cell `{id}`: no table `{other}` (table1, table3, table2, diversity)"),
    }
}

fn load_file(registry: &Registry) -> Result<ClaimsFile> {
    let paper = crate::data::paper::load_paper_results(&registry.paths.data)?;
    let live = LiveTables::load(&registry.paths.data)?;
    ClaimsFile::load(&registry.paths.data, &paper, &live)
}

fn scale_spec(file: &ClaimsFile, scale: &str) -> Result<ClaimsScale> {
    file.scales.get(scale).cloned().with_context(|| {
        format!(
            "unknown scale `{scale}`; data/{} has: {}",
            spec::CLAIMS_FILE,
            file.scales.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Seconds of a Slurm `--time` (`HH:MM:SS`, `MM:SS`, `D-HH:MM:SS`).
fn slurm_seconds(time: &str) -> u64 {
    let (days, rest) = match time.split_once('-') {
        Some((d, r)) => (d.parse().unwrap_or(0), r),
        None => (0u64, time),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse().unwrap_or(0)).collect();
    let hms = parts.iter().rev().zip([1u64, 60, 3600]).map(|(v, m)| v * m).sum::<u64>();
    days * 86_400 + hms
}

/// Megabytes of a Slurm `--mem` (`6G`, `512M`, a number is megabytes).
fn slurm_megabytes(mem: &str) -> u64 {
    let mem = mem.trim();
    let (num, unit) =
        mem.split_at(mem.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(mem.len()));
    let n: u64 = num.parse().unwrap_or(0);
    match unit.to_ascii_uppercase().as_str() {
        "K" => n / 1024,
        "G" => n * 1024,
        "T" => n * 1024 * 1024,
        _ => n,
    }
}

/// What every cell of a mixed array can run in: the largest of each resource.
fn widest(all: &[&SlurmResources]) -> SlurmResources {
    let time = all.iter().max_by_key(|r| slurm_seconds(&r.time)).map(|r| r.time.clone());
    let mem = all.iter().max_by_key(|r| slurm_megabytes(&r.mem)).map(|r| r.mem.clone());
    SlurmResources {
        time: time.unwrap_or_else(|| "01:00:00".into()),
        mem: mem.unwrap_or_else(|| "4G".into()),
        cpus: all.iter().map(|r| r.cpus).max().unwrap_or(1),
        gpus: all.iter().map(|r| r.gpus).max().unwrap_or(0),
    }
}

impl ClaimsPlan {
    /// Plan every cell at the scale (nothing runs).
    pub fn new(registry: &Registry, opts: Options) -> Result<ClaimsPlan> {
        let file = load_file(registry)?;
        let scale_spec = scale_spec(&file, &opts.scale)?;
        let live = LiveTables::load(&registry.paths.data)?;
        let table1 = live_plan(registry, &opts, LiveTable::Table1)?;
        let table3 = live_plan(registry, &opts, LiveTable::Table3)?;
        let table2_opts = table2_options(&opts);
        let table2 = table2::prepare(registry, &table2_opts)?;
        let diversity = DiversityCell::plan(&registry.paths, &opts.scale, &scale_spec, &opts)?;
        let logs_dir = opts.cells_root.join("claims").join(&opts.scale).join(opts.teacher.name());
        Ok(ClaimsPlan {
            opts,
            file,
            scale_spec,
            live,
            table1,
            table3,
            table2,
            table2_opts,
            diversity,
            logs_dir,
        })
    }

    /// Every cell as one list of jobs (`<table>:<cell>`), for the local runner and the Slurm
    /// writer; a Slurm array of them asks for the widest of the tables' resources.
    pub fn jobs(&self) -> CellJobs {
        let mut ids = Vec::new();
        let mut done = Vec::new();
        for (prefix, plan) in [(TABLE1, &self.table1), (TABLE3, &self.table3)] {
            for c in &plan.cells {
                ids.push(format!("{prefix}:{}", c.id));
                done.push(plan.is_done(c));
            }
        }
        let t2 = self.table2.jobs();
        for (id, d) in t2.ids.iter().zip(&t2.done) {
            ids.push(format!("{TABLE2}:{id}"));
            done.push(*d);
        }
        if let Ok(d) = &self.diversity {
            ids.push(format!("{DIVERSITY}:{}", d.task));
            done.push(d.finished().is_some());
        }
        CellJobs {
            table: "claims".into(),
            scale: self.opts.scale.clone(),
            detail: format!(
                "Tables 1 and 3 with teacher {}, Table 2's arms{}",
                self.opts.teacher.name(),
                if self.diversity.is_ok() { ", the diversity ablation" } else { "" }
            ),
            ids,
            done,
            runs_dir: self.logs_dir.clone(),
            slurm: widest(&[
                &self.table1.scale_spec.slurm,
                &self.table3.scale_spec.slurm,
                &self.table2.scale.slurm,
            ]),
        }
    }

    /// Why the missing cells are not run here, if they are not: a scale whose cells ask for a GPU
    /// (data/live_tables.toml, data/table2_scales.toml) on a machine without one.
    pub fn not_runnable_here(&self) -> Option<String> {
        let needs_gpu = [
            &self.table1.scale_spec.slurm,
            &self.table3.scale_spec.slurm,
            &self.table2.scale.slurm,
        ]
        .iter()
        .any(|r| r.gpus > 0);
        (needs_gpu && !self.opts.device.is_cuda()).then(|| {
            format!("{} scale: not run here (its cells ask for a GPU, and none is visible; `--emit-slurm DIR` writes them for a cluster)", self.opts.scale)
        })
    }

    /// Read the finished cells through the tables' own code, and judge every claim.
    pub fn collect(self, registry: &Registry) -> Result<ClaimsReport> {
        // Why a table's claims have no numbers (its cells not all done), for the report.
        let not_here = self.not_runnable_here();
        let scale = self.opts.scale.clone();
        let missing = |what: &str, missing: usize, total: usize| {
            match &not_here {
            Some(why) => format!("{why}; {missing} of {total} {what} missing"),
            None => format!(
                "{missing} of {total} {what} not done at scale {scale}: run `claims --scale {scale}` without --collect-only"
            ),
        }
        };
        let count_missing =
            |plan: &CellPlan| plan.cells.iter().filter(|c| !plan.is_done(c)).count();
        let table1 = match count_missing(&self.table1) {
            0 => Ok(table1_live::collect(&self.table1, registry)?),
            m => Err(missing("Table 1 cells", m, self.table1.cells.len())),
        };
        let table3 = match count_missing(&self.table3) {
            0 => Ok(table3_live::collect(&self.table3, registry)?),
            m => Err(missing("Table 3 cells", m, self.table3.cells.len())),
        };
        let arm_dirs: BTreeMap<String, PathBuf> = self
            .table2
            .arms
            .iter()
            .map(|a| (a.name.to_string(), self.table2.runs_dir.join(&a.id)))
            .collect();
        let t2_missing =
            self.table2.arms.iter().filter(|a| self.table2.finished(a).is_none()).count();
        let t2_total = self.table2.arms.len();
        let t2_missing_why = missing("Table 2 arms", t2_missing, t2_total);
        let table2_runs = self.table2.runs_dir.clone();
        let table2 = match t2_missing {
            0 => Ok(self.table2.collect()?),
            _ => Err(t2_missing_why),
        };
        let diversity = match &self.diversity {
            Ok(d) => d.finished().ok_or_else(|| missing("diversity cells", 1, 1)),
            Err(why) => Err(why.clone()),
        };
        let sources = Sources {
            table1,
            table3,
            table2,
            arm_dirs,
            diversity,
            scale: self.opts.scale.clone(),
            teacher: self.opts.teacher.name().to_string(),
        };
        let tasks = crate::data::tasks::load_tasks(&registry.paths.data)?;
        let paper = crate::data::paper::load_paper_results(&registry.paths.data)?;
        let metric_of = |task: &str| {
            crate::data::tasks::find(&tasks, task)
                .map(|t| t.metric().display_name().to_string())
                .unwrap_or_else(|| task.to_string())
        };
        let mut rows = Vec::new();
        for c in &self.file.claims {
            rows.push(sources.judge(
                c,
                &paper,
                &self.live,
                &metric_of(claim_task(c).unwrap_or("")),
            )?);
        }
        let bootstrap = BootstrapConfig::default();
        let claims_sha =
            crate::util::fs::sha256_file(&registry.paths.data.join(spec::CLAIMS_FILE))?;
        let source_manifest = |m: Option<&Manifest>, why: Option<&String>| match (m, why) {
            (Some(m), _) => {
                serde_json::json!({ "report": m.report, "git_commit": m.git_commit, "config": m.config })
            }
            (None, Some(w)) => serde_json::json!({ "missing": w }),
            _ => serde_json::Value::Null,
        };
        let mut manifest = Manifest::new(
            &format!("claims-{}", self.opts.scale),
            &registry.paths.root,
            serde_json::json!({
                "scale": self.opts.scale,
                "teacher": self.opts.teacher.name(),
                "cells_root": self.opts.cells_root,
                "claims_file_sha256": claims_sha,
                "bootstrap": bootstrap.signature(),
                "sources": {
                    "table1": source_manifest(sources.table1.as_ref().ok().map(|t| &t.manifest), sources.table1.as_ref().err()),
                    "table3": source_manifest(sources.table3.as_ref().ok().map(|t| &t.manifest), sources.table3.as_ref().err()),
                    "table2": source_manifest(sources.table2.as_ref().ok().map(|t| &t.manifest), sources.table2.as_ref().err()),
                    "table2_runs": table2_runs,
                    "diversity": match &sources.diversity {
                        Ok(r) => serde_json::json!({ "key": r.key, "task": r.task, "teacher": r.teacher, "report": r.report, "dir": self.diversity.as_ref().ok().map(|d| &d.dir) }),
                        Err(w) => serde_json::json!({ "missing": w }),
                    },
                },
            }),
        );
        for m in [
            sources.table1.as_ref().ok().map(|t| &t.manifest),
            sources.table3.as_ref().ok().map(|t| &t.manifest),
            sources.table2.as_ref().ok().map(|t| &t.manifest),
        ]
        .into_iter()
        .flatten()
        {
            manifest.add_inputs(m.inputs.clone());
            for (k, v) in &m.metric_signatures {
                manifest.metric_signatures.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let mut notes = vec![format!(
            "Scale `{}` ({}); the cells' teacher `{}`; the cells under {} (table1/, table3/, table2/, diversity/). Each claim's number comes from those cells through the tables' own code; `manifest.json` names every cell and its configuration.",
            self.opts.scale,
            self.scale_spec.description,
            self.opts.teacher.name(),
            self.opts.cells_root.display()
        )];
        notes.extend(verdict::RULE.iter().map(|r| format!("Verdict rule: {r}")));
        for c in &self.file.claims {
            if let Some(n) = &c.note {
                notes.push(format!("`{}`: {n}", c.id));
            }
        }
        notes.push("Table 2 always trains on the authors' recorded gpt-3.5-turbo data (its generation arm), whatever the cells' teacher.".into());
        let teacher_sample =
            sources.table1.as_ref().ok().map(|t| t.teacher_sample_frame()).transpose()?;
        Ok(ClaimsReport {
            scale: self.opts.scale.clone(),
            teacher: self.opts.teacher.name().to_string(),
            rows,
            teacher_sample,
            notes,
            manifest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_scale_scores_table1_on_whole_test_sets_up_to_a_thousand_examples() {
        // Issue #22, item 4: Temporal (860) and MCoNaLa (210) whole, SQuAD a seeded 1,000.
        let paths = crate::config::Paths::from_env().unwrap();
        let root = tempfile::tempdir().unwrap();
        let plan =
            cells::plan(&paths, LiveTable::Table1, "paper", TeacherSource::Recorded, root.path())
                .unwrap();
        assert!(plan.cells.iter().all(|c| c.config.max_test_examples == Some(1000)));
    }

    #[test]
    fn a_mixed_slurm_array_asks_for_the_widest_resources() {
        let a = SlurmResources { time: "00:10:00".into(), mem: "3G".into(), cpus: 1, gpus: 0 };
        let b = SlurmResources { time: "1-00:00:00".into(), mem: "512M".into(), cpus: 8, gpus: 1 };
        let c = SlurmResources { time: "04:00:00".into(), mem: "32G".into(), cpus: 2, gpus: 0 };
        let w = widest(&[&a, &b, &c]);
        assert_eq!(
            w,
            SlurmResources { time: "1-00:00:00".into(), mem: "32G".into(), cpus: 8, gpus: 1 }
        );
        assert_eq!(slurm_seconds("01:30:00"), 5400);
        assert_eq!(slurm_seconds("1-00:00:00"), 86_400);
        assert_eq!(slurm_megabytes("6G"), 6144);
    }
}

//! The paper's claims, each re-tested live with a verdict (`cargo run --release --bin claims`).
//!
//! The claims are data (`data/claims.toml`, [`spec`]): each names the comparison of a table that
//! tests it. The numbers come from the tables' own code, run on their own cells: live Table 1
//! (its paired tests against the teacher and between rows, its teacher-sample check), live
//! Table 3 (τ and its interval), Table 2 (its arms; the paired difference with the same seeded
//! resamples as its paired tests) and the generator's diversity ablation. One plan holds every cell
//! of every table at a scale ([`ClaimsPlan::jobs`]): the binary runs the missing ones (`--jobs N`,
//! or a Slurm array), each as `claims --cell <table>:<id>`, then [`ClaimsPlan::collect`] reads them
//! and [`verdict`] turns each measurement into a verdict, written to `reports/claims-<scale>/`.

pub mod spec;
pub mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use self::spec::{ClaimSpec, ClaimTest, ClaimsFile, ClaimsScale, RecordedFallback};
use self::verdict::{
    difference_of_proportions, identical_arms, judge, ArmIdentity, Estimate, Obstacle, Verdict,
};
use super::cells::{self, teacher_name, CellJobs, CellPlan, LiveTable, LiveTables, SlurmResources};
use super::table1_live::{self, Table1Live, TEACHER_ROW};
use super::table2::{self, Table2};
use super::table3_live::{self, Table3Live};
use crate::data::loaders;
use crate::data::registry::Registry;
use crate::dataset_generator::{DiversityReport, GeneratorConfig};
use crate::evaluator::bootstrap::{paired_difference, BootstrapConfig, CorpusScorer};
use crate::evaluator::Metric;
use crate::pipeline::config::TeacherSource;
use crate::report::figures::{ForestPanel, ForestRow};
use crate::report::{Manifest, Report, ReportTable};
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

/// The diversity ablation as a cell: its settings and where its result goes.
#[derive(Debug, Clone)]
pub struct DiversityCell {
    pub task: String,
    pub prompt: String,
    pub n: usize,
    pub teacher: TeacherSettings,
    /// Why this teacher (the cells' own, or the offline one standing in for `recorded`).
    pub teacher_why: String,
    pub dir: PathBuf,
    /// sha256 of everything that decides the result.
    pub key: String,
}

/// A finished diversity cell (`result.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiversityRecord {
    pub key: String,
    pub task: String,
    /// `backend / model` of the teacher that generated.
    pub teacher: String,
    pub teacher_why: String,
    pub report: DiversityReport,
    pub seconds: f64,
}

const DIVERSITY_RESULT: &str = "result.json";

impl DiversityCell {
    /// The cell at `scale`, or why there is none (no ablation at this scale, or no teacher that
    /// can generate).
    pub fn plan(
        paths: &crate::config::Paths,
        scale: &str,
        spec: &ClaimsScale,
        opts: &Options,
    ) -> Result<std::result::Result<DiversityCell, String>> {
        let d = &spec.diversity;
        if d.n == 0 {
            return Ok(Err(format!(
                "the {scale} scale runs no diversity ablation (data/claims.toml, `diversity.n`)"
            )));
        }
        let (teacher, teacher_why, folder) = match (opts.teacher, &opts.teacher_settings) {
            (TeacherSource::Recorded, _) => match d.teacher_if_recorded {
                RecordedFallback::Local => (
                    TeacherSettings::default(),
                    "the offline SmolLM2 teacher, standing in for the recorded gpt-3.5-turbo, which cannot generate anew (the authors recorded only their high-diversity generations)".to_string(),
                    "recorded-local".to_string(),
                ),
                RecordedFallback::None => return Ok(Err("the recorded teacher cannot generate anew (the authors recorded only their high-diversity generations), and this scale names no stand-in (`teacher_if_recorded`)".into())),
            },
            (t, Some(s)) => (s.clone(), format!("the cells' own teacher ({})", teacher_name(t)), teacher_name(t).to_string()),
            (t, None) => bail!("the {} teacher of the cells has no settings", teacher_name(t)),
        };
        let tasks = crate::data::tasks::load_tasks(&paths.data)?;
        let task = crate::data::tasks::find(&tasks, &d.task).with_context(|| {
            format!(
                "data/claims.toml: scale `{scale}`: diversity task `{}` is not in data/tasks.toml",
                d.task
            )
        })?;
        let mut identity = serde_json::to_value(&teacher)?;
        if let Some(map) = identity.as_object_mut() {
            // Throughput settings do not change the answers.
            for k in [
                "requests_per_minute",
                "max_api_calls",
                "request_timeout_secs",
                "slots",
                "discover",
                "api_key_env",
                "response_format",
            ] {
                map.remove(k);
            }
        }
        let generator = GeneratorConfig { num_examples: d.n, ..GeneratorConfig::default() };
        let key = crate::util::fs::sha256_hex(
            serde_json::to_string(&serde_json::json!({
                "task": task.id, "prompt": task.prompt, "n": d.n, "teacher": identity, "generator": generator,
            }))?
            .as_bytes(),
        );
        Ok(Ok(DiversityCell {
            task: task.id.clone(),
            prompt: task.prompt.clone(),
            n: d.n,
            teacher,
            teacher_why,
            dir: opts.cells_root.join(DIVERSITY).join(scale).join(folder),
            key,
        }))
    }

    /// The finished record, if this cell's folder holds one made with exactly these settings.
    pub fn finished(&self) -> Option<DiversityRecord> {
        let text = std::fs::read_to_string(self.dir.join(DIVERSITY_RESULT)).ok()?;
        serde_json::from_str::<DiversityRecord>(&text).ok().filter(|r| r.key == self.key)
    }

    /// Run the ablation (the teacher's answers are recorded in the cell's own cache, so a killed
    /// run resumes without asking twice) and write `result.json`.
    pub fn run(&self) -> Result<DiversityRecord> {
        use crate::prompt_parser::{parse_prompt, ParseMode, ParserConfig};
        use crate::teacher::{CacheMode, CachedTeacher, Teacher};
        if let Some(done) = self.finished() {
            return Ok(done);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let started = std::time::Instant::now();
        let teacher = CachedTeacher::open(
            self.teacher.build()?,
            self.dir.join("teacher_cache.sqlite"),
            CacheMode::ReadWrite,
        )?;
        let generator = GeneratorConfig { num_examples: self.n, ..GeneratorConfig::default() };
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let report = runtime.block_on(async {
            let parser = ParserConfig { mode: ParseMode::Deterministic, ..ParserConfig::default() };
            let parsed = parse_prompt(&self.prompt, Some(&teacher), &parser).await?;
            anyhow::Ok(
                crate::dataset_generator::diversity_experiment(
                    &teacher, &parsed, self.n, &generator,
                )
                .await?,
            )
        })?;
        let record = DiversityRecord {
            key: self.key.clone(),
            task: self.task.clone(),
            teacher: format!("{} / {}", teacher.backend(), teacher.model()),
            teacher_why: self.teacher_why.clone(),
            report,
            seconds: started.elapsed().as_secs_f64(),
        };
        crate::util::fs::write_json(&self.dir.join(DIVERSITY_RESULT), &record)?;
        Ok(record)
    }
}

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
        let logs_dir =
            opts.cells_root.join("claims").join(&opts.scale).join(teacher_name(opts.teacher));
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
                "Tables 1 and 3 with teacher {}, Table 2's arms, the diversity ablation",
                teacher_name(self.opts.teacher)
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
            teacher: teacher_name(self.opts.teacher).to_string(),
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
                "teacher": teacher_name(self.opts.teacher),
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
            teacher_name(self.opts.teacher),
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
            teacher: teacher_name(self.opts.teacher).to_string(),
            rows,
            teacher_sample,
            notes,
            manifest,
        })
    }
}

/// The task a claim is about, where it has one.
fn claim_task(c: &ClaimSpec) -> Option<&str> {
    match &c.test {
        ClaimTest::Table1 { task, .. } | ClaimTest::Table3Tau { task } => Some(task),
        ClaimTest::Table2 { .. } | ClaimTest::Table2Cost { .. } => Some("squad"),
        ClaimTest::Diversity => None,
    }
}

/// Everything the claims are judged from: each table, or why it is missing.
struct Sources {
    table1: std::result::Result<Table1Live, String>,
    table3: std::result::Result<Table3Live, String>,
    table2: std::result::Result<Table2, String>,
    /// Table 2's arm folders by arm name (the trained students are there).
    arm_dirs: BTreeMap<String, PathBuf>,
    diversity: std::result::Result<DiversityRecord, String>,
    scale: String,
    teacher: String,
}

/// The measurement of a claim before the verdict.
#[derive(Default)]
struct Measured {
    estimate: Option<Estimate>,
    p_value: Option<f64>,
    test: Option<String>,
    n: Option<usize>,
    obstacles: Vec<Obstacle>,
    /// Said after the verdict's reason (what was used, what is unknown).
    remarks: Vec<String>,
    source: String,
}

impl Measured {
    fn missing(why: &str, source: String) -> Measured {
        Measured {
            obstacles: vec![Obstacle::NotTestable(why.to_string())],
            source,
            ..Default::default()
        }
    }
}

/// Two arms that both score 0 (the metric's floor) learned nothing: their agreement on every
/// example says nothing about the claim.
fn at_floor(a: &str, score_a: Option<f64>, b: &str, score_b: Option<f64>) -> Option<Obstacle> {
    (score_a == Some(0.0) && score_b == Some(0.0)).then(|| {
        Obstacle::Unreliable(format!(
            "`{a}` and `{b}` both score 0 (the metric's floor): students that learned nothing agree on every example"
        ))
    })
}

/// sha256 over a folder's `*.safetensors` files (names and contents, sorted by name).
fn weights_sha256(dir: &Path) -> Option<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return None;
    }
    let mut all = String::new();
    for f in &files {
        all.push_str(&f.file_name()?.to_string_lossy());
        all.push_str(&crate::util::fs::sha256_file(f).ok()?);
    }
    Some(crate::util::fs::sha256_hex(all.as_bytes()))
}

impl Sources {
    fn judge(
        &self,
        c: &ClaimSpec,
        paper: &crate::data::paper::PaperResults,
        live: &LiveTables,
        metric: &str,
    ) -> Result<ClaimRow> {
        let evidence = c.paper_evidence(paper, live)?;
        let m = match &c.test {
            ClaimTest::Table1 { task, first, second, varies } => {
                self.table1_claim(task, first, second, *varies)
            }
            ClaimTest::Table2 { first, second } => self.table2_claim(first, second)?,
            ClaimTest::Table2Cost { annotation, generation } => {
                self.table2_cost(annotation, generation)
            }
            ClaimTest::Table3Tau { task } => self.table3_claim(task),
            ClaimTest::Diversity => self.diversity_claim(),
        };
        let j = judge(c.expect, m.estimate.as_ref(), &m.obstacles);
        let why = std::iter::once(j.why).chain(m.remarks).collect::<Vec<_>>().join("; ");
        Ok(ClaimRow {
            id: c.id.clone(),
            section: c.section.clone(),
            claim: c.claim.clone(),
            paper: evidence.text,
            paper_value: evidence.value,
            quantity: c.quantity(live, |_| metric.to_string()),
            expect: c.expect.describe(),
            threshold: c.expect.reference(),
            ours: m.estimate,
            p_value: m.p_value,
            test: m.test,
            n: m.n,
            scale: self.scale.clone(),
            verdict: j.verdict,
            why,
            source: m.source,
        })
    }

    fn table1_claim(
        &self,
        task: &str,
        first: &str,
        second: &str,
        varies: Option<verdict::Varied>,
    ) -> Measured {
        let source =
            format!("table1/{}/{}: {task}-{first} − {task}-{second}", self.scale, self.teacher);
        let t1 = match &self.table1 {
            Ok(t) => t,
            Err(why) => return Measured::missing(why, source),
        };
        let Some(pair) =
            t1.paired.iter().find(|p| p.task == task && p.first == first && p.second == second)
        else {
            return Measured::missing(
                &format!("live Table 1 has no paired comparison of `{first}` and `{second}` on {task} (its report's notes say why)"),
                source,
            );
        };
        let d = &pair.paired.difference;
        let mut m = Measured {
            estimate: Some(Estimate::interval(d.value, d.low, d.high)),
            p_value: Some(pair.paired.p_value),
            test: Some("paired bootstrap, one-sided (first ≤ second)".into()),
            n: Some(d.n),
            source,
            ..Default::default()
        };
        if second == TEACHER_ROW {
            match t1.teacher_samples.iter().find(|t| t.task == task) {
                Some(t) => match (&t.whole, t.representative()) {
                    (Some(w), Some(false)) => m.obstacles.push(Obstacle::Unreliable(format!(
                        "the teacher scores {:.2} on the {}-example test sample, outside the 95 % interval of its score on the whole real test set ({w}, n = {}): the sample is not representative",
                        t.sample.value, t.sample.n, w.n
                    ))),
                    (Some(w), _) => m.remarks.push(format!(
                        "the teacher's sample score {:.2} lies inside its whole-test-set interval ({w}, n = {})",
                        t.sample.value, w.n
                    )),
                    (None, _) => m.remarks.push(format!(
                        "whether the {}-example sample is representative is not known ({})",
                        t.sample.n,
                        t.why_no_whole.as_deref().unwrap_or("no whole-test-set score")
                    )),
                },
                None => m.remarks.push("no teacher-sample check".into()),
            }
        } else {
            let identity = |row: &str| {
                t1.rows.iter().find(|r| r.task == task && r.row == row).map(|r| ArmIdentity {
                    label: r.label.clone(),
                    weights_sha256: r.model_sha256.clone(),
                    train_rows_sha256: r.train_rows_sha256.clone(),
                    student: (!r.student.is_empty()).then(|| r.student.clone()),
                })
            };
            let (a, b) =
                (identity(first).unwrap_or_default(), identity(second).unwrap_or_default());
            let varied = varies.unwrap_or(verdict::Varied::Data);
            if let Some(o) = identical_arms(&a, &b, varied) {
                m.obstacles.push(o);
            }
            let score = |row: &str| {
                t1.rows
                    .iter()
                    .find(|r| r.task == task && r.row == row)
                    .and_then(|r| r.real.as_ref())
                    .map(|i| i.value)
            };
            if let Some(o) = at_floor(&a.label, score(first), &b.label, score(second)) {
                m.obstacles.push(o);
            }
        }
        m
    }

    fn table2_claim(&self, first: &str, second: &str) -> Result<Measured> {
        let source = format!("table2/{}: {} − {}", self.scale, first, second);
        let t2 = match &self.table2 {
            Ok(t) => t,
            Err(why) => return Ok(Measured::missing(why, source)),
        };
        let scorer = |arm: &str| -> Result<CorpusScorer> {
            let (_, frame) = t2
                .predictions
                .iter()
                .find(|(a, _)| a == arm)
                .with_context(|| format!("Table 2 has no arm `{arm}` (data/claims.toml)"))?;
            let preds = loaders::string_column(frame, loaders::PREDICTION)?;
            let refs = loaders::string_list_column(frame, loaders::REFERENCES)?;
            Ok(CorpusScorer::new(Metric::ExactMatchSquad, &preds, &refs)?)
        };
        let (a, b) = (scorer(first)?, scorer(second)?);
        let paired = paired_difference(&a, &b, &BootstrapConfig::default())?;
        // Table 2's own paired test of the same pair, where it has one, must say the same.
        if let Some(t) = t2.paired.iter().find(|t| t.arm == first && t.against == second) {
            anyhow::ensure!(
                t.delta == paired.difference.value && t.p_value == paired.p_value,
                "Table 2's paired test of `{first}` against `{second}` (Δ {}, p {}) differs from the claims' (Δ {}, p {})",
                t.delta, t.p_value, paired.difference.value, paired.p_value
            );
        }
        let d = &paired.difference;
        let mut m = Measured {
            estimate: Some(Estimate::interval(d.value, d.low, d.high)),
            p_value: Some(paired.p_value),
            test: Some("paired bootstrap, one-sided (first ≤ second)".into()),
            n: Some(d.n),
            source,
            ..Default::default()
        };
        let score = |arm: &str| t2.arms.iter().find(|a| a.arm == arm).map(|a| a.em_squad.value);
        if let Some(o) = at_floor(first, score(first), second, score(second)) {
            m.obstacles.push(o);
        }
        let weights = |arm: &str| {
            self.arm_dirs.get(arm).and_then(|d| weights_sha256(&d.join("student/final")))
        };
        match (weights(first), weights(second)) {
            (Some(wa), Some(wb)) if wa == wb => m.obstacles.push(Obstacle::NotTestable(format!(
                "`{first}` and `{second}` trained identical weights (sha256 {}…): their scores are equal by construction",
                &wa[..12]
            ))),
            (Some(_), Some(_)) => {}
            _ => m.obstacles.push(Obstacle::NotTestable(format!(
                "no trained weights to compare for `{first}` or `{second}` (student/final/ of their arm folders)"
            ))),
        }
        Ok(m)
    }

    fn table2_cost(&self, annotation: &str, generation: &str) -> Measured {
        let source = format!("table2/{}: cost of {annotation} ÷ cost of {generation}", self.scale);
        let t2 = match &self.table2 {
            Ok(t) => t,
            Err(why) => return Measured::missing(why, source),
        };
        let arm = |name: &str| t2.arms.iter().find(|a| a.arm == name);
        let (Some(a), Some(g)) = (arm(annotation), arm(generation)) else {
            return Measured::missing(
                &format!("Table 2 has no arm `{annotation}` or `{generation}`"),
                source,
            );
        };
        let (Some(ca), Some(cg)) = (a.cost_usd, g.cost_usd) else {
            return Measured::missing(
                &format!("Table 2 states no cost for `{annotation}` or `{generation}`"),
                source,
            );
        };
        if cg <= 0.0 {
            return Measured::missing(
                &format!("`{generation}` cost nothing here ({}): no ratio", g.cost_basis),
                source,
            );
        }
        let mut m = Measured {
            estimate: Some(Estimate::exact(ca / cg)),
            test: Some("computed (no sampling interval)".into()),
            n: Some(g.train_examples),
            source,
            remarks: vec![format!(
                "${ca:.2} ({}) against ${cg:.4} ({})",
                a.cost_basis, g.cost_basis
            )],
            ..Default::default()
        };
        if g.cost_basis.contains("lower bound") {
            m.obstacles.push(Obstacle::UpperBound(format!(
                "the cost of `{generation}` is a lower bound, so the ratio is an upper bound"
            )));
        }
        m
    }

    fn table3_claim(&self, task: &str) -> Measured {
        let source = format!("table3/{}/{}: every {task} student", self.scale, self.teacher);
        let t3 = match &self.table3 {
            Ok(t) => t,
            Err(why) => return Measured::missing(why, source),
        };
        let Some(r) = t3.results.iter().find(|r| r.task == task) else {
            return Measured::missing(&format!("live Table 3 has no {task} row"), source);
        };
        let Some(tau) = &r.tau else {
            return Measured::missing(
                &format!("fewer than two {task} students: no ranking to compare"),
                source,
            );
        };
        if !tau.tau.is_finite() {
            return Measured::missing(
                &format!("τ is undefined: every {task} student scored the same on one test set, so there is no ranking to compare (live Table 3's notes give the scores)"),
                source,
            );
        }
        let (low, high) = r
            .tau_interval
            .as_ref()
            .map(|i| (100.0 * i.low, 100.0 * i.high))
            .unwrap_or((f64::NAN, f64::NAN));
        Measured {
            estimate: Some(Estimate::interval(100.0 * tau.tau, low, high)),
            p_value: Some(tau.p_value),
            test: Some("Kendall's τ-b, two-sided; interval: bootstrap over both test sets".into()),
            n: Some(r.students),
            source,
            remarks: vec![format!(
                "{} students, {} generated / {} real test examples",
                r.students, r.n_generated, r.n_real
            )],
            ..Default::default()
        }
    }

    fn diversity_claim(&self) -> Measured {
        let source = format!("diversity/{}", self.scale);
        let r = match &self.diversity {
            Ok(r) => r,
            Err(why) => return Measured::missing(why, source),
        };
        let (with, without) = (&r.report.with_high_diversity, &r.report.without_high_diversity);
        Measured {
            estimate: Some(difference_of_proportions(
                without.duplicate_inputs,
                without.examples,
                with.duplicate_inputs,
                with.examples,
            )),
            test: Some("difference of two proportions, Newcombe's hybrid score interval".into()),
            n: Some(r.report.n),
            source: format!("{source}: {}", r.task),
            remarks: vec![format!(
                "{} of {} duplicate inputs without, {} of {} with high-diversity prompting; teacher {} ({})",
                without.duplicate_inputs,
                without.examples,
                with.duplicate_inputs,
                with.examples,
                r.teacher,
                r.teacher_why
            )],
            ..Default::default()
        }
    }
}

/// One claim's row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimRow {
    pub id: String,
    pub section: String,
    pub claim: String,
    /// The paper's numbers, as a sentence.
    pub paper: String,
    /// The paper's value of the claim's quantity.
    pub paper_value: f64,
    pub quantity: String,
    pub expect: String,
    /// What the quantity is judged against (0 for a difference; ± the margin around it).
    pub threshold: f64,
    pub ours: Option<Estimate>,
    pub p_value: Option<f64>,
    /// Which test gave the interval and p.
    pub test: Option<String>,
    pub n: Option<usize>,
    pub scale: String,
    pub verdict: Verdict,
    pub why: String,
    /// Which cells the number comes from (relative to the cells' folder).
    pub source: String,
}

pub struct ClaimsReport {
    pub scale: String,
    pub teacher: String,
    pub rows: Vec<ClaimRow>,
    /// Live Table 1's teacher on the sample beside the whole test set.
    pub teacher_sample: Option<DataFrame>,
    pub notes: Vec<String>,
    pub manifest: Manifest,
}

impl ClaimsReport {
    /// The claims table: one row per claim, its verdict and why.
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let s = |f: &dyn Fn(&ClaimRow) -> String| r.iter().map(f).collect::<Vec<_>>();
        DataFrame::new_infer_height(vec![
            Column::new("id".into(), s(&|x| x.id.clone())),
            Column::new("section".into(), s(&|x| x.section.clone())),
            Column::new("claim".into(), s(&|x| x.claim.clone())),
            Column::new("paper".into(), s(&|x| x.paper.clone())),
            Column::new("quantity".into(), s(&|x| format!("{} ({})", x.quantity, x.expect))),
            Column::new(
                "paper value".into(),
                r.iter().map(|x| super::round2(x.paper_value)).collect::<Vec<_>>(),
            ),
            Column::new(
                "ours [95 %]".into(),
                r.iter().map(|x| x.ours.map(|e| e.to_string())).collect::<Vec<_>>(),
            ),
            Column::new(
                "p".into(),
                r.iter().map(|x| x.p_value.map(super::round2)).collect::<Vec<_>>(),
            ),
            Column::new("n".into(), r.iter().map(|x| x.n.map(|n| n as u32)).collect::<Vec<_>>()),
            Column::new("scale".into(), s(&|x| x.scale.clone())),
            Column::new("verdict".into(), s(&|x| x.verdict.label().to_string())),
            Column::new("why".into(), s(&|x| x.why.clone())),
        ])
    }

    /// Per claim: the numbers unrounded, the test behind them and the cells they come from.
    pub fn details_frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let f = |g: &dyn Fn(&Estimate) -> f64| {
            r.iter().map(|x| x.ours.as_ref().map(g)).collect::<Vec<_>>()
        };
        DataFrame::new_infer_height(vec![
            Column::new("id".into(), r.iter().map(|x| x.id.clone()).collect::<Vec<_>>()),
            Column::new(
                "quantity".into(),
                r.iter().map(|x| x.quantity.clone()).collect::<Vec<_>>(),
            ),
            Column::new("expect".into(), r.iter().map(|x| x.expect.clone()).collect::<Vec<_>>()),
            Column::new("paper value".into(), r.iter().map(|x| x.paper_value).collect::<Vec<_>>()),
            Column::new("ours".into(), f(&|e| e.value)),
            Column::new("low".into(), f(&|e| e.low)),
            Column::new("high".into(), f(&|e| e.high)),
            Column::new("p".into(), r.iter().map(|x| x.p_value).collect::<Vec<_>>()),
            Column::new("test".into(), r.iter().map(|x| x.test.clone()).collect::<Vec<_>>()),
            Column::new("source".into(), r.iter().map(|x| x.source.clone()).collect::<Vec<_>>()),
        ])
    }

    /// How many claims got each verdict, in the rule's order.
    pub fn tally(&self) -> Vec<(Verdict, usize)> {
        [Verdict::Reproduced, Verdict::NotReproduced, Verdict::Inconclusive, Verdict::NotTestable]
            .into_iter()
            .map(|v| (v, self.rows.iter().filter(|r| r.verdict == v).count()))
            .collect()
    }

    pub fn report(&self) -> Result<Report> {
        let mut claims = ReportTable::new(
            "claims",
            "The paper's claims re-tested here: the paper's numbers, ours with the 95 % interval, and a verdict",
            self.frame()?,
        );
        claims.decimals = 2;
        let mut details = ReportTable::new(
            "claims_details",
            "Each claim's numbers unrounded, the test behind them and the cells they come from",
            self.details_frame()?,
        );
        details.decimals = 4;
        let mut tables = vec![claims, details];
        if let Some(t) = &self.teacher_sample {
            tables.push(ReportTable::new(
                "claims_teacher_sample",
                "Table 1's teacher on the students' test sample beside its whole real test set (is the sample representative?)",
                t.clone(),
            ));
        }
        let tally = self
            .tally()
            .iter()
            .map(|(v, n)| format!("{n} {}", v.label()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut notes = vec![format!("{} claims: {tally}.", self.rows.len())];
        notes.extend(self.notes.iter().cloned());
        notes.push("The forest plot shows each measured quantity with its 95 % interval (blue dot, black whisker) beside the paper's value (grey cross) and the claim's threshold (dashed); the cost ratio, computed without an interval, is in the table only.".into());
        Ok(Report {
            name: format!("claims-{}", self.scale),
            title: format!(
                "The paper's claims, re-tested (scale {}, teacher {})",
                self.scale, self.teacher
            ),
            tables,
            notes,
            manifest: self.manifest.clone(),
        })
    }

    /// The forest plot's panels: one per table, each quantity in its own unit.
    pub fn forest_panels(&self) -> Vec<ForestPanel> {
        let panel = |title: &str, axis: &str, pick: &dyn Fn(&ClaimRow) -> bool| ForestPanel {
            title: title.into(),
            axis: axis.into(),
            rows: self
                .rows
                .iter()
                .filter(|r| pick(r))
                .map(|r| ForestRow {
                    label: format!("{} ({})", r.id, r.verdict.label()),
                    ours: r.ours.map(|e| (e.value, e.low, e.high)),
                    paper: Some(r.paper_value),
                    reference: r.threshold,
                })
                .collect(),
        };
        vec![
            panel(
                "Table 1: Prompt2Model − the other row, real test set",
                "points of the task's metric (EM or chrF++)",
                &|r| r.section == "Table 1",
            ),
            panel("Table 2: one arm − another", "SQuAD EM points", &|r| {
                r.section == "Table 2" && !r.quantity.starts_with("data cost")
            }),
            panel("Table 3: Kendall's τ × 100, generated vs real test set", "τ × 100", &|r| {
                r.section == "Table 3"
            }),
            panel(
                "Diversity ablation: duplicate share without − with high-diversity prompting",
                "percentage points",
                &|r| r.id.starts_with("diversity"),
            ),
        ]
    }

    /// Write `reports/claims-<scale>/`: tables, the forest plot, `claims.json`, the manifest.
    pub fn write(&self, reports_dir: &Path) -> Result<PathBuf> {
        let report = self.report()?;
        let stem = report.name.clone();
        let title = report.title.clone();
        let panels = self.forest_panels();
        let json = serde_json::json!({
            "scale": self.scale,
            "teacher": self.teacher,
            "rule": verdict::RULE,
            "claims": self.rows,
        });
        report
            .write(reports_dir, |dir| {
                crate::util::fs::write_json(&dir.join("claims.json"), &json)?;
                let mut files = vec!["claims.json".to_string()];
                files.extend(crate::report::figures::forest(dir, &stem, &title, &panels)?);
                Ok(files)
            })
            .context("writing the claims report")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn two_students_at_the_floor_are_not_evidence() {
        let o = at_floor("a", Some(0.0), "b", Some(0.0)).expect("both at 0");
        assert!(matches!(&o, Obstacle::Unreliable(w) if w.contains("both score 0")), "{o:?}");
        let j = judge(
            verdict::Expectation::Within { margin: 3.0 },
            Some(&Estimate::interval(0.0, 0.0, 0.0)),
            &[o],
        );
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.why);
        assert!(at_floor("a", Some(0.0), "b", Some(4.2)).is_none());
        assert!(at_floor("a", None, "b", Some(0.0)).is_none());
    }
}

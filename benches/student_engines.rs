//! A decoder student's predictions on the two engines, in one run: the executor on libtorch (tch)
//! and on llama.cpp (the student written as an f16 GGUF, the prompt prefix the inputs share
//! prefilled once per batch). Inputs: Temporal's instruction (~300 tokens) before each of
//! `--examples` short inputs built from its demonstrations, as `p2m predict --task temporal`
//! feeds them.
//!
//! ```sh
//! cargo bench --bench student_engines -- --bench [--student decoder:layers=2] [--examples 50]
//! # without a release build (deps are optimised in dev builds; llama.cpp and libtorch are C++):
//! cargo test --bench student_engines -- --bench
//! ```
//!
//! Prints examples/s of each engine and how many predictions agree. Under `cargo test
//! --all-targets` (no `--bench`) it runs 2 examples of 4 tokens as a smoke check.

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use prompt2model::config::Paths;
use prompt2model::executor::ExecutorConfig;
use prompt2model::models::registry::ModelRegistry;
use prompt2model::trainer::{model_input, Student, StudentSpec};
use tch::Device;

#[derive(Parser)]
struct Args {
    /// The student (a `--student` of `p2m train`); the default is the small one of the tests.
    #[arg(long, default_value = "decoder:layers=2")]
    student: String,
    #[arg(long, default_value_t = 50)]
    examples: usize,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` runs the binary without it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if !args.bench {
        (args.examples, args.max_new_tokens) = (2, 4);
    }
    let paths = Paths::from_env()?;
    let tasks = prompt2model::data::tasks::load_tasks(&paths.data)?;
    let task = prompt2model::data::tasks::find(&tasks, "temporal")
        .ok_or_else(|| anyhow::anyhow!("data/tasks.toml has no temporal task"))?;
    let inputs: Vec<String> = (0..args.examples)
        .map(|i| {
            let demo = &task.demonstrations[i % task.demonstrations.len()].input;
            // Another posted date per example, so that no two inputs are the same.
            let body = demo.split_once(']').map_or(demo.as_str(), |(_, b)| b);
            format!("[Posted: {}-{:02}-{:02}]{body}", 1990 + i % 30, 1 + i % 12, 1 + i % 28)
        })
        .collect();
    let sources: Vec<String> =
        inputs.iter().map(|i| model_input(0, &task.instruction, i)).collect();

    // The student saved as training saves it, then loaded as `p2m predict` loads it.
    let dir = tempfile::tempdir()?;
    let registry = ModelRegistry::from_env()?;
    let spec: StudentSpec = args.student.parse()?;
    Student::build(&spec, &registry, Device::Cpu, 1)?.save(dir.path())?;
    let cfg = ExecutorConfig {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
        ..ExecutorConfig::default()
    };
    let tokens = {
        let s = Student::from_dir(dir.path(), Device::Cpu)?;
        s.tokenizer.encode(sources[0].as_str(), true).map_err(anyhow::Error::msg)?.len()
    };
    let mut rows = Vec::new();
    let mut outputs = Vec::new();
    for engine in ["libtorch", "llama-cpp"] {
        let cfg = ExecutorConfig { engine: engine.parse()?, ..cfg.clone() };
        let t0 = Instant::now();
        let student = prompt2model::executor::load_student(
            dir.path(),
            Device::Cpu,
            &cfg,
            Some(&paths.cache),
        )?;
        let load = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        // libtorch with its prefix cache (the default), llama.cpp sharing the prefix itself.
        let out = student.generate(
            &sources,
            cfg.max_source_len,
            &cfg.sampling(),
            cfg.batch_size,
            cfg.prefix_cache,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        rows.push((engine, load, secs, args.examples as f64 / secs));
        outputs.push(out);
    }
    let same = outputs[0].iter().zip(&outputs[1]).filter(|(a, b)| a == b).count();
    println!(
        "student {} | {} examples, prompt {tokens} tokens (first), ≤ {} new tokens, batch {}, {} threads",
        args.student,
        args.examples,
        args.max_new_tokens,
        args.batch_size,
        tch::get_num_threads()
    );
    for (engine, load, secs, rate) in &rows {
        println!("{engine:>10}: {rate:6.2} examples/s ({secs:.1} s; loading {load:.1} s)");
    }
    println!(
        "llama-cpp / libtorch: {:.2}×; predictions equal on {same}/{}",
        rows[1].3 / rows[0].3,
        args.examples
    );
    ensure!(outputs.iter().all(|o| o.len() == args.examples), "an engine lost predictions");
    Ok(())
}

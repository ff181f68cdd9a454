//! `p2m train` and `p2m predict`: the trainer and the executor on the command line.
//!
//! Training data are JSONL files of `{"input": ..., "output": ...}` objects (what `p2m generate`
//! writes as `examples.jsonl`). `--train` files are task 0 (generated / the user's own data),
//! `--retrieved` files task 1, as the reference numbers them.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use prompt2model::data::examples::read_examples_jsonl;
use prompt2model::executor;
use prompt2model::models::registry::ModelRegistry;
use prompt2model::trainer::{self, Student, StudentSpec, TextPair, Trainer};

use crate::shared::InstructionArgs;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training examples (JSONL, `input`/`output`), textualised as task 0; repeatable.
    #[arg(long, required = true)]
    pub train: Vec<PathBuf>,
    /// Retrieved examples (JSONL, `input`/`output`), textualised as task 1; repeatable.
    #[arg(long)]
    pub retrieved: Vec<PathBuf>,
    /// Validation examples (JSONL); the loss on them is reported after each epoch.
    #[arg(long)]
    pub validation: Option<PathBuf>,
    #[command(flatten)]
    pub instruction: InstructionArgs,
    /// Output folder: checkpoints/ and final/. Running the same command again resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// `warm-start` (BERT2BERT from all-MiniLM-L6-v2), `decoder` (SmolLM2-135M-Instruct, decoder-only),
    /// `tiny:HIDDEN:LAYERS:HEADS`, or a model folder (T5, BERT2BERT or llama-family).
    #[arg(long, default_value = "warm-start")]
    pub student: String,
    /// A TOML file of training settings (src/trainer TrainConfig fields); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_source_len: Option<usize>,
    #[arg(long)]
    pub max_target_len: Option<usize>,
    /// `bf16`: the linear layers multiply in bf16 on the f32 master weights (CPU autocast's rule;
    /// 1.3–1.5× faster steps on CPUs with AVX-512 BF16); `f32` (default): everything in f32.
    #[arg(long)]
    pub precision: Option<prompt2model::models::precision::Precision>,
    /// Train LoRA adapters of this rank on a frozen base instead of every weight (the
    /// reference's peft_trainer: 8); merged into the saved weights at the end.
    #[arg(long)]
    pub lora_rank: Option<i64>,
    /// LoRA's α (the adapters' output is scaled by α / rank) [default: 16].
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// LoRA dropout on the adapters' input [default: 0.05].
    #[arg(long, requires = "lora_rank")]
    pub lora_dropout: Option<f64>,
    /// Comma-separated module names to adapt (PEFT's target_modules) [default: the student's:
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj for a decoder].
    #[arg(long, requires = "lora_rank", value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// Also write the adapters apart in PEFT's layout (final/adapter/: adapter_config.json,
    /// adapter_model.safetensors) besides the merged model.
    #[arg(long, requires = "lora_rank")]
    pub keep_adapters: bool,
    /// Run on the CPU even when a GPU is visible.
    #[arg(long)]
    pub cpu: bool,
    /// Print the training summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A trained student: `final/` of `p2m train`, or `runs/<name>/model` of `p2m run` (whose
    /// p2m.json gives the instruction and the generation settings).
    #[arg(long)]
    pub model: PathBuf,
    /// Inputs: JSONL with `input`, and optionally `output` as the reference.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write predictions: `.parquet` (id, input, references, prediction) or `.jsonl`
    /// (input, prediction, and the reference as `output` when given).
    #[arg(long)]
    pub out: PathBuf,
    /// The task instruction (default: the packaged model's).
    #[arg(long, conflicts_with = "task")]
    pub instruction: Option<String>,
    /// Use the instruction of a paper task of data/tasks.toml.
    #[arg(long)]
    pub task: Option<String>,
    /// Default: the packaged model's, else 64.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Default: the packaged model's, else 2.0 (the reference executor's).
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Prefill every input whole, as before the prefix cache (by default a decoder student
    /// prefills the token prefix all inputs share once): the path to time the cache against.
    /// The greedy outputs agree token for token in the tests (tests/prefix_cache.rs).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// `libtorch` (`tch`) or `llama-cpp`: a decoder student decoded by llama.cpp from an f16 GGUF
    /// of its weights (written once into the cache, named by the weights' sha256), the prompt
    /// prefix the inputs share prefilled once per batch [default: the packaged model's, else
    /// libtorch].
    #[arg(long)]
    pub engine: Option<prompt2model::models::chat::DecodingEngine>,
    /// `bf16`: the student's linear layers multiply in bf16 while predicting (weights cast once;
    /// faster, and the predictions may differ from f32's: README "Prediction") [default: the
    /// packaged model's, else f32]. The libtorch engine only.
    #[arg(long)]
    pub precision: Option<prompt2model::models::precision::Precision>,
    #[arg(long)]
    pub cpu: bool,
}

fn read_pairs(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let examples = read_examples_jsonl(path).with_context(|| {
        format!("{}: expected JSONL lines of {{\"input\": ..., \"output\": ...}}", path.display())
    })?;
    anyhow::ensure!(!examples.is_empty(), "{}: no examples", path.display());
    Ok(examples.into_iter().map(|e| (e.input, e.output)).collect())
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let instruction = args.instruction.text(&prompt2model::config::Paths::from_env()?)?;
    let mut cfg = match &args.config {
        Some(p) => trainer::load_train_config(p)?,
        None => trainer::TrainConfig::default(),
    };
    macro_rules! set {
        ($field:ident, $val:expr) => {
            if let Some(v) = $val {
                cfg.$field = v;
            }
        };
    }
    set!(epochs, args.epochs);
    set!(learning_rate, args.lr);
    set!(batch_size, args.batch_size);
    set!(checkpoint_every, args.checkpoint_every);
    set!(seed, args.seed);
    set!(max_source_len, args.max_source_len);
    set!(max_target_len, args.max_target_len);
    set!(precision, args.precision);
    if args.max_steps.is_some() {
        cfg.max_steps = args.max_steps;
    }
    if let Some(rank) = args.lora_rank {
        let mut lora = cfg.lora.take().unwrap_or_default();
        lora.rank = rank;
        if let Some(alpha) = args.lora_alpha {
            lora.alpha = alpha;
        }
        if let Some(dropout) = args.lora_dropout {
            lora.dropout = dropout;
        }
        if !args.lora_targets.is_empty() {
            lora.targets = args.lora_targets.clone();
        }
        lora.keep_adapters |= args.keep_adapters;
        cfg.lora = Some(lora);
    }
    cfg.validate()?;
    let mut parts = Vec::new();
    for p in &args.train {
        parts.push(trainer::apply_template(0, &instruction, &read_pairs(p)?));
    }
    for p in &args.retrieved {
        parts.push(trainer::apply_template(1, &instruction, &read_pairs(p)?));
    }
    let train_set = trainer::concatenate_and_shuffle(parts, cfg.seed);
    let validation: Vec<TextPair> = match &args.validation {
        Some(p) => trainer::apply_template(0, &instruction, &read_pairs(p)?),
        None => vec![],
    };
    let device = if args.cpu { tch::Device::Cpu } else { prompt2model::models::default_device() };
    let models = ModelRegistry::from_env()?;
    let mut student =
        Student::build(&args.student.parse::<StudentSpec>()?, &models, device, cfg.seed)?;
    let mut trainer = Trainer::new(cfg, &mut student, &args.out);
    trainer.label = "train".into();
    let summary = trainer.train(&train_set, &validation)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for e in &summary.epochs {
            println!(
                "epoch {}: train loss {:.4}{}",
                e.epoch + 1,
                e.train_loss,
                e.validation_loss.map(|v| format!(", validation loss {v:.4}")).unwrap_or_default()
            );
        }
        println!(
            "{} optimizer steps, {:.1} examples/s{}; model: {}",
            summary.optimizer_steps,
            summary.examples_per_second,
            summary
                .resumed_from_step
                .map(|s| format!(" (resumed at step {s})"))
                .unwrap_or_default(),
            args.out.join("final").display()
        );
    }
    Ok(())
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    use prompt2model::pipeline::package::{ModelManifest, MANIFEST_FILE};
    let packaged = if args.model.join(MANIFEST_FILE).exists() {
        Some(ModelManifest::read(&args.model)?)
    } else {
        None
    };
    let instruction = match (&args.instruction, &args.task, &packaged) {
        (None, None, Some(m)) => m.instruction.clone(),
        (None, None, None) => anyhow::bail!(
            "{} has no {MANIFEST_FILE} (it is not a model packaged by `p2m run`): pass --instruction or --task",
            args.model.display()
        ),
        _ => InstructionArgs { instruction: args.instruction.clone(), task: args.task.clone() }
            .text(&prompt2model::config::Paths::from_env()?)?,
    };
    let mut cfg = packaged.as_ref().map(|m| m.executor.clone()).unwrap_or_default();
    if let Some(v) = args.max_new_tokens {
        cfg.max_new_tokens = v;
    }
    if let Some(v) = args.repetition_penalty {
        cfg.repetition_penalty = v;
    }
    if let Some(v) = args.batch_size {
        cfg.batch_size = v;
    }
    if args.no_prefix_cache {
        cfg.prefix_cache = false;
    }
    if let Some(v) = args.engine {
        cfg.engine = v;
    }
    if let Some(v) = args.precision {
        cfg.precision = v;
    }
    let device = if args.cpu { tch::Device::Cpu } else { prompt2model::models::default_device() };
    let student = executor::load_student(&args.model, device, &cfg, None)?;
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut inputs = Vec::new();
    let mut refs: Vec<Vec<String>> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", args.input.display(), i + 1))?;
        let input = v["input"].as_str().with_context(|| {
            format!("{} line {}: no string field `input`", args.input.display(), i + 1)
        })?;
        inputs.push(input.to_string());
        refs.push(v["output"].as_str().map(|o| vec![o.to_string()]).unwrap_or_default());
    }
    anyhow::ensure!(!inputs.is_empty(), "{}: no inputs", args.input.display());
    let ids: Vec<String> = (0..inputs.len()).map(|i| i.to_string()).collect();
    let frame = prompt2model::data::loaders::common_frame(ids, inputs.clone(), &refs, None)?;
    // Refuse an output name we would not honour before spending the prediction time.
    let as_jsonl = match args.out.extension().and_then(|e| e.to_str()) {
        Some("parquet") => false,
        Some("jsonl") => true,
        _ => anyhow::bail!(
            "--out {}: predictions are written as .parquet (id, input, references, prediction) or .jsonl (input, prediction, output); name the file with one of those extensions",
            args.out.display()
        ),
    };
    let out = executor::predict_frame(&student, &instruction, &frame, &cfg)?;
    let preds =
        prompt2model::data::loaders::string_column(&out, prompt2model::data::loaders::PREDICTION)?;
    if as_jsonl {
        let mut text = String::new();
        for ((input, prediction), r) in inputs.iter().zip(&preds).zip(&refs) {
            let mut line = serde_json::json!({ "input": input, "prediction": prediction });
            if let Some(reference) = r.first() {
                line["output"] = serde_json::json!(reference);
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
        prompt2model::util::fs::write_atomic(&args.out, text.as_bytes())
            .with_context(|| format!("writing {}", args.out.display()))?;
    } else {
        prompt2model::report::write_parquet_atomic(&out, &args.out)?;
    }
    if refs.iter().all(|r| !r.is_empty()) {
        let em = prompt2model::evaluator::score(
            prompt2model::evaluator::Metric::ExactMatchSquad,
            &preds,
            &refs,
        )?;
        println!("{} predictions → {}; {em}", preds.len(), args.out.display());
    } else {
        println!(
            "{} predictions → {} (no references given: not scored)",
            preds.len(),
            args.out.display()
        );
    }
    Ok(())
}

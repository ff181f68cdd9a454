//! The Rust side of `benches/side_by_side.sh`: every workload the script compares, timed in this
//! process on inputs the Python side reads too, written as JSON for `side_by_side.py table`.
//!
//! ```sh
//! cargo bench --bench side_by_side -- --work DIR --out FILE [--quick] [--only SUBSTRING]
//! ```
//!
//! `DIR` holds the shared inputs `side_by_side.py prepare` wrote (SQuAD paragraph pairs, EM pairs,
//! the Kendall sample, BERTScore pairs); this side adds the analysed BM25 corpus for rank_bm25.
//! Each measurement is the median of a few timed runs after one warm-up; the intra-op thread count
//! is libtorch's (`OMP_NUM_THREADS`, which the script sets for both sides). Values the two sides
//! must agree on (scores, top-5 lists) go into `checks` and are compared by the table step.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use prompt2model::config::Paths;
use prompt2model::data::registry::Registry;
use prompt2model::evaluator::bertscore::BertScorer;
use prompt2model::evaluator::chrf::{corpus_chrf, ChrfConfig};
use prompt2model::evaluator::exact_match::{corpus_exact_match, EmNormalization};
use prompt2model::evaluator::kendall::kendall_tau_b;
use prompt2model::model_retriever::{read_usable_cards, IndexSource};
use prompt2model::models::bert::BertEncoder;
use prompt2model::models::chat::{ChatModel, DecodingEngine};
use prompt2model::models::precision::{self, Precision};
use prompt2model::models::registry::ModelRegistry;
use prompt2model::models::sampling::SamplingConfig;
use prompt2model::retrieval::bm25::{Bm25Index, Bm25Params, Idf};
use prompt2model::retrieval::text::Analyzer;
use prompt2model::trainer::adamw::{AdamW, AdamWParams};
use prompt2model::trainer::{Student, StudentSpec, TrainingBatch};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const MINILM: &str = "all-MiniLM-L6-v2";
const SMOLLM2: &str = "SmolLM2-135M-Instruct-Q4_1";
/// The decoding prompt both sides continue (no chat template: a plain continuation runs long).
pub const DECODE_PROMPT: &str = "Once upon a time, in a village by the sea, there lived";
pub const DECODE_TOKENS: usize = 128;
const ROOF_N: i64 = 2048;

#[derive(Parser)]
struct Args {
    /// Shared inputs (written by `side_by_side.py prepare`).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Where to write the measurements (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One timed run per measurement instead of three.
    #[arg(long)]
    quick: bool,
    /// Only measurements whose id contains one of these (comma-separated).
    #[arg(long)]
    only: Option<String>,
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` runs the binary without it.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Bench {
    iters: usize,
    only: Option<String>,
    rows: Vec<Value>,
    checks: serde_json::Map<String, Value>,
}

impl Bench {
    fn wanted(&self, id: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o.split(',').any(|o| id.contains(o)))
    }

    /// Whether any of these measurements is wanted (to skip loading what none of them needs).
    fn wanted_any<S: AsRef<str>>(&self, ids: impl IntoIterator<Item = S>) -> bool {
        ids.into_iter().any(|id| self.wanted(id.as_ref()))
    }

    /// Median seconds of `iters` runs of `f` after one warm-up; `work` units of `unit` per run.
    fn time<T>(&mut self, id: &str, work: f64, unit: &str, mut f: impl FnMut() -> T) -> Option<T> {
        if !self.wanted(id) {
            return None;
        }
        let mut last = f();
        let mut times = Vec::with_capacity(self.iters);
        for _ in 0..self.iters {
            let start = Instant::now();
            last = f();
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        eprintln!("side_by_side: {id}: {median:.4} s ({:.1} {unit}/s)", work / median);
        self.rows.push(
            json!({ "id": id, "seconds": median, "work": work, "unit": unit, "runs": times }),
        );
        Some(last)
    }

    fn check(&mut self, id: &str, value: Value) {
        self.checks.insert(id.to_string(), value);
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: run `side_by_side.py prepare` first", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| path.display().to_string()))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn metrics(b: &mut Bench, work: &Path) -> Result<()> {
    let pairs = read_jsonl(&work.join("paragraph_pairs.jsonl"))?;
    let hyps: Vec<String> =
        pairs.iter().map(|r| r["prediction"].as_str().unwrap_or("").into()).collect();
    let refs: Vec<Vec<String>> = pairs.iter().map(|r| strings(&r["references"])).collect();
    let n = hyps.len() as f64;
    let cfg = ChrfConfig::default();
    if let Some(score) = b.time("chrf.corpus", n, "pairs", || corpus_chrf(&hyps, &refs, &cfg)) {
        b.check("chrf.corpus", json!(score?));
    }
    let em_pairs = read_jsonl(&work.join("em_pairs.jsonl"))?;
    let preds: Vec<String> =
        em_pairs.iter().map(|r| r["prediction"].as_str().unwrap_or("").into()).collect();
    let answers: Vec<Vec<String>> = em_pairs.iter().map(|r| strings(&r["references"])).collect();
    let n = preds.len() as f64;
    if let Some(em) = b.time("em.corpus", n, "pairs", || {
        corpus_exact_match(&preds, &answers, EmNormalization::Squad)
    }) {
        b.check("em.corpus", json!(em?));
    }
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(work.join("kendall.json"))?)?;
    let xs: Vec<f64> = serde_json::from_value(sample["x"].clone())?;
    let ys: Vec<f64> = serde_json::from_value(sample["y"].clone())?;
    if let Some(t) = b.time("kendall.n1000", 1.0, "samples", || kendall_tau_b(&xs, &ys)) {
        let t = t?;
        b.check("kendall.n1000", json!([t.tau, t.p_value]));
    }
    Ok(())
}

fn bm25(b: &mut Bench, work: &Path) -> Result<()> {
    if !b.wanted_any(["bm25.build", "bm25.query"]) {
        return Ok(());
    }
    let paths = Paths::from_env()?;
    let registry = Registry::load(paths.clone())?;
    let source = IndexSource::from_registry(&registry).context("model index (needs the mirror)")?;
    let (_, descriptions, _) = read_usable_cards(&source, false)?;
    let analyzer = Analyzer::new();
    let docs: Vec<Vec<String>> = descriptions.iter().map(|d| analyzer.analyze(d)).collect();
    let queries: Vec<Vec<String>> = prompt2model::data::tasks::load_tasks(&paths.data)?
        .iter()
        .map(|t| analyzer.analyze(t.instruction.trim()))
        .collect();
    let dump = json!({ "docs": docs, "queries": queries });
    prompt2model::util::fs::write_atomic(
        &work.join("bm25_corpus.json"),
        dump.to_string().as_bytes(),
    )?;
    let index = b
        .time("bm25.build", docs.len() as f64, "documents", || Bm25Index::build(&docs))
        .expect("wanted");
    // rank_bm25's BM25Okapi: Okapi idf with negative values floored at 0.25 × the mean idf.
    let p = Bm25Params { idf: Idf::OkapiEpsilon(0.25), ..Bm25Params::default() };
    let tops = b.time("bm25.query", queries.len() as f64, "queries", || {
        queries.iter().map(|q| index.top_k(q, &p, 5, |_| true)).collect::<Vec<_>>()
    });
    if let Some(tops) = tops {
        let ids: Vec<Vec<usize>> =
            tops.iter().map(|t| t.iter().map(|(i, _)| *i).collect()).collect();
        b.check("bm25.top5", json!(ids));
    }
    Ok(())
}

pub fn sentences(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Sentence number {i} talks about the river that runs through the old city near the station."))
        .collect()
}

fn encoders(b: &mut Bench, models: &ModelRegistry, work: &Path) -> Result<()> {
    if b.wanted_any(Precision::ALL.map(|p| format!("minilm.embed64.{p}"))) {
        let enc = BertEncoder::from_registry(models, MINILM, Device::Cpu)?;
        let texts = sentences(64);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for p in Precision::ALL {
            let id = format!("minilm.embed64.{p}");
            if let Some(e) = b.time(&id, 64.0, "sentences", || {
                precision::autocast(p, || enc.embed_sentences(&refs))
            }) {
                let first: Vec<f64> = Vec::try_from(e?.get(0).narrow(0, 0, 8))?;
                b.check(&id, json!(first));
            }
        }
    }
    if b.wanted("bertscore.pairs") {
        let pairs = read_jsonl(&work.join("bertscore_pairs.jsonl"))?;
        let cands: Vec<String> =
            pairs.iter().map(|r| r["candidate"].as_str().unwrap_or("").into()).collect();
        let refs: Vec<String> =
            pairs.iter().map(|r| r["reference"].as_str().unwrap_or("").into()).collect();
        let scorer = BertScorer::from_registry(models, MINILM, None, false, None, Device::Cpu)?;
        b.check("bertscore.layer", json!(scorer.config().layer));
        let n = cands.len() as f64;
        if let Some(s) = b.time("bertscore.pairs", n, "pairs", || scorer.score(&cands, &refs)) {
            b.check("bertscore.pairs", json!(s?.mean().2));
        }
    }
    Ok(())
}

fn decoding(b: &mut Bench, models: &ModelRegistry) -> Result<()> {
    // The tch engine in each precision, then llama.cpp in process (`llama-cpp`).
    let setups = ["f32", "bf16", "llama-cpp"];
    if !b.wanted_any(
        setups.iter().flat_map(|s| [format!("decode.b1.{s}"), format!("decode.b16.{s}")]),
    ) {
        return Ok(());
    }
    let path = models.resolve_file(SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let cfg = SamplingConfig::greedy(DECODE_TOKENS);
    for setup in setups {
        let mut model = ChatModel::load(&path, Device::Cpu)?;
        match setup {
            "llama-cpp" => model.set_engine(DecodingEngine::LlamaCpp)?,
            p => model.set_precision(p.parse().map_err(anyhow::Error::msg)?),
        }
        for batch in [1usize, 16] {
            let id = format!("decode.b{batch}.{setup}");
            if !b.wanted(&id) {
                continue;
            }
            let prompts = vec![DECODE_PROMPT.to_string(); batch];
            // The work is the tokens actually generated (a row may stop at EOS).
            let produced: usize = model
                .complete_with_usage(&prompts, &cfg)?
                .iter()
                .map(|c| c.completion_tokens)
                .sum();
            if let Some(out) =
                b.time(&id, produced as f64, "tokens", || model.complete(&prompts, &cfg))
            {
                b.check(&id, json!(out?[0]));
            }
        }
    }
    Ok(())
}

/// One optimizer step as the trainer takes it: loss, backward, clip at 1.0, AdamW (lr 5e-5).
fn step(student: &Student, opt: &mut AdamW, batch: &TrainingBatch, p: Precision) -> f64 {
    opt.zero_grad();
    let loss = precision::autocast(p, || student.loss(batch, true));
    loss.backward();
    opt.clip_grad_norm(Some(1.0));
    opt.step(5e-5);
    loss.double_value(&[])
}

/// `train_<name>.json` of the work folder: `input_ids` and `labels` as nested lists (every token
/// real: no padding, so both sides do the same arithmetic).
fn training_batch(work: &Path, name: &str) -> Result<TrainingBatch> {
    let path = work.join(format!("train_{name}.json"));
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
    )?;
    let matrix = |key: &str| -> Result<Tensor> {
        let rows: Vec<Vec<i64>> = serde_json::from_value(v[key].clone())
            .with_context(|| format!("{}: `{key}`", path.display()))?;
        let (r, c) = (rows.len() as i64, rows[0].len() as i64);
        Ok(Tensor::from_slice(&rows.concat()).view([r, c]))
    };
    let input_ids = matrix("input_ids")?;
    let labels = matrix("labels")?;
    let (rows, len) = input_ids.size2()?;
    let tokens = rows * len + if name.starts_with("smollm2") { 0 } else { labels.numel() as i64 };
    Ok(TrainingBatch {
        attention_mask: Tensor::ones([rows, len], (Kind::Int64, Device::Cpu)),
        input_ids,
        labels,
        examples: rows as usize,
        tokens,
    })
}

fn training(b: &mut Bench, models: &ModelRegistry, work: &Path) -> Result<()> {
    let students = [
        ("bert2bert", StudentSpec::default()),
        ("smollm2", StudentSpec::decoder(SMOLLM2)),
        // The same tokens with the prompt labelled −100 (instruction tuning, as the trainer does).
        ("smollm2sft", StudentSpec::decoder(SMOLLM2)),
    ];
    for (name, spec) in students {
        if !b.wanted_any(Precision::ALL.map(|p| format!("train.{name}.{p}"))) {
            continue;
        }
        for p in Precision::ALL {
            let id = format!("train.{name}.{p}");
            if !b.wanted(&id) {
                continue;
            }
            // A fresh student per precision, so both start from the same weights.
            let student = Student::build(&spec, models, Device::Cpu, 0)?;
            let mut opt = AdamW::new(student.parameters(), AdamWParams::default());
            // The same token ids as the Python side (written by `side_by_side.py prepare`).
            let batch = training_batch(work, name)?;
            let tokens = batch.tokens;
            let mut losses = Vec::new();
            b.time(&id, tokens as f64, "tokens", || {
                losses.push(step(&student, &mut opt, &batch, p));
            });
            b.check(&id, json!(losses));
        }
    }
    Ok(())
}

fn roofs(b: &mut Bench, n: i64) {
    for p in Precision::ALL {
        let id = format!("roof.matmul{n}.{p}");
        let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu)).to_kind(p.kind());
        let c = Tensor::randn([n, n], (Kind::Float, Device::Cpu)).to_kind(p.kind());
        let flops = 2.0 * (n as f64).powi(3);
        b.time(&id, flops / 1e9, "GFLOP", || a.matmul(&c));
    }
}

/// Under `cargo test --all-targets` (no `--bench`, no inputs): time the two roofs on small
/// matrices, so the timing and JSON code paths run; the comparisons need the script's inputs.
fn test_mode() -> Result<()> {
    let mut b = Bench { iters: 1, only: None, rows: Vec::new(), checks: Default::default() };
    roofs(&mut b, 64);
    anyhow::ensure!(b.rows.len() == 2, "two roof rows, got {}", b.rows.len());
    for row in &b.rows {
        let seconds = row["seconds"].as_f64().unwrap_or(f64::NAN);
        anyhow::ensure!(seconds.is_finite() && seconds > 0.0, "{row}: no time measured");
    }
    eprintln!(
        "side_by_side: test mode passed; run the comparisons with `bash benches/side_by_side.sh`"
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (Some(work), Some(out_path)) = (args.work, args.out) else {
        anyhow::ensure!(
            !args.bench,
            "side_by_side needs --work DIR --out FILE: run it through `bash benches/side_by_side.sh`"
        );
        return test_mode();
    };
    std::fs::create_dir_all(&work)?;
    let mut b = Bench {
        iters: if args.quick { 1 } else { 3 },
        only: args.only,
        rows: Vec::new(),
        checks: Default::default(),
    };
    let models = ModelRegistry::from_env()?;
    metrics(&mut b, &work)?;
    bm25(&mut b, &work)?;
    encoders(&mut b, &models, &work)?;
    decoding(&mut b, &models)?;
    training(&mut b, &models, &work)?;
    roofs(&mut b, ROOF_N);
    let out = json!({
        "side": "prompt2model-rs",
        "conditions": {
            "threads": tch::get_num_threads(),
            "libtorch": "2.11.0",
            "commit": env!("P2M_BUILD_COMMIT"),
            "runs": b.iters,
        },
        "rows": b.rows,
        "checks": b.checks,
    });
    prompt2model::util::fs::write_atomic(
        &out_path,
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )?;
    Ok(())
}

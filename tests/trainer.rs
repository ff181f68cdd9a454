//! The trainer: AdamW against PyTorch's, learning on a tiny student, exact resume after SIGKILL,
//! a non-finite loss stopping the run, foreign checkpoints refused, and the executor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prompt2model::models::registry::ModelRegistry;
use prompt2model::trainer::adamw::{scheduled_lr, AdamW, AdamWParams};
use prompt2model::trainer::{
    self, Student, StudentSpec, TextPair, TrainConfig, TrainError, Trainer,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn adamw_follows_torch_step_for_step() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/adamw/trajectory.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let w = Tensor::from_slice(&floats(&fx["w0"])).view([3, 4]).set_requires_grad(true);
    let b = Tensor::from_slice(&floats(&fx["b0"])).set_requires_grad(true);
    // Names decide weight decay as the HF Trainer does: `.bias` is exempt.
    let vars = HashMap::from([
        ("x.weight".to_string(), w.shallow_clone()),
        ("x.bias".to_string(), b.shallow_clone()),
    ]);
    let mut opt = AdamW::new(
        vars,
        AdamWParams {
            weight_decay: fx["weight_decay"].as_f64().unwrap(),
            ..AdamWParams::default()
        },
    );
    let steps = fx["steps"].as_u64().unwrap();
    let warmup = fx["warmup"].as_u64().unwrap();
    for step in 0..steps as usize {
        opt.zero_grad();
        let gw = Tensor::from_slice(&floats(&fx["grads"][step]["w"])).view([3, 4]);
        let gb = Tensor::from_slice(&floats(&fx["grads"][step]["b"]));
        // Gradients of sum(p * g) are g.
        ((&w * &gw).sum(Kind::Float) + (&b * &gb).sum(Kind::Float)).backward();
        let norm = opt.clip_grad_norm(Some(fx["max_norm"].as_f64().unwrap()));
        let want_norm = fx["grad_norms"][step].as_f64().unwrap();
        assert!(
            (norm - want_norm).abs() < 1e-5 * want_norm.max(1.0),
            "step {step}: grad norm {norm} vs torch {want_norm}"
        );
        let lr = scheduled_lr(fx["lr"].as_f64().unwrap(), step as u64, steps, warmup, true);
        let want_lr = fx["lrs"][step].as_f64().unwrap();
        assert!((lr - want_lr).abs() < 1e-15, "step {step}: lr {lr} vs torch {want_lr}");
        opt.step(lr);
        for (name, t) in [("w", &w), ("b", &b)] {
            let got = Vec::<f32>::try_from(t.detach().view([-1])).unwrap();
            let want = floats(&fx["after"][step][name]);
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() <= 2e-6 * e.abs().max(1.0),
                    "step {step} {name}: {got:?}\nvs torch {want:?}"
                );
            }
        }
    }
}

pub(crate) fn registry() -> ModelRegistry {
    ModelRegistry::from_env().expect("data/models.toml loads (run scripts/setup.sh)")
}

fn tiny() -> StudentSpec {
    StudentSpec::Tiny { tokenizer_of: "all-MiniLM-L6-v2".into(), hidden: 32, layers: 1, heads: 2 }
}

/// A toy task a tiny model can fit: copy the colour word.
fn toy_pairs(n: usize) -> Vec<TextPair> {
    let colours = ["red", "green", "blue", "yellow", "black", "white"];
    let rows: Vec<(String, String)> = (0..n)
        .map(|i| (format!("the {} car number {i}", colours[i % 6]), colours[i % 6].to_string()))
        .collect();
    trainer::apply_template(0, "Name the colour.", &rows)
}

/// Two toy inputs the training data never had (car numbers 98 and 99), as a test frame.
fn unseen_colours() -> polars::prelude::DataFrame {
    prompt2model::data::loaders::common_frame(
        vec!["a".into(), "b".into()],
        vec!["the blue car number 99".into(), "the red car number 98".into()],
        &[vec!["blue".into()], vec!["red".into()]],
        None,
    )
    .unwrap()
}

fn small_config() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 4,
        learning_rate: 3e-3,
        max_source_len: 32,
        max_target_len: 8,
        mixed_precision: false,
        seed: 7,
        ..TrainConfig::default()
    }
}

#[test]
fn a_tiny_student_learns_the_toy_task_and_the_executor_predicts() {
    let out = tempfile::tempdir().unwrap();
    let mut student = Student::build(&tiny(), &registry(), Device::Cpu, 7).unwrap();
    let data = toy_pairs(24);
    let cfg = TrainConfig { epochs: 30, learning_rate: 1e-2, ..small_config() };
    let mut trainer = Trainer::new(cfg, &mut student, out.path());
    trainer.progress = false;
    let summary = trainer.train(&data, &toy_pairs(6)).unwrap();
    assert_eq!(summary.optimizer_steps, 30 * 6);
    assert_eq!(summary.epochs.len(), 30);
    let first = summary.epochs.first().unwrap().train_loss;
    let last = summary.epochs.last().unwrap().train_loss;
    assert!(last < 0.5 * first, "training loss {first} → {last}");
    assert!(summary.epochs.iter().all(|e| e.validation_loss.is_some_and(f64::is_finite)));
    // final/ holds a loadable student.
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_summary.json",
        "trainer_state.json",
    ] {
        assert!(out.path().join("final").join(f).exists(), "final/{f}");
    }
    let reloaded = Student::from_dir(&out.path().join("final"), Device::Cpu).unwrap();
    let frame = unseen_colours();
    let cfg = prompt2model::executor::ExecutorConfig {
        max_new_tokens: 4,
        max_source_len: 32,
        ..Default::default()
    };
    let predicted =
        prompt2model::executor::predict_frame(&reloaded, "Name the colour.", &frame, &cfg).unwrap();
    let preds = prompt2model::data::loaders::string_column(&predicted, "prediction").unwrap();
    // The toy task is learnt: the colour is copied from inputs never seen in training.
    assert_eq!(preds, ["blue", "red"]);
    // Same weights, same inputs: the reloaded student predicts what the trained one does.
    let again = prompt2model::executor::predict_frame(
        &student_from(&out.path().join("final")),
        "Name the colour.",
        &frame,
        &cfg,
    )
    .unwrap();
    assert_eq!(prompt2model::data::loaders::string_column(&again, "prediction").unwrap(), preds);
}

/// bf16 (CPU autocast's rule) learns the toy task as f32 does, and the executor predicts in bf16
/// too; the two runs really differ (the precision took effect), and an f32 config's file has no
/// `precision` field (earlier configs and fingerprints unchanged).
#[test]
fn a_tiny_student_learns_the_toy_task_in_bf16_as_in_f32() {
    use prompt2model::models::precision::Precision;
    let mut finals = Vec::new();
    let mut first_steps = Vec::new();
    for precision in Precision::ALL {
        let out = tempfile::tempdir().unwrap();
        let mut student = Student::build(&tiny(), &registry(), Device::Cpu, 7).unwrap();
        let cfg = TrainConfig { epochs: 30, learning_rate: 1e-2, precision, ..small_config() };
        let mut trainer = Trainer::new(cfg, &mut student, out.path());
        trainer.progress = false;
        let summary = trainer.train(&toy_pairs(24), &toy_pairs(6)).unwrap();
        let first = summary.epochs.first().unwrap().train_loss;
        let last = summary.epochs.last().unwrap().train_loss;
        assert!(last < 0.5 * first, "{precision}: training loss {first} → {last}");
        finals.push(last);
        first_steps.push(summary.steps[0].loss);
        let frame = unseen_colours();
        let cfg = prompt2model::executor::ExecutorConfig {
            max_new_tokens: 4,
            max_source_len: 32,
            precision,
            ..Default::default()
        };
        let predicted =
            prompt2model::executor::predict_frame(&student, "Name the colour.", &frame, &cfg)
                .unwrap();
        let preds = prompt2model::data::loaders::string_column(&predicted, "prediction").unwrap();
        assert_eq!(preds, ["blue", "red"], "{precision}");
    }
    assert_ne!(first_steps[0], first_steps[1], "bf16 changes the arithmetic");
    assert!(
        (first_steps[0] - first_steps[1]).abs() < 0.02 * first_steps[0],
        "first-step losses f32 {} vs bf16 {}",
        first_steps[0],
        first_steps[1]
    );
    let f32_toml = toml::to_string(&TrainConfig::default()).unwrap();
    assert!(!f32_toml.lines().any(|l| l.starts_with("precision")), "{f32_toml}");
    let bf16 = TrainConfig { precision: Precision::Bf16, ..TrainConfig::default() };
    assert!(toml::to_string(&bf16).unwrap().contains("precision = \"bf16\""));
    eprintln!("final training losses f32 {} bf16 {}", finals[0], finals[1]);
}

fn student_from(dir: &Path) -> Student {
    Student::from_dir(dir, Device::Cpu).unwrap()
}

pub(crate) fn write_jsonl(path: &Path, pairs: &[(String, String)]) {
    let lines: Vec<String> = pairs
        .iter()
        .map(|(i, o)| serde_json::json!({"input": i, "output": o}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

pub(crate) fn train_cmd(data: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2m"));
    cmd.args([
        "train",
        "--cpu",
        "--student",
        "tiny:32:1:2",
        "--instruction",
        "Name the colour.",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "0.003",
        "--checkpoint-every",
        "1",
        "--seed",
        "3",
        "--json",
    ])
    .arg("--train")
    .arg(data)
    .arg("--out")
    .arg(out)
    .env("OMP_NUM_THREADS", "1");
    cmd
}

pub(crate) fn file_bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_final_weights() {
    a_killed_run_resumes_to_the_reference_run(&[]);
}

/// Trains `p2m train` (with `extra` arguments) once uninterrupted and once killed with SIGKILL
/// after a few checkpoints and started again; asserts that both end with the same bytes in
/// `final/model.safetensors` and the same losses, and that a finished run is not trained again.
/// Returns the folder holding `reference/` and `killed/`.
pub(crate) fn a_killed_run_resumes_to_the_reference_run(extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let colours = ["red", "green", "blue", "yellow"];
    let rows: Vec<(String, String)> = (0..40)
        .map(|i| (format!("a {} kite, {} of many", colours[i % 4], i), colours[i % 4].to_string()))
        .collect();
    write_jsonl(&data, &rows);

    // Uninterrupted reference run.
    let reference = dir.path().join("reference");
    let out = train_cmd(&data, &reference).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Killed once a few checkpoints exist (40 steps in all), then started again.
    let killed = dir.path().join("killed");
    let mut child = train_cmd(&data, &killed)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let step = trainer::latest_checkpoint(&killed).unwrap().and_then(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .strip_prefix("step-")
                .map(|s| s.parse::<u64>().unwrap())
        });
        if step.is_some_and(|s| s >= 5) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("final").exists(), "killed before the end");

    let out = train_cmd(&data, &killed).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let resumed = summary["resumed_from_step"].as_u64().expect("the second run resumed");
    assert!((5..40).contains(&resumed), "resumed at {resumed}");
    assert_eq!(summary["optimizer_steps"], 40);

    assert!(
        file_bytes(killed.join("final/model.safetensors"))
            == file_bytes(reference.join("final/model.safetensors")),
        "final weights differ after resume"
    );
    let losses = |p: PathBuf| -> Vec<f64> {
        let v: Value = serde_json::from_slice(&file_bytes(p)).unwrap();
        v["steps"].as_array().unwrap().iter().map(|s| s["loss"].as_f64().unwrap()).collect()
    };
    assert_eq!(
        losses(killed.join("final/trainer_state.json")),
        losses(reference.join("final/trainer_state.json"))
    );

    // A finished run is not trained again.
    let out = train_cmd(&data, &killed).args(extra).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        file_bytes(killed.join("final/model.safetensors")),
        file_bytes(reference.join("final/model.safetensors"))
    );
    dir
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let mut student = Student::build(&tiny(), &registry(), Device::Cpu, 1).unwrap();
    // An absurd learning rate and no clipping blow the weights up after the first update.
    let cfg = TrainConfig {
        learning_rate: 1e30,
        max_grad_norm: None,
        checkpoint_every: 1,
        schedule: "constant".into(),
        ..small_config()
    };
    let mut trainer = Trainer::new(cfg, &mut student, out.path());
    trainer.progress = false;
    let err = trainer.train(&toy_pairs(16), &[]).unwrap_err();
    let TrainError::NonFiniteLoss { step, checkpoint, .. } =
        err.downcast_ref::<TrainError>().unwrap_or_else(|| panic!("{err:#}"))
    else {
        panic!("{err:#}")
    };
    assert!(*step >= 1, "the first loss is finite");
    assert!(Path::new(checkpoint).join("model.safetensors").exists(), "{checkpoint}");
    assert!(err.to_string().contains("Lower the learning rate"), "{err}");
    assert!(!out.path().join("final").exists());
}

#[test]
fn a_checkpoint_of_another_run_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let reg = registry();
    let cfg = TrainConfig { epochs: 1, max_steps: Some(2), checkpoint_every: 1, ..small_config() };
    let mut student = Student::build(&tiny(), &reg, Device::Cpu, 1).unwrap();
    let mut t = Trainer::new(cfg.clone(), &mut student, out.path());
    t.progress = false;
    t.train(&toy_pairs(16), &[]).unwrap();
    let mut student = Student::build(&tiny(), &reg, Device::Cpu, 1).unwrap();
    let mut t = Trainer::new(cfg, &mut student, out.path());
    t.progress = false;
    let err = t.train(&toy_pairs(17), &[]).unwrap_err();
    assert!(
        matches!(err.downcast_ref::<TrainError>(), Some(TrainError::ForeignCheckpoint { .. })),
        "{err:#}"
    );
    assert!(err.to_string().contains("new output directory"), "{err}");
}

#[test]
fn training_configs_from_toml_name_bad_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train.toml");
    std::fs::write(&p, "epochs = 2\nlearnin_rate = 1e-4\n").unwrap();
    let err = format!("{:#}", trainer::load_train_config(&p).unwrap_err());
    assert!(err.contains("train.toml") && err.contains("learnin_rate"), "{err}");
    std::fs::write(&p, "epochs = 0\n").unwrap();
    let err = format!("{:#}", trainer::load_train_config(&p).unwrap_err());
    assert!(err.contains("epochs must be at least 1"), "{err}");
}

fn smollm2() -> (prompt2model::models::llama::Llama, Vec<i64>) {
    let registry = registry();
    let path = registry
        .resolve_file("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("GGUF (run scripts/setup.sh)");
    let g = prompt2model::models::gguf::GgufFile::open(&path).unwrap();
    let tok = prompt2model::models::chat::GgufTokenizer::from_gguf(&g).unwrap();
    let ids =
        tok.encode("<task 0>Answer.\nExample:\nWhere is Paris?\nLabel:\nFrance", false).unwrap();
    (prompt2model::models::llama::Llama::from_gguf(&g, Device::Cpu).unwrap(), ids)
}

#[test]
fn the_decoders_training_forward_matches_its_cached_forward_with_and_without_padding() {
    let (model, ids) = smollm2();
    let n = ids.len() as i64;
    let cached = model.logits(&ids).unwrap();
    let single = tch::no_grad(|| {
        model.forward_train(
            &Tensor::from_slice(&ids).view([1, n]),
            &Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
        )
    });
    let diff = (single.squeeze_dim(0) - &cached).abs().max().double_value(&[]);
    assert!(diff < 1e-3, "max |Δlogit| {diff}");
    // A shorter row beside it, right-padded: its real positions see only themselves.
    let short = &ids[..ids.len() - 3];
    let mut batch: Vec<i64> = ids.clone();
    batch.extend(short.iter().copied().chain([0, 0, 0]));
    let mask: Vec<i64> = std::iter::repeat_n(1, ids.len())
        .chain(std::iter::repeat_n(1, short.len()))
        .chain([0, 0, 0])
        .collect();
    let both = tch::no_grad(|| {
        model.forward_train(
            &Tensor::from_slice(&batch).view([2, n]),
            &Tensor::from_slice(&mask).view([2, n]),
        )
    });
    let short_cached = model.logits(short).unwrap();
    let diff =
        (both.get(1).narrow(0, 0, short.len() as i64) - short_cached).abs().max().double_value(&[]);
    assert!(diff < 1e-3, "padded row: max |Δlogit| {diff}");
}

#[test]
fn a_decoder_student_trains_on_the_target_tokens_saves_and_reloads() {
    let out = tempfile::tempdir().unwrap();
    let mut student = Student::build(
        &StudentSpec::decoder("SmolLM2-135M-Instruct-Q4_1"),
        &registry(),
        Device::Cpu,
        1,
    )
    .unwrap();
    let rows: Vec<(String, String)> = (0..4)
        .map(|i| {
            (format!("the {} kite", ["red", "blue"][i % 2]), ["red", "blue"][i % 2].to_string())
        })
        .collect();
    let data = trainer::apply_template(0, "Name the colour.", &rows);
    // The labels are the target + EOS; the prompt is not trained on.
    let enc = student.encode_pairs(&data[..1], 64, 8).unwrap();
    let batch = student.collate(&[&enc[0]]);
    let labels = Vec::<i64>::try_from(batch.labels.view([-1])).unwrap();
    assert_eq!(labels.iter().filter(|&&l| l != -100).count(), enc[0].labels.len());
    assert_eq!(&labels[..enc[0].source.len()], vec![-100; enc[0].source.len()].as_slice());

    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 2,
        learning_rate: 1e-4,
        max_source_len: 64,
        max_target_len: 8,
        seed: 1,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, &mut student, out.path());
    t.progress = false;
    let summary = t.train(&data, &data[..2]).unwrap();
    assert_eq!(summary.optimizer_steps, 4);
    let (first, last) = (summary.steps.first().unwrap().loss, summary.steps.last().unwrap().loss);
    assert!(last.is_finite() && last < first, "loss {first} → {last}");
    let reloaded = Student::from_dir(&out.path().join("final"), Device::Cpu).unwrap();
    assert!(matches!(reloaded.model, prompt2model::trainer::student::StudentModel::Decoder(_)));
    let enc = reloaded.encode_pairs(&data[..2], 64, 8).unwrap();
    let a = reloaded.mean_loss(&enc, 2).unwrap();
    let b = student.mean_loss(&enc, 2).unwrap();
    assert!((a - b).abs() < 1e-4, "reloaded loss {a} vs trained {b}");
    let preds = reloaded
        .generate(
            &[data[0].source.clone()],
            64,
            &prompt2model::models::sampling::SamplingConfig::greedy(4),
            1,
            true,
        )
        .unwrap();
    assert_eq!(preds.len(), 1);
}

/// Table 3's close students: SmolLM2 cut to its first layers, and with layers frozen. The kept
/// layers are the pretrained ones, frozen layers keep their weights through training, the others
/// move, and the saved folder reloads as the shallower model.
#[test]
fn a_decoder_cut_to_its_first_layers_with_frozen_layers_trains_only_the_rest() {
    let out = tempfile::tempdir().unwrap();
    let spec: StudentSpec = "decoder:layers=4,freeze=2".parse().unwrap();
    let mut student = Student::build(&spec, &registry(), Device::Cpu, 1).unwrap();
    assert!(
        student.describe().contains("first 4 layers")
            && student.describe().contains("first 2 frozen")
    );
    let full = Student::build(
        &StudentSpec::decoder("SmolLM2-135M-Instruct-Q4_1"),
        &registry(),
        Device::Cpu,
        1,
    )
    .unwrap();
    let params = student.parameters();
    let full_params = full.parameters();
    assert!(params.contains_key("model.layers.3.mlp.up_proj.weight"));
    assert!(!params.contains_key("model.layers.4.mlp.up_proj.weight"), "only 4 layers kept");
    let same = |a: &tch::Tensor, b: &tch::Tensor| (a - b).abs().max().double_value(&[]) == 0.0;
    let name = |i: usize| format!("model.layers.{i}.self_attn.q_proj.weight");
    assert!(
        same(&params[&name(3)], &full_params[&name(3)]),
        "the kept layers are the pretrained ones"
    );
    assert!(!params[&name(1)].requires_grad() && params[&name(2)].requires_grad());
    let before: Vec<tch::Tensor> =
        [1, 2].iter().map(|&i| params[&name(i)].detach().copy()).collect();
    drop(full);

    let rows: Vec<(String, String)> =
        (0..4).map(|i| (format!("item {i}"), ["red", "blue"][i % 2].to_string())).collect();
    let data = trainer::apply_template(0, "Name the colour.", &rows);
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 2,
        learning_rate: 1e-3,
        max_source_len: 32,
        max_target_len: 4,
        seed: 1,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, &mut student, out.path());
    t.progress = false;
    t.train(&data, &[]).unwrap();
    let after = student.parameters();
    assert!(same(&after[&name(1)], &before[0]), "a frozen layer keeps its weights");
    assert!(!same(&after[&name(2)], &before[1]), "a trained layer moves");
    let reloaded = Student::from_dir(&out.path().join("final"), Device::Cpu).unwrap();
    let prompt2model::trainer::student::StudentModel::Decoder(m) = &reloaded.model else {
        panic!("a decoder reloads as a decoder")
    };
    assert_eq!(m.config.num_hidden_layers, 4);
}

#[test]
fn the_decoder_loss_applies_the_lm_head_at_the_targets_only_with_the_full_logits_loss_value() {
    // What transformers computes: cross-entropy over the full `[batch, seq, vocab]` logits with the
    // labels shifted left; the student's loss runs the head at the labelled positions only.
    let student = Student::build(
        &StudentSpec::decoder("SmolLM2-135M-Instruct-Q4_1"),
        &registry(),
        Device::Cpu,
        1,
    )
    .unwrap();
    let rows = vec![
        ("Where is Paris? Paris is in France.".to_string(), "France".to_string()),
        ("Who wrote Hamlet?".to_string(), "Shakespeare wrote it".to_string()),
    ];
    let data = trainer::apply_template(0, "Answer the question.", &rows);
    let enc = student.encode_pairs(&data, 64, 8).unwrap();
    let batch = student.collate(&[&enc[0], &enc[1]]);
    let prompt2model::trainer::student::StudentModel::Decoder(m) = &student.model else {
        panic!("a decoder student")
    };
    let full_logits_loss = || {
        let logits = m.forward_train(&batch.input_ids, &batch.attention_mask);
        let (b, t, v) = logits.size3().unwrap();
        let targets = Tensor::cat(
            &[
                batch.labels.narrow(1, 1, t - 1),
                Tensor::full([b, 1], -100, (Kind::Int64, Device::Cpu)),
            ],
            1,
        );
        logits.view([b * t, v]).cross_entropy_loss::<Tensor>(
            &targets.view([b * t]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )
    };
    let mut head =
        m.named_parameters().into_iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1;
    let mut grad_of = |loss: Tensor| {
        head.zero_grad();
        loss.backward();
        head.grad().copy()
    };
    let expected = full_logits_loss();
    let ours = student.loss(&batch, true);
    let (e, o) = (expected.double_value(&[]), ours.double_value(&[]));
    assert!(e.is_finite() && (e - o).abs() < 1e-5, "loss {o} vs full logits {e}");
    let ge = grad_of(expected);
    let go = grad_of(ours);
    let scale = ge.abs().max().double_value(&[]);
    let diff = (ge - go).abs().max().double_value(&[]);
    assert!(
        scale > 0.0 && diff < 1e-4 * scale,
        "embedding/head gradient: max |Δ| {diff} of {scale}"
    );
}

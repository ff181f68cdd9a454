//! LoRA training: one step's loss and adapter gradients against PyTorch
//! (tests/reference/lora_step.py, the same adapter math on transformers' LlamaForCausalLM), the
//! merged weights against base + B·A·α/r, exact resume after SIGKILL with adapter-only
//! checkpoints, and a LoRA-trained student packaged and predicting as a full fine-tune does.

use std::collections::HashMap;
use std::path::Path;

use prompt2model::models::lora::{peft_key, LoraConfig};
use prompt2model::trainer::{self, Student, StudentSpec, TextPair, TrainConfig, Trainer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::common;
use crate::trainer::{a_killed_run_resumes_to_the_reference_run, registry, write_jsonl};

fn colour_rows(n: usize) -> Vec<TextPair> {
    let rows: Vec<(String, String)> = (0..n)
        .map(|i| {
            (format!("the {} kite no. {i}", ["red", "blue"][i % 2]), ["red", "blue"][i % 2].into())
        })
        .collect();
    trainer::apply_template(0, "Name the colour.", &rows)
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn ids(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

/// Tolerances: the loss within 1e-5 (relative), each adapter gradient within 1e-4 of the largest
/// gradient entry of that matrix — f32 through two SmolLM2 layers on different kernels (libtorch
/// via tch, torch's sdpa in transformers); an error in the adapter math (a missing α/r, A and B
/// swapped, a wrong module) moves them by orders of magnitude more.
#[test]
fn a_lora_steps_loss_and_adapter_gradients_match_pytorch_and_merging_adds_b_a_scaled() {
    let spec: StudentSpec = "decoder:layers=2".parse().unwrap();
    let mut student = Student::build(&spec, &registry(), Device::Cpu, 1).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 12.0, dropout: 0.0, ..LoraConfig::default() };
    student.attach_lora(&cfg, 5).unwrap();
    assert_eq!(student.lora_adapters().len(), 2 * 7, "q, k, v, o, gate, up, down of 2 layers");
    // B starts at zero (so A's gradient would be zero too): give it values for the comparison.
    {
        let _generator = prompt2model::models::seed_libtorch(3);
        for (_, a) in student.lora_adapters() {
            tch::no_grad(|| a.b.shallow_clone().copy_(&(a.b.randn_like() * 0.02)));
        }
    }
    let trainable = student.trainable_parameters();
    assert_eq!(trainable.len(), 2 * 7 * 2, "only A and B of each adapter are trained");
    assert!(trainable.keys().all(|k| k.starts_with("base_model.model.model.layers.")));

    let data = colour_rows(2);
    let enc = student.encode_pairs(&data, 64, 8).unwrap();
    let batch = student.collate(&[&enc[0], &enc[1]]);
    let loss = student.loss(&batch, true);
    loss.backward();
    let params = student.parameters();
    let q0 = "model.layers.0.self_attn.q_proj.weight";
    assert!(!params[q0].grad().defined(), "the base is frozen");

    let work = tempfile::tempdir().unwrap();
    let (model_dir, adapter_dir) = (work.path().join("base"), work.path().join("adapter"));
    student.save(&model_dir).unwrap();
    student.write_adapters(&adapter_dir).unwrap();
    let batch_json = serde_json::json!({
        "input_ids": ids(&batch.input_ids),
        "attention_mask": ids(&batch.attention_mask),
        "labels": ids(&batch.labels),
    });
    let batch_path = work.path().join("batch.json");
    std::fs::write(&batch_path, batch_json.to_string()).unwrap();
    let theirs = common::reference(
        "lora_step.py",
        &[&model_dir, &adapter_dir, &batch_path],
        &work.path().join("torch.json"),
    );
    assert_eq!(theirs["adapted"], 14);
    let (ours_loss, torch_loss) = (loss.double_value(&[]), theirs["loss"].as_f64().unwrap());
    assert!(
        (ours_loss - torch_loss).abs() <= 1e-5 * torch_loss.abs(),
        "loss {ours_loss} vs torch {torch_loss}"
    );
    eprintln!("loss {ours_loss} vs torch {torch_loss}");
    let mut worst = 0.0f64;
    for (name, t) in &trainable {
        let want: Vec<f32> = theirs["grads"][name]
            .as_array()
            .unwrap_or_else(|| panic!("torch has no gradient of {name}"))
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want = Tensor::from_slice(&want).view(t.size().as_slice());
        let scale = max_abs(&want);
        let err = max_abs(&(t.grad() - &want));
        assert!(scale > 0.0 && err <= 1e-4 * scale, "{name}: |Δgrad| {err} of {scale}");
        worst = worst.max(err / scale);
    }
    eprintln!("largest adapter-gradient error relative to its matrix's largest entry: {worst:.2e}");

    // Merging: W' = W + B·A·α/r for every adapted weight (checked in f64), the rest untouched,
    // and the merged model computes the adapted model's loss.
    let before: HashMap<String, Tensor> =
        params.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
    let adapters: Vec<(String, Tensor, Tensor)> = student
        .lora_adapters()
        .into_iter()
        .map(|(m, a)| (m, a.a.detach().copy(), a.b.detach().copy()))
        .collect();
    student.merge_lora();
    assert!(student.lora_adapters().is_empty());
    let merged = student.parameters();
    let f64_ = |t: &Tensor| t.to_kind(Kind::Double);
    for (module, a, b) in &adapters {
        let w = format!("{module}.weight");
        let want = f64_(&before[&w]) + f64_(b).matmul(&f64_(a)) * cfg.scaling();
        let err = max_abs(&(f64_(&merged[&w]) - &want));
        assert!(err < 1e-6, "{w}: merged differs from base + B·A·α/r by {err}");
    }
    for n in ["model.embed_tokens.weight", "model.layers.1.input_layernorm.weight"] {
        assert!(merged[n].equal(&before[n]), "{n} is not adapted and stays as it was");
    }
    let merged_loss = tch::no_grad(|| student.loss(&batch, false)).double_value(&[]);
    assert!((merged_loss - ours_loss).abs() < 1e-5 * ours_loss, "{merged_loss} vs {ours_loss}");
}

/// `p2m train --lora-rank` on the tiny BERT2BERT (the encoder-decoder path): checkpoints hold the
/// adapters and their AdamW moments only, a run killed with SIGKILL resumes to the same bytes, and
/// `--keep-adapters` writes the adapters in PEFT's layout beside the merged weights.
#[test]
fn a_lora_run_killed_with_sigkill_resumes_to_the_same_merged_weights_and_adapters() {
    let extra = ["--lora-rank", "4", "--lora-alpha", "8", "--keep-adapters"];
    let dir = a_killed_run_resumes_to_the_reference_run(&extra);
    let (reference, killed) = (dir.path().join("reference"), dir.path().join("killed"));
    let checkpoint = trainer::latest_checkpoint(&reference).unwrap().expect("checkpoints kept");
    assert!(!checkpoint.join("model.safetensors").exists(), "no frozen base in a checkpoint");
    let adapters = read_tensors(&checkpoint.join("adapter_model.safetensors"));
    let moments = read_tensors(&checkpoint.join("optimizer.safetensors"));
    assert_eq!(moments.len(), 2 * adapters.len(), "AdamW moments of the adapters only");
    let query = "encoder.encoder.layer.0.attention.self.query";
    assert!(adapters.contains_key(&peft_key(query, 'A')), "{:?}", adapters.keys());
    assert!(adapters
        .contains_key(&peft_key("decoder.bert.encoder.layer.0.crossattention.output.dense", 'B')));

    let kept = |root: &Path| read_tensors(&root.join("final/adapter/adapter_model.safetensors"));
    let (ours, again) = (kept(&reference), kept(&killed));
    assert_eq!(ours.len(), adapters.len());
    for (name, t) in &ours {
        assert!(t.equal(&again[name]), "{name} differs after resume");
        assert!(max_abs(t) > 0.0, "{name} trained");
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(reference.join("final/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "SEQ_2_SEQ_LM");
    assert_eq!((config["r"].as_i64(), config["lora_alpha"].as_f64()), (Some(4), Some(8.0)));
    // The training config records LoRA, so a full fine-tune never reuses these weights.
    let cfg: TrainConfig = serde_json::from_str(
        &std::fs::read_to_string(reference.join("final/training_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg.lora.map(|l| l.rank), Some(4));
}

/// SmolLM2 cut to 2 layers, LoRA-trained (r 2, adapters kept) for 4 steps into `out`; with the
/// base weights as they were before training.
fn train_lora_decoder(out: &Path) -> (Student, HashMap<String, Tensor>, LoraConfig) {
    let spec: StudentSpec = "decoder:layers=2".parse().unwrap();
    let mut student = Student::build(&spec, &registry(), Device::Cpu, 1).unwrap();
    let base: HashMap<String, Tensor> =
        student.parameters().iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
    let data = colour_rows(4);
    let lora = LoraConfig { rank: 2, keep_adapters: true, ..LoraConfig::default() };
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 2,
        learning_rate: 1e-3,
        max_source_len: 64,
        max_target_len: 8,
        seed: 1,
        lora: Some(lora.clone()),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, &mut student, out);
    t.progress = false;
    let summary = t.train(&data, &data[..2]).unwrap();
    assert_eq!(summary.optimizer_steps, 4);
    // Trained: A [2, in] and B [out, 2] of q, k, v, o ([576|192, 576]), gate, up ([1536, 576])
    // and down ([576, 1536]) in 2 layers; nothing else.
    let shapes =
        [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let per_layer: i64 = shapes.iter().map(|(o, i)| 2 * (o + i)).sum();
    assert_eq!(summary.parameters, 2 * per_layer);
    (student, base, lora)
}

/// A LoRA-trained decoder as its users take it: `final/` reloads as a plain llama (the adapters
/// merged), `p2m predict` predicts from it what the trained student predicts, and the kept
/// adapters added to the base reproduce the packaged weights.
#[test]
fn a_lora_trained_decoder_is_packaged_merged_and_predicts_through_the_normal_path() {
    let out = tempfile::tempdir().unwrap();
    let (student, base, lora) = train_lora_decoder(out.path());
    let final_dir = out.path().join("final");
    let merged = read_tensors(&final_dir.join("model.safetensors"));
    let adapters = read_tensors(&final_dir.join("adapter/adapter_model.safetensors"));
    let f64_ = |t: &Tensor| t.to_kind(Kind::Double);
    for layer in 0..2 {
        for module in ["self_attn.q_proj", "mlp.down_proj"] {
            let m = format!("model.layers.{layer}.{module}");
            let want = f64_(&base[&format!("{m}.weight")])
                + f64_(&adapters[&peft_key(&m, 'B')]).matmul(&f64_(&adapters[&peft_key(&m, 'A')]))
                    * lora.scaling();
            let err = max_abs(&(f64_(&merged[&format!("{m}.weight")]) - want));
            assert!(err < 1e-6, "{m}: packaged weight is not base + B·A·α/r ({err})");
        }
    }
    assert!(merged["model.norm.weight"].equal(&base["model.norm.weight"]));

    // p2m predict on final/ (a plain llama folder now) predicts what the trained student does.
    let inputs = out.path().join("inputs.jsonl");
    let rows = vec![("the blue kite no. 9".to_string(), "blue".to_string())];
    write_jsonl(&inputs, &rows);
    let preds = out.path().join("preds.jsonl");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_p2m"))
        .args([
            "predict",
            "--cpu",
            "--instruction",
            "Name the colour.",
            "--max-new-tokens",
            "4",
            "--repetition-penalty",
            "1",
        ])
        .arg("--model")
        .arg(&final_dir)
        .arg("--input")
        .arg(&inputs)
        .arg("--out")
        .arg(&preds)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&preds).unwrap().lines().next().unwrap())
            .unwrap();
    let source = trainer::model_input(0, "Name the colour.", &rows[0].0);
    let greedy = prompt2model::models::sampling::SamplingConfig::greedy(4);
    let ours = student.generate(&[source], 64, &greedy, 1, true).unwrap();
    assert_eq!(line["prediction"].as_str().unwrap(), ours[0]);
}

/// The kept adapters as PEFT reads them (tests/reference/peft_load.py, `peft` in the reference
/// venv): `PeftModel.from_pretrained` finds every tensor under its name (none missing, none left
/// at its initial value) and its `merge_and_unload()` gives the weights p2m packaged, within 1e-6
/// (f32 rounding of the same sum).
#[test]
fn kept_lora_adapters_load_in_peft_and_merge_to_the_packaged_weights() {
    let out = tempfile::tempdir().unwrap();
    let _ = train_lora_decoder(out.path());
    let base_dir = out.path().join("base");
    let spec: StudentSpec = "decoder:layers=2".parse().unwrap();
    Student::build(&spec, &registry(), Device::Cpu, 1).unwrap().save(&base_dir).unwrap();
    let final_dir = out.path().join("final");
    let theirs = common::reference(
        "peft_load.py",
        &[&base_dir, &final_dir.join("adapter"), &final_dir],
        &out.path().join("peft.json"),
    );
    eprintln!("peft: {theirs}");
    assert_eq!(theirs["missing"], serde_json::json!([]), "{theirs}");
    assert_eq!(theirs["unexpected"], serde_json::json!([]), "{theirs}");
    assert_eq!(theirs["modules"], 14, "{theirs}");
    assert_eq!(theirs["tensors"], 28);
    assert_eq!(theirs["max_adapter_diff"].as_f64(), Some(0.0), "{theirs}");
    assert!(theirs["max_merged_diff"].as_f64().unwrap() < 1e-6, "{theirs}");
}

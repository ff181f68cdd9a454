//! LoRA: low-rank adapters on the linear layers of a frozen model (Hu et al., 2021), computed as
//! PEFT's `lora.Linear` computes them, so that an adapter trained here is one PEFT can load.
//!
//! A linear layer `y = x·Wᵀ (+ b)` with an adapter becomes
//! ```text
//! y = x·Wᵀ (+ b) + (dropout(x)·Aᵀ)·Bᵀ · α/r        A: [r, in], B: [out, r]
//! ```
//! with `A` drawn as PEFT draws it (`kaiming_uniform_(a=√5)`: uniform in ±1/√in) and `B = 0`, so an
//! adapted model starts as the base model. Only `A` and `B` are trained; `W` keeps its pretrained
//! values (no gradient, no optimizer state: that is where LoRA saves memory and checkpoint size).
//! At the end the adapter is merged, `W' = W + B·A·α/r` (PEFT's `merge_and_unload`), and the model
//! is again a plain model of its architecture.
//!
//! The frozen base stays in f32 (no bf16 or int8 copy of it: not implemented). `--precision bf16`
//! sets bf16 matmuls for base and adapters alike, as for full training ([`super::precision`]).
//! LoRA skips the base's weight gradients, their AdamW moments and the optimizer's pass over
//! them; the backward pass still runs through every frozen layer to reach the adapters below it.
//! On this project's 2-core CPU a SmolLM2 step took as much CPU time as a full fine-tuning step
//! (6 steps at the laptop batch, debug build), with lower peak memory and checkpoints of a few MB.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::precision::linear;
use crate::util::rng::{fnv1a64, SplitMix64};

/// LoRA settings (`p2m train --lora-rank`, `[train.lora]` of a run). The defaults are the
/// reference's `peft_trainer`: r = 8, α = 16, dropout 0.05.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`). Not free on a CPU:
    /// a mask is drawn over every adapted layer's input (210 on SmolLM2) and kept for the backward
    /// pass; 6 SmolLM2 steps at the laptop batch measured 27 % more CPU time and 0.8 GB more peak
    /// memory at 0.05 than at 0.
    pub dropout: f64,
    /// PEFT's `target_modules`: a linear layer is adapted when its module name is one of these or
    /// ends in `.` and one of these. Empty: the student's defaults (llama: the attention and MLP
    /// projections; BERT2BERT: query, key, value and the dense layers; T5: q, k, v, o, wi*, wo).
    pub targets: Vec<String>,
    /// Also write the trained adapters apart, in PEFT's file layout (`final/adapter/`).
    pub keep_adapters: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.05, targets: vec![], keep_adapters: false }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        let fix = "fix [lora] of the training configuration or the --lora-* flags";
        ensure!(self.rank >= 1, "lora rank {} must be at least 1 ({fix})", self.rank);
        ensure!(
            self.alpha > 0.0 && self.alpha.is_finite(),
            "lora alpha {} must be a positive number ({fix})",
            self.alpha
        );
        ensure!((0.0..1.0).contains(&self.dropout), "lora dropout must be in [0, 1) ({fix})");
        Ok(())
    }

    /// `α / r`, the factor on the adapter's output.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The targets in force: the configured ones, else `defaults`.
    pub fn targets_or(&self, defaults: &[&str]) -> Vec<String> {
        if self.targets.is_empty() {
            defaults.iter().map(|s| s.to_string()).collect()
        } else {
            self.targets.clone()
        }
    }
}

/// Whether `module` is one of `target`'s modules (PEFT's rule for a list of names).
pub fn matches_target(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// Whether the adapters' dropout is on: PyTorch's `module.training`, one switch shared by all
/// adapters of a model (the student turns it on for a training forward pass only).
#[derive(Debug, Clone, Default)]
pub struct TrainingMode(Arc<AtomicBool>);

impl TrainingMode {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One linear layer's adapter.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `[rank, in]`, PEFT's `lora_A.weight`.
    pub a: Tensor,
    /// `[out, rank]`, PEFT's `lora_B.weight`.
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
    training: TrainingMode,
}

impl LoraAdapter {
    /// A fresh adapter for `weight` (`[out, in]`): `A` uniform in ±1/√in from a generator seeded
    /// by `(seed, module)`, `B` zero; both trainable leaves on the weight's device.
    pub fn new(
        weight: &Tensor,
        module: &str,
        cfg: &LoraConfig,
        seed: u64,
        training: TrainingMode,
    ) -> Self {
        let (out, inp) = weight.size2().expect("a linear weight is [out, in]");
        let bound = 1.0 / (inp as f64).sqrt();
        let mut rng = SplitMix64::new(seed ^ fnv1a64(module.as_bytes()));
        let values: Vec<f32> =
            (0..cfg.rank * inp).map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32).collect();
        let device = weight.device();
        let a = Tensor::from_slice(&values).view([cfg.rank, inp]).to_device(device);
        let b = Tensor::zeros([out, cfg.rank], (Kind::Float, device));
        LoraAdapter {
            a: a.set_requires_grad(true),
            b: b.set_requires_grad(true),
            scaling: cfg.scaling(),
            dropout: cfg.dropout,
            training,
        }
    }

    /// The same adapter (its tensors shared, not copied: training one trains the other).
    pub fn shallow_clone(&self) -> Self {
        LoraAdapter {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
            scaling: self.scaling,
            dropout: self.dropout,
            training: self.training.clone(),
        }
    }

    /// The adapter's term of the layer's output: `(dropout(x)·Aᵀ)·Bᵀ · α/r`, in `x`'s kind.
    pub fn delta(&self, x: &Tensor) -> Tensor {
        let train = self.training.is_on() && self.dropout > 0.0;
        let x = if train { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        linear(&linear(&x, &self.a, None), &self.b, None) * self.scaling
    }

    /// `W + B·A·α/r` (PEFT's `get_delta_weight` added to the base weight), as a new tensor in
    /// `weight`'s kind, without gradient.
    pub fn merged(&self, weight: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let delta = self.b.matmul(&self.a) * self.scaling;
            (weight.to_kind(Kind::Float) + delta).to_kind(weight.kind())
        })
    }
}

/// `y` (a linear layer's output for `x`) plus the adapter's term when there is one.
pub fn adapted(y: Tensor, x: &Tensor, adapter: Option<&LoraAdapter>) -> Tensor {
    match adapter {
        Some(a) => y + a.delta(x),
        None => y,
    }
}

/// A linear layer an adapter may go on: its module name (transformers'), its weight, its slot.
pub struct LoraSlot<'a> {
    pub module: String,
    pub weight: &'a Tensor,
    pub adapter: &'a mut Option<LoraAdapter>,
}

/// Puts a fresh adapter on every slot that a target names (and freezes nothing: the caller
/// freezes the base). Every target must name at least one layer, so a typo is an error, not a
/// run that trains nothing.
pub fn attach(
    slots: Vec<LoraSlot<'_>>,
    cfg: &LoraConfig,
    default_targets: &[&str],
    seed: u64,
    training: &TrainingMode,
    student: &str,
) -> Result<usize> {
    cfg.validate()?;
    let targets = cfg.targets_or(default_targets);
    for t in &targets {
        if !slots.iter().any(|s| matches_target(&s.module, t)) {
            let mut names: Vec<&str> =
                slots.iter().map(|s| s.module.rsplit('.').next().unwrap_or(&s.module)).collect();
            names.sort();
            names.dedup();
            bail!(
                "LoRA target `{t}` names no linear layer of {student}; its linear layers are named {} (fix --lora-targets / [train.lora] targets)",
                names.join(", ")
            );
        }
    }
    let mut attached = 0;
    for slot in slots {
        if targets.iter().any(|t| matches_target(&slot.module, t)) {
            *slot.adapter =
                Some(LoraAdapter::new(slot.weight, &slot.module, cfg, seed, training.clone()));
            attached += 1;
        }
    }
    Ok(attached)
}

/// The name PEFT gives a module's adapter matrix in `adapter_model.safetensors`
/// (`base_model.model.<module>.lora_A.weight`).
pub fn peft_key(module: &str, matrix: char) -> String {
    format!("base_model.model.{module}.lora_{matrix}.weight")
}

/// The adapters' tensors by their PEFT names (shallow clones: the live, trainable tensors).
pub fn named_tensors(adapters: &[(String, &LoraAdapter)]) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (module, a) in adapters {
        out.insert(peft_key(module, 'A'), a.a.shallow_clone());
        out.insert(peft_key(module, 'B'), a.b.shallow_clone());
    }
    out
}

/// PEFT's task type of a student: decoder-only or encoder-decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftTask {
    CausalLm,
    Seq2SeqLm,
}

/// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`, the files and names
/// PEFT's `PeftModel.from_pretrained(base, dir)` reads. `tensors`: [`named_tensors`].
pub fn write_peft_dir(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    cfg: &LoraConfig,
    task: PeftTask,
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let weights = dir.join("adapter_model.safetensors");
    Tensor::write_safetensors(&cpu, &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    // The modules adapted, by their last name component, as PEFT writes `target_modules`.
    let mut modules: Vec<&str> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|m| m.rsplit('.').next().unwrap_or(m))
        .collect();
    modules.sort();
    modules.dedup();
    let task_type = match task {
        PeftTask::CausalLm => "CAUSAL_LM",
        PeftTask::Seq2SeqLm => "SEQ_2_SEQ_LM",
    };
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "modules_to_save": null,
    });
    crate::util::fs::write_json(&dir.join("adapter_config.json"), &config)
}

/// Overwrites the adapters with those of an `adapter_model.safetensors` (every adapter must be
/// there, with its shape).
pub fn load_tensors(path: &Path, adapters: &[(String, &LoraAdapter)]) -> Result<()> {
    let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect();
    tch::no_grad(|| {
        for (name, mut t) in named_tensors(adapters) {
            let Some(s) = saved.get(&name) else {
                bail!("{}: no tensor `{name}` (adapters of another run?)", path.display())
            };
            ensure!(
                s.size() == t.size(),
                "{}: `{name}` has shape {:?}, the adapter {:?}",
                path.display(),
                s.size(),
                t.size()
            );
            t.copy_(&s.to_kind(Kind::Float).to_device(t.device()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_as_peft_matches_them() {
        assert!(matches_target("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(matches_target("model.layers.0.self_attn.q_proj", "self_attn.q_proj"));
        assert!(!matches_target("model.layers.0.self_attn.q_proj", "proj"));
        assert_eq!(
            peft_key("model.layers.0.self_attn.q_proj", 'A'),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
    }

    #[test]
    fn a_fresh_adapter_changes_nothing_and_merging_adds_b_a_scaled() {
        let w = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let cfg = LoraConfig { rank: 2, alpha: 6.0, ..LoraConfig::default() };
        let adapter = LoraAdapter::new(&w, "m.q", &cfg, 1, TrainingMode::default());
        let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        assert!(adapter.delta(&x).abs().max().double_value(&[]) == 0.0, "B starts at zero");
        let bound = 0.5; // 1/√4
        assert!(adapter.a.abs().max().double_value(&[]) <= bound);
        tch::no_grad(|| {
            adapter.b.shallow_clone().copy_(&Tensor::randn([6, 2], (Kind::Float, Device::Cpu)))
        });
        let merged = adapter.merged(&w);
        // The merged layer computes what base + adapter compute (dropout off).
        let both = adapted(x.linear::<Tensor>(&w, None), &x, Some(&adapter));
        let err = (x.linear::<Tensor>(&merged, None) - both).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{err}");
        assert!(LoraConfig { rank: 0, ..cfg.clone() }.validate().is_err());
        // Dropout acts only while the model's training switch is on.
        let on = TrainingMode::default();
        let dropped = LoraAdapter { training: on.clone(), dropout: 0.5, ..adapter.shallow_clone() };
        let ones = Tensor::ones([8, 4], (Kind::Float, Device::Cpu));
        assert!(dropped.delta(&ones).equal(&adapter.delta(&ones)), "off: no dropout");
        on.set(true);
        assert!(!dropped.delta(&ones).equal(&adapter.delta(&ones)), "on: dropout");
        assert_eq!(cfg.scaling(), 3.0);
    }
}

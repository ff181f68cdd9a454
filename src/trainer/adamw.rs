//! AdamW with decoupled weight decay, written out on tensors (as `torch.optim.AdamW`,
//! `foreach=False`, `amsgrad=False`, `maximize=False`).
//!
//! tch's built-in optimizer keeps its moment estimates inside libtorch with no way to read or
//! write them, so a checkpoint could not hold them and a resumed run would restart the moments
//! from zero: not the same training. Here every piece of state is a plain tensor that the
//! checkpoint saves (`m.<name>`, `v.<name>`) and restores bit for bit.
//!
//! The update follows PyTorch's operation order exactly, so that both round the same way:
//! ```text
//! p  ← p · (1 − lr·λ)                      (decoupled weight decay; skipped when λ = 0)
//! m  ← β1·m + (1 − β1)·g                   (m.lerp_(g, 1 − β1))
//! v  ← β2·v + (1 − β2)·g²                  (v.mul_(β2).addcmul_(g, g, 1 − β2))
//! p  ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//! ```

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context};
use tch::{Kind, Tensor};

/// Hyper-parameters; defaults are PyTorch's except the learning rate, which is the paper's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Optimizer state over a set of named parameters.
pub struct AdamW {
    pub params: AdamWParams,
    /// Parameters in a fixed (name) order, with whether weight decay applies to each.
    vars: Vec<(String, Tensor, bool)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Number of updates taken (PyTorch's per-parameter `step`, identical for all here).
    pub step: u64,
}

/// Whether a parameter is exempt from weight decay, as Hugging Face's `Trainer` decides it
/// (biases and LayerNorm weights; T5's RMS norms are named `layer_norm` / `final_layer_norm`).
pub fn exempt_from_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm")
}

impl AdamW {
    /// `vars`: the trainable variables by name (a `VarStore`'s `variables()`).
    pub fn new(vars: HashMap<String, Tensor>, params: AdamWParams) -> Self {
        let sorted: BTreeMap<String, Tensor> =
            vars.into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let vars: Vec<(String, Tensor, bool)> = sorted
            .into_iter()
            .map(|(n, t)| {
                let decay = !exempt_from_decay(&n);
                (n, t, decay)
            })
            .collect();
        let exp_avg = vars.iter().map(|(_, t, _)| t.zeros_like().detach()).collect();
        let exp_avg_sq = vars.iter().map(|(_, t, _)| t.zeros_like().detach()).collect();
        AdamW { params, vars, exp_avg, exp_avg_sq, step: 0 }
    }

    pub fn num_parameters(&self) -> i64 {
        self.vars.iter().map(|(_, t, _)| t.numel() as i64).sum()
    }

    pub fn zero_grad(&mut self) {
        for (_, t, _) in &mut self.vars {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients, and (when `max_norm` is given) the gradients scaled by
    /// `max_norm / (norm + 1e-6)` if that is below 1 — `torch.nn.utils.clip_grad_norm_`.
    pub fn clip_grad_norm(&mut self, max_norm: Option<f64>) -> f64 {
        let norms: Vec<Tensor> = self
            .vars
            .iter()
            .map(|(_, t, _)| t.grad())
            .filter(|g| g.defined())
            .map(|g| g.norm())
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&norms, 0).norm();
        let total_f = total.double_value(&[]);
        if let Some(max_norm) = max_norm {
            let coef = (max_norm / (total_f + 1e-6)).min(1.0);
            if coef < 1.0 {
                tch::no_grad(|| {
                    for (_, t, _) in &self.vars {
                        let mut g = t.grad();
                        if g.defined() {
                            let _ = g.g_mul_scalar_(coef);
                        }
                    }
                });
            }
        }
        total_f
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let p = self.params;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - p.beta1.powf(t);
        let bias_correction2 = 1.0 - p.beta2.powf(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        tch::no_grad(|| {
            for (i, (_, var, decay)) in self.vars.iter_mut().enumerate() {
                let grad = var.grad();
                if !grad.defined() {
                    continue;
                }
                if *decay && p.weight_decay != 0.0 {
                    let _ = var.g_mul_scalar_(1.0 - lr * p.weight_decay);
                }
                // In place wherever libtorch allows: the step is memory-bound (each pass reads and
                // writes every parameter), so every avoided pass counts. Eighteen passes over the
                // parameters' size, as PyTorch's single-tensor AdamW; the same arithmetic up to
                // rounding (the parity test holds it to torch's trajectory).
                let m = &mut self.exp_avg[i];
                let _ = m.lerp_(&grad, 1.0 - p.beta1);
                // v ← β₂·v + (1 − β₂)·g², as a lerp towards g².
                let v = &mut self.exp_avg_sq[i];
                let _ = v.lerp_(&grad.square(), 1.0 - p.beta2);
                // p ← p − step_size · m / (√v / √bc₂ + ε), as p + m / d with
                // d = −(√v / √bc₂ + ε) / step_size (tch's addcdiv_ has no scale argument).
                // A zero learning rate (a warm-up's first step) leaves the weights as they are.
                if step_size != 0.0 {
                    let mut d = v.sqrt();
                    let _ = d.g_mul_scalar_(-1.0 / (step_size * bias_correction2_sqrt));
                    let _ = d.g_add_scalar_(-p.eps / step_size);
                    let _ = var.addcdiv_(&*m, &d);
                }
            }
        });
    }

    /// The moment estimates as named tensors (`m.<param>`, `v.<param>`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _, _)) in self.vars.iter().enumerate() {
            out.push((format!("m.{name}"), self.exp_avg[i].shallow_clone()));
            out.push((format!("v.{name}"), self.exp_avg_sq[i].shallow_clone()));
        }
        out
    }

    /// Restores the moments written by [`AdamW::state_tensors`]; every parameter must be there
    /// with its shape (a checkpoint of another model is refused).
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
        source: &str,
    ) -> anyhow::Result<()> {
        for (i, (name, var, _)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.exp_avg[i]), ("v", &mut self.exp_avg_sq[i])] {
                let key = format!("{prefix}.{name}");
                let Some(saved) = tensors.get(&key) else {
                    bail!(
                        "{source}: optimizer state has no `{key}` (a checkpoint of another model?)"
                    )
                };
                if saved.size() != var.size() {
                    bail!(
                        "{source}: `{key}` has shape {:?}, the model's parameter {:?}",
                        saved.size(),
                        var.size()
                    );
                }
                tch::no_grad(|| slot.copy_(&saved.to_kind(Kind::Float).to_device(var.device())));
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up over `warmup`
/// steps, then constant or linear decay to zero (transformers' `get_linear_schedule_with_warmup`).
pub fn scheduled_lr(base: f64, step: u64, total: u64, warmup: u64, linear_decay: bool) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    if !linear_decay {
        return base;
    }
    let remaining = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    base * (remaining / span).max(0.0)
}

/// Reads a safetensors file of optimizer state.
pub fn read_state(path: &std::path::Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let list = Tensor::read_safetensors(path)
        .with_context(|| format!("reading optimizer state {}", path.display()))?;
    Ok(list.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_matches_transformers() {
        // get_linear_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10)
        let lrs: Vec<f64> = (0..10).map(|s| scheduled_lr(1.0, s, 10, 2, true)).collect();
        let expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        assert_eq!(scheduled_lr(5e-5, 7, 10, 0, false), 5e-5);
    }

    #[test]
    fn decay_exemptions_follow_the_trainer() {
        assert!(exempt_from_decay("encoder.layer.0.attention.output.LayerNorm.weight"));
        assert!(exempt_from_decay("decoder.cls.predictions.bias"));
        assert!(exempt_from_decay("encoder.block.0.layer.0.layer_norm.weight"));
        assert!(!exempt_from_decay("encoder.layer.0.attention.self.query.weight"));
    }

    #[test]
    fn one_parameter_follows_the_closed_form() {
        // With a constant gradient g, after t steps m̂ = g and v̂ = g², so each step moves the
        // parameter by lr · g / (|g| + ε'), i.e. by ≈ lr·sign(g).
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            HashMap::from([("w".to_string(), p.shallow_clone())]),
            AdamWParams::default(),
        );
        for _ in 0..3 {
            opt.zero_grad();
            let loss = (&p * Tensor::from_slice(&[0.5f32, -4.0])).sum(Kind::Float);
            loss.backward();
            opt.step(0.1);
        }
        let got = Vec::<f32>::try_from(p.detach()).unwrap();
        assert!(
            (got[0] - (1.0 - 0.3)).abs() < 1e-5 && (got[1] - (-2.0 + 0.3)).abs() < 1e-5,
            "{got:?}"
        );
    }
}

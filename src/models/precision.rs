//! Reduced-precision linear layers on any device: bf16 matmuls with f32 everywhere else.
//!
//! Why this exists: the CPUs this project runs on have AVX-512 BF16, where libtorch's bf16 matmul
//! runs about twice as fast as f32 (202 vs 93 GFLOP/s on one core, `benches/side_by_side.sh`'s
//! roof rows), and decoding reads every weight once per step, so weights stored in bf16 halve the
//! bytes per step (batched decoding gains 1.5×; at batch 1 libtorch's bf16 matrix-vector kernel is
//! slower per byte than f32's and gains little). PyTorch gets the first with
//! `torch.autocast("cpu", dtype=torch.bfloat16)`; tch 0.24 exposes only libtorch's CUDA autocast
//! switch (fp16, no dtype), so the models route their linear layers through [`linear`], which
//! follows the same rule for the op that carries almost all of their FLOPs:
//!
//! - inside [`autocast`] with [`Precision::Bf16`] (training): the input, weight and bias are cast
//!   to bf16 for the matmul (the f32 weights stay the optimizer's master copy; gradients flow back
//!   through the casts in f32), like autocast's lower-precision op list;
//! - with weights stored in bf16 ([`Precision::cast_for_inference`], decoding): the input is cast
//!   to the weight's kind;
//! - either way the result comes back in the input's kind, so norms, softmax, residual sums, the
//!   KV cache and the loss stay f32 (autocast keeps those in f32 too).
//!
//! Everything else (attention scores, element-wise work) stays f32: those are memory-bound, and
//! keeping them in f32 is what keeps losses and greedy outputs close to the f32 run.
//!
//! As in PyTorch's autocast, a weight is cast once per [`autocast`] scope and the bf16 copy reused
//! until the scope ends (a forward pass; or a whole generation, where every decoding step would
//! otherwise re-read the f32 weights to cast them). Weights must therefore not change inside a
//! scope: the trainer steps its optimizer outside it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The kind linear layers compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default; what the parity tests pin).
    #[default]
    F32,
    /// bf16 matmuls, f32 elsewhere.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The tensor kind of the matmuls.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// A weight as an inference-only model stores it: matrices in this precision, vectors (norms,
    /// biases) left as they are. Not for trainable weights (the optimizer needs f32 masters).
    pub fn cast_for_inference(self, weight: &Tensor) -> Tensor {
        if self == Precision::F32 || weight.dim() < 2 || weight.kind() == self.kind() {
            weight.shallow_clone()
        } else {
            weight.to_kind(self.kind())
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("precision `{other}`: expected f32 or bf16")),
        }
    }
}

thread_local! {
    /// The precision [`autocast`] set on this thread (libtorch's autocast state is thread-local too).
    static AUTOCAST: Cell<Precision> = const { Cell::new(Precision::F32) };
    /// Weights cast in the current outermost scope, by (address, element count, shape).
    static CAST_CACHE: RefCell<HashMap<(usize, Vec<i64>), Tensor>> = RefCell::new(HashMap::new());
}

/// Runs `f` with linear layers computing in `precision` on this thread; restores the previous
/// setting afterwards (also when `f` panics) and, leaving the outermost scope, drops the cached
/// weight casts.
pub fn autocast<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            let leaving = AUTOCAST.with(|a| a.replace(self.0));
            if leaving != self.0 || self.0 == Precision::F32 {
                CAST_CACHE.with(|c| c.borrow_mut().clear());
            }
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(precision)));
    f()
}

/// `weight` in `kind`, cast once per autocast scope.
fn cached_cast(weight: &Tensor, kind: Kind) -> Tensor {
    let key = (weight.data_ptr() as usize, weight.size());
    CAST_CACHE
        .with(|c| c.borrow_mut().entry(key).or_insert_with(|| weight.to_kind(kind)).shallow_clone())
}

/// The precision [`autocast`] has set on this thread.
pub fn current() -> Precision {
    AUTOCAST.with(Cell::get)
}

/// `x · wᵀ + b` in the precision of the rule in the module docs, returned in `x`'s kind.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let compute = match current() {
        Precision::Bf16 => Kind::BFloat16,
        Precision::F32 => weight.kind(),
    };
    let out_kind = x.kind();
    if compute == out_kind && weight.kind() == compute && bias.is_none_or(|b| b.kind() == compute) {
        return x.linear(weight, bias);
    }
    let cast =
        |t: &Tensor| if t.kind() == compute { t.shallow_clone() } else { t.to_kind(compute) };
    let weight = if weight.kind() == compute {
        weight.shallow_clone()
    } else {
        cached_cast(weight, compute)
    };
    let bias = bias.map(cast);
    cast(x).linear(&weight, bias.as_ref()).to_kind(out_kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn data() -> (Tensor, Tensor, Tensor) {
        let _generator = crate::models::seed_libtorch(7);
        let opts = (Kind::Float, Device::Cpu);
        (Tensor::randn([3, 5, 64], opts), Tensor::randn([32, 64], opts), Tensor::randn([32], opts))
    }

    #[test]
    fn f32_is_exactly_libtorchs_linear() {
        let (x, w, b) = data();
        let ours = linear(&x, &w, Some(&b));
        assert!(ours.equal(&x.linear(&w, Some(&b))));
        assert_eq!(ours.kind(), Kind::Float);
    }

    #[test]
    fn bf16_autocast_rounds_the_operands_and_returns_f32() {
        let (x, w, b) = data();
        let ours = autocast(Precision::Bf16, || linear(&x, &w, Some(&b)));
        assert_eq!(ours.kind(), Kind::Float);
        assert_eq!(current(), Precision::F32, "autocast restores the previous precision");
        let bf = |t: &Tensor| t.to_kind(Kind::BFloat16);
        let expected = bf(&x).linear(&bf(&w), Some(&bf(&b))).to_kind(Kind::Float);
        assert!(ours.equal(&expected));
        // bf16 keeps 8 significant bits: close to f32, not equal.
        let exact = x.linear(&w, Some(&b));
        let err = (&ours - &exact).abs().max().double_value(&[]);
        let scale = exact.abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.02 * scale, "err {err} vs scale {scale}");
    }

    #[test]
    fn bf16_weights_compute_in_bf16_without_autocast() {
        let (x, w, b) = data();
        let wb = Precision::Bf16.cast_for_inference(&w);
        assert_eq!(wb.kind(), Kind::BFloat16);
        assert_eq!(Precision::Bf16.cast_for_inference(&b).kind(), Kind::Float, "vectors stay");
        let ours = linear(&x, &wb, Some(&b));
        assert_eq!(ours.kind(), Kind::Float);
        let expected = x.to_kind(Kind::BFloat16).linear(&wb, Some(&b.to_kind(Kind::BFloat16)));
        assert!(ours.equal(&expected.to_kind(Kind::Float)));
    }

    #[test]
    fn gradients_reach_the_f32_masters_through_the_casts() {
        let (x, w, _) = data();
        let w = w.set_requires_grad(true);
        let loss = autocast(Precision::Bf16, || linear(&x, &w, None)).sum(Kind::Float);
        loss.backward();
        let g = w.grad();
        assert_eq!(g.kind(), Kind::Float);
        let reference = x.reshape([-1, 64]).sum_dim_intlist(0, false, Kind::Float);
        let err = (&g - reference.unsqueeze(0).expand([32, 64], false)).abs().max();
        assert!(err.double_value(&[]) < 0.5, "gradient close to f32's");
    }

    #[test]
    fn a_weight_is_cast_once_per_scope_and_afresh_in_the_next() {
        let (x, mut w, _) = data();
        let (a, b) = autocast(Precision::Bf16, || {
            let a = linear(&x, &w, None);
            CAST_CACHE.with(|c| assert_eq!(c.borrow().len(), 1));
            (a, linear(&x, &w, None))
        });
        assert!(a.equal(&b));
        CAST_CACHE.with(|c| assert!(c.borrow().is_empty(), "the scope's casts are dropped"));
        tch::no_grad(|| {
            let _ = w.g_mul_scalar_(2.0);
        });
        let c = autocast(Precision::Bf16, || linear(&x, &w, None));
        assert!(c.equal(&(a * 2.0)), "the next scope sees the updated weight");
    }

    #[test]
    fn parses_and_prints() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
        }
        assert!("fp8".parse::<Precision>().unwrap_err().contains("f32 or bf16"));
    }
}

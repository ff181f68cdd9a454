//! Feed-forward activations by their transformers names (`ACT2FN`), shared by every model that
//! reads a `hidden_act`-style config string (BERT-family encoders, BERT2BERT, T5).

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// An activation function, (de)serialised as transformers' name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `"relu"`.
    Relu,
    /// Exact (erf) GELU: transformers' `"gelu"` (BERT, MiniLM, XLM-R).
    Gelu,
    /// Tanh-approximated GELU written out in Python ops: transformers' `"gelu_new"`
    /// (`NewGELUActivation`; T5 v1.1's `gated-gelu`). See [`gelu_new`].
    GeluNew,
    /// libtorch's fused tanh GELU: transformers' `"gelu_pytorch_tanh"`.
    GeluPytorchTanh,
    /// `"silu"` (also accepted as `"swish"`, which transformers maps to the same function).
    #[serde(alias = "swish")]
    Silu,
}

impl Activation {
    /// The activation named `name` (a config's `hidden_act`, `dense_act_fn`, ...).
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" => Activation::GeluNew,
            "gelu_pytorch_tanh" => Activation::GeluPytorchTanh,
            "silu" | "swish" => Activation::Silu,
            other => anyhow::bail!("unsupported activation {other:?}"),
        })
    }

    /// transformers' name (what serialisation writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluNew => "gelu_new",
            Activation::GeluPytorchTanh => "gelu_pytorch_tanh",
            Activation::Silu => "silu",
        }
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluNew => gelu_new(x),
            Activation::GeluPytorchTanh => x.gelu("tanh"),
            Activation::Silu => x.silu(),
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Activation::parse(s)
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// transformers' `NewGELUActivation`, `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`,
/// written with the same ops in the same order (rather than libtorch's fused tanh GELU) so the
/// two agree to the last bit on the same hardware.
pub fn gelu_new(x: &Tensor) -> Tensor {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * c;
    x * 0.5 * (inner.tanh() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialise_as_transformers() {
        for act in [
            Activation::Relu,
            Activation::Gelu,
            Activation::GeluNew,
            Activation::GeluPytorchTanh,
            Activation::Silu,
        ] {
            assert_eq!(Activation::parse(act.as_str()).unwrap(), act);
            let json = serde_json::to_string(&act).unwrap();
            assert_eq!(json, format!("\"{}\"", act.as_str()));
            assert_eq!(serde_json::from_str::<Activation>(&json).unwrap(), act);
        }
        assert_eq!(Activation::parse("swish").unwrap(), Activation::Silu);
        assert_eq!(serde_json::from_str::<Activation>("\"swish\"").unwrap(), Activation::Silu);
        assert!(Activation::parse("gelu_fast").is_err());
        assert!(serde_json::from_str::<Activation>("\"gelu_fast\"").is_err());
    }
}

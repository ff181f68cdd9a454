//! llama.cpp as the decoding engine of a GGUF chat model (cargo feature `llama-cpp`, through the
//! `llama-cpp-2` binding, which compiles llama.cpp into the binary).
//!
//! Why a second engine: decoding one row reads every weight once per token. The tch engine
//! ([`super::llama::Llama`]) holds SmolLM2-135M dequantised, 538 MB in f32 or 269 MB in bf16 per
//! token, and libtorch's CPU matrix-vector kernels cannot go lower (its int8/int4 weight-only
//! kernels are 10–40× slower per byte than f32's; `benches/README.md`). llama.cpp multiplies the
//! Q4_1 blocks as they are, ~85 MB per token, so batch-1 decoding runs at llama.cpp's speed. The
//! tch engine stays for training, the parity tests and machines built without the feature.
//!
//! What both engines share, so that switching changes only the logits: token ids (our tokenizer
//! and chat template; llama.cpp is given ids, never text), sampling ([`sampling::select`] with one
//! seeded generator per [`SamplingConfig`], drawn in row order each step, the repetition penalty
//! over prompt + generated ids), and the [`Steer`] protocol of structured generation. The logits
//! differ slightly (llama.cpp rounds activations to 8 bits for the Q4_1 products), so texts can
//! differ from the f32 engine's after a near-tie; they equal llama-cpp-python's on the same file.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::llama::{Generated, Steer, SteeredRow, SteeredState};
use super::sampling::SamplingConfig;

/// llama.cpp's process-wide state, initialised once (its log goes nowhere: our progress and errors
/// say what happened).
fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let mut backend = LlamaBackend::init().expect("llama.cpp's backend is initialised once");
        backend.void_logs();
        backend
    })
}

/// A GGUF model loaded by llama.cpp, ready to generate from token ids.
pub struct LlamaCppEngine {
    model: LlamaModel,
    threads: i32,
}

impl LlamaCppEngine {
    /// Load `path` with llama.cpp, computing on `threads` CPU threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        ensure!(threads > 0, "llama.cpp needs at least one thread");
        let model = LlamaModel::load_from_file(backend(), path, &LlamaModelParams::default())
            .map_err(|e| anyhow!("llama.cpp could not load {}: {e}", path.display()))?;
        Ok(LlamaCppEngine { model, threads: threads as i32 })
    }

    pub fn vocab_size(&self) -> usize {
        self.model.n_vocab() as usize
    }

    /// [`super::llama::Llama::generate_steered`]'s contract on llama.cpp: each row is a sequence of
    /// one context (rows with the same prompt prefill once and share its cache cells), every step
    /// decodes the unfinished rows' last tokens as one batch.
    pub fn generate_steered(
        &self,
        rows: &[SteeredRow],
        generators: &[SamplingConfig],
        steer: &mut dyn FnMut(usize, i64) -> Steer,
    ) -> Result<Vec<Generated>> {
        self.generate_rows(rows, generators, steer, false)
    }

    /// [`generate_steered`](Self::generate_steered) with the prompt prefix all rows share (a
    /// student's instruction and template before each input) prefilled once, in one sequence
    /// whose cache cells every row's sequence then shares (llama.cpp's prompt cache: the cells
    /// are tagged with several sequences, not copied); each row prefills only the rest. The
    /// prefix's keys and values are those of a whole-prompt prefill computed in another batch, so
    /// logits can differ from [`generate_steered`](Self::generate_steered)'s in the last bits.
    pub fn generate_sharing_prefix(
        &self,
        rows: &[SteeredRow],
        generators: &[SamplingConfig],
        steer: &mut dyn FnMut(usize, i64) -> Steer,
    ) -> Result<Vec<Generated>> {
        self.generate_rows(rows, generators, steer, true)
    }

    fn generate_rows(
        &self,
        rows: &[SteeredRow],
        generators: &[SamplingConfig],
        steer: &mut dyn FnMut(usize, i64) -> Steer,
        share_prefix: bool,
    ) -> Result<Vec<Generated>> {
        if rows.is_empty() {
            return Ok(vec![]);
        }
        SteeredState::check(rows, generators)?;
        let vocab = self.vocab_size() as i64;
        // Checked here so that the error names the id (llama_decode only returns an error code).
        let in_vocab = |t: i64| {
            ensure!((0..vocab).contains(&t), "token id {t} outside the vocabulary of {vocab}");
            Ok(())
        };
        rows.iter().flat_map(|r| &r.prompt).try_for_each(|&t| in_vocab(t))?;
        let b = rows.len();
        let max_new_tokens = generators.iter().map(|g| g.max_new_tokens).max().unwrap_or(0);
        if max_new_tokens == 0 {
            return Ok(vec![Generated { tokens: vec![], stopped_on_eos: false }; b]);
        }

        // Distinct prompts are prefilled once; a row with an earlier row's prompt copies its cells.
        let mut first_with: Vec<usize> = Vec::with_capacity(b);
        for (i, r) in rows.iter().enumerate() {
            first_with.push(rows[..i].iter().position(|d| d.prompt == r.prompt).unwrap_or(i));
        }
        // The prefix shared by every row, short of each row's last token (whose logits start
        // the row's generation).
        let shared = if share_prefix && b > 1 { shared_prefix_len(rows) } else { 0 };
        let prefilled: usize = shared
            + (0..b)
                .filter(|&i| first_with[i] == i)
                .map(|i| rows[i].prompt.len() - shared)
                .sum::<usize>();
        let cells = prefilled + b * max_new_tokens + 1;
        let longest = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(1);
        let n_batch = longest.max(b) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cells as u32))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch.min(512))
            .with_n_seq_max(b as u32)
            .with_kv_unified(true)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx = self
            .model
            .new_context(backend(), params)
            .map_err(|e| anyhow!("llama.cpp could not make a context of {cells} cells: {e}"))?;

        // Prefill: each row's logits after its prompt.
        let mut batch = LlamaBatch::new(n_batch as usize, 1);
        if shared > 0 {
            for (pos, &t) in rows[0].prompt[..shared].iter().enumerate() {
                batch.add(LlamaToken::new(t as i32), pos as i32, &[0], false)?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| anyhow!("llama.cpp prefill of the shared prefix: {e}"))?;
        }
        let mut logits: Vec<Vec<f32>> = Vec::with_capacity(b);
        for (i, r) in rows.iter().enumerate() {
            let source = first_with[i];
            if source != i {
                ctx.copy_kv_cache_seq(source as i32, i as i32, None, None)
                    .context("sharing a prompt's cache")?;
                logits.push(logits[source].clone());
                continue;
            }
            if shared > 0 && i > 0 {
                ctx.copy_kv_cache_seq(0, i as i32, Some(0), Some(shared as u32))
                    .context("sharing the prompts' common prefix")?;
            }
            batch.clear();
            let last = r.prompt.len() - 1;
            for (pos, &t) in r.prompt.iter().enumerate().skip(shared) {
                batch.add(LlamaToken::new(t as i32), pos as i32, &[i as i32], pos == last)?;
            }
            ctx.decode(&mut batch).map_err(|e| anyhow!("llama.cpp prefill: {e}"))?;
            logits.push(ctx.get_logits_ith(batch.n_tokens() - 1).to_vec());
        }

        let mut state = SteeredState::new(rows, generators);
        for step in 0..max_new_tokens {
            let mut fed: Vec<(usize, i64)> = Vec::with_capacity(b);
            for (r, row_logits) in logits.iter_mut().enumerate() {
                if let Some(token) = state.step_row(r, || std::mem::take(row_logits), steer)? {
                    in_vocab(token)?; // a forced token (`Steer::Replace`) comes from the caller
                    fed.push((r, token));
                }
            }
            if fed.is_empty() || step + 1 == max_new_tokens {
                break;
            }
            batch.clear();
            for &(r, token) in &fed {
                let pos = (state.seen_len(r) - 1) as i32;
                batch.add(LlamaToken::new(token as i32), pos, &[r as i32], true)?;
            }
            ctx.decode(&mut batch).map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
            for (k, &(r, _)) in fed.iter().enumerate() {
                logits[r] = ctx.get_logits_ith(k as i32).to_vec();
            }
        }
        Ok(state.out)
    }
}

/// The length of the prefix every row's prompt shares, at most one less than the shortest prompt.
fn shared_prefix_len(rows: &[SteeredRow]) -> usize {
    let first = &rows[0].prompt;
    let mut n = rows.iter().map(|r| r.prompt.len()).min().unwrap_or(1).saturating_sub(1);
    for r in &rows[1..] {
        n = first.iter().zip(&r.prompt).take(n).take_while(|(a, b)| a == b).count();
    }
    n
}

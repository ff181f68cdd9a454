//! Next-token selection shared by every generator (decoder-only and encoder-decoder): greedy,
//! temperature + nucleus (top-p) sampling from a seeded generator, and the repetition penalty of
//! Keskar et al. (2019) with Hugging Face transformers' semantics. Selection runs on the CPU over
//! one row of logits at a time; the models hand over `[batch, vocab]` f32 logits.
//!
//! The generator is our own SplitMix64 so that a seed gives the same samples on every machine and
//! every libtorch build (tch's global RNG is neither per-call nor stable across devices).

use tch::{Kind, Tensor};

use crate::util::rng::SplitMix64;

/// Generation settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// 1.0 disables it; the Prompt2Model reference uses 2.0 for its students.
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingConfig { max_new_tokens, ..Default::default() }
    }
}

/// Penalise every token id already in `seen` (prompt and generated tokens, as transformers'
/// `RepetitionPenaltyLogitsProcessor` does with `input_ids`): a positive logit is divided by the
/// penalty, a negative one multiplied, so the token always becomes less likely.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[i64], penalty: f64) {
    if (penalty - 1.0).abs() < f64::EPSILON {
        return;
    }
    let p = penalty as f32;
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &id in seen {
        if id < 0 || id as usize >= logits.len() || !done.insert(id) {
            continue;
        }
        let l = &mut logits[id as usize];
        *l = if *l < 0.0 { *l * p } else { *l / p };
    }
}

/// Choose the next token from one row of logits (penalty already applied).
pub fn select(logits: &[f32], cfg: &SamplingConfig, rng: &mut SplitMix64) -> i64 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    // Softmax at the temperature, in f64 for a stable nucleus cut.
    let t = cfg.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i, ((l as f64 - max) / t).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    for p in probs.iter_mut() {
        p.1 /= total;
    }
    // Nucleus: the smallest set of most likely tokens whose mass reaches top_p (ties by id).
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= cfg.top_p {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let mut u = rng.next_f64() * mass;
    for &(id, p) in nucleus {
        if u < p {
            return id as i64;
        }
        u -= p;
    }
    nucleus[kept - 1].0 as i64
}

fn argmax(logits: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as i64
}

/// Apply the penalty and select, for every row of `[batch, vocab]` logits. `seen[b]` holds the ids
/// row `b` has seen so far; rows in `finished` are skipped (their entry is `pad_id`).
pub fn select_batch(
    logits: &Tensor,
    seen: &[Vec<i64>],
    finished: &[bool],
    pad_id: i64,
    cfg: &SamplingConfig,
    rng: &mut SplitMix64,
) -> Vec<i64> {
    let logits = logits.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
    let (batch, vocab) = logits.size2().expect("[batch, vocab] logits");
    let flat: Vec<f32> = Vec::<f32>::try_from(logits.view([-1])).expect("f32 logits");
    (0..batch as usize)
        .map(|b| {
            if finished[b] {
                return pad_id;
            }
            let mut row = flat[b * vocab as usize..(b + 1) * vocab as usize].to_vec();
            apply_repetition_penalty(&mut row, &seen[b], cfg.repetition_penalty);
            select(&row, cfg, rng)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_follows_transformers() {
        // transformers: score = where(score < 0, score * p, score / p) over the gathered ids.
        let mut l = vec![2.0, -1.0, 0.5, 4.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -2.0, 0.5, 4.0]);
    }

    #[test]
    fn greedy_and_top_p() {
        let mut rng = SplitMix64::new(7);
        let logits = [0.0f32, 5.0, 1.0];
        assert_eq!(select(&logits, &SamplingConfig::greedy(1), &mut rng), 1);
        // A tiny nucleus keeps only the most likely token, whatever the draw.
        let cfg = SamplingConfig { temperature: 1.0, top_p: 0.5, ..Default::default() };
        for _ in 0..20 {
            assert_eq!(select(&logits, &cfg, &mut rng), 1);
        }
        // Sampling is a function of the seed.
        let cfg = SamplingConfig { temperature: 1.5, top_p: 1.0, ..Default::default() };
        let draw = |seed| {
            let mut r = SplitMix64::new(seed);
            (0..32).map(|_| select(&logits, &cfg, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(draw(3).iter().any(|&t| t != 1), "high temperature explores");
    }
}

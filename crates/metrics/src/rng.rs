//! Seeded random numbers. Every random choice in the project (the generator's prompts, data
//! splits and shuffles, sampling, parameter initialisation) draws from a [`SplitMix64`], so a run is
//! reproducible and, since the state is one `u64`, resumable from a checkpoint.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea & Flood 2014): the seeded RNG for every random choice of the data
/// generator, the samplers and the trainer's initialisation, so that runs are reproducible and
/// resumable (the state is one `u64`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..bound` (`bound > 0`), without modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SplitMix64::below(0)");
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range_inclusive(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// `k` distinct indices of `0..n` in random order (partial Fisher–Yates).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below((i + 1) as u64) as usize;
            v.swap(i, j);
        }
    }
}

/// The indices of a seeded draw of `k` of `0..n`, in ascending order (so the rows keep their
/// original order); all of them when `k` is 0 or at least `n`. The stream is `seed ^ salt`, where
/// the salt names what is drawn (each caller's salt is an ASCII tag, e.g. `b"real"` as a number), so
/// that two draws with the same seed are independent. One implementation for every subsample of a
/// test set.
pub fn seeded_subset(n: usize, k: usize, seed: u64, salt: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if k == 0 || k >= n {
        return idx;
    }
    SplitMix64::new(seed ^ salt).shuffle(&mut idx);
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// An ASCII tag (at most 8 bytes) as the salt of [`seeded_subset`]: `salt(b"real")` is `0x7265_616c`.
pub const fn salt(tag: &[u8]) -> u64 {
    assert!(tag.len() <= 8, "a salt tag has at most 8 bytes");
    let mut v = 0u64;
    let mut i = 0;
    while i < tag.len() {
        v = (v << 8) | tag[i] as u64;
        i += 1;
    }
    v
}

/// FNV-1a (64-bit) of a byte string: keys a random stream by a name (a parameter, an arm).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let s = a.sample_indices(10, 4);
        assert_eq!(s.len(), 4);
        let mut d = s.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 4);
        for _ in 0..100 {
            let x = a.range_inclusive(1, 3);
            assert!((1..=3).contains(&x));
        }
    }

    #[test]
    fn a_seeded_subset_is_sorted_reproducible_and_the_shuffle_it_replaced() {
        assert_eq!(salt(b"real"), 0x7265_616c);
        assert_eq!(salt(b"gen"), 0x0067_656e);
        let s = seeded_subset(100, 10, 42, salt(b"real"));
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s, seeded_subset(100, 10, 42, salt(b"real")));
        assert_ne!(s, seeded_subset(100, 10, 42, salt(b"gen")));
        // The same draw as the shuffle-truncate-sort it replaced, so earlier runs keep their rows.
        let mut idx: Vec<usize> = (0..100).collect();
        SplitMix64::new(42 ^ 0x7265_616c).shuffle(&mut idx);
        idx.truncate(10);
        idx.sort_unstable();
        assert_eq!(s, idx);
        assert_eq!(seeded_subset(5, 0, 1, 2), vec![0, 1, 2, 3, 4]);
        assert_eq!(seeded_subset(5, 9, 1, 2), vec![0, 1, 2, 3, 4]);
    }
}

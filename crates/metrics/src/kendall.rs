//! Kendall's τ-b with a two-sided p-value, identical to `scipy.stats.kendalltau(x, y)` with its
//! defaults (`variant='b'`, `method='auto'`, `alternative='two-sided'`), checked against scipy
//! 1.17.1 (`scipy/stats/_stats_py.py::kendalltau`, `_mstats_basic.py::_kendall_p_exact`).
//!
//! Why a port: the paper's Table 3 correlates rankings with few items, where the choice between
//! the exact permutation distribution and the normal approximation, and the tie corrections,
//! change the p-value materially. scipy's rules, reproduced here:
//!
//! * **τ-b** = (C − D) / √(n₀ − n₁) / √(n₀ − n₂), with n₀ = n(n−1)/2 pairs, n₁/n₂ pairs tied in
//!   x/y; computed from integer pair counts (discordant pairs by a Fenwick tree, O(n log n)) and
//!   clamped to [−1, 1].
//! * **NaN results**: fewer than 2 observations, or all values of x (or of y) tied, give
//!   τ = p = NaN (scipy returns NaN rather than raising). NaN *inputs* are rejected here instead
//!   of being propagated.
//! * **`method='auto'`**: the *exact* null distribution is used when there are no ties and either
//!   n ≤ 33 or min(D, n₀ − D) ≤ 1; otherwise the *asymptotic* normal approximation of C − D with
//!   the tie-corrected variance
//!   `((m(2n+5) − Σt(t−1)(2t+5)ₓ − …ᵧ) / 18 + 2·n₁·n₂ / m + Σt(t−1)(t−2)ₓ·…ᵧ / (9m(n−2)))`,
//!   m = n(n−1), and p = 2·Φ(−|z|) computed like scipy's `ndtr` (with our own erf/erfc, see
//!   the comment at `ndtr` for why not statrs').
//! * **Exact p** (`_kendall_p_exact`): closed forms for the extreme counts (`2/n!`,
//!   `2/(n−1)!`, 0 beyond the float range), 1 for C = n₀/2, otherwise scipy's float64
//!   Mahonian-number recursion, summed with NumPy's pairwise summation and divided by the
//!   correctly rounded n!, so the result is bit-identical to scipy's.
//!
//! The asymptotic p-value can differ from scipy's in the last bits (different erf/erfc
//! implementations, both accurate to a few ulp); the differential test bounds the difference by
//! 1e-12 absolute (observed: ~1e-16).

pub use crate::error::MetricError;

/// scipy version the implementation is verified against (used in the signature).
pub const SCIPY_REFERENCE_VERSION: &str = "1.17.1";

/// How the p-value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KendallMethod {
    /// Exact permutation distribution (no ties, small n or extreme counts).
    Exact,
    /// Normal approximation with tie-corrected variance.
    Asymptotic,
    /// No test was possible (n < 2 or a constant input): τ and p are NaN, as in scipy.
    Undefined,
}

/// Result of [`kendall_tau_b`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KendallTau {
    /// τ-b in [−1, 1], or NaN (see [`KendallMethod::Undefined`]).
    pub tau: f64,
    /// Two-sided p-value for H₀: τ = 0, or NaN.
    pub p_value: f64,
    /// Which p-value computation scipy's `method='auto'` selects.
    pub method: KendallMethod,
    /// Number of observations.
    pub n: usize,
}

/// Reproducibility signature, e.g.
/// `kendall-tau-b|alt:two-sided|method:auto|impl:prompt2model-rs-0.1.0|ref:scipy-1.17.1`.
pub fn signature() -> String {
    format!(
        "kendall-tau-b|alt:two-sided|method:auto|impl:prompt2model-rs-{}|ref:scipy-{}",
        env!("CARGO_PKG_VERSION"),
        SCIPY_REFERENCE_VERSION
    )
}

/// Kendall's τ-b and two-sided p-value of the paired samples `x`, `y`, exactly as
/// `scipy.stats.kendalltau(x, y)`.
///
/// Errors on different lengths or NaN values. Infinite values are ordinary (extreme) ranks, and
/// `-0.0 == 0.0` is a tie, as in NumPy.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Result<KendallTau, MetricError> {
    if x.len() != y.len() {
        return Err(MetricError::LengthMismatch {
            left_name: "x",
            left: x.len(),
            right_name: "y",
            right: y.len(),
        });
    }
    for (which, v) in [("x", x), ("y", y)] {
        if let Some(index) = v.iter().position(|a| a.is_nan()) {
            return Err(MetricError::NanInput { which, index });
        }
    }
    let n = x.len();
    let undefined =
        KendallTau { tau: f64::NAN, p_value: f64::NAN, method: KendallMethod::Undefined, n };
    if n < 2 {
        // scipy: empty input → NaN; one observation is "too small" → NaN (with a warning).
        return Ok(undefined);
    }

    // Dense ranks (ties share a rank), then sort the pairs by (x rank, y rank) as scipy does
    // with its argsort + stable mergesort.
    let rx = dense_ranks(x);
    let ry = dense_ranks(y);
    let mut pairs: Vec<(u32, u32)> = rx.iter().copied().zip(ry.iter().copied()).collect();
    pairs.sort_unstable();

    let dis = discordant_pairs(&pairs);
    // joint ties: runs of identical (x, y) pairs
    let mut ntie: u128 = 0;
    let mut run: u128 = 1;
    for w in pairs.windows(2) {
        if w[0] == w[1] {
            run += 1;
        } else {
            ntie += run * (run - 1) / 2;
            run = 1;
        }
    }
    ntie += run * (run - 1) / 2;
    let (xtie, x0, x1) = rank_tie_stats(&rx);
    let (ytie, y0, y1) = rank_tie_stats(&ry);

    let size = n as u128;
    let tot = size * (size - 1) / 2;
    if xtie == tot || ytie == tot {
        return Ok(undefined);
    }
    // tot = con + dis + (xtie - ntie) + (ytie - ntie) + ntie
    let con_minus_dis = tot as i128 - xtie as i128 - ytie as i128 + ntie as i128 - 2 * dis as i128;
    // tau = con_minus_dis / np.sqrt(tot - xtie) / np.sqrt(tot - ytie); clamp to [-1, 1]
    let tau = con_minus_dis as f64 / ((tot - xtie) as f64).sqrt() / ((tot - ytie) as f64).sqrt();
    let tau = tau.clamp(-1.0, 1.0); // np.minimum(1., max(-1., tau)); tau is never NaN here

    let exact = xtie == 0 && ytie == 0 && (n <= 33 || dis.min(tot - dis) <= 1);
    let (p_value, method) = if exact {
        (kendall_p_exact(size, tot - dis), KendallMethod::Exact)
    } else {
        // m = size * (size - 1.)
        let nf = n as f64;
        let m = nf * (nf - 1.0);
        let var = (m * (2.0 * nf + 5.0) - x1 as f64 - y1 as f64) / 18.0
            + (2 * xtie * ytie) as f64 / m
            + (x0 * y0) as f64 / (9.0 * m * (nf - 2.0));
        let z = con_minus_dis as f64 / var.sqrt();
        // _get_pvalue(z, _SimpleNormal(), 'two-sided') = 2 * ndtr(-|z|)
        (2.0 * ndtr(-z.abs()), KendallMethod::Asymptotic)
    };
    Ok(KendallTau { tau, p_value, method, n })
}

/// Dense ranks 1..=k of `v` (equal values, including `-0.0` and `0.0`, share a rank).
fn dense_ranks(v: &[f64]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    // no NaN here, so partial_cmp is total
    idx.sort_unstable_by(|&a, &b| v[a as usize].partial_cmp(&v[b as usize]).unwrap());
    let mut ranks = vec![0u32; v.len()];
    let mut r = 0u32;
    let mut prev: Option<f64> = None;
    for &i in &idx {
        let val = v[i as usize];
        if prev != Some(val) {
            r += 1;
            prev = Some(val);
        }
        ranks[i as usize] = r;
    }
    ranks
}

/// scipy's `count_rank_tie`: (Σ t(t−1)/2, Σ t(t−1)(t−2), Σ t(t−1)(2t+5)) over tie groups.
///
/// scipy evaluates the last two in float64 and converts to int; they are exact integers for any
/// n where the products stay below 2⁵³ (n up to ~10⁵), which is what integer arithmetic gives.
fn rank_tie_stats(ranks: &[u32]) -> (u128, u128, u128) {
    let k = ranks.iter().copied().max().unwrap_or(0) as usize;
    let mut cnt = vec![0u128; k + 1];
    for &r in ranks {
        cnt[r as usize] += 1;
    }
    let (mut t, mut t0, mut t1) = (0u128, 0u128, 0u128);
    for &c in cnt.iter().filter(|&&c| c > 1) {
        t += c * (c - 1) / 2;
        t0 += c * (c - 1) * (c - 2);
        t1 += c * (c - 1) * (2 * c + 5);
    }
    (t, t0, t1)
}

/// Number of strictly discordant pairs of `pairs` sorted by (x, y): pairs i < j with
/// x_i < x_j and y_i > y_j (scipy's `_kendall_dis`, a Fenwick tree over y ranks).
fn discordant_pairs(pairs: &[(u32, u32)]) -> u128 {
    let sup = pairs.iter().map(|p| p.1).max().unwrap_or(0) as usize + 1;
    let mut tree = vec![0u64; sup];
    let mut dis: u128 = 0;
    let (mut i, mut k) = (0usize, 0usize);
    let size = pairs.len();
    while i < size {
        // for the group of equal x: count earlier elements (strictly smaller x) with larger y
        while k < size && pairs[i].0 == pairs[k].0 {
            dis += i as u128;
            let mut idx = pairs[k].1 as usize;
            while idx != 0 {
                dis -= tree[idx] as u128;
                idx &= idx - 1;
            }
            k += 1;
        }
        // then insert the group
        while i < k {
            let mut idx = pairs[i].1 as usize;
            while idx < sup {
                tree[idx] += 1;
                idx += idx & idx.wrapping_neg();
            }
            i += 1;
        }
    }
    dis
}

/// scipy's `special.ndtr` (cephes `ndtr`): the standard normal CDF, with the same branch
/// structure (`0.5 + 0.5·erf(x)` near 0, `0.5·erfc(|x|)` in the tails, x = a/√2).
fn ndtr(a: f64) -> f64 {
    use std::f64::consts::FRAC_1_SQRT_2;
    let x = a * FRAC_1_SQRT_2;
    let z = x.abs();
    if z < FRAC_1_SQRT_2 {
        0.5 + 0.5 * erf_small(x)
    } else {
        let y = 0.5 * erfc_large(z);
        if x > 0.0 {
            1.0 - y
        } else {
            y
        }
    }
}

// Why not `statrs::function::erf`: statrs 0.19.1 carries Boost's per-interval constants
// truncated to 10 significant digits, so its erf/erfc (and `Normal::cdf`) are only good to about
// 1e-10 relative (e.g. erfc(1) is off by 7e-12), which would break the 1e-12 agreement with scipy.
// These two are accurate to a few ulp (checked against 50-digit `decimal` evaluations), and
// agree with scipy to ~1e-15 relative; scipy's own erfc is off by up to ~6e-14 relative for
// z > 20, where p < 1e-170.

/// erf(x) for |x| ≤ 1/√2 by its Maclaurin series `2/√π · Σ (−1)ⁿ x^{2n+1} / (n!(2n+1))`
/// (terms shrink at least 2× per step; the alternation costs at most a factor e^{1/2}).
fn erf_small(x: f64) -> f64 {
    const TWO_OVER_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;
    let x2 = x * x;
    let (mut t, mut sum) = (x, x);
    for n in 1..60 {
        t *= -x2 / n as f64;
        let term = t / (2 * n + 1) as f64;
        sum += term;
        if term.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    TWO_OVER_SQRT_PI * sum
}

/// erfc(z) for z ≥ 1/√2 by Laplace's continued fraction
/// `erfc z = e^{−z²}/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …))))`, evaluated with the modified
/// Lentz algorithm (≤ ~400 terms at z = 1/√2, ~30 at z = 3), and e^{−z²} from the exact
/// two-product z² = hi + lo so that the rounding of z² does not cost z² ulps.
fn erfc_large(z: f64) -> f64 {
    let (mut f, mut c, mut d) = (z, z, 0.0f64);
    for n in 1..100_000 {
        let a = n as f64 / 2.0;
        d = 1.0 / (z + a * d);
        c = z + a / c;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() <= 1e-16 {
            break;
        }
    }
    let (hi, lo) = two_product(z, z);
    (-hi).exp() * (-lo).exp() / std::f64::consts::PI.sqrt() / f
}

/// Dekker's exact product: a·b = hi + lo exactly (no FMA needed).
fn two_product(a: f64, b: f64) -> (f64, f64) {
    fn split(x: f64) -> (f64, f64) {
        let c = 134_217_729.0 * x; // 2^27 + 1
        let hi = c - (c - x);
        (hi, x - hi)
    }
    let p = a * b;
    let (ah, al) = split(a);
    let (bh, bl) = split(b);
    (p, ((ah * bh - p) + ah * bl + al * bh) + al * bl)
}

/// `scipy.stats._mstats_basic._kendall_p_exact(n, c, 'two-sided')` for the cases that
/// `method='auto'` can reach (n ≥ 2; DP only for n ≤ 33).
fn kendall_p_exact(n: u128, c: u128) -> f64 {
    let half = n * (n - 1) / 2;
    let c = c.min(half - c);
    let prob = if n <= 2 {
        1.0
    } else if c == 0 {
        if n < 171 {
            2.0 / factorial_f64(n as u32)
        } else {
            0.0
        }
    } else if c == 1 {
        if n < 172 {
            2.0 / factorial_f64(n as u32 - 1)
        } else {
            0.0
        }
    } else if 4 * c == n * (n - 1) {
        1.0
    } else {
        // scipy has a rescaled recursion for n >= 171 that 'auto' never selects (it needs c >= 2
        // and no ties, which means n <= 33 here).
        assert!(n < 171, "exact Kendall p-value requested for n={n}, c={c}");
        let c = c as usize;
        // new = np.zeros(c+1); new[0:2] = 1.0
        let mut new = vec![0.0f64; c + 1];
        new[0] = 1.0;
        new[1] = 1.0;
        for j in 3..=n as usize {
            // new = np.cumsum(new)  (sequential)
            let mut acc = 0.0;
            for v in new.iter_mut() {
                acc += *v;
                *v = acc;
            }
            // if j <= c: new[j:] -= new[:c+1-j]   (NumPy buffers overlapping operands, so the
            // right-hand side is the pre-update array: update from the top down)
            if j <= c {
                for k in (j..=c).rev() {
                    new[k] -= new[k - j];
                }
            }
        }
        // prob = 2.0*np.sum(new)/math.factorial(n)
        2.0 * numpy_pairwise_sum(&new) / factorial_f64(n as u32)
    };
    prob.clamp(0.0, 1.0)
}

/// NumPy's float64 `np.sum` of a contiguous array: pairwise summation with 8 accumulators for
/// blocks of at most 128 elements (`pairwise_sum_DOUBLE`).
fn numpy_pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_pairwise_sum(&a[..n2]) + numpy_pairwise_sum(&a[n2..])
    }
}

/// `float(math.factorial(n))`: n! rounded once, to nearest-even, as Python converts an int.
/// (A running f64 product would round at every step.) Valid for n ≤ 170.
fn factorial_f64(n: u32) -> f64 {
    // little-endian base-2^32 big integer
    let mut limbs: Vec<u32> = vec![1];
    for k in 2..=n as u64 {
        let mut carry = 0u64;
        for l in limbs.iter_mut() {
            let v = *l as u64 * k + carry;
            *l = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let top = limbs.len() - 1;
    let bits = top as u32 * 32 + (32 - limbs[top].leading_zeros());
    if bits <= 64 {
        let mut v = 0u64;
        for (i, &l) in limbs.iter().enumerate() {
            v |= (l as u64) << (32 * i);
        }
        return v as f64; // `as` rounds to nearest-even
    }
    // take the top 64 bits and OR a sticky bit for everything below, then round once
    let shift = bits - 64;
    let bit = |i: u32| (limbs[(i / 32) as usize] >> (i % 32)) & 1;
    let mut mant = 0u64;
    for i in (shift..bits).rev() {
        mant = (mant << 1) | bit(i) as u64;
    }
    if (0..shift).any(|i| bit(i) == 1) {
        mant |= 1;
    }
    // 64 bits with a sticky LSB round to 53 exactly like the full number would.
    (mant as f64) * f64::from_bits(((1023 + shift) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values computed with `scipy.stats.kendalltau` (scipy 1.17.1, numpy 2.4.6).
    #[test]
    fn matches_scipy_values() {
        fn check(x: &[f64], y: &[f64], tau: f64, p: f64, method: KendallMethod) {
            let r = kendall_tau_b(x, y).unwrap();
            assert_eq!((r.tau, r.method, r.n), (tau, method, x.len()), "x={x:?} y={y:?}");
            // exact p-values are bit-identical; asymptotic ones may differ in the last bits (erfc)
            assert!(
                (r.p_value - p).abs() <= 1e-15 * p.max(1e-300).max(1.0),
                "p {} vs {p}",
                r.p_value
            );
            if method == KendallMethod::Exact {
                assert_eq!(r.p_value, p);
            }
        }
        // no ties, n=5 (exact)
        check(
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[3.0, 1.0, 2.0, 5.0, 4.0],
            0.39999999999999997,
            0.48333333333333334,
            KendallMethod::Exact,
        );
        // perfect, n=5 (exact, c=0 closed form)
        check(
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            0.9999999999999999,
            0.016666666666666666,
            KendallMethod::Exact,
        );
        // 4c == n(n-1): p = 1
        check(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 1.0, 3.0], 0.0, 1.0, KendallMethod::Exact);
        // ties (asymptotic)
        check(
            &[1.0, 1.0, 2.0, 3.0, 4.0, 4.0],
            &[2.0, 1.0, 3.0, 3.0, 5.0, 4.0],
            0.8894991799933215,
            0.017411131570499803,
            KendallMethod::Asymptotic,
        );
        // n=40 reversed with one swap (exact, c=1 closed form)
        let x: Vec<f64> = (0..40).map(f64::from).collect();
        let y: Vec<f64> = [38.0, 39.0].into_iter().chain((0..38).rev().map(f64::from)).collect();
        check(&x, &y, -0.9974358974358974, 9.804939513027087e-47, KendallMethod::Exact);
        // n=200 sorted (exact, 2/n! underflows to the 0.0 branch)
        let x: Vec<f64> = (0..200).map(f64::from).collect();
        check(&x, &x, 1.0, 0.0, KendallMethod::Exact);
        // n=35 with ties (7i mod 35 repeats every 5): asymptotic
        let x: Vec<f64> = (0..35).map(f64::from).collect();
        let y: Vec<f64> = (0..35).map(|i| ((7 * i) % 35) as f64).collect();
        check(&x, &y, 0.12964074471043288, 0.3091081171471306, KendallMethod::Asymptotic);
        // n=35 without ties: asymptotic (n > 33)
        let y: Vec<f64> = (0..35).map(|i| ((8 * i) % 35) as f64).collect();
        check(&x, &y, 0.08235294117647059, 0.48651013968926915, KendallMethod::Asymptotic);
        // n=20 without ties: exact Mahonian recursion
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let y: Vec<f64> = (0..20).map(|i| ((3 * i) % 20) as f64).collect();
        check(&x, &y, 0.3368421052631579, 0.039762136700688226, KendallMethod::Exact);
        // -0.0 and 0.0 tie
        check(
            &[-0.0, 0.0, 1.0, 2.0],
            &[1.0, 2.0, 3.0, 0.5],
            -0.18257418583505539,
            0.7179816667337766,
            KendallMethod::Asymptotic,
        );
        // infinities are ranks
        check(
            &[f64::NEG_INFINITY, 0.0, f64::INFINITY, 5.0],
            &[1.0, 2.0, 4.0, 3.0],
            1.0,
            0.08333333333333333,
            KendallMethod::Exact,
        );
        // scipy gives tau = p = nan for: empty input, n = 1, a constant x (or y)
        for (x, y) in [
            (&[][..], &[][..]),
            (&[1.0][..], &[2.0][..]),
            (&[1.0, 1.0, 1.0][..], &[1.0, 2.0, 3.0][..]),
        ] {
            let r = kendall_tau_b(x, y).unwrap();
            assert!(r.tau.is_nan() && r.p_value.is_nan() && r.method == KendallMethod::Undefined);
            let r = kendall_tau_b(y, x).unwrap();
            assert!(r.tau.is_nan() && r.p_value.is_nan());
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(
            kendall_tau_b(&[1.0], &[1.0, 2.0]),
            Err(MetricError::LengthMismatch { .. })
        ));
        assert_eq!(
            kendall_tau_b(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(MetricError::NanInput { which: "x", index: 1 })
        );
        assert_eq!(
            kendall_tau_b(&[1.0, 2.0], &[1.0, f64::NAN]),
            Err(MetricError::NanInput { which: "y", index: 1 })
        );
    }

    #[test]
    fn factorial_is_correctly_rounded() {
        assert_eq!(factorial_f64(0), 1.0);
        assert_eq!(factorial_f64(20), 2432902008176640000.0);
        // float(math.factorial(25)), float(math.factorial(170)) from CPython
        assert_eq!(factorial_f64(25), 1.5511210043330986e25);
        assert_eq!(factorial_f64(23), 2.585201673888498e22);
        assert_eq!(factorial_f64(100), 9.332621544394415e157);
        assert_eq!(factorial_f64(170), 7.257415615307999e306);
    }

    #[test]
    fn signature_format() {
        assert_eq!(
            signature(),
            format!(
                "kendall-tau-b|alt:two-sided|method:auto|impl:prompt2model-rs-{}|ref:scipy-1.17.1",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

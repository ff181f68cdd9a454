//! Exact inner-product search over a row-major `f32` matrix.
//!
//! The dataset index has 2,494 descriptions × 384 dimensions (about 1M multiply-adds per query):
//! a plain loop is exact and takes well under a millisecond, so no approximate index is needed.

/// Inner products of `query` with every row of `matrix` (`rows × dim`, row-major).
pub fn inner_products(matrix: &[f32], dim: usize, query: &[f32]) -> Vec<f64> {
    assert_eq!(query.len(), dim, "query dimension");
    assert_eq!(matrix.len() % dim.max(1), 0, "matrix is rows × dim");
    matrix
        .chunks_exact(dim)
        .map(|row| row.iter().zip(query).map(|(a, b)| (*a as f64) * (*b as f64)).sum())
        .collect()
}

/// The `k` rows with the largest inner product, best first (ties by row index).
pub fn top_k(matrix: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<(usize, f64)> {
    let scores = inner_products(matrix, dim, query);
    super::bm25::top_k_of(&scores, k, |_| true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exact_top_k() {
        let m = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let top = super::top_k(&m, 2, &[0.6, 0.8], 2);
        assert_eq!(top[0].0, 2);
        assert!((top[0].1 - 1.0).abs() < 1e-6);
        assert_eq!(top[1].0, 1);
    }
}

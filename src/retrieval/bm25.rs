//! Okapi BM25 over an inverted index.
//!
//! score(q, d) = Σ_{t ∈ q} idf(t) · tf(t,d)·(k1+1) / (tf(t,d) + k1·(1 − b + b·|d|/avgdl))
//!
//! Query terms are summed with repetition (a term twice in the query counts twice), as both
//! rank_bm25 and retriv do. Two idf variants:
//! - [`Idf::Lucene`] (default): ln(1 + (N − df + 0.5)/(df + 0.5)), never negative; what retriv (the
//!   Python reference's BM25) and Lucene use.
//! - [`Idf::OkapiEpsilon`]: ln((N − df + 0.5)/(df + 0.5)), with negative values replaced by
//!   ε · mean idf; rank_bm25's `BM25Okapi`, kept for the differential tests and benchmarks.
//!
//! The index stores raw term frequencies and document lengths, so k1, b and the idf variant are
//! query-time settings. Postings are kept in one CSR layout (offsets, doc ids, tfs): a query
//! touches only the postings of its terms and accumulates into one dense score vector.

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::binfile::{Reader, Writer};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Idf {
    Lucene,
    OkapiEpsilon(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    pub k1: f64,
    pub b: f64,
    pub idf: Idf,
}

impl Default for Bm25Params {
    /// k1 = 1.2, b = 0.75, Lucene idf (retriv's defaults).
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75, idf: Idf::Lucene }
    }
}

pub struct Bm25Index {
    terms: Vec<String>,
    term_ids: HashMap<String, u32>,
    /// `offsets[t]..offsets[t+1]` are term t's postings.
    offsets: Vec<u32>,
    post_docs: Vec<u32>,
    post_tfs: Vec<u32>,
    doc_lens: Vec<u32>,
    avgdl: f64,
    /// rank_bm25's mean idf over the vocabulary (for [`Idf::OkapiEpsilon`]).
    okapi_mean_idf: f64,
}

impl Bm25Index {
    /// Index already analysed documents (one term list per document).
    pub fn build<S: AsRef<str>>(docs: &[Vec<S>]) -> Self {
        let mut term_ids: HashMap<String, u32> = HashMap::new();
        let mut terms: Vec<String> = Vec::new();
        let mut per_doc: Vec<Vec<(u32, u32)>> = Vec::with_capacity(docs.len());
        let mut doc_lens = Vec::with_capacity(docs.len());
        let mut df: Vec<u32> = Vec::new();
        for doc in docs {
            let mut ids: Vec<u32> = doc
                .iter()
                .map(|t| {
                    let t = t.as_ref();
                    match term_ids.get(t) {
                        Some(&id) => id,
                        None => {
                            let id = terms.len() as u32;
                            terms.push(t.to_string());
                            term_ids.insert(t.to_string(), id);
                            df.push(0);
                            id
                        }
                    }
                })
                .collect();
            doc_lens.push(ids.len() as u32);
            ids.sort_unstable();
            let mut counts: Vec<(u32, u32)> = Vec::new();
            for id in ids {
                match counts.last_mut() {
                    Some((last, n)) if *last == id => *n += 1,
                    _ => counts.push((id, 1)),
                }
            }
            for (id, _) in &counts {
                df[*id as usize] += 1;
            }
            per_doc.push(counts);
        }
        let mut offsets = Vec::with_capacity(terms.len() + 1);
        let mut acc = 0u32;
        offsets.push(0);
        for d in &df {
            acc += d;
            offsets.push(acc);
        }
        let total = acc as usize;
        let mut post_docs = vec![0u32; total];
        let mut post_tfs = vec![0u32; total];
        let mut cursor: Vec<u32> = offsets[..terms.len()].to_vec();
        // Documents in increasing order, so each term's postings are sorted by doc id.
        for (doc, counts) in per_doc.iter().enumerate() {
            for &(id, tf) in counts {
                let at = cursor[id as usize] as usize;
                post_docs[at] = doc as u32;
                post_tfs[at] = tf;
                cursor[id as usize] += 1;
            }
        }
        let mut index = Bm25Index {
            terms,
            term_ids,
            offsets,
            post_docs,
            post_tfs,
            doc_lens,
            avgdl: 0.0,
            okapi_mean_idf: 0.0,
        };
        index.finish();
        index
    }

    fn finish(&mut self) {
        let n = self.doc_lens.len();
        let total: u64 = self.doc_lens.iter().map(|&l| l as u64).sum();
        self.avgdl = if n == 0 { 0.0 } else { total as f64 / n as f64 };
        let v = self.terms.len();
        self.okapi_mean_idf = if v == 0 {
            0.0
        } else {
            (0..v).map(|t| self.okapi_raw_idf(t as u32)).sum::<f64>() / v as f64
        };
    }

    pub fn n_docs(&self) -> usize {
        self.doc_lens.len()
    }

    pub fn n_terms(&self) -> usize {
        self.terms.len()
    }

    pub fn n_postings(&self) -> usize {
        self.post_docs.len()
    }

    pub fn avgdl(&self) -> f64 {
        self.avgdl
    }

    pub fn doc_len(&self, doc: usize) -> u32 {
        self.doc_lens[doc]
    }

    pub fn term_id(&self, term: &str) -> Option<u32> {
        self.term_ids.get(term).copied()
    }

    /// Number of documents containing the term.
    pub fn df(&self, term: &str) -> u32 {
        self.term_id(term)
            .map(|t| self.offsets[t as usize + 1] - self.offsets[t as usize])
            .unwrap_or(0)
    }

    /// Frequency of `term` in `doc` (binary search in the term's postings).
    pub fn tf(&self, term: &str, doc: usize) -> u32 {
        let Some(t) = self.term_id(term) else { return 0 };
        let (lo, hi) = (self.offsets[t as usize] as usize, self.offsets[t as usize + 1] as usize);
        match self.post_docs[lo..hi].binary_search(&(doc as u32)) {
            Ok(i) => self.post_tfs[lo + i],
            Err(_) => 0,
        }
    }

    fn okapi_raw_idf(&self, t: u32) -> f64 {
        let n = self.n_docs() as f64;
        let df = (self.offsets[t as usize + 1] - self.offsets[t as usize]) as f64;
        (n - df + 0.5).ln() - (df + 0.5).ln()
    }

    /// idf of a term under `idf` (0 for a term not in the index).
    pub fn idf(&self, term: &str, idf: Idf) -> f64 {
        let Some(t) = self.term_id(term) else { return 0.0 };
        match idf {
            Idf::Lucene => {
                let n = self.n_docs() as f64;
                let df = (self.offsets[t as usize + 1] - self.offsets[t as usize]) as f64;
                (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
            }
            Idf::OkapiEpsilon(eps) => {
                let raw = self.okapi_raw_idf(t);
                if raw < 0.0 {
                    eps * self.okapi_mean_idf
                } else {
                    raw
                }
            }
        }
    }

    /// BM25 scores of every document for an analysed query.
    pub fn scores<S: AsRef<str>>(&self, query: &[S], params: &Bm25Params) -> Vec<f64> {
        let mut scores = vec![0.0f64; self.n_docs()];
        if self.n_docs() == 0 {
            return scores;
        }
        let (k1, b) = (params.k1, params.b);
        let norm: Vec<f64> = self
            .doc_lens
            .iter()
            .map(|&l| k1 * (1.0 - b + b * l as f64 / self.avgdl.max(f64::MIN_POSITIVE)))
            .collect();
        for term in query {
            let Some(t) = self.term_id(term.as_ref()) else { continue };
            let idf = self.idf(term.as_ref(), params.idf);
            let (lo, hi) =
                (self.offsets[t as usize] as usize, self.offsets[t as usize + 1] as usize);
            for i in lo..hi {
                let d = self.post_docs[i] as usize;
                let tf = self.post_tfs[i] as f64;
                scores[d] += idf * tf * (k1 + 1.0) / (tf + norm[d]);
            }
        }
        scores
    }

    /// The `k` best documents with a positive score among those `keep` accepts, best first (ties:
    /// lower document index first, so results are deterministic).
    pub fn top_k<S: AsRef<str>>(
        &self,
        query: &[S],
        params: &Bm25Params,
        k: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<(usize, f64)> {
        let scores = self.scores(query, params);
        top_k_of(&scores, k, |d| scores[d] > 0.0 && keep(d))
    }

    pub fn write(&self, w: &mut Writer) {
        w.u64(self.terms.len() as u64);
        for t in &self.terms {
            w.str(t);
        }
        w.u32s(&self.offsets);
        w.u32s(&self.post_docs);
        w.u32s(&self.post_tfs);
        w.u32s(&self.doc_lens);
    }

    pub fn read(r: &mut Reader) -> Result<Self> {
        let v = r.u64()? as usize;
        let mut terms = Vec::with_capacity(v);
        for _ in 0..v {
            terms.push(r.str()?);
        }
        let offsets = r.u32s()?;
        let post_docs = r.u32s()?;
        let post_tfs = r.u32s()?;
        let doc_lens = r.u32s()?;
        if offsets.len() != v + 1
            || post_docs.len() != post_tfs.len()
            || offsets.last().copied() != Some(post_docs.len() as u32)
        {
            bail!(
                "inconsistent BM25 index sections (vocabulary {v}, offsets {}, postings {})",
                offsets.len(),
                post_docs.len()
            );
        }
        if post_docs.iter().any(|&d| d as usize >= doc_lens.len()) {
            bail!("a BM25 posting points past the last document");
        }
        let term_ids = terms.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut index = Bm25Index {
            terms,
            term_ids,
            offsets,
            post_docs,
            post_tfs,
            doc_lens,
            avgdl: 0.0,
            okapi_mean_idf: 0.0,
        };
        index.finish();
        Ok(index)
    }
}

/// Indices of the `k` largest values among those `keep` accepts, best first; ties by index.
pub fn top_k_of(scores: &[f64], k: usize, keep: impl Fn(usize) -> bool) -> Vec<(usize, f64)> {
    let mut cand: Vec<(usize, f64)> =
        (0..scores.len()).filter(|&d| keep(d)).map(|d| (d, scores[d])).collect();
    let order = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k == 0 {
        return Vec::new();
    }
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, order);
        cand.truncate(k);
    }
    cand.sort_by(order);
    cand
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<Vec<&'static str>> {
        vec![
            vec!["cat", "sat", "mat"],
            vec!["dog", "sat", "log", "dog"],
            vec!["cat", "dog"],
            vec!["bird"],
        ]
    }

    #[test]
    fn hand_computed_lucene_scores() {
        let index = Bm25Index::build(&docs());
        assert_eq!((index.n_docs(), index.n_terms(), index.n_postings()), (4, 6, 9));
        assert!((index.avgdl() - 2.5).abs() < 1e-12);
        let p = Bm25Params::default();
        // "dog": N = 4, df = 2 → idf = ln(1 + 2.5/2.5) = ln 2.
        // doc 1: tf 2, |d| 4: norm = 1.2·(0.25 + 0.75·4/2.5) = 1.74; 2·2.2/(2 + 1.74) = 1.176470588…
        // doc 2: tf 1, |d| 2: norm = 1.2·(0.25 + 0.75·0.8) = 1.02; 2.2/2.02 = 1.089108910…
        let s = index.scores(&["dog"], &p);
        let ln2 = 2f64.ln();
        assert!((s[1] - ln2 * 4.4 / 3.74).abs() < 1e-12, "{}", s[1]);
        assert!((s[2] - ln2 * 2.2 / 2.02).abs() < 1e-12, "{}", s[2]);
        assert_eq!((s[0], s[3]), (0.0, 0.0));
        // "bird": df 1 → idf = ln(1 + 3.5/1.5); doc 3 has |d| = 1: norm = 1.2·(0.25 + 0.3) = 0.66.
        let s = index.scores(&["bird", "unknown"], &p);
        let want = (1.0f64 + 3.5 / 1.5).ln() * 2.2 / 1.66;
        assert!((s[3] - want).abs() < 1e-12, "{}", s[3]);
        // A repeated query term counts twice.
        let twice = index.scores(&["bird", "bird"], &p);
        assert!((twice[3] - 2.0 * want).abs() < 1e-12);
    }

    #[test]
    fn okapi_idf_replaces_negative_values_with_epsilon_mean() {
        let index = Bm25Index::build(&docs());
        // df 2 of 4: ln(2.5/2.5) = 0 (not negative: kept). df 1: ln(3.5/1.5).
        assert_eq!(index.idf("dog", Idf::OkapiEpsilon(0.25)), 0.0);
        let three = Bm25Index::build(&[vec!["a", "b"], vec!["a"], vec!["a", "c"]]);
        // "a" in all 3: ln(0.5/3.5) < 0 → 0.25 · mean(ln(0.5/3.5), ln(2.5/1.5), ln(2.5/1.5)).
        let mean = ((0.5f64 / 3.5).ln() + 2.0 * (2.5f64 / 1.5).ln()) / 3.0;
        assert!((three.idf("a", Idf::OkapiEpsilon(0.25)) - 0.25 * mean).abs() < 1e-12);
    }

    #[test]
    fn top_k_orders_by_score_then_index_and_filters() {
        let index = Bm25Index::build(&docs());
        let p = Bm25Params::default();
        let top = index.top_k(&["dog", "cat"], &p, 10, |_| true);
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [2, 1, 0],
            "doc 3 scores 0 and is left out"
        );
        let top = index.top_k(&["dog", "cat"], &p, 1, |d| d != 2);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, 1);
        assert_eq!(
            top_k_of(&[1.0, 3.0, 3.0, 2.0], 3, |_| true).iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn serialises_and_reads_back() {
        let index = Bm25Index::build(&docs());
        let mut w = Writer::default();
        index.write(&mut w);
        let back = Bm25Index::read(&mut Reader::new(&w.buf, "mem")).unwrap();
        let p = Bm25Params::default();
        assert_eq!(index.scores(&["dog", "mat"], &p), back.scores(&["dog", "mat"], &p));
        assert_eq!(back.tf("dog", 1), 2);
        assert_eq!(back.tf("dog", 0), 0);
        assert_eq!(back.df("sat"), 2);
    }
}

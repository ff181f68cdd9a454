//! Retrieval building blocks shared by the two retrievers of the pipeline:
//!
//! - [`text`]: the analyzer BM25 sees (lowercase, punctuation removal, English stop words, Snowball
//!   stemming), set up like the Python reference's retriv `SparseRetriever` defaults.
//! - [`bm25`]: an in-memory inverted index with Okapi BM25 scoring (Lucene/retriv idf by default,
//!   rank_bm25's idf as an option for parity checks), serialisable to a compact binary file.
//! - [`dense`]: exact inner-product top-k over a row-major embedding matrix.
//! - [`binfile`]: the little-endian reader/writer both on-disk caches use (written to a temporary
//!   file and renamed into place, so a killed build never leaves half an index behind).

pub mod binfile;
pub mod bm25;
pub mod dense;
pub mod text;

//! Small helpers every stage uses, each written once: atomic file writes and hashing ([`fs`]),
//! the seeded random numbers behind every reproducible choice ([`rng`]), the lenient scan for JSON
//! in model answers ([`json_scan`]), short excerpts of text for messages ([`text`]), the
//! process's peak memory by phase ([`mem`]) and one process per folder ([`lock`]).

pub mod fs;
pub mod json_scan;
pub mod lock;
pub mod mem;
pub use p2m_metrics::rng;
pub mod text;

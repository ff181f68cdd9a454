//! Small helpers every stage uses, each written once: atomic file writes and hashing ([`fs`]),
//! the seeded random numbers behind every reproducible choice ([`rng`]), the lenient scan for JSON
//! in model answers ([`json_scan`]) and canonical JSON for hashing ([`json`]), short excerpts of
//! text for messages ([`text`]), the process's peak memory by phase ([`mem`]), the one retry
//! policy of the HTTP clients ([`http`]), async code from synchronous callers ([`runtime`]),
//! progress shown on a terminal or in a log ([`progress`]) and one process per folder ([`lock`]).

pub mod fs;
pub mod http;
pub mod json;
pub mod json_scan;
pub mod lock;
pub mod mem;
pub mod progress;
pub use p2m_metrics::rng;
pub mod runtime;
pub mod text;

//! Combo Packet engine: classify encrypted traffic from contexts of N consecutive packets of one
//! flow with a CNN with spatial and channel attention.
//!
//! The packet path (a [`engine::Worker`] per capture thread) parses, pre-processes and gathers
//! packets into per-flow contexts, and pushes each context into a lock-free ring. One inference
//! thread per [`engine::Engine`] drains the rings, batches contexts and runs the model. Results
//! come back through a second ring per worker and are polled by the caller as records.

pub mod config;
pub mod cpu_allocator;
pub mod engine;
pub mod flow;
pub mod model;
pub mod parse;
pub mod preprocess;

pub use config::EngineConfig;
pub use engine::{Engine, Record, Worker};

/// Most classes a record reports, best first.
pub const MAX_TOP_K: usize = 5;

/// Everything that can go wrong outside the per-packet path (which counts, never fails).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("model: {0}")]
    Model(String),
    #[error("model and configuration disagree: {0}")]
    Mismatch(String),
    #[error("inference thread: {0}")]
    Inference(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

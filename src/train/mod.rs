//! Training: knobs and schedule, checkpoints, the loop.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, TrainSummary};

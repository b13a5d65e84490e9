//! Training: the learning-rate schedule, metrics, the loop (knobs: [`crate::config::train`];
//! checkpoints: [`crate::checkpoint`]; where the model comes from: [`crate::load`]).

pub mod config;
pub mod metrics;
pub mod ranks;
pub mod run_dir;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{train, TrainSummary};

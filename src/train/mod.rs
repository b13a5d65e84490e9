//! Training: knobs and schedule, checkpoints, the loop.

pub mod config;

//! nanogpt-rs: nanoGPT rebuilt in Rust. See README.md and DESIGN.md.

pub mod bench;
pub mod config;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod perf;
pub mod rng;

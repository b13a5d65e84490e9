//! nanogpt-rs: nanoGPT rebuilt in Rust. See README.md and DESIGN.md.

pub mod config;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod rng;

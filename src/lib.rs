//! nanogpt-rs: nanoGPT rebuilt in Rust. See README.md and DESIGN.md.

pub mod arithmetic;
pub mod atomic_file;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod download;
pub mod engine;
pub mod export;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod load;
pub mod model;
pub mod optim;
pub mod perf;
pub mod plot;
pub mod rng;
pub mod sample;
pub mod serve;
pub mod tokenizer;
pub mod train;

//! The GPT model: parameter table, forward/backward, weight I/O and KV-cache inference.

pub mod gpt;
pub mod inference;
pub mod params;
pub mod pretrained;
pub mod weights;

pub use gpt::{Gpt, Mode};
pub use params::ParamTable;

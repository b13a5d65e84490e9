//! Data: preparing datasets, token files (nanoGPT's raw uint16 and llm.c's shards), batches.

pub mod batch;
pub mod prepare;
pub mod tokens;
pub mod writer;

pub use prepare::{prepare_shakespeare_bpe, prepare_shakespeare_char, PrepareSummary};
pub use tokens::{TokenFile, TokenFormat};
pub use writer::write_tokens;

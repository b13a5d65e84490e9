//! Data: preparing datasets, token files (nanoGPT's raw uint16 and llm.c's shards), batches.

pub mod batch;
pub mod corpus;
pub mod dataset;
pub mod documents;
pub mod hub;
mod manifest;
pub mod parquet;
pub mod pipeline;
pub mod prepare;
pub mod split;
pub mod stream;
pub mod text;
pub mod tokens;
pub mod writer;

pub use documents::DocumentOptions;
pub use prepare::{
    prepare_shakespeare_bpe, prepare_shakespeare_char, prepare_shakespeare_llama, PrepareSummary,
};
pub use split::TokenSplit;
pub use stream::{prepare_stream, StreamPrepareOptions, StreamPrepareSummary, StreamSource};
pub use text::{prepare_text, TextPrepareOptions, TextPrepareSummary, TextTokenizer};
pub use tokens::{TokenFile, TokenFormat};
pub use writer::write_tokens;

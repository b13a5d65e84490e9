//! The Llama-2 family on the host: its config, one canonical form of its parameters, the
//! files it comes in (llama2.c v0/v1/v2, Hugging Face), its tokenizer (llama2.c's
//! `tokenizer.bin`, sentencepiece's `tokenizer.model`) and run.c's sampler. No engine runs
//! these models yet.

pub mod config;
pub mod llama2c;
pub mod run_c;
pub mod tokenizer;
pub mod weights;

pub use config::LlamaConfig;
pub use llama2c::{read_llama2c, write_llama2c_v0, write_llama2c_v1, Llama2cFormat};
pub use weights::{load_hf_dir, save_hf_dir, Llama, LlamaTable};

//! GPT-2's BPE for many threads at once: one tokenizer per pool thread.
//!
//! tiktoken-rs keeps 128 clones of its pre-tokenizer regex so that threads do not share one,
//! but fancy-regex (0.19) clones share a single program and its scratch pool, so threads
//! encoding with one `CoreBPE` still contend on that pool: measured on 2 cores, 2 threads
//! spent ~30% more CPU than 1 for the same text. A tokenizer per thread has its own regex and
//! none of that. Each thread builds its copy on first use (a few hundred ms, in parallel;
//! some MB each); the tokens are the same as [`Gpt2Bpe`]'s, which is built the same way.

use crate::tokenizer::Gpt2Bpe;
use anyhow::{anyhow, Result};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

pub struct Gpt2PerThread {
    /// For threads outside the pool it was made in.
    shared: Gpt2Bpe,
    /// Indexed by `rayon::current_thread_index()`.
    own: Vec<OnceLock<CoreBPE>>,
}

impl Gpt2PerThread {
    /// For the current rayon pool (call inside it).
    pub fn new() -> Result<Gpt2PerThread> {
        Ok(Gpt2PerThread {
            shared: Gpt2Bpe::new()?,
            own: (0..rayon::current_num_threads())
                .map(|_| OnceLock::new())
                .collect(),
        })
    }

    /// tiktoken's `encode_ordinary` (as [`Gpt2Bpe::encode_ordinary`]).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        let Some(cell) = rayon::current_thread_index().and_then(|i| self.own.get(i)) else {
            return Ok(self.shared.encode_ordinary(text));
        };
        if let Some(bpe) = cell.get() {
            return Ok(bpe.encode_ordinary(text));
        }
        let built = tiktoken_rs::r50k_base()
            .map_err(|e| anyhow!("cannot build the GPT-2 tokenizer from tiktoken-rs: {e}"))?;
        // Only this thread uses this cell, so it is still empty.
        let bpe = cell.get_or_init(|| built);
        Ok(bpe.encode_ordinary(text))
    }
}

//! The model side of generation: a KV cache over a batch of rows that all hold the same number
//! of tokens, with nanoGPT's context cropping.
//!
//! nanoGPT feeds the model the last `block_size` tokens of the sequence at every step. With a
//! cache that means: the prompt is cropped to its last `block_size` tokens before the first pass;
//! while the context fits, each new token is appended to the cache (one position per step); once
//! the sequence is longer than `block_size`, every step recomputes the cache from the last
//! `block_size` tokens (positions shift, so cached keys/values cannot be reused). Past the
//! context window generation therefore costs a full `block_size` forward per token, as
//! nanoGPT's own loop does, and gives the same tokens.

use crate::engine::{Engine, KvCache};
use anyhow::{bail, Result};

pub struct Context<'m> {
    model: &'m dyn Engine,
    cache: KvCache,
    logits: Vec<f32>,
    /// Full-window recomputations done so far (after the context filled up).
    pub recomputes: usize,
}

impl<'m> Context<'m> {
    /// Runs `prompt` (its last `block_size` tokens) through the model once and copies the result
    /// into `rows` identical rows. `max_new_tokens` sizes the cache.
    pub fn start(
        model: &'m dyn Engine,
        prompt: &[u32],
        rows: usize,
        max_new_tokens: usize,
    ) -> Result<Context<'m>> {
        let cfg = model.config();
        if prompt.is_empty() {
            bail!("the prompt has no tokens: give at least one (e.g. the end-of-text token)");
        }
        if rows == 0 {
            bail!("generation needs at least one row");
        }
        let block = cfg.block_size;
        let window = &prompt[prompt.len().saturating_sub(block)..];
        let capacity = (window.len() + max_new_tokens).min(block);
        let mut cache = model.kv_cache(1, capacity);
        let vp = cfg.padded_vocab_size();
        let mut logits = vec![0.0f32; vp];
        model.forward_cached_all(&mut cache, window, window.len(), &mut logits)?;
        if rows > 1 {
            model.reorder_cache(&mut cache, &vec![0; rows])?;
            logits = logits.repeat(rows);
        }
        Ok(Context {
            model,
            cache,
            logits,
            recomputes: 0,
        })
    }

    pub fn rows(&self) -> usize {
        self.cache.rows()
    }

    /// The logits of row `r`'s next token over the real vocabulary (padding excluded).
    pub fn logits(&self, r: usize) -> &[f32] {
        let cfg = self.model.config();
        let vp = cfg.padded_vocab_size();
        &self.logits[r * vp..r * vp + cfg.vocab_size]
    }

    /// New row `i` is old row `rows[i]` (see [`Engine::reorder_cache`]). The logits are stale until
    /// the next [`Context::advance`].
    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        self.model.reorder_cache(&mut self.cache, rows)?;
        let vp = self.model.config().padded_vocab_size();
        self.logits.resize(rows.len() * vp, 0.0);
        Ok(())
    }

    /// Feeds each row's newest token: `seqs[r]` is row r's whole sequence (prompt + generated,
    /// uncropped), ending with the token to feed. All rows must have the same length.
    pub fn advance(&mut self, seqs: &[&[u32]]) -> Result<()> {
        let b = self.cache.rows();
        if seqs.len() != b {
            bail!("{} sequences for {b} rows", seqs.len());
        }
        let len = seqs.first().map_or(0, |s| s.len());
        if seqs.iter().any(|s| s.len() != len) || len == 0 {
            bail!("all rows must hold the same, non-zero number of tokens");
        }
        let block = self.model.config().block_size;
        if self.cache.len(0) < self.cache.capacity() {
            let next: Vec<u32> = seqs.iter().map(|s| s[len - 1]).collect();
            return self
                .model
                .forward_cached_all(&mut self.cache, &next, 1, &mut self.logits);
        }
        // The cache is full: recompute it from the last `block_size` tokens of each row.
        let n = len.min(block).min(self.cache.capacity());
        let tokens: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s[len - n..].iter().copied())
            .collect();
        self.cache.clear();
        self.recomputes += 1;
        self.model
            .forward_cached_all(&mut self.cache, &tokens, n, &mut self.logits)
    }
}

//! The model side of generation: a KV cache over a batch of rows, each holding its own number
//! of tokens (the loop guard takes tokens back from single rows), and what happens once a
//! sequence outgrows the model's context of `block_size` tokens.
//!
//! The prompt is cropped to its last `block_size` tokens before the first pass; while the
//! context fits, each new token is appended to its row of the cache. Past `block_size`
//! (`--context`):
//! - `crop` (the default): nanoGPT's semantics exactly. nanoGPT feeds the model the last
//!   `block_size` tokens at every step; a learned position embedding means every cached key and
//!   value changes when the window moves by one token, so no cache can be reused: each step
//!   re-prefills the last `block_size` tokens. The tokens equal nanoGPT's uncached loop (tested
//!   against it); past the window each token costs a full `block_size` forward pass.
//! - `slide`: when a row is full, it is re-prefilled with its last `block_size / 2` tokens and
//!   then decoded with the cache again, one position per step, until it is full once more. A
//!   token then sees between `block_size / 2` and `block_size` tokens back (not always the last
//!   `block_size`), so the text differs from nanoGPT's, for one prefill of half a block every
//!   `block_size / 2` tokens instead of a full forward pass per token.
//!
//! A row rewound before the start of its window (a backtrack past a re-prefill) is re-prefilled
//! the same way on the next step.

use crate::config::knobs::Knob;
use crate::engine::{Engine, Feed, KvCache};
use anyhow::{bail, Result};

/// How generation continues past `block_size` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextMode {
    Crop,
    Slide,
}

impl Knob for ContextMode {
    fn set_text(&mut self, text: &str) -> Result<(), String> {
        *self = match text.trim() {
            "crop" => ContextMode::Crop,
            "slide" => ContextMode::Slide,
            _ => return Err("expected crop or slide".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        match self {
            ContextMode::Crop => "crop",
            ContextMode::Slide => "slide",
        }
        .into()
    }
}

pub struct Context<'m> {
    model: &'m dyn Engine,
    cache: KvCache,
    logits: Vec<f32>,
    mode: ContextMode,
    /// Row r's cache holds tokens `offsets[r]..offsets[r] + cache.len(r)` of its sequence.
    offsets: Vec<usize>,
    /// Row re-prefills done so far (after the context filled up, or after a deep rewind).
    pub recomputes: usize,
}

impl<'m> Context<'m> {
    /// Runs `prompt` (its last `block_size` tokens) through the model once and copies the result
    /// into `rows` identical rows. `max_new_tokens` sizes the cache. The mode is `crop` until
    /// [`Context::with_mode`] says otherwise.
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
            mode: ContextMode::Crop,
            offsets: vec![prompt.len() - window.len(); rows],
            recomputes: 0,
        })
    }

    pub fn with_mode(mut self, mode: ContextMode) -> Self {
        self.mode = mode;
        self
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
        self.offsets = rows.iter().map(|&r| self.offsets[r]).collect();
        let vp = self.model.config().padded_vocab_size();
        self.logits.resize(rows.len() * vp, 0.0);
        Ok(())
    }

    /// Row `r`'s sequence is now its first `keep` tokens (it was longer): the next
    /// [`Context::advance`] feeds token `keep - 1` again, from a cache cut back to before it.
    pub fn rewind(&mut self, r: usize, keep: usize) {
        match keep.checked_sub(1 + self.offsets[r]) {
            Some(held) => self.cache.truncate(r, held),
            // Back before the window's start: the next step re-prefills the row.
            None => self.cache.free(r),
        }
    }

    /// Feeds each row's newest token: `seqs[r]` is row r's whole sequence (prompt + generated,
    /// uncropped), ending with the token to feed. Rows may hold different numbers of tokens.
    pub fn advance(&mut self, seqs: &[&[u32]]) -> Result<()> {
        let b = self.cache.rows();
        if seqs.len() != b {
            bail!("{} sequences for {b} rows", seqs.len());
        }
        if seqs.iter().any(|s| s.is_empty()) {
            bail!("every row must hold at least one token");
        }
        let cap = self.cache.capacity();
        let mut feeds = Vec::with_capacity(b);
        for (row, s) in seqs.iter().enumerate() {
            let held = self.cache.len(row);
            let end = self.offsets[row] + held;
            if held > 0 && end >= s.len() {
                bail!(
                    "cache row {row} holds {end} tokens of a {}-token sequence: rewind it first",
                    s.len()
                );
            }
            // Crop appends only while the cache holds exactly the last `cap` tokens (after a
            // rewind it may hold a window that starts too late); slide appends while the row's
            // window has room.
            let appendable = held > 0
                && match self.mode {
                    ContextMode::Crop => self.offsets[row] == s.len().saturating_sub(cap),
                    ContextMode::Slide => s.len() - self.offsets[row] <= cap,
                };
            let first = if appendable {
                end
            } else {
                let keep = match self.mode {
                    ContextMode::Slide if s.len() > cap => (cap / 2).max(1),
                    _ => s.len().min(cap),
                };
                self.cache.free(row);
                self.offsets[row] = s.len() - keep;
                self.recomputes += 1;
                s.len() - keep
            };
            feeds.push(Feed {
                row,
                tokens: &s[first..],
            });
        }
        let vp = self.model.config().padded_vocab_size();
        self.logits.resize(b * vp, 0.0);
        self.model
            .forward_cached(&mut self.cache, &feeds, &mut self.logits)
    }
}

//! Random training batches, as nanoGPT's `get_batch`: `batch_size` offsets drawn uniformly from
//! `[0, len - block_size)`, inputs `data[i..i+T]`, targets `data[i+1..i+T+1]`.

use super::tokens::TokenFile;
use crate::rng::Rng;
use anyhow::{bail, Result};

/// Fills `x` (inputs) and `y` (targets), each `batch_size * block_size` long, row-major.
/// The buffers are resized, not reallocated once they are big enough. Offsets are drawn in
/// row order from `rng`, so the same seed gives the same batches.
pub fn sample_batch(
    tokens: &[u16],
    rng: &mut Rng,
    batch_size: usize,
    block_size: usize,
    x: &mut Vec<u32>,
    y: &mut Vec<i32>,
) -> Result<()> {
    sample_windows(
        tokens.len(),
        rng,
        batch_size,
        block_size,
        x,
        y,
        uniform_start(tokens.len(), block_size),
        |i, n| tokens[i..i + n].iter().copied(),
    )
}

/// nanoGPT's draw of a window's first token: uniform over `[0, len - block_size)`.
pub(crate) fn uniform_start(len: usize, block_size: usize) -> impl Fn(&mut Rng) -> usize {
    let range = len.saturating_sub(block_size) as u64;
    move |rng| rng.below(range) as usize
}

/// [`sample_batch`] over a sequence of `len` tokens that `window(start, n)` reads (`n` tokens
/// from `start`), e.g. one spread over several shards, each row's first token drawn by
/// `draw_start` (which must leave `block_size + 1` tokens from it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_windows<W: Iterator<Item = u16>>(
    len: usize,
    rng: &mut Rng,
    batch_size: usize,
    block_size: usize,
    x: &mut Vec<u32>,
    y: &mut Vec<i32>,
    draw_start: impl Fn(&mut Rng) -> usize,
    window: impl Fn(usize, usize) -> W,
) -> Result<()> {
    if block_size == 0 || batch_size == 0 {
        bail!("batch_size and block_size must be at least 1");
    }
    if len <= block_size {
        bail!(
            "{len} tokens is too few for block_size {block_size} (need at least {})",
            block_size + 1
        );
    }
    let n = batch_size * block_size;
    x.resize(n, 0);
    y.resize(n, 0);
    for (xr, yr) in x
        .chunks_exact_mut(block_size)
        .zip(y.chunks_exact_mut(block_size))
    {
        let i = draw_start(rng);
        // Token k of the window is input k and target k - 1.
        for (k, t) in window(i, block_size + 1).enumerate() {
            if k < block_size {
                xr[k] = t as u32;
            }
            if k > 0 {
                yr[k - 1] = t as i32;
            }
        }
    }
    Ok(())
}

impl TokenFile {
    /// [`sample_batch`] from this file, into the caller's buffers (no allocation per batch).
    pub fn get_batch_into(
        &self,
        rng: &mut Rng,
        batch_size: usize,
        block_size: usize,
        x: &mut Vec<u32>,
        y: &mut Vec<i32>,
    ) -> Result<()> {
        self.require_len(block_size)?;
        sample_batch(self.tokens(), rng, batch_size, block_size, x, y)
    }

    /// [`sample_batch`] from this file, into new buffers: `(x, y)`.
    pub fn get_batch(
        &self,
        rng: &mut Rng,
        batch_size: usize,
        block_size: usize,
    ) -> Result<(Vec<u32>, Vec<i32>)> {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        self.get_batch_into(rng, batch_size, block_size, &mut x, &mut y)?;
        Ok((x, y))
    }
}

/// Keeps only the targets that lie in a line's completion: after `sep` (e.g. `=`) up to and
/// including the end-of-line token; every other target becomes -1 (ignored by the loss). A row
/// that starts mid-line is masked until its first `sep` or end of line, since what came before
/// the window is not known. `x` and `y` are rows of `block_size` tokens as `sample_batch` makes.
pub fn mask_to_completions(x: &[u32], y: &mut [i32], block_size: usize, sep: u32, eol: u32) {
    for (xr, yr) in x
        .chunks_exact(block_size)
        .zip(y.chunks_exact_mut(block_size))
    {
        let mut in_completion = false;
        for (&t, target) in xr.iter().zip(yr.iter_mut()) {
            if t == eol {
                in_completion = false;
            } else if t == sep {
                in_completion = true;
            }
            if !in_completion {
                *target = -1;
            }
        }
    }
}

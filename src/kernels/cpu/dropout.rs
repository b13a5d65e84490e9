//! Inverted dropout with masks recomputed from a key (see `rng::keep`), never stored: the same
//! call scales activations in the forward pass and their gradients in the backward pass.

use crate::rng::keep;
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// x[i] = keep(key, i) ? x[i] / (1 - p) : 0.
pub fn dropout_inplace(x: &mut [f32], key: u64, p: f32) {
    if p <= 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, xs)| {
        let base = (ci * CHUNK) as u64;
        for (i, v) in xs.iter_mut().enumerate() {
            *v = if keep(key, base + i as u64, p) {
                *v * scale
            } else {
                0.0
            };
        }
    });
}

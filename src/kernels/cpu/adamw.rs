//! AdamW as PyTorch computes it, and global-norm gradient clipping.
//!
//! p *= 1 - lr*wd (decoupled decay, only where the group decays)
//! m = m + (1-b1)*(g - m);  v = b2*v + (1-b2)*g^2
//! p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)

use crate::optim::AdamW;
use rayon::prelude::*;

/// The unit of the parallel passes, and of the gradient norm's partial sums.
pub const CHUNK: usize = 1 << 14;

/// One update for step `t` (1-based), in a single parallel pass, of the buffers' elements from
/// `offset` on (the whole buffer, or a ZeRO-1 rank's part). `groups` lists (first index, decays?)
/// for consecutive ranges of the whole buffer, sorted, starting at 0.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    offset: usize,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    opt: &AdamW,
    t: u64,
    groups: &[(usize, bool)],
) {
    let bc1 = 1.0 - (opt.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (opt.beta2 as f64).powi(t as i32);
    let step_size = (opt.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let (b1, b2, eps) = (opt.beta1, opt.beta2, opt.eps);
    let decayed = 1.0 - opt.lr * opt.weight_decay;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .enumerate()
        .for_each(|(ci, ((p, g), (m, v)))| {
            let base = offset + ci * CHUNK;
            let mut group = groups.partition_point(|&(start, _)| start <= base) - 1;
            let mut i = 0;
            while i < p.len() {
                let end = groups
                    .get(group + 1)
                    .map_or(p.len(), |&(start, _)| (start - base).min(p.len()));
                let shrink = if groups[group].1 { decayed } else { 1.0 };
                let (p, m, v) = (&mut p[i..end], &mut m[i..end], &mut v[i..end]);
                for (((p, &g), m), v) in p.iter_mut().zip(&g[i..end]).zip(m).zip(v) {
                    *p *= shrink;
                    *m += (1.0 - b1) * (g - *m);
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p -= step_size * *m / denom;
                }
                i = end;
                group += 1;
            }
        });
}

/// sqrt(sum g^2), accumulated in f64 over fixed chunks summed in order (deterministic).
/// `partials` is caller-owned scratch of at least `grads.len().div_ceil(CHUNK)` entries.
pub fn global_norm(grads: &[f32], partials: &mut [f64]) -> f32 {
    let n = grads.len().div_ceil(CHUNK);
    chunk_sums_of_squares(grads, &mut partials[..n]);
    norm_from_chunk_sums(&partials[..n])
}

/// sum g^2 of each CHUNK of `grads`, in f64, into `partials` (one per chunk). The chunks are
/// fixed, so the partial sums are the same whichever buffer (or ZeRO-1 part starting on a chunk
/// boundary) they are taken from.
pub fn chunk_sums_of_squares(grads: &[f32], partials: &mut [f64]) {
    partials
        .par_iter_mut()
        .zip(grads.par_chunks(CHUNK))
        .for_each(|(p, g)| {
            // Eight independent f64 sums, so the loop vectorises instead of waiting on each add.
            let mut acc = [0.0f64; 8];
            let mut lanes = g.chunks_exact(8);
            for c in &mut lanes {
                for j in 0..8 {
                    acc[j] += c[j] as f64 * c[j] as f64;
                }
            }
            *p = acc.iter().sum::<f64>()
                + lanes
                    .remainder()
                    .iter()
                    .map(|&x| x as f64 * x as f64)
                    .sum::<f64>();
        });
}

/// The global norm from every chunk's sum, added in chunk order.
pub fn norm_from_chunk_sums(partials: &[f64]) -> f32 {
    partials.iter().sum::<f64>().sqrt() as f32
}

pub fn norm_partials_len(n: usize) -> usize {
    n.div_ceil(CHUNK)
}

/// PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
pub fn clip_grads(grads: &mut [f32], norm: f32, max_norm: f32) {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        grads
            .par_chunks_mut(CHUNK)
            .for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    }
}

//! AdamW as PyTorch computes it, and global-norm gradient clipping.
//!
//! p *= 1 - lr*wd (decoupled decay, only where the group decays)
//! m = m + (1-b1)*(g - m);  v = b2*v + (1-b2)*g^2
//! p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// One update of `params[range]` for step `t` (1-based). `decay` picks the group.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    opt: &AdamW,
    t: u64,
    decay: bool,
) {
    let bc1 = 1.0 - (opt.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (opt.beta2 as f64).powi(t as i32);
    let step_size = (opt.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let shrink = if decay {
        1.0 - opt.lr * opt.weight_decay
    } else {
        1.0
    };
    let (b1, b2, eps) = (opt.beta1, opt.beta2, opt.eps);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i];
                p[i] *= shrink;
                m[i] += (1.0 - b1) * (gi - m[i]);
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}

/// sqrt(sum g^2), accumulated in f64 over fixed chunks summed in order (deterministic).
/// `partials` is caller-owned scratch of at least `grads.len().div_ceil(CHUNK)` entries.
pub fn global_norm(grads: &[f32], partials: &mut [f64]) -> f32 {
    let n = grads.len().div_ceil(CHUNK);
    partials[..n]
        .par_iter_mut()
        .zip(grads.par_chunks(CHUNK))
        .for_each(|(p, g)| *p = g.iter().map(|&x| (x as f64) * (x as f64)).sum());
    partials[..n].iter().sum::<f64>().sqrt() as f32
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

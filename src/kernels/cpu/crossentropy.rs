//! Fused softmax + cross-entropy over the real vocabulary (padded columns are ignored).
//!
//! forward: lse = log(sum_v exp(z_v)), loss_row = lse - z_target; target -1 means "no loss here".
//! backward, in place over the logits: dz_v = (exp(z_v - lse) - [v == target]) * scale for v < V,
//! 0 for padded columns and ignored rows. scale = 1 / (valid positions * grad accumulation steps).

use super::math::{fast_exp, min_rows_per_task, sum_exp};
use rayon::prelude::*;

/// Writes each row's log-sum-exp and loss (0 for ignored rows); returns the mean loss over the
/// rows whose target is not -1 (NaN if there are none), summed in order in f64.
pub fn crossentropy_forward(
    row_loss: &mut [f32],
    row_lse: &mut [f32],
    logits: &[f32],
    targets: &[i32],
    vocab: usize,
    padded_vocab: usize,
) -> f32 {
    row_loss
        .par_iter_mut()
        .zip(row_lse.par_iter_mut())
        .zip(logits.par_chunks(padded_vocab).zip(targets.par_iter()))
        .with_min_len(min_rows_per_task(padded_vocab))
        .for_each(|((loss, lse_out), (z, &target))| {
            let z = &z[..vocab];
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = m + sum_exp(z, m).ln() as f32;
            *lse_out = lse;
            *loss = if target >= 0 {
                lse - z[target as usize]
            } else {
                0.0
            };
        });
    let valid = count_valid(targets);
    let total: f64 = row_loss.iter().map(|&l| l as f64).sum();
    (total / valid as f64) as f32
}

pub fn crossentropy_backward_inplace(
    logits: &mut [f32],
    row_lse: &[f32],
    targets: &[i32],
    vocab: usize,
    padded_vocab: usize,
    scale: f32,
) {
    logits
        .par_chunks_mut(padded_vocab)
        .zip(row_lse.par_iter().zip(targets.par_iter()))
        .with_min_len(min_rows_per_task(padded_vocab))
        .for_each(|(z, (&lse, &target))| {
            if target < 0 {
                z.fill(0.0);
                return;
            }
            for v in z[..vocab].iter_mut() {
                *v = fast_exp(*v - lse) * scale;
            }
            z[target as usize] -= scale;
            z[vocab..].fill(0.0);
        });
}

/// Number of positions that carry a loss.
pub fn count_valid(targets: &[i32]) -> usize {
    targets.iter().filter(|&&t| t >= 0).count()
}

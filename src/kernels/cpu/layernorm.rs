//! LayerNorm over the last dimension (eps 1e-5, as GPT-2).
//!
//! forward: mean = sum(x)/C, rstd = 1/sqrt(sum((x-mean)^2)/C + eps), y = (x-mean)*rstd*w + b
//! backward, with n = (x-mean)*rstd and g = dy*w:
//!   dx = rstd * (g - mean(g) - n*mean(g*n)),  dw += sum_rows dy*n,  db += sum_rows dy

use super::math::{dot, min_rows_per_task, sum_map, SharedMut};
use super::matmul::column_sums_into;
use rayon::prelude::*;

pub const EPS: f32 = 1e-5;

pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(min_rows_per_task(c))
        .for_each(|((y, x), (m_out, s_out))| {
            let m = sum_map(x, |v| v) / c as f32;
            let var = sum_map(x, |v| (v - m) * (v - m)) / c as f32;
            let s = 1.0 / (var + EPS).sqrt();
            match b {
                Some(b) => {
                    for i in 0..c {
                        y[i] = (x[i] - m) * s * w[i] + b[i];
                    }
                }
                None => {
                    for i in 0..c {
                        y[i] = (x[i] - m) * s * w[i];
                    }
                }
            }
            *m_out = m;
            *s_out = s;
        });
}

/// dx += the input gradient (so residual streams accumulate); dw, db += the parameter gradients.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let rows = inp.len() / c;
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(min_rows_per_task(c))
        .for_each(|(((dx, dy), x), (&m, &s))| {
            let g_mean = dot(dy, w) / c as f32;
            // sum g*n = rstd * sum dy*w*(x - mean)
            let mut acc = [0.0f32; 8];
            let (dy8, w8, x8) = (dy.chunks_exact(8), w.chunks_exact(8), x.chunks_exact(8));
            let tail = dy8
                .remainder()
                .iter()
                .zip(w8.remainder())
                .zip(x8.remainder());
            let tail: f32 = tail.map(|((&d, &wi), &xi)| d * wi * (xi - m)).sum();
            for ((d, wi), xi) in dy8.zip(w8).zip(x8) {
                for j in 0..8 {
                    acc[j] += d[j] * wi[j] * (xi[j] - m);
                }
            }
            let gn_mean = (acc.iter().sum::<f32>() + tail) * s / c as f32;
            for i in 0..c {
                let n = (x[i] - m) * s;
                dx[i] += s * (dy[i] * w[i] - g_mean - n * gn_mean);
            }
        });
    // Parameter gradients: column blocks over all rows in order, deterministic for any thread count.
    const BLOCK: usize = 64;
    let dw_ptr = SharedMut(dw.as_mut_ptr());
    (0..c.div_ceil(BLOCK)).into_par_iter().for_each(|blk| {
        let (c0, c1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(c));
        // SAFETY: each block writes only columns [c0, c1).
        let dw = unsafe { std::slice::from_raw_parts_mut(dw_ptr.get().add(c0), c1 - c0) };
        for r in 0..rows {
            let (m, s) = (mean[r], rstd[r]);
            let x = &inp[r * c + c0..r * c + c1];
            let dy = &dout[r * c + c0..r * c + c1];
            for i in 0..c1 - c0 {
                dw[i] += dy[i] * (x[i] - m) * s;
            }
        }
    });
    if let Some(db) = db {
        column_sums_into(db, dout, rows, c);
    }
}

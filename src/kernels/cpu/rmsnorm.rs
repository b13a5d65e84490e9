//! RMSNorm over the last dimension (Llama), matching Hugging Face's LlamaRMSNorm in f32.
//!
//! forward: rstd = 1/sqrt(mean(x^2) + eps), y = w * (x * rstd)
//! backward, with g = dy*w:
//!   dx = rstd * (g - x * rstd^2 * mean(g*x)),  dw += sum_rows dy * x * rstd

use super::math::{min_rows_per_task, sum_map, SharedMut};
use rayon::prelude::*;

/// y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps), per row of c values. rstd saved per row.
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    c: usize,
    eps: f32,
) {
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(rstd.par_iter_mut())
        .with_min_len(min_rows_per_task(c))
        .for_each(|((y, x), s_out)| {
            let var = sum_map(x, |v| v * v) / c as f32;
            let s = 1.0 / (var + eps).sqrt();
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = w * (x * s);
            }
            *s_out = s;
        });
}

/// dinp += input gradient (residual streams accumulate, like layernorm_backward); dw += sum over
/// rows of dy*x*rstd.
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let rows = inp.len() / c;
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .zip(rstd.par_iter())
        .with_min_len(min_rows_per_task(c))
        .for_each(|(((dx, dy), x), &s)| {
            // mean(g*x) = sum(dy*w*x)/c, 8 lanes so it vectorises.
            let mut acc = [0.0f32; 8];
            let (dy8, w8, x8) = (dy.chunks_exact(8), w.chunks_exact(8), x.chunks_exact(8));
            let tail = dy8
                .remainder()
                .iter()
                .zip(w8.remainder())
                .zip(x8.remainder());
            let tail: f32 = tail.map(|((&d, &wi), &xi)| d * wi * xi).sum();
            for ((d, wi), xi) in dy8.zip(w8).zip(x8) {
                for j in 0..8 {
                    acc[j] += d[j] * wi[j] * xi[j];
                }
            }
            let gx_mean = (acc.iter().sum::<f32>() + tail) / c as f32;
            let k = s * s * gx_mean;
            for i in 0..c {
                dx[i] += s * (dy[i] * w[i] - x[i] * k);
            }
        });
    // Parameter gradient: column blocks over all rows in order, deterministic for any thread count.
    const BLOCK: usize = 64;
    let dw_ptr = SharedMut(dw[..c].as_mut_ptr());
    (0..c.div_ceil(BLOCK)).into_par_iter().for_each(|blk| {
        let (c0, c1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(c));
        // SAFETY: dw has c elements (sliced above) and each block writes only columns [c0, c1).
        let dw = unsafe { std::slice::from_raw_parts_mut(dw_ptr.get().add(c0), c1 - c0) };
        for r in 0..rows {
            let s = rstd[r];
            let x = &inp[r * c + c0..r * c + c1];
            let dy = &dout[r * c + c0..r * c + c1];
            for i in 0..c1 - c0 {
                dw[i] += dy[i] * x[i] * s;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::cpu::math::test_values(n, seed, 1.5)
    }

    #[test]
    fn forward_matches_f64() {
        for (rows, c) in [(3, 7), (5, 64), (2, 131)] {
            let eps = 1e-5f32;
            let x = vals(rows * c, 1 + c as u64);
            let w = vals(c, 2 + c as u64);
            let (mut y, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows]);
            rmsnorm_forward(&mut y, &mut rstd, &x, &w, c, eps);
            for r in 0..rows {
                let xr = &x[r * c..(r + 1) * c];
                let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
                let s = 1.0 / (ms + eps as f64).sqrt();
                assert!((rstd[r] as f64 - s).abs() <= 1e-6 * s, "rstd row {r}");
                for i in 0..c {
                    let want = w[i] as f64 * xr[i] as f64 * s;
                    let got = y[r * c + i] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "y[{r},{i}]"
                    );
                }
            }
        }
    }
}

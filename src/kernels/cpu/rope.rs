//! Rotary position embedding (Llama), Hugging Face's "rotate_half" layout: within each head of
//! hs values, dimensions k and k + hs/2 (k < hs/2) turn together by the angle
//! a = pos * theta^(-2k/hs):
//!
//! forward:  y[k] = x[k]*cos(a) - x[k+hs/2]*sin(a),  y[k+hs/2] = x[k+hs/2]*cos(a) + x[k]*sin(a)
//! backward: a rotation is orthogonal, so the gradient is the inverse rotation (angle -a) of dy.
//!
//! cos and sin come from a table, (max_t, hs/2), computed in f64 and rounded to f32.

use super::math::min_rows_per_task;
use rayon::prelude::*;

/// cos and sin of pos * theta^(-2k/hs) for pos < max_t and k < hs/2.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_size: usize,
    max_t: usize,
    /// (max_t, head_size/2)
    cos: Vec<f32>,
    /// (max_t, head_size/2)
    sin: Vec<f32>,
}

impl RopeTable {
    /// Panics (assert) if `head_size` is odd.
    pub fn new(head_size: usize, max_t: usize, theta: f32) -> RopeTable {
        assert!(
            head_size.is_multiple_of(2),
            "RoPE needs an even head size, got {head_size}"
        );
        let half = head_size / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(max_t * half),
            Vec::with_capacity(max_t * half),
        );
        let theta = theta as f64;
        for pos in 0..max_t {
            for k in 0..half {
                let inv_freq = 1.0 / theta.powf((2 * k) as f64 / head_size as f64);
                let a = pos as f64 * inv_freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTable {
            head_size,
            max_t,
            cos,
            sin,
        }
    }

    pub fn head_size(&self) -> usize {
        self.head_size
    }

    pub fn max_t(&self) -> usize {
        self.max_t
    }
}

/// Rotates in place `n` rows of `x` (row r starts at x[r * row_stride]); in each row the first
/// `n_heads` heads of `head_size` values (columns 0 .. n_heads*head_size) are rotated; row r is at
/// position pos0 + r. Panics (assert) if pos0 + n > table.max_t() or slices are too short.
pub fn rope_forward(
    x: &mut [f32],
    row_stride: usize,
    n: usize,
    n_heads: usize,
    pos0: usize,
    table: &RopeTable,
) {
    rope_apply(x, row_stride, n, n_heads, pos0, table, false);
}

/// The backward pass: the gradient through the rotation is the inverse rotation (angle negated),
/// in place, same arguments.
pub fn rope_backward(
    dx: &mut [f32],
    row_stride: usize,
    n: usize,
    n_heads: usize,
    pos0: usize,
    table: &RopeTable,
) {
    rope_apply(dx, row_stride, n, n_heads, pos0, table, true);
}

fn rope_apply(
    x: &mut [f32],
    row_stride: usize,
    n: usize,
    n_heads: usize,
    pos0: usize,
    table: &RopeTable,
    inverse: bool,
) {
    let hs = table.head_size;
    let half = hs / 2;
    let width = n_heads * hs;
    assert!(
        pos0 + n <= table.max_t,
        "rope: positions {pos0}..{} beyond the table's {}",
        pos0 + n,
        table.max_t
    );
    if n == 0 || width == 0 {
        return;
    }
    assert!(
        width <= row_stride && (n - 1) * row_stride + width <= x.len(),
        "rope: {n} rows of stride {row_stride} with {n_heads} heads of {hs} do not fit in {}",
        x.len()
    );
    let rotate_row = |r: usize, row: &mut [f32]| {
        let pos = pos0 + r;
        let cos = &table.cos[pos * half..(pos + 1) * half];
        let sin = &table.sin[pos * half..(pos + 1) * half];
        for head in row[..width].chunks_exact_mut(hs) {
            let (lo, hi) = head.split_at_mut(half);
            if inverse {
                for k in 0..half {
                    let (a, b) = (lo[k], hi[k]);
                    lo[k] = a * cos[k] + b * sin[k];
                    hi[k] = b * cos[k] - a * sin[k];
                }
            } else {
                for k in 0..half {
                    let (a, b) = (lo[k], hi[k]);
                    lo[k] = a * cos[k] - b * sin[k];
                    hi[k] = b * cos[k] + a * sin[k];
                }
            }
        }
    };
    let x = &mut x[..(n - 1) * row_stride + width];
    let min_rows = min_rows_per_task(width);
    if n <= min_rows {
        for (r, row) in x.chunks_mut(row_stride).enumerate() {
            rotate_row(r, row);
        }
    } else {
        x.par_chunks_mut(row_stride)
            .enumerate()
            .with_min_len(min_rows)
            .for_each(|(r, row)| rotate_row(r, row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::cpu::math::test_values(n, seed, 1.0)
    }

    /// The rotation in f64 straight from the formula (no table).
    fn rope_f64(x: &[f32], stride: usize, n: usize, nh: usize, hs: usize, pos0: usize) -> Vec<f64> {
        let theta = 10000.0f64;
        let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let half = hs / 2;
        for r in 0..n {
            let pos = (pos0 + r) as f64;
            for h in 0..nh {
                let base = r * stride + h * hs;
                for k in 0..half {
                    let a = pos * theta.powf(-2.0 * k as f64 / hs as f64);
                    let (x0, x1) = (x[base + k] as f64, x[base + k + half] as f64);
                    y[base + k] = x0 * a.cos() - x1 * a.sin();
                    y[base + k + half] = x1 * a.cos() + x0 * a.sin();
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_f64_with_stride_and_offset() {
        // Rows of 40 with 3 heads of 8 rotated (24 columns); the other 16 columns untouched.
        // n = 300 rows so the parallel path runs too.
        let (hs, nh, stride) = (8, 3, 40);
        for (n, pos0) in [(5, 0), (5, 7), (300, 20)] {
            let table = RopeTable::new(hs, 400, 10000.0);
            let x = vals((n - 1) * stride + nh * hs, 3 + n as u64);
            let mut y = x.clone();
            rope_forward(&mut y, stride, n, nh, pos0, &table);
            let want = rope_f64(&x, stride, n, nh, hs, pos0);
            for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
                let col = i % stride;
                if col >= nh * hs {
                    assert_eq!(g, x[i], "column {col} beyond the heads was changed");
                }
                // |pos*inv_freq| up to ~320 rad: the f32 table's rounding (~1.2e-7 relative on
                // cos/sin) dominates.
                assert!(
                    (g as f64 - w).abs() <= 1e-6,
                    "n={n} pos0={pos0} i={i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn pairs_k_with_k_plus_half() {
        // A unit vector at dimension k of a head moves only into dimensions k and k + hs/2.
        let (hs, pos) = (8, 3);
        let table = RopeTable::new(hs, 8, 10000.0);
        for k in 0..hs {
            let mut x = vec![0.0f32; hs];
            x[k] = 1.0;
            rope_forward(&mut x, hs, 1, 1, pos, &table);
            let partner = (k + hs / 2) % hs;
            let kk = k % (hs / 2);
            let a = pos as f64 * 10000f64.powf(-2.0 * kk as f64 / hs as f64);
            for (i, &v) in x.iter().enumerate() {
                let want = if i == k {
                    a.cos()
                } else if i == partner {
                    // lo gets -x_hi*sin, hi gets +x_lo*sin
                    if k < hs / 2 {
                        a.sin()
                    } else {
                        -a.sin()
                    }
                } else {
                    0.0
                };
                assert!((v as f64 - want).abs() < 1e-6, "k={k} i={i}: {v} vs {want}");
            }
        }
        // Position 0 is the identity.
        let x = vals(2 * hs, 9);
        let mut y = x.clone();
        rope_forward(&mut y, 2 * hs, 1, 2, 0, &table);
        assert_eq!(x, y);
    }

    #[test]
    fn backward_inverts_forward() {
        let (hs, nh, n) = (16, 2, 9);
        let table = RopeTable::new(hs, 32, 500000.0);
        let x = vals(n * nh * hs, 11);
        let mut y = x.clone();
        rope_forward(&mut y, nh * hs, n, nh, 4, &table);
        rope_backward(&mut y, nh * hs, n, nh, 4, &table);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-6);
        }
    }

    #[test]
    #[should_panic(expected = "beyond the table")]
    fn positions_beyond_the_table_panic() {
        let table = RopeTable::new(4, 4, 10000.0);
        let mut x = vec![0.0f32; 4 * 3];
        rope_forward(&mut x, 4, 3, 1, 2, &table);
    }
}

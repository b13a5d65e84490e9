//! Linear layers on the `gemm` crate: out = inp @ W + b, and its backward.
//!
//! Weights keep GPT-2's Conv1D layout (in, out) so checkpoints load without transposes; the tied
//! lm_head reads wte (vocab, C) as (out, in). gemm takes arbitrary strides, so neither costs a copy.

use super::math::{dot, min_rows_per_task, SharedMut};
use gemm::Parallelism;
use rayon::prelude::*;

/// A strided matrix view: element (i, j) is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    pub fn rows(s: &[f32], row_stride: usize) -> View {
        View {
            ptr: s.as_ptr(),
            rs: row_stride as isize,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `row_stride`.
    pub fn transposed(s: &[f32], row_stride: usize) -> View {
        View {
            ptr: s.as_ptr(),
            rs: 1,
            cs: row_stride as isize,
        }
    }
    pub fn t(self) -> View {
        View {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// dst (m x n, row stride `dst_rs`) = [dst +] scale * lhs (m x k) @ rhs (k x n).
///
/// # Safety
/// Every view must address valid memory for the given shape, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 {
        // One slab of the larger output dimension per thread, each a single-threaded gemm: for
        // the training shapes this beats gemm's own threading by ~10% in the backward pass
        // (measured on 2 cores), and the split is fixed, so results stay deterministic.
        let (dst, l, r) = (
            SharedMut(dst),
            SharedConst(lhs.ptr, lhs.rs, lhs.cs),
            SharedConst(rhs.ptr, rhs.rs, rhs.cs),
        );
        let split_rows = m >= n;
        let len = if split_rows { m } else { n };
        let per = len.div_ceil(threads).next_multiple_of(16);
        (0..len.div_ceil(per)).into_par_iter().for_each(|i| {
            let (a, b) = (i * per, ((i + 1) * per).min(len));
            let (mut lv, mut rv) = (l.view(), r.view());
            let d = if split_rows {
                lv.ptr = lv.ptr.offset(a as isize * lv.rs);
                dst.get().add(a * dst_rs)
            } else {
                rv.ptr = rv.ptr.offset(a as isize * rv.cs);
                dst.get().add(a)
            };
            let (mm, nn) = if split_rows { (b - a, n) } else { (m, b - a) };
            gemm_into(mm, nn, k, d, dst_rs, accumulate, lv, rv, scale, false);
        });
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// Below this many rows a matmul is a few matrix-vector products (generation): gemm would run
/// it on one thread, so `matmul_forward` streams the weights itself, split across cores. The
/// crossover, measured at GPT-2 124M shapes, lies between 4 rows (streaming 1.04x faster) and
/// 8 (gemm 1.36x faster).
const SKINNY_ROWS: usize = 6;

/// A view that parallel tasks may share (read only).
#[derive(Clone, Copy)]
struct SharedConst(*const f32, isize, isize);
// SAFETY: only ever read.
unsafe impl Send for SharedConst {}
unsafe impl Sync for SharedConst {}

impl SharedConst {
    fn view(self) -> View {
        View {
            ptr: self.0,
            rs: self.1,
            cs: self.2,
        }
    }
}

/// How a weight matrix of a layer mapping `c` inputs to `oc` outputs is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// (c, oc), GPT-2's Conv1D.
    InOut,
    /// (oc, c), the tied lm_head reading wte.
    OutIn,
}

impl Layout {
    /// W as a (c x oc) view.
    fn view(self, w: &[f32], c: usize, oc: usize) -> View {
        match self {
            Layout::InOut => View::rows(w, oc),
            Layout::OutIn => View::transposed(w, c),
        }
    }
}

/// out (rows, oc) = inp (rows, c) @ W + bias.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    layout: Layout,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    let rows = inp.len() / c;
    assert!(out.len() >= rows * oc && w.len() >= c * oc);
    if rows < SKINNY_ROWS {
        return skinny_forward(&mut out[..rows * oc], inp, w, layout, bias, c, oc);
    }
    if let Some(b) = bias {
        out[..rows * oc]
            .par_chunks_mut(oc)
            .with_min_len(min_rows_per_task(oc))
            .for_each(|row| row.copy_from_slice(&b[..oc]));
    }
    // SAFETY: shapes asserted above; out is a distinct &mut.
    unsafe {
        gemm_into(
            rows,
            oc,
            c,
            out.as_mut_ptr(),
            oc,
            bias.is_some(),
            View::rows(inp, c),
            layout.view(w, c, oc),
            1.0,
            true,
        );
    }
}

/// `matmul_forward` for a handful of rows: bandwidth-bound, so each weight is read once per call
/// (rows are looped while a block of W is in cache) and blocks of output columns go to tasks.
fn skinny_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    layout: Layout,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    const COLS: usize = 64;
    let rows = inp.len() / c;
    match layout {
        // W is (c, oc): split k into fixed slices so each task streams whole contiguous rows of
        // W into its own partial sums, then add the partials in slice order (deterministic).
        Layout::InOut => {
            const SLICES: usize = 8;
            let per = c.div_ceil(SLICES);
            let mut partial = vec![0.0f32; SLICES * rows * oc];
            partial
                .par_chunks_mut(rows * oc)
                .enumerate()
                .for_each(|(s, acc)| {
                    for k in s * per..((s + 1) * per).min(c) {
                        let wk = &w[k * oc..(k + 1) * oc];
                        for r in 0..rows {
                            let xk = inp[r * c + k];
                            for (a, &wv) in acc[r * oc..(r + 1) * oc].iter_mut().zip(wk) {
                                *a += xk * wv;
                            }
                        }
                    }
                });
            out.par_chunks_mut(oc).enumerate().for_each(|(r, o)| {
                match bias {
                    Some(b) => o.copy_from_slice(&b[..oc]),
                    None => o.fill(0.0),
                }
                for s in 0..SLICES {
                    for (x, &p) in o.iter_mut().zip(&partial[(s * rows + r) * oc..][..oc]) {
                        *x += p;
                    }
                }
            });
        }
        // W is (oc, c): each output is a dot product of contiguous rows.
        Layout::OutIn => {
            let out_ptr = SharedMut(out.as_mut_ptr());
            (0..oc.div_ceil(COLS)).into_par_iter().for_each(|blk| {
                for o in blk * COLS..((blk + 1) * COLS).min(oc) {
                    let wo = &w[o * c..(o + 1) * c];
                    let b = bias.map_or(0.0, |b| b[o]);
                    for r in 0..rows {
                        // SAFETY: this task alone writes columns [o0, o1) of every row.
                        unsafe {
                            *out_ptr.get().add(r * oc + o) = dot(&inp[r * c..(r + 1) * c], wo) + b
                        };
                    }
                }
            })
        }
    }
}

/// Backward of `matmul_forward`:
/// dinp = dout @ W^T (overwritten), dW += inp^T @ dout (or dout^T @ inp for OutIn), dbias += sum_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    layout: Layout,
    c: usize,
    oc: usize,
) {
    let rows = inp.len() / c;
    assert!(dinp.len() >= rows * c && dout.len() >= rows * oc && dw.len() >= c * oc);
    // SAFETY: shapes asserted above; destinations are distinct &mut slices.
    unsafe {
        gemm_into(
            rows,
            c,
            oc,
            dinp.as_mut_ptr(),
            c,
            false,
            View::rows(dout, oc),
            layout.view(w, c, oc).t(),
            1.0,
            true,
        );
        match layout {
            Layout::InOut => gemm_into(
                c,
                oc,
                rows,
                dw.as_mut_ptr(),
                oc,
                true,
                View::transposed(inp, c),
                View::rows(dout, oc),
                1.0,
                true,
            ),
            Layout::OutIn => gemm_into(
                oc,
                c,
                rows,
                dw.as_mut_ptr(),
                c,
                true,
                View::transposed(dout, oc),
                View::rows(inp, c),
                1.0,
                true,
            ),
        }
    }
    if let Some(db) = dbias {
        column_sums_into(db, dout, rows, oc);
    }
}

/// acc[j] += sum_i m[i*n + j] for an (rows x n) matrix. Columns are split into fixed blocks, each
/// summed over rows in order, so the result does not depend on the thread count.
pub fn column_sums_into(acc: &mut [f32], m: &[f32], rows: usize, n: usize) {
    const BLOCK: usize = 64;
    let acc_ptr = SharedMut(acc.as_mut_ptr());
    (0..n.div_ceil(BLOCK)).into_par_iter().for_each(|blk| {
        let (c0, c1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(n));
        // SAFETY: each block writes only its own columns [c0, c1) of acc.
        let a = unsafe { std::slice::from_raw_parts_mut(acc_ptr.get().add(c0), c1 - c0) };
        for r in 0..rows {
            let row = &m[r * n + c0..r * n + c1];
            for (x, y) in a.iter_mut().zip(row) {
                *x += y;
            }
        }
    });
}

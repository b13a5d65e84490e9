//! Linear layers on the `gemm` crate: out = inp @ W + b, and its backward.
//!
//! Weights keep GPT-2's Conv1D layout (in, out) so checkpoints load without transposes; the tied
//! lm_head reads wte (vocab, C) as (out, in). gemm takes arbitrary strides, so neither costs a copy.

use super::math::SharedMut;
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
    if parallel && threads > 1 && m < SMALL_M {
        // gemm runs matrix-vector shapes on one thread; split the columns among tasks instead,
        // so generation at batch 1 streams the weights with every core.
        let block = n.div_ceil(threads * 4).next_multiple_of(16);
        let (dst, lhs) = (SharedMut(dst), SharedConst(lhs.ptr, lhs.rs, lhs.cs));
        let rhs = SharedConst(rhs.ptr, rhs.rs, rhs.cs);
        (0..n.div_ceil(block)).into_par_iter().for_each(|blk| {
            let (j0, j1) = (blk * block, ((blk + 1) * block).min(n));
            let (l, r) = (lhs.view(), rhs.view());
            let r = View {
                ptr: r.ptr.offset(j0 as isize * r.cs),
                ..r
            };
            // SAFETY: each task writes only columns [j0, j1) of dst.
            gemm_into(
                m,
                j1 - j0,
                k,
                dst.get().add(j0),
                dst_rs,
                accumulate,
                l,
                r,
                scale,
                false,
            );
        });
        return;
    }
    let par = if parallel && threads > 1 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
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
        par,
    );
}

/// Below this many rows, `gemm_into` parallelises over column blocks itself.
const SMALL_M: usize = 16;

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
    if let Some(b) = bias {
        out[..rows * oc]
            .par_chunks_mut(oc)
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

//! Linear layers on the `gemm` crate: out = inp @ W + b, and its backward.
//!
//! Weights keep GPT-2's Conv1D layout (in, out) so checkpoints load without transposes; the tied
//! lm_head reads wte (vocab, C) as (out, in). gemm takes arbitrary strides, so neither costs a copy.
//! Products run in f32 or, for bf16 training, in bf16 (`matmul_bf16`): the same views either way.

use super::math::{dot, min_items_per_task, min_rows_per_task, SharedMut};
use super::matmul_bf16::{bf16_value, gemm_bf16, Bf16, Kernel, PackedB, Rhs};
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

/// What a matrix product multiplies in: f32, or its inputs rounded to bf16 (the products summed
/// in f32 either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// dst (m x n, row stride `dst_rs`) = [dst +] scale * lhs (m x k) @ rhs (k x n), in `precision`.
///
/// # Safety
/// Every view must address valid memory for the given shape, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into(
    precision: Precision,
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
    if precision == Precision::Bf16 {
        let kernel = Kernel::detect();
        return gemm_bf16(
            kernel,
            m,
            n,
            k,
            dst,
            dst_rs,
            accumulate,
            lhs,
            Rhs::View(rhs),
            scale,
            parallel,
        );
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
            gemm_into(
                precision, mm, nn, k, d, dst_rs, accumulate, lv, rv, scale, false,
            );
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

/// Below this many rows a matmul is a few matrix-vector products (decoding a batch): gemm
/// would pack the whole weight matrix for a handful of rows, so `matmul_forward` streams the
/// weights itself, split across cores. Measured at GPT-2 124M on 2 cores, a decode step over
/// transposed weights (what cached inference passes) took 31 ms at 8 rows and 47 ms at 16,
/// against gemm's 55 and 66; a 32-token prefill stays faster in gemm.
const SKINNY_ROWS: usize = 17;

/// Whether `matmul_forward` over `rows` rows takes the few-rows path (dot products and
/// streamed weights) rather than gemm.
pub fn is_skinny(rows: usize) -> bool {
    rows < SKINNY_ROWS
}

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
    pub fn view(self, w: &[f32], c: usize, oc: usize) -> View {
        match self {
            Layout::InOut => View::rows(w, oc),
            Layout::OutIn => View::transposed(w, c),
        }
    }
}

/// out (rows, oc) = inp (rows, c) @ W + bias, in `precision` (few rows: always f32).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    precision: Precision,
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
    if is_skinny(rows) {
        return skinny_forward(&mut out[..rows * oc], inp, w, layout, bias, c, oc);
    }
    // SAFETY: shapes asserted above; out is a distinct &mut.
    unsafe {
        biased_product(
            precision,
            out,
            inp,
            Rhs::View(layout.view(w, c, oc)),
            bias,
            c,
            oc,
        )
    }
}

/// out (rows, oc) = inp (rows, c) @ rhs (c x oc) + bias, rows of `oc`, in `precision` (a packed
/// rhs: bf16).
///
/// # Safety
/// `out` must hold rows x oc values and a view `rhs` address c x oc.
unsafe fn biased_product(
    precision: Precision,
    out: &mut [f32],
    inp: &[f32],
    rhs: Rhs,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    let rows = inp.len() / c;
    fill_rows(&mut out[..rows * oc], bias, oc);
    let (dst, lhs, add) = (out.as_mut_ptr(), View::rows(inp, c), bias.is_some());
    match rhs {
        Rhs::View(v) => gemm_into(precision, rows, oc, c, dst, oc, add, lhs, v, 1.0, true),
        packed => gemm_bf16(
            Kernel::detect(),
            rows,
            oc,
            c,
            dst,
            oc,
            add,
            lhs,
            packed,
            1.0,
            true,
        ),
    }
}

/// Every row of `out` (rows of `oc`) set to `bias`, if there is one: what a product then adds to.
fn fill_rows(out: &mut [f32], bias: Option<&[f32]>, oc: usize) {
    if let Some(b) = bias {
        out.par_chunks_mut(oc)
            .with_min_len(min_rows_per_task(oc))
            .for_each(|row| row.copy_from_slice(&b[..oc]));
    }
}

/// out (rows, oc) = inp (rows, c) @ W + bias, W (c x oc) bf16 inference weights packed
/// beforehand: a few rows (decoding) multiply f32 activations (`PackedB::forward_rows`); more
/// (a prompt's pass) multiply in bf16 (`matmul_bf16`), packing only the activations: the same
/// bits as `matmul_forward` in `Precision::Bf16` over W's f32 values.
pub fn packed_bf16_forward(
    out: &mut [f32],
    inp: &[f32],
    w: PackedB,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    let rows = inp.len() / c;
    assert!(out.len() >= rows * oc && w.shape() == (c, oc));
    if is_skinny(rows) {
        return w.forward_rows(Kernel::detect(), &mut out[..rows * oc], inp, bias);
    }
    // SAFETY: shapes asserted above; out is a distinct &mut.
    unsafe { biased_product(Precision::Bf16, out, inp, Rhs::Packed(w), bias, c, oc) }
}

/// `matmul_forward` for a handful of rows: bandwidth-bound, so each weight is read from memory
/// once per call, and every output element is the same sum in the same order whatever the
/// number of rows (a row's result does not depend on what else is in the batch).
fn skinny_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    layout: Layout,
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    let rows = inp.len() / c;
    let out_ptr = SharedMut(out.as_mut_ptr());
    match layout {
        // W is (c, oc): tasks take blocks of columns; within one, blocks of rows keep their
        // sums in registers while W's rows stream by (see `inout_tile`).
        Layout::InOut => {
            let min = min_items_per_task(TASK_COLS * c * rows);
            (0..oc.div_ceil(TASK_COLS))
                .into_par_iter()
                .with_min_len(min)
                .for_each(|t| {
                    let (j0, j1) = (t * TASK_COLS, ((t + 1) * TASK_COLS).min(oc));
                    let mut r = 0;
                    while r < rows {
                        let x = &inp[r * c..];
                        // SAFETY: this task alone writes columns [j0, j1) of every row.
                        let o = unsafe { out_ptr.get().add(r * oc) };
                        r += match rows - r {
                            8.. => inout_block::<8, 32>(o, x, w, bias, c, oc, j0, j1),
                            4..=7 => inout_block::<4, 64>(o, x, w, bias, c, oc, j0, j1),
                            2..=3 => inout_block::<2, 64>(o, x, w, bias, c, oc, j0, j1),
                            _ => inout_block::<1, 128>(o, x, w, bias, c, oc, j0, j1),
                        };
                    }
                });
        }
        Layout::OutIn => outin_forward(out, inp, w, bias, c, oc),
    }
}

/// A stored value read as f32: f32, or bf16 (`sample --dtype=bfloat16`: half the bytes to
/// stream, widened to f32 as it is loaded; the activations stay f32). The few-rows matmul reads
/// weights of either kind, cached attention keys and values.
pub trait WeightValue: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The nearest stored value to `x`.
    fn from_f32(x: f32) -> Self;
    /// `row` as f32 values: itself for f32, else widened into `buf`.
    fn widen<'a>(row: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.clear();
        buf.extend(row.iter().map(|x| x.to_f32()));
        buf
    }
    /// 16 values at `p` (the first `n`, zeros after) as f32 lanes.
    ///
    /// # Safety
    /// `p` must address `n` values; only call from code compiled with AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self, n: usize) -> std::arch::x86_64::__m512;
    /// 8 values at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` must address 8 values; only call from code compiled with AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl WeightValue for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn widen<'a>(row: &'a [f32], _: &'a mut Vec<f32>) -> &'a [f32] {
        row
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32, n: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        if n >= 16 {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl WeightValue for Bf16 {
    fn to_f32(self) -> f32 {
        bf16_value(self.0)
    }
    fn from_f32(x: f32) -> Bf16 {
        Bf16::round(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Bf16, n: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let halves = if n >= 16 {
            _mm256_loadu_si256(p as *const __m256i)
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << n) - 1) as __mmask16, p as *const i16)
        };
        // bf16 is the top half of an f32: widen, shift into place.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let halves = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
    }
}

/// An int8 value read as the integer it is: its scale is kept apart, one per row (the int8 KV
/// cache, `crate::kernels::cpu::attention::CacheValue`).
impl WeightValue for i8 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(x: f32) -> i8 {
        x.round_ties_even().clamp(-127.0, 127.0) as i8
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const i8, n: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let bytes = if n >= 16 {
            _mm_loadu_si128(p as *const __m128i)
        } else {
            let mut buf = [0i8; 16];
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            _mm_loadu_si128(buf.as_ptr() as *const __m128i)
        };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const i8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }
}

/// out (rows, oc) = inp (rows, c) @ W^T + bias for W (oc, c) of f32 or bf16 values, for a few
/// rows: each output is a dot product of two contiguous rows, blocks of outputs split across
/// cores.
pub fn outin_forward<W: WeightValue>(
    out: &mut [f32],
    inp: &[f32],
    w: &[W],
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
) {
    let rows = inp.len() / c;
    assert!(out.len() >= rows * oc && w.len() >= c * oc);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let min = min_items_per_task(TASK_COLS * c * rows);
    (0..oc.div_ceil(TASK_COLS))
        .into_par_iter()
        .with_min_len(min)
        .for_each(|t| {
            let (o0, o1) = (t * TASK_COLS, ((t + 1) * TASK_COLS).min(oc));
            // SAFETY: this task alone writes columns [o0, o1) of every row.
            unsafe { outin_rows(out_ptr.get(), inp, w, bias, c, oc, o0, o1) }
        });
}

/// out[r][o] = x[r] . W[o] + b[o] for every row of `inp` and o in `o0..o1`, W (oc, c).
///
/// # Safety
/// `out` must address `rows * oc` values, of which the caller owns columns `o0..o1`.
#[allow(clippy::too_many_arguments)]
unsafe fn outin_rows<W: WeightValue>(
    out: *mut f32,
    inp: &[f32],
    w: &[W],
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
    o0: usize,
    o1: usize,
) {
    assert!(w.len() >= o1 * c);
    // The tiles load bf16 with AVX-512 BW's 16-bit masks (f32 needs only F; every CPU with
    // AVX-512 but Xeon Phi has both).
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        return avx512::outin_rows(out, inp, w, bias, c, oc, o0, o1);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return avx2::outin_rows(out, inp, w, bias, c, oc, o0, o1);
    }
    outin_rows_portable(out, inp, w, bias, c, oc, o0, o1)
}

/// [`outin_rows`] without AVX-512: output by output, each weight row (widened to f32 once if
/// it is bf16) dotted with every input row.
///
/// # Safety
/// As [`outin_rows`].
#[allow(clippy::too_many_arguments)]
unsafe fn outin_rows_portable<W: WeightValue>(
    out: *mut f32,
    inp: &[f32],
    w: &[W],
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
    o0: usize,
    o1: usize,
) {
    let mut buf = Vec::new();
    for o in o0..o1 {
        let row = W::widen(&w[o * c..(o + 1) * c], &mut buf);
        for (r, x) in inp.chunks_exact(c).enumerate() {
            *out.add(r * oc + o) = dot(x, row) + bias.map_or(0.0, |b| b[o]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::WeightValue;
    use std::arch::x86_64::*;

    /// [`super::outin_rows`] with AVX2: output by output, each weight row dotted with every
    /// input row as it is read, bf16 widened as it loads (the portable path widens a row into a
    /// buffer first, then reads it again). Each dot product is 8 sums of 8 lanes over k in steps
    /// of 64 (4 sums measured 0.92x of the portable loop in f32: too few loads in flight), added
    /// pairwise at the end, the last values (c not a multiple of 8) one by one: the same bits
    /// whatever the number of rows.
    ///
    /// # Safety
    /// As [`super::outin_rows`]; AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn outin_rows<W: WeightValue>(
        out: *mut f32,
        inp: &[f32],
        w: &[W],
        bias: Option<&[f32]>,
        c: usize,
        oc: usize,
        o0: usize,
        o1: usize,
    ) {
        assert!(w.len() >= o1 * c);
        for o in o0..o1 {
            let row = w.as_ptr().add(o * c);
            for (r, x) in inp.chunks_exact(c).enumerate() {
                *out.add(r * oc + o) = dot(x, row, c) + bias.map_or(0.0, |b| b[o]);
            }
        }
    }

    /// x . row over `c` values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dot<W: WeightValue>(x: &[f32], row: *const W, c: usize) -> f32 {
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut k = 0;
        while k + 64 <= c {
            for (i, a) in acc.iter_mut().enumerate() {
                let at = k + 8 * i;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(at)), W::load8(row.add(at)), *a);
            }
            k += 64;
        }
        while k + 8 <= c {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(k)), W::load8(row.add(k)), acc[0]);
            k += 8;
        }
        let quads = [0, 4].map(|i| {
            _mm256_add_ps(
                _mm256_add_ps(acc[i], acc[i + 1]),
                _mm256_add_ps(acc[i + 2], acc[i + 3]),
            )
        });
        let sum = _mm256_add_ps(quads[0], quads[1]);
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut s = lanes.iter().sum::<f32>();
        for (j, &xj) in x.iter().enumerate().take(c).skip(k) {
            s = xj.mul_add((*row.add(j)).to_f32(), s);
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::WeightValue;
    use std::arch::x86_64::*;

    /// [`super::outin_rows`] with AVX-512. Tiles of `OUTS` weight rows x up to 4 input rows
    /// keep their sums in registers: each load of W serves every row of the tile, each load of x
    /// every output. One input row (decoding a single sequence) takes one weight row at a time: a
    /// task then reads one contiguous stream (4 or 8 rows at a time measured slower in a trial);
    /// several take 4 (16 sums with 4 rows). Each output is 16
    /// lane-wise partial sums over k in order (the last lanes masked), then added across lanes,
    /// then the bias: the same bits whatever the tile.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn outin_rows<W: WeightValue>(
        out: *mut f32,
        inp: &[f32],
        w: &[W],
        bias: Option<&[f32]>,
        c: usize,
        oc: usize,
        o0: usize,
        o1: usize,
    ) {
        if inp.len() == c {
            sweep::<W, 1>(out, inp, w, bias, c, oc, o0, o1)
        } else {
            sweep::<W, 4>(out, inp, w, bias, c, oc, o0, o1)
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sweep<W: WeightValue, const OUTS: usize>(
        out: *mut f32,
        inp: &[f32],
        w: &[W],
        bias: Option<&[f32]>,
        c: usize,
        oc: usize,
        o0: usize,
        o1: usize,
    ) {
        let rows = inp.len() / c;
        let mut o = o0;
        while o < o1 {
            let n_out = (o1 - o).min(OUTS);
            // A short last tile repeats its last row (computed, not written).
            let wr: [*const W; OUTS] =
                std::array::from_fn(|i| w.as_ptr().add((o + i.min(n_out - 1)) * c));
            let mut r = 0;
            while r + 4 <= rows {
                let xr: [*const f32; 4] = std::array::from_fn(|j| inp.as_ptr().add((r + j) * c));
                store(out, &tile::<W, 4, OUTS>(wr, xr, c), r, o, n_out, oc, bias);
                r += 4;
            }
            while r + 2 <= rows {
                let xr = [inp.as_ptr().add(r * c), inp.as_ptr().add((r + 1) * c)];
                store(out, &tile::<W, 2, OUTS>(wr, xr, c), r, o, n_out, oc, bias);
                r += 2;
            }
            if r < rows {
                let sums = tile::<W, 1, OUTS>(wr, [inp.as_ptr().add(r * c)], c);
                store(out, &sums, r, o, n_out, oc, bias);
            }
            o += n_out;
        }
    }

    /// How far ahead (in bytes, 1024 f32 values) each weight row's stream is prefetched: a tile's rows
    /// are read a line at a time each, which the hardware prefetcher picks up late when rows
    /// are short. Its effect here was within this VM's run-to-run noise (10-20%); it was in
    /// place for every decode figure in the notes.
    const PREFETCH: usize = 4096;

    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn tile<W: WeightValue, const ROWS: usize, const OUTS: usize>(
        wr: [*const W; OUTS],
        xr: [*const f32; ROWS],
        c: usize,
    ) -> [[f32; OUTS]; ROWS] {
        let mut acc = [[_mm512_setzero_ps(); OUTS]; ROWS];
        let mut k = 0;
        while k + 16 <= c {
            for p in wr {
                let ahead = (p.wrapping_add(k) as *const i8).wrapping_add(PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            let wv: [__m512; OUTS] = std::array::from_fn(|i| W::load16(wr[i].add(k), 16));
            for (a, x) in acc.iter_mut().zip(xr) {
                let xv = _mm512_loadu_ps(x.add(k));
                for (ai, &wi) in a.iter_mut().zip(&wv) {
                    *ai = _mm512_fmadd_ps(xv, wi, *ai);
                }
            }
            k += 16;
        }
        if k < c {
            let m: __mmask16 = ((1u32 << (c - k)) - 1) as __mmask16;
            let wv: [__m512; OUTS] = std::array::from_fn(|i| W::load16(wr[i].add(k), c - k));
            for (a, x) in acc.iter_mut().zip(xr) {
                let xv = _mm512_maskz_loadu_ps(m, x.add(k));
                for (ai, &wi) in a.iter_mut().zip(&wv) {
                    *ai = _mm512_fmadd_ps(xv, wi, *ai);
                }
            }
        }
        acc.map(|a| a.map(|v| _mm512_reduce_add_ps(v)))
    }

    unsafe fn store<const ROWS: usize, const OUTS: usize>(
        out: *mut f32,
        sums: &[[f32; OUTS]; ROWS],
        r: usize,
        o: usize,
        n_out: usize,
        oc: usize,
        bias: Option<&[f32]>,
    ) {
        for (j, row) in sums.iter().enumerate() {
            for (i, &s) in row.iter().enumerate().take(n_out) {
                *out.add((r + j) * oc + o + i) = s + bias.map_or(0.0, |b| b[o + i]);
            }
        }
    }
}

/// Output columns per task in `skinny_forward` (InOut); a multiple of every tile width.
const TASK_COLS: usize = 128;

/// Rows `0..RB` of `x` (row stride `c`) times columns `j0..j1` of W (c, oc), plus bias, into
/// `out` (row stride `oc`), in tiles of `TW` columns: `RB x TW` sums live in registers (at most
/// 16 AVX-512 registers) while W's rows go by once. Each sum is bias + x[0]w[0] + x[1]w[1] + ...
/// in that order, fused multiply-adds. Returns `RB`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn inout_block<const RB: usize, const TW: usize>(
    out: *mut f32,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    c: usize,
    oc: usize,
    j0: usize,
    j1: usize,
) -> usize {
    let xs: [&[f32]; RB] = std::array::from_fn(|r| &x[r * c..(r + 1) * c]);
    let mut j = j0;
    while j + TW <= j1 {
        let mut acc = [[0.0f32; TW]; RB];
        if let Some(b) = bias {
            for a in acc.iter_mut() {
                a.copy_from_slice(&b[j..j + TW]);
            }
        }
        for k in 0..c {
            let wk: &[f32; TW] = w[k * oc + j..][..TW].try_into().expect("TW columns");
            for r in 0..RB {
                let xv = xs[r][k];
                for (a, &wv) in acc[r].iter_mut().zip(wk) {
                    *a = xv.mul_add(wv, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: the caller owns columns [j0, j1) of these RB rows.
            unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), out.add(r * oc + j), TW) };
        }
        j += TW;
    }
    // Columns left over (oc not a multiple of TW): the same sums, one at a time.
    for j in j..j1 {
        for (r, xr) in xs.iter().enumerate() {
            let mut a = bias.map_or(0.0, |b| b[j]);
            for k in 0..c {
                a = xr[k].mul_add(w[k * oc + j], a);
            }
            // SAFETY: as above.
            unsafe { *out.add(r * oc + j) = a };
        }
    }
    RB
}

/// Backward of `matmul_forward`, its two products in `precision`:
/// dinp = dout @ W^T (overwritten), dW += inp^T @ dout (or dout^T @ inp for OutIn), dbias += sum_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    precision: Precision,
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
            precision,
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
                precision,
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
                precision,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    /// out = x @ W + b in f64, for W in either layout.
    fn reference(
        x: &[f32],
        w: &[f32],
        layout: Layout,
        b: Option<&[f32]>,
        c: usize,
        oc: usize,
    ) -> Vec<f64> {
        let rows = x.len() / c;
        let mut out = vec![0.0f64; rows * oc];
        for r in 0..rows {
            for j in 0..oc {
                let mut s = b.map_or(0.0, |b| b[j] as f64);
                for k in 0..c {
                    let wkj = match layout {
                        Layout::InOut => w[k * oc + j],
                        Layout::OutIn => w[j * c + k],
                    };
                    s += x[r * c + k] as f64 * wkj as f64;
                }
                out[r * oc + j] = s;
            }
        }
        out
    }

    #[test]
    fn bf16_weights_match_f64_of_the_rounded_weights_on_both_paths() {
        for (c, oc, rows) in [(37, 150, 1), (64, 128, 3), (129, 7, 5), (16, 300, 16)] {
            let (w, b, x) = (fill(c * oc, 7), fill(oc, 8), fill(rows * c, 9));
            let wb: Vec<Bf16> = w.iter().map(|&v| Bf16::round(v)).collect();
            let rounded: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let want = reference(&x, &rounded, Layout::OutIn, Some(&b), c, oc);
            let mut fast = vec![0.0f32; rows * oc];
            outin_forward(&mut fast, &x, &wb, Some(&b), c, oc);
            let mut portable = vec![0.0f32; rows * oc];
            // SAFETY: `portable` holds rows x oc values and this call owns every column.
            unsafe { outin_rows_portable(portable.as_mut_ptr(), &x, &wb, Some(&b), c, oc, 0, oc) };
            for (got, what) in [(&fast, "dispatched"), (&portable, "portable")] {
                for (&g, &w) in got.iter().zip(&want) {
                    let tol = 1e-5 * (1.0 + w.abs()) * (c as f64).sqrt();
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "{what} c={c} oc={oc}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_portable_dot_products_match_f64_too() {
        // What a CPU without AVX-512 runs for (out, in) weights.
        let (c, oc, rows) = (37, 150, 5);
        let (w, b, x) = (fill(c * oc, 3), fill(oc, 4), fill(rows * c, 5));
        let mut out = vec![0.0f32; rows * oc];
        // SAFETY: `out` holds rows x oc values and this call owns every column.
        unsafe { outin_rows_portable(out.as_mut_ptr(), &x, &w, Some(&b), c, oc, 0, oc) };
        let want = reference(&x, &w, Layout::OutIn, Some(&b), c, oc);
        for (&got, &want) in out.iter().zip(&want) {
            assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()) * (c as f64).sqrt());
        }
    }

    #[test]
    fn few_rows_match_f64_on_odd_shapes_and_do_not_depend_on_the_batch() {
        for (c, oc) in [(37, 150), (64, 128), (129, 7), (16, 300)] {
            for layout in [Layout::InOut, Layout::OutIn] {
                let w = fill(c * oc, 1);
                let b = fill(oc, 2);
                for bias in [None, Some(&b[..])] {
                    for rows in 1..SKINNY_ROWS {
                        let x = fill(rows * c, rows);
                        let mut out = vec![0.0f32; rows * oc];
                        matmul_forward(Precision::F32, &mut out, &x, &w, layout, bias, c, oc);
                        let want = reference(&x, &w, layout, bias, c, oc);
                        for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (1.0 + want.abs()) * (c as f64).sqrt();
                            assert!(
                                (got as f64 - want).abs() <= tol,
                                "{layout:?} c={c} oc={oc} rows={rows} [{i}]: {got} vs {want}"
                            );
                        }
                        // Each row alone gives the same bits as in the batch.
                        for r in 0..rows {
                            let mut one = vec![0.0f32; oc];
                            matmul_forward(
                                Precision::F32,
                                &mut one,
                                &x[r * c..(r + 1) * c],
                                &w,
                                layout,
                                bias,
                                c,
                                oc,
                            );
                            assert_eq!(
                                one,
                                out[r * oc..(r + 1) * oc],
                                "{layout:?} rows={rows} row {r}"
                            );
                        }
                    }
                }
            }
        }
    }
}

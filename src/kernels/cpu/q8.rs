//! Int8 (Q8_0) matrices and their product with f32 activations, as llama2.c's `runq.c` computes
//! it (its "version 2" files). Only cached inference uses it; training stays f32.
//!
//! Weights: an (out, in) matrix is cut into groups of `G` consecutive values of each row (`in`
//! must be a multiple of `G`), each stored as int8 with one f32 scale, as llama2.c's export:
//!   sw = max|w| / 127,   qw = round_half_even(w / sw)   (torch.round),   w ~ qw * sw
//! so |w - qw*sw| <= sw/2. A group of zeros has sw = 0 and qw = 0.
//!
//! Activations: each input row is quantized the same way before every product, but rounded as
//! C's `round` (half away from zero), as runq.c's `quantize`:
//!   sx = max|x| / 127,   qx = round_half_away(x / sx)
//!
//! Product, for input row r and output o, with `ng = in / G` groups:
//!   out[r][o] = sum_{g < ng} (f32(isum(r, o, g)) * sw[o][g]) * sx[r][g]
//!   isum(r, o, g) = sum_{j < G} qx[r][g*G + j] * qw[o][g*G + j]        (exact, i32)
//! the group terms added in f32 in group order from 0.0, each term multiplied in that order
//! (runq.c: `val += ((float) ival) * w->s[..] * x->s[..]`). The integer sums are exact whatever
//! the order, so every path gives the same bits.
//!
//! Paths, chosen at run time (the build targets x86-64-v3; AVX-512 is enabled per function):
//! - AVX-512 VNNI (`vpdpbusd`): weights repacked at quantization, 16 outputs x 4 inputs per
//!   64 bytes, stored as q + 128 (the instruction multiplies unsigned by signed bytes; 128 x
//!   the activations' group sum is subtracted back). Lane i of a register is output i, so no
//!   horizontal sums; groups a multiple of 16.
//! - AVX-512 BW: sign-extended i16 pairs (`vpmaddwd`), 16 outputs' lanes summed by a transpose
//!   tree; groups a multiple of 32.
//! - AVX2: weights repacked at quantization as the VNNI layout's 8-lane twin (8 outputs x 4
//!   inputs per 32 bytes, signed); `vpmaddubsw` multiplies |w| by x carrying w's sign (at most
//!   2 x 127 x 127 per i16: no saturation), `vpmaddwd` adds the pairs to i32: lane i is output
//!   i, no horizontal sums; up to 4 rows share each load. Groups a multiple of 4.
//! - Portable Rust, any group.
//!
//! Output rows are split across threads in blocks (`for_output_blocks`); every row of the
//! input gives the same bits whatever else is in the batch.

use super::math::SharedMut;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// The largest int8 magnitude used: values lie in -127..=127.
const Q_MAX: f32 = 127.0;

/// Output rows per parallel task (a multiple of the AVX-512 path's 16).
const TASK_OUTS: usize = 64;

/// An (out, in) matrix in Q8_0: int8 values, `group` consecutive values of a row per f32 scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Matrix {
    pub out: usize,
    pub inp: usize,
    pub group: usize,
    /// (out, in), row-major.
    pub q: Vec<i8>,
    /// (out, in / group), row-major.
    pub s: Vec<f32>,
    /// The same values interleaved for this CPU's fastest path, where it has one.
    packed: Option<Packed>,
}

/// Which path an interleaved copy of the weights ([`Packed`]) is laid out for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PackedFor {
    /// AVX-512 VNNI, `vnni::rows`: 16 outputs per block, values stored as q + 128.
    Vnni,
    /// AVX2, `avx2::packed_rows`: 8 outputs per block, values stored as they are.
    Avx2,
}

impl PackedFor {
    /// The layout this CPU's fastest path reads for groups of `group`, if any.
    fn here(group: usize) -> Option<PackedFor> {
        if vnni::usable(group) {
            return Some(PackedFor::Vnni);
        }
        #[cfg(target_arch = "x86_64")]
        if avx2::packed_usable(group) {
            return Some(PackedFor::Avx2);
        }
        None
    }

    /// Outputs per block (lanes of an i32 register).
    fn lanes(self) -> usize {
        match self {
            PackedFor::Vnni => 16,
            PackedFor::Avx2 => 8,
        }
    }

    /// What each stored byte is xor'ed with: `vpdpbusd` multiplies unsigned by signed bytes.
    fn flip(self) -> u8 {
        match self {
            PackedFor::Vnni => 0x80,
            PackedFor::Avx2 => 0,
        }
    }
}

/// [`Q8Matrix`] interleaved for a SIMD path, in blocks of L = `lanes()` outputs (the last
/// padded with zero rows): for block b, group k and each 4 inputs j..j+4 of the group, 4L bytes
/// holding those 4 values of outputs Lb..Lb+L in turn, so one instruction adds 4 products to each
/// of L outputs' sums, lane i being output i. For VNNI the values are stored as unsigned bytes,
/// q + 128 (`vpdpbusd` multiplies unsigned by signed bytes): the product then holds 128 x the
/// sum of the activations' group too, which is subtracted back (exact). Per (block, group), the
/// L outputs' scales.
#[derive(Clone, Debug, PartialEq)]
struct Packed {
    kind: PackedFor,
    q: Vec<u8>,
    s: Vec<f32>,
}

impl Packed {
    fn new(kind: PackedFor, q: &[i8], s: &[f32], out: usize, inp: usize, group: usize) -> Packed {
        let (lanes, flip) = (kind.lanes(), kind.flip());
        let (blocks, ng) = (out.div_ceil(lanes), inp / group);
        // Padding rows hold q = 0: their sums are computed, never stored.
        let mut pq = vec![flip; blocks * lanes * inp];
        let mut ps = vec![0.0f32; blocks * ng * lanes];
        for o in 0..out {
            let (b, i) = (o / lanes, o % lanes);
            for k in 0..ng {
                ps[(b * ng + k) * lanes + i] = s[o * ng + k];
                let row = &q[o * inp + k * group..o * inp + (k + 1) * group];
                for (c4, four) in row.chunks_exact(4).enumerate() {
                    let dst = b * lanes * inp + k * group * lanes + c4 * 4 * lanes + i * 4;
                    for (d, &v) in pq[dst..dst + 4].iter_mut().zip(four) {
                        *d = (v as u8) ^ flip;
                    }
                }
            }
        }
        Packed { kind, q: pq, s: ps }
    }
}

impl Q8Matrix {
    /// Quantizes the (out, in) f32 matrix `w` (see the module docs).
    pub fn quantize(w: &[f32], out: usize, inp: usize, group: usize) -> Result<Q8Matrix> {
        check_shape(out, inp, group)?;
        if w.len() != out * inp {
            bail!(
                "Q8_0: a ({out}, {inp}) matrix has {} values, not {}",
                out * inp,
                w.len()
            );
        }
        let mut q = vec![0i8; out * inp];
        let mut s = vec![0.0f32; out * inp / group];
        q.par_chunks_mut(group)
            .zip(s.par_iter_mut())
            .zip(w.par_chunks(group))
            .with_min_len(256)
            .for_each(|((q, s), w)| *s = quantize_group(q, w, f32::round_ties_even));
        let packed = PackedFor::here(group).map(|kind| Packed::new(kind, &q, &s, out, inp, group));
        Ok(Q8Matrix {
            out,
            inp,
            group,
            q,
            s,
            packed,
        })
    }

    /// The matrix back in f32: w = q * scale.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.s[i / self.group])
            .collect()
    }

    fn groups(&self) -> usize {
        self.inp / self.group
    }
}

fn check_shape(out: usize, inp: usize, group: usize) -> Result<()> {
    if group == 0 {
        bail!("Q8_0: the group size must be positive");
    }
    if !inp.is_multiple_of(group) {
        bail!(
            "Q8_0: rows of {inp} values (a ({out}, {inp}) matrix) are not a multiple of the group size {group}"
        );
    }
    Ok(())
}

/// Quantizes one group: writes `q`, returns the scale. `round` is the rounding of x / scale.
#[inline]
pub(crate) fn quantize_group(q: &mut [i8], x: &[f32], round: fn(f32) -> f32) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / Q_MAX;
    if scale == 0.0 {
        q.fill(0);
    } else {
        for (q, &v) in q.iter_mut().zip(x) {
            *q = round(v / scale) as i8;
        }
    }
    scale
}

/// runq.c's activation quantization of each row of `x` (rows of `inp`): `qx` (rows, inp),
/// `sx` (rows, inp / group), C `round` (half away from zero).
pub fn quantize_activations(x: &[f32], group: usize, qx: &mut [i8], sx: &mut [f32]) {
    for ((q, s), x) in qx.chunks_mut(group).zip(sx.iter_mut()).zip(x.chunks(group)) {
        *s = quantize_group(q, x, f32::round);
    }
}

/// out (rows, m.out) = the Q8_0 product of `inp` (rows, m.inp) with `m` (see the module docs).
/// Each output is the same sum whatever the number of rows.
pub fn q8_matmul_forward(out: &mut [f32], inp: &[f32], m: &Q8Matrix) {
    let rows = inp.len() / m.inp;
    assert!(out.len() >= rows * m.out && inp.len() == rows * m.inp);
    if rows == 0 || m.out == 0 {
        return;
    }
    let mut qx = vec![0i8; rows * m.inp];
    let mut sx = vec![0.0f32; rows * m.groups()];
    quantize_activations(inp, m.group, &mut qx, &mut sx);
    let x = QuantRows {
        q: &qx,
        s: &sx,
        rows,
    };
    #[cfg(target_arch = "x86_64")]
    match &m.packed {
        Some(p) if p.kind == PackedFor::Vnni => {
            let x128 = vnni::group_sums_128(&qx, m.group);
            return for_output_blocks(out, m, |o, o0, o1| {
                // SAFETY: `packed` for VNNI exists only where VNNI is present; this task owns
                // o0..o1.
                unsafe { vnni::rows(o, &x128, &x, m, p, o0, o1) }
            });
        }
        Some(p) => {
            return for_output_blocks(out, m, |o, o0, o1| {
                // SAFETY: `packed` for AVX2 exists only where AVX2 is present; this task owns
                // o0..o1.
                unsafe { avx2::packed_rows(o, &x, m, p, o0, o1) }
            });
        }
        _ => {}
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::usable(m) {
        let wide: Vec<i16> = qx.iter().map(|&v| v as i16).collect();
        return for_output_blocks(out, m, |o, o0, o1| {
            // SAFETY: AVX-512 F and BW are present (`usable`); this task owns columns o0..o1.
            unsafe { avx512::rows(o, &wide, &x, m, o0, o1) }
        });
    }
    for_output_blocks(out, m, |o, o0, o1| {
        // SAFETY: this task owns columns o0..o1.
        unsafe { portable_rows(o, &x, m, o0, o1) }
    });
}

/// The quantized input rows.
struct QuantRows<'a> {
    q: &'a [i8],
    s: &'a [f32],
    rows: usize,
}

/// Runs `f(out, o0, o1)` over blocks of output columns in parallel: at least [`TASK_OUTS`]
/// outputs each (a multiple of 16), and no more than 8 blocks per thread (a large classifier
/// then costs a few dozen tasks, not hundreds).
fn for_output_blocks(
    out: &mut [f32],
    m: &Q8Matrix,
    f: impl Fn(*mut f32, usize, usize) + Sync + Send,
) {
    let ptr = SharedMut(out.as_mut_ptr());
    let per = m
        .out
        .div_ceil(8 * rayon::current_num_threads())
        .next_multiple_of(16)
        .max(TASK_OUTS);
    (0..m.out.div_ceil(per))
        .into_par_iter()
        .for_each(|t| f(ptr.get(), t * per, ((t + 1) * per).min(m.out)));
}

/// out[r][o] for every row and o in `o0..o1`, in plain Rust.
///
/// # Safety
/// `out` must address `x.rows * m.out` values, of which the caller owns columns `o0..o1`.
unsafe fn portable_rows(out: *mut f32, x: &QuantRows, m: &Q8Matrix, o0: usize, o1: usize) {
    let (n, g, ng) = (m.inp, m.group, m.groups());
    for r in 0..x.rows {
        let (qx, sx) = (&x.q[r * n..(r + 1) * n], &x.s[r * ng..(r + 1) * ng]);
        for o in o0..o1 {
            let (qw, sw) = (&m.q[o * n..(o + 1) * n], &m.s[o * ng..(o + 1) * ng]);
            let mut val = 0.0f32;
            for (k, (a, b)) in qx.chunks_exact(g).zip(qw.chunks_exact(g)).enumerate() {
                let ival: i32 = a.iter().zip(b).map(|(&a, &b)| a as i32 * b as i32).sum();
                val += ival as f32 * sw[k] * sx[k];
            }
            *out.add(r * m.out + o) = val;
        }
    }
}

/// The AVX-512 VNNI path (`vpdpbusd`) over [`Packed`] weights.
mod vnni {
    /// Whether matrices of this group size get the packed layout on this CPU.
    pub(super) fn usable(group: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            group.is_multiple_of(16)
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = group;
            false
        }
    }

    /// 128 x the sum of each group of the quantized rows: what the unsigned weights add.
    pub(super) fn group_sums_128(qx: &[i8], group: usize) -> Vec<i32> {
        qx.chunks(group)
            .map(|g| 128 * g.iter().map(|&v| v as i32).sum::<i32>())
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) use imp::rows;

    #[cfg(target_arch = "x86_64")]
    mod imp {
        use super::super::avx512::{add_group_term, store_outputs};
        use super::super::{Packed, Q8Matrix, QuantRows};
        use std::arch::x86_64::*;

        /// [`super::super::portable_rows`] for o0..o1 (o0 a multiple of 16), `x128` being
        /// [`super::group_sums_128`] of the quantized rows. Per block of 16 outputs and group,
        /// four running sums of `vpdpbusd` (lane i: output i), added, less 128 x the
        /// activations' sum: the exact integer sum; then (isum * sw) * sx added to the 16
        /// values lane-wise, in group order.
        ///
        /// # Safety
        /// AVX-512 F and VNNI must be present; as [`super::super::portable_rows`].
        #[target_feature(enable = "avx512f,avx512vnni")]
        pub(crate) unsafe fn rows(
            out: *mut f32,
            x128: &[i32],
            x: &QuantRows,
            m: &Q8Matrix,
            p: &Packed,
            o0: usize,
            o1: usize,
        ) {
            let (n, g, ng) = (m.inp, m.group, m.inp / m.group);
            debug_assert!(o0.is_multiple_of(16) && p.kind.lanes() == 16);
            assert!(p.q.len() >= o1.div_ceil(16) * 16 * n && x.q.len() >= x.rows * n);
            assert!(x128.len() >= x.rows * ng && x.s.len() >= x.rows * ng);
            let mut o = o0;
            while o < o1 {
                let (b, n_out) = (o / 16, (o1 - o).min(16));
                let wb = p.q.as_ptr().add(b * 16 * n);
                for r in 0..x.rows {
                    let xr = x.q.as_ptr().add(r * n);
                    let mut val = _mm512_setzero_ps();
                    for k in 0..ng {
                        let (wg, xg) = (wb.add(k * g * 16), xr.add(k * g));
                        let mut acc = [_mm512_setzero_si512(); 4];
                        let mut c4 = 0;
                        while c4 < g / 4 {
                            for (a, acc) in acc.iter_mut().enumerate() {
                                let xb = _mm512_set1_epi32(
                                    (xg.add(4 * (c4 + a)) as *const i32).read_unaligned(),
                                );
                                let wv = _mm512_loadu_si512(wg.add(64 * (c4 + a)) as *const _);
                                *acc = _mm512_dpbusd_epi32(*acc, wv, xb);
                            }
                            c4 += 4;
                        }
                        let at = (b * ng + k) * 16;
                        let dp = _mm512_add_epi32(
                            _mm512_add_epi32(acc[0], acc[1]),
                            _mm512_add_epi32(acc[2], acc[3]),
                        );
                        let isum = _mm512_sub_epi32(dp, _mm512_set1_epi32(x128[r * ng + k]));
                        let sw = _mm512_loadu_ps(p.s.as_ptr().add(at));
                        val = add_group_term(val, isum, sw, *x.s.get_unchecked(r * ng + k));
                    }
                    store_outputs(out.add(r * m.out + o), val, n_out);
                }
                o += n_out;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Q8Matrix, QuantRows};
    use std::arch::x86_64::*;

    /// Whether this CPU and this matrix take the AVX-512 path (groups of a multiple of 32).
    pub(super) fn usable(m: &Q8Matrix) -> bool {
        m.group.is_multiple_of(32)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }

    /// [`super::portable_rows`] with AVX-512, `wide` being the quantized rows as i16. Sixteen
    /// outputs at a time: each output's group sum is 16 lanes of i32 (`madd` of i16 pairs, exact),
    /// the 16 outputs' lanes are summed in one transpose-and-add tree, and the group term
    /// (isum * sw) * sx is added to the 16 running values lane-wise: per output, the same f32
    /// operations in the same order as the portable path.
    ///
    /// # Safety
    /// AVX-512 F and BW must be present; as [`super::portable_rows`].
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn rows(
        out: *mut f32,
        wide: &[i16],
        x: &QuantRows,
        m: &Q8Matrix,
        o0: usize,
        o1: usize,
    ) {
        let (n, g, ng) = (m.inp, m.group, m.inp / m.group);
        assert!(m.q.len() >= o1 * n && wide.len() >= x.rows * n && x.s.len() >= x.rows * ng);
        let mut o = o0;
        while o < o1 {
            let n_out = (o1 - o).min(16);
            // A short last block repeats its last row (computed, not stored).
            let wr: [*const i8; 16] =
                std::array::from_fn(|i| m.q.as_ptr().add((o + i.min(n_out - 1)) * n));
            let srow: [i32; 16] = std::array::from_fn(|i| ((o + i.min(n_out - 1)) * ng) as i32);
            let sidx = _mm512_loadu_si512(srow.as_ptr() as *const _);
            for r in 0..x.rows {
                let xr = wide.as_ptr().add(r * n);
                let mut val = _mm512_setzero_ps();
                for k in 0..ng {
                    let mut acc = [_mm512_setzero_si512(); 16];
                    let mut j = k * g;
                    while j < (k + 1) * g {
                        let xv = _mm512_loadu_si512(xr.add(j) as *const _);
                        for (a, w) in acc.iter_mut().zip(&wr) {
                            let wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.add(j) as *const _));
                            *a = _mm512_add_epi32(*a, _mm512_madd_epi16(xv, wv));
                        }
                        j += 32;
                    }
                    let isum = reduce16(&acc);
                    let sw = _mm512_i32gather_ps::<4>(
                        _mm512_add_epi32(sidx, _mm512_set1_epi32(k as i32)),
                        m.s.as_ptr() as *const _,
                    );
                    val = add_group_term(val, isum, sw, *x.s.get_unchecked(r * ng + k));
                }
                store_outputs(out.add(r * m.out + o), val, n_out);
            }
            o += n_out;
        }
    }

    /// `val + (isum * sw) * sx` lane-wise: one group's term for 16 outputs, in the portable
    /// path's order of operations.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn add_group_term(val: __m512, isum: __m512i, sw: __m512, sx: f32) -> __m512 {
        let term = _mm512_mul_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(isum), sw),
            _mm512_set1_ps(sx),
        );
        _mm512_add_ps(val, term)
    }

    /// The first `n` of 16 output values to `out`.
    ///
    /// # Safety
    /// `out` must address `n` writable values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn store_outputs(out: *mut f32, val: __m512, n: usize) {
        let mut lanes = [0.0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), val);
        for (i, &v) in lanes.iter().enumerate().take(n) {
            *out.add(i) = v;
        }
    }

    /// Lane i of the result = the sum of the 16 lanes of `v[i]` (exact integer sums).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn reduce16(v: &[__m512i; 16]) -> __m512i {
        // Pairs (a, b): each 128-bit chunk holds [a, b, a, b] partials.
        let l1: [__m512i; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
        });
        // Each 128-bit chunk holds [a, b, c, d] partials.
        let l2: [__m512i; 4] = std::array::from_fn(|i| {
            let (a, b) = (l1[2 * i], l1[2 * i + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
        });
        // Chunks [abcd, abcd, efgh, efgh].
        let l3: [__m512i; 2] = std::array::from_fn(|i| {
            let (a, b) = (l2[2 * i], l2[2 * i + 1]);
            _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
            )
        });
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(l3[0], l3[1]),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(l3[0], l3[1]),
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Packed, Q8Matrix, QuantRows};
    use std::arch::x86_64::*;

    /// Whether matrices of this group size get the AVX2 [`Packed`] layout on this CPU: AVX2
    /// without AVX-512 BW (which has its own path), groups of whole 4s.
    pub(super) fn packed_usable(group: usize) -> bool {
        use std::arch::is_x86_feature_detected as has;
        group.is_multiple_of(4) && has!("avx2") && !(has!("avx512f") && has!("avx512bw"))
    }

    /// [`super::portable_rows`] for o0..o1 (o0 a multiple of 8) over the AVX2 [`Packed`]
    /// weights, a decoding step's few rows or a prompt's many (the 8 outputs' 6 KiB of a GPT-2
    /// block stay in L1 while a prompt's rows pass): per block of 8 outputs, up to 4 rows at a
    /// time read each 32 bytes of weights once. Per group, each output's integer sum is exact, then the group term (isum * sw) * sx
    /// is added lane-wise: the portable path's f32 operations in its order, so the same bits.
    ///
    /// # Safety
    /// AVX2 must be present; as [`super::portable_rows`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn packed_rows(
        out: *mut f32,
        x: &QuantRows,
        m: &Q8Matrix,
        p: &Packed,
        o0: usize,
        o1: usize,
    ) {
        let (n, ng) = (m.inp, m.inp / m.group);
        debug_assert!(o0.is_multiple_of(8) && p.kind.lanes() == 8);
        assert!(p.q.len() >= o1.div_ceil(8) * 8 * n && p.s.len() >= o1.div_ceil(8) * 8 * ng);
        assert!(x.q.len() >= x.rows * n && x.s.len() >= x.rows * ng);
        let mut o = o0;
        while o < o1 {
            let (b, n_out) = (o / 8, (o1 - o).min(8));
            let block = Block {
                q: p.q.as_ptr().add(b * 8 * n) as *const i8,
                s: p.s.as_ptr().add(b * 8 * ng),
                out: out.add(o),
                n_out,
            };
            let mut r = 0;
            while r < x.rows {
                r += match x.rows - r {
                    4.. => block_rows::<4>(block, x, m, r),
                    3 => block_rows::<3>(block, x, m, r),
                    2 => block_rows::<2>(block, x, m, r),
                    _ => block_rows::<1>(block, x, m, r),
                };
            }
            o += n_out;
        }
    }

    /// One packed block of 8 outputs and where its first output goes.
    #[derive(Clone, Copy)]
    struct Block {
        q: *const i8,
        s: *const f32,
        out: *mut f32,
        n_out: usize,
    }

    /// Rows r0..r0 + R of one [`Block`]; returns R.
    #[target_feature(enable = "avx2")]
    unsafe fn block_rows<const R: usize>(
        t: Block,
        x: &QuantRows,
        m: &Q8Matrix,
        r0: usize,
    ) -> usize {
        let (n, g, ng) = (m.inp, m.group, m.inp / m.group);
        let xr: [*const i8; R] = std::array::from_fn(|i| x.q.as_ptr().add((r0 + i) * n));
        let ones = _mm256_set1_epi16(1);
        let mut val = [_mm256_setzero_ps(); R];
        for k in 0..ng {
            let mut acc = [_mm256_setzero_si256(); R];
            for c4 in 0..g / 4 {
                let w = _mm256_loadu_si256(t.q.add((k * g + 4 * c4) * 8) as *const __m256i);
                let w_abs = _mm256_abs_epi8(w);
                for (a, xr) in acc.iter_mut().zip(&xr) {
                    let four = (xr.add(k * g + 4 * c4) as *const i32).read_unaligned();
                    let xw = _mm256_sign_epi8(_mm256_set1_epi32(four), w);
                    let pairs = _mm256_maddubs_epi16(w_abs, xw);
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                }
            }
            let sw = _mm256_loadu_ps(t.s.add(k * 8));
            for (i, (v, a)) in val.iter_mut().zip(&acc).enumerate() {
                let sx = _mm256_set1_ps(*x.s.get_unchecked((r0 + i) * ng + k));
                let term = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(*a), sw), sx);
                *v = _mm256_add_ps(*v, term);
            }
        }
        for (i, v) in val.iter().enumerate() {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), *v);
            let row = t.out.add((r0 + i) * m.out);
            for (o, &l) in lanes.iter().enumerate().take(t.n_out) {
                *row.add(o) = l;
            }
        }
        R
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    /// The module's formula in f64 from the quantized values: the integer part exact.
    fn reference(x: &[f32], m: &Q8Matrix) -> Vec<f64> {
        let rows = x.len() / m.inp;
        let ng = m.groups();
        let mut qx = vec![0i8; x.len()];
        let mut sx = vec![0.0f32; rows * ng];
        quantize_activations(x, m.group, &mut qx, &mut sx);
        let mut out = vec![0.0f64; rows * m.out];
        for r in 0..rows {
            for o in 0..m.out {
                let mut val = 0.0f64;
                for k in 0..ng {
                    let mut ival = 0i64;
                    for j in k * m.group..(k + 1) * m.group {
                        ival += qx[r * m.inp + j] as i64 * m.q[o * m.inp + j] as i64;
                    }
                    val += ival as f64 * m.s[o * ng + k] as f64 * sx[r * ng + k] as f64;
                }
                out[r * m.out + o] = val;
            }
        }
        out
    }

    #[test]
    fn quantizing_keeps_each_value_within_half_a_step() {
        let (out, inp, g) = (7, 192, 64);
        let mut w = fill(out * inp, 1);
        w[5] = 0.5; // a group whose values are not all of one size
        let m = Q8Matrix::quantize(&w, out, inp, g).unwrap();
        let back = m.dequantize();
        for (i, (&a, &b)) in w.iter().zip(&back).enumerate() {
            let step = m.s[i / g];
            assert!(
                (a - b).abs() <= 0.5 * step * (1.0 + 1e-6),
                "[{i}] {a} vs {b}"
            );
        }
        // The largest value of each group is +-127 steps.
        for (k, q) in m.q.chunks(g).enumerate() {
            assert_eq!(
                q.iter().map(|v| v.unsigned_abs()).max(),
                Some(127),
                "group {k}"
            );
        }
        // Half-way cases round to even for weights, away from zero for activations.
        let w = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5];
        let m = Q8Matrix::quantize(&w, 1, 6, 6).unwrap();
        assert_eq!(m.s, [1.0]);
        assert_eq!(m.q, [127, 0, 2, 2, 0, -2]);
        let (mut qx, mut sx) = ([0i8; 6], [0.0f32; 1]);
        quantize_activations(&w, 6, &mut qx, &mut sx);
        assert_eq!(qx, [127, 1, 2, 3, -1, -3]);
    }

    #[test]
    fn rows_that_are_not_whole_groups_are_refused() {
        let e = Q8Matrix::quantize(&[0.0; 96], 2, 48, 64).unwrap_err();
        assert!(
            e.to_string().contains("multiple of the group size 64"),
            "{e}"
        );
        assert!(Q8Matrix::quantize(&[0.0; 4], 2, 3, 1).is_err());
        assert!(Q8Matrix::quantize(&[0.0; 4], 2, 2, 0).is_err());
    }

    #[test]
    fn the_product_matches_f64_on_odd_shapes_and_does_not_depend_on_the_batch() {
        for (out, inp, g) in [
            (37, 64, 64),
            (150, 192, 64),
            (16, 128, 32),
            (3, 96, 32),
            (5, 30, 10),
        ] {
            let m = Q8Matrix::quantize(&fill(out * inp, out), out, inp, g).unwrap();
            for rows in [1, 2, 5, 17] {
                let x = fill(rows * inp, rows + 7);
                let mut got = vec![0.0f32; rows * out];
                q8_matmul_forward(&mut got, &x, &m);
                let want = reference(&x, &m);
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (1.0 + b.abs());
                    assert!(
                        (a as f64 - b).abs() <= tol,
                        "({out},{inp}) rows={rows} [{i}]: {a} vs {b}"
                    );
                }
                for r in 0..rows {
                    let mut one = vec![0.0f32; out];
                    q8_matmul_forward(&mut one, &x[r * inp..(r + 1) * inp], &m);
                    assert_eq!(one, got[r * out..(r + 1) * out], "row {r} of {rows}");
                }
            }
        }
    }

    #[test]
    fn the_portable_and_simd_paths_give_the_same_bits() {
        for (out, inp, g) in [(37, 64, 64), (150, 192, 64), (16, 128, 32), (70, 256, 64)] {
            let mut w = fill(out * inp, 3);
            w[inp..inp + g].fill(0.0); // a group of zeros
            let m = Q8Matrix::quantize(&w, out, inp, g).unwrap();
            for rows in [1, 2, 3, 8, 9] {
                let mut x = fill(rows * inp, 4);
                x[..g].fill(0.0);
                let mut qx = vec![0i8; x.len()];
                let mut sx = vec![0.0f32; rows * inp / g];
                quantize_activations(&x, g, &mut qx, &mut sx);
                let q = QuantRows {
                    q: &qx,
                    s: &sx,
                    rows,
                };
                let mut portable = vec![0.0f32; rows * out];
                // SAFETY: one call owns every column.
                unsafe { portable_rows(portable.as_mut_ptr(), &q, &m, 0, out) };
                let mut dispatched = vec![0.0f32; rows * out];
                q8_matmul_forward(&mut dispatched, &x, &m);
                assert_eq!(portable, dispatched, "({out},{inp}) rows={rows}");
                #[cfg(target_arch = "x86_64")]
                if let Some(p) = m.packed.as_ref().filter(|p| p.kind == PackedFor::Vnni) {
                    let x128 = vnni::group_sums_128(&qx, g);
                    let mut fast = vec![0.0f32; rows * out];
                    // SAFETY: packed implies VNNI; one call owns every column.
                    unsafe { vnni::rows(fast.as_mut_ptr(), &x128, &q, &m, p, 0, out) };
                    assert_eq!(
                        portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "vnni ({out},{inp}) rows={rows}"
                    );
                }
                #[cfg(target_arch = "x86_64")]
                if avx512::usable(&m) {
                    let wide: Vec<i16> = qx.iter().map(|&v| v as i16).collect();
                    let mut fast = vec![0.0f32; rows * out];
                    // SAFETY: AVX-512 checked; one call owns every column.
                    unsafe { avx512::rows(fast.as_mut_ptr(), &wide, &q, &m, 0, out) };
                    assert_eq!(
                        portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "({out},{inp}) rows={rows}"
                    );
                }
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // The decoding path's layout, whatever this CPU's quantization chose.
                    let p = Packed::new(PackedFor::Avx2, &m.q, &m.s, out, inp, g);
                    let mut fast = vec![0.0f32; rows * out];
                    let half = (out / 2).next_multiple_of(8).min(out);
                    for (o0, o1) in [(0, half), (half, out)] {
                        // SAFETY: AVX2 checked; the two calls own disjoint columns.
                        unsafe { avx2::packed_rows(fast.as_mut_ptr(), &q, &m, &p, o0, o1) };
                    }
                    assert_eq!(
                        portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "avx2 packed ({out},{inp}) rows={rows}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_group_of_zeros_has_scale_zero_and_contributes_nothing() {
        let (out, inp, g) = (4, 128, 64);
        let mut w = fill(out * inp, 9);
        w[..g].fill(0.0);
        let m = Q8Matrix::quantize(&w, out, inp, g).unwrap();
        assert_eq!(m.s[0], 0.0);
        assert!(m.q[..g].iter().all(|&q| q == 0));
        assert!(m.dequantize()[..g].iter().all(|&v| v == 0.0));
        // Zero activations in one group, and a row of zeros: finite results.
        let mut x = fill(2 * inp, 2);
        x[g..inp].fill(0.0);
        x[inp..].fill(0.0);
        let mut got = vec![f32::NAN; 2 * out];
        q8_matmul_forward(&mut got, &x, &m);
        assert!(got.iter().all(|v| v.is_finite()));
        assert!(got[out..].iter().all(|&v| v == 0.0));
        let want = reference(&x, &m);
        for (&a, &b) in got.iter().zip(&want) {
            assert!((a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
}

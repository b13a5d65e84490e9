//! Causal self-attention, memory-efficient: the forward pass keeps only each row's log-sum-exp,
//! and the backward pass recomputes the probabilities from it (flash-attention style), so no
//! B x H x T x T tensor is ever stored.
//!
//! Per head, with S = Q K^T / sqrt(hs) masked to j <= i, P = softmax(S), Z the dropout mask
//! (kept / (1-p)), O = (P*Z) V:
//!   dV = (P*Z)^T dO,  dP = (dO V^T) * Z,  D_i = dO_i . O_i,  dS = P * (dP - D),
//!   dQ = dS K / sqrt(hs),  dK = dS^T Q / sqrt(hs).
//! Work is split over (batch, head) pairs and, inside one, over blocks of query rows: a block of
//! rows [i0, i1) only ever needs keys [0, i1), so the masked upper triangle is mostly skipped.
//!
//! Grouped-query attention (Llama): `n_kv_head` key/value heads serve `n_head` query heads, query
//! head h reading kv head h / (n_head / n_kv_head). A packed qkv row is (n_head + 2*n_kv_head)*hs
//! wide: q in columns [0, n_head*hs), k in [n_head*hs, (n_head + n_kv_head)*hs), v after that;
//! the output is (rows, n_head*hs). dK and dV of a kv head sum over its group's query heads: the
//! backward pass runs one task per (batch, kv head) and loops over the group in head order, so
//! the sums are deterministic. With n_kv_head == n_head (GPT-2) this is plain multi-head attention.

use super::math::{dot, dot_short, fast_exp, min_items_per_task, sum_map, SharedMut};
use super::matmul::{gemm_into, Precision, View, WeightValue};
use super::matmul_bf16::Bf16;
use super::q8::quantize_group;
use crate::rng::keep;
use rayon::prelude::*;
use std::cell::RefCell;

/// Query rows per block.
const ROW_BLOCK: usize = 64;

thread_local! {
    /// Per-thread scratch for score blocks; grows to its largest size once, then is reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread f32 copies of a bf16 cache's keys and values, for the paths that read f32.
    static WIDE_KV: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What a KV cache holds: f32, bf16, or int8 with one f32 scale per row of `head_size` values
/// (the row quantized as one Q8_0 group: x = q * scale). A decoding step reads the cache as well as
/// the weights, so at depth its bytes per value count.
pub trait CacheValue: WeightValue {
    /// Whether each row carries a scale.
    const SCALED: bool = false;
    /// Writes the row `src` into `dst`; returns the scale it is read back with.
    fn store_row(dst: &mut [Self], src: &[f32]) -> f32 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(x);
        }
        1.0
    }
}

impl CacheValue for f32 {}
impl CacheValue for Bf16 {}
impl CacheValue for i8 {
    const SCALED: bool = true;
    fn store_row(dst: &mut [i8], src: &[f32]) -> f32 {
        quantize_group(dst, src, f32::round_ties_even)
    }
}

/// A KV cache as attention reads it: keys and values (rows, H_kv, max_t, hs) and, when `K` is
/// scaled, each row of hs values' scale, (rows, H_kv, max_t); the scales are empty otherwise.
#[derive(Clone, Copy)]
pub struct CacheView<'a, K> {
    pub k: &'a [K],
    pub v: &'a [K],
    pub k_scale: &'a [f32],
    pub v_scale: &'a [f32],
    pub max_t: usize,
}

/// One (row, kv head)'s key and value scales, from its first position on; `None` for a cache
/// without scales.
type HeadScales = Option<(*const f32, *const f32)>;

/// One query's scores against the raw cached keys, turned in place into the weights of the
/// raw cached values: with scales, each score times its key's scale, the softmax, then each
/// probability times its value's scale; without, the softmax alone.
///
/// # Safety
/// The scales must address `p.len()` values each.
unsafe fn weights_from_scores(p: &mut [f32], scales: HeadScales) {
    let rescale = |p: &mut [f32], s: *const f32| {
        for (j, x) in p.iter_mut().enumerate() {
            *x *= *s.add(j);
        }
    };
    if let Some((ks, _)) = scales {
        rescale(p, ks);
    }
    softmax_row(p, p.len());
    if let Some((_, vs)) = scales {
        rescale(p, vs);
    }
}

/// Runs `f` on the first `n` rows of `hs` keys and values at `k` and `v` as f32: the cache
/// itself when it holds f32, else copies widened (and multiplied by their rows' scales) into this
/// thread's buffers.
///
/// # Safety
/// `k` and `v` must address `n * hs` values each, the scales `n` each.
unsafe fn with_f32_kv<K: WeightValue, R>(
    k: *const K,
    v: *const K,
    scales: HeadScales,
    n: usize,
    hs: usize,
    f: impl FnOnce(*const f32, *const f32) -> R,
) -> R {
    let span = n * hs;
    WIDE_KV.with(|bufs| {
        let (kb, vb) = &mut *bufs.borrow_mut();
        let (k, v) = (
            std::slice::from_raw_parts(k, span),
            std::slice::from_raw_parts(v, span),
        );
        match scales {
            None => f(K::widen(k, kb).as_ptr(), K::widen(v, vb).as_ptr()),
            Some((ks, vs)) => {
                for (rows, s, buf) in [(k, ks, &mut *kb), (v, vs, &mut *vb)] {
                    let s = std::slice::from_raw_parts(s, n);
                    buf.clear();
                    buf.extend(
                        rows.chunks_exact(hs)
                            .zip(s)
                            .flat_map(|(r, &s)| r.iter().map(move |x| x.to_f32() * s)),
                    );
                }
                f(kb.as_ptr(), vb.as_ptr())
            }
        }
    })
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub n_head: usize,
    pub head_size: usize,
    /// Key/value heads; divides n_head (n_head for plain multi-head attention).
    pub n_kv_head: usize,
    /// What the score and value products multiply in (softmax, log-sum-exp and the sums stay
    /// f32); backward recomputes the scores in the same precision, so they match forward's.
    pub precision: Precision,
}

impl AttnDims {
    /// Width of the query and of the output: n_head * head_size.
    fn c(&self) -> usize {
        self.n_head * self.head_size
    }

    /// Width of the keys (and of the values): n_kv_head * head_size.
    fn kv_c(&self) -> usize {
        self.n_kv_head * self.head_size
    }

    /// Width of a packed qkv row.
    fn qkv_width(&self) -> usize {
        self.c() + 2 * self.kv_c()
    }

    /// Query heads per kv head. Panics unless n_kv_head divides n_head.
    fn group(&self) -> usize {
        assert!(
            self.n_kv_head > 0 && self.n_head.is_multiple_of(self.n_kv_head),
            "attention: {} kv heads do not divide {} query heads",
            self.n_kv_head,
            self.n_head
        );
        self.n_head / self.n_kv_head
    }
}

/// Dropout on attention probabilities: the mask element for (batch b, head h, query i, key j)
/// is `keep(key, ((b*H + h)*T + i)*T + j)` where T is `max_t`.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout {
    pub key: u64,
    pub p: f32,
    pub max_t: usize,
}

impl AttnDropout {
    #[inline]
    fn index(&self, bh: usize, i: usize, j: usize) -> u64 {
        ((bh * self.max_t + i) * self.max_t + j) as u64
    }
}

/// Softmax of one score row over keys [0, n_keys) in place; the rest of the row is zeroed.
/// Returns the log-sum-exp.
#[inline]
fn softmax_row(row: &mut [f32], n_keys: usize) -> f32 {
    let (live, dead) = row.split_at_mut(n_keys);
    // Eight lanes each (the maximum is exact in any order): a single running max or sum
    // keeps the loops scalar, and decoding a small model spends most of its attention here.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = live.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for v in live.iter_mut() {
        *v = fast_exp(*v - m);
    }
    let sum = sum_map(live, |v| v);
    let inv = 1.0 / sum;
    for v in live.iter_mut() {
        *v *= inv;
    }
    dead.fill(0.0);
    m + sum.ln()
}

/// One (batch, head): queries at absolute positions q_pos0.., keys/values 0..q_pos0+n_q.
/// q, k, v are strided row views (row stride in elements); out rows have stride `out_rs`.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_head(
    q: *const f32,
    q_rs: usize,
    k: *const f32,
    v: *const f32,
    kv_rs: usize,
    out: *mut f32,
    out_rs: usize,
    n_q: usize,
    q_pos0: usize,
    hs: usize,
    mut lse: Option<&mut [f32]>,
    dropout: Option<(AttnDropout, usize)>,
    precision: Precision,
) {
    let scale = 1.0 / (hs as f32).sqrt();
    let mut i0 = 0;
    while i0 < n_q {
        let rb = ROW_BLOCK.min(n_q - i0);
        let n_keys = q_pos0 + i0 + rb;
        with_scratch(rb * n_keys, |s| {
            gemm_into(
                precision,
                rb,
                n_keys,
                hs,
                s.as_mut_ptr(),
                n_keys,
                false,
                View {
                    ptr: q.add(i0 * q_rs),
                    rs: q_rs as isize,
                    cs: 1,
                },
                View {
                    ptr: k,
                    rs: 1,
                    cs: kv_rs as isize,
                },
                scale,
                false,
            );
            for r in 0..rb {
                let pos = q_pos0 + i0 + r;
                let row = &mut s[r * n_keys..(r + 1) * n_keys];
                let l = softmax_row(row, pos + 1);
                if let Some(lse) = lse.as_deref_mut() {
                    lse[i0 + r] = l;
                }
                if let Some((d, bh)) = dropout {
                    let inv_keep = 1.0 / (1.0 - d.p);
                    for (j, p) in row[..=pos].iter_mut().enumerate() {
                        *p = if keep(d.key, d.index(bh, pos, j), d.p) {
                            *p * inv_keep
                        } else {
                            0.0
                        };
                    }
                }
            }
            gemm_into(
                precision,
                rb,
                hs,
                n_keys,
                out.add(i0 * out_rs),
                out_rs,
                false,
                View {
                    ptr: s.as_ptr(),
                    rs: n_keys as isize,
                    cs: 1,
                },
                View {
                    ptr: v,
                    rs: kv_rs as isize,
                    cs: 1,
                },
                1.0,
                false,
            );
        });
        i0 += rb;
    }
}

/// One query against `n_keys` cached keys (a decoding step): scores are dot products with the
/// key rows and the output a weighted sum of the value rows, so the cache is read once, in
/// order, with nothing copied (gemm would first pack the transposed keys). Keys and values of
/// bf16 or int8 are widened as they are loaded (AVX-512, AVX2; the portable path widens them
/// first); an int8 row's scale multiplies its score, and its probability before the sum:
/// q . (s_j k_j) = s_j (q . k_j) and sum_j p_j (t_j v_j) = sum_j (p_j t_j) v_j.
///
/// # Safety
/// `k` and `v` must address `n_keys` rows of `hs` values, the scales `n_keys` values each.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one_query<K: WeightValue>(
    q: *const f32,
    k: *const K,
    v: *const K,
    scales: HeadScales,
    out: *mut f32,
    n_keys: usize,
    hs: usize,
    scale: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(run) = simd_one_query::<K>(hs) {
        return with_scratch(n_keys, |p| run(q, k, v, scales, out, p, scale));
    }
    with_f32_kv(k, v, scales, n_keys, hs, |k, v| {
        attend_one_query_portable(q, k, v, hs, out, n_keys, hs, scale)
    })
}

/// A vectorised [`attend_one_query`] for this CPU and head size, if there is one: AVX-512 for
/// heads of 32, 64 and 128, else AVX2 for 32 and 64.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn simd_one_query<K: WeightValue>(
    hs: usize,
) -> Option<unsafe fn(*const f32, *const K, *const K, HeadScales, *mut f32, &mut [f32], f32)> {
    use std::arch::is_x86_feature_detected as has;
    // bf16 loads use AVX-512 BW's 16-bit masks (as the matmuls: every AVX-512 CPU but Xeon Phi).
    if has!("avx512f") && has!("avx512bw") {
        match hs {
            32 => return Some(one_query_avx512::<K, 2>),
            64 => return Some(one_query_avx512::<K, 4>),
            128 => return Some(one_query_avx512::<K, 8>),
            _ => {}
        }
    }
    if has!("avx2") && has!("fma") {
        match hs {
            32 => return Some(one_query_avx2::<K, 4>),
            64 => return Some(one_query_avx2::<K, 8>),
            _ => {}
        }
    }
    None
}

/// [`attend_one_query`] without AVX-512, on f32 keys and values.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one_query_portable(
    q: *const f32,
    k: *const f32,
    v: *const f32,
    kv_rs: usize,
    out: *mut f32,
    n_keys: usize,
    hs: usize,
    scale: f32,
) {
    let q = std::slice::from_raw_parts(q, hs);
    let out = std::slice::from_raw_parts_mut(out, hs);
    with_scratch(n_keys, |p| {
        let key = |j: usize| std::slice::from_raw_parts(k.add(j * kv_rs), hs);
        if hs < 64 {
            // A small head: `dot`'s own short path, inlined into this loop.
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = scale * dot_short(q, key(j));
            }
        } else {
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = scale * dot(q, key(j));
            }
        }
        softmax_row(p, n_keys);
        if hs.is_multiple_of(16) {
            weighted_rows::<16>(out, p, v, kv_rs);
        } else if hs.is_multiple_of(8) {
            weighted_rows::<8>(out, p, v, kv_rs);
        } else {
            out.fill(0.0);
            for (j, &pj) in p.iter().enumerate() {
                let vj = std::slice::from_raw_parts(v.add(j * kv_rs), hs);
                for (o, &x) in out.iter_mut().zip(vj) {
                    *o = pj.mul_add(x, *o);
                }
            }
        }
    })
}

/// [`attend_one_query`] for a head of 16 x `NV` values, in AVX-512 registers: the query and the
/// output stay in `NV` registers each while the keys, then the values, stream by once, in order
/// (the portable loops compiled to scalar multiply-adds and read each value row in 16-wide
/// passes). Each score is 16 lane-wise partial sums reduced across lanes; each output lane sums
/// over the keys in order. `p` holds the scores (its length is the number of keys).
///
/// # Safety
/// As [`attend_one_query`]; AVX-512 F and BW must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn one_query_avx512<K: WeightValue, const NV: usize>(
    q: *const f32,
    k: *const K,
    v: *const K,
    scales: HeadScales,
    out: *mut f32,
    p: &mut [f32],
    scale: f32,
) {
    use std::arch::x86_64::*;
    let qv: [__m512; NV] = std::array::from_fn(|c| _mm512_loadu_ps(q.add(16 * c)));
    for (j, pj) in p.iter_mut().enumerate() {
        let row = k.add(j * 16 * NV);
        let mut s = _mm512_mul_ps(qv[0], K::load16(row, 16));
        for (c, &qc) in qv.iter().enumerate().skip(1) {
            s = _mm512_fmadd_ps(qc, K::load16(row.add(16 * c), 16), s);
        }
        *pj = scale * _mm512_reduce_add_ps(s);
    }
    weights_from_scores(p, scales);
    let mut acc = [_mm512_setzero_ps(); NV];
    for (j, &pj) in p.iter().enumerate() {
        let (w, row) = (_mm512_set1_ps(pj), v.add(j * 16 * NV));
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(w, K::load16(row.add(16 * c), 16), *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(16 * c), *a);
    }
}

/// [`one_query_avx512`] in AVX2's 8-lane registers, for heads of 8 x `NV` values up to 64
/// (query and output then take 8 of the 16 registers each, in turn): a bf16 cache is read as it
/// is, not widened into a copy first.
///
/// # Safety
/// As [`attend_one_query`]; AVX2 and FMA must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_query_avx2<K: WeightValue, const NV: usize>(
    q: *const f32,
    k: *const K,
    v: *const K,
    scales: HeadScales,
    out: *mut f32,
    p: &mut [f32],
    scale: f32,
) {
    use std::arch::x86_64::*;
    let qv: [__m256; NV] = std::array::from_fn(|c| _mm256_loadu_ps(q.add(8 * c)));
    for (j, pj) in p.iter_mut().enumerate() {
        let row = k.add(j * 8 * NV);
        let mut s = _mm256_mul_ps(qv[0], K::load8(row));
        for (c, &qc) in qv.iter().enumerate().skip(1) {
            s = _mm256_fmadd_ps(qc, K::load8(row.add(8 * c)), s);
        }
        // The 8 lanes added: halves, then pairs, then the last two.
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        *pj = scale * _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
    }
    weights_from_scores(p, scales);
    let mut acc = [_mm256_setzero_ps(); NV];
    for (j, &pj) in p.iter().enumerate() {
        let (w, row) = (_mm256_set1_ps(pj), v.add(j * 8 * NV));
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(w, K::load8(row.add(8 * c)), *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(8 * c), *a);
    }
}

/// out = sum_j p[j] * v_j over the value rows v_j (stride `kv_rs`), W columns at a time, with
/// four partial sums (key j into sum j % 4, added pairwise at the end): a single running sum
/// makes each key wait for the previous key's multiply-add, which for a small head is all the
/// time there is.
unsafe fn weighted_rows<const W: usize>(out: &mut [f32], p: &[f32], v: *const f32, kv_rs: usize) {
    for (d0, o) in out.chunks_exact_mut(W).enumerate().map(|(i, o)| (i * W, o)) {
        let mut acc = [[0.0f32; W]; 4];
        let mut quads = p.chunks_exact(4);
        let row = |j: usize| std::slice::from_raw_parts(v.add(j * kv_rs + d0), W);
        let mut j = 0;
        for q in &mut quads {
            let rows = [row(j), row(j + 1), row(j + 2), row(j + 3)];
            for k in 0..4 {
                for i in 0..W {
                    acc[k][i] = q[k].mul_add(rows[k][i], acc[k][i]);
                }
            }
            j += 4;
        }
        for &pj in quads.remainder() {
            let r = row(j);
            for i in 0..W {
                acc[0][i] = pj.mul_add(r[i], acc[0][i]);
            }
            j += 1;
        }
        for i in 0..W {
            o[i] = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
        }
    }
}

/// Training forward. qkv: (B, T, (H + 2*H_kv)*hs) with q, k, v sections (3C wide for plain
/// multi-head attention); out: (B, T, C); lse: (B, H, T).
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    dims: AttnDims,
    t: usize,
    dropout: Option<AttnDropout>,
) {
    let (c, hs, nh) = (dims.c(), dims.head_size, dims.n_head);
    let (kv_c, w, group) = (dims.kv_c(), dims.qkv_width(), dims.group());
    let n_bh = dims.batch * nh;
    assert!(
        qkv.len() >= dims.batch * t * w && out.len() >= dims.batch * t * c && lse.len() >= n_bh * t,
        "attention: buffers too short for {dims:?} and T={t}"
    );
    let out_ptr = SharedMut(out.as_mut_ptr());
    if t == 0 || n_bh == 0 {
        return;
    }
    lse[..n_bh * t]
        .par_chunks_mut(t)
        .enumerate()
        .for_each(|(bh, lse_bh)| {
            let (b, h) = (bh / nh, bh % nh);
            let row0 = b * t * w;
            let (q_off, k_off) = (row0 + h * hs, row0 + c + (h / group) * hs);
            // SAFETY: (b, h) owns out[b, :, h*hs..(h+1)*hs]; qkv is read only; bounds checked above.
            unsafe {
                attend_head(
                    qkv.as_ptr().add(q_off),
                    w,
                    qkv.as_ptr().add(k_off),
                    qkv.as_ptr().add(k_off + kv_c),
                    w,
                    out_ptr.get().add(b * t * c + h * hs),
                    c,
                    t,
                    0,
                    hs,
                    Some(lse_bh),
                    dropout.map(|d| (d, bh)),
                    dims.precision,
                );
            }
        });
}

/// One sequence's queries in a cached forward pass: rows `first..first + n` of `q` and `out`, at
/// positions `pos..pos + n`, attending to cache row `slot`'s keys/values at positions
/// `0..pos + n`. Sequences of one call may sit at different positions.
#[derive(Clone, Copy, Debug)]
pub struct CachedQueries {
    pub slot: usize,
    pub first: usize,
    pub n: usize,
    pub pos: usize,
}

/// Inference with a KV cache. q: rows of stride `q_rs` (the query is the first C columns);
/// `cache`: dims.batch cache rows of f32, bf16 or int8 ([`CacheView`]); out: rows of C.
/// Each (sequence, head) is one task: the sequences of a decoding step run in one parallel pass
/// whatever their positions. `seqs` must be in row order with disjoint rows. A decoding step
/// reads the cache as it is; a pass of several queries (a prompt) widens its head's keys and
/// values to f32 first, a small cost beside its scores.
pub fn attention_forward_cached<K: CacheValue>(
    out: &mut [f32],
    q: &[f32],
    q_rs: usize,
    cache: CacheView<K>,
    dims: AttnDims,
    seqs: &[CachedQueries],
) {
    let (c, hs, nh) = (dims.c(), dims.head_size, dims.n_head);
    let (nkv, group, max_t) = (dims.n_kv_head, dims.group(), cache.max_t);
    let (k_cache, v_cache) = (cache.k, cache.v);
    // What makes the unsafe writes below sound: in-bounds, rows in order and disjoint.
    let cache_len = dims.batch * nkv * max_t * hs;
    assert!(
        !K::SCALED
            || (cache.k_scale.len() * hs >= cache_len && cache.v_scale.len() * hs >= cache_len),
        "cached attention: an int8 cache needs a scale per row"
    );
    let mut next_free_row = 0;
    for s in seqs {
        assert!(
            s.n > 0
                && s.first >= next_free_row
                && s.slot < dims.batch
                && s.pos + s.n <= max_t
                && (s.first + s.n - 1) * q_rs + c <= q.len()
                && (s.first + s.n) * c <= out.len()
                && k_cache.len() >= cache_len
                && v_cache.len() >= cache_len,
            "cached attention: sequence {s:?} out of bounds or overlapping"
        );
        next_free_row = s.first + s.n;
    }
    let out_ptr = SharedMut(out.as_mut_ptr());
    // A (sequence, head) reads its keys and values once, with its queries' scores for each.
    let longest = seqs.iter().map(|s| s.n * (s.pos + s.n)).max().unwrap_or(1);
    let min = min_items_per_task(2 * longest * hs);
    (0..seqs.len() * nh)
        .into_par_iter()
        .with_min_len(min)
        .for_each(|sh| {
            let (s, h) = (&seqs[sh / nh], sh % nh);
            let kv = (s.slot * nkv + h / group) * max_t * hs;
            // SAFETY: (sequence, head) owns its own rows and columns of out (sequences' rows are
            // disjoint); the bounds were checked above; the rest is read only.
            unsafe {
                let (q, k, v) = (
                    q.as_ptr().add(s.first * q_rs + h * hs),
                    k_cache.as_ptr().add(kv),
                    v_cache.as_ptr().add(kv),
                );
                let scales = K::SCALED.then(|| {
                    (
                        cache.k_scale.as_ptr().add(kv / hs),
                        cache.v_scale.as_ptr().add(kv / hs),
                    )
                });
                let out = out_ptr.get().add(s.first * c + h * hs);
                if s.n == 1 {
                    let scale = 1.0 / (hs as f32).sqrt();
                    return attend_one_query(q, k, v, scales, out, s.pos + 1, hs, scale);
                }
                with_f32_kv(k, v, scales, s.pos + s.n, hs, |k, v| {
                    attend_head(
                        q,
                        q_rs,
                        k,
                        v,
                        hs,
                        out,
                        c,
                        s.n,
                        s.pos,
                        hs,
                        None,
                        None,
                        dims.precision,
                    )
                });
            }
        });
}

/// Training backward: dqkv (B, T, (H + 2*H_kv)*hs) is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dims: AttnDims,
    t: usize,
    dropout: Option<AttnDropout>,
) {
    let (c, hs, nh) = (dims.c(), dims.head_size, dims.n_head);
    let (kv_c, w, group, nkv) = (dims.kv_c(), dims.qkv_width(), dims.group(), dims.n_kv_head);
    let rows = dims.batch * t;
    assert!(
        qkv.len() >= rows * w
            && dqkv.len() >= rows * w
            && dout.len() >= rows * c
            && out.len() >= rows * c
            && lse.len() >= dims.batch * nh * t,
        "attention backward: buffers too short for {dims:?} and T={t}"
    );
    let scale = 1.0 / (hs as f32).sqrt();
    let d_ptr = SharedMut(dqkv.as_mut_ptr());
    // One task per (batch, kv head): it owns that kv head's dK and dV, summed over the group's
    // query heads in head order (deterministic), and those query heads' dQ.
    (0..dims.batch * nkv).into_par_iter().for_each(|bkv| {
        let (b, kvh) = (bkv / nkv, bkv % nkv);
        let row0 = b * t * w;
        let k_off = row0 + c + kvh * hs;
        let (k, v) = (unsafe { qkv.as_ptr().add(k_off) }, unsafe {
            qkv.as_ptr().add(k_off + kv_c)
        });
        // SAFETY: (b, kv head) owns dqkv[b, :, k and v columns of kvh] and the q columns of its
        // group's query heads, and writes nothing else; bounds checked above.
        unsafe {
            let (dk, dv) = (d_ptr.get().add(k_off), d_ptr.get().add(k_off + kv_c));
            for i in 0..t {
                for d in [dk, dv] {
                    std::ptr::write_bytes(d.add(i * w), 0, hs);
                }
            }
            for h in kvh * group..(kvh + 1) * group {
                let bh = b * nh + h;
                let q = qkv.as_ptr().add(row0 + h * hs);
                let dq = d_ptr.get().add(row0 + h * hs);
                for i in 0..t {
                    std::ptr::write_bytes(dq.add(i * w), 0, hs);
                }
                let lse = &lse[bh * t..(bh + 1) * t];
                let mut i0 = 0;
                while i0 < t {
                    let rb = ROW_BLOCK.min(t - i0);
                    let n_keys = i0 + rb;
                    with_scratch(2 * rb * n_keys, |scratch| {
                        let (p, dp) = scratch.split_at_mut(rb * n_keys);
                        let q_blk = View {
                            ptr: q.add(i0 * w),
                            rs: w as isize,
                            cs: 1,
                        };
                        let do_blk = View {
                            ptr: dout.as_ptr().add(b * t * c + i0 * c + h * hs),
                            rs: c as isize,
                            cs: 1,
                        };
                        // P = exp(S - lse), recomputed.
                        gemm_into(
                            dims.precision,
                            rb,
                            n_keys,
                            hs,
                            p.as_mut_ptr(),
                            n_keys,
                            false,
                            q_blk,
                            View {
                                ptr: k,
                                rs: 1,
                                cs: w as isize,
                            },
                            scale,
                            false,
                        );
                        for r in 0..rb {
                            let i = i0 + r;
                            let row = &mut p[r * n_keys..(r + 1) * n_keys];
                            let l = lse[i];
                            for s in row[..=i].iter_mut() {
                                *s = fast_exp(*s - l);
                            }
                            row[i + 1..].fill(0.0);
                        }
                        // dV += (P*Z)^T dO; with dropout, P*Z goes through dp first.
                        let pz: &[f32] = match dropout {
                            Some(d) => {
                                let inv_keep = 1.0 / (1.0 - d.p);
                                for r in 0..rb {
                                    let i = i0 + r;
                                    for j in 0..n_keys {
                                        let x = p[r * n_keys + j];
                                        dp[r * n_keys + j] = if keep(d.key, d.index(bh, i, j), d.p)
                                        {
                                            x * inv_keep
                                        } else {
                                            0.0
                                        };
                                    }
                                }
                                dp
                            }
                            None => p,
                        };
                        gemm_into(
                            dims.precision,
                            n_keys,
                            hs,
                            rb,
                            dv,
                            w,
                            true,
                            View {
                                ptr: pz.as_ptr(),
                                rs: 1,
                                cs: n_keys as isize,
                            },
                            do_blk,
                            1.0,
                            false,
                        );
                        // dP = (dO V^T) * Z
                        gemm_into(
                            dims.precision,
                            rb,
                            n_keys,
                            hs,
                            dp.as_mut_ptr(),
                            n_keys,
                            false,
                            do_blk,
                            View {
                                ptr: v,
                                rs: 1,
                                cs: w as isize,
                            },
                            1.0,
                            false,
                        );
                        for r in 0..rb {
                            let i = i0 + r;
                            let o_i = &out[b * t * c + i * c + h * hs..][..hs];
                            let do_i = std::slice::from_raw_parts(do_blk.ptr.add(r * c), hs);
                            let d_i = dot(do_i, o_i);
                            let (prow, dprow) = (
                                &mut p[r * n_keys..(r + 1) * n_keys],
                                &dp[r * n_keys..(r + 1) * n_keys],
                            );
                            match dropout {
                                Some(d) => {
                                    let inv_keep = 1.0 / (1.0 - d.p);
                                    for j in 0..=i {
                                        let z = if keep(d.key, d.index(bh, i, j), d.p) {
                                            inv_keep
                                        } else {
                                            0.0
                                        };
                                        prow[j] *= (dprow[j] * z - d_i) * scale;
                                    }
                                }
                                None => {
                                    for j in 0..=i {
                                        prow[j] *= (dprow[j] - d_i) * scale;
                                    }
                                }
                            }
                        }
                        // p now holds dS (already scaled). dQ = dS K, dK += dS^T Q.
                        gemm_into(
                            dims.precision,
                            rb,
                            hs,
                            n_keys,
                            dq.add(i0 * w),
                            w,
                            false,
                            View {
                                ptr: p.as_ptr(),
                                rs: n_keys as isize,
                                cs: 1,
                            },
                            View {
                                ptr: k,
                                rs: w as isize,
                                cs: 1,
                            },
                            1.0,
                            false,
                        );
                        gemm_into(
                            dims.precision,
                            n_keys,
                            hs,
                            rb,
                            dk,
                            w,
                            true,
                            View {
                                ptr: p.as_ptr(),
                                rs: 1,
                                cs: n_keys as isize,
                            },
                            q_blk,
                            1.0,
                            false,
                        );
                    });
                    i0 += rb;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::cpu::math::test_values(n, seed, 2.0)
    }

    /// Causal attention in f64, each query head reading its own copy of its kv head.
    fn naive(qkv: &[f32], d: AttnDims, t: usize) -> Vec<f64> {
        let (hs, nh, nkv) = (d.head_size, d.n_head, d.n_kv_head);
        let (c, kv_c) = (nh * hs, nkv * hs);
        let w = c + 2 * kv_c;
        let mut out = vec![0.0f64; d.batch * t * c];
        for b in 0..d.batch {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let at = |i: usize, col: usize| qkv[(b * t + i) * w + col] as f64;
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hs)
                                .map(|e| at(i, h * hs + e) * at(j, c + kvh * hs + e))
                                .sum::<f64>()
                                / (hs as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for e in 0..hs {
                        out[(b * t + i) * c + h * hs + e] = (0..=i)
                            .map(|j| (s[j] - m).exp() / z * at(j, c + kv_c + kvh * hs + e))
                            .sum();
                    }
                }
            }
        }
        out
    }

    fn f32_dims(batch: usize, n_head: usize, n_kv_head: usize, head_size: usize) -> AttnDims {
        AttnDims {
            batch,
            n_head,
            head_size,
            n_kv_head,
            precision: Precision::F32,
        }
    }

    /// A cache (batch, n_kv_head, max_t, hs) of `K` holding the keys and values of all `t`
    /// positions of `qkv`, with room for 3 more.
    struct TestCache<K> {
        k: Vec<K>,
        v: Vec<K>,
        k_scale: Vec<f32>,
        v_scale: Vec<f32>,
        max_t: usize,
    }

    impl<K: CacheValue> TestCache<K> {
        fn new(qkv: &[f32], d: AttnDims, t: usize) -> TestCache<K> {
            let (hs, nkv, c, kv_c) = (d.head_size, d.n_kv_head, d.c(), d.kv_c());
            let (w, max_t) = (d.qkv_width(), t + 3);
            let rows = d.batch * nkv * max_t;
            let mut cache = TestCache {
                k: vec![K::from_f32(0.0); rows * hs],
                v: vec![K::from_f32(0.0); rows * hs],
                k_scale: vec![0.0; rows],
                v_scale: vec![0.0; rows],
                max_t,
            };
            for b in 0..d.batch {
                for pos in 0..t {
                    let row = &qkv[(b * t + pos) * w..(b * t + pos + 1) * w];
                    for kvh in 0..nkv {
                        let at = (b * nkv + kvh) * max_t + pos;
                        let (k, v) = (&row[c + kvh * hs..], &row[c + kv_c + kvh * hs..]);
                        cache.k_scale[at] = K::store_row(&mut cache.k[at * hs..][..hs], &k[..hs]);
                        cache.v_scale[at] = K::store_row(&mut cache.v[at * hs..][..hs], &v[..hs]);
                    }
                }
            }
            cache
        }

        fn view(&self) -> CacheView<'_, K> {
            CacheView {
                k: &self.k,
                v: &self.v,
                k_scale: &self.k_scale,
                v_scale: &self.v_scale,
                max_t: self.max_t,
            }
        }
    }

    /// `qkv` with its keys and values replaced by what a cache of `K` gives back for them.
    fn as_held<K: CacheValue>(qkv: &[f32], d: AttnDims) -> Vec<f32> {
        let (c, hs) = (d.c(), d.head_size);
        let mut held = qkv.to_vec();
        let mut stored = vec![K::from_f32(0.0); hs];
        for row in held.chunks_mut(d.qkv_width()) {
            for kv_row in row[c..].chunks_mut(hs) {
                let scale = K::store_row(&mut stored, kv_row);
                for (x, s) in kv_row.iter_mut().zip(&stored) {
                    *x = s.to_f32() * scale;
                }
            }
        }
        held
    }

    /// Cached attention of every position of `qkv`, one decoding step at a time (a step reads
    /// positions up to its own, so a cache holding all of them gives what a growing one would):
    /// (batch, t, C).
    fn decode_steps<K: CacheValue>(qkv: &[f32], d: AttnDims, t: usize) -> Vec<f32> {
        let (c, w, batch) = (d.c(), d.qkv_width(), d.batch);
        let cache = TestCache::<K>::new(qkv, d, t);
        let mut cached = vec![0.0f32; batch * t * c];
        for pos in 0..t {
            // Queries of this step: one row per sequence, packed rows of width w.
            let q: Vec<f32> = (0..batch)
                .flat_map(|b| qkv[(b * t + pos) * w..(b * t + pos + 1) * w].to_vec())
                .collect();
            let seqs: Vec<CachedQueries> = (0..batch)
                .map(|b| CachedQueries {
                    slot: b,
                    first: b,
                    n: 1,
                    pos,
                })
                .collect();
            let mut step = vec![0.0f32; batch * c];
            attention_forward_cached(&mut step, &q, w, cache.view(), d, &seqs);
            for b in 0..batch {
                cached[(b * t + pos) * c..(b * t + pos + 1) * c]
                    .copy_from_slice(&step[b * c..(b + 1) * c]);
            }
        }
        cached
    }

    /// Cached attention on a cache of `K`, decoding and prefilling, against f64 attention on
    /// the keys and values as the cache gives them back.
    fn cache_matches_f64_of_what_it_holds<K: CacheValue>() {
        // Head sizes 64 and 128 decode on AVX-512 (bf16 and int8 widened as they load), 32 and 64
        // on AVX2 without it, the rest on the portable path (the cache widened first), as a
        // prompt pass does for every size.
        for (batch, nh, nkv, hs, t) in [
            (2, 4, 2, 64, 37),
            (1, 2, 2, 32, 23),
            (1, 2, 1, 128, 20),
            (2, 6, 3, 4, 67),
            (1, 4, 4, 8, 9),
        ] {
            let d = f32_dims(batch, nh, nkv, hs);
            let (c, w) = (d.c(), d.qkv_width());
            let qkv = vals(batch * t * w, (nh * 100 + hs * 10 + t) as u64);
            let want = naive(&as_held::<K>(&qkv, d), d, t);
            let close = |got: &[f32], what: &str| {
                for (i, (&g, &x)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - x).abs() <= 1e-5 * (1.0 + x.abs()),
                        "{what} B{batch} H{nh}/{nkv} hs{hs} T{t} out[{i}]: {g} vs {x}"
                    );
                }
            };
            close(&decode_steps::<K>(&qkv, d, t), "decoding");
            // A prompt pass: every position of each sequence in one call.
            let cache = TestCache::<K>::new(&qkv, d, t);
            let seqs: Vec<CachedQueries> = (0..batch)
                .map(|b| CachedQueries {
                    slot: b,
                    first: b * t,
                    n: t,
                    pos: 0,
                })
                .collect();
            let mut out = vec![0.0f32; batch * t * c];
            attention_forward_cached(&mut out, &qkv, w, cache.view(), d, &seqs);
            close(&out, "prefilling");
        }
    }

    #[test]
    fn bf16_cache_matches_f64_of_its_rounded_keys_and_values_decoding_and_prefilling() {
        cache_matches_f64_of_what_it_holds::<Bf16>();
    }

    #[test]
    fn int8_cache_matches_f64_of_its_dequantized_keys_and_values_decoding_and_prefilling() {
        cache_matches_f64_of_what_it_holds::<i8>();
    }

    #[test]
    fn int8_cache_holds_each_row_to_half_a_step_of_its_scale() {
        let row = vals(64, 7);
        let mut q = [0i8; 64];
        let scale = i8::store_row(&mut q, &row);
        let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert_eq!(scale, max / 127.0);
        for (&x, &q) in row.iter().zip(&q) {
            assert!(
                (x - q as f32 * scale).abs() <= 0.5 * scale * (1.0 + 1e-6),
                "{x} vs {q} x {scale}"
            );
        }
    }

    #[test]
    fn gqa_forward_matches_f64_and_cached_matches_training() {
        // Head sizes 32, 64 and 128 take the AVX-512 single-query path when decoding.
        let shapes = [
            (2, 4, 2, 8, 5),
            (1, 4, 1, 8, 70),
            (2, 6, 3, 4, 67),
            (2, 2, 1, 32, 9),
            (1, 2, 2, 64, 40),
            (1, 2, 1, 128, 17),
        ];
        for (batch, nh, nkv, hs, t) in shapes {
            let d = f32_dims(batch, nh, nkv, hs);
            let (c, kv_c) = (nh * hs, nkv * hs);
            let w = c + 2 * kv_c;
            let qkv = vals(batch * t * w, (nh * 100 + nkv * 10 + t) as u64);
            let (mut out, mut lse) = (vec![0.0f32; batch * t * c], vec![0.0f32; batch * nh * t]);
            attention_forward(&mut out, &mut lse, &qkv, d, t, None);
            let want = naive(&qkv, d, t);
            for (i, (&g, &x)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - x).abs() <= 1e-5 * (1.0 + x.abs()),
                    "B{batch} H{nh}/{nkv} T{t} out[{i}]: {g} vs {x}"
                );
            }
            let cached = decode_steps::<f32>(&qkv, d, t);
            for (i, (&a, &b)) in cached.iter().zip(&out).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "B{batch} H{nh}/{nkv} T{t} cached row vs training out[{i}]: {a} vs {b}"
                );
            }
        }
    }
}

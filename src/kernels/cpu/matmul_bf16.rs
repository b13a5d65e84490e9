//! Matrix products in bfloat16: C [+]= scale * A @ B, with A and B read as f32 (strided views,
//! as `matmul::gemm_into` takes them), rounded to bf16 as they are packed, and the products
//! summed in f32. What PyTorch's bf16 autocast computes for a linear layer, on the CPU.
//!
//! math: with bf(x) = x rounded to bf16 (8 significant bits, round to nearest even; zero for
//! an f32 subnormal, as the hardware conversion does), and k taken in pairs p = (2p, 2p+1):
//!   C[i][j] = [C[i][j] +] scale * sum_blocks ( sum_{p in block} bf(A[i][2p+1]) bf(B[2p+1][j])
//!                                                                + bf(A[i][2p]) bf(B[2p][j]) )
//! The product of two bf16 values is exact in f32 (8 + 8 significant bits), so the only
//! roundings are the inputs' and the f32 additions. An odd k is padded with a zero.
//!
//! AVX512-BF16's VDPBF16PS adds one k pair's two products to each of 16 f32 sums: 32
//! multiply-adds per instruction, twice an f32 FMA's. Layout (BLIS): B is packed a block of
//! `KC` x `NC` at a time into panels of `NR` columns, each k pair's two rows interleaved so one
//! 512-bit load holds the pair for 16 columns; A a block of `MC` x `KC` at a time, row-major in
//! bf16 pairs, so a 32-bit broadcast is one row's pair. The micro-kernel keeps an `MR` x `NR`
//! tile of sums in 24 registers while a B panel (16 KiB at KC = 256) stays in L1.
//!
//! Deterministic: every sum runs over k in order (pairs in order within a block of `KC`, the
//! blocks added to C in order), whatever the tile, slab or thread count. The portable kernel
//! adds in the same order as the hardware (odd element of the pair first, each sum rounded),
//! and gives the same bits (tested).

use super::matmul::View;

/// Rows of the micro-tile: 12 x 2 registers of sums, 2 of B, 1 broadcast: 27 of 32.
const MR: usize = 12;
/// Columns of the micro-tile: two 16-lane registers.
const NR: usize = 32;
/// k values per packed block (an even number).
const KC: usize = 256;
/// Rows of A per packed block (a multiple of `MR`): 96 KiB of pairs at KC = 256.
const MC: usize = 192;
/// Columns of B per packed block (a multiple of `NR`): 2 MiB of pairs at KC = 256, so A is
/// packed once for all but the widest products (at 512, a 768 x 3072 x 1024 product with a
/// transposed A ran at 148 GFLOP/s on one thread, against 168).
const NC: usize = 4096;

/// The bf16 bits of `x`, rounded to nearest even; a NaN stays a (quiet) NaN, a subnormal
/// becomes a zero of its sign (what VCVTNE2PS2BF16 gives).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7f80_0000 == 0 {
        return ((u >> 16) & 0x8000) as u16;
    }
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// A bf16 value (its bits): what `sample --dtype=bfloat16` keeps its weights in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    pub fn round(x: f32) -> Bf16 {
        Bf16(bf16_bits(x))
    }
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Which code computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX512-BF16 (with AVX512-BW for the packing).
    Avx512,
    /// AVX2 and FMA: the portable kernel's arithmetic in 8-lane f32 registers. Its packing
    /// splits each of A's pairs into the two f32s of its bf16 values (two u32 words), so a
    /// broadcast is one load; B keeps its pairs (half the bytes to pack and to stream through
    /// the caches), split in the micro-kernel by a shift and a mask.
    Avx2,
    /// Plain Rust, any CPU: the same sums in the same order.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.runs_here())
            .unwrap_or(Kernel::Portable)
    }

    /// u32 words a packed k pair of A takes: the pair itself, or (AVX2) its two values as f32.
    /// B's pairs take one word on every kernel.
    fn a_words_per_pair(self) -> usize {
        match self {
            Kernel::Avx2 => 2,
            Kernel::Avx512 | Kernel::Portable => 1,
        }
    }

    /// Whether this CPU has what the kernel needs.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Avx512 => has!("avx512bf16") && has!("avx512bw"),
                Kernel::Avx2 => has!("avx2") && has!("fma"),
                Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }
}

/// Packing buffers, kept between products: the blocks a thread packs for itself, and the
/// operand a parallel product packs once for all its threads.
#[derive(Default)]
struct Buffers {
    a: Vec<u32>,
    b: Vec<u32>,
    shared: Vec<u32>,
}

thread_local! {
    static PACKED: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

/// One product: dst (m x n, row stride `dst_rs`) = [dst +] scale * lhs (m x k) @ rhs (k x n).
#[derive(Clone, Copy)]
struct Product {
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
}
// SAFETY: the threads of a parallel product read the inputs and write disjoint parts of dst.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl Product {
    /// `pack_a` of this product's A (a method, so parallel closures capture the whole product).
    fn pack_a(self, dst: &mut [u32], i0: usize, mc: usize, k0: usize, kc: usize) {
        pack_a(self.kernel, dst, self.lhs, i0, mc, k0, kc)
    }
    /// `pack_b` of this product's B.
    fn pack_b(self, dst: &mut [u32], k0: usize, kc: usize, j0: usize, nc: usize) {
        pack_b(self.kernel, dst, self.rhs, k0, kc, j0, nc)
    }
}

/// The operands packed whole, before the threads of a parallel product start (or, for B,
/// once for every product that reads it: [`PackedB`]): A as every k block's `a_rows` rows of
/// pairs, one block after another; B as every k block's panels.
#[derive(Clone, Copy, Default)]
struct Packed<'a> {
    a: Option<&'a [u32]>,
    b: Option<&'a [u32]>,
}

/// Matrices B (k x n), each packed as [`gemm_bf16`] reads it, once for all the products that
/// multiply by them: a prompt's pass over bf16 inference weights then packs only its
/// activations. The layout is every kernel's (one u32 per k pair), the bits `bf16_bits`'. One
/// buffer for all, so its owner can back it with huge pages ([`PackedMatrices::words`]).
pub struct PackedMatrices {
    data: Vec<u32>,
    /// (k, n, offset in `data`), one per matrix.
    mats: Vec<(usize, usize, usize)>,
}

impl PackedMatrices {
    /// Each (view, k, n): the (k x n) matrix the view shows, packed (on the thread pool).
    ///
    /// # Safety
    /// Each view must address valid memory for its k x n values.
    pub unsafe fn new(views: &[(View, usize, usize)]) -> PackedMatrices {
        let mut mats = Vec::with_capacity(views.len());
        let mut len = 0;
        for &(_, k, n) in views {
            mats.push((k, n, len));
            len += packed_b_len(k, n);
        }
        let mut data = vec![0u32; len];
        for (&(b, k, n), &(_, _, at)) in views.iter().zip(&mats) {
            let p = Product {
                kernel: Kernel::detect(),
                m: 0,
                n,
                k,
                dst: std::ptr::null_mut(),
                dst_rs: 0,
                accumulate: false,
                lhs: b,
                rhs: b,
                scale: 1.0,
            };
            pack_all_b(p, &mut data[at..at + packed_b_len(k, n)]);
        }
        PackedMatrices { data, mats }
    }

    /// Matrix `i`.
    pub fn get(&self, i: usize) -> PackedB<'_> {
        let (k, n, at) = self.mats[i];
        PackedB {
            k,
            n,
            data: &self.data[at..at + packed_b_len(k, n)],
        }
    }

    /// Every matrix's words.
    pub fn words(&self) -> &[u32] {
        &self.data
    }
}

/// u32 words of a (k x n) matrix packed whole.
fn packed_b_len(k: usize, n: usize) -> usize {
    b_cols(n) * k.div_ceil(2)
}

/// One matrix of a [`PackedMatrices`].
#[derive(Clone, Copy)]
pub struct PackedB<'a> {
    k: usize,
    n: usize,
    data: &'a [u32],
}

impl PackedB<'_> {
    /// (k, n).
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// out (rows x n) = x (rows x k) @ B [+ bias], x in f32 as it is (not rounded): decoding
    /// over bf16 inference weights, which then need no other copy. Bandwidth-bound, so B is
    /// read once for all the rows, panels of columns split across cores, and every output is
    /// the same sum whatever the rows: over k pairs in order, each pair's odd product added
    /// before its even one (one FMA chain; the AVX2 path gives the portable one's bits).
    pub fn forward_rows(&self, kernel: Kernel, out: &mut [f32], x: &[f32], bias: Option<&[f32]>) {
        use rayon::prelude::*;
        let (k, n) = (self.k, self.n);
        let rows = x.len().checked_div(k).unwrap_or(0);
        assert!(out.len() >= rows * n && bias.is_none_or(|b| b.len() >= n));
        let out_ptr = super::math::SharedMut(out.as_mut_ptr());
        let panels = n.div_ceil(NR);
        let tasks = (k * n * rows / (1 << 16)).clamp(1, rayon::current_num_threads());
        let per = panels.div_ceil(tasks);
        (0..panels.div_ceil(per)).into_par_iter().for_each(|i| {
            let ts = i * per..((i + 1) * per).min(panels);
            // A k block's panels lie one after another: a task reads its run of them for that
            // block as one stream (panel by panel over all k was ~10% slower: a new stream
            // every 16 KiB), every row's sums of a panel while it is in L1.
            let mut sums = vec![[0.0f32; NR]; ts.len() * rows];
            for (_, pc, kc) in k_blocks(k) {
                let kcp = kc.div_ceil(2);
                for (s, t) in sums.chunks_mut(rows.max(1)).zip(ts.clone()) {
                    let panel = &self.data[b_cols(n) * pc / 2 + t * NR * kcp..][..NR * kcp];
                    for r in (0..rows).step_by(2) {
                        let take = (rows - r).min(2);
                        let xs = [0, 1].map(|i| &x[(r + i.min(take - 1)) * k + pc..][..kc]);
                        let s = &mut s[r..r + take];
                        match kernel {
                            // SAFETY: the kernel runs on this CPU (`Kernel::detect`).
                            #[cfg(target_arch = "x86_64")]
                            Kernel::Avx2 => unsafe { avx2::panel_sums(s, panel, xs, kcp) },
                            _ => panel_sums_portable(s, panel, xs, kcp),
                        }
                    }
                }
            }
            for (s, t) in sums.chunks(rows.max(1)).zip(ts.clone()) {
                let cols = NR.min(n - t * NR);
                for (r, row) in s.iter().enumerate() {
                    // SAFETY: this task alone writes panel t's columns of every row.
                    let o = unsafe { out_ptr.get().add(r * n + t * NR) };
                    for (j, &v) in row.iter().enumerate().take(cols) {
                        unsafe { *o.add(j) = v + bias.map_or(0.0, |b| b[t * NR + j]) };
                    }
                }
            }
        });
    }
}

/// The sums of `sums.len()` rows (1 or 2) over one k block of a panel: `sums[r][j]` +=
/// x_r[2p+1] B[2p+1][j], then += x_r[2p] B[2p][j], for each pair p in order (an odd k's missing
/// value is zero).
fn panel_sums_portable(sums: &mut [[f32; NR]], panel: &[u32], xs: [&[f32]; 2], kcp: usize) {
    for p in 0..kcp {
        let pair = &panel[p * NR..(p + 1) * NR];
        for (row, x) in sums.iter_mut().zip(xs) {
            let (x0, x1) = (x[2 * p], x.get(2 * p + 1).copied().unwrap_or(0.0));
            for (s, &v) in row.iter_mut().zip(pair) {
                let (w0, w1) = (bf16_value(v as u16), bf16_value((v >> 16) as u16));
                *s = x0.mul_add(w0, x1.mul_add(w1, *s));
            }
        }
    }
}

/// The right-hand operand of [`gemm_bf16`]: a view of f32 values, or a [`PackedB`].
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    View(View),
    Packed(PackedB<'a>),
}

/// Rows of a whole packed A: m and the zeros a last micro-panel reads past it (A is shared
/// only by column slabs, whose micro-panels all start at multiples of `MR`).
fn a_rows(m: usize) -> usize {
    m.next_multiple_of(MR)
}

/// Columns of a whole packed B: n up to a whole panel.
fn b_cols(n: usize) -> usize {
    n.next_multiple_of(NR)
}

/// A shared packed operand above this many pairs (128 MiB) is not made: the threads then pack
/// their own blocks.
const MAX_SHARED: usize = 1 << 25;

/// dst (m x n, row stride `dst_rs`) = [dst +] scale * lhs (m x k) @ rhs (k x n), in bf16 with
/// `kernel`, on this thread or, with `parallel`, on the thread pool: one slab of the larger
/// output dimension per thread, the operand every slab reads packed once beforehand (packing
/// it in each thread cost a tenth of a training step), or already (`Rhs::Packed`, whose shape
/// must be (k, n)).
///
/// # Safety
/// Every view must address valid memory for the given shape, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: Rhs,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (rhs, prepacked) = match rhs {
        Rhs::View(v) => (v, None),
        Rhs::Packed(b) => {
            assert_eq!(b.shape(), (k, n), "gemm_bf16: packed B has the wrong shape");
            // Never read: B is not packed again.
            (lhs, Some(b.data))
        }
    };
    let p = Product {
        kernel,
        m,
        n,
        k,
        dst,
        dst_rs,
        accumulate,
        lhs,
        rhs,
        scale,
    };
    let threads = rayon::current_num_threads();
    if !parallel || threads == 1 {
        let packed = Packed {
            a: None,
            b: prepacked,
        };
        return compute(p, 0..m, 0..n, packed);
    }
    use rayon::prelude::*;
    let split_rows = m >= n;
    let (len, align) = if split_rows { (m, MR) } else { (n, NR) };
    let per = len.div_ceil(threads).next_multiple_of(align);
    let slabs = len.div_ceil(per);
    let pairs = k.div_ceil(2) + 1;
    let shared_len = if split_rows {
        b_cols(n) * pairs
    } else {
        a_rows(m) * pairs * kernel.a_words_per_pair()
    };
    let mut shared = PACKED.with_borrow_mut(|b| std::mem::take(&mut b.shared));
    let share = shared_len <= MAX_SHARED && !(split_rows && prepacked.is_some());
    if share && split_rows {
        grow(&mut shared, packed_b_len(k, n));
        pack_all_b(p, &mut shared);
    } else if share {
        pack_all_a(p, &mut shared);
    }
    let packed = Packed {
        a: (share && !split_rows).then_some(&shared[..]),
        b: if share && split_rows {
            Some(&shared[..])
        } else {
            prepacked
        },
    };
    (0..slabs).into_par_iter().for_each(|i| {
        let range = i * per..((i + 1) * per).min(len);
        // SAFETY: each slab writes its own rows (or columns) of dst.
        unsafe {
            if split_rows {
                compute(p, range, 0..n, packed)
            } else {
                compute(p, 0..m, range, packed)
            }
        }
    });
    PACKED.with_borrow_mut(|b| b.shared = shared);
}

/// The k blocks: (index, first k, length).
fn k_blocks(k: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    // k = 0 still writes C (scale x 0, or C unchanged): one empty block.
    (0..k.max(1))
        .step_by(KC)
        .enumerate()
        .map(move |(i, pc)| (i, pc, KC.min(k - pc)))
}

/// All of A into `dst` (see [`Packed`]), blocks of rows in parallel.
fn pack_all_a(p: Product, dst: &mut Vec<u32>) {
    use rayon::prelude::*;
    const ROWS: usize = 192; // a multiple of MR and of 16 (the rows one scatter writes)
    let rows = a_rows(p.m);
    // Every value is written below (pack_a pads each chunk's rows to a multiple of MR), so the
    // buffer only grows: zeroing it each time was 3% of a bf16 training step.
    let w = p.kernel.a_words_per_pair();
    grow(dst, rows * (p.k.div_ceil(2) + 1) * w);
    let out = SharedU32(dst.as_mut_ptr());
    let tasks: Vec<(usize, usize, usize, usize)> = k_blocks(p.k)
        .flat_map(|(_, pc, kc)| {
            (0..p.m)
                .step_by(ROWS)
                .map(move |i0| (pc, kc, i0, ROWS.min(p.m - i0)))
        })
        .collect();
    tasks.into_par_iter().for_each(|(pc, kc, i0, mc)| {
        let kcp = kc.div_ceil(2);
        let at = (rows * pc / 2 + i0 * kcp) * w;
        // SAFETY: each task writes rows i0..i0 + mc (and its zero rows up to a multiple of MR,
        // inside the block's `rows`) of its own k block.
        let region =
            unsafe { std::slice::from_raw_parts_mut(out.get().add(at), (rows - i0) * kcp * w) };
        p.pack_a(region, i0, mc, pc, kc);
    });
}

/// All of B into `dst` (see [`Packed`]), groups of panels in parallel.
fn pack_all_b(p: Product, dst: &mut [u32]) {
    use rayon::prelude::*;
    const COLS: usize = 4 * NR;
    let cols = b_cols(p.n);
    assert!(dst.len() >= packed_b_len(p.k, p.n));
    let out = SharedU32(dst.as_mut_ptr());
    let tasks: Vec<(usize, usize, usize, usize)> = k_blocks(p.k)
        .flat_map(|(_, pc, kc)| {
            (0..p.n)
                .step_by(COLS)
                .map(move |j0| (pc, kc, j0, COLS.min(p.n - j0)))
        })
        .collect();
    tasks.into_par_iter().for_each(|(pc, kc, j0, nc)| {
        let kcp = kc.div_ceil(2);
        let at = cols * pc / 2 + j0 * kcp;
        // SAFETY: each task writes the panels of columns j0..j0 + nc of its own k block.
        let region = unsafe {
            std::slice::from_raw_parts_mut(out.get().add(at), nc.next_multiple_of(NR) * kcp)
        };
        p.pack_b(region, pc, kc, j0, nc);
    });
}

/// Makes `v` at least `len` long (new values zero), keeping what it holds.
fn grow(v: &mut Vec<u32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0);
    }
}

/// A buffer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct SharedU32(*mut u32);
// SAFETY: every task writes its own region.
unsafe impl Send for SharedU32 {}
unsafe impl Sync for SharedU32 {}

impl SharedU32 {
    /// The pointer (a method, so closures capture the whole Send wrapper).
    fn get(self) -> *mut u32 {
        self.0
    }
}

/// Rows `rows` x columns `cols` of the product, on this thread, packing what `packed` does not
/// hold. `cols` starts at a multiple of `NR` when B is packed.
///
/// # Safety
/// As [`gemm_bf16`]; no other thread writes these rows and columns of dst.
unsafe fn compute(
    p: Product,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    packed: Packed,
) {
    PACKED.with_borrow_mut(|bufs| {
        let Buffers {
            a: a_buf, b: b_buf, ..
        } = bufs;
        let w = p.kernel.a_words_per_pair();
        let kcp_max = KC.min(p.k).div_ceil(2).max(1);
        grow(a_buf, MC.next_multiple_of(MR) * kcp_max * w);
        grow(b_buf, NC * kcp_max);
        for jc in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - jc);
            for (block, pc, kc) in k_blocks(p.k) {
                let kcp = kc.div_ceil(2);
                let a_strides = ALayout::of(p.lhs).strides(kcp);
                let b_block: &[u32] = match packed.b {
                    Some(all) => &all[b_cols(p.n) * pc / 2 + jc * kcp..],
                    None => {
                        p.pack_b(b_buf, pc, kc, jc, nc);
                        b_buf
                    }
                };
                let add = p.accumulate || block > 0;
                for ic in rows.clone().step_by(MC) {
                    let mc = MC.min(rows.end - ic);
                    let a_block: &[u32] = match packed.a {
                        Some(all) => &all[(a_rows(p.m) * pc / 2 + ic * kcp) * w..],
                        None => {
                            p.pack_a(a_buf, ic, mc, pc, kc);
                            a_buf
                        }
                    };
                    for jr in (0..nc).step_by(NR) {
                        let b = &b_block[jr * kcp..][..kcp * NR];
                        for ir in (0..mc).step_by(MR) {
                            let a = &a_block[ir * kcp * w..][..kcp * MR * w];
                            let tile = Tile {
                                c: p.dst.add((ic + ir) * p.dst_rs + jc + jr),
                                rs: p.dst_rs,
                                rows: MR.min(mc - ir),
                                cols: NR.min(nc - jr),
                                add,
                                scale: p.scale,
                            };
                            match p.kernel {
                                #[cfg(target_arch = "x86_64")]
                                Kernel::Avx512 => avx512::micro(kcp, a, a_strides, b, tile),
                                #[cfg(target_arch = "x86_64")]
                                Kernel::Avx2 => avx2::micro(kcp, a, a_strides, b, tile),
                                _ => micro_portable(kcp, a, a_strides, b, tile),
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Where a micro-tile's sums go: `rows` x `cols` of C at `c` (row stride `rs`), added to what
/// is there when `add`, times `scale`.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    rs: usize,
    rows: usize,
    cols: usize,
    add: bool,
    scale: f32,
}

/// How a packed block of A holds its pairs. Either way micro-panel q (rows qMR..qMR + MR)
/// takes MR x kcp u32s at q MR kcp; inside it, the pair (r, p) is at r `row` + p `pair`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ALayout {
    /// [i][p]: each row's pairs in order. For an A whose rows are contiguous: a row's values
    /// convert to its pairs in place.
    Rows,
    /// [p][r] in each micro-panel. For an A whose columns are contiguous (a transpose, as in a
    /// weight gradient): two source rows interleave into one k pair of MR rows.
    Pairs,
}

impl ALayout {
    fn of(a: View) -> ALayout {
        if a.cs == 1 {
            ALayout::Rows
        } else {
            ALayout::Pairs
        }
    }

    /// (row, pair) strides in u32s within a micro-panel of `kcp` pairs.
    fn strides(self, kcp: usize) -> (usize, usize) {
        match self {
            ALayout::Rows => (kcp, 1),
            ALayout::Pairs => (1, MR),
        }
    }
}

/// A's rows `i0..i0+mc`, k `k0..k0+kc`, into `dst` as bf16 pairs in A's `ALayout`, rows padded
/// with zeros to a multiple of `MR`.
fn pack_a(kernel: Kernel, dst: &mut [u32], a: View, i0: usize, mc: usize, k0: usize, kc: usize) {
    let kcp = kc.div_ceil(2);
    match kernel {
        // SAFETY: the caller's view covers these rows and columns; dst holds MC x kcp pairs.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if a.cs == 1 || a.rs == 1 => unsafe {
            avx512::pack_a(dst, a, i0, mc, k0, kc)
        },
        // SAFETY: as above; each pair is 2 words, so a row of A is its kc values in order.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if a.cs == 1 => unsafe {
            let padded = mc.next_multiple_of(MR);
            assert!(dst.len() >= 2 * padded * kcp);
            for i in 0..mc {
                let src = a.ptr.offset((i0 + i) as isize * a.rs).add(k0);
                avx2::round_run(dst.as_mut_ptr().add(2 * i * kcp), src, kc, 2 * kcp);
            }
            dst[2 * mc * kcp..2 * padded * kcp].fill(0);
        },
        _ => {
            let (rs, ps) = ALayout::of(a).strides(kcp);
            for i in 0..mc.next_multiple_of(MR) {
                let panel = (i / MR) * MR * kcp;
                for p in 0..kcp {
                    let v = if i < mc {
                        // SAFETY: as above.
                        unsafe { pair(a, i0 + i, k0 + 2 * p, k0 + kc) }
                    } else {
                        0
                    };
                    put_pair(kernel, dst, panel + (i % MR) * rs + p * ps, v);
                }
            }
        }
    }
}

/// B's k `k0..k0+kc`, columns `j0..j0+nc`, into `dst` as panels of `NR` columns, each [p][j]
/// (a k pair's two values in one u32), columns padded with zeros to a multiple of `NR`.
fn pack_b(kernel: Kernel, dst: &mut [u32], b: View, k0: usize, kc: usize, j0: usize, nc: usize) {
    let kcp = kc.div_ceil(2);
    match kernel {
        // SAFETY: the caller's view covers these rows and columns; dst holds NC x kcp pairs.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if b.cs == 1 || b.rs == 1 => unsafe {
            avx512::pack_b(dst, b, k0, kc, j0, nc)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if b.cs == 1 => unsafe { avx2::pack_b_rows(dst, b, k0, kc, j0, nc) },
        _ => {
            for j in 0..nc.next_multiple_of(NR) {
                for p in 0..kcp {
                    dst[(j / NR) * kcp * NR + p * NR + j % NR] = if j < nc {
                        // SAFETY: as above (B read as its transpose: pairs run along k).
                        unsafe { pair(b.t(), j0 + j, k0 + 2 * p, k0 + kc) }
                    } else {
                        0
                    };
                }
            }
        }
    }
}

/// The f32 bits of a pair's two bf16 values: (even k, odd k).
fn split_pair(v: u32) -> (u32, u32) {
    (v << 16, v & 0xffff_0000)
}

/// Stores A's pair `v` at pair index `at` of a packed block: itself, or split into two words
/// (`Kernel::a_words_per_pair`).
fn put_pair(kernel: Kernel, dst: &mut [u32], at: usize, v: u32) {
    match kernel.a_words_per_pair() {
        2 => (dst[2 * at], dst[2 * at + 1]) = split_pair(v),
        _ => dst[at] = v,
    }
}

/// The bf16 pair (v[row][k], v[row][k+1]) in one u32, low half first; the second is zero when
/// k + 1 reaches `end`.
///
/// # Safety
/// `v` must address (row, k) and, below `end`, (row, k + 1).
#[inline(always)]
unsafe fn pair(v: View, row: usize, k: usize, end: usize) -> u32 {
    let at = |kk: usize| *v.ptr.offset(row as isize * v.rs + kk as isize * v.cs);
    let lo = bf16_bits(at(k));
    let hi = if k + 1 < end { bf16_bits(at(k + 1)) } else { 0 };
    u32::from(lo) | u32::from(hi) << 16
}

/// The micro-kernel in plain Rust: VDPBF16PS's arithmetic, lane by lane. A's pair (r, p) is at
/// r `a_rs` + p `a_ps`.
fn micro_portable(kcp: usize, a: &[u32], (a_rs, a_ps): (usize, usize), b: &[u32], t: Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kcp {
        let bp = &b[p * NR..(p + 1) * NR];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = a[r * a_rs + p * a_ps];
            let (a0, a1) = (bf16_value(av as u16), bf16_value((av >> 16) as u16));
            for (s, &bv) in acc_r.iter_mut().zip(bp) {
                let (b0, b1) = (bf16_value(bv as u16), bf16_value((bv >> 16) as u16));
                // Each product is exact, so these are the hardware's two rounded additions.
                *s = a0.mul_add(b0, a1.mul_add(b1, *s));
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(t.rows) {
        for (j, &s) in acc_r.iter().enumerate().take(t.cols) {
            // SAFETY: the tile's rows x cols lie in the caller's destination.
            unsafe {
                let c = t.c.add(r * t.rs + j);
                *c = if t.add {
                    s.mul_add(t.scale, *c)
                } else {
                    s * t.scale
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{bf16_bits, Tile, View, MR, NR};
    use std::arch::x86_64::*;

    /// Eight f32s (as bits) rounded to bf16, kept in the top halves: `super::bf16_bits`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn round8(u: __m256i) -> __m256i {
        let c = _mm256_set1_epi32;
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), c(1));
        let sum = _mm256_add_epi32(_mm256_add_epi32(u, c(0x7fff)), lsb);
        let rounded = _mm256_and_si256(sum, c(0xffff_0000_u32 as i32));
        // A zero exponent (zero or subnormal) keeps only its sign; a NaN turns quiet.
        let tiny = _mm256_cmpeq_epi32(_mm256_and_si256(u, c(0x7f80_0000)), c(0));
        let sign = _mm256_and_si256(u, c(i32::MIN));
        let nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, c(i32::MAX)), c(0x7f80_0000));
        let quiet = _mm256_and_si256(_mm256_or_si256(u, c(0x40_0000)), c(0xffff_0000_u32 as i32));
        _mm256_blendv_epi8(_mm256_blendv_epi8(rounded, sign, tiny), quiet, nan)
    }

    /// `n` f32 values at `src`, each rounded to bf16 and kept as an f32 (a bf16 is the top half
    /// of an f32), at `dst`; then zeros up to `len`.
    ///
    /// # Safety
    /// AVX2 must be present; `src` must hold `n` values and `dst` `len` >= `n`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn round_run(dst: *mut u32, src: *const f32, n: usize, len: usize) {
        let mut i = 0;
        while i + 8 <= n {
            let u = _mm256_castps_si256(_mm256_loadu_ps(src.add(i)));
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, round8(u));
            i += 8;
        }
        for j in i..n {
            *dst.add(j) = u32::from(bf16_bits(*src.add(j))) << 16;
        }
        std::ptr::write_bytes(dst.add(n), 0, len - n);
    }

    /// `super::pack_b` for a B whose rows are contiguous along j: a k pair is its two rows,
    /// rounded and interleaved 8 columns at a time.
    ///
    /// # Safety
    /// AVX2 must be present; `b` must cover k `k0..k0+kc` and columns `j0..j0+nc`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_b_rows(
        dst: &mut [u32],
        b: View,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
    ) {
        let (kcp, panels) = (kc.div_ceil(2), nc.div_ceil(NR));
        assert!(dst.len() >= panels * NR * kcp);
        for t in 0..panels {
            let cols = NR.min(nc - t * NR);
            for p in 0..kcp {
                let out = dst.as_mut_ptr().add((t * kcp + p) * NR);
                let row = |k: usize| b.ptr.offset((k0 + k) as isize * b.rs).add(j0 + t * NR);
                let (even, odd) = (row(2 * p), (2 * p + 1 < kc).then(|| row(2 * p + 1)));
                let mut j = 0;
                while j + 8 <= cols {
                    let lo = round8(_mm256_castps_si256(_mm256_loadu_ps(even.add(j))));
                    let hi = match odd {
                        Some(o) => round8(_mm256_castps_si256(_mm256_loadu_ps(o.add(j)))),
                        None => _mm256_setzero_si256(),
                    };
                    let v = _mm256_or_si256(_mm256_srli_epi32::<16>(lo), hi);
                    _mm256_storeu_si256(out.add(j) as *mut __m256i, v);
                    j += 8;
                }
                for j in j..cols {
                    let hi = odd.map_or(0, |o| bf16_bits(*o.add(j)));
                    *out.add(j) = u32::from(bf16_bits(*even.add(j))) | u32::from(hi) << 16;
                }
                std::ptr::write_bytes(out.add(cols), 0, NR - cols);
            }
        }
    }

    /// `super::panel_sums_portable` with AVX2 and FMA, the same bits: a pair's 32 columns are
    /// four loads, each split into its odd and even values by a mask and a shift.
    ///
    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_sums(
        sums: &mut [[f32; NR]],
        panel: &[u32],
        xs: [&[f32]; 2],
        kcp: usize,
    ) {
        let take = sums.len();
        assert!(panel.len() >= NR * kcp && take <= 2);
        let top = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        for (acc, s) in acc.iter_mut().zip(sums.iter()) {
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(s.as_ptr().add(8 * g));
            }
        }
        let pick = |x: &[f32], i: usize| _mm256_set1_ps(x.get(i).copied().unwrap_or(0.0));
        for p in 0..kcp {
            let b = panel.as_ptr().add(p * NR) as *const __m256i;
            let x = xs.map(|x| (pick(x, 2 * p), pick(x, 2 * p + 1)));
            for g in 0..4 {
                let v = _mm256_loadu_si256(b.add(g));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(v, top));
                let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                for (acc, &(x0, x1)) in acc.iter_mut().zip(&x).take(take) {
                    acc[g] = _mm256_fmadd_ps(x0, even, _mm256_fmadd_ps(x1, odd, acc[g]));
                }
            }
        }
        for (acc, s) in acc.iter().zip(sums.iter_mut()) {
            for (g, &a) in acc.iter().enumerate() {
                _mm256_storeu_ps(s.as_mut_ptr().add(8 * g), a);
            }
        }
    }

    /// Rows of a sub-tile: 6 x 2 registers of sums, 2 of B and a broadcast, 15 of the 16.
    const SR: usize = 6;

    /// [`super::micro_portable`] with AVX2 and FMA, the same bits, on blocks packed with A's
    /// pairs split into their two f32s: A's pair (r, p) at words 2 (r `a_rs` + p `a_ps`) (even
    /// k, then odd); B's pairs as packed, split here (the odd value is the pair's top half
    /// masked, the even one its bottom half shifted up). The `MR` x `NR` tile runs as sub-tiles
    /// of 6 rows x 16 columns (all of it would take 48 registers of the 16), each over every k
    /// pair in order. Per pair, every row's odd product is added first, then every row's even
    /// one, as VDPBF16PS orders them: between a sum's two dependent FMAs lie 11 others, so 12
    /// sums keep both FMA units busy (4 rows, 8 sums, had each pair's two-FMA chain as long as
    /// its 16 FMAs' issue time, and ran ~20% slower).
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `t` must address its rows x cols of C.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro(
        kcp: usize,
        a: &[u32],
        (a_rs, a_ps): (usize, usize),
        b: &[u32],
        t: Tile,
    ) {
        assert!(a.len() >= 2 * MR * kcp && b.len() >= NR * kcp);
        assert!(kcp == 0 || a_rs * (MR - 1) + a_ps * (kcp - 1) < MR * kcp);
        // C's tile is read (or written) after the loop, ~6,000 FMAs from now, and comes from
        // far: each tile is visited once per k block, all of C in between.
        for r in 0..t.rows {
            for j in (0..t.cols).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(t.c.add(r * t.rs + j) as *const i8);
            }
        }
        let (ld, step) = (a_rs * 8, a_ps * 8);
        for r0 in (0..t.rows).step_by(SR) {
            for c0 in (0..t.cols).step_by(16) {
                let mut acc = [[_mm256_setzero_ps(); 2]; SR];
                if kcp > 0 {
                    let a0 = a.as_ptr().add(2 * r0 * a_rs);
                    let [[s0, s1], [s2, s3], [s4, s5], [s6, s7], [s8, s9], [s10, s11]] = &mut acc;
                    // Assembly: as intrinsics the compiler kept the mask in memory, split the
                    // pairs with blends and spilled sums, ~10% slower than this loop.
                    std::arch::asm!(
                        "vpcmpeqd ymm15, ymm15, ymm15",
                        "vpslld ymm15, ymm15, 16",
                        "2:",
                        "vpand ymm12, ymm15, [{b}]",
                        "vpand ymm13, ymm15, [{b} + 32]",
                        "vbroadcastss ymm14, dword ptr [{a0} + 4]",
                        "vfmadd231ps ymm0, ymm14, ymm12",
                        "vfmadd231ps ymm1, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a0} + {ld} + 4]",
                        "vfmadd231ps ymm2, ymm14, ymm12",
                        "vfmadd231ps ymm3, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a0} + 2*{ld} + 4]",
                        "vfmadd231ps ymm4, ymm14, ymm12",
                        "vfmadd231ps ymm5, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a3} + 4]",
                        "vfmadd231ps ymm6, ymm14, ymm12",
                        "vfmadd231ps ymm7, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a3} + {ld} + 4]",
                        "vfmadd231ps ymm8, ymm14, ymm12",
                        "vfmadd231ps ymm9, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a3} + 2*{ld} + 4]",
                        "vfmadd231ps ymm10, ymm14, ymm12",
                        "vfmadd231ps ymm11, ymm14, ymm13",
                        "vmovdqu ymm12, [{b}]",
                        "vmovdqu ymm13, [{b} + 32]",
                        "vpslld ymm12, ymm12, 16",
                        "vpslld ymm13, ymm13, 16",
                        "vbroadcastss ymm14, dword ptr [{a0}]",
                        "vfmadd231ps ymm0, ymm14, ymm12",
                        "vfmadd231ps ymm1, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a0} + {ld}]",
                        "vfmadd231ps ymm2, ymm14, ymm12",
                        "vfmadd231ps ymm3, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a0} + 2*{ld}]",
                        "vfmadd231ps ymm4, ymm14, ymm12",
                        "vfmadd231ps ymm5, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a3}]",
                        "vfmadd231ps ymm6, ymm14, ymm12",
                        "vfmadd231ps ymm7, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a3} + {ld}]",
                        "vfmadd231ps ymm8, ymm14, ymm12",
                        "vfmadd231ps ymm9, ymm14, ymm13",
                        "vbroadcastss ymm14, dword ptr [{a3} + 2*{ld}]",
                        "vfmadd231ps ymm10, ymm14, ymm12",
                        "vfmadd231ps ymm11, ymm14, ymm13",
                        "add {a0}, {step}",
                        "add {a3}, {step}",
                        "add {b}, {nr_bytes}",
                        "dec {n}",
                        "jnz 2b",
                        a0 = inout(reg) a0 => _,
                        a3 = inout(reg) a0.add(3 * 2 * a_rs) => _,
                        ld = in(reg) ld,
                        step = in(reg) step,
                        b = inout(reg) b.as_ptr().add(c0) => _,
                        n = inout(reg) kcp => _,
                        nr_bytes = const NR * 4,
                        inout("ymm0") *s0, inout("ymm1") *s1, inout("ymm2") *s2,
                        inout("ymm3") *s3, inout("ymm4") *s4, inout("ymm5") *s5,
                        inout("ymm6") *s6, inout("ymm7") *s7, inout("ymm8") *s8,
                        inout("ymm9") *s9, inout("ymm10") *s10, inout("ymm11") *s11,
                        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                        options(nostack, readonly),
                    );
                }
                let scale = _mm256_set1_ps(t.scale);
                for (r, acc) in acc.iter().enumerate().take(t.rows - r0) {
                    let row = t.c.add((r0 + r) * t.rs + c0);
                    if t.cols - c0 >= 16 {
                        for (h, &a) in acc.iter().enumerate() {
                            let c = row.add(8 * h);
                            let v = if t.add {
                                _mm256_fmadd_ps(a, scale, _mm256_loadu_ps(c))
                            } else {
                                _mm256_mul_ps(a, scale)
                            };
                            _mm256_storeu_ps(c, v);
                        }
                        continue;
                    }
                    let mut sums = [0.0f32; 16];
                    _mm256_storeu_ps(sums.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc[1]);
                    for (j, &s) in sums.iter().enumerate().take(t.cols - c0) {
                        let c = row.add(j);
                        *c = if t.add {
                            s.mul_add(t.scale, *c)
                        } else {
                            s * t.scale
                        };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ALayout, Tile, View, MR, NR};
    use std::arch::x86_64::*;

    /// Sixteen (even, odd) f32 pairs, one from each of `even` and `odd`, as bf16 pairs in u32s.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    #[inline]
    unsafe fn interleave(even: __m512, odd: __m512) -> __m512i {
        // cvtne2ps puts its second argument in the low 16 halves: [e0..e15, o0..o15].
        let halves = as_bits(_mm512_cvtne2ps_pbh(odd, even));
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_permutexvar_epi16(idx, halves)
    }

    /// 32 bf16 values as plain bits.
    #[inline(always)]
    fn as_bits(v: __m512bh) -> __m512i {
        // SAFETY: both are 512 bits with no invalid values.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
    }

    /// The first `n` (at most 16) lanes.
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `super::pack_a` with AVX-512, for an A whose rows or columns are contiguous.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn pack_a(
        dst: &mut [u32],
        a: View,
        i0: usize,
        mc: usize,
        k0: usize,
        kc: usize,
    ) {
        let kcp = kc.div_ceil(2);
        let padded = mc.next_multiple_of(MR);
        assert!(dst.len() >= padded * kcp);
        let d = dst.as_mut_ptr();
        match ALayout::of(a) {
            ALayout::Rows => {
                // Rows contiguous in k: 32 values convert to 16 pairs in order.
                for i in 0..mc {
                    let src = a.ptr.offset((i0 + i) as isize * a.rs).add(k0);
                    convert_run(d.add(i * kcp), src, kc);
                }
                dst[mc * kcp..padded * kcp].fill(0);
            }
            ALayout::Pairs => {
                assert_eq!(a.rs, 1, "pack_a: rows or columns must be contiguous");
                // Columns contiguous (A is a transpose): a k pair of MR rows is two source rows
                // interleaved, stored as it comes, zeros past mc.
                for r0 in (0..mc).step_by(MR) {
                    let m = mask(mc - r0);
                    let col = a.ptr.add(i0 + r0);
                    let panel = d.add(r0 * kcp);
                    for p in 0..kcp {
                        let k = k0 + 2 * p;
                        let even = _mm512_maskz_loadu_ps(m, col.offset(k as isize * a.cs));
                        let odd = if 2 * p + 1 < kc {
                            _mm512_maskz_loadu_ps(m, col.offset((k + 1) as isize * a.cs))
                        } else {
                            _mm512_setzero_ps()
                        };
                        let out = panel.add(p * MR) as *mut _;
                        _mm512_mask_storeu_epi32(out, mask(MR), interleave(even, odd));
                    }
                }
            }
        }
    }

    /// `kc` f32 values at `src` as `kc.div_ceil(2)` bf16 pairs at `dst` (an odd last value
    /// paired with zero).
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    #[inline]
    unsafe fn convert_run(dst: *mut u32, src: *const f32, kc: usize) {
        let mut k = 0;
        while k + 32 <= kc {
            let v = _mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(src.add(k + 16)),
                _mm512_loadu_ps(src.add(k)),
            );
            _mm512_storeu_si512(dst.add(k / 2) as *mut _, as_bits(v));
            k += 32;
        }
        if k < kc {
            let n = kc - k;
            let lo = _mm512_maskz_loadu_ps(mask(n), src.add(k));
            let hi = _mm512_maskz_loadu_ps(mask(n.saturating_sub(16)), src.add(k + 16));
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_mask_storeu_epi32(dst.add(k / 2) as *mut _, mask(n.div_ceil(2)), as_bits(v));
        }
    }

    /// `super::pack_b` with AVX-512, for a B whose rows or columns are contiguous.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn pack_b(
        dst: &mut [u32],
        b: View,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
    ) {
        let kcp = kc.div_ceil(2);
        let panels = nc.div_ceil(NR);
        assert!(dst.len() >= panels * NR * kcp);
        let d = dst.as_mut_ptr();
        if b.cs == 1 {
            // Rows contiguous along j: a k pair is two rows, interleaved 16 columns at a time.
            for t in 0..panels {
                for half in 0..2 {
                    let j = t * NR + 16 * half;
                    let m = mask(nc.saturating_sub(j));
                    let src = b.ptr.add(j0 + j);
                    for p in 0..kcp {
                        let k = k0 + 2 * p;
                        let even = _mm512_maskz_loadu_ps(m, src.offset(k as isize * b.rs));
                        let odd = if 2 * p + 1 < kc {
                            _mm512_maskz_loadu_ps(m, src.offset((k + 1) as isize * b.rs))
                        } else {
                            _mm512_setzero_ps()
                        };
                        let out = d.add(t * kcp * NR + p * NR + 16 * half);
                        _mm512_storeu_si512(out as *mut _, interleave(even, odd));
                    }
                }
            }
        } else if b.rs == 1 {
            // Columns contiguous along k (B is a transpose): convert a column's run, then
            // scatter its pairs down the panel (one every NR u32s).
            let stride = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32(NR as i32),
            );
            let mut run = [0u32; super::KC / 2];
            for j in 0..panels * NR {
                let panel = d.add((j / NR) * kcp * NR + j % NR);
                if j >= nc {
                    for p in 0..kcp {
                        *panel.add(p * NR) = 0;
                    }
                    continue;
                }
                convert_run(
                    run.as_mut_ptr(),
                    b.ptr.offset((j0 + j) as isize * b.cs).add(k0),
                    kc,
                );
                for p in (0..kcp).step_by(16) {
                    let v = _mm512_loadu_si512(run.as_ptr().add(p) as *const _);
                    let base = panel.add(p * NR) as *mut i32;
                    _mm512_mask_i32scatter_epi32::<4>(base, mask(kcp - p), stride, v);
                }
            }
        } else {
            panic!("pack_b: rows or columns must be contiguous");
        }
    }

    /// The micro-kernel: an `MR` x `NR` tile of sums over `kcp` k pairs, then into C.
    ///
    /// The loop is assembly because the compiler, given it as intrinsics, unrolled it and ran
    /// out of registers (24 sums, 2 B vectors, 2 broadcasts: 28 of 32), spilling sums to the
    /// stack every step. Per k pair: two 64-byte loads of B, twelve 4-byte broadcasts of A (row r
    /// at r `a_rs` u32s, reached from four bases three rows apart; the bases step `a_ps` per
    /// pair: `ALayout::strides`), 24 VDPBF16PS.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn micro(
        kcp: usize,
        a: &[u32],
        (a_rs, a_ps): (usize, usize),
        b: &[u32],
        t: Tile,
    ) {
        assert!(a.len() >= MR * kcp && b.len() >= NR * kcp);
        assert!(kcp == 0 || a_rs * (MR - 1) + a_ps * (kcp - 1) < MR * kcp);
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        if kcp > 0 {
            let (ld, step) = (a_rs * 4, a_ps * 4);
            let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15, r16, r17, r18, r19, r20, r21, r22, r23] =
                &mut acc;
            std::arch::asm!(
                "2:",
                "vmovups zmm24, [{b}]",
                "vmovups zmm25, [{b} + 64]",
                "vpbroadcastd zmm26, dword ptr [{a0}]",
                "vpbroadcastd zmm27, dword ptr [{a0} + {ld}]",
                "vdpbf16ps zmm0, zmm24, zmm26",
                "vdpbf16ps zmm1, zmm25, zmm26",
                "vdpbf16ps zmm2, zmm24, zmm27",
                "vdpbf16ps zmm3, zmm25, zmm27",
                "vpbroadcastd zmm26, dword ptr [{a0} + 2*{ld}]",
                "vpbroadcastd zmm27, dword ptr [{a3}]",
                "vdpbf16ps zmm4, zmm24, zmm26",
                "vdpbf16ps zmm5, zmm25, zmm26",
                "vdpbf16ps zmm6, zmm24, zmm27",
                "vdpbf16ps zmm7, zmm25, zmm27",
                "vpbroadcastd zmm26, dword ptr [{a3} + {ld}]",
                "vpbroadcastd zmm27, dword ptr [{a3} + 2*{ld}]",
                "vdpbf16ps zmm8, zmm24, zmm26",
                "vdpbf16ps zmm9, zmm25, zmm26",
                "vdpbf16ps zmm10, zmm24, zmm27",
                "vdpbf16ps zmm11, zmm25, zmm27",
                "vpbroadcastd zmm26, dword ptr [{a6}]",
                "vpbroadcastd zmm27, dword ptr [{a6} + {ld}]",
                "vdpbf16ps zmm12, zmm24, zmm26",
                "vdpbf16ps zmm13, zmm25, zmm26",
                "vdpbf16ps zmm14, zmm24, zmm27",
                "vdpbf16ps zmm15, zmm25, zmm27",
                "vpbroadcastd zmm26, dword ptr [{a6} + 2*{ld}]",
                "vpbroadcastd zmm27, dword ptr [{a9}]",
                "vdpbf16ps zmm16, zmm24, zmm26",
                "vdpbf16ps zmm17, zmm25, zmm26",
                "vdpbf16ps zmm18, zmm24, zmm27",
                "vdpbf16ps zmm19, zmm25, zmm27",
                "vpbroadcastd zmm26, dword ptr [{a9} + {ld}]",
                "vpbroadcastd zmm27, dword ptr [{a9} + 2*{ld}]",
                "vdpbf16ps zmm20, zmm24, zmm26",
                "vdpbf16ps zmm21, zmm25, zmm26",
                "vdpbf16ps zmm22, zmm24, zmm27",
                "vdpbf16ps zmm23, zmm25, zmm27",
                "add {a0}, {step}",
                "add {a3}, {step}",
                "add {a6}, {step}",
                "add {a9}, {step}",
                "add {b}, 128",
                "dec {n}",
                "jnz 2b",
                a0 = inout(reg) a.as_ptr() => _,
                a3 = inout(reg) a.as_ptr().add(3 * a_rs) => _,
                a6 = inout(reg) a.as_ptr().add(6 * a_rs) => _,
                a9 = inout(reg) a.as_ptr().add(9 * a_rs) => _,
                ld = in(reg) ld,
                step = in(reg) step,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) kcp => _,
                inout("zmm0") *r0, inout("zmm1") *r1, inout("zmm2") *r2, inout("zmm3") *r3,
                inout("zmm4") *r4, inout("zmm5") *r5, inout("zmm6") *r6, inout("zmm7") *r7,
                inout("zmm8") *r8, inout("zmm9") *r9, inout("zmm10") *r10, inout("zmm11") *r11,
                inout("zmm12") *r12, inout("zmm13") *r13, inout("zmm14") *r14, inout("zmm15") *r15,
                inout("zmm16") *r16, inout("zmm17") *r17, inout("zmm18") *r18, inout("zmm19") *r19,
                inout("zmm20") *r20, inout("zmm21") *r21, inout("zmm22") *r22, inout("zmm23") *r23,
                out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                options(nostack, readonly),
            );
        }
        let scale = _mm512_set1_ps(t.scale);
        let masks = [mask(t.cols), mask(t.cols.saturating_sub(16))];
        for (r, sums) in acc.chunks_exact(2).enumerate().take(t.rows) {
            let row = t.c.add(r * t.rs);
            for (h, &m) in masks.iter().enumerate() {
                let c = row.add(16 * h);
                let v = if t.add {
                    _mm512_fmadd_ps(sums[h], scale, _mm512_maskz_loadu_ps(m, c))
                } else {
                    _mm512_mul_ps(sums[h], scale)
                };
                _mm512_mask_storeu_ps(c, m, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::math::test_values;

    /// The f64 value of the bf16 product: sum over k of bf(a) bf(b), exactly.
    fn reference(m: usize, n: usize, k: usize, a: View, b: View) -> Vec<f64> {
        let at = |v: View, i: usize, j: usize| unsafe {
            bf16_value(bf16_bits(
                *v.ptr.offset(i as isize * v.rs + j as isize * v.cs),
            )) as f64
        };
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|kk| at(a, i, kk) * at(b, kk, j)).sum();
            }
        }
        out
    }

    #[test]
    fn rounding_matches_the_definition() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1.0); just above rounds up.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(-2.5), 0xc020);
        assert_eq!(bf16_bits(f32::MIN_POSITIVE / 2.0), 0);
        assert_eq!(bf16_bits(-f32::MIN_POSITIVE / 2.0), 0x8000);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_bits(f32::MAX), 0x7f80); // rounds to infinity
    }

    /// Every shape edge: m, n and k around the tile and block sizes, odd k, a k of zero.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (5, 7, 3),
        (12, 32, 2),
        (13, 33, 31),
        (37, 70, 257),
        (200, 45, 64),
        (25, 530, 100),
        (3, 17, 600),
        (4, 6, 0),
    ];

    /// The four ways the engine passes operands: row-major or transposed, each side.
    fn operands(m: usize, n: usize, k: usize, seed: u64) -> Vec<(Vec<f32>, Vec<f32>, bool, bool)> {
        let a = test_values(m * k, seed, 1.0);
        let b = test_values(k * n, seed + 1, 1.0);
        [(false, false), (true, false), (false, true), (true, true)]
            .map(|(ta, tb)| (a.clone(), b.clone(), ta, tb))
            .to_vec()
    }

    fn views(
        a: &[f32],
        b: &[f32],
        (m, n, k): (usize, usize, usize),
        ta: bool,
        tb: bool,
    ) -> (View, View) {
        let va = if ta {
            View::transposed(a, m)
        } else {
            View::rows(a, k)
        };
        let vb = if tb {
            View::transposed(b, k)
        } else {
            View::rows(b, n)
        };
        (va, vb)
    }

    #[test]
    fn products_match_an_f64_reference_of_the_rounded_inputs() {
        for (kernel, parallel) in [
            (Kernel::detect(), false),
            (Kernel::detect(), true),
            (Kernel::Portable, true),
        ] {
            for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
                for (a, b, ta, tb) in operands(m, n, k, s as u64) {
                    let (va, vb) = views(&a, &b, (m, n, k), ta, tb);
                    let want = reference(m, n, k, va, vb);
                    // Written into a wider destination: columns past n stay untouched.
                    let rs = n + 3;
                    let mut got = vec![7.0f32; m * rs];
                    unsafe {
                        gemm_bf16(
                            kernel,
                            m,
                            n,
                            k,
                            got.as_mut_ptr(),
                            rs,
                            false,
                            va,
                            Rhs::View(vb),
                            0.5,
                            parallel,
                        )
                    };
                    let mut acc = vec![1.0f32; m * rs];
                    unsafe {
                        gemm_bf16(
                            kernel,
                            m,
                            n,
                            k,
                            acc.as_mut_ptr(),
                            rs,
                            true,
                            va,
                            Rhs::View(vb),
                            1.0,
                            parallel,
                        )
                    };
                    for i in 0..m {
                        for j in 0..rs {
                            let (g, s) = (got[i * rs + j] as f64, acc[i * rs + j] as f64);
                            if j >= n {
                                assert_eq!((g, s), (7.0, 1.0), "{kernel:?} {m}x{n}x{k} outside");
                                continue;
                            }
                            let w = want[i * n + j];
                            // f32 sums of k exact products: |error| <= k eps sum |terms|.
                            let bound = 1e-6 * (k as f64 + 1.0) * (k as f64).sqrt().max(1.0);
                            assert!(
                                (g - 0.5 * w).abs() <= bound,
                                "{kernel:?} {m}x{n}x{k} ta={ta} tb={tb}: {g} vs {}",
                                0.5 * w
                            );
                            assert!(
                                (s - 1.0 - w).abs() <= bound + 1e-6,
                                "{kernel:?} {m}x{n}x{k} accumulate: {s} vs {}",
                                1.0 + w
                            );
                        }
                    }
                }
            }
        }
    }

    /// Decoding over packed weights: within the f32 error of an f64 reference of the rounded
    /// weights (x unrounded), the portable bits on AVX2, and a row's outputs the same bits
    /// whatever else is in the batch.
    #[test]
    fn packed_rows_match_f64_and_do_not_depend_on_the_batch() {
        let kernels: Vec<Kernel> = [Kernel::Portable, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect();
        for (s, &(k, n)) in [(1, 1), (7, 33), (64, 32), (300, 45), (513, 70)]
            .iter()
            .enumerate()
        {
            let w = test_values(k * n, 200 + s as u64, 1.0);
            let rows = 5;
            let x = test_values(rows * k, 300 + s as u64, 1.0);
            let bias = test_values(n, 400 + s as u64, 1.0);
            let packed = unsafe { PackedMatrices::new(&[(View::rows(&w, n), k, n)]) };
            let b = packed.get(0);
            let mut first: Option<Vec<f32>> = None;
            for &kernel in &kernels {
                let mut all = vec![0.0f32; rows * n];
                b.forward_rows(kernel, &mut all, &x, Some(&bias));
                for r in 0..rows {
                    let mut one = vec![0.0f32; n];
                    b.forward_rows(kernel, &mut one, &x[r * k..(r + 1) * k], Some(&bias));
                    let row = &all[r * n..(r + 1) * n];
                    assert!(
                        one.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kernel:?} {k}x{n}: row {r} alone differs from row {r} of {rows}"
                    );
                    for j in 0..n {
                        let want: f64 = bias[j] as f64
                            + (0..k)
                                .map(|i| {
                                    x[r * k + i] as f64 * bf16_value(bf16_bits(w[i * n + j])) as f64
                                })
                                .sum::<f64>();
                        let bound = 1e-6 * (k as f64 + 1.0) * (k as f64).sqrt().max(1.0);
                        assert!(
                            (row[j] as f64 - want).abs() <= bound,
                            "{kernel:?} {k}x{n} ({r}, {j}): {} vs {want}",
                            row[j]
                        );
                    }
                }
                match &first {
                    None => first = Some(all),
                    Some(f) => assert!(
                        f.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kernel:?} {k}x{n}: not the portable bits"
                    ),
                }
            }
        }
    }

    #[test]
    fn the_portable_kernel_gives_the_hardware_bits_whatever_the_split() {
        for fast_kernel in [Kernel::Avx512, Kernel::Avx2] {
            if fast_kernel.runs_here() {
                portable_gives_the_bits_of(fast_kernel);
            } else {
                eprintln!(
                    "{fast_kernel:?}: this CPU cannot run it, so there is nothing to compare"
                );
            }
        }
    }

    fn portable_gives_the_bits_of(fast_kernel: Kernel) {
        for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
            for (a, b, ta, tb) in operands(m, n, k, 100 + s as u64) {
                let (va, vb) = views(&a, &b, (m, n, k), ta, tb);
                let mut fast = vec![0.0f32; m * n];
                let mut portable = vec![0.0f32; m * n];
                unsafe {
                    gemm_bf16(
                        fast_kernel,
                        m,
                        n,
                        k,
                        fast.as_mut_ptr(),
                        n,
                        false,
                        va,
                        Rhs::View(vb),
                        1.0,
                        true,
                    );
                    gemm_bf16(
                        Kernel::Portable,
                        m,
                        n,
                        k,
                        portable.as_mut_ptr(),
                        n,
                        false,
                        va,
                        Rhs::View(vb),
                        1.0,
                        false,
                    );
                }
                // B packed beforehand, as bf16 inference weights are: the same bits.
                let mut prepacked = vec![0.0f32; m * n];
                unsafe {
                    let b = PackedMatrices::new(&[(vb, k, n)]);
                    gemm_bf16(
                        fast_kernel,
                        m,
                        n,
                        k,
                        prepacked.as_mut_ptr(),
                        n,
                        false,
                        va,
                        Rhs::Packed(b.get(0)),
                        1.0,
                        true,
                    );
                }
                for (what, got) in [("", &fast), (" packed B", &prepacked)] {
                    let differ = got
                        .iter()
                        .zip(&portable)
                        .filter(|(x, y)| x.to_bits() != y.to_bits())
                        .count();
                    assert_eq!(
                        differ, 0,
                        "{fast_kernel:?}{what} {m}x{n}x{k} ta={ta} tb={tb}"
                    );
                }
            }
        }
    }

    /// f32 values whose bf16 rounding is easy to get wrong: ties, zeros, subnormals, the top.
    fn rounding_cases() -> Vec<f32> {
        let mut xs: Vec<f32> = test_values(4096, 9, 1.0).iter().map(|v| v * 1e3).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::INFINITY,
            1.0 + 1.0 / 256.0,
        ]);
        xs.extend((0..64).map(|i| f32::from_bits(0x3f80_8000 + i * 0x1_0000)));
        xs
    }

    #[test]
    fn the_conversion_matches_the_hardware() {
        #[cfg(target_arch = "x86_64")]
        if Kernel::detect() == Kernel::Avx512 {
            let mut xs = rounding_cases();
            let n = xs.len().next_multiple_of(2);
            xs.resize(n, 0.0);
            let mut packed = vec![0u32; n / 2];
            let va = View::rows(&xs, n);
            unsafe { avx512_pack_one_row(&mut packed, va, n) };
            for (p, &v) in packed.iter().enumerate() {
                assert_eq!(v as u16, bf16_bits(xs[2 * p]), "{}", xs[2 * p]);
                assert_eq!(
                    (v >> 16) as u16,
                    bf16_bits(xs[2 * p + 1]),
                    "{}",
                    xs[2 * p + 1]
                );
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_rounding_matches_the_definition() {
        if !Kernel::Avx2.runs_here() {
            return;
        }
        let mut xs = rounding_cases();
        xs.extend([
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::NEG_INFINITY,
        ]);
        let n = xs.len();
        let mut out = vec![u32::MAX; n + 5];
        // SAFETY: AVX2 is present; xs holds n values, out n + 5.
        unsafe { avx2::round_run(out.as_mut_ptr(), xs.as_ptr(), n, n + 5) };
        for (x, &v) in xs.iter().zip(&out) {
            assert_eq!(
                v,
                u32::from(bf16_bits(*x)) << 16,
                "{x} ({:#x})",
                x.to_bits()
            );
        }
        assert!(out[n..].iter().all(|&v| v == 0));
    }

    /// One row through the AVX-512 packing (kc = the whole row, in blocks of KC).
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx512_pack_one_row(dst: &mut [u32], a: View, n: usize) {
        for k0 in (0..n).step_by(KC) {
            let kc = KC.min(n - k0);
            let mut block = vec![0u32; MR * kc.div_ceil(2)];
            pack_a(Kernel::Avx512, &mut block, a, 0, 1, k0, kc);
            dst[k0 / 2..(k0 + kc) / 2].copy_from_slice(&block[..kc / 2]);
        }
    }
}

//! Cached inference on the CPU: each new token costs O(context) attention plus one pass over the
//! weights, not a recomputation of the whole sequence. No activations are saved.
//!
//! Keys and values are laid out (layer, row, kv head, position, head_size): a decoding step reads
//! each head's cache as one contiguous block, instead of a slice of every 3 KB row (which cost
//! ~2x per token at 900 tokens of context, in TLB and cache misses). Each row holds its own
//! number of positions ([`KvCache::lens`]), so one pass can prefill some rows and decode others.

use super::block::{block_forward, norm_forward, BlockActs, Shape, Weights};
use super::train::attn_dims;
use super::{built_once, CpuEngine};
use crate::engine::{Feed, InferenceWeights, KvCache, KvDtype};
use crate::kernels::cpu::attention::{
    attention_forward_cached, CacheValue, CacheView, CachedQueries,
};
use crate::kernels::cpu::encoder::encoder_forward;
use crate::kernels::cpu::matmul::{Layout, Precision, View};
use crate::kernels::cpu::matmul_bf16::{Bf16, Kernel, PackedB, PackedMatrices};
use crate::kernels::cpu::q8::Q8Matrix;
use crate::kernels::cpu::rope::rope_forward;
use crate::model::Gpt;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;

/// The four matrices of every GPT-2 block transposed to (out, in), for cached inference (a
/// Llama's are stored that way already). A token's
/// pass then reads each output's weights as one contiguous row (a dot product), where the
/// parameters' (in, out) layout has it gather a few values from every row of W: decoding a
/// handful of rows became ~2.5x faster at GPT-2 124M on 2 cores (`benches/serve_bench.sh`).
/// Built at the first cached pass (the weights' size again, minus the embeddings) and dropped
/// when the optimizer changes the parameters.
pub(crate) struct DecodeWeights {
    data: Vec<f32>,
    /// (offset in the parameters, offset in `data`, length), one per matrix.
    at: Vec<(usize, usize, usize)>,
}

impl DecodeWeights {
    pub(super) fn new(model: &Gpt) -> DecodeWeights {
        let c = model.config.n_embd;
        let p = &model.params;
        // (offset in the parameters, rows = inputs, columns = outputs) of each matrix.
        let shapes: Vec<(usize, usize, usize)> = model
            .table
            .layers
            .iter()
            .flat_map(|o| {
                [
                    (o.qkv_w, c, 3 * c),
                    (o.attproj_w, c, c),
                    (o.fc_w, c, 4 * c),
                    (o.fcproj_w, 4 * c, c),
                ]
            })
            .collect();
        let mut at = Vec::with_capacity(shapes.len());
        let mut len = 0;
        for &(off, cin, cout) in &shapes {
            at.push((off, len, cin * cout));
            len += cin * cout;
        }
        let mut data = vec![0.0f32; len];
        let mut rest = &mut data[..];
        let mut parts = Vec::with_capacity(shapes.len());
        for &(off, cin, cout) in &shapes {
            let (part, tail) = rest.split_at_mut(cin * cout);
            parts.push((&p[off..off + cin * cout], cin, cout, part));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(w, cin, cout, part)| {
            // (in, out) -> (out, in): row j of the copy is column j of the parameter.
            for (j, row) in part.chunks_mut(cin).enumerate() {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = w[k * cout + j];
                }
            }
        });
        crate::perf::back_with_huge_pages(&data);
        DecodeWeights { data, at }
    }

    /// The transposed copy of the matrix at parameter offset `off`, if it is one of them.
    pub(super) fn get(&self, off: usize, len: usize) -> Option<&[f32]> {
        let &(_, at, n) = self.at.iter().find(|&&(o, _, _)| o == off)?;
        (n == len).then(|| &self.data[at..at + n])
    }
}

/// Every block matrix and the classifier in int8 (Q8_0, `group` values per scale), for cached
/// inference with [`crate::engine::InferenceWeights::Q8`]: runq.c's arithmetic (see
/// `crate::kernels::cpu::q8`). Quantized from the (out, in) form of each matrix (GPT-2's are
/// transposed first), built at the first such pass, dropped when the optimizer changes the
/// parameters. A matrix whose rows are not a multiple of `group` takes a smaller group
/// ([`q8_group`]) or stays f32.
pub(crate) struct Q8Weights {
    /// (offset in the parameters, number of values, the matrix).
    mats: Vec<(usize, usize, Q8Matrix)>,
    /// Whether every block matrix is here (GPT-2 then needs no transposed f32 copy).
    pub(super) all_blocks: bool,
}

/// (offset in the parameters, outputs, inputs) of every block matrix.
fn block_matrices(model: &Gpt) -> Vec<(usize, usize, usize)> {
    let s = Shape::new(&model.config);
    let c = s.c;
    model
        .table
        .layers
        .iter()
        .flat_map(|o| {
            [
                (o.qkv_w, s.qkv, c),
                (o.attproj_w, c, c),
                (o.fc_w, s.mlp_in, c),
                (o.fcproj_w, c, s.mlp),
            ]
        })
        .collect()
}

impl Q8Weights {
    pub(super) fn new(model: &Gpt, group: usize) -> Q8Weights {
        let cfg = &model.config;
        let s = Shape::new(cfg);
        let (c, p, tb) = (s.c, &model.params, &model.table);
        let blocks = block_matrices(model);
        let mut mats = Vec::with_capacity(blocks.len() + 1);
        for &(off, out, inp) in &blocks {
            let w = &p[off..off + out * inp];
            let g = q8_group(group, inp);
            let m = match s.layout {
                Layout::OutIn => Q8Matrix::quantize(w, out, inp, g),
                Layout::InOut => Q8Matrix::quantize(&transpose(w, inp, out), out, inp, g),
            };
            if let Ok(m) = m {
                mats.push((off, out * inp, m));
            }
        }
        let all_blocks = mats.len() == blocks.len();
        // The classifier (the tied one reads wte) is (vocab, C) either way.
        let vp = cfg.padded_vocab_size();
        let head = &p[tb.lm_head..tb.lm_head + vp * c];
        if let Ok(m) = Q8Matrix::quantize(head, vp, c, q8_group(group, c)) {
            mats.push((tb.lm_head, vp * c, m));
        }
        Q8Weights { mats, all_blocks }
    }

    /// The int8 form of the matrix at parameter offset `off` (`len` values), if it has one.
    pub(super) fn get(&self, off: usize, len: usize) -> Option<&Q8Matrix> {
        self.mats
            .iter()
            .find(|(o, n, _)| *o == off && *n == len)
            .map(|(_, _, m)| m)
    }
}

/// Every block matrix and the classifier in bf16, for cached inference with
/// [`crate::engine::InferenceWeights::Bf16`]: half the bytes of f32 to stream per decoded token,
/// widened back to f32 as they are loaded (the activations stay f32). A prompt's pass multiplies
/// in bf16, activations rounded too (`matmul_bf16`). Where that product runs on AVX2 alone, the
/// block matrices are kept packed as it reads them ([`PackedB`]: packing them on every pass took
/// a tenth of it there), and decoding reads that same copy; elsewhere they are (out, in) rows
/// for dot products (`matmul::WeightValue`) and a prompt's pass packs the f32 parameters. The
/// classifier is rows either way (only decoding-sized products read it). Built at the first such
/// pass, dropped when the optimizer changes the parameters.
pub(crate) struct Bf16Weights {
    data: Vec<Bf16>,
    /// (offset in the parameters, number of values, offset in `data`), one per matrix in rows.
    at: Vec<(usize, usize, usize)>,
    /// The matrices kept packed, and (offset in the parameters, number of values) of each.
    packed: Option<(PackedMatrices, Vec<(usize, usize)>)>,
}

impl Bf16Weights {
    pub(super) fn new(model: &Gpt) -> Bf16Weights {
        let cfg = &model.config;
        let (layout, c, vp) = (Shape::new(cfg).layout, cfg.n_embd, cfg.padded_vocab_size());
        // The blocks in the parameters' layout, the classifier (vocab, C) either way.
        let blocks: Vec<(usize, usize, usize, Layout)> = block_matrices(model)
            .into_iter()
            .map(|(off, out, inp)| (off, out, inp, layout))
            .collect();
        let classifier = (model.table.lm_head, vp, c, Layout::OutIn);
        let (packed, mut mats) = if Kernel::detect() == Kernel::Avx2 {
            let views: Vec<(View, usize, usize)> = blocks
                .iter()
                .map(|&(off, out, inp, layout)| {
                    let w = &model.params[off..off + out * inp];
                    (layout.view(w, inp, out), inp, out)
                })
                .collect();
            // SAFETY: each view covers its matrix's out x inp values.
            let packed = unsafe { PackedMatrices::new(&views) };
            crate::perf::back_with_huge_pages(packed.words());
            let at = blocks.iter().map(|&(off, out, inp, _)| (off, out * inp));
            (Some((packed, at.collect())), Vec::new())
        } else {
            (None, blocks)
        };
        mats.push(classifier);
        let mut at = Vec::with_capacity(mats.len());
        let mut len = 0;
        for &(off, out, inp, _) in &mats {
            at.push((off, out * inp, len));
            len += out * inp;
        }
        let mut data = vec![Bf16::default(); len];
        let mut rest = &mut data[..];
        let mut parts = Vec::with_capacity(mats.len());
        for (off, out, inp, layout) in mats {
            let (part, tail) = rest.split_at_mut(out * inp);
            parts.push((&model.params[off..off + out * inp], out, inp, layout, part));
            rest = tail;
        }
        parts
            .into_par_iter()
            .for_each(|(w, out, inp, layout, part)| {
                for (j, row) in part.chunks_mut(inp).enumerate().take(out) {
                    for (k, v) in row.iter_mut().enumerate() {
                        *v = Bf16::round(match layout {
                            Layout::OutIn => w[j * inp + k],
                            Layout::InOut => w[k * out + j],
                        });
                    }
                }
            });
        crate::perf::back_with_huge_pages(&data);
        Bf16Weights { data, at, packed }
    }

    /// The bf16 (out, in) form of the matrix at parameter offset `off` (`len` values).
    pub(super) fn get(&self, off: usize, len: usize) -> Option<&[Bf16]> {
        let &(_, n, at) = self.at.iter().find(|&&(o, n, _)| o == off && n == len)?;
        Some(&self.data[at..at + n])
    }

    /// The packed form of the matrix at parameter offset `off` (`len` values), if it is kept so.
    pub(super) fn packed(&self, off: usize, len: usize) -> Option<PackedB<'_>> {
        let (packed, at) = self.packed.as_ref()?;
        let i = at.iter().position(|&a| a == (off, len))?;
        Some(packed.get(i))
    }
}

/// The group size a matrix with rows of `inp` values is quantized with when `group` is asked
/// for: `group` when it divides the rows, else their largest common divisor if that is at least
/// [`MIN_FALLBACK_GROUP`] (runq.c would let its groups run across rows there), else 0 (the
/// matrix stays f32).
pub fn q8_group(group: usize, inp: usize) -> usize {
    let (mut a, mut b) = (group, inp);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    if a == group || a >= MIN_FALLBACK_GROUP {
        a
    } else {
        0
    }
}

/// The smallest group [`q8_group`] falls back to.
pub(crate) const MIN_FALLBACK_GROUP: usize = 16;

/// The (cols, rows) transpose of a row-major (rows, cols) matrix.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for (j, row) in t.chunks_mut(rows).enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v = w[k * cols + j];
        }
    }
    t
}

/// The CPU's side of a [`KvCache`]: keys and values, plus the scratch buffers of a forward pass
/// (grown to the most token rows seen, then reused). Keys and values are f32, bf16 or int8 with
/// a scale per position and kv head ([`crate::engine::Engine::set_kv_cache_dtype`]), because at
/// depth a decoding step reads the cache as well as the weights: at 900 tokens of GPT-2 124M,
/// 66 MB of f32 keys and values (17 MB of int8) beside 250 MB of bf16 weights or 135 MB of int8.
pub(super) struct CpuKv<K> {
    g: KvGeometry,
    /// (layer, row, kv head, max_t, head_size) each.
    k: Vec<K>,
    v: Vec<K>,
    /// Each cached row's scale, (layer, row, kv head, max_t), when `K` is scaled; else empty.
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
    scratch: Scratch,
}

/// The shape of a [`CpuKv`]'s buffers.
#[derive(Clone, Copy)]
struct KvGeometry {
    max_t: usize,
    n_layer: usize,
    n_kv_head: usize,
    head_size: usize,
}

/// One block's buffers for `capacity` token rows, and the input/output of the residual stream.
#[derive(Default)]
struct Scratch {
    capacity: usize,
    x: Vec<f32>,
    out: Vec<f32>,
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    residual2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    proj: Vec<f32>,
    last: Vec<f32>,
    last_mean: Vec<f32>,
    last_rstd: Vec<f32>,
}

impl Scratch {
    fn ensure(&mut self, token_rows: usize, feeds: usize, s: &Shape) {
        let c = s.c;
        if token_rows > self.capacity {
            self.capacity = token_rows;
            for (buf, width) in [
                (&mut self.x, c),
                (&mut self.out, c),
                (&mut self.ln1, c),
                (&mut self.qkv, s.qkv),
                (&mut self.atty, c),
                (&mut self.residual2, c),
                (&mut self.ln2, c),
                (&mut self.fch, s.mlp_in),
                (&mut self.fch_gelu, s.mlp),
                (&mut self.proj, c),
            ] {
                buf.resize(token_rows * width, 0.0);
            }
            for buf in [
                &mut self.ln1_mean,
                &mut self.ln1_rstd,
                &mut self.ln2_mean,
                &mut self.ln2_rstd,
            ] {
                buf.resize(token_rows, 0.0);
            }
        }
        if feeds * c > self.last.len() {
            self.last.resize(feeds * c, 0.0);
            self.last_mean.resize(feeds, 0.0);
            self.last_rstd.resize(feeds, 0.0);
        }
    }
}

impl<K: CacheValue> CpuKv<K> {
    fn new(engine: &CpuEngine, rows: usize, max_t: usize) -> CpuKv<K> {
        let cfg = &engine.model.config;
        let g = KvGeometry {
            max_t,
            n_layer: cfg.n_layer,
            n_kv_head: cfg.n_kv_head(),
            head_size: cfg.head_size(),
        };
        let (n, n_scales) = (g.len(rows, g.head_size), g.len(rows, K::SCALED as usize));
        CpuKv {
            g,
            k: vec![K::from_f32(0.0); n],
            v: vec![K::from_f32(0.0); n],
            k_scale: vec![0.0; n_scales],
            v_scale: vec![0.0; n_scales],
            scratch: Scratch::default(),
        }
    }
}

impl KvGeometry {
    /// The length of a buffer of `rows` rows holding `per_position` values per position and kv
    /// head (`head_size` for keys and values, 1 for their scales).
    fn len(&self, rows: usize, per_position: usize) -> usize {
        self.n_layer * rows * self.n_kv_head * self.max_t * per_position
    }

    /// Where row `r`'s first `len` positions lie in such a buffer of `rows` rows: one range per
    /// (layer, kv head).
    fn used_ranges(
        &self,
        rows: usize,
        r: usize,
        len: usize,
        per_position: usize,
    ) -> Vec<std::ops::Range<usize>> {
        let (n_head, max_t) = (self.n_kv_head, self.max_t);
        (0..self.n_layer)
            .flat_map(|l| {
                (0..n_head).map(move |h| {
                    let start = (((l * rows + r) * n_head + h) * max_t) * per_position;
                    start..start + len * per_position
                })
            })
            .collect()
    }

    /// Reorders one buffer (`per_position` values per position and kv head) for
    /// [`CpuEngine::reorder_kv`]: new row i takes old row `order[i]`'s used positions. Only rows
    /// that move are copied; with the number of rows changed, the buffer is rebuilt.
    fn reorder<T: Copy>(
        &self,
        buf: &mut Vec<T>,
        per_position: usize,
        zero: T,
        order: &[usize],
        old_lens: &[usize],
    ) {
        let (old_rows, new_rows) = (old_lens.len(), order.len());
        let moved: Vec<Option<Vec<T>>> = order
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                (new_rows != old_rows || r != i).then(|| {
                    self.used_ranges(old_rows, r, old_lens[r], per_position)
                        .into_iter()
                        .flat_map(|g| buf[g].iter().copied())
                        .collect()
                })
            })
            .collect();
        if new_rows != old_rows {
            *buf = vec![zero; self.len(new_rows, per_position)];
        }
        for (i, src) in moved.iter().enumerate() {
            let Some(src) = src else { continue };
            let mut offset = 0;
            for range in self.used_ranges(new_rows, i, old_lens[order[i]], per_position) {
                let n = range.len();
                buf[range].copy_from_slice(&src[offset..offset + n]);
                offset += n;
            }
        }
    }
}

fn cpu_kv<K: CacheValue>(cache: &mut KvCache) -> Result<&mut CpuKv<K>> {
    cache
        .storage
        .downcast_mut::<CpuKv<K>>()
        .context("this KV cache belongs to another device's engine")
}

/// What a cache of this engine holds.
fn held(cache: &KvCache) -> KvDtype {
    if cache.storage.is::<CpuKv<Bf16>>() {
        KvDtype::Bfloat16
    } else if cache.storage.is::<CpuKv<i8>>() {
        KvDtype::Int8
    } else {
        KvDtype::Float32
    }
}

impl CpuEngine {
    pub(super) fn new_kv_cache(&self, rows: usize, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.model.config.block_size);
        let dtype = self
            .kv_cache_dtype
            .unwrap_or(self.inference.suited_kv_cache());
        let storage: Box<dyn std::any::Any + Send> = match dtype {
            KvDtype::Float32 => Box::new(CpuKv::<f32>::new(self, rows, capacity)),
            KvDtype::Bfloat16 => Box::new(CpuKv::<Bf16>::new(self, rows, capacity)),
            KvDtype::Int8 => Box::new(CpuKv::<i8>::new(self, rows, capacity)),
        };
        KvCache::new(rows, capacity, storage)
    }

    /// See [`crate::engine::Engine::forward_cached`] and, with `hidden`,
    /// [`crate::engine::Engine::forward_cached_hidden`]. All feeds' tokens go through the weights
    /// as one (tokens, C) matrix; only attention and the cache writes are per feed.
    pub(super) fn forward_feeds(
        &self,
        cache: &mut KvCache,
        feeds: &[Feed],
        logits: &mut [f32],
        hidden: Option<&mut [f32]>,
    ) -> Result<()> {
        match held(cache) {
            KvDtype::Float32 => self.forward_feeds_with::<f32>(cache, feeds, logits, hidden),
            KvDtype::Bfloat16 => self.forward_feeds_with::<Bf16>(cache, feeds, logits, hidden),
            KvDtype::Int8 => self.forward_feeds_with::<i8>(cache, feeds, logits, hidden),
        }
    }

    /// [`CpuEngine::forward_feeds`] on a cache of `K` keys and values.
    fn forward_feeds_with<K: CacheValue>(
        &self,
        cache: &mut KvCache,
        feeds: &[Feed],
        logits: &mut [f32],
        hidden: Option<&mut [f32]>,
    ) -> Result<()> {
        let cfg = &self.model.config;
        let (c, vp, v) = (cfg.n_embd, cfg.padded_vocab_size(), cfg.vocab_size);
        let shape = Shape::new(cfg);
        let rows = cache.rows();
        let seqs: Vec<CachedQueries> = cache
            .plan(feeds, v, vp, logits.len())?
            .into_iter()
            .map(|q| CachedQueries {
                slot: q.row,
                first: q.first,
                n: q.n,
                pos: q.pos,
            })
            .collect();
        let n_tok = seqs.last().map_or(0, |s| s.first + s.n);
        if n_tok == 0 {
            return Ok(());
        }
        if let Some(h) = &hidden {
            if h.len() < n_tok * c {
                bail!(
                    "hidden-state buffer holds {} values, needs {} ({n_tok} tokens x {c})",
                    h.len(),
                    n_tok * c
                );
            }
        }
        let kv = cpu_kv::<K>(cache)?;
        kv.scratch.ensure(n_tok, feeds.len(), &shape);
        let (p, tb) = (&self.model.params, &self.model.table);
        let q8 = match self.inference {
            InferenceWeights::Q8 { group } => Some(built_once(&self.q8_weights, || {
                Q8Weights::new(&self.model, group)
            })),
            InferenceWeights::F32 | InferenceWeights::Bf16 => None,
        };
        let bf16 = (self.inference == InferenceWeights::Bf16)
            .then(|| built_once(&self.bf16_weights, || Bf16Weights::new(&self.model)));
        let transposed =
            (shape.layout == Layout::InOut && bf16.is_none() && !q8.is_some_and(|q| q.all_blocks))
                .then(|| built_once(&self.decode_weights, || DecodeWeights::new(&self.model)));
        let w = Weights {
            p,
            bias: cfg.bias,
            layout: shape.layout,
            transposed,
            q8,
            bf16,
            precision: match bf16 {
                Some(_) => Precision::Bf16,
                None => Precision::F32,
            },
        };
        let dims = attn_dims(cfg, rows, w.precision);
        let (nh, nkv, hs, width) = (dims.n_head, dims.n_kv_head, dims.head_size, shape.qkv);
        let max_t = kv.g.max_t;
        let (layer_stride, scales_stride) = (kv.g.len(rows, hs) / cfg.n_layer, rows * nkv * max_t);
        let rope = self.rope.as_ref();
        let wpe = rope.is_none().then(|| &p[tb.wpe..]);
        let s = &mut kv.scratch;
        for (f, q) in feeds.iter().zip(&seqs) {
            encoder_forward(
                &mut s.x[q.first * c..(q.first + q.n) * c],
                f.tokens,
                &p[tb.wte..],
                wpe,
                q.n,
                q.pos,
                c,
            );
        }
        for (l, o) in tb.layers.iter().enumerate() {
            let (kl, vl) = (
                &mut kv.k[l * layer_stride..(l + 1) * layer_stride],
                &mut kv.v[l * layer_stride..(l + 1) * layer_stride],
            );
            let n = if K::SCALED { scales_stride } else { 0 };
            let (ks, vs) = (
                &mut kv.k_scale[l * n..(l + 1) * n],
                &mut kv.v_scale[l * n..(l + 1) * n],
            );
            let (x, out) = (&s.x[..n_tok * c], &mut s.out[..n_tok * c]);
            block_forward(
                out,
                x,
                BlockActs {
                    ln1: &mut s.ln1[..n_tok * c],
                    ln1_mean: &mut s.ln1_mean[..n_tok],
                    ln1_rstd: &mut s.ln1_rstd[..n_tok],
                    qkv: &mut s.qkv[..n_tok * width],
                    atty: &mut s.atty[..n_tok * c],
                    residual2: &mut s.residual2[..n_tok * c],
                    ln2: &mut s.ln2[..n_tok * c],
                    ln2_mean: &mut s.ln2_mean[..n_tok],
                    ln2_rstd: &mut s.ln2_rstd[..n_tok],
                    fch: &mut s.fch[..n_tok * shape.mlp_in],
                    fch_gelu: &mut s.fch_gelu[..n_tok * shape.mlp],
                },
                &mut s.proj[..n_tok * c],
                w,
                o,
                shape,
                None,
                |atty, qkv| {
                    // This pass's keys and values join the cache (turned by their positions,
                    // for a Llama) before attention reads it.
                    let (k_at, v_at) = (nh * hs, (nh + nkv) * hs);
                    for q in &seqs {
                        if let Some(rope) = rope {
                            let rows = &mut qkv[q.first * width..];
                            rope_forward(rows, width, q.n, nh + nkv, q.pos, rope);
                        }
                        for i in 0..q.n {
                            let src = &qkv[(q.first + i) * width..][..width];
                            for h in 0..nkv {
                                let at = (q.slot * nkv + h) * max_t + q.pos + i;
                                let (k, v) = (&src[k_at + h * hs..], &src[v_at + h * hs..]);
                                let k_scale = K::store_row(&mut kl[at * hs..][..hs], &k[..hs]);
                                let v_scale = K::store_row(&mut vl[at * hs..][..hs], &v[..hs]);
                                if K::SCALED {
                                    (ks[at], vs[at]) = (k_scale, v_scale);
                                }
                            }
                        }
                    }
                    let cache = CacheView {
                        k: kl,
                        v: vl,
                        k_scale: ks,
                        v_scale: vs,
                        max_t,
                    };
                    attention_forward_cached(atty, qkv, width, cache, dims, &seqs);
                },
            );
            std::mem::swap(&mut s.x, &mut s.out);
        }
        if let Some(h) = hidden {
            // Every position's final norm; the blocks' statistics buffers are free now.
            norm_forward(
                shape.norm,
                &mut h[..n_tok * c],
                &mut s.ln1_mean[..n_tok],
                &mut s.ln1_rstd[..n_tok],
                &s.x[..n_tok * c],
                w.w(tb.lnf_w, c),
                w.b(tb.lnf_b, c),
                c,
            );
        }
        // Only each feed's last position needs logits.
        for (i, q) in seqs.iter().enumerate() {
            let src = (q.first + q.n - 1) * c;
            s.out[i * c..(i + 1) * c].copy_from_slice(&s.x[src..src + c]);
        }
        let n_feeds = feeds.len();
        norm_forward(
            shape.norm,
            &mut s.last[..n_feeds * c],
            &mut s.last_mean[..n_feeds],
            &mut s.last_rstd[..n_feeds],
            &s.out[..n_feeds * c],
            w.w(tb.lnf_w, c),
            w.b(tb.lnf_b, c),
            c,
        );
        w.linear_with(
            &mut logits[..n_feeds * vp],
            &s.last[..n_feeds * c],
            tb.lm_head,
            (w.w(tb.lm_head, vp * c), Layout::OutIn),
            None,
            c,
            vp,
        );
        for q in &seqs {
            cache.lens_mut()[q.slot] += q.n;
        }
        Ok(())
    }

    /// See [`crate::engine::Engine::reorder_cache`]. Only each row's used positions are copied;
    /// with the number of rows unchanged, a row that stays where it is is left alone.
    pub(super) fn reorder_kv(&self, cache: &mut KvCache, order: &[usize]) -> Result<()> {
        match held(cache) {
            KvDtype::Float32 => Self::reorder_kv_of::<f32>(cache, order),
            KvDtype::Bfloat16 => Self::reorder_kv_of::<Bf16>(cache, order),
            KvDtype::Int8 => Self::reorder_kv_of::<i8>(cache, order),
        }
    }

    fn reorder_kv_of<K: CacheValue>(cache: &mut KvCache, order: &[usize]) -> Result<()> {
        let old_rows = cache.rows();
        if let Some(&bad) = order.iter().find(|&&r| r >= old_rows) {
            bail!("cannot reorder the KV cache: row {bad} does not exist ({old_rows} rows)");
        }
        if order.len() == old_rows && order.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let old_lens = cache.lens().to_vec();
        let kv = cpu_kv::<K>(cache)?;
        let (g, hs, zero) = (kv.g, kv.g.head_size, K::from_f32(0.0));
        g.reorder(&mut kv.k, hs, zero, order, &old_lens);
        g.reorder(&mut kv.v, hs, zero, order, &old_lens);
        if K::SCALED {
            g.reorder(&mut kv.k_scale, 1, 0.0, order, &old_lens);
            g.reorder(&mut kv.v_scale, 1, 0.0, order, &old_lens);
        }
        *cache.lens_mut() = order.iter().map(|&r| old_lens[r]).collect();
        Ok(())
    }
}

//! Forward-only inference with a KV cache: each new token costs O(context) attention plus one
//! pass over the weights, not a recomputation of the whole sequence. No activations are saved.

use super::gpt::Gpt;
use crate::kernels::cpu::attention::{attention_forward_cached, AttnDims};
use crate::kernels::cpu::encoder::encoder_forward;
use crate::kernels::cpu::gelu::gelu_forward;
use crate::kernels::cpu::layernorm::layernorm_forward;
use crate::kernels::cpu::matmul::{matmul_forward, Layout};
use crate::kernels::cpu::residual::residual_forward;
use anyhow::{bail, Result};

/// Keys and values of every layer for `batch` sequences of up to `max_t` tokens, plus the
/// scratch buffers for a forward chunk (grown to the largest chunk seen, then reused). Keys and
/// values are laid out (layer, batch, head, position, head_size): a decoding step reads each
/// head's cache as one contiguous block, instead of a slice of every 3 KB row (which cost ~2x
/// per token at 900 tokens of context, in TLB and cache misses).
pub struct KvCache {
    batch: usize,
    max_t: usize,
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    /// Tokens already in the cache (the same for every sequence of the batch).
    pub len: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    chunk: usize,
    x: Vec<f32>,
    x2: Vec<f32>,
    ln: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    proj: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    last: Vec<f32>,
}

impl KvCache {
    pub fn new(model: &Gpt, batch: usize, max_t: usize) -> KvCache {
        let cfg = &model.config;
        let max_t = max_t.min(cfg.block_size);
        let n = cfg.n_layer * batch * max_t * cfg.n_embd;
        KvCache {
            batch,
            max_t,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_embd: cfg.n_embd,
            len: 0,
            k: vec![0.0; n],
            v: vec![0.0; n],
            chunk: 0,
            x: Vec::new(),
            x2: Vec::new(),
            ln: Vec::new(),
            mean: Vec::new(),
            rstd: Vec::new(),
            qkv: Vec::new(),
            atty: Vec::new(),
            proj: Vec::new(),
            fch: Vec::new(),
            fch_gelu: Vec::new(),
            last: Vec::new(),
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn capacity(&self) -> usize {
        self.max_t
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Rebuilds the batch from existing rows: new row `i` is old row `rows[i]`. Rows may be
    /// permuted, duplicated (beam search, several samples from one prompt pass) or dropped
    /// (finished samples); the batch size becomes `rows.len()`. Only the `len` cached positions
    /// are copied.
    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch) {
            bail!(
                "cannot reorder the KV cache: row {bad} does not exist (batch {})",
                self.batch
            );
        }
        let old_b = self.batch;
        if rows.len() == old_b && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let new_b = rows.len();
        // Copy each moved row's used positions out of the old cache, then lay them down; with
        // the batch size unchanged, a row that stays where it is is left alone.
        let rows_kv: Vec<Option<(Vec<f32>, Vec<f32>)>> = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                (new_b != old_b || r != i).then(|| {
                    (
                        self.used_of_row(&self.k, old_b, r),
                        self.used_of_row(&self.v, old_b, r),
                    )
                })
            })
            .collect();
        if new_b != old_b {
            let n = self.n_layer * new_b * self.max_t * self.n_embd;
            self.k = vec![0.0; n];
            self.v = vec![0.0; n];
            self.batch = new_b;
            // The scratch buffers are sized per batch: regrow them on the next forward.
            self.chunk = 0;
        }
        let hs = self.n_embd / self.n_head;
        let (n_layer, n_head, max_t, len) = (self.n_layer, self.n_head, self.max_t, self.len);
        let moved = rows_kv.iter().enumerate();
        for (i, (k, v)) in moved.filter_map(|(i, kv)| kv.as_ref().map(|kv| (i, kv))) {
            for (src, dst) in [(k, &mut self.k), (v, &mut self.v)] {
                let mut offset = 0;
                for range in Self::used_ranges(n_layer, n_head, max_t, hs, len, new_b, i) {
                    let n = range.len();
                    dst[range].copy_from_slice(&src[offset..offset + n]);
                    offset += n;
                }
            }
        }
        Ok(())
    }

    /// The used positions of batch row `r` of a cache buffer (`k` or `v`) with `batch` rows,
    /// in [`KvCache::used_ranges`] order.
    fn used_of_row(&self, buf: &[f32], batch: usize, r: usize) -> Vec<f32> {
        let hs = self.n_embd / self.n_head;
        Self::used_ranges(
            self.n_layer,
            self.n_head,
            self.max_t,
            hs,
            self.len,
            batch,
            r,
        )
        .flat_map(|range| buf[range].iter().copied())
        .collect()
    }

    /// Where batch row `r`'s first `len` positions lie in a cache buffer of `batch` rows laid
    /// out (layer, batch, head, position, head_size): one range per (layer, head).
    fn used_ranges(
        n_layer: usize,
        n_head: usize,
        max_t: usize,
        hs: usize,
        len: usize,
        batch: usize,
        r: usize,
    ) -> impl Iterator<Item = std::ops::Range<usize>> {
        (0..n_layer).flat_map(move |l| {
            (0..n_head).map(move |h| {
                let start = (((l * batch + r) * n_head + h) * max_t) * hs;
                start..start + len * hs
            })
        })
    }

    fn ensure_chunk(&mut self, n: usize, c: usize) {
        if n <= self.chunk {
            return;
        }
        let rows = self.batch * n;
        self.chunk = n;
        for (buf, width) in [
            (&mut self.x, c),
            (&mut self.x2, c),
            (&mut self.ln, c),
            (&mut self.qkv, 3 * c),
            (&mut self.atty, c),
            (&mut self.proj, c),
            (&mut self.fch, 4 * c),
            (&mut self.fch_gelu, 4 * c),
        ] {
            buf.resize(rows * width, 0.0);
        }
        self.mean.resize(rows, 0.0);
        self.rstd.resize(rows, 0.0);
        self.last.resize(self.batch * c, 0.0);
    }
}

impl Gpt {
    /// Appends `n` tokens per sequence (`tokens` is B x n, row-major) to the cache and writes the
    /// logits of each sequence's last new token to `logits` (B x padded vocab; only the first
    /// `vocab_size` columns of a row are meaningful).
    pub fn forward_cached(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        n: usize,
        logits: &mut [f32],
    ) -> Result<()> {
        let cfg = &self.config;
        let (b, c, nh, vp) = (cache.batch, cfg.n_embd, cfg.n_head, cfg.padded_vocab_size());
        if n == 0 || tokens.len() != b * n {
            bail!(
                "expected {} tokens ({b} sequences x {n}), got {}",
                b * n,
                tokens.len()
            );
        }
        if cache.len + n > cache.max_t {
            bail!(
                "the KV cache holds {} tokens; {} + {n} do not fit (crop the context first)",
                cache.max_t,
                cache.len
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                cfg.vocab_size
            );
        }
        if logits.len() < b * vp {
            bail!(
                "logits buffer holds {} values, needs {}",
                logits.len(),
                b * vp
            );
        }
        cache.ensure_chunk(n, c);
        let (p, tb) = (&self.params, &self.table);
        let bias = |off: usize, len: usize| cfg.bias.then(|| &p[off..off + len]);
        let (pos, max_t, rows) = (cache.len, cache.max_t, b * n);
        let dims = AttnDims {
            batch: b,
            n_head: nh,
            head_size: c / nh,
        };
        let cache_stride = b * max_t * c;

        encoder_forward(
            &mut cache.x[..rows * c],
            tokens,
            &p[tb.wte..],
            &p[tb.wpe..],
            n,
            pos,
            c,
        );
        for (l, o) in tb.layers.iter().enumerate() {
            let (x, ln) = (&cache.x[..rows * c], &mut cache.ln[..rows * c]);
            layernorm_forward(
                ln,
                &mut cache.mean[..rows],
                &mut cache.rstd[..rows],
                x,
                &p[o.ln1_w..],
                bias(o.ln1_b, c),
                c,
            );
            matmul_forward(
                &mut cache.qkv[..rows * 3 * c],
                ln,
                &p[o.qkv_w..o.qkv_w + 3 * c * c],
                Layout::InOut,
                bias(o.qkv_b, 3 * c),
                c,
                3 * c,
            );
            let (kl, vl) = (
                &mut cache.k[l * cache_stride..(l + 1) * cache_stride],
                &mut cache.v[l * cache_stride..(l + 1) * cache_stride],
            );
            let hs = c / nh;
            for bi in 0..b {
                for i in 0..n {
                    let src = &cache.qkv[(bi * n + i) * 3 * c..][..3 * c];
                    for h in 0..nh {
                        let dst = ((bi * nh + h) * max_t + pos + i) * hs;
                        kl[dst..dst + hs].copy_from_slice(&src[c + h * hs..][..hs]);
                        vl[dst..dst + hs].copy_from_slice(&src[2 * c + h * hs..][..hs]);
                    }
                }
            }
            attention_forward_cached(
                &mut cache.atty[..rows * c],
                &cache.qkv[..rows * 3 * c],
                3 * c,
                kl,
                vl,
                dims,
                max_t,
                pos,
                n,
            );
            matmul_forward(
                &mut cache.proj[..rows * c],
                &cache.atty[..rows * c],
                &p[o.attproj_w..o.attproj_w + c * c],
                Layout::InOut,
                bias(o.attproj_b, c),
                c,
                c,
            );
            residual_forward(
                &mut cache.x2[..rows * c],
                &cache.x[..rows * c],
                &cache.proj[..rows * c],
            );
            let (x2, ln) = (&cache.x2[..rows * c], &mut cache.ln[..rows * c]);
            layernorm_forward(
                ln,
                &mut cache.mean[..rows],
                &mut cache.rstd[..rows],
                x2,
                &p[o.ln2_w..],
                bias(o.ln2_b, c),
                c,
            );
            matmul_forward(
                &mut cache.fch[..rows * 4 * c],
                ln,
                &p[o.fc_w..o.fc_w + 4 * c * c],
                Layout::InOut,
                bias(o.fc_b, 4 * c),
                c,
                4 * c,
            );
            gelu_forward(
                &mut cache.fch_gelu[..rows * 4 * c],
                &cache.fch[..rows * 4 * c],
            );
            matmul_forward(
                &mut cache.proj[..rows * c],
                &cache.fch_gelu[..rows * 4 * c],
                &p[o.fcproj_w..o.fcproj_w + 4 * c * c],
                Layout::InOut,
                bias(o.fcproj_b, c),
                4 * c,
                c,
            );
            residual_forward(
                &mut cache.x[..rows * c],
                &cache.x2[..rows * c],
                &cache.proj[..rows * c],
            );
        }
        // Only each sequence's last position needs logits.
        for bi in 0..b {
            let src = ((bi + 1) * n - 1) * c;
            cache.ln[bi * c..(bi + 1) * c].copy_from_slice(&cache.x[src..src + c]);
        }
        layernorm_forward(
            &mut cache.last,
            &mut cache.mean[..b],
            &mut cache.rstd[..b],
            &cache.ln[..b * c],
            &p[tb.lnf_w..],
            bias(tb.lnf_b, c),
            c,
        );
        matmul_forward(
            &mut logits[..b * vp],
            &cache.last,
            &p[tb.wte..tb.wte + vp * c],
            Layout::OutIn,
            None,
            c,
            vp,
        );
        cache.len += n;
        Ok(())
    }
}

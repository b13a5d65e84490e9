//! Cached inference on the GPU: the CPU's `engine::cpu::infer` on device buffers. Keys and
//! values are laid out (layer, row, head, position, head_size), each row holds its own number
//! of positions, and one pass can prefill some rows while it decodes others. The cache's
//! device memory is allocated at the first pass (so running out of it is an error, not a
//! panic), with the scratch of a pass grown to the most token rows seen.

use super::blas::Precision;
use super::block::{block_forward, BlockBufs};
use super::memory::{is_out_of_memory, DevBuf};
use super::ops::{Norm, Operand, Params};
use super::CudaEngine;
use crate::engine::{Feed, FeedPlan, KvCache};
use crate::kernels::cpu::matmul::Layout;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::result::DriverError;

/// The GPU's side of a [`KvCache`].
pub(super) struct CudaKv {
    rows: usize,
    max_t: usize,
    /// Keys and values, allocated at the first pass.
    kv: Option<(DevBuf<f32>, DevBuf<f32>)>,
    scratch: Option<Scratch>,
}

/// One block's buffers for `capacity` token rows, and the pass's inputs and outputs.
struct Scratch {
    capacity: usize,
    feeds: usize,
    x: DevBuf<f32>,
    out: DevBuf<f32>,
    ln1: DevBuf<f32>,
    ln1_mean: DevBuf<f32>,
    ln1_rstd: DevBuf<f32>,
    qkv: DevBuf<f32>,
    atty: DevBuf<f32>,
    residual2: DevBuf<f32>,
    ln2: DevBuf<f32>,
    ln2_mean: DevBuf<f32>,
    ln2_rstd: DevBuf<f32>,
    fch: DevBuf<f32>,
    fch_gelu: DevBuf<f32>,
    proj: DevBuf<f32>,
    tokens: DevBuf<u32>,
    pos: DevBuf<i32>,
    slot: DevBuf<i32>,
    last: DevBuf<f32>,
    last_norm: DevBuf<f32>,
    last_mean: DevBuf<f32>,
    last_rstd: DevBuf<f32>,
    logits: DevBuf<f32>,
}

impl Scratch {
    fn new(capacity: usize, feeds: usize, c: usize, vp: usize) -> Result<Scratch, DriverError> {
        let z = DevBuf::<f32>::zeros;
        Ok(Scratch {
            capacity,
            feeds,
            x: z(capacity * c)?,
            out: z(capacity * c)?,
            ln1: z(capacity * c)?,
            ln1_mean: z(capacity)?,
            ln1_rstd: z(capacity)?,
            qkv: z(capacity * 3 * c)?,
            atty: z(capacity * c)?,
            residual2: z(capacity * c)?,
            ln2: z(capacity * c)?,
            ln2_mean: z(capacity)?,
            ln2_rstd: z(capacity)?,
            fch: z(capacity * 4 * c)?,
            fch_gelu: z(capacity * 4 * c)?,
            proj: z(capacity * c)?,
            tokens: DevBuf::zeros(capacity)?,
            pos: DevBuf::zeros(capacity)?,
            slot: DevBuf::zeros(capacity)?,
            last: z(feeds * c)?,
            last_norm: z(feeds * c)?,
            last_mean: z(feeds)?,
            last_rstd: z(feeds)?,
            logits: z(feeds * vp)?,
        })
    }
}

fn cuda_kv(cache: &mut KvCache) -> Result<&mut CudaKv> {
    cache
        .storage
        .downcast_mut::<CudaKv>()
        .context("this KV cache belongs to another device's engine")
}

fn oom(what: String) -> impl Fn(DriverError) -> anyhow::Error {
    move |e| {
        if is_out_of_memory(&e) {
            anyhow!("out of GPU memory for {what}: generate fewer sequences at once or shorten the context")
        } else {
            anyhow!("GPU allocation for {what} failed: {e:?}")
        }
    }
}

fn copy_err(e: DriverError) -> anyhow::Error {
    anyhow!("copy between the GPU and the host failed: {e:?}")
}

impl CudaEngine {
    pub(super) fn new_kv_cache(&self, rows: usize, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.host.config.block_size);
        let storage = CudaKv {
            rows,
            max_t: capacity,
            kv: None,
            scratch: None,
        };
        KvCache::new(rows, capacity, Box::new(storage))
    }

    /// See [`crate::engine::Engine::forward_cached`].
    pub(super) fn forward_feeds(
        &self,
        cache: &mut KvCache,
        feeds: &[Feed],
        logits: &mut [f32],
    ) -> Result<()> {
        let cfg = &self.host.config;
        let (c, nh, vp, v, nl) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.padded_vocab_size(),
            cfg.vocab_size,
            cfg.n_layer,
        );
        let hs = c / nh;
        let seqs = cache.plan(feeds, v, vp, logits.len())?;
        let n_tok = seqs.last().map_or(0, |q| q.first + q.n);
        if n_tok == 0 {
            return Ok(());
        }
        let kv = cuda_kv(cache)?;
        if kv.kv.is_none() {
            let n = nl * kv.rows * kv.max_t * c;
            let what = format!("the KV cache ({} sequences x {} tokens)", kv.rows, kv.max_t);
            kv.kv = Some((
                DevBuf::zeros(n).map_err(oom(what.clone()))?,
                DevBuf::zeros(n).map_err(oom(what))?,
            ));
        }
        if !matches!(&kv.scratch, Some(s) if s.capacity >= n_tok && s.feeds >= feeds.len()) {
            let (cap, nf) = kv
                .scratch
                .as_ref()
                .map_or((0, 0), |s| (s.capacity, s.feeds));
            kv.scratch = None;
            let what = format!("a pass over {n_tok} tokens");
            kv.scratch =
                Some(Scratch::new(cap.max(n_tok), nf.max(feeds.len()), c, vp).map_err(oom(what))?);
        }
        let (max_t, layer_stride) = (kv.max_t, kv.rows * kv.max_t * c);
        let (kc, vc) = kv.kv.as_ref().expect("allocated above");
        let s = kv.scratch.as_mut().expect("allocated above");

        // Per token row: its token, absolute position and cache row.
        let mut tokens = Vec::with_capacity(n_tok);
        let (mut pos, mut slot) = (Vec::with_capacity(n_tok), Vec::with_capacity(n_tok));
        for (
            f,
            &FeedPlan {
                row, n, pos: p0, ..
            },
        ) in feeds.iter().zip(&seqs)
        {
            tokens.extend_from_slice(f.tokens);
            pos.extend((p0..p0 + n).map(|p| p as i32));
            slot.extend(std::iter::repeat_n(row as i32, n));
        }
        s.tokens.upload(&tokens).map_err(copy_err)?;
        s.pos.upload(&pos).map_err(copy_err)?;
        s.slot.upload(&slot).map_err(copy_err)?;

        let (gpu, tb) = (&self.gpu, &self.host.table);
        // Cached inference reads the f32 master weights.
        let p = Params {
            master: &self.params,
            bf16: None,
        };
        gpu.encoder_forward(
            s.x.ptr(),
            s.tokens.ptr(),
            s.pos.ptr(),
            p.at(tb.wte),
            p.at(tb.wpe),
            n_tok,
            c,
        )?;
        // Block l's ln_1, made before block 0 and by each block for the next.
        let ln1 = |l: usize| Norm {
            out: Operand::F32(s.ln1.ptr()),
            mean: s.ln1_mean.ptr(),
            rstd: s.ln1_rstd.ptr(),
            w: p.at(tb.layers[l].ln1_w),
            b: if cfg.bias {
                p.at(tb.layers[l].ln1_b)
            } else {
                0
            },
        };
        gpu.layernorm_forward(ln1(0), s.x.ptr(), n_tok, c)?;
        for (l, o) in tb.layers.iter().enumerate() {
            let bufs = BlockBufs {
                ln1: Operand::F32(s.ln1.ptr()),
                qkv: Operand::F32(s.qkv.ptr()),
                atty: Operand::F32(s.atty.ptr()),
                residual2: s.residual2.ptr(),
                ln2: Norm {
                    out: Operand::F32(s.ln2.ptr()),
                    mean: s.ln2_mean.ptr(),
                    rstd: s.ln2_rstd.ptr(),
                    w: p.at(o.ln2_w),
                    b: if cfg.bias { p.at(o.ln2_b) } else { 0 },
                },
                fch: Operand::F32(s.fch.ptr()),
                fch_gelu: Operand::F32(s.fch_gelu.ptr()),
                fuse_gelu: false,
                proj: s.proj.ptr(),
            };
            let (kl, vl) = (kc.at(l * layer_stride), vc.at(l * layer_stride));
            let (slot_p, pos_p) = (s.slot.ptr(), s.pos.ptr());
            block_forward(
                gpu,
                Precision::F32,
                s.out.ptr(),
                s.x.ptr(),
                &bufs,
                p,
                o,
                cfg.bias,
                n_tok,
                c,
                None,
                // ln_f only for each feed's last position, below.
                (l + 1 < tb.layers.len()).then(|| ln1(l + 1)),
                |atty, qkv| {
                    let qkv = qkv.ptr();
                    // This pass's keys and values join the cache before attention reads it.
                    gpu.kv_cache_write(kl, vl, qkv, slot_p, pos_p, n_tok, nh, hs, max_t)?;
                    gpu.attention_cached(
                        atty.ptr(),
                        qkv,
                        3 * c,
                        kl,
                        vl,
                        slot_p,
                        pos_p,
                        n_tok,
                        nh,
                        hs,
                        max_t,
                    )
                },
            )?;
            std::mem::swap(&mut s.x, &mut s.out);
        }
        // Only each feed's last position needs logits.
        for (i, &FeedPlan { first, n, .. }) in seqs.iter().enumerate() {
            // SAFETY: both ranges are c floats inside their buffers (i < feeds, row < n_tok).
            unsafe {
                cudarc::driver::result::memcpy_dtod_sync(
                    s.last.at(i * c),
                    s.x.at((first + n - 1) * c),
                    c * 4,
                )
            }
            .map_err(copy_err)?;
        }
        let n_feeds = feeds.len();
        let lnf = Norm {
            out: Operand::F32(s.last_norm.ptr()),
            mean: s.last_mean.ptr(),
            rstd: s.last_rstd.ptr(),
            w: p.at(tb.lnf_w),
            b: if cfg.bias { p.at(tb.lnf_b) } else { 0 },
        };
        gpu.layernorm_forward(lnf, s.last.ptr(), n_feeds, c)?;
        gpu.matmul_forward(
            Precision::F32,
            Operand::F32(s.logits.ptr()),
            Operand::F32(s.last_norm.ptr()),
            p.matrix(tb.wte),
            Layout::OutIn,
            None,
            n_feeds,
            c,
            vp,
            None,
        )?;
        s.logits
            .download_at(0, &mut logits[..n_feeds * vp])
            .map_err(copy_err)?;
        for &FeedPlan { row, n, .. } in &seqs {
            cache.lens_mut()[row] += n;
        }
        Ok(())
    }

    /// See [`crate::engine::Engine::reorder_cache`]: new row `i` is old row `order[i]`, copied
    /// on the device (only the positions each row holds).
    pub(super) fn reorder_kv(&self, cache: &mut KvCache, order: &[usize]) -> Result<()> {
        let old_rows = cache.rows();
        if let Some(&bad) = order.iter().find(|&&r| r >= old_rows) {
            bail!("cannot reorder the KV cache: row {bad} does not exist ({old_rows} rows)");
        }
        if order.len() == old_rows && order.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let old_lens = cache.lens().to_vec();
        let cfg = &self.host.config;
        let (nl, nh, hs) = (cfg.n_layer, cfg.n_head, cfg.head_size());
        let kv = cuda_kv(cache)?;
        let new_rows = order.len();
        if let Some((k_old, v_old)) = &kv.kv {
            // Always into fresh buffers: rows may be duplicated or swapped.
            let n = nl * new_rows * kv.max_t * nh * hs;
            let what = format!("the KV cache ({new_rows} sequences x {} tokens)", kv.max_t);
            let (k_new, v_new) = (
                DevBuf::zeros(n).map_err(oom(what.clone()))?,
                DevBuf::zeros(n).map_err(oom(what))?,
            );
            for (i, &r) in order.iter().enumerate() {
                let len = old_lens[r] * hs;
                for l in 0..nl {
                    for h in 0..nh {
                        let src = ((l * old_rows + r) * nh + h) * kv.max_t * hs;
                        let dst = ((l * new_rows + i) * nh + h) * kv.max_t * hs;
                        for (from, to) in [(k_old, &k_new), (v_old, &v_new)] {
                            // SAFETY: len floats from each offset lie inside the buffers.
                            unsafe {
                                cudarc::driver::result::memcpy_dtod_sync(
                                    to.at(dst),
                                    from.at(src),
                                    len * 4,
                                )
                            }
                            .map_err(copy_err)?;
                        }
                    }
                }
            }
            kv.kv = Some((k_new, v_new));
        }
        kv.rows = new_rows;
        *cache.lens_mut() = order.iter().map(|&r| old_lens[r]).collect();
        Ok(())
    }
}

//! Training on the GPU: the CPU's forward and backward passes (`engine::cpu::train`), op for op,
//! on device buffers allocated once per (batch, seq len). The CPU file is the reference for the
//! order of operations and for what is saved; this one differs only in where it runs.
//!
//! x = drop(wte[idx] + wpe[pos])
//! per layer: x = x + drop(attn(ln_1(x)) @ c_proj);  x = x + drop(gelu(ln_2(x) @ c_fc) @ c_proj)
//! logits = ln_f(x) @ wte^T;  loss = mean cross-entropy over positions whose target is not -1

use super::blas::Precision;
use super::block::{block_forward, BlockBufs, BranchDropout};
use super::memory::{is_out_of_memory, DevBuf};
use super::ops::{colsum_chunks, Dropout, Norm, Operand, Params};
use super::CudaEngine;
use crate::config::GptConfig;
use crate::engine::{check_batch, Mode};
use crate::kernels::cpu::crossentropy::count_valid;
use crate::kernels::cpu::matmul::Layout;
use crate::rng::dropout_key;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::result::DriverError;

/// Dropout sites inside a layer, for deriving mask keys (the CPU's numbering).
const SITE_ATTN: u64 = 0;
const SITE_ATTN_RESID: u64 = 1;
const SITE_MLP_RESID: u64 = 2;
const SITE_EMBED: u64 = 3;

/// An activation held in bf16 in bf16 training (half the memory, and no rounding pass before
/// each product), else in f32 (f16 training rounds it before each product): every one but the
/// residual stream's. Those that only matrix products read (the norms', GELU's and attention's
/// outputs; attention's backward also reads its own, widened); the products' outputs that
/// attention and GELU read (qkv, GELU's input: bf16 as PyTorch's autocast keeps them); and the
/// logits, which the cross-entropy reads and overwrites with their gradient, which only products
/// read.
enum ProductInput {
    F32(DevBuf<f32>),
    Bf16(DevBuf<u16>),
}

impl ProductInput {
    fn new(len: usize, precision: Precision) -> Result<ProductInput, DriverError> {
        Ok(match precision {
            Precision::F32 | Precision::F16 => ProductInput::F32(DevBuf::zeros(len)?),
            Precision::Bf16 => ProductInput::Bf16(DevBuf::zeros(len)?),
        })
    }

    /// Element `offset`, as a product's operand.
    fn at(&self, offset: usize) -> Operand {
        match self {
            ProductInput::F32(b) => Operand::F32(b.at(offset)),
            ProductInput::Bf16(b) => Operand::Bf16(b.at(offset)),
        }
    }
}

/// One LayerNorm's saved forward: its output, which only products read, and each row's mean
/// and rstd (layer l at l*rows*C and l*rows).
struct NormActs {
    out: ProductInput,
    mean: DevBuf<f32>,
    rstd: DevBuf<f32>,
}

/// What the forward pass saves for the backward pass, all layers (layer l at l*rows*width).
pub(super) struct Activations {
    b: usize,
    t: usize,
    c: usize,
    precision: Precision,
    tokens: Vec<u32>,
    targets: Vec<i32>,
    has_targets: bool,
    mode: Mode,
    d_tokens: DevBuf<u32>,
    d_pos: DevBuf<i32>,
    d_targets: DevBuf<i32>,
    encoded: DevBuf<f32>,
    ln1: NormActs,
    qkv: ProductInput,
    /// Attention's output, which only the projection's products and attention's backward read.
    atty: ProductInput,
    att_lse: DevBuf<f32>,
    residual2: DevBuf<f32>,
    ln2: NormActs,
    fch: ProductInput,
    /// Every layer's GELU output, or with `recompute` one layer's (as `ln1`, `ln2`), remade in
    /// backward.
    fch_gelu: ProductInput,
    recompute: bool,
    residual3: DevBuf<f32>,
    lnf: NormActs,
    /// (B, T, Vp), bf16 in bf16 training; the backward pass turns them into their gradient in
    /// place.
    logits: ProductInput,
    row_loss: DevBuf<f32>,
    row_lse: DevBuf<f32>,
    /// (B, T, C) scratch for a projection's output before it joins the residual stream.
    proj: DevBuf<f32>,
}

/// Gradients of activations for one layer at a time, and the backward pass's scratch.
pub(super) struct ActGrads {
    dresidual: DevBuf<f32>,
    dproj: DevBuf<f32>,
    dln: DevBuf<f32>,
    /// bf16 in bf16 training (the flash kernels write it so; only products and the bias's
    /// column sum read it).
    dqkv: ProductInput,
    /// Attention's output gradient: bf16 in bf16 training (c_proj's backward product writes it
    /// so; only attention's backward reads it).
    datty: ProductInput,
    /// The gradient of GELU's input (c_fc's output), which only c_fc's products and bias sum
    /// read: bf16 in bf16 training (made by c_fc_proj's backward product and GELU's backward,
    /// fused or not, `Gpu::matmul_backward`).
    dfch: ProductInput,
    /// Attention's D = dO . O, (B, H, T).
    att_d: DevBuf<f32>,
    /// Partial column sums (bias and LayerNorm gradients): colsum_chunks(rows) * 4C.
    partial: DevBuf<f32>,
    /// The token embedding's gradient buckets (see encoder.cu).
    bucket_start: DevBuf<i32>,
    bucket_rows: DevBuf<i32>,
    bucket_token: DevBuf<u32>,
}

/// An allocation error, with out-of-memory turned into what to lower.
fn oom(b: usize, t: usize) -> impl Fn(DriverError) -> anyhow::Error {
    move |e| {
        if is_out_of_memory(&e) {
            anyhow!("out of GPU memory for batch_size={b} and block_size={t}: lower --batch_size (and raise gradient_accumulation_steps to keep the tokens per step) or --block_size")
        } else {
            anyhow!("GPU allocation failed: {e:?}")
        }
    }
}

impl Activations {
    /// Where layer data at `offset` (of the norms' and GELU outputs) lies: there, or with
    /// `recompute` in the one kept layer.
    fn kept(&self, offset: usize) -> usize {
        if self.recompute {
            0
        } else {
            offset
        }
    }

    /// Layer `l`'s forward of the LayerNorm `norm` (ln1 or ln2; ln_f is layer 0 of lnf): where
    /// its outputs go, with its weight and bias (w, b).
    fn norm(&self, norm: &NormActs, l: usize, (w, b): (u64, u64)) -> Norm {
        let (rows, c) = (self.b * self.t, self.c);
        Norm {
            out: norm.out.at(self.kept(l * rows * c)),
            mean: norm.mean.at(l * rows),
            rstd: norm.rstd.at(l * rows),
            w,
            b,
        }
    }

    fn new(
        cfg: &GptConfig,
        b: usize,
        t: usize,
        precision: Precision,
        recompute: bool,
    ) -> Result<Activations, DriverError> {
        let (l, c, nh, vp) = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.padded_vocab_size());
        let bt = b * t;
        // Layers of the LayerNorm outputs and GELU outputs kept: all, or one remade in backward.
        let kept = if recompute { 1 } else { l };
        let z = DevBuf::<f32>::zeros;
        let product_input = |len| ProductInput::new(len, precision);
        // A LayerNorm's outputs for `out_layers` layers, its statistics for `layers`.
        let norm_acts = |out_layers: usize, layers: usize| -> Result<NormActs, DriverError> {
            Ok(NormActs {
                out: product_input(out_layers * bt * c)?,
                mean: z(layers * bt)?,
                rstd: z(layers * bt)?,
            })
        };
        let mut d_pos = DevBuf::zeros(bt)?;
        let pos: Vec<i32> = (0..bt).map(|r| (r % t) as i32).collect();
        d_pos.upload(&pos)?;
        Ok(Activations {
            b,
            t,
            c,
            precision,
            tokens: vec![0; bt],
            targets: vec![-1; bt],
            has_targets: false,
            mode: Mode::Eval,
            d_tokens: DevBuf::zeros(bt)?,
            d_pos,
            d_targets: DevBuf::zeros(bt)?,
            encoded: z(bt * c)?,
            ln1: norm_acts(kept, l)?,
            qkv: product_input(l * bt * 3 * c)?,
            atty: product_input(l * bt * c)?,
            att_lse: z(l * b * nh * t)?,
            residual2: z(l * bt * c)?,
            ln2: norm_acts(kept, l)?,
            fch: product_input(l * bt * 4 * c)?,
            fch_gelu: product_input(kept * bt * 4 * c)?,
            recompute,
            residual3: z(l * bt * c)?,
            lnf: norm_acts(1, 1)?,
            logits: product_input(bt * vp)?,
            row_loss: z(bt)?,
            row_lse: z(bt)?,
            proj: z(bt * c)?,
        })
    }
}

impl ActGrads {
    fn new(
        cfg: &GptConfig,
        b: usize,
        t: usize,
        precision: Precision,
    ) -> Result<ActGrads, DriverError> {
        let (c, bt) = (cfg.n_embd, b * t);
        let z = DevBuf::<f32>::zeros;
        Ok(ActGrads {
            dresidual: z(bt * c)?,
            dproj: z(bt * c)?,
            dln: z(bt * c)?,
            dqkv: ProductInput::new(bt * 3 * c, precision)?,
            datty: ProductInput::new(bt * c, precision)?,
            dfch: ProductInput::new(bt * 4 * c, precision)?,
            att_d: z(b * cfg.n_head * t)?,
            partial: z(colsum_chunks(bt) * 4 * c)?,
            bucket_start: DevBuf::zeros(bt + 1)?,
            bucket_rows: DevBuf::zeros(bt)?,
            bucket_token: DevBuf::zeros(bt)?,
        })
    }
}

/// Rows grouped by token, each group's rows in increasing order: (group starts with a final
/// end, rows, each group's token). Deterministic, so the embedding gradient is too.
fn token_buckets(tokens: &[u32]) -> (Vec<i32>, Vec<i32>, Vec<u32>) {
    let mut rows: Vec<i32> = (0..tokens.len() as i32).collect();
    rows.sort_by_key(|&r| (tokens[r as usize], r));
    let mut starts = Vec::new();
    let mut toks = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        let tok = tokens[r as usize];
        if toks.last() != Some(&tok) {
            starts.push(i as i32);
            toks.push(tok);
        }
    }
    starts.push(rows.len() as i32);
    (starts, rows, toks)
}

impl CudaEngine {
    /// See [`crate::engine::Engine::forward`].
    pub(super) fn forward_pass(
        &mut self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Option<f32>> {
        let cfg = self.host.config.clone();
        let precision = self.precision;
        let (c, nh, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.padded_vocab_size(),
            cfg.vocab_size,
        );
        let (bt, hs) = (b * t, c / nh);
        check_batch(&cfg, tokens, targets, b, t)?;
        let recompute = self.recompute;
        if !matches!(&self.acts, Some(a) if a.b == b && a.t == t && a.recompute == recompute && a.precision == precision)
        {
            // Free the old set first: two sets may not fit together.
            self.acts = None;
            self.act_grads = None;
            self.acts =
                Some(Activations::new(&cfg, b, t, precision, recompute).map_err(oom(b, t))?);
        }
        self.bf16_weights_ready()?;
        let a = self.acts.as_mut().expect("allocated above");
        let dev = |e: DriverError| anyhow!("copy to the GPU failed: {e:?}");
        a.tokens.copy_from_slice(tokens);
        a.d_tokens.upload(tokens).map_err(dev)?;
        a.has_targets = targets.is_some();
        if let Some(tg) = targets {
            a.targets.copy_from_slice(tg);
            a.d_targets.upload(tg).map_err(dev)?;
        }
        a.mode = mode;
        let drop = match mode {
            Mode::Train { seed } if cfg.dropout > 0.0 => Some(seed),
            _ => None,
        };
        let site = |l: usize, site: u64| {
            drop.map(|seed| Dropout {
                key: dropout_key(seed, l, site),
                p: cfg.dropout,
            })
        };
        let (gpu, tb) = (&self.gpu, &self.host.table);
        let p = Params {
            master: &self.params,
            bf16: self.weights_bf16.as_ref(),
        };

        gpu.encoder_forward(
            a.encoded.ptr(),
            a.d_tokens.ptr(),
            a.d_pos.ptr(),
            p.at(tb.wte),
            p.at(tb.wpe),
            bt,
            c,
        )?;
        if let Some(d) = site(0, SITE_EMBED) {
            gpu.dropout(a.encoded.ptr(), bt * c, d)?;
        }
        let a = &*a;
        // Layer l's ln_1 weights; ln_f's. Layer 0's ln_1 is made here, the others and ln_f by
        // the block before them, with its last residual add.
        let param_or_null = |off: usize| if cfg.bias { p.at(off) } else { 0 };
        let ln1_w = |l: usize| {
            let o = &tb.layers[l];
            (p.at(o.ln1_w), param_or_null(o.ln1_b))
        };
        let lnf = a.norm(&a.lnf, 0, (p.at(tb.lnf_w), param_or_null(tb.lnf_b)));
        gpu.layernorm_forward(a.norm(&a.ln1, 0, ln1_w(0)), a.encoded.ptr(), bt, c)?;
        for (l, o) in tb.layers.iter().enumerate() {
            let (lc, l3c, l4c) = (l * bt * c, l * bt * 3 * c, l * bt * 4 * c);
            let residual = if l == 0 {
                a.encoded.ptr()
            } else {
                a.residual3.at(lc - bt * c)
            };
            let next = if l + 1 < cfg.n_layer {
                a.norm(&a.ln1, l + 1, ln1_w(l + 1))
            } else {
                lnf
            };
            let bufs = BlockBufs {
                ln1: a.ln1.out.at(a.kept(lc)),
                qkv: a.qkv.at(l3c),
                atty: a.atty.at(lc),
                residual2: a.residual2.at(lc),
                ln2: a.norm(&a.ln2, l, (p.at(o.ln2_w), param_or_null(o.ln2_b))),
                fch: a.fch.at(l4c),
                fch_gelu: a.fch_gelu.at(a.kept(l4c)),
                fuse_gelu: !a.recompute,
                proj: a.proj.ptr(),
            };
            let branches = site(l, SITE_ATTN_RESID).zip(site(l, SITE_MLP_RESID));
            let lse = a.att_lse.at(l * b * nh * t);
            block_forward(
                gpu,
                precision,
                a.residual3.at(lc),
                residual,
                &bufs,
                p,
                o,
                cfg.bias,
                bt,
                c,
                branches.map(|(attn, mlp)| BranchDropout { attn, mlp }),
                Some(next),
                |atty, qkv| {
                    let drop = site(l, SITE_ATTN);
                    gpu.attention_forward(precision, atty, lse, qkv, b, t, nh, hs, drop)
                },
            )?;
        }
        gpu.matmul_forward(
            precision,
            a.logits.at(0),
            a.lnf.out.at(0),
            p.matrix(tb.wte),
            Layout::OutIn,
            None,
            bt,
            c,
            vp,
            None,
        )?;
        let Some(tg) = targets else {
            gpu.synchronize()?;
            return Ok(None);
        };
        gpu.crossentropy_forward(
            a.row_loss.ptr(),
            a.row_lse.ptr(),
            a.logits.at(0),
            a.d_targets.ptr(),
            bt,
            v,
            vp,
        )?;
        // The mean as the CPU takes it: row losses summed in order in f64.
        let mut row_loss = vec![0.0f32; bt];
        a.row_loss
            .download_at(0, &mut row_loss)
            .map_err(|e| anyhow!("the GPU reported an error in the forward pass: {e:?}"))?;
        let total: f64 = row_loss.iter().map(|&l| l as f64).sum();
        Ok(Some((total / count_valid(tg) as f64) as f32))
    }

    /// See [`crate::engine::Engine::backward`].
    /// Adds the gradient of `grad_scale` x the last loss to the gradients; with `all_reduce`
    /// (NCCL open), also sums them over the ranks, each layer's sum started on NCCL's stream as
    /// soon as its last gradient kernel is queued, and the rest (embeddings, final norm) after
    /// the encoder's; returns once every sum is done.
    pub(super) fn backward_pass(&mut self, grad_scale: f32, all_reduce: bool) -> Result<()> {
        // float16: the loss scaler's factor, which `update` takes out again.
        let grad_scale = grad_scale * self.grads_scaled_by;
        let cfg = self.host.config.clone();
        let precision = self.precision;
        let (c, nh, vp, v, nl) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.padded_vocab_size(),
            cfg.vocab_size,
            cfg.n_layer,
        );
        self.bf16_weights_ready()?;
        let Some(a) = self.acts.as_mut() else {
            bail!("backward() called before forward()");
        };
        if !a.has_targets {
            bail!("backward() needs a forward pass with targets");
        }
        let (b, t) = (a.b, a.t);
        let (bt, hs) = (b * t, c / nh);
        if self.act_grads.is_none() {
            self.act_grads = Some(ActGrads::new(&cfg, b, t, precision).map_err(oom(b, t))?);
        }
        let g = self.act_grads.as_mut().expect("allocated above");
        let drop = match a.mode {
            Mode::Train { seed } if cfg.dropout > 0.0 => Some(seed),
            _ => None,
        };
        let site = |l: usize, site: u64| {
            drop.map(|seed| Dropout {
                key: dropout_key(seed, l, site),
                p: cfg.dropout,
            })
        };
        let (gpu, gr, tb) = (&self.gpu, &self.grads, &self.host.table);
        let p = Params {
            master: &self.params,
            bf16: self.weights_bf16.as_ref(),
        };
        let mut nccl = match (all_reduce, self.nccl.as_mut()) {
            (true, Some(n)) => Some(n),
            (true, None) => bail!("backward_pass: a sum over the ranks was asked without NCCL"),
            (false, _) => None,
        };
        // Layer l's parameters are one span of the flat buffer (GPT-2's order: ln_1 first,
        // mlp.c_proj last; ln_f after the last layer).
        let layer_span = |l: usize| {
            let end = tb.layers.get(l + 1).map_or(tb.lnf_w, |next| next.ln1_w);
            tb.layers[l].ln1_w..end
        };
        let bias = |off: usize| cfg.bias.then(|| gr.at(off));
        let or_null = |off: usize| bias(off).unwrap_or(0);
        let param_or_null = |off: usize| if cfg.bias { p.at(off) } else { 0 };
        let part = g.partial.ptr();

        // Loss -> logits (in place) -> ln_f output -> the residual stream.
        let valid = count_valid(&a.targets);
        let scale = if valid == 0 {
            0.0
        } else {
            grad_scale / valid as f32
        };
        let dlogits = a.logits.at(0);
        gpu.crossentropy_backward_inplace(
            dlogits,
            a.row_lse.ptr(),
            a.d_targets.ptr(),
            bt,
            v,
            vp,
            scale,
        )?;
        gpu.matmul_backward(
            precision,
            Operand::F32(g.dln.ptr()),
            None,
            gr.at(tb.wte),
            None,
            dlogits,
            a.lnf.out.at(0),
            p.matrix(tb.wte),
            Layout::OutIn,
            bt,
            c,
            vp,
            part,
        )?;
        g.dresidual
            .zero()
            .map_err(|e| anyhow!("GPU memset failed: {e:?}"))?;
        let last = a.residual3.at((nl - 1) * bt * c);
        gpu.layernorm_backward(
            g.dresidual.ptr(),
            gr.at(tb.lnf_w),
            or_null(tb.lnf_b),
            g.dln.ptr(),
            last,
            p.at(tb.lnf_w),
            a.lnf.mean.ptr(),
            a.lnf.rstd.ptr(),
            bt,
            c,
            part,
        )?;

        for (l, o) in tb.layers.iter().enumerate().rev() {
            let (lc, l3c, l4c, lr) = (l * bt * c, l * bt * 3 * c, l * bt * 4 * c, l * bt);
            let residual = if l == 0 {
                a.encoded.ptr()
            } else {
                a.residual3.at(lc - bt * c)
            };

            // MLP branch: residual3 = residual2 + drop(gelu(fch) @ W_proj + b)
            let dproj = branch_grad(
                gpu,
                g.dresidual.ptr(),
                g.dproj.ptr(),
                bt * c,
                site(l, SITE_MLP_RESID),
            )?;
            let act = a.fch_gelu.at(a.kept(l4c));
            if a.recompute {
                gpu.gelu_forward(act, a.fch.at(l4c), bt * 4 * c)?;
            }
            gpu.matmul_backward(
                precision,
                g.dfch.at(0),
                Some(a.fch.at(l4c)),
                gr.at(o.fcproj_w),
                bias(o.fcproj_b),
                Operand::F32(dproj),
                act,
                p.matrix(o.fcproj_w),
                Layout::InOut,
                bt,
                4 * c,
                c,
                part,
            )?;
            let ln_at = a.kept(lc);
            if a.recompute {
                let ln2 = a.norm(&a.ln2, l, (p.at(o.ln2_w), param_or_null(o.ln2_b)));
                gpu.layernorm_forward(ln2, a.residual2.at(lc), bt, c)?;
            }
            gpu.matmul_backward(
                precision,
                Operand::F32(g.dln.ptr()),
                None,
                gr.at(o.fc_w),
                bias(o.fc_b),
                g.dfch.at(0),
                a.ln2.out.at(ln_at),
                p.matrix(o.fc_w),
                Layout::InOut,
                bt,
                c,
                4 * c,
                part,
            )?;
            gpu.layernorm_backward(
                g.dresidual.ptr(),
                gr.at(o.ln2_w),
                or_null(o.ln2_b),
                g.dln.ptr(),
                a.residual2.at(lc),
                p.at(o.ln2_w),
                a.ln2.mean.at(lr),
                a.ln2.rstd.at(lr),
                bt,
                c,
                part,
            )?;

            // Attention branch: residual2 = residual + drop(attn(ln1) @ W_proj + b)
            let dproj = branch_grad(
                gpu,
                g.dresidual.ptr(),
                g.dproj.ptr(),
                bt * c,
                site(l, SITE_ATTN_RESID),
            )?;
            gpu.matmul_backward(
                precision,
                g.datty.at(0),
                None,
                gr.at(o.attproj_w),
                bias(o.attproj_b),
                Operand::F32(dproj),
                a.atty.at(lc),
                p.matrix(o.attproj_w),
                Layout::InOut,
                bt,
                c,
                c,
                part,
            )?;
            gpu.attention_backward(
                precision,
                g.dqkv.at(0),
                g.datty.at(0),
                a.qkv.at(l3c),
                a.atty.at(lc),
                a.att_lse.at(l * b * nh * t),
                g.att_d.ptr(),
                b,
                t,
                nh,
                hs,
                site(l, SITE_ATTN),
            )?;
            if a.recompute {
                let ln1 = a.norm(&a.ln1, l, (p.at(o.ln1_w), param_or_null(o.ln1_b)));
                gpu.layernorm_forward(ln1, residual, bt, c)?;
            }
            gpu.matmul_backward(
                precision,
                Operand::F32(g.dln.ptr()),
                None,
                gr.at(o.qkv_w),
                bias(o.qkv_b),
                g.dqkv.at(0),
                a.ln1.out.at(ln_at),
                p.matrix(o.qkv_w),
                Layout::InOut,
                bt,
                c,
                3 * c,
                part,
            )?;
            gpu.layernorm_backward(
                g.dresidual.ptr(),
                gr.at(o.ln1_w),
                or_null(o.ln1_b),
                g.dln.ptr(),
                residual,
                p.at(o.ln1_w),
                a.ln1.mean.at(lr),
                a.ln1.rstd.at(lr),
                bt,
                c,
                part,
            )?;
            if let Some(n) = nccl.as_mut() {
                let span = layer_span(l);
                // SAFETY: the span lies in the gradient buffer; no later kernel of this pass
                // writes it (each layer writes only its own span), and the update waits (join).
                unsafe { n.start_sum_f32(gr.at(span.start), span.len())? };
            }
        }
        if let Some(d) = site(0, SITE_EMBED) {
            gpu.dropout(g.dresidual.ptr(), bt * c, d)?;
        }
        let (starts, rows, toks) = token_buckets(&a.tokens);
        let up = |e: DriverError| anyhow!("copy to the GPU failed: {e:?}");
        g.bucket_start.upload(&starts).map_err(up)?;
        g.bucket_rows.upload(&rows).map_err(up)?;
        g.bucket_token.upload(&toks).map_err(up)?;
        gpu.encoder_backward_wte(
            gr.at(tb.wte),
            g.dresidual.ptr(),
            g.bucket_start.ptr(),
            g.bucket_rows.ptr(),
            g.bucket_token.ptr(),
            toks.len(),
            c,
        )?;
        gpu.encoder_backward_wpe(gr.at(tb.wpe), g.dresidual.ptr(), b, t, c)?;
        if let Some(n) = nccl.as_mut() {
            let (first, after_last) = (layer_span(0).start, layer_span(nl - 1).end);
            // SAFETY: wte and wpe come before the first layer, ln_f after the last; all written.
            unsafe {
                n.start_sum_f32(gr.at(0), first)?;
                n.start_sum_f32(gr.at(after_last), gr.len() - after_last)?;
            }
            n.join()?;
        }
        gpu.synchronize()?;
        a.has_targets = false;
        Ok(())
    }
}

/// The gradient reaching a residual branch's output: the stream's gradient, through the
/// branch's dropout mask when there is one (then copied to `scratch` first).
fn branch_grad(
    gpu: &super::ops::Gpu,
    dresidual: u64,
    scratch: u64,
    n: usize,
    drop: Option<Dropout>,
) -> Result<u64> {
    let Some(d) = drop else {
        return Ok(dresidual);
    };
    // SAFETY: both are n-float ranges of distinct live buffers.
    unsafe { cudarc::driver::result::memcpy_dtod_sync(scratch, dresidual, n * 4) }
        .map_err(|e| anyhow!("GPU copy failed: {e:?}"))?;
    gpu.dropout(scratch, n, d)?;
    Ok(scratch)
}

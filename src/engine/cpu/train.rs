//! Training on the CPU: the GPT's forward and backward passes over the flat parameter buffer,
//! with activations allocated once per (batch, seq len) and reused.
//!
//! x = drop(wte[idx] + wpe[pos])    (a Llama: wte[idx] alone; its positions are rotary)
//! per layer: x = block(x)           (`block.rs`: GPT-2's or Llama's)
//! logits = norm_f(x) @ lm_head^T;  loss = mean cross-entropy over positions whose target is not -1

use super::block::{block_forward, norm_forward, BlockActs, BranchDropout, Norm, Shape, Weights};
use super::CpuEngine;
use crate::config::GptConfig;
use crate::engine::{check_batch, Mode};
use crate::kernels::cpu::attention::{
    attention_backward, attention_forward, AttnDims, AttnDropout,
};
use crate::kernels::cpu::crossentropy::{
    count_valid, crossentropy_backward_inplace, crossentropy_forward,
};
use crate::kernels::cpu::dropout::dropout_inplace;
use crate::kernels::cpu::encoder::{encoder_backward, encoder_forward};
use crate::kernels::cpu::gelu::gelu_backward_inplace;
use crate::kernels::cpu::layernorm::layernorm_backward;
use crate::kernels::cpu::matmul::{matmul_backward, matmul_forward, Layout, Precision};
use crate::kernels::cpu::rmsnorm::rmsnorm_backward;
use crate::kernels::cpu::rope::{rope_backward, rope_forward, RopeTable};
use crate::kernels::cpu::swiglu::swiglu_backward;
use crate::rng::dropout_key;
use anyhow::{bail, Result};

/// Dropout sites inside a layer, for deriving mask keys.
const SITE_ATTN: u64 = 0;
const SITE_ATTN_RESID: u64 = 1;
const SITE_MLP_RESID: u64 = 2;
const SITE_EMBED: u64 = 3;

/// What the forward pass saves for the backward pass, for all layers (index l*rows*width).
pub(super) struct Activations {
    b: usize,
    t: usize,
    tokens: Vec<u32>,
    targets: Vec<i32>,
    has_targets: bool,
    mode: Mode,
    encoded: Vec<f32>,
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    att_lse: Vec<f32>,
    residual2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fch: Vec<f32>,
    /// The MLP activation of every layer, or with `recompute` one layer's (as `ln1`, `ln2`),
    /// remade in backward.
    fch_gelu: Vec<f32>,
    recompute: bool,
    residual3: Vec<f32>,
    lnf: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    /// Logits (B, T, Vp); the backward pass turns them into their gradient in place.
    logits: Vec<f32>,
    row_loss: Vec<f32>,
    row_lse: Vec<f32>,
    /// (B, T, C) scratch for a projection's output before it joins the residual stream.
    proj: Vec<f32>,
}

/// Gradients of activations for one layer at a time (reused across layers).
pub(super) struct ActGrads {
    dresidual: Vec<f32>,
    dproj: Vec<f32>,
    dln: Vec<f32>,
    dqkv: Vec<f32>,
    datty: Vec<f32>,
    dfch: Vec<f32>,
    /// The MLP activation's gradient, when it is not taken in place (SwiGLU halves the width).
    dact: Vec<f32>,
}

impl Activations {
    fn new(cfg: &GptConfig, b: usize, t: usize, recompute: bool) -> Activations {
        let (l, c, nh, vp) = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.padded_vocab_size());
        // Layers of the norms' outputs and MLP activations kept: all, or one remade in backward.
        let kept = if recompute { 1 } else { l };
        let (qkv, mlp_in, mlp) = (cfg.qkv_width(), cfg.mlp_in_width(), cfg.mlp_width());
        let bt = b * t;
        let z = |n: usize| vec![0.0f32; n];
        Activations {
            b,
            t,
            tokens: vec![0; bt],
            targets: vec![-1; bt],
            has_targets: false,
            mode: Mode::Eval,
            encoded: z(bt * c),
            ln1: z(kept * bt * c),
            ln1_mean: z(l * bt),
            ln1_rstd: z(l * bt),
            qkv: z(l * bt * qkv),
            atty: z(l * bt * c),
            att_lse: z(l * b * nh * t),
            residual2: z(l * bt * c),
            ln2: z(kept * bt * c),
            ln2_mean: z(l * bt),
            ln2_rstd: z(l * bt),
            fch: z(l * bt * mlp_in),
            fch_gelu: z(kept * bt * mlp),
            recompute,
            residual3: z(l * bt * c),
            lnf: z(bt * c),
            lnf_mean: z(bt),
            lnf_rstd: z(bt),
            logits: z(bt * vp),
            row_loss: z(bt),
            row_lse: z(bt),
            proj: z(bt * c),
        }
    }
}

/// Layer l's rows of a buffer that `recompute` keeps one layer of (the norms' outputs, the MLP
/// activations): its own, or the one shared set.
fn kept_rows(recompute: bool, l: usize, layer_len: usize) -> std::ops::Range<usize> {
    let l = if recompute { 0 } else { l };
    l * layer_len..(l + 1) * layer_len
}

impl ActGrads {
    fn new(cfg: &GptConfig, bt: usize) -> ActGrads {
        let c = cfg.n_embd;
        let z = |n: usize| vec![0.0f32; n];
        ActGrads {
            dresidual: z(bt * c),
            dproj: z(bt * c),
            dln: z(bt * c),
            dqkv: z(bt * cfg.qkv_width()),
            datty: z(bt * c),
            dfch: z(bt * cfg.mlp_in_width()),
            dact: if cfg.llama().is_some() {
                z(bt * cfg.mlp_width())
            } else {
                Vec::new()
            },
        }
    }
}

impl CpuEngine {
    /// The (B, T, Vp) logits of the last forward pass (before any backward pass).
    pub fn logits(&self) -> &[f32] {
        self.acts
            .as_ref()
            .map(|a| a.logits.as_slice())
            .unwrap_or(&[])
    }

    /// Forward pass over `tokens` (B*T, row-major). With `targets` (-1 = ignore) returns the mean
    /// loss over the positions that have one.
    pub(super) fn forward_pass(
        &mut self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Option<f32>> {
        let cfg = self.model.config.clone();
        let (c, nh, vp, v) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.padded_vocab_size(),
            cfg.vocab_size,
        );
        let bt = b * t;
        check_batch(&cfg, tokens, targets, b, t)?;
        let recompute = self.recompute;
        if !matches!(&self.acts, Some(a) if a.b == b && a.t == t && a.recompute == recompute) {
            // Free the old set first: two sets may not fit together.
            self.acts = None;
            self.acts = Some(Activations::new(&cfg, b, t, recompute));
            self.act_grads = None;
        }
        let (p, tb) = (&self.model.params, &self.model.table);
        let a = self.acts.as_mut().expect("allocated above");
        a.tokens.copy_from_slice(tokens);
        a.has_targets = targets.is_some();
        if let Some(tg) = targets {
            a.targets.copy_from_slice(tg);
        }
        a.mode = mode;
        let drop = match mode {
            Mode::Train { seed } if cfg.dropout > 0.0 => Some(seed),
            _ => None,
        };
        let shape = Shape::new(&cfg);
        let w = Weights::params(p, &cfg, shape, self.precision);
        let dims = attn_dims(&cfg, b, self.precision);
        let rope = self.rope.as_ref();
        let key = |l: usize, site: u64| drop.map(|seed| dropout_key(seed, l, site));
        let wpe = rope.is_none().then(|| &p[tb.wpe..]);

        encoder_forward(&mut a.encoded, tokens, &p[tb.wte..], wpe, t, 0, c);
        dropout_maybe(&mut a.encoded, key(0, SITE_EMBED), cfg.dropout);
        for (l, o) in tb.layers.iter().enumerate() {
            let (r_c, r_qkv, r_in, r_act) = (
                l * bt * c..(l + 1) * bt * c,
                l * bt * shape.qkv..(l + 1) * bt * shape.qkv,
                l * bt * shape.mlp_in..(l + 1) * bt * shape.mlp_in,
                kept_rows(a.recompute, l, bt * shape.mlp),
            );
            let r_row = l * bt..(l + 1) * bt;
            let (before, this_and_after) = a.residual3.split_at_mut(l * bt * c);
            let residual: &[f32] = if l == 0 {
                &a.encoded
            } else {
                &before[(l - 1) * bt * c..]
            };
            let att_drop = key(l, SITE_ATTN).map(|key| AttnDropout {
                key,
                p: cfg.dropout,
                max_t: t,
            });
            let att_lse = &mut a.att_lse[l * b * nh * t..(l + 1) * b * nh * t];
            let branch_dropout = drop.map(|seed| BranchDropout {
                attn_key: dropout_key(seed, l, SITE_ATTN_RESID),
                mlp_key: dropout_key(seed, l, SITE_MLP_RESID),
                p: cfg.dropout,
            });
            block_forward(
                &mut this_and_after[..bt * c],
                residual,
                BlockActs {
                    ln1: &mut a.ln1[kept_rows(a.recompute, l, bt * c)],
                    ln1_mean: &mut a.ln1_mean[r_row.clone()],
                    ln1_rstd: &mut a.ln1_rstd[r_row.clone()],
                    qkv: &mut a.qkv[r_qkv],
                    atty: &mut a.atty[r_c.clone()],
                    residual2: &mut a.residual2[r_c.clone()],
                    ln2: &mut a.ln2[kept_rows(a.recompute, l, bt * c)],
                    ln2_mean: &mut a.ln2_mean[r_row.clone()],
                    ln2_rstd: &mut a.ln2_rstd[r_row],
                    fch: &mut a.fch[r_in],
                    fch_gelu: &mut a.fch_gelu[r_act],
                },
                &mut a.proj,
                w,
                o,
                shape,
                branch_dropout,
                |atty, qkv| {
                    if let Some(rope) = rope {
                        rope_rows(qkv, dims, t, rope, rope_forward);
                    }
                    attention_forward(atty, att_lse, qkv, dims, t, att_drop)
                },
            );
        }
        let last = &a.residual3[(cfg.n_layer - 1) * bt * c..];
        norm_forward(
            shape.norm,
            &mut a.lnf,
            &mut a.lnf_mean,
            &mut a.lnf_rstd,
            last,
            w.w(tb.lnf_w, c),
            w.b(tb.lnf_b, c),
            c,
        );
        matmul_forward(
            w.precision,
            &mut a.logits,
            &a.lnf,
            w.w(tb.lm_head, vp * c),
            Layout::OutIn,
            None,
            c,
            vp,
        );
        Ok(targets
            .map(|tg| crossentropy_forward(&mut a.row_loss, &mut a.row_lse, &a.logits, tg, v, vp)))
    }

    /// Backward pass of the last forward (which must have had targets). Parameter gradients are
    /// added to `self.grads` (call `zero_grad` first); `grad_scale` multiplies the loss, e.g.
    /// 1/gradient_accumulation_steps. The logits are consumed.
    pub(super) fn backward_pass(&mut self, grad_scale: f32) -> Result<()> {
        let cfg = self.model.config.clone();
        let (c, nh, vp, v, nl) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.padded_vocab_size(),
            cfg.vocab_size,
            cfg.n_layer,
        );
        let Some(a) = self.acts.as_mut() else {
            bail!("backward() called before forward()");
        };
        if !a.has_targets {
            bail!("backward() needs a forward pass with targets");
        }
        if self.grads.len() != self.model.params.len() {
            self.grads = vec![0.0; self.model.params.len()];
        }
        let (b, t) = (a.b, a.t);
        let bt = b * t;
        let g = self
            .act_grads
            .get_or_insert_with(|| ActGrads::new(&cfg, bt));
        let (p, tb) = (&self.model.params, &self.model.table);
        let grads = &mut self.grads;
        let drop = match a.mode {
            Mode::Train { seed } if cfg.dropout > 0.0 => Some(seed),
            _ => None,
        };
        let key = |l: usize, site: u64| drop.map(|seed| dropout_key(seed, l, site));
        let dims = attn_dims(&cfg, b, self.precision);
        let shape = Shape::new(&cfg);
        let w = Weights::params(p, &cfg, shape, self.precision);
        let (qkv, mlp_in, mlp) = (shape.qkv, shape.mlp_in, shape.mlp);
        let bias_at = |off: usize| cfg.bias.then_some(off);

        // Loss -> logits (in place) -> ln_f output -> the residual stream.
        let valid = count_valid(&a.targets);
        let scale = if valid == 0 {
            0.0
        } else {
            grad_scale / valid as f32
        };
        crossentropy_backward_inplace(&mut a.logits, &a.row_lse, &a.targets, v, vp, scale);
        let (dhead, _) = split_grad(grads, tb.lm_head, vp * c, None);
        matmul_backward(
            w.precision,
            &mut g.dln,
            dhead,
            None,
            &a.logits,
            &a.lnf,
            w.w(tb.lm_head, vp * c),
            Layout::OutIn,
            c,
            vp,
        );
        g.dresidual.fill(0.0);
        let (dw, db) = split_grad(grads, tb.lnf_w, c, bias_at(tb.lnf_b));
        norm_backward(
            shape.norm,
            &mut g.dresidual,
            dw,
            db,
            &g.dln,
            &a.residual3[(nl - 1) * bt * c..],
            w.w(tb.lnf_w, c),
            &a.lnf_mean,
            &a.lnf_rstd,
            c,
        );

        for (l, o) in tb.layers.iter().enumerate().rev() {
            let (r_c, r_qkv, r_in, r_act) = (
                l * bt * c..(l + 1) * bt * c,
                l * bt * qkv..(l + 1) * bt * qkv,
                l * bt * mlp_in..(l + 1) * bt * mlp_in,
                kept_rows(a.recompute, l, bt * mlp),
            );
            let r_row = l * bt..(l + 1) * bt;
            let residual: &[f32] = if l == 0 {
                &a.encoded
            } else {
                &a.residual3[(l - 1) * bt * c..l * bt * c]
            };

            // MLP branch: residual3 = residual2 + drop(act(fch) @ W_proj + b)
            let dproj = branch_grad(
                &g.dresidual,
                &mut g.dproj,
                key(l, SITE_MLP_RESID),
                cfg.dropout,
            );
            let (dw, db) = split_grad(grads, o.fcproj_w, mlp * c, bias_at(o.fcproj_b));
            if a.recompute {
                shape.mlp_activation(&mut a.fch_gelu, &a.fch[r_in.clone()]);
            }
            let dact = if shape.swiglu {
                &mut g.dact
            } else {
                &mut g.dfch
            };
            matmul_backward(
                w.precision,
                dact,
                dw,
                db,
                dproj,
                &a.fch_gelu[r_act],
                w.w(o.fcproj_w, mlp * c),
                shape.layout,
                mlp,
                c,
            );
            if shape.swiglu {
                swiglu_backward(&mut g.dfch, &g.dact, &a.fch[r_in], mlp);
            } else {
                gelu_backward_inplace(&mut g.dfch, &a.fch[r_in]);
            }
            let r_ln = kept_rows(a.recompute, l, bt * c);
            if a.recompute {
                norm_forward(
                    shape.norm,
                    &mut a.ln2[r_ln.clone()],
                    &mut a.ln2_mean[r_row.clone()],
                    &mut a.ln2_rstd[r_row.clone()],
                    &a.residual2[r_c.clone()],
                    w.w(o.ln2_w, c),
                    w.b(o.ln2_b, c),
                    c,
                );
            }
            let (dw, db) = split_grad(grads, o.fc_w, mlp_in * c, bias_at(o.fc_b));
            matmul_backward(
                w.precision,
                &mut g.dln,
                dw,
                db,
                &g.dfch,
                &a.ln2[r_ln.clone()],
                w.w(o.fc_w, mlp_in * c),
                shape.layout,
                c,
                mlp_in,
            );
            let (dw, db) = split_grad(grads, o.ln2_w, c, bias_at(o.ln2_b));
            norm_backward(
                shape.norm,
                &mut g.dresidual,
                dw,
                db,
                &g.dln,
                &a.residual2[r_c.clone()],
                w.w(o.ln2_w, c),
                &a.ln2_mean[r_row.clone()],
                &a.ln2_rstd[r_row.clone()],
                c,
            );

            // Attention branch: residual2 = residual + drop(attn(ln1) @ W_proj + b)
            let dproj = branch_grad(
                &g.dresidual,
                &mut g.dproj,
                key(l, SITE_ATTN_RESID),
                cfg.dropout,
            );
            let (dw, db) = split_grad(grads, o.attproj_w, c * c, bias_at(o.attproj_b));
            matmul_backward(
                w.precision,
                &mut g.datty,
                dw,
                db,
                dproj,
                &a.atty[r_c.clone()],
                w.w(o.attproj_w, c * c),
                shape.layout,
                c,
                c,
            );
            let att_drop = key(l, SITE_ATTN).map(|key| AttnDropout {
                key,
                p: cfg.dropout,
                max_t: t,
            });
            attention_backward(
                &mut g.dqkv,
                &g.datty,
                &a.qkv[r_qkv],
                &a.atty[r_c.clone()],
                &a.att_lse[l * b * nh * t..(l + 1) * b * nh * t],
                dims,
                t,
                att_drop,
            );
            if let Some(rope) = self.rope.as_ref() {
                rope_rows(&mut g.dqkv, dims, t, rope, rope_backward);
            }
            if a.recompute {
                norm_forward(
                    shape.norm,
                    &mut a.ln1[r_ln.clone()],
                    &mut a.ln1_mean[r_row.clone()],
                    &mut a.ln1_rstd[r_row.clone()],
                    residual,
                    w.w(o.ln1_w, c),
                    w.b(o.ln1_b, c),
                    c,
                );
            }
            let (dw, db) = split_grad(grads, o.qkv_w, qkv * c, bias_at(o.qkv_b));
            matmul_backward(
                w.precision,
                &mut g.dln,
                dw,
                db,
                &g.dqkv,
                &a.ln1[r_ln],
                w.w(o.qkv_w, qkv * c),
                shape.layout,
                c,
                qkv,
            );
            let (dw, db) = split_grad(grads, o.ln1_w, c, bias_at(o.ln1_b));
            norm_backward(
                shape.norm,
                &mut g.dresidual,
                dw,
                db,
                &g.dln,
                residual,
                w.w(o.ln1_w, c),
                &a.ln1_mean[r_row.clone()],
                &a.ln1_rstd[r_row],
                c,
            );
        }
        dropout_maybe(&mut g.dresidual, key(0, SITE_EMBED), cfg.dropout);
        if self.rope.is_some() {
            encoder_backward(&mut grads[tb.wte..], None, &g.dresidual, &a.tokens, t, c);
        } else {
            let (dwte, dwpe) = grads.split_at_mut(tb.wpe);
            encoder_backward(
                &mut dwte[tb.wte..],
                Some(dwpe),
                &g.dresidual,
                &a.tokens,
                t,
                c,
            );
        }
        a.has_targets = false;
        Ok(())
    }
}

/// Attention's shape for a batch of `b` sequences.
pub(super) fn attn_dims(cfg: &GptConfig, b: usize, precision: Precision) -> AttnDims {
    AttnDims {
        batch: b,
        n_head: cfg.n_head,
        n_kv_head: cfg.n_kv_head(),
        head_size: cfg.head_size(),
        precision,
    }
}

/// Turns (`rope_forward`) or turns back (`rope_backward`) the queries and keys of `dims.batch`
/// sequences of `t` packed qkv rows, at positions 0..t.
fn rope_rows(
    qkv: &mut [f32],
    dims: AttnDims,
    t: usize,
    table: &RopeTable,
    turn: fn(&mut [f32], usize, usize, usize, usize, &RopeTable),
) {
    let width = (dims.n_head + 2 * dims.n_kv_head) * dims.head_size;
    for seq in qkv.chunks_mut(t * width) {
        turn(seq, width, t, dims.n_head + dims.n_kv_head, 0, table);
    }
}

/// The backward pass of `block::norm_forward`: dx += the input gradient, dw (and db) += the
/// parameter gradients.
#[allow(clippy::too_many_arguments)]
fn norm_backward(
    norm: Norm,
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    match norm {
        Norm::Layer => layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, c),
        Norm::Rms { .. } => rmsnorm_backward(dx, dw, dout, x, w, rstd, c),
    }
}

/// Dropout, when this site has a mask (train mode with dropout > 0).
fn dropout_maybe(x: &mut [f32], key: Option<u64>, p: f32) {
    if let Some(key) = key {
        dropout_inplace(x, key, p);
    }
}

/// The gradient reaching a residual branch's output: the stream's gradient, through the
/// branch's dropout mask when there is one (then written to `scratch`).
fn branch_grad<'a>(
    dresidual: &'a [f32],
    scratch: &'a mut [f32],
    key: Option<u64>,
    p: f32,
) -> &'a [f32] {
    match key {
        Some(key) => {
            scratch.copy_from_slice(dresidual);
            dropout_inplace(scratch, key, p);
            scratch
        }
        None => dresidual,
    }
}

/// Disjoint mutable views of a weight's gradient and (optionally) its bias's gradient, which
/// comes later in the buffer.
fn split_grad(
    grads: &mut [f32],
    w: usize,
    w_len: usize,
    bias: Option<usize>,
) -> (&mut [f32], Option<&mut [f32]>) {
    let (head, tail) = grads.split_at_mut(w + w_len);
    let dw = &mut head[w..];
    match bias {
        Some(bo) => {
            let rel = bo - (w + w_len);
            (dw, Some(&mut tail[rel..]))
        }
        None => (dw, None),
    }
}

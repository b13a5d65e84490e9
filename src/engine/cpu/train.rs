//! Training on the CPU: the GPT's forward and backward passes over the flat parameter buffer,
//! with activations allocated once per (batch, seq len) and reused.
//!
//! x = drop(wte[idx] + wpe[pos])
//! per layer: x = x + drop(attn(ln_1(x)) @ c_proj);  x = x + drop(gelu(ln_2(x) @ c_fc) @ c_proj)
//! logits = ln_f(x) @ wte^T;  loss = mean cross-entropy over positions whose target is not -1

use super::block::{block_forward, BlockActs, BranchDropout, Weights};
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
use crate::kernels::cpu::layernorm::{layernorm_backward, layernorm_forward};
use crate::kernels::cpu::matmul::{matmul_backward, matmul_forward, Layout};
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
    fch_gelu: Vec<f32>,
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
}

impl Activations {
    fn new(cfg: &GptConfig, b: usize, t: usize) -> Activations {
        let (l, c, nh, vp) = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.padded_vocab_size());
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
            ln1: z(l * bt * c),
            ln1_mean: z(l * bt),
            ln1_rstd: z(l * bt),
            qkv: z(l * bt * 3 * c),
            atty: z(l * bt * c),
            att_lse: z(l * b * nh * t),
            residual2: z(l * bt * c),
            ln2: z(l * bt * c),
            ln2_mean: z(l * bt),
            ln2_rstd: z(l * bt),
            fch: z(l * bt * 4 * c),
            fch_gelu: z(l * bt * 4 * c),
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

impl ActGrads {
    fn new(cfg: &GptConfig, bt: usize) -> ActGrads {
        let c = cfg.n_embd;
        let z = |n: usize| vec![0.0f32; n];
        ActGrads {
            dresidual: z(bt * c),
            dproj: z(bt * c),
            dln: z(bt * c),
            dqkv: z(bt * 3 * c),
            datty: z(bt * c),
            dfch: z(bt * 4 * c),
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
        if !matches!(&self.acts, Some(a) if a.b == b && a.t == t) {
            self.acts = Some(Activations::new(&cfg, b, t));
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
        let w = Weights {
            p,
            bias: cfg.bias,
            transposed: None,
        };
        let dims = AttnDims {
            batch: b,
            n_head: nh,
            head_size: c / nh,
            n_kv_head: nh,
        };
        let key = |l: usize, site: u64| drop.map(|seed| dropout_key(seed, l, site));

        encoder_forward(&mut a.encoded, tokens, &p[tb.wte..], &p[tb.wpe..], t, 0, c);
        dropout_maybe(&mut a.encoded, key(0, SITE_EMBED), cfg.dropout);
        for (l, o) in tb.layers.iter().enumerate() {
            let (r_c, r_3c, r_4c) = (
                l * bt * c..(l + 1) * bt * c,
                l * bt * 3 * c..(l + 1) * bt * 3 * c,
                l * bt * 4 * c..(l + 1) * bt * 4 * c,
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
                    ln1: &mut a.ln1[r_c.clone()],
                    ln1_mean: &mut a.ln1_mean[r_row.clone()],
                    ln1_rstd: &mut a.ln1_rstd[r_row.clone()],
                    qkv: &mut a.qkv[r_3c],
                    atty: &mut a.atty[r_c.clone()],
                    residual2: &mut a.residual2[r_c.clone()],
                    ln2: &mut a.ln2[r_c],
                    ln2_mean: &mut a.ln2_mean[r_row.clone()],
                    ln2_rstd: &mut a.ln2_rstd[r_row],
                    fch: &mut a.fch[r_4c.clone()],
                    fch_gelu: &mut a.fch_gelu[r_4c],
                },
                &mut a.proj,
                w,
                o,
                c,
                branch_dropout,
                |atty, qkv| attention_forward(atty, att_lse, qkv, dims, t, att_drop),
            );
        }
        let last = &a.residual3[(cfg.n_layer - 1) * bt * c..];
        layernorm_forward(
            &mut a.lnf,
            &mut a.lnf_mean,
            &mut a.lnf_rstd,
            last,
            w.w(tb.lnf_w, c),
            w.b(tb.lnf_b, c),
            c,
        );
        matmul_forward(
            &mut a.logits,
            &a.lnf,
            w.w(tb.wte, vp * c),
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
        let dims = AttnDims {
            batch: b,
            n_head: nh,
            head_size: c / nh,
            n_kv_head: nh,
        };
        let w = Weights {
            p,
            bias: cfg.bias,
            transposed: None,
        };
        let bias_at = |off: usize| cfg.bias.then_some(off);

        // Loss -> logits (in place) -> ln_f output -> the residual stream.
        let valid = count_valid(&a.targets);
        let scale = if valid == 0 {
            0.0
        } else {
            grad_scale / valid as f32
        };
        crossentropy_backward_inplace(&mut a.logits, &a.row_lse, &a.targets, v, vp, scale);
        let (dwte, _) = split_grad(grads, tb.wte, vp * c, None);
        matmul_backward(
            &mut g.dln,
            dwte,
            None,
            &a.logits,
            &a.lnf,
            w.w(tb.wte, vp * c),
            Layout::OutIn,
            c,
            vp,
        );
        g.dresidual.fill(0.0);
        let (dw, db) = split_grad(grads, tb.lnf_w, c, bias_at(tb.lnf_b));
        layernorm_backward(
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
            let (r_c, r_3c, r_4c) = (
                l * bt * c..(l + 1) * bt * c,
                l * bt * 3 * c..(l + 1) * bt * 3 * c,
                l * bt * 4 * c..(l + 1) * bt * 4 * c,
            );
            let r_row = l * bt..(l + 1) * bt;
            let residual: &[f32] = if l == 0 {
                &a.encoded
            } else {
                &a.residual3[(l - 1) * bt * c..l * bt * c]
            };

            // MLP branch: residual3 = residual2 + drop(gelu(fch) @ W_proj + b)
            let dproj = branch_grad(
                &g.dresidual,
                &mut g.dproj,
                key(l, SITE_MLP_RESID),
                cfg.dropout,
            );
            let (dw, db) = split_grad(grads, o.fcproj_w, 4 * c * c, bias_at(o.fcproj_b));
            matmul_backward(
                &mut g.dfch,
                dw,
                db,
                dproj,
                &a.fch_gelu[r_4c.clone()],
                w.w(o.fcproj_w, 4 * c * c),
                Layout::InOut,
                4 * c,
                c,
            );
            gelu_backward_inplace(&mut g.dfch, &a.fch[r_4c]);
            let (dw, db) = split_grad(grads, o.fc_w, 4 * c * c, bias_at(o.fc_b));
            matmul_backward(
                &mut g.dln,
                dw,
                db,
                &g.dfch,
                &a.ln2[r_c.clone()],
                w.w(o.fc_w, 4 * c * c),
                Layout::InOut,
                c,
                4 * c,
            );
            let (dw, db) = split_grad(grads, o.ln2_w, c, bias_at(o.ln2_b));
            layernorm_backward(
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
                &mut g.datty,
                dw,
                db,
                dproj,
                &a.atty[r_c.clone()],
                w.w(o.attproj_w, c * c),
                Layout::InOut,
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
                &a.qkv[r_3c.clone()],
                &a.atty[r_c.clone()],
                &a.att_lse[l * b * nh * t..(l + 1) * b * nh * t],
                dims,
                t,
                att_drop,
            );
            let (dw, db) = split_grad(grads, o.qkv_w, 3 * c * c, bias_at(o.qkv_b));
            matmul_backward(
                &mut g.dln,
                dw,
                db,
                &g.dqkv,
                &a.ln1[r_c],
                w.w(o.qkv_w, 3 * c * c),
                Layout::InOut,
                c,
                3 * c,
            );
            let (dw, db) = split_grad(grads, o.ln1_w, c, bias_at(o.ln1_b));
            layernorm_backward(
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
        let (dwte, dwpe) = grads.split_at_mut(tb.wpe);
        encoder_backward(&mut dwte[tb.wte..], dwpe, &g.dresidual, &a.tokens, t, c);
        a.has_targets = false;
        Ok(())
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

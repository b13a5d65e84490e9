//! One transformer block's forward pass, written once for training and cached inference, and
//! for both families (`config::Arch`):
//!
//! GPT-2:  x2 = x + drop(attn(ln_1(x)) @ W_attnproj + b)
//!         out = x2 + drop(gelu(ln_2(x2) @ W_fc + b) @ W_fcproj + b)
//! Llama:  x2 = x + drop(attn(rope(rmsnorm_1(x) @ [Wq; Wk; Wv]^T)) @ Wo^T)
//!         out = x2 + drop((silu(n @ Wgate^T) * (n @ Wup^T)) @ Wdown^T),  n = rmsnorm_2(x2)
//!
//! The two callers differ only in how attention reads its keys and values (the whole causal
//! sequence with its log-sum-exp kept for backward, or a KV cache), in the positions rotary
//! embeddings turn the queries and keys by, and in dropout, so attention is a closure (which
//! gets the projected queries and keys to rotate first) and dropout keys are optional. Every
//! intermediate lands in the caller's buffers: training keeps them per layer for the backward
//! pass, inference reuses one set.

use crate::config::{Arch, GptConfig};
use crate::kernels::cpu::dropout::dropout_inplace;
use crate::kernels::cpu::gelu::gelu_forward;
use crate::kernels::cpu::layernorm::layernorm_forward;
use crate::kernels::cpu::matmul::{
    is_skinny, matmul_forward, outin_forward, packed_bf16_forward, Layout, Precision,
};
use crate::kernels::cpu::q8::q8_matmul_forward;
use crate::kernels::cpu::residual::residual_forward;
use crate::kernels::cpu::rmsnorm::rmsnorm_forward;
use crate::kernels::cpu::swiglu::swiglu_forward;
use crate::model::params::LayerOffsets;

/// The widths and kinds of one block's pieces, from the model's config.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub c: usize,
    /// Packed queries, keys and values per token.
    pub qkv: usize,
    /// The MLP's first projection (GELU's input, or gate and up side by side).
    pub mlp_in: usize,
    /// The MLP's hidden activation.
    pub mlp: usize,
    pub norm: Norm,
    /// How the parameters store the linear weights: (in, out) for GPT-2's Conv1D, (out, in) for
    /// a Llama's `nn.Linear`.
    pub layout: Layout,
    pub swiglu: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Norm {
    Layer,
    Rms { eps: f32 },
}

impl Shape {
    /// act = the MLP's activation of fch: GELU, or SwiGLU of its gate and up halves.
    pub fn mlp_activation(&self, act: &mut [f32], fch: &[f32]) {
        if self.swiglu {
            swiglu_forward(act, fch, self.mlp);
        } else {
            gelu_forward(act, fch);
        }
    }

    pub fn new(cfg: &GptConfig) -> Shape {
        let llama = cfg.llama();
        Shape {
            c: cfg.n_embd,
            qkv: cfg.qkv_width(),
            mlp_in: cfg.mlp_in_width(),
            mlp: cfg.mlp_width(),
            norm: llama.map_or(Norm::Layer, |l| Norm::Rms { eps: l.norm_eps }),
            layout: match cfg.arch {
                Arch::Gpt2 => Layout::InOut,
                Arch::Llama(_) => Layout::OutIn,
            },
            swiglu: llama.is_some(),
        }
    }
}

/// The block's normalisation over rows of `c`: LayerNorm (mean and rstd saved, optional bias)
/// or RMSNorm (rstd saved; `mean` untouched).
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_forward(
    norm: Norm,
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    c: usize,
) {
    match norm {
        Norm::Layer => layernorm_forward(out, mean, rstd, x, w, b, c),
        Norm::Rms { eps } => rmsnorm_forward(out, rstd, x, w, c, eps),
    }
}

/// Read-only views of weights (and biases, which a bias-free model does not have). Cached
/// inference also passes GPT-2's block matrices transposed (see `infer::DecodeWeights`), and,
/// in int8 or bf16 mode, the matrices in that form (see `infer::Q8Weights`,
/// `infer::Bf16Weights`).
#[derive(Clone, Copy)]
pub(super) struct Weights<'a> {
    pub p: &'a [f32],
    pub bias: bool,
    /// How the parameters store the block matrices.
    pub layout: Layout,
    pub transposed: Option<&'a super::infer::DecodeWeights>,
    pub q8: Option<&'a super::infer::Q8Weights>,
    pub bf16: Option<&'a super::infer::Bf16Weights>,
    /// What the f32 matrices' products multiply in.
    pub precision: Precision,
}

impl<'a> Weights<'a> {
    /// The parameters alone, as training reads them (no decode copies), multiplied in
    /// `precision`.
    pub fn params(
        p: &'a [f32],
        cfg: &GptConfig,
        shape: Shape,
        precision: Precision,
    ) -> Weights<'a> {
        Weights {
            p,
            bias: cfg.bias,
            layout: shape.layout,
            transposed: None,
            q8: None,
            bf16: None,
            precision,
        }
    }

    pub fn w(&self, off: usize, len: usize) -> &'a [f32] {
        &self.p[off..off + len]
    }
    /// The matrix at `off` (`len` values) for a pass over `rows` token rows, and how it is
    /// laid out: the transposed (out, in) copy when there is one and the rows are few enough for
    /// dot products (`matmul::is_skinny`); the parameters' layout otherwise ((in, out) is what
    /// gemm reads fastest).
    pub fn matrix(&self, off: usize, len: usize, rows: usize) -> (&'a [f32], Layout) {
        let t = self.transposed.filter(|_| is_skinny(rows));
        match t.and_then(|t| t.get(off, len)) {
            Some(m) => (m, Layout::OutIn),
            None => (self.w(off, len), self.layout),
        }
    }
    pub fn b(&self, off: usize, len: usize) -> Option<&'a [f32]> {
        self.bias.then(|| &self.p[off..off + len])
    }
    /// out (rows, oc) = inp (rows, c) @ the block matrix at `off` + the bias at `bias_off`
    /// (see `linear_with`).
    pub fn linear(
        &self,
        out: &mut [f32],
        inp: &[f32],
        off: usize,
        bias_off: usize,
        c: usize,
        oc: usize,
    ) {
        let f32_w = self.matrix(off, oc * c, inp.len() / c);
        self.linear_with(out, inp, off, f32_w, self.b(bias_off, oc), c, oc);
    }

    /// out (rows, oc) = inp (rows, c) @ the matrix at parameter offset `off` + `bias`: the
    /// int8 product when the pass has that matrix quantized; with bf16 weights, the bf16 copy
    /// (`infer::Bf16Weights`: dot products over its rows for a few rows, or its packed form);
    /// else `f32_w` (that matrix as f32, in its layout) multiplied in `precision`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_with(
        &self,
        out: &mut [f32],
        inp: &[f32],
        off: usize,
        f32_w: (&[f32], Layout),
        bias: Option<&[f32]>,
        c: usize,
        oc: usize,
    ) {
        let rows = inp.len() / c;
        let bf16 = self.bf16.filter(|_| is_skinny(rows));
        if let Some(m) = self.q8.and_then(|q| q.get(off, oc * c)) {
            let out = &mut out[..rows * oc];
            q8_matmul_forward(out, inp, m);
            if let Some(b) = bias {
                for row in out.chunks_mut(oc) {
                    for (o, &b) in row.iter_mut().zip(b) {
                        *o += b;
                    }
                }
            }
        } else if let Some(m) = bf16.and_then(|w| w.get(off, oc * c)) {
            outin_forward(&mut out[..rows * oc], inp, m, bias, c, oc);
        } else if let Some(m) = self.bf16.and_then(|w| w.packed(off, oc * c)) {
            packed_bf16_forward(&mut out[..rows * oc], inp, m, bias, c, oc);
        } else {
            let (w, layout) = f32_w;
            matmul_forward(self.precision, out, inp, w, layout, bias, c, oc);
        }
    }
}

/// Where one block's intermediates go, each (rows, width): what the backward pass reads.
pub(super) struct BlockActs<'a> {
    pub ln1: &'a mut [f32],
    pub ln1_mean: &'a mut [f32],
    pub ln1_rstd: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub atty: &'a mut [f32],
    pub residual2: &'a mut [f32],
    pub ln2: &'a mut [f32],
    pub ln2_mean: &'a mut [f32],
    pub ln2_rstd: &'a mut [f32],
    pub fch: &'a mut [f32],
    pub fch_gelu: &'a mut [f32],
}

/// Dropout on the two residual branches: the mask keys of the attention and MLP branches.
#[derive(Clone, Copy)]
pub(super) struct BranchDropout {
    pub attn_key: u64,
    pub mlp_key: u64,
    pub p: f32,
}

/// `out = block(x)` over `x.len() / c` rows. `attend(atty, qkv)` writes attention's output
/// from the projected queries, keys and values (turning the queries and keys by their
/// positions first, for a Llama). `proj` is (rows, C) scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_forward(
    out: &mut [f32],
    x: &[f32],
    a: BlockActs,
    proj: &mut [f32],
    w: Weights,
    o: &LayerOffsets,
    s: Shape,
    dropout: Option<BranchDropout>,
    attend: impl FnOnce(&mut [f32], &mut [f32]),
) {
    let c = s.c;
    norm_forward(
        s.norm,
        a.ln1,
        a.ln1_mean,
        a.ln1_rstd,
        x,
        w.w(o.ln1_w, c),
        w.b(o.ln1_b, c),
        c,
    );
    w.linear(a.qkv, a.ln1, o.qkv_w, o.qkv_b, c, s.qkv);
    attend(a.atty, a.qkv);
    w.linear(proj, a.atty, o.attproj_w, o.attproj_b, c, c);
    if let Some(d) = dropout {
        dropout_inplace(proj, d.attn_key, d.p);
    }
    residual_forward(a.residual2, x, proj);

    norm_forward(
        s.norm,
        a.ln2,
        a.ln2_mean,
        a.ln2_rstd,
        a.residual2,
        w.w(o.ln2_w, c),
        w.b(o.ln2_b, c),
        c,
    );
    w.linear(a.fch, a.ln2, o.fc_w, o.fc_b, c, s.mlp_in);
    s.mlp_activation(a.fch_gelu, a.fch);
    w.linear(proj, a.fch_gelu, o.fcproj_w, o.fcproj_b, s.mlp, c);
    if let Some(d) = dropout {
        dropout_inplace(proj, d.mlp_key, d.p);
    }
    residual_forward(out, a.residual2, proj);
}

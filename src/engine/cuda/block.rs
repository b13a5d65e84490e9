//! One transformer block's forward pass on the GPU, written once for training and cached
//! inference (as `engine::cpu::block`):
//!
//! x2  = x  + drop(attn(ln_1(x)) @ W_attnproj + b)
//! out = x2 + drop(gelu(ln_2(x2) @ W_fc + b) @ W_fcproj + b)   (GELU in c_fc's epilogue or not)
//!
//! Attention is a closure (the whole causal sequence, or the KV cache), dropout optional. Each
//! residual add is fused with the LayerNorm that follows it (`residual_layernorm_forward`): ln_2
//! inside the block, and after the block the next block's ln_1 (or ln_f), which the caller names;
//! so a block starts with its ln_1 already made.

use super::blas::Precision;
use super::ops::{Dropout, GeluAfter, Gpu, Norm, Operand, Params};
use crate::kernels::cpu::matmul::Layout;
use crate::model::params::LayerOffsets;
use anyhow::Result;

/// Where one block's intermediates go (device addresses), each (rows, width). All but the
/// residual stream's may be bf16 ([`Operand`]): in bf16 training, c_attn's and c_fc's products
/// write qkv and GELU's input in bf16, and the norms, attention and GELU their outputs, which
/// only products read.
pub(super) struct BlockBufs {
    pub ln1: Operand,
    pub qkv: Operand,
    pub atty: Operand,
    pub residual2: u64,
    /// ln_2's outputs and weights.
    pub ln2: Norm,
    pub fch: Operand,
    pub fch_gelu: Operand,
    /// Whether GELU may ride on c_fc's product (`ops::GeluAfter`): not when backward
    /// remakes its output from `fch` with the kernel, whose bits the forward must then give.
    pub fuse_gelu: bool,
    /// (rows, C) scratch for a projection's output.
    pub proj: u64,
}

/// Dropout on the two residual branches.
#[derive(Clone, Copy)]
pub(super) struct BranchDropout {
    pub attn: Dropout,
    pub mlp: Dropout,
}

/// `out = block(x)` over `rows` rows, its products in `precision`, with `a.ln1` = ln_1(x) made
/// before the call. `attend(atty, qkv)` writes attention's output. `next`: the norm of `out` to
/// make with the last residual add (the next block's ln_1, or ln_f), if any.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_forward(
    gpu: &Gpu,
    precision: Precision,
    out: u64,
    x: u64,
    a: &BlockBufs,
    p: Params,
    o: &LayerOffsets,
    has_bias: bool,
    rows: usize,
    c: usize,
    dropout: Option<BranchDropout>,
    next: Option<Norm>,
    attend: impl FnOnce(Operand, Operand) -> Result<()>,
) -> Result<()> {
    // The bias of a product writing `out`, in out's type (bf16 from the weights' bf16 copy).
    let bias = |off: usize, out: Operand| {
        has_bias.then(|| match out {
            Operand::F32(_) => Operand::F32(p.at(off)),
            Operand::Bf16(_) => p.matrix(off),
        })
    };
    let proj = Operand::F32(a.proj);
    let n = rows * c;
    gpu.matmul_forward(
        precision,
        a.qkv,
        a.ln1,
        p.matrix(o.qkv_w),
        Layout::InOut,
        bias(o.qkv_b, a.qkv),
        rows,
        c,
        3 * c,
        None,
    )?;
    attend(a.atty, a.qkv)?;
    gpu.matmul_forward(
        precision,
        proj,
        a.atty,
        p.matrix(o.attproj_w),
        Layout::InOut,
        bias(o.attproj_b, proj),
        rows,
        c,
        c,
        None,
    )?;
    if let Some(d) = dropout {
        gpu.dropout(a.proj, n, d.attn)?;
    }
    gpu.residual_layernorm_forward(a.ln2, a.residual2, x, a.proj, rows, c)?;

    gpu.matmul_forward(
        precision,
        a.fch,
        a.ln2.out,
        p.matrix(o.fc_w),
        Layout::InOut,
        bias(o.fc_b, a.fch),
        rows,
        c,
        4 * c,
        Some(GeluAfter {
            out: a.fch_gelu,
            may_fuse: a.fuse_gelu,
        }),
    )?;
    gpu.matmul_forward(
        precision,
        proj,
        a.fch_gelu,
        p.matrix(o.fcproj_w),
        Layout::InOut,
        bias(o.fcproj_b, proj),
        rows,
        4 * c,
        c,
        None,
    )?;
    if let Some(d) = dropout {
        gpu.dropout(a.proj, n, d.mlp)?;
    }
    match next {
        Some(norm) => gpu.residual_layernorm_forward(norm, out, a.residual2, a.proj, rows, c),
        None => gpu.residual(out, a.residual2, a.proj, n),
    }
}

//! The GPU the engine drives, and one method per kernel of `kernels::cuda`: grid shapes and
//! argument lists live here, next to nothing else, so each matches its `.cu` signature at a
//! glance. Buffers are passed as device addresses (`u64`, see `memory`), sizes as the kernel
//! declares them (`u64` for `unsigned long long`, `i32` for `int`). Matrix products go to
//! cuBLASLt (`matmul_forward`/`matmul_backward`, mapped from the CPU's row-major layouts), in
//! f32 or in bf16 (`Precision::Bf16`: operands written in bf16 by the op that made them, or
//! rounded into a bf16 copy first, `bf16.cu`).

use super::blas::{Blas, Epilogue, Extra, Gemm, Precision};
use super::memory::{is_out_of_memory, DevBuf};
use super::module::Kernels;
use super::profile::Profile;
use crate::kernels::cpu::matmul::Layout;
use crate::kernels::cuda::{
    ATTENTION_BLOCK_ROWS, ATTENTION_HEAD_SIZES, ATT_ROWS, COLSUM_ROWS, FLASH_THREADS, NORM_CHUNK,
};
use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaContext, CudaStream, LaunchConfig, PushKernelArg};
use std::cell::RefCell;
use std::sync::Arc;

pub(super) struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kernels: Kernels,
    pub blas: Blas,
    /// One op's scratch (a bf16 product's operand copies), reused by
    /// the next op (the stream runs them in order), grown to the largest.
    pub scratch: RefCell<DevBuf<u8>>,
    /// GPU time per kernel, with NANOGPT_CUDA_PROFILE=1.
    pub profile: RefCell<Option<Profile>>,
    /// Whether bf16 training runs GELU in cuBLASLt's epilogues of the products around it
    /// (`matmul_forward`'s `gelu`, `matmul_backward`'s `gelu_input`) rather than as kernels.
    pub gelu_epilogue: bool,
}

/// Launches kernel `$name` with `$cfg` and the arguments in order (each bound to a local so it
/// outlives the launch).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $gpu.kernels.get($name)?;
        $gpu.timed(|| $name.to_string(), || {
            let mut builder = $gpu.stream.launch_builder(f);
            $( let arg = $arg; builder.arg(&arg); )+
            // SAFETY: the argument list matches the kernel's signature in kernels/cuda (this
            // file's one job), and every address points into a live buffer of the size the
            // kernel reads.
            unsafe { builder.launch($cfg) }
                .map(|_| ())
                .map_err(|e| anyhow!("CUDA kernel {} failed to launch: {e:?}", $name))
        })
    }};
}

/// An activation that a matrix product reads: an f32 buffer (rounded into a bf16 copy first when
/// the product runs in bf16), or one the op that made it wrote in bf16 (`store` in `bf16.cu`:
/// the bits that rounding its f32 values would give), which bf16 products read as it is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Operand {
    F32(u64),
    Bf16(u64),
}

impl Operand {
    /// The kernel that writes this operand: `name`, or `name_bf16`.
    fn kernel(self, name: &str) -> String {
        match self {
            Operand::F32(_) => name.to_string(),
            Operand::Bf16(_) => format!("{name}_bf16"),
        }
    }

    pub fn ptr(self) -> u64 {
        match self {
            Operand::F32(p) | Operand::Bf16(p) => p,
        }
    }

    fn is_bf16(self) -> bool {
        matches!(self, Operand::Bf16(_))
    }

    /// An error naming `what` unless `other` has this one's type (an engine bug, not a user's).
    fn same_type_as(self, other: Operand, what: &str) -> Result<()> {
        if self.is_bf16() != other.is_bf16() {
            bail!("{what} have different types ({self:?}, {other:?})");
        }
        Ok(())
    }
}

/// The parameters as the ops read them: the f32 master weights (norms, biases, embeddings,
/// inference), and in bf16 training the bf16 copy of them that AdamW keeps (`adamw.cu`), which
/// the matrix products read instead of rounding the master before each product.
#[derive(Clone, Copy)]
pub(super) struct Params<'a> {
    pub master: &'a DevBuf<f32>,
    pub bf16: Option<&'a DevBuf<u16>>,
}

impl Params<'_> {
    /// Master element `offset`.
    pub fn at(&self, offset: usize) -> u64 {
        self.master.at(offset)
    }

    /// The weight matrix at `offset` as a product's operand: the bf16 copy when there is one.
    pub fn matrix(&self, offset: usize) -> Operand {
        match self.bf16 {
            Some(copy) => Operand::Bf16(copy.at(offset)),
            None => Operand::F32(self.master.at(offset)),
        }
    }
}

/// One LayerNorm's forward: where its output (which only products read), per-row mean and rstd
/// (kept for backward) go, and its weight and bias (0 for a model without biases).
#[derive(Clone, Copy)]
pub(super) struct Norm {
    pub out: Operand,
    pub mean: u64,
    pub rstd: u64,
    pub w: u64,
    pub b: u64,
}

/// GELU after a matrix product (`Gpu::matmul_forward`): where its output goes (its input being
/// the product's output), and whether it may ride on the product's epilogue (not when backward
/// remakes it with `gelu_forward`, whose bits the forward pass must then give).
#[derive(Clone, Copy)]
pub(super) struct GeluAfter {
    pub out: Operand,
    pub may_fuse: bool,
}

/// Dropout on a buffer: the mask key and the drop probability.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dropout {
    pub key: u64,
    pub p: f32,
}

impl Dropout {
    /// The survivors' scale, computed as the CPU computes it.
    fn scale(self) -> f32 {
        1.0 / (1.0 - self.p)
    }
}

/// Attention's score scale 1/sqrt(hs), as the CPU computes it.
fn attention_scale(hs: usize) -> f32 {
    1.0 / (hs as f32).sqrt()
}

fn cfg(grid: (usize, usize), block: usize, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// One thread per element.
fn elementwise(n: usize) -> LaunchConfig {
    cfg((n.div_ceil(256).max(1), 1), 256, 0)
}

/// One warp per row, 8 rows a block.
fn warp_rows(rows: usize) -> LaunchConfig {
    cfg((rows.div_ceil(8).max(1), 1), 256, 0)
}

pub(super) fn colsum_chunks(rows: usize) -> usize {
    rows.div_ceil(COLSUM_ROWS)
}

/// The attention kernels' head-size bound for head size `hs`.
pub(super) fn attention_bound(hs: usize) -> Result<usize> {
    match ATTENTION_HEAD_SIZES.iter().find(|&&b| b >= hs) {
        Some(&b) => Ok(b),
        None => bail!(
            "head size {hs} (n_embd / n_head) is above {}, the largest the CUDA attention kernels support; use --device=cpu",
            ATTENTION_HEAD_SIZES[ATTENTION_HEAD_SIZES.len() - 1]
        ),
    }
}

/// The training attention kernels of a precision and head size: the f32 ones (`attention.cu`,
/// a thread per row; f16 training's too, there being no f16 flash kernels yet) or the bf16 ones
/// (`attention_bf16.cu`, a warp per 16 rows). Both take the same arguments, and a block covers
/// 64 rows of one (batch, head).
struct AttentionKernels {
    forward: String,
    backward_dq: String,
    backward_dkv: String,
    threads: usize,
}

impl AttentionKernels {
    fn new(precision: Precision, hs: usize) -> Result<AttentionKernels> {
        let bound = attention_bound(hs)?;
        let (prefix, threads) = match precision {
            Precision::F32 | Precision::F16 => ("attention", ATT_ROWS),
            Precision::Bf16 => ("flash", FLASH_THREADS),
        };
        Ok(AttentionKernels {
            forward: format!("{prefix}_forward_{bound}"),
            backward_dq: format!("{prefix}_backward_dq_{bound}"),
            backward_dkv: format!("{prefix}_backward_dkv_{bound}"),
            threads,
        })
    }

    fn launch(&self, b: usize, t: usize, nh: usize) -> LaunchConfig {
        cfg((t.div_ceil(ATTENTION_BLOCK_ROWS), b * nh), self.threads, 0)
    }
}

pub(super) fn norm_chunks(n: usize) -> usize {
    n.div_ceil(NORM_CHUNK)
}

impl Gpu {
    /// Runs `queue` (which queues GPU work), timed under `name()` when profiling.
    pub fn timed(
        &self,
        name: impl FnOnce() -> String,
        queue: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        if self.profile.borrow().is_none() {
            return queue();
        }
        let start = Profile::mark(&self.stream);
        queue()?;
        let end = Profile::mark(&self.stream);
        if let (Some(start), Some(end), Some(p)) = (start, end, self.profile.borrow_mut().as_mut())
        {
            p.add(name(), start, end);
        }
        Ok(())
    }

    /// A cuBLASLt product (`Blas::matmul`), timed by shape (and GELU epilogue) when profiling.
    pub fn gemm(&self, g: Gemm, a: u64, b: u64, d: u64, extra: Extra) -> Result<()> {
        let name = || {
            let dtype = match g.inputs {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
                Precision::F16 => "f16",
            };
            let gelu = match g.epilogue {
                Epilogue::GeluAux { .. } => " +gelu",
                Epilogue::DGelu => " +dgelu",
                Epilogue::None | Epilogue::Bias => "",
            };
            format!("gemm {dtype} {}x{}x{}{gelu}", g.m, g.n, g.k)
        };
        self.timed(name, || self.blas.matmul(g, a, b, d, extra))
    }

    /// Whether `g` may run with a GELU epilogue on these pointers: bf16 training with
    /// `gelu_epilogue` on, and cuBLASLt offering an algorithm for it (else GELU runs as a
    /// kernel, and the first refusal of each shape is said on stderr).
    fn gelu_fused(&self, g: Gemm, a: u64, b: u64, d: u64, extra: Extra) -> bool {
        self.gelu_epilogue && g.out_bf16 && self.blas.has_algorithm(g, a, b, d, extra)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("the GPU reported an error: {e:?}"))
    }

    pub fn residual(&self, out: u64, a: u64, b: u64, n: usize) -> Result<()> {
        launch!(
            self,
            "residual_forward",
            elementwise(n),
            out,
            a,
            b,
            n as u64
        )
    }

    /// out = GELU(inp): both f32, or both bf16.
    pub fn gelu_forward(&self, out: Operand, inp: Operand, n: usize) -> Result<()> {
        out.same_type_as(inp, "gelu_forward's input and output")?;
        launch!(
            self,
            &out.kernel("gelu_forward"),
            elementwise(n),
            out.ptr(),
            inp.ptr(),
            n as u64
        )
    }

    /// d = d * GELU'(inp), in place: d and inp both f32, or both bf16.
    fn gelu_backward_inplace(&self, d: Operand, inp: Operand, n: usize) -> Result<()> {
        d.same_type_as(inp, "gelu_backward's input and gradient")?;
        launch!(
            self,
            &d.kernel("gelu_backward_inplace"),
            elementwise(n),
            d.ptr(),
            inp.ptr(),
            n as u64
        )
    }

    pub fn dropout(&self, x: u64, n: usize, d: Dropout) -> Result<()> {
        launch!(
            self,
            "dropout_inplace",
            elementwise(n),
            x,
            n as u64,
            d.key,
            d.p,
            d.scale()
        )
    }

    pub fn scale(&self, x: u64, n: usize, coef: f32) -> Result<()> {
        launch!(self, "scale_inplace", elementwise(n), x, n as u64, coef)
    }

    /// acc (n) += column sums of m (rows, n; f32 or bf16), in f32; `partial` holds
    /// colsum_chunks(rows) * n floats.
    pub fn colsum(&self, acc: u64, m: Operand, rows: usize, n: usize, partial: u64) -> Result<()> {
        let chunks = colsum_chunks(rows);
        let grid = (n.div_ceil(128), chunks);
        launch!(
            self,
            &m.kernel("colsum_partial"),
            cfg(grid, 128, 0),
            partial,
            m.ptr(),
            rows as u64,
            n as u64
        )?;
        self.colsum_finish(acc, partial, chunks, n)
    }

    fn colsum_finish(&self, acc: u64, partial: u64, chunks: usize, n: usize) -> Result<()> {
        let grid = (n.div_ceil(128), 1);
        launch!(
            self,
            "colsum_finish",
            cfg(grid, 128, 0),
            acc,
            partial,
            chunks as u64,
            n as u64
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn encoder_forward(
        &self,
        out: u64,
        tokens: u64,
        pos: u64,
        wte: u64,
        wpe: u64,
        rows: usize,
        c: usize,
    ) -> Result<()> {
        let n = rows * c;
        launch!(
            self,
            "encoder_forward",
            elementwise(n),
            out,
            tokens,
            pos,
            wte,
            wpe,
            rows as u64,
            c as u64
        )
    }

    /// Token-embedding gradient from `buckets` buckets of rows (see encoder.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_backward_wte(
        &self,
        dwte: u64,
        dout: u64,
        starts: u64,
        rows: u64,
        tokens: u64,
        buckets: usize,
        c: usize,
    ) -> Result<()> {
        let grid = (buckets, c.div_ceil(128));
        launch!(
            self,
            "encoder_backward_wte",
            cfg(grid, 128, 0),
            dwte,
            dout,
            starts,
            rows,
            tokens,
            c as u64
        )
    }

    pub fn encoder_backward_wpe(
        &self,
        dwpe: u64,
        dout: u64,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        launch!(
            self,
            "encoder_backward_wpe",
            elementwise(t * c),
            dwpe,
            dout,
            b as u64,
            t as u64,
            c as u64
        )
    }

    /// `norm`'s outputs = LayerNorm of `inp` (rows, c).
    pub fn layernorm_forward(&self, norm: Norm, inp: u64, rows: usize, c: usize) -> Result<()> {
        launch!(
            self,
            &norm.out.kernel("layernorm_forward"),
            warp_rows(rows),
            norm.out.ptr(),
            norm.mean,
            norm.rstd,
            inp,
            norm.w,
            norm.b,
            rows as u64,
            c as i32
        )
    }

    /// sum = inp + add (the residual stream), and `norm`'s outputs = LayerNorm of sum, in one
    /// pass (rows, c).
    pub fn residual_layernorm_forward(
        &self,
        norm: Norm,
        sum: u64,
        inp: u64,
        add: u64,
        rows: usize,
        c: usize,
    ) -> Result<()> {
        launch!(
            self,
            &norm.out.kernel("residual_layernorm_forward"),
            warp_rows(rows),
            norm.out.ptr(),
            norm.mean,
            norm.rstd,
            sum,
            inp,
            add,
            norm.w,
            norm.b,
            rows as u64,
            c as i32
        )
    }

    /// dinp += the input gradient; dw, db (db 0 without biases) += the parameter gradients.
    /// `partial` holds 2 * colsum_chunks(rows) * c floats.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &self,
        dinp: u64,
        dw: u64,
        db: u64,
        dout: u64,
        inp: u64,
        w: u64,
        mean: u64,
        rstd: u64,
        rows: usize,
        c: usize,
        partial: u64,
    ) -> Result<()> {
        launch!(
            self,
            "layernorm_backward_dx",
            warp_rows(rows),
            dinp,
            dout,
            inp,
            w,
            mean,
            rstd,
            rows as u64,
            c as i32
        )?;
        let chunks = colsum_chunks(rows);
        let partial_b = if db == 0 {
            0
        } else {
            partial + (chunks * c * 4) as u64
        };
        let grid = (c.div_ceil(128), chunks);
        launch!(
            self,
            "layernorm_backward_params",
            cfg(grid, 128, 0),
            partial,
            partial_b,
            dout,
            inp,
            mean,
            rstd,
            rows as u64,
            c as u64
        )?;
        self.colsum_finish(dw, partial, chunks, c)?;
        if db != 0 {
            self.colsum_finish(db, partial_b, chunks, c)?;
        }
        Ok(())
    }

    /// Each row's loss and log-sum-exp from the logits (f32, or bf16 in bf16 training).
    #[allow(clippy::too_many_arguments)]
    pub fn crossentropy_forward(
        &self,
        row_loss: u64,
        row_lse: u64,
        logits: Operand,
        targets: u64,
        rows: usize,
        v: usize,
        vp: usize,
    ) -> Result<()> {
        launch!(
            self,
            &logits.kernel("crossentropy_forward"),
            cfg((rows, 1), 1024, 0),
            row_loss,
            row_lse,
            logits.ptr(),
            targets,
            v as u64,
            vp as u64
        )
    }

    /// The logits' gradient, in place and in their type (f32, or bf16 in bf16 training).
    #[allow(clippy::too_many_arguments)]
    pub fn crossentropy_backward_inplace(
        &self,
        logits: Operand,
        row_lse: u64,
        targets: u64,
        rows: usize,
        v: usize,
        vp: usize,
        scale: f32,
    ) -> Result<()> {
        launch!(
            self,
            &logits.kernel("crossentropy_backward_inplace"),
            cfg((rows, 1), 1024, 0),
            logits.ptr(),
            row_lse,
            targets,
            v as u64,
            vp as u64,
            scale
        )
    }

    /// Training attention over qkv (B, T, 3C): out (B, T, C) and lse (B, H, T); with
    /// `attention.cu`'s f32 kernels (qkv and out f32; f32 and f16 training), or in bf16 on the
    /// tensor cores (`attention_bf16.cu`, qkv and out bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(
        &self,
        precision: Precision,
        out: Operand,
        lse: u64,
        qkv: Operand,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        drop: Option<Dropout>,
    ) -> Result<()> {
        let kernels = AttentionKernels::new(precision, hs)?;
        let bf16 = precision == Precision::Bf16;
        if out.is_bf16() != bf16 || qkv.is_bf16() != bf16 {
            bail!("attention_forward: qkv and the output are bf16 in bf16 training, else f32");
        }
        let (key, p, inv_keep, on) = drop_args(drop);
        launch!(
            self,
            &kernels.forward,
            kernels.launch(b, t, nh),
            out.ptr(),
            lse,
            qkv.ptr(),
            t as i32,
            nh as i32,
            hs as i32,
            attention_scale(hs),
            key,
            p,
            inv_keep,
            on
        )
    }

    /// dqkv (overwritten) from dout, in `precision` as the forward pass (qkv, dout and dqkv f32,
    /// or bf16 for the bf16 kernels); `dd` is (B, H, T) scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        precision: Precision,
        dqkv: Operand,
        dout: Operand,
        qkv: Operand,
        out: Operand,
        lse: u64,
        dd: u64,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        drop: Option<Dropout>,
    ) -> Result<()> {
        let kernels = AttentionKernels::new(precision, hs)?;
        let bf16 = precision == Precision::Bf16;
        if [dqkv, dout, qkv, out].iter().any(|x| x.is_bf16() != bf16) {
            bail!("attention_backward: qkv, out and their gradients are bf16 in bf16 training, else f32");
        }
        let bht = b * nh * t;
        launch!(
            self,
            &out.kernel("attention_backward_d"),
            elementwise(bht),
            dd,
            dout.ptr(),
            out.ptr(),
            bht as u64,
            t as i32,
            nh as i32,
            hs as i32
        )?;
        let (key, p, inv_keep, on) = drop_args(drop);
        for name in [&kernels.backward_dq, &kernels.backward_dkv] {
            launch!(
                self,
                name,
                kernels.launch(b, t, nh),
                dqkv.ptr(),
                dout.ptr(),
                qkv.ptr(),
                lse,
                dd,
                t as i32,
                nh as i32,
                hs as i32,
                attention_scale(hs),
                key,
                p,
                inv_keep,
                on
            )?;
        }
        Ok(())
    }

    /// Appends n_tok token rows of keys/values (from qkv) to this layer's cache block.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_cache_write(
        &self,
        k_cache: u64,
        v_cache: u64,
        qkv: u64,
        slot: u64,
        pos: u64,
        n_tok: usize,
        nh: usize,
        hs: usize,
        max_t: usize,
    ) -> Result<()> {
        let n = n_tok * nh * hs;
        launch!(
            self,
            "kv_cache_write",
            elementwise(n),
            k_cache,
            v_cache,
            qkv,
            slot,
            pos,
            n_tok as u64,
            nh as i32,
            hs as i32,
            max_t as u64
        )
    }

    /// Each token row attends to its cache row's positions 0..=pos.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_cached(
        &self,
        out: u64,
        q: u64,
        q_rs: usize,
        k_cache: u64,
        v_cache: u64,
        slot: u64,
        pos: u64,
        n_tok: usize,
        nh: usize,
        hs: usize,
        max_t: usize,
    ) -> Result<()> {
        let name = format!("attention_cached_{}", attention_bound(hs)?);
        let scale = attention_scale(hs);
        let pairs = n_tok * nh;
        launch!(
            self,
            &name,
            cfg((pairs.div_ceil(4), 1), 128, 0),
            out,
            q,
            q_rs as u64,
            k_cache,
            v_cache,
            slot,
            pos,
            n_tok as u64,
            nh as i32,
            hs as i32,
            max_t as u64,
            scale
        )
    }

    /// partials[chunk] = sum of squares of grads over NORM_CHUNK-element chunks, in f64.
    pub fn norm_partials(&self, partials: u64, grads: u64, n: usize) -> Result<()> {
        launch!(
            self,
            "norm_partials",
            cfg((norm_chunks(n), 1), 256, 0),
            partials,
            grads,
            n as u64
        )
    }

    /// AdamW over the whole buffer; `copy`: (address, rounding key) of the bf16 weight copy to
    /// write as well, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        params: u64,
        grads: u64,
        m: u64,
        v: u64,
        n: usize,
        groups: (u64, u64, usize),
        hyper: [f32; 6],
        copy: Option<(u64, u64)>,
    ) -> Result<()> {
        let (starts, decays, n_groups) = groups;
        let (copy, round_key) = copy.unwrap_or((0, 0));
        let [b1, b2, eps, step_size, bc2_sqrt, decayed] = hyper;
        launch!(
            self,
            "adamw_update",
            elementwise(n),
            params,
            grads,
            m,
            v,
            n as u64,
            starts,
            decays,
            n_groups as i32,
            b1,
            b2,
            eps,
            step_size,
            bc2_sqrt,
            decayed,
            copy,
            round_key
        )
    }

    /// out = bf16 copy of `n` f32 values, rounded stochastically with `key` (bf16.cu).
    pub fn to_bf16_stochastic(&self, out: u64, inp: u64, n: usize, key: u64) -> Result<()> {
        launch!(
            self,
            "to_bf16_stochastic",
            elementwise(n),
            out,
            inp,
            n as u64,
            key
        )
    }

    /// Regions of `scratch` of these sizes (bytes), end to end, each 256-byte aligned (as
    /// cuBLASLt's fastest algorithms want); valid until the next op asks for regions.
    pub fn carve<const N: usize>(&self, bytes: [usize; N]) -> Result<[u64; N]> {
        const ALIGN: usize = 256;
        let total = bytes.iter().map(|b| b.next_multiple_of(ALIGN)).sum();
        let mut scratch = self.scratch.borrow_mut();
        if scratch.len() < total {
            // Ops queued earlier may still use the old buffer.
            self.synchronize()?;
            // Freed before the larger one is made: the two may not fit together.
            *scratch =
                DevBuf::zeros(0).map_err(|e| anyhow!("freeing GPU scratch failed: {e:?}"))?;
            *scratch = DevBuf::zeros(total).map_err(|e| {
                if is_out_of_memory(&e) {
                    anyhow!(
                        "out of GPU memory for {} MiB of scratch (bf16 operands): use a smaller batch_size",
                        total >> 20
                    )
                } else {
                    anyhow!("GPU allocation of {total} bytes of scratch failed: {e:?}")
                }
            })?;
        }
        let mut regions = [0u64; N];
        let mut at = 0;
        for (region, size) in regions.iter_mut().zip(bytes) {
            *region = scratch.at(at);
            at += size.next_multiple_of(ALIGN);
        }
        Ok(regions)
    }

    /// The operands (each with its length) as a product in `precision` reads them: in bf16 or
    /// f16, f32 ones rounded into scratch copies (`to_bf16`, `to_f16`), bf16 ones (bf16 only) as
    /// they are; in f32, as they are.
    fn operands<const N: usize>(
        &self,
        precision: Precision,
        operands: [(Operand, usize); N],
    ) -> Result<[u64; N]> {
        let round = match precision {
            Precision::F32 => None,
            Precision::Bf16 => Some("to_bf16"),
            Precision::F16 => Some("to_f16"),
        };
        let mut out = self.carve(operands.map(|(op, len)| match (op, round) {
            (Operand::F32(_), Some(_)) => 2 * len,
            _ => 0,
        }))?;
        for (slot, (op, len)) in out.iter_mut().zip(operands) {
            match (op, round) {
                (Operand::F32(src), Some(kernel)) => {
                    launch!(self, kernel, elementwise(len), *slot, src, len as u64)?
                }
                (Operand::F32(p), None) => *slot = p,
                (Operand::Bf16(p), _) if precision == Precision::Bf16 => *slot = p,
                (Operand::Bf16(_), _) => {
                    bail!("a bf16 operand reached a {precision:?} matrix product")
                }
            }
        }
        Ok(out)
    }

    /// out (rows, oc) = inp (rows, c) @ W [+ bias], W stored as `layout` (row-major), multiplied
    /// in `precision`; `out` and `bias` are f32, or both bf16 from a bf16 product. With `gelu`,
    /// also gelu.out = GELU(out), of out's type: in bf16 training with `gelu_epilogue` and
    /// `may_fuse`, inside the product (cuBLASLt's epilogue: GELU of the f32 sum, `out` its aux
    /// buffer); else by `gelu_forward` after it (which is how backward remakes it, bit for bit).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(
        &self,
        precision: Precision,
        out: Operand,
        inp: Operand,
        w: Operand,
        layout: Layout,
        bias: Option<Operand>,
        rows: usize,
        c: usize,
        oc: usize,
        gelu: Option<GeluAfter>,
    ) -> Result<()> {
        // Column-major: out^T (oc x rows) = W' (oc x c) inp^T (c x rows), where W' is the
        // (c, oc) buffer as stored (InOut) or the transposed (oc, c) one (OutIn).
        let (ta, lda) = match layout {
            Layout::InOut => (false, oc),
            Layout::OutIn => (true, c),
        };
        let out_bf16 = out.is_bf16();
        if out_bf16 && precision != Precision::Bf16 {
            bail!("matmul_forward: a bf16 output needs a bf16 product");
        }
        if let Some(bias) = bias {
            out.same_type_as(bias, "matmul_forward's output and bias")?;
        }
        let [w, inp] = self.operands(precision, [(w, c * oc), (inp, rows * c)])?;
        let g = Gemm {
            ta,
            tb: false,
            m: oc,
            n: rows,
            k: c,
            lda,
            ldb: c,
            ldd: oc,
            accumulate: false,
            epilogue: if bias.is_some() {
                Epilogue::Bias
            } else {
                Epilogue::None
            },
            inputs: precision,
            out_bf16,
        };
        let extra = Extra {
            bias: bias.map(Operand::ptr),
            aux: None,
        };
        let Some(gelu) = gelu else {
            return self.gemm(g, w, inp, out.ptr(), extra);
        };
        gelu.out.same_type_as(out, "GELU's input and output")?;
        let fused = Gemm {
            epilogue: Epilogue::GeluAux {
                bias: bias.is_some(),
            },
            ..g
        };
        let fused_extra = Extra {
            aux: Some(out.ptr()),
            ..extra
        };
        if gelu.may_fuse && self.gelu_fused(fused, w, inp, gelu.out.ptr(), fused_extra) {
            return self.gemm(fused, w, inp, gelu.out.ptr(), fused_extra);
        }
        self.gemm(g, w, inp, out.ptr(), extra)?;
        self.gelu_forward(gelu.out, out, rows * oc)
    }

    /// dinp = dout @ W^T (overwritten; f32, or bf16 from a bf16 product); dW += inp^T @ dout
    /// (dout^T @ inp for OutIn), both products in `precision`; dbias += column sums of dout
    /// (`partial`: colsum_chunks(rows) * oc floats), summed in f32. With `gelu_input` (inp is
    /// GELU of it, of dinp's type), dinp is that input's gradient, dout @ W^T * GELU'(gelu_input):
    /// in bf16 training with `gelu_epilogue` cuBLASLt's DGELU epilogue, else
    /// `gelu_backward_inplace` after the product.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        &self,
        precision: Precision,
        dinp: Operand,
        gelu_input: Option<Operand>,
        dw: u64,
        dbias: Option<u64>,
        dout: Operand,
        inp: Operand,
        w: Operand,
        layout: Layout,
        rows: usize,
        c: usize,
        oc: usize,
        partial: u64,
    ) -> Result<()> {
        if dinp.is_bf16() && precision != Precision::Bf16 {
            bail!("matmul_backward: a bf16 input gradient needs a bf16 product");
        }
        let [w_in, dout_in, inp_in] =
            self.operands(precision, [(w, c * oc), (dout, rows * oc), (inp, rows * c)])?;
        let (dinp_gemm, dw_gemm, dw_ab) = match layout {
            // dinp^T (c x rows) = W (c x oc) dout^T: the (c, oc) buffer is (oc x c) col-major.
            // dW^T (oc x c) += dout^T (oc x rows) inp (rows x c).
            Layout::InOut => (
                Gemm {
                    ta: true,
                    tb: false,
                    m: c,
                    n: rows,
                    k: oc,
                    lda: oc,
                    ldb: oc,
                    ldd: c,
                    accumulate: false,
                    epilogue: Epilogue::None,
                    inputs: precision,
                    out_bf16: false,
                },
                Gemm {
                    ta: false,
                    tb: true,
                    m: oc,
                    n: c,
                    k: rows,
                    lda: oc,
                    ldb: c,
                    ldd: oc,
                    accumulate: true,
                    epilogue: Epilogue::None,
                    inputs: precision,
                    out_bf16: false,
                },
                (dout_in, inp_in),
            ),
            // dinp^T (c x rows) = W^T (c x oc) dout^T: the (oc, c) buffer is (c x oc) col-major.
            // dW^T (c x oc) += inp^T (c x rows) dout (rows x oc).
            Layout::OutIn => (
                Gemm {
                    ta: false,
                    tb: false,
                    m: c,
                    n: rows,
                    k: oc,
                    lda: c,
                    ldb: oc,
                    ldd: c,
                    accumulate: false,
                    epilogue: Epilogue::None,
                    inputs: precision,
                    out_bf16: false,
                },
                Gemm {
                    ta: false,
                    tb: true,
                    m: c,
                    n: oc,
                    k: rows,
                    lda: c,
                    ldb: oc,
                    ldd: c,
                    accumulate: true,
                    epilogue: Epilogue::None,
                    inputs: precision,
                    out_bf16: false,
                },
                (inp_in, dout_in),
            ),
        };
        let dinp_gemm = Gemm {
            out_bf16: dinp.is_bf16(),
            ..dinp_gemm
        };
        match gelu_input {
            None => self.gemm(dinp_gemm, w_in, dout_in, dinp.ptr(), Extra::default())?,
            Some(pre) => {
                dinp.same_type_as(pre, "GELU's input and its gradient")?;
                let fused = Gemm {
                    epilogue: Epilogue::DGelu,
                    ..dinp_gemm
                };
                let extra = Extra {
                    bias: None,
                    aux: Some(pre.ptr()),
                };
                if self.gelu_fused(fused, w_in, dout_in, dinp.ptr(), extra) {
                    self.gemm(fused, w_in, dout_in, dinp.ptr(), extra)?;
                } else {
                    self.gemm(dinp_gemm, w_in, dout_in, dinp.ptr(), Extra::default())?;
                    self.gelu_backward_inplace(dinp, pre, rows * c)?;
                }
            }
        }
        self.gemm(dw_gemm, dw_ab.0, dw_ab.1, dw, Extra::default())?;
        if let Some(db) = dbias {
            self.colsum(db, dout, rows, oc, partial)?;
        }
        Ok(())
    }
}

/// The attention kernels' dropout arguments: key, p, 1/(1-p) as the CPU computes it, on/off.
fn drop_args(drop: Option<Dropout>) -> (u64, f32, f32, i32) {
    match drop {
        Some(d) => (d.key, d.p, d.scale(), 1),
        None => (0, 0.0, 1.0, 0),
    }
}

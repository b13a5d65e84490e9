//! The CUDA backend: llm.c's `train_gpt2.cu` beside the CPU's `train_gpt2.c`. Parameters,
//! gradients and AdamW moments live on the GPU in one buffer each, in the `ParamTable` layout;
//! activations are allocated once per (batch, seq len). The host sees them only through
//! `model()`, `grads()` and `optimizer_state()` (checkpoints, tests).
//!
//! By default this is the exact mode: f32 everywhere, matrix products on cuBLASLt with TF32 off,
//! every reduction in a fixed order (no atomics), so two runs give the same bits. Setting
//! NANOGPT_CUDA_TF32=1 lets cuBLASLt use TF32 tensor cores (faster, ~1e-3 relative error).
//! Training with dtype = "bfloat16" runs every matrix product (the linear layers, the classifier
//! and attention's four) in bf16 on the tensor cores (f32 sums), as the CPU engine's bf16
//! training and PyTorch's autocast do: activations are kept in bf16 but for the residual stream,
//! the weights are read from a bf16 copy that AdamW writes from the f32 master with stochastic
//! rounding (`weights_bf16`); master weights, gradients, moments and the other ops' sums stay
//! f32. GELU runs in cuBLASLt's epilogues of the products beside it from compute capability 9.0
//! (llm.c's default there), else as a kernel; NANOGPT_CUDA_GELU_EPILOGUE=1 or 0 says which.
//! dtype = "float16" runs the linear layers' and the classifier's products with f16 inputs
//! (`f16.cu`) and attention in f32, with a loss scaler (`scaler`: the loss's gradient scaled up,
//! unscaled in `update`, an overflowing step skipped).
//! Hand-written kernels (`kernels::cuda`) cover what no library provides: embedding, LayerNorm
//! (fused with the residual add before it), GELU, dropout (the CPU's hash), fused softmax +
//! cross-entropy, flash-style attention, AdamW (writing the bf16 weight copy too) and the global
//! norm. The files beside this one: `device` (finding the GPU),
//! `module` (NVRTC and the PTX cache), `memory` (device buffers), `blas` (cuBLASLt), `ops` (one
//! launch per kernel), `profile`
//! (NANOGPT_CUDA_PROFILE=1: GPU time per kernel), `block`, `train`, `infer` (the model's math,
//! as in `engine::cpu`).

mod blas;
mod block;
mod device;
mod infer;
mod memory;
mod module;
mod ops;
mod profile;
mod train;

pub use device::gpu_present;

use super::{AdamW, Engine, Feed, KvCache, Mode, OptimizerState};
use crate::config::GptConfig;
use crate::dist::{nccl::Nccl, Collective};
use crate::engine::Dtype;
use crate::model::Gpt;
use crate::optim::LossScaler;
use crate::perf::gpu_peak;
use crate::rng::rounding_key;
use anyhow::{anyhow, bail, Result};
use blas::{Blas, Precision};
use memory::{is_out_of_memory, DevBuf};
use module::Kernels;
use ops::{norm_chunks, Gpu};
use std::borrow::Cow;
use std::cell::RefCell;
use train::{ActGrads, Activations};

/// nanoGPT's defaults, until the trainer sets its own (as the CPU engine).
const DEFAULT_ADAMW: AdamW = AdamW {
    lr: 6e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

pub struct CudaEngine {
    /// Data-parallel runs: NCCL, which sums the gradients in device memory. First, so it is
    /// dropped while the GPU context is still there.
    nccl: Option<Nccl>,
    gpu: Gpu,
    name: String,
    /// Whether cuBLASLt may use TF32 (NANOGPT_CUDA_TF32=1).
    tf32: bool,
    /// The compute capability, major * 10 + minor (bf16 products need 80, Ampere).
    cc: u32,
    /// What training's matrix products multiply in (`dtype`); cached inference stays f32.
    precision: Precision,
    /// Whether backward remakes the LayerNorm and GELU outputs (`Engine::set_activation_recompute`).
    recompute: bool,
    /// The config and table; its `params` are what was uploaded at open (the live ones are on
    /// the device).
    host: Gpt,
    params: DevBuf<f32>,
    /// In bf16 training, the bf16 copy of `params` that the matrix products read: AdamW writes
    /// it, rounded stochastically with `rounding_key(seed, step)`; `None` outside bf16 training,
    /// or until the next pass makes it (`bf16_weights_ready`).
    weights_bf16: Option<DevBuf<u16>>,
    /// The run's seed (`Engine::set_seed`), for that rounding.
    seed: u64,
    /// float16 training's loss scaler (`None` in the other dtypes), and the factor the gradient
    /// buffer holds the gradients at: the scaler's scale from `zero_grad` until `update`
    /// unscales them, else 1.
    scaler: Option<LossScaler>,
    grads_scaled_by: f32,
    grads: DevBuf<f32>,
    m: DevBuf<f32>,
    v: DevBuf<f32>,
    step: u64,
    hyper: AdamW,
    /// AdamW's groups: each tensor's first index, and whether it decays.
    group_start: DevBuf<u64>,
    group_decay: DevBuf<i32>,
    norm_partials: DevBuf<f64>,
    acts: Option<Activations>,
    act_grads: Option<ActGrads>,
    /// The first GPU failure in a method that cannot return an error (grad_norm, update,
    /// zero_grad); the next forward or backward reports it.
    fault: Option<String>,
}

impl CudaEngine {
    /// Uploads `model` to GPU 0 and compiles (or loads the cached) kernels.
    pub fn new(model: Gpt) -> Result<CudaEngine> {
        if model.config.llama().is_some() {
            anyhow::bail!(
                "the CUDA backend runs GPT-2 models only so far; run this Llama with --device=cpu"
            );
        }
        ops::attention_bound(model.config.head_size())?;
        let ctx = device::open_context()?;
        let name = ctx.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into());
        let cc = device::compute_capability(&ctx)?;
        let kernels = Kernels::load(&ctx, cc)?;
        let tf32 = std::env::var("NANOGPT_CUDA_TF32").is_ok_and(|v| v == "1");
        let blas = Blas::new(tf32)?;
        let stream = ctx.default_stream();
        let n = model.params.len();
        let mib = (4 * n * 4) as f64 / (1 << 20) as f64;
        let alloc = |what: &str| {
            let what = what.to_string();
            move |e: cudarc::driver::result::DriverError| {
                if is_out_of_memory(&e) {
                    anyhow!("out of GPU memory for the model's parameters, gradients and AdamW moments ({mib:.0} MiB): use a smaller model")
                } else {
                    anyhow!("GPU allocation of the {what} failed: {e:?}")
                }
            }
        };
        let mut params = DevBuf::zeros(n).map_err(alloc("parameters"))?;
        params.upload(&model.params).map_err(alloc("parameters"))?;
        let (starts, decays): (Vec<u64>, Vec<i32>) = model
            .table
            .entries
            .iter()
            .map(|e| (e.offset as u64, i32::from(e.decay)))
            .unzip();
        let mut group_start = DevBuf::zeros(starts.len()).map_err(alloc("optimizer groups"))?;
        group_start
            .upload(&starts)
            .map_err(alloc("optimizer groups"))?;
        let mut group_decay = DevBuf::zeros(decays.len()).map_err(alloc("optimizer groups"))?;
        group_decay
            .upload(&decays)
            .map_err(alloc("optimizer groups"))?;
        Ok(CudaEngine {
            gpu: Gpu {
                ctx,
                stream,
                kernels,
                blas,
                scratch: RefCell::new(DevBuf::zeros(0).map_err(alloc("scratch"))?),
                profile: RefCell::new(profile::Profile::from_env()),
                gelu_epilogue: match std::env::var("NANOGPT_CUDA_GELU_EPILOGUE").as_deref() {
                    Ok("1") => true,
                    Ok("0") => false,
                    _ => cc >= 90,
                },
            },
            name,
            tf32,
            cc,
            precision: Precision::F32,
            recompute: false,
            params,
            weights_bf16: None,
            seed: 0,
            scaler: None,
            grads_scaled_by: 1.0,
            grads: DevBuf::zeros(n).map_err(alloc("gradients"))?,
            m: DevBuf::zeros(n).map_err(alloc("moments"))?,
            v: DevBuf::zeros(n).map_err(alloc("moments"))?,
            step: 0,
            hyper: DEFAULT_ADAMW,
            group_start,
            group_decay,
            norm_partials: DevBuf::zeros(norm_chunks(n)).map_err(alloc("norm scratch"))?,
            acts: None,
            act_grads: None,
            fault: None,
            nccl: None,
            host: model,
        })
    }

    /// Makes this engine's context current on the calling thread (the raw memory calls need
    /// it), after reporting any earlier failure.
    fn ready(&self) -> Result<()> {
        if let Some(msg) = &self.fault {
            bail!("an earlier GPU operation failed: {msg}");
        }
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("could not make the GPU context current: {e:?}"))
    }

    /// Keeps the first failure for the next forward/backward; `None` on failure.
    fn stash<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(x) => Some(x),
            Err(e) => {
                self.fault.get_or_insert(format!("{e:#}"));
                None
            }
        }
    }

    /// In bf16 training, makes the bf16 weight copy if there is none (training starts or
    /// resumes, or the seed changed), rounded with the key of the last AdamW step: the bits that
    /// step's update would have written, so a resumed run goes on as the unbroken one.
    fn bf16_weights_ready(&mut self) -> Result<()> {
        if self.precision != Precision::Bf16 || self.weights_bf16.is_some() {
            return Ok(());
        }
        let n = self.params.len();
        let copy = DevBuf::zeros(n).map_err(|e| {
            if is_out_of_memory(&e) {
                anyhow!(
                    "out of GPU memory for the bf16 copy of the weights ({} MiB): use a smaller model, or dtype = \"float32\"",
                    (2 * n) >> 20
                )
            } else {
                anyhow!("GPU allocation of the bf16 weights failed: {e:?}")
            }
        })?;
        let key = rounding_key(self.seed, self.step);
        self.gpu
            .to_bf16_stochastic(copy.ptr(), self.params.ptr(), n, key)?;
        self.weights_bf16 = Some(copy);
        Ok(())
    }

    /// Whether bf16 training runs GELU in cuBLASLt's epilogues (see the module's header): for
    /// tests, which run both ways in one process.
    pub fn set_gelu_epilogue(&mut self, on: bool) {
        self.gpu.gelu_epilogue = on;
    }

    /// The bf16 weight copy the products read, if bf16 training has made one (the seam shows
    /// the f32 master only; tests check the copy's rounding with this).
    pub fn bf16_weights(&self) -> Result<Option<Vec<u16>>> {
        self.ready()?;
        self.weights_bf16
            .as_ref()
            .map(|copy| copy.to_vec())
            .transpose()
            .map_err(|e| anyhow!("copying the bf16 weights from the GPU failed: {e:?}"))
    }

    fn try_grad_norm(&mut self) -> Result<f32> {
        let n = self.grads.len();
        self.gpu
            .norm_partials(self.norm_partials.ptr(), self.grads.ptr(), n)?;
        let partials = self
            .norm_partials
            .to_vec()
            .map_err(|e| anyhow!("the GPU reported an error computing the gradient norm: {e:?}"))?;
        // Summed in order, as the CPU sums its partials.
        Ok(partials.iter().sum::<f64>().sqrt() as f32)
    }

    fn try_update(&mut self, lr: f32, grad_clip: f32) -> Result<f32> {
        let n = self.grads.len();
        let scaled_by = self.grads_scaled_by;
        let scaled_norm = self.try_grad_norm()?;
        let norm = scaled_norm / scaled_by;
        if let Some(scaler) = &mut self.scaler {
            if !scaler.step(scaled_norm) {
                // Overflow in f16: the step is skipped (as PyTorch's GradScaler does).
                return Ok(norm);
            }
        }
        // Unscaling and PyTorch's clip_grad_norm_ (the CPU's clip_grads) in one pass: 1/scale is
        // a power of two, so the product is the same bits as the two in turn.
        let mut coef = 1.0 / scaled_by;
        if grad_clip > 0.0 {
            let clip = grad_clip / (norm + 1e-6);
            if clip < 1.0 {
                coef *= clip;
            }
        }
        if coef != 1.0 {
            self.gpu.scale(self.grads.ptr(), n, coef)?;
        }
        self.grads_scaled_by = 1.0;
        self.step += 1;
        let h = AdamW { lr, ..self.hyper };
        // The step's scalars exactly as the CPU's adamw_update computes them.
        let t = self.step as i32;
        let bc1 = 1.0 - (h.beta1 as f64).powi(t);
        let bc2 = 1.0 - (h.beta2 as f64).powi(t);
        let step_size = (h.lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decayed = 1.0 - h.lr * h.weight_decay;
        self.gpu.adamw(
            self.params.ptr(),
            self.grads.ptr(),
            self.m.ptr(),
            self.v.ptr(),
            n,
            (
                self.group_start.ptr(),
                self.group_decay.ptr(),
                self.group_start.len(),
            ),
            [h.beta1, h.beta2, h.eps, step_size, bc2_sqrt, decayed],
            self.weights_bf16
                .as_ref()
                .map(|copy| (copy.ptr(), rounding_key(self.seed, self.step))),
        )?;
        self.gpu.synchronize()?;
        Ok(norm)
    }
}

/// A device-to-host copy that the seam gives no way to fail: a GPU that cannot copy memory has
/// faulted, and the run cannot go on.
fn download(gpu: &Gpu, buf: &DevBuf<f32>, what: &str) -> Vec<f32> {
    gpu.ctx
        .bind_to_thread()
        .and_then(|_| buf.to_vec())
        .unwrap_or_else(|e| panic!("copying the {what} from the GPU failed ({e:?}); the GPU has faulted, see nvidia-smi"))
}

impl Engine for CudaEngine {
    fn device_name(&self) -> String {
        format!("cuda ({})", self.name)
    }

    /// The peak of the precision this engine's products run in: bf16 (nanoGPT's MFU
    /// denominator), f16 (the same figure: the 16-bit tensor peak), FP32, or TF32 when enabled.
    fn peak_tflops(&self) -> (f64, &'static str) {
        match (gpu_peak(&self.name), self.precision, self.tf32) {
            (Some(p), Precision::Bf16 | Precision::F16, _) => (
                p.bf16,
                "the GPU's dense 16-bit tensor peak from its data sheet (perf::GPU_PEAKS)",
            ),
            (Some(p), Precision::F32, false) => (
                p.fp32,
                "the GPU's FP32 peak from its data sheet (perf::GPU_PEAKS)",
            ),
            (Some(p), Precision::F32, true) => (
                p.tf32,
                "the GPU's dense TF32 peak from its data sheet (perf::GPU_PEAKS)",
            ),
            (None, ..) => (f64::NAN, "unknown GPU model: pass --peak_tflops for MFU"),
        }
    }

    fn set_training_dtype(&mut self, dtype: Dtype) -> Result<()> {
        // cuBLASLt's 16-bit products need tensor cores: bf16 those of Ampere (8.0) or newer, f16
        // those of Volta (7.0) or newer.
        let (precision, min_cc, arch) = match dtype {
            Dtype::Float32 => (Precision::F32, 0, ""),
            Dtype::Bfloat16 => (Precision::Bf16, 80, "Ampere"),
            Dtype::Float16 => (Precision::F16, 70, "Volta"),
        };
        if self.cc < min_cc {
            bail!(
                "dtype = \"{dtype}\" needs a GPU of compute capability {}.0 ({arch}) or newer; {} is {}.{}: use dtype = \"{}\"",
                min_cc / 10,
                self.name,
                self.cc / 10,
                self.cc % 10,
                self.default_training_dtype()
            );
        }
        self.precision = precision;
        if self.precision != Precision::Bf16 {
            self.weights_bf16 = None;
        }
        if self.precision != Precision::F16 {
            self.scaler = None;
        } else if self.scaler.is_none() {
            self.scaler = Some(LossScaler::default());
        }
        Ok(())
    }

    /// As nanoGPT: bf16 where the GPU has it, else f16 where it has f16 tensor cores.
    fn default_training_dtype(&self) -> Dtype {
        match self.cc {
            80.. => Dtype::Bfloat16,
            70.. => Dtype::Float16,
            _ => Dtype::Float32,
        }
    }

    fn set_activation_recompute(&mut self, on: bool) {
        self.recompute = on;
    }

    fn set_seed(&mut self, seed: u64) {
        if seed != self.seed {
            self.seed = seed;
            self.weights_bf16 = None;
        }
    }

    fn config(&self) -> &GptConfig {
        &self.host.config
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Option<f32>> {
        self.ready()?;
        self.forward_pass(tokens, targets, b, t, mode)
    }

    fn backward(&mut self, grad_scale: f32) -> Result<()> {
        self.ready()?;
        self.backward_pass(grad_scale, false)
    }

    fn zero_grad(&mut self) {
        let r = self.ready().and_then(|_| {
            self.grads
                .zero()
                .map_err(|e| anyhow!("clearing the gradients failed: {e:?}"))
        });
        self.stash(r);
        self.grads_scaled_by = self.scaler.map_or(1.0, |s| s.scale());
    }

    fn grad_norm(&mut self) -> f32 {
        let r = self.ready().and_then(|_| self.try_grad_norm());
        self.stash(r).unwrap_or(f32::NAN) / self.grads_scaled_by
    }

    fn update(&mut self, lr: f32, grad_clip: f32) -> f32 {
        let r = self.ready().and_then(|_| self.try_update(lr, grad_clip));
        self.stash(r).unwrap_or(f32::NAN)
    }

    fn set_adamw(&mut self, hyper: AdamW) {
        self.hyper = hyper;
    }

    /// NCCL on the device buffers (the TCP ring only carries its unique id).
    fn use_device_collective(&mut self, comm: &mut dyn Collective) -> Result<()> {
        self.ready()?;
        self.nccl = Some(Nccl::connect(comm)?);
        Ok(())
    }

    /// With NCCL open, each layer's gradients start their sum as soon as the backward pass has
    /// written them; the embeddings' and the final norm's, written last, go at the end.
    fn backward_all_reduced(&mut self, grad_scale: f32, comm: &mut dyn Collective) -> Result<()> {
        self.ready()?;
        if self.nccl.is_none() {
            self.backward_pass(grad_scale, false)?;
            return self.all_reduce_grads(comm);
        }
        self.backward_pass(grad_scale, true)
    }

    fn all_reduce_grads(&mut self, comm: &mut dyn Collective) -> Result<()> {
        self.ready()?;
        if let Some(nccl) = &mut self.nccl {
            // SAFETY: the gradient buffer is this context's, `len` f32 long.
            return unsafe { nccl.all_reduce_sum_f32(self.grads.ptr(), self.grads.len()) };
        }
        let mut grads = download(&self.gpu, &self.grads, "gradients");
        comm.all_reduce_sum(&mut grads)?;
        self.grads
            .upload(&grads)
            .map_err(|e| anyhow!("copying the summed gradients to the GPU failed: {e:?}"))
    }

    fn kv_cache(&self, rows: usize, capacity: usize) -> KvCache {
        self.new_kv_cache(rows, capacity)
    }

    fn forward_cached(
        &self,
        cache: &mut KvCache,
        feeds: &[Feed],
        logits: &mut [f32],
    ) -> Result<()> {
        self.ready()?;
        self.forward_feeds(cache, feeds, logits)
    }

    fn reorder_cache(&self, cache: &mut KvCache, rows: &[usize]) -> Result<()> {
        self.ready()?;
        self.reorder_kv(cache, rows)
    }

    fn model(&self) -> Cow<'_, Gpt> {
        Cow::Owned(Gpt {
            config: self.host.config.clone(),
            table: self.host.table.clone(),
            params: download(&self.gpu, &self.params, "parameters"),
        })
    }

    fn grads(&self) -> Cow<'_, [f32]> {
        let mut grads = download(&self.gpu, &self.grads, "gradients");
        if self.grads_scaled_by != 1.0 {
            // Exact: the scale is a power of two.
            let unscale = 1.0 / self.grads_scaled_by;
            grads.iter_mut().for_each(|g| *g *= unscale);
        }
        Cow::Owned(grads)
    }

    fn optimizer_state(&self) -> Cow<'_, OptimizerState> {
        Cow::Owned(OptimizerState {
            m: download(&self.gpu, &self.m, "AdamW moments"),
            v: download(&self.gpu, &self.v, "AdamW moments"),
            step: self.step,
        })
    }

    fn set_optimizer_state(&mut self, state: OptimizerState) -> Result<()> {
        self.ready()?;
        super::check_optimizer_state(&state, self.params.len())?;
        let up = |e| anyhow!("copying the AdamW moments to the GPU failed: {e:?}");
        self.m.upload(&state.m).map_err(up)?;
        self.v.upload(&state.v).map_err(up)?;
        self.step = state.step;
        // Made again with the new step's key.
        self.weights_bf16 = None;
        Ok(())
    }
}

//! The CPU backend: llm.c's `train_gpt2.c`. The model's math is in the files beside this one
//! (`block`: one transformer block, `train`: forward and backward with saved activations,
//! `infer`: the KV cache), on the kernels of `crate::kernels::cpu`; AdamW and the gradient norm
//! are one pass each over the flat buffers.

mod block;
mod infer;
mod train;

use super::{AdamW, Dtype, Engine, Feed, InferenceWeights, KvCache, KvDtype, Mode, OptimizerState};
use crate::config::GptConfig;
use crate::dist::{self, Collective};
use crate::kernels::cpu::adamw::{
    adamw_update, chunk_sums_of_squares, clip_grads, global_norm, norm_from_chunk_sums,
    norm_partials_len, CHUNK,
};
use crate::kernels::cpu::matmul::{gemm_into, Precision, View};
use crate::kernels::cpu::matmul_bf16::Kernel;
use crate::kernels::cpu::rope::RopeTable;
use crate::model::Gpt;
use anyhow::{bail, Result};
pub use infer::q8_group;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;
use std::time::Instant;
use train::{ActGrads, Activations};

/// nanoGPT's defaults, until the trainer sets its own.
const DEFAULT_ADAMW: AdamW = AdamW {
    lr: 6e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// The model and everything training it needs, in host memory.
pub struct CpuEngine {
    /// Change the parameters only through the `Engine` methods: `update` drops the transposed
    /// and int8 copies that cached inference reads (`decode_weights`, `q8_weights`).
    pub model: Gpt,
    /// Same layout as the parameters; empty until the first backward pass.
    pub grads: Vec<f32>,
    acts: Option<Activations>,
    act_grads: Option<ActGrads>,
    /// AdamW's moments for `opt_part` of the parameters: all of them, or a ZeRO-1 rank's part.
    opt: OptimizerState,
    opt_part: Range<usize>,
    hyper: AdamW,
    /// (first index, decays?) of each parameter tensor, in buffer order: AdamW's two groups.
    groups: Vec<(usize, bool)>,
    norm_partials: Vec<f64>,
    /// GPT-2's block matrices transposed for cached inference, built at its first pass.
    decode_weights: OnceLock<infer::DecodeWeights>,
    /// What cached inference computes with (`Engine::set_inference_weights`).
    inference: InferenceWeights,
    /// What new KV caches hold (`Engine::set_kv_cache_dtype`; `None`: what suits `inference`).
    kv_cache_dtype: Option<KvDtype>,
    /// With `InferenceWeights::Q8`: the block matrices and classifier in int8, built at the
    /// first cached pass and dropped by `update` (as `decode_weights`).
    q8_weights: OnceLock<infer::Q8Weights>,
    /// With `InferenceWeights::Bf16`: the block matrices and classifier in bf16, built and
    /// dropped like `q8_weights`.
    bf16_weights: OnceLock<infer::Bf16Weights>,
    /// A Llama's rotary angles for every position up to `block_size`.
    rope: Option<RopeTable>,
    /// What training's matrix products multiply in (`Engine::set_training_dtype`).
    precision: Precision,
    /// Whether backward remakes the norm outputs and MLP activations
    /// (`Engine::set_activation_recompute`).
    recompute: bool,
}

impl CpuEngine {
    pub fn new(model: Gpt) -> CpuEngine {
        let n = model.params.len();
        let groups = model
            .table
            .entries
            .iter()
            .map(|e| (e.offset, e.decay))
            .collect();
        crate::perf::back_with_huge_pages(&model.params);
        let cfg = &model.config;
        let rope = cfg
            .llama()
            .map(|l| RopeTable::new(cfg.head_size(), cfg.block_size, l.rope_theta));
        CpuEngine {
            model,
            grads: Vec::new(),
            acts: None,
            act_grads: None,
            opt: OptimizerState::new(n),
            opt_part: 0..n,
            hyper: DEFAULT_ADAMW,
            groups,
            norm_partials: vec![0.0; norm_partials_len(n)],
            decode_weights: OnceLock::new(),
            inference: InferenceWeights::F32,
            kv_cache_dtype: None,
            q8_weights: OnceLock::new(),
            bf16_weights: OnceLock::new(),
            rope,
            precision: Precision::F32,
            recompute: false,
        }
    }

    /// One AdamW step on `opt_part` of the parameters (the gradients there already clipped).
    fn adamw_step(&mut self, lr: f32) {
        self.opt.step += 1;
        self.decode_weights = OnceLock::new();
        self.q8_weights = OnceLock::new();
        self.bf16_weights = OnceLock::new();
        let hyper = AdamW { lr, ..self.hyper };
        let part = self.opt_part.clone();
        adamw_update(
            part.start,
            &mut self.model.params[part.clone()],
            &self.grads[part],
            &mut self.opt.m,
            &mut self.opt.v,
            &hyper,
            self.opt.step,
            &self.groups,
        );
    }

    fn ensure_grads(&mut self) {
        if self.grads.len() != self.model.params.len() {
            self.grads = vec![0.0; self.model.params.len()];
        }
    }
}

impl Engine for CpuEngine {
    fn device_name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn peak_tflops(&self) -> (f64, &'static str) {
        static F32: OnceLock<f64> = OnceLock::new();
        static BF16: OnceLock<f64> = OnceLock::new();
        let (cell, what) = match self.precision {
            Precision::F32 => (&F32, "measured f32 matmul peak of this CPU"),
            Precision::Bf16 => match Kernel::detect() {
                Kernel::Avx512 => (&BF16, "measured bf16 matmul peak of this CPU"),
                Kernel::Avx2 | Kernel::Portable => (
                    &BF16,
                    "measured bf16 matmul peak of this CPU, which has no AVX512-BF16: bf16 is multiplied in f32 registers, slower than float32",
                ),
            },
        };
        let peak = *built_once(cell, || measure_cpu_peak_tflops(self.precision));
        (peak, what)
    }

    fn set_training_dtype(&mut self, dtype: Dtype) -> Result<()> {
        self.precision = match dtype {
            Dtype::Float32 => Precision::F32,
            Dtype::Bfloat16 => Precision::Bf16,
            Dtype::Float16 => bail!(
                "dtype = \"float16\" runs on a GPU only (--device=cuda); on the CPU use \"bfloat16\" (the same size, with f32's range) or \"float32\""
            ),
        };
        Ok(())
    }

    fn set_activation_recompute(&mut self, on: bool) {
        self.recompute = on;
    }

    fn config(&self) -> &GptConfig {
        &self.model.config
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Option<f32>> {
        self.forward_pass(tokens, targets, b, t, mode)
    }

    fn backward(&mut self, grad_scale: f32) -> Result<()> {
        self.backward_pass(grad_scale)
    }

    fn zero_grad(&mut self) {
        self.ensure_grads();
        self.grads.fill(0.0);
    }

    fn grad_norm(&mut self) -> f32 {
        self.ensure_grads();
        global_norm(&self.grads, &mut self.norm_partials)
    }

    fn update(&mut self, lr: f32, grad_clip: f32) -> f32 {
        assert_eq!(
            self.opt_part.len(),
            self.model.params.len(),
            "Engine::update after update_zero1: this engine holds one rank's moments only"
        );
        let norm = self.grad_norm();
        if grad_clip > 0.0 {
            clip_grads(&mut self.grads, norm, grad_clip);
        }
        self.adamw_step(lr);
        norm
    }

    fn update_zero1(&mut self, lr: f32, grad_clip: f32, comm: &mut dyn Collective) -> Result<f32> {
        self.ensure_grads();
        let n = self.grads.len();
        let (rank, size) = (comm.world().rank, comm.world().size);
        let bounds = dist::shard_bounds(n, size);
        let part = bounds[rank]..bounds[rank + 1];
        if self.opt_part != part {
            if self.opt_part != (0..n) {
                anyhow::bail!("update_zero1 called with another world than before (a bug)");
            }
            self.opt.m = self.opt.m[part.clone()].to_vec();
            self.opt.v = self.opt.v[part.clone()].to_vec();
            self.opt_part = part.clone();
        }
        comm.reduce_scatter_sum(&mut self.grads, &bounds)?;
        // Every part starts on a chunk boundary, so this rank's chunk sums are the very ones one
        // process computes, and gathered they add in the same order.
        const _: () = assert!(dist::SHARD_ALIGN.is_multiple_of(CHUNK));
        let chunk_bounds: Vec<usize> = bounds.iter().map(|b| b.div_ceil(CHUNK)).collect();
        let own = chunk_bounds[rank]..chunk_bounds[rank + 1];
        chunk_sums_of_squares(&self.grads[part.clone()], &mut self.norm_partials[own]);
        dist::all_gather(comm, &mut self.norm_partials, &chunk_bounds)?;
        let norm = norm_from_chunk_sums(&self.norm_partials);
        if grad_clip > 0.0 {
            clip_grads(&mut self.grads[part], norm, grad_clip);
        }
        self.adamw_step(lr);
        dist::all_gather(comm, &mut self.model.params, &bounds)?;
        Ok(norm)
    }

    fn set_adamw(&mut self, hyper: AdamW) {
        self.hyper = hyper;
    }

    fn all_reduce_grads(&mut self, comm: &mut dyn Collective) -> Result<()> {
        self.ensure_grads();
        comm.all_reduce_sum(&mut self.grads)
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
        // The whole pass on a pool thread: its dozens of parallel kernels are then cheap forks
        // there, where from an outside thread each would be a hand-off to the pool and a sleep
        // until it finishes (a third of a decode step's time at 15M parameters).
        rayon::scope(|_| self.forward_feeds(cache, feeds, logits, None))
    }

    fn forward_cached_hidden(
        &self,
        cache: &mut KvCache,
        feeds: &[Feed],
        logits: &mut [f32],
        hidden: &mut [f32],
    ) -> Result<()> {
        rayon::scope(|_| self.forward_feeds(cache, feeds, logits, Some(hidden)))
    }

    fn reorder_cache(&self, cache: &mut KvCache, rows: &[usize]) -> Result<()> {
        self.reorder_kv(cache, rows)
    }

    fn set_kv_cache_dtype(&mut self, dtype: Option<KvDtype>) -> Result<()> {
        self.kv_cache_dtype = dtype;
        Ok(())
    }

    fn set_inference_weights(&mut self, w: InferenceWeights) -> Result<()> {
        if w == (InferenceWeights::Q8 { group: 0 }) {
            anyhow::bail!("int8 (Q8) inference needs a positive group size");
        }
        if w != self.inference {
            self.inference = w;
            self.q8_weights = OnceLock::new();
            self.bf16_weights = OnceLock::new();
        }
        Ok(())
    }

    fn model(&self) -> Cow<'_, Gpt> {
        Cow::Borrowed(&self.model)
    }

    fn grads(&self) -> Cow<'_, [f32]> {
        Cow::Borrowed(&self.grads)
    }

    fn optimizer_state(&self) -> Cow<'_, OptimizerState> {
        Cow::Borrowed(&self.opt)
    }

    fn set_optimizer_state(&mut self, state: OptimizerState) -> Result<()> {
        super::check_optimizer_state(&state, self.model.params.len())?;
        self.opt = if self.opt_part.len() == state.m.len() {
            state
        } else {
            OptimizerState {
                m: state.m[self.opt_part.clone()].to_vec(),
                v: state.v[self.opt_part.clone()].to_vec(),
                step: state.step,
            }
        };
        Ok(())
    }
}

/// The value in `cell`, built by `build` if it is empty. Not `OnceLock::get_or_init`: `build` runs
/// parallel loops, and a pool thread waiting on those may pick up another pass over the same
/// engine, which would then wait forever on the cell its own thread is filling. Two passes that
/// find the cell empty both build it; the first to finish is kept.
pub(super) fn built_once<T>(cell: &OnceLock<T>, build: impl FnOnce() -> T) -> &T {
    if let Some(v) = cell.get() {
        return v;
    }
    let _ = cell.set(build());
    cell.get().expect("set just above")
}

/// Measures this CPU's matmul throughput in `precision` in TFLOP/s with the thread pool in use,
/// on the same path the model uses: the best of several products of GPT-2's MLP shape
/// (1024 x 768 @ 768 x 3072, and its transpose-shaped partner), about 0.2 s in all. Square
/// power-of-two sizes are avoided: their strides alias in cache and understate the peak.
pub fn measure_cpu_peak_tflops(precision: Precision) -> f64 {
    let (m, k, n) = (1024, 768, 3072);
    let a: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::INFINITY;
    // The first products pay for page faults and the thread pool waking up: run, then time.
    for rep in 0..16 {
        // Alternate (m,k)@(k,n) and (m,n)@(n,k): the two shapes of an MLP block.
        let (kk, nn) = if rep % 2 == 0 { (k, n) } else { (n, k) };
        let t0 = Instant::now();
        // SAFETY: a holds m*kk, b holds kk*nn and c holds m*nn elements; all distinct.
        unsafe {
            gemm_into(
                precision,
                m,
                nn,
                kk,
                c.as_mut_ptr(),
                nn,
                false,
                View::rows(&a, kk),
                View::rows(&b, nn),
                1.0,
                true,
            );
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (m * k * n) as f64 / best / 1e12
}

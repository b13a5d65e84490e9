//! The engine seam: what training, sampling, `bench` and `eval` ask of a backend.
//!
//! A backend owns the model's parameters, gradients, optimizer moments and activations on its
//! device, and runs the GPT's forward and backward passes, the optimizer step and cached
//! inference there. Everything above this module talks to a backend through [`Engine`] only.

pub mod cpu;
pub use cpu::q8_group;
pub mod cuda;

use crate::config::GptConfig;
use crate::dist::Collective;
use crate::model::Gpt;
pub use crate::optim::{AdamW, OptimizerState};
use anyhow::{bail, Result};
use cpu::CpuEngine;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Where the model runs: `--device=cpu|cuda|auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    /// The CPU for now: CUDA joins once its backend has passed its check on a GPU
    /// (`benches/cuda_check.sh`); until then `--device=cuda` asks for it explicitly.
    #[default]
    Auto,
}

impl FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            _ if s.starts_with("cuda:") => {
                bail!("device '{s}': pick a GPU with CUDA_VISIBLE_DEVICES and pass --device=cuda")
            }
            _ => bail!("device '{s}' is not cpu, cuda or auto"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        })
    }
}

/// What training multiplies its matrices in: nanoGPT's `dtype`. Parameters, gradients and the
/// optimizer's moments stay f32 in every case (bf16 and f16 are compute types, as under
/// PyTorch's autocast). Float16 runs on CUDA only, with a loss scaler (f16's range is narrow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Float32,
    Bfloat16,
    Float16,
}

impl FromStr for Dtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Dtype> {
        match s {
            "float32" => Ok(Dtype::Float32),
            "bfloat16" => Ok(Dtype::Bfloat16),
            "float16" => Ok(Dtype::Float16),
            _ => bail!("dtype '{s}' is not float32, bfloat16 or float16"),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::Float32 => "float32",
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Float16 => "float16",
        })
    }
}

/// What an inference KV cache holds (`--kv_cache_dtype`): f32 or bf16 keys and values, or int8
/// with one f32 scale per position and key/value head (each row of `head_size` values quantized as
/// a Q8_0 group), a quarter of f32's bytes: at depth, a decoding step reads the cache as well as
/// the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    Float32,
    Bfloat16,
    Int8,
}

impl FromStr for KvDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<KvDtype> {
        match s {
            "float32" => Ok(KvDtype::Float32),
            "bfloat16" => Ok(KvDtype::Bfloat16),
            "int8" => Ok(KvDtype::Int8),
            _ => bail!("KV cache dtype '{s}' is not float32, bfloat16 or int8"),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::Float32 => "float32",
            KvDtype::Bfloat16 => "bfloat16",
            KvDtype::Int8 => "int8",
        })
    }
}

/// Train mode applies dropout with masks derived from `seed`; eval mode has no dropout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Train { seed: u64 },
    Eval,
}

/// The backend for `device`, holding `model`. `auto` is the CPU: the CUDA backend has not yet
/// run on a GPU, so nobody gets it without asking; once `benches/cuda_check.sh` passes, `auto`
/// becomes CUDA when a driver and a GPU are present.
pub fn open(model: Gpt, device: Device) -> Result<Box<dyn Engine>> {
    match device {
        Device::Cpu | Device::Auto => Ok(Box::new(CpuEngine::new(model))),
        Device::Cuda => Ok(Box::new(cuda::CudaEngine::new(model)?)),
    }
}

/// The weights cached inference ([`Engine::forward_cached`] and the calls built on it) computes
/// with. Training always uses the f32 parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InferenceWeights {
    /// The parameters themselves.
    #[default]
    F32,
    /// Every matrix of the blocks and the classifier in int8, `group` consecutive values of a
    /// row per f32 scale, and each activation quantized the same way before its product: the
    /// arithmetic of llama2.c's `runq.c` (see `crate::kernels::cpu::q8`). A matrix whose rows
    /// are not a multiple of `group` takes the largest group dividing both (at least 16; else
    /// it stays f32). Embeddings and norms stay f32.
    Q8 { group: usize },
    /// Every matrix of the blocks and the classifier rounded to bf16: decoding streams half the
    /// bytes of f32 and widens them back as it reads (activations stay f32); a prefill
    /// multiplies in bf16. Embeddings and norms stay f32.
    Bf16,
}

impl InferenceWeights {
    /// The KV cache these weights take unless told otherwise: as many bytes per value as the
    /// weights have, at most two (llama.cpp's cache is f16 by default): f32 with f32 weights,
    /// bf16 with bf16, int8 with int8, whose decoding step at depth then reads 17 MB of cache
    /// (GPT-2 124M at 900 tokens) instead of bf16's 33 MB beside 135 MB of weights.
    pub fn suited_kv_cache(self) -> KvDtype {
        match self {
            InferenceWeights::F32 => KvDtype::Float32,
            InferenceWeights::Bf16 => KvDtype::Bfloat16,
            InferenceWeights::Q8 { .. } => KvDtype::Int8,
        }
    }
}

/// `--dtype=float32|bfloat16|int8` of the commands that generate (int8: groups of 64).
impl FromStr for InferenceWeights {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<InferenceWeights> {
        match s.trim() {
            "float32" => Ok(InferenceWeights::F32),
            "bfloat16" => Ok(InferenceWeights::Bf16),
            "int8" => Ok(InferenceWeights::Q8 { group: 64 }),
            d => bail!("--dtype={d}: expected float32, bfloat16 or int8"),
        }
    }
}

impl fmt::Display for InferenceWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InferenceWeights::F32 => "float32",
            InferenceWeights::Bf16 => "bfloat16",
            InferenceWeights::Q8 { .. } => "int8",
        })
    }
}

/// One sequence's new tokens in a cached forward pass: `tokens` are appended to cache row `row`
/// after the positions it already holds.
#[derive(Clone, Copy, Debug)]
pub struct Feed<'a> {
    pub row: usize,
    pub tokens: &'a [u32],
}

/// Keys and values of `rows` sequences of up to `capacity` tokens each. Every row holds its own
/// number of positions, so one batch can prefill a sequence while others decode, and a finished
/// row can be freed and reused. The storage belongs to the backend that made the cache.
pub struct KvCache {
    lens: Vec<usize>,
    capacity: usize,
    pub(crate) storage: Box<dyn std::any::Any + Send>,
}

impl KvCache {
    pub(crate) fn new(
        rows: usize,
        capacity: usize,
        storage: Box<dyn std::any::Any + Send>,
    ) -> Self {
        KvCache {
            lens: vec![0; rows],
            capacity,
            storage,
        }
    }

    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions held by row `row`.
    pub fn len(&self, row: usize) -> usize {
        self.lens[row]
    }

    /// Positions held by each row.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&n| n == 0)
    }

    /// Empties row `row` for a new sequence.
    pub fn free(&mut self, row: usize) {
        self.lens[row] = 0;
    }

    /// Keeps the first `len` positions of row `row` (a shorter row stays as it is), to take back
    /// tokens (the loop guard's backtrack). Host-side only, for every backend: a pass reads a
    /// row's first `len(row)` positions and writes new tokens from there, over what was cut.
    pub fn truncate(&mut self, row: usize, len: usize) {
        let held = &mut self.lens[row];
        *held = (*held).min(len);
    }

    /// Empties every row.
    pub fn clear(&mut self) {
        self.lens.fill(0);
    }

    pub(crate) fn lens_mut(&mut self) -> &mut Vec<usize> {
        &mut self.lens
    }
}

/// The checks every backend's [`Engine::forward`] makes before touching its buffers.
pub(crate) fn check_batch(
    cfg: &GptConfig,
    tokens: &[u32],
    targets: Option<&[i32]>,
    b: usize,
    t: usize,
) -> Result<()> {
    let (bt, v) = (b * t, cfg.vocab_size);
    if t == 0 || b == 0 {
        bail!("empty batch (B={b}, T={t})");
    }
    if t > cfg.block_size {
        bail!("sequence length {t} exceeds block_size {}", cfg.block_size);
    }
    if tokens.len() != bt {
        bail!("expected {bt} tokens (B={b} x T={t}), got {}", tokens.len());
    }
    if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= v) {
        bail!("token id {bad} is outside the vocabulary (vocab_size {v})");
    }
    if let Some(tg) = targets {
        if tg.len() != bt {
            bail!("expected {bt} targets, got {}", tg.len());
        }
        if let Some(&bad) = tg.iter().find(|&&x| x < -1 || x as i64 >= v as i64) {
            bail!("target id {bad} is outside the vocabulary (vocab_size {v}; -1 means ignore)");
        }
    }
    Ok(())
}

/// The check every backend's [`Engine::set_optimizer_state`] makes.
pub(crate) fn check_optimizer_state(state: &OptimizerState, n_params: usize) -> Result<()> {
    if state.m.len() != n_params || state.v.len() != n_params {
        bail!(
            "optimizer state has {} / {} moments for a model of {n_params} parameters",
            state.m.len(),
            state.v.len()
        );
    }
    Ok(())
}

/// Where one feed's tokens go in a cached pass: token rows `first..first + n` of the pass, at
/// positions `pos..pos + n` of cache row `row`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FeedPlan {
    pub row: usize,
    pub first: usize,
    pub n: usize,
    pub pos: usize,
}

impl KvCache {
    /// Checks `feeds` against the cache, the vocabulary and a logits buffer of `logits_len`
    /// values (`vp` per feed), and lays their tokens out one after another: what every
    /// backend's [`Engine::forward_cached`] does first.
    pub(crate) fn plan(
        &self,
        feeds: &[Feed],
        vocab_size: usize,
        vp: usize,
        logits_len: usize,
    ) -> Result<Vec<FeedPlan>> {
        let (rows, capacity) = (self.rows(), self.capacity);
        let mut plan: Vec<FeedPlan> = Vec::with_capacity(feeds.len());
        let mut seen = vec![false; rows];
        for f in feeds {
            if f.row >= rows {
                bail!("KV cache row {} does not exist ({rows} rows)", f.row);
            }
            if std::mem::replace(&mut seen[f.row], true) {
                bail!("KV cache row {} is fed twice in one pass", f.row);
            }
            if f.tokens.is_empty() {
                bail!("KV cache row {}: no tokens to feed", f.row);
            }
            let pos = self.len(f.row);
            if pos + f.tokens.len() > capacity {
                bail!(
                    "the KV cache holds {capacity} tokens per row; row {} has {pos} and {} do not fit (crop the context first)",
                    f.row,
                    f.tokens.len()
                );
            }
            if let Some(&bad) = f.tokens.iter().find(|&&x| x as usize >= vocab_size) {
                bail!("token id {bad} is outside the vocabulary (vocab_size {vocab_size})");
            }
            let first = plan.last().map_or(0, |q| q.first + q.n);
            plan.push(FeedPlan {
                row: f.row,
                first,
                n: f.tokens.len(),
                pos,
            });
        }
        if !plan.is_empty() && logits_len < feeds.len() * vp {
            bail!(
                "logits buffer holds {logits_len} values, needs {}",
                feeds.len() * vp
            );
        }
        Ok(plan)
    }
}

/// What training, sampling, `bench` and `eval` ask of a backend: llm.c's `train_gpt2.c` and
/// `train_gpt2.cu` are two implementations of this. Parameters, gradients and AdamW moments
/// share the [`ParamTable`](crate::model::ParamTable) layout, so state crosses the seam as flat buffers.
pub trait Engine {
    /// The device, as the log names it.
    fn device_name(&self) -> String;
    /// Dense peak TFLOP/s of this device for the precision it trains in (the MFU denominator),
    /// and where the figure comes from.
    fn peak_tflops(&self) -> (f64, &'static str);
    fn config(&self) -> &GptConfig;

    /// Forward pass over `tokens` (B*T, row-major). With `targets` (-1 = ignore) returns the mean
    /// loss over the positions that have one.
    fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[i32]>,
        b: usize,
        t: usize,
        mode: Mode,
    ) -> Result<Option<f32>>;
    /// Adds the gradient of `grad_scale` x the last forward's loss to the gradients (scale is
    /// 1/gradient_accumulation_steps when accumulating).
    fn backward(&mut self, grad_scale: f32) -> Result<()>;
    fn zero_grad(&mut self);
    /// The global L2 norm of the gradients.
    fn grad_norm(&mut self) -> f32;
    /// Clips the gradients to global norm `grad_clip` (0 = off), then one AdamW step with
    /// learning rate `lr`. Returns the norm before clipping.
    fn update(&mut self, lr: f32, grad_clip: f32) -> f32;
    /// AdamW's hyperparameters (the learning rate is given per step to [`Engine::update`]).
    fn set_adamw(&mut self, hyper: AdamW);
    /// Sums the gradients across the ranks of a data-parallel run (every rank calls it after
    /// its backward passes, before [`Engine::update`]).
    fn all_reduce_grads(&mut self, comm: &mut dyn Collective) -> Result<()>;
    /// A data-parallel run's last micro-step: [`Engine::backward`], with the gradients summed
    /// across the ranks by the time it returns. A GPU backend with its device collective open
    /// starts each layer's sum as soon as backward has written it, so the sums run while the
    /// layers below are differentiated (PyTorch DDP's buckets). Provided: backward, then
    /// [`Engine::all_reduce_grads`].
    fn backward_all_reduced(&mut self, grad_scale: f32, comm: &mut dyn Collective) -> Result<()> {
        self.backward(grad_scale)?;
        self.all_reduce_grads(comm)
    }
    /// Data-parallel runs: a GPU backend opens its device-side collective (NCCL) here, every
    /// rank at once, with `comm` for the rendezvous; [`Engine::all_reduce_grads`] then sums in
    /// device memory. Provided: nothing to open (the sums go through `comm`, on the host).
    fn use_device_collective(&mut self, comm: &mut dyn Collective) -> Result<()> {
        let _ = comm;
        Ok(())
    }
    /// ZeRO-1's [`Engine::all_reduce_grads`] and [`Engine::update`] in one: each rank keeps
    /// AdamW's moments for its part of the parameters only (`dist::shard_bounds`; the first call
    /// drops the rest, so [`Engine::optimizer_state`] returns that part from then on). The
    /// gradients are reduce-scattered, the global norm is summed from every rank's part in the
    /// order one process sums it, each rank clips and updates its part, and the parameters are
    /// gathered back: bit for bit what the unsharded update gives. Returns the norm before
    /// clipping.
    fn update_zero1(&mut self, lr: f32, grad_clip: f32, comm: &mut dyn Collective) -> Result<f32> {
        let _ = (lr, grad_clip, comm);
        anyhow::bail!(
            "zero_stage=1 is not implemented on {} yet: train with zero_stage=0",
            self.device_name()
        )
    }

    /// An empty cache for `rows` sequences of up to `capacity` tokens (at most block_size).
    fn kv_cache(&self, rows: usize, capacity: usize) -> KvCache;
    /// Appends each feed's tokens to its row of the cache and writes the logits of each feed's
    /// last token to `logits` (one padded-vocabulary row per feed, in feed order; columns past
    /// `vocab_size` are padding). Rows not fed are left as they are.
    fn forward_cached(&self, cache: &mut KvCache, feeds: &[Feed], logits: &mut [f32])
        -> Result<()>;
    /// Rebuilds the cache from its own rows: new row `i` is old row `rows[i]`. Rows may be
    /// permuted, duplicated (beam search, several samples from one prompt) or dropped.
    fn reorder_cache(&self, cache: &mut KvCache, rows: &[usize]) -> Result<()>;

    /// The parameters on the host, with the config and table (for checkpoints).
    fn model(&self) -> Cow<'_, Gpt>;
    /// The gradients on the host, in the parameter layout.
    fn grads(&self) -> Cow<'_, [f32]>;
    /// The AdamW state on the host, in the parameter layout.
    fn optimizer_state(&self) -> Cow<'_, OptimizerState>;
    fn set_optimizer_state(&mut self, state: OptimizerState) -> Result<()>;

    /// What training's matrix products multiply in, from the next pass on; the peak that
    /// [`Engine::peak_tflops`] reports follows it.
    fn set_training_dtype(&mut self, dtype: Dtype) -> Result<()>;

    /// What training multiplies in when the user does not say (`dtype` unset): bf16 where the
    /// device has bf16 tensor cores (nanoGPT's choice on a GPU); provided: f32.
    fn default_training_dtype(&self) -> Dtype {
        Dtype::Float32
    }

    /// Whether the backward pass remakes each layer's two norm outputs and MLP activation (GELU
    /// or SwiGLU) from their inputs instead of the forward pass keeping all of them: one layer's
    /// worth of memory instead of n_layer's (llm.c's `recompute`), for those ops once more per
    /// layer. The results are the same bits either way. From the next forward pass on.
    fn set_activation_recompute(&mut self, on: bool);

    /// The run's seed, for what an engine draws at random outside dropout (whose keys come with
    /// each forward pass): the CUDA engine's stochastic rounding of its bf16 weight copy.
    /// Provided: nothing to draw.
    fn set_seed(&mut self, _seed: u64) {}

    /// What the KV caches made from now on ([`Engine::kv_cache`]) hold ([`KvDtype`]), or, with
    /// `None`, what suits the weights ([`InferenceWeights::suited_kv_cache`]). Backends with an
    /// f32 cache only refuse the others.
    fn set_kv_cache_dtype(&mut self, dtype: Option<KvDtype>) -> Result<()> {
        match dtype {
            Some(d @ (KvDtype::Bfloat16 | KvDtype::Int8)) => bail!(
                "a {d} KV cache is not supported on {} yet: use --kv_cache_dtype=float32 or --device=cpu",
                self.device_name()
            ),
            Some(KvDtype::Float32) | None => Ok(()),
        }
    }

    /// Which weights cached inference computes with, from the next cached pass on (the
    /// parameters stay f32, and training uses them). Backends without int8 kernels refuse Q8.
    fn set_inference_weights(&mut self, w: InferenceWeights) -> Result<()> {
        match w {
            InferenceWeights::F32 => Ok(()),
            InferenceWeights::Q8 { .. } => bail!(
                "int8 (Q8) inference is not supported on {} yet: use --device=cpu",
                self.device_name()
            ),
            InferenceWeights::Bf16 => bail!(
                "bfloat16 inference is not supported on {} yet: use --device=cpu",
                self.device_name()
            ),
        }
    }

    /// Every row of `cache` takes `n` more tokens (`tokens` is rows x n, row-major): a prompt
    /// pass over a batch, or one decoding step.
    fn forward_cached_all(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        n: usize,
        logits: &mut [f32],
    ) -> Result<()> {
        let rows = cache.rows();
        if n == 0 || tokens.len() != rows * n {
            bail!(
                "expected {} tokens ({rows} sequences x {n}), got {}",
                rows * n,
                tokens.len()
            );
        }
        let feeds: Vec<Feed> = tokens
            .chunks(n)
            .enumerate()
            .map(|(row, tokens)| Feed { row, tokens })
            .collect();
        self.forward_cached(cache, &feeds, logits)
    }

    /// [`Engine::forward_cached`], also writing the final hidden state (after the last layer
    /// norm: what the logits are computed from) of every fed token to `hidden`, `n_embd` values
    /// per token, feeds in order (contrastive search compares them). Backends that cannot yet
    /// say so.
    fn forward_cached_hidden(
        &self,
        cache: &mut KvCache,
        feeds: &[Feed],
        logits: &mut [f32],
        hidden: &mut [f32],
    ) -> Result<()> {
        let _ = (cache, feeds, logits, hidden);
        bail!(
            "hidden states (contrastive search, penalty_alpha) are not supported on {} yet: use --device=cpu",
            self.device_name()
        )
    }
}

//! nanoGPT's training knobs, with its defaults, as one [`crate::knobs!`] table (the model shape
//! spliced in from [`crate::with_model_shape`]). Values come from a TOML config file and then
//! `--key=value` overrides; both go through `set`, which type-checks and rejects unknown keys
//! with the list of valid ones.

use crate::config::knobs;
use crate::engine::{Device, Dtype};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

crate::with_model_shape! {
    /// Checkpoints store this; knobs added later take their defaults when an older one is read.
    /// `Default` is nanoGPT's train.py (GPT-2 124M on OpenWebText), in f32.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    pub struct TrainConfig {
        {
            /// Where checkpoints and metrics.jsonl go
            out_dir: String = "out".into(),
            /// Evaluate (and checkpoint) every this many iterations
            eval_interval: usize = 2000,
            /// Log every this many iterations
            log_interval: usize = 1,
            /// Batches per loss estimate
            eval_iters: usize = 200,
            /// Evaluate once and exit
            eval_only: bool = false,
            /// Save latest/ at every evaluation, not only at the end
            always_save_checkpoint: bool = true,
            /// scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a model directory
            init_from: String = "scratch".into(),
            /// The dataset's name under data_dir
            dataset: String = "openwebtext".into(),
            /// Where `<dataset>/` lives (nanoGPT: `data/`)
            data_dir: String = "data".into(),
            /// Micro-batches per iteration
            gradient_accumulation_steps: usize = 40,
            /// Sequences per micro-batch
            batch_size: usize = 12,
        }
        {
            /// 0 = from the dataset's meta.json, else 50304 (nanoGPT's padded GPT-2 vocab)
            vocab_size: usize = 0,
            /// Completion-only loss for character data: when set (e.g. "="), only the characters
            /// after it up to the end of the line are predicted targets, and every window starts
            /// at a newline. Empty: every token, windows anywhere (nanoGPT)
            loss_after: String = String::new(),
            /// AdamW's peak learning rate
            learning_rate: f32 = 6e-4,
            /// Iterations to train
            max_iters: usize = 600_000,
            weight_decay: f32 = 0.1,
            beta1: f32 = 0.9,
            beta2: f32 = 0.95,
            /// Clip the global gradient norm to this; 0 = off
            grad_clip: f32 = 1.0,
            /// Warmup then cosine decay; false = the constant learning_rate
            decay_lr: bool = true,
            warmup_iters: usize = 2000,
            lr_decay_iters: usize = 600_000,
            min_lr: f32 = 6e-5,
            seed: u64 = 1337,
            /// 0 = measure this CPU's f32 matmul peak for MFU
            peak_tflops: f64 = 0.0,
            /// cpu, cuda or auto (the CPU until the CUDA backend has passed its GPU check)
            device: Device = Device::Auto,
            /// float32; bfloat16: matrix products in bf16 (f32 sums, f32 weights and optimizer);
            /// float16 (GPU only): the linear layers' products in f16, with a loss scaler
            /// [default: bfloat16 on a GPU of compute capability 8.0 or newer, as nanoGPT; else
            /// float32]
            dtype: Option<Dtype> = None,
            /// Remake each layer's two norm outputs and MLP activation (GELU, SwiGLU) in the
            /// backward pass instead of keeping all of them: n_layer x batch x block_size x 6
            /// n_embd floats less memory (2.7 GB for GPT-2 124M at 12 x 1024), one norm pair and
            /// activation per layer more work, the same results bit for bit (llm.c's recompute)
            recompute: bool = false,
            /// Data-parallel runs: 1 = ZeRO-1, each rank keeps AdamW's moments for its part of
            /// the parameters only (a W-th of their memory), bit for bit the same training;
            /// 0 = every rank keeps all of them
            zero_stage: usize = 0,
            /// Accepted for nanoGPT compatibility; there is nothing to compile
            compile: bool = false,
        }
    }
}

/// Every key `set` accepts, in nanoGPT's order.
pub const KEYS: &[&str] = TrainConfig::KEYS;

/// Keys nanoGPT's configs carry that mean nothing here (logging to a service): accepted, ignored.
const IGNORED_KEYS: [&str; 4] = ["wandb_log", "wandb_project", "wandb_run_name", "backend"];

impl TrainConfig {
    /// Sets `key` unless it is one of nanoGPT's logging keys, which are ignored.
    fn set_or_ignore(&mut self, key: &str, value: &str) -> Result<()> {
        if IGNORED_KEYS.contains(&key) {
            return Ok(());
        }
        self.set(key, value)
    }

    /// Reads a TOML config file (flat `key = value` lines, as nanoGPT's config/*.py) over the
    /// defaults.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::default();
        cfg.apply_file(path)?;
        Ok(cfg)
    }

    pub fn apply_file(&mut self, path: &Path) -> Result<()> {
        knobs::apply_file(&mut |k, v| self.set_or_ignore(k, v), path)
    }

    /// Applies the `key = value` lines of a TOML text; `source` names it in errors.
    pub fn apply_toml(&mut self, text: &str, source: &str) -> Result<()> {
        knobs::apply_toml(&mut |k, v| self.set_or_ignore(k, v), text, source)
    }

    /// Applies `--key=value` arguments (also `--key value`).
    pub fn apply_overrides(&mut self, args: &[String]) -> Result<()> {
        knobs::apply_overrides(&mut |k, v| self.set_or_ignore(k, v), args)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("eval_interval", self.eval_interval),
            ("log_interval", self.log_interval),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("batch_size", self.batch_size),
            ("block_size", self.block_size),
            ("eval_iters", self.eval_iters),
        ] {
            if v == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if self.dtype == Some(Dtype::Float16) && self.device != Device::Cuda {
            bail!(
                "dtype = \"float16\" trains on a GPU only: add --device=cuda, or use dtype = \"bfloat16\" (the same size, with f32's range) on the CPU"
            );
        }
        if !self.learning_rate.is_finite() || self.learning_rate < 0.0 {
            bail!(
                "learning_rate must be a non-negative number, got {}",
                self.learning_rate
            );
        }
        for (key, v) in [
            ("grad_clip", self.grad_clip),
            ("weight_decay", self.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{key} must be a non-negative number (0 turns it off), got {v}");
            }
        }
        if !self.peak_tflops.is_finite() || self.peak_tflops < 0.0 {
            bail!(
                "peak_tflops must be a positive number, or 0 to measure this CPU's peak, got {}",
                self.peak_tflops
            );
        }
        // An empty out_dir would put checkpoints straight into the current directory.
        if self.out_dir.trim().is_empty() {
            bail!("out_dir is empty: give the directory for checkpoints, e.g. out_dir = \"out\"");
        }
        if self.zero_stage > 1 {
            bail!(
                "zero_stage must be 0 (off) or 1 (shard AdamW's moments), got {}",
                self.zero_stage
            );
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            bail!("beta1 and beta2 must be in [0, 1)");
        }
        Ok(())
    }

    pub fn out_dir(&self) -> PathBuf {
        PathBuf::from(&self.out_dir)
    }

    pub fn dataset_dir(&self) -> PathBuf {
        Path::new(&self.data_dir).join(&self.dataset)
    }

    pub fn tokens_per_iter(&self) -> usize {
        self.gradient_accumulation_steps * self.batch_size * self.block_size
    }
}

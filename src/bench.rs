//! `nanogpt bench`: nanoGPT's bench.py. Times forward + backward + AdamW update on random data.

use crate::config::GptConfig;
use crate::engine::{self, Device, Dtype, InferenceWeights, KvDtype, Mode};
use crate::model::Gpt;
use crate::perf::{allocations, mfu, peak_rss_mib};
use crate::rng::Rng;
use crate::sample::dist::argmax;
use anyhow::{bail, Result};
use std::time::Instant;

crate::with_model_shape! {
    /// `nanogpt bench`'s settings (nanoGPT's bench.py), the model shape shared with `train`.
    #[derive(Clone, Debug)]
    pub struct BenchArgs {
        {}
        {
            /// Sequences per step
            batch_size: usize = 12,
            vocab_size: usize = 50304,
            /// Round the vocabulary up to a multiple of 64
            pad_vocab: bool = true,
            /// Timed iterations (the median is reported)
            iters: usize = 10,
            /// Untimed iterations first
            warmup: usize = 3,
            seed: u64 = 1337,
            /// Peak TFLOP/s for MFU [default: measured f32 matmul peak of this CPU]
            peak_tflops: Option<f64> = None,
            /// Print one JSON object instead of text
            json: bool = false,
            /// Time greedy generation with the KV cache instead of training
            generate: bool = false,
            /// Prompt tokens for --generate
            prompt_len: usize = 16,
            /// New tokens for --generate
            max_new_tokens: usize = 128,
            /// What the timed work computes in: float32; bfloat16 (training's matrix products,
            /// as `train --dtype=bfloat16`, or with --generate bf16 weights, as `sample
            /// --dtype=bfloat16`); float16 (training on a GPU, as `train --dtype=float16`); or,
            /// with --generate, int8 (Q8_0 in groups of 64, as `sample
            /// --dtype=int8`) [default: as `train` and `sample`: training in bfloat16 on a GPU
            /// of compute capability 8.0 or newer, else float32]
            dtype: Option<String> = None,
            /// With --generate: float32, bfloat16 or int8, the keys and values the KV cache holds
            /// (as `sample --kv_cache_dtype`) [default: the weights' dtype]
            kv_cache_dtype: Option<KvDtype> = None,
            /// cpu, cuda or auto (the CPU until the CUDA backend has passed its GPU check)
            device: Device = Device::Auto,
            /// Training: remake the norm outputs and MLP activations in backward (as `train
            /// --recompute=true`)
            recompute: bool = false,
        }
    }
}

impl BenchArgs {
    /// The options the benchmarks run with.
    pub fn options(&self) -> Result<BenchOptions> {
        if self.iters == 0 {
            bail!("--iters must be at least 1");
        }
        if let Some(p) = self.peak_tflops.filter(|p| !p.is_finite() || *p <= 0.0) {
            bail!("--peak_tflops must be a positive number, got {p}");
        }
        let dtype = self.dtype.as_deref().map(str::trim);
        let (inference, training) = match (dtype, self.generate) {
            (d, true) => (d.unwrap_or("float32").parse()?, None),
            (Some("int8"), false) => {
                bail!("--dtype=int8 is for inference: add --generate, or train in float32 or bfloat16")
            }
            (d, false) => (InferenceWeights::F32, d.map(str::parse).transpose()?),
        };
        Ok(BenchOptions {
            inference,
            kv_cache: self.kv_cache_dtype.unwrap_or(inference.suited_kv_cache()),
            training,
            recompute: self.recompute,
            config: self.model_config(self.vocab_size, self.pad_vocab),
            batch_size: self.batch_size,
            warmup: self.warmup,
            iters: self.iters,
            seed: self.seed,
            peak_tflops: self.peak_tflops,
            device: self.device,
        })
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub config: GptConfig,
    /// What `--generate`'s cached passes compute with.
    pub inference: InferenceWeights,
    /// What `--generate`'s KV cache holds.
    pub kv_cache: KvDtype,
    /// What the training benchmark's matrix products multiply in (None: the engine's default).
    pub training: Option<Dtype>,
    /// Whether the training benchmark remakes the MLP activations in backward.
    pub recompute: bool,
    pub batch_size: usize,
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
    /// Overrides the measured matmul peak.
    pub peak_tflops: Option<f64>,
    pub device: Device,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub ms_per_iter: f64,
    pub ms_per_iter_min: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub peak_tflops: f64,
    pub peak_source: &'static str,
    pub dtype: Dtype,
    pub threads: usize,
    pub params: usize,
    pub loss: f32,
    /// Heap allocations per timed step (all of them inside `gemm`'s packing; see the README).
    pub allocations_per_step: f64,
    pub peak_rss_mib: Option<f64>,
    pub batch_size: usize,
    pub config: GptConfig,
}

pub fn run_train_bench(opts: &BenchOptions) -> Result<BenchReport> {
    let cfg = &opts.config;
    cfg.validate()?;
    let (b, t) = (opts.batch_size, cfg.block_size);
    let mut engine = engine::open(Gpt::new(cfg.clone(), opts.seed)?, opts.device)?;
    let dtype = opts
        .training
        .unwrap_or_else(|| engine.default_training_dtype());
    engine.set_training_dtype(dtype)?;
    engine.set_activation_recompute(opts.recompute);
    let mut rng = Rng::new(opts.seed ^ 0x5EED);
    let v = cfg.vocab_size as u64;
    let x: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let y: Vec<i32> = (0..b * t).map(|_| rng.below(v) as i32).collect();
    let (peak_tflops, peak_source) = match opts.peak_tflops {
        Some(p) => (p, "--peak_tflops"),
        None => engine.peak_tflops(),
    };
    let mut times = Vec::with_capacity(opts.iters);
    let mut loss = f32::NAN;
    let mut allocs_before = 0;
    for i in 0..opts.warmup + opts.iters {
        if i == opts.warmup {
            allocs_before = allocations();
        }
        let t0 = Instant::now();
        engine.zero_grad();
        loss = engine
            .forward(&x, Some(&y), b, t, Mode::Train { seed: i as u64 })?
            .unwrap_or(f32::NAN);
        engine.backward(1.0)?;
        engine.update(6e-4, 1.0);
        if i >= opts.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let allocations_per_step = (allocations() - allocs_before) as f64 / opts.iters as f64;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = cfg.flops_per_token(t) * (b * t) as f64;
    Ok(BenchReport {
        ms_per_iter: median * 1e3,
        ms_per_iter_min: times[0] * 1e3,
        tokens_per_s: (b * t) as f64 / median,
        mfu: mfu(flops, median, peak_tflops),
        peak_tflops,
        peak_source,
        dtype,
        threads: rayon::current_num_threads(),
        params: cfg.num_params(),
        loss,
        allocations_per_step,
        peak_rss_mib: peak_rss_mib(),
        batch_size: b,
        config: cfg.clone(),
    })
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerateReport {
    /// New tokens per second over the whole generation, prompt pass included (as transformers'
    /// `generate` is usually timed).
    pub tokens_per_s: f64,
    pub ms_per_token: f64,
    /// New tokens per second of the decoding steps alone (one cached pass each), the prompt
    /// pass left out: what llama.cpp's `llama-bench` reports as `tg`, at depth `prompt_len`.
    pub decode_tokens_per_s: f64,
    pub prompt_ms: f64,
    pub threads: usize,
    pub batch_size: usize,
    pub prompt_len: usize,
    pub max_new_tokens: usize,
    /// float32, bfloat16 or int8 (Q8_0).
    #[serde(serialize_with = "crate::bench::as_text")]
    pub dtype: InferenceWeights,
    pub kv_cache_dtype: KvDtype,
    pub peak_rss_mib: Option<f64>,
    pub config: GptConfig,
}

/// Greedy generation from a random prompt with random weights: the cost of sampling.
pub fn run_generate_bench(
    opts: &BenchOptions,
    prompt_len: usize,
    max_new_tokens: usize,
) -> Result<GenerateReport> {
    let cfg = &opts.config;
    cfg.validate()?;
    let b = opts.batch_size;
    if prompt_len == 0 || prompt_len + max_new_tokens > cfg.block_size {
        bail!("prompt_len ({prompt_len}) + max_new_tokens ({max_new_tokens}) must be between 1 and block_size ({})", cfg.block_size);
    }
    let mut engine = engine::open(Gpt::new(cfg.clone(), opts.seed)?, opts.device)?;
    engine.set_inference_weights(opts.inference)?;
    engine.set_kv_cache_dtype(Some(opts.kv_cache))?;
    let mut rng = Rng::new(opts.seed ^ 0x5EED);
    let prompt: Vec<u32> = (0..b * prompt_len)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect();
    let mut cache = engine.kv_cache(b, prompt_len + max_new_tokens);
    let vp = cfg.padded_vocab_size();
    let mut logits = vec![0.0f32; b * vp];
    let mut next = vec![0u32; b];
    let mut times = Vec::new();
    let mut prompt_times = Vec::new();
    let mut decode_times = Vec::new();
    for rep in 0..opts.warmup + opts.iters {
        cache.clear();
        let t0 = Instant::now();
        engine.forward_cached_all(&mut cache, &prompt, prompt_len, &mut logits)?;
        let t_prompt = t0.elapsed().as_secs_f64();
        let t_decode = Instant::now();
        for step in 0..max_new_tokens {
            for (bi, tok) in next.iter_mut().enumerate() {
                *tok = argmax(&logits[bi * vp..bi * vp + cfg.vocab_size]).unwrap_or(0) as u32;
            }
            if step + 1 < max_new_tokens {
                engine.forward_cached_all(&mut cache, &next, 1, &mut logits)?;
            }
        }
        if rep >= opts.warmup {
            times.push(t0.elapsed().as_secs_f64());
            prompt_times.push(t_prompt);
            decode_times.push(t_decode.elapsed().as_secs_f64());
        }
    }
    for t in [&mut times, &mut prompt_times, &mut decode_times] {
        t.sort_by(f64::total_cmp);
    }
    let median = times[times.len() / 2];
    // The first new token comes from the prompt pass: max_new_tokens - 1 decoding steps.
    let steps = max_new_tokens.saturating_sub(1).max(1);
    Ok(GenerateReport {
        tokens_per_s: (b * max_new_tokens) as f64 / median,
        ms_per_token: median * 1e3 / max_new_tokens as f64,
        decode_tokens_per_s: (b * steps) as f64 / decode_times[decode_times.len() / 2],
        prompt_ms: prompt_times[prompt_times.len() / 2] * 1e3,
        threads: rayon::current_num_threads(),
        batch_size: b,
        prompt_len,
        max_new_tokens,
        dtype: opts.inference,
        kv_cache_dtype: opts.kv_cache,
        peak_rss_mib: peak_rss_mib(),
        config: cfg.clone(),
    })
}

/// A value as its `Display` text in JSON.
fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::BenchArgs;

    #[test]
    fn peak_tflops_must_be_positive() {
        for bad in ["-1", "NaN", "0"] {
            let args = BenchArgs::parse_from([format!("--peak_tflops={bad}")]).unwrap();
            let err = args.options().unwrap_err().to_string();
            assert!(err.contains("--peak_tflops"), "{bad}: {err}");
        }
        let args = BenchArgs::parse_from(["--peak_tflops=2.5"]).unwrap();
        assert_eq!(args.options().unwrap().peak_tflops, Some(2.5));
    }
}

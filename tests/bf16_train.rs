//! bf16 training (`dtype = "bfloat16"`): the matrix products take bf16 inputs and sum in f32,
//! everything else (weights, gradients, AdamW, norms, attention) stays f32. Checked against the
//! same steps in f32, for both model families. Also the other training option of the engine,
//! `recompute`: the same bits with the norm outputs and MLP activations remade in backward.

mod common;

use common::rel_err;
use nanogpt::config::{Arch, GptConfig, LlamaArch};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Dtype, Engine, Mode};
use nanogpt::model::Gpt;
use nanogpt::rng::Rng;

fn gpt2() -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        block_size: 64,
        vocab_size: 97,
        pad_vocab: true,
        bias: true,
        dropout: 0.0,
        arch: Arch::Gpt2,
    }
}

fn llama() -> GptConfig {
    GptConfig {
        bias: false,
        pad_vocab: false,
        arch: Arch::Llama(LlamaArch {
            n_kv_head: 2,
            hidden_dim: 160,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            tied: false,
        }),
        ..gpt2()
    }
}

/// A batch from a fixed repeating pattern with noise: learnable, so losses fall over steps.
fn batch(cfg: &GptConfig, b: usize, t: usize, step: u64) -> (Vec<u32>, Vec<i32>) {
    let mut rng = Rng::new(1000 + step);
    let v = cfg.vocab_size as u64;
    let seq: Vec<u32> = (0..b * (t + 1))
        .map(|i| {
            if rng.below(8) == 0 {
                rng.below(v) as u32
            } else {
                ((i * 7) as u64 % v) as u32
            }
        })
        .collect();
    let x = (0..b)
        .flat_map(|r| seq[r * (t + 1)..][..t].to_vec())
        .collect();
    let y = (0..b)
        .flat_map(|r| {
            seq[r * (t + 1) + 1..][..t]
                .iter()
                .map(|&v| v as i32)
                .collect::<Vec<_>>()
        })
        .collect();
    (x, y)
}

fn engine(cfg: &GptConfig, dtype: Dtype) -> CpuEngine {
    let mut e = CpuEngine::new(Gpt::new(cfg.clone(), 7).unwrap());
    e.set_training_dtype(dtype).unwrap();
    e
}

/// One forward and backward pass: (loss, gradients).
fn loss_and_grads(cfg: &GptConfig, dtype: Dtype) -> (f32, Vec<f32>) {
    let mut e = engine(cfg, dtype);
    let (x, y) = batch(cfg, 4, 32, 0);
    e.zero_grad();
    let loss = e
        .forward(&x, Some(&y), 4, 32, Mode::Train { seed: 0 })
        .unwrap()
        .unwrap();
    e.backward(1.0).unwrap();
    (loss, e.grads().into_owned())
}

#[test]
fn bf16_loss_and_gradients_follow_f32() {
    for cfg in [gpt2(), llama()] {
        let (loss32, g32) = loss_and_grads(&cfg, Dtype::Float32);
        let (loss16, g16) = loss_and_grads(&cfg, Dtype::Bfloat16);
        // bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.002 per input).
        assert!(
            (loss16 - loss32).abs() < 2e-3 * loss32,
            "loss {loss16} vs {loss32}"
        );
        assert_ne!(
            loss16, loss32,
            "bf16 should not give f32's bits: is it in use?"
        );
        // Measured worst: 0.007 of the tensor's largest gradient (a norm's weight); twice that
        // is the bar.
        let model = Gpt::new(cfg.clone(), 7).unwrap();
        for entry in &model.table.entries {
            let r = entry.offset..entry.offset + entry.len();
            let err = rel_err(&g16[r.clone()], &g32[r]);
            assert!(
                err < 0.015,
                "{:?} {}: gradient off by {err:.4} of its scale",
                cfg.arch,
                entry.name
            );
        }
        let dot: f64 = g16
            .iter()
            .zip(&g32)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        let norm = |g: &[f32]| g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        let cosine = dot / (norm(&g16) * norm(&g32));
        assert!(
            cosine > 0.9999,
            "{:?}: gradient direction cosine {cosine}",
            cfg.arch
        );
    }
}

/// Losses of `steps` AdamW steps on the learnable batches.
fn train(cfg: &GptConfig, dtype: Dtype, steps: u64) -> Vec<f32> {
    train_engine(&mut engine(cfg, dtype), cfg, steps)
}

fn train_engine(e: &mut CpuEngine, cfg: &GptConfig, steps: u64) -> Vec<f32> {
    (0..steps)
        .map(|step| {
            let (x, y) = batch(cfg, 4, 32, step);
            e.zero_grad();
            let loss = e
                .forward(&x, Some(&y), 4, 32, Mode::Train { seed: step })
                .unwrap()
                .unwrap();
            e.backward(1.0).unwrap();
            e.update(3e-3, 1.0);
            loss
        })
        .collect()
}

#[test]
fn bf16_training_tracks_f32_and_is_deterministic() {
    for cfg in [gpt2(), llama()] {
        let f32_losses = train(&cfg, Dtype::Float32, 60);
        let bf16_losses = train(&cfg, Dtype::Bfloat16, 60);
        let (first, last) = (f32_losses[0], f32_losses[59]);
        assert!(
            last < 0.5 * first,
            "{:?}: f32 did not learn ({first} -> {last})",
            cfg.arch
        );
        // The bar for 500 steps of Shakespeare, here on 60 steps of a toy task.
        let gap = (bf16_losses[59] - last).abs();
        assert!(
            gap < 0.02,
            "{:?}: bf16 ends at {}, f32 at {last}",
            cfg.arch,
            bf16_losses[59]
        );
        let again = train(&cfg, Dtype::Bfloat16, 60);
        assert_eq!(
            again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            bf16_losses.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "bf16 training is not deterministic"
        );
    }
}

#[test]
fn recomputed_activations_give_the_same_bits() {
    let gpt2_dropout = GptConfig {
        dropout: 0.1,
        ..gpt2()
    };
    for cfg in [gpt2_dropout, llama()] {
        for dtype in [Dtype::Float32, Dtype::Bfloat16] {
            let run = |recompute: bool| {
                let mut e = engine(&cfg, dtype);
                e.set_activation_recompute(recompute);
                let losses = train_engine(&mut e, &cfg, 4);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                (bits(&losses), bits(&e.model.params))
            };
            let (kept, remade) = (run(false), run(true));
            assert_eq!(kept.0, remade.0, "{:?} {dtype}: losses differ", cfg.arch);
            assert!(
                kept.1 == remade.1,
                "{:?} {dtype}: parameters differ",
                cfg.arch
            );
        }
    }
}

/// float16 is a GPU dtype (with its loss scaler there): the CPU engine refuses it, saying what
/// to use instead.
#[test]
fn float16_training_on_the_cpu_is_refused_with_what_to_use() {
    let dtype: Dtype = "float16".parse().expect("float16 is a dtype");
    let mut e = CpuEngine::new(Gpt::new(gpt2(), 1).expect("model"));
    let err = e
        .set_training_dtype(dtype)
        .expect_err("float16 on the CPU")
        .to_string();
    assert!(
        err.contains("--device=cuda") && err.contains("bfloat16"),
        "{err}"
    );
}

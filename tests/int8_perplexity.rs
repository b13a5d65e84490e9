//! int8 inference (`--dtype=int8`: Q8_0 weights and activations) against f32 on a trained model:
//! the perplexity of tiny Shakespeare's validation text, scored token by token through the KV
//! cache as generation reads it, within 1% of f32's, with a bf16 cache and with an int8 one.

mod common;

use common::{nanogpt, prepare_shakespeare_char, TempDir, TINY_CHAR_TRAIN};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, InferenceWeights, KvDtype};

/// Mean negative log-likelihood of `tokens` cut into `rows` sequences of `len`, each token
/// predicted from the ones before it in its sequence (cached passes, one token a step).
fn mean_nll(engine: &CpuEngine, tokens: &[u32], rows: usize, len: usize) -> f64 {
    let cfg = engine.config();
    let (v, vp) = (cfg.vocab_size, cfg.padded_vocab_size());
    let mut cache = engine.kv_cache(rows, len);
    let mut logits = vec![0.0f32; rows * vp];
    let (mut nll, mut n) = (0.0f64, 0usize);
    for t in 0..len - 1 {
        let step: Vec<u32> = (0..rows).map(|r| tokens[r * len + t]).collect();
        engine
            .forward_cached_all(&mut cache, &step, 1, &mut logits)
            .unwrap();
        for r in 0..rows {
            let row = &logits[r * vp..r * vp + v];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[tokens[r * len + t + 1] as usize] as f64;
            n += 1;
        }
    }
    nll / n as f64
}

#[test]
fn int8_perplexity_is_within_one_percent_of_f32() {
    let root = TempDir::new("int8-ppl", "run");
    let data = prepare_shakespeare_char(&root);
    let out = root.join("out");
    // 128 wide, so every matrix's rows are whole groups of 64.
    let status = nanogpt()
        .arg("train")
        .args(TINY_CHAR_TRAIN)
        .args([
            "--n_embd=128",
            "--n_head=4",
            "--max_iters=1000",
            "--lr_decay_iters=1000",
        ])
        .args([
            "--learning_rate=3e-3",
            "--eval_interval=1000",
            "--eval_iters=2",
        ])
        .arg(format!("--data_dir={}", data.display()))
        .arg(format!("--out_dir={}", out.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run train");
    assert!(status.success());
    let (model, _) = nanogpt::load::trained(&out).expect("trained model");
    let val = std::fs::read(data.join("shakespeare_char/val.bin")).expect("val.bin");
    let tokens: Vec<u32> = val
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect();
    let (rows, len) = (16, 64);
    let mut engine = CpuEngine::new(model);
    let f32_nll = mean_nll(&engine, &tokens, rows, len);
    engine
        .set_inference_weights(InferenceWeights::Q8 { group: 64 })
        .unwrap();
    let mut ratios = vec![];
    for cache in [KvDtype::Bfloat16, KvDtype::Int8] {
        engine.set_kv_cache_dtype(Some(cache)).unwrap();
        let int8_nll = mean_nll(&engine, &tokens, rows, len);
        let ratio = (int8_nll - f32_nll).exp();
        println!(
            "perplexity f32 {:.4}, int8 with the {cache} cache {:.4} (ratio {ratio:.5})",
            f32_nll.exp(),
            int8_nll.exp()
        );
        ratios.push((cache, ratio));
    }
    // A trained model, not noise: far below the uniform perplexity of 65 characters (65).
    assert!(
        f32_nll.exp() < 12.0,
        "the model did not train: {}",
        f32_nll.exp()
    );
    for (cache, ratio) in ratios {
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "int8/f32 perplexity ratio {ratio} with the {cache} cache"
        );
    }
}

//! The Llama family in the CPU engine against `../shared/fixtures/llama` (transformers'
//! LlamaForCausalLM in f32, eager attention): logits, loss, every gradient, a 10-step AdamW
//! trajectory and every parameter after it; the llama2.c files give the same logits; cached
//! inference equals the full forward.
//!
//! Tolerances are the fixtures' README's: loss and per-step losses 1e-5 relative, logits 1e-4
//! absolute (max |logit| ~13), gradients 1e-4 relative to each tensor's largest |grad|, pre-clip
//! gradient norms 1e-4 relative, parameters after 10 steps 1e-4 absolute (0.1 x lr).
//! Run with `--nocapture` to see the measured errors.

mod common;

use common::llama_fixtures;

use common::{read_f32, read_i32, rel_err};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{AdamW, Engine, Feed, Mode};
use nanogpt::llama::{load_hf_dir, read_llama2c};
use nanogpt::model::Gpt;
use safetensors::SafeTensors;

const B: usize = 2;
const T: usize = 32;

fn engine(name: &str) -> CpuEngine {
    let path = llama_fixtures().join(name);
    let model = if name.ends_with(".bin") {
        read_llama2c(&path).expect("read llama2.c file").0
    } else {
        load_hf_dir(&path).expect("load HF llama")
    };
    CpuEngine::new(Gpt::from_llama(model))
}

fn refs() -> Vec<u8> {
    std::fs::read(llama_fixtures().join("refs.safetensors")).expect("read refs")
}

fn tokens(v: &[i32]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn llama_logits_loss_and_gradients_match_transformers() {
    let mut model = engine("tiny-llama");
    let refs = refs();
    let st = SafeTensors::deserialize(&refs).unwrap();
    let (x, y) = (read_i32(&st, "x"), read_i32(&st, "y"));
    let loss = model
        .forward(&tokens(&x), Some(&y), B, T, Mode::Train { seed: 0 })
        .unwrap()
        .unwrap();
    let ref_loss = read_f32(&st, "loss")[0];
    let el = ((loss - ref_loss) / ref_loss).abs();
    let logit_err = max_abs_diff(model.logits(), &read_f32(&st, "logits"));
    println!("loss {loss} vs {ref_loss} (rel {el:.1e}); logits max abs err {logit_err:.1e}");
    assert!(el < 1e-5, "loss {loss} vs {ref_loss}");
    assert!(logit_err < 1e-4, "logits max abs err {logit_err}");

    model.zero_grad();
    model.backward(1.0).unwrap();
    let mut worst = (0.0, String::new());
    for entry in &model.model.table.entries {
        let reference = read_f32(&st, &format!("grad.{}", entry.name));
        let e = rel_err(&model.grads[entry.range()], &reference);
        if e > worst.0 {
            worst = (e, entry.name.clone());
        }
        assert!(e < 1e-4, "grad {} rel err {e}", entry.name);
    }
    println!("worst gradient: {} rel err {:.1e}", worst.1, worst.0);
}

#[test]
fn llama_ten_adamw_steps_match_transformers() {
    let mut model = engine("tiny-llama");
    let refs = refs();
    let st = SafeTensors::deserialize(&refs).unwrap();
    let (xs, ys) = (read_i32(&st, "traj.x"), read_i32(&st, "traj.y"));
    let (ref_losses, ref_norms) = (
        read_f32(&st, "traj.losses"),
        read_f32(&st, "traj.grad_norms"),
    );
    model.set_adamw(AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let (mut worst_loss, mut worst_norm) = (0f32, 0f32);
    for s in 0..10 {
        let r = s * B * T..(s + 1) * B * T;
        let loss = model
            .forward(&tokens(&xs[r.clone()]), Some(&ys[r]), B, T, Mode::Eval)
            .unwrap()
            .unwrap();
        model.zero_grad();
        model.backward(1.0).unwrap();
        let norm = model.update(1e-3, 1.0);
        let el = ((loss - ref_losses[s]) / ref_losses[s]).abs();
        let en = ((norm - ref_norms[s]) / ref_norms[s]).abs();
        (worst_loss, worst_norm) = (worst_loss.max(el), worst_norm.max(en));
        assert!(el < 1e-5, "step {s}: loss {loss} vs {}", ref_losses[s]);
        assert!(en < 1e-4, "step {s}: grad norm {norm} vs {}", ref_norms[s]);
    }
    let mut worst_param = 0f32;
    for entry in &model.model.table.entries {
        let reference = read_f32(&st, &format!("after10.{}", entry.name));
        let e = max_abs_diff(&model.model.params[entry.range()], &reference);
        worst_param = worst_param.max(e);
        assert!(
            e < 1e-4,
            "param {} after 10 steps: max abs err {e:.2e}",
            entry.name
        );
    }
    println!(
        "10 steps: loss rel {worst_loss:.1e}, grad norm rel {worst_norm:.1e}, params abs {worst_param:.1e}"
    );
}

/// Every position's logits from one full forward pass (B = 1).
fn full_logits(model: &mut CpuEngine, ids: &[u32]) -> Vec<f32> {
    model.forward(ids, None, 1, ids.len(), Mode::Eval).unwrap();
    model.logits().to_vec()
}

#[test]
fn llama2c_v0_v1_and_hf_give_the_same_logits_and_v2_within_q8_error() {
    let refs = refs();
    let st = SafeTensors::deserialize(&refs).unwrap();
    let x = tokens(&read_i32(&st, "x")[..T]);
    for tied in ["", "-tied"] {
        let hf = full_logits(&mut engine(&format!("tiny-llama{tied}")), &x);
        for v in ["v0", "v1"] {
            let other = full_logits(&mut engine(&format!("tiny-llama{tied}.{v}.bin")), &x);
            let e = max_abs_diff(&hf, &other);
            assert!(
                e < 1e-5,
                "tiny-llama{tied} {v} vs HF logits: max abs err {e}"
            );
        }
        let q8 = full_logits(&mut engine(&format!("tiny-llama{tied}.v2.bin")), &x);
        let e = max_abs_diff(&hf, &q8);
        let top = hf.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("tiny-llama{tied} v2 (Q8_0) vs HF: max abs err {e:.3} (max |logit| {top:.1})");
        // The weights' Q8_0 rounding alone: the README measured up to about 0.13 (1% of the
        // largest logit) for these files.
        assert!(e < 0.02 * top, "v2 logits off by {e}");
    }
}

#[test]
fn llama_cached_inference_equals_the_full_forward() {
    let mut model = engine("tiny-llama");
    let refs = refs();
    let st = SafeTensors::deserialize(&refs).unwrap();
    let x = read_i32(&st, "x");
    let (a, b) = (tokens(&x[..T]), tokens(&x[T..2 * T]));
    let (full_a, full_b) = (full_logits(&mut model, &a), full_logits(&mut model, &b));
    let v = 512;
    // Row 0 prefills 5 tokens then decodes one at a time; row 1 prefills 20 then 12 at once.
    let mut cache = model.kv_cache(2, T);
    let mut logits = vec![0.0; 2 * v];
    model
        .forward_cached(
            &mut cache,
            &[
                Feed {
                    row: 0,
                    tokens: &a[..5],
                },
                Feed {
                    row: 1,
                    tokens: &b[..20],
                },
            ],
            &mut logits,
        )
        .unwrap();
    let mut worst = max_abs_diff(&logits[..v], &full_a[4 * v..5 * v])
        .max(max_abs_diff(&logits[v..], &full_b[19 * v..20 * v]));
    for i in 5..T {
        let mut feeds = vec![Feed {
            row: 0,
            tokens: &a[i..i + 1],
        }];
        if i == 5 {
            feeds.push(Feed {
                row: 1,
                tokens: &b[20..],
            });
        }
        model
            .forward_cached(&mut cache, &feeds, &mut logits)
            .unwrap();
        worst = worst.max(max_abs_diff(&logits[..v], &full_a[i * v..(i + 1) * v]));
        if i == 5 {
            worst = worst.max(max_abs_diff(&logits[v..2 * v], &full_b[(T - 1) * v..]));
        }
    }
    println!("cached vs full logits: max abs err {worst:.1e}");
    assert!(
        worst < 1e-4,
        "cached logits differ from the full forward by {worst}"
    );
}

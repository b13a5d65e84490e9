//! The whole model against PyTorch references (`../shared/fixtures/tiny-gpt2-refs.safetensors`,
//! made with transformers' GPT2LMHeadModel in f32): logits, loss, every gradient, a 10-step AdamW
//! trajectory and every parameter after it.
//!
//! Tolerances (f32 against f32, relative to each tensor's largest magnitude):
//!   loss 1e-5, logits 1e-5, gradients 1e-4, per-step loss 1e-5 and pre-clip gradient norm 1e-4
//!   (measured: 1.9e-6, 5e-7, 5.3e-5, 8e-7, 2.5e-5), parameters after 10 steps 1e-4 on 99.9% of
//!   each tensor's elements and 5e-4 on all (measured worst: 2.5e-4, one element of a key weight
//!   whose gradient is nearly zero: Adam's m/sqrt(v) amplifies rounding there).

mod common;

use common::{fixtures, read_f32, read_i32, rel_err};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{AdamW, Engine, Mode};
use nanogpt::model::weights::load_hf_dir;
use safetensors::SafeTensors;

const B: usize = 2;
const T: usize = 32;

fn load() -> (CpuEngine, Vec<u8>) {
    let model = CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).expect("load tiny-gpt2"));
    let refs = std::fs::read(fixtures().join("tiny-gpt2-refs.safetensors")).expect("read refs");
    (model, refs)
}

fn tokens(v: &[i32]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// Our logits without the padding columns.
fn real_logits(model: &CpuEngine) -> Vec<f32> {
    let (v, vp) = (
        model.model.config.vocab_size,
        model.model.config.padded_vocab_size(),
    );
    model
        .logits()
        .chunks(vp)
        .flat_map(|row| row[..v].iter().copied())
        .collect()
}

#[test]
fn logits_loss_and_gradients_match_pytorch() {
    let (mut model, refs) = load();
    let st = SafeTensors::deserialize(&refs).unwrap();
    let (x, y) = (read_i32(&st, "x"), read_i32(&st, "y"));
    let loss = model
        .forward(&tokens(&x), Some(&y), B, T, Mode::Train { seed: 0 })
        .unwrap()
        .unwrap();
    let ref_loss = read_f32(&st, "loss")[0];
    assert!(
        ((loss - ref_loss) / ref_loss).abs() < 1e-5,
        "loss {loss} vs {ref_loss}"
    );
    let e = rel_err(&real_logits(&model), &read_f32(&st, "logits"));
    assert!(e < 1e-5, "logits rel err {e}");

    model.zero_grad();
    model.backward(1.0).unwrap();
    let v = model.model.config.vocab_size;
    for entry in &model.model.table.entries {
        let mut ours = &model.grads[entry.range()];
        if entry.name == "wte.weight" {
            // Padding rows have no reference; they must stay exactly zero.
            assert!(ours[v * model.model.config.n_embd..]
                .iter()
                .all(|&g| g == 0.0));
            ours = &ours[..v * model.model.config.n_embd];
        }
        let reference = read_f32(&st, &format!("grad.transformer.{}", entry.name));
        let e = rel_err(ours, &reference);
        assert!(e < 1e-4, "grad {} rel err {e}", entry.name);
    }
}

#[test]
fn ten_adamw_steps_match_pytorch() {
    let (mut model, refs) = load();
    let st = SafeTensors::deserialize(&refs).unwrap();
    let (xs, ys) = (read_i32(&st, "traj.x"), read_i32(&st, "traj.y"));
    let (ref_losses, ref_norms) = (
        read_f32(&st, "traj.losses"),
        read_f32(&st, "traj.grad_norms"),
    );
    let hyper = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    model.set_adamw(hyper);
    for s in 0..10 {
        let r = s * B * T..(s + 1) * B * T;
        let loss = model
            .forward(
                &tokens(&xs[r.clone()]),
                Some(&ys[r]),
                B,
                T,
                Mode::Train { seed: s as u64 },
            )
            .unwrap()
            .unwrap();
        model.zero_grad();
        model.backward(1.0).unwrap();
        let norm = model.update(1e-3, 1.0);
        let (el, en) = (
            ((loss - ref_losses[s]) / ref_losses[s]).abs(),
            ((norm - ref_norms[s]) / ref_norms[s]).abs(),
        );
        assert!(
            el < 1e-5,
            "step {s}: loss {loss} vs {} (rel {el})",
            ref_losses[s]
        );
        assert!(
            en < 1e-4,
            "step {s}: grad norm {norm} vs {} (rel {en})",
            ref_norms[s]
        );
    }
    let v = model.model.config.vocab_size * model.model.config.n_embd;
    for entry in &model.model.table.entries {
        let mut ours = &model.model.params[entry.range()];
        if entry.name == "wte.weight" {
            ours = &ours[..v];
        }
        let mut reference = read_f32(&st, &format!("after10.transformer.{}", entry.name));
        let mut ours = ours.to_vec();
        if entry.name.ends_with("c_attn.bias") {
            // The key bias has an exactly zero gradient (softmax is shift-invariant), so Adam turns
            // rounding noise into +-lr steps: PyTorch in f64 differs from this f32 reference by
            // 2.5e-3 there. Compare only the query and value thirds.
            let c = reference.len() / 3;
            ours.drain(c..2 * c);
            reference.drain(c..2 * c);
        }
        let scale = reference.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let mut diffs: Vec<f32> = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs() / scale)
            .collect();
        diffs.sort_by(f32::total_cmp);
        let (p999, max) = (diffs[diffs.len() * 999 / 1000], diffs[diffs.len() - 1]);
        assert!(
            p999 < 1e-4 && max < 5e-4,
            "param {} after 10 steps: rel err 99.9th pct {p999:.2e}, max {max:.2e}",
            entry.name
        );
    }
}

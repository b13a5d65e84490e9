//! Int8 (Q8_0) cached inference, `InferenceWeights::Q8`: llama2.c's `runq.c` reproduced on its
//! own v2 files (`../shared/fixtures/llama/run_c.json`, program "runq.c": the same greedy ids
//! and printed text), the v2 files' int8 values recovered by quantizing their dequantized
//! weights again, Q8 logits of a Llama and a GPT-2 within the quantization error of f32's, and
//! the int8 copy dropped by an optimizer step. Run with `--nocapture` to see the errors.

mod common;

use common::{json_ids, llama_fixtures, sample_bin};

use common::{fixtures, nanogpt};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, InferenceWeights, Mode};
use nanogpt::kernels::cpu::q8::Q8Matrix;
use nanogpt::llama::{load_hf_dir as load_llama_dir, read_llama2c};
use nanogpt::model::weights::load_hf_dir;
use nanogpt::model::Gpt;
use serde_json::Value;

const Q8: InferenceWeights = InferenceWeights::Q8 { group: 64 };

/// runq.c's runs, each through `--sampler=run_c` on its v2 file (int8 by default, as runq.c;
/// and with `--dtype=int8` said explicitly). The same model's v0 file with `--dtype=int8` would
/// quantize to the same int8 blocks but keep the exact f32 token embeddings, where runq.c (and
/// a v2 file) has them dequantized: close, not the same run.
#[test]
fn runq_runs_give_runqs_ids_and_printed_text() {
    let text =
        std::fs::read_to_string(llama_fixtures().join("run_c.json")).expect("read run_c.json");
    let runs: Value = serde_json::from_str(&text).expect("run_c.json");
    let tokenizer = llama_fixtures().join("tok512.bin");
    let mut checked = 0;
    for run in runs["runs"].as_array().expect("runs") {
        if run["program"] != "runq.c" {
            continue;
        }
        let argv: Vec<&str> = run["argv"]
            .as_array()
            .expect("argv")
            .iter()
            .map(|a| a.as_str().expect("arg"))
            .collect();
        let flag = |f: &str| argv.iter().position(|&a| a == f).map(|i| argv[i + 1]);
        let steps: usize = flag("-n").expect("-n").parse().expect("a number");
        assert_eq!(flag("-t"), Some("0"), "the runq.c runs are greedy");
        let prompt_ids = json_ids(&run["prompt_ids"]);
        for dtype in [None, Some("--dtype=int8")] {
            let mut args = vec![
                format!("--init_from={}", llama_fixtures().join(argv[1]).display()),
                format!("--tokenizer={}", tokenizer.display()),
                "--sampler=run_c".into(),
                format!("--start={}", flag("-i").unwrap_or("")),
                format!("--max_new_tokens={}", steps + 1 - prompt_ids.len()),
                "--temperature=0".into(),
                "--num_samples=1".into(),
            ];
            args.extend(dtype.map(String::from));
            let printed = sample_bin(&args);
            args.push("--json".into());
            let line: Value = serde_json::from_slice(&sample_bin(&args)).expect("a JSON line");
            assert_eq!(
                json_ids(&line["prompt_ids"]),
                prompt_ids,
                "prompt of {args:?}"
            );
            let mut theirs = json_ids(&run["new_ids"]);
            if run["stopped_on_bos"] == true {
                assert_eq!(theirs.pop(), Some(1), "{argv:?}");
            }
            assert_eq!(json_ids(&line["new_ids"]), theirs, "{args:?}");
            assert_eq!(line["stopped_on_bos"], run["stopped_on_bos"], "{args:?}");
            assert_eq!(
                String::from_utf8_lossy(&printed),
                run["stdout"].as_str().expect("stdout"),
                "printed text of {args:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

/// One stored Q8_0 tensor: int8 values, scales.
type QTensor = (Vec<i8>, Vec<f32>);

/// The v2 files' Q8_0 tensors as stored: (int8 values, scales) per tensor (per layer), in file
/// order, and the group size.
fn v2_tensors(name: &str) -> (Vec<QTensor>, usize) {
    let b = std::fs::read(llama_fixtures().join(name)).expect("read v2 file");
    let i32_at =
        |at: usize| i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize;
    let (dim, hidden, layers, heads, kv_heads, vocab) = (
        i32_at(8),
        i32_at(12),
        i32_at(16),
        i32_at(20),
        i32_at(24),
        i32_at(28),
    );
    assert_eq!(i32_at(4), 2, "{name} is a version 2 file");
    let (shared, group) = (b[36] == 1, i32_at(37));
    let kv = dim / heads * kv_heads;
    let mut sizes = vec![vocab * dim];
    for per_layer in [
        dim * dim,
        kv * dim,
        kv * dim,
        dim * dim,
        hidden * dim,
        dim * hidden,
        hidden * dim,
    ] {
        sizes.extend(std::iter::repeat_n(per_layer, layers));
    }
    if !shared {
        sizes.push(vocab * dim);
    }
    let mut at = 256 + 4 * (2 * layers * dim + dim);
    let mut out = Vec::new();
    for n in sizes {
        let q: Vec<i8> = b[at..at + n].iter().map(|&v| v as i8).collect();
        at += n;
        let s: Vec<f32> = b[at..at + 4 * (n / group)]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        at += 4 * (n / group);
        out.push((q, s));
    }
    assert_eq!(at, b.len(), "{name}: every byte read");
    (out, group)
}

/// Quantizing the dequantized weights of a v2 file (w = q * scale, what the reader keeps) gives
/// back the file's int8 values exactly and its scales to within one ulp, so int8 inference on
/// a v2 file computes with runq.c's weights.
#[test]
fn requantizing_a_v2_files_weights_gives_back_its_values() {
    for name in ["tiny-llama.v2.bin", "tiny-llama-tied.v2.bin"] {
        let (tensors, group) = v2_tensors(name);
        assert_eq!(group, 64);
        let (mut groups, mut scales_equal) = (0, 0);
        for (q, s) in &tensors {
            let w: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * s[i / group])
                .collect();
            // Every row is whole groups here (dim and hidden_dim are multiples of 64), so the
            // tensor's flat groups are its rows' groups.
            let m = Q8Matrix::quantize(&w, w.len() / group, group, group).expect("quantize");
            assert_eq!(&m.q, q, "{name}: int8 values");
            for (&a, &b) in m.s.iter().zip(s) {
                assert!(
                    a.to_bits().abs_diff(b.to_bits()) <= 1,
                    "{name}: scale {a:e} vs the file's {b:e}"
                );
                scales_equal += usize::from(a == b);
            }
            groups += s.len();
        }
        println!("{name}: {scales_equal} of {groups} scales bit-equal, the rest 1 ulp apart");
    }
}

/// The logits of the last of `tokens` through the KV cache (one prefill pass).
fn cached_logits(model: &CpuEngine, tokens: &[u32]) -> Vec<f32> {
    let vp = model.config().padded_vocab_size();
    let mut cache = model.kv_cache(1, tokens.len());
    let mut logits = vec![0.0; vp];
    model
        .forward_cached_all(&mut cache, tokens, tokens.len(), &mut logits)
        .expect("cached pass");
    logits[..model.config().vocab_size].to_vec()
}

/// Logits at every step of a decode (prefill of 3, then one token at a time).
fn decode_logits(model: &CpuEngine, tokens: &[u32]) -> Vec<f32> {
    let vp = model.config().padded_vocab_size();
    let mut cache = model.kv_cache(1, tokens.len());
    let mut logits = vec![0.0; vp];
    let mut all = Vec::new();
    model
        .forward_cached_all(&mut cache, &tokens[..3], 3, &mut logits)
        .expect("prefill");
    all.extend_from_slice(&logits);
    for t in &tokens[3..] {
        model
            .forward_cached_all(&mut cache, std::slice::from_ref(t), 1, &mut logits)
            .expect("decode step");
        all.extend_from_slice(&logits);
    }
    all
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// f32 and Q8 logits of the same model over a decode: within the Q8_0 error (see below); a
/// token's Q8 logits are the same whether it came in a prefill or a decode step, and going back
/// to f32 gives f32's logits again.
fn q8_against_f32(model: Gpt, tokens: &[u32], what: &str) {
    let mut e = CpuEngine::new(model);
    let f32_logits = decode_logits(&e, tokens);
    e.set_inference_weights(Q8).expect("Q8");
    let q8_logits = decode_logits(&e, tokens);
    let (err, top) = (max_abs_diff(&f32_logits, &q8_logits), max_abs(&f32_logits));
    println!("{what}: Q8 vs f32 logits max abs err {err:.3} (max |logit| {top:.1})");
    assert!(err > 0.0, "{what}: Q8 changed nothing");
    let mean = f32_logits
        .iter()
        .zip(&q8_logits)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / f32_logits.len() as f32;
    println!("{what}: mean abs err {mean:.4}");
    // The README's ~1% of the largest logit is the weights' rounding alone; quantizing every
    // activation too (as runq.c) adds more: up to ~5% at one step of tiny-llama's decode, ~0.5%
    // on average.
    assert!(
        err < 0.06 * top,
        "{what}: Q8 logits off by {err} (max |logit| {top})"
    );
    assert!(
        mean < 0.01 * top,
        "{what}: Q8 logits off by {mean} on average"
    );
    let vp = e.config().padded_vocab_size();
    // Attention adds a prefill's keys in another order than a decode's: f32 noise only.
    let last = cached_logits(&e, tokens);
    let decoded = &q8_logits[(tokens.len() - 3) * vp..][..e.config().vocab_size];
    let noise = max_abs_diff(&last, decoded);
    assert!(
        noise < 1e-4,
        "{what}: a prefill's last logits differ from the decode's by {noise}"
    );
    e.set_inference_weights(InferenceWeights::F32).expect("F32");
    assert_eq!(decode_logits(&e, tokens), f32_logits, "{what}: back to f32");
}

fn some_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

#[test]
fn q8_logits_of_a_llama_and_a_gpt2_are_within_the_quantization_error() {
    for name in ["tiny-llama", "tiny-llama-tied"] {
        let llama = load_llama_dir(&llama_fixtures().join(name)).expect("load tiny llama");
        let model = Gpt::from_llama(llama);
        q8_against_f32(model, &some_tokens(24, 512), name);
    }
    let gpt2 = load_hf_dir(&fixtures().join("tiny-gpt2")).expect("load tiny-gpt2");
    let cfg = &gpt2.config;
    // Whole groups of 64 in every matrix's rows: the runq.c arithmetic throughout.
    assert_eq!((cfg.n_embd % 64, cfg.mlp_width() % 64), (0, 0));
    let v = cfg.vocab_size;
    q8_against_f32(gpt2, &some_tokens(24, v), "tiny-gpt2");
}

/// With Q8 on, an optimizer step drops the int8 copy: the next cached pass quantizes the new
/// weights (the same logits as a fresh engine holding them), not the old ones.
#[test]
fn q8_inference_sees_the_optimizers_update() {
    let llama = read_llama2c(&llama_fixtures().join("tiny-llama.v0.bin"))
        .expect("read v0")
        .0;
    let mut e = CpuEngine::new(Gpt::from_llama(llama));
    e.set_inference_weights(Q8).expect("Q8");
    let tokens = some_tokens(16, 512);
    let before = cached_logits(&e, &tokens);
    let targets: Vec<i32> = tokens[1..].iter().chain(&[5]).map(|&t| t as i32).collect();
    e.forward(
        &tokens,
        Some(&targets),
        1,
        tokens.len(),
        Mode::Train { seed: 0 },
    )
    .expect("forward");
    e.backward(1.0).expect("backward");
    e.update(1e-2, 1.0);
    let after = cached_logits(&e, &tokens);
    let mut fresh = CpuEngine::new(e.model.clone());
    fresh.set_inference_weights(Q8).expect("Q8");
    assert_eq!(after, cached_logits(&fresh, &tokens), "stale int8 weights");
    assert!(
        max_abs_diff(&after, &before) > 1e-3,
        "the update changed nothing"
    );
}

#[test]
fn dtype_knob_refuses_what_it_does_not_know() {
    let out = nanogpt()
        .args([
            "sample",
            &format!(
                "--init_from={}",
                llama_fixtures().join("tiny-llama.v2.bin").display()
            ),
            &format!(
                "--tokenizer={}",
                llama_fixtures().join("tok512.bin").display()
            ),
            "--dtype=int4",
        ])
        .output()
        .expect("run nanogpt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("float32, bfloat16 or int8"),
        "{err}"
    );
}

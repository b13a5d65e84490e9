//! bf16 inference (`sample --dtype=bfloat16`): the matrices rounded to bf16, activations f32.
//! Greedy decoding against f32 on tiny-gpt2 for the generation fixture's prompts, and a trained
//! character model's logits against f32.

mod common;

use common::{fixtures, json_ids};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, InferenceWeights, KvDtype};
use nanogpt::model::weights::load_hf_dir;
use nanogpt::sample::{generate, IdsOnly, SamplingConfig};
use serde_json::Value;

fn tiny(weights: InferenceWeights) -> CpuEngine {
    let mut e = CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).expect("tiny-gpt2"));
    e.set_inference_weights(weights).expect("set weights");
    e
}

/// The logits after `tokens` (one prefill pass, then one decoding step for the last token, so
/// both paths run: bf16 prefill products and bf16 dot products).
fn logits_after(model: &dyn Engine, tokens: &[u32]) -> Vec<f32> {
    let cfg = model.config();
    let mut cache = model.kv_cache(1, tokens.len());
    let mut logits = vec![0.0; cfg.padded_vocab_size()];
    let (head, last) = tokens.split_at(tokens.len() - 1);
    if !head.is_empty() {
        model
            .forward_cached_all(&mut cache, head, head.len(), &mut logits)
            .expect("prefill");
    }
    model
        .forward_cached_all(&mut cache, last, 1, &mut logits)
        .expect("decode");
    logits.truncate(cfg.vocab_size);
    logits
}

fn greedy(model: &dyn Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let ids = IdsOnly { eot: None };
    let out = generate(
        model,
        prompt,
        &SamplingConfig::greedy(n),
        &ids,
        &mut |_, _| {},
    );
    out.expect("generate").remove(0).tokens
}

/// Greedy ids equal f32's, or, where they part, f32's margin between its top two logits there
/// was smaller than how far bf16 moved the logits (a tie that rounding can flip).
#[test]
fn greedy_bf16_follows_f32_or_parts_only_at_a_near_tie() {
    let text = std::fs::read_to_string(fixtures().join("tiny-gpt2-generation.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let (f32_model, bf16_model) = (tiny(InferenceWeights::F32), tiny(InferenceWeights::Bf16));
    let mut cases = 0;
    let mut equal = 0;
    for g in fx["generations"].as_array().unwrap() {
        if g["setting"] != "greedy" {
            continue;
        }
        cases += 1;
        let prompt = json_ids(&g["prompt_ids"]);
        let n = g["max_new_tokens"].as_u64().unwrap() as usize;
        let want = greedy(&f32_model, &prompt, n);
        assert_eq!(
            want,
            json_ids(&g["new_ids"][0]),
            "f32 is transformers' greedy"
        );
        let got = greedy(&bf16_model, &prompt, n);
        let Some(at) = want.iter().zip(&got).position(|(a, b)| a != b) else {
            equal += 1;
            continue;
        };
        let context: Vec<u32> = prompt.iter().chain(&want[..at]).copied().collect();
        let l32 = logits_after(&f32_model, &context);
        let l16 = logits_after(&bf16_model, &context);
        let mut sorted = l32.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let margin = sorted[0] - sorted[1];
        let moved = l32
            .iter()
            .zip(&l16)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!("{:?}: parts at token {at}: f32 margin {margin:e}, bf16 moved logits by up to {moved:e}", g["prompt"]);
        assert!(
            margin <= moved,
            "{:?} parts at {at} with a margin of {margin:e} (bf16 moved logits by {moved:e})",
            g["prompt"]
        );
    }
    assert!(cases >= 3, "the fixture has greedy cases");
    eprintln!("{equal} of {cases} greedy generations equal f32's");
}

/// bf16 moves every logit by about the bf16 rounding of what it sums: for tiny-gpt2 a fraction
/// of a percent of the logits' spread, and the prefill and decoding paths agree.
#[test]
fn bf16_logits_stay_close_to_f32_on_both_paths() {
    let (f32_model, bf16_model) = (tiny(InferenceWeights::F32), tiny(InferenceWeights::Bf16));
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 50257).collect();
    for len in [1, 2, 20, 40] {
        let l32 = logits_after(&f32_model, &tokens[..len]);
        let l16 = logits_after(&bf16_model, &tokens[..len]);
        let spread = l32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let moved = l32
            .iter()
            .zip(&l16)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!("{len} tokens: logits moved by up to {moved:e} of {spread:e}");
        assert!(
            moved > 0.0,
            "bf16 weights should change something: are they in use?"
        );
        assert!(
            moved <= 0.01 * spread,
            "{len} tokens: moved {moved} of {spread}"
        );
    }
}

/// The KV cache's dtype is its own knob: with f32 weights a bf16 cache moves the logits by
/// about bf16 rounding (and by something: it is in use), and bf16 weights asked for an f32
/// cache compute something else than with their default bf16 one.
#[test]
fn kv_cache_dtype_is_its_own_knob() {
    let with_cache = |weights, cache| {
        let mut e = tiny(weights);
        e.set_kv_cache_dtype(Some(cache)).expect("the CPU has both");
        e
    };
    let (f32_model, bf16_model) = (tiny(InferenceWeights::F32), tiny(InferenceWeights::Bf16));
    let f32_bf16_cache = with_cache(InferenceWeights::F32, KvDtype::Bfloat16);
    let bf16_f32_cache = with_cache(InferenceWeights::Bf16, KvDtype::Float32);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 53 + 7) % 50257).collect();
    let moved = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    for len in [2, 20, 40] {
        let l32 = logits_after(&f32_model, &tokens[..len]);
        let spread = l32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let by_cache = moved(&l32, &logits_after(&f32_bf16_cache, &tokens[..len]));
        eprintln!(
            "{len} tokens: a bf16 cache moved f32's logits by up to {by_cache:e} of {spread:e}"
        );
        assert!(
            by_cache > 0.0 && by_cache <= 0.01 * spread,
            "{len} tokens: {by_cache}"
        );
        let l16 = logits_after(&bf16_model, &tokens[..len]);
        let l16_f32_cache = logits_after(&bf16_f32_cache, &tokens[..len]);
        assert!(
            moved(&l16, &l16_f32_cache) > 0.0,
            "{len} tokens: the cache knob did nothing"
        );
    }
}

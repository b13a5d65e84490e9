//! Sampling: conformance with transformers' `generate` on tiny-gpt2, every processor on
//! hand-made logits, beam search, KV-cache generation, streaming, prompts at the edges, and
//! the repetition metrics.

mod common;

use common::json_ids;

use common::fixtures;
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, Feed, KvDtype, Mode};
use nanogpt::model::weights::load_hf_dir;
use nanogpt::sample::context::ContextMode;
use nanogpt::sample::processors::{self, banned_ngram_tokens, Processors};
use nanogpt::sample::repetition::{self, LoopRule};
use nanogpt::sample::{
    dry, generate, generate_each, loop_guard, DryConfig, EarlyStopping, FinishReason, Generation,
    IdsOnly, LengthDecay, LoopAction, LoopGuardConfig, LoopGuardMode, SamplingConfig, StopScan,
    Vocab,
};
use nanogpt::tokenizer::Tokenizer;
use serde_json::Value;
use std::sync::OnceLock;

const NEG: f32 = f32::NEG_INFINITY;

fn tiny() -> &'static CpuEngine {
    static M: OnceLock<CpuEngine> = OnceLock::new();
    M.get_or_init(|| {
        CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).expect("load tiny-gpt2"))
    })
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixtures().join("tiny-gpt2-generation.json"))
        .expect("read tiny-gpt2-generation.json");
    serde_json::from_str(&text).expect("parse tiny-gpt2-generation.json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

const NO_EOS: IdsOnly = IdsOnly { eot: None };

fn run(model: &dyn Engine, prompt: &[u32], cfg: &SamplingConfig) -> Vec<Generation> {
    generate(model, prompt, cfg, &NO_EOS, &mut |_, _| {}).expect("generate")
}

/// transformers' generate kwargs as a config (do_sample=False settings).
fn config_from_kwargs(kwargs: &Value, max_new_tokens: usize) -> SamplingConfig {
    let mut cfg = SamplingConfig::greedy(max_new_tokens);
    for (k, v) in kwargs.as_object().expect("kwargs object") {
        match k.as_str() {
            "do_sample" => cfg.do_sample = v.as_bool().expect("bool"),
            "repetition_penalty" => cfg.repetition_penalty = v.as_f64().expect("num") as f32,
            "no_repeat_ngram_size" => cfg.no_repeat_ngram_size = v.as_u64().expect("int") as usize,
            "num_beams" => cfg.num_beams = v.as_u64().expect("int") as usize,
            "num_return_sequences" => cfg.num_return_sequences = v.as_u64().expect("int") as usize,
            "length_penalty" => cfg.length_penalty = v.as_f64().expect("num") as f32,
            "early_stopping" => {
                cfg.early_stopping = if v.as_bool().expect("bool") {
                    EarlyStopping::True
                } else {
                    EarlyStopping::False
                }
            }
            "bad_words_ids" => {
                cfg.bad_words_ids = v.as_array().expect("list").iter().map(json_ids).collect()
            }
            "sequence_bias" => {
                cfg.sequence_bias = v
                    .as_array()
                    .expect("list")
                    .iter()
                    .map(|pair| (json_ids(&pair[0]), pair[1].as_f64().expect("bias") as f32))
                    .collect()
            }
            "penalty_alpha" => cfg.penalty_alpha = v.as_f64().expect("num") as f32,
            "top_k" => cfg.top_k = Some(v.as_u64().expect("int") as usize),
            "num_beam_groups" => cfg.num_beam_groups = v.as_u64().expect("int") as usize,
            "diversity_penalty" => cfg.diversity_penalty = v.as_f64().expect("num") as f32,
            "exponential_decay_length_penalty" => {
                cfg.exponential_decay_length_penalty = Some(LengthDecay {
                    start: v[0].as_u64().expect("start") as usize,
                    factor: v[1].as_f64().expect("factor") as f32,
                })
            }
            other => panic!("fixture kwarg {other} not mapped"),
        }
    }
    cfg
}

#[test]
fn fixture_generations_token_for_token() {
    let fx = fixture();
    let model = tiny();
    let mut failures = Vec::new();
    let gens = fx["generations"].as_array().expect("generations");
    assert!(gens.len() >= 15);
    for g in gens {
        let prompt = json_ids(&g["prompt_ids"]);
        let max_new = g["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
        assert!(g["eos_token_id"].is_null(), "fixture runs without EOS");
        let cfg = config_from_kwargs(&g["kwargs"], max_new);
        let want: Vec<Vec<u32>> = g["new_ids"]
            .as_array()
            .expect("new_ids")
            .iter()
            .map(json_ids)
            .collect();
        let got: Vec<Vec<u32>> = run(model, &prompt, &cfg)
            .into_iter()
            .map(|g| g.tokens)
            .collect();
        let name = format!("{:?} / {}", g["prompt"].as_str(), g["setting"]);
        if got != want {
            failures.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
        } else {
            eprintln!("ok: {name}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A sampling config from a filter case name such as "temperature_0.8+top_k_50".
fn config_from_name(name: &str) -> SamplingConfig {
    let mut cfg = SamplingConfig {
        temperature: 1.0,
        top_k: None,
        ..SamplingConfig::default()
    };
    for part in name.split('+') {
        let (key, val) = part.rsplit_once('_').expect("key_value");
        let x: f64 = val.parse().expect("value");
        match key {
            "temperature" => cfg.temperature = x as f32,
            "top_k" => cfg.top_k = Some(x as usize),
            "top_p" => cfg.top_p = Some(x as f32),
            "min_p" => cfg.min_p = Some(x as f32),
            "typical_p" => cfg.typical_p = Some(x as f32),
            "repetition_penalty" => cfg.repetition_penalty = x as f32,
            other => panic!("filter {other} not mapped"),
        }
    }
    cfg
}

fn last_logits(model: &dyn Engine, prompt: &[u32]) -> Vec<f32> {
    let cfg = model.config();
    let mut cache = model.kv_cache(1, prompt.len());
    let mut logits = vec![0.0; cfg.padded_vocab_size()];
    model
        .forward_cached_all(&mut cache, prompt, prompt.len(), &mut logits)
        .expect("forward");
    logits.truncate(cfg.vocab_size);
    logits
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * b.abs().max(1.0)
}

#[test]
fn fixture_filters_keep_the_same_tokens() {
    let fx = fixture();
    let model = tiny();
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in fx["filters"].as_array().expect("filters") {
        let prompt = json_ids(&f["prompt_ids"]);
        let raw = last_logits(model, &prompt);
        for case in f["cases"].as_array().expect("cases") {
            let name = case["name"].as_str().expect("name");
            let label = format!("{:?} / {name}", f["prompt"].as_str());
            let cfg = config_from_name(name);
            let mut row = raw.clone();
            Processors::new(&cfg, row.len(), None).apply(&mut row, &prompt, prompt.len(), 1);
            checked += 1;
            if let Some(kept) = case.get("kept_ids") {
                let want = json_ids(kept);
                let got: Vec<u32> = (0..row.len() as u32)
                    .filter(|&i| row[i as usize] > NEG)
                    .collect();
                if got != want {
                    let extra: Vec<_> = got.iter().filter(|i| !want.contains(i)).collect();
                    let missing: Vec<_> = want.iter().filter(|i| !got.contains(i)).collect();
                    failures.push(format!(
                        "{label}: kept {} want {}; extra {extra:?} missing {missing:?}",
                        got.len(),
                        want.len()
                    ));
                    continue;
                }
                let vals = floats(&case["processed_logits_of_first_10_kept"]);
                for (&id, &v) in want.iter().zip(&vals) {
                    if !close(row[id as usize], v) {
                        failures.push(format!(
                            "{label}: token {id} processed {} want {v}",
                            row[id as usize]
                        ));
                    }
                }
                eprintln!("ok: {label} ({} kept)", want.len());
            }
            if let Some(pen) = case.get("penalized_ids") {
                let pen = json_ids(pen);
                let (want_raw, want_proc) = (
                    floats(&case["raw_logits"]),
                    floats(&case["processed_logits"]),
                );
                for ((&id, &r), &p) in pen.iter().zip(&want_raw).zip(&want_proc) {
                    if !close(raw[id as usize], r) || !close(row[id as usize], p) {
                        failures.push(format!(
                            "{label}: token {id} raw {} -> {} want {r} -> {p}",
                            raw[id as usize], row[id as usize]
                        ));
                    }
                }
                // Every other token is untouched.
                for i in 0..row.len() {
                    if !pen.contains(&(i as u32)) {
                        assert_eq!(row[i], raw[i], "{label}: token {i} changed");
                    }
                }
                eprintln!("ok: {label}");
            }
        }
    }
    assert!(checked >= 21, "only {checked} filter cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// tests/data/decoding_refs.json (tests/data/make_decoding_refs.py): the options of issue 18.

fn decoding_refs() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/decoding_refs.json");
    let text = std::fs::read_to_string(path).expect("read tests/data/decoding_refs.json");
    serde_json::from_str(&text).expect("parse decoding_refs.json")
}

/// Runs every reference of `section` (transformers' kwargs, greedy or beams) and compares the
/// generated ids exactly. A reference's final EOS is not in our tokens; the generation must then
/// end by it.
fn check_generations(section: &str, min_cases: usize) {
    let refs = decoding_refs();
    let model = tiny();
    let mut failures = Vec::new();
    let cases = refs[section].as_array().expect("section");
    assert!(cases.len() >= min_cases, "{section}: {} cases", cases.len());
    for g in cases {
        let prompt = json_ids(&g["prompt_ids"]);
        let max_new = g["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
        let eot = g["eos_token_id"].as_u64().map(|e| e as u32);
        let cfg = config_from_kwargs(&g["kwargs"], max_new);
        let name = format!("{prompt:?} / {}", g["kwargs"]);
        let got = generate(model, &prompt, &cfg, &IdsOnly { eot }, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let want: Vec<Vec<u32>> = g["new_ids"]
            .as_array()
            .expect("new_ids")
            .iter()
            .map(json_ids)
            .collect();
        let got_ids: Vec<Vec<u32>> = got
            .iter()
            .map(|g| {
                let mut t = g.tokens.clone();
                if g.finished_by == FinishReason::Eot {
                    t.extend(eot);
                }
                t
            })
            .collect();
        if got_ids != want {
            failures.push(format!("{name}:\n  want {want:?}\n  got  {got_ids:?}"));
        } else {
            eprintln!("ok: {name}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decoding_refs_epsilon_and_eta_keep_the_same_tokens() {
    let refs = decoding_refs();
    let model = tiny();
    let mut failures = Vec::new();
    let cases = refs["warpers"].as_array().expect("warpers");
    assert!(cases.len() >= 21);
    let mut sizes = Vec::new();
    for case in cases {
        let prompt = json_ids(&case["prompt_ids"]);
        let value = case["value"].as_f64().expect("value") as f32;
        let min_keep = case["min_keep"].as_u64().expect("min_keep") as usize;
        let mut cfg = SamplingConfig {
            temperature: case["temperature"].as_f64().expect("temperature") as f32,
            top_k: None,
            ..SamplingConfig::default()
        };
        match case["name"].as_str().expect("name") {
            "epsilon_cutoff" => cfg.epsilon_cutoff = Some(value),
            "eta_cutoff" => cfg.eta_cutoff = Some(value),
            other => panic!("warper {other} not mapped"),
        }
        let mut row = last_logits(model, &prompt);
        Processors::new(&cfg, row.len(), None).warp(&mut row, min_keep);
        let got: Vec<u32> = (0..row.len() as u32)
            .filter(|&i| row[i as usize] > NEG)
            .collect();
        let count = case["kept_count"].as_u64().expect("kept_count") as usize;
        let sum = case["kept_id_sum"].as_u64().expect("kept_id_sum");
        let got_sum: u64 = got.iter().map(|&i| i as u64).sum();
        sizes.push(count);
        // Long lists are stored as count and id sum only.
        let same_ids = case.get("kept_ids").is_none_or(|w| json_ids(w) == got);
        if got.len() != count || got_sum != sum || !same_ids {
            failures.push(format!(
                "{prompt:?} {} {value} T={} min_keep {min_keep}: kept {} (sum {got_sum}) want {count} (sum {sum})",
                case["name"], case["temperature"], got.len()
            ));
        }
    }
    // The references must be decisive: some cut keeps many tokens, not one or two.
    assert!(sizes.iter().any(|&n| n > 50), "kept sizes {sizes:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decoding_refs_bad_words_sequence_bias_length_decay() {
    check_generations("generations", 18);
}

#[test]
fn decoding_refs_diverse_beam_search() {
    check_generations("group_beam", 9);
}

#[test]
fn decoding_refs_contrastive_search() {
    check_generations("contrastive", 9);
}

/// Past the context window contrastive search crops the context (as nanoGPT) and goes on; the
/// tokens before the crop are those of a shorter run.
#[test]
fn contrastive_search_runs_past_the_context_window() {
    let model = tiny();
    let block = model.config().block_size;
    let prompt = shakespeare_ids(block - 3);
    let cfg = |n| SamplingConfig {
        penalty_alpha: 0.6,
        top_k: Some(4),
        ..SamplingConfig::greedy(n)
    };
    let long = run(model, &prompt, &cfg(8));
    assert_eq!(long[0].tokens.len(), 8);
    let short = run(model, &prompt, &cfg(2));
    assert_eq!(short[0].tokens[..], long[0].tokens[..2]);
    // num_samples copies of the one sequence.
    let three = run(
        model,
        &prompt,
        &SamplingConfig {
            num_samples: 3,
            ..cfg(2)
        },
    );
    assert!(three.iter().all(|g| g.tokens == short[0].tokens) && three.len() == 3);
}

/// The hidden states contrastive search reads: for every fed token, after ln_f, so that
/// hidden . wte^T gives the logits; the same values whether the tokens come in one feed or one
/// at a time.
#[test]
fn forward_cached_hidden_gives_every_tokens_final_state() {
    let model = tiny();
    let cfg = model.config();
    let (c, vp) = (cfg.n_embd, cfg.padded_vocab_size());
    let prompt = [1639u32, 389, 616, 34488, 13];
    let feed = |cache: &mut nanogpt::engine::KvCache, row, tokens: &[u32]| {
        let mut logits = vec![0.0; vp];
        let mut hidden = vec![0.0; tokens.len() * c];
        model
            .forward_cached_hidden(cache, &[Feed { row, tokens }], &mut logits, &mut hidden)
            .expect("forward_cached_hidden");
        (logits, hidden)
    };
    let mut cache = model.kv_cache(1, 8);
    let (logits, hidden) = feed(&mut cache, 0, &prompt);
    let wte = &model.model().params[model.model().table.wte..][..cfg.vocab_size * c];
    let last = &hidden[(prompt.len() - 1) * c..];
    for tok in [0usize, 198, 50256] {
        let dot: f32 = last
            .iter()
            .zip(&wte[tok * c..(tok + 1) * c])
            .map(|(a, b)| a * b)
            .sum();
        assert!(
            (dot - logits[tok]).abs() < 1e-4,
            "token {tok}: {dot} vs {}",
            logits[tok]
        );
    }
    let mut one_by_one = model.kv_cache(1, 8);
    for (i, &t) in prompt.iter().enumerate() {
        let (_, h) = feed(&mut one_by_one, 0, &[t]);
        for (a, b) in h.iter().zip(&hidden[i * c..(i + 1) * c]) {
            assert!((a - b).abs() < 1e-5, "position {i}: {a} vs {b}");
        }
    }
    // A buffer too small is an error, not a panic.
    let mut small = vec![0.0; c];
    let mut logits = vec![0.0; vp];
    let err = model.forward_cached_hidden(
        &mut model.kv_cache(1, 8),
        &[Feed {
            row: 0,
            tokens: &prompt,
        }],
        &mut logits,
        &mut small,
    );
    assert!(err.is_err());
}

#[test]
fn epsilon_and_eta_edges() {
    let probs = [0.5, 0.3, 0.15, 0.05];
    let eps = |e: f32, min_keep: usize| {
        let mut x = ln(&probs);
        processors::epsilon_cutoff(&mut x, e, min_keep);
        kept(&x)
    };
    assert_eq!(eps(0.1, 1), vec![0, 1, 2]);
    assert_eq!(eps(0.16, 1), vec![0, 1]);
    assert_eq!(eps(0.9, 1), vec![0]); // the most likely always stays
    assert_eq!(eps(0.9, 3), vec![0, 1, 2]);
    // Entropy 1.142 nats: eta = min(0.2, sqrt(0.2) * e^-1.142 = 0.1427) cuts only 0.05.
    let mut x = ln(&probs);
    processors::eta_cutoff(&mut x, 0.2, 1);
    assert_eq!(kept(&x), vec![0, 1, 2]);
    // eta itself when the row is peaked: entropy of [0.97, 0.02, 0.01] is 0.154 nats, so
    // sqrt(0.015) * e^-0.154 = 0.105 > 0.015 and the cut is 0.015.
    let mut x = ln(&[0.97, 0.02, 0.01]);
    processors::eta_cutoff(&mut x, 0.015, 1);
    assert_eq!(kept(&x), vec![0, 1]);
}

#[test]
fn sequence_bias_and_bad_words_match_the_sequence_end() {
    let biases = vec![(vec![3], -1.0), (vec![1, 2, 4], 2.0), (vec![2, 4], 0.5)];
    let mut x = vec![0.0f32; 5];
    processors::sequence_bias(&mut x, &[0, 1, 2], &biases);
    // [3] always; [1 2 | 4] and [2 | 4] both match: 4 gains 2.5.
    assert_eq!(x, vec![0.0, 0.0, 0.0, -1.0, 2.5]);
    let mut x = vec![0.0f32; 5];
    processors::sequence_bias(&mut x, &[2], &biases);
    assert_eq!(
        x,
        vec![0.0, 0.0, 0.0, -1.0, 0.5],
        "a prefix longer than the text does not match"
    );
    // bad_words: -inf on completions; a ban of the end-of-text token alone is ignored; equal
    // sequences given twice count once (the last bias).
    let cfg = SamplingConfig {
        bad_words_ids: vec![vec![4], vec![1, 2], vec![0]],
        sequence_bias: vec![(vec![3], 1.0), (vec![3], 2.0)],
        ..SamplingConfig::greedy(1)
    };
    let mut x = vec![0.0f32; 5];
    Processors::new(&cfg, 5, Some(0)).penalize(&mut x, &[1], 1);
    assert_eq!(x, vec![0.0, 0.0, NEG, 2.0, NEG]);
}

#[test]
fn exponential_decay_favours_the_end_of_text_token() {
    let decay = LengthDecay {
        start: 2,
        factor: 2.0,
    };
    let run = |generated: usize, eot_logit: f32| {
        let mut x = vec![1.0, eot_logit];
        processors::exponential_decay_length_penalty(&mut x, generated, decay, 1);
        x
    };
    assert_eq!(run(2, -3.0), vec![1.0, -3.0]); // not past start yet
    assert_eq!(run(3, -3.0), vec![1.0, 0.0]); // -3 + 3 * (2^1 - 1)
    assert_eq!(run(4, 2.0), vec![1.0, 8.0]); // 2 + 2 * (2^2 - 1)
    assert_eq!(run(5, NEG), vec![1.0, NEG]); // a banned EOS stays banned
                                             // Through the processors: the count is of generated tokens (the prompt does not count).
    let cfg = SamplingConfig {
        exponential_decay_length_penalty: Some(decay),
        ..SamplingConfig::greedy(1)
    };
    let mut x = vec![1.0, -3.0];
    Processors::new(&cfg, 2, Some(1)).penalize(&mut x, &[0, 0, 0, 0, 0], 2);
    assert_eq!(x, vec![1.0, 0.0]);
    let mut x = vec![1.0, -3.0];
    Processors::new(&cfg, 2, None).penalize(&mut x, &[0, 0, 0, 0, 0], 2);
    assert_eq!(
        x,
        vec![1.0, -3.0],
        "no end-of-text token: nothing to favour"
    );
}

// ---------------------------------------------------------------------------------------------
// Processors on hand-made logits.

fn ln(ps: &[f64]) -> Vec<f32> {
    ps.iter().map(|&p| p.ln() as f32).collect()
}

fn kept(row: &[f32]) -> Vec<usize> {
    (0..row.len()).filter(|&i| row[i] > NEG).collect()
}

#[test]
fn temperature_divides() {
    let mut x = vec![1.0, -2.0, 0.5];
    processors::temperature(&mut x, 0.5);
    assert_eq!(x, vec![2.0, -4.0, 1.0]);
}

#[test]
fn top_k_keeps_ties_and_min_keep() {
    let mut x = vec![1.0, 3.0, 2.0, 3.0, 0.0];
    processors::top_k(&mut x, 2, 1);
    assert_eq!(kept(&x), vec![1, 3]);
    // The k-th value is tied: every tie survives (transformers removes only values < k-th).
    let mut x = vec![1.0, 3.0, 2.0, 2.0, 0.0];
    processors::top_k(&mut x, 2, 1);
    assert_eq!(kept(&x), vec![1, 2, 3]);
    // k larger than the row: nothing removed; min_keep raises k.
    let mut x = vec![1.0, 3.0];
    processors::top_k(&mut x, 10, 1);
    assert_eq!(kept(&x), vec![0, 1]);
    let mut x = vec![1.0, 3.0, 2.0];
    processors::top_k(&mut x, 1, 2);
    assert_eq!(kept(&x), vec![1, 2]);
    // Survivors keep their values.
    assert_eq!(x[1], 3.0);
}

#[test]
fn top_p_edges() {
    let probs = [0.5, 0.3, 0.15, 0.05];
    let case = |p: f32, min_keep: usize| {
        let mut x = ln(&probs);
        processors::top_p(&mut x, p, min_keep);
        kept(&x)
    };
    assert_eq!(case(0.75, 1), vec![0, 1]); // 0.5 + 0.3 >= 0.75
    assert_eq!(case(0.4, 1), vec![0]); // the top token alone has the mass
    assert_eq!(case(0.9, 1), vec![0, 1, 2]);
    assert_eq!(case(1.0, 1), vec![0, 1, 2, 3]); // off
    assert_eq!(case(0.01, 1), vec![0]); // tiny p still keeps the top token
    assert_eq!(case(0.01, 3), vec![0, 1, 2]); // and min_keep more
                                              // Ties: the sort is stable, so among equal logits the lower index goes first (removed first).
    let mut x = vec![1.0f32; 4];
    processors::top_p(&mut x, 0.5, 1);
    assert_eq!(kept(&x), vec![2, 3]);
    // -inf (already filtered) tokens stay filtered and take no mass.
    let mut x = ln(&probs);
    x[0] = NEG;
    processors::top_p(&mut x, 0.5, 1);
    assert_eq!(kept(&x), vec![1]); // 0.3/0.5 = 0.6 >= 0.5
}

#[test]
fn min_p_edges() {
    let probs = [0.5, 0.3, 0.15, 0.05];
    let case = |p: f32| {
        let mut x = ln(&probs);
        processors::min_p(&mut x, p, 1);
        kept(&x)
    };
    assert_eq!(case(0.2), vec![0, 1, 2]); // cut at 0.1
    assert_eq!(case(0.5), vec![0, 1]); // cut at 0.25
    assert_eq!(case(1.0), vec![0]);
    assert_eq!(case(0.0), vec![0, 1, 2, 3]);
    // Ties with the top token survive min_p = 1.
    let mut x = vec![2.0f32, 2.0, 1.0];
    processors::min_p(&mut x, 1.0, 1);
    assert_eq!(kept(&x), vec![0, 1]);
    // min_keep protects the runners-up.
    let mut x = ln(&probs);
    processors::min_p(&mut x, 1.0, 2);
    assert_eq!(kept(&x), vec![0, 1]);
}

#[test]
fn typical_p_edges() {
    // Entropy of [0.5, 0.3, 0.15, 0.05] is 1.142 nats; |-ln p - H| ranks the tokens
    // 1 (0.062), 0 (0.449), 2 (0.755), 3 (1.854); cumulative mass 0.3, 0.8, 0.95, 1.0.
    let probs = [0.5, 0.3, 0.15, 0.05];
    let case = |mass: f32, min_keep: usize| {
        let mut x = ln(&probs);
        processors::typical_p(&mut x, mass, min_keep);
        kept(&x)
    };
    assert_eq!(case(0.9, 1), vec![0, 1, 2]);
    assert_eq!(case(0.5, 1), vec![0, 1]);
    // The most *typical* token is kept, not the most likely one.
    assert_eq!(case(0.2, 1), vec![1]);
    assert_eq!(case(0.2, 2), vec![0, 1]);
    assert_eq!(case(1.0, 1), vec![0, 1, 2, 3]);
    // A uniform row: every token is equally typical, all survive.
    let mut x = vec![0.0f32; 5];
    processors::typical_p(&mut x, 0.1, 1);
    assert_eq!(kept(&x).len(), 5);
}

#[test]
fn repetition_penalty_ctrl_rule() {
    let mut x = vec![2.0, -2.0, 0.0, 1.0];
    // Token 0 appears twice: penalised once. Token 3 is absent: untouched.
    processors::repetition_penalty(&mut x, &[0, 1, 2, 0], 2.0);
    assert_eq!(x, vec![1.0, -4.0, 0.0, 1.0]);
    // A penalty below 1 rewards repeats the same way round.
    let mut x = vec![2.0, -2.0];
    processors::repetition_penalty(&mut x, &[0, 1], 0.5);
    assert_eq!(x, vec![4.0, -1.0]);
}

#[test]
fn no_repeat_ngram_bans() {
    assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
    assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 2), vec![3]);
    assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2, 4, 2], 2), vec![3, 4]);
    assert_eq!(banned_ngram_tokens(&[1, 2, 3, 1, 2], 1), vec![1, 2, 3]);
    assert_eq!(banned_ngram_tokens(&[5, 5], 2), vec![5]);
    assert!(banned_ngram_tokens(&[1], 3).is_empty());
    assert!(banned_ngram_tokens(&[1, 2], 3).is_empty());
    assert!(banned_ngram_tokens(&[1, 2, 3], 0).is_empty());
    let mut x = vec![0.0f32; 5];
    processors::no_repeat_ngram(&mut x, &[1, 2, 3, 1, 2], 3);
    assert_eq!(kept(&x), vec![0, 1, 2, 4]);
}

#[test]
fn frequency_and_presence_count_generated_tokens_only() {
    let mut x = vec![0.0f32; 5];
    let seq = [4, 3, 3, 1, 3];
    // Prompt = [4]; generated = [3, 3, 1, 3].
    let cfg = SamplingConfig {
        frequency_penalty: 0.5,
        presence_penalty: 1.0,
        ..SamplingConfig::greedy(1)
    };
    Processors::new(&cfg, 5, None).penalize(&mut x, &seq, 1);
    assert_eq!(x, vec![0.0, -1.5, 0.0, -2.5, 0.0]);
    let mut y = vec![0.0f32; 5];
    processors::frequency_presence(&mut y, &[2, 2], -1.0, 0.0);
    assert_eq!(y[2], 2.0, "a negative penalty encourages repeats");
}

fn naive_match_lengths(seq: &[u32], breakers: &[u32]) -> Vec<(u32, usize)> {
    let n = seq.len();
    let br = |t: u32| breakers.contains(&t);
    let mut best = std::collections::BTreeMap::new();
    if n < 2 || br(seq[n - 1]) {
        return Vec::new();
    }
    for i in 0..n - 1 {
        if br(seq[i + 1]) {
            continue;
        }
        let mut m = 0;
        while m <= i && seq[i - m] == seq[n - 1 - m] && !br(seq[i - m]) {
            m += 1;
        }
        if m > 0 {
            let e = best.entry(seq[i + 1]).or_insert(0);
            *e = (*e).max(m);
        }
    }
    best.into_iter().collect()
}

#[test]
fn dry_on_a_repeating_sequence() {
    let cfg = DryConfig {
        multiplier: 1.0,
        base: 2.0,
        allowed_length: 2,
        breakers: vec![],
        penalty_last_n: None,
    };
    // a b c d x a b c -> "d" would repeat "a b c d": match length 3, penalty 1 * 2^(3-2).
    let (a, b, c, d, x) = (1u32, 2, 3, 4, 5);
    let seq = [a, b, c, d, x, a, b, c];
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &seq, &cfg, &[]);
    assert_eq!(l, vec![0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0]);
    // A repeat of length 1 is below allowed_length: nothing.
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &[a, d, x, a], &cfg, &[]);
    assert!(l.iter().all(|&v| v == 0.0));
    // Exactly allowed_length: the multiplier alone.
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &[a, b, d, x, a, b], &cfg, &[]);
    assert_eq!(l[d as usize], -1.0);
    // A breaker inside the repeat cuts it: "b" as a breaker leaves "c" alone (length 1).
    let mut breakers = vec![false; 8];
    breakers[b as usize] = true;
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &seq, &cfg, &breakers);
    assert!(l.iter().all(|&v| v == 0.0));
    // The last token is a breaker: nothing.
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &[a, b, x, a, b], &cfg, &breakers);
    assert!(l.iter().all(|&v| v == 0.0));
    // The would-be next token is a breaker: not penalised.
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &[c, a, b, x, c, a], &cfg, &breakers);
    assert!(l.iter().all(|&v| v == 0.0));
    // The window: with the last 4 tokens only, "a b c" has no earlier occurrence.
    let short = DryConfig {
        penalty_last_n: Some(4),
        ..cfg.clone()
    };
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &seq, &short, &[]);
    assert!(l.iter().all(|&v| v == 0.0));
    // A long loop grows the penalty exponentially and stays finite (the sequence ends in "a",
    // so "b" is the token that would continue the loop).
    let looped: Vec<u32> = (0..400).map(|i| [a, b, c][i % 3]).collect();
    let mut l = vec![0.0f32; 8];
    dry::apply(&mut l, &looped, &cfg, &[]);
    assert!(
        l[b as usize].is_finite() && l[b as usize] <= -1e29,
        "{}",
        l[b as usize]
    );
    assert_eq!(l[a as usize], 0.0);
    // Several earlier occurrences: the longest match wins, per next token.
    let seq2 = [x, a, b, c, x, d, b, x, a, b];
    assert_eq!(
        {
            let mut m = dry::match_lengths(&seq2, &|_| false);
            m.sort();
            m
        },
        vec![(c, 3), (x, 1)]
    );
}

#[test]
fn dry_matches_equal_the_naive_definition() {
    let mut rng = nanogpt::rng::Rng::new(7);
    for round in 0..300 {
        let n = 1 + rng.below(60) as usize;
        let k = 2 + (round % 4) as u64;
        let seq: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let breakers: Vec<u32> = if round % 3 == 0 { vec![0] } else { vec![] };
        let mut got = dry::match_lengths(&seq, &|t| breakers.contains(&t));
        got.sort();
        assert_eq!(got, naive_match_lengths(&seq, &breakers), "{seq:?}");
    }
    assert_eq!(dry::z_function(&[1, 1, 2, 1, 1]), vec![5, 1, 0, 2, 1]);
}

#[test]
fn dry_breaker_ids_from_strings() {
    let tok = Tokenizer::gpt2().unwrap();
    let breakers: Vec<String> = nanogpt::sample::DRY_DEFAULT_BREAKERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ids = dry::breaker_ids(300, &breakers, &|id| tok.token_bytes(id)).unwrap();
    // "\n" (198), ":" (25), "\"" (1), "*" (9) and tokens containing them.
    for id in [198u32, 25, 1, 9] {
        assert!(ids.contains(&id), "{id} should be a breaker");
    }
    assert!(!ids.contains(&262), "\" the\" is not a breaker");
}

#[test]
fn stop_scan_across_tokens() {
    let stops = vec!["\nB".to_string(), "xyz".to_string()];
    let mut s = StopScan::default();
    assert_eq!(s.push(b"A\n", &stops), None);
    assert_eq!(s.push(b"BC", &stops), Some((0, 1)));
    // A stop string inside one token, and the first occurrence wins.
    let mut s = StopScan::default();
    assert_eq!(s.push(b"--xyz--\nB", &stops), Some((1, 2)));
}

// ---------------------------------------------------------------------------------------------
// Generation with tiny-gpt2.

/// The argmax continuation computed the slow way: the full forward pass over the last block_size
/// tokens at every step (nanoGPT's loop without a cache).
fn greedy_by_full_forward(model: &mut CpuEngine, prompt: &[u32], steps: usize) -> Vec<u32> {
    let (block, v, vp) = (
        model.config().block_size,
        model.config().vocab_size,
        model.config().padded_vocab_size(),
    );
    let mut seq = prompt.to_vec();
    for _ in 0..steps {
        let ctx = &seq[seq.len().saturating_sub(block)..];
        model
            .forward(ctx, None, 1, ctx.len(), Mode::Eval)
            .expect("forward");
        let last = &model.logits()[(ctx.len() - 1) * vp..][..v];
        seq.push(nanogpt::sample::dist::argmax(last).expect("finite logits") as u32);
    }
    seq[prompt.len()..].to_vec()
}

fn shakespeare_ids(n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(fixtures().join("../data/tinyshakespeare.txt"))
        .unwrap_or_else(|_| {
            "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(40)
        });
    let mut ids = Tokenizer::gpt2().unwrap().encode(&text).unwrap();
    ids.truncate(n);
    assert_eq!(ids.len(), n);
    ids
}

#[test]
fn kv_cache_generation_equals_full_recompute() {
    let mut full = CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap());
    let model = tiny();
    // Short context; then a prompt near block_size (128) so generation crosses the window and
    // the cache is recomputed from the cropped context.
    for (plen, steps) in [(5usize, 40usize), (110, 40)] {
        let prompt = shakespeare_ids(plen);
        let want = greedy_by_full_forward(&mut full, &prompt, steps);
        let got = run(model, &prompt, &SamplingConfig::greedy(steps));
        assert_eq!(got[0].tokens, want, "prompt {plen}");
        // logprobs are the model's log-softmax of the raw logits.
        let mut seq = prompt.clone();
        for (i, (&t, &lp)) in got[0]
            .tokens
            .iter()
            .zip(&got[0].logprobs)
            .enumerate()
            .take(3)
        {
            let mut l = last_logits(model, &seq);
            nanogpt::sample::dist::log_softmax_inplace(&mut l);
            assert!(
                (l[t as usize] - lp).abs() < 1e-4,
                "step {i}: {lp} vs {}",
                l[t as usize]
            );
            seq.push(t);
        }
        assert!(got[0].logprobs.iter().all(|&x| x <= 0.0 && x.is_finite()));
    }
}

#[test]
fn prompt_longer_than_block_size_is_cropped() {
    let model = tiny();
    let prompt = shakespeare_ids(200);
    let block = model.config().block_size;
    let cfg = SamplingConfig::greedy(10);
    let long = run(model, &prompt, &cfg);
    let cropped = run(model, &prompt[prompt.len() - block..], &cfg);
    assert_eq!(long[0].tokens, cropped[0].tokens);
    // The context machinery: a prompt of exactly block_size recomputes on every later step.
    let mut ctx = nanogpt::sample::context::Context::start(model, &prompt, 1, 3).unwrap();
    let mut seq = prompt.clone();
    for t in [198u32, 40] {
        seq.push(t);
        ctx.advance(&[&seq]).unwrap();
    }
    assert_eq!(ctx.recomputes, 2);
}

#[test]
fn empty_prompt_starts_from_eot_or_errors() {
    let model = tiny();
    let cfg = SamplingConfig::greedy(8);
    let eot = IdsOnly { eot: Some(50256) };
    let from_empty = generate(model, &[], &cfg, &eot, &mut |_, _| {}).unwrap();
    let from_eot = generate(model, &[50256], &cfg, &eot, &mut |_, _| {}).unwrap();
    assert_eq!(from_empty, from_eot);
    let err = generate(model, &[], &cfg, &NO_EOS, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("prompt is empty"), "{err}");
    let err = generate(model, &[60000], &cfg, &NO_EOS, &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string().contains("outside the model's vocabulary"),
        "{err}"
    );
}

fn sampling_cfg() -> SamplingConfig {
    SamplingConfig {
        num_samples: 4,
        max_new_tokens: 30,
        ..SamplingConfig::default()
    }
}

#[test]
fn streaming_equals_non_streaming_and_batching_does_not_matter() {
    let model = tiny();
    let prompt = [33676, 4720, 25];
    let cfg = SamplingConfig {
        top_p: Some(0.95),
        repetition_penalty: 1.1,
        ..sampling_cfg()
    };
    let mut streamed = vec![Vec::new(); cfg.num_samples];
    let gens = generate(model, &prompt, &cfg, &NO_EOS, &mut |s, t| {
        streamed[s].push(t)
    })
    .unwrap();
    let plain = run(model, &prompt, &cfg);
    assert_eq!(gens, plain, "same seed, same samples");
    for (s, g) in gens.iter().enumerate() {
        assert_eq!(streamed[s], g.tokens, "sample {s}");
        assert_eq!(g.tokens.len(), 30);
    }
    let distinct: std::collections::HashSet<_> = gens.iter().map(|g| &g.tokens).collect();
    assert!(distinct.len() > 1, "samples should differ");
    // One sample per batch gives the same samples (each has its own random stream).
    let one_by_one = run(
        model,
        &prompt,
        &SamplingConfig {
            batch_size: 1,
            ..cfg.clone()
        },
    );
    assert_eq!(one_by_one, gens);
    let other_seed = run(model, &prompt, &SamplingConfig { seed: 1, ..cfg });
    assert_ne!(other_seed, gens);
}

#[test]
fn temperature_zero_and_top_k_one_are_greedy() {
    let model = tiny();
    let prompt = [1639, 389, 616, 34488, 13];
    let greedy = run(model, &prompt, &SamplingConfig::greedy(20));
    let t0 = run(
        model,
        &prompt,
        &SamplingConfig {
            num_samples: 1,
            max_new_tokens: 20,
            temperature: 0.0,
            ..SamplingConfig::default()
        },
    );
    let k1 = run(
        model,
        &prompt,
        &SamplingConfig {
            num_samples: 2,
            max_new_tokens: 20,
            top_k: Some(1),
            ..SamplingConfig::default()
        },
    );
    assert_eq!(t0[0].tokens, greedy[0].tokens);
    assert_eq!(k1[0].tokens, greedy[0].tokens);
    assert_eq!(k1[1].tokens, greedy[0].tokens);
}

#[test]
fn eot_and_stop_strings_end_samples() {
    let model = tiny();
    let tok = Tokenizer::gpt2().unwrap();
    let prompt = [33676, 4720, 25]; // "ROMEO:" -> greedy "\nIUS:\nI'll not not, sir, ..."
                                    // Pretend "IUS" (2937) is the end-of-text token: the sample ends before it.
    let fake_eot = IdsOnly { eot: Some(2937) };
    let mut streamed = Vec::new();
    let g = generate(
        model,
        &prompt,
        &SamplingConfig::greedy(40),
        &fake_eot,
        &mut |_, t| streamed.push(t),
    )
    .unwrap();
    assert_eq!(g[0].tokens, vec![198, 40]);
    assert_eq!(g[0].finished_by, FinishReason::Eot);
    assert_eq!(streamed, vec![198, 40]);
    // stop_at_eot = false: it is an ordinary token.
    let g = generate(
        model,
        &prompt,
        &SamplingConfig {
            stop_at_eot: false,
            ..SamplingConfig::greedy(40)
        },
        &fake_eot,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(g[0].tokens.len(), 40);
    // A stop string: ends at the token that completes it.
    let cfg = SamplingConfig {
        stop: vec!["sir".into(), ":".into()],
        ..SamplingConfig::greedy(40)
    };
    let g = generate(model, &prompt, &cfg, &tok, &mut |_, _| {}).unwrap();
    assert_eq!(g[0].tokens, vec![198, 40, 2937, 25]);
    assert_eq!(
        g[0].finished_by,
        FinishReason::Stop {
            index: 1,
            at_byte: 4
        }
    );
    let text = tok.decode(&g[0].tokens).unwrap();
    assert_eq!(&text[..4], "\nIUS");
    // Stop strings without a tokenizer: a clear error up front.
    let err = generate(model, &prompt, &cfg, &NO_EOS, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("tokenizer"), "{err}");
    // Finished samples leave the batch; the others go on.
    let cfg = SamplingConfig {
        num_samples: 6,
        max_new_tokens: 25,
        temperature: 1.0,
        top_k: None,
        stop: vec!["\n".into()],
        ..SamplingConfig::default()
    };
    let gens = generate(model, &prompt, &cfg, &tok, &mut |_, _| {}).unwrap();
    for g in &gens {
        let text = String::from_utf8_lossy(&tok.decode_bytes_of(&g.tokens)).into_owned();
        match &g.finished_by {
            FinishReason::Stop { index: 0, at_byte } => {
                assert_eq!(text.find('\n'), Some(*at_byte));
            }
            FinishReason::Length => {
                assert_eq!(g.tokens.len(), 25);
                assert!(!text.contains('\n'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

trait DecodeBytes {
    fn decode_bytes_of(&self, ids: &[u32]) -> Vec<u8>;
}

impl DecodeBytes for Tokenizer {
    fn decode_bytes_of(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&t| self.token_bytes(t).unwrap())
            .collect()
    }
}

#[test]
fn beam_search_returns_sequences_best_first() {
    let model = tiny();
    let prompt = [1639, 389, 616, 34488, 13];
    let cfg = SamplingConfig {
        num_beams: 5,
        num_return_sequences: 5,
        early_stopping: EarlyStopping::True,
        ..SamplingConfig::greedy(12)
    };
    let mut streamed = vec![Vec::new(); 5];
    let gens = generate(model, &prompt, &cfg, &NO_EOS, &mut |s, t| {
        streamed[s].push(t)
    })
    .unwrap();
    assert_eq!(gens.len(), 5);
    let scores: Vec<f32> = gens.iter().map(|g| g.score.unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let distinct: std::collections::HashSet<_> = gens.iter().map(|g| &g.tokens).collect();
    assert_eq!(distinct.len(), 5);
    for (s, g) in gens.iter().enumerate() {
        assert_eq!(g.tokens.len(), 12);
        assert_eq!(g.finished_by, FinishReason::Length);
        assert_eq!(streamed[s], g.tokens);
        // Without penalties the score is the mean model log-prob (length_penalty 1).
        let mean = g.logprobs.iter().map(|&x| x as f64).sum::<f64>() / 12.0;
        assert!((mean as f32 - g.score.unwrap()).abs() < 1e-4);
    }
    // One beam is greedy search.
    let one = nanogpt::sample::beam_search(
        model,
        &prompt,
        &SamplingConfig {
            num_beams: 1,
            ..SamplingConfig::greedy(12)
        },
        &NO_EOS,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        one[0].tokens,
        run(model, &prompt, &SamplingConfig::greedy(12))[0].tokens
    );
    // Too many return sequences is a clear error.
    let err = generate(
        model,
        &prompt,
        &SamplingConfig {
            num_beams: 2,
            num_return_sequences: 3,
            ..SamplingConfig::greedy(4)
        },
        &NO_EOS,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("num_return_sequences"), "{err}");
}

#[test]
fn beam_search_with_end_of_text() {
    let model = tiny();
    let prompt = [33676, 4720, 25];
    // "\n" (198) as end-of-text: it is the most likely first token, so hypotheses finish early.
    let eot = IdsOnly { eot: Some(198) };
    for early in [
        EarlyStopping::True,
        EarlyStopping::False,
        EarlyStopping::Never,
    ] {
        let cfg = SamplingConfig {
            num_beams: 3,
            num_return_sequences: 3,
            early_stopping: early,
            ..SamplingConfig::greedy(15)
        };
        let gens = generate(model, &prompt, &cfg, &eot, &mut |_, _| {}).unwrap();
        assert_eq!(gens.len(), 3);
        let scores: Vec<f32> = gens.iter().map(|g| g.score.unwrap()).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "{early:?}: {scores:?}"
        );
        for g in &gens {
            assert!(!g.tokens.contains(&198));
            assert_eq!(g.tokens.len(), g.logprobs.len());
            if g.finished_by == FinishReason::Eot {
                // Normalised by the generated length, the end-of-text token included.
                assert!(g.tokens.len() < 15);
            }
        }
        assert!(
            gens.iter().any(|g| g.finished_by == FinishReason::Eot),
            "{early:?}"
        );
    }
}

#[test]
fn beam_sampling_is_seeded() {
    let model = tiny();
    let prompt = [33676, 4720, 25];
    let cfg = SamplingConfig {
        num_beams: 3,
        num_return_sequences: 2,
        max_new_tokens: 15,
        ..SamplingConfig::default()
    };
    let a = run(model, &prompt, &cfg);
    let b = run(model, &prompt, &cfg);
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|g| g.tokens.len() == 15));
}

/// With every cache: f32, bf16 and int8 (whose scales move with their rows).
#[test]
fn kv_cache_reorder_permutes_duplicates_and_drops_rows() {
    for kv in [KvDtype::Float32, KvDtype::Bfloat16, KvDtype::Int8] {
        let mut engine =
            CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).expect("load tiny-gpt2"));
        engine
            .set_kv_cache_dtype(Some(kv))
            .expect("the CPU has every cache");
        let model = &engine;
        let (v, vp) = (
            model.config().vocab_size,
            model.config().padded_vocab_size(),
        );
        let seqs = [
            shakespeare_ids(9),
            shakespeare_ids(20)[11..].to_vec(),
            vec![50256; 9],
        ];
        let mut cache = model.kv_cache(3, 12);
        let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
        let mut logits = vec![0.0; 3 * vp];
        model
            .forward_cached_all(&mut cache, &flat, 9, &mut logits)
            .unwrap();
        let next = [198u32, 13, 11, 40];
        for rows in [vec![2, 0, 0], vec![1, 2, 0], vec![1], vec![2, 1, 0, 0]] {
            let mut c = model.kv_cache(3, 12);
            model
                .forward_cached_all(&mut c, &flat, 9, &mut logits)
                .unwrap();
            model.reorder_cache(&mut c, &rows).unwrap();
            assert_eq!(c.rows(), rows.len());
            let b = rows.len();
            let mut got = vec![0.0; b * vp];
            model
                .forward_cached_all(&mut c, &next[..b], 1, &mut got)
                .unwrap();
            for (i, &r) in rows.iter().enumerate() {
                let mut s = seqs[r].clone();
                s.push(next[i]);
                let want = last_logits(model, &s);
                let e = common::rel_err(&got[i * vp..i * vp + v], &want);
                assert!(e < 1e-5, "{kv} cache, rows {rows:?}, row {i}: rel err {e}");
            }
        }
        assert!(model.reorder_cache(&mut cache, &[3]).is_err());
    }
}

#[test]
fn validation_errors_name_the_knob() {
    let beams = |groups, diversity| SamplingConfig {
        num_beams: 4,
        num_beam_groups: groups,
        diversity_penalty: diversity,
        ..SamplingConfig::greedy(4)
    };
    for (cfg, knob) in [
        (
            SamplingConfig {
                eta_cutoff: Some(0.0),
                ..Default::default()
            },
            "eta_cutoff",
        ),
        (beams(3, 1.0), "num_beam_groups"),
        (beams(2, 0.0), "diversity_penalty"),
        (beams(1, 1.0), "diversity_penalty"),
        (
            SamplingConfig {
                temperature: 1.0,
                do_sample: true,
                ..beams(2, 1.0)
            },
            "deterministic",
        ),
        (
            SamplingConfig {
                penalty_alpha: 1.5,
                top_k: Some(4),
                ..SamplingConfig::greedy(4)
            },
            "penalty_alpha",
        ),
        (
            SamplingConfig {
                penalty_alpha: 0.6,
                top_k: Some(4),
                num_beams: 2,
                ..SamplingConfig::greedy(4)
            },
            "num_beams=1",
        ),
        (
            SamplingConfig {
                bad_words_ids: vec![vec![]],
                ..Default::default()
            },
            "bad_words",
        ),
        (
            SamplingConfig {
                exponential_decay_length_penalty: Some(LengthDecay {
                    start: 1,
                    factor: 0.0,
                }),
                ..Default::default()
            },
            "exponential_decay_length_penalty",
        ),
        (
            SamplingConfig {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingConfig {
                num_samples: 0,
                ..Default::default()
            },
            "num_samples",
        ),
        (
            SamplingConfig {
                num_return_sequences: 2,
                ..Default::default()
            },
            "num_return_sequences",
        ),
        (
            SamplingConfig {
                num_return_sequences: 0,
                ..Default::default()
            },
            "num_return_sequences must be at least 1",
        ),
        (
            SamplingConfig {
                stop: vec![String::new()],
                ..Default::default()
            },
            "stop string",
        ),
    ] {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(knob), "{err}");
    }
    SamplingConfig::default().validate().unwrap();
}

#[test]
fn penalties_break_greedy_loops() {
    // Greedy tiny-gpt2 loops ("Ander,\nAnder,\n..."); DRY and the OpenAI penalties should cut
    // the repetition.
    let model = tiny();
    let tok = Tokenizer::gpt2().unwrap();
    let prompt = [1639, 389, 616, 34488, 13];
    let rep4 = |cfg: &SamplingConfig| {
        let g = generate(model, &prompt, cfg, &tok, &mut |_, _| {}).unwrap();
        repetition::seq_rep_n_one(&g[0].tokens, 4)
    };
    let base = SamplingConfig {
        stop_at_eot: false,
        ..SamplingConfig::greedy(60)
    };
    let greedy = rep4(&base);
    let breakers: Vec<String> = ["\n", ":"].iter().map(|s| s.to_string()).collect();
    let dry_cfg = SamplingConfig {
        dry: DryConfig {
            multiplier: 0.8,
            breakers: dry::breaker_ids(50257, &breakers, &|id| tok.token_bytes(id)).unwrap(),
            ..DryConfig::default()
        },
        ..base.clone()
    };
    let freq = SamplingConfig {
        frequency_penalty: 0.5,
        presence_penalty: 0.5,
        ..base.clone()
    };
    let (d, f) = (rep4(&dry_cfg), rep4(&freq));
    eprintln!("seq-rep-4: greedy {greedy:.3}, DRY {d:.3}, frequency+presence {f:.3}");
    assert!(greedy > 0.3, "greedy should loop: {greedy}");
    assert!(d < greedy && f < greedy);
}

// ---------------------------------------------------------------------------------------------
// Repetition metrics.

#[test]
fn rep_n_diversity_and_distinct_n() {
    let a: &[u32] = &[1, 2, 3, 1, 2, 3]; // bigrams: 12 23 31 12 23 -> 3 unique of 5
    let b: &[u32] = &[1, 2, 4]; // 12 24 -> 2 of 2
    assert_eq!(repetition::ngram_counts(a, 2), (3, 5));
    let rep2 = repetition::rep_n(&[a, b], 2);
    assert!((rep2 - (1.0 - 5.0 / 7.0)).abs() < 1e-12);
    // distinct-2 pools the n-grams of all generations: {12, 23, 31, 24} of 7.
    assert!((repetition::distinct_n(&[a, b], 2) - 4.0 / 7.0).abs() < 1e-12);
    // seq-rep-2 averages per sequence: (1 - 3/5 + 0) / 2.
    assert!((repetition::seq_rep_n(&[a, b], 2) - 0.2).abs() < 1e-12);
    // No repeats: rep 0, diversity 1.
    let c: &[u32] = &[1, 2, 3, 4, 5, 6];
    assert_eq!(repetition::rep_n(&[c], 4), 0.0);
    assert_eq!(repetition::diversity(&[c]), 1.0);
    // Too short for any n-gram.
    assert_eq!(repetition::rep_n(&[&[1u32][..]], 2), 0.0);
    assert_eq!(repetition::distinct_n::<u32>(&[], 2), 0.0);
    // Works on words too.
    let w: Vec<&str> = "the king the king the king".split(' ').collect();
    assert!((repetition::seq_rep_n_one(&w, 2) - (1.0 - 2.0 / 5.0)).abs() < 1e-12);
}

#[test]
fn ends_in_loop_definition() {
    let rule = LoopRule::default();
    // "IUS:\n" (3 tokens... here 4) repeated to the end, cut mid-phrase.
    let s = [9u32, 198, 40, 2937, 25, 198, 40, 2937, 25, 198, 40];
    assert_eq!(repetition::trailing_loop(&s, &rule), Some((4, 10)));
    // A single copy is not a loop; neither is a loop that stopped before the end.
    assert!(!repetition::ends_in_loop(&[1u32, 2, 3, 4, 5, 6, 7], &rule));
    assert!(!repetition::ends_in_loop(&[1u32, 2, 3, 1, 2, 3, 9], &rule));
    // Two back-to-back copies of a 3-token phrase are.
    assert!(repetition::ends_in_loop(&[7u32, 1, 2, 3, 1, 2, 3], &rule));
    // A shorter cycle counts once two copies of a 3+-token phrase made of it repeat: "1 2" needs
    // "1 2 1 2" twice, a single token "7 7 7" twice.
    assert!(!repetition::ends_in_loop(&[5u32, 1, 2, 1, 2, 1, 2], &rule));
    assert!(repetition::ends_in_loop(
        &[5u32, 1, 2, 1, 2, 1, 2, 1, 2],
        &rule
    ));
    assert!(repetition::ends_in_loop(&[0u32, 7, 7, 7, 7, 7, 7], &rule));
    // Stricter rules.
    let strict = LoopRule {
        min_copies: 3,
        min_tokens: 9,
        ..rule
    };
    assert!(!repetition::ends_in_loop(
        &[7u32, 1, 2, 3, 1, 2, 3],
        &strict
    ));
    assert!(repetition::ends_in_loop(
        &[7u32, 1, 2, 3, 1, 2, 3, 1, 2, 3],
        &strict
    ));
    assert!(!repetition::ends_in_loop::<u32>(&[], &rule));
}

#[test]
fn measure_reports_every_metric() {
    let gens = vec![
        Generation {
            tokens: vec![1, 2, 3, 1, 2, 3, 1, 2, 3],
            logprobs: vec![-1.0; 9],
            finished_by: FinishReason::Length,
            score: None,
            loop_events: Vec::new(),
        },
        Generation {
            tokens: vec![4, 5, 6, 7],
            logprobs: vec![-3.0; 4],
            finished_by: FinishReason::Eot,
            score: None,
            loop_events: Vec::new(),
        },
    ];
    let st = repetition::measure_generations(&gens, &LoopRule::default());
    assert_eq!(st.samples, 2);
    assert_eq!(st.tokens, 13);
    assert_eq!(st.loop_share, 0.5);
    assert!((st.mean_logprob.unwrap() - (-21.0 / 13.0)).abs() < 1e-12);
    // rep-4: first has 6 four-grams, 3 unique; second 1 of 1 -> 1 - 4/7.
    assert!((st.rep_4 - (1.0 - 4.0 / 7.0)).abs() < 1e-12);
    assert!((st.seq_rep_4 - 0.25).abs() < 1e-12);
    assert!(st.distinct_1 > 0.0 && st.distinct_1 < 1.0);
}

/// Each batch's generations are handed out as soon as the batch ends, before the next batch
/// starts, so `nanogpt sample` holds one batch, not every sample; and the default batch is
/// bounded.
#[test]
fn generations_are_handed_out_batch_by_batch() {
    assert_eq!(SamplingConfig::default().batch_size, 64);
    let model = tiny();
    let tok = Tokenizer::gpt2().unwrap();
    let cfg = SamplingConfig {
        num_samples: 5,
        batch_size: 2,
        max_new_tokens: 3,
        do_sample: true,
        stop_at_eot: false,
        ..SamplingConfig::default()
    };
    let events = std::cell::RefCell::new(Vec::new());
    let mut done = Vec::new();
    generate_each(
        model,
        &[1639, 389],
        &cfg,
        &tok,
        &mut |s, _| events.borrow_mut().push(("token", s)),
        &mut |s, g| {
            events.borrow_mut().push(("done", s));
            done.push(g);
            Ok(())
        },
    )
    .unwrap();
    let events = events.into_inner();
    let first_done = |s: usize| events.iter().position(|&e| e == ("done", s)).unwrap();
    let first_token = |s: usize| events.iter().position(|&e| e == ("token", s)).unwrap();
    // Samples 0 and 1 are done before batch {2, 3} starts, and 3 before 4 starts.
    assert!(first_done(1) < first_token(2), "{events:?}");
    assert!(first_done(3) < first_token(4), "{events:?}");
    let order: Vec<usize> = events
        .iter()
        .filter(|e| e.0 == "done")
        .map(|e| e.1)
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
    assert_eq!(
        done,
        generate(model, &[1639, 389], &cfg, &tok, &mut |_, _| {}).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// The loop guard and generation past block_size.

const JULIET: &str = "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n";

fn guard(mode: LoopGuardMode) -> LoopGuardConfig {
    LoopGuardConfig {
        mode,
        ..SamplingConfig::default().loop_guard
    }
}

/// The model's log-probability of each token of `tokens` after `prompt`, from one uncached
/// forward pass over the whole sequence (at most block_size tokens).
fn logprobs_by_full_forward(model: &mut CpuEngine, prompt: &[u32], tokens: &[u32]) -> Vec<f32> {
    let (v, vp) = (
        model.config().vocab_size,
        model.config().padded_vocab_size(),
    );
    let seq = [prompt, tokens].concat();
    model
        .forward(&seq, None, 1, seq.len(), Mode::Eval)
        .expect("forward");
    (0..tokens.len())
        .map(|i| {
            let mut row = model.logits()[(prompt.len() - 1 + i) * vp..][..v].to_vec();
            nanogpt::sample::dist::log_softmax_inplace(&mut row);
            row[tokens[i] as usize]
        })
        .collect()
}

/// No prefix of `tokens` ends in a loop by the guard's rule: no loop was left in the text.
fn assert_loop_free(tokens: &[u32], cfg: &LoopGuardConfig) {
    for end in 1..=tokens.len() {
        assert_eq!(
            loop_guard::detect(&tokens[..end], cfg.spans, cfg.repeats),
            None,
            "a loop ends at {end}: {tokens:?}"
        );
    }
}

#[test]
fn loop_guard_stop_ends_the_sample_where_greedy_starts_looping() {
    let model = tiny();
    let prompt = Tokenizer::gpt2().unwrap().encode(JULIET).unwrap();
    let plain = run(model, &prompt, &SamplingConfig::greedy(100));
    let cfg = SamplingConfig {
        loop_guard: guard(LoopGuardMode::Stop),
        ..SamplingConfig::greedy(100)
    };
    let g = &run(model, &prompt, &cfg)[0];
    assert_eq!(g.finished_by, FinishReason::Loop);
    assert!(plain[0].tokens.starts_with(&g.tokens));
    let [e] = g.loop_events[..] else {
        panic!("one event: {:?}", g.loop_events)
    };
    assert_eq!(e.action, LoopAction::Stop);
    // The sample ends with exactly `repeats` copies of the span, beginning at `position`, and
    // no shorter prefix held a loop.
    let tail = &g.tokens[e.position..];
    assert_eq!(tail.len(), cfg.loop_guard.repeats * e.span);
    assert!(tail.chunks(e.span).all(|c| c == &tail[..e.span]));
    assert_loop_free(&g.tokens[..g.tokens.len() - 1], &cfg.loop_guard);
}

#[test]
fn loop_guard_backtrack_deletes_loops_and_rewinds_the_cache() {
    let mut full = CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap());
    let model = tiny();
    let prompt = Tokenizer::gpt2().unwrap().encode(JULIET).unwrap();
    let n = 100;
    assert!(prompt.len() + n <= model.config().block_size);
    let plain = &run(model, &prompt, &SamplingConfig::greedy(n))[0];
    let cfg = SamplingConfig {
        loop_guard: guard(LoopGuardMode::Backtrack),
        ..SamplingConfig::greedy(n)
    };
    let g = &run(model, &prompt, &cfg)[0];
    assert_eq!(g.finished_by, FinishReason::Length);
    assert_eq!(g.tokens.len(), n);
    let first = g
        .loop_events
        .first()
        .expect("greedy loops here, so the guard fires");
    assert!(g
        .loop_events
        .iter()
        .all(|e| e.action == LoopAction::Backtrack));
    // Greedy up to where the first loop began, then the banned token is gone from there.
    assert_eq!(g.tokens[..first.position], plain.tokens[..first.position]);
    assert_ne!(g.tokens[first.position], plain.tokens[first.position]);
    assert_loop_free(&g.tokens, &cfg.loop_guard);
    // After every rewind the cache holds exactly the kept tokens: each log-probability is the
    // one a fresh forward pass over the final text gives.
    let want = logprobs_by_full_forward(&mut full, &prompt, &g.tokens);
    for (i, (&a, &b)) in g.logprobs.iter().zip(&want).enumerate() {
        assert!(close(a, b), "token {i}: {a} vs {b}");
    }
    // Past block_size, a backtrack still leaves crop's window the last block_size tokens.
    let block = model.config().block_size;
    let long = [shakespeare_ids(block - 30), prompt].concat();
    let g = &run(model, &long, &cfg)[0];
    assert!(!g.loop_events.is_empty());
    let mut seq = long.clone();
    for (i, (&t, &lp)) in g.tokens.iter().zip(&g.logprobs).enumerate() {
        let mut l = last_logits(model, &seq[seq.len().saturating_sub(block)..]);
        nanogpt::sample::dist::log_softmax_inplace(&mut l);
        assert!(
            close(l[t as usize], lp),
            "token {i}: {lp} vs {}",
            l[t as usize]
        );
        seq.push(t);
    }
}

#[test]
fn loop_guard_keeps_state_per_sample_in_a_batch() {
    let mut full = CpuEngine::new(load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap());
    let model = tiny();
    let prompt = Tokenizer::gpt2().unwrap().encode(JULIET).unwrap();
    let cfg = SamplingConfig {
        num_samples: 3,
        max_new_tokens: 70,
        temperature: 0.3,
        top_k: Some(5),
        loop_guard: guard(LoopGuardMode::Backtrack),
        ..SamplingConfig::default()
    };
    let mut streamed = vec![Vec::new(); cfg.num_samples];
    let gens = generate(model, &prompt, &cfg, &NO_EOS, &mut |s, t| {
        streamed[s].push(t)
    })
    .unwrap();
    for (s, g) in gens.iter().enumerate() {
        assert_eq!(streamed[s], g.tokens, "sample {s}: streamed = returned");
        assert_loop_free(&g.tokens, &cfg.loop_guard);
        let want = logprobs_by_full_forward(&mut full, &prompt, &g.tokens);
        assert!(
            g.logprobs.iter().zip(&want).all(|(&a, &b)| close(a, b)),
            "sample {s}: the cache row was rewound with the sample"
        );
    }
    // Rows backtrack at different moments and still give each sample what it gets alone.
    let fired: Vec<usize> = gens.iter().map(|g| g.loop_events.len()).collect();
    assert!(fired.iter().any(|&f| f > 0), "{fired:?}");
    let alone = run(
        model,
        &prompt,
        &SamplingConfig {
            batch_size: 1,
            ..cfg.clone()
        },
    );
    assert_eq!(alone, gens);
}

#[test]
fn loop_guard_settings_are_checked() {
    let mut cfg = SamplingConfig {
        loop_guard: guard(LoopGuardMode::Backtrack),
        ..SamplingConfig::greedy(4)
    };
    cfg.loop_guard.repeats = 1;
    assert!(format!("{:#}", cfg.validate().unwrap_err()).contains("loop_guard_repeats"));
    cfg.loop_guard.repeats = 3;
    cfg.num_beams = 2;
    assert!(format!("{:#}", cfg.validate().unwrap_err()).contains("beam"));
}

/// Greedy decoding that recomputes the model's window from scratch at every step (a fresh
/// cache each time, so nothing carries over between steps): `window(seq, w)` gives the start
/// of the window the model sees, given the previous one.
fn greedy_from_scratch(
    model: &dyn Engine,
    prompt: &[u32],
    steps: usize,
    window: &dyn Fn(usize, usize) -> usize,
) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut w = 0;
    for _ in 0..steps {
        w = window(seq.len(), w);
        let logits = last_logits(model, &seq[w..]);
        seq.push(nanogpt::sample::dist::argmax(&logits).expect("finite logits") as u32);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn crop_equals_nanogpt_and_slide_its_own_window_to_three_blocks() {
    let model = tiny();
    let block = model.config().block_size;
    let prompt = shakespeare_ids(5);
    // The sequence reaches 3 x block_size tokens.
    let steps = 3 * block - prompt.len();
    // nanoGPT: the last block_size tokens, every step.
    let crop = run(model, &prompt, &SamplingConfig::greedy(steps));
    let nanogpt = greedy_from_scratch(model, &prompt, steps, &|len, _| len.saturating_sub(block));
    assert_eq!(crop[0].tokens, nanogpt);
    // Slide: the window keeps its start until it would exceed block_size, then keeps the last
    // half block.
    let slide_cfg = SamplingConfig {
        context: ContextMode::Slide,
        ..SamplingConfig::greedy(steps)
    };
    let slide = run(model, &prompt, &slide_cfg);
    let sliding = greedy_from_scratch(model, &prompt, steps, &|len, w| {
        if len - w > block {
            len - block / 2
        } else {
            w
        }
    });
    assert_eq!(slide[0].tokens, sliding);
    assert_ne!(slide[0].tokens, crop[0].tokens, "slide is an approximation");
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's samplers in generation (their formulas on hand-made logits: the unit tests of
// src/sample/llama_samplers.rs).

#[test]
fn mirostat_with_a_tiny_target_surprise_is_greedy() {
    let model = tiny();
    let prompt = [33676, 4720, 25];
    let greedy = run(model, &prompt, &SamplingConfig::greedy(40));
    // mu starts at 2 tau = 0.02 bits: v2 keeps only the most likely token, and mu grows by
    // eta * tau per step, far from any second token's surprise.
    let cfg = SamplingConfig {
        mirostat: 2,
        mirostat_tau: 0.01,
        temperature: 1.0,
        top_k: None,
        num_samples: 1,
        max_new_tokens: 40,
        ..SamplingConfig::default()
    };
    assert_eq!(run(model, &prompt, &cfg)[0].tokens, greedy[0].tokens);
    // At llama.cpp's default target (5 bits) it samples, seeded and batch-independent.
    for version in [1, 2] {
        let cfg = SamplingConfig {
            mirostat: version,
            mirostat_tau: 5.0,
            num_samples: 3,
            ..cfg.clone()
        };
        let gens = run(model, &prompt, &cfg);
        assert_ne!(gens[0].tokens, greedy[0].tokens, "v{version}");
        let alone = run(
            model,
            &prompt,
            &SamplingConfig {
                batch_size: 1,
                ..cfg
            },
        );
        assert_eq!(alone, gens, "v{version}");
    }
}

#[test]
fn xtc_always_on_with_top_k_two_picks_the_second_choice() {
    let model = tiny();
    let prompt = [33676, 4720, 25];
    let cfg = SamplingConfig {
        num_samples: 1,
        max_new_tokens: 15,
        temperature: 1.0,
        top_k: Some(2),
        xtc_probability: 1.0,
        xtc_threshold: 0.0,
        ..SamplingConfig::default()
    };
    let g = &run(model, &prompt, &cfg)[0];
    let mut seq = prompt.to_vec();
    for &t in &g.tokens {
        let mut l = last_logits(model, &seq);
        let top = nanogpt::sample::dist::argmax(&l).unwrap();
        l[top] = NEG;
        assert_eq!(t as usize, nanogpt::sample::dist::argmax(&l).unwrap());
        seq.push(t);
    }
    let bad = SamplingConfig {
        xtc_probability: 1.5,
        ..cfg.clone()
    };
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("xtc_probability"));
    let bad = SamplingConfig { mirostat: 3, ..cfg };
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("mirostat"));
}

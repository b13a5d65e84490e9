//! Weight I/O, determinism and KV-cache inference.

mod common;

use common::{fixtures, rel_err, TempDir};
use nanogpt::config::GptConfig;
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{AdamW, Engine, Feed, Mode};
use nanogpt::model::weights::{load_hf_dir, save_hf_dir};
use nanogpt::model::Gpt;
use nanogpt::rng::Rng;

fn small_config(bias: bool, dropout: f32) -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 4,
        n_embd: 32,
        block_size: 64,
        vocab_size: 97,
        pad_vocab: true,
        bias,
        dropout,
        arch: Default::default(),
    }
}

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

#[test]
fn both_hf_layouts_load_identically() {
    let a = load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap();
    let b = load_hf_dir(&fixtures().join("tiny-gpt2-hub-layout")).unwrap();
    assert_eq!(a.config, b.config);
    assert!(
        a.params == b.params,
        "the two layouts gave different parameters"
    );
    assert!(a.params.iter().any(|&x| x != 0.0));
}

#[test]
fn save_and_reload_is_lossless() {
    let a = load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap();
    let dir = TempDir::new("model", "save");
    save_hf_dir(&a, &dir).unwrap();
    let b = load_hf_dir(&dir).unwrap();
    assert_eq!(a.config, b.config);
    assert!(a.params == b.params, "saved weights differ after reload");
    // Same tensors, byte for byte, as the save_pretrained file we loaded.
    let ours = std::fs::read(dir.join("model.safetensors")).unwrap();
    let theirs = std::fs::read(fixtures().join("tiny-gpt2/model.safetensors")).unwrap();
    let (ours, theirs) = (
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut names: Vec<_> = theirs
        .names()
        .into_iter()
        .filter(|n| !n.ends_with(".attn.bias") && !n.starts_with("lm_head"))
        .collect();
    names.sort();
    assert_eq!(names.len(), ours.names().len());
    for n in names {
        assert_eq!(
            ours.tensor(n).unwrap().data(),
            theirs.tensor(n).unwrap().data(),
            "{n}"
        );
    }
}

#[test]
fn missing_or_truncated_weights_name_the_file() {
    let err = load_hf_dir(std::path::Path::new("/nonexistent/model"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/model/config.json"), "{err}");
    let dir = TempDir::new("model", "trunc");
    std::fs::copy(
        fixtures().join("tiny-gpt2/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixtures().join("tiny-gpt2/model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", load_hf_dir(&dir).err().unwrap());
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

/// Three training steps; returns the losses.
fn train_losses(cfg: &GptConfig, seed: u64) -> Vec<f32> {
    let mut model = CpuEngine::new(Gpt::new(cfg.clone(), seed).unwrap());
    model.set_adamw(AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let (b, t) = (3, 16);
    (0..3)
        .map(|step| {
            let x = random_tokens(b * t, cfg.vocab_size, 100 + step);
            let y: Vec<i32> = random_tokens(b * t, cfg.vocab_size, 200 + step)
                .iter()
                .map(|&v| v as i32)
                .collect();
            model.zero_grad();
            let loss = model
                .forward(&x, Some(&y), b, t, Mode::Train { seed: step })
                .unwrap()
                .unwrap();
            model.backward(1.0).unwrap();
            model.update(1e-3, 1.0);
            loss
        })
        .collect()
}

#[test]
fn same_seed_gives_bit_identical_losses() {
    for cfg in [small_config(true, 0.0), small_config(false, 0.1)] {
        let (a, b) = (train_losses(&cfg, 7), train_losses(&cfg, 7));
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_ne!(
            a,
            train_losses(&cfg, 8),
            "a different seed should give different losses"
        );
    }
}

#[test]
fn kv_cache_logits_equal_full_forward() {
    for model in [
        Gpt::new(small_config(true, 0.0), 3).unwrap(),
        load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap(),
    ] {
        let mut model = CpuEngine::new(model);
        let (b, t, prompt) = (2, 24, 7);
        let (v, vp) = (
            model.config().vocab_size,
            model.config().padded_vocab_size(),
        );
        let tokens = random_tokens(b * t, v, 11);
        model.forward(&tokens, None, b, t, Mode::Eval).unwrap();
        let full = model.logits().to_vec();
        let mut cache = model.kv_cache(b, t);
        let mut logits = vec![0.0; b * vp];
        let mut pos = 0;
        while pos < t {
            let n = if pos == 0 { prompt } else { 1 };
            let chunk: Vec<u32> = (0..b)
                .flat_map(|bi| tokens[bi * t + pos..bi * t + pos + n].iter().copied())
                .collect();
            model
                .forward_cached_all(&mut cache, &chunk, n, &mut logits)
                .unwrap();
            pos += n;
            for bi in 0..b {
                let want = &full[(bi * t + pos - 1) * vp..][..v];
                let e = rel_err(&logits[bi * vp..bi * vp + v], want);
                assert!(
                    e < 1e-5,
                    "position {}: cached logits differ from full forward (rel {e})",
                    pos - 1
                );
            }
        }
        assert!(
            model
                .forward_cached_all(&mut cache, &tokens[..b], 1, &mut logits)
                .is_err(),
            "a full cache must refuse more tokens"
        );
    }
}

/// Greedy continuation of each sequence alone, one row in its own cache: (tokens, the logits of
/// every step).
fn greedy_alone(model: &dyn Engine, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let (v, vp) = (
        model.config().vocab_size,
        model.config().padded_vocab_size(),
    );
    let mut cache = model.kv_cache(1, prompt.len() + steps);
    let mut logits = vec![0.0; vp];
    let (mut out, mut all) = (Vec::new(), Vec::new());
    let mut feed = prompt.to_vec();
    for _ in 0..steps {
        model
            .forward_cached(
                &mut cache,
                &[Feed {
                    row: 0,
                    tokens: &feed,
                }],
                &mut logits,
            )
            .unwrap();
        all.push(logits[..v].to_vec());
        let next = nanogpt::sample::dist::argmax(&logits[..v]).unwrap() as u32;
        out.push(next);
        feed = vec![next];
    }
    (out, all)
}

/// A continuous-batching schedule: sequences join a shared cache at different times (one row
/// prefills while the others decode), a finished row is freed and reused by a new sequence, and
/// one pass may feed only some rows. Each sequence must decode exactly as it does alone.
#[test]
fn ragged_batch_decodes_each_sequence_as_alone() {
    for model in [
        Gpt::new(small_config(true, 0.0), 5).unwrap(),
        load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap(),
    ] {
        let model = CpuEngine::new(model);
        let (v, vp) = (
            model.config().vocab_size,
            model.config().padded_vocab_size(),
        );
        let steps = 6;
        let prompts: Vec<Vec<u32>> = [7usize, 3, 11, 5]
            .iter()
            .enumerate()
            .map(|(i, &n)| random_tokens(n, v, 40 + i as u64))
            .collect();
        let alone: Vec<_> = prompts
            .iter()
            .map(|p| greedy_alone(&model, p, steps))
            .collect();
        // (sequence, row, the pass it joins at): sequence 3 reuses row 1 after sequence 1 ends.
        let schedule = [(0usize, 0usize, 0usize), (1, 1, 0), (2, 2, 2), (3, 1, 6)];
        let mut cache = model.kv_cache(3, 32);
        let mut feeds: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let mut logits = vec![0.0; 3 * vp];
        for pass in 0..14 {
            let mut live = Vec::new();
            for &(s, row, start) in &schedule {
                if pass == start {
                    if s == 3 {
                        assert_eq!(
                            got[1].len(),
                            steps,
                            "sequence 1 is done before row 1 is reused"
                        );
                        cache.free(row);
                    }
                    feeds[s] = prompts[s].clone();
                }
                // Sequence 2 skips pass 3: a pass need not feed every row.
                if pass >= start && got[s].len() < steps && !(s == 2 && pass == 3) {
                    live.push((s, row));
                }
            }
            if live.is_empty() {
                continue;
            }
            let fed: Vec<Feed> = live
                .iter()
                .map(|&(s, row)| Feed {
                    row,
                    tokens: &feeds[s],
                })
                .collect();
            model.forward_cached(&mut cache, &fed, &mut logits).unwrap();
            for (i, &(s, _)) in live.iter().enumerate() {
                let row_logits = &logits[i * vp..i * vp + v];
                let step = got[s].len();
                let e = rel_err(row_logits, &alone[s].1[step]);
                assert!(
                    e < 1e-5,
                    "sequence {s}, step {step}: logits differ from alone (rel {e})"
                );
                let next = nanogpt::sample::dist::argmax(row_logits).unwrap() as u32;
                got[s].push(next);
                feeds[s] = vec![next];
            }
        }
        for (s, (want, _)) in alone.iter().enumerate() {
            assert_eq!(&got[s], want, "sequence {s}");
        }
        assert_eq!(cache.len(1), prompts[3].len() + steps - 1);
        // Feeding one row twice in a pass, or a row that does not exist, is refused.
        let one = [1u32];
        let twice = [
            Feed {
                row: 0,
                tokens: &one,
            },
            Feed {
                row: 0,
                tokens: &one,
            },
        ];
        assert!(model
            .forward_cached(&mut cache, &twice, &mut logits)
            .is_err());
        let missing = [Feed {
            row: 3,
            tokens: &one,
        }];
        assert!(model
            .forward_cached(&mut cache, &missing, &mut logits)
            .is_err());
    }
}

/// tiny-gpt2 with `edit` applied to its config.json, in a fresh directory.
fn tiny_with_config(tag: &str, edit: impl Fn(&mut serde_json::Value)) -> TempDir {
    let src = fixtures().join("tiny-gpt2");
    let dir = TempDir::new("model", &format!("cfg-{tag}"));
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &std::path::Path) -> String {
    let err = match load_hf_dir(dir) {
        Ok(_) => panic!("{} loaded, but should have been refused", dir.display()),
        Err(e) => format!("{e:#}"),
    };
    err
}

#[test]
fn fewer_layers_in_config_than_in_weights_is_refused() {
    let dir = tiny_with_config("nlayer", |c| c["n_layer"] = 1.into());
    let err = load_err(&dir);
    assert!(
        err.contains("h.1.attn.c_attn.weight") && err.contains("n_layer"),
        "{err}"
    );
}

#[test]
fn unsupported_config_fields_are_refused_by_name() {
    let cases: [(&str, &str, serde_json::Value); 5] = [
        ("eps", "layer_norm_epsilon", 1e-6.into()),
        ("inner", "n_inner", 100.into()),
        ("invidx", "scale_attn_by_inverse_layer_idx", true.into()),
        ("mtype", "model_type", "gpt_neo".into()),
        ("scale", "scale_attn_weights", false.into()),
    ];
    for (tag, key, value) in cases {
        let dir = tiny_with_config(tag, |c| c[key] = value.clone());
        let err = load_err(&dir);
        assert!(err.contains(key) && err.contains("config.json"), "{err}");
    }
}

#[test]
fn config_fields_with_gpt2_values_load() {
    let want = load_hf_dir(&fixtures().join("tiny-gpt2")).unwrap();
    // n_inner written out as 4 * n_embd is the same model as null.
    let dir = tiny_with_config("inner4", |c| c["n_inner"] = 256.into());
    let got = load_hf_dir(&dir).unwrap();
    assert!(got.params == want.params);
}

#[test]
fn cached_inference_sees_the_optimizers_update() {
    let cfg = small_config(true, 0.0);
    let mut model = CpuEngine::new(Gpt::new(cfg.clone(), 5).unwrap());
    let (b, t) = (2, 12);
    let vp = cfg.padded_vocab_size();
    let tokens = random_tokens(b * t, cfg.vocab_size, 21);
    let cached = |model: &CpuEngine| {
        let mut cache = model.kv_cache(b, t);
        let mut logits = vec![0.0; b * vp];
        model
            .forward_cached_all(&mut cache, &tokens, t, &mut logits)
            .unwrap();
        logits
    };
    // A cached pass first: cached inference keeps its own (transposed) copy of the weights.
    let before = cached(&model);
    let targets: Vec<i32> = random_tokens(b * t, cfg.vocab_size, 22)
        .iter()
        .map(|&v| v as i32)
        .collect();
    model
        .forward(&tokens, Some(&targets), b, t, Mode::Train { seed: 0 })
        .unwrap();
    model.backward(1.0).unwrap();
    model.update(1e-2, 1.0);
    model.forward(&tokens, None, b, t, Mode::Eval).unwrap();
    let full = model.logits().to_vec();
    let after = cached(&model);
    for bi in 0..b {
        let want = &full[(bi * t + t - 1) * vp..][..cfg.vocab_size];
        let got = &after[bi * vp..bi * vp + cfg.vocab_size];
        assert!(rel_err(got, want) < 1e-5, "cached logits use stale weights");
    }
    assert!(
        rel_err(&after, &before) > 1e-4,
        "the update changed nothing"
    );
}

//! The training loop (nanoGPT's train.py): knobs and their parsing, the learning-rate schedule,
//! end-to-end learning on tiny Shakespeare with loadable checkpoints, exact resume, bad inputs,
//! the NaN stop, eval_only and the stop flag. Every model here is tiny so the file runs in
//! seconds.

mod common;

use common::TempDir;
use nanogpt::checkpoint;
use nanogpt::data::{prepare_shakespeare_char, write_tokens, TokenFile, TokenFormat};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, Mode};
use nanogpt::model::weights::load_hf_dir;
use nanogpt::rng::Rng;
use nanogpt::train::config::{learning_rate_at, KEYS};
use nanogpt::train::{train, TrainConfig, TrainSummary};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

// ---------------------------------------------------------------------------------------------
// helpers

fn shakespeare_txt() -> PathBuf {
    common::fixtures().join("../data/tinyshakespeare.txt")
}

/// Prepares shakespeare_char into `<root>/data/shakespeare_char`; returns `<root>/data`.
fn prepare_data(root: &Path) -> PathBuf {
    let data_dir = root.join("data");
    let summary = prepare_shakespeare_char(&shakespeare_txt(), &data_dir.join("shakespeare_char"))
        .expect("prepare shakespeare_char");
    assert_eq!(summary.vocab_size, 65);
    data_dir
}

/// A tiny character model on `data_dir/shakespeare_char`, writing to `out_dir`: 2 layers,
/// 2 heads, 32 wide, 32 tokens of context, batch 4; a few evaluation batches; no CPU-peak
/// measurement.
fn tiny_config(data_dir: &Path, out_dir: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.apply_overrides(&args(&[
        "--dataset=shakespeare_char",
        "--n_layer=2",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=32",
        "--batch_size=4",
        "--gradient_accumulation_steps=1",
        "--eval_iters=2",
        "--eval_interval=1000",
        "--max_iters=10",
        "--learning_rate=1e-3",
        "--warmup_iters=2",
        "--lr_decay_iters=10",
        "--min_lr=1e-4",
        "--dropout=0.0",
        "--peak_tflops=1.0",
    ]))
    .expect("tiny config");
    cfg.data_dir = data_dir.to_str().expect("utf-8 path").to_string();
    cfg.out_dir = out_dir.to_str().expect("utf-8 path").to_string();
    cfg
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Runs training with a fresh stop flag; returns the summary and the log text.
fn run(cfg: &TrainConfig) -> anyhow::Result<(TrainSummary, String)> {
    let mut log = Vec::new();
    let summary = train(cfg, &mut log, &AtomicBool::new(false))?;
    Ok((summary, String::from_utf8(log).expect("utf-8 log")))
}

fn run_ok(cfg: &TrainConfig) -> TrainSummary {
    match run(cfg) {
        Ok((s, _)) => s,
        Err(e) => panic!("training failed: {e:#}"),
    }
}

/// The whole error chain of a run that must fail, on one line.
fn run_err(cfg: &TrainConfig) -> String {
    let mut log = Vec::new();
    match train(cfg, &mut log, &AtomicBool::new(false)) {
        Ok(s) => panic!(
            "expected an error, got a run to iteration {}:\n{}",
            s.iter_num,
            String::from_utf8_lossy(&log)
        ),
        Err(e) => format!("{e:#}"),
    }
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn state_iter(ckpt: &Path) -> u64 {
    read_json(&ckpt.join("train_state.json"))["iter_num"]
        .as_u64()
        .expect("iter_num")
}

const CHECKPOINT_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "optimizer.safetensors",
    "train_state.json",
];

fn assert_checkpoint(dir: &Path) {
    for f in CHECKPOINT_FILES {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
}

/// Every file of a checkpoint directory, by name, with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("dir entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read checkpoint file"),
            )
        })
        .collect();
    files.sort();
    files
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn eval_bits(e: &[(usize, f32, f32)]) -> Vec<(usize, u32, u32)> {
    e.iter()
        .map(|&(i, t, v)| (i, t.to_bits(), v.to_bits()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. knobs

#[test]
fn defaults_are_nanogpt_train_py() {
    let c = TrainConfig::default();
    assert_eq!(c.out_dir, "out");
    assert_eq!(c.eval_interval, 2000);
    assert_eq!(c.log_interval, 1);
    assert_eq!(c.eval_iters, 200);
    assert!(!c.eval_only);
    assert!(c.always_save_checkpoint);
    assert_eq!(c.init_from, "scratch");
    assert_eq!(c.dataset, "openwebtext");
    assert_eq!(c.gradient_accumulation_steps, 5 * 8);
    assert_eq!(c.batch_size, 12);
    assert_eq!(c.block_size, 1024);
    assert_eq!((c.n_layer, c.n_head, c.n_embd), (12, 12, 768));
    assert_eq!(c.dropout, 0.0);
    assert!(!c.bias);
    assert_eq!(c.learning_rate, 6e-4);
    assert_eq!(c.max_iters, 600_000);
    assert_eq!(c.weight_decay, 1e-1);
    assert_eq!((c.beta1, c.beta2), (0.9, 0.95));
    assert_eq!(c.grad_clip, 1.0);
    assert!(c.decay_lr);
    assert_eq!(c.warmup_iters, 2000);
    assert_eq!(c.lr_decay_iters, 600_000);
    assert_eq!(c.min_lr, 6e-5);
    assert_eq!(c.seed, 1337);
    // nanoGPT's tokens per iteration: 40 * 12 * 1024.
    assert_eq!(c.tokens_per_iter(), 491_520);
    // The device and, unless asked, the dtype are picked at run time (`auto`; the engine's
    // default: f32 on the CPU, bf16 on a GPU with bf16 tensor cores).
    assert_eq!((c.device, c.dtype), (nanogpt::engine::Device::Auto, None));
    c.validate().expect("the defaults are valid");
}

#[test]
fn overrides_are_type_checked() {
    let mut c = TrainConfig::default();
    let e = err_text(c.apply_overrides(&args(&["--batch_size=abc"])));
    assert!(e.contains("batch_size") && e.contains("abc"), "{e}");
    let e = err_text(c.apply_overrides(&args(&["--learning_rate=fast"])));
    assert!(e.contains("learning_rate"), "{e}");
    let e = err_text(c.apply_overrides(&args(&["--bias=yes"])));
    assert!(e.contains("bias"), "{e}");
    let e = err_text(c.apply_overrides(&args(&["--max_iters=-1"])));
    assert!(e.contains("max_iters"), "{e}");
    assert_eq!(c, TrainConfig::default(), "failed overrides change nothing");

    // Python's and TOML's spellings of booleans.
    for (text, want) in [
        ("True", true),
        ("False", false),
        ("true", true),
        ("false", false),
    ] {
        c.apply_overrides(&args(&[&format!("--bias={text}")]))
            .unwrap_or_else(|e| panic!("--bias={text}: {e:#}"));
        assert_eq!(c.bias, want, "--bias={text}");
    }

    // nanoGPT writes gradient_accumulation_steps as a product.
    c.apply_overrides(&args(&["--gradient_accumulation_steps=5*8"]))
        .expect("5*8");
    assert_eq!(c.gradient_accumulation_steps, 40);

    // `--key value`, mixed with `--key=value`; numbers in Python's forms; quoted strings.
    c.apply_overrides(&args(&[
        "--max_iters",
        "5000",
        "--learning_rate=1e-3",
        "--lr_decay_iters=5_000",
        "--dataset='shakespeare_char'",
        "--out_dir",
        "\"out-x\"",
        "--dropout=0.2",
        "--eval_only=True",
        "--seed=42",
    ]))
    .expect("overrides");
    assert_eq!(c.max_iters, 5000);
    assert_eq!(c.learning_rate, 1e-3);
    assert_eq!(c.lr_decay_iters, 5000);
    assert_eq!(c.dataset, "shakespeare_char");
    assert_eq!(c.out_dir, "out-x");
    assert_eq!(c.dropout, 0.2);
    assert!(c.eval_only);
    assert_eq!(c.seed, 42);

    // wandb knobs from nanoGPT configs are accepted and ignored.
    let before = c.clone();
    c.apply_overrides(&args(&["--wandb_log=False", "--wandb_project=x"]))
        .expect("wandb keys are accepted");
    assert_eq!(c, before);

    // A key at the end without its value, and a bare word, are errors.
    let e = err_text(c.apply_overrides(&args(&["--max_iters"])));
    assert!(e.contains("max_iters"), "{e}");
    let e = err_text(c.apply_overrides(&args(&["max_iters=3"])));
    assert!(e.contains("max_iters=3"), "{e}");
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    let mut c = TrainConfig::default();
    let e = err_text(c.apply_overrides(&args(&["--batchsize=8"])));
    assert!(e.contains("batchsize"), "{e}");
    for key in KEYS {
        assert!(e.contains(key), "valid key {key} not listed: {e}");
    }
    let e = err_text(c.set("n_layr", "3"));
    assert!(e.contains("n_layr") && e.contains("n_layer,"), "{e}");
    // Every listed key is settable from text.
    let mut c = TrainConfig::default();
    for key in KEYS {
        let probe = TrainConfig::default();
        let value = serde_json::to_value(&probe).expect("config serializes")[key].clone();
        let text = match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        c.set(key, &text)
            .unwrap_or_else(|e| panic!("set({key}, {text}): {e:#}"));
    }
    assert_eq!(c, TrainConfig::default());
}

#[test]
fn config_files() {
    let dir = TempDir::new("train", "config-files");
    let path = dir.join("train_shakespeare_char.toml");
    std::fs::write(
        &path,
        r#"# like nanoGPT's config/train_shakespeare_char.py
out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10
always_save_checkpoint = false
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5_000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
bias = false
wandb_log = false
"#,
    )
    .expect("write config");
    let c = TrainConfig::from_file(&path).expect("from_file");
    assert_eq!(c.out_dir, "out-shakespeare-char");
    assert_eq!(c.eval_interval, 250);
    assert_eq!(c.log_interval, 10);
    assert!(!c.always_save_checkpoint);
    assert_eq!(c.dataset, "shakespeare_char");
    assert_eq!(c.gradient_accumulation_steps, 1);
    assert_eq!((c.batch_size, c.block_size), (64, 256));
    assert_eq!((c.n_layer, c.n_head, c.n_embd), (6, 6, 384));
    assert_eq!(c.dropout, 0.2);
    assert_eq!(c.learning_rate, 1e-3);
    assert_eq!((c.max_iters, c.lr_decay_iters), (5000, 5000));
    assert_eq!(c.min_lr, 1e-4);
    assert_eq!(c.beta2, 0.99);
    assert_eq!(c.warmup_iters, 100);
    assert!(!c.bias);
    // Untouched knobs keep nanoGPT's defaults.
    assert_eq!(c.weight_decay, 0.1);
    assert_eq!(c.beta1, 0.9);
    c.validate().expect("valid");

    // A file over existing values, then overrides over the file (the CLI's order).
    let mut c = TrainConfig::default();
    c.apply_file(&path).expect("apply_file");
    c.apply_overrides(&args(&["--batch_size=32", "--max_iters=10"]))
        .expect("overrides");
    assert_eq!((c.batch_size, c.max_iters, c.n_layer), (32, 10, 6));

    let missing = dir.join("nope.toml");
    let e = err_text(TrainConfig::from_file(&missing));
    assert!(e.contains("nope.toml"), "{e}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "batch_size = = 3\n").expect("write");
    let e = err_text(TrainConfig::from_file(&bad));
    assert!(e.contains("bad.toml"), "{e}");

    let wrong_type = dir.join("wrong_type.toml");
    std::fs::write(&wrong_type, "batch_size = 'many'\n").expect("write");
    let e = err_text(TrainConfig::from_file(&wrong_type));
    assert!(
        e.contains("wrong_type.toml") && e.contains("batch_size"),
        "{e}"
    );

    // TOML has no True or 5*8: the error says how TOML spells them, and the quoted forms work.
    for (line, hint) in [
        ("bias = True\n", "true"),
        ("gradient_accumulation_steps = 5*8\n", "\"5*8\""),
    ] {
        let nanogpt_style = dir.join("nanogpt_style.toml");
        std::fs::write(&nanogpt_style, line).expect("write");
        let e = err_text(TrainConfig::from_file(&nanogpt_style));
        assert!(e.contains("nanogpt_style.toml") && e.contains(hint), "{e}");
    }
    let quoted = dir.join("quoted.toml");
    std::fs::write(
        &quoted,
        "bias = 'True'\ngradient_accumulation_steps = \"5*8\"\n",
    )
    .expect("write");
    let c = TrainConfig::from_file(&quoted).expect("quoted True and 5*8");
    assert!(c.bias);
    assert_eq!(c.gradient_accumulation_steps, 40);

    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "n_layr = 3\n").expect("write");
    let e = err_text(TrainConfig::from_file(&unknown));
    assert!(e.contains("unknown.toml") && e.contains("n_layr"), "{e}");
}

/// The shipped config/*.toml files all load and validate.
#[test]
fn shipped_configs_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = TrainConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            c.validate()
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
    }
    assert!(n > 0, "no config files in {}", dir.display());
}

#[test]
fn validate_rejects_nonsense() {
    let ok = TrainConfig::default();
    let cases: [(&str, &str, &str); 12] = [
        ("grad_clip", "-1", "grad_clip"),
        ("weight_decay", "-1", "weight_decay"),
        ("eval_iters", "0", "eval_iters"),
        ("peak_tflops", "-1", "peak_tflops"),
        ("peak_tflops", "NaN", "peak_tflops"),
        ("out_dir", "", "out_dir"),
        ("batch_size", "0", "batch_size"),
        (
            "gradient_accumulation_steps",
            "0",
            "gradient_accumulation_steps",
        ),
        ("eval_interval", "0", "eval_interval"),
        ("beta2", "1.5", "beta2"),
        ("learning_rate", "-1e-3", "learning_rate"),
        ("zero_stage", "2", "zero_stage"),
    ];
    for (key, value, mention) in cases {
        let mut c = ok.clone();
        c.set(key, value).expect("parses");
        let e = err_text(c.validate());
        assert!(e.contains(mention), "{key}={value}: {e}");
        // train() refuses it before touching any data.
        let e = run_err(&c);
        assert!(e.contains(mention), "train with {key}={value}: {e}");
    }
    // float16 (with its loss scaler) is a GPU dtype: refused on the CPU before any data is read,
    // pointing at --device=cuda and at bfloat16.
    let mut c = ok.clone();
    c.set("dtype", "float16").expect("float16 is a dtype");
    for e in [err_text(c.validate()), run_err(&c)] {
        assert!(e.contains("--device=cuda") && e.contains("bfloat16"), "{e}");
    }
    // lr_decay_iters < warmup_iters is accepted, as nanoGPT accepts it (warmup, then min_lr:
    // see learning_rate_schedule_is_nanogpts_get_lr).
    let mut c = ok.clone();
    c.lr_decay_iters = 100;
    c.validate().expect("nanoGPT runs this schedule");
}

// ---------------------------------------------------------------------------------------------
// 2. learning-rate schedule

/// nanoGPT's get_lr, in f64.
fn nanogpt_get_lr(lr: f64, min_lr: f64, warmup: usize, decay: usize, it: usize) -> f64 {
    if it < warmup {
        return lr * (it + 1) as f64 / (warmup + 1) as f64;
    }
    if it > decay {
        return min_lr;
    }
    let ratio = (it - warmup) as f64 / (decay - warmup) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    min_lr + coeff * (lr - min_lr)
}

#[test]
fn learning_rate_schedule_is_nanogpts_get_lr() {
    let mut c = TrainConfig {
        learning_rate: 6e-4,
        min_lr: 6e-5,
        warmup_iters: 10,
        lr_decay_iters: 110,
        ..TrainConfig::default()
    };
    let (lr, min_lr) = (c.learning_rate as f64, c.min_lr as f64);
    let close = |got: f32, want: f64, it: usize| {
        assert!(
            ((got as f64) - want).abs() <= 1e-6 * want.abs(),
            "iteration {it}: {got} vs nanoGPT {want}"
        );
    };
    for it in [
        0, 1, 5, 9, 10, 11, 35, 60, 85, 109, 110, 111, 500, 1_000_000,
    ] {
        let want = nanogpt_get_lr(lr, min_lr, 10, 110, it);
        close(learning_rate_at(&c, it), want, it);
    }
    // Spot values by hand.
    close(learning_rate_at(&c, 0), 6e-4 / 11.0, 0);
    close(learning_rate_at(&c, 9), 6e-4 * 10.0 / 11.0, 9);
    close(learning_rate_at(&c, 10), 6e-4, 10);
    close(learning_rate_at(&c, 60), (6e-4 + 6e-5) / 2.0, 60);
    close(learning_rate_at(&c, 110), 6e-5, 110);
    assert_eq!(learning_rate_at(&c, 111), c.min_lr, "min_lr after decay");
    assert_eq!(learning_rate_at(&c, 10_000), c.min_lr);
    // Warmup rises, cosine falls.
    let lrs: Vec<f32> = (0..=111).map(|it| learning_rate_at(&c, it)).collect();
    assert!(lrs[..=10].windows(2).all(|w| w[0] < w[1]), "{lrs:?}");
    assert!(lrs[10..=110].windows(2).all(|w| w[0] >= w[1]), "{lrs:?}");

    // The default schedule (2000 warmup, decay to 600000).
    let d = TrainConfig::default();
    for it in [0, 1999, 2000, 2001, 301_000, 599_999, 600_000, 600_001] {
        let want = nanogpt_get_lr(6e-4, 6e-5, 2000, 600_000, it);
        close(learning_rate_at(&d, it), want, it);
    }

    // lr_decay_iters below warmup_iters: nanoGPT warms up, then jumps to min_lr (no cosine).
    let mut short = c.clone();
    short.warmup_iters = 100;
    short.lr_decay_iters = 50;
    for it in [0, 49, 50, 51, 99, 100, 101, 1000] {
        let want = nanogpt_get_lr(6e-4, 6e-5, 100, 50, it);
        close(learning_rate_at(&short, it), want, it);
    }
    assert_eq!(learning_rate_at(&short, 100), short.min_lr);

    c.decay_lr = false;
    for it in [0, 5, 10, 60, 111, 100_000] {
        assert_eq!(
            learning_rate_at(&c, it),
            c.learning_rate,
            "constant at {it}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. end to end

/// From scratch on tiny Shakespeare: the validation loss falls well below its start, both
/// checkpoints are written, `best/` opens as a Hugging Face GPT-2 directory with the same loss,
/// and metrics.jsonl logs steps and evaluations.
#[test]
fn learns_tiny_shakespeare() {
    let dir = TempDir::new("train", "e2e");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    // Measured on this machine (seeds 1, 2, 3, 7, 1337): val loss 4.17-4.19 at step 0,
    // 2.48-2.50 at step 300, a drop of 1.68-1.71.
    cfg.apply_overrides(&args(&[
        "--n_embd=64",
        "--batch_size=8",
        "--max_iters=300",
        "--eval_interval=100",
        "--eval_iters=20",
        "--learning_rate=2e-3",
        "--warmup_iters=20",
        "--lr_decay_iters=300",
        "--min_lr=2e-4",
        "--log_interval=1",
    ]))
    .expect("overrides");
    let t0 = std::time::Instant::now();
    let (s, log) = run(&cfg).unwrap_or_else(|e| panic!("training failed: {e:#}"));
    eprintln!("e2e: {:?} evals {:?}", t0.elapsed(), s.evals);

    assert_eq!(s.losses.len(), 301, "iterations 0..=max_iters");
    assert_eq!(s.iter_num, 301);
    assert!(!s.stopped_by_user);
    assert!(s.losses.iter().all(|l| l.is_finite()));
    let iters: Vec<usize> = s.evals.iter().map(|e| e.0).collect();
    assert_eq!(iters, [0, 100, 200, 300]);
    let first = s.evals[0].2;
    let last = s.evals.last().expect("evals").2;
    assert!(
        (first - 65f32.ln()).abs() < 0.1,
        "an untrained model is near uniform: {first}"
    );
    assert!(
        last < first - 1.0,
        "val loss fell from {first} only to {last}"
    );
    let best = s.evals.iter().map(|e| e.2).fold(f32::INFINITY, f32::min);
    assert_eq!(s.best_val_loss, best);
    assert!(log.contains("step 300: train loss"), "{log}");

    let latest = out.join("latest");
    let best_dir = out.join("best");
    assert_checkpoint(&latest);
    assert_checkpoint(&best_dir);
    assert_eq!(state_iter(&latest), 301, "latest holds the next iteration");
    let best_state = read_json(&best_dir.join("train_state.json"));
    let best_iter = best_state["iter_num"].as_u64().expect("iter_num") as usize;
    let best_eval = s
        .evals
        .iter()
        .find(|e| e.0 == best_iter)
        .expect("best/ was saved at an evaluation");
    assert_eq!(best_eval.2, best, "best/ holds the lowest val loss");
    assert_eq!(
        best_state["best_val_loss"].as_f64().expect("best_val_loss") as f32,
        best
    );
    for leftover in ["latest.tmp", "latest.old", "best.tmp", "best.old"] {
        assert!(!out.join(leftover).exists(), "{leftover} left behind");
    }

    // best/ is a transformers GPT-2 directory: config.json + model.safetensors.
    let hf_cfg = read_json(&best_dir.join("config.json"));
    assert_eq!(hf_cfg["model_type"], "gpt2");
    assert_eq!(hf_cfg["vocab_size"], 65);
    assert_eq!(hf_cfg["n_positions"], 32);
    assert_eq!(hf_cfg["n_embd"], 64);
    let hf = load_hf_dir(&best_dir).unwrap_or_else(|e| panic!("load_hf_dir: {e:#}"));
    let (ck, _, state) = checkpoint::load(&best_dir).expect("checkpoint::load");
    assert_eq!(state.iter_num, best_iter);
    assert!(!ck.config.bias, "trained without biases");
    assert!(
        hf.config.bias,
        "transformers' GPT-2 has biases (saved as zeros)"
    );
    assert_eq!(
        (hf.config.n_layer, hf.config.n_head, hf.config.n_embd),
        (2, 2, 64)
    );
    assert_eq!((hf.config.vocab_size, hf.config.block_size), (65, 32));
    let val = TokenFile::open(&data_dir.join("shakespeare_char/val.bin"), 65).expect("val.bin");
    let (x, y) = val.get_batch(&mut Rng::new(7), 4, 32).expect("batch");
    let (mut hf, mut ck) = (CpuEngine::new(hf), CpuEngine::new(ck));
    let l_hf = hf
        .forward(&x, Some(&y), 4, 32, Mode::Eval)
        .expect("forward")
        .expect("loss");
    let l_ck = ck
        .forward(&x, Some(&y), 4, 32, Mode::Eval)
        .expect("forward")
        .expect("loss");
    eprintln!("best/ loss on a val batch: hf {l_hf}, checkpoint {l_ck}");
    assert!(
        (l_hf - l_ck).abs() <= 1e-5 * l_ck.abs(),
        "hf {l_hf} vs checkpoint {l_ck}"
    );
    assert!(l_ck < first - 0.5, "the saved model is trained: {l_ck}");

    // metrics.jsonl: one step line per iteration (log_interval=1) and one line per evaluation.
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|v| v.get("loss").is_some()).collect();
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v.get("val_loss").is_some())
        .collect();
    assert_eq!(steps.len(), 301);
    assert_eq!(evals.len(), 4);
    assert_eq!(steps.len() + evals.len(), lines.len());
    for (i, v) in steps.iter().enumerate() {
        assert_eq!(v["iter"], i as u64);
        for key in ["lr", "ms", "tokens_per_s", "mfu"] {
            assert!(v[key].is_number(), "{key} in {v}");
        }
        assert_eq!(v["loss"].as_f64().expect("loss") as f32, s.losses[i]);
        assert_eq!(
            v["lr"].as_f64().expect("lr") as f32,
            learning_rate_at(&cfg, i)
        );
    }
    for (v, e) in evals.iter().zip(&s.evals) {
        assert_eq!(v["iter"], e.0 as u64);
        assert_eq!(v["train_loss"].as_f64().expect("train_loss") as f32, e.1);
        assert_eq!(v["val_loss"].as_f64().expect("val_loss") as f32, e.2);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. resume

/// N iterations straight equal k iterations, a stop, and a resume to N: every loss and
/// evaluation bit for bit, and the final weights and optimizer moments byte for byte.
#[test]
fn resume_is_exact() {
    let dir = TempDir::new("train", "resume");
    let data_dir = prepare_data(&dir);
    const N: usize = 12;
    let base = |out: &str, max_iters: usize| {
        let mut c = tiny_config(&data_dir, &dir.join(out));
        c.apply_overrides(&args(&[
            "--dropout=0.1",
            "--gradient_accumulation_steps=2",
            "--eval_interval=4",
            "--eval_iters=2",
            "--warmup_iters=3",
            "--lr_decay_iters=12",
        ]))
        .expect("overrides");
        c.max_iters = max_iters;
        c
    };
    let a = run_ok(&base("a", N - 1));
    assert_eq!(a.losses.len(), N);
    assert_eq!(a.iter_num, N);
    let a_evals: Vec<usize> = a.evals.iter().map(|e| e.0).collect();
    assert_eq!(a_evals, [0, 4, 8]);

    // k=6 resumes between evaluations; k=8 resumes exactly at one (it is evaluated once, by
    // the resumed run).
    for k in [6, 8] {
        let out = format!("b{k}");
        let b1 = run_ok(&base(&out, k - 1));
        assert_eq!(b1.losses.len(), k);
        assert_eq!(b1.iter_num, k);
        assert_eq!(state_iter(&dir.join(&out).join("latest")), k as u64);
        let mut cfg2 = base(&out, N - 1);
        cfg2.init_from = "resume".into();
        let b2 = run_ok(&cfg2);
        assert_eq!(b2.iter_num, N);

        let joined: Vec<f32> = b1.losses.iter().chain(&b2.losses).copied().collect();
        assert_eq!(
            bits(&joined),
            bits(&a.losses),
            "k={k}: {joined:?} vs {:?}",
            a.losses
        );
        let evals: Vec<_> = b1.evals.iter().chain(&b2.evals).copied().collect();
        assert_eq!(eval_bits(&evals), eval_bits(&a.evals), "k={k}");
        assert_eq!(b2.best_val_loss.to_bits(), a.best_val_loss.to_bits());

        let (pa, pb) = (dir.join("a/latest"), dir.join(&out).join("latest"));
        for f in ["model.safetensors", "optimizer.safetensors", "config.json"] {
            assert!(
                std::fs::read(pa.join(f)).expect("a") == std::fs::read(pb.join(f)).expect("b"),
                "k={k}: {f} differs"
            );
        }
        let (sa, sb) = (
            read_json(&pa.join("train_state.json")),
            read_json(&pb.join("train_state.json")),
        );
        for key in ["iter_num", "best_val_loss", "optimizer_step", "model"] {
            assert_eq!(sa[key], sb[key], "k={k}: {key}");
        }
        assert_eq!(sa["optimizer_step"], N as u64);
    }

    // Without dropout and accumulation the same holds (no hidden state in those paths either).
    let mut plain = base("plain", N - 1);
    plain.dropout = 0.0;
    plain.gradient_accumulation_steps = 1;
    let straight = run_ok(&plain);
    let mut p1 = base("plain2", 4);
    p1.dropout = 0.0;
    p1.gradient_accumulation_steps = 1;
    let first = run_ok(&p1);
    p1.max_iters = N - 1;
    p1.init_from = "resume".into();
    let second = run_ok(&p1);
    let joined: Vec<f32> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(bits(&joined), bits(&straight.losses));
    // Dropout and accumulation change the trajectory (so the test above means something).
    assert_ne!(bits(&straight.losses), bits(&a.losses));
}

// ---------------------------------------------------------------------------------------------
// 5. bad inputs

#[test]
fn missing_dataset_says_prepare() {
    let dir = TempDir::new("train", "missing-data");
    let out = dir.join("out");
    let cfg = tiny_config(&dir.join("no-data-here"), &out);
    let e = run_err(&cfg);
    assert!(e.contains("train.bin"), "{e}");
    assert!(e.contains("prepare"), "{e}");
    assert!(!out.join("latest").exists());
}

/// Freshly prepared shakespeare_char under `<root>/data`, for a test to break one file of:
/// `(data_dir, data_dir/shakespeare_char)`. Without its `dataset.json` (as nanoGPT's prepare.py
/// writes it), so that the token files themselves are checked rather than found changed.
fn broken_data(root: &Path) -> (PathBuf, PathBuf) {
    let data_dir = prepare_data(root);
    let ds = data_dir.join("shakespeare_char");
    std::fs::remove_file(ds.join("dataset.json")).expect("remove dataset.json");
    (data_dir, ds)
}

#[test]
fn bad_token_files() {
    let dir = TempDir::new("train", "bad-tokens");
    let (data_dir, ds) = broken_data(&dir);
    let out = dir.join("out");
    let cfg = tiny_config(&data_dir, &out);
    let train_bin = std::fs::read(ds.join("train.bin")).expect("train.bin");
    let val_bin = std::fs::read(ds.join("val.bin")).expect("val.bin");

    // An odd number of bytes.
    std::fs::write(ds.join("train.bin"), &train_bin[..1001]).expect("write");
    let e = run_err(&cfg);
    assert!(e.contains("train.bin") && e.contains("1001 bytes"), "{e}");
    std::fs::write(ds.join("train.bin"), &train_bin).expect("restore");

    // A token beyond meta.json's 65 characters.
    let mut ids: Vec<u32> = val_bin
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect();
    ids[123] = 1000;
    write_tokens(&ds.join("val.bin"), &ids, TokenFormat::RawU16).expect("write");
    let e = run_err(&cfg);
    assert!(
        e.contains("val.bin") && e.contains("1000") && e.contains("65"),
        "{e}"
    );
    ids[123] = 64; // the largest valid id
    write_tokens(&ds.join("val.bin"), &ids, TokenFormat::RawU16).expect("write");
    let mut ok = cfg.clone();
    ok.max_iters = 0;
    run_ok(&ok);

    // Too short for one example of block_size + 1 tokens.
    let short: Vec<u32> = (0..32).map(|i| i % 65).collect();
    write_tokens(&ds.join("train.bin"), &short, TokenFormat::RawU16).expect("write");
    let e = run_err(&cfg);
    assert!(
        e.contains("train.bin") && e.contains("block_size 32") && e.contains("33"),
        "{e}"
    );
    // 33 tokens is enough.
    let short: Vec<u32> = (0..33).map(|i| i % 65).collect();
    write_tokens(&ds.join("train.bin"), &short, TokenFormat::RawU16).expect("write");
    let mut ok = cfg.clone();
    ok.out_dir = dir.join("out33").to_str().expect("utf-8").into();
    ok.max_iters = 1;
    run_ok(&ok);
}

#[test]
fn bad_init_from() {
    let dir = TempDir::new("train", "bad-init");
    let data_dir = prepare_data(&dir);
    let out = dir.join("empty-out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.init_from = "resume".into();
    let e = run_err(&cfg);
    assert!(e.contains(out.to_str().expect("utf-8")), "{e}");
    assert!(e.contains("checkpoint"), "{e}");

    cfg.init_from = "gpt3".into();
    let e = run_err(&cfg);
    assert!(e.contains("gpt3") && e.contains("scratch"), "{e}");
}

/// A loss that is no longer finite stops the run with an error naming the iteration, and the
/// last good checkpoint stays as it was.
#[test]
fn nan_loss_stops_and_keeps_the_checkpoint() {
    let dir = TempDir::new("train", "nan");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.max_iters = 4;
    let good = run_ok(&cfg);
    assert_eq!(good.iter_num, 5);
    let latest = out.join("latest");
    let before = snapshot(&latest);
    assert_eq!(before.len(), CHECKPOINT_FILES.len());

    cfg.init_from = "resume".into();
    cfg.learning_rate = 1e30;
    cfg.decay_lr = false;
    cfg.max_iters = 20;
    let e = run_err(&cfg);
    eprintln!("NaN run: {e}");
    assert!(e.contains("iteration"), "{e}");
    assert!(e.contains(latest.to_str().expect("utf-8")), "{e}");
    let at: usize = e
        .split("iteration ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no iteration number in: {e}"));
    assert!((5..=20).contains(&at), "iteration {at}: {e}");
    assert!(
        snapshot(&latest) == before,
        "the failed run changed {}",
        latest.display()
    );
    assert!(
        !out.join("best").exists(),
        "no evaluation improved, so no best/"
    );
}

/// An evaluation that falls on the iteration where the weights have already become non-finite
/// must not save them over the last good checkpoint.
#[test]
fn nan_at_an_evaluation_keeps_the_checkpoint() {
    let dir = TempDir::new("train", "nan-eval");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.max_iters = 4;
    run_ok(&cfg);

    cfg.init_from = "resume".into();
    cfg.learning_rate = 1e30;
    cfg.decay_lr = false;
    cfg.max_iters = 20;
    cfg.eval_interval = 1; // every iteration evaluates before it trains
    let e = run_err(&cfg);
    assert!(e.contains("iteration"), "{e}");
    let (model, _, state) = checkpoint::load(&out.join("latest")).expect("load latest");
    let bad = model.params.iter().filter(|x| !x.is_finite()).count();
    assert_eq!(
        bad, 0,
        "latest/ (iteration {}) holds {bad} non-finite weights after: {e}",
        state.iter_num
    );
}

// ---------------------------------------------------------------------------------------------
// 6. eval_only

#[test]
fn eval_only_evaluates_once_and_saves_nothing() {
    let dir = TempDir::new("train", "eval-only");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.eval_only = true;
    cfg.eval_interval = 1;
    let (s, log) = run(&cfg).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(s.evals.len(), 1, "{:?}", s.evals);
    assert_eq!(s.evals[0].0, 0);
    assert!(s.losses.is_empty(), "no training iterations");
    assert!(log.contains("step 0: train loss"), "{log}");
    assert!(!out.join("latest").exists() && !out.join("best").exists());

    // Evaluating a trained checkpoint: once, at its iteration, and the checkpoint is untouched.
    let mut t = tiny_config(&data_dir, &out);
    t.max_iters = 3;
    run_ok(&t);
    let before = snapshot(&out.join("latest"));
    let mut e = t.clone();
    e.init_from = "resume".into();
    e.eval_only = true;
    e.eval_interval = 1;
    let s = run_ok(&e);
    assert_eq!(s.evals.len(), 1);
    assert_eq!(s.evals[0].0, 4);
    assert!(s.losses.is_empty());
    assert!(
        snapshot(&out.join("latest")) == before,
        "eval_only rewrote latest/"
    );
    assert!(!out.join("best").exists(), "eval_only wrote best/");
}

// ---------------------------------------------------------------------------------------------
// 7. the stop flag (Ctrl-C)

#[test]
fn stop_flag_set_before_ends_after_one_iteration() {
    let dir = TempDir::new("train", "stop-before");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.max_iters = 1000;
    let stop = AtomicBool::new(true);
    let mut log = Vec::new();
    let s = train(&cfg, &mut log, &stop).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.stopped_by_user);
    assert_eq!(s.losses.len(), 1);
    assert_eq!(s.iter_num, 1);
    assert_checkpoint(&out.join("latest"));
    assert_eq!(state_iter(&out.join("latest")), 1);
    let log = String::from_utf8(log).expect("utf-8");
    assert!(log.contains("init_from=resume"), "{log}");
}

/// A log sink that raises the stop flag when it sees the log line of iteration `at`, as a
/// Ctrl-C during that iteration would.
struct StopAt<'a> {
    stop: &'a AtomicBool,
    at: String,
    text: Vec<u8>,
}

impl Write for StopAt<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        if String::from_utf8_lossy(&self.text).contains(&self.at) {
            self.stop.store(true, Ordering::SeqCst);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stopped during iteration 2, the run saves iteration 3, and resuming from there continues the
/// uninterrupted run exactly.
#[test]
fn stop_flag_mid_run_saves_and_resumes() {
    let dir = TempDir::new("train", "stop-mid");
    let data_dir = prepare_data(&dir);
    let mut cfg = tiny_config(&data_dir, &dir.join("stopped"));
    cfg.max_iters = 7;
    cfg.eval_interval = 2;
    let stop = AtomicBool::new(false);
    let mut sink = StopAt {
        stop: &stop,
        at: "iter 2:".into(),
        text: Vec::new(),
    };
    let s = train(&cfg, &mut sink, &stop).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.stopped_by_user);
    assert_eq!(s.iter_num, 3);
    assert_eq!(s.losses.len(), 3);
    assert_eq!(state_iter(&dir.join("stopped/latest")), 3);

    let mut resume = cfg.clone();
    resume.init_from = "resume".into();
    let rest = run_ok(&resume);
    assert!(!rest.stopped_by_user);
    assert_eq!(rest.iter_num, 8);

    let mut straight = cfg.clone();
    straight.out_dir = dir.join("straight").to_str().expect("utf-8").into();
    let all = run_ok(&straight);
    let joined: Vec<f32> = s.losses.iter().chain(&rest.losses).copied().collect();
    assert_eq!(bits(&joined), bits(&all.losses));
}

// ---------------------------------------------------------------------------------------------
// 8. one run per out_dir, vocabularies that must match, and what a failure says

/// A second run from scratch into the same out_dir moves the first one's files, unchanged, to
/// `previous-1/` (a third to `previous-2/`) and says so; the out_dir then holds only the new run.
#[test]
fn a_new_run_moves_the_earlier_one_aside() {
    let dir = TempDir::new("train", "aside");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.max_iters = 2;
    run_ok(&cfg);
    let first = snapshot(&out.join("latest"));
    let first_metrics = std::fs::read(out.join("metrics.jsonl")).expect("metrics.jsonl");

    cfg.n_layer = 1;
    let (_, log) = run(&cfg).expect("second run");
    let previous = out.join("previous-1");
    assert!(
        log.contains(previous.to_str().expect("utf-8")),
        "the log does not say where the earlier run went:\n{log}"
    );
    assert!(
        snapshot(&previous.join("latest")) == first,
        "previous-1/latest/ changed"
    );
    assert_eq!(
        std::fs::read(previous.join("metrics.jsonl")).expect("moved metrics"),
        first_metrics
    );
    let state = read_json(&out.join("latest/train_state.json"));
    assert_eq!(state["model"]["n_layer"], 1, "latest/ is the new run");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    assert_eq!(
        metrics.lines().count(),
        String::from_utf8_lossy(&first_metrics).lines().count(),
        "metrics.jsonl holds only the new run's lines"
    );

    run_ok(&cfg);
    assert!(out.join("previous-2/latest").is_dir());
    assert!(snapshot(&previous.join("latest")) == first);

    // A resume continues the run in place.
    cfg.init_from = "resume".into();
    cfg.max_iters = 4;
    run_ok(&cfg);
    assert!(!out.join("previous-3").exists());
}

/// While one run holds an out_dir, a second is refused before it touches anything.
#[test]
fn a_second_run_on_a_locked_out_dir_is_refused() {
    let dir = TempDir::new("train", "lock");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.max_iters = 2;
    run_ok(&cfg);
    let before = snapshot(&out.join("latest"));
    let held = nanogpt::train::run_dir::lock(&out).expect("lock");
    let e = run_err(&cfg);
    assert!(
        e.contains(out.to_str().expect("utf-8")) && e.contains("another training run"),
        "{e}"
    );
    assert!(snapshot(&out.join("latest")) == before);
    assert!(!out.join("previous-1").exists());
    drop(held);
    run_ok(&cfg);
}

/// `<root>/<name>/shakespeare_char`: a character dataset of the first 3000 characters, a
/// smaller vocabulary than the whole text's 65.
fn small_char_dataset(root: &Path, name: &str) -> (PathBuf, usize) {
    let text = std::fs::read_to_string(shakespeare_txt()).expect("tiny shakespeare");
    let input = root.join(format!("{name}.txt"));
    std::fs::write(&input, &text[..3000]).expect("write input");
    let data_dir = root.join(name);
    let summary = prepare_shakespeare_char(&input, &data_dir.join("shakespeare_char"))
        .expect("prepare small dataset");
    assert!(summary.vocab_size < 65);
    (data_dir, summary.vocab_size)
}

/// GPT-2 fine-tuned on characters, a resume on another dataset, and sampling through another
/// character table are each refused with both sizes.
#[test]
fn vocabulary_mismatches_are_refused() {
    let dir = TempDir::new("train", "vocab");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);

    cfg.init_from = common::fixtures()
        .join("tiny-gpt2")
        .to_str()
        .expect("utf-8")
        .into();
    let e = run_err(&cfg);
    assert!(e.contains("50257") && e.contains("65"), "{e}");
    assert!(e.contains("--init_from=scratch"), "{e}");

    cfg.init_from = "scratch".into();
    cfg.max_iters = 2;
    run_ok(&cfg);
    let (small, v) = small_char_dataset(&dir, "small");
    cfg.init_from = "resume".into();
    cfg.data_dir = small.to_str().expect("utf-8").into();
    let e = run_err(&cfg);
    assert!(
        e.contains("65") && e.contains(&format!("{v} characters")),
        "{e}"
    );
    assert!(e.contains("--dataset=shakespeare_char"), "{e}");

    let src = nanogpt::load::ModelSource {
        init_from: "resume".into(),
        out_dir: Some(out.clone()),
        data_dir: Some(small),
        tokenizer: None,
    };
    let e = err_text(nanogpt::load::for_sampling(&src, &mut Vec::new()).map(|m| m.name));
    assert!(
        e.contains(&format!("{v} tokens")) && e.contains("65"),
        "{e}"
    );
    assert!(e.contains("--data_dir"), "{e}");
}

/// A NaN before the first checkpoint says there is none yet; a checkpoint whose weights hold
/// NaN is refused by name wherever it is loaded.
#[test]
fn nan_messages_say_what_exists() {
    let dir = TempDir::new("train", "nan-msg");
    let data_dir = prepare_data(&dir);
    let out = dir.join("out");
    let mut cfg = tiny_config(&data_dir, &out);
    cfg.learning_rate = 1e30;
    cfg.decay_lr = false;
    cfg.max_iters = 20;
    let e = run_err(&cfg);
    assert!(e.contains("no checkpoint exists yet"), "{e}");
    assert!(!e.contains("is kept"), "{e}");

    cfg = tiny_config(&data_dir, &out);
    cfg.max_iters = 2;
    run_ok(&cfg);
    let latest = out.join("latest");
    let (mut model, _, _) = checkpoint::load(&latest).expect("load");
    model.params[7] = f32::NAN;
    nanogpt::model::weights::save_hf_dir(&model, &latest).expect("rewrite weights");
    let e = err_text(checkpoint::load(&latest).map(|_| ()));
    assert!(
        e.contains("the weights contain NaN") && e.contains("model.safetensors"),
        "{e}"
    );
    let src = nanogpt::load::ModelSource {
        init_from: "resume".into(),
        out_dir: Some(out.clone()),
        data_dir: None,
        tokenizer: None,
    };
    let e = err_text(nanogpt::load::for_sampling(&src, &mut Vec::new()).map(|m| m.name));
    assert!(e.contains("the weights contain NaN"), "{e}");
}

/// Token files without meta.json are GPT-2 BPE: training from scratch says it assumes 50304.
#[test]
fn missing_meta_json_is_noted() {
    let dir = TempDir::new("train", "no-meta");
    let ds = dir.join("data/bpe");
    std::fs::create_dir_all(&ds).expect("mkdir");
    let ids: Vec<u32> = (0..4000u32).map(|i| (i * 7919) % 50257).collect();
    write_tokens(&ds.join("train.bin"), &ids, TokenFormat::RawU16).expect("train.bin");
    write_tokens(&ds.join("val.bin"), &ids[..500], TokenFormat::RawU16).expect("val.bin");
    let mut cfg = tiny_config(&dir.join("data"), &dir.join("out"));
    cfg.dataset = "bpe".into();
    cfg.max_iters = 1;
    let (_, log) = run(&cfg).expect("train on BPE tokens");
    assert!(
        log.contains("no meta.json") && log.contains("50304"),
        "{log}"
    );
}

/// Resuming a run that already reached max_iters trains nothing and says so (a run killed just
/// after its last save would otherwise train one iteration past the end).
#[test]
fn resuming_a_finished_run_trains_nothing() {
    let dir = TempDir::new("train", "finished");
    let data_dir = prepare_data(&dir);
    let mut cfg = tiny_config(&data_dir, &dir.join("out"));
    cfg.max_iters = 3;
    run_ok(&cfg);
    let latest = dir.join("out/latest");
    assert_eq!(state_iter(&latest), 4);
    let before = std::fs::read(latest.join("model.safetensors")).expect("model");
    cfg.init_from = "resume".into();
    let (summary, log) = run(&cfg).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(summary.losses.is_empty(), "{log}");
    assert!(log.contains("nothing to train"), "{log}");
    assert_eq!(state_iter(&latest), 4);
    assert_eq!(
        std::fs::read(latest.join("model.safetensors")).expect("model"),
        before
    );
}

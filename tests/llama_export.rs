//! `nanogpt export` of Llama models: a Hugging Face directory, llama2.c's v0 (what run.c reads)
//! and v1 files; each loads back bit for bit, and llama2.c's own `run` (the peer build in
//! `../shared/peers/llama2c/`) runs the v0 export and prints what `--sampler=run_c` prints.

mod common;

use common::llama_fixtures;

use common::{fixtures, nanogpt, TempDir};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, Mode};
use nanogpt::load::{model_only, ModelSource};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn export(from: &Path, format: &str, to: &Path) {
    run(nanogpt().args([
        "export",
        &format!("--init_from={}", from.display()),
        &format!("--format={format}"),
        &format!("--out={}", to.display()),
    ]));
}

fn params(path: &Path) -> Vec<u32> {
    let src = ModelSource {
        init_from: path.display().to_string(),
        ..ModelSource::default()
    };
    let (model, _) = model_only(&src).expect("load export");
    model.params.iter().map(|x| x.to_bits()).collect()
}

fn logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let src = ModelSource {
        init_from: path.display().to_string(),
        ..ModelSource::default()
    };
    let mut engine = CpuEngine::new(model_only(&src).expect("load").0);
    engine
        .forward(tokens, None, 1, tokens.len(), Mode::Eval)
        .unwrap();
    engine.logits().to_vec()
}

#[test]
fn llama_exports_load_back_bit_for_bit() {
    let dir = TempDir::new("llama-export", "roundtrip");
    for name in ["tiny-llama", "tiny-llama-tied"] {
        let from = llama_fixtures().join(name);
        let original = params(&from);
        let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 512) as u32).collect();
        let reference = logits(&from, &tokens);
        for (format, file) in [
            ("hf", "hf"),
            ("llama2c", "v0.bin"),
            ("llama2c_v1", "v1.bin"),
        ] {
            let to = dir.join(format!("{name}-{file}"));
            export(&from, format, &to);
            assert!(
                params(&to) == original,
                "{name}: parameters through {format}"
            );
            assert!(
                logits(&to, &tokens) == reference,
                "{name}: logits through {format}"
            );
        }
    }
    // A GPT-2 model has no llama2.c form.
    let out = nanogpt()
        .args([
            "export",
            &format!("--init_from={}", fixtures().join("tiny-gpt2").display()),
            "--format=llama2c",
            &format!("--out={}", dir.join("gpt2.bin").display()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--format=hf"),
        "{err}"
    );
}

/// llama2.c's `run`, when the peer build is there (it is beside the fixtures on the project's
/// machines and in CI).
fn run_c_peer() -> Option<PathBuf> {
    let p = fixtures().join("../peers/llama2c/run");
    p.is_file().then_some(p)
}

/// Whether this CPU runs the peer's build (`-march=x86-64-v4`: AVX-512 F, BW, CD, DQ, VL).
fn cpu_runs_x86_64_v4() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[test]
fn run_c_runs_the_v0_export_as_its_own_file() {
    let Some(peer) = run_c_peer() else {
        assert!(
            std::env::var("CI").is_err(),
            "the llama2.c peer build is missing in CI"
        );
        eprintln!("skipped: no ../shared/peers/llama2c/run");
        return;
    };
    if !cpu_runs_x86_64_v4() {
        // Not a missing install: the peer cannot run on this CPU at all (illegal instruction).
        eprintln!("skipped: ../shared/peers/llama2c/run is built for x86-64-v4 (AVX-512), which this CPU lacks");
        return;
    }
    let dir = TempDir::new("llama-export", "run-c");
    let bin = dir.join("tiny.bin");
    export(&llama_fixtures().join("tiny-llama"), "llama2c", &bin);
    let tok = llama_fixtures().join("tok512.bin");
    for (t, p, s) in [("0", "0.9", "1"), ("1", "0.9", "42")] {
        let theirs = run(Command::new(&peer)
            .env("OMP_NUM_THREADS", "1")
            .arg(&bin)
            .args(["-z", &tok.display().to_string()])
            .args(["-t", t, "-p", p, "-s", s, "-n", "40", "-i", "ROMEO:"]));
        // run.c's -n 40 with a 7-token prompt (BOS included) samples 34 tokens.
        let ours = run(nanogpt().args([
            "sample",
            &format!("--init_from={}", bin.display()),
            &format!("--tokenizer={}", tok.display()),
            "--sampler=run_c",
            "--start=ROMEO:",
            "--num_samples=1",
            "--max_new_tokens=34",
            &format!("--temperature={t}"),
            &format!("--top_p={p}"),
            &format!("--seed={s}"),
        ]));
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "-t {t} -p {p} -s {s}"
        );
    }
}

/// Trains a small Llama through the binary (prepared with the fixtures' sentencepiece
/// tokenizer), resumes it, then exports it three ways and loads each back: the same logits.
#[test]
fn a_trained_llama_resumes_exports_and_loads_back_with_the_same_logits() {
    let dir = TempDir::new("llama-export", "trained");
    let data = dir.join("data");
    run(nanogpt().args([
        "prepare",
        "shakespeare",
        &format!(
            "--input={}",
            fixtures().join("../data/tinyshakespeare.txt").display()
        ),
        &format!(
            "--tokenizer={}",
            llama_fixtures().join("tok512.model").display()
        ),
        "--name=shakespeare_llama",
        &format!("--data_dir={}", data.display()),
    ]));
    let out = dir.join("out");
    let train = |iters: &str, init: &str| {
        run(nanogpt().args([
            "train",
            &format!(
                "{}/config/train_llama_shakespeare.toml",
                env!("CARGO_MANIFEST_DIR")
            ),
            &format!("--data_dir={}", data.display()),
            &format!("--out_dir={}", out.display()),
            &format!("--init_from={init}"),
            "--dim=32",
            "--n_layers=2",
            "--n_heads=4",
            "--n_kv_heads=2",
            "--max_seq_len=32",
            "--batch_size=4",
            &format!("--max_iters={iters}"),
            &format!("--lr_decay_iters={iters}"),
            "--eval_interval=10",
            "--eval_iters=2",
            "--log_interval=5",
            "--always_save_checkpoint=true",
            "--device=cpu",
        ]))
    };
    train("10", "scratch");
    let log = String::from_utf8_lossy(&train("20", "resume")).into_owned();
    assert!(
        log.contains("iter 20"),
        "the resumed run went on to iteration 20: {log}"
    );
    let checkpoint = out.join("latest");
    let tokens: Vec<u32> = (0..32).map(|i| (i * 13 % 512) as u32).collect();
    let reference = logits(&checkpoint, &tokens);
    let original = params(&checkpoint);
    for (format, file) in [
        ("hf", "hf"),
        ("llama2c", "v0.bin"),
        ("llama2c_v1", "v1.bin"),
    ] {
        let to = dir.join(format!("export-{file}"));
        export(&checkpoint, format, &to);
        assert!(params(&to) == original, "parameters through {format}");
        assert!(logits(&to, &tokens) == reference, "logits through {format}");
    }
    // Sampling the run uses the dataset's tokenizer.
    let text = run(nanogpt().args([
        "sample",
        &format!("--init_from={}", out.display()),
        "--start=ROMEO:",
        "--num_samples=1",
        "--max_new_tokens=8",
    ]));
    assert!(String::from_utf8_lossy(&text).starts_with("ROMEO:"));
}

//! `--device` without a GPU: `cuda` is a one-line error that says what to do, `auto` is the CPU.
//! (With a GPU, `auto` must be CUDA.) The CUDA engine's numbers are checked on a GPU by
//! benches/cuda_check.sh.

use nanogpt::config::GptConfig;
use nanogpt::engine::{cuda::gpu_present, open, Device};
use nanogpt::model::Gpt;

fn tiny() -> Gpt {
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 8,
        block_size: 8,
        vocab_size: 16,
        ..GptConfig::default()
    };
    Gpt::new(cfg, 1).expect("tiny model")
}

#[test]
fn device_auto_and_cuda_without_or_with_a_gpu() {
    // auto stays on the CPU until the CUDA backend has passed its GPU check.
    let auto = open(tiny(), Device::Auto).expect("auto always opens");
    assert!(
        auto.device_name().starts_with("cpu"),
        "{}",
        auto.device_name()
    );
    if gpu_present() {
        return;
    }
    let err = match open(tiny(), Device::Cuda) {
        Ok(e) => panic!(
            "--device=cuda opened {} with no GPU present",
            e.device_name()
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(!err.contains('\n'), "not one line: {err}");
    assert!(
        err.contains("--device=cpu"),
        "does not say what to do: {err}"
    );
}

//! CUDA kernels as CUDA C source, compiled at run time by NVRTC for the GPU at hand (so building
//! needs no CUDA toolkit). One `.cu` file per op, the math in its header, forward and backward
//! side by side, as the CPU kernels. NVRTC has no CUDA headers at run time, so the files include
//! nothing: they are concatenated into one program, `common.cu` (hash, reductions) first.
//! Matrix products are not here, except attention's: they go to cuBLASLt (`engine::cuda::blas`),
//! in f32 or, with their operands rounded by `bf16.cu` or `f16.cu`, in bf16 or f16 on the tensor
//! cores. bf16
//! training attention (`attention_bf16.cu`) runs its products itself, with PTX `mma.sync`.

use anyhow::{bail, Context, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

/// The kernel files in program order: a file may use what the files before it define.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cu", include_str!("common.cu")),
    ("bf16.cu", include_str!("bf16.cu")),
    ("f16.cu", include_str!("f16.cu")),
    ("colsum.cu", include_str!("colsum.cu")),
    ("encoder.cu", include_str!("encoder.cu")),
    ("layernorm.cu", include_str!("layernorm.cu")),
    ("gelu.cu", include_str!("gelu.cu")),
    ("residual.cu", include_str!("residual.cu")),
    ("dropout.cu", include_str!("dropout.cu")),
    ("crossentropy.cu", include_str!("crossentropy.cu")),
    ("attention.cu", include_str!("attention.cu")),
    ("attention_bf16.cu", include_str!("attention_bf16.cu")),
    ("adamw.cu", include_str!("adamw.cu")),
];

/// Head sizes the attention kernels are instantiated for (registers need a compile-time size);
/// a model uses the smallest that holds its head size.
pub const ATTENTION_HEAD_SIZES: &[usize] = &[32, 64, 128];

/// Rows per partial sum in `colsum.cu` and `layernorm_backward_params` (`COLSUM_ROWS`).
pub const COLSUM_ROWS: usize = 128;
/// Gradient elements per f64 partial sum of the global norm (`NORM_CHUNK` in `adamw.cu`), the
/// CPU's chunking.
pub const NORM_CHUNK: usize = 16384;
/// Rows (queries or keys) per block of the training attention kernels, f32 and bf16: `ATT_ROWS`
/// in `attention.cu` (a thread each) and `FA_ROWS` in `attention_bf16.cu` (16 per warp).
pub const ATTENTION_BLOCK_ROWS: usize = 64;
/// Threads per block of the f32 training attention kernels (`ATT_ROWS` in `attention.cu`).
pub const ATT_ROWS: usize = 64;
/// Threads per block of the bf16 ones (`FA_THREADS` in `attention_bf16.cu`).
pub const FLASH_THREADS: usize = 128;

/// Every kernel entry point the engine launches.
pub fn entry_points() -> Vec<String> {
    let mut names: Vec<String> = [
        "to_bf16",
        "to_bf16_stochastic",
        "to_f16",
        "colsum_partial",
        "colsum_partial_bf16",
        "colsum_finish",
        "encoder_forward",
        "encoder_backward_wte",
        "encoder_backward_wpe",
        "layernorm_forward",
        "layernorm_forward_bf16",
        "residual_layernorm_forward",
        "residual_layernorm_forward_bf16",
        "layernorm_backward_dx",
        "layernorm_backward_params",
        "gelu_forward",
        "gelu_forward_bf16",
        "gelu_backward_inplace",
        "gelu_backward_inplace_bf16",
        "residual_forward",
        "dropout_inplace",
        "crossentropy_forward",
        "crossentropy_forward_bf16",
        "crossentropy_backward_inplace",
        "crossentropy_backward_inplace_bf16",
        "attention_backward_d",
        "attention_backward_d_bf16",
        "kv_cache_write",
        "adamw_update",
        "norm_partials",
        "scale_inplace",
    ]
    .map(String::from)
    .to_vec();
    for hs in ATTENTION_HEAD_SIZES {
        for kernel in [
            "attention_forward",
            "attention_backward_dq",
            "attention_backward_dkv",
            "attention_cached",
            "flash_forward",
            "flash_backward_dq",
            "flash_backward_dkv",
        ] {
            names.push(format!("{kernel}_{hs}"));
        }
    }
    names
}

/// The whole program: every kernel file, in order.
pub fn program() -> String {
    SOURCES
        .iter()
        .map(|(name, src)| format!("// ---- {name} ----\n{src}\n"))
        .collect()
}

/// Whether the NVRTC library can be loaded (it is looked up on the library path at run time).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library; no symbol is used.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// PTX of the whole program for the virtual architecture `compute_<cc>` (e.g. 90 for sm_90).
/// f32 math stays IEEE (no fast-math), so results follow the CPU's formulas.
pub fn compile_ptx(cc: u32) -> Result<String> {
    if !nvrtc_available() {
        bail!(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit's NVRTC (or `pip install nvidia-cuda-nvrtc`) and put its lib folder on LD_LIBRARY_PATH"
        );
    }
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{cc}"),
            "--std=c++17".into(),
        ],
        name: Some("nanogpt_kernels.cu".into()),
        ..Default::default()
    };
    match compile_ptx_with_opts(program(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => bail!(
            "NVRTC could not compile the CUDA kernels for compute_{cc}: {}",
            log.to_string_lossy().trim().replace('\n', " | ")
        ),
        Err(e) => Err(e).context(format!(
            "NVRTC failed for compute_{cc} (is libnvrtc-builtins on LD_LIBRARY_PATH?)"
        )),
    }
}

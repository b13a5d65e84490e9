//! Finding the GPU: the driver library, a device, the libraries the engine loads at run time,
//! each missing piece reported as one line that says what to do.

use anyhow::{bail, Result};
use cudarc::driver::sys::cudaError_enum;
use cudarc::driver::{result, CudaContext};
use std::sync::Arc;

/// Whether a CUDA driver and at least one GPU are present (what `--device=auto` asks).
pub fn gpu_present() -> bool {
    // SAFETY: only tries to open the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    result::init().is_ok() && result::device::get_count().is_ok_and(|n| n > 0)
}

/// A context on GPU 0, or in a data-parallel run the launcher's local rank's GPU (pick others
/// with CUDA_VISIBLE_DEVICES), after checking that the driver and cuBLASLt can be loaded.
pub fn open_context() -> Result<Arc<CudaContext>> {
    // SAFETY: only tries to open the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("--device=cuda: no NVIDIA driver found (libcuda.so); install the driver, or use --device=cpu");
    }
    match result::init() {
        Ok(()) => {}
        Err(e) if e.0 == cudaError_enum::CUDA_ERROR_NO_DEVICE => bail!(
            "--device=cuda: the NVIDIA driver finds no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --device=cpu"
        ),
        Err(e) => bail!("--device=cuda: the NVIDIA driver did not start ({e:?}): check nvidia-smi, or use --device=cpu"),
    }
    let visible = match result::device::get_count() {
        Ok(n) if n > 0 => n as usize,
        _ => bail!(
            "--device=cuda: no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --device=cpu"
        ),
    };
    // Each rank of a data-parallel run on its own GPU: the launcher's local rank picks it.
    let ordinal = crate::dist::World::from_env()
        .ok()
        .flatten()
        .map_or(0, |w| w.local_rank);
    if ordinal >= visible {
        bail!(
            "--device=cuda: this is local rank {ordinal}, but only {visible} GPU(s) are visible: start at most {visible} rank(s) per machine"
        );
    }
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        bail!("--device=cuda: cuBLASLt (libcublasLt.so) was not found: install CUDA's cuBLAS (or `pip install nvidia-cublas`) and put its lib folder on LD_LIBRARY_PATH");
    }
    match CudaContext::new(ordinal) {
        Ok(ctx) => Ok(ctx),
        Err(e) => bail!(
            "--device=cuda: could not open GPU {ordinal} ({e:?}); check nvidia-smi, or use --device=cpu"
        ),
    }
}

/// The GPU's compute capability as major * 10 + minor (90 for an H100 or H200).
pub(super) fn compute_capability(ctx: &CudaContext) -> Result<u32> {
    match ctx.compute_capability() {
        Ok((major, minor)) => Ok((major * 10 + minor) as u32),
        Err(e) => bail!("could not read the GPU's compute capability: {e:?}"),
    }
}

//! The kernels on the device: the program of `kernels::cuda`, compiled by NVRTC for this GPU's
//! architecture once, then cached on disk (keyed by the source's hash and the architecture), so
//! later runs load the PTX without compiling.

use crate::atomic_file::write_atomic;
use crate::kernels::cuda::{compile_ptx, entry_points, program};
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub(super) struct Kernels {
    // The functions borrow from the module; keep it alive with them.
    _module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

impl Kernels {
    /// The kernels for a GPU of compute capability `cc` (see `device::compute_capability`).
    pub fn load(ctx: &Arc<CudaContext>, cc: u32) -> Result<Kernels> {
        let path = cache_path(cc);
        let cached = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let module = match cached.map(|ptx| ctx.load_module(Ptx::from_src(ptx))) {
            Some(Ok(module)) => module,
            // No cache, or a cache this driver cannot load: compile afresh.
            _ => {
                let ptx = compile_ptx(cc)?;
                let module = match ctx.load_module(Ptx::from_src(ptx.clone())) {
                    Ok(m) => m,
                    Err(e) => bail!(
                        "the GPU driver cannot load the kernels NVRTC compiled for compute_{cc} ({e:?}); an NVRTC newer than the driver makes PTX it rejects: use the NVRTC of the driver's CUDA version"
                    ),
                };
                if let Some(p) = &path {
                    // A cache that cannot be written only costs a compile next time.
                    if let Some(dir) = p.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = write_atomic(p, ptx.as_bytes());
                }
                module
            }
        };
        let mut functions = HashMap::new();
        for name in entry_points() {
            let f = module
                .load_function(&name)
                .map_err(|e| anyhow::anyhow!("kernel {name} is missing from the module: {e:?}"))?;
            functions.insert(name, f);
        }
        Ok(Kernels {
            _module: module,
            functions,
        })
    }

    pub fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .with_context(|| format!("no CUDA kernel named {name}"))
    }
}

/// `$XDG_CACHE_HOME/nanogpt/kernels` (or `~/.cache/...`), file `<source hash>-compute_<cc>.ptx`.
fn cache_path(cc: u32) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let hash = Sha256::digest(program().as_bytes());
    let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
    Some(
        base.join("nanogpt")
            .join("kernels")
            .join(format!("{hex}-compute_{cc}.ptx")),
    )
}

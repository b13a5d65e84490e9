//! The CPU emulator of CUDA (`tests/cuda_emulator/`, see its README) for the device tests on a
//! machine without a GPU: its libraries stand in for the driver, NVRTC, cuBLASLt and NCCL, so
//! the CUDA engine runs unchanged with its kernels compiled by the host's C++ compiler.
//!
//! `install` builds them (once per source hash, under the target directory) and loads them
//! before anything else asks for CUDA: each has the soname of the library it replaces, so the
//! engine's later loads by name get the emulator. On a machine with an NVIDIA driver it does
//! nothing (the tests run on the GPU), nor under NANOGPT_REQUIRE_GPU=1; NANOGPT_CUDA_EMULATOR=0
//! turns it off.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// (library it stands for, source file, optimisation).
const LIBRARIES: &[(&str, &str, &str)] = &[
    ("libcuda.so", "driver.cpp", "-O2"),
    ("libnvrtc.so", "nvrtc.cpp", "-O2"),
    ("libcublasLt.so", "cublaslt.cpp", "-O3"),
    ("libnccl.so", "nccl.cpp", "-O2"),
];

fn sources() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulator")
}

/// Puts the emulator in place of CUDA in this process, and returns the folder of its libraries
/// (for a child process's LD_LIBRARY_PATH); None on a machine with a driver, under
/// NANOGPT_REQUIRE_GPU=1, or when it is turned off or cannot be built (no C++ compiler: the
/// device tests then skip, except under CI=true, where that is a failure, as a missing NVRTC
/// is for tests/cuda_kernels.rs).
pub fn install() -> Option<&'static Path> {
    static INSTALLED: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = INSTALLED.get_or_init(|| {
        // NANOGPT_REQUIRE_GPU=1 (the device check) means the real GPU or nothing.
        let off = |var: &str, value: &str| std::env::var(var).is_ok_and(|v| v == value);
        if off("NANOGPT_CUDA_EMULATOR", "0") || off("NANOGPT_REQUIRE_GPU", "1") {
            return None;
        }
        // The driver under any name cudarc tries (a driver install often has only libcuda.so.1).
        // SAFETY: only tries to open the library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            return None;
        }
        let dir = match build() {
            Ok(dir) => dir,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("could not build the CUDA emulator ({e}); install a C++ compiler (g++)")
            }
            Err(e) => {
                eprintln!("the CUDA emulator could not be built ({e}): the CUDA tests are skipped; install a C++ compiler (g++) to run them");
                return None;
            }
        };
        for (name, _, _) in LIBRARIES {
            // SAFETY: our own libraries; their initialisers only set up static state.
            let lib = unsafe { libloading::Library::new(dir.join(name)) }
                .unwrap_or_else(|e| panic!("could not load the CUDA emulator's {name}: {e}"));
            std::mem::forget(lib);
        }
        eprintln!("no NVIDIA driver: the CUDA tests run on the CPU emulator of CUDA (tests/cuda_emulator)");
        Some(dir)
    });
    dir.as_deref()
}

/// `nanogpt` with the emulator's libraries first on its library path when the emulator stands
/// in for CUDA (see `install`), so `--device=cuda` runs on it; plain `nanogpt` on a GPU machine.
pub fn nanogpt() -> std::process::Command {
    let mut cmd = super::nanogpt();
    if let Some(dir) = install() {
        let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        cmd.env("LD_LIBRARY_PATH", format!("{}:{path}", dir.display()));
    }
    cmd
}

/// Compiles the libraries into a folder named by the hash of their sources.
fn build() -> Result<PathBuf, String> {
    let src = sources();
    let mut hash = Sha256::new();
    let files = LIBRARIES.iter().map(|(_, file, _)| *file);
    for file in files.chain(["kernel_runtime.h"]) {
        let text = std::fs::read(src.join(file)).map_err(|e| format!("{file}: {e}"))?;
        hash.update(&text);
    }
    let hex: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emulator");
    let dir = root.join(&hex);
    if dir.join("complete").exists() {
        return Ok(dir);
    }
    let staging = root.join(format!("{hex}.{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let kernels = root.join("kernels");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    for (name, file, opt) in LIBRARIES {
        let out = Command::new(&cxx)
            .args(["-std=c++17", opt, "-g", "-shared", "-fPIC", "-Wall"])
            .arg(format!("-Wl,-soname,{name}"))
            .arg(format!("-DEMU_DIR=\"{}\"", src.display()))
            .arg(format!("-DEMU_CACHE_DIR=\"{}\"", kernels.display()))
            .arg(format!("-DEMU_BUILD=\"{hex}\""))
            .arg(src.join(file))
            .arg("-o")
            .arg(staging.join(name))
            .arg("-ldl")
            .output()
            .map_err(|e| format!("{cxx}: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(format!(
                "{cxx} {file}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    std::fs::write(staging.join("complete"), b"").map_err(|e| e.to_string())?;
    // Another process may have finished the same build first; either copy serves.
    if std::fs::rename(&staging, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(dir)
}

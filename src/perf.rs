//! Speed accounting: device peaks, MFU, memory and allocation counts. (A CPU's peak is measured
//! by its backend, `engine::cpu`.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Dense peak TFLOP/s of known GPUs for the precision training would use on them (bf16 tensor
/// cores; the RTX cards' figures are with FP32 accumulation), from the vendors' data sheets. A
/// GPU backend looks its device name up here; `--peak_tflops` overrides. Longer names first, so
/// "H100 PCIe" is not taken for "H100".
pub const GPU_PEAK_TFLOPS: &[(&str, f64)] = &[
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("T4", 65.0),
];

/// The peak of a GPU whose name (as the driver reports it) contains a known model.
pub fn gpu_peak_tflops(device_name: &str) -> Option<f64> {
    GPU_PEAK_TFLOPS
        .iter()
        .find(|(model, _)| device_name.contains(model))
        .map(|&(_, peak)| peak)
}

/// Model FLOPs utilisation: achieved FLOP/s over the peak.
pub fn mfu(flops_per_iter: f64, seconds_per_iter: f64, peak_tflops: f64) -> f64 {
    flops_per_iter / seconds_per_iter / (peak_tflops * 1e12)
}

/// Peak resident set size of this process in MiB (Linux; None elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// gemm allocates its packing buffers on every call, some of tens of MB. glibc would mmap and
/// munmap each one (page faults plus TLB shootdowns on every matmul, ~5% of a training step);
/// keeping large blocks in the heap lets the same memory be reused call after call.
pub fn keep_large_allocations_in_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning knobs; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations so `bench` can report how many a training step
/// makes after warm-up. The binary installs it with `#[global_allocator]`.
pub struct CountingAlloc;

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Heap allocations so far (0 unless `CountingAlloc` is the global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_names_resolve_to_their_own_peak() {
        assert_eq!(gpu_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(gpu_peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(gpu_peak_tflops("NVIDIA A100-SXM4-40GB"), Some(312.0));
        assert_eq!(gpu_peak_tflops("NVIDIA GeForce RTX 3090"), Some(71.0));
        assert_eq!(gpu_peak_tflops("Some CPU"), None);
    }

    #[test]
    fn mfu_is_achieved_over_peak() {
        assert!((mfu(1e12, 0.5, 4.0) - 0.5).abs() < 1e-12);
    }
}

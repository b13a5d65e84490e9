//! Speed accounting: device peaks, MFU, memory and allocation counts. (A CPU's peak is measured
//! by its backend, `engine::cpu`.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Dense (no sparsity) peak TFLOP/s of one GPU model, per precision: bf16 on tensor cores
/// (FP32 accumulate), TF32 on tensor cores, and plain FP32 on the CUDA cores. Where a card has no
/// TF32 units, its TF32 figure is its FP32 one (cuBLAS falls back to FP32 there). The bf16 figure
/// is the f16 one too (the data sheets give both the same; V100 and T4, without bf16, list f16).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuPeak {
    /// A substring of the name the driver reports, e.g. "H100 PCIe".
    pub model: &'static str,
    pub bf16: f64,
    pub tf32: f64,
    pub fp32: f64,
}

const fn peak(model: &'static str, bf16: f64, tf32: f64, fp32: f64) -> GpuPeak {
    GpuPeak {
        model,
        bf16,
        tf32,
        fp32,
    }
}

/// Known GPUs, from NVIDIA's data sheets (the sheets print sparse tensor figures, twice the
/// dense ones used here). Longer names first, so "H100 PCIe" is not taken for "H100".
pub const GPU_PEAKS: &[GpuPeak] = &[
    // H200 NVL data sheet (nvidia.com/h200): bf16 1,671 sparse, TF32 835 sparse, FP32 60.
    peak("H200 NVL", 835.5, 417.5, 60.0),
    // H200 SXM data sheet (nvidia.com/h200): bf16 1,979 sparse, TF32 989 sparse, FP32 67.
    peak("H200", 989.4, 494.7, 67.0),
    // H100 data sheet (nvidia.com/h100), NVL: bf16 1,671 sparse, TF32 835 sparse, FP32 60.
    peak("H100 NVL", 835.5, 417.5, 60.0),
    // H100 data sheet, PCIe: bf16 1,513 sparse, TF32 756 sparse, FP32 51.
    peak("H100 PCIe", 756.5, 378.0, 51.0),
    // H100 data sheet, SXM5 (the driver says e.g. "NVIDIA H100 80GB HBM3"): bf16 1,979 sparse,
    // TF32 989 sparse, FP32 67.
    peak("H100", 989.4, 494.7, 67.0),
    // A100 data sheet (nvidia.com/a100), SXM and PCIe alike: bf16 312, TF32 156, FP32 19.5.
    peak("A100", 312.0, 156.0, 19.5),
    // L40S data sheet (nvidia.com/l40s): bf16 733 sparse, TF32 366 sparse, FP32 91.6.
    peak("L40S", 362.05, 183.0, 91.6),
    // L40 data sheet (nvidia.com/l40): bf16 362.1 sparse, TF32 181 sparse, FP32 90.5.
    peak("L40", 181.05, 90.5, 90.5),
    // L4 data sheet (nvidia.com/l4): bf16 242 sparse, TF32 120 sparse, FP32 30.3.
    peak("L4", 121.0, 60.0, 30.3),
    // Ada Lovelace architecture whitepaper, RTX 4090: bf16 (FP32 accumulate) 165.2 dense,
    // TF32 82.6 dense, FP32 82.6.
    peak("RTX 4090", 165.2, 82.6, 82.6),
    // Ampere GA102 whitepaper, RTX 3090: bf16 (FP32 accumulate) 71 dense, TF32 35.6 dense,
    // FP32 35.6.
    peak("RTX 3090", 71.0, 35.6, 35.6),
    // V100 data sheet, SXM2: FP16 tensor 125 (no bf16, no TF32), FP32 15.7.
    peak("V100", 125.0, 15.7, 15.7),
    // T4 data sheet: FP16 tensor 65 (no bf16, no TF32), FP32 8.1.
    peak("T4", 65.0, 8.1, 8.1),
];

/// The peaks of a GPU whose name (as the driver reports it) contains a known model.
pub fn gpu_peak(device_name: &str) -> Option<GpuPeak> {
    GPU_PEAKS
        .iter()
        .find(|p| device_name.contains(p.model))
        .copied()
}

/// The bf16 peak of a known GPU (what nanoGPT and llm.c report MFU against).
pub fn gpu_peak_tflops(device_name: &str) -> Option<f64> {
    gpu_peak(device_name).map(|p| p.bf16)
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

/// Asks the kernel to back `buf` with 2 MiB pages (transparent huge pages), now: a decoding
/// step streams every weight once, and with 4 KiB pages that is a TLB miss every 4 KiB read.
/// Best effort: where the kernel refuses (THP off, an old kernel), nothing changes.
pub fn back_with_huge_pages<T>(buf: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (buf.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_ptr() as usize + std::mem::size_of_val(buf)) / HUGE * HUGE;
        if end <= start {
            return;
        }
        // SAFETY: the range lies inside `buf`'s allocation; these advices change how its pages
        // are backed, never their contents.
        unsafe {
            let (ptr, len) = (start as *mut libc::c_void, end - start);
            libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
            #[cfg(target_env = "gnu")]
            libc::madvise(ptr, len, libc::MADV_COLLAPSE);
        }
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
        assert_eq!(gpu_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.4));
        assert_eq!(gpu_peak_tflops("NVIDIA H100 PCIe"), Some(756.5));
        assert_eq!(gpu_peak_tflops("NVIDIA H200"), Some(989.4));
        assert_eq!(gpu_peak_tflops("NVIDIA H200 NVL"), Some(835.5));
        assert_eq!(gpu_peak_tflops("NVIDIA L4"), Some(121.0));
        assert_eq!(gpu_peak_tflops("NVIDIA L40"), Some(181.05));
        assert_eq!(gpu_peak_tflops("NVIDIA L40S"), Some(362.05));
        assert_eq!(gpu_peak_tflops("NVIDIA GeForce RTX 4090"), Some(165.2));
        assert_eq!(gpu_peak("NVIDIA H200").map(|p| p.fp32), Some(67.0));
        assert_eq!(gpu_peak_tflops("NVIDIA A100-SXM4-40GB"), Some(312.0));
        assert_eq!(gpu_peak_tflops("NVIDIA GeForce RTX 3090"), Some(71.0));
        assert_eq!(gpu_peak_tflops("Some CPU"), None);
    }

    #[test]
    fn mfu_is_achieved_over_peak() {
        assert!((mfu(1e12, 0.5, 4.0) - 0.5).abs() < 1e-12);
    }
}

//! NANOGPT_CUDA_PROFILE=1: GPU time per kernel and per cuBLASLt product shape, from events
//! recorded around each launch on the stream, summed and printed to stderr when the engine
//! closes (`bench --device=cuda` with it set says where a step's time goes). The events cost a
//! little time of their own, so figures from a profiled run are not the benchmark's.

use cudarc::driver::{CudaEvent, CudaStream};
use std::collections::HashMap;

/// Events not yet read back before they are summed (each pair is two driver objects).
const PENDING_LIMIT: usize = 4096;

#[derive(Default)]
pub(super) struct Profile {
    pending: Vec<(String, CudaEvent, CudaEvent)>,
    /// Per name: milliseconds and calls.
    totals: HashMap<String, (f64, u64)>,
}

impl Profile {
    /// On when NANOGPT_CUDA_PROFILE=1.
    pub fn from_env() -> Option<Profile> {
        std::env::var("NANOGPT_CUDA_PROFILE")
            .is_ok_and(|v| v == "1")
            .then(Profile::default)
    }

    /// An event recorded on `stream` now, or None if the driver refuses one (the launch
    /// goes on untimed).
    pub fn mark(stream: &CudaStream) -> Option<CudaEvent> {
        let timing = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        stream.record_event(Some(timing)).ok()
    }

    pub fn add(&mut self, name: String, start: CudaEvent, end: CudaEvent) {
        self.pending.push((name, start, end));
        if self.pending.len() >= PENDING_LIMIT {
            self.settle();
        }
    }

    /// Waits for the pending events and adds their times to the totals.
    fn settle(&mut self) {
        for (name, start, end) in self.pending.drain(..) {
            if let Ok(ms) = start.elapsed_ms(&end) {
                let total = self.totals.entry(name).or_default();
                total.0 += ms as f64;
                total.1 += 1;
            }
        }
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        self.settle();
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let all: f64 = rows.iter().map(|r| r.1 .0).sum();
        eprintln!("GPU time by kernel (NANOGPT_CUDA_PROFILE=1), {all:.1} ms in all:");
        for (name, (ms, calls)) in rows {
            eprintln!(
                "{:>10.2} ms {:>5.1}% {calls:>8} calls  {name}",
                ms,
                100.0 * ms / all.max(f64::MIN_POSITIVE)
            );
        }
    }
}

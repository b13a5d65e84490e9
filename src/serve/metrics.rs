//! The server's counters, read by `GET /metrics` in Prometheus' text format. The engine thread
//! writes them; the HTTP side only reads (and counts requests).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Forward passes of the continuous batch, and the busy slots summed over them.
    pub steps: AtomicU64,
    pub step_slots: AtomicU64,
    /// Busy slots in the last step, and the most in any step.
    pub last_step_slots: AtomicU64,
    pub max_step_slots: AtomicU64,
    /// Time spent in steps (ns): tokens/s = generated tokens / this.
    pub busy_ns: AtomicU64,
    /// Slots decoding now, and choices waiting for one.
    pub busy_slots: AtomicU64,
    pub queued: AtomicU64,
}

impl Metrics {
    pub fn record_step(&self, slots: usize, generated: usize, took: Duration) {
        let r = Ordering::Relaxed;
        self.steps.fetch_add(1, r);
        self.step_slots.fetch_add(slots as u64, r);
        self.last_step_slots.store(slots as u64, r);
        self.max_step_slots.fetch_max(slots as u64, r);
        self.generated_tokens.fetch_add(generated as u64, r);
        self.busy_ns.fetch_add(took.as_nanos() as u64, r);
    }

    /// Prometheus text exposition, version 0.0.4.
    pub fn render(&self, parallel: usize) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let busy_s = g(&self.busy_ns) as f64 * 1e-9;
        let tokens_per_s = if busy_s > 0.0 {
            g(&self.generated_tokens) as f64 / busy_s
        } else {
            0.0
        };
        let steps = g(&self.steps);
        let per_step = if steps > 0 {
            g(&self.step_slots) as f64 / steps as f64
        } else {
            0.0
        };
        let rows: [(&str, &str, &str, f64); 13] = [
            (
                "requests_total",
                "counter",
                "Completion requests accepted",
                g(&self.requests) as f64,
            ),
            (
                "requests_rejected_total",
                "counter",
                "Requests refused because the queue was full",
                g(&self.rejected) as f64,
            ),
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens prefilled",
                g(&self.prompt_tokens) as f64,
            ),
            (
                "generated_tokens_total",
                "counter",
                "Tokens generated",
                g(&self.generated_tokens) as f64,
            ),
            (
                "decode_steps_total",
                "counter",
                "Forward passes of the continuous batch",
                steps as f64,
            ),
            (
                "decode_step_slots_total",
                "counter",
                "Busy slots summed over forward passes",
                g(&self.step_slots) as f64,
            ),
            (
                "busy_slots_per_step",
                "gauge",
                "Mean busy slots per forward pass since start",
                per_step,
            ),
            (
                "last_step_slots",
                "gauge",
                "Busy slots in the last forward pass",
                g(&self.last_step_slots) as f64,
            ),
            (
                "max_step_slots",
                "gauge",
                "Most busy slots in one forward pass",
                g(&self.max_step_slots) as f64,
            ),
            (
                "tokens_per_second",
                "gauge",
                "Generated tokens per second of forward passes",
                tokens_per_s,
            ),
            (
                "busy_slots",
                "gauge",
                "Slots decoding now",
                g(&self.busy_slots) as f64,
            ),
            (
                "queue_depth",
                "gauge",
                "Choices waiting for a slot",
                g(&self.queued) as f64,
            ),
            ("slots", "gauge", "Slots (--parallel)", parallel as f64),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP nanogpt_{name} {help}");
            let _ = writeln!(out, "# TYPE nanogpt_{name} {kind}");
            let _ = writeln!(out, "nanogpt_{name} {value}");
        }
        out
    }
}

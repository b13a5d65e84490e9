//! Global command-line options, through the binary.

use std::process::Command;

#[test]
fn absurd_thread_counts_are_capped_with_a_note() {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    // A command that fails at once after the pool is set up: only the note matters here.
    let out = Command::new(env!("CARGO_BIN_EXE_nanogpt"))
        .args(["--threads=5000", "prepare", "arithmetic", "--ops=++"])
        .output()
        .expect("run nanogpt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--threads=5000 is more than 4x this machine's {cores} cores; using {}",
            4 * cores
        )),
        "{stderr}"
    );
    assert!(stderr.contains("+ twice"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_nanogpt"))
        .args(["--threads=2", "prepare", "arithmetic", "--ops=++"])
        .output()
        .expect("run nanogpt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("--threads"), "{stderr}");
}

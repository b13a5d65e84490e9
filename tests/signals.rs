//! Training stopped from outside, through the real binary: SIGINT, SIGTERM and SIGHUP each save
//! `latest/` and exit with 128 + the signal (so `train && next` stops), a resume then continues
//! the uninterrupted run exactly, one Ctrl-C delivered twice (as under `timeout`) still saves,
//! and a closed stdout does not stop the run.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const ITERS: usize = 300;

/// `nanogpt train` on a small character model, logging every iteration. The learning rate is
/// constant, so runs of different lengths share one schedule.
fn train(data: &Path, out: &Path, init_from: &str) -> Command {
    let mut cmd = common::nanogpt();
    cmd.arg("--threads=1").arg("train");
    cmd.args(common::TINY_CHAR_TRAIN).args([
        "--eval_iters=1",
        "--eval_interval=100000",
        "--decay_lr=false",
        "--dropout=0.0",
        "--peak_tflops=1",
    ]);
    cmd.arg(format!("--max_iters={ITERS}"));
    cmd.arg(format!("--init_from={init_from}"));
    cmd.arg(format!("--data_dir={}", data.display()));
    cmd.arg(format!("--out_dir={}", out.display()));
    cmd
}

/// Waits for the log line of iteration `at`, sends `signals` to the child (back to back), and
/// returns the exit status and the whole log.
fn interrupt_at(mut child: Child, at: usize, signals: &[i32]) -> (i32, String) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut log = common::read_until_iter(&mut reader, at);
    for &sig in signals {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    reader.read_to_string(&mut log).expect("read log");
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), log)
}

fn state_iter(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("train_state.json")).expect("train_state.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["iter_num"].as_u64().expect("iter_num") as usize
}

#[test]
fn each_signal_saves_exits_with_its_status_and_resumes_exactly() {
    let root = common::TempDir::new("signals", "each");
    let data = common::prepare_shakespeare_char(&root);
    let full = train(&data, &root.join("full"), "scratch")
        .output()
        .expect("uninterrupted run");
    assert!(full.status.success());
    let full = common::loss_lines(&String::from_utf8_lossy(&full.stdout));
    assert_eq!(full.len(), ITERS + 1, "one loss line per iteration");

    let cases = [
        ("sigint", vec![libc::SIGINT], 130),
        ("sigterm", vec![libc::SIGTERM], 143),
        ("sighup", vec![libc::SIGHUP], 129),
        // One Ctrl-C seen twice (the terminal's and timeout's copy): still one save.
        ("sigint-twice", vec![libc::SIGINT, libc::SIGINT], 130),
    ];
    for (name, signals, want_status) in cases {
        let out = root.join(name);
        let child = train(&data, &out, "scratch")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn train");
        let (status, log) = interrupt_at(child, 5, &signals);
        assert_eq!(status, want_status, "{name}: exit status\n{log}");
        assert!(log.contains("interrupted: saved"), "{name}: no save\n{log}");
        let saved = state_iter(&out.join("latest"));
        assert!(saved > 5 && saved < ITERS, "{name}: saved at {saved}");

        let resumed = train(&data, &out, "resume").output().expect("resume");
        assert!(resumed.status.success(), "{name}: resume failed");
        let resumed = common::loss_lines(&String::from_utf8_lossy(&resumed.stdout));
        assert_eq!(resumed.first().map(|l| l.0), Some(saved), "{name}");
        assert_eq!(
            resumed[..],
            full[saved..],
            "{name}: the resumed losses differ from the uninterrupted run's"
        );
    }
}

#[test]
fn a_closed_stdout_does_not_stop_training() {
    let root = common::TempDir::new("signals", "closed");
    let data = common::prepare_shakespeare_char(&root);
    let out = root.join("out");
    let mut child = train(&data, &out, "scratch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn train");
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("first line");
    // The reader goes away (as `nanogpt train | head -1` does).
    drop(reader);
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert_eq!(state_iter(&out.join("latest")), ITERS + 1);
}

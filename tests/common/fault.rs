//! Fault injection for the prepare commands: kill -9 at seeded random moments of the real
//! binary, then check what a reader finds and that a rerun finishes the job.

use nanogpt::data::dataset::{is_split_file, verify, RECORD_FILE};
use nanogpt::rng::Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The seed of the kill moments: `NANOGPT_FAULT_SEED`, else a fixed one, so that a failure
/// reproduces (each test mixes in its own name).
pub fn fault_rng(test: &str) -> (Rng, u64) {
    let seed = std::env::var("NANOGPT_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20240520u64);
    let salt = test
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    (Rng::new(seed ^ salt), seed)
}

/// Kills each command gets in CI (at least 30): `NANOGPT_FAULT_KILLS`, else 30.
pub fn kills_wanted() -> usize {
    std::env::var("NANOGPT_FAULT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// The files of `dir` that make up its dataset (token files, vocabularies, `dataset.json`)
/// and their bytes; temp files, inputs, manifests and downloads are not part of it.
pub fn dataset_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == RECORD_FILE
                || n == "meta.json"
                || n == "meta.pkl"
                || is_split_file(n, "train")
                || is_split_file(n, "val")
        })
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).expect("read a dataset file");
            (n, bytes)
        })
        .collect()
}

/// Runs `command` to the end; panics with its stderr unless it succeeds. Returns how long it
/// took.
pub fn run_ok(command: &mut Command) -> Duration {
    let start = Instant::now();
    let out = command.output().expect("run nanogpt");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// Starts `command`, and kills it with SIGKILL after `delay` unless it finished first.
/// Returns `None` when the kill landed, else how long the run took.
pub fn run_killed(command: &mut Command, delay: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nanogpt");
    let deadline = start + delay;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(start.elapsed());
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_micros(200)));
    }
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    // It may have exited on its own between the last poll and the kill.
    match status.signal() {
        Some(libc::SIGKILL) => None,
        _ => Some(start.elapsed()),
    }
}

/// A kill moment for attempt number `attempt`, given the fastest run's `length`: uniform over
/// it, or, every other attempt, from its middle to twice as long (the commit is at the end, and
/// most runs are slower than the fastest one; a run that ends first is no kill).
pub fn kill_delay(rng: &mut Rng, length: Duration, attempt: usize) -> Duration {
    let us = length.as_micros().max(1) as u64;
    let at = if attempt.is_multiple_of(2) {
        rng.below(us)
    } else {
        us / 2 + rng.below(us * 3 / 2 + 1)
    };
    Duration::from_micros(at)
}

/// What a reader found after a kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Found {
    /// The previous complete state, verified (or legacy and unchanged).
    Old,
    /// The new complete state, verified.
    New,
    /// A half-committed state, refused with the message that says to rerun.
    Refused,
}

/// Classifies the dataset in `dir` after a kill. Panics on anything but the old state, the new
/// one, or a refusal while the new state's record is in place (only a commit in progress may
/// be refused, and a rerun completes it). The record itself is compared by the files it
/// lists: during a commit it also lists the state it replaces.
pub fn check_after_kill(
    dir: &Path,
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
    what: &str,
) -> Found {
    let without_record = |s: &BTreeMap<String, Vec<u8>>| {
        let mut s = s.clone();
        s.remove(RECORD_FILE);
        s
    };
    let listed = |s: &BTreeMap<String, Vec<u8>>| {
        s.get(RECORD_FILE).map(|r| {
            serde_json::from_slice::<serde_json::Value>(r).expect("dataset.json is JSON")["files"]
                .clone()
        })
    };
    let now = dataset_snapshot(dir);
    let files = without_record(&now);
    match verify(dir) {
        Ok(_) if files == without_record(old) => Found::Old,
        Ok(_) if files == without_record(new) && listed(&now) == listed(new) => Found::New,
        Ok(v) => panic!(
            "{what}: the dataset verifies ({v:?}) but is neither the old nor the new one: {:?}",
            now.keys().collect::<Vec<_>>()
        ),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("not a complete dataset")
                    && e.contains("rerun the prepare command")
                    && !e.contains('\n'),
                "{what}: {e}"
            );
            assert_eq!(
                listed(&now),
                listed(new),
                "{what}: refused ({e}) outside the commit"
            );
            Found::Refused
        }
    }
}

/// Tally of outcomes, printed at the end of a test.
#[derive(Default, Debug)]
pub struct Tally {
    pub kills: usize,
    /// Runs that finished before their kill moment (not counted as kills).
    pub finished_first: usize,
    pub found: BTreeMap<String, usize>,
}

impl Tally {
    pub fn add(&mut self, found: Found) {
        self.kills += 1;
        *self.found.entry(format!("{found:?}")).or_default() += 1;
    }
}

/// Copies the files of `from` into a fresh `to`.
pub fn restore(to: &Path, from: &BTreeMap<String, Vec<u8>>) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("mkdir");
    for (name, bytes) in from {
        std::fs::write(to.join(name), bytes).expect("write");
    }
}

/// Names of temp files left in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

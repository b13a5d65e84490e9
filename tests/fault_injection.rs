//! Fault injection on the real binary: `prepare text` (characters and GPT-2, over an existing
//! dataset) and `prepare shakespeare_char` are killed with SIGKILL at seeded random moments
//! (`NANOGPT_FAULT_KILLS`, default 30 per command; `NANOGPT_FAULT_SEED`), and stopped by a full
//! disk (a file-size limit). After each fault the folder holds the previous complete dataset,
//! the new one, or (killed during the commit's renames) a state the reader refuses, which the
//! first step of any later prepare into the folder rolls forward to the new one (checked with a
//! prepare that then fails on its input); a rerun always finishes byte-identical to an
//! uninterrupted run. `prepare openwebtext` gets the same
//! in tests/prepare_openwebtext.rs, which has the mock hub.

mod common;

use common::fault::{
    check_after_kill, dataset_snapshot, fault_rng, kill_delay, kills_wanted, restore, run_killed,
    run_ok, temp_files, Found, Tally,
};
use common::TempDir;
use nanogpt::atomic_file::tmp_path;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Two corpora as JSON lines, of different sizes and vocabularies: A is the first 4000 lines
/// of tiny Shakespeare (about 60 characters), B the next 3000 lowercased and stripped to
/// letters and a little punctuation (about 35).
fn corpora(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(common::fixtures().join("../data/tinyshakespeare.txt"))
        .expect("tiny shakespeare");
    let lines: Vec<&str> = text.lines().collect();
    let as_jsonl = |docs: Vec<String>| -> String {
        docs.chunks(4)
            .map(|c| serde_json::json!({ "text": c.join("\n") }).to_string() + "\n")
            .collect()
    };
    let a: Vec<String> = lines[..4000].iter().map(|l| l.to_string()).collect();
    let b: Vec<String> = lines[4000..7000]
        .iter()
        .map(|l| {
            l.to_lowercase()
                .chars()
                .filter(|c| c.is_ascii_lowercase() || " .,'\n".contains(*c))
                .collect()
        })
        .collect();
    let (pa, pb) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    std::fs::write(&pa, as_jsonl(a)).expect("write a");
    std::fs::write(&pb, as_jsonl(b)).expect("write b");
    (pa, pb)
}

fn nanogpt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nanogpt"))
}

/// `prepare text` of `input` into `data_dir/ds` with `extra` flags.
fn prepare_text(input: &Path, data_dir: &Path, extra: &[&str]) -> Command {
    let mut c = nanogpt();
    c.args(["prepare", "text", "--name=ds", "--val_fraction=0.1"])
        .args(extra)
        .arg("--input")
        .arg(input)
        .arg("--data_dir")
        .arg(data_dir);
    c
}

/// `prepare text` into `data_dir/name` of JSON lines whose third line is broken: it fails while
/// tokenizing, after the prepare's first step (rolling forward an interrupted commit).
fn failing_prepare(dir: &Path, data_dir: &Path, name: &str) -> Command {
    let input = dir.join("broken.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": oops}\n",
    )
    .expect("write");
    let mut c = nanogpt();
    c.args(["prepare", "text", "--name", name, "--input"])
        .arg(&input)
        .arg("--data_dir")
        .arg(data_dir);
    c
}

/// Kills `new_run` at random moments over the old dataset (`old`, restored each time; as a
/// legacy folder without `dataset.json` half of the time), checks what is left, that a failing
/// prepare into the folder (`failing_run`) rolls a refused state forward to the new one and
/// leaves the others as they are, and that a rerun gives `new`. Returns the tally.
fn kill_repeatedly(
    test: &str,
    dir: &Path,
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
    new_run: &dyn Fn() -> Command,
    failing_run: &dyn Fn() -> Command,
) -> Tally {
    let (mut rng, seed) = fault_rng(test);
    // The run's length over the old dataset, measured.
    restore(dir, old);
    let mut length = run_ok(&mut new_run());
    assert_eq!(&dataset_snapshot(dir), new);
    let mut tally = Tally::default();
    let mut attempt = 0;
    while tally.kills < kills_wanted() {
        attempt += 1;
        assert!(
            attempt < 4 * kills_wanted() + 20,
            "{test}: the runs keep finishing before their kill ({tally:?})"
        );
        // Every other pair of attempts, so that both kinds get early and late kills.
        let legacy = (attempt / 2).is_multiple_of(2);
        let mut before = old.clone();
        if legacy {
            before.remove("dataset.json");
        }
        restore(dir, &before);
        let delay = kill_delay(&mut rng, length, attempt);
        let what =
            format!("{test}, seed {seed}, attempt {attempt} (kill at {delay:?}, legacy {legacy})");
        if let Some(took) = run_killed(&mut new_run(), delay) {
            // Runs vary with the machine's load: aim the next kills within the fastest.
            length = length.min(took);
            tally.finished_first += 1;
            assert_eq!(&dataset_snapshot(dir), new, "{what}: finished");
            continue;
        }
        let found = check_after_kill(dir, &before, new, &what);
        tally.add(found);
        let out = failing_run().output().expect("run nanogpt");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("invalid JSON") && stderr.lines().count() == 1,
            "{what}: {stderr}"
        );
        let rolled = match found {
            Found::Refused => Found::New,
            other => other,
        };
        assert_eq!(
            check_after_kill(dir, &before, new, &what),
            rolled,
            "{what}: after a failing prepare"
        );
        run_ok(&mut new_run());
        assert_eq!(
            &dataset_snapshot(dir),
            new,
            "{what}: the rerun after {found:?}"
        );
        assert!(temp_files(dir).is_empty(), "{what}: {:?}", temp_files(dir));
    }
    eprintln!("{test}: seed {seed}, run length {length:?}, {tally:?}");
    tally
}

/// Characters over characters: the new `train.bin` must never be read with the old
/// `meta.json` (the 5-in-40 failure).
#[test]
fn prepare_text_char_killed_at_random() {
    let dir = TempDir::new("fault", "text-char");
    let (a, b) = corpora(&dir);
    let data = dir.join("data");
    let ds = data.join("ds");
    run_ok(&mut prepare_text(&a, &data, &["--tokenizer=char"]));
    let old = dataset_snapshot(&ds);
    let run_b = || prepare_text(&b, &data, &["--tokenizer=char"]);
    run_ok(&mut run_b());
    let new = dataset_snapshot(&ds);
    assert_ne!(old["meta.json"], new["meta.json"]);
    let failing = || failing_prepare(&dir, &data, "ds");
    kill_repeatedly("text-char", &ds, &old, &new, &run_b, &failing);
}

/// GPT-2 over characters written as shards: the commit also removes the old shards and the
/// old vocabulary.
#[test]
fn prepare_text_gpt2_over_char_shards_killed_at_random() {
    let dir = TempDir::new("fault", "text-gpt2");
    let (a, b) = corpora(&dir);
    let data = dir.join("data");
    let ds = data.join("ds");
    run_ok(&mut prepare_text(
        &a,
        &data,
        &["--tokenizer=char", "--shard_tokens=20000"],
    ));
    let old = dataset_snapshot(&ds);
    assert!(old.contains_key("train_000003.bin") && old.contains_key("meta.json"));
    let run_b = || prepare_text(&b, &data, &[]);
    run_ok(&mut run_b());
    let new = dataset_snapshot(&ds);
    assert_eq!(
        new.keys().collect::<Vec<_>>(),
        ["dataset.json", "train.bin", "val.bin"]
    );
    let failing = || failing_prepare(&dir, &data, "ds");
    kill_repeatedly("text-gpt2", &ds, &old, &new, &run_b, &failing);
}

#[test]
fn prepare_shakespeare_char_killed_at_random() {
    let dir = TempDir::new("fault", "shakespeare-char");
    let text = std::fs::read_to_string(common::fixtures().join("../data/tinyshakespeare.txt"))
        .expect("tiny shakespeare");
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    std::fs::write(&a, &text[..300_000]).expect("write");
    std::fs::write(&b, text[300_000..500_000].to_lowercase()).expect("write");
    let data = dir.join("data");
    let ds = data.join("shakespeare_char");
    let run = |input: &Path| {
        let mut c = nanogpt();
        c.args(["prepare", "shakespeare_char", "--input"])
            .arg(input)
            .arg("--data_dir")
            .arg(&data);
        c
    };
    run_ok(&mut run(&a));
    let old = dataset_snapshot(&ds);
    run_ok(&mut run(&b));
    let new = dataset_snapshot(&ds);
    assert_ne!(old["meta.json"], new["meta.json"]);
    let failing = || failing_prepare(&dir, &data, "shakespeare_char");
    kill_repeatedly("shakespeare-char", &ds, &old, &new, &|| run(&b), &failing);
}

/// A full disk, simulated with a file-size limit at random sizes (writes then fail with EFBIG,
/// as they would with ENOSPC): a clear error, the old dataset as it was and verified, no temp
/// files; then a rerun finishes.
#[test]
fn prepare_text_on_a_full_disk_keeps_the_old_dataset() {
    let dir = TempDir::new("fault", "disk-full");
    let (a, b) = corpora(&dir);
    let data = dir.join("data");
    let ds = data.join("ds");
    run_ok(&mut prepare_text(&a, &data, &["--tokenizer=char"]));
    let old = dataset_snapshot(&ds);
    let run_b = || prepare_text(&b, &data, &["--tokenizer=char"]);
    run_ok(&mut run_b());
    let new = dataset_snapshot(&ds);
    let largest = new.values().map(|v| v.len()).max().expect("files") as u64;
    let (mut rng, seed) = fault_rng("disk-full");
    for attempt in 0..10 {
        restore(&ds, &old);
        let limit = rng.below(largest);
        let mut c = run_b();
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &l);
                Ok(())
            });
        }
        let out = c.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("seed {seed}, attempt {attempt}, limit {limit} bytes");
        assert!(!out.status.success(), "{what}: succeeded");
        assert!(
            stderr.contains("disk full") && stderr.lines().count() == 1,
            "{what}: {stderr}"
        );
        assert_eq!(
            check_after_kill(&ds, &old, &new, &what),
            Found::Old,
            "{what}"
        );
        assert!(temp_files(&ds).is_empty(), "{what}: {:?}", temp_files(&ds));
    }
    run_ok(&mut run_b());
    assert_eq!(dataset_snapshot(&ds), new);
}

/// Every state a kill during the commit's renames and removals leaves (the window is
/// microseconds, so random kills rarely land in it), made by hand from the two runs' files:
/// the reader refuses it, and a prepare into the folder that then fails on its input has
/// rolled it forward to the new dataset first.
#[test]
fn a_commit_killed_during_its_renames_is_rolled_forward_by_the_next_prepare() {
    let dir = TempDir::new("fault", "roll-forward");
    let (a, b) = corpora(&dir);
    let data = dir.join("data");
    let ds = data.join("ds");
    let mut cases = 0;
    for (old_flags, new_flags) in [
        (&["--tokenizer=char"][..], &["--tokenizer=char"][..]),
        (&["--tokenizer=char", "--shard_tokens=20000"][..], &[][..]),
    ] {
        run_ok(&mut prepare_text(&a, &data, old_flags));
        let old = dataset_snapshot(&ds);
        run_ok(&mut prepare_text(&b, &data, new_flags));
        let new = dataset_snapshot(&ds);
        let files = |s: &BTreeMap<String, Vec<u8>>| {
            serde_json::from_slice::<serde_json::Value>(&s["dataset.json"]).expect("record")
                ["files"]
                .clone()
        };
        let record = serde_json::json!({
            "format": "nanogpt-dataset/1", "files": files(&new), "previous": files(&old)
        });
        let names: Vec<&String> = new.keys().filter(|n| *n != "dataset.json").collect();
        // Kill points: after k renames; k = all of them leaves the removals undone.
        for k in 1..=names.len() {
            let what = format!("{old_flags:?} -> {new_flags:?}, {k} renamed");
            restore(&ds, &old);
            std::fs::write(ds.join("dataset.json"), record.to_string()).expect("record");
            for (i, name) in names.iter().enumerate() {
                let path = ds.join(name);
                let to = if i < k { path } else { tmp_path(&path) };
                std::fs::write(to, &new[*name]).expect("write");
            }
            // All renamed and nothing to remove is the new dataset already.
            let done = k == names.len() && old.keys().all(|n| new.contains_key(n));
            let found = check_after_kill(&ds, &old, &new, &what);
            assert_eq!(
                found,
                if done { Found::New } else { Found::Refused },
                "{what}"
            );
            if done {
                continue;
            }
            let out = failing_prepare(&dir, &data, "ds").output().expect("run");
            assert!(!out.status.success(), "{what}");
            assert_eq!(
                check_after_kill(&ds, &old, &new, &what),
                Found::New,
                "{what}"
            );
            assert!(temp_files(&ds).is_empty(), "{what}: {:?}", temp_files(&ds));
            cases += 1;
        }
    }
    assert_eq!(cases, 4);
}

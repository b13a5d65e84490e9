//! Dataset folders change from one complete state to another (`dataset.json`), and readers can
//! tell: every intermediate state of a commit is refused or complete, a commit killed midway is
//! finished by rerunning it, legacy folders are read as they are. Training reads llm.c shards
//! exactly as the same tokens in one `train.bin`. Prepare-side checks: dataset names, lone
//! surrogates in JSON lines.

mod common;

use common::TempDir;
use nanogpt::arithmetic::{prepare_arithmetic, ArithmeticOptions, Op};
use nanogpt::atomic_file::{tmp_path, PendingFile};
use nanogpt::data::dataset::{
    commit_recorded, dataset_dir, fingerprint, finish_interrupted, stage, verify, Verified,
};
use nanogpt::data::writer::write_tokens_pending;
use nanogpt::data::{prepare_text, TextPrepareOptions, TextTokenizer, TokenFormat, TokenSplit};
use nanogpt::rng::Rng;
use nanogpt::tokenizer::{Gpt2Bpe, EOT};
use nanogpt::train::{train, TrainConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Every file in `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn restore(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

/// Pending files for a character dataset: train/val tokens and a meta.json, all of `seed`.
fn pending_dataset(dir: &Path, seed: u64, train_len: usize) -> Vec<PendingFile> {
    let mut rng = Rng::new(seed);
    let tokens = |n: usize, rng: &mut Rng| (0..n).map(|_| rng.below(40) as u32).collect::<Vec<_>>();
    vec![
        write_tokens_pending(
            &dir.join("train.bin"),
            &tokens(train_len, &mut rng),
            TokenFormat::RawU16,
        )
        .expect("train"),
        write_tokens_pending(
            &dir.join("val.bin"),
            &tokens(100, &mut rng),
            TokenFormat::RawU16,
        )
        .expect("val"),
        nanogpt::atomic_file::write_pending(
            &dir.join("meta.json"),
            format!("{{\"seed\": {seed}}}").as_bytes(),
        )
        .expect("meta"),
    ]
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let e = format!("{:#}", r.expect_err("expected an error"));
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn a_commit_verifies_and_changed_files_are_refused() {
    let dir = TempDir::new("dataset", "verify");
    // No record: read as it is.
    std::fs::write(dir.join("train.bin"), [1u8, 0]).expect("write");
    assert_eq!(verify(&dir).expect("legacy"), Verified::Legacy);
    let removed = stage(&dir, pending_dataset(&dir, 1, 5000))
        .expect("stage")
        .commit()
        .expect("commit");
    assert!(removed.is_empty());
    assert_eq!(verify(&dir).expect("verify"), Verified::Recorded);
    let good = snapshot(&dir);
    assert!(
        !good.keys().any(|n| n.ends_with(".tmp")),
        "{:?}",
        good.keys()
    );

    let refused = |what: &str| {
        let e = err_text(verify(&dir));
        assert!(
            e.contains(dir.to_str().unwrap()) && e.contains("rerun the prepare command"),
            "{what}: {e}"
        );
        e
    };
    // A file of another size; one of the same size with other bytes; a missing one; one
    // that the record does not name; a damaged record.
    let mut train = good["train.bin"].clone();
    std::fs::write(dir.join("train.bin"), &train[..100]).expect("write");
    assert!(refused("shorter").contains("train.bin has 100 bytes"));
    train[5000] ^= 1;
    std::fs::write(dir.join("train.bin"), &train).expect("write");
    assert!(refused("same size").contains("train.bin is not the file"));
    restore(&dir, &good);
    std::fs::remove_file(dir.join("val.bin")).expect("rm");
    assert!(refused("missing").contains("val.bin is missing"));
    restore(&dir, &good);
    std::fs::write(dir.join("train_000000.bin"), [0u8; 4]).expect("write");
    assert!(refused("extra").contains("train_000000.bin is not in dataset.json"));
    restore(&dir, &good);
    std::fs::write(dir.join("dataset.json"), "{\"format\": ").expect("write");
    assert!(refused("damaged").contains("damaged"));
    // Other files (inputs, the stream manifest, temp files) are not the dataset's.
    restore(&dir, &good);
    for other in ["input.txt", "manifest.json", "train.bin.tmp", "notes.bin"] {
        std::fs::write(dir.join(other), "x").expect("write");
    }
    assert_eq!(verify(&dir).expect("verify"), Verified::Recorded);
}

/// Every state a kill can leave during a commit (the record written, then each rename, then the
/// stale files removed): the reader accepts the old state until the first rename and the new
/// one after the removals, and refuses the states between, which a prepare rolls forward
/// before anything else; finishing the commit from its record always ends in the new state,
/// byte for byte.
#[test]
fn every_intermediate_state_of_a_commit_is_complete_or_refused() {
    let root = TempDir::new("dataset", "steps");
    for legacy in [false, true] {
        // The old state: a larger dataset with a shard family the new one does not have.
        let old_dir = root.join(format!("old-{legacy}"));
        std::fs::create_dir_all(&old_dir).expect("mkdir");
        let mut old_files = pending_dataset(&old_dir, 1, 3000);
        old_files.push(
            write_tokens_pending(&old_dir.join("val_000000.bin"), &[1, 2], TokenFormat::Shard)
                .expect("shard"),
        );
        stage(&old_dir, old_files)
            .expect("stage")
            .commit()
            .expect("commit");
        if legacy {
            std::fs::remove_file(old_dir.join("dataset.json")).expect("rm");
        }
        let old = snapshot(&old_dir);

        // The new state, complete: staged, committed in a copy.
        let new_dir = root.join(format!("new-{legacy}"));
        restore(&new_dir, &old);
        let staged = stage(&new_dir, pending_dataset(&new_dir, 2, 2000)).expect("stage");
        let entries = staged.files().to_vec();
        let staged_files = snapshot(&new_dir);
        let removed = staged.commit().expect("commit");
        assert_eq!(removed, vec![new_dir.join("val_000000.bin")]);
        let new = snapshot(&new_dir);

        // The record a commit writes first: the new files, and the old ones while they last.
        let previous: Vec<_> = if legacy {
            old.keys()
                .map(|n| fingerprint(&old_dir.join(n), n.clone()).expect("fingerprint"))
                .collect()
        } else {
            let record: serde_json::Value =
                serde_json::from_slice(&old["dataset.json"]).expect("old record");
            serde_json::from_value(record["files"].clone()).expect("old files")
        };
        let record = serde_json::to_string_pretty(&serde_json::json!({
            "format": "nanogpt-dataset/1", "files": entries, "previous": previous
        }))
        .expect("json");
        let without_record = |mut s: BTreeMap<String, Vec<u8>>| {
            s.remove("dataset.json");
            s
        };

        // Kill points: before the record; after it and k - 1 renames; after the removals.
        let dir = root.join(format!("steps-{legacy}"));
        for k in 0..=entries.len() + 2 {
            restore(&dir, &staged_files);
            if k > 0 {
                std::fs::write(dir.join("dataset.json"), &record).expect("record");
            }
            for e in entries.iter().take(k.saturating_sub(1)) {
                let path = dir.join(&e.name);
                std::fs::rename(tmp_path(&path), &path).expect("rename");
            }
            if k == entries.len() + 2 {
                std::fs::remove_file(dir.join("val_000000.bin")).expect("rm");
            }
            let files: BTreeMap<_, _> = snapshot(&dir)
                .into_iter()
                .filter(|(n, _)| !n.ends_with(".tmp") && n != "dataset.json")
                .collect();
            let what = format!("legacy {legacy}, kill point {k}");
            match verify(&dir) {
                Ok(_) => {
                    let is_old = files == without_record(old.clone());
                    let is_new = files == without_record(new.clone());
                    assert!(is_old || is_new, "{what}: neither old nor new verifies");
                    assert!(is_old == (k <= 1), "{what}: old until the first rename");
                }
                Err(e) => {
                    assert!(format!("{e}").contains("not a complete dataset"), "{e}");
                    assert!(
                        (2..=entries.len() + 1).contains(&k),
                        "{what}: refused outside the renames and removals"
                    );
                }
            }
            // A prepare's first step rolls forward exactly the refused states.
            let rolled = finish_interrupted(&dir).expect("roll forward");
            assert_eq!(rolled, (2..=entries.len() + 1).contains(&k), "{what}");
            if rolled {
                assert_eq!(snapshot(&dir), new, "{what}: rolled forward");
                verify(&dir).expect("rolled forward");
            }
            if k == 0 {
                continue; // a rerun of prepare stages the files again
            }
            commit_recorded(&dir, &entries).expect("finish the commit");
            assert_eq!(snapshot(&dir), new, "{what}");
        }
    }
}

#[test]
fn dataset_names_stay_under_data_dir() {
    let data = Path::new("data");
    assert_eq!(dataset_dir(data, "owt").expect("plain"), data.join("owt"));
    for bad in ["../../x", "..", ".", "", "a/b", "/abs", "a\\b"] {
        let e = err_text(dataset_dir(data, bad));
        assert!(
            e.contains("--name") && e.contains("plain folder name"),
            "{bad}: {e}"
        );
    }
    // Through the binary: nothing is written outside --data_dir.
    let root = TempDir::new("dataset", "names");
    let input = root.join("in.txt");
    std::fs::write(&input, "hello").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanogpt"))
        .args(["prepare", "text", "--name=../escaped", "--data_dir"])
        .arg(root.join("data"))
        .arg("--input")
        .arg(&input)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--name '../escaped'"),
        "{stderr}"
    );
    assert!(!root.join("escaped").exists());
}

/// Python's json.dumps writes a lone surrogate as `"\ud800"`: read as U+FFFD (counted), while
/// a surrogate pair and an escaped backslash before `ud800` stay what they are.
#[test]
fn lone_surrogates_in_json_lines_become_replacement_characters() {
    let dir = TempDir::new("dataset", "surrogates");
    let input = dir.join("docs.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"text\": \"a\\ud800b\"}\n",
            "{\"text\": \"pair \\ud83d\\ude80 lone low \\udc00 and \\\\ud800 \\udbff\"}\n",
            "{\"text\": \"plain\"}\n",
        ),
    )
    .expect("write");
    let mut o = TextPrepareOptions::new(vec![input], dir.join("out"));
    o.docs.val_fraction = 0.0;
    o.docs.progress = false;
    let s = prepare_text(&o).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(s.documents, 3);
    assert_eq!(s.lone_surrogates, 3);
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.contains("3 lone UTF-16 surrogates")));
    let bpe = Gpt2Bpe::new().expect("bpe");
    let mut want = Vec::new();
    for doc in [
        "a\u{FFFD}b",
        "pair 🚀 lone low \u{FFFD} and \\ud800 \u{FFFD}",
        "plain",
    ] {
        want.extend(bpe.encode_ordinary(doc));
        want.push(EOT);
    }
    let got: Vec<u32> = std::fs::read(dir.join("out/train.bin"))
        .expect("read")
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect();
    assert_eq!(got, want);
    // Other invalid JSON is still an error that names the line.
    std::fs::write(dir.join("docs.jsonl"), "{\"text\": \"\\ud800\" oops}\n").expect("write");
    let e = err_text(prepare_text(&o));
    assert!(
        e.contains("docs.jsonl:1") && e.contains("invalid JSON"),
        "{e}"
    );
}

/// A tiny character model's config on `data_dir/name`.
fn tiny_config(data_dir: &Path, name: &str, out_dir: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    let args: Vec<String> = [
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=16",
        "--block_size=32",
        "--batch_size=4",
        "--gradient_accumulation_steps=1",
        "--eval_iters=2",
        "--eval_interval=2",
        "--max_iters=4",
        "--learning_rate=1e-3",
        "--warmup_iters=1",
        "--lr_decay_iters=4",
        "--min_lr=1e-4",
        "--dropout=0.0",
        "--peak_tflops=1.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cfg.apply_overrides(&args).expect("tiny config");
    cfg.dataset = name.to_string();
    cfg.data_dir = data_dir.to_str().expect("utf-8").to_string();
    cfg.out_dir = out_dir.to_str().expect("utf-8").to_string();
    cfg
}

/// The same documents prepared as train.bin and as small llm.c shards train to the same losses,
/// bit for bit: batches over shards are the batches over their concatenation.
#[test]
fn training_reads_shards_as_the_same_sequence_as_train_bin() {
    let root = TempDir::new("dataset", "shards");
    let text = std::fs::read_to_string(common::fixtures().join("../data/tinyshakespeare.txt"))
        .expect("tiny shakespeare");
    let docs: String = text
        .split("\n\n")
        .take(300)
        .map(|p| serde_json::json!({ "text": p }).to_string() + "\n")
        .collect();
    let input = root.join("docs.jsonl");
    std::fs::write(&input, docs).expect("write");
    let data = root.join("data");
    for (name, shards) in [("single", None), ("sharded", Some(700))] {
        let mut o = TextPrepareOptions::new(vec![input.clone()], data.join(name));
        o.tokenizer = TextTokenizer::Char;
        o.docs.val_fraction = 0.1;
        o.docs.shard_tokens = shards;
        o.docs.progress = false;
        prepare_text(&o).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let sharded = TokenSplit::open(&data.join("sharded"), "train", 65536).expect("open shards");
    let single = TokenSplit::open(&data.join("single"), "train", 65536).expect("open train.bin");
    assert_eq!(sharded.len(), single.len());
    assert!(
        std::fs::read_dir(data.join("sharded"))
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("train_"))
            .count()
            > 5
    );
    let (mut x1, mut y1, mut x2, mut y2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for seed in 0..20 {
        sharded
            .get_batch_into(&mut Rng::new(seed), 8, 64, &mut x1, &mut y1)
            .expect("batch");
        single
            .get_batch_into(&mut Rng::new(seed), 8, 64, &mut x2, &mut y2)
            .expect("batch");
        assert_eq!((&x1, &y1), (&x2, &y2), "seed {seed}");
    }

    let losses = |name: &str| {
        let cfg = tiny_config(&data, name, &root.join(format!("out-{name}")));
        let mut log = Vec::new();
        let s = train(&cfg, &mut log, &AtomicBool::new(false))
            .unwrap_or_else(|e| panic!("train on {name}: {e:#}"));
        let bits: Vec<u32> = s.losses.iter().map(|l| l.to_bits()).collect();
        (
            bits,
            s.evals.iter().map(|e| e.2.to_bits()).collect::<Vec<_>>(),
        )
    };
    let want = losses("single");
    assert_eq!(want.0.len(), 5); // iterations 0 to max_iters, as nanoGPT
    assert_eq!(losses("sharded"), want);
}

/// The case through `train`: a new character `train.bin` (and the new record) beside
/// the old `val.bin` and `meta.json`, as a kill between renames leaves them. Every id of the new
/// file is below the old vocabulary's size, so only the record can tell; `train` refuses, names
/// the folder and says to rerun the prepare command.
#[test]
fn train_refuses_a_half_committed_dataset() {
    let root = TempDir::new("dataset", "half");
    let text = std::fs::read_to_string(common::fixtures().join("../data/tinyshakespeare.txt"))
        .expect("tiny shakespeare");
    let data = root.join("data");
    let prepare = |name: &str, text: &str| {
        let input = root.join(format!("{name}.txt"));
        std::fs::write(&input, text).expect("write");
        let mut o = TextPrepareOptions::new(vec![input], data.join(name));
        o.tokenizer = TextTokenizer::Char;
        o.docs.val_fraction = 0.0;
        o.docs.progress = false;
        prepare_text(&o).unwrap_or_else(|e| panic!("{e:#}"));
    };
    prepare("ds", &text[..200_000]);
    prepare("lower", &text[200_000..300_000].to_lowercase());
    let ds = data.join("ds");
    // val.bin of the old dataset is empty; give it tokens so that only the record is wrong.
    std::fs::copy(ds.join("train.bin"), ds.join("val.bin")).expect("copy");
    std::fs::remove_file(ds.join("dataset.json")).expect("rm");
    let cfg = tiny_config(&data, "ds", &root.join("out"));
    train(&cfg, &mut Vec::new(), &AtomicBool::new(false)).expect("the legacy dataset trains");

    for name in ["train.bin", "dataset.json"] {
        std::fs::copy(data.join("lower").join(name), ds.join(name)).expect("copy");
    }
    let cfg = tiny_config(&data, "ds", &root.join("out-half"));
    let e = format!(
        "{:#}",
        train(&cfg, &mut Vec::new(), &AtomicBool::new(false)).expect_err("refused")
    );
    assert!(
        e.contains(ds.to_str().unwrap())
            && e.contains("not a complete dataset")
            && e.contains("rerun the prepare command"),
        "{e}"
    );
}

/// `sample` and `eval arithmetic` read the dataset folder too (its vocabulary, its held-out
/// problems): through the binary, both refuse a half-committed folder (a new `train.bin` and
/// record beside the old `test.txt`) with the one-line message `train` gives.
#[test]
fn sample_and_eval_refuse_a_half_committed_dataset() {
    let root = TempDir::new("dataset", "half-sample-eval");
    let data = root.join("data");
    let ds = data.join("arithmetic");
    for (dir, seed) in [(&ds, 1), (&data.join("other"), 2)] {
        let opts = ArithmeticOptions {
            ops: vec![Op::Add],
            min_digits: 1,
            max_digits: 2,
            train_per_op: 300,
            test_per_op: 20,
            seed,
            ..ArithmeticOptions::default()
        };
        prepare_arithmetic(&opts, dir).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let out = root.join("out");
    let mut cfg = tiny_config(&data, "arithmetic", &out);
    cfg.block_size = 16;
    train(&cfg, &mut Vec::new(), &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e:#}"));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nanogpt"))
            .args(args)
            .arg(format!("--out_dir={}", out.display()))
            .arg(format!("--data_dir={}", data.display()))
            .output()
            .expect("run nanogpt")
    };
    let sample = [
        "sample",
        "--num_samples=1",
        "--max_new_tokens=4",
        "--device=cpu",
    ];
    let eval = ["eval", "arithmetic", "--device=cpu"];
    for args in [&sample[..], &eval[..]] {
        let o = run(args);
        assert!(
            o.status.success(),
            "{args:?} on the complete dataset: {o:?}"
        );
    }

    for name in ["train.bin", "dataset.json"] {
        std::fs::copy(data.join("other").join(name), ds.join(name)).expect("copy");
    }
    let want = format!("error: {:#}\n", verify(&ds).expect_err("half-committed"));
    assert!(
        want.contains(ds.to_str().expect("utf-8")) && want.contains("rerun the prepare command"),
        "{want}"
    );
    for args in [&sample[..], &eval[..]] {
        let o = run(args);
        assert!(
            !o.status.success(),
            "{args:?} read a half-committed dataset"
        );
        assert_eq!(String::from_utf8_lossy(&o.stderr), want, "{args:?}");
    }
    let e = train(
        &tiny_config(&data, "arithmetic", &root.join("out-half")),
        &mut Vec::new(),
        &AtomicBool::new(false),
    )
    .expect_err("train refuses");
    assert_eq!(format!("error: {e:#}\n"), want);
}

/// With `loss_after`, training windows start at a newline: `line_breaks` finds every one that
/// leaves a whole window, the same over shards as over train.bin, and each row of a batch drawn
/// from them is the window at one of them.
#[test]
fn windows_drawn_from_line_breaks_begin_at_newlines_across_shards() {
    let root = TempDir::new("dataset", "line-starts");
    let mut rng = Rng::new(3);
    let docs: String = (0..200)
        .map(|_| {
            let lines: String = (0..1 + rng.below(5))
                .map(|_| {
                    let (a, b) = (rng.below(1000), rng.below(100));
                    format!("{a}+{b}={}\n", a + b)
                })
                .collect();
            serde_json::json!({ "text": lines }).to_string() + "\n"
        })
        .collect();
    let input = root.join("docs.jsonl");
    std::fs::write(&input, docs).expect("write");
    let data = root.join("data");
    for (name, shards) in [("single", None), ("sharded", Some(500))] {
        let mut o = TextPrepareOptions::new(vec![input.clone()], data.join(name));
        o.tokenizer = TextTokenizer::Char;
        o.docs.val_fraction = 0.1;
        o.docs.shard_tokens = shards;
        o.docs.progress = false;
        prepare_text(&o).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let vocab = nanogpt::data::dataset::vocabulary(&data.join("single"))
        .expect("vocabulary")
        .expect("a character dataset");
    let eol = vocab.id_of('\n').expect("a newline") as u16;
    let tokens = nanogpt::data::TokenFile::open(&data.join("single/train.bin"), 65536)
        .expect("train.bin")
        .tokens()
        .to_vec();
    let t = 24;
    let last = tokens.len() - t - 1;
    let want: Vec<usize> = (0..=last).filter(|&i| tokens[i] == eol).collect();
    let single = TokenSplit::open(&data.join("single"), "train", 65536).expect("open");
    let sharded = TokenSplit::open(&data.join("sharded"), "train", 65536).expect("open");
    let starts = single.line_breaks(eol, t);
    assert_eq!(starts, want);
    assert_eq!(sharded.line_breaks(eol, t), want);
    assert!(starts.len() > 300, "{} lines", starts.len());
    let windows: std::collections::HashSet<&[u16]> =
        starts.iter().map(|&s| &tokens[s..s + t + 1]).collect();
    let (mut x, mut y, mut x2, mut y2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for seed in 0..50 {
        single
            .get_batch_from_into(&starts, &mut Rng::new(seed), 8, t, &mut x, &mut y)
            .expect("batch");
        sharded
            .get_batch_from_into(&starts, &mut Rng::new(seed), 8, t, &mut x2, &mut y2)
            .expect("batch");
        assert_eq!((&x, &y), (&x2, &y2), "seed {seed}");
        for (xr, yr) in x.chunks(t).zip(y.chunks(t)) {
            assert_eq!(xr[0], eol as u32, "a row that does not start at a newline");
            let mut w: Vec<u16> = xr.iter().map(|&v| v as u16).collect();
            w.push(yr[t - 1] as u16);
            assert!(
                windows.contains(&w[..]),
                "a row that is not a line's window: {w:?}"
            );
            seen.insert(w);
        }
    }
    // Drawn uniformly, 400 rows reach about n (1 - e^(-400/n)) of n distinct windows.
    let n = windows.len() as f64;
    let expected = n * (1.0 - (-400.0 / n).exp());
    assert!(
        seen.len() as f64 > 0.9 * expected,
        "{} distinct windows of {n}, expected about {expected:.0}",
        seen.len()
    );
}

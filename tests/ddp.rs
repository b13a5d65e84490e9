//! Data-parallel training on CPU ranks through the real binary: `nanogpt launch` with 2 ranks
//! trains as one process with the same flags does, a killed rank stops the others, Ctrl-C on the
//! launcher saves and resumes exactly, ranks started with different settings are refused, and
//! ZeRO-1 trains to the same bits as the unsharded update.

mod common;

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `train` flags of a small character model, logging every iteration. Each evaluation (and the
/// end) also checks that the ranks hold bit-identical parameters.
fn train_args(data: &Path, out: &Path, iters: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--dataset=shakespeare_char",
        "--n_layer=2",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=32",
        "--batch_size=4",
        "--gradient_accumulation_steps=2",
        "--eval_iters=2",
        "--eval_interval=10",
        "--log_interval=1",
        "--dropout=0.1",
        "--peak_tflops=1",
        "--device=cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--max_iters={iters}"));
    args.push(format!("--lr_decay_iters={iters}"));
    args.push(format!("--data_dir={}", data.display()));
    args.push(format!("--out_dir={}", out.display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn launch(port: u16, args: &[String]) -> Command {
    let mut cmd = common::nanogpt();
    cmd.args([
        "launch",
        "--nproc_per_node=2",
        &format!("--master_port={port}"),
        "--",
    ]);
    cmd.args(args).env("RAYON_NUM_THREADS", "1");
    cmd
}

#[test]
fn two_ranks_train_as_one_process_does() {
    let root = common::TempDir::new("ddp", "equal");
    let data = common::prepare_shakespeare_char(&root);
    // Evaluating every iteration checks that both ranks hold the same bits after every step.
    let every = ["--eval_interval=1"];
    let one = common::nanogpt()
        .env("RAYON_NUM_THREADS", "1")
        .args(train_args(&data, &root.join("one"), 30, &every))
        .output()
        .expect("one process");
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let two = launch(29531, &train_args(&data, &root.join("two"), 30, &every))
        .output()
        .expect("two ranks");
    let log2 = String::from_utf8_lossy(&two.stdout).to_string();
    assert!(
        two.status.success(),
        "{log2}\n{}",
        String::from_utf8_lossy(&two.stderr)
    );
    // Rank 0 alone logs: one line per iteration, the same losses (4 decimals) as one process.
    let (l1, l2) = (
        common::loss_lines(&String::from_utf8_lossy(&one.stdout)),
        common::loss_lines(&log2),
    );
    assert_eq!(l1.len(), 31);
    assert_eq!(l1, l2);
    assert!(log2.contains("x 2 ranks"), "{log2}");
    // The gradients are summed in another order (per rank, then across), so the parameters agree
    // to float rounding, not bit for bit.
    let (p1, p2) = (
        common::checkpoint_params(&root.join("one/latest")),
        common::checkpoint_params(&root.join("two/latest")),
    );
    assert_eq!(p1.len(), p2.len());
    for ((name, a), (_, b)) in p1.iter().zip(&p2) {
        let err = common::rel_err(b, a);
        assert!(err <= 1e-6, "{name}: relative difference {err:e}");
    }
}

/// A checkpoint's files whose bits must agree between runs that trained alike.
fn checkpoint_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["model.safetensors", nanogpt::checkpoint::OPTIMIZER_FILE]
        .into_iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).expect(f)))
        .collect()
}

/// ZeRO-1 (each rank keeps its part of AdamW's moments) against every rank keeping all of them:
/// the same parameters and moments, bit for bit, after 10 steps; and again when the sharded run
/// is stopped at step 5 and resumed (the moments gathered into the checkpoint, then split).
#[test]
fn zero1_gives_the_bits_of_the_unsharded_update() {
    let root = common::TempDir::new("ddp", "zero1");
    let data = common::prepare_shakespeare_char(&root);
    let args = |out: &str, iters: usize, extra: &[&str]| {
        let mut flags = vec!["--decay_lr=false", "--eval_interval=5"];
        flags.extend_from_slice(extra);
        train_args(&data, &root.join(out), iters, &flags)
    };
    let plain = common::stdout_of(launch(29538, &args("plain", 10, &[])));
    let zero = common::stdout_of(launch(29539, &args("zero", 10, &["--zero_stage=1"])));
    assert_eq!(common::loss_lines(&plain), common::loss_lines(&zero));
    let want = checkpoint_bytes(&root.join("plain/latest"));
    assert_eq!(want, checkpoint_bytes(&root.join("zero/latest")));
    common::stdout_of(launch(29540, &args("halves", 4, &["--zero_stage=1"])));
    common::stdout_of(launch(
        29541,
        &args("halves", 10, &["--zero_stage=1", "--init_from=resume"]),
    ));
    assert_eq!(want, checkpoint_bytes(&root.join("halves/latest")));
}

/// A launcher's run of one rank (nanoGPT's DDP at world size 1: through the collective, which a
/// GPU run does with NCCL) trains to the bits of a run without a launcher.
#[test]
fn one_rank_under_the_launcher_gives_the_bits_of_no_launcher() {
    let root = common::TempDir::new("ddp", "one");
    let data = common::prepare_shakespeare_char(&root);
    let mut alone = common::nanogpt();
    alone
        .env("RAYON_NUM_THREADS", "1")
        .args(train_args(&data, &root.join("alone"), 10, &[]));
    let mut one = common::nanogpt();
    one.args(["launch", "--nproc_per_node=1", "--master_port=29544", "--"])
        .args(train_args(&data, &root.join("one"), 10, &[]))
        .env("RAYON_NUM_THREADS", "1");
    let (alone, one) = (common::stdout_of(alone), common::stdout_of(one));
    assert!(one.contains("x 1 ranks"), "{one}");
    assert_eq!(common::loss_lines(&alone), common::loss_lines(&one));
    assert_eq!(
        checkpoint_bytes(&root.join("alone/latest")),
        checkpoint_bytes(&root.join("one/latest"))
    );
}

/// Three ranks (where the order of a sum matters: a + b = b + a, but (a + b) + c is not
/// (b + c) + a), as threads with one engine each: three steps of ZeRO-1 against the all-reduce
/// and the unsharded update, with clipping active, on parameters large enough to split.
#[test]
fn zero1_on_three_ranks_matches_the_unsharded_update_bit_for_bit() {
    use nanogpt::dist::{ring::Ring, World};
    use nanogpt::engine::{cpu::CpuEngine, Engine};
    let cfg = nanogpt::config::GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 64,
        block_size: 16,
        vocab_size: 100,
        pad_vocab: false,
        bias: true,
        dropout: 0.0,
        arch: Default::default(),
    };
    let run = |zero: bool, port: u16| -> Vec<Vec<f32>> {
        std::thread::scope(|scope| {
            let ranks: Vec<_> = (0..3)
                .map(|rank| {
                    let cfg = cfg.clone();
                    scope.spawn(move || {
                        let world = World {
                            rank,
                            size: 3,
                            local_rank: rank,
                            master_addr: "127.0.0.1".into(),
                            master_port: port,
                        };
                        let mut ring = Ring::connect(world, serde_json::json!({})).unwrap();
                        let mut engine = CpuEngine::new(nanogpt::model::Gpt::new(cfg, 7).unwrap());
                        for step in 0..3u64 {
                            // Rank- and step-specific gradients, large enough to be clipped.
                            let mut rng = nanogpt::rng::Rng::new(100 * step + rank as u64);
                            engine.grads = (0..engine.model.params.len())
                                .map(|_| (rng.normal() * 0.1) as f32)
                                .collect();
                            let norm = if zero {
                                engine.update_zero1(1e-2, 1.0, &mut ring).unwrap()
                            } else {
                                engine.all_reduce_grads(&mut ring).unwrap();
                                engine.update(1e-2, 1.0)
                            };
                            assert!(norm > 1.0, "{norm}");
                        }
                        engine.model.params.clone()
                    })
                })
                .collect();
            ranks.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let (plain, zero) = (run(false, 29542), run(true, 29543));
    let n = plain[0].len();
    assert!(
        n > 2 * nanogpt::dist::SHARD_ALIGN,
        "{n} parameters: too few to split in 3"
    );
    for r in 0..3 {
        assert!(plain[r] == plain[0] && zero[r] == plain[0], "rank {r}");
    }
}

/// The pids of a process's children (the launcher's ranks).
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Reads the launcher's log until iteration `at`, returning what was read and the reader.
fn log_until(
    child: &mut std::process::Child,
    at: usize,
) -> (String, BufReader<std::process::ChildStdout>) {
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    (common::read_until_iter(&mut reader, at), reader)
}

#[test]
fn a_killed_rank_stops_the_others_and_the_checkpoint_survives() {
    let root = common::TempDir::new("ddp", "kill");
    let data = common::prepare_shakespeare_char(&root);
    let out = root.join("out");
    let mut launcher = launch(29532, &train_args(&data, &out, 100_000, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("launch");
    let (_, _reader) = log_until(&mut launcher, 25);
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    // SAFETY: kill(2) on a rank the launcher started.
    unsafe { libc::kill(ranks[1], libc::SIGKILL) };
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = launcher.try_wait().expect("wait") {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the launcher still runs 30 s after rank 1 died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    launcher
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(err.contains("rank 1"), "{err}");
    // Rank 0 saved at iteration 10 and 20; that checkpoint loads.
    let (model, state) = nanogpt::load::trained(&out).expect("the last checkpoint loads");
    assert!(state.iter_num >= 20 && model.params.iter().all(|x| x.is_finite()));
}

#[test]
fn ctrl_c_on_the_launcher_saves_and_a_resume_continues_exactly() {
    let root = common::TempDir::new("ddp", "resume");
    let data = common::prepare_shakespeare_char(&root);
    let constant = ["--decay_lr=false"];
    let full = launch(29533, &train_args(&data, &root.join("full"), 40, &constant))
        .output()
        .expect("uninterrupted run");
    assert!(full.status.success());
    let out = root.join("cut");
    let mut launcher = launch(29534, &train_args(&data, &out, 40, &constant))
        .stdout(Stdio::piped())
        .spawn()
        .expect("launch");
    let (mut log, mut reader) = log_until(&mut launcher, 12);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGINT) };
    reader.read_to_string(&mut log).expect("read log");
    let status = launcher.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted: saved"), "{log}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("latest/train_state.json")).expect("train_state.json"),
    )
    .expect("json");
    assert_eq!(state["world_size"], 2);
    let resumed = launch(
        29535,
        &train_args(&data, &out, 40, &["--decay_lr=false", "--init_from=resume"]),
    )
    .output()
    .expect("resume");
    assert!(resumed.status.success());
    let mut cut = common::loss_lines(&log);
    cut.extend(common::loss_lines(&String::from_utf8_lossy(
        &resumed.stdout,
    )));
    let whole = common::loss_lines(&String::from_utf8_lossy(&full.stdout));
    assert_eq!(cut, whole);
}

#[test]
fn ranks_with_different_settings_or_an_uneven_share_are_refused() {
    let root = common::TempDir::new("ddp", "refuse");
    let data = common::prepare_shakespeare_char(&root);
    let rank = |r: usize, extra: &[&str], port: u16| {
        common::nanogpt()
            .args(train_args(&data, &root.join("out"), 5, extra))
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rank")
    };
    let (r0, r1) = (
        rank(0, &[], 29536),
        rank(1, &["--learning_rate=0.1"], 29536),
    );
    for (r, child) in [(0, r0), (1, r1)] {
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {r}");
        assert!(
            err.contains("rank 1's settings differ from rank 0's at learning_rate"),
            "rank {r}: {err}"
        );
    }
    let uneven = rank(0, &["--gradient_accumulation_steps=3"], 29537)
        .wait_with_output()
        .expect("wait");
    assert!(String::from_utf8_lossy(&uneven.stderr)
        .contains("gradient_accumulation_steps (3) must be a multiple of the number of ranks (2)"));
}

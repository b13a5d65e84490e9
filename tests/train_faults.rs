//! Fault injection for training: the real binary trains a tiny model, checkpointing every few
//! iterations, and is killed with SIGKILL at seeded random moments (`NANOGPT_FAULT_KILLS`,
//! default 30; `NANOGPT_FAULT_SEED`), each time resumed with `--init_from=resume`. After every
//! kill a complete checkpoint loads, never older than the one before; every loss any run logged
//! is the uninterrupted run's loss at that iteration; and the last run ends with exactly the
//! uninterrupted run's weights.

mod common;

use common::fault::{fault_rng, kills_wanted};
use nanogpt::checkpoint;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ITERS: usize = 150;
const EVAL_INTERVAL: usize = 5;

/// A tiny character model that logs every iteration and saves `latest/` every EVAL_INTERVAL
/// iterations; a constant learning rate and no dropout, so a resume replays the same stream.
fn train(data: &Path, out: &Path, init_from: &str) -> Command {
    let mut cmd = common::nanogpt();
    cmd.arg("--threads=1").arg("train");
    cmd.args([
        "--dataset=shakespeare_char",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=32",
        "--batch_size=4",
        "--gradient_accumulation_steps=1",
        "--eval_iters=1",
        "--log_interval=1",
        "--always_save_checkpoint=true",
        "--decay_lr=false",
        "--dropout=0.0",
        "--peak_tflops=1",
        "--device=cpu",
    ]);
    cmd.arg(format!("--eval_interval={EVAL_INTERVAL}"));
    cmd.arg(format!("--max_iters={ITERS}"));
    cmd.arg(format!("--init_from={init_from}"));
    cmd.arg(format!("--data_dir={}", data.display()));
    cmd.arg(format!("--out_dir={}", out.display()));
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    cmd
}

/// Runs `cmd`, killing it after `delay` unless it exits first; returns its log and whether it
/// was killed.
fn run_until(mut cmd: Command, delay: Duration) -> (String, bool) {
    let mut child = cmd.spawn().expect("start nanogpt");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stdout.read_to_string(&mut log);
        log
    });
    let deadline = Instant::now() + delay;
    let mut exited = None;
    while Instant::now() < deadline {
        exited = child.try_wait().expect("wait");
        if exited.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    if exited.is_none() {
        child.kill().expect("kill -9");
    }
    let status = child.wait().expect("wait");
    let log = reader.join().expect("log reader");
    use std::os::unix::process::ExitStatusExt;
    let killed = status.signal() == Some(libc::SIGKILL);
    assert!(killed || status.success(), "training failed:\n{log}");
    (log, killed)
}

fn params_bits(out: &Path) -> Vec<u32> {
    let (model, _, _) = checkpoint::load(&out.join("latest")).expect("load latest");
    model.params.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn killed_training_resumes_to_the_uninterrupted_run() {
    let root = common::TempDir::new("trainfault", "kill");
    let data = common::prepare_shakespeare_char(&root);
    let start = Instant::now();
    let reference_out = root.join("reference");
    let (log, _) = run_until(
        train(&data, &reference_out, "scratch"),
        Duration::from_secs(600),
    );
    let length = start.elapsed();
    let reference: BTreeMap<usize, String> = common::loss_lines(&log).into_iter().collect();
    assert_eq!(reference.len(), ITERS + 1, "one loss line per iteration");

    let (mut rng, seed) = fault_rng("train");
    let out = root.join("out");
    let (mut kills, mut mid_save, mut newest) = (0, 0, None::<usize>);
    let mut compared = 0;
    while kills < kills_wanted() {
        let init = if newest.is_some() {
            "resume"
        } else {
            "scratch"
        };
        // Within the uninterrupted run's length: a run that finishes first is started over,
        // which costs a whole run and injects nothing.
        let delay = Duration::from_micros(rng.below(length.as_micros() as u64));
        let (log, killed) = run_until(train(&data, &out, init), delay);
        for (n, loss) in common::loss_lines(&log) {
            assert_eq!(
                Some(&loss),
                reference.get(&n),
                "iteration {n} (seed {seed}, after {kills} kills)"
            );
            compared += 1;
        }
        if !killed {
            // It finished before the kill: start over, so later kills land mid-run again.
            std::fs::remove_dir_all(&out).expect("remove finished run");
            newest = None;
            continue;
        }
        kills += 1;
        let latest = out.join("latest");
        if ["latest.tmp", "latest.old"]
            .iter()
            .any(|s| out.join(s).exists())
        {
            mid_save += 1;
        }
        match checkpoint::resolve(&latest) {
            Some(_) => {
                let (_, _, state) = checkpoint::load(&latest).unwrap_or_else(|e| {
                    panic!("kill {kills} (seed {seed}) left a checkpoint that does not load: {e:#}")
                });
                assert!(
                    newest.is_none_or(|n| state.iter_num >= n),
                    "kill {kills} (seed {seed}): the checkpoint went back from iteration {newest:?} to {}",
                    state.iter_num
                );
                newest = Some(state.iter_num);
            }
            None => assert!(
                newest.is_none(),
                "kill {kills} (seed {seed}) lost the checkpoint of iteration {newest:?}"
            ),
        }
    }

    let init = if newest.is_some() {
        "resume"
    } else {
        "scratch"
    };
    let (log, killed) = run_until(train(&data, &out, init), Duration::from_secs(600));
    assert!(!killed);
    for (n, loss) in common::loss_lines(&log) {
        assert_eq!(
            Some(&loss),
            reference.get(&n),
            "iteration {n} of the last run"
        );
        compared += 1;
    }
    assert!(
        params_bits(&out) == params_bits(&reference_out),
        "the resumed run's final weights differ from the uninterrupted run's (seed {seed})"
    );
    eprintln!(
        "{kills} kills (seed {seed}), {mid_save} during a checkpoint save, {compared} losses compared, in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

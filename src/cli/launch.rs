//! `nanogpt launch`: torchrun for this binary. Starts this machine's ranks of a data-parallel run
//! with torchrun's environment variables, forwards SIGINT/SIGTERM/SIGHUP to them, and stops the
//! others when one fails, so a dead rank never leaves the rest waiting.

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Ranks to start on this machine (one per GPU; on CPUs the cores are shared out).
    #[arg(long = "nproc_per_node", default_value_t = 1)]
    nproc_per_node: usize,
    /// Machines in the run.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This machine's index, 0..nnodes (machine 0 runs rank 0).
    #[arg(long = "node_rank", default_value_t = 0)]
    node_rank: usize,
    /// Where rank 0 listens (machine 0's address, reachable from the others).
    #[arg(long = "master_addr", default_value = "127.0.0.1")]
    master_addr: String,
    #[arg(long = "master_port", default_value_t = 29500)]
    master_port: u16,
    /// What each rank runs, after `--`: `train config/x.toml --batch_size=8`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Each rank's number and process (None once it has ended), shared with the signal thread.
type Ranks = Arc<Mutex<Vec<(usize, Option<Child>)>>>;

/// How long ranks get to finish after being told to stop, before they are killed.
const GRACE: Duration = Duration::from_secs(10);

/// Runs the ranks; returns the exit status: 0 when all succeed, else the first failure's.
pub fn launch(args: LaunchArgs) -> Result<i32> {
    if args.nproc_per_node == 0 || args.nnodes == 0 || args.node_rank >= args.nnodes {
        bail!(
            "need --nproc_per_node >= 1 and --node_rank below --nnodes (got {}, {} of {})",
            args.nproc_per_node,
            args.node_rank,
            args.nnodes
        );
    }
    let exe = std::env::current_exe().context("cannot find this program to start the ranks")?;
    let world = args.nproc_per_node * args.nnodes;
    // CPU ranks share this machine's cores, as torchrun's OMP_NUM_THREADS does.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / args.nproc_per_node).max(1).to_string();
    let mut children = Vec::new();
    for local in 0..args.nproc_per_node {
        let rank = args.node_rank * args.nproc_per_node + local;
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc_per_node.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string());
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", &threads);
        }
        match cmd.spawn() {
            Ok(child) => children.push((rank, Some(child))),
            Err(e) => {
                // The ranks already started would wait for this one until they time out.
                signal_all(&children, libc::SIGKILL);
                return Err(e).with_context(|| format!("cannot start rank {rank}"));
            }
        }
    }
    let children = Arc::new(Mutex::new(children));
    let signalled = Arc::new(AtomicBool::new(false));
    forward_signals(children.clone(), signalled.clone())?;
    supervise(&children, &signalled)
}

/// Passes each signal on to every rank still running. (A terminal's Ctrl-C reaches them too;
/// a rank takes two within a second as one.)
fn forward_signals(children: Ranks, signalled: Arc<AtomicBool>) -> Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install the signal handlers")?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            signalled.store(true, Ordering::SeqCst);
            if let Ok(children) = children.lock() {
                signal_all(&children, sig);
            }
        }
    });
    Ok(())
}

fn signal_all(children: &[(usize, Option<Child>)], sig: i32) {
    for child in children.iter().filter_map(|(_, c)| c.as_ref()) {
        // SAFETY: kill(2) on a child this process started and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    }
}

/// Waits for the ranks. The first to fail has the others stopped (SIGTERM, then SIGKILL after
/// [`GRACE`]); its status is the launcher's. After a forwarded signal the ranks stop on their
/// own (saving first), so none is cut short.
fn supervise(children: &Mutex<Vec<(usize, Option<Child>)>>, signalled: &AtomicBool) -> Result<i32> {
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut stopping_since: Option<Instant> = None;
    loop {
        let mut running = 0;
        {
            let mut list = children
                .lock()
                .map_err(|_| anyhow::anyhow!("a thread panicked"))?;
            for (rank, slot) in list.iter_mut() {
                let Some(child) = slot else { continue };
                match child.try_wait()? {
                    Some(status) => {
                        *slot = None;
                        if !status.success() && failure.is_none() {
                            failure = Some((*rank, status));
                        }
                    }
                    None => running += 1,
                }
            }
            if running == 0 {
                break;
            }
            if let Some((rank, status)) = failure.filter(|_| !signalled.load(Ordering::SeqCst)) {
                match stopping_since {
                    None => {
                        eprintln!("launch: rank {rank} ended ({status}): stopping the other ranks");
                        signal_all(&list, SIGTERM);
                        stopping_since = Some(Instant::now());
                    }
                    Some(at) if at.elapsed() > GRACE => signal_all(&list, libc::SIGKILL),
                    Some(_) => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(failure.map_or(0, |(_, status)| exit_code(status)))
}

/// A child's status as a shell reports it: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

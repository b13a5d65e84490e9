//! What the commands print beyond their own results: the arithmetic report, the live training
//! status line, stopping on a signal, and output that a closed reader cannot stop.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn print_arithmetic_report(report: &nanogpt::arithmetic::eval::ArithmeticReport) {
    use nanogpt::arithmetic::eval::markdown_table;
    println!(
        "Held-out problems, exact match by operand length (format: {:?}):\n",
        report.format
    );
    print!("{}", markdown_table(&report.test));
    if !report.ood.accuracy.is_empty() {
        println!("\nOut of distribution (one digit longer than training):\n");
        print!("{}", markdown_table(&report.ood));
    }
    println!("\nIt answers problems it never saw (what it wrote, then the value that means):");
    for e in &report.examples {
        let value = e.got_value.as_deref().unwrap_or("unreadable");
        if e.correct {
            println!("  right  {}{}  -> {value}", e.prompt, e.got);
        } else {
            println!(
                "  WRONG  {}{}  -> {value}, should be {} ({})",
                e.prompt, e.got, e.expected_value, e.expected
            );
        }
    }
}

/// How a long command learns that it should stop: the first SIGINT (Ctrl-C), SIGTERM (what
/// schedulers and `kill` send) or SIGHUP (a closed terminal) sets `stop`, and the command
/// finishes what it says in `what_now` (saving, keeping finished files). A second signal exits
/// at once, unless it comes within a second of the first: `timeout` and a terminal can both
/// deliver one Ctrl-C, and that must not skip the save.
pub struct Interrupt {
    pub stop: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    pub fn install(what_now: &'static str) -> Result<Interrupt> {
        let stop = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
            .context("cannot install the signal handlers")?;
        let (thread_stop, thread_signal) = (stop.clone(), signal.clone());
        std::thread::spawn(move || {
            let mut first: Option<Instant> = None;
            for sig in signals.forever() {
                // stderr may be a closed terminal (SIGHUP): a failed note must not stop anything.
                let mut err = std::io::stderr();
                match first {
                    None => {
                        first = Some(Instant::now());
                        thread_signal.store(sig, Ordering::SeqCst);
                        thread_stop.store(true, Ordering::SeqCst);
                        let _ = writeln!(
                            err,
                            "{}: {what_now} (Ctrl-C again to quit now)",
                            signal_name(sig)
                        );
                    }
                    Some(at) if at.elapsed() < Duration::from_secs(1) => {}
                    Some(_) => {
                        let _ = writeln!(err, "second {}: exiting now", signal_name(sig));
                        std::process::exit(128 + sig);
                    }
                }
            }
        });
        Ok(Interrupt { stop, signal })
    }

    /// The exit status of a command stopped by a signal: 128 + the signal's number, as shells
    /// report it (130 for Ctrl-C), so `train && next` does not go on.
    pub fn exit_status(&self) -> i32 {
        128 + self.signal.load(Ordering::SeqCst)
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "Ctrl-C",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Standard output that a closed reader cannot stop: once a write fails (a closed pipe, a
/// hung-up terminal) the rest of the output is dropped, so training still saves its checkpoint.
pub struct Tolerant<W: std::io::Write> {
    inner: W,
    closed: bool,
}

impl<W: std::io::Write> Tolerant<W> {
    pub fn new(inner: W) -> Self {
        Tolerant {
            inner,
            closed: false,
        }
    }
}

impl<W: std::io::Write> std::io::Write for Tolerant<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.closed && self.inner.write_all(buf).is_err() {
            self.closed = true;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.closed && self.inner.flush().is_err() {
            self.closed = true;
        }
        Ok(())
    }
}

/// Training output for a terminal: the per-iteration lines rewrite one live status line; every
/// other line (evaluations, checkpoints) is printed normally. Not a terminal: lines pass through.
pub struct LiveLog {
    line: Vec<u8>,
    live: bool,
    tty: bool,
}

impl LiveLog {
    pub fn new() -> LiveLog {
        use std::io::IsTerminal;
        LiveLog {
            line: Vec::new(),
            live: false,
            tty: std::io::stdout().is_terminal(),
        }
    }
}

impl std::io::Write for LiveLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        for &byte in buf {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&self.line).into_owned();
            if self.tty && text.starts_with("iter ") {
                write!(out, "\r\x1b[2K{text}")?;
                self.live = true;
            } else {
                if self.live {
                    write!(out, "\r\x1b[2K")?;
                    self.live = false;
                }
                writeln!(out, "{text}")?;
            }
            self.line.clear();
        }
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

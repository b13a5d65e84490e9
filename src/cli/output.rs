//! What the commands print beyond their own results: the arithmetic report, the live training
//! status line, and Ctrl-C handling.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// A flag the first Ctrl-C sets (after printing `what_now`, what the command does about it);
/// a second Ctrl-C exits at once.
pub fn ctrl_c_flag(what_now: &'static str) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || {
        if handler_stop.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting now");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: {what_now} (Ctrl-C again to quit now)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
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

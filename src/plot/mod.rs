//! `nanogpt plot OUT_DIR`: draws a run's `metrics.jsonl` as a PNG with three stacked panels
//! sharing the iteration axis: loss (per-step training loss as a thin light line, eval train and
//! val loss as thicker lines with markers, and a legend), learning rate, and tokens/s.
//!
//! Reading `metrics.jsonl` (written by `train::metrics`):
//! - Step lines `{"iter", "loss", "lr", "ms", "tokens_per_s", "mfu"}` and eval lines
//!   `{"iter", "train_loss", "val_loss"}`; other keys are ignored.
//! - A resumed run appends to the file and starts again from its checkpoint's iteration, so
//!   iterations can repeat. Later lines win: when a step line's (or an eval line's) iteration is
//!   not past the previous step (eval) line's, the run went back to that iteration, and every
//!   point at or after it from the earlier run is dropped, from all series. The drawn series are
//!   thus the timeline of the last run back to where it resumed, and the earlier runs before that.
//! - Malformed lines (not JSON, not an object, no non-negative integer `iter`, neither kind, or
//!   a value that is neither a number nor null; a line cut short by a crash is the usual case)
//!   are skipped and counted in [`PlotSummary`] with the first one's line number; blank lines are
//!   ignored. Only a file without a single usable value is an error.
//! - `null` values (how `serde_json` writes NaN and infinities), missing values and values beyond
//!   the range of f32 are skipped point by point, and counted.

mod canvas;
mod draw;

use crate::atomic_file::write_atomic;
use anyhow::{bail, Result};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// The metrics file a training run writes in its out_dir.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The image [`plot_out_dir`] writes beside it.
pub const PLOT_FILE: &str = "metrics.png";

/// Image size in pixels.
pub const WIDTH: usize = 1200;
pub const HEIGHT: usize = 900;

/// Per-step training loss (thin, light).
pub const STEP_LOSS_COLOR: [u8; 3] = [160, 194, 232];
/// Eval train loss.
pub const EVAL_TRAIN_COLOR: [u8; 3] = [31, 119, 180];
/// Eval val loss.
pub const VAL_LOSS_COLOR: [u8; 3] = [240, 120, 10];
/// Learning rate.
pub const LR_COLOR: [u8; 3] = [44, 160, 44];
/// Tokens per second.
pub const TOKENS_COLOR: [u8; 3] = [148, 103, 189];

/// What [`plot_metrics`] read and drew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlotSummary {
    /// Per-step training loss points (top panel, thin line).
    pub step_loss_points: usize,
    /// Eval train loss points (top panel).
    pub eval_train_points: usize,
    /// Eval val loss points (top panel).
    pub val_points: usize,
    /// Learning-rate points (middle panel).
    pub lr_points: usize,
    /// Tokens/s points (bottom panel).
    pub tokens_per_s_points: usize,
    /// The iterations drawn, first and last.
    pub first_iter: u64,
    pub last_iter: u64,
    /// Lines skipped as malformed, and the 1-based number of the first.
    pub malformed_lines: usize,
    pub first_malformed_line: Option<usize>,
    /// Missing, null, NaN or out-of-range values skipped.
    pub skipped_values: usize,
    /// Times the iteration went back (resumed runs), and the earlier lines that dropped.
    pub resumes: usize,
    pub superseded_lines: usize,
}

impl fmt::Display for PlotSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "iterations {}..{}: {} training-loss, {} eval train-loss, {} val-loss, {} lr and {} tokens/s points",
            self.first_iter,
            self.last_iter,
            self.step_loss_points,
            self.eval_train_points,
            self.val_points,
            self.lr_points,
            self.tokens_per_s_points
        )?;
        if let Some(line) = self.first_malformed_line {
            write!(
                f,
                "; skipped {} malformed line{} (the first is line {line})",
                self.malformed_lines,
                plural(self.malformed_lines)
            )?;
        }
        if self.skipped_values > 0 {
            write!(
                f,
                "; skipped {} missing or NaN value{}",
                self.skipped_values,
                plural(self.skipped_values)
            )?;
        }
        if self.resumes > 0 {
            write!(
                f,
                "; {} resume{}: {} earlier line{} superseded",
                self.resumes,
                plural(self.resumes),
                self.superseded_lines,
                plural(self.superseded_lines)
            )?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `nanogpt plot OUT_DIR`: draws `OUT_DIR/metrics.jsonl` to `OUT_DIR/metrics.png`; returns the
/// image's path and what was drawn.
pub fn plot_out_dir(out_dir: &Path) -> Result<(PathBuf, PlotSummary)> {
    if !out_dir.is_dir() {
        bail!(
            "{} is not a directory: pass the out_dir of a training run (the directory holding {METRICS_FILE})",
            out_dir.display()
        );
    }
    let png = out_dir.join(PLOT_FILE);
    let summary = plot_metrics(&out_dir.join(METRICS_FILE), &png)?;
    Ok((png, summary))
}

/// Reads `metrics` (a `metrics.jsonl`) and writes a `WIDTH` x `HEIGHT` PNG of it to `png`,
/// atomically. See the module documentation for how lines are read.
pub fn plot_metrics(metrics: &Path, png: &Path) -> Result<PlotSummary> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(metrics, png) {
        bail!(
            "will not draw {} over itself: give the image another name",
            metrics.display()
        );
    }
    let bytes = match std::fs::read(metrics) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: train first (`nanogpt train` writes {METRICS_FILE} into its out_dir), or pass the out_dir of a run",
            metrics.display()
        ),
        Err(e) => bail!("cannot read {}: {e}", metrics.display()),
    };
    let log = parse(&bytes);
    let series = Series::from_log(&log);
    let summary = series.summary(&log);
    if log.lines == 0 {
        bail!(
            "{} is empty: nothing to plot yet (training writes a line every log_interval iterations and at every eval)",
            metrics.display()
        );
    }
    if series.is_empty() {
        let malformed = match log.first_malformed {
            Some(first) => format!("{} malformed, the first at line {first}", log.malformed),
            None => "0 malformed".to_string(),
        };
        bail!(
            "{} has no values to plot ({} lines, {malformed}): expected JSON lines with \"iter\" and \"loss\", \"lr\", \"tokens_per_s\", or \"train_loss\", \"val_loss\", as `nanogpt train` writes",
            metrics.display(),
            log.lines
        );
    }
    let image = draw::png(&series)?;
    write_atomic(png, &image)?;
    Ok(summary)
}

/// The data rectangles of the three panels (loss, learning rate, tokens/s), top to bottom, as
/// `(x, y, width, height)` in pixels of the image [`plot_metrics`] draws.
pub fn plot_areas() -> [(usize, usize, usize, usize); 3] {
    draw::panel_rects().map(|(x, y, w, h)| (x as usize, y as usize, w as usize, h as usize))
}

// ---------------------------------------------------------------------------------------------
// Reading

struct StepRec {
    iter: u64,
    loss: f64,
    lr: f64,
    tokens_per_s: f64,
}

struct EvalRec {
    iter: u64,
    train: f64,
    val: f64,
}

enum Line {
    Step(StepRec),
    Eval(EvalRec),
}

#[derive(Default)]
struct Log {
    steps: Vec<StepRec>,
    evals: Vec<EvalRec>,
    /// Non-blank lines.
    lines: usize,
    malformed: usize,
    first_malformed: Option<usize>,
    resumes: usize,
    superseded: usize,
}

fn parse(bytes: &[u8]) -> Log {
    let mut log = Log::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t.trim(),
            Err(_) => "\u{0}", // not UTF-8: malformed
        };
        if text.is_empty() {
            continue;
        }
        log.lines += 1;
        match parse_line(text) {
            Some(line) => log.push(line),
            None => {
                log.malformed += 1;
                log.first_malformed.get_or_insert(i + 1);
            }
        }
    }
    log
}

fn parse_line(text: &str) -> Option<Line> {
    let value: Value = serde_json::from_str(text).ok()?;
    let obj = value.as_object()?;
    let iter = obj.get("iter")?.as_u64()?;
    // A number, or NaN for null or absent; None (malformed) for anything else.
    let num = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Some(f64::NAN),
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => None,
    };
    if obj.contains_key("loss") {
        Some(Line::Step(StepRec {
            iter,
            loss: num("loss")?,
            lr: num("lr")?,
            tokens_per_s: num("tokens_per_s")?,
        }))
    } else if obj.contains_key("train_loss") || obj.contains_key("val_loss") {
        Some(Line::Eval(EvalRec {
            iter,
            train: num("train_loss")?,
            val: num("val_loss")?,
        }))
    } else {
        None
    }
}

impl Log {
    fn push(&mut self, line: Line) {
        let (iter, last) = match &line {
            Line::Step(r) => (r.iter, self.steps.last().map(|r| r.iter)),
            Line::Eval(r) => (r.iter, self.evals.last().map(|r| r.iter)),
        };
        if last.is_some_and(|last| iter <= last) {
            let before = self.steps.len() + self.evals.len();
            self.steps.retain(|r| r.iter < iter);
            self.evals.retain(|r| r.iter < iter);
            self.resumes += 1;
            self.superseded += before - self.steps.len() - self.evals.len();
        }
        match line {
            Line::Step(r) => self.steps.push(r),
            Line::Eval(r) => self.evals.push(r),
        }
    }
}

type Points = Vec<(f64, f64)>;

struct Series {
    step_loss: Points,
    eval_train: Points,
    val: Points,
    lr: Points,
    tokens_per_s: Points,
    skipped_values: usize,
}

impl Series {
    fn from_log(log: &Log) -> Series {
        let mut skipped_values = 0;
        let mut pick = |iter: u64, v: f64, out: &mut Points| {
            // Beyond f32 (what training logs) only a hand-edited file goes; it would break the axes.
            if v.is_finite() && v.abs() <= f32::MAX as f64 {
                out.push((iter as f64, v));
            } else {
                skipped_values += 1;
            }
        };
        let (mut step_loss, mut lr, mut tokens_per_s) = (vec![], vec![], vec![]);
        for r in &log.steps {
            pick(r.iter, r.loss, &mut step_loss);
            pick(r.iter, r.lr, &mut lr);
            pick(r.iter, r.tokens_per_s, &mut tokens_per_s);
        }
        let (mut eval_train, mut val) = (vec![], vec![]);
        for r in &log.evals {
            pick(r.iter, r.train, &mut eval_train);
            pick(r.iter, r.val, &mut val);
        }
        Series {
            step_loss,
            eval_train,
            val,
            lr,
            tokens_per_s,
            skipped_values,
        }
    }

    fn all(&self) -> [&Points; 5] {
        [
            &self.step_loss,
            &self.eval_train,
            &self.val,
            &self.lr,
            &self.tokens_per_s,
        ]
    }

    fn is_empty(&self) -> bool {
        self.all().iter().all(|s| s.is_empty())
    }

    fn iters(&self) -> impl Iterator<Item = f64> + '_ {
        self.all().into_iter().flat_map(|s| s.iter().map(|p| p.0))
    }

    fn summary(&self, log: &Log) -> PlotSummary {
        let first = self.iters().fold(f64::INFINITY, f64::min);
        let last = self.iters().fold(0.0, f64::max);
        PlotSummary {
            step_loss_points: self.step_loss.len(),
            eval_train_points: self.eval_train.len(),
            val_points: self.val.len(),
            lr_points: self.lr.len(),
            tokens_per_s_points: self.tokens_per_s.len(),
            first_iter: if first.is_finite() { first as u64 } else { 0 },
            last_iter: last as u64,
            malformed_lines: log.malformed,
            first_malformed_line: log.first_malformed,
            skipped_values: self.skipped_values,
            resumes: log.resumes,
            superseded_lines: log.superseded,
        }
    }
}

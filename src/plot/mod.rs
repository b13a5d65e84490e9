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

mod axis;
mod font;
mod raster;

use crate::atomic_file::write_atomic;
use anyhow::{bail, Result};
use raster::{text_width, Canvas, Coverage, Rect, Rgb};
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

const BACKGROUND: Rgb = [255, 255, 255];
const GRID: Rgb = [228, 228, 228];
const AXIS: Rgb = [90, 90, 90];
const INK: Rgb = [35, 35, 35];
const MUTED: Rgb = [110, 110, 110];

const TEXT_SCALE: usize = 2;
const LEFT: usize = 110;
const RIGHT: usize = 30;
const TOP: usize = 8;
const TITLE_H: usize = 32;
const GAP: usize = 14;
/// Half the height of capitals, to centre a line of text on a point.
const HALF_CAP: i64 = (font::CAP_H * TEXT_SCALE / 2) as i64;
const PANEL_H: [usize; 3] = [330, 190, 190];

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
    let image = render(&series).to_png()?;
    write_atomic(png, &image)?;
    Ok(summary)
}

/// The data rectangles of the three panels (loss, learning rate, tokens/s), top to bottom, as
/// `(x, y, width, height)` in pixels of the image [`plot_metrics`] draws.
pub fn plot_areas() -> [(usize, usize, usize, usize); 3] {
    let r = panel_rects();
    [0, 1, 2].map(|i| (r[i].x, r[i].y, r[i].w, r[i].h))
}

fn panel_rects() -> [Rect; 3] {
    let mut y = TOP;
    [0, 1, 2].map(|i| {
        let r = Rect {
            x: LEFT,
            y: y + TITLE_H,
            w: WIDTH - LEFT - RIGHT,
            h: PANEL_H[i],
        };
        y = r.y + r.h + GAP;
        r
    })
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

// ---------------------------------------------------------------------------------------------
// Drawing

/// One stroked series: points, colour, half line width, marker radius (0 for none).
struct Stroke<'a> {
    points: &'a Points,
    color: Rgb,
    radius: f64,
    marker: f64,
}

/// Maps data coordinates into a panel's rectangle.
struct Frame {
    rect: Rect,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        self.rect.x as f64 + (x - self.x.0) / (self.x.1 - self.x.0) * self.rect.w as f64
    }

    fn py(&self, y: f64) -> f64 {
        (self.rect.y + self.rect.h) as f64
            - (y - self.y.0) / (self.y.1 - self.y.0) * self.rect.h as f64
    }
}

fn render(s: &Series) -> Canvas {
    let mut c = Canvas::new(WIDTH, HEIGHT, BACKGROUND);
    let rects = panel_rects();
    // The shared iteration axis, padded so points at the ends stay clear of the frame.
    let x = axis::padded_range(s.iters(), 0.015).unwrap_or((0.0, 1.0));
    let (xticks, xlabels) = iteration_ticks(x, rects[2].w);

    let eval_marker = |n: usize| if n <= 60 { 3.5 } else { 0.0 };
    let loss = [
        Stroke {
            points: &s.step_loss,
            color: STEP_LOSS_COLOR,
            radius: 0.75,
            marker: 0.0,
        },
        Stroke {
            points: &s.eval_train,
            color: EVAL_TRAIN_COLOR,
            radius: 1.25,
            marker: eval_marker(s.eval_train.len()),
        },
        Stroke {
            points: &s.val,
            color: VAL_LOSS_COLOR,
            radius: 1.25,
            marker: eval_marker(s.val.len()),
        },
    ];
    let best_val = s
        .val
        .iter()
        .copied()
        .fold(None, |best: Option<(f64, f64)>, p| match best {
            Some(b) if b.1 <= p.1 => Some(b),
            _ => Some(p),
        });
    let loss_note = match (best_val, s.step_loss.last()) {
        (Some((it, v)), _) => format!("best val {v:.4} at iter {it}"),
        (None, Some((it, v))) => format!("last {v:.4} at iter {it}"),
        (None, None) => String::new(),
    };
    let lr_note =
        s.lr.last()
            .map(|(it, v)| format!("last {} at iter {it}", axis::short_value(*v)))
            .unwrap_or_default();
    let tok_note = median(s.tokens_per_s.iter().map(|p| p.1))
        .map(|m| format!("median {m:.0}"))
        .unwrap_or_default();

    // Title, note, series, and whether the y axis starts at zero.
    let panels: [(&str, String, Vec<Stroke>, bool); 3] = [
        ("loss", loss_note, loss.into_iter().collect(), false),
        (
            "learning rate",
            lr_note,
            vec![Stroke {
                points: &s.lr,
                color: LR_COLOR,
                radius: 1.0,
                marker: 0.0,
            }],
            true,
        ),
        (
            "tokens/s",
            tok_note,
            vec![Stroke {
                points: &s.tokens_per_s,
                color: TOKENS_COLOR,
                radius: 0.9,
                marker: 0.0,
            }],
            true,
        ),
    ];
    for (i, (title, note, strokes, from_zero)) in panels.iter().enumerate() {
        let rect = rects[i];
        let mut values: Vec<f64> = strokes
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .collect();
        if *from_zero && !values.is_empty() {
            values.push(0.0);
        }
        let frame = axis::padded_range(values.into_iter(), 0.05).map(|y| Frame { rect, x, y });
        draw_panel(&mut c, rect, title, note, frame.as_ref(), strokes, &xticks);
        if i == 0 && frame.is_some() {
            draw_legend(&mut c, rect, strokes);
        }
    }

    // Iteration labels under the bottom panel only; the panels share the axis.
    let bottom = rects[2];
    let frame = Frame {
        rect: bottom,
        x,
        y: (0.0, 1.0),
    };
    let label_y = (bottom.y + bottom.h + 10) as i64;
    for (&t, label) in xticks.iter().zip(&xlabels) {
        let w = text_width(label, TEXT_SCALE) as i64;
        c.text(
            frame.px(t).round() as i64 - w / 2,
            label_y,
            label,
            TEXT_SCALE,
            INK,
            false,
        );
    }
    let name = "iteration";
    let w = text_width(name, TEXT_SCALE) as i64;
    let cx = (bottom.x + bottom.w / 2) as i64;
    c.text(cx - w / 2, label_y + 24, name, TEXT_SCALE, INK, true);
    c
}

/// Ticks and labels for the iteration axis `x` drawn `width` pixels wide: as many as fit with
/// room between the labels, at most about 10, none negative, none between whole iterations.
fn iteration_ticks(x: (f64, f64), width: usize) -> (Vec<f64>, Vec<String>) {
    let mut best = (vec![], vec![]);
    for target in (2..=10).rev() {
        let (ticks, step) = axis::ticks(x.0, x.1, target, 1.0);
        let ticks: Vec<f64> = ticks.into_iter().filter(|&t| t >= 0.0).collect();
        let max_abs = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        let labels: Vec<String> = ticks
            .iter()
            .map(|&t| axis::tick_label(t, step, max_abs))
            .collect();
        let widest = labels.iter().map(|l| text_width(l, TEXT_SCALE)).max();
        let spacing = step / (x.1 - x.0) * width as f64;
        best = (ticks, labels);
        if widest.unwrap_or(0) as f64 + 3.0 * (font::ADVANCE * TEXT_SCALE) as f64 <= spacing {
            break;
        }
    }
    best
}

fn draw_panel(
    c: &mut Canvas,
    rect: Rect,
    title: &str,
    note: &str,
    frame: Option<&Frame>,
    strokes: &[Stroke],
    xticks: &[f64],
) {
    let title_y = (rect.y - 24) as i64;
    c.text(rect.x as i64, title_y, title, TEXT_SCALE, INK, true);
    let w = text_width(note, TEXT_SCALE);
    c.text(
        (rect.x + rect.w - w) as i64,
        title_y,
        note,
        TEXT_SCALE,
        MUTED,
        false,
    );

    let Some(f) = frame else {
        c.frame(rect, AXIS);
        let msg = "no data";
        let w = text_width(msg, TEXT_SCALE);
        let (x, y) = (
            rect.x + (rect.w - w) / 2,
            (rect.y + rect.h / 2) as i64 - HALF_CAP,
        );
        c.text(x as i64, y, msg, TEXT_SCALE, MUTED, false);
        return;
    };
    let (rx, ry) = (rect.x as i64, rect.y as i64);
    let (rw, rh) = (rect.w as i64, rect.h as i64);

    // Grid and tick marks.
    let bottom = ry + rh;
    for &t in xticks {
        let px = f.px(t).round() as i64;
        if px >= rx && px < rx + rw {
            c.fill_rect(px, ry, 1, rh, GRID);
            c.fill_rect(px, bottom + 1, 1, 5, AXIS);
        }
    }
    let (yticks, ystep) = axis::ticks(f.y.0, f.y.1, if rect.h > 250 { 7 } else { 4 }, 0.0);
    let max_abs = yticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    for &t in &yticks {
        let py = f.py(t).round() as i64;
        if py < ry || py >= bottom {
            continue;
        }
        c.fill_rect(rx, py, rw, 1, GRID);
        c.fill_rect(rx - 6, py, 5, 1, AXIS);
        let label = axis::tick_label(t, ystep, max_abs);
        let w = text_width(&label, TEXT_SCALE) as i64;
        c.text(rx - 10 - w, py - HALF_CAP, &label, TEXT_SCALE, INK, false);
    }

    for s in strokes {
        let mut layer = Coverage::new(rect);
        let pts: Points = s.points.iter().map(|&(x, y)| (f.px(x), f.py(y))).collect();
        layer.polyline(&pts, s.radius);
        if s.marker > 0.0 {
            for &p in &pts {
                layer.disc(p, s.marker);
            }
        }
        c.composite(&layer, s.color);
    }
    c.frame(rect, AXIS);
}

fn draw_legend(c: &mut Canvas, rect: Rect, strokes: &[Stroke]) {
    let names = [
        "train loss (per step)",
        "train loss (eval)",
        "val loss (eval)",
    ];
    let entries: Vec<(&str, &Stroke)> = names
        .iter()
        .zip(strokes)
        .filter(|(_, s)| !s.points.is_empty())
        .map(|(n, s)| (*n, s))
        .collect();
    if entries.is_empty() {
        return;
    }
    let (pad, sample, row_h) = (10, 32, 24);
    let text_w = entries
        .iter()
        .map(|(n, _)| text_width(n, TEXT_SCALE))
        .max()
        .unwrap_or(0);
    let w = pad + sample + 8 + text_w + pad;
    let h = pad + entries.len() * row_h - 4 + pad / 2;
    // The corner whose box covers the fewest drawn pixels; top right on ties.
    let (inset, right, bottom) = (12, rect.x + rect.w - w - 12, rect.y + rect.h - h - 12);
    let corners = [
        (right, rect.y + inset),
        (rect.x + inset, rect.y + inset),
        (right, bottom),
        (rect.x + inset, bottom),
    ];
    let ink = |&(x, y): &(usize, usize)| {
        (y..y + h)
            .flat_map(|yy| (x..x + w).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| ![BACKGROUND, GRID].contains(&c.pixel(xx, yy)))
            .count()
    };
    let (x, y) = corners
        .iter()
        .copied()
        .min_by_key(|corner| ink(corner))
        .unwrap_or(corners[0]);
    let box_rect = Rect { x, y, w, h };
    c.fill_rect(
        box_rect.x as i64,
        box_rect.y as i64,
        w as i64,
        h as i64,
        BACKGROUND,
    );
    c.frame(box_rect, [200, 200, 200]);
    for (k, (name, s)) in entries.iter().enumerate() {
        let top = box_rect.y + pad + k * row_h;
        let cy = (top as i64 + HALF_CAP) as f64;
        let x0 = (box_rect.x + pad) as f64;
        let mut layer = Coverage::new(box_rect);
        layer.capsule((x0, cy), (x0 + sample as f64, cy), s.radius.max(1.0));
        if s.marker > 0.0 {
            layer.disc((x0 + sample as f64 / 2.0, cy), s.marker);
        }
        c.composite(&layer, s.color);
        c.text(
            (box_rect.x + pad + sample + 8) as i64,
            top as i64,
            name,
            TEXT_SCALE,
            INK,
            false,
        );
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

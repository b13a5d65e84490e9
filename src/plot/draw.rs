//! Drawing the three panels with `plotters` into an RGB buffer, and encoding it as PNG.

use super::canvas::Canvas;
use super::{
    Points, Series, EVAL_TRAIN_COLOR, HEIGHT, LR_COLOR, STEP_LOSS_COLOR, TOKENS_COLOR,
    VAL_LOSS_COLOR, WIDTH,
};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const GRID: RGBColor = RGBColor(228, 228, 228);
const AXIS: RGBColor = RGBColor(90, 90, 90);
const INK: RGBColor = RGBColor(35, 35, 35);
const MUTED: RGBColor = RGBColor(110, 110, 110);

const FONT: &str = "sans-serif";
const TEXT_SIZE: f64 = 19.0;
/// Room left of a panel for the y tick labels, and under the bottom one for the iterations.
const LEFT: u32 = 110;
const RIGHT: u32 = 30;
const BOTTOM_LABELS: u32 = 34;
const TOP: u32 = 8;
const TITLE_H: u32 = 32;
const GAP: u32 = 14;
const PANEL_H: [u32; 3] = [330, 190, 190];

/// The data rectangles of the three panels, top to bottom, as `(x, y, width, height)`.
pub(super) fn panel_rects() -> [(u32, u32, u32, u32); 3] {
    let mut y = TOP;
    [0, 1, 2].map(|i| {
        let r = (LEFT, y + TITLE_H, WIDTH as u32 - LEFT - RIGHT, PANEL_H[i]);
        y = r.1 + r.3 + GAP;
        r
    })
}

fn text(color: &RGBColor) -> TextStyle<'static> {
    (FONT, TEXT_SIZE).into_font().color(color)
}

fn bold() -> TextStyle<'static> {
    (FONT, TEXT_SIZE, FontStyle::Bold).into_font().color(&INK)
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// One series: points, colour, line width, marker radius (0 for none), legend name.
struct Stroke<'a> {
    points: &'a Points,
    color: [u8; 3],
    width: u32,
    marker: u32,
    name: &'a str,
}

/// Renders `s` as a `WIDTH` x `HEIGHT` PNG.
pub(super) fn png(s: &Series) -> Result<Vec<u8>> {
    let mut rgb_buf = vec![255u8; WIDTH * HEIGHT * 3];
    {
        let root = Canvas::new(&mut rgb_buf, (WIDTH as u32, HEIGHT as u32))?.into_drawing_area();
        draw(&root, s)?;
        root.present()?;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&rgb_buf)?;
    writer.finish()?;
    Ok(out)
}

fn draw(root: &DrawingArea<Canvas, Shift>, s: &Series) -> Result<()> {
    // The shared iteration axis, padded so points at the ends stay clear of the frame; whole
    // iterations only, so no tick falls between two.
    let (lo, hi) = s.iters().fold((f64::INFINITY, 0.0f64), |(lo, hi), it| {
        (lo.min(it), hi.max(it))
    });
    let pad = ((hi - lo) * 0.015).ceil().max(1.0);
    let x = (lo - pad) as i64..(hi + pad) as i64;

    // Markers on the eval lines while they are few enough to tell apart, and on any lone point.
    let marker = |p: &Points, r: u32| match p.len() {
        1 => r.max(3),
        n if n <= 60 => r,
        _ => 0,
    };
    let loss = vec![
        Stroke {
            points: &s.step_loss,
            color: STEP_LOSS_COLOR,
            width: 1,
            marker: marker(&s.step_loss, 0),
            name: "train loss (per step)",
        },
        Stroke {
            points: &s.eval_train,
            color: EVAL_TRAIN_COLOR,
            width: 2,
            marker: marker(&s.eval_train, 4),
            name: "train loss (eval)",
        },
        Stroke {
            points: &s.val,
            color: VAL_LOSS_COLOR,
            width: 2,
            marker: marker(&s.val, 4),
            name: "val loss (eval)",
        },
    ];
    let best_val = s
        .val
        .iter()
        .copied()
        .reduce(|b, p| if b.1 <= p.1 { b } else { p });
    let loss_note = match (best_val, s.step_loss.last()) {
        (Some((it, v)), _) => format!("best val {v:.4} at iter {it}"),
        (None, Some((it, v))) => format!("last {v:.4} at iter {it}"),
        (None, None) => String::new(),
    };
    let lr_note =
        s.lr.last()
            .map(|(it, v)| format!("last {} at iter {it}", short(*v)));
    let tok_note = median(s.tokens_per_s.iter().map(|p| p.1)).map(|m| format!("median {m:.0}"));
    let one = |points, color| {
        let marker = marker(points, 0);
        let name = "";
        vec![Stroke {
            points,
            color,
            width: 2,
            marker,
            name,
        }]
    };
    // Title, note, series, and whether the y axis starts at zero.
    let panels = [
        ("loss", loss_note, loss, false),
        (
            "learning rate",
            lr_note.unwrap_or_default(),
            one(&s.lr, LR_COLOR),
            true,
        ),
        (
            "tokens/s",
            tok_note.unwrap_or_default(),
            one(&s.tokens_per_s, TOKENS_COLOR),
            true,
        ),
    ];
    for ((title, note, strokes, from_zero), rect) in panels.into_iter().zip(panel_rects()) {
        let (rx, ry, rw, rh) = rect;
        let (rx, ry) = (rx as i32, ry as i32);
        let title_pos = (rx, ry - 26);
        root.draw_text(title, &bold(), title_pos)?;
        let right = text(&MUTED).pos(Pos::new(HPos::Right, VPos::Top));
        root.draw_text(&note, &right, (rx + rw as i32, ry - 26))?;

        let values = strokes.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let drawn = strokes.iter().any(|s| !s.points.is_empty());
        let zero = (from_zero && drawn).then_some(0.0);
        let y = padded_range(values.chain(zero), 0.05);
        // Iteration labels under the bottom panel only; the panels share the axis.
        let bottom = title == "tokens/s";
        let labels_h = if bottom { BOTTOM_LABELS } else { 0 };
        let area = root
            .clone()
            .shrink((0, ry as u32), (rx as u32 + rw, rh + labels_h));
        let (y0, y1) = y.unwrap_or((0.0, 1.0));
        let mut chart = ChartBuilder::on(&area)
            .y_label_area_size(LEFT)
            .x_label_area_size(labels_h)
            .build_cartesian_2d(x.clone(), y0..y1)?;
        let x_label = |v: &i64| if *v < 0 { String::new() } else { v.to_string() };
        let y_label = |v: &f64| short(*v);
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(AXIS)
            .label_style(text(&INK))
            .x_labels(20)
            .y_labels(match y {
                None => 0,
                Some(_) if rh > 250 => 10,
                Some(_) => 6,
            })
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .draw()?;
        if y.is_none() {
            let centre = text(&MUTED).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw_text("no data", &centre, (rx + rw as i32 / 2, ry + rh as i32 / 2))?;
        }
        let mut legend = false;
        for st in &strokes {
            let color = rgb(st.color);
            let points = st.points.iter().map(|&(it, v)| (it as i64, v));
            let line = chart.draw_series(LineSeries::new(
                points.clone(),
                color.stroke_width(st.width),
            ))?;
            if !st.name.is_empty() && !st.points.is_empty() {
                legend = true;
                let (width, marker) = (st.width, st.marker);
                line.label(st.name).legend(move |(x, y)| {
                    let sample = PathElement::new([(x, y), (x + 30, y)], color.stroke_width(width));
                    let dot = Circle::new(
                        (x + 15, y),
                        marker,
                        color.mix(f64::from(marker.min(1))).filled(),
                    );
                    EmptyElement::at((0, 0)) + sample + dot
                });
            }
            if st.marker > 0 {
                chart.draw_series(points.map(|p| Circle::new(p, st.marker, color.filled())))?;
            }
        }
        if legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .margin(12)
                .legend_area_size(40)
                .background_style(WHITE)
                .border_style(RGBColor(200, 200, 200))
                .label_font(text(&INK))
                .draw()?;
        }
        let frame = [(rx - 1, ry - 1), (rx + rw as i32, ry + rh as i32)];
        root.draw(&Rectangle::new(frame, AXIS))?;
        if bottom {
            let centre = bold().pos(Pos::new(HPos::Center, VPos::Top));
            root.draw_text(
                "iteration",
                &centre,
                (rx + rw as i32 / 2, ry + rh as i32 + 34),
            )?;
        }
    }
    Ok(())
}

/// The smallest and largest of `values`, widened by `pad` of their span on each side; a single
/// value gets a range of its own around it.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = match (lo, hi) {
        _ if lo > hi => return None,
        (0.0, 0.0) => (0.0, 1.0),
        _ if lo == hi => (lo - lo.abs() * 0.1, hi + hi.abs() * 0.1),
        r => r,
    };
    let span = hi - lo;
    Some((lo - pad * span, hi + pad * span))
}

/// `v` in at most 4 significant digits, in scientific notation when tiny or huge: tick labels
/// and notes ("1.5", "12000", "6e-4").
fn short(v: f64) -> String {
    let trim = |s: String| match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    };
    let a = v.abs();
    if a < 1e-12 {
        "0".to_string()
    } else if !(1e-2..1e6).contains(&a) {
        let s = format!("{v:.3e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{e}", trim(m.to_string()))
    } else {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        trim(format!("{v:.decimals$}"))
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_labels_hide_float_noise() {
        for (v, want) in [
            (0.0, "0"),
            (1e-4, "1e-4"),
            (6.000000000000001e-4, "6e-4"),
            (9.9012e-6, "9.901e-6"),
            (2.5000000000000004, "2.5"),
            (1.23456, "1.235"),
            (12345.6, "12346"),
            (0.05, "0.05"),
            (-3.0, "-3"),
            (2.5e6, "2.5e6"),
        ] {
            assert_eq!(short(v), want, "{v}");
        }
    }

    #[test]
    fn padded_ranges() {
        assert_eq!(padded_range([].into_iter(), 0.05), None);
        assert_eq!(padded_range([0.0].into_iter(), 0.0), Some((0.0, 1.0)));
        assert_eq!(padded_range([2.0].into_iter(), 0.0), Some((1.8, 2.2)));
        assert_eq!(padded_range([1.0, 3.0].into_iter(), 0.5), Some((0.0, 4.0)));
    }
}

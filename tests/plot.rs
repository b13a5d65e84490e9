//! `nanogpt plot`: synthetic metrics.jsonl files drawn, the PNG decoded and its pixels checked.

use nanogpt::plot::{
    plot_areas, plot_metrics, plot_out_dir, PlotSummary, EVAL_TRAIN_COLOR, HEIGHT, LR_COLOR,
    METRICS_FILE, PLOT_FILE, STEP_LOSS_COLOR, TOKENS_COLOR, VAL_LOSS_COLOR, WIDTH,
};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A fresh directory under the target's tmp dir (stable, so the images can be looked at).
fn tmp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plot-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

/// Decodes an 8-bit RGB, non-interlaced PNG (what the plotter writes), checking every CRC.
fn decode_png(bytes: &[u8]) -> Image {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let (mut pos, mut idat, mut ihdr) = (8, Vec::new(), None);
    let mut ended = false;
    while pos < bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        let crc = u32::from_be_bytes(bytes[pos + 8 + len..pos + 12 + len].try_into().unwrap());
        let mut check = flate2::Crc::new();
        check.update(kind);
        check.update(data);
        assert_eq!(
            check.sum(),
            crc,
            "CRC of chunk {:?}",
            String::from_utf8_lossy(kind)
        );
        match kind {
            b"IHDR" => ihdr = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => ended = true,
            _ => {}
        }
        pos += 12 + len;
    }
    assert!(ended, "no IEND");
    let ihdr = ihdr.expect("no IHDR");
    let width = u32::from_be_bytes(ihdr[0..4].try_into().unwrap()) as usize;
    let height = u32::from_be_bytes(ihdr[4..8].try_into().unwrap()) as usize;
    assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0], "8-bit RGB, not interlaced");
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = 3 * width;
    assert_eq!(raw.len(), height * (stride + 1));
    let mut prev = vec![0u8; stride];
    let mut rgb = Vec::with_capacity(width * height);
    for row in raw.chunks_exact(stride + 1) {
        let (filter, line) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= 3 { cur[i - 3] } else { 0 };
            let (b, c) = (prev[i], if i >= 3 { prev[i - 3] } else { 0 });
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((a as u16 + b as u16) / 2) as u8,
                4 => {
                    let p = a as i16 + b as i16 - c as i16;
                    let (pa, pb, pc) = (
                        (p - a as i16).abs(),
                        (p - b as i16).abs(),
                        (p - c as i16).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("bad filter type {f}"),
            };
            cur[i] = line[i].wrapping_add(pred);
        }
        rgb.extend(cur.chunks_exact(3).map(|p| [p[0], p[1], p[2]]));
        prev = cur;
    }
    Image { width, height, rgb }
}

impl Image {
    /// Pixels of exactly `color` inside panel `panel`'s data area.
    fn count_in_panel(&self, panel: usize, color: [u8; 3]) -> usize {
        let (x, y, w, h) = plot_areas()[panel];
        (y..y + h)
            .flat_map(|yy| (x..x + w).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| self.rgb[yy * self.width + xx] == color)
            .count()
    }

    fn count_in_panels(&self, color: [u8; 3]) -> [usize; 3] {
        [0, 1, 2].map(|p| self.count_in_panel(p, color))
    }
}

fn read_png(path: &Path) -> Image {
    let img = decode_png(&std::fs::read(path).unwrap());
    assert_eq!((img.width, img.height), (WIDTH, HEIGHT));
    assert_eq!((img.width, img.height), (1200, 900));
    img
}

/// A deterministic noise source in [-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn lr_at(it: usize) -> f64 {
    let (warmup, decay, max, min) = (100.0, 5000.0, 1e-3, 1e-4);
    let it = it as f64;
    if it < warmup {
        return max * (it + 1.0) / (warmup + 1.0);
    }
    let ratio = ((it - warmup) / (decay - warmup)).min(1.0);
    min + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (max - min)
}

fn step_line(it: usize, loss: f64, tok: f64) -> String {
    format!(
        r#"{{"iter":{it},"loss":{loss},"lr":{},"ms":{},"tokens_per_s":{tok},"mfu":0.05}}"#,
        lr_at(it),
        16384.0 / tok * 1e3
    )
}

fn eval_line(it: usize, train: f64, val: f64) -> String {
    format!(r#"{{"iter":{it},"train_loss":{train},"val_loss":{val}}}"#)
}

/// A shakespeare_char-like run: 5000 iterations, a step line every 10, an eval every 250.
fn synthetic_run(noise_seed: u64) -> String {
    let mut noise = Noise(noise_seed);
    let mut out = String::new();
    for it in 0..=5000usize {
        let base = 1.0 + 3.2 * (-(it as f64) / 700.0).exp();
        if it.is_multiple_of(250) {
            let val = base + 0.47 * (it as f64 / 5000.0).powi(2) + 0.02;
            out += &eval_line(it, base - 0.05 * (it as f64 / 5000.0), val);
            out.push('\n');
        }
        if it.is_multiple_of(10) {
            let tok = if it == 0 {
                3000.0
            } else {
                12000.0 + 900.0 * noise.next()
            };
            out += &step_line(it, base + 0.12 * noise.next(), tok);
            out.push('\n');
        }
    }
    out
}

fn no_tmp_left(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().ends_with(".tmp"),
            "{name:?} left behind"
        );
    }
}

#[test]
fn full_run_draws_every_series_in_its_panel() {
    let dir = tmp_dir("full");
    std::fs::write(dir.join(METRICS_FILE), synthetic_run(1)).unwrap();
    let (png, summary) = plot_out_dir(&dir).unwrap();
    assert_eq!(png, dir.join(PLOT_FILE));
    assert_eq!(
        summary,
        PlotSummary {
            step_loss_points: 501,
            eval_train_points: 21,
            val_points: 21,
            lr_points: 501,
            tokens_per_s_points: 501,
            first_iter: 0,
            last_iter: 5000,
            ..Default::default()
        }
    );
    assert!(
        summary.to_string().contains("iterations 0..5000"),
        "{summary}"
    );
    no_tmp_left(&dir);

    let img = read_png(&png);
    let [val_top, val_mid, val_bottom] = img.count_in_panels(VAL_LOSS_COLOR);
    assert!(
        val_top > 500,
        "val-loss line in the loss panel: {val_top} pixels"
    );
    assert_eq!(
        (val_mid, val_bottom),
        (0, 0),
        "val loss only in the loss panel"
    );
    let [train_top, train_mid, train_bottom] = img.count_in_panels(EVAL_TRAIN_COLOR);
    assert!(train_top > 500, "eval train-loss line: {train_top} pixels");
    assert_eq!((train_mid, train_bottom), (0, 0));
    let [step_top, step_mid, step_bottom] = img.count_in_panels(STEP_LOSS_COLOR);
    assert!(step_top > 200, "per-step loss line: {step_top} pixels");
    assert_eq!((step_mid, step_bottom), (0, 0));
    let [lr_top, lr_mid, lr_bottom] = img.count_in_panels(LR_COLOR);
    assert!(lr_mid > 500, "lr line in the middle panel: {lr_mid} pixels");
    assert_eq!((lr_top, lr_bottom), (0, 0));
    let [tok_top, tok_mid, tok_bottom] = img.count_in_panels(TOKENS_COLOR);
    assert!(
        tok_bottom > 300,
        "tokens/s line in the bottom panel: {tok_bottom} pixels"
    );
    assert_eq!((tok_top, tok_mid), (0, 0));

    // The loss curve falls: val-loss pixels sit higher (smaller y) on the left than on the right.
    let (x, y, w, h) = plot_areas()[0];
    let mean_y = |x0: usize, x1: usize| {
        let ys: Vec<usize> = (y..y + h)
            .flat_map(|yy| (x0..x1).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| img.rgb[yy * img.width + xx] == VAL_LOSS_COLOR)
            .map(|(_, yy)| yy)
            .collect();
        assert!(!ys.is_empty());
        ys.iter().sum::<usize>() as f64 / ys.len() as f64
    };
    assert!(mean_y(x, x + w / 10) < mean_y(x + w / 2, x + w * 6 / 10));
}

#[test]
fn resumed_run_with_bad_lines_and_nan() {
    let dir = tmp_dir("resume");
    let mut text = String::new();
    // First run: iterations 0..=300, evals at 0, 100, 200, 300.
    for it in (0..=300usize).step_by(10) {
        if it.is_multiple_of(100) {
            text += &(eval_line(it, 3.0, 3.1) + "\n");
        }
        text += &(step_line(it, 3.0 - it as f64 / 1000.0, 10000.0) + "\n");
    }
    text += "{\"iter\": 310, \"loss\": 2.6, \"lr\"\n"; // cut short by a crash: line 36
                                                       // Resumed from the checkpoint at 200: eval at 200 again, then steps 200..=400.
    text += &(eval_line(200, 2.5, 2.7) + "\n");
    for it in (200..=400).step_by(10) {
        if it == 300 {
            text += "\n"; // blank: ignored
            text += r#"{"iter":300,"train_loss":null,"val_loss":2.4}"#; // NaN train loss
            text += "\n";
        }
        text += &(step_line(it, 2.0, 11000.0) + "\n");
    }
    text += r#"{"iter":400,"train_loss":1e300,"val_loss":2.2}"#; // out of range: skipped
    text += "\n";
    text += "not json at all\n";
    text += r#"{"iter":-5,"loss":1.0}"#;
    text += "\n";
    std::fs::write(dir.join(METRICS_FILE), &text).unwrap();
    let png = dir.join("plot.png");
    let s = plot_metrics(&dir.join(METRICS_FILE), &png).unwrap();
    // Steps 0..190 (20) from the first run and 200..=400 (21) from the second.
    assert_eq!(s.step_loss_points, 41);
    assert_eq!((s.lr_points, s.tokens_per_s_points), (41, 41));
    // Evals at 0 and 100 from the first run, 200, 300 and 400 from the second (300's train loss
    // is null, 400's out of range).
    assert_eq!((s.eval_train_points, s.val_points), (3, 5));
    assert_eq!(s.skipped_values, 2);
    assert_eq!((s.malformed_lines, s.first_malformed_line), (3, Some(36)));
    assert_eq!(s.resumes, 1);
    // Dropped: steps 200..=300 (11) and evals at 200 and 300.
    assert_eq!(s.superseded_lines, 13);
    assert_eq!((s.first_iter, s.last_iter), (0, 400));
    let msg = s.to_string();
    assert!(
        msg.contains("skipped 3 malformed lines (the first is line 36)"),
        "{msg}"
    );
    assert!(
        msg.contains("1 resume: 13 earlier lines superseded"),
        "{msg}"
    );
    let img = read_png(&png);
    assert!(img.count_in_panel(0, VAL_LOSS_COLOR) > 100);
    assert!(img.count_in_panel(1, LR_COLOR) > 100);
    no_tmp_left(&dir);
}

#[test]
fn single_points_and_missing_panels() {
    // One step line: every panel has one dot.
    let dir = tmp_dir("single-step");
    let metrics = dir.join(METRICS_FILE);
    std::fs::write(&metrics, step_line(0, 4.2, 5000.0) + "\n").unwrap();
    let s = plot_metrics(&metrics, &dir.join("a.png")).unwrap();
    assert_eq!(
        (s.step_loss_points, s.lr_points, s.tokens_per_s_points),
        (1, 1, 1)
    );
    assert_eq!((s.first_iter, s.last_iter), (0, 0));
    let img = read_png(&dir.join("a.png"));
    assert!(img.count_in_panel(0, STEP_LOSS_COLOR) > 0);
    assert!(img.count_in_panel(1, LR_COLOR) > 0);
    assert!(img.count_in_panel(2, TOKENS_COLOR) > 0);

    // One eval line (an eval_only run): the loss panel only; the others say "no data".
    let dir = tmp_dir("single-eval");
    let metrics = dir.join(METRICS_FILE);
    std::fs::write(&metrics, eval_line(1000, 1.2, 1.5)).unwrap(); // no final newline
    let s = plot_metrics(&metrics, &dir.join("b.png")).unwrap();
    assert_eq!(
        (s.eval_train_points, s.val_points, s.step_loss_points),
        (1, 1, 0)
    );
    let img = read_png(&dir.join("b.png"));
    assert!(img.count_in_panel(0, VAL_LOSS_COLOR) > 10);
    assert!(img.count_in_panel(0, EVAL_TRAIN_COLOR) > 10);
    assert_eq!(img.count_in_panel(1, LR_COLOR), 0);

    // Constant values (a flat line) and an all-NaN series.
    let dir = tmp_dir("flat");
    let metrics = dir.join(METRICS_FILE);
    let text: String = (0..50)
        .map(|it| format!("{{\"iter\":{it},\"loss\":2.0,\"lr\":0.0,\"tokens_per_s\":null}}\n"))
        .collect();
    std::fs::write(&metrics, text).unwrap();
    let s = plot_metrics(&metrics, &dir.join("c.png")).unwrap();
    assert_eq!(
        (s.step_loss_points, s.lr_points, s.tokens_per_s_points),
        (50, 50, 0)
    );
    assert_eq!(s.skipped_values, 50);
    let img = read_png(&dir.join("c.png"));
    assert!(img.count_in_panel(1, LR_COLOR) > 100);
}

fn err(metrics: &Path, png: &Path) -> String {
    format!("{:#}", plot_metrics(metrics, png).unwrap_err())
}

#[test]
fn errors_name_the_file_and_what_to_do() {
    let dir = tmp_dir("errors");
    let metrics = dir.join(METRICS_FILE);
    let png = dir.join("out.png");

    let e = err(&metrics, &png);
    assert!(
        e.contains(&metrics.display().to_string()) && e.contains("train first"),
        "{e}"
    );

    std::fs::write(&metrics, "").unwrap();
    let e = err(&metrics, &png);
    assert!(e.contains("is empty"), "{e}");
    std::fs::write(&metrics, "\n\n").unwrap();
    assert!(err(&metrics, &png).contains("is empty"));

    std::fs::write(&metrics, "garbage\n{\"iter\":3}\n[1,2]\n").unwrap();
    let e = err(&metrics, &png);
    assert!(e.contains(&metrics.display().to_string()), "{e}");
    assert!(
        e.contains("no values to plot") && e.contains("first at line 1"),
        "{e}"
    );

    std::fs::write(
        &metrics,
        "{\"iter\":0,\"loss\":null,\"lr\":null,\"tokens_per_s\":null}\n",
    )
    .unwrap();
    let e = err(&metrics, &png);
    assert!(
        e.contains("no values to plot") && e.contains("0 malformed"),
        "{e}"
    );
    assert!(!png.exists(), "no image for a failed plot");

    // An image path in a directory that does not exist.
    std::fs::write(&metrics, step_line(0, 4.0, 1000.0)).unwrap();
    let bad = dir.join("missing-dir").join("x.png");
    let e = err(&metrics, &bad);
    assert!(
        e.contains("cannot write") && e.contains("missing-dir"),
        "{e}"
    );

    // Never over the metrics file itself.
    let e = err(&metrics, &metrics);
    assert!(e.contains("over itself"), "{e}");
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("\"loss\""));

    // plot_out_dir on something that is not a directory.
    let e = format!("{:#}", plot_out_dir(&metrics).unwrap_err());
    assert!(
        e.contains("is not a directory") && e.contains("out_dir"),
        "{e}"
    );
    let e = format!("{:#}", plot_out_dir(&dir.join("nope")).unwrap_err());
    assert!(e.contains("is not a directory"), "{e}");
    no_tmp_left(&dir);
}

//! Axis ranges, round tick values and their labels.

/// The range `lo..hi` of `values` widened by `pad` of its span on each side; a zero span (one
/// value, or all equal) is first widened by a tenth of the value each way (or to `0..1` for zero).
pub fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()).max(1e-300) {
        if lo == 0.0 {
            hi = 1.0;
        } else {
            let d = lo.abs() * 0.1;
            lo -= d;
            hi += d;
        }
    }
    let span = hi - lo;
    Some((lo - pad * span, hi + pad * span))
}

/// Ticks at round multiples (1, 2 or 5 times a power of ten) inside `lo..=hi`, about `target` of
/// them (between roughly 0.7 and 1.5 times as many), no step below `min_step`. Returns the ticks and the step.
pub fn ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / target.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return (vec![], 1.0);
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    let step = (m * mag).max(min_step);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    if last.saturating_sub(first) > 1000 {
        return (vec![], step);
    }
    let ticks = (first..=last)
        .map(|k| {
            let v = k as f64 * step;
            // Snap the rounding noise of k * step (e.g. 0.30000000000000004).
            let snapped = (v / step).round() * step;
            if snapped.abs() < step * 1e-9 {
                0.0
            } else {
                snapped
            }
        })
        .collect();
    (ticks, step)
}

/// A value for a note: `0`, up to 4 significant digits, and `1.5e-4` style when very small or
/// very large.
pub fn short_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-2..1e6).contains(&a) {
        let s = format!("{v:.3e}");
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", trim_zeros(m)),
            None => s,
        }
    } else {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

/// A label for tick `v` of an axis whose ticks are `step` apart and reach `max_abs`: plain
/// decimals with just enough digits for the step, or `1.5e-4` style for very small or very large
/// values.
pub fn tick_label(v: f64, step: f64, max_abs: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let step_exp = step.abs().log10().floor() as i32;
    if !(1e-2..1e6).contains(&max_abs) {
        let exp = (v.abs() * (1.0 + 1e-9)).log10().floor() as i32;
        let decimals = (exp - step_exp).max(0) as usize;
        // "1e-3" beside "1.5e-3", not "1.0e-3".
        let mantissa = format!("{:.decimals$}", v / 10f64.powi(exp));
        return format!("{}e{exp}", trim_zeros(&mantissa));
    }
    let decimals = (-step_exp).max(0) as usize;
    format!("{v:.decimals$}")
}

/// `1.500` as `1.5`, `2.0` as `2`; integers unchanged.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(lo: f64, hi: f64, target: usize) -> Vec<String> {
        let (t, step) = ticks(lo, hi, target, 0.0);
        let max_abs = t.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        t.iter().map(|&v| tick_label(v, step, max_abs)).collect()
    }

    #[test]
    fn round_ticks() {
        assert_eq!(
            labels(0.0, 5000.0, 10),
            ["0", "500", "1000", "1500", "2000", "2500", "3000", "3500", "4000", "4500", "5000"]
        );
        assert_eq!(
            labels(0.9, 4.3, 6),
            ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
        );
        assert_eq!(labels(-3e-5, 6.3e-4, 4), ["0", "2e-4", "4e-4", "6e-4"]);
        assert_eq!(labels(1.1e-4, 2.9e-4, 4), ["1.5e-4", "2e-4", "2.5e-4"]);
        assert_eq!(labels(0.2, 0.5, 3), ["0.2", "0.3", "0.4", "0.5"]);
        assert_eq!(
            labels(1.0e6, 3.0e6, 4),
            ["1e6", "1.5e6", "2e6", "2.5e6", "3e6"]
        );
        assert_eq!(
            labels(11000.0, 14500.0, 4),
            ["11000", "12000", "13000", "14000"]
        );
    }

    #[test]
    fn notes() {
        assert_eq!(short_value(0.0), "0");
        assert_eq!(short_value(1e-4), "1e-4");
        assert_eq!(short_value(9.9012e-6), "9.901e-6");
        assert_eq!(short_value(1.23456), "1.235");
        assert_eq!(short_value(12345.6), "12346");
        assert_eq!(short_value(0.05), "0.05000");
    }

    #[test]
    fn degenerate_ticks() {
        assert!(ticks(0.0, f64::INFINITY, 5, 0.0).0.is_empty());
        assert!(ticks(1.0, 1.0, 5, 0.0).0.is_empty());
        assert!(ticks(0.0, 1e9, 5, 0.0).0.len() <= 8);
    }

    #[test]
    fn ranges() {
        assert_eq!(padded_range([2.0].into_iter(), 0.0), Some((1.8, 2.2)));
        assert_eq!(padded_range([0.0, 0.0].into_iter(), 0.0), Some((0.0, 1.0)));
        assert_eq!(padded_range([f64::NAN].into_iter(), 0.0), None);
        assert_eq!(
            padded_range([0.0, 10.0].into_iter(), 0.1),
            Some((-1.0, 11.0))
        );
    }
}

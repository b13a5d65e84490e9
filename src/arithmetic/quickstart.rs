//! `nanogpt quickstart`: the whole job on a fresh machine with no network. Prepare arithmetic
//! problems, train a small GPT on them (config/arithmetic.toml, built into the binary), then
//! evaluate it on problems it never saw.

use super::dataset::{prepare_arithmetic, ArithmeticOptions};
use super::eval::{evaluate, ArithmeticReport};
use crate::engine;
use crate::load;
use crate::train::{train, TrainConfig};
use anyhow::Result;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// The preset the quickstart trains with (the same file users can edit and pass to `train`).
pub const PRESET: &str = include_str!("../../config/arithmetic.toml");

/// Prepares `data_dir/arithmetic`, trains into `out_dir`, evaluates. `overrides` are `--key=value`
/// training knobs applied over the preset (e.g. `--max_iters=200` for a quick try).
pub fn quickstart(
    data_dir: &Path,
    out_dir: &Path,
    overrides: &[String],
    log: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<ArithmeticReport> {
    let opts = ArithmeticOptions::default();
    let dataset_dir = data_dir.join("arithmetic");
    let summary = prepare_arithmetic(&opts, &dataset_dir)?;
    writeln!(
        log,
        "prepared {}: {} training problems (+ and -, 1 to 3 digits, answers reversed), {} held out",
        dataset_dir.display(),
        summary.train_problems,
        summary.test_problems
    )?;
    let mut cfg = TrainConfig::default();
    cfg.apply_toml(PRESET, "config/arithmetic.toml")?;
    cfg.data_dir = data_dir.display().to_string();
    cfg.out_dir = out_dir.display().to_string();
    cfg.apply_overrides(overrides)?;
    train(&cfg, log, stop)?;
    let (model, _) = load::trained(out_dir)?;
    evaluate(engine::open(model, cfg.device)?.as_ref(), &dataset_dir)
}

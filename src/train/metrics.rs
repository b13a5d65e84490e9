//! `metrics.jsonl`: one JSON object per line, appended (a resumed run continues the file).

use anyhow::{Context, Result};
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Metrics {
    /// None on the ranks of a data-parallel run other than rank 0, which alone writes.
    file: Option<File>,
    path: PathBuf,
}

impl Metrics {
    pub fn open(path: &Path) -> Result<Metrics> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Metrics {
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    /// Metrics that go nowhere.
    pub fn silent() -> Metrics {
        Metrics {
            file: None,
            path: PathBuf::new(),
        }
    }

    pub fn step(
        &mut self,
        iter: usize,
        loss: f32,
        lr: f32,
        ms: f64,
        tokens_per_s: f64,
        mfu: f64,
    ) -> Result<()> {
        self.write(json!({"iter": iter, "loss": loss, "lr": lr, "ms": ms, "tokens_per_s": tokens_per_s, "mfu": mfu}))
    }

    pub fn eval(&mut self, iter: usize, train_loss: f32, val_loss: f32) -> Result<()> {
        self.write(json!({"iter": iter, "train_loss": train_loss, "val_loss": val_loss}))
    }

    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        writeln!(file, "{v}")
            .with_context(|| format!("cannot append to {} (disk full?)", self.path.display()))
    }
}

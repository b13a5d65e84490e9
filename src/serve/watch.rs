//! The training dashboard's data (`--watch=OUT_DIR`): the run's `metrics.jsonl` read from a
//! given line on, and a sample from each new checkpoint. A thread polls the run's `latest/`
//! checkpoint once a second; when it changes (the trainer saves at an evaluation) it loads the
//! model and writes a short sample, the way `nanogpt sample` would.

use crate::checkpoint::{self, STATE_FILE};
use crate::engine::{self, Device};
use crate::load::{self, ModelSource};
use crate::sample::{generate, SamplingConfig};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Tokens per checkpoint sample.
const SAMPLE_TOKENS: usize = 200;

pub struct Watch {
    pub out_dir: PathBuf,
    /// `(iteration of the checkpoint, sample text)`, oldest first.
    samples: Mutex<Vec<(usize, String)>>,
}

impl Watch {
    pub fn new(out_dir: &Path) -> Watch {
        Watch {
            out_dir: out_dir.to_path_buf(),
            samples: Mutex::new(Vec::new()),
        }
    }

    /// Complete lines of `metrics.jsonl` from line `since` on (parsed), the next line number,
    /// and the samples so far.
    pub fn read(&self, since: usize) -> Result<Value> {
        let path = self.out_dir.join("metrics.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        // A line still being written has no newline yet: leave it for the next poll.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<Value> = complete
            .lines()
            .skip(since)
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect();
        let samples: Vec<Value> = self
            .samples
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(iter, text)| json!({"iter": iter, "text": text}))
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({
            "out_dir": self.out_dir.display().to_string(),
            "next": since + lines.len(),
            "lines": lines,
            "samples": samples,
        }))
    }
}

/// When the run's latest checkpoint was last written, if it has one.
fn checkpoint_stamp(out_dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let dir = checkpoint::resolve(&out_dir.join("latest"))?;
    let modified = std::fs::metadata(dir.join(STATE_FILE))
        .ok()?
        .modified()
        .ok()?;
    Some((dir, modified))
}

/// Polls for new checkpoints and samples each one; runs until the process ends.
pub fn sample_checkpoints(watch: Arc<Watch>) {
    let mut seen: Option<(PathBuf, SystemTime)> = None;
    loop {
        let stamp = checkpoint_stamp(&watch.out_dir);
        if stamp.is_some() && stamp != seen {
            // A checkpoint being replaced can fail to read; the next poll tries again.
            if let Some((dir, _)) = &stamp {
                if let Ok(entry) = sample_one(dir) {
                    if let Ok(mut s) = watch.samples.lock() {
                        s.push(entry);
                    }
                    seen = stamp;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn sample_one(dir: &Path) -> Result<(usize, String)> {
    let state: Value = serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE))?)?;
    let iter = state["iter_num"].as_u64().unwrap_or(0) as usize;
    let src = ModelSource {
        init_from: dir.display().to_string(),
        ..ModelSource::default()
    };
    let loaded = load::for_sampling(&src, &mut std::io::sink())?;
    let engine = engine::open(loaded.model, Device::Cpu)?;
    let cfg = SamplingConfig {
        num_samples: 1,
        max_new_tokens: SAMPLE_TOKENS,
        ..SamplingConfig::default()
    };
    let prompt = loaded.tokenizer.encode("\n")?;
    let gens = generate(
        engine.as_ref(),
        &prompt,
        &cfg,
        &loaded.tokenizer,
        &mut |_, _| {},
    )?;
    let tokens = gens.first().map(|g| g.tokens.clone()).unwrap_or_default();
    Ok((iter, loaded.tokenizer.decode(&tokens)?))
}

//! The checkpoint format, written by training and read by [`crate::load`]: a directory that transformers' `GPT2LMHeadModel.from_pretrained` opens as it is
//! (`config.json` + `model.safetensors`), plus the training state beside it
//! (`optimizer.safetensors`: AdamW moments in the parameter layout; `train_state.json`).
//!
//! A checkpoint directory is replaced whole: written as `NAME.tmp/`, then the old one is moved
//! to `NAME.old/`, the new one renamed into place and the old one removed. A crash at any point
//! leaves either `NAME/` or `NAME.old/` complete, and `resolve` finds whichever it is.

use crate::atomic_file::write_atomic;
use crate::config::{GptConfig, TrainConfig};
use crate::engine::{Engine, OptimizerState};
use crate::model::weights::{f32_le_bytes, load_model_file, save_hf_dir};
use crate::model::Gpt;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "train_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// The next iteration to run.
    pub iter_num: usize,
    pub best_val_loss: f32,
    pub model: GptConfig,
    pub train: TrainConfig,
    /// AdamW steps taken (PyTorch's `state['step']`).
    pub optimizer_step: u64,
    /// Ranks of the data-parallel run that saved it (1: one process).
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

/// Checkpoints written before data-parallel runs came from one process.
fn one_rank() -> usize {
    1
}

/// Writes a complete checkpoint to `dir`, replacing any earlier one there: the engine's model
/// and `opt` (the engine's optimizer state, or under ZeRO-1 the one gathered from every rank).
/// `iter_num` is the next iteration to run.
pub fn save(
    dir: &Path,
    engine: &dyn Engine,
    opt: &OptimizerState,
    train: &TrainConfig,
    iter_num: usize,
    best_val_loss: f32,
    world_size: usize,
) -> Result<()> {
    let model = engine.model();
    let state = TrainState {
        iter_num,
        best_val_loss,
        model: model.config.clone(),
        train: train.clone(),
        optimizer_step: opt.step,
        world_size,
    };
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
    }
    save_hf_dir(&model, &tmp)?;
    let tensors = [("m", &opt.m), ("v", &opt.v)]
        .into_iter()
        .map(|(name, x)| {
            Ok((
                name,
                safetensors::tensor::TensorView::new(Dtype::F32, vec![x.len()], f32_le_bytes(x))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // Streamed to the file: no copy of the moments in memory (as large as the model, twice).
    let opt_path = tmp.join(OPTIMIZER_FILE);
    safetensors::serialize_to_file(tensors, None, &opt_path)
        .and_then(|()| Ok(std::fs::File::open(&opt_path)?.sync_all()?))
        .with_context(|| format!("cannot write {} (disk full?)", opt_path.display()))?;
    write_atomic(
        &tmp.join(STATE_FILE),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        }
        std::fs::rename(dir, &old)
            .with_context(|| format!("cannot move {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// The complete checkpoint at `dir`, or the previous one if a save was interrupted.
pub fn resolve(dir: &Path) -> Option<PathBuf> {
    let old = sibling(dir, "old");
    [dir.to_path_buf(), old]
        .into_iter()
        .find(|d| d.join(STATE_FILE).is_file())
}

/// Loads model, optimizer and state from a checkpoint directory (to resume training).
pub fn load(dir: &Path) -> Result<(Gpt, OptimizerState, TrainState)> {
    let Some(dir) = resolve(dir) else {
        bail!("no checkpoint in {} (no {STATE_FILE}): train with init_from=scratch first, or check out_dir", dir.display());
    };
    let (model, state) = read_model(&dir)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let bytes =
        std::fs::read(&opt_path).with_context(|| format!("cannot read {}", opt_path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "{} is not a valid safetensors file (truncated?)",
            opt_path.display()
        )
    })?;
    let mut opt = OptimizerState::new(model.params.len());
    for (name, dst) in [("m", &mut opt.m), ("v", &mut opt.v)] {
        let view = st
            .tensor(name)
            .with_context(|| format!("{}: tensor \"{name}\" is missing", opt_path.display()))?;
        if view.dtype() != Dtype::F32 || view.data().len() != dst.len() * 4 {
            bail!(
                "{}: tensor \"{name}\" does not match the model ({} parameters)",
                opt_path.display(),
                dst.len()
            );
        }
        for (d, b) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    opt.step = state.optimizer_step;
    Ok((model, opt, state))
}

/// The model and state of one complete checkpoint directory.
pub fn read_model(dir: &Path) -> Result<(Gpt, TrainState)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged: not a training state", state_path.display()))?;
    let weights = dir.join("model.safetensors");
    let model = load_model_file(&weights, state.model.clone())?;
    // A diverged model would only sample garbage or fail far from the cause.
    if model.params.iter().any(|x| !x.is_finite()) {
        bail!(
            "{}: the weights contain NaN or infinite values (the run diverged): use an earlier checkpoint, or retrain with a lower learning_rate",
            weights.display()
        );
    }
    Ok((model, state))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

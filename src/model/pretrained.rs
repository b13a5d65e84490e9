//! OpenAI's GPT-2 checkpoints (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from a local directory or
//! the Hugging Face cache, and `crop_block_size` for fine-tuning on shorter contexts.

use super::gpt::Gpt;
use super::params::ParamTable;
use super::weights::load_hf_dir;
use crate::config::GptConfig;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub const GPT2_NAMES: [&str; 4] = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

/// The Hugging Face hub cache: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub.
pub fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Where the weights named `name` are: `name` itself if it is a model directory, else a snapshot
/// of `openai-community/<name>` or `<name>` in the Hugging Face cache.
pub fn find_model_dir(name: &str) -> Result<PathBuf> {
    let is_model_dir =
        |d: &Path| d.join("config.json").is_file() && d.join("model.safetensors").is_file();
    let direct = Path::new(name);
    if is_model_dir(direct) {
        return Ok(direct.to_path_buf());
    }
    if GPT2_NAMES.contains(&name) {
        if let Some(cache) = hf_hub_cache() {
            for repo in [
                format!("models--openai-community--{name}"),
                format!("models--{name}"),
            ] {
                let snapshots = cache.join(repo).join("snapshots");
                if let Ok(entries) = std::fs::read_dir(&snapshots) {
                    let mut dirs: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|d| is_model_dir(d))
                        .collect();
                    dirs.sort();
                    if let Some(d) = dirs.pop() {
                        return Ok(d);
                    }
                }
            }
        }
        bail!(
            "GPT-2 weights '{name}' not found: no ./{name}/ with config.json + model.safetensors and none in the Hugging Face cache ({}); \
             download them there (e.g. `huggingface-cli download openai-community/{name} config.json model.safetensors`) or pass a model directory",
            hf_hub_cache().map(|p| p.display().to_string()).unwrap_or_else(|| "$HF_HOME/hub".into())
        );
    }
    bail!("'{name}' is neither gpt2/gpt2-medium/gpt2-large/gpt2-xl nor a directory with config.json and model.safetensors");
}

/// Loads GPT-2 weights by name or directory.
pub fn load_pretrained(name: &str) -> Result<Gpt> {
    load_hf_dir(&find_model_dir(name)?)
}

impl Gpt {
    /// Shrinks the context to `block_size` by keeping the first rows of the position embedding
    /// (nanoGPT's `crop_block_size`). No-op if the model's context is not longer.
    pub fn crop_block_size(&mut self, block_size: usize) {
        if block_size >= self.config.block_size || block_size == 0 {
            return;
        }
        let cfg = GptConfig {
            block_size,
            ..self.config.clone()
        };
        let table = ParamTable::new(&cfg);
        let mut params = vec![0.0f32; table.total];
        for (new, old) in table.entries.iter().zip(&self.table.entries) {
            let n = new.len();
            params[new.offset..new.offset + n]
                .copy_from_slice(&self.params[old.offset..old.offset + n]);
        }
        *self = Gpt::from_parts(cfg, table, params);
    }

    /// Sets the dropout used in training mode (fine-tuning pretrained weights).
    pub fn set_dropout(&mut self, dropout: f32) {
        self.config.dropout = dropout;
    }
}

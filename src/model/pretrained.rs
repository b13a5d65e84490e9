//! OpenAI's GPT-2 checkpoints (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from a local directory,
//! the Hugging Face cache, or the Hugging Face hub ([`download_gpt2`], into the cache; see
//! [`crate::hf`]), and `crop_block_size` for fine-tuning on shorter contexts.

use super::gpt::Gpt;
use super::params::ParamTable;
use super::weights::load_hf_dir;
use crate::config::GptConfig;
use crate::hf::{find_snapshot, Hub};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

pub const GPT2_NAMES: [&str; 4] = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

/// The files of a model directory.
const MODEL_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// Where the weights named `name` are: `name` itself if it is a model directory, else a snapshot
/// of `openai-community/<name>` or `<name>` in the Hugging Face cache.
pub fn find_model_dir(name: &str) -> Result<PathBuf> {
    let direct = Path::new(name);
    if MODEL_FILES.iter().all(|f| direct.join(f).is_file()) {
        return Ok(direct.to_path_buf());
    }
    if GPT2_NAMES.contains(&name) {
        let cache = Hub::from_env().cache;
        if let Some(d) = cache
            .as_deref()
            .and_then(|cache| find_in_cache(cache, name))
        {
            return Ok(d);
        }
        bail!(
            "GPT-2 weights '{name}' not found: no ./{name}/ with config.json + model.safetensors and none in the Hugging Face cache ({}); \
             download them there (e.g. `huggingface-cli download openai-community/{name} config.json model.safetensors`) or pass a model directory",
            cache.map(|p| p.display().to_string()).unwrap_or_else(|| "$HF_HOME/hub".into())
        );
    }
    bail!("'{name}' is neither gpt2/gpt2-medium/gpt2-large/gpt2-xl nor a directory with config.json and model.safetensors");
}

/// A complete snapshot (config.json + model.safetensors) of `openai-community/<name>` or
/// `<name>` in the Hugging Face hub cache directory `cache`.
pub fn find_in_cache(cache: &Path, name: &str) -> Option<PathBuf> {
    [format!("openai-community/{name}"), name.to_string()]
        .iter()
        .find_map(|repo| find_snapshot(cache, repo, &MODEL_FILES))
}

/// Downloads `config.json` and `model.safetensors` of `openai-community/<name>` (one of
/// [`GPT2_NAMES`]) from `hub` into its cache ([`Hub::download`]) and returns the snapshot
/// directory, which [`find_in_cache`] (and so [`find_model_dir`]) then finds.
///
/// A complete snapshot already there is returned without touching the network. `config.json`
/// comes first, in one quick request: an unreachable hub is reported at once rather than after
/// the weights' retries, and a snapshot is complete only once the weights are in it too.
pub fn download_gpt2(name: &str, hub: &Hub) -> Result<PathBuf> {
    if !GPT2_NAMES.contains(&name) {
        bail!(
            "'{name}' is not one of {}: only OpenAI's GPT-2 checkpoints are downloaded",
            GPT2_NAMES.join(", ")
        );
    }
    let cache = hub.cache_dir()?;
    if let Some(d) = find_in_cache(cache, name) {
        return Ok(d);
    }
    let repo = format!("openai-community/{name}");
    let hint = format!(
        "to get the weights without this command, put config.json and model.safetensors of {repo} into ./{name}/ \
         (or into the Hugging Face cache: `huggingface-cli download {repo} config.json model.safetensors`), \
         or pass --init_from=DIR with a GPT-2 model directory"
    );
    let config = hub.download(&repo, "config.json", &hint)?;
    let json =
        std::fs::read(&config).map_err(|e| anyhow!("cannot read {}: {e}", config.display()))?;
    if serde_json::from_slice::<serde_json::Value>(&json).is_err() {
        // Unlinked, so that the snapshot is never taken for a complete one.
        let _ = std::fs::remove_file(&config);
        bail!(
            "config.json of {repo} from {} is not JSON (is that a Hugging Face hub? check HF_ENDPOINT); {hint}",
            hub.endpoint
        );
    }
    eprintln!("downloading {repo} into {}", cache.display());
    hub.download(&repo, "model.safetensors", &hint)?;
    find_in_cache(cache, name).with_context(|| {
        format!("{repo} changed on the hub during the download, so its files are from two commits; run the command again")
    })
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

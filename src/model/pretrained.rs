//! OpenAI's GPT-2 checkpoints (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from a local directory,
//! the Hugging Face cache, or the Hugging Face hub ([`download_gpt2`], into the cache), and
//! `crop_block_size` for fine-tuning on shorter contexts.

use super::gpt::Gpt;
use super::params::ParamTable;
use super::weights::load_hf_dir;
use crate::atomic_file::write_atomic;
use crate::config::GptConfig;
use crate::download::download;
use anyhow::{bail, Context, Result};
use std::io::Read;
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
    let direct = Path::new(name);
    if is_model_dir(direct) {
        return Ok(direct.to_path_buf());
    }
    if GPT2_NAMES.contains(&name) {
        if let Some(d) = hf_hub_cache().and_then(|cache| find_in_cache(&cache, name)) {
            return Ok(d);
        }
        bail!(
            "GPT-2 weights '{name}' not found: no ./{name}/ with config.json + model.safetensors and none in the Hugging Face cache ({}); \
             download them there (e.g. `huggingface-cli download openai-community/{name} config.json model.safetensors`) or pass a model directory",
            hf_hub_cache().map(|p| p.display().to_string()).unwrap_or_else(|| "$HF_HOME/hub".into())
        );
    }
    bail!("'{name}' is neither gpt2/gpt2-medium/gpt2-large/gpt2-xl nor a directory with config.json and model.safetensors");
}

fn is_model_dir(d: &Path) -> bool {
    d.join("config.json").is_file() && d.join("model.safetensors").is_file()
}

/// A complete snapshot (config.json + model.safetensors) of `openai-community/<name>` or
/// `<name>` in the Hugging Face hub cache directory `cache`.
pub fn find_in_cache(cache: &Path, name: &str) -> Option<PathBuf> {
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
                return Some(d);
            }
        }
    }
    None
}

/// The Hugging Face hub's address: `$HF_ENDPOINT` (as the hub's own tools read it, e.g. a
/// mirror), else `https://huggingface.co`.
pub fn hf_endpoint() -> String {
    match std::env::var("HF_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => v.trim().trim_end_matches('/').to_string(),
        _ => "https://huggingface.co".to_string(),
    }
}

/// True when `$HF_HUB_OFFLINE` asks the hub's tools not to use the network.
pub fn hf_offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref().map(str::trim),
        Ok("1") | Ok("true") | Ok("True") | Ok("TRUE") | Ok("yes") | Ok("on")
    )
}

/// Where [`download_gpt2`] puts `openai-community/<name>` in the cache `cache`:
/// `models--openai-community--<name>/snapshots/main/` (with `refs/main` naming that snapshot,
/// so the hub's own tools find it too).
pub fn cache_snapshot_dir(cache: &Path, name: &str) -> PathBuf {
    cache
        .join(format!("models--openai-community--{name}"))
        .join("snapshots")
        .join("main")
}

/// What to do without a network, for error messages.
fn offline_hint(name: &str, cache: &Path) -> String {
    format!(
        "to get the weights without this command, put config.json and model.safetensors of openai-community/{name} \
         into ./{name}/ or {}/, or pass --init_from=DIR with a GPT-2 model directory",
        cache_snapshot_dir(cache, name).display()
    )
}

/// Downloads `config.json` and `model.safetensors` of `openai-community/<name>` (one of
/// [`GPT2_NAMES`]) from the hub at `base_url` (see [`hf_endpoint`]), using the hub's URL layout
/// `{base_url}/openai-community/<name>/resolve/main/<file>`, into the Hugging Face cache
/// directory `cache` ([`cache_snapshot_dir`]); returns the snapshot directory, which
/// [`find_in_cache`] (and so [`find_model_dir`]) then finds.
///
/// A complete snapshot already there is returned without touching the network. The weights come
/// through [`crate::download::download`]: progress bar on stderr, retries, resuming a partial
/// `model.safetensors.part`. `config.json` is written last, so an interrupted download never
/// looks complete. An unreachable hub fails at once with a message saying how to get the files.
pub fn download_gpt2(name: &str, base_url: &str, cache: &Path) -> Result<PathBuf> {
    if !GPT2_NAMES.contains(&name) {
        bail!(
            "'{name}' is not one of {}: only OpenAI's GPT-2 checkpoints are downloaded",
            GPT2_NAMES.join(", ")
        );
    }
    if let Some(d) = find_in_cache(cache, name) {
        return Ok(d);
    }
    let base = base_url.trim_end_matches('/');
    let url = |file: &str| format!("{base}/openai-community/{name}/resolve/main/{file}");
    let dir = cache_snapshot_dir(cache, name);
    let hint = offline_hint(name, cache);
    // config.json first, in one quick request: an unreachable hub is reported at once rather
    // than after the weights' retries.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(15))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let config_url = url("config.json");
    let config = match agent.get(&config_url).call() {
        Ok(resp) => {
            let mut bytes = Vec::new();
            match resp.into_reader().read_to_end(&mut bytes) {
                Ok(_) => Some(bytes),
                Err(_) => None,
            }
        }
        Err(ureq::Error::Transport(t))
            if matches!(
                t.kind(),
                ureq::ErrorKind::Dns
                    | ureq::ErrorKind::ConnectionFailed
                    | ureq::ErrorKind::ProxyConnect
            ) =>
        {
            bail!("cannot reach {base} to download openai-community/{name} (offline? {t}); {hint}");
        }
        Err(ureq::Error::Status(code, r)) if (400..500).contains(&code) => {
            bail!(
                "cannot download {config_url}: HTTP {code} {}; {hint}",
                r.status_text()
            );
        }
        // Other trouble (a 5xx, a dropped connection): the downloader below retries.
        Err(_) => None,
    };
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create {} (is the Hugging Face cache writable? set HF_HUB_CACHE to another directory)",
            dir.display()
        )
    })?;
    let config_path = dir.join("config.json");
    let config = match config {
        Some(bytes) => bytes,
        None => {
            let tmp = dir.join("config.json.download");
            download(&config_url, &tmp, &hint)?;
            let bytes =
                std::fs::read(&tmp).with_context(|| format!("cannot read {}", tmp.display()))?;
            let _ = std::fs::remove_file(&tmp);
            bytes
        }
    };
    if serde_json::from_slice::<serde_json::Value>(&config).is_err() {
        bail!("{config_url} did not return a JSON config (is {base} a Hugging Face hub? check HF_ENDPOINT); {hint}");
    }
    eprintln!("downloading openai-community/{name} into {}", dir.display());
    download(
        &url("model.safetensors"),
        &dir.join("model.safetensors"),
        &hint,
    )?;
    write_atomic(&config_path, &config)?;
    let refs = cache
        .join(format!("models--openai-community--{name}"))
        .join("refs");
    // Only for the hub's own tools; this crate finds the snapshot without it.
    if std::fs::create_dir_all(&refs).is_ok() {
        let _ = write_atomic(&refs.join("main"), b"main");
    }
    Ok(dir)
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

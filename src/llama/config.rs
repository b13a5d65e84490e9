//! The shape of a Llama-2-family model, with llama2.c's names (`run.c`'s `Config`), and reading
//! it from a Hugging Face `config.json`.
//!
//! llama2.c's files cannot say `norm_eps` or `rope_theta` (run.c has 1e-5 and 10000 built in), so
//! a model read from one gets those; a Hugging Face config says both.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The epsilon and RoPE base that llama2.c's `run.c` has built in.
pub const LLAMA2C_NORM_EPS: f32 = 1e-5;
pub const LLAMA2C_ROPE_THETA: f32 = 10000.0;

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Width of the residual stream (HF `hidden_size`).
    pub dim: usize,
    /// Width of the SwiGLU MLP (HF `intermediate_size`).
    pub hidden_dim: usize,
    pub n_layers: usize,
    /// Query heads; each has `dim / n_heads` dimensions.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention: `n_heads / n_kv_heads` query heads share one).
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained for (HF `max_position_embeddings`).
    pub seq_len: usize,
    /// RMSNorm's epsilon (HF `rms_norm_eps`).
    pub norm_eps: f32,
    /// RoPE's base: pair k of a head turns by `pos * rope_theta^(-2k/head_dim)`.
    pub rope_theta: f32,
    /// The classifier is the token embedding (HF `tie_word_embeddings`).
    pub shared_classifier: bool,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_kv_heads
    }

    /// How many parameters the model has (the classifier counted once when shared), or `None`
    /// past `usize` (a corrupt header).
    pub fn param_count(&self) -> Option<usize> {
        let (d, h) = (self.dim, self.hidden_dim);
        let kv = d.checked_div(self.n_heads)?.checked_mul(self.n_kv_heads)?;
        // Two norms, q and o (d x d), k and v (kv x d), gate, up and down (h x d).
        let per_layer = [2 * d, 2 * d.checked_mul(d)?, 2 * kv.checked_mul(d)?]
            .into_iter()
            .try_fold(3 * h.checked_mul(d)?, |a, b| a.checked_add(b))?;
        let embedding = self.vocab_size.checked_mul(d)?;
        let classifier = if self.shared_classifier { 0 } else { embedding };
        self.n_layers
            .checked_mul(per_layer)?
            .checked_add(embedding)?
            .checked_add(classifier)?
            .checked_add(d)
    }

    /// Errors for shapes no Llama has, naming the fields that disagree.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("{name} is 0; every size of a model must be positive");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "n_heads {} is not a multiple of n_kv_heads {} (each key/value head serves a whole group of query heads)",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            bail!(
                "dim {} is not a multiple of n_heads {}",
                self.dim,
                self.n_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head size {} (dim {} / n_heads {}) is odd; RoPE turns dimensions in pairs",
                self.head_dim(),
                self.dim,
                self.n_heads
            );
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            bail!("norm_eps {} must be positive and finite", self.norm_eps);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            bail!("rope_theta {} must be finite and above 1", self.rope_theta);
        }
        Ok(())
    }
}

/// Reads a Hugging Face Llama `config.json` (transformers 4 or 5). Settings that change the
/// computation in ways this crate does not implement are refused by name rather than giving a
/// different model.
pub fn read_hf_config(path: &Path) -> Result<LlamaConfig> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}: is this a Llama model directory?",
            path.display()
        )
    })?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    parse_hf_config(&json).with_context(|| format!("{}", path.display()))
}

/// Whether the `config.json` at `path` says `"model_type": "llama"` (false when unreadable).
pub fn is_llama_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|json| json.get("model_type").and_then(Value::as_str) == Some("llama"))
}

fn parse_hf_config(json: &Value) -> Result<LlamaConfig> {
    match json.get("model_type").and_then(Value::as_str) {
        Some("llama") => {}
        Some(other) => bail!("model_type \"{other}\" is not supported (only \"llama\")"),
        None => bail!("no \"model_type\"; a Llama config says \"llama\""),
    }
    let size = |key: &str| -> Result<usize> {
        json.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .with_context(|| format!("missing or non-integer \"{key}\""))
    };
    let float = |v: &Value, key: &str| -> Result<f32> {
        v.as_f64()
            .map(|x| x as f32)
            .with_context(|| format!("\"{key}\" is {v}, not a number"))
    };
    for (key, want) in [("hidden_act", "silu")] {
        if let Some(v) = json.get(key).filter(|v| v.as_str() != Some(want)) {
            bail!("{key} {v} is not supported (only \"{want}\")");
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if json.get(key) == Some(&Value::Bool(true)) {
            bail!("{key} true is not supported (Llama's projections have no bias)");
        }
    }
    let dim = size("hidden_size")?;
    let n_heads = size("num_attention_heads")?;
    // transformers' default: no grouping.
    let n_kv_heads = match json.get("num_key_value_heads").filter(|v| !v.is_null()) {
        Some(_) => size("num_key_value_heads")?,
        None => n_heads,
    };
    if let Some(hd) = json.get("head_dim").filter(|v| !v.is_null()) {
        if hd.as_u64() != Some((dim / n_heads.max(1)) as u64) {
            bail!("head_dim {hd} is not supported (only hidden_size / num_attention_heads)");
        }
    }
    let rope_theta = read_rope_theta(json, &float)?;
    let cfg = LlamaConfig {
        dim,
        hidden_dim: size("intermediate_size")?,
        n_layers: size("num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        vocab_size: size("vocab_size")?,
        seq_len: size("max_position_embeddings")?,
        norm_eps: match json.get("rms_norm_eps") {
            Some(v) => float(v, "rms_norm_eps")?,
            None => bail!("missing \"rms_norm_eps\""),
        },
        rope_theta,
        // transformers' LlamaConfig default.
        shared_classifier: json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    cfg.validate().context("bad model shape")?;
    Ok(cfg)
}

/// RoPE's base from transformers 5's `rope_parameters` or transformers 4's top-level
/// `rope_theta` (+ `rope_scaling`); only plain RoPE ("default") is implemented.
fn read_rope_theta(json: &Value, float: &dyn Fn(&Value, &str) -> Result<f32>) -> Result<f32> {
    let mut thetas = Vec::new();
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(params) = json.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            bail!("{key} with rope_type \"{kind}\" is not supported (only \"default\")");
        }
        if let Some(t) = params.get("rope_theta") {
            thetas.push(float(t, "rope_theta")?);
        }
    }
    if let Some(t) = json.get("rope_theta") {
        thetas.push(float(t, "rope_theta")?);
    }
    match thetas.split_first() {
        // transformers' default base.
        None => Ok(LLAMA2C_ROPE_THETA),
        Some((&first, rest)) => {
            if rest.iter().any(|&t| t != first) {
                bail!("rope_theta is given twice with different values ({thetas:?}); which one is meant?");
            }
            Ok(first)
        }
    }
}

/// transformers' LlamaConfig for `cfg`. RoPE's base is written both ways (transformers 5's
/// `rope_parameters` and transformers 4's top-level `rope_theta`), so either version reads it.
pub fn hf_config_json(cfg: &LlamaConfig) -> String {
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
        "head_dim": cfg.head_dim(),
        "hidden_act": "silu",
        "hidden_size": cfg.dim,
        "initializer_range": 0.02,
        "intermediate_size": cfg.hidden_dim,
        "max_position_embeddings": cfg.seq_len,
        "mlp_bias": false,
        "num_attention_heads": cfg.n_heads,
        "num_hidden_layers": cfg.n_layers,
        "num_key_value_heads": cfg.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.shared_classifier,
        "use_cache": true,
        "vocab_size": cfg.vocab_size,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 192,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "tie_word_embeddings": false,
        })
    }

    fn err(json: &Value) -> String {
        format!("{:#}", parse_hf_config(json).unwrap_err())
    }

    #[test]
    fn llama_config_reads_both_rope_spellings() {
        let new = parse_hf_config(&tiny()).unwrap();
        assert_eq!((new.dim, new.n_kv_heads, new.kv_dim()), (64, 2, 32));
        let mut old = tiny();
        old.as_object_mut().unwrap().remove("rope_parameters");
        old["rope_theta"] = 500000.0.into();
        assert_eq!(parse_hf_config(&old).unwrap().rope_theta, 500000.0);
        // What we write reads back as the same shape.
        let written: Value = serde_json::from_str(&hf_config_json(&new)).unwrap();
        assert_eq!(parse_hf_config(&written).unwrap(), new);
    }

    #[test]
    fn llama_config_refuses_what_it_cannot_run_by_name() {
        let with = |key: &str, v: Value| {
            let mut j = tiny();
            j[key] = v;
            err(&j)
        };
        assert!(with("model_type", "mistral".into()).contains("\"mistral\""));
        assert!(with("attention_bias", true.into()).contains("attention_bias"));
        assert!(with("mlp_bias", true.into()).contains("mlp_bias"));
        assert!(with("hidden_act", "gelu".into()).contains("hidden_act"));
        let scaled = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        assert!(with("rope_scaling", scaled).contains("\"llama3\""));
        let linear = serde_json::json!({"type": "linear", "factor": 2.0});
        assert!(with("rope_parameters", linear).contains("\"linear\""));
        assert!(with("num_key_value_heads", 3.into()).contains("n_kv_heads 3"));
        assert!(with("head_dim", 32.into()).contains("head_dim"));
        assert!(with("rope_theta", 500.0.into()).contains("twice"));
        assert!(with("num_attention_heads", 64.into()).contains("odd"));
    }
}

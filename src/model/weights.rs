//! GPT-2 weights in Hugging Face's layout: a directory with `config.json` and `model.safetensors`
//! (keys with or without the `transformer.` prefix, Conv1D weights (in, out), lm_head tied to wte).

use super::gpt::Gpt;
use super::params::ParamTable;
use crate::atomic_file::{tmp_path, write_atomic};
use crate::config::GptConfig;
use crate::llama::config::is_llama_config;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// The parts of a Hugging Face GPT-2 `config.json` that shape the model.
pub fn read_hf_config(dir: &Path) -> Result<GptConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is this a GPT-2 model directory?",
            path.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let get = |key: &str| -> Result<usize> {
        json.get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .with_context(|| format!("{}: missing or non-integer \"{key}\"", path.display()))
    };
    if let Some(act) = json.get("activation_function").and_then(|v| v.as_str()) {
        if act != "gelu_new" {
            bail!(
                "{}: activation_function \"{act}\" is not supported (only GPT-2's gelu_new)",
                path.display()
            );
        }
    }
    refuse_unsupported_fields(&json, &path)?;
    let cfg = GptConfig {
        n_layer: get("n_layer")?,
        n_head: get("n_head")?,
        n_embd: get("n_embd")?,
        block_size: get("n_positions")?,
        vocab_size: get("vocab_size")?,
        pad_vocab: true,
        bias: true,
        dropout: 0.0,
        arch: Default::default(),
    };
    cfg.validate()
        .with_context(|| format!("{}: bad model shape", path.display()))?;
    Ok(cfg)
}

/// Fields of GPT-2's config.json that change the computation in ways this model does not
/// implement: refused by name rather than silently giving a different model.
fn refuse_unsupported_fields(json: &serde_json::Value, path: &Path) -> Result<()> {
    let p = path.display();
    if let Some(t) = json.get("model_type") {
        if t.as_str() != Some("gpt2") {
            bail!("{p}: model_type {t} is not supported (only \"gpt2\")");
        }
    }
    if let Some(eps) = json.get("layer_norm_epsilon") {
        // The LayerNorm kernels have GPT-2's epsilon built in (kernels/cpu/layernorm.rs).
        let ok = eps
            .as_f64()
            .is_some_and(|e| (e - 1e-5).abs() <= 1e-5 * 1e-6);
        if !ok {
            bail!("{p}: layer_norm_epsilon {eps} is not supported (only GPT-2's 1e-5)");
        }
    }
    if let Some(inner) = json.get("n_inner").filter(|v| !v.is_null()) {
        let embd = json.get("n_embd").and_then(|v| v.as_u64());
        if inner.as_u64().is_none() || inner.as_u64().zip(embd).is_some_and(|(i, e)| i != 4 * e) {
            bail!("{p}: n_inner {inner} is not supported (only null or 4 * n_embd)");
        }
    }
    if json.get("scale_attn_by_inverse_layer_idx") == Some(&serde_json::Value::Bool(true)) {
        bail!("{p}: scale_attn_by_inverse_layer_idx true is not supported (only false, as GPT-2)");
    }
    if json.get("scale_attn_weights") == Some(&serde_json::Value::Bool(false)) {
        bail!("{p}: scale_attn_weights false is not supported (only true, as GPT-2)");
    }
    Ok(())
}

/// Loads a model from a Hugging Face GPT-2 directory.
pub fn load_hf_dir(dir: &Path) -> Result<Gpt> {
    if is_llama_config(&dir.join("config.json")) {
        return Ok(Gpt::from_llama(crate::llama::load_hf_dir(dir)?));
    }
    let cfg = read_hf_config(dir)?;
    load_model_file(&dir.join("model.safetensors"), cfg)
}

/// Loads the parameters of a model shaped `cfg` from a GPT-2-layout safetensors file. Tensors
/// the model does not have (biases of a bias-free model, `attn.bias` masks, `lm_head`) are
/// ignored; any other tensor is an error, since it means the file holds a different model (more
/// layers than `cfg` says, say) and loading part of it would silently give wrong outputs.
pub fn load_model_file(path: &Path, cfg: GptConfig) -> Result<Gpt> {
    cfg.validate()?;
    if cfg.llama().is_some() {
        // A Llama's file is Hugging Face's LlamaForCausalLM directory, config.json beside it.
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut model = Gpt::from_llama(crate::llama::load_hf_dir(dir)?);
        if model.config.llama_config() != cfg.llama_config() {
            bail!(
                "{}: config.json describes another model than the training state does; the checkpoint was changed by hand",
                dir.display()
            );
        }
        model.config.dropout = cfg.dropout;
        return Ok(model);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "{} is not a valid safetensors file (truncated?)",
            path.display()
        )
    })?;
    // Checked before the table is built: a config claiming more than the file holds would
    // otherwise allocate (or overflow counting) a model that size.
    if floats_needed(&cfg).is_none_or(|n| n > bytes.len() / 4) {
        bail!("{}: the model's shape needs more parameters than the file's {} bytes hold; does config.json match it?", path.display(), bytes.len());
    }
    let table = ParamTable::new(&cfg);
    let mut params = vec![0.0f32; table.total];
    for e in &table.entries {
        let prefixed = format!("transformer.{}", e.name);
        let view = st
            .tensor(&prefixed)
            .or_else(|_| st.tensor(&e.name))
            .with_context(|| format!("{}: tensor \"{}\" is missing", path.display(), e.name))?;
        // wte is stored with the real vocab; our table may have padding rows (left at zero).
        let mut expect = e.shape.clone();
        if e.name == "wte.weight" {
            expect[0] = cfg.vocab_size;
        }
        let n = expect.iter().product::<usize>();
        copy_f32_tensor(
            &view,
            &e.name,
            &expect,
            &mut params[e.offset..e.offset + n],
            path,
        )?;
    }
    refuse_unused_tensors(&st, &cfg, path)?;
    Ok(Gpt::from_parts(cfg, table, params))
}

/// Copies a little-endian f32 safetensors tensor into `dst`, or says why it cannot: not F32, or
/// not the shape `expect` that config.json gives it (`name` as the model calls it).
pub(crate) fn copy_f32_tensor(
    view: &safetensors::tensor::TensorView,
    name: &str,
    expect: &[usize],
    dst: &mut [f32],
    path: &Path,
) -> Result<()> {
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor \"{name}\" is {:?}; only F32 is supported",
            path.display(),
            view.dtype()
        );
    }
    if view.shape() != expect {
        bail!(
            "{}: tensor \"{name}\" has shape {:?}, but config.json makes it {expect:?}",
            path.display(),
            view.shape()
        );
    }
    for (d, b) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Ok(())
}

/// Errors naming the tensors in `st` that a model shaped `cfg` does not use.
fn refuse_unused_tensors(st: &SafeTensors, cfg: &GptConfig, path: &Path) -> Result<()> {
    // A bias-free model is saved with zero biases (save_hf_dir), so the full table's names are
    // all known ones.
    let known = ParamTable::new(&GptConfig {
        bias: true,
        ..cfg.clone()
    });
    let known: std::collections::HashSet<&str> =
        known.entries.iter().map(|e| e.name.as_str()).collect();
    let mut unused: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| {
            let bare = n.strip_prefix("transformer.").unwrap_or(n);
            // Causal masks and the tied lm_head hold nothing the model needs.
            let ignorable = bare.ends_with(".attn.bias")
                || bare.ends_with(".attn.masked_bias")
                || bare == "lm_head.weight";
            !ignorable && !known.contains(bare)
        })
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort();
    let shown = unused
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = if unused.len() > 5 {
        format!(" and {} more", unused.len() - 5)
    } else {
        String::new()
    };
    bail!(
        "{}: {} tensor(s) that a {}-layer model does not use: {shown}{more}; \
         does config.json's n_layer match the weights?",
        path.display(),
        unused.len(),
        cfg.n_layer
    )
}

/// Writes `config.json` + `model.safetensors` as transformers' `save_pretrained` does
/// (`transformer.` prefix, lm_head tied and not stored), each to a temp file then renamed.
pub fn save_hf_dir(model: &Gpt, dir: &Path) -> Result<()> {
    if let Some(llama) = model.to_llama() {
        return crate::llama::save_hf_dir(&llama, dir);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cfg = &model.config;
    // transformers' GPT-2 always has biases: a bias-free model is the same model with zero biases.
    let full = ParamTable::new(&GptConfig {
        bias: true,
        ..cfg.clone()
    });
    let zeros = vec![0.0f32; 4 * cfg.n_embd];
    let mut tensors = Vec::with_capacity(full.entries.len());
    for e in &full.entries {
        let mut shape = e.shape.clone();
        if e.name == "wte.weight" {
            shape[0] = cfg.vocab_size;
        }
        let n: usize = shape.iter().product();
        let data = match model.table.get(&e.name) {
            Some(ours) => f32_le_bytes(&model.params[ours.offset..ours.offset + n]),
            None => f32_le_bytes(&zeros[..n]),
        };
        tensors.push((
            format!("transformer.{}", e.name),
            safetensors::tensor::TensorView::new(Dtype::F32, shape, data)?,
        ));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st_path = dir.join("model.safetensors");
    let tmp = tmp_path(&st_path);
    safetensors::serialize_to_file(tensors, Some(metadata), &tmp)
        .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))?;
    std::fs::rename(&tmp, &st_path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), st_path.display()))?;
    write_atomic(&dir.join("config.json"), hf_config_json(cfg).as_bytes())
}

/// transformers' GPT2Config for this shape.
pub fn hf_config_json(cfg: &GptConfig) -> String {
    let json = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "vocab_size": cfg.vocab_size,
        "n_inner": null,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "attn_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "resid_pdrop": cfg.dropout,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
}

/// The bytes of an f32 slice, little-endian (the only byte order safetensors uses).
#[cfg(target_endian = "little")]
pub fn f32_le_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; alignment of u8 is 1.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

/// Floats that every tensor of a `cfg`-shaped model takes in a file (wte unpadded, biases not
/// counted: a lower bound), or `None` past `usize`.
fn floats_needed(cfg: &GptConfig) -> Option<usize> {
    let c = cfg.n_embd;
    let per_layer = c.checked_mul(c)?.checked_mul(12)?;
    cfg.n_layer
        .checked_mul(per_layer)?
        .checked_add(cfg.block_size.checked_mul(c)?)?
        .checked_add(cfg.vocab_size.checked_mul(c)?)
}

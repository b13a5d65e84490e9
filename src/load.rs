//! Where a model comes from, for `train`, `sample`, `repetition` and `eval` alike, with one set of
//! error messages. The sources:
//! - `scratch` (training only): a new model of the configured shape, its vocabulary the
//!   dataset's `meta.json`, else GPT-2's padded 50304.
//! - `resume`: the run in `out_dir`. Training resumes from `out_dir/latest` (model, optimizer
//!   moments, iteration); sampling takes `out_dir/best`, else `latest`, with the tokenizer of the
//!   dataset the run trained on (`data_dir/dataset` from the run's saved training config, or
//!   `--data_dir=DIR` when the data moved): its `meta.json`/`meta.pkl` characters, else GPT-2
//!   BPE. If that dataset directory is gone, a model with GPT-2's vocabulary size still gets
//!   GPT-2 BPE; any other is an error saying where the vocabulary was expected.
//! - `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`: `./NAME/`, the Hugging Face cache, or a
//!   download into the cache (see [`crate::model::pretrained::download_gpt2`]; `HF_ENDPOINT`
//!   picks a mirror, `HF_HUB_OFFLINE=1` forbids the download).
//! - a directory: any Hugging Face GPT-2 directory (`config.json` + `model.safetensors`, GPT-2
//!   BPE), a checkpoint directory of this crate (it has `train_state.json`: tokenizer as for
//!   `resume`), or a run's out_dir (same as `resume` with that out_dir).
//! - a Llama: a llama2.c model file (`.bin`, v0/v1/v2, told apart by its header) or a Hugging
//!   Face Llama directory (`"model_type": "llama"`), with the sentencepiece tokenizer of
//!   `--tokenizer` (llama2.c's `tokenizer.bin`, a `tokenizer.model`, or a directory holding
//!   one), else the `tokenizer.model` or `tokenizer.bin` beside the model.
//!
//! The checkpoint format itself is [`crate::checkpoint`].

use crate::checkpoint::{self, TrainState, STATE_FILE};
use crate::config::TrainConfig;
use crate::data::dataset;
use crate::engine::OptimizerState;
use crate::hf::Hub;
use crate::llama::config::is_llama_config;
use crate::llama::tokenizer::LlamaTokenizer;
use crate::llama::{load_hf_dir as load_llama_dir, read_llama2c, Llama, Llama2cFormat};
use crate::model::pretrained::{download_gpt2, find_model_dir, GPT2_NAMES};
use crate::model::weights::load_hf_dir;
use crate::model::Gpt;
use crate::tokenizer::{Tokenizer, GPT2_VOCAB_SIZE};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// nanoGPT's vocabulary for GPT-2 BPE data trained from scratch: 50257 padded to 50304.
const GPT2_PADDED_VOCAB: usize = 50304;

crate::knobs! {
    /// Where `sample` and `repetition` take the model from (see the module docs).
    #[derive(Clone, Debug)]
    pub struct ModelSource {
        {
            /// resume (the checkpoint in --out_dir), gpt2, gpt2-medium, gpt2-large, gpt2-xl
            /// (./NAME/, the Hugging Face cache, or downloaded into it), a directory with
            /// config.json + model.safetensors (GPT-2 or Llama), or a llama2.c model .bin
            init_from: String = "resume".into(),
            /// The training run's directory, for --init_from=resume [default: out]
            out_dir: Option<PathBuf> = None,
            /// Where the run's dataset directory is now (DATA_DIR/<dataset>/ with meta.json), if
            /// it moved [default: the data_dir the run trained with]
            data_dir: Option<PathBuf> = None,
            /// A Llama's tokenizer: llama2.c's tokenizer.bin, sentencepiece's tokenizer.model,
            /// or a directory with one [default: the one beside the model]
            tokenizer: Option<PathBuf> = None,
        }
    }
}

/// A loaded model with its tokenizer.
pub struct LoadedModel {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    /// What was loaded, for reports ("gpt2", "out/best", ...).
    pub name: String,
    /// The Q8_0 group size of a llama2.c version 2 file (its weights were int8; runq.c computes
    /// in int8 with that group), else None.
    pub int8_group: Option<usize>,
}

/// Where training starts: a model, and the optimizer state when resuming.
pub struct TrainStart {
    pub model: Gpt,
    pub opt: Option<OptimizerState>,
    /// The next iteration to run.
    pub iter_num: usize,
    pub best_val_loss: f32,
    /// Ranks of the run that saved the checkpoint resumed from (1 otherwise).
    pub world_size: usize,
}

/// The error for an `init_from` that names no source; `accepted` lists what the caller takes
/// besides the GPT-2 names and directories.
fn unknown_source(init: &str, accepted: &[&str]) -> anyhow::Error {
    anyhow::anyhow!(
        "init_from={init}: not {}, {}, nor a directory: pass one of those",
        accepted.join(", "),
        GPT2_NAMES.join(", ")
    )
}

/// The model training starts from, as `cfg.init_from` says. Notes (a download) go to `log`.
pub fn for_training(cfg: &TrainConfig, log: &mut dyn Write) -> Result<TrainStart> {
    let fresh = |model: Gpt| TrainStart {
        opt: None,
        model,
        iter_num: 0,
        best_val_loss: f32::INFINITY,
        world_size: 1,
    };
    match cfg.init_from.as_str() {
        "scratch" => {
            let vocab = if cfg.vocab_size > 0 {
                cfg.vocab_size
            } else {
                dataset_vocab(&cfg.dataset_dir(), log)?
            };
            Ok(fresh(Gpt::new(cfg.model_config(vocab, true), cfg.seed)?))
        }
        "resume" => {
            let latest = cfg.out_dir().join("latest");
            let (mut model, opt, state) = checkpoint::load(&latest)?;
            require_dataset_vocab(
                cfg,
                model.config.vocab_size,
                state.train.vocab_size,
                &latest.display().to_string(),
                &format!(
                    "resume with the dataset the run trained on (--dataset={})",
                    state.train.dataset
                ),
            )?;
            model.set_dropout(cfg.dropout);
            Ok(TrainStart {
                model,
                opt: Some(opt),
                iter_num: state.iter_num,
                best_val_loss: state.best_val_loss,
                world_size: state.world_size,
            })
        }
        name => {
            let dir = if GPT2_NAMES.contains(&name) {
                gpt2_dir(name, log)?
            } else if Path::new(name).is_dir() {
                find_model_dir(name)?
            } else {
                return Err(unknown_source(name, &["scratch", "resume"]));
            };
            let mut model = load_hf_dir(&dir)?;
            require_dataset_vocab(
                cfg,
                model.config.vocab_size,
                0,
                name,
                "fine-tune it on a dataset in its own vocabulary (GPT-2 BPE: prepare shakespeare or openwebtext), or train from scratch with --init_from=scratch",
            )?;
            model.crop_block_size(cfg.block_size);
            model.set_dropout(cfg.dropout);
            Ok(fresh(model))
        }
    }
}

/// The vocabulary to train on from scratch: meta.json's (character data) or the dataset's
/// sentencepiece tokenizer's, else GPT-2's padded 50304, with a note to `log` as nanoGPT
/// prints one.
fn dataset_vocab(data_dir: &Path, log: &mut dyn Write) -> Result<usize> {
    if let Some((v, _)) = dataset_vocab_size(data_dir)? {
        return Ok(v);
    }
    writeln!(
        log,
        "note: no meta.json in {}: assuming GPT-2 BPE tokens, vocab_size {GPT2_PADDED_VOCAB} (50257 padded, as nanoGPT does)",
        data_dir.display()
    )?;
    Ok(GPT2_PADDED_VOCAB)
}

/// The size of a dataset's vocabulary (its meta.json or meta.pkl, or its tokenizer.model or
/// tokenizer.bin) and what it is, or None for GPT-2 BPE data.
fn dataset_vocab_size(data_dir: &Path) -> Result<Option<(usize, &'static str)>> {
    if let Some(chars) = dataset::vocabulary(data_dir)? {
        return Ok(Some((chars.vocab_size(), "characters (meta.json)")));
    }
    Ok(dataset::vocab_size(data_dir)?.map(|v| (v, "tokens (its sentencepiece tokenizer)")))
}

/// Refuses to train a model (its vocabulary `model_vocab`, from `source`) on a dataset whose
/// tokens mean something else: a character dataset needs exactly its vocabulary (or the
/// `vocab_size` the model was deliberately padded to), GPT-2 BPE data at least GPT-2's. A missing
/// dataset is left to the data loader, which says how to prepare it.
fn require_dataset_vocab(
    cfg: &TrainConfig,
    model_vocab: usize,
    padded_to: usize,
    source: &str,
    fix: &str,
) -> Result<()> {
    let data_dir = cfg.dataset_dir();
    if !data_dir.is_dir() {
        return Ok(());
    }
    match dataset_vocab_size(&data_dir)? {
        Some((v, what)) if v != model_vocab && !(padded_to == model_vocab && v < model_vocab) => bail!(
            "vocabulary mismatch: the model from {source} has {model_vocab} tokens but the dataset {} has {v} {what}: {fix}",
            data_dir.display()
        ),
        None if model_vocab < GPT2_VOCAB_SIZE => bail!(
            "vocabulary mismatch: the model from {source} has {model_vocab} tokens but the dataset {} is GPT-2 BPE ({GPT2_VOCAB_SIZE} tokens, no meta.json): {fix}",
            data_dir.display()
        ),
        _ => Ok(()),
    }
}

/// The model and tokenizer `src` names, for sampling. Notes go to `err`.
pub fn for_sampling(src: &ModelSource, err: &mut dyn Write) -> Result<LoadedModel> {
    let init = src.init_from.trim();
    if init == "resume" {
        let out_dir = src.out_dir.clone().unwrap_or_else(|| PathBuf::from("out"));
        return out_dir_model(&out_dir, src.data_dir.as_deref(), err);
    }
    if let Some(out_dir) = &src.out_dir {
        writeln!(
            err,
            "note: --out_dir={} is not used with --init_from={init} (it is for --init_from=resume)",
            out_dir.display()
        )?;
    }
    if GPT2_NAMES.contains(&init) {
        let dir = gpt2_dir(init, err)?;
        let model = load_hf_dir(&dir)?;
        let tokenizer = gpt2_tokenizer_for(&model, &dir)?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            name: init.to_string(),
            int8_group: None,
        });
    }
    let dir = Path::new(init);
    if dir.is_file() {
        let (llama, format) = read_llama2c(dir)?;
        let beside = dir.parent().unwrap_or(Path::new("."));
        let mut loaded = llama_with_tokenizer(llama, src, beside, dir)?;
        if let Llama2cFormat::V2 { group_size } = format {
            loaded.int8_group = Some(group_size);
        }
        return Ok(loaded);
    }
    if !dir.is_dir() {
        return Err(unknown_source(init, &["resume"]));
    }
    let has = |f: &str| dir.join(f).is_file();
    if has("config.json") && has("model.safetensors") && is_llama_config(&dir.join("config.json")) {
        return llama_with_tokenizer(load_llama_dir(dir)?, src, dir, dir);
    }
    if has("config.json") && has("model.safetensors") {
        let name = dir.display().to_string();
        if has(STATE_FILE) {
            // One of this crate's checkpoint directories: it knows its dataset.
            let (model, state) = checkpoint::read_model(dir)?;
            let tokenizer = checkpoint_tokenizer(&state, &model, src.data_dir.as_deref(), err)?;
            return Ok(LoadedModel {
                model,
                tokenizer,
                name,
                int8_group: None,
            });
        }
        let model = load_hf_dir(dir)?;
        let tokenizer = gpt2_tokenizer_for(&model, dir)?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            name,
            int8_group: None,
        });
    }
    if dir.join("best").is_dir() || dir.join("latest").is_dir() {
        return out_dir_model(dir, src.data_dir.as_deref(), err);
    }
    bail!(
        "--init_from={init}: the directory has no config.json + model.safetensors (nor best/ or latest/ checkpoints): pass a GPT-2 model directory"
    );
}

/// The model `src` names without its tokenizer (for `export`), and what it was.
pub fn model_only(src: &ModelSource) -> Result<(Gpt, String)> {
    let init = src.init_from.trim();
    let path = Path::new(init);
    let model = if init == "resume" {
        let out_dir = src.out_dir.clone().unwrap_or_else(|| PathBuf::from("out"));
        return Ok((trained(&out_dir)?.0, out_dir.display().to_string()));
    } else if GPT2_NAMES.contains(&init) {
        load_hf_dir(&find_model_dir(init)?)?
    } else if path.is_file() {
        Gpt::from_llama(read_llama2c(path)?.0)
    } else if path.join(STATE_FILE).is_file() {
        checkpoint::read_model(path)?.0
    } else if path.join("config.json").is_file() {
        load_hf_dir(path)?
    } else if path.join("best").is_dir() || path.join("latest").is_dir() {
        trained(path)?.0
    } else {
        return Err(unknown_source(init, &["resume", "a llama2.c .bin"]));
    };
    Ok((model, init.to_string()))
}

/// A Llama model and its tokenizer: `--tokenizer`, else a `tokenizer.model` or
/// `tokenizer.bin` in `beside`.
fn llama_with_tokenizer(
    llama: Llama,
    src: &ModelSource,
    beside: &Path,
    model_path: &Path,
) -> Result<LoadedModel> {
    let v = llama.config.vocab_size;
    let tokenizer = llama_tokenizer(src.tokenizer.as_deref(), beside, v)?;
    Ok(LoadedModel {
        model: Gpt::from_llama(llama),
        tokenizer,
        name: model_path.display().to_string(),
        int8_group: None,
    })
}

/// The sentencepiece tokenizer at `path` (a `.model`, llama2.c's `.bin`, or a directory with
/// either), or when `path` is `None`, the one in `beside`; `vocab_size` is the model's.
pub fn llama_tokenizer(path: Option<&Path>, beside: &Path, vocab_size: usize) -> Result<Tokenizer> {
    let find_in = |dir: &Path| {
        ["tokenizer.model", "tokenizer.bin"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
    };
    let file = match path {
        Some(p) if p.is_dir() => find_in(p).with_context(|| {
            format!("--tokenizer={}: the directory has no tokenizer.model or tokenizer.bin", p.display())
        })?,
        Some(p) => p.to_path_buf(),
        None => find_in(beside).with_context(|| {
            format!(
                "a Llama model needs its tokenizer, and {} has no tokenizer.model or tokenizer.bin: pass --tokenizer=FILE (llama2.c's tokenizer.bin or sentencepiece's tokenizer.model)",
                beside.display()
            )
        })?,
    };
    let tok = if file.extension().is_some_and(|e| e == "model") {
        LlamaTokenizer::read_model(&file)?
    } else {
        LlamaTokenizer::read_bin(&file, vocab_size)?
    };
    if tok.vocab_size() != vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model {vocab_size}: pass the tokenizer the model was trained with (--tokenizer=FILE)",
            file.display(),
            tok.vocab_size()
        );
    }
    Ok(Tokenizer::Llama(Arc::new(tok)))
}

/// The trained model of a run: `out_dir/best` (lowest val loss), else `out_dir/latest`.
pub fn trained(out_dir: &Path) -> Result<(Gpt, TrainState)> {
    let Some(dir) = checkpoint::resolve(&out_dir.join("best"))
        .or_else(|| checkpoint::resolve(&out_dir.join("latest")))
    else {
        bail!("no checkpoint in {} (neither best/ nor latest/): train a model first, or check --out_dir", out_dir.display());
    };
    checkpoint::read_model(&dir)
}

/// GPT-2 weights by name: `./NAME/`, the Hugging Face cache, or downloaded into the cache
/// (a note to `err` says so).
fn gpt2_dir(name: &str, err: &mut dyn Write) -> Result<PathBuf> {
    match find_model_dir(name) {
        Ok(dir) => Ok(dir),
        Err(not_found) => {
            let hub = Hub::from_env();
            if hub.offline {
                bail!("{not_found:#} (HF_HUB_OFFLINE is set, so it was not downloaded)");
            }
            writeln!(
                err,
                "{name} is neither in ./{name}/ nor in the Hugging Face cache: downloading it from {}",
                hub.endpoint
            )?;
            download_gpt2(name, &hub)
        }
    }
}

fn out_dir_model(
    out_dir: &Path,
    data_dir: Option<&Path>,
    err: &mut dyn Write,
) -> Result<LoadedModel> {
    if !out_dir.is_dir() {
        bail!(
            "--out_dir={}: no such directory: train a model first (nanogpt train ...), pass the run's --out_dir, or use --init_from=gpt2",
            out_dir.display()
        );
    }
    let (model, state) = trained(out_dir)?;
    let tokenizer = checkpoint_tokenizer(&state, &model, data_dir, err)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        name: out_dir.display().to_string(),
        int8_group: None,
    })
}

/// GPT-2 BPE for a model loaded from a Hugging Face directory, if its vocabulary can be GPT-2's.
fn gpt2_tokenizer_for(model: &Gpt, dir: &Path) -> Result<Tokenizer> {
    let v = model.config.vocab_size;
    if v < GPT2_VOCAB_SIZE {
        bail!(
            "{}: the model's vocabulary has {v} tokens, fewer than GPT-2's {GPT2_VOCAB_SIZE}, and the directory names no dataset: \
             for a model trained here, pass its run directory with --out_dir",
            dir.display()
        );
    }
    Tokenizer::gpt2()
}

/// The tokenizer of the dataset a checkpoint was trained on.
fn checkpoint_tokenizer(
    state: &TrainState,
    model: &Gpt,
    data_dir: Option<&Path>,
    err: &mut dyn Write,
) -> Result<Tokenizer> {
    let dataset_dir = match data_dir {
        Some(d) => d.join(&state.train.dataset),
        None => state.train.dataset_dir(),
    };
    let v = model.config.vocab_size;
    let tokenizer = if dataset_dir.is_dir() {
        dataset::tokenizer(&dataset_dir)?
    } else if v >= GPT2_VOCAB_SIZE {
        writeln!(
            err,
            "note: the run's dataset directory {} is gone; its vocabulary size ({v}) is GPT-2's, so using GPT-2 BPE",
            dataset_dir.display()
        )?;
        Tokenizer::gpt2()?
    } else {
        bail!(
            "the model was trained on {} (a {v}-token vocabulary, not GPT-2's), which is gone: \
             restore that directory (its meta.json holds the vocabulary) or pass --data_dir=DIR where DIR/{}/meta.json is",
            dataset_dir.display(),
            state.train.dataset
        );
    };
    // Characters must map one to one (unless the run padded vocab_size on purpose); GPT-2 BPE
    // only needs to fit, as GPT-2's own 50257 sit in nanoGPT's padded 50304.
    let n = tokenizer.vocab_size();
    let fits = match tokenizer {
        Tokenizer::Char(_) => n == v || (n < v && state.train.vocab_size == v),
        Tokenizer::Gpt2(_) => n <= v,
        Tokenizer::Llama(_) => n == v,
    };
    if !fits {
        bail!(
            "vocabulary mismatch: {}'s vocabulary has {n} tokens but the model {v}: it is not the dataset the model was trained on; pass --data_dir=DIR with the right {}/",
            dataset_dir.display(),
            state.train.dataset
        );
    }
    Ok(tokenizer)
}

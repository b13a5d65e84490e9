//! `nanogpt export`: a model from any source `sample` reads, written in another format: a
//! Hugging Face directory (GPT-2 or Llama, what transformers opens), or for a Llama, llama2.c's
//! legacy v0 file (what its `run.c` reads) or its version 1 file.

use crate::config::knobs::Knob;
use crate::llama::{write_llama2c_v0, write_llama2c_v1};
use crate::load::{self, ModelSource};
use crate::model::weights::save_hf_dir;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The file formats `export` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportFormat {
    /// `config.json` + `model.safetensors`.
    #[default]
    Hf,
    /// llama2.c's legacy v0 `.bin` (run.c's format).
    Llama2c,
    /// llama2.c's version 1 `.bin` (`ak42` header).
    Llama2cV1,
}

impl Knob for ExportFormat {
    fn set_text(&mut self, text: &str) -> std::result::Result<(), String> {
        *self = match text.trim() {
            "hf" => ExportFormat::Hf,
            "llama2c" => ExportFormat::Llama2c,
            "llama2c_v1" => ExportFormat::Llama2cV1,
            _ => return Err("expected hf, llama2c or llama2c_v1".into()),
        };
        Ok(())
    }
    fn show(&self) -> String {
        match self {
            ExportFormat::Hf => "hf",
            ExportFormat::Llama2c => "llama2c",
            ExportFormat::Llama2cV1 => "llama2c_v1",
        }
        .into()
    }
}

crate::knobs! {
    /// `nanogpt export`: where the model comes from, the format and where it goes.
    #[derive(Clone, Debug)]
    pub struct ExportArgs [model: ModelSource] {
        {
            /// hf (a Hugging Face directory), llama2c (llama2.c's v0 .bin, which its run.c
            /// reads) or llama2c_v1 (its version 1 .bin); llama2c formats for Llama models only
            format: ExportFormat = ExportFormat::Hf,
            /// The directory (hf) or file (llama2c) to write
            out: Option<PathBuf> = None,
        }
    }
}

/// Writes the model `args` names in `args.format` to `args.out`; returns what was written.
pub fn export(args: &ExportArgs) -> Result<String> {
    let Some(out) = &args.out else {
        bail!("--out is missing: the directory (--format=hf) or file (--format=llama2c) to write");
    };
    let (model, name) = load::model_only(&args.model)?;
    match args.format {
        ExportFormat::Hf => save_hf_dir(&model, out)?,
        format => {
            let Some(llama) = model.to_llama() else {
                bail!("{name} is a GPT-2 model; llama2.c's files hold Llama models only: use --format=hf");
            };
            let write = if format == ExportFormat::Llama2c {
                write_llama2c_v0
            } else {
                write_llama2c_v1
            };
            write(&llama, out).with_context(|| format!("exporting {name}"))?;
        }
    }
    Ok(format!(
        "{name} -> {} ({})",
        out.display(),
        args.format.show()
    ))
}

//! `manifest.json` of `prepare openwebtext`: the settings, the source files and what each
//! finished file added, so an interrupted run resumes where it stopped (see [`super::stream`]).

use super::dataset::FileEntry;
use crate::atomic_file::write_atomic;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The settings a resumed run must share with the run it continues.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Settings {
    /// `hub:owner/name@revision split=S subset=X`, or `local`.
    pub(super) source: String,
    pub(super) text_field: String,
    pub(super) val_fraction: f64,
    pub(super) seed: u64,
    pub(super) shard_tokens: Option<usize>,
    pub(super) max_docs: Option<u64>,
    pub(super) tokenizer: String,
}

/// One source file of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SourceFile {
    /// The path inside the hub repository, or on disk.
    pub(super) name: String,
    pub(super) size: u64,
    /// From the hub's listing, checked after the download; for files on disk, computed when
    /// the file is read.
    pub(super) sha256: Option<String>,
}

/// A source file that has been tokenized and appended (and the outputs synced).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct SourceDone {
    pub(super) name: String,
    pub(super) sha256: String,
    pub(super) documents: u64,
    pub(super) val_documents: u64,
    pub(super) null_rows: u64,
    /// Lone surrogates in JSON escapes read as U+FFFD.
    #[serde(default)]
    pub(super) lone_surrogates: u64,
    pub(super) text_bytes: u64,
    /// The outputs' token counts after this file.
    pub(super) train_tokens: u64,
    pub(super) val_tokens: u64,
}

pub(super) const MANIFEST_FORMAT: &str = "nanogpt-prepare-stream/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) format: String,
    pub(super) complete: bool,
    pub(super) settings: Settings,
    /// For the hub: the revision the files were listed at.
    pub(super) revision: Option<String>,
    pub(super) sources: Vec<SourceFile>,
    pub(super) done: Vec<SourceDone>,
    /// The finished outputs, recorded before they are committed, so that a run killed while
    /// committing can finish the commit (`dataset::commit_recorded`).
    #[serde(default)]
    pub(super) outputs: Option<Vec<FileEntry>>,
    /// When complete: the output files.
    pub(super) train_files: Vec<String>,
    pub(super) val_files: Vec<String>,
}

impl Manifest {
    pub(super) fn totals(&self) -> SourceDone {
        let mut t = SourceDone::default();
        for d in &self.done {
            t.documents += d.documents;
            t.val_documents += d.val_documents;
            t.null_rows += d.null_rows;
            t.lone_surrogates += d.lone_surrogates;
            t.text_bytes += d.text_bytes;
            t.train_tokens = d.train_tokens;
            t.val_tokens = d.val_tokens;
        }
        t
    }

    /// True when no more documents are wanted.
    pub(super) fn finished_reading(&self) -> bool {
        self.done.len() == self.sources.len()
            || self
                .settings
                .max_docs
                .is_some_and(|m| self.totals().documents >= m)
    }
}

pub(super) fn settings_diff(was: &Settings, now: &Settings) -> String {
    let (a, b) = (
        serde_json::to_value(was).unwrap_or_default(),
        serde_json::to_value(now).unwrap_or_default(),
    );
    let mut diffs = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (key, old) in a {
            let new = b.get(key).cloned().unwrap_or_default();
            if *old != new {
                diffs.push(format!("{key} was {old}, now {new}"));
            }
        }
    }
    diffs.join(", ")
}

pub(super) fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!(
            "{} is damaged ({e}); pass --restart to start over",
            path.display()
        )
    })?;
    if manifest.format != MANIFEST_FORMAT {
        bail!(
            "{} is a manifest of another kind ({}); pass --restart to start over",
            path.display(),
            manifest.format
        );
    }
    Ok(Some(manifest))
}

pub(super) fn write_manifest(path: &Path, m: &Manifest) -> Result<()> {
    let json = serde_json::to_string_pretty(m)?;
    write_atomic(path, json.as_bytes())
}

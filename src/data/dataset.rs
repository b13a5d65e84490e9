//! A dataset directory changes from one complete state to another, and a reader can tell which
//! it holds.
//!
//! - **Commit**: a prepare command writes every file of the new state (`train.bin`, `val.bin`
//!   or shards, `meta.json`, ...) to its temp name first ([`PendingFile`]). [`Staged::commit`]
//!   then writes `dataset.json`, which names each file of the new state with its size and a
//!   fingerprint, and the files of the state it replaces (if that one is complete), syncs the
//!   folder, renames the temp files into place, removes the dataset files the new state does
//!   not have (the other token format, surplus shards, a character vocabulary or a
//!   sentencepiece tokenizer beside tokens of another vocabulary), and writes `dataset.json`
//!   again without the previous state.
//! - **Reading** ([`verify`]): the files present must be exactly those `dataset.json` names (or,
//!   during a commit, those of the previous state), each with its size and fingerprint. Until
//!   the first rename the folder holds the previous state, and after the removals the new one.
//!   A kill between them (the renames take microseconds) leaves old and new files side by side,
//!   say a new `train.bin` beside the old `meta.json`: that matches neither, and the reader says
//!   the dataset is half-written and to rerun the prepare command, instead of reading tokens
//!   through the wrong vocabulary. Rerunning the prepare command always ends in the new state.
//! - **Rolling forward**: every prepare command starts with [`open_for_prepare`], which finishes
//!   such a commit from its record when all of its new files are complete (at their temp names
//!   or in place; a kill during the renames leaves them so), in milliseconds and before the
//!   prepare's own work. Readers never write, so until a prepare runs the folder is refused.
//! - **Why the window is not closed**: a commit could be one atomic step by swapping a symlink
//!   (`data/NAME -> NAME.v2`, renamed over), but `data/NAME` is a plain folder that nanoGPT's
//!   layout, its `prepare.py` and users' own files share: an existing folder cannot be turned
//!   into a symlink atomically (rename(2) does not replace a non-empty directory), the other
//!   files in it (`input.txt`, the openwebtext manifest and downloads) would have to move to
//!   each new version, and `cp -r`/`rsync -a` of `data/NAME` would copy a link instead of the
//!   dataset. Between the first rename and the last removal the folder therefore holds old and
//!   new files, which no reader can pair safely; the record lets it refuse them instead.
//! - **Legacy**: a folder without `dataset.json` (nanoGPT's own `prepare.py`, or a dataset we
//!   prepared before this record existed) is read as it is, unverified. A `dataset.json` that
//!   disagrees with the files is always an error.
//! - **Fingerprint**: the size, and the sha256 of sixteen 64 KiB blocks spread evenly over the
//!   file (of the whole file when it is at most 1 MiB). So `train` checks a multi-GB dataset in
//!   a few reads (a full checksum would cost seconds to minutes at every start), and a copy of
//!   the folder still verifies (modification times and inodes, the other cheap evidence, do not
//!   survive a plain copy). Vocabularies and other small files are hashed whole; a token file
//!   replaced by another of exactly the same size that differs only between the sampled blocks
//!   would go unnoticed.
//! - **Readers**: [`crate::data::TokenSplit::open`] (tokens) and [`vocabulary`] /
//!   [`tokenizer`] / [`vocab_size`] (the vocabulary, for `train`, `sample` and `eval`) verify
//!   the folder first. The vocabulary is `meta.json` / `meta.pkl` (characters),
//!   `tokenizer.model` / `tokenizer.bin` (sentencepiece, from `prepare text --tokenizer=FILE`),
//!   or none of them (GPT-2 BPE).
//! - **Resuming a commit**: [`commit_recorded`] finishes a commit from its list of files, for a
//!   run that recorded the list before committing and was killed during it
//!   (`prepare openwebtext`).

use crate::atomic_file::{sync_dir, tmp_path, write_atomic, PendingFile};
use crate::llama::tokenizer::LlamaTokenizer;
use crate::tokenizer::{CharVocab, Tokenizer};
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The record of a dataset folder's complete state.
pub const RECORD_FILE: &str = "dataset.json";
const RECORD_FORMAT: &str = "nanogpt-dataset/1";
/// Fingerprints read this many blocks of this many bytes.
const SAMPLE_BLOCKS: u64 = 16;
const SAMPLE_BLOCK_BYTES: u64 = 64 << 10;

/// One file of a dataset's complete state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's name in the dataset folder.
    pub name: String,
    pub bytes: u64,
    /// See the module docs.
    pub sampled_sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Record {
    format: String,
    files: Vec<FileEntry>,
    /// During a commit: the complete state being replaced, which still verifies until the
    /// first rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Vec<FileEntry>>,
}

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The files are exactly those `dataset.json` records.
    Recorded,
    /// No `dataset.json`: a dataset made before the record, or by nanoGPT; read as it is.
    Legacy,
}

/// Checks the dataset folder `dir` against its `dataset.json` (see the module docs). Each
/// failure is one line naming the folder and saying what to do.
pub fn verify(dir: &Path) -> Result<Verified> {
    let Some(record) = read_record(dir)? else {
        return Ok(Verified::Legacy);
    };
    let Some(problem) = mismatch(dir, &record.files)? else {
        return Ok(Verified::Recorded);
    };
    if let Some(previous) = &record.previous {
        if mismatch(dir, previous)?.is_none() {
            return Ok(Verified::Recorded);
        }
    }
    let d = dir.display();
    if record.previous.is_some() {
        bail!(
            "{d} is not a complete dataset ({problem}): a prepare was killed while renaming its files into place; rerun the prepare command that made it, which first finishes those renames"
        )
    }
    bail!(
        "{d} is not a complete dataset ({problem}): a prepare was interrupted or its files were changed; rerun the prepare command that made it (if you replaced its files yourself, delete {})",
        dir.join(RECORD_FILE).display()
    )
}

/// The character vocabulary of the dataset folder `dir` (`meta.json`, else nanoGPT's
/// `meta.pkl`), or `None` for GPT-2 BPE tokens and sentencepiece ones (see [`tokenizer`]), once
/// the folder [`verify`]s. Every reader of a dataset's vocabulary goes through here, so that
/// `train`, `sample` and `eval` refuse a half-committed folder with the same message instead of
/// pairing tokens with the wrong vocabulary.
pub fn vocabulary(dir: &Path) -> Result<Option<CharVocab>> {
    verify(dir)?;
    for name in CHAR_VOCAB_FILES {
        let path = dir.join(name);
        if path.is_file() {
            return CharVocab::load(&path).map(Some);
        }
    }
    Ok(None)
}

/// The names of a dataset's sentencepiece tokenizer (`prepare text --tokenizer=FILE` copies
/// FILE there): sentencepiece's model, or llama2.c's `tokenizer.bin` (all its entries).
pub const LLAMA_TOKENIZER_FILES: [&str; 2] = ["tokenizer.model", "tokenizer.bin"];
/// The names of a character vocabulary: ours, then nanoGPT's.
const CHAR_VOCAB_FILES: [&str; 2] = ["meta.json", "meta.pkl"];

/// The sentencepiece tokenizer of the dataset folder `dir` (`tokenizer.model`, else
/// `tokenizer.bin`), if it has one, once the folder [`verify`]s. A folder that also holds a
/// character vocabulary (only possible without `dataset.json`: a commit keeps one of them) is
/// refused rather than guessed.
pub fn llama_tokenizer(dir: &Path) -> Result<Option<LlamaTokenizer>> {
    verify(dir)?;
    let Some(path) = LLAMA_TOKENIZER_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    if let Some(meta) = CHAR_VOCAB_FILES.iter().find(|f| dir.join(f).is_file()) {
        bail!(
            "{} holds both {} and {meta}, two vocabularies for one set of tokens; rerun the prepare command that made it",
            dir.display(),
            file_name(&path)?
        );
    }
    let tok = if path.extension().is_some_and(|e| e == "model") {
        LlamaTokenizer::read_model(&path)?
    } else {
        LlamaTokenizer::read_bin_all(&path)?
    };
    Ok(Some(tok))
}

/// As nanoGPT's `sample.py`: the dataset folder's sentencepiece tokenizer or character
/// vocabulary when it has one, otherwise GPT-2's BPE (see [`vocabulary`] and
/// [`llama_tokenizer`]).
pub fn tokenizer(dir: &Path) -> Result<Tokenizer> {
    if let Some(tok) = llama_tokenizer(dir)? {
        return Ok(Tokenizer::Llama(Arc::new(tok)));
    }
    match vocabulary(dir)? {
        Some(chars) => Ok(Tokenizer::Char(chars)),
        None => Tokenizer::gpt2(),
    }
}

/// The size of the dataset folder's vocabulary, to size a model: its character vocabulary's or
/// its sentencepiece tokenizer's, or `None` for GPT-2 BPE tokens (no vocabulary file).
pub fn vocab_size(dir: &Path) -> Result<Option<usize>> {
    if let Some(tok) = llama_tokenizer(dir)? {
        return Ok(Some(tok.vocab_size()));
    }
    Ok(vocabulary(dir)?.map(|v| v.vocab_size()))
}

/// Files complete at their temp names, fingerprinted, to be committed as one dataset.
pub struct Staged {
    dir: PathBuf,
    files: Vec<FileEntry>,
    pending: Vec<PendingFile>,
}

/// Fingerprints the temp files of `pending`, the whole new state of the dataset folder `dir`.
/// Refuses when `dir` holds token files of another tool that the commit would neither replace
/// nor remove.
pub fn stage(dir: &Path, pending: Vec<PendingFile>) -> Result<Staged> {
    for name in dataset_files(dir)? {
        if !is_own_file(&name) {
            bail!(
                "{} holds {name}, token files of another tool that would be read with this dataset; prepare into another --name, or move them away",
                dir.display()
            );
        }
    }
    let files = pending
        .iter()
        .map(|p| fingerprint(p.tmp(), file_name(p.path())?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Staged {
        dir: dir.to_path_buf(),
        files,
        pending,
    })
}

impl Staged {
    /// The new state's files, as `dataset.json` will list them.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Commits the new state (see the module docs). Returns the files removed.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        for p in self.pending {
            p.keep(); // renamed by commit_recorded, which also finishes a killed commit
        }
        commit_recorded(&self.dir, &self.files)
    }
}

/// Creates the dataset folder `dir` of a prepare command if it is missing, and first of all
/// finishes a commit that a kill interrupted there ([`finish_interrupted`]): the rerun that the
/// refusal asks for makes the folder whole in milliseconds, before its own work, and it stays
/// whole even if that work then fails or is stopped.
pub fn open_for_prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow!("cannot create the dataset folder {}: {e}", dir.display()))?;
    finish_interrupted(dir)?;
    Ok(())
}

/// Rolls forward a commit killed between its first rename and its removals: when the folder
/// verifies as neither state of its record but every file of the new state is complete (at its
/// temp name or in place), the renames and removals are finished. Returns whether it did. Any
/// other folder is left as it is: a complete one needs nothing, and one whose new files are
/// gone is only mended by a prepare that writes them again.
pub fn finish_interrupted(dir: &Path) -> Result<bool> {
    // A damaged record is verify's to report; the prepare replaces it.
    let Ok(Some(record)) = read_record(dir) else {
        return Ok(false);
    };
    if record.previous.is_none() || verify(dir).is_ok() || renames(dir, &record.files)?.is_err() {
        return Ok(false);
    }
    commit_recorded(dir, &record.files)?;
    Ok(true)
}

/// Temp names and the names they are renamed to.
type Renames = Vec<(PathBuf, PathBuf)>;

/// The renames that commit `files` in `dir` (each file complete at its temp name or already in
/// place), or the first file that is neither.
fn renames(dir: &Path, files: &[FileEntry]) -> Result<Result<Renames, String>> {
    let mut renames = Vec::new();
    for entry in files {
        let path = dir.join(&entry.name);
        let tmp = tmp_path(&path);
        if tmp.is_file() && differs(&tmp, entry)?.is_none() {
            renames.push((tmp, path));
        } else if let Some(problem) = differs(&path, entry)? {
            return Ok(Err(format!(
                "{problem}, and {} is not its complete new version",
                tmp.display()
            )));
        }
    }
    Ok(Ok(renames))
}

/// Commits the state `files` in `dir`, or finishes that commit after a kill: each file must be
/// complete at its temp name or already in place. Returns the files removed.
pub fn commit_recorded(dir: &Path, files: &[FileEntry]) -> Result<Vec<PathBuf>> {
    let renames = renames(dir, files)?
        .map_err(|problem| anyhow!("cannot commit {}: {problem}", dir.display()))?;
    let previous = current_state(dir)?;
    // The record must be durable before any file it names replaces an old one.
    write_record(dir, files, previous)?;
    for (tmp, path) in renames {
        std::fs::rename(&tmp, &path)
            .map_err(|e| anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    }
    let keep: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let mut removed = Vec::new();
    for name in dataset_files(dir)? {
        if keep.contains(name.as_str()) {
            continue;
        }
        let path = dir.join(&name);
        std::fs::remove_file(&path).map_err(|e| {
            anyhow!(
                "cannot remove {} left by an earlier run: {e}; remove it by hand",
                path.display()
            )
        })?;
        removed.push(path);
    }
    write_record(dir, files, None)?;
    Ok(removed)
}

fn write_record(dir: &Path, files: &[FileEntry], previous: Option<Vec<FileEntry>>) -> Result<()> {
    let record = Record {
        format: RECORD_FORMAT.to_string(),
        files: files.to_vec(),
        previous,
    };
    write_atomic(
        &dir.join(RECORD_FILE),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    sync_dir(dir)
}

/// The complete state `dir` holds now, if it verifies: the files its record names (or the
/// record's previous state), or for a folder without a record its dataset files as they are.
fn current_state(dir: &Path) -> Result<Option<Vec<FileEntry>>> {
    let record = match read_record(dir) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let files = dataset_files(dir)?
                .into_iter()
                .map(|name| fingerprint(&dir.join(&name), name))
                .collect::<Result<Vec<_>>>()?;
            return Ok((!files.is_empty()).then_some(files));
        }
        Err(_) => return Ok(None), // damaged: nothing to fall back to
    };
    for candidate in [Some(record.files), record.previous].into_iter().flatten() {
        if mismatch(dir, &candidate)?.is_none() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Refuses a dataset name that would put the dataset anywhere but directly under `data_dir`.
pub fn dataset_dir(data_dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        bail!("--name '{name}' must be a plain folder name (no '/', '\\' or '..'): the dataset goes to data_dir/NAME");
    }
    Ok(data_dir.join(name))
}

/// The files in `dir` that readers take as part of a dataset: token files of either split (see
/// [`is_split_file`]), character vocabularies and sentencepiece tokenizers. Sorted.
fn dataset_files(dir: &Path) -> Result<BTreeSet<String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot list the dataset folder {}: {e}", dir.display()))?;
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| anyhow!("cannot list the dataset folder {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let vocab = CHAR_VOCAB_FILES.contains(&name.as_str())
            || LLAMA_TOKENIZER_FILES.contains(&name.as_str());
        if vocab || is_split_file(&name, "train") || is_split_file(&name, "val") {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Whether a file named `name` holds tokens of `split` (`train`, `val`): `SPLIT.bin`, or a
/// `.bin` whose `_`-separated name has `SPLIT` as a part and ends in it or in a shard number
/// (`train_000003.bin`, `edufineweb_train_000001.bin`, `tiny_shakespeare_val.bin`).
pub fn is_split_file(name: &str, split: &str) -> bool {
    let Some(stem) = name.strip_suffix(".bin") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('_').collect();
    let last = parts[parts.len() - 1];
    let number = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    parts.contains(&split) && (last == split || number)
}

/// Whether a dataset file has a name our prepare commands write (the commit may remove it).
fn is_own_file(name: &str) -> bool {
    if name == "tokenizer.bin" {
        return true; // llama2.c's tokenizer, copied by prepare text
    }
    let Some(stem) = name.strip_suffix(".bin") else {
        return true; // meta.json, meta.pkl, tokenizer.model
    };
    let digits = |s: &str| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit());
    ["train", "val"].iter().any(|split| {
        stem == *split
            || stem
                .strip_prefix(split)
                .and_then(|s| s.strip_prefix('_'))
                .is_some_and(digits)
    })
}

fn read_record(dir: &Path) -> Result<Option<Record>> {
    let path = dir.join(RECORD_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let damaged = |why: String| {
        anyhow!(
            "{} is damaged ({why}); rerun the prepare command that made {}",
            path.display(),
            dir.display()
        )
    };
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if record.format != RECORD_FORMAT {
        return Err(damaged(format!(
            "format {:?}, expected {RECORD_FORMAT:?}",
            record.format
        )));
    }
    Ok(Some(record))
}

/// The first way the files in `dir` differ from `files`, if any.
fn mismatch(dir: &Path, files: &[FileEntry]) -> Result<Option<String>> {
    for entry in files {
        if let Some(problem) = differs(&dir.join(&entry.name), entry)? {
            return Ok(Some(problem));
        }
    }
    let listed: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    Ok(dataset_files(dir)?
        .into_iter()
        .find(|name| !listed.contains(name.as_str()))
        .map(|name| format!("{name} is not in {RECORD_FILE}")))
}

/// How the file at `path` differs from `entry`, if it does.
fn differs(path: &Path, entry: &FileEntry) -> Result<Option<String>> {
    let name = &entry.name;
    let bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some(format!("{name} is missing")))
        }
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    if bytes != entry.bytes {
        return Ok(Some(format!(
            "{name} has {bytes} bytes, {RECORD_FILE} says {}",
            entry.bytes
        )));
    }
    if fingerprint(path, name.clone())?.sampled_sha256 != entry.sampled_sha256 {
        return Ok(Some(format!(
            "{name} is not the file {RECORD_FILE} records"
        )));
    }
    Ok(None)
}

/// The size and sampled sha256 of the file at `path`, to be listed as `name`.
pub fn fingerprint(path: &Path, name: String) -> Result<FileEntry> {
    let p = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| anyhow!("cannot read {p}: {e}"))?;
    let bytes = file
        .metadata()
        .map_err(|e| anyhow!("cannot read {p}: {e}"))?
        .len();
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let read = |file: &mut std::fs::File, buf: &mut Vec<u8>, at: u64, n: u64| {
        buf.clear();
        file.seek(SeekFrom::Start(at))?;
        file.take(n).read_to_end(buf)
    };
    if bytes <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES {
        read(&mut file, &mut buf, 0, bytes).map_err(|e| anyhow!("cannot read {p}: {e}"))?;
        hasher.update(&buf);
    } else {
        let last = bytes - SAMPLE_BLOCK_BYTES;
        for k in 0..SAMPLE_BLOCKS {
            let at = (last as u128 * k as u128 / (SAMPLE_BLOCKS - 1) as u128) as u64;
            read(&mut file, &mut buf, at, SAMPLE_BLOCK_BYTES)
                .map_err(|e| anyhow!("cannot read {p}: {e}"))?;
            hasher.update(&buf);
        }
    }
    Ok(FileEntry {
        name,
        bytes,
        sampled_sha256: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))
}

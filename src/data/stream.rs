//! `prepare openwebtext` and any Hugging Face text dataset: source files (the dataset's
//! parquet shards, or parquet / JSON-lines / text files on disk) streamed one at a time into
//! GPT-2 token files, resumable after any interruption.
//!
//! For each source file in order: download it (hub only; progress bar, retries, a partial
//! download is resumed; its sha256 is checked against the hub's listing), tokenize its
//! documents in parallel and in order ([`super::pipeline`]; each document's tokens, then EOT
//! 50256), append them to the outputs, sync the outputs, record the file in `manifest.json`,
//! delete the download. The next file downloads while one is tokenized, so at most two source
//! files are on disk at once; memory holds a few batches of text, whatever the dataset's size.
//!
//! - **Split** by document, as `prepare text` does ([`super::text::is_val_document`]):
//!   document `i` (counted from 0 over the whole dataset, in order) goes to val when a hash of
//!   the seed and `i` says so. With `val_fraction = 0`, `train.bin` is exactly every document's
//!   tokens followed by EOT, in input order.
//! - **Output**: `train.bin` / `val.bin` (nanoGPT's raw uint16) or llm.c shards of
//!   `shard_tokens`, written as `NAME.tmp` while the run goes on and committed as one dataset
//!   when it has finished ([`super::dataset`]), so an earlier complete output stays usable until
//!   then. The manifest lists the finished outputs before the commit, so a run stopped during
//!   the commit finishes it when rerun.
//! - **Resuming**: `manifest.json` records the settings, the source files (sizes, sha256) and,
//!   after each finished file, its documents and tokens; the outputs were synced before the
//!   manifest was written. A rerun with the same settings cuts the temp outputs back to what the
//!   manifest records (dropping whatever an interrupted file had added) and goes on with the
//!   next file, so no document is ever lost or written twice, and the result is byte-identical
//!   to an uninterrupted run. A full disk, a network failure or Ctrl-C all leave a resumable
//!   state. Rerunning a finished run does nothing; `restart` starts over.

use super::corpus::{
    collect_inputs, kind_of, CorpusReader, InputFile, InputKind, Piece, ReaderOptions,
};
use super::dataset::{self, is_split_file, FileEntry};
use super::documents::DocumentOptions;
use super::hub::{HubDataset, HubFile};
use super::manifest::{
    read_manifest, settings_diff, write_manifest, Manifest, Settings, SourceDone, SourceFile,
    MANIFEST_FORMAT,
};
use super::pipeline::{tokenize_ordered, with_pool, Batch};
use super::text::{lone_surrogates_warning, progress_bar, SplitSink};
use super::writer::{shard_path, SplitWriter};
use crate::atomic_file::tmp_path;
use crate::download::{download_with, DownloadOptions};
use crate::tokenizer::{Gpt2Bpe, EOT};
use anyhow::{anyhow, bail, Result};
use indicatif::MultiProgress;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// Where the documents come from.
#[derive(Clone, Debug)]
pub enum StreamSource {
    /// A dataset's parquet files on the Hugging Face hub.
    Hub(HubDataset),
    /// Files and folders on disk (parquet, JSON lines, text; see [`super::corpus`]).
    Local(Vec<PathBuf>),
}

#[derive(Clone, Debug)]
pub struct StreamPrepareOptions {
    pub source: StreamSource,
    /// Created if missing; holds the outputs, `manifest.json` and `download/`.
    pub out_dir: PathBuf,
    pub docs: DocumentOptions,
    /// Only the first this many documents.
    pub max_docs: Option<u64>,
    /// Forget an unfinished or finished earlier run in `out_dir` and start over.
    pub restart: bool,
}

impl StreamPrepareOptions {
    pub fn new(source: StreamSource, out_dir: impl Into<PathBuf>) -> Self {
        StreamPrepareOptions {
            source,
            out_dir: out_dir.into(),
            docs: DocumentOptions::default(),
            max_docs: None,
            restart: false,
        }
    }
}

/// What a run did (or, for `already_complete`, what the finished run had done). MB are 10^6
/// bytes.
#[derive(Clone, Debug, Serialize)]
pub struct StreamPrepareSummary {
    pub out_dir: PathBuf,
    /// Nothing was done: the manifest says an earlier run with these settings finished.
    pub already_complete: bool,
    /// Source files in the plan, and how many were done before this run started (resumed).
    pub sources: usize,
    pub resumed_after_sources: usize,
    pub documents: u64,
    pub train_documents: u64,
    pub val_documents: u64,
    /// Parquet rows with a null text, skipped.
    pub null_rows: u64,
    /// Lone UTF-16 surrogates in JSON escapes, read as U+FFFD.
    pub lone_surrogates: u64,
    /// UTF-8 bytes of all documents' text.
    pub text_bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub train_files: Vec<PathBuf>,
    pub val_files: Vec<PathBuf>,
    pub removed_stale: Vec<PathBuf>,
    pub threads: usize,
    /// This run only.
    pub elapsed_s: f64,
    /// Text tokenized by this run per second of its wall time, in MB/s.
    pub text_mb_per_s: f64,
    /// The most bytes the download folder held at once (0 for files on disk).
    pub peak_download_bytes: u64,
    /// Some source files are the hub's partial parquet conversion (`partial-train/`: only the
    /// first few GB of a large script-based dataset).
    pub partial_conversion: bool,
}

impl StreamPrepareSummary {
    /// Things a user should hear about.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.partial_conversion {
            w.push("the hub's parquet files of this dataset are a partial conversion (a partial-* folder: only its first few GB); for all of it, download its original files and pass --input".to_string());
        }
        if let Some(warning) = lone_surrogates_warning(self.lone_surrogates) {
            w.push(warning);
        }
        if self.null_rows > 0 {
            w.push(format!(
                "skipped {} rows whose text is null",
                self.null_rows
            ));
        }
        if self.val_documents == 0 {
            w.push(format!(
                "no validation documents ({} in all): raise --val_fraction",
                self.documents
            ));
        }
        w
    }
}

/// Prepares the source into token files in `opts.out_dir` (see the module docs). `stop` (e.g.
/// set by Ctrl-C) ends the run at the next batch, resumably.
pub fn prepare_stream(
    opts: &StreamPrepareOptions,
    stop: &AtomicBool,
) -> Result<StreamPrepareSummary> {
    let start = Instant::now();
    opts.docs.validate()?;
    if opts.max_docs == Some(0) {
        bail!("max_docs must be at least 1");
    }
    let out = &opts.out_dir;
    dataset::open_for_prepare(out)?;
    let settings = settings_of(opts);
    let manifest_path = out.join("manifest.json");

    let earlier = read_manifest(&manifest_path)?;
    let mut manifest = match earlier {
        Some(m) if !opts.restart && m.settings == settings => {
            if m.complete {
                return Ok(summary_of(opts, &m, true, m.done.len(), start, 0, 0, Vec::new()));
            }
            m
        }
        Some(m) if !opts.restart && !m.complete => bail!(
            "{} holds an unfinished run with other settings ({}); rerun it with its settings to finish it, or pass --restart to start over",
            out.display(),
            settings_diff(&m.settings, &settings)
        ),
        _ => {
            remove_unfinished(out)?;
            let (revision, sources) = plan(opts)?;
            let m = Manifest {
                format: MANIFEST_FORMAT.to_string(),
                complete: false,
                settings,
                revision,
                sources,
                done: Vec::new(),
                outputs: None,
                train_files: Vec::new(),
                val_files: Vec::new(),
            };
            write_manifest(&manifest_path, &m)?;
            m
        }
    };
    let resumed_after = manifest.done.len();
    let bars = MultiProgress::new();
    if !opts.docs.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let result = with_pool(opts.docs.num_proc, || {
        run(opts, &mut manifest, &manifest_path, &bars, stop)
    });
    let (run_result, threads) = result?;
    let (removed_stale, text_bytes_this_run, peak_download_bytes) = run_result?;
    let _ = bars.clear();
    let mut s = summary_of(
        opts,
        &manifest,
        false,
        resumed_after,
        start,
        threads,
        peak_download_bytes,
        removed_stale,
    );
    s.text_mb_per_s = text_bytes_this_run as f64 / 1e6 / s.elapsed_s.max(1e-9);
    Ok(s)
}

/// Tokenizes the sources not done yet and finishes the run. Returns the stale outputs removed,
/// the text bytes this run read and the download folder's peak size.
fn run(
    opts: &StreamPrepareOptions,
    manifest: &mut Manifest,
    manifest_path: &Path,
    bars: &MultiProgress,
    stop: &AtomicBool,
) -> Result<(Vec<PathBuf>, u64, u64)> {
    let out = &opts.out_dir;
    if let Some(outputs) = manifest.outputs.clone() {
        // Every source file is in and the outputs are complete; an earlier run was stopped
        // while committing them.
        let removed = dataset::commit_recorded(out, &outputs).map_err(|e| {
            e.context("cannot finish the earlier run's last step; start over with --restart")
        })?;
        complete(manifest, manifest_path, &outputs)?;
        return Ok((removed, 0, 0));
    }
    let totals = manifest.totals();
    let resuming = !manifest.done.is_empty();
    let (train, val) = if resuming {
        (
            SplitWriter::resume(out, "train", opts.docs.shard_tokens, totals.train_tokens)?,
            SplitWriter::resume(out, "val", opts.docs.shard_tokens, totals.val_tokens)?,
        )
    } else {
        (
            SplitWriter::create_resumable(out, "train", opts.docs.shard_tokens)?,
            SplitWriter::create_resumable(out, "val", opts.docs.shard_tokens)?,
        )
    };
    let mut sink = SplitSink {
        train,
        val,
        seed: opts.docs.seed,
        val_fraction: opts.docs.val_fraction,
        end_of_doc: vec![EOT],
        documents: totals.documents,
        val_documents: totals.val_documents,
    };
    let encoder = Gpt2Bpe::new()?;
    let total_bytes: u64 = manifest.sources.iter().map(|s| s.size).sum();
    let done_bytes: u64 = manifest.sources[..manifest.done.len()]
        .iter()
        .map(|s| s.size)
        .sum();
    let bar = bars.add(progress_bar(opts.docs.progress, total_bytes));
    bar.set_position(done_bytes);
    let download_dir = out.join("download");
    let first = manifest.done.len();
    let todo: Vec<SourceFile> = if manifest.finished_reading() {
        Vec::new()
    } else {
        manifest.sources[first..].to_vec()
    };
    let mut text_bytes_this_run = 0u64;
    let mut peak_download = 0u64;
    let finished = AtomicBool::new(false);
    let cancelled = || stop.load(Ordering::Relaxed) || finished.load(Ordering::Relaxed);

    std::thread::scope(|scope| -> Result<()> {
        // Hub sources arrive from a fetcher thread that downloads the next file while this
        // one is tokenized; it hands over at most one finished file (a rendezvous channel).
        let (tx, rx) = mpsc::sync_channel::<Result<(PathBuf, u64)>>(0);
        if let StreamSource::Hub(hub) = &opts.source {
            let revision = manifest.revision.clone().unwrap_or_else(|| "main".into());
            let todo = todo.clone();
            let download_dir = download_dir.clone();
            let cancelled = &cancelled;
            scope.spawn(move || {
                for source in &todo {
                    let got = fetch(hub, &revision, source, &download_dir, bars, cancelled)
                        .map(|path| (path, dir_bytes(&download_dir)));
                    let failed = got.is_err();
                    if tx.send(got).is_err() || failed {
                        break;
                    }
                }
            });
        } else {
            drop(tx);
        }
        let result = (|| -> Result<()> {
            for (k, source) in todo.iter().enumerate() {
                if manifest.finished_reading() {
                    break;
                }
                bar.set_message(format!(
                    "file {}/{}",
                    first + k + 1,
                    manifest.sources.len()
                ));
                let (path, kind, downloaded) = match &opts.source {
                    StreamSource::Hub(_) => {
                        let (path, dir_size) = rx.recv().map_err(|_| {
                            anyhow!("the download thread stopped without a result")
                        })??;
                        peak_download = peak_download.max(dir_size);
                        (path, InputKind::Parquet, true)
                    }
                    StreamSource::Local(_) => {
                        let path = PathBuf::from(&source.name);
                        // As `collect_inputs` reads a named file: text unless it says otherwise.
                        let kind = kind_of(&path).unwrap_or(InputKind::Text);
                        check_unchanged(&path, source.size)?;
                        (path, kind, false)
                    }
                };
                let sha256 = match &source.sha256 {
                    Some(h) if downloaded => h.clone(), // checked by fetch
                    _ => sha256_file(&path)?,
                };
                let before = (sink.documents, sink.val_documents);
                let mut reader = CorpusReader::new(
                    vec![InputFile {
                        path: path.clone(),
                        kind,
                        bytes: source.size,
                    }],
                    ReaderOptions {
                        text_field: opts.docs.text_field.clone(),
                        piece_bytes: opts.docs.piece_bytes,
                        batch_bytes: opts.docs.batch_bytes,
                        first_doc: sink.documents,
                        end_doc: opts.max_docs,
                    },
                );
                tokenize_ordered(
                    &mut reader,
                    |p: &Piece| Ok(encoder.encode_ordinary(&p.text)),
                    |batch: Batch<Piece>, tokens| {
                        if stop.load(Ordering::Relaxed) {
                            bail!("interrupted");
                        }
                        sink.add(&batch.items, &tokens)?;
                        bar.inc(batch.bytes);
                        Ok(())
                    },
                    1,
                )?;
                if reader.next_doc() != sink.documents {
                    bail!(
                        "{}: read {} documents but wrote {}; this is a bug",
                        path.display(),
                        reader.next_doc() - before.0,
                        sink.documents - before.0
                    );
                }
                sink.train.sync()?;
                sink.val.sync()?;
                manifest.done.push(SourceDone {
                    name: source.name.clone(),
                    sha256,
                    documents: sink.documents - before.0,
                    val_documents: sink.val_documents - before.1,
                    null_rows: reader.null_rows(),
                    lone_surrogates: reader.lone_surrogates(),
                    text_bytes: reader.text_bytes(),
                    train_tokens: sink.train.len(),
                    val_tokens: sink.val.len(),
                });
                write_manifest(manifest_path, manifest)?;
                text_bytes_this_run += reader.text_bytes();
                if downloaded {
                    std::fs::remove_file(&path).map_err(|e| {
                        anyhow!("cannot delete the finished download {}: {e}", path.display())
                    })?;
                }
            }
            Ok(())
        })();
        finished.store(true, Ordering::Relaxed); // stops a download that is no longer needed
        drop(rx);
        result
    })
    .map_err(|e| {
        if stop.load(Ordering::Relaxed) {
            anyhow!(
                "interrupted after {} of {} source files; rerun the same command to continue",
                manifest.done.len(),
                manifest.sources.len()
            )
        } else {
            e.context(format!(
                "{} of {} source files are done and kept; fix the problem and rerun the same command to continue",
                manifest.done.len(),
                manifest.sources.len()
            ))
        }
    })?;
    bar.finish_and_clear();
    if manifest.totals().documents == 0 {
        bail!(
            "no documents: the source files hold no text in \"{}\"",
            opts.docs.text_field
        );
    }

    // Every source file is in: record the outputs, then commit them as one dataset.
    let mut outputs = sink.train.finish()?;
    outputs.extend(sink.val.finish()?);
    let staged = dataset::stage(out, outputs)?;
    manifest.outputs = Some(staged.files().to_vec());
    write_manifest(manifest_path, manifest)?;
    let outputs = staged.files().to_vec();
    let removed = staged.commit()?;
    complete(manifest, manifest_path, &outputs)?;
    Ok((removed, text_bytes_this_run, peak_download))
}

/// Marks the manifest complete, with the output files committed.
fn complete(manifest: &mut Manifest, manifest_path: &Path, outputs: &[FileEntry]) -> Result<()> {
    let names = |split: &str| {
        outputs
            .iter()
            .filter(|f| is_split_file(&f.name, split))
            .map(|f| f.name.clone())
            .collect()
    };
    manifest.train_files = names("train");
    manifest.val_files = names("val");
    manifest.complete = true;
    // Before the manifest says complete: a rerun of a complete run does nothing.
    if let Some(dir) = manifest_path.parent() {
        let _ = std::fs::remove_dir_all(dir.join("download"));
    }
    write_manifest(manifest_path, manifest)
}

/// Lists the source files: the hub dataset's parquet files, or the local inputs.
fn plan(opts: &StreamPrepareOptions) -> Result<(Option<String>, Vec<SourceFile>)> {
    match &opts.source {
        StreamSource::Hub(hub) => {
            let (revision, files) = hub.parquet_files()?;
            let sources = files
                .into_iter()
                .map(|HubFile { path, size, sha256 }| SourceFile {
                    name: path,
                    size,
                    sha256,
                })
                .collect();
            Ok((Some(revision), sources))
        }
        StreamSource::Local(inputs) => {
            if inputs.is_empty() {
                bail!("no inputs: give parquet, JSON-lines (.jsonl) or text (.txt) files or folders of them");
            }
            let (files, skipped) = collect_inputs(inputs)?;
            if files.is_empty() {
                bail!(
                    "no input files in {}: folders are searched for *.parquet, *.jsonl and *.txt ({} other files skipped)",
                    inputs[0].display(),
                    skipped.len()
                );
            }
            let sources = files
                .into_iter()
                .map(|f| SourceFile {
                    name: f.path.display().to_string(),
                    size: f.bytes,
                    sha256: None,
                })
                .collect();
            Ok((None, sources))
        }
    }
}

/// Downloads one hub file into `dir` (resuming a partial download) and checks it against the
/// listing: its sha256, or its size when the hub gives no sha256. A file that fails is
/// downloaded once more from scratch before giving up.
fn fetch(
    hub: &HubDataset,
    revision: &str,
    source: &SourceFile,
    dir: &Path,
    bars: &MultiProgress,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<PathBuf> {
    let dest = dir.join(source.name.replace('/', "--"));
    let url = hub.file_url(revision, &source.name);
    let options = DownloadOptions {
        token: hub.token.clone(),
        bars: Some(bars),
        cancel: Some(cancelled),
    };
    let hint = "no network? download the dataset's parquet files yourself and pass --input DIR";
    let mut problem = String::new();
    for _attempt in 0..2 {
        if !dest.is_file() {
            download_with(&url, &dest, hint, &options)?;
        }
        problem = match &source.sha256 {
            Some(want) => {
                let got = sha256_file(&dest)?;
                if &got == want {
                    return Ok(dest);
                }
                format!("its sha256 is {got}, the hub lists {want}")
            }
            None => {
                let got = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
                if got == source.size {
                    return Ok(dest);
                }
                format!("it has {got} bytes, the hub lists {}", source.size)
            }
        };
        std::fs::remove_file(&dest)
            .map_err(|e| anyhow!("cannot delete the bad download {}: {e}", dest.display()))?;
    }
    bail!(
        "{} failed its checksum twice ({problem}); it was deleted. The hub or a proxy serves a different file: try again later, or check --revision",
        source.name
    )
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn check_unchanged(path: &Path, size: u64) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == size => Ok(()),
        Ok(m) => bail!(
            "{} changed since this run began ({} bytes, then {size}); pass --restart to start over with the files as they are now",
            path.display(),
            m.len()
        ),
        Err(e) => bail!(
            "cannot read {}: {e}; put it back, or pass --restart to start over without it",
            path.display()
        ),
    }
}

/// Bytes in the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn settings_of(opts: &StreamPrepareOptions) -> Settings {
    let source = match &opts.source {
        StreamSource::Hub(h) => format!(
            "hub:{}@{} split={}{}",
            h.repo,
            h.revision.as_deref().unwrap_or("main"),
            h.split,
            h.subset
                .as_ref()
                .map(|s| format!(" subset={s}"))
                .unwrap_or_default()
        ),
        StreamSource::Local(_) => "local".to_string(),
    };
    Settings {
        source,
        text_field: opts.docs.text_field.clone(),
        val_fraction: opts.docs.val_fraction,
        seed: opts.docs.seed,
        shard_tokens: opts.docs.shard_tokens,
        max_docs: opts.max_docs,
        tokenizer: "gpt2".to_string(),
    }
}

/// Removes the temp outputs and downloads an unfinished earlier run left in `dir`.
fn remove_unfinished(dir: &Path) -> Result<()> {
    for name in ["train", "val"] {
        let mut doomed = vec![tmp_path(&dir.join(format!("{name}.bin")))];
        let mut i = 0;
        loop {
            let shard = tmp_path(&shard_path(dir, name, i));
            if !shard.is_file() {
                break;
            }
            doomed.push(shard);
            i += 1;
        }
        for path in doomed.iter().filter(|p| p.is_file()) {
            std::fs::remove_file(path).map_err(|e| {
                anyhow!(
                    "cannot remove {} left by an earlier run: {e}",
                    path.display()
                )
            })?;
        }
    }
    let downloads = dir.join("download");
    if downloads.is_dir() {
        std::fs::remove_dir_all(&downloads).map_err(|e| {
            anyhow!(
                "cannot remove {} left by an earlier run: {e}",
                downloads.display()
            )
        })?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summary_of(
    opts: &StreamPrepareOptions,
    m: &Manifest,
    already_complete: bool,
    resumed_after: usize,
    start: Instant,
    threads: usize,
    peak_download_bytes: u64,
    removed_stale: Vec<PathBuf>,
) -> StreamPrepareSummary {
    let t = m.totals();
    let paths = |names: &[String]| names.iter().map(|n| opts.out_dir.join(n)).collect();
    StreamPrepareSummary {
        out_dir: opts.out_dir.clone(),
        already_complete,
        sources: m.sources.len(),
        resumed_after_sources: resumed_after,
        documents: t.documents,
        train_documents: t.documents - t.val_documents,
        val_documents: t.val_documents,
        null_rows: t.null_rows,
        lone_surrogates: t.lone_surrogates,
        text_bytes: t.text_bytes,
        train_tokens: t.train_tokens,
        val_tokens: t.val_tokens,
        train_files: paths(&m.train_files),
        val_files: paths(&m.val_files),
        removed_stale,
        threads,
        elapsed_s: start.elapsed().as_secs_f64(),
        text_mb_per_s: 0.0,
        peak_download_bytes,
        partial_conversion: m.sources.iter().any(|s| s.name.contains("/partial-")),
    }
}

//! Files written whole or not at all: to `NAME.tmp`, synced, then renamed over `NAME`, so a crash
//! or a full disk never leaves a half-written file where a good one was. Several files that
//! belong together stay at their temp names ([`PendingFile`]) until all are complete.

use anyhow::{bail, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through `fill`, via a temp file and a rename: a crash or an error never leaves
/// a half-written `path` (the temp file is removed on error).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    write_pending_with(path, fill)?.commit().map(|_| ())
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes the temp file of `path` through `fill` and syncs it, but leaves it at its temp name
/// until [`PendingFile::commit`] (the temp file is removed on error).
pub fn write_pending_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<PendingFile> {
    let tmp = tmp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "cannot write {}: {e} (disk full, or the directory is not writable?)",
            path.display()
        );
    }
    Ok(PendingFile::new(tmp, path.to_path_buf(), false))
}

/// [`write_pending_with`] for bytes in memory.
pub fn write_pending(path: &Path, bytes: &[u8]) -> Result<PendingFile> {
    write_pending_with(path, |w| w.write_all(bytes))
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Makes the renames and removals done in `dir` so far durable: without it, a power cut may
/// lose or reorder them even though each file's data was synced.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .or_else(|e| {
            // Some filesystems cannot sync a directory; renames there are as durable as they get.
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot sync the folder {}: {e}", dir.display()))
}

/// A complete file at its temp name, waiting to be renamed over its real name. Several can be
/// committed together once all of them are complete. Dropped uncommitted, it is removed, unless
/// it was written to be resumed or handed on ([`PendingFile::keep`]).
#[derive(Debug)]
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    /// Committed, or to be left in place when dropped.
    done: bool,
}

impl PendingFile {
    /// `tmp` becomes `path` on commit; with `keep`, dropping it uncommitted leaves `tmp`.
    pub fn new(tmp: PathBuf, path: PathBuf, keep: bool) -> PendingFile {
        PendingFile {
            tmp,
            path,
            done: keep,
        }
    }

    /// The final name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the file is until committed.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Leaves the temp file in place for whoever renames it (see `data::dataset`).
    pub fn keep(mut self) {
        self.done = true;
    }

    /// Renames the temp file over the final name.
    pub fn commit(mut self) -> Result<PathBuf> {
        let keep = self.done;
        self.done = true;
        if let Err(e) = std::fs::rename(&self.tmp, &self.path) {
            if !keep {
                let _ = std::fs::remove_file(&self.tmp);
            }
            bail!(
                "cannot rename {} to {}: {e}",
                self.tmp.display(),
                self.path.display()
            );
        }
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

//! Writing token files, whole or not at all (through `crate::atomic_file`): in one go
//! ([`write_tokens`]) or streamed ([`TokenFileWriter`], [`SplitWriter`]), always via a temp file
//! that is renamed into place only when complete.

use super::tokens::{
    TokenFormat, SHARD_HEADER_BYTES, SHARD_HEADER_INTS, SHARD_MAGIC, SHARD_VERSION,
};
use crate::atomic_file::{tmp_path, write_pending_with, PendingFile};
use anyhow::{anyhow, bail, Result};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Writes token ids as a token file: nanoGPT's raw little-endian uint16 (`train.bin`), or an
/// llm.c shard (256 x int32 header: magic, version 1, token count; then uint16 tokens).
/// Every id must fit in 16 bits.
pub fn write_tokens(path: &Path, tokens: &[u32], format: TokenFormat) -> Result<()> {
    write_tokens_pending(path, tokens, format)?
        .commit()
        .map(|_| ())
}

/// [`write_tokens`], but the file stays at its temp name until committed (with the other files
/// of its dataset, see [`super::dataset`]).
pub fn write_tokens_pending(
    path: &Path,
    tokens: &[u32],
    format: TokenFormat,
) -> Result<PendingFile> {
    if let Some(pos) = tokens.iter().position(|&t| t > u16::MAX as u32) {
        bail!(
            "cannot write {}: token {} at position {pos} does not fit in 16 bits \
             (uint16 token files hold vocabularies of at most 65536)",
            path.display(),
            tokens[pos]
        );
    }
    if format == TokenFormat::Shard && tokens.len() > i32::MAX as usize {
        bail!(
            "cannot write {}: {} tokens is more than one llm.c shard can count; split the data",
            path.display(),
            tokens.len()
        );
    }
    write_pending_with(path, |w| {
        if format == TokenFormat::Shard {
            let mut header = [0i32; SHARD_HEADER_INTS];
            header[0] = SHARD_MAGIC;
            header[1] = SHARD_VERSION;
            header[2] = tokens.len() as i32;
            for h in header {
                w.write_all(&h.to_le_bytes())?;
            }
        }
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in tokens.chunks(1 << 15) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|&t| (t as u16).to_le_bytes()));
            w.write_all(&buf)?;
        }
        Ok(())
    })
}

/// A token file written as it goes: tokens are appended to `NAME.tmp`; [`finish`] completes it
/// (the shard header's token count, a sync) and hands back a [`PendingFile`] whose
/// [`PendingFile::commit`] renames it over `NAME`. Dropped before that, the temp file is removed
/// (unless it was made to be resumed), so an error or a crash never leaves a half-written `NAME`.
///
/// [`finish`]: TokenFileWriter::finish
pub struct TokenFileWriter {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>, // None once finished (Drop then keeps the temp file)
    format: TokenFormat,
    count: u64,
    buf: Vec<u8>,
    /// Leave the temp file when dropped unfinished, for a later run to continue.
    keep_on_drop: bool,
}

impl TokenFileWriter {
    /// Starts `path` (via `path.tmp`); for a shard, the header is written now and its token
    /// count filled in by [`TokenFileWriter::finish`].
    pub fn create(path: &Path, format: TokenFormat) -> Result<TokenFileWriter> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| {
            anyhow!(
                "cannot create {}: {e} (is the directory writable?)",
                tmp.display()
            )
        })?;
        let mut writer = TokenFileWriter {
            path: path.to_path_buf(),
            tmp,
            w: Some(BufWriter::with_capacity(1 << 20, file)),
            format,
            count: 0,
            buf: Vec::with_capacity(1 << 16),
            keep_on_drop: false,
        };
        if format == TokenFormat::Shard {
            let header = shard_header(0);
            writer.write_bytes(&header)?;
        }
        Ok(writer)
    }

    /// Continues the temp file of `path` that an earlier run left with at least `count` tokens:
    /// keeps the first `count` and cuts off anything after them (written after the earlier
    /// run's last sync point). The temp file is kept if this writer is dropped unfinished.
    pub fn resume(path: &Path, format: TokenFormat, count: u64) -> Result<TokenFileWriter> {
        let tmp = tmp_path(path);
        let header = if format == TokenFormat::Shard {
            SHARD_HEADER_BYTES as u64
        } else {
            0
        };
        let want = header + 2 * count;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| {
                anyhow!(
                    "cannot continue {}: {e}; start over with --restart",
                    tmp.display()
                )
            })?;
        let have = file
            .metadata()
            .map_err(|e| anyhow!("cannot read {}: {e}", tmp.display()))?
            .len();
        if have < want {
            bail!(
                "cannot continue {}: it holds {have} bytes, fewer than the {want} the manifest records; start over with --restart",
                tmp.display()
            );
        }
        let mut file = file;
        file.set_len(want)
            .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(|e| anyhow!("cannot continue {}: {e}", tmp.display()))?;
        Ok(TokenFileWriter {
            path: path.to_path_buf(),
            tmp,
            w: Some(BufWriter::with_capacity(1 << 20, file)),
            format,
            count,
            buf: Vec::with_capacity(1 << 16),
            keep_on_drop: true,
        })
    }

    /// Makes dropping this writer unfinished leave its temp file (see [`TokenFileWriter::resume`]).
    pub fn keep_on_drop(mut self) -> TokenFileWriter {
        self.keep_on_drop = true;
        self
    }

    /// Flushes and syncs what was appended, so that it survives a crash.
    pub fn sync(&mut self) -> Result<()> {
        let Some(w) = self.w.as_mut() else {
            bail!("{} was already finished", self.path.display());
        };
        w.flush()
            .and_then(|_| w.get_ref().sync_data())
            .map_err(|e| {
                anyhow!(
                    "cannot write {}: {e} (disk full, or the directory is not writable?)",
                    self.tmp.display()
                )
            })
    }

    /// The file this becomes once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens appended so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `tokens`; each must fit in 16 bits, and a shard holds at most `i32::MAX`.
    pub fn append(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some(pos) = tokens.iter().position(|&t| t > u16::MAX as u32) {
            bail!(
                "cannot write {}: token {} at position {} does not fit in 16 bits \
                 (uint16 token files hold vocabularies of at most 65536)",
                self.path.display(),
                tokens[pos],
                self.count + pos as u64
            );
        }
        let new_count = self.count + tokens.len() as u64;
        if self.format == TokenFormat::Shard && new_count > i32::MAX as u64 {
            bail!(
                "cannot write {}: {new_count} tokens is more than one llm.c shard can count; \
                 use smaller shards",
                self.path.display()
            );
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        for chunk in tokens.chunks(1 << 15) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|&t| (t as u16).to_le_bytes()));
            result = self.write_bytes(&buf);
            if result.is_err() {
                break;
            }
        }
        self.buf = buf;
        result?;
        self.count = new_count;
        Ok(())
    }

    /// Flushes, fills in a shard's token count and syncs. The file is complete but still at
    /// its temp name until [`PendingFile::commit`].
    pub fn finish(mut self) -> Result<PendingFile> {
        let Some(w) = self.w.take() else {
            bail!("{} was already finished", self.path.display());
        };
        let tmp = self.tmp.clone();
        let keep = self.keep_on_drop;
        let result = (|| -> std::io::Result<()> {
            let mut file = w.into_inner().map_err(|e| e.into_error())?;
            if self.format == TokenFormat::Shard {
                // count <= i32::MAX, checked in append.
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&shard_header(self.count as i32))?;
            }
            file.sync_all()
        })();
        if let Err(e) = result {
            if !keep {
                let _ = std::fs::remove_file(&tmp);
            }
            bail!(
                "cannot write {}: {e} (disk full, or the directory is not writable?)",
                tmp.display()
            );
        }
        Ok(PendingFile::new(tmp, std::mem::take(&mut self.path), keep))
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(w) = self.w.as_mut() else {
            bail!("{} was already finished", self.path.display());
        };
        w.write_all(bytes).map_err(|e| {
            anyhow!(
                "cannot write {}: {e} (disk full, or the directory is not writable?)",
                self.tmp.display()
            )
        })
    }
}

impl Drop for TokenFileWriter {
    fn drop(&mut self) {
        if self.w.take().is_some() && !self.keep_on_drop {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// One split's tokens, written as it goes: a single nanoGPT `NAME.bin`, or llm.c shards
/// `NAME_000000.bin`, `NAME_000001.bin`, ... of `shard_tokens` tokens each (the last one may
/// hold fewer; a document may continue into the next shard, as llm.c's own preparation does).
/// There is always at least one file, possibly empty.
pub struct SplitWriter {
    dir: PathBuf,
    name: String,
    shard_tokens: Option<usize>,
    current: TokenFileWriter,
    done: Vec<PendingFile>,
    total: u64,
    /// Temp files survive errors, for [`SplitWriter::resume`].
    resumable: bool,
}

impl SplitWriter {
    /// `shard_tokens: None` writes `dir/NAME.bin` (raw uint16); `Some(n)` writes shards of `n`.
    pub fn create(dir: &Path, name: &str, shard_tokens: Option<usize>) -> Result<SplitWriter> {
        if let Some(n) = shard_tokens {
            if n == 0 || n > i32::MAX as usize {
                bail!(
                    "shard_tokens must be between 1 and {} (an llm.c shard counts its tokens in an int32), got {n}",
                    i32::MAX
                );
            }
        }
        let first = match shard_tokens {
            None => TokenFileWriter::create(&dir.join(format!("{name}.bin")), TokenFormat::RawU16)?,
            Some(_) => TokenFileWriter::create(&shard_path(dir, name, 0), TokenFormat::Shard)?,
        };
        Ok(SplitWriter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            shard_tokens,
            current: first,
            done: Vec::new(),
            total: 0,
            resumable: false,
        })
    }

    /// Like [`SplitWriter::create`], but the temp files survive errors and drops, so that a
    /// later run can [`SplitWriter::resume`] them.
    pub fn create_resumable(
        dir: &Path,
        name: &str,
        shard_tokens: Option<usize>,
    ) -> Result<SplitWriter> {
        let mut w = SplitWriter::create(dir, name, shard_tokens)?;
        w.current = w.current.keep_on_drop();
        w.resumable = true;
        Ok(w)
    }

    /// Continues the temp files a resumable writer left with `total` tokens in all (shards
    /// before the last one full and complete); anything written after those is cut off.
    pub fn resume(
        dir: &Path,
        name: &str,
        shard_tokens: Option<usize>,
        total: u64,
    ) -> Result<SplitWriter> {
        let Some(cap) = shard_tokens else {
            let path = dir.join(format!("{name}.bin"));
            return Ok(SplitWriter {
                dir: dir.to_path_buf(),
                name: name.to_string(),
                shard_tokens,
                current: TokenFileWriter::resume(&path, TokenFormat::RawU16, total)?,
                done: Vec::new(),
                total,
                resumable: true,
            });
        };
        // The writer moves to the next shard only when it has more tokens for it, so a full
        // last shard is still the current one.
        let cap = cap as u64;
        let current = if total == 0 { 0 } else { (total - 1) / cap };
        let mut done = Vec::new();
        for i in 0..current as usize {
            let path = shard_path(dir, name, i);
            let tmp = tmp_path(&path);
            let want = SHARD_HEADER_BYTES as u64 + 2 * cap;
            match std::fs::metadata(&tmp) {
                Ok(m) if m.len() == want => {}
                _ => bail!(
                    "cannot continue: {} is missing or not a full shard of {cap} tokens; start over with --restart",
                    tmp.display()
                ),
            }
            done.push(PendingFile::new(tmp, path, true));
        }
        let path = shard_path(dir, name, current as usize);
        Ok(SplitWriter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            shard_tokens,
            current: TokenFileWriter::resume(&path, TokenFormat::Shard, total - current * cap)?,
            done,
            total,
            resumable: true,
        })
    }

    /// Flushes and syncs the file being written (finished shards already are).
    pub fn sync(&mut self) -> Result<()> {
        self.current.sync()
    }

    /// Tokens appended so far, over all files.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn append(&mut self, mut tokens: &[u32]) -> Result<()> {
        let Some(cap) = self.shard_tokens else {
            self.current.append(tokens)?;
            self.total += tokens.len() as u64;
            return Ok(());
        };
        while !tokens.is_empty() {
            if self.current.len() == cap as u64 {
                let next = shard_path(&self.dir, &self.name, self.done.len() + 1);
                let mut next = TokenFileWriter::create(&next, TokenFormat::Shard)?;
                if self.resumable {
                    next = next.keep_on_drop();
                }
                let full = std::mem::replace(&mut self.current, next);
                self.done.push(full.finish()?);
            }
            let room = cap - self.current.len() as usize;
            let (now, later) = tokens.split_at(room.min(tokens.len()));
            self.current.append(now)?;
            self.total += now.len() as u64;
            tokens = later;
        }
        Ok(())
    }

    /// Completes every file; they stay at their temp names until committed.
    pub fn finish(self) -> Result<Vec<PendingFile>> {
        let mut done = self.done;
        done.push(self.current.finish()?);
        Ok(done)
    }
}

/// `dir/NAME_000007.bin`, llm.c's shard naming.
pub fn shard_path(dir: &Path, name: &str, index: usize) -> PathBuf {
    dir.join(format!("{name}_{index:06}.bin"))
}

fn shard_header(count: i32) -> Vec<u8> {
    let mut header = [0i32; SHARD_HEADER_INTS];
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = count;
    header.iter().flat_map(|h| h.to_le_bytes()).collect()
}

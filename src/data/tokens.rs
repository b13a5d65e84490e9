//! Token files, memory-mapped: nanoGPT's raw little-endian uint16 (`train.bin`, `val.bin`) and
//! llm.c's shards (a 256 x int32 header: magic 20240520, version 1, token count; then uint16
//! tokens). The format is detected by the magic. Every token is checked against the vocabulary
//! once, on open.

use anyhow::{bail, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};

#[cfg(not(target_endian = "little"))]
compile_error!(
    "token files are read in place as little-endian uint16: big-endian targets are not supported"
);

/// First int32 of an llm.c token shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// llm.c's shard version with uint16 tokens (version 2 holds uint32 LLaMA-3 tokens).
pub const SHARD_VERSION: i32 = 1;
pub const SHARD_HEADER_INTS: usize = 256;
pub const SHARD_HEADER_BYTES: usize = SHARD_HEADER_INTS * 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFormat {
    /// nanoGPT: the file is nothing but uint16 little-endian tokens.
    RawU16,
    /// llm.c: a 1024-byte header, then uint16 little-endian tokens.
    Shard,
}

impl TokenFormat {
    /// A shard when the file starts with llm.c's magic. (A raw GPT-2 file cannot: its first
    /// token would be 54472, beyond GPT-2's vocabulary.)
    pub fn detect(bytes: &[u8]) -> TokenFormat {
        match bytes.first_chunk::<4>() {
            Some(&b) if i32::from_le_bytes(b) == SHARD_MAGIC => TokenFormat::Shard,
            _ => TokenFormat::RawU16,
        }
    }
}

/// An open, validated token file. The tokens are read in place from the mapping.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    format: TokenFormat,
    map: Option<Mmap>, // None for an empty file
    start: usize,      // byte offset of the first token
    len: usize,        // number of tokens
}

impl TokenFile {
    /// Opens and maps `path`, detects its format, checks its length against the format and
    /// every token against `vocab_size`. Each failure is one line naming the file.
    pub fn open(path: &Path, vocab_size: usize) -> Result<TokenFile> {
        let p = path.display();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{p} does not exist: prepare the dataset first (train.bin and val.bin)")
            }
            Err(e) => bail!("cannot open {p}: {e}"),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => bail!("cannot read {p}: {e}"),
        };
        if meta.is_dir() {
            bail!("{p} is a directory, not a token file");
        }
        let map = if meta.len() == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only; as for any mmap, the file must not be truncated
            // or rewritten while it is open (our writers replace files by rename, which is safe).
            match unsafe { Mmap::map(&file) } {
                Ok(m) => Some(m),
                Err(e) => bail!("cannot memory-map {p}: {e}"),
            }
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let format = TokenFormat::detect(bytes);
        let (start, len) = match format {
            TokenFormat::RawU16 => {
                if !bytes.len().is_multiple_of(2) {
                    bail!(
                        "{p}: {} bytes is not a whole number of uint16 tokens \
                         (truncated, or not a token file?)",
                        bytes.len()
                    );
                }
                (0, bytes.len() / 2)
            }
            TokenFormat::Shard => (SHARD_HEADER_BYTES, shard_token_count(bytes, path)?),
        };
        let tf = TokenFile {
            path: path.to_path_buf(),
            format,
            map,
            start,
            len,
        };
        tf.check_vocab(vocab_size)?;
        Ok(tf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> TokenFormat {
        self.format
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tokens, read in place.
    pub fn tokens(&self) -> &[u16] {
        let Some(map) = &self.map else {
            return &[];
        };
        let bytes = &map[self.start..self.start + 2 * self.len];
        // SAFETY: every bit pattern is a valid u16. The mapping is page-aligned and `start` is
        // 0 or 1024, so the prefix is empty; the length is even, so the suffix is empty too.
        let (pre, tokens, _) = unsafe { bytes.align_to::<u16>() };
        debug_assert!(pre.is_empty() && tokens.len() == self.len);
        tokens
    }

    /// An error naming the file unless it holds at least `block_size + 1` tokens, the least
    /// that one training example (inputs and shifted targets) needs.
    pub fn require_len(&self, block_size: usize) -> Result<()> {
        if self.len <= block_size {
            bail!(
                "{}: {} tokens is too few for block_size {block_size} (need at least {}); \
                 lower block_size or use more data",
                self.path.display(),
                self.len,
                block_size + 1
            );
        }
        Ok(())
    }

    fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        if vocab_size > u16::MAX as usize {
            return Ok(()); // every uint16 fits
        }
        const CHUNK: usize = 1 << 20;
        let tokens = self.tokens();
        let bad_chunk = tokens
            .par_chunks(CHUNK)
            .enumerate()
            .find_first(|(_, c)| c.iter().copied().max().unwrap_or(0) as usize >= vocab_size);
        if let Some((ci, chunk)) = bad_chunk {
            if let Some(i) = chunk.iter().position(|&t| t as usize >= vocab_size) {
                bail!(
                    "{}: token {} at position {} is not below vocab_size {vocab_size}; \
                     was this file made with another tokenizer?",
                    self.path.display(),
                    chunk[i],
                    ci * CHUNK + i
                );
            }
        }
        Ok(())
    }
}

/// Checks an llm.c shard's header against the file's length; returns the token count.
fn shard_token_count(bytes: &[u8], path: &Path) -> Result<usize> {
    let p = path.display();
    if bytes.len() < SHARD_HEADER_BYTES {
        bail!(
            "{p}: starts with llm.c's shard magic but is only {} bytes, shorter than the \
             {SHARD_HEADER_BYTES}-byte header (truncated?)",
            bytes.len()
        );
    }
    let int = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let version = int(1);
    if version != SHARD_VERSION {
        bail!(
            "{p}: llm.c shard version {version} is not supported (only version \
             {SHARD_VERSION}, uint16 tokens)"
        );
    }
    let count = int(2);
    let body = bytes.len() - SHARD_HEADER_BYTES;
    if count < 0 || body != 2 * count as usize {
        bail!(
            "{p}: the shard header says {count} tokens but the file holds {body} bytes after \
             the header ({} expected; truncated?)",
            2 * count.max(0) as i64
        );
    }
    Ok(count as usize)
}

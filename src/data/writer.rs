//! Writing token files, whole or not at all (through `crate::atomic_file`).

use super::tokens::{TokenFormat, SHARD_HEADER_INTS, SHARD_MAGIC, SHARD_VERSION};
use crate::atomic_file::write_atomic_with;
use anyhow::{bail, Result};
use std::io::Write;
use std::path::Path;

/// Writes token ids as a token file: nanoGPT's raw little-endian uint16 (`train.bin`), or an
/// llm.c shard (256 x int32 header: magic, version 1, token count; then uint16 tokens).
/// Every id must fit in 16 bits.
pub fn write_tokens(path: &Path, tokens: &[u32], format: TokenFormat) -> Result<()> {
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
    write_atomic_with(path, |w| {
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

//! One split of a dataset folder as training reads it: nanoGPT's `train.bin`, or llm.c shards
//! (`train_000000.bin`, ... as `prepare --shard_tokens` writes them, or another tool's
//! `fineweb_train_000001.bin`, ...) read as one sequence, in name order. Batches are drawn over
//! the whole sequence as nanoGPT draws them over `train.bin` (a window may span two shards;
//! documents already do). The folder is checked against its `dataset.json` first.

use super::batch::{sample_windows, uniform_start};
use super::dataset::{is_split_file, verify};
use super::tokens::TokenFile;
use crate::rng::Rng;
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// A split's token files, open and validated, read as one sequence.
#[derive(Debug)]
pub struct TokenSplit {
    files: Vec<TokenFile>,
    /// Where each file's tokens start in the sequence.
    starts: Vec<usize>,
    len: usize,
}

impl TokenSplit {
    /// Verifies the dataset folder `dir` ([`verify`]) and opens the token files of `split`,
    /// each checked against `vocab_size`.
    pub fn open(dir: &Path, split: &str, vocab_size: usize) -> Result<TokenSplit> {
        let d = dir.display();
        let single = format!("{split}.bin");
        if !dir.is_dir() {
            bail!(
                "{} not found: prepare the dataset first (nanogpt prepare ...), or set dataset / data_dir",
                dir.join(&single).display()
            );
        }
        verify(dir)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)
            .map_err(|e| anyhow!("cannot list the dataset folder {d}: {e}"))?
        {
            let entry = entry.map_err(|e| anyhow!("cannot list the dataset folder {d}: {e}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_split_file(&name, split) {
                names.push(name);
            }
        }
        names.sort();
        if names.is_empty() {
            bail!("{d} has no {single} (nor llm.c shards {split}_*.bin): prepare the dataset first (nanogpt prepare ...), or set dataset / data_dir");
        }
        if names.len() > 1 && names.contains(&single) {
            bail!(
                "{d} holds both {single} and shards of {split} ({}, ...): remove one kind, or prepare the dataset again",
                names.iter().find(|n| **n != single).map_or("", |n| n.as_str())
            );
        }
        let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        let files = paths
            .iter()
            .map(|p| TokenFile::open(p, vocab_size))
            .collect::<Result<Vec<_>>>()?;
        let mut starts = Vec::with_capacity(files.len());
        let mut len = 0;
        for f in &files {
            starts.push(len);
            len += f.len();
        }
        Ok(TokenSplit { files, starts, len })
    }

    /// Tokens in all files.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An error naming the split's files unless they hold at least `block_size + 1` tokens.
    pub fn require_len(&self, block_size: usize) -> Result<()> {
        match &self.files[..] {
            [one] => one.require_len(block_size),
            files if self.len <= block_size => bail!(
                "{} and the other {} shards: {} tokens is too few for block_size {block_size} (need at least {}); lower block_size or use more data",
                files[0].path().display(),
                files.len() - 1,
                self.len,
                block_size + 1
            ),
            _ => Ok(()),
        }
    }

    /// Random batches over the whole sequence, as [`super::batch::sample_batch`] draws them
    /// over one file (the same batches for a single file).
    pub fn get_batch_into(
        &self,
        rng: &mut Rng,
        batch_size: usize,
        block_size: usize,
        x: &mut Vec<u32>,
        y: &mut Vec<i32>,
    ) -> Result<()> {
        let draw = uniform_start(self.len, block_size);
        self.batch_drawn(draw, rng, batch_size, block_size, x, y)
    }

    /// Where each `eol` token lies, among the positions that leave a whole window of
    /// `block_size + 1` tokens (call [`TokenSplit::require_len`] first): a window drawn from one
    /// starts with the newline and then a whole line, the shape a prompt `"\n" + problem` has.
    pub fn line_breaks(&self, eol: u16, block_size: usize) -> Vec<usize> {
        let last = self.len - block_size - 1;
        self.window(0, last + 1)
            .enumerate()
            .filter(|&(_, t)| t == eol)
            .map(|(i, _)| i)
            .collect()
    }

    /// Random batches whose rows each begin at one of `starts` (drawn uniformly; from
    /// [`TokenSplit::line_breaks`] with the same `block_size`; not empty).
    pub fn get_batch_from_into(
        &self,
        starts: &[usize],
        rng: &mut Rng,
        batch_size: usize,
        block_size: usize,
        x: &mut Vec<u32>,
        y: &mut Vec<i32>,
    ) -> Result<()> {
        let n = starts.len() as u64;
        let draw = |rng: &mut Rng| starts[rng.below(n) as usize];
        self.batch_drawn(draw, rng, batch_size, block_size, x, y)
    }

    /// A batch whose rows begin where `draw_start` says, after checking the split is long enough.
    fn batch_drawn(
        &self,
        draw_start: impl Fn(&mut Rng) -> usize,
        rng: &mut Rng,
        batch_size: usize,
        block_size: usize,
        x: &mut Vec<u32>,
        y: &mut Vec<i32>,
    ) -> Result<()> {
        self.require_len(block_size)?;
        let window = |start, n| self.window(start, n);
        sample_windows(
            self.len, rng, batch_size, block_size, x, y, draw_start, window,
        )
    }

    /// `n` tokens from `start` on, across file boundaries.
    fn window(&self, start: usize, n: usize) -> impl Iterator<Item = u16> + '_ {
        // The last file that starts at or before `start` (empty files start where the next does).
        let first = self.starts.partition_point(|&s| s <= start) - 1;
        let mut skip = start - self.starts[first];
        self.files[first..]
            .iter()
            .flat_map(move |f| {
                let tokens = &f.tokens()[skip.min(f.len())..];
                skip = 0;
                tokens.iter().copied()
            })
            .take(n)
    }
}

//! An ordered, parallel tokenization pipeline with bounded memory: documents in, tokens out,
//! in input order.
//!
//! A reader thread produces [`Batch`]es of items (documents, or pieces of them) and keeps at
//! most [`PipelineOptions::read_ahead`] of them queued; each batch is tokenized in parallel on a
//! rayon pool, one item per task; then the caller's sink gets the batch and its token lists, in
//! the order the reader produced them. So reading overlaps tokenizing, the output order never
//! depends on the thread count, and memory holds a few batches, never the whole corpus.
//!
//! Used by `prepare text` (files of text and JSON lines); anything that can hand out batches of
//! documents (e.g. rows of parquet shards) can reuse it.

use anyhow::{anyhow, Context, Result};
use rayon::prelude::*;
use std::sync::mpsc;

/// Items to tokenize together, and how many input bytes they stand for (for progress).
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct PipelineOptions {
    /// Tokenizing threads; `None` uses rayon's global pool (all cores, or `--threads`).
    pub num_threads: Option<usize>,
    /// Batches the reader may have ready while one is being tokenized (at least 1).
    pub read_ahead: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            num_threads: None,
            read_ahead: 1,
        }
    }
}

/// Runs `f` on a pool of `num_threads` threads, or on rayon's global pool for `None`; also
/// returns the pool's thread count.
pub fn with_pool<R: Send>(
    num_threads: Option<usize>,
    f: impl FnOnce() -> R + Send,
) -> Result<(R, usize)> {
    match num_threads {
        None => Ok((f(), rayon::current_num_threads())),
        Some(0) => Err(anyhow!("num_threads must be at least 1")),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .with_context(|| format!("cannot start {n} tokenizer threads"))?;
            Ok((pool.install(f), n))
        }
    }
}

/// Tokenizes every item of every batch from `batches` with `encode` and passes each batch with
/// its token lists (`tokens[i]` for `batch.items[i]`) to `sink`, in order. `batches` runs on its
/// own thread; `encode` runs on the pool's threads (inside [`with_pool`] when the caller wants a
/// specific pool); `sink` runs on the calling thread. The first error (reading, encoding or in
/// the sink) stops everything and is returned; the reader is then abandoned at its next batch.
pub fn tokenize_ordered<T, I, E, S>(
    batches: I,
    encode: E,
    mut sink: S,
    read_ahead: usize,
) -> Result<()>
where
    T: Send + Sync,
    I: Iterator<Item = Result<Batch<T>>> + Send,
    E: Fn(&T) -> Result<Vec<u32>> + Sync,
    S: FnMut(Batch<T>, Vec<Vec<u32>>) -> Result<()>,
{
    let (tx, rx) = mpsc::sync_channel::<Result<Batch<T>>>(read_ahead.max(1));
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            for batch in batches {
                let failed = batch.is_err();
                // A closed channel means the consumer stopped (on an error): stop reading too.
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        let result = (move || -> Result<()> {
            for batch in rx {
                let batch = batch?;
                let tokens = batch
                    .items
                    .par_iter()
                    .map(&encode)
                    .collect::<Result<Vec<Vec<u32>>>>()?;
                sink(batch, tokens)?;
            }
            Ok(())
        })(); // drops `rx`, so a reader blocked on a full queue wakes up and ends
        let joined = reader.join();
        result?;
        joined.map_err(|_| anyhow!("the input reader thread panicked"))
    })
}

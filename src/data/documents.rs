//! How documents become token files: the options `prepare text` and `prepare openwebtext`
//! share (where a document's text is, the train/val split, the output format, how the work is
//! batched), as one settings table that both commands' flags come from.

use anyhow::{bail, Result};

crate::knobs! {
    #[derive(Clone, Debug, PartialEq)]
    pub struct DocumentOptions {
        {
            /// The JSON field or parquet column that holds each document's text
            text_field: String = "text".into(),
            /// Share of documents (chosen by a seeded hash of the document's index) for val.bin
            val_fraction: f64 = 0.0005,
            /// Seeds the document split
            seed: u64 = 2357,
            /// Write llm.c shards of this many tokens instead of train.bin / val.bin
            shard_tokens: Option<usize> = None,
            /// Tokenizing threads [default: all cores]
            num_proc: Option<usize> = None,
            /// Text read ahead and tokenized together, in bytes
            batch_bytes: usize = 16 << 20,
            /// Documents longer than this many bytes are cut into pieces tokenized in parallel
            piece_bytes: usize = 256 << 10,
            /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal)
            progress: bool = true,
        }
    }
}

impl DocumentOptions {
    /// Checks the values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            bail!(
                "val_fraction must be at least 0 and below 1, got {}",
                self.val_fraction
            );
        }
        if self.text_field.is_empty() {
            bail!("text_field is empty: give the JSON field or parquet column that holds each document's text");
        }
        Ok(())
    }
}

//! Reading one text column of a parquet file (the format of Hugging Face hub datasets) as a
//! stream of documents, page by page: memory holds a page or two, never a whole row group.
//!
//! The column must be a top-level string (`BYTE_ARRAY`) column, required or optional; a null
//! value is a row without text, which the caller skips (and counts).

use anyhow::{anyhow, bail, Result};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::{get_typed_column_reader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Once;

pub struct ParquetTextColumn {
    path: PathBuf,
    file: SerializedFileReader<File>,
    column: usize,
    nullable: bool,
    next_row_group: usize,
    reader: Option<ColumnReaderImpl<ByteArrayType>>,
    values: Vec<ByteArray>,
    def_levels: Vec<i16>,
    /// Rows handed out so far, for error messages.
    row: u64,
}

impl ParquetTextColumn {
    /// Opens `path` and finds the column named `field`.
    pub fn open(path: &Path, field: &str) -> Result<ParquetTextColumn> {
        let p = path.display();
        let handle = File::open(path).map_err(|e| anyhow!("cannot read {p}: {e}"))?;
        let file = no_panic(|| SerializedFileReader::new(handle))
            .map_err(|e| anyhow!("{p} is not a readable parquet file ({e}); is it truncated? delete it and fetch it again"))?;
        let schema = file.metadata().file_metadata().schema_descr_ptr();
        let columns = schema.columns();
        let Some(column) = columns.iter().position(|c| c.path().parts() == [field]) else {
            let names: Vec<String> = columns
                .iter()
                .take(12)
                .map(|c| format!("\"{}\"", c.path().string()))
                .collect();
            bail!(
                "{p}: no column \"{field}\" (it has {}); set --text_field to the column that holds the text",
                names.join(", ")
            );
        };
        let desc = &columns[column];
        if desc.physical_type() != PhysicalType::BYTE_ARRAY || desc.max_rep_level() > 0 {
            bail!(
                "{p}: column \"{field}\" is not a string column (it holds {}{}); set --text_field to the column that holds the text",
                desc.physical_type(),
                if desc.max_rep_level() > 0 { " lists" } else { "" }
            );
        }
        Ok(ParquetTextColumn {
            path: path.to_path_buf(),
            nullable: desc.max_def_level() > 0,
            file,
            column,
            next_row_group: 0,
            reader: None,
            values: Vec::new(),
            def_levels: Vec::new(),
            row: 0,
        })
    }

    /// Rows in the file, from its footer.
    pub fn num_rows(&self) -> u64 {
        self.file.metadata().file_metadata().num_rows().max(0) as u64
    }

    /// Reads up to `max_rows` rows' texts into `out` (cleared first), `None` for a null; `out`
    /// stays empty at the end of the file.
    pub fn read(&mut self, max_rows: usize, out: &mut Vec<Option<String>>) -> Result<()> {
        out.clear();
        while out.len() < max_rows {
            if !self.open_row_group()? {
                break;
            }
            let Some(reader) = self.reader.as_mut() else {
                break;
            };
            self.values.clear();
            self.def_levels.clear();
            let want = max_rows - out.len();
            let defs = self.nullable.then_some(&mut self.def_levels);
            let (rows, values, _) = no_panic(|| reader.read_records(want, defs, None, &mut self.values))
                .map_err(|e| anyhow!("{}: cannot read row {} ({e}); the file is damaged: delete it and fetch it again", self.path.display(), self.row))?;
            if rows == 0 {
                self.reader = None; // this row group is done
                continue;
            }
            let mut texts = self.values.drain(..values);
            for r in 0..rows {
                let present = !self.nullable || self.def_levels[r] > 0;
                let text = if present {
                    let bytes = texts.next().ok_or_else(|| {
                        anyhow!(
                            "{}: row {}: fewer values than rows",
                            self.path.display(),
                            self.row
                        )
                    })?;
                    Some(String::from_utf8(bytes.data().to_vec()).map_err(|_| {
                        anyhow!(
                            "{}: row {} is not valid UTF-8 text",
                            self.path.display(),
                            self.row
                        )
                    })?)
                } else {
                    None
                };
                out.push(text);
                self.row += 1;
            }
        }
        Ok(())
    }

    /// Makes sure a row group's column reader is open; false when all have been read.
    fn open_row_group(&mut self) -> Result<bool> {
        if self.reader.is_none() {
            if self.next_row_group >= self.file.num_row_groups() {
                return Ok(false);
            }
            let group = no_panic(|| {
                self.file
                    .get_row_group(self.next_row_group)
                    .and_then(|g| g.get_column_reader(self.column))
            })
                .map_err(|e| {
                    anyhow!(
                        "{}: cannot read row group {} ({e}); the file is damaged: delete it and fetch it again",
                        self.path.display(),
                        self.next_row_group
                    )
                })?;
            self.next_row_group += 1;
            self.reader = Some(get_typed_column_reader::<ByteArrayType>(group));
        }
        Ok(true)
    }
}

/// The parquet crate panics on some damaged files (slice bounds in its decoders, found by
/// `tests/fuzz.rs`); such a panic is the file's fault, so it becomes the crate's own error,
/// carrying the panic's message. The panic hook stays quiet for it (see [`QuietPanics`]), so
/// the user sees that one error, not a "thread panicked" report and backtrace first.
fn no_panic<T>(f: impl FnOnce() -> parquet::errors::Result<T>) -> parquet::errors::Result<T> {
    let caught = {
        let _quiet = QuietPanics::start();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
    };
    caught.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(parquet::errors::ParquetError::General(format!(
            "its decoder failed on damaged data: {why}"
        )))
    })
}

thread_local! {
    /// Whether a panic on this thread is caught by [`no_panic`] and so must not be reported.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// While alive, panics on this thread do not reach the panic hook. The hook is process-wide,
/// so it is wrapped once, keeping the previous one for every other panic; the flag is
/// per-thread, so a panic elsewhere meanwhile (another reader thread, a real bug) is still
/// reported. Dropping restores the flag even if the code between panicked.
struct QuietPanics {
    was: bool,
}

impl QuietPanics {
    fn start() -> QuietPanics {
        static WRAP_HOOK: Once = Once::new();
        WRAP_HOOK.call_once(|| {
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(Cell::get) {
                    report(info);
                }
            }));
        });
        QuietPanics {
            was: QUIET.with(|q| q.replace(true)),
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(self.was));
    }
}

//! A seeded mutation fuzzer for every parser of a file or setting a user hands us: token files
//! and llm.c shard headers (through the split reader), safetensors model files, `config.json`,
//! `meta.json`, `meta.pkl`, TOML configs, `--key=value` overrides, JSON lines, parquet,
//! `dataset.json`, and the Llama family's llama2.c model files, `tokenizer.bin` and
//! `tokenizer.model`. Each target starts from valid inputs and mutates them (bit flips, interesting
//! integers, inserts, deletes, truncation, duplicated ranges, splices, format tokens).
//!
//! Properties, per input: no panic (caught, the input saved under `target/fuzz-failures/`), no
//! hang (a watchdog fails the test when one input takes over `HANG`), and no allocation past
//! `CAP` (a counting global allocator aborts the process naming the input before the
//! allocation is made, since an unwinding allocator is undefined behaviour).
//!
//! Stable Rust, no fuzzing engine: `cargo test --release --test fuzz`. The seed is fixed so CI
//! is reproducible; `FUZZ_SEED=<n>` picks another and `FUZZ_ITERS=<n>` sets the inputs per
//! target (default `DEFAULT_ITERS`) for long local runs. Run with `--nocapture` for the counts.

mod common;

use common::TempDir;
use nanogpt::config::{GptConfig, TrainConfig};
use nanogpt::data::corpus::{CorpusReader, InputFile, InputKind, ReaderOptions};
use nanogpt::data::dataset::stage;
use nanogpt::data::writer::write_tokens_pending;
use nanogpt::data::{TokenFormat, TokenSplit};
use nanogpt::model::weights::{load_hf_dir, load_model_file, save_hf_dir};
use nanogpt::model::Gpt;
use nanogpt::rng::Rng;
use nanogpt::tokenizer::CharVocab;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Inputs per target in CI: about a second of one core each (33k inputs in all).
const DEFAULT_ITERS: u64 = 3000;
const DEFAULT_SEED: u64 = 0x5eed_f022;
/// The most one input may allocate on the parsing thread (live bytes, counted from the start
/// of the input). Seeds are a few KiB; a header claiming a huge tensor must not reach this.
const CAP: isize = 64 << 20;
/// One input taking this long is a hang (generous: CI shares two cores between test binaries).
const HANG: Duration = Duration::from_secs(20);
/// Mutated inputs stay below this size.
const MAX_INPUT: usize = 256 << 10;

// ---- the allocation cap ----------------------------------------------------------------------

struct CappedAlloc;

thread_local! {
    // Const-initialized and without destructors, so the allocator can touch them.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LABEL: Cell<[u8; 512]> = const { Cell::new([0; 512]) };
}

impl CappedAlloc {
    fn count(&self, delta: isize) {
        let _ = ARMED.try_with(|armed| {
            if !armed.get() {
                return;
            }
            let live = LIVE.get() + delta;
            LIVE.set(live);
            if live > PEAK.get() {
                PEAK.set(live);
            }
            if live > CAP {
                over_cap(live);
            }
        });
    }
}

/// Writes the failing input's label with no allocation, then aborts.
fn over_cap(live: isize) -> ! {
    let label = LABEL.get();
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    let mut digits = [0u8; 24];
    let mut i = digits.len();
    let mut n = live as u64;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for part in [
        &b"\nfuzz: allocation past the cap: "[..],
        &digits[i..],
        &b" bytes live for "[..],
        &label[..end],
        &b"\n"[..],
    ] {
        // SAFETY: writing a valid buffer to stderr.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    std::process::abort()
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counted around it.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size() as isize);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Runs `f` with this thread's allocations counted against `CAP`; returns its result and the
/// peak live bytes.
fn capped<R>(label: &str, f: impl FnOnce() -> R) -> (R, isize) {
    // The panic hook's message and backtrace are the harness's allocations, not the parser's.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            ARMED.set(false);
            default(info)
        }));
    });
    let mut buf = [0u8; 512];
    let n = label.len().min(buf.len() - 1);
    buf[..n].copy_from_slice(&label.as_bytes()[..n]);
    LABEL.set(buf);
    LIVE.set(0);
    PEAK.set(0);
    ARMED.set(true);
    let r = f();
    ARMED.set(false);
    (r, PEAK.get())
}

// ---- mutation --------------------------------------------------------------------------------

/// Integers that parsers get wrong: signs, widths, and sizes far past the input.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1_000_000_000_000,
    i64::MAX as u64,
    u64::MAX,
];

/// Tokens of the text formats (JSON, TOML, overrides, dataset names).
const TOKENS: [&str; 30] = [
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "=",
    "\n",
    "--",
    "-1",
    "0",
    "1e400",
    "99999999999999999999",
    "18446744073709551615",
    "1000000000000",
    "nan",
    "inf",
    "true",
    "null",
    "\\ud800",
    "\\u0000",
    "'",
    "[[a]]",
    "[a]\nb=1\n",
    "..",
    "/",
    "train.bin",
    "dataset.json",
    "\u{feff}",
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len() as u64;
        let at = rng.below(len + 1) as usize;
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                data[i] = INTERESTING[rng.below(4) as usize] as u8;
            }
            2 => {
                let n = 1 + rng.below(16) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                data.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let end = (at + 1 + rng.below(64) as usize).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => data.truncate(at),
            5 if len > 0 => {
                let from = rng.below(len) as usize;
                let end = (from + 1 + rng.below(256) as usize).min(data.len());
                let copy = data[from..end].to_vec();
                let to = rng.below(data.len() as u64 + 1) as usize;
                data.splice(to..to, copy);
            }
            6 => {
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                let from = rng.below(other.len() as u64 + 1) as usize;
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            7 => {
                let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let width = [2, 4, 8][rng.below(3) as usize];
                let bytes = &v.to_le_bytes()[..width];
                let end = (at + width).min(data.len());
                data.splice(at..end, bytes.iter().copied());
            }
            8 => {
                // Another number where the input has one: sizes, counts and ids.
                let digits: Vec<usize> = (0..data.len())
                    .filter(|&i| data[i].is_ascii_digit())
                    .collect();
                if let Some(&i) = digits.get(rng.below(digits.len() as u64) as usize) {
                    let end = (i..data.len())
                        .find(|&j| !data[j].is_ascii_digit())
                        .unwrap_or(data.len());
                    let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                    data.splice(i..end, v.to_string().into_bytes());
                }
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                data.splice(at..at, t.bytes());
            }
        }
    }
    data.truncate(MAX_INPUT);
}

// ---- the harness -----------------------------------------------------------------------------

/// What a target does with one input: the bytes were written to `file` (in the target's own
/// folder) beforehand; `Ok` means the parser accepted them.
type Parse = fn(file: &Path, bytes: &[u8]) -> anyhow::Result<()>;

struct Target {
    name: &'static str,
    /// The file the input is written to, in the target's folder.
    file: &'static str,
    /// Prepares the folder (other files the parser needs) and returns the valid seed inputs.
    setup: fn(dir: &Path) -> Vec<Vec<u8>>,
    parse: Parse,
    /// Inputs that once broke the parser, run before the mutated ones.
    regressions: &'static [&'static [u8]],
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one target: its seeds, its regressions, then `FUZZ_ITERS` mutated inputs, on a worker
/// thread watched for hangs. Panics listing every failing input.
fn fuzz(t: Target) {
    let seed = env_u64("FUZZ_SEED", DEFAULT_SEED);
    let iters = env_u64("FUZZ_ITERS", DEFAULT_ITERS);
    let (progress, watch) = mpsc::channel::<String>();
    let name = t.name;
    let worker = std::thread::spawn(move || {
        let dir = TempDir::new("fuzz", t.name);
        let seeds = (t.setup)(&dir);
        assert!(!seeds.is_empty());
        let file = dir.join(t.file);
        let failures_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let mut rng = Rng::new(seed ^ fnv(t.name));
        let (mut accepted, mut rejected, mut failures) = (0u64, 0u64, Vec::new());
        let (mut slowest, mut peak) = (Duration::ZERO, 0isize);
        let fixed = seeds.len() + t.regressions.len();
        for case in 0..fixed as u64 + iters {
            let input = match case as usize {
                i if i < seeds.len() => seeds[i].clone(),
                i if i < fixed => t.regressions[i - seeds.len()].to_vec(),
                _ => {
                    let mut d = seeds[rng.below(seeds.len() as u64) as usize].clone();
                    mutate(&mut rng, &mut d, &seeds);
                    d
                }
            };
            std::fs::write(&file, &input).unwrap();
            let label = format!(
                "{} case {case} (FUZZ_SEED={seed}; the input is {})",
                t.name,
                file.display()
            );
            // The watchdog names the input if this one never returns.
            if progress.send(label.clone()).is_err() {
                return (accepted, rejected, failures, slowest, peak);
            }
            let start = Instant::now();
            let (result, bytes) = capped(&label, || {
                catch_unwind(AssertUnwindSafe(|| (t.parse)(&file, &input)))
            });
            slowest = slowest.max(start.elapsed());
            peak = peak.max(bytes);
            match result {
                Ok(Ok(())) => accepted += 1,
                Ok(Err(_)) => rejected += 1,
                Err(_) => {
                    std::fs::create_dir_all(&failures_dir).unwrap();
                    let saved = failures_dir.join(format!("{}-{seed}-{case}.bin", t.name));
                    std::fs::write(&saved, &input).unwrap();
                    failures.push(format!(
                        "{} case {case}: panicked; input saved as {}",
                        t.name,
                        saved.display()
                    ));
                }
            }
        }
        (accepted, rejected, failures, slowest, peak)
    });
    let mut last = String::from("setup");
    loop {
        match watch.recv_timeout(HANG) {
            Ok(label) => last = label,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("fuzz {name}: no answer within {HANG:?} on {last}: a hang")
            }
        }
    }
    let (accepted, rejected, failures, slowest, peak) = match worker.join() {
        Ok(r) => r,
        Err(_) => panic!("fuzz {name}: the harness itself panicked (see above)"),
    };
    println!(
        "fuzz {name}: seed {seed}, {} inputs ({accepted} accepted, {rejected} rejected, {} panicked), slowest {:.1} ms, peak {:.2} MiB (cap {} MiB)",
        accepted + rejected + failures.len() as u64,
        failures.len(),
        slowest.as_secs_f64() * 1e3,
        peak as f64 / (1 << 20) as f64,
        CAP >> 20,
    );
    assert!(failures.is_empty(), "fuzz {name}:\n{}", failures.join("\n"));
}

/// FNV-1a, so each target draws its own stream from one seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

// ---- the targets -----------------------------------------------------------------------------

const CHAR_VOCAB: usize = 65;

fn tiny_config() -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        block_size: 16,
        vocab_size: 50,
        pad_vocab: true,
        bias: true,
        dropout: 0.0,
        arch: Default::default(),
    }
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| (i * 7 % CHAR_VOCAB) as u32).collect()
}

fn raw_u16(tokens: &[u32]) -> Vec<u8> {
    tokens
        .iter()
        .flat_map(|&t| (t as u16).to_le_bytes())
        .collect()
}

fn shard(tokens: &[u32]) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[..3].copy_from_slice(&[20240520, 1, tokens.len() as i32]);
    let mut bytes: Vec<u8> = header.iter().flat_map(|i| i.to_le_bytes()).collect();
    bytes.extend(raw_u16(tokens));
    bytes
}

/// Opens the split the way training does and draws a batch from it.
fn read_split(dir: &Path) -> anyhow::Result<()> {
    let split = TokenSplit::open(dir, "train", CHAR_VOCAB)?;
    if split.len() > 8 {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        split.get_batch_into(&mut Rng::new(1), 4, 8, &mut x, &mut y)?;
        assert!(x.iter().all(|&t| (t as usize) < CHAR_VOCAB));
    }
    Ok(())
}

fn parent(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("."))
}

fn reader_opts() -> ReaderOptions {
    ReaderOptions {
        text_field: "text".into(),
        piece_bytes: 64,
        batch_bytes: 256,
        first_doc: 0,
        end_doc: None,
    }
}

fn read_corpus(file: &Path, kind: InputKind, bytes: &[u8]) -> anyhow::Result<()> {
    let input = InputFile {
        path: file.to_path_buf(),
        kind,
        bytes: bytes.len() as u64,
    };
    for batch in CorpusReader::new(vec![input], reader_opts()) {
        batch?;
    }
    Ok(())
}

fn write_parquet(path: &Path, docs: &[Option<&str>], compression: parquet::basic::Compression) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message doc { required int64 id; optional binary text (UTF8); }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_size_limit(256)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for group in docs.chunks(3) {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..group.len() as i64).collect();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = group
            .iter()
            .flatten()
            .map(|s| ByteArray::from(*s))
            .collect();
        let defs: Vec<i16> = group.iter().map(|d| d.is_some() as i16).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

#[test]
fn fuzz_token_files() {
    fuzz(Target {
        name: "token_file",
        file: "train.bin",
        setup: |_| vec![raw_u16(&tokens(300)), raw_u16(&tokens(9)), Vec::new()],
        parse: |file, _| read_split(parent(file)),
        regressions: &[],
    });
}

#[test]
fn fuzz_shard_headers() {
    fuzz(Target {
        name: "shard_header",
        file: "train_000000.bin",
        setup: |_| vec![shard(&tokens(300)), shard(&tokens(9)), shard(&[])],
        parse: |file, _| read_split(parent(file)),
        regressions: &[],
    });
}

#[test]
fn fuzz_dataset_json() {
    fuzz(Target {
        name: "dataset_json",
        file: "dataset.json",
        setup: |dir| {
            let pending = ["train.bin", "val.bin"]
                .iter()
                .map(|n| write_tokens_pending(&dir.join(n), &tokens(100), TokenFormat::RawU16))
                .collect::<anyhow::Result<Vec<_>>>()
                .unwrap();
            stage(dir, pending).unwrap().commit().unwrap();
            vec![std::fs::read(dir.join("dataset.json")).unwrap()]
        },
        parse: |file, _| read_split(parent(file)),
        regressions: &[],
    });
}

#[test]
fn fuzz_safetensors() {
    fuzz(Target {
        name: "safetensors",
        file: "model.safetensors",
        setup: |dir| {
            save_hf_dir(&Gpt::new(tiny_config(), 1).unwrap(), dir).unwrap();
            vec![std::fs::read(dir.join("model.safetensors")).unwrap()]
        },
        parse: |file, _| load_model_file(file, tiny_config()).map(drop),
        regressions: &[],
    });
}

#[test]
fn fuzz_config_json() {
    fuzz(Target {
        name: "config_json",
        file: "config.json",
        setup: |dir| {
            save_hf_dir(&Gpt::new(tiny_config(), 1).unwrap(), dir).unwrap();
            vec![std::fs::read(dir.join("config.json")).unwrap()]
        },
        parse: |file, _| load_hf_dir(parent(file)).map(drop),
        // n_positions 2^32 - 1: a 137 GB parameter buffer for a 7 KB file; n_embd 1e12: the
        // parameter count overflowed ("capacity overflow" panic).
        regressions: &[
            include_bytes!("data/fuzz/config_json_huge_positions.json"),
            include_bytes!("data/fuzz/config_json_huge_embd.json"),
        ],
    });
}

#[test]
fn fuzz_meta_json() {
    fuzz(Target {
        name: "meta_json",
        file: "meta.json",
        setup: |_| {
            let text =
                "First Citizen:\nBefore we proceed any further, hear me speak.\n\u{e9}\u{1F600}";
            vec![CharVocab::from_text(text).to_meta_json().into_bytes()]
        },
        parse: |file, _| CharVocab::load(file).map(drop),
        regressions: &[],
    });
}

#[test]
fn fuzz_meta_pkl() {
    fuzz(Target {
        name: "meta_pkl",
        file: "meta.pkl",
        setup: |_| {
            vec![
                include_bytes!("data/shakespeare_char_meta.pkl").to_vec(),
                include_bytes!("data/unicode_meta_p2.pkl").to_vec(),
            ]
        },
        parse: |file, _| CharVocab::load(file).map(drop),
        regressions: &[],
    });
}

#[test]
fn fuzz_toml_configs() {
    fuzz(Target {
        name: "toml",
        file: "config.toml",
        setup: |_| {
            [
                include_str!("../config/train_shakespeare_char.toml"),
                include_str!("../config/finetune_shakespeare.toml"),
                include_str!("../config/train_gpt2.toml"),
            ]
            .map(|s| s.as_bytes().to_vec())
            .to_vec()
        },
        parse: |file, _| TrainConfig::from_file(file)?.validate(),
        regressions: &[],
    });
}

#[test]
fn fuzz_overrides() {
    fuzz(Target {
        name: "overrides",
        file: "args.txt",
        setup: |_| {
            vec![
                b"--max_iters=10\n--learning_rate=6e-4\n--device=cpu\n--dataset='shakespeare_char'\n--batch_size\n4\n--compile=False\n--decay_lr=True".to_vec(),
                b"--eval_iters=20\n--grad_clip=1.0\n--dropout=0.2\n--init_from=\"gpt2\"\n--out_dir=out".to_vec(),
            ]
        },
        parse: |_, bytes| {
            let text = String::from_utf8_lossy(bytes);
            let args: Vec<String> = text.split('\n').map(String::from).collect();
            let mut cfg = TrainConfig::default();
            cfg.apply_overrides(&args)?;
            cfg.validate()
        },
        regressions: &[],
    });
}

#[test]
fn fuzz_json_lines() {
    fuzz(Target {
        name: "jsonl",
        file: "docs.jsonl",
        setup: |_| {
            vec![
                b"{\"text\": \"Hello, world.\", \"id\": 1}\n\n{\"id\": 2, \"text\": \"caf\\u00e9 \\ud83d\\ude00 a longer document that gets cut into pieces, more than sixty-four bytes of it\"}\n".to_vec(),
                b"\xEF\xBB\xBF{\"text\": \"lone \\ud800 surrogate\"}\r\n{\"text\": \"\"}".to_vec(),
            ]
        },
        parse: |file, bytes| read_corpus(file, InputKind::JsonLines, bytes),
        regressions: &[],
    });
}

#[test]
fn fuzz_parquet() {
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};
    fuzz(Target {
        name: "parquet",
        file: "docs.parquet",
        setup: |dir| {
            let docs = [
                Some("Hello, world."),
                None,
                Some("caf\u{e9} \u{1F600} a longer document that gets cut into pieces, more than sixty-four bytes of it"),
                Some(""),
                Some("the last one"),
            ];
            let path = dir.join("seed.parquet");
            [
                Compression::UNCOMPRESSED,
                Compression::SNAPPY,
                Compression::ZSTD(ZstdLevel::default()),
                Compression::GZIP(GzipLevel::default()),
            ]
            .into_iter()
            .map(|c| {
                write_parquet(&path, &docs, c);
                std::fs::read(&path).unwrap()
            })
            .collect()
        },
        parse: |file, bytes| read_corpus(file, InputKind::Parquet, bytes),
        // A damaged page: the parquet crate's bit reader indexed past its slice.
        regressions: &[include_bytes!("data/fuzz/parquet_bit_util_panic.parquet")],
    });
}

/// A Llama small enough that its llama2.c file fits a fuzz input (tied and untied).
fn tiny_llama(shared_classifier: bool) -> nanogpt::llama::weights::Llama {
    use nanogpt::llama::config::LlamaConfig;
    use nanogpt::llama::weights::{Llama, LlamaTable};
    let config = LlamaConfig {
        dim: 16,
        hidden_dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 32,
        seq_len: 16,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        shared_classifier,
    };
    let table = LlamaTable::new(&config).unwrap();
    let params = (0..table.total)
        .map(|i| (i % 17) as f32 * 0.01 - 0.08)
        .collect();
    Llama {
        config,
        table,
        params,
    }
}

fn llama_fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/llama");
    std::fs::read(path.join(name)).unwrap()
}

#[test]
fn fuzz_llama2c_files() {
    fuzz(Target {
        name: "llama2c",
        file: "model.bin",
        setup: |dir| {
            let mut seeds = Vec::new();
            for tied in [false, true] {
                let path = dir.join("seed.bin");
                nanogpt::llama::llama2c::write_llama2c_v1(&tiny_llama(tied), &path).unwrap();
                seeds.push(std::fs::read(&path).unwrap());
            }
            // v2 (Q8_0): the fixture's tied model is small enough to seed with.
            seeds.push(llama_fixture("tiny-llama-tied.v2.bin"));
            seeds
        },
        parse: |file, _| nanogpt::llama::llama2c::read_llama2c(file).map(drop),
        regressions: &[],
    });
}

#[test]
fn fuzz_llama_tokenizer_bin() {
    fuzz(Target {
        name: "llama_tokenizer_bin",
        file: "tokenizer.bin",
        setup: |_| vec![llama_fixture("tok512.bin")],
        parse: |file, _| {
            let tok = nanogpt::llama::tokenizer::LlamaTokenizer::read_bin(file, 512)?;
            tok.encode_runc("First Citizen: 3 \u{e9}");
            Ok(())
        },
        regressions: &[],
    });
}

#[test]
fn fuzz_llama_tokenizer_model() {
    fuzz(Target {
        name: "llama_tokenizer_model",
        file: "tokenizer.model",
        setup: |_| vec![llama_fixture("tok512.model")],
        parse: |file, _| {
            let tok = nanogpt::llama::tokenizer::LlamaTokenizer::read_model(file)?;
            let ids = tok.encode_sentencepiece("  First  Citizen: 3 \u{e9}");
            tok.decode_sentencepiece(&ids).map(drop)
        },
        regressions: &[],
    });
}

/// A panic the parquet crate makes on a damaged file is caught and reported as one error line:
/// through the binary, with backtraces asked for, stderr holds only that line.
#[test]
fn a_parquet_decoder_panic_is_one_error_line() {
    let dir = TempDir::new("fuzz", "panic");
    let input = dir.join("damaged.parquet");
    std::fs::write(
        &input,
        include_bytes!("data/fuzz/parquet_bit_util_panic.parquet"),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanogpt"))
        .args(["prepare", "text", "--name=ds", "--data_dir"])
        .arg(dir.join("data"))
        .arg("--input")
        .arg(&input)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run nanogpt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.lines().count() == 1
            && stderr.starts_with("error: ")
            && stderr.contains("damaged.parquet")
            && stderr.contains("decoder failed")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

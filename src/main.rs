//! The `nanogpt` command line: parses arguments and calls the library, nothing else.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nanogpt::arithmetic::{prepare_arithmetic, ArithmeticOptions, Format, Op};
use nanogpt::bench::{run_generate_bench, run_train_bench, BenchOptions};
use nanogpt::config::GptConfig;
use nanogpt::train::TrainConfig;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "nanogpt",
    version,
    about = "nanoGPT rebuilt in Rust: train, fine-tune and sample GPT-2-family models"
)]
struct Cli {
    /// Worker threads (default: all cores; RAYON_NUM_THREADS also works).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// nanoGPT spells booleans True/False; accept those and true/false.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got '{s}'")),
    }
}

/// The char-rnn tiny Shakespeare text that nanoGPT downloads.
const TINY_SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

#[derive(Subcommand)]
enum Command {
    /// Prepare a dataset into data/<name>/ (train.bin, val.bin, and meta.json for characters).
    Prepare {
        #[command(subcommand)]
        dataset: PrepareCommand,
    },
    /// The main job, no network needed: prepare arithmetic problems, train a small GPT on them
    /// (a few minutes on 2 cores), and show its accuracy on problems it never saw.
    Quickstart {
        #[arg(long = "out_dir", default_value = "out-arithmetic")]
        out_dir: PathBuf,
        #[arg(long = "data_dir", default_value = "data")]
        data_dir: PathBuf,
        /// Training overrides, e.g. --max_iters=500 (see config/arithmetic.toml).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "--key=value"
        )]
        overrides: Vec<String>,
    },
    /// Draw OUT_DIR/metrics.jsonl (loss, learning rate, tokens/s) to OUT_DIR/metrics.png.
    Plot { out_dir: PathBuf },
    /// Evaluate a trained model.
    Eval {
        #[command(subcommand)]
        task: EvalCommand,
    },
    /// Train a GPT: nanoGPT's train.py. `nanogpt train config/train_shakespeare_char.toml --max_iters=2000`
    Train {
        /// A TOML config file, then --key=value overrides (nanoGPT's knob names).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CONFIG] [--key=value"
        )]
        args: Vec<String>,
    },
    /// Time forward + backward + AdamW on random data (nanoGPT's bench.py).
    Bench {
        #[arg(long = "n_layer", default_value_t = 12)]
        n_layer: usize,
        #[arg(long = "n_head", default_value_t = 12)]
        n_head: usize,
        #[arg(long = "n_embd", default_value_t = 768)]
        n_embd: usize,
        #[arg(long = "block_size", default_value_t = 1024)]
        block_size: usize,
        #[arg(long = "batch_size", default_value_t = 12)]
        batch_size: usize,
        #[arg(long = "vocab_size", default_value_t = 50304)]
        vocab_size: usize,
        /// Round the vocabulary up to a multiple of 64.
        #[arg(long = "pad_vocab", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
        pad_vocab: bool,
        #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
        bias: bool,
        #[arg(long, default_value_t = 0.0)]
        dropout: f32,
        /// Timed iterations (the median is reported).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Untimed iterations first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// Peak TFLOP/s for MFU (default: measured f32 matmul peak of this CPU).
        #[arg(long = "peak_tflops")]
        peak_tflops: Option<f64>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Time greedy generation with the KV cache instead of training.
        #[arg(long)]
        generate: bool,
        /// Prompt tokens for --generate.
        #[arg(long = "prompt_len", default_value_t = 16)]
        prompt_len: usize,
        /// New tokens for --generate.
        #[arg(long = "max_new_tokens", default_value_t = 128)]
        max_new_tokens: usize,
    },
    /// Generate text from a checkpoint or GPT-2, streamed (nanoGPT's sample.py; --json for scripts).
    Sample(nanogpt::sample::cli::SampleArgs),
    /// Measure how much decoding settings repeat themselves (rep-n, distinct-n, loops) as a table.
    Repetition(nanogpt::sample::cli::RepetitionArgs),
}

#[derive(Subcommand)]
enum PrepareCommand {
    /// Tiny Shakespeare by character (nanoGPT's data/shakespeare_char).
    #[command(name = "shakespeare_char")]
    ShakespeareChar(ShakespeareArgs),
    /// Tiny Shakespeare with GPT-2 BPE (nanoGPT's data/shakespeare).
    Shakespeare(ShakespeareArgs),
    /// Arithmetic problems (+ - * /), character level, with a held-out test set.
    Arithmetic(ArithmeticArgs),
    /// Your own text: files or folders of .txt (one document each), .jsonl and .parquet (one per
    /// line / row).
    Text(TextArgs),
    /// OpenWebText (or any Hugging Face text dataset) streamed shard by shard with GPT-2 BPE:
    /// about one shard of extra disk, resumable (rerun the same command after an interruption).
    Openwebtext(OpenWebTextArgs),
}

#[derive(clap::Args)]
struct OpenWebTextArgs {
    /// The Hugging Face dataset (owner/name) whose parquet files to stream.
    #[arg(long, default_value = "Skylion007/openwebtext")]
    dataset: String,
    /// Branch, tag or commit of the dataset [default: main, else refs/convert/parquet].
    #[arg(long)]
    revision: Option<String>,
    /// The dataset split whose files to read.
    #[arg(long, default_value = "train")]
    split: String,
    /// Only the files under this folder of the dataset (a configuration, e.g. plain_text).
    #[arg(long)]
    subset: Option<String>,
    /// Use these parquet / .jsonl / .txt files or folders instead of downloading.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    #[command(flatten)]
    out: TokenOutputArgs,
    /// Tokenizing threads [default: all cores].
    #[arg(long = "num_proc")]
    num_proc: Option<usize>,
    /// Only the first N documents (a quick try).
    #[arg(long = "max_docs")]
    max_docs: Option<u64>,
    /// Forget an earlier (unfinished or finished) run in the output folder and start over.
    #[arg(long)]
    restart: bool,
    /// The dataset's name under data_dir.
    #[arg(long, default_value = "openwebtext")]
    name: String,
}

/// What `prepare text` and `prepare openwebtext` share: documents in, token files out.
#[derive(clap::Args)]
struct TokenOutputArgs {
    /// The JSON field or parquet column that holds each document's text.
    #[arg(long = "text_field", default_value = "text")]
    text_field: String,
    /// Share of documents (chosen by a seeded hash of the document's index) for val.bin.
    #[arg(long = "val_fraction", default_value_t = 0.0005)]
    val_fraction: f64,
    #[arg(long, default_value_t = 2357)]
    seed: u64,
    /// Write llm.c shards of this many tokens instead of train.bin / val.bin.
    #[arg(long = "shard_tokens")]
    shard_tokens: Option<usize>,
    #[arg(long = "data_dir", default_value = "data")]
    data_dir: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TextArgs {
    /// Files or folders (walked recursively: *.txt, *.jsonl, *.parquet).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// gpt2 (BPE, <|endoftext|> after each document) or char (vocabulary from the text).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    #[command(flatten)]
    out: TokenOutputArgs,
    /// The dataset's name under data_dir.
    #[arg(long, default_value = "text")]
    name: String,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Exact-match accuracy on the held-out arithmetic problems, per operation and length.
    Arithmetic {
        /// The training run's out_dir (its best/ checkpoint, else latest/).
        #[arg(long = "out_dir", default_value = "out-arithmetic")]
        out_dir: PathBuf,
        #[arg(long = "data_dir", default_value = "data")]
        data_dir: PathBuf,
        /// The dataset's name under data_dir.
        #[arg(long, default_value = "arithmetic")]
        name: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ShakespeareArgs {
    /// The text to prepare; without it, tiny Shakespeare is downloaded to <dataset>/input.txt.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to download tiny Shakespeare from.
    #[arg(long, default_value = TINY_SHAKESPEARE_URL)]
    url: String,
    /// Put <dataset>/ under this directory instead of data/.
    #[arg(long = "data_dir", default_value = "data")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct ArithmeticArgs {
    /// Operations, e.g. "+-" or "+-*/".
    #[arg(long, default_value = "+-")]
    ops: String,
    /// plain (123+45=168), reversed (answer digits least significant first: 123+45=861) or
    /// scratchpad (reversed, with multiplication's partial products written out).
    #[arg(long, default_value = "reversed")]
    format: String,
    #[arg(long = "min_digits", default_value_t = 1)]
    min_digits: usize,
    #[arg(long = "max_digits", default_value_t = 3)]
    max_digits: usize,
    /// Largest divisor length in digits.
    #[arg(long = "max_divisor_digits", default_value_t = 2)]
    max_divisor_digits: usize,
    /// Training problems per operation.
    #[arg(long = "train_per_op", default_value_t = 100_000)]
    train_per_op: usize,
    /// Held-out test problems per operation.
    #[arg(long = "test_per_op", default_value_t = 1000)]
    test_per_op: usize,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// The dataset's name under data_dir.
    #[arg(long, default_value = "arithmetic")]
    name: String,
    #[arg(long = "data_dir", default_value = "data")]
    data_dir: PathBuf,
}

#[global_allocator]
static ALLOCATOR: nanogpt::perf::CountingAlloc = nanogpt::perf::CountingAlloc;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    nanogpt::perf::keep_large_allocations_in_heap();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot set up the thread pool")?;
    }
    match cli.command {
        Command::Prepare { dataset } => prepare(dataset)?,
        Command::Sample(args) => {
            nanogpt::sample::cli::run_sample(
                &args,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
        }
        Command::Repetition(args) => {
            nanogpt::sample::cli::run_repetition(
                &args,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )?;
        }
        Command::Plot { out_dir } => {
            let (png, summary) = nanogpt::plot::plot_out_dir(&out_dir)?;
            println!("wrote {}: {summary}", png.display());
        }
        Command::Quickstart {
            out_dir,
            data_dir,
            overrides,
        } => {
            let stop = ctrl_c_flag("finishing this iteration, then saving a checkpoint")?;
            let mut log = LiveLog::new();
            let report = nanogpt::arithmetic::quickstart::quickstart(
                &data_dir, &out_dir, &overrides, &mut log, &stop,
            )?;
            println!();
            print_arithmetic_report(&report);
            println!("\nThe model is in {}/best (transformers can open it); evaluate again with `nanogpt eval arithmetic --out_dir={}`.", out_dir.display(), out_dir.display());
        }
        Command::Eval {
            task:
                EvalCommand::Arithmetic {
                    out_dir,
                    data_dir,
                    name,
                    json,
                },
        } => {
            let (model, _) = nanogpt::train::checkpoint::load_trained_model(&out_dir)?;
            let engine = nanogpt::engine::open(model, nanogpt::engine::Device::Auto)?;
            let report =
                nanogpt::arithmetic::eval::evaluate(engine.as_ref(), &data_dir.join(name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_arithmetic_report(&report);
            }
        }
        Command::Train { args } => {
            let mut cfg = TrainConfig::default();
            let overrides = match args.first() {
                Some(first) if !first.starts_with("--") => {
                    cfg.apply_file(std::path::Path::new(first))?;
                    &args[1..]
                }
                _ => &args[..],
            };
            cfg.apply_overrides(overrides)?;
            let stop = ctrl_c_flag("finishing this iteration, then saving a checkpoint")?;
            let mut out = std::io::stdout();
            nanogpt::train::train(&cfg, &mut out, &stop)?;
        }
        Command::Bench {
            n_layer,
            n_head,
            n_embd,
            block_size,
            batch_size,
            vocab_size,
            pad_vocab,
            bias,
            dropout,
            iters,
            warmup,
            seed,
            peak_tflops,
            json,
            generate,
            prompt_len,
            max_new_tokens,
        } => {
            let config = GptConfig {
                n_layer,
                n_head,
                n_embd,
                block_size,
                vocab_size,
                pad_vocab,
                bias,
                dropout,
            };
            if iters == 0 {
                anyhow::bail!("--iters must be at least 1");
            }
            let opts = BenchOptions {
                config,
                batch_size,
                warmup,
                iters,
                seed,
                peak_tflops,
            };
            if generate {
                let r = run_generate_bench(&opts, prompt_len, max_new_tokens)?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "generate B={} prompt={} new={}: {:.1} tokens/s ({:.2} ms/token, prompt pass {:.1} ms), {} threads, peak RSS {:.0} MiB",
                        r.batch_size, r.prompt_len, r.max_new_tokens, r.tokens_per_s, r.ms_per_token, r.prompt_ms, r.threads, r.peak_rss_mib.unwrap_or(f64::NAN)
                    );
                }
                return Ok(());
            }
            let r = run_train_bench(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "peak: {:.1} GFLOP/s ({}), {} threads",
                    r.peak_tflops * 1e3,
                    r.peak_source,
                    r.threads
                );
                println!(
                    "{:.2}M params, B={} T={}: {:.1} ms/iter (min {:.1}), {:.0} tokens/s, MFU {:.1}%, peak RSS {:.0} MiB",
                    r.params as f64 / 1e6, r.batch_size, r.config.block_size, r.ms_per_iter, r.ms_per_iter_min, r.tokens_per_s, r.mfu * 100.0, r.peak_rss_mib.unwrap_or(f64::NAN)
                );
            }
        }
    }
    Ok(())
}

fn prepare(dataset: PrepareCommand) -> Result<()> {
    match dataset {
        PrepareCommand::ShakespeareChar(args) => prepare_shakespeare("shakespeare_char", args)?,
        PrepareCommand::Shakespeare(args) => prepare_shakespeare("shakespeare", args)?,
        PrepareCommand::Text(args) => {
            let mut opts = nanogpt::data::TextPrepareOptions::new(
                args.input,
                args.out.data_dir.join(&args.name),
            );
            opts.tokenizer = args.tokenizer.parse()?;
            opts.text_field = args.out.text_field;
            opts.val_fraction = args.out.val_fraction;
            opts.seed = args.out.seed;
            opts.shard_tokens = args.out.shard_tokens;
            let summary = nanogpt::data::prepare_text(&opts)?;
            for warning in summary.warnings() {
                eprintln!("warning: {warning}");
            }
            if args.out.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{}: {} documents, {} train tokens, {} val tokens, {:.1} MB/s",
                    opts.out_dir.display(),
                    summary.documents,
                    summary.train_tokens,
                    summary.val_tokens,
                    summary.mb_per_s
                );
            }
        }
        PrepareCommand::Openwebtext(args) => prepare_openwebtext(args)?,
        PrepareCommand::Arithmetic(args) => {
            let ops = args
                .ops
                .chars()
                .map(|c| {
                    Op::from_symbol(c)
                        .with_context(|| format!("--ops: '{c}' is not one of + - * /"))
                })
                .collect::<Result<Vec<_>>>()?;
            let format = Format::parse(&args.format).with_context(|| {
                format!(
                    "--format: '{}' is not plain, reversed or scratchpad",
                    args.format
                )
            })?;
            let opts = ArithmeticOptions {
                ops,
                format,
                min_digits: args.min_digits,
                max_digits: args.max_digits,
                max_divisor_digits: args.max_divisor_digits,
                train_per_op: args.train_per_op,
                test_per_op: args.test_per_op,
                seed: args.seed,
            };
            let out = args.data_dir.join(&args.name);
            let s = prepare_arithmetic(&opts, &out)?;
            println!(
                "{}: {} training problems ({} tokens), {} held-out test problems, {} longer (out-of-distribution) ones",
                out.display(),
                s.train_problems,
                s.train_tokens,
                s.test_problems,
                s.ood_problems
            );
        }
    }
    Ok(())
}

fn prepare_openwebtext(args: OpenWebTextArgs) -> Result<()> {
    use nanogpt::data::hub::HubDataset;
    use nanogpt::data::{StreamPrepareOptions, StreamSource};
    use nanogpt::hf::Hub;
    let source = if !args.input.is_empty() {
        StreamSource::Local(args.input)
    } else {
        let hub = Hub::from_env();
        if hub.offline {
            anyhow::bail!("HF_HUB_OFFLINE is set, so {} cannot be downloaded: pass --input DIR with its parquet files", args.dataset);
        }
        if args.dataset.split('/').count() != 2 {
            anyhow::bail!("--dataset: '{}' is not owner/name", args.dataset);
        }
        StreamSource::Hub(HubDataset {
            endpoint: hub.endpoint,
            repo: args.dataset,
            revision: args.revision,
            split: args.split,
            subset: args.subset,
            token: hub.token,
        })
    };
    let mut opts = StreamPrepareOptions::new(source, args.out.data_dir.join(&args.name));
    opts.text_field = args.out.text_field;
    opts.val_fraction = args.out.val_fraction;
    opts.seed = args.out.seed;
    opts.shard_tokens = args.out.shard_tokens;
    opts.num_threads = args.num_proc;
    opts.max_docs = args.max_docs;
    opts.restart = args.restart;
    let stop = ctrl_c_flag("stopping after this batch; the files done so far are kept")?;
    let s = nanogpt::data::prepare_stream(&opts, &stop)?;
    for warning in s.warnings() {
        eprintln!("warning: {warning}");
    }
    if args.out.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if s.already_complete {
        println!(
            "{} is already prepared ({} documents, {} train tokens, {} val tokens); pass --restart to prepare it again",
            s.out_dir.display(),
            s.documents,
            s.train_tokens,
            s.val_tokens
        );
    } else {
        println!(
            "{}: {} documents from {} files, {} train tokens, {} val tokens; {:.1} MB of text at {:.1} MB/s on {} threads",
            s.out_dir.display(),
            s.documents,
            s.sources,
            s.train_tokens,
            s.val_tokens,
            s.text_bytes as f64 / 1e6,
            s.text_mb_per_s,
            s.threads
        );
    }
    Ok(())
}

fn prepare_shakespeare(name: &str, args: ShakespeareArgs) -> Result<()> {
    let out = args.data_dir.join(name);
    let input = match args.input {
        Some(path) => path,
        None => {
            let path = out.join("input.txt");
            if !path.is_file() {
                eprintln!("downloading tiny Shakespeare to {}", path.display());
                nanogpt::download::download(
                    &args.url,
                    &path,
                    "download input.txt yourself and pass --input=path/to/input.txt",
                )?;
            }
            path
        }
    };
    let summary = if name == "shakespeare_char" {
        nanogpt::data::prepare_shakespeare_char(&input, &out)?
    } else {
        nanogpt::data::prepare_shakespeare_bpe(&input, &out)?
    };
    println!(
        "{}: vocab {}, {} train tokens, {} val tokens",
        out.display(),
        summary.vocab_size,
        summary.train_tokens,
        summary.val_tokens
    );
    Ok(())
}

fn print_arithmetic_report(report: &nanogpt::arithmetic::eval::ArithmeticReport) {
    use nanogpt::arithmetic::eval::markdown_table;
    println!(
        "Held-out problems, exact match by operand length (format: {:?}):\n",
        report.format
    );
    print!("{}", markdown_table(&report.test));
    if !report.ood.accuracy.is_empty() {
        println!("\nOut of distribution (one digit longer than training):\n");
        print!("{}", markdown_table(&report.ood));
    }
    println!("\nIt answers problems it never saw (what it wrote, then the value that means):");
    for e in &report.examples {
        let value = e.got_value.as_deref().unwrap_or("unreadable");
        if e.correct {
            println!("  right  {}{}  -> {value}", e.prompt, e.got);
        } else {
            println!(
                "  WRONG  {}{}  -> {value}, should be {} ({})",
                e.prompt, e.got, e.expected_value, e.expected
            );
        }
    }
}

/// A flag that Ctrl-C sets: training finishes its iteration, saves and stops. A second Ctrl-C
/// quits at once.
/// A flag the first Ctrl-C sets (after printing `what_now`, what the command does about it);
/// a second Ctrl-C exits at once.
fn ctrl_c_flag(what_now: &'static str) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || {
        if handler_stop.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting now");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: {what_now} (Ctrl-C again to quit now)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// Training output for a terminal: the per-iteration lines rewrite one live status line; every
/// other line (evaluations, checkpoints) is printed normally. Not a terminal: lines pass through.
struct LiveLog {
    line: Vec<u8>,
    live: bool,
    tty: bool,
}

impl LiveLog {
    fn new() -> LiveLog {
        use std::io::IsTerminal;
        LiveLog {
            line: Vec::new(),
            live: false,
            tty: std::io::stdout().is_terminal(),
        }
    }
}

impl std::io::Write for LiveLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        for &byte in buf {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&self.line).into_owned();
            if self.tty && text.starts_with("iter ") {
                write!(out, "\r\x1b[2K{text}")?;
                self.live = true;
            } else {
                if self.live {
                    write!(out, "\r\x1b[2K")?;
                    self.live = false;
                }
                writeln!(out, "{text}")?;
            }
            self.line.clear();
        }
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

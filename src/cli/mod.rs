//! The `nanogpt` command line: parses arguments and calls the library, nothing else. The flags of
//! `train`, `sample`, `repetition` and `bench` come from the library's settings tables
//! ([`knobs`]); `prepare`'s are in [`prepare`].

mod knobs;
mod launch;
mod output;
mod prepare;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use knobs::Knobs;
use nanogpt::bench::{run_generate_bench, run_train_bench, BenchArgs};
use nanogpt::engine::{Device, InferenceWeights};
use nanogpt::sample::{RepetitionArgs, SampleArgs};
use nanogpt::train::TrainConfig;
use output::{print_arithmetic_report, Interrupt, LiveLog, Tolerant};
use prepare::{prepare, PrepareCommand};
use std::path::PathBuf;

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
    /// (add `--dashboard [--dashboard_port=8000]` to watch it live in a browser)
    #[command(after_help = knobs::overrides_help::<TrainConfig>())]
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
    Bench(Knobs<BenchArgs>),
    /// Generate text from a checkpoint or GPT-2, streamed (nanoGPT's sample.py; --json for scripts).
    Sample(Knobs<SampleArgs>),
    /// Write a model as a Hugging Face directory or (a Llama) as llama2.c's .bin:
    /// `nanogpt export --init_from=out-llama --format=llama2c --out=model.bin`
    Export(Knobs<nanogpt::export::ExportArgs>),
    /// Measure how much decoding settings repeat themselves (rep-n, distinct-n, loops) as a table.
    Repetition(Knobs<RepetitionArgs>),
    /// Serve a model: an OpenAI-compatible API with continuous batching, a web playground and
    /// a training dashboard (--watch=OUT_DIR). `nanogpt serve --init_from=gpt2 --port 8000`
    Serve(Knobs<nanogpt::serve::ServeArgs>),
    /// Start the ranks of a data-parallel run (torchrun's flags): `nanogpt launch
    /// --nproc_per_node=2 -- train config/x.toml`.
    Launch(launch::LaunchArgs),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Exact-match accuracy on the held-out arithmetic problems, per operation and length.
    Arithmetic {
        /// The training run's out_dir (its best/ checkpoint, else latest/).
        #[arg(long = "out_dir", default_value = "out-arithmetic")]
        out_dir: PathBuf,
        /// Where the dataset is (default: the data_dir the model was trained with).
        #[arg(long = "data_dir")]
        data_dir: Option<PathBuf>,
        /// The dataset's name under data_dir (default: the dataset the model was trained on).
        #[arg(long)]
        name: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// cpu, cuda or auto (a GPU when there is one).
        #[arg(long, default_value_t = Device::Auto)]
        device: Device,
        /// float32, bfloat16 or int8: the weights the answers are generated with.
        #[arg(long, default_value_t = InferenceWeights::F32)]
        dtype: InferenceWeights,
    },
}

/// Far more threads than cores only adds switching (5000 took minutes where the cores alone take
/// seconds): `--threads` is capped at 4x the cores, with a note on stderr.
fn capped_threads(requested: usize, cores: usize) -> usize {
    let cap = 4 * cores;
    if requested <= cap {
        return requested;
    }
    eprintln!(
        "note: --threads={requested} is more than 4x this machine's {cores} cores; using {cap}"
    );
    cap
}

/// Parses the command line and runs the command. Returns the exit status: 0, or 128 + the
/// signal that stopped a training run early.
pub fn run() -> Result<i32> {
    let cli = Cli::parse();
    nanogpt::perf::keep_large_allocations_in_heap();
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let n = capped_threads(n, cores);
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot set up the thread pool")?;
    }
    match cli.command {
        Command::Prepare { dataset } => prepare(dataset)?,
        Command::Sample(flags) => {
            let args = flags.parse()?;
            nanogpt::sample::run_sample(&args, &mut std::io::stdout(), &mut std::io::stderr())?;
        }
        Command::Launch(args) => return launch::launch(args),
        Command::Export(flags) => println!("wrote {}", nanogpt::export::export(&flags.parse()?)?),
        Command::Serve(flags) => {
            nanogpt::serve::run_serve(&flags.parse()?, &mut std::io::stderr())?
        }
        Command::Repetition(flags) => {
            nanogpt::sample::run_repetition(
                &flags.parse()?,
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
            let interrupt =
                Interrupt::install("finishing this iteration, then saving a checkpoint")?;
            let mut log = Tolerant::new(LiveLog::new());
            let report = nanogpt::arithmetic::quickstart::quickstart(
                &data_dir,
                &out_dir,
                &overrides,
                &mut log,
                &interrupt.stop,
            )?;
            if interrupt.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(interrupt.exit_status());
            }
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
                    device,
                    dtype,
                },
        } => {
            let (model, state) = nanogpt::load::trained(&out_dir)?;
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(&state.train.data_dir));
            let name = name.unwrap_or(state.train.dataset);
            let mut engine = nanogpt::engine::open(model, device)?;
            engine.set_inference_weights(dtype)?;
            let report =
                nanogpt::arithmetic::eval::evaluate(engine.as_ref(), &data_dir.join(name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_arithmetic_report(&report);
            }
        }
        Command::Train { args } => {
            let (args, dashboard) = dashboard_flags(&args)?;
            let mut cfg = TrainConfig::default();
            let overrides = match args.first() {
                Some(first) if !first.starts_with("--") => {
                    cfg.apply_file(std::path::Path::new(first))?;
                    &args[1..]
                }
                _ => &args[..],
            };
            cfg.apply_overrides(overrides)?;
            if let Some(port) = dashboard {
                start_dashboard(std::path::Path::new(&cfg.out_dir), port)?;
            }
            let interrupt =
                Interrupt::install("finishing this iteration, then saving a checkpoint")?;
            let mut out = Tolerant::new(std::io::stdout());
            let summary = nanogpt::train::train(&cfg, &mut out, &interrupt.stop)?;
            if summary.stopped_by_user {
                return Ok(interrupt.exit_status());
            }
        }
        Command::Bench(flags) => bench(&flags.parse()?)?,
    }
    Ok(0)
}

/// `train ... --dashboard [--dashboard_port=N]`: the training arguments without them, and the
/// dashboard's port when asked for.
fn dashboard_flags(args: &[String]) -> Result<(Vec<String>, Option<usize>)> {
    let mut rest = Vec::new();
    let (mut on, mut port) = (false, 8000);
    for a in args {
        match a.as_str() {
            "--dashboard" | "--dashboard=true" => on = true,
            "--dashboard=false" => on = false,
            _ => match a.strip_prefix("--dashboard_port=") {
                Some(p) => {
                    port = p
                        .parse()
                        .with_context(|| format!("--dashboard_port={p}: expected a port number"))?
                }
                None => rest.push(a.clone()),
            },
        }
    }
    Ok((rest, on.then_some(port)))
}

/// Serves the run's dashboard (`nanogpt serve --watch=OUT_DIR`) beside the training, from the
/// first rank only; a server that cannot start is reported and training goes on.
fn start_dashboard(out_dir: &std::path::Path, port: usize) -> Result<()> {
    if std::env::var("RANK").is_ok_and(|r| r != "0") {
        return Ok(());
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create out_dir {}", out_dir.display()))?;
    let mut args = nanogpt::serve::ServeArgs {
        port,
        watch: Some(out_dir.to_path_buf()),
        ..Default::default()
    };
    args.model.out_dir = Some(out_dir.to_path_buf());
    std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            if let Err(e) = nanogpt::serve::run_serve(&args, &mut std::io::stderr()) {
                eprintln!("dashboard: {e:#} (training goes on without it)");
            }
        })
        .context("cannot start the dashboard thread")?;
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    let opts = args.options()?;
    if args.generate {
        let r = run_generate_bench(&opts, args.prompt_len, args.max_new_tokens)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "generate B={} prompt={} new={} ({} weights, {} KV cache): {:.1} tokens/s ({:.2} ms/token, prompt pass {:.1} ms); decoding alone {:.1} tokens/s; {} threads, peak RSS {:.0} MiB",
                r.batch_size, r.prompt_len, r.max_new_tokens, r.dtype, r.kv_cache_dtype, r.tokens_per_s, r.ms_per_token, r.prompt_ms, r.decode_tokens_per_s, r.threads, r.peak_rss_mib.unwrap_or(f64::NAN)
            );
        }
        return Ok(());
    }
    let r = run_train_bench(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "peak: {:.1} GFLOP/s ({}), {} threads",
            r.peak_tflops * 1e3,
            r.peak_source,
            r.threads
        );
        println!(
            "{:.2}M params, B={} T={}, {}: {:.1} ms/iter (min {:.1}), {:.0} tokens/s, MFU {:.1}%, peak RSS {:.0} MiB",
            r.params as f64 / 1e6, r.batch_size, r.config.block_size, r.dtype, r.ms_per_iter, r.ms_per_iter_min, r.tokens_per_s, r.mfu * 100.0, r.peak_rss_mib.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

//! `nanogpt serve`: an OpenAI-compatible HTTP API over one model, with continuous batching, a
//! web page (playground, compare, training dashboard) and Prometheus metrics. See
//! `docs/serve.md` for the API.
//!
//! Threads: the HTTP side is axum on a small tokio runtime and never computes; one engine
//! thread loads the model and runs [`scheduler::run`] (its forward passes use the rayon pool,
//! `--threads`); with `--watch`, one more thread samples each new checkpoint of the run.
//!
//! Files: `request` (a body to sampling settings), `chat` (messages to a prompt), `scheduler`
//! (slots and steps), `text` (streamed text: whole characters, stop strings held back), `http`
//! (routes and response shapes), `metrics`, `watch` (the dashboard's data), `web/index.html`.

mod chat;
mod http;
mod metrics;
mod request;
mod scheduler;
mod text;
mod watch;

use crate::engine::{self, Device, InferenceWeights, KvDtype};
use crate::load::{self, ModelSource};
use crate::sample::run::{dtype_weights, parse_dtype};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use chat::ChatTemplate;
use metrics::Metrics;
use scheduler::SeqJob;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use watch::Watch;

/// The web page, compiled in.
const INDEX_HTML: &str = include_str!("web/index.html");

crate::knobs! {
    /// `nanogpt serve`.
    #[derive(Clone, Debug)]
    pub struct ServeArgs [model: ModelSource] {
        {
            /// Address to listen on (loopback by default; 0.0.0.0 to share on the network)
            host: String = "127.0.0.1".into(),
            /// Port to listen on (0: any free port, printed at start)
            port: usize = 8000,
            /// Slots decoded together in one batch (continuous batching)
            parallel: usize = 4,
            /// Choices that may wait for a slot; more get 503 with Retry-After
            max_queue: usize = 64,
            /// Require `Authorization: Bearer KEY` on the API routes
            api_key: Option<String> = None,
            /// A file with the chat pattern of one message, e.g. `<|{role}|>\n{content}\n`
            /// [default: `{role}: {content}\n`]
            chat_template: Option<PathBuf> = None,
            /// A training run's out_dir: the dashboard shows its metrics.jsonl and samples of
            /// its checkpoints (and the model is its checkpoint, once there is one)
            watch: Option<PathBuf> = None,
            /// Prompt tokens prefilled per step, shared by new requests (a longer prompt takes
            /// several steps while the others keep decoding)
            prefill_chunk: usize = 512,
            /// Seconds between keep-alive comments on a stream that is waiting
            keep_alive: f64 = 5.0,
            /// cpu, cuda or auto (the CPU until the CUDA backend has passed its GPU check)
            device: Device = Device::Auto,
            /// float32, bfloat16 or int8: the weights every slot decodes with (as `sample
            /// --dtype`; bfloat16 reads half the bytes per token, int8 a quarter) [default:
            /// float32]
            dtype: Option<String> = None,
            /// float32, bfloat16 or int8: the keys and values the KV cache holds (bfloat16 reads
            /// half the bytes per token at depth, int8 a quarter) [default: the weights' dtype]
            kv_cache_dtype: Option<KvDtype> = None,
        }
    }
}

/// What the HTTP side knows once the model is loaded.
struct Ready {
    tok: Tokenizer,
    name: String,
    vocab_size: usize,
    block_size: usize,
    /// One message per request: its choices.
    jobs: Sender<Vec<SeqJob>>,
}

/// Why the model is not ready: still loading (with what it waits for), or failed for good.
#[derive(Clone, Debug)]
enum NotReady {
    Loading(Option<String>),
    Failed(String),
}

impl Server {
    fn not_ready(&self) -> NotReady {
        self.not_ready
            .lock()
            .map(|s| s.clone())
            .unwrap_or(NotReady::Loading(None))
    }

    fn set_not_ready(&self, state: NotReady) {
        if let Ok(mut s) = self.not_ready.lock() {
            *s = state;
        }
    }
}

struct Server {
    ready: OnceLock<Ready>,
    /// Why the model is not ready yet, while [`Server::ready`] is empty.
    not_ready: Mutex<NotReady>,
    metrics: Metrics,
    /// Choices admitted and not yet in a slot.
    waiting: AtomicU64,
    parallel: usize,
    max_queue: usize,
    api_key: Option<String>,
    template: ChatTemplate,
    keep_alive: Duration,
    watch: Option<Arc<Watch>>,
}

/// Runs the server until the process is stopped. `on_listen(address)` is called once the
/// port is open (the model may still be loading).
pub fn run_serve(args: &ServeArgs, err: &mut dyn Write) -> Result<()> {
    if args.parallel == 0 || args.parallel > 256 {
        bail!(
            "--parallel must be between 1 and 256, got {}",
            args.parallel
        );
    }
    let port = u16::try_from(args.port)
        .with_context(|| format!("--port must be at most 65535, got {}", args.port))?;
    if args.prefill_chunk == 0 {
        bail!("--prefill_chunk must be at least 1");
    }
    // A bad --dtype fails here, before the port opens, not later in the engine thread.
    if let Some(d) = args.dtype.as_deref() {
        parse_dtype(d)?;
    }
    if !(args.keep_alive > 0.0 && args.keep_alive.is_finite()) {
        bail!(
            "--keep_alive must be a positive number of seconds, got {}",
            args.keep_alive
        );
    }
    let template = match &args.chat_template {
        Some(path) => ChatTemplate::load(path)?,
        None => ChatTemplate::default(),
    };
    let mut source = args.model.clone();
    if let Some(dir) = &args.watch {
        if !dir.is_dir() {
            bail!(
                "--watch={}: no such directory: pass a training run's out_dir",
                dir.display()
            );
        }
        if source.out_dir.is_none() {
            source.out_dir = Some(dir.clone());
        }
    }
    let server = Arc::new(Server {
        ready: OnceLock::new(),
        not_ready: Mutex::new(NotReady::Loading(None)),
        metrics: Metrics::default(),
        waiting: AtomicU64::new(0),
        parallel: args.parallel,
        max_queue: args.max_queue,
        api_key: args.api_key.clone(),
        template,
        keep_alive: Duration::from_secs_f64(args.keep_alive),
        watch: args.watch.as_deref().map(|d| Arc::new(Watch::new(d))),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((args.host.as_str(), port)))
        .with_context(|| format!("cannot listen on {}:{port}: is another server using the port? pick another with --port", args.host))?;
    let addr = listener.local_addr()?;
    writeln!(
        err,
        "nanogpt serve: listening on http://{addr}/ (the model is loading)"
    )?;
    if let Some(w) = &server.watch {
        let w = w.clone();
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || watch::sample_checkpoints(w))?;
    }
    {
        let server = server.clone();
        let (device, waits) = (args.device, args.watch.is_some());
        let dtypes = (args.dtype.clone(), args.kv_cache_dtype);
        let shape = (args.parallel, args.prefill_chunk);
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine_thread(server, source, device, dtypes, shape, waits))?;
    }
    runtime
        .block_on(async { axum::serve(listener, http::router(server)).await })
        .context("the HTTP server stopped")
}

/// Loads the model (with `--watch`, once the run has a checkpoint) onto `device` with `dtype`'s
/// weights and `kv_cache_dtype`'s cache, then runs the scheduler; `(parallel, prefill_chunk)`
/// shape its batch.
fn engine_thread(
    server: Arc<Server>,
    source: ModelSource,
    device: Device,
    (dtype, kv_cache_dtype): (Option<String>, Option<KvDtype>),
    (parallel, prefill_chunk): (usize, usize),
    wait_for_checkpoint: bool,
) {
    let loaded = loop {
        match load::for_sampling(&source, &mut std::io::stderr()) {
            Ok(l) => break l,
            Err(e) if wait_for_checkpoint => {
                server.set_not_ready(NotReady::Loading(Some(format!(
                    "waiting for the run's first checkpoint ({e:#})"
                ))));
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                server.set_not_ready(NotReady::Failed(format!("{e:#}")));
                return;
            }
        }
    };
    let opened = dtype_weights(
        dtype.as_deref(),
        InferenceWeights::F32,
        &loaded,
        &mut std::io::stderr(),
    )
    .and_then(|weights| {
        let mut engine = engine::open(loaded.model, device)?;
        engine.set_inference_weights(weights)?;
        engine.set_kv_cache_dtype(kv_cache_dtype)?;
        Ok((engine, weights))
    });
    let (engine, weights) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("error: {e:#}");
            server.set_not_ready(NotReady::Failed(format!("{e:#}")));
            return;
        }
    };
    let (jobs, rx) = std::sync::mpsc::channel();
    let cfg = engine.config();
    let ready = Ready {
        tok: loaded.tokenizer.clone(),
        name: loaded.name.clone(),
        vocab_size: cfg.vocab_size,
        block_size: cfg.block_size,
        jobs,
    };
    eprintln!(
        "nanogpt serve: {} ready on {} ({parallel} slots, context {}, {weights} weights)",
        loaded.name,
        engine.device_name(),
        cfg.block_size
    );
    if server.ready.set(ready).is_err() {
        return;
    }
    scheduler::run(
        engine.as_ref(),
        &loaded.tokenizer,
        parallel,
        prefill_chunk,
        rx,
        &server.metrics,
    );
}

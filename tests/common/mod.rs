//! Helpers shared by the integration tests: fixture paths, safetensors readers, and running the
//! binary.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// `../shared/fixtures`, beside the checkout; NANOGPT_FIXTURES elsewhere (a test binary copied
/// to another machine, as benches/cuda_check.sh does).
pub fn fixtures() -> PathBuf {
    std::env::var_os("NANOGPT_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
        PathBuf::from,
    )
}

/// `../shared/fixtures/llama`: the Llama-2 / llama2.c references.
pub fn llama_fixtures() -> PathBuf {
    fixtures().join("llama")
}

/// A fixture's list of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("a list of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}

/// Runs `nanogpt sample ARGS`: its stdout, or a panic showing its stderr.
pub fn sample_bin(args: &[String]) -> Vec<u8> {
    let out = nanogpt()
        .arg("sample")
        .args(args)
        .output()
        .expect("run nanogpt");
    assert!(
        out.status.success(),
        "nanogpt sample {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A test's scratch directory: `nanogpt-{prefix}-{pid}-{name}` under the system temp dir, made
/// fresh (a stale one from an earlier run is removed first) and removed recursively when the guard
/// drops, because tests must not litter the temp dir (every run would leave megabytes behind).
/// A failing test keeps its files: when the guard drops during a panic the directory stays and
/// its path is printed, so the failure can be inspected. Bind the guard to a named variable that
/// lives to the end of the test (`let _ = ...` would drop it at once).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str, name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("nanogpt-{prefix}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: its files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `nanogpt` binary of this build (or NANOGPT_BIN).
pub fn nanogpt() -> std::process::Command {
    // A test binary copied to another machine (benches/cuda_check.sh) is told where it is.
    let bin =
        std::env::var_os("NANOGPT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_nanogpt").into());
    std::process::Command::new(bin)
}

/// A checkpoint folder's parameters, (name, values) sorted by name.
pub fn checkpoint_params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("model.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = read_f32(&st, &n);
            (n, v)
        })
        .collect()
}

/// Runs `cmd`: its stdout, or a panic showing its stdout and stderr.
pub fn stdout_of(mut cmd: std::process::Command) -> String {
    let out = cmd.output().expect("run");
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    log
}

/// `<root>/data/shakespeare_char`, prepared by the binary; returns `<root>/data`.
pub fn prepare_shakespeare_char(root: &std::path::Path) -> PathBuf {
    let data = root.join("data");
    let status = nanogpt()
        .args(["prepare", "shakespeare_char", "--input"])
        .arg(fixtures().join("../data/tinyshakespeare.txt"))
        .arg("--data_dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run prepare");
    assert!(status.success());
    data
}

/// `nanogpt train` flags for a tiny character model on `prepare_shakespeare_char`'s data that
/// logs every iteration (a few ms each): add `--data_dir`, `--out_dir` and the run's length.
pub const TINY_CHAR_TRAIN: [&str; 9] = [
    "--dataset=shakespeare_char",
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=64",
    "--block_size=64",
    "--batch_size=8",
    "--gradient_accumulation_steps=1",
    "--log_interval=1",
    "--device=cpu",
];

/// Reads a training log up to and including the line of iteration `at` (`iter AT: ...`), and
/// returns what it read; panics if the log ends first.
pub fn read_until_iter(reader: &mut impl std::io::BufRead, at: usize) -> String {
    let mut log = String::new();
    let mark = format!("iter {at}:");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read log") == 0 {
            panic!("training ended before iteration {at}:\n{log}");
        }
        log.push_str(&line);
        if line.starts_with(&mark) {
            return log;
        }
    }
}

/// The complete "iter N: loss X" lines of a training log, as (N, X); a last line cut off by a
/// kill is left out.
pub fn loss_lines(log: &str) -> Vec<(usize, String)> {
    log.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let rest = l.strip_prefix("iter ")?;
            let (n, rest) = rest.split_once(": loss ")?;
            Some((n.parse().ok()?, rest.split(',').next()?.to_string()))
        })
        .collect()
}

pub fn read_f32(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn read_i32(st: &SafeTensors, name: &str) -> Vec<i32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name} missing"));
    assert_eq!(t.dtype(), Dtype::I32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// max |a-b| / (max |b| over the tensor): relative error at the tensor's scale, robust to entries
/// near zero.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0.0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}

/// A request as the tests' small HTTP servers see it.
pub struct HttpRequest {
    /// The request target, e.g. `/datasets/a/b/resolve/main/x.parquet`.
    pub target: String,
    /// N of a `Range: bytes=N-` or `bytes=N-M` header.
    pub range_start: Option<usize>,
    /// M of a `Range: bytes=N-M` header (the last byte wanted).
    pub range_end: Option<usize>,
}

/// Reads a request line and its headers.
pub fn read_http_request(stream: &std::net::TcpStream) -> HttpRequest {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let (mut range_start, mut range_end) = (None, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (start, end) = v.trim().split_once('-').unwrap_or((v.trim(), ""));
            range_start = start.parse::<usize>().ok();
            range_end = end.parse::<usize>().ok();
        }
    }
    HttpRequest {
        target: request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string(),
        range_start,
        range_end,
    }
}

/// Writes a response with a Content-Length and `Connection: close`; `headers` are extra header
/// lines, each ending in `\r\n`. Errors (the client hung up) are ignored.
pub fn write_http_response(
    stream: &mut std::net::TcpStream,
    status: &str,
    headers: &str,
    body: &[u8],
) {
    use std::io::Write;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body));
}

pub mod cuda_emulator;
pub mod fault;

//! Downloads that survive bad networks: a progress bar, retries, resuming a partial file
//! (`NAME.part`, continued with an HTTP Range request), and an atomic rename when complete.
//! The retry policy, error sorting and bar are shared with the hub's model downloads
//! ([`crate::hf`]).

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Tries per download; the waits between them are 1, 2 and 4 s.
const ATTEMPTS: usize = 4;

/// How long a server may take to connect, or to send the next bytes, before the attempt is
/// retried: a hub that accepts connections but never answers is noticed within this.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The agent of every request this crate makes itself (dataset listings and downloads, plain
/// downloads): one connection pool and one set of timeouts. Model downloads go through
/// `hf-hub`, which builds its own agents and takes none from outside.
pub fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout_connect(FIRST_BYTE_TIMEOUT)
            .timeout_read(FIRST_BYTE_TIMEOUT)
            .build()
    })
}

/// Downloads `url` to `dest` (created whole or not at all). `hint` ends the error message when
/// the download cannot be done, to say what to do instead (e.g. "pass --input FILE").
pub fn download(url: &str, dest: &Path, hint: &str) -> Result<()> {
    download_with(url, dest, hint, &DownloadOptions::default())
}

/// What else a download may need.
#[derive(Default)]
pub struct DownloadOptions<'a> {
    /// Sent as `Authorization: Bearer` (e.g. `$HF_TOKEN`).
    pub token: Option<String>,
    /// Show the progress bar among these bars (when something else shows progress too).
    pub bars: Option<&'a MultiProgress>,
    /// Says when to give up (asked every 64 KiB); the partial file is kept for resuming.
    pub cancel: Option<&'a (dyn Fn() -> bool + Sync)>,
}

/// [`download`] with a token, a place among other progress bars, and a way to cancel.
pub fn download_with(url: &str, dest: &Path, hint: &str, opts: &DownloadOptions) -> Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let part = part_path(dest);
    with_retries(url, hint, || fetch(url, &part, opts))?;
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))
}

/// Runs `attempt` until it succeeds, fails for good, or has been tried [`ATTEMPTS`] times;
/// errors name `url` and end with `hint`.
pub(crate) fn with_retries<T>(
    url: &str,
    hint: &str,
    mut attempt: impl FnMut() -> Result<T, Fetch>,
) -> Result<T> {
    let mut last_error = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            let wait = Duration::from_millis(500 << n);
            // Said at once, so a slow or silent server does not look like a hang.
            eprintln!(
                "note: {url}: {last_error}; retrying in {} s (attempt {} of {ATTEMPTS})",
                wait.as_secs_f64(),
                n + 1
            );
            std::thread::sleep(wait);
        }
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Fetch::Fatal(e)) => bail!("cannot download {url}: {e}; {hint}"),
            Err(Fetch::Retry(e)) => last_error = e,
        }
    }
    bail!("cannot download {url} after {ATTEMPTS} attempts ({last_error}); no network? {hint}")
}

pub(crate) enum Fetch {
    /// Worth another try (network trouble); the partial file is kept for resuming.
    Retry(String),
    /// Will not get better (404, disk full).
    Fatal(String),
}

fn fetch(url: &str, part: &Path, opts: &DownloadOptions) -> Result<(), Fetch> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent().get(url);
    if let Some(token) = &opts.token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        // The partial file is already complete.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(e) => return Err(sort_error(e)),
    };
    let resumed = response.status() == 206;
    let start = if resumed { have } else { 0 };
    let total = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + start);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| Fetch::Fatal(format!("cannot write {}: {e}", part.display())))?;
    let name = part
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let bar = progress_bar(total, name.trim_end_matches(".part"));
    let bar = match opts.bars {
        Some(bars) => bars.add(bar),
        None => bar,
    };
    bar.set_position(start);
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    loop {
        if opts.cancel.is_some_and(|cancelled| cancelled()) {
            bar.finish_and_clear();
            return Err(Fetch::Fatal("interrupted".to_string()));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                return Err(Fetch::Retry(e.to_string()));
            }
        };
        file.write_all(&buf[..n]).map_err(|e| {
            Fetch::Fatal(format!("cannot write {}: {e} (disk full?)", part.display()))
        })?;
        written += n as u64;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    if let Some(n) = total {
        if written != n {
            return Err(Fetch::Retry(format!(
                "connection closed after {written} of {n} bytes"
            )));
        }
    }
    file.sync_all()
        .map_err(|e| Fetch::Fatal(format!("cannot write {}: {e}", part.display())))
}

/// Whether another try may help with a failed request.
pub(crate) fn sort_error(e: ureq::Error) -> Fetch {
    match e {
        // Too many requests: worth another try after the back-off.
        ureq::Error::Status(429, _) => Fetch::Retry("HTTP 429 Too Many Requests".into()),
        ureq::Error::Status(code, r) if (400..500).contains(&code) => {
            Fetch::Fatal(format!("HTTP {code} {}", r.status_text()))
        }
        // No name resolution means no network: retrying will not help.
        ureq::Error::Transport(t) if t.kind() == ureq::ErrorKind::Dns => Fetch::Fatal(format!(
            "cannot resolve the host ({})",
            t.message().unwrap_or("no network?")
        )),
        e => Fetch::Retry(e.to_string()),
    }
}

/// A download's progress bar (a spinner when the size is unknown), labelled `name`.
pub(crate) fn progress_bar(total: Option<u64>, name: &str) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_string());
    bar
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

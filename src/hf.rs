//! The Hugging Face hub: its settings, read from the environment as `huggingface_hub` reads
//! them ([`Hub::from_env`]); and the hub's cache on disk, which this crate reads ([`find_snapshot`]) and fills
//! ([`Hub::download`], through the `hf-hub` crate) in the layout `huggingface_hub` and
//! transformers use, so that each finds what the other downloaded:
//!
//! ```text
//! {cache}/models--{owner}--{name}/
//!   refs/main                 the commit hash that `main` was at
//!   blobs/{etag}              each file once, named by its git or LFS (sha256) hash
//!   snapshots/{commit}/{file} a relative link to the file's blob
//! ```
//!
//! Dataset listings and downloads ([`crate::data::hub`]) take the endpoint and token from
//! here too, but not the cache: their files are deleted once tokenized.

use crate::download::{progress_bar, sort_error, with_retries, Fetch, FIRST_BYTE_TIMEOUT};
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the hub is, who is asking, whether the network may be used, and where its cache is.
#[derive(Clone, Debug)]
pub struct Hub {
    /// `$HF_ENDPOINT` (a mirror, or a local hub in tests) without a trailing `/`, else
    /// `https://huggingface.co`.
    pub endpoint: String,
    /// Sent as a bearer token: `$HF_TOKEN`, else the file `huggingface-cli login` writes
    /// (`$HF_HOME/token`).
    pub token: Option<String>,
    /// `$HF_HUB_OFFLINE` is set (`1`, `true`, `yes` or `on`): nothing may be downloaded.
    pub offline: bool,
    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, where `$HF_HOME` defaults to
    /// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`; `None` without a home.
    pub cache: Option<PathBuf>,
    /// How long the hub may take to start answering a request before the attempt is retried.
    pub first_byte_timeout: Duration,
}

impl Hub {
    /// The settings from the environment, with `huggingface_hub`'s names and defaults.
    pub fn from_env() -> Hub {
        let text = |key| {
            std::env::var(key)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let path = |key| {
            std::env::var_os(key)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = path("HF_HOME").or_else(|| {
            path("XDG_CACHE_HOME")
                .or_else(|| path("HOME").map(|h| h.join(".cache")))
                .map(|c| c.join("huggingface"))
        });
        let token_file = || {
            let t = std::fs::read_to_string(home.as_ref()?.join("token")).ok()?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        };
        Hub {
            endpoint: text("HF_ENDPOINT").map_or_else(
                || "https://huggingface.co".to_string(),
                |e| e.trim_end_matches('/').to_string(),
            ),
            token: text("HF_TOKEN").or_else(token_file),
            offline: text("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
            cache: path("HF_HUB_CACHE").or_else(|| home.map(|h| h.join("hub"))),
            first_byte_timeout: FIRST_BYTE_TIMEOUT,
        }
    }

    /// The cache directory, or an error saying how to name one.
    pub fn cache_dir(&self) -> Result<&Path> {
        self.cache.as_deref().context(
            "no Hugging Face cache directory (no home directory): set HF_HUB_CACHE or HF_HOME",
        )
    }

    /// Downloads `file` of the model repository `repo` (`owner/name`) at `main` into the cache
    /// and returns its path in the snapshot of the commit the hub served it from. Progress
    /// shows on stderr; a failed attempt is retried as [`crate::download`] does, and resumes
    /// the partial blob (`blobs/{etag}.part`). A hub that cannot be reached at all fails at
    /// once. Every error ends with `hint`: what to do without the network.
    pub fn download(&self, repo: &str, file: &str, hint: &str) -> Result<PathBuf> {
        if self.offline {
            bail!("HF_HUB_OFFLINE is set, so {repo} cannot be downloaded; {hint}");
        }
        let cache = self.cache_dir()?;
        // hf-hub links a snapshot to its blob by a relative path computed from the two
        // paths, which must both be absolute.
        let cache = std::path::absolute(cache)
            .with_context(|| format!("cannot locate the cache directory {}", cache.display()))?;
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| anyhow!("cannot set up downloads from {}: {e}", self.endpoint))?
            .model(repo.to_string());
        let url = api.url(file);
        let mut first = true;
        with_retries(&url, hint, || {
            self.probe(&url)?;
            let attempt = api.download_with_progress(file, Bar::default());
            let first_attempt = std::mem::replace(&mut first, false);
            attempt.map_err(|e| self.sort_error(e, first_attempt))
        })
    }

    /// hf-hub's agents have no timeouts, so a hub that accepts the connection but never answers
    /// would hold the download for as long as the OS keeps the socket: ask once with a deadline
    /// first. Hubs that cannot be reached at all are left to hf-hub's attempt ([`Self::sort_error`]).
    /// hf-hub 0.4.3's `ApiBuilder` takes no agent and no timeout (only endpoint, cache, token,
    /// retries, progress and user agent), so [`crate::download::agent`] cannot be handed to it,
    /// and a hub that answers this probe and then stalls mid-download still holds the attempt.
    fn probe(&self, url: &str) -> Result<(), Fetch> {
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout_connect(self.first_byte_timeout)
            .timeout_read(self.first_byte_timeout)
            .redirects(0)
            .build();
        let mut request = agent.head(url);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::Io => {
                Err(Fetch::Retry(format!(
                    "{} did not answer within {} s",
                    self.endpoint,
                    self.first_byte_timeout.as_secs_f64()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether another try may help with `e`. A hub that cannot be reached on the first
    /// attempt is taken to be out of reach.
    fn sort_error(&self, e: ApiError, first_attempt: bool) -> Fetch {
        let endpoint = &self.endpoint;
        match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::Transport(t)
                    if first_attempt
                        && matches!(
                            t.kind(),
                            ureq::ErrorKind::Dns
                                | ureq::ErrorKind::ConnectionFailed
                                | ureq::ErrorKind::ProxyConnect
                        ) =>
                {
                    let why = std::error::Error::source(&t)
                        .map(|e| e.to_string())
                        .or_else(|| t.message().map(str::to_string))
                        .unwrap_or_default();
                    Fetch::Fatal(format!("cannot reach {endpoint} (offline? {}: {why})", t.kind()))
                }
                e => sort_error(e),
            },
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => Fetch::Fatal(format!(
                "the answer has no valid {h} header (is {endpoint} a Hugging Face hub? check HF_ENDPOINT)"
            )),
            ApiError::IoError(e) if is_disk_full(&e) => {
                Fetch::Fatal(format!("{e} (disk full? set HF_HUB_CACHE to another disk)"))
            }
            // Reading the answer failed midway: the partial blob is resumed.
            ApiError::IoError(e) => Fetch::Retry(e.to_string()),
            e => Fetch::Fatal(e.to_string()),
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge)
}

/// The snapshot folder of `revision` of model `repo` in `cache`: the commit that
/// `refs/{revision}` records, else `revision` itself taken as a commit hash (as
/// `huggingface_hub` resolves it).
pub fn snapshot_dir(cache: &Path, repo: &str, revision: &str) -> PathBuf {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(dir.join("refs").join(revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    dir.join("snapshots").join(commit)
}

/// The snapshot of model `repo` in `cache` that holds all of `files`: the one `refs/main`
/// names, else the last complete one in name order (from an earlier commit, or made by hand).
pub fn find_snapshot(cache: &Path, repo: &str, files: &[&str]) -> Option<PathBuf> {
    // `is_file` follows the links: a snapshot whose blob is gone is not complete.
    let complete = |d: &Path| files.iter().all(|f| d.join(f).is_file());
    let main = snapshot_dir(cache, repo, "main");
    if complete(&main) {
        return Some(main);
    }
    let snapshots = main.parent()?;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(snapshots)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|d| complete(d))
        .collect();
    dirs.sort();
    dirs.pop()
}

/// hf-hub's progress reports drawn with this crate's download bar.
#[derive(Default)]
struct Bar(Option<indicatif::ProgressBar>);

impl hf_hub::api::Progress for Bar {
    // Called again when a download starts over from where it stopped: the position follows
    // as one `update`.
    fn init(&mut self, size: usize, filename: &str) {
        let bar = self
            .0
            .get_or_insert_with(|| progress_bar(Some(size as u64), filename));
        bar.set_length(size as u64);
        bar.set_position(0);
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

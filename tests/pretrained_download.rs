//! Downloading GPT-2 weights from a local HTTP server that answers as the Hugging Face hub does,
//! serving tiny-gpt2, into the hub's cache layout: download, load, reuse of the cache, retries,
//! the offline error, and a snapshot that `huggingface_hub` wrote read as it is.

mod common;

use common::{fixtures, read_http_request, write_http_response, HttpRequest, TempDir};
use nanogpt::hf::{snapshot_dir, Hub};
use nanogpt::model::pretrained::{download_gpt2, find_in_cache};
use nanogpt::model::weights::load_hf_dir;
use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The commit the local hub's `main` is at.
const COMMIT: &str = "607a30d783dfa663caf39e06633721c8d4cfcd7e";
/// config.json's ETag: its git blob id (`git hash-object`), as the real hub sends it.
const CONFIG_ETAG: &str = "5ebc425da027804d47e8e8da6349cf89bee8e164";

/// Serves `../shared/fixtures/tiny-gpt2-hub-layout/` as the hub serves `openai-community/gpt2`
/// at [`COMMIT`], with the requests and headers hf-hub reads:
/// - `/openai-community/gpt2/resolve/main/config.json`: the file (a Range gives 206 and a
///   Content-Range), with `X-Repo-Commit` and `ETag`;
/// - `/openai-community/gpt2/resolve/main/model.safetensors`: as a Git LFS file, a 302 to
///   `/cdn/{sha256}` (the hub's CDN, which honours Range) with `X-Repo-Commit`,
///   `X-Linked-Etag` (the sha256) and `X-Linked-Size`;
/// - everything else: 404.
///
/// The first `too_many` requests get a 429; the first `cut` CDN downloads stop halfway.
/// Returns the base URL and the paths requested (a CDN download also as `PATH from N`, N the
/// first byte asked for).
fn hub_with(too_many: usize, cut: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let dir = fixtures().join("tiny-gpt2-hub-layout");
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let sha = hex(&Sha256::digest(&weights));
    let base2 = base.clone();
    std::thread::spawn(move || {
        let (mut too_many, mut cut) = (too_many, cut);
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let request = read_http_request(&stream);
            let path = request.target.clone();
            log2.lock().unwrap().push(path.clone());
            let commit = format!("X-Repo-Commit: {COMMIT}\r\n");
            if too_many > 0 {
                too_many -= 1;
                write_http_response(&mut stream, "429 Too Many Requests", "", b"");
            } else if path == "/openai-community/gpt2/resolve/main/config.json" {
                let etag = format!("{commit}ETag: \"{CONFIG_ETAG}\"\r\n");
                serve_range(&mut stream, &request, &config, &etag, false);
            } else if path == "/openai-community/gpt2/resolve/main/model.safetensors" {
                let headers = format!(
                    "{commit}X-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {}\r\nLocation: {base2}/cdn/{sha}\r\n",
                    weights.len()
                );
                write_http_response(&mut stream, "302 Found", &headers, b"");
            } else if path == format!("/cdn/{sha}") {
                let whole = request.range_end.is_none();
                if let (true, Some(start)) = (whole, request.range_start) {
                    log2.lock().unwrap().push(format!("{path} from {start}"));
                }
                serve_range(&mut stream, &request, &weights, "", whole && cut > 0);
                if whole {
                    cut = cut.saturating_sub(1);
                }
            } else {
                write_http_response(&mut stream, "404 Not Found", "", b"");
            }
        }
    });
    (base, log)
}

fn hub() -> (String, Arc<Mutex<Vec<String>>>) {
    hub_with(0, 0)
}

/// `body`, or the part a `Range: bytes=N-[M]` asks for (206, with a Content-Range); when
/// `cut`, the connection closes after half of it.
fn serve_range(
    stream: &mut std::net::TcpStream,
    request: &HttpRequest,
    body: &[u8],
    headers: &str,
    cut: bool,
) {
    use std::io::Write;
    let Some(start) = request.range_start else {
        return write_http_response(stream, "200 OK", headers, body);
    };
    let end = request
        .range_end
        .unwrap_or(body.len() - 1)
        .min(body.len() - 1);
    let part = &body[start..=end];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{}\r\n{headers}Connection: close\r\n\r\n",
        part.len(),
        body.len()
    );
    let send = if cut { &part[..part.len() / 2] } else { part };
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(send));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hub at `endpoint`, with the cache `cache`, no token, online.
fn hub_at(endpoint: &str, cache: &Path) -> Hub {
    Hub {
        endpoint: endpoint.to_string(),
        token: None,
        offline: false,
        cache: Some(cache.to_path_buf()),
        first_byte_timeout: nanogpt::download::FIRST_BYTE_TIMEOUT,
    }
}

/// Where `refs/main` says the snapshot of `openai-community/<name>` is.
fn cache_snapshot_dir(cache: &Path, name: &str) -> PathBuf {
    snapshot_dir(cache, &format!("openai-community/{name}"), "main")
}

/// An address nothing listens on.
fn unreachable() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[test]
fn downloads_into_the_cache_layout_loads_and_reuses_the_cache() {
    let (base, log) = hub();
    let cache = TempDir::new("hub", "cache");
    let dir = download_gpt2("gpt2", &hub_at(&base, &cache)).unwrap();
    assert_eq!(dir, cache_snapshot_dir(&cache, "gpt2"));
    assert!(dir.starts_with(cache.join("models--openai-community--gpt2/snapshots")));
    assert_eq!(find_in_cache(&cache, "gpt2"), Some(dir.clone()));
    assert!(!dir.join("model.safetensors.part").exists());
    {
        let log = log.lock().unwrap();
        assert!(
            log.contains(&"/openai-community/gpt2/resolve/main/config.json".to_string()),
            "{log:?}"
        );
        assert!(
            log.contains(&"/openai-community/gpt2/resolve/main/model.safetensors".to_string()),
            "{log:?}"
        );
    }
    let got = load_hf_dir(&dir).unwrap();
    let want = load_hf_dir(&fixtures().join("tiny-gpt2-hub-layout")).unwrap();
    assert_eq!(got.config, want.config);
    assert!(
        got.params == want.params,
        "downloaded weights differ from the fixture"
    );

    // Second time: the cache, no network.
    let requests = log.lock().unwrap().len();
    let again = download_gpt2("gpt2", &hub_at(&unreachable(), &cache)).unwrap();
    assert_eq!(again, dir);
    assert_eq!(log.lock().unwrap().len(), requests);
}

#[test]
fn offline_is_a_quick_clear_error() {
    let cache = TempDir::new("hub", "offline");
    let t0 = Instant::now();
    let e = format!(
        "{:#}",
        download_gpt2("gpt2", &hub_at(&unreachable(), &cache)).unwrap_err()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(e.contains("cannot reach") && e.contains("offline"), "{e}");
    assert!(
        e.contains("config.json and model.safetensors") && e.contains("./gpt2/"),
        "{e}"
    );
    assert!(e.contains("--init_from=DIR"), "{e}");
    assert_eq!(find_in_cache(&cache, "gpt2"), None);
    assert!(
        !cache.join("models--openai-community--gpt2").exists(),
        "nothing is left behind"
    );
}

#[test]
fn missing_files_and_other_names() {
    let (base, _) = hub();
    let cache = TempDir::new("hub", "missing");
    // The server has no gpt2-medium.
    let e = format!(
        "{:#}",
        download_gpt2("gpt2-medium", &hub_at(&base, &cache)).unwrap_err()
    );
    assert!(e.contains("404") && e.contains("gpt2-medium"), "{e}");
    assert_eq!(find_in_cache(&cache, "gpt2-medium"), None);
    let e = format!(
        "{:#}",
        download_gpt2("llama", &hub_at(&base, &cache)).unwrap_err()
    );
    assert!(e.contains("gpt2-xl"), "{e}");
}

#[test]
fn retries_after_429_and_a_dropped_connection_resuming_the_blob() {
    let (base, log) = hub_with(2, 1);
    let cache = TempDir::new("hub", "retry");
    let dir = download_gpt2("gpt2", &hub_at(&base, &cache)).unwrap();
    let got = load_hf_dir(&dir).unwrap();
    let want = load_hf_dir(&fixtures().join("tiny-gpt2-hub-layout")).unwrap();
    assert!(got.params == want.params, "downloaded weights differ");
    let log = log.lock().unwrap();
    let starts: Vec<&String> = log.iter().filter(|p| p.contains(" from ")).collect();
    assert_eq!(starts.len(), 2, "{log:?}");
    assert!(starts[0].ends_with(" from 0"), "{log:?}");
    let half = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len()
        / 2;
    assert!(
        starts[1].ends_with(&format!(" from {half}")),
        "the retry should resume, not restart: {log:?}"
    );
}

/// Writes `openai-community/gpt2` into `cache` as `huggingface_hub` does: each file once in
/// `blobs/` (named by its ETag), `snapshots/{commit}/` linking to them, `refs/main` naming the
/// commit.
fn write_hub_snapshot(cache: &Path, commit: &str, files: &[(&str, &str)]) {
    let repo = cache.join("models--openai-community--gpt2");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for (file, etag) in files {
        let src = fixtures().join("tiny-gpt2-hub-layout").join(file);
        std::fs::copy(src, repo.join("blobs").join(etag)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snapshot.join(file)).unwrap();
    }
    std::fs::write(repo.join("refs/main"), commit).unwrap();
}

#[test]
fn reads_a_snapshot_that_huggingface_hub_wrote() {
    let home = TempDir::new("hub", "hf-home");
    let cache = home.join("hub");
    let weights = std::fs::read(fixtures().join("tiny-gpt2-hub-layout/model.safetensors")).unwrap();
    let sha = hex(&Sha256::digest(&weights));
    let files = [
        ("config.json", CONFIG_ETAG),
        ("model.safetensors", sha.as_str()),
    ];
    // An older complete snapshot; `refs/main` moves on to COMMIT.
    write_hub_snapshot(&cache, "0000000000000000000000000000000000000001", &files);
    write_hub_snapshot(&cache, COMMIT, &files);
    let snapshot = cache
        .join("models--openai-community--gpt2/snapshots")
        .join(COMMIT);
    assert_eq!(find_in_cache(&cache, "gpt2"), Some(snapshot.clone()));
    let dir = download_gpt2("gpt2", &hub_at(&unreachable(), &cache)).unwrap();
    assert_eq!(dir, snapshot);
    let want = load_hf_dir(&fixtures().join("tiny-gpt2-hub-layout")).unwrap();
    assert!(load_hf_dir(&dir).unwrap().params == want.params);

    // The command line finds it through $HF_HOME, offline.
    let sample = |home: &Path| {
        let cwd = TempDir::new("hub", "hf-cwd");
        std::process::Command::new(env!("CARGO_BIN_EXE_nanogpt"))
            .args([
                "sample",
                "--init_from=gpt2",
                "--num_samples=1",
                "--max_new_tokens=3",
            ])
            .current_dir(&*cwd)
            .env("HF_HOME", home)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HUB_CACHE")
            .output()
            .unwrap()
    };
    let out = sample(&home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let empty_home = TempDir::new("hub", "hf-home-empty");
    let out = sample(&empty_home);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

/// A hub that accepts connections and never answers is given up on attempt by attempt, each
/// after the first-byte timeout, instead of holding the download for minutes.
#[test]
fn a_silent_hub_times_out_attempt_by_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // Kept open, never read from or written to.
            held.lock().unwrap().push(stream);
        }
    });
    let cache = TempDir::new("hub", "silent");
    let hub = Hub {
        first_byte_timeout: Duration::from_millis(500),
        ..hub_at(&endpoint, &cache)
    };
    let t0 = Instant::now();
    let err = format!(
        "{:#}",
        download_gpt2("gpt2", &hub).expect_err("a silent hub fails")
    );
    let took = t0.elapsed();
    assert!(
        err.contains("did not answer within 0.5 s") && err.contains("4 attempts"),
        "{err}"
    );
    // Four attempts of 0.5 s and the waits between them (1 + 2 + 4 s); minutes before.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(accepted.lock().unwrap().len() >= 4);
}

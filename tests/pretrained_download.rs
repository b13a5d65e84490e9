//! Downloading GPT-2 weights in the Hugging Face hub's URL layout into its cache layout, against
//! a local HTTP server serving tiny-gpt2: download, load, reuse of the cache, and the offline error.

mod common;

use common::{fixtures, read_http_request, write_http_response};
use nanogpt::model::pretrained::{cache_snapshot_dir, download_gpt2, find_in_cache};
use nanogpt::model::weights::load_hf_dir;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Serves `../shared/fixtures/tiny-gpt2-hub-layout/` as `/openai-community/gpt2/resolve/main/FILE`;
/// every other path is a 404. Returns the base URL and the paths requested.
fn hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let dir = fixtures().join("tiny-gpt2-hub-layout");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let path = read_http_request(&stream).target;
            log2.lock().unwrap().push(path.clone());
            let body = path
                .strip_prefix("/openai-community/gpt2/resolve/main/")
                .filter(|f| *f == "config.json" || *f == "model.safetensors")
                .and_then(|f| std::fs::read(dir.join(f)).ok());
            match body {
                Some(body) => write_http_response(&mut stream, "200 OK", "", &body),
                None => write_http_response(&mut stream, "404 Not Found", "", b""),
            }
        }
    });
    (base, log)
}

/// An address nothing listens on.
fn unreachable() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nanogpt-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn downloads_into_the_cache_layout_loads_and_reuses_the_cache() {
    let (base, log) = hub();
    let cache = temp("cache");
    let dir = download_gpt2("gpt2", &base, &cache).unwrap();
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
    let again = download_gpt2("gpt2", &unreachable(), &cache).unwrap();
    assert_eq!(again, dir);
    assert_eq!(log.lock().unwrap().len(), requests);
}

#[test]
fn offline_is_a_quick_clear_error() {
    let cache = temp("offline");
    let t0 = Instant::now();
    let e = format!(
        "{:#}",
        download_gpt2("gpt2", &unreachable(), &cache).unwrap_err()
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
    let cache = temp("missing");
    // The server has no gpt2-medium.
    let e = format!(
        "{:#}",
        download_gpt2("gpt2-medium", &base, &cache).unwrap_err()
    );
    assert!(e.contains("404") && e.contains("gpt2-medium"), "{e}");
    assert_eq!(find_in_cache(&cache, "gpt2-medium"), None);
    let e = format!("{:#}", download_gpt2("llama", &base, &cache).unwrap_err());
    assert!(e.contains("gpt2-xl"), "{e}");
}

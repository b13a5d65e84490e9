//! The downloader against a local HTTP server: whole files, resumed partial files, retries after
//! a dropped connection, and clear errors.

mod common;

use common::{read_http_request, TempDir};
use nanogpt::download::download;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Serves `body` at any path; honours `Range: bytes=N-`. The first `drop_first` responses are cut
/// off halfway. Records each request's Range header. Returns the base URL.
fn serve(
    body: Vec<u8>,
    drop_first: usize,
    status_404: bool,
) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/file.txt", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate().take(16) {
            let Ok(mut stream) = stream else { continue };
            let range = read_http_request(&stream).range_start;
            log2.lock().unwrap().push(range.map(|r| r.to_string()));
            if status_404 {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let start = range.unwrap_or(0);
            let rest = &body[start..];
            let head = if range.is_some() {
                format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len())
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let send = if i < drop_first {
                &rest[..rest.len() / 2]
            } else {
                rest
            };
            let _ = stream.write_all(send);
        }
    });
    (url, log)
}

fn body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn downloads_whole_file() {
    let (url, _) = serve(body(), 0, false);
    let dir = TempDir::new("dl", "whole");
    download(&url, &dir.join("out.txt"), "hint").unwrap();
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), body());
    assert!(!dir.join("out.txt.part").exists());
}

#[test]
fn resumes_a_partial_file_with_a_range_request() {
    let (url, log) = serve(body(), 0, false);
    let dir = TempDir::new("dl", "resume");
    std::fs::write(dir.join("out.txt.part"), &body()[..12_345]).unwrap();
    download(&url, &dir.join("out.txt"), "hint").unwrap();
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), body());
    assert_eq!(log.lock().unwrap().as_slice(), &[Some("12345".to_string())]);
}

#[test]
fn retries_after_a_dropped_connection_and_continues_where_it_stopped() {
    let (url, log) = serve(body(), 1, false);
    let dir = TempDir::new("dl", "retry");
    download(&url, &dir.join("out.txt"), "hint").unwrap();
    assert_eq!(std::fs::read(dir.join("out.txt")).unwrap(), body());
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[1],
        Some((body().len() / 2).to_string()),
        "the retry should resume, not restart"
    );
}

#[test]
fn missing_file_is_a_clear_error_and_leaves_nothing() {
    let (url, _) = serve(body(), 0, true);
    let dir = TempDir::new("dl", "404");
    let err = download(&url, &dir.join("out.txt"), "pass --input FILE")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains("pass --input FILE"),
        "{err}"
    );
    assert!(!dir.join("out.txt").exists());
}

#[test]
fn no_server_says_what_to_do() {
    // A port nobody listens on: bind, take the address, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("dl", "refused");
    let err = download(
        &format!("http://{addr}/x"),
        &dir.join("out.txt"),
        "pass --input FILE",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pass --input FILE") && err.contains("attempts"),
        "{err}"
    );
    assert!(!dir.join("out.txt").exists());
}

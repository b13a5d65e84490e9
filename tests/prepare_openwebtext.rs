//! `prepare openwebtext` against a local HTTP server that serves parquet shards (written here)
//! in the Hugging Face hub's layout: output equal to tokenizing the documents directly, resuming
//! after an interruption byte for byte, a stable split, and the bad-input errors.

use nanogpt::data::dataset::{verify, Verified};
use nanogpt::data::hub::HubDataset;
use nanogpt::data::text::is_val_document;
use nanogpt::data::{prepare_stream, StreamPrepareOptions, StreamPrepareSummary, StreamSource};
use nanogpt::tokenizer::{Gpt2Bpe, EOT};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
mod common;

use common::{read_http_request, write_http_response, HttpRequest, TempDir};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

const REPO: &str = "someone/tiny-webtext";

/// Documents for the shards: paragraphs of tiny Shakespeare, some joined into long documents
/// (cut into pieces by the reader), and a few odd ones. `None` is a null row.
fn documents() -> Vec<Option<String>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/tinyshakespeare.txt"
    ))
    .unwrap();
    let paragraphs: Vec<&str> = text.split("\n\n").take(400).collect();
    let mut docs: Vec<Option<String>> = Vec::new();
    for (i, chunk) in paragraphs.chunks(10).enumerate() {
        if i % 7 == 3 {
            // One long document (about 5 KB), longer than the tests' piece size.
            docs.push(Some(chunk.join("\n\n")));
        } else {
            docs.extend(chunk.iter().map(|p| Some(p.to_string())));
        }
    }
    docs.insert(
        5,
        Some("naïve café — 東京 🚀 <|endoftext|> literal".to_string()),
    );
    docs.insert(9, Some(String::new()));
    docs.insert(13, None);
    docs
}

/// Writes `docs` as a parquet file with an optional string column `text` and an int64 `id`.
fn write_parquet(
    path: &Path,
    docs: &[Option<String>],
    compression: Compression,
    rows_per_group: usize,
) {
    let schema = Arc::new(
        parse_message_type("message doc { required int64 id; optional binary text (UTF8); }")
            .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_size_limit(2048)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for (g, group) in docs.chunks(rows_per_group).enumerate() {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..group.len())
            .map(|i| (g * rows_per_group + i) as i64)
            .collect();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = group
            .iter()
            .flatten()
            .map(|s| ByteArray::from(s.as_bytes().to_vec()))
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

/// The dataset as three parquet shards (snappy, zstd, gzip), in the hub's path layout.
fn shards(docs: &[Option<String>]) -> Vec<(String, Vec<u8>)> {
    let third = docs.len() / 3;
    let parts = [&docs[..third], &docs[third..2 * third], &docs[2 * third..]];
    let codecs = [
        Compression::SNAPPY,
        Compression::ZSTD(ZstdLevel::default()),
        Compression::GZIP(GzipLevel::default()),
    ];
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = TempDir::new("owt", &format!("shards-{n}"));
    parts
        .iter()
        .zip(codecs)
        .enumerate()
        .map(|(i, (part, codec))| {
            let path = dir.join(format!("{i}.parquet"));
            write_parquet(&path, part, codec, 37);
            (
                format!("plain_text/train-{i:05}-of-00003.parquet"),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

/// What the hub serves, and how it misbehaves.
#[derive(Default)]
struct Hub {
    /// Repository path -> content.
    files: BTreeMap<String, Vec<u8>>,
    /// sha256 to list instead of the real one.
    listed_sha256: BTreeMap<String, String>,
    /// Paths answered with 404.
    missing: HashSet<String>,
    /// Paths answered only after two seconds.
    slow: HashSet<String>,
    /// Every request's path.
    log: Vec<String>,
    /// The revision the parquet files are in (`main` holds only a README then); empty: main.
    revision: String,
}

/// A local hub: `GET /api/datasets/{repo}/tree/{rev}?recursive=true` (two entries per page,
/// with a `Link` to the next; a revision other than main or the files' is a 404) and
/// `GET /datasets/{repo}/resolve/{rev}/{path}` (with Range).
fn serve(hub: Arc<Mutex<Hub>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let base2 = base.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let hub = hub.clone();
            let base = base2.clone();
            std::thread::spawn(move || respond(stream, &hub, &base));
        }
    });
    base
}

fn respond(mut stream: std::net::TcpStream, hub: &Mutex<Hub>, base: &str) {
    let HttpRequest {
        target,
        range_start: range,
        ..
    } = read_http_request(&stream);
    let mut hub = hub.lock().unwrap();
    hub.log.push(target.clone());
    let send = write_http_response;
    let revision = match hub.revision.as_str() {
        "" => "main".to_string(),
        r => r.replace('/', "%2F"),
    };
    let tree_prefix = format!("/api/datasets/{REPO}/tree/{revision}?recursive=true");
    let resolve_prefix = format!("/datasets/{REPO}/resolve/{revision}/");
    if target.starts_with(&format!("/api/datasets/{REPO}/tree/main?"))
        && !target.starts_with(&tree_prefix)
    {
        // main holds a loading script and no parquet files.
        let entries =
            serde_json::json!([{"type": "file", "oid": "2", "size": 9, "path": "tiny-webtext.py"}]);
        send(&mut stream, "200 OK", "", entries.to_string().as_bytes());
    } else if let Some(rest) = target.strip_prefix(&tree_prefix) {
        let page: usize = rest
            .strip_prefix("&cursor=")
            .map_or(0, |c| c.parse().unwrap());
        let entries: Vec<serde_json::Value> = hub
            .files
            .iter()
            .map(|(path, body)| {
                let sha = hub.listed_sha256.get(path).cloned().unwrap_or_else(|| hex(&Sha256::digest(body)));
                serde_json::json!({"type": "file", "oid": "0", "size": body.len(), "path": path,
                                   "lfs": {"oid": sha, "size": body.len(), "pointerSize": 134}})
            })
            .chain([serde_json::json!({"type": "directory", "oid": "0", "size": 0, "path": "plain_text"}),
                    serde_json::json!({"type": "file", "oid": "1", "size": 9, "path": "README.md"})])
            .collect();
        let chunk: Vec<_> = entries.iter().skip(page * 2).take(2).cloned().collect();
        let link = if (page + 1) * 2 < entries.len() {
            format!(
                "Link: <{base}{tree_prefix}&cursor={}>; rel=\"next\"\r\n",
                page + 1
            )
        } else {
            String::new()
        };
        send(
            &mut stream,
            "200 OK",
            &link,
            serde_json::to_string(&chunk).unwrap().as_bytes(),
        );
    } else if let Some(path) = target.strip_prefix(&resolve_prefix) {
        match hub.files.get(path) {
            Some(body) if !hub.missing.contains(path) => {
                let start = range.unwrap_or(0).min(body.len());
                let status = if range.is_some() {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let body = body[start..].to_vec();
                let slow = hub.slow.contains(path);
                drop(hub);
                if slow {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                send(&mut stream, status, "", &body);
            }
            _ => send(&mut stream, "404 Not Found", "", b""),
        }
    } else {
        send(&mut stream, "404 Not Found", "", b"");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hub_with_shards() -> (Arc<Mutex<Hub>>, String, Vec<Option<String>>) {
    let docs = documents();
    let mut hub = Hub::default();
    hub.files.extend(shards(&docs));
    let hub = Arc::new(Mutex::new(hub));
    let base = serve(hub.clone());
    (hub, base, docs)
}

fn hub_options(base: &str, out: &Path) -> StreamPrepareOptions {
    let mut opts = StreamPrepareOptions::new(
        StreamSource::Hub(HubDataset {
            endpoint: base.to_string(),
            repo: REPO.to_string(),
            revision: None,
            split: "train".to_string(),
            subset: None,
            token: None,
        }),
        out,
    );
    opts.docs.progress = false;
    opts.docs.piece_bytes = 1000; // long documents are cut into pieces
    opts.docs.batch_bytes = 8 << 10;
    opts
}

fn run(opts: &StreamPrepareOptions) -> anyhow::Result<StreamPrepareSummary> {
    prepare_stream(opts, &AtomicBool::new(false))
}

/// Each non-null document's tokens and EOT, split by `is_val_document` over document indices.
fn expected(docs: &[Option<String>], seed: u64, val_fraction: f64) -> (Vec<u16>, Vec<u16>) {
    let bpe = Gpt2Bpe::new().unwrap();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, doc) in docs.iter().flatten().enumerate() {
        let out = if is_val_document(seed, i as u64, val_fraction) {
            &mut val
        } else {
            &mut train
        };
        out.extend(bpe.encode_ordinary(doc).iter().map(|&t| t as u16));
        out.push(EOT as u16);
    }
    (train, val)
}

fn read_u16(path: &Path) -> Vec<u16> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Every file of `dir` (not folders) and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn output_equals_tokenizing_the_documents_directly() {
    let (hub, base, docs) = hub_with_shards();
    let out = TempDir::new("owt", "direct");
    let mut opts = hub_options(&base, &out);
    opts.docs.val_fraction = 0.0;
    let s = run(&opts).unwrap();
    let (train, _) = expected(&docs, 2357, 0.0);
    assert_eq!(read_u16(&out.join("train.bin")), train);
    assert!(read_u16(&out.join("val.bin")).is_empty());
    assert_eq!(s.documents as usize, docs.iter().flatten().count());
    assert_eq!(s.null_rows, 1);
    assert_eq!(s.sources, 3);
    assert_eq!(s.train_tokens as usize, train.len());
    let text_bytes: usize = docs.iter().flatten().map(|d| d.len()).sum();
    assert_eq!(s.text_bytes as usize, text_bytes);
    // No temp files or downloads are left; the manifest says it is complete, and the dataset
    // record verifies.
    let files: Vec<String> = snapshot(&out).into_keys().collect();
    assert_eq!(
        files,
        ["dataset.json", "manifest.json", "train.bin", "val.bin"]
    );
    assert_eq!(verify(&out).unwrap(), Verified::Recorded);
    assert!(!out.join("download").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["sources"].as_array().unwrap().len(), 3);
    let listed = &manifest["sources"][0]["sha256"];
    let served = hex(&Sha256::digest(
        &hub.lock().unwrap().files["plain_text/train-00000-of-00003.parquet"],
    ));
    assert_eq!(listed, &serde_json::Value::String(served));
    // The listing was read over several pages.
    assert!(hub
        .lock()
        .unwrap()
        .log
        .iter()
        .any(|p| p.contains("cursor=2")));

    // Rerunning a finished run does nothing.
    let before = snapshot(&out);
    let again = run(&opts).unwrap();
    assert!(again.already_complete);
    assert_eq!(again.documents, s.documents);
    assert_eq!(snapshot(&out), before);
}

#[test]
fn split_is_by_document_and_stable_for_a_seed() {
    let (_hub, base, docs) = hub_with_shards();
    let mut outputs = Vec::new();
    for (name, threads, seed) in [("split-a", 1, 7), ("split-b", 2, 7), ("split-c", 2, 8)] {
        let out = TempDir::new("owt", name);
        let mut opts = hub_options(&base, &out);
        opts.docs.val_fraction = 0.2;
        opts.docs.seed = seed;
        opts.docs.num_proc = Some(threads);
        let s = run(&opts).unwrap();
        let (train, val) = expected(&docs, seed, 0.2);
        assert_eq!(read_u16(&out.join("train.bin")), train, "{name}");
        assert_eq!(read_u16(&out.join("val.bin")), val, "{name}");
        let n = s.documents as f64;
        assert!(
            (s.val_documents as f64 - 0.2 * n).abs() < 4.0 * (0.16 * n).sqrt(),
            "{name}: {} of {n}",
            s.val_documents
        );
        outputs.push(snapshot(&out));
    }
    assert_eq!(
        outputs[0]["train.bin"], outputs[1]["train.bin"],
        "thread count changed the output"
    );
    assert_ne!(
        outputs[1]["val.bin"], outputs[2]["val.bin"],
        "the seed did not change the split"
    );
}

/// The outputs of an uninterrupted run, to compare resumed runs with (in a folder of its own
/// for each test: tests run in parallel).
fn uninterrupted(test: &str, base: &str, shard_tokens: Option<usize>) -> BTreeMap<String, Vec<u8>> {
    let out = TempDir::new("owt", &format!("uninterrupted-{test}"));
    let mut opts = hub_options(base, &out);
    opts.docs.val_fraction = 0.1;
    opts.docs.shard_tokens = shard_tokens;
    run(&opts).unwrap();
    let mut files = snapshot(&out);
    files.remove("manifest.json");
    files
}

#[test]
fn interrupted_after_the_first_shard_resumes_byte_identical() {
    let (hub, base, _docs) = hub_with_shards();
    let want = uninterrupted("resume", &base, Some(3000));
    assert!(
        want.len() > 6,
        "expected several output shards, got {:?}",
        want.keys()
    );

    let out = TempDir::new("owt", "resume");
    let mut opts = hub_options(&base, &out);
    opts.docs.val_fraction = 0.1;
    opts.docs.shard_tokens = Some(3000);
    let second = "plain_text/train-00001-of-00003.parquet".to_string();
    hub.lock().unwrap().missing.insert(second.clone());
    let err = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        err.contains("1 of 3 source files are done") && err.contains("rerun"),
        "{err}"
    );
    assert!(err.contains("404"), "{err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
    assert_eq!(manifest["done"].as_array().unwrap().len(), 1);
    assert!(
        !out.join("train_000000.bin").exists(),
        "nothing is renamed into place before the end"
    );

    // A crash in the middle of the second shard leaves tokens past the manifest's record.
    let current = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy().ends_with(".bin.tmp") && p.to_string_lossy().contains("train_")
        })
        .max()
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&current)
        .unwrap()
        .write_all(&[7u8; 999])
        .unwrap();

    hub.lock().unwrap().missing.clear();
    let s = run(&opts).unwrap();
    assert_eq!(s.resumed_after_sources, 1);
    let mut got = snapshot(&out);
    got.remove("manifest.json");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(
        got == want,
        "the resumed output differs from the uninterrupted one"
    );
}

#[test]
fn a_shard_that_fails_its_checksum_is_a_clear_error() {
    let (hub, base, _docs) = hub_with_shards();
    let bad = "plain_text/train-00002-of-00003.parquet".to_string();
    hub.lock()
        .unwrap()
        .listed_sha256
        .insert(bad.clone(), "ab".repeat(32));
    let out = TempDir::new("owt", "checksum");
    let err = format!("{:#}", run(&hub_options(&base, &out)).unwrap_err());
    assert!(err.contains(&bad) && err.contains("checksum"), "{err}");
    assert!(err.contains("2 of 3 source files are done"), "{err}");
    // The bad file was deleted; it was downloaded twice.
    assert!(!out.join("download").join(bad.replace('/', "--")).exists());
    let fetched = hub
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|p| p.ends_with(&bad))
        .count();
    assert_eq!(fetched, 2);
}

#[test]
fn no_network_says_how_to_use_local_files() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = TempDir::new("owt", "offline");
    let err = format!(
        "{:#}",
        run(&hub_options(&format!("http://127.0.0.1:{port}"), &out)).unwrap_err()
    );
    assert!(
        err.contains("cannot reach") && err.contains("--input DIR"),
        "{err}"
    );
}

#[test]
fn a_missing_text_field_names_the_columns() {
    let (_hub, base, _docs) = hub_with_shards();
    let out = TempDir::new("owt", "field");
    let mut opts = hub_options(&base, &out);
    opts.docs.text_field = "content".to_string();
    let err = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        err.contains("no column \"content\"")
            && err.contains("\"text\"")
            && err.contains("--text_field"),
        "{err}"
    );
}

#[test]
fn local_files_and_max_docs() {
    let docs = documents();
    let dir = TempDir::new("owt", "local-in");
    let shards = shards(&docs);
    for (i, (_, bytes)) in shards.iter().enumerate() {
        std::fs::write(dir.join(format!("part-{i}.parquet")), bytes).unwrap();
    }
    // JSON lines and a text file after the parquet files (folders are read in name order).
    let extra = ["a JSON line document", "another one"];
    let jsonl: String = extra
        .iter()
        .map(|t| format!("{}\n", serde_json::json!({"text": t})))
        .collect();
    std::fs::write(dir.join("x.jsonl"), jsonl).unwrap();
    std::fs::write(dir.join("y.txt"), "the last document\n").unwrap();
    let mut all = docs.clone();
    all.extend(extra.iter().map(|t| Some(t.to_string())));
    all.push(Some("the last document\n".to_string()));

    let out = TempDir::new("owt", "local-out");
    let mut opts = StreamPrepareOptions::new(StreamSource::Local(vec![dir.to_path_buf()]), &*out);
    opts.docs.progress = false;
    opts.docs.val_fraction = 0.0;
    let s = run(&opts).unwrap();
    assert_eq!(s.sources, 5);
    assert_eq!(read_u16(&out.join("train.bin")), expected(&all, 0, 0.0).0);
    // The user's files are kept.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);

    let out = TempDir::new("owt", "local-max");
    let mut opts = StreamPrepareOptions::new(StreamSource::Local(vec![dir.to_path_buf()]), &*out);
    opts.docs.progress = false;
    opts.docs.val_fraction = 0.0;
    opts.max_docs = Some(150);
    let s = run(&opts).unwrap();
    assert_eq!(s.documents, 150);
    let first: Vec<Option<String>> = docs.iter().flatten().take(150).cloned().map(Some).collect();
    assert_eq!(read_u16(&out.join("train.bin")), expected(&first, 0, 0.0).0);
}

#[test]
fn other_settings_do_not_mix_with_an_unfinished_run() {
    let (hub, base, _docs) = hub_with_shards();
    let out = TempDir::new("owt", "settings");
    let mut opts = hub_options(&base, &out);
    hub.lock()
        .unwrap()
        .missing
        .insert("plain_text/train-00001-of-00003.parquet".into());
    assert!(run(&opts).is_err());
    hub.lock().unwrap().missing.clear();
    opts.docs.val_fraction = 0.01;
    let err = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        err.contains("val_fraction") && err.contains("--restart"),
        "{err}"
    );
    opts.restart = true;
    let s = run(&opts).unwrap();
    assert_eq!(s.resumed_after_sources, 0);
}

/// `nanogpt prepare openwebtext` from the local hub into `data_dir/x`, with the settings of
/// [`uninterrupted`] (val_fraction 0.1, train.bin / val.bin).
fn prepare_command(base: &str, data_dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_nanogpt"));
    c.args(["prepare", "openwebtext", "--dataset", REPO])
        .args(["--name", "x", "--val_fraction=0.1"])
        .arg("--data_dir")
        .arg(data_dir)
        .env("HF_ENDPOINT", base);
    c
}

/// A full disk, simulated with a file-size limit on the process (writes fail with EFBIG as
/// they would with ENOSPC): a clear error, and a rerun finishes byte-identical.
#[test]
fn a_full_disk_stops_resumably() {
    let (hub, base, _docs) = hub_with_shards();
    let want = uninterrupted("disk-full", &base, None);
    let out = TempDir::new("owt", "disk-full");
    let command = |limit: Option<u64>| {
        let mut c = prepare_command(&base, &out);
        if let Some(limit) = limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    libc::setrlimit(libc::RLIMIT_FSIZE, &l);
                    Ok(())
                });
            }
        }
        c.output().unwrap()
    };
    // The limit lets the downloads through; train.bin grows past it.
    let largest = hub
        .lock()
        .unwrap()
        .files
        .values()
        .map(|b| b.len())
        .max()
        .unwrap() as u64;
    let final_size = want["train.bin"].len() as u64;
    assert!(
        final_size > largest + 8192,
        "train.bin {final_size}, largest download {largest}"
    );
    let failed = command(Some(largest + 10));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains("disk full") || stderr.contains("too large"),
        "{stderr}"
    );
    assert!(stderr.contains("rerun the same command"), "{stderr}");
    let ok = command(None);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut got = snapshot(&out.join("x"));
    got.remove("manifest.json");
    assert!(
        got == want,
        "the output after a full disk differs from an uninterrupted run"
    );
}

#[test]
fn without_parquet_files_in_main_the_hubs_conversion_is_used() {
    let docs = documents();
    let mut hub = Hub {
        revision: "refs/convert/parquet".to_string(),
        ..Hub::default()
    };
    // The conversion's layout: config/split/NNNN.parquet.
    hub.files.extend(
        shards(&docs)
            .into_iter()
            .enumerate()
            .map(|(i, (_, bytes))| (format!("plain_text/train/{i:04}.parquet"), bytes)),
    );
    let base = serve(Arc::new(Mutex::new(hub)));
    let out = TempDir::new("owt", "converted");
    let mut opts = hub_options(&base, &out);
    opts.docs.val_fraction = 0.0;
    let s = run(&opts).unwrap();
    assert_eq!(s.sources, 3);
    assert!(!s.partial_conversion);
    assert_eq!(read_u16(&out.join("train.bin")), expected(&docs, 0, 0.0).0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["revision"], "refs/convert/parquet");

    // Asking for main alone finds nothing, and says so.
    let main_out = TempDir::new("owt", "converted-main");
    let mut opts = hub_options(&base, &main_out);
    if let StreamSource::Hub(h) = &mut opts.source {
        h.revision = Some("main".to_string());
    }
    let err = format!("{:#}", run(&opts).unwrap_err());
    assert!(
        err.contains("no parquet files") && err.contains("--input"),
        "{err}"
    );
}

/// Ctrl-C (SIGINT) to the binary while it waits for a shard: it stops with a message,
/// keeps the first shard's work, and a rerun finishes byte-identical to an uninterrupted run.
#[test]
fn ctrl_c_stops_resumably() {
    let (hub, base, _docs) = hub_with_shards();
    let want = uninterrupted("ctrl-c", &base, None);
    let out = TempDir::new("owt", "ctrl-c");
    let command = || {
        let mut c = prepare_command(&base, &out);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    // Slow shards 2 and 3: however slowly the machine tokenizes, the run is still waiting for
    // one of them when the signal comes.
    for i in 1..3 {
        let path = format!("plain_text/train-{i:05}-of-00003.parquet");
        hub.lock().unwrap().slow.insert(path);
    }
    let child = command().spawn().unwrap();
    let manifest = out.join("x").join("manifest.json");
    let start = std::time::Instant::now();
    loop {
        let done = std::fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|m| m["done"].as_array().is_some_and(|d| d.len() == 1));
        if done {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 30,
            "the first shard never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success());
    assert!(
        stderr.contains("interrupted after")
            && stderr.contains("of 3 source files")
            && stderr.contains("rerun the same command"),
        "{stderr}"
    );

    hub.lock().unwrap().slow.clear();
    let again = command().output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let mut got = snapshot(&out.join("x"));
    got.remove("manifest.json");
    assert!(
        got == want,
        "the output after Ctrl-C differs from an uninterrupted run"
    );
}

/// Fault injection: the binary killed with SIGKILL at seeded random moments of every phase
/// (listing, downloading, tokenizing, recording a file, committing the outputs), over an
/// earlier character dataset in the same folder, and the same command rerun, killed again
/// (up to three kills in a row) or to the end (`NANOGPT_FAULT_KILLS`, default 30 kills;
/// `NANOGPT_FAULT_SEED`). After each kill the folder holds the old dataset, the new one, or a
/// commit in progress that the reader refuses; the last rerun is byte-identical to an
/// uninterrupted run.
#[test]
fn killed_at_random_moments_resumes_byte_identical() {
    use common::fault::{
        check_after_kill, dataset_snapshot, fault_rng, kill_delay, kills_wanted, restore,
        run_killed, run_ok, temp_files, Tally,
    };
    let (_hub, base, _docs) = hub_with_shards();
    let root = TempDir::new("owt", "killed");
    let data = root.join("data");
    let ds = data.join("x");
    // The earlier dataset: characters, with a vocabulary the new one must remove.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/tinyshakespeare.txt"
    ))
    .unwrap();
    let input = root.join("old.txt");
    std::fs::write(&input, &text[..100_000]).unwrap();
    let mut old_run = std::process::Command::new(env!("CARGO_BIN_EXE_nanogpt"));
    old_run
        .args(["prepare", "text", "--tokenizer=char", "--name=x", "--input"])
        .arg(&input)
        .arg("--data_dir")
        .arg(&data);
    run_ok(&mut old_run);
    let old = dataset_snapshot(&ds);
    assert!(old.contains_key("meta.json"));
    let mut length = run_ok(&mut prepare_command(&base, &data));
    let new = dataset_snapshot(&ds);
    assert_eq!(
        new.keys().collect::<Vec<_>>(),
        ["dataset.json", "train.bin", "val.bin"]
    );

    let (mut rng, seed) = fault_rng("openwebtext");
    let mut tally = Tally::default();
    let (mut chain, mut attempt) = (0, 0);
    let mut phases = BTreeMap::new();
    while tally.kills < kills_wanted() {
        chain += 1;
        assert!(
            chain < 2 * kills_wanted(),
            "too few kills landed: {tally:?}"
        );
        restore(&ds, &old);
        // The state before each kill: the old dataset until a run commits the new one.
        let mut before = old.clone();
        for k in 0..3 {
            attempt += 1;
            let delay = kill_delay(&mut rng, length, attempt);
            let what = format!("seed {seed}, chain {chain}, kill {k} at {delay:?}");
            if let Some(took) = run_killed(&mut prepare_command(&base, &data), delay) {
                if k == 0 {
                    // Runs vary with the machine's load: aim the next kills within the fastest.
                    length = length.min(took);
                }
                tally.finished_first += 1;
                break;
            }
            let found = check_after_kill(&ds, &before, &new, &what);
            tally.add(found);
            // Which phase the kill hit, by what the manifest says.
            let manifest = std::fs::read(ds.join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            let phase = match manifest {
                None => "planning".to_string(),
                Some(m) if m["complete"] == true => "complete".to_string(),
                Some(m) if !m["outputs"].is_null() => "committing".to_string(),
                Some(m) => format!("{} files done", m["done"].as_array().map_or(0, |d| d.len())),
            };
            *phases.entry(phase).or_insert(0usize) += 1;
            if found == common::fault::Found::New {
                before = new.clone();
            }
        }
        let what = format!("seed {seed}, chain {chain}");
        run_ok(&mut prepare_command(&base, &data));
        assert!(
            dataset_snapshot(&ds) == new,
            "{what}: differs from an uninterrupted run"
        );
        assert!(temp_files(&ds).is_empty(), "{what}: {:?}", temp_files(&ds));
        assert!(!ds.join("download").exists(), "{what}: downloads left");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ds.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["complete"], true, "{what}");
        std::fs::remove_file(ds.join("manifest.json")).unwrap();
    }
    eprintln!("openwebtext: seed {seed}, run length {length:?}, {tally:?}, phases {phases:?}");
}

/// Killed in the final step (the 2-in-3 case): the outputs renamed into place, or some
/// of them, before the manifest says complete. The rerun recognises the finished outputs and
/// completes, byte-identical, instead of looking for temp files that are gone.
#[test]
fn killed_in_the_final_step_finishes_on_rerun() {
    let (_hub, base, _docs) = hub_with_shards();
    let want = uninterrupted("final-step", &base, None);
    let data = TempDir::new("owt", "final-step");
    let ds = data.join("x");
    let manifest_path = ds.join("manifest.json");
    let rerun = || {
        let out = prepare_command(&base, &data).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rerun();
    let finished = std::fs::read(&manifest_path).unwrap();
    let unfinished = {
        let mut m: serde_json::Value = serde_json::from_slice(&finished).unwrap();
        assert!(m["outputs"].as_array().is_some_and(|o| o.len() == 2));
        m["complete"] = false.into();
        m["train_files"] = serde_json::json!([]);
        m["val_files"] = serde_json::json!([]);
        serde_json::to_vec(&m).unwrap()
    };
    // Every output renamed; then val.bin not yet renamed, beside an old vocabulary the commit
    // removes.
    for partly in [false, true] {
        std::fs::write(&manifest_path, &unfinished).unwrap();
        if partly {
            std::fs::rename(ds.join("val.bin"), ds.join("val.bin.tmp")).unwrap();
            std::fs::write(ds.join("meta.json"), "{}").unwrap();
        }
        rerun();
        let mut got = snapshot(&ds);
        assert_eq!(got.remove("manifest.json").as_deref(), Some(&finished[..]));
        assert!(
            got == want,
            "partly {partly}: differs from an uninterrupted run"
        );
    }
}

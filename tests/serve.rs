//! `nanogpt serve` over loopback: the API against the generate fixture, streaming, seeds,
//! errors, continuous batching and disconnects. Each test starts the binary on a free port
//! (`--port 0`, the address read from its first line on stderr).

mod common;

use common::{fixtures, nanogpt, TempDir};
use nanogpt::engine::cpu::CpuEngine;
use nanogpt::engine::{Engine, InferenceWeights};
use nanogpt::model::weights::load_hf_dir;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(model: &Path, extra: &[&str]) -> Server {
    let mut child = nanogpt()
        .args(["--threads", "2", "serve", "--port", "0"])
        .arg(format!("--init_from={}", model.display()))
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start nanogpt serve");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("read the first line");
    let url = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|addr| format!("http://{addr}"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let server = Server { child, url };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = ureq::get(&format!("{}/health", server.url)).call() {
            if r.status() == 200 {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tiny() -> PathBuf {
    fixtures().join("tiny-gpt2")
}

/// A random GPT-2-vocabulary model slow enough (a few ms per token, 1024 positions) to keep a
/// slot busy for seconds.
fn slow_model() -> TempDir {
    let dir = TempDir::new("serve", "slow-model");
    let cfg = nanogpt::config::GptConfig {
        n_layer: 4,
        n_head: 4,
        n_embd: 256,
        block_size: 1024,
        vocab_size: 50257,
        pad_vocab: true,
        bias: true,
        dropout: 0.0,
        arch: Default::default(),
    };
    let model = nanogpt::model::Gpt::new(cfg, 7).expect("model");
    nanogpt::model::weights::save_hf_dir(&model, &dir).expect("save");
    dir
}

/// POST `body` to `route`; (status, JSON body, Retry-After).
fn post(s: &Server, route: &str, body: &str, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = ureq::post(&format!("{}{route}", s.url)).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{route}: {e}"),
    };
    let status = resp.status();
    let retry = resp.header("Retry-After").map(String::from);
    let text = resp.into_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        retry,
    )
}

fn completion(s: &Server, body: Value) -> Value {
    let (status, v, _) = post(s, "/v1/completions", &body.to_string(), None);
    assert_eq!(status, 200, "{v}");
    v
}

/// A streamed request's raw SSE text, read to the end.
fn stream_raw(s: &Server, route: &str, body: Value) -> String {
    let resp = ureq::post(&format!("{}{route}", s.url))
        .send_string(&body.to_string())
        .expect("stream");
    assert_eq!(resp.header("Content-Type"), Some("text/event-stream"));
    let mut text = String::new();
    resp.into_reader()
        .read_to_string(&mut text)
        .expect("read stream");
    text
}

/// The JSON chunks of an SSE body, checking the framing: `data: ` lines each followed by a
/// blank line, comments, and `data: [DONE]` last.
fn sse_chunks(sse: &str) -> Vec<Value> {
    assert!(
        sse.ends_with("data: [DONE]\n\n"),
        "no [DONE] at the end: {sse:?}"
    );
    let mut out = Vec::new();
    for event in sse.split_terminator("\n\n") {
        if event.starts_with(':') {
            continue;
        }
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
        assert!(!data.contains('\n'), "one line per event: {event:?}");
        if data != "[DONE]" {
            out.push(serde_json::from_str(data).expect("chunk JSON"));
        }
    }
    out
}

/// (text, token ids) of choice `i` over streamed chunks.
fn streamed_choice(chunks: &[Value], i: u64) -> (String, Vec<u64>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    for c in chunks {
        for ch in c["choices"].as_array().expect("choices") {
            if ch["index"] == i {
                text.push_str(
                    ch["text"]
                        .as_str()
                        .or(ch["delta"]["content"].as_str())
                        .unwrap_or(""),
                );
                ids.extend(
                    ch["tokens"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64),
                );
            }
        }
    }
    (text, ids)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

fn metric(s: &Server, name: &str) -> f64 {
    let text = ureq::get(&format!("{}/metrics", s.url))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("nanogpt_{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

#[test]
fn greedy_completions_equal_the_generate_fixture_token_for_token() {
    // Prompts prefilled whole, and two tokens a step.
    for chunk in ["512", "2"] {
        let s = start(&tiny(), &["--prefill_chunk", chunk]);
        greedy_equals_fixture(&s, "tiny-gpt2-generation.json");
    }
}

#[test]
fn a_llama_serves_transformers_greedy_ids() {
    let llama = fixtures().join("llama");
    let tokenizer = format!("--tokenizer={}", llama.join("tok512.model").display());
    let s = start(
        &llama.join("tiny-llama"),
        &[&tokenizer, "--prefill_chunk", "3"],
    );
    greedy_equals_fixture(&s, "llama/generation.json");
}

fn greedy_equals_fixture(s: &Server, fixture: &str) {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join(fixture)).expect("fixture"))
            .expect("fixture JSON");
    let mut checked = 0;
    for g in fixture["generations"].as_array().expect("generations") {
        if g["setting"] != "greedy" {
            continue;
        }
        let body = json!({
            "prompt": g["prompt_ids"], "max_tokens": g["max_new_tokens"], "temperature": 0,
            "ignore_eos": g["eos_token_id"].is_null(), "return_tokens": true,
        });
        let v = completion(s, body);
        let want = ids(&g["new_ids"][0]);
        assert_eq!(
            ids(&v["choices"][0]["tokens"]),
            want,
            "prompt {}",
            g["prompt"]
        );
        assert_eq!(v["usage"]["completion_tokens"], want.len());
        // The text is the tokens' text.
        let (_, text, _) = post(s, "/detokenize", &json!({"tokens": want}).to_string(), None);
        assert_eq!(v["choices"][0]["text"], text["content"]);
        checked += 1;
    }
    assert!(checked >= 2, "the fixture has greedy generations");
}

#[test]
fn streamed_text_equals_the_whole_response_and_seeds_repeat() {
    let s = start(&tiny(), &[]);
    for extra in [
        json!({}),
        json!({"stop": ["\n\n", "the"]}),
        json!({"logprobs": 3}),
    ] {
        let mut body = json!({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0.9,
                              "top_k": 40, "seed": 11, "n": 2, "return_tokens": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let whole = completion(&s, body.clone());
        body["stream"] = json!(true);
        let streamed = sse_chunks(&stream_raw(&s, "/v1/completions", body.clone()));
        for i in 0..2u64 {
            let (text, tokens) = streamed_choice(&streamed, i);
            let choice = &whole["choices"][i as usize];
            assert_eq!(
                text,
                choice["text"].as_str().unwrap(),
                "choice {i} of {body}"
            );
            assert_eq!(tokens, ids(&choice["tokens"]));
            let last = streamed
                .iter()
                .flat_map(|c| c["choices"].as_array().unwrap().clone())
                .rfind(|c| c["index"] == i)
                .unwrap();
            assert_eq!(last["finish_reason"], choice["finish_reason"]);
        }
        // The same seed gives the same choices; the two choices of one request differ.
        let again = completion(
            &s,
            body.as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.remove("stream");
                    Value::Object(o)
                })
                .unwrap(),
        );
        assert_eq!(again["choices"], whole["choices"]);
        assert_ne!(whole["choices"][0]["tokens"], whole["choices"][1]["tokens"]);
    }
    // n=3 gives three choices, indexed 0..3; a stop string is not in the text.
    let v = completion(
        &s,
        json!({"prompt": "\n", "max_tokens": 30, "n": 3, "seed": 5}),
    );
    let idx: Vec<u64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [0, 1, 2]);
    let v = completion(
        &s,
        json!({"prompt": "\n", "max_tokens": 30, "temperature": 0, "stop": ","}),
    );
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(!text.contains(','), "{text:?}");
}

#[test]
fn sse_framing_is_right_and_an_emoji_is_never_split() {
    let s = start(&tiny(), &[]);
    let (_, t, _) = post(&s, "/tokenize", r#"{"content": "😀"}"#, None);
    let emoji = ids(&t["tokens"]);
    assert_eq!(emoji.len(), 2, "GPT-2 spells 😀 in two tokens: {emoji:?}");
    // Bias the two halves so greedy decoding alternates them (the frequency penalty lowers
    // the token just written below the other): 😀😀😀, each split over two tokens.
    let bias = json!({emoji[0].to_string(): 100, emoji[1].to_string(): 99});
    let body = json!({"prompt": "Smile:", "max_tokens": 6, "temperature": 0, "logit_bias": bias,
                      "frequency_penalty": 2, "stream": true, "logprobs": 1});
    let raw = stream_raw(&s, "/v1/completions", body);
    let chunks = sse_chunks(&raw);
    let (text, _) = streamed_choice(&chunks, 0);
    assert_eq!(text, "😀😀😀");
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        let piece = c["choices"][0]["text"].as_str().unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "a chunk split the emoji: {raw}"
        );
    }
    // Chat streams open with the role and carry deltas.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                      "temperature": 0, "stream": true});
    let chunks = sse_chunks(&stream_raw(&s, "/v1/chat/completions", body.clone()));
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (text, _) = streamed_choice(&chunks, 0);
    body.as_object().unwrap();
    let mut whole_body = body.clone();
    whole_body["stream"] = json!(false);
    let (status, whole, _) = post(&s, "/v1/chat/completions", &whole_body.to_string(), None);
    assert_eq!(status, 200);
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        text
    );
}

#[test]
fn bad_requests_get_openai_errors() {
    let s = start(&tiny(), &["--api_key", "sekrit"]);
    let key = Some("sekrit");
    let cases = [
        ("{not json", "JSON"),
        (r#"{"prompt": "x", "best_of": 2}"#, "best_of"),
        (r#"{"prompt": "x", "temperature": -1}"#, "temperature"),
        (r#"{"prompt": "x", "top_p": "high"}"#, "top_p"),
        (r#"{"prompt": "x", "n": 0}"#, "n must be"),
        (
            r#"{"prompt": "x", "logit_bias": {"99999999": 5}}"#,
            "logit_bias",
        ),
    ];
    for (body, says) in cases {
        let (status, v, _) = post(&s, "/v1/completions", body, key);
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("OpenAI error shape: {v}"));
        assert!(msg.contains(says), "{body}: {msg}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let long = json!({"prompt": vec![13; 129]}).to_string();
    let (status, v, _) = post(&s, "/v1/completions", &long, key);
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context of 128"),
        "{v}"
    );
    for k in [None, Some("wrong")] {
        let (status, v, _) = post(&s, "/v1/completions", r#"{"prompt": "x"}"#, k);
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    let (status, _, _) = post(&s, "/v1/completions", r#"{"prompt": "x"}"#, key);
    assert_eq!(status, 200);
    // The page and the health check stay open.
    assert_eq!(
        ureq::get(&format!("{}/health", s.url))
            .call()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        ureq::get(&format!("{}/", s.url)).call().unwrap().status(),
        200
    );
}

/// Reads a raw HTTP/1.1 streamed response from `stream` until `events` data events arrived.
fn read_events(stream: &mut TcpStream, events: usize) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("data: ").count() < events {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

fn open_stream(s: &Server, body: &Value) -> TcpStream {
    let addr = s.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    let body = body.to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    stream
}

#[test]
fn a_full_queue_gets_503_keep_alives_flow_and_a_dropped_client_frees_its_slot() {
    let model = slow_model();
    let s = start(
        &model,
        &["--parallel", "1", "--max_queue", "1", "--keep_alive", "0.2"],
    );
    let long = json!({"prompt": "The", "max_tokens": null, "temperature": 0, "ignore_eos": true, "stream": true});
    let mut first = open_stream(&s, &long);
    read_events(&mut first, 3);
    // The second waits in the queue and gets keep-alive comments meanwhile; the first comment
    // also proves it is queued before the third request comes (posting at once raced it: the
    // third could take the queue's place and the second get the 503).
    let mut second = open_stream(&s, &long);
    let mut waited = String::new();
    let mut buf = [0u8; 1024];
    while !waited.contains(": keep-alive") {
        let n = second.read(&mut buf).expect("read");
        assert!(n > 0);
        waited.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        !waited.contains("data: {"),
        "it was queued, not decoding: {waited}"
    );
    let (status, v, retry) = post(
        &s,
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 2}"#,
        None,
    );
    assert_eq!(status, 503, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(v["error"]["message"].as_str().unwrap().contains("queue"));
    // Drop the first client: its slot goes to the second within a decode step.
    let generated = metric(&s, "generated_tokens_total");
    drop(first);
    let t0 = Instant::now();
    read_events(&mut second, 3);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the slot was freed after {:?}",
        t0.elapsed()
    );
    assert!(
        generated < 900.0,
        "the first request ran to its end ({generated} tokens): the test proves nothing"
    );
    drop(second);
    let t0 = Instant::now();
    while metric(&s, "busy_slots") > 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a dropped client kept its slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_streams_equal_the_same_requests_one_at_a_time() {
    let s = start(&tiny(), &["--parallel", "4"]);
    let bodies: Vec<Value> = (0..4)
        .map(|i| {
            let prompt = ["Hello there", "The king", "\n", "To be or"][i];
            let temperature = [0.0, 0.8, 1.0, 0.0][i];
            json!({"prompt": prompt, "max_tokens": 100,
                   "temperature": temperature, "seed": i, "stream": true,
                   "return_tokens": true, "ignore_eos": true})
        })
        .collect();
    let alone: Vec<(String, Vec<u64>)> = bodies
        .iter()
        .map(|b| {
            streamed_choice(
                &sse_chunks(&stream_raw(&s, "/v1/completions", b.clone())),
                0,
            )
        })
        .collect();
    let (steps0, slots0) = (
        metric(&s, "decode_steps_total"),
        metric(&s, "decode_step_slots_total"),
    );
    let url = s.url.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let together: Vec<(String, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let (barrier, url) = (barrier.clone(), url.clone());
                scope.spawn(move || {
                    barrier.wait();
                    let resp = ureq::post(&format!("{url}/v1/completions"))
                        .send_string(&b.to_string())
                        .expect("stream");
                    let mut text = String::new();
                    resp.into_reader().read_to_string(&mut text).unwrap();
                    streamed_choice(&sse_chunks(&text), 0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    let steps = metric(&s, "decode_steps_total") - steps0;
    let slots = metric(&s, "decode_step_slots_total") - slots0;
    assert!(
        slots / steps > 1.0,
        "{slots} busy slots over {steps} steps: not batched"
    );
    assert!(metric(&s, "max_step_slots") >= 2.0);
}

#[test]
fn tokenize_models_defaults_and_repetition_routes_answer() {
    let s = start(&tiny(), &[]);
    let (_, t, _) = post(&s, "/tokenize", r#"{"content": "Hello world"}"#, None);
    assert_eq!(ids(&t["tokens"]), [15496, 995]);
    let (_, d, _) = post(&s, "/detokenize", r#"{"tokens": [15496, 995]}"#, None);
    assert_eq!(d["content"], "Hello world");
    let m: Value = ureq::get(&format!("{}/v1/models", s.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(m["data"][0]["context_length"], 128);
    let d: Value = ureq::get(&format!("{}/v1/defaults", s.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(d["max_tokens"], 16);
    let (_, r, _) = post(
        &s,
        "/v1/repetition",
        r#"{"tokens": [1, 2, 3, 4, 5, 6, 4, 5, 6, 4, 5, 6]}"#,
        None,
    );
    assert_eq!(r["loop"], json!({"start": 3, "period": 3, "copies": 3}));
    assert!(r["rep_3"].as_f64().unwrap() > 0.0);
}

#[test]
fn train_dashboard_shows_metrics_as_they_are_written_and_samples_checkpoints() {
    let root = TempDir::new("serve", "dashboard");
    let data = common::prepare_shakespeare_char(&root);
    let out = root.join("out");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // The training process serves the dashboard: killed when `s` drops.
    let child = nanogpt()
        .args([
            "--threads=1",
            "train",
            "--dashboard",
            &format!("--dashboard_port={port}"),
        ])
        .args(common::TINY_CHAR_TRAIN)
        .args(["--eval_iters=2", "--eval_interval=40", "--max_iters=100000"])
        .arg(format!("--data_dir={}", data.display()))
        .arg(format!("--out_dir={}", out.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start training");
    let s = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let watch = |since: u64| -> Option<Value> {
        ureq::get(&format!("{}/v1/watch?since={since}", s.url))
            .call()
            .ok()?
            .into_json()
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first: Option<Value> = None;
    let grown = loop {
        assert!(Instant::now() < deadline, "no metrics appeared: {first:?}");
        if let Some(w) = watch(0) {
            match &first {
                None if w["next"].as_u64() > Some(0) => first = Some(w),
                Some(f)
                    if w["next"].as_u64() > f["next"].as_u64()
                        && !w["samples"].as_array().unwrap().is_empty() =>
                {
                    break w
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let first = first.unwrap();
    // Reading from `next` gives only the new lines, which continue the old ones.
    let since = first["next"].as_u64().unwrap();
    let rest = watch(since).expect("watch");
    assert_eq!(rest["lines"][0], grown["lines"][since as usize]);
    assert!(grown["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["tokens_per_s"].is_number()));
    let sample = &grown["samples"][0];
    assert!(sample["iter"].as_u64().unwrap() >= 40, "{sample}");
    assert!(!sample["text"].as_str().unwrap().is_empty());
    // The playground serves the run's checkpoint.
    let v = completion(&s, json!({"prompt": "ROMEO:", "max_tokens": 5}));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    drop(s);
}

#[test]
fn health_says_loading_until_the_watched_run_has_a_checkpoint() {
    let dir = TempDir::new("serve", "no-checkpoint-yet");
    let mut child = nanogpt()
        .args(["serve", "--port", "0"])
        .arg(format!("--watch={}", dir.display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let s = Server {
        child,
        url: format!("http://{addr}"),
    };
    let (status, v, _) = {
        let r = ureq::get(&format!("{}/health", s.url)).call();
        match r {
            Err(ureq::Error::Status(code, r)) => (code, r.into_json::<Value>().unwrap(), ()),
            other => panic!("expected 503, got {other:?}"),
        }
    };
    assert_eq!(status, 503);
    assert_eq!(v["status"], "loading");
    let (status, v, retry) = post(&s, "/v1/completions", r#"{"prompt": "x"}"#, None);
    assert_eq!(status, 503, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    // The dashboard answers already: no lines yet.
    let w: Value = ureq::get(&format!("{}/v1/watch", s.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(w["next"], 0);
    drop(s);
}

/// Natural-log probabilities of `next` after each prefix of `context` (prefill, then one token a
/// step, as a slot decodes), computed in-process with `weights`.
fn logprobs_in_process(weights: InferenceWeights, prompt: &[u32], next: &[u32]) -> Vec<f64> {
    let mut engine = CpuEngine::new(load_hf_dir(&tiny()).expect("tiny-gpt2"));
    engine.set_inference_weights(weights).expect("set weights");
    let cfg = engine.config().clone();
    let mut cache = engine.kv_cache(1, prompt.len() + next.len());
    let mut logits = vec![0.0; cfg.padded_vocab_size()];
    let mut feed = prompt.to_vec();
    let mut out = Vec::new();
    for &t in next {
        engine
            .forward_cached_all(&mut cache, &feed, feed.len(), &mut logits)
            .expect("forward");
        let row = &logits[..cfg.vocab_size];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        out.push(row[t as usize] as f64 - max - sum.ln());
        feed = vec![t];
    }
    out
}

#[test]
fn dtype_sets_the_weights_every_slot_decodes_with() {
    let prompt: Vec<u32> = vec![464, 2068, 7586, 21831, 18045, 625];
    for dtype in ["bfloat16", "int8"] {
        let s = start(&tiny(), &["--dtype", dtype, "--prefill_chunk", "512"]);
        let v = completion(
            &s,
            json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 1,
                   "ignore_eos": true, "return_tokens": true}),
        );
        let choice = &v["choices"][0];
        let tokens: Vec<u32> = ids(&choice["tokens"]).iter().map(|&t| t as u32).collect();
        let served: Vec<f64> = choice["logprobs"]["token_logprobs"]
            .as_array()
            .expect("token_logprobs")
            .iter()
            .map(|l| l.as_f64().expect("a number"))
            .collect();
        let want = logprobs_in_process(dtype.parse().expect("dtype"), &prompt, &tokens);
        let f32s = logprobs_in_process(InferenceWeights::F32, &prompt, &tokens);
        let off = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        let (to_dtype, to_f32) = (off(&served, &want), off(&served, &f32s));
        eprintln!(
            "{dtype}: served logprobs off by {to_dtype:e} from {dtype}'s, {to_f32:e} from f32's"
        );
        assert_eq!(served.len(), 8);
        // The server's numbers are this dtype's (to f32 rounding of the sums) and not f32's.
        assert!(to_dtype < 1e-5, "{dtype}: {served:?} vs {want:?}");
        assert!(
            to_f32 > 100.0 * to_dtype.max(1e-7),
            "{dtype}: as f32's {f32s:?}"
        );
    }
    let out = nanogpt()
        .args(["serve", "--port", "0", "--dtype", "float8"])
        .arg(format!("--init_from={}", tiny().display()))
        .output()
        .expect("run nanogpt serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--dtype=float8: expected float32, bfloat16 or int8"),
        "{err}"
    );
    assert!(
        !err.contains("listening"),
        "a bad --dtype stops it before the port opens: {err}"
    );
}

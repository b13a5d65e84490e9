//! The HTTP side: routes, authentication, admission to the queue, and OpenAI's response shapes
//! (whole or as Server-Sent Events). Nothing here computes: requests become
//! [`SeqJob`]s for the engine thread, whose [`Event`]s become responses.

// A handler's early exit is the response itself, handed straight back to axum: boxing it
// would only add an allocation per error.
#![allow(clippy::result_large_err)]

use super::request::{self, Kind, Request};
use super::scheduler::{Event, SeqJob, TokenInfo};
use super::{NotReady, Server, INDEX_HTML};
use crate::sample::repetition::{distinct_n, rep_n, trailing_loop, LoopRule};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/defaults", get(defaults))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/repetition", post(repetition))
        .route("/v1/watch", get(watch))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(server)
}

/// OpenAI's error shape.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::SERVICE_UNAVAILABLE => "server_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: impl AsRef<str>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", message.as_ref())
}

/// `Err` is the 401 when `--api_key` is set and the request does not carry it.
fn authorize(server: &Server, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &server.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return Ok(());
    }
    Err(error(
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        "missing or wrong API key: send the header 'Authorization: Bearer <key given to --api_key>'",
    ))
}

/// The loaded model, or the 503 that says it is not ready yet.
fn ready(server: &Server) -> Result<&super::Ready, Response> {
    server.ready.get().ok_or_else(|| {
        let message = match server.not_ready() {
            NotReady::Failed(e) => format!("the model failed to load: {e}"),
            NotReady::Loading(Some(note)) => format!("the model is not loaded yet: {note}"),
            NotReady::Loading(None) => "the model is still loading: retry in a moment".into(),
        };
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "loading", &message);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    })
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn health(State(server): State<Arc<Server>>) -> Response {
    match ready(&server) {
        Ok(_) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(_) => {
            let body = match server.not_ready() {
                NotReady::Failed(message) => json!({"status": "error", "message": message}),
                NotReady::Loading(note) => json!({"status": "loading", "message": note}),
            };
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

async fn models(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&server, &headers) {
        return r;
    }
    let data: Vec<Value> = server
        .ready
        .get()
        .map(|r| {
            json!({"id": r.name, "object": "model", "created": 0, "owned_by": "nanogpt",
                   "context_length": r.block_size, "vocab_size": r.vocab_size})
        })
        .into_iter()
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn defaults() -> Response {
    axum::Json(request::defaults()).into_response()
}

async fn metrics(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&server, &headers) {
        return r;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        server.metrics.render(server.parallel),
    )
        .into_response()
}

async fn tokenize(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = match authorize(&server, &headers).and_then(|_| ready(&server)) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("the body is not valid JSON: {e}")),
    };
    let Some(text) = v.get("content").and_then(Value::as_str) else {
        return bad_request("expected {\"content\": \"text\"}");
    };
    match r.tok.encode(text) {
        Ok(ids) => axum::Json(json!({"tokens": ids})).into_response(),
        Err(e) => bad_request(format!("content: {e:#}")),
    }
}

async fn detokenize(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = match authorize(&server, &headers).and_then(|_| ready(&server)) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let ids = match token_ids(&body) {
        Ok(ids) => ids,
        Err(e) => return bad_request(e),
    };
    match r.tok.decode(&ids) {
        Ok(text) => axum::Json(json!({"content": text})).into_response(),
        Err(e) => bad_request(format!("tokens: {e:#}")),
    }
}

/// `{"tokens": [ids]}`.
fn token_ids(body: &[u8]) -> Result<Vec<u32>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    v.get("tokens")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<Vec<u32>>>()
        })
        .ok_or_else(|| "expected {\"tokens\": [token ids]}".to_string())
}

/// The repetition metrics of `nanogpt repetition` and its loop detector on one sequence.
async fn repetition(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&server, &headers) {
        return r;
    }
    let ids = match token_ids(&body) {
        Ok(ids) => ids,
        Err(e) => return bad_request(e),
    };
    let seq = [ids.as_slice()];
    let lp = trailing_loop(&ids, &LoopRule::default()).map(|(period, covered)| {
        json!({"start": ids.len() - covered, "period": period, "copies": covered / period})
    });
    axum::Json(json!({
        "tokens": ids.len(),
        "rep_2": rep_n(&seq, 2), "rep_3": rep_n(&seq, 3), "rep_4": rep_n(&seq, 4),
        "distinct_4": distinct_n(&seq, 4),
        "loop": lp,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct WatchQuery {
    since: Option<usize>,
}

async fn watch(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Response {
    if let Err(r) = authorize(&server, &headers) {
        return r;
    }
    let Some(w) = &server.watch else {
        return error(
            StatusCode::NOT_FOUND,
            "not_watching",
            "this server watches no training run: start it with --watch=OUT_DIR, or train with --dashboard",
        );
    };
    match w.read(q.since.unwrap_or(0)) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "watch",
            &format!("{e:#}"),
        ),
    }
}

async fn completions(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    serve_request(s, headers, body, Kind::Completion).await
}

async fn chat_completions(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve_request(s, headers, body, Kind::Chat).await
}

/// Choices admitted to the queue and not yet in a slot; given back when the request ends.
struct Admission {
    server: Arc<Server>,
    waiting: usize,
}

impl Admission {
    fn started(&mut self) {
        if self.waiting > 0 {
            self.waiting -= 1;
            self.server.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.server
            .waiting
            .fetch_sub(self.waiting as u64, Ordering::SeqCst);
    }
}

async fn serve_request(
    server: Arc<Server>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Response {
    let r = match authorize(&server, &headers).and_then(|_| ready(&server)) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let req = match request::parse(
        &body,
        kind,
        &r.tok,
        r.vocab_size,
        r.block_size,
        &server.template,
    ) {
        Ok(req) => req,
        Err(e) => return bad_request(e),
    };
    // Admission: refuse rather than queue without bound.
    let n = req.n as u64;
    let admitted = server
        .waiting
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            (w + n <= server.max_queue as u64).then_some(w + n)
        })
        .is_ok();
    if !admitted {
        server.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            &format!(
                "the queue is full ({} waiting, --max_queue={}): retry later",
                server.waiting.load(Ordering::SeqCst),
                server.max_queue
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let admission = Admission {
        server: server.clone(),
        waiting: req.n,
    };
    server.metrics.requests.fetch_add(1, Ordering::Relaxed);
    server
        .metrics
        .prompt_tokens
        .fetch_add((req.prompt.len() * req.n) as u64, Ordering::Relaxed);
    let (tx, rx) = unbounded_channel();
    let prompt = Arc::new(req.prompt.clone());
    let cfg = Arc::new(req.cfg.clone());
    let choices: Vec<SeqJob> = (0..req.n)
        .map(|choice| SeqJob {
            prompt: prompt.clone(),
            cfg: cfg.clone(),
            choice,
            top_logprobs: req.logprobs,
            events: tx.clone(),
        })
        .collect();
    drop(tx);
    if r.jobs.send(choices).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "engine",
            "the engine thread has stopped",
        );
    }
    let shape = Shape::new(&req, &r.name);
    if req.stream {
        let stream = SseStream {
            rx,
            admission,
            shape,
            out: VecDeque::new(),
            keep_alive: server.keep_alive,
            done: 0,
            completion_tokens: 0,
            finished: false,
        };
        let body = Body::from_stream(futures_util::stream::unfold(stream, |mut s| async move {
            s.next_frame()
                .await
                .map(|frame| (Ok::<_, std::convert::Infallible>(frame), s))
        }));
        return (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response();
    }
    whole_response(rx, admission, shape).await
}

/// What a response looks like: ids, the object names of its route, and the options that add
/// fields to each choice.
struct Shape {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    n: usize,
    logprobs: bool,
    include_usage: bool,
    return_tokens: bool,
    /// `echo`: the prompt's text starts each choice.
    echo: Option<String>,
    prompt_tokens: usize,
    /// Characters of text so far, per choice (completions' `text_offset`).
    offsets: Vec<usize>,
}

impl Shape {
    fn new(req: &Request, model: &str) -> Shape {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = if req.kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Shape {
            kind: req.kind,
            id: format!(
                "{prefix}-{:016x}",
                crate::rng::mix64(created ^ req.cfg.seed ^ req.prompt.len() as u64)
            ),
            created,
            model: model.to_string(),
            n: req.n,
            logprobs: req.logprobs.is_some(),
            include_usage: req.include_usage,
            return_tokens: req.return_tokens,
            echo: req.echo.then(|| req.prompt_text.clone()),
            prompt_tokens: req.prompt.len(),
            offsets: vec![0; req.n],
        }
    }

    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
        }
    }

    /// The `logprobs` of `tokens` in this route's format (advancing the choice's offsets).
    fn logprobs(&mut self, choice: usize, tokens: &[TokenInfo]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.kind {
            Kind::Completion => {
                let mut offsets = Vec::with_capacity(tokens.len());
                for t in tokens {
                    offsets.push(self.offsets[choice]);
                    self.offsets[choice] += text(&t.bytes).chars().count();
                }
                json!({
                    "tokens": tokens.iter().map(|t| text(&t.bytes)).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|t| {
                        t.top.iter().map(|(b, lp)| (text(b), json!(lp))).collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Kind::Chat => json!({"content": tokens.iter().map(|t| json!({
                "token": text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|(b, lp)| json!({"token": text(b), "logprob": lp, "bytes": b})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()}),
        }
    }

    /// One streamed chunk for one choice.
    fn chunk(
        &mut self,
        choice: usize,
        text: &str,
        tokens: &[TokenInfo],
        finish: Option<&str>,
    ) -> Value {
        let logprobs = self.logprobs(choice, tokens);
        let mut c = match self.kind {
            Kind::Completion => {
                json!({"index": choice, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Chat => {
                let delta = if text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": choice, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        if self.return_tokens {
            c["tokens"] = json!(tokens.iter().map(|t| t.id).collect::<Vec<_>>());
        }
        self.envelope(vec![c], true)
    }

    fn envelope(&self, choices: Vec<Value>, stream: bool) -> Value {
        let mut v = json!({"id": self.id, "object": self.object(stream), "created": self.created,
                           "model": self.model, "choices": choices});
        if stream && self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens * self.n, "completion_tokens": completion_tokens,
               "total_tokens": self.prompt_tokens * self.n + completion_tokens})
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A streamed response: engine events become SSE frames; `: keep-alive` comments while nothing
/// comes (a request waiting in the queue).
struct SseStream {
    rx: UnboundedReceiver<Event>,
    admission: Admission,
    shape: Shape,
    out: VecDeque<Bytes>,
    keep_alive: Duration,
    done: usize,
    completion_tokens: usize,
    finished: bool,
}

impl SseStream {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            match tokio::time::timeout(self.keep_alive, self.rx.recv()).await {
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                Ok(None) => {
                    let e = json!({"error": {"message": "the engine stopped before the response was complete", "type": "server_error", "code": "engine"}});
                    self.out.push_back(sse(&e));
                    self.finish();
                }
                Ok(Some(event)) => self.on_event(event),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Started { choice } => {
                self.admission.started();
                let opening = match self.shape.kind {
                    Kind::Chat => Some(json!({"role": "assistant", "content": ""})),
                    Kind::Completion => None,
                };
                if let Some(delta) = opening {
                    let c = json!({"index": choice, "delta": delta, "logprobs": null, "finish_reason": null});
                    let v = self.shape.envelope(vec![c], true);
                    self.out.push_back(sse(&v));
                } else if let Some(prompt) = self.shape.echo.clone() {
                    let v = self.shape.chunk(choice, &prompt, &[], None);
                    self.out.push_back(sse(&v));
                }
            }
            Event::Text {
                choice,
                text,
                tokens,
            } => {
                let v = self.shape.chunk(choice, &text, &tokens, None);
                self.out.push_back(sse(&v));
            }
            Event::Done {
                choice,
                text,
                tokens,
                finish_reason,
                completion_tokens,
            } => {
                let v = self
                    .shape
                    .chunk(choice, &text, &tokens, Some(finish_reason));
                self.out.push_back(sse(&v));
                self.completion_tokens += completion_tokens;
                self.done += 1;
                if self.done == self.shape.n {
                    if self.shape.include_usage {
                        let mut v = self.shape.envelope(Vec::new(), true);
                        v["usage"] = self.shape.usage(self.completion_tokens);
                        self.out.push_back(sse(&v));
                    }
                    self.finish();
                }
            }
            Event::Failed { message } => {
                let e = json!({"error": {"message": message, "type": "server_error", "code": "engine"}});
                self.out.push_back(sse(&e));
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.finished = true;
    }
}

/// A whole (non-streamed) response: every choice's events gathered.
async fn whole_response(
    mut rx: UnboundedReceiver<Event>,
    mut admission: Admission,
    mut shape: Shape,
) -> Response {
    struct Choice {
        text: String,
        tokens: Vec<TokenInfo>,
        finish: &'static str,
    }
    let mut choices: Vec<Choice> = (0..shape.n)
        .map(|_| Choice {
            text: shape.echo.clone().unwrap_or_default(),
            tokens: Vec::new(),
            finish: "length",
        })
        .collect();
    let (mut done, mut completion_tokens) = (0, 0);
    while done < shape.n {
        match rx.recv().await {
            None => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine",
                    "the engine stopped before the response was complete",
                )
            }
            Some(Event::Started { .. }) => admission.started(),
            Some(Event::Text {
                choice,
                text,
                tokens,
            }) => {
                choices[choice].text.push_str(&text);
                choices[choice].tokens.extend(tokens);
            }
            Some(Event::Done {
                choice,
                text,
                tokens,
                finish_reason,
                completion_tokens: c,
            }) => {
                choices[choice].text.push_str(&text);
                choices[choice].tokens.extend(tokens);
                choices[choice].finish = finish_reason;
                completion_tokens += c;
                done += 1;
            }
            Some(Event::Failed { message }) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "engine", &message)
            }
        }
    }
    let kind = shape.kind;
    let out: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = shape.logprobs(i, &c.tokens);
            let mut v = match kind {
                Kind::Completion => json!({"index": i, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish}),
                Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text},
                                     "logprobs": logprobs, "finish_reason": c.finish}),
            };
            if shape.return_tokens {
                v["tokens"] = json!(c.tokens.iter().map(|t| t.id).collect::<Vec<_>>());
            }
            v
        })
        .collect();
    let mut v = shape.envelope(out, false);
    v["usage"] = shape.usage(completion_tokens);
    axum::Json(v).into_response()
}

//! `FakeLlm`: a real OpenAI-compatible chat-completions server on 127.0.0.1:0. Each request
//! takes the next scripted [`Behaviour`] (or the default one), so a scenario can make the
//! model answer, answer slowly, fail, talk nonsense or never answer — while the service
//! talks to it through async-openai exactly as it would talk to OpenAI, vLLM or Ollama.
//! The integration tests and `wealthdesk bench turns --llm fake` use it; the service
//! itself never starts one.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::stream;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One scripted answer to one POST /v1/chat/completions request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200, `text/event-stream`: one `chat.completion.chunk` per element of `chunks` (each a
    /// `delta.content`), the first after `first_delay`, the rest `per_chunk` apart; then a chunk
    /// with `finish_reason: "stop"`; then, when the request had
    /// `stream_options.include_usage = true`, a usage-only chunk (`choices: []`, `usage`
    /// with prompt_tokens from `prompt_tokens`, completion_tokens = chunks.len());
    /// then `data: [DONE]`.
    /// For a request without `"stream": true`, answers one `chat.completion` JSON object whose
    /// message content is the chunks joined, after `first_delay`.
    Reply {
        chunks: Vec<String>,
        first_delay: Duration,
        per_chunk: Duration,
        prompt_tokens: u32,
    },
    /// An HTTP error with an OpenAI-style error body
    /// `{"error":{"message":..,"type":..,"param":null,"code":null}}`, and a `Retry-After` header
    /// (seconds) when given.
    Status {
        code: u16,
        message: String,
        retry_after: Option<u64>,
    },
    /// 200 event stream whose `data:` lines are not JSON at all (`data: <html>oops`), then
    /// [DONE]. A non-streaming request gets a 200 `text/html` body.
    Garbage,
    /// 200 event stream: `good` valid content chunks (the strings), then one chunk whose data is
    /// truncated JSON (`{"id":"x","choices":[{"delta":{"content":"ha`), then [DONE].
    /// A non-streaming request gets a 200 JSON body cut off in the middle.
    Malformed { good: Vec<String> },
    /// 200 event stream with a role-only delta, a finish_reason "stop" chunk and [DONE]: no
    /// content. A non-streaming request gets a completion whose content is `null`.
    Empty,
    /// Accepts the request and sends the response headers but never a byte of body (keeps the
    /// connection open until the test ends) – a first-token timeout.
    Stall,
}

impl Behaviour {
    /// A reply streamed word by word (split on spaces, keeping the spaces), no delays.
    pub fn text(text: &str) -> Behaviour {
        Behaviour::Reply {
            chunks: text.split_inclusive(' ').map(str::to_owned).collect(),
            first_delay: Duration::ZERO,
            per_chunk: Duration::ZERO,
            prompt_tokens: 10,
        }
    }
}

/// A running fake LLM server; it stops when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    /// Starts the server. Requests take scripted behaviours in order (`push`); once the script
    /// is empty every request gets the default (initially `Behaviour::text("This is a test answer.")`).
    pub async fn start() -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake LLM binds a port");
        let addr = listener
            .local_addr()
            .expect("the fake LLM knows its address");
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Behaviour::text("This is a test answer.")),
            requests: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        });
        let router = Router::new()
            .route(
                "/v1/chat/completions",
                post(chat_completions).fallback(not_found),
            )
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let stop = shared.stop.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        FakeLlm {
            addr,
            shared,
            server,
        }
    }

    /// Base URL to configure as the service's `llm.base_url`: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues the answer to a coming request, after those already queued.
    pub fn push(&self, behaviour: Behaviour) {
        self.shared.script.lock().unwrap().push_back(behaviour);
    }

    /// The answer for every request once the script is empty.
    pub fn set_default(&self, behaviour: Behaviour) {
        *self.shared.default.lock().unwrap() = behaviour;
    }

    /// Every request body received so far (parsed JSON), oldest first. Requests refused for
    /// a missing API key are included; bodies that are not JSON are not.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Waits (up to 10 s, polling) until at least `n` requests arrived; panics with a clear
    /// message otherwise.
    pub async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = self.request_count();
            if count >= n {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the fake LLM expected at least {n} request(s) within 10 s but received \
                     {count}: {:#?}",
                    self.requests()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        // Ends open streams (their connections are cut) and lets idle connections close.
        self.shared.stop.cancel();
        self.server.abort();
    }
}

/// State shared between the handle and the request handlers.
struct Shared {
    script: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Behaviour>,
    requests: Mutex<Vec<Value>>,
    /// Cancelled when the `FakeLlm` is dropped.
    stop: CancellationToken,
}

impl Shared {
    /// Records a request body; returns its 1-based number.
    fn record(&self, request: Value) -> usize {
        let mut requests = self.requests.lock().unwrap();
        requests.push(request);
        requests.len()
    }

    fn next_behaviour(&self) -> Behaviour {
        let scripted = self.script.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| self.default.lock().unwrap().clone())
    }
}

/// One piece of a streamed response body.
type Frame = Result<Bytes, io::Error>;

/// The data of the chunk [`Behaviour::Malformed`] ends with.
const TRUNCATED_CHUNK: &str = r#"{"id":"x","choices":[{"delta":{"content":"ha"#;

/// The body [`Behaviour::Malformed`] answers a non-streaming request with.
const TRUNCATED_COMPLETION: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ha"#;

/// The data of the event [`Behaviour::Garbage`] sends.
const GARBAGE: &str = "<html>oops";

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "We could not parse the JSON body of your request.",
        );
    };
    let number = shared.record(request.clone());
    if !has_bearer_token(&headers) {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        );
    }
    let behaviour = shared.next_behaviour();
    let completion = Completion {
        id: format!("chatcmpl-fake-{number}"),
        created: unix_now(),
        model: request["model"].as_str().unwrap_or("fake-model").to_owned(),
    };
    if request["stream"].as_bool() == Some(true) {
        let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
        streamed_answer(&shared.stop, &completion, behaviour, include_usage)
    } else {
        single_answer(&shared.stop, &completion, behaviour).await
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        &format!("Unknown request URL: {method} {uri}."),
    )
}

/// `Authorization: Bearer <non-empty token>`.
fn has_bearer_token(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty())
}

/// The answer to a request with `"stream": true`.
fn streamed_answer(
    stop: &CancellationToken,
    completion: &Completion,
    behaviour: Behaviour,
    include_usage: bool,
) -> Response {
    // Each event's data, with how long to wait before sending it.
    let mut events: Vec<(Duration, String)> = Vec::new();
    match behaviour {
        Behaviour::Reply {
            chunks,
            first_delay,
            per_chunk,
            prompt_tokens,
        } => {
            for (i, chunk) in chunks.iter().enumerate() {
                let delay = if i == 0 { first_delay } else { per_chunk };
                events.push((delay, completion.chunk(content_delta(i == 0, chunk), None)));
            }
            let (delay, delta) = if chunks.is_empty() {
                (first_delay, json!({ "role": "assistant" }))
            } else {
                (Duration::ZERO, json!({}))
            };
            events.push((delay, completion.chunk(delta, Some("stop"))));
            if include_usage {
                let usage_chunk = completion.usage_chunk(prompt_tokens, chunks.len() as u32);
                events.push((Duration::ZERO, usage_chunk));
            }
        }
        Behaviour::Status {
            code,
            message,
            retry_after,
        } => return status_error(code, &message, retry_after),
        Behaviour::Garbage => events.push((Duration::ZERO, GARBAGE.to_owned())),
        Behaviour::Malformed { good } => {
            for (i, chunk) in good.iter().enumerate() {
                events.push((
                    Duration::ZERO,
                    completion.chunk(content_delta(i == 0, chunk), None),
                ));
            }
            events.push((Duration::ZERO, TRUNCATED_CHUNK.to_owned()));
        }
        Behaviour::Empty => {
            events.push((
                Duration::ZERO,
                completion.chunk(json!({ "role": "assistant" }), None),
            ));
            events.push((Duration::ZERO, completion.chunk(json!({}), Some("stop"))));
        }
        Behaviour::Stall => return stalled(stop, "text/event-stream"),
    }
    events.push((Duration::ZERO, "[DONE]".to_owned()));
    event_stream(stop.clone(), events)
}

/// The answer to a request without `"stream": true`.
async fn single_answer(
    stop: &CancellationToken,
    completion: &Completion,
    behaviour: Behaviour,
) -> Response {
    match behaviour {
        Behaviour::Reply {
            chunks,
            first_delay,
            prompt_tokens,
            ..
        } => {
            let stopped = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(first_delay) => false,
            };
            if stopped {
                return cut_off();
            }
            let content = chunks.concat();
            Json(completion.message(Some(&content), prompt_tokens, chunks.len() as u32))
                .into_response()
        }
        Behaviour::Status {
            code,
            message,
            retry_after,
        } => status_error(code, &message, retry_after),
        Behaviour::Garbage => ([(header::CONTENT_TYPE, "text/html")], GARBAGE).into_response(),
        Behaviour::Malformed { .. } => (
            [(header::CONTENT_TYPE, "application/json")],
            TRUNCATED_COMPLETION,
        )
            .into_response(),
        Behaviour::Empty => Json(completion.message(None, 10, 0)).into_response(),
        Behaviour::Stall => stalled(stop, "application/json"),
    }
}

/// A 200 event stream sending each event's data after its delay; cut off (the connection
/// breaks) when the fake stops.
fn event_stream(stop: CancellationToken, events: Vec<(Duration, String)>) -> Response {
    let frames = stream::unfold(
        (events.into_iter(), stop),
        |(mut events, stop)| async move {
            let (delay, data) = events.next()?;
            let stopped = if delay.is_zero() {
                stop.is_cancelled()
            } else {
                tokio::select! {
                    () = stop.cancelled() => true,
                    () = tokio::time::sleep(delay) => false,
                }
            };
            if stopped {
                let frame: Frame = Err(stopped_error());
                return Some((frame, (Vec::new().into_iter(), stop)));
            }
            let frame: Frame = Ok(Bytes::from(format!("data: {data}\n\n")));
            Some((frame, (events, stop)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// A 200 whose headers go out at once and whose body never sends a byte; the connection
/// breaks when the fake stops.
fn stalled(stop: &CancellationToken, content_type: &'static str) -> Response {
    let stop = stop.clone();
    let body = stream::once(async move {
        stop.cancelled().await;
        Err::<Bytes, io::Error>(stopped_error())
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// A response whose body fails at once: the connection breaks.
fn cut_off() -> Response {
    let body = stream::once(async { Err::<Bytes, io::Error>(stopped_error()) });
    Body::from_stream(body).into_response()
}

fn stopped_error() -> io::Error {
    io::Error::other("the fake LLM stopped")
}

/// An HTTP error with an OpenAI-style body and an optional `Retry-After`.
fn status_error(code: u16, message: &str, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let mut response = openai_error(status, kind, message);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `{"error":{"message":..,"type":..,"param":null,"code":null}}` with `status`.
fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": null }
    });
    (status, Json(body)).into_response()
}

/// The delta of a content chunk; the first one also carries the role.
fn content_delta(first: bool, content: &str) -> Value {
    if first {
        json!({ "role": "assistant", "content": content })
    } else {
        json!({ "content": content })
    }
}

fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// What every chunk or completion of one answer shares.
struct Completion {
    id: String,
    created: u64,
    model: String,
}

impl Completion {
    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
        .to_string()
    }

    /// The usage-only chunk sent last when the request asked for it.
    fn usage_chunk(&self, prompt_tokens: u32, completion_tokens: u32) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        })
        .to_string()
    }

    /// A whole `chat.completion`.
    fn message(&self, content: Option<&str>, prompt_tokens: u32, completion_tokens: u32) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "finish_reason": "stop",
            }],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }
}

//! The LLM behind any OpenAI-compatible chat-completions endpoint, through async-openai.
//! Every reply is streamed: deltas go to a sink as they arrive (the worker turns them
//! into ephemeral stream frames), the final text is returned whole. An attempt gets
//! `first_token_timeout_ms` for its first token; the reply as a whole, retries included,
//! gets `total_timeout_ms`. Transient failures (connection errors, 429, 5xx, a broken or
//! garbled stream, an empty completion) are retried with exponential backoff and jitter,
//! honouring a 429's `Retry-After` when it fits the deadline; after
//! `breaker_failures` failed replies in a row the circuit opens and replies fail at once
//! for `breaker_cooldown_secs`, so a dead endpoint costs clients no waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::CreateChatCompletionRequest;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::config::LlmConfig;

/// Who says a message of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// One message of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

/// What the sink hears while a reply streams.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More text of attempt `attempt` (from 1).
    Delta { attempt: u32, text: String },
    /// Attempt `attempt` broke after showing text: drop what it showed.
    Reset { attempt: u32 },
}

/// A finished reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Whether the endpoint reported usage (else it is counted here).
    pub usage_reported: bool,
    pub attempts: u32,
    pub first_token_ms: f64,
    pub total_ms: f64,
    pub finish_reason: Option<String>,
}

/// Why no reply came.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LlmFailure {
    #[error("the circuit breaker is open after repeated failures")]
    BreakerOpen,
    #[error("no first token within {ms} ms")]
    FirstTokenTimeout { ms: u64 },
    #[error("the reply did not finish within {ms} ms")]
    TotalTimeout { ms: u64 },
    /// Rate limited with a `Retry-After` beyond the reply's deadline.
    #[error("rate limited; the endpoint asks to retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A transient error that outlasted the retries.
    #[error("{message}")]
    Transient { message: String },
    /// A request the endpoint refuses (4xx): retrying would not help.
    #[error("the endpoint refused the request: {message}")]
    Rejected { message: String },
    /// The endpoint answered, but not with a usable reply (a malformed stream or an
    /// empty completion), on every attempt. Unlike the others, which mean the model is
    /// out of reach and hand the conversation to a person at once, this counts as one
    /// reply the bot could not give.
    #[error("{message}")]
    Unusable { message: String },
}

/// A failed reply with what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub failure: LlmFailure,
    pub attempts: u32,
    pub total_ms: f64,
    /// Text shown (streamed) before the failure, all of it withdrawn by a reset.
    pub streamed_chars: usize,
}

/// An HTTP answer worth retrying, with the endpoint's `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
struct RetryableStatus {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// The HTTP transport under async-openai: plain reqwest, except that 429 and 5xx answers
/// become errors that keep their status and `Retry-After` (which async-openai's own
/// error type would drop).
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
}

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = http.execute(request).await?;
            let status = response.status();
            if status.as_u16() == 429 || status.is_server_error() {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = response.text().await.unwrap_or_default();
                return Err(OpenAIError::Boxed(Box::new(RetryableStatus {
                    status: status.as_u16(),
                    retry_after,
                    body: body.chars().take(300).collect(),
                })));
            }
            Ok(response)
        })
    }
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// The configured endpoint.
pub struct Llm {
    client: Client<OpenAIConfig>,
    config: LlmConfig,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("base_url", &self.config.base_url)
            .field("model", &self.config.model)
            .finish()
    }
}

/// How one attempt ended.
enum AttemptError {
    /// Worth another attempt, after at least this long; the failure to report if it
    /// was the last one.
    Retry(LlmFailure, Option<Duration>),
    Fatal(LlmFailure),
}

impl Llm {
    /// A client for `config.base_url` (the caller checks it is set).
    pub fn new(config: &LlmConfig) -> Llm {
        let base = config.base_url.clone().unwrap_or_default();
        let mut openai = OpenAIConfig::new().with_api_base(base.trim_end_matches('/'));
        // Local servers (vLLM, llama.cpp, Ollama) accept any key; send one regardless.
        openai = openai.with_api_key(
            config
                .api_key
                .as_ref()
                .map_or("none", |k| k.expose())
                .to_string(),
        );
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(
                config.first_token_timeout_ms.min(5_000),
            ))
            .build()
            .expect("an HTTP client with a connect timeout builds");
        let client = Client::with_config(openai).with_http_service(Transport { http });
        Llm {
            client,
            config: config.clone(),
            breaker: Mutex::new(Breaker::default()),
        }
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// The request parameters a turn records.
    pub fn parameters(&self) -> serde_json::Value {
        json!({
            "model": self.config.model,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "base_url": self.config.base_url,
        })
    }

    /// Streams one reply to `messages`, retrying transient failures, calling `sink` with
    /// every delta (and a reset when a broken attempt had shown text).
    pub async fn stream(
        &self,
        messages: &[ChatMessage],
        sink: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<Completion, Failed> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.config.total_timeout_ms);
        let failed = |failure, attempts, streamed_chars| Failed {
            failure,
            attempts,
            total_ms: started.elapsed().as_secs_f64() * 1e3,
            streamed_chars,
        };
        if self.breaker_open() {
            return Err(failed(LlmFailure::BreakerOpen, 0, 0));
        }
        let request = self.request(messages);
        let mut attempt = 0;
        let mut streamed = 0;
        loop {
            attempt += 1;
            let mut shown = 0usize;
            let outcome = self
                .attempt(&request, attempt, deadline, started, sink, &mut shown)
                .await;
            streamed += shown;
            let error = match outcome {
                Ok(mut completion) => {
                    completion.attempts = attempt;
                    self.record(true);
                    return Ok(completion);
                }
                Err(e) => e,
            };
            if shown > 0 {
                sink(StreamEvent::Reset { attempt });
            }
            let (last_failure, wait) = match error {
                AttemptError::Fatal(failure) => {
                    self.record(false);
                    return Err(failed(failure, attempt, streamed));
                }
                AttemptError::Retry(failure, wait) => (failure, wait),
            };
            if attempt > self.config.max_retries {
                self.record(false);
                return Err(failed(last_failure, attempt, streamed));
            }
            let backoff = wait.unwrap_or_else(|| self.backoff(attempt));
            if Instant::now() + backoff >= deadline {
                self.record(false);
                let failure = match wait {
                    Some(w) => LlmFailure::RateLimited {
                        retry_after_secs: w.as_secs(),
                    },
                    None => LlmFailure::TotalTimeout {
                        ms: self.config.total_timeout_ms,
                    },
                };
                return Err(failed(failure, attempt, streamed));
            }
            tracing::warn!(attempt, error = %last_failure, backoff_ms = backoff.as_millis() as u64, "LLM attempt failed; retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    fn request(&self, messages: &[ChatMessage]) -> CreateChatCompletionRequest {
        serde_json::from_value(json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stream": true,
            "stream_options": { "include_usage": true },
        }))
        .expect("a chat request built from its own fields deserialises")
    }

    async fn attempt(
        &self,
        request: &CreateChatCompletionRequest,
        attempt: u32,
        deadline: Instant,
        started: Instant,
        sink: &mut (dyn FnMut(StreamEvent) + Send),
        shown: &mut usize,
    ) -> Result<Completion, AttemptError> {
        let first_deadline = (Instant::now()
            + Duration::from_millis(self.config.first_token_timeout_ms))
        .min(deadline);
        let timeout_failure = |first: bool| {
            if first && first_deadline < deadline {
                AttemptError::Retry(
                    LlmFailure::FirstTokenTimeout {
                        ms: self.config.first_token_timeout_ms,
                    },
                    Some(Duration::ZERO),
                )
            } else if first {
                AttemptError::Fatal(LlmFailure::FirstTokenTimeout {
                    ms: self.config.first_token_timeout_ms,
                })
            } else {
                AttemptError::Fatal(LlmFailure::TotalTimeout {
                    ms: self.config.total_timeout_ms,
                })
            }
        };
        let opened = tokio::time::timeout_at(
            first_deadline.into(),
            self.client.chat().create_stream(request.clone()),
        )
        .await;
        let mut stream = match opened {
            Err(_) => return Err(timeout_failure(true)),
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(stream)) => stream,
        };
        let mut text = String::new();
        let mut first_token_ms = None;
        let mut usage = None;
        let mut finish_reason = None;
        loop {
            let until = if first_token_ms.is_none() {
                first_deadline
            } else {
                deadline
            };
            let next = match tokio::time::timeout_at(until.into(), stream.next()).await {
                Err(_) => return Err(timeout_failure(first_token_ms.is_none())),
                Ok(None) => break,
                Ok(Some(next)) => next,
            };
            let chunk = next.map_err(classify)?;
            if let Some(u) = chunk.usage {
                usage = Some((u.prompt_tokens, u.completion_tokens));
            }
            for choice in chunk.choices {
                if let Some(reason) = choice.finish_reason {
                    finish_reason = Some(format!("{reason:?}").to_lowercase());
                }
                let Some(delta) = choice.delta.content.filter(|d| !d.is_empty()) else {
                    continue;
                };
                if first_token_ms.is_none() {
                    first_token_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                }
                *shown += delta.chars().count();
                text.push_str(&delta);
                sink(StreamEvent::Delta {
                    attempt,
                    text: delta,
                });
            }
        }
        if text.trim().is_empty() {
            return Err(AttemptError::Retry(
                unusable("the endpoint returned an empty completion"),
                None,
            ));
        }
        let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, 0));
        Ok(Completion {
            text,
            prompt_tokens,
            completion_tokens,
            usage_reported: usage.is_some(),
            attempts: attempt,
            first_token_ms: first_token_ms.unwrap_or_default(),
            total_ms: started.elapsed().as_secs_f64() * 1e3,
            finish_reason,
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .config
            .retry_backoff_ms
            .saturating_mul(1 << (attempt - 1).min(10));
        let jitter = rand::random_range(0.75..1.25);
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    fn breaker_open(&self) -> bool {
        let breaker = self.breaker.lock().expect("breaker lock");
        breaker
            .open_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Counts a reply's outcome; enough failures in a row open the breaker (again).
    fn record(&self, success: bool) {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        if success {
            *breaker = Breaker::default();
            return;
        }
        breaker.consecutive_failures += 1;
        if breaker.consecutive_failures >= self.config.breaker_failures {
            breaker.open_until =
                Some(Instant::now() + Duration::from_secs(self.config.breaker_cooldown_secs));
            tracing::error!(
                failures = breaker.consecutive_failures,
                cooldown_secs = self.config.breaker_cooldown_secs,
                "LLM circuit breaker open"
            );
        }
    }
}

/// Sorts an async-openai error into retry or give up.
fn classify(error: OpenAIError) -> AttemptError {
    match error {
        OpenAIError::Boxed(inner) => match inner.downcast::<RetryableStatus>() {
            Ok(status) => AttemptError::Retry(
                transient(&format!("HTTP {}: {}", status.status, status.body)),
                status.retry_after,
            ),
            Err(other) => AttemptError::Retry(transient(&other.to_string()), None),
        },
        OpenAIError::ApiError(e) => AttemptError::Fatal(LlmFailure::Rejected {
            message: e.to_string(),
        }),
        OpenAIError::InvalidArgument(m) => AttemptError::Fatal(LlmFailure::Rejected { message: m }),
        OpenAIError::JSONDeserialize(e, _) => AttemptError::Retry(
            unusable(&format!("the stream sent a malformed chunk: {e}")),
            None,
        ),
        other => AttemptError::Retry(transient(&other.to_string()), None),
    }
}

fn unusable(message: &str) -> LlmFailure {
    LlmFailure::Unusable {
        message: message.to_string(),
    }
}

fn transient(message: &str) -> LlmFailure {
    LlmFailure::Transient {
        message: message.to_string(),
    }
}

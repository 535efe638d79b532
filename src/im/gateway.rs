//! The WebSocket gateway (`GET /v1/im/ws`). Each socket is a reader and a writer joined
//! with `select!`: the reader parses and handles client frames, the writer owns the
//! socket's send half and turns bus events into frames in order. When either ends, or
//! the server shuts down, the other is stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::delivery::Delivery;
use super::hub::Connection;
use super::model::{Conversation, ConversationId};
use super::protocol::{
    ClientFrame, FrameError, PROTOCOL_VERSION, ServerFrame, close, parse_client_frame,
};
use super::service::{Im, Submission, acknowledged, ensure_open};
use crate::app::AppState;
use crate::auth::{AuthUser, Role};
use crate::error::AppError;

/// The hard transport limit is this many times `im.max_frame_bytes`: frames between the
/// two get an `error` frame and the socket stays open; beyond it the socket is closed.
const HARD_LIMIT_FACTOR: usize = 4;

pub async fn upgrade(
    State(state): State<AppState>,
    user: AuthUser,
    ws: WebSocketUpgrade,
) -> Result<Response, AppError> {
    user.require(&[Role::Client, Role::Advisor])?;
    let im = state.im.clone();
    let shutdown = state.shutdown.clone();
    let tracker = state.tasks.clone();
    let hard_limit = im.config.max_frame_bytes * HARD_LIMIT_FACTOR;
    Ok(ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                run(socket, im, user, shutdown).await;
            })
        }))
}

/// What the reader asks the writer to do (the writer owns the socket and delivery state).
enum Command {
    Frame(ServerFrame),
    Subscribe {
        id: Option<String>,
        conversation: ConversationId,
        after_seq: Option<i64>,
    },
    Unsubscribe {
        id: Option<String>,
        conversation: ConversationId,
    },
}

async fn run(
    socket: WebSocket,
    im: Arc<Im>,
    user: AuthUser,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (sink, stream) = socket.split();
    let connection = im.hub.connect(&user, im.config.send_queue);
    let (commands, commands_rx) = mpsc::channel::<Command>(64);
    let hello = ServerFrame::Hello {
        protocol: PROTOCOL_VERSION,
        participant_id: user.id.clone(),
        role: user.role.as_str().into(),
        heartbeat_secs: im.config.heartbeat_secs,
        idle_timeout_secs: im.config.idle_timeout_secs,
        max_frame_bytes: im.config.max_frame_bytes,
    };
    let _ = commands.send(Command::Frame(hello)).await;
    if user.role == Role::Client {
        // A client's devices follow all of the client's open conversations.
        if let Ok(ids) = super::store::open_conversations_of(&im.db, &user.id).await {
            for conversation in ids {
                let _ = commands
                    .send(Command::Subscribe {
                        id: None,
                        conversation,
                        after_seq: None,
                    })
                    .await;
            }
        }
    }
    let mut reader = Reader {
        im: im.clone(),
        user: user.clone(),
        commands: commands.clone(),
        allowed: HashMap::new(),
        bucket: TokenBucket::new(im.config.rate_per_sec, im.config.rate_burst),
        violations: 0,
    };
    let mut writer = Writer {
        im: im.clone(),
        sink,
        connection,
        delivery: Delivery::default(),
        user: user.clone(),
        commands: commands_rx,
    };
    let mut stream = stream;
    let ending = tokio::select! {
        ending = reader.run(&mut stream) => {
            writer.flush_replies().await;
            ending
        }
        ending = writer.run(shutdown) => ending,
    };
    if let Some((code, reason)) = ending {
        let close = WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        if writer.sink.send(close).await.is_ok() {
            // Complete the closing handshake: read until the client's close (bounded), so
            // the close frame is not lost to a reset while the client is still sending.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, WsMessage::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// Why the server ends a socket: a close code and reason (none when the client left).
type Ending = Option<(u16, &'static str)>;

struct Reader {
    im: Arc<Im>,
    user: AuthUser,
    commands: mpsc::Sender<Command>,
    /// Conversations this connection was found to take part in (checked once).
    allowed: HashMap<ConversationId, Conversation>,
    bucket: TokenBucket,
    violations: u32,
}

impl Reader {
    async fn run(&mut self, stream: &mut SplitStream<WebSocket>) -> Ending {
        let idle = Duration::from_secs(self.im.config.idle_timeout_secs);
        loop {
            let next = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => return Some((close::IDLE_TIMEOUT, "idle timeout")),
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    let message = e.to_string();
                    if message.contains("too long") || message.contains("Space limit") {
                        return Some((close::TOO_BIG, "frame too large"));
                    }
                    return None;
                }
                Ok(Some(Ok(message))) => message,
            };
            match next {
                WsMessage::Text(text) => {
                    if !self.bucket.take() {
                        self.violations += 1;
                        if self.violations > self.im.config.rate_burst * 3 {
                            return Some((close::RATE_ABUSE, "rate limit exceeded repeatedly"));
                        }
                        let id = parse_client_frame(&text).ok().and_then(|f| frame_id(&f));
                        self.error(id, AppError::RateLimited(self.im.config.rate_per_sec))
                            .await;
                        continue;
                    }
                    self.violations = self.violations.saturating_sub(1);
                    if text.len() > self.im.config.max_frame_bytes {
                        self.error(
                            None,
                            AppError::FrameTooLarge(text.len(), self.im.config.max_frame_bytes),
                        )
                        .await;
                        continue;
                    }
                    match parse_client_frame(&text) {
                        Ok(frame) => {
                            let id = frame_id(&frame);
                            if let Err(e) = self.handle(frame).await {
                                self.error(id, e).await;
                            }
                        }
                        Err(e) => self.frame_error(e).await,
                    }
                }
                WsMessage::Binary(_) => {
                    self.frame_error(FrameError {
                        id: None,
                        code: "binary_not_supported",
                        message: "frames are JSON text; binary frames are not accepted".into(),
                    })
                    .await;
                }
                WsMessage::Close(_) => return None,
                WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            }
        }
    }

    async fn participation(&mut self, id: ConversationId) -> Result<Conversation, AppError> {
        if let Some(conversation) = self.allowed.get(&id) {
            return Ok(conversation.clone());
        }
        let conversation = self.im.participation(&self.user, id).await?;
        self.allowed.insert(id, conversation.clone());
        Ok(conversation)
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<(), AppError> {
        match frame {
            ClientFrame::Send {
                id,
                conversation_id,
                client_msg_id,
                kind,
                body,
            } => {
                let conversation = self.participation(conversation_id).await?;
                ensure_open(&conversation)?;
                let pending = self
                    .im
                    .submit(
                        &self.user,
                        Submission {
                            conversation_id,
                            client_msg_id: client_msg_id.clone(),
                            kind,
                            body,
                        },
                    )
                    .await?;
                // Following the conversation we write to keeps this device in step.
                self.send(Command::Subscribe {
                    id: None,
                    conversation: conversation_id,
                    after_seq: None,
                })
                .await;
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let frame = match acknowledged(pending.outcome().await, conversation_id) {
                        Ok((message, duplicate)) => ServerFrame::Ack {
                            id,
                            conversation_id,
                            client_msg_id,
                            seq: message.seq,
                            created_at: message.created_at,
                            duplicate,
                        },
                        Err(e) => error_frame(id, e),
                    };
                    let _ = commands.send(Command::Frame(frame)).await;
                });
                Ok(())
            }
            ClientFrame::Sync {
                id,
                conversation_id,
                after_seq,
                limit,
            } => {
                self.participation(conversation_id).await?;
                let limit = limit.unwrap_or(100);
                if !(1..=500).contains(&limit) || after_seq < 0 {
                    return Err(AppError::Validation(
                        "sync needs after_seq >= 0 and limit between 1 and 500".into(),
                    ));
                }
                let mut messages = self
                    .im
                    .log
                    .list(conversation_id, after_seq, limit + 1)
                    .await?;
                let has_more = messages.len() as i64 > limit;
                messages.truncate(limit as usize);
                self.send(Command::Frame(ServerFrame::Synced {
                    id,
                    conversation_id,
                    messages,
                    has_more,
                }))
                .await;
                Ok(())
            }
            ClientFrame::Subscribe {
                id,
                conversation_id,
                after_seq,
            } => {
                self.participation(conversation_id).await?;
                if after_seq.is_some_and(|s| s < 0) {
                    return Err(AppError::Validation("after_seq must be 0 or more".into()));
                }
                self.send(Command::Subscribe {
                    id,
                    conversation: conversation_id,
                    after_seq,
                })
                .await;
                Ok(())
            }
            ClientFrame::Unsubscribe {
                id,
                conversation_id,
            } => {
                self.send(Command::Unsubscribe {
                    id,
                    conversation: conversation_id,
                })
                .await;
                Ok(())
            }
            ClientFrame::Receipt {
                conversation_id,
                status,
                seq,
                ..
            } => {
                let conversation = self.participation(conversation_id).await?;
                self.im
                    .receipt(&self.user, &conversation, status, seq)
                    .await
            }
            ClientFrame::Typing {
                conversation_id,
                active,
                ..
            } => {
                self.participation(conversation_id).await?;
                self.im.typing(&self.user, conversation_id, active);
                Ok(())
            }
            ClientFrame::Presence { status, .. } => self.im.presence(&self.user, status),
            ClientFrame::Ping { id } => {
                self.send(Command::Frame(ServerFrame::Pong { id })).await;
                Ok(())
            }
        }
    }

    async fn send(&self, command: Command) {
        let _ = self.commands.send(command).await;
    }

    async fn error(&self, id: Option<String>, error: AppError) {
        self.send(Command::Frame(error_frame(id, error))).await;
    }

    async fn frame_error(&self, error: FrameError) {
        self.send(Command::Frame(error.to_frame())).await;
    }
}

fn error_frame(id: Option<String>, error: AppError) -> ServerFrame {
    if let AppError::Internal(cause) = &error {
        tracing::error!(error = format!("{cause:#}"), "internal error on a socket");
    }
    ServerFrame::Error {
        id,
        code: error.code(),
        message: error.to_string(),
    }
}

fn frame_id(frame: &ClientFrame) -> Option<String> {
    match frame {
        ClientFrame::Send { id, .. }
        | ClientFrame::Sync { id, .. }
        | ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Receipt { id, .. }
        | ClientFrame::Typing { id, .. }
        | ClientFrame::Presence { id, .. }
        | ClientFrame::Ping { id } => id.clone(),
    }
}

struct Writer {
    im: Arc<Im>,
    sink: SplitSink<WebSocket, WsMessage>,
    connection: Connection,
    delivery: Delivery,
    user: AuthUser,
    /// Replies and requests from the reader, in the order it handled frames.
    commands: mpsc::Receiver<Command>,
}

impl Writer {
    async fn run(&mut self, shutdown: tokio_util::sync::CancellationToken) -> Ending {
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs(self.im.config.heartbeat_secs));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let expires = token_deadline(self.user.expires_at);
        let kicked = self.connection.kicked.clone();
        loop {
            let outcome = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Some((close::GOING_AWAY, "server shutting down")),
                () = kicked.notified() => return Some((close::SLOW_CONSUMER, "slow consumer: reconnect and sync")),
                () = tokio::time::sleep_until(expires) => return Some((close::TOKEN_EXPIRED, "token expired")),
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => return None,
                },
                event = self.connection.events.recv() => match event {
                    Some(event) => self.event(&event).await,
                    None => return None,
                },
                _ = heartbeat.tick() => self
                    .sink
                    .send(WsMessage::Ping(Default::default()))
                    .await
                    .map_err(|_| None),
            };
            if let Err(ending) = outcome {
                return ending;
            }
        }
    }

    /// Sends the replies already queued (e.g. the errors before an abuse close).
    async fn flush_replies(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Frame(frame) = command
                && self.frame(&frame).await.is_err()
            {
                return;
            }
        }
    }

    async fn frame(&mut self, frame: &ServerFrame) -> Result<(), Ending> {
        let text = serde_json::to_string(frame).expect("frames serialise");
        self.sink
            .send(WsMessage::Text(text.into()))
            .await
            .map_err(|_| None)
    }

    async fn command(&mut self, command: Command) -> Result<(), Ending> {
        match command {
            Command::Frame(frame) => self.frame(&frame).await,
            Command::Subscribe {
                id,
                conversation,
                after_seq,
            } => {
                if self.connection.is_subscribed(conversation) && after_seq.is_none() {
                    if id.is_some() {
                        let last = self.last_seq(conversation).await;
                        return self
                            .frame(&ServerFrame::Subscribed {
                                id,
                                conversation_id: conversation,
                                last_seq: last,
                            })
                            .await;
                    }
                    return Ok(());
                }
                // Listen first, then read the position: nothing committed in between is missed.
                self.connection.subscribe(conversation);
                let last = self.last_seq(conversation).await;
                let start = after_seq.map_or(last, |s| s.min(last));
                self.delivery.start(conversation, start);
                if id.is_some() || after_seq.is_some() {
                    self.frame(&ServerFrame::Subscribed {
                        id,
                        conversation_id: conversation,
                        last_seq: last,
                    })
                    .await?;
                }
                let tail = super::bus::Event::Tail {
                    conversation_id: conversation,
                    last_seq: last,
                };
                self.event(&tail).await
            }
            Command::Unsubscribe { id, conversation } => {
                self.connection.unsubscribe(conversation);
                self.delivery.stop(conversation);
                self.frame(&ServerFrame::Unsubscribed {
                    id,
                    conversation_id: conversation,
                })
                .await
            }
        }
    }

    async fn last_seq(&self, conversation: ConversationId) -> i64 {
        match self.im.log.last_seqs(&[conversation]).await {
            Ok(tails) => tails.first().map_or(0, |t| t.1),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a conversation's position");
                0
            }
        }
    }

    async fn event(&mut self, event: &super::bus::Event) -> Result<(), Ending> {
        let frames = match self.delivery.frames(&self.im.log, event).await {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fill a delivery gap; the client must sync");
                return Err(Some((
                    close::SLOW_CONSUMER,
                    "delivery interrupted: reconnect and sync",
                )));
            }
        };
        for frame in &frames {
            self.frame(frame).await?;
        }
        Ok(())
    }
}

fn token_deadline(expires_at: u64) -> Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Instant::now() + Duration::from_secs(expires_at.saturating_sub(now).min(366 * 86_400))
}

/// Frames per second with bursts: refills continuously.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

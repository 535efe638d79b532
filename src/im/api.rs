//! The conversations HTTP API. Thin: extract, authorise, call the store, map errors.
//!
//! Who may read a conversation: its own client; advisors (they serve the queue);
//! compliance officers (every read is written to the audit log). Admins operate the
//! service and do not read client conversations.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{get, post};
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::delivery::Delivery;
use super::model::{Conversation, ConversationId, Language, Message};
use super::protocol::ServerFrame;
use super::service::{Submission, acknowledged, ensure_open};
use super::store;
use crate::app::AppState;
use crate::auth::{AuthUser, ClientUser, Role};
use crate::compliance::audit;
use crate::error::{AppError, Result};
use crate::http::{ApiJson, ApiPath, ApiQuery};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/conversations",
            post(create_conversation).get(list_conversations),
        )
        .route("/v1/conversations/{id}", get(get_conversation))
        .route(
            "/v1/conversations/{id}/messages",
            get(list_messages).post(post_message),
        )
}

/// Long-lived responses (SSE), kept out of the request timeout.
pub fn streams() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/conversations/{id}/events", get(events))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// zh-CN or en; defaults to the token's `lang` claim, then zh-CN.
    #[schema(value_type = Option<String>, example = "en")]
    pub language: Option<Language>,
}

/// A client starts a conversation with the desk.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 201, body = Conversation),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_conversation(
    State(state): State<AppState>,
    ClientUser(client): ClientUser,
    ApiJson(request): ApiJson<CreateConversation>,
) -> Result<impl IntoResponse> {
    let language = match request.language {
        Some(language) => language,
        None => client
            .language
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or(Language::ZhCn),
    };
    let conversation = store::create_conversation(&state.db, &client, language).await?;
    let location = format!("/v1/conversations/{}", conversation.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(conversation),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListConversations {
    /// Staff only: conversations of this client.
    pub client_id: Option<String>,
    /// 1–200, default 50.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
}

/// Clients list their own conversations, newest first; advisors and compliance list all.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    params(ListConversations),
    responses(
        (status = 200, body = ConversationList),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_conversations(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ListConversations>,
) -> Result<Json<ConversationList>> {
    user.require(&[Role::Client, Role::Advisor, Role::Compliance])?;
    let limit = bounded_limit(query.limit, 50, 200)?;
    let client_filter = match user.role {
        Role::Client => match query.client_id {
            Some(other) if other != user.id => {
                return Err(AppError::Validation(
                    "client_id is for staff; clients always list their own conversations".into(),
                ));
            }
            _ => Some(user.id.clone()),
        },
        _ => query.client_id,
    };
    let conversations =
        store::list_conversations(&state.db, client_filter.as_deref(), limit).await?;
    if user.role == Role::Compliance {
        let subject = client_filter
            .map(|c| format!("client:{c}"))
            .unwrap_or_else(|| "conversations".into());
        audit::record(
            &state.db,
            &user,
            "conversation.list",
            &subject,
            serde_json::json!({}),
        )
        .await?;
    }
    Ok(Json(ConversationList { conversations }))
}

/// Loads a conversation the caller may read, or says why not.
pub(crate) async fn readable_conversation(
    state: &AppState,
    user: &AuthUser,
    id: ConversationId,
    action: &str,
) -> Result<Conversation> {
    user.require(&[Role::Client, Role::Advisor, Role::Compliance])?;
    let conversation = store::get_conversation(&state.db, id)
        .await?
        .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
    if user.role == Role::Client && conversation.client_id != user.id {
        return Err(AppError::NotYourConversation(id.to_string()));
    }
    if user.role == Role::Compliance {
        audit::record(
            &state.db,
            user,
            action,
            &format!("conversation:{id}"),
            serde_json::json!({}),
        )
        .await?;
    }
    Ok(conversation)
}

/// One conversation.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    responses(
        (status = 200, body = Conversation),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<Conversation>> {
    Ok(Json(
        readable_conversation(&state, &user, id, "conversation.read").await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListMessages {
    /// Only messages with a higher sequence number (default 0: from the start).
    pub after_seq: Option<i64>,
    /// 1–500, default 100.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// True when more messages follow the last one returned.
    pub has_more: bool,
}

/// A page of messages in sequence order.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = String, Path, description = "conversation id (UUID)"), ListMessages),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_messages(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(query): ApiQuery<ListMessages>,
) -> Result<Json<MessagePage>> {
    let limit = bounded_limit(query.limit, 100, 500)?;
    let after_seq = query.after_seq.unwrap_or(0);
    if after_seq < 0 {
        return Err(AppError::InvalidQuery(format!(
            "after_seq must be 0 or more, got {after_seq}"
        )));
    }
    readable_conversation(&state, &user, id, "conversation.messages.read").await?;
    let mut messages = store::list_messages(&state.db, id, after_seq, limit + 1).await?;
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    Ok(Json(MessagePage { messages, has_more }))
}

fn bounded_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(AppError::InvalidQuery(format!(
            "limit must be between 1 and {max}, got {n}"
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The sender's idempotency key (1–64 characters): a retry with the same key returns
    /// the original ack and stores nothing.
    pub client_msg_id: String,
    /// `text`.
    pub kind: String,
    /// `{"text": "…"}`
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ack {
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub seq: i64,
    /// RFC 3339.
    pub created_at: String,
    /// True when this client message id had been committed before.
    pub duplicate: bool,
}

/// Sends a message without a WebSocket. Answers after the message is durably committed:
/// 201 the first time, 200 with the original ack for a retry.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "messaging",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    request_body = PostMessage,
    responses(
        (status = 201, body = Ack), (status = 200, body = Ack),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_message(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<PostMessage>,
) -> Result<impl IntoResponse> {
    let conversation = state.im.participation(&user, id).await?;
    ensure_open(&conversation)?;
    let pending = state
        .im
        .submit(
            &user,
            Submission {
                conversation_id: id,
                client_msg_id: request.client_msg_id.clone(),
                kind: request.kind,
                body: request.body,
            },
        )
        .await?;
    let (message, duplicate) = acknowledged(pending.outcome().await, id)?;
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Ack {
            conversation_id: id,
            client_msg_id: request.client_msg_id,
            seq: message.seq,
            created_at: message.created_at,
            duplicate,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Resume after this sequence number (the `Last-Event-ID` header wins when present).
    pub after_seq: Option<i64>,
    /// For browsers' EventSource, which cannot set headers.
    pub access_token: Option<String>,
}

/// Server-Sent Events: every message after `Last-Event-ID` (= seq), then live messages
/// (`event: message`, `id: <seq>`), receipts and typing, with keep-alive comments.
#[utoipa::path(get, path = "/v1/conversations/{id}/events", tag = "messaging",
    params(("id" = String, Path, description = "conversation id (UUID)"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "resume after this seq")),
    responses((status = 200, content_type = "text/event-stream"),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse> {
    let conversation = state.im.participation(&user, id).await?;
    let after_seq = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                AppError::InvalidQuery("Last-Event-ID must be a sequence number".into())
            })?,
        None => query.after_seq.unwrap_or(0).max(0),
    };
    let im = state.im.clone();
    let connection = im.hub.connect(&user, im.config.send_queue);
    connection.subscribe(id);
    let mut delivery = Delivery::default();
    // A position beyond the newest message (another conversation's id, a stale client)
    // would hide messages still to come; clamp it.
    delivery.start(id, after_seq.min(conversation.last_seq));
    let shutdown = state.shutdown.clone();
    let stream = async_stream(im, connection, delivery, id, shutdown);
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(state.config.im.heartbeat_secs))
            .text("keep-alive"),
    ))
}

/// The SSE body: backlog, then live events, until the client leaves, the server shuts
/// down or the listener falls behind (the client then reconnects with Last-Event-ID).
fn async_stream(
    im: std::sync::Arc<super::Im>,
    mut connection: super::hub::Connection,
    mut delivery: Delivery,
    id: ConversationId,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let kicked = connection.kicked.clone();
        let last = im
            .log
            .last_seqs(&[id])
            .await
            .ok()
            .and_then(|t| t.first().map(|t| t.1))
            .unwrap_or(0);
        let mut pending = vec![std::sync::Arc::new(super::bus::Event::Tail {
            conversation_id: id,
            last_seq: last,
        })];
        loop {
            for event in pending.drain(..) {
                let frames = match delivery.frames(&im.log, &event).await {
                    Ok(frames) => frames,
                    Err(e) => {
                        tracing::warn!(error = %e, "SSE delivery interrupted");
                        return;
                    }
                };
                for frame in frames {
                    if tx.send(sse_event(&frame)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = kicked.notified() => return,
                () = tx.closed() => return,
                event = connection.events.recv() => match event {
                    Some(event) => pending.push(event),
                    None => return,
                },
            }
        }
    });
    futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, Infallible>,
    )
}

fn sse_event(frame: &ServerFrame) -> SseEvent {
    let data = serde_json::to_string(frame).expect("frames serialise");
    let event = SseEvent::default().data(data);
    match frame {
        ServerFrame::Message { message } => event.event("message").id(message.seq.to_string()),
        ServerFrame::Receipt { .. } => event.event("receipt"),
        ServerFrame::Typing { .. } => event.event("typing"),
        ServerFrame::Stream { .. } => event.event("stream"),
        ServerFrame::Queue { .. } => event.event("queue"),
        _ => event.event("other"),
    }
}

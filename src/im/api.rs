//! The conversations HTTP API. Thin: extract, authorise, call the store, map errors.
//!
//! Who may read a conversation: its own client; advisors (they serve the queue);
//! compliance officers (every read is written to the audit log). Admins operate the
//! service and do not read client conversations.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::model::{Conversation, ConversationId, Language, Message};
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
        .route("/v1/conversations/{id}/messages", get(list_messages))
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
async fn readable_conversation(
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

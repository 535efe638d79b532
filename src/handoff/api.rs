//! The handoff HTTP API: a client asks for a person; advisors see the queue, claim,
//! read the packet, transfer, return to the bot, close; advisors set their presence,
//! capacity, languages and skills. Thin: extract, authorise, call the service.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::packet::{self, Packet};
use super::{Actor, Advisor, HandoffState, LANGUAGES, Priority, SKILLS, Trigger, reason_label};
use crate::app::AppState;
use crate::auth::{Advisor as AdvisorUser, AuthUser, ClientUser, Role};
use crate::error::{AppError, Result};
use crate::http::{ApiJson, ApiPath};
use crate::im::{Conversation, ConversationId, ConversationMode};
use crate::time_fmt::{now_ms, rfc3339};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/conversations/{id}/handoff",
            post(request_handoff).get(handoff_state),
        )
        .route("/v1/handoff/queue", get(queue))
        .route("/v1/conversations/{id}/claim", post(claim))
        .route("/v1/conversations/{id}/packet", get(packet_of))
        .route("/v1/conversations/{id}/transfer", post(transfer))
        .route("/v1/conversations/{id}/return", post(hand_back))
        .route("/v1/conversations/{id}/close", post(close))
        .route("/v1/advisors", get(advisors))
        .route("/v1/advisors/me", get(me).put(update_me))
        .route("/v1/advisors/me/conversations", get(my_conversations))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffRequest {
    /// Optional words for the advisor (at most 500 characters), shown in the handoff
    /// packet's notes.
    pub note: Option<String>,
}

/// The client asks for a person (the chat page's button). Immediate: a bot reply being
/// written meanwhile is refused when it completes.
#[utoipa::path(post, path = "/v1/conversations/{id}/handoff", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    request_body = HandoffRequest,
    responses((status = 202, body = HandoffState),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody, description = "handoff_pending or conversation_closed"),
        (status = 422, body = crate::error::ErrorBody, description = "validation_failed: the note is too long")),
    security(("bearer" = [])))]
pub async fn request_handoff(
    State(state): State<AppState>,
    ClientUser(client): ClientUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<HandoffRequest>,
) -> Result<(StatusCode, Json<HandoffState>)> {
    state.im.participation(&client, id).await?;
    if let Some(note) = &request.note
        && note.chars().count() > 500
    {
        return Err(AppError::Validation(
            "the note is longer than 500 characters".into(),
        ));
    }
    let handoff = state
        .handoffs
        .request(
            id,
            &Trigger {
                note: request
                    .note
                    .as_deref()
                    .map(str::trim)
                    .filter(|n| !n.is_empty()),
                ..Trigger::new("client_request", None)
            },
            &Actor::of(&client),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(handoff)))
}

/// Where the conversation stands: with the bot, queued (position and expected wait),
/// with an advisor, or closed. Its client and advisors.
#[utoipa::path(get, path = "/v1/conversations/{id}/handoff", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    responses((status = 200, body = HandoffState),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn handoff_state(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<HandoffState>> {
    user.require(&[Role::Client, Role::Advisor])?;
    crate::im::api::readable_conversation(&state, &user, id, "handoff.read").await?;
    Ok(Json(state.handoffs.state(id).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueEntry {
    pub conversation_id: String,
    pub client_id: String,
    pub client_name: String,
    pub language: String,
    pub reason: String,
    pub reason_label: String,
    /// urgent, high or normal.
    pub priority: &'static str,
    pub skill: String,
    pub requested_at: String,
    pub waiting_secs: i64,
    pub sla_due_at: String,
    pub sla_breached: bool,
    pub escalated: bool,
    /// 1 = next.
    pub position: i64,
    /// Whether routing lets the caller claim it (language and skill, or escalated).
    pub eligible: bool,
    /// The client's newest words.
    pub preview: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queue {
    pub entries: Vec<QueueEntry>,
    pub advisors_online: i64,
}

/// The queue in claim order: escalated first, then urgent, high, normal, each oldest
/// first.
#[utoipa::path(get, path = "/v1/handoff/queue", tag = "handoff",
    responses((status = 200, body = Queue), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn queue(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
) -> Result<Json<Queue>> {
    let me = state.handoffs.advisor(&user).await?;
    let rows = state.handoffs.queue().await?;
    let now = now_ms();
    let mut entries = Vec::with_capacity(rows.len());
    for (i, h) in rows.into_iter().enumerate() {
        let Ok(id) = h.conversation_id.parse::<ConversationId>() else {
            continue;
        };
        let Some(c) = crate::im::store::get_conversation(&state.db, id).await? else {
            continue;
        };
        let client_name: Option<String> =
            sqlx::query_scalar("SELECT display_name FROM participants WHERE id = $1")
                .bind(&c.client_id)
                .fetch_optional(state.db.pool())
                .await?;
        let preview: Option<String> = sqlx::query_scalar(
            "SELECT body FROM messages WHERE conversation_id = $1 AND sender_role = 'client' \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(&h.conversation_id)
        .fetch_optional(state.db.pool())
        .await?;
        let preview = preview
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|b| b["text"].as_str().map(|t| t.chars().take(140).collect()))
            .map(|t: String| state.desk.guard.input(&t, c.language).redacted)
            .unwrap_or_default();
        entries.push(QueueEntry {
            client_name: client_name.unwrap_or_else(|| c.client_id.clone()),
            client_id: c.client_id,
            language: h.language.clone(),
            reason_label: reason_label(&h.reason, c.language),
            priority: Priority::from_rank(h.priority).as_str(),
            requested_at: rfc3339(h.requested_at),
            waiting_secs: (now - h.requested_at) / 1000,
            sla_due_at: rfc3339(h.sla_due_at),
            sla_breached: now > h.sla_due_at,
            escalated: h.escalated_at.is_some(),
            position: i as i64 + 1,
            eligible: h.escalated_at.is_some() || me.eligible(&h.language, &h.skill),
            preview,
            conversation_id: h.conversation_id,
            reason: h.reason,
            skill: h.skill,
        });
    }
    let advisors_online =
        super::store::online_advisors(&mut *state.db.pool().acquire().await?).await?;
    Ok(Json(Queue {
        entries,
        advisors_online,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Claimed {
    pub conversation: Conversation,
    pub packet: Packet,
}

/// An advisor claims a queued conversation and gets its handoff packet. Atomic: of
/// several advisors claiming at once exactly one wins; the others get 409
/// `already_claimed` naming who.
#[utoipa::path(post, path = "/v1/conversations/{id}/claim", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    responses((status = 200, body = Claimed),
        (status = 403, body = crate::error::ErrorBody, description = "not_eligible"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody, description = "already_claimed, not_queued, conversation_closed, over_capacity, advisor_unavailable")),
    security(("bearer" = [])))]
pub async fn claim(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<Claimed>> {
    state.handoffs.claim(id, &user).await?;
    let conversation = crate::im::store::get_conversation(&state.db, id)
        .await?
        .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
    let packet = packet::build(&state.handoffs.summaries, &state.db, id)
        .await
        .map_err(AppError::Internal)?
        .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
    Ok(Json(Claimed {
        conversation,
        packet,
    }))
}

/// The handoff packet of a conversation: advisors; compliance officers (audited).
#[utoipa::path(get, path = "/v1/conversations/{id}/packet", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    responses((status = 200, body = Packet),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn packet_of(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<Packet>> {
    user.require(&[Role::Advisor, Role::Compliance])?;
    crate::im::api::readable_conversation(&state, &user, id, "handoff.packet.read").await?;
    let packet = packet::build(&state.handoffs.summaries, &state.db, id)
        .await
        .map_err(AppError::Internal)?
        .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
    Ok(Json(packet))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The colleague's advisor id.
    pub to: String,
    /// For the colleague (never shown to the client).
    #[serde(default)]
    pub note: String,
}

fn check_note(note: &str) -> Result<()> {
    if note.chars().count() > 2000 {
        return Err(AppError::Validation(
            "the note is longer than 2000 characters".into(),
        ));
    }
    Ok(())
}

/// The owner passes the conversation to an online colleague with room, with a note.
#[utoipa::path(post, path = "/v1/conversations/{id}/transfer", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    request_body = Transfer,
    responses((status = 200, body = HandoffState),
        (status = 403, body = crate::error::ErrorBody, description = "not_owner"),
        (status = 404, body = crate::error::ErrorBody, description = "advisor_not_found"),
        (status = 409, body = crate::error::ErrorBody, description = "advisor_unavailable, over_capacity")),
    security(("bearer" = [])))]
pub async fn transfer(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<Transfer>,
) -> Result<Json<HandoffState>> {
    check_note(&request.note)?;
    Ok(Json(
        state
            .handoffs
            .transfer(id, &user, request.to.trim(), &request.note)
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandBack {
    #[serde(default)]
    pub note: String,
}

/// The owner returns the conversation to the bot.
#[utoipa::path(post, path = "/v1/conversations/{id}/return", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    request_body = HandBack,
    responses((status = 200, body = HandoffState),
        (status = 403, body = crate::error::ErrorBody, description = "not_owner")),
    security(("bearer" = [])))]
pub async fn hand_back(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<HandBack>,
) -> Result<Json<HandoffState>> {
    check_note(&request.note)?;
    Ok(Json(
        state.handoffs.hand_back(id, &user, &request.note).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Close {
    /// resolved, follow_up, referred, no_response or complaint_logged.
    pub disposition: String,
    #[serde(default)]
    pub note: String,
}

/// The owner closes the conversation with a disposition.
#[utoipa::path(post, path = "/v1/conversations/{id}/close", tag = "handoff",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    request_body = Close,
    responses((status = 200, body = HandoffState),
        (status = 403, body = crate::error::ErrorBody, description = "not_owner"),
        (status = 422, body = crate::error::ErrorBody, description = "unknown disposition")),
    security(("bearer" = [])))]
pub async fn close(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<Close>,
) -> Result<Json<HandoffState>> {
    check_note(&request.note)?;
    Ok(Json(
        state
            .handoffs
            .close(id, &user, request.disposition.trim(), &request.note)
            .await?,
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdvisorList {
    pub advisors: Vec<Advisor>,
}

/// Every advisor with presence and load (for transfers).
#[utoipa::path(get, path = "/v1/advisors", tag = "handoff",
    responses((status = 200, body = AdvisorList), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn advisors(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
) -> Result<Json<AdvisorList>> {
    state.handoffs.advisor(&user).await?;
    let mut conn = state.db.pool().acquire().await?;
    Ok(Json(AdvisorList {
        advisors: super::store::advisors(&mut conn).await?,
    }))
}

/// The caller's presence, capacity, languages and skills.
#[utoipa::path(get, path = "/v1/advisors/me", tag = "handoff",
    responses((status = 200, body = Advisor), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
) -> Result<Json<Advisor>> {
    Ok(Json(state.handoffs.advisor(&user).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvisorUpdate {
    /// online, away or offline.
    pub status: Option<String>,
    /// 1–20 conversations at once.
    pub capacity: Option<i64>,
    pub languages: Option<Vec<String>>,
    pub skills: Option<Vec<String>>,
}

/// Sets the caller's presence, capacity, languages or skills.
#[utoipa::path(put, path = "/v1/advisors/me", tag = "handoff",
    request_body = AdvisorUpdate,
    responses((status = 200, body = Advisor),
        (status = 403, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_me(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
    ApiJson(update): ApiJson<AdvisorUpdate>,
) -> Result<Json<Advisor>> {
    if let Some(status) = &update.status
        && !["online", "away", "offline"].contains(&status.as_str())
    {
        return Err(AppError::Validation(format!(
            "status {status:?} is not online, away or offline"
        )));
    }
    if let Some(capacity) = update.capacity
        && !(1..=20).contains(&capacity)
    {
        return Err(AppError::Validation(format!(
            "capacity {capacity} is not between 1 and 20"
        )));
    }
    for (what, given, known) in [
        ("languages", &update.languages, &LANGUAGES[..]),
        ("skills", &update.skills, &SKILLS[..]),
    ] {
        if let Some(list) = given {
            if list.is_empty() {
                return Err(AppError::Validation(format!("{what} cannot be empty")));
            }
            if let Some(bad) = list.iter().find(|x| !known.contains(&x.as_str())) {
                return Err(AppError::Validation(format!(
                    "{what}: {bad:?} is not one of {}",
                    known.join(", ")
                )));
            }
        }
    }
    state.handoffs.advisor(&user).await?;
    let mut tx = state.db.begin_write().await?;
    super::store::update_advisor(
        &mut tx,
        &user.id,
        update.status.as_deref(),
        update.capacity,
        update.languages.as_deref(),
        update.skills.as_deref(),
        now_ms(),
    )
    .await?;
    tx.commit().await?;
    if let Some(status) = &update.status {
        state.im.bus.publish(crate::im::bus::Event::Presence {
            participant_id: user.id.clone(),
            status: match status.as_str() {
                "online" => crate::im::protocol::PresenceStatus::Online,
                "away" => crate::im::protocol::PresenceStatus::Away,
                _ => crate::im::protocol::PresenceStatus::Offline,
            },
        });
    }
    Ok(Json(state.handoffs.advisor(&user).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Owned {
    #[schema(value_type = Vec<Object>)]
    pub conversations: Vec<Value>,
}

/// The conversations the caller owns now (to reopen them after a reload).
#[utoipa::path(get, path = "/v1/advisors/me/conversations", tag = "handoff",
    responses((status = 200, body = Owned), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn my_conversations(
    State(state): State<AppState>,
    AdvisorUser(user): AdvisorUser,
) -> Result<Json<Owned>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM conversations WHERE mode = 'human' AND advisor_id = $1 ORDER BY updated_at",
    )
    .bind(&user.id)
    .fetch_all(state.db.pool())
    .await?;
    let mut conversations = Vec::with_capacity(ids.len());
    for id in ids.iter().filter_map(|i| i.parse::<ConversationId>().ok()) {
        let Some(c) = crate::im::store::get_conversation(&state.db, id).await? else {
            continue;
        };
        if c.mode != ConversationMode::Human {
            continue;
        }
        let mut conn = state.db.pool().acquire().await?;
        let h = super::store::open_handoff(&mut conn, id).await?;
        conversations.push(json!({
            "conversation": c,
            "reason": h.as_ref().map(|h| h.reason.clone()),
            "claimed_at": h.as_ref().and_then(|h| h.claimed_at).map(rfc3339),
        }));
    }
    Ok(Json(Owned { conversations }))
}

//! The review API, for compliance officers only. Every search, view, replay, export
//! and dashboard read is recorded in the audit log (and so in the archive's `access`
//! chain) with who, what and when; officers can annotate a conversation (notes, the
//! reviewed mark, guardrail labels) but nothing here changes a transcript.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::annotate::{self, NewLabel, NewReview};
use super::dashboard::{self, Dashboard, DashboardParams};
use super::search::{self, Page, SearchParams};
use super::transcript::{self, Replay, Transcript};
use crate::app::AppState;
use crate::archive::records::{LabelRow, ReviewRow};
use crate::archive::{conversation_chain, export};
use crate::auth::ComplianceOfficer;
use crate::compliance::audit;
use crate::error::{AppError, Result};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::im::ConversationId;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/compliance/search", get(search_conversations))
        .route("/v1/compliance/export", get(export_search))
        .route("/v1/compliance/dashboard", get(show_dashboard))
        .route("/v1/compliance/audit", get(audit_trail))
        .route("/v1/compliance/conversations/{id}", get(view))
        .route(
            "/v1/compliance/conversations/{id}/turns/{turn}",
            get(replay),
        )
        .route("/v1/compliance/conversations/{id}/export", get(export_one))
        .route(
            "/v1/compliance/conversations/{id}/reviews",
            post(add_review),
        )
        .route("/v1/compliance/conversations/{id}/labels", post(add_label))
}

/// The query parameters as given, for the audit record.
fn asked<T: Serialize>(params: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(params).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    v
}

/// Searches conversations: a time range (both ends required) and any of client,
/// advisor, product, risk level, guardrail rule, handoff reason, reviewed, full text.
#[utoipa::path(get, path = "/v1/compliance/search", tag = "compliance",
    params(SearchParams),
    responses((status = 200, body = Page),
        (status = 400, body = crate::error::ErrorBody, description = "invalid_search, range_reversed, range_unbounded, invalid_query"),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed")),
    security(("bearer" = [])))]
pub async fn search_conversations(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<Page>> {
    let s = params.check()?;
    let mut found = Vec::new();
    let next = search::run(&state.db, &s, false, &mut |id, hits| {
        found.push((id, hits));
        Ok(())
    })
    .await?;
    let mut conversations = Vec::with_capacity(found.len());
    for (id, hits) in found {
        conversations.push(search::describe(&state.db, &id, hits).await?);
    }
    audit::record(
        &state.db,
        &officer,
        "compliance.search",
        "search",
        json!({ "query": asked(&params), "results": conversations.len() }),
    )
    .await?;
    Ok(Json(Page {
        conversations,
        next,
    }))
}

async fn exists(state: &AppState, id: ConversationId) -> Result<()> {
    crate::im::store::get_conversation(&state.db, id)
        .await?
        .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
    Ok(())
}

/// A conversation's whole transcript with its turns, handoffs, reviews and labels.
#[utoipa::path(get, path = "/v1/compliance/conversations/{id}", tag = "compliance",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 200, body = Transcript),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "conversation_not_found")),
    security(("bearer" = [])))]
pub async fn view(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<Transcript>> {
    exists(&state, id).await?;
    let t = transcript::load(&state.db, &id.to_string()).await?;
    audit::record(
        &state.db,
        &officer,
        "compliance.view",
        &conversation_chain(&id.to_string()),
        json!({ "messages": t.messages.len() }),
    )
    .await?;
    Ok(Json(t))
}

/// Replays one bot turn: what the bot saw and did, as recorded.
#[utoipa::path(get, path = "/v1/compliance/conversations/{id}/turns/{turn}", tag = "compliance",
    params(("id" = String, Path, description = "conversation id"),
        ("turn" = String, Path, description = "turn record id")),
    responses((status = 200, body = Replay),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "conversation_not_found, turn_not_found")),
    security(("bearer" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiPath((id, turn)): ApiPath<(ConversationId, String)>,
) -> Result<Json<Replay>> {
    exists(&state, id).await?;
    let r = transcript::replay(&state.db, &id.to_string(), &turn).await?;
    audit::record(
        &state.db,
        &officer,
        "compliance.replay",
        &conversation_chain(&id.to_string()),
        json!({ "turn": turn }),
    )
    .await?;
    Ok(Json(r))
}

#[derive(Debug, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// `jsonl` (default: the archive's entries with a signed checkpoint and proofs,
    /// checkable offline with `wealthdesk archive verify --export`) or `html` (a
    /// printable transcript).
    pub format: Option<String>,
}

/// Streams an archive export of `chains` (JSONL), signing a fresh checkpoint first. A
/// failure part-way ends the stream without its `end` line, which verification names
/// as a truncated export.
fn stream_export(state: &AppState, chains: Vec<String>, name: &str) -> Response {
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let (db, signer) = (state.db.clone(), state.signer.clone());
    tokio::spawn(async move {
        if let Err(e) = export::write_to(&db, &signer, &chains, &mut writer).await {
            tracing::error!(error = %e, "archive export failed part-way");
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.jsonl\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response()
}

/// One conversation as a verifiable JSONL export or a printable HTML transcript.
#[utoipa::path(get, path = "/v1/compliance/conversations/{id}/export", tag = "compliance",
    params(("id" = String, Path, description = "conversation id"), ExportParams),
    responses((status = 200, description = "application/x-ndjson or text/html"),
        (status = 400, body = crate::error::ErrorBody, description = "invalid_query"),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "conversation_not_found")),
    security(("bearer" = [])))]
pub async fn export_one(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response> {
    exists(&state, id).await?;
    let id = id.to_string();
    let chain = conversation_chain(&id);
    let format = params.format.as_deref().unwrap_or("jsonl");
    if !["jsonl", "html"].contains(&format) {
        return Err(AppError::InvalidQuery(format!(
            "format {format:?} is not jsonl or html"
        )));
    }
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT length, head FROM archive_heads WHERE chain_id = $1 AND length > 0")
            .bind(&chain)
            .fetch_optional(state.db.pool())
            .await?;
    if head.is_none() && format == "jsonl" {
        return Err(AppError::Validation(format!(
            "conversation {id} has nothing archived yet: no message was sent in it"
        )));
    }
    audit::record(
        &state.db,
        &officer,
        "compliance.export",
        &chain,
        json!({ "format": format }),
    )
    .await?;
    if format == "html" {
        let t = transcript::load(&state.db, &id).await?;
        let by = format!("{} ({})", officer.display_name, officer.id);
        return Ok((
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            transcript::html(&t, head, &by),
        )
            .into_response());
    }
    Ok(stream_export(
        &state,
        vec![chain],
        &format!("conversation-{id}"),
    ))
}

/// Every conversation a search finds, as one verifiable JSONL export (streamed).
#[utoipa::path(get, path = "/v1/compliance/export", tag = "compliance",
    params(SearchParams),
    responses((status = 200, description = "application/x-ndjson"),
        (status = 400, body = crate::error::ErrorBody, description = "invalid_search, range_reversed, range_unbounded"),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 413, body = crate::error::ErrorBody, description = "export_too_large")),
    security(("bearer" = [])))]
pub async fn export_search(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Response> {
    if params.limit.is_some() || params.cursor.is_some() {
        return Err(AppError::InvalidSearch(
            "an export takes every result: leave out limit and cursor".into(),
        ));
    }
    let s = params.check()?;
    let max = state.config.review.max_export_conversations as usize;
    let mut chains = Vec::new();
    search::run(&state.db, &s, true, &mut |id, _| {
        if chains.len() == max {
            return Err(AppError::ExportTooLarge(format!(
                "the search finds more than {max} conversations: narrow the range or the filters"
            )));
        }
        chains.push(conversation_chain(&id));
        Ok(())
    })
    .await?;
    // Only chains with entries (a conversation with no message yet has none).
    let mut archived = std::collections::HashSet::new();
    for chunk in chains.chunks(500) {
        let mut sql =
            String::from("SELECT chain_id FROM archive_heads WHERE length > 0 AND chain_id IN (");
        for i in 1..=chunk.len() {
            sql.push_str(&format!("{}${i}", if i > 1 { ", " } else { "" }));
        }
        sql.push(')');
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for chain in chunk {
            query = query.bind(chain.clone());
        }
        archived.extend(query.fetch_all(state.db.pool()).await?);
    }
    chains.retain(|c| archived.contains(c));
    audit::record(
        &state.db,
        &officer,
        "compliance.export",
        "search",
        json!({ "query": asked(&params), "conversations": chains.len() }),
    )
    .await?;
    Ok(stream_export(&state, chains, "search"))
}

/// Rule hits and handoffs over time.
#[utoipa::path(get, path = "/v1/compliance/dashboard", tag = "compliance",
    params(DashboardParams),
    responses((status = 200, body = Dashboard),
        (status = 400, body = crate::error::ErrorBody, description = "invalid_search, range_reversed, range_unbounded"),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed")),
    security(("bearer" = [])))]
pub async fn show_dashboard(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiQuery(params): ApiQuery<DashboardParams>,
) -> Result<Json<Dashboard>> {
    let d = dashboard::load(&state.db, &params).await?;
    audit::record(
        &state.db,
        &officer,
        "compliance.dashboard",
        "dashboard",
        json!({ "query": asked(&params) }),
    )
    .await?;
    Ok(Json(d))
}

/// Appends a review note; `reviewed: true` marks the conversation reviewed.
#[utoipa::path(post, path = "/v1/compliance/conversations/{id}/reviews", tag = "compliance",
    params(("id" = String, Path, description = "conversation id")),
    request_body = NewReview,
    responses((status = 201, body = ReviewRow),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "conversation_not_found"),
        (status = 422, body = crate::error::ErrorBody, description = "validation_failed")),
    security(("bearer" = [])))]
pub async fn add_review(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<NewReview>,
) -> Result<(StatusCode, Json<ReviewRow>)> {
    exists(&state, id).await?;
    let row = annotate::review(&state.db, &officer, &id.to_string(), &request).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Labels one guardrail decision of a bot turn: correct, false positive, or (a rule
/// that did not fire) missed. Labels become guardrail evaluation cases.
#[utoipa::path(post, path = "/v1/compliance/conversations/{id}/labels", tag = "compliance",
    params(("id" = String, Path, description = "conversation id")),
    request_body = NewLabel,
    responses((status = 201, body = LabelRow),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "conversation_not_found, turn_not_found"),
        (status = 422, body = crate::error::ErrorBody, description = "validation_failed")),
    security(("bearer" = [])))]
pub async fn add_label(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(request): ApiJson<NewLabel>,
) -> Result<(StatusCode, Json<LabelRow>)> {
    exists(&state, id).await?;
    let row = annotate::label(
        &state.db,
        &state.desk.guard,
        &officer,
        &id.to_string(),
        &request,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[derive(Debug, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Start: RFC 3339 or a date.
    pub from: Option<String>,
    /// End (exclusive): RFC 3339 or a date (that whole day included).
    pub to: Option<String>,
    /// Only this actor's accesses.
    pub actor: Option<String>,
    /// Only accesses to this subject (`conversation:<id>`, `search`, …).
    pub subject: Option<String>,
    /// At most this many, newest first (1–1000, default 200).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessEntry {
    pub id: i64,
    pub at: String,
    pub actor_id: String,
    pub actor_role: String,
    pub action: String,
    pub subject: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditTrail {
    pub entries: Vec<AccessEntry>,
}

/// Who accessed what, and when: the audit log (itself archived, append-only).
#[utoipa::path(get, path = "/v1/compliance/audit", tag = "compliance",
    params(AuditParams),
    responses((status = 200, body = AuditTrail),
        (status = 400, body = crate::error::ErrorBody, description = "invalid_search, range_reversed, range_unbounded"),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed")),
    security(("bearer" = [])))]
pub async fn audit_trail(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditTrail>> {
    let (from, to) = search::range(&params.from, &params.to)?;
    let limit = match params.limit {
        None => 200,
        Some(n @ 1..=1000) => n as i64,
        Some(n) => {
            return Err(AppError::InvalidSearch(format!(
                "limit {n} is outside 1–1000"
            )));
        }
    };
    let rows: Vec<crate::archive::records::AccessRow> = sqlx::query_as(
        "SELECT id, at, actor_id, actor_role, action, subject, detail FROM audit_log \
         WHERE at >= $1 AND at < $2 AND ($3 = '' OR actor_id = $3) \
         AND ($4 = '' OR subject = $4) ORDER BY id DESC LIMIT $5",
    )
    .bind(from)
    .bind(to)
    .bind(params.actor.clone().unwrap_or_default())
    .bind(params.subject.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(state.db.pool())
    .await?;
    audit::record(
        &state.db,
        &officer,
        "compliance.audit",
        "audit",
        json!({ "query": asked(&params), "results": rows.len() }),
    )
    .await?;
    Ok(Json(AuditTrail {
        entries: rows
            .into_iter()
            .map(|r| AccessEntry {
                id: r.id,
                at: crate::time_fmt::rfc3339(r.at),
                actor_id: r.actor_id,
                actor_role: r.actor_role,
                action: r.action,
                subject: r.subject,
                detail: serde_json::from_str(&r.detail).unwrap_or_default(),
            })
            .collect(),
    }))
}

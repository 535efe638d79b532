//! Legal holds over HTTP, for compliance officers only. Every call is itself recorded
//! in the audit log (and so in the archive's `access` chain).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::records::HoldRow;
use super::retention;
use crate::app::AppState;
use crate::auth::ComplianceOfficer;
use crate::compliance::audit;
use crate::error::{AppError, Result};
use crate::http::{ApiJson, ApiPath};
use crate::im::ConversationId;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/compliance/holds", get(list_holds).post(set_hold))
        .route("/v1/compliance/holds/{id}/lift", post(lift_hold))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHold {
    /// The conversation to hold, or…
    pub conversation_id: Option<String>,
    /// …every record of this client (exactly one of the two).
    pub client_id: Option<String>,
    /// Why (a case or matter reference); required, at most 500 characters.
    pub reason: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftHold {
    /// Why the hold ends; required, at most 500 characters.
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldList {
    pub holds: Vec<HoldRow>,
}

fn check_reason(reason: &str) -> Result<&str> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AppError::Validation("a reason is required".into()));
    }
    if reason.chars().count() > 500 {
        return Err(AppError::Validation(
            "the reason is longer than 500 characters".into(),
        ));
    }
    Ok(reason)
}

/// Places a legal hold: the conversation (or all of the client's records) outlives its
/// retention until the hold is lifted.
#[utoipa::path(post, path = "/v1/compliance/holds", tag = "compliance",
    request_body = SetHold,
    responses((status = 201, body = HoldRow),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "conversation_not_found"),
        (status = 422, body = crate::error::ErrorBody, description = "validation_failed")),
    security(("bearer" = [])))]
pub async fn set_hold(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiJson(request): ApiJson<SetHold>,
) -> Result<(StatusCode, Json<HoldRow>)> {
    let reason = check_reason(&request.reason)?;
    let (scope, subject) = match (&request.conversation_id, &request.client_id) {
        (Some(c), None) => {
            let id: ConversationId = c.parse().map_err(|_| {
                AppError::Validation(format!("conversation_id {c:?} is not a conversation id"))
            })?;
            crate::im::store::get_conversation(&state.db, id)
                .await?
                .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
            ("conversation", id.to_string())
        }
        (None, Some(client)) if !client.trim().is_empty() => ("client", client.trim().to_string()),
        _ => {
            return Err(AppError::Validation(
                "name exactly one of conversation_id and client_id".into(),
            ));
        }
    };
    let hold = retention::set_hold(&state.db, &officer, scope, &subject, reason).await?;
    audit::record(
        &state.db,
        &officer,
        "hold.set",
        &format!("{scope}:{subject}"),
        serde_json::json!({ "hold": hold.id }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(hold)))
}

/// Lifts a legal hold; what it kept is purged at the next run if its retention is over.
#[utoipa::path(post, path = "/v1/compliance/holds/{id}/lift", tag = "compliance",
    params(("id" = String, Path, description = "hold id")),
    request_body = LiftHold,
    responses((status = 200, body = HoldRow),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed"),
        (status = 404, body = crate::error::ErrorBody, description = "hold_not_found"),
        (status = 409, body = crate::error::ErrorBody, description = "hold_lifted"),
        (status = 422, body = crate::error::ErrorBody, description = "validation_failed")),
    security(("bearer" = [])))]
pub async fn lift_hold(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<LiftHold>,
) -> Result<Json<HoldRow>> {
    let reason = check_reason(&request.reason)?;
    let hold = retention::lift_hold(&state.db, &officer, &id, reason).await?;
    audit::record(
        &state.db,
        &officer,
        "hold.lift",
        &format!("{}:{}", hold.scope, hold.subject),
        serde_json::json!({ "hold": hold.id }),
    )
    .await?;
    Ok(Json(hold))
}

/// Every legal hold, newest first, lifted ones included.
#[utoipa::path(get, path = "/v1/compliance/holds", tag = "compliance",
    responses((status = 200, body = HoldList),
        (status = 403, body = crate::error::ErrorBody, description = "role_not_allowed")),
    security(("bearer" = [])))]
pub async fn list_holds(
    State(state): State<AppState>,
    ComplianceOfficer(officer): ComplianceOfficer,
) -> Result<Json<HoldList>> {
    let holds = retention::holds(&state.db).await?;
    audit::record(
        &state.db,
        &officer,
        "hold.list",
        "holds",
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(HoldList { holds }))
}

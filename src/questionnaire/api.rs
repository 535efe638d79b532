//! `GET /v1/clients/{id}/risk-profile`: the client's current profile and its history.
//! Readable by the client, by an advisor taking part in one of the client's
//! conversations, and by compliance (audited). Nobody writes it through the API: a
//! profile comes only from completing the questionnaire.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::profile::{self, RiskProfile};
use crate::app::AppState;
use crate::auth::{AuthUser, Role};
use crate::compliance::audit;
use crate::error::{AppError, Result};
use crate::http::ApiPath;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/v1/clients/{id}/risk-profile",
        get(risk_profile)
            .put(read_only)
            .post(read_only)
            .patch(read_only)
            .delete(read_only),
    )
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RiskProfileView {
    /// The profile advice relies on now: null when none is valid (never taken, expired).
    pub current: Option<RiskProfile>,
    /// Every assessment, newest first; superseded ones are kept.
    pub history: Vec<RiskProfile>,
}

/// A client's risk profile and its history.
#[utoipa::path(get, path = "/v1/clients/{id}/risk-profile", tag = "risk profile",
    params(("id" = String, Path, description = "the client's participant id")),
    responses((status = 200, body = RiskProfileView),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn risk_profile(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<RiskProfileView>> {
    match user.role {
        Role::Client if user.id != client_id => {
            return Err(AppError::NotYourProfile(client_id));
        }
        Role::Client => {}
        Role::Advisor => {
            if !crate::im::store::advises(&state.db, &user.id, &client_id).await? {
                return Err(AppError::NotAssignedAdvisor(client_id));
            }
        }
        Role::Compliance => {
            audit::record(
                &state.db,
                &user,
                "risk_profile.read",
                &format!("client:{client_id}"),
                serde_json::json!({}),
            )
            .await?;
        }
        Role::Admin => return Err(AppError::RoleNotAllowed(user.role.as_str())),
    }
    let history = profile::history(&state.db, &client_id).await?;
    if history.is_empty() {
        return Err(AppError::RiskProfileNotFound(client_id));
    }
    let current = history.first().filter(|p| p.valid).cloned();
    Ok(Json(RiskProfileView { current, history }))
}

/// Any attempt to write a profile through the API.
pub async fn read_only() -> AppError {
    AppError::RiskProfileReadOnly
}

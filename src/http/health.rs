//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::app::AppState;
use crate::error::{AppError, Result};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = crate::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>> {
    state
        .db
        .check_ready()
        .await
        .map_err(|e| AppError::NotReady(e.to_string()))?;
    Ok(Json(Health { status: "ready" }))
}

//! `GET /v1/conversations/{id}/turns`: the bot's turn records of a conversation — what
//! it was asked, what it retrieved, which prompt and model wrote the reply, the tokens
//! and estimated cost — with the totals. Staff only (advisors and compliance; compliance
//! reads are audited): clients see the replies, not the machinery.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::session::{self, Usage};
use crate::app::AppState;
use crate::auth::{AuthUser, Role};
use crate::error::Result;
use crate::http::ApiPath;
use crate::im::ConversationId;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/conversations/{id}/turns", get(turns))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnView {
    pub trigger_seq: i64,
    pub kind: String,
    pub state: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub total_ms: i64,
    /// RFC 3339.
    pub created_at: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnsView {
    pub conversation_id: String,
    /// The engine's state now.
    pub state: String,
    #[schema(value_type = Object)]
    pub usage: Usage,
    /// The currency of `cost_micros` (millionths of it).
    pub cost_currency: String,
    pub turns: Vec<TurnView>,
}

/// A conversation's bot turns, oldest first, with token and cost totals.
#[utoipa::path(get, path = "/v1/conversations/{id}/turns", tag = "conversations",
    params(("id" = String, Path, description = "conversation id (UUID)")),
    responses((status = 200, body = TurnsView),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn turns(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<TurnsView>> {
    user.require(&[Role::Advisor, Role::Compliance])?;
    crate::im::api::readable_conversation(&state, &user, id, "conversation.turns.read").await?;
    let records = session::records(&state.db, id).await?;
    let usage = session::usage(&state.db, id).await?;
    let (bot_state, _) = session::state(&state.db, id).await?;
    Ok(Json(TurnsView {
        conversation_id: id.to_string(),
        state: bot_state.as_str().into(),
        usage,
        cost_currency: state.config.llm.cost_currency.clone(),
        turns: records,
    }))
}

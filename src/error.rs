//! The one error type of the HTTP API and its mapping to status codes and stable,
//! snake_case error codes (`{"error":"…","message":"…"}`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Everything a handler can fail with. Internal causes are logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    MissingToken(&'static str),
    #[error("the access token is not valid: {0}")]
    InvalidToken(String),
    #[error("the access token has expired")]
    TokenExpired,
    #[error("this endpoint is not available to the {0} role")]
    RoleNotAllowed(&'static str),
    #[error("conversation {0} belongs to another client")]
    NotYourConversation(String),
    #[error("conversation {0} does not exist")]
    ConversationNotFound(String),
    #[error("document {0} is not in the knowledge base")]
    DocumentNotFound(String),
    #[error("client {0} has no risk profile yet")]
    RiskProfileNotFound(String),
    #[error("the risk profile of {0} belongs to another client")]
    NotYourProfile(String),
    #[error("you are not an advisor in any conversation of client {0}")]
    NotAssignedAdvisor(String),
    #[error("a risk profile is set only by completing the risk questionnaire")]
    RiskProfileReadOnly,
    #[error("conversation {0} is closed")]
    ConversationClosed(String),
    #[error("you are not a participant of conversation {0}")]
    NotAParticipant(String),
    #[error("too many frames: the limit is {0} per second")]
    RateLimited(u32),
    #[error("the frame is {0} bytes; the limit is {1}")]
    FrameTooLarge(usize, usize),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body does not match the expected shape: {0}")]
    InvalidBody(String),
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("expected a request body with content type application/json")]
    UnsupportedMediaType,
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    Validation(String),
    #[error("invalid search: {0}")]
    InvalidSearch(String),
    #[error("{0}")]
    RangeReversed(String),
    #[error("{0}")]
    RangeUnbounded(String),
    #[error("{0}")]
    TurnNotFound(String),
    #[error("{0}")]
    ExportTooLarge(String),
    #[error("the request did not complete within {0} s")]
    Timeout(u64),
    #[error("{0}")]
    HandoffPending(String),
    #[error("{0}")]
    AlreadyClaimed(String),
    #[error("conversation {0} is not waiting in the queue")]
    NotQueued(String),
    #[error("{0}")]
    OverCapacity(String),
    #[error("{0}")]
    AdvisorUnavailable(String),
    #[error("advisor {0} is not known here")]
    AdvisorNotFound(String),
    #[error("{0}")]
    NotOwner(String),
    #[error("{0}")]
    NotEligible(String),
    #[error("legal hold {0} does not exist")]
    HoldNotFound(String),
    #[error("legal hold {0} was lifted already")]
    HoldLifted(String),
    #[error("the service is not ready: {0}")]
    NotReady(String),
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code; clients branch on this, never on the message.
    pub error: &'static str,
    /// A sentence for humans.
    pub message: String,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        use AppError::*;
        match self {
            MissingToken(_) | InvalidToken(_) | TokenExpired => StatusCode::UNAUTHORIZED,
            RoleNotAllowed(_)
            | NotYourConversation(_)
            | NotAParticipant(_)
            | NotYourProfile(_)
            | NotAssignedAdvisor(_)
            | RiskProfileReadOnly
            | NotOwner(_)
            | NotEligible(_) => StatusCode::FORBIDDEN,
            ConversationClosed(_)
            | HandoffPending(_)
            | AlreadyClaimed(_)
            | NotQueued(_)
            | OverCapacity(_)
            | AdvisorUnavailable(_)
            | HoldLifted(_) => StatusCode::CONFLICT,
            RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            FrameTooLarge(..) => StatusCode::PAYLOAD_TOO_LARGE,
            ConversationNotFound(_)
            | RouteNotFound(_)
            | RiskProfileNotFound(_)
            | DocumentNotFound(_)
            | AdvisorNotFound(_)
            | HoldNotFound(_)
            | TurnNotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            MalformedJson(_) | InvalidQuery(_) | InvalidId(_) | InvalidSearch(_)
            | RangeReversed(_) | RangeUnbounded(_) => StatusCode::BAD_REQUEST,
            ExportTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidBody(_) | Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code documented in the README.
    pub fn code(&self) -> &'static str {
        use AppError::*;
        match self {
            MissingToken(_) => "missing_token",
            InvalidToken(_) => "invalid_token",
            TokenExpired => "token_expired",
            RoleNotAllowed(_) => "role_not_allowed",
            NotYourConversation(_) => "not_your_conversation",
            ConversationNotFound(_) => "conversation_not_found",
            ConversationClosed(_) => "conversation_closed",
            RiskProfileNotFound(_) => "risk_profile_not_found",
            DocumentNotFound(_) => "document_not_found",
            NotYourProfile(_) => "not_your_profile",
            NotAssignedAdvisor(_) => "not_assigned_advisor",
            RiskProfileReadOnly => "risk_profile_read_only",
            NotAParticipant(_) => "not_a_participant",
            RateLimited(_) => "rate_limited",
            FrameTooLarge(..) => "frame_too_large",
            RouteNotFound(_) => "route_not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            MalformedJson(_) => "malformed_json",
            InvalidBody(_) => "invalid_body",
            BodyTooLarge(_) => "body_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            InvalidQuery(_) => "invalid_query",
            InvalidId(_) => "invalid_id",
            Validation(_) => "validation_failed",
            InvalidSearch(_) => "invalid_search",
            RangeReversed(_) => "range_reversed",
            RangeUnbounded(_) => "range_unbounded",
            TurnNotFound(_) => "turn_not_found",
            ExportTooLarge(_) => "export_too_large",
            NotReady(_) => "not_ready",
            Timeout(_) => "request_timeout",
            HandoffPending(_) => "handoff_pending",
            HoldNotFound(_) => "hold_not_found",
            HoldLifted(_) => "hold_lifted",
            AlreadyClaimed(_) => "already_claimed",
            NotQueued(_) => "not_queued",
            OverCapacity(_) => "over_capacity",
            AdvisorUnavailable(_) => "advisor_unavailable",
            AdvisorNotFound(_) => "advisor_not_found",
            NotOwner(_) => "not_owner",
            NotEligible(_) => "not_eligible",
            Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code(),
            message: self.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        AppError::Internal(err.into())
    }
}

impl From<crate::im::commit::CommitError> for AppError {
    fn from(err: crate::im::commit::CommitError) -> Self {
        AppError::Internal(err.into())
    }
}

impl From<crate::db::DbError> for AppError {
    fn from(err: crate::db::DbError) -> Self {
        AppError::Internal(err.into())
    }
}

impl From<crate::knowledge::index::KnowledgeError> for AppError {
    fn from(err: crate::knowledge::index::KnowledgeError) -> Self {
        AppError::Internal(err.into())
    }
}

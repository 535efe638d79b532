//! Wrappers around axum's extractors whose rejections use our error format.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `Json<T>` whose rejections are `malformed_json`, `invalid_body`,
/// `unsupported_media_type` or `body_too_large`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or_default();
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection, limit)),
        }
    }
}

/// The configured body limit, put in request extensions so rejections can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

fn json_rejection(rejection: JsonRejection, limit: usize) -> AppError {
    match rejection {
        JsonRejection::JsonDataError(e) => AppError::InvalidBody(source_text(&e)),
        JsonRejection::JsonSyntaxError(e) => AppError::MalformedJson(source_text(&e)),
        JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType,
        JsonRejection::BytesRejection(e) => {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::BodyTooLarge(limit)
            } else {
                AppError::MalformedJson(e.body_text())
            }
        }
        other => AppError::MalformedJson(other.body_text()),
    }
}

/// The innermost cause: serde's sentence with line and column, without axum's prefix.
fn source_text(err: &dyn std::error::Error) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// `Query<T>` rejecting with `invalid_query`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| AppError::InvalidQuery(source_text(&e)))
    }
}

/// `Path<T>` rejecting with `invalid_id` and the reason the segment did not parse.
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| match e {
                PathRejection::FailedToDeserializePathParams(inner) => {
                    AppError::InvalidId(inner.into_kind().to_string())
                }
                other => AppError::Internal(anyhow::anyhow!(other.body_text())),
            })
    }
}

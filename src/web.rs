//! The web pages served from the binary: the client chat page (`/chat`), the advisor
//! console (`/advisor`) and the compliance review console (`/compliance`). Plain HTML,
//! CSS and JavaScript (no build step); they talk to the same API and WebSocket as any
//! other client, with the token from the URL fragment or a sign-in form.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;
use crate::error::AppError;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/chat.js"),
    },
    Asset {
        path: "chat.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/chat.css"),
    },
    Asset {
        path: "advisor.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/advisor.js"),
    },
    Asset {
        path: "advisor.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/advisor.css"),
    },
    Asset {
        path: "compliance.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/compliance.js"),
    },
    Asset {
        path: "compliance.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/compliance.css"),
    },
];

const CHAT: &str = include_str!("../web/chat.html");
const ADVISOR: &str = include_str!("../web/advisor.html");
const COMPLIANCE: &str = include_str!("../web/compliance.html");

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/chat") }))
        .route("/chat", get(|| async { page(CHAT) }))
        .route("/advisor", get(|| async { page(ADVISOR) }))
        .route("/compliance", get(|| async { page(COMPLIANCE) }))
        .route("/assets/{file}", get(asset))
}

fn page(html: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        html,
    )
        .into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == file) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            a.body,
        )
            .into_response(),
        None => AppError::RouteNotFound(format!("GET /assets/{file}")).into_response(),
    }
}

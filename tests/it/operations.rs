//! Probes, metrics, the OpenAPI document, HTTP hardening and shutdown.

use reqwest::StatusCode;

use crate::helpers::{Store, TestApp, assert_error, spawn_app_with};
use crate::on_both_stores;

async fn health_and_readiness_answer(app: TestApp) {
    let (status, body) = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
}

async fn readiness_fails_when_a_migration_is_missing(app: TestApp) {
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(app.db().pool())
        .await
        .unwrap();
    let response = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
}

async fn metrics_count_requests_by_route_template(app: TestApp) {
    let token = app.token(wealthdesk::auth::Role::Client, "m-client");
    let id = app.start_conversation(&token).await;
    app.get(&format!("/v1/conversations/{id}"), &token).await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"wealthdesk_http_requests_total{method="GET",route="/v1/conversations/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains(&id), "ids never become labels");
    assert!(text.contains("wealthdesk_http_request_duration_seconds_bucket"));
    assert!(text.contains("wealthdesk_db_pool_connections"));
    assert!(text.contains("wealthdesk_im_listeners 0"), "{text}");
    assert!(text.contains("wealthdesk_bus_connected 1"), "{text}");
}

async fn the_openapi_document_describes_the_api(app: TestApp) {
    let (status, doc) = app
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/healthz",
        "/readyz",
        "/v1/conversations",
        "/v1/conversations/{id}",
        "/v1/conversations/{id}/messages",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

async fn responses_carry_security_headers_and_a_request_id(app: TestApp) {
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(
        headers.get("strict-transport-security").is_none(),
        "HSTS only behind TLS"
    );
    assert!(!headers["x-request-id"].is_empty());

    let response = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
}

async fn shutdown_drains_and_closes_the_pool(app: TestApp) {
    let pool = app.db().pool().clone();
    let addr = app.addr;
    app.stop().await;
    assert!(pool.is_closed());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

on_both_stores!(
    health_and_readiness_answer,
    readiness_fails_when_a_migration_is_missing,
    metrics_count_requests_by_route_template,
    the_openapi_document_describes_the_api,
    responses_carry_security_headers_and_a_request_id,
    shutdown_drains_and_closes_the_pool,
);

#[tokio::test]
async fn hsts_and_cors_follow_configuration() {
    let app = spawn_app_with(Store::Sqlite, |c| {
        c.http.hsts = true;
        c.http.cors_origins = vec!["https://app.bank.example".into()];
    })
    .await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(
        response.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );

    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/conversations"))
        .header("origin", "https://app.bank.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.bank.example"
    );
    let foreign = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/conversations"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_request_times_out_but_event_streams_live_on() {
    let app = spawn_app_with(Store::Sqlite, |c| c.http.request_timeout_secs = 1).await;
    let client = app.token(wealthdesk::auth::Role::Client, "patient");
    let conversation = app.start_conversation(&client).await;

    // An event stream outlives the request deadline.
    let mut stream = app
        .http
        .get(app.url(&format!("/v1/conversations/{conversation}/events")))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);

    // Another writer holds the database; a request that needs it runs out of time.
    let mut holder = app.db().pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = app
        .call(
            reqwest::Method::POST,
            "/v1/conversations",
            Some(&client),
            Some(serde_json::json!({})),
        )
        .await;
    assert_error(response, StatusCode::GATEWAY_TIMEOUT, "request_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
    drop(holder);
    // Well past the deadline now, the stream is still open.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let path = format!("/v1/conversations/{conversation}/messages");
    let body = serde_json::json!({"client_msg_id": "late", "kind": "text", "body": {"text": "still there?"}});
    let (status, _) = app
        .call(reqwest::Method::POST, &path, Some(&client), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut seen = String::new();
    while !seen.contains("still there?") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
            .await
            .expect("the stream delivers")
            .unwrap()
            .expect("the stream is still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

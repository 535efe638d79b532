//! Bad input gets a specific status, a stable code and a sentence.

use reqwest::StatusCode;
use wealthdesk::auth::Role;

use crate::helpers::{TestApp, assert_error};
use crate::on_both_stores;

async fn raw_post(
    app: &TestApp,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let response = app
        .http
        .post(app.url("/v1/conversations"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

async fn malformed_bodies_are_named(app: TestApp) {
    let token = app.token(Role::Client, "bad-input");
    let response = raw_post(
        &app,
        &token,
        "application/json",
        b"{\"language\": ".to_vec(),
    )
    .await;
    assert_error(response, StatusCode::BAD_REQUEST, "malformed_json");

    let response = raw_post(
        &app,
        &token,
        "application/json",
        br#"{"langauge":"en"}"#.to_vec(),
    )
    .await;
    assert_error(
        response.clone(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert!(response.1["message"].as_str().unwrap().contains("langauge"));

    let response = raw_post(
        &app,
        &token,
        "application/json",
        br#"{"language":"fr"}"#.to_vec(),
    )
    .await;
    assert_error(
        response.clone(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert!(
        response.1["message"]
            .as_str()
            .unwrap()
            .contains("not supported")
    );

    let response = raw_post(&app, &token, "text/plain", b"{}".to_vec()).await;
    assert_error(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let huge = format!("{{\"language\":\"{}\"}}", "x".repeat(100 * 1024));
    let response = raw_post(&app, &token, "application/json", huge.into_bytes()).await;
    assert_error(
        response.clone(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert!(response.1["message"].as_str().unwrap().contains("65536"));
}

async fn bad_ids_and_unknown_resources_are_named(app: TestApp) {
    let token = app.token(Role::Client, "ids");
    let response = app.get("/v1/conversations/not-a-uuid", &token).await;
    assert_error(response.clone(), StatusCode::BAD_REQUEST, "invalid_id");
    assert!(
        response.1["message"]
            .as_str()
            .unwrap()
            .contains("not-a-uuid")
    );

    let unknown = wealthdesk::im::ConversationId::new();
    assert_error(
        app.get(&format!("/v1/conversations/{unknown}"), &token)
            .await,
        StatusCode::NOT_FOUND,
        "conversation_not_found",
    );
    assert_error(
        app.get(&format!("/v1/conversations/{unknown}/messages"), &token)
            .await,
        StatusCode::NOT_FOUND,
        "conversation_not_found",
    );
    assert_error(
        app.get("/v1/nothing-here", &token).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    );
    let response = app
        .call(
            reqwest::Method::DELETE,
            "/v1/conversations",
            Some(&token),
            None,
        )
        .await;
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn bad_query_parameters_are_named(app: TestApp) {
    let token = app.token(Role::Client, "query");
    let id = app.start_conversation(&token).await;
    for query in [
        "limit=0",
        "limit=501",
        "limit=abc",
        "after_seq=-1",
        "colour=blue",
    ] {
        let response = app
            .get(&format!("/v1/conversations/{id}/messages?{query}"), &token)
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_query");
    }
}

on_both_stores!(
    malformed_bodies_are_named,
    bad_ids_and_unknown_resources_are_named,
    bad_query_parameters_are_named,
);

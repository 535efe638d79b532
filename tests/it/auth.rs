//! Tokens and the authorisation matrix: role × endpoint × owner.

use reqwest::{Method, StatusCode};
use serde_json::json;
use wealthdesk::auth::{Claims, Role};
use wealthdesk::compliance::audit;

use crate::helpers::{TestApp, assert_error};
use crate::on_both_stores;

fn sign(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, role: Role, exp_offset: i64) -> Claims {
    let now = jsonwebtoken::get_current_timestamp();
    Claims {
        sub: sub.into(),
        role,
        iat: now,
        exp: (now as i64 + exp_offset) as u64,
        name: None,
        lang: None,
        iss: None,
        aud: None,
    }
}

async fn a_request_without_a_token_is_refused(app: TestApp) {
    let response = app
        .http
        .get(app.url("/v1/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "missing_token");
}

async fn bad_tokens_get_specific_errors(app: TestApp) {
    let path = "/v1/conversations";
    assert_error(
        app.get(path, "not-a-jwt").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    let foreign = sign(
        &claims("eve", Role::Client, 600),
        "some-other-secret-that-is-long-enough",
    );
    let response = app.get(path, &foreign).await;
    assert_error(response.clone(), StatusCode::UNAUTHORIZED, "invalid_token");
    assert!(
        response.1["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );

    let secret = "test-secret-that-is-long-enough-0123456789";
    let expired = sign(&claims("alice", Role::Client, -3600), secret);
    assert_error(
        app.get(path, &expired).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    );

    let mut bad_role = serde_json::to_value(claims("alice", Role::Client, 600)).unwrap();
    bad_role["role"] = json!("superuser");
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &bad_role,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_error(
        app.get(path, &token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    let response = app
        .http
        .get(app.url(path))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
}

async fn a_browser_may_pass_the_token_in_the_query(app: TestApp) {
    let token = app.token(Role::Client, "alice");
    let id = app.start_conversation(&token).await;
    let response = app
        .http
        .get(app.url(&format!("/v1/conversations/{id}?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Every endpoint, every role, own and someone else's conversation.
async fn the_authorisation_matrix_holds(app: TestApp) {
    let owner = app.token(Role::Client, "owner");
    let other_client = app.token(Role::Client, "stranger");
    let advisor = app.token(Role::Advisor, "adv-1");
    let compliance = app.token(Role::Compliance, "co-1");
    let admin = app.token(Role::Admin, "ops-1");
    let id = app.start_conversation(&owner).await;

    // Only clients start conversations.
    for (token, expected) in [
        (&owner, Ok(StatusCode::CREATED)),
        (&advisor, Err("role_not_allowed")),
        (&compliance, Err("role_not_allowed")),
        (&admin, Err("role_not_allowed")),
    ] {
        let response = app
            .call(
                Method::POST,
                "/v1/conversations",
                Some(token),
                Some(json!({})),
            )
            .await;
        check(response, expected);
    }

    for path in [
        format!("/v1/conversations/{id}"),
        format!("/v1/conversations/{id}/messages"),
    ] {
        for (who, token, expected) in [
            ("owner", &owner, Ok(StatusCode::OK)),
            (
                "another client",
                &other_client,
                Err("not_your_conversation"),
            ),
            ("advisor", &advisor, Ok(StatusCode::OK)),
            ("compliance", &compliance, Ok(StatusCode::OK)),
            ("admin", &admin, Err("role_not_allowed")),
        ] {
            let response = app.get(&path, token).await;
            assert!(
                matches_expected(&response, expected),
                "{who} on {path}: {response:?}"
            );
        }
    }

    // Listing: clients see their own, staff see all, admins nothing.
    app.start_conversation(&other_client).await;
    let (status, mine) = app.get("/v1/conversations", &owner).await;
    assert_eq!(status, StatusCode::OK);
    let owners: Vec<&str> = mine["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["owner", "owner"]);
    let (_, all) = app.get("/v1/conversations", &advisor).await;
    assert_eq!(all["conversations"].as_array().unwrap().len(), 3);
    assert_error(
        app.get("/v1/conversations?client_id=stranger", &owner)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_error(
        app.get("/v1/conversations", &admin).await,
        StatusCode::FORBIDDEN,
        "role_not_allowed",
    );
}

fn matches_expected(
    response: &(StatusCode, serde_json::Value),
    expected: Result<StatusCode, &str>,
) -> bool {
    match expected {
        Ok(status) => response.0 == status,
        Err(code) => response.0 == StatusCode::FORBIDDEN && response.1["error"] == code,
    }
}

#[track_caller]
fn check(response: (StatusCode, serde_json::Value), expected: Result<StatusCode, &str>) {
    assert!(
        matches_expected(&response, expected),
        "{response:?} vs {expected:?}"
    );
}

async fn compliance_reads_are_audited_and_the_log_is_append_only(app: TestApp) {
    let owner = app.token(Role::Client, "owner");
    let compliance = app.token(Role::Compliance, "co-7");
    let advisor = app.token(Role::Advisor, "adv-7");
    let id = app.start_conversation(&owner).await;
    app.get(&format!("/v1/conversations/{id}"), &advisor).await;
    app.get(&format!("/v1/conversations/{id}"), &compliance)
        .await;
    app.get(&format!("/v1/conversations/{id}/messages"), &compliance)
        .await;

    let entries = audit::entries_for(app.db(), &format!("conversation:{id}"))
        .await
        .unwrap();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.actor_id.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("co-7", "conversation.read"),
            ("co-7", "conversation.messages.read")
        ]
    );

    let update = sqlx::query("UPDATE audit_log SET actor_id = 'nobody'")
        .execute(app.db().pool())
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_log")
        .execute(app.db().pool())
        .await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

on_both_stores!(
    a_request_without_a_token_is_refused,
    bad_tokens_get_specific_errors,
    a_browser_may_pass_the_token_in_the_query,
    the_authorisation_matrix_holds,
    compliance_reads_are_audited_and_the_log_is_append_only,
);

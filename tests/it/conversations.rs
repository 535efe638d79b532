//! Conversations and their messages through the HTTP API and the store.

use reqwest::{Method, StatusCode};
use serde_json::json;
use wealthdesk::auth::Role;
use wealthdesk::im::model::Sender;
use wealthdesk::im::store::{self, NewMessage, Outcome};

use crate::helpers::TestApp;
use crate::on_both_stores;

fn text(conversation: &str, sender: &str, text: &str, client_msg_id: Option<&str>) -> NewMessage {
    NewMessage {
        conversation_id: conversation.parse().unwrap(),
        sender: Sender {
            id: sender.into(),
            role: "client".into(),
        },
        kind: "text".into(),
        body: json!({ "text": text }),
        client_msg_id: client_msg_id.map(str::to_string),
    }
}

async fn a_client_starts_a_conversation_in_their_language(app: TestApp) {
    let token = app.token(Role::Client, "li-wei");
    let response = app
        .http
        .post(app.url("/v1/conversations"))
        .bearer_auth(&token)
        .json(&json!({ "language": "en-GB" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(created["language"], "en");
    assert_eq!(created["mode"], "bot");
    assert_eq!(created["last_seq"], 0);
    assert_eq!(created["client_id"], "li-wei");
    assert_eq!(
        location,
        format!("/v1/conversations/{}", created["id"].as_str().unwrap())
    );

    let (status, fetched) = app.get(&location, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);

    // Without a language the default is zh-CN.
    let (_, body) = app
        .call(
            Method::POST,
            "/v1/conversations",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(body["language"], "zh-CN");
}

async fn messages_page_in_sequence_order(app: TestApp) {
    let token = app.token(Role::Client, "pager");
    let id = app.start_conversation(&token).await;
    for i in 1..=7 {
        let outcome = store::append_message(app.db(), text(&id, "pager", &format!("m{i}"), None))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Stored(_)));
    }
    let (status, page) = app
        .get(&format!("/v1/conversations/{id}/messages?limit=3"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["body"]["text"], "m1");
    assert_eq!(page["messages"][0]["sender"]["id"], "pager");

    let (_, rest) = app
        .get(
            &format!("/v1/conversations/{id}/messages?after_seq=3&limit=10"),
            &token,
        )
        .await;
    let seqs: Vec<i64> = rest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5, 6, 7]);
    assert_eq!(rest["has_more"], false);

    let (_, conversation) = app.get(&format!("/v1/conversations/{id}"), &token).await;
    assert_eq!(conversation["last_seq"], 7);
}

async fn a_retried_message_is_stored_once(app: TestApp) {
    let token = app.token(Role::Client, "retry");
    let id = app.start_conversation(&token).await;
    let first = store::append_message(app.db(), text(&id, "retry", "hello", Some("c-1")))
        .await
        .unwrap();
    let again = store::append_message(app.db(), text(&id, "retry", "hello", Some("c-1")))
        .await
        .unwrap();
    let Outcome::Stored(original) = first else {
        panic!("first send stored: {first:?}")
    };
    assert_eq!(again, Outcome::Duplicate(original));
    let next = store::append_message(app.db(), text(&id, "retry", "next", Some("c-2")))
        .await
        .unwrap();
    assert_eq!(
        next.message().unwrap().seq,
        2,
        "a duplicate consumes no sequence number"
    );
}

async fn concurrent_writers_get_gapless_sequence_numbers(app: TestApp) {
    let token = app.token(Role::Client, "busy");
    let id = app.start_conversation(&token).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let db = app.db().clone();
        let message = text(
            &id,
            "busy",
            &format!("m{i}"),
            Some(&format!("id-{}", i % 20)),
        );
        tasks.push(tokio::spawn(async move {
            store::append_message(&db, message).await.unwrap()
        }));
    }
    let mut stored = 0;
    for task in tasks {
        if let Outcome::Stored(_) = task.await.unwrap() {
            stored += 1;
        }
    }
    assert_eq!(stored, 20, "each client message id is stored once");
    let messages = store::list_messages(app.db(), id.parse().unwrap(), 0, 100)
        .await
        .unwrap();
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
}

async fn appending_to_an_unknown_conversation_stores_nothing(app: TestApp) {
    let missing = wealthdesk::im::ConversationId::new().to_string();
    let outcome = store::append_message(app.db(), text(&missing, "x", "hi", None))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::ConversationNotFound);
}

on_both_stores!(
    a_client_starts_a_conversation_in_their_language,
    messages_page_in_sequence_order,
    a_retried_message_is_stored_once,
    concurrent_writers_get_gapless_sequence_numbers,
    appending_to_an_unknown_conversation_stores_nothing,
);

//! The IM backbone as clients and advisors live it, over real sockets.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wealthdesk::auth::Role;

use crate::helpers::{Store, TestApp, assert_error, spawn_app_with};
use crate::on_both_stores;
use crate::ws::{Ended, WsClient};

/// A client's conversation with an advisor who has claimed it. `base` is the seq of the
/// last system notice the handoff wrote (queued, joined): what the two say comes after.
struct Pair {
    client: String,
    advisor: String,
    conversation: String,
    base: i64,
}

async fn pair(app: &TestApp, client: &str, advisor: &str) -> Pair {
    let client = app.token(Role::Client, client);
    let advisor = app.token(Role::Advisor, advisor);
    let conversation = app.start_conversation(&client).await;
    let base = app.join(&advisor, &client, &conversation).await;
    Pair {
        client,
        advisor,
        conversation,
        base,
    }
}

fn ack_seq(ack: &Value) -> i64 {
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["seq"].as_i64().unwrap()
}

async fn a_client_and_an_advisor_talk_in_real_time(app: TestApp) {
    let p = pair(&app, "mei", "adv-zhang").await;
    let mut client = app.ws(&p.client).await;
    let mut advisor = app.ws(&p.advisor).await;
    assert_eq!(client.hello["protocol"], 1);
    assert_eq!(client.hello["role"], "client");
    advisor.subscribe(&p.conversation, None).await;

    let ack = client
        .send_text(&p.conversation, "m-1", "我想了解一下债券基金")
        .await;
    assert_eq!(ack_seq(&ack), p.base + 1);
    assert_eq!(ack["duplicate"], false);
    assert_eq!(ack["client_msg_id"], "m-1");
    let received = advisor.next_message(&p.conversation).await;
    assert_eq!(received["seq"], p.base + 1);
    assert_eq!(received["body"]["text"], "我想了解一下债券基金");
    assert_eq!(received["sender"]["id"], "mei");
    assert_eq!(received["sender"]["role"], "client");

    let ack = advisor
        .send_text(&p.conversation, "a-1", "您好，我来为您介绍。")
        .await;
    assert_eq!(ack_seq(&ack), p.base + 2);
    // The client's own message comes back too (that is how its other devices keep up).
    assert_eq!(
        client.next_message(&p.conversation).await["seq"],
        p.base + 1
    );
    let reply = client.next_message(&p.conversation).await;
    assert_eq!(reply["seq"], p.base + 2);
    assert_eq!(reply["sender"]["role"], "advisor");
}

async fn a_retried_send_returns_the_original_ack_and_is_delivered_once(app: TestApp) {
    let p = pair(&app, "retry-client", "retry-adv").await;
    let mut advisor = app.ws(&p.advisor).await;
    advisor.subscribe(&p.conversation, None).await;
    // Several devices of one client retrying the same message at once.
    let mut devices = Vec::new();
    for _ in 0..4 {
        devices.push(app.ws(&p.client).await);
    }
    let sends = devices
        .iter_mut()
        .map(|d| d.send_text(&p.conversation, "same-id", "hello"));
    let acks = futures::future::join_all(sends).await;
    let seqs: Vec<i64> = acks.iter().map(ack_seq).collect();
    assert!(seqs.iter().all(|s| *s == p.base + 1), "{acks:?}");
    assert_eq!(
        acks.iter().filter(|a| a["duplicate"] == false).count(),
        1,
        "{acks:?}"
    );

    let second = devices[0]
        .send_text(&p.conversation, "next-id", "again")
        .await;
    assert_eq!(
        ack_seq(&second),
        p.base + 2,
        "a duplicate consumes no sequence number"
    );
    assert_eq!(
        advisor.message_seqs(&p.conversation, 2).await,
        [p.base + 1, p.base + 2]
    );
    assert!(
        advisor
            .quiet(&p.conversation, Duration::from_millis(300))
            .await
    );
}

async fn a_reconnecting_client_gets_every_missed_message_once_in_order(app: TestApp) {
    let p = pair(&app, "commuter", "adv-late").await;
    let mut client = app.ws(&p.client).await;
    let ack = client.send_text(&p.conversation, "c-1", "first").await;
    assert_eq!(ack_seq(&ack), p.base + 1);
    let seen = client.next_message(&p.conversation).await["seq"]
        .as_i64()
        .unwrap();
    drop(client); // the phone goes into a tunnel

    let mut advisor = app.ws(&p.advisor).await;
    for i in 0..5 {
        advisor
            .send_text(&p.conversation, &format!("a-{i}"), &format!("reply {i}"))
            .await;
    }

    let mut client = app.ws(&p.client).await;
    let subscribed = client.subscribe(&p.conversation, Some(seen)).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["last_seq"], p.base + 6);
    assert_eq!(
        client.message_seqs(&p.conversation, 5).await,
        (p.base + 2..=p.base + 6).collect::<Vec<_>>()
    );
    advisor.send_text(&p.conversation, "a-live", "live").await;
    assert_eq!(client.message_seqs(&p.conversation, 1).await, [p.base + 7]);
    assert!(
        client
            .quiet(&p.conversation, Duration::from_millis(300))
            .await,
        "no duplicates"
    );

    // Explicit paged sync gives the same history, the handoff notices first.
    let page = client
        .request(
            json!({"type": "sync", "conversation_id": p.conversation, "after_seq": p.base, "limit": 4}),
        )
        .await;
    assert_eq!(page["type"], "synced");
    assert_eq!(page["has_more"], true);
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (p.base + 1..=p.base + 4).collect::<Vec<_>>());
    let rest = client
        .request(
            json!({"type": "sync", "conversation_id": p.conversation, "after_seq": p.base + 4}),
        )
        .await;
    assert_eq!(rest["has_more"], false);
    assert_eq!(rest["messages"].as_array().unwrap().len(), 3);
}

async fn concurrent_senders_get_gapless_sequence_numbers_and_everyone_sees_one_order(app: TestApp) {
    let p = pair(&app, "busy-client", "busy-adv").await;
    let mut listener = app.ws(&p.advisor).await;
    listener.subscribe(&p.conversation, None).await;
    let mut senders = Vec::new();
    for device in 0..3 {
        senders.push((app.ws(&p.client).await, format!("client-{device}")));
    }
    senders.push((app.ws(&p.advisor).await, "advisor".into()));
    let per_sender = 15;
    let tasks = senders.into_iter().map(|(mut socket, name)| {
        let conversation = p.conversation.clone();
        async move {
            let mut seqs = Vec::new();
            for i in 0..per_sender {
                let ack = socket
                    .send_text(
                        &conversation,
                        &format!("{name}-{i}"),
                        &format!("{name} {i}"),
                    )
                    .await;
                seqs.push(ack_seq(&ack));
            }
            seqs
        }
    });
    let mut all: Vec<i64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort();
    let total = 4 * per_sender as i64;
    let expected: Vec<i64> = (p.base + 1..=p.base + total).collect();
    assert_eq!(all, expected);
    assert_eq!(
        listener.message_seqs(&p.conversation, total as usize).await,
        expected
    );
}

async fn receipts_reach_other_devices_and_participants(app: TestApp) {
    let p = pair(&app, "reader", "adv-reader").await;
    let mut phone = app.ws(&p.client).await;
    let mut tablet = app.ws(&p.client).await;
    let mut advisor = app.ws(&p.advisor).await;
    advisor.subscribe(&p.conversation, None).await;
    advisor.send_text(&p.conversation, "a-1", "hello").await;
    phone.next_message(&p.conversation).await;
    tablet.next_message(&p.conversation).await;
    phone
        .send_json(json!({"type": "receipt", "conversation_id": p.conversation, "status": "read", "seq": p.base + 1}))
        .await;
    for socket in [&mut tablet, &mut advisor] {
        let receipt = socket.expect(|f| f["type"] == "receipt").await;
        assert_eq!(receipt["participant_id"], "reader");
        assert_eq!(receipt["status"], "read");
        assert_eq!(receipt["seq"], p.base + 1);
    }
    let (delivered, read) =
        wealthdesk::im::store::receipt_of(app.db(), p.conversation.parse().unwrap(), "reader")
            .await
            .unwrap();
    assert_eq!((delivered, read), (p.base + 1, p.base + 1));

    // A receipt beyond the newest message is refused.
    let answer = phone
        .request(json!({"type": "receipt", "conversation_id": p.conversation, "status": "read", "seq": 99}))
        .await;
    assert_eq!(answer["code"], "validation_failed");
}

async fn typing_is_relayed_but_never_stored(app: TestApp) {
    let p = pair(&app, "typist", "adv-t").await;
    let mut client = app.ws(&p.client).await;
    let mut advisor = app.ws(&p.advisor).await;
    advisor.subscribe(&p.conversation, None).await;
    client
        .send_json(json!({"type": "typing", "conversation_id": p.conversation, "active": true}))
        .await;
    let typing = advisor.expect(|f| f["type"] == "typing").await;
    assert_eq!(typing["participant_id"], "typist");
    assert_eq!(typing["active"], true);
    let (_, page) = app
        .get(
            &format!("/v1/conversations/{}/messages", p.conversation),
            &p.client,
        )
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(
        messages.len() as i64,
        p.base,
        "only the handoff notices: {page}"
    );
    assert!(
        messages.iter().all(|m| m["sender"]["role"] == "system"),
        "{page}"
    );
}

async fn advisors_see_each_others_presence(app: TestApp) {
    let one = app.token(Role::Advisor, "adv-one");
    let two = app.token(Role::Advisor, "adv-two");
    let mut first = app.ws(&one).await;
    let mut second = app.ws(&two).await;
    second
        .send_json(json!({"type": "presence", "status": "away"}))
        .await;
    let seen = first.expect(|f| f["type"] == "presence").await;
    assert_eq!(seen["participant_id"], "adv-two");
    assert_eq!(seen["status"], "away");

    let client = app.token(Role::Client, "not-an-advisor");
    let mut socket = app.ws(&client).await;
    let answer = socket
        .request(json!({"type": "presence", "status": "online"}))
        .await;
    assert_eq!(answer["code"], "role_not_allowed");
}

async fn bad_frames_get_error_frames_and_the_socket_stays_open(app: TestApp) {
    let p = pair(&app, "sloppy", "adv-s").await;
    let mut socket = app.ws(&p.client).await;

    socket
        .send_raw(WsMessage::Text("this is not json".into()))
        .await;
    let e = socket.expect(|f| f["type"] == "error").await;
    assert_eq!(e["code"], "malformed_frame");

    let e = socket.request(json!({"type": "teleport"})).await;
    assert_eq!(e["code"], "unknown_frame_type");

    let e = socket
        .request(json!({"type": "send", "conversation_id": p.conversation}))
        .await;
    assert_eq!(e["code"], "invalid_frame");
    assert!(
        e["message"].as_str().unwrap().contains("client_msg_id"),
        "{e}"
    );

    socket
        .send_raw(WsMessage::Binary(vec![1, 2, 3].into()))
        .await;
    let e = socket.expect(|f| f["type"] == "error").await;
    assert_eq!(e["code"], "binary_not_supported");

    let big = "长".repeat(7000); // 21 KB: above the 16 KiB frame limit, under the hard limit
    socket
        .send_json(json!({"type": "send", "conversation_id": p.conversation, "client_msg_id": "big-1", "kind": "text", "body": {"text": big}}))
        .await;
    let e = socket.expect(|f| f["type"] == "error").await;
    assert_eq!(e["code"], "frame_too_large");

    let e = socket.send_text(&p.conversation, "", "empty id").await;
    assert_eq!(e["code"], "validation_failed");
    let e = socket
        .request(json!({"type": "send", "conversation_id": p.conversation, "client_msg_id": "k", "kind": "system", "body": {"text": "x"}}))
        .await;
    assert_eq!(e["code"], "validation_failed");

    let unknown = wealthdesk::im::ConversationId::new().to_string();
    let e = socket.send_text(&unknown, "u-1", "hi").await;
    assert_eq!(e["code"], "conversation_not_found");

    // Someone else's conversation.
    let other = pair(&app, "someone-else", "adv-x").await;
    let e = socket.send_text(&other.conversation, "x-1", "hi").await;
    assert_eq!(e["code"], "not_your_conversation");

    // An advisor who has not joined.
    let outsider = app.token(Role::Advisor, "adv-outsider");
    let mut outsider = app.ws(&outsider).await;
    let e = outsider.send_text(&p.conversation, "o-1", "hi").await;
    assert_eq!(e["code"], "not_a_participant");

    // Still open and working.
    let pong = socket.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    let ack = socket
        .send_text(&p.conversation, "ok-1", "still here")
        .await;
    assert_eq!(
        ack_seq(&ack),
        p.base + 1,
        "nothing from the bad frames was stored"
    );
}

async fn the_upgrade_refuses_bad_tokens_and_roles(app: TestApp) {
    let response = app.http.get(app.url("/v1/im/ws")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let compliance = app.token(Role::Compliance, "co");
    let request = app
        .http
        .get(app.url("/v1/im/ws"))
        .bearer_auth(&compliance)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(request.status(), StatusCode::FORBIDDEN);
    let err =
        tokio_tungstenite::connect_async(format!("{}?access_token=garbage", app.ws_url())).await;
    assert!(err.is_err());
}

async fn http_fallback_sends_with_the_same_idempotency(app: TestApp) {
    let p = pair(&app, "no-socket", "adv-h").await;
    let mut advisor = app.ws(&p.advisor).await;
    advisor.subscribe(&p.conversation, None).await;
    let path = format!("/v1/conversations/{}/messages", p.conversation);
    let body = json!({"client_msg_id": "h-1", "kind": "text", "body": {"text": "via http"}});
    let (status, ack) = app
        .call(Method::POST, &path, Some(&p.client), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    assert_eq!(ack["seq"], p.base + 1);
    let (status, again) = app
        .call(Method::POST, &path, Some(&p.client), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["seq"], p.base + 1);
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        advisor.next_message(&p.conversation).await["body"]["text"],
        "via http"
    );
    assert!(
        advisor
            .quiet(&p.conversation, Duration::from_millis(300))
            .await
    );

    let stranger = app.token(Role::Client, "stranger");
    let response = app
        .call(
            Method::POST,
            &path,
            Some(&stranger),
            Some(json!({"client_msg_id": "s", "kind": "text", "body": {"text": "x"}})),
        )
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "not_your_conversation");
    let response = app
        .call(
            Method::POST,
            &path,
            Some(&p.client),
            Some(json!({"client_msg_id": "s", "kind": "text", "body": {}})),
        )
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

async fn sse_resumes_from_last_event_id(app: TestApp) {
    let p = pair(&app, "sse-client", "adv-sse").await;
    let path = format!("/v1/conversations/{}/messages", p.conversation);
    for i in 1..=3 {
        let body = json!({"client_msg_id": format!("a-{i}"), "kind": "text", "body": {"text": format!("m{i}")}});
        app.call(Method::POST, &path, Some(&p.advisor), Some(body))
            .await;
    }
    let mut response = app
        .http
        .get(app.url(&format!("/v1/conversations/{}/events", p.conversation)))
        .bearer_auth(&p.client)
        .header("last-event-id", (p.base + 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut ids = Vec::new();
    let mut buffer = String::new();
    let mut live_sent = false;
    while ids.len() < 3 {
        let chunk = tokio::time::timeout(crate::ws::PATIENCE, response.chunk())
            .await
            .expect("SSE delivers")
            .unwrap()
            .expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(id) = event
                .lines()
                .find_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
            {
                ids.push(id.trim().parse::<i64>().unwrap());
            }
        }
        if ids.len() == 2 && !live_sent {
            live_sent = true;
            let body = json!({"client_msg_id": "a-live", "kind": "text", "body": {"text": "live"}});
            app.call(Method::POST, &path, Some(&p.advisor), Some(body))
                .await;
        }
    }
    assert_eq!(ids, [p.base + 2, p.base + 3, p.base + 4]);
}

on_both_stores!(
    a_client_and_an_advisor_talk_in_real_time,
    a_retried_send_returns_the_original_ack_and_is_delivered_once,
    a_reconnecting_client_gets_every_missed_message_once_in_order,
    concurrent_senders_get_gapless_sequence_numbers_and_everyone_sees_one_order,
    receipts_reach_other_devices_and_participants,
    typing_is_relayed_but_never_stored,
    advisors_see_each_others_presence,
    bad_frames_get_error_frames_and_the_socket_stays_open,
    the_upgrade_refuses_bad_tokens_and_roles,
    http_fallback_sends_with_the_same_idempotency,
    sse_resumes_from_last_event_id,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_above_the_rate_limit_is_refused_then_disconnected() {
    let app = spawn_app_with(Store::Sqlite, |c| {
        c.im.rate_per_sec = 5;
        c.im.rate_burst = 5;
    })
    .await;
    let p = pair(&app, "flooder", "adv-f").await;
    let mut socket = app.ws(&p.client).await;
    for i in 0..200 {
        socket
            .try_send_json(json!({"type": "ping", "id": format!("p{i}")}))
            .await;
    }
    let limited = socket.expect(|f| f["code"] == "rate_limited").await;
    assert!(
        limited["id"].as_str().is_some(),
        "the refused frame is named: {limited}"
    );
    assert_eq!(socket.closed().await, Ended::Closed(Some(4029)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_the_hard_limit_closes_the_socket() {
    let app = spawn_app_with(Store::Sqlite, |_| {}).await;
    let token = app.token(Role::Client, "huge");
    let mut socket = app.ws(&token).await;
    socket
        .send_raw(WsMessage::Text("x".repeat(128 * 1024).into()))
        .await;
    assert!(matches!(
        socket.closed().await,
        Ended::Closed(Some(1009)) | Ended::Dropped
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_loses_nothing() {
    let app = spawn_app_with(Store::Sqlite, |c| c.im.send_queue = 8).await;
    let p = pair(&app, "slow-reader", "adv-fast").await;
    let mut slow = app.ws(&p.client).await;
    // Fill the socket buffers and the queue while the client does not read.
    let conversation: wealthdesk::im::ConversationId = p.conversation.parse().unwrap();
    let advisor = wealthdesk::im::model::Sender {
        id: "adv-fast".into(),
        role: "advisor".into(),
    };
    let text = "x".repeat(3900);
    let mut pending = Vec::new();
    for i in 0..3000 {
        let message = wealthdesk::im::store::NewMessage {
            conversation_id: conversation,
            sender: advisor.clone(),
            kind: "text".into(),
            body: json!({ "text": text }),
            client_msg_id: Some(format!("bulk-{i}")),
        };
        pending.push(app.state.im.committer.enqueue(message).await.unwrap());
    }
    for p in pending {
        p.outcome().await.unwrap();
    }
    assert_eq!(slow.closed().await, Ended::Closed(Some(4008)));
    assert!(
        app.state
            .im
            .hub
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    let mut again = app.ws(&p.client).await;
    let last = p.base + 3000;
    let subscribed = again.subscribe(&p.conversation, Some(last - 10)).await;
    assert_eq!(subscribed["last_seq"], last);
    assert_eq!(
        again.message_seqs(&p.conversation, 10).await,
        (last - 9..=last).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_is_closed_after_the_timeout() {
    let app = spawn_app_with(Store::Sqlite, |c| {
        c.im.heartbeat_secs = 1;
        c.im.idle_timeout_secs = 2;
    })
    .await;
    let token = app.token(Role::Client, "sleepy");
    let mut socket = app.ws(&token).await;
    // Not reading means not answering the server's pings.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(socket.closed().await, Ended::Closed(Some(4000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_ends_when_its_token_expires() {
    let app = spawn_app_with(Store::Sqlite, |_| {}).await;
    let token = app
        .state
        .tokens
        .issue(
            "short-lived",
            Role::Client,
            Duration::from_secs(2),
            None,
            None,
        )
        .unwrap();
    let mut socket = app.ws(&token).await;
    assert_eq!(socket.closed().await, Ended::Closed(Some(4001)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_going_away() {
    let app = spawn_app_with(Store::Sqlite, |_| {}).await;
    let token = app.token(Role::Client, "leaving");
    let mut socket: WsClient = app.ws(&token).await;
    let stop = tokio::spawn(app.stop());
    assert_eq!(socket.closed().await, Ended::Closed(Some(1001)));
    stop.await.unwrap();
}

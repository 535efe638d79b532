//! Human handoff end to end: the queue, atomic claims, the fencing token that keeps the
//! bot silent once a person owns the conversation, hand-back without a loop, SLA
//! escalation, ownership across reconnects and nodes, and every refusal with its code.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wealthdesk::auth::Role;
use wealthdesk::conversation::session;
use wealthdesk::llm::fake::{Behaviour, FakeLlm};

use crate::engine::{Client, client};
use crate::helpers::{Store, TestApp, assert_error, spawn_app_with};
use crate::on_both_stores;
use crate::ws::WsClient;

fn path(conversation: &str, action: &str) -> String {
    format!("/v1/conversations/{conversation}/{action}")
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, path, Some(token), Some(body)).await
}

async fn ask_for_person(app: &TestApp, client: &str, conversation: &str) -> Value {
    let (status, body) = post(app, client, &path(conversation, "handoff"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

async fn state(app: &TestApp, token: &str, conversation: &str) -> Value {
    let (status, body) = app.get(&path(conversation, "handoff"), token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn messages(app: &TestApp, token: &str, conversation: &str) -> Vec<Value> {
    let (status, body) = app
        .get(
            &format!("{}?limit=500", path(conversation, "messages")),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["messages"].as_array().unwrap().clone()
}

/// The handoff events the client was told of, in order (`queued`, `joined`, ...).
fn notices(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["kind"] == "handoff" && m["sender"]["role"] == "system")
        .map(|m| m["body"]["handoff"]["event"].as_str().unwrap().to_string())
        .collect()
}

fn bot_messages(messages: &[Value]) -> Vec<&Value> {
    messages
        .iter()
        .filter(|m| m["sender"]["role"] == "bot")
        .collect()
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}

async fn app_with(store: Store, fake: Option<&FakeLlm>) -> TestApp {
    spawn_app_with(store, |c| {
        crate::engine::with_knowledge(c);
        if let Some(fake) = fake {
            crate::engine::with_llm(c, fake);
        }
    })
    .await
}

/// A reply that takes about two seconds to stream, so a turn is in flight long enough.
fn slow_reply() -> Behaviour {
    Behaviour::Reply {
        chunks: "Bond fund redemptions usually arrive in T+2 business days [1]. The exact date depends on the fund's settlement cycle and on the bank's processing of the redemption request."
            .split_inclusive(' ')
            .map(String::from)
            .collect(),
        first_delay: Duration::from_millis(150),
        per_chunk: Duration::from_millis(70),
        prompt_tokens: 50,
    }
}

/// Sends a text message over the client's socket without waiting for the bot.
async fn send(c: &mut Client, id: &str, text: &str) -> i64 {
    let ack = c
        .socket
        .request(json!({"type": "send", "conversation_id": c.conversation,
            "client_msg_id": id, "kind": "text", "body": {"text": text}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["seq"].as_i64().unwrap()
}

/// Every frame of the conversation the socket receives within `wait`.
async fn frames_for(socket: &mut WsClient, wait: Duration) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(frame) = tokio::time::timeout_at(deadline, socket.expect(|_| true)).await {
        seen.push(frame);
    }
    seen
}

// ---------------------------------------------------------------------------------------
// Claims

on_both_stores!(
    many_advisors_claim_at_once_and_exactly_one_wins,
    refusals_leave_the_state_unchanged,
    the_handoff_button_pressed_repeatedly_queues_once,
);

async fn many_advisors_claim_at_once_and_exactly_one_wins(app: TestApp) {
    let client = app.token(Role::Client, "race-client");
    let conversation = app.start_conversation(&client).await;
    let queued = ask_for_person(&app, &client, &conversation).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    assert_eq!(queued["position"], 1, "{queued}");

    let advisors: Vec<String> = (0..8)
        .map(|i| app.token(Role::Advisor, &format!("racer-{i}")))
        .collect();
    // Every advisor exists (and is online) before the race starts.
    for a in &advisors {
        assert_eq!(app.get("/v1/advisors/me", a).await.0, StatusCode::OK);
    }
    let claims = advisors.iter().map(|a| {
        let path = path(&conversation, "claim");
        let app = &app;
        async move { post(app, a, &path, json!({})).await }
    });
    let results = futures::future::join_all(claims).await;
    let winners: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].0 == StatusCode::OK)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = format!("racer-{}", winners[0]);
    for (i, result) in results.iter().enumerate() {
        if i != winners[0] {
            assert_error(result.clone(), StatusCode::CONFLICT, "already_claimed");
            assert!(
                result.1["message"].as_str().unwrap().contains(&winner),
                "the loser learns who won: {}",
                result.1
            );
        }
    }
    let won = &results[winners[0]].1;
    assert_eq!(won["packet"]["reason"], "client_request", "{won}");
    let now = state(&app, &client, &conversation).await;
    assert_eq!(now["status"], "advisor");
    assert_eq!(now["advisor"]["id"], winner.as_str());
    assert_eq!(
        now["epoch"].as_i64().unwrap(),
        queued["epoch"].as_i64().unwrap() + 1,
        "one change of owner, one epoch"
    );
    // The client was told once that they are queued and once who joined.
    let said = messages(&app, &client, &conversation).await;
    assert_eq!(notices(&said), ["queued", "joined"]);
    let text = metrics(&app).await;
    assert_eq!(
        metric(&text, "wealthdesk_handoff_time_to_claim_seconds_count"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "wealthdesk_handoffs_requested_total{reason=\"client_request\"}"
        ),
        1.0
    );
}

async fn refusals_leave_the_state_unchanged(app: TestApp) {
    let client = app.token(Role::Client, "refused-client");
    let busy = app.token(Role::Advisor, "adv-busy");
    let colleague = app.token(Role::Advisor, "adv-colleague");
    let stranger = app.token(Role::Advisor, "adv-stranger");
    for a in [&busy, &colleague, &stranger] {
        app.get("/v1/advisors/me", a).await;
    }
    let first = app.start_conversation(&client).await;
    let second = app.start_conversation(&client).await;
    let idle = app.start_conversation(&client).await;

    // Claiming a conversation the bot still has.
    assert_error(
        post(&app, &busy, &path(&idle, "claim"), json!({})).await,
        StatusCode::CONFLICT,
        "not_queued",
    );
    // An unknown conversation.
    assert_error(
        post(
            &app,
            &busy,
            &path(&uuid::Uuid::new_v4().to_string(), "claim"),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "conversation_not_found",
    );
    // A client cannot claim.
    assert_error(
        post(&app, &client, &path(&first, "claim"), json!({})).await,
        StatusCode::FORBIDDEN,
        "role_not_allowed",
    );

    ask_for_person(&app, &client, &first).await;
    ask_for_person(&app, &client, &second).await;
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/advisors/me",
            Some(&busy),
            Some(json!({"capacity": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        post(&app, &busy, &path(&first, "claim"), json!({})).await.0,
        StatusCode::OK
    );
    // Over capacity: the second stays queued, untouched.
    let before = state(&app, &client, &second).await;
    assert_error(
        post(&app, &busy, &path(&second, "claim"), json!({})).await,
        StatusCode::CONFLICT,
        "over_capacity",
    );
    assert_eq!(state(&app, &client, &second).await, before);
    // Claiming one's own conversation again.
    assert_error(
        post(&app, &busy, &path(&first, "claim"), json!({})).await,
        StatusCode::CONFLICT,
        "already_claimed",
    );

    // An advisor who never had the conversation cannot speak in it.
    assert_error(
        post(
            &app,
            &stranger,
            &path(&first, "messages"),
            json!({"client_msg_id": "x1", "kind": "text", "body": {"text": "hi"}}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_a_participant",
    );
    // Transfer, return and close belong to the owner too.
    assert_error(
        post(&app, &stranger, &path(&first, "return"), json!({})).await,
        StatusCode::FORBIDDEN,
        "not_owner",
    );

    // Transfers to an offline colleague, to nobody, with a bad disposition.
    let owned = state(&app, &client, &first).await;
    app.call(
        Method::PUT,
        "/v1/advisors/me",
        Some(&colleague),
        Some(json!({"status": "offline"})),
    )
    .await;
    assert_error(
        post(
            &app,
            &busy,
            &path(&first, "transfer"),
            json!({"to": "adv-colleague", "note": "wants a bond specialist"}),
        )
        .await,
        StatusCode::CONFLICT,
        "advisor_unavailable",
    );
    assert_error(
        post(
            &app,
            &busy,
            &path(&first, "transfer"),
            json!({"to": "adv-nobody"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "advisor_not_found",
    );
    assert_error(
        post(
            &app,
            &busy,
            &path(&first, "close"),
            json!({"disposition": "vanished"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(state(&app, &client, &first).await, owned);

    // An advisor who is away cannot claim.
    app.call(
        Method::PUT,
        "/v1/advisors/me",
        Some(&stranger),
        Some(json!({"status": "away"})),
    )
    .await;
    assert_error(
        post(&app, &stranger, &path(&second, "claim"), json!({})).await,
        StatusCode::CONFLICT,
        "advisor_unavailable",
    );

    // A transfer to an online colleague moves ownership; the note reaches them in the
    // packet, never the client.
    app.call(
        Method::PUT,
        "/v1/advisors/me",
        Some(&colleague),
        Some(json!({"status": "online"})),
    )
    .await;
    let (status, moved) = post(
        &app,
        &busy,
        &path(&first, "transfer"),
        json!({"to": "adv-colleague", "note": "wants a bond specialist"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["advisor"]["id"], "adv-colleague");
    assert!(moved["epoch"].as_i64() > owned["epoch"].as_i64());
    // The former owner no longer speaks in it: REST and WebSocket.
    assert_error(
        post(
            &app,
            &busy,
            &path(&first, "messages"),
            json!({"client_msg_id": "x1", "kind": "text", "body": {"text": "hi"}}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_owner",
    );
    let mut socket = app.ws(&busy).await;
    let refused = socket
        .request(
            json!({"type": "send", "conversation_id": first, "client_msg_id": "x2",
            "kind": "text", "body": {"text": "hi"}}),
        )
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "not_owner", "{refused}");
    let (status, packet) = app.get(&path(&first, "packet"), &colleague).await;
    assert_eq!(status, StatusCode::OK, "{packet}");
    assert!(
        packet.to_string().contains("wants a bond specialist"),
        "{packet}"
    );
    let said = messages(&app, &client, &first).await;
    assert!(
        !said
            .iter()
            .any(|m| m.to_string().contains("bond specialist"))
    );

    // Closed with a disposition: nobody can claim it or ask again.
    let (status, closed) = post(
        &app,
        &colleague,
        &path(&first, "close"),
        json!({"disposition": "resolved", "note": "explained T+2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["status"], "closed");
    assert_error(
        post(&app, &colleague, &path(&first, "claim"), json!({})).await,
        StatusCode::CONFLICT,
        "conversation_closed",
    );
    assert_error(
        post(&app, &client, &path(&first, "handoff"), json!({})).await,
        StatusCode::CONFLICT,
        "conversation_closed",
    );
    assert_eq!(
        notices(&messages(&app, &client, &first).await),
        ["queued", "joined", "transferred", "closed"]
    );
}

async fn the_handoff_button_pressed_repeatedly_queues_once(app: TestApp) {
    let client = app.token(Role::Client, "impatient");
    let conversation = app.start_conversation(&client).await;
    let presses = (0..6).map(|_| {
        let path = path(&conversation, "handoff");
        let (app, client) = (&app, &client);
        async move { post(app, client, &path, json!({})).await }
    });
    let results = futures::future::join_all(presses).await;
    let accepted = results
        .iter()
        .filter(|r| r.0 == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 1, "{results:?}");
    for r in results.iter().filter(|r| r.0 != StatusCode::ACCEPTED) {
        assert_error(r.clone(), StatusCode::CONFLICT, "handoff_pending");
    }
    let now = state(&app, &client, &conversation).await;
    assert_eq!(
        (now["status"].as_str(), now["epoch"].as_i64()),
        (Some("queued"), Some(1))
    );
    assert_eq!(
        notices(&messages(&app, &client, &conversation).await),
        ["queued"]
    );
    let (_, queue) = app
        .get("/v1/handoff/queue", &app.token(Role::Advisor, "watcher"))
        .await;
    assert_eq!(queue["entries"].as_array().unwrap().len(), 1, "{queue}");
    assert_eq!(
        metric(&metrics(&app).await, "wealthdesk_handoff_queue_length"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_note_reaches_the_advisors_packet() {
    let app = spawn_app_with(Store::Sqlite, |_| {}).await;
    let client = app.token(Role::Client, "with-a-note");
    let conversation = app.start_conversation(&client).await;
    let handoff = path(&conversation, "handoff");
    let long = json!({ "note": "长".repeat(501) });
    let refused = post(&app, &client, &handoff, long).await;
    assert_error(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(state(&app, &client, &conversation).await["status"], "bot");

    let note = json!({ "note": "  About my pension fund redemption  " });
    let (status, body) = post(&app, &client, &handoff, note).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let advisor = app.token(Role::Advisor, "note-reader");
    let (status, body) = post(&app, &advisor, &path(&conversation, "claim"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, packet) = app.get(&path(&conversation, "packet"), &advisor).await;
    assert_eq!(status, StatusCode::OK, "{packet}");
    let notes = packet["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{packet}");
    assert_eq!(notes[0]["text"], "About my pension fund redemption");
    assert_eq!(notes[0]["from"], "with-a-note");
}

// ---------------------------------------------------------------------------------------
// The bot after a handoff

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_reply_in_flight_is_withheld_when_the_client_presses_the_button() {
    for store in [Store::Sqlite, Store::Postgres] {
        let fake = FakeLlm::start().await;
        fake.set_default(slow_reply());
        let app = app_with(store, Some(&fake)).await;
        let mut en = client(&app, "button-mid-stream", "en").await;
        let seq = send(&mut en, "q1", "When does a bond fund redemption arrive?").await;
        // The bot is writing: its first words are on the client's screen.
        en.socket
            .expect(|f| f["type"] == "stream" && f["reset"] == false)
            .await;
        ask_for_person(&app, &en.token, &en.conversation).await;
        let after = frames_for(&mut en.socket, Duration::from_secs(4)).await;

        let bot_said: Vec<&Value> = after
            .iter()
            .filter(|f| f["type"] == "message" && f["message"]["sender"]["role"] == "bot")
            .collect();
        assert!(
            bot_said.is_empty(),
            "the bot spoke after the handoff: {bot_said:?}"
        );
        assert!(
            after
                .iter()
                .any(|f| f["type"] == "stream" && f["reset"] == true),
            "the streamed draft is withdrawn: {after:?}"
        );
        let stored = messages(&app, &en.token, &en.conversation).await;
        assert!(bot_messages(&stored).is_empty(), "{stored:?}");
        assert_eq!(notices(&stored), ["queued"]);
        let records = session::turns(app.db(), en.id()).await.unwrap();
        let fenced = records
            .iter()
            .find(|r| r.1 == "bot.fenced")
            .expect("a bot.fenced record");
        assert_eq!(fenced.0, seq);
        assert!(
            fenced.2["withheld"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("T+2")),
            "what the bot would have said stays in the record: {}",
            fenced.2
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_for_a_person_mid_answer_hands_over_before_the_bot_finishes() {
    let fake = FakeLlm::start().await;
    fake.set_default(slow_reply());
    let app = app_with(Store::Sqlite, Some(&fake)).await;
    let mut zh = client(&app, "typed-zh", "zh-CN").await;
    send(&mut zh, "q1", "债券基金赎回多久到账？").await;
    fake.wait_for_requests(1).await;
    send(&mut zh, "q2", "转人工").await;
    let after = frames_for(&mut zh.socket, Duration::from_secs(4)).await;
    assert!(
        !after
            .iter()
            .any(|f| f["type"] == "message" && f["message"]["sender"]["role"] == "bot"),
        "{after:?}"
    );
    let now = state(&app, &zh.token, &zh.conversation).await;
    assert_eq!(now["status"], "queued", "{now}");
    assert_eq!(now["reason"], "client_request", "{now}");
    let stored = messages(&app, &zh.token, &zh.conversation).await;
    let queued = stored
        .iter()
        .find(|m| m["sender"]["role"] == "system")
        .unwrap();
    assert!(
        queued["body"]["text"].as_str().unwrap().contains("队列"),
        "the client is told in their language: {queued}"
    );
    // The model was asked nothing more than to summarise for the advisor.
    let requests = fake.requests();
    for later in &requests[1..] {
        assert!(
            later.to_string().contains("这段对话将转交人工投资顾问处理"),
            "{later}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hand_back_the_bot_answers_with_context_and_does_not_hand_over_again() {
    let app = app_with(Store::Postgres, None).await;
    let mut en = client(&app, "returned", "en").await;
    send(&mut en, "m-human", "I want to talk to a human").await;
    let queued = en
        .socket
        .expect(|f| f["type"] == "message" && f["message"]["sender"]["role"] == "system")
        .await;
    assert_eq!(
        queued["message"]["body"]["handoff"]["event"], "queued",
        "{queued}"
    );

    let advisor = app.token(Role::Advisor, "adv-return");
    let (status, body) = post(&app, &advisor, &path(&en.conversation, "claim"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut desk = app.ws(&advisor).await;
    desk.subscribe(&en.conversation, None).await;
    let ack = desk
        .send_text(&en.conversation, "a1", "The redemption is on its way.")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let before_return = ack["seq"].as_i64().unwrap();
    let (status, back) = post(
        &app,
        &advisor,
        &path(&en.conversation, "return"),
        json!({"note": "answered the redemption question"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["status"], "bot");

    // The bot does not pick up the old request for a person on its own.
    let meanwhile = frames_for(&mut en.socket, Duration::from_secs(1)).await;
    assert!(
        !meanwhile.iter().any(|f| f["type"] == "message"
            && f["message"]["sender"]["role"] == "bot"
            && f["message"]["seq"].as_i64() > Some(before_return)),
        "{meanwhile:?}"
    );
    let turn = en.say("What is a money market fund?").await;
    let reply = turn.replies.last().unwrap();
    assert_ne!(reply["kind"], "handoff", "{reply}");
    assert_eq!(
        state(&app, &en.token, &en.conversation).await["status"],
        "bot"
    );
    assert_eq!(
        notices(&messages(&app, &en.token, &en.conversation).await),
        ["queued", "joined", "returned"]
    );
    // The advisor may no longer speak in it.
    let refused = desk
        .request(
            json!({"type": "send", "conversation_id": en.conversation, "client_msg_id": "a2",
            "kind": "text", "body": {"text": "one more thing"}}),
        )
        .await;
    assert_eq!(refused["code"], "not_owner", "{refused}");
}

// ---------------------------------------------------------------------------------------
// SLA, reconnects, nodes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclaimed_handoff_escalates_when_its_sla_passes() {
    let app = spawn_app_with(Store::Sqlite, |c| c.handoff.sla_normal_secs = 1).await;
    let watcher = app.token(Role::Advisor, "adv-watch");
    app.call(
        Method::PUT,
        "/v1/advisors/me",
        Some(&watcher),
        Some(json!({"languages": ["en"]})),
    )
    .await;
    let mut desk = app.ws(&watcher).await;
    let client = app.token(Role::Client, "waiting");
    let conversation = app.start_conversation(&client).await;
    ask_for_person(&app, &client, &conversation).await;
    desk.expect(|f| f["type"] == "queue" && f["event"] == "queued")
        .await;
    // Routed by language: an advisor without Chinese cannot take it yet.
    assert_error(
        post(&app, &watcher, &path(&conversation, "claim"), json!({})).await,
        StatusCode::FORBIDDEN,
        "not_eligible",
    );
    desk.expect(|f| f["type"] == "queue" && f["event"] == "escalated")
        .await;
    let now = state(&app, &client, &conversation).await;
    assert_eq!(now["escalated"], true, "{now}");
    assert_eq!(
        notices(&messages(&app, &client, &conversation).await),
        ["queued", "escalated"]
    );
    assert_eq!(
        metric(
            &metrics(&app).await,
            "wealthdesk_handoff_sla_breaches_total"
        ),
        1.0
    );
    // Escalated handoffs open to every advisor.
    assert_eq!(
        post(&app, &watcher, &path(&conversation, "claim"), json!({}))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_who_drops_and_reconnects_still_owns_the_conversation() {
    let app = spawn_app_with(Store::Sqlite, |_| {}).await;
    let client = app.token(Role::Client, "steady-client");
    let advisor = app.token(Role::Advisor, "adv-flaky");
    let conversation = app.start_conversation(&client).await;
    app.join(&advisor, &client, &conversation).await;
    let mut desk = app.ws(&advisor).await;
    desk.subscribe(&conversation, None).await;
    desk.send_text(&conversation, "a1", "Let me check that for you.")
        .await;
    drop(desk);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut on_client = app.ws(&client).await;
    on_client.subscribe(&conversation, None).await;
    let mut desk = app.ws(&advisor).await;
    let synced = desk.subscribe(&conversation, Some(0)).await;
    assert_eq!(synced["type"], "subscribed", "{synced}");
    let (_, mine) = app.get("/v1/advisors/me/conversations", &advisor).await;
    assert_eq!(
        mine["conversations"][0]["conversation"]["id"],
        conversation.as_str()
    );
    assert_eq!(
        state(&app, &client, &conversation).await["advisor"]["id"],
        "adv-flaky"
    );
    let ack = desk
        .send_text(&conversation, "a2", "It arrives on Thursday.")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = on_client
        .expect(|f| f["type"] == "message" && f["message"]["client_msg_id"] == "a2")
        .await;
    assert_eq!(got["message"]["body"]["text"], "It arrives on Thursday.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_one_node_reaches_an_advisor_on_another() {
    let (a, b, _db, _dir) = crate::scale::two_nodes(crate::scale::SHARED_NATS).await;
    let client = a.token(Role::Client, "node-a-client");
    let advisor = b.token(Role::Advisor, "node-b-advisor");
    b.get("/v1/advisors/me", &advisor).await;
    let mut desk = b.ws(&advisor).await;
    let conversation = a.start_conversation(&client).await;
    let mut phone = a.ws(&client).await;
    phone.subscribe(&conversation, None).await;

    ask_for_person(&a, &client, &conversation).await;
    let queued = desk
        .expect(|f| f["type"] == "queue" && f["conversation_id"] == conversation.as_str())
        .await;
    assert_eq!(queued["event"], "queued", "{queued}");
    let (status, claimed) = post(&b, &advisor, &path(&conversation, "claim"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    desk.subscribe(&conversation, None).await;
    desk.send_text(&conversation, "hello-1", "Hello, I am your advisor.")
        .await;
    let joined = phone
        .expect(|f| {
            f["type"] == "message"
                && f["message"]["kind"] == "handoff"
                && f["message"]["body"]["handoff"]["event"] == "joined"
        })
        .await;
    assert_eq!(
        joined["message"]["body"]["handoff"]["advisor"]["id"],
        "node-b-advisor"
    );
    let hello = phone
        .expect(|f| f["type"] == "message" && f["message"]["client_msg_id"] == "hello-1")
        .await;
    assert_eq!(hello["message"]["sender"]["role"], "advisor");
    // Ownership is one fact for both nodes.
    assert_eq!(state(&a, &client, &conversation).await["status"], "advisor");
}

// ---------------------------------------------------------------------------------------
// Triggers

/// The reason and priority of the handoff the client's message started.
async fn handed_over(app: &TestApp, c: &mut Client) -> Value {
    c.socket
        .expect(|f| {
            f["type"] == "message"
                && f["message"]["sender"]["role"] == "system"
                && f["message"]["body"]["handoff"]["event"] == "queued"
        })
        .await;
    state(app, &c.token, &c.conversation).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_jumps_the_queue_ahead_of_an_earlier_request() {
    let app = app_with(Store::Sqlite, None).await;
    let mut patient = client(&app, "patient", "en").await;
    send(&mut patient, "m1", "Can I speak to a person please?").await;
    let first = handed_over(&app, &mut patient).await;
    assert_eq!(
        (first["reason"].as_str(), first["priority"].as_str()),
        (Some("client_request"), Some("normal"))
    );
    let mut angry = client(&app, "angry", "zh-CN").await;
    send(&mut angry, "m1", "你们误导销售，我要投诉！").await;
    let second = handed_over(&app, &mut angry).await;
    assert_eq!(
        (second["reason"].as_str(), second["priority"].as_str()),
        (Some("IN-HUMAN-COMPLAINT"), Some("urgent"))
    );
    assert_eq!(second["position"], 1, "{second}");
    assert_eq!(
        state(&app, &patient.token, &patient.conversation).await["position"],
        2
    );
    let (_, queue) = app
        .get("/v1/handoff/queue", &app.token(Role::Advisor, "adv-q"))
        .await;
    let order: Vec<&str> = queue["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["angry", "patient"], "{queue}");
    assert_eq!(queue["entries"][0]["reason_label"], "客户投诉");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_hands_over_at_once_when_the_model_is_down() {
    let fake = FakeLlm::start().await;
    fake.set_default(Behaviour::Status {
        code: 503,
        message: "overloaded".into(),
        retry_after: None,
    });
    let app = app_with(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "unlucky", "en").await;
    let turn = en.say("When does a bond fund redemption arrive?").await;
    assert!(
        turn.replies.iter().any(|r| r["kind"] == "handoff"),
        "{:?}",
        turn.replies
    );
    let now = state(&app, &en.token, &en.conversation).await;
    assert_eq!(now["reason"], "llm_unavailable", "{now}");
    assert_eq!(now["status"], "queued", "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replies_in_a_row_that_cannot_answer_hand_over() {
    let app = app_with(Store::Sqlite, None).await;
    let mut en = client(&app, "puzzling", "en").await;
    let first = en.say("Zorblax quixotic wyvern?").await;
    assert!(
        first.replies.iter().all(|r| r["kind"] != "handoff"),
        "{:?}",
        first.replies
    );
    assert_eq!(
        state(&app, &en.token, &en.conversation).await["status"],
        "bot"
    );
    en.say("Frobnicate the glimmering xylophone?").await;
    let now = state(&app, &en.token, &en.conversation).await;
    assert_eq!(now["status"], "queued", "{now}");
    assert_eq!(now["reason"], "bot_failed", "{now}");
}

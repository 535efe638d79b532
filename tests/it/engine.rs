//! The conversation engine end to end: offline answers grounded in the demo knowledge
//! base, LLM replies streamed over the WebSocket from a real OpenAI-compatible server
//! (the in-repo fake), and everything that goes wrong with one — stalls, 5xx, 429s,
//! garbage, malformed and empty streams — ending in an honest apology, never a hang or
//! a half-stored reply.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wealthdesk::auth::Role;
use wealthdesk::config::{Config, Secret};
use wealthdesk::conversation::session;
use wealthdesk::im::ConversationId;
use wealthdesk::llm::fake::{Behaviour, FakeLlm};

use crate::helpers::{Store, TestApp, spawn_app_with, spawn_configured, test_config};
use crate::ws::{PATIENCE, WsClient};

pub(crate) fn shipped(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
}

/// The demo knowledge base ingested at start (BM25: the test config has no model).
pub(crate) fn with_knowledge(config: &mut Config) {
    config.knowledge.dir = shipped("knowledge");
    config.knowledge.ingest_on_start = true;
    config.questionnaire.dir = shipped("knowledge/questionnaires");
    config.bot.prompts_dir = shipped("prompts");
}

/// Points the bot at `fake`, with deadlines short enough for tests.
pub(crate) fn with_llm(config: &mut Config, fake: &FakeLlm) {
    config.llm.base_url = Some(fake.base_url());
    config.llm.api_key = Some(Secret::new("test-key"));
    config.llm.model = "fake-model".into();
    config.llm.first_token_timeout_ms = 400;
    config.llm.total_timeout_ms = 2_500;
    config.llm.max_retries = 2;
    config.llm.retry_backoff_ms = 20;
    config.llm.breaker_failures = 1_000;
}

async fn bot_app(store: Store, fake: Option<&FakeLlm>) -> TestApp {
    spawn_app_with(store, |c| {
        with_knowledge(c);
        if let Some(fake) = fake {
            with_llm(c, fake);
        }
    })
    .await
}

/// A client talking to the bot over the WebSocket.
pub(crate) struct Client {
    pub(crate) socket: WsClient,
    pub(crate) conversation: String,
    pub(crate) token: String,
    id: String,
    sent: u32,
}

/// What one message brought back: the stream frames seen before the reply, and the
/// bot's replies.
pub(crate) struct Turn {
    pub(crate) stream: Vec<Value>,
    pub(crate) replies: Vec<Value>,
    seq: i64,
}

impl Turn {
    fn reply(&self) -> &Value {
        self.replies.last().expect("a reply")
    }

    fn text(&self) -> &str {
        self.reply()["body"]["text"].as_str().unwrap_or_default()
    }

    /// The bot's first reply of the turn (its apology when a handoff follows).
    fn first_text(&self) -> &str {
        self.replies.first().expect("a reply")["body"]["text"]
            .as_str()
            .unwrap_or_default()
    }

    /// The reason of the handoff this turn ended with, if it did.
    fn handoff_reason(&self) -> Option<&str> {
        self.replies
            .iter()
            .find(|r| r["kind"] == "handoff")
            .and_then(|r| r["body"]["handoff"]["reason"].as_str())
    }
}

pub(crate) async fn client(app: &TestApp, id: &str, language: &str) -> Client {
    let token = app.token(Role::Client, id);
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/conversations",
            Some(&token),
            Some(json!({ "language": language })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let conversation = body["id"].as_str().unwrap().to_string();
    let mut socket = app.ws(&token).await;
    socket.subscribe(&conversation, None).await;
    Client {
        socket,
        conversation,
        token,
        id: id.into(),
        sent: 0,
    }
}

impl Client {
    pub(crate) async fn say(&mut self, text: &str) -> Turn {
        self.sent += 1;
        let ack = self
            .socket
            .request(json!({"type": "send", "conversation_id": self.conversation,
                "client_msg_id": format!("m{}", self.sent), "kind": "text", "body": {"text": text}}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let seq = ack["seq"].as_i64().unwrap();
        let replies = self
            .socket
            .bot_replies(seq, Duration::from_millis(300), |_| false)
            .await;
        let stream_id = format!("bot:{seq}:0");
        let mut stream = Vec::new();
        while let Ok(frame) = tokio::time::timeout(
            Duration::from_millis(1),
            self.socket
                .expect(|f| f["type"] == "stream" && f["stream_id"] == stream_id.as_str()),
        )
        .await
        {
            stream.push(frame);
        }
        self.socket.forget(|f| f["type"] == "stream");
        Turn {
            stream,
            replies,
            seq,
        }
    }

    pub(crate) fn id(&self) -> ConversationId {
        self.conversation.parse().unwrap()
    }

    /// Answers the questionnaire with the second option throughout (a cautious client).
    async fn assess(&mut self) -> Value {
        let mut turn = self.say("assessment please").await;
        while turn.reply()["kind"] == "question" {
            turn = self.say("B").await;
        }
        assert_eq!(turn.reply()["kind"], "assessment", "{}", turn.reply());
        turn.reply().clone()
    }
}

async fn turn_records(app: &TestApp, id: ConversationId) -> Vec<(i64, String, Value)> {
    session::turns(app.db(), id).await.unwrap()
}

fn doc_ids(reply: &Value) -> Vec<String> {
    reply["body"]["citations"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|c| c["doc_id"].as_str().unwrap().to_string())
        .collect()
}

async fn offline_answers_quote_and_cite_the_demo_knowledge(store: Store) {
    let app = bot_app(store, None).await;
    let mut zh = client(&app, "offline-zh", "zh-CN").await;
    let hello = zh.say("你好").await;
    assert_eq!(hello.reply()["kind"], "greeting");
    assert_eq!(hello.reply()["body"]["mode"], "offline");
    assert!(hello.text().contains("离线模式"), "{}", hello.text());

    let turn = zh.say("赎回费怎么收？").await;
    let reply = turn.reply();
    assert_eq!(reply["kind"], "answer", "{reply}");
    assert_eq!(reply["body"]["mode"], "offline");
    assert!(
        doc_ids(reply).contains(&"FAQ-REDEMPTION".to_string()),
        "{reply}"
    );
    assert!(
        turn.text().contains("赎回费") && turn.text().contains("[1]"),
        "{}",
        turn.text()
    );
    // Every quoted sentence is in the cited document, word for word.
    let faq = std::fs::read_to_string(shipped("knowledge/faq/faq-redemption.md")).unwrap();
    let quoted = turn.text().lines().next().unwrap();
    let quoted = quoted.trim_end_matches(" [1]").trim_start_matches("- ");
    assert!(faq.contains(quoted), "{quoted:?} is not in FAQ-REDEMPTION");
    assert!(turn.stream.is_empty(), "offline replies are not streamed");

    let mut en = client(&app, "offline-en", "en").await;
    let turn = en
        .say("When does the money from a bond fund redemption arrive?")
        .await;
    assert_eq!(turn.reply()["kind"], "answer", "{}", turn.reply());
    assert!(
        doc_ids(turn.reply()).iter().any(|d| d == "FAQ-REDEMPTION"),
        "{} {:?}",
        turn.reply(),
        turn_records(&app, en.id())
            .await
            .last()
            .map(|r| r.2["retrieval"]["hits"].clone())
    );
    // Off topic: refused by the input rails before retrieval.
    let turn = en.say("What is the weather like in Paris tomorrow?").await;
    assert_eq!(turn.reply()["kind"], "refusal", "{}", turn.reply());
    assert_eq!(turn.reply()["body"]["guardrail"], "IN-SCOPE-OFFTOPIC");
    // On topic but not in the materials: said so, with an advisor offered.
    let turn = en
        .say("Can I pay my phone bill with bitcoin through you?")
        .await;
    assert_eq!(
        turn.reply()["body"]["offer_human_advisor"],
        true,
        "{}",
        turn.reply()
    );
    assert!(turn.text().contains("could not find"), "{}", turn.text());
    assert!(doc_ids(turn.reply()).is_empty());

    // Recommendations come only after an assessment, and only within its level.
    let done = en.assess().await;
    let max = done["body"]["profile"]["max_product"]
        .as_str()
        .unwrap()
        .to_string();
    let turn = en.say("Can you recommend some funds for me?").await;
    let reply = turn.reply();
    assert_eq!(reply["kind"], "recommendation", "{reply}");
    let products = reply["body"]["products"].as_array().unwrap();
    assert!(!products.is_empty() && products.len() <= 3, "{reply}");
    for p in products {
        let level = p["risk_level"].as_str().unwrap();
        assert!(level <= max.as_str(), "{level} above {max}: {reply}");
        assert!(
            turn.text().contains(p["id"].as_str().unwrap()),
            "{}",
            turn.text()
        );
    }
    assert_eq!(doc_ids(reply).len(), products.len());
    assert!(
        turn.text()
            .contains("past performance does not predict future returns")
    );
    assert_eq!(reply["body"]["disclosures"][0], "risk_warning");

    // Every turn is on record, with what it retrieved and why.
    let records = turn_records(&app, en.id()).await;
    let answer = records
        .iter()
        .find(|r| r.1 == "answer")
        .expect("an answer turn");
    assert_eq!(answer.2["writer"], "offline");
    assert!(!answer.2["retrieval"]["hits"].as_array().unwrap().is_empty());
    assert_eq!(
        answer.2["retrieval"]["filter"]["kinds"][0], "faq",
        "no profile: FAQs only"
    );
    let hit = &answer.2["retrieval"]["hits"][0];
    assert!(
        hit["chunk_id"].is_string() && hit["version_hash"].is_string() && hit["score"].is_number()
    );
    let recommendation = records.iter().find(|r| r.1 == "recommendation").unwrap();
    assert!(recommendation.2["retrieval"]["filter"]["max_risk_rank"].is_number());
    let (state, _) = session::state(app.db(), en.id()).await.unwrap();
    assert_eq!(state, session::BotState::Advisory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_answers_quote_and_cite_the_demo_knowledge_on_sqlite() {
    offline_answers_quote_and_cite_the_demo_knowledge(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_answers_quote_and_cite_the_demo_knowledge_on_postgres() {
    offline_answers_quote_and_cite_the_demo_knowledge(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_replies_stream_to_the_socket_and_are_stored_once() {
    let fake = FakeLlm::start().await;
    let answer = "Bond funds usually pay out redemptions in T+2 to T+3 days [1]. Holidays add time. Money market funds are quicker [1].";
    fake.set_default(Behaviour::Reply {
        chunks: answer.split_inclusive(' ').map(str::to_string).collect(),
        first_delay: Duration::from_millis(50),
        per_chunk: Duration::from_millis(15),
        prompt_tokens: 321,
    });
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "streamed", "en").await;
    let hello = en.say("hello").await;
    assert_eq!(hello.reply()["body"]["mode"], "llm");
    let turn = en.say("How long does a bond fund redemption take?").await;
    let reply = turn.reply();
    assert_eq!(reply["kind"], "answer", "{reply}");
    assert_eq!(reply["body"]["text"], answer);
    assert_eq!(reply["body"]["mode"], "llm");
    assert_eq!(turn.replies.len(), 1);
    // The text arrived in pieces first, in order, then whole.
    assert!(turn.stream.len() >= 2, "{:?}", turn.stream);
    let streamed: String = turn
        .stream
        .iter()
        .map(|f| f["delta"].as_str().unwrap())
        .collect();
    assert!(
        answer.starts_with(&streamed) && !streamed.is_empty(),
        "{streamed:?}"
    );
    let indices: Vec<u64> = turn
        .stream
        .iter()
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
    let cited = doc_ids(reply);
    assert_eq!(cited.len(), 1, "only [1] is cited: {reply}");

    // What the model was sent: the system prompt, the question, the numbered sources.
    let request = fake.requests().last().unwrap().clone();
    assert_eq!(request["model"], "fake-model");
    assert_eq!(request["stream"], true);
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    let user = messages.last().unwrap()["content"].as_str().unwrap();
    assert!(
        user.contains("How long does a bond fund redemption take?") && user.contains("[1] "),
        "{user}"
    );

    // Stored once, with the whole turn on record.
    let (_, page) = app
        .get(
            &format!("/v1/conversations/{}/messages", en.conversation),
            &app.token(Role::Client, "streamed"),
        )
        .await;
    let bot_for_turn: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["client_msg_id"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("bot:{}:", turn.seq)))
        })
        .collect();
    assert_eq!(bot_for_turn.len(), 1);
    let records = turn_records(&app, en.id()).await;
    let record = &records.iter().find(|r| r.1 == "answer").unwrap().2;
    assert!(
        record["llm"]["prompts"]["system"]["id"]
            .as_str()
            .unwrap()
            .starts_with("system.en@v")
    );
    assert_eq!(
        record["llm"]["prompts"]["user"]["hash"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(record["llm"]["model"], "fake-model");
    assert_eq!(record["llm"]["usage"]["prompt_tokens"], 321);
    assert_eq!(record["llm"]["usage"]["reported"], true);
    assert!(record["llm"]["first_token_ms"].as_f64().unwrap() >= 50.0);
    assert!(record["latency_ms"]["retrieval"].is_number());
    assert_eq!(record["output"], answer);
    let usage = session::usage(app.db(), en.id()).await.unwrap();
    assert!(
        usage.prompt_tokens >= 321 && usage.cost_micros > 0,
        "{usage:?}"
    );

    // Staff read the turns with their totals; the client does not.
    let path = format!("/v1/conversations/{}/turns", en.conversation);
    let (status, turns) = app
        .get(&path, &app.token(Role::Compliance, "officer"))
        .await;
    assert_eq!(status, StatusCode::OK, "{turns}");
    assert_eq!(turns["usage"]["prompt_tokens"], usage.prompt_tokens);
    assert_eq!(turns["state"], "advisory");
    assert!(
        turns["turns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"] == "answer" && t["prompt_tokens"] == 321)
    );
    crate::helpers::assert_error(
        app.get(&path, &app.token(Role::Client, "streamed")).await,
        StatusCode::FORBIDDEN,
        "role_not_allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_model_gets_an_apology_and_an_advisor_offer_within_the_deadline() {
    let fake = FakeLlm::start().await;
    fake.set_default(Behaviour::Stall);
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "stalled", "en").await;
    let started = Instant::now();
    let turn = en.say("How long does a bond fund redemption take?").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2_500 + 1_500),
        "the apology took {took:?}"
    );
    // A model that does not answer is down: an apology, and a person at once.
    let apology = &turn.replies[0];
    assert_eq!(apology["body"]["offer_human_advisor"], true, "{apology}");
    assert!(
        turn.first_text().contains("advisor") && turn.first_text().contains("Sorry"),
        "{}",
        turn.first_text()
    );
    assert!(doc_ids(apology).is_empty());
    assert_eq!(
        turn.handoff_reason(),
        Some("llm_unavailable"),
        "{:?}",
        turn.replies
    );
    let records = turn_records(&app, en.id()).await;
    let failed = records
        .iter()
        .find(|r| r.1 == "answer.unavailable")
        .expect("recorded");
    assert_eq!(
        failed.2["llm"]["failure"]["failure"]["kind"], "first_token_timeout",
        "{}",
        failed.2
    );
    assert_eq!(fake.request_count(), 3, "the first attempt and two retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_retried_and_the_answer_still_arrives() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Status {
        code: 503,
        message: "overloaded".into(),
        retry_after: None,
    });
    fake.set_default(Behaviour::text(
        "Redemptions of bond funds settle in T+2 [1].",
    ));
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "retried", "en").await;
    let turn = en.say("When does a bond fund redemption arrive?").await;
    assert_eq!(turn.text(), "Redemptions of bond funds settle in T+2 [1].");
    assert_eq!(fake.request_count(), 2);
    let records = turn_records(&app, en.id()).await;
    assert_eq!(
        records.iter().find(|r| r.1 == "answer").unwrap().2["llm"]["attempts"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_are_withdrawn_and_never_stored() {
    let fake = FakeLlm::start().await;
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "broken", "en").await;

    // A stream that breaks mid-reply: what it showed is withdrawn, the retry's text stands.
    fake.push(Behaviour::Malformed {
        good: vec![
            "Half an ".into(),
            "answer that ".into(),
            "goes on and on ".into(),
        ],
    });
    fake.push(Behaviour::text("Bond funds pay out in T+2 [1]."));
    let turn = en.say("How long does a bond fund redemption take?").await;
    assert_eq!(turn.text(), "Bond funds pay out in T+2 [1].");
    assert!(
        turn.stream.iter().any(|f| f["reset"] == true),
        "{:?}",
        turn.stream
    );
    let after_reset: Vec<&Value> = turn
        .stream
        .iter()
        .skip_while(|f| f["reset"] != true)
        .skip(1)
        .collect();
    assert!(
        after_reset.iter().all(|f| f["attempt"] == 2),
        "{:?}",
        turn.stream
    );

    // Garbage every time: an apology, nothing of the garbage stored. The model is up,
    // it answered badly: one miss, the bot keeps the conversation.
    fake.set_default(Behaviour::Garbage);
    let turn = en.say("What does a bond fund cost?").await;
    assert!(turn.text().starts_with("Sorry"), "{}", turn.text());
    assert!(!turn.text().contains("oops"));
    assert_eq!(turn.handoff_reason(), None, "{:?}", turn.replies);

    // Empty completions are not a reply either; a second miss in a row hands over.
    fake.set_default(Behaviour::Empty);
    let turn = en.say("What is the redemption fee of a bond fund?").await;
    assert!(
        turn.first_text().starts_with("Sorry"),
        "{}",
        turn.first_text()
    );
    assert_eq!(
        turn.handoff_reason(),
        Some("bot_failed"),
        "{:?}",
        turn.replies
    );
    let records = turn_records(&app, en.id()).await;
    let failures: Vec<&Value> = records
        .iter()
        .filter(|r| r.1 == "answer.unavailable")
        .map(|r| &r.2["llm"]["failure"]["failure"])
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(
        failures[1]["message"]
            .as_str()
            .unwrap()
            .contains("empty completion"),
        "{failures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_is_honoured_when_it_fits_and_declined_when_not() {
    let fake = FakeLlm::start().await;
    fake.push(Behaviour::Status {
        code: 429,
        message: "slow down".into(),
        retry_after: Some(1),
    });
    fake.set_default(Behaviour::text("Bond funds pay out in T+2 [1]."));
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "limited", "en").await;
    let started = Instant::now();
    let turn = en.say("How long does a bond fund redemption take?").await;
    assert_eq!(turn.text(), "Bond funds pay out in T+2 [1].");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );

    let before = fake.request_count();
    fake.push(Behaviour::Status {
        code: 429,
        message: "come back in an hour".into(),
        retry_after: Some(3600),
    });
    let started = Instant::now();
    let turn = en.say("And what about money market funds?").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no waiting for an hour"
    );
    assert!(
        turn.first_text().starts_with("Sorry"),
        "{}",
        turn.first_text()
    );
    assert_eq!(turn.handoff_reason(), Some("llm_unavailable"));
    assert_eq!(
        fake.request_count(),
        before + 1,
        "no retry past the deadline"
    );
    let records = turn_records(&app, en.id()).await;
    let failed = records
        .iter()
        .rfind(|r| r.1 == "answer.unavailable")
        .unwrap();
    assert_eq!(
        failed.2["llm"]["failure"]["failure"]["kind"],
        "rate_limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_trimmed_oldest_first_to_fit_the_window() {
    let fake = FakeLlm::start().await;
    fake.set_default(Behaviour::text("Bond funds pay out in T+2 [1]."));
    let app = spawn_app_with(Store::Sqlite, |c| {
        with_knowledge(c);
        with_llm(c, &fake);
        c.llm.context_window = 1_400;
        c.llm.max_tokens = 200;
    })
    .await;
    let mut en = client(&app, "chatty", "en").await;
    for i in 0..12 {
        en.say(&format!(
            "Question {i} about bond funds, their fees and redemption, asked at some length so that the history grows quickly and steadily."
        ))
        .await;
    }
    let turn = en.say("How long does a bond fund redemption take?").await;
    assert_eq!(turn.text(), "Bond funds pay out in T+2 [1].");
    let request = fake.requests().last().unwrap().clone();
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("How long does a bond fund")
    );
    // 24 earlier messages exist; not all fit, and the ones kept are the newest.
    let history = &messages[1..messages.len() - 1];
    assert!(
        !history.is_empty() && history.len() < 24,
        "{} history messages sent",
        history.len()
    );
    assert!(
        history.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("T+2"),
        "the newest reply is kept: {history:?}"
    );
    assert!(
        !messages
            .iter()
            .any(|m| m["content"].as_str().unwrap().contains("Question 0 ")),
        "the oldest question is dropped"
    );
    let records = turn_records(&app, en.id()).await;
    let budget = &records.iter().rfind(|r| r.1 == "answer").unwrap().2["llm"]["budget"];
    assert!(budget["history_trimmed"].as_u64().unwrap() > 0, "{budget}");
    assert!(
        budget["prompt_tokens"].as_u64().unwrap() <= budget["prompt_limit"].as_u64().unwrap(),
        "{budget}"
    );
    assert_eq!(budget["prompt_limit"], 1_200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50000_character_message_is_refused_politely_and_never_sent_to_the_model() {
    let fake = FakeLlm::start().await;
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let token = app.token(Role::Client, "verbose");
    let conversation = app.start_conversation(&token).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&token),
            Some(json!({"client_msg_id": "long", "kind": "text", "body": {"text": "a".repeat(50_000)}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let seq = body["seq"].as_i64().unwrap();
    let reply = wait_for_bot(&app, &conversation, &token, seq).await;
    let text = reply["body"]["text"].as_str().unwrap();
    assert!(text.contains("50000") && text.contains("4000"), "{text}");
    assert_eq!(fake.request_count(), 0, "nothing went to the model");
    let records = turn_records(&app, conversation.parse().unwrap()).await;
    assert_eq!(records[0].1, "input.refused");
}

/// Polls the message list until the bot's first reply to `seq` is there.
async fn wait_for_bot(app: &TestApp, conversation: &str, token: &str, seq: i64) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, page) = app
            .get(
                &format!("/v1/conversations/{conversation}/messages?after_seq={seq}"),
                token,
            )
            .await;
        if let Some(m) = page["messages"].as_array().and_then(|m| {
            m.iter()
                .find(|m| m["client_msg_id"] == format!("bot:{seq}:0").as_str())
                .cloned()
        }) {
            return m;
        }
        assert!(Instant::now() < deadline, "no bot reply to {seq}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_with_an_unknown_variable_stops_startup_naming_it() {
    let prompts = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped("prompts")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), prompts.path().join(entry.file_name())).unwrap();
    }
    let file = prompts.path().join("answer.en.md");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("{{question}}", "{{question}} {{client_name}}"),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.bot.prompts_dir = prompts.path().to_path_buf();
    let error = wealthdesk::Application::build(config)
        .await
        .err()
        .expect("startup fails");
    let message = format!("{error:#}");
    assert!(
        message.contains("answer.en.md") && message.contains("unknown variable {{client_name}}"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_answers_are_mapped_by_the_model_and_said_back() {
    let fake = FakeLlm::start().await;
    let app = bot_app(Store::Sqlite, Some(&fake)).await;
    let mut en = client(&app, "wordy", "en").await;
    let turn = en.say("assessment please").await;
    let first = turn.reply()["body"]["question"].clone();
    fake.push(Behaviour::text("B"));
    let turn = en
        .say("hmm, honestly something like the second one I suppose")
        .await;
    assert_eq!(turn.replies.len(), 2, "{:?}", turn.replies);
    assert!(
        turn.replies[0]["body"]["text"]
            .as_str()
            .unwrap()
            .starts_with("I took that as B."),
        "{:?}",
        turn.replies[0]
    );
    assert_eq!(turn.reply()["body"]["question"]["index"], 2);
    let session = session::load(app.db(), en.id()).await.unwrap().unwrap();
    assert_eq!(
        session.answers[0].as_deref(),
        first["options"][1]["id"].as_str()
    );
    // A model that cannot tell leaves the question asked again, never guessed.
    fake.push(Behaviour::text("NONE"));
    let turn = en.say("it depends on many things really").await;
    assert!(turn.text().contains("couldn't match"), "{}", turn.text());
    let records = turn_records(&app, en.id()).await;
    let mapped: Vec<&Value> = records
        .iter()
        .filter(|r| r.1 == "questionnaire.mapped")
        .map(|r| &r.2)
        .collect();
    assert_eq!(mapped.len(), 2);
    assert!(
        mapped[0]["prompt"]["id"]
            .as_str()
            .unwrap()
            .starts_with("answer_mapping.en@v")
    );
    assert_eq!(mapped[1]["option"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_questionnaire_resumes_at_the_same_question() {
    // The database outlives the process; each run gets its own vector store (an
    // in-process Qdrant Edge stays locked by the first server's still-running tasks).
    let data = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", data.path().join("kept.db").display());
    let run = |name: &str| {
        let mut config = test_config(&data.path().join(name));
        with_knowledge(&mut config);
        config.database_url = Some(Secret::new(database.clone()));
        config
    };
    let app = spawn_configured(run("first")).await;
    let mut en = client(&app, "restarted", "en").await;
    en.say("assessment please").await;
    en.say("B").await;
    let turn = en.say("B").await;
    assert_eq!(turn.reply()["body"]["question"]["index"], 3);
    let conversation = en.conversation.clone();
    drop(en);
    app.stop().await;

    let app = spawn_configured(run("second")).await;
    let token = app.token(Role::Client, "restarted");
    let mut socket = app.ws(&token).await;
    socket.subscribe(&conversation, None).await;
    let mut en = Client {
        socket,
        conversation,
        token,
        id: "restarted".into(),
        sent: 100,
    };
    let turn = en.say("continue").await;
    assert_eq!(
        turn.reply()["body"]["question"]["index"],
        3,
        "{}",
        turn.reply()
    );
    let turn = en.say("B").await;
    assert_eq!(turn.reply()["body"]["question"]["index"], 4);
    let (state, _) = session::state(app.db(), en.id()).await.unwrap();
    assert_eq!(state, session::BotState::Questionnaire);
    assert_eq!(en.id.as_str(), "restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_person_hands_over_and_the_bot_goes_silent() {
    let app = bot_app(Store::Sqlite, None).await;
    let mut zh = client(&app, "wants-human", "zh-CN").await;
    let turn = zh.say("我要转人工").await;
    assert_eq!(turn.reply()["kind"], "handoff", "{}", turn.reply());
    assert_eq!(turn.reply()["body"]["handoff"]["reason"], "client_request");
    let (_, conversation) = app
        .get(
            &format!("/v1/conversations/{}", zh.conversation),
            &app.token(Role::Client, "wants-human"),
        )
        .await;
    assert_eq!(conversation["mode"], "queued");
    let (state, _) = session::state(app.db(), zh.id()).await.unwrap();
    assert_eq!(state, session::BotState::Handoff);
    // The bot says nothing more.
    let ack = zh
        .socket
        .request(json!({"type": "send", "conversation_id": zh.conversation, "client_msg_id": "after", "kind": "text", "body": {"text": "还在吗？"}}))
        .await;
    let seq = ack["seq"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, page) = app
        .get(
            &format!(
                "/v1/conversations/{}/messages?after_seq={seq}",
                zh.conversation
            ),
            &app.token(Role::Client, "wants-human"),
        )
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 0, "{page}");
    let records = turn_records(&app, zh.id()).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.1.starts_with("handoff"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_opens_the_breaker_and_replies_fail_fast() {
    let fake = FakeLlm::start().await;
    fake.set_default(Behaviour::Status {
        code: 500,
        message: "down".into(),
        retry_after: None,
    });
    let app = spawn_app_with(Store::Sqlite, |c| {
        with_knowledge(c);
        with_llm(c, &fake);
        c.llm.max_retries = 0;
        c.llm.breaker_failures = 2;
        c.llm.breaker_cooldown_secs = 600;
    })
    .await;
    // Each client gets an apology and a person at once; the breaker is shared by all.
    for name in ["unlucky-1", "unlucky-2"] {
        let mut en = client(&app, name, "en").await;
        let turn = en
            .say("When does the money from a bond fund redemption arrive?")
            .await;
        assert!(
            turn.first_text().starts_with("Sorry"),
            "{}",
            turn.first_text()
        );
        assert_eq!(turn.handoff_reason(), Some("llm_unavailable"));
    }
    assert_eq!(fake.request_count(), 2);
    let mut en = client(&app, "unlucky-3", "en").await;
    let started = Instant::now();
    let turn = en.say("What does a money market fund cost?").await;
    assert!(
        turn.first_text().starts_with("Sorry"),
        "{}",
        turn.first_text()
    );
    assert_eq!(turn.handoff_reason(), Some("llm_unavailable"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no waiting on a dead endpoint"
    );
    assert_eq!(fake.request_count(), 2, "the open breaker sends nothing");
    let records = turn_records(&app, en.id()).await;
    let last = records
        .iter()
        .rfind(|r| r.1 == "answer.unavailable")
        .unwrap();
    assert_eq!(last.2["llm"]["failure"]["failure"]["kind"], "breaker_open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_give_every_message_exactly_one_bot_turn() {
    let fake = FakeLlm::start().await;
    fake.set_default(Behaviour::Reply {
        chunks: vec!["Money market funds ".into(), "pay out on T+1 [1].".into()],
        first_delay: Duration::from_millis(30),
        per_chunk: Duration::from_millis(30),
        prompt_tokens: 100,
    });
    let (url, _database) = crate::helpers::create_postgres_database().await;
    let prefix = format!("wdtest{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        let mut config = test_config(&dir.path().join(name));
        with_knowledge(&mut config);
        with_llm(&mut config, &fake);
        config.database_url = Some(Secret::new(url.clone()));
        config.nats_url = Some(Secret::new("nats://127.0.0.1:4222"));
        config.nats_subject_prefix = prefix.clone();
        config
    };
    let a = spawn_configured(node("a")).await;
    let b = spawn_configured(node("b")).await;
    for app in [&a, &b] {
        for _ in 0..200 {
            if app.state.im.bus.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The client is on node A; the turns go to whichever node the queue group picks.
    let mut en = client(&a, "two-nodes", "en").await;
    let questions = [
        "hello",
        "When does the money from a money market fund redemption arrive?",
        "What is a money market fund?",
        "How is the yield of a money market fund shown?",
        "assessment please",
        "B",
    ];
    let mut seqs = Vec::new();
    for q in questions {
        seqs.push(en.say(q).await.seq);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, page) = b
        .get(
            &format!("/v1/conversations/{}/messages?limit=100", en.conversation),
            &b.token(Role::Client, "two-nodes"),
        )
        .await;
    let messages = page["messages"].as_array().unwrap();
    for seq in seqs {
        let first: Vec<&Value> = messages
            .iter()
            .filter(|m| m["client_msg_id"] == format!("bot:{seq}:0").as_str())
            .collect();
        assert_eq!(
            first.len(),
            1,
            "message {seq} got {} first replies",
            first.len()
        );
    }
    let bot = messages
        .iter()
        .filter(|m| m["sender"]["role"] == "bot")
        .count();
    assert_eq!(
        bot, 7,
        "one reply per message, two for the questionnaire's start"
    );
    let records = turn_records(&a, en.id()).await;
    assert_eq!(
        records.iter().filter(|r| r.1 == "answer").count(),
        3,
        "each answer turn ran once"
    );
    assert_eq!(fake.request_count(), 3, "each answer was written once");
}

//! The risk questionnaire as a client lives it in the chat, and the profile it leaves.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wealthdesk::auth::Role;
use wealthdesk::questionnaire::profile;

use crate::helpers::{TestApp, assert_error};
use crate::on_both_stores;
use crate::ws::WsClient;

/// A client in a conversation with the bot.
struct Chat {
    socket: WsClient,
    conversation: String,
    token: String,
    client_id: String,
    sent: u32,
}

async fn chat(app: &TestApp, client_id: &str, language: &str) -> Chat {
    let token = app.token(Role::Client, client_id);
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
    Chat {
        socket: app.ws(&token).await,
        conversation,
        token,
        client_id: client_id.into(),
        sent: 0,
    }
}

impl Chat {
    /// Sends `body` and returns the bot's replies to it.
    async fn send_body(&mut self, body: Value) -> Vec<Value> {
        self.sent += 1;
        let id = format!("c-{}", self.sent);
        let ack = self
            .socket
            .request(json!({"type": "send", "conversation_id": self.conversation,
                "client_msg_id": id, "kind": "text", "body": body}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let seq = ack["seq"].as_i64().unwrap();
        self.socket
            .bot_replies(seq, Duration::from_millis(400), |m| {
                matches!(m["kind"].as_str(), Some("question" | "assessment"))
            })
            .await
    }

    async fn say(&mut self, text: &str) -> Vec<Value> {
        self.send_body(json!({ "text": text })).await
    }
}

fn last(replies: &[Value]) -> &Value {
    replies.last().expect("at least one reply")
}

fn question_id(reply: &Value) -> &str {
    assert_eq!(reply["kind"], "question", "{reply}");
    reply["body"]["question"]["question_id"].as_str().unwrap()
}

/// Answers every remaining question with the option of `pick(question index, options)`.
async fn answer_all(
    chat: &mut Chat,
    mut reply: Value,
    pick: impl Fn(usize, &[Value]) -> String,
) -> Value {
    while reply["kind"] == "question" {
        let index = reply["body"]["question"]["index"].as_u64().unwrap() as usize;
        let options = reply["body"]["question"]["options"]
            .as_array()
            .unwrap()
            .clone();
        let answer = pick(index, &options);
        let replies = chat.say(&answer).await;
        reply = last(&replies).clone();
    }
    reply
}

/// Takes `client_id` through the whole questionnaire in English, always choosing option
/// `option` (0 = A), and returns the level assessed.
pub(crate) async fn assess_client(app: &TestApp, client_id: &str, option: usize) -> String {
    let mut chat = chat(app, client_id, "en").await;
    let replies = chat.say("I would like some investment advice").await;
    let done = answer_all(&mut chat, last(&replies).clone(), |_, options| {
        options[option.min(options.len() - 1)]["letter"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .await;
    assert_eq!(done["kind"], "assessment", "{done}");
    done["body"]["profile"]["level"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn a_client_asking_for_advice_is_assessed_first_in_plain_words(app: TestApp) {
    let mut chat = chat(&app, "new-investor", "zh-CN").await;
    let replies = chat.say("有什么理财产品推荐吗？").await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["kind"], "text");
    assert!(
        replies[0]["body"]["text"].as_str().unwrap().chars().count() > 20,
        "the bot explains why it asks"
    );
    let first = &replies[1];
    assert_eq!(question_id(first), first_question_of("cn-fund-risk"));
    assert_eq!(first["body"]["question"]["index"], 1);
    assert!(
        first["body"]["text"].as_str().unwrap().contains("A. "),
        "a plain-text fallback lists the options"
    );
    assert_eq!(first["sender"]["role"], "bot");

    // Letters, numbers and button presses all count.
    let mut reply = first.clone();
    let mut n = 0;
    while reply["kind"] == "question" {
        let q = &reply["body"]["question"];
        let options = q["options"].as_array().unwrap();
        let replies = match n % 3 {
            0 => chat.say(options[1]["letter"].as_str().unwrap()).await,
            1 => chat.say(&options[1]["number"].to_string()).await,
            _ => {
                chat.send_body(json!({"text": options[1]["label"], "answer": {"question_id": q["question_id"], "option_id": options[1]["id"]}}))
                    .await
            }
        };
        reply = last(&replies).clone();
        n += 1;
    }
    assert_eq!(reply["kind"], "assessment", "{reply}");
    let profile = &reply["body"]["profile"];
    let text = reply["body"]["text"].as_str().unwrap();
    let level = profile["level"].as_str().unwrap();
    assert!(text.contains(level), "{text}");
    assert!(
        text.contains(profile["max_product"].as_str().unwrap()),
        "the allowed product levels are named: {text}"
    );
    assert!(
        text.contains(&profile["expires_at"].as_str().unwrap()[..10]),
        "the validity is stated: {text}"
    );
    assert!(
        text.contains("主要依据"),
        "the main reasons are given: {text}"
    );

    let (status, view) = app
        .get(
            &format!("/v1/clients/{}/risk-profile", chat.client_id),
            &chat.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["current"]["level"], level);
    assert_eq!(view["current"]["questionnaire_id"], "cn-fund-risk");
    assert_eq!(view["current"]["answers"].as_array().unwrap().len(), n);
    assert_eq!(view["current"]["valid"], true);

    // Every question and answer is an ordinary message of the transcript, and the
    // scoring is recorded as a turn.
    let (_, page) = app
        .get(
            &format!("/v1/conversations/{}/messages?limit=500", chat.conversation),
            &chat.token,
        )
        .await;
    let kinds: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "question").count(), n);
    let turns =
        wealthdesk::conversation::session::turns(app.db(), chat.conversation.parse().unwrap())
            .await
            .unwrap();
    let scored = turns
        .iter()
        .find(|(_, kind, _)| kind == "questionnaire.scored")
        .expect("a scoring record");
    assert_eq!(scored.2["assessment"]["level"], level);
}

fn first_question_of(pack: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/questionnaires");
    wealthdesk::questionnaire::load_packs(&dir, false)
        .unwrap()
        .into_iter()
        .find(|p| p.id == pack)
        .unwrap()
        .questions[0]
        .id
        .clone()
}

async fn answers_that_fit_no_option_are_asked_again_never_guessed(app: TestApp) {
    let mut chat = chat(&app, "unclear", "en").await;
    let replies = chat.say("I'd like some investment advice").await;
    let first = last(&replies).clone();
    let asked = question_id(&first).to_string();
    for unclear in ["", "🙂", "what do you mean", "Z", "9", &"x".repeat(3000)] {
        let body = if unclear.is_empty() {
            json!({"text": " "})
        } else {
            json!({"text": unclear})
        };
        let replies = if unclear.is_empty() {
            // An empty text is refused at the door (validation), not by the bot.
            let e = chat
                .socket
                .request(json!({"type": "send", "conversation_id": chat.conversation, "client_msg_id": "empty", "kind": "text", "body": body}))
                .await;
            assert_eq!(e["code"], "validation_failed");
            continue;
        } else {
            chat.send_body(body).await
        };
        assert_eq!(replies.len(), 1, "{unclear}: {replies:?}");
        let text = replies[0]["body"]["text"].as_str().unwrap();
        assert!(
            text.contains("A. ") && text.contains("B. "),
            "the re-ask names the options: {text}"
        );
    }
    // A button press for a question not asked is refused, and the question asked again.
    let replies = chat
        .send_body(
            json!({"text": "A", "answer": {"question_id": "not-this-one", "option_id": "a"}}),
        )
        .await;
    assert_eq!(question_id(last(&replies)), asked);
    // Still on the first question: nothing was recorded.
    let session =
        wealthdesk::conversation::session::load(app.db(), chat.conversation.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(session.position, 0);
    assert!(session.answers.iter().all(Option::is_none));
}

async fn back_pause_and_resume_on_another_device(app: TestApp) {
    let mut chat = chat(&app, "commuter-q", "en").await;
    let replies = chat.say("recommend me a fund").await;
    let q1 = question_id(last(&replies)).to_string();
    let replies = chat.say("a").await;
    let q2 = question_id(last(&replies)).to_string();
    // Back: the previous question again, with the earlier answer shown.
    let replies = chat.say("back").await;
    assert_eq!(question_id(last(&replies)), q1);
    assert_eq!(last(&replies)["body"]["question"]["previous_answer"], "a");
    let replies = chat.say("B").await; // change it
    assert_eq!(question_id(last(&replies)), q2);
    let replies = chat.say("pause").await;
    assert!(
        replies[0]["body"]["text"]
            .as_str()
            .unwrap()
            .contains("continue")
    );
    let token = chat.token.clone();
    let conversation = chat.conversation.clone();
    drop(chat);

    // Later, on a tablet.
    let mut tablet = Chat {
        socket: app.ws(&token).await,
        conversation,
        token,
        client_id: "commuter-q".into(),
        sent: 100,
    };
    let replies = tablet.say("continue").await;
    assert_eq!(question_id(last(&replies)), q2, "resumes where it stopped");
    let session =
        wealthdesk::conversation::session::load(app.db(), tablet.conversation.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        session.answers[0].as_deref(),
        Some("b"),
        "the changed answer is kept"
    );
    assert!(
        profile::latest(app.db(), "commuter-q")
            .await
            .unwrap()
            .is_none(),
        "no profile from a half-finished questionnaire"
    );

    let replies = tablet.say("stop").await;
    assert_eq!(replies.len(), 1);
    assert!(
        profile::latest(app.db(), "commuter-q")
            .await
            .unwrap()
            .is_none()
    );
    // After stopping, advice still waits for an assessment.
    let replies = tablet.say("which fund should I buy?").await;
    assert_eq!(last(&replies)["body"]["question"]["index"], 1);
}

async fn an_expired_profile_triggers_reassessment_and_history_is_kept(app: TestApp) {
    let mut chat = chat(&app, "returning", "en").await;
    let replies = chat.say("start the risk assessment").await;
    let done = answer_all(&mut chat, last(&replies).clone(), |_, options| {
        options[1]["letter"].as_str().unwrap().to_string()
    })
    .await;
    assert_eq!(done["kind"], "assessment");
    let first = profile::current(app.db(), "returning")
        .await
        .unwrap()
        .unwrap();

    // Two years later the profile has expired.
    profile::set_expiry(app.db(), &first.id, wealthdesk::time_fmt::now_ms() - 1000)
        .await
        .unwrap();
    // The moved expiry is archived: the profile's chain still verifies.
    let verified = wealthdesk::archive::verify::run(app.db(), None, None)
        .await
        .unwrap();
    assert!(verified.ok(), "{:?}", verified.problems);
    assert!(
        profile::current(app.db(), "returning")
            .await
            .unwrap()
            .is_none()
    );
    let replies = chat.say("Can you recommend a product?").await;
    assert!(
        replies[0]["body"]["text"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{replies:?}"
    );
    assert_eq!(last(&replies)["body"]["question"]["index"], 1);
    let done = answer_all(&mut chat, last(&replies).clone(), |_, options| {
        options[0]["letter"].as_str().unwrap().to_string()
    })
    .await;
    assert_eq!(done["kind"], "assessment");

    let history = profile::history(app.db(), "returning").await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].valid);
    assert!(!history[1].valid);
    assert!(
        history[1].superseded_at.is_some(),
        "the old profile is superseded, not overwritten"
    );
    assert_eq!(history[1].id, first.id);
    assert_ne!(history[0].level, history[1].level);
}

async fn who_may_read_a_risk_profile(app: TestApp) {
    let mut chat = chat(&app, "profiled", "en").await;
    let path = "/v1/clients/profiled/risk-profile";
    assert_error(
        app.get(path, &chat.token).await,
        StatusCode::NOT_FOUND,
        "risk_profile_not_found",
    );
    let replies = chat.say("assessment please").await;
    answer_all(&mut chat, last(&replies).clone(), |_, _| "1".into()).await;

    assert_eq!(app.get(path, &chat.token).await.0, StatusCode::OK);
    // A message cannot set a level either.
    let before = profile::current(app.db(), "profiled")
        .await
        .unwrap()
        .unwrap();
    chat.send_body(json!({"text": "set my level to C5", "risk_level": "C5"}))
        .await;
    let after = profile::current(app.db(), "profiled")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((before.id, before.level), (after.id, after.level));

    let other = app.token(Role::Client, "nosy");
    assert_error(
        app.get(path, &other).await,
        StatusCode::FORBIDDEN,
        "not_your_profile",
    );
    let advisor = app.token(Role::Advisor, "adv-p");
    assert_error(
        app.get(path, &advisor).await,
        StatusCode::FORBIDDEN,
        "not_assigned_advisor",
    );
    app.join(&advisor, &chat.token, &chat.conversation).await;
    assert_eq!(app.get(path, &advisor).await.0, StatusCode::OK);
    let compliance = app.token(Role::Compliance, "co-p");
    assert_eq!(app.get(path, &compliance).await.0, StatusCode::OK);
    let audited = wealthdesk::compliance::audit::entries_for(app.db(), "client:profiled")
        .await
        .unwrap();
    assert_eq!(audited.len(), 1);
    let admin = app.token(Role::Admin, "ops");
    assert_error(
        app.get(path, &admin).await,
        StatusCode::FORBIDDEN,
        "role_not_allowed",
    );

    // Nobody sets a level through the API, least of all the client.
    for method in [Method::PUT, Method::POST, Method::PATCH] {
        let response = app
            .call(
                method,
                path,
                Some(&chat.token),
                Some(json!({"level": "C5", "max_product": "R5"})),
            )
            .await;
        assert_error(response, StatusCode::FORBIDDEN, "risk_profile_read_only");
    }
}

on_both_stores!(
    a_client_asking_for_advice_is_assessed_first_in_plain_words,
    answers_that_fit_no_option_are_asked_again_never_guessed,
    back_pause_and_resume_on_another_device,
    an_expired_profile_triggers_reassessment_and_history_is_kept,
    who_may_read_a_risk_profile,
    a_product_above_the_clients_level_is_named_as_such_never_encouraged,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_regime_is_a_matter_of_configuration() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Store::Sqlite, |c| {
        c.questionnaire.pack = "eu-mifid-sri".into()
    })
    .await;
    let mut chat = chat(&app, "eu-client", "en").await;
    let replies = chat.say("I would like investment advice").await;
    assert_eq!(
        question_id(last(&replies)),
        first_question_of("eu-mifid-sri")
    );
    let done = answer_all(&mut chat, last(&replies).clone(), |_, options| {
        options[options.len() / 2]["letter"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .await;
    assert_eq!(done["kind"], "assessment");
    let level = done["body"]["profile"]["level"].as_str().unwrap();
    assert!(level.starts_with('P'), "{level}");
    assert!(
        done["body"]["profile"]["max_product"]
            .as_str()
            .unwrap()
            .starts_with("SRI")
    );
    let stored = profile::current(app.db(), "eu-client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.questionnaire_id, "eu-mifid-sri");
}

fn catalog() -> wealthdesk::knowledge::Catalog {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/products");
    wealthdesk::knowledge::Catalog::load(&dir, false).unwrap()
}

/// The English keyword of the first shipped product rated `level` with no lock-up.
fn product_named(level: &str) -> (String, String) {
    let catalog = catalog();
    let p = catalog
        .products()
        .iter()
        .find(|p| p.sheet.risk_level == level && p.sheet.lockup_months == 0)
        .unwrap_or_else(|| panic!("a shipped {level} product"));
    (p.sheet.id.clone(), p.sheet.keywords.en[0].clone())
}

async fn a_product_above_the_clients_level_is_named_as_such_never_encouraged(app: TestApp) {
    let mut chat = chat(&app, "cautious-one", "en").await;
    // Asking about a product first means being assessed first.
    let (risky_id, risky) = product_named("R4");
    let replies = chat.say(&format!("Tell me about the {risky}")).await;
    assert_eq!(
        last(&replies)["body"]["question"]["index"],
        1,
        "{replies:?}"
    );
    // All second options: a C2 (cautious) client, allowed up to R2.
    let done = answer_all(&mut chat, last(&replies).clone(), |_, options| {
        options[1]["letter"].as_str().unwrap().to_string()
    })
    .await;
    assert_eq!(done["body"]["profile"]["level"], "C2");

    let replies = chat.say(&format!("What about the {risky}?")).await;
    let reply = last(&replies);
    assert_eq!(reply["kind"], "product", "{reply}");
    assert_eq!(reply["body"]["product"]["id"], risky_id.as_str());
    assert_eq!(reply["body"]["suitability"]["eligible"], false);
    assert_eq!(
        reply["body"]["suitability"]["reasons"][0]["reason"],
        "risk_above_level"
    );
    assert_eq!(reply["body"]["offer_human_advisor"], true);
    let text = reply["body"]["text"].as_str().unwrap();
    assert!(
        text.contains("R4") && text.contains("above your assessed category C2"),
        "{text}"
    );
    assert!(text.contains("human advisor"), "{text}");
    assert!(
        !text.to_lowercase().contains("good choice") && !text.contains("I recommend"),
        "{text}"
    );

    let (safe_id, safe) = product_named("R1");
    let replies = chat.say(&format!("and the {safe}?")).await;
    let reply = last(&replies);
    assert_eq!(reply["body"]["product"]["id"], safe_id.as_str());
    assert_eq!(reply["body"]["suitability"]["eligible"], true);
    assert_eq!(reply["body"]["offer_human_advisor"], false);

    let turns =
        wealthdesk::conversation::session::turns(app.db(), chat.conversation.parse().unwrap())
            .await
            .unwrap();
    let enquiries: Vec<&Value> = turns
        .iter()
        .filter(|t| t.1 == "product.enquiry")
        .map(|t| &t.2)
        .collect();
    assert_eq!(enquiries.len(), 2);
    assert_eq!(enquiries[0]["verdict"]["eligible"], false);

    // Insisting on the unsuitable product is a person's call, never the bot's.
    let replies = chat.say(&format!("What about the {risky}?")).await;
    assert_eq!(last(&replies)["body"]["offer_human_advisor"], true);
    let replies = chat.say("I still want to buy it anyway").await;
    let reply = last(&replies);
    assert_eq!(reply["kind"], "handoff", "{replies:?}");
    assert_eq!(reply["body"]["handoff"]["reason"], "unsuitable_proceed");
    let (_, state) = app
        .get(
            &format!("/v1/conversations/{}/handoff", chat.conversation),
            &chat.token,
        )
        .await;
    assert_eq!(
        (state["status"].as_str(), state["priority"].as_str()),
        (Some("queued"), Some("high")),
        "{state}"
    );
}

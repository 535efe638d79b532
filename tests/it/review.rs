//! Compliance review: search (filters and zh-CN / English full text) on both stores,
//! the transcript and the replay of a bot turn, review notes and guardrail labels
//! (feeding the evaluation set), dashboards, exports that verify offline, the access
//! trail of every compliance read, and the role checks.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wealthdesk::archive::{export, verify};
use wealthdesk::auth::Role;
use wealthdesk::llm::fake::{Behaviour, FakeLlm};

use crate::engine::{client, with_knowledge, with_llm};
use crate::helpers::{Store, TestApp, assert_error, spawn_app_with};
use crate::on_both_stores;

/// Today and tomorrow (UTC) as dates: a range that holds everything just written.
fn today() -> (String, String) {
    let now = time::OffsetDateTime::now_utc().date();
    (now.to_string(), (now + time::Duration::days(1)).to_string())
}

/// A conversation where the client says `text`; returns its id and the message's seq.
async fn says(app: &TestApp, client: &str, text: &str) -> (String, i64) {
    let token = app.token(Role::Client, client);
    let id = app.start_conversation(&token).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{id}/messages"),
            Some(&token),
            Some(json!({"client_msg_id": "m1", "kind": "text", "body": {"text": text}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (id, body["seq"].as_i64().unwrap())
}

async fn search(app: &TestApp, officer: &str, query: &str) -> Value {
    let (from, to) = today();
    let (status, body) = app
        .get(
            &format!("/v1/compliance/search?from={from}&to={to}&{query}"),
            officer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// The seqs of the messages a result quotes for the text searched.
fn hit_seqs(page: &Value, conversation: &str) -> Vec<i64> {
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"] == conversation)
        .flat_map(|c| c["hits"].as_array().unwrap().iter())
        .map(|h| h["seq"].as_i64().unwrap())
        .collect()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn search_finds_chinese_and_english_inside_sentences(app: TestApp) {
    let officer = app.token(Role::Compliance, "officer-s");
    let (zh, zh_seq) = says(&app, "c-zh", "请问这个理财产品保本吗？我比较担心亏损").await;
    let (en, en_seq) = says(&app, "c-en", "Is the capital guaranteed on this bond fund?").await;
    // 保 and 本 both occur here, but not as the word 保本.
    let (apart, apart_seq) = says(&app, "c-apart", "保证本金的产品有哪些").await;

    let page = search(&app, &officer, &format!("q={}", encode("保本"))).await;
    assert!(hit_seqs(&page, &zh).contains(&zh_seq), "{page}");
    assert!(!hit_seqs(&page, &apart).contains(&apart_seq), "{page}");
    let hit = &page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == zh)
        .unwrap()["hits"][0];
    assert!(hit["text"].as_str().unwrap().contains("保本"), "{hit}");

    let page = search(&app, &officer, "q=GUARANTEED").await;
    assert!(hit_seqs(&page, &en).contains(&en_seq), "{page}");
    let page = search(
        &app,
        &officer,
        &format!("q={}", encode("capital guaranteed")),
    )
    .await;
    assert!(hit_seqs(&page, &en).contains(&en_seq), "{page}");
    let page = search(
        &app,
        &officer,
        &format!("q={}", encode("guaranteed capital")),
    )
    .await;
    assert!(
        hit_seqs(&page, &en).contains(&en_seq),
        "both words, in any order: {page}"
    );
    let page = search(&app, &officer, "q=guaranteedx").await;
    assert!(!ids(&page).contains(&en), "{page}");

    // Filters: the client, and reviewed / not reviewed.
    let page = search(&app, &officer, "client=c-en").await;
    assert_eq!(ids(&page), [en.as_str()]);
    // An advisor takes one over: searchable by the advisor and the handoff reason.
    let advisor = app.token(Role::Advisor, "adv-s");
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/advisors/me",
            Some(&advisor),
            Some(json!({"status": "online", "languages": ["zh-CN", "en"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.join(&advisor, &app.token(Role::Client, "c-en"), &en)
        .await;
    assert_eq!(
        ids(&search(&app, &officer, "advisor=adv-s").await),
        [en.as_str()]
    );
    assert_eq!(
        ids(&search(&app, &officer, "reason=client_request").await),
        [en.as_str()]
    );
    assert!(ids(&search(&app, &officer, "advisor=adv-other").await).is_empty());
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/compliance/conversations/{zh}/reviews"),
            Some(&officer),
            Some(json!({"note": "问询保本，回复合规", "reviewed": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        ids(&search(&app, &officer, "reviewed=true").await),
        [zh.as_str()]
    );
    let unreviewed = ids(&search(&app, &officer, "reviewed=false").await);
    assert!(unreviewed.contains(&en) && unreviewed.contains(&apart) && !unreviewed.contains(&zh));
    // A range that ended before they began finds nothing.
    let (status, page) = app
        .get(
            "/v1/compliance/search?from=2020-01-01&to=2020-01-02",
            &officer,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ids(&page).is_empty(), "{page}");
    // Pages: one at a time, every conversation once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = search(&app, &officer, &format!("limit=1&cursor={cursor}")).await;
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    seen.sort();
    let mut all = vec![zh.clone(), en.clone(), apart.clone()];
    all.sort();
    assert_eq!(seen, all);

    // Bad searches are named, and change nothing.
    // Records archived or still waiting to be (the newest messages).
    let recorded = |r: &verify::Report| r.records + r.pending;
    let before = recorded(&verify::run(app.db(), None, None).await.unwrap());
    for (query, code) in [
        ("", "range_unbounded"),
        ("from=2026-01-01", "range_unbounded"),
        ("to=2026-01-01", "range_unbounded"),
        ("from=2026-02-01&to=2026-01-01", "range_reversed"),
        ("from=last-week&to=2026-01-01", "invalid_search"),
        (
            "from=2026-01-01&to=2026-01-02&reviewed=perhaps",
            "invalid_search",
        ),
        (
            "from=2026-01-01&to=2026-01-02&q=%3F%3F%21",
            "invalid_search",
        ),
        ("from=2026-01-01&to=2026-01-02&level=high", "invalid_search"),
        ("from=2026-01-01&to=2026-01-02&limit=5000", "invalid_search"),
        (
            "from=2026-01-01&to=2026-01-02&cursor=nonsense",
            "invalid_search",
        ),
        ("from=2026-01-01&to=2026-01-02&colour=red", "invalid_query"),
    ] {
        let response = app
            .get(&format!("/v1/compliance/search?{query}"), &officer)
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, code);
    }
    let long = "保".repeat(201);
    assert_error(
        app.get(
            &format!(
                "/v1/compliance/search?from=2026-01-01&to=2026-01-02&q={}",
                encode(&long)
            ),
            &officer,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_search",
    );
    // Only the refused searches' access records are new: nothing else changed.
    let report = verify::run(app.db(), None, None).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        recorded(&report),
        before,
        "a refused search records nothing"
    );

    // The search result as one export, checked offline.
    let (from, to) = today();
    let response = app
        .http
        .get(app.url(&format!(
            "/v1/compliance/export?from={from}&to={to}&q=GUARANTEED"
        )))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson",);
    let text = response.text().await.unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let report = export::verify_file(file.path(), None).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(
        header["chains"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("conversation:{en}"))),
        "{header}"
    );
    assert_error(
        app.get(
            &format!("/v1/compliance/export?from={to}&to={from}"),
            &officer,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "range_reversed",
    );
    assert_error(
        app.get(
            &format!("/v1/compliance/export?from={from}&to={to}&limit=5"),
            &officer,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_search",
    );
}

async fn a_client_or_an_advisor_reaches_no_compliance_endpoint(app: TestApp) {
    let (conversation, _) = says(&app, "c-roles", "hello").await;
    let (from, to) = today();
    let range = format!("from={from}&to={to}");
    for role in [Role::Client, Role::Advisor] {
        let token = app.token(role, "someone");
        for (method, path) in [
            (Method::GET, format!("/v1/compliance/search?{range}")),
            (Method::GET, format!("/v1/compliance/export?{range}")),
            (Method::GET, format!("/v1/compliance/dashboard?{range}")),
            (Method::GET, format!("/v1/compliance/audit?{range}")),
            (
                Method::GET,
                format!("/v1/compliance/conversations/{conversation}"),
            ),
            (
                Method::GET,
                format!("/v1/compliance/conversations/{conversation}/turns/x"),
            ),
            (
                Method::GET,
                format!("/v1/compliance/conversations/{conversation}/export"),
            ),
            (
                Method::POST,
                format!("/v1/compliance/conversations/{conversation}/reviews"),
            ),
            (
                Method::POST,
                format!("/v1/compliance/conversations/{conversation}/labels"),
            ),
            (Method::GET, "/v1/compliance/holds".to_string()),
        ] {
            let body = (method == Method::POST).then(|| json!({"note": "x", "reviewed": true}));
            let response = app.call(method.clone(), &path, Some(&token), body).await;
            assert_error(response, StatusCode::FORBIDDEN, "role_not_allowed");
        }
    }
    // Nothing to export from a conversation nobody wrote in yet: said plainly, not a cut file.
    let officer = app.token(Role::Compliance, "officer-e");
    let empty = app
        .start_conversation(&app.token(Role::Client, "c-empty"))
        .await;
    assert_error(
        app.get(
            &format!("/v1/compliance/conversations/{empty}/export"),
            &officer,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let (status, _) = app.get(&format!("/v1/compliance/search?{range}"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let reviews: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reviews")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(reviews, 0, "no annotation slipped through");
}

on_both_stores!(
    search_finds_chinese_and_english_inside_sentences,
    a_client_or_an_advisor_reaches_no_compliance_endpoint,
);

/// The promise the fake model makes, which the output rails block.
const PROMISE: &str = "Your capital is guaranteed and you will certainly make money [1].";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_turn_replays_exactly_and_every_compliance_read_is_on_record() {
    let fake = FakeLlm::start().await;
    fake.set_default(Behaviour::text(PROMISE));
    let app = spawn_app_with(Store::Sqlite, |c| {
        with_knowledge(c);
        with_llm(c, &fake);
    })
    .await;
    let officer = app.token(Role::Compliance, "officer-r");
    let mut en = client(&app, "c-replay", "en").await;
    let asked = "My phone is 13800138000. When does a bond fund redemption arrive?";
    let turn = en.say(asked).await;
    assert!(!turn.replies.is_empty());
    // A second blocked reply in a row hands the client to a person.
    en.say("And how long does a money market fund redemption take?")
        .await;
    let conversation = en.conversation.clone();

    // The transcript: who said what, the bot's turns with the rules that fired.
    let (status, t) = app
        .get(
            &format!("/v1/compliance/conversations/{conversation}"),
            &officer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let messages = t["messages"].as_array().unwrap();
    assert_eq!(messages[0]["sender_role"], "client");
    assert_eq!(messages[0]["text"], asked);
    assert!(
        messages
            .iter()
            .any(|m| m["marks"].as_array().unwrap().contains(&json!("handoff"))),
        "{t}"
    );
    let answer = t["turns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "answer")
        .unwrap_or_else(|| panic!("an answer turn: {t}"))
        .clone();
    assert_eq!(answer["blocked"], "OUT-PROMISE", "{answer}");
    assert!(
        t["conversation"]["rules"]
            .as_array()
            .unwrap()
            .contains(&json!("OUT-PROMISE")),
        "{t}"
    );

    let (from, to) = today();
    let found = |query: String| {
        let app = &app;
        let officer = officer.clone();
        async move {
            let (status, page) = app
                .get(&format!("/v1/compliance/search?{query}"), &officer)
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            ids(&page)
        }
    };
    assert_eq!(
        found(format!("from={from}&to={to}&rule=OUT-PROMISE")).await,
        [conversation.as_str()]
    );
    assert_eq!(
        found(format!("from={from}&to={to}&rule=IN-PII-PHONE")).await,
        [conversation.as_str()]
    );
    assert!(
        found(format!("from={from}&to={to}&rule=IN-INJECTION"))
            .await
            .is_empty()
    );
    assert_eq!(
        found(format!(
            "from={from}&to={to}&reason=repeated_blocks&reviewed=false"
        ))
        .await,
        [conversation.as_str()]
    );

    // The replay: exactly what the bot saw and did.
    let turn_id = answer["id"].as_str().unwrap();
    let (status, r) = app
        .get(
            &format!("/v1/compliance/conversations/{conversation}/turns/{turn_id}"),
            &officer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["input"], asked);
    let redacted = r["input_redacted"].as_str().unwrap();
    assert!(
        redacted.contains("[PHONE]") && !redacted.contains("13800138000"),
        "{r}"
    );
    assert_eq!(r["raw_output"], PROMISE);
    assert_eq!(r["blocked"], "OUT-PROMISE");
    assert_eq!(r["model"], "fake-model");
    let rules: Vec<(&str, &str)> = r["guardrails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["rule"].as_str().unwrap(),
                d["direction"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(rules.contains(&("IN-PII-PHONE", "input")), "{rules:?}");
    assert!(rules.contains(&("OUT-PROMISE", "output")), "{rules:?}");
    let chunks = r["chunks"].as_array().unwrap();
    assert!(!chunks.is_empty(), "{r}");
    for chunk in chunks {
        assert_eq!(chunk["text_source"], "recorded", "{chunk}");
        assert_eq!(chunk["version_hash"].as_str().unwrap().len(), 64, "{chunk}");
    }
    // The prompt as sent holds the redacted question and the chunks' text, and is what
    // the model received.
    let sent = r["prompt_sent"].to_string();
    assert!(sent.contains("[PHONE]") && !sent.contains("13800138000"));
    let first_chunk: String = chunks[0]["text"]
        .as_str()
        .unwrap()
        .chars()
        .take(30)
        .collect();
    assert!(
        sent.contains(&first_chunk.replace('"', "\\\"")),
        "{first_chunk}"
    );
    assert_eq!(
        fake.requests()
            .iter()
            .find(|q| q.to_string().contains("[PHONE]"))
            .unwrap()["messages"],
        r["prompt_sent"],
    );
    assert_ne!(r["output"], PROMISE, "the client never saw the promise");
    assert_error(
        app.get(
            &format!("/v1/compliance/conversations/{conversation}/turns/no-such-turn"),
            &officer,
        )
        .await,
        StatusCode::NOT_FOUND,
        "turn_not_found",
    );
    assert_error(
        app.get(
            &format!("/v1/compliance/conversations/{}", uuid::Uuid::now_v7()),
            &officer,
        )
        .await,
        StatusCode::NOT_FOUND,
        "conversation_not_found",
    );

    // Labels: the block was a false positive (say); it cannot also be missed.
    let label = |body: Value| {
        let app = &app;
        let officer = officer.clone();
        let conversation = conversation.clone();
        async move {
            app.call(
                Method::POST,
                &format!("/v1/compliance/conversations/{conversation}/labels"),
                Some(&officer),
                Some(body),
            )
            .await
        }
    };
    let (status, row) = label(json!({"turn_id": turn_id, "rule_id": "OUT-PROMISE", "label": "false_positive", "note": "quoted the client"})).await;
    assert_eq!(status, StatusCode::CREATED, "{row}");
    assert_eq!(row["direction"], "output");
    assert_eq!(row["text"], PROMISE);
    assert_error(
        label(json!({"turn_id": turn_id, "rule_id": "OUT-PROMISE", "label": "missed"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_error(
        label(json!({"turn_id": turn_id, "rule_id": "OUT-NOPE", "label": "correct"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_error(
        label(json!({"turn_id": "t", "rule_id": "OUT-PROMISE", "label": "correct"})).await,
        StatusCode::NOT_FOUND,
        "turn_not_found",
    );
    let (status, _) =
        label(json!({"turn_id": turn_id, "rule_id": "OUT-PREDICTION", "label": "missed"})).await;
    assert_eq!(status, StatusCode::CREATED);
    // The labels as evaluation cases: the false positive no longer expected, the miss is.
    let cases = wealthdesk::review::annotate::eval_cases(app.db())
        .await
        .unwrap();
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert_eq!(cases[0].direction, "output");
    assert_eq!(cases[0].text, PROMISE);
    assert_eq!(cases[0].expect, ["OUT-PREDICTION"]);
    assert!(!cases[0].context.as_ref().unwrap().sources.is_empty());

    // Dashboard: the block and the handoff are counted today.
    let (status, d) = app
        .get(
            &format!("/v1/compliance/dashboard?from={from}&to={to}&bucket=hour"),
            &officer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let total = |list: &str, key: &str| {
        d[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .map_or(0, |s| s["total"].as_i64().unwrap())
    };
    assert!(total("rule_hits", "OUT-PROMISE") >= 1, "{d}");
    assert!(total("rule_hits", "IN-PII-PHONE") >= 1, "{d}");
    assert_eq!(total("handoffs", "repeated_blocks"), 1, "{d}");
    assert!(
        total("rule_hits", "OUT-PROMISE") >= 2,
        "one per blocked turn: {d}"
    );
    assert_eq!(d["buckets"].as_array().unwrap().len(), 48);
    assert_error(
        app.get(
            &format!("/v1/compliance/dashboard?from={from}&to={to}&bucket=week"),
            &officer,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_search",
    );

    // The printable transcript marks the handoff and escapes what the client wrote.
    let response = app
        .http
        .get(app.url(&format!(
            "/v1/compliance/conversations/{conversation}/export?format=html"
        )))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.contains("HANDOFF") && html.contains(asked), "{html}");
    assert!(html.contains("OUT-PROMISE"));
    // The verifiable export of the conversation holds the labels and verifies offline.
    let response = app
        .http
        .get(app.url(&format!(
            "/v1/compliance/conversations/{conversation}/export"
        )))
        .bearer_auth(&officer)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.contains("\"guardrail_label\""));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    assert!(export::verify_file(file.path(), None).unwrap().ok());

    // Annotations are archived: the archive verifies, and a changed label is named.
    let report = verify::run(app.db(), None, None).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    sqlx::query("UPDATE guardrail_labels SET label = 'correct' WHERE label = 'false_positive'")
        .execute(app.db().pool())
        .await
        .unwrap();
    let report = verify::run(app.db(), None, None).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].problem, "edited");
    assert!(report.problems[0].record.starts_with("guardrail_label:"));

    // Every compliance read above is in the access trail (and so in the archive).
    let (status, trail) = app
        .get(
            &format!("/v1/compliance/audit?from={from}&to={to}&actor=officer-r"),
            &officer,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let actions: Vec<(String, String)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["subject"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let chain = format!("conversation:{conversation}");
    for expected in [
        ("compliance.view", chain.as_str()),
        ("compliance.replay", chain.as_str()),
        ("compliance.export", chain.as_str()),
        ("compliance.dashboard", "dashboard"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, s)| a == expected.0 && s == expected.1),
            "{expected:?} missing from {actions:?}"
        );
    }
    let archived: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM archive_entries WHERE chain_id = 'access' AND payload LIKE '%compliance.replay%'",
    )
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert!(archived >= 1);
}

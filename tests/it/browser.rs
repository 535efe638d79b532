//! The web pages in a real browser: the client chat (`/chat`), the advisor console
//! (`/advisor`) and the compliance console (`/compliance`), driven in headless Chromium
//! through chromedriver against a real server with the demo knowledge base ingested, so
//! answers carry citations.
//!
//! The pages are addressed only through their `data-testid` contract. A small W3C
//! WebDriver client over `reqwest` lives at the bottom of this file. Every scenario saves
//! screenshots of its steps (and of any step that times out, with the page source) to
//! `<target>/browser-artifacts/<test>-<page>-<step>.png`.
//!
//! Chromium and chromedriver come from the Debian packages `chromium` and
//! `chromium-driver`; without them these tests fail and say so.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wealthdesk::auth::Role;

use crate::helpers::{Store, TestApp, spawn_app_with};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page gets to show what a step expects.
const UI_PATIENCE: Duration = Duration::from_secs(20);
/// How often a wait looks again.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The option pressed for every question: the middle of the road in the shipped pack.
const MIDDLE_OPTION: &str = "c";
const ADVISOR_GREETING: &str = "Hello, I am your advisor.";

const MESSAGE: &str = r#"[data-testid="message"]"#;
const OPTION: &str = r#"[data-testid="option"]"#;

/// `[data-testid="<id>"]`
fn testid(id: &str) -> String {
    format!(r#"[data-testid="{id}"]"#)
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_completes_questionnaire_asks_and_reaches_an_advisor() {
    const TEST: &str = "client_completes_questionnaire_asks_and_reaches_an_advisor";
    require_browser();
    let app = desk_app().await;
    let (questions, level) = outcome_of_answering(&app, MIDDLE_OPTION);
    let client_token = token(&app, Role::Client, "browser-client", "Alex Morgan");
    let advisor_token = token(&app, Role::Advisor, "adv-wang", "Wang Fang");
    advisor_online(&app, &advisor_token).await;

    let driver = ChromeDriver::start(TEST).await;
    let client = Browser::open(&driver, TEST, "client").await;

    // A new client picks English, which opens a conversation in English.
    client
        .navigate(&format!("{}/chat#token={client_token}", app.base))
        .await;
    client.click(&testid("lang-en"), UI_PATIENCE).await;
    let conversation = newest_conversation(&app, &client_token).await;
    assert_eq!(conversation["language"], "en", "{conversation}");
    let conversation = conversation["id"].as_str().unwrap().to_string();

    // Asking for a recommendation starts the questionnaire; every question is answered
    // with a button press on the newest question.
    client
        .send_message("", "I'd like a recommendation", UI_PATIENCE)
        .await;
    let answered = answer_questionnaire(&client, MIDDLE_OPTION, questions).await;
    assert_eq!(answered, questions, "one button press per question");
    client
        .wait_for_text(
            &format!(r#"{MESSAGE}[data-kind="assessment"]"#),
            &format!("the level {level}"),
            UI_PATIENCE,
            |text| text.contains(&level),
        )
        .await;
    let assessment = client
        .wait_for(
            &format!(r#"{MESSAGE}[data-kind="assessment"]"#),
            UI_PATIENCE,
        )
        .await;
    let from = client.attribute_of(&assessment, "data-role").await;
    assert_eq!(
        from.ok().flatten().as_deref(),
        Some("bot"),
        "the assessment comes from the bot"
    );
    client.screenshot("01-assessment").await;
    let (status, profile) = app
        .get("/v1/clients/browser-client/risk-profile", &client_token)
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["current"]["level"], level.as_str(), "{profile}");

    // A factual question gets a grounded answer whose sources open in a panel.
    client
        .send_message(
            "",
            "What is the redemption period of the money market fund?",
            UI_PATIENCE,
        )
        .await;
    client
        .wait_for(
            &format!(r#"{MESSAGE}[data-role="bot"][data-kind="answer"]"#),
            UI_PATIENCE,
        )
        .await;
    client.click(&testid("citation"), UI_PATIENCE).await;
    client
        .wait_visible(&testid("source-panel"), UI_PATIENCE)
        .await;
    client
        .wait_for_text(
            &testid("source-panel"),
            "the source document",
            UI_PATIENCE,
            |text| text.chars().count() > 300,
        )
        .await;
    client.screenshot("02-source-panel").await;
    client.click(&testid("source-close"), UI_PATIENCE).await;
    client.wait_gone(&testid("source-panel"), UI_PATIENCE).await;

    // The client asks for a person and waits in the queue; the button is off meanwhile.
    client.click(&testid("ask-advisor"), UI_PATIENCE).await;
    client
        .wait_for(
            r#"[data-testid="handoff-status"][data-status="queued"]"#,
            UI_PATIENCE,
        )
        .await;
    client
        .wait_for(&format!("{}:disabled", testid("ask-advisor")), UI_PATIENCE)
        .await;
    client.screenshot("03-queued").await;

    // The advisor finds the conversation in the queue and claims it.
    let advisor = Browser::open(&driver, TEST, "advisor").await;
    advisor
        .navigate(&format!("{}/advisor#token={advisor_token}", app.base))
        .await;
    let entry = format!(r#"[data-testid="queue-entry"][data-conversation-id="{conversation}"]"#);
    advisor.wait_visible(&entry, UI_PATIENCE).await;
    advisor.screenshot("01-queue").await;
    advisor
        .click(&format!("{entry} {}", testid("claim")), UI_PATIENCE)
        .await;

    // The conversation opens beside its packet: why the client is here, and their level.
    let pane = format!(r#"[data-testid="conversation"][data-conversation-id="{conversation}"]"#);
    advisor.wait_visible(&pane, UI_PATIENCE).await;
    advisor.wait_visible(&testid("packet"), UI_PATIENCE).await;
    advisor
        .wait_for_text(&testid("packet-reason"), "a reason", UI_PATIENCE, |text| {
            !text.trim().is_empty()
        })
        .await;
    advisor
        .wait_for_text(
            &testid("packet-profile"),
            &format!("the level {level}"),
            UI_PATIENCE,
            |text| text.contains(&level),
        )
        .await;
    advisor.screenshot("02-claimed-with-packet").await;

    // The advisor writes; the client sees it from the advisor, with the status updated.
    advisor
        .send_message(&pane, ADVISOR_GREETING, UI_PATIENCE)
        .await;
    advisor
        .wait_for_text(
            &format!(r#"{pane} {MESSAGE}[data-role="advisor"]"#),
            "the advisor's own message",
            UI_PATIENCE,
            |text| text.contains(ADVISOR_GREETING),
        )
        .await;
    client
        .wait_for_text(
            &format!(r#"{MESSAGE}[data-role="advisor"]"#),
            "the advisor's message",
            UI_PATIENCE,
            |text| text.contains(ADVISOR_GREETING),
        )
        .await;
    client
        .wait_for(
            r#"[data-testid="handoff-status"][data-status="advisor"]"#,
            UI_PATIENCE,
        )
        .await;
    advisor.screenshot("03-replied").await;
    client.screenshot("04-advisor-joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisor_claim_race_in_the_console_shows_a_clear_error() {
    const TEST: &str = "advisor_claim_race_in_the_console_shows_a_clear_error";
    require_browser();
    let app = desk_app().await;
    let client_token = token(&app, Role::Client, "race-client", "Robin Lee");
    let conversation = queued_conversation(&app, &client_token).await;
    let winner = token(&app, Role::Advisor, "adv-zhou", "Zhou Min");
    let loser = token(&app, Role::Advisor, "adv-chen", "Chen Yu");
    advisor_online(&app, &winner).await;
    advisor_online(&app, &loser).await;

    let driver = ChromeDriver::start(TEST).await;
    let console = Browser::open(&driver, TEST, "advisor").await;
    console
        .navigate(&format!("{}/advisor#token={loser}", app.base))
        .await;
    let entry = format!(r#"[data-testid="queue-entry"][data-conversation-id="{conversation}"]"#);
    let claim = console
        .wait_clickable(&format!("{entry} {}", testid("claim")), UI_PATIENCE)
        .await;
    console.screenshot("01-queue").await;

    // Stage the race: from now on the console's network answers arrive 3 s late, so the
    // entry is still on screen when its button is pressed after the other advisor won.
    console.slow_network(Duration::from_secs(3)).await;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{conversation}/claim"),
            Some(&winner),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the first claim wins: {body}");
    console.click_element(&claim).await.unwrap_or_else(|e| {
        panic!(
            "the console took the claimed entry away before its claim button could be \
             pressed, so the race could not be staged: {e}"
        )
    });

    // The loser is told plainly who has it, and the conversation does not open for them.
    let error = console
        .wait_for_text(
            &testid("error"),
            "an error naming the advisor who claimed it",
            UI_PATIENCE,
            |text| text.to_lowercase().contains("zhou"),
        )
        .await;
    console.screenshot("02-already-claimed").await;
    assert!(!error.trim().is_empty());
    let pane = format!(r#"[data-testid="conversation"][data-conversation-id="{conversation}"]"#);
    assert!(
        console.displayed(&pane).await.is_empty(),
        "the conversation must not open for the advisor who lost the race"
    );
    let (_, handoff) = app
        .get(
            &format!("/v1/conversations/{conversation}/handoff"),
            &client_token,
        )
        .await;
    assert_eq!(handoff["status"], "advisor", "{handoff}");
    assert_eq!(handoff["advisor"]["id"], "adv-zhou", "{handoff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_searches_opens_a_transcript_replays_a_turn_and_exports() {
    const TEST: &str = "compliance_searches_opens_a_transcript_replays_a_turn_and_exports";
    require_browser();
    let app = desk_app().await;
    // A client asks in Chinese whether a product is capital-protected; the bot answers.
    let client_token = token(&app, Role::Client, "review-client", "Chen Jing");
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/conversations",
            Some(&client_token),
            Some(json!({ "language": "zh-CN" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let conversation = body["id"].as_str().unwrap().to_string();
    let question = "请问货币基金保本吗？赎回多久到账？";
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&client_token),
            Some(json!({"client_msg_id": "q1", "kind": "text", "body": {"text": question}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_for_turn(&app, &conversation).await;
    let officer = token(&app, Role::Compliance, "officer-li", "Li Ming");

    let driver = ChromeDriver::start(TEST).await;
    let console = Browser::open(&driver, TEST, "compliance").await;
    console
        .navigate(&format!("{}/compliance#token={officer}", app.base))
        .await;
    let text = console
        .wait_clickable(&testid("search-text"), UI_PATIENCE)
        .await;
    console.send_keys(&text, "保本").await.unwrap();
    let search = console.wait_clickable(&testid("search"), UI_PATIENCE).await;
    console.click_element(&search).await.unwrap();
    let result = format!(r#"[data-testid="result"][data-id="{conversation}"]"#);
    let open = console.wait_clickable(&result, UI_PATIENCE).await;
    console
        .wait_for_text(
            &testid("hit"),
            "the message holding 保本",
            UI_PATIENCE,
            |t| t.contains("保本"),
        )
        .await;
    console.screenshot("01-search").await;

    console.click_element(&open).await.unwrap();
    console
        .wait_for_text(
            &testid("message"),
            "the client's question",
            UI_PATIENCE,
            |t| t.contains(question),
        )
        .await;
    let replay = console.wait_clickable(&testid("replay"), UI_PATIENCE).await;
    console.screenshot("02-transcript").await;
    console.click_element(&replay).await.unwrap();
    console
        .wait_for_text(
            &testid("replay-input"),
            "the replayed input",
            UI_PATIENCE,
            |t| t.contains(question),
        )
        .await;
    console
        .wait_visible(
            &format!("{} {}", testid("replay-panel"), testid("chunk")),
            UI_PATIENCE,
        )
        .await;
    console.screenshot("03-replay").await;

    let export = console
        .wait_clickable(&testid("export-jsonl"), UI_PATIENCE)
        .await;
    console.click_element(&export).await.unwrap();
    let status = console
        .wait_for_text(
            &testid("export-status"),
            "the export's result",
            UI_PATIENCE,
            |t| t.contains("Exported"),
        )
        .await;
    console.screenshot("04-exported").await;
    assert!(status.contains("signed checkpoint"), "{status}");

    // What the officer did is in the access trail.
    let trail = wealthdesk::compliance::audit::entries_for(
        app.db(),
        &format!("conversation:{conversation}"),
    )
    .await
    .unwrap();
    let actions: Vec<&str> = trail
        .iter()
        .filter(|e| e.actor_id == "officer-li")
        .map(|e| e.action.as_str())
        .collect();
    for action in ["compliance.view", "compliance.replay", "compliance.export"] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
}

/// Waits until the bot has recorded a turn in `conversation`.
async fn wait_for_turn(app: &TestApp, conversation: &str) {
    let deadline = Instant::now() + UI_PATIENCE;
    loop {
        let turns: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM turn_records WHERE conversation_id = $1 AND kind = 'answer'",
        )
        .bind(conversation)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
        if turns > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the bot never answered");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------
// Scenario helpers

/// Fails (never skips) when the browser is not installed.
fn require_browser() {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the browser tests need the Debian packages chromium and \
             chromium-driver (`apt-get install chromium chromium-driver`; scripts/test \
             installs them)"
        );
    }
}

/// The service on SQLite with the demo knowledge base, serving both pages.
async fn desk_app() -> TestApp {
    spawn_app_with(Store::Sqlite, crate::engine::with_knowledge).await
}

/// A token whose payload also carries a display name and the language `en`.
fn token(app: &TestApp, role: Role, sub: &str, name: &str) -> String {
    app.state
        .tokens
        .issue(
            sub,
            role,
            Duration::from_secs(3600),
            Some(name.to_string()),
            Some("en".to_string()),
        )
        .expect("the test key signs tokens")
}

/// Puts an advisor online for both languages and every skill, so that any queued
/// conversation is theirs to claim.
async fn advisor_online(app: &TestApp, advisor_token: &str) {
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/advisors/me",
            Some(advisor_token),
            Some(json!({
                "status": "online",
                "languages": ["zh-CN", "en"],
                "skills": ["general", "products", "complaints", "vulnerable_clients"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The client's newest conversation, once the page has created it.
async fn newest_conversation(app: &TestApp, client_token: &str) -> Value {
    let deadline = Instant::now() + UI_PATIENCE;
    loop {
        let (status, body) = app.get("/v1/conversations?limit=20", client_token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(first) = body["conversations"].as_array().and_then(|c| c.first()) {
            return first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the chat page created no conversation within {UI_PATIENCE:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A conversation in English waiting in the advisors' queue, set up over the API.
async fn queued_conversation(app: &TestApp, client_token: &str) -> String {
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/conversations",
            Some(client_token),
            Some(json!({"language": "en"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/conversations/{id}/handoff"),
            Some(client_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    id
}

/// What answering `option_id` to every question of the configured pack leads to: the
/// number of questions and the category. The category must be a middle one (neither the
/// most cautious nor the boldest), and no answer may cap it.
fn outcome_of_answering(app: &TestApp, option_id: &str) -> (usize, String) {
    let pack_id = &app.state.config.questionnaire.pack;
    let packs = wealthdesk::questionnaire::load_packs(
        &crate::engine::shipped("knowledge/questionnaires"),
        false,
    )
    .expect("the shipped questionnaire packs load");
    let pack = packs
        .iter()
        .find(|p| &p.id == pack_id)
        .unwrap_or_else(|| panic!("the configured pack {pack_id} is shipped"));
    let mut score = 0;
    for question in &pack.questions {
        let option = question
            .options
            .iter()
            .find(|o| o.id == option_id)
            .unwrap_or_else(|| panic!("question {} has an option {option_id}", question.id));
        assert!(
            option.cap.is_none(),
            "option {option_id} of {} caps the level",
            question.id
        );
        score += option.points;
    }
    let rank = pack
        .levels
        .iter()
        .position(|l| (l.min_score..=l.max_score).contains(&score))
        .unwrap_or_else(|| panic!("a level covers the score {score}"));
    assert!(
        rank > 0 && rank + 1 < pack.levels.len(),
        "option {option_id} throughout should give a middle level, not {}",
        pack.levels[rank].id
    );
    (pack.questions.len(), pack.levels[rank].id.clone())
}

/// Where the questionnaire stands on the chat page.
struct QuestionnaireProgress {
    /// The highest `data-seq` of a question message (0 before the first).
    newest_question: i64,
    /// Whether an assessment message is shown.
    assessed: bool,
}

const QUESTIONNAIRE_PROGRESS_JS: &str = r#"
const seqs = Array.from(
  document.querySelectorAll('[data-testid="message"][data-kind="question"]'),
  m => Number(m.getAttribute('data-seq')) || 0);
return {
  newest: seqs.length ? Math.max(...seqs) : 0,
  assessed: document.querySelector('[data-testid="message"][data-kind="assessment"]') !== null,
};
"#;

async fn questionnaire_progress(client: &Browser) -> Option<QuestionnaireProgress> {
    let state = client
        .execute(QUESTIONNAIRE_PROGRESS_JS, vec![])
        .await
        .ok()?;
    Some(QuestionnaireProgress {
        newest_question: state["newest"].as_f64().unwrap_or(0.0) as i64,
        assessed: state["assessed"].as_bool().unwrap_or(false),
    })
}

/// Presses `option_id` on each new question until the assessment is shown (at most
/// `limit` questions); returns how many questions were answered.
async fn answer_questionnaire(client: &Browser, option_id: &str, limit: usize) -> usize {
    let mut newest = 0;
    let mut answered = 0;
    loop {
        let what = format!("a question after seq {newest}, or the assessment");
        let progress = client
            .poll(&what, UI_PATIENCE, async || {
                match questionnaire_progress(client).await {
                    Some(p) if p.assessed || p.newest_question > newest => Some(p),
                    _ => None,
                }
            })
            .await;
        if progress.assessed {
            return answered;
        }
        if answered >= limit {
            let what = format!("the assessment within {limit} questions");
            panic!("{}", client.timed_out(&what, UI_PATIENCE).await);
        }
        newest = progress.newest_question;
        // Only the newest question's buttons are enabled; the newest is the last anyway.
        client
            .click_newest(
                &format!(r#"{OPTION}[data-option-id="{option_id}"]:enabled"#),
                UI_PATIENCE,
            )
            .await;
        answered += 1;
    }
}

// ---------------------------------------------------------------------------------------
// A small W3C WebDriver client

/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];

/// `<target>/browser-artifacts/`, created on first use.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `text` reduced to letters, digits and single dashes, for a file name.
fn file_safe(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    let joined = spaced.split_whitespace().collect::<Vec<_>>().join("-");
    joined.chars().take(80).collect()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().unwrap().port()
}

/// What a WebDriver command answered instead of success.
#[derive(Debug)]
struct WebDriverError {
    /// The W3C error code, e.g. `no such element`, `stale element reference`.
    error: String,
    message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// A chromedriver process on a free port; killed when the last browser using it is gone.
struct ChromeDriver {
    base: String,
    http: reqwest::Client,
    log: PathBuf,
    process: Child,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until it reports itself ready.
    async fn start(test: &str) -> Arc<ChromeDriver> {
        require_browser();
        wealthdesk::install_crypto_provider();
        let port = free_port();
        let log = artifacts_dir().join(format!("{test}-chromedriver.log"));
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        // From here on, dropping the driver (also on a panic) kills the process.
        let mut driver = ChromeDriver {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client for chromedriver"),
            log,
            process,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !driver.is_ready().await {
            if let Ok(Some(exit)) = driver.process.try_wait() {
                panic!(
                    "chromedriver exited at start ({exit}); see {}",
                    driver.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready within 20 s; see {}",
                driver.log.display()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        Arc::new(driver)
    }

    async fn is_ready(&self) -> bool {
        match self.call(Method::GET, "/status", None).await {
            Ok(status) => status["ready"].as_bool().unwrap_or(false),
            Err(_) => false,
        }
    }

    /// One WebDriver command; returns the answer's `value`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, url.as_str());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| WebDriverError {
            error: "chromedriver unreachable".into(),
            message: format!("{url}: {e}"),
        })?;
        let status = response.status();
        let mut answer = response.json::<Value>().await.unwrap_or(Value::Null);
        let value = answer
            .get_mut("value")
            .map(Value::take)
            .unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(WebDriverError {
                error: value["error"].as_str().unwrap_or("unknown error").into(),
                message: format!(
                    "{} (HTTP {status} for {path})",
                    value["message"].as_str().unwrap_or_default()
                ),
            })
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// An element found on a page (its WebDriver reference).
#[derive(Debug, Clone)]
struct Element(String);

/// Which of several matching elements to act on.
#[derive(Debug, Clone, Copy)]
enum Which {
    First,
    Last,
}

/// One browser session (its own Chromium with a fresh profile); ended when dropped.
struct Browser {
    driver: Arc<ChromeDriver>,
    session: String,
    /// The test and the page's role, for artifact names.
    test: &'static str,
    who: &'static str,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts a headless Chromium session.
    async fn open(driver: &Arc<ChromeDriver>, test: &'static str, who: &'static str) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("wealthdesk-chromium-")
            .tempdir()
            .expect("a temporary Chromium profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }
            }
        });
        let created = driver
            .call(Method::POST, "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start {CHROMIUM}: {e}; see {}",
                    driver.log.display()
                )
            });
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {created}"))
            .to_string();
        Browser {
            driver: Arc::clone(driver),
            session,
            test,
            who,
            _profile: profile,
        }
    }

    /// A command on this session (`path` starts with `/`).
    async fn command(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    // --- Plain commands ---------------------------------------------------------------

    async fn navigate(&self, url: &str) {
        if let Err(e) = self
            .command(Method::POST, "/url", Some(json!({ "url": url })))
            .await
        {
            panic!("{}: cannot open {url}: {e}", self.who);
        }
    }

    /// Every element matching a CSS selector, in document order.
    async fn find_all(&self, selector: &str) -> Result<Vec<Element>, WebDriverError> {
        let found = self
            .command(
                Method::POST,
                "/elements",
                Some(json!({ "using": "css selector", "value": selector })),
            )
            .await?;
        Ok(found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str())
                    .map(|id| Element(id.to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn element_command(
        &self,
        method: Method,
        element: &Element,
        action: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.command(method, &format!("/element/{}{action}", element.0), body)
            .await
    }

    async fn click_element(&self, element: &Element) -> Result<(), WebDriverError> {
        self.element_command(Method::POST, element, "/click", Some(json!({})))
            .await
            .map(drop)
    }

    async fn clear(&self, element: &Element) -> Result<(), WebDriverError> {
        self.element_command(Method::POST, element, "/clear", Some(json!({})))
            .await
            .map(drop)
    }

    async fn send_keys(&self, element: &Element, text: &str) -> Result<(), WebDriverError> {
        self.element_command(
            Method::POST,
            element,
            "/value",
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// The element's rendered text (empty when it is not displayed).
    async fn text_of(&self, element: &Element) -> Result<String, WebDriverError> {
        let text = self
            .element_command(Method::GET, element, "/text", None)
            .await?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    async fn attribute_of(
        &self,
        element: &Element,
        name: &str,
    ) -> Result<Option<String>, WebDriverError> {
        let value = self
            .element_command(Method::GET, element, &format!("/attribute/{name}"), None)
            .await?;
        Ok(value.as_str().map(str::to_string))
    }

    async fn is_displayed(&self, element: &Element) -> Result<bool, WebDriverError> {
        let shown = self
            .element_command(Method::GET, element, "/displayed", None)
            .await?;
        Ok(shown.as_bool().unwrap_or(false))
    }

    async fn is_enabled(&self, element: &Element) -> Result<bool, WebDriverError> {
        let enabled = self
            .element_command(Method::GET, element, "/enabled", None)
            .await?;
        Ok(enabled.as_bool().unwrap_or(false))
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its result.
    async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, WebDriverError> {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Emulates a slow network: every response reaches the page `latency` late.
    async fn slow_network(&self, latency: Duration) {
        let conditions = json!({
            "network_conditions": {
                "offline": false,
                "latency": latency.as_millis() as f64,
                "download_throughput": 10_485_760.0,
                "upload_throughput": 10_485_760.0,
            }
        });
        if let Err(e) = self
            .command(
                Method::POST,
                "/chromium/network_conditions",
                Some(conditions),
            )
            .await
        {
            panic!("{}: cannot emulate a slow network: {e}", self.who);
        }
    }

    // --- Artifacts ----------------------------------------------------------------------

    fn artifact(&self, step: &str, extension: &str) -> PathBuf {
        artifacts_dir().join(format!("{}-{}-{step}.{extension}", self.test, self.who))
    }

    /// Saves a screenshot of the page as `<test>-<who>-<step>.png`.
    async fn screenshot(&self, step: &str) -> PathBuf {
        self.try_screenshot(step)
            .await
            .unwrap_or_else(|e| panic!("{}: screenshot {step} failed: {e}", self.who))
    }

    async fn try_screenshot(&self, step: &str) -> Result<PathBuf, String> {
        let encoded = self
            .command(Method::GET, "/screenshot", None)
            .await
            .map_err(|e| e.to_string())?;
        let encoded = encoded
            .as_str()
            .ok_or("the screenshot is not base64 text")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| e.to_string())?;
        let path = self.artifact(step, "png");
        std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    async fn try_save_source(&self, step: &str) -> Result<PathBuf, String> {
        let source = self
            .command(Method::GET, "/source", None)
            .await
            .map_err(|e| e.to_string())?;
        let path = self.artifact(step, "html");
        std::fs::write(&path, source.as_str().unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    // --- Waits --------------------------------------------------------------------------

    /// Calls `probe` every 100 ms until it finds something; on timeout, panics naming
    /// `what`, with a screenshot and the page source saved.
    async fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            if Instant::now() >= deadline {
                panic!("{}", self.timed_out(what, timeout).await);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The failure message of a wait, after saving what the page looked like.
    async fn timed_out(&self, what: &str, timeout: Duration) -> String {
        const PAGE_STATE_JS: &str = r#"
return {
  url: location.href,
  alerts: Array.from(document.querySelectorAll('[data-testid="error"]'),
                     e => e.textContent.trim()).filter(t => t.length > 0),
  text: (document.body ? document.body.innerText : '').slice(-1500),
};
"#;
        let step = format!("timeout-{}", file_safe(what));
        let screenshot = match self.try_screenshot(&step).await {
            Ok(path) => path.display().to_string(),
            Err(e) => format!("(none: {e})"),
        };
        let source = match self.try_save_source(&step).await {
            Ok(path) => path.display().to_string(),
            Err(e) => format!("(none: {e})"),
        };
        let page = self
            .execute(PAGE_STATE_JS, vec![])
            .await
            .unwrap_or(Value::Null);
        format!(
            "{} page: timed out after {timeout:?} waiting for {what}\n  url: {}\n  \
             error alerts: {}\n  screenshot: {screenshot}\n  page source: {source}\n  \
             end of the visible text:\n{}",
            self.who, page["url"], page["alerts"], page["text"]
        )
    }

    /// The first element matching `selector`, once there is one.
    async fn wait_for(&self, selector: &str, timeout: Duration) -> Element {
        self.poll(selector, timeout, async || {
            self.find_all(selector)
                .await
                .unwrap_or_default()
                .into_iter()
                .next()
        })
        .await
    }

    /// The elements matching `selector` that are displayed (none while the page is busy).
    async fn displayed(&self, selector: &str) -> Vec<Element> {
        let mut shown = Vec::new();
        for element in self.find_all(selector).await.unwrap_or_default() {
            if self.is_displayed(&element).await.unwrap_or(false) {
                shown.push(element);
            }
        }
        shown
    }

    /// The displayed, enabled elements matching `selector`.
    async fn usable(&self, selector: &str) -> Vec<Element> {
        let mut usable = Vec::new();
        for element in self.displayed(selector).await {
            if self.is_enabled(&element).await.unwrap_or(false) {
                usable.push(element);
            }
        }
        usable
    }

    /// The first displayed element matching `selector`.
    async fn wait_visible(&self, selector: &str, timeout: Duration) -> Element {
        let what = format!("{selector} to be visible");
        self.poll(&what, timeout, async || {
            self.displayed(selector).await.into_iter().next()
        })
        .await
    }

    /// Waits until no element matching `selector` is displayed.
    async fn wait_gone(&self, selector: &str, timeout: Duration) {
        let what = format!("{selector} to be hidden");
        self.poll(&what, timeout, async || {
            self.displayed(selector).await.is_empty().then_some(())
        })
        .await
    }

    /// The text of the first element matching `selector` whose text `accept`s.
    async fn wait_for_text(
        &self,
        selector: &str,
        wanted: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        let what = format!("{selector} showing {wanted}");
        self.poll(&what, timeout, async || {
            for element in self.find_all(selector).await.unwrap_or_default() {
                if let Ok(text) = self.text_of(&element).await
                    && accept(&text)
                {
                    return Some(text);
                }
            }
            None
        })
        .await
    }

    /// The first displayed, enabled element matching `selector`.
    async fn wait_clickable(&self, selector: &str, timeout: Duration) -> Element {
        let what = format!("{selector} to be clickable");
        self.poll(&what, timeout, async || {
            self.usable(selector).await.into_iter().next()
        })
        .await
    }

    // --- Actions (waiting, and retrying while the page re-renders) ----------------------

    /// Clicks the first displayed, enabled element matching `selector`.
    async fn click(&self, selector: &str, timeout: Duration) {
        self.click_one(selector, Which::First, timeout).await
    }

    /// Clicks the last displayed, enabled element matching `selector` (the newest).
    async fn click_newest(&self, selector: &str, timeout: Duration) {
        self.click_one(selector, Which::Last, timeout).await
    }

    async fn click_one(&self, selector: &str, which: Which, timeout: Duration) {
        let what = format!("{selector} to be clickable");
        self.poll(&what, timeout, async || {
            let usable = self.usable(selector).await;
            let target = match which {
                Which::First => usable.first(),
                Which::Last => usable.last(),
            };
            match target {
                Some(element) => self.click_element(element).await.ok(),
                None => None,
            }
        })
        .await
    }

    /// Replaces the content of the first usable field matching `selector` with `text`.
    async fn type_into(&self, selector: &str, text: &str, timeout: Duration) {
        let what = format!("{selector} to take input");
        self.poll(&what, timeout, async || {
            let field = self.usable(selector).await.into_iter().next()?;
            if self.clear(&field).await.is_err() {
                return None;
            }
            self.send_keys(&field, text).await.ok()
        })
        .await
    }

    /// Types `text` into the composer inside `scope` (a selector, or "" for the whole
    /// page) and presses its send button.
    async fn send_message(&self, scope: &str, text: &str, timeout: Duration) {
        let within = |id: &str| format!("{scope} {}", testid(id)).trim().to_string();
        self.type_into(&within("composer"), text, timeout).await;
        self.click(&within("send"), timeout).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (and its Chromium) before the profile directory is removed.
        // Drop cannot await: a short-lived runtime on its own thread sends the request.
        let url = format!("{}/session/{}", self.driver.base, self.session);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(http) = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(15))
                    .build()
                {
                    let _ = http.delete(url).send().await;
                }
            });
        })
        .join();
    }
}

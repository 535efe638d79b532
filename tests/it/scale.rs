//! Several nodes, a bus that goes away, a server that is killed: nothing acknowledged
//! is ever lost, nothing is delivered twice.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use wealthdesk::auth::Role;
use wealthdesk::config::Secret;

use crate::helpers::{TestApp, create_postgres_database, spawn_configured, test_config};
use crate::ws::WsClient;

pub(crate) const SHARED_NATS: &str = "nats://127.0.0.1:4222";

/// Two nodes sharing one PostgreSQL database and one NATS subject space.
pub(crate) async fn two_nodes(
    nats_url: &str,
) -> (
    TestApp,
    TestApp,
    crate::helpers::TestDatabase,
    tempfile::TempDir,
) {
    let (url, database) = create_postgres_database().await;
    let prefix = format!("wdtest{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        let mut config = test_config(&dir.path().join(name));
        config.database_url = Some(Secret::new(url.clone()));
        config.nats_url = Some(Secret::new(nats_url));
        config.nats_subject_prefix = prefix.clone();
        config
    };
    let a = spawn_configured(node("a")).await;
    let b = spawn_configured(node("b")).await;
    for app in [&a, &b] {
        wait_until(|| app.state.im.bus.is_connected(), "the node joins NATS").await;
    }
    (a, b, database, dir)
}

async fn wait_until(condition: impl Fn() -> bool, what: &str) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_deliver_each_others_messages_in_order() {
    let (a, b, _db, _dir) = two_nodes(SHARED_NATS).await;
    let client = a.token(Role::Client, "roaming");
    let advisor = b.token(Role::Advisor, "adv-b");
    let conversation = a.start_conversation(&client).await;
    let base = b.join(&advisor, &client, &conversation).await;

    let mut on_a = a.ws(&client).await;
    let mut on_b = b.ws(&advisor).await;
    on_b.subscribe(&conversation, None).await;
    for i in 0..30 {
        on_a.send_json(json!({"type": "send", "conversation_id": conversation,
            "client_msg_id": format!("c-{i}"), "kind": "text", "body": {"text": format!("q{i}")}}))
            .await;
    }
    assert_eq!(
        on_b.message_seqs(&conversation, 30).await,
        (base + 1..=base + 30).collect::<Vec<_>>()
    );
    for i in 0..10 {
        on_b.send_text(&conversation, &format!("a-{i}"), &format!("answer {i}"))
            .await;
    }
    // The client sees its own 30 and the advisor's 10, one order, no gaps, no repeats.
    assert_eq!(
        on_a.message_seqs(&conversation, 40).await,
        (base + 1..=base + 40).collect::<Vec<_>>()
    );
    assert!(on_a.quiet(&conversation, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_unit_of_work_goes_to_exactly_one_node() {
    let (a, b, _db, _dir) = two_nodes(SHARED_NATS).await;
    let mut work_a = a.state.im.bus.work("test-work").await.unwrap();
    let mut work_b = b.state.im.bus.work("test-work").await.unwrap();
    a.state.im.bus.flush().await;
    b.state.im.bus.flush().await;
    for i in 0..40u32 {
        a.state
            .im
            .bus
            .submit_work("test-work", i.to_string().into())
            .await
            .unwrap();
    }
    a.state.im.bus.flush().await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 40 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(item) = work_a.recv() => seen.push(item),
            Some(item) = work_b.recv() => seen.push(item),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut items: Vec<u32> = seen
        .iter()
        .map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
        .collect();
    items.sort();
    assert_eq!(
        items,
        (0..40).collect::<Vec<_>>(),
        "each item once, none lost"
    );
}

/// A private NATS server this test may kill and restart.
struct PrivateNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateNats {
    fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = PrivateNats {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let binary = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (the CI script makes sure NATS is present)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the private nats-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_conversation_loses_nothing() {
    let mut nats = PrivateNats::start();
    let (a, b, _db, _dir) = two_nodes(&nats.url()).await;
    let client = a.token(Role::Client, "steady");
    let advisor = b.token(Role::Advisor, "adv-steady");
    let conversation = a.start_conversation(&client).await;
    let base = b.join(&advisor, &client, &conversation).await;
    let mut on_a = a.ws(&client).await;
    let mut on_b = b.ws(&advisor).await;
    on_b.subscribe(&conversation, None).await;

    for i in 0..5 {
        on_a.send_text(&conversation, &format!("before-{i}"), "before")
            .await;
    }
    assert_eq!(
        on_b.message_seqs(&conversation, 5).await,
        (base + 1..=base + 5).collect::<Vec<_>>()
    );

    nats.kill();
    wait_until(
        || !a.state.im.bus.is_connected(),
        "node A notices NATS is gone",
    )
    .await;
    // Node A keeps serving its local client: every send is acknowledged.
    for i in 0..10 {
        let ack = on_a
            .send_text(&conversation, &format!("during-{i}"), "during")
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    nats.restart();
    wait_until(
        || a.state.im.bus.is_connected() && b.state.im.bus.is_connected(),
        "both nodes reconnect",
    )
    .await;

    // Node B's advisor gets everything sent during the outage, in order, once.
    assert_eq!(
        on_b.message_seqs(&conversation, 10).await,
        (base + 6..=base + 15).collect::<Vec<_>>()
    );
    on_a.send_text(&conversation, "after", "after").await;
    assert_eq!(on_b.message_seqs(&conversation, 1).await, [base + 16]);
    assert!(on_b.quiet(&conversation, Duration::from_millis(300)).await);
}

const BIN: &str = env!("CARGO_BIN_EXE_wealthdesk");

/// Starts the binary on `data_dir` and returns it with its base URL.
async fn start_binary(data_dir: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("RUST_LOG", "warn")
        // The test pipelines hundreds of frames; lift the per-connection rate limit.
        .env("WEALTHDESK_IM__RATE_PER_SEC", "100000")
        .env("WEALTHDESK_IM__RATE_BURST", "100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("wealthdesk listening on ")
        .unwrap()
        .to_string();
    (child, base)
}

async fn issue_token(data_dir: &Path, role: &str, sub: &str) -> String {
    let out = tokio::process::Command::new(BIN)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "token",
            "issue",
            "--role",
            role,
            "--sub",
            sub,
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, base) = start_binary(&data).await;
    let token = issue_token(&data, "client", "survivor").await;
    wealthdesk::install_crypto_provider();
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conversation = created["id"].as_str().unwrap().to_string();
    // An advisor takes the conversation, so only the client's messages follow the two
    // handoff notices (queued, joined).
    let advisor = issue_token(&data, "advisor", "adv-survivor").await;
    let path = |action: &str| format!("{base}/v1/conversations/{conversation}/{action}");
    let (handoff, claim) = (path("handoff"), path("claim"));
    let requested = http
        .post(handoff)
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(requested.status(), 202);
    let claimed = http
        .post(claim)
        .bearer_auth(&advisor)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status(), 200);
    let notices = 2;
    let ws_url = format!("{}/v1/im/ws", base.replace("http://", "ws://"));

    let mut socket = WsClient::connect(&ws_url, &token).await;
    let total = 2000;
    let send = |i: i32| {
        json!({"type": "send", "id": format!("s{i}"), "conversation_id": conversation,
            "client_msg_id": format!("k-{i}"), "kind": "text", "body": {"text": format!("n{i}")}})
    };
    // Windows of 50 sends, reading the acks; the server is killed while the fourth
    // window is in flight.
    let mut acked = Vec::new();
    for window in 0..4 {
        for i in window * 50..(window + 1) * 50 {
            socket.try_send_json(send(i)).await;
        }
        if window == 3 {
            server.start_kill().unwrap();
        }
        while let Some(ack) = socket.try_expect(|f| f["type"] == "ack").await {
            acked.push(ack["client_msg_id"].as_str().unwrap().to_string());
            socket.forget(|f| f["type"] == "message");
            if window < 3 && acked.len() == (window as usize + 1) * 50 {
                break;
            }
        }
    }
    server.wait().await.unwrap();
    assert!(acked.len() >= 150, "{} acks before the kill", acked.len());

    let (_server, base) = start_binary(&data).await;
    let ws_url = format!("{}/v1/im/ws", base.replace("http://", "ws://"));
    let mut socket = WsClient::connect(&ws_url, &token).await;
    let mut stored = Vec::new();
    let mut after = notices;
    loop {
        let page = socket
            .request(json!({"type": "sync", "conversation_id": conversation, "after_seq": after, "limit": 500}))
            .await;
        let messages = page["messages"].as_array().unwrap().clone();
        for m in &messages {
            after = m["seq"].as_i64().unwrap();
            stored.push((after, m["client_msg_id"].as_str().unwrap().to_string()));
        }
        if page["has_more"] == false {
            break;
        }
    }
    let seqs: Vec<i64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (notices + 1..=notices + stored.len() as i64).collect::<Vec<_>>(),
        "gapless"
    );
    let ids: std::collections::HashSet<&String> = stored.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), stored.len(), "no duplicates");
    for id in &acked {
        assert!(ids.contains(id), "acknowledged {id} survived the kill");
    }
    // Retrying everything after the restart stores only what was missing.
    let before = stored.len();
    // In windows of 100, reading as we go (a client that never reads is disconnected).
    for window in (0..total).collect::<Vec<_>>().chunks(100) {
        for i in window {
            socket
                .send_json(json!({"type": "send", "id": format!("r{i}"), "conversation_id": conversation,
                    "client_msg_id": format!("k-{i}"), "kind": "text", "body": {"text": format!("n{i}")}}))
                .await;
        }
        for i in window {
            let ack = socket.reply(&format!("r{i}")).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            assert_eq!(ack["duplicate"], ids.contains(&format!("k-{i}")));
        }
        socket.forget(|f| f["type"] == "message");
    }
    assert!(
        before < total as usize,
        "the kill landed mid-stream ({before} of {total} stored)"
    );
    let tail = socket
        .request(json!({"type": "sync", "conversation_id": conversation, "after_seq": notices + i64::from(total) - 1}))
        .await;
    assert_eq!(
        tail["messages"][0]["seq"],
        notices + i64::from(total),
        "every message stored once"
    );
    assert_eq!(tail["has_more"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_run_one_conversations_bot_turns_at_once() {
    use wealthdesk::conversation::{session, worker};
    use wealthdesk::im::model::Sender;
    use wealthdesk::im::store::{self, NewMessage};

    let (a, b, _db, _dir) = two_nodes(SHARED_NATS).await;
    let client = a.token(Role::Client, "racer");
    let conversation = a.start_conversation(&client).await;
    let id: wealthdesk::im::ConversationId = conversation.parse().unwrap();
    // Stored directly, so no node was handed the turns yet: both are about to be.
    for (i, text) in ["I want investment advice", "B", "B", "B"]
        .iter()
        .enumerate()
    {
        store::append_message(
            a.db(),
            NewMessage {
                conversation_id: id,
                sender: Sender {
                    id: "racer".into(),
                    role: "client".into(),
                },
                kind: "text".into(),
                body: json!({ "text": text }),
                client_msg_id: Some(format!("r{i}")),
            },
        )
        .await
        .unwrap();
    }
    // Node B is handed the same conversation while node A is part-way through it.
    let (on_a, on_b) = tokio::join!(worker::run_turns(&a.state.im, &a.state.desk, id), async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        worker::run_turns(&b.state.im, &b.state.desk, id).await
    });
    on_a.unwrap();
    on_b.unwrap();

    let session = session::load(a.db(), id).await.unwrap().unwrap();
    assert_eq!(session.position, 3, "three answers, each taken once");
    assert_eq!(
        session.answers[..3]
            .iter()
            .map(|a| a.as_deref())
            .collect::<Vec<_>>(),
        [Some("b"), Some("b"), Some("b")]
    );
    assert!(session.answers[3..].iter().all(Option::is_none));
    let messages = store::list_messages(a.db(), id, 0, 100).await.unwrap();
    let bot: Vec<&str> = messages
        .iter()
        .filter(|m| m.sender.role == "bot")
        .map(|m| m.kind.as_str())
        .collect();
    assert_eq!(
        bot,
        ["text", "question", "question", "question", "question"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_bot_lease_has_one_holder_at_a_time() {
    use wealthdesk::conversation::session::{acquire_lease, release_lease};
    let (url, _database) = create_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database_url = Some(Secret::new(url));
    let app = spawn_configured(config).await;
    let client = app.token(Role::Client, "leased");
    let id: wealthdesk::im::ConversationId = app.start_conversation(&client).await.parse().unwrap();

    assert!(acquire_lease(app.db(), id, "node-a", 30_000).await.unwrap());
    assert!(
        !acquire_lease(app.db(), id, "node-b", 30_000).await.unwrap(),
        "taken"
    );
    assert!(
        acquire_lease(app.db(), id, "node-a", 30_000).await.unwrap(),
        "the holder renews"
    );
    release_lease(app.db(), id, "node-b").await.unwrap();
    assert!(
        !acquire_lease(app.db(), id, "node-b", 30_000).await.unwrap(),
        "only the holder releases"
    );
    release_lease(app.db(), id, "node-a").await.unwrap();
    assert!(acquire_lease(app.db(), id, "node-b", 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        acquire_lease(app.db(), id, "node-a", 30_000).await.unwrap(),
        "an expired lease is free"
    );
}

//! IM load benchmark. Starts wealthdesk servers as separate processes (SQLite,
//! PostgreSQL, and an in-memory relay with the same protocol but no persistence), or
//! targets a running one, opens client/advisor WebSocket pairs plus idle connections,
//! and measures what users feel: delivered messages per second, send→delivery latency,
//! acknowledged-but-undelivered messages (must be 0), duplicates, and server memory per
//! connection.
//!
//! ```text
//! cargo run --release --bin imbench -- --targets sqlite,postgres,relay --pairs 200 --duration 10
//! cargo run --release --bin imbench -- --targets sqlite --idle 10000 --pairs 0
//! cargo run --release --bin imbench -- --targets sqlite --pairs 100 --rate 2000 --json
//! cargo run --release --bin imbench -- --targets sqlite,sqlite-unarchived,postgres,postgres-unarchived
//! ```

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wealthdesk::auth::{Claims, Role};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load benchmark for the wealthdesk IM backbone")]
struct Args {
    /// Servers to start and measure, in order: sqlite, postgres, relay.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres,relay")]
    targets: Vec<String>,
    /// Measure an already running server instead (needs --jwt-secret).
    #[arg(long)]
    url: Option<String>,
    /// The HS256 secret of the running server given by --url.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Client/advisor pairs exchanging messages (one conversation each).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Extra idle connections to hold open during the run.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Total messages per second across all clients; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged sends each client keeps in flight when --rate is 0.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// PostgreSQL administrative URL used to create the benchmark database; the server
    /// gets the same URL with the database replaced (query options kept). TLS is off by
    /// default: see the README's note on TLS and Nagle's algorithm.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    postgres: String,
    /// The wealthdesk binary to start (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    target: String,
    connections_held: usize,
    pairs: usize,
    duration_secs: f64,
    sent: u64,
    acked: u64,
    delivered: u64,
    delivered_per_sec: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_p999: f64,
    acked_but_undelivered: u64,
    duplicates: u64,
    errors: u64,
    server_rss_mib: Option<f64>,
    server_rss_kib_per_connection: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    wealthdesk::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let mut reports = Vec::new();
    if let Some(url) = &args.url {
        let secret = args
            .jwt_secret
            .clone()
            .context("--url needs --jwt-secret (the server's auth.jwt_secret)")?;
        let target = Target {
            name: "external".into(),
            base: url.trim_end_matches('/').to_string(),
            secret,
            pid: None,
        };
        reports.push(measure(&args, &target).await?);
    } else {
        for name in &args.targets {
            let server = Server::start(&args, name).await?;
            let report = measure(&args, &server.target).await;
            server.stop().await;
            reports.push(report?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports);
    }
    Ok(())
}

struct Target {
    name: String,
    base: String,
    secret: String,
    pid: Option<u32>,
}

struct Server {
    target: Target,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pg_database: Option<(String, String)>,
}

impl Server {
    async fn start(args: &Args, name: &str) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let bin = match &args.server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("wealthdesk"),
        };
        let mut command = tokio::process::Command::new(&bin);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("WEALTHDESK_AUTH__JWT_SECRET", &secret)
            .env("WEALTHDESK_IM__RATE_PER_SEC", "100000")
            .env("WEALTHDESK_IM__RATE_BURST", "100000")
            .env("WEALTHDESK_DATABASE__MAX_CONNECTIONS", "32")
            .env("WEALTHDESK_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut pg_database = None;
        // `<store>-unarchived`: the same store without the archive, the archive's baseline.
        let store = match name.strip_suffix("-unarchived") {
            Some(store) => {
                command.env("WEALTHDESK_ARCHIVE__BENCHMARK_WITHOUT_ARCHIVE", "true");
                store
            }
            None => name,
        };
        match store {
            "sqlite" => {}
            "relay" => {
                command.env("WEALTHDESK_IM__RELAY_WITHOUT_PERSISTENCE", "true");
            }
            "postgres" => {
                let db = format!("wd_bench_{}", uuid::Uuid::new_v4().simple());
                let admin = sqlx::PgPool::connect(&args.postgres)
                    .await
                    .with_context(|| format!("connecting to {}", args.postgres))?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                command.env("WEALTHDESK_DATABASE_URL", database_url(&args.postgres, &db));
                pg_database = Some((args.postgres.clone(), db));
            }
            other => bail!(
                "unknown target {other:?} (use sqlite, postgres or relay; sqlite-unarchived or postgres-unarchived for the archive's baseline)"
            ),
        }
        let mut child = command.spawn().with_context(|| {
            format!("starting {} (build it with --release first)", bin.display())
        })?;
        let mut lines = BufReader::new(child.stdout.take().context("server stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the server did not start within 60 s")??
            .context("the server exited")?;
        let base = line
            .strip_prefix("wealthdesk listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_string();
        let pid = child.id();
        Ok(Server {
            target: Target {
                name: name.into(),
                base,
                secret,
                pid,
            },
            child,
            _dir: dir,
            pg_database,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some((admin, db)) = self.pg_database.take()
            && let Ok(pool) = sqlx::PgPool::connect(&admin).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
            )))
            .execute(&pool)
            .await;
        }
    }
}

/// `postgres://h/admin?opts` with the database replaced by `db`, options kept.
fn database_url(admin: &str, db: &str) -> String {
    let (url, query) = admin
        .split_once('?')
        .map_or((admin, None), |(u, q)| (u, Some(q)));
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn token(secret: &str, sub: &str, role: Role) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: sub.into(),
        role,
        iat: now,
        exp: now + 3600,
        name: None,
        lang: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing cannot fail")
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(ws_url: &str, token: &str) -> Result<Socket> {
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    // The hello frame.
    match tokio::time::timeout(Duration::from_secs(30), socket.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => Ok(socket),
        other => bail!("no hello frame: {other:?}"),
    }
}

/// Opens `tokens.len()` sockets, at most 256 handshakes at a time.
async fn connect_many(ws_url: &str, tokens: Vec<String>) -> Result<Vec<Socket>> {
    let results: Vec<Result<Socket>> = futures::stream::iter(tokens)
        .map(|t| {
            let url = ws_url.to_string();
            async move { connect(&url, &t).await }
        })
        .buffered(256)
        .collect()
        .await;
    results.into_iter().collect()
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
}

async fn measure(args: &Args, target: &Target) -> Result<Report> {
    let http = reqwest::Client::new();
    let ws_url = format!("{}/v1/im/ws", target.base.replace("http://", "ws://"));
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let rss_before = rss_kib(target.pid);

    // Conversations: each client starts one and asks for its advisor, who claims it.
    let mut pairs = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        let client = token(
            &target.secret,
            &format!("bench-c-{run_id}-{i}"),
            Role::Client,
        );
        let advisor = token(
            &target.secret,
            &format!("bench-a-{run_id}-{i}"),
            Role::Advisor,
        );
        let created: Value = http
            .post(format!("{}/v1/conversations", target.base))
            .bearer_auth(&client)
            .json(&json!({"language": "en"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let conversation = created["id"]
            .as_str()
            .context("conversation id")?
            .to_string();
        // The client asks for a person and the advisor claims: a human conversation.
        for (action, who) in [("handoff", &client), ("claim", &advisor)] {
            http.post(format!(
                "{}/v1/conversations/{conversation}/{action}",
                target.base
            ))
            .bearer_auth(who)
            .json(&json!({}))
            .send()
            .await?
            .error_for_status()?;
        }
        pairs.push((client, advisor, conversation));
    }

    let idle_tokens: Vec<String> = (0..args.idle)
        .map(|i| {
            token(
                &target.secret,
                &format!("bench-idle-{run_id}-{i}"),
                Role::Client,
            )
        })
        .collect();
    let idle = connect_many(&ws_url, idle_tokens).await?;
    let clients = connect_many(&ws_url, pairs.iter().map(|p| p.0.clone()).collect()).await?;
    let mut advisors = connect_many(&ws_url, pairs.iter().map(|p| p.1.clone()).collect()).await?;
    for (socket, (_, _, conversation)) in advisors.iter_mut().zip(&pairs) {
        socket
            .send(Message::Text(
                json!({"type": "subscribe", "conversation_id": conversation})
                    .to_string()
                    .into(),
            ))
            .await?;
    }
    let connections = idle.len() + clients.len() + advisors.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_held = rss_kib(target.pid);

    let tally = Arc::new(Tally::default());
    let epoch = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let acked_seqs: Arc<Mutex<HashMap<String, HashSet<i64>>>> = Arc::default();
    let delivered_seqs: Arc<Mutex<HashMap<String, HashSet<i64>>>> = Arc::default();
    let stop_at = epoch + Duration::from_secs(args.duration);
    let per_client_interval = if args.rate > 0 && !pairs.is_empty() {
        Some(Duration::from_secs_f64(
            pairs.len() as f64 / args.rate as f64,
        ))
    } else {
        None
    };

    let mut receivers = Vec::new();
    for (socket, (_, _, conversation)) in advisors.into_iter().zip(&pairs) {
        let tally = tally.clone();
        let latencies = latencies.clone();
        let delivered_seqs = delivered_seqs.clone();
        let conversation = conversation.clone();
        receivers.push(tokio::spawn(async move {
            let (_sink, mut stream) = socket.split();
            let mut seen = HashSet::new();
            let mut local = Vec::new();
            let drain_until = stop_at + Duration::from_secs(5);
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout_at(drain_until.into(), stream.next()).await
            {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if frame["type"] != "message" {
                    continue;
                }
                let seq = frame["message"]["seq"].as_i64().unwrap_or(-1);
                if !seen.insert(seq) {
                    tally.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                tally.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = frame["message"]["body"]["t"].as_u64() {
                    let now = epoch.elapsed().as_micros() as u64;
                    local.push(now.saturating_sub(sent));
                }
            }
            latencies.lock().await.extend(local);
            delivered_seqs.lock().await.insert(conversation, seen);
        }));
    }

    let mut senders = Vec::new();
    for (index, (socket, (_, _, conversation))) in clients.into_iter().zip(&pairs).enumerate() {
        let tally = tally.clone();
        let acked_seqs = acked_seqs.clone();
        let conversation = conversation.clone();
        let window = args.window.max(1);
        senders.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let mut in_flight = 0usize;
            let mut n = 0u64;
            let mut acks = HashSet::new();
            let mut next_send = tokio::time::Instant::now()
                + per_client_interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / 64.0 % 1.0));
            loop {
                let now = Instant::now();
                let may_send = now < stop_at
                    && match per_client_interval {
                        Some(_) => tokio::time::Instant::now() >= next_send,
                        None => in_flight < window,
                    };
                if may_send {
                    let frame = json!({"type": "send", "conversation_id": conversation,
                        "client_msg_id": format!("m{n}"), "kind": "text",
                        "body": {"text": "benchmark message", "t": epoch.elapsed().as_micros() as u64}});
                    if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                        break;
                    }
                    n += 1;
                    in_flight += 1;
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    if let Some(interval) = per_client_interval {
                        next_send += interval;
                    }
                    continue;
                }
                if now >= stop_at && in_flight == 0 {
                    break;
                }
                let wait_until = match per_client_interval {
                    Some(_) if now < stop_at => next_send,
                    _ => tokio::time::Instant::from_std(stop_at + Duration::from_secs(5)),
                };
                match tokio::time::timeout_at(wait_until, stream.next()).await {
                    Err(_) if now >= stop_at => break,
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                        match frame["type"].as_str() {
                            Some("ack") => {
                                in_flight = in_flight.saturating_sub(1);
                                tally.acked.fetch_add(1, Ordering::Relaxed);
                                acks.insert(frame["seq"].as_i64().unwrap_or(-1));
                            }
                            Some("error") => {
                                in_flight = in_flight.saturating_sub(1);
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => break,
                }
            }
            acked_seqs.lock().await.insert(conversation, acks);
        }));
    }
    for sender in senders {
        sender.await?;
    }
    let load_secs = epoch
        .elapsed()
        .as_secs_f64()
        .min(args.duration as f64 + 5.0);
    for receiver in receivers {
        receiver.await?;
    }
    drop(idle);

    let acked = acked_seqs.lock().await;
    let delivered = delivered_seqs.lock().await;
    let undelivered: u64 = acked
        .iter()
        .map(|(conversation, seqs)| {
            let got = delivered.get(conversation);
            seqs.iter()
                .filter(|s| got.is_none_or(|g| !g.contains(s)))
                .count() as u64
        })
        .sum();
    let mut lat = latencies.lock().await.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let delivered_total = tally.delivered.load(Ordering::Relaxed);
    let per_connection = match (rss_before, rss_held) {
        (Some(before), Some(held)) if connections > 0 => {
            Some(held.saturating_sub(before) as f64 / connections as f64)
        }
        _ => None,
    };
    Ok(Report {
        target: target.name.clone(),
        connections_held: connections,
        pairs: pairs.len(),
        duration_secs: args.duration as f64,
        sent: tally.sent.load(Ordering::Relaxed),
        acked: tally.acked.load(Ordering::Relaxed),
        delivered: delivered_total,
        delivered_per_sec: delivered_total as f64
            / (args.duration as f64).max(f64::EPSILON).min(load_secs),
        latency_ms_p50: pct(0.50),
        latency_ms_p99: pct(0.99),
        latency_ms_p999: pct(0.999),
        acked_but_undelivered: undelivered,
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        server_rss_mib: rss_held.map(|k| k as f64 / 1024.0),
        server_rss_kib_per_connection: per_connection,
    })
}

fn print_table(reports: &[Report]) {
    println!(
        "{:<9} {:>6} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>5} {:>5} {:>9} {:>9}",
        "target",
        "conns",
        "sent",
        "acked",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "undeliv",
        "dups",
        "errs",
        "rss MiB",
        "KiB/conn"
    );
    for r in reports {
        println!(
            "{:<9} {:>6} {:>9} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>5} {:>5} {:>9} {:>9}",
            r.target,
            r.connections_held,
            r.sent,
            r.acked,
            r.delivered_per_sec,
            r.latency_ms_p50,
            r.latency_ms_p99,
            r.latency_ms_p999,
            r.acked_but_undelivered,
            r.duplicates,
            r.errors,
            r.server_rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
            r.server_rss_kib_per_connection
                .map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    let relay = reports.iter().find(|r| r.target == "relay");
    if let Some(relay) = relay.filter(|r| r.delivered_per_sec > 0.0) {
        for r in reports.iter().filter(|r| r.target != "relay") {
            println!(
                "{}: {:.2}× the relay's throughput, p99 {:.2}× the relay's",
                r.target,
                r.delivered_per_sec / relay.delivered_per_sec,
                if relay.latency_ms_p99 > 0.0 {
                    r.latency_ms_p99 / relay.latency_ms_p99
                } else {
                    0.0
                },
            );
        }
    }
}

//! `spawn_app()`: a real wealthdesk on port 0 with a fresh, migrated database — a temp
//! SQLite file, or a PostgreSQL database created for the test and dropped after it.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wealthdesk::app::AppState;
use wealthdesk::auth::Role;
use wealthdesk::config::{Config, Secret};
use wealthdesk::{Application, db::Db};

/// Administrative connection used to create and drop per-test PostgreSQL databases.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    _data_dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _database: TestDatabase,
}

/// The per-test database; a PostgreSQL one is dropped when the test ends.
pub enum TestDatabase {
    Sqlite,
    Postgres { name: String },
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { name } = self {
            let name = name.clone();
            // Drop runs outside async context guarantees; use a private runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(admin) = sqlx::PgPool::connect(&postgres_admin_url()).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&admin)
                        .await;
                        admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A configuration for a test: port 0, a temp data dir, a fixed HS256 secret.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.auth.jwt_secret = Some(Secret::new("test-secret-that-is-long-enough-0123456789"));
    config.http.shutdown_grace_secs = 2;
    config.log.filter = "warn".into();
    // Scenarios that need the knowledge base ingest it themselves.
    config.knowledge.ingest_on_start = false;
    config
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn create_postgres_database() -> (String, TestDatabase) {
    let name = format!("wd_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&postgres_admin_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL must be reachable at {} for the PostgreSQL half of the suite \
             (set TEST_POSTGRES_URL to point elsewhere): {e}",
                postgres_admin_url()
            )
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .expect("create the test database");
    admin.close().await;
    let base = postgres_admin_url();
    let url = match base.rfind('/') {
        Some(i) if base[..i].ends_with(|c: char| c != '/') => format!("{}/{name}", &base[..i]),
        _ => format!("{base}/{name}"),
    };
    (url, TestDatabase::Postgres { name })
}

pub async fn spawn_app(store: Store) -> TestApp {
    spawn_app_with(store, |_| {}).await
}

/// Like [`spawn_app`], letting the test adjust the configuration first.
pub async fn spawn_app_with(store: Store, adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_test_log();
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(data_dir.path());
    let database = match store {
        Store::Sqlite => TestDatabase::Sqlite,
        Store::Postgres => {
            let (url, db) = create_postgres_database().await;
            config.database_url = Some(Secret::new(url));
            db
        }
    };
    adjust(&mut config);
    let mut app = spawn_configured(config).await;
    app._database = database;
    app._data_dir = data_dir;
    app
}

/// Starts a service exactly as configured (e.g. a second node on a shared database).
pub async fn spawn_configured(config: Config) -> TestApp {
    init_test_log();
    let application = Application::build(config)
        .await
        .expect("the service starts");
    let addr = application.local_addr();
    let state = application.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = rx.await;
    }));
    wealthdesk::install_crypto_provider();
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        state,
        _data_dir: tempfile::tempdir().unwrap(),
        shutdown: Some(tx),
        server: Some(server),
        _database: TestDatabase::Sqlite,
    }
}

fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

impl TestApp {
    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// A token for `sub` with `role`, signed with the app's key.
    pub fn token(&self, role: Role, sub: &str) -> String {
        self.state
            .tokens
            .issue(sub, role, Duration::from_secs(600), None, None)
            .unwrap()
    }

    /// The WebSocket URL of the gateway.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/im/ws", self.addr)
    }

    /// Opens a WebSocket as `token` and reads the `hello` frame.
    pub async fn ws(&self, token: &str) -> crate::ws::WsClient {
        crate::ws::WsClient::connect(&self.ws_url(), token).await
    }

    /// The client asks for a person and the advisor claims the conversation from the
    /// queue, so the advisor owns it and may take part in it.
    /// The client asks for a person and the advisor claims the conversation; returns the
    /// seq of the last handoff notice (what the two say next comes after it).
    pub async fn join(&self, advisor_token: &str, client_token: &str, conversation: &str) -> i64 {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/conversations/{conversation}/handoff"),
                Some(client_token),
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/conversations/{conversation}/claim"),
                Some(advisor_token),
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = conversation.parse().expect("a conversation id");
        wealthdesk::im::store::last_seqs(self.db(), &[id])
            .await
            .expect("the store answers")
            .first()
            .map_or(0, |(_, seq)| *seq)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and
    /// the JSON body (Null when the body is empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// A client starts a conversation; returns its id.
    pub async fn start_conversation(&self, client_token: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/conversations",
                Some(client_token),
                Some(serde_json::json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Stops the server and waits until it has drained and closed its pool.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts an error response: status and stable code.
#[track_caller]
pub fn assert_error(actual: (StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(actual.0, status, "body: {}", actual.1);
    assert_eq!(actual.1["error"], code, "body: {}", actual.1);
    assert!(
        actual.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error carries a sentence: {}",
        actual.1
    );
}

/// Declares each listed `async fn(TestApp)` as two tests: one on SQLite, one on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::spawn_app($crate::helpers::Store::Sqlite).await).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::spawn_app($crate::helpers::Store::Postgres).await).await
                }
            )+
        }
    };
}

//! Assembly: the shared state, the one router every module's routes merge into, and the
//! server's lifecycle (bind first, serve until shutdown, drain, close the pool).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::auth::TokenService;
use crate::config::Config;
use crate::db::Db;
use crate::error::AppError;
use crate::http::extract::BodyLimit;
use crate::http::{health, metrics};
use crate::im;

/// What every handler can reach. Cheap to clone: everything inside is shared.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The relational store; the pool is closed by [`Application::run_until`] on shutdown.
    pub db: Db,
    /// Token verification (and issuing, with a shared secret).
    pub tokens: Arc<TokenService>,
    /// This service's metrics registry.
    pub metrics: Arc<metrics::Metrics>,
    /// The validated configuration this process started with.
    pub config: Arc<Config>,
    /// The IM backbone: hub, bus, group committer.
    pub im: Arc<im::Im>,
    /// What the bot works with (questionnaire pack, products).
    pub desk: crate::conversation::Desk,
    /// Ownership, the advisor queue, its timers and packets.
    pub handoffs: crate::handoff::Handoffs,
    /// Product sheets and FAQs in the vector store.
    pub knowledge: crate::knowledge::KnowledgeBase,
    /// Cancelled when the server begins shutting down; long-lived streams end on it.
    pub shutdown: CancellationToken,
    /// Every WebSocket task; shutdown waits for them (bounded by the grace period).
    pub tasks: TaskTracker,
    /// Signs the archive's checkpoints (and the one every export carries).
    pub signer: Arc<crate::archive::checkpoint::Signer>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wealthdesk",
        description = "AI advisory desk: conversations, risk profiling, suitable products, human handoff and compliance review."
    ),
    paths(
        health::healthz,
        health::readyz,
        im::api::create_conversation,
        im::api::list_conversations,
        im::api::get_conversation,
        im::api::list_messages,
        im::api::post_message,
        im::api::events,
        crate::questionnaire::api::risk_profile,
        crate::knowledge::api::search,
        crate::knowledge::api::document,
        crate::conversation::api::turns,
        crate::handoff::api::request_handoff,
        crate::handoff::api::handoff_state,
        crate::handoff::api::queue,
        crate::handoff::api::claim,
        crate::handoff::api::packet_of,
        crate::handoff::api::transfer,
        crate::handoff::api::hand_back,
        crate::handoff::api::close,
        crate::handoff::api::advisors,
        crate::handoff::api::me,
        crate::handoff::api::update_me,
        crate::handoff::api::my_conversations,
        crate::archive::api::set_hold,
        crate::archive::api::lift_hold,
        crate::archive::api::list_holds,
        crate::review::api::search_conversations,
        crate::review::api::export_search,
        crate::review::api::show_dashboard,
        crate::review::api::audit_trail,
        crate::review::api::view,
        crate::review::api::replay,
        crate::review::api::export_one,
        crate::review::api::add_review,
        crate::review::api::add_label,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The content security policy of the web pages: same-origin scripts and sockets only.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Every route of the service with its middleware.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let timeout = Duration::from_secs(config.http.request_timeout_secs);
    // Plain requests get a deadline; sockets and event streams live as long as they need.
    let requests = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi_json))
        .merge(im::api::router())
        .merge(crate::questionnaire::api::router())
        .merge(crate::knowledge::api::router())
        .merge(crate::conversation::api::router())
        .merge(crate::handoff::api::router())
        .merge(crate::archive::api::router())
        .merge(crate::review::api::router())
        .merge(crate::web::router())
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    move |error: tower::BoxError| async move {
                        if error.is::<tower::timeout::error::Elapsed>() {
                            AppError::Timeout(timeout.as_secs())
                        } else {
                            AppError::Internal(anyhow::anyhow!(error))
                        }
                    },
                ))
                .timeout(timeout),
        );
    let api = Router::new()
        .merge(requests)
        .merge(im::api::streams())
        .route("/v1/im/ws", get(im::gateway::upgrade))
        .fallback(|request: Request| async move {
            AppError::RouteNotFound(format!("{} {}", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            AppError::MethodNotAllowed(format!("{} {}", request.method(), request.uri().path()))
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(config.http.max_body_bytes))
        .layer(axum::Extension(BodyLimit(config.http.max_body_bytes)))
        .with_state(state);

    let mut app = api
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
    if config.http.hsts {
        app = app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ));
    }
    if !config.http.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = config
            .http
            .cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(o).expect("validated at load"))
            .collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(Duration::from_secs(600)),
        );
    }
    let request_id = HeaderName::from_static("x-request-id");
    app.layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// What the bot works with, from the configuration: the questionnaire, the catalogue,
/// prompts, the LLM (or offline composer), the guardrails, the turn ledger and the
/// handoff service (whose SLA timers start here).
pub fn assemble_desk(
    config: &Config,
    db: &Db,
    im: &im::Im,
    knowledge: crate::knowledge::KnowledgeBase,
    handoff_metrics: Arc<crate::handoff::HandoffMetrics>,
) -> anyhow::Result<crate::conversation::Desk> {
    let pack = Arc::new(load_questionnaire(config)?);
    let prompts = load_prompts(config)?;
    let catalog = Arc::new(load_catalog(config)?);
    let guard = load_guard(config, catalog.clone(), &prompts)?;
    im.set_guard(guard.clone());
    let writer = crate::llm::Writer::new(&config.llm, prompts);
    let handoffs = crate::handoff::Handoffs::start(
        db.clone(),
        im.bus.clone(),
        config.handoff.clone(),
        handoff_metrics,
        crate::handoff::packet::Summarizer {
            writer: writer.clone(),
            guard: guard.clone(),
            pack: pack.clone(),
        },
    );
    Ok(crate::conversation::Desk {
        db: db.clone(),
        pack,
        validity_months: config.questionnaire.validity_months,
        catalog,
        knowledge,
        writer,
        bot: config.bot.clone(),
        ledger: crate::conversation::ledger::Ledger::start(db.clone(), handoffs.clone()),
        guard,
        handoffs,
    })
}

/// A service bound to its port, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Binds the listener, opens and migrates the database, and loads the signing keys.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        crate::install_crypto_provider();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let tokens = TokenService::from_config(&config)?;
        let db = Db::connect(&config).await?;
        db.migrate().await?;
        let im = im::Im::start(db.clone(), &config).await?;
        let knowledge = open_knowledge(&config, &db).await?;
        let metrics = Arc::new(metrics::Metrics::new());
        let desk = assemble_desk(
            &config,
            &db,
            &im,
            knowledge.clone(),
            metrics.handoff.clone(),
        )?;
        let handoffs = desk.handoffs.clone();
        match &config.llm.base_url {
            Some(url) => {
                tracing::info!(base_url = %url, model = %config.llm.model, "the bot writes with an LLM")
            }
            None => tracing::info!(
                "no LLM configured: the bot answers offline, quoting the knowledge base"
            ),
        }
        crate::conversation::worker::start(im.clone(), desk.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the bot worker: {e}"))?;
        let shutdown = CancellationToken::new();
        if config.archive.benchmark_without_archive {
            tracing::warn!("the archive is off (benchmark baseline): records are not provable");
            crate::archive::disable_for_benchmark();
        }
        // Loading the archive key now makes a bad key file stop the start, not a checkpoint.
        let signer = crate::archive::checkpoint::Signer::load_or_create(
            &config.archive.key_path(&config.data_dir),
        )?;
        crate::archive::checkpoint::every(
            db.clone(),
            signer.clone(),
            Duration::from_secs(config.archive.checkpoint_secs),
            shutdown.clone(),
        );
        crate::archive::retention::every(
            db.clone(),
            config.archive.clone(),
            Duration::from_secs(config.archive.purge_interval_secs),
            shutdown.clone(),
        );
        crate::archive::backlog::every(
            db.clone(),
            Duration::from_millis(config.archive.append_ms),
            shutdown.clone(),
        );
        crate::review::text::every(
            db.clone(),
            Duration::from_secs(config.review.index_secs),
            shutdown.clone(),
        );
        let state = AppState {
            signer: Arc::new(signer),
            db,
            tokens: Arc::new(tokens),
            metrics,
            config: Arc::new(config),
            im,
            desk,
            handoffs,
            knowledge,
            shutdown,
            tasks: TaskTracker::new(),
        };
        Ok(Application { listener, state })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives in-flight requests
    /// `http.shutdown_grace_secs` to finish, and closes the database pool.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let grace = Duration::from_secs(self.state.config.http.shutdown_grace_secs);
        let db = self.state.db.clone();
        let cancel = self.state.shutdown.clone();
        let tasks = self.state.tasks.clone();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let server =
            axum::serve(self.listener, router(self.state)).with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; closing sockets and streams");
                cancel.cancel();
                let _ = stopping_tx.send(());
            });
        // Upgraded sockets are not the HTTP server's to wait for: wait for them here.
        let server = async move {
            let result = server.await;
            tasks.close();
            tasks.wait().await;
            result
        };
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => result.context("the HTTP server failed")?,
            () = deadline => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
        }
        // Messages accepted up to the end are archived before the store closes.
        match crate::archive::backlog::archive_pending(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "archived the last messages"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot archive the last messages: the next start will")
            }
        }
        db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The configured questionnaire pack, validated (a broken file stops startup, naming it).
pub fn load_questionnaire(config: &Config) -> anyhow::Result<crate::questionnaire::Pack> {
    let q = &config.questionnaire;
    let is_default = q.dir == std::path::Path::new(crate::config::DEFAULT_QUESTIONNAIRE_DIR);
    let packs = crate::questionnaire::load_packs(&q.dir, is_default)?;
    let ids: Vec<&str> = packs.iter().map(|p| p.id.as_str()).collect();
    let found = packs.iter().find(|p| p.id == q.pack).cloned();
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "configuration error: questionnaire.pack: no pack {:?} in {} (found: {})",
            q.pack,
            q.dir.display(),
            ids.join(", ")
        )
    })
}

/// Opens the knowledge base and, when configured, ingests `knowledge.dir` (unchanged
/// files cost nothing). A broken knowledge file stops startup, naming file and field; an
/// absent default directory (a binary run outside the source tree) is skipped.
pub async fn open_knowledge(
    config: &Config,
    db: &Db,
) -> anyhow::Result<crate::knowledge::KnowledgeBase> {
    let kb = crate::knowledge::KnowledgeBase::open(config, db.clone()).await?;
    let dir = &config.knowledge.dir;
    let is_default = dir == std::path::Path::new(crate::config::DEFAULT_KNOWLEDGE_DIR);
    if config.knowledge.ingest_on_start {
        if !dir.exists() && is_default {
            tracing::warn!(dir = %dir.display(), "no knowledge base to ingest");
        } else {
            let report = kb.ingest(dir).await?;
            tracing::info!(
                documents = report.documents,
                added = report.added.len(),
                updated = report.updated.len(),
                removed = report.removed.len(),
                chunks = report.chunks,
                elapsed_ms = report.elapsed_ms as u64,
                "knowledge base ingested"
            );
        }
    }
    Ok(kb)
}

/// The prompt templates, validated (a broken template stops startup, naming it). The
/// default directory absent (a binary run outside the source tree), the templates built
/// into the binary are used.
pub fn load_prompts(config: &Config) -> anyhow::Result<crate::llm::Prompts> {
    let dir = &config.bot.prompts_dir;
    let is_default = dir == std::path::Path::new(crate::config::DEFAULT_PROMPTS_DIR);
    if !dir.exists() && is_default {
        return Ok(crate::llm::Prompts::built_in()?);
    }
    Ok(crate::llm::Prompts::load(dir)?)
}

/// The guardrail rules of `guardrails.packs`, validated (a broken rule stops startup,
/// naming file and rule); the rules built into the binary when the default directory is
/// absent.
pub fn load_guard(
    config: &Config,
    catalog: Arc<crate::knowledge::Catalog>,
    prompts: &crate::llm::Prompts,
) -> anyhow::Result<crate::guardrails::Guard> {
    use crate::llm::PromptKind;
    let g = &config.guardrails;
    let is_default = g.dir == std::path::Path::new(crate::config::DEFAULT_GUARDRAILS_DIR);
    let rules = if !g.dir.exists() && is_default {
        crate::guardrails::rules::built_in(&g.packs)?
    } else {
        crate::guardrails::rules::load(&g.dir, &g.packs)?
    };
    let system: Vec<String> = [crate::im::Language::ZhCn, crate::im::Language::En]
        .into_iter()
        .map(|l| prompts.get(PromptKind::System, l).body().to_string())
        .collect();
    Ok(crate::guardrails::Guard::new(rules, catalog, &system))
}

/// The product sheets under `knowledge.dir`/products (absent: none, with a warning,
/// unless the directory was configured explicitly).
pub fn load_catalog(config: &Config) -> anyhow::Result<crate::knowledge::Catalog> {
    let dir = config.knowledge.dir.join("products");
    let is_default =
        config.knowledge.dir == std::path::Path::new(crate::config::DEFAULT_KNOWLEDGE_DIR);
    Ok(crate::knowledge::Catalog::load(&dir, is_default)?)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

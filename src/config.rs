//! Layered configuration: defaults in code < `wealthdesk.toml` < `WEALTHDESK_*` environment
//! variables (nested keys joined with `__`) < command-line flags. Validated once at startup.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::im::Language;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The file read from the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "wealthdesk.toml";
/// Prefix of every environment variable the service reads.
pub const ENV_PREFIX: &str = "WEALTHDESK_";

/// The effective configuration of one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds to.
    pub listen: SocketAddr,
    /// Directory for the embedded database, the development signing key and later the
    /// vector store. Created on start.
    pub data_dir: PathBuf,
    /// `sqlite:…` or `postgres://…`. Unset means `sqlite` under `data_dir`.
    pub database_url: Option<Secret>,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub im: ImConfig,
    pub questionnaire: QuestionnaireConfig,
    pub knowledge: KnowledgeConfig,
    pub bot: BotConfig,
    pub llm: LlmConfig,
    pub guardrails: GuardrailsConfig,
    pub handoff: HandoffConfig,
    pub archive: ArchiveConfig,
    pub review: ReviewConfig,
    /// NATS server(s) for multi-node fan-out, e.g. `nats://127.0.0.1:4222`. Unset: one node.
    pub nats_url: Option<Secret>,
    /// Subject prefix on NATS; nodes of one deployment share it.
    pub nats_subject_prefix: String,
    /// Qdrant server for the knowledge base, e.g. `http://qdrant:6334` (gRPC). Unset:
    /// Qdrant Edge in-process under `data_dir/vectors`.
    pub qdrant_url: Option<String>,
    pub qdrant_api_key: Option<Secret>,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImConfig {
    /// Largest text frame accepted, in bytes; larger ones get `frame_too_large`.
    pub max_frame_bytes: usize,
    /// Frames a connection may send per second on average…
    pub rate_per_sec: u32,
    /// …and in one burst.
    pub rate_burst: u32,
    /// Events queued for one connection before it counts as a slow consumer.
    pub send_queue: usize,
    /// Seconds between server heartbeats (WebSocket pings, SSE comments).
    pub heartbeat_secs: u64,
    /// Seconds without any frame from a client before the server closes the socket.
    pub idle_timeout_secs: u64,
    /// Most messages committed in one transaction.
    pub commit_batch_max: usize,
    /// Benchmark baseline only: keep messages in memory, not in the database.
    pub relay_without_persistence: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuestionnaireConfig {
    /// Id of the questionnaire pack the bot runs (e.g. `cn-fund-risk`, `eu-mifid-sri`).
    pub pack: String,
    /// Directory of `*.toml` packs. When it is the default and absent, the packs built
    /// into the binary are used.
    pub dir: PathBuf,
    /// Months a risk profile stays valid.
    pub validity_months: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeConfig {
    /// Root of the knowledge base: product sheets in `products/`, FAQs in `faq/`.
    pub dir: PathBuf,
    /// Ingest `dir` when the service starts (unchanged files cost nothing).
    pub ingest_on_start: bool,
    /// Folder of a sentence-embedding model (model.safetensors, tokenizer.json,
    /// config.json). Unset: `data_dir/models/all-MiniLM-L6-v2` if present, else BM25 only.
    pub embedding_model_dir: Option<PathBuf>,
    /// Query languages the embedding model understands; other languages search BM25
    /// alone. all-MiniLM-L6-v2 is English-only.
    pub dense_languages: Vec<Language>,
    /// Upper bound of a chunk, in cl100k tokens.
    pub chunk_max_tokens: usize,
    /// Prefix of the Qdrant server collection name.
    pub collection_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BotConfig {
    /// Prompt templates (`<kind>.<language>.md`), loaded and validated at startup.
    pub prompts_dir: PathBuf,
    /// How the bot's turns search the knowledge base: `bm25` (the default: a turn stays
    /// within a few milliseconds on a CPU) or `hybrid` (adds the embedding model, about
    /// 10–60 ms of CPU per turn; better recall on English paraphrases).
    pub retrieval: BotRetrieval,
    /// Longest client message the bot takes on, in characters; longer ones are politely
    /// refused and never sent to a model.
    pub max_input_chars: usize,
    /// Retrieved chunks an answer may draw on.
    pub context_chunks: usize,
    /// Products a recommendation presents at most.
    pub max_recommendations: usize,
    /// Name the assistant gives its institution in prompts.
    pub institution: String,
}

/// The tamper-evident archive ([`crate::archive`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The Ed25519 key checkpoints are signed with (hex of its 32-byte seed), created on
    /// first use. Unset: `archive-signing-key` under `data_dir`.
    pub key_file: Option<PathBuf>,
    /// Seconds between signed checkpoints while serving; 0 turns them off (they can
    /// still be made with `wealthdesk archive checkpoint`).
    pub checkpoint_secs: u64,
    /// Milliseconds between runs appending the messages accepted since the last run to
    /// their chains ([`crate::archive::backlog`]); 0 = only before a checkpoint, export
    /// or purge (and when the service stops).
    pub append_ms: u64,
    /// Benchmark baseline only (imbench's `*-unarchived` targets): write no archive
    /// entries, to measure what the archive costs. Verification then reports every
    /// record as inserted (messages as pending); never set it in a deployment.
    pub benchmark_without_archive: bool,
    /// Days a conversation (messages, turn records, handoffs) is kept after its last
    /// activity before the purge removes it, unless under a legal hold.
    pub retain_conversations_days: u32,
    /// Days a client's risk profiles are kept after the newest was assessed.
    pub retain_profiles_days: u32,
    /// Seconds between retention purges while serving; 0 = only `wealthdesk archive purge`.
    pub purge_interval_secs: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            key_file: None,
            checkpoint_secs: 3600,
            append_ms: 500,
            benchmark_without_archive: false,
            retain_conversations_days: 1827,
            retain_profiles_days: 1827,
            purge_interval_secs: 86_400,
        }
    }
}

/// Compliance review ([`crate::review`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Seconds between full-text indexing runs while serving (every search also brings
    /// the index up to date first); 0 = only when searching.
    pub index_secs: u64,
    /// The most conversations one search-result export may hold; a larger result is
    /// refused with `export_too_large` (narrow the range or the filters).
    pub max_export_conversations: u64,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            index_secs: 5,
            max_export_conversations: 100_000,
        }
    }
}

impl ArchiveConfig {
    /// Where the signing key is kept.
    pub fn key_path(&self, data_dir: &std::path::Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("archive-signing-key"))
    }
}

/// The advisor queue: service levels, capacity and when the bot gives up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoffConfig {
    /// Longest wait before an urgent handoff (complaint, vulnerable client) is claimed, in
    /// seconds; past it the handoff is escalated.
    pub sla_urgent_secs: u64,
    /// The same for handoffs the bot could not handle (failures, unsuitable products).
    pub sla_high_secs: u64,
    /// The same for every other handoff (the client asked for a person).
    pub sla_normal_secs: u64,
    /// Conversations an advisor holds at once unless they set their own.
    pub default_capacity: u32,
    /// Bot replies in a row that could not answer (nothing grounded, or blocked by the
    /// output guardrails, or a malformed or empty model reply) before the bot hands over.
    /// The model being out of reach (down, silent, refusing) hands over at once.
    pub max_bot_misses: u32,
    /// Expected wait per queue position when no claim has been timed yet, in seconds.
    pub default_claim_secs: u64,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            sla_urgent_secs: 60,
            sla_high_secs: 120,
            sla_normal_secs: 180,
            default_capacity: 4,
            max_bot_misses: 2,
            default_claim_secs: 90,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotRetrieval {
    Bm25,
    Hybrid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailsConfig {
    /// Rule files (`*.toml`), loaded and validated at startup.
    pub dir: PathBuf,
    /// The rule packs in force (a rule applies when it belongs to one of them).
    pub packs: Vec<String>,
}

/// Where the guardrail rules live in the source tree.
pub const DEFAULT_GUARDRAILS_DIR: &str = "knowledge/guardrails";

impl Default for GuardrailsConfig {
    fn default() -> Self {
        GuardrailsConfig {
            dir: PathBuf::from(DEFAULT_GUARDRAILS_DIR),
            packs: vec!["cn".into(), "global".into()],
        }
    }
}

/// Where the prompt templates live in the source tree.
pub const DEFAULT_PROMPTS_DIR: &str = "prompts";

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            prompts_dir: PathBuf::from(DEFAULT_PROMPTS_DIR),
            retrieval: BotRetrieval::Bm25,
            max_input_chars: 4000,
            context_chunks: 4,
            max_recommendations: 3,
            institution: "Harbour Wealth".into(),
        }
    }
}

/// An OpenAI-compatible chat-completions endpoint. Without `base_url` the bot runs
/// offline: answers are composed from the retrieved knowledge, with citations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// e.g. `https://api.openai.com/v1`, `http://vllm:8000/v1`, `http://localhost:11434/v1`.
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
    pub model: String,
    pub temperature: f32,
    /// Most completion tokens per reply.
    pub max_tokens: u32,
    /// The model's context window, in tokens: the prompt budget is what is left after
    /// `max_tokens`.
    pub context_window: u32,
    /// Share of the prompt budget for retrieved context (the rest, after the system
    /// prompt and the question, is conversation history).
    pub context_share: f32,
    /// `cl100k_base` or `o200k_base`: how tokens are counted for the budget.
    pub tokenizer: String,
    /// Milliseconds to wait for the first streamed token of an attempt.
    pub first_token_timeout_ms: u64,
    /// Milliseconds a whole reply may take, retries included.
    pub total_timeout_ms: u64,
    /// Attempts after the first on transient errors (connection, 429, 5xx, broken stream).
    pub max_retries: u32,
    /// First backoff in milliseconds; doubled per retry, with jitter (a 429's
    /// `Retry-After` wins when it fits the deadline).
    pub retry_backoff_ms: u64,
    /// Consecutive failed replies that open the circuit breaker…
    pub breaker_failures: u32,
    /// …and how long it stays open (replies fail fast to the apology) before one trial.
    pub breaker_cooldown_secs: u64,
    /// Price per 1,000 prompt tokens, in `cost_currency`, for the per-turn cost estimate.
    pub prompt_price_per_1k: f64,
    /// Price per 1,000 completion tokens.
    pub completion_price_per_1k: f64,
    pub cost_currency: String,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: None,
            api_key: None,
            model: "gpt-4o-mini".into(),
            temperature: 0.2,
            max_tokens: 512,
            context_window: 8192,
            context_share: 0.6,
            tokenizer: "cl100k_base".into(),
            first_token_timeout_ms: 8_000,
            total_timeout_ms: 30_000,
            max_retries: 2,
            retry_backoff_ms: 300,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            prompt_price_per_1k: 0.00015,
            completion_price_per_1k: 0.0006,
            cost_currency: "USD".into(),
        }
    }
}

/// Where the knowledge base lives in the source tree.
pub const DEFAULT_KNOWLEDGE_DIR: &str = "knowledge";

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            dir: PathBuf::from(DEFAULT_KNOWLEDGE_DIR),
            ingest_on_start: true,
            embedding_model_dir: None,
            dense_languages: vec![Language::En],
            chunk_max_tokens: 256,
            collection_prefix: "wealthdesk_".into(),
        }
    }
}

/// Where the questionnaire packs live in the source tree.
pub const DEFAULT_QUESTIONNAIRE_DIR: &str = "knowledge/questionnaires";

impl Default for QuestionnaireConfig {
    fn default() -> Self {
        QuestionnaireConfig {
            pack: "cn-fund-risk".into(),
            dir: PathBuf::from(DEFAULT_QUESTIONNAIRE_DIR),
            validity_months: 24,
        }
    }
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            max_frame_bytes: 16 * 1024,
            rate_per_sec: 20,
            rate_burst: 60,
            send_queue: 256,
            heartbeat_secs: 20,
            idle_timeout_secs: 60,
            commit_batch_max: 512,
            relay_without_persistence: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Upper bound of pooled connections.
    pub max_connections: u32,
    /// Seconds to wait for a connection (also bounds the startup connection attempt).
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token algorithm: HS256 (shared secret) or RS256 / ES256 / EdDSA (public-key
    /// verification of tokens issued by the institution's identity provider).
    pub algorithm: JwtAlgorithm,
    /// HS256 secret (at least 32 bytes). Unset with HS256 means a development key
    /// generated once and kept in `data_dir`.
    pub jwt_secret: Option<Secret>,
    /// PEM file with the identity provider's public key (RS256 / ES256 / EdDSA).
    pub public_key_file: Option<PathBuf>,
    /// Expected `iss` claim, when set.
    pub issuer: Option<String>,
    /// Expected `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated when checking `exp`, in seconds.
    pub leeway_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
    EdDSA,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Origins allowed to call the API from a browser (CORS). Empty: same origin only.
    pub cors_origins: Vec<String>,
    /// Send `Strict-Transport-Security`; turn on when clients reach the service over TLS.
    pub hsts: bool,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Deadline of a plain request (not WebSockets or event streams), in seconds.
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `wealthdesk=debug,tower_http=info`.
    pub filter: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            im: ImConfig::default(),
            questionnaire: QuestionnaireConfig::default(),
            knowledge: KnowledgeConfig::default(),
            bot: BotConfig::default(),
            llm: LlmConfig::default(),
            guardrails: GuardrailsConfig::default(),
            handoff: HandoffConfig::default(),
            archive: ArchiveConfig::default(),
            review: ReviewConfig::default(),
            nats_url: None,
            qdrant_url: None,
            qdrant_api_key: None,
            nats_subject_prefix: "wealthdesk".into(),
            log: LogConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            max_connections: 16,
            acquire_timeout_secs: 5,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            cors_origins: Vec::new(),
            hsts: false,
            shutdown_grace_secs: 10,
            request_timeout_secs: 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            // Qdrant Edge logs its WAL opening at info and warns about start-up flags only
            // a Qdrant server binary sets: neither says anything an operator can act on.
            filter: "info,qdrant_edge=warn,qdrant_edge::common=error".into(),
            format: LogFormat::Text,
        }
    }
}

/// A secret value: `Debug`, `Display` and the printed configuration show it redacted.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A configuration problem, reported as one line naming the key, the problem and its source.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

/// Overrides given on the command line; they win over every other source.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// The database the configuration points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    /// Reads every layer from the process environment and validates the result.
    pub fn load(cli: &CliOverrides) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::load_from(cli, &env)
    }

    /// Like [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from(cli: &CliOverrides, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file = match &cli.config_file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist (given by --config)",
                    path.display()
                )));
            }
            Some(path) => path.clone(),
            None => PathBuf::from(DEFAULT_CONFIG_FILE),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if file.exists() {
            check_toml_syntax(&file)?;
            figment = figment.merge(Toml::file_exact(&file));
        }
        let figment = figment.merge(EnvVars::from(env));
        let mut config: Config = figment.extract().map_err(|e| ConfigError(one_line(e)))?;
        if let Some(listen) = cli.listen {
            config.listen = listen;
        }
        if let Some(dir) = &cli.data_dir {
            config.data_dir = dir.clone();
        }
        config.validate(&|key| source_of(&figment, key, cli))?;
        Ok(config)
    }

    /// Checks the values serde cannot: ranges, combinations, files that must exist.
    fn validate(&self, source: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let fail = |key: &str, problem: String| {
            Err(ConfigError(format!(
                "{key}: {problem} (from {})",
                source(key)
            )))
        };
        if let Some(url) = &self.database_url
            && let Err(problem) = parse_database_url(url.expose())
        {
            return fail("database_url", problem);
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections", "must be at least 1".into());
        }
        if self.database.acquire_timeout_secs == 0 {
            return fail("database.acquire_timeout_secs", "must be at least 1".into());
        }
        if self.http.max_body_bytes < 1024 {
            return fail(
                "http.max_body_bytes",
                format!("{} is below the minimum of 1024", self.http.max_body_bytes),
            );
        }
        for origin in &self.http.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || axum::http::HeaderValue::from_str(origin).is_err()
            {
                return fail(
                    "http.cors_origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                );
            }
        }
        if !(1..=600).contains(&self.http.request_timeout_secs) {
            return fail(
                "http.request_timeout_secs",
                format!(
                    "{} is not between 1 and 600",
                    self.http.request_timeout_secs
                ),
            );
        }
        if self.im.max_frame_bytes < 1024 {
            return fail("im.max_frame_bytes", "must be at least 1024".into());
        }
        if self.im.rate_per_sec == 0 || self.im.rate_burst < self.im.rate_per_sec {
            return fail(
                "im.rate_burst",
                "rate_per_sec must be at least 1 and rate_burst at least rate_per_sec".into(),
            );
        }
        if self.im.send_queue < 8 {
            return fail("im.send_queue", "must be at least 8".into());
        }
        if self.im.heartbeat_secs == 0 || self.im.idle_timeout_secs <= self.im.heartbeat_secs {
            return fail(
                "im.idle_timeout_secs",
                "must be longer than im.heartbeat_secs (and the heartbeat at least 1)".into(),
            );
        }
        if !(1..=4096).contains(&self.im.commit_batch_max) {
            return fail("im.commit_batch_max", "must be between 1 and 4096".into());
        }
        if let Some(url) = &self.nats_url
            && !url.expose().split(',').all(|u| {
                let u = u.trim();
                u.starts_with("nats://") || u.starts_with("tls://") || !u.contains("://")
            })
        {
            return fail(
                "nats_url",
                "expected nats://host:port (comma-separated for several)".into(),
            );
        }
        if let Some(url) = &self.qdrant_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail(
                "qdrant_url",
                "expected http(s)://host:port of the server's gRPC port (6334)".into(),
            );
        }
        if !(32..=2048).contains(&self.knowledge.chunk_max_tokens) {
            return fail(
                "knowledge.chunk_max_tokens",
                "must be between 32 and 2048".into(),
            );
        }
        if self.nats_subject_prefix.is_empty()
            || !self
                .nats_subject_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return fail(
                "nats_subject_prefix",
                "use letters, digits, '-', '_' and '.' only".into(),
            );
        }
        if !(1..=120).contains(&self.questionnaire.validity_months) {
            return fail(
                "questionnaire.validity_months",
                format!(
                    "{} is not between 1 and 120",
                    self.questionnaire.validity_months
                ),
            );
        }
        if !(200..=200_000).contains(&self.bot.max_input_chars) {
            return fail(
                "bot.max_input_chars",
                "must be between 200 and 200000".into(),
            );
        }
        for (key, secs) in [
            ("handoff.sla_urgent_secs", self.handoff.sla_urgent_secs),
            ("handoff.sla_high_secs", self.handoff.sla_high_secs),
            ("handoff.sla_normal_secs", self.handoff.sla_normal_secs),
            (
                "handoff.default_claim_secs",
                self.handoff.default_claim_secs,
            ),
        ] {
            if !(1..=86_400).contains(&secs) {
                return fail(key, format!("{secs} must be between 1 and 86400 seconds"));
            }
        }
        if !(1..=20).contains(&self.handoff.default_capacity) {
            return fail(
                "handoff.default_capacity",
                "must be between 1 and 20".into(),
            );
        }
        if !(1..=10).contains(&self.handoff.max_bot_misses) {
            return fail("handoff.max_bot_misses", "must be between 1 and 10".into());
        }
        if !(1..=10).contains(&self.bot.context_chunks) {
            return fail("bot.context_chunks", "must be between 1 and 10".into());
        }
        if !(1..=5).contains(&self.bot.max_recommendations) {
            return fail("bot.max_recommendations", "must be between 1 and 5".into());
        }
        if let Some(url) = &self.llm.base_url
            && (!(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<axum::http::Uri>().is_err())
        {
            return fail(
                "llm.base_url",
                format!("{url:?} is not an http(s) URL like https://api.openai.com/v1"),
            );
        }
        if self.llm.model.trim().is_empty() {
            return fail("llm.model", "must name a model".into());
        }
        if !(0.0..=2.0).contains(&self.llm.temperature) {
            return fail("llm.temperature", "must be between 0 and 2".into());
        }
        if self.llm.max_tokens < 16 || self.llm.max_tokens * 2 > self.llm.context_window {
            return fail(
                "llm.max_tokens",
                "must be at least 16 and at most half of llm.context_window".into(),
            );
        }
        if !(0.1..=0.9).contains(&self.llm.context_share) {
            return fail("llm.context_share", "must be between 0.1 and 0.9".into());
        }
        if !["cl100k_base", "o200k_base"].contains(&self.llm.tokenizer.as_str()) {
            return fail(
                "llm.tokenizer",
                format!("{:?} is not cl100k_base or o200k_base", self.llm.tokenizer),
            );
        }
        if self.llm.first_token_timeout_ms == 0
            || self.llm.total_timeout_ms < self.llm.first_token_timeout_ms
        {
            return fail(
                "llm.total_timeout_ms",
                "must be at least llm.first_token_timeout_ms (and that at least 1)".into(),
            );
        }
        if self.llm.max_retries > 10 {
            return fail("llm.max_retries", "must be at most 10".into());
        }
        if self.llm.breaker_failures == 0 {
            return fail("llm.breaker_failures", "must be at least 1".into());
        }
        if self.llm.prompt_price_per_1k < 0.0 || self.llm.completion_price_per_1k < 0.0 {
            return fail(
                "llm.prompt_price_per_1k",
                "prices cannot be negative".into(),
            );
        }
        if let Err(e) = self.log.filter.parse::<tracing_subscriber::EnvFilter>() {
            return fail(
                "log.filter",
                format!("{:?} is not a valid filter: {e}", self.log.filter),
            );
        }
        match self.auth.algorithm {
            JwtAlgorithm::HS256 => {
                if let Some(secret) = &self.auth.jwt_secret
                    && secret.expose().len() < 32
                {
                    return fail(
                        "auth.jwt_secret",
                        format!(
                            "is {} bytes; HS256 needs at least 32",
                            secret.expose().len()
                        ),
                    );
                }
            }
            other => match &self.auth.public_key_file {
                None => {
                    return fail(
                        "auth.public_key_file",
                        format!("is required when auth.algorithm is {other:?}"),
                    );
                }
                Some(path) if !path.is_file() => {
                    return fail(
                        "auth.public_key_file",
                        format!("{} is not a readable file", path.display()),
                    );
                }
                Some(_) => {}
            },
        }
        Ok(())
    }

    /// Where the relational store lives.
    pub fn database_target(&self) -> DatabaseTarget {
        match &self.database_url {
            Some(url) => parse_database_url(url.expose()).expect("validated at load"),
            None => DatabaseTarget::Sqlite(self.data_dir.join("wealthdesk.db")),
        }
    }

    /// The configuration as TOML, secrets redacted (for `config check`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        // Keep the database host visible: operators need to see where it points.
        shown.database_url = self
            .database_url
            .as_ref()
            .map(|url| Secret::new(redact_url_password(url.expose())));
        let mut text = toml::to_string_pretty(&shown).unwrap_or_default();
        if let Some(url) = &shown.database_url {
            text = text.replacen(
                "database_url = \"[redacted]\"",
                &format!("database_url = {:?}", url.expose()),
                1,
            );
        }
        text
    }
}

/// `WEALTHDESK_*` variables as a figment provider: `WEALTHDESK_AUTH__JWT_SECRET` →
/// `auth.jwt_secret`. Built from a given list (not the process) so tests pass their own.
struct EnvVars(Vec<(String, String)>);

impl From<&[(String, String)]> for EnvVars {
    fn from(env: &[(String, String)]) -> Self {
        EnvVars(
            env.iter()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                .cloned()
                .collect(),
        )
    }
}

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable(s) {ENV_PREFIX}*"))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, value) in &self.0 {
            let path: Vec<String> = key[ENV_PREFIX.len()..]
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            if path.iter().any(|p| p.is_empty()) {
                continue;
            }
            let parsed: figment::value::Value = value.parse().expect("figment values parse");
            insert_path(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::{Dict, Value};
    if path.len() == 1 {
        dict.insert(path[0].clone(), value);
        return;
    }
    let entry = dict
        .entry(path[0].clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if let Value::Dict(_, inner) = entry {
        insert_path(inner, &path[1..], value);
    }
}

fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    if let Err(e) = text.parse::<toml::Table>() {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        return Err(ConfigError(format!(
            "{} is not valid TOML at line {line}, column {col}: {}",
            path.display(),
            e.message()
        )));
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

fn source_of(figment: &Figment, key: &str, cli: &CliOverrides) -> String {
    if (key == "listen" && cli.listen.is_some()) || (key == "data_dir" && cli.data_dir.is_some()) {
        return "the command line".into();
    }
    match figment.find_metadata(key) {
        Some(meta) => match &meta.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ => meta.name.to_string(),
        },
        None => "defaults".into(),
    }
}

/// Figment errors carry the key and the source; keep them on one line.
fn one_line(err: figment::Error) -> String {
    let mut parts = Vec::new();
    for e in err {
        let key = if e.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.path.join("."))
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(figment::Source::File(p)) => format!(" (from {})", p.display()),
                _ => format!(" (from {})", m.name),
            })
            .unwrap_or_default();
        parts.push(format!("{key}{}{source}", e.kind));
    }
    parts.join("; ")
}

fn parse_database_url(url: &str) -> Result<DatabaseTarget, String> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err("sqlite URL names no file (expected sqlite://path/to/file.db)".into());
        }
        return Ok(DatabaseTarget::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseTarget::Postgres(url.to_string()));
    }
    Err(format!(
        "{:?} is neither a sqlite: nor a postgres:// URL",
        redact_url_password(url)
    ))
}

/// `postgres://user:pw@host/db` → `postgres://user:***@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(&CliOverrides::default(), &env(pairs))
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.database_target(),
            DatabaseTarget::Sqlite(PathBuf::from("./data/wealthdesk.db"))
        );
    }

    #[test]
    fn nested_environment_keys_use_double_underscores() {
        let config = load(&[
            ("WEALTHDESK_LISTEN", "0.0.0.0:9000"),
            ("WEALTHDESK_HTTP__MAX_BODY_BYTES", "4096"),
            ("WEALTHDESK_DATABASE_URL", "postgres://wd:pw@db:5432/wd"),
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.http.max_body_bytes, 4096);
        assert!(matches!(
            config.database_target(),
            DatabaseTarget::Postgres(_)
        ));
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_environment() {
        let err = load(&[("WEALTHDESK_LISTEN", "not-an-address")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        assert!(err.contains("WEALTHDESK_"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_short_secret_is_refused_with_its_source() {
        let err = load(&[("WEALTHDESK_AUTH__JWT_SECRET", "short")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.jwt_secret"), "{err}");
        assert!(err.contains("at least 32"), "{err}");
        assert!(err.contains("WEALTHDESK_"), "{err}");
        assert!(!err.contains("short"), "a secret must not be echoed: {err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = load(&[("WEALTHDESK_LISTN", "127.0.0.1:1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn a_database_url_of_another_kind_is_refused() {
        let err = load(&[("WEALTHDESK_DATABASE_URL", "mysql://u:secretpw@h/db")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
        assert!(!err.contains("secretpw"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_printed_config() {
        let config = load(&[
            (
                "WEALTHDESK_AUTH__JWT_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            ("WEALTHDESK_DATABASE_URL", "postgres://wd:hunter2@db/wd"),
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("postgres://wd:***@db/wd"), "{printed}");
    }

    #[test]
    fn redacts_only_the_password() {
        assert_eq!(
            redact_url_password("postgres://a:b@h:5432/d"),
            "postgres://a:***@h:5432/d"
        );
        assert_eq!(redact_url_password("postgres://a@h/d"), "postgres://a@h/d");
        assert_eq!(redact_url_password("sqlite://x.db"), "sqlite://x.db");
    }
}

//! wealthdesk: an AI advisory desk for retail finance apps.
//!
//! The library holds every domain; `main.rs` is a thin CLI over it.

pub mod app;
pub mod archive;
pub mod auth;
pub mod compliance;
pub mod config;
pub mod conversation;
pub mod db;
pub mod error;
pub mod guardrails;
pub mod handoff;
pub mod http;
pub mod im;
pub mod knowledge;
pub mod llm;
pub mod questionnaire;
pub mod review;
pub mod suitability;
pub mod telemetry;
pub mod time_fmt;
pub mod web;

/// Installs the process's TLS crypto provider (ring) once; every TLS client (NATS,
/// PostgreSQL, the LLM endpoint) needs one. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use app::Application;
pub use config::Config;
pub use error::{AppError, Result};

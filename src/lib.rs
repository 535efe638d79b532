//! wealthdesk: an AI advisory desk for retail finance apps.
//!
//! The library holds every domain; `main.rs` is a thin CLI over it.

pub mod app;
pub mod auth;
pub mod compliance;
pub mod config;
pub mod conversation;
pub mod db;
pub mod error;
pub mod http;
pub mod im;
pub mod knowledge;
pub mod questionnaire;
pub mod suitability;
pub mod telemetry;
pub mod time_fmt;

pub use app::Application;
pub use config::Config;
pub use error::{AppError, Result};

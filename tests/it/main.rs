//! The one integration-test binary. Every scenario runs against a real server on a
//! real port, on SQLite and on PostgreSQL.

mod helpers;
mod ws;

mod archive;
mod auth;
mod browser;
mod cli;
mod conversations;
mod engine;
mod errors;
mod guardrails;
mod handoff;
mod im;
mod knowledge;
mod operations;
mod questionnaire;
mod review;
mod scale;

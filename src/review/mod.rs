//! Compliance review of the archive: search across transcripts (filters and zh-CN /
//! English full text), the transcript and replay of every bot turn, review notes and
//! guardrail labels, dashboards, and verifiable or printable exports — served to
//! compliance officers by [`api`] and the `/compliance` console.

pub mod annotate;
pub mod api;
pub mod dashboard;
pub mod facts;
pub mod search;
pub mod text;
pub mod transcript;

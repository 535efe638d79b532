//! The investor risk questionnaire: packs as data, free-text answer mapping, scoring
//! with override rules, and the stored risk profiles.

pub mod api;
pub mod definition;
pub mod matching;
pub mod profile;
pub mod scoring;

pub use definition::{Pack, load_packs};

//! The bot: a participant on the IM backbone that runs the risk questionnaire and,
//! with a valid profile, answers within the client's suitability.

pub mod answer;
pub mod api;
pub mod bench;
pub mod engine;
pub mod eval;
pub mod ledger;
pub mod session;
pub mod worker;

pub use engine::Desk;

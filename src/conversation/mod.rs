//! The bot: a participant on the IM backbone that runs the risk questionnaire and,
//! with a valid profile, answers within the client's suitability.

pub mod engine;
pub mod session;
pub mod worker;

pub use engine::Desk;

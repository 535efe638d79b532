//! The IM backbone: conversations and their ordered, durable messages, and the HTTP
//! API over them.

pub mod api;
pub mod model;
pub mod store;

pub use model::{Conversation, ConversationId, ConversationMode, Language, Message};

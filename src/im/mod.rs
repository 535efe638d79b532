//! The IM backbone: conversations and their ordered, durable messages, and the HTTP
//! API over them.

pub mod api;
pub mod bus;
pub mod commit;
pub mod delivery;
pub mod gateway;
pub mod hub;
pub mod model;
pub mod protocol;
pub mod service;
pub mod store;

pub use model::{Conversation, ConversationId, ConversationMode, Language, Message};
pub use service::Im;

//! The WebSocket protocol, version 1: JSON text frames tagged by `type`. Documented in
//! `docs/protocol.md`; the error codes and close codes here are stable.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{ConversationId, Message};

/// Version announced in `hello`; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Close codes the server uses (RFC 6455 private range 4000–4999 for our own).
pub mod close {
    /// Server shutting down; reconnect (to another node) and `sync`.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame larger than the hard transport limit.
    pub const TOO_BIG: u16 = 1009;
    /// No frame from the client within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The access token expired during the session; reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client did not read fast enough; nothing is lost, reconnect and `sync`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Repeated flooding above the rate limit.
    pub const RATE_ABUSE: u16 = 4029;
}

/// A frame from a client.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Commit a message; answered by `ack` (or `error`).
    Send {
        id: Option<String>,
        conversation_id: ConversationId,
        client_msg_id: String,
        kind: String,
        body: Value,
    },
    /// Messages after `after_seq`, in pages; answered by `synced`.
    Sync {
        id: Option<String>,
        conversation_id: ConversationId,
        after_seq: i64,
        limit: Option<i64>,
    },
    /// Receive the conversation's live events on this connection. With `after_seq`,
    /// missed messages are delivered first.
    Subscribe {
        id: Option<String>,
        conversation_id: ConversationId,
        after_seq: Option<i64>,
    },
    Unsubscribe {
        id: Option<String>,
        conversation_id: ConversationId,
    },
    /// Delivered or read up to `seq`.
    Receipt {
        id: Option<String>,
        conversation_id: ConversationId,
        status: ReceiptStatus,
        seq: i64,
    },
    /// Ephemeral; never stored.
    Typing {
        id: Option<String>,
        conversation_id: ConversationId,
        active: bool,
    },
    /// Advisors: online or away.
    Presence {
        id: Option<String>,
        status: PresenceStatus,
    },
    Ping {
        id: Option<String>,
    },
}

/// Frame types a client may send, for telling "unknown type" from "bad fields".
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "send",
    "sync",
    "subscribe",
    "unsubscribe",
    "receipt",
    "typing",
    "presence",
    "ping",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    Delivered,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

/// A frame to a client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        protocol: u32,
        participant_id: String,
        role: String,
        heartbeat_secs: u64,
        idle_timeout_secs: u64,
        max_frame_bytes: usize,
    },
    Ack {
        id: Option<String>,
        conversation_id: ConversationId,
        client_msg_id: String,
        seq: i64,
        created_at: String,
        /// True when this client message id was committed before; nothing new was stored.
        duplicate: bool,
    },
    Message {
        message: Message,
    },
    Synced {
        id: Option<String>,
        conversation_id: ConversationId,
        messages: Vec<Message>,
        has_more: bool,
    },
    Subscribed {
        id: Option<String>,
        conversation_id: ConversationId,
        last_seq: i64,
    },
    Unsubscribed {
        id: Option<String>,
        conversation_id: ConversationId,
    },
    Receipt {
        conversation_id: ConversationId,
        participant_id: String,
        role: String,
        status: ReceiptStatus,
        seq: i64,
    },
    Typing {
        conversation_id: ConversationId,
        participant_id: String,
        role: String,
        active: bool,
    },
    /// Part of a bot reply being written (ephemeral; see the bus event of that name).
    Stream {
        conversation_id: ConversationId,
        stream_id: String,
        attempt: u32,
        index: u32,
        delta: String,
        reset: bool,
    },
    Presence {
        participant_id: String,
        status: PresenceStatus,
    },
    /// Advisors only: the queue changed; fetch it again.
    Queue {
        conversation_id: ConversationId,
        event: String,
    },
    Pong {
        id: Option<String>,
    },
    Error {
        id: Option<String>,
        code: &'static str,
        message: String,
    },
}

/// Why a text frame could not become a [`ClientFrame`].
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The frame's `id`, when one could be read, so the client can match the error.
    pub id: Option<String>,
    pub code: &'static str,
    pub message: String,
}

impl FrameError {
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            id: self.id.clone(),
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// Parses one text frame, naming what is wrong when it cannot.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        code: "malformed_frame",
        message: format!("the frame is not JSON: {e}"),
    })?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_string);
    let Some(object) = value.as_object() else {
        return Err(FrameError {
            id,
            code: "malformed_frame",
            message: "a frame must be a JSON object".into(),
        });
    };
    match object.get("type").and_then(Value::as_str) {
        None => {
            return Err(FrameError {
                id,
                code: "invalid_frame",
                message: "the frame has no \"type\"".into(),
            });
        }
        Some(t) if !CLIENT_FRAME_TYPES.contains(&t) => {
            return Err(FrameError {
                id,
                code: "unknown_frame_type",
                message: format!(
                    "unknown frame type {t:?}; expected one of {}",
                    CLIENT_FRAME_TYPES.join(", ")
                ),
            });
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| FrameError {
        id,
        code: "invalid_frame",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_frame_parses() {
        let id = ConversationId::new();
        let frame = parse_client_frame(&format!(
            r#"{{"type":"send","id":"f1","conversation_id":"{id}","client_msg_id":"c1","kind":"text","body":{{"text":"你好"}}}}"#
        ))
        .unwrap();
        assert!(
            matches!(frame, ClientFrame::Send { ref client_msg_id, .. } if client_msg_id == "c1")
        );
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_frame_id() {
        let err = parse_client_frame("not json").unwrap_err();
        assert_eq!(err.code, "malformed_frame");
        let err = parse_client_frame(r#"{"type":"teleport","id":"x9"}"#).unwrap_err();
        assert_eq!(
            (err.code, err.id.as_deref()),
            ("unknown_frame_type", Some("x9"))
        );
        let err = parse_client_frame(r#"{"type":"sync","id":"s1","after_seq":0}"#).unwrap_err();
        assert_eq!(err.code, "invalid_frame");
        assert!(err.message.contains("conversation_id"), "{}", err.message);
        let err = parse_client_frame(r#"{"id":"n"}"#).unwrap_err();
        assert_eq!(err.code, "invalid_frame");
        let err = parse_client_frame("[1,2]").unwrap_err();
        assert_eq!(err.code, "malformed_frame");
    }
}

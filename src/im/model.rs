//! The types of the IM domain, parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation's id: a UUID (v7, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, format = Uuid)]
pub struct ConversationId(Uuid);

impl ConversationId {
    pub fn new() -> Self {
        ConversationId(Uuid::now_v7())
    }
}

impl Default for ConversationId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for ConversationId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Uuid::parse_str(s)
            .map(ConversationId)
            .map_err(|_| format!("conversation id {s:?} is not a UUID"))
    }
}

impl TryFrom<String> for ConversationId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ConversationId> for String {
    fn from(id: ConversationId) -> String {
        id.to_string()
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Who owns the conversation right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationMode {
    /// The bot answers.
    Bot,
    /// Waiting for an advisor to claim it.
    Queued,
    /// An advisor answers; the bot is silent.
    Human,
    /// Finished; read-only.
    Closed,
}

impl ConversationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationMode::Bot => "bot",
            ConversationMode::Queued => "queued",
            ConversationMode::Human => "human",
            ConversationMode::Closed => "closed",
        }
    }
}

impl FromStr for ConversationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bot" => Ok(ConversationMode::Bot),
            "queued" => Ok(ConversationMode::Queued),
            "human" => Ok(ConversationMode::Human),
            "closed" => Ok(ConversationMode::Closed),
            other => Err(format!("unknown conversation mode {other:?}")),
        }
    }
}

/// The languages wealthdesk speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Language {
    ZhCn,
    En,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::ZhCn => "zh-CN",
            Language::En => "en",
        }
    }
}

impl FromStr for Language {
    type Err = String;
    /// Accepts BCP 47 tags and maps them onto the two supported languages:
    /// `zh`, `zh-CN`, `zh-Hans…` → zh-CN; `en`, `en-GB`, … → en.
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let primary = lower.split(['-', '_']).next().unwrap_or_default();
        match primary {
            "zh" => Ok(Language::ZhCn),
            "en" => Ok(Language::En),
            _ => Err(format!("language {s:?} is not supported (use zh-CN or en)")),
        }
    }
}

impl TryFrom<String> for Language {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Language> for String {
    fn from(l: Language) -> String {
        l.as_str().to_string()
    }
}

/// A conversation between one client and the desk (bot, then perhaps advisors).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    /// The client who started it; only they (and staff) may read it.
    pub client_id: String,
    pub mode: ConversationMode,
    /// Grows by one on every change of owner (bot, queue, an advisor): a reply begun
    /// under an older epoch is refused.
    pub epoch: i64,
    /// The advisor who owns it while `mode` is `human`.
    pub advisor_id: Option<String>,
    #[schema(value_type = String, example = "zh-CN")]
    pub language: Language,
    /// Sequence number of the newest message; 0 when there is none.
    pub last_seq: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sender {
    pub id: String,
    /// client, advisor, bot or system.
    pub role: String,
}

/// One committed message. `seq` is gapless and increasing within its conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub sender: Sender,
    /// What the body holds, e.g. `text`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
    /// The sender's idempotency key, when it gave one.
    pub client_msg_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_map_from_common_tags() {
        assert_eq!("zh-Hans-CN".parse::<Language>().unwrap(), Language::ZhCn);
        assert_eq!("zh_cn".parse::<Language>().unwrap(), Language::ZhCn);
        assert_eq!("en-GB".parse::<Language>().unwrap(), Language::En);
        assert!("fr".parse::<Language>().is_err());
    }

    #[test]
    fn conversation_ids_must_be_uuids() {
        let id = ConversationId::new();
        assert_eq!(id.to_string().parse::<ConversationId>().unwrap(), id);
        assert!(
            "42".parse::<ConversationId>()
                .unwrap_err()
                .contains("not a UUID")
        );
    }
}

//! The archived record kinds: each mirrors its live table's row, and turns it into the
//! archive [`Record`] its write appends and its verification recomputes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ACCESS_CHAIN, Record, canonical, client_chain, conversation_chain};

/// A row of `messages`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub conversation_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub sender_role: String,
    pub kind: String,
    pub body: String,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
}

pub const MESSAGE_SELECT: &str = "SELECT conversation_id, seq, sender_id, sender_role, kind, body, \
     client_msg_id, created_at FROM messages";

impl MessageRow {
    pub fn record(&self) -> Record {
        Record {
            chain: conversation_chain(&self.conversation_id),
            kind: "message",
            reference: format!("message:{}", self.seq),
            at: self.created_at,
            payload: canonical(BTreeMap::from([
                ("conversation_id", json!(self.conversation_id)),
                ("seq", json!(self.seq)),
                ("sender_id", json!(self.sender_id)),
                ("sender_role", json!(self.sender_role)),
                ("kind", json!(self.kind)),
                ("body", json!(self.body)),
                ("client_msg_id", json!(self.client_msg_id)),
                ("created_at", json!(self.created_at)),
            ])),
        }
    }

    /// The payload without its seq: how a message moved to another seq is recognised.
    pub fn content(&self) -> String {
        canonical(BTreeMap::from([
            ("conversation_id", json!(self.conversation_id)),
            ("sender_id", json!(self.sender_id)),
            ("sender_role", json!(self.sender_role)),
            ("kind", json!(self.kind)),
            ("body", json!(self.body)),
            ("client_msg_id", json!(self.client_msg_id)),
            ("created_at", json!(self.created_at)),
        ]))
    }
}

/// The seq-less content of an archived message payload (see [`MessageRow::content`]).
pub fn message_content(payload: &str) -> Option<String> {
    let Value::Object(mut fields) = serde_json::from_str::<Value>(payload).ok()? else {
        return None;
    };
    fields.remove("seq");
    Some(canonical(
        fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect(),
    ))
}

/// A row of `turn_records`: what the bot saw and decided in one step of a turn.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TurnRow {
    pub id: String,
    pub conversation_id: String,
    pub trigger_seq: i64,
    pub kind: String,
    pub detail: String,
    pub created_at: i64,
    pub state: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub total_ms: i64,
}

pub const TURN_SELECT: &str = "SELECT id, conversation_id, trigger_seq, kind, detail, created_at, \
     state, prompt_tokens, completion_tokens, cost_micros, total_ms FROM turn_records";

impl TurnRow {
    pub fn record(&self) -> Record {
        Record {
            chain: conversation_chain(&self.conversation_id),
            kind: "turn",
            reference: format!("turn:{}", self.id),
            at: self.created_at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("conversation_id", json!(self.conversation_id)),
                ("trigger_seq", json!(self.trigger_seq)),
                ("kind", json!(self.kind)),
                ("detail", json!(self.detail)),
                ("created_at", json!(self.created_at)),
                ("state", json!(self.state)),
                ("prompt_tokens", json!(self.prompt_tokens)),
                ("completion_tokens", json!(self.completion_tokens)),
                ("cost_micros", json!(self.cost_micros)),
                ("total_ms", json!(self.total_ms)),
            ])),
        }
    }
}

/// A row of `handoff_events`: a change of owner, with its actor and epoch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HandoffEventRow {
    pub id: i64,
    pub conversation_id: String,
    pub handoff_id: Option<String>,
    pub epoch: i64,
    pub at: i64,
    pub actor_id: String,
    pub actor_role: String,
    pub event: String,
    pub detail: String,
}

pub const HANDOFF_EVENT_SELECT: &str = "SELECT id, conversation_id, handoff_id, epoch, at, \
     actor_id, actor_role, event, detail FROM handoff_events";

impl HandoffEventRow {
    pub fn record(&self) -> Record {
        Record {
            chain: conversation_chain(&self.conversation_id),
            kind: "handoff_event",
            reference: format!("handoff_event:{}", self.id),
            at: self.at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("conversation_id", json!(self.conversation_id)),
                ("handoff_id", json!(self.handoff_id)),
                ("epoch", json!(self.epoch)),
                ("at", json!(self.at)),
                ("actor_id", json!(self.actor_id)),
                ("actor_role", json!(self.actor_role)),
                ("event", json!(self.event)),
                ("detail", json!(self.detail)),
            ])),
        }
    }
}

/// A row of `risk_profiles` as assessed (its expiry and its later supersession are
/// entries of their own: both may change after the assessment).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProfileRow {
    pub id: String,
    pub client_id: String,
    pub questionnaire_id: String,
    pub questionnaire_version: String,
    pub answers: String,
    pub assessment: String,
    pub score: i64,
    pub level: String,
    pub max_product: String,
    pub conversation_id: Option<String>,
    pub assessed_at: i64,
    pub expires_at: i64,
    pub superseded_at: Option<i64>,
}

pub const PROFILE_SELECT: &str = "SELECT id, client_id, questionnaire_id, questionnaire_version, \
     answers, assessment, score, level, max_product, conversation_id, assessed_at, expires_at, \
     superseded_at FROM risk_profiles";

impl ProfileRow {
    pub fn record(&self) -> Record {
        Record {
            chain: client_chain(&self.client_id),
            kind: "profile",
            reference: format!("profile:{}", self.id),
            at: self.assessed_at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("client_id", json!(self.client_id)),
                ("questionnaire_id", json!(self.questionnaire_id)),
                ("questionnaire_version", json!(self.questionnaire_version)),
                ("answers", json!(self.answers)),
                ("assessment", json!(self.assessment)),
                ("score", json!(self.score)),
                ("level", json!(self.level)),
                ("max_product", json!(self.max_product)),
                ("conversation_id", json!(self.conversation_id)),
                ("assessed_at", json!(self.assessed_at)),
            ])),
        }
    }

    /// The entry of this profile's expiry as it stands.
    pub fn expiry(&self) -> Record {
        expiry(&self.client_id, &self.id, self.expires_at, self.assessed_at)
    }

    /// The entry of this profile's supersession, when it has been superseded.
    pub fn superseded(&self) -> Option<Record> {
        self.superseded_at
            .map(|at| superseded(&self.client_id, &self.id, at))
    }
}

/// The entry that profile `id` of `client` expires at `expires_at` (set at `at`); a
/// moved expiry is a newer entry with the same reference, and the newest counts.
pub fn expiry(client: &str, id: &str, expires_at: i64, at: i64) -> Record {
    Record {
        chain: client_chain(client),
        kind: "profile_expiry",
        reference: format!("profile_expiry:{id}"),
        at,
        payload: canonical(BTreeMap::from([
            ("id", json!(id)),
            ("expires_at", json!(expires_at)),
        ])),
    }
}

/// The entry that profile `id` of `client` stopped being current at `at`.
pub fn superseded(client: &str, id: &str, at: i64) -> Record {
    Record {
        chain: client_chain(client),
        kind: "profile_superseded",
        reference: format!("profile_superseded:{id}"),
        at,
        payload: canonical(BTreeMap::from([
            ("id", json!(id)),
            ("superseded_at", json!(at)),
        ])),
    }
}

/// A row of `audit_log`: a compliance (or other staff) access.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessRow {
    pub id: i64,
    pub at: i64,
    pub actor_id: String,
    pub actor_role: String,
    pub action: String,
    pub subject: Option<String>,
    pub detail: String,
}

pub const ACCESS_SELECT: &str =
    "SELECT id, at, actor_id, actor_role, action, subject, detail FROM audit_log";

impl AccessRow {
    pub fn record(&self) -> Record {
        Record {
            chain: ACCESS_CHAIN.to_string(),
            kind: "access",
            reference: format!("access:{}", self.id),
            at: self.at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("at", json!(self.at)),
                ("actor_id", json!(self.actor_id)),
                ("actor_role", json!(self.actor_role)),
                ("action", json!(self.action)),
                ("subject", json!(self.subject)),
                ("detail", json!(self.detail)),
            ])),
        }
    }
}

/// The chain of legal holds set and lifted.
pub const HOLDS_CHAIN: &str = "holds";
/// The chain of purges: each names the chain it removed, with its length and head.
pub const PURGES_CHAIN: &str = "purges";

/// A row of `legal_holds`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct HoldRow {
    pub id: String,
    /// conversation or client.
    pub scope: String,
    /// The conversation or client id.
    pub subject: String,
    pub reason: String,
    pub set_by: String,
    pub set_at: i64,
    pub lifted_by: Option<String>,
    pub lifted_at: Option<i64>,
    pub lift_reason: Option<String>,
}

pub const HOLD_SELECT: &str = "SELECT id, scope, subject, reason, set_by, set_at, lifted_by, \
     lifted_at, lift_reason FROM legal_holds";

impl HoldRow {
    /// The entry of the hold being set.
    pub fn set_record(&self) -> Record {
        Record {
            chain: HOLDS_CHAIN.to_string(),
            kind: "hold_set",
            reference: format!("hold_set:{}", self.id),
            at: self.set_at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("scope", json!(self.scope)),
                ("subject", json!(self.subject)),
                ("reason", json!(self.reason)),
                ("set_by", json!(self.set_by)),
                ("set_at", json!(self.set_at)),
            ])),
        }
    }

    /// The entry of the hold being lifted, once it is.
    pub fn lift_record(&self) -> Option<Record> {
        let at = self.lifted_at?;
        Some(Record {
            chain: HOLDS_CHAIN.to_string(),
            kind: "hold_lifted",
            reference: format!("hold_lifted:{}", self.id),
            at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("lifted_by", json!(self.lifted_by)),
                ("lifted_at", json!(at)),
                ("lift_reason", json!(self.lift_reason)),
            ])),
        })
    }
}

/// The entry recording that `chain` (then `length` entries ending in `head`) was purged.
pub fn purge(chain: &str, length: i64, head: &str, why: &str, at: i64) -> Record {
    Record {
        chain: PURGES_CHAIN.to_string(),
        kind: "purge",
        reference: format!("purge:{chain}"),
        at,
        payload: canonical(BTreeMap::from([
            ("chain_id", json!(chain)),
            ("length", json!(length)),
            ("head", json!(head)),
            ("reason", json!(why)),
            ("purged_at", json!(at)),
        ])),
    }
}

/// A row of `reviews`: a compliance officer's note on a conversation, which may mark it
/// reviewed.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ReviewRow {
    pub id: i64,
    pub conversation_id: String,
    pub actor_id: String,
    pub at: i64,
    /// 1 when the note marks the conversation reviewed.
    pub reviewed: i64,
    pub note: String,
}

pub const REVIEW_SELECT: &str =
    "SELECT id, conversation_id, actor_id, at, reviewed, note FROM reviews";

impl ReviewRow {
    pub fn record(&self) -> Record {
        Record {
            chain: conversation_chain(&self.conversation_id),
            kind: "review",
            reference: format!("review:{}", self.id),
            at: self.at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("conversation_id", json!(self.conversation_id)),
                ("actor_id", json!(self.actor_id)),
                ("at", json!(self.at)),
                ("reviewed", json!(self.reviewed)),
                ("note", json!(self.note)),
            ])),
        }
    }
}

/// A row of `guardrail_labels`: an officer's verdict on one guardrail decision of a
/// bot turn (or on a rule that should have fired and did not).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct LabelRow {
    pub id: i64,
    pub conversation_id: String,
    pub turn_id: String,
    pub rule_id: String,
    /// correct, false_positive or missed.
    pub label: String,
    /// input or output: which rails the text went through.
    pub direction: String,
    pub language: String,
    /// The text the rails judged.
    pub text: String,
    /// What the output rails judged against (JSON), for replaying the case.
    pub context: String,
    pub note: String,
    pub actor_id: String,
    pub at: i64,
}

pub const LABEL_SELECT: &str = "SELECT id, conversation_id, turn_id, rule_id, label, direction, \
     language, text, context, note, actor_id, at FROM guardrail_labels";

impl LabelRow {
    pub fn record(&self) -> Record {
        Record {
            chain: conversation_chain(&self.conversation_id),
            kind: "guardrail_label",
            reference: format!("guardrail_label:{}", self.id),
            at: self.at,
            payload: canonical(BTreeMap::from([
                ("id", json!(self.id)),
                ("conversation_id", json!(self.conversation_id)),
                ("turn_id", json!(self.turn_id)),
                ("rule_id", json!(self.rule_id)),
                ("label", json!(self.label)),
                ("direction", json!(self.direction)),
                ("language", json!(self.language)),
                ("text", json!(self.text)),
                ("context", json!(self.context)),
                ("note", json!(self.note)),
                ("actor_id", json!(self.actor_id)),
                ("at", json!(self.at)),
            ])),
        }
    }
}

//! The archived record kinds: each mirrors its live table's row, and turns it into the
//! archive [`Record`] its write appends and its verification recomputes.

use serde_json::Value;

use super::{ACCESS_CHAIN, Field, Payload, Record, canonical, client_chain, conversation_chain};

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
            payload: Payload::of(&self.fields()),
        }
    }

    /// The payload's fields, in key order.
    pub fn fields(&self) -> [(&'static str, Field<'_>); 8] {
        self.borrowed().fields()
    }

    pub fn borrowed(&self) -> MessageRef<'_> {
        MessageRef {
            conversation_id: &self.conversation_id,
            seq: self.seq,
            sender_id: &self.sender_id,
            sender_role: &self.sender_role,
            kind: &self.kind,
            body: &self.body,
            client_msg_id: self.client_msg_id.as_deref(),
            created_at: self.created_at,
        }
    }

    /// The payload without its seq: how a message moved to another seq is recognised.
    pub fn content(&self) -> String {
        Payload::of(&self.fields()[..7])
    }
}

/// A row of `messages` borrowed from wherever it was read (columns as in
/// [`MESSAGE_SELECT`]).
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    pub conversation_id: &'a str,
    pub seq: i64,
    pub sender_id: &'a str,
    pub sender_role: &'a str,
    pub kind: &'a str,
    pub body: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub created_at: i64,
}

impl<'a> MessageRef<'a> {
    /// The payload's fields, in key order.
    pub fn fields(&self) -> [(&'static str, Field<'a>); 8] {
        [
            ("body", self.body.into()),
            ("client_msg_id", self.client_msg_id.into()),
            ("conversation_id", self.conversation_id.into()),
            ("created_at", self.created_at.into()),
            ("kind", self.kind.into()),
            ("sender_id", self.sender_id.into()),
            ("sender_role", self.sender_role.into()),
            ("seq", self.seq.into()),
        ]
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
            payload: Payload::of(&[
                ("completion_tokens", self.completion_tokens.into()),
                ("conversation_id", self.conversation_id.as_str().into()),
                ("cost_micros", self.cost_micros.into()),
                ("created_at", self.created_at.into()),
                ("detail", self.detail.as_str().into()),
                ("id", self.id.as_str().into()),
                ("kind", self.kind.as_str().into()),
                ("prompt_tokens", self.prompt_tokens.into()),
                ("state", self.state.as_str().into()),
                ("total_ms", self.total_ms.into()),
                ("trigger_seq", self.trigger_seq.into()),
            ]),
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
            payload: Payload::of(&[
                ("actor_id", self.actor_id.as_str().into()),
                ("actor_role", self.actor_role.as_str().into()),
                ("at", self.at.into()),
                ("conversation_id", self.conversation_id.as_str().into()),
                ("detail", self.detail.as_str().into()),
                ("epoch", self.epoch.into()),
                ("event", self.event.as_str().into()),
                ("handoff_id", self.handoff_id.as_deref().into()),
                ("id", self.id.into()),
            ]),
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
            payload: Payload::of(&[
                ("answers", self.answers.as_str().into()),
                ("assessed_at", self.assessed_at.into()),
                ("assessment", self.assessment.as_str().into()),
                ("client_id", self.client_id.as_str().into()),
                ("conversation_id", self.conversation_id.as_deref().into()),
                ("id", self.id.as_str().into()),
                ("level", self.level.as_str().into()),
                ("max_product", self.max_product.as_str().into()),
                ("questionnaire_id", self.questionnaire_id.as_str().into()),
                (
                    "questionnaire_version",
                    self.questionnaire_version.as_str().into(),
                ),
                ("score", self.score.into()),
            ]),
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
        payload: Payload::of(&[("expires_at", expires_at.into()), ("id", id.into())]),
    }
}

/// The entry that profile `id` of `client` stopped being current at `at`.
pub fn superseded(client: &str, id: &str, at: i64) -> Record {
    Record {
        chain: client_chain(client),
        kind: "profile_superseded",
        reference: format!("profile_superseded:{id}"),
        at,
        payload: Payload::of(&[("id", id.into()), ("superseded_at", at.into())]),
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
            payload: Payload::of(&[
                ("action", self.action.as_str().into()),
                ("actor_id", self.actor_id.as_str().into()),
                ("actor_role", self.actor_role.as_str().into()),
                ("at", self.at.into()),
                ("detail", self.detail.as_str().into()),
                ("id", self.id.into()),
                ("subject", self.subject.as_deref().into()),
            ]),
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
            payload: Payload::of(&[
                ("id", self.id.as_str().into()),
                ("reason", self.reason.as_str().into()),
                ("scope", self.scope.as_str().into()),
                ("set_at", self.set_at.into()),
                ("set_by", self.set_by.as_str().into()),
                ("subject", self.subject.as_str().into()),
            ]),
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
            payload: Payload::of(&[
                ("id", self.id.as_str().into()),
                ("lift_reason", self.lift_reason.as_deref().into()),
                ("lifted_at", at.into()),
                ("lifted_by", self.lifted_by.as_deref().into()),
            ]),
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
        payload: Payload::of(&[
            ("chain_id", chain.into()),
            ("head", head.into()),
            ("length", length.into()),
            ("purged_at", at.into()),
            ("reason", why.into()),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn a_message_payload_is_its_canonical_json() {
        let row = MessageRow {
            conversation_id: "0190-c".into(),
            seq: 7,
            sender_id: "c-1 \"q\"".into(),
            sender_role: "client".into(),
            kind: "text".into(),
            body: "{\"text\":\"保本吗？\\n\\u0001\"}\u{7f}\t".into(),
            client_msg_id: None,
            created_at: -1_700_000_000_000,
        };
        let old = canonical(BTreeMap::from([
            ("conversation_id", json!(row.conversation_id)),
            ("seq", json!(row.seq)),
            ("sender_id", json!(row.sender_id)),
            ("sender_role", json!(row.sender_role)),
            ("kind", json!(row.kind)),
            ("body", json!(row.body)),
            ("client_msg_id", json!(row.client_msg_id)),
            ("created_at", json!(row.created_at)),
        ]));
        assert_eq!(row.record().payload, old);
        assert_eq!(
            message_content(&old).as_deref(),
            Some(row.content().as_str())
        );
    }

    #[test]
    fn a_lifted_hold_orders_its_keys_by_byte() {
        let hold = HoldRow {
            id: "h".into(),
            scope: "client".into(),
            subject: "c".into(),
            reason: "r".into(),
            set_by: "o".into(),
            set_at: 1,
            lifted_by: Some("o".into()),
            lifted_at: Some(2),
            lift_reason: None,
        };
        assert_eq!(
            hold.lift_record().unwrap().payload,
            r#"{"id":"h","lift_reason":null,"lifted_at":2,"lifted_by":"o"}"#
        );
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
            payload: Payload::of(&[
                ("actor_id", self.actor_id.as_str().into()),
                ("at", self.at.into()),
                ("conversation_id", self.conversation_id.as_str().into()),
                ("id", self.id.into()),
                ("note", self.note.as_str().into()),
                ("reviewed", self.reviewed.into()),
            ]),
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
            payload: Payload::of(&[
                ("actor_id", self.actor_id.as_str().into()),
                ("at", self.at.into()),
                ("context", self.context.as_str().into()),
                ("conversation_id", self.conversation_id.as_str().into()),
                ("direction", self.direction.as_str().into()),
                ("id", self.id.into()),
                ("label", self.label.as_str().into()),
                ("language", self.language.as_str().into()),
                ("note", self.note.as_str().into()),
                ("rule_id", self.rule_id.as_str().into()),
                ("text", self.text.as_str().into()),
                ("turn_id", self.turn_id.as_str().into()),
            ]),
        }
    }
}

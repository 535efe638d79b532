//! The questionnaire in progress in a conversation: which question is next and the
//! answers so far. Kept in the database, so a client can pause, disconnect, come back
//! on another device, and carry on where they left off. A half-finished session never
//! touches the stored profile.

use crate::db::{Db, DbError};
use crate::im::ConversationId;
use crate::time_fmt::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    Paused,
    Stopped,
    Completed,
}

impl SessionStatus {
    fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Paused => "paused",
            SessionStatus::Stopped => "stopped",
            SessionStatus::Completed => "completed",
        }
    }

    fn parse(s: &str) -> SessionStatus {
        match s {
            "active" => SessionStatus::Active,
            "paused" => SessionStatus::Paused,
            "completed" => SessionStatus::Completed,
            _ => SessionStatus::Stopped,
        }
    }
}

/// A questionnaire being taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub conversation_id: ConversationId,
    pub client_id: String,
    pub questionnaire_id: String,
    pub questionnaire_version: String,
    /// Index of the question being asked.
    pub position: usize,
    /// The option id chosen per question, by question order.
    pub answers: Vec<Option<String>>,
    pub status: SessionStatus,
}

pub async fn load(db: &Db, conversation: ConversationId) -> Result<Option<Session>, DbError> {
    let row: Option<(String, String, String, i64, String, String)> = sqlx::query_as(
        "SELECT client_id, questionnaire_id, questionnaire_version, position, answers, status \
         FROM questionnaire_sessions WHERE conversation_id = $1",
    )
    .bind(conversation.to_string())
    .fetch_optional(db.pool())
    .await?;
    row.map(|(client_id, qid, version, position, answers, status)| {
        Ok(Session {
            conversation_id: conversation,
            client_id,
            questionnaire_id: qid,
            questionnaire_version: version,
            position: position.max(0) as usize,
            answers: serde_json::from_str(&answers)
                .map_err(|e| DbError::Query(sqlx::Error::Decode(Box::new(e))))?,
            status: SessionStatus::parse(&status),
        })
    })
    .transpose()
}

pub async fn save(db: &Db, session: &Session) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO questionnaire_sessions (conversation_id, client_id, questionnaire_id, \
         questionnaire_version, position, answers, status, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (conversation_id) DO UPDATE SET client_id = excluded.client_id, \
         questionnaire_id = excluded.questionnaire_id, \
         questionnaire_version = excluded.questionnaire_version, position = excluded.position, \
         answers = excluded.answers, status = excluded.status, updated_at = excluded.updated_at",
    )
    .bind(session.conversation_id.to_string())
    .bind(&session.client_id)
    .bind(&session.questionnaire_id)
    .bind(&session.questionnaire_version)
    .bind(session.position as i64)
    .bind(serde_json::to_string(&session.answers).expect("answers serialise"))
    .bind(session.status.as_str())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The sequence number of the last client message the bot has handled.
pub async fn cursor(db: &Db, conversation: ConversationId) -> Result<i64, DbError> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM bot_cursors WHERE conversation_id = $1")
            .bind(conversation.to_string())
            .fetch_optional(db.pool())
            .await?;
    Ok(seq.unwrap_or(0))
}

/// Takes (or renews) the right to run this conversation's bot turns for `ttl_ms`.
/// False while another node holds an unexpired lease.
pub async fn acquire_lease(
    db: &Db,
    conversation: ConversationId,
    owner: &str,
    ttl_ms: i64,
) -> Result<bool, DbError> {
    let now = now_ms();
    let done = sqlx::query(
        "INSERT INTO bot_cursors (conversation_id, seq, lease_owner, lease_until) \
         VALUES ($1, 0, $2, $3) \
         ON CONFLICT (conversation_id) DO UPDATE SET lease_owner = excluded.lease_owner, \
         lease_until = excluded.lease_until \
         WHERE bot_cursors.lease_until < $4 OR bot_cursors.lease_owner = excluded.lease_owner",
    )
    .bind(conversation.to_string())
    .bind(owner)
    .bind(now + ttl_ms)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up so another node may run the next turn at once.
pub async fn release_lease(
    db: &Db,
    conversation: ConversationId,
    owner: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE bot_cursors SET lease_until = 0 WHERE conversation_id = $1 AND lease_owner = $2",
    )
    .bind(conversation.to_string())
    .bind(owner)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Moves the cursor from `from` to `to`; false when another worker moved it first.
pub async fn advance_cursor(
    db: &Db,
    conversation: ConversationId,
    from: i64,
    to: i64,
) -> Result<bool, DbError> {
    let done = if from == 0 {
        sqlx::query(
            "INSERT INTO bot_cursors (conversation_id, seq) VALUES ($1, $2) \
             ON CONFLICT (conversation_id) DO UPDATE SET seq = excluded.seq \
             WHERE bot_cursors.seq = 0",
        )
        .bind(conversation.to_string())
        .bind(to)
        .execute(db.pool())
        .await?
    } else {
        sqlx::query("UPDATE bot_cursors SET seq = $3 WHERE conversation_id = $1 AND seq = $2")
            .bind(conversation.to_string())
            .bind(from)
            .bind(to)
            .execute(db.pool())
            .await?
    };
    Ok(done.rows_affected() == 1)
}

/// Records what the bot decided in a turn (kept for compliance review).
pub async fn record_turn(
    db: &Db,
    conversation: ConversationId,
    trigger_seq: i64,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO turn_records (id, conversation_id, trigger_seq, kind, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(conversation.to_string())
    .bind(trigger_seq)
    .bind(kind)
    .bind(detail.to_string())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Turn records of a conversation, oldest first: `(trigger_seq, kind, detail)`.
pub async fn turns(
    db: &Db,
    conversation: ConversationId,
) -> Result<Vec<(i64, String, serde_json::Value)>, DbError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT trigger_seq, kind, detail FROM turn_records WHERE conversation_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(conversation.to_string())
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, kind, detail)| (seq, kind, serde_json::from_str(&detail).unwrap_or_default()))
        .collect())
}

//! Durable conversations and messages. Sequence numbers are assigned inside the
//! committing transaction, so they are gapless and follow commit order.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::model::{Conversation, ConversationId, ConversationMode, Language, Message, Sender};
use crate::auth::AuthUser;
use crate::db::{Db, DbError};
use crate::time_fmt::{now_ms, rfc3339};

/// Creates or refreshes the participant row of an authenticated caller.
pub async fn upsert_participant(
    db: &Db,
    user: &AuthUser,
    language: Language,
) -> Result<(), DbError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO participants (id, role, display_name, language, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, \
         language = excluded.language, updated_at = excluded.updated_at",
    )
    .bind(&user.id)
    .bind(user.role.as_str())
    .bind(&user.display_name)
    .bind(language.as_str())
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Starts a conversation for `client` in bot mode.
pub async fn create_conversation(
    db: &Db,
    client: &AuthUser,
    language: Language,
) -> Result<Conversation, DbError> {
    upsert_participant(db, client, language).await?;
    let id = ConversationId::new();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO conversations (id, client_id, mode, language, last_seq, created_at, updated_at) \
         VALUES ($1, $2, 'bot', $3, 0, $4, $4)",
    )
    .bind(id.to_string())
    .bind(&client.id)
    .bind(language.as_str())
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(Conversation {
        id,
        client_id: client.id.clone(),
        mode: ConversationMode::Bot,
        language,
        last_seq: 0,
        created_at: rfc3339(now),
        updated_at: rfc3339(now),
    })
}

const CONVERSATION_COLUMNS: &str =
    "id, client_id, mode, language, last_seq, created_at, updated_at";

fn conversation_from_row(row: &AnyRow) -> Result<Conversation, DbError> {
    let decode = |what: &str, problem: String| {
        DbError::Query(sqlx::Error::Decode(
            format!("conversations.{what}: {problem}").into(),
        ))
    };
    Ok(Conversation {
        id: row
            .try_get::<String, _>("id")?
            .parse()
            .map_err(|e| decode("id", e))?,
        client_id: row.try_get("client_id")?,
        mode: row
            .try_get::<String, _>("mode")?
            .parse()
            .map_err(|e| decode("mode", e))?,
        language: row
            .try_get::<String, _>("language")?
            .parse()
            .map_err(|e| decode("language", e))?,
        last_seq: row.try_get("last_seq")?,
        created_at: rfc3339(row.try_get("created_at")?),
        updated_at: rfc3339(row.try_get("updated_at")?),
    })
}

pub async fn get_conversation(
    db: &Db,
    id: ConversationId,
) -> Result<Option<Conversation>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(conversation_from_row).transpose()
}

/// Newest first. `client_id` narrows to one client.
pub async fn list_conversations(
    db: &Db,
    client_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Conversation>, DbError> {
    let rows = match client_id {
        Some(client) => {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE client_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            )))
            .bind(client.to_string())
            .bind(limit)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations \
                 ORDER BY created_at DESC, id DESC LIMIT $1"
            )))
            .bind(limit)
            .fetch_all(db.pool())
            .await?
        }
    };
    rows.iter().map(conversation_from_row).collect()
}

fn message_from_row(row: &AnyRow) -> Result<Message, DbError> {
    let body: String = row.try_get("body")?;
    Ok(Message {
        conversation_id: row
            .try_get::<String, _>("conversation_id")?
            .parse()
            .map_err(|e: String| DbError::Query(sqlx::Error::Decode(e.into())))?,
        seq: row.try_get("seq")?,
        sender: Sender {
            id: row.try_get("sender_id")?,
            role: row.try_get("sender_role")?,
        },
        kind: row.try_get("kind")?,
        body: serde_json::from_str(&body)
            .map_err(|e| DbError::Query(sqlx::Error::Decode(Box::new(e))))?,
        client_msg_id: row.try_get("client_msg_id")?,
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

/// Messages with `seq > after_seq`, oldest first, at most `limit`.
pub async fn list_messages(
    db: &Db,
    id: ConversationId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Message>, DbError> {
    let rows = sqlx::query(
        "SELECT conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at \
         FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id.to_string())
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(message_from_row).collect()
}

/// A message to commit.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub sender: Sender,
    pub kind: String,
    pub body: serde_json::Value,
    pub client_msg_id: Option<String>,
}

/// The outcome of [`append_message`].
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub message: Message,
    /// True when `client_msg_id` had been committed before: nothing new was stored.
    pub duplicate: bool,
}

/// Commits one message, assigning the next sequence number. A repeated
/// `(sender, client_msg_id)` returns the original message and stores nothing.
pub async fn append_message(db: &Db, new: NewMessage) -> Result<Option<Appended>, DbError> {
    let mut tx = db.begin_write().await?;
    let now = now_ms();
    let conversation = new.conversation_id.to_string();
    // Taking the row lock first serialises writers of one conversation (PostgreSQL) or
    // the database (SQLite) before the duplicate check, so the check cannot race.
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE conversations SET last_seq = last_seq + 1, updated_at = $2 WHERE id = $1 \
         RETURNING last_seq",
    )
    .bind(&conversation)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(seq) = seq else {
        return Ok(None);
    };
    if let Some(client_msg_id) = &new.client_msg_id {
        let existing = sqlx::query(
            "SELECT conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at \
             FROM messages WHERE conversation_id = $1 AND sender_id = $2 AND client_msg_id = $3",
        )
        .bind(&conversation)
        .bind(&new.sender.id)
        .bind(client_msg_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.rollback().await?;
            return Ok(Some(Appended {
                message: message_from_row(&row)?,
                duplicate: true,
            }));
        }
    }
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&conversation)
    .bind(seq)
    .bind(&new.sender.id)
    .bind(&new.sender.role)
    .bind(&new.kind)
    .bind(new.body.to_string())
    .bind(new.client_msg_id.clone())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Appended {
        message: Message {
            conversation_id: new.conversation_id,
            seq,
            sender: new.sender,
            kind: new.kind,
            body: new.body,
            client_msg_id: new.client_msg_id,
            created_at: rfc3339(now),
        },
        duplicate: false,
    }))
}

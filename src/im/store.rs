//! Durable conversations and messages. Sequence numbers are assigned inside the
//! committing transaction, so they are gapless and follow commit order.

use sqlx::any::AnyRow;
use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::model::{Conversation, ConversationId, ConversationMode, Language, Message, Sender};
use crate::auth::AuthUser;
use crate::db::{Backend, Db, DbError};
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

/// What became of one message handed to [`commit_batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Committed now with a new sequence number.
    Stored(Message),
    /// This `(sender, client_msg_id)` was committed before: the original, nothing new stored.
    Duplicate(Message),
    ConversationNotFound,
    ConversationClosed,
}

impl Outcome {
    /// The committed message, new or original.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Outcome::Stored(m) | Outcome::Duplicate(m) => Some(m),
            _ => None,
        }
    }
}

/// Commits one message (a batch of one).
pub async fn append_message(db: &Db, new: NewMessage) -> Result<Outcome, DbError> {
    let mut outcomes = commit_batch(db, std::slice::from_ref(&new)).await?;
    Ok(outcomes.pop().expect("one outcome per message"))
}

/// Commits many messages in one transaction (group commit): a fixed number of
/// statements whatever the batch size. Within the transaction every conversation
/// touched is locked, duplicates are found, and sequence numbers are assigned in batch
/// order, so they stay gapless and follow commit order. Returns one outcome per
/// message, in order.
pub async fn commit_batch(db: &Db, batch: &[NewMessage]) -> Result<Vec<Outcome>, DbError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let mut tx = db.begin_write().await?;

    // 1. Lock and read the conversations touched (sorted: nodes lock in the same order).
    let mut ids: Vec<String> = batch
        .iter()
        .map(|m| m.conversation_id.to_string())
        .collect();
    ids.sort();
    ids.dedup();
    let mut sql = String::from("SELECT id, mode, last_seq FROM conversations WHERE id IN (");
    push_placeholders(&mut sql, 1, ids.len());
    sql.push_str(") ORDER BY id");
    if db.backend() == Backend::Postgres {
        sql.push_str(" FOR UPDATE");
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for id in &ids {
        query = query.bind(id.clone());
    }
    let mut conversations: HashMap<String, (String, i64)> = HashMap::new();
    for row in query.fetch_all(&mut *tx).await? {
        conversations.insert(
            row.try_get("id")?,
            (row.try_get("mode")?, row.try_get("last_seq")?),
        );
    }

    // 2. Messages committed before under the same (conversation, sender, client id).
    let keyed: Vec<&NewMessage> = batch.iter().filter(|m| m.client_msg_id.is_some()).collect();
    let mut earlier: HashMap<(String, String, String), Message> = HashMap::new();
    if !keyed.is_empty() {
        let mut sql = String::from(
            "SELECT conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at \
             FROM messages WHERE ",
        );
        for i in 0..keyed.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            let p = i * 3;
            sql.push_str(&format!(
                "(conversation_id = ${} AND sender_id = ${} AND client_msg_id = ${})",
                p + 1,
                p + 2,
                p + 3
            ));
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for m in &keyed {
            query = query
                .bind(m.conversation_id.to_string())
                .bind(m.sender.id.clone())
                .bind(m.client_msg_id.clone());
        }
        for row in query.fetch_all(&mut *tx).await? {
            let message = message_from_row(&row)?;
            let key = dedup_key(
                &message.conversation_id.to_string(),
                &message.sender.id,
                message.client_msg_id.as_deref().unwrap_or_default(),
            );
            earlier.insert(key, message);
        }
    }

    // 3. Assign sequence numbers in batch order.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored: Vec<Message> = Vec::new();
    for new in batch {
        let conversation = new.conversation_id.to_string();
        let Some((mode, last_seq)) = conversations.get_mut(&conversation) else {
            outcomes.push(Outcome::ConversationNotFound);
            continue;
        };
        if mode == "closed" {
            outcomes.push(Outcome::ConversationClosed);
            continue;
        }
        if let Some(client_msg_id) = &new.client_msg_id {
            let key = dedup_key(&conversation, &new.sender.id, client_msg_id);
            if let Some(original) = earlier.get(&key) {
                outcomes.push(Outcome::Duplicate(original.clone()));
                continue;
            }
        }
        *last_seq += 1;
        let message = Message {
            conversation_id: new.conversation_id,
            seq: *last_seq,
            sender: new.sender.clone(),
            kind: new.kind.clone(),
            body: new.body.clone(),
            client_msg_id: new.client_msg_id.clone(),
            created_at: rfc3339(now),
        };
        if let Some(client_msg_id) = &new.client_msg_id {
            earlier.insert(
                dedup_key(&conversation, &new.sender.id, client_msg_id),
                message.clone(),
            );
        }
        stored.push(message.clone());
        outcomes.push(Outcome::Stored(message));
    }
    if stored.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes);
    }

    // 4. One multi-row insert, one multi-row update of the counters.
    let mut sql = String::from(
        "INSERT INTO messages (conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at) VALUES ",
    );
    for i in 0..stored.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        push_placeholders(&mut sql, i * 8 + 1, 8);
        sql.push(')');
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for m in &stored {
        query = query
            .bind(m.conversation_id.to_string())
            .bind(m.seq)
            .bind(m.sender.id.clone())
            .bind(m.sender.role.clone())
            .bind(m.kind.clone())
            .bind(m.body.to_string())
            .bind(m.client_msg_id.clone())
            .bind(now);
    }
    query.execute(&mut *tx).await?;

    let mut last: Vec<(String, i64)> = Vec::new();
    for m in &stored {
        let id = m.conversation_id.to_string();
        match last.iter_mut().find(|(c, _)| *c == id) {
            Some(entry) => entry.1 = m.seq,
            None => last.push((id, m.seq)),
        }
    }
    let mut sql = String::from("UPDATE conversations SET last_seq = CASE id");
    for i in 0..last.len() {
        sql.push_str(&format!(" WHEN ${} THEN ${}", i * 2 + 1, i * 2 + 2));
    }
    let next = last.len() * 2 + 1;
    sql.push_str(&format!(
        " ELSE last_seq END, updated_at = ${next} WHERE id IN ("
    ));
    push_placeholders(&mut sql, next + 1, last.len());
    sql.push(')');
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for (id, seq) in &last {
        query = query.bind(id.clone()).bind(*seq);
    }
    query = query.bind(now);
    for (id, _) in &last {
        query = query.bind(id.clone());
    }
    query.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(outcomes)
}

fn dedup_key(conversation: &str, sender: &str, client_msg_id: &str) -> (String, String, String) {
    (
        conversation.to_string(),
        sender.to_string(),
        client_msg_id.to_string(),
    )
}

/// Appends `$first, $first+1, …` (`count` of them) separated by commas.
fn push_placeholders(sql: &mut String, first: usize, count: usize) {
    for i in 0..count {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", first + i));
    }
}

/// Adds a participant (an advisor) to a conversation. Returns false if already a member.
pub async fn add_member(
    db: &Db,
    conversation: ConversationId,
    user: &AuthUser,
) -> Result<bool, DbError> {
    upsert_participant(
        db,
        user,
        user.language
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or(Language::ZhCn),
    )
    .await?;
    let done = sqlx::query(
        "INSERT INTO conversation_members (conversation_id, participant_id, role, joined_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, participant_id) DO NOTHING",
    )
    .bind(conversation.to_string())
    .bind(&user.id)
    .bind(user.role.as_str())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn is_member(
    db: &Db,
    conversation: ConversationId,
    participant: &str,
) -> Result<bool, DbError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND participant_id = $2",
    )
    .bind(conversation.to_string())
    .bind(participant)
    .fetch_optional(db.pool())
    .await?;
    Ok(found.is_some())
}

/// Moves a participant's delivered/read pointer forward (never back). Returns true
/// when it moved. Read implies delivered.
pub async fn record_receipt(
    db: &Db,
    conversation: ConversationId,
    participant: &str,
    read: bool,
    seq: i64,
) -> Result<bool, DbError> {
    let read_seq = if read { seq } else { 0 };
    let done = sqlx::query(
        "INSERT INTO receipts (conversation_id, participant_id, delivered_seq, read_seq, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (conversation_id, participant_id) DO UPDATE SET \
         delivered_seq = CASE WHEN excluded.delivered_seq > receipts.delivered_seq \
                              THEN excluded.delivered_seq ELSE receipts.delivered_seq END, \
         read_seq = CASE WHEN excluded.read_seq > receipts.read_seq \
                         THEN excluded.read_seq ELSE receipts.read_seq END, \
         updated_at = excluded.updated_at \
         WHERE excluded.delivered_seq > receipts.delivered_seq OR excluded.read_seq > receipts.read_seq",
    )
    .bind(conversation.to_string())
    .bind(participant)
    .bind(seq)
    .bind(read_seq)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `(delivered_seq, read_seq)` of a participant.
pub async fn receipt_of(
    db: &Db,
    conversation: ConversationId,
    participant: &str,
) -> Result<(i64, i64), DbError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT delivered_seq, read_seq FROM receipts WHERE conversation_id = $1 AND participant_id = $2",
    )
    .bind(conversation.to_string())
    .bind(participant)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.unwrap_or((0, 0)))
}

/// Current `last_seq` of each listed conversation that exists.
pub async fn last_seqs(
    db: &Db,
    ids: &[ConversationId],
) -> Result<Vec<(ConversationId, i64)>, DbError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let mut sql = String::from("SELECT id, last_seq FROM conversations WHERE id IN (");
        push_placeholders(&mut sql, 1, chunk.len());
        sql.push(')');
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.to_string());
        }
        for row in query.fetch_all(db.pool()).await? {
            let id: String = row.try_get("id")?;
            if let Ok(id) = id.parse() {
                out.push((id, row.try_get("last_seq")?));
            }
        }
    }
    Ok(out)
}

/// Conversations of a client that are not closed (to subscribe a client's devices).
pub async fn open_conversations_of(
    db: &Db,
    client_id: &str,
) -> Result<Vec<ConversationId>, DbError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM conversations WHERE client_id = $1 AND mode <> 'closed' ORDER BY created_at DESC LIMIT 100",
    )
    .bind(client_id)
    .fetch_all(db.pool())
    .await?;
    Ok(ids.into_iter().filter_map(|id| id.parse().ok()).collect())
}

//! Durable conversations and messages. Sequence numbers are assigned inside the
//! committing transaction, so they are gapless and follow commit order.

use sqlx::any::AnyRow;
use std::collections::{HashMap, HashSet};

use sqlx::{AssertSqlSafe, Row};

use super::model::{Conversation, ConversationId, ConversationMode, Language, Message, Sender};
use crate::auth::AuthUser;
use crate::db::{Db, DbError, Markers, ROWS_PER_INSERT};
use crate::time_fmt::{now_ms, rfc3339};

/// Creates or refreshes the participant row of an authenticated caller.
pub async fn upsert_participant(
    db: &Db,
    user: &AuthUser,
    language: Language,
) -> Result<(), DbError> {
    let now = now_ms();
    db.write(
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
        .bind(now),
    )
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
    db.write(sqlx::query(
        "INSERT INTO conversations (id, client_id, mode, language, last_seq, created_at, updated_at) \
         VALUES ($1, $2, 'bot', $3, 0, $4, $4)",
    )
    .bind(id.to_string())
    .bind(&client.id)
    .bind(language.as_str())
    .bind(now)
    )
    .await?;
    Ok(Conversation {
        id,
        client_id: client.id.clone(),
        mode: ConversationMode::Bot,
        epoch: 0,
        advisor_id: None,
        language,
        last_seq: 0,
        created_at: rfc3339(now),
        updated_at: rfc3339(now),
    })
}

const CONVERSATION_COLUMNS: &str =
    "id, client_id, mode, epoch, advisor_id, language, last_seq, created_at, updated_at";

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
        epoch: row.try_get("epoch")?,
        advisor_id: row.try_get("advisor_id")?,
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

/// A `messages` row in column order (`MESSAGE_COLUMNS`); decodes the same on both engines.
type MessageRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
);

const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at";

fn message_from_row(row: MessageRow) -> Result<Message, DbError> {
    let (conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at) = row;
    let decode = |e: String| DbError::Query(sqlx::Error::Decode(e.into()));
    Ok(Message {
        conversation_id: conversation_id.parse().map_err(decode)?,
        seq,
        sender: Sender {
            id: sender_id,
            role: sender_role,
        },
        kind,
        body: serde_json::from_str(&body).map_err(|e| decode(format!("messages.body: {e}")))?,
        client_msg_id,
        created_at: rfc3339(created_at),
    })
}

/// Messages with `seq > after_seq`, oldest first, at most `limit`.
pub async fn list_messages(
    db: &Db,
    id: ConversationId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Message>, DbError> {
    let rows: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages \
         WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    )))
    .bind(id.to_string())
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(message_from_row).collect()
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
    /// An advisor's message to a conversation another owner holds (the queue, the bot
    /// or a colleague): refused, nothing stored.
    NotOwner,
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
    Ok(commit_batch_noting_bot_mode(db, batch).await?.0)
}

/// [`commit_batch`], also naming the conversations of the batch that are in bot mode
/// (read under the same lock), so the caller knows which need a bot turn.
pub async fn commit_batch_noting_bot_mode(
    db: &Db,
    batch: &[NewMessage],
) -> Result<(Vec<Outcome>, HashSet<ConversationId>), DbError> {
    if batch.is_empty() {
        return Ok((Vec::new(), HashSet::new()));
    }
    match db.postgres() {
        Some(pg) => commit_batch_postgres(pg, batch).await,
        None => commit_batch_portable(db, batch).await,
    }
}

/// Conversations in bot mode among those read.
fn bot_mode(conversations: &ConversationStates) -> HashSet<ConversationId> {
    conversations
        .iter()
        .filter(|(_, (mode, _, _))| mode == "bot")
        .filter_map(|(id, _)| id.parse().ok())
        .collect()
}

/// Mode, last sequence number and owning advisor of each conversation read.
type ConversationStates = HashMap<String, (String, i64, Option<String>)>;
type DedupKey = (String, String, String);

/// Conversation ids of a batch, sorted (every node locks in the same order) and unique.
fn touched_conversations(batch: &[NewMessage]) -> Vec<String> {
    let mut ids: Vec<String> = batch
        .iter()
        .map(|m| m.conversation_id.to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Decides each message's fate and sequence number. Pure: the reads happened before,
/// the writes follow.
fn assign(
    batch: &[NewMessage],
    mut conversations: ConversationStates,
    mut earlier: HashMap<DedupKey, Message>,
    now: i64,
) -> (Vec<Outcome>, Vec<Message>) {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored: Vec<Message> = Vec::new();
    for new in batch {
        let conversation = new.conversation_id.to_string();
        let Some((mode, last_seq, owner)) = conversations.get_mut(&conversation) else {
            outcomes.push(Outcome::ConversationNotFound);
            continue;
        };
        if mode == "closed" {
            outcomes.push(Outcome::ConversationClosed);
            continue;
        }
        if new.sender.role == "advisor" && owner.as_deref() != Some(new.sender.id.as_str()) {
            outcomes.push(Outcome::NotOwner);
            continue;
        }
        let key = new
            .client_msg_id
            .as_ref()
            .map(|c| dedup_key(&conversation, &new.sender.id, c));
        if let Some(original) = key.as_ref().and_then(|k| earlier.get(k)) {
            outcomes.push(Outcome::Duplicate(original.clone()));
            continue;
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
        if let Some(key) = key {
            earlier.insert(key, message.clone());
        }
        stored.push(message.clone());
        outcomes.push(Outcome::Stored(message));
    }
    (outcomes, stored)
}

/// The newest sequence number each conversation reaches with `stored`.
fn new_tails(stored: &[Message]) -> Vec<(String, i64)> {
    let mut last: Vec<(String, i64)> = Vec::new();
    for m in stored {
        let id = m.conversation_id.to_string();
        match last.iter_mut().find(|(c, _)| *c == id) {
            Some(entry) => entry.1 = m.seq,
            None => last.push((id, m.seq)),
        }
    }
    last
}

fn index_earlier(rows: Vec<MessageRow>) -> Result<HashMap<DedupKey, Message>, DbError> {
    let mut earlier = HashMap::new();
    for row in rows {
        let message = message_from_row(row)?;
        let key = dedup_key(
            &message.conversation_id.to_string(),
            &message.sender.id,
            message.client_msg_id.as_deref().unwrap_or_default(),
        );
        earlier.insert(key, message);
    }
    Ok(earlier)
}

/// SQLite (and any engine): multi-row statements with one placeholder per value.
async fn commit_batch_portable(
    db: &Db,
    batch: &[NewMessage],
) -> Result<(Vec<Outcome>, HashSet<ConversationId>), DbError> {
    let mut tx = db.begin_write().await?;
    let (outcomes, bots, wrote) = commit_in(&mut tx, batch, false).await?;
    if wrote {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok((outcomes, bots))
}

/// Commits `batch` inside a write transaction that the caller owns (and may extend
/// with more writes before committing). `lock_rows` takes row locks on the
/// conversations touched (PostgreSQL, where writers do not queue as on SQLite).
/// Returns the outcomes, the conversations in bot mode, and whether anything was
/// written.
///
/// The messages are archived behind the commit ([`crate::archive::backlog`]). On
/// SQLite, whose one writer holds the write lock for the whole transaction, the
/// messages and the conversations' tails are written in one multi-statement round trip
/// to the engine.
pub(crate) async fn commit_in(
    tx: &mut sqlx::AnyConnection,
    batch: &[NewMessage],
    lock_rows: bool,
) -> Result<(Vec<Outcome>, HashSet<ConversationId>, bool), DbError> {
    if batch.is_empty() {
        return Ok((Vec::new(), HashSet::new(), false));
    }
    let one_writer = tx.backend_name() != "PostgreSQL";
    let now = now_ms();
    let ids = touched_conversations(batch);
    let mut marks = Markers::for_connection(tx);
    let mut sql =
        String::from("SELECT id, mode, last_seq, advisor_id FROM conversations WHERE id IN (");
    marks.push_list(&mut sql, ids.len());
    sql.push(')');
    if lock_rows {
        sql.push_str(" ORDER BY id FOR UPDATE");
    }
    let mut query = sqlx::query_as::<_, (String, String, i64, Option<String>)>(AssertSqlSafe(sql));
    for id in &ids {
        query = query.bind(id.clone());
    }
    let conversations: ConversationStates = query
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, mode, last, owner)| (id, (mode, last, owner)))
        .collect();

    let keyed: Vec<&NewMessage> = batch.iter().filter(|m| m.client_msg_id.is_some()).collect();
    let earlier = if keyed.is_empty() {
        HashMap::new()
    } else {
        let mut marks = Markers::for_connection(tx);
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE ");
        for i in 0..keyed.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str("(conversation_id = ");
            marks.push(&mut sql);
            sql.push_str(" AND sender_id = ");
            marks.push(&mut sql);
            sql.push_str(" AND client_msg_id = ");
            marks.push(&mut sql);
            sql.push(')');
        }
        let mut query = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql));
        for m in &keyed {
            query = query
                .bind(m.conversation_id.to_string())
                .bind(m.sender.id.clone())
                .bind(m.client_msg_id.clone());
        }
        index_earlier(query.fetch_all(&mut *tx).await?)?
    };

    let bots = bot_mode(&conversations);
    let (outcomes, stored) = assign(batch, conversations, earlier, now);
    if stored.is_empty() {
        return Ok((outcomes, bots, false));
    }
    let last = new_tails(&stored);
    if one_writer {
        let mut marks = Markers::for_connection(tx);
        let mut sql = String::new();
        push_insert_messages(&mut sql, &mut marks, stored.len());
        push_update_tails(&mut sql, &mut marks, last.len());
        let query = bind_messages(sqlx::query(AssertSqlSafe(sql)), &stored, now);
        bind_tails(query, &last, now).execute(&mut *tx).await?;
    } else {
        // One statement per round trip: PostgreSQL binds no values in a multi-statement
        // string.
        for chunk in stored.chunks(ROWS_PER_INSERT) {
            let mut sql = String::new();
            push_insert_messages(&mut sql, &mut Markers::for_connection(tx), chunk.len());
            let query = bind_messages(sqlx::query(AssertSqlSafe(sql)), chunk, now);
            query.execute(&mut *tx).await?;
        }
        let mut sql = String::new();
        push_update_tails(&mut sql, &mut Markers::for_connection(tx), last.len());
        let query = bind_tails(sqlx::query(AssertSqlSafe(sql)), &last, now);
        query.execute(&mut *tx).await?;
    }
    Ok((outcomes, bots, true))
}

/// The statements inserting `count` messages (bound by [`bind_messages`]), each ended
/// by `;`.
fn push_insert_messages(sql: &mut String, marks: &mut Markers, count: usize) {
    let mut left = count;
    while left > 0 {
        let rows = left.min(ROWS_PER_INSERT);
        sql.push_str(&format!("INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES "));
        marks.push_rows(sql, rows, 8);
        sql.push_str(";\n");
        left -= rows;
    }
}

fn bind_messages<'q>(
    mut query: crate::archive::AnyQuery<'q>,
    stored: &[Message],
    now: i64,
) -> crate::archive::AnyQuery<'q> {
    for m in stored {
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
    query
}

/// The statement moving `count` conversations' `last_seq` (bound by [`bind_tails`]),
/// ended by `;`.
fn push_update_tails(sql: &mut String, marks: &mut Markers, count: usize) {
    sql.push_str("UPDATE conversations SET last_seq = CASE id");
    for _ in 0..count {
        sql.push_str(" WHEN ");
        marks.push(sql);
        sql.push_str(" THEN ");
        marks.push(sql);
    }
    sql.push_str(" ELSE last_seq END, updated_at = ");
    marks.push(sql);
    sql.push_str(" WHERE id IN (");
    marks.push_list(sql, count);
    sql.push_str(");\n");
}

fn bind_tails<'q>(
    mut query: crate::archive::AnyQuery<'q>,
    last: &[(String, i64)],
    now: i64,
) -> crate::archive::AnyQuery<'q> {
    for (id, seq) in last {
        query = query.bind(id.clone()).bind(*seq);
    }
    query = query.bind(now);
    for (id, _) in last {
        query = query.bind(id.clone());
    }
    query
}

/// PostgreSQL: the same steps with array parameters, so each statement is prepared
/// once whatever the batch size; conversation rows are locked with `FOR UPDATE`.
async fn commit_batch_postgres(
    pool: &sqlx::PgPool,
    batch: &[NewMessage],
) -> Result<(Vec<Outcome>, HashSet<ConversationId>), DbError> {
    let now = now_ms();
    let mut tx = pool.begin().await?;
    let ids = touched_conversations(batch);
    let conversations: ConversationStates =
        sqlx::query_as::<_, (String, String, i64, Option<String>)>(
            "SELECT id, mode, last_seq, advisor_id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, mode, last, owner)| (id, (mode, last, owner)))
        .collect();

    let keyed: Vec<&NewMessage> = batch.iter().filter(|m| m.client_msg_id.is_some()).collect();
    let earlier = if keyed.is_empty() {
        HashMap::new()
    } else {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT m.conversation_id, m.seq, m.sender_id, m.sender_role, m.kind, m.body, \
             m.client_msg_id, m.created_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(c, s, i) \
             JOIN messages m ON m.conversation_id = k.c AND m.sender_id = k.s AND m.client_msg_id = k.i",
        )
        .bind(keyed.iter().map(|m| m.conversation_id.to_string()).collect::<Vec<_>>())
        .bind(keyed.iter().map(|m| m.sender.id.clone()).collect::<Vec<_>>())
        .bind(keyed.iter().map(|m| m.client_msg_id.clone().unwrap_or_default()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        index_earlier(rows)?
    };

    let bots = bot_mode(&conversations);
    let (outcomes, stored) = assign(batch, conversations, earlier, now);
    if stored.is_empty() {
        tx.rollback().await?;
        return Ok((outcomes, bots));
    }
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, sender_role, kind, body, client_msg_id, created_at) \
         SELECT c, s, si, sr, k, b, cm, $8 \
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
              AS u(c, s, si, sr, k, b, cm)",
    )
    .bind(stored.iter().map(|m| m.conversation_id.to_string()).collect::<Vec<_>>())
    .bind(stored.iter().map(|m| m.seq).collect::<Vec<_>>())
    .bind(stored.iter().map(|m| m.sender.id.clone()).collect::<Vec<_>>())
    .bind(stored.iter().map(|m| m.sender.role.clone()).collect::<Vec<_>>())
    .bind(stored.iter().map(|m| m.kind.clone()).collect::<Vec<_>>())
    .bind(stored.iter().map(|m| m.body.to_string()).collect::<Vec<_>>())
    .bind(stored.iter().map(|m| m.client_msg_id.clone()).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let last = new_tails(&stored);
    sqlx::query(
        "UPDATE conversations AS c SET last_seq = u.seq, updated_at = $3 \
         FROM UNNEST($1::text[], $2::int8[]) AS u(id, seq) WHERE c.id = u.id",
    )
    .bind(last.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
    .bind(last.iter().map(|(_, seq)| *seq).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((outcomes, bots))
}

fn dedup_key(conversation: &str, sender: &str, client_msg_id: &str) -> DedupKey {
    (
        conversation.to_string(),
        sender.to_string(),
        client_msg_id.to_string(),
    )
}

/// Makes `participant` a member of the conversation (an advisor who claimed it or had
/// it transferred), inside the caller's transaction. Members may follow it afterwards.
pub(crate) async fn add_member_in(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
    participant: &str,
    role: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO conversation_members (conversation_id, participant_id, role, joined_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (conversation_id, participant_id) DO NOTHING",
    )
    .bind(conversation.to_string())
    .bind(participant)
    .bind(role)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// True when `advisor` takes part in at least one conversation of `client`.
pub async fn advises(db: &Db, advisor: &str, client: &str) -> Result<bool, DbError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id \
         WHERE c.client_id = $1 AND m.participant_id = $2 LIMIT 1",
    )
    .bind(client)
    .bind(advisor)
    .fetch_optional(db.pool())
    .await?;
    Ok(found.is_some())
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
    let done = db.write(sqlx::query(
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
    )
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
        Markers::new(db.backend()).push_list(&mut sql, chunk.len());
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

/// Fills `db` with `conversations` conversations of `messages` messages each through the
/// real commit path (archive included): the archive verification benchmark's data.
pub async fn fill_for_bench(db: &Db, conversations: usize, messages: usize) -> Result<(), DbError> {
    let client = AuthUser {
        id: "bench-client".into(),
        role: crate::auth::Role::Client,
        display_name: "Bench".into(),
        language: Some("zh-CN".into()),
        expires_at: u64::MAX,
    };
    let mut ids = Vec::with_capacity(conversations);
    for _ in 0..conversations {
        ids.push(create_conversation(db, &client, Language::ZhCn).await?.id);
    }
    let sender = Sender {
        id: client.id.clone(),
        role: "client".into(),
    };
    for chunk in ids.chunks(50) {
        for n in 0..messages {
            let batch: Vec<NewMessage> = chunk
                .iter()
                .map(|id| NewMessage {
                    conversation_id: *id,
                    sender: sender.clone(),
                    kind: "text".into(),
                    body: serde_json::json!({ "text": format!("第 {n} 条：这只债券基金保本吗？What are the fees of fund {n}?") }),
                    client_msg_id: Some(format!("bench-{n}")),
                })
                .collect();
            commit_batch(db, &batch).await?;
        }
    }
    Ok(())
}

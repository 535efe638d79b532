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
    save_with(db.pool(), session).await
}

async fn save_with<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    session: &Session,
) -> Result<(), DbError> {
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
    .execute(executor)
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
    let mut tx = db.begin_write().await?;
    let taken = acquire_in(&mut tx, conversation, owner, ttl_ms).await?;
    tx.commit().await?;
    Ok(taken)
}

/// [`acquire_lease`] inside a write transaction.
pub(crate) async fn acquire_in(
    conn: &mut sqlx::AnyConnection,
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
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up so another node may run the next turn at once.
pub async fn release_lease(
    db: &Db,
    conversation: ConversationId,
    owner: &str,
) -> Result<(), DbError> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE bot_cursors SET lease_until = 0 WHERE conversation_id = $1 AND lease_owner = $2",
    )
    .bind(conversation.to_string())
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records a step the bot took inside a turn (kept for compliance review).
pub async fn record_turn(
    db: &Db,
    conversation: ConversationId,
    trigger_seq: i64,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<(), DbError> {
    record(
        db,
        &TurnRecord {
            conversation_id: conversation,
            trigger_seq,
            kind: kind.to_string(),
            state: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micros: 0,
            total_ms: 0,
            detail: detail.clone(),
        },
    )
    .await
}

/// One bot turn as compliance reviews it: its columns are what gets summed and
/// filtered; `detail` holds the rest (input, retrieval, prompt ids and hashes, model
/// and parameters, token budget, latencies, output).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TurnRecord {
    pub conversation_id: ConversationId,
    pub trigger_seq: i64,
    pub kind: String,
    /// The engine state the turn ran in.
    pub state: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Estimated cost in millionths of `llm.cost_currency`.
    pub cost_micros: i64,
    pub total_ms: i64,
    pub detail: serde_json::Value,
}

pub async fn record(db: &Db, turn: &TurnRecord) -> Result<(), DbError> {
    let mut tx = db.begin_write().await?;
    record_with(&mut tx, turn).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores a turn record and appends it to the conversation's archive chain.
async fn record_with(conn: &mut sqlx::AnyConnection, turn: &TurnRecord) -> Result<(), DbError> {
    let row = crate::archive::records::TurnRow {
        id: uuid::Uuid::now_v7().to_string(),
        conversation_id: turn.conversation_id.to_string(),
        trigger_seq: turn.trigger_seq,
        kind: turn.kind.clone(),
        detail: turn.detail.to_string(),
        created_at: now_ms(),
        state: turn.state.clone(),
        prompt_tokens: turn.prompt_tokens,
        completion_tokens: turn.completion_tokens,
        cost_micros: turn.cost_micros,
        total_ms: turn.total_ms,
    };
    sqlx::query(
        "INSERT INTO turn_records (id, conversation_id, trigger_seq, kind, detail, created_at, \
         state, prompt_tokens, completion_tokens, cost_micros, total_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&row.id)
    .bind(&row.conversation_id)
    .bind(row.trigger_seq)
    .bind(&row.kind)
    .bind(&row.detail)
    .bind(row.created_at)
    .bind(&row.state)
    .bind(row.prompt_tokens)
    .bind(row.completion_tokens)
    .bind(row.cost_micros)
    .bind(row.total_ms)
    .execute(&mut *conn)
    .await?;
    crate::review::facts::record(
        conn,
        &row.conversation_id,
        &row.id,
        row.created_at,
        &turn.detail,
    )
    .await?;
    crate::archive::append(conn, &[row.record()]).await
}

/// Token usage and estimated cost summed over a conversation's turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub turns: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
}

pub async fn usage(db: &Db, conversation: ConversationId) -> Result<Usage, DbError> {
    let (turns, prompt, completion, cost): (i64, Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), \
             CAST(SUM(completion_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT) \
             FROM turn_records WHERE conversation_id = $1",
        )
        .bind(conversation.to_string())
        .fetch_one(db.pool())
        .await?;
    Ok(Usage {
        turns,
        prompt_tokens: prompt.unwrap_or(0),
        completion_tokens: completion.unwrap_or(0),
        cost_micros: cost.unwrap_or(0),
    })
}

/// Where the engine is with a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    /// Nothing asked yet.
    Greeting,
    /// Taking the risk questionnaire.
    Questionnaire,
    /// Answering questions and presenting suitable products.
    Advisory,
    /// Queued for or with a human advisor: the bot is silent.
    Handoff,
    Closed,
}

impl BotState {
    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Greeting => "greeting",
            BotState::Questionnaire => "questionnaire",
            BotState::Advisory => "advisory",
            BotState::Handoff => "handoff",
            BotState::Closed => "closed",
        }
    }

    fn parse(s: &str) -> BotState {
        match s {
            "questionnaire" => BotState::Questionnaire,
            "advisory" => BotState::Advisory,
            "handoff" => BotState::Handoff,
            "closed" => BotState::Closed,
            _ => BotState::Greeting,
        }
    }
}

/// The engine's state of a conversation and its unanswered replies in a row.
pub async fn state(db: &Db, conversation: ConversationId) -> Result<(BotState, i64), DbError> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT state, misses FROM bot_states WHERE conversation_id = $1")
            .bind(conversation.to_string())
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map_or((BotState::Greeting, 0), |(s, m)| (BotState::parse(&s), m)))
}

pub async fn save_state(
    db: &Db,
    conversation: ConversationId,
    state: BotState,
    misses: i64,
) -> Result<(), DbError> {
    save_state_with(db.pool(), conversation, state, misses).await
}

async fn save_state_with<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    conversation: ConversationId,
    state: BotState,
    misses: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO bot_states (conversation_id, state, misses, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (conversation_id) DO UPDATE SET state = excluded.state, \
         misses = excluded.misses, updated_at = excluded.updated_at",
    )
    .bind(conversation.to_string())
    .bind(state.as_str())
    .bind(misses)
    .bind(now_ms())
    .execute(executor)
    .await?;
    Ok(())
}

/// What a turn changes besides its replies: kept until the replies are committed, then
/// written in one transaction with its replies and the bot's cursor
/// ([`super::ledger::Ledger::complete`]). A turn cut short
/// (a crash, a lost lease) leaves nothing behind and runs again from the same state;
/// its replies, already committed under their `bot:<seq>:<n>` ids, are not repeated.
#[derive(Debug, Default)]
pub struct Effects {
    pub session: Option<Session>,
    pub records: Vec<TurnRecord>,
    pub state: Option<(BotState, i64)>,
    /// The handoff the turn asks for: its reason and the client message behind it.
    pub handoff: Option<(String, i64)>,
}

impl Effects {
    pub fn save_session(&mut self, session: &Session) {
        self.session = Some(session.clone());
    }

    pub fn record(&mut self, turn: TurnRecord) {
        self.records.push(turn);
    }

    /// A step of the turn worth recording (questionnaire progress, enquiries, handoffs).
    pub fn step(
        &mut self,
        conversation: ConversationId,
        trigger_seq: i64,
        kind: &str,
        detail: serde_json::Value,
    ) {
        self.records.push(TurnRecord {
            conversation_id: conversation,
            trigger_seq,
            kind: kind.to_string(),
            state: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micros: 0,
            total_ms: 0,
            detail,
        });
    }
}

/// A turn whose conversation changed owner while it ran: its records are kept (what the
/// bot would have said is part of the record), marked by a `bot.fenced` record naming
/// the replies that were withheld; nothing else of it is written.
pub(crate) async fn fence_in(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
    effects: &Effects,
    replies: &[crate::im::store::NewMessage],
    epoch: i64,
) -> Result<(), DbError> {
    if effects.records.is_empty() && replies.is_empty() {
        return Ok(());
    }
    for turn in &effects.records {
        record_with(&mut *conn, turn).await?;
    }
    let trigger_seq = effects
        .records
        .first()
        .map(|r| r.trigger_seq)
        .or_else(|| {
            replies
                .first()
                .and_then(|r| r.client_msg_id.as_deref()?.split(':').nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let withheld: Vec<serde_json::Value> = replies
        .iter()
        .map(|r| serde_json::json!({ "kind": r.kind, "client_msg_id": r.client_msg_id, "text": r.body.get("text") }))
        .collect();
    record_with(
        &mut *conn,
        &TurnRecord {
            conversation_id: conversation,
            trigger_seq,
            kind: "bot.fenced".into(),
            state: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_micros: 0,
            total_ms: 0,
            detail: serde_json::json!({ "epoch_at_start": epoch, "withheld": withheld }),
        },
    )
    .await
}

/// Writes a turn's effects and moves the cursor from `from` to `to`, as `owner` of the
/// lease (renewed for `ttl_ms`, or released when `release`), inside the caller's write
/// transaction ([`super::ledger`]). False, with nothing written, when the lease or the
/// cursor moved meanwhile.
pub(crate) async fn complete_in(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
    effects: &Effects,
    (from, to): (i64, i64),
    owner: &str,
    ttl_ms: i64,
    release: bool,
) -> Result<bool, DbError> {
    let until = if release { 0 } else { now_ms() + ttl_ms };
    let moved = sqlx::query(
        "UPDATE bot_cursors SET seq = $3, lease_until = $5 \
         WHERE conversation_id = $1 AND seq = $2 AND lease_owner = $4",
    )
    .bind(conversation.to_string())
    .bind(from)
    .bind(to)
    .bind(owner)
    .bind(until)
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() != 1 {
        return Ok(false);
    }
    if let Some(session) = &effects.session {
        save_with(&mut *conn, session).await?;
    }
    for turn in &effects.records {
        record_with(&mut *conn, turn).await?;
    }
    if let Some((state, misses)) = effects.state {
        save_state_with(&mut *conn, conversation, state, misses).await?;
    }
    Ok(true)
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

/// trigger_seq, kind, state, prompt and completion tokens, cost, total ms, created at,
/// detail.
type TurnRow = (i64, String, String, i64, i64, i64, i64, i64, String);

/// Turn records of a conversation with their columns, oldest first.
pub async fn records(
    db: &Db,
    conversation: ConversationId,
) -> Result<Vec<super::api::TurnView>, DbError> {
    let rows: Vec<TurnRow> = sqlx::query_as(
        "SELECT trigger_seq, kind, state, prompt_tokens, completion_tokens, cost_micros, \
         total_ms, created_at, detail FROM turn_records WHERE conversation_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(conversation.to_string())
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(trigger_seq, kind, state, prompt, completion, cost, total_ms, at, detail)| {
                super::api::TurnView {
                    trigger_seq,
                    kind,
                    state,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    cost_micros: cost,
                    total_ms,
                    created_at: crate::time_fmt::rfc3339(at),
                    detail: serde_json::from_str(&detail).unwrap_or_default(),
                }
            },
        )
        .collect())
}

//! The handoff tables: the conversation's owner and epoch, the queue of handoffs, the
//! ownership events and the advisors. Every function here runs inside the caller's write
//! transaction; `pg` takes row locks where PostgreSQL writers would otherwise interleave
//! (SQLite's writers already queue one at a time).

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::db::DbError;
use crate::im::{ConversationId, ConversationMode, Language};

/// A conversation row, locked for the rest of the transaction.
#[derive(Debug, Clone)]
pub struct Locked {
    pub id: ConversationId,
    pub client_id: String,
    pub mode: ConversationMode,
    pub epoch: i64,
    pub advisor_id: Option<String>,
    pub language: Language,
    pub last_seq: i64,
}

fn decode(what: &str, problem: String) -> DbError {
    DbError::Query(sqlx::Error::Decode(format!("{what}: {problem}").into()))
}

pub async fn lock(
    conn: &mut sqlx::AnyConnection,
    id: ConversationId,
    pg: bool,
) -> Result<Option<Locked>, DbError> {
    let sql = format!(
        "SELECT client_id, mode, epoch, advisor_id, language, last_seq FROM conversations WHERE id = $1{}",
        if pg { " FOR UPDATE" } else { "" }
    );
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Locked {
        id,
        client_id: row.try_get("client_id")?,
        mode: row
            .try_get::<String, _>("mode")?
            .parse()
            .map_err(|e| decode("conversations.mode", e))?,
        epoch: row.try_get("epoch")?,
        advisor_id: row.try_get("advisor_id")?,
        language: row
            .try_get::<String, _>("language")?
            .parse()
            .map_err(|e| decode("conversations.language", e))?,
        last_seq: row.try_get("last_seq")?,
    }))
}

/// Gives the conversation a new owner and returns the new epoch.
pub async fn set_owner(
    conn: &mut sqlx::AnyConnection,
    conversation: &Locked,
    mode: ConversationMode,
    advisor: Option<&str>,
    now: i64,
) -> Result<i64, DbError> {
    sqlx::query(
        "UPDATE conversations SET mode = $2, advisor_id = $3, epoch = epoch + 1, updated_at = $4 \
         WHERE id = $1",
    )
    .bind(conversation.id.to_string())
    .bind(mode.as_str())
    .bind(advisor)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(conversation.epoch + 1)
}

/// Who did something.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    /// client, advisor, bot or system.
    pub role: &'static str,
    pub name: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: "wealthdesk-system".into(),
            role: "system",
            name: "wealthdesk".into(),
        }
    }

    pub fn bot() -> Actor {
        Actor {
            id: crate::conversation::worker::BOT_ID.into(),
            role: "bot",
            name: "wealthdesk".into(),
        }
    }

    pub fn of(user: &crate::auth::AuthUser) -> Actor {
        Actor {
            id: user.id.clone(),
            role: user.role.as_str(),
            name: user.display_name.clone(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn add_event(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
    handoff: Option<&str>,
    epoch: i64,
    actor: &Actor,
    event: &str,
    detail: &Value,
    now: i64,
) -> Result<(), DbError> {
    let mut row = crate::archive::records::HandoffEventRow {
        id: 0,
        conversation_id: conversation.to_string(),
        handoff_id: handoff.map(str::to_string),
        epoch,
        at: now,
        actor_id: actor.id.clone(),
        actor_role: actor.role.to_string(),
        event: event.to_string(),
        detail: detail.to_string(),
    };
    row.id = sqlx::query_scalar(
        "INSERT INTO handoff_events (conversation_id, handoff_id, epoch, at, actor_id, actor_role, event, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&row.conversation_id)
    .bind(&row.handoff_id)
    .bind(epoch)
    .bind(now)
    .bind(&row.actor_id)
    .bind(&row.actor_role)
    .bind(&row.event)
    .bind(&row.detail)
    .fetch_one(&mut *conn)
    .await?;
    crate::archive::append(conn, &[row.record()]).await
}

/// One handoff: from the request until the advisor returns or closes the conversation.
#[derive(Debug, Clone)]
pub struct HandoffRow {
    pub id: String,
    pub conversation_id: String,
    pub reason: String,
    pub trigger_seq: Option<i64>,
    pub priority: i64,
    pub language: String,
    pub skill: String,
    pub status: String,
    pub requested_at: i64,
    pub sla_due_at: i64,
    pub escalated_at: Option<i64>,
    pub claimed_at: Option<i64>,
    pub advisor_id: Option<String>,
    pub ended_at: Option<i64>,
    pub disposition: Option<String>,
    pub summary: Option<String>,
    pub summary_source: Option<String>,
}

pub const HANDOFF_COLUMNS: &str = "h.id, h.conversation_id, h.reason, h.trigger_seq, h.priority, \
h.language, h.skill, h.status, h.requested_at, h.sla_due_at, h.escalated_at, h.claimed_at, \
h.advisor_id, h.ended_at, h.disposition, h.summary, h.summary_source";

pub fn handoff_from_row(row: &AnyRow) -> Result<HandoffRow, DbError> {
    Ok(HandoffRow {
        id: row.try_get("id")?,
        conversation_id: row.try_get("conversation_id")?,
        reason: row.try_get("reason")?,
        trigger_seq: row.try_get("trigger_seq")?,
        priority: row.try_get("priority")?,
        language: row.try_get("language")?,
        skill: row.try_get("skill")?,
        status: row.try_get("status")?,
        requested_at: row.try_get("requested_at")?,
        sla_due_at: row.try_get("sla_due_at")?,
        escalated_at: row.try_get("escalated_at")?,
        claimed_at: row.try_get("claimed_at")?,
        advisor_id: row.try_get("advisor_id")?,
        ended_at: row.try_get("ended_at")?,
        disposition: row.try_get("disposition")?,
        summary: row.try_get("summary")?,
        summary_source: row.try_get("summary_source")?,
    })
}

pub async fn insert_handoff(conn: &mut sqlx::AnyConnection, h: &HandoffRow) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO handoffs (id, conversation_id, reason, trigger_seq, priority, language, skill, \
         status, requested_at, sla_due_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&h.id)
    .bind(&h.conversation_id)
    .bind(&h.reason)
    .bind(h.trigger_seq)
    .bind(h.priority)
    .bind(&h.language)
    .bind(&h.skill)
    .bind(&h.status)
    .bind(h.requested_at)
    .bind(h.sla_due_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The conversation's open handoff (queued or claimed), if any.
pub async fn open_handoff(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
) -> Result<Option<HandoffRow>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {HANDOFF_COLUMNS} FROM handoffs h \
         WHERE h.conversation_id = $1 AND h.status IN ('queued', 'claimed')"
    )))
    .bind(conversation.to_string())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(handoff_from_row).transpose()
}

/// The conversation's newest handoff, open or not.
pub async fn latest_handoff(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
) -> Result<Option<HandoffRow>, DbError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {HANDOFF_COLUMNS} FROM handoffs h WHERE h.conversation_id = $1 \
         ORDER BY h.requested_at DESC, h.id DESC LIMIT 1"
    )))
    .bind(conversation.to_string())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(handoff_from_row).transpose()
}

/// Every queued handoff in queue order: escalated first, then by priority, then by
/// waiting time.
pub async fn queued(conn: &mut sqlx::AnyConnection) -> Result<Vec<HandoffRow>, DbError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {HANDOFF_COLUMNS} FROM handoffs h WHERE h.status = 'queued' \
         ORDER BY CASE WHEN h.escalated_at IS NULL THEN 1 ELSE 0 END, h.priority, h.requested_at, h.id"
    )))
    .fetch_all(conn)
    .await?;
    rows.iter().map(handoff_from_row).collect()
}

/// Where queued handoff `id` stands in the queue (1 = next; the end when not queued).
pub async fn position(conn: &mut sqlx::AnyConnection, id: &str) -> Result<i64, DbError> {
    let queue = queued(conn).await?;
    Ok(queue
        .iter()
        .position(|h| h.id == id)
        .map_or(queue.len() as i64, |i| i as i64 + 1))
}

/// Moves an open handoff on: claimed by an advisor, passed to another, or ended.
pub async fn update_handoff(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    status: &str,
    advisor: Option<&str>,
    now: i64,
    disposition: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE handoffs SET status = $2, advisor_id = COALESCE($3, advisor_id), \
         claimed_at = CASE WHEN $2 = 'claimed' AND claimed_at IS NULL THEN $4 ELSE claimed_at END, \
         ended_at = CASE WHEN $2 IN ('returned', 'closed') THEN $4 ELSE ended_at END, \
         disposition = COALESCE($5, disposition) WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(advisor)
    .bind(now)
    .bind(disposition)
    .execute(conn)
    .await?;
    Ok(())
}

/// An advisor as routing sees them.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Advisor {
    pub id: String,
    pub name: String,
    /// online, away or offline.
    pub status: String,
    /// Conversations they may hold at once.
    pub capacity: i64,
    /// Conversations they hold now.
    pub active: i64,
    pub languages: Vec<String>,
    pub skills: Vec<String>,
}

impl Advisor {
    /// Whether routing sends them a handoff in `language` needing `skill`.
    pub fn eligible(&self, language: &str, skill: &str) -> bool {
        self.languages.iter().any(|l| l == language)
            && (skill == "general" || self.skills.iter().any(|s| s == skill))
    }

    pub fn has_room(&self) -> bool {
        self.active < self.capacity
    }
}

const ADVISOR_SELECT: &str = "SELECT a.id, a.display_name, a.status, a.capacity, a.languages, a.skills, \
(SELECT COUNT(*) FROM conversations c WHERE c.mode = 'human' AND c.advisor_id = a.id) AS active \
FROM advisors a";

fn advisor_from_row(row: &AnyRow) -> Result<Advisor, DbError> {
    let list = |column: &str| -> Result<Vec<String>, DbError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text)
            .map_err(|e| decode(&format!("advisors.{column}"), e.to_string()))
    };
    Ok(Advisor {
        id: row.try_get("id")?,
        name: row.try_get("display_name")?,
        status: row.try_get("status")?,
        capacity: row.try_get("capacity")?,
        active: row.try_get("active")?,
        languages: list("languages")?,
        skills: list("skills")?,
    })
}

/// Reads an advisor; `pg` locks their row (claims and transfers count capacity under it).
pub async fn advisor(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    pg: bool,
) -> Result<Option<Advisor>, DbError> {
    if pg {
        sqlx::query("SELECT id FROM advisors WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    }
    let row = sqlx::query(AssertSqlSafe(format!("{ADVISOR_SELECT} WHERE a.id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(advisor_from_row).transpose()
}

pub async fn advisors(conn: &mut sqlx::AnyConnection) -> Result<Vec<Advisor>, DbError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{ADVISOR_SELECT} ORDER BY a.display_name, a.id"
    )))
    .fetch_all(conn)
    .await?;
    rows.iter().map(advisor_from_row).collect()
}

/// Creates the advisor's row on first sight (defaults from the configuration) and keeps
/// their display name current.
pub async fn ensure_advisor(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    name: &str,
    capacity: u32,
    now: i64,
) -> Result<(), DbError> {
    // Messages and memberships name the advisor as a participant.
    sqlx::query(
        "INSERT INTO participants (id, role, display_name, language, created_at, updated_at) \
         VALUES ($1, 'advisor', $2, 'en', $3, $3) \
         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
    )
    .bind(id)
    .bind(name)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO advisors (id, display_name, status, capacity, languages, skills, updated_at) \
         VALUES ($1, $2, 'online', $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
    )
    .bind(id)
    .bind(name)
    .bind(capacity as i64)
    .bind(serde_json::json!(super::LANGUAGES).to_string())
    .bind(serde_json::json!(super::SKILLS).to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn update_advisor(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    status: Option<&str>,
    capacity: Option<i64>,
    languages: Option<&[String]>,
    skills: Option<&[String]>,
    now: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE advisors SET status = COALESCE($2, status), capacity = COALESCE($3, capacity), \
         languages = COALESCE($4, languages), skills = COALESCE($5, skills), updated_at = $6 WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(capacity)
    .bind(languages.map(|l| serde_json::json!(l).to_string()))
    .bind(skills.map(|s| serde_json::json!(s).to_string()))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Median seconds from request to claim over the newest claims (for expected waits).
pub async fn median_claim_secs(conn: &mut sqlx::AnyConnection) -> Result<Option<f64>, DbError> {
    let mut waits: Vec<i64> = sqlx::query_scalar(
        "SELECT claimed_at - requested_at FROM handoffs WHERE claimed_at IS NOT NULL \
         ORDER BY claimed_at DESC LIMIT 50",
    )
    .fetch_all(conn)
    .await?;
    if waits.is_empty() {
        return Ok(None);
    }
    waits.sort_unstable();
    Ok(Some(waits[waits.len() / 2] as f64 / 1000.0))
}

pub async fn online_advisors(conn: &mut sqlx::AnyConnection) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM advisors WHERE status = 'online'")
            .fetch_one(conn)
            .await?,
    )
}

/// The bot starts again after the newest message when it gets a conversation back, so
/// nothing said while a person had it is taken as a new turn.
pub async fn move_bot_cursor(
    conn: &mut sqlx::AnyConnection,
    conversation: ConversationId,
    seq: i64,
    now: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO bot_cursors (conversation_id, seq, lease_owner, lease_until) VALUES ($1, $2, NULL, 0) \
         ON CONFLICT (conversation_id) DO UPDATE SET seq = excluded.seq",
    )
    .bind(conversation.to_string())
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO bot_states (conversation_id, state, misses, updated_at) VALUES ($1, 'advisory', 0, $2) \
         ON CONFLICT (conversation_id) DO UPDATE SET state = 'advisory', misses = 0, updated_at = excluded.updated_at",
    )
    .bind(conversation.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

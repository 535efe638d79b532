//! Retention and legal holds. A conversation is kept `archive.retain_conversations_days`
//! after its last activity, a client's risk profiles `archive.retain_profiles_days` after
//! the newest was assessed; then the purge removes them — live rows and their archive
//! chain together — and appends to the `purges` chain what it removed (the chain, its
//! length and head), so verification still passes and shows the purge. Nothing under a
//! legal hold (on the conversation, or on its client) is ever purged. Compliance access
//! records are never purged (the audit log refuses deletes).

use serde::Serialize;

use super::records::{HOLD_SELECT, HoldRow, purge as purge_record};
use super::{append, client_chain, conversation_chain};
use crate::auth::AuthUser;
use crate::config::ArchiveConfig;
use crate::db::{Db, DbError};
use crate::error::{AppError, Result};
use crate::time_fmt::now_ms;

const DAY_MS: i64 = 86_400_000;

/// Tables holding a conversation's rows, children first.
const CONVERSATION_TABLES: &[&str] = &[
    "receipts",
    "conversation_members",
    "questionnaire_sessions",
    "bot_cursors",
    "bot_states",
    "turn_records",
    "turn_facts",
    "search_text",
    "search_progress",
    "archive_progress",
    "reviews",
    "guardrail_labels",
    "handoff_events",
    "handoffs",
    "messages",
];

/// Places a legal hold on a conversation or a client.
pub async fn set_hold(
    db: &Db,
    by: &AuthUser,
    scope: &str,
    subject: &str,
    reason: &str,
) -> Result<HoldRow> {
    let hold = HoldRow {
        id: uuid::Uuid::now_v7().to_string(),
        scope: scope.to_string(),
        subject: subject.to_string(),
        reason: reason.to_string(),
        set_by: by.id.clone(),
        set_at: now_ms(),
        lifted_by: None,
        lifted_at: None,
        lift_reason: None,
    };
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO legal_holds (id, scope, subject, reason, set_by, set_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&hold.id)
    .bind(&hold.scope)
    .bind(&hold.subject)
    .bind(&hold.reason)
    .bind(&hold.set_by)
    .bind(hold.set_at)
    .execute(&mut *tx)
    .await?;
    append(&mut tx, &[hold.set_record()]).await?;
    tx.commit().await?;
    Ok(hold)
}

/// Lifts hold `id`, with the reason.
pub async fn lift_hold(db: &Db, by: &AuthUser, id: &str, reason: &str) -> Result<HoldRow> {
    let mut tx = db.begin_write().await?;
    let sql = format!("{HOLD_SELECT} WHERE id = $1");
    let mut hold: HoldRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| AppError::HoldNotFound(id.to_string()))?;
    if hold.lifted_at.is_some() {
        return Err(AppError::HoldLifted(id.to_string()));
    }
    hold.lifted_by = Some(by.id.clone());
    hold.lifted_at = Some(now_ms());
    hold.lift_reason = Some(reason.to_string());
    let lifted = sqlx::query(
        "UPDATE legal_holds SET lifted_by = $2, lifted_at = $3, lift_reason = $4 WHERE id = $1 AND lifted_at IS NULL",
    )
    .bind(id)
    .bind(&hold.lifted_by)
    .bind(hold.lifted_at)
    .bind(&hold.lift_reason)
    .execute(&mut *tx)
    .await?;
    if lifted.rows_affected() != 1 {
        return Err(AppError::HoldLifted(id.to_string()));
    }
    append(&mut tx, &hold.lift_record().into_iter().collect::<Vec<_>>()).await?;
    tx.commit().await?;
    Ok(hold)
}

/// Every hold, newest first.
pub async fn holds(db: &Db) -> Result<Vec<HoldRow>> {
    let sql = format!("{HOLD_SELECT} ORDER BY set_at DESC, id DESC");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await
        .map_err(DbError::from)?)
}

/// What a purge removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PurgeReport {
    pub conversations: Vec<String>,
    pub clients: Vec<String>,
    /// Expired but kept: under a legal hold.
    pub held: Vec<String>,
    pub dry_run: bool,
}

/// Removes what is past its retention at `now` and not under a hold (or, with `dry_run`,
/// only says what it would remove).
pub async fn purge(
    db: &Db,
    config: &ArchiveConfig,
    now: i64,
    dry_run: bool,
) -> anyhow::Result<PurgeReport> {
    let mut report = PurgeReport {
        dry_run,
        ..PurgeReport::default()
    };
    let held: Vec<(String, String)> =
        sqlx::query_as("SELECT scope, subject FROM legal_holds WHERE lifted_at IS NULL")
            .fetch_all(db.pool())
            .await?;
    let is_held = |scope: &str, subject: &str| held.iter().any(|(s, x)| s == scope && x == subject);

    let cutoff = now - i64::from(config.retain_conversations_days) * DAY_MS;
    let expired: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, client_id FROM conversations WHERE updated_at < $1 ORDER BY updated_at, id",
    )
    .bind(cutoff)
    .fetch_all(db.pool())
    .await?;
    for (id, client) in expired {
        if is_held("conversation", &id) || is_held("client", &client) {
            report.held.push(format!("conversation:{id}"));
            continue;
        }
        if !dry_run {
            purge_conversation(db, &id, config.retain_conversations_days, now).await?;
        }
        report.conversations.push(id);
    }

    let cutoff = now - i64::from(config.retain_profiles_days) * DAY_MS;
    let expired: Vec<String> = sqlx::query_scalar(
        "SELECT client_id FROM risk_profiles GROUP BY client_id HAVING MAX(assessed_at) < $1 ORDER BY client_id",
    )
    .bind(cutoff)
    .fetch_all(db.pool())
    .await?;
    for client in expired {
        if is_held("client", &client) {
            report.held.push(format!("client:{client}"));
            continue;
        }
        if !dry_run {
            let mut tx = db.begin_write().await?;
            sqlx::query("DELETE FROM risk_profiles WHERE client_id = $1")
                .bind(&client)
                .execute(&mut *tx)
                .await?;
            drop_chain(
                &mut tx,
                &client_chain(&client),
                config.retain_profiles_days,
                now,
            )
            .await?;
            tx.commit().await?;
        }
        report.clients.push(client);
    }
    Ok(report)
}

async fn purge_conversation(db: &Db, id: &str, days: u32, now: i64) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    // Its last messages are archived first, so the purge record covers the whole chain.
    super::append_behind(&mut tx, &[id.to_string()], &[], None, super::Wait::Queue).await?;
    // Profiles keep their own retention; they only lose the link to the conversation.
    sqlx::query("UPDATE risk_profiles SET conversation_id = NULL WHERE conversation_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    for table in CONVERSATION_TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE conversation_id = $1"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM conversations WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    drop_chain(&mut tx, &conversation_chain(id), days, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Removes `chain` from the archive and records that it did, with its length and head.
async fn drop_chain(
    tx: &mut sqlx::AnyConnection,
    chain: &str,
    days: u32,
    now: i64,
) -> anyhow::Result<()> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT length, head FROM archive_heads WHERE chain_id = $1")
            .bind(chain)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((length, head)) = head else {
        return Ok(());
    };
    sqlx::query("DELETE FROM archive_entries WHERE chain_id = $1")
        .bind(chain)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM archive_heads WHERE chain_id = $1")
        .bind(chain)
        .execute(&mut *tx)
        .await?;
    let why = format!("retention: {days} days");
    append(tx, &[purge_record(chain, length, &head, &why, now)]).await?;
    Ok(())
}

/// Purges every `period` (0: never), the first one period after the start, until `stop`.
pub fn every(
    db: Db,
    config: ArchiveConfig,
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let (db, config) = (std::sync::Arc::new(db), std::sync::Arc::new(config));
    super::periodically(period, stop, move || {
        let (db, config) = (db.clone(), config.clone());
        async move {
            match purge(&db, &config, now_ms(), false).await {
                Ok(r) if !r.conversations.is_empty() || !r.clients.is_empty() => tracing::info!(
                    conversations = r.conversations.len(),
                    clients = r.clients.len(),
                    held = r.held.len(),
                    "retention purge"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the retention purge failed"),
            }
        }
    });
}

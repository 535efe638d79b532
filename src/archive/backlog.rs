//! Messages reach their conversation's chain right behind the commit that accepts them.
//!
//! The IM path commits messages without touching the archive; this module appends them
//! afterwards, many per chain in one write: every `archive.append_ms` while serving, and
//! before anything that relies on the chains being complete — a checkpoint (so an export
//! too), a purge, and any other append to the conversation's chain (a bot turn, a
//! handoff event, an annotation), which therefore always follows the messages committed
//! before it. `archive_progress` holds how far each conversation is archived; a message
//! and the progress past it are written in one transaction, so a crash neither loses
//! nor repeats an entry, and the next run (or the next start) takes up where it was.
//!
//! Why not in the message's own commit: on SQLite an entry per message, keyed by its
//! chain, dirtied one more page per conversation in every group commit — the archive's
//! whole cost on the IM path (docs/archive.md, Cost). Appended in batches, a
//! conversation's entries share their pages.
//!
//! What it gives up: a message is provable once archived, not once committed. Someone
//! who can write to the database could alter a message in the moments before it is
//! archived; but until a checkpoint signs a chain's head, such a writer can rewrite the
//! chain itself just as well, so the window that counts is the checkpoint's
//! (`archive.checkpoint_secs`), which this lag does not widen: a checkpoint archives the
//! backlog before it signs. Verification counts the messages still waiting as pending,
//! not as inserted.

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use sqlx::AssertSqlSafe;

use super::records::{MESSAGE_SELECT, MessageRow};
use super::{AnyQuery, Record};
use crate::db::{Backend, Db, DbError, Markers};

/// Conversations looked at per scan of the backlog.
const BATCH: usize = 200;

/// Messages archived at most in one transaction. On SQLite the archiver holds the write
/// lock meanwhile and messages wait behind it; each transaction also rewrites the heads'
/// and progress pages. Measured with imbench at saturation (SQLite, archived ÷
/// unarchived): 128 per turn gave 0.87, 512 gave 0.91, with the same p99 at 2,000 msg/s.
const MESSAGES_PER_TURN: i64 = 512;

/// A conversation's archive progress: archived up to `from`, and to `to` once its
/// backlog is appended.
pub(super) struct Progress {
    conversation: String,
    from: i64,
    to: i64,
}

/// Messages committed but not archived yet.
pub(super) struct Backlog {
    /// As archive records, in conversation and seq order.
    pub(super) records: Vec<Record>,
    pub(super) progress: Vec<Progress>,
}

/// The backlog of `conversations` (at most `budget` messages of it).
pub(super) async fn read(
    conn: &mut sqlx::AnyConnection,
    conversations: &[String],
    budget: Option<i64>,
) -> Result<Backlog, DbError> {
    let mut records = Vec::new();
    let mut progress = Vec::new();
    for part in conversations.chunks(crate::db::ROWS_PER_INSERT) {
        let mut marks = Markers::for_connection(conn);
        let mut sql = String::from(
            "SELECT c.id, COALESCE(p.archived_seq, 0), c.last_seq FROM conversations c \
             LEFT JOIN archive_progress p ON p.conversation_id = c.id WHERE c.id IN (",
        );
        marks.push_list(&mut sql, part.len());
        sql.push_str(") AND c.last_seq > COALESCE(p.archived_seq, 0) ORDER BY c.id");
        let mut query = sqlx::query_as::<_, (String, i64, i64)>(AssertSqlSafe(sql));
        for id in part {
            query = query.bind(id.clone());
        }
        for (id, from, last) in query.fetch_all(&mut *conn).await? {
            let left = budget.map(|b| b - records.len() as i64);
            if left.is_some_and(|n| n <= 0) {
                break;
            }
            let to = left.map_or(last, |n| last.min(from + n));
            let messages: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(format!(
                "{MESSAGE_SELECT} WHERE conversation_id = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq"
            )))
            .bind(&id)
            .bind(from)
            .bind(to)
            .fetch(&mut *conn)
            .try_collect()
            .await?;
            records.extend(messages.iter().map(MessageRow::record));
            progress.push(Progress {
                conversation: id,
                from,
                to,
            });
        }
    }
    Ok(Backlog { records, progress })
}

/// Whether every conversation of `progress` is still archived exactly up to its `from`
/// in the caller's transaction.
pub(super) async fn unchanged(
    tx: &mut sqlx::AnyConnection,
    progress: &[Progress],
) -> Result<bool, DbError> {
    for part in progress.chunks(crate::db::ROWS_PER_INSERT) {
        let mut marks = Markers::for_connection(tx);
        let mut sql = String::from(
            "SELECT conversation_id, archived_seq FROM archive_progress WHERE conversation_id IN (",
        );
        marks.push_list(&mut sql, part.len());
        sql.push(')');
        let mut query = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql));
        for p in part {
            query = query.bind(p.conversation.clone());
        }
        let now: HashMap<String, i64> = query.fetch_all(&mut *tx).await?.into_iter().collect();
        if part
            .iter()
            .any(|p| now.get(&p.conversation).copied().unwrap_or(0) != p.from)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The statement recording `progress`, ended by `;`.
pub(super) fn push_progress_sql(sql: &mut String, marks: &mut Markers, progress: &[Progress]) {
    sql.push_str("INSERT INTO archive_progress (conversation_id, archived_seq) VALUES ");
    marks.push_rows(sql, progress.len(), 2);
    sql.push_str(
        " ON CONFLICT (conversation_id) DO UPDATE SET archived_seq = excluded.archived_seq;\n",
    );
}

/// The values of [`push_progress_sql`], in order.
pub(super) fn bind_progress<'q>(mut query: AnyQuery<'q>, progress: &[Progress]) -> AnyQuery<'q> {
    for p in progress {
        query = query.bind(p.conversation.clone()).bind(p.to);
    }
    query
}

/// Archives every message committed and not archived yet; returns how many. Each
/// conversation is looked at once per call, so a call ends under any load.
pub async fn archive_pending(db: &Db) -> Result<u64, DbError> {
    if !super::enabled() {
        return Ok(0);
    }
    let mut archived = 0;
    let mut after = String::new();
    loop {
        let page: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT c.id, COALESCE(p.archived_seq, 0), c.last_seq FROM conversations c \
             LEFT JOIN archive_progress p ON p.conversation_id = c.id \
             WHERE c.id > $1 AND c.last_seq > COALESCE(p.archived_seq, 0) ORDER BY c.id LIMIT $2",
        )
        .bind(&after)
        .bind(BATCH as i64)
        .fetch_all(db.pool())
        .await?;
        let Some((last, _, _)) = page.last() else {
            return Ok(archived);
        };
        after = last.clone();
        // Conversations together up to a turn's worth of messages; a conversation with
        // more than that takes turns of its own.
        let mut start = 0;
        while start < page.len() {
            let mut end = start + 1;
            let mut count = page[start].2 - page[start].1;
            while end < page.len() && count + page[end].2 - page[end].1 <= MESSAGES_PER_TURN {
                count += page[end].2 - page[end].1;
                end += 1;
            }
            let ids: Vec<String> = page[start..end].iter().map(|p| p.0.clone()).collect();
            loop {
                let done = turn(db, &ids).await?;
                archived += done;
                if (done as i64) < MESSAGES_PER_TURN {
                    break;
                }
            }
            start = end;
        }
        if page.len() < BATCH {
            return Ok(archived);
        }
    }
}

/// Archives up to a turn's worth of the backlog of `conversations`, read before the
/// write transaction (on SQLite the one writer holds the write lock only to append);
/// read again inside it when another writer archived some of it meanwhile.
async fn turn(db: &Db, conversations: &[String]) -> Result<u64, DbError> {
    let backlog = {
        let mut conn = db.pool().acquire().await?;
        read(&mut conn, conversations, Some(MESSAGES_PER_TURN)).await?
    };
    let chains: Vec<String> = conversations
        .iter()
        .map(|c| super::conversation_chain(c))
        .collect();
    if db.backend() == Backend::Postgres {
        super::create_heads(db, &chains).await?;
    }
    let mut tx = db.begin_write().await?;
    if let Some(done) = super::append_read(&mut tx, &backlog).await? {
        tx.commit().await?;
        return Ok(done);
    }
    // Read again inside a new transaction, taking what is free of what is left.
    tx.rollback().await?;
    let mut tx = db.begin_write().await?;
    let done = super::append_behind(
        &mut tx,
        conversations,
        &[],
        Some(MESSAGES_PER_TURN),
        super::Wait::SkipLocked,
    )
    .await?;
    tx.commit().await?;
    Ok(done)
}

/// Archives the backlog every `period` (0: only when a checkpoint, export or purge
/// needs it) until `stop`. The service archives it once more when it stops.
pub fn every(db: Db, period: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
    let db = Arc::new(db);
    super::periodically(period, stop, move || {
        let db = db.clone();
        async move {
            let started = std::time::Instant::now();
            match archive_pending(&db).await {
                Ok(messages) => tracing::debug!(
                    messages,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "archived the latest messages"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot archive the latest messages"),
            }
        }
    });
}

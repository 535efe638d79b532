//! `wealthdesk archive verify`: recomputes every chain, checks the newest checkpoint's
//! signature and root, and compares the archive with the live tables, naming each
//! record that was edited, deleted, inserted or reordered.

use std::collections::HashMap;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;

use super::checkpoint::{self, Checkpoint};
use super::records::{
    ACCESS_SELECT, AccessRow, HANDOFF_EVENT_SELECT, HOLD_SELECT, HandoffEventRow, HoldRow,
    LABEL_SELECT, LabelRow, MESSAGE_SELECT, MessageRow, PROFILE_SELECT, ProfileRow, REVIEW_SELECT,
    ReviewRow, TURN_SELECT, TurnRow, message_content,
};
use super::{Hash, Record, conversation_chain, entry_hash, parse_hash, payload_digest};
use crate::db::{Backend, Db, DbError};

/// What is wrong with one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// edited, deleted, inserted, reordered, entry_altered, entry_missing,
    /// head_mismatch, altered_after_checkpoint, checkpoint_root_mismatch,
    /// signature_invalid, export_truncated, export_malformed.
    pub problem: &'static str,
    pub chain: String,
    /// The record (`message:7`, `turn:<id>`, …) or entry seq it is about.
    pub record: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scope: String,
    pub chains: usize,
    /// Archive entries whose hashes were recomputed.
    pub records: u64,
    /// Live rows compared with the archive.
    pub live_rows: u64,
    pub checkpoint: Option<Checkpoint>,
    /// Chains removed by the retention purge, as the `purges` chain records them.
    pub purged: Vec<String>,
    pub problems: Vec<Problem>,
    pub elapsed_ms: f64,
    pub records_per_sec: f64,
}

/// Records per second over `elapsed` seconds (0 when no time passed).
pub(crate) fn rate(records: u64, elapsed: f64) -> f64 {
    if elapsed > 0.0 {
        records as f64 / elapsed
    } else {
        0.0
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn print(&self) {
        println!(
            "archive verify ({}): {} records in {} chains, {} live rows, {:.0} ms ({:.0} records/s)",
            self.scope,
            self.records,
            self.chains,
            self.live_rows,
            self.elapsed_ms,
            self.records_per_sec
        );
        match &self.checkpoint {
            Some(c) => println!(
                "checkpoint {} at {} over {} chains, root {}, key {}",
                c.id,
                crate::time_fmt::rfc3339(c.at),
                c.chains,
                c.root,
                c.public_key
            ),
            None => println!("no checkpoint yet: only the chains themselves were checked"),
        }
        if !self.purged.is_empty() {
            println!(
                "{} chains purged at the end of their retention (recorded in the purges chain)",
                self.purged.len()
            );
        }
        if self.problems.is_empty() {
            println!("OK: nothing was altered");
        }
        for p in &self.problems {
            println!("{}: {} {} — {}", p.problem, p.chain, p.record, p.detail);
        }
    }
}

/// An archived entry as the chain pass leaves it for the comparison.
struct Archived {
    seq: i64,
    digest: Hash,
}

/// What the chain pass found.
#[derive(Default)]
struct Chains {
    /// (chain, ref) → entry.
    entries: HashMap<(String, String), Archived>,
    /// chain → (length, hash of the last entry as stored).
    heads: HashMap<String, (i64, String)>,
    /// (chain, seq) → stored hash, for the checkpoint's heads.
    stored: HashMap<(String, i64), String>,
    /// Chains the purges chain says were removed.
    purged: Vec<String>,
    records: u64,
    problems: Vec<Problem>,
}

/// Verifies the whole archive, or one conversation's chain, against the live tables and
/// the newest checkpoint (its key must be `public_key` when given).
pub async fn run(
    db: &Db,
    conversation: Option<&str>,
    public_key: Option<&str>,
) -> Result<Report, DbError> {
    let started = Instant::now();
    let chain = conversation.map(conversation_chain);
    // One snapshot for every read, so a service writing meanwhile is never blamed.
    let mut conn = db.pool().acquire().await?;
    let begin = match db.backend() {
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        Backend::Sqlite => "BEGIN",
    };
    sqlx::query(begin).execute(&mut *conn).await?;
    let report = in_snapshot(&mut conn, conversation, chain, public_key, started).await;
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    report
}

async fn in_snapshot(
    conn: &mut sqlx::AnyConnection,
    conversation: Option<&str>,
    chain: Option<String>,
    public_key: Option<&str>,
    started: Instant,
) -> Result<Report, DbError> {
    let chains = chain_pass(&mut *conn, chain.as_deref()).await?;
    let live = live_pass(&mut *conn, conversation).await?;
    let Chains {
        mut entries,
        heads,
        stored,
        purged,
        records,
        mut problems,
    } = chains;

    // The heads table agrees with the chains.
    let mut sql = String::from("SELECT chain_id, length, head FROM archive_heads WHERE length > 0");
    if chain.is_some() {
        sql.push_str(" AND chain_id = $1");
    }
    let mut query = sqlx::query_as::<_, (String, i64, String)>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = &chain {
        query = query.bind(c);
    }
    for (chain_id, length, head) in query.fetch_all(&mut *conn).await? {
        match heads.get(&chain_id) {
            Some((l, h)) if *l == length && *h == head => {}
            Some((l, _)) => problems.push(Problem {
                problem: "head_mismatch",
                chain: chain_id.clone(),
                record: format!("entry {length}"),
                detail: format!(
                    "the chain's recorded head is entry {length} but the archive holds {l} entries ending elsewhere: entries were removed or added at its end"
                ),
            }),
            None => problems.push(Problem {
                problem: "entry_missing",
                chain: chain_id.clone(),
                record: format!("entries 1–{length}"),
                detail: "the whole chain is gone from the archive".into(),
            }),
        }
    }

    // The newest checkpoint: signed, its root over its heads, its heads still there.
    let latest = checkpoint::latest(&mut *conn).await?;
    if let Some(cp) = &latest {
        if !cp.signature_valid(public_key) {
            problems.push(Problem {
                problem: "signature_invalid",
                chain: String::new(),
                record: format!("checkpoint {}", cp.id),
                detail: match public_key {
                    Some(k) if !k.eq_ignore_ascii_case(&cp.public_key) => {
                        format!("signed by key {}, not the expected {k}", cp.public_key)
                    }
                    _ => "the signature does not match the checkpoint".into(),
                },
            });
        }
        let signed = checkpoint::heads_of(&mut *conn, cp.id).await?;
        if hex::encode(checkpoint::root(&checkpoint::leaves(&signed))) != cp.root {
            problems.push(Problem {
                problem: "checkpoint_root_mismatch",
                chain: String::new(),
                record: format!("checkpoint {}", cp.id),
                detail: "the heads stored with the checkpoint do not give its signed root".into(),
            });
        }
        for (chain_id, length, head) in signed
            .iter()
            .filter(|h| chain.as_ref().is_none_or(|c| *c == h.0))
            .filter(|h| !purged.contains(&h.0))
        {
            match stored.get(&(chain_id.clone(), *length)) {
                Some(h) if h == head => {}
                Some(_) => problems.push(Problem {
                    problem: "altered_after_checkpoint",
                    chain: chain_id.clone(),
                    record: format!("entry {length}"),
                    detail: format!(
                        "checkpoint {} signed a different head here: the chain was rewritten",
                        cp.id
                    ),
                }),
                None => problems.push(Problem {
                    problem: "altered_after_checkpoint",
                    chain: chain_id.clone(),
                    record: format!("entry {length}"),
                    detail: format!(
                        "checkpoint {} signed {length} entries; the chain no longer has them",
                        cp.id
                    ),
                }),
            }
        }
    }

    // The live tables against the archive.
    let live_rows = live.len() as u64;
    let mut edited: Vec<(String, String)> = Vec::new();
    for (chain_id, reference, digest) in live {
        let key = (chain_id, reference);
        match entries.remove(&key) {
            Some(a) if a.digest == digest => {}
            Some(_) if key.1.starts_with("message:") => edited.push(key),
            Some(a) => problems.push(Problem {
                problem: "edited",
                chain: key.0,
                record: key.1,
                detail: format!("differs from what archive entry {} recorded", a.seq),
            }),
            None => problems.push(Problem {
                problem: "inserted",
                chain: key.0,
                record: key.1,
                detail: "in the live tables but never archived: written outside the service".into(),
            }),
        }
    }
    if !edited.is_empty() {
        problems.extend(messages_edited(&mut *conn, edited).await?);
    }
    let mut left: Vec<_> = entries.into_iter().collect();
    left.sort_by(|a, b| (&a.0.0, a.1.seq).cmp(&(&b.0.0, b.1.seq)));
    // Purge records have no live row of their own.
    for ((chain_id, reference), a) in left.into_iter().filter(|(k, _)| !k.1.starts_with("purge:")) {
        problems.push(Problem {
            problem: "deleted",
            chain: chain_id,
            record: reference,
            detail: format!("archived as entry {} but gone from the live tables", a.seq),
        });
    }

    let elapsed = started.elapsed().as_secs_f64();
    Ok(Report {
        scope: conversation
            .map_or_else(|| "everything".to_string(), |c| format!("conversation {c}")),
        chains: heads.len(),
        records,
        live_rows,
        checkpoint: latest,
        purged,
        problems,
        elapsed_ms: elapsed * 1000.0,
        records_per_sec: rate(records, elapsed),
    })
}

/// Names edited messages: one whose content the archive recorded under another seq of
/// the same conversation was reordered, the rest were edited.
async fn messages_edited(
    conn: &mut sqlx::AnyConnection,
    edited: Vec<(String, String)>,
) -> Result<Vec<Problem>, DbError> {
    let mut archived_content: HashMap<(String, String), String> = HashMap::new();
    let mut rows = Vec::new();
    for (chain, reference) in &edited {
        let conversation = chain.strip_prefix("conversation:").unwrap_or(chain);
        let seq: i64 = reference
            .strip_prefix("message:")
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let sql = format!("{MESSAGE_SELECT} WHERE conversation_id = $1 AND seq = $2");
        let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(conversation)
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await?;
        rows.push(row);
        let payload: Option<String> = sqlx::query_scalar(
            "SELECT payload FROM archive_entries WHERE chain_id = $1 AND ref = $2",
        )
        .bind(chain)
        .bind(reference)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(content) = payload.as_deref().and_then(message_content) {
            archived_content.insert((chain.clone(), content), reference.clone());
        }
    }
    Ok(edited
        .into_iter()
        .zip(rows)
        .map(|((chain, reference), row)| {
            let content = row.map(|r| r.content()).unwrap_or_default();
            match archived_content.get(&(chain.clone(), content)) {
                Some(was) if *was != reference => Problem {
                    problem: "reordered",
                    chain,
                    detail: format!("holds the message the archive recorded as {was}"),
                    record: reference,
                },
                _ => Problem {
                    problem: "edited",
                    chain,
                    record: reference,
                    detail: "its content differs from what the archive recorded".into(),
                },
            }
        })
        .collect())
}

/// Recomputes every chain (or one) from its first entry.
async fn chain_pass(
    conn: &mut sqlx::AnyConnection,
    chain: Option<&str>,
) -> Result<Chains, DbError> {
    let mut sql =
        String::from("SELECT chain_id, seq, kind, ref, at, payload, hash FROM archive_entries");
    if chain.is_some() {
        sql.push_str(" WHERE chain_id = $1");
    }
    sql.push_str(" ORDER BY chain_id, seq");
    let mut query = sqlx::query_as::<_, (String, i64, String, String, i64, String, String)>(
        sqlx::AssertSqlSafe(sql),
    );
    if let Some(c) = chain {
        query = query.bind(c.to_string());
    }
    let mut rows = query.fetch(&mut *conn);
    let mut out = Chains::default();
    let mut current = String::new();
    let mut prev: Hash = [0; 32];
    let mut expected = 1;
    while let Some((chain_id, seq, kind, reference, at, payload, hash)) = rows.try_next().await? {
        if chain_id != current {
            current = chain_id.clone();
            prev = [0; 32];
            expected = 1;
        }
        out.records += 1;
        if seq != expected {
            out.problems.push(Problem {
                problem: "entry_missing",
                chain: chain_id.clone(),
                record: if seq == expected + 1 {
                    format!("entry {expected}")
                } else {
                    format!("entries {expected}–{}", seq - 1)
                },
                detail: "deleted from the archive: the chain skips from here".into(),
            });
        }
        let computed = entry_hash(&prev, &chain_id, seq, &kind, &reference, at, &payload);
        if hex::encode(computed) != hash {
            out.problems.push(Problem {
                problem: "entry_altered",
                chain: chain_id.clone(),
                record: format!("entry {seq} ({reference})"),
                detail: "its hash does not match its contents and the entry before it".into(),
            });
        }
        // Go on from the stored hash, so one altered entry is named once.
        prev = parse_hash(&hash).unwrap_or(computed);
        expected = seq + 1;
        if kind == "purge"
            && let Some(gone) = serde_json::from_str::<serde_json::Value>(&payload)
                .ok()
                .and_then(|p| p["chain_id"].as_str().map(str::to_string))
        {
            out.purged.push(gone);
        }
        out.stored.insert((chain_id.clone(), seq), hash.clone());
        out.heads.insert(chain_id.clone(), (seq, hash));
        out.entries.insert(
            (chain_id, reference),
            Archived {
                seq,
                digest: payload_digest(&payload),
            },
        );
    }
    Ok(out)
}

/// A live record as the comparison needs it: chain, reference, payload digest.
type Live = Vec<(String, String, Hash)>;

fn live(record: Record) -> (String, String, Hash) {
    let digest = payload_digest(&record.payload);
    (record.chain, record.reference, digest)
}

/// The archive records the live tables give now (one conversation's, or all).
async fn live_pass(
    conn: &mut sqlx::AnyConnection,
    conversation: Option<&str>,
) -> Result<Live, DbError> {
    let filter = |select: &str, column: &str| {
        let mut sql = select.to_string();
        if conversation.is_some() {
            sql.push_str(&format!(" WHERE {column} = $1"));
        }
        sql
    };
    let mut out = Vec::new();
    let sql = filter(MESSAGE_SELECT, "conversation_id");
    let mut query = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = conversation {
        query = query.bind(c.to_string());
    }
    let mut rows = query.fetch(&mut *conn);
    while let Some(m) = rows.try_next().await? {
        out.push(live(m.record()));
    }
    drop(rows);
    let sql = filter(TURN_SELECT, "conversation_id");
    let mut query = sqlx::query_as::<_, TurnRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = conversation {
        query = query.bind(c.to_string());
    }
    for t in query.fetch_all(&mut *conn).await? {
        out.push(live(t.record()));
    }
    let sql = filter(HANDOFF_EVENT_SELECT, "conversation_id");
    let mut query = sqlx::query_as::<_, HandoffEventRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = conversation {
        query = query.bind(c.to_string());
    }
    for e in query.fetch_all(&mut *conn).await? {
        out.push(live(e.record()));
    }
    let sql = filter(REVIEW_SELECT, "conversation_id");
    let mut query = sqlx::query_as::<_, ReviewRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = conversation {
        query = query.bind(c.to_string());
    }
    for r in query.fetch_all(&mut *conn).await? {
        out.push(live(r.record()));
    }
    let sql = filter(LABEL_SELECT, "conversation_id");
    let mut query = sqlx::query_as::<_, LabelRow>(sqlx::AssertSqlSafe(sql));
    if let Some(c) = conversation {
        query = query.bind(c.to_string());
    }
    for l in query.fetch_all(&mut *conn).await? {
        out.push(live(l.record()));
    }
    if conversation.is_none() {
        for p in sqlx::query_as::<_, ProfileRow>(PROFILE_SELECT)
            .fetch_all(&mut *conn)
            .await?
        {
            if let Some(s) = p.superseded() {
                out.push(live(s));
            }
            out.push(live(p.expiry()));
            out.push(live(p.record()));
        }
        for a in sqlx::query_as::<_, AccessRow>(ACCESS_SELECT)
            .fetch_all(&mut *conn)
            .await?
        {
            out.push(live(a.record()));
        }
        for h in sqlx::query_as::<_, HoldRow>(HOLD_SELECT)
            .fetch_all(&mut *conn)
            .await?
        {
            if let Some(lifted) = h.lift_record() {
                out.push(live(lifted));
            }
            out.push(live(h.set_record()));
        }
    }
    Ok(out)
}

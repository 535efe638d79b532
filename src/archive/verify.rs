//! `wealthdesk archive verify`: recomputes every chain, checks the newest checkpoint's
//! signature and root, and compares the archive with the live tables, naming each
//! record that was edited, deleted, inserted or reordered.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, FromRow, Postgres, Sqlite};

use super::checkpoint::{self, Checkpoint};
use super::records::{
    ACCESS_SELECT, AccessRow, HANDOFF_EVENT_SELECT, HOLD_SELECT, HandoffEventRow, HoldRow,
    LABEL_SELECT, LabelRow, MESSAGE_SELECT, MessageRef, MessageRow, PROFILE_SELECT, ProfileRow,
    REVIEW_SELECT, ReviewRow, TURN_SELECT, TurnRow, message_content,
};
use super::{Hash, Payload, Record, conversation_chain, entry_hash, parse_hash, payload_digest};
use crate::db::{Backend, Db, DbError, sqlite_scan};

/// What is wrong with one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// edited, deleted, inserted, reordered, repeated, entry_altered, entry_missing,
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
    /// Messages committed but not archived yet ([`super::backlog`]): the newest, which
    /// the next run of the archiver appends. Not a problem; only these are not checked.
    pub pending: u64,
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
        if self.pending > 0 {
            println!(
                "{} messages just accepted are not archived yet (archive.append_ms); they were not checked",
                self.pending
            );
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

/// A connection holding the one snapshot every read of a verification sees, on the
/// store's native driver: long scans decode rows without `sqlx::Any`'s per-value
/// conversion.
enum Snapshot {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// A bound parameter.
enum Param {
    Text(String),
    Int(i64),
}

impl Snapshot {
    async fn begin(db: &Db) -> Result<Snapshot, DbError> {
        Ok(match db.backend() {
            Backend::Sqlite => {
                let pool = db.sqlite().expect("a SQLite Db has its native pool");
                let mut conn = pool.acquire().await?;
                // Deferred: the snapshot is taken at the first read and held to the end.
                sqlx::query("BEGIN").execute(&mut *conn).await?;
                Snapshot::Sqlite(conn)
            }
            Backend::Postgres => {
                let pool = db.postgres().expect("a PostgreSQL Db has its native pool");
                let mut conn = pool.acquire().await?;
                sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *conn)
                    .await?;
                Snapshot::Postgres(conn)
            }
        })
    }

    async fn end(self) -> Result<(), DbError> {
        match self {
            Snapshot::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            }
            Snapshot::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// Runs `sql` and hands each row to `each` as it arrives.
    async fn each<T>(
        &mut self,
        sql: String,
        params: &[Param],
        each: impl FnMut(T) -> Result<(), DbError>,
    ) -> Result<(), DbError>
    where
        T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        match self {
            Snapshot::Sqlite(conn) => each_row::<Sqlite, T>(conn, sql, params, each).await,
            Snapshot::Postgres(conn) => each_row::<Postgres, T>(conn, sql, params, each).await,
        }
    }

    async fn all<T>(&mut self, sql: String, params: &[Param]) -> Result<Vec<T>, DbError>
    where
        T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>,
    {
        let mut rows = Vec::new();
        self.each(sql, params, |row| {
            rows.push(row);
            Ok(())
        })
        .await?;
        Ok(rows)
    }

    /// The newest checkpoint and the heads it signed.
    async fn checkpoint(&mut self) -> Result<Option<(Checkpoint, Heads)>, DbError> {
        let latest = match self {
            Snapshot::Sqlite(conn) => checkpoint::latest_in::<Sqlite>(conn).await?,
            Snapshot::Postgres(conn) => checkpoint::latest_in::<Postgres>(conn).await?,
        };
        let Some(cp) = latest else {
            return Ok(None);
        };
        let signed = match self {
            Snapshot::Sqlite(conn) => checkpoint::heads_in::<Sqlite>(conn, cp.id).await?,
            Snapshot::Postgres(conn) => checkpoint::heads_in::<Postgres>(conn, cp.id).await?,
        };
        Ok(Some((cp, signed)))
    }
}

async fn each_row<DB, T>(
    conn: &mut DB::Connection,
    sql: String,
    params: &[Param],
    mut each: impl FnMut(T) -> Result<(), DbError>,
) -> Result<(), DbError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    T: Send + Unpin + for<'r> FromRow<'r, DB::Row>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut query = sqlx::query_as::<DB, T>(AssertSqlSafe(sql));
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text.clone()),
            Param::Int(n) => query.bind(*n),
        };
    }
    let mut rows = query.fetch(conn);
    while let Some(row) = rows.try_next().await? {
        each(row)?;
    }
    Ok(())
}

/// Chain heads: (chain, length, head).
type Heads = Vec<(String, i64, String)>;

/// Which record of its chain an entry is. Message references, nearly every entry, are
/// kept as their seq; `message:<seq>` is the only form [`Reference::of`] reads as one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Reference {
    Message(i64),
    Other(Box<str>),
}

impl Reference {
    fn of(text: String) -> Reference {
        match text.strip_prefix("message:").and_then(canonical_int) {
            Some(seq) => Reference::Message(seq),
            None => Reference::Other(text.into_boxed_str()),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Message(seq) => write!(f, "message:{seq}"),
            Reference::Other(text) => f.write_str(text),
        }
    }
}

/// `text` as an integer when it is exactly how that integer prints.
fn canonical_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    plain.then(|| text.parse().ok()).flatten()
}

/// An archived entry as the chain pass leaves it for the comparison.
struct Archived {
    seq: i64,
    digest: Hash,
}

/// What the chain pass found. Chains are numbered in the order the pass met them.
#[derive(Default)]
struct Chains {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Per chain: its last entry's seq and stored hash.
    heads: Vec<(i64, String)>,
    /// Per chain: the stored hash of its entry at the length the newest checkpoint
    /// signed, if it has one.
    at_signed: Vec<Option<String>>,
    /// (chain, reference) → the newest entry for it.
    entries: HashMap<(usize, Reference), Archived>,
    /// Chains the purges chain says were removed.
    purged: Vec<String>,
    records: u64,
    problems: Vec<Problem>,
}

impl Chains {
    /// The chain's number, counting it in when it is new.
    fn number(&mut self, chain_id: &str) -> usize {
        if let Some(&n) = self.index.get(chain_id) {
            return n;
        }
        let n = self.names.len();
        self.names.push(chain_id.to_string());
        self.index.insert(chain_id.to_string(), n);
        self.heads.push((0, String::new()));
        self.at_signed.push(None);
        n
    }

    /// Archived entries no live row matched: deleted from the live tables, in chain
    /// and seq order. Purge records have no live row of their own.
    fn deleted(self) -> Vec<Problem> {
        let Chains { names, entries, .. } = self;
        let mut left: Vec<_> = entries
            .into_iter()
            .filter(|((_, r), _)| !matches!(r, Reference::Other(t) if t.starts_with("purge:")))
            .collect();
        left.sort_by(|a, b| (&names[a.0.0], a.1.seq).cmp(&(&names[b.0.0], b.1.seq)));
        left.into_iter()
            .map(|((chain, reference), a)| Problem {
                problem: "deleted",
                chain: names[chain].clone(),
                record: reference.to_string(),
                detail: format!("archived as entry {} but gone from the live tables", a.seq),
            })
            .collect()
    }
}

/// Verifies the whole archive, or one conversation's chain, against the live tables and
/// the newest checkpoint (its key must be `public_key` when given).
pub async fn run(
    db: &Db,
    conversation: Option<&str>,
    public_key: Option<&str>,
) -> Result<Report, DbError> {
    let started = Instant::now();
    // One snapshot for every read, so a service writing meanwhile is never blamed.
    let mut snapshot = Snapshot::begin(db).await?;
    let report = in_snapshot(&mut snapshot, conversation, public_key, started).await;
    snapshot.end().await?;
    report
}

async fn in_snapshot(
    snapshot: &mut Snapshot,
    conversation: Option<&str>,
    public_key: Option<&str>,
    started: Instant,
) -> Result<Report, DbError> {
    let chain = conversation.map(conversation_chain);
    // The newest checkpoint first, so the chain pass keeps the entries it signed.
    let latest = snapshot.checkpoint().await?;
    let signed_lengths: HashMap<&str, i64> = latest
        .iter()
        .flat_map(|(_, signed)| signed.iter())
        .map(|(chain_id, length, _)| (chain_id.as_str(), *length))
        .collect();
    let mut chains = chain_pass(snapshot, chain.as_deref(), &signed_lengths).await?;
    let mut problems = std::mem::take(&mut chains.problems);

    // The heads table agrees with the chains.
    let mut sql = String::from("SELECT chain_id, length, head FROM archive_heads WHERE length > 0");
    let mut params = Vec::new();
    if let Some(c) = &chain {
        sql.push_str(" AND chain_id = $1");
        params.push(Param::Text(c.clone()));
    }
    let recorded: Heads = snapshot.all(sql, &params).await?;
    for (chain_id, length, head) in recorded {
        match chains.index.get(&chain_id).map(|&n| &chains.heads[n]) {
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
    if let Some((cp, signed)) = &latest {
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
        if hex::encode(checkpoint::root(&checkpoint::leaves(signed))) != cp.root {
            problems.push(Problem {
                problem: "checkpoint_root_mismatch",
                chain: String::new(),
                record: format!("checkpoint {}", cp.id),
                detail: "the heads stored with the checkpoint do not give its signed root".into(),
            });
        }
        let purged: HashSet<&str> = chains.purged.iter().map(String::as_str).collect();
        for (chain_id, length, head) in signed
            .iter()
            .filter(|h| chain.as_ref().is_none_or(|c| *c == h.0))
            .filter(|h| !purged.contains(h.0.as_str()))
        {
            let stored = chains
                .index
                .get(chain_id)
                .and_then(|&n| chains.at_signed[n].as_ref());
            match stored {
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
    let mut sql = String::from("SELECT conversation_id, archived_seq FROM archive_progress");
    if conversation.is_some() {
        sql.push_str(" WHERE conversation_id = $1");
    }
    let params: Vec<Param> = conversation
        .map(|c| Param::Text(c.to_string()))
        .into_iter()
        .collect();
    let archived: Vec<(String, i64)> = snapshot.all(sql, &params).await?;
    let mut comparison = Comparison {
        chains: &mut chains,
        archived: archived.into_iter().collect(),
        live_rows: 0,
        pending: 0,
        problems: Vec::new(),
        edited: Vec::new(),
    };
    live_pass(snapshot, conversation, &mut comparison).await?;
    let Comparison {
        live_rows,
        pending,
        problems: found,
        edited,
        ..
    } = comparison;
    problems.extend(found);
    if !edited.is_empty() {
        problems.extend(messages_edited(snapshot, edited).await?);
    }
    let chain_count = chains.names.len();
    let records = chains.records;
    let purged = std::mem::take(&mut chains.purged);
    problems.extend(chains.deleted());

    let elapsed = started.elapsed().as_secs_f64();
    Ok(Report {
        scope: conversation
            .map_or_else(|| "everything".to_string(), |c| format!("conversation {c}")),
        chains: chain_count,
        records,
        live_rows,
        pending,
        checkpoint: latest.map(|(cp, _)| cp),
        purged,
        problems,
        elapsed_ms: elapsed * 1000.0,
        records_per_sec: rate(records, elapsed),
    })
}

/// Names edited messages: one whose content the archive recorded under another seq of
/// the same conversation was reordered, the rest were edited.
async fn messages_edited(
    snapshot: &mut Snapshot,
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
        let row: Option<MessageRow> = snapshot
            .all(
                format!("{MESSAGE_SELECT} WHERE conversation_id = $1 AND seq = $2"),
                &[Param::Text(conversation.to_string()), Param::Int(seq)],
            )
            .await?
            .pop();
        rows.push(row);
        let payload: Option<(String,)> = snapshot
            .all(
                "SELECT payload FROM archive_entries WHERE chain_id = $1 AND ref = $2".into(),
                &[Param::Text(chain.clone()), Param::Text(reference.clone())],
            )
            .await?
            .pop();
        if let Some(content) = payload.as_ref().and_then(|p| message_content(&p.0)) {
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

/// An archive entry as stored: chain, seq, kind, ref, at, payload, hash.
type EntryRow = (String, i64, String, String, i64, String, String);

/// An archive entry as read, borrowed.
struct EntryRef<'a> {
    chain_id: &'a str,
    seq: i64,
    kind: &'a str,
    reference: &'a str,
    at: i64,
    payload: &'a str,
    hash: &'a str,
}

/// Recomputes every chain (or one) from its first entry, keeping of each entry what
/// the comparison with the live tables needs, and of the entries at `signed_lengths`
/// (chain → length the newest checkpoint signed) their stored hashes.
async fn chain_pass(
    snapshot: &mut Snapshot,
    chain: Option<&str>,
    signed_lengths: &HashMap<&str, i64>,
) -> Result<Chains, DbError> {
    let mut sql =
        String::from("SELECT chain_id, seq, kind, ref, at, payload, hash FROM archive_entries");
    if chain.is_some() {
        sql.push_str(" WHERE chain_id = $1");
    }
    sql.push_str(" ORDER BY chain_id, seq");
    let mut pass = ChainPass {
        signed_lengths,
        out: Chains::default(),
        current: usize::MAX,
        signed_length: None,
        prev: [0; 32],
        expected: 1,
    };
    match snapshot {
        Snapshot::Sqlite(conn) => {
            let params: Vec<&str> = chain.into_iter().collect();
            sqlite_scan::scan(conn, &sql, &params, |row| {
                pass.entry(EntryRef {
                    chain_id: row.required_text(0)?,
                    seq: row.int(1),
                    kind: row.required_text(2)?,
                    reference: row.required_text(3)?,
                    at: row.int(4),
                    payload: row.required_text(5)?,
                    hash: row.required_text(6)?,
                });
                Ok::<_, DbError>(())
            })
            .await?;
        }
        Snapshot::Postgres(_) => {
            let params: Vec<Param> = chain
                .map(|c| Param::Text(c.to_string()))
                .into_iter()
                .collect();
            snapshot
                .each(sql, &params, |row: EntryRow| {
                    let (chain_id, seq, kind, reference, at, payload, hash) = &row;
                    pass.entry(EntryRef {
                        chain_id,
                        seq: *seq,
                        kind,
                        reference,
                        at: *at,
                        payload,
                        hash,
                    });
                    Ok(())
                })
                .await?;
        }
    }
    Ok(pass.out)
}

/// The chain pass's place in the entries, which come in chain and seq order.
struct ChainPass<'a> {
    signed_lengths: &'a HashMap<&'a str, i64>,
    out: Chains,
    current: usize,
    signed_length: Option<i64>,
    prev: Hash,
    expected: i64,
}

impl ChainPass<'_> {
    fn entry(&mut self, e: EntryRef<'_>) {
        let out = &mut self.out;
        if out.names.get(self.current).map(String::as_str) != Some(e.chain_id) {
            self.current = out.number(e.chain_id);
            self.signed_length = self.signed_lengths.get(e.chain_id).copied();
            self.prev = [0; 32];
            self.expected = 1;
        }
        out.records += 1;
        let expected = self.expected;
        if e.seq != expected {
            out.problems.push(Problem {
                problem: "entry_missing",
                chain: e.chain_id.to_string(),
                record: if e.seq == expected + 1 {
                    format!("entry {expected}")
                } else {
                    format!("entries {expected}–{}", e.seq - 1)
                },
                detail: "deleted from the archive: the chain skips from here".into(),
            });
        }
        let computed = entry_hash(
            &self.prev,
            e.chain_id,
            e.seq,
            e.kind,
            e.reference,
            e.at,
            e.payload,
        );
        let mut computed_hex = [0u8; 64];
        hex::encode_to_slice(computed, &mut computed_hex).expect("64 bytes hold 32 in hex");
        if computed_hex[..] == *e.hash.as_bytes() {
            self.prev = computed;
        } else {
            out.problems.push(Problem {
                problem: "entry_altered",
                chain: e.chain_id.to_string(),
                record: format!("entry {} ({})", e.seq, e.reference),
                detail: "its hash does not match its contents and the entry before it".into(),
            });
            // Go on from the stored hash, so one altered entry is named once.
            self.prev = parse_hash(e.hash).unwrap_or(computed);
        }
        self.expected = e.seq + 1;
        if e.kind == "purge"
            && let Some(gone) = serde_json::from_str::<serde_json::Value>(e.payload)
                .ok()
                .and_then(|p| p["chain_id"].as_str().map(str::to_string))
        {
            out.purged.push(gone);
        }
        if self.signed_length == Some(e.seq) {
            out.at_signed[self.current] = Some(e.hash.to_string());
        }
        let head = &mut out.heads[self.current];
        head.0 = e.seq;
        head.1.clear();
        head.1.push_str(e.hash);
        let reference = Reference::of(e.reference.to_string());
        let is_message = matches!(reference, Reference::Message(_));
        let earlier = out.entries.insert(
            (self.current, reference),
            Archived {
                seq: e.seq,
                digest: payload_digest(e.payload),
            },
        );
        // Other records may be archived again when they change (a profile's expiry); a
        // message never is, unless its archive progress was moved back.
        if let Some(earlier) = earlier.filter(|_| is_message) {
            out.problems.push(Problem {
                problem: "repeated",
                chain: e.chain_id.to_string(),
                record: e.reference.to_string(),
                detail: format!(
                    "archived again as entry {} (first as entry {})",
                    e.seq, earlier.seq
                ),
            });
        }
    }
}

/// The live tables held against the chain pass's entries: each live record takes its
/// entry out, so what is left was deleted.
struct Comparison<'a> {
    chains: &'a mut Chains,
    /// Per conversation: the last seq archived ([`super::backlog`]).
    archived: HashMap<String, i64>,
    live_rows: u64,
    /// Messages past their conversation's archived seq with no entry yet.
    pending: u64,
    problems: Vec<Problem>,
    /// Messages whose content differs (edited or reordered: [`messages_edited`]).
    edited: Vec<(String, String)>,
}

impl Comparison<'_> {
    fn check(&mut self, chain: &str, reference: Reference, payload: &str) {
        self.live_rows += 1;
        let digest = payload_digest(payload);
        let archived = match self.chains.index.get(chain) {
            Some(&n) => self.chains.entries.remove(&(n, reference.clone())),
            None => None,
        };
        match archived {
            Some(a) if a.digest == digest => {}
            Some(_) if matches!(reference, Reference::Message(_)) => {
                self.edited.push((chain.to_string(), reference.to_string()));
            }
            Some(a) => self.problems.push(Problem {
                problem: "edited",
                chain: chain.to_string(),
                record: reference.to_string(),
                detail: format!("differs from what archive entry {} recorded", a.seq),
            }),
            None if self.not_archived_yet(chain, &reference) => self.pending += 1,
            None => self.problems.push(Problem {
                problem: "inserted",
                chain: chain.to_string(),
                record: reference.to_string(),
                detail: "in the live tables but never archived: written outside the service".into(),
            }),
        }
    }

    /// A message newer than what its conversation's archiving has reached.
    fn not_archived_yet(&self, chain: &str, reference: &Reference) -> bool {
        let Reference::Message(seq) = reference else {
            return false;
        };
        let conversation = chain
            .strip_prefix(super::CONVERSATION_PREFIX)
            .unwrap_or(chain);
        *seq > self.archived.get(conversation).copied().unwrap_or(0)
    }

    fn record(&mut self, record: Record) {
        self.check(
            &record.chain,
            Reference::of(record.reference),
            &record.payload,
        );
    }
}

/// Holds the archive records the live tables give now (one conversation's, or all)
/// against the archive.
async fn live_pass(
    snapshot: &mut Snapshot,
    conversation: Option<&str>,
    comparison: &mut Comparison<'_>,
) -> Result<(), DbError> {
    let filter = |select: &str, column: &str| {
        let mut sql = select.to_string();
        if conversation.is_some() {
            sql.push_str(&format!(" WHERE {column} = $1"));
        }
        sql
    };
    let params: Vec<Param> = conversation
        .map(|c| Param::Text(c.to_string()))
        .into_iter()
        .collect();
    // Messages are nearly every record: their chain and payload are written into
    // buffers reused from row to row.
    let prefix = conversation_chain("");
    let mut chain = prefix.clone();
    let mut payload = Payload::default();
    let mut message = |m: MessageRef<'_>| {
        chain.truncate(prefix.len());
        chain.push_str(m.conversation_id);
        comparison.check(
            &chain,
            Reference::Message(m.seq),
            payload.write(&m.fields()),
        );
    };
    let sql = filter(MESSAGE_SELECT, "conversation_id");
    match snapshot {
        Snapshot::Sqlite(conn) => {
            let params: Vec<&str> = conversation.into_iter().collect();
            sqlite_scan::scan(conn, &sql, &params, |row| {
                message(MessageRef {
                    conversation_id: row.required_text(0)?,
                    seq: row.int(1),
                    sender_id: row.required_text(2)?,
                    sender_role: row.required_text(3)?,
                    kind: row.required_text(4)?,
                    body: row.required_text(5)?,
                    client_msg_id: row.text(6)?,
                    created_at: row.int(7),
                });
                Ok::<_, DbError>(())
            })
            .await?;
        }
        Snapshot::Postgres(_) => {
            snapshot
                .each(sql, &params, |m: MessageRow| {
                    message(m.borrowed());
                    Ok(())
                })
                .await?;
        }
    }
    snapshot
        .each(
            filter(TURN_SELECT, "conversation_id"),
            &params,
            |t: TurnRow| {
                comparison.record(t.record());
                Ok(())
            },
        )
        .await?;
    snapshot
        .each(
            filter(HANDOFF_EVENT_SELECT, "conversation_id"),
            &params,
            |e: HandoffEventRow| {
                comparison.record(e.record());
                Ok(())
            },
        )
        .await?;
    snapshot
        .each(
            filter(REVIEW_SELECT, "conversation_id"),
            &params,
            |r: ReviewRow| {
                comparison.record(r.record());
                Ok(())
            },
        )
        .await?;
    snapshot
        .each(
            filter(LABEL_SELECT, "conversation_id"),
            &params,
            |l: LabelRow| {
                comparison.record(l.record());
                Ok(())
            },
        )
        .await?;
    if conversation.is_none() {
        snapshot
            .each(PROFILE_SELECT.into(), &[], |p: ProfileRow| {
                if let Some(s) = p.superseded() {
                    comparison.record(s);
                }
                comparison.record(p.expiry());
                comparison.record(p.record());
                Ok(())
            })
            .await?;
        snapshot
            .each(ACCESS_SELECT.into(), &[], |a: AccessRow| {
                comparison.record(a.record());
                Ok(())
            })
            .await?;
        snapshot
            .each(HOLD_SELECT.into(), &[], |h: HoldRow| {
                if let Some(lifted) = h.lift_record() {
                    comparison.record(lifted);
                }
                comparison.record(h.set_record());
                Ok(())
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_printed_form_of_a_seq_is_a_message_reference() {
        assert_eq!(Reference::of("message:12".into()), Reference::Message(12));
        assert_eq!(Reference::of("message:-3".into()), Reference::Message(-3));
        assert_eq!(Reference::of("message:0".into()), Reference::Message(0));
        for other in [
            "message:012",
            "message:+1",
            "message:-0",
            "message:",
            "message:1x",
            "turn:1",
        ] {
            let reference = Reference::of(other.into());
            assert!(matches!(reference, Reference::Other(_)), "{other}");
            assert_eq!(reference.to_string(), other);
        }
    }
}

//! The tamper-evident archive. Every record a regulator may ask about — each message,
//! bot turn record, handoff event, risk profile (and its supersession) and compliance
//! access — is appended to a hash chain: one per conversation (`conversation:<id>`),
//! one per client's profiles (`client:<id>`) and one for compliance access (`access`).
//! Records are appended in the transaction that writes them, except messages: the IM
//! path commits them alone and [`backlog`] appends them in batches right behind it (see
//! there for why, and for what bounds the lag). An entry's hash covers the previous entry's hash
//! and the record's canonical encoding, so editing, deleting, inserting or reordering
//! anything breaks the chain or its agreement with the live tables. [`checkpoint`]
//! signs a Merkle root over every chain head with an Ed25519 key; [`verify`] recomputes
//! it all and names each record that no longer matches.
//!
//! Hashes and encodings (fixed; exports are checked against them offline):
//! - payload: a JSON object of the record's fields (strings, integers, null), keys
//!   sorted, no whitespace — what [`Payload`] (and [`canonical`]) writes;
//! - entry hash: SHA-256 over `wealthdesk-archive-v1\n`, the previous hash (32 zero
//!   bytes for the first), then `chain_id`, `kind`, `ref` each followed by a NUL byte,
//!   `seq` and `at` as 8-byte big-endian integers, then the payload;
//! - Merkle leaf of a chain head: SHA-256 over `0x00`, `chain_id`, NUL, length (8 bytes
//!   big-endian), head; inner node: SHA-256 over `0x01`, left, right; an odd node moves
//!   up unchanged; the empty tree's root is SHA-256 of nothing.

pub mod api;
pub mod backlog;
pub mod checkpoint;
pub mod cli;
pub mod export;
pub mod records;
pub mod retention;
pub mod verify;

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;

use crate::db::{DbError, Markers, ROWS_PER_INSERT};

pub type Hash = [u8; 32];

/// The chain of a conversation's messages, turns and handoff events.
pub fn conversation_chain(id: &str) -> String {
    format!("conversation:{id}")
}

/// The chain of a client's risk profiles.
pub fn client_chain(id: &str) -> String {
    format!("client:{id}")
}

/// The chain of compliance access (searches, views, exports).
pub const ACCESS_CHAIN: &str = "access";

/// One record to append.
#[derive(Debug, Clone)]
pub struct Record {
    pub chain: String,
    /// message, turn, handoff_event, profile, profile_superseded, access.
    pub kind: &'static str,
    /// Which row: `message:<seq>`, `turn:<id>`, `handoff_event:<id>`, `profile:<id>`, …
    pub reference: String,
    pub at: i64,
    /// Canonical JSON ([`canonical`]).
    pub payload: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub chain_id: String,
    pub seq: i64,
    pub kind: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub at: i64,
    pub payload: String,
    pub hash: String,
}

/// A record's fields in canonical form: a flat JSON object, keys sorted.
pub fn canonical(fields: BTreeMap<&str, serde_json::Value>) -> String {
    // A BTreeMap serialises in key order whatever serde_json's own map does.
    serde_json::to_string(&fields).expect("plain values serialise")
}

/// One flat field of a payload: what [`Payload`] writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Text(&'a str),
    Int(i64),
    Null,
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(text: &'a str) -> Self {
        Field::Text(text)
    }
}

impl<'a> From<&'a String> for Field<'a> {
    fn from(text: &'a String) -> Self {
        Field::Text(text)
    }
}

impl From<i64> for Field<'_> {
    fn from(n: i64) -> Self {
        Field::Int(n)
    }
}

impl<'a, T: Into<Field<'a>>> From<Option<T>> for Field<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Field::Null, Into::into)
    }
}

/// Writes canonical payloads straight from borrowed fields, byte for byte what
/// [`canonical`] gives for the same flat values, without building JSON values first.
#[derive(Debug, Default)]
pub struct Payload {
    text: String,
}

impl Payload {
    /// The canonical text of `fields`, which must come in key order.
    pub fn write(&mut self, fields: &[(&str, Field<'_>)]) -> &str {
        debug_assert!(
            fields.windows(2).all(|w| w[0].0 < w[1].0),
            "payload fields in key order"
        );
        let out = &mut self.text;
        out.clear();
        out.push('{');
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(out, key);
            out.push(':');
            match value {
                Field::Text(text) => json_string(out, text),
                Field::Int(n) => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "{n}");
                }
                Field::Null => out.push_str("null"),
            }
        }
        out.push('}');
        &self.text
    }

    /// [`Payload::write`] into a new string.
    pub fn of(fields: &[(&str, Field<'_>)]) -> String {
        let mut payload = Payload::default();
        payload.write(fields);
        payload.text
    }
}

/// `text` as a JSON string, escaped as serde_json escapes it: `"`, `\` and the control
/// characters only, the common ones by their short escapes.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (i, byte) in text.bytes().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

pub fn entry_hash(
    prev: &Hash,
    chain: &str,
    seq: i64,
    kind: &str,
    reference: &str,
    at: i64,
    payload: &str,
) -> Hash {
    let mut h = Sha256::new();
    h.update(b"wealthdesk-archive-v1\n");
    h.update(prev);
    for part in [chain, kind, reference] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    h.update(payload.as_bytes());
    h.finalize().into()
}

pub fn payload_digest(payload: &str) -> Hash {
    Sha256::digest(payload.as_bytes()).into()
}

pub fn parse_hash(hex_text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// Runs `job` every `period` (never when it is zero), the first time one period from now,
/// until `stop`.
pub(crate) fn periodically<F, Fut>(
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    mut job: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if period.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => job().await,
            }
        }
    });
}

/// Off only in a benchmark's baseline process ([`crate::config::ArchiveConfig`]).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns appending off for the whole process (`archive.benchmark_without_archive`).
pub fn disable_for_benchmark() {
    ENABLED.store(false, std::sync::atomic::Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Each chain's length and head.
type Heads = HashMap<String, (i64, Hash)>;

/// A statement built at run time on the engine-neutral pool.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// One record linked into its chain: its seq and hash.
struct LinkedEntry<'a> {
    record: &'a Record,
    seq: i64,
    hash: String,
}

/// Records linked onto their chains' heads, ready to write: the entries, then each
/// chain's new head.
struct Linked<'a> {
    entries: Vec<LinkedEntry<'a>>,
    chains: Vec<String>,
    heads: Heads,
    now: i64,
}

impl<'a> Linked<'a> {
    /// Links `records` onto `heads` (as read in the caller's write transaction; a chain
    /// missing from them starts empty).
    fn new(records: &'a [Record], mut heads: Heads) -> Linked<'a> {
        let entries = records
            .iter()
            .map(|r| {
                let (length, head) = heads.entry(r.chain.clone()).or_insert((0, [0; 32]));
                *length += 1;
                *head = entry_hash(
                    head,
                    &r.chain,
                    *length,
                    r.kind,
                    &r.reference,
                    r.at,
                    &r.payload,
                );
                LinkedEntry {
                    record: r,
                    seq: *length,
                    hash: hex::encode(*head),
                }
            })
            .collect();
        Linked {
            entries,
            chains: chains_of(records),
            heads,
            now: crate::time_fmt::now_ms(),
        }
    }

    /// The statement inserting `entries`, ended by `;`.
    fn push_entries_sql(sql: &mut String, marks: &mut Markers, entries: &[LinkedEntry<'_>]) {
        sql.push_str(
            "INSERT INTO archive_entries (chain_id, seq, kind, ref, at, payload, hash) VALUES ",
        );
        marks.push_rows(sql, entries.len(), 7);
        sql.push_str(";\n");
    }

    /// The values of [`Linked::push_entries_sql`], in order.
    fn bind_entries<'q>(mut query: AnyQuery<'q>, entries: &[LinkedEntry<'_>]) -> AnyQuery<'q> {
        for l in entries {
            let r = l.record;
            query = query
                .bind(r.chain.clone())
                .bind(l.seq)
                .bind(r.kind)
                .bind(r.reference.clone())
                .bind(r.at)
                .bind(r.payload.clone())
                .bind(l.hash.clone());
        }
        query
    }

    /// The statement moving the chains' heads, ended by `;`.
    fn push_heads_sql(&self, sql: &mut String, marks: &mut Markers) {
        sql.push_str("INSERT INTO archive_heads (chain_id, length, head, updated_at) VALUES ");
        marks.push_rows(sql, self.chains.len(), 4);
        sql.push_str(UPSERT_HEADS);
        sql.push_str(";\n");
    }

    /// The values of [`Linked::push_heads_sql`], in order.
    fn bind_heads<'q>(&self, mut query: AnyQuery<'q>) -> AnyQuery<'q> {
        for chain in &self.chains {
            let (length, head) = self.heads[chain];
            query = query
                .bind(chain.clone())
                .bind(length)
                .bind(hex::encode(head))
                .bind(self.now);
        }
        query
    }
}

/// The distinct chains of `records`, sorted (the order their heads are locked in).
fn chains_of(records: &[Record]) -> Vec<String> {
    let mut chains: Vec<String> = records.iter().map(|r| r.chain.clone()).collect();
    chains.sort_unstable();
    chains.dedup();
    chains
}

/// Appends `records` to their chains inside the caller's write transaction, in order.
/// A conversation's messages not yet archived ([`backlog`]) go first: a conversation's
/// chain holds its events in the order they were committed. On PostgreSQL the chains'
/// head rows are locked, so concurrent writers of one chain queue (on SQLite the one
/// writer already does).
pub async fn append(tx: &mut sqlx::AnyConnection, records: &[Record]) -> Result<(), DbError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut conversations: Vec<String> = records
        .iter()
        .filter_map(|r| r.chain.strip_prefix(CONVERSATION_PREFIX))
        .map(str::to_string)
        .collect();
    conversations.sort_unstable();
    conversations.dedup();
    append_behind(tx, &conversations, records, None, Wait::Queue)
        .await
        .map(|_| ())
}

/// The prefix of a conversation's chain id ([`conversation_chain`]).
const CONVERSATION_PREFIX: &str = "conversation:";

/// Appends the messages of `conversations` committed but not yet archived (at most
/// `budget` of them, when given), then `records`, inside the caller's write
/// transaction, and moves the conversations' archive progress. Returns how many
/// messages it archived.
async fn append_behind(
    tx: &mut sqlx::AnyConnection,
    conversations: &[String],
    records: &[Record],
    budget: Option<i64>,
    wait: Wait,
) -> Result<u64, DbError> {
    if !enabled() || (records.is_empty() && conversations.is_empty()) {
        return Ok(0);
    }
    let postgres = tx.backend_name() == "PostgreSQL";
    let mut chains = chains_of(records);
    chains.extend(conversations.iter().map(|c| conversation_chain(c)));
    chains.sort_unstable();
    chains.dedup();
    // The heads first: on PostgreSQL their locks make the backlog read below, and its
    // progress, this transaction's alone.
    let heads = to_heads(head_rows(tx, &chains, postgres, wait).await?);
    // Skipped heads are another transaction's, which archives their backlog itself.
    let conversations: Vec<String> = conversations
        .iter()
        .filter(|c| !postgres || wait == Wait::Queue || heads.contains_key(&conversation_chain(c)))
        .cloned()
        .collect();
    let backlog = backlog::read(tx, &conversations, budget).await?;
    let archived = backlog.records.len() as u64;
    let mut all = backlog.records;
    all.extend_from_slice(records);
    write(tx, heads, &all, &backlog.progress).await?;
    Ok(archived)
}

/// How an append takes its chains' heads on PostgreSQL (on SQLite the one writer
/// already holds them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Lock each, waiting for the transaction holding it: every write of a record.
    Queue,
    /// Lock those free now and leave the rest: the archiver. A transaction appending to
    /// a conversation's chain may hold several heads, taken one append at a time (a bot
    /// turn's records of several conversations); an archiver waiting for one of them
    /// while holding another could close a cycle, so it never waits while it holds.
    /// Heads missing are created beforehand, outside its transaction ([`create_heads`]).
    SkipLocked,
}

/// Creates the heads of `chains` that do not exist yet, empty, each in a transaction
/// of its own statement (PostgreSQL; the archiver then locks them without waiting).
async fn create_heads(db: &crate::db::Db, chains: &[String]) -> Result<(), DbError> {
    for part in chains.chunks(ROWS_PER_INSERT) {
        let mut sql = insert_empty_heads(&mut Markers::new(db.backend()), part.len());
        sql.push_str(" ON CONFLICT (chain_id) DO NOTHING");
        let now = crate::time_fmt::now_ms();
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for chain in part {
            query = query.bind(chain.clone()).bind(now);
        }
        query.execute(db.pool()).await?;
    }
    Ok(())
}

/// An insert of `count` new, empty heads, each bound to its chain and the time (the
/// caller ends it with what to do on a conflict).
fn insert_empty_heads(marks: &mut Markers, count: usize) -> String {
    let mut sql =
        String::from("INSERT INTO archive_heads (chain_id, length, head, updated_at) VALUES ");
    for i in 0..count {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        marks.push(&mut sql);
        sql.push_str(", 0, '', ");
        marks.push(&mut sql);
        sql.push(')');
    }
    sql
}

/// Appends `backlog`, read before the caller's write transaction began, unless any of
/// its conversations was archived further meanwhile, or (PostgreSQL) another
/// transaction holds one of its heads: then None, and nothing is written. On SQLite the
/// reading then costs the one writer nothing.
async fn append_read(
    tx: &mut sqlx::AnyConnection,
    backlog: &backlog::Backlog,
) -> Result<Option<u64>, DbError> {
    if !enabled() || backlog.records.is_empty() {
        return Ok(Some(0));
    }
    let postgres = tx.backend_name() == "PostgreSQL";
    let chains = chains_of(&backlog.records);
    // The heads first, as in [`append_behind`].
    let heads = to_heads(head_rows(tx, &chains, postgres, Wait::SkipLocked).await?);
    let skipped = postgres && heads.len() < chains.len();
    if skipped || !backlog::unchanged(tx, &backlog.progress).await? {
        return Ok(None);
    }
    write(tx, heads, &backlog.records, &backlog.progress).await?;
    Ok(Some(backlog.records.len() as u64))
}

/// Links `all` onto `heads` and writes the entries, the new heads and `progress`.
async fn write(
    tx: &mut sqlx::AnyConnection,
    heads: Heads,
    all: &[Record],
    progress: &[backlog::Progress],
) -> Result<(), DbError> {
    if all.is_empty() {
        return Ok(());
    }
    let postgres = tx.backend_name() == "PostgreSQL";
    let linked = Linked::new(all, heads);
    let mut sql = String::new();
    let mut marks = Markers::for_connection(tx);
    if postgres {
        // One statement per round trip: PostgreSQL binds no values in a multi-statement
        // string.
        for chunk in linked.entries.chunks(ROWS_PER_INSERT) {
            let mut sql = String::new();
            Linked::push_entries_sql(&mut sql, &mut Markers::for_connection(tx), chunk);
            let query = Linked::bind_entries(sqlx::query(AssertSqlSafe(sql)), chunk);
            query.execute(&mut *tx).await?;
        }
        linked.push_heads_sql(&mut sql, &mut marks);
        let query = linked.bind_heads(sqlx::query(AssertSqlSafe(sql)));
        query.execute(&mut *tx).await?;
        if !progress.is_empty() {
            let mut sql = String::new();
            backlog::push_progress_sql(&mut sql, &mut Markers::for_connection(tx), progress);
            let query = backlog::bind_progress(sqlx::query(AssertSqlSafe(sql)), progress);
            query.execute(&mut *tx).await?;
        }
    } else {
        // One round trip to the engine for the whole append.
        for chunk in linked.entries.chunks(ROWS_PER_INSERT) {
            Linked::push_entries_sql(&mut sql, &mut marks, chunk);
        }
        linked.push_heads_sql(&mut sql, &mut marks);
        if !progress.is_empty() {
            backlog::push_progress_sql(&mut sql, &mut marks, progress);
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for chunk in linked.entries.chunks(ROWS_PER_INSERT) {
            query = Linked::bind_entries(query, chunk);
        }
        query = linked.bind_heads(query);
        query = backlog::bind_progress(query, progress);
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// The heads of `chains` as they stand in the caller's write transaction. On
/// PostgreSQL they are locked in chain order: waiting, after creating the missing ones
/// (a chain's first writers meet on its new row), or skipping those another
/// transaction holds ([`Wait`]).
async fn head_rows(
    tx: &mut sqlx::AnyConnection,
    chains: &[String],
    postgres: bool,
    wait: Wait,
) -> Result<Vec<(String, i64, String)>, DbError> {
    let mut rows = Vec::with_capacity(chains.len());
    for part in chains.chunks(ROWS_PER_INSERT) {
        let mut marks = Markers::for_connection(tx);
        let queue = postgres && wait == Wait::Queue;
        let sql = if queue {
            let mut sql = insert_empty_heads(&mut marks, part.len());
            sql.push_str(LOCK_HEADS);
            sql
        } else {
            let mut sql = String::from(
                "SELECT chain_id, length, head FROM archive_heads WHERE chain_id IN (",
            );
            marks.push_list(&mut sql, part.len());
            sql.push(')');
            if postgres {
                sql.push_str(" ORDER BY chain_id FOR UPDATE SKIP LOCKED");
            }
            sql
        };
        let now = crate::time_fmt::now_ms();
        let mut query = sqlx::query_as(AssertSqlSafe(sql));
        for chain in part {
            query = query.bind(chain.clone());
            if queue {
                query = query.bind(now);
            }
        }
        rows.extend(query.fetch_all(&mut *tx).await?);
    }
    Ok(rows)
}

/// Ends an insert of new, empty heads so that it returns every head listed, locked: a
/// conflicting row is "updated" to itself, which locks it and returns it as it is.
const LOCK_HEADS: &str = " ON CONFLICT (chain_id) DO UPDATE SET length = archive_heads.length \
     RETURNING chain_id, length, head";

const UPSERT_HEADS: &str = " ON CONFLICT (chain_id) DO UPDATE SET length = excluded.length, \
     head = excluded.head, updated_at = excluded.updated_at";

fn to_heads(rows: Vec<(String, i64, String)>) -> Heads {
    rows.into_iter()
        .map(|(chain, length, head)| (chain, (length, parse_hash(&head).unwrap_or([0; 32]))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_has_no_whitespace() {
        let text = canonical(BTreeMap::from([
            ("seq", json!(2)),
            ("body", json!("{\"text\":\"保本\"}")),
            ("client_msg_id", json!(null)),
        ]));
        assert_eq!(
            text,
            r#"{"body":"{\"text\":\"保本\"}","client_msg_id":null,"seq":2}"#
        );
    }

    #[test]
    fn a_payload_escapes_text_as_serde_json_does() {
        let mut text: String = (0u8..0x80).map(char::from).collect();
        text.push_str("保本 \u{2028} é 😀");
        let payload = Payload::of(&[
            ("a", Field::Text(&text)),
            ("b", Field::Int(i64::MIN)),
            ("c", Field::Null),
        ]);
        let expected = canonical(BTreeMap::from([
            ("a", json!(text)),
            ("b", json!(i64::MIN)),
            ("c", json!(null)),
        ]));
        assert_eq!(payload, expected);
    }

    #[test]
    fn every_part_of_an_entry_changes_its_hash() {
        let base = entry_hash(&[0; 32], "c", 1, "message", "message:1", 5, "{}");
        let variants = [
            entry_hash(&[1; 32], "c", 1, "message", "message:1", 5, "{}"),
            entry_hash(&[0; 32], "d", 1, "message", "message:1", 5, "{}"),
            entry_hash(&[0; 32], "c", 2, "message", "message:1", 5, "{}"),
            entry_hash(&[0; 32], "c", 1, "turn", "message:1", 5, "{}"),
            entry_hash(&[0; 32], "c", 1, "message", "message:2", 5, "{}"),
            entry_hash(&[0; 32], "c", 1, "message", "message:1", 6, "{}"),
            entry_hash(&[0; 32], "c", 1, "message", "message:1", 5, "{ }"),
            // Field boundaries are marked: moving a character across one shows.
            entry_hash(&[0; 32], "cm", 1, "essage", "message:1", 5, "{}"),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
    }
}

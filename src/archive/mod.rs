//! The tamper-evident archive. Every record a regulator may ask about — each message,
//! bot turn record, handoff event, risk profile (and its supersession) and compliance
//! access — is appended, in the transaction that writes it, to a hash chain: one per
//! conversation (`conversation:<id>`), one per client's profiles (`client:<id>`) and one
//! for compliance access (`access`). An entry's hash covers the previous entry's hash
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
pub(crate) type Heads = HashMap<String, (i64, Hash)>;

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
pub(crate) struct Linked<'a> {
    entries: Vec<LinkedEntry<'a>>,
    chains: Vec<String>,
    heads: Heads,
    now: i64,
}

impl<'a> Linked<'a> {
    /// Links `records` onto `heads` (as read in the caller's write transaction; a chain
    /// missing from them starts empty). None when there is nothing to append (or
    /// appending is off for a benchmark's baseline).
    pub(crate) fn new(records: &'a [Record], mut heads: Heads) -> Option<Linked<'a>> {
        if records.is_empty() || !enabled() {
            return None;
        }
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
        Some(Linked {
            entries,
            chains: chains_of(records),
            heads,
            now: crate::time_fmt::now_ms(),
        })
    }

    /// The statements inserting the entries, each ended by `;`.
    pub(crate) fn push_entries_sql(&self, sql: &mut String, marks: &mut Markers) {
        for chunk in self.entries.chunks(ROWS_PER_INSERT) {
            sql.push_str(
                "INSERT INTO archive_entries (chain_id, seq, kind, ref, at, payload, hash) VALUES ",
            );
            marks.push_rows(sql, chunk.len(), 7);
            sql.push_str(";\n");
        }
    }

    /// The values of [`Linked::push_entries_sql`], in order.
    pub(crate) fn bind_entries<'q>(&self, mut query: AnyQuery<'q>) -> AnyQuery<'q> {
        for l in &self.entries {
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
    pub(crate) fn push_heads_sql(&self, sql: &mut String, marks: &mut Markers) {
        sql.push_str("INSERT INTO archive_heads (chain_id, length, head, updated_at) VALUES ");
        marks.push_rows(sql, self.chains.len(), 4);
        sql.push_str(UPSERT_HEADS);
        sql.push_str(";\n");
    }

    /// The values of [`Linked::push_heads_sql`], in order.
    pub(crate) fn bind_heads<'q>(&self, mut query: AnyQuery<'q>) -> AnyQuery<'q> {
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
/// On PostgreSQL the chains' head rows are locked, so concurrent writers of one chain
/// queue (on SQLite the one writer already does); on SQLite the entries and heads are
/// written in one round trip to the engine.
pub async fn append(tx: &mut sqlx::AnyConnection, records: &[Record]) -> Result<(), DbError> {
    if records.is_empty() || !enabled() {
        return Ok(());
    }
    if tx.backend_name() == "PostgreSQL" {
        // One statement per round trip: PostgreSQL binds no values in a multi-statement
        // string, so a long append goes in parts.
        for part in records.chunks(ROWS_PER_INSERT) {
            append_part(tx, part, true).await?;
        }
        Ok(())
    } else {
        append_part(tx, records, false).await
    }
}

async fn append_part(
    tx: &mut sqlx::AnyConnection,
    records: &[Record],
    postgres: bool,
) -> Result<(), DbError> {
    let chains = chains_of(records);
    let mut marks = Markers::for_connection(tx);
    let rows: Vec<(String, i64, String)> = if postgres {
        // Creates the missing heads and locks them all, in chain order: a chain's first
        // writers meet on its new row.
        let mut sql =
            String::from("INSERT INTO archive_heads (chain_id, length, head, updated_at) VALUES ");
        for i in 0..chains.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            marks.push(&mut sql);
            sql.push_str(", 0, '', ");
            marks.push(&mut sql);
            sql.push(')');
        }
        sql.push_str(LOCK_HEADS);
        let now = crate::time_fmt::now_ms();
        let mut query = sqlx::query_as(AssertSqlSafe(sql));
        for chain in &chains {
            query = query.bind(chain.clone()).bind(now);
        }
        query.fetch_all(&mut *tx).await?
    } else {
        let mut sql =
            String::from("SELECT chain_id, length, head FROM archive_heads WHERE chain_id IN (");
        marks.push_list(&mut sql, chains.len());
        sql.push(')');
        let mut query = sqlx::query_as(AssertSqlSafe(sql));
        for chain in &chains {
            query = query.bind(chain.clone());
        }
        query.fetch_all(&mut *tx).await?
    };
    let Some(linked) = Linked::new(records, to_heads(rows)) else {
        return Ok(());
    };
    let mut entries = String::new();
    let mut marks = Markers::for_connection(tx);
    linked.push_entries_sql(&mut entries, &mut marks);
    if postgres {
        let query = linked.bind_entries(sqlx::query(AssertSqlSafe(entries)));
        query.execute(&mut *tx).await?;
        let mut heads = String::new();
        linked.push_heads_sql(&mut heads, &mut Markers::for_connection(tx));
        let query = linked.bind_heads(sqlx::query(AssertSqlSafe(heads)));
        query.execute(&mut *tx).await?;
    } else {
        linked.push_heads_sql(&mut entries, &mut marks);
        let query = linked.bind_heads(linked.bind_entries(sqlx::query(AssertSqlSafe(entries))));
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Ends an insert of new, empty heads so that it returns every head listed, locked: a
/// conflicting row is "updated" to itself, which locks it and returns it as it is.
const LOCK_HEADS: &str = " ON CONFLICT (chain_id) DO UPDATE SET length = archive_heads.length \
     RETURNING chain_id, length, head";

const UPSERT_HEADS: &str = " ON CONFLICT (chain_id) DO UPDATE SET length = excluded.length, \
     head = excluded.head, updated_at = excluded.updated_at";

pub(crate) fn to_heads(rows: Vec<(String, i64, String)>) -> Heads {
    rows.into_iter()
        .map(|(chain, length, head)| (chain, (length, parse_hash(&head).unwrap_or([0; 32]))))
        .collect()
}

/// [`append`] on PostgreSQL's native connection (the IM hot path): array parameters,
/// three statements whatever the number of records.
pub async fn append_pg(tx: &mut sqlx::PgConnection, records: &[Record]) -> Result<(), DbError> {
    if records.is_empty() || !enabled() {
        return Ok(());
    }
    let chains = chains_of(records);
    let rows: Vec<(String, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO archive_heads (chain_id, length, head, updated_at) \
         SELECT c, 0, '', $2 FROM UNNEST($1::text[]) AS u(c) ORDER BY c{LOCK_HEADS}"
    )))
    .bind(&chains)
    .bind(crate::time_fmt::now_ms())
    .fetch_all(&mut *tx)
    .await?;
    let Some(linked) = Linked::new(records, to_heads(rows)) else {
        return Ok(());
    };
    let entries = &linked.entries;
    sqlx::query(
        "INSERT INTO archive_entries (chain_id, seq, kind, ref, at, payload, hash) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], \
         $6::text[], $7::text[])",
    )
    .bind(
        entries
            .iter()
            .map(|l| l.record.chain.clone())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|l| l.seq).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|l| l.record.kind.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|l| l.record.reference.clone())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|l| l.record.at).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|l| l.record.payload.clone())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|l| l.hash.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let heads = &linked.heads;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO archive_heads (chain_id, length, head, updated_at) \
         SELECT c, l, h, $4 FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS u(c, l, h){UPSERT_HEADS}"
    )))
    .bind(&chains)
    .bind(chains.iter().map(|c| heads[c].0).collect::<Vec<_>>())
    .bind(chains.iter().map(|c| hex::encode(heads[c].1)).collect::<Vec<_>>())
    .bind(linked.now)
    .execute(&mut *tx)
    .await?;
    Ok(())
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

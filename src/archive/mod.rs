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

use crate::db::DbError;

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

/// One record linked into its chain: its seq and hash.
struct Linked<'a> {
    record: &'a Record,
    seq: i64,
    hash: String,
}

/// The distinct chains of `records`, sorted (the order their heads are locked in).
fn chains_of(records: &[Record]) -> Vec<String> {
    let mut chains: Vec<String> = records.iter().map(|r| r.chain.clone()).collect();
    chains.sort_unstable();
    chains.dedup();
    chains
}

/// Links `records` onto `heads` (each chain's length and head, moved along).
fn link<'a>(records: &'a [Record], heads: &mut HashMap<String, (i64, Hash)>) -> Vec<Linked<'a>> {
    records
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
            Linked {
                record: r,
                seq: *length,
                hash: hex::encode(*head),
            }
        })
        .collect()
}

fn placeholders(sql: &mut String, rows: usize, width: usize, extra: &[usize]) {
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for j in 0..width {
            if j > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i * width + j + 1));
        }
        for e in extra {
            sql.push_str(&format!(", ${e}"));
        }
        sql.push(')');
    }
}

/// Appends `records` to their chains inside the caller's write transaction, in order.
/// On PostgreSQL the chains' head rows are locked, so concurrent writers of one chain
/// queue (on SQLite the one writer already does).
pub async fn append(tx: &mut sqlx::AnyConnection, records: &[Record]) -> Result<(), DbError> {
    if records.is_empty() || !enabled() {
        return Ok(());
    }
    let lock_rows = tx.backend_name() == "PostgreSQL";
    let chains = chains_of(records);
    let now = crate::time_fmt::now_ms();
    if lock_rows {
        // A chain's first writers meet on its head row: create it, then lock it.
        let mut sql =
            String::from("INSERT INTO archive_heads (chain_id, length, head, updated_at) VALUES ");
        for i in 0..chains.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, 0, '', ${})", i + 1, chains.len() + 1));
        }
        sql.push_str(" ON CONFLICT (chain_id) DO NOTHING");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for chain in &chains {
            query = query.bind(chain.clone());
        }
        query.bind(now).execute(&mut *tx).await?;
    }
    let mut sql =
        String::from("SELECT chain_id, length, head FROM archive_heads WHERE chain_id IN (");
    for i in 0..chains.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 1));
    }
    sql.push(')');
    if lock_rows {
        sql.push_str(" ORDER BY chain_id FOR UPDATE");
    }
    let mut query = sqlx::query_as::<_, (String, i64, String)>(AssertSqlSafe(sql));
    for chain in &chains {
        query = query.bind(chain.clone());
    }
    let mut heads = to_heads(query.fetch_all(&mut *tx).await?);
    let linked = link(records, &mut heads);
    // Bounded statements: SQLite takes at most 32766 parameters.
    for chunk in linked.chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO archive_entries (chain_id, seq, kind, ref, at, payload, hash) VALUES ",
        );
        placeholders(&mut sql, chunk.len(), 7, &[]);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for l in chunk {
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
        query.execute(&mut *tx).await?;
    }
    let mut sql =
        String::from("INSERT INTO archive_heads (chain_id, length, head, updated_at) VALUES ");
    placeholders(&mut sql, chains.len(), 3, &[chains.len() * 3 + 1]);
    sql.push_str(UPSERT_HEADS);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for chain in &chains {
        let (length, head) = heads[chain];
        query = query
            .bind(chain.clone())
            .bind(length)
            .bind(hex::encode(head));
    }
    query.bind(now).execute(&mut *tx).await?;
    Ok(())
}

const UPSERT_HEADS: &str = " ON CONFLICT (chain_id) DO UPDATE SET length = excluded.length, \
     head = excluded.head, updated_at = excluded.updated_at";

fn to_heads(rows: Vec<(String, i64, String)>) -> HashMap<String, (i64, Hash)> {
    rows.into_iter()
        .map(|(chain, length, head)| (chain, (length, parse_hash(&head).unwrap_or([0; 32]))))
        .collect()
}

/// [`append`] on PostgreSQL's native connection (the IM hot path): array parameters,
/// four statements whatever the number of records.
pub async fn append_pg(tx: &mut sqlx::PgConnection, records: &[Record]) -> Result<(), DbError> {
    if records.is_empty() || !enabled() {
        return Ok(());
    }
    let chains = chains_of(records);
    let now = crate::time_fmt::now_ms();
    sqlx::query(
        "INSERT INTO archive_heads (chain_id, length, head, updated_at) \
         SELECT c, 0, '', $2 FROM UNNEST($1::text[]) AS u(c) ON CONFLICT (chain_id) DO NOTHING",
    )
    .bind(&chains)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT chain_id, length, head FROM archive_heads WHERE chain_id = ANY($1) \
         ORDER BY chain_id FOR UPDATE",
    )
    .bind(&chains)
    .fetch_all(&mut *tx)
    .await?;
    let mut heads = to_heads(rows);
    let linked = link(records, &mut heads);
    sqlx::query(
        "INSERT INTO archive_entries (chain_id, seq, kind, ref, at, payload, hash) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], \
         $6::text[], $7::text[])",
    )
    .bind(
        linked
            .iter()
            .map(|l| l.record.chain.clone())
            .collect::<Vec<_>>(),
    )
    .bind(linked.iter().map(|l| l.seq).collect::<Vec<_>>())
    .bind(
        linked
            .iter()
            .map(|l| l.record.kind.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        linked
            .iter()
            .map(|l| l.record.reference.clone())
            .collect::<Vec<_>>(),
    )
    .bind(linked.iter().map(|l| l.record.at).collect::<Vec<_>>())
    .bind(
        linked
            .iter()
            .map(|l| l.record.payload.clone())
            .collect::<Vec<_>>(),
    )
    .bind(linked.iter().map(|l| l.hash.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO archive_heads (chain_id, length, head, updated_at) \
         SELECT c, l, h, $4 FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS u(c, l, h){UPSERT_HEADS}"
    )))
    .bind(&chains)
    .bind(chains.iter().map(|c| heads[c].0).collect::<Vec<_>>())
    .bind(chains.iter().map(|c| hex::encode(heads[c].1)).collect::<Vec<_>>())
    .bind(now)
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

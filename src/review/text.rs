//! Full-text search over transcripts in Chinese and English, the same on SQLite and
//! PostgreSQL.
//!
//! Chinese is written without spaces, so words cannot be split on whitespace and no
//! dictionary segmenter ships with either store. Text is cut into *terms* instead:
//! every run of letters or digits outside the CJK ranges is one lower-cased term
//! (`Guaranteed` → `guaranteed`), and every run of CJK characters gives its overlapping
//! pairs (`是否保本` → `是否`, `否保`, `保本`), or the single character when the run is
//! one character long. A query is cut the same way and every one of its terms must be
//! present, so 保本 is found inside 这个产品保本吗; the candidates are then checked for
//! the query's words as written (adjacent, in order), which removes matches whose pairs
//! were only scattered through the text.
//!
//! The terms live in `search_text`: an FTS5 table on SQLite, a `text[]` column with a
//! GIN index on PostgreSQL. [`index_pending`] brings it up to date from the messages —
//! by each conversation's sequence numbers, so no message is skipped or indexed twice —
//! periodically and before every search, never in the message path.

use std::collections::BTreeSet;

use futures::TryStreamExt;

use sqlx::AssertSqlSafe;

use crate::db::{Backend, Db, DbError, Markers, ROWS_PER_INSERT};

/// Whether `c` is written without spaces between words (Han, kana, Hangul).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF
        | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// The terms of `text`, in order of appearance, repeats kept.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut run: Vec<char> = Vec::new();
    let flush_run = |run: &mut Vec<char>, out: &mut Vec<String>| {
        match run.len() {
            0 => {}
            1 => out.push(run[0].to_string()),
            _ => out.extend(run.windows(2).map(|w| w.iter().collect::<String>())),
        }
        run.clear();
    };
    for c in text.chars() {
        if is_cjk(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            run.push(c);
        } else if c.is_alphanumeric() {
            flush_run(&mut run, &mut out);
            word.extend(c.to_lowercase());
        } else {
            flush_run(&mut run, &mut out);
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
        }
    }
    flush_run(&mut run, &mut out);
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// A full-text query, cut into terms for the index and into words for the final check.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    /// Distinct terms, every one of which a match holds.
    pub terms: Vec<String>,
    /// The query's words as written, normalised: each must occur in a match.
    pub phrases: Vec<String>,
}

/// Why a full-text query cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("the text query is longer than {0} characters")]
    TooLong(usize),
    #[error("the text query has no letters, digits or Chinese characters to search for")]
    NothingToSearch,
    #[error("the text query has more than {0} terms")]
    TooManyTerms(usize),
}

pub const MAX_QUERY_CHARS: usize = 200;
const MAX_TERMS: usize = 32;

/// Lower-cased text with everything but letters, digits and CJK turned into single
/// spaces: the form both the query's phrases and the checked text are compared in.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

impl TextQuery {
    pub fn parse(q: &str) -> Result<TextQuery, QueryError> {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError::TooLong(MAX_QUERY_CHARS));
        }
        let unique: BTreeSet<String> = terms(q).into_iter().collect();
        if unique.is_empty() {
            return Err(QueryError::NothingToSearch);
        }
        if unique.len() > MAX_TERMS {
            return Err(QueryError::TooManyTerms(MAX_TERMS));
        }
        let phrases = q
            .split_whitespace()
            .map(normalise)
            .filter(|p| !p.is_empty())
            .collect();
        Ok(TextQuery {
            terms: unique.into_iter().collect(),
            phrases,
        })
    }

    /// Whether `text` holds every word of the query as written.
    pub fn matches(&self, text: &str) -> bool {
        let text = normalise(text);
        self.phrases.iter().all(|p| text.contains(p.as_str()))
    }

    /// The FTS5 expression for the terms (SQLite): each quoted, all required.
    pub fn fts5(&self) -> String {
        self.terms
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// The text a message contributes to the index: its `text`, and a questionnaire
/// question's option labels.
pub fn message_text(body: &serde_json::Value) -> String {
    let mut text = body
        .get("text")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    if let Some(options) = body.get("options").and_then(|o| o.as_array()) {
        for o in options {
            if let Some(label) = o.get("label").and_then(|l| l.as_str()) {
                text.push('\n');
                text.push_str(label);
            }
        }
    }
    text
}

/// Indexes new messages every `period` (0: never) until `stop`.
pub fn every(db: Db, period: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
    let db = std::sync::Arc::new(db);
    crate::archive::periodically(period, stop, move || {
        let db = db.clone();
        async move {
            if let Err(e) = index_pending(&db).await {
                tracing::warn!(error = %e, "cannot index transcripts for search");
            }
        }
    });
}

/// Conversations looked at, and messages indexed at most, in one transaction: on SQLite
/// the indexer holds the write lock meanwhile — messages wait to be committed behind
/// it — so a backlog is taken in short turns.
const BATCH: usize = 200;
const MESSAGES_PER_TURN: i64 = 500;

/// One statement for a conversation's newly indexed messages (`(seq, terms joined by
/// spaces)`), not one per message: each statement is a round trip to the engine while
/// the write lock is held.
async fn insert_terms(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    conversation: &str,
    rows: &[(i64, String)],
) -> Result<(), DbError> {
    let mut marks = Markers::new(backend);
    let mut sql = String::from("INSERT INTO search_text (terms, conversation_id, seq) VALUES ");
    for i in 0..rows.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        match backend {
            Backend::Sqlite => {
                sql.push('(');
                marks.push_list(&mut sql, 3);
                sql.push(')');
            }
            Backend::Postgres => {
                // The array travels as its text form: the Any driver binds no arrays.
                sql.push_str("(string_to_array(");
                marks.push(&mut sql);
                sql.push_str(", ' '), ");
                marks.push_list(&mut sql, 2);
                sql.push(')');
            }
        }
    }
    if backend == Backend::Postgres {
        sql.push_str(" ON CONFLICT DO NOTHING");
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for (seq, terms) in rows {
        query = query
            .bind(terms.clone())
            .bind(conversation.to_string())
            .bind(*seq);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// Indexes every message not yet indexed; returns how many were added.
pub async fn index_pending(db: &Db) -> Result<u64, DbError> {
    let mut added = 0;
    loop {
        // Read inside the writing transaction, so two indexers never take the same rows.
        let mut tx = db.begin_write().await?;
        let pending: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT c.id, COALESCE(p.indexed_seq, 0), c.last_seq FROM conversations c \
             LEFT JOIN search_progress p ON p.conversation_id = c.id \
             WHERE c.last_seq > COALESCE(p.indexed_seq, 0) LIMIT $1",
        )
        .bind(BATCH as i64)
        .fetch_all(&mut *tx)
        .await?;
        if pending.is_empty() {
            return Ok(added);
        }
        let mut budget = MESSAGES_PER_TURN;
        let mut cut_short = false;
        for (conversation, from, to) in &pending {
            if budget == 0 {
                cut_short = true;
                break;
            }
            let to = (*to).min(from + budget);
            budget -= to - from;
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, body FROM messages WHERE conversation_id = $1 AND seq > $2 \
                 AND seq <= $3 ORDER BY seq",
            )
            .bind(conversation)
            .bind(from)
            .bind(to)
            .fetch(&mut *tx)
            .try_collect()
            .await?;
            let indexed: Vec<(i64, String)> = rows
                .into_iter()
                .filter_map(|(seq, body)| {
                    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let terms: BTreeSet<String> = terms(&message_text(&body)).into_iter().collect();
                    let terms: Vec<String> = terms.into_iter().collect();
                    (!terms.is_empty()).then(|| (seq, terms.join(" ")))
                })
                .collect();
            for chunk in indexed.chunks(ROWS_PER_INSERT) {
                insert_terms(&mut tx, db.backend(), conversation, chunk).await?;
                added += chunk.len() as u64;
            }
            sqlx::query(
                "INSERT INTO search_progress (conversation_id, indexed_seq) VALUES ($1, $2) \
                 ON CONFLICT (conversation_id) DO UPDATE SET indexed_seq = excluded.indexed_seq",
            )
            .bind(conversation)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if pending.len() < BATCH && !cut_short && budget > 0 {
            return Ok(added);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_cut_into_overlapping_pairs_and_words_are_lower_cased() {
        assert_eq!(
            terms("这个产品保本吗？Is it GUARANTEED, 100%"),
            [
                "这个",
                "个产",
                "产品",
                "品保",
                "保本",
                "本吗",
                "is",
                "it",
                "guaranteed",
                "100"
            ]
        );
        assert_eq!(terms("A股"), ["a", "股"]);
    }

    #[test]
    fn a_query_needs_its_words_adjacent_and_in_order() {
        let q = TextQuery::parse("保本").unwrap();
        assert_eq!(q.terms, ["保本"]);
        assert!(q.matches("请问这个理财产品保本吗？"));
        assert!(!q.matches("保证本金")); // holds 保 and 本, not 保本
        let q = TextQuery::parse("capital Guaranteed").unwrap();
        assert!(q.matches("Is the capital guaranteed?"));
        assert!(!q.matches("Nothing about it"));
    }

    #[test]
    fn queries_with_nothing_to_search_or_too_long_are_refused() {
        assert_eq!(TextQuery::parse("?? !!"), Err(QueryError::NothingToSearch));
        assert_eq!(
            TextQuery::parse(&"保".repeat(201)),
            Err(QueryError::TooLong(200))
        );
        assert_eq!(
            TextQuery::parse("say \"x\"").unwrap().fts5(),
            "\"say\" AND \"x\""
        );
    }
}

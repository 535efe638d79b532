//! Searching conversations for review: a time range (required, both ends), who took
//! part, what the bot touched, how it ended, whether it was reviewed, and full text.
//!
//! A conversation matches when its activity (created … last message) overlaps the
//! range and every other filter given holds. Results come newest activity first, in
//! pages (`cursor` from the previous page's `next`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::text::TextQuery;
use crate::db::{Backend, Db};
use crate::error::{AppError, Result};
use crate::time_fmt::rfc3339;

/// The filters as the query string gives them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Start of the range: RFC 3339, or a date (`2026-11-01`, from its midnight UTC).
    pub from: Option<String>,
    /// End of the range (exclusive): RFC 3339, or a date (that whole day included).
    pub to: Option<String>,
    pub client: Option<String>,
    /// An advisor who took part (claimed, was transferred, wrote).
    pub advisor: Option<String>,
    /// A product the bot presented, checked or cited.
    pub product: Option<String>,
    /// The client's risk level the bot worked with (`C1`…`C5`).
    pub level: Option<String>,
    /// A guardrail rule that fired (`IN-…`, `OUT-…`).
    pub rule: Option<String>,
    /// A handoff reason (`client_request`, `complaint`, …).
    pub reason: Option<String>,
    /// `true` or `false`.
    pub reviewed: Option<String>,
    /// Full text, zh-CN or English: every word must occur in one message.
    pub q: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<u32>,
    /// `next` of the previous page.
    pub cursor: Option<String>,
}

/// The filters, checked.
#[derive(Debug, Clone)]
pub struct Search {
    pub from: i64,
    pub to: i64,
    pub client: Option<String>,
    pub advisor: Option<String>,
    pub product: Option<String>,
    pub level: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub reviewed: Option<bool>,
    pub text: Option<TextQuery>,
    pub limit: usize,
    pub cursor: Option<(i64, String)>,
}

const DAY_MS: i64 = 86_400_000;

/// Parses a range end: RFC 3339, or a date (`end` moves it to the next midnight).
fn instant(field: &str, text: &str, end: bool) -> Result<i64> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, &format).map_err(|_| {
        AppError::InvalidSearch(format!(
            "{field} {text:?} is not a date (2026-11-01) or an RFC 3339 time (2026-11-01T09:30:00Z)"
        ))
    })?;
    let ms = date.midnight().assume_utc().unix_timestamp() * 1000;
    Ok(if end { ms + DAY_MS } else { ms })
}

fn filter(field: &str, value: &Option<String>) -> Result<Option<String>> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.chars().count() > 200 => Err(AppError::InvalidSearch(format!(
            "{field} is longer than 200 characters"
        ))),
        Some(v) => Ok(Some(v.to_string())),
    }
}

/// A time range as the query string gives it: both ends required, the end after the
/// start. Searches, dashboards and the access log share it.
pub fn range(from: &Option<String>, to: &Option<String>) -> Result<(i64, i64)> {
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (instant("from", f, false)?, instant("to", t, true)?),
        (None, None) => {
            return Err(AppError::RangeUnbounded(
                "a time range is required: give both from and to".into(),
            ));
        }
        (None, _) => {
            return Err(AppError::RangeUnbounded(
                "the range has no start: give from as well as to".into(),
            ));
        }
        (_, None) => {
            return Err(AppError::RangeUnbounded(
                "the range has no end: give to as well as from".into(),
            ));
        }
    };
    if from >= to {
        return Err(AppError::RangeReversed(format!(
            "the range ends ({}) before it starts ({}): swap from and to",
            rfc3339(to),
            rfc3339(from)
        )));
    }
    Ok((from, to))
}

impl SearchParams {
    pub fn check(&self) -> Result<Search> {
        let (from, to) = range(&self.from, &self.to)?;
        let reviewed = match self.reviewed.as_deref() {
            None | Some("") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(AppError::InvalidSearch(format!(
                    "reviewed {other:?} is not true or false"
                )));
            }
        };
        let level = filter("level", &self.level)?;
        if let Some(l) = &level
            && !(l.len() == 2 && l.starts_with('C') && l.as_bytes()[1].is_ascii_digit())
        {
            return Err(AppError::InvalidSearch(format!(
                "level {l:?} is not a risk level (C1…C5)"
            )));
        }
        let text = match self.q.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(q) => {
                Some(TextQuery::parse(q).map_err(|e| AppError::InvalidSearch(format!("q: {e}")))?)
            }
        };
        let limit = match self.limit {
            None => 50,
            Some(n @ 1..=200) => n as usize,
            Some(n) => {
                return Err(AppError::InvalidSearch(format!(
                    "limit {n} is outside 1–200"
                )));
            }
        };
        let cursor = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(
                c.split_once('_')
                    .and_then(|(at, id)| Some((at.parse().ok()?, id.to_string())))
                    .ok_or_else(|| {
                        AppError::InvalidSearch(format!(
                            "cursor {c:?} is not one a previous page gave"
                        ))
                    })?,
            ),
        };
        Ok(Search {
            from,
            to,
            client: filter("client", &self.client)?,
            advisor: filter("advisor", &self.advisor)?,
            product: filter("product", &self.product)?,
            level,
            rule: filter("rule", &self.rule)?,
            reason: filter("reason", &self.reason)?,
            reviewed,
            text,
            limit,
            cursor,
        })
    }
}

/// A message that holds the text searched for.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TextHit {
    pub seq: i64,
    pub sender_role: String,
    pub text: String,
}

/// One conversation found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Found {
    pub id: String,
    pub client_id: String,
    pub client_name: String,
    pub language: String,
    pub mode: String,
    pub created_at: String,
    pub updated_at: String,
    pub messages: i64,
    pub advisors: Vec<String>,
    pub levels: Vec<String>,
    pub products: Vec<String>,
    pub rules: Vec<String>,
    pub handoff_reasons: Vec<String>,
    pub reviewed: bool,
    pub on_hold: bool,
    /// Messages holding the searched text (at most three), when `q` was given.
    pub hits: Vec<TextHit>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub conversations: Vec<Found>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next: Option<String>,
}

/// SQL under construction with its text parameters, numbered as they are added.
struct Sql {
    text: String,
    args: Vec<Arg>,
}

enum Arg {
    Text(String),
    Int(i64),
}

impl Sql {
    fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }
}

/// The ids (with their activity time) of the conversations matching every filter but
/// the text check, newest first, from `cursor` on.
async fn candidates(
    db: &Db,
    s: &Search,
    cursor: Option<&(i64, String)>,
    limit: usize,
) -> Result<Vec<(String, i64)>> {
    let mut q = Sql {
        text: String::from("SELECT c.id, c.updated_at FROM conversations c WHERE "),
        args: Vec::new(),
    };
    let to = q.arg(Arg::Int(s.to));
    let from = q.arg(Arg::Int(s.from));
    q.text
        .push_str(&format!("c.created_at < {to} AND c.updated_at >= {from}"));
    if let Some(client) = &s.client {
        let p = q.arg(Arg::Text(client.clone()));
        q.text.push_str(&format!(" AND c.client_id = {p}"));
    }
    if let Some(advisor) = &s.advisor {
        let p = q.arg(Arg::Text(advisor.clone()));
        q.text.push_str(&format!(
            " AND (EXISTS (SELECT 1 FROM handoff_events e WHERE e.conversation_id = c.id \
             AND e.actor_id = {p} AND e.actor_role = 'advisor') \
             OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.sender_id = {p}))"
        ));
    }
    for (kind, value) in [
        ("product", &s.product),
        ("level", &s.level),
        ("rule", &s.rule),
    ] {
        if let Some(v) = value {
            let p = q.arg(Arg::Text(v.clone()));
            q.text.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM turn_facts f WHERE f.conversation_id = c.id \
                 AND f.kind = '{kind}' AND f.value = {p})"
            ));
        }
    }
    if let Some(reason) = &s.reason {
        let p = q.arg(Arg::Text(reason.clone()));
        q.text.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM handoffs h WHERE h.conversation_id = c.id AND h.reason = {p})"
        ));
    }
    if let Some(reviewed) = s.reviewed {
        q.text
            .push_str(if reviewed { " AND " } else { " AND NOT " });
        q.text.push_str(
            "EXISTS (SELECT 1 FROM reviews r WHERE r.conversation_id = c.id AND r.reviewed = 1)",
        );
    }
    if let Some(text) = &s.text {
        match db.backend() {
            Backend::Sqlite => {
                let p = q.arg(Arg::Text(text.fts5()));
                q.text.push_str(&format!(
                    " AND c.id IN (SELECT conversation_id FROM search_text WHERE search_text MATCH {p})"
                ));
            }
            Backend::Postgres => {
                let p = q.arg(Arg::Text(text.terms.join(" ")));
                q.text.push_str(&format!(
                    " AND c.id IN (SELECT conversation_id FROM search_text \
                     WHERE terms @> string_to_array({p}, ' '))"
                ));
            }
        }
    }
    if let Some((at, id)) = cursor {
        let a = q.arg(Arg::Int(*at));
        let i = q.arg(Arg::Text(id.clone()));
        q.text.push_str(&format!(
            " AND (c.updated_at < {a} OR (c.updated_at = {a} AND c.id < {i}))"
        ));
    }
    let l = q.arg(Arg::Int(limit as i64));
    q.text
        .push_str(&format!(" ORDER BY c.updated_at DESC, c.id DESC LIMIT {l}"));
    let mut query = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(q.text));
    for a in q.args {
        query = match a {
            Arg::Text(t) => query.bind(t),
            Arg::Int(i) => query.bind(i),
        };
    }
    Ok(query.fetch_all(db.pool()).await?)
}

/// The messages of `conversation` that hold the searched text, checked as written.
async fn text_hits(db: &Db, conversation: &str, text: &TextQuery) -> Result<Vec<TextHit>> {
    let seqs: Vec<(i64,)> =
        match db.backend() {
            Backend::Sqlite => sqlx::query_as(
                "SELECT seq FROM search_text WHERE search_text MATCH $1 AND conversation_id = $2 \
             ORDER BY seq",
            )
            .bind(text.fts5())
            .bind(conversation)
            .fetch_all(db.pool())
            .await?,
            Backend::Postgres => {
                sqlx::query_as(
                    "SELECT seq FROM search_text WHERE conversation_id = $2 \
             AND terms @> string_to_array($1, ' ') ORDER BY seq",
                )
                .bind(text.terms.join(" "))
                .bind(conversation)
                .fetch_all(db.pool())
                .await?
            }
        };
    let mut hits = Vec::new();
    for (seq,) in seqs {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT sender_role, body FROM messages WHERE conversation_id = $1 AND seq = $2",
        )
        .bind(conversation)
        .bind(seq)
        .fetch_optional(db.pool())
        .await?;
        let Some((sender_role, body)) = row else {
            continue;
        };
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let message = super::text::message_text(&body);
        if text.matches(&message) {
            hits.push(TextHit {
                seq,
                sender_role,
                text: message,
            });
        }
    }
    Ok(hits)
}

/// Conversations matching `s`, one page, or (`all`) every one, each passed to `each`.
/// Returns the cursor of the next page.
pub async fn run(
    db: &Db,
    s: &Search,
    all: bool,
    each: &mut (dyn FnMut(String, Vec<TextHit>) -> Result<()> + Send),
) -> Result<Option<String>> {
    super::text::index_pending(db).await?;
    let mut cursor = s.cursor.clone();
    let mut taken = 0;
    loop {
        let batch = if all { 500 } else { s.limit + 1 - taken };
        let rows = candidates(db, s, cursor.as_ref(), batch).await?;
        let exhausted = rows.len() < batch;
        for (id, at) in rows {
            if !all && taken == s.limit {
                // One more matched: there is a next page, from the last one taken.
                return Ok(cursor.map(|(at, id)| format!("{at}_{id}")));
            }
            cursor = Some((at, id.clone()));
            let hits = match &s.text {
                Some(text) => {
                    let hits = text_hits(db, &id, text).await?;
                    if hits.is_empty() {
                        continue;
                    }
                    hits
                }
                None => Vec::new(),
            };
            taken += 1;
            each(id, hits)?;
        }
        if exhausted {
            return Ok(None);
        }
    }
}

/// The summary of one found conversation.
pub async fn describe(db: &Db, id: &str, mut hits: Vec<TextHit>) -> Result<Found> {
    let (client_id, client_name, language, mode, created_at, updated_at, messages): (
        String,
        String,
        String,
        String,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT c.client_id, COALESCE(p.display_name, c.client_id), c.language, c.mode, \
         c.created_at, c.updated_at, c.last_seq FROM conversations c \
         LEFT JOIN participants p ON p.id = c.client_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
    let strings = |sql: &'static str| {
        sqlx::query_scalar::<_, String>(sql)
            .bind(id.to_string())
            .fetch_all(db.pool())
    };
    let advisors = strings(
        "SELECT DISTINCT actor_id FROM handoff_events WHERE conversation_id = $1 \
         AND actor_role = 'advisor' ORDER BY actor_id",
    )
    .await?;
    let facts: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT kind, value FROM turn_facts WHERE conversation_id = $1 ORDER BY kind, value",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    let of = |kind: &str| -> Vec<String> {
        facts
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let handoff_reasons =
        strings("SELECT DISTINCT reason FROM handoffs WHERE conversation_id = $1 ORDER BY reason")
            .await?;
    let reviewed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM reviews WHERE conversation_id = $1 AND reviewed = 1",
    )
    .bind(id)
    .fetch_one(db.pool())
    .await?;
    let holds: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM legal_holds WHERE lifted_at IS NULL AND \
         ((scope = 'conversation' AND subject = $1) OR (scope = 'client' AND subject = $2))",
    )
    .bind(id)
    .bind(&client_id)
    .fetch_one(db.pool())
    .await?;
    hits.truncate(3);
    Ok(Found {
        id: id.to_string(),
        client_id,
        client_name,
        language,
        mode,
        created_at: rfc3339(created_at),
        updated_at: rfc3339(updated_at),
        messages,
        advisors,
        levels: of("level"),
        products: of("product"),
        rules: of("rule"),
        handoff_reasons,
        reviewed: reviewed > 0,
        on_hold: holds > 0,
        hits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<&str>, to: Option<&str>) -> SearchParams {
        SearchParams {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            ..SearchParams::default()
        }
    }

    #[test]
    fn ranges_must_be_bounded_and_in_order() {
        let code = |p: SearchParams| p.check().map(|_| ()).unwrap_err().code();
        assert_eq!(code(params(None, None)), "range_unbounded");
        assert_eq!(code(params(Some("2026-11-01"), None)), "range_unbounded");
        assert_eq!(
            code(params(Some("2026-11-02"), Some("2026-11-01"))),
            "range_reversed"
        );
        assert_eq!(
            code(params(Some("yesterday"), Some("2026-11-01"))),
            "invalid_search"
        );
        // A date as the end includes that whole day.
        let s = params(Some("2026-11-01"), Some("2026-11-01"))
            .check()
            .unwrap();
        assert_eq!(s.to - s.from, DAY_MS);
        let s = params(
            Some("2026-11-01T08:00:00Z"),
            Some("2026-11-01T18:00:00+08:00"),
        )
        .check()
        .unwrap();
        assert_eq!(s.to - s.from, 2 * 3_600_000);
        assert_eq!(
            params(
                Some("2026-11-01T08:00:00Z"),
                Some("2026-11-01T09:00:00+08:00")
            )
            .check()
            .unwrap_err()
            .code(),
            "range_reversed"
        );
    }

    #[test]
    fn malformed_filters_are_named() {
        let mut p = params(Some("2026-11-01"), Some("2026-11-02"));
        p.reviewed = Some("maybe".into());
        assert!(p.check().unwrap_err().to_string().contains("reviewed"));
        p.reviewed = None;
        p.level = Some("high".into());
        assert!(p.check().unwrap_err().to_string().contains("level"));
        p.level = None;
        p.q = Some("？！".into());
        assert!(p.check().unwrap_err().to_string().contains("q:"));
        p.q = None;
        p.limit = Some(0);
        assert!(p.check().unwrap_err().to_string().contains("limit"));
        p.limit = None;
        p.cursor = Some("x".into());
        assert!(p.check().unwrap_err().to_string().contains("cursor"));
    }
}

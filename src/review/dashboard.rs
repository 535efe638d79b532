//! Guardrail rule hits and handoffs over time, per rule and per reason, in hourly or
//! daily buckets (UTC).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::{AppError, Result};
use crate::time_fmt::rfc3339;

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DashboardParams {
    /// Start: RFC 3339 or a date.
    pub from: Option<String>,
    /// End (exclusive): RFC 3339 or a date (that whole day included).
    pub to: Option<String>,
    /// `day` (default) or `hour`.
    pub bucket: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Series {
    /// The rule or the handoff reason.
    pub key: String,
    pub total: i64,
    /// One count per bucket, in the order of `buckets`.
    pub counts: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    pub from: String,
    pub to: String,
    pub bucket: String,
    /// Each bucket's start.
    pub buckets: Vec<String>,
    /// Turns in which each rule fired.
    pub rule_hits: Vec<Series>,
    /// Handoffs requested, per reason.
    pub handoffs: Vec<Series>,
    pub conversations: i64,
    pub reviewed: i64,
}

const MAX_BUCKETS: i64 = 1000;

fn series(rows: Vec<(String, i64)>, from: i64, width: i64, n: usize) -> Vec<Series> {
    let mut by: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, at) in rows {
        let i = ((at - from) / width) as usize;
        if i < n {
            by.entry(key).or_insert_with(|| vec![0; n])[i] += 1;
        }
    }
    let mut out: Vec<Series> = by
        .into_iter()
        .map(|(key, counts)| Series {
            total: counts.iter().sum(),
            key,
            counts,
        })
        .collect();
    out.sort_by(|a, b| b.total.cmp(&a.total).then(a.key.cmp(&b.key)));
    out
}

pub async fn load(db: &Db, params: &DashboardParams) -> Result<Dashboard> {
    let (from, to) = super::search::range(&params.from, &params.to)?;
    let (bucket, width) = match params.bucket.as_deref().unwrap_or("day") {
        "day" => ("day", 86_400_000),
        "hour" => ("hour", 3_600_000),
        other => {
            return Err(AppError::InvalidSearch(format!(
                "bucket {other:?} is not day or hour"
            )));
        }
    };
    let from = from - from.rem_euclid(width);
    let n = (to - from + width - 1) / width;
    if n > MAX_BUCKETS {
        return Err(AppError::InvalidSearch(format!(
            "{n} {bucket}s is more than {MAX_BUCKETS} buckets: narrow the range or use day buckets"
        )));
    }
    let n = n as usize;
    // One hit per turn and rule (a rule firing on three sentences of a reply is one).
    let rules: Vec<(String, i64)> = sqlx::query_as(
        "SELECT value, at FROM turn_facts WHERE kind = 'rule' AND at >= $1 AND at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db.pool())
    .await?;
    let handoffs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, requested_at FROM handoffs WHERE requested_at >= $1 AND requested_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db.pool())
    .await?;
    let (conversations, reviewed): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM reviews r \
         WHERE r.conversation_id = c.id AND r.reviewed = 1) THEN 1 ELSE 0 END), 0) \
         FROM conversations c WHERE c.created_at < $1 AND c.updated_at >= $2",
    )
    .bind(to)
    .bind(from)
    .fetch_one(db.pool())
    .await?;
    Ok(Dashboard {
        from: rfc3339(from),
        to: rfc3339(to),
        bucket: bucket.to_string(),
        buckets: (0..n).map(|i| rfc3339(from + i as i64 * width)).collect(),
        rule_hits: series(rules, from, width, n),
        handoffs: series(handoffs, from, width, n),
        conversations,
        reviewed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_in_their_buckets_and_the_busiest_comes_first() {
        let rows = vec![
            ("A".to_string(), 0),
            ("B".to_string(), 5),
            ("B".to_string(), 15),
            ("B".to_string(), 35), // past the last bucket
        ];
        let s = series(rows, 0, 10, 3);
        assert_eq!(s[0].key, "B");
        assert_eq!(s[0].counts, [1, 1, 0]);
        assert_eq!(s[0].total, 2);
        assert_eq!(s[1].counts, [1, 0, 0]);
    }
}

//! Stored risk profiles. A new assessment supersedes the previous one (kept as history);
//! a profile is valid until it expires, then advice waits for a new assessment.

use serde::Serialize;
use time::OffsetDateTime;

use super::scoring::{Answer, Assessment};
use crate::db::{Db, DbError};
use crate::im::ConversationId;
use crate::suitability::ClientFacts;
use crate::time_fmt::{now_ms, rfc3339};

/// One assessment of a client, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RiskProfile {
    pub id: String,
    pub client_id: String,
    pub questionnaire_id: String,
    pub questionnaire_version: String,
    #[schema(value_type = Vec<Object>)]
    pub answers: Vec<Answer>,
    pub score: i64,
    pub level: String,
    pub max_product: String,
    /// Score level, overrides applied, the answers that drove the result, and the facts
    /// the suitability matcher uses (horizon, liquidity need, investable assets).
    #[schema(value_type = Object)]
    pub assessment: Assessment,
    pub conversation_id: Option<String>,
    /// RFC 3339.
    pub assessed_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, when a newer assessment replaced it.
    pub superseded_at: Option<String>,
    /// Not superseded and not expired.
    pub valid: bool,
    #[serde(skip)]
    pub expires_at_ms: i64,
}

impl RiskProfile {
    /// What the suitability matcher needs.
    pub fn facts(&self) -> ClientFacts {
        ClientFacts {
            level: self.level.clone(),
            max_product: self.max_product.clone(),
            horizon_months: self.assessment.horizon_months,
            liquidity_need: self.assessment.liquidity_need,
            investable_assets_max: self.assessment.investable_assets_max,
        }
    }
}

type ProfileRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);

const COLUMNS: &str = "id, client_id, questionnaire_id, questionnaire_version, answers, assessment, \
score, level, max_product, conversation_id, assessed_at, expires_at, superseded_at";

fn from_row(row: ProfileRow, now: i64) -> Result<RiskProfile, DbError> {
    let decode = |e: serde_json::Error| DbError::Query(sqlx::Error::Decode(Box::new(e)));
    let (
        id,
        client_id,
        qid,
        qver,
        answers,
        assessment,
        score,
        level,
        max_product,
        conv,
        at,
        exp,
        sup,
    ) = row;
    Ok(RiskProfile {
        id,
        client_id,
        questionnaire_id: qid,
        questionnaire_version: qver,
        answers: serde_json::from_str(&answers).map_err(decode)?,
        assessment: serde_json::from_str(&assessment).map_err(decode)?,
        score,
        level,
        max_product,
        conversation_id: conv,
        assessed_at: rfc3339(at),
        expires_at: rfc3339(exp),
        superseded_at: sup.map(rfc3339),
        valid: sup.is_none() && exp > now,
        expires_at_ms: exp,
    })
}

/// `ms` plus `months` calendar months (the day clamped to the month's length).
pub fn add_months(ms: i64, months: u32) -> i64 {
    let Ok(start) = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) else {
        return ms;
    };
    let total = start.month() as u32 - 1 + months;
    let year = start.year() + (total / 12) as i32;
    let month = time::Month::try_from((total % 12 + 1) as u8).expect("1..=12");
    let day = start.day().min(time::util::days_in_month(month, year));
    let date = time::Date::from_calendar_date(year, month, day).expect("clamped");
    (start.replace_date(date).unix_timestamp_nanos() / 1_000_000) as i64
}

/// Stores a completed assessment as the client's current profile, superseding the
/// previous one in the same transaction.
pub async fn save(
    db: &Db,
    client_id: &str,
    conversation: Option<ConversationId>,
    answers: &[Answer],
    assessment: &Assessment,
    validity_months: u32,
) -> Result<RiskProfile, DbError> {
    let now = now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let expires = add_months(now, validity_months);
    let mut tx = db.begin_write().await?;
    let superseded: Vec<String> = sqlx::query_scalar(
        "UPDATE risk_profiles SET superseded_at = $2 WHERE client_id = $1 AND superseded_at IS NULL \
         RETURNING id",
    )
    .bind(client_id)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let row = crate::archive::records::ProfileRow {
        id: id.clone(),
        client_id: client_id.to_string(),
        questionnaire_id: assessment.questionnaire_id.clone(),
        questionnaire_version: assessment.questionnaire_version.clone(),
        answers: serde_json::to_string(answers).expect("answers serialise"),
        assessment: serde_json::to_string(assessment).expect("assessments serialise"),
        score: assessment.score as i64,
        level: assessment.level.clone(),
        max_product: assessment.max_product.clone(),
        conversation_id: conversation.map(|c| c.to_string()),
        assessed_at: now,
        expires_at: expires,
        superseded_at: None,
    };
    sqlx::query(
        "INSERT INTO risk_profiles (id, client_id, questionnaire_id, questionnaire_version, answers, \
         assessment, score, level, max_product, conversation_id, assessed_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&row.id)
    .bind(&row.client_id)
    .bind(&row.questionnaire_id)
    .bind(&row.questionnaire_version)
    .bind(&row.answers)
    .bind(&row.assessment)
    .bind(row.score)
    .bind(&row.level)
    .bind(&row.max_product)
    .bind(&row.conversation_id)
    .bind(now)
    .bind(expires)
    .execute(&mut *tx)
    .await?;
    // The archive: each supersession, then the new profile.
    let mut entries: Vec<_> = superseded
        .iter()
        .map(|old| crate::archive::records::superseded(client_id, old, now))
        .collect();
    entries.push(row.record());
    entries.push(row.expiry());
    crate::archive::append(&mut tx, &entries).await?;
    tx.commit().await?;
    Ok(history(db, client_id)
        .await?
        .into_iter()
        .find(|p| p.id == id)
        .expect("just stored"))
}

/// Every profile of a client, newest first.
pub async fn history(db: &Db, client_id: &str) -> Result<Vec<RiskProfile>, DbError> {
    let rows: Vec<ProfileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM risk_profiles WHERE client_id = $1 ORDER BY assessed_at DESC, id DESC"
    )))
    .bind(client_id)
    .fetch_all(db.pool())
    .await?;
    let now = now_ms();
    rows.into_iter().map(|r| from_row(r, now)).collect()
}

/// The newest profile, valid or not.
pub async fn latest(db: &Db, client_id: &str) -> Result<Option<RiskProfile>, DbError> {
    Ok(history(db, client_id).await?.into_iter().next())
}

/// The profile advice may rely on: not superseded and not expired.
pub async fn current(db: &Db, client_id: &str) -> Result<Option<RiskProfile>, DbError> {
    Ok(latest(db, client_id).await?.filter(|p| p.valid))
}

/// Moves a profile's expiry (operations and tests: e.g. ending a profile early).
/// The change is archived like the assessment.
pub async fn set_expiry(db: &Db, profile_id: &str, expires_at_ms: i64) -> Result<(), DbError> {
    let mut tx = db.begin_write().await?;
    let client: Option<String> = sqlx::query_scalar(
        "UPDATE risk_profiles SET expires_at = $2 WHERE id = $1 RETURNING client_id",
    )
    .bind(profile_id)
    .bind(expires_at_ms)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(client) = client {
        let entry = crate::archive::records::expiry(&client, profile_id, expires_at_ms, now_ms());
        crate::archive::append(&mut tx, &[entry]).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months() {
        let jan31 = 1_706_659_200_000; // 2024-01-31T00:00:00Z
        assert_eq!(rfc3339(add_months(jan31, 1)), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(add_months(jan31, 24)), "2026-01-31T00:00:00Z");
        assert_eq!(rfc3339(add_months(jan31, 13)), "2025-02-28T00:00:00Z");
    }
}

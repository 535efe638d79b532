//! The append-only audit log. The database refuses UPDATE and DELETE on it (triggers
//! in the migrations), so an entry once written stays; each entry is also appended to
//! the archive's `access` chain ([`crate::archive`]).

use crate::auth::AuthUser;
use crate::db::{Db, DbError};
use crate::time_fmt::now_ms;

/// Records that `actor` did `action` on `subject` (e.g. `conversation:<id>`).
pub async fn record(
    db: &Db,
    actor: &AuthUser,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), DbError> {
    let mut row = crate::archive::records::AccessRow {
        id: 0,
        at: now_ms(),
        actor_id: actor.id.clone(),
        actor_role: actor.role.as_str().to_string(),
        action: action.to_string(),
        subject: Some(subject.to_string()),
        detail: detail.to_string(),
    };
    let mut tx = db.begin_write().await?;
    row.id = sqlx::query_scalar(
        "INSERT INTO audit_log (at, actor_id, actor_role, action, subject, detail) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(row.at)
    .bind(&row.actor_id)
    .bind(&row.actor_role)
    .bind(&row.action)
    .bind(&row.subject)
    .bind(&row.detail)
    .fetch_one(&mut *tx)
    .await?;
    crate::archive::append(&mut tx, &[row.record()]).await?;
    tx.commit().await?;
    Ok(())
}

/// One audit entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub actor_id: String,
    pub actor_role: String,
    pub action: String,
    pub subject: Option<String>,
}

/// Entries about `subject`, oldest first.
pub async fn entries_for(db: &Db, subject: &str) -> Result<Vec<AuditEntry>, DbError> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT actor_id, actor_role, action, subject FROM audit_log WHERE subject = $1 ORDER BY id",
    )
    .bind(subject)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(actor_id, actor_role, action, subject)| AuditEntry {
            actor_id,
            actor_role,
            action,
            subject,
        })
        .collect())
}

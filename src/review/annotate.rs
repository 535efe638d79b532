//! What compliance may add to a conversation: review notes (one may mark it reviewed)
//! and labels on guardrail decisions. Both are appended — never changed — in the
//! conversation's archive chain, so the transcript stays as it was and every
//! annotation is itself tamper-evident. Labels become cases of the guardrail
//! evaluation set ([`eval_cases`], `wealthdesk eval guardrails --labels`).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::archive::records::{
    LABEL_SELECT, LabelRow, REVIEW_SELECT, ReviewRow, TURN_SELECT, TurnRow,
};
use crate::auth::AuthUser;
use crate::db::{Db, DbError};
use crate::error::{AppError, Result};
use crate::guardrails::{Direction, Guard};
use crate::time_fmt::now_ms;

const MAX_NOTE_CHARS: usize = 2000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReview {
    /// What the reviewer found; required unless `reviewed` is true.
    #[serde(default)]
    pub note: String,
    /// Marks the conversation reviewed.
    #[serde(default)]
    pub reviewed: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLabel {
    /// The bot turn (a turn record id from the transcript).
    pub turn_id: String,
    /// The rule judged: one that fired in the turn, or (`missed`) one that should have.
    pub rule_id: String,
    /// correct, false_positive or missed.
    pub label: String,
    #[serde(default)]
    pub note: String,
}

fn check_note(note: &str) -> Result<String> {
    let note = note.trim();
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(AppError::Validation(format!(
            "the note is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    Ok(note.to_string())
}

pub async fn reviews(db: &Db, conversation: &str) -> Result<Vec<ReviewRow>, DbError> {
    let sql = format!("{REVIEW_SELECT} WHERE conversation_id = $1 ORDER BY id");
    Ok(sqlx::query_as::<_, ReviewRow>(sqlx::AssertSqlSafe(sql))
        .bind(conversation)
        .fetch_all(db.pool())
        .await?)
}

pub async fn labels(db: &Db, conversation: &str) -> Result<Vec<LabelRow>, DbError> {
    let sql = format!("{LABEL_SELECT} WHERE conversation_id = $1 ORDER BY id");
    Ok(sqlx::query_as::<_, LabelRow>(sqlx::AssertSqlSafe(sql))
        .bind(conversation)
        .fetch_all(db.pool())
        .await?)
}

/// Appends a review note.
pub async fn review(
    db: &Db,
    by: &AuthUser,
    conversation: &str,
    request: &NewReview,
) -> Result<ReviewRow> {
    let note = check_note(&request.note)?;
    if note.is_empty() && !request.reviewed {
        return Err(AppError::Validation(
            "a note is required unless the conversation is marked reviewed".into(),
        ));
    }
    let mut row = ReviewRow {
        id: 0,
        conversation_id: conversation.to_string(),
        actor_id: by.id.clone(),
        at: now_ms(),
        reviewed: i64::from(request.reviewed),
        note,
    };
    let mut tx = db.begin_write().await?;
    row.id = sqlx::query_scalar(
        "INSERT INTO reviews (conversation_id, actor_id, at, reviewed, note) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&row.conversation_id)
    .bind(&row.actor_id)
    .bind(row.at)
    .bind(row.reviewed)
    .bind(&row.note)
    .fetch_one(&mut *tx)
    .await?;
    crate::archive::append(&mut tx, &[row.record()]).await?;
    tx.commit().await?;
    Ok(row)
}

/// The text and context the rails judged in a turn, for one direction.
async fn judged(
    db: &Db,
    conversation: &str,
    turn: &TurnRow,
    direction: Direction,
) -> Result<(String, Value)> {
    let detail: Value = serde_json::from_str(&turn.detail).unwrap_or_default();
    match direction {
        Direction::Input | Direction::Advisor => {
            let body: Option<String> = sqlx::query_scalar(
                "SELECT body FROM messages WHERE conversation_id = $1 AND seq = $2",
            )
            .bind(conversation)
            .bind(turn.trigger_seq)
            .fetch_optional(db.pool())
            .await?;
            let body: Value = body
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or_default();
            Ok((super::text::message_text(&body), Value::Null))
        }
        Direction::Output => {
            let text = detail
                .pointer("/llm/raw_output")
                .or_else(|| detail.get("output"))
                .and_then(Value::as_str)
                .map(|t| t.trim().to_string())
                .ok_or_else(|| {
                    AppError::Validation(format!(
                        "turn {} wrote no reply for the output rails to judge",
                        turn.id
                    ))
                })?;
            let max_product: Option<String> = match detail.get("profile_id").and_then(Value::as_str)
            {
                Some(p) => {
                    sqlx::query_scalar("SELECT max_product FROM risk_profiles WHERE id = $1")
                        .bind(p)
                        .fetch_optional(db.pool())
                        .await?
                }
                None => None,
            };
            let sources: Vec<String> = detail
                .pointer("/retrieval/hits")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, h)| Some(format!("[{}] {}", i + 1, h.get("text")?.as_str()?)))
                .collect();
            let context = json!({
                "client_max_product": max_product,
                "sources": sources,
                "client_words": detail.get("input_redacted").and_then(Value::as_str).unwrap_or_default(),
            });
            Ok((text, context))
        }
    }
}

/// Appends a label on one guardrail decision of a turn.
pub async fn label(
    db: &Db,
    guard: &Guard,
    by: &AuthUser,
    conversation: &str,
    request: &NewLabel,
) -> Result<LabelRow> {
    let note = check_note(&request.note)?;
    if !["correct", "false_positive", "missed"].contains(&request.label.as_str()) {
        return Err(AppError::Validation(format!(
            "label {:?} is not correct, false_positive or missed",
            request.label
        )));
    }
    let sql = format!("{TURN_SELECT} WHERE conversation_id = $1 AND id = $2");
    let turn = sqlx::query_as::<_, TurnRow>(sqlx::AssertSqlSafe(sql))
        .bind(conversation)
        .bind(&request.turn_id)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| {
            AppError::TurnNotFound(format!(
                "conversation {conversation} has no bot turn {}",
                request.turn_id
            ))
        })?;
    let rule = guard
        .rules()
        .iter()
        .find(|r| r.id == request.rule_id)
        .ok_or_else(|| {
            AppError::Validation(format!(
                "rule {:?} is not a guardrail rule",
                request.rule_id
            ))
        })?;
    let detail: Value = serde_json::from_str(&turn.detail).unwrap_or_default();
    let fired = |key: &Value| {
        key.as_array()
            .into_iter()
            .flatten()
            .any(|d| d["rule"] == json!(rule.id))
    };
    let fired_input = detail.get("decisions").is_some_and(fired);
    let fired_output = detail.pointer("/guardrails/output").is_some_and(fired);
    let direction = match request.label.as_str() {
        "missed" => {
            if fired_input || fired_output {
                return Err(AppError::Validation(format!(
                    "{} fired in this turn: label it correct or false_positive, not missed",
                    rule.id
                )));
            }
            // Judge the reply when the rule checks replies, else the client's message.
            let output = rule.directions.contains(&Direction::Output)
                && (detail.get("output").is_some() || detail.pointer("/llm/raw_output").is_some());
            if output {
                Direction::Output
            } else if rule.directions.contains(&Direction::Input) {
                Direction::Input
            } else {
                return Err(AppError::Validation(format!(
                    "{} does not judge what this turn holds",
                    rule.id
                )));
            }
        }
        _ if fired_input => Direction::Input,
        _ if fired_output => Direction::Output,
        _ => {
            return Err(AppError::Validation(format!(
                "{} did not fire in turn {}: only a missed label fits",
                rule.id, turn.id
            )));
        }
    };
    let (text, context) = judged(db, conversation, &turn, direction).await?;
    let language: Option<String> =
        sqlx::query_scalar("SELECT language FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(db.pool())
            .await?;
    let mut row = LabelRow {
        id: 0,
        conversation_id: conversation.to_string(),
        turn_id: turn.id.clone(),
        rule_id: rule.id.clone(),
        label: request.label.clone(),
        direction: match direction {
            Direction::Output => "output",
            _ => "input",
        }
        .to_string(),
        language: language.unwrap_or_else(|| "zh-CN".into()),
        text,
        context: context.to_string(),
        note,
        actor_id: by.id.clone(),
        at: now_ms(),
    };
    let mut tx = db.begin_write().await?;
    row.id = sqlx::query_scalar(
        "INSERT INTO guardrail_labels (conversation_id, turn_id, rule_id, label, direction, \
         language, text, context, note, actor_id, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(&row.conversation_id)
    .bind(&row.turn_id)
    .bind(&row.rule_id)
    .bind(&row.label)
    .bind(&row.direction)
    .bind(&row.language)
    .bind(&row.text)
    .bind(&row.context)
    .bind(&row.note)
    .bind(&row.actor_id)
    .bind(row.at)
    .fetch_one(&mut *tx)
    .await?;
    crate::archive::append(&mut tx, &[row.record()]).await?;
    tx.commit().await?;
    Ok(row)
}

/// The labels as guardrail evaluation cases (the `knowledge/eval/guardrails.jsonl`
/// format): one case per judged text, expecting the rules that fired and were labelled
/// correct (or not labelled), plus those labelled missed, minus those labelled false
/// positives. The newest label on a rule wins.
pub async fn eval_cases(db: &Db) -> Result<Vec<crate::guardrails::eval::Case>, DbError> {
    let sql = format!("{LABEL_SELECT} ORDER BY id");
    let rows = sqlx::query_as::<_, LabelRow>(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await?;
    // Group by (turn, direction): one judged text (its first label row gives the text
    // and context), with each rule's newest verdict.
    type Verdicts = std::collections::BTreeMap<String, String>;
    let mut cases: std::collections::BTreeMap<(String, String), (LabelRow, Verdicts)> =
        std::collections::BTreeMap::new();
    for row in rows {
        let key = (row.turn_id.clone(), row.direction.clone());
        let (rule, label) = (row.rule_id.clone(), row.label.clone());
        cases
            .entry(key)
            .or_insert_with(|| (row, Verdicts::new()))
            .1
            .insert(rule, label);
    }
    let mut out = Vec::new();
    for ((turn_id, direction), (row, verdicts)) in cases {
        let detail: Option<String> =
            sqlx::query_scalar("SELECT detail FROM turn_records WHERE id = $1")
                .bind(&turn_id)
                .fetch_optional(db.pool())
                .await?;
        let detail: Value = detail
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_default();
        let list = match direction.as_str() {
            "input" => detail.get("decisions"),
            _ => detail.pointer("/guardrails/output"),
        };
        let mut expect: std::collections::BTreeSet<String> = list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d["rule"].as_str().map(str::to_string))
            .collect();
        for (rule, label) in &verdicts {
            match label.as_str() {
                "false_positive" => {
                    expect.remove(rule);
                }
                _ => {
                    expect.insert(rule.clone());
                }
            }
        }
        let context: Value = serde_json::from_str(&row.context).unwrap_or_default();
        let context = (direction == "output").then(|| crate::guardrails::eval::CaseContext {
            client_max_product: context["client_max_product"].as_str().map(str::to_string),
            sources: context["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            client_words: context["client_words"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        });
        out.push(crate::guardrails::eval::Case {
            id: format!("label-{}-{direction}", turn_id),
            direction,
            lang: row.language,
            text: row.text,
            expect: expect.into_iter().collect(),
            context,
            note: Some(format!("labelled in review: {}", row.note)),
        });
    }
    Ok(out)
}

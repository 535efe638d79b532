//! A conversation as compliance reviews it: every message with who wrote it (client,
//! bot, advisor, system) and what it carried (risk disclosures, refusals, handoffs),
//! the bot's turns with the rules that fired, the ownership history, the review notes
//! and labels — and, for any bot turn, its replay: exactly what the bot saw and did.

use serde::Serialize;
use serde_json::{Value, json};

use super::search::{Found, describe};
use crate::archive::records::{
    HANDOFF_EVENT_SELECT, HandoffEventRow, LabelRow, ReviewRow, TURN_SELECT, TurnRow,
};
use crate::db::Db;
use crate::error::{AppError, Result};
use crate::time_fmt::rfc3339;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub seq: i64,
    pub sender_id: String,
    /// client, bot, advisor or system.
    pub sender_role: String,
    pub kind: String,
    pub at: String,
    pub text: String,
    /// What the message carried: `risk_disclosure`, `refusal`, `handoff`, `products`,
    /// `question`.
    pub marks: Vec<String>,
    #[schema(value_type = Object)]
    pub body: Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TurnView {
    pub id: String,
    pub trigger_seq: i64,
    pub kind: String,
    pub at: String,
    /// Guardrail decisions recorded in the turn: `{rule, action, span, direction}`.
    #[schema(value_type = Vec<Object>)]
    pub decisions: Vec<Value>,
    /// The rule that refused the message or the reply, if one did.
    pub blocked: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub at: String,
    pub actor_id: String,
    pub actor_role: String,
    pub event: String,
    #[schema(value_type = Object)]
    pub detail: Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Transcript {
    pub conversation: Found,
    pub messages: Vec<MessageView>,
    pub turns: Vec<TurnView>,
    pub handoff_events: Vec<EventView>,
    pub reviews: Vec<ReviewRow>,
    pub labels: Vec<LabelRow>,
}

fn marks(kind: &str, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let has = |key: &str| {
        body.get(key)
            .is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!({}))
    };
    if has("disclosures") || kind == "product" || kind == "assessment" {
        out.push("risk_disclosure".to_string());
    }
    if kind == "refusal" || body.get("guardrail").is_some_and(|g| !g.is_null()) {
        out.push("refusal".to_string());
    }
    if kind == "handoff" {
        out.push("handoff".to_string());
    }
    if has("products") {
        out.push("products".to_string());
    }
    if kind == "question" {
        out.push("question".to_string());
    }
    out
}

/// The guardrail decisions a turn record holds, each with the rails it came from.
fn decisions(detail: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |list: Option<&Value>, direction: &str| {
        for d in list.and_then(Value::as_array).into_iter().flatten() {
            let mut d = d.clone();
            d["direction"] = json!(direction);
            out.push(d);
        }
    };
    push(detail.get("decisions"), "input");
    push(detail.pointer("/guardrails/output"), "output");
    out
}

/// `(seq, sender_id, sender_role, kind, body, created_at)` of `messages`.
type MessageRow = (i64, String, String, String, String, i64);

fn message_view((seq, sender_id, sender_role, kind, body, at): MessageRow) -> MessageView {
    let body = parse(&body);
    MessageView {
        seq,
        text: super::text::message_text(&body),
        marks: marks(&kind, &body),
        sender_id,
        sender_role,
        kind,
        at: rfc3339(at),
        body,
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

async fn turns(db: &Db, conversation: &str) -> Result<Vec<TurnRow>> {
    let sql = format!("{TURN_SELECT} WHERE conversation_id = $1 ORDER BY created_at, id");
    Ok(sqlx::query_as::<_, TurnRow>(sqlx::AssertSqlSafe(sql))
        .bind(conversation)
        .fetch_all(db.pool())
        .await?)
}

pub async fn load(db: &Db, conversation: &str) -> Result<Transcript> {
    let found = describe(db, conversation, Vec::new()).await?;
    let rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT seq, sender_id, sender_role, kind, body, created_at FROM messages \
         WHERE conversation_id = $1 ORDER BY seq",
    )
    .bind(conversation)
    .fetch_all(db.pool())
    .await?;
    let messages = rows.into_iter().map(message_view).collect();
    let turns = turns(db, conversation)
        .await?
        .into_iter()
        .map(|t| {
            let detail = parse(&t.detail);
            TurnView {
                decisions: decisions(&detail),
                blocked: detail
                    .pointer("/guardrails/blocked")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                id: t.id,
                trigger_seq: t.trigger_seq,
                kind: t.kind,
                at: rfc3339(t.created_at),
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
            }
        })
        .collect();
    let sql = format!("{HANDOFF_EVENT_SELECT} WHERE conversation_id = $1 ORDER BY id");
    let handoff_events = sqlx::query_as::<_, HandoffEventRow>(sqlx::AssertSqlSafe(sql))
        .bind(conversation)
        .fetch_all(db.pool())
        .await?
        .into_iter()
        .map(|e| EventView {
            at: rfc3339(e.at),
            actor_id: e.actor_id,
            actor_role: e.actor_role,
            event: e.event,
            detail: parse(&e.detail),
        })
        .collect();
    Ok(Transcript {
        conversation: found,
        messages,
        turns,
        handoff_events,
        reviews: super::annotate::reviews(db, conversation).await?,
        labels: super::annotate::labels(db, conversation).await?,
    })
}

/// A retrieved chunk as the bot was given it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayChunk {
    pub chunk_id: String,
    pub doc_id: String,
    pub section: String,
    pub version_hash: String,
    pub score: f64,
    /// The chunk's text, as recorded with the turn (or, for turns recorded before
    /// chunk text was kept, the indexed text of that same version).
    pub text: Option<String>,
    /// `recorded`, `same_version` or `unavailable`.
    pub text_source: String,
}

/// Exactly what the bot saw and did in one turn, in order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Replay {
    pub turn_id: String,
    pub conversation_id: String,
    pub trigger_seq: i64,
    pub kind: String,
    pub at: String,
    /// The client's message as sent.
    pub input: Option<String>,
    /// The message as everything after the input rails saw it (identifiers masked).
    pub input_redacted: Option<String>,
    /// Input rails, then output rails: `{rule, action, span, direction}`.
    #[schema(value_type = Vec<Object>)]
    pub guardrails: Vec<Value>,
    #[schema(value_type = Object)]
    pub retrieval: Value,
    pub chunks: Vec<ReplayChunk>,
    /// Prompt ids and hashes.
    #[schema(value_type = Object)]
    pub prompts: Value,
    /// The messages sent to the model, as sent.
    #[schema(value_type = Object)]
    pub prompt_sent: Value,
    pub model: Option<String>,
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub raw_output: Option<String>,
    /// Why the model gave nothing usable, if it did not.
    #[schema(value_type = Object)]
    pub failure: Value,
    pub blocked: Option<String>,
    /// The reply as the client received it.
    pub output: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub citations: Value,
    /// The bot's messages that answered the trigger.
    pub replies: Vec<MessageView>,
    /// Every record of the turn (same trigger), in order, as stored.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
}

pub async fn replay(db: &Db, conversation: &str, turn_id: &str) -> Result<Replay> {
    let all = turns(db, conversation).await?;
    let turn = all
        .iter()
        .find(|t| t.id == turn_id)
        .ok_or_else(|| {
            AppError::TurnNotFound(format!(
                "conversation {conversation} has no bot turn {turn_id}"
            ))
        })?
        .clone();
    let detail = parse(&turn.detail);
    let steps: Vec<&TurnRow> = all
        .iter()
        .filter(|t| t.trigger_seq == turn.trigger_seq)
        .collect();
    let step_details: Vec<Value> = steps.iter().map(|t| parse(&t.detail)).collect();
    // The input rails ran once for the trigger; their record is a sibling step.
    let mut guardrails: Vec<Value> = step_details
        .iter()
        .flat_map(|d| {
            decisions(d)
                .into_iter()
                .filter(|x| x["direction"] == "input")
        })
        .collect();
    guardrails.extend(
        decisions(&detail)
            .into_iter()
            .filter(|x| x["direction"] == "output"),
    );
    guardrails.dedup();
    let redacted = detail
        .get("input_redacted")
        .or_else(|| step_details.iter().find_map(|d| d.get("input_redacted")))
        .and_then(Value::as_str)
        .map(str::to_string);
    let trigger: Option<(String,)> =
        sqlx::query_as("SELECT body FROM messages WHERE conversation_id = $1 AND seq = $2")
            .bind(conversation)
            .bind(turn.trigger_seq)
            .fetch_optional(db.pool())
            .await?;
    let input = trigger.map(|(b,)| super::text::message_text(&parse(&b)));
    let mut chunks = Vec::new();
    for hit in detail
        .pointer("/retrieval/hits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| hit.get(k).and_then(Value::as_str).unwrap_or_default();
        let (text, source) = match hit.get("text").and_then(Value::as_str) {
            Some(t) => (Some(t.to_string()), "recorded"),
            None => {
                let same: Option<String> = sqlx::query_scalar(
                    "SELECT text FROM knowledge_chunks WHERE chunk_id = $1 AND version_hash = $2",
                )
                .bind(s("chunk_id"))
                .bind(s("version_hash"))
                .fetch_optional(db.pool())
                .await?;
                match same {
                    Some(t) => (Some(t), "same_version"),
                    None => (None, "unavailable"),
                }
            }
        };
        chunks.push(ReplayChunk {
            chunk_id: s("chunk_id").to_string(),
            doc_id: s("doc_id").to_string(),
            section: s("section").to_string(),
            version_hash: s("version_hash").to_string(),
            score: hit.get("score").and_then(Value::as_f64).unwrap_or_default(),
            text,
            text_source: source.to_string(),
        });
    }
    let mut retrieval = detail.get("retrieval").cloned().unwrap_or(Value::Null);
    if let Some(r) = retrieval.as_object_mut() {
        r.remove("hits");
    }
    // The bot's replies: its messages after the trigger, before the next client message.
    let rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT seq, sender_id, sender_role, kind, body, created_at FROM messages \
         WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT 20",
    )
    .bind(conversation)
    .bind(turn.trigger_seq)
    .fetch_all(db.pool())
    .await?;
    let replies = rows
        .into_iter()
        .take_while(|r| r.2 != "client")
        .filter(|r| r.2 == "bot")
        .map(message_view)
        .collect();
    let llm = detail.get("llm").unwrap_or(&detail);
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    Ok(Replay {
        turn_id: turn.id.clone(),
        conversation_id: conversation.to_string(),
        trigger_seq: turn.trigger_seq,
        kind: turn.kind.clone(),
        at: rfc3339(turn.created_at),
        input,
        input_redacted: redacted,
        guardrails,
        retrieval,
        chunks,
        prompts: llm
            .get("prompts")
            .or_else(|| llm.get("prompt"))
            .cloned()
            .unwrap_or(Value::Null),
        prompt_sent: field(llm, "prompt_sent"),
        model: llm.get("model").and_then(Value::as_str).map(str::to_string),
        parameters: field(llm, "parameters"),
        raw_output: llm
            .get("raw_output")
            .and_then(Value::as_str)
            .map(str::to_string),
        failure: field(llm, "failure"),
        blocked: detail
            .pointer("/guardrails/blocked")
            .and_then(Value::as_str)
            .map(str::to_string),
        output: detail
            .get("output")
            .and_then(Value::as_str)
            .map(str::to_string),
        citations: field(&detail, "citations"),
        replies,
        steps: steps
            .iter()
            .zip(step_details)
            .map(|(t, d)| json!({ "id": t.id, "kind": t.kind, "at": rfc3339(t.created_at), "detail": d }))
            .collect(),
    })
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The transcript as a printable HTML page: every message in order with its author,
/// risk disclosures and handoffs marked, the ownership history, the guardrail hits and
/// the review notes, and the chain head that fixes its content.
pub fn html(t: &Transcript, chain_head: Option<(i64, String)>, printed_by: &str) -> String {
    let c = &t.conversation;
    let mut out = String::new();
    out.push_str(&format!(
        "<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <title>Transcript {id}</title><style>{STYLE}</style></head><body>\n\
         <header><h1>Conversation transcript</h1><dl>\
         <dt>Conversation</dt><dd>{id}</dd><dt>Client</dt><dd>{name} ({client})</dd>\
         <dt>Language</dt><dd>{lang}</dd><dt>Started</dt><dd>{created}</dd>\
         <dt>Last activity</dt><dd>{updated}</dd><dt>Status</dt><dd>{mode}</dd>\
         <dt>Risk level</dt><dd>{levels}</dd><dt>Advisors</dt><dd>{advisors}</dd>\
         <dt>Reviewed</dt><dd>{reviewed}</dd><dt>Legal hold</dt><dd>{hold}</dd></dl></header>\n",
        lang = escape(&c.language),
        id = escape(&c.id),
        name = escape(&c.client_name),
        client = escape(&c.client_id),
        created = escape(&c.created_at),
        updated = escape(&c.updated_at),
        mode = escape(&c.mode),
        levels = escape(&c.levels.join(", ")),
        advisors = escape(&c.advisors.join(", ")),
        reviewed = if c.reviewed { "yes" } else { "no" },
        hold = if c.on_hold { "yes" } else { "no" },
    ));
    out.push_str("<main><h2>Messages</h2><ol class=\"messages\">\n");
    for m in &t.messages {
        let classes: Vec<String> = std::iter::once(format!("from-{}", m.sender_role))
            .chain(m.marks.iter().map(|k| format!("mark-{k}")))
            .collect();
        out.push_str(&format!(
            "<li class=\"{}\"><div class=\"meta\">#{} · {} · {} ({})</div>",
            classes.join(" "),
            m.seq,
            escape(&m.at),
            escape(&m.sender_role),
            escape(&m.sender_id)
        ));
        for mark in &m.marks {
            let label = match mark.as_str() {
                "risk_disclosure" => "RISK DISCLOSURE",
                "refusal" => "REFUSED BY GUARDRAIL",
                "handoff" => "HANDOFF",
                "products" => "PRODUCTS PRESENTED",
                "question" => "QUESTIONNAIRE",
                other => other,
            };
            out.push_str(&format!("<span class=\"tag\">{label}</span>"));
        }
        out.push_str(&format!("<p>{}</p></li>\n", escape(&m.text)));
    }
    out.push_str("</ol>\n<h2>Handoffs</h2><ul>\n");
    for e in &t.handoff_events {
        out.push_str(&format!(
            "<li class=\"handoff\">{} · {} by {} ({})</li>\n",
            escape(&e.at),
            escape(&e.event),
            escape(&e.actor_id),
            escape(&e.actor_role)
        ));
    }
    out.push_str("</ul>\n<h2>Guardrail decisions</h2><ul>\n");
    for turn in &t.turns {
        for d in &turn.decisions {
            out.push_str(&format!(
                "<li>message #{} · {} · {} {} — “{}”</li>\n",
                turn.trigger_seq,
                escape(d["direction"].as_str().unwrap_or_default()),
                escape(d["rule"].as_str().unwrap_or_default()),
                escape(&d["action"].to_string().replace('"', "")),
                escape(d["span"].as_str().unwrap_or_default())
            ));
        }
    }
    out.push_str("</ul>\n<h2>Review notes</h2><ul>\n");
    for r in &t.reviews {
        out.push_str(&format!(
            "<li>{} · {}{} — {}</li>\n",
            escape(&rfc3339(r.at)),
            escape(&r.actor_id),
            if r.reviewed == 1 {
                " (marked reviewed)"
            } else {
                ""
            },
            escape(&r.note)
        ));
    }
    out.push_str("</ul></main>\n<footer>");
    if let Some((length, head)) = chain_head {
        out.push_str(&format!(
            "<p>Archive chain conversation:{} — {length} entries, head {}</p>",
            escape(&c.id),
            escape(&head)
        ));
    }
    out.push_str(&format!(
        "<p>Printed {} by {}. Verify with <code>wealthdesk archive verify --conversation {}</code>.</p>\
         </footer></body></html>\n",
        escape(&rfc3339(crate::time_fmt::now_ms())),
        escape(printed_by),
        escape(&c.id)
    ));
    out
}

const STYLE: &str = "body{font:14px/1.5 system-ui,'Noto Sans CJK SC',sans-serif;color:#111;max-width:52rem;margin:2rem auto;padding:0 1rem}\
h1{font-size:1.4rem}h2{font-size:1.1rem;border-bottom:1px solid #999;margin-top:2rem}\
dl{display:grid;grid-template-columns:9rem 1fr;gap:.2rem .8rem}dt{font-weight:600}dd{margin:0}\
ol.messages{list-style:none;padding:0}ol.messages li{border:1px solid #ccc;border-radius:6px;padding:.5rem .8rem;margin:.5rem 0;break-inside:avoid}\
.meta{color:#555;font-size:.85rem}.from-client{background:#f4f8ff}.from-advisor{background:#f3fbf3}.from-system{background:#f6f6f6}\
.tag{display:inline-block;font-size:.75rem;font-weight:700;border:1px solid #333;border-radius:3px;padding:0 .3rem;margin-right:.3rem}\
.mark-risk_disclosure{border-left:5px solid #b45309}.mark-handoff{border-left:5px solid #1d4ed8}.mark-refusal{border-left:5px solid #b91c1c}\
p{white-space:pre-wrap;margin:.3rem 0}footer{margin-top:2rem;font-size:.8rem;color:#444}\
@media print{body{margin:0;max-width:none}a{color:inherit}}";

//! The handoff packet: everything an advisor needs at a glance when they take a
//! conversation — the transcript, the client's risk profile, the products shown and the
//! sources cited, the guardrails' hits, why the bot handed over, and a summary (written
//! by the LLM when one is configured, extractive otherwise).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use super::store;
use super::{Priority, reason_label};
use crate::db::{Db, DbError};
use crate::guardrails::Guard;
use crate::im::{ConversationId, Language, Message};
use crate::llm::{ChatMessage, ChatRole, PromptKind, Writer};
use crate::questionnaire::definition::Pack;
use crate::time_fmt::{now_ms, rfc3339};

/// Messages of the transcript the summary reads (the newest).
const SUMMARY_MESSAGES: usize = 40;
/// Messages a packet carries at most (the console pages the rest from the API).
const PACKET_MESSAGES: i64 = 500;

/// Writes handoff summaries. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Summarizer {
    pub writer: Writer,
    pub guard: Guard,
    pub pack: Arc<Pack>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Packet {
    pub conversation_id: ConversationId,
    #[schema(value_type = Object)]
    pub client: Value,
    pub reason: Option<String>,
    pub reason_label: Option<String>,
    pub priority: Option<&'static str>,
    pub requested_at: Option<String>,
    pub waited_secs: Option<i64>,
    #[schema(value_type = Object)]
    pub summary: Value,
    #[schema(value_type = Option<Object>)]
    pub profile: Option<Value>,
    #[schema(value_type = Vec<Object>)]
    pub products: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub citations: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub guardrails: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub notes: Vec<Value>,
    pub transcript: Vec<Message>,
}

impl Summarizer {
    /// Writes the summary of handoff `id` and stores it with the handoff. With an LLM the
    /// model summarises the redacted transcript; without one, when it fails, or when the
    /// handoff is because the model is down, the summary is extractive.
    pub async fn prepare(
        &self,
        db: &Db,
        id: &str,
        conversation: ConversationId,
        reason: &str,
    ) -> anyhow::Result<()> {
        let Some(c) = crate::im::store::get_conversation(db, conversation).await? else {
            return Ok(());
        };
        let messages = transcript(db, conversation).await?;
        let profile = crate::questionnaire::profile::latest(db, &c.client_id).await?;
        let level = profile
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| p.level.clone());
        let (text, source) = match self.with_llm(&messages, reason, &level, c.language).await {
            Some(text) => (text, "llm"),
            None => (
                self.extractive(&messages, reason, profile.as_ref(), c.language),
                "extractive",
            ),
        };
        db.write(
            sqlx::query("UPDATE handoffs SET summary = $2, summary_source = $3 WHERE id = $1")
                .bind(id)
                .bind(text)
                .bind(source),
        )
        .await?;
        Ok(())
    }

    async fn with_llm(
        &self,
        messages: &[Message],
        reason: &str,
        level: &str,
        language: Language,
    ) -> Option<String> {
        // A model that just failed the client would keep the advisor waiting too.
        if reason == "llm_unavailable" {
            return None;
        }
        let llm = self.writer.llm.as_ref()?;
        let transcript = self.plain_transcript(messages, language);
        let prompt = self
            .writer
            .prompts
            .get(PromptKind::HandoffSummary, language)
            .render(&[
                ("reason", &reason_label(reason, language)),
                ("client_level", level),
                ("transcript", &transcript),
            ]);
        let sent = [ChatMessage {
            role: ChatRole::User,
            content: prompt.text,
        }];
        match llm.stream(&sent, &mut |_| {}).await {
            Ok(c) if !c.text.trim().is_empty() => Some(c.text.trim().to_string()),
            Ok(_) => None,
            Err(f) => {
                tracing::warn!(failure = ?f.failure, "the handoff summary falls back to extractive");
                None
            }
        }
    }

    /// The newest messages as `role: text` lines, clients' words through the input
    /// rails' redaction (no identifier reaches a model).
    fn plain_transcript(&self, messages: &[Message], language: Language) -> String {
        let start = messages.len().saturating_sub(SUMMARY_MESSAGES);
        messages[start..]
            .iter()
            .map(|m| {
                let text = body_text(m);
                let text = if m.sender.role == "client" {
                    self.guard.input(&text, language).redacted
                } else {
                    text
                };
                format!("{}: {}", m.sender.role, text.replace('\n', " "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Bullet points from the record itself: the reason, the profile, what the client
    /// said most recently, the products discussed.
    fn extractive(
        &self,
        messages: &[Message],
        reason: &str,
        profile: Option<&crate::questionnaire::profile::RiskProfile>,
        language: Language,
    ) -> String {
        let zh = language == Language::ZhCn;
        let mut lines = vec![format!(
            "• {}{}",
            if zh { "转人工原因：" } else { "Reason: " },
            reason_label(reason, language)
        )];
        lines.push(match profile {
            Some(p) => {
                let name = self
                    .pack
                    .levels
                    .iter()
                    .find(|l| l.id == p.level)
                    .map(|l| l.name.get(language).to_string())
                    .unwrap_or_default();
                let validity = match (p.valid, zh) {
                    (true, true) => format!("有效至 {}", &p.expires_at[..10]),
                    (true, false) => format!("valid until {}", &p.expires_at[..10]),
                    (false, true) => "已失效".to_string(),
                    (false, false) => "no longer valid".to_string(),
                };
                if zh {
                    format!(
                        "• 风险等级：{} {}（可投资至 {}，{}）",
                        p.level, name, p.max_product, validity
                    )
                } else {
                    format!(
                        "• Risk level: {} {} (products up to {}, {})",
                        p.level, name, p.max_product, validity
                    )
                }
            }
            None => {
                if zh {
                    "• 客户尚未完成风险评估".to_string()
                } else {
                    "• The client has not been assessed yet".to_string()
                }
            }
        });
        let asked: Vec<String> = messages
            .iter()
            .rev()
            .filter(|m| m.sender.role == "client" && m.body.get("answer").is_none())
            .take(3)
            .map(|m| {
                let text = self.guard.input(&body_text(m), language).redacted;
                let short: String = text.chars().take(120).collect();
                if short.chars().count() < text.chars().count() {
                    format!("{short}…")
                } else {
                    short
                }
            })
            .collect();
        if !asked.is_empty() {
            let quoted: Vec<String> = asked.iter().rev().map(|t| format!("“{t}”")).collect();
            lines.push(format!(
                "• {}{}",
                if zh {
                    "客户最近说："
                } else {
                    "The client said most recently: "
                },
                quoted.join(if zh { "；" } else { "; " })
            ));
        }
        let products = products_shown(messages);
        if !products.is_empty() {
            let names: Vec<String> = products
                .iter()
                .map(|p| {
                    format!(
                        "{} ({})",
                        p["name"].as_str().unwrap_or_default(),
                        p["risk_level"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            lines.push(format!(
                "• {}{}",
                if zh {
                    "已展示的产品："
                } else {
                    "Products shown: "
                },
                names.join(", ")
            ));
        }
        lines.join("\n")
    }
}

fn body_text(m: &Message) -> String {
    m.body
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn transcript(db: &Db, conversation: ConversationId) -> Result<Vec<Message>, DbError> {
    let last = crate::im::store::last_seqs(db, &[conversation])
        .await?
        .first()
        .map_or(0, |(_, seq)| *seq);
    let from = (last - PACKET_MESSAGES).max(0);
    crate::im::store::list_messages(db, conversation, from, PACKET_MESSAGES).await
}

/// Products the bot presented (product enquiries and recommendations), once each.
fn products_shown(messages: &[Message]) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in messages.iter().filter(|m| m.sender.role == "bot") {
        let mut found: Vec<&Value> = Vec::new();
        if let Some(p) = m.body.get("product") {
            found.push(p);
        }
        if let Some(Value::Array(list)) = m.body.get("products") {
            found.extend(list.iter());
        }
        for p in found {
            let id = p["id"].as_str().unwrap_or_default().to_string();
            if !id.is_empty() && seen.insert(id.clone()) {
                out.push(json!({
                    "product_id": id,
                    "name": p["name"],
                    "risk_level": p["risk_level"],
                    "seq": m.seq,
                }));
            }
        }
    }
    out
}

/// Sources the bot cited, once per document version.
fn citations(messages: &[Message]) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in messages.iter().filter(|m| m.sender.role == "bot") {
        let Some(Value::Array(list)) = m.body.get("citations") else {
            continue;
        };
        for c in list {
            let key = format!("{}@{}", c["doc_id"], c["version_hash"]);
            if seen.insert(key) {
                out.push(json!({
                    "doc_id": c["doc_id"],
                    "title": c["title"],
                    "section": c["section"],
                    "version_hash": c["version_hash"],
                    "seq": m.seq,
                }));
            }
        }
    }
    out
}

/// Every guardrail decision recorded in the conversation's turns.
async fn guardrail_hits(db: &Db, conversation: ConversationId) -> Result<Vec<Value>, DbError> {
    let mut out = Vec::new();
    for (seq, kind, detail) in crate::conversation::session::turns(db, conversation).await? {
        let (direction, decisions) = match kind.as_str() {
            "guardrails.input" => ("input", detail.get("decisions")),
            "advisor.flagged" => ("advisor", detail.get("guardrails")),
            _ => ("output", detail.pointer("/guardrails/output")),
        };
        let Some(Value::Array(decisions)) = decisions else {
            continue;
        };
        for d in decisions {
            out.push(json!({
                "seq": seq,
                "rule": d["rule"],
                "action": d["action"],
                "direction": direction,
            }));
        }
    }
    Ok(out)
}

/// The packet of a conversation for advisors.
pub async fn build(
    summaries: &Summarizer,
    db: &Db,
    conversation: ConversationId,
) -> anyhow::Result<Option<Packet>> {
    let pack = &summaries.pack;
    let Some(c) = crate::im::store::get_conversation(db, conversation).await? else {
        return Ok(None);
    };
    let mut conn = db.pool().acquire().await?;
    let handoff = store::latest_handoff(&mut conn, conversation).await?;
    let client_name: Option<String> =
        sqlx::query_scalar("SELECT display_name FROM participants WHERE id = $1")
            .bind(&c.client_id)
            .fetch_optional(&mut *conn)
            .await?;
    let events: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT at, event, actor_id, actor_role, detail FROM handoff_events \
         WHERE conversation_id = $1 ORDER BY id",
    )
    .bind(conversation.to_string())
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    let events: Vec<Value> = events
        .into_iter()
        .map(|(at, event, actor_id, actor_role, detail)| {
            json!({
                "at": rfc3339(at),
                "event": event,
                "actor_id": actor_id,
                "actor_role": actor_role,
                "detail": serde_json::from_str::<Value>(&detail).unwrap_or_default(),
            })
        })
        .collect();
    let notes: Vec<Value> = events
        .iter()
        .filter_map(|e| {
            let note = e["detail"]["note"]
                .as_str()
                .filter(|n| !n.trim().is_empty())?;
            Some(json!({ "at": e["at"], "from": e["actor_id"], "event": e["event"], "text": note }))
        })
        .collect();
    let messages = transcript(db, conversation).await?;
    let assessed = crate::questionnaire::profile::latest(db, &c.client_id).await?;
    let profile = assessed.as_ref().map(|p| {
        let level = pack.levels.iter().find(|l| l.id == p.level);
        let answers: Vec<Value> = p
            .answers
            .iter()
            .map(|a| {
                let question = pack.questions.iter().find(|q| q.id == a.question_id);
                let option = question.and_then(|q| q.options.iter().find(|o| o.id == a.option_id));
                json!({
                    "question_id": a.question_id,
                    "question": question.map(|q| q.text.get(c.language)),
                    "answer": option.map(|o| o.label.get(c.language)),
                    "option_id": a.option_id,
                })
            })
            .collect();
        json!({
            "level": p.level,
            "category": level.map(|l| l.name.get(c.language)),
            "max_product": p.max_product,
            "valid": p.valid,
            "assessed_at": p.assessed_at,
            "expires_at": p.expires_at,
            "answers": answers,
        })
    });
    let summary = match handoff.as_ref().and_then(|h| h.summary.clone()) {
        Some(text) => json!({
            "text": text,
            "source": handoff.as_ref().and_then(|h| h.summary_source.clone()),
        }),
        // Not written yet (the LLM is still at it): the extractive one, now.
        None => json!({
            "text": summaries.extractive(
                &messages,
                handoff.as_ref().map_or("client_request", |h| h.reason.as_str()),
                assessed.as_ref(),
                c.language,
            ),
            "source": "extractive",
        }),
    };
    Ok(Some(Packet {
        conversation_id: conversation,
        client: json!({
            "id": c.client_id,
            "name": client_name.unwrap_or_else(|| c.client_id.clone()),
            "language": c.language.as_str(),
        }),
        reason: handoff.as_ref().map(|h| h.reason.clone()),
        reason_label: handoff
            .as_ref()
            .map(|h| reason_label(&h.reason, c.language)),
        priority: handoff
            .as_ref()
            .map(|h| Priority::from_rank(h.priority).as_str()),
        requested_at: handoff.as_ref().map(|h| rfc3339(h.requested_at)),
        waited_secs: handoff
            .as_ref()
            .map(|h| (h.claimed_at.unwrap_or_else(now_ms) - h.requested_at) / 1000),
        summary,
        profile,
        products: products_shown(&messages),
        citations: citations(&messages),
        guardrails: guardrail_hits(db, conversation).await?,
        events,
        notes,
        transcript: messages,
    }))
}

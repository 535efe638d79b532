//! Human handoff: who owns a conversation — the bot, the queue or one advisor — and every
//! change of owner. Each change bumps the conversation's fencing epoch in the same
//! transaction as its system messages, so a bot reply begun under an older epoch is
//! refused: the bot can never post after a handoff. The queue orders waiting clients by
//! priority and waiting time, routes by language and skill, and escalates past its SLA.

pub mod api;
pub mod packet;
pub mod sla;
pub mod store;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::HandoffConfig;
use crate::db::{Backend, Db, DbError};
use crate::error::{AppError, Result};
use crate::im::bus::{Bus, Event};
use crate::im::model::Sender;
use crate::im::store::{NewMessage, Outcome};
use crate::im::{ConversationId, ConversationMode, Language, Message};
use crate::time_fmt::{now_ms, rfc3339};
pub use store::{Actor, Advisor, HandoffRow};

/// The languages advisors may serve.
pub const LANGUAGES: [&str; 2] = ["zh-CN", "en"];
/// The skills routing knows. `general` needs no skill.
pub const SKILLS: [&str; 4] = ["general", "products", "complaints", "vulnerable_clients"];
/// How an advisor may end a handoff by closing the conversation.
pub const DISPOSITIONS: [&str; 5] = [
    "resolved",
    "follow_up",
    "referred",
    "no_response",
    "complaint_logged",
];

/// How soon a handoff must be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Complaints and vulnerable clients.
    Urgent = 0,
    /// The bot could not help (failures, blocked replies, the LLM down, an unsuitable
    /// product the client wants anyway).
    High = 1,
    /// The client asked for a person.
    Normal = 2,
}

impl Priority {
    pub fn of(reason: &str) -> Priority {
        match reason {
            "IN-HUMAN-COMPLAINT" | "IN-HUMAN-VULNERABLE" => Priority::Urgent,
            "client_request" => Priority::Normal,
            _ => Priority::High,
        }
    }

    pub fn from_rank(rank: i64) -> Priority {
        match rank {
            0 => Priority::Urgent,
            1 => Priority::High,
            _ => Priority::Normal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
        }
    }

    fn sla_secs(self, config: &HandoffConfig) -> u64 {
        match self {
            Priority::Urgent => config.sla_urgent_secs,
            Priority::High => config.sla_high_secs,
            Priority::Normal => config.sla_normal_secs,
        }
    }
}

/// The skill a handoff needs, from its reason.
pub fn skill_of(reason: &str) -> &'static str {
    match reason {
        "IN-HUMAN-COMPLAINT" => "complaints",
        "IN-HUMAN-VULNERABLE" => "vulnerable_clients",
        "unsuitable_proceed" | "OUT-SUITABILITY" => "products",
        _ => "general",
    }
}

/// A reason in words, for advisors and clients.
pub fn reason_label(reason: &str, language: Language) -> String {
    let (zh, en) = match reason {
        "client_request" => ("客户要求人工服务", "The client asked for a person"),
        "IN-HUMAN-COMPLAINT" => ("客户投诉", "Complaint"),
        "IN-HUMAN-VULNERABLE" => ("客户可能处于弱势状况", "Possibly vulnerable client"),
        "bot_failed" => (
            "智能助手连续未能回答",
            "The assistant could not answer twice in a row",
        ),
        "repeated_blocks" => (
            "合规检查连续拦截了助手的回复",
            "The guardrails blocked the assistant's replies repeatedly",
        ),
        "llm_unavailable" => ("语言模型不可用", "The language model is unavailable"),
        "unsuitable_proceed" => (
            "客户希望继续了解超出其风险等级的产品",
            "The client wants to proceed with a product above their risk level",
        ),
        other => {
            return match language {
                Language::ZhCn => format!("合规规则 {other} 要求人工处理"),
                Language::En => format!("Guardrail rule {other} asked for a person"),
            };
        }
    };
    say(language, zh, en)
}

fn say(language: Language, zh: &str, en: &str) -> String {
    match language {
        Language::ZhCn => zh.to_string(),
        Language::En => en.to_string(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The queue's figures on the metrics endpoint.
pub struct HandoffMetrics {
    requested: Family<ReasonLabels, Counter>,
    time_to_claim: Histogram,
    sla_breaches: Counter,
    queue_length: Gauge,
}

impl std::fmt::Debug for HandoffMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoffMetrics")
    }
}

impl HandoffMetrics {
    pub fn register(registry: &mut Registry) -> HandoffMetrics {
        let metrics = HandoffMetrics {
            requested: Family::default(),
            time_to_claim: Histogram::new([
                5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 3600.0,
            ]),
            sla_breaches: Counter::default(),
            queue_length: Gauge::default(),
        };
        registry.register(
            "handoffs_requested",
            "Handoffs to the advisor queue by reason, since start (this node)",
            metrics.requested.clone(),
        );
        registry.register(
            "handoff_time_to_claim_seconds",
            "Seconds from a handoff request to its claim by an advisor",
            metrics.time_to_claim.clone(),
        );
        registry.register(
            "handoff_sla_breaches",
            "Handoffs not claimed within their SLA, since start (this node)",
            metrics.sla_breaches.clone(),
        );
        registry.register(
            "handoff_queue_length",
            "Conversations waiting in the advisor queue (read from the store at scrape time)",
            metrics.queue_length.clone(),
        );
        metrics
    }

    pub fn set_queue_length(&self, n: i64) {
        self.queue_length.set(n);
    }
}

/// What a client (or the console) sees of a conversation's handoff.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HandoffState {
    pub conversation_id: ConversationId,
    /// bot, queued, advisor or closed.
    pub status: &'static str,
    pub epoch: i64,
    pub reason: Option<String>,
    pub priority: Option<&'static str>,
    /// 1 = next to be claimed.
    pub position: Option<i64>,
    pub expected_wait_secs: Option<i64>,
    pub requested_at: Option<String>,
    pub escalated: bool,
    #[schema(value_type = Option<Object>)]
    pub advisor: Option<Value>,
}

/// What a transition leaves to do once its transaction committed.
#[derive(Debug, Default)]
pub struct Aftermath {
    messages: Vec<Message>,
    queue_events: Vec<(ConversationId, &'static str)>,
    /// A new handoff: (id, conversation, reason, SLA due at).
    requested: Option<(String, ConversationId, String, i64)>,
    claimed_after_secs: Option<f64>,
    breached: bool,
}

impl Aftermath {
    fn absorb(&mut self, outcomes: Vec<Outcome>) {
        self.messages
            .extend(outcomes.into_iter().filter_map(|o| match o {
                Outcome::Stored(m) => Some(m),
                _ => None,
            }));
    }
}

/// Whether a request queued the conversation, or why not.
#[derive(Debug)]
pub enum Requested {
    Queued(Box<Aftermath>),
    /// Already queued or with an advisor.
    Pending(ConversationMode),
    Closed,
    Missing,
}

/// The handoff service of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handoffs {
    pub db: Db,
    pub bus: Bus,
    pub config: HandoffConfig,
    pub metrics: Arc<HandoffMetrics>,
    pub summaries: packet::Summarizer,
    timers: sla::Timers,
}

impl Handoffs {
    /// Starts the SLA timers of this node.
    pub fn start(
        db: Db,
        bus: Bus,
        config: HandoffConfig,
        metrics: Arc<HandoffMetrics>,
        summaries: packet::Summarizer,
    ) -> Handoffs {
        let (timers, due) = sla::Timers::new();
        let handoffs = Handoffs {
            db,
            bus,
            config,
            metrics,
            summaries,
            timers,
        };
        sla::watch(handoffs.clone(), due);
        handoffs
    }

    fn pg(&self) -> bool {
        self.db.backend() == Backend::Postgres
    }

    /// Puts a conversation in the queue (the client's button, a typed request caught
    /// early, an API call). The bot's own handoffs go through [`request_in`] inside its
    /// turn's transaction.
    pub async fn request(
        &self,
        conversation: ConversationId,
        trigger: &Trigger<'_>,
        actor: &Actor,
    ) -> Result<HandoffState> {
        let mut tx = self.db.begin_write().await?;
        let outcome = request_in(
            &mut tx,
            self.pg(),
            &self.config,
            conversation,
            trigger,
            actor,
        )
        .await?;
        match outcome {
            Requested::Queued(after) => {
                tx.commit().await?;
                self.finish(*after);
                self.state(conversation).await
            }
            Requested::Pending(mode) => Err(AppError::HandoffPending(match mode {
                ConversationMode::Queued => {
                    format!("conversation {conversation} is already waiting for an advisor")
                }
                _ => format!("an advisor already has conversation {conversation}"),
            })),
            Requested::Closed => Err(AppError::ConversationClosed(conversation.to_string())),
            Requested::Missing => Err(AppError::ConversationNotFound(conversation.to_string())),
        }
    }

    /// Publishes what a committed transition produced, counts it, arms its SLA timer and
    /// prepares the advisor's summary.
    pub fn finish(&self, after: Aftermath) {
        for message in after.messages {
            self.bus.publish(Event::Message(message));
        }
        for (conversation_id, event) in after.queue_events {
            self.bus.publish(Event::Queue {
                conversation_id,
                change: event.into(),
            });
        }
        if let Some((id, conversation, reason, due)) = after.requested {
            self.metrics
                .requested
                .get_or_create(&ReasonLabels {
                    reason: reason.clone(),
                })
                .inc();
            self.timers.schedule(id.clone(), conversation, due);
            let (summaries, db) = (self.summaries.clone(), self.db.clone());
            tokio::spawn(async move {
                if let Err(e) = summaries.prepare(&db, &id, conversation, &reason).await {
                    tracing::warn!(error = %e, conversation = %conversation, "cannot prepare the handoff summary");
                }
            });
        }
        if let Some(secs) = after.claimed_after_secs {
            self.metrics.time_to_claim.observe(secs);
        }
        if after.breached {
            self.metrics.sla_breaches.inc();
        }
    }

    /// The handoff state of a conversation.
    pub async fn state(&self, id: ConversationId) -> Result<HandoffState> {
        let mut conn = self.db.pool().acquire().await?;
        let locked = store::lock(&mut conn, id, false)
            .await?
            .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
        let latest = store::latest_handoff(&mut conn, id).await?;
        let status = match locked.mode {
            ConversationMode::Bot => "bot",
            ConversationMode::Queued => "queued",
            ConversationMode::Human => "advisor",
            ConversationMode::Closed => "closed",
        };
        let open = latest.filter(|h| h.status == "queued" || h.status == "claimed");
        let (mut position, mut wait) = (None, None);
        if locked.mode == ConversationMode::Queued {
            let queue = store::queued(&mut conn).await?;
            if let Some(i) = queue
                .iter()
                .position(|h| h.conversation_id == id.to_string())
            {
                position = Some(i as i64 + 1);
                wait = Some(expected_wait(&mut conn, &self.config, i as i64 + 1).await?);
            }
        }
        let advisor = match (&locked.advisor_id, locked.mode) {
            (Some(a), ConversationMode::Human) => {
                let name = store::advisor(&mut conn, a, false)
                    .await?
                    .map_or_else(|| a.clone(), |a| a.name);
                Some(json!({ "id": a, "name": name }))
            }
            _ => None,
        };
        Ok(HandoffState {
            conversation_id: id,
            status,
            epoch: locked.epoch,
            reason: open.as_ref().map(|h| h.reason.clone()),
            priority: open
                .as_ref()
                .map(|h| Priority::from_rank(h.priority).as_str()),
            position,
            expected_wait_secs: wait,
            requested_at: open.as_ref().map(|h| rfc3339(h.requested_at)),
            escalated: open.as_ref().is_some_and(|h| h.escalated_at.is_some()),
            advisor,
        })
    }

    /// The advisor's row, created with the configured defaults on first sight.
    pub async fn advisor(&self, user: &crate::auth::AuthUser) -> Result<Advisor> {
        // Known and named as the token names them: a read, no write lock.
        {
            let mut conn = self.db.pool().acquire().await?;
            if let Some(known) = store::advisor(&mut conn, &user.id, false).await?
                && known.name == user.display_name
            {
                return Ok(known);
            }
        }
        let mut tx = self.db.begin_write().await?;
        store::ensure_advisor(
            &mut tx,
            &user.id,
            &user.display_name,
            self.config.default_capacity,
            now_ms(),
        )
        .await?;
        let advisor = store::advisor(&mut tx, &user.id, false)
            .await?
            .expect("just ensured");
        tx.commit().await?;
        Ok(advisor)
    }

    /// An advisor claims a queued conversation. Exactly one of several advisors claiming
    /// at once wins; the others learn who did.
    pub async fn claim(
        &self,
        conversation: ConversationId,
        user: &crate::auth::AuthUser,
    ) -> Result<()> {
        self.advisor(user).await?;
        let now = now_ms();
        let pg = self.pg();
        let mut tx = self.db.begin_write().await?;
        let me = store::advisor(&mut tx, &user.id, pg)
            .await?
            .expect("ensured above");
        let c = store::lock(&mut tx, conversation, pg)
            .await?
            .ok_or_else(|| AppError::ConversationNotFound(conversation.to_string()))?;
        match c.mode {
            ConversationMode::Closed => {
                return Err(AppError::ConversationClosed(conversation.to_string()));
            }
            ConversationMode::Human => {
                let who = c.advisor_id.clone().unwrap_or_default();
                return Err(AppError::AlreadyClaimed(if who == user.id {
                    format!("you already have conversation {conversation}")
                } else {
                    format!("conversation {conversation} was already claimed by advisor {who}")
                }));
            }
            ConversationMode::Bot => {
                return Err(AppError::NotQueued(conversation.to_string()));
            }
            ConversationMode::Queued => {}
        }
        if me.status != "online" {
            return Err(AppError::AdvisorUnavailable(format!(
                "you are {}; set yourself online to claim conversations",
                me.status
            )));
        }
        if !me.has_room() {
            return Err(AppError::OverCapacity(format!(
                "you already hold {} conversations, your limit; close, transfer or return one first",
                me.active
            )));
        }
        let handoff = store::open_handoff(&mut tx, conversation)
            .await?
            .ok_or_else(|| AppError::NotQueued(conversation.to_string()))?;
        if handoff.escalated_at.is_none() && !me.eligible(&handoff.language, &handoff.skill) {
            return Err(AppError::NotEligible(format!(
                "this handoff is routed to advisors who speak {} with the skill {:?}; it opens to everyone if it waits past its SLA",
                handoff.language, handoff.skill
            )));
        }
        let epoch =
            store::set_owner(&mut tx, &c, ConversationMode::Human, Some(&user.id), now).await?;
        store::update_handoff(&mut tx, &handoff.id, "claimed", Some(&user.id), now, None).await?;
        crate::im::store::add_member_in(&mut tx, conversation, &user.id, "advisor").await?;
        let waited = (now - handoff.requested_at) as f64 / 1000.0;
        let actor = Actor::of(user);
        store::add_event(
            &mut tx,
            conversation,
            Some(&handoff.id),
            epoch,
            &actor,
            "claimed",
            &json!({ "waited_secs": waited }),
            now,
        )
        .await?;
        let mut after = Aftermath {
            claimed_after_secs: Some(waited),
            queue_events: vec![(conversation, "claimed")],
            ..Aftermath::default()
        };
        let text = match c.language {
            Language::ZhCn => format!("顾问 {} 已加入对话，将为您继续服务。", me.name),
            Language::En => format!("{}, an advisor, has joined the conversation.", me.name),
        };
        let notice = system_notice(
            conversation,
            &text,
            json!({ "event": "joined", "advisor": { "id": user.id, "name": me.name } }),
            &format!("handoff:{}:joined", handoff.id),
        );
        after.absorb(commit(&mut tx, pg, notice).await?);
        tx.commit().await?;
        self.finish(after);
        Ok(())
    }

    /// The owner passes the conversation to a colleague, with a note for them.
    pub async fn transfer(
        &self,
        conversation: ConversationId,
        user: &crate::auth::AuthUser,
        to: &str,
        note: &str,
    ) -> Result<HandoffState> {
        let now = now_ms();
        let pg = self.pg();
        let mut tx = self.db.begin_write().await?;
        let c = self.owned(&mut tx, conversation, user, pg).await?;
        if to == user.id {
            return Err(AppError::Validation(
                "a transfer needs another advisor than yourself".into(),
            ));
        }
        let target = store::advisor(&mut tx, to, pg)
            .await?
            .ok_or_else(|| AppError::AdvisorNotFound(to.to_string()))?;
        if target.status != "online" {
            return Err(AppError::AdvisorUnavailable(format!(
                "advisor {} is {}; transfer to someone online",
                target.name, target.status
            )));
        }
        if !target.has_room() {
            return Err(AppError::OverCapacity(format!(
                "advisor {} already holds {} conversations, their limit",
                target.name, target.active
            )));
        }
        let handoff = store::open_handoff(&mut tx, conversation)
            .await?
            .ok_or_else(|| {
                AppError::NotOwner(format!("conversation {conversation} has no open handoff"))
            })?;
        let epoch = store::set_owner(&mut tx, &c, ConversationMode::Human, Some(to), now).await?;
        store::update_handoff(&mut tx, &handoff.id, "claimed", Some(to), now, None).await?;
        crate::im::store::add_member_in(&mut tx, conversation, to, "advisor").await?;
        store::add_event(
            &mut tx,
            conversation,
            Some(&handoff.id),
            epoch,
            &Actor::of(user),
            "transferred",
            &json!({ "from": user.id, "to": to, "note": note }),
            now,
        )
        .await?;
        let text = match c.language {
            Language::ZhCn => format!(
                "您的对话已转给顾问 {}，对方可以看到之前的全部内容。",
                target.name
            ),
            Language::En => format!(
                "Your conversation has been passed to {}, another advisor, who can see everything so far.",
                target.name
            ),
        };
        let notice = system_notice(
            conversation,
            &text,
            json!({ "event": "transferred", "advisor": { "id": to, "name": target.name } }),
            &format!("handoff:{}:transferred:{epoch}", handoff.id),
        );
        let mut after = Aftermath {
            queue_events: vec![(conversation, "transferred")],
            ..Aftermath::default()
        };
        after.absorb(commit(&mut tx, pg, notice).await?);
        tx.commit().await?;
        self.finish(after);
        self.state(conversation).await
    }

    /// The owner gives the conversation back to the bot, which resumes after the newest
    /// message with the whole transcript as its history.
    pub async fn hand_back(
        &self,
        conversation: ConversationId,
        user: &crate::auth::AuthUser,
        note: &str,
    ) -> Result<HandoffState> {
        self.let_go(
            conversation,
            user,
            LetGo {
                mode: ConversationMode::Bot,
                event: "returned",
                zh: "顾问已将对话交回智能助手。如需再次联系人工顾问，随时回复“人工”。",
                en: "The advisor has handed you back to the assistant. Reply \"advisor\" any time to reach a person again.",
                disposition: None,
                note,
            },
        )
        .await
    }

    /// The owner closes the conversation with a disposition.
    pub async fn close(
        &self,
        conversation: ConversationId,
        user: &crate::auth::AuthUser,
        disposition: &str,
        note: &str,
    ) -> Result<HandoffState> {
        if !DISPOSITIONS.contains(&disposition) {
            return Err(AppError::Validation(format!(
                "disposition {disposition:?} is not one of {}",
                DISPOSITIONS.join(", ")
            )));
        }
        self.let_go(
            conversation,
            user,
            LetGo {
                mode: ConversationMode::Closed,
                event: "closed",
                zh: "顾问已结束本次对话。感谢您的耐心，如有需要可随时开始新的对话。",
                en: "The advisor has closed this conversation. Thank you — you can start a new one any time.",
                disposition: Some(disposition),
                note,
            },
        )
        .await
    }

    /// The owner lets go of the conversation (back to the bot, or closed): the client's
    /// notice, the new owner with the next epoch, the handoff ended and the event, in
    /// one transaction. A return moves the bot's cursor past everything said meanwhile.
    async fn let_go(
        &self,
        conversation: ConversationId,
        user: &crate::auth::AuthUser,
        how: LetGo<'_>,
    ) -> Result<HandoffState> {
        let now = now_ms();
        let pg = self.pg();
        let mut tx = self.db.begin_write().await?;
        let c = self.owned(&mut tx, conversation, user, pg).await?;
        let handoff = store::open_handoff(&mut tx, conversation).await?;
        let handoff_id = handoff.as_ref().map(|h| h.id.as_str());
        let mut body = json!({ "event": how.event });
        if let Some(disposition) = how.disposition {
            body["disposition"] = json!(disposition);
        }
        let notice = system_notice(
            conversation,
            &say(c.language, how.zh, how.en),
            body,
            &format!(
                "handoff:{}:{}:{}",
                handoff_id.unwrap_or("-"),
                how.event,
                c.epoch
            ),
        );
        let mut after = Aftermath {
            queue_events: vec![(conversation, how.event)],
            ..Aftermath::default()
        };
        let outcomes = commit(&mut tx, pg, notice).await?;
        let last = outcomes
            .iter()
            .filter_map(|o| o.message().map(|m| m.seq))
            .max()
            .unwrap_or(c.last_seq);
        after.absorb(outcomes);
        let epoch = store::set_owner(&mut tx, &c, how.mode, None, now).await?;
        if how.mode == ConversationMode::Bot {
            store::move_bot_cursor(&mut tx, conversation, last, now).await?;
        }
        if let Some(id) = handoff_id {
            store::update_handoff(&mut tx, id, how.event, None, now, how.disposition).await?;
        }
        let mut detail = json!({ "note": how.note });
        if let Some(disposition) = how.disposition {
            detail["disposition"] = json!(disposition);
        }
        store::add_event(
            &mut tx,
            conversation,
            handoff_id,
            epoch,
            &Actor::of(user),
            how.event,
            &detail,
            now,
        )
        .await?;
        tx.commit().await?;
        self.finish(after);
        self.state(conversation).await
    }

    /// Escalates a handoff that waited past its SLA: it goes to the front of the queue,
    /// opens to every advisor, and the client hears that it is being chased. Idempotent
    /// across nodes (only the first escalation writes).
    pub async fn escalate(&self, handoff_id: &str) -> Result<bool, DbError> {
        let now = now_ms();
        let pg = self.pg();
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM handoffs h WHERE h.id = $1",
            store::HANDOFF_COLUMNS
        )))
        .bind(handoff_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(handoff) = row.as_ref().map(store::handoff_from_row).transpose()? else {
            return Ok(false);
        };
        let Ok(conversation) = handoff.conversation_id.parse::<ConversationId>() else {
            return Ok(false);
        };
        let Some(c) = store::lock(&mut tx, conversation, pg).await? else {
            return Ok(false);
        };
        let done = sqlx::query(
            "UPDATE handoffs SET escalated_at = $2 WHERE id = $1 AND status = 'queued' AND escalated_at IS NULL",
        )
        .bind(handoff_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let waited = (now - handoff.requested_at) / 1000;
        store::add_event(
            &mut tx,
            conversation,
            Some(handoff_id),
            c.epoch,
            &Actor::system(),
            "sla_breached",
            &json!({ "waited_secs": waited, "due_at": rfc3339(handoff.sla_due_at) }),
            now,
        )
        .await?;
        // Escalated requests go ahead of all others, oldest escalation first among equals.
        let position = store::position(&mut tx, handoff_id).await?;
        let text = match c.language {
            Language::ZhCn => format!(
                "抱歉让您久等了。您的请求已升级处理，现在排第 {position} 位，顾问会尽快与您联系。"
            ),
            Language::En => format!(
                "Sorry for the wait. Your request has been escalated and is now number {position} in the queue; an advisor will be with you as soon as possible."
            ),
        };
        let notice = system_notice(
            conversation,
            &text,
            json!({ "event": "escalated", "position": position }),
            &format!("handoff:{handoff_id}:escalated"),
        );
        let mut after = Aftermath {
            queue_events: vec![(conversation, "escalated")],
            breached: true,
            ..Aftermath::default()
        };
        after.absorb(commit(&mut tx, pg, notice).await?);
        tx.commit().await?;
        self.finish(after);
        Ok(true)
    }

    /// The conversation, if `user` owns it now.
    async fn owned(
        &self,
        tx: &mut sqlx::AnyConnection,
        conversation: ConversationId,
        user: &crate::auth::AuthUser,
        pg: bool,
    ) -> Result<store::Locked> {
        let c = store::lock(tx, conversation, pg)
            .await?
            .ok_or_else(|| AppError::ConversationNotFound(conversation.to_string()))?;
        if c.mode == ConversationMode::Closed {
            return Err(AppError::ConversationClosed(conversation.to_string()));
        }
        if c.mode != ConversationMode::Human || c.advisor_id.as_deref() != Some(user.id.as_str()) {
            return Err(AppError::NotOwner(format!(
                "you do not own conversation {conversation}; only its advisor may do this"
            )));
        }
        Ok(c)
    }

    /// Conversations waiting, in queue order.
    pub async fn queue(&self) -> Result<Vec<HandoffRow>, DbError> {
        let mut conn = self.db.pool().acquire().await?;
        store::queued(&mut conn).await
    }

    pub async fn queue_length(&self) -> Result<i64, DbError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM handoffs WHERE status = 'queued'")
                .fetch_one(self.db.pool())
                .await?,
        )
    }
}

/// How an owner lets go of a conversation ([`Handoffs::hand_back`], [`Handoffs::close`]).
struct LetGo<'a> {
    /// Who has it next: the bot or nobody.
    mode: ConversationMode,
    /// The handoff's new status, the event and the notice's `event`.
    event: &'static str,
    zh: &'a str,
    en: &'a str,
    disposition: Option<&'a str>,
    note: &'a str,
}

/// Why a conversation is queued: the reason code, the client message that triggered it
/// (if one did) and the client's own words for the advisor (shown in the packet's notes).
#[derive(Debug, Clone, Copy)]
pub struct Trigger<'a> {
    pub reason: &'a str,
    pub seq: Option<i64>,
    pub note: Option<&'a str>,
}

impl<'a> Trigger<'a> {
    pub fn new(reason: &'a str, seq: Option<i64>) -> Self {
        Trigger {
            reason,
            seq,
            note: None,
        }
    }
}

/// Queues a conversation inside the caller's transaction: a handoff row, the new owner
/// (the queue) with the next epoch, an event, and the client's "you are in the queue"
/// notice with position and expected wait. Nothing happens unless the bot owns it.
pub async fn request_in(
    tx: &mut sqlx::AnyConnection,
    pg: bool,
    config: &HandoffConfig,
    conversation: ConversationId,
    trigger: &Trigger<'_>,
    actor: &Actor,
) -> Result<Requested, DbError> {
    let (reason, trigger_seq) = (trigger.reason, trigger.seq);
    let now = now_ms();
    let Some(c) = store::lock(tx, conversation, pg).await? else {
        return Ok(Requested::Missing);
    };
    match c.mode {
        ConversationMode::Closed => return Ok(Requested::Closed),
        ConversationMode::Queued | ConversationMode::Human => {
            return Ok(Requested::Pending(c.mode));
        }
        ConversationMode::Bot => {}
    }
    let priority = Priority::of(reason);
    let due = now + 1000 * priority.sla_secs(config) as i64;
    let handoff = HandoffRow {
        id: uuid::Uuid::now_v7().to_string(),
        conversation_id: conversation.to_string(),
        reason: reason.to_string(),
        trigger_seq,
        priority: priority as i64,
        language: c.language.as_str().to_string(),
        skill: skill_of(reason).to_string(),
        status: "queued".into(),
        requested_at: now,
        sla_due_at: due,
        escalated_at: None,
        claimed_at: None,
        advisor_id: None,
        ended_at: None,
        disposition: None,
        summary: None,
        summary_source: None,
    };
    store::insert_handoff(tx, &handoff).await?;
    let epoch = store::set_owner(tx, &c, ConversationMode::Queued, None, now).await?;
    store::add_event(
        tx,
        conversation,
        Some(&handoff.id),
        epoch,
        actor,
        "requested",
        &json!({ "reason": reason, "priority": priority.as_str(), "trigger_seq": trigger_seq, "note": trigger.note }),
        now,
    )
    .await?;
    let position = store::position(tx, &handoff.id).await?;
    let wait = expected_wait(tx, config, position).await?;
    let minutes = (wait + 59) / 60;
    let text = match c.language {
        Language::ZhCn => format!(
            "您已进入人工顾问队列，当前排第 {position} 位，预计等待约 {minutes} 分钟。顾问会看到之前的全部对话。"
        ),
        Language::En => format!(
            "You are in the queue for an advisor: position {position}, expected wait about {minutes} min. The advisor will see the whole conversation."
        ),
    };
    let notice = system_notice(
        conversation,
        &text,
        json!({ "event": "queued", "position": position, "expected_wait_secs": wait, "reason": reason }),
        &format!("handoff:{}:queued", handoff.id),
    );
    let mut after = Aftermath {
        queue_events: vec![(conversation, "queued")],
        requested: Some((handoff.id.clone(), conversation, reason.to_string(), due)),
        ..Aftermath::default()
    };
    after.absorb(commit(tx, pg, notice).await?);
    Ok(Requested::Queued(Box::new(after)))
}

/// Seconds a client at `position` may expect to wait: the median request-to-claim time
/// of recent handoffs (or `handoff.default_claim_secs` before there are any), times the
/// position, shared among the advisors online.
async fn expected_wait(
    conn: &mut sqlx::AnyConnection,
    config: &HandoffConfig,
    position: i64,
) -> Result<i64, DbError> {
    let per = store::median_claim_secs(conn)
        .await?
        .unwrap_or(config.default_claim_secs as f64)
        .max(5.0);
    let online = store::online_advisors(conn).await?.max(1);
    Ok((per * position as f64 / online as f64).ceil() as i64)
}

/// A system message about the handoff, idempotent by its key.
fn system_notice(
    conversation: ConversationId,
    text: &str,
    handoff: Value,
    key: &str,
) -> NewMessage {
    NewMessage {
        conversation_id: conversation,
        sender: Sender {
            id: "wealthdesk-system".into(),
            role: "system".into(),
        },
        kind: "handoff".into(),
        body: json!({ "text": text, "handoff": handoff }),
        client_msg_id: Some(key.chars().take(64).collect()),
    }
}

async fn commit(
    tx: &mut sqlx::AnyConnection,
    pg: bool,
    message: NewMessage,
) -> Result<Vec<Outcome>, DbError> {
    let (outcomes, _, _) =
        crate::im::store::commit_in(tx, std::slice::from_ref(&message), pg).await?;
    Ok(outcomes)
}

//! The IM domain's entry points, shared by the WebSocket gateway and the HTTP/SSE
//! fallback: who may take part, sending, receipts, typing and presence.

use std::sync::Arc;

use super::bus::{Bus, BusError, Event};
use super::commit::{CommitError, Committer, MessageLog, PendingCommit};
use super::hub::Hub;
use super::model::{Conversation, ConversationId, ConversationMode, Message, Sender};
use super::protocol::{PresenceStatus, ReceiptStatus};
use super::store::{self, NewMessage, Outcome};
use crate::auth::{AuthUser, Role};
use crate::config::{Config, ImConfig};
use crate::db::Db;
use crate::error::{AppError, Result};

/// Longest `text` of a message the backbone stores, in characters (the transport's
/// frame and body limits apply first). The bot takes on less (`bot.max_input_chars`)
/// and politely says so, keeping the message on the record.
pub const MAX_TEXT_CHARS: usize = 60_000;
/// Longest client message id.
pub const MAX_CLIENT_MSG_ID: usize = 64;

/// The IM backbone of one node.
#[derive(Debug)]
pub struct Im {
    pub hub: Arc<Hub>,
    pub bus: Bus,
    pub committer: Committer,
    pub log: MessageLog,
    pub db: Db,
    pub config: ImConfig,
    /// This process's id on the bus.
    pub node_id: String,
    /// The output rails advisors' messages pass in flag mode (set once the rules are
    /// loaded).
    guard: std::sync::OnceLock<crate::guardrails::Guard>,
}

/// A message as a participant submits it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub kind: String,
    pub body: serde_json::Value,
}

impl Im {
    /// Starts the writer task and joins the bus (NATS when configured).
    pub async fn start(db: Db, config: &Config) -> Result<Arc<Im>, BusError> {
        let hub = Arc::new(Hub::default());
        let node_id = uuid::Uuid::new_v4().simple().to_string();
        let log = if config.im.relay_without_persistence {
            tracing::warn!(
                "im.relay_without_persistence is on: messages are NOT stored (benchmark baseline only)"
            );
            MessageLog::relay()
        } else {
            MessageLog::Durable(db.clone())
        };
        let bus = match &config.nats_url {
            None => Bus::local(hub.clone()),
            Some(url) => {
                let resync_hub = hub.clone();
                let resync_log = log.clone();
                Bus::nats(
                    hub.clone(),
                    url.expose(),
                    &config.nats_subject_prefix,
                    &node_id,
                    move || {
                        let hub = resync_hub.clone();
                        let log = resync_log.clone();
                        tokio::spawn(async move { announce_tails(&hub, &log).await });
                    },
                )
                .await?
            }
        };
        let committer = Committer::start(log.clone(), bus.clone(), config.im.commit_batch_max);
        Ok(Arc::new(Im {
            hub,
            bus,
            committer,
            log,
            db,
            config: config.im.clone(),
            node_id,
            guard: std::sync::OnceLock::new(),
        }))
    }

    /// Figures for the metrics endpoint.
    pub fn stats(&self) -> crate::http::metrics::ImStats {
        use std::sync::atomic::Ordering::Relaxed;
        crate::http::metrics::ImStats {
            listeners: self.hub.open.load(Relaxed),
            watched_conversations: self.hub.watched_conversations() as u64,
            slow_consumers: self.hub.slow_consumers.load(Relaxed),
            bus_connected: self.bus.is_connected(),
            bus_dropped: self.bus.dropped(),
        }
    }

    /// The conversation, if `user` takes part in it: its client, or an advisor who joined.
    pub async fn participation(&self, user: &AuthUser, id: ConversationId) -> Result<Conversation> {
        user.require(&[Role::Client, Role::Advisor])?;
        let conversation = store::get_conversation(&self.db, id)
            .await?
            .ok_or_else(|| AppError::ConversationNotFound(id.to_string()))?;
        match user.role {
            Role::Client if conversation.client_id != user.id => {
                Err(AppError::NotYourConversation(id.to_string()))
            }
            Role::Advisor if !store::is_member(&self.db, id, &user.id).await? => {
                Err(AppError::NotAParticipant(id.to_string()))
            }
            _ => Ok(conversation),
        }
    }

    /// Validates a submission and queues it for commit. The caller must have checked
    /// participation. Await the returned commit for the ack.
    pub async fn submit(&self, user: &AuthUser, submission: Submission) -> Result<PendingCommit> {
        let message = validate(user, submission)?;
        if user.role == Role::Advisor {
            self.flag_advisor_message(user, &message);
        }
        Ok(self.committer.enqueue(message).await?)
    }

    pub fn set_guard(&self, guard: crate::guardrails::Guard) {
        let _ = self.guard.set(guard);
    }

    /// Advisors are never blocked, but what the output rules would have caught is
    /// recorded for compliance review.
    fn flag_advisor_message(&self, user: &AuthUser, message: &NewMessage) {
        let Some(guard) = self.guard.get() else {
            return;
        };
        let text = message
            .body
            .get("text")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let language = crate::knowledge::document::detect_language(text);
        let verdict = guard.output(
            text,
            language,
            &crate::guardrails::OutputContext::default(),
            crate::guardrails::Direction::Advisor,
        );
        if verdict.decisions.is_empty() {
            return;
        }
        let (db, conversation) = (self.db.clone(), message.conversation_id);
        let detail = serde_json::json!({
            "advisor": user.id,
            "client_msg_id": message.client_msg_id,
            "guardrails": verdict.decisions,
            "micros": verdict.micros,
        });
        tokio::spawn(async move {
            if let Err(e) = crate::conversation::session::record_turn(
                &db,
                conversation,
                0,
                "advisor.flagged",
                &detail,
            )
            .await
            {
                tracing::error!(error = %e, "cannot record an advisor's flagged message");
            }
        });
    }

    /// Records a receipt and tells the other listeners (and the user's other devices).
    pub async fn receipt(
        &self,
        user: &AuthUser,
        conversation: &Conversation,
        status: ReceiptStatus,
        seq: i64,
    ) -> Result<()> {
        if seq < 1 || seq > conversation.last_seq {
            let current = store::get_conversation(&self.db, conversation.id)
                .await?
                .map_or(0, |c| c.last_seq);
            if seq < 1 || seq > current {
                return Err(AppError::Validation(format!(
                    "receipt seq {seq} is outside 1..={current}"
                )));
            }
        }
        let moved = store::record_receipt(
            &self.db,
            conversation.id,
            &user.id,
            status == ReceiptStatus::Read,
            seq,
        )
        .await?;
        if moved {
            self.bus.publish(Event::Receipt {
                conversation_id: conversation.id,
                participant_id: user.id.clone(),
                role: user.role.as_str().into(),
                status,
                seq,
            });
        }
        Ok(())
    }

    pub fn typing(&self, user: &AuthUser, conversation: ConversationId, active: bool) {
        self.bus.publish(Event::Typing {
            conversation_id: conversation,
            participant_id: user.id.clone(),
            role: user.role.as_str().into(),
            active,
        });
    }

    pub fn presence(&self, user: &AuthUser, status: PresenceStatus) -> Result<()> {
        user.require(&[Role::Advisor])?;
        self.bus.publish(Event::Presence {
            participant_id: user.id.clone(),
            status,
        });
        Ok(())
    }
}

/// Re-announces the newest sequence number of every locally watched conversation so
/// listeners that missed events (bus outage) fetch them.
pub async fn announce_tails(hub: &Hub, log: &MessageLog) {
    let ids = hub.subscribed_conversations();
    match log.last_seqs(&ids).await {
        Ok(tails) => {
            for (conversation_id, last_seq) in tails {
                hub.dispatch(Arc::new(Event::Tail {
                    conversation_id,
                    last_seq,
                }));
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read conversation tails for resync"),
    }
}

fn validate(user: &AuthUser, submission: Submission) -> Result<NewMessage> {
    let Submission {
        conversation_id,
        client_msg_id,
        kind,
        body,
    } = submission;
    if client_msg_id.trim().is_empty()
        || client_msg_id.chars().count() > MAX_CLIENT_MSG_ID
        || client_msg_id.chars().any(char::is_control)
    {
        return Err(AppError::Validation(format!(
            "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} printable characters"
        )));
    }
    if kind != "text" {
        return Err(AppError::Validation(format!(
            "kind {kind:?} cannot be sent by a {}; use \"text\"",
            user.role
        )));
    }
    let text = body
        .get("text")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    if !body.is_object() || text.trim().is_empty() {
        return Err(AppError::Validation(
            "a text message needs a body like {\"text\": \"…\"} with some text".into(),
        ));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(AppError::Validation(format!(
            "the text is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(NewMessage {
        conversation_id,
        sender: Sender {
            id: user.id.clone(),
            role: user.role.as_str().into(),
        },
        kind,
        body,
        client_msg_id: Some(client_msg_id),
    })
}

/// The committed message and whether it was a duplicate, or why nothing was committed.
pub fn acknowledged(
    outcome: Result<Outcome, CommitError>,
    conversation: ConversationId,
) -> Result<(Message, bool)> {
    match outcome? {
        Outcome::Stored(message) => Ok((message, false)),
        Outcome::Duplicate(message) => Ok((message, true)),
        Outcome::ConversationClosed => Err(AppError::ConversationClosed(conversation.to_string())),
        Outcome::ConversationNotFound => {
            Err(AppError::ConversationNotFound(conversation.to_string()))
        }
        Outcome::NotOwner => Err(AppError::NotOwner(format!(
            "you do not own conversation {conversation} now (the queue, the bot or a colleague does); nothing was sent"
        ))),
    }
}

/// Closed conversations take no more messages.
pub fn ensure_open(conversation: &Conversation) -> Result<()> {
    if conversation.mode == ConversationMode::Closed {
        return Err(AppError::ConversationClosed(conversation.id.to_string()));
    }
    Ok(())
}

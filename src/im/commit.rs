//! Group commit: every message of this node goes through one writer task that commits
//! whatever has queued up while the previous transaction was being made durable, then
//! publishes the committed messages in sequence order. Acks are sent only after the
//! commit, and a busy node pays one fsync per batch, not per message.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::bus::{Bus, Event};
use super::model::{ConversationId, Message};
use super::store::{self, NewMessage, Outcome};
use crate::db::{Db, DbError};
use crate::time_fmt::{now_ms, rfc3339};

/// Where messages are kept: the database, or — only as the benchmark's baseline for the
/// cost of durability — process memory.
#[derive(Clone, Debug)]
pub enum MessageLog {
    Durable(Db),
    /// Same protocol and ordering, no persistence. Never for real use.
    Relay(Arc<Mutex<HashMap<ConversationId, RelayConversation>>>),
}

#[derive(Debug, Default)]
pub struct RelayConversation {
    messages: Vec<Message>,
    by_client_id: HashMap<(String, String), usize>,
}

impl MessageLog {
    pub fn relay() -> Self {
        MessageLog::Relay(Arc::default())
    }

    /// Messages after `after_seq`, oldest first, at most `limit`.
    pub async fn list(
        &self,
        conversation: ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Message>, DbError> {
        match self {
            MessageLog::Durable(db) => {
                store::list_messages(db, conversation, after_seq, limit).await
            }
            MessageLog::Relay(map) => {
                let map = map.lock().expect("relay lock");
                Ok(map
                    .get(&conversation)
                    .map(|c| {
                        c.messages
                            .iter()
                            .skip(after_seq.max(0) as usize)
                            .take(limit.max(0) as usize)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default())
            }
        }
    }

    /// The newest sequence number of each conversation listed.
    pub async fn last_seqs(
        &self,
        ids: &[ConversationId],
    ) -> Result<Vec<(ConversationId, i64)>, DbError> {
        match self {
            MessageLog::Durable(db) => store::last_seqs(db, ids).await,
            MessageLog::Relay(map) => {
                let map = map.lock().expect("relay lock");
                Ok(ids
                    .iter()
                    .map(|id| (*id, map.get(id).map_or(0, |c| c.messages.len() as i64)))
                    .collect())
            }
        }
    }

    /// Commits a batch; also returns the conversations in bot mode (none for the relay).
    async fn commit(
        &self,
        batch: &[NewMessage],
    ) -> Result<(Vec<Outcome>, HashSet<ConversationId>), DbError> {
        match self {
            MessageLog::Durable(db) => match store::commit_batch_noting_bot_mode(db, batch).await {
                Ok(committed) => Ok(committed),
                Err(batch_error) if batch.len() > 1 => {
                    // One bad message must not fail its neighbours: retry one by one.
                    tracing::warn!(error = %batch_error, size = batch.len(), "group commit failed; committing one by one");
                    let mut outcomes = Vec::with_capacity(batch.len());
                    let mut bots = HashSet::new();
                    for new in batch {
                        let (mut one, modes) =
                            store::commit_batch_noting_bot_mode(db, std::slice::from_ref(new))
                                .await?;
                        outcomes.append(&mut one);
                        bots.extend(modes);
                    }
                    Ok((outcomes, bots))
                }
                Err(e) => Err(e),
            },
            MessageLog::Relay(map) => {
                let mut map = map.lock().expect("relay lock");
                let now = rfc3339(now_ms());
                let outcomes = batch
                    .iter()
                    .map(|new| {
                        let conversation = map.entry(new.conversation_id).or_default();
                        let key = new
                            .client_msg_id
                            .as_ref()
                            .map(|c| (new.sender.id.clone(), c.clone()));
                        if let Some(index) =
                            key.as_ref().and_then(|k| conversation.by_client_id.get(k))
                        {
                            return Outcome::Duplicate(conversation.messages[*index].clone());
                        }
                        let message = Message {
                            conversation_id: new.conversation_id,
                            seq: conversation.messages.len() as i64 + 1,
                            sender: new.sender.clone(),
                            kind: new.kind.clone(),
                            body: new.body.clone(),
                            client_msg_id: new.client_msg_id.clone(),
                            created_at: now.clone(),
                        };
                        if let Some(key) = key {
                            conversation
                                .by_client_id
                                .insert(key, conversation.messages.len());
                        }
                        conversation.messages.push(message.clone());
                        Outcome::Stored(message)
                    })
                    .collect();
                Ok((outcomes, HashSet::new()))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the message store failed: {0}")]
    Store(#[from] DbError),
    #[error("the commit queue is closed (shutting down)")]
    Closed,
}

struct Request {
    message: NewMessage,
    reply: oneshot::Sender<Result<Outcome, Arc<DbError>>>,
}

/// Handle to this node's writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    queue: mpsc::Sender<Request>,
}

/// A commit in flight: await it for the outcome.
pub struct PendingCommit(oneshot::Receiver<Result<Outcome, Arc<DbError>>>);

impl PendingCommit {
    pub async fn outcome(self) -> Result<Outcome, CommitError> {
        match self.0.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(CommitError::Store(DbError::Shared(e))),
            Err(_) => Err(CommitError::Closed),
        }
    }
}

impl Committer {
    /// Starts the writer task. It ends when every handle is dropped.
    pub fn start(log: MessageLog, bus: Bus, max_batch: usize) -> Committer {
        let (queue, rx) = mpsc::channel(max_batch.max(1) * 8);
        tokio::spawn(run(log, bus, rx, max_batch.max(1)));
        Committer { queue }
    }

    /// Queues a message. Messages queued from one task commit in the order queued.
    pub async fn enqueue(&self, message: NewMessage) -> Result<PendingCommit, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Request { message, reply })
            .await
            .map_err(|_| CommitError::Closed)?;
        Ok(PendingCommit(rx))
    }

    /// Queues a message and waits until it is committed.
    pub async fn commit(&self, message: NewMessage) -> Result<Outcome, CommitError> {
        self.enqueue(message).await?.outcome().await
    }
}

async fn run(log: MessageLog, bus: Bus, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
    let mut requests = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut requests, max_batch).await > 0 {
        let batch: Vec<NewMessage> = requests.iter().map(|r| r.message.clone()).collect();
        match log.commit(&batch).await {
            Ok((outcomes, bot_mode)) => {
                for (request, outcome) in requests.drain(..).zip(outcomes) {
                    if let Outcome::Stored(message) = &outcome {
                        bus.publish(Event::Message(message.clone()));
                        if message.sender.role == "client"
                            && bot_mode.contains(&message.conversation_id)
                        {
                            // The bot's turn: exactly one node takes it.
                            let bus = bus.clone();
                            let id = message.conversation_id.to_string();
                            tokio::spawn(async move {
                                let kind = crate::conversation::worker::BOT_TURN;
                                if let Err(e) = bus.submit_work(kind, id.into()).await {
                                    tracing::warn!(error = %e, "cannot hand the bot its turn");
                                }
                            });
                        }
                    }
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, size = batch.len(), "commit failed");
                let shared = Arc::new(e);
                for request in requests.drain(..) {
                    let _ = request.reply.send(Err(shared.clone()));
                }
            }
        }
    }
}

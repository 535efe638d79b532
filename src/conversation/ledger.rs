//! The bot's writes — taking a conversation's lease, and completing a turn (its
//! replies, its effects, the cursor, the lease, all in one transaction) — go through
//! one writer task that commits whatever queued up while the previous transaction was
//! being made durable, like the IM's group commit. A turn is thus all or nothing: its
//! replies are never stored without the state that produced them, nor the state
//! without its replies; busy nodes pay one fsync per batch, not several per turn. Each
//! request still gets its own answer; stored replies are published on the bus after the
//! commit, like every other message.
//!
//! Fencing: a completion carries the conversation's epoch at the start of its turn. The
//! transaction reads the conversation's owner and epoch first (locking the row on
//! PostgreSQL, queued behind other writers on SQLite); if a person took it over or the
//! epoch moved, nothing of the turn is posted — only its records, marked fenced — so the
//! bot can never speak after a handoff. A handoff the turn itself asks for is queued in
//! the same transaction, after its replies.

use tokio::sync::{mpsc, oneshot};

use super::session::{self, Effects};
use crate::db::{Backend, Db, DbError};
use crate::handoff::{self, Handoffs, Requested};
use crate::im::bus::Event;
use crate::im::store::{self, NewMessage, Outcome};
use crate::im::{ConversationId, ConversationMode};

/// Most requests written in one transaction.
const BATCH_MAX: usize = 256;

enum Op {
    Acquire {
        conversation: ConversationId,
        owner: String,
        ttl_ms: i64,
    },
    Complete {
        conversation: ConversationId,
        replies: Vec<NewMessage>,
        effects: Box<Effects>,
        from: i64,
        to: i64,
        owner: String,
        ttl_ms: i64,
        release: bool,
        /// The conversation's epoch when the turn began.
        epoch: i64,
        /// A handoff the turn asks for: reason and the client message that caused it.
        handoff: Option<(String, i64)>,
    },
}

/// What a request got.
enum Answer {
    Taken(bool),
    Completed(Completion),
}

/// What became of a completed turn.
#[derive(Debug)]
pub enum Completion {
    /// Written: the replies' outcomes.
    Written(Vec<Outcome>),
    /// The cursor or the lease moved: nothing was written.
    Moved,
    /// The conversation changed owner (or epoch) while the turn ran: no reply was
    /// posted; the turn's records were kept, marked fenced.
    Fenced,
}

struct Request {
    op: Op,
    answer: oneshot::Sender<Result<Answer, String>>,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ledger {
    requests: mpsc::Sender<Request>,
}

impl Ledger {
    pub fn start(db: Db, handoffs: Handoffs) -> Ledger {
        let (requests, mut queue) = mpsc::channel::<Request>(4 * BATCH_MAX);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH_MAX);
            while queue.recv_many(&mut batch, BATCH_MAX).await > 0 {
                match write(&db, &handoffs, &batch).await {
                    Ok(answers) => {
                        for (request, answer) in batch.drain(..).zip(answers) {
                            let _ = request.answer.send(Ok(answer));
                        }
                    }
                    Err(e) if batch.len() > 1 => {
                        // One bad request must not fail its neighbours: one by one.
                        tracing::warn!(error = %e, size = batch.len(), "bot ledger batch failed; writing one by one");
                        for request in batch.drain(..) {
                            let answer = write(&db, &handoffs, std::slice::from_ref(&request))
                                .await
                                .map(|mut a| a.remove(0))
                                .map_err(|e| e.to_string());
                            let _ = request.answer.send(answer);
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for request in batch.drain(..) {
                            let _ = request.answer.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        Ledger { requests }
    }

    async fn ask(&self, op: Op) -> anyhow::Result<Answer> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .send(Request { op, answer })
            .await
            .map_err(|_| anyhow::anyhow!("the bot's ledger writer has stopped"))?;
        answered
            .await
            .map_err(|_| anyhow::anyhow!("the bot's ledger writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("bot bookkeeping failed: {e}"))
    }

    /// [`session::acquire_lease`], group-committed.
    pub async fn acquire(
        &self,
        conversation: ConversationId,
        owner: &str,
        ttl_ms: i64,
    ) -> anyhow::Result<bool> {
        match self
            .ask(Op::Acquire {
                conversation,
                owner: owner.to_string(),
                ttl_ms,
            })
            .await?
        {
            Answer::Taken(taken) => Ok(taken),
            Answer::Completed(_) => unreachable!("an acquire is answered as one"),
        }
    }

    /// Completes a turn begun at `epoch`: stores its `replies`, writes its `effects`,
    /// queues the handoff it asks for, and moves the cursor from `from` to `to`, renewing
    /// the lease or releasing it.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete(
        &self,
        conversation: ConversationId,
        epoch: i64,
        replies: Vec<NewMessage>,
        effects: Effects,
        (from, to): (i64, i64),
        owner: &str,
        ttl_ms: i64,
        release: bool,
    ) -> anyhow::Result<Completion> {
        let handoff = effects.handoff.clone();
        match self
            .ask(Op::Complete {
                conversation,
                replies,
                effects: Box::new(effects),
                from,
                to,
                owner: owner.to_string(),
                ttl_ms,
                release,
                epoch,
                handoff,
            })
            .await?
        {
            Answer::Completed(outcomes) => Ok(outcomes),
            Answer::Taken(_) => unreachable!("a completion is answered as one"),
        }
    }
}

async fn write(db: &Db, handoffs: &Handoffs, batch: &[Request]) -> Result<Vec<Answer>, DbError> {
    let lock_rows = db.backend() == Backend::Postgres;
    let mut tx = db.begin_write().await?;
    let mut answers = Vec::with_capacity(batch.len());
    let mut stored = Vec::new();
    let mut queued = Vec::new();
    for request in batch {
        let answer = match &request.op {
            Op::Acquire {
                conversation,
                owner,
                ttl_ms,
            } => Answer::Taken(session::acquire_in(&mut tx, *conversation, owner, *ttl_ms).await?),
            Op::Complete {
                conversation,
                replies,
                effects,
                from,
                to,
                owner,
                ttl_ms,
                release,
                epoch,
                handoff,
            } => {
                let current = handoff::store::lock(&mut tx, *conversation, lock_rows).await?;
                if current
                    .as_ref()
                    .is_some_and(|c| c.epoch != *epoch || c.mode != ConversationMode::Bot)
                {
                    session::fence_in(&mut tx, *conversation, effects, replies, *epoch).await?;
                    answers.push(Answer::Completed(Completion::Fenced));
                    continue;
                }
                let moved = session::complete_in(
                    &mut tx,
                    *conversation,
                    effects,
                    (*from, *to),
                    owner,
                    *ttl_ms,
                    *release,
                )
                .await?;
                if moved {
                    let (outcomes, _, _) = store::commit_in(&mut tx, replies, lock_rows).await?;
                    stored.extend(outcomes.iter().filter_map(|o| match o {
                        Outcome::Stored(m) => Some(m.clone()),
                        _ => None,
                    }));
                    if let Some((reason, trigger)) = handoff {
                        let requested = handoff::request_in(
                            &mut tx,
                            lock_rows,
                            &handoffs.config,
                            *conversation,
                            &handoff::Trigger::new(reason, Some(*trigger)),
                            &handoff::Actor::bot(),
                        )
                        .await?;
                        if let Requested::Queued(after) = requested {
                            queued.push(*after);
                        }
                    }
                    Answer::Completed(Completion::Written(outcomes))
                } else {
                    Answer::Completed(Completion::Moved)
                }
            }
        };
        answers.push(answer);
    }
    tx.commit().await?;
    for message in stored {
        handoffs.bus.publish(Event::Message(message));
    }
    for after in queued {
        handoffs.finish(after);
    }
    Ok(answers)
}

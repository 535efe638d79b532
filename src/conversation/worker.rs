//! The bot as a participant. Each committed client message in a bot-mode conversation
//! becomes a unit of work on the bus (one node takes it); the worker catches the
//! conversation up from its cursor, turn by turn in sequence order, and replies through
//! the same commit path as any participant. Replies carry `bot:<seq>:<n>` as their client
//! message id, so a turn run twice (two nodes, a retry) never posts twice.

use std::sync::Arc;

use super::engine::{self, Desk};
use super::ledger::Completion;
use super::session;
use crate::im::bus::{Bus, Event};
use crate::im::model::Sender;
use crate::im::store::{self, NewMessage};
use crate::im::{ConversationId, ConversationMode, Im};
use crate::llm::StreamEvent;

/// The bot's participant id (created by the first migration).
pub const BOT_ID: &str = "wealthdesk-bot";
/// The work kind on the bus.
pub const BOT_TURN: &str = "bot-turn";

/// How long a node may hold a conversation's turns without renewing.
const LEASE_MS: i64 = 30_000;
/// Conversations one node works on at once.
const PARALLEL_TURNS: usize = 16;

/// Starts the worker on this node.
pub async fn start(im: Arc<Im>, desk: Desk) -> Result<(), String> {
    let mut work = im.bus.work(BOT_TURN).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL_TURNS));
    tokio::spawn(async move {
        while let Some(payload) = work.recv().await {
            let Ok(id) = std::str::from_utf8(&payload)
                .unwrap_or_default()
                .parse::<ConversationId>()
            else {
                tracing::warn!("a bot turn names no conversation");
                continue;
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (im, desk) = (im.clone(), desk.clone());
            tokio::spawn(async move {
                if let Err(e) = run_turns(&im, &desk, id).await {
                    tracing::error!(error = %e, conversation = %id, "bot turn failed");
                }
                drop(slot);
            });
        }
    });
    Ok(())
}

/// Runs the conversation's pending turns under its lease, so one node at a time acts
/// for a conversation. A busy lease means another node is on it: wait for it, then
/// catch up whatever it left (usually nothing).
pub async fn run_turns(im: &Im, desk: &Desk, id: ConversationId) -> anyhow::Result<()> {
    // One holder per run, not per node: two work items for one conversation on the same
    // node must not run side by side either.
    let owner = format!("{}:{}", im.node_id, uuid::Uuid::new_v4().simple());
    let owner = owner.as_str();
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(2 * LEASE_MS as u64);
    let mut preempted = false;
    while !desk.ledger.acquire(id, owner, LEASE_MS).await? {
        if !preempted {
            // Another turn is running: a client asking for a person must not wait for it.
            preempted = true;
            preempt(desk, id).await?;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the conversation's bot lease stayed taken");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let result = catch_up(im, desk, id, owner).await;
    if result.is_err() {
        session::release_lease(&desk.db, id, owner).await?;
    }
    result
}

/// Hands the conversation over at once when a waiting client message asks for a
/// person, while an earlier turn still runs: the handoff moves the epoch, so that turn's
/// reply is refused when it completes.
async fn preempt(desk: &Desk, id: ConversationId) -> anyhow::Result<()> {
    let Some(conversation) = store::get_conversation(&desk.db, id).await? else {
        return Ok(());
    };
    if conversation.mode != ConversationMode::Bot {
        return Ok(());
    }
    let cursor = session::cursor(&desk.db, id).await?;
    let pending = store::list_messages(&desk.db, id, cursor, 50).await?;
    let asking = pending.iter().find(|m| {
        m.sender.role == "client"
            && m.body.get("answer").is_none()
            && engine::asks_for_human(desk, m, conversation.language)
    });
    if let Some(message) = asking {
        let actor = crate::handoff::Actor {
            id: message.sender.id.clone(),
            role: "client",
            name: message.sender.id.clone(),
        };
        match desk
            .handoffs
            .request(
                id,
                &crate::handoff::Trigger::new("client_request", Some(message.seq)),
                &actor,
            )
            .await
        {
            Ok(_) | Err(crate::AppError::HandoffPending(_)) => {}
            Err(e) => tracing::warn!(error = %e, conversation = %id, "cannot hand over early"),
        }
    }
    Ok(())
}

/// Handles every client message after the bot's cursor, in order, holding the
/// conversation's lease as `owner` ([`run_turns`]). Each turn's replies are committed
/// first; then its effects, the cursor and the lease are written in one transaction —
/// the turn of the last pending client message releasing the lease in the same write.
/// The conversation is read again before every turn, so a handoff stops the bot at once.
async fn catch_up(im: &Im, desk: &Desk, id: ConversationId, owner: &str) -> anyhow::Result<()> {
    let mut moved = 0;
    loop {
        let Some(conversation) = store::get_conversation(&desk.db, id).await? else {
            session::release_lease(&desk.db, id, owner).await?;
            return Ok(());
        };
        let cursor = session::cursor(&desk.db, id).await?;
        let pending = store::list_messages(&desk.db, id, cursor, 50).await?;
        let Some(last) = pending.last().map(|m| m.seq) else {
            session::release_lease(&desk.db, id, owner).await?;
            return Ok(());
        };
        if conversation.mode != ConversationMode::Bot {
            // A person or the queue owns it: the bot leaves its cursor where it is (a
            // hand-back moves it past everything said meanwhile) and lets go.
            session::release_lease(&desk.db, id, owner).await?;
            return Ok(());
        }
        let mut clients = pending.iter().filter(|m| m.sender.role == "client");
        let mut effects = session::Effects::default();
        let mut replies = Vec::new();
        let mut streamed = None;
        let (to, release) = match clients.next() {
            // Nothing for the bot (its own messages or an advisor's).
            None => (last, true),
            Some(message) => {
                let stream_id = format!("bot:{}:0", message.seq);
                let mut stream = Streamer::new(&im.bus, id, stream_id);
                let written = engine::turn(desk, &mut effects, &conversation, message, &mut |e| {
                    stream.push(e)
                })
                .await?;
                if stream.index > 0 {
                    streamed = Some((stream.stream_id.clone(), stream.attempt));
                }
                replies = written
                    .into_iter()
                    .enumerate()
                    .map(|(n, reply)| NewMessage {
                        conversation_id: id,
                        sender: Sender {
                            id: BOT_ID.into(),
                            role: "bot".into(),
                        },
                        kind: reply.kind.into(),
                        body: reply.body,
                        client_msg_id: Some(format!("bot:{}:{n}", message.seq)),
                    })
                    .collect();
                match clients.next() {
                    Some(_) => (message.seq, false),
                    None => (last, true),
                }
            }
        };
        let completion = desk
            .ledger
            .complete(
                id,
                conversation.epoch,
                replies,
                effects,
                (cursor, to),
                owner,
                LEASE_MS,
                release,
            )
            .await?;
        let outcomes = match completion {
            Completion::Written(outcomes) => outcomes,
            Completion::Fenced => {
                // A person has it now: withdraw whatever of the reply was shown, then
                // read the conversation again (its messages are no longer the bot's).
                if let Some((stream_id, attempt)) = streamed {
                    im.bus.publish(Event::Stream {
                        conversation_id: id,
                        stream_id,
                        attempt,
                        index: u32::MAX,
                        delta: String::new(),
                        reset: true,
                    });
                }
                continue;
            }
            Completion::Moved => {
                // Handed back meanwhile (the cursor jumped ahead): read it again, once.
                moved += 1;
                if moved > 1 {
                    anyhow::bail!("the bot's cursor or lease moved under a running turn");
                }
                continue;
            }
        };
        moved = 0;
        if outcomes.iter().any(|o| o.message().is_none()) {
            // Closed or gone meanwhile: the bot says no more.
            if !release {
                session::release_lease(&desk.db, id, owner).await?;
            }
            return Ok(());
        }
        if release {
            // Released: take the lease again only if more arrived meanwhile.
            let more = store::list_messages(&desk.db, id, last, 1).await?;
            if more.is_empty() || !desk.ledger.acquire(id, owner, LEASE_MS).await? {
                return Ok(());
            }
        }
    }
}

/// Turns a reply's released sentences (the output rails pass each before it goes out)
/// into ephemeral stream events on the bus.
struct Streamer<'a> {
    bus: &'a Bus,
    conversation: ConversationId,
    stream_id: String,
    index: u32,
    attempt: u32,
}

impl<'a> Streamer<'a> {
    fn new(bus: &'a Bus, conversation: ConversationId, stream_id: String) -> Self {
        Streamer {
            bus,
            conversation,
            stream_id,
            index: 0,
            attempt: 0,
        }
    }

    fn push(&mut self, event: StreamEvent) {
        let (attempt, delta, reset) = match event {
            StreamEvent::Delta { attempt, text } => (attempt, text, false),
            StreamEvent::Reset { attempt } => (attempt, String::new(), true),
        };
        self.attempt = attempt;
        self.bus.publish(Event::Stream {
            conversation_id: self.conversation,
            stream_id: self.stream_id.clone(),
            attempt,
            index: self.index,
            delta,
            reset,
        });
        self.index += 1;
    }
}

//! The bot as a participant. Each committed client message in a bot-mode conversation
//! becomes a unit of work on the bus (one node takes it); the worker catches the
//! conversation up from its cursor, turn by turn in sequence order, and replies through
//! the same commit path as any participant. Replies carry `bot:<seq>:<n>` as their client
//! message id, so a turn run twice (two nodes, a retry) never posts twice.

use std::sync::Arc;

use super::engine::{self, Desk};
use super::session;
use crate::im::model::Sender;
use crate::im::store::{self, NewMessage};
use crate::im::{ConversationId, ConversationMode, Im};

/// The bot's participant id (created by the first migration).
pub const BOT_ID: &str = "wealthdesk-bot";
/// The work kind on the bus.
pub const BOT_TURN: &str = "bot-turn";

/// Starts the worker on this node.
pub async fn start(im: Arc<Im>, desk: Desk) -> Result<(), String> {
    let mut work = im.bus.work(BOT_TURN).await?;
    tokio::spawn(async move {
        while let Some(payload) = work.recv().await {
            let Ok(id) = std::str::from_utf8(&payload)
                .unwrap_or_default()
                .parse::<ConversationId>()
            else {
                tracing::warn!("a bot turn names no conversation");
                continue;
            };
            if let Err(e) = catch_up(&im, &desk, id).await {
                tracing::error!(error = %e, conversation = %id, "bot turn failed");
            }
        }
    });
    Ok(())
}

/// Handles every client message after the bot's cursor, in order.
pub async fn catch_up(im: &Im, desk: &Desk, id: ConversationId) -> anyhow::Result<()> {
    loop {
        let Some(conversation) = store::get_conversation(&desk.db, id).await? else {
            return Ok(());
        };
        let cursor = session::cursor(&desk.db, id).await?;
        let pending = store::list_messages(&desk.db, id, cursor, 50).await?;
        let Some(last) = pending.last().map(|m| m.seq) else {
            return Ok(());
        };
        for message in &pending {
            if message.sender.role != "client" || conversation.mode != ConversationMode::Bot {
                continue;
            }
            let replies = engine::turn(desk, &conversation, message).await?;
            for (n, reply) in replies.into_iter().enumerate() {
                let outcome = im
                    .committer
                    .commit(NewMessage {
                        conversation_id: id,
                        sender: Sender {
                            id: BOT_ID.into(),
                            role: "bot".into(),
                        },
                        kind: reply.kind.into(),
                        body: reply.body,
                        client_msg_id: Some(format!("bot:{}:{n}", message.seq)),
                    })
                    .await?;
                if outcome.message().is_none() {
                    // Closed or gone meanwhile: the bot says no more.
                    return Ok(());
                }
            }
        }
        if !session::advance_cursor(&desk.db, id, cursor, last).await? {
            // Another worker moved on first; start again from where it is.
            continue;
        }
        if pending.len() < 50 {
            return Ok(());
        }
    }
}

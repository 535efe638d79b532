//! Exactly-once, in-order delivery to one listener. Events may arrive twice or out of
//! order (several nodes, a bus outage); the listener's position per conversation decides:
//! an old message is skipped, the next one is delivered, and a jump is filled from the
//! store first.

use std::collections::HashMap;

use super::bus::Event;
use super::commit::MessageLog;
use super::model::{ConversationId, Message};
use super::protocol::ServerFrame;
use crate::db::DbError;

/// Page size when filling a gap from the store.
const GAP_PAGE: i64 = 500;

/// One listener's delivery positions.
#[derive(Debug, Default)]
pub struct Delivery {
    delivered: HashMap<ConversationId, i64>,
}

impl Delivery {
    /// Starts tracking `conversation` with everything up to `seq` already delivered.
    pub fn start(&mut self, conversation: ConversationId, seq: i64) {
        self.delivered.insert(conversation, seq);
    }

    pub fn stop(&mut self, conversation: ConversationId) {
        self.delivered.remove(&conversation);
    }

    /// Every message after the listener's position up to `upto` (inclusive), from the store.
    async fn fill(
        &mut self,
        log: &MessageLog,
        conversation: ConversationId,
        upto: i64,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), DbError> {
        loop {
            let position = self.delivered[&conversation];
            if position >= upto {
                return Ok(());
            }
            let page = log
                .list(conversation, position, GAP_PAGE.min(upto - position))
                .await?;
            let Some(last) = page.last().map(|m| m.seq) else {
                return Ok(());
            };
            out.extend(
                page.into_iter()
                    .map(|message| ServerFrame::Message { message }),
            );
            self.delivered.insert(conversation, last);
        }
    }

    /// Frames this listener should get for `event`, in order.
    pub async fn frames(
        &mut self,
        log: &MessageLog,
        event: &Event,
    ) -> Result<Vec<ServerFrame>, DbError> {
        let mut out = Vec::new();
        match event {
            Event::Message(message) => {
                let conversation = message.conversation_id;
                let Some(&position) = self.delivered.get(&conversation) else {
                    return Ok(out);
                };
                if message.seq <= position {
                    return Ok(out);
                }
                if message.seq > position + 1 {
                    self.fill(log, conversation, message.seq - 1, &mut out)
                        .await?;
                }
                if self.delivered[&conversation] == message.seq - 1 {
                    out.push(ServerFrame::Message {
                        message: message.clone(),
                    });
                    self.delivered.insert(conversation, message.seq);
                }
            }
            Event::Tail {
                conversation_id,
                last_seq,
            } if self.delivered.contains_key(conversation_id) => {
                self.fill(log, *conversation_id, *last_seq, &mut out)
                    .await?;
            }
            Event::Receipt {
                conversation_id,
                participant_id,
                role,
                status,
                seq,
            } if self.delivered.contains_key(conversation_id) => {
                out.push(ServerFrame::Receipt {
                    conversation_id: *conversation_id,
                    participant_id: participant_id.clone(),
                    role: role.clone(),
                    status: *status,
                    seq: *seq,
                });
            }
            Event::Typing {
                conversation_id,
                participant_id,
                role,
                active,
            } if self.delivered.contains_key(conversation_id) => {
                out.push(ServerFrame::Typing {
                    conversation_id: *conversation_id,
                    participant_id: participant_id.clone(),
                    role: role.clone(),
                    active: *active,
                });
            }
            Event::Stream {
                conversation_id,
                stream_id,
                attempt,
                index,
                delta,
                reset,
            } if self.delivered.contains_key(conversation_id) => {
                out.push(ServerFrame::Stream {
                    conversation_id: *conversation_id,
                    stream_id: stream_id.clone(),
                    attempt: *attempt,
                    index: *index,
                    delta: delta.clone(),
                    reset: *reset,
                });
            }
            Event::Presence {
                participant_id,
                status,
            } => out.push(ServerFrame::Presence {
                participant_id: participant_id.clone(),
                status: *status,
            }),
            Event::Queue {
                conversation_id,
                change,
            } => out.push(ServerFrame::Queue {
                conversation_id: *conversation_id,
                event: change.clone(),
            }),
            _ => {}
        }
        Ok(out)
    }
}

/// The messages of a [`ServerFrame::Message`] list (SSE uses the message alone).
pub fn messages(frames: Vec<ServerFrame>) -> impl Iterator<Item = Message> {
    frames.into_iter().filter_map(|f| match f {
        ServerFrame::Message { message } => Some(message),
        _ => None,
    })
}

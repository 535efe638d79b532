//! The event bus between nodes. Every event is handed to this node's hub at once; with
//! NATS configured it is also published for the other nodes, and their events are
//! received and handed to the local hub. When NATS is away, local clients keep being
//! served; on reconnect every locally watched conversation is re-announced with its
//! newest sequence number so listeners fetch what they missed from the store.
//!
//! Work that exactly one node must do (a bot turn) goes through a queue group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::hub::Hub;
use super::model::{ConversationId, Message};
use super::protocol::{PresenceStatus, ReceiptStatus};

/// Something that happened that listeners may need to hear about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A committed message.
    Message(Message),
    Receipt {
        conversation_id: ConversationId,
        participant_id: String,
        role: String,
        status: ReceiptStatus,
        seq: i64,
    },
    /// Ephemeral.
    Typing {
        conversation_id: ConversationId,
        participant_id: String,
        role: String,
        active: bool,
    },
    /// Ephemeral: part of a bot reply being written. The final text arrives as one
    /// committed message whose `client_msg_id` is `stream_id`; a `reset` withdraws what
    /// the attempt showed so far.
    Stream {
        conversation_id: ConversationId,
        stream_id: String,
        attempt: u32,
        index: u32,
        delta: String,
        reset: bool,
    },
    /// An advisor's availability.
    Presence {
        participant_id: String,
        status: PresenceStatus,
    },
    /// The advisor queue changed (queued, claimed, escalated, transferred, returned,
    /// closed): every advisor connection hears it, to refresh its queue.
    Queue {
        conversation_id: ConversationId,
        change: String,
    },
    /// The newest committed sequence number of a conversation: listeners behind it
    /// fetch the difference from the store.
    Tail {
        conversation_id: ConversationId,
        last_seq: i64,
    },
}

impl Event {
    pub fn conversation_id(&self) -> Option<ConversationId> {
        match self {
            Event::Message(m) => Some(m.conversation_id),
            Event::Receipt {
                conversation_id, ..
            }
            | Event::Typing {
                conversation_id, ..
            }
            | Event::Stream {
                conversation_id, ..
            }
            | Event::Tail {
                conversation_id, ..
            } => Some(*conversation_id),
            Event::Presence { .. } | Event::Queue { .. } => None,
        }
    }

    /// For typing events, the participant typing (not echoed back to them).
    pub fn typist(&self) -> Option<&str> {
        match self {
            Event::Typing { participant_id, .. } => Some(participant_id),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    event: Event,
}

/// Handle to the bus. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    hub: Arc<Hub>,
    nats: Option<Arc<NatsLink>>,
    local_work: Arc<std::sync::Mutex<std::collections::HashMap<String, mpsc::Sender<Bytes>>>>,
}

#[derive(Debug)]
struct NatsLink {
    client: async_nats::Client,
    outbox: mpsc::Sender<Bytes>,
    /// This node's id: events coming back with it are our own.
    origin: String,
    work_prefix: String,
    queue_group: String,
    connected: Arc<AtomicBool>,
    /// Events not forwarded because the outbox was full (NATS away for long).
    dropped: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up NATS at {url}: {problem}")]
pub struct BusError {
    url: String,
    problem: String,
}

impl Bus {
    /// A bus for one node.
    pub fn local(hub: Arc<Hub>) -> Bus {
        Bus {
            hub,
            nats: None,
            local_work: Arc::default(),
        }
    }

    /// A bus spanning every node connected to the same NATS under `prefix`.
    /// `on_reconnect` runs each time the connection comes back after a loss.
    pub async fn nats(
        hub: Arc<Hub>,
        url: &str,
        prefix: &str,
        node_id: &str,
        on_reconnect: impl Fn() + Send + Sync + 'static,
    ) -> Result<Bus, BusError> {
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let on_reconnect = Arc::new(on_reconnect);
        let was_lost = Arc::new(AtomicBool::new(false));
        let client = async_nats::ConnectOptions::new()
            .name(format!("wealthdesk-{node_id}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                std::time::Duration::from_millis((100 * attempts as u64).min(2_000))
            })
            .event_callback(move |event| {
                let flag = flag.clone();
                let on_reconnect = on_reconnect.clone();
                let was_lost = was_lost.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            if was_lost.swap(false, Ordering::SeqCst) {
                                tracing::info!("NATS connection restored; resyncing listeners");
                                on_reconnect();
                            }
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            was_lost.store(true, Ordering::SeqCst);
                            tracing::warn!(
                                "NATS connection lost; serving local clients only until it returns"
                            );
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError {
                url: crate::config::redact_url_password(url),
                problem: e.to_string(),
            })?;
        let events_subject = format!("{prefix}.im.events");
        let mut subscription = client
            .subscribe(events_subject.clone())
            .await
            .map_err(|e| BusError {
                url: crate::config::redact_url_password(url),
                problem: e.to_string(),
            })?;
        let (outbox, mut outbox_rx) = mpsc::channel::<Bytes>(65_536);
        let link = Arc::new(NatsLink {
            client: client.clone(),
            outbox,
            origin: node_id.to_string(),
            work_prefix: format!("{prefix}.work"),
            queue_group: format!("{prefix}-workers"),
            connected,
            dropped: AtomicU64::new(0),
        });
        // One forwarder keeps this node's events in commit order on the wire.
        let publisher = client.clone();
        let subject = events_subject.clone();
        tokio::spawn(async move {
            while let Some(payload) = outbox_rx.recv().await {
                if let Err(e) = publisher.publish(subject.clone(), payload).await {
                    tracing::warn!(error = %e, "publishing to NATS failed; remote listeners will resync");
                }
            }
        });
        let inbound_hub = hub.clone();
        let me = node_id.to_string();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                match serde_json::from_slice::<Envelope>(&message.payload) {
                    Ok(envelope) if envelope.origin == me => {}
                    Ok(envelope) => inbound_hub.dispatch(Arc::new(envelope.event)),
                    Err(e) => tracing::warn!(error = %e, "undecodable event on the bus"),
                }
            }
        });
        tracing::info!(url, subject = %events_subject, "NATS bus ready");
        Ok(Bus {
            hub,
            nats: Some(link),
            local_work: Arc::default(),
        })
    }

    /// Delivers to local listeners now and, with NATS, to the other nodes.
    /// Never waits: a NATS outage must not slow the local path.
    pub fn publish(&self, event: Event) {
        if let Some(link) = &self.nats {
            let envelope = Envelope {
                origin: link.origin.clone(),
                event: event.clone(),
            };
            let payload = Bytes::from(serde_json::to_vec(&envelope).expect("events serialise"));
            if link.outbox.try_send(payload).is_err() {
                link.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hub.dispatch(Arc::new(event));
    }

    /// True without NATS, or while the NATS connection is up.
    pub fn is_connected(&self) -> bool {
        self.nats
            .as_ref()
            .is_none_or(|l| l.connected.load(Ordering::SeqCst))
    }

    /// Hands a unit of work of `kind` to exactly one node.
    pub async fn submit_work(&self, kind: &str, payload: Bytes) -> Result<(), String> {
        match &self.nats {
            Some(link) => link
                .client
                .publish(format!("{}.{kind}", link.work_prefix), payload)
                .await
                .map_err(|e| e.to_string()),
            None => {
                let sender = self
                    .local_work
                    .lock()
                    .expect("work lock")
                    .get(kind)
                    .cloned();
                match sender {
                    Some(sender) => sender.send(payload).await.map_err(|e| e.to_string()),
                    None => Err(format!("no worker for {kind:?} on this node")),
                }
            }
        }
    }

    /// Receives the work of `kind` meant for this node (a queue-group member with NATS).
    pub async fn work(&self, kind: &str) -> Result<mpsc::Receiver<Bytes>, String> {
        let (tx, rx) = mpsc::channel(1024);
        match &self.nats {
            Some(link) => {
                let mut subscription = link
                    .client
                    .queue_subscribe(
                        format!("{}.{kind}", link.work_prefix),
                        link.queue_group.clone(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    while let Some(message) = subscription.next().await {
                        if tx.send(message.payload).await.is_err() {
                            break;
                        }
                    }
                });
            }
            None => {
                self.local_work
                    .lock()
                    .expect("work lock")
                    .insert(kind.to_string(), tx);
            }
        }
        Ok(rx)
    }

    /// Waits until every published event has reached the NATS server (tests, shutdown).
    pub async fn flush(&self) {
        if let Some(link) = &self.nats {
            let _ = link.client.flush().await;
        }
    }

    /// Events not forwarded to NATS since start (outbox overflow during an outage).
    pub fn dropped(&self) -> u64 {
        self.nats
            .as_ref()
            .map_or(0, |l| l.dropped.load(Ordering::Relaxed))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

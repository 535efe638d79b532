//! This node's routing table: which local connections listen to which conversation,
//! and which listen to advisor presence. Each connection has a bounded queue; one that
//! falls behind is told to go (it resyncs on reconnect, so nothing is lost).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, mpsc};

use super::bus::Event;
use super::model::ConversationId;
use crate::auth::{AuthUser, Role};

type ConnId = u64;

#[derive(Clone)]
struct Listener {
    queue: mpsc::Sender<Arc<Event>>,
    kicked: Arc<Notify>,
    participant_id: Arc<str>,
}

/// Local connections and their subscriptions.
#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    conversations: RwLock<HashMap<ConversationId, HashMap<ConnId, Listener>>>,
    presence: RwLock<HashMap<ConnId, Listener>>,
    /// Connections dropped for not keeping up, since start.
    pub slow_consumers: AtomicU64,
    /// Listeners (sockets and SSE streams) open now.
    pub open: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// One local listener (a WebSocket or an SSE stream). Unregisters itself when dropped.
pub struct Connection {
    id: ConnId,
    hub: Arc<Hub>,
    listener: Listener,
    subscriptions: Mutex<HashSet<ConversationId>>,
    /// Events for this connection, in the order the hub saw them.
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Notified when the hub gave up on this connection (its queue was full).
    pub kicked: Arc<Notify>,
}

impl Hub {
    /// Registers a listener for `user` with a queue of `capacity` events.
    pub fn connect(self: &Arc<Self>, user: &AuthUser, capacity: usize) -> Connection {
        let (queue, events) = mpsc::channel(capacity.max(1));
        let kicked = Arc::new(Notify::new());
        let listener = Listener {
            queue,
            kicked: kicked.clone(),
            participant_id: Arc::from(user.id.as_str()),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        if user.role == Role::Advisor {
            self.presence
                .write()
                .expect("hub lock")
                .insert(id, listener.clone());
        }
        Connection {
            id,
            hub: self.clone(),
            listener,
            subscriptions: Mutex::new(HashSet::new()),
            events,
            kicked,
        }
    }

    /// Hands `event` to every local listener it concerns.
    pub fn dispatch(&self, event: Arc<Event>) {
        match event.conversation_id() {
            Some(conversation) => {
                let map = self.conversations.read().expect("hub lock");
                let Some(listeners) = map.get(&conversation) else {
                    return;
                };
                let skip = event.typist();
                for listener in listeners.values() {
                    if skip.is_some_and(|p| p == &*listener.participant_id) {
                        continue;
                    }
                    self.offer(listener, &event);
                }
            }
            None => {
                for listener in self.presence.read().expect("hub lock").values() {
                    self.offer(listener, &event);
                }
            }
        }
    }

    fn offer(&self, listener: &Listener, event: &Arc<Event>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = listener.queue.try_send(event.clone()) {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
            listener.kicked.notify_one();
        }
    }

    /// Conversations with at least one local listener.
    pub fn subscribed_conversations(&self) -> Vec<ConversationId> {
        self.conversations
            .read()
            .expect("hub lock")
            .keys()
            .copied()
            .collect()
    }

    /// Conversations with at least one local listener, for metrics.
    pub fn watched_conversations(&self) -> usize {
        self.conversations.read().expect("hub lock").len()
    }
}

impl Connection {
    /// Starts routing the conversation's events to this connection.
    pub fn subscribe(&self, conversation: ConversationId) {
        if self
            .subscriptions
            .lock()
            .expect("connection lock")
            .insert(conversation)
        {
            self.hub
                .conversations
                .write()
                .expect("hub lock")
                .entry(conversation)
                .or_default()
                .insert(self.id, self.listener.clone());
        }
    }

    pub fn unsubscribe(&self, conversation: ConversationId) {
        if self
            .subscriptions
            .lock()
            .expect("connection lock")
            .remove(&conversation)
        {
            remove(&self.hub, conversation, self.id);
        }
    }

    pub fn is_subscribed(&self, conversation: ConversationId) -> bool {
        self.subscriptions
            .lock()
            .expect("connection lock")
            .contains(&conversation)
    }
}

fn remove(hub: &Hub, conversation: ConversationId, id: ConnId) {
    let mut map = hub.conversations.write().expect("hub lock");
    if let Some(listeners) = map.get_mut(&conversation) {
        listeners.remove(&id);
        if listeners.is_empty() {
            map.remove(&conversation);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let subscriptions =
            std::mem::take(&mut *self.subscriptions.lock().expect("connection lock"));
        for conversation in subscriptions {
            remove(&self.hub, conversation, self.id);
        }
        self.hub
            .presence
            .write()
            .expect("hub lock")
            .remove(&self.id);
        self.hub.open.fetch_sub(1, Ordering::Relaxed);
    }
}

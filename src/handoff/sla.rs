//! SLA timers: each queued handoff has a deadline to be claimed by; when it passes
//! unclaimed the handoff is escalated. Timers are exact (a delay queue, no polling of
//! the store), armed by the node that queued the handoff; every node also re-reads the
//! queue now and then, so a handoff outlives the node that queued it. Escalation itself
//! is idempotent, so two nodes arming the same timer escalate once.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

use super::Handoffs;
use crate::im::ConversationId;
use crate::time_fmt::now_ms;

/// How often each node re-reads the queue for handoffs it has no timer for.
const RESYNC: Duration = Duration::from_secs(15);

/// Arms timers on this node's watcher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Timers {
    arm: mpsc::UnboundedSender<(String, ConversationId, i64)>,
}

/// The receiving end, for [`watch`].
pub struct Due(mpsc::UnboundedReceiver<(String, ConversationId, i64)>);

impl Timers {
    pub fn new() -> (Timers, Due) {
        let (arm, due) = mpsc::unbounded_channel();
        (Timers { arm }, Due(due))
    }

    /// Escalates handoff `id` at `due_ms` (Unix milliseconds) unless it is claimed first.
    pub fn schedule(&self, id: String, conversation: ConversationId, due_ms: i64) {
        let _ = self.arm.send((id, conversation, due_ms));
    }
}

/// Deadlines by handoff id, each armed once; yields a handoff's id when its time comes.
#[derive(Default)]
pub struct Schedule {
    queue: DelayQueue<String>,
    armed: HashSet<String>,
}

impl Schedule {
    /// Arms `id` to fire after `delay`; false when it is armed already.
    pub fn arm(&mut self, id: String, delay: Duration) -> bool {
        if !self.armed.insert(id.clone()) {
            return false;
        }
        self.queue.insert(id, delay);
        true
    }

    pub fn len(&self) -> usize {
        self.armed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// The next handoff whose deadline passed; pending forever while nothing is armed.
    pub async fn next(&mut self) -> String {
        loop {
            if self.queue.is_empty() {
                std::future::pending::<()>().await;
            }
            if let Some(expired) = self.queue.next().await {
                let id = expired.into_inner();
                self.armed.remove(&id);
                return id;
            }
        }
    }
}

fn delay_until(due_ms: i64) -> Duration {
    Duration::from_millis((due_ms - now_ms()).max(0) as u64)
}

/// Runs this node's timers until the process ends.
pub fn watch(handoffs: Handoffs, Due(mut arm): Due) {
    tokio::spawn(async move {
        let mut schedule = Schedule::default();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                armed = arm.recv() => match armed {
                    Some((id, _, due)) => {
                        schedule.arm(id, delay_until(due));
                    }
                    None => return,
                },
                id = schedule.next() => {
                    match handoffs.escalate(&id).await {
                        Ok(true) => tracing::info!(handoff = %id, "handoff escalated: its SLA passed unclaimed"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, handoff = %id, "cannot escalate a handoff"),
                    }
                }
                _ = resync.tick() => match handoffs.queue().await {
                    Ok(queue) => {
                        for h in queue.into_iter().filter(|h| h.escalated_at.is_none()) {
                            schedule.arm(h.id, delay_until(h.sla_due_at));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the handoff queue for its timers"),
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the clock paused, a deadline fires exactly when it is due, not before, and
    /// in deadline order; a handoff armed twice fires once.
    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_when_due_and_once() {
        let mut schedule = Schedule::default();
        assert!(schedule.arm("normal".into(), Duration::from_secs(180)));
        assert!(schedule.arm("urgent".into(), Duration::from_secs(60)));
        assert!(!schedule.arm("urgent".into(), Duration::from_secs(60)));
        assert_eq!(schedule.len(), 2);

        let early = tokio::time::timeout(Duration::from_secs(59), schedule.next()).await;
        assert!(early.is_err(), "nothing is due before 60 s");
        let first = tokio::time::timeout(Duration::from_secs(2), schedule.next()).await;
        assert_eq!(first.unwrap(), "urgent");
        let second = tokio::time::timeout(Duration::from_secs(118), schedule.next()).await;
        assert!(
            second.is_err(),
            "the normal handoff is due at 180 s, not before"
        );
        let second = tokio::time::timeout(Duration::from_secs(2), schedule.next()).await;
        assert_eq!(second.unwrap(), "normal");
        assert!(schedule.is_empty());
        // Fired handoffs may be armed again (escalation found them claimed, say).
        assert!(schedule.arm("normal".into(), Duration::from_secs(1)));
    }
}

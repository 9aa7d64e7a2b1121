//! Serving an in-memory queue: the engine source that takes, requeues and drops its items.

use std::sync::Arc;

use super::{Item, Queue};
use crate::Error;
use crate::transport::{Delivery, Engine, Settle, Settlement, Source};

/// The engine [`Source`] of a [`MemServer`]: takes messages from an in-memory queue, puts
/// retried ones back (after their delay) and drops acknowledged ones. Made by
/// [`MemQueue::server`](super::MemQueue::server); the engine calls its methods, a user
/// never does.
pub struct MemSource {
    pub(super) queue: Arc<Queue>,
    /// An empty list with room, traded for the queue's own when a fetch takes all of it:
    /// the lock is held for a swap, not a copy.
    pub(super) spare: std::sync::Mutex<std::collections::VecDeque<Item>>,
}

impl std::fmt::Debug for MemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSource")
            .field("queue", &self.queue.name)
            .finish()
    }
}

/// Settles a delivery of a [`MemSource`]: the queued message itself, which goes back to
/// the queue on a retry.
pub struct MemToken(Item);

impl std::fmt::Debug for MemToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemToken").field("id", &self.0.id).finish()
    }
}

impl Source for MemSource {
    type Token = MemToken;

    fn name(&self) -> &str {
        &self.queue.name
    }

    /// A fetch takes what is ready, whatever is unsettled.
    fn stops_at_in_flight_limit(&self) -> bool {
        false
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<MemToken>>) -> Result<(), Error> {
        let queue = &*self.queue;
        loop {
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a publish in between is not missed.
            notified.as_mut().enable();
            // Only moves under the lock: publishers wait on it, so the copies a delivery
            // needs (and their allocations) are made after it is released.
            let mut taken =
                std::mem::take(&mut *self.spare.lock().unwrap_or_else(|p| p.into_inner()));
            let (next_due, more) = {
                let mut state = queue.lock();
                let next_due = state.promote_due();
                let ready = state.ready.len();
                if ready > 0 && max >= ready {
                    // All of it: trade the queue's list for the empty spare one.
                    std::mem::swap(&mut taken, &mut state.ready);
                } else if ready > 0 {
                    taken.extend(state.ready.drain(..max));
                }
                (next_due, !state.ready.is_empty())
            };
            if taken.is_empty() {
                *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = taken;
            } else {
                // Taken messages make room for publishers; retries come back to the queue
                // without taking room again.
                let mut room = 0;
                out.extend(taken.drain(..).map(|mut item| {
                    room += usize::from(std::mem::take(&mut item.holds_room));
                    Delivery {
                        message_id: Some(item.id.into()),
                        attempt: item.attempt,
                        attributes: item.attributes.clone(),
                        body: item.body.clone(),
                        malformed: None,
                        token: MemToken(item),
                    }
                }));
                *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = taken;
                if room > 0 {
                    queue.capacity.add_permits(room);
                }
                if more {
                    // Leave the rest to another server on this queue.
                    queue.notify.notify_one();
                }
                return Ok(());
            }
            match next_due {
                None => notified.await,
                Some(due) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
            }
        }
    }

    async fn settle(&self, batch: &mut Vec<Settlement<MemToken>>) -> Result<(), Error> {
        let queue = &*self.queue;
        // What goes back, sorted out before taking the lock; the acknowledged messages
        // are dropped after it (their attribute tables kept as spares for the next
        // writers, the rest of their memory freed), so publishers never wait on that.
        let mut back = Vec::new();
        let mut released = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        for settlement in batch.drain(..) {
            let MemToken(mut item) = settlement.token;
            match settlement.action {
                Settle::Ack | Settle::Reject | Settle::DeadLetter { .. } => done.push(item),
                Settle::Nack { delay } => {
                    item.attempt = item.attempt.saturating_add(1);
                    back.push((item, delay));
                }
                Settle::Release => released.push(item),
                // Not an attempt: back after the delay, attempt count unchanged.
                Settle::Defer { delay } => back.push((item, Some(delay))),
            }
        }
        if back.is_empty() && released.is_empty() {
            queue.recycle(done);
            return Ok(());
        }
        {
            let mut state = queue.lock();
            for (item, delay) in back {
                state.enqueue(item, delay);
            }
            // Back to the front, in the order they were fetched: a server may release what
            // it fetched in several batches, so each goes before the first message with a
            // higher id rather than simply at the front.
            released.sort_unstable_by_key(|item| item.id);
            let mut at = 0;
            for item in released {
                while state.ready.get(at).is_some_and(|next| next.id < item.id) {
                    at += 1;
                }
                state.ready.insert(at, item);
                at += 1;
            }
        }
        queue.notify.notify_one();
        queue.recycle(done);
        Ok(())
    }
}

/// A server over an in-memory queue: the delivery engine over a [`MemSource`]. Cloning
/// gives another handle to the same server.
pub type MemServer = Engine<MemSource>;

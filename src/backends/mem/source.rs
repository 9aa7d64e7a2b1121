//! Serving an in-memory queue: the engine source that takes, requeues and drops its items.

use std::sync::Arc;

use super::{Item, Queue};
use crate::Error;
use crate::engine::{Delivery, Engine, Settle, Settlement, Source};

/// The engine source over an in-memory queue.
pub(super) struct MemSource {
    pub(super) queue: Arc<Queue>,
}

impl Source for MemSource {
    type Token = Item;

    fn name(&self) -> &str {
        &self.queue.name
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<Item>>) -> Result<(), Error> {
        let queue = &*self.queue;
        loop {
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a publish in between is not missed.
            notified.as_mut().enable();
            let next_due = {
                let mut state = queue.lock();
                let next_due = state.promote_due();
                let n = max.min(state.ready.len());
                if n > 0 {
                    // Taken messages make room for publishers; retries come back to the
                    // queue without taking room again.
                    let mut room = 0;
                    out.extend(state.ready.drain(..n).map(|mut item| {
                        room += usize::from(std::mem::take(&mut item.holds_room));
                        Delivery {
                            message_id: Some(item.id.into()),
                            attempt: item.attempt,
                            attributes: item.attributes.clone(),
                            body: item.body.clone(),
                            malformed: None,
                            token: item,
                        }
                    }));
                    if room > 0 {
                        queue.capacity.add_permits(room);
                    }
                    if !state.ready.is_empty() {
                        // Leave the rest to another server on this queue.
                        queue.notify.notify_one();
                    }
                    return Ok(());
                }
                next_due
            };
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

    async fn settle(&self, batch: &mut Vec<Settlement<Item>>) -> Result<(), Error> {
        let queue = &*self.queue;
        let mut requeued = false;
        let mut released = Vec::new();
        {
            let mut state = queue.lock();
            for settlement in batch.drain(..) {
                let mut item = settlement.token;
                match settlement.action {
                    Settle::Ack | Settle::Reject => {}
                    Settle::Nack { delay } => {
                        item.attempt = item.attempt.saturating_add(1);
                        state.enqueue(item, delay);
                        requeued = true;
                    }
                    Settle::Release => released.push(item),
                    // Not an attempt: back after the delay, attempt count unchanged.
                    Settle::Defer { delay } => {
                        state.enqueue(item, Some(delay));
                        requeued = true;
                    }
                }
            }
            // Back to the front, in the order they were fetched.
            for item in released.into_iter().rev() {
                state.ready.push_front(item);
                requeued = true;
            }
        }
        if requeued {
            queue.notify.notify_one();
        }
        Ok(())
    }
}

/// A server over an in-memory queue, built on the delivery engine. Cloning gives another
/// handle to the same server.
#[derive(Clone, Debug)]
pub struct MemServer {
    pub(super) engine: Engine<MemSource>,
}

engine_server!(MemServer);

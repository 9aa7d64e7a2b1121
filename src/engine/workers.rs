//! Worker tasks that run messages one after another, so that a message does not pay for
//! a task of its own (an allocation, and registering and removing a task, per message).
//!
//! A worker is spawned when a message finds none idle; a worker that finished a message
//! waits for the next. There are never more workers than the concurrency: a worker is busy
//! only while it holds a concurrency slot, and it is back among the idle ones before it
//! frees its slot. At most [`MAX_IDLE`] wait at a time (the others end), so that a burst
//! under a high concurrency limit does not keep its workers for as long as serving lasts.
//!
//! A message reaches an idle worker through the worker's mailbox: one slot under a lock
//! and a [`Notify`]. A channel would do, but tokio's write each message into the next
//! slot of a 32-slot block, a new block (and new cache lines) every 32 messages, and lock
//! the channel's semaphore when the worker takes a message; the mailbox reuses one slot.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::serve::Dispatch;
use super::slots::Slots;
use super::{Delivery, Source};
use crate::Receiver;

/// How many idle workers wait for messages at most.
const MAX_IDLE: usize = 256;

/// A message for a worker: a delivery that holds a concurrency slot.
type Job<T> = Delivery<T>;

pub(super) struct Workers<S: Source, R> {
    dispatch: Arc<Dispatch<S, R>>,
    /// The concurrency slots: each job holds one, which its worker frees.
    slots: Arc<Slots>,
    idle: Mutex<Idle<S::Token>>,
}

struct Idle<T> {
    /// Serving ended: workers stop instead of waiting.
    closed: bool,
    /// The mailboxes of the idle workers.
    workers: Vec<Arc<Mailbox<Job<T>>>>,
}

/// How a worker is given its next message (`J`).
struct Mailbox<J> {
    slot: Mutex<Slot<J>>,
    ready: Notify,
}

enum Slot<J> {
    /// Nothing for the worker yet.
    Empty,
    /// A message to run.
    Job(J),
    /// Serving ended: stop.
    Stop,
    /// The worker is gone (its task was dropped): nothing must be left here.
    Gone,
}

impl<J> Mailbox<J> {
    fn new() -> Self {
        Mailbox {
            slot: Mutex::new(Slot::Empty),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot<J>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `job` for the worker; hands it back if the worker is gone.
    fn give(&self, job: J) -> Result<(), J> {
        {
            let mut slot = self.lock();
            if matches!(*slot, Slot::Gone) {
                return Err(job);
            }
            *slot = Slot::Job(job);
        }
        // Stores a permit when the worker is not waiting yet: no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    fn stop(&self) {
        {
            let mut slot = self.lock();
            if matches!(*slot, Slot::Gone) {
                return;
            }
            *slot = Slot::Stop;
        }
        self.ready.notify_one();
    }

    /// The next message, or `None` once told to stop.
    async fn next(&self) -> Option<J> {
        loop {
            match std::mem::replace(&mut *self.lock(), Slot::Empty) {
                Slot::Job(job) => return Some(job),
                Slot::Stop | Slot::Gone => return None,
                Slot::Empty => {}
            }
            self.ready.notified().await;
        }
    }
}

/// Marks a worker's mailbox gone when the worker's task ends, however it ends (a runtime
/// shutting down drops tasks mid-await), so that no message is left in it; the slot of a
/// message given just before is freed.
struct Leaving<'a, J> {
    mailbox: Arc<Mailbox<J>>,
    slots: &'a Slots,
}

impl<J> Drop for Leaving<'_, J> {
    fn drop(&mut self) {
        let left = std::mem::replace(&mut *self.mailbox.lock(), Slot::Gone);
        if matches!(left, Slot::Job(_)) {
            self.slots.release();
        }
    }
}

/// A concurrency slot a worker holds while it runs a message: freed when dropped, so that
/// a worker dropped mid-message (by a runtime shutting down) frees it too.
struct Holding<'a>(&'a Slots);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<S: Source, R: Receiver + 'static> Workers<S, R> {
    pub(super) fn new(dispatch: Arc<Dispatch<S, R>>, slots: Arc<Slots>) -> Arc<Self> {
        Arc::new(Workers {
            dispatch,
            slots,
            idle: Mutex::new(Idle {
                closed: false,
                workers: Vec::new(),
            }),
        })
    }

    pub(super) fn dispatch(&self) -> &Arc<Dispatch<S, R>> {
        &self.dispatch
    }

    fn idle(&self) -> MutexGuard<'_, Idle<S::Token>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `delivery`, for which the caller took a slot, on an idle worker or on a new
    /// one; the slot is freed once the delivery is settled.
    pub(super) fn run(self: &Arc<Self>, delivery: Delivery<S::Token>) {
        let mut job = delivery;
        loop {
            let Some(worker) = self.idle().workers.pop() else {
                break;
            };
            match worker.give(job) {
                Ok(()) => return,
                // Only a worker whose task was dropped is gone: try another.
                Err(back) => job = back,
            }
        }
        // A spawned task is dropped before its first poll only when the runtime shuts
        // down, which ends serving too: its slot is not needed back then.
        tokio::spawn(self.clone().work(job));
    }

    /// A worker: runs `first`, then each message it is given, until serving ends.
    async fn work(self: Arc<Self>, first: Job<S::Token>) {
        let mailbox = Arc::new(Mailbox::new());
        let _leaving = Leaving {
            mailbox: mailbox.clone(),
            slots: &self.slots,
        };
        let origin = self.dispatch.origin();
        let mut delivery = first;
        loop {
            let slot = Holding(&self.slots);
            self.dispatch.run_message(delivery, &origin).await;
            {
                let mut idle = self.idle();
                if idle.closed || idle.workers.len() >= MAX_IDLE {
                    return;
                }
                idle.workers.push(mailbox.clone());
            }
            // Idle before the slot is free: whoever takes the slot finds this worker.
            drop(slot);
            match mailbox.next().await {
                Some(next) => delivery = next,
                None => return,
            }
        }
    }

    /// Stops the idle workers, and the busy ones once they finish.
    pub(super) fn close(&self) {
        let workers = {
            let mut idle = self.idle();
            idle.closed = true;
            std::mem::take(&mut idle.workers)
        };
        for worker in workers {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mailbox_hands_over_jobs_and_refuses_them_once_its_worker_is_gone() {
        let mailbox = Arc::new(Mailbox::new());
        let slots = Slots::new(1);
        let leaving = Leaving {
            mailbox: mailbox.clone(),
            slots: &slots,
        };
        // Given before the worker waits: the stored permit wakes it.
        mailbox.give(1).unwrap();
        assert_eq!(mailbox.next().await, Some(1));
        let waiting = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.next().await }
        });
        tokio::task::yield_now().await;
        mailbox.give(2).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(2));
        mailbox.stop();
        assert_eq!(mailbox.next().await, None);
        // A job given just before the worker leaves: its slot is freed with it.
        assert!(slots.try_take());
        mailbox.give(9).unwrap();
        drop(leaving);
        assert_eq!(slots.free(), 1, "the slot of a job left in the mailbox");
        assert_eq!(
            mailbox.give(3),
            Err(3),
            "a job left for a worker that is gone"
        );
    }
}

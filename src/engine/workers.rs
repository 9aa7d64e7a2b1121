//! Worker tasks that run messages one after another, so that a message does not pay for
//! a task of its own (an allocation, and registering and removing a task, per message).
//!
//! A worker is spawned when a message finds none idle; a worker that finished a message
//! waits for the next. There are never more workers than the concurrency: a worker is busy
//! only while it holds a concurrency slot, and it is back among the idle ones before it
//! frees its slot. At most [`MAX_IDLE`] wait at a time (the others end), so that a burst
//! under a high concurrency limit does not keep its workers for as long as serving lasts.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::serve::Dispatch;
use super::{Delivery, Source};
use crate::Receiver;

/// How many idle workers wait for messages at most.
const MAX_IDLE: usize = 256;

/// A message for a worker: a delivery with its slot, or `None` to stop.
type Job<T> = Option<(Delivery<T>, OwnedSemaphorePermit)>;

pub(super) struct Workers<S: Source, R> {
    dispatch: Arc<Dispatch<S, R>>,
    idle: Mutex<Idle<S::Token>>,
}

struct Idle<T> {
    /// Serving ended: workers stop instead of waiting.
    closed: bool,
    /// How to reach each idle worker.
    workers: Vec<mpsc::Sender<Job<T>>>,
}

impl<S: Source, R: Receiver + 'static> Workers<S, R> {
    pub(super) fn new(dispatch: Arc<Dispatch<S, R>>) -> Arc<Self> {
        Arc::new(Workers {
            dispatch,
            idle: Mutex::new(Idle {
                closed: false,
                workers: Vec::new(),
            }),
        })
    }

    pub(super) fn dispatch(&self) -> &Arc<Dispatch<S, R>> {
        &self.dispatch
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle<S::Token>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `delivery` on an idle worker, or on a new one; `slot` is freed once it is
    /// settled.
    pub(super) fn run(self: &Arc<Self>, delivery: Delivery<S::Token>, slot: OwnedSemaphorePermit) {
        let mut job = (delivery, slot);
        loop {
            let Some(worker) = self.idle().workers.pop() else {
                break;
            };
            match worker.try_send(Some(job)) {
                Ok(()) => return,
                // Only a worker that ended drops its receiver: try another.
                Err(e) => job = e.into_inner().expect("sent a job"),
            }
        }
        tokio::spawn(self.clone().work(job));
    }

    /// A worker: runs `first`, then each message it is given, until serving ends.
    async fn work(self: Arc<Self>, first: (Delivery<S::Token>, OwnedSemaphorePermit)) {
        let (tx, mut rx) = mpsc::channel(1);
        let (mut delivery, mut slot) = first;
        loop {
            self.dispatch.run_message(delivery).await;
            {
                let mut idle = self.idle();
                if idle.closed || idle.workers.len() >= MAX_IDLE {
                    return;
                }
                idle.workers.push(tx.clone());
            }
            // Idle before the slot is free: whoever takes the slot finds this worker.
            drop(slot);
            match rx.recv().await {
                Some(Some((d, s))) => (delivery, slot) = (d, s),
                _ => return,
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
            let _ = worker.try_send(None);
        }
    }
}

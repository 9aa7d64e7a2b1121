//! The settler: applies settlements in batches, flushed by count and by interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::HealthCell;
use super::{Settle, Settlement, Source};
use crate::log;

/// The sending side of the settlement queue: one per serve, shared by every message task.
pub(crate) struct SettleSender<T> {
    tx: mpsc::UnboundedSender<Settlement<T>>,
    shared: Arc<Shared>,
}

/// What both sides of the queue share: how many settlements wait, and a signal when a
/// whole batch does, so the settler wakes once per batch rather than once per message.
struct Shared {
    waiting: AtomicUsize,
    batch_full: Notify,
    batch_size: usize,
}

/// The receiving side of the settlement queue, for the [`Settler`].
pub(crate) struct SettleReceiver<T> {
    rx: mpsc::UnboundedReceiver<Settlement<T>>,
    shared: Arc<Shared>,
}

pub(crate) fn settle_channel<T>(batch_size: usize) -> (SettleSender<T>, SettleReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        waiting: AtomicUsize::new(0),
        batch_full: Notify::new(),
        batch_size,
    });
    (
        SettleSender {
            tx,
            shared: shared.clone(),
        },
        SettleReceiver { rx, shared },
    )
}

impl<T> SettleSender<T> {
    /// Queues a settlement. Fails only once the settler has finished (after receivers were
    /// abandoned at shutdown); the delivery is then left to the broker's redelivery.
    ///
    /// Counted before it is queued: the settler subtracts what it took as soon as it took
    /// it, so a settlement counted after being queued could be subtracted first and wrap
    /// the count below zero.
    pub(crate) fn send(&self, settlement: Settlement<T>) {
        let waiting = self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(settlement).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        } else if waiting + 1 == self.shared.batch_size {
            self.shared.batch_full.notify_one();
        }
    }
}

pub(crate) struct Settler<S: Source> {
    pub(crate) source: Arc<S>,
    pub(crate) health: Arc<HealthCell>,
    pub(crate) batch_size: usize,
    pub(crate) interval: Duration,
    pub(crate) retries: u32,
    pub(crate) backoff: crate::Backoff,
}

impl<S: Source> Settler<S> {
    /// Applies every settlement received until all senders are gone and the queue is
    /// empty. When `finish` is cancelled, applies what is queued and returns without
    /// waiting for the senders.
    pub(crate) async fn run(self, queue: SettleReceiver<S::Token>, finish: CancellationToken) {
        let SettleReceiver { mut rx, shared } = queue;
        let mut batch = Vec::with_capacity(self.batch_size);
        // Delayed nacks held here for a source that cannot hold a delay itself.
        let mut held = Held::default();
        loop {
            let next_due = held.next_due();
            let received = tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, self.batch_size) => Some(n),
                _ = finish.cancelled() => {
                    while let Ok(settlement) = rx.try_recv() {
                        batch.push(settlement);
                    }
                    held.release_all(&mut batch);
                    self.flush(&mut batch).await;
                    return;
                }
                _ = sleep_until_some(next_due) => None,
            };
            match received {
                Some(0) => {
                    // Closed and drained: what is held goes back now rather than be lost.
                    held.release_all(&mut batch);
                    self.flush(&mut batch).await;
                    return;
                }
                Some(_) => {
                    if batch.len() < self.batch_size && !self.interval.is_zero() {
                        // Wait for the batch to fill (signalled by the senders) or the
                        // interval to pass, whichever is first, then take what is there.
                        tokio::select! {
                            _ = shared.batch_full.notified() => {}
                            _ = tokio::time::sleep(self.interval) => {}
                        }
                        while batch.len() < self.batch_size {
                            match rx.try_recv() {
                                Ok(settlement) => batch.push(settlement),
                                Err(_) => break,
                            }
                        }
                    }
                    shared.waiting.fetch_sub(batch.len(), Ordering::AcqRel);
                    if !self.source.nack_delay() {
                        held.hold_delayed(&mut batch);
                    }
                }
                None => {}
            }
            held.release_due(&mut batch);
            if !batch.is_empty() {
                self.flush(&mut batch).await;
            }
        }
    }

    async fn flush(&self, batch: &mut Vec<Settlement<S::Token>>) {
        let mut delays = self.backoff.delays();
        let mut tries = 0;
        loop {
            // A transport's code: a panic in it is a failed settlement, not a settler gone
            // (every settlement after it would have been dropped unseen).
            let settled = crate::receiver::catch_panic_of("the source's settle", || {
                self.source.settle(batch)
            })
            .await;
            match settled {
                Ok(()) => {
                    batch.clear();
                    return;
                }
                Err(e) => {
                    self.health.failure(&e);
                    if batch.is_empty() {
                        return;
                    }
                    if e.is_connection_lost() || tries >= self.retries {
                        log::warning!(
                            "msgio: {} settlements on {:?} not applied ({e}); the broker will redeliver what was not acknowledged",
                            batch.len(),
                            self.source.name()
                        );
                        batch.clear();
                        return;
                    }
                    tries += 1;
                    tokio::time::sleep(delays.next_delay()).await;
                }
            }
        }
    }
}

async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Nacks and deferrals with a delay, held until due for a source that cannot hold the
/// delay itself (then settled as a plain nack, or a release): the message stays
/// unacknowledged meanwhile, without keeping a concurrency slot.
struct Held<T> {
    due: BTreeMap<(Instant, u64), Settlement<T>>,
    seq: u64,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            due: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<T> Held<T> {
    fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// Moves the delayed nacks and deferrals out of `batch`, to be settled without delay
    /// once due.
    fn hold_delayed(&mut self, batch: &mut Vec<Settlement<T>>) {
        let now = Instant::now();
        let mut i = 0;
        while i < batch.len() {
            let held = match batch[i].action {
                Settle::Nack { delay: Some(delay) } if !delay.is_zero() => {
                    Some((delay, Settle::Nack { delay: None }))
                }
                Settle::Defer { delay } if !delay.is_zero() => Some((delay, Settle::Release)),
                _ => None,
            };
            let Some((delay, then)) = held else {
                i += 1;
                continue;
            };
            let mut settlement = batch.swap_remove(i);
            settlement.action = then;
            let at = now
                .checked_add(delay)
                .unwrap_or_else(crate::context::far_future);
            self.seq += 1;
            self.due.insert((at, self.seq), settlement);
        }
    }

    fn release_due(&mut self, batch: &mut Vec<Settlement<T>>) {
        let now = Instant::now();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            batch.push(entry.remove());
        }
    }

    fn release_all(&mut self, batch: &mut Vec<Settlement<T>>) {
        batch.extend(std::mem::take(&mut self.due).into_values());
    }
}

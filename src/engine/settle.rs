//! The settler: applies settlements in batches, flushed by count and by interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::HealthCell;
use super::{Settlement, Source};
use crate::log;

pub(crate) struct Settler<S: Source> {
    pub(crate) source: Arc<S>,
    pub(crate) health: Arc<HealthCell>,
    pub(crate) batch_size: usize,
    pub(crate) interval: Duration,
    pub(crate) retries: u32,
    pub(crate) backoff: crate::Backoff,
}

impl<S: Source> Settler<S> {
    /// Applies every settlement received until all senders are gone and the channel is
    /// empty.
    /// When `finish` is cancelled, applies what is queued and returns without waiting for
    /// the senders.
    pub(crate) async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Settlement<S::Token>>,
        finish: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let received = tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, self.batch_size) => n,
                _ = finish.cancelled() => {
                    while let Ok(settlement) = rx.try_recv() {
                        batch.push(settlement);
                    }
                    self.flush(&mut batch).await;
                    return;
                }
            };
            if received == 0 {
                return; // closed and drained
            }
            if batch.len() < self.batch_size && !self.interval.is_zero() {
                let flush_at = Instant::now() + self.interval;
                while batch.len() < self.batch_size {
                    let room = self.batch_size - batch.len();
                    match tokio::time::timeout_at(flush_at, rx.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            self.flush(&mut batch).await;
        }
    }

    async fn flush(&self, batch: &mut Vec<Settlement<S::Token>>) {
        let mut delays = self.backoff.delays();
        let mut tries = 0;
        loop {
            match self.source.settle(batch).await {
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

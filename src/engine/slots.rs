//! The concurrency bound: how many messages may be in flight.
//!
//! Only the fetch loop takes slots (and, once it has stopped, the drain waits for all of
//! them), while every worker frees one per message. A semaphore would do, but tokio's
//! locks its waiter list on every release and its owned permit clones an `Arc`: four
//! read-modify-writes of lines both cores write, per message. Here a release is one
//! atomic add, plus a wake-up only when the one taker waits.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

pub(super) struct Slots {
    total: usize,
    free: AtomicUsize,
    /// The taker is waiting for a slot to be freed.
    waiting: AtomicBool,
    freed: Notify,
}

impl Slots {
    pub(super) fn new(total: usize) -> Self {
        Slots {
            total,
            free: AtomicUsize::new(total),
            waiting: AtomicBool::new(false),
            freed: Notify::new(),
        }
    }

    /// How many slots are free now.
    pub(super) fn free(&self) -> usize {
        self.free.load(SeqCst)
    }

    /// How many slots are taken now.
    pub(super) fn taken(&self) -> usize {
        self.total.saturating_sub(self.free())
    }

    /// Takes a slot if one is free. Only one task may take slots.
    pub(super) fn try_take(&self) -> bool {
        // Others only add: a slot seen free stays free until taken here.
        if self.free.load(SeqCst) == 0 {
            return false;
        }
        self.free.fetch_sub(1, SeqCst);
        true
    }

    /// Takes a slot, waiting for one to be freed. Only one task may take slots.
    ///
    /// Cancellation safe: dropped while waiting, it takes nothing.
    pub(super) async fn take(&self) {
        self.until(|free| free > 0).await;
        self.free.fetch_sub(1, SeqCst);
    }

    /// Waits until a slot is free, without taking it.
    pub(super) async fn any_free(&self) {
        self.until(|free| free > 0).await;
    }

    /// Waits until every slot is free.
    pub(super) async fn all_free(&self) {
        self.until(|free| free == self.total).await;
    }

    /// Frees a slot taken with [`take`](Slots::take) or [`try_take`](Slots::try_take).
    pub(super) fn release(&self) {
        let before = self.free.fetch_add(1, SeqCst);
        debug_assert!(before < self.total, "a slot freed twice");
        // Paired with `until`: it sets `waiting` and then reads `free`, this adds to `free`
        // and then reads `waiting` (all sequentially consistent), so either it sees the
        // slot or this sees it waiting.
        if self.waiting.load(SeqCst) && self.waiting.swap(false, SeqCst) {
            self.freed.notify_one();
        }
    }

    async fn until(&self, ready: impl Fn(usize) -> bool) {
        loop {
            if ready(self.free.load(SeqCst)) {
                return;
            }
            let mut notified = pin!(self.freed.notified());
            notified.as_mut().enable();
            self.waiting.store(true, SeqCst);
            if ready(self.free.load(SeqCst)) {
                self.waiting.store(false, SeqCst);
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn taking_waits_for_a_release_and_all_free_for_every_one() {
        let slots = Arc::new(Slots::new(2));
        assert!(slots.try_take());
        slots.take().await;
        assert!(!slots.try_take(), "a third slot out of two");
        assert_eq!(slots.taken(), 2);

        let taker = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!taker.is_finished(), "took a slot while none was free");
        slots.release();
        tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .expect("a freed slot did not wake the taker")
            .unwrap();

        let drain = tokio::spawn({
            let slots = slots.clone();
            async move { slots.all_free().await }
        });
        slots.release();
        tokio::task::yield_now().await;
        assert!(!drain.is_finished(), "all free with one still taken");
        slots.release();
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("the last release did not wake the drain")
            .unwrap();
        assert_eq!(slots.free(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn releases_from_other_threads_always_wake_the_taker() {
        let slots = Arc::new(Slots::new(1));
        let rounds = async {
            for _ in 0..20_000 {
                slots.take().await;
                let slots = slots.clone();
                tokio::spawn(async move { slots.release() });
            }
            slots.all_free().await;
        };
        tokio::time::timeout(Duration::from_secs(20), rounds)
            .await
            .expect("a release was lost");
    }
}

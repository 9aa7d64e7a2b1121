//! How many deliveries the engine may hold: fetched and waiting, or running.
//!
//! Only the fetch loop takes slots (and, once it has stopped, the drain waits for all of
//! them), while every worker frees one per message. A semaphore would do, but tokio's
//! locks its waiter list on every release: here a release is one atomic add, plus a
//! wake-up only when the one waiter's wait is over (it says how many free slots it waits
//! for, so that it is not woken at every release).

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

pub(super) struct Slots {
    total: usize,
    free: AtomicUsize,
    /// How many free slots the waiter waits for; 0 when nobody waits.
    want: AtomicUsize,
    freed: Notify,
}

impl Slots {
    pub(super) fn new(total: usize) -> Self {
        Slots {
            total,
            free: AtomicUsize::new(total),
            want: AtomicUsize::new(0),
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

    /// Takes `n` slots, which must be free (seen by [`free`](Slots::free) or waited for):
    /// only one task takes slots, and the others only free them.
    pub(super) fn take(&self, n: usize) {
        let before = self.free.fetch_sub(n, SeqCst);
        debug_assert!(before >= n, "took {n} slots of {before} free");
    }

    /// Frees `n` slots.
    pub(super) fn release(&self, n: usize) {
        let now = self.free.fetch_add(n, SeqCst) + n;
        debug_assert!(now <= self.total, "more slots freed than taken");
        // Paired with `until`: it sets `want` and then reads `free`, this adds to `free`
        // and then reads `want` (all sequentially consistent), so either it sees the
        // slots or this sees it waiting.
        let want = self.want.load(SeqCst);
        if want != 0 && now >= want && self.want.swap(0, SeqCst) != 0 {
            self.freed.notify_one();
        }
    }

    /// Waits until at least `n` slots (at least one, at most all) are free, without taking
    /// them. Only one task may wait at a time. Cancellation safe.
    pub(super) async fn until_free(&self, n: usize) {
        let n = n.clamp(1, self.total);
        loop {
            if self.free.load(SeqCst) >= n {
                return;
            }
            let mut notified = pin!(self.freed.notified());
            notified.as_mut().enable();
            self.want.store(n, SeqCst);
            if self.free.load(SeqCst) >= n {
                self.want.store(0, SeqCst);
                return;
            }
            notified.await;
        }
    }

    /// Waits until every slot is free.
    pub(super) async fn all_free(&self) {
        self.until_free(self.total).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_wakes_once_as_many_as_it_waits_for_are_free() {
        let slots = Arc::new(Slots::new(4));
        slots.take(4);
        assert_eq!(slots.taken(), 4);

        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.until_free(2).await }
        });
        tokio::task::yield_now().await;
        slots.release(1);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "woke with one free of the two waited for"
        );
        slots.release(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("two free slots did not wake the waiter")
            .unwrap();

        let drain = tokio::spawn({
            let slots = slots.clone();
            async move { slots.all_free().await }
        });
        slots.release(1);
        tokio::task::yield_now().await;
        assert!(!drain.is_finished(), "all free with one still taken");
        slots.release(1);
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("the last release did not wake the drain")
            .unwrap();
        assert_eq!(slots.free(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn releases_from_other_threads_always_wake_the_waiter() {
        let slots = Arc::new(Slots::new(2));
        let rounds = async {
            for _ in 0..20_000 {
                slots.until_free(2).await;
                slots.take(2);
                for _ in 0..2 {
                    let slots = slots.clone();
                    tokio::spawn(async move { slots.release(1) });
                }
            }
            slots.all_free().await;
        };
        tokio::time::timeout(Duration::from_secs(20), rounds)
            .await
            .expect("a release was lost");
    }
}

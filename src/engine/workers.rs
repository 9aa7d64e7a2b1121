//! Worker tasks that take fetched deliveries from one queue and run them one after
//! another, so that a message pays for no task of its own and, while the queue holds
//! work, for no wake-up either: a worker that finished a message takes the next itself.
//!
//! There are never more workers than the concurrency, and a worker runs one message at a
//! time: that is the concurrency bound. Workers are started (spawned, or woken when idle)
//! one at a time: when deliveries are queued and no started worker has come for them
//! yet, one more is started, and each one that comes starts the next while work is left.
//! A burst of quick messages is run by the few workers it takes, not by one woken per
//! message; slow ones soon have every worker busy. At most [`MAX_IDLE`] wait idle (the
//! others end), so that a burst under a high concurrency limit does not keep its workers
//! for as long as serving lasts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::dispatch::Dispatch;
use super::slots::Slots;
use super::{Delivery, Source};
use crate::Receiver;

/// How many idle workers wait for messages at most.
const MAX_IDLE: usize = 256;

/// The queue of fetched deliveries and the workers' states, apart from the receiver (so
/// that the engine can count what is queued without knowing it).
pub(super) struct Pool<T> {
    limit: usize,
    shared: Mutex<Shared<T>>,
}

struct Shared<T> {
    /// Fetched, not started, in the order fetched.
    queue: VecDeque<Delivery<T>>,
    /// The idle workers' wake-up signals, the last idle first (its memory is warmest).
    idle: Vec<Arc<Notify>>,
    /// Worker tasks alive.
    workers: usize,
    /// Workers started (spawned or woken) that have not come for a delivery yet.
    coming: usize,
    /// Serving ended: workers stop instead of waiting.
    closed: bool,
}

/// A worker to start.
enum Start {
    Spawn,
    Wake(Arc<Notify>),
}

/// What a worker does next.
enum Next<T> {
    Run(Delivery<T>),
    Wait,
    Stop,
}

impl<T> Pool<T> {
    pub(super) fn new(limit: usize) -> Self {
        Pool {
            limit,
            shared: Mutex::new(Shared {
                queue: VecDeque::new(),
                idle: Vec::new(),
                workers: 0,
                coming: 0,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<T>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many deliveries wait for a worker.
    pub(super) fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Takes every delivery that waits for a worker (serving stops).
    pub(super) fn take_queued(&self) -> VecDeque<Delivery<T>> {
        std::mem::take(&mut self.lock().queue)
    }

    /// Queues `deliveries`; the worker to start for them, if one is needed.
    fn push(&self, deliveries: impl Iterator<Item = Delivery<T>>) -> Option<Start> {
        let mut shared = self.lock();
        shared.queue.extend(deliveries);
        if shared.queue.is_empty() {
            return None;
        }
        shared.start(self.limit)
    }

    /// The next delivery for a worker (`arrived`: it was just started), or that it waits or
    /// stops; and a worker to start when work is left.
    fn next(&self, arrived: bool, signal: &Arc<Notify>) -> (Next<T>, Option<Start>) {
        let mut shared = self.lock();
        if arrived {
            shared.coming -= 1;
        }
        if let Some(delivery) = shared.queue.pop_front() {
            let start = if shared.queue.is_empty() {
                None
            } else {
                shared.start(self.limit)
            };
            return (Next::Run(delivery), start);
        }
        if shared.closed || shared.idle.len() >= MAX_IDLE {
            shared.workers -= 1;
            return (Next::Stop, None);
        }
        shared.idle.push(signal.clone());
        (Next::Wait, None)
    }
}

impl<T> Shared<T> {
    /// One more worker for the queue, unless one is on its way already or every worker is
    /// busy (each comes back for the queue when its message is done).
    fn start(&mut self, limit: usize) -> Option<Start> {
        if self.coming > 0 {
            return None;
        }
        let start = match self.idle.pop() {
            Some(signal) => Start::Wake(signal),
            None if self.workers < limit => {
                self.workers += 1;
                Start::Spawn
            }
            None => return None,
        };
        self.coming += 1;
        Some(start)
    }
}

/// Where a worker is, for [`Leaving`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started, not come for a delivery yet: counted in [`Shared::coming`].
    Coming,
    Running,
    /// Idle, or taken out of the idle ones to be started (then counted as coming).
    Waiting,
    /// Counted itself out.
    Gone,
}

/// Takes a worker out of the pool when its task ends however it ends (a runtime shutting
/// down drops tasks mid-await), so that no wake-up is sent to it and the counts stay true.
struct Leaving<'a, T> {
    pool: &'a Pool<T>,
    signal: Arc<Notify>,
    state: State,
}

impl<T> Drop for Leaving<'_, T> {
    fn drop(&mut self) {
        if self.state == State::Gone {
            return;
        }
        let mut shared = self.pool.lock();
        shared.workers -= 1;
        let was_idle = shared.idle.len();
        shared.idle.retain(|s| !Arc::ptr_eq(s, &self.signal));
        let coming = match self.state {
            State::Coming => true,
            State::Waiting => shared.idle.len() == was_idle,
            State::Running | State::Gone => false,
        };
        if coming {
            shared.coming -= 1;
        }
    }
}

/// A slot a worker holds while it runs a message: freed when dropped, so that a worker
/// dropped mid-message (by a runtime shutting down) frees it too.
struct Holding<'a>(&'a Slots);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.release(1);
    }
}

/// Replaces a worker that a panic ends (one the engine could not catch: its own bug, or
/// user code it runs outside the receiver's guard). Without it, the deliveries queued
/// behind that worker's message would wait for a worker that never comes when the others
/// are idle, or when there are no others (concurrency 1): the server would stall. (The
/// message it was running is settled as a failed attempt by the dispatch's own guard.)
struct Replaced<'a, S: Source, R: Receiver + 'static>(&'a Arc<Workers<S, R>>);

impl<S: Source, R: Receiver + 'static> Drop for Replaced<'_, S, R> {
    fn drop(&mut self) {
        // Not when the runtime drops the task (shutting down): only when unwinding.
        if std::thread::panicking() {
            self.0.replace();
        }
    }
}

/// The workers of one serve: the pool, and what running a message takes.
pub(super) struct Workers<S: Source, R> {
    dispatch: Arc<Dispatch<S, R>>,
    pool: Arc<Pool<S::Token>>,
    /// Each queued or running delivery holds one; a worker frees it when its message is
    /// settled.
    slots: Arc<Slots>,
}

impl<S: Source, R: Receiver + 'static> Workers<S, R> {
    pub(super) fn new(
        dispatch: Arc<Dispatch<S, R>>,
        pool: Arc<Pool<S::Token>>,
        slots: Arc<Slots>,
    ) -> Arc<Self> {
        Arc::new(Workers {
            dispatch,
            pool,
            slots,
        })
    }

    pub(super) fn dispatch(&self) -> &Arc<Dispatch<S, R>> {
        &self.dispatch
    }

    /// Queues fetched deliveries, each holding a slot the caller took, for the workers.
    pub(super) fn run(self: &Arc<Self>, deliveries: impl Iterator<Item = Delivery<S::Token>>) {
        if let Some(start) = self.pool.push(deliveries) {
            self.start(start);
        }
    }

    fn start(self: &Arc<Self>, start: Start) {
        match start {
            Start::Wake(signal) => signal.notify_one(),
            // A spawned task is dropped before its first poll only when the runtime shuts
            // down, which ends serving too.
            Start::Spawn => {
                tokio::spawn(self.clone().work());
            }
        }
    }

    /// A worker: runs queued deliveries until serving ends.
    async fn work(self: Arc<Self>) {
        // Declared before `me`, so dropped after it has counted this worker out.
        let _replaced = Replaced(&self);
        let signal = Arc::new(Notify::new());
        let mut me = Leaving {
            pool: &self.pool,
            signal: signal.clone(),
            state: State::Coming,
        };
        let mut origin = self.dispatch.origin();
        loop {
            let (next, start) = self.pool.next(me.state == State::Coming, &signal);
            if let Some(start) = start {
                self.start(start);
            }
            match next {
                Next::Run(delivery) => {
                    me.state = State::Running;
                    let _slot = Holding(&self.slots);
                    self.dispatch.run_message(delivery, &origin).await;
                    if origin.is_spent() {
                        origin = self.dispatch.origin();
                    }
                }
                // Woken only by `start` (or `close`), which took it out of the idle ones.
                Next::Wait => {
                    me.state = State::Waiting;
                    signal.notified().await;
                    me.state = State::Coming;
                }
                Next::Stop => {
                    me.state = State::Gone;
                    return;
                }
            }
        }
    }

    /// Starts a worker for what is queued, when no other is on its way or free to come
    /// back for it: after a worker was lost to a panic.
    fn replace(self: &Arc<Self>) {
        let start = {
            let mut shared = self.pool.lock();
            if shared.closed || shared.queue.is_empty() {
                return;
            }
            shared.start(self.pool.limit)
        };
        if let Some(start) = start {
            self.start(start);
        }
    }

    /// Stops the idle workers, and the busy ones once the queue is empty.
    pub(super) fn close(&self) {
        let idle = {
            let mut shared = self.pool.lock();
            shared.closed = true;
            // Each comes back as started and finds the pool closed.
            shared.coming += shared.idle.len();
            std::mem::take(&mut shared.idle)
        };
        for signal in idle {
            signal.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn deliveries(ids: std::ops::RangeInclusive<u64>) -> impl Iterator<Item = Delivery<u64>> {
        ids.map(|id| Delivery::new(id, Bytes::new()))
    }

    fn runs(next: Next<u64>) -> Option<u64> {
        match next {
            Next::Run(d) => Some(d.token),
            Next::Wait | Next::Stop => None,
        }
    }

    #[test]
    fn workers_are_started_one_at_a_time_while_work_is_left_and_never_past_the_limit() {
        let pool = Pool::new(3);
        let (a, b, c) = (
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        );
        assert!(matches!(pool.push(deliveries(1..=4)), Some(Start::Spawn)));
        assert!(
            pool.push(deliveries(5..=5)).is_none(),
            "a second worker started before the first came"
        );
        // A comes, takes 1 and starts B, for the work left.
        let (next, start) = pool.next(true, &a);
        assert_eq!(runs(next), Some(1));
        assert!(matches!(start, Some(Start::Spawn)));
        // A is done before B comes: it takes 2 itself, and starts nobody (B is coming).
        let (next, start) = pool.next(false, &a);
        assert_eq!(runs(next), Some(2));
        assert!(start.is_none());
        // B comes and starts C; C comes, and a fourth would pass the limit of three.
        let (next, start) = pool.next(true, &b);
        assert_eq!(runs(next), Some(3));
        assert!(matches!(start, Some(Start::Spawn)));
        let (next, start) = pool.next(true, &c);
        assert_eq!(runs(next), Some(4));
        assert!(start.is_none(), "a fourth worker with a limit of three");
        let (next, _) = pool.next(false, &a);
        assert_eq!(runs(next), Some(5));
        // Nothing left: they go idle, and new work wakes the last one idle.
        assert!(matches!(pool.next(false, &b).0, Next::Wait));
        assert!(matches!(pool.next(false, &a).0, Next::Wait));
        assert_eq!(pool.queued(), 0);
        match pool.push(deliveries(6..=6)) {
            Some(Start::Wake(signal)) => assert!(Arc::ptr_eq(&signal, &a)),
            _ => panic!("an idle worker was not woken for new work"),
        }
        assert_eq!(pool.queued(), 1);
        assert_eq!(runs(pool.next(true, &a).0), Some(6));
    }

    #[test]
    fn a_worker_dropped_anywhere_leaves_the_counts_true() {
        let pool = Pool::<u64>::new(1);
        let leaves = |signal: &Arc<Notify>, state| {
            drop(Leaving {
                pool: &pool,
                signal: signal.clone(),
                state,
            })
        };
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        // Dropped before it came: another is started for the work.
        assert!(matches!(pool.push(deliveries(1..=1)), Some(Start::Spawn)));
        leaves(&a, State::Coming);
        assert!(matches!(pool.push(deliveries(2..=2)), Some(Start::Spawn)));
        let (next, start) = pool.next(true, &a);
        assert_eq!(runs(next), Some(1));
        assert!(start.is_none(), "a second worker with a limit of one");
        assert_eq!(runs(pool.next(false, &a).0), Some(2));
        assert!(matches!(pool.next(false, &a).0, Next::Wait));
        // Dropped while idle: never woken, and its place is free for a new worker.
        leaves(&a, State::Waiting);
        assert!(matches!(pool.push(deliveries(3..=3)), Some(Start::Spawn)));
        assert_eq!(runs(pool.next(true, &b).0), Some(3));
        assert!(matches!(pool.next(false, &b).0, Next::Wait));
        // Dropped after it was woken, before it came.
        assert!(matches!(pool.push(deliveries(4..=4)), Some(Start::Wake(_))));
        leaves(&b, State::Waiting);
        assert!(matches!(pool.push(deliveries(5..=5)), Some(Start::Spawn)));
        // Dropped while running: its place is free.
        assert_eq!(runs(pool.next(true, &a).0), Some(4));
        leaves(&a, State::Running);
        assert!(matches!(pool.push(deliveries(6..=6)), Some(Start::Spawn)));
        assert_eq!(pool.queued(), 2);
        let shared = pool.lock();
        assert_eq!(
            (shared.workers, shared.coming, shared.idle.len()),
            (1, 1, 0)
        );
    }
}

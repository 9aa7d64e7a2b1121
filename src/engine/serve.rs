//! The serve loop: fetch, dispatch under a concurrency bound, settle, shut down.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatch;
use super::health::HealthCell;
use super::settle::{Settler, settle_channel};
use super::slots::Slots;
use super::workers::{Pool, Workers};
use super::{Delivery, Health, HealthState, ServerConfig, Settle, Source};
use crate::backoff::Delays;
use crate::receiver::catch_panic_of;
use crate::{Error, Receiver, Server, log};

/// A [`Server`] built from a [`Source`]: the delivery engine.
///
/// Cloning gives another handle to the same server, so one task can serve while another
/// calls [`shutdown`](Server::shutdown) or [`health`](Engine::health).
pub struct Engine<S: Source> {
    inner: Arc<Inner<S>>,
}

impl<S: Source> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Source> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("source", &self.inner.name)
            .field("config", &self.inner.config)
            .field("health", &self.health())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Idle,
    Serving,
    Closed,
}

struct Inner<S: Source> {
    source: Arc<S>,
    name: Arc<str>,
    config: ServerConfig,
    state: Mutex<RunState>,
    /// Stops fetching: shutdown has begun.
    stop: CancellationToken,
    /// Cancels the receivers' contexts: the shutdown deadline passed.
    cancel: CancellationToken,
    /// Becomes true once serving has fully stopped.
    done: watch::Sender<bool>,
    /// One slot per delivery that may be held: the concurrency plus the prefetch.
    slots: Arc<Slots>,
    /// Fetched deliveries waiting for a worker.
    pool: Arc<Pool<S::Token>>,
    health: Arc<HealthCell>,
}

impl<S: Source> Engine<S> {
    /// A server that serves from `source` as `config` says.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first setting out of range.
    pub fn new(source: S, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let name: Arc<str> = source.name().into();
        Ok(Engine {
            inner: Arc::new(Inner {
                source: Arc::new(source),
                name,
                slots: Arc::new(Slots::new(
                    config.concurrency + config.prefetch_or_default(),
                )),
                pool: Arc::new(Pool::new(config.concurrency)),
                config,
                state: Mutex::new(RunState::Idle),
                stop: CancellationToken::new(),
                cancel: CancellationToken::new(),
                done: watch::Sender::new(false),
                health: Arc::new(HealthCell::new()),
            }),
        })
    }

    /// The source this server serves from.
    pub fn source(&self) -> &S {
        &self.inner.source
    }

    /// The configuration this server was built with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// A snapshot of the server's health.
    pub fn health(&self) -> Health {
        // Held and not queued: running.
        let held = self.inner.slots.taken();
        let in_flight = held.saturating_sub(self.inner.pool.queued());
        self.inner.health.snapshot(in_flight)
    }
}

impl<S: Source> Inner<S> {
    fn run_state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self) {
        *self.run_state() = RunState::Closed;
        self.stop.cancel();
        self.health.set_state(HealthState::Closed);
        self.done.send_replace(true);
    }
}

/// Marks the server closed however `serve` ends, even when its future is dropped.
struct FinishGuard<'a, S: Source>(&'a Inner<S>);

impl<S: Source> Drop for FinishGuard<'_, S> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl<S: Source> Server for Engine<S> {
    async fn serve<R: Receiver + 'static>(&self, receiver: R) -> Result<(), Error> {
        let inner = &*self.inner;
        {
            let mut state = inner.run_state();
            match *state {
                RunState::Serving => return Err(Error::AlreadyServing),
                RunState::Closed => return Err(Error::ServerClosed),
                RunState::Idle if inner.stop.is_cancelled() => return Err(Error::ServerClosed),
                RunState::Idle => *state = RunState::Serving,
            }
        }
        let _guard = FinishGuard(inner);
        inner.health.set_state(HealthState::Serving);
        inner.run(receiver).await;
        Err(Error::ServerClosed)
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        let inner = &*self.inner;
        {
            let mut state = inner.run_state();
            if *state == RunState::Idle {
                *state = RunState::Closed;
                drop(state);
                inner.finish();
                return Ok(());
            }
        }
        inner.stop.cancel();
        let mut done = inner.done.subscribe();
        // `wait_for` only fails if the sender is gone, and `inner` owns it.
        let in_time = tokio::time::timeout(grace, done.wait_for(|d| *d))
            .await
            .is_ok();
        if in_time {
            return Ok(());
        }
        inner.cancel.cancel();
        let _ = done.wait_for(|d| *d).await;
        Err(Error::DeadlineExceeded)
    }
}

impl<S: Source> Inner<S> {
    async fn run<R: Receiver + 'static>(&self, receiver: R) {
        let batch_size = self
            .config
            .settle_batch_size(self.source.stops_at_in_flight_limit());
        let (settle_tx, settle_rx) = settle_channel(batch_size);
        let finish_settling = CancellationToken::new();
        let settler = tokio::spawn(
            Settler {
                source: self.source.clone(),
                health: self.health.clone(),
                batch_size,
                interval: self.config.ack_interval,
                retries: self.config.settle_retries,
                backoff: self.config.reconnect,
            }
            .run(settle_rx, finish_settling.clone()),
        );
        let abort = CancellationToken::new();
        let dispatch = Arc::new(Dispatch::<S, R> {
            receiver,
            name: self.name.clone(),
            settle_tx,
            cancel: self.cancel.clone(),
            abort: abort.clone(),
            max_attempts: self.config.max_attempts,
            dead_letter: self.config.dead_letter.clone(),
            dead_letter_retry: self.config.reconnect.initial(),
            not_before: self.source.not_before(),
            dead_letters: self.source.dead_letters(),
            meter: super::meter::Meter::new(&self.name),
        });

        let workers = Workers::new(dispatch, self.pool.clone(), self.slots.clone());
        self.fetch_loop(&workers).await;

        self.health.set_state(HealthState::Draining);
        let abandoned = self.drain(&abort).await;
        // Idle workers end now; an abandoned one ends when its receiver returns.
        workers.close();
        drop(workers);
        if abandoned {
            finish_settling.cancel();
        }
        // The settler ends once every task's sender is gone (or at once when told to finish).
        let _ = settler.await;
        self.close().await;
    }

    /// Closes the source. Once the shutdown deadline has passed (the contexts were
    /// cancelled), the close gets `cancel_grace`, as an abandoned receiver does, and is then
    /// given up with a warning: a close that cannot finish (a broker that stopped answering
    /// a last commit) must not keep `shutdown` from returning.
    async fn close(&self) {
        let close = catch_panic_of("the source's close", || self.source.close());
        let deadline_passed = async {
            self.cancel.cancelled().await;
            tokio::time::sleep(self.config.cancel_grace).await;
        };
        tokio::select! {
            biased;
            closed = close => {
                if let Err(e) = closed {
                    log::warning!("msgio: closing source {:?} failed: {e}", self.name);
                }
            }
            () = deadline_passed => log::warning!(
                "msgio: closing source {:?} did not finish within the shutdown deadline and {:?} more; given up",
                self.name,
                self.config.cancel_grace
            ),
        }
    }

    /// Fetches and queues for the workers until shutdown begins.
    ///
    /// A fetch asks for as many deliveries as there are free slots (the concurrency plus
    /// the prefetch, less what is queued or running), and starts once a worker could take
    /// one more with the whole prefetch behind it: while the workers run what the last
    /// fetch brought, and never for a few deliveries at a time.
    async fn fetch_loop<R: Receiver + 'static>(&self, workers: &Arc<Workers<S, R>>) {
        let dispatch = workers.dispatch();
        let ahead = self.config.prefetch_or_default().saturating_add(1);
        let mut buf: Vec<Delivery<S::Token>> = Vec::new();
        let mut delays = self.config.reconnect.delays();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = self.slots.until_free(ahead) => {}
            }
            let room = self.slots.free();
            let fetched = tokio::select! {
                biased;
                // A source may have appended some before it was stopped: released below.
                _ = self.stop.cancelled() => break,
                // A transport's code: a panic in it is a failed fetch (backed off and
                // tried again), not a panic out of `serve`.
                result = catch_panic_of("the source's fetch", || self.source.fetch(room, &mut buf)) => result,
            };
            match &fetched {
                Ok(()) => {
                    self.health.success();
                    delays.reset();
                }
                Err(e) => self.health.failure(e),
            }
            if buf.len() > room {
                log::warning!(
                    "msgio: source {:?} returned {} deliveries when asked for {room}; releasing the rest",
                    self.name,
                    buf.len()
                );
                for d in buf.drain(room..) {
                    dispatch.settle(d.token, Settle::Release);
                }
            }
            self.slots.take(buf.len());
            workers.run(buf.drain(..));
            if let Err(e) = fetched {
                if !self.recover(&e, &mut delays).await {
                    break;
                }
            }
        }
        // Fetched ahead but never started: given back untouched.
        let queued = self.pool.take_queued();
        let n = queued.len();
        for d in queued.into_iter().chain(buf.drain(..)) {
            dispatch.settle(d.token, Settle::Release);
        }
        self.slots.release(n);
    }

    /// Waits out a failed fetch: reconnects after a lost connection, otherwise just backs
    /// off. Returns false when shutdown began meanwhile.
    async fn recover(&self, error: &Error, delays: &mut Delays) -> bool {
        if !error.is_connection_lost() {
            log::warning!("msgio: fetching from {:?} failed: {error}", self.name);
            return self.sleep_unless_stopped(delays.next_delay()).await;
        }
        log::warning!("msgio: {error} on {:?}; reconnecting", self.name);
        self.health.set_state(HealthState::Reconnecting);
        loop {
            if !self.sleep_unless_stopped(delays.next_delay()).await {
                return false;
            }
            let result = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return false,
                result = catch_panic_of("the source's reconnect", || self.source.reconnect()) => result,
            };
            match result {
                Ok(()) => {
                    log::notice!("msgio: reconnected to {:?}", self.name);
                    self.health.set_state(HealthState::Serving);
                    return true;
                }
                Err(e) => {
                    log::warning!("msgio: reconnecting to {:?} failed: {e}", self.name);
                    self.health.failure(&e);
                }
            }
        }
    }

    async fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Waits for every in-flight message to finish. After the shutdown deadline cancelled
    /// the contexts, receivers get `cancel_grace` to return; then they are abandoned and
    /// their messages released, and they get `cancel_grace` once more to settle. Returns
    /// whether some never did.
    async fn drain(&self, abort: &CancellationToken) -> bool {
        let grace = self.config.cancel_grace;
        tokio::select! {
            biased;
            _ = self.slots.all_free() => return false,
            _ = self.cancel.cancelled() => {}
        }
        if tokio::time::timeout(grace, self.slots.all_free())
            .await
            .is_ok()
        {
            return false;
        }
        abort.cancel();
        if tokio::time::timeout(grace, self.slots.all_free())
            .await
            .is_ok()
        {
            return false;
        }
        log::warning!(
            "msgio: {} receivers on {:?} ignored cancellation and blocked their thread; abandoning them",
            self.slots.taken(),
            self.name
        );
        true
    }
}

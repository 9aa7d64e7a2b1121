//! The serve loop: fetch, dispatch under a concurrency bound, settle, shut down.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::health::HealthCell;
use super::settle::{SettleSender, Settler, settle_channel};
use super::slots::Slots;
use super::workers::{Pool, Workers};
use super::{Delivery, Health, HealthState, ServerConfig, Settle, Settlement, Source};
use crate::backoff::Delays;
use crate::context::Origin;
use crate::dead_letter::{Fate, Published};
use crate::receiver::catch_panic;
use crate::{
    Attributes, BoxTopic, Context, Error, Message, MessageId, Receiver, Server, keys, log,
};

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

/// What every message shares.
pub(super) struct Dispatch<S: Source, R> {
    receiver: R,
    name: Arc<str>,
    settle_tx: SettleSender<S::Token>,
    /// Cancels the receivers' contexts.
    cancel: CancellationToken,
    abort: CancellationToken,
    max_attempts: Option<u32>,
    dead_letter: Option<BoxTopic>,
    dead_letter_retry: Duration,
    /// The source's deliveries may carry a not-before time.
    not_before: bool,
}

impl<S: Source> Inner<S> {
    async fn run<R: Receiver + 'static>(&self, receiver: R) {
        let (settle_tx, settle_rx) = settle_channel(self.config.ack_batch_size);
        let finish_settling = CancellationToken::new();
        let settler = tokio::spawn(
            Settler {
                source: self.source.clone(),
                health: self.health.clone(),
                batch_size: self.config.ack_batch_size,
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
        if let Err(e) = self.source.close().await {
            log::warning!("msgio: closing source {:?} failed: {e}", self.name);
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
                result = self.source.fetch(room, &mut buf) => result,
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
                result = self.source.reconnect() => result,
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

impl<S: Source, R: Receiver> Dispatch<S, R> {
    fn settle(&self, token: S::Token, action: Settle) {
        self.settle_tx.send(Settlement { token, action });
    }

    /// What the contexts of the messages a worker runs share: each worker makes its own,
    /// so that the count of its references stays in its core's cache.
    ///
    /// Its token is a child of the engine's: the shutdown deadline cancels it, while a
    /// receiver that cancels its context cancels only this token, never the engine's (a
    /// callee cannot cancel its caller). A worker makes a new origin after a message whose
    /// context was cancelled or outlived it ([`Origin::is_spent`]), so that cancelling one
    /// message's context never reaches another's.
    pub(super) fn origin(&self) -> Arc<Origin> {
        Origin::new(self.cancel.child_token(), Some(self.name.clone()))
    }

    /// Runs one delivery to its settlement, with contexts sharing `origin`.
    pub(super) async fn run_message(&self, delivery: Delivery<S::Token>, origin: &Arc<Origin>) {
        let Delivery {
            token,
            message_id,
            attempt,
            attributes,
            body,
            malformed,
            ..
        } = delivery;
        let action = match malformed {
            None => {
                self.handle(origin, message_id, attempt, attributes, body)
                    .await
            }
            Some(why) => {
                let reason = format!("malformed delivery: {why}");
                let kept = Some((attributes, body));
                Box::pin(self.give_up(reason, message_id, attempt, kept)).await
            }
        };
        self.settle(token, action);
    }

    /// Runs the receiver and decides the message's fate.
    async fn handle(
        &self,
        origin: &Arc<Origin>,
        message_id: Option<MessageId>,
        attempt: u32,
        attributes: Attributes,
        body: Bytes,
    ) -> Settle {
        if self.not_before {
            if let Some(delay) = self.not_due(message_id.as_ref(), &attributes) {
                return Settle::Defer { delay };
            }
        }
        let mut ctx = Context::with_origin(origin.clone()).with_attempt(attempt);
        if let Some(id) = &message_id {
            ctx = ctx.with_message_id(id.clone());
        }
        // With a dead-letter topic the originals stay for it (shared, not copied); without
        // one the message simply moves on.
        let (message, kept) = if self.dead_letter.is_some() {
            let message = Message::from_parts(attributes.clone(), body.clone());
            (message, Some((attributes, body)))
        } else {
            (Message::from_parts(attributes, body), None)
        };
        let result = tokio::select! {
            biased;
            result = catch_panic(|| self.receiver.receive(ctx, message)) => result,
            // Abandoned after the shutdown deadline: a failed attempt.
            _ = self.abort.cancelled() => return Settle::Nack { delay: None },
        };
        let error = match result {
            Ok(()) => return Settle::Ack,
            Err(e) => e,
        };
        let reason = match crate::dead_letter::fate(&error, attempt, self.max_attempts) {
            Fate::Retry(delay) => return Settle::Nack { delay },
            Fate::GiveUp(reason) => reason,
        };
        self.give_up(reason, message_id, attempt, kept).await
    }

    /// A message that will not be retried: dead-lettered, or rejected with a warning when
    /// there is no dead-letter topic.
    async fn give_up(
        &self,
        reason: String,
        message_id: Option<MessageId>,
        attempt: u32,
        kept: Option<(Attributes, Bytes)>,
    ) -> Settle {
        let (Some(topic), Some((attributes, body))) = (&self.dead_letter, kept) else {
            log::warning!(
                "msgio: dropping message {} from {:?} after attempt {attempt}: {reason} (no dead-letter topic)",
                display_id(message_id.as_ref()),
                self.name
            );
            return Settle::Reject;
        };
        // Boxed: the rare dead-letter path should not grow every message's task.
        Box::pin(self.dead_letter(topic, reason, message_id, attempt, attributes, body)).await
    }

    /// How long until the message is due, when its not-before time is still ahead. A value
    /// that is not a number of milliseconds is ignored with a warning: the message is
    /// delivered rather than held for ever.
    fn not_due(&self, message_id: Option<&MessageId>, attributes: &Attributes) -> Option<Duration> {
        let value = attributes.get(keys::NOT_BEFORE)?;
        let Ok(due) = value.trim().parse::<u64>() else {
            log::warning!(
                "msgio: message {} from {:?} has an unreadable {} {value:?}; delivering it now",
                display_id(message_id),
                self.name,
                keys::NOT_BEFORE
            );
            return None;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (due > now).then(|| Duration::from_millis(due - now))
    }

    /// Publishes the message to the dead-letter topic; a failure retries it later.
    async fn dead_letter(
        &self,
        topic: &BoxTopic,
        reason: String,
        message_id: Option<MessageId>,
        attempt: u32,
        attributes: Attributes,
        body: Bytes,
    ) -> Settle {
        let letter = crate::dead_letter::Letter {
            attributes,
            body,
            reason: &reason,
            attempt,
            source: Some(&self.name),
            message_id: message_id.as_ref(),
        };
        // A child: a dead-letter topic that cancels its context must not abort the server.
        let ctx = Context::with_cancellation_token(self.abort.child_token());
        match crate::dead_letter::publish(topic, &ctx, letter).await {
            Published::Done => Settle::Ack,
            Published::Retry(e) => {
                log::warning!(
                    "msgio: could not dead-letter message {} from {:?} ({e}); it will be retried",
                    display_id(message_id.as_ref()),
                    self.name
                );
                Settle::Nack {
                    delay: Some(self.dead_letter_retry),
                }
            }
            Published::Refused(e) => {
                log::error!(
                    "msgio: the dead-letter topic refuses message {} from {:?} for good ({e}); rejecting it at its source (after: {reason})",
                    display_id(message_id.as_ref()),
                    self.name
                );
                Settle::Reject
            }
        }
    }
}

fn display_id(id: Option<&MessageId>) -> String {
    id.map_or_else(|| "(no id)".to_owned(), ToString::to_string)
}

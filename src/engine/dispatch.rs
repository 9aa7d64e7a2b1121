//! What the engine does with one message: run the receiver under its context, decide its
//! fate from the result (settle, retry, dead-letter) and hand the settlement on. The
//! workers (`workers.rs`) call it; the serve loop (`serve.rs`) builds it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::meter::{Meter, Outcome};
use super::settle::SettleSender;
use super::{Delivery, Settle, Settlement, Source};
use crate::context::Origin;
use crate::dead_letter::{Fate, Published};
use crate::receiver::{catch_panic, drop_quietly};
use crate::{Attributes, BoxTopic, Context, Message, MessageId, Receiver, keys, log};

/// What every message shares.
pub(super) struct Dispatch<S: Source, R> {
    pub(super) receiver: R,
    pub(super) name: Arc<str>,
    pub(super) settle_tx: SettleSender<S::Token>,
    /// Cancels the receivers' contexts.
    pub(super) cancel: CancellationToken,
    pub(super) abort: CancellationToken,
    pub(super) max_attempts: Option<u32>,
    pub(super) dead_letter: Option<BoxTopic>,
    pub(super) dead_letter_retry: Duration,
    /// The source's deliveries may carry a not-before time.
    pub(super) not_before: bool,
    /// The source dead-letters by itself what it is told to ([`Settle::DeadLetter`]).
    pub(super) dead_letters: bool,
    /// The server's metrics (nothing without the `metrics` feature).
    pub(super) meter: Meter,
}

impl<S: Source, R> Dispatch<S, R> {
    pub(super) fn settle(&self, token: S::Token, action: Settle) {
        self.settle_tx.send(Settlement { token, action });
    }
}

impl<S: Source, R: Receiver> Dispatch<S, R> {
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
        let mut unsettled = Unsettled {
            dispatch: self,
            token: Some(token),
        };
        match malformed {
            None => {
                self.handle(
                    origin,
                    message_id,
                    attempt,
                    attributes,
                    body,
                    &mut unsettled,
                )
                .await;
            }
            Some(why) => {
                self.meter.received();
                let reason = format!("malformed delivery: {why}");
                let kept = Some((attributes, body));
                let action = Box::pin(self.give_up(reason, message_id, attempt, kept)).await;
                unsettled.settle(action);
            }
        }
    }

    /// Runs the receiver, decides the message's fate and settles it.
    ///
    /// The settlement goes out before the receiver's future is dropped (when this returns):
    /// a future that panics as it drops, after answering, unwinds through the worker with
    /// its message's fate already decided by its answer. (Dropped earlier, the panic would
    /// leave the message to the `Unsettled` guard, a failed attempt whatever it answered:
    /// at its last attempt, a retry for ever.)
    async fn handle(
        &self,
        origin: &Arc<Origin>,
        message_id: Option<MessageId>,
        attempt: u32,
        attributes: Attributes,
        body: Bytes,
        unsettled: &mut Unsettled<'_, S, R>,
    ) {
        if self.not_before {
            if let Some(delay) = self.not_due(message_id.as_ref(), &attributes) {
                unsettled.settle(Settle::Defer { delay });
                return;
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
        self.meter.received();
        let started = self.meter.start();
        // Pinned before the select rather than made inside it: the select moves what it
        // is given into a tuple, and the receiver's future is the largest thing here.
        let receiving = catch_panic(|| self.receiver.receive(ctx, message));
        tokio::pin!(receiving);
        let result = tokio::select! {
            biased;
            result = &mut receiving => result,
            // Abandoned after the shutdown deadline: a failed attempt.
            _ = self.abort.cancelled() => {
                self.meter.handled(started, false);
                self.meter.settled(Outcome::Retried);
                unsettled.settle(Settle::Nack { delay: None });
                return;
            }
        };
        self.meter.handled(
            started,
            matches!(result, Err(crate::Error::Panicked { .. })),
        );
        let action = match result {
            Ok(()) => {
                self.meter.settled(Outcome::Acked);
                Settle::Ack
            }
            Err(error) => self.fate_of(error, message_id, attempt, kept).await,
        };
        unsettled.settle(action);
    }

    /// What becomes of a message its receiver failed.
    async fn fate_of(
        &self,
        error: crate::Error,
        message_id: Option<MessageId>,
        attempt: u32,
        kept: Option<(Attributes, Bytes)>,
    ) -> Settle {
        let fate = crate::dead_letter::fate(&error, attempt, self.max_attempts);
        // The error is the receiver's: dropped here, a panic in its `Drop` cannot undo
        // the fate it was given.
        drop_quietly(error, "a receiver's error");
        let reason = match fate {
            Fate::Retry(delay) => {
                self.meter.settled(Outcome::Retried);
                return Settle::Nack { delay };
            }
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
        if self.dead_letter.is_none() && self.dead_letters {
            self.meter.settled(Outcome::DeadLettered);
            return Settle::DeadLetter { reason };
        }
        let (Some(topic), Some((attributes, body))) = (&self.dead_letter, kept) else {
            log::warning!(
                "msgio: dropping message {} from {:?} after attempt {attempt}: {reason} (no dead-letter topic)",
                display_id(message_id.as_ref()),
                self.name
            );
            self.meter.settled(Outcome::Rejected);
            return Settle::Reject;
        };
        // Boxed: the rare dead-letter path should not grow every message's task.
        let settle =
            Box::pin(self.dead_letter(topic, reason, message_id, attempt, attributes, body)).await;
        self.meter.settled(match settle {
            Settle::Ack => Outcome::DeadLettered,
            Settle::Nack { .. } => Outcome::Retried,
            _ => Outcome::Rejected,
        });
        settle
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
        let ctx = Context::from_cancellation_token(self.abort.child_token());
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

/// The token of a message being run. A panic the engine could not catch (in user code it
/// runs outside the receiver's guard, or its own bug) settles it as a failed attempt on
/// the way out, rather than leave it unacknowledged while the server goes on (holding a
/// RabbitMQ prefetch place, or a PostgreSQL lease kept alive).
struct Unsettled<'a, S: Source, R> {
    dispatch: &'a Dispatch<S, R>,
    token: Option<S::Token>,
}

impl<S: Source, R> Unsettled<'_, S, R> {
    /// Hands the message's settlement on: from now on, a panic leaves it settled.
    fn settle(&mut self, action: Settle) {
        if let Some(token) = self.token.take() {
            self.dispatch.settle(token, action);
        }
    }
}

impl<S: Source, R> Drop for Unsettled<'_, S, R> {
    fn drop(&mut self) {
        // Not when the runtime drops the task (shutting down): the source gives back what
        // it did not settle when it closes.
        if let Some(token) = self.token.take() {
            if std::thread::panicking() {
                log::error!(
                    "msgio: a panic in {:?} outside the receiver; the message counts a failed attempt",
                    self.dispatch.name
                );
                self.dispatch.settle(token, Settle::Nack { delay: None });
            }
        }
    }
}

fn display_id(id: Option<&MessageId>) -> String {
    id.map_or_else(|| "(no id)".to_owned(), ToString::to_string)
}

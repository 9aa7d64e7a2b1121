//! The delivery engine every broker-backed server is built on.
//!
//! A transport adapter implements [`Source`]: fetch deliveries, settle them, reconnect. The
//! [`Engine`] does the rest, once for every transport:
//!
//! - bounded concurrency and prefetch ([`ServerConfig::concurrency`],
//!   [`ServerConfig::prefetch`]);
//! - the fate of each message from its receiver's result: ack, nack (with a delay), reject,
//!   dead-letter after [`ServerConfig::max_attempts`] to [`ServerConfig::dead_letter`];
//! - panic isolation: a panicking receiver is a failed attempt, never a dead server;
//! - settling in batches, flushed by count and by a short interval;
//! - graceful shutdown with a deadline that cancels the receivers' contexts;
//! - reconnection with exponential backoff and jitter when the source reports
//!   [`Error::ConnectionLost`];
//! - [`Engine::health`].
//!
//! Its public items are documented where a transport author finds them, in
//! [`transport`](crate::transport) (and [`ServerConfig`], [`Health`] at the crate root).

mod config;
mod delivery;
mod dispatch;
mod health;
mod meter;
mod serve;
mod settle;
mod slots;
#[cfg(test)]
mod tests;
mod workers;

use std::future::Future;
use std::time::Duration;

pub use config::ServerConfig;
pub use delivery::{Delivery, Settle, Settlement};
pub use health::{Health, HealthState};
pub use serve::Engine;

use crate::{Attributes, Error};

/// What a transport supplies to the [`Engine`]: deliveries, and a way to settle them.
///
/// The engine calls `fetch` from one task at a time and `settle` from another, possibly
/// concurrently with `fetch`.
pub trait Source: Send + Sync + 'static {
    /// What identifies a delivery when settling it (a delivery tag, a stream entry id).
    type Token: Send + 'static;

    /// The name receivers see as [`Context::source`](crate::Context::source): a queue, stream
    /// or subject.
    fn name(&self) -> &str;

    /// Appends up to `max` deliveries to `out`, waiting until at least one is available or an
    /// internal poll interval passes (returning none is fine). Deliveries beyond `max` are
    /// settled with [`Settle::Release`] at once, with a warning.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] makes the engine call [`reconnect`](Source::reconnect) with
    /// backoff; any other error is retried with backoff. A panic in `fetch` (or in
    /// `reconnect`, or `close`) is taken as an error of the other kind, not let out of
    /// [`serve`](crate::Server::serve).
    ///
    /// # Cancellation safety
    ///
    /// The engine drops this future when shutting down. A delivery fetched but not yet
    /// appended to `out` must stay deliverable (left pending, reclaimed or redelivered).
    fn fetch(
        &self,
        max: usize,
        out: &mut Vec<Delivery<Self::Token>>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Applies a batch of settlements, removing from `batch` those it applied.
    ///
    /// # Errors
    ///
    /// On error, the settlements left in `batch` are retried a few times (unless the
    /// error is [`Error::ConnectionLost`]) and then given up with a warning: the broker
    /// redelivers what was never acknowledged. A panic in `settle` is taken as such an
    /// error: what it left in `batch` is retried, and the settlements after it are applied
    /// as usual.
    fn settle(
        &self,
        batch: &mut Vec<Settlement<Self::Token>>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether [`settle`](Source::settle) honours [`Settle::Nack`]'s delay. When it does not,
    /// the engine holds a delayed nack until the delay has passed and then settles it
    /// without one; the message stays unacknowledged meanwhile, and its concurrency slot is
    /// free. At shutdown held nacks are settled at once.
    fn nack_delay(&self) -> bool {
        true
    }

    /// Whether the broker stops delivering while the server's
    /// [in-flight limit](crate::ServerConfig::in_flight_limit) of messages is delivered and
    /// not yet settled (as RabbitMQ does with its prefetch count set to that limit). The
    /// engine then applies settlements in batches of at most half the limit, so that a batch
    /// never waits out the [ack interval](crate::ServerConfig::ack_interval) for
    /// settlements the broker will not let come, while the broker waits for it. On by
    /// default, the safe choice; a source whose broker delivers whatever is unsettled (a
    /// stream read by count, a table) returns false and keeps batches of the full
    /// [`ack_batch_size`](crate::ServerConfig::ack_batch_size), fewer settlement calls.
    fn stops_at_in_flight_limit(&self) -> bool {
        true
    }

    /// Whether deliveries may carry [`keys::NOT_BEFORE`](crate::keys::NOT_BEFORE): when
    /// true, the engine settles one that arrives early with [`Settle::Defer`] instead of
    /// handing it to the receiver. Off by default, so that other sources pay nothing.
    fn not_before(&self) -> bool {
        false
    }

    /// Whether the source moves a message it gives up to a dead-letter destination of its
    /// own, in one step at the broker (a row moved to another queue in one transaction): then
    /// the engine settles a message it gives up with [`Settle::DeadLetter`] and its reason
    /// when the server has no dead-letter topic, rather than with [`Settle::Reject`]. A
    /// dead-letter topic set in [`ServerConfig`](crate::ServerConfig) still wins. Off by
    /// default.
    fn dead_letters(&self) -> bool {
        false
    }

    /// Re-establishes a lost connection. Called with backoff until it succeeds or the
    /// server shuts down.
    ///
    /// # Errors
    ///
    /// Any error: the engine waits and calls again.
    fn reconnect(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Called once when serving stops, after the last settlement (to leave a consumer
    /// group, say).
    ///
    /// # Errors
    ///
    /// Logged; serving ends either way.
    fn close(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
}

/// Records `delay` in `attributes` as [`keys::NOT_BEFORE`](crate::keys::NOT_BEFORE), for
/// a topic whose transport cannot hold a delay: the engine then defers deliveries that
/// arrive early. A zero delay records nothing.
///
/// ```
/// use msgio::{Attributes, keys};
/// use std::time::Duration;
///
/// let mut attrs = Attributes::new();
/// msgio::engine::stamp_not_before(&mut attrs, Duration::from_secs(30));
/// assert!(attrs.get(keys::NOT_BEFORE).is_some());
/// ```
pub fn stamp_not_before(attributes: &mut Attributes, delay: Duration) {
    if delay.is_zero() {
        return;
    }
    let due = std::time::SystemTime::now()
        .checked_add(delay)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(u64::MAX, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
    attributes.set(crate::keys::NOT_BEFORE, due.to_string());
}

//! Decorators: wrap a [`Topic`](crate::Topic) or a [`Receiver`](crate::Receiver) to add
//! behaviour, as go-msg's decorators do.
//!
//! Every decorator is a wrapping constructor, the wrapped value always called `inner`
//! (with `get_ref`, `get_mut`, `into_inner`), so a stack reads inside out:
//!
//! ```
//! use msgio::decorators::{Dedupe, MemoryDedupeStore, Retry, Router};
//! use msgio::{Backoff, Context, Message, ReceiverFunc, SafeReceiver};
//!
//! let orders = ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) });
//! let receiver = SafeReceiver::new(Retry::new(
//!     Dedupe::new(Router::new("Type").route("order.*", orders), MemoryDedupeStore::new(100_000)),
//!     Backoff::default(),
//!     5,
//! ));
//! # let _ = receiver;
//! ```
//!
//!
//! - delivery policies on the receiver side: [`Retry`] (exponential backoff with jitter,
//!   bounded attempts), [`DeadLetter`], [`Dedupe`] (with [`MemoryDedupeStore`] or, behind
//!   the `redis` feature, `RedisDedupeStore`), [`Timeout`], [`ConcurrencyLimit`],
//!   [`RateLimit`];
//! - dispatch: [`Router`] on an attribute's value, [`ConsumerGroup`] over member receivers
//!   that survives a crashing member;
//! - body codecs meet through an attribute, a topic half and a receiver half in one module:
//!   [`base64`] (`Content-Transfer-Encoding`), and behind features [`gzip`], [`zstd`],
//!   [`lz4`] (`Content-Encoding`); the shared machinery is in [`codec`];
#![cfg_attr(
    feature = "tracing",
    doc = "- [`trace`]: `tracing` spans for publish and receive;"
)]
#![cfg_attr(
    feature = "otel",
    doc = "- [`otel`]: W3C trace context carried from producer to consumer through OpenTelemetry."
)]

pub mod codec;
mod dead_letter;
mod dedupe;
mod group;
mod limit;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
mod retry;
mod router;
mod timeout;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;

pub use codec::Level;
#[cfg(feature = "base64")]
#[cfg_attr(docsrs, doc(cfg(feature = "base64")))]
pub use codec::base64;
#[cfg(feature = "gzip")]
#[cfg_attr(docsrs, doc(cfg(feature = "gzip")))]
pub use codec::gzip;
#[cfg(feature = "lz4")]
#[cfg_attr(docsrs, doc(cfg(feature = "lz4")))]
pub use codec::lz4;
#[cfg(feature = "zstd")]
#[cfg_attr(docsrs, doc(cfg(feature = "zstd")))]
pub use codec::zstd;
pub use dead_letter::DeadLetter;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use dedupe::RedisDedupeStore;
pub use dedupe::{Claim, Dedupe, DedupeStore, MemoryClaim, MemoryDedupeStore};
pub use group::{ConsumerGroup, Routing};
pub use limit::{ConcurrencyLimit, RateLimit};
pub use retry::Retry;
pub use router::Router;
pub use timeout::Timeout;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use {
    dead_letter::DeadLetterLayer,
    dedupe::DedupeLayer,
    limit::{ConcurrencyLimitLayer, RateLimitLayer},
    retry::RetryLayer,
    timeout::TimeoutLayer,
};

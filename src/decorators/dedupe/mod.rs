//! Dedupe on an idempotency-key attribute.

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{MemoryClaim, MemoryDedupeStore};
#[cfg(feature = "redis")]
pub use redis::RedisDedupeStore;

use std::future::Future;
use std::time::Duration;

use crate::receiver::catch_panic;
use crate::{Context, Error, Message, Receiver, canonical_key};

/// What a [`DedupeStore`] says about a key it was asked to claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<T> {
    /// The caller holds the key now: run the receiver, then complete or release `T`.
    Acquired(T),
    /// Another delivery holds it and has not finished.
    InProgress,
    /// A delivery with this key already succeeded.
    Done,
}

/// Where [`Dedupe`] keeps keys: claimed while a delivery runs, done once it succeeded, each
/// for a time to live.
pub trait DedupeStore: Send + Sync {
    /// What an acquired claim hands back to complete or release it: the key, or whatever
    /// lets the store find it again without working it out twice.
    type Claimed: Send + Sync;

    /// Claims `key` for `ttl` unless it is claimed or done.
    ///
    /// # Errors
    ///
    /// The store's failure; the message is then retried.
    fn claim(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim<Self::Claimed>, Error>> + Send;

    /// Marks a claimed key done for `ttl`.
    ///
    /// # Errors
    ///
    /// The store's failure.
    fn complete(
        &self,
        claimed: Self::Claimed,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Gives up a claim, so a retry can claim the key again.
    ///
    /// # Errors
    ///
    /// The store's failure.
    fn release(&self, claimed: Self::Claimed) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Runs the inner receiver at most once per idempotency key: a key is marked done only
/// after the receiver returned `Ok`, so a failed attempt is retried rather than deduped
/// away, and a delivery whose key another delivery is processing right now is retried
/// after a short delay instead of running twice. Messages without the attribute pass
/// through.
///
/// ```
/// use msgio::decorators::{Dedupe, MemoryDedupeStore};
/// use msgio::{Context, Message, Receiver, ReceiverFunc};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), msgio::Error> {
/// let runs = Arc::new(AtomicUsize::new(0));
/// let r = runs.clone();
/// let dedupe = Dedupe::new(
///     ReceiverFunc::new(move |_: Context, _: Message| {
///         r.fetch_add(1, Ordering::SeqCst);
///         async { Ok(()) }
///     }),
///     MemoryDedupeStore::new(10_000),
/// );
/// for _ in 0..3 {
///     let mut msg = Message::new("charge card");
///     msg.attributes.set("Idempotency-Key", "payment-42");
///     dedupe.receive(Context::background(), msg).await?;
/// }
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Dedupe<R, S> {
    inner: R,
    store: S,
    key: String,
    done_ttl: Duration,
    claim_ttl: Duration,
    busy_retry: Duration,
}

impl<R, S> Dedupe<R, S> {
    /// Dedupes `inner`'s messages on the `Idempotency-Key` attribute through `store`,
    /// remembering done keys for 24 hours.
    pub fn new(inner: R, store: S) -> Self {
        Dedupe {
            inner,
            store,
            key: "Idempotency-Key".to_owned(),
            done_ttl: Duration::from_secs(24 * 3600),
            claim_ttl: Duration::from_secs(300),
            busy_retry: Duration::from_secs(1),
        }
    }

    /// The attribute holding the key.
    pub fn key_attribute(mut self, key: impl AsRef<str>) -> Self {
        self.key = canonical_key(key.as_ref()).into_owned();
        self
    }

    /// How long a done key is remembered.
    pub fn done_ttl(mut self, ttl: Duration) -> Self {
        self.done_ttl = ttl;
        self
    }

    /// How long a claim holds if its delivery never finishes (a crashed consumer).
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// How long a delivery whose key is in progress elsewhere waits before it is retried.
    pub fn busy_retry(mut self, delay: Duration) -> Self {
        self.busy_retry = delay;
        self
    }
}

inner_accessors!([R, S] Dedupe<R, S>, R, "receiver");

/// A [`Dedupe`] layer (feature `tower`): [`Dedupe::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type DedupeLayer<S> = Dedupe<(), S>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl<S: Clone> Dedupe<(), S> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`Dedupe::new`] through a clone of `store` (the built-in stores' clones share their
    /// keys); the other settings apply as they do to a `Dedupe`.
    pub fn layer(store: S) -> DedupeLayer<S> {
        Dedupe::new((), store)
    }
}

#[cfg(feature = "tower")]
impl<R, S: Clone> tower_layer::Layer<R> for Dedupe<(), S> {
    type Service = Dedupe<R, S>;

    fn layer(&self, inner: R) -> Dedupe<R, S> {
        Dedupe {
            inner,
            store: self.store.clone(),
            key: self.key.clone(),
            done_ttl: self.done_ttl,
            claim_ttl: self.claim_ttl,
            busy_retry: self.busy_retry,
        }
    }
}

impl<R: Receiver, S: DedupeStore> Receiver for Dedupe<R, S> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let Some(key) = msg.attributes.get_canonical(&self.key) else {
            return self.inner.receive(ctx, msg).await;
        };
        // The key is borrowed from the message only while claiming: the store's token
        // carries what completing or releasing needs.
        let claimed = match self.store.claim(key, self.claim_ttl).await? {
            Claim::Done => return Ok(()),
            Claim::InProgress => {
                return Err(Error::retry_after(
                    self.busy_retry,
                    format!("another delivery of {} {key:?} is in progress", self.key),
                ));
            }
            Claim::Acquired(claimed) => claimed,
        };
        // A panic must release the claim too, or the key would look busy until it expires.
        match catch_panic(|| self.inner.receive(ctx, msg)).await {
            Ok(()) => self.store.complete(claimed, self.done_ttl).await,
            Err(e) => {
                if let Err(release) = self.store.release(claimed).await {
                    crate::log::warning!(
                        "msgio: could not release a dedupe claim on {} ({release}); it expires by itself",
                        self.key
                    );
                }
                Err(e)
            }
        }
    }
}

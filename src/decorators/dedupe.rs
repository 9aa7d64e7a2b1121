//! Dedupe on an idempotency-key attribute.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Context, Error, Message, Receiver, canonical_key};

/// What a [`DedupeStore`] says about a key it was asked to claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the key now: run the receiver.
    Acquired,
    /// Another delivery holds it and has not finished.
    InProgress,
    /// A delivery with this key already succeeded.
    Done,
}

/// Where [`Dedupe`] keeps keys: claimed while a delivery runs, done once it succeeded, each
/// for a time to live.
pub trait DedupeStore: Send + Sync {
    /// Claims `key` for `ttl` unless it is claimed or done.
    ///
    /// # Errors
    ///
    /// The store's failure; the message is then retried.
    fn claim(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<Claim, Error>> + Send;

    /// Marks `key` done for `ttl`.
    ///
    /// # Errors
    ///
    /// The store's failure.
    fn complete(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<(), Error>> + Send;

    /// Gives up a claim, so a retry can claim the key again.
    ///
    /// # Errors
    ///
    /// The store's failure.
    fn release(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send;
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

impl<R: Receiver, S: DedupeStore> Receiver for Dedupe<R, S> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let Some(key) = msg.attributes.get(&self.key).map(str::to_owned) else {
            return self.inner.receive(ctx, msg).await;
        };
        match self.store.claim(&key, self.claim_ttl).await? {
            Claim::Done => return Ok(()),
            Claim::InProgress => {
                return Err(Error::retry_after(
                    self.busy_retry,
                    format!("another delivery of {} {key:?} is in progress", self.key),
                ));
            }
            Claim::Acquired => {}
        }
        match self.inner.receive(ctx, msg).await {
            Ok(()) => self.store.complete(&key, self.done_ttl).await,
            Err(e) => {
                if let Err(release) = self.store.release(&key).await {
                    crate::log::warning!(
                        "msgio: could not release dedupe claim on {key:?} ({release}); it expires by itself"
                    );
                }
                Err(e)
            }
        }
    }
}

/// An in-memory [`DedupeStore`], bounded: expired keys are dropped when met, and past
/// `capacity` keys the oldest are forgotten. Clones share the store.
#[derive(Clone)]
pub struct MemoryDedupeStore {
    inner: Arc<Mutex<Keys>>,
}

struct Keys {
    capacity: usize,
    map: HashMap<Arc<str>, (Claim, Instant, u64)>,
    /// Insertion order, for forgetting the oldest; stale entries are skipped.
    order: VecDeque<(Arc<str>, u64)>,
    seq: u64,
}

impl fmt::Debug for MemoryDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("MemoryDedupeStore")
            .field("capacity", &keys.capacity)
            .field("keys", &keys.map.len())
            .finish()
    }
}

impl MemoryDedupeStore {
    /// A store remembering at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        MemoryDedupeStore {
            inner: Arc::new(Mutex::new(Keys {
                capacity: capacity.max(1),
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Keys) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// How many keys are remembered (some may have expired).
    pub fn len(&self) -> usize {
        self.with(|k| k.map.len())
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Keys {
    fn set(&mut self, key: &str, state: Claim, ttl: Duration) {
        let expires = Instant::now()
            .checked_add(ttl)
            .unwrap_or_else(crate::context::far_future);
        if let Some(entry) = self.map.get_mut(key) {
            entry.0 = state;
            entry.1 = expires;
            return;
        }
        while self.map.len() >= self.capacity {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.2 == seq) {
                self.map.remove(&old);
            }
        }
        // Released keys leave stale entries behind; keep the order list bounded too.
        while self.order.len() >= 2 * self.capacity {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.2 == seq) {
                self.map.remove(&old);
            }
        }
        self.seq += 1;
        let key: Arc<str> = key.into();
        self.order.push_back((key.clone(), self.seq));
        self.map.insert(key, (state, expires, self.seq));
    }
}

impl DedupeStore for MemoryDedupeStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, Error> {
        Ok(self.with(|keys| {
            let live = keys
                .map
                .get(key)
                .filter(|(_, expires, _)| *expires > Instant::now())
                .map(|(state, _, _)| *state);
            match live {
                Some(state) => match state {
                    Claim::Done => Claim::Done,
                    _ => Claim::InProgress,
                },
                None => {
                    keys.set(key, Claim::InProgress, ttl);
                    Claim::Acquired
                }
            }
        }))
    }

    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), Error> {
        self.with(|keys| keys.set(key, Claim::Done, ttl));
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), Error> {
        self.with(|keys| {
            if keys.map.get(key).is_some_and(|e| e.0 == Claim::InProgress) {
                keys.map.remove(key);
            }
        });
        Ok(())
    }
}

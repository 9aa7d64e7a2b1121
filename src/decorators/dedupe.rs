//! Dedupe on an idempotency-key attribute.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::receiver::catch_panic;
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
        // A shared copy of the attributes keeps the key readable after the message moves
        // on, without copying it.
        let attributes = msg.attributes.clone();
        let Some(key) = attributes.get(&self.key) else {
            return self.inner.receive(ctx, msg).await;
        };
        match self.store.claim(key, self.claim_ttl).await? {
            Claim::Done => return Ok(()),
            Claim::InProgress => {
                return Err(Error::retry_after(
                    self.busy_retry,
                    format!("another delivery of {} {key:?} is in progress", self.key),
                ));
            }
            Claim::Acquired => {}
        }
        // A panic must release the claim too, or the key would look busy until it expires.
        match catch_panic(|| self.inner.receive(ctx, msg)).await {
            Ok(()) => self.store.complete(key, self.done_ttl).await,
            Err(e) => {
                if let Err(release) = self.store.release(key).await {
                    crate::log::warning!(
                        "msgio: could not release dedupe claim on {key:?} ({release}); it expires by itself"
                    );
                }
                Err(e)
            }
        }
    }
}

/// An in-memory [`DedupeStore`], bounded: expired keys are dropped when met, and the store
/// keeps at most about `capacity` keys, forgetting the oldest half at a time when full.
///
/// Keys are kept as 128-bit fingerprints, a randomly keyed SipHash beside an FNV-1a hash,
/// so a key costs no allocation and a few dozen bytes. Two different keys would have to
/// collide in both to be confused: by chance about one in 2^64 even after 2^32 keys, and
/// the random SipHash key keeps crafted collisions out of reach. Keys are spread over shards with a
/// lock each, so concurrent deliveries rarely wait on one another. Clones share the store.
#[derive(Clone)]
pub struct MemoryDedupeStore {
    shards: Arc<[Mutex<Keys>]>,
    hasher: RandomState,
}

/// Shards of a store; a power of two.
const SHARDS: usize = 16;

type Fingerprints = HashMap<u128, (Claim, Instant), BuildHasherDefault<Passthrough>>;

/// One shard: two generations of keys. New keys go into `current`; when it holds `half`
/// keys it becomes `previous` and the old `previous` is forgotten. A key met in `previous`
/// moves back into `current`. Bounded, O(1), and no per-key bookkeeping beyond the maps.
struct Keys {
    half: usize,
    current: Fingerprints,
    previous: Fingerprints,
}

/// Hashes a fingerprint by taking its bits: they are already uniformly random.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only fingerprints are hashed here; fold anything else in all the same.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

impl fmt::Debug for MemoryDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDedupeStore")
            .field("capacity", &(self.shards.len() * 2 * self.lock(0).half))
            .field("keys", &self.len())
            .finish()
    }
}

impl MemoryDedupeStore {
    /// A store remembering at most about `capacity` keys (at least two per shard).
    pub fn new(capacity: usize) -> Self {
        let half = capacity.div_ceil(2 * SHARDS).max(1);
        MemoryDedupeStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Keys {
                        half,
                        current: Fingerprints::default(),
                        previous: Fingerprints::default(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Keys> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Keys, u128) -> T) -> T {
        let keyed = self.hasher.hash_one(key);
        let fnv = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let fingerprint = (u128::from(keyed) << 64) | u128::from(fnv);
        f(
            &mut self.lock((keyed >> 60) as usize & (SHARDS - 1)),
            fingerprint,
        )
    }

    /// How many keys are remembered (some may have expired).
    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|i| {
                let keys = self.lock(i);
                keys.current.len() + keys.previous.len()
            })
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(crate::context::far_future)
}

impl Keys {
    /// The live state of `key`, moving it into the current generation if it was in the
    /// previous one.
    fn get(&mut self, key: u128, now: Instant) -> Option<&mut (Claim, Instant)> {
        if !self.current.contains_key(&key) {
            let entry = self.previous.remove(&key)?;
            self.put(key, entry);
        }
        self.current.get_mut(&key).filter(|entry| entry.1 > now)
    }

    fn put(&mut self, key: u128, entry: (Claim, Instant)) {
        if self.current.len() >= self.half {
            // The oldest generation goes; its table is reused, so no rehashing as the new
            // generation fills.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        self.current.insert(key, entry);
    }
}

impl DedupeStore for MemoryDedupeStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, Error> {
        let now = Instant::now();
        Ok(self.with(key, |keys, key| match keys.get(key, now) {
            Some((Claim::Done, _)) => Claim::Done,
            Some(_) => Claim::InProgress,
            None => {
                keys.put(key, (Claim::InProgress, expiry(now, ttl)));
                Claim::Acquired
            }
        }))
    }

    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), Error> {
        let now = Instant::now();
        let entry = (Claim::Done, expiry(now, ttl));
        self.with(key, |keys, key| match keys.get(key, now) {
            Some(state) => *state = entry,
            None => keys.put(key, entry),
        });
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), Error> {
        self.with(key, |keys, key| {
            if keys
                .current
                .get(&key)
                .is_some_and(|e| e.0 == Claim::InProgress)
            {
                keys.current.remove(&key);
            }
            if keys
                .previous
                .get(&key)
                .is_some_and(|e| e.0 == Claim::InProgress)
            {
                keys.previous.remove(&key);
            }
        });
        Ok(())
    }
}

//! Dedupe on an idempotency-key attribute.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
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
    epoch: Instant,
}

/// Shards of a store; a power of two.
const SHARDS: usize = 16;

/// A key's state (done, or claimed) and when it expires, in milliseconds since the store
/// was made (compact, so that more of a shard stays in cache).
type Entry = (bool, u64);

/// One shard: two generations of keys. New keys go into `current`; when it holds `half`
/// keys it becomes `previous` and the old `previous` is forgotten. A key met in `previous`
/// moves back into `current`. Bounded, O(1), and no per-key bookkeeping beyond the maps.
struct Keys {
    half: usize,
    current: Generation,
    previous: Generation,
}

/// A generation's fingerprints, and a small Bloom filter over them so that a new key
/// (the common case) rarely needs a second table probe.
#[derive(Default)]
struct Generation {
    map: HashMap<u128, Entry, BuildHasherDefault<Passthrough>>,
    bloom: Vec<u64>,
}

/// The two Bloom filter bits of `key` in a filter of `words` words.
fn bits(words: usize, key: u128) -> [(usize, u64); 2] {
    let len = (words * 64) as u64;
    [key as u64, (key >> 32) as u64].map(|h| {
        let bit = (h % len) as usize;
        (bit / 64, 1u64 << (bit % 64))
    })
}

fn set_bits(bloom: &mut [u64], key: u128) {
    for (w, b) in bits(bloom.len(), key) {
        bloom[w] |= b;
    }
}

impl Generation {
    /// 16 bits per key, two probes: about 1.4% false positives when full.
    fn with_capacity(half: usize) -> Self {
        Generation {
            map: HashMap::default(),
            bloom: vec![0; (half * 16).div_ceil(64).max(1)],
        }
    }

    fn may_contain(&self, key: u128) -> bool {
        bits(self.bloom.len(), key)
            .iter()
            .all(|&(w, b)| self.bloom[w] & b != 0)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bloom.fill(0);
    }
}

/// Hashes a fingerprint by taking its keyed (SipHash) half, rotated so that the four top
/// bits that chose the shard land in the middle: a table indexes by a hash's low bits and
/// tags slots with its top seven, and within a shard those four bits never change. Taking
/// the FNV half instead would let crafted keys pile into one bucket.
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
        self.0 = ((n >> 64) as u64).rotate_right(8);
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
                        current: Generation::with_capacity(half),
                        previous: Generation::with_capacity(half),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Keys> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard and fingerprint of `key`.
    fn locate(&self, key: &str) -> (usize, u128) {
        let keyed = self.hasher.hash_one(key);
        let fnv = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let fingerprint = (u128::from(keyed) << 64) | u128::from(fnv);
        ((keyed >> 60) as usize & (SHARDS - 1), fingerprint)
    }

    /// How many keys are remembered (some may have expired).
    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|i| {
                let keys = self.lock(i);
                keys.current.map.len() + keys.previous.map.len()
            })
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MemoryDedupeStore {
    /// Milliseconds since the store was made.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

impl Keys {
    /// Claims `key` unless it is live: returns its state (`true`: done) when it is, after
    /// recording a claim expiring at `expires` when it is not. One table probe for a new
    /// key, plus a Bloom check of the previous generation.
    fn claim(&mut self, key: u128, now: u64, expires: u64) -> Option<bool> {
        if self.current.map.len() >= self.half {
            // The oldest generation goes; its table is reused, so no rehashing as the new
            // generation fills.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        let current = &mut self.current;
        match current.map.entry(key) {
            Slot::Occupied(mut found) => {
                if found.get().1 > now {
                    return Some(found.get().0);
                }
                *found.get_mut() = (false, expires);
                None
            }
            Slot::Vacant(slot) => {
                let older = if self.previous.may_contain(key) {
                    self.previous.map.remove(&key).filter(|e| e.1 > now)
                } else {
                    None
                };
                set_bits(&mut current.bloom, key);
                match older {
                    // Still live in the previous generation: it moves to the current one.
                    Some(entry) => {
                        slot.insert(entry);
                        Some(entry.0)
                    }
                    None => {
                        slot.insert((false, expires));
                        None
                    }
                }
            }
        }
    }
}

/// A claim on a [`MemoryDedupeStore`] key: where it is and when it was made.
#[derive(Debug, Clone, Copy)]
pub struct MemoryClaim {
    shard: usize,
    fingerprint: u128,
    at: u64,
}

impl DedupeStore for MemoryDedupeStore {
    type Claimed = MemoryClaim;

    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim<MemoryClaim>, Error> {
        let (shard, fingerprint) = self.locate(key);
        let now = self.now();
        let mut keys = self.lock(shard);
        Ok(match keys.claim(fingerprint, now, expiry(now, ttl)) {
            Some(true) => Claim::Done,
            Some(false) => Claim::InProgress,
            None => Claim::Acquired(MemoryClaim {
                shard,
                fingerprint,
                at: now,
            }),
        })
    }

    /// Done keys are remembered for `ttl` from when they were claimed (a delivery is short
    /// next to a dedupe window; this saves reading the clock twice a message).
    async fn complete(&self, claimed: MemoryClaim, ttl: Duration) -> Result<(), Error> {
        let entry = (true, expiry(claimed.at, ttl));
        let mut guard = self.lock(claimed.shard);
        let keys = &mut *guard;
        match keys.current.map.get_mut(&claimed.fingerprint) {
            Some(state) => *state = entry,
            // Rotated into the previous generation meanwhile (or forgotten): record it in
            // the current one.
            None => {
                keys.previous.map.remove(&claimed.fingerprint);
                set_bits(&mut keys.current.bloom, claimed.fingerprint);
                keys.current.map.insert(claimed.fingerprint, entry);
            }
        }
        Ok(())
    }

    async fn release(&self, claimed: MemoryClaim) -> Result<(), Error> {
        let mut guard = self.lock(claimed.shard);
        let keys = &mut *guard;
        for generation in [&mut keys.current, &mut keys.previous] {
            if generation
                .map
                .get(&claimed.fingerprint)
                .is_some_and(|e| !e.0)
            {
                generation.map.remove(&claimed.fingerprint);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn keys(half: usize) -> Keys {
        Keys {
            half,
            current: Generation::with_capacity(half),
            previous: Generation::with_capacity(half),
        }
    }

    #[test]
    fn generations_keep_live_keys_and_forget_the_oldest() {
        const A: u128 = 1000;
        let far = u64::MAX;
        let mut k = keys(4);
        assert_eq!(k.claim(A, 0, far), None, "claimed");
        assert_eq!(k.claim(A, 0, far), Some(false), "in progress");
        k.current.map.insert(A, (true, far)); // completed
        // Four new keys: the fourth rotates the generations; A is in the previous one.
        for key in 1..=4 {
            assert_eq!(k.claim(key, 0, far), None);
        }
        assert!(k.previous.map.contains_key(&A));
        assert_eq!(
            k.claim(A, 0, far),
            Some(true),
            "found in the previous generation"
        );
        assert!(
            k.current.map.contains_key(&A),
            "and moved back into the current one"
        );
        // Two rotations later, A is forgotten: the store stays bounded.
        for key in 5..=11 {
            assert_eq!(k.claim(key, 0, far), None);
        }
        assert_eq!(
            k.claim(A, 0, far),
            None,
            "a forgotten key is claimed afresh"
        );
        assert!(k.current.map.len() + k.previous.map.len() <= 8);
    }

    #[test]
    fn a_shards_keys_spread_over_its_table() {
        // The table of one shard indexes by a hash's low bits and tags slots with its top
        // seven: neither may be the bits that chose the shard, or a shard's keys would
        // start their probes in a sixteenth of the table.
        let store = MemoryDedupeStore::new(1000);
        let table = BuildHasherDefault::<Passthrough>::default();
        let (mut low, mut top) = (HashSet::new(), HashSet::new());
        for i in 0..20_000 {
            let (shard, fingerprint) = store.locate(&format!("key-{i}"));
            if shard == 3 {
                let hash = table.hash_one(fingerprint);
                low.insert(hash & 0xff);
                top.insert(hash >> 57);
            }
        }
        assert!(low.len() > 200, "{} of 256 low bytes", low.len());
        assert!(top.len() > 100, "{} of 128 tags", top.len());
    }

    #[test]
    fn expired_keys_are_claimed_again() {
        let mut k = keys(8);
        assert_eq!(k.claim(9, 10, 20), None);
        assert_eq!(k.claim(9, 15, 40), Some(false));
        assert_eq!(k.claim(9, 25, 40), None, "the claim expired at 20");
        assert_eq!(k.claim(9, 30, 50), Some(false));
    }
}

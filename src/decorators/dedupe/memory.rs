//! The in-memory dedupe store.

use std::fmt;
use std::future::{Future, ready};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, DedupeStore};
use crate::Error;

/// An in-memory [`DedupeStore`], bounded: expired keys are dropped when met, and the store
/// keeps at most about `capacity` keys, forgetting the oldest half at a time when full.
///
/// Keys are kept as 87-bit fingerprints, 64 bits and 23 bits of two hashes with secret
/// seeds of the store's own (a multiply-fold hash over two independent lanes), so a key
/// costs no allocation and 16 bytes. A new key is taken for a stored one by chance about
/// once in 2^67 lookups against a million stored keys, and the secret seeds keep crafted
/// collisions out of reach of anyone who cannot read the process's memory.
///
/// Keys are spread over shards with a lock each, so concurrent deliveries rarely wait on
/// one another. A new key costs one cache line of its shard's current table and a word of
/// a Bloom filter over the previous generation, which is only read and so stays in every
/// core's cache: few lines move between cores per message. The tables grow with the keys,
/// up to about 33 bytes per key of capacity; a store that filled once allocates no more.
/// Times are kept in milliseconds since the store was made, for up to about 17 years.
/// Clones share the store.
///
/// Nothing here waits: `claim`, `complete` and `release` do their work when called and
/// return a future that is already ready (no state to poll through).
///
/// ```
/// use msgio::decorators::{Claim, DedupeStore, MemoryDedupeStore};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), msgio::Error> {
/// let store = MemoryDedupeStore::new(10_000);
/// let ttl = Duration::from_secs(60);
/// let Claim::Acquired(claim) = store.claim("payment-42", ttl).await? else {
///     unreachable!("a new key is acquired");
/// };
/// assert!(matches!(store.claim("payment-42", ttl).await?, Claim::InProgress));
/// store.complete(claim, ttl).await?;
/// assert!(matches!(store.claim("payment-42", ttl).await?, Claim::Done));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryDedupeStore {
    shards: Arc<[Shard]>,
    /// The secret seeds of the key hash.
    seeds: [u64; 4],
    epoch: Instant,
}

/// Shards of a store; a power of two.
const SHARDS: usize = 16;

/// A shard's lock and tables' headers, on a cache line of its own: the cores take shards
/// in turn, and a line shared with a neighbouring shard would move between them twice.
#[repr(align(64))]
struct Shard(Mutex<Keys>);

/// One shard: two generations of keys. New keys go into `current`; when it has used
/// `half` slots it becomes `previous` and the old `previous` is forgotten. A key met in
/// `previous` moves back into `current`. Bounded, O(1), and no per-key bookkeeping beyond
/// the tables. With its lock, one cache line.
struct Keys {
    current: Table,
    previous: Table,
    /// The keys of `previous`, so that a new key (the common case) is told apart without
    /// reading that table. Built when `previous` stops taking keys and only read after, it
    /// stays in both cores' caches, where the table's lines would not.
    bloom: Bloom,
    /// Slots of `current` ever used since it was cleared (freed and expired ones too).
    used: u32,
    half: u32,
}

/// A key as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    /// The first keyed hash: chooses the shard (low bits) and the bucket (high bits).
    hash: u64,
    /// Bits of the second keyed hash, already in their place in [`Slot::meta`].
    check: u64,
}

/// A slot of a table: a key's fingerprint and what is known of it.
#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    /// 0: never used. Otherwise [`USED`], [`DONE`] for a done key (else claimed), the
    /// check bits and the expiry. A freed slot is `USED` alone: expired since the start.
    meta: u64,
}

const USED: u64 = 1 << 63;
const DONE: u64 = 1 << 62;
const EXPIRY_BITS: u32 = 39;
const CHECK_BITS: u32 = 23;
const EXPIRY: u64 = (1 << EXPIRY_BITS) - 1;
const CHECK: u64 = ((1 << CHECK_BITS) - 1) << EXPIRY_BITS;

fn live(meta: u64, now: u64) -> bool {
    meta & EXPIRY > now
}

/// Four slots on one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([Slot; 4]);

/// Where a slot is: bucket and index in it.
type At = (usize, usize);

/// An open-addressing table probing bucket by bucket, never more than half used, so that
/// a lookup nearly always ends in the key's own bucket.
struct Table(Box<[Bucket]>);

/// The slots of a new table; it grows as keys come.
const FIRST_SLOTS: usize = 64;

impl Table {
    fn new(slots: usize) -> Self {
        Table(vec![Bucket::default(); slots.div_ceil(4).max(1)].into_boxed_slice())
    }

    fn slots(&self) -> usize {
        4 * self.0.len()
    }

    /// Moves the keys into a table of at least `slots` slots (freed slots stay behind);
    /// how many slots they take there.
    fn grow(&mut self, slots: usize) -> u32 {
        let old = std::mem::replace(self, Table::new(slots));
        let mut used = 0;
        for slot in old.0.iter().flat_map(|b| &b.0) {
            if slot.meta != 0 && slot.meta != USED {
                self.place(*slot);
                used += 1;
            }
        }
        used
    }

    /// The bucket a key's search starts at: the high bits of its hash, scaled to the table
    /// (the low ones chose the shard).
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.0.len() as u128) >> 64) as usize
    }

    /// Puts `slot` in the first never-used slot on its key's way: for keys known to be
    /// absent (a table being filled from another), so no slot is compared.
    fn place(&mut self, slot: Slot) {
        let n = self.0.len();
        let mut b = self.home(slot.hash);
        loop {
            if let Some(free) = self.0[b].0.iter_mut().find(|s| s.meta == 0) {
                *free = slot;
                return;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
    }

    /// The slot holding `fp` (`Ok`, live or not), or the slot it would take (`Err`): the
    /// first expired or freed slot on its way, else the never-used slot that ends the
    /// search. A table always has a never-used slot, so the search ends.
    fn find(&self, fp: Fingerprint, now: u64) -> Result<At, At> {
        let n = self.0.len();
        let mut b = self.home(fp.hash);
        let mut reusable = None;
        loop {
            for (i, slot) in self.0[b].0.iter().enumerate() {
                if slot.meta == 0 {
                    return Err(reusable.unwrap_or((b, i)));
                }
                if slot.hash == fp.hash && slot.meta & CHECK == fp.check {
                    return Ok((b, i));
                }
                if reusable.is_none() && !live(slot.meta, now) {
                    reusable = Some((b, i));
                }
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
    }

    fn meta(&self, (b, i): At) -> u64 {
        self.0[b].0[i].meta
    }

    /// Records `fp` at `at` with `state` ([`DONE`] or 0) and `expires`; whether that took
    /// a never-used slot.
    fn put(&mut self, (b, i): At, fp: Fingerprint, state: u64, expires: u64) -> bool {
        let slot = &mut self.0[b].0[i];
        let new = slot.meta == 0;
        *slot = Slot {
            hash: fp.hash,
            meta: USED | state | fp.check | expires,
        };
        new
    }

    /// Frees a slot: found by no key, taken by the next key that passes it.
    fn free(&mut self, (b, i): At) {
        self.0[b].0[i] = Slot {
            hash: 0,
            meta: USED,
        };
    }

    /// The keys in the table, expired or not.
    fn keys(&self) -> impl Iterator<Item = Fingerprint> + '_ {
        self.0
            .iter()
            .flat_map(|b| &b.0)
            .filter(|s| s.meta != 0 && s.meta != USED)
            .map(|s| Fingerprint {
                hash: s.hash,
                check: s.meta & CHECK,
            })
    }
}

/// A Bloom filter with a key's bits in one word: one cache line a lookup.
struct Bloom(Box<[u64]>);

/// Bits of a key set in its word.
const BLOOM_BITS: u32 = 3;

impl Bloom {
    /// About 16 bits a key (and at least one word).
    fn new(keys: usize) -> Self {
        Bloom(vec![0; (keys * 16).div_ceil(64).next_power_of_two()].into_boxed_slice())
    }

    /// The word of `fp` and its bits: the word from hash bits the shard and the bucket do
    /// not take, the bits from the check bits.
    fn bits(&self, fp: Fingerprint) -> (usize, u64) {
        let word = (fp.hash >> 8) as usize & (self.0.len() - 1);
        let check = fp.check >> EXPIRY_BITS;
        let bits = (0..BLOOM_BITS).fold(0, |bits, i| bits | 1 << ((check >> (6 * i)) & 63));
        (word, bits)
    }

    fn may_hold(&self, fp: Fingerprint) -> bool {
        let (word, bits) = self.bits(fp);
        self.0[word] & bits == bits
    }

    /// Holds the `keys` keys of `table` and no others.
    fn build(&mut self, table: &Table, keys: usize) {
        let fresh = Bloom::new(keys);
        if fresh.0.len() == self.0.len() {
            self.0.fill(0);
        } else {
            *self = fresh;
        }
        for fp in table.keys() {
            let (word, bits) = self.bits(fp);
            self.0[word] |= bits;
        }
    }
}

impl Keys {
    fn new(half: usize) -> Self {
        let half = u32::try_from(half).unwrap_or(u32::MAX / 2);
        Keys {
            current: Table::new(FIRST_SLOTS),
            previous: Table::new(FIRST_SLOTS),
            bloom: Bloom::new(0),
            used: 0,
            half,
        }
    }

    /// The most slots a table needs: twice the keys of a full generation, so that it is at
    /// most half used.
    fn max_slots(&self) -> usize {
        2 * self.half as usize
    }

    /// Before a key takes a new slot: the oldest generation goes when the current one is
    /// full (its table is reused, so a store that filled once allocates no more), and a
    /// table that would be more than half used grows.
    fn make_room(&mut self) {
        if self.used >= self.half || 2 * (self.used as usize + 1) > self.current.slots() {
            self.rotate_or_grow();
        }
    }

    /// [`make_room`](Keys::make_room)'s work, once a generation or a doubling: out of line,
    /// so that the check every claim makes stays a pair of compares in its caller.
    #[cold]
    #[inline(never)]
    fn rotate_or_grow(&mut self) {
        if self.used >= self.half {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.bloom.build(&self.previous, self.used as usize);
            self.current.0.fill(Bucket::default());
            self.used = 0;
        } else if 2 * (self.used as usize + 1) > self.current.slots() {
            let slots = (2 * self.current.slots()).min(self.max_slots());
            self.used = self.current.grow(slots);
        }
    }

    fn put(&mut self, at: At, key: Fingerprint, state: u64, expires: u64) {
        self.used += u32::from(self.current.put(at, key, state, expires));
    }

    /// Where `key` is in the previous generation.
    fn previous(&self, key: Fingerprint, now: u64) -> Option<At> {
        if self.bloom.may_hold(key) {
            self.previous.find(key, now).ok()
        } else {
            None
        }
    }

    /// Claims `key` unless it is live: returns its state (`true`: done) when it is, after
    /// recording a claim expiring at `expires` when it is not.
    #[cfg(test)]
    fn claim(&mut self, key: Fingerprint, now: u64, expires: u64) -> Option<bool> {
        self.claim_at(key, now, expires).err()
    }

    /// [`claim`](Keys::claim), with the slot of a claim made (`Ok`) or the state of a live
    /// key (`Err`, `true`: done).
    fn claim_at(&mut self, key: Fingerprint, now: u64, expires: u64) -> Result<At, bool> {
        self.make_room();
        match self.current.find(key, now) {
            Ok(at) => {
                let meta = self.current.meta(at);
                if live(meta, now) {
                    return Err(meta & DONE != 0);
                }
                self.put(at, key, 0, expires);
                Ok(at)
            }
            Err(at) => {
                // Still live in the previous generation: it moves to the current one.
                if let Some(old) = self.previous(key, now) {
                    let meta = self.previous.meta(old);
                    self.previous.free(old);
                    if live(meta, now) {
                        self.put(at, key, meta & DONE, meta & EXPIRY);
                        return Err(meta & DONE != 0);
                    }
                }
                self.put(at, key, 0, expires);
                Ok(at)
            }
        }
    }

    /// Marks `key` done until `expires` in the slot its claim took, `at`, when the key is
    /// still there; else (a rotation or a growth moved it) as [`complete`](Keys::complete)
    /// does. A key is in at most one slot of the current table, so finding it at `at` is
    /// finding it.
    fn complete_at(&mut self, key: Fingerprint, at: At, now: u64, expires: u64) {
        let there = self.current.0.get(at.0).is_some_and(|bucket| {
            let slot = bucket.0[at.1];
            slot.hash == key.hash && slot.meta != USED && slot.meta & CHECK == key.check
        });
        if there {
            self.put(at, key, DONE, expires);
        } else {
            self.complete(key, now, expires);
        }
    }

    /// Marks `key` done until `expires`; `now` is no later than the present.
    fn complete(&mut self, key: Fingerprint, now: u64, expires: u64) {
        self.make_room();
        match self.current.find(key, now) {
            Ok(at) => self.put(at, key, DONE, expires),
            // Rotated into the previous generation meanwhile (or forgotten): recorded in
            // the current one.
            Err(at) => {
                if let Some(old) = self.previous(key, now) {
                    self.previous.free(old);
                }
                self.put(at, key, DONE, expires);
            }
        }
    }

    /// Forgets `key` if it is claimed (not done).
    fn release(&mut self, key: Fingerprint) {
        let current = self.current.find(key, 0).ok();
        if let Some(at) = current.filter(|&at| self.current.meta(at) & DONE == 0) {
            self.current.free(at);
        }
        if let Some(at) = self.previous(key, 0) {
            if self.previous.meta(at) & DONE == 0 {
                self.previous.free(at);
            }
        }
    }

    /// Keys remembered, expired or not.
    fn len(&self) -> usize {
        self.current.keys().count() + self.previous.keys().count()
    }
}

impl fmt::Debug for MemoryDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDedupeStore")
            .field(
                "capacity",
                &(self.shards.len() * 2 * self.lock(0).half as usize),
            )
            .field("keys", &self.len())
            .finish()
    }
}

/// The high and low halves of `a * b` folded together: the mixing step of the key hash.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Two 64-bit hashes of `bytes` from independent lanes, keyed by secret `seeds` (the
/// multiply-fold construction of wyhash and foldhash): the first picks the shard and the
/// slot, the second adds the check bits, so that two keys are taken for one only when 87
/// bits agree. Several times cheaper than SipHash on the short keys idempotency keys are;
/// the seeds keep anyone who does not know them from choosing keys that collide.
fn key_hash(seeds: &[u64; 4], bytes: &[u8]) -> (u64, u64) {
    let len = bytes.len() as u64;
    let (mut a, mut b) = (seeds[0] ^ len, seeds[1] ^ len.rotate_left(32));
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        a = fold(a ^ word, seeds[2]);
        b = fold(b ^ word, seeds[3]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        let word = u64::from_le_bytes(last);
        a = fold(a ^ word, seeds[2]);
        b = fold(b ^ word, seeds[3]);
    }
    (fold(a, seeds[3] ^ b), fold(b, seeds[2] ^ a))
}

impl MemoryDedupeStore {
    /// A store remembering at most about `capacity` keys (at least two per shard).
    pub fn new(capacity: usize) -> Self {
        let half = capacity.div_ceil(2 * SHARDS).max(1);
        MemoryDedupeStore {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(Keys::new(half))))
                .collect(),
            seeds: [
                crate::random::u64(),
                crate::random::u64(),
                crate::random::u64() | 1,
                crate::random::u64() | 1,
            ],
            epoch: Instant::now(),
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Keys> {
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The shard and fingerprint of `key`.
    fn locate(&self, key: &str) -> (usize, Fingerprint) {
        let (hash, other) = key_hash(&self.seeds, key.as_bytes());
        let check = (other >> (64 - CHECK_BITS)) << EXPIRY_BITS;
        (hash as usize & (SHARDS - 1), Fingerprint { hash, check })
    }

    /// Milliseconds since the store was made.
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed()).min(EXPIRY)
    }

    /// How many keys are remembered (some may have expired). Counts every slot: meant for
    /// diagnostics, not for every message.
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.lock(i).len()).sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(millis(ttl)).min(EXPIRY)
}

/// Whole milliseconds of `d`, saturating: in 64 bits, where `Duration::as_millis` works in
/// 128.
fn millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// A claim on a [`MemoryDedupeStore`] key: where it is and when it was made.
#[derive(Debug, Clone, Copy)]
pub struct MemoryClaim {
    shard: usize,
    fingerprint: Fingerprint,
    at: u64,
    /// The slot the claim took (where completing looks first).
    slot: At,
}

impl DedupeStore for MemoryDedupeStore {
    type Claimed = MemoryClaim;

    /// Answers at once: the future is ready when made (no state machine to poll).
    fn claim(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim<MemoryClaim>, Error>> + Send {
        let (shard, fingerprint) = self.locate(key);
        let now = self.now();
        let state = self
            .lock(shard)
            .claim_at(fingerprint, now, expiry(now, ttl));
        ready(Ok(match state {
            Err(true) => Claim::Done,
            Err(false) => Claim::InProgress,
            Ok(slot) => Claim::Acquired(MemoryClaim {
                shard,
                fingerprint,
                at: now,
                slot,
            }),
        }))
    }

    /// Done keys are remembered for `ttl` from when they were claimed (a delivery is short
    /// next to a dedupe window; this saves reading the clock twice a message).
    fn complete(
        &self,
        claimed: MemoryClaim,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.lock(claimed.shard).complete_at(
            claimed.fingerprint,
            claimed.slot,
            claimed.at,
            expiry(claimed.at, ttl),
        );
        ready(Ok(()))
    }

    fn release(&self, claimed: MemoryClaim) -> impl Future<Output = Result<(), Error>> + Send {
        self.lock(claimed.shard).release(claimed.fingerprint);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_key_hash_spreads_similar_keys_and_depends_on_every_byte_and_the_length() {
        let store = MemoryDedupeStore::new(16);
        let mut seen = std::collections::HashSet::new();
        let mut shards = [0usize; SHARDS];
        for n in 0..200_000 {
            let (shard, fp) = store.locate(&format!("order-{n}"));
            shards[shard] += 1;
            assert!(seen.insert((fp.hash, fp.check)), "order-{n} collides");
        }
        // Every shard gets its share, within a few percent.
        for count in shards {
            assert!((11_500..13_500).contains(&count), "{shards:?}");
        }
        let (_, a) = store.locate("abcdefgh");
        let (_, b) = store.locate("abcdefgi");
        let (_, c) = store.locate("abcdefgh\0");
        let (_, d) = store.locate("");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(d, store.locate("\0").1);
        // Another store, other seeds: the same key lands elsewhere.
        assert_ne!(a, MemoryDedupeStore::new(16).locate("abcdefgh").1);
    }

    /// A fingerprint whose bucket (in a table of `buckets`) is `bucket`; `n` tells keys in
    /// one bucket apart.
    fn in_bucket(bucket: u64, buckets: u64, n: u64) -> Fingerprint {
        Fingerprint {
            hash: (bucket << 58) / buckets * 64 + n,
            check: (n % (1 << CHECK_BITS)) << EXPIRY_BITS,
        }
    }

    /// A fingerprint of its own for each `n`, anywhere in a table.
    fn key(n: u64) -> Fingerprint {
        Fingerprint {
            hash: n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            check: (n % (1 << CHECK_BITS)) << EXPIRY_BITS,
        }
    }

    fn holds(table: &Table, fp: Fingerprint) -> bool {
        table.find(fp, 0).is_ok_and(|at| live(table.meta(at), 0))
    }

    const FAR: u64 = EXPIRY;

    #[test]
    fn generations_keep_live_keys_and_forget_the_oldest() {
        let a = key(1000);
        let mut k = Keys::new(4);
        assert_eq!(k.claim(a, 0, FAR), None, "claimed");
        assert_eq!(k.claim(a, 0, FAR), Some(false), "in progress");
        k.complete(a, 0, FAR);
        // Three more keys fill the generation; the next one rotates it: `a` is in the
        // previous one.
        for n in 1..=4 {
            assert_eq!(k.claim(key(n), 0, FAR), None);
        }
        assert!(holds(&k.previous, a) && !holds(&k.current, a));
        assert_eq!(
            k.claim(a, 0, FAR),
            Some(true),
            "found in the previous generation"
        );
        assert!(
            holds(&k.current, a) && !holds(&k.previous, a),
            "and moved back into the current one"
        );
        // Two rotations later, `a` is forgotten: the store stays bounded.
        for n in 5..=11 {
            assert_eq!(k.claim(key(n), 0, FAR), None);
        }
        assert_eq!(
            k.claim(a, 0, FAR),
            None,
            "a forgotten key is claimed afresh"
        );
        assert!(k.len() <= 8);
    }

    #[test]
    fn completing_a_claim_marks_its_key_done_even_after_its_slot_moved() {
        let mut k = Keys::new(4);
        let buckets = k.current.0.len() as u64;
        let a = key(1);
        let at = k.claim_at(a, 0, FAR).unwrap();
        k.complete_at(a, at, 0, FAR);
        assert_eq!(
            k.claim(a, 0, FAR),
            Some(true),
            "done in the slot it claimed"
        );

        // `b` and `c` share a bucket: once a rotation moved `b` to the previous table, `c`
        // takes `b`'s old slot in the current one.
        let (b, c) = (in_bucket(3, buckets, 0), in_bucket(3, buckets, 1));
        let at = k.claim_at(b, 0, FAR).unwrap();
        for n in 10..12 {
            assert_eq!(k.claim(key(n), 0, FAR), None);
        }
        assert_eq!(
            k.claim_at(c, 0, FAR),
            Ok(at),
            "rotated, and c took b's slot"
        );
        k.complete_at(b, at, 0, FAR);
        assert_eq!(k.claim(c, 0, FAR), Some(false), "c was marked done for b");
        assert_eq!(k.claim(b, 0, FAR), Some(true), "b was not marked done");
        assert_eq!(k.claim(key(10), 0, FAR), Some(false));
    }

    #[test]
    fn expired_keys_are_claimed_again() {
        let mut k = Keys::new(8);
        let a = key(9);
        assert_eq!(k.claim(a, 10, 20), None);
        assert_eq!(k.claim(a, 15, 40), Some(false));
        assert_eq!(k.claim(a, 25, 40), None, "the claim expired at 20");
        assert_eq!(k.claim(a, 30, 50), Some(false));
        assert_eq!(k.used, 1, "claimed again in its own slot");
    }

    #[test]
    fn keys_past_a_freed_or_expired_slot_are_still_found() {
        // Six keys with one home bucket: the fifth and sixth spill into the next bucket.
        let mut k = Keys::new(16);
        let buckets = k.current.0.len() as u64;
        let keys: Vec<_> = (0..6).map(|n| in_bucket(3, buckets, n)).collect();
        for (n, &fp) in keys.iter().enumerate() {
            let expires = if n == 1 { 5 } else { FAR };
            assert_eq!(k.claim(fp, 0, expires), None);
        }
        assert_eq!(k.current.find(keys[5], 0), Ok((4, 1)), "spilled over");
        k.release(keys[0]);
        assert_eq!(
            k.claim(keys[5], 10, FAR),
            Some(false),
            "still in progress past a freed slot and an expired one"
        );
        assert_eq!(k.claim(keys[0], 10, FAR), None, "released: claimed again");
        let fresh = in_bucket(3, buckets, 6);
        assert_eq!(k.claim(fresh, 10, FAR), None);
        assert_eq!(
            k.current.find(fresh, 10),
            Ok((3, 1)),
            "took the expired slot"
        );
        assert_eq!(k.used, 6, "no new slot for reused ones");
    }

    #[test]
    fn tables_grow_with_the_keys_and_keep_them() {
        let mut k = Keys::new(1000);
        assert_eq!(k.current.slots(), FIRST_SLOTS);
        for n in 0..900 {
            assert_eq!(k.claim(key(n * 7919), 0, FAR), None);
        }
        assert!(k.current.slots() >= 1800 && k.current.slots() <= 2004);
        assert_eq!(k.used, 900);
        for n in 0..900 {
            assert_eq!(k.claim(key(n * 7919), 0, FAR), Some(false), "key {n} lost");
        }
    }

    #[test]
    fn done_keys_are_not_released() {
        let mut k = Keys::new(8);
        let a = key(7);
        assert_eq!(k.claim(a, 0, FAR), None);
        k.complete(a, 0, FAR);
        k.release(a);
        assert_eq!(k.claim(a, 0, FAR), Some(true));
    }

    #[test]
    fn a_shards_keys_spread_over_its_table() {
        // The shard takes a hash's low bits and the bucket its high bits: within one
        // shard, keys must still reach every part of the table.
        let store = MemoryDedupeStore::new(1000);
        let table = Table::new(1024);
        let mut buckets = HashSet::new();
        for i in 0..20_000 {
            let (shard, fp) = store.locate(&format!("key-{i}"));
            if shard == 3 {
                buckets.insert(table.find(fp, 0).unwrap_err().0);
            }
        }
        assert!(buckets.len() > 200, "{} of 256 buckets", buckets.len());
    }

    #[test]
    fn a_shard_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Shard>(), 64);
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }
}

//! Random numbers from the standard library's per-process hash keys: enough for jitter,
//! nonces and unique names, without a dependency.

use std::hash::{BuildHasher, Hasher, RandomState};

/// A fresh random `u64` (each call builds new hash keys).
pub(crate) fn u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// A fresh random 16-digit lower-case hex string.
#[cfg_attr(not(any(feature = "_broker", feature = "testing")), allow(dead_code))]
pub(crate) fn hex() -> String {
    format!("{:016x}", u64())
}

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
    hex_words(1)
}

/// `words` fresh random `u64`s as one string of `16 * words` lower-case hex digits, in one
/// allocation and without the formatting machinery: some transports name every message
/// they publish with one.
#[cfg_attr(not(any(feature = "_broker", feature = "testing")), allow(dead_code))]
pub(crate) fn hex_words(words: usize) -> String {
    let mut out = String::with_capacity(16 * words);
    for _ in 0..words {
        push_hex(&mut out, u64());
    }
    out
}

/// A 32-digit lower-case hex id unique to this call: 16 digits naming the calling thread
/// (drawn at random once per thread) and 16 of a count of the thread's ids (from a random
/// start). Ids from one thread differ until its count wraps (2^64 ids); two threads, or two
/// processes, share a name with a chance of about one in 2^64 per pair. The digits are
/// written as [`hex_words`] writes them, without its two fresh hash keys and the hashing
/// with each: for transports that name every message they publish.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn unique_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<(u64, u64)> = Cell::new((u64(), u64()));
    }
    let (name, count) = NEXT.with(|next| {
        let (name, count) = next.get();
        next.set((name, count.wrapping_add(1)));
        (name, count)
    });
    let mut digits = [0u8; 32];
    let (first, second) = digits.split_at_mut(16);
    write_hex(first, name);
    write_hex(second, count);
    // Hex digits are ASCII: the check cannot fail, and it reads the 32 bytes a word at a
    // time, where pushing them as chars costs a capacity check and an encoding each.
    String::from_utf8(digits.to_vec()).unwrap_or_default()
}

/// Appends `n` as 16 lower-case hex digits (what `format!("{n:016x}")` gives).
#[cfg_attr(not(any(feature = "_broker", feature = "testing")), allow(dead_code))]
fn push_hex(out: &mut String, n: u64) {
    let mut digits = [0u8; 16];
    write_hex(&mut digits, n);
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// Writes `n` into the first 16 bytes of `out` as lower-case hex digits, most significant
/// first.
#[cfg_attr(not(any(feature = "_broker", feature = "testing")), allow(dead_code))]
fn write_hex(out: &mut [u8], n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in out.iter_mut().take(16).enumerate() {
        *digit = DIGITS[(n >> (60 - 4 * i)) as usize & 0xf];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_sixteen_lower_case_digits_as_format_gives_them() {
        for n in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef, super::u64()] {
            let mut out = String::from("x");
            super::push_hex(&mut out, n);
            assert_eq!(out, format!("x{n:016x}"));
        }
        assert_ne!(super::hex(), super::hex());
        let ids: Vec<String> = (0..1000).map(|_| super::unique_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(id[..16], ids[0][..16], "one thread, one name");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let other = std::thread::spawn(super::unique_id).join().unwrap();
        assert_ne!(other[..16], ids[0][..16], "another thread, another name");
        let two = super::hex_words(2);
        assert_eq!(two.len(), 32);
        assert!(
            two.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}

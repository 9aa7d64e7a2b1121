//! Standard base64 (RFC 4648, padded) encoding, shared by the `base64` codec and the
//! transports that keep raw bytes in an attribute.
#![cfg_attr(
    not(any(feature = "base64", feature = "nats", feature = "kafka")),
    allow(dead_code)
)]

/// The standard alphabet.
pub(crate) const ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends the encoding of `group` (one to three bytes, padded when fewer) to `out`.
pub(crate) fn encode_group(group: &[u8], out: &mut Vec<u8>) {
    let b = [
        group[0],
        group.get(1).copied().unwrap_or(0),
        group.get(2).copied().unwrap_or(0),
    ];
    let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    let chars = [18, 12, 6, 0].map(|shift| ALPHABET[((n >> shift) & 63) as usize]);
    let keep = group.len() + 1;
    out.extend_from_slice(&chars[..keep]);
    out.extend(std::iter::repeat_n(b'=', 4 - keep));
}

/// `data` encoded.
#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
pub(crate) fn encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        encode_group(group, &mut out);
    }
    // Only alphabet characters and '=' were written.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_short_groups_and_covers_the_alphabet() {
        assert_eq!(super::encode(b""), "");
        assert_eq!(super::encode(b"hi"), "aGk=");
        assert_eq!(super::encode(b"\xff\xfe\xfd\x00"), "//79AA==");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::encode(&all).len(), 344);
    }
}

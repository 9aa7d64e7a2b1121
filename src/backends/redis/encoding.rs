//! How a message is laid out in a stream entry, and in the delayed set.
//!
//! A stream entry holds one field `body` (the body's bytes, unchanged) and one field
//! `attr:<Key>` per attribute value, in order, the key in its canonical form: a key with
//! three values gives three fields of the same name. Redis keeps repeated field names and
//! their order, so multi-valued attributes and binary bodies survive byte for byte.
//!
//! A delayed message waits in a sorted set as a MessagePack array of byte strings:
//! a random nonce (so that two identical messages stay two members), the stream's
//! `MAXLEN` (`0` for none), then the entry's fields and values as above. The mover script
//! unpacks it with Redis's bundled `cmsgpack` and adds the fields to the stream as they are.

use std::io::Write;

use bytes::Bytes;
use redis::Value;

use crate::Attributes;

/// The field holding the body.
pub(super) const BODY: &[u8] = b"body";
/// The prefix of the fields holding attributes.
pub(super) const ATTR: &[u8] = b"attr:";

/// Appends the entry's fields and values to an XADD command.
pub(super) fn add_fields(cmd: &mut redis::Cmd, attributes: &Attributes, body: &[u8]) {
    cmd.arg(BODY).arg(body);
    for (key, value) in attributes.iter() {
        cmd.arg(AttrName(key)).arg(value);
    }
}

/// Writes `attr:<key>` straight into the command's buffer.
struct AttrName<'a>(&'a str);

impl redis::ToRedisArgs for AttrName<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        w.write_all(ATTR).ok();
        w.write_all(self.0.as_bytes()).ok();
    }
}

/// The entry's fields and values, flattened, for the delayed set.
pub(super) fn fields<'a>(attributes: &'a Attributes, body: &'a [u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 + 2 * attributes.len());
    out.push(BODY.to_vec());
    out.push(body.to_vec());
    for (key, value) in attributes.iter() {
        let mut name = Vec::with_capacity(ATTR.len() + key.len());
        name.extend_from_slice(ATTR);
        name.extend_from_slice(key.as_bytes());
        out.push(name);
        out.push(value.as_bytes().to_vec());
    }
    out
}

/// A decoded entry, or why it could not be decoded (with what could be saved).
#[derive(Debug)]
pub(super) enum Decoded {
    Ok {
        attributes: Attributes,
        body: Bytes,
    },
    Malformed {
        reason: String,
        attributes: Attributes,
        body: Bytes,
    },
}

/// Decodes an entry's field list (`[field, value, field, value, ...]`).
pub(super) fn decode(fields: Vec<Value>) -> Decoded {
    let mut attributes = Attributes::new();
    let mut body: Option<Bytes> = None;
    let mut problem: Option<String> = None;
    let mut note = |p: String| {
        if problem.is_none() {
            problem = Some(p);
        }
    };
    if fields.len() % 2 != 0 {
        note(format!("odd number of field entries ({})", fields.len()));
    }
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let (Some(name), Some(value)) = (bytes_of(name), bytes_of(value)) else {
            note("a field or value is not a string".to_owned());
            continue;
        };
        if name == BODY {
            if body.is_some() {
                note("more than one body field".to_owned());
                continue;
            }
            body = Some(Bytes::from(value));
        } else if let Some(key) = name.strip_prefix(ATTR) {
            match (std::str::from_utf8(key), String::from_utf8(value)) {
                (Ok(""), _) => note("an attribute field has an empty key".to_owned()),
                (Ok(key), Ok(value)) => attributes.add(key, value),
                (Ok(key), Err(_)) => note(format!("attribute {key:?} is not UTF-8")),
                (Err(_), _) => note(format!(
                    "attribute field {:?} is not UTF-8",
                    String::from_utf8_lossy(&name)
                )),
            }
        } else {
            note(format!(
                "unknown field {:?} (expected \"body\" or \"attr:<Key>\")",
                String::from_utf8_lossy(&name)
            ));
        }
    }
    match (problem, body) {
        (None, Some(body)) => Decoded::Ok { attributes, body },
        (None, None) => Decoded::Malformed {
            reason: "the entry has no body field".to_owned(),
            attributes,
            body: Bytes::new(),
        },
        (Some(reason), body) => Decoded::Malformed {
            reason,
            attributes,
            body: body.unwrap_or_default(),
        },
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The delayed-set member for a message: MessagePack `[nonce, maxlen, fields...]`.
pub(super) fn delayed_member(nonce: u64, max_len: Option<usize>, fields: &[Vec<u8>]) -> Vec<u8> {
    let nonce = format!("{nonce:016x}");
    let max_len = max_len.unwrap_or(0).to_string();
    let parts = std::iter::once(nonce.as_bytes())
        .chain(std::iter::once(max_len.as_bytes()))
        .chain(fields.iter().map(Vec::as_slice));
    let size: usize =
        5 + 16 + 5 + max_len.len() + fields.iter().map(|f| 5 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let count = u32::try_from(2 + fields.len()).expect("fewer than 2^32 fields");
    out.push(0xdd); // array 32
    out.extend_from_slice(&count.to_be_bytes());
    for part in parts {
        let len = u32::try_from(part.len()).expect("a Redis string is under 512 MiB");
        out.push(0xdb); // str 32: the bundled cmsgpack reads no bin types, and its strings are binary-safe
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(parts: &[&[u8]]) -> Vec<Value> {
        parts
            .iter()
            .map(|p| Value::BulkString(p.to_vec()))
            .collect()
    }

    #[test]
    fn fields_round_trip_multi_valued_attributes_and_binary_bodies() {
        let mut attrs = Attributes::new();
        attrs.add("x-tag", "a");
        attrs.add("X-Tag", "b");
        attrs.set("Content-Type", "application/octet-stream");
        let body = [0u8, 255, 10, 13, 0];
        let flat = fields(&attrs, &body);
        let Decoded::Ok {
            attributes,
            body: got,
        } = decode(flat.into_iter().map(Value::BulkString).collect())
        else {
            panic!("decodes");
        };
        assert_eq!(got.as_ref(), &body);
        assert_eq!(attributes.get_all("X-Tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(attributes, attrs);
    }

    #[test]
    fn a_missing_body_is_malformed() {
        let Decoded::Malformed {
            reason, attributes, ..
        } = decode(bulk(&[b"attr:K", b"v"]))
        else {
            panic!("malformed");
        };
        assert!(reason.contains("no body"), "{reason}");
        assert_eq!(attributes.get("K"), Some("v"));
    }

    #[test]
    fn undecodable_attributes_and_unknown_fields_are_malformed_and_keep_the_body() {
        for (entry, expect) in [
            (
                bulk(&[b"body", b"x", b"attr:K", &[0xff, 0xfe]]),
                "not UTF-8",
            ),
            (
                bulk(&[b"body", b"x", b"data", b"y"]),
                "unknown field \"data\"",
            ),
            (bulk(&[b"body", b"x", b"body", b"y"]), "more than one body"),
            (bulk(&[b"body", b"x", b"attr:", b"y"]), "empty key"),
        ] {
            let Decoded::Malformed { reason, body, .. } = decode(entry) else {
                panic!("malformed: {expect}");
            };
            assert!(reason.contains(expect), "{reason} should say {expect}");
            assert_eq!(body, "x");
        }
    }

    #[test]
    fn the_delayed_member_is_a_messagepack_array_of_str32() {
        let member = delayed_member(1, Some(10), &[b"body".to_vec(), b"hi".to_vec()]);
        assert_eq!(&member[..5], &[0xdd, 0, 0, 0, 4]);
        assert_eq!(&member[5..10], &[0xdb, 0, 0, 0, 16]);
        assert!(member.ends_with(&[0xdb, 0, 0, 0, 2, b'h', b'i']));
    }
}

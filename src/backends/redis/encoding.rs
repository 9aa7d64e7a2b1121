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

use crate::Error;

use crate::Attributes;

/// The field holding the body.
pub(super) const BODY: &[u8] = b"body";
/// The prefix of the fields holding attributes.
pub(super) const ATTR: &[u8] = b"attr:";

/// Calls `field(prefix, name, value)` for each of the entry's fields in order: `body`
/// (no prefix), then `attr:` + key for each attribute value. One walk serves XADD and the
/// delayed member, so neither builds the field names or copies the body on the way.
fn each_field<'a>(
    attributes: &'a Attributes,
    body: &'a [u8],
    mut field: impl FnMut(&'a [u8], &'a [u8], &'a [u8]),
) {
    field(b"", BODY, body);
    for (key, value) in attributes.iter() {
        field(ATTR, key.as_bytes(), value.as_bytes());
    }
}

/// The `XADD` adding a message to `stream` (trimmed to about `max_len` entries).
pub(super) fn xadd(
    stream: &str,
    max_len: Option<usize>,
    attributes: &Attributes,
    body: &[u8],
) -> redis::Cmd {
    let (args, bytes) = xadd_capacity(stream, attributes, body);
    let mut cmd = redis::Cmd::with_capacity(args, bytes);
    cmd.arg("XADD").arg(stream);
    if let Some(n) = max_len {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*");
    add_fields(&mut cmd, attributes, body);
    cmd
}

/// The arguments and bytes an `XADD` of the message takes at most, so that its command
/// is built without growing its buffers (`MAXLEN`'s count counted as 20 digits).
fn xadd_capacity(stream: &str, attributes: &Attributes, body: &[u8]) -> (usize, usize) {
    let (values, bytes) = attributes.sizes();
    (
        8 + 2 * values,
        "XADDMAXLEN~*".len()
            + 20
            + stream.len()
            + BODY.len()
            + body.len()
            + values * ATTR.len()
            + bytes,
    )
}

/// Appends the entry's fields and values to an XADD command.
fn add_fields(cmd: &mut redis::Cmd, attributes: &Attributes, body: &[u8]) {
    each_field(attributes, body, |prefix, name, value| {
        cmd.arg(Concat(prefix, name)).arg(value);
    });
}

/// Writes two byte strings as one argument, straight into the command's buffer.
struct Concat<'a>(&'a [u8], &'a [u8]);

impl redis::ToRedisArgs for Concat<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        w.write_all(self.0).ok();
        w.write_all(self.1).ok();
    }
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
            match (std::str::from_utf8(key), std::str::from_utf8(&value)) {
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

/// The delayed-set member for a message: MessagePack `[nonce, maxlen, fields...]`, each
/// a `str 32` (the bundled cmsgpack reads no bin types, and its strings are binary-safe).
///
/// # Errors
///
/// [`Error::BodyTooLarge`] for a body, and [`Error::InvalidAttribute`] for an attribute,
/// longer than a `str 32` holds (4 GiB; Redis itself takes at most 512 MiB by default).
pub(super) fn delayed_member(
    nonce: u64,
    max_len: Option<usize>,
    attributes: &Attributes,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    const MAX: usize = u32::MAX as usize;
    if body.len() > MAX {
        return Err(Error::BodyTooLarge { limit: MAX });
    }
    for (key, value) in attributes.iter() {
        if key.len() + ATTR.len() > MAX || value.len() > MAX {
            return Err(Error::invalid_attribute(
                key,
                "longer than 4 GiB, more than a delayed Redis message holds",
            ));
        }
    }
    fn push(out: &mut Vec<u8>, prefix: &[u8], part: &[u8]) {
        // Every part was checked above to fit.
        let len = u32::try_from(prefix.len() + part.len()).unwrap_or(u32::MAX);
        out.push(0xdb);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(prefix);
        out.extend_from_slice(part);
    }
    let count = u32::try_from(2 + 2 * (1 + attributes.iter().count())).map_err(|_| {
        Error::invalid_attribute(
            "",
            "more attribute values than a delayed Redis message holds",
        )
    })?;
    let mut out = Vec::with_capacity(64 + body.len());
    out.push(0xdd); // array 32
    out.extend_from_slice(&count.to_be_bytes());
    push(&mut out, b"", format!("{nonce:016x}").as_bytes());
    push(&mut out, b"", max_len.unwrap_or(0).to_string().as_bytes());
    each_field(attributes, body, |prefix, name, value| {
        push(&mut out, prefix, name);
        push(&mut out, b"", value);
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes and body of fields that decode.
    fn decode_ok(fields: Vec<Value>) -> (Attributes, Bytes) {
        match decode(fields) {
            Decoded::Ok { attributes, body } => (attributes, body),
            Decoded::Malformed { reason, .. } => panic!("does not decode: {reason}"),
        }
    }

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
        let mut flat = Vec::new();
        each_field(&attrs, &body, |prefix, name, value| {
            flat.push(Value::BulkString([prefix, name].concat()));
            flat.push(Value::BulkString(value.to_vec()));
        });
        let (attributes, got) = decode_ok(flat);
        assert_eq!(got.as_ref(), &body);
        assert_eq!(attributes.get_all("X-Tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(attributes, attrs);
    }

    #[test]
    fn an_xadd_is_sized_for_every_field_it_carries() {
        let mut attrs = Attributes::new();
        attrs.add("x-tag", "a");
        attrs.add("X-Tag", "bb");
        attrs.set("Content-Type", "application/octet-stream");
        attrs.set("X-Long", "v".repeat(300));
        // Replaced values leave bytes behind in the table that no field carries.
        attrs.set("X-Long", "short");
        for (max_len, body) in [(None, &b""[..]), (Some(usize::MAX), &[7u8; 1000][..])] {
            let (arg_room, byte_room) = xadd_capacity("orders", &attrs, body);
            let cmd = xadd("orders", max_len, &attrs, body);
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    _ => panic!("an XADD has no cursor"),
                })
                .collect();
            // The room asked for holds every argument: the buffers never grew.
            assert!(args.len() <= arg_room, "{} > {arg_room}", args.len());
            let bytes: usize = args.iter().map(Vec::len).sum();
            assert!(bytes <= byte_room, "{bytes} > {byte_room}");
            let fields = if max_len.is_some() { 6 } else { 3 };
            assert_eq!(args[0], b"XADD");
            assert_eq!(args[fields - 1], b"*");
            let flat = args[fields..]
                .iter()
                .map(|a| Value::BulkString(a.clone()))
                .collect();
            let (attributes, got) = decode_ok(flat);
            assert_eq!(attributes, attrs);
            assert_eq!(got.as_ref(), body);
        }
    }

    #[test]
    fn fields_read_as_simple_strings_or_numbers_decode_like_bulk_strings() {
        // A script's reply (Lua) or a RESP3 proxy may hand fields back in other forms.
        let fields = vec![
            Value::SimpleString("attr:X-Count".into()),
            Value::Int(42),
            Value::SimpleString("body".into()),
            Value::SimpleString("hello".into()),
        ];
        let (attributes, body) = decode_ok(fields);
        assert_eq!(attributes.get("X-Count"), Some("42"));
        assert_eq!(body.as_ref(), b"hello");
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
        let member = delayed_member(1, Some(10), &Attributes::new(), b"hi").unwrap();
        assert_eq!(&member[..5], &[0xdd, 0, 0, 0, 4]);
        assert_eq!(&member[5..10], &[0xdb, 0, 0, 0, 16]);
        assert!(member.ends_with(&[0xdb, 0, 0, 0, 2, b'h', b'i']));
    }
}

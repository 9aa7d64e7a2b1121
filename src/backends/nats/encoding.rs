//! Attributes to NATS headers and back.
//!
//! - One header per attribute value, in order: a multi-valued attribute stays
//!   multi-valued. What a header cannot carry is refused with
//!   [`Error::InvalidAttribute`] naming the key: a name that is not printable ASCII or
//!   holds a colon, a value with a line break, a value that starts or ends with
//!   whitespace (readers trim it), and `Nats-Msg-Id`, which the topic sets itself.
//! - On delivery, headers are read in wire order under their canonical keys (`x-multi: 1`
//!   then `X-MULTI: 2` is `X-Multi: [1, 2]`), as Go's `textproto` reads them. The
//!   `Nats-Msg-Id` the topic added is not an attribute.
//! - A header block that breaks the protocol (not UTF-8, a line without a colon, no
//!   version line) makes the delivery malformed: the engine dead-letters it with the
//!   headers that could be read, the whole block as it came in
//!   [`keys::RAW_HEADERS`](crate::keys::RAW_HEADERS) (base64), and the reason.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use super::wire;
use crate::{Attributes, Error, keys};

/// The header JetStream dedupes on.
pub(super) const MSG_ID: &str = "Nats-Msg-Id";

/// The headers for `attributes`, with `msg_id` (or a unique one) as `Nats-Msg-Id`.
///
/// # Errors
///
/// [`Error::InvalidAttribute`] for an attribute a NATS header cannot carry (see the module
/// docs).
pub(super) fn headers(attributes: &Attributes, msg_id: Option<&str>) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    for (key, value) in attributes.iter() {
        if key.eq_ignore_ascii_case(MSG_ID) {
            return Err(Error::invalid_attribute(
                key,
                "the NATS topic sets Nats-Msg-Id itself, from its msg_id_attribute (Idempotency-Key by default): set that attribute instead",
            ));
        }
        let name = HeaderName::from_str(key)
            .ok()
            .filter(|_| !key.is_empty())
            .ok_or_else(|| {
                Error::invalid_attribute(
                    key,
                    "a NATS header name must be printable ASCII, without spaces or a colon",
                )
            })?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            Error::invalid_attribute(key, "a NATS header value cannot hold a line break")
        })?;
        // What `trim` would take off, looking at the two ends only.
        let (v, space) = (value.as_str(), char::is_whitespace);
        if v.starts_with(space) || v.ends_with(space) {
            return Err(Error::invalid_attribute(
                key,
                "a NATS header value cannot start or end with whitespace (readers trim it)",
            ));
        }
        headers.append(name, value);
    }
    let id = match msg_id {
        Some(id) => HeaderValue::from_str(id).map_err(|_| {
            Error::invalid_attribute(
                MSG_ID,
                "the idempotency attribute's value cannot hold a line break",
            )
        })?,
        // Hex digits, which a header value always takes: the string moves in as it is.
        None => HeaderValue::from(crate::random::unique_id()),
    };
    headers.insert(HeaderName::from_static(MSG_ID), id);
    Ok(headers)
}

/// A delivery's header block as attributes, and why it is malformed, if it is.
pub(super) fn attributes(block: Option<&[u8]>) -> (Attributes, Option<String>) {
    let mut attributes = Attributes::new();
    let Some(block) = block else {
        return (attributes, None);
    };
    let parsed = wire::parse_headers(block);
    for (name, value) in &parsed.entries {
        if !name.eq_ignore_ascii_case(MSG_ID) {
            attributes.add(name, value);
        }
    }
    if parsed.problem.is_some() {
        attributes.set(keys::RAW_HEADERS, crate::b64::encode(block));
    }
    (attributes, parsed.problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_header_cannot_carry_is_refused_by_name() {
        for (key, value, says) in [
            ("üser-agenT", "v", "printable ASCII"),
            ("tab\there", "v", "printable ASCII"),
            ("del\u{7f}", "v", "printable ASCII"),
            ("with space", "v", "printable ASCII"),
            ("co:lon", "v", "printable ASCII"),
            ("", "v", "printable ASCII"),
            ("K", "line\nbreak", "line break"),
            ("K", "carriage\rreturn", "line break"),
            ("K", " leading", "whitespace"),
            ("K", "trailing\t", "whitespace"),
            ("K", "em space\u{2003}", "whitespace"),
            ("K", "\u{a0}no-break", "whitespace"),
            ("nats-msg-id", "x", "Idempotency-Key"),
        ] {
            let mut attrs = Attributes::new();
            attrs.set(key, value);
            match headers(&attrs, None) {
                Err(Error::InvalidAttribute { key: k, reason }) => {
                    assert!(reason.contains(says), "{key:?}: {reason}");
                    assert_eq!(k, attrs.keys().next().unwrap());
                }
                other => panic!("{key:?} {value:?}: {other:?}"),
            }
        }
        let mut bad_id = Attributes::new();
        bad_id.set("X", "y");
        assert!(headers(&bad_id, Some("a\nb")).is_err());
    }

    #[test]
    fn attributes_survive_the_round_trip_in_order() {
        let mut attrs = Attributes::new();
        attrs.add("X-Multi", "1");
        attrs.add("X-Multi", "2");
        attrs.set("X-Odd_key.with!tokens~*", "odd");
        attrs.set("X-Inner", "a\tb  c");
        attrs.set("X-Empty", "");
        let map = headers(&attrs, Some("id-1")).unwrap();
        assert_eq!(map.get(MSG_ID).map(HeaderValue::as_str), Some("id-1"));
        let mut block = b"NATS/1.0\r\n".to_vec();
        for (name, values) in map.iter() {
            for value in values {
                block.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        block.extend_from_slice(b"\r\n");
        let (back, problem) = attributes(Some(&block));
        assert_eq!(problem, None);
        for key in attrs.keys() {
            assert_eq!(
                back.get_all(key).collect::<Vec<_>>(),
                attrs.get_all(key).collect::<Vec<_>>(),
                "{key}"
            );
        }
        assert_eq!(back.len(), attrs.len(), "{back:?}");
    }

    #[test]
    fn one_header_in_different_cases_keeps_wire_order() {
        let (attrs, problem) = attributes(Some(
            b"NATS/1.0\r\nx-multi: 1\r\nX-MULTI: 2\r\nX-Multi: 3\r\nx-mULTI: 4\r\n\r\n",
        ));
        assert_eq!(problem, None);
        assert_eq!(
            attrs.get_all("X-Multi").collect::<Vec<_>>(),
            ["1", "2", "3", "4"]
        );
    }

    #[test]
    fn a_malformed_block_keeps_what_it_can_and_the_raw_bytes() {
        let block = b"NATS/1.0\r\nGood: yes\r\nno colon\r\nBad: \xff\r\n\r\n";
        let (attrs, problem) = attributes(Some(block));
        assert!(problem.is_some());
        assert_eq!(attrs.get("Good"), Some("yes"));
        assert_eq!(
            attrs.get(keys::RAW_HEADERS),
            Some(crate::b64::encode(block).as_str())
        );
    }
}

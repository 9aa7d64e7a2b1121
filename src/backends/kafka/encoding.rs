//! Attributes as record headers and the record key, and back.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::{Attributes, Error, keys};

/// The headers of a record carrying `attributes`, and its key: the value of
/// `key_attribute`, which is not a header.
///
/// # Errors
///
/// [`Error::InvalidAttribute`] when `key_attribute` has more than one value.
pub(super) fn encode<'a>(
    attributes: &'a Attributes,
    key_attribute: &str,
) -> Result<(OwnedHeaders, Option<&'a str>), Error> {
    let mut key = None;
    // One header a value (`len` counts keys, and reads the whole text to do it).
    let mut headers = OwnedHeaders::new_with_capacity(attributes.sizes().0);
    for (name, value) in attributes.iter() {
        if name.eq_ignore_ascii_case(key_attribute) {
            if key.is_some() {
                return Err(Error::invalid_attribute(
                    name,
                    "a Kafka record has one key: this attribute has more than one value",
                ));
            }
            key = Some(value);
            continue;
        }
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    Ok((headers, key))
}

/// The attributes of a record with these `headers` and `key`; with, when some header could
/// not be read, why (the delivery is then malformed, and each unreadable header is kept
/// in [`keys::RAW_HEADERS`]).
pub(super) fn decode<H: Headers>(
    headers: Option<&H>,
    key: Option<&[u8]>,
    key_attribute: &str,
) -> (Attributes, Option<String>) {
    let mut attributes = Attributes::new();
    if let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) {
        attributes.add(key_attribute, key);
    }
    let Some(headers) = headers else {
        return (attributes, None);
    };
    let mut problems = Vec::new();
    for idx in 0..headers.count() {
        // librdkafka's Rust binding panics on a header name that is not UTF-8 (Kafka says
        // names are UTF-8; another producer may not): caught, so that the record is
        // dead-lettered rather than the server brought down.
        let header = catch_unwind(AssertUnwindSafe(|| headers.try_get(idx)));
        match header {
            Ok(Some(Header { key, value })) => {
                let value = value.unwrap_or_default();
                match std::str::from_utf8(value) {
                    Ok(text) => attributes.add(key, text),
                    Err(_) => {
                        let mut raw = format!("{key}: ").into_bytes();
                        raw.extend_from_slice(value);
                        attributes.add(keys::RAW_HEADERS, crate::b64::encode(&raw));
                        problems.push(format!("the value of header {key:?} is not UTF-8"));
                    }
                }
            }
            Ok(None) => {}
            Err(_) => problems.push(format!("the name of header {idx} is not UTF-8")),
        }
    }
    if problems.is_empty() {
        (attributes, None)
    } else {
        (
            attributes,
            Some(format!(
                "unreadable record headers: {}",
                problems.join("; ")
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_headers_and_the_key() {
        let mut attrs = Attributes::new();
        attrs.add("X-Multi", "1");
        attrs.add("X-Multi", "2");
        attrs.set("Kafka-Key", "k1");
        attrs.set("Unicode", "héllo, wörld");
        let (headers, key) = encode(&attrs, "Kafka-Key").unwrap();
        assert_eq!(key, Some("k1"));
        assert_eq!(headers.count(), 3);
        let (back, malformed) = decode(Some(&headers), key.map(str::as_bytes), "Kafka-Key");
        assert_eq!(malformed, None);
        assert_eq!(back.get_all("X-Multi").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(back.get("kafka-key"), Some("k1"));
        assert_eq!(back.get("Unicode"), Some("héllo, wörld"));
    }

    #[test]
    fn a_second_key_is_refused() {
        let mut attrs = Attributes::new();
        attrs.add("Kafka-Key", "a");
        attrs.add("Kafka-Key", "b");
        assert!(matches!(
            encode(&attrs, "Kafka-Key"),
            Err(Error::InvalidAttribute { .. })
        ));
    }

    #[test]
    fn a_value_that_is_not_utf8_makes_the_record_malformed() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "Good",
                value: Some("yes"),
            })
            .insert(Header {
                key: "Bad",
                value: Some(&[0xff, 0xfe][..]),
            });
        let (attrs, malformed) = decode(Some(&headers), None, "Kafka-Key");
        assert!(malformed.unwrap().contains("\"Bad\""));
        assert_eq!(attrs.get("Good"), Some("yes"));
        assert_eq!(
            attrs.get(keys::RAW_HEADERS),
            Some(crate::b64::encode(b"Bad: \xff\xfe").as_str())
        );
    }
}

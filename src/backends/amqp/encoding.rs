//! Attributes to AMQP properties and headers, and back.
//!
//! - `Content-Type`, `Content-Encoding` and `Message-Id` with one value become the basic
//!   properties of the same name; `Timestamp` with one value in Unix seconds becomes the
//!   timestamp property. Everything else (and a mapped key with several values, or a
//!   timestamp that is not a number) is a header.
//! - A header holds a string for a one-valued attribute and an array of strings for a
//!   multi-valued one.
//! - A message without a one-valued `Message-Id` gets a generated one (16 hex digits) in the
//!   message id property, marked by the `x-msgio-generated-id` header: on delivery it is
//!   the context's message id, and not an attribute (the message arrives with the
//!   attributes it was published with).
//! - `x-msgio-attempts` (the attempts made before a republication) and
//!   `x-msgio-generated-id` are the adapter's own headers, never attributes.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::{Attributes, Error};

/// The header counting the attempts made before a message was republished (for a retry).
pub(super) const ATTEMPTS_HEADER: &str = "x-msgio-attempts";
/// Marks a message id property the topic generated, rather than one the message had.
const GENERATED_ID_HEADER: &str = "x-msgio-generated-id";
/// Headers RabbitMQ adds when dead-lettering (through a wait queue, say): its bookkeeping,
/// not the message's.
const BROKER_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

const CONTENT_TYPE: &str = "Content-Type";
const CONTENT_ENCODING: &str = "Content-Encoding";
const MESSAGE_ID: &str = "Message-Id";
const TIMESTAMP: &str = "Timestamp";

/// A name AMQP can carry (a short string: at most 255 bytes).
pub(super) fn short(what: &'static str, value: &str) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|_| {
        Error::invalid_config(
            what,
            format!(
                "{:?}... is {} bytes; AMQP allows 255",
                value.chars().take(32).collect::<String>(),
                value.len()
            ),
        )
    })
}

/// The basic properties (persistent) for `attributes`.
///
/// # Errors
///
/// [`Error::InvalidAttribute`] for a key longer than 255 bytes.
pub(super) fn properties(attributes: &Attributes) -> Result<BasicProperties, Error> {
    let (mut content_type, mut content_encoding, mut message_id, mut timestamp) =
        (None, None, None, None);
    let mut headers = FieldTable::default();
    for (key, mut values) in attributes.groups() {
        let all = values.clone();
        let first = values.next().unwrap_or_default();
        let single = values.next().is_none();
        if single {
            let property = match key {
                CONTENT_TYPE => Some(&mut content_type),
                CONTENT_ENCODING => Some(&mut content_encoding),
                MESSAGE_ID => Some(&mut message_id),
                _ => None,
            };
            if let Some(property) = property {
                // A value too long for a property stays a header.
                if let Ok(value) = ShortString::try_new(first) {
                    *property = Some(value);
                    continue;
                }
            } else if key == TIMESTAMP {
                // One that is not a number of seconds stays a header.
                if let Ok(seconds) = first.parse() {
                    timestamp = Some(seconds);
                    continue;
                }
            }
        }
        let name = ShortString::try_new(key).map_err(|_| {
            Error::invalid_attribute(key, "an AMQP header name is at most 255 bytes")
        })?;
        let value = if single {
            AMQPValue::LongString(LongString::from(first))
        } else {
            AMQPValue::FieldArray(FieldArray::from(
                all.map(|v| AMQPValue::LongString(LongString::from(v)))
                    .collect::<Vec<_>>(),
            ))
        };
        headers.insert(name, value);
    }
    let message_id = message_id.unwrap_or_else(|| {
        headers.insert(GENERATED_ID_HEADER.into(), AMQPValue::Boolean(true));
        crate::random::hex().into()
    });
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id);
    if let Some(v) = content_type {
        props = props.with_content_type(v);
    }
    if let Some(v) = content_encoding {
        props = props.with_content_encoding(v);
    }
    if let Some(v) = timestamp {
        props = props.with_timestamp(v);
    }
    if !headers.inner().is_empty() {
        props = props.with_headers(headers);
    }
    Ok(props)
}

/// What a delivery's properties say: its attributes, its message id, the attempts made
/// before it was last published, and how often the broker redelivered it.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    pub(super) attributes: Attributes,
    pub(super) message_id: Option<String>,
    pub(super) prior_attempts: u32,
    pub(super) delivery_count: Option<u32>,
}

/// Decodes `props` (see the module docs). Header values that are numbers, booleans or
/// timestamps become their decimal text; strings that are not UTF-8 are read lossily;
/// tables (RabbitMQ's `x-death`) are not attributes.
pub(super) fn decode(props: &BasicProperties) -> Decoded {
    let mut decoded = Decoded::default();
    let attributes = &mut decoded.attributes;
    if let Some(v) = props.content_type() {
        attributes.set(CONTENT_TYPE, v.as_str());
    }
    if let Some(v) = props.content_encoding() {
        attributes.set(CONTENT_ENCODING, v.as_str());
    }
    if let Some(v) = props.message_id() {
        // A generated id is not an attribute (and a multi-valued Message-Id travelled as
        // a header, beside a generated property).
        if !props
            .headers()
            .as_ref()
            .is_some_and(|h| h.contains_key(GENERATED_ID_HEADER) || h.contains_key(MESSAGE_ID))
        {
            attributes.set(MESSAGE_ID, v.as_str());
        }
        decoded.message_id = Some(v.as_str().to_owned());
    }
    if let Some(v) = props.timestamp() {
        attributes.set(TIMESTAMP, v.to_string());
    }
    let Some(headers) = props.headers() else {
        return decoded;
    };
    for (name, value) in headers {
        let name = name.as_str();
        if name == ATTEMPTS_HEADER {
            decoded.prior_attempts = number(value).unwrap_or(0);
            continue;
        }
        if name == "x-delivery-count" {
            decoded.delivery_count = number(value);
            continue;
        }
        if BROKER_HEADERS.contains(&name) || name == GENERATED_ID_HEADER {
            continue;
        }
        match value {
            AMQPValue::FieldArray(values) => {
                for value in values.as_slice() {
                    if let Some(text) = text(value) {
                        attributes.add(name, text);
                    }
                }
            }
            value => {
                if let Some(text) = text(value) {
                    attributes.add(name, text);
                }
            }
        }
    }
    decoded
}

/// `value` as an attribute value, `None` for a table or an array.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(v) => v.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        AMQPValue::DecimalValue(d) => {
            let scale = u32::from(d.scale);
            match 10u64.checked_pow(scale) {
                Some(div) if scale > 0 => format!(
                    "{}.{:0width$}",
                    u64::from(d.value) / div,
                    u64::from(d.value) % div,
                    width = scale as usize
                ),
                _ => d.value.to_string(),
            }
        }
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => return None,
    })
}

/// An integer header as a `u32`, saturating.
fn number(value: &AMQPValue) -> Option<u32> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// `props` for republishing a delivery after `attempts` attempts: the broker's dead-letter
/// bookkeeping dropped, the attempt count recorded. (A delay, when there is one, replaces
/// any expiration.)
pub(super) fn for_republish(props: &BasicProperties, attempts: u32) -> BasicProperties {
    let mut kept: std::collections::BTreeMap<ShortString, AMQPValue> = props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| {
                    !BROKER_HEADERS.contains(&k.as_str()) && k.as_str() != "x-delivery-count"
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    kept.insert(
        ShortString::from(ATTEMPTS_HEADER),
        AMQPValue::LongUInt(attempts),
    );
    props
        .clone()
        .with_headers(FieldTable::from(kept))
        .with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same keys with the same values (headers come back in name order).
    fn assert_same(a: &Attributes, b: &Attributes) {
        let view = |x: &Attributes| {
            let mut v: Vec<(String, Vec<String>)> = x
                .keys()
                .map(|k| (k.to_owned(), x.get_all(k).map(str::to_owned).collect()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(view(a), view(b));
    }

    #[test]
    fn attributes_survive_properties_and_headers() {
        let mut attrs = Attributes::new();
        attrs.set("Content-Type", "application/json");
        attrs.set("Message-Id", "m-1");
        attrs.set("Timestamp", "1700000000");
        attrs.add("X-Tag", "a");
        attrs.add("X-Tag", "b");
        attrs.set("X-Empty", "");
        let props = properties(&attrs).unwrap();
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*props.timestamp(), Some(1_700_000_000));
        assert_eq!(*props.delivery_mode(), Some(2));
        let decoded = decode(&props);
        assert_same(&decoded.attributes, &attrs);
        assert_eq!(decoded.message_id.as_deref(), Some("m-1"));
        assert_eq!(decoded.prior_attempts, 0);
    }

    #[test]
    fn a_mapped_key_with_two_values_or_a_non_numeric_timestamp_stays_a_header() {
        let mut attrs = Attributes::new();
        attrs.add("Content-Type", "text/plain");
        attrs.add("Content-Type", "text/html");
        attrs.set("Timestamp", "yesterday");
        attrs.add("Message-Id", "a");
        attrs.add("Message-Id", "b");
        let props = properties(&attrs).unwrap();
        assert!(props.content_type().is_none());
        assert!(props.timestamp().is_none());
        let decoded = decode(&props);
        assert_same(&decoded.attributes, &attrs);
        assert!(decoded.message_id.is_some(), "a generated id");
    }

    #[test]
    fn a_header_name_over_255_bytes_is_refused_by_name() {
        let mut attrs = Attributes::new();
        attrs.set("k".repeat(300), "v");
        let err = properties(&attrs).unwrap_err();
        assert!(err.to_string().contains("255"), "{err}");
    }

    #[test]
    fn republishing_records_attempts_and_drops_broker_bookkeeping() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        headers.insert("X-Keep".into(), AMQPValue::LongString("yes".into()));
        let props = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("text/plain".into());
        let out = for_republish(&props, 3);
        assert_eq!(out.content_type().as_ref().unwrap().as_str(), "text/plain");
        let decoded = decode(&out);
        assert_eq!(decoded.prior_attempts, 3);
        assert_eq!(decoded.attributes.get("X-Keep"), Some("yes"));
        assert_eq!(decoded.attributes.len(), 2);
    }

    #[test]
    fn a_message_without_an_id_gets_one_of_its_own_that_is_not_an_attribute() {
        let mut attrs = Attributes::new();
        attrs.set("X-Tag", "a");
        let a = decode(&properties(&attrs).unwrap());
        let b = decode(&properties(&Attributes::new()).unwrap());
        assert_eq!(a.message_id.as_ref().map(String::len), Some(16));
        assert_ne!(a.message_id, b.message_id);
        assert_same(&a.attributes, &attrs);
        assert!(b.attributes.is_empty(), "{:?}", b.attributes);
        // Republished (a retry), the id and the attributes stay as they were.
        let again = decode(&for_republish(&properties(&attrs).unwrap(), 1));
        assert_same(&again.attributes, &attrs);
    }
}

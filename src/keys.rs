//! Attribute keys msgio itself sets.
//!
//! A dead-lettered message keeps its attributes and body byte for byte and gains these:
//!
//! ```
//! use msgio::keys;
//! assert_eq!(keys::DEAD_LETTER_REASON, "X-Msgio-Dead-Letter-Reason");
//! ```

/// Why the message was dead-lettered: the reject reason, or the last failure after the
/// maximum attempts.
pub const DEAD_LETTER_REASON: &str = "X-Msgio-Dead-Letter-Reason";

/// How many attempts the message had when it was dead-lettered (decimal).
pub const ATTEMPTS: &str = "X-Msgio-Attempts";

/// The source (queue, stream, subject) the message was dead-lettered from.
pub const SOURCE: &str = "X-Msgio-Source";

/// The id the message had at its source, when it had one.
pub const MESSAGE_ID: &str = "X-Msgio-Message-Id";

/// When a message may be delivered, in milliseconds since the Unix epoch (decimal), for
/// transports that cannot hold a delay themselves: their topics set it from
/// [`MessageWriter::set_delay`](crate::MessageWriter::set_delay) (see
/// [`transport::stamp_not_before`](crate::transport::stamp_not_before)), and the engine defers a
/// delivery that arrives early, as a nack with a delay that counts no attempt.
pub const NOT_BEFORE: &str = "X-Msgio-Not-Before";

/// The header block of a delivery whose headers could not be decoded, exactly as it came
/// from the broker, in standard base64: such a delivery is dead-lettered (never handed to
/// a receiver) with the headers that could be read, this attribute and the reason. Set by
/// the NATS transport.
pub const RAW_HEADERS: &str = "X-Msgio-Raw-Headers";

/// The original attributes of a dead letter, when the dead-letter topic could not carry
/// them as they were (a key or a value its transport refuses, such as a non-ASCII key on
/// NATS): every attribute, in order, as `application/x-www-form-urlencoded`
/// (`key=value` pairs joined by `&`, all but `A-Z a-z 0-9 - . _ ~` percent-encoded). The
/// dead letter then carries this instead of them, with the reason saying why.
pub const ATTRIBUTES: &str = "X-Msgio-Attributes";

/// The attributes a dead letter's message had before it was dead-lettered, to publish it
/// again as it was: [`DEAD_LETTER_REASON`], [`ATTEMPTS`] and [`SOURCE`] removed,
/// [`MESSAGE_ID`] kept (the original id), and attributes the dead-letter topic could not
/// carry unfolded from [`ATTRIBUTES`]. What `msgio dlq replay` publishes.
///
/// ```
/// use msgio::{Attributes, keys};
///
/// let mut letter = Attributes::new();
/// letter.set("Order-Id", "7");
/// letter.set(keys::DEAD_LETTER_REASON, "attempt 3 of 3 failed: timeout");
/// letter.set(keys::ATTEMPTS, "3");
/// letter.set(keys::MESSAGE_ID, "1700000000000-0");
/// let original = keys::original_attributes(&letter)?;
/// assert_eq!(original.get("Order-Id"), Some("7"));
/// assert_eq!(original.get(keys::MESSAGE_ID), Some("1700000000000-0"));
/// assert!(original.get(keys::DEAD_LETTER_REASON).is_none());
/// # Ok::<(), msgio::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidAttribute`](crate::Error::InvalidAttribute) naming [`ATTRIBUTES`] when
/// it holds a pair that is not form-encoded UTF-8.
pub fn original_attributes(
    dead_letter: &crate::Attributes,
) -> Result<crate::Attributes, crate::Error> {
    crate::dead_letter::original_attributes(dead_letter)
}

//! The fate of a failed message and the message a dead-letter topic receives: shared by
//! the engine, the `Retry` decorator and the `DeadLetter` decorator, so that all three
//! decide alike and write the same reason and attributes.

use std::time::Duration;

use bytes::Bytes;

use crate::{Attributes, BoxTopic, Context, Error, Message, MessageId, Topic, keys};

/// What becomes of a message whose attempt failed with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Deliver it again, after the delay when there is one.
    Retry(Option<Duration>),
    /// Never again: dead-letter it (or drop it) for this reason.
    GiveUp(String),
}

/// The one decision of a failed message's fate: a reject is given up with its own reason;
/// any other failure is given up at attempt `max_attempts` or later, as
/// `attempt N of M failed: <error>`; otherwise it is retried, after the error's delay.
pub(crate) fn fate(error: &Error, attempt: u32, max_attempts: Option<u32>) -> Fate {
    if error.is_reject() {
        return Fate::GiveUp(reason(error));
    }
    match max_attempts.filter(|max| attempt >= *max) {
        Some(max) => Fate::GiveUp(format!(
            "attempt {attempt} of {max} failed: {}",
            shown(error)
        )),
        None => Fate::Retry(error.retry_delay()),
    }
}

/// The original attributes and body, byte for byte, plus the reason, attempts, source and
/// original id (see [`keys`]).
pub(crate) fn message(
    mut attributes: Attributes,
    body: Bytes,
    reason: &str,
    attempt: u32,
    source: Option<&str>,
    message_id: Option<&MessageId>,
) -> Message {
    attributes.set(keys::DEAD_LETTER_REASON, header_safe(reason));
    attributes.set(keys::ATTEMPTS, attempt.to_string());
    if let Some(source) = source {
        attributes.set(keys::SOURCE, source);
    }
    if let Some(id) = message_id {
        attributes.set(keys::MESSAGE_ID, id.to_string());
    }
    Message::from_parts(attributes, body)
}

/// A message to dead-letter and what to say of it.
pub(crate) struct Letter<'a> {
    pub(crate) attributes: Attributes,
    pub(crate) body: Bytes,
    pub(crate) reason: &'a str,
    pub(crate) attempt: u32,
    pub(crate) source: Option<&'a str>,
    pub(crate) message_id: Option<&'a MessageId>,
}

/// What publishing a dead letter came to.
#[derive(Debug)]
pub(crate) enum Published {
    Done,
    /// It failed for now: try again later.
    Retry(Error),
    /// It can never be published, even with its attributes folded into one: give up.
    Refused(Error),
}

/// Publishes `letter` to `topic`. When the topic refuses the message's attributes (a key
/// or a value its transport cannot carry), publishes it again with every original
/// attribute folded into [`keys::ATTRIBUTES`], form-encoded: nothing is lost, and a
/// letter the topic will never take is not retried for ever.
pub(crate) async fn publish(topic: &BoxTopic, ctx: &Context, letter: Letter<'_>) -> Published {
    use crate::receiver::catch_panic_of;
    const PANICKED: &str = "the dead-letter topic";
    let Letter {
        attributes,
        body,
        reason,
        attempt,
        source,
        message_id,
    } = letter;
    let folded = form_encode(&attributes);
    let first = message(
        attributes,
        body.clone(),
        reason,
        attempt,
        source,
        message_id,
    );
    // The topic is user code: a panic in it is a failed publication, retried later.
    let refused = match catch_panic_of(PANICKED, || topic.publish(ctx, first)).await {
        Ok(()) => return Published::Done,
        Err(e @ Error::InvalidAttribute { .. }) => e,
        Err(e @ Error::BodyTooLarge { .. }) => return Published::Refused(e),
        Err(e) => return Published::Retry(e),
    };
    let mut attributes = Attributes::new();
    attributes.set(keys::ATTRIBUTES, folded);
    let reason = format!(
        "{reason} (attributes folded into {}: {})",
        keys::ATTRIBUTES,
        shown(&refused)
    );
    let second = message(attributes, body, &reason, attempt, source, message_id);
    match catch_panic_of(PANICKED, || topic.publish(ctx, second)).await {
        Ok(()) => Published::Done,
        Err(e @ (Error::InvalidAttribute { .. } | Error::BodyTooLarge { .. })) => {
            Published::Refused(e)
        }
        Err(e) => Published::Retry(e),
    }
}

/// `attributes` as `application/x-www-form-urlencoded`: `key=value` pairs in order, joined
/// by `&`, every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded (a space too, as `%20`).
fn form_encode(attributes: &Attributes) -> String {
    fn encode(out: &mut String, text: &str) {
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (key, value) in attributes.iter() {
        if !out.is_empty() {
            out.push('&');
        }
        encode(&mut out, key);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// The attributes of the message `dead_letter` was before it was dead-lettered: see
/// [`keys::original_attributes`](crate::keys::original_attributes).
pub(crate) fn original_attributes(dead_letter: &Attributes) -> Result<Attributes, Error> {
    let mut original = match dead_letter.get(keys::ATTRIBUTES) {
        Some(folded) => {
            let mut unfolded = Attributes::new();
            for pair in folded.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let decoded =
                    crate::redact::percent_decode(key).zip(crate::redact::percent_decode(value));
                let Some((key, value)) = decoded else {
                    return Err(Error::invalid_attribute(
                        keys::ATTRIBUTES,
                        format!("{pair:?} is not form-encoded UTF-8"),
                    ));
                };
                unfolded.add(key, value);
            }
            if let Some(id) = dead_letter.get(keys::MESSAGE_ID) {
                unfolded.set(keys::MESSAGE_ID, id);
            }
            unfolded
        }
        None => dead_letter.clone(),
    };
    for key in [
        keys::DEAD_LETTER_REASON,
        keys::ATTEMPTS,
        keys::SOURCE,
        keys::ATTRIBUTES,
    ] {
        original.remove(key);
    }
    Ok(original)
}

/// Why `error` failed the message, without the wrapping of a reject: the reason given to
/// [`Error::reject`] itself.
fn reason(error: &Error) -> String {
    match error {
        Error::Rejected(reason) => shown(reason),
        other => shown(other),
    }
}

/// `error` written out. An error is user code: one whose `Display` panics is named as such
/// instead of panicking the server's worker (or the decorator) deciding its fate.
pub(crate) fn shown(error: &dyn std::fmt::Display) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| error.to_string()))
        .unwrap_or_else(|_| "(an error that panicked when written out)".to_owned())
}

/// A reason fit for any transport's headers: one line, at most 1024 characters.
fn header_safe(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::error::truncate(&line, 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_attributes_are_form_encoded_in_order() {
        let mut attrs = Attributes::new();
        attrs.add("X-Multi", "a b");
        attrs.add("X-Multi", "ü&=");
        attrs.set("with space", "v");
        assert_eq!(
            form_encode(&attrs),
            "X-Multi=a%20b&X-Multi=%C3%BC%26%3D&with%20space=v"
        );
    }

    #[test]
    fn the_original_attributes_come_back_from_a_dead_letter() {
        let mut attrs = Attributes::new();
        attrs.add("X-Multi", "1");
        attrs.add("X-Multi", "2");
        let id = MessageId::from("42");
        let letter = message(
            attrs.clone(),
            Bytes::new(),
            "boom",
            3,
            Some("orders"),
            Some(&id),
        );
        let mut expected = attrs.clone();
        expected.set(keys::MESSAGE_ID, "42");
        assert_eq!(original_attributes(&letter.attributes).unwrap(), expected);

        // Folded, because the dead-letter topic could not carry them: unfolded again.
        let mut odd = Attributes::new();
        odd.add("k y", "vé");
        odd.add("k y", "a&b=c");
        let mut folded = Attributes::new();
        folded.set(keys::ATTRIBUTES, form_encode(&odd));
        let letter = message(folded, Bytes::new(), "r", 1, None, Some(&id));
        let back = original_attributes(&letter.attributes).unwrap();
        assert_eq!(back.get_all("k y").collect::<Vec<_>>(), ["vé", "a&b=c"]);
        assert_eq!(back.get(keys::MESSAGE_ID), Some("42"));
        assert!(back.get(keys::ATTRIBUTES).is_none());

        let mut bad = Attributes::new();
        bad.set(keys::ATTRIBUTES, "k=%FF");
        assert!(original_attributes(&bad).is_err());
    }

    #[test]
    fn one_decision_one_reason_format() {
        let failed = Error::other("down");
        assert_eq!(fate(&failed, 2, Some(3)), Fate::Retry(None));
        assert_eq!(fate(&failed, 5, None), Fate::Retry(None));
        assert_eq!(
            fate(&failed, 3, Some(3)),
            Fate::GiveUp("attempt 3 of 3 failed: down".into())
        );
        assert_eq!(
            fate(&failed, 4, Some(3)),
            Fate::GiveUp("attempt 4 of 3 failed: down".into())
        );
        let later = Error::retry_after(Duration::from_secs(2), "busy");
        assert_eq!(
            fate(&later, 1, Some(3)),
            Fate::Retry(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            fate(&Error::reject("poison"), 1, Some(3)),
            Fate::GiveUp("poison".into())
        );
    }
}

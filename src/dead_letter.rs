//! The message a dead-letter topic receives: shared by the engine and the `DeadLetter`
//! decorator, so both write the same attributes.

use bytes::Bytes;

use crate::{Attributes, Message, MessageId, keys};

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

/// Why `error` failed the message, without the wrapping of a reject: the reason given to
/// [`Error::reject`](crate::Error::reject) itself.
pub(crate) fn reason(error: &crate::Error) -> String {
    match error {
        crate::Error::Rejected(reason) => reason.to_string(),
        other => other.to_string(),
    }
}

/// A reason fit for any transport's headers: one line, at most 1024 characters.
fn header_safe(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::error::truncate(&line, 1024)
}

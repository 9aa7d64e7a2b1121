//! The fate of a failed message and the message a dead-letter topic receives: shared by
//! the engine, the `Retry` decorator and the `DeadLetter` decorator, so that all three
//! decide alike and write the same reason and attributes.

use std::time::Duration;

use bytes::Bytes;

use crate::{Attributes, Error, Message, MessageId, keys};

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
        Some(max) => Fate::GiveUp(format!("attempt {attempt} of {max} failed: {error}")),
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

/// Why `error` failed the message, without the wrapping of a reject: the reason given to
/// [`Error::reject`] itself.
fn reason(error: &Error) -> String {
    match error {
        Error::Rejected(reason) => reason.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

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

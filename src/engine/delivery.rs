//! What passes between the engine and its [`Source`](super::Source): a [`Delivery`] in,
//! a [`Settlement`] out, with their constructors.

use std::time::Duration;

use bytes::Bytes;

use crate::{Attributes, MessageId};

/// One delivery from a [`Source`](super::Source): the message, its token and its facts.
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery<T> {
    /// Settles this delivery.
    pub token: T,
    /// The transport's id of the message.
    pub message_id: Option<MessageId>,
    /// Which delivery of the message this is, starting at 1.
    pub attempt: u32,
    /// The attributes.
    pub attributes: Attributes,
    /// The body.
    pub body: Bytes,
    /// Why the source could not decode this delivery, if it could not: the engine then
    /// dead-letters it (or rejects it) without handing it to the receiver.
    pub malformed: Option<String>,
}

/// A settlement the engine hands back to its [`Source`](super::Source).
#[derive(Debug)]
#[non_exhaustive]
pub struct Settlement<T> {
    /// The delivery's token.
    pub token: T,
    /// What to do with it.
    pub action: Settle,
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settle {
    /// Processed: remove it.
    Ack,
    /// The attempt failed: deliver it again, after `delay` when given. The next delivery is
    /// the next attempt.
    Nack {
        /// The delay before the next attempt.
        delay: Option<Duration>,
    },
    /// Never deliver it again: it was rejected or ran out of attempts, and the server has no
    /// dead-letter topic. A source may route it to the broker's own dead-letter target.
    /// (A message the engine dead-lettered to a topic is settled with [`Settle::Ack`].)
    Reject,
    /// Never handed to a receiver (fetched while the server was shutting down): deliver it
    /// again, without counting an attempt where the transport can.
    Release,
    /// Not due yet (its [`keys::NOT_BEFORE`](crate::keys::NOT_BEFORE) is in the future):
    /// deliver it again after `delay`, without counting an attempt where the transport can.
    Defer {
        /// How long until it is due.
        delay: Duration,
    },
    /// Never deliver it again: move it to the transport's own dead-letter destination, with
    /// `reason`, in one step at the broker. Only a source whose
    /// [`dead_letters`](super::Source::dead_letters) is true is given this, and only when the
    /// server has no dead-letter topic of its own; the others get [`Settle::Reject`].
    DeadLetter {
        /// Why it was given up (`attempt 3 of 3 failed: ...`, a reject's reason,
        /// `malformed delivery: ...`), as a dead-letter topic gets it in
        /// [`keys::DEAD_LETTER_REASON`](crate::keys::DEAD_LETTER_REASON).
        reason: String,
    },
}

impl<T> Delivery<T> {
    /// A first delivery of a message with this body and no attributes or id.
    pub fn new(token: T, body: Bytes) -> Self {
        Delivery {
            token,
            message_id: None,
            attempt: 1,
            attributes: Attributes::new(),
            body,
            malformed: None,
        }
    }

    /// A delivery the source could not decode (a missing body field, unreadable
    /// attributes): the engine dead-letters it with `reason` and whatever `attributes` and
    /// `body` could be saved, or rejects it when there is no dead-letter topic, and never
    /// hands it to the receiver, so it cannot loop.
    pub fn malformed(
        token: T,
        reason: impl Into<String>,
        attributes: Attributes,
        body: Bytes,
    ) -> Self {
        Delivery {
            malformed: Some(reason.into()),
            ..Delivery::new(token, body).with_attributes(attributes)
        }
    }

    /// This delivery with the given attributes.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// This delivery with the given message id.
    pub fn with_message_id(mut self, id: impl Into<MessageId>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// This delivery with the given attempt number (0 is taken as 1).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }
}

//! Constructors for [`Delivery`].

use bytes::Bytes;

use super::Delivery;
use crate::{Attributes, MessageId};

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

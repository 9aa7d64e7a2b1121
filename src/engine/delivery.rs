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

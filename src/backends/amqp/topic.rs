//! The topic: publish to an exchange with a routing key, waiting for the confirmation.

use std::fmt;
use std::sync::Arc;

use lapin::types::ShortString;

use super::encoding;
use super::link::{Link, PublishError};
use crate::transport::{BufferedWriter, Outgoing, Sender, SenderPublisher, SenderTopic, send_each};
use crate::{Context, Error};

/// A topic publishing to a RabbitMQ exchange with a routing key (see the
/// [module docs](super)): a [`SenderTopic`] over an [`AmqpSender`]. Cloning shares the
/// connection.
pub type AmqpTopic = SenderTopic<AmqpSender>;

/// The writer of an [`AmqpTopic`]: closing it returns once the broker confirmed.
pub type AmqpWriter = BufferedWriter<AmqpPublisher>;

/// Sends the messages of an [`AmqpWriter`].
pub type AmqpPublisher = SenderPublisher<AmqpSender>;

/// Publishes whole messages to an exchange with a routing key, waiting for the publisher
/// confirm: the [`Sender`] of an [`AmqpTopic`].
pub struct AmqpSender {
    link: Arc<Link>,
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    /// Set once the exchange was found to exist (see [`Link::check_exchange`]).
    exchange_exists: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for AmqpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTopic")
            .field("exchange", &self.exchange.as_str())
            .field("routing_key", &self.routing_key.as_str())
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl AmqpTopic {
    pub(super) fn open(link: Arc<Link>, exchange: &str, routing_key: &str) -> Result<Self, Error> {
        Ok(SenderTopic::new(AmqpSender {
            link,
            exchange: encoding::short("exchange", exchange)?,
            routing_key: encoding::short("routing_key", routing_key)?,
            mandatory: true,
            exchange_exists: tokio::sync::OnceCell::new(),
        }))
    }

    /// Whether a message that no queue takes is an error (`true`, the default) or dropped by
    /// the broker (`false`, for an exchange that may have no subscribers at the time).
    pub fn mandatory(self, mandatory: bool) -> Self {
        let sender = self.sender();
        SenderTopic::new(AmqpSender {
            link: sender.link.clone(),
            exchange: sender.exchange.clone(),
            routing_key: sender.routing_key.clone(),
            mandatory,
            exchange_exists: tokio::sync::OnceCell::new(),
        })
    }

    /// The exchange this topic publishes to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        self.sender().exchange.as_str()
    }

    /// The routing key this topic publishes with.
    pub fn routing_key(&self) -> &str {
        self.sender().routing_key.as_str()
    }
}

impl Sender for AmqpSender {
    async fn send(&self, ctx: &Context, message: Outgoing) -> Result<(), Error> {
        let properties = encoding::properties(&message.attributes)?;
        let (body, delay) = (&message.body[..], message.delay);
        let send = async {
            if !self.exchange.as_str().is_empty() {
                self.exchange_exists
                    .get_or_try_init(|| self.link.check_exchange(&self.exchange))
                    .await?;
            }
            match delay.filter(|d| !d.is_zero()) {
                Some(delay) => {
                    self.link
                        .publish_delayed(&self.exchange, &self.routing_key, delay, body, properties)
                        .await
                }
                None => self
                    .link
                    .publish(
                        &self.exchange,
                        &self.routing_key,
                        self.mandatory,
                        body,
                        properties,
                    )
                    .await
                    .map_err(|e| self.publish_error(e)),
            }
        };
        ctx.unless_cancelled(send).await
    }

    /// Every publish goes out on the shared channel, in order, before any confirmation is
    /// awaited (a batch with a delayed message goes one message at a time).
    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        if messages.iter().any(Outgoing::is_delayed) {
            return send_each(self, ctx, messages).await;
        }
        let mut batch = Vec::with_capacity(messages.len());
        for message in &messages {
            batch.push((
                &message.body[..],
                encoding::properties(&message.attributes)?,
            ));
        }
        let send = async {
            if !self.exchange.as_str().is_empty() {
                self.exchange_exists
                    .get_or_try_init(|| self.link.check_exchange(&self.exchange))
                    .await?;
            }
            self.link
                .publish_many(&self.exchange, &self.routing_key, self.mandatory, batch)
                .await
                .map_err(|e| self.publish_error(e))
        };
        ctx.unless_cancelled(send).await
    }
}

impl AmqpSender {
    fn publish_error(&self, e: PublishError) -> Error {
        match e {
            PublishError::Failed(e) => e,
            PublishError::Unroutable => Error::other(format!(
                "no queue takes messages from exchange {:?} with routing key {:?} \
                 (declare and bind one, or make the topic not mandatory)",
                self.exchange.as_str(),
                self.routing_key.as_str()
            )),
        }
    }
}

//! The topic: publish to an exchange with a routing key, waiting for the confirmation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;

use super::encoding;
use super::link::{Link, PublishError};
use crate::topic::BufferedWriter;
use crate::{Attributes, Context, Error};

/// A topic publishing to a RabbitMQ exchange with a routing key (see the
/// [module docs](super)). Cloning shares the connection.
#[derive(Clone)]
pub struct AmqpTopic {
    inner: Arc<TopicInner>,
}

struct TopicInner {
    link: Arc<Link>,
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    /// Set once the exchange was found to exist (see [`Link::check_exchange`]).
    exchange_exists: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for AmqpTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTopic")
            .field("exchange", &self.inner.exchange.as_str())
            .field("routing_key", &self.inner.routing_key.as_str())
            .field("mandatory", &self.inner.mandatory)
            .finish()
    }
}

impl AmqpTopic {
    pub(super) fn new(link: Arc<Link>, exchange: &str, routing_key: &str) -> Result<Self, Error> {
        Ok(AmqpTopic {
            inner: Arc::new(TopicInner {
                link,
                exchange: encoding::short("exchange", exchange)?,
                routing_key: encoding::short("routing_key", routing_key)?,
                mandatory: true,
                exchange_exists: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// Whether a message that no queue takes is an error (`true`, the default) or dropped by
    /// the broker (`false`, for an exchange that may have no subscribers at the time).
    pub fn mandatory(self, mandatory: bool) -> Self {
        AmqpTopic {
            inner: Arc::new(TopicInner {
                link: self.inner.link.clone(),
                exchange: self.inner.exchange.clone(),
                routing_key: self.inner.routing_key.clone(),
                mandatory,
                exchange_exists: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The exchange this topic publishes to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key this topic publishes with.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }
}

whole_message_topic!(AmqpTopic, AmqpPublisher);

/// The writer of an [`AmqpTopic`]: closing it returns once the broker confirmed.
pub type AmqpWriter = BufferedWriter<AmqpPublisher>;

/// Sends whole messages with publisher confirms (for [`AmqpWriter`]).
pub struct AmqpPublisher {
    inner: Arc<TopicInner>,
}

impl fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("exchange", &self.inner.exchange.as_str())
            .field("routing_key", &self.inner.routing_key.as_str())
            .finish()
    }
}

impl TopicInner {
    async fn send(
        &self,
        ctx: &Context,
        attributes: &Attributes,
        body: &[u8],
        delay: Option<Duration>,
    ) -> Result<(), Error> {
        let properties = encoding::properties(attributes)?;
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
                None => match self
                    .link
                    .publish(
                        &self.exchange,
                        &self.routing_key,
                        self.mandatory,
                        body,
                        properties,
                    )
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(PublishError::Failed(e)) => Err(e),
                    Err(PublishError::Unroutable) => Err(Error::other(format!(
                        "no queue takes messages from exchange {:?} with routing key {:?} \
                         (declare and bind one, or make the topic not mandatory)",
                        self.exchange.as_str(),
                        self.routing_key.as_str()
                    ))),
                },
            }
        };
        ctx.unless_cancelled(send).await
    }
}

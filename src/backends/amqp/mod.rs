//! The RabbitMQ transport (feature `amqp`, AMQP 0.9.1 on `lapin`): a topic that publishes
//! with publisher confirms, and a server on `basic.consume`, built on the delivery engine.
//!
//! Needs Rust 1.88 or newer, the minimum of the lapin client it is built on (msgio itself
//! needs 1.85).
//!
//! ```no_run
//! use msgio::amqp::{Amqp, ExchangeKind, QueueOptions};
//! use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};
//!
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let amqp = Amqp::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! amqp.declare_exchange("orders", ExchangeKind::Topic).await?;
//! let server = amqp
//!     .server(
//!         QueueOptions::new("billing").bind("orders", "order.*"),
//!         ServerConfig::new().concurrency(32),
//!     )
//!     .await?;
//! let topic = amqp.topic("orders", "order.created")?;
//! topic.publish(&Context::background(), Message::new("order 1")).await?;
//! server
//!     .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # URL
//!
//! [`open_topic`](crate::open_topic) and [`open_server`](crate::open_server) take
//! `amqp://[user:password@]host[:port][/<vhost>][?<parameters>]` (the vhost `/` is
//! written `%2F`, and is the default); a topic and a server accept the same URL, each
//! using its own parameters.
//!
//! | parameter | side | meaning (default) |
//! |---|---|---|
//! | `exchange` | topic | publish to this exchange (which must exist) |
//! | `routing_key` | topic | with this routing key (the queue's name, or empty) |
//! | `queue` | both | the server's queue (required for a server); a topic without `exchange` publishes to it through the default exchange, declaring it first |
//! | `mandatory` | topic | [`AmqpTopic::mandatory`] (`true`) |
//! | `durable`, `quorum` | queue | [`QueueOptions::durable`] (`true`), [`QueueOptions::quorum`] (`false`) |
//! | `bind` | queue | `<exchange>:<routing key>`, repeatable: [`QueueOptions::bind`] |
//! | `dead_letter_exchange`, `dead_letter_routing_key` | queue | [`QueueOptions::dead_letter_to`] (none) |
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2F?queue=billing";
//! let topic = msgio::open_topic(url).await?;
//! let server = msgio::open_server(url, msgio::ServerConfig::new()).await?;
//! # let _ = (topic, server);
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! - Attributes are AMQP headers: a string for a one-valued attribute, an array of strings
//!   for a multi-valued one. `Content-Type`, `Content-Encoding`, `Message-Id` and
//!   `Timestamp` (Unix seconds) with one value are the basic properties of the same name
//!   instead. On delivery, header values that are numbers or booleans arrive as their
//!   text, strings that are not UTF-8 are read lossily, and tables (RabbitMQ's `x-death`
//!   bookkeeping) are left out.
//! - Messages are persistent (delivery mode 2). A writer's close returns once the broker
//!   confirmed the message; a broker nack is an error, and so (by default, see
//!   [`AmqpTopic::mandatory`]) is a message that no queue takes. Every topic of one
//!   [`Amqp`] publishes on one channel, concurrent writers keeping their confirms in flight
//!   together. A topic checks once, on a channel of its own, that its exchange exists:
//!   publishing to a missing exchange would make the broker close the shared channel
//!   under the other publications in flight.
//! - Delays ([`set_delay`](crate::MessageWriter::set_delay), and retries with a delay)
//!   need no plugin: the message waits in a durable wait queue
//!   (`msgio.wait.<band>ms.<exchange>.<routing key>`) with its delay as its expiration,
//!   and the queue dead-letters it to its destination when it expires. Delays are
//!   grouped in bands of an eighth of a power of two, one queue per band and destination,
//!   so a message arrives no earlier than its delay and at most an eighth later. A wait
//!   queue the adapter stops using is deleted by the broker after twice its band plus ten
//!   minutes.
//! - The server consumes with a prefetch count of the concurrency plus the prefetch, acks,
//!   rejects without requeueing (to the queue's
//!   [dead-letter exchange](QueueOptions::dead_letter_exchange), if any), and gives back
//!   what it fetched but did not start at shutdown. A failed attempt is republished to
//!   the queue (through a wait queue when the retry has a delay) with the attempts made
//!   so far in the `x-msgio-attempts` header, then acked: the attempt number is that count
//!   plus one, plus `x-delivery-count` on a quorum queue or one for a redelivery (after a
//!   consumer died) on a classic one. A retry the broker refuses to take (a full queue
//!   that rejects publishes) is given back to the queue with a nack once its delay (at
//!   least a second) has passed.
//! - The server's connection is its own; it reconnects by itself with backoff after the
//!   broker or the network failed, and when the broker cancels its consumer (the queue
//!   was deleted: declaring it again creates it). Deliveries of the lost channel went back
//!   to the queue and come again.

mod encoding;
mod link;
mod source;
mod topic;
mod url;

pub(crate) use url::AmqpOpener;

use std::fmt;
use std::sync::Arc;

use lapin::options::{ExchangeDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

pub use source::{AmqpServer, AmqpSource, AmqpToken};
pub use topic::{AmqpPublisher, AmqpSender, AmqpTopic, AmqpWriter};

use crate::{Error, ServerConfig};
use encoding::short;
use link::Link;

/// The kind of an exchange, for [`Amqp::declare_exchange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routes to the queues bound with the message's routing key exactly.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by pattern (`order.*`, `order.#`).
    Topic,
    /// Routes on headers.
    Headers,
}

/// A connection to RabbitMQ: makes [`AmqpTopic`]s and [`AmqpServer`]s and declares
/// topology. Cloning shares the connection, which is made again after a failure.
#[derive(Clone)]
pub struct Amqp {
    link: Arc<Link>,
}

impl fmt::Debug for Amqp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Amqp")
            .field("url", &self.link.shown())
            .finish()
    }
}

impl Amqp {
    /// Connects to RabbitMQ at `url` (`amqp://user:password@host:port/vhost`, the vhost
    /// URL-encoded: `%2f` for `/`).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] when the broker does not answer or refuses the login (the
    /// password never shows).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let target = link::Target::parse(url)?;
        let connection = link::connect(&target, "msgio").await?;
        Ok(Amqp {
            link: Arc::new(Link::new(target, connection)),
        })
    }

    /// The URL connected to, password hidden.
    pub fn url(&self) -> &str {
        self.link.shown()
    }

    /// A topic publishing to `exchange` (`""`: the default exchange, which routes to the
    /// queue named by the routing key) with `routing_key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when a name is longer than AMQP's 255 bytes.
    pub fn topic(&self, exchange: &str, routing_key: &str) -> Result<AmqpTopic, Error> {
        AmqpTopic::open(self.link.clone(), exchange, routing_key)
    }

    /// A topic publishing straight to the queue `queue` (through the default exchange).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the name is longer than AMQP's 255 bytes.
    pub fn queue_topic(&self, queue: &str) -> Result<AmqpTopic, Error> {
        self.topic("", queue)
    }

    /// A server consuming the queue `options` describes (declared here, and again each
    /// time the server connects).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range; [`Error::ConnectionLost`]
    /// when the broker does not answer; [`Error::Other`] when it refuses the queue (a
    /// queue of that name declared with other settings, say).
    pub async fn server(
        &self,
        options: QueueOptions,
        config: ServerConfig,
    ) -> Result<AmqpServer, Error> {
        source::server(self, options, config).await
    }

    /// Declares a durable exchange (a no-op when it exists with the same settings).
    ///
    /// # Errors
    ///
    /// [`Error::Other`] when the broker refuses (it exists with another kind, say).
    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), Error> {
        let name = short("exchange", name)?;
        let kind = match kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        };
        self.link
            .declare(|channel| async move {
                let shown = name.to_string();
                channel
                    .exchange_declare(
                        name,
                        kind,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| link::error(format!("declaring the exchange {shown:?}"), e))
            })
            .await
    }

    /// Declares the queue `options` describes, with its bindings (a no-op when it exists
    /// with the same settings).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range; [`Error::Other`] when the
    /// broker refuses (the queue exists with other settings, a bound exchange is missing).
    pub async fn declare_queue(&self, options: &QueueOptions) -> Result<(), Error> {
        self.link
            .declare(|channel| async move { options.declare(&channel).await })
            .await
    }

    /// Binds the queue `queue` to `exchange` with `routing_key` (both must exist; a no-op
    /// when the binding exists). A server re-creates only the bindings its
    /// [`QueueOptions::bind`] lists.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a name longer than 255 bytes; [`Error::Other`] when the
    /// broker refuses (a missing queue or exchange).
    pub async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), Error> {
        self.link
            .declare(
                |channel| async move { source::bind(&channel, queue, exchange, routing_key).await },
            )
            .await
    }

    /// Deletes the queue `name` and what it holds (a no-op when it does not exist).
    ///
    /// # Errors
    ///
    /// [`Error::Other`] when the broker refuses.
    pub async fn delete_queue(&self, name: &str) -> Result<(), Error> {
        let queue = short("queue", name)?;
        self.link
            .declare(|channel| async move {
                channel
                    .queue_delete(queue, QueueDeleteOptions::default())
                    .await
                    .map(drop)
                    .map_err(|e| link::error(format!("deleting the queue {name:?}"), e))
            })
            .await
    }

    /// Deletes the wait queues (see the [module docs](self)) that this connection declared
    /// for delays to `exchange` with `routing_key` (`""` and the queue's name for a server's
    /// retries), returning how many. Messages still waiting in them are lost: for tearing
    /// down a destination, since unused wait queues go away by themselves.
    ///
    /// # Errors
    ///
    /// [`Error::Other`] when the broker refuses.
    pub async fn delete_wait_queues(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<usize, Error> {
        self.link.delete_wait_queues(exchange, routing_key).await
    }

    /// Deletes the exchange `name` (a no-op when it does not exist).
    ///
    /// # Errors
    ///
    /// [`Error::Other`] when the broker refuses.
    pub async fn delete_exchange(&self, name: &str) -> Result<(), Error> {
        let exchange = short("exchange", name)?;
        self.link
            .declare(|channel| async move {
                channel
                    .exchange_delete(exchange, Default::default())
                    .await
                    .map_err(|e| link::error(format!("deleting the exchange {name:?}"), e))
            })
            .await
    }
}

/// For the fuzz target: decodes delivery properties as the server does.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_decode(props: &lapin::BasicProperties) {
    let _ = encoding::decode(props);
}

/// A queue, declared (durable by default) by [`Amqp::declare_queue`] and by every server
/// on it, each time it connects.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    name: String,
    durable: bool,
    quorum: bool,
    dead_letter_exchange: Option<(String, Option<String>)>,
    bindings: Vec<(String, String)>,
}

impl QueueOptions {
    /// The queue `name`: durable, classic, no dead-letter exchange, no bindings (the
    /// default exchange reaches it by its name).
    pub fn new(name: impl Into<String>) -> Self {
        QueueOptions {
            name: name.into(),
            durable: true,
            quorum: false,
            dead_letter_exchange: None,
            bindings: Vec::new(),
        }
    }

    /// Whether the queue and its messages survive a broker restart (default `true`).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// A quorum queue (replicated, and counting deliveries in `x-delivery-count`) instead
    /// of a classic one. Quorum queues are always durable.
    pub fn quorum(mut self) -> Self {
        self.quorum = true;
        self
    }

    /// Where the broker sends what a server rejects (and what runs out of attempts when
    /// the [`ServerConfig`] names no dead-letter topic): `exchange`, with the message's own
    /// routing key. The exchange must exist.
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some((exchange.into(), None));
        self
    }

    /// As [`dead_letter_exchange`](QueueOptions::dead_letter_exchange), with `routing_key`
    /// instead of the message's own.
    pub fn dead_letter_to(
        mut self,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.dead_letter_exchange = Some((exchange.into(), Some(routing_key.into())));
        self
    }

    /// Binds the queue to `exchange` (which must exist) with `routing_key`; several calls
    /// add several bindings.
    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), routing_key.into()));
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(Error::invalid_config(
                "queue",
                "needs a name (a server-named queue would change on every reconnect)",
            ));
        }
        short("queue", &self.name)?;
        if self.quorum && !self.durable {
            return Err(Error::invalid_config(
                "durable",
                "a quorum queue is always durable",
            ));
        }
        if let Some((exchange, key)) = &self.dead_letter_exchange {
            short("dead_letter_exchange", exchange)?;
            if let Some(key) = key {
                short("dead_letter_routing_key", key)?;
            }
        }
        for (exchange, key) in &self.bindings {
            if exchange.is_empty() {
                return Err(Error::invalid_config(
                    "bind",
                    "the default exchange cannot be bound (it reaches every queue by name)",
                ));
            }
            short("bind exchange", exchange)?;
            short("bind routing_key", key)?;
        }
        Ok(())
    }
}

//! The NATS JetStream transport (feature `nats`): a topic that publishes with headers and
//! waits for the stream's acknowledgement, and a server on a durable pull consumer, built
//! on the delivery engine.
//!
//! ```no_run
//! use msgio::nats::{ConsumerOptions, Nats};
//! use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};
//!
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let nats = Nats::connect("nats://127.0.0.1:4222").await?;
//! let topic = nats.topic("orders.created");
//! let server = nats
//!     .server(
//!         ConsumerOptions::new("ORDERS", "billing").subjects(["orders.>"]),
//!         ServerConfig::new().concurrency(32),
//!     )
//!     .await?;
//! topic.publish(&Context::background(), Message::new("order 1")).await?;
//! server
//!     .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! - Attributes are NATS headers, one header value per attribute value (multi-valued
//!   attributes stay multi-valued). A value a header cannot carry (a line break) is an
//!   [`Error::InvalidAttribute`] naming the key.
//! - `Nats-Msg-Id` comes from the [`idempotency attribute`](NatsTopic::msg_id_attribute)
//!   (`Idempotency-Key` by default) or is generated, so the stream's duplicate window drops
//!   a message published twice.
//! - A writer's close returns once the stream acknowledged the message; concurrent writers
//!   keep their acknowledgements in flight together.
//! - [`set_delay`](crate::MessageWriter::set_delay): NATS 2.9 cannot schedule a message, so
//!   the topic records when it is due ([`keys::NOT_BEFORE`](crate::keys::NOT_BEFORE)) and
//!   the server, on a delivery that arrives early, naks it with the rest of the delay.
//!   JetStream counts that early delivery, so a delayed message's first attempt is numbered
//!   2 (and it has one attempt fewer before `max_attempts`).
//! - The server fetches in batches from a durable pull consumer (created with the stream
//!   when missing), acks, naks with the retry delay, terminates rejects, and sends
//!   in-progress signals every half ack wait while a receiver still runs. The attempt is
//!   the delivery count. Dead letters go to [`ServerConfig::dead_letter`] (a [`NatsTopic`]
//!   on a dead-letter subject, say).

mod server;
mod topic;

use std::fmt;

pub use server::{ConsumerOptions, NatsServer};
pub use topic::{NatsPublisher, NatsTopic, NatsWriter};

use crate::{Error, ServerConfig};

/// A connection to NATS with JetStream: makes [`NatsTopic`]s and [`NatsServer`]s. Cloning
/// shares the connection, which reconnects by itself.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    url: String,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats").field("url", &self.url).finish()
    }
}

impl Nats {
    /// Connects to the NATS server at `url` (`nats://[user:password@]host:port`).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] when the server does not answer (the password never
    /// shows).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let shown = crate::redact::url(url);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| {
                Error::connection_lost(format!("cannot connect to NATS at {shown}: {e}"))
            })?;
        Ok(Nats {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            url: shown,
        })
    }

    /// The URL connected to, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A topic publishing to `subject` (which a stream must capture).
    pub fn topic(&self, subject: impl Into<String>) -> NatsTopic {
        NatsTopic::new(self.jetstream.clone(), subject.into())
    }

    /// A server on the durable pull consumer `options` names, creating the stream and the
    /// consumer when missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range; [`Error::ConnectionLost`]
    /// when NATS does not answer; [`Error::Other`] when JetStream refuses the stream or the
    /// consumer.
    pub async fn server(
        &self,
        options: ConsumerOptions,
        config: ServerConfig,
    ) -> Result<NatsServer, Error> {
        NatsServer::new(self, options, config).await
    }

    /// Creates the stream `options` names when missing, so that publishing works before any
    /// server runs ([`server`](Nats::server) does this too).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range; [`Error::Other`] when
    /// JetStream refuses the stream.
    pub async fn ensure_stream(&self, options: &ConsumerOptions) -> Result<(), Error> {
        server::ensure_stream(self, options).await.map(drop)
    }

    /// Deletes the stream `name` and what it holds.
    ///
    /// # Errors
    ///
    /// [`Error::Other`] when JetStream refuses.
    pub async fn delete_stream(&self, name: &str) -> Result<(), Error> {
        self.jetstream
            .delete_stream(name)
            .await
            .map(drop)
            .map_err(Error::other)
    }
}

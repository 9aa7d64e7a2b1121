//! Everything a transport author needs, and nothing a user of a transport does.
//!
//! A user publishes through a [`Topic`](crate::Topic) and serves with a
//! [`Server`](crate::Server); this module is the other side: what an adapter for a broker
//! implements, and the building blocks every built-in transport (`mem`, `redis`, `nats`,
//! `amqp`) is made of. An out-of-tree crate gets exactly the same blocks.
//!
//! # Writing a transport
//!
//! A transport is two halves that meet at the broker.
//!
//! **Publishing.** Implement [`Sender`]: send one whole message (attributes, body, the
//! delay a writer asked for) and return once the broker holds it. [`SenderTopic`] turns it
//! into a [`Topic`](crate::Topic): `publish` of a body in memory goes straight to `send`,
//! and writers buffer the body in a [`BufferedWriter`] and send on close, refusing writes
//! after that with [`Error::ClosedMessageWriter`](crate::Error::ClosedMessageWriter). A
//! transport that streams bodies or publishes differently implements `Topic` itself, with
//! [`BufferedWriter`] over its own [`Publish`] if it only needs the writer, and
//! [`publish_through_writer`] for the default `publish`.
//!
//! **Serving.** Implement [`Source`]: fetch deliveries, settle them. The [`Engine`] over
//! it *is* the server: `pub type MyServer = Engine<MySource>;` gives bounded concurrency
//! and prefetch, the message's fate from the receiver's result (ack, retry with delay,
//! reject, dead-letter after the maximum attempts), panic isolation, batched settlement,
//! graceful shutdown with a deadline, reconnection with backoff and
//! [`health`](Engine::health): none of that is the transport's to write.
//!
//! **The contract**, method by method (each method's docs give the details):
//!
//! | | must |
//! |---|---|
//! | [`Sender::send`] | return `Ok` only once the broker holds the message; honour the context's cancellation where it waits; refuse what it cannot carry with [`InvalidAttribute`](crate::Error::InvalidAttribute) or [`BodyTooLarge`](crate::Error::BodyTooLarge), never panic; hold a delay natively or [`stamp_not_before`] it |
//! | [`Source::fetch`] | append at most `max` deliveries, waiting a bounded time for the first; be cancellation safe (a delivery not yet appended stays deliverable); report a lost connection as [`ConnectionLost`](crate::Error::ConnectionLost) |
//! | [`Source::settle`] | apply each [`Settlement`] once and remove it from the batch: [`Settle::Ack`] removes the message, [`Settle::Nack`] redelivers it as the next attempt (after its delay, or let the engine hold it: [`Source::nack_delay`]), [`Settle::Reject`] drops it (the engine has dead-lettered it already), [`Settle::Release`] and [`Settle::Defer`] put it back without counting an attempt |
//! | [`Source::stops_at_in_flight_limit`] | say `false` when the broker delivers whatever is unsettled (a stream read by count, a table); the default, `true`, is for a broker that waits once the server's in-flight limit is unacknowledged (RabbitMQ's prefetch), and costs smaller settlement batches |
//! | [`Delivery`] | carry the attributes exactly as published (add none), the attempt number (1 for the first), a message id when the broker has one; a message that cannot be decoded is delivered with [`Delivery::malformed`] set, so that it is dead-lettered, never dropped or left to stall the consumer |
//! | errors | never show a credential: take it out of URLs before they reach an error, a log line or `Debug` |
//!
//! **Proving it.** The conformance kit, `msgio::testing` (feature `testing`), runs the
//! whole contract against a factory of (topic, server) pairs, with capability flags for
//! what the broker offers (ordering, delay, persistence, dead-letter, consumer groups).
//! Every built-in transport passes it; so does `examples/custom_transport/`, a durable
//! spool-directory transport written only against this module.
//!
//! **Opening it by URL.** Register the transport under a scheme with
//! [`register`](crate::url::register) so that [`open_topic`](crate::open_topic) and
//! [`open_server`](crate::open_server) reach it.
//!
//! # Examples
//!
//! A source that serves the same three messages, for illustration; its engine is a server:
//!
//! ```
//! use msgio::transport::{Delivery, Engine, Settlement, Source};
//! use msgio::{Error, ServerConfig};
//!
//! struct Fixed;
//!
//! impl Source for Fixed {
//!     type Token = u64;
//!
//!     fn name(&self) -> &str {
//!         "fixed"
//!     }
//!
//!     async fn fetch(&self, max: usize, out: &mut Vec<Delivery<u64>>) -> Result<(), Error> {
//!         for n in 0..max.min(3) as u64 {
//!             out.push(Delivery::new(n, format!("message {n}").into()));
//!         }
//!         Ok(())
//!     }
//!
//!     async fn settle(&self, batch: &mut Vec<Settlement<u64>>) -> Result<(), Error> {
//!         batch.clear(); // a real source acks, nacks or rejects each token here
//!         Ok(())
//!     }
//! }
//!
//! /// The transport's server, named for its users.
//! pub type FixedServer = Engine<Fixed>;
//!
//! let server: FixedServer = Engine::new(Fixed, ServerConfig::new().concurrency(4))?;
//! # let _ = server;
//! # Ok::<(), Error>(())
//! ```

mod buffered;
mod sender;

pub use crate::engine::{
    Delivery, Engine, Health, HealthState, Settle, Settlement, Source, stamp_not_before,
};
pub use crate::topic::publish_through_writer;
pub use buffered::{BufferedWriter, Outgoing, Publish};
pub use sender::{Sender, SenderPublisher, SenderTopic, send_each};

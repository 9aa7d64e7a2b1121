//! msgio: publish and consume messages in Rust, with go-msg's small composable traits,
//! explicit message fates, and one delivery engine under every transport.
//!
//! # A first example
//!
//! ```
//! use futures::io::AsyncWriteExt;
//! use msgio::{Context, Error, Message, MessageWriter, ReceiverFunc, Server, Topic};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let (topic, server) = msgio::mem::channel(1024)?;
//!
//! // Publish: write a body, set attributes, close to send.
//! let mut writer = topic.new_writer(&Context::background())?;
//! writer.attributes_mut().set("content-type", "text/plain");
//! writer.write_all(b"hello, msgio").await?;
//! writer.close().await?;
//!
//! // Serve: Ok(()) acks; an error retries; Error::reject dead-letters.
//! let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
//! let receiver = ReceiverFunc::new(move |_ctx: Context, mut msg: Message| {
//!     let got_tx = got_tx.clone();
//!     async move {
//!         let body = msg.body.read_to_bytes(64 * 1024).await?;
//!         got_tx.send((msg.attributes.get("Content-Type").map(str::to_owned), body)).ok();
//!         Ok(())
//!     }
//! });
//! let serving = server.clone();
//! let task = tokio::spawn(async move { serving.serve(receiver).await });
//!
//! let (content_type, body) = got_rx.recv().await.unwrap();
//! assert_eq!(content_type.as_deref(), Some("text/plain"));
//! assert_eq!(body, "hello, msgio");
//!
//! server.shutdown(Duration::from_secs(5)).await?;
//! assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
//! # Ok(()) }
//! ```
//!
//! # From go-msg
//!
//! | go-msg | msgio |
//! |---|---|
//! | `Attributes map[string][]string`, `textproto.CanonicalMIMEHeaderKey` | [`Attributes`] (multi-valued, keys canonicalized by [`canonical_key`] exactly as Go does); [`Attributes::to_header_map`] / [`Attributes::from_header_map`] |
//! | `Message{Attributes, Body io.Reader}` | [`Message`] with public `attributes` and a streaming [`Body`] (`futures::io::AsyncRead`, zero-copy for `Bytes`) |
//! | `WithBody`, `DumpBody`, `CloneBody` | [`Message::with_body`], [`Message::dump_body`], [`Message::clone_body`] (with a size limit) |
//! | `Receiver`, `ReceiverFunc` | [`Receiver`] (implement with `async fn`), [`ReceiverFunc`], [`BoxReceiver`] |
//! | `SafeReceiver` | [`SafeReceiver`]: any panic becomes [`Error::Panicked`] |
//! | `Server{Serve, Shutdown(ctx)}` | [`Server::serve`] returns [`Error::ServerClosed`] after [`Server::shutdown`]`(grace)` |
//! | `MessageWriter` (`io.Writer`, `Close`, `Attributes()`, `SetDelay`) | [`MessageWriter`]: `AsyncWrite` + [`attributes_mut`](MessageWriter::attributes_mut) + [`set_delay`](MessageWriter::set_delay); closing publishes |
//! | `Topic`, `TopicFunc` | [`Topic::new_writer`], [`TopicFunc`], [`BoxTopic`], and [`Topic::publish`] |
//! | `context.Context` | [`Context`]: cancellation, deadline, message id, attempt, source, typed values |
//! | `ErrServerClosed`, `ErrClosedMessageWriter` | [`Error::ServerClosed`], [`Error::ClosedMessageWriter`] |
//! | an error from `Receive` means "retry" | the same, and also [`Error::reject`], [`Error::retry_after`], maximum attempts and a dead-letter topic ([`ServerConfig`]) |
//! | `backends/mem` | [`mem`] (bounded, never drops, delays, retries, empty bodies delivered) |
//!
//! # Layout
//!
//! - [`Attributes`], [`Message`] and [`Body`], [`Context`], [`Error`]: the data.
//! - [`Receiver`] and [`Topic`]/[`MessageWriter`]/[`Server`]: the contract, with closure
//!   adapters, boxed forms and [`SafeReceiver`].
//! - [`ServerConfig`] and [`Health`]: how a server serves, and how it is doing.
//! - [`transport`]: what a transport author implements ([`transport::Sender`],
//!   [`transport::Source`]) and the building blocks every transport is made of
//!   ([`transport::SenderTopic`], [`transport::Engine`], the delivery engine).
//! - [`decorators`]: what wraps a topic or a receiver: body codecs, tracing, delivery
//!   policies (retry, dead-letter, dedupe, timeout, limits), routing and supervised
//!   dispatch; [`MultiServer`] feeds several servers into one receiver.
//! - [`open_topic`] and [`open_server`]: any transport by URL (`mem://orders`,
//!   `redis://host/orders?group=billing`, ...), with the scheme registry in [`url`].
//! - [`mem`]: the in-memory transport (feature `mem`, on by default); `redis`: Redis
//!   Streams (feature `redis`); `nats`: NATS JetStream (feature `nats`); `amqp`:
//!   RabbitMQ (feature `amqp`); `postgres`: a PostgreSQL queue, the transactional outbox
//!   and its forwarder (feature `postgres`); `kafka`: Apache Kafka consumer groups with
//!   per-key order and contiguous commits (feature `kafka`).
//! - `testing`: the conformance kit every transport passes (feature `testing`).
//!
//! # Features
//!
//! - `mem` (default): the in-memory transport.
//! - `tracing` (default): log lines (dropped messages, reconnects) through `tracing`, and
//!   `decorators::trace`.
//! - `testing`: the conformance kit, `msgio::testing`.
//! - `base64`, `gzip`, `zstd`, `lz4`: body codecs in `decorators`.
//! - `otel`: W3C trace context through OpenTelemetry, `decorators::otel`.
//! - `redis`: the Redis Streams transport, [`msgio::redis`](crate::redis), and the Redis
//!   dedupe store.
//! - `nats`: the NATS JetStream transport, [`msgio::nats`](crate::nats). Needs Rust 1.89
//!   (async-nats' own minimum).
//! - `amqp`: the RabbitMQ (AMQP 0.9.1) transport, [`msgio::amqp`](crate::amqp). Needs
//!   Rust 1.88 (lapin's own minimum).
//! - `postgres`: the PostgreSQL transport, [`msgio::postgres`](crate::postgres): a queue
//!   table, publishing inside your own transaction, and the outbox's forwarder.
//! - `kafka`: the Apache Kafka transport, [`msgio::kafka`](crate::kafka), on rdkafka with
//!   librdkafka built from its bundled sources (needs a C compiler, `make`, `pkg-config`
//!   and zlib's headers).
//! - `json`: typed JSON payloads, [`msgio::json`](crate::json): `Message::from_json`,
//!   `Message::json::<T>()`, `Topic::publish_json`, and a receiver over the decoded value.
//! - `metrics`: counters, a gauge and histograms of every server and of a
//!   [`MeteredTopic`](crate::metrics::MeteredTopic), through the `metrics` facade,
//!   [`msgio::metrics`](crate::metrics).
//! - `tower`: a tower `Layer` for each receiver decorator, and adapters between
//!   receivers and tower services, `msgio::tower`.
//!
//! msgio itself needs Rust 1.85; the features above that need newer say so.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

#[macro_use]
mod macros;

pub mod attributes;
mod b64;
mod backoff;
mod context;
mod dead_letter;
mod error;
mod log;
mod message;
mod multiserver;
mod random;
mod receiver;
mod redact;
mod server;
mod topic;

pub mod decorators;
// The engine's items are public through `transport` (and `ServerConfig`, `Health` at the
// root); the module stays reachable under its first name for code written against it.
#[doc(hidden)]
pub mod engine;
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub mod json;
pub mod keys;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod transport;
pub mod url;

mod backends;
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use backends::amqp;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use backends::kafka;
#[cfg(feature = "mem")]
#[cfg_attr(docsrs, doc(cfg(feature = "mem")))]
pub use backends::mem;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use backends::nats;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use backends::postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use backends::redis;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

/// Entry points of the fuzz targets in `fuzz/` (built with `--cfg fuzzing`): not API.
/// Unit tests run them over the committed seeds, so that they always build.
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;

/// The README's examples, compiled and run as doc tests (they use the in-memory and Redis
/// transports and the tower layers, so they need those features, as
/// `cargo test --all-features` has).
#[cfg(all(doctest, feature = "mem", feature = "redis", feature = "tower"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use attributes::{Attributes, canonical_key};
// The iterators live in `msgio::attributes` (beside `Attributes`, as std's map iterators
// do), so that the root's `keys` is only the module of attribute names. Still reachable
// here for code written against the first names.
#[doc(hidden)]
pub use attributes::{GetAll, Iter, Keys};
pub use backoff::{Backoff, Delays};
pub use context::{Context, MessageId};
pub use engine::{Health, HealthState, ServerConfig};
pub use error::{BoxError, Error};
pub use message::{Body, Message};
pub use multiserver::MultiServer;
pub use receiver::{BoxFuture, BoxReceiver, Receiver, ReceiverFunc, SafeReceiver};
pub use server::{BoxServer, Server};
pub use topic::{BoxMessageWriter, BoxTopic, MessageWriter, Topic, TopicFunc};
pub use url::{open_server, open_topic};
// A transport author's items, in `transport` since 0.x; still reachable here for code
// written against their first place.
#[doc(hidden)]
pub use transport::{BufferedWriter, Outgoing, Publish};

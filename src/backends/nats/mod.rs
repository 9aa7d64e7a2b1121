//! The NATS JetStream transport (feature `nats`): a topic that publishes with headers and
//! waits for the stream's acknowledgement, and a server on a durable pull consumer, built
//! on the delivery engine.
//!
//! Needs Rust 1.89 or newer, the minimum of the async-nats client it is built on (msgio
//! itself needs 1.85).
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
//! # URL
//!
//! [`open_topic`](crate::open_topic) and [`open_server`](crate::open_server) take
//! `nats://[user:password@]host[:port]/<subject>[?<parameters>]`; a topic and a server
//! accept the same URL, each using its own parameters. The topic publishes to the
//! subject; the server reads the stream's durable consumer. Both create the stream when it
//! is missing.
//!
//! | parameter | side | meaning (default) |
//! |---|---|---|
//! | `stream` | both | the stream (the subject's first token: `orders` for `orders.created`) |
//! | `subjects` | both | what a stream created here captures, repeatable (`<first token>.>`, or the subject itself when it has one token) |
//! | `retention` | both | `workqueue` or `limits` (`workqueue`) |
//! | `duplicate_window` | both | a duration, [`ConsumerOptions::duplicate_window`] (2m) |
//! | `msg_id_attribute` | topic | [`NatsTopic::msg_id_attribute`] (`Idempotency-Key`) |
//! | `durable` | server | the durable consumer (`msgio`) |
//! | `ack_wait` | server | a duration, [`ConsumerOptions::ack_wait`] (30s) |
//! | `max_deliver` | server | [`ConsumerOptions::max_deliver`] (no limit) |
//! | `dead_letter` | server | [`ConsumerOptions::dead_letter_subject`] (none) |
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let url = "nats://127.0.0.1:4222/orders.created?durable=billing";
//! let topic = msgio::open_topic(url).await?;
//! let server = msgio::open_server(url, msgio::ServerConfig::new()).await?;
//! # let _ = (topic, server);
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! - Attributes are NATS headers, one header value per attribute value (multi-valued
//!   attributes stay multi-valued, in order). What a header cannot carry is an
//!   [`Error::InvalidAttribute`] naming the key, at publish: a name that is not printable
//!   ASCII or holds a space or a colon, a value with a line break, a value that starts or
//!   ends with whitespace (readers trim it), and `Nats-Msg-Id` (see below).
//! - `Nats-Msg-Id` comes from the [`idempotency attribute`](NatsTopic::msg_id_attribute)
//!   (`Idempotency-Key` by default), so the stream's duplicate window drops a message
//!   published twice with the same key. Without that attribute each publish gets a new,
//!   unique id: publishing the same message again is then a second message, not a
//!   duplicate. It is not an attribute on delivery.
//! - Headers are read in wire order under their canonical keys (a foreign publisher's
//!   `x-multi: 1` and `X-MULTI: 2` arrive as `X-Multi: [1, 2]`), as Go's `textproto`
//!   reads them.
//! - A message whose header block breaks the protocol (published by another client: bytes
//!   that are not UTF-8, a line without a colon) does not stop the server: it is
//!   dead-lettered, never handed to the receiver, with the headers that could be read, its
//!   whole header block in [`keys::RAW_HEADERS`](crate::keys::RAW_HEADERS) (base64), its
//!   body and the reason; without a dead-letter topic it is terminated, with a warning.
//!   (The server pulls on a connection of its own that reads the protocol itself, for
//!   this: the client library drops its connection on such a message.)
//! - A writer's close returns once the stream acknowledged the message; concurrent writers
//!   keep their acknowledgements in flight together.
//! - A message (headers and body) must fit the server's `max_payload`, 1 MiB unless the
//!   server is configured otherwise. A larger one fails at publish, not at delivery, with
//!   an error that says so: `a message to "orders.created" is larger than the NATS
//!   server's max_payload: max payload size exceeded: Payload size limit of 1048576
//!   exceeded by message size of 2097211`. Keep large bodies elsewhere (an object store)
//!   and publish a reference, or raise `max_payload` on the server.
//! - [`set_delay`](crate::MessageWriter::set_delay): NATS 2.9 cannot schedule a message, so
//!   the topic records when it is due ([`keys::NOT_BEFORE`](crate::keys::NOT_BEFORE)) and
//!   the server, on a delivery that arrives early, naks it with the rest of the delay.
//!   JetStream counts that early delivery, so a delayed message's first attempt is numbered
//!   2 (and it has one attempt fewer before `max_attempts`).
//! - The server fetches in batches from a durable pull consumer (created with the stream
//!   when missing, and again when it is deleted while the server runs: the server
//!   reconnects and goes on with what the stream holds), acks, naks with the retry delay,
//!   terminates rejects, and sends
//!   in-progress signals every half ack wait while a receiver still runs. The attempt is
//!   the delivery count. Dead letters go to [`ServerConfig::dead_letter`] (a [`NatsTopic`]
//!   on a dead-letter subject, say).
//!
//! # Connecting
//!
//! [`Nats::connect`] takes `nats://[user:password@]host[:port]` or
//! `nats://token@host[:port]` (several servers separated by commas). The credentials are
//! taken out of the URL and handed to the client as options, so that neither msgio nor the
//! client library shows them in `Debug`, errors or logs. The server's pull connection does
//! not speak TLS yet: a `tls://` URL is refused with [`Error::InvalidConfig`] by
//! [`Nats::server`] (publishing works over TLS), and a server that requires TLS on a
//! `nats://` URL fails each fetch with an error saying so.

mod batch;
mod encoding;
mod pull;
mod source;
mod topic;
mod url;

pub(crate) use url::NatsOpener;
mod wire;

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::stream;

pub use source::{NatsServer, NatsSource, NatsToken};
pub use topic::{NatsPublisher, NatsSender, NatsTopic, NatsWriter};

use crate::redact::Credentials;
use crate::{Error, ServerConfig};
use pull::{Auth, Endpoint};

/// A connection to NATS with JetStream: makes [`NatsTopic`]s and [`NatsServer`]s. Cloning
/// shares the connection, which reconnects by itself.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    endpoint: Endpoint,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.endpoint.shown)
            .finish()
    }
}

impl Nats {
    /// Connects to the NATS server at `url`: `nats://[user:password@]host[:port]`, or
    /// `nats://token@host[:port]`; several servers separated by commas. A user name or
    /// password holding `/`, `?`, `#` or `@` must be percent-encoded. The credentials are
    /// handed to the client as options, never inside a URL it may log.
    ///
    /// The server's pull connection does not speak TLS yet: with a `tls://` URL,
    /// [`server`](Nats::server) is refused; a server that requires TLS is refused when the
    /// server first fetches. Topics work over TLS.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that cannot be read; [`Error::ConnectionLost`]
    /// when the server does not answer. Neither shows the password or the token.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (endpoint, addrs) = endpoint(url)?;
        let mut options =
            async_nats::ConnectOptions::new().connection_timeout(std::time::Duration::from_secs(5));
        match &endpoint.auth {
            Auth::None => {}
            Auth::UserPassword { user, password } => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            Auth::Token(token) => options = options.token(token.clone()),
        }
        let client = options.connect(addrs).await.map_err(|e| {
            Error::connection_lost(format!("cannot connect to NATS at {}: {e}", endpoint.shown))
        })?;
        Ok(Nats {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            endpoint,
        })
    }

    /// The URL connected to, password or token hidden.
    pub fn url(&self) -> &str {
        &self.endpoint.shown
    }

    /// A topic publishing to `subject` (which a stream must capture).
    pub fn topic(&self, subject: impl Into<String>) -> NatsTopic {
        NatsTopic::open(self.client.clone(), subject.into())
    }

    /// A server on the durable pull consumer `options` names, creating the stream and the
    /// consumer when missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range, or for a `tls://` URL (the
    /// server's pull connection does not speak TLS yet); [`Error::ConnectionLost`] when
    /// NATS does not answer; [`Error::Other`] when JetStream refuses the stream or the
    /// consumer.
    pub async fn server(
        &self,
        options: ConsumerOptions,
        config: ServerConfig,
    ) -> Result<NatsServer, Error> {
        if self.endpoint.tls {
            return Err(Error::invalid_config(
                "nats url",
                format!(
                    "{}: the NATS server's pull connection does not speak TLS yet",
                    self.endpoint.shown
                ),
            ));
        }
        source::server(self, options, config).await
    }

    /// Creates the stream `options` names when missing, so that publishing works before any
    /// server runs ([`server`](Nats::server) does this too).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range; [`Error::Other`] when
    /// JetStream refuses the stream.
    pub async fn ensure_stream(&self, options: &ConsumerOptions) -> Result<(), Error> {
        source::ensure_stream(self, options).await.map(drop)
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

/// Where `url` points and how to log in, and the servers as the client takes them.
fn endpoint(url: &str) -> Result<(Endpoint, Vec<async_nats::ServerAddr>), Error> {
    let shown: Vec<String> = url.split(',').map(crate::redact::url).collect();
    let shown = shown.join(",");
    let mut auth = Auth::None;
    let mut tls = false;
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for part in url.split(',').map(str::trim) {
        let part = if part.contains("://") {
            part.to_owned()
        } else {
            format!("nats://{part}")
        };
        let credentials = Credentials::split("nats url", &part)?;
        let addr: async_nats::ServerAddr =
            credentials.bare.parse().map_err(|e: std::io::Error| {
                Error::invalid_config(
                    "nats url",
                    format!(
                        "{}: {}",
                        credentials.shown,
                        credentials.scrub(&e.to_string())
                    ),
                )
            })?;
        match (credentials.user, credentials.password) {
            (Some(user), Some(password)) => auth = Auth::UserPassword { user, password },
            (Some(token), None) => auth = Auth::Token(token),
            _ => {}
        }
        tls |= addr.tls_required();
        servers.push(format!("{}:{}", addr.host(), addr.port()));
        addrs.push(addr);
    }
    Ok((
        Endpoint {
            servers,
            auth,
            shown,
            tls,
        },
        addrs,
    ))
}

/// For the fuzz target: reads `data` as a pull connection reads what the server sends
/// (in pieces, as it may arrive), and each message's header block as attributes.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_read(data: &[u8]) {
    let mut buf = bytes::BytesMut::new();
    for piece in data.chunks(61) {
        buf.extend_from_slice(piece);
        while let Ok(Some(op)) = wire::parse_op(&mut buf, 1 << 20) {
            if let wire::ServerOp::Msg(msg) = op {
                let (_, _) = encoding::attributes(msg.headers.as_deref());
                if let Some(reply) = &msg.reply {
                    let _ = wire::ack_info(reply);
                }
            }
        }
    }
    let (_, _) = encoding::attributes(Some(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_url_is_marked() {
        assert!(endpoint("tls://127.0.0.1:4222").unwrap().0.tls);
        assert!(!endpoint("nats://127.0.0.1:4222").unwrap().0.tls);
    }

    #[test]
    fn credentials_leave_the_url_and_are_decoded() {
        let (e, addrs) = endpoint("nats://u%2Fser:p%3Fa%23ss%40@127.0.0.1:4222").unwrap();
        assert!(
            matches!(&e.auth, Auth::UserPassword { user, password } if user == "u/ser" && password == "p?a#ss@")
        );
        assert_eq!(e.servers, ["127.0.0.1:4222"]);
        assert_eq!(e.shown, "nats://u%2Fser:***@127.0.0.1:4222");
        assert!(!format!("{addrs:?}").contains("p%3F"), "{addrs:?}");
        let (e, _) = endpoint("nats://s3cr3t@127.0.0.1:4222").unwrap();
        assert!(matches!(&e.auth, Auth::Token(t) if t == "s3cr3t"));
        assert_eq!(e.shown, "nats://***@127.0.0.1:4222");
        let (e, _) = endpoint("nats://a:4222, b:5222").unwrap();
        assert_eq!(e.servers, ["a:4222", "b:5222"]);
        let err = endpoint("nats://u:pa/ss@host").unwrap_err().to_string();
        assert!(!err.contains("pa/ss"), "{err}");
    }
}

/// The stream and the durable pull consumer a [`NatsServer`] reads, created when missing.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    stream: String,
    durable: String,
    subjects: Vec<String>,
    retention: stream::RetentionPolicy,
    ack_wait: Duration,
    max_deliver: i64,
    duplicate_window: Duration,
    dead_letter_subject: Option<String>,
}

impl ConsumerOptions {
    /// The consumer `durable` on the stream `stream`. Defaults: the stream captures the
    /// subject `<stream>.>`, work-queue retention (a message is removed once acked),
    /// ack wait 30 s, no JetStream delivery limit (msgio's `max_attempts` bounds attempts),
    /// a 2-minute duplicate window.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        let stream = stream.into();
        ConsumerOptions {
            subjects: vec![format!("{stream}.>")],
            stream,
            durable: durable.into(),
            retention: stream::RetentionPolicy::WorkQueue,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            duplicate_window: Duration::from_secs(120),
            dead_letter_subject: None,
        }
    }

    /// Dead-letters to this subject (through a [`NatsTopic`] on the same
    /// connection; a stream must capture it) when the [`ServerConfig`] names no dead-letter
    /// topic of its own.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }

    /// The subjects a stream created here captures.
    pub fn subjects<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.subjects = subjects.into_iter().map(Into::into).collect();
        self
    }

    /// Limits retention (a message stays until its limits) instead of work-queue
    /// retention, for a stream that several durables read.
    pub fn limits_retention(mut self) -> Self {
        self.retention = stream::RetentionPolicy::Limits;
        self
    }

    /// How long a delivery may go unacknowledged before JetStream delivers it again
    /// (default 30 s); the server extends it every half of it while a receiver runs.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// JetStream's own delivery limit for a consumer created here (default none).
    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = n;
        self
    }

    /// The window in which a stream created here drops a message published again with the
    /// same `Nats-Msg-Id` (default 2 minutes).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && !s.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
        };
        if !name_ok(&self.stream) {
            return Err(Error::invalid_config(
                "stream",
                format!(
                    "{:?} must be non-empty, without spaces, '.', '*' or '>'",
                    self.stream
                ),
            ));
        }
        if !name_ok(&self.durable) {
            return Err(Error::invalid_config(
                "durable",
                format!(
                    "{:?} must be non-empty, without spaces, '.', '*' or '>'",
                    self.durable
                ),
            ));
        }
        if self.dead_letter_subject.as_deref() == Some("") {
            return Err(Error::invalid_config(
                "dead_letter_subject",
                "must not be empty",
            ));
        }
        if self.subjects.is_empty() || self.subjects.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid_config(
                "subjects",
                "needs at least one non-empty subject",
            ));
        }
        if self.ack_wait < Duration::from_millis(100) {
            return Err(Error::invalid_config(
                "ack_wait",
                format!("{:?} is under 100 ms", self.ack_wait),
            ));
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return Err(Error::invalid_config(
                "max_deliver",
                format!("{} is neither -1 (no limit) nor positive", self.max_deliver),
            ));
        }
        Ok(())
    }
}

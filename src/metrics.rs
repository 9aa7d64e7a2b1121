//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), so
//! that a Prometheus, StatsD or OpenTelemetry exporter of the user's choice records them.
//!
//! **Servers** record these by themselves once the feature is on, each labelled `source`
//! with the server's source (a queue, stream, subject or topic). Install the recorder
//! before a server starts serving: the server registers its metrics then.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `msgio_server_received_total` | counter | deliveries handed to the receiver, and malformed ones given up |
//! | `msgio_server_acked_total` | counter | messages the receiver handled (`Ok`) |
//! | `msgio_server_retried_total` | counter | failed attempts that will be retried (including those abandoned at the shutdown deadline) |
//! | `msgio_server_rejected_total` | counter | messages given up and dropped (no dead-letter destination, or one that refused them) |
//! | `msgio_server_dead_lettered_total` | counter | messages given up and moved to the dead-letter destination |
//! | `msgio_server_panics_total` | counter | receivers that panicked |
//! | `msgio_server_in_flight` | gauge | messages handed to receivers and not yet decided |
//! | `msgio_server_handling_seconds` | histogram | how long receivers ran |
//!
//! **Topics** record theirs through [`MeteredTopic`], labelled `topic` with the name it is
//! given:
//!
//! | name | kind | what |
//! |---|---|---|
//! | `msgio_topic_published_total` | counter | messages published (the writer closed without an error) |
//! | `msgio_topic_failed_total` | counter | messages whose publish failed |
//! | `msgio_topic_publish_seconds` | histogram | from a writer's creation (or `publish`) to the broker's acknowledgement; one value for a whole `publish_batch` |
//!
//! ```
//! use msgio::metrics::MeteredTopic;
//! use msgio::{Context, Message, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), msgio::Error> {
//! // With a recorder installed (metrics-exporter-prometheus, say), these count:
//! let (inner, _server) = msgio::mem::channel(16)?;
//! let topic = MeteredTopic::new(inner, "orders");
//! topic.publish(&Context::background(), Message::new("order 1")).await?;
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use futures::io::AsyncWrite;

use crate::{Context, Error, MessageWriter, Topic};

/// Counter: deliveries handed to a server's receiver (label `source`).
pub const RECEIVED: &str = "msgio_server_received_total";
/// Counter: messages a receiver handled.
pub const ACKED: &str = "msgio_server_acked_total";
/// Counter: failed attempts to be retried.
pub const RETRIED: &str = "msgio_server_retried_total";
/// Counter: messages given up and dropped.
pub const REJECTED: &str = "msgio_server_rejected_total";
/// Counter: messages given up and dead-lettered.
pub const DEAD_LETTERED: &str = "msgio_server_dead_lettered_total";
/// Counter: receivers that panicked.
pub const PANICS: &str = "msgio_server_panics_total";
/// Gauge: messages in the hands of receivers.
pub const IN_FLIGHT: &str = "msgio_server_in_flight";
/// Histogram: how long receivers ran, in seconds.
pub const HANDLING_SECONDS: &str = "msgio_server_handling_seconds";
/// Counter: messages published through a [`MeteredTopic`] (label `topic`).
pub const PUBLISHED: &str = "msgio_topic_published_total";
/// Counter: messages whose publish through a [`MeteredTopic`] failed.
pub const FAILED: &str = "msgio_topic_failed_total";
/// Histogram: how long a publish through a [`MeteredTopic`] took, in seconds.
pub const PUBLISH_SECONDS: &str = "msgio_topic_publish_seconds";

/// A topic that records what it publishes: [`PUBLISHED`], [`FAILED`] and
/// [`PUBLISH_SECONDS`], labelled `topic`.
pub struct MeteredTopic<T> {
    inner: T,
    meters: Meters,
}

#[derive(Clone)]
struct Meters {
    name: Cow<'static, str>,
    published: metrics::Counter,
    failed: metrics::Counter,
    seconds: metrics::Histogram,
}

impl<T> MeteredTopic<T> {
    /// Records what is published to `inner` under the label `topic = name`. The metrics
    /// are registered here: install the recorder first.
    pub fn new(inner: T, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        let label = name.to_string();
        MeteredTopic {
            inner,
            meters: Meters {
                published: metrics::counter!(PUBLISHED, "topic" => label.clone()),
                failed: metrics::counter!(FAILED, "topic" => label.clone()),
                seconds: metrics::histogram!(PUBLISH_SECONDS, "topic" => label),
                name,
            },
        }
    }
}

inner_accessors!([T] MeteredTopic<T>, T, "topic");

impl<T: Clone> Clone for MeteredTopic<T> {
    fn clone(&self) -> Self {
        MeteredTopic {
            inner: self.inner.clone(),
            meters: self.meters.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for MeteredTopic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredTopic")
            .field("inner", &self.inner)
            .field("topic", &self.meters.name)
            .finish()
    }
}

impl<T: Topic> Topic for MeteredTopic<T> {
    type Writer = MeteredWriter<T::Writer>;

    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        let started = Instant::now();
        match self.inner.new_writer(ctx) {
            Ok(inner) => Ok(MeteredWriter {
                inner,
                meters: self.meters.clone(),
                started,
                recorded: false,
            }),
            Err(e) => {
                self.meters.failed.increment(1);
                Err(e)
            }
        }
    }

    async fn publish(&self, ctx: &Context, message: crate::Message) -> Result<(), Error> {
        let started = Instant::now();
        let result = self.inner.publish(ctx, message).await;
        self.meters.record(started, result.is_ok());
        result
    }

    async fn publish_batch(
        &self,
        ctx: &Context,
        messages: Vec<crate::Message>,
    ) -> Result<(), Error> {
        let (started, n) = (Instant::now(), messages.len() as u64);
        let result = self.inner.publish_batch(ctx, messages).await;
        self.meters.seconds.record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            self.meters.published.increment(n);
        } else {
            self.meters.failed.increment(n);
        }
        result
    }
}

impl Meters {
    fn record(&self, started: Instant, ok: bool) {
        self.seconds.record(started.elapsed().as_secs_f64());
        if ok {
            self.published.increment(1);
        } else {
            self.failed.increment(1);
        }
    }
}

/// The writer of a [`MeteredTopic`]: records the publish when it is closed.
pub struct MeteredWriter<W> {
    inner: W,
    meters: Meters,
    started: Instant,
    recorded: bool,
}

impl<W: fmt::Debug> fmt::Debug for MeteredWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredWriter")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<W: MessageWriter> AsyncWrite for MeteredWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_close(cx));
        // Once: closing again is the inner writer's error to give, not a second publish.
        if !this.recorded {
            this.recorded = true;
            this.meters.record(this.started, result.is_ok());
        }
        Poll::Ready(result)
    }
}

delegate_message_writer!([W: MessageWriter] MeteredWriter<W>);

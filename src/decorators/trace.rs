//! `tracing` spans for publish and receive, with the messaging fields a subscriber (or an
//! OpenTelemetry bridge) expects; no OpenTelemetry needed.
//!
//! - `msgio.publish`: `messaging.system`, `messaging.destination.name`,
//!   `messaging.operation.type = "send"`, `messaging.message.body.size` and `error` once
//!   published, `otel.kind = "producer"`. It spans the writer's life.
//! - `msgio.receive`: `messaging.system`, `messaging.destination.name` (the context's
//!   source), `messaging.message.id`, `messaging.msgio.attempt`,
//!   `messaging.operation.type = "process"`, `error` when the receiver fails,
//!   `otel.kind = "consumer"`. The receiver runs inside it.
//!
//! ```
//! use msgio::decorators::trace::{TracedReceiver, TracedTopic};
//! use msgio::{Context, Message, ReceiverFunc};
//!
//! # fn main() -> Result<(), msgio::Error> {
//! let (inner, _server) = msgio::mem::channel(16)?;
//! let topic = TracedTopic::new(inner, "orders");
//! let receiver = TracedReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async {
//!     tracing::info!("inside the msgio.receive span");
//!     Ok(())
//! }));
//! # let _ = (topic, receiver);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use futures::io::AsyncWrite;
use tracing::{Instrument, Span, field};

use crate::{Context, Error, Message, MessageWriter, Receiver, Topic};

/// The topic half: a `msgio.publish` span per message.
#[derive(Debug, Clone)]
pub struct TracedTopic<T> {
    inner: T,
    destination: Cow<'static, str>,
    system: Cow<'static, str>,
}

impl<T> TracedTopic<T> {
    /// Traces what is published to `inner`, a topic for `destination`.
    pub fn new(inner: T, destination: impl Into<Cow<'static, str>>) -> Self {
        TracedTopic {
            inner,
            destination: destination.into(),
            system: Cow::Borrowed("msgio"),
        }
    }

    /// The `messaging.system` field (default `msgio`).
    pub fn system(mut self, system: impl Into<Cow<'static, str>>) -> Self {
        self.system = system.into();
        self
    }
}

inner_accessors!([T] TracedTopic<T>, T, "topic");

impl<T: Topic> Topic for TracedTopic<T> {
    type Writer = TracedWriter<T::Writer>;

    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        let span = tracing::info_span!(
            "msgio.publish",
            messaging.system = %self.system,
            messaging.destination.name = %self.destination,
            messaging.operation.type = "send",
            messaging.message.body.size = field::Empty,
            otel.kind = "producer",
            error = field::Empty,
        );
        let inner = span.in_scope(|| self.inner.new_writer(ctx))?;
        Ok(TracedWriter {
            inner,
            span,
            size: 0,
        })
    }
}

/// The writer of a [`TracedTopic`]: polls the inner writer inside its span.
pub struct TracedWriter<W> {
    inner: W,
    span: Span,
    size: u64,
}

impl<W: fmt::Debug> fmt::Debug for TracedWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedWriter")
            .field("inner", &self.inner)
            .field("span", &self.span)
            .finish()
    }
}

impl<W: MessageWriter> AsyncWrite for TracedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.size += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let result = ready!(Pin::new(&mut this.inner).poll_close(cx));
        this.span.record("messaging.message.body.size", this.size);
        if let Err(e) = &result {
            this.span.record("error", field::display(e));
        }
        Poll::Ready(result)
    }
}

delegate_message_writer!([W: MessageWriter] TracedWriter<W>);

/// The receiver half: runs the inner receiver inside a `msgio.receive` span.
#[derive(Debug, Clone)]
pub struct TracedReceiver<R> {
    inner: R,
    system: Cow<'static, str>,
}

impl<R> TracedReceiver<R> {
    /// Traces each message `inner` receives.
    pub fn new(inner: R) -> Self {
        TracedReceiver {
            inner,
            system: Cow::Borrowed("msgio"),
        }
    }

    /// The `messaging.system` field (default `msgio`).
    pub fn system(mut self, system: impl Into<Cow<'static, str>>) -> Self {
        self.system = system.into();
        self
    }
}

inner_accessors!([R] TracedReceiver<R>, R, "receiver");

/// A [`TracedReceiver`] layer (feature `tower`): [`TracedReceiver::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type TracedLayer = TracedReceiver<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl TracedReceiver<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`TracedReceiver::new`]; [`system`](TracedReceiver::system) applies as it does to a
    /// `TracedReceiver`.
    pub fn layer() -> TracedLayer {
        TracedReceiver::new(())
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for TracedReceiver<()> {
    type Service = TracedReceiver<R>;

    fn layer(&self, inner: R) -> TracedReceiver<R> {
        TracedReceiver {
            inner,
            system: self.system.clone(),
        }
    }
}

impl<R: Receiver> Receiver for TracedReceiver<R> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let span = tracing::info_span!(
            "msgio.receive",
            messaging.system = %self.system,
            messaging.destination.name = ctx.source().unwrap_or(""),
            messaging.message.id = field::Empty,
            messaging.msgio.attempt = ctx.attempt(),
            messaging.operation.type = "process",
            otel.kind = "consumer",
            error = field::Empty,
        );
        if let Some(id) = ctx.message_id() {
            span.record("messaging.message.id", field::display(id));
        }
        let result = self.inner.receive(ctx, msg).instrument(span.clone()).await;
        if let Err(e) = &result {
            span.record("error", field::display(e));
        }
        result
    }
}

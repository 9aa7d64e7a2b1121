//! The writer transports share: buffer the body, hand the whole message over on close.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::io::AsyncWrite;

use crate::{Attributes, Context, Error, MessageWriter};

/// A message ready to leave a [`BufferedWriter`]: attributes, the whole body, the delay.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Outgoing {
    /// The attributes.
    pub attributes: Attributes,
    /// The body.
    pub body: Bytes,
    /// The delay asked for with [`MessageWriter::set_delay`].
    pub delay: Option<Duration>,
}

impl Outgoing {
    /// Whether the message asks for a delay (a zero delay is none).
    pub fn is_delayed(&self) -> bool {
        self.delay.is_some_and(|d| !d.is_zero())
    }
}

/// What a transport supplies to get a [`MessageWriter`] from [`BufferedWriter`]: sending one
/// whole message.
///
/// The future must honour the [`Context`]'s cancellation where it waits (for capacity, for a
/// broker's confirmation), finishing with [`Error::Cancelled`].
pub trait Publish: Send + Sync + Unpin + 'static {
    /// The future that sends the message.
    type Future: Future<Output = Result<(), Error>> + Send + Unpin + 'static;

    /// Sends `message`.
    fn publish(&self, ctx: &Context, message: Outgoing) -> Self::Future;
}

/// The [`MessageWriter`] transports share: it buffers the body in memory and hands the whole
/// message to a [`Publish`] when closed. Closed writers refuse writes and further closes with
/// [`Error::ClosedMessageWriter`], so a transport never repeats that bookkeeping.
pub struct BufferedWriter<P: Publish> {
    publisher: P,
    ctx: Context,
    attributes: Attributes,
    delay: Option<Duration>,
    state: WriterState<P::Future>,
}

enum WriterState<F> {
    Open(Vec<u8>),
    Publishing(F),
    Closed,
}

impl<P: Publish> BufferedWriter<P> {
    /// A writer that publishes through `publisher`, under `ctx`.
    pub fn new(publisher: P, ctx: &Context) -> Self {
        Self::with_attributes(publisher, ctx, Attributes::new())
    }

    /// [`new`](BufferedWriter::new), starting from `attributes` (empty ones holding a
    /// spare table, say).
    pub(crate) fn with_attributes(publisher: P, ctx: &Context, attributes: Attributes) -> Self {
        BufferedWriter {
            publisher,
            ctx: ctx.clone(),
            attributes,
            delay: None,
            state: WriterState::Open(Vec::new()),
        }
    }
}

impl<P: Publish> fmt::Debug for BufferedWriter<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            WriterState::Open(buf) => format!("open, {} bytes", buf.len()),
            WriterState::Publishing(_) => "publishing".to_owned(),
            WriterState::Closed => "closed".to_owned(),
        };
        f.debug_struct("BufferedWriter")
            .field("attributes", &self.attributes)
            .field("delay", &self.delay)
            .field("state", &state)
            .finish()
    }
}

fn closed<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(Error::ClosedMessageWriter.into_io()))
}

impl<P: Publish> AsyncWrite for BufferedWriter<P> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().state {
            WriterState::Open(buf) => {
                buf.extend_from_slice(data);
                Poll::Ready(Ok(data.len()))
            }
            _ => closed(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.state {
            WriterState::Open(_) => Poll::Ready(Ok(())),
            _ => closed(),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                WriterState::Open(buf) => {
                    let message = Outgoing {
                        attributes: std::mem::take(&mut this.attributes),
                        body: Bytes::from(std::mem::take(buf)),
                        delay: this.delay,
                    };
                    let fut = this.publisher.publish(&this.ctx, message);
                    this.state = WriterState::Publishing(fut);
                }
                WriterState::Publishing(fut) => {
                    let result = ready!(Pin::new(fut).poll(cx));
                    this.state = WriterState::Closed;
                    return Poll::Ready(result.map_err(Error::into_io));
                }
                WriterState::Closed => return closed(),
            }
        }
    }
}

impl<P: Publish> MessageWriter for BufferedWriter<P> {
    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Attributes {
        &mut self.attributes
    }
    fn set_delay(&mut self, delay: Duration) {
        self.delay = Some(delay);
    }
}

//! The topic and receiver halves every body codec plugs into.
//!
//! A codec is a pair meeting through one attribute, as in go-msg: [`EncodeTopic`] encodes
//! the body while it is written and names the codec in the attribute; [`DecodeReceiver`]
//! decodes the body while the receiver reads it, only when the attribute names the codec,
//! and removes the name first. Both stream: memory stays constant whatever the body's size.
//!
//! Stacked codecs apply in the order their topics wrap, outermost first, and are listed in
//! the attribute in that order (`Content-Encoding: zstd, gzip` means zstd, then gzip). The
//! receivers undo them in reverse, so wrap receivers in the opposite order to topics:
//!
//! ```
//! # #[cfg(all(feature = "gzip", feature = "base64"))]
//! # fn main() -> Result<(), msgio::Error> {
//! use msgio::decorators::{base64, gzip};
//! use msgio::{Context, Message, ReceiverFunc};
//!
//! let (inner, _server) = msgio::mem::channel(16)?;
//! // Written bodies are gzipped, then base64-encoded.
//! let topic = gzip::topic(base64::topic(inner));
//! // Received bodies are base64-decoded, then gunzipped.
//! let receiver = base64::receiver(gzip::receiver(ReceiverFunc::new(
//!     |_: Context, _: Message| async { Ok(()) },
//! )));
//! # let _ = (topic, receiver);
//! # Ok(()) }
//! # #[cfg(not(all(feature = "gzip", feature = "base64")))]
//! # fn main() {}
//! ```

#[cfg(feature = "base64")]
#[cfg_attr(docsrs, doc(cfg(feature = "base64")))]
pub mod base64;
mod compress;

pub use compress::Level;
#[cfg(feature = "gzip")]
pub use compress::gzip;
#[cfg(feature = "lz4")]
pub use compress::lz4;
#[cfg(feature = "zstd")]
pub use compress::zstd;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncWrite};

use crate::{Attributes, Body, Context, Error, Message, MessageWriter, Receiver, Topic};

/// A body encoding: how to encode a writer and decode a body, and the attribute token that
/// names it.
pub trait Codec: Clone + Send + Sync + 'static {
    /// The encoding writer wrapped around the inner message writer.
    type Encoder<W: MessageWriter>: AsyncWrite + Send + Unpin;

    /// The attribute that lists the encodings applied (`Content-Encoding`).
    const ATTRIBUTE: &'static str;

    /// This codec's token in that attribute (`gzip`).
    const NAME: &'static str;

    /// Wraps `inner` so that what is written to it is encoded.
    fn encoder<W: MessageWriter>(&self, inner: W) -> Self::Encoder<W>;

    /// The writer an encoder wraps.
    fn inner<W: MessageWriter>(encoder: &Self::Encoder<W>) -> &W;

    /// The writer an encoder wraps, mutably.
    fn inner_mut<W: MessageWriter>(encoder: &mut Self::Encoder<W>) -> &mut W;

    /// A body that reads `body` decoded.
    fn decoder(&self, body: Body) -> Body;
}

/// The encodings listed in `key`, in the order applied: values split on commas, trimmed,
/// lower-cased.
fn tokens(attributes: &Attributes, key: &str) -> Vec<String> {
    attributes
        .get_all(key)
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn set_tokens(attributes: &mut Attributes, key: &str, tokens: &[String]) {
    attributes.remove(key);
    if !tokens.is_empty() {
        attributes.set(key, tokens.join(", "));
    }
}

/// The topic half of a codec: encodes bodies while they are written.
#[derive(Debug, Clone)]
pub struct EncodeTopic<T, C> {
    inner: T,
    codec: C,
}

impl<T, C> EncodeTopic<T, C> {
    /// Encodes with `codec` what is published to `inner`.
    pub fn new(inner: T, codec: C) -> Self {
        EncodeTopic { inner, codec }
    }
}

inner_accessors!([T, C] EncodeTopic<T, C>, T, "topic");

impl<T: Topic, C: Codec> Topic for EncodeTopic<T, C> {
    type Writer = EncodeWriter<T::Writer, C>;

    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        let mut writer = self.inner.new_writer(ctx)?;
        // This codec encodes before those inside it: it goes first in the list.
        let attributes = writer.attributes_mut();
        let mut applied = tokens(attributes, C::ATTRIBUTE);
        applied.insert(0, C::NAME.to_owned());
        set_tokens(attributes, C::ATTRIBUTE, &applied);
        Ok(EncodeWriter {
            encoder: self.codec.encoder(writer),
        })
    }
}

/// The writer of an [`EncodeTopic`]: encodes while written, finishes the encoding when
/// closed, then closes (publishes) the inner writer.
pub struct EncodeWriter<W: MessageWriter, C: Codec> {
    encoder: C::Encoder<W>,
}

impl<W: MessageWriter, C: Codec> fmt::Debug for EncodeWriter<W, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodeWriter")
            .field("codec", &C::NAME)
            .field("attributes", C::inner(&self.encoder).attributes())
            .finish()
    }
}

impl<W: MessageWriter, C: Codec> AsyncWrite for EncodeWriter<W, C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.encoder).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.encoder).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.encoder).poll_close(cx)
    }
}

impl<W: MessageWriter, C: Codec> MessageWriter for EncodeWriter<W, C> {
    fn attributes(&self) -> &Attributes {
        C::inner(&self.encoder).attributes()
    }

    fn attributes_mut(&mut self) -> &mut Attributes {
        C::inner_mut(&mut self.encoder).attributes_mut()
    }

    fn set_delay(&mut self, delay: Duration) {
        C::inner_mut(&mut self.encoder).set_delay(delay)
    }
}

/// The default limit on a decoded body: 64 MiB.
pub const DEFAULT_MAX_DECODED_SIZE: u64 = 64 << 20;

/// The receiver half of a codec: decodes bodies whose attribute names the codec.
///
/// A body that fails to decode, or decodes to more than
/// [`max_decoded_size`](DecodeReceiver::max_decoded_size) bytes, is rejected (never
/// retried) with an error naming the codec and the reason.
#[derive(Debug, Clone)]
pub struct DecodeReceiver<R, C> {
    inner: R,
    codec: C,
    max_decoded: u64,
}

impl<R, C> DecodeReceiver<R, C> {
    /// Decodes with `codec` the bodies that name it, before `inner` reads them.
    pub fn new(inner: R, codec: C) -> Self {
        DecodeReceiver {
            inner,
            codec,
            max_decoded: DEFAULT_MAX_DECODED_SIZE,
        }
    }

    /// Rejects bodies that decode to more than `bytes` (default 64 MiB): a guard against
    /// decompression bombs.
    pub fn max_decoded_size(mut self, bytes: u64) -> Self {
        self.max_decoded = bytes;
        self
    }
}

inner_accessors!([R, C] DecodeReceiver<R, C>, R, "receiver");

/// A [`DecodeReceiver`] layer (feature `tower`): [`DecodeReceiver::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type DecodeLayer<C> = DecodeReceiver<(), C>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl<C: Clone> DecodeReceiver<(), C> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`DecodeReceiver::new`] with `codec`; [`max_decoded_size`](Self::max_decoded_size)
    /// applies as it does to a `DecodeReceiver`.
    pub fn layer(codec: C) -> DecodeLayer<C> {
        DecodeReceiver::new((), codec)
    }
}

#[cfg(feature = "tower")]
impl<R, C: Clone> tower_layer::Layer<R> for DecodeReceiver<(), C> {
    type Service = DecodeReceiver<R, C>;

    fn layer(&self, inner: R) -> DecodeReceiver<R, C> {
        DecodeReceiver {
            inner,
            codec: self.codec.clone(),
            max_decoded: self.max_decoded,
        }
    }
}

impl<R: Receiver, C: Codec> Receiver for DecodeReceiver<R, C> {
    async fn receive(&self, ctx: Context, mut msg: Message) -> Result<(), Error> {
        let mut applied = tokens(&msg.attributes, C::ATTRIBUTE);
        if applied.last().map(String::as_str) != Some(C::NAME) {
            return self.inner.receive(ctx, msg).await;
        }
        applied.pop();
        set_tokens(&mut msg.attributes, C::ATTRIBUTE, &applied);
        let failure = Arc::new(OnceLock::new());
        let body = std::mem::take(&mut msg.body);
        msg.body = Body::from_reader(Guarded {
            inner: self.codec.decoder(body),
            codec: C::NAME,
            remaining: self.max_decoded,
            limit: self.max_decoded,
            failure: failure.clone(),
        });
        match self.inner.receive(ctx, msg).await {
            // However the receiver reported it, a body that did not decode is a reject.
            Err(e) if !e.is_reject() => match failure.get() {
                Some(reason) => Err(Error::reject(reason.clone())),
                None => Err(e),
            },
            other => other,
        }
    }
}

/// Reads a decoded body: turns decoding failures into rejects naming the codec, and stops
/// at the decoded-size limit.
struct Guarded {
    inner: Body,
    codec: &'static str,
    remaining: u64,
    limit: u64,
    failure: Arc<OnceLock<String>>,
}

impl Guarded {
    fn fail(&self, reason: String) -> io::Error {
        let _ = self.failure.set(reason.clone());
        Error::reject(reason).into_io()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Read at most one byte past the limit, to tell "exactly at" from "past".
        let room = usize::try_from(this.remaining.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..room])) {
            Ok(n) if n as u64 > this.remaining => Poll::Ready(Err(this.fail(format!(
                "{}: decoded body is larger than the limit of {} bytes",
                this.codec, this.limit
            )))),
            Ok(n) => {
                this.remaining -= n as u64;
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                let err = Error::from(e);
                if err.is_reject() {
                    // Already named by an inner decoder.
                    if let Error::Rejected(reason) = &err {
                        let _ = this.failure.set(reason.to_string());
                    }
                    return Poll::Ready(Err(err.into_io()));
                }
                let reason = match err {
                    Error::Io(io) => io.to_string(),
                    other => other.to_string(),
                };
                Poll::Ready(Err(
                    this.fail(format!("{}: cannot decode body: {reason}", this.codec))
                ))
            }
        }
    }
}

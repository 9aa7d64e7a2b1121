//! Messages and their streaming bodies.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, Cursor};

use crate::{Attributes, Error};

/// A message: attributes and a streaming body (go-msg's `Message`).
///
/// # Examples
///
/// ```
/// use msgio::Message;
///
/// let mut msg = Message::new("hello");
/// msg.attributes.set("Type", "greeting");
/// # futures::executor::block_on(async {
/// let body = msg.dump_body(1024).await?; // read it all, and keep it readable
/// assert_eq!(body, "hello");
/// assert_eq!(msg.body.read_to_bytes(1024).await?, "hello");
/// # Ok::<(), msgio::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct Message {
    /// The message's attributes.
    pub attributes: Attributes,
    /// The message's body.
    pub body: Body,
}

impl Message {
    /// A message with no attributes and the given body.
    pub fn new(body: impl Into<Body>) -> Self {
        Message {
            attributes: Attributes::new(),
            body: body.into(),
        }
    }

    /// A message with the given attributes and body.
    pub fn from_parts(attributes: Attributes, body: impl Into<Body>) -> Self {
        Message {
            attributes,
            body: body.into(),
        }
    }

    /// A new message with a copy of this message's attributes and the given body
    /// (go-msg's `WithBody`).
    pub fn with_body(&self, body: impl Into<Body>) -> Message {
        Message {
            attributes: self.attributes.clone(),
            body: body.into(),
        }
    }

    /// Reads the whole body, leaves the body readable from its start, and returns the bytes
    /// (go-msg's `DumpBody`).
    ///
    /// # Errors
    ///
    /// [`Error::BodyTooLarge`] when the body is longer than `limit` bytes, [`Error::Io`] when
    /// reading fails. In both cases the bytes already read are put back in front of the rest,
    /// so the body still reads whole.
    pub async fn dump_body(&mut self, limit: usize) -> Result<Bytes, Error> {
        let bytes = self.body.read_to_bytes(limit).await?;
        self.body = Body::from(bytes.clone());
        Ok(bytes)
    }

    /// Returns a second body over the same bytes, leaving this one readable from its start
    /// (go-msg's `CloneBody`). For a body held in memory this copies nothing.
    ///
    /// # Errors
    ///
    /// As [`Message::dump_body`].
    pub async fn clone_body(&mut self, limit: usize) -> Result<Body, Error> {
        self.dump_body(limit).await.map(Body::from)
    }
}

/// A message body: a `futures::io::AsyncRead` stream, with a zero-copy path for bytes held in
/// memory.
///
/// Readers must be `Send + Sync` so that a [`Message`] can be borrowed across an `.await` in
/// a receiver. A tokio reader converts with `tokio_util::compat`:
///
/// ```
/// use msgio::Body;
/// use tokio_util::compat::TokioAsyncReadCompatExt;
///
/// let tokio_reader: &'static [u8] = b"from tokio"; // any tokio::io::AsyncRead
/// let body = Body::from_reader(tokio_reader.compat());
/// # drop(body);
/// ```
///
/// and a body reads as a tokio reader with `tokio_util::compat::FuturesAsyncReadCompatExt`.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Bytes(Bytes),
    Reader(Pin<Box<dyn AsyncRead + Send + Sync>>),
}

impl Body {
    /// An empty body.
    pub const fn empty() -> Self {
        Body {
            kind: Kind::Bytes(Bytes::new()),
        }
    }

    /// A body that streams from `reader`.
    pub fn from_reader(reader: impl AsyncRead + Send + Sync + 'static) -> Self {
        Body {
            kind: Kind::Reader(Box::pin(reader)),
        }
    }

    /// The unread bytes, when the body is held in memory; `None` for a streaming body.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Bytes(b) => Some(b),
            Kind::Reader(_) => None,
        }
    }

    /// Reads the rest of the body into memory. A body held in memory is returned without a
    /// copy.
    ///
    /// # Errors
    ///
    /// [`Error::BodyTooLarge`] when more than `limit` bytes remain, [`Error::Io`] when the
    /// reader fails (or the msgio error the reader carried in its `io::Error`, such as a
    /// decoder's reject). Either way the bytes read so far are put back in front of the rest, so
    /// nothing of the body is lost.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: dropping the future part-way loses the bytes it had read.
    pub async fn read_to_bytes(&mut self, limit: usize) -> Result<Bytes, Error> {
        let mut reader = match std::mem::replace(&mut self.kind, Kind::Bytes(Bytes::new())) {
            Kind::Bytes(b) if b.len() > limit => {
                self.kind = Kind::Bytes(b);
                return Err(Error::BodyTooLarge { limit });
            }
            Kind::Bytes(b) => return Ok(b),
            Kind::Reader(r) => r,
        };
        // Read straight into the buffer (no stack chunk: futures holding this one stay small).
        const CHUNK: usize = 8 * 1024;
        let mut buf = BytesMut::new();
        let outcome = loop {
            // Read at most one byte past the limit, to tell "exactly at" from "past".
            let want = CHUNK.min(limit.saturating_add(1) - buf.len());
            let filled = buf.len();
            buf.resize(filled + want, 0);
            let read = reader.read(&mut buf[filled..]).await;
            buf.truncate(filled + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => break Ok(()),
                Ok(_) if buf.len() > limit => break Err(Error::BodyTooLarge { limit }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An error a decoder tagged (a reject, say) keeps its kind.
                Err(e) => break Err(Error::from(e)),
            }
        };
        match outcome {
            Ok(()) => Ok(buf.freeze()),
            Err(e) => {
                // Put back what was read, so the body still reads whole.
                self.kind = Kind::Reader(Box::pin(Cursor::new(buf.freeze()).chain(reader)));
                Err(e)
            }
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Bytes(b) => f.debug_tuple("Body::Bytes").field(&b.len()).finish(),
            Kind::Reader(_) => f.write_str("Body::Reader"),
        }
    }
}

impl AsyncRead for Body {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            Kind::Bytes(b) => {
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                b.advance(n);
                Poll::Ready(Ok(n))
            }
            Kind::Reader(r) => r.as_mut().poll_read(cx, buf),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body {
            kind: Kind::Bytes(b),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::from(Bytes::from(v))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Body::from(Bytes::from_static(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    /// A reader that yields its bytes a few at a time, then optionally fails.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        fail_at_end: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.pos == self.data.len() {
                if self.fail_at_end {
                    return Poll::Ready(Err(io::Error::other("reader broke")));
                }
                return Poll::Ready(Ok(0));
            }
            let n = buf.len().min(3).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    fn trickle(data: &[u8], fail_at_end: bool) -> Body {
        Body::from_reader(Trickle {
            data: data.to_vec(),
            pos: 0,
            fail_at_end,
        })
    }

    #[test]
    fn bytes_bodies_are_not_copied() {
        let bytes = Bytes::from(vec![7u8; 64]);
        let mut body = Body::from(bytes.clone());
        let out = block_on(body.read_to_bytes(64)).unwrap();
        assert_eq!(out.as_ptr(), bytes.as_ptr());
    }

    #[test]
    fn limit_is_inclusive_and_oversize_is_an_error_that_keeps_the_body() {
        let mut body = trickle(b"0123456789", false);
        let err = block_on(body.read_to_bytes(9)).unwrap_err();
        assert!(matches!(err, Error::BodyTooLarge { limit: 9 }));
        assert_eq!(block_on(body.read_to_bytes(10)).unwrap(), "0123456789");

        let mut body = Body::from("0123456789");
        assert!(matches!(
            block_on(body.read_to_bytes(3)),
            Err(Error::BodyTooLarge { limit: 3 })
        ));
        assert_eq!(block_on(body.read_to_bytes(10)).unwrap(), "0123456789");
    }

    #[test]
    fn read_errors_keep_what_was_read() {
        let mut body = trickle(b"abcdef", true);
        assert!(matches!(
            block_on(body.read_to_bytes(100)),
            Err(Error::Io(_))
        ));
        let mut rest = Vec::new();
        let err = block_on(body.read_to_end(&mut rest)).unwrap_err();
        assert_eq!(err.to_string(), "reader broke");
        assert_eq!(rest, b"abcdef");
    }

    #[test]
    fn dump_and_clone_leave_the_body_readable() {
        let mut msg = Message::new(trickle(b"payload", false));
        msg.attributes.set("k", "v");
        assert_eq!(block_on(msg.dump_body(100)).unwrap(), "payload");
        let mut second = block_on(msg.clone_body(100)).unwrap();
        assert_eq!(block_on(second.read_to_bytes(100)).unwrap(), "payload");
        assert_eq!(block_on(msg.body.read_to_bytes(100)).unwrap(), "payload");

        let other = msg.with_body("new");
        assert_eq!(other.attributes.get("K"), Some("v"));
        assert_eq!(other.body.as_bytes().unwrap(), "new");
    }

    #[test]
    fn empty_body_reads_empty() {
        let mut body = Body::default();
        assert_eq!(block_on(body.read_to_bytes(0)).unwrap(), "");
        let mut body = trickle(b"", false);
        assert_eq!(block_on(body.read_to_bytes(0)).unwrap(), "");
        assert!(block_on(trickle(b"x", false).read_to_bytes(0)).is_err());
    }

    #[tokio::test]
    async fn bodies_interoperate_with_tokio_io() {
        use tokio::io::AsyncReadExt as _;
        use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

        // A tokio reader as a body.
        let (mut client, server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            client.write_all(b"over a tokio pipe").await.unwrap();
        });
        let mut body = Body::from_reader(server.compat());
        assert_eq!(body.read_to_bytes(100).await.unwrap(), "over a tokio pipe");

        // A body read with tokio's AsyncReadExt.
        let mut text = String::new();
        Body::from("read by tokio")
            .compat()
            .read_to_string(&mut text)
            .await
            .unwrap();
        assert_eq!(text, "read by tokio");
    }

    #[test]
    fn message_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Message>();
        check::<Body>();
    }
}

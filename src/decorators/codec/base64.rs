//! Base64 bodies (`Content-Transfer-Encoding: base64`), as go-msg's base64 decorator: the
//! standard alphabet, padded, no line breaks (line breaks are skipped when decoding).
//!
//! ```
//! use msgio::decorators::base64;
//! use msgio::{Context, Message, ReceiverFunc};
//!
//! # fn main() -> Result<(), msgio::Error> {
//! let (inner, _server) = msgio::mem::channel(16)?;
//! let topic = base64::topic(inner);
//! let receiver = base64::receiver(ReceiverFunc::new(|_: Context, mut msg: Message| async move {
//!     let body = msg.body.read_to_bytes(1024).await?; // decoded
//!     println!("{body:?}");
//!     Ok(())
//! }));
//! # let _ = (topic, receiver);
//! # Ok(()) }
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use futures::io::{AsyncRead, AsyncWrite};

use super::{Codec, DecodeReceiver, EncodeTopic};
use crate::b64::{ALPHABET, encode_group};
use crate::{Body, Error, MessageWriter};

/// The base64 codec (standard alphabet, padded).
#[derive(Debug, Clone, Copy, Default)]
pub struct Base64;

/// Encodes what is published to `inner` as base64.
pub fn topic<T>(inner: T) -> EncodeTopic<T, Base64> {
    EncodeTopic::new(inner, Base64)
}

/// Decodes base64 bodies before `inner` reads them.
pub fn receiver<R>(inner: R) -> DecodeReceiver<R, Base64> {
    DecodeReceiver::new(inner, Base64)
}

impl Codec for Base64 {
    type Encoder<W: MessageWriter> = Base64Encoder<W>;
    const ATTRIBUTE: &'static str = "Content-Transfer-Encoding";
    const NAME: &'static str = "base64";

    fn encoder<W: MessageWriter>(&self, inner: W) -> Base64Encoder<W> {
        Base64Encoder::new(inner)
    }

    fn inner<W: MessageWriter>(encoder: &Base64Encoder<W>) -> &W {
        &encoder.inner
    }

    fn inner_mut<W: MessageWriter>(encoder: &mut Base64Encoder<W>) -> &mut W {
        &mut encoder.inner
    }

    fn decoder(&self, body: Body) -> Body {
        Body::from_reader(Base64Decoder::new(body))
    }
}

/// Input bytes encoded per write, at most (4 KiB of output).
const CHUNK: usize = 3 * 1024;

/// An `AsyncWrite` that base64-encodes into another writer, streaming.
#[derive(Debug)]
pub struct Base64Encoder<W> {
    inner: W,
    /// Input bytes waiting for a whole group of three.
    pending: Vec<u8>,
    /// Encoded bytes not yet written to `inner`.
    out: Vec<u8>,
    written: usize,
    finished: bool,
}

impl<W: AsyncWrite + Unpin> Base64Encoder<W> {
    /// Encodes into `inner`.
    pub fn new(inner: W) -> Self {
        Base64Encoder {
            inner,
            pending: Vec::with_capacity(3),
            out: Vec::new(),
            written: 0,
            finished: false,
        }
    }

    /// Writes out what was encoded.
    fn poll_drain(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Base64Encoder<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(Error::ClosedMessageWriter.into_io()));
        }
        ready!(this.poll_drain(cx))?;
        let take = &buf[..buf.len().min(CHUNK)];
        let mut rest = take;
        if !this.pending.is_empty() {
            let fill = (3 - this.pending.len()).min(rest.len());
            this.pending.extend_from_slice(&rest[..fill]);
            rest = &rest[fill..];
            if this.pending.len() < 3 {
                return Poll::Ready(Ok(take.len()));
            }
            encode_group(&this.pending, &mut this.out);
            this.pending.clear();
        }
        let whole = rest.len() / 3 * 3;
        this.out.reserve(whole / 3 * 4);
        for group in rest[..whole].chunks_exact(3) {
            encode_group(group, &mut this.out);
        }
        this.pending.extend_from_slice(&rest[whole..]);
        Poll::Ready(Ok(take.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.finished {
            if !this.pending.is_empty() {
                encode_group(&this.pending, &mut this.out);
                this.pending.clear();
            }
            this.finished = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

/// Sextet values of the standard alphabet; 0xFF for bytes outside it.
const DECODE: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// An `AsyncRead` that base64-decodes another reader, streaming. Line breaks are skipped;
/// anything else outside the alphabet is an error naming it and its offset.
#[derive(Debug)]
pub struct Base64Decoder<R> {
    inner: R,
    input: Vec<u8>,
    out: Vec<u8>,
    read: usize,
    /// Sextets of the current group.
    group: [u8; 4],
    len: usize,
    /// `=` seen in the current group.
    pads: usize,
    /// The padded last group is complete: only line breaks may follow.
    done: bool,
    eof: bool,
    offset: u64,
}

impl<R: AsyncRead + Unpin> Base64Decoder<R> {
    /// Decodes `inner`.
    pub fn new(inner: R) -> Self {
        Base64Decoder {
            inner,
            input: vec![0; 4096],
            out: Vec::with_capacity(3072),
            read: 0,
            group: [0; 4],
            len: 0,
            pads: 0,
            done: false,
            eof: false,
            offset: 0,
        }
    }

    fn invalid(&self, what: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what)
    }

    fn decode(&mut self, n: usize) -> io::Result<()> {
        for i in 0..n {
            let c = self.input[i];
            self.offset += 1;
            if c == b'\r' || c == b'\n' {
                continue;
            }
            if self.done {
                return Err(self.invalid(format!(
                    "data after the padding at offset {}",
                    self.offset - 1
                )));
            }
            if c == b'=' {
                if self.len < 2 {
                    return Err(
                        self.invalid(format!("misplaced padding at offset {}", self.offset - 1))
                    );
                }
                self.pads += 1;
                if self.len + self.pads == 4 {
                    let g = self.group;
                    let n =
                        (u32::from(g[0]) << 18) | (u32::from(g[1]) << 12) | (u32::from(g[2]) << 6);
                    let bytes = [(n >> 16) as u8, (n >> 8) as u8];
                    self.out.extend_from_slice(&bytes[..self.len - 1]);
                    self.done = true;
                }
                continue;
            }
            let v = DECODE[usize::from(c)];
            if v == 0xFF || self.pads > 0 {
                return Err(self.invalid(format!(
                    "invalid character {:?} at offset {}",
                    char::from(c),
                    self.offset - 1
                )));
            }
            self.group[self.len] = v;
            self.len += 1;
            if self.len == 4 {
                let g = self.group;
                let n = (u32::from(g[0]) << 18)
                    | (u32::from(g[1]) << 12)
                    | (u32::from(g[2]) << 6)
                    | u32::from(g[3]);
                self.out
                    .extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                self.len = 0;
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Base64Decoder<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.read < this.out.len() {
                let n = buf.len().min(this.out.len() - this.read);
                buf[..n].copy_from_slice(&this.out[this.read..this.read + n]);
                this.read += n;
                return Poll::Ready(Ok(n));
            }
            if this.eof || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            this.out.clear();
            this.read = 0;
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.input))?;
            if n == 0 {
                this.eof = true;
                if (this.len > 0 || this.pads > 0) && !this.done {
                    return Poll::Ready(Err(this.invalid(format!(
                        "input ends inside a group of four characters at offset {}",
                        this.offset
                    ))));
                }
                continue;
            }
            this.decode(n)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    /// RFC 4648 section 10 test vectors.
    const VECTORS: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    async fn encode(data: &[u8], write_size: usize) -> Vec<u8> {
        let mut enc = Base64Encoder::new(Cursor::new(Vec::new()));
        for chunk in data.chunks(write_size.max(1)) {
            enc.write_all(chunk).await.unwrap();
        }
        enc.close().await.unwrap();
        enc.inner.into_inner()
    }

    async fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Base64Decoder::new(Cursor::new(data.to_vec()))
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

    #[tokio::test]
    async fn rfc_4648_vectors_both_ways() {
        for (plain, encoded) in VECTORS {
            assert_eq!(
                encode(plain.as_bytes(), 1).await,
                encoded.as_bytes(),
                "{plain:?}"
            );
            assert_eq!(decode(encoded.as_bytes()).await.unwrap(), plain.as_bytes());
        }
    }

    #[tokio::test]
    async fn any_write_split_gives_the_same_encoding() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = encode(&data, data.len()).await;
        for size in [1, 2, 3, 4, 5, 7, 4096, 9999] {
            assert_eq!(encode(&data, size).await, whole, "writes of {size}");
        }
        assert_eq!(decode(&whole).await.unwrap(), data);
    }

    #[tokio::test]
    async fn line_breaks_are_skipped_and_bad_input_is_named() {
        assert_eq!(decode(b"Zm9v\r\nYmFy\n").await.unwrap(), b"foobar");
        let err = decode(b"Zm9v*mFy").await.unwrap_err();
        assert!(err.to_string().contains("'*' at offset 4"), "{err}");
        let err = decode(b"Zm9vYg").await.unwrap_err();
        assert!(err.to_string().contains("ends inside a group"), "{err}");
        let err = decode(b"Zg==Zg==").await.unwrap_err();
        assert!(err.to_string().contains("after the padding"), "{err}");
        let err = decode(b"Z===").await.unwrap_err();
        assert!(err.to_string().contains("misplaced padding"), "{err}");
    }
}

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

/// How much encoded input a decoder reads at a time.
const INPUT: usize = 16 * 1024;
/// Room for what one input chunk decodes to, and for the fast path's 8-byte stores.
const OUT: usize = INPUT / 4 * 3 + 8;

/// An `AsyncRead` that base64-decodes another reader, streaming. Line breaks are skipped;
/// anything else outside the alphabet is an error naming it and its offset.
#[derive(Debug)]
pub struct Base64Decoder<R> {
    inner: R,
    input: Vec<u8>,
    /// Decoded bytes waiting for a reader whose buffer was too small to decode into.
    out: Vec<u8>,
    filled: usize,
    read: usize,
    groups: Groups,
    eof: bool,
}

/// Where decoding stands between two chunks of input.
#[derive(Debug, Default)]
struct Groups {
    /// Sextets of the current group.
    group: [u8; 4],
    len: usize,
    /// `=` seen in the current group.
    pads: usize,
    /// The padded last group is complete: only line breaks may follow.
    done: bool,
    /// Characters read so far, for the offsets errors name.
    offset: u64,
}

impl<R: AsyncRead + Unpin> Base64Decoder<R> {
    /// Decodes `inner`.
    pub fn new(inner: R) -> Self {
        Base64Decoder {
            inner,
            input: vec![0; INPUT],
            out: vec![0; OUT],
            filled: 0,
            read: 0,
            groups: Groups::default(),
            eof: false,
        }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Eight characters as 48 bits, and whether any is not in the alphabet (a line break, `=`
/// or anything else: the table gives those its high bit).
#[inline(always)]
fn eight(chars: &[u8]) -> (u64, u8) {
    let mut bits = 0u64;
    let mut bad = 0u8;
    for &c in chars {
        let v = DECODE[usize::from(c)];
        bad |= v;
        bits = (bits << 6) | u64::from(v);
    }
    (bits, bad)
}

impl Groups {
    /// Decodes `input` into `out` (at least `input.len() / 4 * 3 + 8` long), returning how
    /// many bytes it wrote.
    ///
    /// Whole groups between line breaks take the fast path, eight characters at a time,
    /// looked up and checked together; a stretch with anything else goes one character at
    /// a time through [`Groups::byte`], which names what is wrong.
    fn decode(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<usize> {
        let start = self.offset;
        self.offset += input.len() as u64;
        let n = input.len();
        let mut o = 0;
        let mut i = 0;
        loop {
            if self.len == 0 && self.pads == 0 && !self.done {
                for chars in input[i..].chunks_exact(8) {
                    let (bits, bad) = eight(chars);
                    if bad & 0x80 != 0 {
                        break;
                    }
                    // 48 bits: six bytes, most significant first.
                    out[o..o + 8].copy_from_slice(&(bits << 16).to_be_bytes());
                    o += 6;
                    i += 8;
                }
            }
            if i >= n {
                return Ok(o);
            }
            self.byte(input[i], start + i as u64, out, &mut o)?;
            i += 1;
        }
    }

    /// One character the fast path could not take, at `offset` in the input.
    fn byte(&mut self, c: u8, offset: u64, out: &mut [u8], o: &mut usize) -> io::Result<()> {
        if c == b'\r' || c == b'\n' {
            return Ok(());
        }
        if self.done {
            return Err(invalid(format!(
                "data after the padding at offset {offset}"
            )));
        }
        if c == b'=' {
            if self.len < 2 {
                return Err(invalid(format!("misplaced padding at offset {offset}")));
            }
            self.pads += 1;
            if self.len + self.pads == 4 {
                let g = self.group;
                let n = (u32::from(g[0]) << 18) | (u32::from(g[1]) << 12) | (u32::from(g[2]) << 6);
                let k = self.len - 1;
                out[*o..*o + k].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8][..k]);
                *o += k;
                self.done = true;
            }
            return Ok(());
        }
        let v = DECODE[usize::from(c)];
        if v == 0xFF || self.pads > 0 {
            return Err(invalid(format!(
                "invalid character {:?} at offset {offset}",
                char::from(c)
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
            out[*o..*o + 3].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
            *o += 3;
            self.len = 0;
        }
        Ok(())
    }

    /// Whether the input may end here.
    fn check_end(&self) -> io::Result<()> {
        if (self.len > 0 || self.pads > 0) && !self.done {
            return Err(invalid(format!(
                "input ends inside a group of four characters at offset {}",
                self.offset
            )));
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
            if this.read < this.filled {
                let n = buf.len().min(this.filled - this.read);
                buf[..n].copy_from_slice(&this.out[this.read..this.read + n]);
                this.read += n;
                return Poll::Ready(Ok(n));
            }
            if this.eof || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // Read no more than the caller's buffer can take decoded, when it is smaller
            // than a chunk: then the bytes go straight into it, without a copy.
            let room = (buf.len().saturating_sub(8) / 3 * 4).clamp(4, INPUT);
            let want = if buf.len() >= OUT { INPUT } else { room };
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.input[..want]))?;
            if n == 0 {
                this.eof = true;
                this.groups.check_end()?;
                continue;
            }
            if buf.len() >= n / 4 * 3 + 8 {
                let written = this.groups.decode(&this.input[..n], buf)?;
                if written > 0 {
                    return Poll::Ready(Ok(written));
                }
            } else {
                this.filled = this.groups.decode(&this.input[..n], &mut this.out)?;
                this.read = 0;
            }
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

    /// The decoder as it was before its fast path: one character at a time over the whole
    /// input. The fast path must give the same bytes and the same errors.
    fn reference(input: &[u8]) -> Result<Vec<u8>, String> {
        let (mut out, mut group, mut len, mut pads, mut done) = (Vec::new(), [0u8; 4], 0, 0, false);
        for (offset, &c) in input.iter().enumerate() {
            if c == b'\r' || c == b'\n' {
                continue;
            }
            if done {
                return Err(format!("data after the padding at offset {offset}"));
            }
            if c == b'=' {
                if len < 2 {
                    return Err(format!("misplaced padding at offset {offset}"));
                }
                pads += 1;
                if len + pads == 4 {
                    let n = (u32::from(group[0]) << 18)
                        | (u32::from(group[1]) << 12)
                        | (u32::from(group[2]) << 6);
                    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8][..len - 1]);
                    done = true;
                }
                continue;
            }
            let v = DECODE[usize::from(c)];
            if v == 0xFF || pads > 0 {
                return Err(format!(
                    "invalid character {:?} at offset {offset}",
                    char::from(c)
                ));
            }
            group[len] = v;
            len += 1;
            if len == 4 {
                let n = (u32::from(group[0]) << 18)
                    | (u32::from(group[1]) << 12)
                    | (u32::from(group[2]) << 6)
                    | u32::from(group[3]);
                out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                len = 0;
            }
        }
        if (len > 0 || pads > 0) && !done {
            return Err(format!(
                "input ends inside a group of four characters at offset {}",
                input.len()
            ));
        }
        Ok(out)
    }

    /// A reader handing out its bytes in chunks of pseudo-random sizes.
    struct Choppy {
        data: Vec<u8>,
        at: usize,
        rng: u64,
    }

    impl futures::io::AsyncRead for Choppy {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let want = 1 + (self.rng % 40) as usize;
            let n = want.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn the_fast_path_decodes_and_fails_exactly_as_one_character_at_a_time() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut failures = 0;
        for _ in 0..3000 {
            let len = (next() % 300) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut text = crate::b64::encode(&data).into_bytes();
            // Line breaks here and there, and now and then a character that does not belong.
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % (text.len() + 1);
                text.insert(at, if next() % 2 == 0 { b'\n' } else { b'\r' });
            }
            if next() % 4 == 0 && !text.is_empty() {
                let at = (next() as usize) % text.len();
                text[at] = b"=*- \0\xff"[(next() % 6) as usize];
            }
            let want = reference(&text);
            failures += usize::from(want.is_err());
            let mut got = Vec::new();
            let result = Base64Decoder::new(Choppy {
                data: text.clone(),
                at: 0,
                rng: next() | 1,
            })
            .read_to_end(&mut got)
            .await;
            match (&want, result) {
                (Ok(bytes), Ok(_)) => {
                    assert_eq!(&got, bytes, "{:?}", String::from_utf8_lossy(&text))
                }
                (Err(reason), Err(e)) => assert_eq!(&e.to_string(), reason),
                (want, got) => panic!(
                    "{:?}: wanted {want:?}, got {got:?}",
                    String::from_utf8_lossy(&text)
                ),
            }
        }
        assert!(
            failures > 300,
            "too few bad inputs to prove the errors: {failures}"
        );
    }
}

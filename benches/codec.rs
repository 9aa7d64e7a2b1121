//! Body codecs: constant memory on 256 MiB bodies, and gzip through the decorators against
//! raw async-compression on the same bytes, in the same run.
//!
//! ```sh
//! cargo bench --bench codec --all-features
//! ```
//!
//! 1. For each codec, a 256 MiB body is written through the topic half into a counting
//!    sink, and a 256 MiB body is decoded by the receiver half from a streaming source;
//!    the growth of the process's peak resident memory (VmHWM) is printed.
//! 2. gzip: compress and decompress a 16 MiB body through `gzip::topic` / `gzip::receiver`
//!    and directly with async-compression; medians of several rounds and the ratios.
//! 3. base64: decode the same 256 MiB through `base64::receiver` and through the `base64`
//!    crate's streaming `DecoderReader`; medians and the ratio.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_compression::futures::write::GzipEncoder;
use bytes::Bytes;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use msgio::decorators::codec::{Codec, DecodeReceiver};
use msgio::decorators::{base64, gzip, lz4, zstd};
use msgio::{
    Attributes, Body, Context, Message, MessageWriter, Receiver, ReceiverFunc, Topic, TopicFunc,
};
use tokio_util::sync::PollSender;

const BIG: u64 = 256 << 20;
const ROUNDS: usize = 7;

/// Plain text-like bytes, generated on the fly: `len` bytes, never all in memory.
struct Generated {
    left: u64,
    pos: usize,
}

const PATTERN: &[u8] = include_bytes!("../tests/fixtures/plain.txt");

impl Generated {
    fn new(len: u64) -> Self {
        Generated { left: len, pos: 0 }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            *b = PATTERN[self.pos];
            self.pos = (self.pos + 1) % PATTERN.len();
        }
        self.left -= n as u64;
        Poll::Ready(Ok(n))
    }
}

/// A message writer that only counts (or keeps, when asked) what is written.
#[derive(Default)]
struct Sink {
    attributes: Attributes,
    count: u64,
    keep: Option<Vec<u8>>,
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.count += buf.len() as u64;
        if let Some(keep) = &mut this.keep {
            keep.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl MessageWriter for Sink {
    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Attributes {
        &mut self.attributes
    }
    fn set_delay(&mut self, _: Duration) {}
}

/// The process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Copies `reader` into `writer` through one 64 KiB buffer.
async fn pump(mut reader: impl AsyncRead + Unpin, writer: &mut (impl AsyncWrite + Unpin)) -> u64 {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        writer.write_all(&buf[..n]).await.unwrap();
        total += n as u64;
    }
}

/// A receiver that reads the body through one 64 KiB buffer and reports its length.
fn counting_receiver(out: std::sync::Arc<std::sync::atomic::AtomicU64>) -> impl Receiver {
    ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let out = out.clone();
        async move {
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                let n = msg.body.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            out.store(total, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    })
}

/// Encodes 256 MiB through `topic` into a counting sink; returns the encoded size.
async fn encode_big<T: Topic>(topic: &T) -> u64 {
    let mut writer = topic.new_writer(&Context::background()).unwrap();
    pump(Generated::new(BIG), &mut writer).await;
    writer.close().await.unwrap();
    BIG
}

/// Decodes a streamed 256 MiB body with `receiver`; `encoded` turns the plain stream into
/// the codec's stream, `attr` names it.
async fn decode_big<C: Codec>(codec: C, encoded: Body) -> u64 {
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let receiver =
        DecodeReceiver::new(counting_receiver(total.clone()), codec).max_decoded_size(u64::MAX);
    let mut msg = Message::new(encoded);
    msg.attributes.set(C::ATTRIBUTE, C::NAME);
    receiver.receive(Context::background(), msg).await.unwrap();
    total.load(std::sync::atomic::Ordering::SeqCst)
}

/// A streaming source of `codec`-encoded plain bytes: an encoder pumped through a pipe.
fn encoded_stream<C: Codec>(codec: C) -> Body {
    let (reader, writer) = sluice_pipe();
    tokio::spawn(async move {
        let mut enc = codec.encoder(PipeWriter {
            inner: writer,
            attributes: Attributes::new(),
        });
        pump(Generated::new(BIG), &mut enc).await;
        enc.close().await.unwrap();
    });
    Body::from_reader(reader)
}

/// A bounded in-process byte pipe (at most 4 chunks in flight).
fn sluice_pipe() -> (PipeReader, PollSender<Bytes>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (
        PipeReader {
            rx,
            chunk: Bytes::new(),
        },
        PollSender::new(tx),
    )
}

struct PipeReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl AsyncRead for PipeReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        while self.chunk.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.chunk = chunk,
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Poll::Ready(Ok(n))
    }
}

struct PipeWriter {
    inner: PollSender<Bytes>,
    attributes: Attributes,
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let sent = futures::ready!(this.inner.poll_reserve(cx))
            .and_then(|()| this.inner.send_item(Bytes::copy_from_slice(buf)));
        Poll::Ready(
            sent.map(|()| buf.len())
                .map_err(|_| io::ErrorKind::BrokenPipe.into()),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl MessageWriter for PipeWriter {
    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Attributes {
        &mut self.attributes
    }
    fn set_delay(&mut self, _: Duration) {}
}

fn sink_topic() -> impl Topic {
    TopicFunc::new(|_: &Context| Ok(Sink::default()))
}

async fn memory() {
    println!("256 MiB bodies, peak resident memory growth (VmHWM)");
    macro_rules! check {
        ($name:literal, $module:ident, $codec:expr) => {{
            let before = peak_rss();
            let start = Instant::now();
            encode_big(&$module::topic(sink_topic())).await;
            let encode = start.elapsed();
            let mid = peak_rss();
            let start = Instant::now();
            let decoded = decode_big($codec, encoded_stream($codec)).await;
            let decode = start.elapsed();
            assert_eq!(decoded, BIG, "{} decoded {decoded} bytes", $name);
            let after = peak_rss();
            println!(
                "  {:<7} encode {:>6.2?}  +{:>5.1} MiB   decode {:>6.2?}  +{:>5.1} MiB",
                $name,
                encode,
                (mid - before) as f64 / (1 << 20) as f64,
                decode,
                (after - mid) as f64 / (1 << 20) as f64,
            );
        }};
    }
    check!("base64", base64, base64::Base64);
    check!("gzip", gzip, gzip::Gzip::new());
    check!("zstd", zstd, zstd::Zstd::new());
    check!("lz4", lz4, lz4::Lz4::new());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn gzip_vs_raw() {
    const SIZE: usize = 16 << 20;
    let mut plain = vec![0u8; SIZE];
    Generated::new(SIZE as u64)
        .read_exact(&mut plain)
        .await
        .unwrap();
    let plain = Bytes::from(plain);
    // The same compressed bytes for both decoders.
    let mut raw = GzipEncoder::new(Vec::new());
    raw.write_all(&plain).await.unwrap();
    raw.close().await.unwrap();
    let compressed = Bytes::from(raw.into_inner());

    let mut enc = (Vec::new(), Vec::new());
    let mut dec = (Vec::new(), Vec::new());
    let mb = SIZE as f64 / (1 << 20) as f64;
    for _ in 0..ROUNDS {
        // Encode through the topic half, written in 64 KiB pieces.
        let topic = gzip::topic(sink_topic());
        let start = Instant::now();
        let mut w = topic.new_writer(&Context::background()).unwrap();
        for piece in plain.chunks(64 << 10) {
            w.write_all(piece).await.unwrap();
        }
        w.close().await.unwrap();
        enc.0.push(mb / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut w = GzipEncoder::new(Sink::default());
        for piece in plain.chunks(64 << 10) {
            w.write_all(piece).await.unwrap();
        }
        w.close().await.unwrap();
        enc.1.push(mb / start.elapsed().as_secs_f64());

        // Decode through the receiver half.
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let receiver = gzip::receiver(counting_receiver(total.clone()));
        let mut msg = Message::new(compressed.clone());
        msg.attributes.set("Content-Encoding", "gzip");
        let start = Instant::now();
        receiver.receive(Context::background(), msg).await.unwrap();
        dec.0.push(mb / start.elapsed().as_secs_f64());
        assert_eq!(total.load(std::sync::atomic::Ordering::SeqCst), SIZE as u64);

        let start = Instant::now();
        let mut reader = async_compression::futures::bufread::GzipDecoder::new(BufReader::new(
            futures::io::Cursor::new(compressed.clone()),
        ));
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0;
        loop {
            let read = reader.read(&mut buf).await.unwrap();
            if read == 0 {
                break;
            }
            n += read;
        }
        dec.1.push(mb / start.elapsed().as_secs_f64());
        assert_eq!(n, SIZE);
    }
    let (e0, e1) = (median(enc.0), median(enc.1));
    let (d0, d1) = (median(dec.0), median(dec.1));
    println!("gzip, {} MiB body, median of {ROUNDS} rounds", SIZE >> 20);
    println!(
        "  compress    msgio {e0:>7.1} MiB/s   raw async-compression {e1:>7.1} MiB/s   ratio {:.2}",
        e0 / e1
    );
    println!(
        "  decompress  msgio {d0:>7.1} MiB/s   raw async-compression {d1:>7.1} MiB/s   ratio {:.2}",
        d0 / d1
    );
}

/// base64 decoding of the same 256 MiB (held encoded in memory), streaming with constant
/// memory on both sides: msgio's receiver half against the `base64` crate's `DecoderReader`,
/// each read through one 64 KiB buffer.
async fn base64_vs_raw() {
    use ::base64::Engine as _;
    const SIZE: usize = 256 << 20;
    let mut plain = vec![0u8; SIZE];
    Generated::new(SIZE as u64)
        .read_exact(&mut plain)
        .await
        .unwrap();
    let encoded = Bytes::from(::base64::engine::general_purpose::STANDARD.encode(&plain));
    drop(plain);
    let mb = SIZE as f64 / (1 << 20) as f64;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS.min(5) {
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let receiver =
            base64::receiver(counting_receiver(total.clone())).max_decoded_size(u64::MAX);
        let mut msg = Message::new(encoded.clone());
        msg.attributes.set("Content-Transfer-Encoding", "base64");
        let start = Instant::now();
        receiver.receive(Context::background(), msg).await.unwrap();
        ours.push(mb / start.elapsed().as_secs_f64());
        assert_eq!(total.load(std::sync::atomic::Ordering::SeqCst), SIZE as u64);

        let start = Instant::now();
        let mut reader = ::base64::read::DecoderReader::new(
            &encoded[..],
            &::base64::engine::general_purpose::STANDARD,
        );
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0;
        loop {
            let read = std::io::Read::read(&mut reader, &mut buf).unwrap();
            if read == 0 {
                break;
            }
            n += read;
        }
        raw.push(mb / start.elapsed().as_secs_f64());
        assert_eq!(n, SIZE);
    }
    let (ours, raw) = (median(ours), median(raw));
    println!(
        "base64 decode, {} MiB body, median of {} rounds",
        SIZE >> 20,
        ROUNDS.min(5)
    );
    println!(
        "  decode      msgio {ours:>7.1} MiB/s   raw base64 crate      {raw:>7.1} MiB/s   ratio {:.2}",
        ours / raw
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Memory first, while the process is small.
        memory().await;
        gzip_vs_raw().await;
        base64_vs_raw().await;
    });
}

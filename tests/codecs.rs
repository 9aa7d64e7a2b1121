//! Body codecs: round trips through the in-memory transport, stacking, bodies written by
//! other producers (fixtures from the command-line tools), and bad bodies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::io::AsyncWriteExt;
use msgio::decorators::codec::{Codec, DecodeReceiver};
use msgio::decorators::{base64, gzip, lz4, zstd};
use msgio::{
    Attributes, Context, Error, Message, MessageWriter, Receiver, ReceiverFunc, Server, Topic,
};

const PLAIN: &[u8] = include_bytes!("fixtures/plain.txt");

/// What a receiver saw: its attributes and the whole body.
type Seen = Arc<Mutex<Vec<(Attributes, Bytes)>>>;

fn recorder() -> (Seen, impl Receiver + Clone + 'static) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let receiver = ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let s = s.clone();
        async move {
            let body = msg.body.read_to_bytes(64 << 20).await?;
            s.lock().unwrap().push((msg.attributes, body));
            Ok(())
        }
    });
    (seen, Arc::new(receiver))
}

/// Publishes `body` through `topic` (written in small pieces, with an attribute), serves the
/// queue to `receiver` until one message arrived, and returns it.
async fn through_mem<T, R>(
    make_topic: impl FnOnce(msgio::mem::MemTopic) -> T,
    receiver: R,
    seen: &Seen,
    body: &[u8],
) -> (Attributes, Bytes)
where
    T: Topic,
    R: Receiver + 'static,
{
    let queue = msgio::mem::MemQueue::new(16).unwrap();
    let topic = make_topic(queue.topic());
    let mut writer = topic.new_writer(&Context::background()).unwrap();
    writer.attributes_mut().set("X-Kept", "yes");
    for piece in body.chunks(1000) {
        writer.write_all(piece).await.unwrap();
    }
    writer.close().await.unwrap();

    let server = queue.server(msgio::ServerConfig::new()).unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the message never arrived");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
    seen.lock().unwrap().remove(0)
}

#[tokio::test]
async fn each_codec_round_trips_and_removes_its_attribute() {
    macro_rules! round_trip {
        ($codec:ident, $attr:literal) => {{
            let (seen, inner) = recorder();
            let (attrs, body) =
                through_mem($codec::topic, $codec::receiver(inner), &seen, PLAIN).await;
            assert_eq!(body, PLAIN, "{} changed the body", stringify!($codec));
            assert!(
                !attrs.contains($attr),
                "{} left {:?}",
                stringify!($codec),
                attrs
            );
            assert_eq!(attrs.get("X-Kept"), Some("yes"));
        }};
    }
    round_trip!(base64, "Content-Transfer-Encoding");
    round_trip!(gzip, "Content-Encoding");
    round_trip!(zstd, "Content-Encoding");
    round_trip!(lz4, "Content-Encoding");
}

#[tokio::test]
async fn stacked_codecs_unstack_in_reverse_order() {
    // On the wire: gzip, then base64.
    let (seen, raw) = recorder();
    let (attrs, wire) = through_mem(|t| gzip::topic(base64::topic(t)), raw, &seen, PLAIN).await;
    assert_eq!(attrs.get("Content-Encoding"), Some("gzip"));
    assert_eq!(attrs.get("Content-Transfer-Encoding"), Some("base64"));
    assert!(
        wire.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))
    );

    let (seen, inner) = recorder();
    let receiver = base64::receiver(gzip::receiver(inner));
    let (attrs, body) =
        through_mem(|t| gzip::topic(base64::topic(t)), receiver, &seen, PLAIN).await;
    assert_eq!(body, PLAIN);
    assert!(!attrs.contains("Content-Encoding") && !attrs.contains("Content-Transfer-Encoding"));

    // Two compressions on one attribute list in the order applied: zstd, then gzip.
    let (seen, raw) = recorder();
    let (attrs, _) = through_mem(|t| zstd::topic(gzip::topic(t)), raw, &seen, PLAIN).await;
    assert_eq!(attrs.get("Content-Encoding"), Some("zstd, gzip"));
    let (seen, inner) = recorder();
    let receiver = gzip::receiver(zstd::receiver(inner));
    let (attrs, body) = through_mem(|t| zstd::topic(gzip::topic(t)), receiver, &seen, PLAIN).await;
    assert_eq!(body, PLAIN);
    assert!(!attrs.contains("Content-Encoding"), "{attrs:?}");
}

/// Runs `receiver` on one message with the given attribute and body.
async fn receive_one<R: Receiver>(
    receiver: &R,
    attribute: (&str, &str),
    body: &[u8],
) -> Result<(), Error> {
    let mut msg = Message::new(body.to_vec());
    msg.attributes.set(attribute.0, attribute.1);
    receiver.receive(Context::background(), msg).await
}

#[tokio::test]
async fn bodies_from_other_producers_decode() {
    let fixtures: [(&str, &[u8], &str); 5] = [
        (
            "gzip",
            include_bytes!("fixtures/plain.txt.gz"),
            "Content-Encoding",
        ),
        (
            "gzip",
            include_bytes!("fixtures/twice.txt.gz"),
            "Content-Encoding",
        ),
        (
            "zstd",
            include_bytes!("fixtures/plain.txt.zst"),
            "Content-Encoding",
        ),
        (
            "lz4",
            include_bytes!("fixtures/plain.txt.lz4"),
            "Content-Encoding",
        ),
        (
            "base64",
            include_bytes!("fixtures/plain.txt.b64"),
            "Content-Transfer-Encoding",
        ),
    ];
    for (name, encoded, attr) in fixtures {
        let (seen, inner) = recorder();
        let result = match name {
            "gzip" => receive_one(&gzip::receiver(inner), (attr, name), encoded).await,
            "zstd" => receive_one(&zstd::receiver(inner), (attr, name), encoded).await,
            "lz4" => receive_one(&lz4::receiver(inner), (attr, name), encoded).await,
            _ => receive_one(&base64::receiver(inner), (attr, name), encoded).await,
        };
        result.unwrap_or_else(|e| panic!("{name} fixture: {e}"));
        let body = seen.lock().unwrap()[0].1.clone();
        if encoded.len() == include_bytes!("fixtures/twice.txt.gz").len() {
            assert_eq!(body, [PLAIN, PLAIN].concat(), "both gzip members");
        } else {
            assert_eq!(body, PLAIN, "{name} fixture decoded wrong");
        }
    }
}

#[tokio::test]
async fn undecodable_bodies_are_rejected_naming_the_codec() {
    for (name, result) in [
        (
            "gzip",
            receive_one(
                &gzip::receiver(recorder().1),
                ("Content-Encoding", "gzip"),
                b"not gzip at all",
            )
            .await,
        ),
        (
            "zstd",
            receive_one(
                &zstd::receiver(recorder().1),
                ("Content-Encoding", "zstd"),
                b"not zstd at all",
            )
            .await,
        ),
        (
            "lz4",
            receive_one(
                &lz4::receiver(recorder().1),
                ("Content-Encoding", "lz4"),
                b"not lz4 at all",
            )
            .await,
        ),
        (
            "base64",
            receive_one(
                &base64::receiver(recorder().1),
                ("Content-Transfer-Encoding", "base64"),
                b"no*base64",
            )
            .await,
        ),
    ] {
        let err = result.unwrap_err();
        assert!(err.is_reject(), "{name}: {err:?} is not a reject");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    // A truncated stream fails too.
    let gz = include_bytes!("fixtures/plain.txt.gz");
    let err = receive_one(
        &gzip::receiver(recorder().1),
        ("Content-Encoding", "gzip"),
        &gz[..gz.len() / 2],
    )
    .await
    .unwrap_err();
    assert!(err.is_reject() && err.to_string().contains("gzip"), "{err}");
}

#[tokio::test]
async fn a_receiver_that_hides_the_decode_error_still_rejects() {
    let hides = ReceiverFunc::new(|_: Context, mut msg: Message| async move {
        match msg.body.read_to_bytes(1 << 20).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::other(format!("could not read: {e}"))),
        }
    });
    let err = receive_one(
        &gzip::receiver(hides),
        ("Content-Encoding", "gzip"),
        b"garbage",
    )
    .await
    .unwrap_err();
    assert!(err.is_reject() && err.to_string().contains("gzip"), "{err}");
}

#[tokio::test]
async fn decompression_bombs_stop_at_the_limit() {
    // 8 MiB of zeros compress to a few KiB.
    let mut encoder = gzip::Gzip::new().encoder(Collect::default());
    encoder.write_all(&vec![0u8; 8 << 20]).await.unwrap();
    encoder.close().await.unwrap();
    let bomb = msgio::decorators::gzip::Gzip::inner(&encoder).bytes.clone();
    assert!(bomb.len() < 64 << 10);

    let receiver = gzip::receiver(recorder().1).max_decoded_size(1 << 20);
    let err = receive_one(&receiver, ("Content-Encoding", "gzip"), &bomb)
        .await
        .unwrap_err();
    assert!(err.is_reject(), "{err:?}");
    assert!(err.to_string().contains("limit of 1048576 bytes"), "{err}");

    // Exactly at the limit is fine.
    let (seen, inner) = recorder();
    let receiver = gzip::receiver(inner).max_decoded_size(8 << 20);
    receive_one(&receiver, ("Content-Encoding", "gzip"), &bomb)
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0].1.len(), 8 << 20);
}

#[tokio::test]
async fn bodies_without_the_attribute_pass_untouched() {
    let (seen, inner) = recorder();
    let receiver = gzip::receiver(base64::receiver(inner));
    receive_one(&receiver, ("Content-Encoding", "br"), b"opaque")
        .await
        .unwrap();
    let (attrs, body) = seen.lock().unwrap().remove(0);
    assert_eq!(body, "opaque");
    assert_eq!(attrs.get("Content-Encoding"), Some("br"));
    let _: &DecodeReceiver<_, _> = &receiver;
}

/// A message writer that keeps what is written, to look at encoder output directly.
#[derive(Default)]
struct Collect {
    attributes: Attributes,
    bytes: Vec<u8>,
}

impl futures::io::AsyncWrite for Collect {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl MessageWriter for Collect {
    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Attributes {
        &mut self.attributes
    }
    fn set_delay(&mut self, _: Duration) {}
}

//! The NATS JetStream transport against the real nats-server (`NATS_URL`, default
//! nats://127.0.0.1:4222).

use std::time::Duration;

use msgio::nats::{ConsumerOptions, Nats, NatsServer, NatsTopic};
use msgio::testing::{Capabilities, ServerProcess, Transport, start};
use msgio::{Error, ServerConfig};

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn connect() -> Option<Nats> {
    let url = url();
    match Nats::connect(&url).await {
        Ok(nats) => Some(nats),
        Err(e) => {
            msgio::testing::skip_or_fail("NATS", &url, &e);
            None
        }
    }
}

/// A stream of its own per destination (its subjects `<name>.>`), one durable.
#[derive(Clone)]
struct Dest {
    stream: String,
}

fn options(dest: &Dest) -> ConsumerOptions {
    ConsumerOptions::new(&dest.stream, "kit").ack_wait(Duration::from_secs(5))
}

struct JetStream {
    nats: Nats,
    /// A client of the test's own, to read the consumer's counts.
    raw: async_nats::jetstream::Context,
}

impl JetStream {
    async fn new(nats: Nats, url: &str) -> JetStream {
        let raw = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        JetStream { nats, raw }
    }
}

impl Transport for JetStream {
    type Destination = Dest;
    type Topic = NatsTopic;
    type Server = NatsServer;

    async fn destination(&self) -> Result<Dest, Error> {
        let dest = Dest {
            stream: format!("msgio_test_{}", msgio::testing::unique_suffix()),
        };
        self.nats.ensure_stream(&options(&dest)).await?;
        Ok(dest)
    }

    async fn topic(&self, dest: &Dest) -> Result<NatsTopic, Error> {
        Ok(self.nats.topic(format!("{}.kit", dest.stream)))
    }

    async fn server(&self, dest: &Dest, config: ServerConfig) -> Result<NatsServer, Error> {
        self.nats.server(options(dest), config).await
    }

    async fn unsettled(&self, dest: &Dest) -> Result<Option<u64>, Error> {
        let stream = self
            .raw
            .get_stream(&dest.stream)
            .await
            .map_err(Error::other)?;
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            match stream.get_consumer("kit").await {
                Ok(consumer) => consumer,
                // No server ever made it: what the stream holds waits for one.
                Err(_) => {
                    let info = stream.get_info().await.map_err(Error::other)?;
                    return Ok(Some(info.state.messages));
                }
            };
        let info = consumer.cached_info();
        Ok(Some(info.num_pending + info.num_ack_pending as u64))
    }

    async fn remove(&self, dest: Dest) -> Result<(), Error> {
        self.nats.delete_stream(&dest.stream).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_passes_the_conformance_kit() {
    let Some(nats) = connect().await else { return };
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups()
        // The server's max_payload is 1 MiB by default.
        .max_body(512 << 10);
    msgio::testing::run(JetStream::new(nats, &url()).await, caps)
        .await
        .assert_passed();
}

use msgio::testing::Recorder;
use msgio::{Context, Message, Server, Topic};

const WAIT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

/// A fresh stream (deleted when dropped) and its options.
struct Fresh {
    nats: Nats,
    stream: String,
}

impl Fresh {
    async fn new(nats: &Nats) -> Fresh {
        let stream = format!("msgio_test_{}", msgio::testing::unique_suffix());
        Fresh {
            nats: nats.clone(),
            stream,
        }
    }

    fn options(&self) -> ConsumerOptions {
        ConsumerOptions::new(&self.stream, "d")
    }

    fn topic(&self) -> NatsTopic {
        self.nats.topic(format!("{}.t", self.stream))
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let (nats, stream) = (self.nats.clone(), self.stream.clone());
        // Best effort, on a runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(async { nats.delete_stream(&stream).await }))
        })
        .join();
    }
}

fn seq_message(seq: u64) -> Message {
    let mut msg = Message::new(format!("message {seq}"));
    msg.attributes.set("X-Kit-Seq", seq.to_string());
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_window_drops_a_message_published_again_with_its_key() {
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    let topic = fresh.topic();
    for _ in 0..2 {
        let mut msg = seq_message(1);
        msg.attributes.set("Idempotency-Key", "order-1");
        topic.publish(&Context::background(), msg).await.unwrap();
    }
    // Without a key, each message gets an id of its own.
    topic
        .publish(&Context::background(), seq_message(2))
        .await
        .unwrap();
    topic
        .publish(&Context::background(), seq_message(2))
        .await
        .unwrap();
    let recorder = Recorder::new();
    let server = nats
        .server(fresh.options(), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    recorder.wait_for(3, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop(GRACE).await.unwrap();
    let mut seqs: Vec<u64> = recorder.received().iter().filter_map(|r| r.seq()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_here_has_the_retention_and_duplicate_window_asked_for() {
    use async_nats::jetstream::stream::RetentionPolicy;
    let Some(nats) = connect().await else { return };
    let raw = async_nats::jetstream::new(async_nats::connect(url()).await.unwrap());
    let (default, limits) = (Fresh::new(&nats).await, Fresh::new(&nats).await);
    nats.ensure_stream(&default.options()).await.unwrap();
    nats.ensure_stream(
        &limits
            .options()
            .limits_retention()
            .duplicate_window(Duration::from_secs(7)),
    )
    .await
    .unwrap();
    let config = |name: String| {
        let raw = raw.clone();
        async move {
            raw.get_stream(name)
                .await
                .unwrap()
                .cached_info()
                .config
                .clone()
        }
    };
    let default = config(default.stream.clone()).await;
    assert_eq!(default.retention, RetentionPolicy::WorkQueue);
    assert_eq!(default.duplicate_window, Duration::from_secs(120));
    let limits = config(limits.stream.clone()).await;
    assert_eq!(limits.retention, RetentionPolicy::Limits);
    assert_eq!(limits.duplicate_window, Duration::from_secs(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_while_serving_is_created_again_and_serving_goes_on() {
    let Some(nats) = connect().await else { return };
    let raw = async_nats::jetstream::new(async_nats::connect(url()).await.unwrap());
    let fresh = Fresh::new(&nats).await;
    let topic = fresh.topic();
    let recorder = Recorder::new();
    let server = nats
        .server(fresh.options(), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    topic
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    recorder.wait_for(1, WAIT).await.unwrap();
    // Someone deletes the durable while the server pulls from it.
    raw.get_stream(fresh.stream.clone())
        .await
        .unwrap()
        .delete_consumer("d")
        .await
        .unwrap();
    topic
        .publish(&Context::background(), seq_message(2))
        .await
        .unwrap();
    let got = recorder
        .wait_until("the message published after the deletion", WAIT, |r| {
            r.iter().any(|r| r.seq() == Some(2))
        })
        .await;
    running.stop(GRACE).await.unwrap();
    got.unwrap();
    let info = raw
        .get_stream(fresh.stream.clone())
        .await
        .unwrap()
        .consumer_info("d")
        .await;
    assert!(info.is_ok(), "the consumer was created again: {info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_carry_multi_valued_attributes_and_a_line_break_is_refused_by_key() {
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    let topic = fresh.topic();
    let mut msg = Message::new(vec![0u8, 0xff, 0]);
    msg.attributes.add("X-Tag", "a");
    msg.attributes.add("X-Tag", "b");
    msg.attributes
        .set("Nats-Note", "kept: only the topic's Nats-Msg-Id is dropped");
    topic.publish(&Context::background(), msg).await.unwrap();
    let mut bad = Message::new("x");
    bad.attributes.set("X-Bad", "line\nbreak");
    let err = topic
        .publish(&Context::background(), bad)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAttribute { .. }), "{err:?}");
    assert!(err.to_string().contains("X-Bad"), "{err}");

    let recorder = Recorder::new();
    let server = nats
        .server(fresh.options(), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(1, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    assert_eq!(
        got[0].attributes.get_all("X-Tag").collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(got[0].body.as_ref(), &[0u8, 0xff, 0]);
    assert!(got[0].attributes.get("Nats-Msg-Id").is_none());
    assert_eq!(
        got[0].attributes.get("Nats-Note"),
        Some("kept: only the topic's Nats-Msg-Id is dropped")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_ack_wait_is_kept_alive_and_runs_once() {
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = runs.clone();
    let receiver = msgio::ReceiverFunc::new(move |_: Context, _: Message| {
        let r = r.clone();
        async move {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok(())
        }
    });
    let server = nats
        .server(
            fresh.options().ack_wait(Duration::from_secs(1)),
            ServerConfig::new().concurrency(4),
        )
        .await
        .unwrap();
    let running = start(server, receiver);
    fresh
        .topic()
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    running.stop(GRACE).await.unwrap();
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_options_are_refused_by_name() {
    let Some(nats) = connect().await else { return };
    for (options, field) in [
        (ConsumerOptions::new("", "d"), "stream"),
        (ConsumerOptions::new("a.b", "d"), "stream"),
        (ConsumerOptions::new("s", ""), "durable"),
        (
            ConsumerOptions::new("s", "d").ack_wait(Duration::ZERO),
            "ack_wait",
        ),
        (ConsumerOptions::new("s", "d").max_deliver(0), "max_deliver"),
        (
            ConsumerOptions::new("s", "d").subjects(Vec::<String>::new()),
            "subjects",
        ),
        (
            ConsumerOptions::new("s", "d").dead_letter_subject(""),
            "dead_letter_subject",
        ),
    ] {
        let err = nats.server(options, ServerConfig::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
}

#[tokio::test]
async fn a_refused_connection_does_not_show_the_password() {
    let err = Nats::connect("nats://user:s3cret@127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let err = Nats::connect("nats:user:s3cret@127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

// ---- Chaos: a consumer killed with SIGKILL, and a nats-server restarted mid-stream. ----

/// Where the kill test's child consumer works: the stream, and the subject it reports on.
const CHILD_STREAM: &str = "MSGIO_NATS_CHILD_STREAM";

/// Not a test of its own: the consumer process the kill test starts (and kills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_killed_consumers_messages_come_back_and_none_is_lost"]
async fn child_consumer() {
    let Ok(stream) = std::env::var(CHILD_STREAM) else {
        return;
    };
    let nats = Nats::connect(&url()).await.unwrap();
    let reporter = async_nats::connect(url()).await.unwrap();
    let server = nats
        .server(
            ConsumerOptions::new(&stream, "d").ack_wait(Duration::from_secs(1)),
            ServerConfig::new().concurrency(8),
        )
        .await
        .unwrap();
    let done = format!("done.{stream}");
    let receiver = msgio::ReceiverFunc::new(move |_: Context, msg: Message| {
        let (reporter, done) = (reporter.clone(), done.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seq = msg.attributes.get("X-Kit-Seq").unwrap_or("?").to_owned();
            reporter
                .publish(done, seq.into())
                .await
                .map_err(Error::other)?;
            reporter.flush().await.map_err(Error::other)?;
            Ok(())
        }
    });
    server.serve(receiver).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_messages_come_back_and_none_is_lost() {
    use futures::StreamExt;
    const N: u64 = 300;
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    let options = fresh.options().ack_wait(Duration::from_secs(1));
    nats.ensure_stream(&options).await.unwrap();
    let topic = fresh.topic();
    for seq in 0..N {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    let reports = async_nats::connect(url()).await.unwrap();
    let mut done = reports
        .subscribe(format!("done.{}", fresh.stream))
        .await
        .unwrap();
    reports.flush().await.unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_consumer", "--nocapture"])
        .env(CHILD_STREAM, &fresh.stream)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it mid-stream, holding messages.
    let mut by_child = std::collections::BTreeSet::new();
    while by_child.len() < 50 {
        let report = tokio::time::timeout(WAIT, done.next())
            .await
            .expect("the child reports")
            .unwrap();
        by_child.insert(
            String::from_utf8_lossy(&report.payload)
                .parse::<u64>()
                .unwrap(),
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Reports already on their way still count.
    while let Ok(Some(report)) = tokio::time::timeout(Duration::from_millis(200), done.next()).await
    {
        by_child.insert(
            String::from_utf8_lossy(&report.payload)
                .parse::<u64>()
                .unwrap(),
        );
    }

    let recorder = Recorder::new();
    let server = nats.server(options, ServerConfig::new()).await.unwrap();
    let running = start(server, recorder.clone());
    recorder
        .wait_for_the_rest(&by_child, N as usize, WAIT)
        .await
        .unwrap();
    // What the child held but had already processed is in `by_child` too: what it held
    // comes back after the ack wait all the same.
    recorder
        .wait_until("a message back from the killed consumer", WAIT, |r| {
            r.iter().any(|r| r.attempt > 1)
        })
        .await
        .unwrap();
    running.stop(GRACE).await.unwrap();
}

/// A nats-server with JetStream of the test's own, on a free loopback port, storing in its
/// scratch directory.
fn private_nats() -> Option<ServerProcess> {
    let started = ServerProcess::start("nats-server", |port, dir| {
        let mut args: Vec<std::ffi::OsString> = vec!["-a".into(), "127.0.0.1".into(), "-p".into()];
        args.push(port.to_string().into());
        args.extend(["-js".into(), "-sd".into(), dir.into()]);
        args
    });
    match started {
        Ok(p) => Some(p),
        Err(e) => {
            msgio::testing::skip_or_fail("nats-server (started by the test)", "nats-server", &e);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_passes_the_kits_broker_restart_case() {
    let Some(private) = private_nats() else {
        return;
    };
    let nats = Nats::connect(&format!("nats://127.0.0.1:{}", private.port()))
        .await
        .unwrap();
    let url = format!("nats://127.0.0.1:{}", private.port());
    let caps = Capabilities::new().restart(private.into_restart());
    msgio::testing::run_matching(JetStream::new(nats, &url).await, caps, |name| {
        name == "broker_restart"
    })
    .await
    .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_to_a_subject_with_the_reason() {
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    let dead = Fresh::new(&nats).await;
    nats.ensure_stream(&dead.options()).await.unwrap();
    let failing = Recorder::with(|_, _| Err(Error::other("always fails")));
    let server = nats
        .server(
            fresh
                .options()
                .dead_letter_subject(format!("{}.letters", dead.stream)),
            ServerConfig::new().max_attempts(3),
        )
        .await
        .unwrap();
    let running = start(server, failing.clone());
    let mut poison = seq_message(7);
    poison.attributes.add("X-Tag", "a");
    poison.attributes.add("X-Tag", "b");
    fresh
        .topic()
        .publish(&Context::background(), poison)
        .await
        .unwrap();
    let letters = Recorder::new();
    let reader = nats
        .server(dead.options(), ServerConfig::new())
        .await
        .unwrap();
    let reader_task = start(reader, letters.clone());
    let got = letters.wait_for(1, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    reader_task.stop(GRACE).await.unwrap();
    let letter = &got[0];
    assert_eq!(letter.body, "message 7");
    assert_eq!(
        letter.attributes.get_all("X-Tag").collect::<Vec<_>>(),
        ["a", "b"]
    );
    let reason = letter
        .attributes
        .get(msgio::keys::DEAD_LETTER_REASON)
        .unwrap();
    assert!(reason.contains("attempt 3 of 3"), "{reason}");
    assert_eq!(letter.attributes.get(msgio::keys::ATTEMPTS), Some("3"));
    assert_eq!(failing.count(), 3);
}

/// A client of its own on a plain TCP socket, to publish what no client library would:
/// header blocks that break the protocol.
struct RawPublisher {
    stream: tokio::net::TcpStream,
}

impl RawPublisher {
    async fn connect() -> RawPublisher {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let url = url();
        let addr = url
            .rsplit('@')
            .next()
            .unwrap()
            .trim_start_matches("nats://")
            .to_owned();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let mut info = String::new();
        reader.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let mut stream = reader.into_inner();
        stream
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
            .await
            .unwrap();
        RawPublisher { stream }
    }

    /// Publishes `headers` (the whole block, as bytes) and `payload` on `subject`.
    async fn hpub(&mut self, subject: &str, headers: &[u8], payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut frame = format!(
            "HPUB {subject} {} {}\r\n",
            headers.len(),
            headers.len() + payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(headers);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Waits until the server has read everything sent so far.
    async fn flush(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(b"PING\r\n").await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("PONG") {
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the server closed the raw connection: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            !String::from_utf8_lossy(&seen).contains("-ERR"),
            "{:?}",
            String::from_utf8_lossy(&seen)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_with_unreadable_headers_are_dead_lettered_and_the_rest_flow() {
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    let dead = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    nats.ensure_stream(&dead.options()).await.unwrap();
    let subject = format!("{}.t", fresh.stream);
    let not_utf8: &[u8] = b"NATS/1.0\r\nX-Kit-Seq: 101\r\nX-Bad: \xff\xfe\r\n\r\n";
    let no_colon: &[u8] = b"NATS/1.0\r\nX-Kit-Seq: 102\r\nthis line has no colon\r\n\r\n";
    let mut raw = RawPublisher::connect().await;
    raw.hpub(&subject, b"NATS/1.0\r\nX-Kit-Seq: 1\r\n\r\n", b"good 1")
        .await;
    raw.hpub(&subject, not_utf8, b"bad 1").await;
    raw.hpub(&subject, b"NATS/1.0\r\nX-Kit-Seq: 2\r\n\r\n", b"good 2")
        .await;
    raw.hpub(&subject, no_colon, b"bad 2").await;
    raw.hpub(
        &subject,
        b"NATS/1.0\r\nX-Kit-Seq: 3\r\nx-multi: 1\r\nX-MULTI: 2\r\nX-Multi: 3\r\nx-mULTI: 4\r\n\r\n",
        b"good 3",
    )
    .await;
    raw.flush().await;

    let recorder = Recorder::new();
    let server = nats
        .server(
            fresh
                .options()
                .dead_letter_subject(format!("{}.letters", dead.stream)),
            // Every message in one fetch, with the bad ones among them.
            ServerConfig::new().concurrency(8),
        )
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let letters = Recorder::new();
    let reader = nats
        .server(dead.options(), ServerConfig::new())
        .await
        .unwrap();
    let reading = start(reader, letters.clone());
    let got = recorder
        .wait_until("the three good messages", WAIT, |r| r.len() >= 3)
        .await;
    let dead_letters = letters.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop(GRACE).await.unwrap();
    reading.stop(GRACE).await.unwrap();
    let got = got.unwrap();
    let mut seqs: Vec<u64> = got.iter().filter_map(|r| r.seq()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3], "each good message once, and no bad one");
    let third = got.iter().find(|r| r.seq() == Some(3)).unwrap();
    assert_eq!(
        third.attributes.get_all("X-Multi").collect::<Vec<_>>(),
        ["1", "2", "3", "4"],
        "one header in different cases keeps its wire order"
    );
    let dead_letters = dead_letters.unwrap();
    assert_eq!(dead_letters.len(), 2, "{dead_letters:?}");
    for (letter, block, body) in [
        (
            dead_letters.iter().find(|l| l.body == "bad 1"),
            not_utf8,
            "bad 1",
        ),
        (
            dead_letters.iter().find(|l| l.body == "bad 2"),
            no_colon,
            "bad 2",
        ),
    ] {
        let letter = letter.unwrap_or_else(|| panic!("no dead letter for {body}"));
        let reason = letter
            .attributes
            .get(msgio::keys::DEAD_LETTER_REASON)
            .unwrap();
        assert!(reason.contains("NATS headers"), "{reason}");
        let raw = letter.attributes.get(msgio::keys::RAW_HEADERS).unwrap();
        assert_eq!(raw, base64_of(block), "the raw header block, kept");
        assert!(letter.seq().is_some(), "what could be read is kept");
    }
}

/// Standard base64, for comparing with what the dead letter keeps.
fn base64_of(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() {
                A[((n >> shift) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_header_cannot_carry_are_refused_by_name_not_a_panic() {
    use futures::io::AsyncWriteExt;
    use msgio::MessageWriter;
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    let topic = fresh.topic();
    // Go's canonical-key table has üser-agenT; a tab and DEL are control characters.
    for key in [
        "üser-agenT",
        "x\ttab",
        "x\u{7f}del",
        "with space",
        "Nats-Msg-Id",
    ] {
        let mut writer = topic.new_writer(&Context::background()).unwrap();
        writer.attributes_mut().set(key, "v");
        writer.write_all(b"body").await.unwrap();
        let err = msgio::Error::from(writer.close().await.unwrap_err());
        assert!(
            matches!(&err, Error::InvalidAttribute { key: k, .. } if k == key),
            "{key:?}: {err:?}"
        );
    }
    let mut msg = Message::new("x");
    msg.attributes.set("X-Padded", " value ");
    let err = topic
        .publish(&Context::background(), msg)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("X-Padded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_servers_max_payload_fails_at_publish_saying_so() {
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    // nats-server's max_payload is 1 MiB unless configured otherwise.
    let err = fresh
        .topic()
        .publish(&Context::background(), Message::new(vec![0u8; 2 << 20]))
        .await
        .unwrap_err();
    assert!(!err.is_connection_lost(), "{err:?}");
    assert!(err.to_string().contains("max_payload"), "{err}");
}

/// `err` is a failure to publish again as it is (not a lost connection), and its text
/// says each of `words`.
fn assert_fails_saying(err: &Error, words: &[&str]) {
    assert!(!err.is_connection_lost(), "{err:?}");
    let text = err.to_string();
    for word in words {
        assert!(text.contains(word), "{text}");
    }
}

/// Publishing is a request JetStream answers: without a stream on the subject the error
/// says so; a refusal carries JetStream's reason and stores nothing; and an answer from
/// something other than JetStream is not taken for an acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_succeeds_only_on_jetstreams_acknowledgement() {
    use futures::StreamExt;
    let Some(nats) = connect().await else { return };
    let ctx = Context::background();

    // No stream captures the subject: nobody answers.
    let nowhere = nats.topic(format!(
        "msgio_nostream_{}.t",
        msgio::testing::unique_suffix()
    ));
    let err = nowhere.publish(&ctx, Message::new("x")).await.unwrap_err();
    assert_fails_saying(&err, &["no JetStream stream captures"]);
    // A batch says the same.
    let err = nowhere
        .publish_batch(&ctx, vec![Message::new("x"), Message::new("y")])
        .await
        .unwrap_err();
    assert_fails_saying(&err, &["no JetStream stream captures"]);

    // JetStream refuses: the stream is empty, the header expects sequence 5.
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    let mut msg = Message::new("x");
    msg.attributes.set("Nats-Expected-Last-Sequence", "5");
    let err = fresh.topic().publish(&ctx, msg).await.unwrap_err();
    assert_fails_saying(&err, &["JetStream refused", "wrong last sequence", "10071"]);
    fresh
        .topic()
        .publish(&ctx, Message::new("y"))
        .await
        .unwrap();
    let raw = async_nats::jetstream::new(async_nats::connect(url()).await.unwrap());
    let mut stream = raw.get_stream(&fresh.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    // In a batch too: the message before the refused one is stored, the batch fails.
    let mut refused = Message::new("z");
    refused.attributes.set("Nats-Expected-Last-Sequence", "5");
    let err = fresh
        .topic()
        .publish_batch(&ctx, vec![Message::new("y"), refused])
        .await
        .unwrap_err();
    assert_fails_saying(&err, &["JetStream refused", "wrong last sequence"]);
    assert_eq!(stream.info().await.unwrap().state.messages, 2);

    // A core NATS service answers on the subject: its answer is not an acknowledgement.
    let client = async_nats::connect(url()).await.unwrap();
    let subject = format!("msgio_service_{}", msgio::testing::unique_suffix());
    let mut requests = client.subscribe(subject.clone()).await.unwrap();
    let answering = client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                answering.publish(reply, "hello".into()).await.unwrap();
            }
        }
    });
    // A request of its own, answered, shows the server has the subscription (a flush
    // only shows it was sent): msgio's connection cannot then find no responders.
    let answer = client.request(subject.clone(), "ready?".into()).await;
    assert_eq!(&answer.unwrap().payload[..], b"hello");
    let err = nats
        .topic(subject)
        .publish(&ctx, Message::new("x"))
        .await
        .unwrap_err();
    assert_fails_saying(&err, &["not a JetStream acknowledgement", "hello"]);
}

/// The first `n` messages of `fresh`'s stream, in its order: served by one worker.
async fn in_stream_order(nats: &Nats, fresh: &Fresh, n: usize) -> Vec<msgio::testing::Received> {
    let recorder = Recorder::new();
    let server = nats
        .server(fresh.options(), ServerConfig::new().concurrency(1))
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(n, WAIT).await;
    running.stop(GRACE).await.unwrap();
    got.unwrap()
}

/// Batches sent at once on one topic are each answered on their own: all succeed, and
/// each is stored in its order (interleaved with the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_on_one_topic_are_each_stored_in_order() {
    const BATCHES: u64 = 8;
    const EACH: u64 = 500;
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    let topic = fresh.topic();
    let sends = (0..BATCHES).map(|b| {
        let topic = topic.clone();
        async move {
            let batch = (0..EACH).map(|i| seq_message(b * EACH + i)).collect();
            topic.publish_batch(&Context::background(), batch).await
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    let got = in_stream_order(&nats, &fresh, (BATCHES * EACH) as usize).await;
    let seqs: Vec<u64> = got.iter().filter_map(|r| r.seq()).collect();
    for b in 0..BATCHES {
        let of_batch: Vec<u64> = seqs.iter().copied().filter(|s| s / EACH == b).collect();
        assert_eq!(
            of_batch,
            (b * EACH..(b + 1) * EACH).collect::<Vec<_>>(),
            "batch {b}"
        );
    }
}

/// A batch many times larger than the client's queue of outgoing messages (2,048), and
/// than the 5,000 acknowledgements async-nats' JetStream `publish` lets one await at once
/// (a batch that went through it waited for ever), goes out whole and is stored in its
/// order: message `i` of the batch is the stream's message `i + 1`. (Requests that waited
/// for room in that queue could be overtaken by later ones, about one batch of 20,000 in
/// ten here, before the fix.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_stored_whole_and_in_order() {
    const N: u64 = 20_000;
    let Some(nats) = connect().await else { return };
    let fresh = Fresh::new(&nats).await;
    nats.ensure_stream(&fresh.options()).await.unwrap();
    let batch = (0..N).map(seq_message).collect();
    let published = tokio::time::timeout(
        WAIT,
        fresh.topic().publish_batch(&Context::background(), batch),
    )
    .await;
    published
        .expect("the batch was not published within 30 s")
        .unwrap();
    let got = in_stream_order(&nats, &fresh, N as usize).await;
    // (batch position, stream sequence) of each message, in the stream's order.
    let stored: Vec<(u64, String)> = got
        .iter()
        .map(|r| (r.seq().unwrap(), r.message_id.as_ref().unwrap().to_string()))
        .collect();
    let expected: Vec<(u64, String)> = (0..N).map(|i| (i, (i + 1).to_string())).collect();
    if let Some(at) = stored.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "stored out of order from stream message {}: {:?}",
            at + 1,
            &stored[at..(at + 5).min(stored.len())]
        );
    }
    assert_eq!(stored.len(), expected.len());
}

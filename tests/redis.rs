//! The Redis Streams transport against the real Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379): the conformance kit and what the kit cannot see.

use std::time::Duration;

use msgio::redis::{Redis, RedisServer, RedisTopic, StreamOptions};
use msgio::testing::{Capabilities, Recorder, ServerProcess, Transport, start};
use msgio::{Context, Error, Message, MessageWriter, Server, ServerConfig, Topic, keys};

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn connect() -> Option<Redis> {
    let url = url();
    match Redis::connect(&url).await {
        Ok(redis) => Some(redis),
        Err(e) => {
            msgio::testing::skip_or_fail("Redis", &url, &e);
            None
        }
    }
}

/// A raw connection, to look at and tamper with what the transport wrote.
async fn raw() -> redis::aio::MultiplexedConnection {
    raw_at(&url()).await
}

async fn raw_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[derive(Clone)]
struct Dest {
    stream: String,
}

/// The transport under test, with short timings so that cases finish quickly.
struct Streams {
    redis: Redis,
    url: String,
}

impl Transport for Streams {
    type Destination = Dest;
    type Topic = RedisTopic;
    type Server = RedisServer;

    async fn destination(&self) -> Result<Dest, Error> {
        Ok(Dest {
            stream: format!("msgio-test:{}", msgio::testing::unique_suffix()),
        })
    }

    async fn topic(&self, dest: &Dest) -> Result<RedisTopic, Error> {
        Ok(self.redis.topic(&dest.stream))
    }

    async fn server(&self, dest: &Dest, config: ServerConfig) -> Result<RedisServer, Error> {
        self.redis
            .server(
                StreamOptions::new(&dest.stream, "kit").block(Duration::from_millis(200)),
                config,
            )
            .await
    }

    async fn unsettled(&self, dest: &Dest) -> Result<Option<u64>, Error> {
        let mut raw = raw_at(&self.url).await;
        // Delivered and not acknowledged, plus not delivered yet (the group's lag).
        let (pending, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&dest.stream)
            .arg("kit")
            .query_async(&mut raw)
            .await
            .map_err(Error::other)?;
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&dest.stream)
            .query_async(&mut raw)
            .await
            .map_err(Error::other)?;
        let lag = groups
            .iter()
            .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == b"kit"))
            .and_then(|g| match g.get("lag") {
                Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Some(pending + lag))
    }

    async fn remove(&self, dest: Dest) -> Result<(), Error> {
        let _: () = redis::cmd("DEL")
            .arg(&dest.stream)
            .arg(format!("{}:delayed", dest.stream))
            .query_async(&mut raw_at(&self.url).await)
            .await
            .map_err(Error::other)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_conformance_kit() {
    let Some(redis) = connect().await else { return };
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(Streams { redis, url: url() }, caps)
        .await
        .assert_passed();
}

const WAIT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

fn stream_name() -> String {
    format!("msgio-test:{}", msgio::testing::unique_suffix())
}

/// Deletes the test's keys when dropped, whatever the test's outcome.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.0);
        if let Ok(client) = redis::Client::open(url()) {
            if let Ok(mut conn) = client.get_connection() {
                for key in keys {
                    let _: Result<(), _> = redis::cmd("DEL")
                        .arg(&key)
                        .arg(format!("{key}:delayed"))
                        .query(&mut conn);
                }
            }
        }
    }
}

/// How many entries of `stream` group `g` holds unacknowledged.
async fn pending_count(stream: &str) -> u64 {
    let (count, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    count
}

/// Reads every new entry of `stream` in group `g` as `consumer`, and never acknowledges.
async fn read_without_ack(stream: &str, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg(consumer)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut raw().await)
        .await
        .unwrap();
}

/// Options with short timings, for taking over idle entries quickly.
fn quick(stream: &str, min_idle_ms: u64) -> StreamOptions {
    StreamOptions::new(stream, "g")
        .min_idle(Duration::from_millis(min_idle_ms))
        .claim_interval(Duration::from_millis(min_idle_ms / 4))
        .block(Duration::from_millis(min_idle_ms / 4))
}

fn seq_message(seq: u64) -> Message {
    let mut msg = Message::new(format!("message {seq}"));
    msg.attributes.set("X-Kit-Seq", seq.to_string());
    msg
}

#[tokio::test]
async fn an_entry_holds_the_body_and_one_field_per_attribute_value() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let mut msg = Message::new(vec![0u8, 0xff, b'\n', 0]);
    msg.attributes.add("x-tag", "a");
    msg.attributes.add("X-Tag", "b");
    msg.attributes
        .set("content-type", "application/octet-stream");
    redis
        .topic(&stream)
        .publish(&Context::background(), msg)
        .await
        .unwrap();
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let fields: Vec<&[u8]> = entries[0].1.iter().map(Vec::as_slice).collect();
    assert_eq!(
        fields,
        [
            &b"body"[..],
            &[0, 0xff, b'\n', 0],
            b"attr:X-Tag",
            b"a",
            b"attr:X-Tag",
            b"b",
            b"attr:Content-Type",
            b"application/octet-stream",
        ]
    );
}

#[tokio::test]
async fn max_len_keeps_the_stream_near_its_bound() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let topic = redis.topic(&stream).max_len(10);
    for seq in 0..1000 {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    // MAXLEN ~ trims whole radix-tree nodes (100 entries by default).
    assert!((10..=200).contains(&len), "the stream holds {len} entries");
}

#[tokio::test]
async fn an_error_reply_is_a_publish_error() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    // A string where the stream should be: Redis answers XADD with WRONGTYPE.
    let _: () = redis::cmd("SET")
        .arg(&stream)
        .arg("not a stream")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let err = redis
        .topic(&stream)
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_with_the_reason_and_acked() {
    let Some(redis) = connect().await else { return };
    let (stream, dead) = (stream_name(), stream_name());
    let _cleanup = Cleanup(vec![stream.clone(), dead.clone()]);
    let mut conn = raw().await;
    for fields in [
        vec![&b"data"[..], b"no body here"],
        vec![b"body", b"x", b"attr:X-Bad", &[0xff, 0xfe]],
    ] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for f in fields {
            cmd.arg(f);
        }
        let _: String = cmd.query_async(&mut conn).await.unwrap();
    }
    let called = Recorder::new();
    let server = redis
        .server(
            StreamOptions::new(&stream, "g")
                .dead_letter_stream(&dead)
                .block(Duration::from_millis(100)),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let running = start(server, called.clone());
    let letters = Recorder::new();
    let dlq = redis
        .server(StreamOptions::new(&dead, "g"), ServerConfig::new())
        .await
        .unwrap();
    let dlq_task = start(dlq, letters.clone());
    let got = letters.wait_for(2, WAIT).await.unwrap();
    let reasons: Vec<&str> = got
        .iter()
        .map(|r| r.attributes.get(keys::DEAD_LETTER_REASON).unwrap())
        .collect();
    for expected in ["attribute \"X-Bad\" is not UTF-8", "unknown field \"data\""] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason says {expected}: {reasons:?}"
        );
    }
    let kept: Vec<&[u8]> = got.iter().map(|r| r.body.as_ref()).collect();
    assert!(
        kept.contains(&&b"x"[..]),
        "the saved body is kept: {kept:?}"
    );
    running.stop(GRACE).await.unwrap();
    dlq_task.stop(GRACE).await.unwrap();
    assert_eq!(
        called.count(),
        0,
        "a malformed entry never reaches the receiver"
    );
    let pending = pending_count(&stream).await;
    assert_eq!(pending, 0, "both entries are acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_are_moved_once_however_many_servers_run() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let topic = redis.topic(&stream);
    let recorder = Recorder::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let server = redis
            .server(
                StreamOptions::new(&stream, "g").block(Duration::from_millis(50)),
                ServerConfig::new(),
            )
            .await
            .unwrap();
        servers.push(start(server, recorder.clone()));
    }
    let published = std::time::Instant::now();
    for seq in 0..60u64 {
        let mut writer = topic.new_writer(&Context::background()).unwrap();
        writer.attributes_mut().set("X-Kit-Seq", seq.to_string());
        writer.set_delay(Duration::from_millis(300 + 10 * (seq % 10)));
        futures::io::AsyncWriteExt::close(&mut writer)
            .await
            .unwrap();
    }
    recorder.wait_for(60, WAIT).await.unwrap();
    assert!(published.elapsed() >= Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for running in servers {
        running.stop(GRACE).await.unwrap();
    }
    let got = recorder.received();
    let mut seqs: Vec<u64> = got.iter().filter_map(|r| r.seq()).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..60).collect::<Vec<_>>(),
        "each delayed message exactly once"
    );
    let waiting: usize = redis::cmd("ZCARD")
        .arg(format!("{stream}:delayed"))
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entries_of_a_vanished_consumer_are_taken_over_with_their_delivery_count() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let topic = redis.topic(&stream);
    // The group exists before publishing, as a server made it.
    let first = redis
        .server(StreamOptions::new(&stream, "g"), ServerConfig::new())
        .await
        .unwrap();
    drop(first);
    for seq in 0..5 {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    // A consumer reads them and vanishes without acknowledging.
    read_without_ack(&stream, "vanished").await;
    let recorder = Recorder::new();
    let server = redis
        .server(quick(&stream, 200), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(5, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    assert!(
        got.iter().all(|r| r.attempt == 2),
        "second deliveries: {:?}",
        got.iter().map(|r| r.attempt).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leaves_the_group_on_shutdown_only_when_it_holds_nothing() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let consumers = || async {
        let info: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("g")
            .query_async(&mut raw().await)
            .await
            .unwrap();
        format!("{info:?}")
    };
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").consumer("worker-1"),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let recorder = Recorder::new();
    let running = start(server, recorder.clone());
    redis
        .topic(&stream)
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    recorder.wait_for(1, WAIT).await.unwrap();
    assert!(consumers().await.contains("worker-1"));
    running.stop(GRACE).await.unwrap();
    assert!(!consumers().await.contains("worker-1"), "left the group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_takes_back_what_its_name_held_at_once() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    drop(
        redis
            .server(StreamOptions::new(&stream, "g"), ServerConfig::new())
            .await
            .unwrap(),
    );
    redis
        .topic(&stream)
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    // worker-2 read it, then its process died.
    read_without_ack(&stream, "worker-2").await;
    // Restarted under the same name, with the default min_idle of 30 s.
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").consumer("worker-2"),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let recorder = Recorder::new();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got[0].attempt, 2);
    running.stop(GRACE).await.unwrap();
}

#[tokio::test]
async fn bad_options_are_refused_by_name() {
    let Some(redis) = connect().await else { return };
    for (options, field) in [
        (StreamOptions::new("", "g"), "stream"),
        (StreamOptions::new("s", ""), "group"),
        (StreamOptions::new("s", "g").block(Duration::ZERO), "block"),
        (
            StreamOptions::new("s", "g").min_idle(Duration::ZERO),
            "min_idle",
        ),
        (
            StreamOptions::new("s", "g").dead_letter_stream("s"),
            "dead_letter_stream",
        ),
    ] {
        let err = redis
            .server(options, ServerConfig::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
}

#[tokio::test]
async fn a_bad_url_is_refused_without_showing_the_password() {
    let err = Redis::connect("redis://user:s3cret@127.0.0.1:1/0")
        .await
        .unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
    let err = Redis::connect("nonsense://:s3cret@x").await.unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let err = Redis::connect("redis:user:s3cret@x").await.unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

// ---- Chaos: a consumer killed with SIGKILL, and a Redis restarted mid-stream. ----

/// Where the kill test's child consumer records what it processed before acking.
const CHILD_STREAM: &str = "MSGIO_REDIS_CHILD_STREAM";

/// Not a test of its own: the consumer process the kill test starts (and kills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_killed_consumers_messages_are_reclaimed_and_none_is_lost"]
async fn child_consumer() {
    let Ok(stream) = std::env::var(CHILD_STREAM) else {
        return;
    };
    let redis = Redis::connect(&url()).await.unwrap();
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").consumer("child"),
            ServerConfig::new().concurrency(8),
        )
        .await
        .unwrap();
    let done = format!("{stream}:done");
    let conn = raw().await;
    let receiver = msgio::ReceiverFunc::new(move |_: Context, msg: Message| {
        let (mut conn, done) = (conn.clone(), done.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seq = msg.attributes.get("X-Kit-Seq").unwrap_or("?").to_owned();
            let _: i64 = redis::cmd("SADD")
                .arg(&done)
                .arg(seq)
                .query_async(&mut conn)
                .await
                .map_err(Error::other)?;
            Ok(())
        }
    });
    server.serve(receiver).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_messages_are_reclaimed_and_none_is_lost() {
    const N: u64 = 300;
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let done = format!("{stream}:done");
    let _cleanup = Cleanup(vec![stream.clone(), done.clone()]);
    let topic = redis.topic(&stream);
    for seq in 0..N {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_consumer", "--nocapture"])
        .env(CHILD_STREAM, &stream)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = raw().await;
    // Kill it while it holds messages: some processed, some pending.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let processed: u64 = redis::cmd("SCARD")
            .arg(&done)
            .query_async(&mut conn)
            .await
            .unwrap();
        if processed >= 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child processed {processed}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let pending = pending_count(&stream).await;
    assert!(pending > 0, "the child held nothing when killed");

    let recorder = Recorder::new();
    let server = redis
        .server(quick(&stream, 500), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let by_child: Vec<u64> = redis::cmd("SMEMBERS")
        .arg(&done)
        .query_async(&mut conn)
        .await
        .unwrap();
    let by_child: std::collections::BTreeSet<u64> = by_child.into_iter().collect();
    recorder
        .wait_for_the_rest(&by_child, N as usize, WAIT)
        .await
        .unwrap();
    // What the child held but had already processed is in `by_child` too: wait until the
    // group holds nothing, which only taking over the child's entries achieves.
    let deadline = std::time::Instant::now() + WAIT;
    while pending_count(&stream).await > 0 {
        assert!(std::time::Instant::now() < deadline, "entries stay pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop(GRACE).await.unwrap();
    let reclaimed = recorder.received().iter().filter(|r| r.attempt > 1).count();
    assert!(
        reclaimed > 0,
        "nothing was taken over from the killed consumer"
    );
    let pending = pending_count(&stream).await;
    assert_eq!(pending, 0, "everything is acknowledged");
}

/// A redis-server of the test's own, on a free loopback port, persisting every write.
fn private_redis() -> Option<ServerProcess> {
    let started = ServerProcess::start("redis-server", |port, dir| {
        let mut args: Vec<std::ffi::OsString> = ["--bind", "127.0.0.1", "--port"]
            .iter()
            .map(Into::into)
            .collect();
        args.push(port.to_string().into());
        for arg in [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--dir",
        ] {
            args.push(arg.into());
        }
        args.push(dir.into());
        args
    });
    match started {
        Ok(p) => Some(p),
        Err(e) => {
            msgio::testing::skip_or_fail("redis-server (started by the test)", "redis-server", &e);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_kits_broker_restart_case() {
    let Some(private) = private_redis() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", private.port());
    let redis = Redis::connect(&url).await.unwrap();
    let caps = Capabilities::new().restart(private.into_restart());
    msgio::testing::run_matching(Streams { redis, url }, caps, |name| {
        name == "broker_restart"
    })
    .await
    .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_takes_streaming_bodies_and_in_memory_bodies_alike() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let topic = redis.topic(&stream);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut streaming = Message::new(msgio::Body::from_reader(futures::io::Cursor::new(
        big.clone(),
    )));
    streaming.attributes.set("X-Kit-Seq", "1");
    topic
        .publish(&Context::background(), streaming)
        .await
        .unwrap();
    topic
        .publish(&Context::background(), seq_message(2))
        .await
        .unwrap();
    let recorder = Recorder::new();
    let server = redis
        .server(StreamOptions::new(&stream, "g"), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(2, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    let first = got.iter().find(|r| r.seq() == Some(1)).unwrap();
    assert_eq!(first.body.as_ref(), big.as_slice());
    let second = got.iter().find(|r| r.seq() == Some(2)).unwrap();
    assert_eq!(second.body, "message 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_is_waited_out_while_other_messages_flow() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let topic = redis.topic(&stream);
    let recorder = Recorder::with(|r, ctx| match (r.seq(), ctx.attempt()) {
        (Some(1), 1) => Err(Error::retry_after(Duration::from_millis(400), "later")),
        _ => Ok(()),
    });
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").block(Duration::from_millis(50)),
            ServerConfig::new().concurrency(1),
        )
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let started = std::time::Instant::now();
    for seq in 1..=3 {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    // With one slot, 2 and 3 pass while 1 waits out its delay.
    let got = recorder.wait_for(4, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    let order: Vec<(u64, u32)> = got.iter().map(|r| (r.seq().unwrap(), r.attempt)).collect();
    assert_eq!(order, [(1, 1), (2, 1), (3, 1), (1, 2)]);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(pending_count(&stream).await, 0);
}

/// A Redis user that may not run CLIENT (a common ACL restriction) still consumes: reads
/// just wait out their block instead of being woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_the_client_command_still_consumes() {
    let Some(_) = connect().await else { return };
    let user = format!("msgio-test-{}", msgio::testing::unique_suffix());
    let password = msgio::testing::unique_suffix();
    let mut admin = raw().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-client")
        .query_async(&mut admin)
        .await
        .unwrap();
    struct DropUser(String);
    impl Drop for DropUser {
        fn drop(&mut self) {
            if let Ok(mut conn) = redis::Client::open(url()).and_then(|c| c.get_connection()) {
                let _: Result<(), _> = redis::cmd("ACL")
                    .arg("DELUSER")
                    .arg(&self.0)
                    .query(&mut conn);
            }
        }
    }
    let _drop_user = DropUser(user.clone());
    let base = url();
    let restricted_url = base.replacen("redis://", &format!("redis://{user}:{password}@"), 1);
    let redis = Redis::connect(&restricted_url).await.unwrap();
    assert!(!format!("{redis:?}").contains(&password), "{redis:?}");
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let recorder = Recorder::with(|r, ctx| match (r.seq(), ctx.attempt()) {
        (Some(1), 1) => Err(Error::other("once")),
        _ => Ok(()),
    });
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").block(Duration::from_millis(100)),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    for seq in 1..=2 {
        redis
            .topic(&stream)
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    let got = recorder.wait_for(3, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    assert!(got.iter().any(|r| r.seq() == Some(1) && r.attempt == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outlasting_min_idle_is_not_handed_its_message_twice() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = runs.clone();
    let receiver = msgio::ReceiverFunc::new(move |_: Context, _: Message| {
        let r = r.clone();
        async move {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok(())
        }
    });
    let server = redis
        .server(quick(&stream, 200), ServerConfig::new().concurrency(4))
        .await
        .unwrap();
    let running = start(server, receiver);
    redis
        .topic(&stream)
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    // Bounded wait for the one run to finish and be acknowledged.
    let deadline = std::time::Instant::now() + WAIT;
    while runs.load(std::sync::atomic::Ordering::SeqCst) == 0 || pending_count(&stream).await > 0 {
        assert!(std::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop(GRACE).await.unwrap();
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_never_run_a_receiver_slower_than_min_idle_twice() {
    // Fewer messages than either server has room for: the other always has slots free
    // to take over what looks idle.
    const MESSAGES: u64 = 2;
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let slow = || {
        let runs = runs.clone();
        msgio::ReceiverFunc::new(move |_: Context, msg: Message| {
            let runs = runs.clone();
            async move {
                runs.lock()
                    .unwrap()
                    .push(msg.attributes.get("X-Kit-Seq").unwrap_or("?").to_owned());
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            }
        })
    };
    let mut running = Vec::new();
    for _ in 0..2 {
        let server = redis
            .server(quick(&stream, 1000), ServerConfig::new().concurrency(2))
            .await
            .unwrap();
        running.push(start(server, slow()));
    }
    for seq in 0..MESSAGES {
        redis
            .topic(&stream)
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let done = runs.lock().unwrap().len() as u64 >= MESSAGES;
        if done && pending_count(&stream).await == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never all acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in running {
        r.stop(GRACE).await.unwrap();
    }
    let mut seen = runs.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["0", "1"], "each message ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_server_hands_back_at_shutdown_is_taken_over_at_once() {
    const MESSAGES: u64 = 20;
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    for seq in 0..MESSAGES {
        redis
            .topic(&stream)
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    // The first server holds every message (one running, the rest fetched ahead), with the
    // default min_idle of 30 s.
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let first = redis
        .server(
            StreamOptions::new(&stream, "g"),
            ServerConfig::new()
                .concurrency(1)
                .prefetch(MESSAGES as usize),
        )
        .await
        .unwrap();
    let first_done = Recorder::new();
    let fd = first_done.clone();
    let running_first = start(
        first,
        msgio::ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (started_tx, g, fd) = (started_tx.clone(), g.clone(), fd.clone());
            async move {
                let _ = started_tx.send(());
                g.notified().await;
                msgio::Receiver::receive(&fd, ctx, msg).await
            }
        }),
    );
    started_rx.recv().await.unwrap();
    // Held: the first server took them all from the stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Recorder::new();
    let running_second = start(
        redis
            .server(StreamOptions::new(&stream, "g"), ServerConfig::new())
            .await
            .unwrap(),
        second.clone(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Shutdown begins while the first message still runs, so the server stops taking more;
    // only then is the first receiver let go (released before, the server could start a
    // second message that waits on the gate for ever).
    let shutdown = tokio::spawn(async move { running_first.stop(GRACE).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_one();
    shutdown.await.unwrap().unwrap();
    let by_first: std::collections::BTreeSet<u64> = first_done
        .received()
        .iter()
        .filter_map(|r| r.seq())
        .collect();
    // Well before min_idle (30 s): parked for the running server, not left idle.
    second
        .wait_for_the_rest(&by_first, MESSAGES as usize, Duration::from_secs(10))
        .await
        .unwrap();
    running_second.stop(GRACE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_still_holding_entries_stays_in_the_group_and_nothing_is_lost() {
    let Some(redis) = connect().await else { return };
    let stream = stream_name();
    let _cleanup = Cleanup(vec![stream.clone()]);
    let topic = redis.topic(&stream);
    // Message 2 is read by a consumer that then vanished.
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").consumer("worker-1"),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    topic
        .publish(&Context::background(), seq_message(2))
        .await
        .unwrap();
    read_without_ack(&stream, "ghost").await;
    let recorder = Recorder::new();
    let running = start(server, recorder.clone());
    topic
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    // Served: the server has looked through what its name held when it started.
    recorder.wait_for(1, WAIT).await.unwrap();
    // Message 2 moves to worker-1 behind the server's back (as a reply a dropped
    // connection never brought would leave it): pending under its name, held by nothing
    // in it, and not idle.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg("g")
        .arg("worker-1")
        .arg(0)
        .arg(
            redis::cmd("XPENDING")
                .arg(&stream)
                .arg("g")
                .arg("-")
                .arg("+")
                .arg(1)
                .arg("ghost")
                .query_async::<Vec<(String, String, u64, u64)>>(&mut raw().await)
                .await
                .unwrap()[0]
                .0
                .clone(),
        )
        .arg("JUSTID")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    running.stop(GRACE).await.unwrap();
    // Deleting the consumer would have deleted the entry's pending record with it: lost.
    assert_eq!(
        pending_count(&stream).await,
        1,
        "the held entry is still pending"
    );
    // And another consumer takes it over once it is idle.
    let second = Recorder::new();
    let running = start(
        redis
            .server(quick(&stream, 200), ServerConfig::new())
            .await
            .unwrap(),
        second.clone(),
    );
    let got = second.wait_for(1, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    assert_eq!(got[0].seq(), Some(2));
}

//! The RabbitMQ transport against the real broker (`AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f). The broker restart test is in
//! `tests/amqp_restart.rs`: it stops the shared broker, so it runs alone.

use std::time::{Duration, Instant};

use msgio::amqp::{Amqp, AmqpTopic, ExchangeKind, QueueOptions};
use msgio::testing::{Capabilities, Recorder, start};

#[path = "support/amqp.rs"]
mod support;
use msgio::{Context, Error, Message, Server, ServerConfig, Topic};
use support::{Rabbit, connect, queue_name, url};

/// A raw lapin connection, to look at what the broker holds.
struct Raw {
    _connection: lapin::Connection,
    channel: lapin::Channel,
}

async fn raw() -> Raw {
    let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    Raw {
        _connection: connection,
        channel,
    }
}

impl Raw {
    /// The next message on `queue`, unacknowledged (it goes back when the channel closes).
    async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_passes_the_conformance_kit() {
    let Some(amqp) = connect().await else { return };
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(Rabbit { amqp }, caps)
        .await
        .assert_passed();
}

const WAIT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

/// A fresh queue (deleted, with its wait queues, when dropped).
struct Fresh {
    amqp: Amqp,
    queue: String,
}

impl Fresh {
    async fn new(amqp: &Amqp) -> Fresh {
        Fresh {
            amqp: amqp.clone(),
            queue: queue_name(),
        }
    }

    fn options(&self) -> QueueOptions {
        QueueOptions::new(&self.queue)
    }

    fn topic(&self) -> AmqpTopic {
        self.amqp.queue_topic(&self.queue).unwrap()
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let (amqp, queue) = (self.amqp.clone(), self.queue.clone());
        // Best effort, on a runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| {
                    rt.block_on(async {
                        let _ = amqp.delete_wait_queues("", &queue).await;
                        amqp.delete_queue(&queue).await
                    })
                })
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
async fn attributes_are_headers_and_basic_properties() {
    use lapin::types::AMQPValue;
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    amqp.declare_queue(&fresh.options()).await.unwrap();
    let mut attributes = msgio::Attributes::new();
    attributes.set("Content-Type", "application/octet-stream");
    attributes.set("Content-Encoding", "identity");
    attributes.set("Message-Id", "m-1");
    attributes.set("Timestamp", "1700000000");
    attributes.add("X-Tag", "a");
    attributes.add("X-Tag", "b");
    attributes.set("X-One", "1");
    let topic = fresh.topic();
    for _ in 0..2 {
        let mut msg = Message::new(vec![0u8, 0xff, 0]);
        msg.attributes = attributes.clone();
        topic.publish(&Context::background(), msg).await.unwrap();
    }

    // What the broker holds: properties, persistence, an array header.
    let raw = raw().await;
    let got = raw.get(&fresh.queue).await.expect("a message on the queue");
    let props = &got.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(
        props.content_encoding().as_ref().map(|s| s.as_str()),
        Some("identity")
    );
    assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
    assert_eq!(*props.timestamp(), Some(1_700_000_000));
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    let headers = props.headers().as_ref().unwrap().inner();
    match headers.get("X-Tag") {
        Some(AMQPValue::FieldArray(values)) => assert_eq!(values.as_slice().len(), 2),
        other => panic!("X-Tag should be an array, is {other:?}"),
    }
    assert!(matches!(
        headers.get("X-One"),
        Some(AMQPValue::LongString(_))
    ));
    assert!(
        !headers.contains_key("Content-Type"),
        "a property, not a header"
    );
    drop(raw);

    // What a server hands its receiver: the same attributes, and the id.
    let recorder = Recorder::new();
    let server = amqp
        .server(fresh.options(), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(2, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    for got in got {
        assert_eq!(got.body.as_ref(), &[0u8, 0xff, 0]);
        assert_eq!(
            got.attributes.get_all("X-Tag").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(got.attributes.get("Timestamp"), Some("1700000000"));
        assert_eq!(
            got.attributes.get("Content-Type"),
            Some("application/octet-stream")
        );
        assert_eq!(
            got.message_id.map(|m| m.to_string()).as_deref(),
            Some("m-1")
        );
        assert!(got.attributes.get("x-msgio-attempts").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_queue_takes_is_an_error_unless_the_topic_is_not_mandatory() {
    let Some(amqp) = connect().await else { return };
    let exchange = format!("msgio_test_x_{}", msgio::testing::unique_suffix());
    amqp.declare_exchange(&exchange, ExchangeKind::Direct)
        .await
        .unwrap();
    let topic = amqp.topic(&exchange, "nobody").unwrap();
    // Once a queue is bound with that key, the same topic delivers there.
    let fresh = Fresh::new(&amqp).await;
    amqp.declare_queue(&fresh.options()).await.unwrap();
    amqp.bind(&fresh.queue, &exchange, "somebody")
        .await
        .unwrap();
    amqp.topic(&exchange, "somebody")
        .unwrap()
        .publish(&Context::background(), Message::new("routed"))
        .await
        .unwrap();
    let err = amqp
        .bind(&fresh.queue, &format!("{exchange}_missing"), "k")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("_missing"), "{err}");
    let err = topic
        .publish(&Context::background(), Message::new("lost?"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&exchange), "{err}");
    assert!(err.to_string().contains("nobody"), "{err}");
    topic
        .mandatory(false)
        .publish(&Context::background(), Message::new("dropped by choice"))
        .await
        .unwrap();
    amqp.delete_exchange(&exchange).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_is_an_error_naming_it_and_other_topics_go_on() {
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    amqp.declare_queue(&fresh.options()).await.unwrap();
    let missing = format!("msgio_test_missing_{}", msgio::testing::unique_suffix());
    let good = fresh.topic();
    let bad = amqp.topic(&missing, "k").unwrap();
    // Publishing on both at once: the bad one fails alone.
    let ctx = Context::background();
    let (bad_result, good_results) = tokio::join!(
        bad.publish(&ctx, Message::new("nowhere")),
        futures::future::join_all((0..20).map(|seq| good.publish(&ctx, seq_message(seq)))),
    );
    let err = bad_result.unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(!err.is_connection_lost(), "{err:?}");
    for result in good_results {
        result.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_nack_is_an_error_and_the_topic_goes_on() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    // A queue that refuses (nacks) what does not fit.
    let raw = raw().await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    raw.channel
        .queue_declare(
            fresh.queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
    let topic = fresh.topic();
    topic
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    let err = topic
        .publish(&Context::background(), seq_message(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nack"), "{err}");
    // The channel is still good: once there is room, publishing works.
    raw.get(&fresh.queue)
        .await
        .unwrap()
        .delivery
        .acker
        .ack(Default::default())
        .await
        .unwrap();
    topic
        .publish(&Context::background(), seq_message(3))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_and_spent_attempts_go_to_the_queues_dead_letter_exchange() {
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    let dead = Fresh::new(&amqp).await;
    amqp.declare_queue(&dead.options()).await.unwrap();
    let recorder = Recorder::with(|r, _| match r.seq() {
        Some(1) => Err(Error::reject("not for us")),
        _ => Err(Error::other("always fails")),
    });
    let server = amqp
        .server(
            fresh.options().dead_letter_to("", &dead.queue),
            ServerConfig::new().max_attempts(2),
        )
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let topic = fresh.topic();
    for seq in [1, 2] {
        let mut msg = seq_message(seq);
        msg.attributes.add("X-Tag", "a");
        msg.attributes.add("X-Tag", "b");
        topic.publish(&Context::background(), msg).await.unwrap();
    }
    let letters = Recorder::new();
    let reader = start(
        amqp.server(dead.options(), ServerConfig::new())
            .await
            .unwrap(),
        letters.clone(),
    );
    let got = letters.wait_for(2, WAIT).await.unwrap();
    running.stop(GRACE).await.unwrap();
    reader.stop(GRACE).await.unwrap();
    let mut seqs: Vec<u64> = got.iter().filter_map(|r| r.seq()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2]);
    for letter in &got {
        assert_eq!(
            letter.attributes.get_all("X-Tag").collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
    // Message 1 once (rejected), message 2 twice (attempts spent).
    assert_eq!(recorder.count(), 3);
}

/// Gives a message back to `queue` once, unacknowledged, as a consumer that died would.
async fn deliver_and_drop(queue: &str) {
    let raw = raw().await;
    raw.get(queue).await.expect("a message to take");
    raw.channel.close(200, "dropped".into()).await.unwrap();
}

/// Delivers a message twice to consumers that went away without settling it, then serves
/// it failing twice and succeeding on the next attempt; `first` is the attempt number the
/// server first sees.
async fn attempts_are_counted(quorum: bool, first: u32) {
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    let options = if quorum {
        fresh.options().quorum()
    } else {
        fresh.options()
    };
    amqp.declare_queue(&options).await.unwrap();
    let topic = fresh.topic();
    topic
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    deliver_and_drop(&fresh.queue).await;
    deliver_and_drop(&fresh.queue).await;
    let recorder = Recorder::with(move |r, _| {
        if r.attempt < first + 2 {
            Err(Error::other("not yet"))
        } else {
            Ok(())
        }
    });
    let server = amqp
        .server(options, ServerConfig::new().max_attempts(10))
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    recorder
        .wait_until("the last attempt", WAIT, |r| {
            r.iter().any(|r| r.attempt == first + 2)
        })
        .await
        .unwrap();
    running.stop(GRACE).await.unwrap();
    let attempts: Vec<u32> = recorder.received().iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [first, first + 1, first + 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_counted_on_a_classic_queue_from_the_redelivered_flag_and_a_header() {
    // A classic queue only flags a redelivery: two count as one.
    attempts_are_counted(false, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_counted_on_a_quorum_queue_from_x_delivery_count_and_a_header() {
    // A quorum queue counts both redeliveries.
    attempts_are_counted(true, 3).await;
}

/// A broker policy on one queue, set with `rabbitmqctl` (on this machine's broker) and
/// cleared when dropped: a queue's limits cannot be declared here, since the server declares
/// the queue with its own arguments.
struct Policy(String);

impl Policy {
    fn set(queue: &str, definition: &str) -> Policy {
        let name = format!("msgio-test-{queue}");
        let pattern = format!("^{queue}$");
        let status = std::process::Command::new("rabbitmqctl")
            .args(["set_policy", &name, &pattern, definition])
            .args(["--apply-to", "queues", "--priority", "10"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("rabbitmqctl, to set a queue policy");
        assert!(status.success(), "rabbitmqctl set_policy failed: {status}");
        Policy(name)
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["clear_policy", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// Serves `fresh`'s queue with `receiver`, publishes message 1 and, once the receiver saw
/// it, message 2; then calls `then` and waits until three deliveries were seen (or
/// [`WAIT`] passed). Returns the running server.
async fn serve_two_messages<T>(
    amqp: &Amqp,
    fresh: &Fresh,
    config: ServerConfig,
    receiver: impl msgio::Receiver + 'static,
    seen: &std::sync::Mutex<Vec<T>>,
    then: impl FnOnce(),
) -> msgio::testing::Running<msgio::amqp::AmqpServer> {
    let server = amqp.server(fresh.options(), config).await.unwrap();
    let running = start(server, receiver);
    let topic = fresh.topic();
    let deadline = Instant::now() + WAIT;
    let seen_at_least = |n: usize| async move {
        while seen.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    for seq in [1, 2] {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
        if seq == 1 {
            seen_at_least(1).await;
        }
    }
    then();
    seen_at_least(3).await;
    running
}

/// A retry the queue refuses to take back (it is full and rejects publishes) is given back
/// to the queue after a pause instead of staying unacknowledged: with one delivery at a
/// time, the next message would otherwise never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_the_queue_refuses_is_given_back_and_the_consumer_goes_on() {
    use std::sync::{Arc, Mutex};
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    let _policy = Policy::set(
        &fresh.queue,
        r#"{"max-length":1,"overflow":"reject-publish"}"#,
    );
    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let second_queued = Arc::new(tokio::sync::Notify::new());
    let receiver = msgio::ReceiverFunc::new({
        let (seen, second_queued) = (seen.clone(), second_queued.clone());
        move |ctx: Context, msg: Message| {
            let (seen, second_queued) = (seen.clone(), second_queued.clone());
            async move {
                let seq: u64 = msg.attributes.get("X-Kit-Seq").unwrap().parse().unwrap();
                seen.lock().unwrap().push((seq, ctx.attempt()));
                if seq == 1 && ctx.attempt() == 1 {
                    // Fail once the queue is full again, so that the retry is refused.
                    second_queued.notified().await;
                    return Err(Error::other("once"));
                }
                Ok(())
            }
        }
    });
    let config = ServerConfig::new().concurrency(1).prefetch(0);
    let running = serve_two_messages(&amqp, &fresh, config, receiver, &seen, || {
        second_queued.notify_one()
    })
    .await;
    running.stop(GRACE).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|&(seq, _)| seq).collect::<Vec<_>>(),
        [1, 1, 2],
        "deliveries (message, attempt): {seen:?}"
    );
    assert!(seen[1].1 >= 2, "the retry's attempt: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_is_waited_out_in_a_wait_queue_while_other_messages_flow() {
    use std::sync::{Arc, Mutex};
    const DELAY: Duration = Duration::from_millis(700);
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    let seen: Arc<Mutex<Vec<(u64, u32, Instant)>>> = Arc::default();
    let s = seen.clone();
    let receiver = msgio::ReceiverFunc::new(move |ctx: Context, msg: Message| {
        let s = s.clone();
        async move {
            let seq: u64 = msg.attributes.get("X-Kit-Seq").unwrap().parse().unwrap();
            s.lock().unwrap().push((seq, ctx.attempt(), Instant::now()));
            if seq == 1 && ctx.attempt() == 1 {
                return Err(Error::retry_after(DELAY, "later"));
            }
            Ok(())
        }
    });
    let config = ServerConfig::new();
    let running = serve_two_messages(&amqp, &fresh, config, receiver, &seen, || {}).await;
    running.stop(GRACE).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let order: Vec<(u64, u32)> = seen.iter().map(|&(s, a, _)| (s, a)).collect();
    assert_eq!(order, [(1, 1), (2, 1), (1, 2)]);
    assert!(
        seen[2].2 - seen[0].2 >= DELAY,
        "the retry came after {:?}",
        seen[2].2 - seen[0].2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_consuming_goes_on() {
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    let recorder = Recorder::new();
    let server = amqp
        .server(fresh.options(), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let topic = fresh.topic();
    topic
        .publish(&Context::background(), seq_message(1))
        .await
        .unwrap();
    recorder.wait_for(1, WAIT).await.unwrap();
    // The broker cancels the consumer of a deleted queue.
    amqp.delete_queue(&fresh.queue).await.unwrap();
    // Publishing fails (mandatory) until the server declared the queue again.
    let deadline = std::time::Instant::now() + WAIT;
    while topic
        .publish(&Context::background(), seq_message(2))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recorder
        .wait_until("message 2 after the queue came back", WAIT, |r| {
            r.iter().any(|r| r.seq() == Some(2))
        })
        .await
        .unwrap();
    running.stop(GRACE).await.unwrap();
}

#[tokio::test]
async fn bad_options_are_refused_by_name() {
    let Some(amqp) = connect().await else { return };
    let long = "q".repeat(300);
    for (options, config, field) in [
        (QueueOptions::new(""), ServerConfig::new(), "queue"),
        (QueueOptions::new(&long), ServerConfig::new(), "queue"),
        (
            QueueOptions::new("q").quorum().durable(false),
            ServerConfig::new(),
            "durable",
        ),
        (
            QueueOptions::new("q").bind("", "k"),
            ServerConfig::new(),
            "bind",
        ),
        (
            QueueOptions::new("q").dead_letter_exchange(&long),
            ServerConfig::new(),
            "dead_letter_exchange",
        ),
        (
            QueueOptions::new("q"),
            ServerConfig::new().concurrency(70_000),
            "concurrency",
        ),
    ] {
        let err = amqp.server(options, config).await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }
    let err = amqp.topic(&long, "k").unwrap_err();
    assert!(err.to_string().contains("exchange"), "{err}");
    let mut msg = Message::new("x");
    msg.attributes.set("k".repeat(300), "v");
    let err = amqp
        .queue_topic("q")
        .unwrap()
        .publish(&Context::background(), msg)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAttribute { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refused_login_does_not_show_the_password() {
    for url in [
        "amqp://guest:s3cret@127.0.0.1:5672/%2f",
        "amqp://guest:s3cret@127.0.0.1:1/%2f",
    ] {
        let err = Amqp::connect(url).await.unwrap_err();
        assert!(err.is_connection_lost(), "{err:?}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("guest:***"), "{err}");
    }
    // A URL lapin cannot parse is quoted in its error: still without the password.
    let err = Amqp::connect("amqp:guest:s3cret@127.0.0.1:5672")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    // With the default URL, the password is "guest".
    let Some(amqp) = connect().await else { return };
    let shown = format!("{amqp:?} {}", amqp.url());
    assert!(!shown.contains(":guest@"), "{shown}");
}

// ---- Chaos: a consumer killed with SIGKILL. ----

/// Where the kill test's child consumer works: its queue (it reports on `<queue>.done`).
const CHILD_QUEUE: &str = "MSGIO_AMQP_CHILD_QUEUE";

/// Not a test of its own: the consumer process the kill test starts (and kills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_killed_consumers_messages_are_redelivered_and_none_is_lost"]
async fn child_consumer() {
    let Ok(queue) = std::env::var(CHILD_QUEUE) else {
        return;
    };
    let amqp = Amqp::connect(&url()).await.unwrap();
    let reports = amqp.queue_topic(&format!("{queue}.done")).unwrap();
    let server = amqp
        .server(
            QueueOptions::new(&queue),
            ServerConfig::new().concurrency(8),
        )
        .await
        .unwrap();
    let receiver = msgio::ReceiverFunc::new(move |ctx: Context, msg: Message| {
        let reports = reports.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seq = msg.attributes.get("X-Kit-Seq").unwrap_or("?").to_owned();
            reports.publish(&ctx, Message::new(seq)).await
        }
    });
    server.serve(receiver).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_messages_are_redelivered_and_none_is_lost() {
    const N: u64 = 300;
    let Some(amqp) = connect().await else { return };
    let fresh = Fresh::new(&amqp).await;
    let done = Fresh {
        amqp: amqp.clone(),
        queue: format!("{}.done", fresh.queue),
    };
    amqp.declare_queue(&fresh.options()).await.unwrap();
    amqp.declare_queue(&done.options()).await.unwrap();
    let topic = fresh.topic();
    for seq in 0..N {
        topic
            .publish(&Context::background(), seq_message(seq))
            .await
            .unwrap();
    }
    let reports = Recorder::new();
    let reader = start(
        amqp.server(done.options(), ServerConfig::new())
            .await
            .unwrap(),
        reports.clone(),
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_consumer", "--nocapture"])
        .env(CHILD_QUEUE, &fresh.queue)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it mid-stream, holding messages.
    reports.wait_for(50, WAIT).await.unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Reports already on their way still count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.stop(GRACE).await.unwrap();
    let by_child: std::collections::BTreeSet<u64> = reports
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).parse::<u64>().unwrap())
        .collect();
    assert!(
        by_child.len() < N as usize,
        "the child finished before the kill"
    );

    let recorder = Recorder::new();
    let server = amqp
        .server(fresh.options(), ServerConfig::new())
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    recorder
        .wait_for_the_rest(&by_child, N as usize, WAIT)
        .await
        .unwrap();
    // What the child held unacknowledged came back at once, as a second attempt.
    recorder
        .wait_until("a message back from the killed consumer", WAIT, |r| {
            r.iter().any(|r| r.attempt > 1)
        })
        .await
        .unwrap();
    running.stop(GRACE).await.unwrap();
}

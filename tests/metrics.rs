//! Metrics: each fate a server decides moves its counter, receivers' time and the
//! in-flight gauge are recorded, and a metered topic counts what it publishes; through the
//! `metrics` facade with a recorder installed, as a user's exporter would be.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::atomics::AtomicU64;
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use msgio::mem::MemQueue;
use msgio::metrics::{self as names, MeteredTopic};
use msgio::testing::{Recorder, start};
use msgio::{Context, Error, Message, MessageWriter, ReceiverFunc, ServerConfig, Topic};

/// A recorder keeping every value, by name and labels, for the tests to read (reading
/// resets nothing, so tests running at once do not disturb each other).
#[derive(Default)]
struct Store {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// `name{label=value,...}`, labels in order.
fn id(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl metrics::Recorder for &'static Store {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut all = self.counters.lock().unwrap();
        Counter::from_arc(all.entry(id(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut all = self.gauges.lock().unwrap();
        Gauge::from_arc(all.entry(id(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut all = self.histograms.lock().unwrap();
        Histogram::from_arc(all.entry(id(key)).or_default().clone())
    }
}

/// The process's recorder, installed once.
fn store() -> &'static Store {
    static STORE: OnceLock<&'static Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let store: &'static Store = Box::leak(Box::default());
        metrics::set_global_recorder(store).expect("no other recorder");
        store
    })
}

/// The value of metric `name` labelled `label = value`: a counter's count, a gauge's
/// value, or how many values a histogram recorded.
fn value(name: &str, label: &str, value: &str) -> f64 {
    let id = format!("{name}{{{label}={value}}}");
    let s = store();
    if let Some(c) = s.counters.lock().unwrap().get(&id) {
        return c.load(Ordering::SeqCst) as f64;
    }
    if let Some(g) = s.gauges.lock().unwrap().get(&id) {
        return f64::from_bits(g.load(Ordering::SeqCst));
    }
    if let Some(h) = s.histograms.lock().unwrap().get(&id) {
        return h.0.lock().unwrap().len() as f64;
    }
    0.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fate_moves_its_counter() {
    store();
    let source = format!("metered-{}", msgio::testing::unique_suffix());
    let queue = MemQueue::named(&source, 64).unwrap();
    let dead = MemQueue::named(format!("{source}-dead"), 64).unwrap();
    let config = ServerConfig::new()
        .max_attempts(3)
        .dead_letter(dead.topic());
    let server = queue.server(config).unwrap();
    let topic = queue.topic();
    let ctx = Context::background();
    for kind in ["ok", "ok", "retry-once", "reject", "panic-once", "ok-again"] {
        let mut msg = Message::new(kind);
        msg.attributes.set("Kind", kind);
        topic.publish(&ctx, msg).await.unwrap();
    }
    let recorder = Recorder::new();
    let receiver = {
        let recorder = recorder.clone();
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let recorder = recorder.clone();
            async move {
                let kind = msg.attributes.get("Kind").unwrap_or_default().to_owned();
                msgio::Receiver::receive(&recorder, ctx.clone(), msg).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                match kind.as_str() {
                    "retry-once" if ctx.attempt() == 1 => {
                        Err(Error::retry_after(Duration::from_millis(10), "once"))
                    }
                    "reject" => Err(Error::reject("no")),
                    "panic-once" if ctx.attempt() == 1 => panic!("boom"),
                    _ => Ok(()),
                }
            }
        })
    };
    let running = start(server, receiver);
    // 6 messages, 2 of them twice.
    recorder.wait_for(8, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop(Duration::from_secs(5)).await.unwrap();

    let v = |name| value(name, "source", &source);
    assert_eq!(v(names::RECEIVED), 8.0);
    assert_eq!(
        v(names::ACKED),
        5.0,
        "ok, ok, retry-once, panic-once, ok-again"
    );
    assert_eq!(
        v(names::RETRIED),
        2.0,
        "retry-once and panic-once, once each"
    );
    assert_eq!(v(names::DEAD_LETTERED), 1.0, "the reject");
    assert_eq!(v(names::REJECTED), 0.0);
    assert_eq!(v(names::PANICS), 1.0);
    assert_eq!(v(names::IN_FLIGHT), 0.0);
    assert_eq!(
        v(names::HANDLING_SECONDS),
        8.0,
        "one handling time a delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_given_up_without_a_dead_letter_topic_counts_as_rejected() {
    store();
    let source = format!("metered-{}", msgio::testing::unique_suffix());
    let queue = MemQueue::named(&source, 8).unwrap();
    let server = queue.server(ServerConfig::new().max_attempts(1)).unwrap();
    queue
        .topic()
        .publish(&Context::background(), Message::new("x"))
        .await
        .unwrap();
    let recorder = Recorder::with(|_, _| Err(Error::other("fails")));
    let running = start(server, recorder.clone());
    recorder.wait_for(1, Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(value(names::REJECTED, "source", &source), 1.0);
    assert_eq!(value(names::ACKED, "source", &source), 0.0);
}

#[tokio::test]
async fn a_metered_topic_counts_what_it_publishes() {
    store();
    let name = format!("orders-{}", msgio::testing::unique_suffix());
    let queue = MemQueue::new(8).unwrap();
    let topic = MeteredTopic::new(queue.topic(), name.clone());
    let ctx = Context::background();
    topic.publish(&ctx, Message::new("one")).await.unwrap();
    let mut writer = topic.new_writer(&ctx).unwrap();
    writer.attributes_mut().set("K", "v");
    futures::io::AsyncWriteExt::close(&mut writer)
        .await
        .unwrap();
    topic
        .publish_batch(&ctx, vec![Message::new("a"), Message::new("b")])
        .await
        .unwrap();
    // A cancelled context fails the publish.
    let cancelled = Context::background();
    cancelled.cancel();
    assert!(topic.publish(&cancelled, Message::new("no")).await.is_err());
    assert_eq!(value(names::PUBLISHED, "topic", &name), 4.0);
    assert_eq!(value(names::FAILED, "topic", &name), 1.0);
    assert_eq!(value(names::PUBLISH_SECONDS, "topic", &name), 4.0);
}

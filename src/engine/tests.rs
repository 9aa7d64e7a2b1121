//! The engine driven by a scripted, fault-injecting source.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::transport::{BufferedWriter, Outgoing, Publish};
use crate::{Backoff, Context, Message, MessageId, ReceiverFunc, Server, TopicFunc};

/// What one call to `fetch` does.
enum Step {
    Deliver(Vec<u64>),
    /// Appends these even when asked for fewer (a source that breaks its contract).
    Overdeliver(Vec<u64>),
    /// Appends these, then never returns (until the fetch is dropped).
    DeliverThenHang(Vec<u64>),
    /// One delivery the source could not decode.
    Malformed(u64, &'static str),
    DeliverThenFail(Vec<u64>, Error),
    Fail(Error),
    /// The fetch panics.
    Panic,
}

#[derive(Default)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    /// Attempt number given to each delivery of a message id.
    attempts: Mutex<std::collections::HashMap<u64, u32>>,
    settled: Mutex<Vec<(u64, Settle)>>,
    batch_sizes: Mutex<Vec<usize>>,
    fetch_max: Mutex<Vec<usize>>,
    /// The next this-many settle calls fail (transiently).
    settle_failures: AtomicU32,
    /// The next this-many settle calls panic.
    settle_panics: AtomicU32,
    /// The next this-many reconnects fail.
    reconnect_failures: AtomicU32,
    reconnects: AtomicU32,
    closed: AtomicBool,
    /// How long `close` takes (`Duration::MAX`: for ever).
    close_takes: Mutex<Duration>,
    /// The source cannot hold nack delays.
    no_nack_delay: AtomicBool,
    /// Deliveries may carry a not-before time.
    not_before: AtomicBool,
    /// The source dead-letters natively.
    dead_letters: AtomicBool,
    /// The broker delivers whatever is unsettled (no window at the in-flight limit).
    unwindowed: AtomicBool,
    /// Extra attributes per message id.
    extra: Mutex<std::collections::HashMap<u64, (String, String)>>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Script>);

impl Scripted {
    fn with(steps: Vec<Step>) -> Self {
        let s = Scripted::default();
        s.0.steps.lock().unwrap().extend(steps);
        s
    }

    fn settled(&self) -> Vec<(u64, Settle)> {
        let mut v = self.0.settled.lock().unwrap().clone();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    fn set_attempt(&self, id: u64, attempt: u32) {
        self.0.attempts.lock().unwrap().insert(id, attempt);
    }
}

impl Source for Scripted {
    type Token = u64;

    fn name(&self) -> &str {
        "scripted"
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<u64>>) -> Result<(), Error> {
        self.0.fetch_max.lock().unwrap().push(max);
        let step = self.0.steps.lock().unwrap().pop_front();
        let over = matches!(step, Some(Step::Overdeliver(_)));
        let deliver = |ids: Vec<u64>, out: &mut Vec<Delivery<u64>>| {
            assert!(
                over || ids.len() <= max,
                "script delivers {} but max is {max}",
                ids.len()
            );
            let attempts = self.0.attempts.lock().unwrap();
            let extra = self.0.extra.lock().unwrap();
            for id in ids {
                let mut attributes = crate::Attributes::new();
                attributes.set("X-Id", id.to_string());
                if let Some((k, v)) = extra.get(&id) {
                    attributes.set(k, v.clone());
                }
                out.push(
                    Delivery::new(id, format!("body {id}").into())
                        .with_attributes(attributes)
                        .with_message_id(id)
                        .with_attempt(attempts.get(&id).copied().unwrap_or(1)),
                );
            }
        };
        match step {
            Some(Step::Deliver(ids) | Step::Overdeliver(ids)) => {
                deliver(ids, out);
                Ok(())
            }
            Some(Step::DeliverThenFail(ids, e)) => {
                deliver(ids, out);
                Err(e)
            }
            Some(Step::Fail(e)) => Err(e),
            Some(Step::Panic) => panic!("the scripted source's fetch panics, on purpose"),
            Some(Step::Malformed(id, why)) => {
                out.push(Delivery::malformed(
                    id,
                    why,
                    crate::Attributes::new(),
                    bytes::Bytes::from_static(b"\xff\x00raw"),
                ));
                Ok(())
            }
            Some(Step::DeliverThenHang(ids)) => {
                deliver(ids, out);
                futures::future::pending().await
            }
            None => futures::future::pending().await,
        }
    }

    async fn settle(&self, batch: &mut Vec<Settlement<u64>>) -> Result<(), Error> {
        let failing =
            self.0
                .settle_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::other("settle refused"));
        }
        let panicking =
            self.0
                .settle_panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if panicking.is_ok() {
            panic!("the scripted source's settle panics, on purpose");
        }
        self.0.batch_sizes.lock().unwrap().push(batch.len());
        let mut settled = self.0.settled.lock().unwrap();
        settled.extend(batch.drain(..).map(|s| (s.token, s.action)));
        Ok(())
    }

    fn nack_delay(&self) -> bool {
        !self.0.no_nack_delay.load(Ordering::SeqCst)
    }

    fn not_before(&self) -> bool {
        self.0.not_before.load(Ordering::SeqCst)
    }

    fn stops_at_in_flight_limit(&self) -> bool {
        !self.0.unwindowed.load(Ordering::SeqCst)
    }

    fn dead_letters(&self) -> bool {
        self.0.dead_letters.load(Ordering::SeqCst)
    }

    async fn reconnect(&self) -> Result<(), Error> {
        self.0.reconnects.fetch_add(1, Ordering::SeqCst);
        let failing =
            self.0
                .reconnect_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::other("broker still down"));
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        let takes = *self.0.close_takes.lock().unwrap();
        if takes == Duration::MAX {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(takes).await;
        self.0.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn fast() -> ServerConfig {
    ServerConfig::new()
        .concurrency(8)
        .ack_interval(Duration::ZERO)
        .reconnect_backoff(
            Backoff::new(Duration::from_millis(1), Duration::from_millis(5), 2.0).unwrap(),
        )
        .cancel_grace(Duration::from_millis(100))
}

/// A settler over `source` alone, batching by `batch_size` or every `interval`, and the
/// queue's sending side.
fn spawn_settler(
    source: &Scripted,
    batch_size: usize,
    interval: Duration,
) -> (
    super::settle::SettleSender<u64>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = super::settle::settle_channel::<u64>(batch_size);
    let settler = tokio::spawn(
        super::settle::Settler {
            source: Arc::new(source.clone()),
            health: Arc::new(super::health::HealthCell::new()),
            batch_size,
            interval,
            retries: 0,
            backoff: Backoff::default(),
        }
        .run(rx, tokio_util::sync::CancellationToken::new()),
    );
    (tx, settler)
}

/// Waits until `cond` holds; fails the test after 10 s so nothing hangs.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting until {what}");
    }
}

/// Shuts `engine` down in good time and checks that `serve` returned `ServerClosed`.
async fn stop(engine: &Engine<Scripted>, task: tokio::task::JoinHandle<Result<(), Error>>) {
    bounded(engine.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    let served = bounded(task).await.unwrap();
    assert!(matches!(served, Err(Error::ServerClosed)), "{served:?}");
}

/// Bounds any future so a broken engine fails the test instead of hanging it.
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("did not finish within 10 s")
}

fn serve_in_background<R: crate::Receiver + 'static>(
    engine: &Engine<Scripted>,
    receiver: R,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let engine = engine.clone();
    tokio::spawn(async move { engine.serve(receiver).await })
}

/// Serves `engine` with `receiver` until `source` settled `n` messages, then stops it;
/// the settlements, by message id.
async fn settlements<R: crate::Receiver + 'static>(
    engine: &Engine<Scripted>,
    source: &Scripted,
    n: usize,
    receiver: R,
) -> Vec<(u64, Settle)> {
    let task = serve_in_background(engine, receiver);
    eventually(&format!("{n} settled"), || source.settled().len() == n).await;
    let settled = source.settled();
    stop(engine, task).await;
    settled
}

/// Serves `engine` in a background task with a receiver that acks every message.
fn serve_acking(engine: &Engine<Scripted>) -> tokio::task::JoinHandle<Result<(), Error>> {
    serve_in_background(
        engine,
        ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
    )
}

/// Serves `queue` until `n` messages were read; returns their attributes and bodies.
#[cfg(feature = "mem")]
async fn drain(queue: &crate::mem::MemQueue, n: usize) -> Vec<(crate::Attributes, bytes::Bytes)> {
    let read = Arc::new(Mutex::new(Vec::new()));
    let r = read.clone();
    let server = queue.server(fast()).unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, msg: Message| {
                r.lock()
                    .unwrap()
                    .push((msg.attributes.clone(), msg.body.as_bytes().unwrap().clone()));
                async { Ok(()) }
            }))
            .await
    });
    eventually("the messages were read", || read.lock().unwrap().len() >= n).await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    bounded(task).await.unwrap().unwrap_err();
    read.lock().unwrap().clone()
}

fn body_of(msg: &Message) -> String {
    String::from_utf8(msg.body.as_bytes().unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn acks_only_after_the_receiver_returned_ok() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let gate = Arc::new(Notify::new());
    let started = Arc::new(AtomicBool::new(false));
    let (g, s) = (gate.clone(), started.clone());
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, _: Message| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                s.store(true, Ordering::SeqCst);
                g.notified().await;
                Ok(())
            }
        }),
    );
    eventually("the receiver started", || started.load(Ordering::SeqCst)).await;
    // Give the settler every chance to (wrongly) settle early.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        source.settled().is_empty(),
        "settled before the receiver returned"
    );
    assert_eq!(engine.health().in_flight, 1);
    gate.notify_one();
    eventually("the message was acked", || {
        source.settled() == [(1, Settle::Ack)]
    })
    .await;
    stop(&engine, task).await;
    assert!(source.0.closed.load(Ordering::SeqCst));
}

#[tokio::test]
async fn the_receivers_result_decides_each_fate() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2, 3, 4, 5])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, msg: Message| async move {
            match msg.attributes.get("X-Id") {
                Some("1") => Ok(()),
                Some("2") => Err(Error::other("plain failure")),
                Some("3") => Err(Error::retry_after(Duration::from_secs(7), "later")),
                Some("4") => Err(Error::reject("malformed")),
                _ => panic!("receiver bug"), // no SafeReceiver: the engine isolates it
            }
        }),
    );
    eventually("all five settled", || source.settled().len() == 5).await;
    assert_eq!(
        source.settled(),
        [
            (1, Settle::Ack),
            (2, Settle::Nack { delay: None }),
            (
                3,
                Settle::Nack {
                    delay: Some(Duration::from_secs(7))
                }
            ),
            (4, Settle::Reject),
            (5, Settle::Nack { delay: None }),
        ]
    );
    stop(&engine, task).await;
}

#[tokio::test]
async fn receivers_see_the_delivery_facts() {
    let source = Scripted::with(vec![Step::Deliver(vec![9])]);
    source.set_attempt(9, 4);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let s = s.clone();
            async move {
                *s.lock().unwrap() = Some((
                    ctx.message_id().cloned(),
                    ctx.attempt(),
                    ctx.source().map(str::to_owned),
                    body_of(&msg),
                ));
                Ok(())
            }
        }),
    );
    eventually("settled", || source.settled().len() == 1).await;
    assert_eq!(
        seen.lock().unwrap().clone().unwrap(),
        (
            Some(MessageId::from(9)),
            4,
            Some("scripted".to_owned()),
            "body 9".to_owned()
        )
    );
    stop(&engine, task).await;
}

#[cfg(feature = "mem")]
#[tokio::test]
async fn dead_letters_rejects_and_the_last_attempt_with_the_reason() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2, 3])]);
    source.set_attempt(1, 3); // the last of 3 attempts
    source.set_attempt(2, 2); // not yet the last
    let dlq = crate::mem::MemQueue::named("dlq", 16).unwrap();
    let engine = Engine::new(
        source.clone(),
        fast().max_attempts(3).dead_letter(dlq.topic()),
    )
    .unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, msg: Message| async move {
            match msg.attributes.get("X-Id") {
                Some("3") => Err(Error::reject("not for us")),
                _ => Err(Error::other("database down")),
            }
        }),
    );
    eventually("all three settled", || source.settled().len() == 3).await;
    assert_eq!(
        source.settled(),
        [
            (1, Settle::Ack),
            (2, Settle::Nack { delay: None }),
            (3, Settle::Ack)
        ]
    );
    assert_eq!(dlq.len(), 2);
    stop(&engine, task).await;

    // Read the dead letters back.
    let letters = drain(&dlq, 2).await;
    let mut letters = letters;
    letters.sort_by_key(|(a, _)| a.get("X-Id").unwrap().to_owned());
    let (attrs, body) = &letters[0];
    assert_eq!(body, "body 1");
    assert_eq!(attrs.get("X-Id"), Some("1"));
    assert_eq!(attrs.get(crate::keys::ATTEMPTS), Some("3"));
    assert_eq!(attrs.get(crate::keys::SOURCE), Some("scripted"));
    assert_eq!(attrs.get(crate::keys::MESSAGE_ID), Some("1"));
    let reason = attrs.get(crate::keys::DEAD_LETTER_REASON).unwrap();
    assert!(
        reason.contains("attempt 3 of 3") && reason.contains("database down"),
        "{reason}"
    );
    let (attrs, body) = &letters[1];
    assert_eq!(body, "body 3");
    assert!(
        attrs
            .get(crate::keys::DEAD_LETTER_REASON)
            .unwrap()
            .contains("not for us")
    );
}

/// A publisher that always fails, to stand for a dead-letter topic that is down.
struct Down;

impl Publish for Down {
    type Future = std::future::Ready<Result<(), Error>>;
    fn publish(&self, _: &Context, _: Outgoing) -> Self::Future {
        std::future::ready(Err(Error::other("dead-letter broker down")))
    }
}

/// A publisher that takes everything and keeps nothing.
struct Discard;

impl Publish for Discard {
    type Future = std::future::Ready<Result<(), Error>>;
    fn publish(&self, _: &Context, _: Outgoing) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failed_dead_letter_is_retried_not_lost() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    let down = TopicFunc::new(|ctx: &Context| Ok(BufferedWriter::new(Down, ctx)));
    let engine = Engine::new(source.clone(), fast().dead_letter(down)).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject("poison")) }),
    );
    eventually("settled", || source.settled().len() == 1).await;
    assert!(matches!(
        source.settled()[0].1,
        Settle::Nack { delay: Some(_) }
    ));
    stop(&engine, task).await;
}

#[tokio::test]
async fn reconnects_with_backoff_after_a_connection_lost_mid_batch() {
    let source = Scripted::with(vec![
        Step::DeliverThenFail(vec![1, 2], Error::connection_lost("connection reset")),
        Step::Deliver(vec![3]),
    ]);
    source.0.reconnect_failures.store(2, Ordering::SeqCst);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_acking(&engine);
    eventually("all three acked", || source.settled().len() == 3).await;
    assert!(source.settled().iter().all(|(_, s)| *s == Settle::Ack));
    assert_eq!(source.0.reconnects.load(Ordering::SeqCst), 3);
    eventually("healthy again", || engine.health().is_healthy()).await;
    stop(&engine, task).await;
    assert_eq!(engine.health().state, HealthState::Closed);
}

#[tokio::test]
async fn other_fetch_errors_back_off_without_reconnecting() {
    let source = Scripted::with(vec![
        Step::Fail(Error::other("timeout")),
        Step::Fail(Error::other("timeout")),
        Step::Deliver(vec![1]),
    ]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_acking(&engine);
    eventually("acked", || source.settled().len() == 1).await;
    assert_eq!(source.0.reconnects.load(Ordering::SeqCst), 0);
    stop(&engine, task).await;
}

#[tokio::test]
async fn settle_failures_are_retried_and_do_not_stop_serving() {
    let source = Scripted::with(vec![Step::Deliver(vec![1]), Step::Deliver(vec![2])]);
    source.0.settle_failures.store(2, Ordering::SeqCst);
    let engine = Engine::new(source.clone(), fast().settle_retries(3)).unwrap();
    let task = serve_acking(&engine);
    eventually("both acked", || source.settled().len() == 2).await;
    stop(&engine, task).await;

    // Failures beyond the retries: given up (the broker redelivers), serving goes on.
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    source.0.settle_failures.store(3, Ordering::SeqCst);
    let engine = Engine::new(source.clone(), fast().settle_retries(2)).unwrap();
    let task = serve_acking(&engine);
    eventually("the failures were recorded", || {
        engine.health().consecutive_failures == 3
    })
    .await;
    // Given up, not tried a fourth time (which would succeed): well past the backoff.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(source.settled().is_empty(), "{:?}", source.settled());
    assert!(
        engine
            .health()
            .last_error
            .unwrap()
            .contains("settle refused")
    );
    stop(&engine, task).await;
}

#[tokio::test]
async fn settlements_are_batched_by_count_and_flushed_by_interval() {
    let source = Scripted::with(vec![Step::Deliver((1..=10).collect())]);
    let engine = Engine::new(
        source.clone(),
        fast()
            .concurrency(16)
            .ack_batch_size(4)
            .ack_interval(Duration::from_millis(50)),
    )
    .unwrap();
    let task = serve_acking(&engine);
    eventually("all ten acked", || source.settled().len() == 10).await;
    let sizes = source.0.batch_sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|&n| n <= 4), "batches {sizes:?}");
    assert!(sizes.len() < 10, "not batched: {sizes:?}");

    stop(&engine, task).await;

    // A lone settlement goes out once the interval passes, not when a batch fills.
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    let engine = Engine::new(
        source.clone(),
        fast()
            .ack_batch_size(1000)
            .ack_interval(Duration::from_millis(20)),
    )
    .unwrap();
    let task = serve_acking(&engine);
    eventually("the lone ack was flushed", || source.settled().len() == 1).await;
    stop(&engine, task).await;
}

/// A broker that delivers no more than the in-flight limit unacknowledged (RabbitMQ's
/// prefetch count) never sees a batch of 128 from a server with concurrency 1: the batch
/// is capped at half the limit, so each settlement goes out when it is made, not after
/// the interval (an hour here).
#[tokio::test]
async fn a_batch_never_waits_for_more_settlements_than_can_be_in_flight() {
    let source = Scripted::with(vec![Step::Deliver(vec![1]), Step::Deliver(vec![2])]);
    let engine = Engine::new(
        source.clone(),
        fast()
            .concurrency(1)
            .ack_batch_size(128)
            .ack_interval(Duration::from_secs(3600)),
    )
    .unwrap();
    let task = serve_acking(&engine);
    eventually("both acked without waiting out the interval", || {
        source.settled().len() == 2
    })
    .await;
    assert_eq!(*source.0.batch_sizes.lock().unwrap(), [1, 1]);
    stop(&engine, task).await;
}

#[tokio::test]
async fn concurrency_and_prefetch_are_bounded() {
    let source = Scripted::with(
        (0..10)
            .map(|i| Step::Deliver(vec![i * 2 + 1, i * 2 + 2]))
            .collect(),
    );
    let engine = Engine::new(source.clone(), fast().concurrency(3).prefetch(2)).unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, _: Message| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let current = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }),
    );
    eventually("all twenty acked", || source.settled().len() == 20).await;
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    let maxes = source.0.fetch_max.lock().unwrap().clone();
    assert!(
        maxes.iter().all(|&m| (1..=5).contains(&m)),
        "fetch max {maxes:?}"
    );
    stop(&engine, task).await;
}

/// A source that returns more than it was asked for: the rest goes back untouched, and what
/// is held stays within the bound.
#[tokio::test]
async fn deliveries_beyond_what_was_asked_for_are_released() {
    let source = Scripted::with(vec![Step::Overdeliver((1..=5).collect())]);
    let engine = Engine::new(source.clone(), fast().concurrency(2).prefetch(1)).unwrap();
    let task = serve_acking(&engine);
    eventually("all five settled", || source.settled().len() == 5).await;
    assert_eq!(source.0.fetch_max.lock().unwrap()[0], 3);
    assert_eq!(
        source.settled(),
        [
            (1, Settle::Ack),
            (2, Settle::Ack),
            (3, Settle::Ack),
            (4, Settle::Release),
            (5, Settle::Release)
        ]
    );
    stop(&engine, task).await;
}

/// Every slot of the concurrency is used: eight receivers that each wait until all eight
/// run finish only if the engine runs eight at once, whether the deliveries come together
/// or one fetch at a time.
#[tokio::test]
async fn receivers_run_up_to_the_concurrency_at_once() {
    for steps in [
        vec![Step::Deliver((1..=8).collect())],
        (1..=8).map(|id| Step::Deliver(vec![id])).collect(),
    ] {
        let source = Scripted::with(steps);
        let engine = Engine::new(source.clone(), fast().concurrency(8).prefetch(0)).unwrap();
        let all_running = Arc::new(tokio::sync::Barrier::new(8));
        let task = serve_in_background(
            &engine,
            ReceiverFunc::new(move |_: Context, _: Message| {
                let all_running = all_running.clone();
                async move {
                    all_running.wait().await;
                    Ok(())
                }
            }),
        );
        eventually("all eight ran at once and were acked", || {
            source.settled().len() == 8
        })
        .await;
        stop(&engine, task).await;
    }
}

#[tokio::test]
async fn shutdown_waits_for_slow_receivers_and_releases_what_never_started() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2, 3])]);
    let engine = Engine::new(source.clone(), fast().concurrency(1).prefetch(2)).unwrap();
    let gate = Arc::new(Notify::new());
    let started = Arc::new(AtomicBool::new(false));
    let (g, s) = (gate.clone(), started.clone());
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, _: Message| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                s.store(true, Ordering::SeqCst);
                g.notified().await;
                Ok(())
            }
        }),
    );
    eventually("the first receiver started", || {
        started.load(Ordering::SeqCst)
    })
    .await;
    let shutting = engine.clone();
    let shutdown = tokio::spawn(async move { shutting.shutdown(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the slow receiver"
    );
    assert_eq!(engine.health().state, HealthState::Draining);
    gate.notify_one();
    bounded(shutdown).await.unwrap().unwrap();
    assert!(matches!(
        bounded(task).await.unwrap(),
        Err(Error::ServerClosed)
    ));
    assert_eq!(
        source.settled(),
        [(1, Settle::Ack), (2, Settle::Release), (3, Settle::Release)]
    );
}

/// A source's close that never finishes (a broker that stopped answering its last commit)
/// is given up `cancel_grace` after the shutdown deadline: shutdown and serve return. A
/// slow close within the deadline is waited for.
#[tokio::test]
async fn a_source_close_that_never_finishes_is_given_up_after_the_deadline() {
    for (takes, grace, finished) in [
        (Duration::MAX, Duration::from_millis(50), false),
        (Duration::from_millis(300), Duration::from_secs(5), true),
    ] {
        let source = Scripted::with(vec![Step::Deliver(vec![1])]);
        *source.0.close_takes.lock().unwrap() = takes;
        let engine = Engine::new(source.clone(), fast()).unwrap();
        let task = serve_in_background(
            &engine,
            ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
        );
        eventually("the message was settled", || source.settled().len() == 1).await;
        let result = bounded(engine.shutdown(grace)).await;
        assert_eq!(result.is_ok(), finished, "{result:?}");
        if !finished {
            assert!(matches!(result, Err(Error::DeadlineExceeded)), "{result:?}");
        }
        assert!(matches!(
            bounded(task).await.unwrap(),
            Err(Error::ServerClosed)
        ));
        assert_eq!(source.0.closed.load(Ordering::SeqCst), finished);
        assert_eq!(source.settled(), [(1, Settle::Ack)]);
    }
}

#[tokio::test]
async fn the_shutdown_deadline_cancels_contexts() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (c, s) = (saw_cancel.clone(), started.clone());
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |ctx: Context, _: Message| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                s.store(true, Ordering::SeqCst);
                ctx.cancelled().await;
                c.store(true, Ordering::SeqCst);
                Err(Error::Cancelled)
            }
        }),
    );
    eventually("the receiver started", || started.load(Ordering::SeqCst)).await;
    let result = bounded(engine.shutdown(Duration::from_millis(50))).await;
    assert!(matches!(result, Err(Error::DeadlineExceeded)), "{result:?}");
    assert!(saw_cancel.load(Ordering::SeqCst));
    assert_eq!(source.settled(), [(1, Settle::Nack { delay: None })]);
    assert!(matches!(
        bounded(task).await.unwrap(),
        Err(Error::ServerClosed)
    ));
}

#[tokio::test]
async fn a_receiver_that_never_returns_is_abandoned_and_its_message_released() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, _: Message| {
            let s = s.clone();
            async move {
                s.store(true, Ordering::SeqCst);
                futures::future::pending::<()>().await;
                Ok(())
            }
        }),
    );
    eventually("the receiver started", || started.load(Ordering::SeqCst)).await;
    let result = bounded(engine.shutdown(Duration::from_millis(20))).await;
    assert!(matches!(result, Err(Error::DeadlineExceeded)), "{result:?}");
    assert_eq!(source.settled(), [(1, Settle::Nack { delay: None })]);
    assert!(matches!(
        bounded(task).await.unwrap(),
        Err(Error::ServerClosed)
    ));
}

#[tokio::test]
async fn serving_twice_or_after_shutdown_is_an_error() {
    let engine = Engine::new(Scripted::default(), fast()).unwrap();
    let task = serve_acking(&engine);
    eventually("serving", || engine.health().state == HealthState::Serving).await;
    let second = engine
        .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
        .await;
    assert!(matches!(second, Err(Error::AlreadyServing)), "{second:?}");
    stop(&engine, task).await;
    let after = engine
        .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
        .await;
    assert!(matches!(after, Err(Error::ServerClosed)), "{after:?}");

    // Shutting down a server that never served closes it.
    let idle = Engine::new(Scripted::default(), fast()).unwrap();
    idle.shutdown(Duration::from_secs(1)).await.unwrap();
    let after = idle
        .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
        .await;
    assert!(matches!(after, Err(Error::ServerClosed)));
    // And shutting down twice is fine.
    idle.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[test]
fn invalid_settings_are_named() {
    for (config, field) in [
        (ServerConfig::new().concurrency(0), "concurrency"),
        (ServerConfig::new().max_attempts(0), "max_attempts"),
        (ServerConfig::new().ack_batch_size(0), "ack_batch_size"),
        (ServerConfig::new().prefetch(usize::MAX), "prefetch"),
    ] {
        let err = Engine::new(Scripted::default(), config).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn an_engine_shows_its_source_and_keeps_its_config() {
    let engine = Engine::new(Scripted::default(), fast().concurrency(7).max_attempts(3)).unwrap();
    assert_eq!(engine.config().concurrency_limit(), 7);
    assert_eq!(engine.config().attempt_limit(), Some(3));
    assert_eq!(engine.source().name(), "scripted");
    let shown = format!("{engine:?}");
    assert!(
        shown.contains("scripted") && shown.contains("Idle"),
        "{shown}"
    );
}

#[tokio::test]
async fn dropping_the_serve_future_closes_the_server() {
    let engine = Engine::new(Scripted::default(), fast()).unwrap();
    let serve = engine.serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }));
    let _ = tokio::time::timeout(Duration::from_millis(10), serve).await;
    bounded(engine.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(engine.health().state, HealthState::Closed);
}

#[tokio::test]
async fn deliveries_appended_by_an_interrupted_fetch_are_released() {
    let source = Scripted::with(vec![Step::DeliverThenHang(vec![1, 2])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_acking(&engine);
    eventually("fetching", || {
        !source.0.fetch_max.lock().unwrap().is_empty()
    })
    .await;
    stop(&engine, task).await;
    assert_eq!(
        source.settled(),
        [(1, Settle::Release), (2, Settle::Release)]
    );
}

#[tokio::test]
async fn delayed_nacks_are_held_by_the_engine_for_sources_without_delays() {
    let source = Scripted::with(vec![Step::Deliver(vec![1]), Step::Deliver(vec![2])]);
    source.0.no_nack_delay.store(true, Ordering::SeqCst);
    let engine = Engine::new(source.clone(), fast().concurrency(1).prefetch(0)).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, msg: Message| async move {
            match msg.attributes.get("X-Id") {
                Some("1") => Err(Error::retry_after(Duration::from_millis(150), "later")),
                _ => Ok(()),
            }
        }),
    );
    let start = tokio::time::Instant::now();
    // The slot is free at once: message 2 is handled while 1 waits out its delay.
    eventually("2 acked", || source.settled().contains(&(2, Settle::Ack))).await;
    assert!(
        !source.settled().iter().any(|(id, _)| *id == 1),
        "1 settled before its delay"
    );
    eventually("1 nacked", || source.settled().len() == 2).await;
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert!(
        source
            .settled()
            .contains(&(1, Settle::Nack { delay: None }))
    );
    stop(&engine, task).await;
}

#[tokio::test]
async fn held_nacks_are_settled_when_serving_stops() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    source.0.no_nack_delay.store(true, Ordering::SeqCst);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, _: Message| async {
            Err(Error::retry_after(Duration::from_secs(3600), "much later"))
        }),
    );
    eventually("the receiver ran", || {
        engine.health().in_flight == 0 && !source.0.fetch_max.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(source.settled().is_empty(), "the delayed nack was not held");
    bounded(engine.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    bounded(task).await.unwrap().unwrap_err();
    assert_eq!(source.settled(), [(1, Settle::Nack { delay: None })]);
}

/// Collects the messages of WARN events.
#[cfg(feature = "tracing")]
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

#[cfg(feature = "tracing")]
impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        let mut text = String::new();
        event.record(&mut Message(&mut text));
        self.0.lock().unwrap().push(text);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(feature = "tracing")]
#[tokio::test(flavor = "current_thread")]
async fn a_reject_without_a_dead_letter_topic_is_dropped_with_a_warning() {
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let source = Scripted::with(vec![Step::Deliver(vec![7])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject("not json")) }),
    );
    eventually("settled", || source.settled().len() == 1).await;
    assert_eq!(source.settled(), [(7, Settle::Reject)]);
    stop(&engine, task).await;
    let warnings = warnings.0.lock().unwrap().clone();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dropping message 7") && w.contains("not json")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_source_that_dead_letters_natively_gets_the_reason_unless_a_topic_is_set() {
    let source = Scripted::with(vec![
        Step::Deliver(vec![1, 2]),
        Step::Malformed(3, "no body"),
    ]);
    source.0.dead_letters.store(true, Ordering::SeqCst);
    source.set_attempt(2, 3);
    let engine = Engine::new(source.clone(), fast().max_attempts(3)).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, msg: Message| async move {
            if msg.attributes.get("X-Id") == Some("1") {
                Err(Error::reject("not json"))
            } else {
                Err(Error::other("down"))
            }
        }),
    );
    eventually("settled", || source.settled().len() == 3).await;
    stop(&engine, task).await;
    let reason = |s: &Settle| match s {
        Settle::DeadLetter { reason } => reason.clone(),
        other => panic!("{other:?}"),
    };
    let settled = source.settled();
    assert!(reason(&settled[0].1).contains("not json"), "{settled:?}");
    assert_eq!(reason(&settled[1].1), "attempt 3 of 3 failed: down");
    assert_eq!(reason(&settled[2].1), "malformed delivery: no body");

    // A dead-letter topic of the server's own wins: the message is published and acked.
    let source = Scripted::with(vec![Step::Deliver(vec![4])]);
    source.0.dead_letters.store(true, Ordering::SeqCst);
    let letters = Arc::new(AtomicUsize::new(0));
    let l = letters.clone();
    let topic = TopicFunc::new(move |_: &Context| {
        l.fetch_add(1, Ordering::SeqCst);
        Ok(BufferedWriter::new(Discard, &Context::background()))
    });
    let engine = Engine::new(source.clone(), fast().dead_letter(topic)).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject("no")) }),
    );
    eventually("settled", || source.settled().len() == 1).await;
    stop(&engine, task).await;
    assert_eq!(source.settled(), [(4, Settle::Ack)]);
    assert_eq!(letters.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn deliveries_not_yet_due_are_deferred_without_running_the_receiver() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2, 3])]);
    source.0.not_before.store(true, Ordering::SeqCst);
    let mut ahead = crate::Attributes::new();
    crate::engine::stamp_not_before(&mut ahead, Duration::from_secs(60));
    let due = ahead.get(crate::keys::NOT_BEFORE).unwrap().to_owned();
    {
        let mut extra = source.0.extra.lock().unwrap();
        extra.insert(1, (crate::keys::NOT_BEFORE.to_owned(), due));
        extra.insert(2, (crate::keys::NOT_BEFORE.to_owned(), "1000".to_owned())); // long past
        extra.insert(3, (crate::keys::NOT_BEFORE.to_owned(), "soon".to_owned())); // unreadable
    }
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, msg: Message| {
            r.lock()
                .unwrap()
                .push(msg.attributes.get("X-Id").unwrap().to_owned());
            async { Ok(()) }
        }),
    );
    eventually("all settled", || source.settled().len() == 3).await;
    let settled = source.settled();
    match &settled[0] {
        (1, Settle::Defer { delay }) => {
            assert!(
                *delay > Duration::from_secs(55) && *delay <= Duration::from_secs(60),
                "{delay:?}"
            );
        }
        other => panic!("message 1 was not deferred: {other:?}"),
    }
    assert_eq!(settled[1..], [(2, Settle::Ack), (3, Settle::Ack)]);
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    assert_eq!(
        ran,
        ["2", "3"],
        "a message not yet due reached the receiver"
    );
    stop(&engine, task).await;
}

#[tokio::test]
async fn deferrals_are_held_for_sources_without_delays_then_released() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    source.0.not_before.store(true, Ordering::SeqCst);
    source.0.no_nack_delay.store(true, Ordering::SeqCst);
    let mut ahead = crate::Attributes::new();
    crate::engine::stamp_not_before(&mut ahead, Duration::from_millis(150));
    let due = ahead.get(crate::keys::NOT_BEFORE).unwrap().to_owned();
    source
        .0
        .extra
        .lock()
        .unwrap()
        .insert(1, (crate::keys::NOT_BEFORE.to_owned(), due));
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_acking(&engine);
    let start = tokio::time::Instant::now();
    eventually("released when due", || source.settled().len() == 1).await;
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(source.settled(), [(1, Settle::Release)]);
    stop(&engine, task).await;
}

#[cfg(feature = "mem")]
#[tokio::test]
async fn malformed_deliveries_are_dead_lettered_without_reaching_the_receiver() {
    let source = Scripted::with(vec![
        Step::Malformed(1, "no body field"),
        Step::Malformed(2, "bad attributes"),
    ]);
    let dlq = crate::mem::MemQueue::new(8).unwrap();
    let engine = Engine::new(source.clone(), fast().dead_letter(dlq.topic())).unwrap();
    let called = Arc::new(AtomicUsize::new(0));
    let c = called.clone();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, _: Message| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    );
    eventually("both settled", || source.settled().len() == 2).await;
    assert_eq!(source.settled(), [(1, Settle::Ack), (2, Settle::Ack)]);
    assert_eq!(called.load(Ordering::SeqCst), 0);
    assert_eq!(dlq.len(), 2);
    stop(&engine, task).await;

    let letters = drain(&dlq, 2).await;
    let reasons: Vec<_> = letters
        .iter()
        .map(|(a, _)| a.get(crate::keys::DEAD_LETTER_REASON).unwrap().to_owned())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r == "malformed delivery: no body field"),
        "{reasons:?}"
    );
    assert!(
        letters
            .iter()
            .all(|(_, body)| body.as_ref() == b"\xff\x00raw")
    );

    // Without a dead-letter topic: rejected, still never handed to the receiver.
    let source = Scripted::with(vec![Step::Malformed(3, "truncated")]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(|_: Context, _: Message| async { panic!("must not be called") }),
    );
    eventually("settled", || source.settled().len() == 1).await;
    assert_eq!(source.settled(), [(3, Settle::Reject)]);
    stop(&engine, task).await;
}

#[tokio::test]
async fn messages_run_on_at_most_concurrency_tasks_and_none_outlives_serving() {
    let ids: Vec<u64> = (1..=200).collect();
    let source = Scripted::with(ids.chunks(4).map(|c| Step::Deliver(c.to_vec())).collect());
    let engine = Engine::new(source.clone(), fast().concurrency(4)).unwrap();
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let tasks = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let t = tasks.clone();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |_: Context, _: Message| {
            let t = t.clone();
            async move {
                t.lock().unwrap().insert(tokio::task::id());
                tokio::task::yield_now().await;
                Ok(())
            }
        }),
    );
    eventually("every message was settled", || {
        source.settled().len() == 200
    })
    .await;
    stop(&engine, task).await;
    let used = tasks.lock().unwrap().len();
    assert!((1..=4).contains(&used), "{used} tasks ran messages");
    eventually("the workers ended with serving", || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            <= before
    })
    .await;
}

#[tokio::test]
async fn a_context_kept_past_its_message_and_cancelled_later_cancels_no_other() {
    // One worker runs every message; the first message's context is kept and cancelled
    // only after its message was settled.
    let source = Scripted::with(vec![
        Step::Deliver(vec![1]),
        Step::Deliver(vec![2]),
        Step::Deliver(vec![3]),
        Step::Deliver(vec![4]),
    ]);
    let engine = Engine::new(source.clone(), fast().concurrency(1)).unwrap();
    let kept = Arc::new(Mutex::new(None::<Context>));
    let cancelled_seen = Arc::new(Mutex::new(Vec::new()));
    let (k, c) = (kept.clone(), cancelled_seen.clone());
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (k, c) = (k.clone(), c.clone());
            async move {
                let id = msg.attributes.get("X-Id").unwrap_or("").to_owned();
                if ctx.is_cancelled() {
                    c.lock().unwrap().push(id.clone());
                }
                if id == "1" {
                    *k.lock().unwrap() = Some(ctx);
                } else if let Some(kept) = k.lock().unwrap().take() {
                    kept.cancel();
                    assert!(kept.is_cancelled());
                }
                Ok(())
            }
        }),
    );
    eventually("all four settled", || source.settled().len() == 4).await;
    assert!(
        cancelled_seen.lock().unwrap().is_empty(),
        "messages {:?} got a context another message's receiver cancelled",
        cancelled_seen.lock().unwrap()
    );
    assert!(source.settled().iter().all(|(_, s)| *s == Settle::Ack));
    stop(&engine, task).await;
}

#[tokio::test]
async fn a_token_taken_from_a_context_and_cancelled_later_cancels_no_other_message() {
    // One worker runs every message. The first message's receiver hands a clone of its
    // context's token to a task that cancels it while the next message runs: the context
    // itself is long gone by then, and no other message's context may go with it.
    let source = Scripted::with(vec![Step::Deliver(vec![1]), Step::Deliver(vec![2])]);
    let engine = Engine::new(source.clone(), fast().concurrency(1)).unwrap();
    let cancelled_seen = Arc::new(Mutex::new(Vec::new()));
    // Told once the kept token was cancelled: the second message looks only after that.
    let was_cancelled = Arc::new(tokio::sync::Notify::new());
    let (c, done) = (cancelled_seen.clone(), was_cancelled.clone());
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (c, done) = (c.clone(), done.clone());
            async move {
                let id = msg.attributes.get("X-Id").unwrap_or("").to_owned();
                if id == "1" {
                    let token = ctx.cancellation_token().clone();
                    tokio::spawn(async move {
                        // After this message was settled and the next one started.
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        token.cancel();
                        done.notify_one();
                    });
                } else {
                    tokio::time::timeout(Duration::from_secs(10), done.notified())
                        .await
                        .expect("the kept token was cancelled");
                }
                if ctx.is_cancelled() {
                    c.lock().unwrap().push(id);
                }
                Ok(())
            }
        }),
    );
    eventually("both settled", || source.settled().len() == 2).await;
    assert!(
        cancelled_seen.lock().unwrap().is_empty(),
        "messages {:?} got a context another message's leftover token cancelled",
        cancelled_seen.lock().unwrap()
    );
    stop(&engine, task).await;
}

#[cfg(feature = "mem")]
#[tokio::test]
async fn a_dead_letter_topic_that_cancels_its_context_does_not_abort_the_server() {
    use crate::Topic;
    let source = Scripted::with(vec![Step::Deliver(vec![1]), Step::Deliver(vec![2])]);
    let dlq = crate::mem::MemQueue::named("dlq", 16).unwrap();
    let inner = dlq.topic();
    let topic = TopicFunc::new(move |ctx: &Context| {
        let writer = inner.new_writer(ctx);
        ctx.cancel();
        writer
    });
    let engine = Engine::new(source.clone(), fast().dead_letter(topic)).unwrap();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let task = serve_in_background(
        &engine,
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let g = g.clone();
            async move {
                if msg.attributes.get("X-Id") == Some("1") {
                    return Err(Error::reject("poison"));
                }
                g.notified().await;
                if ctx.is_cancelled() {
                    return Err(Error::other("cancelled"));
                }
                Ok(())
            }
        }),
    );
    eventually("message 1 settled", || !source.settled().is_empty()).await;
    gate.notify_one();
    eventually("message 2 settled", || source.settled().len() == 2).await;
    assert_eq!(source.settled()[1], (2, Settle::Ack));
    stop(&engine, task).await;
}

/// Whether `cond` holds once the tasks have run as far as they can without the clock
/// moving (a paused clock only moves when every task waits on it).
async fn without_waiting(cond: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    cond()
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_at_once_and_a_partial_one_when_the_interval_passes() {
    let source = Scripted::default();
    let (tx, settler) = spawn_settler(&source, 4, Duration::from_secs(10));
    let start = tokio::time::Instant::now();
    let ack = |token| Settlement {
        token,
        action: Settle::Ack,
    };
    for id in 1..=3 {
        tx.send(ack(id));
    }
    assert!(
        !without_waiting(|| !source.settled().is_empty()).await,
        "a partial batch went out before its interval"
    );
    tx.send(ack(4));
    assert!(
        without_waiting(|| source.settled().len() == 4).await,
        "a full batch waited for the interval"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(*source.0.batch_sizes.lock().unwrap(), [4]);
    // Two more: they go when the interval has passed, together.
    tx.send(ack(5));
    tx.send(ack(6));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(source.settled().len(), 6);
    assert_eq!(*source.0.batch_sizes.lock().unwrap(), [4, 2]);
    drop(tx);
    settler.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn held_nacks_due_at_the_same_instant_are_all_settled_when_due() {
    let source = Scripted::default();
    source.0.no_nack_delay.store(true, Ordering::SeqCst);
    let (tx, settler) = spawn_settler(&source, 8, Duration::ZERO);
    // One batch, one clock reading: both due at the very same instant.
    for token in [1, 2] {
        tx.send(Settlement {
            token,
            action: Settle::Nack {
                delay: Some(Duration::from_secs(1)),
            },
        });
    }
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(source.settled().is_empty(), "settled before the delay");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(
        without_waiting(|| source.settled().len() == 2).await,
        "held nacks lost or late: {:?}",
        source.settled()
    );
    assert_eq!(
        source.settled(),
        [
            (1, Settle::Nack { delay: None }),
            (2, Settle::Nack { delay: None })
        ]
    );
    drop(tx);
    settler.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_out_the_backoff_after_a_failed_fetch_or_reconnect() {
    // A minute between attempts: shutdown must not wait for it, whether the server is
    // backing off after a failed fetch or between attempts to reconnect.
    let minute = Backoff::new(Duration::from_secs(60), Duration::from_secs(60), 1.0).unwrap();
    for failure in [Error::other("refused"), Error::connection_lost("gone")] {
        let source = Scripted::with(vec![Step::Fail(failure)]);
        source
            .0
            .reconnect_failures
            .store(u32::MAX, Ordering::SeqCst);
        let engine = Engine::new(source.clone(), fast().reconnect_backoff(minute)).unwrap();
        let task = serve_acking(&engine);
        eventually("the fetch failed", || {
            engine.health().consecutive_failures > 0
        })
        .await;
        let start = tokio::time::Instant::now();
        stop(&engine, task).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "shutdown waited out the backoff"
        );
    }
}

/// Settlements sent from several threads while the settler takes them as they come (a
/// batch of one): the settler may take a settlement before its sender has counted it, and
/// that must neither panic the sender (which would lose the worker and its slot, and stall
/// a server with concurrency 1) nor lose a settlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_counted_after_the_settler_took_them_are_neither_lost_nor_a_panic() {
    const THREADS: u64 = 2;
    const EACH: u64 = 20_000;
    let source = Scripted::default();
    let (tx, settler) = spawn_settler(&source, 1, Duration::from_secs(3600));
    let tx = Arc::new(tx);
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    tx.send(Settlement {
                        token: t * EACH + i,
                        action: Settle::Ack,
                    });
                    // Now and then, let the settler go idle before the next one.
                    if i % 4 == 0 {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sender panicked");
    }
    drop(tx);
    settler.await.unwrap();
    assert_eq!(source.settled().len() as u64, THREADS * EACH);
}

/// A receiver's error whose `Display` panics (user code the engine runs outside the
/// receiver's own panic guard, to word the reason).
#[derive(Debug)]
struct PanicsWhenShown;

impl std::fmt::Display for PanicsWhenShown {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("this error panics when shown, on purpose")
    }
}

impl std::error::Error for PanicsWhenShown {}

/// An error that panics when dropped, which the engine does after deciding its fate.
#[derive(Debug)]
struct PanicsWhenDropped;

impl std::fmt::Display for PanicsWhenDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("panics when dropped")
    }
}

impl std::error::Error for PanicsWhenDropped {}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("this error panics when dropped, on purpose");
        }
    }
}

/// A receiver's future that is done at once, with `answer`, and panics when dropped.
struct FinishedThenPanicsWhenDropped {
    answer: Option<Result<(), Error>>,
}

impl FinishedThenPanicsWhenDropped {
    fn answering(answer: Result<(), Error>) -> Self {
        FinishedThenPanicsWhenDropped {
            answer: Some(answer),
        }
    }
}

impl Future for FinishedThenPanicsWhenDropped {
    type Output = Result<(), Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(self.answer.take().unwrap_or(Ok(())))
    }
}

impl Drop for FinishedThenPanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("this future panics when dropped, on purpose");
        }
    }
}

/// A receiver whose future panics as it is dropped, after answering, gets the fate of its
/// answer: at its last attempt a failure is given up, not retried for ever, and a success
/// is acked. (The settlement goes out before the future is dropped; the panic then ends
/// the worker, which is replaced. It used to come first, and the message counted a
/// failed attempt whatever the receiver answered.)
#[tokio::test]
async fn a_receiver_future_that_panics_when_dropped_keeps_the_fate_of_its_answer() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2])]);
    source.set_attempt(1, 3);
    let engine = Engine::new(source.clone(), fast().concurrency(1).max_attempts(3)).unwrap();
    let answering = ReceiverFunc::new(|ctx: Context, _: Message| {
        FinishedThenPanicsWhenDropped::answering(
            match ctx.message_id().and_then(MessageId::as_u64) {
                Some(1) => Err(Error::other("failed")),
                _ => Ok(()),
            },
        )
    });
    assert_eq!(
        settlements(&engine, &source, 2, answering).await,
        [(1, Settle::Reject), (2, Settle::Ack)]
    );
}

/// The fate of a failed message is kept when its error panics as it is dropped: at its
/// last attempt it is given up, not retried (and, with a dead-letter topic, published
/// again) for ever.
#[tokio::test]
async fn an_error_that_panics_when_dropped_does_not_change_its_messages_fate() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2])]);
    source.set_attempt(1, 3);
    let engine = Engine::new(source.clone(), fast().concurrency(1).max_attempts(3)).unwrap();
    let failing =
        ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::other(PanicsWhenDropped)) });
    assert_eq!(
        settlements(&engine, &source, 2, failing).await,
        [(1, Settle::Reject), (2, Settle::Nack { delay: None })]
    );
}

#[tokio::test]
async fn an_error_that_panics_when_shown_is_retried_then_given_up_and_serving_goes_on() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2])]);
    source.set_attempt(1, 3);
    let engine = Engine::new(source.clone(), fast().concurrency(1).max_attempts(3)).unwrap();
    let failing = ReceiverFunc::new(|ctx: Context, _: Message| async move {
        match ctx.message_id().and_then(MessageId::as_u64) {
            Some(1) => Err(Error::reject(PanicsWhenShown)),
            _ => Err(Error::other(PanicsWhenShown)),
        }
    });
    // 1 was a reject: given up (no dead-letter topic: rejected), with the reason worded
    // without the error. 2, at its first attempt of three, is retried.
    assert_eq!(
        settlements(&engine, &source, 2, failing).await,
        [(1, Settle::Reject), (2, Settle::Nack { delay: None })]
    );
}

#[tokio::test]
async fn a_dead_letter_topic_that_panics_is_a_failed_dead_letter_retried_later() {
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2])]);
    let panics = TopicFunc::new(|_: &Context| -> Result<BufferedWriter<Down>, Error> {
        panic!("the dead-letter topic panics, on purpose")
    });
    let engine = Engine::new(source.clone(), fast().concurrency(1).dead_letter(panics)).unwrap();
    let poison = ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject("poison")) });
    let settled = settlements(&engine, &source, 2, poison).await;
    assert!(
        settled
            .iter()
            .all(|(_, s)| matches!(s, Settle::Nack { delay: Some(_) })),
        "{settled:?}"
    );
}

/// A metrics recorder whose `received` counter panics at its first increment: user code
/// the engine runs outside the receiver's guard.
#[cfg(feature = "metrics")]
struct PanicsOnFirstReceived {
    armed: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(feature = "metrics")]
impl metrics::CounterFn for PanicsOnFirstReceived {
    fn increment(&self, _: u64) {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the metrics recorder panics, on purpose");
        }
    }

    fn absolute(&self, _: u64) {}
}

#[cfg(feature = "metrics")]
impl metrics::Recorder for PanicsOnFirstReceived {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == crate::metrics::RECEIVED {
            metrics::Counter::from_arc(Arc::new(PanicsOnFirstReceived {
                armed: self.armed.clone(),
            }))
        } else {
            metrics::Counter::noop()
        }
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A panic the engine cannot catch (here a metrics recorder's, as the first message is
/// counted) ends the worker running that message, but not the server: another worker
/// takes the deliveries queued behind it (with concurrency 1 and nothing else to start
/// one, they used to wait for ever), and the message counts a failed attempt.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn a_worker_lost_to_a_panic_is_replaced_for_the_work_queued_behind_it() {
    let recorder = PanicsOnFirstReceived {
        armed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    // This test's runtime runs every task on this thread, where the recorder is installed.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let source = Scripted::with(vec![Step::Deliver(vec![1, 2])]);
    let engine = Engine::new(source.clone(), fast().concurrency(1).prefetch(1)).unwrap();
    let acking = ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) });
    // The message whose worker was lost counts a failed attempt rather than stay
    // unacknowledged while the server goes on.
    assert_eq!(
        settlements(&engine, &source, 2, acking).await,
        [(1, Settle::Nack { delay: None }), (2, Settle::Ack)]
    );
    assert!(
        !recorder.armed.load(Ordering::SeqCst),
        "the recorder panicked"
    );
}

/// A transport's settle that panics is a failed settlement: retried, and given up after
/// the retries (the broker redelivers), while the settler goes on with what comes next.
#[tokio::test]
async fn a_settle_that_panics_is_a_failed_settlement_and_settling_goes_on() {
    let source = Scripted::with(vec![Step::Deliver(vec![1])]);
    source.0.settle_panics.store(1, Ordering::SeqCst);
    let engine = Engine::new(source.clone(), fast().settle_retries(3)).unwrap();
    let task = serve_acking(&engine);
    eventually("acked on the retry", || source.settled().len() == 1).await;
    stop(&engine, task).await;

    // No retries: the batch is given up, and the next settlement is still applied.
    let source = Scripted::default();
    source.0.settle_panics.store(1, Ordering::SeqCst);
    let (tx, settler) = spawn_settler(&source, 1, Duration::ZERO);
    let ack = |token| Settlement {
        token,
        action: Settle::Ack,
    };
    tx.send(ack(1));
    eventually("the panic was seen", || {
        source.0.settle_panics.load(Ordering::SeqCst) == 0
    })
    .await;
    tx.send(ack(2));
    eventually("2 acked", || source.settled() == [(2, Settle::Ack)]).await;
    drop(tx);
    settler.await.unwrap();
}

/// A transport's fetch that panics is a failed fetch: counted against the server's health,
/// backed off, and tried again, rather than a panic out of `serve`.
#[tokio::test]
async fn a_fetch_that_panics_is_a_failed_fetch_and_serving_goes_on() {
    let source = Scripted::with(vec![Step::Panic, Step::Deliver(vec![1])]);
    let engine = Engine::new(source.clone(), fast()).unwrap();
    let task = serve_acking(&engine);
    eventually("acked after the panic", || {
        source.settled() == [(1, Settle::Ack)]
    })
    .await;
    stop(&engine, task).await;
}

/// Only a broker that stops delivering at the in-flight limit gets the smaller batches: a
/// source that says it does not keeps batches of the full `ack_batch_size`.
#[tokio::test]
async fn a_source_without_a_window_keeps_full_batches() {
    let source = Scripted::with(vec![Step::Deliver(vec![1]), Step::Deliver(vec![2])]);
    source.0.unwindowed.store(true, Ordering::SeqCst);
    let engine = Engine::new(
        source.clone(),
        fast()
            .concurrency(1)
            .ack_batch_size(2)
            .ack_interval(Duration::from_secs(3600)),
    )
    .unwrap();
    let task = serve_acking(&engine);
    eventually("both acked", || source.settled().len() == 2).await;
    assert_eq!(*source.0.batch_sizes.lock().unwrap(), [2]);
    stop(&engine, task).await;
}

//! Delivery policies, routing and supervised dispatch, as a user composes them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgio::decorators::{
    ConcurrencyLimit, ConsumerGroup, DeadLetter, Dedupe, MemoryDedupeStore, RateLimit, Retry,
    Router, Routing, Timeout,
};
use msgio::testing::Recorder;
use msgio::{
    Backoff, Context, Error, Message, MultiServer, Receiver, ReceiverFunc, SafeReceiver, Server,
    ServerConfig, Topic, keys,
};

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(5), Duration::from_millis(20), 2.0).unwrap()
}

fn keyed(key: &str, body: &'static str) -> Message {
    let mut msg = Message::new(body);
    msg.attributes.set("Idempotency-Key", key);
    msg
}

fn at(attempt: u32) -> Context {
    Context::background().with_attempt(attempt)
}

/// Waits until `cond`, for at most 10 s.
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

/// Serves `dlq` until `n` dead letters were read, and returns them.
async fn read_letters(dlq: &msgio::mem::MemQueue, n: usize) -> Vec<msgio::testing::Received> {
    let letters = Recorder::new();
    let server = dlq.server(ServerConfig::new()).unwrap();
    let serving = server.clone();
    let l = letters.clone();
    let task = tokio::spawn(async move { serving.serve(l).await });
    let got = letters.wait_for(n, Duration::from_secs(10)).await.unwrap();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    task.await.unwrap().unwrap_err();
    got
}

#[tokio::test]
async fn retry_backs_off_then_rejects_at_the_last_attempt() {
    let failing = ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::other("down")) });
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0).unwrap();
    let retry = Retry::new(failing, backoff, 4);
    for (attempt, step) in [(1u64, 100u64), (2, 200), (3, 400)] {
        let err = retry
            .receive(at(attempt as u32), Message::default())
            .await
            .unwrap_err();
        let delay = err.retry_delay().expect("a retry carries its delay");
        assert!(
            delay >= Duration::from_millis(step / 2) && delay <= Duration::from_millis(step),
            "attempt {attempt}: {delay:?}"
        );
    }
    let last = retry.receive(at(4), Message::default()).await.unwrap_err();
    assert!(
        last.is_reject() && last.to_string().contains("attempt 4 of 4"),
        "{last}"
    );

    // A delay the receiver named wins; a reject passes through.
    let named = Retry::new(
        ReceiverFunc::new(|_: Context, _: Message| async {
            Err(Error::retry_after(Duration::from_secs(9), "later"))
        }),
        fast_backoff(),
        5,
    );
    let err = named.receive(at(1), Message::default()).await.unwrap_err();
    assert_eq!(err.retry_delay(), Some(Duration::from_secs(9)));
    // A reject passes through untouched, the receiver's own error inside it: at the last
    // attempt too, where another failure would have been turned into a reject.
    #[derive(Debug)]
    struct Malformed;
    impl std::fmt::Display for Malformed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("malformed order")
        }
    }
    impl std::error::Error for Malformed {}
    let rejecting = Retry::new(
        ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject(Malformed)) }),
        fast_backoff(),
        5,
    );
    for attempt in [1, 5] {
        let err = rejecting
            .receive(at(attempt), Message::default())
            .await
            .unwrap_err();
        assert!(err.is_reject(), "{err}");
        let source = std::error::Error::source(&err).expect("the reject's reason");
        assert!(
            source.downcast_ref::<Malformed>().is_some(),
            "attempt {attempt}: the receiver's error was replaced: {source:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_while_others_flow() {
    let queue = msgio::mem::MemQueue::named("orders", 1024).unwrap();
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (a, h) = (attempts.clone(), handled.clone());
    let handler = ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let (a, h) = (a.clone(), h.clone());
        async move {
            let body = msg.body.read_to_bytes(1 << 20).await?;
            if body == "poison" {
                a.fetch_add(1, Ordering::SeqCst);
                panic!("cannot parse {body:?}");
            }
            h.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let receiver = DeadLetter::new(
        Retry::new(SafeReceiver::new(handler), fast_backoff(), 3),
        dlq.topic(),
    );
    // The engine alone would retry for ever here: the decorators bound it.
    let server = queue
        .server(ServerConfig::new().unlimited_attempts())
        .unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });

    let topic = queue.topic();
    let mut poison = Message::new("poison");
    poison.attributes.add("X-Tag", "a");
    poison.attributes.add("X-Tag", "b");
    topic.publish(&Context::background(), poison).await.unwrap();
    for i in 0..50 {
        topic
            .publish(&Context::background(), Message::new(format!("good {i}")))
            .await
            .unwrap();
    }
    eventually("the good messages and the dead letter", || {
        handled.load(Ordering::SeqCst) == 50 && dlq.len() == 1
    })
    .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    task.await.unwrap().unwrap_err();

    let got = read_letters(&dlq, 1).await;
    let letter = &got[0];
    assert_eq!(letter.body, "poison");
    assert_eq!(
        letter.attributes.get_all("X-Tag").collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(letter.attributes.get(keys::ATTEMPTS), Some("3"));
    assert_eq!(letter.attributes.get(keys::SOURCE), Some("orders"));
    assert!(letter.attributes.get(keys::MESSAGE_ID).is_some());
    let reason = letter.attributes.get(keys::DEAD_LETTER_REASON).unwrap();
    assert!(reason.contains("cannot parse"), "{reason}");
}

#[tokio::test]
async fn dedupe_marks_a_key_done_only_after_success() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let dedupe = Dedupe::new(
        ReceiverFunc::new(move |_: Context, _: Message| {
            let first = r.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err(Error::other("first try fails"))
                } else {
                    Ok(())
                }
            }
        }),
        MemoryDedupeStore::new(100),
    );
    dedupe.receive(at(1), keyed("k", "x")).await.unwrap_err();
    dedupe.receive(at(2), keyed("k", "x")).await.unwrap();
    dedupe.receive(at(1), keyed("k", "x")).await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "a failure was deduped away, or a success ran twice"
    );
    // No key: no dedupe.
    dedupe.receive(at(1), Message::new("x")).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_key_run_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (r, g) = (runs.clone(), gate.clone());
    let dedupe = Arc::new(
        Dedupe::new(
            ReceiverFunc::new(move |_: Context, _: Message| {
                r.fetch_add(1, Ordering::SeqCst);
                let g = g.clone();
                async move {
                    g.notified().await;
                    Ok(())
                }
            }),
            MemoryDedupeStore::new(100),
        )
        .busy_retry(Duration::from_millis(50)),
    );
    // The first delivery is inside the receiver, holding the key...
    let first = dedupe.clone();
    let first = tokio::spawn(async move { first.receive(at(1), keyed("same", "x")).await });
    eventually("the first delivery runs", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    // ...when the second arrives: it is told to come back later, not run.
    let busy = dedupe.receive(at(1), keyed("same", "x")).await.unwrap_err();
    assert_eq!(
        busy.retry_delay(),
        Some(Duration::from_millis(50)),
        "{busy}"
    );
    gate.notify_one();
    first.await.unwrap().unwrap();
    // Retried after the first finished: deduped.
    dedupe.receive(at(2), keyed("same", "x")).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_memory_store_expires_and_stays_bounded() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let store = MemoryDedupeStore::new(32);
    let dedupe = Dedupe::new(
        ReceiverFunc::new(move |_: Context, _: Message| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
        store.clone(),
    )
    .done_ttl(Duration::from_millis(30));
    dedupe.receive(at(1), keyed("a", "x")).await.unwrap();
    dedupe.receive(at(1), keyed("a", "x")).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    dedupe.receive(at(1), keyed("a", "x")).await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "an expired key still deduped"
    );
    for key in 0..200 {
        let mut msg = Message::new("x");
        msg.attributes.set("Idempotency-Key", format!("key-{key}"));
        dedupe.receive(at(1), msg).await.unwrap();
    }
    assert!(
        store.len() <= 32,
        "{} keys kept with a capacity of 32",
        store.len()
    );
}

#[tokio::test]
async fn timeout_cancels_the_context_and_is_retryable() {
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let s = saw_cancel.clone();
    let slow = ReceiverFunc::new(move |ctx: Context, _: Message| {
        let s = s.clone();
        async move {
            // Work the receiver handed to another task, with its context.
            tokio::spawn(async move {
                ctx.cancelled().await;
                s.store(true, Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    });
    let err = Timeout::new(slow, Duration::from_millis(20))
        .receive(Context::background(), Message::default())
        .await
        .unwrap_err();
    assert!(
        !err.is_reject() && err.to_string().contains("timed out after 20ms"),
        "{err}"
    );
    eventually("the context was cancelled", || {
        saw_cancel.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold() {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let limited = Arc::new(
        ConcurrencyLimit::new(
            ReceiverFunc::new(move |_: Context, _: Message| {
                let (n, p) = (n.clone(), p.clone());
                async move {
                    p.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
            3,
        )
        .unwrap(),
    );
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let l = limited.clone();
            tokio::spawn(async move { l.receive(Context::background(), Message::default()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // The limit is respected, and reached: thirty messages waited.
    assert_eq!(peak.load(Ordering::SeqCst), 3, "peak concurrency");

    // 20 messages at 100 a second with bursts of 5: the last waits about 150 ms.
    let rated = RateLimit::new(
        ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
        100.0,
        5,
    )
    .unwrap();
    let start = tokio::time::Instant::now();
    for _ in 0..20 {
        rated
            .receive(Context::background(), Message::default())
            .await
            .unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(140),
        "20 messages in {:?}",
        start.elapsed()
    );

    assert!(
        ConcurrencyLimit::new((), 0)
            .unwrap_err()
            .to_string()
            .contains("concurrency limit")
    );
    assert!(
        RateLimit::new((), 0.0, 1)
            .unwrap_err()
            .to_string()
            .contains("rate")
    );
}

#[tokio::test]
async fn the_router_dispatches_by_exact_value_glob_and_fallback() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let named = |name: &'static str| {
        let seen = seen.clone();
        ReceiverFunc::new(move |_: Context, _: Message| {
            seen.lock().unwrap().push(name);
            async { Ok(()) }
        })
    };
    let router = Router::new("type")
        .route("order.created", named("created"))
        .route("order.*", named("orders"))
        .route("invoice.?", named("invoice"))
        .fallback(named("fallback"));
    for value in ["order.created", "order.paid", "invoice.1", "invoice.10"] {
        let mut msg = Message::default();
        msg.attributes.set("Type", value);
        router.receive(Context::background(), msg).await.unwrap();
    }
    router
        .receive(Context::background(), Message::default())
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["created", "orders", "invoice", "fallback", "fallback"]
    );

    let strict = Router::new("Type").route("order.*", named("orders"));
    let mut msg = Message::default();
    msg.attributes.set("Type", "refund.issued");
    let err = strict
        .receive(Context::background(), msg)
        .await
        .unwrap_err();
    assert!(
        err.is_reject() && err.to_string().contains("\"refund.issued\""),
        "{err}"
    );
    let err = strict
        .receive(Context::background(), Message::default())
        .await
        .unwrap_err();
    assert!(
        err.is_reject() && err.to_string().contains("no Type attribute"),
        "{err}"
    );
}

/// A member that records what it got, and panics when told to.
fn member(
    name: usize,
    log: &Arc<Mutex<Vec<(usize, String)>>>,
    crash: Arc<AtomicBool>,
) -> impl Receiver + use<> {
    let log = log.clone();
    ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let (log, crash) = (log.clone(), crash.clone());
        async move {
            let body = msg.body.read_to_bytes(1024).await?;
            if crash.load(Ordering::SeqCst) {
                panic!("member {name} crashed");
            }
            log.lock()
                .unwrap()
                .push((name, String::from_utf8(body.to_vec()).unwrap()));
            Ok(())
        }
    })
}

#[tokio::test]
async fn a_consumer_group_spreads_keeps_keys_together_and_survives_a_crash() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let calm = || Arc::new(AtomicBool::new(false));
    let round = ConsumerGroup::new(Routing::RoundRobin)
        .member(member(0, &log, calm()))
        .member(member(1, &log, calm()))
        .member(member(2, &log, calm()));
    for i in 0..6 {
        round
            .receive(Context::background(), Message::new(format!("m{i}")))
            .await
            .unwrap();
    }
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for (m, _) in log.lock().unwrap().drain(..) {
        *per.entry(m).or_default() += 1;
    }
    assert_eq!(per.values().copied().collect::<Vec<_>>(), [2, 2, 2]);

    let hashed = ConsumerGroup::new(Routing::HashKey("customer".into()))
        .member(member(0, &log, calm()))
        .member(member(1, &log, calm()))
        .member(member(2, &log, calm()));
    for i in 0..30 {
        let mut msg = Message::new(format!("c{}-{i}", i % 5));
        msg.attributes.set("Customer", format!("c{}", i % 5));
        hashed.receive(Context::background(), msg).await.unwrap();
    }
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (m, body) in log.lock().unwrap().drain(..) {
        let key = body.split('-').next().unwrap().to_owned();
        assert_eq!(
            *owner.entry(key.clone()).or_insert(m),
            m,
            "key {key} moved between members"
        );
    }

    // Member 0 crashes on everything: its messages go to the others, and it is left out.
    let crashing = Arc::new(AtomicBool::new(true));
    let group = ConsumerGroup::new(Routing::RoundRobin)
        .cooldown(Duration::from_millis(200))
        .member(member(0, &log, crashing.clone()))
        .member(member(1, &log, calm()));
    for i in 0..4 {
        group
            .receive(Context::background(), Message::new(format!("r{i}")))
            .await
            .unwrap();
    }
    let handled: Vec<_> = log.lock().unwrap().drain(..).collect();
    assert_eq!(
        handled.len(),
        4,
        "a message was lost in the crash: {handled:?}"
    );
    assert!(handled.iter().all(|(m, _)| *m == 1));
    assert_eq!(group.available_members(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        group.available_members(),
        2,
        "the crashed member never came back"
    );

    // Every member crashing: a retryable error that says so.
    let doomed = ConsumerGroup::new(Routing::LeastLoaded)
        .member(member(0, &log, crashing.clone()))
        .member(member(1, &log, crashing.clone()));
    let err = doomed
        .receive(Context::background(), Message::new("x"))
        .await
        .unwrap_err();
    assert!(!err.is_reject(), "{err}");
    assert!(
        err.to_string()
            .contains("no consumer group member available"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiserver_shares_by_weight_and_shuts_everything_down() {
    const EACH: usize = 2000;
    let heavy = msgio::mem::MemQueue::named("heavy", EACH).unwrap();
    let light = msgio::mem::MemQueue::named("light", EACH).unwrap();
    for i in 0..EACH {
        heavy
            .topic()
            .publish(&Context::background(), Message::new(format!("{i}")))
            .await
            .unwrap();
        light
            .topic()
            .publish(&Context::background(), Message::new(format!("{i}")))
            .await
            .unwrap();
    }
    let multi = MultiServer::new(2)
        .unwrap()
        .add(heavy.server(ServerConfig::new().concurrency(8)).unwrap(), 3)
        .unwrap()
        .add(light.server(ServerConfig::new().concurrency(8)).unwrap(), 1)
        .unwrap();
    let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let c = counts.clone();
    let receiver = ReceiverFunc::new(move |ctx: Context, _: Message| {
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_micros(200)).await;
            *c.lock()
                .unwrap()
                .entry(ctx.source().unwrap().to_owned())
                .or_default() += 1;
            Ok(())
        }
    });
    let serving = multi.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    eventually("800 messages", || {
        counts.lock().unwrap().values().sum::<usize>() >= 800
    })
    .await;
    let snapshot = counts.lock().unwrap().clone();
    multi.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
    let total = snapshot.values().sum::<usize>() as f64;
    let share = snapshot["heavy"] as f64 / total;
    assert!(
        (0.65..=0.85).contains(&share),
        "heavy got {share:.3} of {snapshot:?}"
    );
    eprintln!("weighted share: heavy {share:.3} of {snapshot:?}");
    assert!(
        !heavy.is_empty() && !light.is_empty(),
        "a source ran dry: not saturated"
    );
    // Every server is closed: serving again ends at once.
    let again = tokio::time::timeout(Duration::from_secs(5), multi.serve(Recorder::new())).await;
    assert!(matches!(again, Ok(Err(Error::ServerClosed))), "{again:?}");
}

/// Panics inside the policy decorators count as failures whichever order they are stacked
/// in: a dedupe claim is released, a retry budget applies, the poison is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_failures_wherever_safe_receiver_sits() {
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let panicking = ReceiverFunc::new(move |_: Context, _: Message| {
        r.fetch_add(1, Ordering::SeqCst);
        async { panic!("always") }
    });
    // SafeReceiver outermost, as a user may well write it.
    let stack = SafeReceiver::new(DeadLetter::new(
        Retry::new(
            Dedupe::new(panicking, MemoryDedupeStore::new(10)),
            fast_backoff(),
            3,
        ),
        dlq.topic(),
    ));
    for attempt in 1..=3 {
        let result = stack.receive(at(attempt), keyed("k", "poison")).await;
        if attempt < 3 {
            let err = result.unwrap_err();
            assert!(err.retry_delay().is_some(), "attempt {attempt}: {err}");
        } else {
            result.unwrap();
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the dedupe claim was not released after a panic"
    );
    assert_eq!(dlq.len(), 1);
}

#[tokio::test]
async fn a_group_member_that_cancels_its_context_and_crashes_hands_on_a_live_one() {
    let cancelled_at_second = Arc::new(AtomicBool::new(false));
    let c = cancelled_at_second.clone();
    let group = ConsumerGroup::new(Routing::RoundRobin)
        .member(ReceiverFunc::new(|ctx: Context, _: Message| async move {
            ctx.cancel();
            panic!("crashed after cancelling its context");
        }))
        .member(ReceiverFunc::new(move |ctx: Context, _: Message| {
            c.store(ctx.is_cancelled(), Ordering::SeqCst);
            async { Ok(()) }
        }));
    let ctx = Context::background();
    group.receive(ctx.clone(), Message::new("x")).await.unwrap();
    assert!(
        !cancelled_at_second.load(Ordering::SeqCst),
        "the re-routed member got the context the crashed one cancelled"
    );
    assert!(
        !ctx.is_cancelled(),
        "a member cancelled its caller's context"
    );
}

/// Serves one message with `receiver` on a queue of its own under `config`, and returns the
/// dead letter that reached `dlq`.
async fn dead_letter_of<R: Receiver + 'static>(
    receiver: R,
    config: ServerConfig,
    dlq: &msgio::mem::MemQueue,
) -> msgio::testing::Received {
    let queue = msgio::mem::MemQueue::named("orders", 16).unwrap();
    let server = queue.server(config).unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    queue
        .topic()
        .publish(&Context::background(), Message::new("fails"))
        .await
        .unwrap();
    eventually("the dead letter", || dlq.len() == 1).await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    task.await.unwrap().unwrap_err();
    read_letters(dlq, 1).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_retry_and_dead_letter_decide_alike_and_give_one_reason() {
    let failing =
        || ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::other("always fails")) });
    let expected = "attempt 3 of 3 failed: always fails";

    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let config = ServerConfig::new().max_attempts(3).dead_letter(dlq.topic());
    let by_engine = dead_letter_of(failing(), config, &dlq).await;

    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let config = ServerConfig::new()
        .unlimited_attempts()
        .dead_letter(dlq.topic());
    let by_retry = dead_letter_of(Retry::new(failing(), fast_backoff(), 3), config, &dlq).await;

    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let config = ServerConfig::new().unlimited_attempts();
    let receiver = DeadLetter::new(failing(), dlq.topic()).max_attempts(3);
    let by_decorator = dead_letter_of(receiver, config, &dlq).await;

    for (who, letter) in [
        ("the engine", &by_engine),
        ("Retry", &by_retry),
        ("DeadLetter", &by_decorator),
    ] {
        assert_eq!(
            letter.attributes.get(keys::DEAD_LETTER_REASON),
            Some(expected),
            "the reason {who} gave"
        );
        assert_eq!(letter.attributes.get(keys::ATTEMPTS), Some("3"), "{who}");
        assert_eq!(letter.body, "fails", "{who}");
    }

    // A reject is given up at once, with its own reason, by all three.
    let rejecting =
        || ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject("poison")) });
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let config = ServerConfig::new().max_attempts(3).dead_letter(dlq.topic());
    let by_engine = dead_letter_of(rejecting(), config, &dlq).await;
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let config = ServerConfig::new().dead_letter(dlq.topic());
    let by_retry = dead_letter_of(Retry::new(rejecting(), fast_backoff(), 3), config, &dlq).await;
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let receiver = DeadLetter::new(rejecting(), dlq.topic()).max_attempts(3);
    let by_decorator = dead_letter_of(receiver, ServerConfig::new(), &dlq).await;
    for letter in [&by_engine, &by_retry, &by_decorator] {
        assert_eq!(
            letter.attributes.get(keys::DEAD_LETTER_REASON),
            Some("poison")
        );
        assert_eq!(letter.attributes.get(keys::ATTEMPTS), Some("1"));
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_lets_a_burst_through_then_the_rate() {
    // 100 a second, bursts of 5: twenty messages arriving at once start at 0 ms (five of
    // them), then one every 10 ms, the last at 150 ms.
    let started = Arc::new(Mutex::new(Vec::new()));
    let s = started.clone();
    let origin = tokio::time::Instant::now();
    let rated = Arc::new(
        RateLimit::new(
            ReceiverFunc::new(move |_: Context, _: Message| {
                s.lock().unwrap().push(origin.elapsed());
                async { Ok(()) }
            }),
            100.0,
            5,
        )
        .unwrap(),
    );
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let rated = rated.clone();
            tokio::spawn(async move {
                rated
                    .receive(Context::background(), Message::default())
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut started = started.lock().unwrap().clone();
    started.sort();
    let ms: Vec<f64> = started.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    for (i, at) in ms.iter().enumerate() {
        let expected = (i.saturating_sub(4) * 10) as f64;
        assert!(
            (at - expected).abs() < 1.0,
            "message {} started at {at:.3} ms, expected {expected} ms: {ms:?}",
            i + 1
        );
    }
}

#[tokio::test]
async fn least_loaded_sends_each_message_to_the_member_with_the_fewest_in_hand() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let holding = |name: usize| {
        let (log, release) = (log.clone(), release.clone());
        ReceiverFunc::new(move |_: Context, msg: Message| {
            let (log, release) = (log.clone(), release.clone());
            async move {
                let body = String::from_utf8(msg.body.as_bytes().unwrap().to_vec()).unwrap();
                log.lock().unwrap().push((name, body));
                // Held until the test lets go: it stays in this member's hands.
                release.acquire().await.unwrap().forget();
                Ok(())
            }
        })
    };
    let group = Arc::new(
        ConsumerGroup::new(Routing::LeastLoaded)
            .member(holding(0))
            .member(holding(1)),
    );
    let mut tasks = Vec::new();
    for i in 1..=4 {
        let g = group.clone();
        tasks.push(tokio::spawn(async move {
            g.receive(Context::background(), Message::new(format!("m{i}")))
                .await
        }));
        eventually("the message reached a member", || {
            log.lock().unwrap().len() == i
        })
        .await;
    }
    // In hand before each: (0, 0) -> the first of the tied, (1, 0) -> member 1,
    // (1, 1) -> member 0, (2, 1) -> member 1.
    let members: Vec<usize> = log.lock().unwrap().iter().map(|(m, _)| *m).collect();
    assert_eq!(members, [0, 1, 0, 1]);
    release.add_permits(4);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_failing_message_gets_ten_attempts_then_is_dead_lettered() {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let failing = ReceiverFunc::new(move |ctx: Context, _: Message| {
        a.lock().unwrap().push(ctx.attempt());
        async { Err(Error::other("always fails")) }
    });
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    assert_eq!(ServerConfig::new().attempt_limit(), Some(10));
    let letter = dead_letter_of(failing, ServerConfig::new().dead_letter(dlq.topic()), &dlq).await;
    assert_eq!(*attempts.lock().unwrap(), (1..=10).collect::<Vec<u32>>());
    assert_eq!(letter.attributes.get(keys::ATTEMPTS), Some("10"));
}

/// A dead-letter topic that refuses, as a NATS topic would, any attribute key holding a
/// space, and every body over `max_body` bytes; what it takes goes to `inner`.
#[derive(Clone, Debug)]
struct Picky {
    inner: msgio::mem::MemTopic,
    max_body: usize,
}

impl Topic for Picky {
    type Writer = msgio::transport::BufferedWriter<Picky>;
    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        Ok(msgio::transport::BufferedWriter::new(self.clone(), ctx))
    }
}

impl msgio::transport::Publish for Picky {
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>;
    fn publish(&self, ctx: &Context, out: msgio::transport::Outgoing) -> Self::Future {
        let (inner, max_body, ctx) = (self.inner.clone(), self.max_body, ctx.clone());
        Box::pin(async move {
            if let Some(key) = out.attributes.keys().find(|k| k.contains(' ')) {
                return Err(Error::InvalidAttribute {
                    key: key.to_owned(),
                    reason: "no spaces here".into(),
                });
            }
            if out.body.len() > max_body {
                return Err(Error::BodyTooLarge { limit: max_body });
            }
            inner
                .publish(&ctx, Message::from_parts(out.attributes, out.body))
                .await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_topic_cannot_carry_is_folded_not_retried_for_ever() {
    let rejecting = || {
        ReceiverFunc::new(|_: Context, _: Message| async { Err::<(), _>(Error::reject("poison")) })
    };
    // Serves one message that has an attribute the dead-letter topic refuses.
    let run = |receiver: BoxReceiverLike, config: ServerConfig| async move {
        let queue = msgio::mem::MemQueue::named("orders", 16).unwrap();
        let server = queue.server(config).unwrap();
        let serving = server.clone();
        let task = tokio::spawn(async move { serving.serve(receiver).await });
        let mut msg = Message::new("body");
        msg.attributes.add("with space", "a b");
        msg.attributes.add("X-Tag", "ü&=");
        queue
            .topic()
            .publish(&Context::background(), msg)
            .await
            .unwrap();
        (server, task, queue)
    };
    type BoxReceiverLike = msgio::BoxReceiver;
    for by_decorator in [false, true] {
        let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
        let picky = Picky {
            inner: dlq.topic(),
            max_body: 1 << 20,
        };
        let (receiver, config) = if by_decorator {
            (
                msgio::BoxReceiver::new(DeadLetter::new(rejecting(), picky)),
                ServerConfig::new(),
            )
        } else {
            (
                msgio::BoxReceiver::new(rejecting()),
                ServerConfig::new().dead_letter(picky),
            )
        };
        let (server, task, _queue) = run(receiver, config).await;
        eventually("the folded dead letter", || dlq.len() == 1).await;
        server.shutdown(Duration::from_secs(5)).await.unwrap();
        task.await.unwrap().unwrap_err();
        let got = read_letters(&dlq, 1).await;
        let letter = &got[0];
        assert_eq!(letter.body, "body");
        assert_eq!(
            letter.attributes.get(keys::ATTRIBUTES),
            Some("with%20space=a%20b&X-Tag=%C3%BC%26%3D"),
            "by decorator: {by_decorator}"
        );
        assert!(letter.attributes.get("X-Tag").is_none());
        let reason = letter.attributes.get(keys::DEAD_LETTER_REASON).unwrap();
        assert!(
            reason.contains("poison") && reason.contains("no spaces here"),
            "{reason}"
        );
    }

    // A body the topic will never take: rejected at its source, not retried for ever.
    let dlq = msgio::mem::MemQueue::named("dead", 16).unwrap();
    let picky = Picky {
        inner: dlq.topic(),
        max_body: 1,
    };
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let receiver = msgio::BoxReceiver::new(ReceiverFunc::new(move |_: Context, _: Message| {
        a.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(Error::reject("poison")) }
    }));
    let (server, task, queue) = run(receiver, ServerConfig::new().dead_letter(picky)).await;
    eventually("the message settled", || {
        attempts.load(Ordering::SeqCst) >= 1 && queue.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    task.await.unwrap().unwrap_err();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "retried a dead letter that can never go"
    );
    assert!(queue.is_empty() && dlq.is_empty());
}

/// A receiver's error that panics when dropped (a user type with a bad `Drop`).
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

/// `Retry` and `DeadLetter` keep the decision they made about a failure when the error
/// they are done with panics as it is dropped: `Retry` still rejects at the last attempt,
/// and `DeadLetter` still reports a message it dead-lettered as handled (a panic there
/// would be a failed attempt: the message back, and dead-lettered once more).
#[tokio::test]
async fn retry_and_dead_letter_keep_their_decision_when_an_error_panics_as_it_is_dropped() {
    let failing = || {
        ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::other(PanicsWhenDropped)) })
    };
    let retry = Retry::new(failing(), fast_backoff(), 2);
    let last = retry.receive(at(2), Message::default()).await.unwrap_err();
    assert!(last.is_reject(), "{last}");
    assert!(last.to_string().contains("panics when dropped"), "{last}");

    let dlq = msgio::mem::MemQueue::named("dead-letters", 16).unwrap();
    let dead_letter = DeadLetter::new(failing(), dlq.topic()).max_attempts(1);
    dead_letter
        .receive(at(1), Message::new("fails"))
        .await
        .unwrap();
    let letter = read_letters(&dlq, 1).await.remove(0);
    let reason = letter.attributes.get(keys::DEAD_LETTER_REASON).unwrap();
    assert!(reason.contains("panics when dropped"), "{reason}");
}

//! tower interop: a decorator stack built from layers behaves as the same stack nested by
//! hand, and tower's own middleware wraps a receiver through the adapters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use msgio::decorators::{
    ConcurrencyLimit, DeadLetter, Dedupe, MemoryDedupeStore, Retry, Router, Timeout,
};
use msgio::testing::{Received, Recorder, start};
use msgio::tower::{Layer, ReceiverBuilder, ReceiverService, ServiceReceiver};
use msgio::{
    Backoff, Context, Error, Message, Receiver, ReceiverFunc, SafeReceiver, ServerConfig, Topic,
    keys,
};

const PATIENCE: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(5);

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 2.0).unwrap()
}

/// The messages of the scenario: `(seq, Type, Idempotency-Key)`.
const MESSAGES: [(u64, &str, &str); 5] = [
    (1, "order.created", "k1"),
    // The same key again: deduped, never handed to the route.
    (2, "order.created", "k1"),
    // Fails every time: retried, then dead-lettered by DeadLetter after Retry gives up.
    (3, "order.failing", "k3"),
    // No route: rejected by the router, dead-lettered at once.
    (4, "invoice.sent", "k4"),
    // Panics: a failure like any other to Retry, so dead-lettered after three attempts.
    (5, "order.panics", "k5"),
];

/// What a stack did with the scenario: the route's calls (seq, attempt) and each dead
/// letter (seq, its attempts attribute, the failure its reason names).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    calls: Vec<(u64, u32)>,
    letters: BTreeMap<u64, (Option<String>, String)>,
}

fn orders(calls: Recorder) -> impl Receiver + Clone + 'static {
    ReceiverFunc::new(move |ctx: Context, msg: Message| {
        let calls = calls.clone();
        async move {
            let kind = msg.attributes.get("Type").unwrap_or("").to_owned();
            calls.receive(ctx, msg).await?;
            match kind.as_str() {
                "order.failing" => Err(Error::other("always fails")),
                "order.panics" => panic!("boom"),
                _ => Ok(()),
            }
        }
    })
}

/// Serves the scenario with the stack `build` makes from the route and a dead-letter topic.
async fn run<R, F>(build: F) -> Outcome
where
    R: Receiver + 'static,
    F: FnOnce(msgio::mem::MemTopic, Router) -> R,
{
    let (topic, server) = msgio::mem::channel(64).unwrap();
    let (dead_letters, dlq_server) = msgio::mem::channel(64).unwrap();
    let calls = Recorder::new();
    let router = Router::new("Type").route("order.*", orders(calls.clone()));
    let running = start(server, build(dead_letters, router));
    let letters = Recorder::new();
    let running_dlq = start(dlq_server, letters.clone());
    for (seq, kind, key) in MESSAGES {
        let mut msg = Message::new(format!("message {seq}"));
        msg.attributes.set("X-Kit-Seq", seq.to_string());
        msg.attributes.set("Type", kind);
        msg.attributes.set("Idempotency-Key", key);
        topic.publish(&Context::background(), msg).await.unwrap();
    }
    // Seq 3 and 5 once Retry gives up at their third attempt, and 4 (no route) at once.
    letters.wait_for(3, PATIENCE).await.unwrap();
    // Time for a late duplicate (seq 2 waits out a busy key if it came while 1 ran).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop(GRACE).await.unwrap();
    running_dlq.stop(GRACE).await.unwrap();
    let mut calls: Vec<(u64, u32)> = calls
        .received()
        .iter()
        .map(|r| (r.seq().unwrap(), r.attempt))
        .collect();
    calls.sort();
    let letters = letters
        .received()
        .iter()
        .map(|r: &Received| {
            let reason = r.attributes.get(keys::DEAD_LETTER_REASON).unwrap_or("");
            let named = ["always fails", "invoice.sent", "boom"]
                .into_iter()
                .find(|named| reason.contains(named))
                .unwrap_or(reason);
            (
                r.seq().unwrap(),
                (
                    r.attributes.get(keys::ATTEMPTS).map(str::to_owned),
                    named.to_owned(),
                ),
            )
        })
        .collect();
    Outcome { calls, letters }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_stack_behaves_the_same_nested_layered_and_through_service_builder() {
    // The README's stack, nested by hand.
    let nested = run(|dead_letters, router| {
        SafeReceiver::new(DeadLetter::new(
            Retry::new(
                Dedupe::new(router, MemoryDedupeStore::new(100)),
                backoff(),
                3,
            ),
            dead_letters,
        ))
    })
    .await;
    // The same, outside-in with msgio's builder.
    let layered = run(|dead_letters, router| {
        ReceiverBuilder::new()
            .layer(SafeReceiver::layer())
            .layer(DeadLetter::layer(dead_letters))
            .layer(Retry::layer(backoff(), 3))
            .layer(Dedupe::layer(MemoryDedupeStore::new(100)))
            .receiver(router)
    })
    .await;
    // The same layers in tower's own ServiceBuilder.
    let tower_built = run(|dead_letters, router| {
        tower::ServiceBuilder::new()
            .layer(SafeReceiver::layer())
            .layer(DeadLetter::layer(dead_letters))
            .layer(Retry::layer(backoff(), 3))
            .layer(Dedupe::layer(MemoryDedupeStore::new(100)))
            .service(router)
    })
    .await;
    // What the stack must do, whichever way it was written.
    assert_eq!(
        nested.calls,
        [(1, 1), (3, 1), (3, 2), (3, 3), (5, 1), (5, 2), (5, 3)],
        "{nested:?}"
    );
    assert_eq!(
        nested.letters,
        BTreeMap::from([
            (3, (Some("3".to_owned()), "always fails".to_owned())),
            (4, (Some("1".to_owned()), "invoice.sent".to_owned())),
            (5, (Some("3".to_owned()), "boom".to_owned())),
        ]),
        "{nested:?}"
    );
    assert_eq!(layered, nested, "layered with ReceiverBuilder");
    assert_eq!(tower_built, nested, "layered with tower::ServiceBuilder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_middleware_wraps_a_receiver_and_msgio_errors_keep_their_kind() {
    let (topic, server) =
        msgio::mem::channel_with(64, ServerConfig::new().max_attempts(3).concurrency(8)).unwrap();
    // Seq 1 is slow on its first attempt only; seq 2 is rejected; seq 3 asks for a delay.
    let calls = Recorder::with(|r, ctx| match (r.seq(), ctx.attempt()) {
        (Some(2), _) => Err(Error::reject("poison")),
        (Some(3), 1) => Err(Error::retry_after(
            Duration::from_millis(300),
            Error::other("later"),
        )),
        _ => Ok(()),
    });
    let slow_first = {
        let calls = calls.clone();
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let calls = calls.clone();
            async move {
                if msg.attributes.get("X-Kit-Seq") == Some("1") && ctx.attempt() == 1 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                calls.receive(ctx, msg).await
            }
        })
    };
    let service = tower::ServiceBuilder::new()
        .buffer(16)
        .timeout(Duration::from_millis(200))
        .service(ReceiverService::new(slow_first));
    let running = start(server, ServiceReceiver::new(service));
    for seq in 1..=3u64 {
        let mut msg = Message::new("x");
        msg.attributes.set("X-Kit-Seq", seq.to_string());
        topic.publish(&Context::background(), msg).await.unwrap();
    }
    calls
        .wait_until("1 after its timeout, 2 once, 3 twice", PATIENCE, |r| {
            let of = |s| r.iter().filter(|x| x.seq() == Some(s)).count();
            of(1) == 1 && of(2) == 1 && of(3) == 2
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop(GRACE).await.unwrap();
    let got = calls.received();
    let attempts = |s| -> Vec<u32> {
        got.iter()
            .filter(|r| r.seq() == Some(s))
            .map(|r| r.attempt)
            .collect()
    };
    assert_eq!(attempts(1), [2], "tower's timeout is a retryable failure");
    assert_eq!(attempts(2), [1], "a reject through tower is still a reject");
    assert_eq!(
        attempts(3),
        [1, 2],
        "a retry through tower is still a retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_layer_gives_each_receiver_a_limit_of_its_own() {
    let layer = ConcurrencyLimit::layer(1).unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (running, peak) = (running.clone(), peak.clone());
        ReceiverFunc::new(move |_: Context, _: Message| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let (a, b) = (layer.layer(slow.clone()), layer.layer(slow));
    let each_twice = futures::future::join_all([
        a.receive(Context::background(), Message::new("a1")),
        a.receive(Context::background(), Message::new("a2")),
        b.receive(Context::background(), Message::new("b1")),
        b.receive(Context::background(), Message::new("b2")),
    ])
    .await;
    assert!(each_twice.iter().all(Result::is_ok));
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "one at a time in each receiver, both at once"
    );
    // And a Timeout layer is a Timeout.
    let timed = Timeout::layer(Duration::from_millis(10)).layer(ReceiverFunc::new(
        |_: Context, _: Message| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        },
    ));
    let err = timed
        .receive(Context::background(), Message::new("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_layer_gives_each_receiver_a_full_bucket_of_its_own() {
    use msgio::decorators::RateLimit;
    let layer = RateLimit::layer(1.0, 2).unwrap();
    let ok = || ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) });
    let (a, b) = (layer.layer(ok()), layer.layer(ok()));
    let start = tokio::time::Instant::now();
    // Each takes its burst of two at once: neither waits for the other's tokens.
    for receiver in [&a, &b] {
        for _ in 0..2 {
            receiver
                .receive(Context::background(), Message::new("x"))
                .await
                .unwrap();
        }
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    // A third in one of them waits for its own bucket to refill: one second.
    a.receive(Context::background(), Message::new("x"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// The codec, tracing and OpenTelemetry layers wrap as their decorators do, settings
/// included: a layer's size limit, and its span's system name.
#[cfg(all(feature = "base64", feature = "tracing", feature = "otel"))]
#[tokio::test]
async fn the_codec_and_tracing_layers_wrap_as_their_decorators_do() {
    use futures::io::AsyncReadExt;
    use msgio::decorators::base64::Base64;
    use msgio::decorators::codec::DecodeReceiver;
    use msgio::decorators::otel::OtelReceiver;
    use msgio::decorators::trace::TracedReceiver;

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = {
        let seen = seen.clone();
        ReceiverFunc::new(move |_: Context, mut msg: Message| {
            let seen = seen.clone();
            async move {
                let mut body = Vec::new();
                msg.body.read_to_end(&mut body).await?;
                let encoding = msg
                    .attributes
                    .get("Content-Transfer-Encoding")
                    .map(str::to_owned);
                seen.lock().unwrap().push((body, encoding));
                Ok(())
            }
        })
    };
    let stack = ReceiverBuilder::new()
        .layer(TracedReceiver::layer().system("spool"))
        .layer(OtelReceiver::layer())
        .layer(DecodeReceiver::layer(Base64).max_decoded_size(8))
        .receiver(record);
    assert!(format!("{stack:?}").contains("spool"), "{stack:?}");

    let encoded = |text: &'static str| {
        let mut msg = Message::new(text);
        msg.attributes.set("Content-Transfer-Encoding", "base64");
        msg
    };
    stack
        .receive(Context::background(), encoded("aGVsbG8="))
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(b"hello".to_vec(), None)],
        "decoded, and the encoding attribute removed"
    );
    // Nine bytes decoded: over the layer's limit of eight, so rejected, never retried.
    let e = stack
        .receive(Context::background(), encoded("MTIzNDU2Nzg5"))
        .await
        .unwrap_err();
    assert!(e.is_reject(), "{e}");
    // A body without the attribute passes as it is.
    stack
        .receive(Context::background(), Message::new("plain"))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[1], (b"plain".to_vec(), None));
}

//! The cases of the conformance kit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::harness::{Recorder, SEQ, publish_seq, start};
use super::{Capabilities, Transport};
use crate::{
    Attributes, Context, Error, Message, MessageWriter, Receiver, ReceiverFunc, SafeReceiver,
    Server, ServerConfig, Topic, keys,
};

tokio::task_local! {
    /// How long a case waits for deliveries it expects ([`Capabilities::wait`]).
    static PATIENCE: Duration;
}

/// How long a case waits for deliveries it expects.
fn patience() -> Duration {
    PATIENCE.try_with(|d| *d).unwrap_or(Duration::from_secs(30))
}
/// How long a case watches for deliveries that must not come.
const QUIET: Duration = Duration::from_millis(300);
/// Grace for shutdowns that should finish at once.
const GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) needs: fn(&Capabilities) -> Option<&'static str>,
}

fn always(_: &Capabilities) -> Option<&'static str> {
    None
}

pub(crate) const ALL: &[Case] = &[
    Case {
        name: "round_trip",
        needs: always,
    },
    Case {
        name: "many_concurrent_publishers",
        needs: always,
    },
    Case {
        name: "context_facts",
        needs: always,
    },
    Case {
        name: "resend_on_error",
        needs: always,
    },
    Case {
        name: "continue_after_errors",
        needs: always,
    },
    Case {
        name: "panic_then_redelivery",
        needs: always,
    },
    Case {
        name: "reject_is_not_retried",
        needs: always,
    },
    Case {
        name: "retry_after_delay",
        needs: always,
    },
    Case {
        name: "concurrency_limit",
        needs: always,
    },
    Case {
        name: "shutdown_drains_in_flight",
        needs: always,
    },
    Case {
        name: "shutdown_deadline_cancels_context",
        needs: always,
    },
    Case {
        name: "receiver_cancels_only_its_own_context",
        needs: always,
    },
    Case {
        name: "serve_twice_and_after_shutdown",
        needs: always,
    },
    Case {
        name: "closed_writer",
        needs: always,
    },
    Case {
        name: "cancelled_context_publishes_nothing",
        needs: always,
    },
    Case {
        name: "topic_isolation",
        needs: always,
    },
    Case {
        name: "publish_batch",
        needs: always,
    },
    Case {
        name: "ordering",
        needs: |c| (!c.ordering).then_some("needs ordering"),
    },
    Case {
        name: "delay",
        needs: |c| (!c.delay).then_some("needs delay"),
    },
    Case {
        name: "dead_letter_after_max_attempts",
        needs: |c| (!c.dead_letter).then_some("needs dead_letter"),
    },
    Case {
        name: "no_loss_across_close_and_reopen",
        needs: |c| (!c.persistence).then_some("needs persistence"),
    },
    Case {
        name: "abandoned_at_the_deadline_is_redelivered",
        needs: |c| (!c.persistence).then_some("needs persistence"),
    },
    Case {
        name: "consumer_group",
        needs: |c| (!c.consumer_groups).then_some("needs consumer_groups"),
    },
    Case {
        name: "broker_restart",
        needs: |c| c.restart.is_none().then_some("needs a restart command"),
    },
];

pub(crate) async fn run_case<T: Transport>(
    name: &str,
    t: &T,
    caps: &Capabilities,
) -> Result<(), String> {
    PATIENCE.scope(caps.wait, dispatch(name, t, caps)).await
}

async fn dispatch<T: Transport>(name: &str, t: &T, caps: &Capabilities) -> Result<(), String> {
    let dest = t
        .destination()
        .await
        .map_err(|e| format!("destination: {e}"))?;
    let result = match name {
        "round_trip" => round_trip(t, &dest, caps).await,
        "many_concurrent_publishers" => many_concurrent_publishers(t, &dest).await,
        "context_facts" => context_facts(t, &dest).await,
        "resend_on_error" => resend_on_error(t, &dest).await,
        "continue_after_errors" => continue_after_errors(t, &dest).await,
        "panic_then_redelivery" => panic_then_redelivery(t, &dest).await,
        "reject_is_not_retried" => reject_is_not_retried(t, &dest).await,
        "retry_after_delay" => retry_after_delay(t, &dest).await,
        "concurrency_limit" => concurrency_limit(t, &dest).await,
        "shutdown_drains_in_flight" => shutdown_drains_in_flight(t, &dest).await,
        "shutdown_deadline_cancels_context" => shutdown_deadline_cancels_context(t, &dest).await,
        "receiver_cancels_only_its_own_context" => {
            receiver_cancels_only_its_own_context(t, &dest).await
        }
        "serve_twice_and_after_shutdown" => serve_twice_and_after_shutdown(t, &dest).await,
        "closed_writer" => closed_writer(t, &dest).await,
        "cancelled_context_publishes_nothing" => {
            cancelled_context_publishes_nothing(t, &dest).await
        }
        "topic_isolation" => topic_isolation(t, &dest).await,
        "publish_batch" => publish_batch(t, &dest, caps).await,
        "ordering" => ordering(t, &dest).await,
        "delay" => delay(t, &dest).await,
        "dead_letter_after_max_attempts" => dead_letter_after_max_attempts(t, &dest).await,
        "no_loss_across_close_and_reopen" => no_loss_across_close_and_reopen(t, &dest).await,
        "abandoned_at_the_deadline_is_redelivered" => {
            abandoned_at_the_deadline_is_redelivered(t, &dest).await
        }
        "consumer_group" => consumer_group(t, &dest).await,
        "broker_restart" => broker_restart(t, &dest, caps).await,
        other => Err(format!("no case named {other}")),
    };
    let removed = t.remove(dest).await;
    result?;
    removed.map_err(|e| format!("removing the destination failed: {e}"))
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

async fn topic<T: Transport>(t: &T, dest: &T::Destination) -> Result<T::Topic, String> {
    t.topic(dest).await.map_err(|e| format!("topic: {e}"))
}

async fn server<T: Transport>(
    t: &T,
    dest: &T::Destination,
    config: ServerConfig,
) -> Result<T::Server, String> {
    t.server(dest, config)
        .await
        .map_err(|e| format!("server: {e}"))
}

/// The sequence numbers of `received`, each once.
fn seqs(received: &[super::Received]) -> BTreeSet<u64> {
    received.iter().filter_map(|r| r.seq()).collect()
}

/// Waits until the broker holds nothing unsettled on `dest`, when the transport can tell
/// ([`Transport::unsettled`]): what `what` acknowledged, rejected or dead-lettered was
/// settled at the broker.
async fn settled<T: Transport>(t: &T, dest: &T::Destination, what: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        match t.unsettled(dest).await {
            Ok(None | Some(0)) => return Ok(()),
            Ok(Some(n)) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "{what}: the broker still holds {n} message(s) unsettled after {:?}",
                    patience()
                ));
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(format!("counting unsettled messages: {e}")),
        }
    }
}

/// Deterministic bytes covering every byte value.
fn binary(len: usize) -> Bytes {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn round_trip<T: Transport>(
    t: &T,
    dest: &T::Destination,
    caps: &Capabilities,
) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let mut attrs = Attributes::new();
    attrs.add("x-multi", "first");
    attrs.add("X-MULTI", "second");
    attrs.add("X-Multi", "third");
    attrs.set("content-type", "application/octet-stream");
    attrs.set("X-Unicode", "Grüße, 世界 🚀");
    attrs.set("X-Empty-Value", "");
    attrs.set("X-Punctuation", "a=b; c=\"d\", e/f?g&h:i");
    attrs.set("X-Odd_key.with!tokens~*", "odd key");
    attrs.set("X-Long", "v".repeat(2000));
    attrs.set("X-Tab", "before\tafter");
    let bodies: Vec<(&str, Bytes)> = vec![
        ("text", Bytes::from_static(b"hello, msgio")),
        ("every byte value", (0..=255u8).collect::<Vec<_>>().into()),
        ("empty", Bytes::new()),
        ("large", binary(caps.max_body)),
    ];
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    for (seq, (_, body)) in bodies.iter().enumerate() {
        publish_seq(&topic, seq as u64, body.clone(), &attrs).await?;
    }
    let all = recorder
        .wait_until("every body", patience(), |r| seqs(r).len() == bodies.len())
        .await;
    running.stop(GRACE).await?;
    let received = all?;
    for (seq, (what, body)) in bodies.iter().enumerate() {
        let got = received
            .iter()
            .find(|r| r.seq() == Some(seq as u64))
            .ok_or_else(|| format!("the {what} body never arrived"))?;
        ensure!(
            got.body == *body,
            "the {what} body changed: sent {} bytes, got {} bytes",
            body.len(),
            got.body.len()
        );
        for key in attrs.keys() {
            let sent: Vec<_> = attrs.get_all(key).collect();
            let came: Vec<_> = got.attributes.get_all(key).collect();
            ensure!(
                sent == came,
                "attribute {key:?} with the {what} body: sent {sent:?}, got {came:?}"
            );
        }
        let added: Vec<_> = got
            .attributes
            .keys()
            .filter(|k| !attrs.contains(k) && *k != SEQ)
            .collect();
        ensure!(
            added.is_empty(),
            "the {what} body arrived with attributes nobody set: {added:?}"
        );
    }
    Ok(())
}

async fn many_concurrent_publishers<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    const PUBLISHERS: u64 = 50;
    const EACH: u64 = 100;
    let topic = Arc::new(topic(t, dest).await?);
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let seq = p * EACH + i;
                publish_seq(&*topic, seq, format!("message {seq}"), &Attributes::new()).await?;
            }
            Ok::<(), String>(())
        }));
    }
    for p in publishers {
        p.await
            .map_err(|e| format!("publisher task failed: {e}"))??;
    }
    let total = (PUBLISHERS * EACH) as usize;
    let all = recorder
        .wait_until(&format!("{total} distinct messages"), patience(), |r| {
            seqs(r).len() == total
        })
        .await;
    running.stop(GRACE).await?;
    all.map(|_| ())
}

async fn context_facts<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    publish_seq(&topic, 1, "facts", &Attributes::new()).await?;
    let got = recorder.wait_for(1, patience()).await;
    running.stop(GRACE).await?;
    let got = got?.remove(0);
    ensure!(
        got.attempt == 1,
        "first delivery had attempt {}",
        got.attempt
    );
    ensure!(got.message_id.is_some(), "the context had no message id");
    ensure!(
        got.source.as_deref().is_some_and(|s| !s.is_empty()),
        "the context had no source name"
    );
    Ok(())
}

async fn resend_on_error<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let recorder = Recorder::with(|r, _| match r.attempt {
        1 => Err(Error::other("first attempt fails")),
        _ => Ok(()),
    });
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    publish_seq(&topic, 1, "fails once", &Attributes::new()).await?;
    let got = recorder.wait_for(2, patience()).await;
    tokio::time::sleep(QUIET).await;
    running.stop(GRACE).await?;
    let got = got?;
    let attempts: Vec<u32> = recorder.received().iter().map(|r| r.attempt).collect();
    ensure!(
        attempts == [1, 2],
        "attempts seen: {attempts:?}, expected [1, 2]"
    );
    ensure!(got[1].body == "fails once", "the redelivered body changed");
    settled(t, dest, "a message acknowledged at its second attempt").await
}

async fn continue_after_errors<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    const MESSAGES: u64 = 10;
    const ERRORS: usize = 100;
    let topic = topic(t, dest).await?;
    let failures = Arc::new(AtomicUsize::new(0));
    // Which messages were acked, noted by the receiver itself: with four workers the
    // recorder's order is not the order of the receiver's answers.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let (f, a) = (failures.clone(), acked.clone());
    let recorder = Recorder::with(move |r, _| {
        if f.fetch_add(1, Ordering::SeqCst) < ERRORS {
            Err(Error::other("failing on purpose"))
        } else {
            if let Some(seq) = r.seq() {
                a.lock().unwrap_or_else(|p| p.into_inner()).insert(seq);
            }
            Ok(())
        }
    });
    let config = ServerConfig::new().unlimited_attempts().concurrency(4);
    let running = start(server(t, dest, config).await?, recorder.clone());
    for seq in 0..MESSAGES {
        publish_seq(&topic, seq, "x", &Attributes::new()).await?;
    }
    let all = recorder
        .wait_until("every message acked after 100 errors", patience(), |_| {
            acked.lock().unwrap_or_else(|p| p.into_inner()).len() == MESSAGES as usize
        })
        .await;
    running.stop(GRACE).await?;
    all.map(|_| ())
}

async fn panic_then_redelivery<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let recorder = Recorder::with(|r, _| {
        if r.attempt == 1 && r.seq() == Some(1) {
            panic!("receiver panicked on purpose");
        }
        Ok(())
    });
    let receiver = SafeReceiver::new(recorder.clone());
    let running = start(server(t, dest, ServerConfig::new()).await?, receiver);
    publish_seq(&topic, 1, "panics once", &Attributes::new()).await?;
    publish_seq(&topic, 2, "fine", &Attributes::new()).await?;
    let got = recorder
        .wait_until("the redelivery after the panic", patience(), |r| {
            r.iter().any(|r| r.seq() == Some(1) && r.attempt == 2)
                && r.iter().any(|r| r.seq() == Some(2))
        })
        .await;
    running.stop(GRACE).await?;
    got.map(|_| ())
}

async fn reject_is_not_retried<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let recorder = Recorder::with(|r, _| match r.seq() {
        Some(1) => Err(Error::reject("malformed on purpose")),
        _ => Ok(()),
    });
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    publish_seq(&topic, 1, "poison", &Attributes::new()).await?;
    publish_seq(&topic, 2, "fine", &Attributes::new()).await?;
    let got = recorder.wait_for(2, patience()).await;
    tokio::time::sleep(QUIET).await;
    running.stop(GRACE).await?;
    got?;
    let rejected = recorder
        .received()
        .iter()
        .filter(|r| r.seq() == Some(1))
        .count();
    ensure!(
        rejected == 1,
        "the rejected message was delivered {rejected} times"
    );
    // Watching for a while proves little (a broker redelivers after its own timeout):
    // the reject must be settled at the broker.
    settled(t, dest, "a rejected message (no dead-letter topic)").await
}

async fn concurrency_limit<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    const LIMIT: usize = 3;
    const MESSAGES: u64 = 30;
    let topic = topic(t, dest).await?;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Recorder::new();
    let receiver = {
        let (now, peak, done) = (now.clone(), peak.clone(), done.clone());
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (now, peak, done) = (now.clone(), peak.clone(), done.clone());
            async move {
                let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(current, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                done.receive(ctx, msg).await
            }
        })
    };
    let config = ServerConfig::new().concurrency(LIMIT);
    let running = start(server(t, dest, config).await?, receiver);
    for seq in 0..MESSAGES {
        publish_seq(&topic, seq, "x", &Attributes::new()).await?;
    }
    let all = done
        .wait_until("every message", patience(), |r| {
            seqs(r).len() == MESSAGES as usize
        })
        .await;
    running.stop(GRACE).await?;
    all?;
    let peak = peak.load(Ordering::SeqCst);
    ensure!(
        peak <= LIMIT,
        "{peak} receivers ran at once with concurrency {LIMIT}"
    );
    // The limit is a promise of concurrency too: with work waiting, it is reached.
    ensure!(
        peak == LIMIT,
        "at most {peak} receivers ran at once with concurrency {LIMIT} and {MESSAGES} messages waiting"
    );
    // None failed, so each came once, as its first attempt. (A source that fetches more
    // than the engine asks for gets the extras handed back, and they come again later.)
    let again: Vec<(Option<u64>, u32)> = done
        .received()
        .iter()
        .filter(|r| r.attempt != 1)
        .map(|r| (r.seq(), r.attempt))
        .collect();
    ensure!(
        again.is_empty() && done.count() == MESSAGES as usize,
        "{} deliveries of {MESSAGES} messages that never failed; (seq, attempt) not first: {again:?}",
        done.count()
    );
    Ok(())
}

/// A receiver that signals when it starts and then waits for a gate.
fn gated(started: Arc<AtomicBool>, gate: Arc<Notify>, finished: Arc<AtomicBool>) -> impl Receiver {
    ReceiverFunc::new(move |_: Context, _: Message| {
        let (started, gate, finished) = (started.clone(), gate.clone(), finished.clone());
        async move {
            started.store(true, Ordering::SeqCst);
            gate.notified().await;
            finished.store(true, Ordering::SeqCst);
            Ok(())
        }
    })
}

async fn until(what: &str, flag: &AtomicBool) -> Result<(), String> {
    let wait = async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(patience(), wait)
        .await
        .map_err(|_| format!("timed out waiting until {what}"))
}

async fn shutdown_drains_in_flight<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let (started, gate, finished) = Default::default();
    let receiver = gated(
        Arc::clone(&started),
        Arc::clone(&gate),
        Arc::clone(&finished),
    );
    let running = start(server(t, dest, ServerConfig::new()).await?, receiver);
    publish_seq(&topic, 1, "slow", &Attributes::new()).await?;
    until("the receiver started", &started).await?;
    let server = running.server.clone();
    let shutdown = tokio::spawn(async move { server.shutdown(Duration::from_secs(30)).await });
    tokio::time::sleep(QUIET).await;
    ensure!(
        !shutdown.is_finished(),
        "shutdown returned while a message was still in flight"
    );
    gate.notify_one();
    let shutdown = tokio::time::timeout(patience(), shutdown)
        .await
        .map_err(|_| "shutdown did not return after the receiver finished".to_owned())?
        .map_err(|e| format!("shutdown task failed: {e}"))?;
    ensure!(shutdown.is_ok(), "shutdown returned {shutdown:?}");
    ensure!(
        finished.load(Ordering::SeqCst),
        "the in-flight receiver did not finish"
    );
    running.join().await?
}

async fn shutdown_deadline_cancels_context<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let started = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (started, cancelled) = (started.clone(), cancelled.clone());
        ReceiverFunc::new(move |ctx: Context, _: Message| {
            let (started, cancelled) = (started.clone(), cancelled.clone());
            async move {
                started.store(true, Ordering::SeqCst);
                ctx.cancelled().await;
                cancelled.store(true, Ordering::SeqCst);
                Err(Error::Cancelled)
            }
        })
    };
    let running = start(server(t, dest, ServerConfig::new()).await?, receiver);
    publish_seq(&topic, 1, "stuck", &Attributes::new()).await?;
    until("the receiver started", &started).await?;
    let result = running.server.shutdown(Duration::from_millis(100)).await;
    ensure!(
        matches!(result, Err(Error::DeadlineExceeded)),
        "shutdown past its deadline returned {result:?}, not DeadlineExceeded"
    );
    ensure!(
        cancelled.load(Ordering::SeqCst),
        "the receiver's context was not cancelled at the deadline"
    );
    running.join().await?
}

/// A receiver that cancels its own context cancels nothing else: the next 100 messages get
/// contexts that are not cancelled, and a later graceful shutdown still waits for the
/// message in flight (as in Go, a callee cannot cancel its caller's context).
async fn receiver_cancels_only_its_own_context<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    const MORE: u64 = 100;
    let topic = topic(t, dest).await?;
    let (started, gate, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Notify::new()),
        Arc::new(AtomicBool::new(false)),
    );
    let recorder = Recorder::new();
    let came_cancelled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let receiver = {
        let (started, gate, finished) = (started.clone(), gate.clone(), finished.clone());
        let (recorder, came_cancelled) = (recorder.clone(), came_cancelled.clone());
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (started, gate, finished) = (started.clone(), gate.clone(), finished.clone());
            let (recorder, came_cancelled) = (recorder.clone(), came_cancelled.clone());
            async move {
                let seq: Option<u64> = msg.attributes.get(SEQ).and_then(|s| s.parse().ok());
                if ctx.is_cancelled() {
                    came_cancelled
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(seq);
                }
                match seq {
                    Some(0) => ctx.cancel(),
                    Some(MORE) => {
                        started.store(true, Ordering::SeqCst);
                        gate.notified().await;
                        finished.store(!ctx.is_cancelled(), Ordering::SeqCst);
                    }
                    _ => {}
                }
                recorder.receive(ctx, msg).await
            }
        })
    };
    let running = start(server(t, dest, ServerConfig::new()).await?, receiver);
    publish_seq(&topic, 0, "cancels its context", &Attributes::new()).await?;
    recorder.wait_for(1, patience()).await?;
    for seq in 1..MORE {
        publish_seq(&topic, seq, "after", &Attributes::new()).await?;
    }
    let all = recorder
        .wait_until(&format!("{MORE} messages"), patience(), |r| {
            seqs(r).len() == MORE as usize
        })
        .await;
    if let Err(e) = all {
        running.stop(GRACE).await?;
        return Err(e);
    }
    let failed = came_cancelled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    ensure!(
        failed.is_empty(),
        "after a receiver cancelled its own context, messages {failed:?} came with a cancelled context"
    );
    // A graceful shutdown still waits for the message in flight.
    publish_seq(&topic, MORE, "in flight at shutdown", &Attributes::new()).await?;
    until("the last receiver started", &started).await?;
    let server = running.server.clone();
    let shutdown = tokio::spawn(async move { server.shutdown(Duration::from_secs(30)).await });
    tokio::time::sleep(QUIET).await;
    let early = shutdown.is_finished();
    gate.notify_one();
    let shutdown = tokio::time::timeout(patience(), shutdown)
        .await
        .map_err(|_| "shutdown did not return after the receiver finished".to_owned())?
        .map_err(|e| format!("shutdown task failed: {e}"))?;
    running.join().await??;
    ensure!(
        !early,
        "shutdown did not wait for the message in flight after a receiver cancelled its context"
    );
    ensure!(shutdown.is_ok(), "shutdown returned {shutdown:?}");
    ensure!(
        finished.load(Ordering::SeqCst),
        "the context of the message in flight was cancelled during a graceful shutdown"
    );
    Ok(())
}

async fn serve_twice_and_after_shutdown<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    // Once a message came through, the first serve is surely running.
    publish_seq(&topic(t, dest).await?, 1, "serving?", &Attributes::new()).await?;
    recorder.wait_for(1, patience()).await?;
    let second = running.server.serve(Recorder::new()).await;
    ensure!(
        matches!(second, Err(Error::AlreadyServing)),
        "serving twice returned {second:?}, not AlreadyServing"
    );
    let server = running.server.clone();
    running.stop(GRACE).await?;
    let after = server.serve(Recorder::new()).await;
    ensure!(
        matches!(after, Err(Error::ServerClosed)),
        "serving after shutdown returned {after:?}, not ServerClosed"
    );
    Ok(())
}

async fn closed_writer<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    let mut writer = topic
        .new_writer(&Context::background())
        .map_err(|e| format!("new_writer: {e}"))?;
    writer.attributes_mut().set(SEQ, "1");
    writer
        .write_all(b"once")
        .await
        .map_err(|e| format!("write: {e}"))?;
    writer.close().await.map_err(|e| format!("close: {e}"))?;
    let write = writer
        .write_all(b"again")
        .await
        .map(|_| ())
        .map_err(Error::from);
    ensure!(
        matches!(write, Err(Error::ClosedMessageWriter)),
        "writing after close gave {write:?}, not ClosedMessageWriter"
    );
    let close = writer.close().await.map_err(Error::from);
    ensure!(
        matches!(close, Err(Error::ClosedMessageWriter)),
        "closing twice gave {close:?}, not ClosedMessageWriter"
    );
    let got = recorder.wait_for(1, patience()).await;
    tokio::time::sleep(QUIET).await;
    running.stop(GRACE).await?;
    got?;
    let received = recorder.received();
    ensure!(
        received.len() == 1,
        "the message was delivered {} times",
        received.len()
    );
    ensure!(
        received[0].body == "once",
        "the body was {:?}",
        received[0].body
    );
    Ok(())
}

/// A publish whose context is already cancelled fails with `Cancelled` and sends nothing,
/// through `publish` and through a writer alike.
async fn cancelled_context_publishes_nothing<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let cancelled = Context::background();
    cancelled.cancel();
    let mut msg = Message::new("cancelled");
    msg.attributes.set(SEQ, "1");
    let published = topic.publish(&cancelled, msg).await;
    ensure!(
        matches!(published, Err(Error::Cancelled)),
        "publish with a cancelled context gave {published:?}, not Cancelled"
    );
    let mut writer = topic
        .new_writer(&cancelled)
        .map_err(|e| format!("new_writer: {e}"))?;
    writer.attributes_mut().set(SEQ, "2");
    let closed = match writer.write_all(b"cancelled").await {
        Ok(()) => writer.close().await.map_err(Error::from),
        Err(e) => Err(Error::from(e)),
    };
    ensure!(
        matches!(closed, Err(Error::Cancelled)),
        "a writer with a cancelled context gave {closed:?}, not Cancelled"
    );
    publish_seq(&topic, 3, "after", &Attributes::new()).await?;
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    let got = recorder.wait_for(1, patience()).await;
    tokio::time::sleep(QUIET).await;
    running.stop(GRACE).await?;
    got?;
    ensure!(
        seqs(&recorder.received()) == BTreeSet::from([3]),
        "received {:?}, expected only message 3",
        seqs(&recorder.received())
    );
    Ok(())
}

async fn topic_isolation<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    let other = t
        .destination()
        .await
        .map_err(|e| format!("destination: {e}"))?;
    let result = async {
        let first = Recorder::new();
        let second = Recorder::new();
        let running_first = start(server(t, dest, ServerConfig::new()).await?, first.clone());
        let running_second = start(
            server(t, &other, ServerConfig::new()).await?,
            second.clone(),
        );
        publish_seq(
            &topic(t, dest).await?,
            1,
            "for the first",
            &Attributes::new(),
        )
        .await?;
        let got = first.wait_for(1, patience()).await;
        tokio::time::sleep(QUIET).await;
        running_first.stop(GRACE).await?;
        running_second.stop(GRACE).await?;
        got?;
        ensure!(
            second.count() == 0,
            "a message published to one destination reached another"
        );
        Ok(())
    }
    .await;
    let removed = t.remove(other).await;
    result?;
    removed.map_err(|e| format!("removing the second destination failed: {e}"))
}

/// `Topic::publish_batch`: batches (one of them empty, one with a streaming body) arrive
/// whole, each message once with its attributes and body, and in order where the
/// transport keeps order.
async fn publish_batch<T: Transport>(
    t: &T,
    dest: &T::Destination,
    caps: &Capabilities,
) -> Result<(), String> {
    const BATCHES: u64 = 3;
    const SIZE: u64 = 40;
    let topic = topic(t, dest).await?;
    let recorder = Recorder::new();
    let config = ServerConfig::new().concurrency(if caps.ordering { 1 } else { 16 });
    let running = start(server(t, dest, config).await?, recorder.clone());
    let ctx = Context::background();
    topic
        .publish_batch(&ctx, Vec::new())
        .await
        .map_err(|e| format!("publishing an empty batch failed: {e}"))?;
    for batch in 0..BATCHES {
        let messages = (batch * SIZE..(batch + 1) * SIZE)
            .map(|seq| {
                let body = format!("batch {batch} message {seq}");
                let mut msg = if seq == SIZE + 7 {
                    // A streaming body in the middle of a batch.
                    Message::new(crate::Body::from_reader(futures::io::Cursor::new(
                        body.into_bytes(),
                    )))
                } else {
                    Message::new(body)
                };
                msg.attributes.set(SEQ, seq.to_string());
                msg.attributes.add("X-Batch", batch.to_string());
                msg.attributes.add("X-Batch", "second value");
                msg
            })
            .collect();
        topic
            .publish_batch(&ctx, messages)
            .await
            .map_err(|e| format!("publishing batch {batch} failed: {e}"))?;
    }
    let total = (BATCHES * SIZE) as usize;
    let got = recorder.wait_for(total, patience()).await;
    running.stop(GRACE).await?;
    let got = got?;
    let mut seen = std::collections::BTreeSet::new();
    for r in &got {
        let seq = r
            .seq()
            .ok_or("a message came without its sequence attribute")?;
        ensure!(seen.insert(seq), "message {seq} came twice");
        let batch = seq / SIZE;
        ensure!(
            r.body == format!("batch {batch} message {seq}"),
            "message {seq} came with the body {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let values: Vec<_> = r.attributes.get_all("X-Batch").collect();
        ensure!(
            values == [batch.to_string().as_str(), "second value"],
            "message {seq} came with X-Batch {values:?}"
        );
    }
    ensure!(
        seen.len() == total,
        "{} of {total} messages came",
        seen.len()
    );
    if caps.ordering {
        let order: Vec<u64> = got.iter().filter_map(|r| r.seq()).collect();
        let expected: Vec<u64> = (0..total as u64).collect();
        ensure!(order == expected, "batches arrived out of order: {order:?}");
    }
    Ok(())
}

async fn ordering<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    const MESSAGES: u64 = 100;
    let topic = topic(t, dest).await?;
    let recorder = Recorder::new();
    let config = ServerConfig::new().concurrency(1);
    let running = start(server(t, dest, config).await?, recorder.clone());
    for seq in 0..MESSAGES {
        publish_seq(&topic, seq, "in order", &Attributes::new()).await?;
    }
    let got = recorder.wait_for(MESSAGES as usize, patience()).await;
    running.stop(GRACE).await?;
    let order: Vec<u64> = got?.iter().filter_map(|r| r.seq()).collect();
    let expected: Vec<u64> = (0..MESSAGES).collect();
    ensure!(
        order == expected,
        "messages arrived out of order: {order:?}"
    );
    Ok(())
}

async fn delay<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    const DELAY: Duration = Duration::from_millis(500);
    let topic = topic(t, dest).await?;
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    let published = tokio::time::Instant::now();
    let mut writer = topic
        .new_writer(&Context::background())
        .map_err(|e| format!("new_writer: {e}"))?;
    writer.attributes_mut().set(SEQ, "1");
    writer.set_delay(DELAY);
    writer
        .write_all(b"delayed")
        .await
        .map_err(|e| format!("write: {e}"))?;
    writer.close().await.map_err(|e| format!("close: {e}"))?;
    publish_seq(&topic, 2, "not delayed", &Attributes::new()).await?;
    let got = recorder.wait_for(2, patience()).await;
    let elapsed = published.elapsed();
    running.stop(GRACE).await?;
    let got = got?;
    let order: Vec<_> = got.iter().filter_map(|r| r.seq()).collect();
    ensure!(
        order == [2, 1],
        "the delayed message did not arrive after the one published after it: {order:?}"
    );
    // Timers may round a little; the message must not come meaningfully early.
    ensure!(
        elapsed + Duration::from_millis(10) >= DELAY,
        "a message delayed by {DELAY:?} arrived after {elapsed:?}"
    );
    Ok(())
}

async fn dead_letter_after_max_attempts<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    let dlq = t
        .destination()
        .await
        .map_err(|e| format!("destination: {e}"))?;
    let result = async {
        let topic = topic(t, dest).await?;
        let mut attrs = Attributes::new();
        attrs.add("X-Multi", "a");
        attrs.add("X-Multi", "b");
        let body = binary(1024);
        let failing = Recorder::with(|r, _| match r.seq() {
            Some(2) => Err(Error::reject("rejected on purpose")),
            _ => Err(Error::other("always fails")),
        });
        let config = ServerConfig::new()
            .max_attempts(3)
            .dead_letter(t.topic(&dlq).await.map_err(|e| format!("topic: {e}"))?);
        let running = start(server(t, dest, config).await?, failing.clone());
        let letters = Recorder::new();
        let running_dlq = start(server(t, &dlq, ServerConfig::new()).await?, letters.clone());
        publish_seq(&topic, 1, body.clone(), &attrs).await?;
        publish_seq(&topic, 2, "rejected", &attrs).await?;
        letters.wait_for(2, patience()).await?;
        tokio::time::sleep(QUIET).await;
        running.stop(GRACE).await?;
        running_dlq.stop(GRACE).await?;
        // What came during the quiet period counts too: a late duplicate dead letter.
        let got = letters.received();
        let attempts: Vec<u32> = failing
            .received()
            .iter()
            .filter(|r| r.seq() == Some(1))
            .map(|r| r.attempt)
            .collect();
        ensure!(
            attempts == [1, 2, 3],
            "attempts before dead-lettering: {attempts:?}"
        );
        let rejected = failing
            .received()
            .iter()
            .filter(|r| r.seq() == Some(2))
            .count();
        ensure!(
            rejected == 1,
            "a rejected message was tried {rejected} times"
        );
        ensure!(got.len() == 2, "{} dead letters for 2 messages", got.len());
        let letter = got
            .iter()
            .find(|r| r.seq() == Some(1))
            .ok_or("the exhausted message was not dead-lettered")?;
        ensure!(letter.body == body, "the dead-lettered body changed");
        let expected_keys: BTreeSet<&str> = [
            "X-Multi",
            SEQ,
            keys::DEAD_LETTER_REASON,
            keys::ATTEMPTS,
            keys::SOURCE,
            keys::MESSAGE_ID,
        ]
        .into();
        let letter_keys: BTreeSet<&str> = letter.attributes.keys().collect();
        let added: Vec<_> = letter_keys.difference(&expected_keys).collect();
        ensure!(
            added.is_empty(),
            "the dead letter arrived with attributes nobody set: {added:?}"
        );
        let multi: Vec<_> = letter.attributes.get_all("X-Multi").collect();
        ensure!(
            multi == ["a", "b"],
            "dead-lettered attributes changed: {multi:?}"
        );
        ensure!(
            letter.attributes.get(keys::ATTEMPTS) == Some("3"),
            "{} is {:?}",
            keys::ATTEMPTS,
            letter.attributes.get(keys::ATTEMPTS)
        );
        let reason = letter
            .attributes
            .get(keys::DEAD_LETTER_REASON)
            .unwrap_or("");
        ensure!(
            reason.contains("always fails"),
            "dead-letter reason: {reason:?}"
        );
        let rejected = got
            .iter()
            .find(|r| r.seq() == Some(2))
            .ok_or("the rejected message was not dead-lettered")?;
        let reason = rejected
            .attributes
            .get(keys::DEAD_LETTER_REASON)
            .unwrap_or("");
        ensure!(
            reason.contains("rejected on purpose"),
            "reject reason: {reason:?}"
        );
        settled(t, dest, "dead-lettered messages").await?;
        settled(t, &dlq, "dead letters read and acknowledged").await
    }
    .await;
    let removed = t.remove(dlq).await;
    result?;
    removed.map_err(|e| format!("removing the dead-letter destination failed: {e}"))
}

async fn no_loss_across_close_and_reopen<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    const MESSAGES: u64 = 50;
    const AHEAD: usize = 8;
    let topic = topic(t, dest).await?;
    for seq in 0..MESSAGES / 2 {
        publish_seq(&topic, seq, "before", &Attributes::new()).await?;
    }
    // The first server runs one message at a time with more fetched ahead, and its first
    // receiver holds until shutdown has begun: every run, the server shuts down holding
    // messages it fetched and never started. They must come back to the next server.
    let first = Recorder::new();
    let (started, gate) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
    let receiver = {
        let (first, started, gate) = (first.clone(), started.clone(), gate.clone());
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let (first, started, gate) = (first.clone(), started.clone(), gate.clone());
            async move {
                if !started.swap(true, Ordering::SeqCst) {
                    gate.notified().await;
                }
                first.receive(ctx, msg).await
            }
        })
    };
    let config = ServerConfig::new().concurrency(1).prefetch(AHEAD);
    let running = start(server(t, dest, config).await?, receiver);
    until("the first receiver started", &started).await?;
    // Time for the fetch ahead to fill.
    tokio::time::sleep(QUIET).await;
    let stopping = running.server.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown(GRACE).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    tokio::time::timeout(patience(), shutdown)
        .await
        .map_err(|_| "shutdown did not return".to_owned())?
        .map_err(|e| format!("shutdown task failed: {e}"))?
        .map_err(|e| format!("shutdown failed: {e}"))?;
    running.join().await??;
    // Publishing goes on while no server runs.
    for seq in MESSAGES / 2..MESSAGES {
        publish_seq(&topic, seq, "between", &Attributes::new()).await?;
    }
    let second = Recorder::new();
    let running = start(server(t, dest, ServerConfig::new()).await?, second.clone());
    let acked_first = seqs(&first.received());
    let all = second
        .wait_until("the rest after reopening", patience(), |r| {
            let mut all = acked_first.clone();
            all.extend(seqs(r));
            all.len() == MESSAGES as usize
        })
        .await;
    running.stop(GRACE).await?;
    all.map(|_| ())
}

/// A receiver that ignores its context past the shutdown deadline is abandoned: its
/// message is not lost but delivered again, to the next server.
async fn abandoned_at_the_deadline_is_redelivered<T: Transport>(
    t: &T,
    dest: &T::Destination,
) -> Result<(), String> {
    let topic = topic(t, dest).await?;
    let started = Arc::new(AtomicBool::new(false));
    let never = Arc::new(Notify::new());
    let receiver = {
        let (started, never) = (started.clone(), never.clone());
        ReceiverFunc::new(move |_: Context, _: Message| {
            let (started, never) = (started.clone(), never.clone());
            async move {
                started.store(true, Ordering::SeqCst);
                // Ignores cancellation.
                never.notified().await;
                Ok(())
            }
        })
    };
    let config = ServerConfig::new().cancel_grace(Duration::from_millis(100));
    let running = start(server(t, dest, config).await?, receiver);
    publish_seq(&topic, 1, "abandoned", &Attributes::new()).await?;
    until("the receiver started", &started).await?;
    let result = running.server.shutdown(Duration::from_millis(100)).await;
    ensure!(
        matches!(result, Err(Error::DeadlineExceeded)),
        "shutdown past its deadline returned {result:?}, not DeadlineExceeded"
    );
    running.join().await??;
    let again = Recorder::new();
    let running = start(server(t, dest, ServerConfig::new()).await?, again.clone());
    let got = again.wait_for(1, patience()).await;
    running.stop(GRACE).await?;
    let got = got?;
    ensure!(
        got[0].seq() == Some(1),
        "the abandoned message did not come back"
    );
    Ok(())
}

/// `Error::retry_after`: the next attempt comes no earlier than the delay, and other
/// messages flow meanwhile (the delay holds no concurrency slot).
async fn retry_after_delay<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    const DELAY: Duration = Duration::from_millis(800);
    const OTHERS: u64 = 10;
    let topic = topic(t, dest).await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        Recorder::with(move |r, _| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push((
                r.seq(),
                r.attempt,
                tokio::time::Instant::now(),
            ));
            if r.seq() == Some(0) && r.attempt == 1 {
                Err(Error::retry_after(DELAY, "later, please"))
            } else {
                Ok(())
            }
        })
    };
    let config = ServerConfig::new().concurrency(1);
    let running = start(server(t, dest, config).await?, recorder.clone());
    publish_seq(&topic, 0, "retried later", &Attributes::new()).await?;
    recorder.wait_for(1, patience()).await?;
    for seq in 1..=OTHERS {
        publish_seq(&topic, seq, "meanwhile", &Attributes::new()).await?;
    }
    let all = recorder
        .wait_until("the others and the second attempt", patience(), |r| {
            seqs(r).len() == OTHERS as usize + 1
                && r.iter().any(|r| r.seq() == Some(0) && r.attempt > 1)
        })
        .await;
    running.stop(GRACE).await?;
    all?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let at = |attempt: u32| {
        seen.iter()
            .find(|(seq, a, _)| *seq == Some(0) && *a == attempt)
            .map(|(_, _, at)| *at)
    };
    let (Some(first), Some(second)) = (
        at(1),
        seen.iter()
            .find(|(seq, a, _)| *seq == Some(0) && *a > 1)
            .map(|(_, _, at)| *at),
    ) else {
        return Err(format!("the retried message's attempts: {seen:?}"));
    };
    let waited = second.duration_since(first);
    // Timers may round a little; the attempt must not come meaningfully early.
    ensure!(
        waited + Duration::from_millis(10) >= DELAY,
        "asked to retry after {DELAY:?}, the next attempt came after {waited:?}"
    );
    let late: Vec<_> = seen
        .iter()
        .filter(|(seq, _, at)| seq.is_some_and(|s| s > 0) && *at > second)
        .filter_map(|(seq, ..)| *seq)
        .collect();
    ensure!(
        late.is_empty(),
        "messages {late:?} waited for the delayed retry instead of flowing meanwhile"
    );
    Ok(())
}

async fn consumer_group<T: Transport>(t: &T, dest: &T::Destination) -> Result<(), String> {
    const MESSAGES: u64 = 200;
    let topic = topic(t, dest).await?;
    let (a, b) = (Recorder::new(), Recorder::new());
    // Each message takes a little while, so that one member cannot drain the destination
    // before the other has asked for anything.
    let slowly = |recorder: &Recorder| {
        let recorder = recorder.clone();
        ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let recorder = recorder.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                recorder.receive(ctx, msg).await
            }
        })
    };
    let config = || ServerConfig::new().concurrency(4);
    let running_a = start(server(t, dest, config()).await?, slowly(&a));
    let running_b = start(server(t, dest, config()).await?, slowly(&b));
    for seq in 0..MESSAGES {
        publish_seq(&topic, seq, "shared", &Attributes::new()).await?;
    }
    let both = || {
        let mut all: Vec<_> = a.received();
        all.extend(b.received());
        all
    };
    let wait = async {
        while seqs(&both()).len() < MESSAGES as usize {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let finished = tokio::time::timeout(patience(), wait).await;
    tokio::time::sleep(QUIET).await;
    running_a.stop(GRACE).await?;
    running_b.stop(GRACE).await?;
    ensure!(
        finished.is_ok(),
        "only {} of {MESSAGES} messages arrived at the group",
        seqs(&both()).len()
    );
    let mut counts = BTreeMap::new();
    for r in both() {
        *counts.entry(r.seq()).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| s)
        .collect();
    ensure!(
        twice.is_empty(),
        "delivered to more than one member: {twice:?}"
    );
    let (share_a, share_b) = (seqs(&a.received()).len(), seqs(&b.received()).len());
    ensure!(
        share_a > 0 && share_b > 0,
        "one member took everything: {share_a} and {share_b} of {MESSAGES}"
    );
    Ok(())
}

async fn broker_restart<T: Transport>(
    t: &T,
    dest: &T::Destination,
    caps: &Capabilities,
) -> Result<(), String> {
    const MESSAGES: u64 = 200;
    let restart = caps.restart.clone().ok_or("no restart command")?;
    let topic = topic(t, dest).await?;
    let recorder = Recorder::new();
    let running = start(
        server(t, dest, ServerConfig::new()).await?,
        recorder.clone(),
    );
    // One publisher goes on throughout, retrying what fails while the broker is down (a
    // retried message that did arrive may come twice; none may be missing).
    let patience = patience();
    let publisher = tokio::spawn(async move {
        for seq in 0..MESSAGES {
            let deadline = tokio::time::Instant::now() + patience;
            loop {
                match publish_seq(&topic, seq, "across a restart", &Attributes::new()).await {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    });
    recorder.wait_for(20, patience).await?;
    restart()
        .await
        .map_err(|e| format!("restarting the broker failed: {e}"))?;
    publisher
        .await
        .map_err(|e| format!("the publisher panicked: {e}"))??;
    let all = recorder
        .wait_until("every message across the restart", patience, |r| {
            seqs(r).len() == MESSAGES as usize
        })
        .await;
    running.stop(GRACE).await?;
    all.map(|_| ())
}

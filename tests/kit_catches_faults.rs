//! The conformance kit fails transports that break the contract: each faulty transport
//! here wraps the in-memory one with one fault, and the kit must name the cases it breaks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use msgio::mem::{MemQueue, MemServer, MemTopic};
use msgio::testing::{Capabilities, Outcome, Report, Transport};
use msgio::transport::{BufferedWriter, Outgoing, Publish};
use msgio::{Context, Error, Message, MessageWriter, Receiver, Server, ServerConfig, Topic};

/// Wraps every receiver the server is given.
trait Fault: Clone + Send + Sync + 'static {
    fn call<R: Receiver>(
        &self,
        inner: &R,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

struct Faulty<F> {
    server: MemServer,
    fault: F,
}

struct Wrapped<R, F> {
    inner: R,
    fault: F,
}

impl<R: Receiver, F: Fault> Receiver for Wrapped<R, F> {
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.fault.call(&self.inner, ctx, msg)
    }
}

impl<F: Fault> Server for Faulty<F> {
    async fn serve<R: Receiver + 'static>(&self, receiver: R) -> Result<(), Error> {
        let fault = self.fault.clone();
        self.server
            .serve(Wrapped {
                inner: receiver,
                fault,
            })
            .await
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        self.server.shutdown(grace).await
    }
}

struct Transported<F>(F);

impl<F: Fault> Transport for Transported<F> {
    type Destination = MemQueue;
    type Topic = MemTopic;
    type Server = Faulty<F>;

    async fn destination(&self) -> Result<MemQueue, Error> {
        MemQueue::new(10_000)
    }
    async fn topic(&self, q: &MemQueue) -> Result<MemTopic, Error> {
        Ok(q.topic())
    }
    async fn server(&self, q: &MemQueue, config: ServerConfig) -> Result<Faulty<F>, Error> {
        Ok(Faulty {
            server: q.server(config)?,
            fault: self.0.clone(),
        })
    }
    async fn unsettled(&self, q: &MemQueue) -> Result<Option<u64>, Error> {
        Ok(Some(q.len() as u64))
    }
}

/// A server that runs twice the receivers at once that it was configured for.
struct TooConcurrent;

impl Transport for TooConcurrent {
    type Destination = MemQueue;
    type Topic = MemTopic;
    type Server = MemServer;

    async fn destination(&self) -> Result<MemQueue, Error> {
        MemQueue::new(10_000)
    }
    async fn topic(&self, q: &MemQueue) -> Result<MemTopic, Error> {
        Ok(q.topic())
    }
    async fn server(&self, q: &MemQueue, config: ServerConfig) -> Result<MemServer, Error> {
        let n = config.concurrency_limit();
        q.server(config.concurrency(n * 2))
    }
}

/// A destination whose first server takes every message: a server made after it serves a
/// queue of its own that nothing is published to (a group member that never gets a share).
#[derive(Clone)]
struct StarvedDestination {
    queue: MemQueue,
    served: Arc<std::sync::atomic::AtomicBool>,
}

struct StarvesLaterMembers;

impl Transport for StarvesLaterMembers {
    type Destination = StarvedDestination;
    type Topic = MemTopic;
    type Server = MemServer;

    async fn destination(&self) -> Result<StarvedDestination, Error> {
        Ok(StarvedDestination {
            queue: MemQueue::new(10_000)?,
            served: Arc::default(),
        })
    }
    async fn topic(&self, d: &StarvedDestination) -> Result<MemTopic, Error> {
        Ok(d.queue.topic())
    }
    async fn server(
        &self,
        d: &StarvedDestination,
        config: ServerConfig,
    ) -> Result<MemServer, Error> {
        if d.served.swap(true, Ordering::SeqCst) {
            MemQueue::new(10_000)?.server(config)
        } else {
            d.queue.server(config)
        }
    }
}

/// What a faulty topic does to what it publishes.
#[derive(Clone, Copy)]
enum TopicFault {
    /// Publishes at once what was to be delayed.
    IgnoresDelays,
    /// Publishes each pair of messages in reverse order.
    SwapsPairs,
}

/// A topic over an in-memory queue with one fault.
#[derive(Clone)]
struct FaultyTopic {
    inner: MemTopic,
    fault: TopicFault,
    held: Arc<tokio::sync::Mutex<Option<Outgoing>>>,
}

impl Topic for FaultyTopic {
    type Writer = BufferedWriter<FaultyTopic>;

    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        Ok(BufferedWriter::new(self.clone(), ctx))
    }
}

impl FaultyTopic {
    async fn send(
        inner: &MemTopic,
        ctx: &Context,
        out: Outgoing,
        delay: bool,
    ) -> Result<(), Error> {
        use futures::io::AsyncWriteExt;
        let mut writer = inner.new_writer(ctx)?;
        *writer.attributes_mut() = out.attributes;
        if let (true, Some(d)) = (delay, out.delay) {
            writer.set_delay(d);
        }
        writer.write_all(&out.body).await?;
        writer.close().await?;
        Ok(())
    }
}

impl Publish for FaultyTopic {
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn publish(&self, ctx: &Context, message: Outgoing) -> Self::Future {
        let (inner, fault, held, ctx) = (
            self.inner.clone(),
            self.fault,
            self.held.clone(),
            ctx.clone(),
        );
        Box::pin(async move {
            match fault {
                TopicFault::IgnoresDelays => Self::send(&inner, &ctx, message, false).await,
                TopicFault::SwapsPairs => {
                    let mut held = held.lock().await;
                    match held.take() {
                        None => {
                            *held = Some(message);
                            Ok(())
                        }
                        Some(first) => {
                            Self::send(&inner, &ctx, message, true).await?;
                            Self::send(&inner, &ctx, first, true).await
                        }
                    }
                }
            }
        })
    }
}

impl std::fmt::Debug for FaultyTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyTopic")
    }
}

struct TopicFaulted(TopicFault);

impl Transport for TopicFaulted {
    type Destination = MemQueue;
    type Topic = FaultyTopic;
    type Server = MemServer;

    async fn destination(&self) -> Result<MemQueue, Error> {
        MemQueue::new(10_000)
    }
    async fn topic(&self, q: &MemQueue) -> Result<FaultyTopic, Error> {
        Ok(FaultyTopic {
            inner: q.topic(),
            fault: self.0,
            held: Arc::default(),
        })
    }
    async fn server(&self, q: &MemQueue, config: ServerConfig) -> Result<MemServer, Error> {
        q.server(config)
    }
}

fn failed(report: &Report, case: &str) -> bool {
    report
        .cases
        .iter()
        .any(|(name, outcome)| *name == case && matches!(outcome, Outcome::Failed(_)))
}

/// Acknowledges failed messages instead of retrying them.
#[derive(Clone)]
struct SwallowsErrors;

impl Fault for SwallowsErrors {
    async fn call<R: Receiver>(&self, inner: &R, ctx: Context, msg: Message) -> Result<(), Error> {
        let _ = inner.receive(ctx, msg).await;
        Ok(())
    }
}

/// Acknowledges every 97th message without handing it to the receiver.
#[derive(Clone, Default)]
struct LosesMessages(Arc<AtomicU64>);

impl Fault for LosesMessages {
    async fn call<R: Receiver>(&self, inner: &R, ctx: Context, msg: Message) -> Result<(), Error> {
        if self.0.fetch_add(1, Ordering::SeqCst) % 97 == 96 {
            return Ok(());
        }
        inner.receive(ctx, msg).await
    }
}

/// Truncates bodies to 1 KiB.
#[derive(Clone)]
struct TruncatesBodies;

impl Fault for TruncatesBodies {
    async fn call<R: Receiver>(
        &self,
        inner: &R,
        ctx: Context,
        mut msg: Message,
    ) -> Result<(), Error> {
        let body = msg.body.read_to_bytes(64 << 20).await?;
        let cut = body.slice(..body.len().min(1024));
        inner.receive(ctx, msg.with_body(cut)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_server_that_swallows_errors() {
    let caps = Capabilities::new()
        .dead_letter()
        .wait(Duration::from_secs(3));
    let report = msgio::testing::run_matching(Transported(SwallowsErrors), caps, |name| {
        [
            "resend_on_error",
            "dead_letter_after_max_attempts",
            "reject_is_not_retried",
        ]
        .contains(&name)
    })
    .await;
    assert!(failed(&report, "resend_on_error"), "{report}");
    assert!(
        failed(&report, "dead_letter_after_max_attempts"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_server_that_loses_messages() {
    let report = msgio::testing::run_matching(
        Transported(LosesMessages::default()),
        Capabilities::new().wait(Duration::from_secs(3)),
        |name| name == "many_concurrent_publishers",
    )
    .await;
    assert!(failed(&report, "many_concurrent_publishers"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_server_that_truncates_bodies() {
    let report = msgio::testing::run_matching(
        Transported(TruncatesBodies),
        Capabilities::new().wait(Duration::from_secs(3)),
        |name| name == "round_trip",
    )
    .await;
    assert!(failed(&report, "round_trip"), "{report}");
}

/// Hands every message to the receiver twice.
#[derive(Clone)]
struct Duplicates;

impl Fault for Duplicates {
    async fn call<R: Receiver>(
        &self,
        inner: &R,
        ctx: Context,
        mut msg: Message,
    ) -> Result<(), Error> {
        let body = msg.clone_body(64 << 20).await?;
        let copy = msg.with_body(body);
        inner.receive(ctx.clone(), copy).await?;
        inner.receive(ctx, msg).await
    }
}

/// Retries a rejected message two seconds later instead of settling it.
#[derive(Clone)]
struct RedeliversRejectsLate;

impl Fault for RedeliversRejectsLate {
    async fn call<R: Receiver>(&self, inner: &R, ctx: Context, msg: Message) -> Result<(), Error> {
        match inner.receive(ctx, msg).await {
            Err(e) if e.is_reject() => Err(Error::retry_after(Duration::from_secs(2), e)),
            other => other,
        }
    }
}

fn quick() -> Capabilities {
    Capabilities::new().wait(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_server_that_delivers_twice() {
    let report =
        msgio::testing::run_matching(Transported(Duplicates), quick().consumer_groups(), |name| {
            ["closed_writer", "consumer_group"].contains(&name)
        })
        .await;
    assert!(failed(&report, "closed_writer"), "{report}");
    assert!(failed(&report, "consumer_group"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_topic_that_reorders() {
    let report = msgio::testing::run_matching(
        TopicFaulted(TopicFault::SwapsPairs),
        quick().ordering(),
        |name| name == "ordering",
    )
    .await;
    assert!(failed(&report, "ordering"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_topic_that_delivers_delayed_messages_early() {
    let report = msgio::testing::run_matching(
        TopicFaulted(TopicFault::IgnoresDelays),
        quick().delay(),
        |name| name == "delay",
    )
    .await;
    assert!(failed(&report, "delay"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_server_that_runs_too_many_at_once() {
    let report =
        msgio::testing::run_matching(TooConcurrent, quick(), |name| name == "concurrency_limit")
            .await;
    assert!(failed(&report, "concurrency_limit"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_server_that_redelivers_a_reject_late() {
    let report =
        msgio::testing::run_matching(Transported(RedeliversRejectsLate), quick(), |name| {
            name == "reject_is_not_retried"
        })
        .await;
    assert!(failed(&report, "reject_is_not_retried"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_fails_a_group_whose_second_member_gets_nothing() {
    let report =
        msgio::testing::run_matching(StarvesLaterMembers, quick().consumer_groups(), |name| {
            name == "consumer_group"
        })
        .await;
    assert!(failed(&report, "consumer_group"), "{report}");
}

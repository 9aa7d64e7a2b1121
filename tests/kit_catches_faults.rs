//! The conformance kit fails transports that break the contract: each faulty transport
//! here wraps the in-memory one with one fault, and the kit must name the cases it breaks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use msgio::mem::{MemQueue, MemServer, MemTopic};
use msgio::testing::{Capabilities, Outcome, Report, Transport};
use msgio::{Context, Error, Message, Receiver, Server, ServerConfig};

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

//! The conformance kit: the transport contract, runnable against any transport.
//!
//! Implement [`Transport`] for your (topic, server) pair, say what it can do with
//! [`Capabilities`], and call [`run`] from a test. Every case runs in turn, each bounded in
//! time; the [`Report`] lists what failed and why.
//!
//! ```
//! use msgio::mem::{MemQueue, MemServer, MemTopic};
//! use msgio::testing::{Capabilities, Transport};
//! use msgio::{Error, ServerConfig};
//!
//! struct Mem;
//!
//! impl Transport for Mem {
//!     type Destination = MemQueue;
//!     type Topic = MemTopic;
//!     type Server = MemServer;
//!
//!     async fn destination(&self) -> Result<MemQueue, Error> {
//!         MemQueue::new(10_000)
//!     }
//!     async fn topic(&self, queue: &MemQueue) -> Result<MemTopic, Error> {
//!         Ok(queue.topic())
//!     }
//!     async fn server(&self, queue: &MemQueue, config: ServerConfig) -> Result<MemServer, Error> {
//!         queue.server(config)
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() {
//! let caps = Capabilities::new().ordering().delay().dead_letter().persistence().consumer_groups();
//! msgio::testing::run(Mem, caps).await.assert_passed();
//! # }
//! ```
//!
//! A transport opened by URL runs the kit through [`UrlTransport`], with no code of its
//! own: `UrlTransport::new("redis://127.0.0.1/{name}?group=kit")`.
//!
//! The cases follow Watermill's universal pub/sub tests and gocloud's `drivertest`:
//! round trips of odd attributes and binary, empty and large bodies; many concurrent
//! publishers; batches (`Topic::publish_batch`); redelivery after an error and after a panic; continuing after many errors;
//! rejects; the concurrency limit; graceful shutdown and its deadline; closed writers;
//! topic isolation; and, where flagged, order, delay, dead-lettering, persistence across
//! servers, consumer groups and a broker restart.

mod cases;
mod harness;
mod process;
mod url;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{BoxFuture, Error, Server, ServerConfig, Topic};

pub use harness::{Received, Recorder, Running, start};
pub use process::ServerProcess;
pub use url::UrlTransport;

/// A transport under test: makes isolated destinations, and topics and servers on them.
pub trait Transport: Send + Sync + 'static {
    /// What names one isolated destination (a queue, a stream, a subject).
    type Destination: Clone + Send + Sync + 'static;
    /// The topic type.
    type Topic: Topic<Writer: 'static> + 'static;
    /// The server type.
    type Server: Server + 'static;

    /// A new destination that no other test uses (a random name, say).
    fn destination(&self) -> impl Future<Output = Result<Self::Destination, Error>> + Send;

    /// A topic publishing to `destination`.
    fn topic(
        &self,
        destination: &Self::Destination,
    ) -> impl Future<Output = Result<Self::Topic, Error>> + Send;

    /// A server serving from `destination`, configured by `config` (concurrency, attempts,
    /// dead-letter topic). Several servers on one destination share its messages.
    ///
    /// Once this returns, messages published to `destination` must reach the server when
    /// it serves: set up subscriptions and consumer groups here, not in `serve`.
    fn server(
        &self,
        destination: &Self::Destination,
        config: ServerConfig,
    ) -> impl Future<Output = Result<Self::Server, Error>> + Send;

    /// How many messages `destination` still holds for servers, as the broker counts them:
    /// waiting to be delivered, or delivered and not settled. With it the kit checks that
    /// what was acknowledged, rejected or dead-lettered is settled at the broker (a pending
    /// count of 0), not only that no server saw it again within a short time. Called when
    /// no server of the case runs.
    ///
    /// `Ok(None)`, the default, says the transport cannot tell: the kit then skips those
    /// checks.
    fn unsettled(
        &self,
        destination: &Self::Destination,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send {
        let _ = destination;
        async { Ok(None) }
    }

    /// Removes what `destination` left on the broker. Called after each case.
    fn remove(
        &self,
        destination: Self::Destination,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = destination;
        async { Ok(()) }
    }
}

/// Restarts the broker under test (for the reconnect case).
pub type RestartFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// What a transport can do, which turns on the cases that need it.
#[derive(Clone)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages from one publisher reach a server with concurrency 1 in publish order.
    pub ordering: bool,
    /// [`MessageWriter::set_delay`](crate::MessageWriter::set_delay) is honoured.
    pub delay: bool,
    /// Messages wait on the destination while no server runs, and survive a server's
    /// shutdown for the next one.
    pub persistence: bool,
    /// Servers dead-letter to [`ServerConfig::dead_letter`] after the maximum attempts.
    pub dead_letter: bool,
    /// Several servers on one destination share its messages, each delivered to one.
    pub consumer_groups: bool,
    /// Restarts the broker, for the reconnect case: one publisher goes on throughout (it
    /// retries what fails while the broker is down), and every message must reach the
    /// server once the broker is back.
    pub restart: Option<RestartFn>,
    /// The largest body the round-trip case sends (default 8 MiB).
    pub max_body: usize,
    /// How long a case waits for deliveries it expects before failing (default 30 s).
    pub wait: Duration,
}

impl Capabilities {
    /// Nothing beyond the basic contract; 8 MiB bodies.
    pub fn new() -> Self {
        Capabilities {
            ordering: false,
            delay: false,
            persistence: false,
            dead_letter: false,
            consumer_groups: false,
            restart: None,
            max_body: 8 << 20,
            wait: Duration::from_secs(30),
        }
    }

    /// Sets [`ordering`](Capabilities::ordering).
    pub fn ordering(mut self) -> Self {
        self.ordering = true;
        self
    }

    /// Sets [`delay`](Capabilities::delay).
    pub fn delay(mut self) -> Self {
        self.delay = true;
        self
    }

    /// Sets [`persistence`](Capabilities::persistence).
    pub fn persistence(mut self) -> Self {
        self.persistence = true;
        self
    }

    /// Sets [`dead_letter`](Capabilities::dead_letter).
    pub fn dead_letter(mut self) -> Self {
        self.dead_letter = true;
        self
    }

    /// Sets [`consumer_groups`](Capabilities::consumer_groups).
    pub fn consumer_groups(mut self) -> Self {
        self.consumer_groups = true;
        self
    }

    /// Sets [`restart`](Capabilities::restart).
    pub fn restart<F, Fut>(mut self, restart: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.restart = Some(Arc::new(move || Box::pin(restart())));
        self
    }

    /// Sets [`wait`](Capabilities::wait).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`max_body`](Capabilities::max_body).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::new()
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capabilities")
            .field("ordering", &self.ordering)
            .field("delay", &self.delay)
            .field("persistence", &self.persistence)
            .field("dead_letter", &self.dead_letter)
            .field("consumer_groups", &self.consumer_groups)
            .field("restart", &self.restart.is_some())
            .field("max_body", &self.max_body)
            .field("wait", &self.wait)
            .finish()
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transport did what the contract says.
    Passed,
    /// It did not; the text says what happened.
    Failed(String),
    /// The case needs a capability the transport does not claim.
    Skipped(&'static str),
}

/// The outcome of every case of a [`run`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Each case's name and outcome, in the order they ran.
    pub cases: Vec<(&'static str, Outcome)>,
}

impl Report {
    /// The cases that failed, with why.
    pub fn failures(&self) -> Vec<(&'static str, &str)> {
        self.cases
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                Outcome::Failed(why) => Some((*name, why.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Panics with the whole report when a case failed.
    ///
    /// # Panics
    ///
    /// When any case failed.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.failures().is_empty() {
            panic!("the transport failed the msgio conformance kit:\n{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.cases {
            match outcome {
                Outcome::Passed => writeln!(f, "  ok       {name}")?,
                Outcome::Skipped(why) => writeln!(f, "  skipped  {name} ({why})")?,
                Outcome::Failed(why) => writeln!(f, "  FAILED   {name}: {why}")?,
            }
        }
        let failed = self.failures().len();
        write!(f, "{} cases, {failed} failed", self.cases.len())
    }
}

/// For a test whose broker did not answer: with `MSGIO_REQUIRE_BROKERS=1` (as CI sets it)
/// this panics, naming the broker, its URL (password hidden) and the error; otherwise it
/// prints that the test is skipped, and the test should return.
///
/// # Panics
///
/// When `MSGIO_REQUIRE_BROKERS` is `1`.
#[track_caller]
pub fn skip_or_fail(broker: &str, url: &str, error: &dyn fmt::Display) {
    let url = crate::redact::url(url);
    if std::env::var("MSGIO_REQUIRE_BROKERS").is_ok_and(|v| v == "1") {
        panic!(
            "{broker} at {url} is required (MSGIO_REQUIRE_BROKERS=1) but did not answer: {error}"
        );
    }
    eprintln!(
        "SKIPPED: {broker} at {url} did not answer ({error}); set MSGIO_REQUIRE_BROKERS=1 to fail instead"
    );
}

/// A random lower-case hex suffix, for names tests must not share.
pub fn unique_suffix() -> String {
    crate::random::hex()
}

/// How long one case may take before it fails as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// The names of every case, in the order [`run`] runs them.
pub fn case_names() -> impl Iterator<Item = &'static str> {
    cases::ALL.iter().map(|case| case.name)
}

/// Runs every case against `transport` and reports each outcome. When the
/// `MSGIO_KIT_CASES` environment variable is set, only the cases whose name contains it run.
pub async fn run<T: Transport>(transport: T, capabilities: Capabilities) -> Report {
    let only = std::env::var("MSGIO_KIT_CASES").ok();
    run_matching(transport, capabilities, |name| {
        only.as_deref().is_none_or(|only| name.contains(only))
    })
    .await
}

/// Runs the cases whose name `select` accepts (see [`case_names`]).
pub async fn run_matching<T: Transport>(
    transport: T,
    capabilities: Capabilities,
    select: impl Fn(&str) -> bool,
) -> Report {
    let mut report = Report { cases: Vec::new() };
    for case in cases::ALL {
        if !select(case.name) {
            continue;
        }
        let outcome = match (case.needs)(&capabilities) {
            Some(missing) => Outcome::Skipped(missing),
            None => {
                let started = std::time::Instant::now();
                let result = tokio::time::timeout(
                    CASE_TIMEOUT,
                    cases::run_case(case.name, &transport, &capabilities),
                )
                .await;
                let outcome = match result {
                    Ok(Ok(())) => Outcome::Passed,
                    Ok(Err(why)) => Outcome::Failed(why),
                    Err(_) => Outcome::Failed(format!("did not finish within {CASE_TIMEOUT:?}")),
                };
                eprintln!(
                    "msgio kit: {:<34} {:>8.2?}  {}",
                    case.name,
                    started.elapsed(),
                    match &outcome {
                        Outcome::Passed => "ok",
                        _ => "FAILED",
                    }
                );
                outcome
            }
        };
        report.cases.push((case.name, outcome));
    }
    report
}

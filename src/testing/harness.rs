//! What the cases share: a recording receiver, serving in the background, publishing.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{Attributes, Context, Error, Message, MessageId, Receiver, Server, Topic};

/// One delivery as a [`Recorder`] saw it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Received {
    /// The attributes.
    pub attributes: Attributes,
    /// The whole body.
    pub body: Bytes,
    /// [`Context::attempt`].
    pub attempt: u32,
    /// [`Context::message_id`].
    pub message_id: Option<MessageId>,
    /// [`Context::source`].
    pub source: Option<String>,
}

impl Received {
    /// The `X-Kit-Seq` attribute the cases number their messages with.
    pub fn seq(&self) -> Option<u64> {
        self.attributes.get(SEQ)?.parse().ok()
    }
}

/// The attribute the cases number their messages with.
pub(crate) const SEQ: &str = "X-Kit-Seq";

type Behavior = dyn Fn(&Received, &Context) -> Result<(), Error> + Send + Sync;

/// A receiver that records every delivery, then answers as its behaviour says (by default
/// `Ok`). Cloning shares the record.
#[derive(Clone)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Received>>>,
    changed: Arc<Notify>,
    behavior: Arc<Behavior>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("received", &self.seen.lock().map(|s| s.len()).unwrap_or(0))
            .finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// Records and acknowledges every message.
    pub fn new() -> Self {
        Recorder::with(|_, _| Ok(()))
    }

    /// Records every message and returns what `behavior` says of it.
    ///
    /// `behavior` runs before the message is recorded, outside the recorder's lock, so
    /// that it may block or look at the recorder itself. Under concurrency the record's
    /// order can therefore differ from the order `behavior` was called in: a case that
    /// needs to know which deliveries succeeded should have `behavior` note them itself.
    pub fn with(
        behavior: impl Fn(&Received, &Context) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        Recorder {
            seen: Arc::default(),
            changed: Arc::default(),
            behavior: Arc::new(behavior),
        }
    }

    /// Every delivery so far, in the order they were recorded (see [`with`](Self::with)).
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many deliveries so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits until `pred` holds for the deliveries so far, for at most `timeout`.
    ///
    /// # Errors
    ///
    /// A description of what had arrived when the time ran out.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if pred(&seen) {
                    return Ok(seen.clone());
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}; {} deliveries had arrived",
                    self.count()
                ));
            }
        }
    }

    /// Waits until at least `n` deliveries arrived.
    ///
    /// # Errors
    ///
    /// As [`Recorder::wait_until`].
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>, String> {
        self.wait_until(&format!("{n} deliveries"), timeout, |seen| seen.len() >= n)
            .await
    }

    /// Waits until the sequence numbers (the kit's `X-Kit-Seq`) delivered here, together
    /// with `elsewhere` (those a consumer that died had handled, say), make `n` distinct
    /// ones, for at most `timeout`: every message was handled by one or the other.
    ///
    /// # Errors
    ///
    /// A description of what had arrived when the time ran out.
    pub async fn wait_for_the_rest(
        &self,
        elsewhere: &std::collections::BTreeSet<u64>,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Received>, String> {
        let what = format!(
            "{n} messages with the {} handled elsewhere",
            elsewhere.len()
        );
        self.wait_until(&what, timeout, |seen| {
            let mut all = elsewhere.clone();
            all.extend(seen.iter().filter_map(Received::seq));
            all.len() >= n
        })
        .await
    }
}

impl Receiver for Recorder {
    async fn receive(&self, ctx: Context, mut msg: Message) -> Result<(), Error> {
        let body = msg.body.read_to_bytes(64 << 20).await?;
        let received = Received {
            attributes: msg.attributes,
            body,
            attempt: ctx.attempt(),
            message_id: ctx.message_id().cloned(),
            source: ctx.source().map(str::to_owned),
        };
        let result = (self.behavior)(&received, &ctx);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(received);
        self.changed.notify_waiters();
        result
    }
}

/// A server serving in a background task (from [`start`]).
#[derive(Debug)]
pub struct Running<S: Server> {
    pub(crate) server: Arc<S>,
    task: JoinHandle<Result<(), Error>>,
}

/// Serves `receiver` with `server` in a background task; [`Running::stop`] shuts it down
/// and checks that `serve` ended as the contract says.
///
/// # Panics
///
/// Outside a Tokio runtime.
pub fn start<S, R>(server: S, receiver: R) -> Running<S>
where
    S: Server + 'static,
    R: Receiver + 'static,
{
    let server = Arc::new(server);
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    Running { server, task }
}

impl<S: Server + 'static> Running<S> {
    /// The server.
    pub fn server(&self) -> &S {
        &self.server
    }

    /// Shuts down within `grace`; checks that shutdown succeeded and that `serve` returned
    /// `ServerClosed`.
    ///
    /// # Errors
    ///
    /// What went wrong, when either did not.
    pub async fn stop(self, grace: Duration) -> Result<(), String> {
        let shutdown = self.server.shutdown(grace).await;
        let served = self.join().await?;
        shutdown.map_err(|e| format!("shutdown failed: {e}"))?;
        served
    }

    /// Waits for `serve` to return and checks it returned `ServerClosed`.
    pub(crate) async fn join(self) -> Result<Result<(), String>, String> {
        let served = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .map_err(|_| "serve did not return within 30 s of shutdown".to_owned())?
            .map_err(|e| format!("the serve task failed: {e}"))?;
        Ok(match served {
            Err(Error::ServerClosed) => Ok(()),
            other => Err(format!("serve returned {other:?}, not Err(ServerClosed)")),
        })
    }
}

/// Publishes a message numbered `seq` with the given body and extra attributes.
pub(crate) async fn publish_seq<T: Topic>(
    topic: &T,
    seq: u64,
    body: impl Into<crate::Body>,
    attributes: &Attributes,
) -> Result<(), String> {
    let mut msg = Message::from_parts(attributes.clone(), body);
    msg.attributes.set(SEQ, seq.to_string());
    topic
        .publish(&Context::background(), msg)
        .await
        .map_err(|e| format!("publishing message {seq} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[tokio::test]
    async fn the_rest_counts_what_was_handled_elsewhere() {
        let recorder = Recorder::new();
        let elsewhere = BTreeSet::from([1, 2]);
        let short = Duration::from_millis(20);
        let mut msg = Message::new("x");
        msg.attributes.set(SEQ, "2");
        recorder.receive(Context::background(), msg).await.unwrap();
        assert!(
            recorder
                .wait_for_the_rest(&elsewhere, 3, short)
                .await
                .is_err(),
            "message 2 counted twice"
        );
        let mut msg = Message::new("x");
        msg.attributes.set(SEQ, "3");
        recorder.receive(Context::background(), msg).await.unwrap();
        recorder
            .wait_for_the_rest(&elsewhere, 3, short)
            .await
            .unwrap();
    }
}

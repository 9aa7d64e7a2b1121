//! The in-memory transport: a bounded queue in the process, served by the delivery engine.
//!
//! Publishing waits while the queue is full and never drops a message. Failed messages are
//! requeued with their attempt count incremented (after their delay, when the receiver asked
//! for one), delays set with [`MessageWriter::set_delay`](crate::MessageWriter::set_delay)
//! are honoured, empty bodies are delivered, and dead-lettering works as on every engine
//! server. Several servers on one queue share its messages (competing consumers), and a
//! queue outlives its servers: what one server left is served by the next.
//!
//! ```
//! use msgio::{Context, Message, ReceiverFunc, Server, Topic};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), msgio::Error> {
//! let queue = msgio::mem::MemQueue::named("orders", 1024)?;
//! let topic = queue.topic();
//! let server = queue.server(msgio::ServerConfig::new().concurrency(8))?;
//!
//! topic.publish(&Context::background(), Message::new("order 1")).await?;
//!
//! let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(1);
//! let serving = server.clone();
//! tokio::spawn(async move {
//!     serving
//!         .serve(ReceiverFunc::new(move |ctx: Context, mut msg: Message| {
//!             let done_tx = done_tx.clone();
//!             async move {
//!                 let body = msg.body.read_to_bytes(1024).await?;
//!                 assert_eq!(ctx.source(), Some("orders"));
//!                 done_tx.send(body).await.ok();
//!                 Ok(())
//!             }
//!         }))
//!         .await
//! });
//! assert_eq!(done_rx.recv().await.unwrap(), "order 1");
//! server.shutdown(Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::engine::{Delivery, Engine, Settle, Settlement, Source};
use crate::topic::{BufferedWriter, Outgoing, Publish};
use crate::{Attributes, Context, Error, ServerConfig, Topic};

/// A [`MemTopic`] and a [`MemServer`] over a new queue holding at most `capacity` messages,
/// with the default [`ServerConfig`].
///
/// # Errors
///
/// [`Error::InvalidConfig`] when `capacity` is zero.
pub fn channel(capacity: usize) -> Result<(MemTopic, MemServer), Error> {
    channel_with(capacity, ServerConfig::default())
}

/// A [`MemTopic`] and a [`MemServer`] over a new queue holding at most `capacity` messages.
///
/// # Errors
///
/// [`Error::InvalidConfig`] when `capacity` is zero or `config` has a value out of range.
pub fn channel_with(capacity: usize, config: ServerConfig) -> Result<(MemTopic, MemServer), Error> {
    let queue = MemQueue::new(capacity)?;
    Ok((queue.topic(), queue.server(config)?))
}

/// An in-memory queue: make topics that publish to it and servers that serve from it.
/// Cloning gives another handle to the same queue.
#[derive(Clone)]
pub struct MemQueue {
    queue: Arc<Queue>,
}

impl MemQueue {
    /// A queue named `"mem"` holding at most `capacity` published messages waiting for a
    /// server (ready or delayed). A message leaves that count when a server takes it;
    /// retried messages return to the queue even when it is full, so that a server never
    /// waits on its own publishers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `capacity` is zero or above `Semaphore::MAX_PERMITS`.
    pub fn new(capacity: usize) -> Result<Self, Error> {
        MemQueue::named("mem", capacity)
    }

    /// A queue with a name, which receivers see as [`Context::source`].
    ///
    /// # Errors
    ///
    /// As [`MemQueue::new`].
    pub fn named(name: impl Into<String>, capacity: usize) -> Result<Self, Error> {
        if capacity == 0 || capacity > Semaphore::MAX_PERMITS {
            return Err(Error::invalid_config(
                "capacity",
                format!("{capacity} is not between 1 and {}", Semaphore::MAX_PERMITS),
            ));
        }
        Ok(MemQueue {
            queue: Arc::new(Queue {
                name: name.into(),
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                capacity: Semaphore::new(capacity),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// A topic publishing to this queue.
    pub fn topic(&self) -> MemTopic {
        MemTopic {
            queue: self.queue.clone(),
        }
    }

    /// A server serving from this queue.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first setting of `config` out of range.
    pub fn server(&self, config: ServerConfig) -> Result<MemServer, Error> {
        Ok(MemServer {
            engine: Engine::new(
                MemSource {
                    queue: self.queue.clone(),
                },
                config,
            )?,
        })
    }

    /// How many messages wait to be delivered (ready or delayed, not in flight).
    pub fn len(&self) -> usize {
        let state = self.queue.lock();
        state.ready.len() + state.delayed.len()
    }

    /// Whether no message waits to be delivered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemQueue")
            .field("name", &self.queue.name)
            .field("waiting", &self.len())
            .finish()
    }
}

struct Queue {
    name: String,
    state: Mutex<State>,
    /// Wakes servers waiting for messages.
    notify: Notify,
    /// One permit per message the queue may still take from publishers.
    capacity: Semaphore,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Item>,
    delayed: BinaryHeap<Delayed>,
    /// Orders delayed messages due at the same instant by when they were delayed.
    delayed_seq: u64,
}

/// A message held by the queue; also the delivery token.
struct Item {
    id: u64,
    /// Published and not yet taken by a server: it holds one permit of the capacity.
    holds_room: bool,
    attempt: u32,
    attributes: Attributes,
    body: Bytes,
}

struct Delayed {
    due: Instant,
    seq: u64,
    item: Item,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that the max-heap yields the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in a new message; the caller holds a capacity permit for it.
    fn push_new(&self, message: Outgoing) {
        let item = Item {
            id: self.next_id.fetch_add(1, AtomicOrdering::Relaxed),
            holds_room: true,
            attempt: 1,
            attributes: message.attributes,
            body: message.body,
        };
        self.lock().enqueue(item, message.delay);
        self.notify.notify_one();
    }
}

impl State {
    fn enqueue(&mut self, item: Item, delay: Option<Duration>) {
        match delay.filter(|d| !d.is_zero()) {
            None => self.ready.push_back(item),
            Some(delay) => {
                let due = Instant::now()
                    .checked_add(delay)
                    .unwrap_or_else(crate::context::far_future);
                self.delayed_seq += 1;
                self.delayed.push(Delayed {
                    due,
                    seq: self.delayed_seq,
                    item,
                });
            }
        }
    }

    /// Moves delayed messages that are due to the ready queue; returns when the next is due.
    fn promote_due(&mut self) -> Option<Instant> {
        if self.delayed.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(next) = self.delayed.peek() {
            if next.due > now {
                return Some(next.due);
            }
            let Delayed { item, .. } = self.delayed.pop().expect("peeked");
            self.ready.push_back(item);
        }
        None
    }
}

/// A topic publishing to an in-memory queue.
#[derive(Clone)]
pub struct MemTopic {
    queue: Arc<Queue>,
}

impl fmt::Debug for MemTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemTopic")
            .field("queue", &self.queue.name)
            .finish()
    }
}

impl Topic for MemTopic {
    type Writer = MemWriter;

    fn new_writer(&self, ctx: &Context) -> Result<MemWriter, Error> {
        Ok(BufferedWriter::new(
            MemPublisher {
                queue: self.queue.clone(),
            },
            ctx,
        ))
    }
}

/// The writer of a [`MemTopic`]. Closing it waits while the queue is full (until the
/// writer's context is cancelled).
pub type MemWriter = BufferedWriter<MemPublisher>;

/// Publishes whole messages to an in-memory queue (for [`MemWriter`]).
pub struct MemPublisher {
    queue: Arc<Queue>,
}

impl fmt::Debug for MemPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemPublisher")
            .field("queue", &self.queue.name)
            .finish()
    }
}

impl Publish for MemPublisher {
    type Future = MemPublish;

    fn publish(&self, ctx: &Context, message: Outgoing) -> MemPublish {
        if ctx.is_cancelled() {
            // As every transport: a cancelled context publishes nothing.
            return MemPublish::Waiting(Box::pin(async { Err(Error::Cancelled) }));
        }
        match self.queue.capacity.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.queue.push_new(message);
                MemPublish::Done
            }
            Err(TryAcquireError::NoPermits) => {
                let queue = self.queue.clone();
                let ctx = ctx.clone();
                MemPublish::Waiting(Box::pin(async move {
                    let permit = ctx
                        .unless_cancelled(async { Ok(queue.capacity.acquire().await) })
                        .await?;
                    permit
                        .expect("the queue never closes its semaphore")
                        .forget();
                    queue.push_new(message);
                    Ok(())
                }))
            }
            Err(TryAcquireError::Closed) => unreachable!("the queue never closes its semaphore"),
        }
    }
}

/// The future of [`MemPublisher::publish`]: ready at once unless the queue is full.
pub enum MemPublish {
    /// Published.
    Done,
    /// Waiting for room in the queue.
    Waiting(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>),
}

impl fmt::Debug for MemPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemPublish::Done => "MemPublish::Done",
            MemPublish::Waiting(_) => "MemPublish::Waiting",
        })
    }
}

impl Future for MemPublish {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match &mut *self {
            MemPublish::Done => Poll::Ready(Ok(())),
            MemPublish::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// The engine source over an in-memory queue.
struct MemSource {
    queue: Arc<Queue>,
}

impl Source for MemSource {
    type Token = Item;

    fn name(&self) -> &str {
        &self.queue.name
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<Item>>) -> Result<(), Error> {
        let queue = &*self.queue;
        loop {
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a publish in between is not missed.
            notified.as_mut().enable();
            let next_due = {
                let mut state = queue.lock();
                let next_due = state.promote_due();
                let n = max.min(state.ready.len());
                if n > 0 {
                    // Taken messages make room for publishers; retries come back to the
                    // queue without taking room again.
                    let mut room = 0;
                    out.extend(state.ready.drain(..n).map(|mut item| {
                        room += usize::from(std::mem::take(&mut item.holds_room));
                        Delivery {
                            message_id: Some(item.id.into()),
                            attempt: item.attempt,
                            attributes: item.attributes.clone(),
                            body: item.body.clone(),
                            malformed: None,
                            token: item,
                        }
                    }));
                    if room > 0 {
                        queue.capacity.add_permits(room);
                    }
                    if !state.ready.is_empty() {
                        // Leave the rest to another server on this queue.
                        queue.notify.notify_one();
                    }
                    return Ok(());
                }
                next_due
            };
            match next_due {
                None => notified.await,
                Some(due) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
            }
        }
    }

    async fn settle(&self, batch: &mut Vec<Settlement<Item>>) -> Result<(), Error> {
        let queue = &*self.queue;
        let mut requeued = false;
        let mut released = Vec::new();
        {
            let mut state = queue.lock();
            for settlement in batch.drain(..) {
                let mut item = settlement.token;
                match settlement.action {
                    Settle::Ack | Settle::Reject => {}
                    Settle::Nack { delay } => {
                        item.attempt = item.attempt.saturating_add(1);
                        state.enqueue(item, delay);
                        requeued = true;
                    }
                    Settle::Release => released.push(item),
                    // Not an attempt: back after the delay, attempt count unchanged.
                    Settle::Defer { delay } => {
                        state.enqueue(item, Some(delay));
                        requeued = true;
                    }
                }
            }
            // Back to the front, in the order they were fetched.
            for item in released.into_iter().rev() {
                state.ready.push_front(item);
                requeued = true;
            }
        }
        if requeued {
            queue.notify.notify_one();
        }
        Ok(())
    }
}

/// A server over an in-memory queue, built on the delivery engine. Cloning gives another
/// handle to the same server.
#[derive(Clone, Debug)]
pub struct MemServer {
    engine: Engine<MemSource>,
}

engine_server!(MemServer);

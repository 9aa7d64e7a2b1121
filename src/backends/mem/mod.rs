//! The in-memory transport: a bounded queue in the process, served by the delivery engine.
//!
//! Publishing waits while the queue is full and never drops a message. Failed messages are
//! requeued with their attempt count incremented (after their delay, when the receiver asked
//! for one), delays set with [`MessageWriter::set_delay`](crate::MessageWriter::set_delay)
//! are honoured, empty bodies are delivered, and dead-lettering works as on every engine
//! server. Several servers on one queue share its messages (competing consumers), and a
//! queue outlives its servers: what one server left is served by the next.
//!
//! Besides its messages, a queue keeps up to 256 emptied attribute tables of acknowledged
//! messages (a few hundred bytes each) for the next writers to fill: a table is reused only
//! when nothing else holds it, so attributes a receiver kept stay as they were, and no
//! attribute carries over from one message to another.
//!
//! # URL
//!
//! `mem://<queue>[?capacity=<n>]` (see [`open_topic`](crate::open_topic)): the first URL
//! naming a queue creates it (capacity 10,000 unless given), and every topic and server
//! opened with that name in the process shares it, for the life of the process. Asking
//! for another capacity than the queue has is an error.
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
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::attributes::SpareTable;
use crate::transport::Engine;
use crate::transport::Outgoing;
use crate::{Attributes, Error, ServerConfig};

mod source;
mod url;
pub(crate) use url::MemOpener;
mod topic;

pub use source::{MemServer, MemSource, MemToken};
pub use topic::{MemPublish, MemPublisher, MemTopic, MemWriter};

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

    /// A queue with a name, which receivers see as [`Context::source`](crate::Context::source).
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
                limit: capacity,
                next_id: AtomicU64::new(1),
                spares: Mutex::new(Vec::new()),
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
        Engine::new(
            MemSource {
                queue: self.queue.clone(),
                spare: Default::default(),
            },
            config,
        )
    }

    /// The most published messages the queue holds waiting for a server, as made.
    pub fn capacity(&self) -> usize {
        self.queue.limit
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
    /// The capacity it was made with.
    limit: usize,
    next_id: AtomicU64,
    /// Attribute tables of acknowledged messages, emptied, for the next writers: a table
    /// then stays on the publisher's thread, where glibc's allocator would otherwise free
    /// on the server's thread what it allocated on the publisher's, its slow path. At most
    /// [`SPARE_TABLES`].
    spares: Mutex<Vec<SpareTable>>,
}

/// The most spare attribute tables a queue keeps (a few hundred bytes each).
const SPARE_TABLES: usize = 256;

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

    fn lock_spares(&self) -> MutexGuard<'_, Vec<SpareTable>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attributes for a new message: empty, on a spare table when the queue has one.
    fn new_attributes(&self) -> Attributes {
        self.lock_spares()
            .pop()
            .map_or_else(Attributes::new, Attributes::with_spare)
    }

    /// Drops acknowledged messages, keeping their attribute tables (emptied) for the next
    /// writers while there is room.
    fn recycle(&self, done: Vec<Item>) {
        if done.is_empty() || self.lock_spares().len() >= SPARE_TABLES {
            return;
        }
        // The bodies are dropped here, before the lock is taken again.
        let tables: Vec<SpareTable> = done
            .into_iter()
            .filter_map(|item| item.attributes.into_spare())
            .collect();
        let mut spares = self.lock_spares();
        let room = SPARE_TABLES.saturating_sub(spares.len());
        spares.extend(tables.into_iter().take(room));
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
        let first = {
            let mut state = self.lock();
            state.enqueue(item, message.delay);
            // A server waits only when it found nothing ready: one wake-up for the first
            // message is enough, and the ones after it are taken with it.
            state.ready.len() <= 1 || message.delay.is_some()
        };
        if first {
            self.notify.notify_one();
        }
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

//! Supervised dispatch over a group of member receivers.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::receiver::catch_panic;
use crate::{BoxReceiver, Context, Error, Message, Receiver, canonical_key, log};

/// How a [`ConsumerGroup`] picks a member for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routing {
    /// Each member in turn.
    RoundRobin,
    /// The member with the fewest messages in hand (the first of those tied).
    LeastLoaded,
    /// The member the hash of this attribute's value names, so one key's messages go to
    /// one member, in order; messages without the attribute go round robin.
    HashKey(String),
}

/// Spreads messages over member receivers by a [`Routing`], supervising them: when a member
/// panics on a message, the message is re-routed to another member at once and the crashed
/// member is left out for a cool-down (default 5 s). With no member left to try, the
/// message fails with a retryable error that says so. (liminal-rs's `DispatchConversation`
/// is the model.)
///
/// The body is read into memory before the first member sees it (up to 64 MiB, see
/// [`max_body`](ConsumerGroup::max_body)), so that a re-routed member gets it whole.
///
/// ```
/// use msgio::decorators::{ConsumerGroup, Routing};
/// use msgio::{Context, Message, ReceiverFunc};
///
/// let group = ConsumerGroup::new(Routing::HashKey("Customer-Id".into()))
///     .member(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
///     .member(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }));
/// # let _ = group;
/// ```
#[derive(Clone)]
pub struct ConsumerGroup {
    inner: Arc<Group>,
}

struct Group {
    members: Vec<Member>,
    routing: Routing,
    cooldown: Duration,
    max_body: usize,
    next: AtomicUsize,
}

impl Clone for Group {
    fn clone(&self) -> Self {
        Group {
            members: self
                .members
                .iter()
                .map(|m| Member::new(m.receiver.clone()))
                .collect(),
            routing: self.routing.clone(),
            cooldown: self.cooldown,
            max_body: self.max_body,
            next: AtomicUsize::new(0),
        }
    }
}

struct Member {
    receiver: BoxReceiver,
    in_flight: AtomicUsize,
    excluded_until: Mutex<Option<Instant>>,
}

impl Member {
    fn new(receiver: BoxReceiver) -> Self {
        Member {
            receiver,
            in_flight: AtomicUsize::new(0),
            excluded_until: Mutex::new(None),
        }
    }

    fn available(&self, now: Instant) -> bool {
        let until = self
            .excluded_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_none_or(|until| now >= until)
    }
}

impl fmt::Debug for ConsumerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerGroup")
            .field("members", &self.inner.members.len())
            .field("routing", &self.inner.routing)
            .field("cooldown", &self.inner.cooldown)
            .finish()
    }
}

impl ConsumerGroup {
    /// An empty group routing by `routing`.
    pub fn new(routing: Routing) -> Self {
        let routing = match routing {
            Routing::HashKey(key) => Routing::HashKey(canonical_key(&key).into_owned()),
            other => other,
        };
        ConsumerGroup {
            inner: Arc::new(Group {
                members: Vec::new(),
                routing,
                cooldown: Duration::from_secs(5),
                max_body: 64 << 20,
                next: AtomicUsize::new(0),
            }),
        }
    }

    fn group_mut(&mut self) -> &mut Group {
        Arc::make_mut(&mut self.inner)
    }

    /// Adds a member.
    pub fn member<R: Receiver + 'static>(mut self, receiver: R) -> Self {
        self.group_mut()
            .members
            .push(Member::new(BoxReceiver::new(receiver)));
        self
    }

    /// How long a member that panicked is left out.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.group_mut().cooldown = cooldown;
        self
    }

    /// The largest body kept for re-routing; a larger body goes to one member without
    /// re-routing.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.group_mut().max_body = bytes;
        self
    }

    /// How many members are not cooling down after a crash.
    pub fn available_members(&self) -> usize {
        self.inner.available()
    }
}

impl Group {
    fn available(&self) -> usize {
        let now = Instant::now();
        self.members.iter().filter(|m| m.available(now)).count()
    }

    /// The member for `msg`, among those available and not yet tried.
    fn pick(&self, attributes: &crate::Attributes, tried: &[bool]) -> Option<usize> {
        let n = self.members.len();
        let now = Instant::now();
        let eligible = |i: usize| !tried[i] && self.members[i].available(now);
        let start = match &self.routing {
            Routing::LeastLoaded => {
                return (0..n)
                    .filter(|&i| eligible(i))
                    .min_by_key(|&i| self.members[i].in_flight.load(Ordering::Relaxed));
            }
            Routing::HashKey(key) => match attributes.get(key) {
                Some(value) => {
                    let mut h = DefaultHasher::new();
                    value.hash(&mut h);
                    (h.finish() % n as u64) as usize
                }
                None => self.next.fetch_add(1, Ordering::Relaxed),
            },
            Routing::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
        };
        // The chosen member, or the next one along that can take it.
        (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
    }
}

impl Receiver for ConsumerGroup {
    async fn receive(&self, ctx: Context, mut msg: Message) -> Result<(), Error> {
        let group = &*self.inner;
        let n = group.members.len();
        if n == 0 {
            return Err(Error::other("the consumer group has no members"));
        }
        let body = match msg.dump_body(group.max_body).await {
            Ok(body) => Some(body),
            Err(Error::BodyTooLarge { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut tried = vec![false; n];
        let attributes = msg.attributes.clone();
        let mut msg = Some(msg);
        loop {
            let Some(i) = group.pick(&attributes, &tried) else {
                return Err(Error::other(format!(
                    "no consumer group member available: {} of {n} are cooling down after a crash",
                    n - group.available()
                )));
            };
            tried[i] = true;
            let member = &group.members[i];
            // Keep a copy while a re-route may still need it.
            let this = match (&body, &msg) {
                (Some(body), Some(m)) => m.with_body(body.clone()),
                _ => msg
                    .take()
                    .expect("a message without a kept body is tried once"),
            };
            // A context of its own, so that a member that cancels it and then crashes does
            // not hand the next member a cancelled one.
            let member_ctx = if n > 1 { ctx.child() } else { ctx.clone() };
            member.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = catch_panic(|| member.receiver.receive(member_ctx, this)).await;
            member.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Err(Error::Panicked { message }) => {
                    let until = Instant::now() + group.cooldown;
                    *member
                        .excluded_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(until);
                    log::warning!(
                        "msgio: consumer group member {i} panicked ({message}); re-routing, and leaving it out for {:?}",
                        group.cooldown
                    );
                    if msg.is_none() {
                        return Err(Error::Panicked { message });
                    }
                }
                other => return other,
            }
        }
    }
}

//! The context handed to receivers and topics: cancellation, deadline, delivery facts and
//! typed values.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// What a receiver or a writer is given alongside the message: a cancellation signal, an
/// optional deadline, the facts of the delivery (message id, attempt number, source) and typed
/// values (go's `context.Context`).
///
/// A server hands each receiver a context of its own, cancelled when the server's shutdown
/// deadline passes. As in Go, where a callee cannot cancel its caller's context, a receiver
/// that calls [`cancel`](Context::cancel) on it cancels that message's context (and what was
/// derived from it) only: never the server, and never another message's context.
/// Contexts are cheap to clone; clones share the cancellation signal.
///
/// # Examples
///
/// ```
/// use msgio::Context;
/// use std::time::Duration;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct TenantId(u32);
///
/// let ctx = Context::background()
///     .with_timeout(Duration::from_secs(5))
///     .with_value(TenantId(7));
/// assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(7)));
/// assert_eq!(ctx.attempt(), 1);
/// assert!(!ctx.is_cancelled());
///
/// ctx.cancel();
/// assert!(ctx.is_cancelled());
/// ```
#[derive(Clone)]
pub struct Context {
    origin: Arc<Origin>,
    deadline: Option<Instant>,
    message_id: Option<MessageId>,
    attempt: u32,
    values: http::Extensions,
}

/// What the contexts of one server's messages share: the token that cancels them and the
/// source's name. One `Arc` rather than cloning each (cloning a `CancellationToken` locks
/// its node), and an engine worker keeps its own, so that making a message's context
/// touches no memory the other cores write.
pub(crate) struct Origin {
    token: CancellationToken,
    source: Option<Arc<str>>,
    /// Set once a context of this origin was cancelled, or let its token out (handed a
    /// reference to it, or shared it with another origin): the token may then be cancelled
    /// at any time, by whoever kept it.
    exposed: AtomicBool,
}

impl Origin {
    pub(crate) fn new(token: CancellationToken, source: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(Origin {
            token,
            source,
            exposed: AtomicBool::new(false),
        })
    }

    fn expose(&self) {
        self.exposed.store(true, Ordering::Relaxed);
    }

    /// Whether a context made from this origin may have been cancelled, or may still be
    /// (a clone of it, or of its token, outlived the message it was made for): then it must
    /// not be handed to another message, whose context would be cancelled with it. Reads
    /// no lock: a token is only cancelled through a context (which marks the origin),
    /// through a reference a context handed out (which marked it too), or with its parent
    /// when the server aborts (and then a new token would be cancelled as well).
    pub(crate) fn is_spent(self: &Arc<Self>) -> bool {
        if Arc::strong_count(self) > 1 {
            return true;
        }
        // Pairs with the release of the last other clone's drop: what that clone's holder
        // did (marking this origin) is seen here.
        fence(Ordering::Acquire);
        self.exposed.load(Ordering::Relaxed)
    }
}

impl Context {
    /// A context that is never cancelled unless [`cancel`](Context::cancel) is called, with no
    /// deadline, no delivery facts and no values.
    pub fn background() -> Self {
        Context::from_cancellation_token(CancellationToken::new())
    }

    /// A context cancelled when `token` is (and cancelling it cancels `token`), with no
    /// deadline, no delivery facts and no values. `Context::from(token)` does the same.
    ///
    /// ```
    /// use msgio::Context;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let token = CancellationToken::new();
    /// let ctx = Context::from_cancellation_token(token.clone());
    /// token.cancel();
    /// assert!(ctx.is_cancelled());
    /// ```
    pub fn from_cancellation_token(token: CancellationToken) -> Self {
        Context::with_origin(Origin::new(token, None))
    }

    /// The former name of [`Context::from_cancellation_token`]: it builds a new context,
    /// it does not add a token to an existing one.
    #[deprecated(since = "0.1.0", note = "renamed to Context::from_cancellation_token")]
    pub fn with_cancellation_token(token: CancellationToken) -> Self {
        Context::from_cancellation_token(token)
    }

    /// A context with the token and source name of `origin` (shared, not cloned).
    pub(crate) fn with_origin(origin: Arc<Origin>) -> Self {
        Context {
            origin,
            deadline: None,
            message_id: None,
            attempt: 1,
            values: http::Extensions::new(),
        }
    }

    /// The token that cancels this context.
    pub fn cancellation_token(&self) -> &CancellationToken {
        self.origin.expose();
        &self.origin.token
    }

    /// A context with the same facts and values, cancelled when this one is and also on its
    /// own (through [`cancel`](Context::cancel) on the child).
    pub fn child(&self) -> Context {
        Context {
            origin: Origin::new(self.origin.token.child_token(), self.origin.source.clone()),
            ..self.clone()
        }
    }

    /// Cancels this context and every context derived from it with [`child`](Context::child).
    pub fn cancel(&self) {
        self.origin.expose();
        self.origin.token.cancel();
    }

    /// Whether the context was cancelled or its deadline has passed.
    pub fn is_cancelled(&self) -> bool {
        self.origin.token.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Completes when the context is cancelled or its deadline passes.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn cancelled(&self) {
        match self.deadline {
            None => self.origin.token.cancelled().await,
            Some(deadline) => {
                tokio::select! {
                    _ = self.origin.token.cancelled() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }

    /// Runs `work` unless the context is cancelled first: `Err(Error::Cancelled)` without
    /// starting `work` when it already is, and dropping `work` when it is cancelled
    /// meanwhile.
    ///
    /// `work` is polled before the context is watched, so work that finishes at its first
    /// poll never registers with the context's token, and work that waits registers once:
    /// a publish pays for watching its context once, not at every wake-up. This is how a
    /// transport's [`Sender`](crate::transport::Sender) honours cancellation where it waits.
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`] when the context was or became cancelled first; otherwise what
    /// `work` gave.
    ///
    /// # Examples
    ///
    /// ```
    /// use msgio::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let ctx = Context::background();
    /// assert_eq!(ctx.unless_cancelled(async { Ok(7) }).await.unwrap(), 7);
    ///
    /// ctx.cancel();
    /// let never = std::future::pending::<Result<(), Error>>();
    /// assert!(matches!(ctx.unless_cancelled(never).await, Err(Error::Cancelled)));
    /// # }
    /// ```
    pub fn unless_cancelled<T, F>(&self, work: F) -> impl Future<Output = Result<T, Error>>
    where
        F: Future<Output = Result<T, Error>>,
    {
        // A future of its own rather than an `async fn` around `select!`: that one moved
        // `work` twice more before polling it (a transport's send is a large future, and
        // copying it cost more than watching the token did).
        UnlessCancelled {
            ctx: self,
            work,
            token: None,
            timer: None,
            started: false,
        }
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// This context with a deadline: the earlier of `deadline` and the deadline it had.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        self
    }

    /// This context with a deadline `timeout` from now (or its earlier deadline).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        self.with_deadline(deadline)
    }

    /// The id the transport gave the message, if it has one.
    pub fn message_id(&self) -> Option<&MessageId> {
        self.message_id.as_ref()
    }

    /// The delivery attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The name of the transport source the message came from (a queue, stream or subject).
    pub fn source(&self) -> Option<&str> {
        self.origin.source.as_deref()
    }

    /// This context with the given message id (set by servers).
    pub fn with_message_id(mut self, id: impl Into<MessageId>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// This context with the given attempt number (set by servers; 0 is taken as 1).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// This context with the given source name (set by servers).
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        // The token now lives in another origin too, beyond this one's count.
        self.origin.expose();
        self.origin = Origin::new(self.origin.token.clone(), Some(source.into()));
        self
    }

    /// This context with a typed value; a value of the same type is replaced.
    pub fn with_value<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.values.insert(value);
        self
    }

    /// The value of type `T`, if one was set.
    pub fn value<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get::<T>()
    }
}

impl From<CancellationToken> for Context {
    /// [`Context::from_cancellation_token`].
    fn from(token: CancellationToken) -> Self {
        Context::from_cancellation_token(token)
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::background()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("cancelled", &self.origin.token.is_cancelled())
            .field("deadline", &self.deadline)
            .field("message_id", &self.message_id)
            .field("attempt", &self.attempt)
            .field("source", &self.origin.source)
            .finish_non_exhaustive()
    }
}

/// The future of [`Context::unless_cancelled`]: `work`, raced against the context's
/// token (registered only once `work` has waited) and deadline.
#[pin_project::pin_project]
struct UnlessCancelled<'a, F> {
    ctx: &'a Context,
    #[pin]
    work: F,
    #[pin]
    token: Option<tokio_util::sync::WaitForCancellationFuture<'a>>,
    #[pin]
    timer: Option<tokio::time::Sleep>,
    started: bool,
}

impl<T, F: Future<Output = Result<T, Error>>> Future for UnlessCancelled<'_, F> {
    type Output = Result<T, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let mut this = self.project();
        if !*this.started {
            *this.started = true;
            if this.ctx.is_cancelled() {
                return Poll::Ready(Err(Error::Cancelled));
            }
        }
        if let Poll::Ready(result) = this.work.poll(cx) {
            return Poll::Ready(result);
        }
        if this.token.is_none() {
            this.token.set(Some(this.ctx.origin.token.cancelled()));
            if let Some(deadline) = this.ctx.deadline {
                this.timer.set(Some(tokio::time::sleep_until(deadline)));
            }
        }
        let token = this.token.as_pin_mut().map(|t| t.poll(cx).is_ready());
        let timer = this.timer.as_pin_mut().map(|t| t.poll(cx).is_ready());
        if token == Some(true) || timer == Some(true) {
            return Poll::Ready(Err(Error::Cancelled));
        }
        Poll::Pending
    }
}

/// About thirty years from now: a deadline that never comes.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// The id of a delivered message, as its transport names it: a number (a sequence, a tag) or
/// a string.
///
/// A string of decimal digits with no leading zero is stored as the number, so
/// `MessageId::from("42") == MessageId::from(42)`; two such numbers joined by a `-` (a
/// stream entry id) are stored as the pair, without an allocation.
///
/// ```
/// use msgio::MessageId;
/// assert_eq!(MessageId::from("42"), MessageId::from(42u64));
/// assert_eq!(MessageId::from("1700000000000-0").to_string(), "1700000000000-0");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(IdRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum IdRepr {
    Num(u64),
    /// `<first>-<second>`, both numbers written as above.
    Pair(u64, u64),
    Str(Arc<str>),
}

impl MessageId {
    /// The id as a number, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            IdRepr::Num(n) => Some(n),
            IdRepr::Pair(..) | IdRepr::Str(_) => None,
        }
    }

    /// The id `<first>-<second>` (a stream entry id), without formatting it.
    pub(crate) fn pair(first: u64, second: u64) -> Self {
        MessageId(IdRepr::Pair(first, second))
    }
}

/// `s` as a number when it is one written the one way [`Display`](fmt::Display) writes it:
/// decimal digits, no sign and no leading zero.
fn canonical_number(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

impl From<u64> for MessageId {
    fn from(n: u64) -> Self {
        MessageId(IdRepr::Num(n))
    }
}

impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        if let Some(n) = canonical_number(s) {
            return MessageId(IdRepr::Num(n));
        }
        let pair = s.split_once('-').and_then(|(first, second)| {
            Some((canonical_number(first)?, canonical_number(second)?))
        });
        match pair {
            Some((first, second)) => MessageId::pair(first, second),
            None => MessageId(IdRepr::Str(s.into())),
        }
    }
}

impl From<String> for MessageId {
    fn from(s: String) -> Self {
        MessageId::from(s.as_str())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdRepr::Num(n) => fmt::Display::fmt(n, f),
            IdRepr::Pair(first, second) => write!(f, "{first}-{second}"),
            IdRepr::Str(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_normalize_numbers() {
        assert_eq!(MessageId::from("0"), MessageId::from(0));
        assert_ne!(MessageId::from("007"), MessageId::from(7));
        assert_eq!(MessageId::from("007").to_string(), "007");
        assert_eq!(MessageId::from("18446744073709551616").as_u64(), None);
        assert_eq!(MessageId::from("").to_string(), "");
    }

    #[test]
    fn stream_entry_ids_are_pairs_equal_to_their_text() {
        assert_eq!(
            MessageId::from("1700000000000-7"),
            MessageId::pair(1_700_000_000_000, 7)
        );
        assert_eq!(
            MessageId::pair(1_700_000_000_000, 7).to_string(),
            "1700000000000-7"
        );
        assert_eq!(MessageId::pair(0, 0).to_string(), "0-0");
        assert_eq!(MessageId::pair(5, 0).as_u64(), None);
        // Not written the one way a pair is: kept as text, and so not equal to the pair.
        for text in [
            "01-0",
            "1-00",
            "1-",
            "-1",
            "1-2-3",
            "1--2",
            "+1-2",
            "1-18446744073709551616",
        ] {
            let id = MessageId::from(text);
            assert_eq!(id.to_string(), text);
            assert_ne!(id, MessageId::pair(1, 0), "{text}");
            assert!(
                matches!(id.0, IdRepr::Str(_)),
                "{text} read as a number or a pair"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_cancels_and_keeps_the_earliest() {
        let ctx = Context::background().with_timeout(Duration::from_millis(100));
        let later = ctx.clone().with_timeout(Duration::from_secs(10));
        assert_eq!(later.deadline(), ctx.deadline());
        assert!(!ctx.is_cancelled());
        ctx.cancelled().await;
        assert!(ctx.is_cancelled());
        assert!(!ctx.cancellation_token().is_cancelled());
    }

    #[tokio::test]
    async fn child_is_cancelled_by_parent_not_the_reverse() {
        let parent = Context::background().with_attempt(3).with_source("q");
        let child = parent.child();
        assert_eq!(child.attempt(), 3);
        assert_eq!(child.source(), Some("q"));
        child.cancel();
        assert!(!parent.is_cancelled());
        let child2 = parent.child();
        parent.cancel();
        child2.cancelled().await;
        assert!(child2.is_cancelled());
    }

    #[tokio::test]
    async fn unless_cancelled_stops_waiting_work_when_cancelled_meanwhile() {
        let ctx = Context::background();
        let canceller = ctx.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            canceller.cancel();
        });
        let never = std::future::pending::<Result<(), Error>>();
        assert!(matches!(
            ctx.unless_cancelled(never).await,
            Err(Error::Cancelled)
        ));
    }

    /// One context shared by tasks on every worker thread: cancelling it, through the
    /// context or through the token it was made from, stops every wait, and every thread
    /// sees it cancelled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_context_shared_across_threads_stops_every_wait_when_cancelled() {
        for through_token in [false, true] {
            let token = CancellationToken::new();
            let ctx = Context::from_cancellation_token(token.clone());
            let started = Arc::new(tokio::sync::Barrier::new(65));
            let waits: Vec<_> = (0..64)
                .map(|i| {
                    let (ctx, started) = (ctx.clone(), started.clone());
                    tokio::spawn(async move {
                        started.wait().await;
                        let waited = if i % 2 == 0 {
                            let never = std::future::pending::<Result<(), Error>>();
                            matches!(ctx.unless_cancelled(never).await, Err(Error::Cancelled))
                        } else {
                            ctx.cancelled().await;
                            true
                        };
                        waited && ctx.is_cancelled()
                    })
                })
                .collect();
            started.wait().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if through_token {
                token.cancel();
            } else {
                ctx.cancel();
            }
            for wait in waits {
                let done = tokio::time::timeout(Duration::from_secs(10), wait).await;
                assert!(done.expect("a wait outlived the cancel").unwrap());
            }
            assert!(ctx.is_cancelled() && token.is_cancelled());
        }
    }

    /// A child of a shared context is cancelled with it, and cancelling the child leaves
    /// the shared parent (and its other waiters) alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_of_a_shared_context_does_not_cancel_its_parent() {
        let parent = Context::background();
        let shared = parent.clone();
        let waiting = tokio::spawn(async move {
            let never = std::future::pending::<Result<(), Error>>();
            shared.unless_cancelled(never).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let child = parent.child();
        child.cancel();
        assert!(child.is_cancelled() && !parent.is_cancelled());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        parent.cancel();
        assert!(matches!(waiting.await.unwrap(), Err(Error::Cancelled)));
    }

    #[tokio::test(start_paused = true)]
    async fn unless_cancelled_stops_waiting_work_at_the_deadline() {
        let ctx = Context::background().with_timeout(Duration::from_millis(50));
        let started = Instant::now();
        let never = std::future::pending::<Result<(), Error>>();
        assert!(matches!(
            ctx.unless_cancelled(never).await,
            Err(Error::Cancelled)
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        // Work that finishes first wins, even when it waited.
        let ctx = Context::background().with_timeout(Duration::from_secs(5));
        let work = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(3)
        };
        assert_eq!(ctx.unless_cancelled(work).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn unless_cancelled_does_not_start_work_on_a_cancelled_context() {
        let ctx = Context::background();
        ctx.cancel();
        let started = std::sync::atomic::AtomicBool::new(false);
        let work = async {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        };
        assert!(matches!(
            ctx.unless_cancelled(work).await,
            Err(Error::Cancelled)
        ));
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let ctx = Context::background().with_timeout(Duration::MAX);
        assert!(!ctx.is_cancelled());
    }
}

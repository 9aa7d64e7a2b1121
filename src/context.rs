//! The context handed to receivers and topics: cancellation, deadline, delivery facts and
//! typed values.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// What a receiver or a writer is given alongside the message: a cancellation signal, an
/// optional deadline, the facts of the delivery (message id, attempt number, source) and typed
/// values (go's `context.Context`).
///
/// A server hands each receiver a context that is cancelled when a shutdown deadline passes.
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
    /// Shared rather than cloned: cloning a `CancellationToken` locks its node, and the
    /// engine makes a context for every message.
    token: Arc<CancellationToken>,
    deadline: Option<Instant>,
    message_id: Option<MessageId>,
    attempt: u32,
    source: Option<Arc<str>>,
    values: http::Extensions,
}

impl Context {
    /// A context that is never cancelled unless [`cancel`](Context::cancel) is called, with no
    /// deadline, no delivery facts and no values.
    pub fn background() -> Self {
        Context::with_cancellation_token(CancellationToken::new())
    }

    /// A context cancelled by `token`.
    pub fn with_cancellation_token(token: CancellationToken) -> Self {
        Context::with_shared_token(Arc::new(token))
    }

    /// A context cancelled by a token shared with others (without cloning the token).
    pub(crate) fn with_shared_token(token: Arc<CancellationToken>) -> Self {
        Context {
            token,
            deadline: None,
            message_id: None,
            attempt: 1,
            source: None,
            values: http::Extensions::new(),
        }
    }

    /// The token that cancels this context.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }

    /// A context with the same facts and values, cancelled when this one is and also on its
    /// own (through [`cancel`](Context::cancel) on the child).
    pub fn child(&self) -> Context {
        Context {
            token: Arc::new(self.token.child_token()),
            ..self.clone()
        }
    }

    /// Cancels this context and every context derived from it with [`child`](Context::child).
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether the context was cancelled or its deadline has passed.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Completes when the context is cancelled or its deadline passes.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn cancelled(&self) {
        match self.deadline {
            None => self.token.cancelled().await,
            Some(deadline) => {
                tokio::select! {
                    _ = self.token.cancelled() => {}
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
    /// a publish pays for watching its context once, not at every wake-up.
    pub(crate) async fn unless_cancelled<T>(
        &self,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        tokio::select! {
            biased;
            result = work => result,
            _ = self.cancelled() => Err(Error::Cancelled),
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
        self.source.as_deref()
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
        self.source = Some(source.into());
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

impl Default for Context {
    fn default() -> Self {
        Context::background()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("cancelled", &self.token.is_cancelled())
            .field("deadline", &self.deadline)
            .field("message_id", &self.message_id)
            .field("attempt", &self.attempt)
            .field("source", &self.source)
            .finish_non_exhaustive()
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
/// `MessageId::from("42") == MessageId::from(42)`.
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
    Str(Arc<str>),
}

impl MessageId {
    /// The id as a number, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            IdRepr::Num(n) => Some(n),
            IdRepr::Str(_) => None,
        }
    }
}

impl From<u64> for MessageId {
    fn from(n: u64) -> Self {
        MessageId(IdRepr::Num(n))
    }
}

impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        let numeric = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        match s.parse::<u64>() {
            Ok(n) if numeric => MessageId(IdRepr::Num(n)),
            _ => MessageId(IdRepr::Str(s.into())),
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

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let ctx = Context::background().with_timeout(Duration::MAX);
        assert!(!ctx.is_cancelled());
    }
}

//! Bounded retries with exponential backoff and jitter.

use std::future::Future;

use futures::FutureExt;

use crate::dead_letter::{Fate, fate};
use crate::receiver::{catch_panic, drop_quietly};
use crate::{Backoff, Context, Error, Message, Receiver};

/// Retries failed messages with exponential backoff and jitter, up to a maximum number of
/// attempts, then rejects them (so a dead-letter topic gets them).
///
/// The delay travels with the error ([`Error::retry_after`]) for the server to apply: as a
/// nack delay where the transport holds one, otherwise by the engine holding the
/// settlement, in both cases without keeping a concurrency slot busy. A delay the inner
/// receiver asked for itself wins; rejects pass through untouched. A panic in the inner
/// receiver counts as a failure, as under [`SafeReceiver`](crate::SafeReceiver).
///
/// ```
/// use msgio::decorators::Retry;
/// use msgio::{Backoff, Context, Error, Message, Receiver, ReceiverFunc};
/// use std::time::Duration;
///
/// # futures::executor::block_on(async {
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 2.0)?;
/// let retry = Retry::new(
///     ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::other("flaky")) }),
///     backoff,
///     3,
/// );
/// let second = Context::background().with_attempt(2);
/// let err = retry.receive(second, Message::default()).await.unwrap_err();
/// assert!(err.retry_delay().unwrap() <= Duration::from_millis(200));
///
/// let last = Context::background().with_attempt(3);
/// assert!(retry.receive(last, Message::default()).await.unwrap_err().is_reject());
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Retry<R> {
    inner: R,
    backoff: Backoff,
    max_attempts: u32,
}

impl<R> Retry<R> {
    /// Retries `inner`'s failures after `backoff`'s delays, rejecting at attempt
    /// `max_attempts` (0 is taken as 1).
    pub fn new(inner: R, backoff: Backoff, max_attempts: u32) -> Self {
        Retry {
            inner,
            backoff,
            max_attempts: max_attempts.max(1),
        }
    }
}

inner_accessors!([R] Retry<R>, R, "receiver");

/// A [`Retry`] layer (feature `tower`): [`Retry::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type RetryLayer = Retry<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl Retry<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`Retry::new`] with these settings.
    pub fn layer(backoff: Backoff, max_attempts: u32) -> RetryLayer {
        Retry::new((), backoff, max_attempts)
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for Retry<()> {
    type Service = Retry<R>;

    fn layer(&self, inner: R) -> Retry<R> {
        Retry {
            inner,
            backoff: self.backoff,
            max_attempts: self.max_attempts,
        }
    }
}

impl<R: Receiver> Receiver for Retry<R> {
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let attempt = ctx.attempt();
        let (backoff, max_attempts) = (self.backoff, self.max_attempts);
        // A panic is a failure like any other here, wherever SafeReceiver sits. A plain
        // map, not an async fn: this future is no larger than the inner one.
        catch_panic(|| self.inner.receive(ctx, msg)).map(move |result| {
            result.map_err(|e| match fate(&e, attempt, Some(max_attempts)) {
                // Rejects pass through untouched.
                Fate::GiveUp(_) if e.is_reject() => e,
                Fate::GiveUp(reason) => {
                    // Done with: a panic as it drops cannot undo the reject.
                    drop_quietly(e, "a receiver's error");
                    Error::reject(reason)
                }
                // A delay the inner receiver asked for itself wins.
                Fate::Retry(Some(_)) => e,
                Fate::Retry(None) => Error::retry_after(backoff.delay_for(attempt), e),
            })
        })
    }
}

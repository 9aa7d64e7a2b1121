//! Concurrency and rate limits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::{Context, Error, Message, Receiver};

/// Lets at most `max` messages into the inner receiver at once; the others wait their
/// turn. Clones share the limit.
///
/// ```
/// use msgio::decorators::ConcurrencyLimit;
/// use msgio::{Context, Message, ReceiverFunc};
///
/// let limited = ConcurrencyLimit::new(
///     ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
///     4,
/// )?;
/// # let _ = limited;
/// # Ok::<(), msgio::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<R> {
    inner: R,
    /// The limit, for a layer to give each receiver it wraps a semaphore of its own.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    max: usize,
    permits: Arc<Semaphore>,
}

impl<R> ConcurrencyLimit<R> {
    /// At most `max` of `inner`'s messages at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `max` is zero or above `Semaphore::MAX_PERMITS`.
    pub fn new(inner: R, max: usize) -> Result<Self, Error> {
        if max == 0 || max > Semaphore::MAX_PERMITS {
            return Err(Error::invalid_config(
                "concurrency limit",
                format!("{max} is not between 1 and {}", Semaphore::MAX_PERMITS),
            ));
        }
        Ok(ConcurrencyLimit {
            inner,
            max,
            permits: Arc::new(Semaphore::new(max)),
        })
    }
}

inner_accessors!([R] ConcurrencyLimit<R>, R, "receiver");

/// A [`ConcurrencyLimit`] layer (feature `tower`): [`ConcurrencyLimit::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type ConcurrencyLimitLayer = ConcurrencyLimit<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl ConcurrencyLimit<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`ConcurrencyLimit::new`] of `max`, each with a limit of its own (as tower's
    /// `ConcurrencyLimitLayer`; clone one `ConcurrencyLimit` to share a limit).
    ///
    /// # Errors
    ///
    /// As [`ConcurrencyLimit::new`].
    pub fn layer(max: usize) -> Result<ConcurrencyLimitLayer, Error> {
        ConcurrencyLimit::new((), max)
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for ConcurrencyLimit<()> {
    type Service = ConcurrencyLimit<R>;

    fn layer(&self, inner: R) -> ConcurrencyLimit<R> {
        ConcurrencyLimit {
            inner,
            max: self.max,
            permits: Arc::new(Semaphore::new(self.max)),
        }
    }
}

impl<R: Receiver> Receiver for ConcurrencyLimit<R> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let _permit = ctx
            .unless_cancelled(async { Ok(self.permits.acquire().await.expect("never closed")) })
            .await?;
        self.inner.receive(ctx, msg).await
    }
}

/// Lets messages into the inner receiver at most `per_second` on average, with bursts of
/// up to `burst` (a token bucket). Waiting messages are served in arrival order. Clones
/// share the bucket.
///
/// ```
/// use msgio::decorators::RateLimit;
/// use msgio::{Context, Message, ReceiverFunc};
///
/// let limited = RateLimit::new(
///     ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
///     100.0,
///     10,
/// )?;
/// # let _ = limited;
/// # Ok::<(), msgio::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit<R> {
    inner: R,
    bucket: Arc<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    per_second: f64,
    burst: f64,
    /// Tokens available (negative: reserved by waiting messages), as of `at`.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket.
    fn new(per_second: f64, burst: f64) -> Self {
        Bucket {
            per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token; returns how long to wait before using it.
    fn reserve(&self) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = *state;
        let refilled =
            (tokens + now.duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
        let left = refilled - 1.0;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.per_second)
        }
    }
}

impl Bucket {
    /// Gives back a reserved token (its message was cancelled while waiting).
    fn unreserve(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = (state.0 + 1.0).min(self.burst);
    }
}

impl<R> RateLimit<R> {
    /// At most `per_second` of `inner`'s messages a second, bursts of `burst`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `per_second` is not a positive finite number or
    /// `burst` is zero.
    pub fn new(inner: R, per_second: f64, burst: u32) -> Result<Self, Error> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(Error::invalid_config(
                "rate limit",
                format!("{per_second} messages a second is not a positive rate"),
            ));
        }
        if burst == 0 {
            return Err(Error::invalid_config(
                "rate limit burst",
                "must be at least 1",
            ));
        }
        Ok(RateLimit {
            inner,
            bucket: Arc::new(Bucket::new(per_second, f64::from(burst))),
        })
    }
}

inner_accessors!([R] RateLimit<R>, R, "receiver");

/// A [`RateLimit`] layer (feature `tower`): [`RateLimit::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type RateLimitLayer = RateLimit<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl RateLimit<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`RateLimit::new`], each with a full bucket of its own (as tower's
    /// `RateLimitLayer`; clone one `RateLimit` to share a bucket).
    ///
    /// # Errors
    ///
    /// As [`RateLimit::new`].
    pub fn layer(per_second: f64, burst: u32) -> Result<RateLimitLayer, Error> {
        RateLimit::new((), per_second, burst)
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for RateLimit<()> {
    type Service = RateLimit<R>;

    fn layer(&self, inner: R) -> RateLimit<R> {
        RateLimit {
            inner,
            bucket: Arc::new(Bucket::new(self.bucket.per_second, self.bucket.burst)),
        }
    }
}

impl<R: Receiver> Receiver for RateLimit<R> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let wait = self.bucket.reserve();
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.cancelled() => {
                    self.bucket.unreserve();
                    return Err(Error::Cancelled);
                }
            }
        }
        self.inner.receive(ctx, msg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReceiverFunc;

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_its_token_back() {
        let limited = RateLimit::new(
            ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
            10.0,
            1,
        )
        .unwrap();
        let start = Instant::now();
        limited
            .receive(Context::background(), Message::default())
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst token");
        let cancelled = Context::background();
        cancelled.cancel();
        let err = limited
            .receive(cancelled, Message::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled));
        // One token every 100 ms: the next message waits for one token, not two.
        limited
            .receive(Context::background(), Message::default())
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}

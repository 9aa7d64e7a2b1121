//! A time limit per message.

use std::time::Duration;

use crate::{Context, Error, Message, Receiver};

/// Gives each message at most `timeout`: the receiver's context carries the deadline and
/// is cancelled when it passes, the receiver is stopped, and the attempt counts as a
/// retryable failure.
///
/// ```
/// use msgio::decorators::Timeout;
/// use msgio::{Context, Message, Receiver, ReceiverFunc};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let slow = ReceiverFunc::new(|_: Context, _: Message| async {
///     tokio::time::sleep(Duration::from_secs(60)).await;
///     Ok(())
/// });
/// let limited = Timeout::new(slow, Duration::from_millis(10));
/// let err = limited.receive(Context::background(), Message::default()).await.unwrap_err();
/// assert!(!err.is_reject());
/// assert!(err.to_string().contains("timed out"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Timeout<R> {
    inner: R,
    timeout: Duration,
}

impl<R> Timeout<R> {
    /// Limits each of `inner`'s messages to `timeout`.
    pub fn new(inner: R, timeout: Duration) -> Self {
        Timeout { inner, timeout }
    }
}

inner_accessors!([R] Timeout<R>, R, "receiver");

/// A [`Timeout`] layer (feature `tower`): [`Timeout::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type TimeoutLayer = Timeout<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl Timeout<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`Timeout::new`] of `timeout`.
    pub fn layer(timeout: Duration) -> TimeoutLayer {
        Timeout::new((), timeout)
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for Timeout<()> {
    type Service = Timeout<R>;

    fn layer(&self, inner: R) -> Timeout<R> {
        Timeout::new(inner, self.timeout)
    }
}

impl<R: Receiver> Receiver for Timeout<R> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let limited = ctx.child().with_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, self.inner.receive(limited.clone(), msg)).await {
            Ok(result) => result,
            Err(_) => {
                // Anything the receiver spawned with its context sees it cancelled.
                limited.cancel();
                Err(Error::other(format!(
                    "receiver timed out after {:?}",
                    self.timeout
                )))
            }
        }
    }
}

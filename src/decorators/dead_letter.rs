//! Dead-lettering as a decorator, for any server.

use std::time::Duration;

use crate::dead_letter::{Fate, Published, fate, shown};
use crate::receiver::{catch_panic, drop_quietly};
use crate::{BoxTopic, Context, Error, Message, Receiver, Topic};

/// Publishes a message the inner receiver rejected (or failed on its last attempt) to a
/// dead-letter topic, body and attributes byte for byte plus the reason, attempts, source
/// and original id ([`keys`](crate::keys)), and acknowledges it. A panic in the inner
/// receiver counts as a failure, as under [`SafeReceiver`](crate::SafeReceiver). Servers built on the
/// engine do the same with [`ServerConfig::dead_letter`](crate::ServerConfig::dead_letter);
/// this form works with any server.
///
/// The body is read into memory first (up to [`max_body`](DeadLetter::max_body), default
/// 64 MiB), so that it can be dead-lettered after the receiver read it; a larger body is
/// handed on without that protection. A failed dead-letter publish is retried later.
///
/// ```
/// use msgio::decorators::DeadLetter;
/// use msgio::{Context, Error, Message, ReceiverFunc};
///
/// # fn main() -> Result<(), Error> {
/// let (dead_letters, _server) = msgio::mem::channel(16)?;
/// let receiver = DeadLetter::new(
///     ReceiverFunc::new(|_: Context, _: Message| async { Err(Error::reject("poison")) }),
///     dead_letters,
/// )
/// .max_attempts(5);
/// # let _ = receiver;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetter<R> {
    inner: R,
    topic: BoxTopic,
    max_attempts: Option<u32>,
    max_body: usize,
}

impl<R> DeadLetter<R> {
    /// Dead-letters `inner`'s rejects to `topic`.
    pub fn new<T>(inner: R, topic: T) -> Self
    where
        T: Topic + 'static,
        T::Writer: 'static,
    {
        DeadLetter {
            inner,
            topic: BoxTopic::new(topic),
            max_attempts: None,
            max_body: 64 << 20,
        }
    }

    /// Also dead-letters a failure at attempt `n` or later.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// The largest body kept for dead-lettering.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

inner_accessors!([R] DeadLetter<R>, R, "receiver");

/// A [`DeadLetter`] layer (feature `tower`): [`DeadLetter::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type DeadLetterLayer = DeadLetter<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl DeadLetter<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`DeadLetter::new`] to `topic`; [`max_attempts`](DeadLetter::max_attempts) and
    /// [`max_body`](DeadLetter::max_body) set it up as they do a `DeadLetter`.
    pub fn layer<T>(topic: T) -> DeadLetterLayer
    where
        T: Topic + 'static,
        T::Writer: 'static,
    {
        DeadLetter::new((), topic)
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for DeadLetter<()> {
    type Service = DeadLetter<R>;

    fn layer(&self, inner: R) -> DeadLetter<R> {
        DeadLetter {
            inner,
            topic: self.topic.clone(),
            max_attempts: self.max_attempts,
            max_body: self.max_body,
        }
    }
}

impl<R: Receiver> Receiver for DeadLetter<R> {
    async fn receive(&self, ctx: Context, mut msg: Message) -> Result<(), Error> {
        let body = match msg.dump_body(self.max_body).await {
            Ok(body) => body,
            Err(Error::BodyTooLarge { .. }) => return self.inner.receive(ctx, msg).await,
            Err(e) => return Err(e),
        };
        let attributes = msg.attributes.clone();
        let (attempt, source, id) = (
            ctx.attempt(),
            ctx.source().map(str::to_owned),
            ctx.message_id().cloned(),
        );
        // A panic is a failure like any other here, wherever SafeReceiver sits.
        let error = match catch_panic(|| self.inner.receive(ctx, msg)).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let reason = match fate(&error, attempt, self.max_attempts) {
            Fate::Retry(_) => return Err(error),
            Fate::GiveUp(reason) => reason,
        };
        let letter = crate::dead_letter::Letter {
            attributes,
            body,
            reason: &reason,
            attempt,
            source: source.as_deref(),
            message_id: id.as_ref(),
        };
        let result =
            match crate::dead_letter::publish(&self.topic, &Context::background(), letter).await {
                Published::Done => Ok(()),
                Published::Retry(e) => Err(Error::retry_after(
                    Duration::from_secs(1),
                    format!("could not dead-letter ({e}) after: {}", shown(&error)),
                )),
                // Retrying would fail the same way for ever: the server settles the reject.
                Published::Refused(e) => Err(Error::reject(format!(
                    "the dead-letter topic refuses it for good ({e}) after: {}",
                    shown(&error)
                ))),
            };
        // The receiver's error, done with: a panic as it drops cannot undo what was done
        // with the message (it would be a failed attempt, dead-lettered once more).
        drop_quietly(error, "a receiver's error");
        result
    }
}

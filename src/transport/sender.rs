//! A whole-message topic over a transport's `send`: the topic half most transports need.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{BufferedWriter, Outgoing, Publish};
use crate::{Context, Error, Message, Topic};

/// How a transport sends one whole message: what a [`SenderTopic`] is built on.
///
/// # Contract
///
/// - `send` returns `Ok(())` only once the broker holds the message (a confirm, an
///   acknowledgement, a stored entry), so that closing a writer means "published".
/// - Where it waits (for capacity, for a confirmation) it honours the context's
///   cancellation, giving up with [`Error::Cancelled`]
///   ([`Context::unless_cancelled`] does this).
/// - A delay the transport can hold natively is applied here; one it cannot is recorded
///   with [`stamp_not_before`](super::stamp_not_before), and the transport's
///   [`Source::not_before`](super::Source::not_before) says so.
/// - Attributes it cannot carry are refused with [`Error::InvalidAttribute`] naming the key,
///   never with a panic; a body too large with [`Error::BodyTooLarge`].
///
/// # Examples
///
/// A sender appending messages to a shared list:
///
/// ```
/// use msgio::transport::{Outgoing, Sender, SenderTopic};
/// use msgio::{Context, Error, Message, Topic};
/// use std::sync::Mutex;
///
/// #[derive(Debug, Default)]
/// struct Log(Mutex<Vec<Outgoing>>);
///
/// impl Sender for Log {
///     async fn send(&self, _ctx: &Context, message: Outgoing) -> Result<(), Error> {
///         self.0.lock().unwrap().push(message);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let topic = SenderTopic::new(Log::default());
/// topic.publish(&Context::background(), Message::new("hello")).await?;
/// assert_eq!(topic.sender().0.lock().unwrap()[0].body, "hello");
/// # Ok(()) }
/// ```
pub trait Sender: Send + Sync + 'static {
    /// Sends `message` (its attributes, whole body and the delay a writer asked for).
    ///
    /// # Errors
    ///
    /// Whatever kept the broker from taking the message; [`Error::Cancelled`] when `ctx`
    /// was cancelled first.
    fn send(
        &self,
        ctx: &Context,
        message: Outgoing,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sends `messages` in order, as one batch where the broker allows (a pipeline,
    /// publishes whose acknowledgements are awaited together); by default one after
    /// another with [`send`](Sender::send). What [`Topic::publish_batch`] of a
    /// [`SenderTopic`] calls.
    ///
    /// # Errors
    ///
    /// The first error met; any of the messages may have been sent (see
    /// [`Topic::publish_batch`]).
    fn send_batch(
        &self,
        ctx: &Context,
        messages: Vec<Outgoing>,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sized,
    {
        send_each(self, ctx, messages)
    }
}

/// Sends `messages` one after another with [`Sender::send`]: what
/// [`Sender::send_batch`] does by default, and a transport's way out for a batch it cannot
/// send at once (one holding a delayed message, say).
///
/// # Errors
///
/// The first error; the messages before it were sent, those after it were not.
pub async fn send_each<S: Sender>(
    sender: &S,
    ctx: &Context,
    messages: Vec<Outgoing>,
) -> Result<(), Error> {
    for message in messages {
        sender.send(ctx, message).await?;
    }
    Ok(())
}

/// A [`Topic`] over a [`Sender`]: [`publish`](Topic::publish) hands the message to the
/// sender without a writer (a body held in memory as it is, a streaming one read whole
/// first), and each writer is a [`BufferedWriter`] that sends the whole message when
/// closed.
///
/// Cloning shares the sender. Its `Debug` is the sender's.
pub struct SenderTopic<S> {
    sender: Arc<S>,
}

impl<S> SenderTopic<S> {
    /// A topic sending through `sender`.
    pub fn new(sender: S) -> Self {
        Self::from_arc(Arc::new(sender))
    }

    /// A topic sending through a sender already shared.
    pub fn from_arc(sender: Arc<S>) -> Self {
        SenderTopic { sender }
    }

    /// The sender.
    pub fn sender(&self) -> &S {
        &self.sender
    }
}

impl<S> Clone for SenderTopic<S> {
    fn clone(&self) -> Self {
        SenderTopic {
            sender: self.sender.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SenderTopic<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.sender.fmt(f)
    }
}

impl<S: Sender> Topic for SenderTopic<S> {
    type Writer = BufferedWriter<SenderPublisher<S>>;

    async fn publish(&self, ctx: &Context, message: Message) -> Result<(), Error> {
        self.sender.send(ctx, outgoing(message).await?).await
    }

    async fn publish_batch(&self, ctx: &Context, messages: Vec<Message>) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            batch.push(outgoing(message).await?);
        }
        self.sender.send_batch(ctx, batch).await
    }

    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        Ok(BufferedWriter::new(
            SenderPublisher {
                sender: self.sender.clone(),
            },
            ctx,
        ))
    }
}

/// A message as a sender takes it. A body held in memory moves over as it is (no copy, no
/// new reference); a streaming one is read whole, as a writer would buffer it.
async fn outgoing(mut message: Message) -> Result<Outgoing, Error> {
    Ok(Outgoing {
        body: message.body.read_to_bytes(usize::MAX).await?,
        attributes: message.attributes,
        delay: None,
    })
}

/// The [`Publish`] of a [`SenderTopic`]'s writers: sends the closed writer's message through
/// the topic's sender.
pub struct SenderPublisher<S> {
    sender: Arc<S>,
}

impl<S> SenderPublisher<S> {
    /// The sender.
    pub fn sender(&self) -> &S {
        &self.sender
    }
}

impl<S: fmt::Debug> fmt::Debug for SenderPublisher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.sender.fmt(f)
    }
}

impl<S: Sender> Publish for SenderPublisher<S> {
    type Future = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn publish(&self, ctx: &Context, message: Outgoing) -> Self::Future {
        let sender = self.sender.clone();
        let ctx = ctx.clone();
        Box::pin(async move { sender.send(&ctx, message).await })
    }
}

//! Topics and the writers they produce.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::io::{AsyncWrite, AsyncWriteExt};

use crate::{Attributes, Context, Error, Message};

/// A message being written (go-msg's `MessageWriter`): an `AsyncWrite` for the body, with
/// the attributes and an optional delivery delay. Closing the writer publishes the message;
/// writing or closing again gives [`Error::ClosedMessageWriter`].
///
/// `AsyncWrite` reports errors as `io::Error`; convert one with `msgio::Error::from` to get
/// the msgio error back.
pub trait MessageWriter: AsyncWrite + Send + Unpin {
    /// The attributes the message will be published with.
    fn attributes(&self) -> &Attributes;

    /// The attributes the message will be published with, to change them before closing.
    fn attributes_mut(&mut self) -> &mut Attributes;

    /// Asks the transport to deliver the message no sooner than `delay` after it is published.
    fn set_delay(&mut self, delay: Duration);
}

impl<W: MessageWriter + ?Sized> MessageWriter for Box<W> {
    fn attributes(&self) -> &Attributes {
        (**self).attributes()
    }
    fn attributes_mut(&mut self) -> &mut Attributes {
        (**self).attributes_mut()
    }
    fn set_delay(&mut self, delay: Duration) {
        (**self).set_delay(delay)
    }
}

/// A destination messages are published to (go-msg's `Topic`).
///
/// # Examples
///
/// ```
/// use futures::io::AsyncWriteExt;
/// use msgio::{Context, MessageWriter, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), msgio::Error> {
/// let (topic, _server) = msgio::mem::channel(16)?;
/// let mut writer = topic.new_writer(&Context::background())?;
/// writer.attributes_mut().set("Type", "order.created");
/// writer.write_all(b"{\"id\":1}").await?;
/// writer.close().await?; // publishes
///
/// // Or all at once:
/// topic.publish(&Context::background(), msgio::Message::new("second")).await?;
/// # Ok(()) }
/// ```
pub trait Topic: Send + Sync {
    /// The writer this topic produces.
    type Writer: MessageWriter;

    /// Starts a new message; it is published when the writer is closed.
    ///
    /// # Errors
    ///
    /// Whatever keeps the topic from starting a message (a decorator that cannot set up its
    /// encoder, say). Most topics never fail here.
    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error>;

    /// Publishes a whole message: its attributes, then its body, then closes the writer.
    ///
    /// Attributes a decorator set on the new writer are kept, except for keys the message
    /// has too: those take the message's values.
    ///
    /// # Errors
    ///
    /// Those of [`new_writer`](Topic::new_writer), of reading the body and of publishing.
    fn publish(
        &self,
        ctx: &Context,
        message: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sized,
    {
        publish_through_writer(self, ctx, message)
    }

    /// Publishes `messages` in order, as one batch where the transport can: one Redis
    /// pipeline, JetStream publishes with their acknowledgements awaited together, AMQP
    /// publishes with their confirms awaited together. A batch then costs about one round
    /// trip to the broker rather than one a message. Returns once every message is
    /// published. By default, and for topics that cannot batch, the messages are published
    /// one after another.
    ///
    /// # Errors
    ///
    /// The first error met. Messages of the batch before it, and on transports that send
    /// the whole batch before waiting, after it, may have been published: publish the
    /// batch again (delivery is at least once), or dedupe on an idempotency key.
    ///
    /// # Examples
    ///
    /// ```
    /// use msgio::{Context, Message, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), msgio::Error> {
    /// let (topic, _server) = msgio::mem::channel(16)?;
    /// let batch = (1..=3).map(|n| Message::new(format!("order {n}"))).collect();
    /// topic.publish_batch(&Context::background(), batch).await?;
    /// # Ok(()) }
    /// ```
    fn publish_batch(
        &self,
        ctx: &Context,
        messages: Vec<Message>,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sized,
    {
        async move {
            for message in messages {
                self.publish(ctx, message).await?;
            }
            Ok(())
        }
    }

    /// Publishes `value` as JSON with `Content-Type: application/json` (feature `json`;
    /// see [`Message::from_json`]).
    ///
    /// # Errors
    ///
    /// Those of [`Message::from_json`] and of [`publish`](Topic::publish).
    ///
    /// ```
    /// use msgio::{Context, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), msgio::Error> {
    /// let (topic, _server) = msgio::mem::channel(16)?;
    /// topic
    ///     .publish_json(&Context::background(), &serde_json::json!({"id": 7}))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    fn publish_json<V>(
        &self,
        ctx: &Context,
        value: &V,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        Self: Sized,
        V: serde::Serialize + ?Sized,
    {
        let message = Message::from_json(value);
        async move { self.publish(ctx, message?).await }
    }
}

/// What [`Topic::publish`] does by default: a new writer, the message's attributes over
/// those a decorator set, the body, close. For a transport that overrides `publish` with a
/// faster path and falls back on this one (for a streaming body, say).
///
/// # Errors
///
/// Those of [`Topic::new_writer`], of reading the body and of publishing.
pub async fn publish_through_writer<T: Topic + ?Sized>(
    topic: &T,
    ctx: &Context,
    message: Message,
) -> Result<(), Error> {
    let Message {
        attributes,
        mut body,
    } = message;
    let mut writer = topic.new_writer(ctx)?;
    // Keep what a decorator set on the writer; the message's own keys win.
    let target = writer.attributes_mut();
    if target.is_empty() {
        *target = attributes;
    } else {
        for (key, values) in attributes.groups() {
            target.remove(key);
            for value in values {
                target.add(key, value);
            }
        }
    }
    match body.as_bytes() {
        Some(bytes) => writer.write_all(bytes).await?,
        None => {
            futures::io::copy(&mut body, &mut writer).await?;
        }
    }
    writer.close().await?;
    Ok(())
}

impl<T: Topic + ?Sized> Topic for Arc<T> {
    type Writer = T::Writer;
    fn new_writer(&self, ctx: &Context) -> Result<T::Writer, Error> {
        (**self).new_writer(ctx)
    }
}

impl<T: Topic + ?Sized> Topic for &T {
    type Writer = T::Writer;
    fn new_writer(&self, ctx: &Context) -> Result<T::Writer, Error> {
        (**self).new_writer(ctx)
    }
}

/// A [`Topic`] made from a closure that returns writers (go-msg's `TopicFunc`); the usual
/// way to write a topic decorator.
///
/// ```
/// use msgio::{Context, MessageWriter, Topic, TopicFunc};
///
/// # fn main() -> Result<(), msgio::Error> {
/// let (inner, _server) = msgio::mem::channel(16)?;
/// // A decorator that stamps every message with the service's name.
/// let stamped = TopicFunc::new(move |ctx: &Context| {
///     let mut writer = inner.new_writer(ctx)?;
///     writer.attributes_mut().set("Producer", "billing");
///     Ok(writer)
/// });
/// # let _ = stamped;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct TopicFunc<F> {
    f: F,
}

impl<F> TopicFunc<F> {
    /// Wraps `f`.
    pub fn new<W>(f: F) -> Self
    where
        F: Fn(&Context) -> Result<W, Error> + Send + Sync,
        W: MessageWriter,
    {
        TopicFunc { f }
    }
}

impl<F, W> Topic for TopicFunc<F>
where
    F: Fn(&Context) -> Result<W, Error> + Send + Sync,
    W: MessageWriter,
{
    type Writer = W;
    fn new_writer(&self, ctx: &Context) -> Result<W, Error> {
        (self.f)(ctx)
    }
}

impl<F> fmt::Debug for TopicFunc<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TopicFunc")
    }
}

/// A boxed [`MessageWriter`], produced by a [`BoxTopic`].
pub type BoxMessageWriter = Box<dyn MessageWriter>;

trait DynTopic: Send + Sync {
    fn new_writer_boxed(&self, ctx: &Context) -> Result<BoxMessageWriter, Error>;

    /// The topic's own `publish`, so that a boxed topic keeps a transport's fast path
    /// (a body in memory sent at once, without a writer).
    fn publish_boxed<'a>(
        &'a self,
        ctx: &'a Context,
        message: Message,
    ) -> crate::BoxFuture<'a, Result<(), Error>>;

    /// The topic's own `publish_batch`, likewise.
    fn publish_batch_boxed<'a>(
        &'a self,
        ctx: &'a Context,
        messages: Vec<Message>,
    ) -> crate::BoxFuture<'a, Result<(), Error>>;
}

impl<T: Topic> DynTopic for T
where
    T::Writer: 'static,
{
    fn new_writer_boxed(&self, ctx: &Context) -> Result<BoxMessageWriter, Error> {
        Ok(Box::new(self.new_writer(ctx)?))
    }

    fn publish_boxed<'a>(
        &'a self,
        ctx: &'a Context,
        message: Message,
    ) -> crate::BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.publish(ctx, message))
    }

    fn publish_batch_boxed<'a>(
        &'a self,
        ctx: &'a Context,
        messages: Vec<Message>,
    ) -> crate::BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.publish_batch(ctx, messages))
    }
}

/// A type-erased, cheaply cloneable [`Topic`]: a dead-letter topic, or topics chosen at run
/// time.
///
/// ```
/// # fn main() -> Result<(), msgio::Error> {
/// let (topic, _server) = msgio::mem::channel(16)?;
/// let dead_letters = msgio::BoxTopic::new(topic);
/// # let _ = dead_letters;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoxTopic {
    inner: Arc<dyn DynTopic>,
}

impl BoxTopic {
    /// Erases the type of `topic`.
    pub fn new<T>(topic: T) -> Self
    where
        T: Topic + 'static,
        T::Writer: 'static,
    {
        BoxTopic {
            inner: Arc::new(topic),
        }
    }
}

impl Topic for BoxTopic {
    type Writer = BoxMessageWriter;
    fn new_writer(&self, ctx: &Context) -> Result<BoxMessageWriter, Error> {
        self.inner.new_writer_boxed(ctx)
    }

    async fn publish(&self, ctx: &Context, message: Message) -> Result<(), Error> {
        self.inner.publish_boxed(ctx, message).await
    }

    async fn publish_batch(&self, ctx: &Context, messages: Vec<Message>) -> Result<(), Error> {
        self.inner.publish_batch_boxed(ctx, messages).await
    }
}

impl fmt::Debug for BoxTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxTopic")
    }
}

#[cfg(all(test, feature = "mem"))]
mod tests {
    use super::*;
    use crate::Server;

    #[tokio::test]
    async fn publish_keeps_decorator_attributes_and_lets_the_message_win() {
        let queue = crate::mem::MemQueue::new(4).unwrap();
        let inner = queue.topic();
        let decorated = TopicFunc::new(move |ctx: &Context| {
            let mut w = inner.new_writer(ctx)?;
            w.attributes_mut().set("Stamp", "decorator");
            w.attributes_mut().set("Shared", "decorator");
            Ok(w)
        });
        let mut msg = Message::new("body");
        msg.attributes.add("Shared", "message-1");
        msg.attributes.add("Shared", "message-2");
        decorated
            .publish(&Context::background(), msg)
            .await
            .unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = queue.server(crate::ServerConfig::new()).unwrap();
        let serving = server.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(crate::ReceiverFunc::new(move |_: Context, m: Message| {
                    let tx = tx.clone();
                    async move {
                        tx.send(m.attributes).ok();
                        Ok(())
                    }
                }))
                .await
        });
        let attrs = rx.recv().await.unwrap();
        assert_eq!(attrs.get("Stamp"), Some("decorator"));
        assert_eq!(
            attrs.get_all("Shared").collect::<Vec<_>>(),
            ["message-1", "message-2"]
        );
        server.shutdown(Duration::from_secs(5)).await.unwrap();
        task.await.unwrap().unwrap_err();
    }

    #[tokio::test]
    async fn a_boxed_topic_publishes_through_the_topics_own_publish() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Counts the messages that took the topic's own `publish`.
        struct Counted {
            published: Arc<AtomicUsize>,
            inner: crate::mem::MemTopic,
        }
        impl Topic for Counted {
            type Writer = crate::mem::MemWriter;
            fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
                self.inner.new_writer(ctx)
            }
            async fn publish(&self, ctx: &Context, message: Message) -> Result<(), Error> {
                self.published.fetch_add(1, Ordering::Relaxed);
                self.inner.publish(ctx, message).await
            }
        }
        let queue = crate::mem::MemQueue::new(4).unwrap();
        let published = Arc::new(AtomicUsize::new(0));
        let boxed = BoxTopic::new(Counted {
            published: published.clone(),
            inner: queue.topic(),
        });
        boxed
            .publish(&Context::background(), Message::new("fast"))
            .await
            .unwrap();
        assert_eq!(
            published.load(Ordering::Relaxed),
            1,
            "the box went round it"
        );
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test]
    async fn buffered_writer_refuses_writes_and_closes_after_close() {
        let queue = crate::mem::MemQueue::new(4).unwrap();
        let mut w = queue.topic().new_writer(&Context::background()).unwrap();
        w.write_all(b"abc").await.unwrap();
        w.flush().await.unwrap();
        w.close().await.unwrap();
        assert_eq!(queue.len(), 1);
        let e = Error::from(w.write_all(b"x").await.unwrap_err());
        assert!(matches!(e, Error::ClosedMessageWriter));
        let e = Error::from(w.flush().await.unwrap_err());
        assert!(matches!(e, Error::ClosedMessageWriter));
        let e = Error::from(w.close().await.unwrap_err());
        assert!(matches!(e, Error::ClosedMessageWriter));
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_waits_and_a_cancelled_context_gives_up() {
        let queue = crate::mem::MemQueue::new(1).unwrap();
        let topic = queue.topic();
        topic
            .publish(&Context::background(), Message::new("1"))
            .await
            .unwrap();
        let ctx = Context::background();
        let waiting = {
            let (topic, ctx) = (topic.clone(), ctx.clone());
            tokio::spawn(async move { topic.publish(&ctx, Message::new("2")).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "publishing to a full queue did not wait"
        );
        ctx.cancel();
        let result = waiting.await.unwrap();
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert_eq!(queue.len(), 1, "the cancelled message was queued anyway");
    }
}

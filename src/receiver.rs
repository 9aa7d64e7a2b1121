//! Receivers: what a server hands each message to.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Context, Error, Message};

/// Handles messages served by a [`Server`](crate::Server) (go-msg's `Receiver`).
///
/// The returned `Result` decides the message's fate: `Ok(())` acknowledges it, an error
/// retries or rejects it (see [`Error`]). Implement it with an `async fn`:
///
/// ```
/// use msgio::{Context, Error, Message, Receiver};
///
/// struct PrintBody;
///
/// impl Receiver for PrintBody {
///     async fn receive(&self, _ctx: Context, mut msg: Message) -> Result<(), Error> {
///         let body = msg.body.read_to_bytes(1 << 20).await?;
///         println!("{}", String::from_utf8_lossy(&body));
///         Ok(())
///     }
/// }
///
/// # futures::executor::block_on(async {
/// PrintBody.receive(Context::background(), Message::new("hello")).await?;
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
pub trait Receiver: Send + Sync {
    /// Handles one message.
    fn receive(&self, ctx: Context, msg: Message)
    -> impl Future<Output = Result<(), Error>> + Send;
}

impl<R: Receiver + ?Sized> Receiver for Arc<R> {
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).receive(ctx, msg)
    }
}

impl<R: Receiver + ?Sized> Receiver for &R {
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).receive(ctx, msg)
    }
}

/// A [`Receiver`] made from a closure (go-msg's `ReceiverFunc`).
///
/// ```
/// use msgio::{Context, Message, ReceiverFunc};
///
/// let receiver = ReceiverFunc::new(|ctx: Context, msg: Message| async move {
///     println!("attempt {} of {:?}", ctx.attempt(), msg.attributes.get("Type"));
///     Ok(())
/// });
/// # let _ = receiver;
/// ```
#[derive(Clone, Copy)]
pub struct ReceiverFunc<F> {
    f: F,
}

impl<F> ReceiverFunc<F> {
    /// Wraps `f`.
    pub fn new<Fut>(f: F) -> Self
    where
        F: Fn(Context, Message) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), Error>> + Send,
    {
        ReceiverFunc { f }
    }
}

impl<F, Fut> Receiver for ReceiverFunc<F>
where
    F: Fn(Context, Message) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), Error>> + Send,
{
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (self.f)(ctx, msg)
    }
}

impl<F> fmt::Debug for ReceiverFunc<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReceiverFunc")
    }
}

/// A boxed future returned by [`BoxReceiver`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Receiver`], implemented for every receiver.
trait DynReceiver: Send + Sync {
    fn receive_boxed(&self, ctx: Context, msg: Message) -> BoxFuture<'_, Result<(), Error>>;
}

impl<R: Receiver> DynReceiver for R {
    fn receive_boxed(&self, ctx: Context, msg: Message) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.receive(ctx, msg))
    }
}

/// A type-erased, cheaply cloneable [`Receiver`], for choosing receivers at run time
/// (a map of them, a receiver from configuration).
///
/// ```
/// use msgio::{BoxReceiver, Context, Message, ReceiverFunc};
///
/// let receivers: Vec<BoxReceiver> = vec![
///     BoxReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) })),
///     BoxReceiver::new(msgio::SafeReceiver::new(ReceiverFunc::new(
///         |_: Context, _: Message| async { Ok(()) },
///     ))),
/// ];
/// # let _ = receivers;
/// ```
#[derive(Clone)]
pub struct BoxReceiver {
    inner: Arc<dyn DynReceiver>,
}

impl BoxReceiver {
    /// Erases the type of `receiver`.
    pub fn new<R: Receiver + 'static>(receiver: R) -> Self {
        BoxReceiver {
            inner: Arc::new(receiver),
        }
    }
}

impl Receiver for BoxReceiver {
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.inner.receive_boxed(ctx, msg)
    }
}

impl fmt::Debug for BoxReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxReceiver")
    }
}

/// Turns a panic anywhere in the inner receiver into an [`Error::Panicked`] carrying the
/// panic's message (go-msg's `SafeReceiver`).
///
/// The panic is caught whether it happens when `receive` is called, before the first
/// `.await` or after one, and whatever its payload (`&str`, `String` or another type). The
/// message then counts as a retryable failure, and the server keeps serving.
///
/// ```
/// use msgio::{Context, Error, Message, Receiver, ReceiverFunc, SafeReceiver};
///
/// # futures::executor::block_on(async {
/// let receiver = SafeReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async {
///     panic!("boom");
/// }));
/// let err = receiver.receive(Context::background(), Message::new("x")).await.unwrap_err();
/// assert!(matches!(err, Error::Panicked { ref message } if message == "boom"));
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeReceiver<R> {
    inner: R,
}

impl<R> SafeReceiver<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        SafeReceiver { inner }
    }
}

inner_accessors!([R] SafeReceiver<R>, R, "receiver");

/// A [`SafeReceiver`] layer (feature `tower`): [`SafeReceiver::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type SafeLayer = SafeReceiver<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl SafeReceiver<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in a
    /// [`SafeReceiver::new`].
    pub fn layer() -> SafeLayer {
        SafeReceiver::new(())
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for SafeReceiver<()> {
    type Service = SafeReceiver<R>;

    fn layer(&self, inner: R) -> SafeReceiver<R> {
        SafeReceiver::new(inner)
    }
}

impl<R: Receiver> Receiver for SafeReceiver<R> {
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        catch_panic(|| self.inner.receive(ctx, msg))
    }
}

/// Calls `call` and runs the future it returns, turning a panic in either into
/// [`Error::Panicked`]. The closure runs at once; the returned future is no larger than
/// the one `call` made (a hand-written future rather than an `async fn`, since decorators
/// stack these and every level's size is copied when its parent moves it).
pub(crate) fn catch_panic<F, Fut>(call: F) -> CatchPanic<Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(fut) => CatchPanic::Running { fut },
        Err(payload) => CatchPanic::Panicked {
            error: Some(panicked(payload)),
        },
    }
}

/// [`catch_panic`] for user code that is not a receiver (a dead-letter topic, a transport's
/// settlement): a panic is an [`Error::Other`] saying that `what` panicked, and why.
pub(crate) async fn catch_panic_of<F, Fut>(what: &str, call: F) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    match catch_panic(call).await {
        Err(Error::Panicked { message }) => {
            Err(Error::other(format!("{what} panicked: {message}")))
        }
        other => other,
    }
}

/// Drops `value` where a panic in its `Drop` (user code: an error a receiver returned)
/// would otherwise unwind through the engine after it decided what to do: the panic is
/// logged and the decision stands.
pub(crate) fn drop_quietly<T>(value: T, what: &str) {
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(move || drop(value))) {
        crate::log::warning!(
            "msgio: dropping {what} panicked: {}",
            panic_message(&*payload)
        );
    }
}

/// The future of [`catch_panic`].
#[pin_project::pin_project(project = CatchPanicProj)]
pub(crate) enum CatchPanic<Fut> {
    Running {
        #[pin]
        fut: Fut,
    },
    Panicked {
        error: Option<Error>,
    },
}

impl<Fut: Future<Output = Result<(), Error>>> Future for CatchPanic<Fut> {
    type Output = Result<(), Error>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            CatchPanicProj::Running { fut } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                    Ok(poll) => poll,
                    Err(payload) => std::task::Poll::Ready(Err(panicked(payload))),
                }
            }
            CatchPanicProj::Panicked { error } => std::task::Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Error::other("CatchPanic polled after it completed")))),
        }
    }
}

fn panicked(payload: Box<dyn Any + Send>) -> Error {
    Error::Panicked {
        message: panic_message(&*payload),
    }
}

/// What a panic said (`&str` or `String` payloads), or a note that it said something else.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic payload of a type other than &str or String".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct PanicsWhenCalled;

    impl Receiver for PanicsWhenCalled {
        #[allow(unreachable_code, clippy::diverging_sub_expression)]
        fn receive(
            &self,
            _: Context,
            _: Message,
        ) -> impl Future<Output = Result<(), Error>> + Send {
            panic!("before any future");
            async { Ok(()) }
        }
    }

    async fn message_of(r: impl Receiver) -> String {
        match SafeReceiver::new(r)
            .receive(Context::background(), Message::default())
            .await
        {
            Err(Error::Panicked { message }) => message,
            other => panic!("expected a caught panic, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn catches_panics_everywhere_with_any_payload() {
        assert_eq!(message_of(PanicsWhenCalled).await, "before any future");
        let before_await = ReceiverFunc::new(|_: Context, _: Message| async {
            panic!("static str");
        });
        assert_eq!(message_of(before_await).await, "static str");
        let after_await = ReceiverFunc::new(|_: Context, _: Message| async {
            tokio::task::yield_now().await;
            let n = 42;
            panic!("formatted {n}");
        });
        assert_eq!(message_of(after_await).await, "formatted 42");
        let other = ReceiverFunc::new(|_: Context, _: Message| async {
            tokio::task::yield_now().await;
            std::panic::panic_any(17u8);
        });
        assert!(
            message_of(other)
                .await
                .contains("other than &str or String")
        );
    }

    #[tokio::test]
    async fn passes_results_through() {
        let ok = SafeReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }));
        assert!(
            ok.receive(Context::background(), Message::default())
                .await
                .is_ok()
        );
        let rejects = SafeReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async {
            Err(Error::reject("no"))
        }));
        let err = rejects
            .receive(Context::background(), Message::default())
            .await
            .unwrap_err();
        assert!(err.is_reject());
    }

    #[tokio::test]
    async fn boxed_receivers_are_receivers() {
        let boxed = BoxReceiver::new(ReceiverFunc::new(|ctx: Context, _: Message| async move {
            assert_eq!(ctx.attempt(), 2);
            Ok(())
        }));
        let clone = boxed.clone();
        clone
            .receive(Context::background().with_attempt(2), Message::default())
            .await
            .unwrap();
    }
}

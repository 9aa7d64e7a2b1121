//! Servers: what feeds messages to a receiver.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Receiver};

/// Serves messages to a [`Receiver`] until shut down (go-msg's `Server`).
///
/// Servers are shared handles: `serve` and `shutdown` take `&self`, so one task can serve
/// while another shuts the server down.
///
/// # Examples
///
/// ```
/// use msgio::{Context, Error, Message, ReceiverFunc, Server, Topic};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let (topic, server) = msgio::mem::channel(16)?;
/// topic.publish(&Context::background(), Message::new("hi")).await?;
///
/// let serving = server.clone();
/// let task = tokio::spawn(async move {
///     serving
///         .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
///         .await
/// });
/// server.shutdown(Duration::from_secs(5)).await?;
/// assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
/// # Ok(()) }
/// ```
pub trait Server: Send + Sync {
    /// Serves messages to `receiver` until the server is shut down, then returns
    /// `Err(Error::ServerClosed)`.
    ///
    /// # Errors
    ///
    /// [`Error::ServerClosed`] once shut down, and at once when called after a shutdown;
    /// [`Error::AlreadyServing`] when the server is serving already.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops fetching; messages already handed to the receiver run to
    /// their end. Prefer [`shutdown`](Server::shutdown).
    fn serve<R: Receiver + 'static>(
        &self,
        receiver: R,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stops fetching, lets in-flight messages finish, and returns once `serve` has stopped.
    ///
    /// When `grace` passes first, the contexts of the messages still in flight are
    /// cancelled, and this returns [`Error::DeadlineExceeded`] once they ended (or, for
    /// receivers that ignore their context, were abandoned and left for redelivery). What
    /// the transport does as it closes (a last commit, leaving a consumer group) is given
    /// up likewise when it cannot finish, so that this returns even when the broker
    /// stopped answering (see [`ServerConfig::cancel_grace`](crate::ServerConfig::cancel_grace)).
    /// Shutting down a server that is not serving closes it at once.
    ///
    /// # Errors
    ///
    /// [`Error::DeadlineExceeded`] as above.
    fn shutdown(&self, grace: Duration) -> impl Future<Output = Result<(), Error>> + Send;
}

impl<S: Server + ?Sized> Server for Arc<S> {
    fn serve<R: Receiver + 'static>(
        &self,
        receiver: R,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).serve(receiver)
    }

    fn shutdown(&self, grace: Duration) -> impl Future<Output = Result<(), Error>> + Send {
        (**self).shutdown(grace)
    }
}

/// The object-safe form of [`Server`], implemented for every server.
trait DynServer: Send + Sync {
    fn serve_boxed(&self, receiver: crate::BoxReceiver) -> crate::BoxFuture<'_, Result<(), Error>>;
    fn shutdown_boxed(&self, grace: Duration) -> crate::BoxFuture<'_, Result<(), Error>>;
}

impl<S: Server> DynServer for S {
    fn serve_boxed(&self, receiver: crate::BoxReceiver) -> crate::BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.serve(receiver))
    }

    fn shutdown_boxed(&self, grace: Duration) -> crate::BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.shutdown(grace))
    }
}

/// A type-erased, cheaply cloneable [`Server`], for servers chosen at run time or kept
/// together (as [`MultiServer`](crate::MultiServer) does).
#[derive(Clone)]
pub struct BoxServer {
    inner: Arc<dyn DynServer>,
}

impl BoxServer {
    /// Erases the type of `server`.
    pub fn new<S: Server + 'static>(server: S) -> Self {
        BoxServer {
            inner: Arc::new(server),
        }
    }
}

impl std::fmt::Debug for BoxServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxServer")
    }
}

impl Server for BoxServer {
    fn serve<R: Receiver + 'static>(
        &self,
        receiver: R,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.inner.serve_boxed(crate::BoxReceiver::new(receiver))
    }

    fn shutdown(&self, grace: Duration) -> impl Future<Output = Result<(), Error>> + Send {
        self.inner.shutdown_boxed(grace)
    }
}

//! tower interop (feature `tower`): receiver stacks built from layers, and adapters both
//! ways between a [`Receiver`] and a `tower_service::Service<(Context, Message)>`.
//!
//! Every receiver decorator is also a [`Layer`]: `SafeReceiver::layer()`,
//! `DeadLetter::layer(topic)`, `Retry::layer(backoff, n)`, `Dedupe::layer(store)`,
//! `Timeout::layer(d)`, `ConcurrencyLimit::layer(n)?`, `RateLimit::layer(rate, burst)?`,
//! `DecodeReceiver::layer(codec)`, `TracedReceiver::layer()`, `OtelReceiver::layer()`. A
//! [`ReceiverBuilder`] stacks them outside-in, the first layer named being the outermost,
//! as tower's `ServiceBuilder` does (which takes them too):
//!
//! ```
//! use msgio::decorators::{DeadLetter, Dedupe, MemoryDedupeStore, Retry, Router};
//! use msgio::tower::ReceiverBuilder;
//! use msgio::{Backoff, Context, Message, ReceiverFunc, SafeReceiver};
//!
//! # fn main() -> Result<(), msgio::Error> {
//! let (dead_letters, _server) = msgio::mem::channel(64)?;
//! let orders = ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) });
//! // The same stack as SafeReceiver::new(DeadLetter::new(Retry::new(Dedupe::new(..)))).
//! let receiver = ReceiverBuilder::new()
//!     .layer(SafeReceiver::layer())
//!     .layer(DeadLetter::layer(dead_letters))
//!     .layer(Retry::layer(Backoff::default(), 5))
//!     .layer(Dedupe::layer(MemoryDedupeStore::new(100_000)))
//!     .receiver(Router::new("Type").route("order.*", orders));
//! // server.serve(receiver).await
//! # let _ = receiver;
//! # Ok(())
//! # }
//! ```
//!
//! [`ReceiverService`] makes a receiver a tower `Service`, and [`ServiceReceiver`] makes such
//! a service a receiver again, so that tower's own middleware (timeouts, load shedding,
//! buffers) can wrap a receiver:
//!
//! ```
//! use std::time::Duration;
//! use msgio::tower::{ReceiverService, ServiceReceiver};
//! use msgio::{Context, Message, Receiver, ReceiverFunc};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), msgio::Error> {
//! let slow = ReceiverFunc::new(|_: Context, _: Message| async {
//!     tokio::time::sleep(Duration::from_secs(60)).await;
//!     Ok(())
//! });
//! let service = tower::ServiceBuilder::new()
//!     .timeout(Duration::from_millis(10))
//!     .service(ReceiverService::new(slow));
//! let receiver = ServiceReceiver::new(service);
//! let err = receiver.receive(Context::background(), Message::new("x")).await.unwrap_err();
//! assert!(!err.is_reject(), "a timeout is retried, like any failure but a reject");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

pub use crate::receiver::SafeLayer;
pub use tower_layer::{Identity, Layer, Stack};
use tower_service::Service;

use crate::{BoxError, Context, Error, Message, Receiver};

/// Stacks receiver layers outside-in: the first [`layer`](ReceiverBuilder::layer) wraps
/// all the others, and [`receiver`](ReceiverBuilder::receiver) puts the receiver at the
/// bottom. Equivalent to nesting the decorators' constructors, read from the outside.
#[derive(Clone, Debug)]
pub struct ReceiverBuilder<L> {
    layer: L,
}

impl ReceiverBuilder<Identity> {
    /// A builder with no layers.
    pub fn new() -> Self {
        ReceiverBuilder {
            layer: Identity::new(),
        }
    }
}

impl Default for ReceiverBuilder<Identity> {
    fn default() -> Self {
        ReceiverBuilder::new()
    }
}

impl<L> ReceiverBuilder<L> {
    /// Adds `layer` inside the layers added so far.
    pub fn layer<T>(self, layer: T) -> ReceiverBuilder<Stack<T, L>> {
        ReceiverBuilder {
            layer: Stack::new(layer, self.layer),
        }
    }

    /// Wraps `receiver` in every layer, the first added outermost.
    pub fn receiver<R>(&self, receiver: R) -> L::Service
    where
        L: Layer<R>,
    {
        self.layer.layer(receiver)
    }

    /// The stacked layers, to hand to tower's `ServiceBuilder` or to apply more than once.
    pub fn into_inner(self) -> L {
        self.layer
    }
}

/// A [`Receiver`] as a `tower_service::Service<(Context, Message)>`: always ready, its
/// response `()`, its error the receiver's [`Error`]. The future owns what it needs
/// (`'static`), so tower's `Buffer` and `Timeout` take it.
pub struct ReceiverService<R> {
    receiver: Arc<R>,
}

impl<R> ReceiverService<R> {
    /// Serves messages with `receiver`.
    pub fn new(receiver: R) -> Self {
        ReceiverService {
            receiver: Arc::new(receiver),
        }
    }

    /// The receiver.
    pub fn get_ref(&self) -> &R {
        &self.receiver
    }
}

impl<R> Clone for ReceiverService<R> {
    fn clone(&self) -> Self {
        ReceiverService {
            receiver: Arc::clone(&self.receiver),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for ReceiverService<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverService")
            .field("receiver", &self.receiver)
            .finish()
    }
}

impl<R: Receiver + 'static> Service<(Context, Message)> for ReceiverService<R> {
    type Response = ();
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (ctx, msg): (Context, Message)) -> Self::Future {
        let receiver = Arc::clone(&self.receiver);
        Box::pin(async move { receiver.receive(ctx, msg).await })
    }
}

/// A `tower_service::Service<(Context, Message)>` as a [`Receiver`]: each message waits
/// for a clone of the service to be ready, then calls it.
///
/// An error the service returns is handed to the engine as the receiver's: a msgio
/// [`Error`] that went through the stack (tower boxes them) comes out as it was, so a
/// reject stays a reject and a delay stays a delay; any other error (tower's `Elapsed`,
/// `Overloaded`, a closed `Buffer`) becomes [`Error::Other`], a retryable failure.
#[derive(Clone, Debug)]
pub struct ServiceReceiver<S> {
    service: S,
}

impl<S> ServiceReceiver<S> {
    /// Receives messages with `service`.
    pub fn new(service: S) -> Self {
        ServiceReceiver { service }
    }

    /// The service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.service
    }
}

impl<S> Receiver for ServiceReceiver<S>
where
    S: Service<(Context, Message), Response = ()> + Clone + Send + Sync,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn receive(
        &self,
        ctx: Context,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let mut service = self.service.clone();
        async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(from_tower)?;
            service.call((ctx, msg)).await.map_err(from_tower)
        }
    }
}

/// A msgio error back out of tower's box; anything else as [`Error::Other`].
fn from_tower(error: impl Into<BoxError>) -> Error {
    match error.into().downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adapters_show_what_they_wrap() {
        let service = ReceiverService::new(crate::SafeReceiver::new(()));
        assert_eq!(
            format!("{service:?}"),
            "ReceiverService { receiver: SafeReceiver { inner: () } }"
        );
        let receiver = ServiceReceiver::new(7);
        assert_eq!(format!("{receiver:?}"), "ServiceReceiver { service: 7 }");
    }

    #[test]
    fn a_msgio_error_comes_back_out_of_the_box_as_it_was() {
        let reject: BoxError = Box::new(Error::reject("poison"));
        assert!(from_tower(reject).is_reject());
        let delay = std::time::Duration::from_secs(3);
        let later: BoxError = Box::new(Error::retry_after(delay, Error::other("busy")));
        assert_eq!(from_tower(later).retry_delay(), Some(delay));
        let foreign: BoxError = "overloaded".into();
        let err = from_tower(foreign);
        assert!(
            matches!(err, Error::Other(_)) && !err.is_reject(),
            "{err:?}"
        );
        assert!(err.to_string().contains("overloaded"), "{err}");
    }
}

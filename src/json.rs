//! Typed JSON payloads (feature `json`): publish a value, receive a value.
//!
//! - [`Message::from_json`] and [`Topic::publish_json`](crate::Topic::publish_json) encode
//!   a `serde::Serialize` value and set `Content-Type: application/json`.
//! - [`Message::json`] reads the body and decodes it. A body that is not the JSON of the
//!   type asked for is a [reject](Error::reject) naming the type and serde's reason: the
//!   engine dead-letters it with that reason (it could never succeed, so it is never
//!   retried).
//! - [`JsonReceiver`] is a [`ReceiverFunc`](crate::ReceiverFunc) over the decoded value,
//!   for a handler that takes `T` directly.
//!
//! The body is decoded whatever its `Content-Type` says (go-msg publishers seldom set
//! one), and read up to [`MAX_BODY`].
//!
//! ```
//! use msgio::json::JsonReceiver;
//! use msgio::{Context, Server, Topic};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order {
//!     id: u64,
//!     item: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), msgio::Error> {
//! let (topic, server) = msgio::mem::channel(16)?;
//! let order = Order { id: 7, item: "tea".into() };
//! topic.publish_json(&Context::background(), &order).await?;
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let receiver = JsonReceiver::new(move |_ctx: Context, order: Order| {
//!     let tx = tx.clone();
//!     async move {
//!         tx.send(order.id).ok();
//!         Ok(())
//!     }
//! });
//! let serving = server.clone();
//! let task = tokio::spawn(async move { serving.serve(receiver).await });
//! assert_eq!(rx.recv().await, Some(7));
//! server.shutdown(std::time::Duration::from_secs(1)).await?;
//! # let _ = task.await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Error, Message, Receiver};

/// `application/json`, the `Content-Type` a JSON message is published with.
pub const CONTENT_TYPE: &str = "application/json";

/// The largest body [`Message::json`] reads: 16 MiB. A larger one is rejected.
pub const MAX_BODY: usize = 16 << 20;

impl Message {
    /// A message whose body is `value` as JSON, with `Content-Type: application/json`.
    ///
    /// # Errors
    ///
    /// [`Error::Other`] with serde's reason when `value` cannot be written as JSON (a map
    /// with keys that are not strings, say).
    ///
    /// ```
    /// let msg = msgio::Message::from_json(&serde_json::json!({"id": 7}))?;
    /// assert_eq!(msg.attributes.get("Content-Type"), Some("application/json"));
    /// # Ok::<(), msgio::Error>(())
    /// ```
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Message, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::other(format!("cannot write the value as JSON: {e}")))?;
        let mut message = Message::new(body);
        message.attributes.set("Content-Type", CONTENT_TYPE);
        Ok(message)
    }

    /// Reads the body and decodes it as the JSON of a `T`.
    ///
    /// # Errors
    ///
    /// A [reject](Error::reject) (so the message is dead-lettered, never retried) when
    /// the body is not the JSON of a `T`, saying which type and serde's reason, or when it
    /// is larger than [`MAX_BODY`]; the body's own read error otherwise.
    pub async fn json<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let body = match self.body.read_to_bytes(MAX_BODY).await {
            Ok(body) => body,
            Err(Error::BodyTooLarge { limit }) => {
                return Err(Error::reject(format!(
                    "the body is larger than the {limit} bytes a JSON {} may take",
                    std::any::type_name::<T>()
                )));
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&body).map_err(|e| {
            Error::reject(format!(
                "the body is not a JSON {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A receiver over the decoded value: `f(ctx, value)` for each message whose body is the
/// JSON of a `T`; a message whose body is not is rejected (see [`Message::json`]) without
/// calling `f`.
pub struct JsonReceiver<T, F> {
    f: F,
    _value: PhantomData<fn() -> T>,
}

impl<T, F> JsonReceiver<T, F> {
    /// Wraps `f`.
    pub fn new<Fut>(f: F) -> Self
    where
        T: DeserializeOwned + Send,
        F: Fn(Context, T) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), Error>> + Send,
    {
        JsonReceiver {
            f,
            _value: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for JsonReceiver<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonReceiver<{}>", std::any::type_name::<T>())
    }
}

impl<T, F, Fut> Receiver for JsonReceiver<T, F>
where
    T: DeserializeOwned + Send,
    F: Fn(Context, T) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), Error>> + Send,
{
    async fn receive(&self, ctx: Context, mut msg: Message) -> Result<(), Error> {
        let value = msg.json::<T>().await?;
        (self.f)(ctx, value).await
    }
}

//! Macros for what every wrapper repeats.

/// `get_ref`, `get_mut` and `into_inner` for a wrapper whose wrapped value is the field
/// `inner`: `inner_accessors!([R] SafeReceiver<R>, R, "receiver");`
macro_rules! inner_accessors {
    ([$($generics:tt)*] $ty:ty, $inner:ty, $what:literal) => {
        impl<$($generics)*> $ty {
            #[doc = concat!("The wrapped ", $what, ".")]
            pub fn get_ref(&self) -> &$inner {
                &self.inner
            }

            #[doc = concat!("The wrapped ", $what, ", mutably.")]
            pub fn get_mut(&mut self) -> &mut $inner {
                &mut self.inner
            }

            #[doc = concat!("Unwraps the ", $what, ".")]
            pub fn into_inner(self) -> $inner {
                self.inner
            }
        }
    };
}

/// `MessageWriter` for a writer wrapper, delegating to the field `inner`.
#[allow(unused_macros)] // used by feature-gated decorators
macro_rules! delegate_message_writer {
    ([$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> $crate::MessageWriter for $ty {
            fn attributes(&self) -> &$crate::Attributes {
                self.inner.attributes()
            }

            fn attributes_mut(&mut self) -> &mut $crate::Attributes {
                self.inner.attributes_mut()
            }

            fn set_delay(&mut self, delay: ::std::time::Duration) {
                self.inner.set_delay(delay)
            }
        }
    };
}

/// `Server` and `health` for a transport's server type that wraps an
/// [`Engine`](crate::engine::Engine) in its field `engine`.
#[allow(unused_macros)] // used by feature-gated transports
macro_rules! engine_server {
    ($ty:ty) => {
        impl $ty {
            /// A snapshot of the server's health.
            pub fn health(&self) -> $crate::engine::Health {
                self.engine.health()
            }
        }

        impl $crate::Server for $ty {
            fn serve<R: $crate::Receiver + 'static>(
                &self,
                receiver: R,
            ) -> impl ::std::future::Future<Output = Result<(), $crate::Error>> + Send {
                self.engine.serve(receiver)
            }

            fn shutdown(
                &self,
                grace: ::std::time::Duration,
            ) -> impl ::std::future::Future<Output = Result<(), $crate::Error>> + Send {
                self.engine.shutdown(grace)
            }
        }
    };
}

/// The `Topic` and `Publish` impls of a transport topic that sends whole messages: `$topic`
/// and `$publisher` each hold `inner: Arc<_>` whose
/// `async fn send(&self, &Context, &Attributes, &Bytes, Option<Duration>)` sends one
/// message. `publish` sends a body held in memory at once, without a writer; a streaming
/// body and a writer's close go through a [`BufferedWriter`](crate::topic::BufferedWriter).
#[cfg_attr(not(feature = "_broker"), allow(unused_macros))]
macro_rules! whole_message_topic {
    ($topic:ty, $publisher:ident) => {
        impl $crate::Topic for $topic {
            type Writer = $crate::topic::BufferedWriter<$publisher>;

            async fn publish(
                &self,
                ctx: &$crate::Context,
                message: $crate::Message,
            ) -> Result<(), $crate::Error> {
                if let Some(body) = message.body.as_bytes() {
                    return self.inner.send(ctx, &message.attributes, body, None).await;
                }
                $crate::topic::publish_through_writer(self, ctx, message).await
            }

            fn new_writer(&self, ctx: &$crate::Context) -> Result<Self::Writer, $crate::Error> {
                Ok($crate::topic::BufferedWriter::new(
                    $publisher {
                        inner: self.inner.clone(),
                    },
                    ctx,
                ))
            }
        }

        impl $crate::topic::Publish for $publisher {
            type Future = ::std::pin::Pin<
                Box<dyn ::std::future::Future<Output = Result<(), $crate::Error>> + Send>,
            >;

            fn publish(
                &self,
                ctx: &$crate::Context,
                message: $crate::topic::Outgoing,
            ) -> Self::Future {
                let inner = self.inner.clone();
                let ctx = ctx.clone();
                Box::pin(async move {
                    inner
                        .send(&ctx, &message.attributes, &message.body, message.delay)
                        .await
                })
            }
        }
    };
}

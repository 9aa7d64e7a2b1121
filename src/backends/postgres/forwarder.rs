//! The outbox's relay: a queue served in per-key order, each message published to another
//! topic.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Postgres, PostgresServer, QueueOptions};
use crate::{Context, Error, Message, ReceiverFunc, Server, ServerConfig, Topic};

/// Relays a PostgreSQL queue — typically an outbox written with
/// [`PostgresTopic::publish_in`](super::PostgresTopic::publish_in) — to any other
/// [`Topic`] (Redis, NATS, RabbitMQ, in-memory...), at least once: a row leaves the queue
/// only after the topic confirmed its message, byte for byte with its attributes.
///
/// Messages that share an [`ORDERING_KEY`](super::ORDERING_KEY) are published one at a
/// time, in the order they were committed: the forwarder's server has
/// [`QueueOptions::key_order`] on, so a message is claimed only once every earlier one of
/// its key was published, even with several forwarders on the queue. Messages without a
/// key, and of different keys, are published concurrently (up to 64 at once).
///
/// A publish that fails is retried for ever, after 100 ms doubling up to 30 s: the outbox
/// never drops an event, and a key waits for its failed message rather than overtake it.
///
/// ```no_run
/// use msgio::postgres::{Postgres, QueueOptions};
/// use std::time::Duration;
///
/// # #[allow(dead_code)]
/// # async fn demo<T>(to: T) -> Result<(), msgio::Error>
/// # where T: msgio::Topic + Send + Sync + 'static, T::Writer: 'static {
/// let postgres = Postgres::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let forwarder = postgres.forwarder(QueueOptions::new("outbox"), to).await?;
/// let running = forwarder.clone();
/// let task = tokio::spawn(async move { running.run().await });
/// // ...
/// forwarder.shutdown(Duration::from_secs(5)).await?;
/// task.await.expect("no panic")?;
/// # Ok(()) }
/// ```
pub struct Forwarder<T> {
    server: PostgresServer,
    topic: Arc<T>,
}

impl<T> Clone for Forwarder<T> {
    fn clone(&self) -> Self {
        Forwarder {
            server: self.server.clone(),
            topic: self.topic.clone(),
        }
    }
}

impl<T> fmt::Debug for Forwarder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("source", self.server.source())
            .finish_non_exhaustive()
    }
}

/// The delay before retrying a failed publish for the `attempt`th time.
fn backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(9));
    Duration::from_millis(ms).min(Duration::from_secs(30))
}

impl<T> Forwarder<T>
where
    T: Topic + Send + Sync + 'static,
    T::Writer: 'static,
{
    pub(super) async fn new(
        postgres: &Postgres,
        options: QueueOptions,
        topic: T,
    ) -> Result<Self, Error> {
        let config = ServerConfig::new().concurrency(64).unlimited_attempts();
        let server = postgres.server(options.key_order(true), config).await?;
        Ok(Forwarder {
            server,
            topic: Arc::new(topic),
        })
    }

    /// Relays until [`shutdown`](Forwarder::shutdown), then returns `Ok(())`.
    ///
    /// # Errors
    ///
    /// When serving cannot start (the forwarder runs already).
    pub async fn run(&self) -> Result<(), Error> {
        let topic = self.topic.clone();
        let receiver = ReceiverFunc::new(move |ctx: Context, message: Message| {
            let topic = topic.clone();
            async move {
                let attempt = ctx.attempt();
                topic
                    .publish(&ctx, message)
                    .await
                    .map_err(|e| Error::retry_after(backoff(attempt), e))
            }
        });
        match self.server.serve(receiver).await {
            Err(Error::ServerClosed) => Ok(()),
            other => other,
        }
    }

    /// Stops relaying: lets the publishes under way finish for up to `grace`; what is not
    /// confirmed stays in the queue for the next run.
    ///
    /// # Errors
    ///
    /// As [`Server::shutdown`].
    pub async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        self.server.shutdown(grace).await
    }

    /// The server reading the queue (for its [`health`](crate::transport::Engine::health)).
    pub fn server(&self) -> &PostgresServer {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(9), Duration::from_millis(25_600));
        assert_eq!(backoff(10), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}

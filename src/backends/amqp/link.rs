//! The shared connection: one channel in confirm mode that every topic publishes on (and
//! servers republish retries on), remade after a failure; topology declarations; wait
//! queues for delays.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use lapin::uri::AMQPUri;

use crate::Error;
use crate::redact::Credentials;

/// How long connecting may take before it counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect: the URL parsed without its credentials, which are set in the parsed
/// form, so that lapin never holds a URL with a password in it.
#[derive(Clone)]
pub(super) struct Target {
    uri: AMQPUri,
    credentials: Credentials,
}

impl Target {
    /// Parses `url` (`amqp://user:password@host:port/vhost`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL lapin cannot read, without its password.
    pub(super) fn parse(url: &str) -> Result<Self, Error> {
        let credentials = Credentials::split("amqp url", url)?;
        let mut uri: AMQPUri = credentials.bare.parse().map_err(|e: String| {
            Error::invalid_config(
                "amqp url",
                format!("{}: {}", credentials.shown, credentials.scrub(&e)),
            )
        })?;
        if let Some(user) = &credentials.user {
            uri.authority.userinfo.username = user.clone();
            uri.authority.userinfo.password = credentials.password.clone().unwrap_or_default();
        }
        Ok(Target { uri, credentials })
    }

    /// The URL as it may be shown.
    pub(super) fn shown(&self) -> &str {
        &self.credentials.shown
    }
}

/// Connects to `target`.
pub(super) async fn connect(target: &Target, name: &str) -> Result<Connection, Error> {
    let shown = target.shown();
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connect = Connection::connect_uri(target.uri.clone(), properties);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(Error::connection_lost(format!(
            "cannot connect to RabbitMQ at {shown}: {}",
            target.credentials.scrub(&e.to_string())
        ))),
        Err(_) => Err(Error::connection_lost(format!(
            "cannot connect to RabbitMQ at {shown}: no answer in {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// `e` from doing `what` as a msgio error: a lost connection or channel is
/// [`Error::ConnectionLost`] (try again), a refusal by the broker names its reason.
pub(super) fn error(what: impl fmt::Display, e: lapin::Error) -> Error {
    use lapin::ErrorKind as Kind;
    let lost = match e.kind() {
        Kind::IOError(_)
        | Kind::InvalidChannelState(..)
        | Kind::InvalidConnectionState(_)
        | Kind::MissingHeartbeatError
        | Kind::RuntimeShutdownError(_)
        | Kind::InvalidChannel(_) => true,
        Kind::ProtocolError(_) => e.is_amqp_hard_error(),
        _ => false,
    };
    if lost {
        Error::connection_lost(format!("{what}: {e}"))
    } else {
        Error::other(format!("{what}: RabbitMQ refused: {e}"))
    }
}

/// Why a publication failed.
pub(super) enum PublishError {
    /// The broker had no queue for it (a mandatory publication came back).
    Unroutable,
    /// Anything else.
    Failed(Error),
}

pub(super) struct Link {
    target: Target,
    /// The publishing channel (confirm mode). Shared behind an `Arc`: a lapin `Channel`
    /// clone is a dozen reference counts, which every concurrent publish would move
    /// between the cores twice.
    channel: Mutex<Option<Arc<Channel>>>,
    /// The connection, and the lock that makes one task at a time remake it.
    connection: tokio::sync::Mutex<Option<Connection>>,
    /// Wait queues declared, and when (see [`Link::publish_delayed`]).
    waits: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.target.shown())
            .finish()
    }
}

impl Link {
    pub(super) fn new(target: Target, connection: Connection) -> Self {
        Link {
            target,
            channel: Mutex::new(None),
            connection: tokio::sync::Mutex::new(Some(connection)),
            waits: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn target(&self) -> &Target {
        &self.target
    }

    pub(super) fn shown(&self) -> &str {
        self.target.shown()
    }

    /// The publishing channel, remade (with the connection, when that is lost too) after a
    /// failure.
    pub(super) async fn channel(&self) -> Result<Arc<Channel>, Error> {
        if let Some(channel) = self.current() {
            return Ok(channel);
        }
        let mut connection = self.connection.lock().await;
        if let Some(channel) = self.current() {
            return Ok(channel);
        }
        let connection = Self::alive(&mut connection, &self.target).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| error(format!("opening a channel on {}", self.shown()), e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error("turning on publisher confirms", e))?;
        let channel = Arc::new(channel);
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
        Ok(channel)
    }

    fn current(&self) -> Option<Arc<Channel>> {
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        channel.as_ref().filter(|c| c.status().connected()).cloned()
    }

    /// The connection in `slot`, made again when it is gone.
    async fn alive<'a>(
        slot: &'a mut Option<Connection>,
        target: &Target,
    ) -> Result<&'a Connection, Error> {
        if !slot.as_ref().is_some_and(|c| c.status().connected()) {
            *slot = Some(connect(target, "msgio").await?);
        }
        Ok(slot.as_ref().expect("just made"))
    }

    /// A channel of its own for declarations (a refused declaration closes its channel:
    /// it must not close the publishing one). Closed when dropped by the caller's
    /// [`Link::declare`].
    async fn scratch(&self) -> Result<Channel, Error> {
        let mut connection = self.connection.lock().await;
        let connection = Self::alive(&mut connection, &self.target).await?;
        connection
            .create_channel()
            .await
            .map_err(|e| error(format!("opening a channel on {}", self.shown()), e))
    }

    /// Runs `declare` on a channel of its own, then closes the channel.
    pub(super) async fn declare<F, Fut>(&self, declare: F) -> Result<(), Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<(), Error>>,
    {
        let channel = self.scratch().await?;
        let result = declare(channel.clone()).await;
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result
    }

    /// Checks that `exchange` exists, on a channel of its own: publishing to a missing
    /// exchange would close the shared publishing channel, failing every publication in
    /// flight on it.
    pub(super) async fn check_exchange(&self, exchange: &ShortString) -> Result<(), Error> {
        let name = exchange.clone();
        self.declare(|channel| async move {
            let shown = name.to_string();
            channel
                .exchange_declare(
                    name,
                    lapin::ExchangeKind::Direct,
                    lapin::options::ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    error(
                        format!(
                            "the exchange {shown:?} must exist before publishing to it \
                             (declare it, with Amqp::declare_exchange say)"
                        ),
                        e,
                    )
                })
        })
        .await
    }

    /// Publishes and waits for the broker's confirmation. `mandatory`: a message no queue
    /// takes is [`PublishError::Unroutable`] instead of being dropped by the broker.
    pub(super) async fn publish(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await.map_err(PublishError::Failed)?;
        let confirm = send(&channel, exchange, routing_key, mandatory, body, properties).await?;
        confirmed(exchange, routing_key, confirm.await)
    }

    /// Publishes several messages in order on the shared channel, then waits for their
    /// confirmations together: one round trip for the batch.
    pub(super) async fn publish_many<'a>(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        mandatory: bool,
        messages: impl IntoIterator<Item = (&'a [u8], BasicProperties)>,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await.map_err(PublishError::Failed)?;
        let mut confirms = Vec::new();
        for (body, properties) in messages {
            confirms
                .push(send(&channel, exchange, routing_key, mandatory, body, properties).await?);
        }
        for confirm in confirms {
            confirmed(exchange, routing_key, confirm.await)?;
        }
        Ok(())
    }

    /// Publishes a message that reaches `exchange` with `routing_key` after `delay`,
    /// through a wait queue (see the [module docs](super)); waits for the confirmation.
    pub(super) async fn publish_delayed(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        delay: Duration,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        let band = band(ms);
        let queue = wait_queue(exchange.as_str(), routing_key.as_str(), band);
        let name = ShortString::try_new(queue.clone()).map_err(Error::other)?;
        let properties = properties.with_expiration(ms.to_string().into());
        // A wait queue unused for long is deleted by the broker: declared again then.
        for again in [false, true] {
            self.wait_queue(&queue, exchange, routing_key, band, again)
                .await?;
            match self
                .publish(
                    &ShortString::default(),
                    &name,
                    true,
                    body,
                    properties.clone(),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(PublishError::Failed(e)) => return Err(e),
                Err(PublishError::Unroutable) if !again => {}
                Err(PublishError::Unroutable) => {
                    return Err(Error::other(format!(
                        "the wait queue {queue:?} was deleted while publishing to it"
                    )));
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Declares the wait queue `queue` unless it was declared recently (or `again`).
    async fn wait_queue(
        &self,
        queue: &str,
        exchange: &ShortString,
        routing_key: &ShortString,
        band: u64,
        again: bool,
    ) -> Result<(), Error> {
        let expires = wait_queue_expiry(band);
        let fresh = {
            let waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
            waits
                .get(queue)
                .is_some_and(|at| at.elapsed() < Duration::from_millis(expires / 2))
        };
        if fresh && !again {
            return Ok(());
        }
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(exchange.as_str())),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(routing_key.as_str())),
        );
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(i64::try_from(expires).unwrap_or(i64::MAX)),
        );
        let name = ShortString::try_new(queue).map_err(Error::other)?;
        self.declare(|channel| async move {
            channel
                .queue_declare(
                    name,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    arguments,
                )
                .await
                .map(drop)
                .map_err(|e| error(format!("declaring the wait queue {queue:?}"), e))
        })
        .await?;
        self.waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned(), Instant::now());
        Ok(())
    }
}

impl Link {
    /// Deletes the wait queues this link declared for `exchange` and `routing_key`,
    /// returning how many.
    pub(super) async fn delete_wait_queues(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<usize, Error> {
        let mine: Vec<String> = {
            let waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
            waits
                .keys()
                .filter(|name| {
                    band_of(name).is_some_and(|b| **name == wait_queue(exchange, routing_key, b))
                })
                .cloned()
                .collect()
        };
        for name in &mine {
            let queue = ShortString::try_new(name.clone()).map_err(Error::other)?;
            self.declare(|channel| async move {
                channel
                    .queue_delete(queue, Default::default())
                    .await
                    .map(drop)
                    .map_err(|e| error(format!("deleting the wait queue {name:?}"), e))
            })
            .await?;
            self.waits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
        Ok(mine.len())
    }
}

/// The band in a wait queue's name.
fn band_of(name: &str) -> Option<u64> {
    name.strip_prefix("msgio.wait.")?
        .split_once("ms.")?
        .0
        .parse()
        .ok()
}

/// The band of a delay of `ms` milliseconds: the least of `2^k + i * 2^k / 8` (i in 1..=8)
/// that is at least `ms`. Messages wait in one queue per band, each with its own
/// expiration; a queue lets a message go only from its head, so a message can wait behind
/// a longer one of its band: at most an eighth longer than its own delay.
pub(super) fn band(ms: u64) -> u64 {
    if ms <= 8 {
        return ms.max(1);
    }
    let base = 1u64 << (63 - ms.leading_zeros());
    let step = base / 8;
    base + (ms - base).div_ceil(step) * step
}

/// How long a wait queue may go undeclared before the broker deletes it: more than twice
/// its longest wait, so that nothing is still in it when it goes (it is declared again
/// every half of this while in use).
fn wait_queue_expiry(band: u64) -> u64 {
    band.saturating_mul(2).saturating_add(10 * 60 * 1000)
}

/// The name of the wait queue for `band` that dead-letters to `exchange` with
/// `routing_key`: readable when it fits in 255 bytes, hashed when not.
pub(super) fn wait_queue(exchange: &str, routing_key: &str, band: u64) -> String {
    let exchange_name = if exchange.is_empty() {
        "amq.default"
    } else {
        exchange
    };
    let readable = format!("msgio.wait.{band}ms.{exchange_name}.{routing_key}");
    if readable.len() <= 255 {
        return readable;
    }
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in exchange.bytes().chain([0]).chain(routing_key.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("msgio.wait.{band}ms.{hash:016x}")
}

/// Sends one publish on `channel`; the confirmation to await.
async fn send(
    channel: &Channel,
    exchange: &ShortString,
    routing_key: &ShortString,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<lapin::PublisherConfirm, PublishError> {
    channel
        .basic_publish(
            exchange.clone(),
            routing_key.clone(),
            BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            body,
            properties,
        )
        .await
        .map_err(|e| published_error(exchange, routing_key, e))
}

/// What a publish that the channel refused is reported as.
fn published_error(
    exchange: &ShortString,
    routing_key: &ShortString,
    e: lapin::Error,
) -> PublishError {
    PublishError::Failed(error(publishing(exchange, routing_key), e))
}

fn publishing(exchange: &ShortString, routing_key: &ShortString) -> String {
    format!(
        "publishing to exchange {:?} with routing key {:?}",
        exchange.as_str(),
        routing_key.as_str()
    )
}

/// What RabbitMQ's confirmation of a publish says.
fn confirmed(
    exchange: &ShortString,
    routing_key: &ShortString,
    confirmation: Result<Confirmation, lapin::Error>,
) -> Result<(), PublishError> {
    match confirmation.map_err(|e| published_error(exchange, routing_key, e))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        Confirmation::Nack(_) => Err(PublishError::Failed(Error::other(format!(
            "{}: RabbitMQ could not take the message (nack)",
            publishing(exchange, routing_key)
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_band_holds_its_delay_and_is_at_most_an_eighth_longer() {
        for ms in (1..5000).chain([65_537, 1_000_000, u64::MAX / 2]) {
            let b = band(ms);
            assert!(b >= ms, "{ms} -> {b}");
            assert!(b - ms <= ms / 8, "{ms} -> {b}");
        }
        assert_eq!(band(1000), 1024);
        assert_eq!(band(100), 104);
    }

    #[test]
    fn wait_queue_names_fit_amqp_and_tell_apart_their_targets() {
        assert_eq!(
            wait_queue("", "jobs", 1024),
            "msgio.wait.1024ms.amq.default.jobs"
        );
        let long = "k".repeat(250);
        let a = wait_queue("x", &long, 1024);
        let b = wait_queue("y", &long, 1024);
        assert!(a.len() <= 255 && a != b);
    }
}

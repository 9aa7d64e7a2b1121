//! The server: basic.consume on a queue as an engine source.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::encoding::{self, short};
use super::link::{self, Link, PublishError};
use super::{Amqp, QueueOptions};
use crate::transport::{Delivery, Engine, Settle, Settlement, Source};
use crate::{Error, ServerConfig, log};

impl QueueOptions {
    /// Declares the queue and its bindings on `channel`.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), Error> {
        self.validate()?;
        let mut arguments = FieldTable::default();
        if self.quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
        }
        if let Some((exchange, key)) = &self.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(exchange.as_str())),
            );
            if let Some(key) = key {
                arguments.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(LongString::from(key.as_str())),
                );
            }
        }
        channel
            .queue_declare(
                short("queue", &self.name)?,
                QueueDeclareOptions {
                    durable: self.durable,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map_err(|e| link::error(format!("declaring the queue {:?}", self.name), e))?;
        for (exchange, key) in &self.bindings {
            bind(channel, &self.name, exchange, key).await?;
        }
        Ok(())
    }
}

/// Binds `queue` to `exchange` with `key` on `channel`, naming all three when the broker
/// refuses.
pub(super) async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), Error> {
    channel
        .queue_bind(
            short("queue", queue)?,
            short("exchange", exchange)?,
            short("routing_key", key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            link::error(
                format!("binding the queue {queue:?} to the exchange {exchange:?} with {key:?}"),
                e,
            )
        })
}

/// A server consuming a RabbitMQ queue: the delivery engine over an [`AmqpSource`] (see
/// the [module docs](super)). Cloning gives another handle to the same server.
pub type AmqpServer = Engine<AmqpSource>;

/// Opens a server: checks the options and the prefetch, declares the queue.
pub(super) async fn server(
    amqp: &Amqp,
    options: QueueOptions,
    config: ServerConfig,
) -> Result<AmqpServer, Error> {
    options.validate()?;
    config.validate()?;
    let prefetch = config.in_flight_limit();
    let prefetch = u16::try_from(prefetch).map_err(|_| {
        Error::invalid_config(
            "concurrency",
            format!(
                "concurrency plus prefetch is {prefetch}; AMQP's prefetch count stops at 65535"
            ),
        )
    })?;
    // Declared now, so that what is published from here on waits for this server.
    amqp.declare_queue(&options).await?;
    Engine::new(
        AmqpSource {
            queue: short("queue", &options.name)?,
            options,
            link: amqp.link.clone(),
            prefetch,
            consuming: tokio::sync::Mutex::new(None),
            settling: Mutex::new(None),
            generation: AtomicU64::new(0),
        },
        config,
    )
}

/// Settles a delivery of an [`AmqpSource`]: the delivery tag on its channel.
pub struct AmqpToken {
    tag: u64,
    /// The channel it came on (deliveries of an earlier one went back to the queue when it
    /// closed).
    generation: u64,
    attempt: u32,
    /// For a republication (a retry).
    body: Bytes,
    properties: BasicProperties,
}

impl fmt::Debug for AmqpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpToken")
            .field("tag", &self.tag)
            .field("generation", &self.generation)
            .finish()
    }
}

/// What consumes: its own connection, the channel and the consumer stream.
struct Consuming {
    connection: Connection,
    consumer: lapin::Consumer,
    generation: u64,
}

/// The engine [`Source`] of an [`AmqpServer`]: consumes a queue on a connection of its
/// own with a prefetch count, acks and rejects by delivery tag, and republishes retries
/// with their attempt count. Made by [`Amqp::server`]; the engine calls its methods, a
/// user never does.
pub struct AmqpSource {
    options: QueueOptions,
    queue: ShortString,
    /// Republishes retries.
    link: Arc<Link>,
    prefetch: u16,
    consuming: tokio::sync::Mutex<Option<Consuming>>,
    /// The channel settlements go on, with its generation.
    settling: Mutex<Option<(u64, Channel)>>,
    generation: AtomicU64,
}

impl fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queue", &self.options.name)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// How long one fetch waits for a first delivery.
const POLL: Duration = Duration::from_secs(1);
/// How long closing the consumer connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl AmqpSource {
    /// Connects, declares the queue and starts consuming with the prefetch count.
    async fn consume(&self) -> Result<Consuming, Error> {
        let connection = link::connect(self.link.target(), "msgio consumer").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| link::error("opening a consumer channel", e))?;
        self.options.declare(&channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| link::error("setting the prefetch count", e))?;
        let consumer = channel
            .basic_consume(
                self.queue.clone(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| link::error(format!("consuming {:?}", self.options.name), e))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.settling.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, channel));
        Ok(Consuming {
            connection,
            consumer,
            generation,
        })
    }

    fn delivery(&self, generation: u64, d: lapin::message::Delivery) -> Delivery<AmqpToken> {
        let decoded = encoding::decode(&d.properties);
        let redeliveries = decoded.delivery_count.unwrap_or(u32::from(d.redelivered));
        let attempt = decoded
            .prior_attempts
            .saturating_add(1)
            .saturating_add(redeliveries);
        let body = Bytes::from(d.data);
        let token = AmqpToken {
            tag: d.delivery_tag,
            generation,
            attempt,
            body: body.clone(),
            properties: d.properties,
        };
        let delivery = Delivery::new(token, body)
            .with_attributes(decoded.attributes)
            .with_attempt(attempt);
        match decoded.message_id {
            Some(id) => delivery.with_message_id(id),
            None => delivery,
        }
    }

    /// Republishes `token`'s message to the queue (after `delay`), recording `attempts`.
    async fn republish(
        &self,
        token: &AmqpToken,
        attempts: u32,
        delay: Option<Duration>,
    ) -> Result<(), Error> {
        let properties = encoding::for_republish(&token.properties, attempts);
        let default = ShortString::default();
        match delay.filter(|d| !d.is_zero()) {
            Some(delay) => {
                self.link
                    .publish_delayed(&default, &self.queue, delay, &token.body, properties)
                    .await
            }
            None => match self
                .link
                .publish(&default, &self.queue, true, &token.body, properties)
                .await
            {
                Ok(()) => Ok(()),
                Err(PublishError::Failed(e)) => Err(e),
                Err(PublishError::Unroutable) => Err(Error::other(format!(
                    "the queue {:?} is gone: cannot retry a message on it",
                    self.options.name
                ))),
            },
        }
    }
}

/// The least a retry the broker refused to take back waits before it is given back to the
/// queue, so that a queue that keeps refusing is not asked again at once, again and again.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

impl AmqpSource {
    /// Republishes a delivery for its next attempt, then acks it. When the broker refuses
    /// the republication (a full queue that rejects publishes, a wait queue it would not
    /// declare) the delivery is given back to the queue with a nack once the delay has
    /// passed (at least [`REQUEUE_PAUSE`]): left unacknowledged it would hold a prefetch
    /// slot until its channel closed, and enough of them would stop the consumer.
    async fn retry(
        &self,
        token: &AmqpToken,
        attempts: u32,
        delay: Option<Duration>,
        channel: &Channel,
    ) -> Result<(), Error> {
        match self.republish(token, attempts, delay).await {
            Ok(()) => channel
                .basic_ack(token.tag, BasicAckOptions { multiple: false })
                .await
                .map_err(|e| link::error("acknowledging", e)),
            // The channel goes, and the broker gives the delivery back by itself.
            Err(e) if e.is_connection_lost() => Err(e),
            Err(e) => {
                let pause = delay.unwrap_or_default().max(REQUEUE_PAUSE);
                log::warning!(
                    "msgio: could not republish a retry on {:?} ({e}); giving it back to the queue in {pause:?}",
                    self.options.name
                );
                let (channel, tag) = (channel.clone(), token.tag);
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    // Fails only when the channel closed meanwhile, which gave it back.
                    let _ = channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            },
                        )
                        .await;
                });
                Ok(())
            }
        }
    }
}

impl Source for AmqpSource {
    type Token = AmqpToken;

    fn name(&self) -> &str {
        &self.options.name
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<AmqpToken>>) -> Result<(), Error> {
        let mut guard = self.consuming.lock().await;
        if guard.is_none() {
            *guard = Some(self.consume().await?);
        }
        let consuming = guard.as_mut().expect("just made");
        let generation = consuming.generation;
        // Wait (bounded) for a first delivery, then take what is ready, up to `max`.
        let Ok(mut next) = tokio::time::timeout(POLL, consuming.consumer.next()).await else {
            return Ok(());
        };
        loop {
            match next {
                Some(Ok(d)) => out.push(self.delivery(generation, d)),
                Some(Err(e)) => {
                    *guard = None;
                    return Err(link::error(format!("consuming {:?}", self.options.name), e));
                }
                None => {
                    *guard = None;
                    return Err(Error::connection_lost(format!(
                        "RabbitMQ cancelled the consumer on {:?} (was the queue deleted?)",
                        self.options.name
                    )));
                }
            }
            if out.len() >= max {
                return Ok(());
            }
            match futures::FutureExt::now_or_never(consuming.consumer.next()) {
                Some(n) => next = n,
                None => return Ok(()),
            }
        }
    }

    async fn settle(&self, batch: &mut Vec<Settlement<AmqpToken>>) -> Result<(), Error> {
        let Some((generation, channel)) = self
            .settling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            batch.clear();
            return Ok(());
        };
        // Deliveries of an earlier channel went back to the queue when it closed.
        batch.retain(|s| s.token.generation == generation);
        // Retries are republished (recording the attempts) and then acked; the rest are
        // settled on the channel, all sent before any is awaited.
        let outcomes = futures::future::join_all(batch.iter().map(|s| {
            let (tag, channel) = (s.token.tag, &channel);
            async move {
                match &s.action {
                    Settle::Ack => channel
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await
                        .map_err(|e| link::error("acknowledging", e)),
                    Settle::Nack { delay } => {
                        self.retry(&s.token, s.token.attempt, *delay, channel).await
                    }
                    Settle::Defer { delay } => {
                        let attempts = s.token.attempt.saturating_sub(1);
                        self.retry(&s.token, attempts, Some(*delay), channel).await
                    }
                    Settle::Reject | Settle::DeadLetter { .. } => channel
                        .basic_reject(tag, BasicRejectOptions { requeue: false })
                        .await
                        .map_err(|e| link::error("rejecting", e)),
                    Settle::Release => channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            },
                        )
                        .await
                        .map_err(|e| link::error("giving back", e)),
                }
            }
        }))
        .await;
        let mut first_error = None;
        let mut outcomes = outcomes.into_iter();
        batch.retain(|_| match outcomes.next() {
            Some(Err(e)) => {
                first_error.get_or_insert(e);
                true
            }
            _ => false,
        });
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    async fn reconnect(&self) -> Result<(), Error> {
        let mut guard = self.consuming.lock().await;
        *guard = None;
        *guard = Some(self.consume().await?);
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        self.settling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(consuming) = self.consuming.lock().await.take() {
            // Closing gives back what was delivered and not settled (prefetched).
            // Bounded: a broker that stopped answering must not hold up the shutdown (the
            // connection goes when dropped either way).
            if consuming.connection.status().connected() {
                let close = consuming
                    .connection
                    .close(200, "msgio server stopped".into());
                match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
                    Ok(result) => {
                        result.map_err(|e| link::error("closing the consumer connection", e))?;
                    }
                    Err(_) => {
                        return Err(Error::connection_lost(format!(
                            "RabbitMQ did not confirm closing the consumer connection in {CLOSE_TIMEOUT:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

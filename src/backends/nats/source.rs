//! The server: a durable pull consumer as an engine source.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::VecDeque;

use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;

use super::pull::{Incoming, PullConnection};
use super::wire;
use super::{ConsumerOptions, Nats};
use crate::transport::{Delivery, Engine, Settle, Settlement, Source};
use crate::{Error, ServerConfig, log};

/// A server on a JetStream durable pull consumer: the delivery engine over a
/// [`NatsSource`] (see the [module docs](super)). Cloning gives another handle to the same
/// server.
pub type NatsServer = Engine<NatsSource>;

/// Opens a server: checks the options, creates the stream and the consumer when missing.
pub(super) async fn server(
    nats: &Nats,
    options: ConsumerOptions,
    mut config: ServerConfig,
) -> Result<NatsServer, Error> {
    options.validate()?;
    config.validate()?;
    if config.dead_letter.is_none() {
        if let Some(subject) = &options.dead_letter_subject {
            config = config.dead_letter(nats.topic(subject.clone()));
        }
    }
    ensure_consumer(nats, &options).await?;
    let next_subject = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        options.stream, options.durable
    );
    Engine::new(
        NatsSource {
            nats: nats.clone(),
            options,
            next_subject,
            pull: tokio::sync::Mutex::new(Pulled::default()),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            progress: Mutex::new(None),
        },
        config,
    )
}

/// The stream `options` names, created when missing.
pub(super) async fn ensure_stream(
    nats: &Nats,
    options: &ConsumerOptions,
) -> Result<stream::Stream, Error> {
    options.validate()?;
    nats.jetstream
        .get_or_create_stream(stream::Config {
            name: options.stream.clone(),
            subjects: options.subjects.clone(),
            retention: options.retention,
            duplicate_window: options.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::other(format!("stream {:?}: {e}", options.stream)))
}

/// The stream and the durable consumer `options` name, each created when missing.
async fn ensure_consumer(nats: &Nats, options: &ConsumerOptions) -> Result<(), Error> {
    let stream = ensure_stream(nats, options).await?;
    let _consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &options.durable,
            consumer::pull::Config {
                durable_name: Some(options.durable.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_deliver: options.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::other(format!("consumer {:?}: {e}", options.durable)))?;
    Ok(())
}

/// Settles a delivery of a [`NatsSource`]: where to acknowledge it.
pub struct NatsToken {
    reply: async_nats::Subject,
    seq: u64,
}

impl fmt::Debug for NatsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsToken").field("seq", &self.seq).finish()
    }
}

/// The engine [`Source`] of a [`NatsServer`]: pulls from a JetStream durable consumer on a
/// connection of its own, settles with ack, nak (with a delay) and term, and keeps slow
/// messages alive with in-progress signals. Made by [`Nats::server`]; the engine calls its
/// methods, a user never does.
pub struct NatsSource {
    /// The shared client connection, on which acknowledgements and in-progress signals go
    /// out, and where the pull connection connects. With `options`, what creates the
    /// stream and the consumer again when they are gone (deleted by hand, or lost with the
    /// server's storage).
    nats: Nats,
    options: ConsumerOptions,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`.
    next_subject: String,
    /// The pull connection (made on first fetch, and again after it failed) and what it
    /// brought beyond what the engine asked for.
    pull: tokio::sync::Mutex<Pulled>,
    /// Reply subjects of the deliveries fetched and not settled, for in-progress signals.
    in_flight: Arc<Mutex<HashMap<u64, async_nats::Subject>>>,
    progress: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Pulled {
    connection: Option<PullConnection>,
    /// Deliveries that came beyond what the engine asked for, handed out first.
    ahead: VecDeque<Delivery<NatsToken>>,
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("stream", &self.options.stream)
            .finish()
    }
}

/// How long one fetch waits for a first message.
const POLL: Duration = Duration::from_secs(1);
/// How long a pull request lasts on the server.
const EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says it is there while a request waits for messages.
const HEARTBEAT: Duration = Duration::from_secs(5);

impl NatsSource {
    /// A delivery for a stored message (one with a `$JS.ACK` reply subject).
    fn delivery(&self, msg: wire::Msg, reply: String, ack: wire::AckInfo) -> Delivery<NatsToken> {
        let (attributes, problem) = super::encoding::attributes(msg.headers.as_deref());
        let token = NatsToken {
            reply: reply.into(),
            seq: ack.stream_seq,
        };
        let delivery = match problem {
            None => Delivery::new(token, msg.payload).with_attributes(attributes),
            Some(why) => {
                log::warning!(
                    "msgio: message {} on {:?} has headers that cannot be read ({why}); it goes to the dead-letter topic, or is terminated when there is none",
                    ack.stream_seq,
                    self.options.stream
                );
                Delivery::malformed(
                    token,
                    format!("NATS headers: {why}"),
                    attributes,
                    msg.payload,
                )
            }
        };
        delivery
            .with_message_id(ack.stream_seq)
            .with_attempt(u32::try_from(ack.delivered).unwrap_or(u32::MAX))
    }

    /// Takes in one message from the pull inbox: a delivery goes to `out` while it holds
    /// fewer than `max`, otherwise ahead; a status message updates what is outstanding.
    fn take(
        &self,
        msg: wire::Msg,
        connection: &mut PullConnection,
        ahead: &mut VecDeque<Delivery<NatsToken>>,
        max: usize,
        out: &mut Vec<Delivery<NatsToken>>,
    ) -> Result<(), Error> {
        if let Some(reply) = msg.reply.clone() {
            if let Some(ack) = wire::ack_info(&reply) {
                connection.outstanding = connection.outstanding.saturating_sub(1);
                let delivery = self.delivery(msg, reply, ack);
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(delivery.token.seq, delivery.token.reply.clone());
                if out.len() < max {
                    out.push(delivery);
                } else {
                    ahead.push_back(delivery);
                }
                return Ok(());
            }
        }
        let status = msg
            .headers
            .as_deref()
            .map(wire::parse_headers)
            .unwrap_or_default();
        match status.status {
            // Idle heartbeat: the server is there.
            Some(100) => Ok(()),
            // A request ended (expired, or cut short): what it still owed will not come.
            Some(404 | 408 | 409) => {
                let pending = status
                    .get("Nats-Pending-Messages")
                    .and_then(|n| n.parse::<usize>().ok());
                connection.outstanding = match pending {
                    Some(n) => connection.outstanding.saturating_sub(n),
                    None => 0,
                };
                if status.status == Some(409) {
                    if status.description.contains("Consumer Deleted") {
                        // Reconnecting creates it again.
                        return Err(Error::connection_lost(format!(
                            "the consumer on {:?} was deleted",
                            self.options.stream
                        )));
                    }
                    log::warning!(
                        "msgio: NATS cut a pull request on {:?} short: {}",
                        self.options.stream,
                        status.description
                    );
                }
                Ok(())
            }
            // Nothing answers for the consumer: it (or its stream) is gone, or JetStream is
            // not there yet. Reconnecting creates them again when they are missing.
            Some(503) => Err(Error::connection_lost(format!(
                "pulling from {:?}: no consumer answers (NATS answered 503 {})",
                self.options.stream, status.description
            ))),
            Some(code) => Err(Error::other(format!(
                "pulling from {:?}: NATS answered {code} {}",
                self.options.stream, status.description
            ))),
            None => {
                log::warning!(
                    "msgio: ignoring a message on the pull inbox of {:?} that is neither a delivery nor a status",
                    self.options.stream
                );
                Ok(())
            }
        }
    }

    /// Appends up to `max` messages: those that came ahead first, then from the pull
    /// connection (asking for more when what is outstanding will not fill `max`), waiting
    /// at most [`POLL`] for the first.
    async fn pull(&self, max: usize, out: &mut Vec<Delivery<NatsToken>>) -> Result<(), Error> {
        let mut guard = self.pull.lock().await;
        let Pulled { connection, ahead } = &mut *guard;
        while out.len() < max {
            match ahead.pop_front() {
                Some(delivery) => out.push(delivery),
                None => break,
            }
        }
        if connection.is_none() {
            *connection =
                Some(PullConnection::open(&self.nats.endpoint, self.next_subject.clone()).await?);
        }
        let Some(conn) = connection.as_mut() else {
            return Ok(());
        };
        // Never more outstanding than the engine has room for: what comes is handed out.
        let room = max - out.len();
        let need = room.saturating_sub(conn.outstanding + ahead.len());
        if need > 0 && (conn.outstanding == 0 || need * 2 >= room) {
            if let Err(e) = conn.request(need, EXPIRES, HEARTBEAT).await {
                *connection = None;
                return Err(e);
            }
        }
        let deadline = tokio::time::Instant::now() + POLL;
        loop {
            let next = if out.is_empty() {
                conn.next(deadline).await
            } else {
                conn.try_next()
            };
            match next {
                None => break,
                Some(Incoming::Message(msg)) => {
                    if let Err(e) = self.take(msg, conn, ahead, max, out) {
                        *connection = None;
                        return Err(e);
                    }
                }
                Some(Incoming::Lost(why)) => {
                    *connection = None;
                    return Err(Error::connection_lost(format!(
                        "pulling from {:?}: {why}",
                        self.options.stream
                    )));
                }
            }
        }
        // A request the server stopped answering (no message, no heartbeat).
        if conn.outstanding > 0 && conn.silent_for() > HEARTBEAT * 3 {
            *connection = None;
            return Err(Error::connection_lost(format!(
                "pulling from {:?}: no heartbeat from NATS in {:?}",
                self.options.stream,
                HEARTBEAT * 3
            )));
        }
        Ok(())
    }

    /// Sends in-progress signals for what receivers still hold, every half ack wait.
    fn start_progress(&self) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if progress.is_some() {
            return;
        }
        let in_flight = self.in_flight.clone();
        let client = self.nats.client.clone();
        let every = self.options.ack_wait / 2;
        *progress = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let replies: Vec<_> = in_flight
                    .lock()
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                for reply in replies {
                    let _ = client.publish(reply, Bytes::from_static(b"+WPI")).await;
                }
            }
        }));
    }

    /// Settles one delivery.
    async fn ack(&self, token: &NatsToken, action: &Settle) -> Result<(), Error> {
        let payload = match action {
            Settle::Ack => Bytes::from_static(b"+ACK"),
            Settle::Nack { delay: None } | Settle::Release => Bytes::from_static(b"-NAK"),
            Settle::Nack { delay: Some(delay) } | Settle::Defer { delay } => {
                format!("-NAK {{\"delay\":{}}}", delay.as_nanos()).into()
            }
            Settle::Reject | Settle::DeadLetter { .. } => Bytes::from_static(b"+TERM"),
        };
        self.nats
            .client
            .publish(token.reply.clone(), payload)
            .await
            .map_err(|e| {
                Error::connection_lost(format!("acknowledging on {:?}: {e}", self.options.stream))
            })
    }
}

impl Source for NatsSource {
    type Token = NatsToken;

    fn name(&self) -> &str {
        &self.options.stream
    }

    /// A pull asks for what the server has room for; JetStream's own limit of pending
    /// acknowledgements (`max_ack_pending`, not set by msgio: 1,000 by default) is not the
    /// server's in-flight limit, and a batch of `ack_batch_size` (128) fills well below it.
    fn stops_at_in_flight_limit(&self) -> bool {
        false
    }

    fn not_before(&self) -> bool {
        true
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<NatsToken>>) -> Result<(), Error> {
        self.start_progress();
        self.pull(max, out).await
    }

    async fn settle(&self, batch: &mut Vec<Settlement<NatsToken>>) -> Result<(), Error> {
        let mut failed = None;
        let mut done = 0;
        for settlement in batch.iter() {
            if let Err(e) = self.ack(&settlement.token, &settlement.action).await {
                failed = Some(e);
                break;
            }
            done += 1;
        }
        // Settled, or (on a failure) given up by the engine for JetStream to redeliver
        // after the ack wait: either way no longer kept alive.
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for settlement in batch.iter() {
                in_flight.remove(&settlement.token.seq);
            }
        }
        batch.drain(..done);
        match failed {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    async fn reconnect(&self) -> Result<(), Error> {
        let mut pulled = self.pull.lock().await;
        pulled.connection = None;
        pulled.connection =
            Some(PullConnection::open(&self.nats.endpoint, self.next_subject.clone()).await?);
        if self.nats.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::connection_lost("NATS is not connected yet"));
        }
        // A consumer (or stream) deleted while this server ran is created again, as
        // `Nats::server` does; what the stream still holds is delivered to it.
        ensure_consumer(&self.nats, &self.options).await
    }

    async fn close(&self) -> Result<(), Error> {
        if let Some(progress) = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            progress.abort();
        }
        // What came ahead, or is on its way in, goes back at once rather than after the
        // ack wait.
        let mut pulled = self.pull.lock().await;
        let mut back: Vec<Delivery<NatsToken>> = pulled.ahead.drain(..).collect();
        if let Some(mut connection) = pulled.connection.take() {
            let mut scratch = VecDeque::new();
            while let Some(Incoming::Message(msg)) = connection.try_next() {
                let _ = self.take(msg, &mut connection, &mut scratch, 0, &mut back);
            }
            back.extend(scratch);
            connection.close().await;
        }
        for delivery in &back {
            if let Err(e) = self.ack(&delivery.token, &Settle::Release).await {
                log::warning!(
                    "msgio: could not give back a message on {:?}: {e}",
                    self.options.stream
                );
                break;
            }
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.nats.client.flush().await.map_err(Error::other)
    }
}

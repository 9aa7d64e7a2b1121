//! The server: a durable pull consumer as an engine source.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;

use super::Nats;
use crate::engine::{Delivery, Engine, Settle, Settlement, Source};
use crate::{Attributes, Error, ServerConfig, log};

/// The stream and the durable pull consumer a [`NatsServer`] reads, created when missing.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    stream: String,
    durable: String,
    subjects: Vec<String>,
    retention: stream::RetentionPolicy,
    ack_wait: Duration,
    max_deliver: i64,
    duplicate_window: Duration,
    dead_letter_subject: Option<String>,
}

impl ConsumerOptions {
    /// The consumer `durable` on the stream `stream`. Defaults: the stream captures the
    /// subject `<stream>.>`, work-queue retention (a message is removed once acked),
    /// ack wait 30 s, no JetStream delivery limit (msgio's `max_attempts` bounds attempts),
    /// a 2-minute duplicate window.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        let stream = stream.into();
        ConsumerOptions {
            subjects: vec![format!("{stream}.>")],
            stream,
            durable: durable.into(),
            retention: stream::RetentionPolicy::WorkQueue,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            duplicate_window: Duration::from_secs(120),
            dead_letter_subject: None,
        }
    }

    /// Dead-letters to this subject (through a [`NatsTopic`](super::NatsTopic) on the same
    /// connection; a stream must capture it) when the [`ServerConfig`] names no dead-letter
    /// topic of its own.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }

    /// The subjects a stream created here captures.
    pub fn subjects<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.subjects = subjects.into_iter().map(Into::into).collect();
        self
    }

    /// Limits retention (a message stays until its limits) instead of work-queue
    /// retention, for a stream that several durables read.
    pub fn limits_retention(mut self) -> Self {
        self.retention = stream::RetentionPolicy::Limits;
        self
    }

    /// How long a delivery may go unacknowledged before JetStream delivers it again
    /// (default 30 s); the server extends it every half of it while a receiver runs.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// JetStream's own delivery limit for a consumer created here (default none).
    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = n;
        self
    }

    /// The window in which a stream created here drops a message published again with the
    /// same `Nats-Msg-Id` (default 2 minutes).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && !s.contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace())
        };
        if !name_ok(&self.stream) {
            return Err(Error::invalid_config(
                "stream",
                format!(
                    "{:?} must be non-empty, without spaces, '.', '*' or '>'",
                    self.stream
                ),
            ));
        }
        if !name_ok(&self.durable) {
            return Err(Error::invalid_config(
                "durable",
                format!(
                    "{:?} must be non-empty, without spaces, '.', '*' or '>'",
                    self.durable
                ),
            ));
        }
        if self.dead_letter_subject.as_deref() == Some("") {
            return Err(Error::invalid_config(
                "dead_letter_subject",
                "must not be empty",
            ));
        }
        if self.subjects.is_empty() || self.subjects.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid_config(
                "subjects",
                "needs at least one non-empty subject",
            ));
        }
        if self.ack_wait < Duration::from_millis(100) {
            return Err(Error::invalid_config(
                "ack_wait",
                format!("{:?} is under 100 ms", self.ack_wait),
            ));
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return Err(Error::invalid_config(
                "max_deliver",
                format!("{} is neither -1 (no limit) nor positive", self.max_deliver),
            ));
        }
        Ok(())
    }
}

/// A server on a JetStream durable pull consumer, built on the delivery engine (see the
/// [module docs](super)). Cloning gives another handle to the same server.
#[derive(Clone, Debug)]
pub struct NatsServer {
    engine: Engine<ConsumerSource>,
}

impl NatsServer {
    pub(super) async fn new(
        nats: &Nats,
        options: ConsumerOptions,
        mut config: ServerConfig,
    ) -> Result<Self, Error> {
        options.validate()?;
        config.validate()?;
        if config.dead_letter.is_none() {
            if let Some(subject) = &options.dead_letter_subject {
                config = config.dead_letter(nats.topic(subject.clone()));
            }
        }
        let stream = ensure_stream(nats, &options).await?;
        let consumer: consumer::PullConsumer = stream
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
        let batch = config.get_concurrency() + config.prefetch_or_default();
        Ok(NatsServer {
            engine: Engine::new(
                ConsumerSource {
                    name: options.stream.clone(),
                    consumer,
                    batch,
                    ack_wait: options.ack_wait,
                    messages: tokio::sync::Mutex::new(None),
                    in_flight: Arc::new(Mutex::new(HashMap::new())),
                    progress: Mutex::new(None),
                    client: nats.client.clone(),
                },
                config,
            )?,
        })
    }
}

engine_server!(NatsServer);

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

/// A delivery's token: the message, to acknowledge it through its reply subject.
pub(super) struct Token {
    message: jetstream::Message,
    seq: u64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("seq", &self.seq).finish()
    }
}

pub(super) struct ConsumerSource {
    name: String,
    consumer: consumer::PullConsumer,
    /// Messages asked for at once (concurrency plus prefetch).
    batch: usize,
    ack_wait: Duration,
    /// The pull stream, made on first fetch and again after an error.
    messages: tokio::sync::Mutex<Option<consumer::pull::Stream>>,
    /// Reply subjects of the deliveries handed out and not settled, for in-progress signals.
    in_flight: Arc<Mutex<HashMap<u64, async_nats::Subject>>>,
    progress: Mutex<Option<tokio::task::JoinHandle<()>>>,
    client: async_nats::Client,
}

impl fmt::Debug for ConsumerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerSource")
            .field("stream", &self.name)
            .field("batch", &self.batch)
            .finish()
    }
}

/// How long one fetch waits for a first message.
const POLL: Duration = Duration::from_secs(1);

impl ConsumerSource {
    fn delivery(&self, message: jetstream::Message) -> Delivery<Token> {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(_) => (0, 1),
        };
        let mut attributes = Attributes::new();
        if let Some(headers) = &message.headers {
            for (name, values) in headers.iter() {
                let name: &str = name.as_ref();
                // The id the topic added for the duplicate window is not the message's.
                if name.eq_ignore_ascii_case(super::topic::MSG_ID) {
                    continue;
                }
                for value in values {
                    attributes.add(name, value.as_str());
                }
            }
        }
        let problem = message
            .status
            .is_some()
            .then(|| "a status message, not a stored one".to_owned());
        let body = Bytes::clone(&message.payload);
        let token = Token { message, seq };
        let delivery = match problem {
            None => Delivery::new(token, body).with_attributes(attributes),
            Some(why) => Delivery::malformed(token, why, attributes, body),
        };
        delivery
            .with_message_id(seq)
            .with_attempt(u32::try_from(delivered).unwrap_or(u32::MAX))
    }

    /// Appends up to `max` messages from the pull stream (made on first use, and again
    /// after it failed), waiting at most [`POLL`] for the first.
    async fn pull(&self, max: usize, out: &mut Vec<Delivery<Token>>) -> Result<(), Error> {
        let mut guard = self.messages.lock().await;
        if guard.is_none() {
            let stream = self
                .consumer
                .stream()
                .max_messages_per_batch(self.batch)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| {
                    Error::connection_lost(format!("pulling from {:?}: {e}", self.name))
                })?;
            *guard = Some(stream);
        }
        let messages = guard.as_mut().expect("just made");
        // Wait (bounded) for a first message, then take what is ready, up to `max`.
        let Ok(mut next) = tokio::time::timeout(POLL, messages.next()).await else {
            return Ok(());
        };
        loop {
            match next {
                Some(Ok(message)) => out.push(self.delivery(message)),
                Some(Err(e)) => {
                    *guard = None;
                    return Err(Error::connection_lost(format!(
                        "pulling from {:?}: {e}",
                        self.name
                    )));
                }
                None => {
                    *guard = None;
                    return Ok(());
                }
            }
            if out.len() >= max {
                return Ok(());
            }
            match futures::FutureExt::now_or_never(messages.next()) {
                Some(n) => next = n,
                None => return Ok(()),
            }
        }
    }

    /// Sends in-progress signals for what receivers still hold, every half ack wait.
    fn start_progress(&self) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if progress.is_some() {
            return;
        }
        let in_flight = self.in_flight.clone();
        let client = self.client.clone();
        let every = self.ack_wait / 2;
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
}

impl Source for ConsumerSource {
    type Token = Token;

    fn name(&self) -> &str {
        &self.name
    }

    fn not_before(&self) -> bool {
        true
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<Token>>) -> Result<(), Error> {
        self.start_progress();
        let before = out.len();
        let result = self.pull(max, out).await;
        if out.len() > before {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for delivery in &out[before..] {
                if let Some(reply) = &delivery.token.message.reply {
                    in_flight.insert(delivery.token.seq, reply.clone());
                }
            }
        }
        result
    }

    async fn settle(&self, batch: &mut Vec<Settlement<Token>>) -> Result<(), Error> {
        let mut failed = None;
        let mut done = 0;
        for settlement in batch.iter() {
            let kind = match &settlement.action {
                Settle::Ack => AckKind::Ack,
                Settle::Nack { delay } => AckKind::Nak(*delay),
                Settle::Reject => AckKind::Term,
                Settle::Release => AckKind::Nak(None),
                Settle::Defer { delay } => AckKind::Nak(Some(*delay)),
            };
            if let Err(e) = settlement.token.message.ack_with(kind).await {
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
            Some(e) => Err(Error::connection_lost(format!(
                "acknowledging on {:?}: {e}",
                self.name
            ))),
        }
    }

    async fn reconnect(&self) -> Result<(), Error> {
        *self.messages.lock().await = None;
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::connection_lost("NATS is not connected yet"));
        }
        Ok(())
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
        // What the pull stream fetched ahead goes back at once rather than after ack wait.
        if let Some(mut messages) = self.messages.lock().await.take() {
            while let Some(Some(Ok(message))) = futures::FutureExt::now_or_never(messages.next()) {
                if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                    log::warning!(
                        "msgio: could not give back a message on {:?}: {e}",
                        self.name
                    );
                    break;
                }
            }
        }
        self.client.flush().await.map_err(Error::other)
    }
}

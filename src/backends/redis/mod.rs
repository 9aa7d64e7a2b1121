//! The Redis Streams transport (feature `redis`): a topic that `XADD`s and a server on a
//! consumer group, built on the delivery engine.
//!
//! ```no_run
//! use msgio::redis::{Redis, StreamOptions};
//! use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};
//!
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let redis = Redis::connect("redis://127.0.0.1:6379").await?;
//! let topic = redis.topic("orders").max_len(1_000_000);
//! topic.publish(&Context::background(), Message::new("order 1")).await?;
//!
//! let server = redis
//!     .server(
//!         StreamOptions::new("orders", "billing").dead_letter_stream("orders:dead"),
//!         ServerConfig::new().concurrency(32).max_attempts(5),
//!     )
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
//! `redis://[user:password@]host[:port]/<stream>[?<parameters>]`; a topic and a server
//! accept the same URL, each using its own parameters:
//!
//! | parameter | side | meaning (default) |
//! |---|---|---|
//! | `db` | both | the database number (0) |
//! | `max_len` | topic | [`RedisTopic::max_len`] (no trimming) |
//! | `group` | server | the consumer group (`msgio`) |
//! | `consumer` | server | [`StreamOptions::consumer`] (unique per server) |
//! | `start_id` | server | [`StreamOptions::start_id`] (`0`) |
//! | `block`, `min_idle`, `claim_interval` | server | durations, as [`StreamOptions`] (1s, 30s, 1s) |
//! | `dead_letter` | server | [`StreamOptions::dead_letter_stream`] (none) |
//!
//! ```no_run
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let topic = msgio::open_topic("redis://127.0.0.1:6379/orders?max_len=1000000").await?;
//! let server = msgio::open_server(
//!     "redis://127.0.0.1:6379/orders?group=billing&dead_letter=orders:dead",
//!     msgio::ServerConfig::new().concurrency(32),
//! )
//! .await?;
//! # let _ = (topic, server);
//! # Ok(()) }
//! ```
//!
//! # Connection settings
//!
//! [`Redis::connect`] takes a `redis://[user:password@]host:port[/db]` URL (`rediss://`
//! needs TLS support in the `redis` crate, which msgio does not turn on). Tests read
//! `REDIS_URL` and default to `redis://127.0.0.1:6379`. The password never appears in
//! `Debug` output, errors or logs. Commands go over one multiplexed connection that
//! reconnects by itself, so concurrent writers pipeline without waiting on each other;
//! each server adds one connection of its own for the blocking `XREADGROUP`, with a
//! response timeout of the [block time](StreamOptions::block) plus 5 s.
//!
//! The Redis user needs the stream commands (`XADD`, `XREADGROUP`, `XACK`, `XCLAIM`,
//! `XAUTOCLAIM`, `XPENDING`, `XGROUP`), the sorted-set commands and `EVALSHA`/`EVAL` for
//! the scripts. `CLIENT ID` and `CLIENT UNBLOCK` are used when allowed, to wake a blocked
//! read for a failed attempt's retry; without them that retry waits out the block time.
//!
//! # Layout in Redis
//!
//! - The stream `<stream>`: one entry per message, with a field `body` (the bytes as they
//!   are) and a field `attr:<Key>` per attribute value, in order (a key with two values
//!   gives two fields of that name; Redis keeps both and their order).
//! - The sorted set `<stream>:delayed`: messages published with
//!   [`set_delay`](crate::MessageWriter::set_delay), scored by when they are due on
//!   Redis's clock, each a MessagePack array (a nonce, the topic's `MAXLEN`, the entry's
//!   fields). Any running server on the stream moves due ones into the stream with a
//!   script, so each is moved once however many servers run.
//! - The consumer group: created with `MKSTREAM` when missing, from
//!   [`StreamOptions::start_id`] (`0` by default: a new group reads what the stream
//!   already holds).
//!
//! # Delivery
//!
//! A server reads new entries with `XREADGROUP` (`COUNT` from the free concurrency plus
//! prefetch, `BLOCK`), acknowledges in batches with one `XACK`, and every
//! [`StreamOptions::claim_interval`] takes over with `XAUTOCLAIM` entries idle for longer
//! than [`StreamOptions::min_idle`]: what a crashed consumer held goes to the others. The
//! attempt number is the entry's delivery count. A failed attempt is claimed back at once
//! (`XCLAIM`) for its next attempt; a retry delay is waited out by the engine while the
//! entry stays pending, so keep retry delays under `min_idle`, or another consumer takes
//! the entry over sooner. After the maximum attempts, or on a reject, the message goes to
//! [`ServerConfig::dead_letter`](crate::ServerConfig::dead_letter) (set it with
//! [`StreamOptions::dead_letter_stream`] to dead-letter to another stream) with the reason,
//! and is acknowledged. An entry that does not decode (no `body` field, an attribute that
//! is not UTF-8, an unknown field) is dead-lettered the same way with the reason, never
//! handed to the receiver, so it cannot loop. On shutdown the consumer leaves the group
//! when it holds nothing pending.

mod encoding;
mod read;
mod scripts;
mod source;
mod topic;
mod url;

pub(crate) use url::RedisOpener;

use std::fmt;
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use source::{RedisServer, RedisSource, RedisToken};
pub use topic::{RedisPublisher, RedisSender, RedisTopic, RedisWriter};

use crate::redact::Credentials;
use crate::{Error, ServerConfig};

/// A connection to Redis: makes [`RedisTopic`]s and [`RedisServer`]s. Cloning shares the
/// connection.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    url: String,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).finish()
    }
}

impl Redis {
    /// Connects to the Redis at `url` (see the [module docs](self) for its form).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a malformed URL; [`Error::ConnectionLost`] when Redis
    /// does not answer. Neither shows the password.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (client, shown) = client(url)?;
        let conn = manager(&client, &shown, None).await?;
        Ok(Redis {
            client,
            conn,
            url: shown,
        })
    }

    /// The URL connected to, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A topic adding to `stream`.
    pub fn topic(&self, stream: impl Into<String>) -> RedisTopic {
        RedisTopic::open(self.conn.clone(), stream.into())
    }

    /// A server reading `options.stream` in `options.group`, creating the group (and the
    /// stream) when missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range; [`Error::ConnectionLost`]
    /// when Redis does not answer; [`Error::Other`] when Redis refuses to create the group
    /// (the key holds something else than a stream, say).
    pub async fn server(
        &self,
        options: StreamOptions,
        config: ServerConfig,
    ) -> Result<RedisServer, Error> {
        source::server(self, options, config).await
    }
}

/// A client for `url`, and `url` with its password hidden. The credentials are handed to
/// the client as settings, never inside a URL it may quote.
pub(crate) fn client(url: &str) -> Result<(redis::Client, String), Error> {
    let credentials = Credentials::split("redis url", url)?;
    let shown = credentials.shown.clone();
    let refused = |e: redis::RedisError| {
        Error::invalid_config(
            "redis url",
            format!("{shown}: {}", credentials.scrub(&e.to_string())),
        )
    };
    let mut info = credentials
        .bare
        .as_str()
        .into_connection_info()
        .map_err(refused)?;
    if credentials.user.is_some() || credentials.password.is_some() {
        let mut settings = info.redis_settings().clone();
        if let Some(user) = credentials.user.as_deref().filter(|u| !u.is_empty()) {
            settings = settings.set_username(user);
        }
        if let Some(password) = &credentials.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).map_err(refused)?;
    Ok((client, shown))
}

/// A connection that reconnects by itself, its commands timing out after `timeout`.
pub(crate) async fn manager(
    client: &redis::Client,
    shown: &str,
    timeout: Option<std::time::Duration>,
) -> Result<ConnectionManager, Error> {
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(std::time::Duration::from_secs(1));
    if timeout.is_some() {
        config = config.set_response_timeout(timeout);
    }
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| Error::connection_lost(format!("cannot connect to Redis at {shown}: {e}")))
}

/// A Redis error as a msgio error: a lost connection is [`Error::ConnectionLost`], so that
/// the engine reconnects.
pub(crate) fn error(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        Error::connection_lost(e)
    } else {
        Error::other(e)
    }
}

/// For the fuzz target: decodes a stream entry's fields as the server does.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_decode(fields: Vec<redis::Value>) -> bool {
    matches!(encoding::decode(fields), encoding::Decoded::Ok { .. })
}

/// Where and how a [`RedisServer`] reads: the stream, the group, the consumer's name and
/// the timings of reading and reclaiming.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    stream: String,
    group: String,
    consumer: Option<String>,
    start_id: String,
    block: Duration,
    min_idle: Duration,
    claim_interval: Duration,
    dead_letter_stream: Option<String>,
}

impl StreamOptions {
    /// Reads `stream` as a consumer of `group`, with the defaults: a unique consumer name,
    /// start id `0`, block 1 s, min idle 30 s, claim interval 1 s, no dead-letter stream.
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        StreamOptions {
            stream: stream.into(),
            group: group.into(),
            consumer: None,
            start_id: "0".to_owned(),
            block: Duration::from_secs(1),
            min_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(1),
            dead_letter_stream: None,
        }
    }

    /// The consumer's name in the group (default: `msgio-<pid>-<random>`, unique per
    /// server). A fixed name lets a restarted process find its own pending entries at once
    /// rather than after [`min_idle`](StreamOptions::min_idle); two running servers must
    /// never share one.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Where a group created by the server starts: `0` (the default) reads what the stream
    /// already holds, `$` only what is added from now on, or an entry id.
    pub fn start_id(mut self, id: impl Into<String>) -> Self {
        self.start_id = id.into();
        self
    }

    /// How long one `XREADGROUP` waits for new entries (default 1 s). Also bounds how late a
    /// delayed message that became due meanwhile is moved into the stream.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// How long an entry must have been pending without being acknowledged before another
    /// consumer takes it over (default 30 s): how soon a dead consumer's entries come back.
    /// A living server refreshes the idle time of every entry it holds (running, queued,
    /// or waiting out a retry delay) every third of `min_idle`, so a receiver slower than
    /// `min_idle` is never run twice at once by two servers.
    pub fn min_idle(mut self, min_idle: Duration) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// How often the server looks for idle entries to take over (default 1 s).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval;
        self
    }

    /// Dead-letters to this stream (through a [`RedisTopic`] on the same
    /// connection) when the [`ServerConfig`] names no dead-letter topic of its own.
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter_stream = Some(stream.into());
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let nonempty = |field, value: &str| {
            if value.is_empty() {
                Err(Error::invalid_config(field, "must not be empty"))
            } else {
                Ok(())
            }
        };
        nonempty("stream", &self.stream)?;
        nonempty("group", &self.group)?;
        nonempty("start_id", &self.start_id)?;
        if let Some(consumer) = &self.consumer {
            nonempty("consumer", consumer)?;
        }
        if let Some(dead) = &self.dead_letter_stream {
            nonempty("dead_letter_stream", dead)?;
            if *dead == self.stream {
                return Err(Error::invalid_config(
                    "dead_letter_stream",
                    format!("{dead:?} is the stream being read"),
                ));
            }
        }
        let ms = super::check_millis;
        ms("block", self.block, 1)?;
        ms("min_idle", self.min_idle, 1)?;
        ms("claim_interval", self.claim_interval, 1)?;
        Ok(())
    }
}

//! The PostgreSQL transport (feature `postgres`): a queue in a table, served with
//! `FOR UPDATE SKIP LOCKED` and leases, woken by `LISTEN`/`NOTIFY`; publishing inside your
//! own transaction (the transactional outbox) and a [`Forwarder`] that relays such a queue
//! to any other [`Topic`](crate::Topic).
//!
//! ```no_run
//! use msgio::postgres::{Postgres, QueueOptions};
//! use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};
//!
//! # #[allow(dead_code)]
//! # async fn demo() -> Result<(), msgio::Error> {
//! let postgres = Postgres::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! postgres.migrate().await?; // idempotent: creates or upgrades the schema `msgio`
//!
//! let topic = postgres.topic("orders");
//! topic.publish(&Context::background(), Message::new("order 1")).await?;
//!
//! let server = postgres
//!     .server(
//!         QueueOptions::new("orders").dead_letter_queue("orders.dead"),
//!         ServerConfig::new().concurrency(32).max_attempts(5),
//!     )
//!     .await?;
//! server
//!     .serve(ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # The transactional outbox
//!
//! [`PostgresTopic::publish_in`] inserts the message with your own open transaction: the
//! message exists if and only if that transaction commits, with the rows it wrote. A
//! [`Forwarder`] then relays the queue to a broker at least once, keeping the order of
//! messages that share an [`ORDERING_KEY`]:
//!
//! ```no_run
//! use msgio::postgres::{Postgres, QueueOptions};
//! use msgio::Message;
//!
//! # #[allow(dead_code)]
//! # async fn demo<T>(redis_topic: T) -> Result<(), Box<dyn std::error::Error>>
//! # where T: msgio::Topic + Send + Sync + 'static, T::Writer: 'static {
//! let postgres = Postgres::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! let outbox = postgres.topic("outbox");
//!
//! let (mut client, connection) =
//!     tokio_postgres::connect("host=127.0.0.1 user=postgres dbname=test", tokio_postgres::NoTls)
//!         .await?;
//! tokio::spawn(connection);
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO orders (id) VALUES (7)", &[]).await?;
//! let mut event = Message::new("order 7 placed");
//! event.attributes.set("Ordering-Key", "order-7");
//! outbox.publish_in(&tx, event).await?;
//! tx.commit().await?; // the order and its event, or neither
//!
//! let forwarder = postgres.forwarder(QueueOptions::new("outbox"), redis_topic).await?;
//! forwarder.run().await?; // until forwarder.shutdown(..)
//! # Ok(()) }
//! ```
//!
//! # URL
//!
//! [`open_topic`](crate::open_topic) and [`open_server`](crate::open_server) take
//! `postgres://[user[:password]@]host[:port]/<database>?queue=<queue>[&<parameters>]`
//! (`postgresql://` too); a URL-opened topic or server [migrates](Postgres::migrate) the
//! schema first, so that the URL is all it takes:
//!
//! | parameter | side | meaning (default) |
//! |---|---|---|
//! | `queue` | both | the queue (required) |
//! | `schema` | both | [`PostgresOptions::schema`] (`msgio`) |
//! | `pool_size` | both | [`PostgresOptions::pool_size`] (8) |
//! | `notify` | topic | [`PostgresTopic::notify`] (`true`) |
//! | `listen` | server | [`QueueOptions::listen`] (`true`) |
//! | `lease`, `poll_interval` | server | durations, as [`QueueOptions`] (30s, 1s) |
//! | `dead_letter` | server | [`QueueOptions::dead_letter_queue`] (none) |
//! | `archive` | server | [`QueueOptions::archive`] (`false`) |
//! | `key_order` | server | [`QueueOptions::key_order`] (`false`) |
//!
//! # Connection settings
//!
//! [`Postgres::connect`] takes what `tokio_postgres::Config` parses: a URL
//! (`postgres://user:password@host:port/database?connect_timeout=5`) or key-value pairs
//! (`host=127.0.0.1 user=postgres dbname=test`). TLS is not turned on (`NoTls`): use it
//! on loopback or a private network. Tests read `POSTGRES_URL` and default to
//! `postgres://postgres@127.0.0.1:5432/test`. The password never appears in `Debug`
//! output, errors or logs. Commands go through a pool of [`PostgresOptions::pool_size`]
//! connections (deadpool-postgres) that replaces broken ones by itself; each server adds
//! one connection of its own for `LISTEN`.
//!
//! # Schema
//!
//! [`Postgres::migrate`] creates, in the schema [`PostgresOptions::schema`] (`msgio`), no
//! extension needed:
//!
//! - `messages`: one row per message of every queue: `queue`, `attributes` (a `text[]` of
//!   keys and values in turn, so that a key with several values keeps them and their
//!   order), `body` (`bytea`, as it was published), `ordering_key`, `created_at`, `run_at`
//!   (when it may be delivered: its delay, its retry's delay, or for a leased row the end
//!   of the lease), `attempts`, `lease_owner` and `last_error`.
//! - `archive`: acked rows, when [`QueueOptions::archive`] is on, with their outcome.
//! - `schema_version`: which migrations ran. Migrations run in one transaction under an
//!   advisory lock, so that several processes may call `migrate` at once; a schema newer
//!   than this msgio is refused rather than touched.
//!
//! Why this shape: a queue's hot path is insert, claim (an update), delete. `run_at`
//! doubles as the lease's end, so that one condition, `run_at <= now()`, finds both what
//! is due and what a dead consumer leased (its lease ran out). The only index a claim uses
//! is `(queue, id)`, and no indexed column changes when a row is claimed, retried or its
//! lease extended: with `fillfactor = 70` leaving room on each page, those updates are HOT
//! (the new version stays on its page, no index entry is added, and the page is pruned
//! without waiting for vacuum). Autovacuum is set to run after 1% of the rows changed, not
//! 20%, since the table's live rows are few and its dead ones many. A partial index on
//! `(queue, ordering_key, id)` serves [`QueueOptions::key_order`].
//!
//! Each delete leaves a dead index entry at the front of the queue, which vacuum removes
//! only once no transaction may still see the row: a transaction held open elsewhere for a
//! minute keeps a minute of them. Scanning from the front at every claim is what makes
//! such queues collapse then, so a server's claims start after the highest id it claimed
//! (new rows come after it), and a sweep from the front — for retries and delayed messages
//! that came due, expired leases, rows whose transaction committed after a higher id was
//! claimed — runs every [`QueueOptions::poll_interval`], or every ten times its own
//! duration when that is longer, so that sweeping costs at most a tenth of the time.
//! Rows committed behind the cursor are the common case under concurrent publishers (ids
//! are drawn at insert, rows appear at commit): a topic's notification names the lowest
//! id it inserted, and a server that already claimed past it goes back for it at its next
//! claim instead of at the sweep (and on from there, claim after claim, while claims come
//! back full).
//! `MSGIO_BENCH_ONLY=long_tx cargo bench --bench postgres` measures it.
//!
//! # Publishing
//!
//! A writer's close (or `publish`) returns once the insert committed. Writers that publish
//! at the same time share one insert: the first starts an insert task, those arriving
//! while it runs join the next one (up to four inserts at once, each on a pooled
//! connection), so that one round trip, one commit and one notification serve them all
//! — each commit waits for its WAL flush, which is what bounds one-insert-per-message
//! publishing. A message that cannot be stored (a NUL character in an attribute) is
//! refused on its own before it joins an insert; a failed insert fails every writer in
//! it. [`Topic::publish_batch`](crate::Topic::publish_batch) is one insert of its own.
//!
//! # Delivery
//!
//! A server claims up to the free concurrency plus prefetch of the due rows, in insert order,
//! with `FOR UPDATE SKIP LOCKED` (servers never wait on each other's rows) and leases them
//! for [`QueueOptions::lease`]: the row's `attempts` goes up and its `run_at` moves to the
//! lease's end. While a receiver runs, the lease is extended every third of its length;
//! the rows of a consumer that died come back when their lease ends. An ack deletes the
//! row (or moves it to `archive`), a retry sets `run_at` to after its delay; a message
//! given up (rejected, or out of attempts) goes to the server's dead-letter topic when
//! [`ServerConfig::dead_letter`](crate::ServerConfig::dead_letter) names one, otherwise is
//! moved to [`QueueOptions::dead_letter_queue`] in one transaction with the same
//! dead-letter attributes ([`keys`](crate::keys)) and the reason in `last_error`, otherwise
//! deleted with a warning. A row whose attributes msgio cannot read is dead-lettered the
//! same way, never handed to a receiver.
//!
//! # Waking up
//!
//! A topic sends `NOTIFY` on the channel `<schema>.msgio` with the queue's name, a space
//! and the lowest id it inserted as the payload (a payload of the queue's name alone, as a
//! hand-written `NOTIFY` may send, wakes servers too) in the same statement as its
//! insert, and a server `LISTEN`s on a connection of its own, so an idle server hears of
//! a message when its transaction commits; it also polls every
//! [`QueueOptions::poll_interval`] (for delayed messages, retries, expired leases, and a
//! lost `LISTEN` connection). The trade-off: a transaction that ran `NOTIFY` takes a lock
//! global to the database while it commits, so many small concurrent publishing
//! transactions queue behind each other there. With a high publish rate, turn it off on
//! the topic ([`PostgresTopic::notify`]`(false)`) and rely on a short poll interval,
//! or publish in batches ([`Topic::publish_batch`](crate::Topic::publish_batch): one
//! insert, one notification).

mod encoding;
mod forwarder;
mod schema;
mod source;
mod topic;
mod url;

pub(crate) use url::PostgresOpener;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use forwarder::Forwarder;
pub use source::{PostgresServer, PostgresSource, PostgresToken};
pub use topic::{PostgresPublisher, PostgresSender, PostgresTopic, PostgresWriter};

use crate::redact::Credentials;
use crate::{Error, ServerConfig, Topic};

/// The attribute whose value a topic stores as the row's ordering key: messages sharing
/// one are delivered one at a time, in order, by a server with [`QueueOptions::key_order`]
/// (a [`Forwarder`]'s server has it).
pub const ORDERING_KEY: &str = "Ordering-Key";

/// A pool of connections to one PostgreSQL database and one msgio schema in it: makes
/// [`PostgresTopic`]s, [`PostgresServer`]s and [`Forwarder`]s. Cloning shares the pool.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    config: tokio_postgres::Config,
    schema: Arc<str>,
    /// The schema as an SQL identifier, quoted.
    quoted: Arc<str>,
    shown: String,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.inner.shown)
            .field("schema", &self.inner.schema)
            .finish()
    }
}

/// How [`Postgres::connect_with`] connects: the schema and the pool's size.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    schema: String,
    pool_size: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "msgio".to_owned(),
            pool_size: 8,
        }
    }
}

impl PostgresOptions {
    /// The defaults: schema `msgio`, 8 pooled connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding msgio's tables (default `msgio`): lower-case letters, digits and
    /// `_`, not starting with a digit, at most 63 characters.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How many connections the pool keeps at most (default 8): what bounds how many
    /// publishes and settlements run at once.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let s = &self.schema;
        let valid = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(Error::invalid_config(
                "schema",
                format!(
                    "{s:?} is not a schema name msgio uses: lower-case letters, digits and _, not starting with a digit, at most 63"
                ),
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::invalid_config("pool_size", "must be at least 1"));
        }
        Ok(())
    }
}

impl Postgres {
    /// Connects to the database at `url` (see [Connection settings](self#connection-settings))
    /// with the default [`PostgresOptions`], and checks that it answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a malformed URL; [`Error::ConnectionLost`] when the
    /// database does not answer. Neither shows the password.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`connect`](Postgres::connect) with `options`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Postgres::connect), and [`Error::InvalidConfig`] naming an option
    /// out of range.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, Error> {
        options.validate()?;
        let (config, shown) = parse(url)?;
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::invalid_config("postgres url", e.to_string()))?;
        let postgres = Postgres {
            inner: Arc::new(Inner {
                pool,
                config,
                quoted: format!("\"{}\"", options.schema).into(),
                schema: options.schema.into(),
                shown,
            }),
        };
        // Fails now, not at the first publish, when the database does not answer.
        drop(postgres.inner.pool.get().await.map_err(|e| {
            Error::connection_lost(format!(
                "cannot connect to PostgreSQL at {}: {}",
                postgres.inner.shown,
                pool_error(e)
            ))
        })?);
        Ok(postgres)
    }

    /// The URL connected to, password hidden.
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// The schema holding msgio's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Creates the schema and its tables, or upgrades them to this msgio's version; does
    /// nothing when they are up to date. Safe to call from several processes at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the schema was made by a newer msgio;
    /// [`Error::ConnectionLost`] when the database does not answer; [`Error::Other`] when
    /// it refuses (the user may not create a schema, say).
    pub async fn migrate(&self) -> Result<(), Error> {
        schema::migrate(self).await
    }

    /// A topic adding to `queue`.
    pub fn topic(&self, queue: impl Into<String>) -> PostgresTopic {
        topic::open(self.clone(), queue.into())
    }

    /// A server on `options`'s queue.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming a setting out of range, or when the schema is not
    /// migrated ([`migrate`](Postgres::migrate)); [`Error::ConnectionLost`] when the
    /// database does not answer.
    pub async fn server(
        &self,
        options: QueueOptions,
        config: ServerConfig,
    ) -> Result<PostgresServer, Error> {
        source::server(self, options, config).await
    }

    /// A forwarder relaying `options`'s queue to `topic` (see [`Forwarder`]).
    ///
    /// # Errors
    ///
    /// As [`server`](Postgres::server).
    pub async fn forwarder<T>(&self, options: QueueOptions, topic: T) -> Result<Forwarder<T>, Error>
    where
        T: Topic + Send + Sync + 'static,
        T::Writer: 'static,
    {
        Forwarder::new(self, options, topic).await
    }

    /// The pool's connection settings (password included: do not log them whole).
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.inner.config
    }

    /// The channel topics notify and servers listen on.
    fn channel(&self) -> String {
        format!("{}.msgio", self.inner.schema)
    }
}

/// The settings of `url`, and `url` with its password hidden.
fn parse(url: &str) -> Result<(tokio_postgres::Config, String), Error> {
    let (shown, credentials) = if url.contains("://") {
        let credentials = Credentials::split("postgres url", url)?;
        (credentials.shown.clone(), Some(credentials))
    } else {
        // Key-value form: show the keys, never a password's value.
        let shown = url
            .split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.trim() == "password" => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        (shown, None)
    };
    let config = url.parse::<tokio_postgres::Config>().map_err(|e| {
        let reason = e.to_string();
        let reason = match &credentials {
            Some(c) => c.scrub(&reason).into_owned(),
            None => reason,
        };
        Error::invalid_config("postgres url", format!("{shown}: {reason}"))
    })?;
    Ok((config, shown))
}

/// A PostgreSQL error as a msgio error: a lost connection is
/// [`Error::ConnectionLost`], so that the engine reconnects; tables that are missing say
/// to migrate.
pub(crate) fn error(e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        use tokio_postgres::error::SqlState;
        let code = db.code();
        if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::INVALID_SCHEMA_NAME {
            return Error::invalid_config(
                "postgres schema",
                format!("{}: call Postgres::migrate() first", db.message()),
            );
        }
        if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            return Error::connection_lost(e);
        }
        return Error::other(e);
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return Error::connection_lost(e);
    }
    Error::other(e)
}

impl Postgres {
    /// A pooled connection and `sql` prepared on it (from the connection's cache after the
    /// first time): what every statement the transport runs more than once starts with.
    pub(crate) async fn prepared(
        &self,
        sql: &str,
    ) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), Error> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(sql).await.map_err(error)?;
        Ok((client, statement))
    }
}

/// A pool error as a msgio error: no connection to be had is [`Error::ConnectionLost`].
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match error(e) {
            Error::Other(e) => Error::connection_lost(e),
            other => other,
        },
        other => Error::connection_lost(other.to_string()),
    }
}

/// Where and how a [`PostgresServer`] reads: the queue, the lease, how it wakes up, where
/// given-up messages go.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    queue: String,
    lease: Duration,
    poll_interval: Duration,
    listen: bool,
    dead_letter_queue: Option<String>,
    archive: bool,
    key_order: bool,
}

impl QueueOptions {
    /// Reads `queue`, with the defaults: lease 30 s, poll every second, `LISTEN` on, no
    /// dead-letter queue, acked rows deleted, no per-key order.
    pub fn new(queue: impl Into<String>) -> Self {
        QueueOptions {
            queue: queue.into(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            listen: true,
            dead_letter_queue: None,
            archive: false,
            key_order: false,
        }
    }

    /// How long a claimed message is the server's before another may take it (default
    /// 30 s): how soon a dead consumer's messages come back. A living server extends the
    /// lease of every message it holds every third of it, so a receiver slower than the
    /// lease is never run twice at once.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often an idle server looks for due messages without being notified, and how
    /// often it sweeps the queue from the front (default 1 s): what bounds how late a
    /// delayed message, a retry that came due or an expired lease is seen (a sweep that
    /// takes long — under a long transaction elsewhere — runs less often: see
    /// [Schema](self#schema)).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Whether the server `LISTEN`s for the topics' notifications (default on); off, it
    /// only polls.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Moves a message given up to this queue, in the same transaction that takes it off
    /// its own, when the [`ServerConfig`] names no dead-letter topic.
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }

    /// Moves acked and rejected rows to the `archive` table rather than deleting them
    /// (default off).
    pub fn archive(mut self, archive: bool) -> Self {
        self.archive = archive;
        self
    }

    /// Delivers messages that share an [`ORDERING_KEY`] one at a time and in order, even
    /// at a concurrency above 1 (default off): a message is claimed only once every
    /// earlier message of its key left the queue (acked or given up). A failed one holds
    /// back the rest of its key until it succeeds or is given up.
    pub fn key_order(mut self, on: bool) -> Self {
        self.key_order = on;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.queue.is_empty() {
            return Err(Error::invalid_config("queue", "must not be empty"));
        }
        if let Some(dead) = &self.dead_letter_queue {
            if dead.is_empty() {
                return Err(Error::invalid_config(
                    "dead_letter_queue",
                    "must not be empty",
                ));
            }
            if *dead == self.queue {
                return Err(Error::invalid_config(
                    "dead_letter_queue",
                    format!("{dead:?} is the queue being read"),
                ));
            }
        }
        let ms = super::check_millis;
        ms("lease", self.lease, 100)?;
        ms("poll_interval", self.poll_interval, 1)?;
        Ok(())
    }
}

/// Milliseconds of `d`, as PostgreSQL's `bigint` takes them.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! The topic: an insert (with its notification), from the pool or inside the user's own
//! transaction.

use std::fmt;
use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{ORDERING_KEY, Postgres, encoding, error, millis, pool_error};
use crate::transport::{BufferedWriter, Outgoing, Sender, SenderPublisher, SenderTopic};
use crate::{Context, Error, Message};

/// A topic adding messages to a PostgreSQL queue (see the [module docs](super)): a
/// [`SenderTopic`] over a [`PostgresSender`]. Cloning shares the pool.
pub type PostgresTopic = SenderTopic<PostgresSender>;

/// The writer of a [`PostgresTopic`]: closing it returns once the insert committed.
pub type PostgresWriter = BufferedWriter<PostgresPublisher>;

/// Sends the messages of a [`PostgresWriter`].
pub type PostgresPublisher = SenderPublisher<PostgresSender>;

/// Inserts whole messages into a queue: the [`Sender`] of a [`PostgresTopic`].
pub struct PostgresSender {
    postgres: Postgres,
    queue: String,
    notify: bool,
    /// The insert, with its `NOTIFY` when `notify` is on.
    insert: String,
}

impl fmt::Debug for PostgresSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTopic")
            .field("url", &self.postgres.url())
            .field("schema", &self.postgres.schema())
            .field("queue", &self.queue)
            .field("notify", &self.notify)
            .finish()
    }
}

pub(super) fn open(postgres: Postgres, queue: String) -> PostgresTopic {
    SenderTopic::new(PostgresSender::new(postgres, queue, true))
}

impl PostgresSender {
    fn new(postgres: Postgres, queue: String, notify: bool) -> Self {
        let s = &postgres.inner.quoted;
        // One statement for one message or many: each message's attributes are a slice
        // of one flat array, so that the batch is a single insert of `unnest`ed rows, in
        // order (identities follow the rows).
        let insert = format!(
            "INSERT INTO {s}.messages (queue, attributes, body, ordering_key, run_at)
             SELECT $1, ($2::text[])[t.first:t.last], t.body, t.key,
                    now() + t.delay * interval '1 millisecond'
             FROM unnest($3::int4[], $4::int4[], $5::bytea[], $6::text[], $7::int8[])
                  AS t(first, last, body, key, delay)"
        );
        let insert = if notify {
            format!("WITH ins AS ({insert} RETURNING 1) SELECT pg_notify($8, $1)")
        } else {
            insert
        };
        PostgresSender {
            postgres,
            queue,
            notify,
            insert,
        }
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

impl PostgresTopic {
    /// Whether each insert also sends `NOTIFY` so that idle servers wake at once (default
    /// on). See [Waking up](super#waking-up) for when to turn it off.
    pub fn notify(self, notify: bool) -> Self {
        let sender = self.sender();
        SenderTopic::new(PostgresSender::new(
            sender.postgres.clone(),
            sender.queue.clone(),
            notify,
        ))
    }

    /// Inserts `message` with `client`: your own open transaction (a
    /// `tokio_postgres::Transaction`, or deadpool's through `&*tx`), so that the message
    /// exists only if that transaction commits — the transactional outbox. A server or a
    /// [`Forwarder`](super::Forwarder) on the queue sees it once it committed; the
    /// notification, if on, is sent at commit too.
    ///
    /// `client` must be connected to the same database as the topic's pool, with msgio's
    /// schema [migrated](Postgres::migrate).
    ///
    /// # Errors
    ///
    /// As [`Topic::publish`](crate::Topic::publish); an error from the database leaves
    /// your transaction aborted, as any failed statement does.
    pub async fn publish_in<C: GenericClient>(
        &self,
        client: &C,
        message: Message,
    ) -> Result<(), Error> {
        let Message {
            attributes,
            mut body,
        } = message;
        let body = body.read_to_bytes(usize::MAX).await?;
        let batch = Batch::new(vec![Outgoing {
            attributes,
            body,
            delay: None,
        }])?;
        let sender = self.sender();
        let channel = sender.postgres.channel();
        let bodies = batch.bodies();
        client
            .execute(
                sender.insert.as_str(),
                &batch.params(&bodies, &sender.queue, &channel, sender.notify),
            )
            .await
            .map(drop)
            .map_err(error)
    }
}

/// The parameters of one insert.
struct Batch {
    flat: Vec<String>,
    first: Vec<i32>,
    last: Vec<i32>,
    bodies: Vec<bytes::Bytes>,
    keys: Vec<Option<String>>,
    delays: Vec<i64>,
}

impl Batch {
    fn new(messages: Vec<Outgoing>) -> Result<Batch, Error> {
        let n = messages.len();
        let mut batch = Batch {
            flat: Vec::new(),
            first: Vec::with_capacity(n),
            last: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            delays: Vec::with_capacity(n),
        };
        for message in messages {
            if message.body.len() > encoding::MAX_BODY {
                return Err(Error::BodyTooLarge {
                    limit: encoding::MAX_BODY,
                });
            }
            let too_many = || Error::invalid_attribute("", "more attributes than a row holds");
            batch
                .first
                .push(i32::try_from(batch.flat.len() + 1).map_err(|_| too_many())?);
            encoding::flatten(&message.attributes, &mut batch.flat)?;
            batch
                .last
                .push(i32::try_from(batch.flat.len()).map_err(|_| too_many())?);
            batch
                .keys
                .push(message.attributes.get(ORDERING_KEY).map(str::to_owned));
            batch
                .delays
                .push(millis(message.delay.unwrap_or(Duration::ZERO)));
            batch.bodies.push(message.body);
        }
        Ok(batch)
    }

    /// The bodies as the driver takes them (it has no `ToSql` for `Bytes`).
    fn bodies(&self) -> Bodies<'_> {
        Bodies(self.bodies.iter().map(|b| &b[..]).collect())
    }

    fn params<'a>(
        &'a self,
        bodies: &'a Bodies<'a>,
        queue: &'a String,
        channel: &'a String,
        notify: bool,
    ) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            queue,
            &self.flat,
            &self.first,
            &self.last,
            &bodies.0,
            &self.keys,
            &self.delays,
        ];
        if notify {
            params.push(channel);
        }
        params
    }
}

/// A batch's bodies, borrowed as `bytea[]`.
struct Bodies<'a>(Vec<&'a [u8]>);

impl Sender for PostgresSender {
    async fn send(&self, ctx: &Context, message: Outgoing) -> Result<(), Error> {
        self.send_batch(ctx, vec![message]).await
    }

    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let batch = Batch::new(messages)?;
        let channel = self.postgres.channel();
        let bodies = batch.bodies();
        let send = async {
            let client = self.postgres.inner.pool.get().await.map_err(pool_error)?;
            let statement = client.prepare_cached(&self.insert).await.map_err(error)?;
            client
                .execute(
                    &statement,
                    &batch.params(&bodies, &self.queue, &channel, self.notify),
                )
                .await
                .map(drop)
                .map_err(error)
        };
        ctx.unless_cancelled(send).await
    }
}

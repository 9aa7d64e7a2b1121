//! The topic: an insert (with its notification), from the pool or inside the user's own
//! transaction.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;

use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{ORDERING_KEY, Postgres, encoding, error, millis};
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
    inner: Arc<Inserter>,
}

/// What a sender shares with the insert tasks it starts.
struct Inserter {
    postgres: Postgres,
    queue: String,
    notify: bool,
    /// The insert, with its `NOTIFY` when `notify` is on.
    insert: String,
    /// The channel it notifies.
    channel: String,
    /// Messages of concurrent writers waiting to go in the next insert.
    gather: Mutex<Gather>,
}

/// What concurrent writers hand to the inserts running for them: their messages (checked
/// already) and where to answer each.
#[derive(Default)]
struct Gather {
    messages: Vec<Outgoing>,
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// How many insert tasks run.
    flushing: usize,
}

/// The most inserts a topic runs at once for its writers (each holds a pooled
/// connection while it runs).
const MAX_FLUSHING: usize = 4;

impl fmt::Debug for PostgresSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("PostgresTopic")
            .field("url", &inner.postgres.url())
            .field("schema", &inner.postgres.schema())
            .field("queue", &inner.queue)
            .field("notify", &inner.notify)
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
            // The lowest id inserted goes with the queue's name: a server whose claims went
            // past it (a transaction with a higher id committed first) goes back for it.
            format!(
                "WITH ins AS ({insert} RETURNING id)
                 SELECT pg_notify($8, $1::text || ' ' || min(id)::text) FROM ins"
            )
        } else {
            insert
        };
        PostgresSender {
            inner: Arc::new(Inserter {
                channel: postgres.channel(),
                postgres,
                queue,
                notify,
                insert,
                gather: Mutex::new(Gather::default()),
            }),
        }
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
}

impl PostgresTopic {
    /// Whether each insert also sends `NOTIFY` so that idle servers wake at once (default
    /// on). See [Waking up](super#waking-up) for when to turn it off.
    pub fn notify(self, notify: bool) -> Self {
        let inner = &self.sender().inner;
        SenderTopic::new(PostgresSender::new(
            inner.postgres.clone(),
            inner.queue.clone(),
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
        let message = Outgoing {
            attributes,
            body: body.read_to_bytes(usize::MAX).await?,
            delay: None,
        };
        check(&message)?;
        let sender = &self.sender().inner;
        client
            .execute(
                sender.insert.as_str(),
                &Batch::new(std::slice::from_ref(&message)).params(sender),
            )
            .await
            .map(drop)
            .map_err(error)
    }
}

/// Refuses what a row cannot hold: a body over `bytea`'s limit, a NUL character in an
/// attribute (PostgreSQL's `text` cannot store one).
fn check(message: &Outgoing) -> Result<(), Error> {
    if message.body.len() > encoding::MAX_BODY {
        return Err(Error::BodyTooLarge {
            limit: encoding::MAX_BODY,
        });
    }
    encoding::check(&message.attributes)
}

/// The parameters of one insert, borrowed from its messages: each message's attributes
/// are a slice `first..=last` (1-based) of one flat array of keys and values.
struct Batch<'a> {
    flat: Vec<&'a str>,
    first: Vec<i32>,
    last: Vec<i32>,
    bodies: Vec<&'a [u8]>,
    keys: Vec<Option<&'a str>>,
    delays: Vec<i64>,
}

impl<'a> Batch<'a> {
    /// The parameters for `messages`, which [`check`] accepted.
    fn new(messages: &'a [Outgoing]) -> Batch<'a> {
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
            // PostgreSQL array positions are i32: 2^31 keys and values would take more
            // than 32 GiB of references alone, so this saturates rather than fails.
            batch
                .first
                .push(i32::try_from(batch.flat.len() + 1).unwrap_or(i32::MAX));
            for (key, value) in message.attributes.iter() {
                batch.flat.push(key);
                batch.flat.push(value);
            }
            batch
                .last
                .push(i32::try_from(batch.flat.len()).unwrap_or(i32::MAX));
            batch.keys.push(message.attributes.get(ORDERING_KEY));
            batch
                .delays
                .push(millis(message.delay.unwrap_or(Duration::ZERO)));
            batch.bodies.push(&message.body[..]);
        }
        batch
    }

    fn params<'b>(&'b self, sender: &'b Inserter) -> Vec<&'b (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &sender.queue,
            &self.flat,
            &self.first,
            &self.last,
            &self.bodies,
            &self.keys,
            &self.delays,
        ];
        if sender.notify {
            params.push(&sender.channel);
        }
        params
    }
}

impl Inserter {
    /// One insert of `messages`, on a pooled connection.
    async fn insert(&self, messages: &[Outgoing]) -> Result<(), Error> {
        let batch = Batch::new(messages);
        let (client, statement) = self.postgres.prepared(&self.insert).await?;
        client
            .execute(&statement, &batch.params(self))
            .await
            .map(drop)
            .map_err(error)
    }
}

/// Inserts what concurrent writers gathered, batch after batch, until none waits.
async fn flush(sender: Arc<Inserter>) {
    /// Counts the task out however it ends (an aborted task too), so that the next
    /// writer starts another.
    struct Running<'a>(&'a Mutex<Gather>);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).flushing -= 1;
        }
    }
    let _running = Running(&sender.gather);
    loop {
        let (messages, waiters) = {
            let mut gather = sender.gather.lock().unwrap_or_else(|p| p.into_inner());
            if gather.messages.is_empty() {
                return;
            }
            (
                std::mem::take(&mut gather.messages),
                std::mem::take(&mut gather.waiters),
            )
        };
        let result = sender.insert(&messages).await;
        for waiter in waiters {
            let _ = waiter.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(shared_error(e)),
            });
        }
    }
}

/// `e` for each writer of a batch that failed: the same kind, the same message.
fn shared_error(e: &Error) -> Error {
    match e {
        Error::ConnectionLost(_) => Error::connection_lost(e.to_string()),
        Error::InvalidConfig { field, reason } => Error::invalid_config(field, reason.clone()),
        _ => Error::other(e.to_string()),
    }
}

impl Sender for PostgresSender {
    /// Hands the message to the next insert: concurrent writers share one insert (one
    /// round trip, one commit, one notification), with up to four inserts at once.
    async fn send(&self, ctx: &Context, message: Outgoing) -> Result<(), Error> {
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }
        // Refused on its own, before it joins an insert others wait for.
        check(&message)?;
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut gather = self.inner.gather.lock().unwrap_or_else(|p| p.into_inner());
            gather.messages.push(message);
            gather.waiters.push(tx);
            let start = gather.flushing < MAX_FLUSHING;
            if start {
                gather.flushing += 1;
            }
            start
        };
        if start {
            tokio::spawn(flush(self.inner.clone()));
        }
        let done = async {
            rx.await
                .unwrap_or_else(|_| Err(Error::other("the insert task ended without an answer")))
        };
        ctx.unless_cancelled(done).await
    }

    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        for message in &messages {
            check(message)?;
        }
        ctx.unless_cancelled(self.inner.insert(&messages)).await
    }
}

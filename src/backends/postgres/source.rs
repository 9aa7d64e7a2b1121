//! The server: claims with `FOR UPDATE SKIP LOCKED` under a lease, as an engine source.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use super::{Postgres, QueueOptions, encoding, error, millis, pool_error, schema};
use crate::transport::{Delivery, Engine, Settle, Settlement, Source};
use crate::{Error, ServerConfig, log};

/// A server on a PostgreSQL queue: the delivery engine over a [`PostgresSource`] (see the
/// [module docs](super)). Cloning gives another handle to the same server.
pub type PostgresServer = Engine<PostgresSource>;

/// A claim running as a task of its own.
type Claim = JoinHandle<Result<Vec<Row>, Error>>;

/// Settles a delivery of a [`PostgresSource`]: the row and which attempt it was.
#[derive(Debug)]
pub struct PostgresToken {
    id: i64,
    attempts: i32,
    /// Which of this server's claims delivered it (a row released without counting an
    /// attempt is claimed again with the same attempts).
    claim: u64,
}

/// The engine [`Source`] of a [`PostgresServer`]: claims due rows of a queue under a lease,
/// extends the leases of what it holds, and settles by deleting, moving or rescheduling
/// rows. Made by [`Postgres::server`]; the engine calls its methods, a user never does.
pub struct PostgresSource {
    shared: Arc<Shared>,
    /// A claim a dropped fetch left running, whose rows the next fetch takes.
    claiming: Mutex<Option<Claim>>,
    /// The lease keeper and the listener, stopped with the source.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the source shares with its claim, lease and listener tasks.
struct Shared {
    postgres: Postgres,
    options: QueueOptions,
    /// This server's name in `lease_owner`.
    owner: String,
    sql: Sql,
    /// Rows handed to the engine and not settled yet: id → the claim that delivered it.
    in_flight: Mutex<HashMap<i64, u64>>,
    /// Numbers the rows this server claims.
    claims: std::sync::atomic::AtomicU64,
    /// Woken by a notification, or by a row this server put back.
    wake: Notify,
    /// Where claims start (see [`Scan`]).
    scan: Mutex<Scan>,
    /// The dead-letter queue, when the engine hands given-up messages to this source.
    dead_letter_queue: Option<String>,
}

/// Where a claim starts scanning the queue's index.
///
/// Each ack leaves a dead index entry at the front of the queue, which a claim scanning
/// from the front must step over; while a long transaction elsewhere holds back the
/// cleanup, there can be millions. So most claims start after the highest id this server
/// claimed (new rows have higher ids), and a sweep from the front — which finds retries
/// that came due, expired leases of dead consumers, and rows whose transaction committed
/// after a higher id was claimed — runs every poll interval, or ten times its own duration
/// when that is longer, so that sweeping never takes more than a tenth of the time.
///
/// A row that committed after a higher id was claimed is common under concurrent
/// publishers (ids are drawn at insert, rows become visible at commit). Rather than wait
/// for the sweep, a claim goes back to it when its notification says so: a topic's
/// `NOTIFY` carries the lowest id it inserted, and the next claim starts there when that
/// is behind the cursor; while such a claim (or a sweep) comes back full and short of the
/// cursor, the one after it goes on from where it stopped.
struct Scan {
    cursor: i64,
    /// The lowest id a notification named since the last claim started.
    rewind: Option<i64>,
    next_sweep: tokio::time::Instant,
    /// How long the last sweep took.
    sweep_cost: Duration,
    /// When the last sweep started.
    swept_at: tokio::time::Instant,
}

impl Scan {
    /// Where the next claim starts, and whether it is a sweep.
    fn start(&mut self, now: tokio::time::Instant) -> (i64, bool) {
        let rewind = self.rewind.take();
        if now >= self.next_sweep {
            (0, true)
        } else {
            // `id > from`: one below the notified id.
            let from = rewind.map_or(self.cursor, |id| self.cursor.min(id.saturating_sub(1)));
            (from, false)
        }
    }

    /// A notification said rows from `id` on were committed. Kept even when `id` is ahead
    /// of the cursor: a claim running now may pass it without seeing it (it started
    /// before that commit) and move the cursor beyond.
    fn committed(&mut self, id: i64) {
        self.rewind = Some(self.rewind.map_or(id, |r| r.min(id)));
    }

    /// After a claim that started at `started` found rows up to `highest`; `full`: it
    /// took as many rows as it asked for.
    fn claimed(
        &mut self,
        sweep: bool,
        started: tokio::time::Instant,
        highest: Option<i64>,
        full: bool,
        poll: Duration,
    ) {
        if let Some(highest) = highest {
            // A full claim that stopped behind the cursor (a sweep, or a claim gone back for
            // rows committed there) may have left due rows between where it stopped and
            // the cursor, which no claim from the cursor finds: the next claim goes on
            // from where this one stopped.
            if full && highest < self.cursor {
                self.committed(highest.saturating_add(1));
            }
            self.cursor = self.cursor.max(highest);
        }
        if sweep {
            self.sweep_cost = started.elapsed();
            self.swept_at = started;
            self.next_sweep = started + poll.max(self.sweep_cost * 10);
        }
    }

    /// A claim from `from` failed: what it went back for is gone back for again (a sweep
    /// is, since the next sweep stays due).
    fn failed(&mut self, from: i64) {
        if from < self.cursor {
            self.committed(from.saturating_add(1));
        }
    }

    /// Something of ours came back to the queue: sweep as soon as the budget allows.
    fn requeued(&mut self) {
        self.next_sweep = self.next_sweep.min(self.swept_at + self.sweep_cost * 10);
    }
}

struct Sql {
    claim: String,
    ack: String,
    reject: String,
    requeue: String,
    extend: String,
    take: String,
    put: String,
}

impl Sql {
    fn new(s: &str, options: &QueueOptions) -> Sql {
        let key_order = if options.key_order {
            format!(
                "AND (c.ordering_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM {s}.messages p
                    WHERE p.queue = c.queue AND p.ordering_key = c.ordering_key AND p.id < c.id))"
            )
        } else {
            String::new()
        };
        let settled = "m.id = s.id AND m.attempts = s.attempts AND m.lease_owner = $3";
        let finish = |outcome: &str| {
            if options.archive {
                format!(
                    "WITH d AS (
                        DELETE FROM {s}.messages m
                        USING unnest($1::int8[], $2::int4[]) AS s(id, attempts)
                        WHERE {settled}
                        RETURNING m.id, m.queue, m.attributes, m.body, m.ordering_key,
                                  m.created_at, m.attempts)
                     INSERT INTO {s}.archive
                        (id, queue, attributes, body, ordering_key, created_at, attempts, outcome)
                     SELECT d.*, '{outcome}' FROM d ON CONFLICT (id) DO NOTHING"
                )
            } else {
                format!(
                    "DELETE FROM {s}.messages m
                     USING unnest($1::int8[], $2::int4[]) AS s(id, attempts)
                     WHERE {settled}"
                )
            }
        };
        Sql {
            claim: format!(
                "UPDATE {s}.messages m
                 SET attempts = m.attempts + 1, lease_owner = $3,
                     run_at = now() + $4::int8 * interval '1 millisecond'
                 FROM (SELECT c.id FROM {s}.messages c
                       WHERE c.queue = $1 AND c.id > $5 AND c.run_at <= now() {key_order}
                       ORDER BY c.id LIMIT $2
                       FOR UPDATE SKIP LOCKED) picked
                 WHERE m.id = picked.id
                 RETURNING m.id, m.attempts, m.attributes, m.body"
            ),
            ack: finish("acked"),
            reject: finish("rejected"),
            requeue: format!(
                "UPDATE {s}.messages m
                 SET run_at = now() + s.delay * interval '1 millisecond',
                     lease_owner = NULL, attempts = m.attempts - s.uncount
                 FROM unnest($1::int8[], $2::int4[], $4::int8[], $5::int4[])
                      AS s(id, attempts, delay, uncount)
                 WHERE {settled}"
            ),
            extend: format!(
                "UPDATE {s}.messages SET run_at = now() + $3::int8 * interval '1 millisecond'
                 WHERE id = ANY($1) AND lease_owner = $2"
            ),
            take: format!(
                "DELETE FROM {s}.messages m WHERE m.id = $1 AND m.attempts = $2 AND m.lease_owner = $3
                 RETURNING m.attributes, m.body, m.ordering_key, m.created_at"
            ),
            put: format!(
                "INSERT INTO {s}.messages (queue, attributes, body, ordering_key, created_at, last_error)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
        }
    }
}

impl fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSource")
            .field("url", &self.shared.postgres.url())
            .field("schema", &self.shared.postgres.schema())
            .field("queue", &self.shared.options.queue)
            .field("owner", &self.shared.owner)
            .finish()
    }
}

/// Opens a server: checks the options and the schema, starts the lease keeper and the
/// listener.
pub(super) async fn server(
    postgres: &Postgres,
    options: QueueOptions,
    config: ServerConfig,
) -> Result<PostgresServer, Error> {
    options.validate()?;
    config.validate()?;
    schema::check(postgres).await?;
    let dead_letter_queue = if config.dead_letter.is_none() {
        options.dead_letter_queue.clone()
    } else {
        None
    };
    let shared = Arc::new(Shared {
        sql: Sql::new(&postgres.inner.quoted, &options),
        postgres: postgres.clone(),
        owner: format!(
            "msgio-{}-{}",
            std::process::id(),
            &crate::random::hex()[..8]
        ),
        options,
        in_flight: Mutex::new(HashMap::new()),
        claims: std::sync::atomic::AtomicU64::new(0),
        wake: Notify::new(),
        scan: Mutex::new(Scan {
            cursor: 0,
            rewind: None,
            next_sweep: tokio::time::Instant::now(),
            sweep_cost: Duration::ZERO,
            swept_at: tokio::time::Instant::now(),
        }),
        dead_letter_queue,
    });
    let mut tasks = vec![tokio::spawn(keep_leases(Arc::downgrade(&shared)))];
    if shared.options.listen {
        tasks.push(tokio::spawn(listen(Arc::downgrade(&shared))));
    }
    let source = PostgresSource {
        shared,
        claiming: Mutex::new(None),
        tasks: Mutex::new(tasks),
    };
    Engine::new(source, config)
}

impl PostgresServer {
    /// This server's name in the rows it leases (`lease_owner`).
    pub fn owner(&self) -> &str {
        &self.source().shared.owner
    }
}

impl Drop for PostgresSource {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        if let Some(claim) = self
            .claiming
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            claim.abort();
        }
    }
}

/// Claims up to `max` due rows, leasing them to this server.
async fn claim(shared: Arc<Shared>, max: usize) -> Result<Vec<Row>, Error> {
    let started = tokio::time::Instant::now();
    let (from, sweep) = shared
        .scan
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .start(started);
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let claimed = async {
        let (client, statement) = shared.postgres.prepared(&shared.sql.claim).await?;
        let lease = millis(shared.options.lease);
        client
            .query(
                &statement,
                &[&shared.options.queue, &limit, &shared.owner, &lease, &from],
            )
            .await
            .map_err(error)
    }
    .await;
    let scan = || shared.scan.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows = match claimed {
        Ok(rows) => rows,
        Err(e) => {
            scan().failed(from);
            return Err(e);
        }
    };
    rows.sort_by_key(|row| row.get::<_, i64>(0));
    let highest = rows.last().map(|row| row.get::<_, i64>(0));
    let full = rows.len() >= max;
    scan().claimed(sweep, started, highest, full, shared.options.poll_interval);
    Ok(rows)
}

impl PostgresSource {
    /// Claims, surviving a dropped fetch: the claim runs as a task of its own, and what a
    /// dropped fetch did not take waits here for the next one, still leased.
    async fn claim(&self, max: usize) -> Result<Vec<Row>, Error> {
        let task = self
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let task = task.unwrap_or_else(|| tokio::spawn(claim(self.shared.clone(), max)));
        let mut slot = Slot {
            home: &self.claiming,
            task: Some(task),
        };
        let joined = slot.task.as_mut().expect("set above").await;
        slot.task = None;
        joined.map_err(|e| Error::other(format!("the claim task failed: {e}")))?
    }

    fn deliver(&self, rows: Vec<Row>, out: &mut Vec<Delivery<PostgresToken>>) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for row in rows {
            let id: i64 = row.get(0);
            let attempts: i32 = row.get(1);
            let claim = self
                .shared
                .claims
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            in_flight.insert(id, claim);
            let body = Bytes::copy_from_slice(row.get::<_, &[u8]>(3));
            let token = PostgresToken {
                id,
                attempts,
                claim,
            };
            let attempt = u32::try_from(attempts).unwrap_or(1);
            let attributes = row
                .try_get::<_, Vec<Option<String>>>(2)
                .map_err(|e| format!("the attributes column cannot be read: {e}"))
                .and_then(encoding::unflatten);
            let delivery = match attributes {
                Ok(attributes) => Delivery::new(token, body).with_attributes(attributes),
                Err(why) => Delivery::malformed(token, why, crate::Attributes::new(), body),
            };
            out.push(
                delivery
                    .with_message_id(id.to_string())
                    .with_attempt(attempt),
            );
        }
    }

    /// Moves one given-up row to the dead-letter queue, in one transaction.
    async fn dead_letter(
        &self,
        queue: &str,
        token: &PostgresToken,
        reason: &str,
    ) -> Result<(), Error> {
        let shared = &self.shared;
        let mut client = shared.postgres.inner.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(error)?;
        let taken = tx
            .query_opt(
                &shared.sql.take,
                &[&token.id, &token.attempts, &shared.owner],
            )
            .await
            .map_err(error)?;
        let Some(row) = taken else {
            // No longer ours (its lease ran out and another server has it): theirs to settle.
            return Ok(());
        };
        let raw: Vec<Option<String>> = row.try_get(0).unwrap_or_default();
        let body: &[u8] = row.get(1);
        let key: Option<String> = row.get(2);
        // A time out of SystemTime's range (`infinity`, written by hand) becomes now.
        let created: std::time::SystemTime = row
            .try_get(3)
            .unwrap_or_else(|_| std::time::SystemTime::now());
        let attempt = u32::try_from(token.attempts).unwrap_or(1);
        let id = crate::MessageId::from(token.id.to_string());
        // The dead-letter facts, as a dead-letter topic gets them.
        let with_facts = |attributes| {
            crate::dead_letter::message(
                attributes,
                Bytes::new(),
                reason,
                attempt,
                Some(&shared.options.queue),
                Some(&id),
            )
            .attributes
        };
        let flat = match encoding::unflatten(raw.clone()) {
            Ok(attributes) => encoding::flatten(&with_facts(attributes)),
            Err(_) => {
                // Kept as it was, so that nothing is lost, with the facts after it.
                let mut flat = raw;
                flat.extend(encoding::flatten(&with_facts(crate::Attributes::new())));
                flat
            }
        };
        let reason = reason.replace('\0', " ");
        tx.execute(
            &shared.sql.put,
            &[&queue, &flat, &body, &key, &created, &reason],
        )
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)
    }
}

/// Puts an unfinished claim back where the next fetch finds it.
struct Slot<'a> {
    home: &'a Mutex<Option<Claim>>,
    task: Option<Claim>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            *self.home.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
    }
}

impl Source for PostgresSource {
    type Token = PostgresToken;

    fn name(&self) -> &str {
        &self.shared.options.queue
    }

    /// A claim takes due rows, whatever is leased.
    fn stops_at_in_flight_limit(&self) -> bool {
        false
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<PostgresToken>>) -> Result<(), Error> {
        let mut rows = self.claim(max).await?;
        if rows.is_empty() {
            // Until a notification, or the next sweep is due (at most a poll interval).
            let next_sweep = self
                .shared
                .scan
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_sweep;
            let until =
                next_sweep.min(tokio::time::Instant::now() + self.shared.options.poll_interval);
            tokio::select! {
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
            rows = self.claim(max).await?;
        }
        self.deliver(rows, out);
        Ok(())
    }

    async fn settle(&self, batch: &mut Vec<Settlement<PostgresToken>>) -> Result<(), Error> {
        let shared = &self.shared;
        let (mut acks, mut ack_attempts) = (Vec::new(), Vec::new());
        let (mut rejects, mut reject_attempts) = (Vec::new(), Vec::new());
        let (mut requeues, mut requeue_attempts, mut delays, mut uncounts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for settlement in batch.iter() {
            let PostgresToken { id, attempts, .. } = settlement.token;
            let mut requeue = |delay: Option<Duration>, uncount: i32| {
                requeues.push(id);
                requeue_attempts.push(attempts);
                delays.push(millis(delay.unwrap_or(Duration::ZERO)));
                uncounts.push(uncount);
            };
            match &settlement.action {
                Settle::Ack => {
                    acks.push(id);
                    ack_attempts.push(attempts);
                }
                Settle::Nack { delay } => requeue(*delay, 0),
                Settle::Release => requeue(None, 1),
                Settle::Defer { delay } => requeue(Some(*delay), 1),
                // Moved one at a time below, once the statements are done.
                Settle::DeadLetter { .. } if shared.dead_letter_queue.is_some() => {}
                _ => {
                    rejects.push(id);
                    reject_attempts.push(attempts);
                }
            }
        }
        {
            let client = shared.postgres.inner.pool.get().await.map_err(pool_error)?;
            for (sql, ids, attempts) in [
                (&shared.sql.ack, &acks, &ack_attempts),
                (&shared.sql.reject, &rejects, &reject_attempts),
            ] {
                if !ids.is_empty() {
                    let statement = client.prepare_cached(sql).await.map_err(error)?;
                    client
                        .execute(&statement, &[ids, attempts, &shared.owner])
                        .await
                        .map_err(error)?;
                }
            }
            if !requeues.is_empty() {
                let statement = client
                    .prepare_cached(&shared.sql.requeue)
                    .await
                    .map_err(error)?;
                client
                    .execute(
                        &statement,
                        &[
                            &requeues,
                            &requeue_attempts,
                            &shared.owner,
                            &delays,
                            &uncounts,
                        ],
                    )
                    .await
                    .map_err(error)?;
            }
        }
        if !requeues.is_empty() {
            shared
                .scan
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .requeued();
            shared.wake.notify_one();
        }
        // What the statements settled leaves the batch now: when a dead letter below fails
        // the engine retries the batch, and a release applied twice could give back a row
        // this server has claimed again since (with the same attempts).
        let letter = |s: &Settlement<PostgresToken>| {
            shared.dead_letter_queue.is_some() && matches!(s.action, Settle::DeadLetter { .. })
        };
        {
            let mut in_flight = shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            batch.retain(|s| {
                let keep = letter(s);
                if !keep {
                    forget(&mut in_flight, &s.token);
                }
                keep
            });
        }
        if let Some(queue) = &shared.dead_letter_queue {
            // One at a time, each out of the batch once moved.
            while let Some(settlement) = batch.last() {
                if let Settle::DeadLetter { reason } = &settlement.action {
                    self.dead_letter(queue, &settlement.token, reason).await?;
                }
                if let Some(done) = batch.pop() {
                    forget(
                        &mut shared.in_flight.lock().unwrap_or_else(|p| p.into_inner()),
                        &done.token,
                    );
                }
            }
        }
        Ok(())
    }

    fn dead_letters(&self) -> bool {
        self.shared.dead_letter_queue.is_some()
    }

    async fn close(&self) -> Result<(), Error> {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        // Rows a dropped fetch claimed and nobody was given: back to the queue at once,
        // without counting an attempt, rather than after their lease.
        let claim = self
            .claiming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(claim) = claim {
            if let Ok(Ok(rows)) = claim.await {
                let mut out = Vec::new();
                self.deliver(rows, &mut out);
                let mut batch = out
                    .into_iter()
                    .map(|d| Settlement {
                        token: d.token,
                        action: Settle::Release,
                    })
                    .collect();
                self.settle(&mut batch).await?;
            }
        }
        Ok(())
    }
}

/// Stops extending the lease of a settled delivery, unless its row was claimed again
/// since (a requeued row can be, before its settlement gets here): that claim's lease is
/// still to be kept.
fn forget(in_flight: &mut HashMap<i64, u64>, token: &PostgresToken) {
    if in_flight.get(&token.id) == Some(&token.claim) {
        in_flight.remove(&token.id);
    }
}

/// Extends the lease of every row the server holds, every third of the lease, until the
/// source is gone.
async fn keep_leases(shared: std::sync::Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(shared) => shared.options.lease / 3,
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let ids: Vec<i64> = shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        if ids.is_empty() {
            continue;
        }
        let extended = async {
            let (client, statement) = shared.postgres.prepared(&shared.sql.extend).await?;
            client
                .execute(
                    &statement,
                    &[&ids, &shared.owner, &millis(shared.options.lease)],
                )
                .await
                .map_err(error)
        };
        if let Err(e) = extended.await {
            log::warning!(
                "msgio: could not extend the leases of {} messages of queue {:?}: {e}",
                ids.len(),
                shared.options.queue
            );
        }
    }
}

/// Whether a notification's payload is for `queue`, and the lowest id it names if it does:
/// a topic sends the queue's name, a space and the lowest id it inserted; the queue's name
/// alone (as a hand-written `NOTIFY` may send) names none.
fn notified(payload: &str, queue: &str) -> Option<Option<i64>> {
    if payload == queue {
        return Some(None);
    }
    let (name, id) = payload.rsplit_once(' ')?;
    (name == queue).then(|| id.parse().ok())?.map(Some)
}

/// `LISTEN`s on a connection of its own and wakes the source for each notification of
/// its queue, reconnecting when the connection is lost; polling covers the gaps.
async fn listen(shared: std::sync::Weak<Shared>) {
    // Said once per outage, not at every attempt.
    let mut said = false;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let config = strong.postgres.config().clone();
        let channel = strong.postgres.channel();
        let queue = strong.options.queue.clone();
        drop(strong);
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, mut connection)) => {
                said = false;
                let (tx, mut rx) = futures::channel::mpsc::unbounded();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            if tx.unbounded_send(n).is_err() {
                                return;
                            }
                        }
                    }
                });
                let quoted = channel.replace('"', "\"\"");
                if client
                    .batch_execute(&format!("LISTEN \"{quoted}\""))
                    .await
                    .is_ok()
                {
                    // What was published while nobody listened.
                    if let Some(strong) = shared.upgrade() {
                        strong.wake.notify_one();
                    }
                    while let Some(notification) = rx.next().await {
                        let Some(lowest) = notified(notification.payload(), &queue) else {
                            continue;
                        };
                        let Some(strong) = shared.upgrade() else {
                            driver.abort();
                            return;
                        };
                        if let Some(id) = lowest {
                            strong
                                .scan
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .committed(id);
                        }
                        strong.wake.notify_one();
                    }
                }
                driver.abort();
                drop(client);
            }
            Err(e) if !said => {
                said = true;
                log::notice!("msgio: cannot LISTEN on {channel:?}: {e}; polling meanwhile");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_its_queue_and_maybe_the_lowest_id() {
        assert_eq!(notified("orders", "orders"), Some(None));
        assert_eq!(notified("orders 42", "orders"), Some(Some(42)));
        assert_eq!(notified("orders 42", "billing"), None);
        assert_eq!(notified("order", "orders"), None);
        // A queue whose name has a space, notified by name alone or with an id.
        assert_eq!(notified("big orders", "big orders"), Some(None));
        assert_eq!(notified("big orders 7", "big orders"), Some(Some(7)));
        assert_eq!(notified("big orders", "big"), None);
    }

    #[test]
    fn a_settlement_keeps_the_lease_of_a_later_claim_of_its_row() {
        let token = |id, attempts, claim| PostgresToken {
            id,
            attempts,
            claim,
        };
        let mut in_flight = HashMap::from([(7, 12), (8, 11)]);
        // Row 7, released (which does not count an attempt), was claimed again with the
        // same attempts by claim 12 before the release of claim 10 got here: the new
        // claim's lease must still be kept.
        forget(&mut in_flight, &token(7, 2, 10));
        assert_eq!(in_flight.get(&7), Some(&12));
        forget(&mut in_flight, &token(7, 2, 12));
        forget(&mut in_flight, &token(8, 1, 11));
        assert!(in_flight.is_empty());
    }

    /// A scan at the start, its next sweep a minute after `now`.
    fn fresh_scan(now: tokio::time::Instant) -> Scan {
        Scan {
            cursor: 0,
            rewind: None,
            next_sweep: now + Duration::from_secs(60),
            sweep_cost: Duration::ZERO,
            swept_at: now,
        }
    }

    #[test]
    fn a_claim_goes_back_to_a_row_committed_behind_the_cursor() {
        let now = tokio::time::Instant::now();
        let mut scan = fresh_scan(now);
        scan.claimed(false, now, Some(100), false, Duration::from_secs(1));
        assert_eq!(scan.start(now), (100, false));
        // Rows 97 and 95 committed after 100 was claimed; 120 is ahead anyway.
        scan.committed(120);
        assert_eq!(scan.start(now), (100, false));
        scan.committed(97);
        scan.committed(120);
        scan.committed(95);
        assert_eq!(scan.start(now), (94, false));
        // Once: the claim that started there found them.
        assert_eq!(scan.start(now), (100, false));
        // A sweep starts at the front whatever was notified.
        scan.committed(50);
        assert_eq!(scan.start(now + Duration::from_secs(61)), (0, true));
        assert_eq!(scan.start(now), (100, false));
        // Notified of 105 while a claim from 100 ran that saw only 110: the next claim
        // goes back for 105.
        scan.committed(105);
        scan.claimed(false, now, Some(110), false, Duration::from_secs(1));
        assert_eq!(scan.start(now), (104, false));
    }

    /// A claim that went back behind the cursor and came back full goes on from where it
    /// stopped, until one comes back short: the rows committed there are all found before
    /// the sweep. A failed claim is made again.
    #[test]
    fn a_full_claim_behind_the_cursor_goes_on_from_where_it_stopped() {
        let now = tokio::time::Instant::now();
        let poll = Duration::from_secs(1);
        let mut scan = fresh_scan(now);
        scan.claimed(false, now, Some(200), false, poll);
        scan.committed(100);
        assert_eq!(scan.start(now), (99, false));
        scan.claimed(false, now, Some(110), true, poll);
        assert_eq!(scan.start(now), (110, false));
        scan.claimed(false, now, Some(120), true, poll);
        assert_eq!(scan.start(now), (120, false));
        // Short: nothing more was due behind the cursor.
        scan.claimed(false, now, Some(125), false, poll);
        assert_eq!(scan.start(now), (200, false));
        // A full claim that passed the cursor left nothing behind it.
        scan.committed(150);
        assert_eq!(scan.start(now), (149, false));
        scan.claimed(false, now, Some(210), true, poll);
        assert_eq!(scan.start(now), (210, false));
        // A full sweep goes on too.
        let (from, sweep) = scan.start(now + Duration::from_secs(61));
        assert_eq!((from, sweep), (0, true));
        scan.claimed(true, now + Duration::from_secs(61), Some(30), true, poll);
        assert_eq!(scan.start(now), (30, false));
        // A claim that failed is made again from where it started.
        scan.committed(170);
        assert_eq!(scan.start(now), (169, false));
        scan.failed(169);
        assert_eq!(scan.start(now), (169, false));
        // A failed claim from the cursor leaves nothing to go back for.
        scan.failed(210);
        assert_eq!(scan.start(now), (210, false));
    }
}

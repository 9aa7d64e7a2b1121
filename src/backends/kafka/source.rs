//! The server: a consumer-group member that runs a partition's records concurrently,
//! keeps per-key order and commits only contiguous settled offsets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{ConsumerOptions, Kafka, OffsetReset, client_config, encoding};
use crate::transport::{Delivery, Engine, Settle, Settlement, Source};
use crate::{Attributes, Error, MessageId, ServerConfig};

/// A server reading a Kafka topic as a member of a consumer group: the delivery
/// [`Engine`] over a [`KafkaSource`]. See the [module docs](super#serving) for what it
/// promises.
pub type KafkaServer = Engine<KafkaSource>;

/// How many records waiting for their key a server holds before it stops reading.
const HOLD_LIMIT: usize = 10_000;

/// How long making a server waits, at least, for the group to give it its partitions.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// A commit is sent once this many records were settled since the last one...
const COMMIT_EVERY: usize = 1000;

/// ... or once this long passed with records settled since the last one.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How long a revoke waits for the records of its partitions that are running.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

/// How long a fetch waits for a record before returning none. librdkafka does not wake a
/// waiting read for a rebalance, only for records: a rebalance is served within this.
const POLL: Duration = Duration::from_millis(100);

/// Settles one delivery of a [`KafkaSource`]: its partition, offset and the assignment
/// it came from.
#[derive(Debug)]
pub struct KafkaToken {
    partition: i32,
    offset: i64,
    epoch: u64,
}

/// The engine [`Source`] of a [`KafkaServer`].
pub struct KafkaSource {
    topic: String,
    shown: String,
    key_attribute: String,
    consumer: Mutex<Option<Arc<StreamConsumer<Group>>>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.shown)
            .field("topic", &self.topic)
            .finish()
    }
}

/// What the source and its rebalance callbacks share.
struct Shared {
    topic: String,
    state: Mutex<State>,
    /// Woken when a record becomes ready (a key released, a retry due, a rebalance).
    wake: Notify,
    /// Set when the server closes: the revoke that leaving the group brings commits
    /// nothing more (the close committed already).
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A record read and not yet settled.
struct Record {
    partition: i32,
    offset: i64,
    epoch: u64,
    key: Option<Bytes>,
    attempt: u32,
    attributes: Attributes,
    body: Bytes,
    malformed: Option<String>,
}

/// One assigned partition.
struct Part {
    /// Which assignment it belongs to: a settlement of an earlier one is not committed.
    epoch: u64,
    /// The offsets read and not yet committed past, and whether each is settled.
    offsets: BTreeMap<i64, bool>,
    /// The offset the settled prefix ends at (the next record to read), or -1.
    committed: i64,
    /// The offset last sent in an asynchronous commit, or -1.
    sent: i64,
}

#[derive(Default)]
struct State {
    /// Whether the group gave this member its first assignment.
    joined: bool,
    epoch: u64,
    parts: HashMap<i32, Part>,
    /// Records that may run now.
    ready: VecDeque<Record>,
    /// Records waiting for a retry delay or their not-before time.
    deferred: Vec<(Instant, Record)>,
    /// Per (partition, key) that has a record out: the records behind it.
    held: HashMap<(i32, Bytes), VecDeque<Record>>,
    held_count: usize,
    /// Records handed to the engine, by (partition, offset).
    out: HashMap<(i32, i64), Record>,
    /// Records settled since the last commit was sent.
    unsent: usize,
    /// When the last commit was sent.
    last_commit: Option<Instant>,
}

impl State {
    /// A record read from the broker: ready, or held behind its key.
    fn accept(&mut self, record: Record) {
        match &record.key {
            None => self.ready.push_back(record),
            Some(key) => match self.held.get_mut(&(record.partition, key.clone())) {
                Some(queue) => {
                    queue.push_back(record);
                    self.held_count += 1;
                }
                None => {
                    self.held
                        .insert((record.partition, key.clone()), VecDeque::new());
                    self.ready.push_back(record);
                }
            },
        }
    }

    /// The record settled for good: the next one with its key may run.
    fn release_key(&mut self, record: &Record) {
        let Some(key) = &record.key else { return };
        let slot = (record.partition, key.clone());
        match self.held.get_mut(&slot).and_then(VecDeque::pop_front) {
            Some(next) => {
                self.held_count -= 1;
                self.ready.push_back(next);
            }
            None => {
                self.held.remove(&slot);
            }
        }
    }

    /// Moves deferred records that are due to `ready`; the earliest still waiting.
    fn due(&mut self, now: Instant) -> Option<Instant> {
        let mut next = None::<Instant>;
        let mut i = 0;
        while i < self.deferred.len() {
            if self.deferred[i].0 <= now {
                let (_, record) = self.deferred.swap_remove(i);
                self.ready.push_back(record);
            } else {
                next = Some(next.map_or(self.deferred[i].0, |n| n.min(self.deferred[i].0)));
                i += 1;
            }
        }
        next
    }

    /// Moves the commit point of `partition` past its settled prefix.
    fn advance(&mut self, partition: i32) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        while let Some(entry) = part.offsets.first_entry() {
            if !*entry.get() {
                break;
            }
            part.committed = part.committed.max(*entry.key() + 1);
            entry.remove();
        }
    }

    /// Drops the records of `partitions` that wait (ready, held behind their key, or
    /// deferred): they were not started, and the partitions' next owner reads them again.
    fn drop_waiting(&mut self, partitions: &[i32]) {
        let gone = |r: &Record| partitions.contains(&r.partition);
        self.ready.retain(|r| !gone(r));
        self.deferred.retain(|(_, r)| !gone(r));
        self.held.retain(|(p, _), queue| {
            let keep = !partitions.contains(p);
            if !keep {
                self.held_count -= queue.len();
                queue.clear();
            }
            keep
        });
    }

    /// Forgets `partitions` (revoked), returning what to commit for them first: the
    /// offset of each past its settled prefix, even when an asynchronous commit of it was
    /// sent already (it may not have reached the broker: the synchronous one does, in
    /// order, before the partitions move).
    fn revoke(&mut self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut commits = Vec::new();
        for &p in partitions {
            self.advance(p);
            if let Some(part) = self.parts.remove(&p) {
                if part.committed >= 0 {
                    commits.push((p, part.committed));
                }
            }
        }
        self.drop_waiting(partitions);
        self.out.retain(|_, r| !partitions.contains(&r.partition));
        commits
    }
}

/// The consumer's context: the rebalance callbacks.
struct Group {
    shared: Arc<Shared>,
}

impl ClientContext for Group {}

impl ConsumerContext for Group {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = partitions_of(list, &self.shared.topic);
        if !self.shared.closing.load(Ordering::Acquire) {
            self.shared.lock().drop_waiting(&partitions);
            self.finish_running(&partitions);
        }
        let commits = self.shared.lock().revoke(&partitions);
        self.shared.wake.notify_one();
        if commits.is_empty() || self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        let tpl = commit_list(&self.shared.topic, &commits);
        // Sent before this returns, and so before the member rejoins: the coordinator takes
        // the commit before the group moves the partitions, and the next owner starts where
        // this one stopped. Not synchronous: librdkafka waits for a synchronous commit's
        // answer without a time limit, and inside the rebalance callback, with the
        // coordinator lost, that answer may never come (seen: a server's worker thread
        // blocked for good after a cut connection).
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            crate::log::warning!(
                "msgio: kafka topic {:?}: committing revoked partitions failed (the next \
                 owner repeats what was settled since the last commit): {e}",
                self.shared.topic
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut state = self.shared.lock();
            state.joined = true;
            for p in partitions_of(list, &self.shared.topic) {
                state.epoch += 1;
                let epoch = state.epoch;
                state.parts.entry(p).or_insert(Part {
                    epoch,
                    offsets: BTreeMap::new(),
                    committed: -1,
                    sent: -1,
                });
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::NoOffset) {
                crate::log::warning!(
                    "msgio: kafka topic {:?}: a commit failed (the next commit covers it; for \
                     revoked partitions, their next owner repeats what was settled since the \
                     last commit): {e}",
                    self.shared.topic
                );
            }
        }
    }
}

impl Group {
    /// Waits, up to [`REVOKE_WAIT`], for the records of `partitions` that the engine has to
    /// be settled, so that their settlement is committed before the partitions move (what
    /// is still running then is abandoned: the next owner runs it again). Only on a
    /// multi-threaded runtime, whose other workers run the receivers meanwhile; on a
    /// current-thread one they could not, so nothing is waited for.
    fn finish_running(&self, partitions: &[i32]) {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            return;
        }
        let running = || {
            let state = self.shared.lock();
            state
                .out
                .values()
                .any(|r| partitions.contains(&r.partition))
        };
        if !running() {
            return;
        }
        tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + REVOKE_WAIT;
            while running() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
}

fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

fn commit_list(topic: &str, commits: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for &(p, offset) in commits {
        // Cannot fail for a partition added here with an offset.
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(offset));
    }
    tpl
}

pub(super) async fn server(
    kafka: &Kafka,
    options: ConsumerOptions,
    config: ServerConfig,
) -> Result<KafkaServer, Error> {
    let mut settings = kafka.settings().to_vec();
    let reset = match options.offset_reset {
        OffsetReset::Earliest => "earliest",
        OffsetReset::Latest => "latest",
    };
    settings.push(("auto.offset.reset".into(), reset.into()));
    settings.push((
        "client.id".into(),
        format!("msgio-{}", crate::random::hex()),
    ));
    if let Some(t) = options.session_timeout {
        settings.push(("session.timeout.ms".into(), t.as_millis().to_string()));
        // The heartbeat must come well within the session timeout.
        settings.push((
            "heartbeat.interval.ms".into(),
            (t.as_millis() / 3).max(100).to_string(),
        ));
    }
    settings.extend(options.settings.iter().cloned());
    settings.extend(
        [
            ("group.id", options.group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let shared = Arc::new(Shared {
        topic: options.topic.clone(),
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        closing: AtomicBool::new(false),
    });
    let consumer: StreamConsumer<Group> = client_config(&settings)
        .create_with_context(Group {
            shared: shared.clone(),
        })
        .map_err(|e| super::config_error(kafka.shown(), e))?;
    consumer
        .subscribe(&[&options.topic])
        .map_err(|e| kafka.error(e))?;
    let source = KafkaSource {
        topic: options.topic,
        shown: kafka.shown().to_owned(),
        key_attribute: options.key_attribute,
        consumer: Mutex::new(Some(Arc::new(consumer))),
        shared,
    };
    let join = options
        .session_timeout
        .map_or(JOIN_WAIT, |t| (t * 2).max(JOIN_WAIT));
    source.join(join).await;
    Engine::new(source, config)
}

impl Drop for KafkaSource {
    /// A server dropped without closing leaves the group without committing from the
    /// revoke (what it settled was committed as it went).
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
    }
}

impl KafkaSource {
    fn consumer(&self) -> Result<Arc<StreamConsumer<Group>>, Error> {
        self.consumer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Error::ServerClosed)
    }

    /// Takes in a record read from the broker (unless its partition is not, or no longer,
    /// this member's, or it was read already); whether fewer than [`HOLD_LIMIT`] records
    /// now wait for their key, so that reading may go on.
    fn take(&self, message: &BorrowedMessage<'_>) -> bool {
        let mut state = self.shared.lock();
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(part) = state.parts.get_mut(&partition) {
            if !part.offsets.contains_key(&offset) && offset >= part.committed {
                part.offsets.insert(offset, false);
                let epoch = part.epoch;
                let key = message.key();
                let (attributes, malformed) =
                    encoding::decode(message.headers(), key, &self.key_attribute);
                state.accept(Record {
                    partition,
                    offset,
                    epoch,
                    key: key.map(Bytes::copy_from_slice),
                    attempt: 1,
                    attributes,
                    body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                    malformed,
                });
            }
        }
        state.held_count < HOLD_LIMIT
    }

    /// Joins the group: reads until the group assigns this member its partitions (none,
    /// when the group has more members than the topic has partitions), keeping what
    /// arrives meanwhile, for at most `wait`; after that the server goes on joining when
    /// it serves.
    async fn join(&self, wait: Duration) {
        let Ok(consumer) = self.consumer() else {
            return;
        };
        let deadline = Instant::now() + wait;
        while !self.shared.lock().joined {
            if Instant::now() >= deadline {
                crate::log::warning!(
                    "msgio: kafka topic {:?}: the group gave no assignment within {wait:?}; \
                     the server goes on joining when it serves",
                    self.topic
                );
                return;
            }
            // Polled again every 100 ms: librdkafka does not wake a waiting read for a
            // rebalance, only for records.
            let step = Instant::now() + Duration::from_millis(100);
            tokio::select! {
                received = consumer.recv() => match received {
                    Ok(message) => {
                        self.take(&message);
                    }
                    Err(e) => {
                        crate::log::notice!(
                            "msgio: kafka topic {:?}: while joining the group: {e}",
                            self.topic
                        );
                        tokio::time::sleep_until(step).await;
                    }
                },
                () = tokio::time::sleep_until(step) => {}
            }
        }
    }

    /// Sends an asynchronous commit of every partition whose settled prefix moved, when
    /// [`COMMIT_EVERY`] records were settled since the last one or [`COMMIT_INTERVAL`]
    /// passed: a commit per settlement batch would be a broker request every few records.
    fn commit_due(&self) -> Result<(), Error> {
        let commits: Vec<(i32, i64)> = {
            let mut state = self.shared.lock();
            let due = state.unsent >= COMMIT_EVERY
                || state
                    .last_commit
                    .is_none_or(|t| t.elapsed() >= COMMIT_INTERVAL);
            if state.unsent == 0 || !due {
                return Ok(());
            }
            state.unsent = 0;
            state.last_commit = Some(Instant::now());
            state
                .parts
                .iter_mut()
                .filter(|(_, part)| part.committed > part.sent)
                .map(|(&p, part)| {
                    part.sent = part.committed;
                    (p, part.committed)
                })
                .collect()
        };
        if commits.is_empty() {
            return Ok(());
        }
        self.consumer()?
            .commit(&commit_list(&self.topic, &commits), CommitMode::Async)
            .map_err(|e| super::error(&self.shown, e))
    }

    /// Whether fewer records than [`HOLD_LIMIT`] wait for their key.
    fn may_read(&self) -> bool {
        self.shared.lock().held_count < HOLD_LIMIT
    }

    /// Hands ready records to the engine, up to `max`; the earliest deferred record still
    /// waiting.
    fn hand_out(&self, max: usize, out: &mut Vec<Delivery<KafkaToken>>) -> Option<Instant> {
        let mut state = self.shared.lock();
        let next = state.due(Instant::now());
        while out.len() < max {
            let Some(record) = state.ready.pop_front() else {
                break;
            };
            let token = KafkaToken {
                partition: record.partition,
                offset: record.offset,
                epoch: record.epoch,
            };
            // `<partition>-<offset>`: unique in the topic, which is the context's source.
            let id = MessageId::pair(
                u64::try_from(record.partition).unwrap_or_default(),
                u64::try_from(record.offset).unwrap_or_default(),
            );
            let delivery = match &record.malformed {
                Some(reason) => Delivery::malformed(
                    token,
                    reason.clone(),
                    record.attributes.clone(),
                    record.body.clone(),
                ),
                None => Delivery::new(token, record.body.clone())
                    .with_attributes(record.attributes.clone()),
            };
            out.push(delivery.with_message_id(id).with_attempt(record.attempt));
            state.out.insert((record.partition, record.offset), record);
        }
        next
    }
}

impl Source for KafkaSource {
    type Token = KafkaToken;

    fn name(&self) -> &str {
        &self.topic
    }

    /// The consumer reads on; settling commits offsets.
    fn stops_at_in_flight_limit(&self) -> bool {
        false
    }

    /// The engine holds a delayed retry: the record stays in this member's memory.
    fn nack_delay(&self) -> bool {
        false
    }

    fn not_before(&self) -> bool {
        true
    }

    /// Reads what librdkafka has (without waiting) into the source's state, then hands
    /// out what may run; waits for a record, a release or a due retry only when nothing
    /// may. It never reads from librdkafka after handing something out: a rebalance
    /// callback runs inside a read, and the records it waits for must be the engine's by
    /// then, not in this call's `out`.
    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<KafkaToken>>) -> Result<(), Error> {
        let consumer = self.consumer()?;
        // What was settled a while ago and not committed yet (no settlement came since).
        if let Err(e) = self.commit_due() {
            crate::log::warning!("msgio: kafka topic {:?}: a commit failed: {e}", self.topic);
        }
        let deadline = Instant::now() + POLL;
        // One stream for the whole call: each `recv` would make (and drop) one.
        let mut stream = consumer.stream();
        loop {
            let mut taken = 0;
            let mut may_read = self.may_read();
            while taken < max && may_read {
                match stream.next().now_or_never() {
                    Some(Some(Ok(message))) => may_read = self.take(&message),
                    Some(Some(Err(e))) => return Err(self.consumer_error(e)),
                    Some(None) | None => break,
                }
                taken += 1;
            }
            let next = self.hand_out(max, out);
            if !out.is_empty() {
                return Ok(());
            }
            let wake = next.map_or(deadline, |n| n.min(deadline));
            tokio::select! {
                received = stream.next(), if self.may_read() => match received {
                    Some(Ok(message)) => {
                        self.take(&message);
                    }
                    Some(Err(e)) => return Err(self.consumer_error(e)),
                    None => {}
                },
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(wake) => {
                    self.hand_out(max, out);
                    return Ok(());
                }
            }
        }
    }

    async fn settle(&self, batch: &mut Vec<Settlement<KafkaToken>>) -> Result<(), Error> {
        let mut woke = false;
        {
            let mut state = self.shared.lock();
            let mut touched = Vec::new();
            for settlement in batch.drain(..) {
                let KafkaToken {
                    partition,
                    offset,
                    epoch,
                } = settlement.token;
                if state.parts.get(&partition).is_none_or(|p| p.epoch != epoch) {
                    continue; // revoked meanwhile: abandoned, the next owner reads it again
                }
                let Some(mut record) = state.out.remove(&(partition, offset)) else {
                    continue;
                };
                match settlement.action {
                    Settle::Nack { delay } => {
                        record.attempt = record.attempt.saturating_add(1);
                        match delay.filter(|d| !d.is_zero()) {
                            Some(d) => state.deferred.push((Instant::now() + d, record)),
                            None => state.ready.push_front(record),
                        }
                        woke = true;
                    }
                    Settle::Release => {
                        state.ready.push_front(record);
                        woke = true;
                    }
                    Settle::Defer { delay } => {
                        state.deferred.push((Instant::now() + delay, record));
                        woke = true;
                    }
                    // Ack, Reject (the engine dead-lettered it, or it is to be dropped),
                    // and anything newer: settled for good.
                    _ => {
                        if let Some(part) = state.parts.get_mut(&partition) {
                            part.offsets.insert(offset, true);
                        }
                        state.release_key(&record);
                        state.unsent += 1;
                        if !touched.contains(&partition) {
                            touched.push(partition);
                        }
                        woke = true;
                    }
                }
            }
            for p in touched {
                state.advance(p);
            }
        }
        if woke {
            self.shared.wake.notify_one();
        }
        self.commit_due()
    }

    /// Commits what is settled, synchronously, then leaves the group (so that the others
    /// take this member's partitions at once).
    async fn close(&self) -> Result<(), Error> {
        self.shared.closing.store(true, Ordering::Release);
        let consumer = self
            .consumer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(consumer) = consumer else {
            return Ok(());
        };
        let commits: Vec<(i32, i64)> = {
            let state = self.shared.lock();
            state
                .parts
                .iter()
                .filter(|(_, part)| part.committed >= 0)
                .map(|(&p, part)| (p, part.committed))
                .collect()
        };
        let topic = self.topic.clone();
        let shown = self.shown.clone();
        // Not on the runtime's blocking pool: when the broker stopped answering, the engine
        // gives this close up after the shutdown deadline (see `run_on_own_thread`).
        let closed = super::thread::run_on_own_thread("msgio-kafka-close", move || {
            let result = if commits.is_empty() {
                Ok(())
            } else {
                consumer
                    .commit(&commit_list(&topic, &commits), CommitMode::Sync)
                    .map_err(|e| super::error(&shown, e))
            };
            // Dropping the last handle closes the consumer: it leaves the group.
            drop(consumer);
            result
        });
        closed
            .await
            .map_err(|_| Error::other("closing the Kafka consumer panicked or never ran"))?
    }
}

impl KafkaSource {
    /// An error the consumer reported while reading.
    fn consumer_error(&self, e: rdkafka::error::KafkaError) -> Error {
        let error = super::error(&self.shown, e);
        match error {
            Error::Other(e) => Error::other(format!("reading Kafka topic {:?}: {e}", self.topic)),
            lost => lost,
        }
    }
}

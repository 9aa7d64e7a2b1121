//! The server: a consumer in a group, as an engine source.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::encoding::{self, Decoded};
use super::read::Read;
use super::{Redis, StreamOptions, scripts, topic::delayed_key};
use crate::transport::{Delivery, Engine, Settle, Settlement, Source};
use crate::{Error, ServerConfig, log};

/// A server reading a Redis stream as a consumer of a group: the delivery engine over a
/// [`RedisSource`] (see the [module docs](super)). Cloning gives another handle to the same
/// server.
pub type RedisServer = Engine<RedisSource>;

/// Opens a server: checks the options, makes the reading connection, creates the group.
pub(super) async fn server(
    redis: &Redis,
    options: StreamOptions,
    mut config: ServerConfig,
) -> Result<RedisServer, Error> {
    options.validate()?;
    config.validate()?;
    if config.dead_letter.is_none() {
        if let Some(dead) = &options.dead_letter_stream {
            config = config.dead_letter(redis.topic(dead.clone()));
        }
    }
    // The blocking read gets its own connection: a multiplexed one would hold every
    // other command behind it.
    let reader =
        super::manager(&redis.client, &redis.url, Some(options.block + READ_MARGIN)).await?;
    let consumer = options.consumer.clone().unwrap_or_else(unique_consumer);
    let source = RedisSource {
        delayed: delayed_key(&options.stream),
        consumer,
        conn: redis.conn.clone(),
        reader,
        reading: Mutex::new(None),
        lease: Mutex::new(None),
        state: Arc::new(Mutex::new(LocalState {
            redeliver: VecDeque::new(),
            next_claim: Instant::now(),
            claim_cursor: "0-0".to_owned(),
            next_promote: Instant::now(),
            reader_id: None,
            blocked: false,
            own_checked: false,
            in_flight: HashSet::default(),
            unacked: Vec::new(),
        })),
        options,
    };
    source.create_group().await?;
    Engine::new(source, config)
}

impl RedisServer {
    /// The consumer's name in the group.
    pub fn consumer(&self) -> &str {
        &self.source().consumer
    }
}

/// The reader's client id when Redis refused to tell it: nothing to wake.
const NO_CLIENT_ID: i64 = -1;

/// How much longer than the block time a read may take before it counts as lost.
const READ_MARGIN: Duration = Duration::from_secs(5);

fn unique_consumer() -> String {
    format!(
        "msgio-{}-{}",
        std::process::id(),
        &crate::random::hex()[..8]
    )
}

/// Settles a delivery of a [`RedisSource`]: the entry id and which attempt it was.
#[derive(Debug)]
pub struct RedisToken {
    id: EntryId,
    attempt: u32,
}

/// The engine [`Source`] of a [`RedisServer`]: a consumer in a stream's group, reading new
/// entries with `XREADGROUP`, taking back idle ones with `XAUTOCLAIM`, settling with batched
/// `XACK`. Made by [`Redis::server`]; the engine calls its methods, a user never does.
pub struct RedisSource {
    options: StreamOptions,
    delayed: String,
    consumer: String,
    /// Settling, claiming, promoting: short commands, pipelined.
    conn: ConnectionManager,
    /// The blocking `XREADGROUP`, alone on its connection.
    reader: ConnectionManager,
    state: Arc<Mutex<LocalState>>,
    /// The read a stopped fetch left to finish, which [`close`](Source::close) waits for.
    reading: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Keeps what this consumer holds from going idle (see [`RedisSource::start_lease`]).
    lease: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(super) struct LocalState {
    /// Failed attempts to claim back for their next attempt, with that attempt's number.
    redeliver: VecDeque<(EntryId, u32)>,
    next_claim: Instant,
    claim_cursor: String,
    next_promote: Instant,
    /// The reader connection's `CLIENT ID`, to wake a blocked read with `CLIENT UNBLOCK`.
    reader_id: Option<i64>,
    /// Whether a read may be blocked right now.
    blocked: bool,
    /// Whether this consumer's own pending entries were looked through since it started or
    /// last lost its connection: what its name held before a restart, and what Redis
    /// delivered in a reply the lost connection never brought.
    own_checked: bool,
    /// The entries handed to the engine and not settled yet (not to be taken back).
    in_flight: HashSet<EntryId, std::hash::BuildHasherDefault<IdHasher>>,
    /// Acks that failed (Redis was unreachable): entry ids stay valid across connections,
    /// so they go with the next XACK rather than waiting out `min_idle` as redeliveries.
    unacked: Vec<EntryId>,
}

impl fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSource")
            .field("stream", &self.options.stream)
            .field("group", &self.options.group)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl RedisSource {
    fn state(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn create_group(&self) -> Result<(), Error> {
        let result: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.options.stream)
            .arg(&self.options.group)
            .arg(&self.options.start_id)
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(super::error(e)),
        }
    }

    /// Handles a failed command: a missing group (or stream, after a restart of a Redis that
    /// keeps nothing) is created again; a lost connection means the reader's client id and
    /// what this consumer holds must be looked at afresh.
    async fn recover(&self, e: redis::RedisError) -> Result<(), Error> {
        if e.code() == Some("NOGROUP") {
            log::warning!(
                "msgio: group {:?} of stream {:?} is missing; creating it again",
                self.options.group,
                self.options.stream
            );
            return self.create_group().await;
        }
        let error = super::error(e);
        if error.is_connection_lost() {
            self.forget_connection();
        }
        Err(error)
    }

    /// After a lost connection: the reader's client id changed, and a reply the connection
    /// dropped may have delivered entries nothing here holds.
    fn forget_connection(&self) {
        let mut state = self.state();
        state.reader_id = None;
        state.own_checked = false;
    }

    fn delivery(&self, id: EntryId, fields: Value, attempt: u32) -> Delivery<RedisToken> {
        let token = RedisToken { id, attempt };
        let decoded = match fields {
            Value::Array(fields) => encoding::decode(fields),
            Value::Nil => Decoded::Malformed {
                reason: "the entry was deleted from the stream while pending".to_owned(),
                attributes: crate::Attributes::new(),
                body: bytes::Bytes::new(),
            },
            other => Decoded::Malformed {
                reason: format!("unexpected entry layout: {other:?}"),
                attributes: crate::Attributes::new(),
                body: bytes::Bytes::new(),
            },
        };
        let delivery = match decoded {
            Decoded::Ok { attributes, body } => {
                Delivery::new(token, body).with_attributes(attributes)
            }
            Decoded::Malformed {
                reason,
                attributes,
                body,
            } => Delivery::malformed(
                token,
                format!("entry {id} of stream {:?}: {reason}", self.options.stream),
                attributes,
                body,
            ),
        };
        delivery
            .with_message_id(crate::MessageId::pair(id.ms, id.seq))
            .with_attempt(attempt)
    }

    /// Claims back failed attempts for their next attempt.
    async fn redeliver(
        &self,
        batch: Vec<(EntryId, u32)>,
        out: &mut Vec<Delivery<RedisToken>>,
    ) -> Result<(), Error> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.options.stream)
            .arg(&self.options.group)
            .arg(&self.consumer)
            .arg(0);
        for (id, _) in &batch {
            cmd.arg(id);
        }
        let reply: Value = match cmd.query_async(&mut self.conn.clone()).await {
            Ok(v) => v,
            Err(e) => {
                // Put them back for the next fetch (they are still pending either way).
                self.state().redeliver.extend(batch);
                return self.recover(e).await;
            }
        };
        let attempts: HashMap<EntryId, u32> = batch.into_iter().collect();
        for (id, fields) in entries(reply) {
            let attempt = attempts.get(&id).copied().unwrap_or(1);
            out.push(self.delivery(id, fields, attempt));
        }
        Ok(())
    }

    /// Takes back this consumer's own pending entries that nothing here holds: what its name
    /// held before a restart, or what Redis delivered in a reply a lost connection dropped.
    async fn take_back_own(
        &self,
        max: usize,
        out: &mut Vec<Delivery<RedisToken>>,
    ) -> Result<(), Error> {
        let known = {
            let state = self.state();
            state.in_flight.len() + state.redeliver.len()
        };
        let pending: Vec<(EntryId, redis::Value, u64, u32)> = match redis::cmd("XPENDING")
            .arg(&self.options.stream)
            .arg(&self.options.group)
            .arg("-")
            .arg("+")
            .arg(known + max)
            .arg(&self.consumer)
            .query_async(&mut self.conn.clone())
            .await
        {
            Ok(p) => p,
            Err(e) => return self.recover(e).await,
        };
        let complete = pending.len() < known + max;
        let forgotten: Vec<(EntryId, u32)> = {
            let state = self.state();
            pending
                .into_iter()
                .filter(|(id, ..)| {
                    !state.in_flight.contains(id) && !state.redeliver.iter().any(|(r, _)| r == id)
                })
                .take(max)
                .map(|(id, _, _, count)| (id, count.saturating_add(1)))
                .collect()
        };
        let taken = forgotten.len();
        if !forgotten.is_empty() {
            self.redeliver(forgotten, out).await?;
        }
        if complete && taken < max {
            self.state().own_checked = true;
        }
        Ok(())
    }

    /// Takes over entries idle for longer than `min_idle`.
    async fn claim_idle(
        &self,
        max: usize,
        out: &mut Vec<Delivery<RedisToken>>,
    ) -> Result<(), Error> {
        let cursor = self.state().claim_cursor.clone();
        let reply: Value = match scripts::CLAIM
            .key(&self.options.stream)
            .arg(&self.options.group)
            .arg(&self.consumer)
            .arg(self.options.min_idle.as_millis() as u64)
            .arg(&cursor)
            .arg(max)
            .arg(PARKING)
            .invoke_async(&mut self.conn.clone())
            .await
        {
            Ok(v) => v,
            Err(e) => return self.recover(e).await,
        };
        let Value::Array(mut parts) = reply else {
            return Err(Error::other(format!(
                "unexpected XAUTOCLAIM reply: {reply:?}"
            )));
        };
        let more = matches!(parts.pop(), Some(Value::Int(1)));
        let counts = match parts.pop() {
            Some(Value::Array(counts)) => counts,
            _ => Vec::new(),
        };
        let claimed = parts.pop().unwrap_or(Value::Nil);
        let next = parts
            .pop()
            .and_then(string)
            .unwrap_or_else(|| "0-0".to_owned());
        {
            let mut state = self.state();
            // A full pass ends at 0-0: wait an interval before the next one.
            state.next_claim = if next == "0-0" && !more {
                Instant::now() + self.options.claim_interval
            } else {
                Instant::now()
            };
            state.claim_cursor = next;
        }
        let counts = counts
            .into_iter()
            .map(|c| match c {
                Value::Int(n) => u32::try_from(n).unwrap_or(u32::MAX),
                _ => 1,
            })
            .chain(std::iter::repeat(1));
        let claimed: Vec<_> = {
            let state = self.state();
            entries(claimed)
                .into_iter()
                .zip(counts)
                // A receiver here that outlasted min_idle still holds it: claiming it reset
                // its idle time, and a second delivery here would only run it twice at once.
                .filter(|((id, _), _)| !state.in_flight.contains(id))
                .collect()
        };
        for ((id, fields), count) in claimed {
            out.push(self.delivery(id, fields, count));
        }
        Ok(())
    }

    /// Moves due delayed messages into the stream; returns when to look again.
    async fn promote(&self) -> Result<Instant, Error> {
        let reply: Result<(i64, i64), _> = scripts::PROMOTE
            .key(&self.delayed)
            .key(&self.options.stream)
            .arg(PROMOTE_BATCH)
            .invoke_async(&mut self.conn.clone())
            .await;
        let (moved, wait) = reply.map_err(super::error)?;
        let now = Instant::now();
        Ok(if moved >= PROMOTE_BATCH as i64 {
            now
        } else if wait < 0 {
            now + self.options.block
        } else {
            now + Duration::from_millis(wait as u64).min(self.options.block)
        })
    }

    /// Reads new entries, blocking until one arrives or `block` passes.
    ///
    /// The read runs in a task of its own, so that dropping this future (at shutdown) does
    /// not lose what Redis already delivered: the task keeps those entries for
    /// [`close`](Source::close) to hand back.
    async fn read(
        &self,
        max: usize,
        block: Duration,
        out: &mut Vec<Delivery<RedisToken>>,
    ) -> Result<(), Error> {
        let mut reader = self.reader.clone();
        let reader_id = self.state().reader_id;
        if reader_id.is_none() {
            match redis::cmd("CLIENT")
                .arg("ID")
                .query_async::<i64>(&mut reader)
                .await
            {
                Ok(id) => self.state().reader_id = Some(id),
                // Refused (an ACL without CLIENT, say): reads then wait out their block
                // instead of being woken for claimed-back attempts.
                Err(e) if e.code().is_some() => {
                    self.state().reader_id = Some(NO_CLIENT_ID);
                }
                Err(e) => return self.recover(e).await,
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.options.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.options.stream)
            .arg(">");
        self.state().blocked = true;
        let read = Read::new(
            async move { cmd.query_async(&mut reader).await },
            &self.state,
            &self.reading,
            |state, unclaimed| {
                state.blocked = false;
                // Nobody waits any more: keep them to hand back (first attempts).
                for (id, _) in read_entries(unclaimed) {
                    state.redeliver.push_back((id, 1));
                }
            },
        );
        let reply = read.reply().await;
        self.state().blocked = false;
        let reply = match reply {
            Ok(v) => v,
            Err(e) => return self.recover(e).await,
        };
        for (id, fields) in read_entries(reply) {
            out.push(self.delivery(id, fields, 1));
        }
        Ok(())
    }

    /// Acknowledges `ids` and any earlier acks that failed; keeps them for the next try
    /// when this one fails too.
    async fn ack(&self, mut ids: Vec<EntryId>) -> Result<(), Error> {
        ids.append(&mut self.state().unacked);
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.options.stream).arg(&self.options.group);
        for id in &ids {
            cmd.arg(id);
        }
        match cmd.query_async::<Value>(&mut self.conn.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.state().unacked.append(&mut ids);
                Err(super::error(e))
            }
        }
    }

    /// Refreshes, every third of `min_idle`, the idle time of the entries this consumer
    /// holds: those handed to the engine and not settled (running, queued, or a failed
    /// attempt whose retry delay the engine holds) and failed attempts waiting to be
    /// claimed back. A receiver slower than `min_idle`, or a retry delay longer than it,
    /// then never has its entry taken over by another server while this one lives.
    fn start_lease(&self) {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.is_some() {
            return;
        }
        let state = self.state.clone();
        let mut conn = self.conn.clone();
        let (stream, group, consumer) = (
            self.options.stream.clone(),
            self.options.group.clone(),
            self.consumer.clone(),
        );
        let every = (self.options.min_idle / 3).max(Duration::from_millis(1));
        *lease = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let held: Vec<EntryId> = {
                    let state = state.lock().unwrap_or_else(|p| p.into_inner());
                    state
                        .in_flight
                        .iter()
                        .copied()
                        .chain(state.redeliver.iter().map(|(id, _)| *id))
                        .collect()
                };
                if held.is_empty() {
                    continue;
                }
                let mut invocation = scripts::REFRESH.key(&stream);
                invocation.arg(&group).arg(&consumer);
                for id in &held {
                    invocation.arg(id);
                }
                if let Err(e) = invocation.invoke_async::<i64>(&mut conn).await {
                    log::warning!(
                        "msgio: could not refresh the {} entries held on stream {stream:?} ({e}); another consumer may take them over after min_idle",
                        held.len()
                    );
                }
            }
        }));
    }

    /// Wakes a blocked read, so that claimed-back attempts do not wait out the block.
    async fn wake_reader(&self) {
        let id = {
            let state = self.state();
            if !state.blocked {
                return;
            }
            state.reader_id
        };
        if let Some(id) = id.filter(|&id| id != NO_CLIENT_ID) {
            let _: Result<Value, _> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .arg("TIMEOUT")
                .query_async(&mut self.conn.clone())
                .await;
        }
    }
}

/// The consumer holding what servers handed back on shutdown, for running servers to take
/// over at once rather than after `min_idle`.
const PARKING: &str = "msgio:parked";

/// How many delayed messages one promotion moves at most.
const PROMOTE_BATCH: usize = 256;

impl RedisSource {
    /// Fetches, in order of preference: failed attempts to claim back, this consumer's own
    /// forgotten entries, parked or idle entries to take over, new entries.
    async fn fetch_from(
        &self,
        max: usize,
        out: &mut Vec<Delivery<RedisToken>>,
    ) -> Result<(), Error> {
        if !self.state().unacked.is_empty() {
            self.ack(Vec::new()).await?;
        }
        let (redeliver, claim_due, promote_due) = {
            let mut state = self.state();
            let n = max.min(state.redeliver.len());
            let redeliver: Vec<_> = state.redeliver.drain(..n).collect();
            let now = Instant::now();
            (
                redeliver,
                state.next_claim <= now,
                state.next_promote <= now,
            )
        };
        if !redeliver.is_empty() {
            return self.redeliver(redeliver, out).await;
        }
        if !self.state().own_checked {
            let before = out.len();
            self.take_back_own(max, out).await?;
            if out.len() > before {
                return Ok(());
            }
        }
        if claim_due {
            let before = out.len();
            self.claim_idle(max, out).await?;
            if out.len() > before {
                return Ok(());
            }
        }
        if promote_due {
            let next = self.promote().await?;
            self.state().next_promote = next;
        }
        // Block no longer than until the next takeover pass or delayed message is due.
        let next_timer = {
            let state = self.state();
            state.next_claim.min(state.next_promote)
        };
        let block = next_timer
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), self.options.block);
        self.read(max, block, out).await
    }
}

impl Source for RedisSource {
    type Token = RedisToken;

    fn name(&self) -> &str {
        &self.options.stream
    }

    /// `XREADGROUP` reads by count, whatever is pending.
    fn stops_at_in_flight_limit(&self) -> bool {
        false
    }

    fn nack_delay(&self) -> bool {
        // The entry stays pending while the engine waits out the delay.
        false
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<RedisToken>>) -> Result<(), Error> {
        self.start_lease();
        let before = out.len();
        let result = self.fetch_from(max.max(1), out).await;
        if out.len() > before {
            let mut state = self.state();
            for delivery in &out[before..] {
                state.in_flight.insert(delivery.token.id);
            }
        }
        result
    }

    async fn settle(&self, batch: &mut Vec<Settlement<RedisToken>>) -> Result<(), Error> {
        let mut acks = Vec::new();
        let mut requeued = false;
        {
            let mut state = self.state();
            for settlement in batch.drain(..) {
                let RedisToken { id, attempt } = settlement.token;
                state.in_flight.remove(&id);
                let next = match settlement.action {
                    Settle::Ack | Settle::Reject | Settle::DeadLetter { .. } => {
                        acks.push(id);
                        continue;
                    }
                    Settle::Nack { .. } => attempt.saturating_add(1),
                    // Not an attempt of its own.
                    _ => attempt,
                };
                state.redeliver.push_back((id, next));
                requeued = true;
            }
        }
        if requeued {
            self.wake_reader().await;
        }
        self.ack(acks).await
    }

    async fn reconnect(&self) -> Result<(), Error> {
        self.forget_connection();
        let _: Value = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(super::error)?;
        let _: Value = redis::cmd("PING")
            .query_async(&mut self.reader.clone())
            .await
            .map_err(super::error)?;
        self.create_group().await
    }

    async fn close(&self) -> Result<(), Error> {
        if let Some(lease) = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take() {
            lease.abort();
        }
        // A read cut short by shutdown may still bring entries: wake it and wait for them.
        let reading = self
            .reading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reading) = reading {
            self.wake_reader().await;
            let _ = tokio::time::timeout(self.options.block + READ_MARGIN, reading).await;
        }
        if let Err(e) = self.ack(Vec::new()).await {
            log::warning!(
                "msgio: {} acks on stream {:?} could not be applied ({e}); the entries will be redelivered",
                self.state().unacked.len(),
                self.options.stream
            );
        }
        // Failed and released attempts still pending here: park them for the other
        // servers, their next attempt number kept as the delivery count.
        let parked: Vec<(EntryId, u32)> = self.state().redeliver.drain(..).collect();
        if !parked.is_empty() {
            let mut pipe = redis::pipe();
            for (id, next) in &parked {
                pipe.cmd("XCLAIM")
                    .arg(&self.options.stream)
                    .arg(&self.options.group)
                    .arg(PARKING)
                    .arg(0)
                    .arg(id)
                    .arg("RETRYCOUNT")
                    .arg(next.saturating_sub(1))
                    .arg("JUSTID")
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(super::error)?;
        }
        let _: i64 = scripts::LEAVE
            .key(&self.options.stream)
            .arg(&self.options.group)
            .arg(&self.consumer)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(super::error)?;
        Ok(())
    }
}

/// The `(id, fields)` pairs of an XREADGROUP reply: `[[stream, [[id, fields], ...]]]`, or
/// nil when the block timed out.
fn read_entries(reply: Value) -> Vec<(EntryId, Value)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .flat_map(|stream| match stream {
            Value::Array(mut pair) => pair.pop().map(entries).unwrap_or_default(),
            _ => Vec::new(),
        })
        .collect()
}

/// The `(id, fields)` pairs of an entry list.
fn entries(list: Value) -> Vec<(EntryId, Value)> {
    let Value::Array(list) = list else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|entry| {
            let Value::Array(mut pair) = entry else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = EntryId::parse(&string(pair.pop()?)?)?;
            Some((id, fields))
        })
        .collect()
}

fn string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A stream entry id, `<ms>-<seq>`: copied and hashed without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl EntryId {
    /// Writes `<ms>-<seq>` into `buf` (without the formatting machinery: this runs for
    /// every message, in its `XACK`).
    fn write<'a>(&self, buf: &'a mut [u8; 41]) -> &'a str {
        fn digits(mut n: u64, out: &mut [u8]) -> usize {
            let mut tmp = [0u8; 20];
            let mut i = tmp.len();
            loop {
                i -= 1;
                tmp[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let len = tmp.len() - i;
            out[..len].copy_from_slice(&tmp[i..]);
            len
        }
        let mut len = digits(self.ms, &mut buf[..]);
        buf[len] = b'-';
        len += 1;
        len += digits(self.seq, &mut buf[len..]);
        std::str::from_utf8(&buf[..len]).expect("ASCII digits")
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write(&mut [0; 41]))
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.write(&mut [0; 41]).as_bytes());
    }
}

/// Hashes entry ids (for the set of those in flight) with one multiply: the set is small
/// and bounded by the concurrency, so a cheap hash cannot be turned against it.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl redis::FromRedisValue for EntryId {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        string(v)
            .as_deref()
            .and_then(EntryId::parse)
            .ok_or_else(|| "not a stream entry id".into())
    }
}

#[cfg(test)]
mod tests {
    use super::EntryId;

    #[test]
    fn entry_ids_parse_and_print_back() {
        for id in [
            "0-0",
            "1-2",
            "1795646393672-0",
            "18446744073709551615-18446744073709551615",
        ] {
            let parsed = EntryId::parse(id).unwrap();
            assert_eq!(parsed.to_string(), id);
        }
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "18446744073709551616-0",
        ] {
            assert_eq!(EntryId::parse(bad), None, "{bad:?}");
        }
    }
}

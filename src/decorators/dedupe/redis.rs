//! The Redis [`DedupeStore`]: `SET NX PX` claims, shared by every consumer.

use std::fmt;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{Claim, DedupeStore};
use crate::Error;
use crate::redis::error as redis_error;

const CLAIMED: &str = "claimed";
const DONE: &str = "done";

/// A [`DedupeStore`] in Redis, so that consumers on several machines dedupe together:
/// a claim is `SET key claimed NX PX ttl`, done is `SET key done PX ttl`, and releasing
/// deletes the key only while it is still a claim.
///
/// ```no_run
/// use msgio::decorators::{Dedupe, RedisDedupeStore};
/// use msgio::{Context, Message, ReceiverFunc};
///
/// # #[allow(dead_code)]
/// # async fn demo() -> Result<(), msgio::Error> {
/// let store = RedisDedupeStore::connect("redis://127.0.0.1:6379").await?;
/// let receiver = Dedupe::new(
///     ReceiverFunc::new(|_: Context, _: Message| async { Ok(()) }),
///     store,
/// );
/// # let _ = receiver;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDedupeStore {
    conn: MultiplexedConnection,
    prefix: String,
    url: String,
}

impl fmt::Debug for RedisDedupeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupeStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisDedupeStore {
    /// Connects to the Redis at `url` (its password never shows in errors or `Debug`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a malformed URL, [`Error::ConnectionLost`] when Redis
    /// does not answer.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (client, shown) = crate::redis::client(url)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| {
                Error::connection_lost(format!("cannot connect to Redis at {shown}: {e}"))
            })?;
        Ok(RedisDedupeStore {
            conn,
            prefix: "msgio:dedupe:".to_owned(),
            url: shown,
        })
    }

    /// A store over a connection you made.
    pub fn new(conn: MultiplexedConnection) -> Self {
        RedisDedupeStore {
            conn,
            prefix: "msgio:dedupe:".to_owned(),
            url: "(given connection)".to_owned(),
        }
    }

    /// Prefixes every key (default `msgio:dedupe:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl DedupeStore for RedisDedupeStore {
    /// The full Redis key.
    type Claimed = String;

    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim<String>, Error> {
        let key = self.key(key);
        let mut conn = self.conn.clone();
        // Twice at most: a key that expires between SET NX and GET is claimed again.
        for _ in 0..2 {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(CLAIMED)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if set.is_some() {
                return Ok(Claim::Acquired(key));
            }
            let state: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            match state.as_deref() {
                Some(DONE) => return Ok(Claim::Done),
                Some(_) => return Ok(Claim::InProgress),
                None => {}
            }
        }
        Ok(Claim::InProgress)
    }

    async fn complete(&self, key: String, ttl: Duration) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(DONE)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn release(&self, key: String) -> Result<(), Error> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut conn = self.conn.clone();
        script
            .key(key)
            .arg(CLAIMED)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(redis_error)
    }
}

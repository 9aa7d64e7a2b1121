//! The topic: `XADD`, or the delayed set for a writer with a delay.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::ConnectionManager;

use super::{encoding, scripts};
use crate::transport::{BufferedWriter, Outgoing, Sender, SenderPublisher, SenderTopic, send_each};
use crate::{Context, Error};

/// A topic adding messages to a Redis stream (see the [module docs](super) for the
/// layout): a [`SenderTopic`] over a [`RedisSender`]. Cloning shares the connection;
/// concurrent writers pipeline on it.
pub type RedisTopic = SenderTopic<RedisSender>;

/// The writer of a [`RedisTopic`]: closing it returns once Redis stored the message.
pub type RedisWriter = BufferedWriter<RedisPublisher>;

/// Sends the messages of a [`RedisWriter`].
pub type RedisPublisher = SenderPublisher<RedisSender>;

/// Adds whole messages to a Redis stream (`XADD`), or to its delayed set when they have a
/// delay: the [`Sender`] of a [`RedisTopic`].
pub struct RedisSender {
    conn: ConnectionManager,
    stream: String,
    delayed: String,
    max_len: Option<usize>,
    nonce: AtomicU64,
}

impl fmt::Debug for RedisSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTopic")
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl RedisSender {
    fn new(conn: ConnectionManager, stream: String, max_len: Option<usize>) -> Self {
        RedisSender {
            conn,
            delayed: delayed_key(&stream),
            stream,
            max_len,
            nonce: AtomicU64::new(crate::random::u64()),
        }
    }
}

impl RedisTopic {
    pub(super) fn open(conn: ConnectionManager, stream: String) -> Self {
        SenderTopic::new(RedisSender::new(conn, stream, None))
    }

    /// Keeps the stream to about `entries` entries (`XADD MAXLEN ~`): Redis trims whole
    /// nodes, so the stream may hold a little more. Entries trimmed before a consumer
    /// group read them are lost to it: size this above the backlog you expect.
    pub fn max_len(self, entries: usize) -> Self {
        let sender = self.sender();
        SenderTopic::new(RedisSender::new(
            sender.conn.clone(),
            sender.stream.clone(),
            Some(entries),
        ))
    }

    /// The stream this topic adds to.
    pub fn stream(&self) -> &str {
        &self.sender().stream
    }
}

/// The sorted set holding `stream`'s delayed messages.
pub(super) fn delayed_key(stream: &str) -> String {
    format!("{stream}:delayed")
}

impl RedisSender {
    /// The `XADD` of one message.
    fn xadd(&self, attributes: &crate::Attributes, body: &[u8]) -> redis::Cmd {
        encoding::xadd(&self.stream, self.max_len, attributes, body)
    }
}

impl Sender for RedisSender {
    /// One pipeline of `XADD`s, one round trip, for a batch without delays (a batch with a
    /// delayed message goes one message at a time).
    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        if messages.iter().any(Outgoing::is_delayed) {
            return send_each(self, ctx, messages).await;
        }
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for message in &messages {
            pipe.add_command(self.xadd(&message.attributes, &message.body));
        }
        let mut conn = self.conn.clone();
        let send = async {
            let replies = conn
                .send_packed_commands(&pipe, 0, messages.len())
                .await
                .map_err(super::error)?;
            for reply in replies {
                reply.extract_error().map_err(super::error)?;
            }
            Ok(())
        };
        ctx.unless_cancelled(send).await
    }

    /// Adds one message to the stream, or to the delayed set when it has a delay.
    async fn send(&self, ctx: &Context, message: Outgoing) -> Result<(), Error> {
        let Outgoing {
            attributes,
            body,
            delay,
            ..
        } = message;
        let (attributes, body) = (&attributes, &body[..]);
        let mut conn = self.conn.clone();
        match delay.filter(|d| !d.is_zero()) {
            None => {
                let cmd = self.xadd(attributes, body);
                // The connection's own method rather than `query_async`, which boxes the
                // command's future: one allocation less a message. An error reply comes
                // back as a value here, hence `extract_error`.
                let send = async {
                    conn.send_packed_command(&cmd)
                        .await
                        .and_then(redis::Value::extract_error)
                        .map(drop)
                        .map_err(super::error)
                };
                ctx.unless_cancelled(send).await
            }
            Some(delay) => {
                let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
                let member = encoding::delayed_member(nonce, self.max_len, attributes, body)?;
                let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
                let send = async {
                    scripts::DELAY
                        .key(&self.delayed)
                        .arg(ms)
                        .arg(member)
                        .invoke_async::<redis::Value>(&mut conn)
                        .await
                        .map(drop)
                        .map_err(super::error)
                };
                ctx.unless_cancelled(send).await
            }
        }
    }
}

//! Settings of an engine-backed server.

use std::time::Duration;

use crate::{Backoff, BoxTopic, Error, Topic};

/// How a server built on the [`Engine`](super::Engine) serves: concurrency, attempts,
/// dead-lettering, batching, reconnection and shutdown.
///
/// Setters chain; the values are checked when the server is built, which names the first
/// one out of range.
///
/// ```
/// use msgio::ServerConfig;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), msgio::Error> {
/// let (dead_letters, _) = msgio::mem::channel(16)?;
/// let config = ServerConfig::new()
///     .concurrency(32)
///     .max_attempts(5)
///     .dead_letter(dead_letters)
///     .ack_interval(Duration::from_millis(2));
/// let (_topic, _server) = msgio::mem::channel_with(1024, config)?;
///
/// let bad = msgio::mem::channel_with(16, ServerConfig::new().concurrency(0));
/// assert!(bad.unwrap_err().to_string().contains("concurrency"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) concurrency: usize,
    pub(crate) prefetch: Option<usize>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) dead_letter: Option<BoxTopic>,
    pub(crate) ack_batch_size: usize,
    pub(crate) ack_interval: Duration,
    pub(crate) settle_retries: u32,
    pub(crate) reconnect: Backoff,
    pub(crate) cancel_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            concurrency: 64,
            prefetch: None,
            max_attempts: Some(10),
            dead_letter: None,
            ack_batch_size: 128,
            ack_interval: Duration::from_millis(5),
            settle_retries: 3,
            reconnect: Backoff::default(),
            cancel_grace: Duration::from_secs(1),
        }
    }
}

impl ServerConfig {
    /// The defaults: concurrency 64, prefetch equal to the concurrency, 10 attempts, no
    /// dead-letter topic, settlements batched by 128 (at most half the in-flight limit on a
    /// source that stops delivering there: RabbitMQ, and any transport that does not say
    /// otherwise) or every 5 ms, reconnect backoff from 100 ms doubling to 30 s, and
    /// 1 s for receivers to stop after a shutdown deadline cancelled them.
    pub fn new() -> Self {
        ServerConfig::default()
    }

    /// How many messages are handed to the receiver at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How many messages are fetched ahead, beyond those in flight (default: as many as the
    /// concurrency).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// The number of attempts after which a failing message is dead-lettered (or, with no
    /// dead-letter topic, rejected at the source with a warning). At least 1.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Retries failing messages for ever. Only for receivers whose failures always pass.
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// The topic that receives rejected messages and those out of attempts, with the reason,
    /// attempt count, source and message id in [`keys`](crate::keys) attributes.
    ///
    /// When publishing to it fails (or the topic panics), the message is not lost: it goes
    /// back to its source and is tried again after the first delay of the
    /// [reconnect backoff](Self::reconnect_backoff).
    pub fn dead_letter<T>(mut self, topic: T) -> Self
    where
        T: Topic + 'static,
        T::Writer: 'static,
    {
        self.dead_letter = Some(BoxTopic::new(topic));
        self
    }

    /// Settlements are applied as soon as this many are waiting. On a broker that stops
    /// delivering once the [in-flight limit](Self::in_flight_limit) of messages is
    /// unacknowledged (RabbitMQ, whose prefetch count is that limit), as soon as half the
    /// limit is waiting if that is fewer: the broker would otherwise hold back the next
    /// deliveries while a batch that cannot fill waits out the
    /// [interval](Self::ack_interval). A RabbitMQ server with concurrency 1 acknowledges
    /// each message when it is done.
    pub fn ack_batch_size(mut self, n: usize) -> Self {
        self.ack_batch_size = n;
        self
    }

    /// Settlements wait at most this long for a batch to fill (zero: never wait).
    pub fn ack_interval(mut self, interval: Duration) -> Self {
        self.ack_interval = interval;
        self
    }

    /// How often a failed settlement is tried again before it is left to the broker's
    /// redelivery.
    pub fn settle_retries(mut self, n: u32) -> Self {
        self.settle_retries = n;
        self
    }

    /// The backoff between attempts to reconnect, and between failed fetches.
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect = backoff;
        self
    }

    /// After a shutdown deadline cancels the receivers' contexts, how long they get to
    /// return before they are abandoned and their messages left for redelivery. The
    /// source's close (a last commit, leaving a consumer group) gets as long once the
    /// deadline has passed, then is given up, so that `shutdown` returns even when the
    /// broker stopped answering. Default 1 s.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// How many messages are handed to the receiver at once (set by
    /// [`concurrency`](Self::concurrency)).
    ///
    /// ```
    /// let config = msgio::ServerConfig::new().concurrency(8);
    /// assert_eq!(config.concurrency_limit(), 8);
    /// ```
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency
    }

    /// The most attempts a message gets (set by [`max_attempts`](Self::max_attempts);
    /// `None`: unlimited).
    pub fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// How many deliveries a server may hold at once: the concurrency plus the prefetch.
    /// For a transport whose broker takes a prefetch count (AMQP's QoS, a pull batch):
    /// the engine never asks for more than this.
    ///
    /// ```
    /// let config = msgio::ServerConfig::new().concurrency(8).prefetch(24);
    /// assert_eq!(config.in_flight_limit(), 32);
    /// assert_eq!(msgio::ServerConfig::new().concurrency(8).in_flight_limit(), 16);
    /// ```
    pub fn in_flight_limit(&self) -> usize {
        self.concurrency.saturating_add(self.prefetch_or_default())
    }

    /// The first name of [`concurrency_limit`](Self::concurrency_limit).
    #[doc(hidden)]
    #[deprecated(since = "0.1.0", note = "renamed `concurrency_limit`")]
    pub fn get_concurrency(&self) -> usize {
        self.concurrency_limit()
    }

    /// The first name of [`attempt_limit`](Self::attempt_limit).
    #[doc(hidden)]
    #[deprecated(since = "0.1.0", note = "renamed `attempt_limit`")]
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.attempt_limit()
    }

    /// The settlements a batch waits for: [`ack_batch_size`](Self::ack_batch_size); for a
    /// source whose broker stops delivering at the in-flight limit
    /// ([`Source::stops_at_in_flight_limit`](crate::transport::Source::stops_at_in_flight_limit)),
    /// at most half that limit (and at least one).
    pub(crate) fn settle_batch_size(&self, stops_at_in_flight_limit: bool) -> usize {
        if stops_at_in_flight_limit {
            self.ack_batch_size.min((self.in_flight_limit() / 2).max(1))
        } else {
            self.ack_batch_size
        }
    }

    pub(crate) fn prefetch_or_default(&self) -> usize {
        self.prefetch.unwrap_or(self.concurrency)
    }

    /// Checks every value, naming the first that is out of range.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        const MAX_CONCURRENCY: usize = 1 << 20;
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(Error::invalid_config(
                "concurrency",
                format!(
                    "{} is not between 1 and {MAX_CONCURRENCY}",
                    self.concurrency
                ),
            ));
        }
        if self.prefetch_or_default() > MAX_CONCURRENCY {
            return Err(Error::invalid_config(
                "prefetch",
                format!("{} is above {MAX_CONCURRENCY}", self.prefetch_or_default()),
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::invalid_config(
                "max_attempts",
                "must be at least 1 (use unlimited_attempts() to retry for ever)",
            ));
        }
        if self.ack_batch_size == 0 {
            return Err(Error::invalid_config(
                "ack_batch_size",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

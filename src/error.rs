//! The one error type of the crate.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

/// A boxed error from a receiver, a transport or a user callback.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The error type of every fallible operation in msgio.
///
/// Besides reporting failures, an `Error` returned by a [`Receiver`](crate::Receiver) decides
/// the fate of the message it was given:
///
/// | returned | fate |
/// |---|---|
/// | `Ok(())` | acknowledged |
/// | [`Error::reject`] | never retried: dead-lettered when the server has a dead-letter topic, otherwise dropped with a warning |
/// | [`Error::retry_after`] | retried once the delay has passed |
/// | any other error (including a caught panic) | retried at once, until the server's maximum attempts |
///
/// # Examples
///
/// ```
/// use msgio::Error;
/// use std::time::Duration;
///
/// let malformed = Error::reject("order has no id");
/// assert!(malformed.is_reject());
///
/// let busy = Error::retry_after(Duration::from_secs(1), "inventory service busy");
/// assert_eq!(busy.retry_delay(), Some(Duration::from_secs(1)));
///
/// let io = Error::from(std::io::Error::other("disk full"));
/// assert!(!io.is_reject());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server was shut down; `serve` returns this once it has stopped, and any later
    /// call to `serve` returns it at once (go-msg's `ErrServerClosed`).
    #[error("msgio: server closed")]
    ServerClosed,

    /// A [`MessageWriter`](crate::MessageWriter) was written to or closed after it was closed
    /// (go-msg's `ErrClosedMessageWriter`).
    #[error("msgio: message writer closed")]
    ClosedMessageWriter,

    /// `serve` was called while the same server was already serving.
    #[error("msgio: server is already serving; a server serves one receiver at a time")]
    AlreadyServing,

    /// The shutdown deadline passed before every in-flight message finished; their contexts
    /// were cancelled.
    #[error("msgio: shutdown deadline passed before in-flight messages finished")]
    DeadlineExceeded,

    /// The operation was cancelled through its [`Context`](crate::Context).
    #[error("msgio: cancelled")]
    Cancelled,

    /// An attribute key or value that the target cannot carry.
    #[error("msgio: invalid attribute {key:?}: {reason}")]
    InvalidAttribute {
        /// The key as given (truncated to 64 characters).
        key: String,
        /// What was wrong with the key or its value.
        reason: String,
    },

    /// A body was longer than the limit given for reading it into memory.
    #[error("msgio: body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// A configuration value was out of range.
    #[error("msgio: invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The setting that was wrong.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A receiver panicked; the panic was caught and the message counts as a retryable failure.
    #[error("msgio: receiver panicked: {message}")]
    Panicked {
        /// The panic's message (`&str` or `String` payloads), or a note that it had another type.
        message: String,
    },

    /// The receiver rejected the message: it is never retried.
    #[error("msgio: message rejected: {0}")]
    Rejected(#[source] BoxError),

    /// The receiver asked for the message to be retried after a delay.
    #[error("msgio: retry in {delay:?}: {source}")]
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// Why the attempt failed.
        #[source]
        source: BoxError,
    },

    /// An I/O error while reading a body or writing a message.
    #[error("msgio: i/o error: {0}")]
    Io(#[source] io::Error),

    /// The connection to the broker was lost; the engine reconnects.
    #[error("msgio: connection lost: {0}")]
    ConnectionLost(#[source] BoxError),

    /// Any other failure, from a receiver or a transport.
    #[error("{0}")]
    Other(#[source] BoxError),
}

impl Error {
    /// An error that rejects the message: it is not retried, and goes to the dead-letter topic
    /// when the server has one.
    pub fn reject(reason: impl Into<BoxError>) -> Self {
        Error::Rejected(reason.into())
    }

    /// An error that asks for the message to be retried once `delay` has passed.
    pub fn retry_after(delay: Duration, reason: impl Into<BoxError>) -> Self {
        Error::Retry {
            delay,
            source: reason.into(),
        }
    }

    /// Wraps any error as a plain, retryable failure.
    pub fn other(error: impl Into<BoxError>) -> Self {
        Error::Other(error.into())
    }

    /// A lost connection: a source that returns this from `fetch` is reconnected by the engine.
    pub fn connection_lost(error: impl Into<BoxError>) -> Self {
        Error::ConnectionLost(error.into())
    }

    /// Whether this error rejects the message (it will not be retried).
    pub fn is_reject(&self) -> bool {
        matches!(self, Error::Rejected(_))
    }

    /// The delay the receiver asked for before the next attempt, if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self {
            Error::Retry { delay, .. } => Some(*delay),
            _ => None,
        }
    }

    /// Whether this error reports a lost connection.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::ConnectionLost(_))
    }

    pub(crate) fn invalid_attribute(key: &str, reason: impl Into<String>) -> Self {
        Error::InvalidAttribute {
            key: truncate(key, 64),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// Wraps this error into an `io::Error`, so that `From<io::Error>` can get it back.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

/// An `io::Error` that carries a msgio [`Error`] (as `AsyncWrite` methods must return one)
/// gives that error back; any other becomes [`Error::Io`].
///
/// ```
/// use futures::io::AsyncWriteExt;
/// # futures::executor::block_on(async {
/// let (topic, _server) = msgio::mem::channel(8)?;
/// # use msgio::Topic;
/// let mut writer = topic.new_writer(&msgio::Context::background())?;
/// writer.close().await?;
/// let err = writer.write_all(b"late").await.unwrap_err();
/// assert!(matches!(msgio::Error::from(err), msgio::Error::ClosedMessageWriter));
/// # Ok::<(), msgio::Error>(())
/// # }).unwrap();
/// ```
impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match err.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(inner)) => return *inner,
                _ => unreachable!("checked above that the io::Error carries a msgio::Error"),
            }
        }
        Error::Io(err)
    }
}

/// Truncates `s` to at most `max` characters, marking the cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_the_msgio_error() {
        let io = Error::ClosedMessageWriter.into_io();
        assert!(matches!(Error::from(io), Error::ClosedMessageWriter));
        let plain = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert!(
            matches!(Error::from(plain), Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
    }

    #[test]
    fn fates_are_readable() {
        assert!(Error::reject("bad").is_reject());
        assert!(!Error::other("x").is_reject());
        assert_eq!(Error::other("x").retry_delay(), None);
        assert!(Error::connection_lost("reset").is_connection_lost());
    }

    #[test]
    fn invalid_attribute_names_the_key() {
        let e = Error::invalid_attribute("X-Key", "value contains a line feed");
        assert_eq!(
            e.to_string(),
            "msgio: invalid attribute \"X-Key\": value contains a line feed"
        );
        let long = "k".repeat(100);
        let Error::InvalidAttribute { key, .. } = Error::invalid_attribute(&long, "r") else {
            unreachable!()
        };
        assert_eq!(key.chars().count(), 65);
    }
}

//! The connection a server pulls its messages on. It speaks the NATS protocol itself
//! ([`wire`](super::wire)) rather than through the client library, which resets its
//! connection on a header block it cannot read: one such message, published by any
//! client, would otherwise take every message fetched with it down, again at each
//! redelivery. Here it is a malformed delivery like any other.
//!
//! Acknowledgements do not go through this connection: they are publications to each
//! message's reply subject, sent on the shared client connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::wire::{self, ServerOp};
use crate::Error;

/// How long connecting and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The subscription id of the pull inbox.
const SID: u64 = 1;

/// Where the server is and how to log in: taken from the connection URL once.
#[derive(Clone)]
pub(super) struct Endpoint {
    /// `host:port` of each server, tried in turn.
    pub(super) servers: Vec<String>,
    pub(super) auth: Auth,
    /// The URL as it may be shown.
    pub(super) shown: String,
    /// Whether the URL asks for TLS (`tls://`), which the pull connection does not speak.
    pub(super) tls: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// How to log in.
#[derive(Clone)]
pub(super) enum Auth {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

/// Something from the reader task.
pub(super) enum Incoming {
    Message(wire::Msg),
    /// The connection is gone, and why.
    Lost(String),
}

/// An open pull connection: a subscription on its own inbox, a reader task feeding what
/// arrives on it to [`PullConnection::next`], and the pull requests sent.
pub(super) struct PullConnection {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    reader: JoinHandle<()>,
    inbox: String,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    next_subject: String,
    /// Messages asked for that have not come yet.
    pub(super) outstanding: usize,
    /// When the server was last heard from, in milliseconds since `opened`.
    heard: Arc<AtomicU64>,
    opened: Instant,
}

impl Drop for PullConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PullConnection {
    /// Connects to the first server of `endpoint` that answers, logs in and subscribes to
    /// a new inbox.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] when no server answers or the login is refused (neither
    /// shows a secret); [`Error::InvalidConfig`] for a server that requires TLS.
    pub(super) async fn open(endpoint: &Endpoint, next_subject: String) -> Result<Self, Error> {
        let mut last = None;
        for server in &endpoint.servers {
            match tokio::time::timeout(
                CONNECT_TIMEOUT,
                Self::open_one(server, endpoint, &next_subject),
            )
            .await
            {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::connection_lost(format!(
                        "no answer from the NATS server at {server} in {CONNECT_TIMEOUT:?}"
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::connection_lost(format!("no NATS server in {}", endpoint.shown))
        }))
    }

    async fn open_one(
        server: &str,
        endpoint: &Endpoint,
        next_subject: &str,
    ) -> Result<Self, Error> {
        let lost = |what: &str, e: &dyn std::fmt::Display| {
            Error::connection_lost(format!("pulling from NATS at {server}: {what}: {e}"))
        };
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| lost("cannot connect", &e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| lost("cannot connect", &e))?;
        let (mut read, mut write) = stream.into_split();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        // The server speaks first.
        let info = match read_op(&mut read, &mut buf, 1 << 20).await? {
            ServerOp::Info(json) => json,
            other => return Err(lost("expected INFO", &format!("{other:?}"))),
        };
        let info: serde_json::Value =
            serde_json::from_slice(&info).map_err(|e| lost("an INFO that is not JSON", &e))?;
        if info["tls_required"].as_bool() == Some(true) {
            return Err(Error::invalid_config(
                "nats url",
                format!(
                    "the NATS server at {server} requires TLS, which the msgio NATS server does not speak yet"
                ),
            ));
        }
        if info["headers"].as_bool() == Some(false) {
            return Err(lost(
                "the server",
                &"does not support headers (NATS 2.2 or later needed)",
            ));
        }
        let max_payload = info["max_payload"].as_u64().unwrap_or(1 << 20);
        // A stored message is at most max_payload; leave room for what JetStream adds.
        let max_size = usize::try_from(max_payload)
            .unwrap_or(usize::MAX / 4)
            .saturating_mul(2)
            .saturating_add(64 * 1024);
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": "msgio pull",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": false,
            "headers": true,
            "no_responders": true,
        });
        match &endpoint.auth {
            Auth::None => {}
            Auth::UserPassword { user, password } => {
                connect["user"] = user.as_str().into();
                connect["pass"] = password.as_str().into();
            }
            Auth::Token(token) => connect["auth_token"] = token.as_str().into(),
        }
        let inbox = format!(
            "_INBOX.msgio.{}{}",
            crate::random::hex(),
            crate::random::hex()
        );
        let handshake = format!("CONNECT {connect}\r\nPING\r\n");
        write
            .write_all(handshake.as_bytes())
            .await
            .map_err(|e| lost("cannot log in", &e))?;
        loop {
            match read_op(&mut read, &mut buf, max_size).await? {
                ServerOp::Pong => break,
                ServerOp::Err(e) => {
                    // The server's words, which never quote the credentials.
                    return Err(Error::connection_lost(format!(
                        "the NATS server at {server} refused the connection: {e}"
                    )));
                }
                _ => {}
            }
        }
        write
            .write_all(format!("SUB {inbox} {SID}\r\n").as_bytes())
            .await
            .map_err(|e| lost("cannot subscribe", &e))?;
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let (tx, incoming) = mpsc::unbounded_channel();
        let heard = Arc::new(AtomicU64::new(0));
        let opened = Instant::now();
        let reader = tokio::spawn(read_loop(
            read,
            buf,
            max_size,
            writer.clone(),
            tx,
            heard.clone(),
            opened,
        ));
        Ok(PullConnection {
            writer,
            incoming,
            reader,
            inbox,
            next_subject: next_subject.to_owned(),
            outstanding: 0,
            heard,
            opened,
        })
    }

    /// Asks for `batch` more messages, for at most `expires`, with idle heartbeats every
    /// `heartbeat`.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] when the request cannot be sent.
    pub(super) async fn request(
        &mut self,
        batch: usize,
        expires: Duration,
        heartbeat: Duration,
    ) -> Result<(), Error> {
        let body = format!(
            "{{\"batch\":{batch},\"expires\":{},\"idle_heartbeat\":{}}}",
            expires.as_nanos(),
            heartbeat.as_nanos()
        );
        let frame = format!(
            "PUB {} {} {}\r\n{body}\r\n",
            self.next_subject,
            self.inbox,
            body.len()
        );
        self.writer
            .lock()
            .await
            .write_all(frame.as_bytes())
            .await
            .map_err(|e| Error::connection_lost(format!("sending a pull request: {e}")))?;
        self.outstanding = self.outstanding.saturating_add(batch);
        Ok(())
    }

    /// The next thing that arrived, waiting until `deadline` at most.
    pub(super) async fn next(&mut self, deadline: Instant) -> Option<Incoming> {
        match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
            Ok(Some(incoming)) => Some(incoming),
            Ok(None) => Some(Incoming::Lost("the reader stopped".into())),
            Err(_) => None,
        }
    }

    /// The next thing that arrived, if something did.
    pub(super) fn try_next(&mut self) -> Option<Incoming> {
        match self.incoming.try_recv() {
            Ok(incoming) => Some(incoming),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                Some(Incoming::Lost("the reader stopped".into()))
            }
        }
    }

    /// How long the server has said nothing.
    pub(super) fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(heard)
    }

    /// Closes the connection; the server drops its pull requests with it.
    pub(super) async fn close(self) {
        let mut writer = self.writer.lock().await;
        let _ = writer
            .write_all(format!("UNSUB {SID}\r\n").as_bytes())
            .await;
        let _ = writer.shutdown().await;
    }
}

/// Reads one operation during the handshake.
async fn read_op(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<ServerOp, Error> {
    loop {
        if let Some(op) =
            wire::parse_op(buf, max_size).map_err(|e| Error::connection_lost(e.to_string()))?
        {
            return Ok(op);
        }
        let n = read
            .read_buf(buf)
            .await
            .map_err(|e| Error::connection_lost(format!("reading from NATS: {e}")))?;
        if n == 0 {
            return Err(Error::connection_lost(
                "the NATS server closed the connection",
            ));
        }
    }
}

/// Reads what the server sends until the connection ends: messages on the inbox go to
/// `tx`, pings are answered.
async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    max_size: usize,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    tx: mpsc::UnboundedSender<Incoming>,
    heard: Arc<AtomicU64>,
    opened: Instant,
) {
    let why = loop {
        loop {
            match wire::parse_op(&mut buf, max_size) {
                Ok(Some(ServerOp::Msg(msg))) => {
                    if msg.sid == SID && tx.send(Incoming::Message(msg)).is_err() {
                        return;
                    }
                }
                Ok(Some(ServerOp::Ping)) => {
                    if let Err(e) = writer.lock().await.write_all(b"PONG\r\n").await {
                        let _ = tx.send(Incoming::Lost(format!("answering a ping: {e}")));
                        return;
                    }
                }
                Ok(Some(ServerOp::Err(e))) => {
                    break_with(&tx, format!("the NATS server said: {e}"));
                    return;
                }
                Ok(Some(ServerOp::Pong | ServerOp::Ok | ServerOp::Info(_))) => {}
                Ok(None) => break,
                Err(e) => {
                    break_with(&tx, e.to_string());
                    return;
                }
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => break "the NATS server closed the connection".to_owned(),
            Ok(_) => {
                let ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                heard.store(ms, Ordering::Relaxed);
            }
            Err(e) => break format!("reading from NATS: {e}"),
        }
    };
    break_with(&tx, why);
}

fn break_with(tx: &mpsc::UnboundedSender<Incoming>, why: String) {
    let _ = tx.send(Incoming::Lost(why));
}

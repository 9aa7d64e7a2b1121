//! The topic: JetStream publish with headers, waiting for the stream's acknowledgement.
//!
//! A publish is a core NATS request to the subject: JetStream answers it with its
//! `PubAck`, which is read here. async-nats' JetStream `publish` sends the same request
//! and reads the same answer; it also takes a permit of its own in-flight limit, arms a
//! second timer, and reads the answer through two JSON shapes in turn.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;

use super::batch::BatchAcks;
use crate::transport::{BufferedWriter, Outgoing, Sender, SenderPublisher, SenderTopic};
use crate::{Context, Error};

/// A topic publishing to a NATS subject through JetStream (see the [module docs](super)):
/// a [`SenderTopic`] over a [`NatsSender`]. Cloning shares the connection.
pub type NatsTopic = SenderTopic<NatsSender>;

/// The writer of a [`NatsTopic`]: closing it returns once the stream acknowledged.
pub type NatsWriter = BufferedWriter<NatsPublisher>;

/// Sends the messages of a [`NatsWriter`].
pub type NatsPublisher = SenderPublisher<NatsSender>;

/// Publishes whole messages through JetStream with headers, waiting for the stream's
/// acknowledgement: the [`Sender`] of a [`NatsTopic`].
pub struct NatsSender {
    client: async_nats::Client,
    /// Cloned for each publish: shares its bytes.
    subject: Subject,
    msg_id_attribute: String,
    /// Where this topic's batches are answered, once it sent one.
    batches: tokio::sync::Mutex<Option<Arc<BatchAcks>>>,
}

/// How long a publish waits for the stream's acknowledgement: JetStream's own default.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl fmt::Debug for NatsSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTopic")
            .field("subject", &self.subject.as_str())
            .field("msg_id_attribute", &self.msg_id_attribute)
            .finish()
    }
}

impl NatsTopic {
    pub(super) fn open(client: async_nats::Client, subject: String) -> Self {
        SenderTopic::new(NatsSender {
            client,
            subject: Subject::from(subject),
            msg_id_attribute: "Idempotency-Key".to_owned(),
            batches: tokio::sync::Mutex::default(),
        })
    }

    /// The attribute whose value becomes `Nats-Msg-Id` (default `Idempotency-Key`); a
    /// message without it gets an id unique to it (a random name of the publishing thread and
    /// a count).
    pub fn msg_id_attribute(self, key: impl AsRef<str>) -> Self {
        let sender = self.sender();
        SenderTopic::new(NatsSender {
            client: sender.client.clone(),
            subject: sender.subject.clone(),
            msg_id_attribute: crate::canonical_key(key.as_ref()).into_owned(),
            batches: tokio::sync::Mutex::default(),
        })
    }

    /// The subject this topic publishes to.
    pub fn subject(&self) -> &str {
        self.sender().subject.as_str()
    }
}

impl NatsSender {
    /// Where this topic's batches are answered: subscribed to with its first batch, and
    /// again when that subscription ended (its connection closed, its runtime shut down).
    async fn batch_acks(&self) -> Result<Arc<BatchAcks>, Error> {
        let mut acks = self.batches.lock().await;
        if let Some(acks) = acks.as_ref().filter(|a| a.is_running()) {
            return Ok(acks.clone());
        }
        let new = Arc::new(BatchAcks::subscribe(&self.client).await?);
        *acks = Some(new.clone());
        Ok(new)
    }

    /// The headers of one message, with its delay recorded.
    fn headers(&self, message: &mut Outgoing) -> Result<async_nats::HeaderMap, Error> {
        if let Some(delay) = message.delay {
            crate::transport::stamp_not_before(&mut message.attributes, delay);
        }
        let attributes = &message.attributes;
        super::encoding::headers(attributes, attributes.get_canonical(&self.msg_id_attribute))
    }
}

impl Sender for NatsSender {
    async fn send(&self, ctx: &Context, mut message: Outgoing) -> Result<(), Error> {
        let request = self.request(&mut message)?;
        let send = async {
            let reply = self
                .client
                .send_request(self.subject.clone(), request)
                .await;
            self.answered(reply)
        };
        ctx.unless_cancelled(send).await
    }

    /// Every publish goes out, in order, before any acknowledgement is awaited: the batch
    /// waits about one round trip. Each publish is handed to the client in turn (waiting
    /// for room in its queue of outgoing messages when that is full), so the stream
    /// stores the batch in its order whatever its size and whatever else shares the
    /// connection. The acknowledgements come back on a subscription of the topic's own
    /// (one inbox, taken with its first batch; each message's reply subject names its
    /// batch and its place) and are awaited in order, each for up to 5 s once it is the
    /// one awaited (a large batch is not cut short by a limit on the whole); nothing
    /// limits how many a batch may await.
    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let send = async {
            let mut batch = self.batch_acks().await?.batch();
            let mut answers: Vec<Option<Result<(), Error>>> = Vec::with_capacity(messages.len());
            for (i, mut message) in messages.into_iter().enumerate() {
                let headers = self.headers(&mut message)?;
                let body = std::mem::take(&mut message.body);
                self.client
                    .publish_with_reply_and_headers(
                        self.subject.clone(),
                        batch.reply(i),
                        headers,
                        body,
                    )
                    .await
                    .map_err(|e| publish_error(&self.subject, e))?;
                answers.push(None);
            }
            for i in 0..answers.len() {
                loop {
                    if let Some(answer) = answers[i].take() {
                        answer?;
                        break;
                    }
                    // Only an acknowledgement not yet in arms the timer.
                    match tokio::time::timeout(ACK_TIMEOUT, batch.answers.recv()).await {
                        Ok(Some((index, ack))) => {
                            if let Some(slot @ None) = answers.get_mut(index) {
                                *slot = Some(self.checked(&ack));
                            }
                        }
                        Ok(None) => {
                            return Err(Error::connection_lost(format!(
                                "publishing to {:?}: the connection closed before every acknowledgement came",
                                self.subject.as_str()
                            )));
                        }
                        Err(_) => {
                            return Err(Error::connection_lost(format!(
                                "publishing to {:?}: no acknowledgement within {ACK_TIMEOUT:?}",
                                self.subject.as_str()
                            )));
                        }
                    }
                }
            }
            Ok(())
        };
        ctx.unless_cancelled(send).await
    }
}

/// A publish the client refused as a msgio error: an oversized message says so, a
/// connection gone is [`Error::ConnectionLost`] (publish again).
fn publish_error(subject: &str, e: async_nats::PublishError) -> Error {
    use async_nats::client::PublishErrorKind as Kind;
    match e.kind() {
        Kind::MaxPayloadExceeded => too_large(subject, &e),
        Kind::InvalidSubject => bad_subject(subject, &e),
        Kind::Send => Error::connection_lost(format!("publishing to {subject:?}: {e}")),
    }
}

impl NatsSender {
    /// The JetStream publish of one message: a request to the subject, with its headers,
    /// waiting [`ACK_TIMEOUT`] for the answer.
    fn request(&self, message: &mut Outgoing) -> Result<async_nats::Request, Error> {
        let headers = self.headers(message)?;
        Ok(async_nats::Request::new()
            .headers(headers)
            .payload(std::mem::take(&mut message.body))
            .timeout(Some(ACK_TIMEOUT)))
    }

    /// What the answer to a publish says: `Ok` when JetStream acknowledged it.
    fn answered(
        &self,
        reply: Result<async_nats::Message, async_nats::RequestError>,
    ) -> Result<(), Error> {
        let reply = reply.map_err(|e| request_error(&self.subject, e))?;
        check_ack(&self.subject, &reply.payload)
    }

    /// What an answer that came on a batch's own subscription says: as
    /// [`answered`](Self::answered), the client's request path having turned NATS's "no
    /// responders" status into an error there.
    fn checked(&self, reply: &async_nats::Message) -> Result<(), Error> {
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(no_stream(&self.subject, &"no responders"));
        }
        check_ack(&self.subject, &reply.payload)
    }
}

/// A failed publish request as a msgio error: an oversized message says so (it will never
/// fit), a missing stream names the subject, a timeout or a lost connection is
/// [`Error::ConnectionLost`] (publish again).
fn request_error(subject: &str, e: async_nats::RequestError) -> Error {
    use async_nats::RequestErrorKind as Kind;
    match e.kind() {
        Kind::MaxPayloadExceeded => too_large(subject, &e),
        Kind::NoResponders => no_stream(subject, &e),
        Kind::InvalidSubject => bad_subject(subject, &e),
        // A timeout, or the connection gone before the answer came: publish again.
        Kind::TimedOut | Kind::Other => {
            Error::connection_lost(format!("publishing to {subject:?}: {e}"))
        }
    }
}

/// A message over the server's `max_payload`: it will never fit.
fn too_large(subject: &str, e: &dyn fmt::Display) -> Error {
    Error::other(format!(
        "a message to {subject:?} is larger than the NATS server's max_payload: {e}"
    ))
}

/// A subject the client will not publish to.
fn bad_subject(subject: &str, e: &dyn fmt::Display) -> Error {
    Error::other(format!("cannot publish to {subject:?}: {e}"))
}

/// A publish nothing answered: no JetStream stream captures its subject.
fn no_stream(subject: &str, e: &dyn fmt::Display) -> Error {
    Error::other(format!(
        "no JetStream stream captures {subject:?} (create one, for instance with Nats::ensure_stream): {e}"
    ))
}

/// What JetStream answers a publish: the stream and sequence that took the message, or
/// why it did not (`error`). Other fields are not read.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    error: Option<ApiError<'a>>,
}

/// JetStream's error object.
#[derive(serde::Deserialize)]
struct ApiError<'a> {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
}

/// `Ok` when `payload` is JetStream's acknowledgement of a message to `subject`.
///
/// # Errors
///
/// JetStream's refusal (`Error::Other` with its description and codes), or an answer that
/// is not an acknowledgement (something other than JetStream answered on the subject).
fn check_ack(subject: &str, payload: &[u8]) -> Result<(), Error> {
    match serde_json::from_slice::<Reply<'_>>(payload) {
        Ok(Reply {
            error: Some(error), ..
        }) => Err(Error::other(format!(
            "JetStream refused a message to {subject:?}: {} (code {}, error code {})",
            error.description.as_deref().unwrap_or("no description"),
            error.code,
            error.err_code
        ))),
        Ok(Reply {
            stream: Some(_),
            seq: Some(_),
            error: None,
        }) => Ok(()),
        _ => Err(Error::other(format!(
            "publishing to {subject:?}: the answer is not a JetStream acknowledgement: {:?}",
            crate::error::truncate(&String::from_utf8_lossy(payload), 200)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::check_ack;

    #[test]
    fn acknowledgements_are_told_from_refusals_and_other_answers() {
        for ack in [
            &br#"{"stream":"orders","seq":1}"#[..],
            br#"{"stream":"orders","seq":7,"duplicate":true,"domain":"hub"}"#,
            br#"{"stream":"error","seq":2}"#,
            br#"{"stream":"a\"b\u00e9","seq":3,"val":"12"}"#,
            br#" { "seq" : 4 , "stream" : "s" } "#,
        ] {
            assert!(
                check_ack("s.t", ack).is_ok(),
                "{}",
                String::from_utf8_lossy(ack)
            );
        }
        let refused = check_ack(
            "s.t",
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 0"},"stream":"s","seq":0}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(refused.contains("\"s.t\""), "{refused}");
        assert!(refused.contains("wrong last sequence: 0"), "{refused}");
        assert!(refused.contains("code 400"), "{refused}");
        assert!(refused.contains("10071"), "{refused}");
        let bare = check_ack("s.t", br#"{"error":{"code":503}}"#).unwrap_err();
        assert!(bare.to_string().contains("no description"), "{bare}");
        for other in [
            &b"hello"[..],
            b"",
            b"{}",
            b"[1,2]",
            br#"{"stream":"s"}"#,
            br#"{"seq":1}"#,
            br#"{"stream":"s","seq":-1}"#,
            br#"{"stream":"s","seq":1"#,
            b"\xff\xfe",
        ] {
            let err = check_ack("s.t", other).unwrap_err().to_string();
            assert!(
                err.contains("not a JetStream acknowledgement"),
                "{}: {err}",
                String::from_utf8_lossy(other)
            );
        }
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(10_000));
        let err = check_ack("s.t", long.as_bytes()).unwrap_err().to_string();
        assert!(err.len() < 600, "{}", err.len());
    }
}

//! The topic: JetStream publish with headers, waiting for the stream's acknowledgement.

use std::fmt;

use async_nats::jetstream;

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
    jetstream: jetstream::Context,
    subject: String,
    msg_id_attribute: String,
}

impl fmt::Debug for NatsSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTopic")
            .field("subject", &self.subject)
            .field("msg_id_attribute", &self.msg_id_attribute)
            .finish()
    }
}

impl NatsTopic {
    pub(super) fn open(jetstream: jetstream::Context, subject: String) -> Self {
        SenderTopic::new(NatsSender {
            jetstream,
            subject,
            msg_id_attribute: "Idempotency-Key".to_owned(),
        })
    }

    /// The attribute whose value becomes `Nats-Msg-Id` (default `Idempotency-Key`); a
    /// message without it gets an id unique to it (a random name of the publishing thread and
    /// a count).
    pub fn msg_id_attribute(self, key: impl AsRef<str>) -> Self {
        let sender = self.sender();
        SenderTopic::new(NatsSender {
            jetstream: sender.jetstream.clone(),
            subject: sender.subject.clone(),
            msg_id_attribute: crate::canonical_key(key.as_ref()).into_owned(),
        })
    }

    /// The subject this topic publishes to.
    pub fn subject(&self) -> &str {
        &self.sender().subject
    }
}

impl NatsSender {
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
        let headers = self.headers(&mut message)?;
        let subject = &self.subject;
        let send = async {
            let ack = self
                .jetstream
                .publish_with_headers(subject.clone(), headers, message.body)
                .await
                .map_err(|e| publish_error(subject, e))?;
            ack.await.map(drop).map_err(|e| publish_error(subject, e))
        };
        ctx.unless_cancelled(send).await
    }

    /// Every publish goes out, in order, before any acknowledgement is awaited: the batch
    /// waits about one round trip.
    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        let subject = &self.subject;
        let send = async {
            let mut acks = Vec::with_capacity(messages.len());
            for mut message in messages {
                let headers = self.headers(&mut message)?;
                acks.push(
                    self.jetstream
                        .publish_with_headers(subject.clone(), headers, message.body)
                        .await
                        .map_err(|e| publish_error(subject, e))?,
                );
            }
            for ack in acks {
                ack.await.map_err(|e| publish_error(subject, e))?;
            }
            Ok(())
        };
        ctx.unless_cancelled(send).await
    }
}

/// A publish error as a msgio error: an oversized message says so (it will never fit), a
/// missing stream names the subject, a broken connection or a timeout is
/// [`Error::ConnectionLost`] (publish again).
fn publish_error(subject: &str, e: jetstream::context::PublishError) -> Error {
    use jetstream::context::PublishErrorKind as Kind;
    match e.kind() {
        Kind::MaxPayloadExceeded => Error::other(format!(
            "a message to {subject:?} is larger than the NATS server's max_payload: {e}"
        )),
        Kind::StreamNotFound => Error::other(format!(
            "no JetStream stream captures {subject:?} (create one, for instance with Nats::ensure_stream): {e}"
        )),
        Kind::TimedOut | Kind::BrokenPipe => {
            Error::connection_lost(format!("publishing to {subject:?}: {e}"))
        }
        _ => Error::other(format!("JetStream refused a message to {subject:?}: {e}")),
    }
}

//! The topic: records produced through the connection's shared producer.

use std::fmt;

use futures::future::try_join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use super::{KEY, Kafka, encoding};
use crate::transport::{
    BufferedWriter, Outgoing, Sender, SenderPublisher, SenderTopic, stamp_not_before,
};
use crate::{Context, Error};

/// A topic producing records to a Kafka topic (see the [module docs](super) for the
/// mapping): a [`SenderTopic`] over a [`KafkaSender`]. Cloning shares the producer;
/// concurrent writers are batched into one request.
pub type KafkaTopic = SenderTopic<KafkaSender>;

/// The writer of a [`KafkaTopic`]: closing it returns once the broker acknowledged the
/// record (`acks=all`).
pub type KafkaWriter = BufferedWriter<KafkaPublisher>;

/// Sends the messages of a [`KafkaWriter`].
pub type KafkaPublisher = SenderPublisher<KafkaSender>;

/// Produces whole messages as records: the [`Sender`] of a [`KafkaTopic`].
pub struct KafkaSender {
    kafka: Kafka,
    topic: String,
    key_attribute: String,
}

impl fmt::Debug for KafkaSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTopic")
            .field("brokers", &self.kafka.shown())
            .field("topic", &self.topic)
            .field("key_attribute", &self.key_attribute)
            .finish()
    }
}

pub(super) fn open(kafka: Kafka, topic: String) -> KafkaTopic {
    SenderTopic::new(KafkaSender {
        kafka,
        topic,
        key_attribute: KEY.to_owned(),
    })
}

impl KafkaTopic {
    /// Takes the record key from the attribute `key` instead of [`KEY`] (`Kafka-Key`).
    pub fn key_attribute(self, key: impl Into<String>) -> Self {
        let sender = self.sender();
        SenderTopic::new(KafkaSender {
            kafka: sender.kafka.clone(),
            topic: sender.topic.clone(),
            key_attribute: key.into(),
        })
    }

    /// The Kafka topic this topic produces to.
    pub fn name(&self) -> &str {
        &self.sender().topic
    }
}

impl KafkaSender {
    /// Produces one record and waits for the broker's acknowledgement.
    async fn produce(&self, message: &Outgoing) -> Result<(), Error> {
        let mut stamped;
        let attributes = match message.delay.filter(|d| !d.is_zero()) {
            Some(delay) => {
                stamped = message.attributes.clone();
                stamp_not_before(&mut stamped, delay);
                &stamped
            }
            None => &message.attributes,
        };
        let (headers, key) = encoding::encode(attributes, &self.key_attribute)?;
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .payload(&message.body[..])
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        match self.kafka.producer().send(record, Timeout::Never).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(self.error(e, message.body.len())),
        }
    }

    fn error(&self, e: KafkaError, body: usize) -> Error {
        if let lost @ Error::ConnectionLost(_) = self.kafka.error(e.clone()) {
            return lost;
        }
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                Error::other(format!(
                    "a {body}-byte message to Kafka topic {:?} is larger than the producer's or \
                     the broker's limit (message.max.bytes): {e}",
                    self.topic
                ))
            }
            _ => Error::other(format!("producing to Kafka topic {:?}: {e}", self.topic)),
        }
    }
}

impl Sender for KafkaSender {
    async fn send(&self, ctx: &Context, message: Outgoing) -> Result<(), Error> {
        ctx.unless_cancelled(self.produce(&message)).await
    }

    /// Every record of the batch handed to the producer at once (in order: librdkafka
    /// keeps a partition's order with idempotence on), then their acknowledgements awaited
    /// together.
    async fn send_batch(&self, ctx: &Context, messages: Vec<Outgoing>) -> Result<(), Error> {
        let all = try_join_all(messages.iter().map(|m| self.produce(m)));
        ctx.unless_cancelled(async { all.await.map(drop) }).await
    }
}

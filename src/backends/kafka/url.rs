//! `kafka://[user:password@]host:port[,host:port...]/<topic>?...`: the Kafka transport by
//! URL.

use super::{ConsumerOptions, Kafka, KafkaServer, KafkaTopic, OffsetReset};
use crate::url::{Url, UrlOpener};
use crate::{Error, ServerConfig};

/// Every parameter a `kafka://` URL may carry (the topic and the server each use theirs
/// and accept the other's, so that one URL opens both).
const PARAMS: &[&str] = &[
    "partitions",
    "key_attribute",
    "group",
    "offset_reset",
    "session_timeout",
];

/// What a `kafka://` URL says.
struct Target {
    connection: String,
    partitions: i32,
    options: ConsumerOptions,
}

fn target(url: &Url) -> Result<Target, Error> {
    let topic = url.path();
    if topic.is_empty() || topic.contains('/') {
        return Err(url.invalid(
            "url",
            "a kafka:// URL names its topic as its path: kafka://host:port/<topic>",
        ));
    }
    let mut query = url.query();
    let partitions = query.parse::<i32>("partitions")?.unwrap_or(1);
    let group = query
        .take("group")?
        .map_or_else(|| format!("msgio.{topic}"), str::to_owned);
    let mut options = ConsumerOptions::new(topic, group);
    if let Some(key) = query.take("key_attribute")? {
        options = options.key_attribute(key);
    }
    match query.take("offset_reset")? {
        None | Some("earliest") => {}
        Some("latest") => options = options.offset_reset(OffsetReset::Latest),
        Some(other) => {
            return Err(url.invalid(
                "offset_reset",
                format!("{other:?} is not earliest or latest"),
            ));
        }
    }
    if let Some(timeout) = query.duration("session_timeout")? {
        options = options.session_timeout(timeout);
    }
    query.finish_known(PARAMS)?;
    options.validate()?;
    if partitions < 1 {
        return Err(url.invalid("partitions", format!("{partitions} is not 1 or more")));
    }
    Ok(Target {
        connection: url.connection_url(""),
        partitions,
        options,
    })
}

async fn connect(target: &Target) -> Result<Kafka, Error> {
    let kafka = Kafka::connect(&target.connection).await?;
    kafka
        .create_topic(&target.options.topic, target.partitions)
        .await?;
    Ok(kafka)
}

/// Opens `kafka://` URLs: a producer for each topic, a consumer for each server, the
/// topic created when missing.
pub(crate) struct KafkaOpener;

impl UrlOpener for KafkaOpener {
    type Topic = KafkaTopic;
    type Server = KafkaServer;

    async fn open_topic(&self, url: &Url) -> Result<KafkaTopic, Error> {
        let target = target(url)?;
        let kafka = connect(&target).await?;
        Ok(kafka
            .topic(target.options.topic.clone())
            .key_attribute(target.options.key_attribute.clone()))
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<KafkaServer, Error> {
        let target = target(url)?;
        let kafka = connect(&target).await?;
        kafka.server(target.options, config).await
    }
}

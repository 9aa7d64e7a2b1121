//! `nats://[user:password@]host[:port]/<subject>?...`: the NATS JetStream transport by URL.

use super::{ConsumerOptions, Nats, NatsServer, NatsTopic};
use crate::url::{Url, UrlOpener};
use crate::{Error, ServerConfig};

/// Every parameter a `nats://` URL may carry (the topic and the server each use theirs
/// and accept the other's, so that one URL opens both).
const PARAMS: &[&str] = &[
    "stream",
    "subjects",
    "retention",
    "duplicate_window",
    "msg_id_attribute",
    "durable",
    "ack_wait",
    "max_deliver",
    "dead_letter",
];

/// What a `nats://` URL says.
struct Target {
    connection: String,
    subject: String,
    msg_id_attribute: Option<String>,
    options: ConsumerOptions,
}

fn target(url: &Url) -> Result<Target, Error> {
    let subject = url.path();
    if subject.is_empty() || subject.contains('/') {
        return Err(url.invalid(
            "url",
            "a nats:// URL names its subject as its path: nats://host[:port]/<subject>",
        ));
    }
    let first = subject.split('.').next().unwrap_or(subject);
    let mut query = url.query();
    let stream = query.take("stream")?.unwrap_or(first);
    let durable = query.take("durable")?.unwrap_or("msgio");
    let mut options = ConsumerOptions::new(stream, durable);
    let subjects = query.take_all("subjects");
    options = if subjects.is_empty() {
        // The stream captures the subject's family: `orders.created` -> `orders.>`.
        if subject.contains('.') {
            options.subjects([format!("{first}.>")])
        } else {
            options.subjects([subject])
        }
    } else {
        options.subjects(subjects)
    };
    match query.take("retention")? {
        None | Some("workqueue") => {}
        Some("limits") => options = options.limits_retention(),
        Some(other) => {
            return Err(url.invalid("retention", format!("{other:?} is not workqueue or limits")));
        }
    }
    if let Some(window) = query.duration("duplicate_window")? {
        options = options.duplicate_window(window);
    }
    let msg_id_attribute = query.take("msg_id_attribute")?.map(str::to_owned);
    if let Some(ack_wait) = query.duration("ack_wait")? {
        options = options.ack_wait(ack_wait);
    }
    if let Some(n) = query.parse::<i64>("max_deliver")? {
        options = options.max_deliver(n);
    }
    if let Some(subject) = query.take("dead_letter")? {
        options = options.dead_letter_subject(subject);
    }
    query.finish_known(PARAMS)?;
    options.validate()?;
    Ok(Target {
        connection: url.connection_url(""),
        subject: subject.to_owned(),
        msg_id_attribute,
        options,
    })
}

/// Opens `nats://` URLs: a connection for each topic or server. The topic side creates
/// the stream when it is missing, so that what it publishes has somewhere to go.
pub(crate) struct NatsOpener;

impl UrlOpener for NatsOpener {
    type Topic = NatsTopic;
    type Server = NatsServer;

    async fn open_topic(&self, url: &Url) -> Result<NatsTopic, Error> {
        let target = target(url)?;
        let nats = Nats::connect(&target.connection).await?;
        nats.ensure_stream(&target.options).await?;
        let topic = nats.topic(target.subject);
        Ok(match target.msg_id_attribute {
            Some(key) => topic.msg_id_attribute(key),
            None => topic,
        })
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<NatsServer, Error> {
        let target = target(url)?;
        let nats = Nats::connect(&target.connection).await?;
        nats.server(target.options, config).await
    }
}

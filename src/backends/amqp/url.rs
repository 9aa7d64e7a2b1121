//! `amqp://[user:password@]host[:port][/<vhost>]?...`: the RabbitMQ transport by URL.

use super::{Amqp, AmqpServer, AmqpTopic, QueueOptions};
use crate::url::{Url, UrlOpener};
use crate::{Error, ServerConfig};

/// Every parameter an `amqp://` URL may carry (the topic and the server each use theirs
/// and accept the other's, so that one URL opens both).
const PARAMS: &[&str] = &[
    "exchange",
    "routing_key",
    "queue",
    "mandatory",
    "durable",
    "quorum",
    "bind",
    "dead_letter_exchange",
    "dead_letter_routing_key",
];

/// What an `amqp://` URL says.
struct Target {
    connection: String,
    exchange: Option<String>,
    routing_key: Option<String>,
    mandatory: Option<bool>,
    queue: Option<QueueOptions>,
}

fn target(url: &Url) -> Result<Target, Error> {
    let mut query = url.query();
    let exchange = query.take("exchange")?.map(str::to_owned);
    let routing_key = query.take("routing_key")?.map(str::to_owned);
    let mandatory = query.flag("mandatory")?;
    let queue = query.take("queue")?;
    let durable = query.flag("durable")?;
    let quorum = query.flag("quorum")?;
    let binds = query.take_all("bind");
    let dlx = query.take("dead_letter_exchange")?;
    let dlx_key = query.take("dead_letter_routing_key")?;
    query.finish_known(PARAMS)?;
    let queue = match queue {
        None => {
            let needs_queue = durable.is_some()
                || quorum.is_some()
                || !binds.is_empty()
                || dlx.is_some()
                || dlx_key.is_some();
            if needs_queue {
                return Err(url.invalid(
                    "queue",
                    "durable, quorum, bind and dead_letter_* set up a queue: name it with queue=",
                ));
            }
            None
        }
        Some(name) => {
            let mut options = QueueOptions::new(name);
            if let Some(durable) = durable {
                options = options.durable(durable);
            }
            if quorum == Some(true) {
                options = options.quorum();
            }
            for bind in binds {
                let Some((exchange, key)) = bind.split_once(':') else {
                    return Err(
                        url.invalid("bind", format!("{bind:?} is not <exchange>:<routing key>"))
                    );
                };
                options = options.bind(exchange, key);
            }
            match (dlx, dlx_key) {
                (None, None) => {}
                (Some(exchange), None) => options = options.dead_letter_exchange(exchange),
                (exchange, Some(key)) => {
                    options = options.dead_letter_to(exchange.unwrap_or(""), key);
                }
            }
            options.validate()?;
            Some(options)
        }
    };
    Ok(Target {
        connection: url.connection_url(&encode_vhost(url.path())),
        exchange,
        routing_key,
        mandatory,
        queue,
    })
}

/// The vhost as a URL path segment again (`/` is `%2F`).
fn encode_vhost(vhost: &str) -> String {
    let mut out = String::with_capacity(vhost.len());
    for b in vhost.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens `amqp://` URLs: a connection for each topic or server. A topic with `queue=` and
/// no `exchange=` publishes to that queue through the default exchange and declares it
/// first, so that what it publishes waits for a server.
pub(crate) struct AmqpOpener;

impl UrlOpener for AmqpOpener {
    type Topic = AmqpTopic;
    type Server = AmqpServer;

    async fn open_topic(&self, url: &Url) -> Result<AmqpTopic, Error> {
        let target = target(url)?;
        let amqp = Amqp::connect(&target.connection).await?;
        let topic = match (&target.exchange, &target.queue) {
            (Some(exchange), queue) => {
                let key = target
                    .routing_key
                    .as_deref()
                    .or(queue.as_ref().map(QueueOptions::name))
                    .unwrap_or("");
                amqp.topic(exchange, key)?
            }
            (None, Some(queue)) => {
                if target.routing_key.is_some() {
                    return Err(url.invalid(
                        "routing_key",
                        "a topic on a queue routes by the queue's name: give exchange= too",
                    ));
                }
                amqp.declare_queue(queue).await?;
                amqp.queue_topic(queue.name())?
            }
            (None, None) => {
                return Err(url.invalid(
                    "exchange",
                    "an amqp:// topic needs exchange= (with routing_key=) or queue=",
                ));
            }
        };
        Ok(match target.mandatory {
            Some(mandatory) => topic.mandatory(mandatory),
            None => topic,
        })
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<AmqpServer, Error> {
        let target = target(url)?;
        let Some(queue) = target.queue else {
            return Err(url.invalid("queue", "an amqp:// server needs queue=<name>"));
        };
        let amqp = Amqp::connect(&target.connection).await?;
        amqp.server(queue, config).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vhosts_are_encoded_back() {
        assert_eq!(super::encode_vhost("/"), "%2F");
        assert_eq!(super::encode_vhost("my vhost"), "my%20vhost");
        assert_eq!(super::encode_vhost("prod"), "prod");
    }
}

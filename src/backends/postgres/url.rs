//! `postgres://[user:password@]host[:port]/<database>?queue=<queue>&...`: the PostgreSQL
//! transport by URL.

use super::{Postgres, PostgresOptions, PostgresServer, PostgresTopic, QueueOptions};
use crate::url::{Url, UrlOpener};
use crate::{Error, ServerConfig};

/// Every parameter a `postgres://` URL may carry (the topic and the server each use theirs
/// and accept the other's, so that one URL opens both).
const PARAMS: &[&str] = &[
    "queue",
    "schema",
    "pool_size",
    "notify",
    "listen",
    "lease",
    "poll_interval",
    "dead_letter",
    "archive",
    "key_order",
];

/// What a `postgres://` URL says.
struct Target {
    connection: String,
    options: PostgresOptions,
    notify: bool,
    queue: QueueOptions,
}

fn target(url: &Url) -> Result<Target, Error> {
    let mut query = url.query();
    let Some(queue) = query.take("queue")? else {
        return Err(url.invalid(
            "queue",
            "a postgres:// URL names its queue with queue=: postgres://host/<database>?queue=<queue>",
        ));
    };
    let mut options = PostgresOptions::new();
    if let Some(schema) = query.take("schema")? {
        options = options.schema(schema);
    }
    if let Some(n) = query.parse::<usize>("pool_size")? {
        options = options.pool_size(n);
    }
    let notify = query.flag("notify")?.unwrap_or(true);
    let mut queue = QueueOptions::new(queue);
    if let Some(listen) = query.flag("listen")? {
        queue = queue.listen(listen);
    }
    if let Some(lease) = query.duration("lease")? {
        queue = queue.lease(lease);
    }
    if let Some(interval) = query.duration("poll_interval")? {
        queue = queue.poll_interval(interval);
    }
    if let Some(dead) = query.take("dead_letter")? {
        queue = queue.dead_letter_queue(dead);
    }
    if let Some(archive) = query.flag("archive")? {
        queue = queue.archive(archive);
    }
    if let Some(on) = query.flag("key_order")? {
        queue = queue.key_order(on);
    }
    query.finish_known(PARAMS)?;
    options.validate()?;
    queue.validate()?;
    Ok(Target {
        connection: url.connection_url(url.path()),
        options,
        notify,
        queue,
    })
}

async fn connect(target: &Target) -> Result<Postgres, Error> {
    let postgres = Postgres::connect_with(&target.connection, target.options.clone()).await?;
    postgres.migrate().await?;
    Ok(postgres)
}

/// Opens `postgres://` and `postgresql://` URLs: a pool for each topic or server, the
/// schema migrated.
pub(crate) struct PostgresOpener;

impl UrlOpener for PostgresOpener {
    type Topic = PostgresTopic;
    type Server = PostgresServer;

    async fn open_topic(&self, url: &Url) -> Result<PostgresTopic, Error> {
        let target = target(url)?;
        let topic = connect(&target).await?.topic(target.queue.queue.clone());
        Ok(if target.notify {
            topic
        } else {
            topic.notify(false)
        })
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<PostgresServer, Error> {
        let target = target(url)?;
        connect(&target).await?.server(target.queue, config).await
    }
}

//! `redis://[user:password@]host[:port]/<stream>?...`: the Redis transport by URL.

use super::{Redis, RedisServer, RedisTopic, StreamOptions};
use crate::url::{Url, UrlOpener};
use crate::{Error, ServerConfig};

/// Every parameter a `redis://` URL may carry (the topic and the server each use theirs
/// and accept the other's, so that one URL opens both).
const PARAMS: &[&str] = &[
    "db",
    "max_len",
    "group",
    "consumer",
    "start_id",
    "block",
    "min_idle",
    "claim_interval",
    "dead_letter",
];

/// What a `redis://` URL says.
struct Target {
    connection: String,
    stream: String,
    max_len: Option<usize>,
    options: StreamOptions,
}

fn target(url: &Url) -> Result<Target, Error> {
    let stream = url.path();
    if stream.is_empty() {
        return Err(url.invalid(
            "url",
            "a redis:// URL names its stream as its path: redis://host[:port]/<stream>",
        ));
    }
    let mut query = url.query();
    let db = query.parse::<u32>("db")?;
    let max_len = query.parse::<usize>("max_len")?;
    let mut options = StreamOptions::new(stream, query.take("group")?.unwrap_or("msgio"));
    if let Some(consumer) = query.take("consumer")? {
        options = options.consumer(consumer);
    }
    if let Some(start_id) = query.take("start_id")? {
        options = options.start_id(start_id);
    }
    if let Some(block) = query.duration("block")? {
        options = options.block(block);
    }
    if let Some(min_idle) = query.duration("min_idle")? {
        options = options.min_idle(min_idle);
    }
    if let Some(interval) = query.duration("claim_interval")? {
        options = options.claim_interval(interval);
    }
    if let Some(stream) = query.take("dead_letter")? {
        options = options.dead_letter_stream(stream);
    }
    query.finish_known(PARAMS)?;
    options.validate()?;
    Ok(Target {
        connection: url.connection_url(&db.map(|db| db.to_string()).unwrap_or_default()),
        stream: stream.to_owned(),
        max_len,
        options,
    })
}

/// Opens `redis://` URLs: a connection for each topic or server.
pub(crate) struct RedisOpener;

impl UrlOpener for RedisOpener {
    type Topic = RedisTopic;
    type Server = RedisServer;

    async fn open_topic(&self, url: &Url) -> Result<RedisTopic, Error> {
        let target = target(url)?;
        let topic = Redis::connect(&target.connection)
            .await?
            .topic(target.stream);
        Ok(match target.max_len {
            Some(n) => topic.max_len(n),
            None => topic,
        })
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<RedisServer, Error> {
        let target = target(url)?;
        let redis = Redis::connect(&target.connection).await?;
        redis.server(target.options, config).await
    }
}

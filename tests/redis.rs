//! The Redis Streams transport against the real Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379): the conformance kit and what the kit cannot see.

use std::time::Duration;

use msgio::redis::{Redis, RedisServer, RedisTopic, StreamOptions};
use msgio::testing::{Capabilities, Transport};
use msgio::{Error, ServerConfig};

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn connect() -> Option<Redis> {
    let url = url();
    match Redis::connect(&url).await {
        Ok(redis) => Some(redis),
        Err(e) => {
            msgio::testing::skip_or_fail("Redis", &url, &e);
            None
        }
    }
}

/// A raw connection, to look at and tamper with what the transport wrote.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[derive(Clone)]
struct Dest {
    stream: String,
}

/// The transport under test, with short timings so that cases finish quickly.
struct Streams {
    redis: Redis,
}

impl Transport for Streams {
    type Destination = Dest;
    type Topic = RedisTopic;
    type Server = RedisServer;

    async fn destination(&self) -> Result<Dest, Error> {
        Ok(Dest {
            stream: format!("msgio-test:{}", msgio::testing::unique_suffix()),
        })
    }

    async fn topic(&self, dest: &Dest) -> Result<RedisTopic, Error> {
        Ok(self.redis.topic(&dest.stream))
    }

    async fn server(&self, dest: &Dest, config: ServerConfig) -> Result<RedisServer, Error> {
        self.redis
            .server(
                StreamOptions::new(&dest.stream, "kit").block(Duration::from_millis(200)),
                config,
            )
            .await
    }

    async fn remove(&self, dest: Dest) -> Result<(), Error> {
        if std::env::var("DEBUG_KIT").is_ok() {
            let v: redis::Value = redis::cmd("XPENDING")
                .arg(&dest.stream)
                .arg("kit")
                .query_async(&mut raw().await)
                .await
                .unwrap();
            eprintln!("XPENDING {v:?}");
            let v: redis::Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&dest.stream)
                .arg("kit")
                .query_async(&mut raw().await)
                .await
                .unwrap();
            eprintln!("CONSUMERS {v:?}");
        }
        let _: () = redis::cmd("DEL")
            .arg(&dest.stream)
            .arg(format!("{}:delayed", dest.stream))
            .query_async(&mut raw().await)
            .await
            .map_err(Error::other)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_conformance_kit() {
    let Some(redis) = connect().await else { return };
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(Streams { redis }, caps)
        .await
        .assert_passed();
}

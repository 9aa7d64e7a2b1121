//! Opening topics and servers by URL, so that the same program runs on any transport by
//! changing one string (gocloud.dev's `pubsub.OpenTopic(ctx, "rabbit://exchange")`).
//!
//! [`open_topic`] and [`open_server`] look the URL's
//! scheme up in the process-wide [`UrlMux`], which knows the schemes of the transports
//! compiled in; [`register`] adds a transport of your own.
//!
//! | scheme | feature | topic URL | server URL adds |
//! |---|---|---|---|
//! | `mem` | `mem` | `mem://<queue>` (`capacity`) | — |
//! | `redis` | `redis` | `redis://[user:password@]host[:port]/<stream>` (`db`, `max_len`) | `group`, `consumer`, `start_id`, `block`, `min_idle`, `claim_interval`, `dead_letter` |
//! | `nats` | `nats` | `nats://[user:password@]host[:port]/<subject>` (`stream`, `subjects`, `retention`, `duplicate_window`, `msg_id_attribute`) | `durable`, `ack_wait`, `max_deliver`, `dead_letter` |
//! | `amqp` | `amqp` | `amqp://[user:password@]host[:port][/<vhost>]?exchange=<x>&routing_key=<k>` or `?queue=<q>` (`mandatory`, and for a queue `durable`, `quorum`, `bind`, `dead_letter_exchange`, `dead_letter_routing_key`) | `queue` (required) |
//! | `postgres`, `postgresql` | `postgres` | `postgres://[user:password@]host[:port]/<database>?queue=<q>` (`schema`, `pool_size`, `notify`) | `listen`, `lease`, `poll_interval`, `dead_letter`, `archive`, `key_order` |
//! | `kafka` | `kafka` | `kafka://[user:password@]host:port[,host:port...]/<topic>` (`partitions`, `key_attribute`) | `group`, `offset_reset`, `session_timeout` |
//!
//! Each transport's module docs say what its parameters mean and their defaults. Durations
//! are written `500ms`, `30s`, `5m` or `1h`; flags `true` or `false`. An unknown scheme, an
//! unknown or repeated parameter and a value out of range are
//! [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming what was wrong; the URL is
//! shown without its credentials.
//!
//! ```
//! use msgio::{Context, Message, ServerConfig, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), msgio::Error> {
//! // Change the string, not the program: "redis://127.0.0.1/orders?group=billing", ...
//! let url = "mem://orders";
//! let topic = msgio::open_topic(url).await?;
//! let server = msgio::open_server(url, ServerConfig::new()).await?;
//! topic.publish(&Context::background(), Message::new("hello")).await?;
//! # let _ = server;
//! # Ok(()) }
//! ```

mod mux;
mod parse;

pub use mux::{UrlMux, UrlOpener, open_server, open_topic, register};
pub use parse::{Query, Url};

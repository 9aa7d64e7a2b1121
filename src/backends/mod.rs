//! The transports msgio ships, each behind its feature and each in a folder of the same
//! shape: `mod.rs` (the connection and its options), `topic.rs` (publishing), `source.rs`
//! (the engine [`Source`](crate::transport::Source) and the server around it) and, where
//! messages are encoded for the broker, `encoding.rs`. The crate root re-exports each as
//! `msgio::<name>`.

#[cfg(feature = "mem")]
pub mod mem;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "nats")]
pub mod nats;

#[cfg(feature = "amqp")]
pub mod amqp;

#[cfg(feature = "postgres")]
pub mod postgres;

/// Registers the URL scheme of every transport compiled in (see [`crate::url`]).
pub(crate) fn register_schemes(mux: &mut crate::url::UrlMux) {
    let _ = &mux; // no transport feature on
    #[cfg(feature = "mem")]
    mux.insert("mem", mem::MemOpener::default());
    #[cfg(feature = "redis")]
    mux.insert("redis", redis::RedisOpener);
    #[cfg(feature = "nats")]
    mux.insert("nats", nats::NatsOpener);
    #[cfg(feature = "amqp")]
    mux.insert("amqp", amqp::AmqpOpener);
    #[cfg(feature = "postgres")]
    mux.insert("postgres", postgres::PostgresOpener);
    #[cfg(feature = "postgres")]
    mux.insert("postgresql", postgres::PostgresOpener);
}

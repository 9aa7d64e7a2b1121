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

#[cfg(feature = "kafka")]
pub mod kafka;

/// Checks a duration setting that a broker takes in whole milliseconds as a 32-bit
/// number: between `min` ms and `u32::MAX` ms, or [`Error::InvalidConfig`](crate::Error)
/// naming `field`.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn check_millis(
    field: &'static str,
    d: std::time::Duration,
    min: u128,
) -> Result<(), crate::Error> {
    if d.as_millis() < min || d.as_millis() > u128::from(u32::MAX) {
        Err(crate::Error::invalid_config(
            field,
            format!("{d:?} is not between {min} ms and {} ms", u32::MAX),
        ))
    } else {
        Ok(())
    }
}

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
    #[cfg(feature = "kafka")]
    mux.insert("kafka", kafka::KafkaOpener);
}

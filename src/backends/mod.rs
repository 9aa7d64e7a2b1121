//! The transports msgio ships, each behind its feature and each in a folder of the same
//! shape: `mod.rs` (the connection and its options), `topic.rs` (publishing), `source.rs`
//! (the engine [`Source`](crate::engine::Source) and the server around it) and, where
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

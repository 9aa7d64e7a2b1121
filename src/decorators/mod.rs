//! Decorators: wrap a [`Topic`](crate::Topic) or a [`Receiver`](crate::Receiver) to add
//! behaviour, as go-msg's decorators do.
//!
//! Every decorator is a wrapping constructor, the wrapped value always called `inner`
//! (with `get_ref`, `get_mut`, `into_inner`):
//!
//! - body codecs meet through an attribute, a topic half and a receiver half in one module:
//!   [`base64`] (`Content-Transfer-Encoding`), and behind features [`gzip`], [`zstd`],
//!   [`lz4`] (`Content-Encoding`); the shared machinery is in [`codec`];
#![cfg_attr(
    feature = "tracing",
    doc = "- [`trace`]: `tracing` spans for publish and receive;"
)]
#![cfg_attr(
    feature = "otel",
    doc = "- [`otel`]: W3C trace context carried from producer to consumer through OpenTelemetry."
)]

#[cfg(feature = "base64")]
#[cfg_attr(docsrs, doc(cfg(feature = "base64")))]
pub mod base64;
pub mod codec;
mod compress;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod trace;

pub use compress::Level;
#[cfg(feature = "gzip")]
pub use compress::gzip;
#[cfg(feature = "lz4")]
pub use compress::lz4;
#[cfg(feature = "zstd")]
pub use compress::zstd;

//! Trace continuity from producer to consumer through OpenTelemetry and the W3C trace
//! context (`traceparent`, `tracestate` attributes).
//!
//! [`OtelTopic`] starts a producer span (a child of the current OpenTelemetry context) for
//! each message and writes its W3C trace context into the attributes; [`OtelReceiver`]
//! reads it back and runs the inner receiver inside a consumer span whose parent is the
//! producer's span, with that span's context current (so the receiver's own spans, and
//! messages it publishes through an `OtelTopic`, continue the trace).
//!
//! The W3C format is written and parsed here, so no global propagator needs setting up;
//! spans go to the global tracer provider unless a tracer is given.
//!
//! ```
//! use msgio::decorators::otel::{OtelReceiver, OtelTopic};
//! use msgio::{Context, Message, ReceiverFunc};
//!
//! # fn main() -> Result<(), msgio::Error> {
//! let (inner, _server) = msgio::mem::channel(16)?;
//! let topic = OtelTopic::new(inner, "orders");
//! let receiver = OtelReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async {
//!     // opentelemetry::Context::current() holds the consumer span here.
//!     Ok(())
//! }));
//! # let _ = (topic, receiver);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context as TaskContext, Poll, ready};

use futures::io::AsyncWrite;
use opentelemetry::context::FutureExt as _;
use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context as OtelContext, KeyValue};

use crate::{Attributes, Context, Error, Message, MessageWriter, Receiver, Topic};

/// The attribute carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "Traceparent";
/// The attribute carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "Tracestate";

/// Writes `span_context` into `attributes` as W3C trace context. An invalid context writes
/// nothing.
pub fn inject(span_context: &SpanContext, attributes: &mut Attributes) {
    if !span_context.is_valid() {
        return;
    }
    attributes.set(
        TRACEPARENT,
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags() & TraceFlags::SAMPLED
        ),
    );
    let state = span_context.trace_state().header();
    if state.is_empty() {
        attributes.remove(TRACESTATE);
    } else {
        attributes.set(TRACESTATE, state);
    }
}

/// Reads W3C trace context from `attributes`, as a remote span context; `None` when there
/// is none or the `traceparent` is malformed (a malformed `tracestate` is dropped).
pub fn extract(attributes: &Attributes) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(attributes.get(TRACEPARENT)?.trim())?;
    let state = attributes
        .get(TRACESTATE)
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `version-traceid-parentid-flags` as the W3C Trace Context spec says: lower-case
/// hex, version `ff` invalid, version `00` exactly 55 characters, later versions may carry
/// more fields after a dash.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let version = value.get(..2)?;
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if value.len() < 55 || (version == "00" && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value.as_bytes()[55] != b'-' {
        return None;
    }
    let fields = &value[..55];
    let mut parts = fields.split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if ![trace, span, flags].iter().all(|p| is_lower_hex(p)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// The topic half: a producer span per message, its context injected into the attributes.
pub struct OtelTopic<T> {
    inner: T,
    destination: Cow<'static, str>,
    system: Cow<'static, str>,
    tracer: BoxedTracer,
}

impl<T: fmt::Debug> fmt::Debug for OtelTopic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelTopic")
            .field("inner", &self.inner)
            .field("destination", &self.destination)
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

impl<T> OtelTopic<T> {
    /// Traces what is published to `inner`, a topic for `destination`, with the global
    /// tracer provider's `msgio` tracer.
    pub fn new(inner: T, destination: impl Into<Cow<'static, str>>) -> Self {
        OtelTopic {
            inner,
            destination: destination.into(),
            system: Cow::Borrowed("msgio"),
            tracer: global::tracer("msgio"),
        }
    }

    /// Uses `tracer` instead of the global provider's.
    pub fn with_tracer(mut self, tracer: BoxedTracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// The `messaging.system` attribute of the spans (default `msgio`).
    pub fn system(mut self, system: impl Into<Cow<'static, str>>) -> Self {
        self.system = system.into();
        self
    }
}

inner_accessors!([T] OtelTopic<T>, T, "topic");

impl<T: Topic> Topic for OtelTopic<T> {
    type Writer = OtelWriter<T::Writer>;

    fn new_writer(&self, ctx: &Context) -> Result<Self::Writer, Error> {
        let mut writer = self.inner.new_writer(ctx)?;
        let span = self
            .tracer
            .span_builder(format!("send {}", self.destination))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", self.system.clone()),
                KeyValue::new("messaging.destination.name", self.destination.clone()),
                KeyValue::new("messaging.operation.type", "send"),
            ])
            .start_with_context(&self.tracer, &OtelContext::current());
        let cx = OtelContext::current_with_span(span);
        inject(cx.span().span_context(), writer.attributes_mut());
        Ok(OtelWriter { inner: writer, cx })
    }
}

/// The writer of an [`OtelTopic`]: its producer span ends when the message is published.
pub struct OtelWriter<W> {
    inner: W,
    cx: OtelContext,
}

impl<W: fmt::Debug> fmt::Debug for OtelWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelWriter")
            .field("inner", &self.inner)
            .field("span", self.cx.span().span_context())
            .finish()
    }
}

impl<W: MessageWriter> AsyncWrite for OtelWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.inner).poll_close(cx));
        let span = self.cx.span();
        if let Err(e) = &result {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
        Poll::Ready(result)
    }
}

delegate_message_writer!([W: MessageWriter] OtelWriter<W>);

/// The receiver half: a consumer span per message, the child of the producer's span.
pub struct OtelReceiver<R> {
    inner: R,
    system: Cow<'static, str>,
    /// Shared, so that a layer can hand it to every receiver it wraps.
    tracer: std::sync::Arc<BoxedTracer>,
}

impl<R: fmt::Debug> fmt::Debug for OtelReceiver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelReceiver")
            .field("inner", &self.inner)
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

impl<R> OtelReceiver<R> {
    /// Traces each message `inner` receives, with the global tracer provider's `msgio`
    /// tracer.
    pub fn new(inner: R) -> Self {
        OtelReceiver {
            inner,
            system: Cow::Borrowed("msgio"),
            tracer: std::sync::Arc::new(global::tracer("msgio")),
        }
    }

    /// Uses `tracer` instead of the global provider's.
    pub fn with_tracer(mut self, tracer: BoxedTracer) -> Self {
        self.tracer = std::sync::Arc::new(tracer);
        self
    }

    /// The `messaging.system` attribute of the spans (default `msgio`).
    pub fn system(mut self, system: impl Into<Cow<'static, str>>) -> Self {
        self.system = system.into();
        self
    }
}

inner_accessors!([R] OtelReceiver<R>, R, "receiver");

/// An [`OtelReceiver`] layer (feature `tower`): [`OtelReceiver::layer`].
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub type OtelLayer = OtelReceiver<()>;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl OtelReceiver<()> {
    /// A [`Layer`](tower_layer::Layer) that wraps each receiver it is given in an
    /// [`OtelReceiver::new`]; [`with_tracer`](OtelReceiver::with_tracer) and
    /// [`system`](OtelReceiver::system) apply as they do to an `OtelReceiver` (the
    /// receivers share the tracer).
    pub fn layer() -> OtelLayer {
        OtelReceiver::new(())
    }
}

#[cfg(feature = "tower")]
impl<R> tower_layer::Layer<R> for OtelReceiver<()> {
    type Service = OtelReceiver<R>;

    fn layer(&self, inner: R) -> OtelReceiver<R> {
        OtelReceiver {
            inner,
            system: self.system.clone(),
            tracer: std::sync::Arc::clone(&self.tracer),
        }
    }
}

impl<R: Receiver> Receiver for OtelReceiver<R> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let parent = match extract(&msg.attributes) {
            Some(remote) => OtelContext::new().with_remote_span_context(remote),
            None => OtelContext::current(),
        };
        let source = ctx.source().unwrap_or("unknown").to_owned();
        let mut attributes = vec![
            KeyValue::new("messaging.system", self.system.clone()),
            KeyValue::new("messaging.destination.name", source.clone()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.msgio.attempt", i64::from(ctx.attempt())),
        ];
        if let Some(id) = ctx.message_id() {
            attributes.push(KeyValue::new("messaging.message.id", id.to_string()));
        }
        let span = self
            .tracer
            .span_builder(format!("process {source}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&*self.tracer, &parent);
        let cx = parent.with_span(span);
        let result = self.inner.receive(ctx, msg).with_context(cx.clone()).await;
        let span = cx.span();
        if let Err(e) = &result {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_with_tracestate() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_str("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").unwrap(),
        );
        let mut attrs = Attributes::new();
        inject(&sc, &mut attrs);
        assert_eq!(
            attrs.get("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            attrs.get("tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        let back = extract(&attrs).unwrap();
        assert_eq!(back.trace_id(), sc.trace_id());
        assert_eq!(back.span_id(), sc.span_id());
        assert!(back.is_sampled() && back.is_remote());
        assert_eq!(back.trace_state().header(), sc.trace_state().header());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse_traceparent(valid).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} parsed");
        }
        // A later version may carry more fields after a dash.
        assert!(parse_traceparent(&format!("01{}-more", &valid[2..])).is_some());
        // Unknown flag bits are dropped.
        let (_, _, flags) = parse_traceparent(&format!("{}ff", &valid[..53])).unwrap();
        assert_eq!(flags, TraceFlags::SAMPLED);
    }

    #[test]
    fn invalid_contexts_inject_nothing() {
        let mut attrs = Attributes::new();
        inject(&SpanContext::empty_context(), &mut attrs);
        assert!(attrs.is_empty());
    }
}

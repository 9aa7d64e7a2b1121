//! Trace continuity across the in-memory transport: the consumer span is the child of the
//! producer span, which is the child of the span current when publishing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgio::decorators::otel::{OtelReceiver, OtelTopic};
use msgio::{Context, Error, Message, ReceiverFunc, Server, Topic};
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context as OtelContext, global};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

fn find(spans: &[SpanData], kind: SpanKind) -> &SpanData {
    spans
        .iter()
        .find(|s| s.span_kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} span among {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_span_is_the_child_of_the_producer_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());

    let queue = msgio::mem::MemQueue::named("orders", 16).unwrap();
    let topic = OtelTopic::new(queue.topic(), "orders");

    // Publish inside a request span.
    let tracer = global::tracer("test");
    let request = tracer.start("handle request");
    let request_cx = OtelContext::current_with_span(request);
    {
        let _guard = request_cx.clone().attach();
        let mut msg = Message::new("order 1");
        msg.attributes.set("Type", "order.created");
        topic.publish(&Context::background(), msg).await.unwrap();
    }
    request_cx.span().end();

    // Receive; remember what the receiver saw as the current span.
    let inside: Arc<Mutex<Option<SpanContext>>> = Arc::default();
    let i = inside.clone();
    let receiver = OtelReceiver::new(ReceiverFunc::new(move |_: Context, msg: Message| {
        let i = i.clone();
        async move {
            assert!(msg.attributes.contains("Traceparent"));
            *i.lock().unwrap() = Some(OtelContext::current().span().span_context().clone());
            Err(Error::reject("checked; no need to retry"))
        }
    }));
    let server = queue.server(msgio::ServerConfig::new()).unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while inside.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the message never arrived");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let request = spans.iter().find(|s| s.name == "handle request").unwrap();
    let producer = find(&spans, SpanKind::Producer);
    let consumer = find(&spans, SpanKind::Consumer);

    assert_eq!(producer.name, "send orders");
    assert_eq!(producer.parent_span_id, request.span_context.span_id());
    assert_eq!(consumer.name, "process orders");
    assert_eq!(
        consumer.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    assert!(
        matches!(consumer.status, Status::Error { .. }),
        "{:?}",
        consumer.status
    );
    let seen = inside.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen.span_id(),
        consumer.span_context.span_id(),
        "the receiver ran outside the consumer span"
    );
    let attempt = consumer
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "messaging.msgio.attempt")
        .map(|kv| kv.value.to_string());
    assert_eq!(attempt.as_deref(), Some("1"));
}

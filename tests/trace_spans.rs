//! The `tracing` decorators open `msgio.publish` and `msgio.receive` spans with the
//! messaging fields, and the receiver runs inside its span.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::io::AsyncWriteExt;
use msgio::decorators::trace::{TracedReceiver, TracedTopic};
use msgio::{Context, Error, Message, Receiver, ReceiverFunc, Topic};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber, field};

/// Every span's name and fields, and the span each event happened in.
#[derive(Default)]
struct Captured {
    spans: Vec<(String, BTreeMap<String, String>)>,
    current: Vec<u64>,
    events_in: Vec<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut c = self.0.lock().unwrap();
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        c.spans.push((span.metadata().name().to_owned(), fields));
        Id::from_u64(c.spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut c = self.0.lock().unwrap();
        let (_, fields) = &mut c.spans[span.into_u64() as usize - 1];
        values.record(&mut Fields(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {
        let mut c = self.0.lock().unwrap();
        let name = match c.current.last() {
            Some(id) => c.spans[*id as usize - 1].0.clone(),
            None => "(none)".to_owned(),
        };
        c.events_in.push(name);
    }
    fn enter(&self, span: &Id) {
        self.0.lock().unwrap().current.push(span.into_u64());
    }
    fn exit(&self, _: &Id) {
        self.0.lock().unwrap().current.pop();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn publish_and_receive_spans_carry_the_messaging_fields() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let queue = msgio::mem::MemQueue::named("orders", 4).unwrap();
    let topic = TracedTopic::new(queue.topic(), "orders").system("mem");
    let mut writer = topic.new_writer(&Context::background()).unwrap();
    writer.write_all(b"12345").await.unwrap();
    writer.close().await.unwrap();

    let receiver = TracedReceiver::new(ReceiverFunc::new(|_: Context, _: Message| async {
        tracing::info!("handling");
        Err(Error::other("database down"))
    }));
    let ctx = Context::background()
        .with_source("orders")
        .with_message_id(42u64)
        .with_attempt(3);
    receiver.receive(ctx, Message::new("x")).await.unwrap_err();

    let c = capture.0.lock().unwrap();
    let (name, publish) = &c.spans[0];
    assert_eq!(name, "msgio.publish");
    assert_eq!(publish["messaging.system"], "mem");
    assert_eq!(publish["messaging.destination.name"], "orders");
    assert_eq!(publish["messaging.operation.type"], "send");
    assert_eq!(publish["messaging.message.body.size"], "5");
    assert_eq!(publish["otel.kind"], "producer");

    let (name, receive) = c.spans.iter().find(|(n, _)| n == "msgio.receive").unwrap();
    assert_eq!(name, "msgio.receive");
    assert_eq!(receive["messaging.destination.name"], "orders");
    assert_eq!(receive["messaging.message.id"], "42");
    assert_eq!(receive["messaging.msgio.attempt"], "3");
    assert_eq!(receive["otel.kind"], "consumer");
    assert!(receive["error"].contains("database down"), "{receive:?}");
    assert_eq!(
        c.events_in,
        ["msgio.receive"],
        "the receiver's event was not inside its span"
    );
}

//! NATS JetStream, msgio against raw async-nats doing the same work, in the same run.
//!
//! Publish: 200 concurrent publishers share one connection, each message a JetStream
//! publish of a 100-byte body with two attribute headers and a `Nats-Msg-Id`, waiting for
//! its PubAck. msgio publishes through `NatsTopic::publish`; raw async-nats sends the same
//! headers with `publish_with_headers` and awaits the same acknowledgement.
//!
//! Consume with ack: the stream is filled beforehand; the clock runs until every message
//! was handed to a receiver and acknowledged. msgio serves with concurrency 64 (pulls of
//! up to 128); raw async-nats pulls batches of 128 from the same kind of durable consumer,
//! turns the headers into attributes and acks each message where it reads it.
//!
//! Prints the median of several rounds of each (alternating), and their ratio.
//!
//! Latency: at half of msgio's peak rate (the slower of its publish and consume medians),
//! messages published one by one on a steady pace (each publish spawned, awaiting its
//! PubAck) to a running consumer; the p50 and p99 from publish to receive of msgio and of
//! raw async-nats doing the same (a durable pull consumer's message stream, batches of
//! 128, acked inline); a second of messages a run, runs alternating,
//! medians (see `common::compare_latency`).
//!
//! Batch: 50 publishers each sending `publish_batch` of 16 (every publish out before the
//! PubAcks are awaited), against raw async-nats doing the same.
//! `MSGIO_BENCH_ONLY=publish|consume|batch|latency` runs one part.
//!
//! ```sh
//! cargo bench --bench nats --features nats,testing   # NATS_URL overrides nats://127.0.0.1:4222
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use msgio::nats::{ConsumerOptions, Nats};
use msgio::{Attributes, Server, ServerConfig};

mod common;
use common::{Done, median};

const PUBLISHERS: usize = 200;
const CONCURRENCY: usize = 64;
const BATCH: usize = 128;
const BODY: [u8; 100] = [b'x'; 100];
const ROUNDS: usize = 7;

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn stream_name() -> String {
    format!("msgio_bench_{}", msgio::testing::unique_suffix())
}

/// The headers msgio sends for message `seq`, written by hand.
fn headers(seq: usize) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.append("Content-Type", "text/plain");
    headers.append("X-Seq", seq.to_string().as_str());
    headers.insert(
        "Nats-Msg-Id",
        format!("{}{}", msgio::testing::unique_suffix(), seq).as_str(),
    );
    headers
}

async fn make_stream(js: &jetstream::Context, stream: &str) {
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![format!("{stream}.>")],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// msgio: `n` messages from 200 concurrent publishers; messages per second.
async fn msgio_publish(nats: &Nats, js: &jetstream::Context, n: usize) -> f64 {
    let stream = stream_name();
    nats.ensure_stream(&ConsumerOptions::new(&stream, "d"))
        .await
        .unwrap();
    let topic = nats.topic(format!("{stream}.t"));
    let started = common::Meter::start();
    common::publish_from(topic, n, PUBLISHERS, 1).await;
    let rate = started.finish(n, "msgio publish");
    js.delete_stream(&stream).await.unwrap();
    rate
}

/// Raw async-nats: the same publishes, awaiting each PubAck, from 200 concurrent tasks.
async fn raw_publish(js: &jetstream::Context, n: usize) -> f64 {
    let stream = stream_name();
    make_stream(js, &stream).await;
    let subject = format!("{stream}.t");
    let started = common::Meter::start();
    let publishing = js.clone();
    common::from_publishers(n, PUBLISHERS, n, move |chunk| {
        let (js, subject) = (publishing.clone(), subject.clone());
        async move {
            for seq in chunk {
                js.publish_with_headers(subject.clone(), headers(seq), Bytes::from_static(&BODY))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let rate = started.finish(n, "raw publish");
    js.delete_stream(&stream).await.unwrap();
    rate
}

/// A stream holding `n` messages as msgio publishes them.
async fn filled(js: &jetstream::Context, n: usize) -> String {
    let stream = stream_name();
    make_stream(js, &stream).await;
    let subject = format!("{stream}.t");
    let mut acks = Vec::with_capacity(n);
    for seq in 0..n {
        acks.push(
            js.publish_with_headers(subject.clone(), headers(seq), Bytes::from_static(&BODY))
                .await
                .unwrap(),
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    stream
}

async fn durable(js: &jetstream::Context, stream: &str) -> consumer::PullConsumer {
    js.get_stream(stream)
        .await
        .unwrap()
        .get_or_create_consumer(
            "d",
            consumer::pull::Config {
                durable_name: Some("d".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

/// msgio: serve `n` messages with concurrency 64 until all are acknowledged.
async fn msgio_consume(nats: &Nats, js: &jetstream::Context, n: usize) -> f64 {
    let stream = filled(js, n).await;
    let done = Done::new(n);
    let receiver = common::counting(done.clone());
    let server = nats
        .server(
            ConsumerOptions::new(&stream, "d"),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let mut consumer = durable(js, &stream).await;
    let started = common::Meter::start();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    done.wait().await;
    while consumer.info().await.unwrap().num_ack_pending > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = started.finish(n, "msgio consume");
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = task.await;
    js.delete_stream(&stream).await.unwrap();
    rate
}

/// Raw async-nats: pull batches of 128, decode the headers, ack each message inline.
async fn raw_consume(client: &async_nats::Client, js: &jetstream::Context, n: usize) -> f64 {
    let stream = filled(js, n).await;
    let mut consumer = durable(js, &stream).await;
    let started = common::Meter::start();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .unwrap();
    for _ in 0..n {
        let message = messages.next().await.unwrap().unwrap();
        let mut attributes = Attributes::new();
        if let Some(headers) = &message.headers {
            for (name, values) in headers.iter() {
                for value in values {
                    attributes.add(AsRef::<str>::as_ref(name), value.as_str());
                }
            }
        }
        std::hint::black_box((&message.payload, attributes));
        message.ack().await.unwrap();
    }
    client.flush().await.unwrap();
    while consumer.info().await.unwrap().num_ack_pending > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = started.finish(n, "raw consume");
    drop(messages);
    js.delete_stream(&stream).await.unwrap();
    rate
}

/// Messages a batch, and publishers, in the batch bench.
const BATCH_SIZE: usize = 16;
const BATCH_PUBLISHERS: usize = 50;

/// msgio: `n` messages from 50 concurrent publishers, each `publish_batch` of 16 (all 16
/// published before their acknowledgements are awaited); messages per second.
async fn msgio_publish_batch(nats: &Nats, js: &jetstream::Context, n: usize) -> f64 {
    let stream = stream_name();
    nats.ensure_stream(&ConsumerOptions::new(&stream, "d"))
        .await
        .unwrap();
    let topic = nats.topic(format!("{stream}.t"));
    let started = common::Meter::start();
    common::publish_from(topic, n, BATCH_PUBLISHERS, BATCH_SIZE).await;
    let rate = started.finish(n, "msgio batch");
    js.delete_stream(&stream).await.unwrap();
    rate
}

/// Raw async-nats: the same publishes, 50 concurrent tasks each sending 16 and then
/// awaiting their 16 PubAcks.
async fn raw_publish_batch(js: &jetstream::Context, n: usize) -> f64 {
    let stream = stream_name();
    make_stream(js, &stream).await;
    let subject = format!("{stream}.t");
    let started = common::Meter::start();
    let publishing = js.clone();
    common::from_publishers(n, BATCH_PUBLISHERS, BATCH_SIZE, move |chunk| {
        let (js, subject) = (publishing.clone(), subject.clone());
        async move {
            let mut acks = Vec::with_capacity(BATCH_SIZE);
            for seq in chunk {
                acks.push(
                    js.publish_with_headers(
                        subject.clone(),
                        headers(seq),
                        Bytes::from_static(&BODY),
                    )
                    .await
                    .unwrap(),
                );
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    })
    .await;
    let rate = started.finish(n, "raw batch");
    js.delete_stream(&stream).await.unwrap();
    rate
}

/// msgio: a server with concurrency 64 on a new stream, and publishes at `rate` a second,
/// each spawned; the p50 and p99 from publish to receive.
async fn msgio_latency(
    nats: &Nats,
    js: &jetstream::Context,
    n: usize,
    rate: f64,
) -> (Duration, Duration) {
    let stream = stream_name();
    let server = nats
        .server(
            ConsumerOptions::new(&stream, "d"),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let topic = nats.topic(format!("{stream}.t"));
    let figures = common::msgio_latency(topic, server, n, rate).await;
    js.delete_stream(&stream).await.unwrap();
    figures
}

/// Raw async-nats: the same publishes at `rate` (each spawned, awaiting its PubAck), and a
/// durable pull consumer's message stream (batches of 128), acking each message inline.
async fn raw_latency(js: &jetstream::Context, n: usize, rate: f64) -> (Duration, Duration) {
    let stream = stream_name();
    make_stream(js, &stream).await;
    let mut consumer = durable(js, &stream).await;
    let lat = common::Latencies::new(n);
    let reader = {
        let lat = lat.clone();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .unwrap();
        tokio::spawn(async move {
            for _ in 0..n {
                let message = messages.next().await.unwrap().unwrap();
                lat.record(&message.payload);
                message.ack().await.unwrap();
            }
        })
    };
    let subject = format!("{stream}.t");
    common::paced(n, rate, |seq| {
        let (js, subject, body) = (js.clone(), subject.clone(), lat.stamped());
        tokio::spawn(async move {
            js.publish_with_headers(subject, headers(seq), body)
                .await
                .unwrap()
                .await
                .unwrap();
        });
    })
    .await;
    let figures = lat.wait().await;
    reader.await.unwrap();
    let _ = consumer.info().await;
    js.delete_stream(&stream).await.unwrap();
    figures
}

fn main() {
    let runtime = common::runtime();
    let n = common::messages(50_000);
    runtime.block_on(async {
        let (nats, client) = match (Nats::connect(&url()).await, async_nats::connect(url()).await)
        {
            (Ok(nats), Ok(client)) => (nats, client),
            (Err(e), _) => {
                eprintln!("SKIPPED: NATS at {} did not answer: {e}", url());
                return;
            }
            (_, Err(e)) => {
                eprintln!("SKIPPED: NATS at {} did not answer: {e}", url());
                return;
            }
        };
        let js = jetstream::new(client.clone());
        // Warm up both paths once.
        msgio_publish(&nats, &js, n / 10).await;
        raw_publish(&js, n / 10).await;
        msgio_consume(&nats, &js, n / 10).await;
        raw_consume(&client, &js, n / 10).await;

        let only = std::env::var("MSGIO_BENCH_ONLY").ok();
        common::reset_cpu();
        let mut peak = f64::INFINITY;
        if only.as_deref().is_none_or(|o| o == "publish") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_publish(&nats, &js, n).await,
                async || raw_publish(&js, n).await,
            )
            .await;
            println!("nats publish with acks, {n} messages x {ROUNDS} rounds, {PUBLISHERS} concurrent publishers, 100-byte body, 2 attributes");
            common::print_pair("msgio NatsTopic", "raw async-nats", &ours, &raw, &ratios);
            common::print_cpu("msgio publish", "raw publish");
            peak = peak.min(median(ours.clone()));
        }
        if only.as_deref().is_none_or(|o| o == "consume") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_consume(&nats, &js, n).await,
                async || raw_consume(&client, &js, n).await,
            )
            .await;
            println!("nats consume + ack, {n} messages x {ROUNDS} rounds, pulls of {BATCH}");
            common::print_pair(&format!("msgio NatsServer, concurrency {CONCURRENCY}"), "raw async-nats, handled inline", &ours, &raw, &ratios);
            common::print_cpu("msgio consume", "raw consume");
            peak = peak.min(median(ours.clone()));
        }
        if only.as_deref().is_none_or(|o| o == "batch") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_publish_batch(&nats, &js, n).await,
                async || raw_publish_batch(&js, n).await,
            )
            .await;
            println!("nats publish_batch, {n} messages x {ROUNDS} rounds, {BATCH_PUBLISHERS} concurrent publishers, batches of {BATCH_SIZE} (acks awaited together)");
            common::print_pair("msgio NatsTopic::publish_batch", "raw async-nats, same batches", &ours, &raw, &ratios);
            common::print_cpu("msgio batch", "raw batch");
        }
        if only.as_deref().is_none_or(|o| o == "latency") {
            // Half of msgio's peak: the slower of its publish and consume rates, measured
            // above (or in a quick round of each when only latency runs).
            if peak == f64::INFINITY {
                peak = msgio_publish(&nats, &js, n / 2)
                    .await
                    .min(msgio_consume(&nats, &js, n / 2).await);
            }
            let rate = common::latency_rate(peak);
            let count = common::latency_count(rate);
            common::compare_latency(
                "nats",
                rate,
                count,
                "raw async-nats publish + pull",
                async || msgio_latency(&nats, &js, count, rate).await,
                async || raw_latency(&js, count, rate).await,
            )
            .await;
        }
    });
}

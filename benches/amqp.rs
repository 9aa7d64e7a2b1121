//! RabbitMQ, msgio against raw lapin doing the same work, in the same run.
//!
//! Publish with confirms: 500 concurrent publishers share one confirm-mode channel, each
//! message a persistent, mandatory publish of a 100-byte body with a content type and one
//! header to a durable queue, waiting for its confirmation (so up to 500 confirms are in
//! flight). msgio publishes through `AmqpTopic::publish`; raw lapin calls `basic_publish`
//! with the same properties and awaits the same confirmation.
//!
//! Consume with ack: the queue is filled beforehand; the clock runs until every message
//! was handed to a receiver and acknowledged. msgio serves with concurrency 64 (prefetch
//! 128); raw lapin consumes with prefetch 128, turns the headers into attributes and acks
//! each delivery where it reads it.
//!
//! Prints the median of several rounds of each (alternating), and their ratio.
//!
//! Latency: at half of msgio's peak rate (the slower of its publish and consume medians),
//! messages published one by one on a steady pace (each publish spawned, waiting for its
//! confirm) to a running consumer; the p50 and p99 from publish to receive of msgio and of
//! raw lapin doing the same (prefetch 128, acked inline); a second of messages a run,
//! runs alternating, medians (see `common::compare_latency`).
//!
//! Batch: 50 publishers each sending `publish_batch` of 16 (every publish out before the
//! confirms are awaited), against raw lapin doing the same.
//! `MSGIO_BENCH_ONLY=publish|consume|batch|latency` runs one part; `MSGIO_BENCH_MESSAGES`
//! sets the messages a round (25,000).
//!
//! ```sh
//! cargo bench --bench amqp --features amqp,testing   # AMQP_URL overrides the local broker
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use msgio::amqp::{Amqp, QueueOptions};
use msgio::{Attributes, Server, ServerConfig};

mod common;
use common::{Done, median};

const PUBLISHERS: usize = 500;
const CONCURRENCY: usize = 64;
const PREFETCH: u16 = 128;
const BODY: [u8; 100] = [b'x'; 100];
const ROUNDS: usize = 7;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn queue_name() -> String {
    format!("msgio_bench_{}", msgio::testing::unique_suffix())
}

/// The properties msgio sends for message `seq`, written by hand.
fn properties(seq: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "X-Seq".into(),
        AMQPValue::LongString(LongString::from(seq.to_string())),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_headers(headers)
}

async fn declare(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn delete(channel: &Channel, queue: &str) {
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// msgio: `n` messages from 500 concurrent publishers; messages per second.
async fn msgio_publish(amqp: &Amqp, admin: &Channel, n: usize) -> f64 {
    let queue = queue_name();
    declare(admin, &queue).await;
    let topic = amqp.queue_topic(&queue).unwrap();
    let started = common::Meter::start();
    common::publish_from(topic, n, PUBLISHERS, 1).await;
    let rate = started.finish(n, "msgio publish");
    delete(admin, &queue).await;
    rate
}

/// Raw lapin: the same publishes on one confirm-mode channel, from 500 concurrent tasks.
async fn raw_publish(publisher: &Channel, admin: &Channel, n: usize) -> f64 {
    let queue = queue_name();
    declare(admin, &queue).await;
    let started = common::Meter::start();
    let publisher = publisher.clone();
    let publishing = queue.clone();
    common::from_publishers(n, PUBLISHERS, n, move |chunk| {
        let (channel, queue) = (publisher.clone(), publishing.clone());
        async move {
            for seq in chunk {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &BODY,
                        properties(seq),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert!(confirm.is_ack() && confirm.take_message().is_none());
            }
        }
    })
    .await;
    let rate = started.finish(n, "raw publish");
    delete(admin, &queue).await;
    rate
}

/// A durable queue holding `n` messages as msgio publishes them.
async fn filled(publisher: &Channel, admin: &Channel, n: usize) -> String {
    let queue = queue_name();
    declare(admin, &queue).await;
    let mut confirms = Vec::with_capacity(1000);
    for seq in 0..n {
        confirms.push(
            publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &BODY,
                    properties(seq),
                )
                .await
                .unwrap(),
        );
        if confirms.len() == 1000 {
            for c in confirms.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in confirms {
        c.await.unwrap();
    }
    queue
}

/// msgio: serve `n` messages with concurrency 64 until all are acknowledged (the server's
/// shutdown sends the last acks).
async fn msgio_consume(amqp: &Amqp, publisher: &Channel, admin: &Channel, n: usize) -> f64 {
    let queue = filled(publisher, admin, n).await;
    let done = Done::new(n);
    let receiver = common::counting(done.clone());
    let server = amqp
        .server(
            QueueOptions::new(&queue),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let started = common::Meter::start();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    done.wait().await;
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let rate = started.finish(n, "msgio consume");
    let _ = task.await;
    delete(admin, &queue).await;
    rate
}

/// Raw lapin: consume with prefetch 128, decode the headers, ack each delivery inline.
async fn raw_consume(
    connection: &Connection,
    publisher: &Channel,
    admin: &Channel,
    n: usize,
) -> f64 {
    let queue = filled(publisher, admin, n).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let started = common::Meter::start();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        let delivery = consumer.next().await.unwrap().unwrap();
        let mut attributes = Attributes::new();
        if let Some(headers) = delivery.properties.headers() {
            for (name, value) in headers {
                if let AMQPValue::LongString(s) = value {
                    attributes.add(name.as_str(), String::from_utf8_lossy(s.as_bytes()));
                }
            }
        }
        std::hint::black_box((Bytes::from(delivery.data), attributes));
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    channel.close(200, "done".into()).await.unwrap();
    let rate = started.finish(n, "raw consume");
    delete(admin, &queue).await;
    rate
}

/// Messages a batch, and publishers, in the batch bench.
const BATCH_SIZE: usize = 16;
const BATCH_PUBLISHERS: usize = 50;

/// msgio: `n` messages from 50 concurrent publishers, each `publish_batch` of 16 (all 16
/// published before their confirms are awaited); messages per second.
async fn msgio_publish_batch(amqp: &Amqp, admin: &Channel, n: usize) -> f64 {
    let queue = queue_name();
    declare(admin, &queue).await;
    let topic = amqp.queue_topic(&queue).unwrap();
    let started = common::Meter::start();
    common::publish_from(topic, n, BATCH_PUBLISHERS, BATCH_SIZE).await;
    let rate = started.finish(n, "msgio batch");
    delete(admin, &queue).await;
    rate
}

/// Raw lapin: the same publishes on the confirm-mode channel, 50 concurrent tasks each
/// sending 16 and then awaiting their 16 confirms.
async fn raw_publish_batch(publisher: &Channel, admin: &Channel, n: usize) -> f64 {
    let queue = queue_name();
    declare(admin, &queue).await;
    let started = common::Meter::start();
    let publisher = publisher.clone();
    let publishing = queue.clone();
    common::from_publishers(n, BATCH_PUBLISHERS, BATCH_SIZE, move |chunk| {
        let (channel, queue) = (publisher.clone(), publishing.clone());
        async move {
            let mut confirms = Vec::with_capacity(BATCH_SIZE);
            for seq in chunk {
                confirms.push(
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &BODY,
                            properties(seq),
                        )
                        .await
                        .unwrap(),
                );
            }
            for confirm in confirms {
                assert!(confirm.await.unwrap().is_ack());
            }
        }
    })
    .await;
    let rate = started.finish(n, "raw batch");
    delete(admin, &queue).await;
    rate
}

/// msgio: a server with concurrency 64 on a new queue, and publishes at `rate` a second,
/// each spawned, waiting for its confirm; the p50 and p99 from publish to receive.
async fn msgio_latency(amqp: &Amqp, admin: &Channel, n: usize, rate: f64) -> (Duration, Duration) {
    let queue = queue_name();
    declare(admin, &queue).await;
    let server = amqp
        .server(
            QueueOptions::new(&queue),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let topic = amqp.queue_topic(&queue).unwrap();
    let figures = common::msgio_latency(topic, server, n, rate).await;
    delete(admin, &queue).await;
    figures
}

/// Raw lapin: the same publishes at `rate` on the confirm-mode channel (each spawned,
/// waiting for its confirm), and a consumer with prefetch 128 acking each delivery inline.
async fn raw_latency(
    connection: &Connection,
    publisher: &Channel,
    admin: &Channel,
    n: usize,
    rate: f64,
) -> (Duration, Duration) {
    let queue = queue_name();
    declare(admin, &queue).await;
    let lat = common::Latencies::new(n);
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reader = {
        let (lat, channel) = (lat.clone(), channel.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                let delivery = consumer.next().await.unwrap().unwrap();
                lat.record(&delivery.data);
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await
                    .unwrap();
            }
        })
    };
    common::paced(n, rate, |seq| {
        let (channel, queue, body) = (publisher.clone(), queue.clone(), lat.stamped());
        tokio::spawn(async move {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties(seq),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        });
    })
    .await;
    let figures = lat.wait().await;
    reader.await.unwrap();
    channel.close(200, "done".into()).await.unwrap();
    delete(admin, &queue).await;
    figures
}

fn main() {
    let runtime = common::runtime();
    // RabbitMQ takes 13-20k persistent confirmed publishes a second here: 25,000 a round
    // keeps the whole bench near two minutes (`MSGIO_BENCH_MESSAGES` sets it).
    let n = common::messages(25_000);
    runtime.block_on(async {
        let (amqp, connection) = match (
            Amqp::connect(&url()).await,
            Connection::connect(&url(), ConnectionProperties::default()).await,
        ) {
            (Ok(amqp), Ok(connection)) => (amqp, connection),
            (Err(e), _) => {
                eprintln!("SKIPPED: RabbitMQ at {} did not answer: {e}", amqp_shown());
                return;
            }
            (_, Err(e)) => {
                eprintln!("SKIPPED: RabbitMQ at {} did not answer: {e}", amqp_shown());
                return;
            }
        };
        let admin = connection.create_channel().await.unwrap();
        let publisher = connection.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // Warm up both paths once.
        msgio_publish(&amqp, &admin, n / 10).await;
        raw_publish(&publisher, &admin, n / 10).await;
        msgio_consume(&amqp, &publisher, &admin, n / 10).await;
        raw_consume(&connection, &publisher, &admin, n / 10).await;

        let only = std::env::var("MSGIO_BENCH_ONLY").ok();
        common::reset_cpu();
        let mut peak = f64::INFINITY;
        if only.as_deref().is_none_or(|o| o == "publish") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_publish(&amqp, &admin, n).await,
                async || raw_publish(&publisher, &admin, n).await,
            )
            .await;
            println!("amqp publish with confirms, {n} messages x {ROUNDS} rounds, {PUBLISHERS} concurrent publishers, 100-byte persistent body, 2 attributes");
            common::print_pair("msgio AmqpTopic", "raw lapin", &ours, &raw, &ratios);
            common::print_cpu("msgio publish", "raw publish");
            peak = peak.min(median(ours));
        }
        if only.as_deref().is_none_or(|o| o == "consume") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_consume(&amqp, &publisher, &admin, n).await,
                async || raw_consume(&connection, &publisher, &admin, n).await,
            )
            .await;
            println!("amqp consume + ack, {n} messages x {ROUNDS} rounds, prefetch {PREFETCH}");
            common::print_pair(&format!("msgio AmqpServer, concurrency {CONCURRENCY}"), "raw lapin, handled inline", &ours, &raw, &ratios);
            common::print_cpu("msgio consume", "raw consume");
            peak = peak.min(median(ours));
        }
        if only.as_deref().is_none_or(|o| o == "batch") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_publish_batch(&amqp, &admin, n).await,
                async || raw_publish_batch(&publisher, &admin, n).await,
            )
            .await;
            println!("amqp publish_batch, {n} messages x {ROUNDS} rounds, {BATCH_PUBLISHERS} concurrent publishers, batches of {BATCH_SIZE} (confirms awaited together)");
            common::print_pair("msgio AmqpTopic::publish_batch", "raw lapin, same batches", &ours, &raw, &ratios);
            common::print_cpu("msgio batch", "raw batch");
        }
        if only.as_deref().is_none_or(|o| o == "latency") {
            // Half of msgio's peak: the slower of its publish and consume rates, measured
            // above (or in a quick round of each when only latency runs).
            if peak == f64::INFINITY {
                peak = msgio_publish(&amqp, &admin, n / 2)
                    .await
                    .min(msgio_consume(&amqp, &publisher, &admin, n / 2).await);
            }
            let rate = common::latency_rate(peak);
            let count = common::latency_count(rate);
            common::compare_latency(
                "amqp",
                rate,
                count,
                "raw lapin publish + consume",
                async || msgio_latency(&amqp, &admin, count, rate).await,
                async || raw_latency(&connection, &publisher, &admin, count, rate).await,
            )
            .await;
        }
    });
}

/// The broker's URL, password hidden.
fn amqp_shown() -> String {
    let url = url();
    match url.split_once("://").and_then(|(s, rest)| {
        let (auth, host) = rest.split_once('@')?;
        let user = auth.split(':').next()?;
        Some(format!("{s}://{user}:***@{host}"))
    }) {
        Some(shown) => shown,
        None => url,
    }
}

//! Kafka, msgio against raw rdkafka doing the same work, in the same run, alternating.
//!
//! Produce: 64 concurrent publishers share one producer (`acks=all`, idempotence, 5 ms
//! linger on both sides), each record a 100-byte body with two headers (`Content-Type`,
//! `X-Seq`); each publish waits for its acknowledgement. msgio publishes through
//! `KafkaTopic::publish`; raw rdkafka sends the same record with `FutureProducer::send`.
//!
//! Consume with commit: one topic of 4 partitions is filled beforehand (five times the
//! produce count); each round reads all of it as a new consumer group. The clock runs
//! from the first record received to the last one handled (commits go out asynchronously
//! meanwhile; the last synchronous commit and leaving the group are not timed, on either
//! side); the time from starting the consumer to its first record (the group join) is
//! reported apart. msgio serves with concurrency 64 (records
//! handed to a receiver that reads the body and a header, offsets committed as they
//! become contiguous); raw rdkafka reads with `StreamConsumer::recv`, decodes the headers
//! and body the same way, handles each inline and commits the positions asynchronously
//! every 1,000 records and at the end. A second raw baseline hands each record to a task
//! of its own (64 at once), as a server does, storing offsets as tasks finish (out of
//! order: no contiguity kept).
//!
//! Latency: at half of msgio's peak (the slower of its produce and consume medians), a
//! second of records a run on a new 4-partition topic, consumers joined before the first
//! record is sent; msgio's `KafkaTopic` + `KafkaServer` against raw `FutureProducer::send`
//! + a `StreamConsumer` reading inline; runs alternating (see `common::compare_latency`).
//!
//! `MSGIO_BENCH_ONLY=produce|consume|latency` runs one part; `MSGIO_BENCH_MESSAGES` sets the
//! count (20,000).
//!
//! ```sh
//! cargo bench --bench kafka --features kafka   # KAFKA_BROKERS overrides 127.0.0.1:9092
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use msgio::kafka::{ConsumerOptions, Kafka};
use msgio::{Server, ServerConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

mod common;
use common::{Done, median};

const PUBLISHERS: usize = 64;
const CONCURRENCY: usize = 64;
const ROUNDS: usize = 5;
const SESSION: Duration = Duration::from_secs(6);

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn unique(prefix: &str) -> String {
    format!(
        "msgio_bench_{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

async fn msgio_produce(kafka: &Kafka, topic: &str, n: usize) -> f64 {
    let meter = common::Meter::start();
    common::publish_from(kafka.topic(topic), n, PUBLISHERS, 1).await;
    meter.finish(n, "msgio produce")
}

/// Raw rdkafka: sends one record as msgio's topic would (the two headers, the body) and
/// waits for its acknowledgement.
async fn raw_send(producer: &FutureProducer, topic: &str, body: &[u8], seq: usize) {
    let seq = seq.to_string();
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: "Content-Type",
            value: Some("text/plain"),
        })
        .insert(Header {
            key: "X-Seq",
            value: Some(seq.as_str()),
        });
    let record = FutureRecord::<(), _>::to(topic)
        .payload(body)
        .headers(headers);
    producer.send(record, Timeout::Never).await.unwrap();
}

async fn raw_produce(producer: &FutureProducer, topic: &str, n: usize) -> f64 {
    let meter = common::Meter::start();
    let (producer, topic) = (producer.clone(), Arc::new(topic.to_owned()));
    common::from_publishers(n, PUBLISHERS, n, move |chunk| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let body = [b'x'; 100];
            for seq in chunk {
                raw_send(&producer, &topic, &body, seq).await;
            }
        }
    })
    .await;
    meter.finish(n, "raw produce")
}

/// One round of msgio's consume: (records a second after the first, join time).
async fn msgio_consume(kafka: &Kafka, topic: &str, n: usize) -> (f64, Duration) {
    let done = Done::new(n);
    let first = Arc::new(std::sync::OnceLock::new());
    let receiver = {
        let (done, first) = (done.clone(), first.clone());
        msgio::ReceiverFunc::new(move |_: msgio::Context, mut msg: msgio::Message| {
            let (done, first) = (done.clone(), first.clone());
            async move {
                first.get_or_init(|| (Instant::now(), common::cpu_time()));
                let body = msg.body.read_to_bytes(1024).await?;
                std::hint::black_box((body, msg.attributes.get("X-Seq").is_some()));
                done.one();
                Ok(())
            }
        })
    };
    let options = ConsumerOptions::new(topic, unique("group")).session_timeout(SESSION);
    // The server joins the group before it returns: the join is counted from here.
    let started = Instant::now();
    let server = kafka
        .server(options, ServerConfig::new().concurrency(CONCURRENCY))
        .await
        .unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    done.wait().await;
    let (t0, cpu0) = *first.get().unwrap();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    common::record_cpu_since(cpu0, n, "msgio consume");
    // The last commit and leaving the group are not timed (on either side).
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = task.await;
    (rate, t0 - started)
}

/// What the raw consumers do with a record, as msgio's receiver does: decode the headers
/// (each value as UTF-8), copy the body out, look at one header.
fn raw_handle(message: &impl rdkafka::message::Message) {
    let mut seq = false;
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            let value = std::str::from_utf8(h.value.unwrap_or_default()).unwrap();
            seq |= h.key.eq_ignore_ascii_case("X-Seq") && !value.is_empty();
        }
    }
    let body = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
    std::hint::black_box((body, seq));
}

/// A raw consumer of `topic` in a new group named after `prefix`, committing by hand.
fn raw_consumer(prefix: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique(prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION.as_millis().to_string())
        .set(
            "heartbeat.interval.ms",
            (SESSION.as_millis() / 3).to_string(),
        )
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// One round of raw rdkafka's consume: (records a second after the first, join time).
async fn raw_consume(topic: &str, n: usize) -> (f64, Duration) {
    let consumer = raw_consumer("raw", topic);
    let started = Instant::now();
    let mut first = None;
    for i in 0..n {
        let message = consumer.recv().await.unwrap();
        if first.is_none() {
            first = Some((Instant::now(), common::cpu_time()));
        }
        raw_handle(&message);
        consumer.store_offset_from_message(&message).unwrap();
        if (i + 1) % 1000 == 0 {
            consumer.commit_consumer_state(CommitMode::Async).unwrap();
        }
    }
    let (t0, cpu0) = first.unwrap();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    common::record_cpu_since(cpu0, n, "raw consume");
    // NoOffset: nothing stored since the last commit.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        assert_eq!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::NoOffset),
            "{e}"
        );
    }
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    (rate, t0 - started)
}

/// One round of raw rdkafka handing each record to a task of its own (at most 64 at
/// once), as a server does: the task decodes and handles it, then stores its offset; the
/// positions are committed asynchronously every 1,000 records. (It stores offsets out of
/// order, which a real consumer must not: no contiguity is kept.)
async fn raw_consume_tasks(topic: &str, n: usize) -> f64 {
    let consumer = Arc::new(raw_consumer("rawtasks", topic));
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let done = Done::new(n);
    let mut first = None;
    for i in 0..n {
        let message = consumer.recv().await.unwrap().detach();
        if first.is_none() {
            first = Some((Instant::now(), common::cpu_time()));
        }
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (storing, done) = (consumer.clone(), done.clone());
        tokio::spawn(async move {
            raw_handle(&message);
            let _ =
                storing.store_offset(message.topic(), message.partition(), message.offset() + 1);
            done.one();
            drop(permit);
        });
        if (i + 1) % 1000 == 0 {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
        }
    }
    done.wait().await;
    let (t0, cpu0) = first.unwrap();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    common::record_cpu_since(cpu0, n, "raw consume tasks");
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    rate
}

/// msgio: a server with concurrency 64 on a new topic of 4 partitions (joined before
/// publishing starts), and publishes at `rate` a second, each spawned; the p50 and p99
/// from publish to receive.
async fn msgio_latency(kafka: &Kafka, n: usize, rate: f64) -> (Duration, Duration) {
    let topic = unique("latency");
    kafka.create_topic(&topic, 4).await.unwrap();
    let options = ConsumerOptions::new(&topic, unique("group")).session_timeout(SESSION);
    let server = kafka
        .server(options, ServerConfig::new().concurrency(CONCURRENCY))
        .await
        .unwrap();
    common::msgio_latency(kafka.topic(&topic), server, n, rate).await
}

/// Raw rdkafka: a consumer reading inline (recording each record's latency, storing its
/// offset, committing asynchronously every 1,000), joined before publishing starts, and
/// the same records sent at `rate` a second through `FutureProducer::send`, each spawned.
async fn raw_latency(
    kafka: &Kafka,
    producer: &FutureProducer,
    n: usize,
    rate: f64,
) -> (Duration, Duration) {
    let topic = unique("latency");
    kafka.create_topic(&topic, 4).await.unwrap();
    let consumer = Arc::new(raw_consumer("rawlatency", &topic));
    let lat = common::Latencies::new(n);
    let reader = {
        let (consumer, lat) = (consumer.clone(), lat.clone());
        tokio::spawn(async move {
            for i in 0..n {
                let message = consumer.recv().await.unwrap();
                lat.record(message.payload().unwrap_or_default());
                consumer.store_offset_from_message(&message).unwrap();
                if (i + 1) % 1000 == 0 {
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                }
            }
        })
    };
    // As msgio's server does before it returns: wait until the group gave partitions.
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let topic = Arc::new(topic);
    common::paced(n, rate, |seq| {
        let (producer, topic, body) = (producer.clone(), topic.clone(), lat.stamped());
        tokio::spawn(async move { raw_send(&producer, &topic, &body, seq).await });
    })
    .await;
    let figures = lat.wait().await;
    reader.await.unwrap();
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    figures
}

fn main() {
    let runtime = common::runtime();
    let n = common::messages(20_000);
    let only = std::env::var("MSGIO_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    runtime.block_on(async {
        let kafka = match Kafka::connect(&brokers()).await {
            Ok(k) => k,
            Err(e) => {
                eprintln!("SKIPPED: Kafka at {} did not answer: {e}", brokers());
                return;
            }
        };
        let producer = raw_producer();
        let produce_topic = unique("produce");
        kafka.create_topic(&produce_topic, 4).await.unwrap();
        // Warm up both producers.
        msgio_produce(&kafka, &produce_topic, n / 10).await;
        raw_produce(&producer, &produce_topic, n / 10).await;
        common::reset_cpu();
        let mut peak = f64::INFINITY;
        if part("produce") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_produce(&kafka, &produce_topic, n).await,
                async || raw_produce(&producer, &produce_topic, n).await,
            )
            .await;
            println!("kafka produce, {n} records x {ROUNDS} rounds, {PUBLISHERS} concurrent publishers, 100-byte body, 2 headers, acks=all");
            common::print_pair("msgio KafkaTopic", "raw rdkafka FutureProducer", &ours, &raw, &ratios);
            common::print_cpu("msgio produce", "raw produce");
            peak = peak.min(median(ours));
        }
        if part("consume") {
            let n = n * 5;
            let topic = unique("consume");
            kafka.create_topic(&topic, 4).await.unwrap();
            common::publish_from(kafka.topic(&topic), n, PUBLISHERS, 256).await;
            let (mut ours, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let (mut tasks, mut task_ratios) = (Vec::new(), Vec::new());
            let (mut joins_ours, mut joins_raw) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                let ((o, jo), (r, jr), t) = if round % 2 == 0 {
                    let o = msgio_consume(&kafka, &topic, n).await;
                    let r = raw_consume(&topic, n).await;
                    (o, r, raw_consume_tasks(&topic, n).await)
                } else {
                    let t = raw_consume_tasks(&topic, n).await;
                    let r = raw_consume(&topic, n).await;
                    (msgio_consume(&kafka, &topic, n).await, r, t)
                };
                ours.push(o);
                raw.push(r);
                tasks.push(t);
                ratios.push(o / r);
                task_ratios.push(o / t);
                joins_ours.push(jo.as_secs_f64());
                joins_raw.push(jr.as_secs_f64());
            }
            peak = peak.min(median(ours.clone()));
            println!("kafka consume + commit, {n} records on 4 partitions x {ROUNDS} rounds, a new group each round");
            println!("  msgio KafkaServer, concurrency {CONCURRENCY}   {:>10.0} msgs/s (median)", median(ours));
            println!("  raw rdkafka StreamConsumer, inline  {:>10.0} msgs/s (median)", median(raw));
            println!("  raw rdkafka, a task per record (64) {:>10.0} msgs/s (median)", median(tasks));
            println!("  ratio msgio/raw inline (median of rounds)      {:>6.2}", median(ratios));
            println!("  ratio msgio/raw task per record (median)       {:>6.2}", median(task_ratios));
            common::print_cpu("msgio consume", "raw consume");
            common::print_cpu("msgio consume", "raw consume tasks");
            println!(
                "  group join (start to first record, session.timeout.ms={}): msgio {:.2} s, raw {:.2} s (medians)",
                SESSION.as_millis(),
                median(joins_ours),
                median(joins_raw)
            );
        }
        if part("latency") {
            // Half of msgio's peak: the slower of its produce and consume rates, measured
            // above (or in a quick round of each when only latency runs).
            if peak == f64::INFINITY {
                let topic = unique("latency-peak");
                kafka.create_topic(&topic, 4).await.unwrap();
                common::publish_from(kafka.topic(&topic), n / 2, PUBLISHERS, 256).await;
                peak = msgio_produce(&kafka, &produce_topic, n / 2)
                    .await
                    .min(msgio_consume(&kafka, &topic, n / 2).await.0);
            }
            let rate = common::latency_rate(peak);
            let count = common::latency_count(rate);
            common::compare_latency(
                "kafka",
                rate,
                count,
                "raw rdkafka send + StreamConsumer",
                async || msgio_latency(&kafka, count, rate).await,
                async || raw_latency(&kafka, &producer, count, rate).await,
            )
            .await;
        }
    });
}

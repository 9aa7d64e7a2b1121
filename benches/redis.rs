//! Redis Streams, msgio against raw redis-rs doing the same commands, in the same run.
//!
//! Publish: 50 concurrent publishers share one connection, each message an `XADD` of a
//! 100-byte body and two attributes (fields `body`, `attr:Content-Type`, `attr:X-Seq`).
//! msgio publishes through `RedisTopic::publish`; raw redis-rs sends the same `XADD` on a
//! `MultiplexedConnection` (both pipeline concurrent commands on one connection).
//!
//! Consume with ack: the stream is filled beforehand; the clock runs until every entry was
//! handed to a receiver and acknowledged. msgio serves with concurrency 64 (reads of up to
//! 128, `XACK` batches of up to 128); raw redis-rs reads `XREADGROUP COUNT 128` on its own
//! connection, decodes each entry into a body and attributes, and sends one `XACK` per
//! read on a second, multiplexed connection without waiting for it before the next read.
//!
//! Prints the median of several rounds of each (alternating), and their ratio.
//!
//! Latency: at half of msgio's peak rate (the slower of its publish and consume medians),
//! messages published one by one on a steady pace (each publish spawned) to a running
//! consumer; the p50 and p99 from publish to receive of msgio and of raw redis-rs doing
//! the same (`XADD`, and `XREADGROUP COUNT 128 BLOCK 100` with an `XACK` per read); a
//! second of messages a run, runs alternating, medians (see `common::compare_latency`).
//! Batch: the same publishers each sending `publish_batch` of 16 (one pipeline), against raw
//! redis-rs pipelines of 16 XADDs, and `redis-benchmark -P 16` sending the same XADD when installed.
//! `MSGIO_BENCH_ONLY=publish|consume|batch|latency` runs one part.
//!
//! ```sh
//! cargo bench --bench redis --features redis   # REDIS_URL overrides redis://127.0.0.1:6379
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msgio::redis::{Redis, StreamOptions};
use msgio::{Attributes, Server, ServerConfig};
use redis::Value;
use redis::aio::MultiplexedConnection;

mod common;
use common::{Done, median};

const PUBLISHERS: usize = 50;
const CONCURRENCY: usize = 64;
const READ_COUNT: usize = 128;
const BODY: [u8; 100] = [b'x'; 100];
const ROUNDS: usize = 9;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn raw_conn() -> MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn stream_name() -> String {
    format!("msgio-bench:{}", msgio::testing::unique_suffix())
}

async fn delete(conn: &mut MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("DEL")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
}

/// msgio: `n` messages from 50 concurrent publishers; messages per second.
async fn msgio_publish(redis: &Redis, n: usize) -> f64 {
    let stream = stream_name();
    let topic = redis.topic(&stream);
    let started = common::Meter::start();
    common::publish_from(topic, n, PUBLISHERS, 1).await;
    let rate = started.finish(n, "msgio publish");
    delete(&mut raw_conn().await, &stream).await;
    rate
}

/// Raw redis-rs: the same XADDs from 50 concurrent publishers on one multiplexed connection.
async fn raw_publish(n: usize) -> f64 {
    let stream: Arc<str> = stream_name().into();
    let conn = raw_conn().await;
    let started = common::Meter::start();
    let publishing = stream.clone();
    common::from_publishers(n, PUBLISHERS, n, move |chunk| {
        let (mut conn, stream) = (conn.clone(), publishing.clone());
        async move {
            for seq in chunk {
                let _: Value = xadd(&stream, seq).query_async(&mut conn).await.unwrap();
            }
        }
    })
    .await;
    let rate = started.finish(n, "raw publish");
    delete(&mut raw_conn().await, &stream).await;
    rate
}

/// The XADD msgio sends for message `seq`, written by hand.
fn xadd(stream: &str, seq: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream)
        .arg("*")
        .arg("body")
        .arg(&BODY[..])
        .arg("attr:Content-Type")
        .arg("text/plain")
        .arg("attr:X-Seq")
        .arg(seq.to_string());
    cmd
}

/// The XREADGROUP a hand-written consumer sends: up to 128 new entries.
fn xreadgroup(stream: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg("g")
        .arg("raw")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(100)
        .arg("STREAMS")
        .arg(stream)
        .arg(">");
    cmd
}

/// A stream holding `n` entries as msgio writes them, and a consumer group on it.
async fn filled(n: usize) -> String {
    let stream = stream_name();
    let mut conn = raw_conn().await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for seq in chunk {
            pipe.add_command(xadd(&stream, *seq)).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    stream
}

async fn pending(conn: &mut MultiplexedConnection, stream: &str) -> u64 {
    let (count, ..): (u64, Value, Value, Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(conn)
        .await
        .unwrap();
    count
}

/// msgio: serve `n` entries with concurrency 64 until all are acknowledged.
async fn msgio_consume(redis: &Redis, n: usize) -> f64 {
    let stream = filled(n).await;
    let mut conn = raw_conn().await;
    let done = Done::new(n);
    let receiver = common::counting(done.clone());
    let server = redis
        .server(
            StreamOptions::new(&stream, "g").block(Duration::from_millis(100)),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let started = common::Meter::start();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    done.wait().await;
    while pending(&mut conn, &stream).await > 0 {
        tokio::task::yield_now().await;
    }
    let rate = started.finish(n, "msgio consume");
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = task.await;
    delete(&mut conn, &stream).await;
    rate
}

/// Raw redis-rs: XREADGROUP COUNT 128 in a loop, decode, XACK each read without waiting.
async fn raw_consume(n: usize) -> f64 {
    let stream = filled(n).await;
    let mut reader = raw_conn().await;
    let acker = raw_conn().await;
    let started = common::Meter::start();
    let mut seen = 0;
    let mut acks = Vec::new();
    while seen < n {
        let reply: Value = xreadgroup(&stream).query_async(&mut reader).await.unwrap();
        let mut ids = Vec::new();
        for (id, fields) in decode(reply) {
            std::hint::black_box(fields);
            ids.push(id);
        }
        seen += ids.len();
        let mut acker = acker.clone();
        let stream = stream.clone();
        acks.push(tokio::spawn(async move {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&stream).arg("g");
            for id in ids {
                cmd.arg(id);
            }
            let _: Value = cmd.query_async(&mut acker).await.unwrap();
        }));
    }
    for a in acks {
        a.await.unwrap();
    }
    let rate = started.finish(n, "raw consume");
    delete(&mut reader, &stream).await;
    rate
}

/// Raw redis-rs with the same concurrency as msgio: XREADGROUP COUNT 128 in a loop, each
/// entry decoded and handled in its own task under a semaphore of 64, its id then sent to
/// an acker that sends one XACK per batch of up to 128 ids without waiting for it.
async fn raw_consume_concurrent(n: usize) -> f64 {
    let stream = filled(n).await;
    let mut reader = raw_conn().await;
    let acker_conn = raw_conn().await;
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let acker = {
        let stream = stream.clone();
        tokio::spawn(async move {
            let mut sends = Vec::new();
            let mut acked = 0;
            while acked < n {
                let Some(first) = ack_rx.recv().await else {
                    break;
                };
                let mut cmd = redis::cmd("XACK");
                cmd.arg(&stream).arg("g").arg(first);
                let mut batch = 1;
                while batch < READ_COUNT {
                    match ack_rx.try_recv() {
                        Ok(id) => {
                            cmd.arg(id);
                            batch += 1;
                        }
                        Err(_) => break,
                    }
                }
                acked += batch;
                let mut conn = acker_conn.clone();
                sends.push(tokio::spawn(async move {
                    let _: Value = cmd.query_async(&mut conn).await.unwrap();
                }));
            }
            for s in sends {
                s.await.unwrap();
            }
        })
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let started = common::Meter::start();
    let mut seen = 0;
    while seen < n {
        let reply: Value = xreadgroup(&stream).query_async(&mut reader).await.unwrap();
        for (id, fields) in decode(reply) {
            seen += 1;
            let slot = slots.clone().acquire_owned().await.unwrap();
            let ack_tx = ack_tx.clone();
            tokio::spawn(async move {
                std::hint::black_box(fields);
                ack_tx.send(id).unwrap();
                drop(slot);
            });
        }
    }
    acker.await.unwrap();
    let rate = started.finish(n, "raw consume tasks");
    delete(&mut reader, &stream).await;
    rate
}

/// Messages a batch in the batch bench, as `redis-benchmark -P 16`.
const BATCH: usize = 16;

/// msgio: `n` messages from 50 concurrent publishers, each `publish_batch` of 16 (one
/// pipeline each); messages per second.
async fn msgio_publish_batch(redis: &Redis, n: usize) -> f64 {
    let stream = stream_name();
    let topic = redis.topic(&stream);
    let started = common::Meter::start();
    common::publish_from(topic, n, PUBLISHERS, BATCH).await;
    let rate = started.finish(n, "msgio batch");
    delete(&mut raw_conn().await, &stream).await;
    rate
}

/// Raw redis-rs: the same XADDs, 50 concurrent publishers each sending pipelines of 16 on
/// one multiplexed connection.
async fn raw_publish_batch(n: usize) -> f64 {
    let stream: Arc<str> = stream_name().into();
    let conn = raw_conn().await;
    let started = common::Meter::start();
    let publishing = stream.clone();
    common::from_publishers(n, PUBLISHERS, BATCH, move |chunk| {
        let (mut conn, stream) = (conn.clone(), publishing.clone());
        async move {
            let mut pipe = redis::pipe();
            for seq in chunk {
                pipe.add_command(xadd(&stream, seq));
            }
            let _: Vec<Value> = pipe.query_async(&mut conn).await.unwrap();
        }
    })
    .await;
    let rate = started.finish(n, "raw batch");
    delete(&mut raw_conn().await, &stream).await;
    rate
}

/// `redis-benchmark -P 16` sending the same XADD (50 connections, 16 commands in flight
/// on each), when it is installed: the broker's own figure for pipelined XADD here.
async fn redis_benchmark(n: usize) -> Option<f64> {
    let url = url();
    let hostport = url.rsplit('@').next()?.trim_start_matches("redis://");
    let hostport = hostport.split('/').next()?;
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));
    let stream = stream_name();
    let body = String::from_utf8(BODY.to_vec()).ok()?;
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-P", "16", "-q", "-n"])
        .arg(n.to_string())
        .args(["XADD", &stream, "*", "body", &body])
        .args(["attr:Content-Type", "text/plain", "attr:X-Seq", "1"])
        .output()
        .ok()?;
    delete(&mut raw_conn().await, &stream).await;
    // Progress lines end in '\r'; the last says "...: 925925.88 requests per second, ...".
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let line = text.lines().find(|l| l.contains("requests per second"))?;
    let before = line.split(" requests per second").next()?;
    before.rsplit(": ").next()?.trim().parse().ok()
}

/// msgio: a server with concurrency 64 on a new stream, and publishes at `rate` a second,
/// each spawned; the p50 and p99 from publish to receive.
async fn msgio_latency(redis: &Redis, n: usize, rate: f64) -> (Duration, Duration) {
    let stream = stream_name();
    let server = redis
        .server(
            StreamOptions::new(&stream, "g")
                .start_id("$")
                .block(Duration::from_millis(100)),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let topic = redis.topic(&stream);
    let figures = common::msgio_latency(topic, server, n, rate).await;
    delete(&mut raw_conn().await, &stream).await;
    figures
}

/// Raw redis-rs: the same XADDs at `rate`, each spawned, and a consumer reading
/// `XREADGROUP COUNT 128 BLOCK 100` in a loop, decoding and acknowledging each read.
async fn raw_latency(n: usize, rate: f64) -> (Duration, Duration) {
    let stream: Arc<str> = stream_name().into();
    let mut reader = raw_conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&*stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut reader)
        .await
        .unwrap();
    let lat = common::Latencies::new(n);
    let consumer = {
        let (lat, stream, acker) = (lat.clone(), stream.clone(), raw_conn().await);
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < n {
                let reply: Value = xreadgroup(&stream).query_async(&mut reader).await.unwrap();
                let mut cmd = redis::cmd("XACK");
                cmd.arg(&*stream).arg("g");
                for (id, (body, _attrs)) in decode(reply) {
                    lat.record(&body);
                    cmd.arg(id);
                    seen += 1;
                }
                let mut acker = acker.clone();
                tokio::spawn(async move {
                    let _: Value = cmd.query_async(&mut acker).await.unwrap();
                });
            }
        })
    };
    let conn = raw_conn().await;
    common::paced(n, rate, |seq| {
        let (mut conn, stream, body) = (conn.clone(), stream.clone(), lat.stamped());
        tokio::spawn(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&*stream)
                .arg("*")
                .arg("body")
                .arg(&body[..])
                .arg("attr:Content-Type")
                .arg("text/plain")
                .arg("attr:X-Seq")
                .arg(seq.to_string());
            let _: Value = cmd.query_async(&mut conn).await.unwrap();
        });
    })
    .await;
    let figures = lat.wait().await;
    consumer.await.unwrap();
    delete(&mut raw_conn().await, &stream).await;
    figures
}

/// What a hand-written consumer decodes: each entry's id, body and attributes.
fn decode(reply: Value) -> Vec<(String, (Bytes, Attributes))> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = pair.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut entry) = entry else {
                continue;
            };
            let (Some(Value::Array(fields)), Some(Value::BulkString(id))) =
                (entry.pop(), entry.pop())
            else {
                continue;
            };
            let (mut body, mut attrs) = (Bytes::new(), Attributes::new());
            let mut it = fields.into_iter();
            while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                (it.next(), it.next())
            {
                if k == b"body" {
                    body = Bytes::from(v);
                } else if let Some(key) = k.strip_prefix(b"attr:") {
                    attrs.add(
                        String::from_utf8(key.to_vec()).unwrap(),
                        String::from_utf8(v).unwrap(),
                    );
                }
            }
            out.push((String::from_utf8(id).unwrap(), (body, attrs)));
        }
    }
    out
}

fn main() {
    let runtime = common::runtime();
    let n = common::messages(100_000);
    runtime.block_on(async {
        let redis = match Redis::connect(&url()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("SKIPPED: Redis at {} did not answer: {e}", url());
                return;
            }
        };
        // Warm up both paths once.
        msgio_publish(&redis, n / 10).await;
        raw_publish(n / 10).await;
        msgio_consume(&redis, n / 10).await;
        raw_consume(n / 10).await;

        common::reset_cpu();
        let mut peak = f64::INFINITY;
        if std::env::var("MSGIO_BENCH_ONLY").map_or(true, |o| o == "publish") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_publish(&redis, n).await,
                async || raw_publish(n).await,
            )
            .await;
            println!("redis publish, {n} messages x {ROUNDS} rounds, {PUBLISHERS} concurrent publishers, 100-byte body, 2 attributes");
            common::print_pair("msgio RedisTopic", "raw redis-rs XADD", &ours, &raw, &ratios);
            common::print_cpu("msgio publish", "raw publish");
            peak = peak.min(median(ours));
        }
        if std::env::var("MSGIO_BENCH_ONLY").map_or(true, |o| o == "consume") {
            let (mut ours, mut raw, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
            let (mut ratios, mut task_ratios) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                // Alternate the order, so that neither side always follows the other.
                let (o, r, t) = if round % 2 == 0 {
                    let o = msgio_consume(&redis, n).await;
                    let r = raw_consume(n).await;
                    (o, r, raw_consume_concurrent(n).await)
                } else {
                    let t = raw_consume_concurrent(n).await;
                    let r = raw_consume(n).await;
                    (msgio_consume(&redis, n).await, r, t)
                };
                ours.push(o);
                raw.push(r);
                tasks.push(t);
                ratios.push(o / r);
                task_ratios.push(o / t);
            }
            println!("redis consume + ack, {n} messages x {ROUNDS} rounds, reads of {READ_COUNT}, acks of up to {READ_COUNT}");
            println!("  msgio RedisServer, concurrency {CONCURRENCY}   {:>10.0} msgs/s (median)", median(ours.clone()));
            println!("  raw redis-rs, handled inline        {:>10.0} msgs/s (median)", median(raw));
            println!("  raw redis-rs, a task per message    {:>10.0} msgs/s (median)", median(tasks));
            println!("  ratio msgio/raw inline (median of rounds)      {:>6.2}", median(ratios));
            println!("  ratio msgio/raw task per message (median)      {:>6.2}", median(task_ratios));
            common::print_cpu("msgio consume", "raw consume");
            peak = peak.min(median(ours));
        }
        if std::env::var("MSGIO_BENCH_ONLY").map_or(true, |o| o == "batch") {
            let (mut ours, mut raw, mut ratios, mut bench) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                let (o, r) = if round % 2 == 0 {
                    (msgio_publish_batch(&redis, n).await, raw_publish_batch(n).await)
                } else {
                    let r = raw_publish_batch(n).await;
                    (msgio_publish_batch(&redis, n).await, r)
                };
                ours.push(o);
                raw.push(r);
                ratios.push(o / r);
                if round % 3 == 0 {
                    bench.extend(redis_benchmark(n).await);
                }
            }
            println!("redis publish_batch, {n} messages x {ROUNDS} rounds, {PUBLISHERS} concurrent publishers, batches of {BATCH}");
            common::print_pair("msgio RedisTopic::publish_batch", &format!("raw redis-rs pipelines of {BATCH}"), &ours, &raw, &ratios);
            common::print_cpu("msgio batch", "raw batch");
            if bench.is_empty() {
                println!("  redis-benchmark -P 16: not installed");
            } else {
                let bench = median(bench);
                println!("  redis-benchmark -P 16, same XADD    {bench:>10.0} msgs/s (median; 50 connections)");
                println!("  ratio msgio/redis-benchmark         {:>10.2}", median(ours) / bench);
            }
        }
        if std::env::var("MSGIO_BENCH_ONLY").map_or(true, |o| o == "latency") {
            // Half of msgio's peak: the slower of its publish and consume rates, measured
            // above (or in a quick round of each when only latency runs).
            if peak == f64::INFINITY {
                peak = msgio_publish(&redis, n / 2)
                    .await
                    .min(msgio_consume(&redis, n / 2).await);
            }
            let rate = common::latency_rate(peak);
            let count = common::latency_count(rate);
            common::compare_latency(
                "redis",
                rate,
                count,
                "raw redis-rs XADD + XREADGROUP",
                async || msgio_latency(&redis, count, rate).await,
                async || raw_latency(count, rate).await,
            )
            .await;
        }
    });
}

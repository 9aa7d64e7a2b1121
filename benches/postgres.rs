//! PostgreSQL, msgio against raw tokio-postgres doing the same work, in the same run.
//!
//! Publish: 16 concurrent publishers (a quarter of the message count: the raw side commits
//! once per message), each message a 100-byte body with two attributes,
//! inserted with its `NOTIFY`. msgio publishes through `PostgresTopic::publish` (which
//! shares one insert among the writers waiting at the same time); raw tokio-postgres sends
//! the same insert-and-notify statement per message, prepared, from the same 16 tasks over
//! a pool of the same 8 connections.
//!
//! Consume with ack: the queue is filled beforehand; the clock runs until every row was
//! handed to a receiver and deleted. msgio serves with concurrency 64; raw tokio-postgres
//! runs one loop claiming batches of 128 with the same `FOR UPDATE SKIP LOCKED` lease
//! update (starting after the highest id it claimed, as msgio does), reads each row's
//! attributes and body, and deletes the batch.
//!
//! Wake-up: an idle consumer, one message published every 20 ms; the p50 and p99 from
//! publish to receive, of a msgio server woken by `NOTIFY` and of a raw loop that
//! `LISTEN`s and claims (up to 128) on each notification. Both sides publish through
//! `PostgresTopic`, so the consumers are what differs.
//!
//! Latency: the same two consumers at half of msgio's peak (the slower of its publish and
//! consume medians), a second of messages a run, runs alternating (see
//! `common::compare_latency`).
//!
//! Long transaction (`MSGIO_BENCH_ONLY=long_tx`, not in the default run: it takes about
//! two minutes): consume throughput in 5 s windows while a publisher keeps the queue
//! full, before, during a 60 s `REPEATABLE READ` transaction held open on another
//! connection, and for 30 s after it ends; with the table's dead tuples and size.
//!
//! `MSGIO_BENCH_ONLY=publish|consume|wakeup|latency|long_tx` runs one part.
//!
//! ```sh
//! cargo bench --bench postgres --features postgres,testing  # POSTGRES_URL overrides the default
//! ```

use std::sync::Arc;
use std::time::Duration;

use msgio::postgres::{Postgres, QueueOptions};
use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig};

mod common;
use common::{Done, median};

const PUBLISHERS: usize = 16;
const CONCURRENCY: usize = 64;
const CLAIM: i64 = 128;
const ROUNDS: usize = 5;

fn url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn queue_name() -> String {
    format!("msgio-bench-{}", msgio::testing::unique_suffix())
}

/// The statements the raw side sends: what msgio sends, written by hand.
const INSERT: &str = "WITH ins AS (
        INSERT INTO msgio.messages (queue, attributes, body) VALUES ($1, $2, $3) RETURNING 1)
    SELECT pg_notify('msgio.msgio', $1)";
const CLAIM_SQL: &str = "UPDATE msgio.messages m
    SET attempts = m.attempts + 1, lease_owner = 'raw', run_at = now() + interval '30 seconds'
    FROM (SELECT c.id FROM msgio.messages c WHERE c.queue = $1 AND c.id > $3 AND c.run_at <= now()
          ORDER BY c.id LIMIT $2 FOR UPDATE SKIP LOCKED) picked
    WHERE m.id = picked.id
    RETURNING m.id, m.attributes, m.body";
const DELETE: &str = "DELETE FROM msgio.messages WHERE id = ANY($1)";

fn attributes(seq: usize) -> Vec<String> {
    vec![
        "Content-Type".to_owned(),
        "text/plain".to_owned(),
        "X-Seq".to_owned(),
        seq.to_string(),
    ]
}

async fn pool() -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(8)
        .build()
        .unwrap()
}

async fn raw_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn purge(client: &tokio_postgres::Client, queue: &str) {
    client
        .execute("DELETE FROM msgio.messages WHERE queue = $1", &[&queue])
        .await
        .unwrap();
}

/// msgio: `n` messages from 16 concurrent publishers; messages per second.
async fn msgio_publish(postgres: &Postgres, client: &tokio_postgres::Client, n: usize) -> f64 {
    let queue = queue_name();
    let topic = postgres.topic(&queue);
    let started = common::Meter::start();
    common::publish_from(topic, n, PUBLISHERS, 1).await;
    let rate = started.finish(n, "msgio publish");
    purge(client, &queue).await;
    rate
}

/// Raw tokio-postgres: the same insert per message from 16 tasks over 8 pooled
/// connections.
async fn raw_publish(
    pool: &deadpool_postgres::Pool,
    client: &tokio_postgres::Client,
    n: usize,
) -> f64 {
    let queue = Arc::new(queue_name());
    let started = common::Meter::start();
    let (p, q) = (pool.clone(), queue.clone());
    common::from_publishers(n, PUBLISHERS, n, move |chunk| {
        let (pool, queue) = (p.clone(), q.clone());
        async move {
            for seq in chunk {
                let conn = pool.get().await.unwrap();
                let statement = conn.prepare_cached(INSERT).await.unwrap();
                let body: &[u8] = &[b'x'; 100];
                conn.execute(&statement, &[&*queue, &attributes(seq), &body])
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let rate = started.finish(n, "raw publish");
    purge(client, &queue).await;
    rate
}

/// A queue holding `n` messages as msgio publishes them.
async fn filled(postgres: &Postgres, n: usize) -> String {
    let queue = queue_name();
    let topic = postgres.topic(&queue).notify(false);
    common::publish_from(topic, n, 4, 1000).await;
    queue
}

/// msgio: serve `n` messages with concurrency 64 until all are deleted.
async fn msgio_consume(postgres: &Postgres, client: &tokio_postgres::Client, n: usize) -> f64 {
    let queue = filled(postgres, n).await;
    let done = Done::new(n);
    let receiver = common::counting(done.clone());
    let server = postgres
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
    while count(client, &queue).await > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = started.finish(n, "msgio consume");
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = task.await;
    rate
}

async fn count(client: &tokio_postgres::Client, queue: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM msgio.messages WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap()
        .get(0)
}

/// One raw claim of up to 128 rows after `cursor` (the highest id claimed so far, as
/// msgio's claims start), read, deleted; how many.
async fn raw_claim_once(
    client: &tokio_postgres::Client,
    claim: &tokio_postgres::Statement,
    delete: &tokio_postgres::Statement,
    queue: &str,
    cursor: &mut i64,
) -> usize {
    let rows = client
        .query(claim, &[&queue, &CLAIM, &*cursor])
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.get::<_, i64>(0));
        let attributes: Vec<String> = row.get(1);
        let body: &[u8] = row.get(2);
        std::hint::black_box((attributes, body));
    }
    if let Some(highest) = ids.iter().max() {
        *cursor = (*cursor).max(*highest);
        client.execute(delete, &[&ids]).await.unwrap();
    }
    rows.len()
}

/// Raw tokio-postgres: one loop claiming 128 at a time and deleting them.
async fn raw_consume(postgres: &Postgres, client: &tokio_postgres::Client, n: usize) -> f64 {
    let queue = filled(postgres, n).await;
    let claim = client.prepare(CLAIM_SQL).await.unwrap();
    let delete = client.prepare(DELETE).await.unwrap();
    let started = common::Meter::start();
    let (mut seen, mut cursor) = (0, 0);
    while seen < n {
        seen += raw_claim_once(client, &claim, &delete, &queue, &mut cursor).await;
    }
    started.finish(n, "raw consume")
}

/// msgio: a server woken by `NOTIFY`; the p50 and p99 of `n` messages sent at `rate` a
/// second (idle between them at 50 a second).
async fn msgio_wakeup(postgres: &Postgres, n: usize, rate: f64) -> (Duration, Duration) {
    let queue = queue_name();
    let server = postgres
        .server(
            QueueOptions::new(&queue),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::msgio_latency(postgres.topic(&queue), server, n, rate).await
}

/// Raw tokio-postgres: `LISTEN`, and on each notification of the queue, claim (up to 128)
/// and delete; `n` messages published at `rate` a second.
async fn raw_wakeup(postgres: &Postgres, n: usize, rate: f64) -> (Duration, Duration) {
    use futures::StreamExt;
    let queue = queue_name();
    let (listener, mut connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.unbounded_send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute("LISTEN \"msgio.msgio\"")
        .await
        .unwrap();
    let lat = common::Latencies::new(n);
    let (l, q) = (lat.clone(), queue.clone());
    let consumer = tokio::spawn(async move {
        let client = raw_client().await;
        let claim = client.prepare(CLAIM_SQL).await.unwrap();
        let delete = client.prepare(DELETE).await.unwrap();
        let mut got = 0;
        while got < n {
            let Some(payload) = rx.next().await else {
                break;
            };
            // msgio's topic notifies "<queue> <lowest id>".
            if payload.split(' ').next() != Some(q.as_str()) {
                continue;
            }
            let rows = client.query(&claim, &[&q, &CLAIM, &0i64]).await.unwrap();
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            for row in &rows {
                l.record(row.get::<_, &[u8]>(2));
            }
            got += rows.len();
            if !ids.is_empty() {
                client.execute(&delete, &[&ids]).await.unwrap();
            }
        }
    });
    let topic = postgres.topic(&queue);
    let ctx = Context::background();
    common::paced(n, rate, |seq| {
        let (topic, ctx) = (topic.clone(), ctx.clone());
        let mut msg = common::message(seq);
        msg.body = lat.stamped().into();
        tokio::spawn(async move { msgio::Topic::publish(&topic, &ctx, msg).await.unwrap() });
    })
    .await;
    let figures = lat.wait().await;
    consumer.await.unwrap();
    driver.abort();
    figures
}

/// The table's dead and live tuples and its size with its indexes.
async fn stats(client: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT n_dead_tup, n_live_tup, pg_total_relation_size('msgio.messages')
             FROM pg_stat_user_tables WHERE schemaname = 'msgio' AND relname = 'messages'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Consume throughput in 5 s windows around a 60 s `REPEATABLE READ` transaction.
async fn long_transaction(postgres: &Postgres, client: &tokio_postgres::Client) {
    let queue = queue_name();
    let topic = postgres.topic(&queue).notify(false);
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    // Keeps about 20,000 rows waiting: publishes while fewer than that are unacked
    // (counted here, not with `count(*)`, which a long transaction makes slow too).
    let acked = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(AtomicUsize::new(0));
    let (t, a, p) = (topic.clone(), acked.clone(), published.clone());
    let feeding = tokio::spawn(async move {
        loop {
            let seq = p.load(Relaxed);
            if seq - a.load(Relaxed) < 20_000 {
                let batch = (seq..seq + 2000).map(common::message).collect();
                msgio::Topic::publish_batch(&t, &Context::background(), batch)
                    .await
                    .unwrap();
                p.fetch_add(2000, Relaxed);
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    while published.load(Relaxed) < 20_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = acked.clone();
    let server = postgres
        .server(
            QueueOptions::new(&queue),
            ServerConfig::new().concurrency(CONCURRENCY),
        )
        .await
        .unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, _: Message| {
                a.fetch_add(1, Relaxed);
                async { Ok(()) }
            }))
            .await
    });
    let window = |label: &'static str| {
        let acked = acked.clone();
        async move {
            let before = acked.load(Relaxed);
            tokio::time::sleep(Duration::from_secs(5)).await;
            let rate = (acked.load(Relaxed) - before) as f64 / 5.0;
            println!("  {label:<28} {rate:>10.0} msgs/s");
            rate
        }
    };
    println!(
        "postgres consume under a long transaction, concurrency {CONCURRENCY}, 20,000 rows kept waiting"
    );
    let (dead, live, size) = stats(client).await;
    println!(
        "  before: dead tuples {dead}, live {live}, table+indexes {} KiB",
        size / 1024
    );
    let mut base = Vec::new();
    for _ in 0..2 {
        base.push(window("before").await);
    }
    let mut holder = raw_client().await;
    let tx = holder
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.query_one("SELECT count(*) FROM msgio.messages", &[])
        .await
        .unwrap();
    let mut during = Vec::new();
    for _ in 0..12 {
        during.push(window("during the 60 s transaction").await);
    }
    let (dead, live, size) = stats(client).await;
    println!(
        "  at its end: dead tuples {dead}, live {live}, table+indexes {} KiB",
        size / 1024
    );
    tx.commit().await.unwrap();
    let mut after = Vec::new();
    for _ in 0..6 {
        after.push(window("after").await);
    }
    let (dead, live, size) = stats(client).await;
    println!(
        "  30 s after: dead tuples {dead}, live {live}, table+indexes {} KiB",
        size / 1024
    );
    let base = median(base);
    let worst = during.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "  during/before: median {:.2}, worst window {:.2}; after/before (last window) {:.2}",
        median(during) / base,
        worst / base,
        after.last().copied().unwrap_or(0.0) / base
    );
    feeding.abort();
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = task.await;
    purge(client, &queue).await;
}

fn main() {
    let runtime = common::runtime();
    let n = common::messages(20_000);
    runtime.block_on(async {
        let postgres = match Postgres::connect(&url()).await {
            Ok(postgres) => postgres,
            Err(e) => {
                eprintln!("SKIPPED: PostgreSQL at {} did not answer: {e}", url());
                return;
            }
        };
        postgres.migrate().await.unwrap();
        let pool = pool().await;
        let client = raw_client().await;
        let only = std::env::var("MSGIO_BENCH_ONLY").ok();
        if only.as_deref() == Some("long_tx") {
            long_transaction(&postgres, &client).await;
            return;
        }
        // Warm up both paths once.
        msgio_publish(&postgres, &client, n / 40).await;
        raw_publish(&pool, &client, n / 40).await;
        msgio_consume(&postgres, &client, n / 10).await;
        raw_consume(&postgres, &client, n / 10).await;
        common::reset_cpu();
        let mut peak = f64::INFINITY;
        if only.as_deref().is_none_or(|o| o == "publish") {
            // A commit per message makes the raw side slow (each waits for its WAL flush):
            // a quarter of the messages keeps the bench under two minutes.
            let n = n / 4;
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_publish(&postgres, &client, n).await,
                async || raw_publish(&pool, &client, n).await,
            )
            .await;
            println!("postgres publish, {n} messages x {ROUNDS} rounds, {PUBLISHERS} concurrent publishers, 100-byte body, 2 attributes, NOTIFY on");
            common::print_pair("msgio PostgresTopic", "raw tokio-postgres, 8 connections", &ours, &raw, &ratios);
            common::print_cpu("msgio publish", "raw publish");
            peak = peak.min(median(ours));
        }
        if only.as_deref().is_none_or(|o| o == "consume") {
            let (ours, raw, ratios) = common::alternate(
                ROUNDS,
                async || msgio_consume(&postgres, &client, n).await,
                async || raw_consume(&postgres, &client, n).await,
            )
            .await;
            println!("postgres consume + ack, {n} messages x {ROUNDS} rounds");
            common::print_pair(&format!("msgio PostgresServer, concurrency {CONCURRENCY}"), &format!("raw SKIP LOCKED loop, claims of {CLAIM}"), &ours, &raw, &ratios);
            common::print_cpu("msgio consume", "raw consume");
            peak = peak.min(median(ours));
        }
        if only.as_deref().is_none_or(|o| o == "wakeup") {
            let count = 100;
            common::compare_latency(
                "postgres idle wake-up (NOTIFY, one message every 20 ms)",
                50.0,
                count,
                "raw LISTEN + claim",
                async || msgio_wakeup(&postgres, count, 50.0).await,
                async || raw_wakeup(&postgres, count, 50.0).await,
            )
            .await;
        }
        if only.as_deref().is_none_or(|o| o == "latency") {
            // Half of msgio's peak: the slower of its publish and consume rates, measured
            // above (or in a quick round of each when only latency runs).
            if peak == f64::INFINITY {
                peak = msgio_publish(&postgres, &client, n / 8)
                    .await
                    .min(msgio_consume(&postgres, &client, n / 8).await);
            }
            let rate = common::latency_rate(peak);
            let count = common::latency_count(rate);
            common::compare_latency(
                "postgres",
                rate,
                count,
                "raw LISTEN + claim",
                async || msgio_wakeup(&postgres, count, rate).await,
                async || raw_wakeup(&postgres, count, rate).await,
            )
            .await;
        }
    });
}

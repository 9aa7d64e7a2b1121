//! The full receiver stack against the bare receiver, on the in-memory transport, in the
//! same run: `SafeReceiver(Retry(Dedupe(Router(handler))))` with the in-memory dedupe
//! store, against `handler` alone. Every message carries a unique idempotency key and a
//! routed type, so each decorator does its whole job.
//!
//! ```sh
//! cargo bench --bench policies
//! ONLY=dedupe cargo bench --bench policies   # one decorator alone: router, dedupe, retry, safe
//! ONLY=noop-store cargo bench --bench policies   # dedupe over a store that keeps nothing
//! ```
//!
//! The no-op store tells the dedupe decorator's own cost (reading the key attribute, the
//! claim and completion calls) from the in-memory store's. The in-memory store remembers
//! 100,000 keys unless `MSGIO_BENCH_STORE_KEYS` says otherwise: a smaller one stays in the
//! cores' caches, which shows how much of its cost is memory rather than instructions.
//!
//! Each of the 21 rounds (`MSGIO_BENCH_ROUNDS`) runs both sides back to back, the bare one
//! first in even rounds and last in odd ones; the figures quoted are medians of the rounds,
//! with the middle half of the CPU ratios beside them. `MSGIO_BENCH_VERBOSE=1` prints
//! every round.
//!
//! CPU time on a shared machine moves with its neighbours; instruction counts do not.
//! `-- --variant bare` or `-- --variant stacked` runs one side once, for counting under
//! callgrind (`benches/instructions` does both and prints instructions per message).

use std::time::{Duration, Instant};

use futures::io::AsyncWriteExt;
use msgio::decorators::{Claim, Dedupe, DedupeStore, MemoryDedupeStore, Retry, Router};
use msgio::{
    Backoff, Context, Message, MessageWriter, Receiver, ReceiverFunc, SafeReceiver, Server,
    ServerConfig, Topic,
};

mod common;
use common::{Done, median};

/// Rounds by default: CPU time on this shared machine moves by tens of percent from one
/// round to the next, and the median of many pairs is what holds still.
const ROUNDS: usize = 21;
const BODY: [u8; 100] = [b'x'; 100];

/// A run's figures: messages a second, and the process's CPU time a message in
/// microseconds (publisher and server together; NaN where it cannot be read).
struct Figures {
    rate: f64,
    cpu_us: f64,
}

/// Publishes `n` messages and serves them to `receiver`.
async fn run<R: Receiver + 'static>(n: usize, done: std::sync::Arc<Done>, receiver: R) -> Figures {
    let (topic, server) =
        msgio::mem::channel_with(1024, ServerConfig::new().concurrency(64)).unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    let ctx = Context::background();
    let cpu = common::cpu_time();
    let start = Instant::now();
    for seq in 0..n {
        let mut w = topic.new_writer(&ctx).unwrap();
        w.attributes_mut().set("Type", "order.created");
        w.attributes_mut()
            .set("Idempotency-Key", format!("order-{seq}"));
        w.write_all(&BODY).await.unwrap();
        w.close().await.unwrap();
    }
    done.wait().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu_us = match (cpu, common::cpu_time()) {
        (Some(before), Some(after)) => (after - before).as_secs_f64() * 1e6 / n as f64,
        _ => f64::NAN,
    };
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    let _ = task.await;
    Figures { rate, cpu_us }
}

fn handler(done: std::sync::Arc<Done>) -> impl Receiver + Clone {
    std::sync::Arc::new(ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let done = done.clone();
        async move {
            let body = msg.body.read_to_bytes(1024).await?;
            std::hint::black_box(&body);
            done.one();
            Ok(())
        }
    }))
}

async fn bare(n: usize) -> Figures {
    let done = Done::new(n);
    run(n, done.clone(), handler(done)).await
}

async fn stacked(n: usize) -> Figures {
    let done = Done::new(n);
    if let Ok(only) = std::env::var("ONLY") {
        let h = handler(done.clone());
        return match only.as_str() {
            "router" => run(n, done, Router::new("Type").route("order.*", h)).await,
            "dedupe" => run(n, done, Dedupe::new(h, store())).await,
            "noop-store" => run(n, done, Dedupe::new(h, NoopStore)).await,
            "retry" => run(n, done, Retry::new(h, Backoff::default(), 5)).await,
            _ => run(n, done, SafeReceiver::new(h)).await,
        };
    }
    let stack = SafeReceiver::new(Retry::new(
        Dedupe::new(
            Router::new("Type").route("order.*", handler(done.clone())),
            store(),
        ),
        Backoff::default(),
        5,
    ));
    run(n, done, stack).await
}

/// The in-memory dedupe store of the stacked side: 100,000 keys, or
/// `MSGIO_BENCH_STORE_KEYS`.
fn store() -> MemoryDedupeStore {
    MemoryDedupeStore::new(common::env_count("MSGIO_BENCH_STORE_KEYS", 100_000))
}

/// A dedupe store that keeps nothing: every key is new.
struct NoopStore;

impl DedupeStore for NoopStore {
    type Claimed = ();

    async fn claim(&self, key: &str, _: Duration) -> Result<Claim<()>, msgio::Error> {
        std::hint::black_box(key);
        Ok(Claim::Acquired(()))
    }

    async fn complete(&self, _: (), _: Duration) -> Result<(), msgio::Error> {
        Ok(())
    }

    async fn release(&self, _: ()) -> Result<(), msgio::Error> {
        Ok(())
    }
}

fn main() {
    let n = common::messages(200_000);
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--variant") {
        let variant = args.get(at + 1).map(String::as_str).unwrap_or("bare");
        common::runtime().block_on(async {
            let figures = match variant {
                "stacked" => stacked(n).await,
                _ => bare(n).await,
            };
            println!("RESULT {variant} {:.0} {:.3}", figures.rate, figures.cpu_us);
        });
        return;
    }
    let rounds = common::env_count("MSGIO_BENCH_ROUNDS", ROUNDS);
    common::runtime().block_on(async {
        bare(n / 10).await;
        stacked(n / 10).await;
        let (mut b, mut s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut b_cpu, mut s_cpu, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Back to back, so that drift in the machine's speed hits both alike, and in
            // turn first, so that neither side always runs on the warmer machine.
            let (bare, stack) = if round % 2 == 0 {
                let bare = bare(n).await;
                (bare, stacked(n).await)
            } else {
                let stack = stacked(n).await;
                (bare(n).await, stack)
            };
            ratios.push(stack.rate / bare.rate);
            b.push(bare.rate);
            s.push(stack.rate);
            b_cpu.push(bare.cpu_us);
            s_cpu.push(stack.cpu_us);
            cpu_ratios.push(stack.cpu_us / bare.cpu_us);
            if std::env::var_os("MSGIO_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "round {round}: bare {:.2} us {:.0}/s, stacked {:.2} us {:.0}/s",
                    bare.cpu_us, bare.rate, stack.cpu_us, stack.rate
                );
            }
        }
        let (b, s, r) = (median(b), median(s), median(ratios));
        let quartiles = common::quartiles(cpu_ratios.clone());
        let (b_cpu, s_cpu, cpu_ratio) = (median(b_cpu), median(s_cpu), median(cpu_ratios));
        let keys = common::env_count("MSGIO_BENCH_STORE_KEYS", 100_000);
        println!(
            "mem end to end, {n} messages x {rounds} rounds, concurrency 64, \
             in-memory dedupe store of {keys} keys"
        );
        let label = match std::env::var("ONLY") {
            Ok(only) => format!("{only} alone"),
            Err(_) => "SafeReceiver+Retry+Dedupe(memory)+Router".to_owned(),
        };
        println!("  bare receiver                                   {b:>10.0} msgs/s (median)");
        println!("  {label:<46}  {s:>10.0} msgs/s (median)");
        println!(
            "  stacked / bare, median of the rounds' ratios    {r:>10.2}  ({:.1}% slower)",
            (1.0 - r) * 100.0
        );
        // Throughput hides what the stack costs when the publisher, not the server, sets
        // the pace: the CPU each message took (publisher and server) tells it.
        // Each round's pair ran back to back: the median of their ratios is steadier than
        // the ratio of the two medians when the machine's speed drifts between rounds.
        println!(
            "  CPU a message (median): bare {b_cpu:.2} us, stacked {s_cpu:.2} us; \
             stacked / bare, median of the rounds' ratios {:+.0}% (middle half {:+.0}% to {:+.0}%)",
            (cpu_ratio - 1.0) * 100.0,
            (quartiles.0 - 1.0) * 100.0,
            (quartiles.1 - 1.0) * 100.0,
        );
    });
}

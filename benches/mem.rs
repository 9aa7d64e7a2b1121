//! In-memory end to end, msgio against a raw tokio channel, in the same run.
//!
//! msgio: publish through the topic's writer (two attributes, a 100-byte body), serve with
//! concurrency 64, read the body in the receiver.
//! Baseline: a tokio bounded channel of the same capacity whose consumer spawns a task per
//! message under a semaphore of 64, carrying a `Bytes` body and a
//! `HashMap<String, Vec<String>>` of the same two attributes.
//!
//! Prints the median throughput and CPU per message (user+system time of the process's
//! threads over a round, divided by its messages) of several rounds of each, their ratios,
//! the heap allocations per message of each (counted by this bench's global allocator), and
//! p50/p99 publish-to-receive latency at half of msgio's peak rate.
//!
//! ```sh
//! cargo bench --bench mem
//! cargo bench --bench mem -- --msgio-only   # one RESULT line per round, for benches/vs-go
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::io::AsyncWriteExt;
use msgio::{Context, Message, MessageWriter, ReceiverFunc, Server, ServerConfig, Topic};
use tokio::sync::{Semaphore, mpsc};

mod common;
use common::{Done, median};

/// Counts heap allocations while `COUNTING` is on (one relaxed load per allocation
/// otherwise), so that the bench can say how many a message costs each side.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes straight to the system allocator; counting touches no memory of
// the allocation.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(AtomicOrdering::Relaxed) {
            ALLOCATIONS.fetch_add(1, AtomicOrdering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(AtomicOrdering::Relaxed) {
            ALLOCATIONS.fetch_add(1, AtomicOrdering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Allocations per message of `run` over `n` messages.
async fn allocations_per_message<F: std::future::Future>(n: usize, run: F) -> f64 {
    ALLOCATIONS.store(0, AtomicOrdering::Relaxed);
    COUNTING.store(true, AtomicOrdering::Relaxed);
    run.await;
    COUNTING.store(false, AtomicOrdering::Relaxed);
    ALLOCATIONS.load(AtomicOrdering::Relaxed) as f64 / n as f64
}

/// A round's throughput and CPU per message.
#[derive(Clone, Copy)]
struct Round {
    rate: f64,
    cpu_ns: f64,
}

fn measured(n: usize, start: Instant, cpu: Option<Duration>) -> Round {
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu_ns = match (cpu, common::cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_nanos() as f64 / n as f64,
        _ => f64::NAN,
    };
    Round { rate, cpu_ns }
}

const CONCURRENCY: usize = 64;
const CAPACITY: usize = 1024;
const BODY: [u8; 100] = [b'x'; 100];
const ROUNDS: usize = 7;

/// A mem topic and a server with concurrency 64 serving `on_body` in the background.
struct MsgioRun {
    topic: msgio::mem::MemTopic,
    server: msgio::mem::MemServer,
    task: tokio::task::JoinHandle<Result<(), msgio::Error>>,
}

impl MsgioRun {
    fn start(on_body: impl Fn(Bytes) + Send + Sync + 'static) -> Self {
        let (topic, server) =
            msgio::mem::channel_with(CAPACITY, ServerConfig::new().concurrency(CONCURRENCY))
                .unwrap();
        let on_body = Arc::new(on_body);
        let receiver = ReceiverFunc::new(move |_: Context, mut msg: Message| {
            let on_body = on_body.clone();
            async move {
                on_body(msg.body.read_to_bytes(1024).await?);
                Ok(())
            }
        });
        let serving = server.clone();
        let task = tokio::spawn(async move { serving.serve(receiver).await });
        MsgioRun {
            topic,
            server,
            task,
        }
    }

    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(10)).await.unwrap();
        let _ = self.task.await;
    }
}

/// Publishes one message through the topic's writer, as a user would.
async fn publish(topic: &msgio::mem::MemTopic, ctx: &Context, seq: usize, body: &[u8]) {
    let mut writer = topic.new_writer(ctx).unwrap();
    writer.attributes_mut().set("Content-Type", "text/plain");
    writer.attributes_mut().set("X-Seq", seq.to_string());
    writer.write_all(body).await.unwrap();
    writer.close().await.unwrap();
}

async fn msgio_throughput(n: usize) -> Round {
    let done = Done::new(n);
    let d = done.clone();
    let run = MsgioRun::start(move |body| {
        std::hint::black_box(&body);
        d.one();
    });
    let (start, cpu) = (Instant::now(), common::cpu_time());
    let ctx = Context::background();
    for seq in 0..n {
        publish(&run.topic, &ctx, seq, &BODY).await;
    }
    done.wait().await;
    let round = measured(n, start, cpu);
    run.stop().await;
    round
}

struct RawMessage {
    attributes: HashMap<String, Vec<String>>,
    body: Bytes,
}

fn raw_message(seq: usize, body: &[u8]) -> RawMessage {
    let mut attributes = HashMap::new();
    attributes.insert("Content-Type".to_owned(), vec!["text/plain".to_owned()]);
    attributes.insert("X-Seq".to_owned(), vec![seq.to_string()]);
    RawMessage {
        attributes,
        body: Bytes::copy_from_slice(body),
    }
}

/// The raw consumer: a task per message under a semaphore of 64.
fn raw_consumer(
    mut rx: mpsc::Receiver<RawMessage>,
    on_message: impl Fn(RawMessage) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let on_message = Arc::new(on_message);
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        while let Some(msg) = rx.recv().await {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let on_message = on_message.clone();
            tokio::spawn(async move {
                on_message(msg);
                drop(permit);
            });
        }
    })
}

async fn raw_throughput(n: usize) -> Round {
    let (tx, rx) = mpsc::channel::<RawMessage>(CAPACITY);
    let done = Done::new(n);
    let d = done.clone();
    let consumer = raw_consumer(rx, move |msg| {
        std::hint::black_box((&msg.attributes, &msg.body));
        d.one();
    });
    let (start, cpu) = (Instant::now(), common::cpu_time());
    for seq in 0..n {
        tx.send(raw_message(seq, &BODY)).await.unwrap();
    }
    done.wait().await;
    let round = measured(n, start, cpu);
    drop(tx);
    consumer.await.unwrap();
    round
}

/// Publishes `n` messages at `rate` per second in 1 ms slices, each carrying its send time.
async fn paced<F, Fut>(n: usize, rate: f64, epoch: Instant, mut send: F)
where
    F: FnMut(usize, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let per_ms = (rate / 1000.0).max(1.0);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut owed = 0.0;
    while sent < n {
        ticker.tick().await;
        owed += per_ms;
        while owed >= 1.0 && sent < n {
            let mut body = BODY.to_vec();
            let at = epoch.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&at.to_le_bytes());
            send(sent, body).await;
            sent += 1;
            owed -= 1.0;
        }
    }
}

fn latency_of(body: &[u8], epoch: Instant) -> u64 {
    let sent = u64::from_le_bytes(body[..8].try_into().unwrap());
    (epoch.elapsed().as_nanos() as u64).saturating_sub(sent)
}

fn percentiles(mut nanos: Vec<u64>) -> (Duration, Duration) {
    nanos.sort_unstable();
    let at = |p: f64| Duration::from_nanos(nanos[((nanos.len() - 1) as f64 * p) as usize]);
    (at(0.50), at(0.99))
}

async fn msgio_latency(n: usize, rate: f64) -> (Duration, Duration) {
    let epoch = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let done = Done::new(n);
    let (s, d) = (samples.clone(), done.clone());
    let run = MsgioRun::start(move |body| {
        s.lock().unwrap().push(latency_of(&body, epoch));
        d.one();
    });
    let ctx = Context::background();
    paced(n, rate, epoch, |seq, body| {
        let (topic, ctx) = (&run.topic, &ctx);
        async move { publish(topic, ctx, seq, &body).await }
    })
    .await;
    done.wait().await;
    run.stop().await;
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    percentiles(samples)
}

async fn raw_latency(n: usize, rate: f64) -> (Duration, Duration) {
    let (tx, rx) = mpsc::channel::<RawMessage>(CAPACITY);
    let epoch = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let done = Done::new(n);
    let (s, d) = (samples.clone(), done.clone());
    let consumer = raw_consumer(rx, move |msg| {
        s.lock().unwrap().push(latency_of(&msg.body, epoch));
        d.one();
    });
    paced(n, rate, epoch, |seq, body| {
        let tx = &tx;
        async move { tx.send(raw_message(seq, &body)).await.unwrap() }
    })
    .await;
    done.wait().await;
    drop(tx);
    consumer.await.unwrap();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    percentiles(samples)
}

fn main() {
    let runtime = common::runtime();
    let n = common::messages(300_000);
    if std::env::args().any(|a| a == "--msgio-only") {
        // For benches/vs-go: msgio's rounds alone, one line each.
        runtime.block_on(async {
            msgio_throughput(n / 10).await;
            for _ in 0..ROUNDS {
                let round = msgio_throughput(n).await;
                println!("RESULT msgio {:.0} {:.0}", round.rate, round.cpu_ns);
            }
        });
        return;
    }
    runtime.block_on(async {
        // Warm up both paths once.
        msgio_throughput(n / 10).await;
        raw_throughput(n / 10).await;

        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            // Alternate, so that drift in the machine's speed hits both alike.
            ours.push(msgio_throughput(n).await);
            raw.push(raw_throughput(n).await);
        }
        let rate = |v: &[Round]| median(v.iter().map(|r| r.rate).collect());
        let cpu = |v: &[Round]| median(v.iter().map(|r| r.cpu_ns).collect());
        let (ours_rate, raw_rate) = (rate(&ours), rate(&raw));
        let (ours_cpu, raw_cpu) = (cpu(&ours), cpu(&raw));
        let k = n / 10;
        let ours_allocs = allocations_per_message(k, msgio_throughput(k)).await;
        let raw_allocs = allocations_per_message(k, raw_throughput(k)).await;
        println!("mem end to end, {n} messages x {ROUNDS} rounds, 100-byte body, 2 attributes, concurrency {CONCURRENCY}");
        println!("  {:<18} {:>12} {:>14} {:>14}", "", "msgs/s", "CPU/msg", "allocs/msg");
        println!("  {:<18} {ours_rate:>12.0} {:>12.0}ns {ours_allocs:>14.1}", "msgio mem", ours_cpu);
        println!("  {:<18} {raw_rate:>12.0} {:>12.0}ns {raw_allocs:>14.1}", "raw tokio channel", raw_cpu);
        println!("  ratio msgio/raw    throughput {:.2}, CPU per message {:.2}", ours_rate / raw_rate, ours_cpu / raw_cpu);

        let rate = ours_rate / 2.0;
        let count = ((rate * 2.0) as usize).clamp(10_000, 1_000_000);
        let (p50, p99) = msgio_latency(count, rate).await;
        let (raw_p50, raw_p99) = raw_latency(count, rate).await;
        println!("latency at half of msgio's peak ({rate:.0} msgs/s, {count} messages)");
        println!("  msgio mem          p50 {p50:>10.1?}  p99 {p99:>10.1?}");
        println!("  raw tokio channel  p50 {raw_p50:>10.1?}  p99 {raw_p99:>10.1?}");
    });
}

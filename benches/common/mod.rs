//! What the in-memory benchmarks share.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts received messages and wakes the driver at the last one.
pub struct Done {
    count: AtomicUsize,
    target: usize,
    notify: Notify,
}

impl Done {
    pub fn new(target: usize) -> Arc<Self> {
        Arc::new(Done {
            count: AtomicUsize::new(0),
            target,
            notify: Notify::new(),
        })
    }

    pub fn one(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            // Stores a permit if the driver is not waiting yet: no wake-up is lost.
            self.notify.notify_one();
        }
    }

    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The first and third quartiles of `v` (the nearest ranks): where the middle half of the
/// figures lie, the spread quoted beside a median.
pub fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 4], v[(3 * v.len()) / 4])
}

/// The message count, from `MSGIO_BENCH_MESSAGES` or `default`.
pub fn messages(default: usize) -> usize {
    env_count("MSGIO_BENCH_MESSAGES", default)
}

/// A count from the environment variable `var`, or `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A runtime like the machine's: two worker threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// CPU time this process's threads have run, from Linux's per-thread scheduler statistics
/// (`/proc/self/task/*/schedstat`, nanoseconds); `None` where they cannot be read.
pub fn cpu_time() -> Option<std::time::Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(std::time::Duration::from_nanos(total))
}

/// Publish-to-receive latencies: each body carries its send time (nanoseconds since
/// `epoch`) in its first 8 bytes; receivers record the difference.
pub struct Latencies {
    epoch: std::time::Instant,
    samples: std::sync::Mutex<Vec<u64>>,
    done: Arc<Done>,
    /// Told when the warm-up message (see [`Latencies::warm_up`]) arrives.
    warm: tokio::sync::Notify,
}

/// The stamp of the warm-up message, which is not a latency.
const WARM_UP: u64 = u64::MAX;

impl Latencies {
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Latencies {
            epoch: std::time::Instant::now(),
            samples: std::sync::Mutex::new(Vec::with_capacity(n)),
            done: Done::new(n),
            warm: tokio::sync::Notify::new(),
        })
    }

    /// A body that is not timed: [`record`](Self::record) only tells [`warmed`](Self::warmed)
    /// it came. Sent and waited for before the timed messages, so that they are timed from
    /// a consumer that is receiving, as the raw clients' are (they subscribe before they
    /// publish), and not from one still connecting.
    pub fn warm_up(&self) -> bytes::Bytes {
        let mut body = vec![b'x'; 100];
        body[..8].copy_from_slice(&WARM_UP.to_le_bytes());
        body.into()
    }

    /// Waits until the warm-up message has been received.
    pub async fn warmed(&self) {
        self.warm.notified().await;
    }

    /// A 100-byte body stamped with the time now.
    pub fn stamped(&self) -> bytes::Bytes {
        let mut body = vec![b'x'; 100];
        let at = self.epoch.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&at.to_le_bytes());
        body.into()
    }

    /// Records the latency of a received body.
    pub fn record(&self, body: &[u8]) {
        let sent = u64::from_le_bytes(body[..8].try_into().unwrap());
        if sent == WARM_UP {
            self.warm.notify_one();
            return;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.samples.lock().unwrap().push(now.saturating_sub(sent));
        self.done.one();
    }

    /// Waits for every message, then gives the p50 and p99.
    pub async fn wait(&self) -> (std::time::Duration, std::time::Duration) {
        self.done.wait().await;
        let mut nanos = std::mem::take(&mut *self.samples.lock().unwrap());
        nanos.sort_unstable();
        let at = |p: f64| {
            std::time::Duration::from_nanos(nanos[((nanos.len() - 1) as f64 * p) as usize])
        };
        (at(0.50), at(0.99))
    }
}

/// Calls `send(seq)` `n` times at `rate` a second, in 1 ms slices; `send` starts the send
/// (spawns it) and returns at once, so that a slow reply never holds up the pace.
pub async fn paced(n: usize, rate: f64, mut send: impl FnMut(usize)) {
    let per_ms = (rate / 1000.0).max(1.0);
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut owed) = (0usize, 0.0);
    while sent < n {
        ticker.tick().await;
        owed += per_ms;
        while owed >= 1.0 && sent < n {
            send(sent);
            sent += 1;
            owed -= 1.0;
        }
    }
}

/// The rate of a latency run: half of `peak`, or `MSGIO_BENCH_LATENCY_RATE` messages a
/// second when set.
pub fn latency_rate(peak: f64) -> f64 {
    std::env::var("MSGIO_BENCH_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(peak / 2.0)
}

/// How many messages a latency run at `rate` sends: about a second's worth.
pub fn latency_count(rate: f64) -> usize {
    (rate as usize).clamp(2_000, 200_000)
}

/// How many runs a side a latency comparison makes (`MSGIO_BENCH_LATENCY_ROUNDS`, 7 by
/// default).
pub fn latency_rounds() -> usize {
    env_count("MSGIO_BENCH_LATENCY_ROUNDS", 7).max(1)
}

/// A p50 and a p99.
pub type Percentiles = (std::time::Duration, std::time::Duration);

/// Runs msgio's and the raw client's latency runs in turn, [`latency_rounds`] of each,
/// alternating which goes first, and prints the medians of their p50s and p99s and the
/// median of the rounds' p99 ratios. One run's p99 is its few slowest messages, which a
/// stall of this shared machine decides; the median of several rounds is what the two
/// sides are told apart by.
pub async fn compare_latency(
    what: &str,
    rate: f64,
    count: usize,
    raw_name: &str,
    mut ours: impl AsyncFnMut() -> Percentiles,
    mut raw: impl AsyncFnMut() -> Percentiles,
) {
    let (mut o, mut r) = (Vec::new(), Vec::new());
    for round in 0..latency_rounds() {
        if round % 2 == 0 {
            o.push(ours().await);
            r.push(raw().await);
        } else {
            r.push(raw().await);
            o.push(ours().await);
        }
    }
    let secs = |v: &[Percentiles], p99: bool| -> Vec<f64> {
        v.iter()
            .map(|(a, b)| if p99 { b } else { a }.as_secs_f64())
            .collect()
    };
    let ratios: Vec<f64> = o
        .iter()
        .zip(&r)
        .map(|(a, b)| a.1.as_secs_f64() / b.1.as_secs_f64())
        .collect();
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::INFINITY, 0f64), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
        format!("{lo:.2}..{hi:.2}")
    };
    let d = |x: f64| std::time::Duration::from_secs_f64(x);
    println!(
        "{what} latency, publish to receive, at {rate:.0} msgs/s ({count} messages a run, {} runs a side, alternating; medians)",
        o.len()
    );
    for (name, v) in [("msgio", &o), (raw_name, &r)] {
        println!(
            "  {name:<34} p50 {:>10.1?}  p99 {:>10.1?}",
            d(median(secs(v, false))),
            d(median(secs(v, true)))
        );
    }
    println!(
        "  ratio msgio/raw                    p50 {:>10.2}  p99 {:>10.2}  (rounds' p99 ratios {})",
        median(secs(&o, false)) / median(secs(&r, false)),
        median(ratios.clone()),
        spread(&ratios)
    );
    // Each side's p99s, slowest last: how many rounds a stall of the machine decided.
    for (name, v) in [("msgio", &o), (raw_name, &r)] {
        let mut p99: Vec<f64> = secs(v, true);
        p99.sort_by(f64::total_cmp);
        let ms: Vec<String> = p99.iter().map(|s| format!("{:.1}", s * 1e3)).collect();
        println!("  {name:<34} rounds' p99 ms: {}", ms.join(" "));
    }
}

/// CPU per message samples (nanoseconds), by what was measured.
static CPU_SAMPLES: std::sync::Mutex<std::collections::BTreeMap<&'static str, Vec<f64>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Times a run: its rate, and the CPU per message of this process (recorded under a label
/// for [`print_cpu`]).
pub struct Meter {
    start: std::time::Instant,
    cpu: Option<std::time::Duration>,
}

impl Meter {
    pub fn start() -> Meter {
        Meter {
            start: std::time::Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// Messages a second over `n` messages; records the CPU per message under `label`.
    pub fn finish(self, n: usize, label: &'static str) -> f64 {
        let rate = n as f64 / self.start.elapsed().as_secs_f64();
        record_cpu_since(self.cpu, n, label);
        rate
    }
}

/// Records the CPU per message of `n` messages since `before` (a [`cpu_time`] reading)
/// under `label`, for a run whose clock does not start with a [`Meter`] (from a first
/// message on, say).
pub fn record_cpu_since(before: Option<std::time::Duration>, n: usize, label: &'static str) {
    if let (Some(before), Some(after)) = (before, cpu_time()) {
        let per = (after - before).as_nanos() as f64 / n as f64;
        CPU_SAMPLES
            .lock()
            .unwrap()
            .entry(label)
            .or_default()
            .push(per);
    }
}

/// Forgets the samples so far (the warm-up's).
pub fn reset_cpu() {
    CPU_SAMPLES.lock().unwrap().clear();
}

/// Prints the median CPU per message of `ours` and `raw` (user+system time of this
/// process's threads; the broker's own is not counted) and their ratio.
pub fn print_cpu(ours: &'static str, raw: &'static str) {
    let samples = CPU_SAMPLES.lock().unwrap();
    let med = |label| {
        samples
            .get(label)
            .filter(|v| !v.is_empty())
            .map(|v| median(v.clone()))
    };
    match (med(ours), med(raw)) {
        (Some(o), Some(r)) => println!(
            "  CPU per message (median)            msgio {o:.0} ns, raw {r:.0} ns, ratio {:.2}",
            o / r
        ),
        _ => println!("  CPU per message: not measurable here"),
    }
}

/// Runs `ours` and `raw` `rounds` times each, back to back and in alternating order (so
/// that drift in the machine's speed hits both alike): their rates, and each round's
/// ratio of ours to raw.
pub async fn alternate(
    rounds: usize,
    mut ours: impl AsyncFnMut() -> f64,
    mut raw: impl AsyncFnMut() -> f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut o, mut r, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = ours().await;
            (a, raw().await)
        } else {
            let b = raw().await;
            (ours().await, b)
        };
        o.push(a);
        r.push(b);
        ratios.push(a / b);
    }
    (o, r, ratios)
}

/// Prints what [`alternate`] measured: the median rate of each side under its label, and
/// the median of the rounds' ratios.
pub fn print_pair(ours_label: &str, raw_label: &str, ours: &[f64], raw: &[f64], ratios: &[f64]) {
    println!(
        "  {ours_label:<36}{:>10.0} msgs/s (median)",
        median(ours.to_vec())
    );
    println!(
        "  {raw_label:<36}{:>10.0} msgs/s (median)",
        median(raw.to_vec())
    );
    println!(
        "  {:<36}{:>10.2}",
        "ratio msgio/raw (median of rounds)",
        median(ratios.to_vec())
    );
}

/// The receiver of the consume runs: reads the body and an attribute, as a real receiver
/// would, and counts the message.
pub fn counting(done: Arc<Done>) -> impl msgio::Receiver {
    use msgio::{Context, Message, ReceiverFunc};
    ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let done = done.clone();
        async move {
            let body = msg.body.read_to_bytes(1024).await?;
            std::hint::black_box((body, msg.attributes.get("X-Seq").is_some()));
            done.one();
            Ok(())
        }
    })
}

/// The message every broker bench publishes: a 100-byte body, `Content-Type` and `X-Seq`.
pub fn message(seq: usize) -> msgio::Message {
    let mut msg = msgio::Message::new(bytes::Bytes::from_static(&[b'x'; 100]));
    msg.attributes.set("Content-Type", "text/plain");
    msg.attributes.set("X-Seq", seq.to_string());
    msg
}

/// The messages of `n` one publisher of `publishers` sends, in chunks of up to `batch`:
/// publisher `p` takes every `publishers`-th message from `p` on.
pub type Chunk = std::iter::StepBy<std::ops::Range<usize>>;

/// Runs `publish` on every chunk (see [`Chunk`]) from `publishers` concurrent tasks, one
/// chunk after another in each, and waits for them all; a `batch` of `n` makes each task's
/// messages one chunk. Allocates nothing per message, so
/// that the raw baselines pay nothing they would not.
pub async fn from_publishers<F, Fut>(n: usize, publishers: usize, batch: usize, publish: F)
where
    F: Fn(Chunk) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stride = publishers.saturating_mul(batch.max(1));
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let publish = publish.clone();
            tokio::spawn(async move {
                let mut start = p;
                while start < n {
                    let end = start.saturating_add(stride).min(n);
                    publish((start..end).step_by(publishers)).await;
                    start = end;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Publishes `n` messages through `topic` from `publishers` concurrent tasks: one
/// `publish` each when `batch` is 1, `publish_batch` of `batch` otherwise.
pub async fn publish_from<T>(topic: T, n: usize, publishers: usize, batch: usize)
where
    T: msgio::Topic + Clone + Send + Sync + 'static,
    T::Writer: 'static,
{
    // One publish at a time: each task's messages are one chunk, under one context.
    let chunk_size = if batch <= 1 { n } else { batch };
    from_publishers(n, publishers, chunk_size, move |chunk| {
        let topic = topic.clone();
        async move {
            let ctx = msgio::Context::background();
            if batch <= 1 {
                for seq in chunk {
                    topic.publish(&ctx, message(seq)).await.unwrap();
                }
            } else {
                let messages = chunk.map(message).collect();
                topic.publish_batch(&ctx, messages).await.unwrap();
            }
        }
    })
    .await;
}

/// msgio's side of a latency run: serves `server` (a receiver recording each message's
/// latency) while publishing `n` messages to `topic` at `rate` a second, each publish
/// spawned; then shuts the server down. The p50 and p99 from publish to receive.
pub async fn msgio_latency<T, S>(
    topic: T,
    server: S,
    n: usize,
    rate: f64,
) -> (std::time::Duration, std::time::Duration)
where
    T: msgio::Topic + Clone + Send + Sync + 'static,
    T::Writer: 'static,
    S: msgio::Server + Clone + 'static,
{
    use msgio::{Context, Message, ReceiverFunc};
    let lat = Latencies::new(n);
    let l = lat.clone();
    let receiver = ReceiverFunc::new(move |_: Context, mut msg: Message| {
        let l = l.clone();
        async move {
            l.record(&msg.body.read_to_bytes(1024).await?);
            Ok(())
        }
    });
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    let ctx = Context::background();
    // Timed from a server that is receiving: the raw clients subscribe before publishing.
    let mut warm_up = message(0);
    warm_up.body = lat.warm_up().into();
    topic.publish(&ctx, warm_up).await.unwrap();
    lat.warmed().await;
    paced(n, rate, |seq| {
        let (topic, ctx) = (topic.clone(), ctx.clone());
        let mut msg = message(seq);
        msg.body = lat.stamped().into();
        tokio::spawn(async move { topic.publish(&ctx, msg).await.unwrap() });
    })
    .await;
    let figures = lat.wait().await;
    server
        .shutdown(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let _ = task.await;
    figures
}

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

/// The message count, from `MSGIO_BENCH_MESSAGES` or `default`.
pub fn messages(default: usize) -> usize {
    std::env::var("MSGIO_BENCH_MESSAGES")
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

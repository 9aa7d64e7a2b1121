//! Blocking librdkafka calls that must not hold up the runtime: run on a thread of their
//! own.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Runs `job` on a new thread named `name`; its result comes back through the returned
/// receiver (closed without a value if the job panicked, or if, run on the blocking pool,
/// it was dropped unrun because the runtime was shutting down).
///
/// A thread of its own rather than the runtime's blocking pool: a runtime waits for its
/// blocking pool's threads when it is dropped, and a job that never returns (a commit
/// the broker never answers) would hold the whole program up. When the system cannot
/// start a thread, the job runs on the blocking pool after all, with a warning: never on
/// the calling thread, an async worker that must not block.
pub(super) fn run_on_own_thread<T, F>(name: &str, job: F) -> oneshot::Receiver<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_with(name, job, |name, run| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(run)
            .map(drop)
    })
}

/// [`run_on_own_thread`], starting the thread with `spawn`.
fn run_with<T, F, S>(name: &str, job: F, spawn: S) -> oneshot::Receiver<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    S: FnOnce(&str, Box<dyn FnOnce() + Send>) -> io::Result<()>,
{
    let (done, result) = oneshot::channel();
    // The job waits here for whichever runs it: a failed spawn drops the closure it was
    // given, and with it anything the closure owned, on this thread.
    let slot = Arc::new(Mutex::new(Some((job, done))));
    let on_thread = slot.clone();
    let run = move || {
        let taken = on_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((job, done)) = taken {
            let _ = done.send(job());
        }
    };
    if let Err(e) = spawn(name, Box::new(run)) {
        let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((job, done)) = taken {
            crate::log::warning!(
                "msgio: cannot start the thread {name} ({e}); its work runs on the runtime's blocking pool"
            );
            tokio::task::spawn_blocking(move || {
                let _ = done.send(job());
            });
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_job_runs_on_a_thread_of_its_own() {
        let caller = std::thread::current().id();
        let (id, name) = run_on_own_thread("msgio-test-job", || {
            let me = std::thread::current();
            (me.id(), me.name().map(str::to_owned))
        })
        .await
        .unwrap();
        assert_ne!(id, caller);
        assert_eq!(name.as_deref(), Some("msgio-test-job"));
    }

    /// When no thread can be started, the job still runs, and not on the calling thread:
    /// what it owns (a consumer whose drop blocks) is not dropped there either.
    #[tokio::test]
    async fn without_a_thread_the_job_runs_on_the_blocking_pool() {
        struct DropsOn(std::sync::mpsc::Sender<std::thread::ThreadId>);
        impl Drop for DropsOn {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let caller = std::thread::current().id();
        let (dropped_tx, dropped_on) = std::sync::mpsc::channel();
        let owned = DropsOn(dropped_tx);
        let result = run_with(
            "msgio-test-job",
            move || {
                let on = std::thread::current().id();
                drop(owned);
                on
            },
            |_, _| Err(io::Error::other("no threads left")),
        );
        let ran_on = result.await.expect("the job ran");
        assert_ne!(ran_on, caller);
        assert_eq!(dropped_on.recv().unwrap(), ran_on);
    }
}

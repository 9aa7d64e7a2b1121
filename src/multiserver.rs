//! Several servers feeding one receiver by weighted fair share (go-msg's `x/multiserver`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{BoxServer, Context, Error, Message, Receiver, Server};

/// Serves one receiver from several servers, sharing `concurrency` slots among them by
/// weight: while every source has messages waiting, a source of weight 3 gets three slots
/// for each slot a source of weight 1 gets; an idle source's share goes to the others.
/// Shutting the multi-server down shuts every server down.
///
/// ```
/// use msgio::{Context, Error, Message, MultiServer, ReceiverFunc, Server, Topic};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let (urgent_topic, urgent) = msgio::mem::channel(1024)?;
/// let (_bulk_topic, bulk) = msgio::mem::channel(1024)?;
/// let multi = MultiServer::new(8)?.add(urgent, 3)?.add(bulk, 1)?;
/// urgent_topic.publish(&Context::background(), Message::new("now")).await?;
///
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let serving = multi.clone();
/// let task = tokio::spawn(async move {
///     serving
///         .serve(ReceiverFunc::new(move |_: Context, _: Message| {
///             tx.send(()).ok();
///             async { Ok(()) }
///         }))
///         .await
/// });
/// rx.recv().await;
/// multi.shutdown(Duration::from_secs(5)).await?; // stops both servers
/// assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MultiServer {
    servers: Vec<BoxServer>,
    scheduler: Arc<Scheduler>,
}

impl MultiServer {
    /// A multi-server handing out `concurrency` slots, with no servers yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `concurrency` is zero.
    pub fn new(concurrency: usize) -> Result<Self, Error> {
        if concurrency == 0 {
            return Err(Error::invalid_config(
                "multiserver concurrency",
                "must be at least 1",
            ));
        }
        Ok(MultiServer {
            servers: Vec::new(),
            scheduler: Arc::new(Scheduler {
                state: Mutex::new(State {
                    free: concurrency,
                    sources: Vec::new(),
                    clock: 0.0,
                }),
            }),
        })
    }

    /// Adds a server with a weight (its share, relative to the others').
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `weight` is zero.
    pub fn add<S: Server + 'static>(mut self, server: S, weight: u32) -> Result<Self, Error> {
        if weight == 0 {
            return Err(Error::invalid_config(
                "multiserver weight",
                "must be at least 1",
            ));
        }
        self.scheduler.lock().sources.push(Source {
            weight: f64::from(weight),
            finish: 0.0,
            waiting: VecDeque::new(),
        });
        self.servers.push(BoxServer::new(server));
        Ok(self)
    }
}

impl Server for MultiServer {
    async fn serve<R: Receiver + 'static>(&self, receiver: R) -> Result<(), Error> {
        let receiver = Arc::new(receiver);
        let serving = self.servers.iter().enumerate().map(|(index, server)| {
            let gate = Gate {
                receiver: receiver.clone(),
                scheduler: self.scheduler.clone(),
                index,
            };
            let server = server.clone();
            tokio::spawn(async move { server.serve(gate).await })
        });
        let handles: Vec<_> = serving.collect();
        let mut first_error = None;
        for handle in handles {
            let outcome = handle
                .await
                .unwrap_or_else(|join| Err(Error::other(format!("a server task failed: {join}"))));
            match outcome {
                Ok(()) | Err(Error::ServerClosed) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(Error::ServerClosed))
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), Error> {
        let all = futures::future::join_all(self.servers.iter().map(|s| s.shutdown(grace))).await;
        all.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
}

/// Wraps the shared receiver for one source: each message waits for a slot.
struct Gate<R> {
    receiver: Arc<R>,
    scheduler: Arc<Scheduler>,
    index: usize,
}

impl<R: Receiver> Receiver for Gate<R> {
    async fn receive(&self, ctx: Context, msg: Message) -> Result<(), Error> {
        let _slot = ctx
            .unless_cancelled(async { Ok(self.scheduler.acquire(self.index).await) })
            .await?;
        self.receiver.receive(ctx, msg).await
    }
}

/// Start-time fair queuing over the sources: a grant advances the source's finish tag by
/// 1/weight, and a free slot goes to the waiting source with the smallest tag.
#[derive(Debug)]
struct Scheduler {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free: usize,
    sources: Vec<Source>,
    /// The tag of the last grant: a source that was idle starts from here, so it cannot
    /// claim the share it did not use.
    clock: f64,
}

#[derive(Debug)]
struct Source {
    weight: f64,
    finish: f64,
    waiting: VecDeque<oneshot::Sender<Slot>>,
}

/// A slot; given back on drop.
#[derive(Debug)]
struct Slot {
    /// `None` once disarmed: a slot that never reached its waiter is not given back twice.
    scheduler: Option<Arc<Scheduler>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.release();
        }
    }
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves source `index`: its start tag becomes the clock, its finish tag moves on.
    fn grant(state: &mut State, index: usize) {
        let source = &mut state.sources[index];
        let start = source.finish.max(state.clock);
        source.finish = start + 1.0 / source.weight;
        state.clock = start;
    }

    async fn acquire(self: &Arc<Self>, index: usize) -> Slot {
        let rx = {
            let mut state = self.lock();
            let nobody_waits = state.sources.iter().all(|s| s.waiting.is_empty());
            if state.free > 0 && nobody_waits {
                state.free -= 1;
                Scheduler::grant(&mut state, index);
                return Slot {
                    scheduler: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            state.sources[index].waiting.push_back(tx);
            rx
        };
        // The sender is only dropped with a slot sent, or the scheduler gone with us.
        rx.await.expect("the scheduler outlives its waiters")
    }

    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        loop {
            let next = (0..state.sources.len())
                .filter(|&i| !state.sources[i].waiting.is_empty())
                .min_by(|&a, &b| {
                    let tag = |i: usize| state.sources[i].finish.max(state.clock);
                    tag(a).total_cmp(&tag(b))
                });
            let Some(index) = next else {
                state.free += 1;
                return;
            };
            let tx = state.sources[index]
                .waiting
                .pop_front()
                .expect("chosen for waiting");
            Scheduler::grant(&mut state, index);
            let slot = Slot {
                scheduler: Some(self.clone()),
            };
            match tx.send(slot) {
                Ok(()) => return,
                // The waiter gave up (its message was cancelled): offer the slot to the next
                // one, disarming this one so its drop does not give it back too.
                Err(mut slot) => slot.scheduler = None,
            }
        }
    }
}

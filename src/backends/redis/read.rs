//! A stream read on its way, awaited where it was started.
//!
//! The engine drops a fetch when it stops serving, and a read dropped before its reply came
//! would leave what Redis delivered pending under this consumer until taken back. So a read
//! dropped on its way is finished in a task of its own, which keeps the entries to hand
//! back; a read that is awaited to the end (every read but the last) costs no task and no
//! hand-over between tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use redis::{RedisResult, Value};
use tokio::task::JoinHandle;

type Reply = Pin<Box<dyn Future<Output = RedisResult<Value>> + Send>>;

/// What a finished read does with its reply, in the reader's state `S`, when nobody waits
/// for it any more.
pub(super) type Orphaned<S> = fn(&mut S, Value);

pub(super) struct Read<'a, S: Send + 'static> {
    reply: Option<Reply>,
    state: &'a Arc<Mutex<S>>,
    /// Where the task finishing a dropped read is left, for closing to wait for it.
    finishing: &'a Mutex<Option<JoinHandle<()>>>,
    orphaned: Orphaned<S>,
}

impl<'a, S: Send + 'static> Read<'a, S> {
    pub(super) fn new(
        reply: impl Future<Output = RedisResult<Value>> + Send + 'static,
        state: &'a Arc<Mutex<S>>,
        finishing: &'a Mutex<Option<JoinHandle<()>>>,
        orphaned: Orphaned<S>,
    ) -> Self {
        Read {
            reply: Some(Box::pin(reply)),
            state,
            finishing,
            orphaned,
        }
    }

    /// The reply.
    pub(super) async fn reply(mut self) -> RedisResult<Value> {
        let reply = self.reply.as_mut().expect("read once").await;
        self.reply = None;
        reply
    }
}

impl<S: Send + 'static> Drop for Read<'_, S> {
    fn drop(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        // Outside a runtime (one shutting down) there is nothing to finish it on: the
        // entries stay pending under this consumer, which takes them back when it starts.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (state, orphaned) = (self.state.clone(), self.orphaned);
        let task = runtime.spawn(async move {
            let reply = reply.await;
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(value) = reply {
                orphaned(&mut state, value);
            }
        });
        *self.finishing.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}

//! Where the acknowledgements of a topic's batches come back: one subscription, on an
//! inbox of the topic's own, taken when its first batch is sent.
//!
//! A batch hands its publishes to the client one after another, each with a reply subject
//! `<inbox>.<batch>.<index>`, and reads JetStream's answers from a channel of its own,
//! which a task fills from the subscription. Handing each publish over in turn (rather
//! than starting a request for each, as the client's `send_request` does) is what keeps a
//! batch in its order when the client's queue of outgoing messages is full: a request
//! that waited for room there could be overtaken by a later one that found some.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>>;

/// One acknowledgement: the index of the message it answers, and the answer.
pub(super) type Answer = (usize, async_nats::Message);

/// The subscription a topic's batches are answered on, and the task that hands each
/// answer to its batch.
pub(super) struct BatchAcks {
    inbox: String,
    routes: Routes,
    next: AtomicU64,
    task: JoinHandle<()>,
}

impl BatchAcks {
    /// Subscribes to a new inbox of `client`'s and starts handing out what comes there.
    pub(super) async fn subscribe(client: &async_nats::Client) -> Result<BatchAcks, Error> {
        let inbox = client.new_inbox();
        let mut answers = client
            .subscribe(format!("{inbox}.*.*"))
            .await
            .map_err(|e| {
                Error::connection_lost(format!(
                    "cannot subscribe to the acknowledgements of NATS batches: {e}"
                ))
            })?;
        let routes: Routes = Arc::default();
        let prefix = inbox.len() + 1;
        let task = tokio::spawn({
            let routes = routes.clone();
            async move {
                while let Some(answer) = answers.next().await {
                    let Some((batch, index)) = answer
                        .subject
                        .get(prefix..)
                        .and_then(|rest| rest.split_once('.'))
                        .and_then(|(b, i)| Some((b.parse::<u64>().ok()?, i.parse().ok()?)))
                    else {
                        continue;
                    };
                    if let Some(batch) = lock(&routes).get(&batch) {
                        // A batch that stopped waiting has dropped its receiver.
                        let _ = batch.send((index, answer));
                    }
                }
                // The client is gone: every batch still waiting learns it at once.
                lock(&routes).clear();
            }
        });
        Ok(BatchAcks {
            inbox,
            routes,
            next: AtomicU64::new(0),
            task,
        })
    }

    /// Whether answers are still handed out (the subscription has not ended).
    pub(super) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// A new batch: the reply subjects of its messages, and where their answers come.
    pub(super) fn batch(&self) -> Batch {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, answers) = mpsc::unbounded_channel();
        lock(&self.routes).insert(id, tx);
        Batch {
            prefix: format!("{}.{id}.", self.inbox),
            id,
            routes: self.routes.clone(),
            answers,
        }
    }
}

impl Drop for BatchAcks {
    fn drop(&mut self) {
        // Ends the subscription with it.
        self.task.abort();
    }
}

/// One batch's reply subjects and answers; dropping it stops routing its answers.
pub(super) struct Batch {
    prefix: String,
    id: u64,
    routes: Routes,
    /// What the stream answered, as it comes (in any order).
    pub(super) answers: mpsc::UnboundedReceiver<Answer>,
}

impl Batch {
    /// The reply subject of the batch's message `index`.
    pub(super) fn reply(&self, index: usize) -> String {
        format!("{}{index}", self.prefix)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.id);
    }
}

fn lock<T>(routes: &Mutex<T>) -> MutexGuard<'_, T> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

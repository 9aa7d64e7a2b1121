//! Publishing to an in-memory queue: a whole message at once, waiting while the queue is
//! full.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio::sync::TryAcquireError;

use super::Queue;
use crate::transport::{BufferedWriter, Outgoing, Publish};
use crate::{Context, Error, Topic};

/// A topic publishing to an in-memory queue.
#[derive(Clone)]
pub struct MemTopic {
    pub(super) queue: Arc<Queue>,
}

impl fmt::Debug for MemTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemTopic")
            .field("queue", &self.queue.name)
            .finish()
    }
}

impl Topic for MemTopic {
    type Writer = MemWriter;

    fn new_writer(&self, ctx: &Context) -> Result<MemWriter, Error> {
        Ok(BufferedWriter::with_attributes(
            MemPublisher {
                queue: self.queue.clone(),
            },
            ctx,
            self.queue.new_attributes(),
        ))
    }
}

/// The writer of a [`MemTopic`]. Closing it waits while the queue is full (until the
/// writer's context is cancelled).
pub type MemWriter = BufferedWriter<MemPublisher>;

/// Publishes whole messages to an in-memory queue (for [`MemWriter`]).
pub struct MemPublisher {
    queue: Arc<Queue>,
}

impl fmt::Debug for MemPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemPublisher")
            .field("queue", &self.queue.name)
            .finish()
    }
}

impl Publish for MemPublisher {
    type Future = MemPublish;

    fn publish(&self, ctx: &Context, message: Outgoing) -> MemPublish {
        if ctx.is_cancelled() {
            // As every transport: a cancelled context publishes nothing.
            return MemPublish::Waiting(Box::pin(async { Err(Error::Cancelled) }));
        }
        match self.queue.capacity.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.queue.push_new(message);
                MemPublish::Done
            }
            Err(TryAcquireError::NoPermits) => {
                let queue = self.queue.clone();
                let ctx = ctx.clone();
                MemPublish::Waiting(Box::pin(async move {
                    let permit = ctx
                        .unless_cancelled(async { Ok(queue.capacity.acquire().await) })
                        .await?;
                    permit
                        .expect("the queue never closes its semaphore")
                        .forget();
                    queue.push_new(message);
                    Ok(())
                }))
            }
            Err(TryAcquireError::Closed) => unreachable!("the queue never closes its semaphore"),
        }
    }
}

/// The future of [`MemPublisher::publish`]: ready at once unless the queue is full.
pub enum MemPublish {
    /// Published.
    Done,
    /// Waiting for room in the queue.
    Waiting(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>),
}

impl fmt::Debug for MemPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemPublish::Done => "MemPublish::Done",
            MemPublish::Waiting(_) => "MemPublish::Waiting",
        })
    }
}

impl Future for MemPublish {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match &mut *self {
            MemPublish::Done => Poll::Ready(Ok(())),
            MemPublish::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}

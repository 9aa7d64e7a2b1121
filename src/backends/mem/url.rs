//! `mem://<queue>`: named in-process queues, so that a topic and a server opened by the same
//! URL meet.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{MemQueue, MemServer, MemTopic};
use crate::url::{Url, UrlOpener};
use crate::{Error, ServerConfig};

/// The capacity of a queue a `mem://` URL creates without `capacity`.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

/// Opens `mem://` URLs; holds the queues they named, for the life of the process.
#[derive(Default)]
pub(crate) struct MemOpener {
    queues: Mutex<HashMap<String, MemQueue>>,
}

impl MemOpener {
    /// The queue `url` names, created on first use.
    fn queue(&self, url: &Url) -> Result<MemQueue, Error> {
        let mut query = url.query();
        let capacity = query.parse::<usize>("capacity")?;
        query.finish_known(&["capacity"])?;
        if url.host().is_empty() || !url.path().is_empty() {
            return Err(url.invalid("url", "a mem:// URL is mem://<queue name>, with no path"));
        }
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(url.host()) {
            return match capacity {
                Some(asked) if asked != queue.capacity() => Err(url.invalid(
                    "capacity",
                    format!(
                        "the queue is open already with capacity {}",
                        queue.capacity()
                    ),
                )),
                _ => Ok(queue.clone()),
            };
        }
        let capacity = capacity.unwrap_or(DEFAULT_CAPACITY);
        let queue =
            MemQueue::named(url.host(), capacity).map_err(|e| url.invalid("capacity", e))?;
        queues.insert(url.host().to_owned(), queue.clone());
        Ok(queue)
    }
}

impl UrlOpener for MemOpener {
    type Topic = MemTopic;
    type Server = MemServer;

    async fn open_topic(&self, url: &Url) -> Result<MemTopic, Error> {
        Ok(self.queue(url)?.topic())
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<MemServer, Error> {
        self.queue(url)?.server(config)
    }
}

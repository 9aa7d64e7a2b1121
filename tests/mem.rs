//! The in-memory transport against the conformance kit.

use msgio::mem::{MemQueue, MemServer, MemTopic};
use msgio::testing::{Capabilities, Transport};
use msgio::{Error, ServerConfig};

struct Mem;

impl Transport for Mem {
    type Destination = MemQueue;
    type Topic = MemTopic;
    type Server = MemServer;

    async fn destination(&self) -> Result<MemQueue, Error> {
        MemQueue::named("kit", 10_000)
    }

    async fn topic(&self, queue: &MemQueue) -> Result<MemTopic, Error> {
        Ok(queue.topic())
    }

    async fn server(&self, queue: &MemQueue, config: ServerConfig) -> Result<MemServer, Error> {
        queue.server(config)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_passes_the_conformance_kit() {
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(Mem, caps).await.assert_passed();
}

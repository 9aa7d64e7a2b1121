//! The spool-directory transport of `examples/custom_transport/`, written only against
//! msgio's public API, passes the conformance kit: directly, and opened by URL under a
//! scheme of its own.

#[path = "../examples/custom_transport/spool.rs"]
#[allow(dead_code)]
mod spool;

use std::path::PathBuf;
use std::time::Duration;

use msgio::testing::{Capabilities, Transport, UrlTransport};
use msgio::{Context, Error, Message, ServerConfig, Topic};
use spool::{Spool, SpoolOpener, SpoolServer, SpoolTopic};

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("msgio-spool-{}", msgio::testing::unique_suffix()))
}

struct Spools;

impl Transport for Spools {
    type Destination = Spool;
    type Topic = SpoolTopic;
    type Server = SpoolServer;

    async fn destination(&self) -> Result<Spool, Error> {
        Ok(Spool::open(dir())?.lease(Duration::from_secs(30)))
    }

    async fn topic(&self, spool: &Spool) -> Result<SpoolTopic, Error> {
        Ok(spool.topic())
    }

    async fn server(&self, spool: &Spool, config: ServerConfig) -> Result<SpoolServer, Error> {
        spool.server(config)
    }

    async fn unsettled(&self, spool: &Spool) -> Result<Option<u64>, Error> {
        Ok(Some(spool.len()? as u64))
    }

    async fn remove(&self, spool: Spool) -> Result<(), Error> {
        Ok(std::fs::remove_dir_all(spool.root())?)
    }
}

fn caps() -> Capabilities {
    Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_transport_passes_the_conformance_kit() {
    msgio::testing::run(Spools, caps()).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_transport_passes_the_kit_opened_by_its_own_url_scheme() {
    msgio::url::register("spool", SpoolOpener).unwrap();
    let root = dir();
    let template = format!("spool://{}/{{name}}?lease=30s", root.display());
    msgio::testing::run(UrlTransport::new(template), caps())
        .await
        .assert_passed();
    std::fs::remove_dir_all(&root).ok();
}

#[tokio::test]
async fn a_file_that_is_not_a_message_is_dead_lettered_not_lost_or_looping() {
    let spool = Spool::open(dir()).unwrap();
    let dead = msgio::mem::MemQueue::new(16).unwrap();
    std::fs::write(
        spool
            .root()
            .join("ready")
            .join("00000000000000000000-garbage"),
        b"not a spool file",
    )
    .unwrap();
    spool
        .topic()
        .publish(&Context::background(), Message::new("good"))
        .await
        .unwrap();
    let server = spool
        .server(ServerConfig::new().dead_letter(dead.topic()))
        .unwrap();
    let recorder = msgio::testing::Recorder::new();
    let running = msgio::testing::start(server, recorder.clone());
    recorder.wait_for(1, Duration::from_secs(10)).await.unwrap();
    for _ in 0..500 {
        if dead.len() == 1 && spool.len().unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(dead.len(), 1, "the unreadable file was not dead-lettered");
    assert_eq!(
        spool.len().unwrap(),
        0,
        "something was left claimed or ready"
    );
    assert_eq!(recorder.count(), 1, "the receiver saw the unreadable file");
    std::fs::remove_dir_all(spool.root()).unwrap();
}

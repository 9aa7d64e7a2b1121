//! The NATS JetStream transport against the real nats-server (`NATS_URL`, default
//! nats://127.0.0.1:4222).

use std::time::Duration;

use msgio::nats::{ConsumerOptions, Nats, NatsServer, NatsTopic};
use msgio::testing::{Capabilities, Transport};
use msgio::{Error, ServerConfig};

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn connect() -> Option<Nats> {
    let url = url();
    match Nats::connect(&url).await {
        Ok(nats) => Some(nats),
        Err(e) => {
            msgio::testing::skip_or_fail("NATS", &url, &e);
            None
        }
    }
}

/// A stream of its own per destination (its subjects `<name>.>`), one durable.
#[derive(Clone)]
struct Dest {
    stream: String,
}

fn options(dest: &Dest) -> ConsumerOptions {
    ConsumerOptions::new(&dest.stream, "kit").ack_wait(Duration::from_secs(5))
}

struct JetStream {
    nats: Nats,
}

impl Transport for JetStream {
    type Destination = Dest;
    type Topic = NatsTopic;
    type Server = NatsServer;

    async fn destination(&self) -> Result<Dest, Error> {
        let dest = Dest {
            stream: format!("msgio_test_{}", msgio::testing::unique_suffix()),
        };
        self.nats.ensure_stream(&options(&dest)).await?;
        Ok(dest)
    }

    async fn topic(&self, dest: &Dest) -> Result<NatsTopic, Error> {
        Ok(self.nats.topic(format!("{}.kit", dest.stream)))
    }

    async fn server(&self, dest: &Dest, config: ServerConfig) -> Result<NatsServer, Error> {
        self.nats.server(options(dest), config).await
    }

    async fn remove(&self, dest: Dest) -> Result<(), Error> {
        self.nats.delete_stream(&dest.stream).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_passes_the_conformance_kit() {
    let Some(nats) = connect().await else { return };
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups()
        // The server's max_payload is 1 MiB by default.
        .max_body(512 << 10);
    msgio::testing::run(JetStream { nats }, caps)
        .await
        .assert_passed();
}

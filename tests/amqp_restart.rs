//! The RabbitMQ transport across a broker restart (`rabbitmqctl stop_app`, then
//! `start_app`, mid-stream). It stops the shared broker, so it is a test binary of its own:
//! Cargo runs test binaries one after another, and nothing else here uses the broker.

use std::time::Duration;

use msgio::Error;
use msgio::testing::Capabilities;

#[path = "support/amqp.rs"]
mod support;
use support::{Rabbit, connect};

/// Runs `rabbitmqctl <args>`.
async fn rabbitmqctl(args: &[&str]) -> Result<(), Error> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .map_err(|e| Error::other(format!("running rabbitmqctl {args:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::other(format!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Starts the broker's application again however the test ends.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_passes_the_kits_broker_restart_case() {
    let Some(amqp) = connect().await else { return };
    let _start_again = StartAgain;
    let caps = Capabilities::new().restart(|| async {
        rabbitmqctl(&["stop_app"]).await?;
        // Down for a while: publishes and the consumer fail meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rabbitmqctl(&["start_app"]).await
    });
    msgio::testing::run_matching(Rabbit { amqp }, caps, |name| name == "broker_restart")
        .await
        .assert_passed();
}

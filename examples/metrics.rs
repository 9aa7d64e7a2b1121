//! A server's and a topic's metrics exported as Prometheus text on a loopback port, with
//! metrics-exporter-prometheus as the recorder (any exporter of the `metrics` facade
//! works the same).
//!
//! ```sh
//! cargo run --example metrics --features metrics
//! # in another terminal, while it runs: curl http://127.0.0.1:9898/metrics
//! ```
//!
//! It serves the page for 30 s (`METRICS_SECONDS` changes that) and prints it once.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use msgio::mem::MemQueue;
use msgio::metrics::MeteredTopic;
use msgio::{Context, Error, Message, ReceiverFunc, Server, ServerConfig, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // First the recorder: servers and topics register their metrics when they start.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .map_err(Error::other)?;

    let orders = MemQueue::named("orders", 1024)?;
    let dead = MemQueue::named("orders-dead", 1024)?;
    let topic = MeteredTopic::new(orders.topic(), "orders");
    let server = orders.server(
        ServerConfig::new()
            .concurrency(8)
            .max_attempts(2)
            .dead_letter(dead.topic()),
    )?;
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(|_: Context, msg: Message| async move {
                match msg.attributes.get("Kind") {
                    Some("bad") => Err(Error::reject("cannot be parsed")),
                    Some("flaky") => Err(Error::other("try again")),
                    _ => Ok(()),
                }
            }))
            .await
    });
    let ctx = Context::background();
    for n in 0..100 {
        let mut msg = Message::new(format!("order {n}"));
        let kind = match n % 10 {
            0 => "bad",
            1 => "flaky",
            _ => "good",
        };
        msg.attributes.set("Kind", kind);
        topic.publish(&ctx, msg).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{}", prometheus.render());

    // The same text over HTTP, on loopback only.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9898")
        .await
        .map_err(Error::Io)?;
    println!("serving http://127.0.0.1:9898/metrics");
    let seconds = std::env::var("METRICS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let serve_page = async {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let body = prometheus.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(seconds), serve_page).await;

    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;
    Ok(())
}

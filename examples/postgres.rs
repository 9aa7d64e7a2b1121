//! A PostgreSQL queue and the transactional outbox.
//!
//! 1. A queue: publish three jobs, serve them, ack.
//! 2. The outbox: an order row and its event written in one transaction (and a second
//!    transaction rolled back, whose event never leaves), then a `Forwarder` relaying the
//!    outbox to another transport (here the in-memory one; Redis, NATS or RabbitMQ the same
//!    way), where a consumer receives the committed event only.
//!
//! ```sh
//! cargo run --example postgres --features postgres   # POSTGRES_URL overrides the default
//! ```

use std::time::Duration;

use msgio::postgres::{ORDERING_KEY, Postgres, QueueOptions};
use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let postgres = Postgres::connect(&url).await?;
    postgres.migrate().await?;
    let suffix = std::process::id();

    // 1. A queue.
    let jobs = format!("example-jobs-{suffix}");
    let topic = postgres.topic(&jobs);
    for n in 1..=3 {
        topic
            .publish(&Context::background(), Message::new(format!("job {n}")))
            .await?;
    }
    let server = postgres
        .server(QueueOptions::new(&jobs), ServerConfig::new().concurrency(4))
        .await?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(8);
    let serving = server.clone();
    let serve = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |ctx: Context, mut msg: Message| {
                let done_tx = done_tx.clone();
                async move {
                    let body = msg.body.read_to_bytes(1024).await?;
                    println!(
                        "queue: {} (attempt {})",
                        String::from_utf8_lossy(&body),
                        ctx.attempt()
                    );
                    let _ = done_tx.send(()).await;
                    Ok(())
                }
            }))
            .await
    });
    for _ in 0..3 {
        done_rx.recv().await;
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = serve.await?;

    // 2. The outbox.
    let outbox_queue = format!("example-outbox-{suffix}");
    let outbox = postgres.topic(&outbox_queue);
    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let orders = format!("example_orders_{suffix}");
    client
        .batch_execute(&format!("CREATE TABLE {orders} (id int PRIMARY KEY)"))
        .await?;
    for (id, commit) in [(7, true), (8, false)] {
        let tx = client.transaction().await?;
        tx.execute(&format!("INSERT INTO {orders} (id) VALUES ($1)"), &[&id])
            .await?;
        let mut event = Message::new(format!("order {id} placed"));
        event.attributes.set(ORDERING_KEY, format!("order-{id}"));
        outbox.publish_in(&tx, event).await?;
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?; // the order and its event both vanish
        }
    }

    let downstream = msgio::mem::MemQueue::new(16)?;
    let forwarder = postgres
        .forwarder(QueueOptions::new(&outbox_queue), downstream.topic())
        .await?;
    let relay = forwarder.clone();
    let relaying = tokio::spawn(async move { relay.run().await });

    let consumer = downstream.server(ServerConfig::new())?;
    let (event_tx, mut event_rx) = tokio::sync::mpsc::channel(8);
    let consuming = consumer.clone();
    let consume = tokio::spawn(async move {
        consuming
            .serve(ReceiverFunc::new(move |_: Context, mut msg: Message| {
                let event_tx = event_tx.clone();
                async move {
                    let body = msg.body.read_to_bytes(1024).await?;
                    let _ = event_tx
                        .send(String::from_utf8_lossy(&body).into_owned())
                        .await;
                    Ok(())
                }
            }))
            .await
    });
    let event = event_rx.recv().await.expect("the committed event");
    println!("outbox: relayed {event:?}");
    // The rolled-back order's event never comes.
    let nothing = tokio::time::timeout(Duration::from_millis(500), event_rx.recv()).await;
    assert!(nothing.is_err(), "a rolled-back event was relayed");
    println!("outbox: nothing of the rolled-back transaction");

    forwarder.shutdown(Duration::from_secs(5)).await?;
    relaying.await??;
    consumer.shutdown(Duration::from_secs(5)).await?;
    let _ = consume.await?;
    client
        .batch_execute(&format!("DROP TABLE {orders}"))
        .await?;
    Ok(())
}

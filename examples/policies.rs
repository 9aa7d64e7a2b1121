//! A consumer kept healthy by decorators, on the in-memory transport: panics caught,
//! failures retried with backoff, poison messages dead-lettered, duplicates dropped, and
//! messages routed by type.
//!
//! ```sh
//! cargo run --example policies
//! ```
//!
//! The poison message's panic prints through Rust's panic hook on each attempt; that is
//! expected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use msgio::decorators::{DeadLetter, Dedupe, MemoryDedupeStore, Retry, Router};
use msgio::{
    Backoff, Context, Error, Message, ReceiverFunc, SafeReceiver, Server, ServerConfig, Topic, keys,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let orders = msgio::mem::MemQueue::named("orders", 1024)?;
    let dead_letters = msgio::mem::MemQueue::named("orders.dead", 64)?;

    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let created = ReceiverFunc::new(move |ctx: Context, mut msg: Message| {
        let h = h.clone();
        async move {
            let body = msg.body.read_to_bytes(1 << 20).await?;
            if body == "{not json" {
                panic!("cannot parse order {body:?}");
            }
            println!(
                "created: {} (attempt {})",
                String::from_utf8_lossy(&body),
                ctx.attempt()
            );
            h.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let cancelled = ReceiverFunc::new(|_: Context, _: Message| async {
        println!("cancelled: noted");
        Ok(())
    });

    // Read inside out: route by type, drop duplicates, retry with backoff up to 3 attempts,
    // dead-letter what still fails, and never let a panic take the server down.
    let receiver = SafeReceiver::new(DeadLetter::new(
        Retry::new(
            Dedupe::new(
                Router::new("Type")
                    .route("order.created", created)
                    .route("order.cancel*", cancelled),
                MemoryDedupeStore::new(100_000),
            ),
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100), 2.0)?,
            3,
        ),
        dead_letters.topic(),
    ));
    let server = orders.server(ServerConfig::new().concurrency(8).unlimited_attempts())?;
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });

    let topic = orders.topic();
    for (key, kind, body) in [
        ("o-1", "order.created", "{\"id\": 1}"),
        ("o-1", "order.created", "{\"id\": 1}"), // a duplicate: handled once
        ("o-2", "order.cancelled", "{\"id\": 2}"),
        ("o-3", "order.created", "{not json"), // poison: dead-lettered after 3 attempts
        ("o-4", "refund.issued", "{\"id\": 4}"), // no route: rejected, dead-lettered
    ] {
        let mut msg = Message::new(body);
        msg.attributes.set("Idempotency-Key", key);
        msg.attributes.set("Type", kind);
        topic.publish(&Context::background(), msg).await?;
    }

    let wait = async {
        while dead_letters.len() < 2 || handled.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| Error::other("timed out"))?;
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    // What the dead-letter topic holds, and why.
    let dlq = dead_letters.server(ServerConfig::new())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = dlq.clone();
    let reader = tokio::spawn(async move {
        reading
            .serve(ReceiverFunc::new(move |_: Context, msg: Message| {
                let tx = tx.clone();
                async move {
                    tx.send(msg.attributes).ok();
                    Ok(())
                }
            }))
            .await
    });
    for _ in 0..2 {
        let attrs = rx
            .recv()
            .await
            .ok_or_else(|| Error::other("no dead letter"))?;
        println!(
            "dead letter {}: after {} attempt(s): {}",
            attrs.get("Idempotency-Key").unwrap_or("?"),
            attrs.get(keys::ATTEMPTS).unwrap_or("?"),
            attrs.get(keys::DEAD_LETTER_REASON).unwrap_or("?"),
        );
    }
    dlq.shutdown(Duration::from_secs(5)).await?;
    let _ = reader.await;
    println!("orders handled: {}", handled.load(Ordering::SeqCst));
    Ok(())
}

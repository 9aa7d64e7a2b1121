//! Orders through NATS JetStream: a publisher with idempotency keys (a republished order
//! is dropped by the stream), a server on a durable pull consumer, a delayed message, a
//! failure retried after a delay, and a poison message dead-lettered to another subject.
//!
//! ```sh
//! cargo run --example nats --features nats   # NATS_URL overrides nats://127.0.0.1:4222
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::io::AsyncWriteExt;
use msgio::nats::{ConsumerOptions, Nats};
use msgio::{
    Context, Error, Message, MessageWriter, ReceiverFunc, Server, ServerConfig, Topic, keys,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let nats = Nats::connect(&url).await?;
    println!("connected to {}", nats.url()); // a password, if any, shows as ***

    // Streams of their own per run: ORDERS_<pid> captures orders_<pid>.>, and the dead
    // letters go to a second stream.
    let name = format!("ORDERS_{}", std::process::id());
    let orders = ConsumerOptions::new(&name, "billing").subjects([format!("{name}.>")]);
    let dead_name = format!("{name}_DEAD");
    let dead = ConsumerOptions::new(&dead_name, "inspect");
    nats.ensure_stream(&orders).await?;
    nats.ensure_stream(&dead).await?;
    let topic = nats.topic(format!("{name}.created"));

    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let receiver = ReceiverFunc::new(move |ctx: Context, msg: Message| {
        let h = h.clone();
        async move {
            let kind = msg.attributes.get("Type").unwrap_or("?").to_owned();
            match kind.as_str() {
                "order.flaky" if ctx.attempt() == 1 => {
                    println!("{kind} failed on attempt 1, retried in 200 ms");
                    Err(Error::retry_after(Duration::from_millis(200), "flaky"))
                }
                "order.poison" => Err(Error::reject("cannot be parsed")),
                _ => {
                    println!("{kind} handled on attempt {}", ctx.attempt());
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        }
    });
    let server = nats
        .server(
            orders,
            ServerConfig::new()
                .concurrency(16)
                .max_attempts(5)
                .dead_letter(nats.topic(format!("{dead_name}.orders"))),
        )
        .await?;
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });

    for (kind, key) in [
        ("order.created", "order-1"),
        ("order.created", "order-1"), // the same order again: dropped by the stream
        ("order.flaky", "order-2"),
        ("order.poison", "order-3"),
    ] {
        let mut msg = Message::new(format!("{{\"kind\":\"{kind}\"}}"));
        msg.attributes.set("Type", kind);
        msg.attributes.set("Idempotency-Key", key);
        topic.publish(&Context::background(), msg).await?;
    }
    let mut writer = topic.new_writer(&Context::background())?;
    writer.attributes_mut().set("Type", "order.reminder");
    writer.set_delay(Duration::from_millis(500));
    writer.write_all(b"{\"kind\":\"order.reminder\"}").await?;
    writer.close().await?;

    // Bounded wait for the three good orders.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    // The poison message is in the dead-letter stream with the reason.
    let letters = nats.server(dead, ServerConfig::new()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = letters.clone();
    let task = tokio::spawn(async move {
        reading
            .serve(ReceiverFunc::new(move |_: Context, msg: Message| {
                let tx = tx.clone();
                async move {
                    tx.send(
                        msg.attributes
                            .get(keys::DEAD_LETTER_REASON)
                            .map(str::to_owned),
                    )
                    .ok();
                    Ok(())
                }
            }))
            .await
    });
    let reason = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    println!("dead-lettered: {:?}", reason.ok().flatten().flatten());
    letters.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    println!("handled {} orders", handled.load(Ordering::SeqCst));
    nats.delete_stream(&name).await?;
    nats.delete_stream(&dead_name).await?;
    Ok(())
}

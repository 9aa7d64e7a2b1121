//! Orders through RabbitMQ: a topic exchange, a durable queue bound to it with a
//! dead-letter exchange, a server with confirmed publishing on the way in, a delayed
//! message, a failure retried after a delay, and a poison message rejected into the
//! dead-letter queue by the broker.
//!
//! ```sh
//! cargo run --example amqp --features amqp   # AMQP_URL overrides amqp://guest:guest@127.0.0.1:5672/%2f
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::io::AsyncWriteExt;
use msgio::amqp::{Amqp, ExchangeKind, QueueOptions};
use msgio::{Context, Error, Message, MessageWriter, ReceiverFunc, Server, ServerConfig, Topic};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let amqp = Amqp::connect(&url).await?;
    println!("connected to {}", amqp.url()); // the password shows as ***

    // Names of their own per run: an exchange for orders, a billing queue bound to it, and
    // a queue for what billing rejects (through the default exchange).
    let run = std::process::id();
    let exchange = format!("orders_{run}");
    let billing = format!("billing_{run}");
    let rejected = format!("billing_{run}_rejected");
    amqp.declare_exchange(&exchange, ExchangeKind::Topic)
        .await?;
    amqp.declare_queue(&QueueOptions::new(&rejected)).await?;
    let options = QueueOptions::new(&billing)
        .bind(&exchange, "order.*")
        .dead_letter_to("", &rejected);

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
    // Declares the queue and its binding: what is published from here on waits for it.
    let server = amqp
        .server(
            options.clone(),
            ServerConfig::new().concurrency(16).max_attempts(5),
        )
        .await?;
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });

    for kind in ["order.created", "order.flaky", "order.poison"] {
        let topic = amqp.topic(&exchange, kind)?;
        let mut msg = Message::new(format!("{{\"kind\":\"{kind}\"}}"));
        msg.attributes.set("Type", kind);
        msg.attributes.set("Content-Type", "application/json");
        // Returns once the broker confirmed the message.
        topic.publish(&Context::background(), msg).await?;
    }
    let mut writer = amqp
        .topic(&exchange, "order.reminder")?
        .new_writer(&Context::background())?;
    writer.attributes_mut().set("Type", "order.reminder");
    writer.set_delay(Duration::from_millis(500)); // waits in a wait queue, no plugin
    writer.write_all(b"{\"kind\":\"order.reminder\"}").await?;
    writer.close().await?;

    // Bounded wait for the three good orders.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    // The poison message went to the rejected queue through the dead-letter exchange.
    let letters = amqp
        .server(QueueOptions::new(&rejected), ServerConfig::new())
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = letters.clone();
    let task = tokio::spawn(async move {
        reading
            .serve(ReceiverFunc::new(move |_: Context, msg: Message| {
                let tx = tx.clone();
                async move {
                    tx.send(msg.attributes.get("Type").map(str::to_owned)).ok();
                    Ok(())
                }
            }))
            .await
    });
    let letter = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    println!(
        "rejected into {rejected}: {:?}",
        letter.ok().flatten().flatten()
    );
    letters.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    println!("handled {} orders", handled.load(Ordering::SeqCst));
    for queue in [&billing, &rejected] {
        amqp.delete_wait_queues("", queue).await?;
        amqp.delete_queue(queue).await?;
    }
    amqp.delete_wait_queues(&exchange, "order.reminder").await?;
    amqp.delete_exchange(&exchange).await?;
    Ok(())
}

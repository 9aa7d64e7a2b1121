//! Orders through Kafka: records keyed by customer (each customer's orders handled one at
//! a time, in order, while different customers run concurrently), a failure retried after
//! a delay in place, and a poison message dead-lettered to another topic.
//!
//! ```sh
//! cargo run --example kafka --features kafka   # KAFKA_BROKERS overrides 127.0.0.1:9092
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use msgio::kafka::{ConsumerOptions, KEY, Kafka};
use msgio::{Context, Error, Message, ReceiverFunc, Server, ServerConfig, Topic, keys};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let kafka = Kafka::connect(&brokers).await?;
    println!("connected to {}", kafka.url()); // a password, if any, is never shown

    // Topics of their own per run, four partitions for the orders.
    let name = format!("orders_{}", std::process::id());
    let dead_name = format!("{name}_dead");
    kafka.create_topic(&name, 4).await?;
    kafka.create_topic(&dead_name, 1).await?;
    let topic = kafka.topic(&name);

    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let receiver = ReceiverFunc::new(move |ctx: Context, msg: Message| {
        let h = h.clone();
        async move {
            let kind = msg.attributes.get("Type").unwrap_or("?").to_owned();
            let customer = msg.attributes.get(KEY).unwrap_or("-").to_owned();
            match kind.as_str() {
                "order.flaky" if ctx.attempt() == 1 => {
                    println!("{customer}: {kind} failed on attempt 1, retried in 200 ms");
                    Err(Error::retry_after(Duration::from_millis(200), "flaky"))
                }
                "order.poison" => Err(Error::reject("cannot be parsed")),
                _ => {
                    println!("{customer}: {kind} handled on attempt {}", ctx.attempt());
                    h.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        }
    });
    // A short session timeout so that the group forms quickly in a demo.
    let options = ConsumerOptions::new(&name, "billing").session_timeout(Duration::from_secs(6));
    let server = kafka
        .server(
            options,
            ServerConfig::new()
                .concurrency(16)
                .max_attempts(5)
                .dead_letter(kafka.topic(&dead_name)),
        )
        .await?;
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });

    for (kind, customer) in [
        ("order.created", "customer-1"),
        ("order.flaky", "customer-1"), // customer-1's next order waits for this one
        ("order.paid", "customer-1"),
        ("order.created", "customer-2"),
        ("order.poison", "customer-3"),
    ] {
        let mut msg = Message::new(format!("{{\"kind\":\"{kind}\"}}"));
        msg.attributes.set("Type", kind);
        msg.attributes.set(KEY, customer);
        topic.publish(&Context::background(), msg).await?;
    }

    // Bounded wait for the four good orders (the group join comes first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    // The poison message is in the dead-letter topic with the reason.
    let letters = kafka
        .server(
            ConsumerOptions::new(&dead_name, "inspect").session_timeout(Duration::from_secs(6)),
            ServerConfig::new(),
        )
        .await?;
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
    let reason = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    println!("dead-lettered: {:?}", reason.ok().flatten().flatten());
    letters.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;

    println!("handled {} orders", handled.load(Ordering::SeqCst));
    Ok(())
}

//! Orders through a Redis stream: a publisher, a consumer group of two servers, a delayed
//! message, a failure retried, and a poison message dead-lettered to another stream.
//!
//! ```sh
//! cargo run --example redis --features redis   # REDIS_URL overrides redis://127.0.0.1:6379
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::io::AsyncWriteExt;
use msgio::redis::{Redis, StreamOptions};
use msgio::{
    Context, Error, Message, MessageWriter, ReceiverFunc, Server, ServerConfig, Topic, keys,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis = Redis::connect(&url).await?;
    println!("connected to {}", redis.url()); // the password, if any, shows as ***

    // A fresh stream per run, so that runs do not see each other's messages.
    let stream = format!("msgio-example:orders:{}", std::process::id());
    let dead = format!("{stream}:dead");
    let orders = redis.topic(&stream).max_len(100_000);

    // Two servers in one group share the stream; each message goes to one of them.
    let handled = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let handled = handled.clone();
        let receiver = ReceiverFunc::new(move |ctx: Context, msg: Message| {
            let handled = handled.clone();
            async move {
                let kind = msg.attributes.get("Type").unwrap_or("?").to_owned();
                match kind.as_str() {
                    "order.flaky" if ctx.attempt() == 1 => {
                        println!("{name}: {kind} failed on attempt 1, will be retried");
                        Err(Error::retry_after(Duration::from_millis(100), "flaky"))
                    }
                    "order.poison" => Err(Error::reject("cannot be parsed")),
                    _ => {
                        println!("{name}: {kind} handled on attempt {}", ctx.attempt());
                        handled.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            }
        });
        let server = redis
            .server(
                StreamOptions::new(&stream, "billing")
                    .consumer(name)
                    .dead_letter_stream(&dead),
                ServerConfig::new().concurrency(16).max_attempts(5),
            )
            .await?;
        let serving = server.clone();
        let task = tokio::spawn(async move { serving.serve(receiver).await });
        servers.push((server, task));
    }

    for kind in ["order.created", "order.flaky", "order.poison", "order.paid"] {
        let mut msg = Message::new(format!("{{\"kind\":\"{kind}\"}}"));
        msg.attributes.set("Type", kind);
        msg.attributes.set("Content-Type", "application/json");
        orders.publish(&Context::background(), msg).await?;
    }
    // A delayed message waits in the stream's delayed set until it is due.
    let mut writer = orders.new_writer(&Context::background())?;
    writer.attributes_mut().set("Type", "order.reminder");
    writer.set_delay(Duration::from_millis(500));
    writer.write_all(b"{\"kind\":\"order.reminder\"}").await?;
    writer.close().await?;

    // Bounded wait for the four good messages.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (server, task) in servers {
        server.shutdown(Duration::from_secs(5)).await?;
        let _ = task.await;
    }

    // The poison message is in the dead-letter stream with the reason.
    let letters = redis
        .server(StreamOptions::new(&dead, "inspect"), ServerConfig::new())
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = letters.clone();
    let task = tokio::spawn(async move {
        reading
            .serve(ReceiverFunc::new(move |_: Context, msg: Message| {
                let tx = tx.clone();
                async move {
                    let reason = msg
                        .attributes
                        .get(keys::DEAD_LETTER_REASON)
                        .map(str::to_owned);
                    tx.send(reason).ok();
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
    // Leave nothing behind.
    let mut conn = redis::Client::open(url.as_str())
        .map_err(Error::other)?
        .get_multiplexed_async_connection()
        .await
        .map_err(Error::other)?;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(&dead)
        .arg(format!("{stream}:delayed"))
        .query_async(&mut conn)
        .await
        .map_err(Error::other)?;
    Ok(())
}

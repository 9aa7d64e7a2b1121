//! Publish a few messages on the in-memory transport and print what the receiver gets.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::io::AsyncWriteExt;
use msgio::{Context, Error, Message, MessageWriter, ReceiverFunc, Server, Topic};

const MESSAGES: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // A topic and a server over one bounded in-memory queue.
    let (topic, server) = msgio::mem::channel(128)?;

    // Publish: attributes, a body written as a stream, and close to send.
    for n in 1..=MESSAGES {
        let mut writer = topic.new_writer(&Context::background())?;
        writer.attributes_mut().set("content-type", "text/plain");
        writer.attributes_mut().set("x-sequence", n.to_string());
        writer.write_all(format!("hello #{n}").as_bytes()).await?;
        writer.close().await?;
    }

    // Receive: Ok(()) acknowledges the message.
    let received = Arc::new(AtomicUsize::new(0));
    let all_received = Arc::new(tokio::sync::Notify::new());
    let receiver = {
        let received = received.clone();
        let all_received = all_received.clone();
        ReceiverFunc::new(move |ctx: Context, mut msg: Message| {
            let received = received.clone();
            let all_received = all_received.clone();
            async move {
                let body = msg.body.read_to_bytes(64 * 1024).await?;
                println!(
                    "received {:?} (attempt {}, id {}, sequence {})",
                    String::from_utf8_lossy(&body),
                    ctx.attempt(),
                    ctx.message_id()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    msg.attributes.get("X-Sequence").unwrap_or("?"),
                );
                if received.fetch_add(1, Ordering::SeqCst) + 1 == MESSAGES {
                    all_received.notify_one();
                }
                Ok(())
            }
        })
    };

    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    tokio::time::timeout(Duration::from_secs(10), all_received.notified())
        .await
        .map_err(|_| Error::other("timed out waiting for the messages"))?;

    // Shut down gracefully: serve returns ServerClosed.
    server.shutdown(Duration::from_secs(5)).await?;
    match task.await {
        Ok(Err(Error::ServerClosed)) => {}
        other => return Err(Error::other(format!("serve ended unexpectedly: {other:?}"))),
    }
    println!(
        "received {} messages; server closed",
        received.load(Ordering::SeqCst)
    );
    Ok(())
}

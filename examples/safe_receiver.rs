//! A closure receiver wrapped in `SafeReceiver`: a panic becomes an error, the message is
//! retried, and the server keeps serving.
//!
//! ```sh
//! cargo run --example safe_receiver
//! ```
//!
//! The panic's message still prints through Rust's panic hook, as every panic does; the
//! server goes on and handles the message on its second attempt.

use std::time::Duration;

use msgio::{Context, Error, Message, ReceiverFunc, SafeReceiver, Server, ServerConfig, Topic};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (topic, server) = msgio::mem::channel_with(64, ServerConfig::new().max_attempts(3))?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();

    // The first attempt at "fragile" panics; SafeReceiver turns that into
    // Error::Panicked, which the server retries like any failure.
    let receiver = SafeReceiver::new(ReceiverFunc::new(move |ctx: Context, mut msg: Message| {
        let done_tx = done_tx.clone();
        async move {
            let body = msg.body.read_to_bytes(1024).await?;
            if body == "fragile" && ctx.attempt() == 1 {
                panic!("could not handle {body:?} on the first try");
            }
            println!("handled {body:?} on attempt {}", ctx.attempt());
            done_tx.send(()).ok();
            Ok(())
        }
    }));

    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });
    for body in ["sturdy", "fragile"] {
        topic
            .publish(&Context::background(), Message::new(body))
            .await?;
    }
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await
            .map_err(|_| Error::other("timed out"))?;
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;
    Ok(())
}

//! A transport of your own: a durable spool directory (one file per message, claimed by an
//! atomic rename), written only against `msgio::transport` and `msgio::url` in
//! `spool.rs`, registered under `spool://` and used by URL like any built-in transport.
//! `tests/custom_transport.rs` runs the conformance kit on it.
//!
//! ```sh
//! cargo run --example custom_transport
//! ```

#[allow(dead_code)] // what only the kit in tests/custom_transport.rs uses
mod spool;

use std::time::Duration;

use msgio::{Context, Error, Message, MessageWriter, ReceiverFunc, Server, ServerConfig, Topic};
use spool::SpoolOpener;

#[tokio::main]
async fn main() -> Result<(), Error> {
    msgio::url::register("spool", SpoolOpener)?;
    let dir = std::env::temp_dir().join(format!("msgio-spool-example-{}", std::process::id()));
    let url = format!("spool://{}", dir.display());

    // From here on the program knows only the URL: the same code runs on mem://, redis://...
    let topic = msgio::open_topic(&url).await?;
    let server = msgio::open_server(&url, ServerConfig::new().concurrency(4)).await?;

    let mut later = topic.new_writer(&Context::background())?;
    later.set_delay(Duration::from_millis(300));
    futures::io::AsyncWriteExt::write_all(&mut later, b"published first, due later").await?;
    futures::io::AsyncWriteExt::close(&mut later).await?;
    for n in 1..=2 {
        let mut msg = Message::new(format!("message {n}"));
        msg.attributes.set("Sequence", n.to_string());
        topic.publish(&Context::background(), msg).await?;
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |ctx: Context, mut msg: Message| {
                let tx = tx.clone();
                async move {
                    let body = msg.body.read_to_bytes(1 << 20).await?;
                    println!(
                        "got {:?} (attempt {}, id {})",
                        String::from_utf8_lossy(&body),
                        ctx.attempt(),
                        ctx.message_id()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    );
                    tx.send(()).ok();
                    Ok(())
                }
            }))
            .await
    });
    for _ in 0..3 {
        rx.recv().await;
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

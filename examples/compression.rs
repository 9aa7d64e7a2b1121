//! A stacked codec pipeline on the in-memory transport: bodies are gzipped, then
//! base64-encoded on the way out, and decoded in reverse on the way in.
//!
//! ```sh
//! cargo run --example compression --features gzip,base64
//! ```

use std::time::Duration;

use msgio::decorators::{base64, gzip};
use msgio::{Context, Error, Message, ReceiverFunc, Server, Topic};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let queue = msgio::mem::MemQueue::named("reports", 16)?;
    // Applied outermost first: gzip, then base64.
    let topic = gzip::topic(base64::topic(queue.topic()));

    let report = "quarterly report: all figures nominal. ".repeat(200);
    topic
        .publish(&Context::background(), Message::new(report.clone()))
        .await?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Undone in reverse: base64 first, then gzip.
    let receiver = base64::receiver(gzip::receiver(ReceiverFunc::new(
        move |_: Context, mut msg: Message| {
            let tx = tx.clone();
            async move {
                let body = msg.body.read_to_bytes(1 << 20).await?;
                tx.send((body, msg.attributes)).ok();
                Ok(())
            }
        },
    )));
    let server = queue.server(msgio::ServerConfig::new())?;
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve(receiver).await });

    let (body, attributes) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| Error::other("timed out"))?
        .ok_or_else(|| Error::other("receiver gone"))?;
    assert_eq!(body, report.as_bytes());
    println!(
        "received {} bytes, decoded; encodings left on the message: {:?}",
        body.len(),
        attributes.get("Content-Encoding")
    );

    // What travels: the same body through the same topic stack, read by an undecorated
    // receiver.
    let wire = msgio::mem::MemQueue::new(1)?;
    gzip::topic(base64::topic(wire.topic()))
        .publish(&Context::background(), Message::new(report.clone()))
        .await?;
    let peek = wire.server(msgio::ServerConfig::new())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let peeking = peek.clone();
    let peek_task = tokio::spawn(async move {
        peeking
            .serve(ReceiverFunc::new(move |_: Context, mut msg: Message| {
                let tx = tx.clone();
                async move {
                    let raw = msg.body.read_to_bytes(1 << 20).await?;
                    tx.send((raw.len(), msg.attributes)).ok();
                    Ok(())
                }
            }))
            .await
    });
    let (wire_len, wire_attrs) = rx.recv().await.ok_or_else(|| Error::other("no message"))?;
    println!(
        "on the wire: {wire_len} bytes for {} plain, Content-Encoding {:?}, Content-Transfer-Encoding {:?}",
        report.len(),
        wire_attrs.get("Content-Encoding"),
        wire_attrs.get("Content-Transfer-Encoding"),
    );

    server.shutdown(Duration::from_secs(5)).await?;
    peek.shutdown(Duration::from_secs(5)).await?;
    let _ = (task.await, peek_task.await);
    Ok(())
}

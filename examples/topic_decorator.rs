//! A custom Topic decorator in a few lines: every message published through it gets a
//! `Published-By` attribute, whatever topic it wraps.
//!
//! ```sh
//! cargo run --example topic_decorator
//! ```

use std::time::Duration;

use msgio::{Context, Error, Message, MessageWriter, ReceiverFunc, Server, Topic, TopicFunc};

/// Wraps any topic; the decorator is just a closure that makes writers.
fn stamped<T: Topic>(inner: T, service: &'static str) -> impl Topic {
    TopicFunc::new(move |ctx: &Context| {
        let mut writer = inner.new_writer(ctx)?;
        writer.attributes_mut().set("Published-By", service);
        Ok(writer)
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (topic, server) = msgio::mem::channel(16)?;
    let topic = stamped(topic, "billing");
    topic
        .publish(&Context::background(), Message::new("invoice 42"))
        .await?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, msg: Message| {
                let tx = tx.clone();
                async move {
                    tx.send(msg.attributes.get("published-by").map(str::to_owned))
                        .ok();
                    Ok(())
                }
            }))
            .await
    });
    let by = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| Error::other("timed out"))?
        .flatten();
    println!("published by {}", by.as_deref().unwrap_or("nobody"));
    assert_eq!(by.as_deref(), Some("billing"));
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;
    Ok(())
}

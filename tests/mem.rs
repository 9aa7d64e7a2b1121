//! The in-memory transport against the conformance kit.

use msgio::mem::{MemQueue, MemServer, MemTopic};
use msgio::testing::{Capabilities, Transport};
use msgio::{Error, ServerConfig};

struct Mem;

impl Transport for Mem {
    type Destination = MemQueue;
    type Topic = MemTopic;
    type Server = MemServer;

    async fn destination(&self) -> Result<MemQueue, Error> {
        MemQueue::named("kit", 10_000)
    }

    async fn topic(&self, queue: &MemQueue) -> Result<MemTopic, Error> {
        Ok(queue.topic())
    }

    async fn server(&self, queue: &MemQueue, config: ServerConfig) -> Result<MemServer, Error> {
        queue.server(config)
    }

    async fn unsettled(&self, queue: &MemQueue) -> Result<Option<u64>, Error> {
        Ok(Some(queue.len() as u64))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_passes_the_conformance_kit() {
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(Mem, caps).await.assert_passed();
}

/// A queue with room for one message: publishers wait, nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_publishers_wait_and_drops_nothing() {
    use msgio::testing::Recorder;
    use msgio::{Context, Message, Server, Topic};
    use std::time::Duration;

    let queue = MemQueue::new(1).unwrap();
    let recorder = Recorder::new();
    let server = queue.server(ServerConfig::new().concurrency(2)).unwrap();
    let serving = server.clone();
    let r = recorder.clone();
    let task = tokio::spawn(async move { serving.serve(r).await });
    let mut publishers = Vec::new();
    for p in 0..4 {
        let topic = queue.topic();
        publishers.push(tokio::spawn(async move {
            for i in 0..50 {
                let mut msg = Message::new(format!("{p}-{i}"));
                msg.attributes.set("X-Kit-Seq", (p * 50 + i).to_string());
                topic.publish(&Context::background(), msg).await.unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let got = recorder
        .wait_until("all 200", Duration::from_secs(30), |r| r.len() >= 200)
        .await
        .unwrap();
    let distinct: std::collections::BTreeSet<_> = got.iter().filter_map(|r| r.seq()).collect();
    assert_eq!(distinct.len(), 200);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
}

#[test]
fn a_zero_capacity_is_refused_by_name() {
    let err = MemQueue::new(0).unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
}

/// What a server fetched ahead and never started goes back to the front of the queue, in
/// the order it was published: the next server sees it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_messages_go_back_to_the_front_in_order() {
    use msgio::testing::Recorder;
    use msgio::{Context, Message, ReceiverFunc, Server, Topic};
    use std::sync::Arc;
    use std::time::Duration;

    let queue = MemQueue::new(100).unwrap();
    let topic = queue.topic();
    let publish = |seq: u64| {
        let topic = topic.clone();
        async move {
            let mut msg = Message::new("x");
            msg.attributes.set("X-Kit-Seq", seq.to_string());
            topic.publish(&Context::background(), msg).await.unwrap();
        }
    };
    for seq in 0..10 {
        publish(seq).await;
    }
    // One at a time, four ahead: the first holds until shutdown has begun.
    let gate = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let first = queue
        .server(ServerConfig::new().concurrency(1).prefetch(4))
        .unwrap();
    let g = gate.clone();
    let serving = first.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, _: Message| {
                let (g, started_tx) = (g.clone(), started_tx.clone());
                async move {
                    let _ = started_tx.send(());
                    g.notified().await;
                    Ok(())
                }
            }))
            .await
    });
    started_rx.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(queue.len(), 5, "the first server holds five");
    let stopping = first.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown(Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    shutdown.await.unwrap().unwrap();
    assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
    for seq in 10..15 {
        publish(seq).await;
    }
    let recorder = Recorder::new();
    let second = queue.server(ServerConfig::new().concurrency(1)).unwrap();
    let serving = second.clone();
    let r = recorder.clone();
    let task = tokio::spawn(async move { serving.serve(r).await });
    let got = recorder
        .wait_for(14, Duration::from_secs(10))
        .await
        .unwrap();
    second.shutdown(Duration::from_secs(5)).await.unwrap();
    task.await.unwrap().unwrap_err();
    let order: Vec<u64> = got.iter().filter_map(|r| r.seq()).collect();
    assert_eq!(order, (1..15).collect::<Vec<_>>());
}

/// On a paused clock every delayed message below is due at the same instant: they all come
/// then (not a tick later), in the order they were published.
#[tokio::test(start_paused = true)]
async fn delayed_messages_due_together_come_when_due_in_publish_order() {
    use futures::AsyncWriteExt as _;
    use msgio::{Context, Message, ReceiverFunc, Server};
    use std::sync::Arc;
    use std::time::Duration;
    const DELAY: Duration = Duration::from_secs(10);
    let (topic, server) = msgio::mem::channel_with(16, ServerConfig::new().concurrency(1)).unwrap();
    let published = tokio::time::Instant::now();
    for seq in 0..5u64 {
        let mut writer = msgio::Topic::new_writer(&topic, &Context::background()).unwrap();
        msgio::MessageWriter::attributes_mut(&mut writer).set("X-Kit-Seq", seq.to_string());
        msgio::MessageWriter::set_delay(&mut writer, DELAY);
        writer.write_all(b"due together").await.unwrap();
        writer.close().await.unwrap();
    }
    let arrived = Arc::new(std::sync::Mutex::new(Vec::new()));
    let receiver = {
        let arrived = arrived.clone();
        ReceiverFunc::new(move |_: Context, msg: Message| {
            let arrived = arrived.clone();
            async move {
                let seq: u64 = msg.attributes.get("X-Kit-Seq").unwrap().parse().unwrap();
                arrived.lock().unwrap().push((seq, published.elapsed()));
                Ok(())
            }
        })
    };
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(receiver).await }
    });
    // On the paused clock this sleep ends only once every task is idle.
    tokio::time::sleep(DELAY * 2).await;
    server.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(matches!(serving.await.unwrap(), Err(Error::ServerClosed)));
    let arrived = arrived.lock().unwrap().clone();
    assert_eq!(
        arrived,
        (0..5).map(|seq| (seq, DELAY)).collect::<Vec<_>>(),
        "(seq, when it came)"
    );
}

/// Every message carries exactly the attributes it was written with, whatever messages
/// came before it on the queue, and attributes a receiver kept stay as they were after
/// their message is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_never_carry_over_between_messages() {
    use futures::AsyncWriteExt;
    use msgio::{Attributes, Context, Message, MessageWriter, ReceiverFunc, Server, Topic};
    use std::time::Duration;

    let queue = MemQueue::new(64).unwrap();
    let topic = queue.topic();
    let server = queue.server(ServerConfig::new().concurrency(4)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, mut msg: Message| {
                let tx = tx.clone();
                async move {
                    let body = msg.body.read_to_bytes(1024).await?;
                    let body = String::from_utf8(body.to_vec()).unwrap();
                    let _ = tx.send((body, msg.attributes.clone()));
                    Ok(())
                }
            }))
            .await
    });
    // What message `i` of a round is written with: none, a few, or more than fit inline.
    let expected = |round: usize, i: usize| {
        let mut attributes = Attributes::new();
        for k in 0..(i % 4) * (1 + i % 3) * 2 {
            attributes.set(
                format!("X-Key-{k}"),
                format!("round {round} message {i} {k}"),
            );
        }
        attributes
    };
    let mut kept = Vec::new();
    for round in 0..20 {
        for i in 0..40 {
            let want = expected(round, i);
            if i % 2 == 0 {
                let mut writer = topic.new_writer(&Context::background()).unwrap();
                for (key, value) in want.iter() {
                    writer.attributes_mut().add(key, value);
                }
                writer
                    .write_all(format!("{round}/{i}").as_bytes())
                    .await
                    .unwrap();
                writer.close().await.unwrap();
            } else {
                let mut msg = Message::new(format!("{round}/{i}"));
                msg.attributes = want;
                topic.publish(&Context::background(), msg).await.unwrap();
            }
        }
        // All of the round received (and so acknowledged, soon after) before the next.
        for _ in 0..40 {
            let (body, attributes) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a round's messages arrive")
                .unwrap();
            let (r, i) = body.split_once('/').unwrap();
            let (r, i): (usize, usize) = (r.parse().unwrap(), i.parse().unwrap());
            assert_eq!(attributes, expected(r, i), "message {body}");
            // Some kept past their acknowledgement; the rest let go of.
            if i % 5 == 0 {
                kept.push((r, i, attributes));
            }
        }
    }
    for (r, i, attributes) in &kept {
        assert_eq!(*attributes, expected(*r, *i), "kept attributes of {r}/{i}");
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(task.await.unwrap(), Err(Error::ServerClosed)));
}

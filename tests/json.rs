//! Typed JSON payloads: what `publish_json` sends, what `JsonReceiver` hands over, and
//! that a body that is not the type's JSON is dead-lettered with serde's reason, never
//! retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use msgio::json::JsonReceiver;
use msgio::testing::{Recorder, start};
use msgio::{Context, Message, ServerConfig, Topic, keys};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    tags: Vec<String>,
}

fn order() -> Order {
    Order {
        id: 42,
        item: "thé vert".into(),
        tags: vec!["a".into(), "b".into()],
    }
}

#[tokio::test]
async fn a_published_value_arrives_as_the_same_value_with_its_content_type() {
    let (topic, server) = msgio::mem::channel(16).unwrap();
    topic
        .publish_json(&Context::background(), &order())
        .await
        .unwrap();
    let recorder = Recorder::new();
    let running = start(server, recorder.clone());
    let got = recorder.wait_for(1, Duration::from_secs(5)).await.unwrap();
    running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got[0].attributes.get("content-type"),
        Some(msgio::json::CONTENT_TYPE)
    );
    let value: Order = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(value, order());
}

#[tokio::test]
async fn a_json_receiver_takes_the_value_and_rejects_what_is_not_one() {
    let (dead, dead_server) = msgio::mem::channel(16).unwrap();
    let (topic, server) =
        msgio::mem::channel_with(16, ServerConfig::new().dead_letter(dead)).unwrap();
    let ctx = Context::background();
    topic.publish(&ctx, Message::new("not json")).await.unwrap();
    topic
        .publish(&ctx, Message::new(r#"{"id": "forty-two"}"#))
        .await
        .unwrap();
    topic.publish_json(&ctx, &order()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = {
        let calls = calls.clone();
        JsonReceiver::new(move |ctx: Context, order: Order| {
            let (calls, tx) = (calls.clone(), tx.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tx.send((ctx.attempt(), order)).ok();
                Ok(())
            }
        })
    };
    let running = start(server, msgio::SafeReceiver::new(receiver));
    let letters = Recorder::new();
    let dead_running = start(dead_server, letters.clone());
    let (attempt, got) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((attempt, got), (1, order()));
    let dead_letters = letters.wait_for(2, Duration::from_secs(5)).await.unwrap();
    running.stop(Duration::from_secs(5)).await.unwrap();
    dead_running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler saw a bad body"
    );
    for letter in &dead_letters {
        let reason = letter.attributes.get(keys::DEAD_LETTER_REASON).unwrap();
        assert!(reason.contains("Order"), "{reason}");
        assert_eq!(letter.attributes.get(keys::ATTEMPTS), Some("1"), "retried");
    }
    let reasons: Vec<_> = dead_letters
        .iter()
        .map(|l| {
            l.attributes
                .get(keys::DEAD_LETTER_REASON)
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("invalid type: string")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_body_too_large_for_json_is_rejected() {
    let mut msg = Message::new(vec![b' '; msgio::json::MAX_BODY + 1]);
    let e = msg.json::<Order>().await.unwrap_err();
    assert!(e.is_reject(), "{e}");
    let mut msg = Message::from_json(&order()).unwrap();
    assert_eq!(msg.json::<Order>().await.unwrap(), order());
}

#[test]
fn a_value_json_cannot_carry_is_an_error_not_a_panic() {
    let mut map = std::collections::BTreeMap::new();
    map.insert(vec![1u8], 2);
    assert!(Message::from_json(&map).is_err());
}

//! The Redis dedupe store against the real Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use msgio::decorators::{Claim, Dedupe, DedupeStore, RedisDedupeStore};
use msgio::{Context, Error, Message, Receiver, ReceiverFunc};

async fn store() -> Option<RedisDedupeStore> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    match RedisDedupeStore::connect(&url).await {
        Ok(store) => Some(store.prefix(format!("msgio-test:{}:", msgio::testing::unique_suffix()))),
        Err(e) => {
            msgio::testing::skip_or_fail("Redis", &url, &e);
            None
        }
    }
}

#[tokio::test]
async fn claims_complete_release_and_expire() {
    let Some(store) = store().await else { return };
    let ttl = Duration::from_secs(5);
    let acquired = |claim: Claim<String>| match claim {
        Claim::Acquired(claimed) => claimed,
        other => panic!("expected the key to be acquired, got {other:?}"),
    };
    let claimed = acquired(store.claim("k", ttl).await.unwrap());
    assert_eq!(store.claim("k", ttl).await.unwrap(), Claim::InProgress);
    store.release(claimed).await.unwrap();
    let claimed = acquired(store.claim("k", ttl).await.unwrap());
    store
        .complete(claimed.clone(), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(store.claim("k", ttl).await.unwrap(), Claim::Done);
    // Releasing a done key leaves it done.
    store.release(claimed).await.unwrap();
    assert_eq!(store.claim("k", ttl).await.unwrap(), Claim::Done);
    tokio::time::sleep(Duration::from_millis(400)).await;
    acquired(store.claim("k", Duration::from_millis(200)).await.unwrap());
    // A claim whose delivery never finished expires by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claimed = acquired(store.claim("k", ttl).await.unwrap());
    store.release(claimed).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_sharing_redis_run_a_key_once() {
    let Some(store) = store().await else { return };
    let runs = Arc::new(AtomicUsize::new(0));
    let consumer = |store: RedisDedupeStore| {
        let runs = runs.clone();
        Arc::new(
            Dedupe::new(
                ReceiverFunc::new(move |_: Context, _: Message| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<(), Error>(())
                    }
                }),
                store,
            )
            .done_ttl(Duration::from_secs(5)),
        )
    };
    let (a, b) = (consumer(store.clone()), consumer(store.clone()));
    let msg = || {
        let mut m = Message::new("pay");
        m.attributes.set("Idempotency-Key", "payment-1");
        m
    };
    let (ra, rb) = tokio::join!(
        a.receive(Context::background(), msg()),
        b.receive(Context::background(), msg())
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        ra.is_ok() ^ rb.is_ok(),
        "one runs, the other is told to retry"
    );
    b.receive(Context::background().with_attempt(2), msg())
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the retry ran again");
}

#[tokio::test]
async fn a_bad_url_is_named_without_its_password() {
    let err = RedisDedupeStore::connect("redis://user:hunter2@127.0.0.1:1/0")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let debug = format!("{err:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

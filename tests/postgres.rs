//! The PostgreSQL transport against the real database (`POSTGRES_URL`, default
//! postgres://postgres@127.0.0.1:5432/test): the conformance kit, the outbox and what the
//! kit cannot see.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgio::postgres::{ORDERING_KEY, Postgres, PostgresServer, PostgresTopic, QueueOptions};
use msgio::testing::{Capabilities, Recorder, Transport, start};
use msgio::{Context, Error, Message, ReceiverFunc, Server, ServerConfig, Topic, keys};

fn url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn connect() -> Option<Postgres> {
    let url = url();
    match Postgres::connect(&url).await {
        Ok(postgres) => {
            postgres.migrate().await.expect("migrate");
            Some(postgres)
        }
        Err(e) => {
            msgio::testing::skip_or_fail("PostgreSQL", &url, &e);
            None
        }
    }
}

/// A client of the test's own, to look at what the transport wrote and to hold
/// transactions.
async fn raw() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(connection);
    client
}

fn queue_name() -> String {
    format!("msgio-test-{}", msgio::testing::unique_suffix())
}

async fn count(client: &tokio_postgres::Client, queue: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM msgio.messages WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap()
        .get(0)
}

async fn publish(postgres: &Postgres, queue: &str, body: &'static str) {
    postgres
        .topic(queue)
        .publish(&Context::background(), Message::new(body))
        .await
        .unwrap();
}

/// Waits (up to 30 s) until `queue` holds `want` rows.
async fn wait_rows(client: &tokio_postgres::Client, queue: &str, want: i64, what: &str) {
    for _ in 0..300 {
        if count(client, queue).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: {queue} holds {} rows, not {want}",
        count(client, queue).await
    );
}

async fn purge(queues: &[&str]) {
    let client = raw().await;
    for queue in queues {
        client
            .execute("DELETE FROM msgio.messages WHERE queue = $1", &[queue])
            .await
            .unwrap();
        client
            .execute("DELETE FROM msgio.archive WHERE queue = $1", &[queue])
            .await
            .unwrap();
    }
}

/// The transport under test, with short timings so that cases finish quickly.
struct Queue {
    postgres: Postgres,
}

impl Transport for Queue {
    type Destination = String;
    type Topic = PostgresTopic;
    type Server = PostgresServer;

    async fn destination(&self) -> Result<String, Error> {
        Ok(queue_name())
    }

    async fn topic(&self, queue: &String) -> Result<PostgresTopic, Error> {
        Ok(self.postgres.topic(queue))
    }

    async fn server(&self, queue: &String, config: ServerConfig) -> Result<PostgresServer, Error> {
        self.postgres
            .server(
                QueueOptions::new(queue).poll_interval(Duration::from_millis(100)),
                config,
            )
            .await
    }

    async fn unsettled(&self, queue: &String) -> Result<Option<u64>, Error> {
        Ok(Some(count(&raw().await, queue).await as u64))
    }

    async fn remove(&self, queue: String) -> Result<(), Error> {
        purge(&[&queue]).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_kit() {
    let Some(postgres) = connect().await else {
        return;
    };
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(Queue { postgres }, caps)
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_kit_opened_by_url() {
    if connect().await.is_none() {
        return;
    }
    let transport =
        msgio::testing::UrlTransport::new(format!("{}?queue={{name}}&poll_interval=100ms", url()))
            .remove_with(|url: String| async move {
                let queue = url.split("queue=").nth(1).unwrap_or_default();
                let queue = queue.split('&').next().unwrap_or_default().to_owned();
                purge(&[&queue]).await;
                Ok(())
            });
    let caps = Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups();
    msgio::testing::run(transport, caps).await.assert_passed();
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_the_schema_is_configurable() {
    let Some(postgres) = connect().await else {
        return;
    };
    postgres.migrate().await.unwrap();
    postgres.migrate().await.unwrap();
    let schema = format!("msgio_t{}", msgio::testing::unique_suffix().to_lowercase());
    let other = Postgres::connect_with(
        &url(),
        msgio::postgres::PostgresOptions::new().schema(&schema),
    )
    .await
    .unwrap();
    // Not migrated: the server says so, naming the call to make.
    let e = other
        .server(QueueOptions::new("q"), ServerConfig::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("migrate"), "{e}");
    // Concurrent migrations do not trip over each other.
    let (a, b) = tokio::join!(other.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
    other
        .topic("q")
        .publish(&Context::background(), Message::new("in its own schema"))
        .await
        .unwrap();
    let client = raw().await;
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".messages"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
    // A schema name that is not a plain identifier is refused before any SQL runs.
    let e = Postgres::connect_with(
        &url(),
        msgio::postgres::PostgresOptions::new().schema("x\"; DROP TABLE y; --"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_keep_their_order_and_repeated_values() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let mut message = Message::new(vec![0u8, 255, 1, 2]);
    message.attributes.add("x-b", "1");
    message.attributes.add("X-A", "two words");
    message.attributes.add("x-b", "3");
    postgres
        .topic(&queue)
        .publish(&Context::background(), message)
        .await
        .unwrap();
    let client = raw().await;
    let row = client
        .query_one(
            "SELECT attributes, body FROM msgio.messages WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap();
    let attributes: Vec<String> = row.get(0);
    let body: Vec<u8> = row.get(1);
    assert_eq!(attributes, ["X-B", "1", "X-B", "3", "X-A", "two words"]);
    assert_eq!(body, [0, 255, 1, 2]);
    // A NUL, which text cannot hold, is refused naming the key.
    let mut bad = Message::new("x");
    bad.attributes.set("X-Nul", "a\0b");
    let e = postgres
        .topic(&queue)
        .publish(&Context::background(), bad)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidAttribute { ref key, .. } if key == "X-Nul"),
        "{e}"
    );
    purge(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_messages_move_to_the_dead_letter_queue_with_the_reason() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let dead = format!("{queue}.dead");
    let topic = postgres.topic(&queue);
    let mut poison = Message::new("poison");
    poison.attributes.add("X-Kind", "a");
    poison.attributes.add("X-Kind", "b");
    topic.publish(&Context::background(), poison).await.unwrap();
    topic
        .publish(&Context::background(), Message::new("flaky"))
        .await
        .unwrap();
    // A row msgio did not write (an odd attributes array): dead-lettered, never received.
    let client = raw().await;
    client
        .execute(
            "INSERT INTO msgio.messages (queue, attributes, body) VALUES ($1, '{X-Lonely}', 'raw')",
            &[&queue],
        )
        .await
        .unwrap();
    let server = postgres
        .server(
            QueueOptions::new(&queue)
                .dead_letter_queue(&dead)
                .poll_interval(Duration::from_millis(50)),
            ServerConfig::new().max_attempts(2),
        )
        .await
        .unwrap();
    let received = Recorder::with(|r, _| {
        if r.body == "poison" {
            Err(Error::reject("not for us"))
        } else {
            Err(Error::other("still down"))
        }
    });
    let running = start(server, received.clone());
    wait_rows(&client, &dead, 3, "dead letters did not arrive").await;
    running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(count(&client, &queue).await, 0);
    assert_eq!(
        received.count(),
        3,
        "poison once, flaky twice, the raw row never"
    );
    let rows = client
        .query(
            "SELECT attributes, body, last_error FROM msgio.messages WHERE queue = $1 ORDER BY id",
            &[&dead],
        )
        .await
        .unwrap();
    let found: Vec<(Vec<String>, Vec<u8>, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let by_body = |body: &str| {
        found
            .iter()
            .find(|(_, b, _)| b == body.as_bytes())
            .unwrap_or_else(|| panic!("{body} not dead-lettered: {found:?}"))
    };
    let (attributes, _, reason) = by_body("poison");
    assert!(reason.contains("not for us"), "{reason}");
    assert_eq!(&attributes[..4], ["X-Kind", "a", "X-Kind", "b"]);
    assert!(
        attributes
            .windows(2)
            .any(|w| w[0] == keys::SOURCE && w[1] == queue)
    );
    let (attributes, _, reason) = by_body("flaky");
    assert_eq!(reason, "attempt 2 of 2 failed: still down");
    assert!(
        attributes
            .windows(2)
            .any(|w| w[0] == keys::ATTEMPTS && w[1] == "2")
    );
    let (_, _, reason) = by_body("raw");
    assert!(reason.contains("malformed"), "{reason}");
    purge(&[&queue, &dead]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_lease_is_not_run_twice() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    // A receiver that runs through two and a half leases. The lease is extended every
    // third of it, so a stall of this 2-core machine under a parallel build of up to two
    // thirds of a lease is survived; 600 ms once was not, under load.
    let options = QueueOptions::new(&queue)
        .lease(Duration::from_millis(1000))
        .poll_interval(Duration::from_millis(50));
    let topic = postgres.topic(&queue);
    for n in 0..4 {
        topic
            .publish(&Context::background(), Message::new(format!("slow {n}")))
            .await
            .unwrap();
    }
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut running = Vec::new();
    for _ in 0..2 {
        let server = postgres
            .server(options.clone(), ServerConfig::new().concurrency(2))
            .await
            .unwrap();
        let seen = runs.clone();
        running.push(start(
            server,
            ReceiverFunc::new(move |_: Context, mut msg: Message| {
                let seen = seen.clone();
                async move {
                    let body = msg.body.read_to_bytes(1024).await?;
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Ok(())
                }
            }),
        ));
    }
    let client = raw().await;
    wait_rows(&client, &queue, 0, "not acked").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in running {
        r.stop(Duration::from_secs(5)).await.unwrap();
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 4, "each message once: {runs:?}");
    purge(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_lease_runs_out_and_another_takes_the_message() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    publish(&postgres, &queue, "orphan").await;
    // A consumer that claimed it and died: leased to nobody alive, for 1 s.
    let client = raw().await;
    client
        .execute(
            "UPDATE msgio.messages SET lease_owner = 'dead', attempts = 1,
                 run_at = now() + interval '1 second' WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap();
    let server = postgres
        .server(
            QueueOptions::new(&queue).poll_interval(Duration::from_millis(100)),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let received = Recorder::new();
    let running = start(server, received.clone());
    let got = received.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].attempt, 2, "the dead consumer's attempt counts");
    running.stop(Duration::from_secs(5)).await.unwrap();
    purge(&[&queue]).await;
}

/// The outbox: 1,000 transactions, each committed or rolled back at random, each writing a
/// row of its own and publishing in the same transaction; the forwarder relays to an
/// in-memory queue. Every committed one is delivered, no rolled-back one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_committed_transactions_and_nothing_of_rolled_back_ones() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let table = format!(
        "outbox_trial_{}",
        msgio::testing::unique_suffix().to_lowercase()
    );
    let mut client = raw().await;
    client
        .batch_execute(&format!("CREATE TABLE {table} (n int PRIMARY KEY)"))
        .await
        .unwrap();
    let outbox = postgres.topic(&queue);
    let mut committed = BTreeSet::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for n in 0..1000i32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let tx = client.transaction().await.unwrap();
        tx.execute(&format!("INSERT INTO {table} (n) VALUES ($1)"), &[&n])
            .await
            .unwrap();
        outbox
            .publish_in(&tx, Message::new(format!("{n}")))
            .await
            .unwrap();
        if seed % 2 == 0 {
            tx.commit().await.unwrap();
            committed.insert(n.to_string());
        } else {
            tx.rollback().await.unwrap();
        }
    }
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, committed.len());

    let to = msgio::mem::MemQueue::new(2048).unwrap();
    let forwarder = postgres
        .forwarder(
            QueueOptions::new(&queue).poll_interval(Duration::from_millis(100)),
            to.topic(),
        )
        .await
        .unwrap();
    let relay = forwarder.clone();
    let relaying = tokio::spawn(async move { relay.run().await });
    let received = Recorder::new();
    let consuming = start(to.server(ServerConfig::new()).unwrap(), received.clone());
    let got = received.wait_for(committed.len(), WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    forwarder.shutdown(Duration::from_secs(5)).await.unwrap();
    relaying.await.unwrap().unwrap();
    consuming.stop(Duration::from_secs(5)).await.unwrap();
    let delivered: BTreeSet<String> = got
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert_eq!(received.count(), committed.len(), "duplicates or extras");
    assert_eq!(delivered, committed);
    assert_eq!(
        count(&client, &queue).await,
        0,
        "relayed rows leave the outbox"
    );
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    purge(&[&queue]).await;
}

/// Per-key order through the forwarder, with a target that fails now and then: each key's
/// messages arrive in the order they were committed, though keys interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_keeps_order_per_key_through_failures() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let outbox = postgres.topic(&queue);
    let keys = 10;
    let per_key = 30;
    let mut batch = Vec::new();
    for n in 0..per_key {
        for key in 0..keys {
            let mut message = Message::new(format!("{key}:{n}"));
            message.attributes.set(ORDERING_KEY, key.to_string());
            batch.push(message);
        }
    }
    outbox
        .publish_batch(&Context::background(), batch)
        .await
        .unwrap();

    let arrived = Arc::new(Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, c) = (arrived.clone(), calls.clone());
    let target = msgio::TopicFunc::new(move |ctx: &Context| {
        let (a, c) = (a.clone(), c.clone());
        Ok(msgio::transport::BufferedWriter::new(
            Collect {
                arrived: a,
                calls: c,
            },
            ctx,
        ))
    });
    let forwarder = postgres
        .forwarder(
            QueueOptions::new(&queue).poll_interval(Duration::from_millis(50)),
            target,
        )
        .await
        .unwrap();
    let relay = forwarder.clone();
    let relaying = tokio::spawn(async move { relay.run().await });
    let mut tries = 0;
    while arrived.lock().unwrap().len() < keys * per_key {
        tries += 1;
        assert!(
            tries < 600,
            "only {} arrived",
            arrived.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    forwarder.shutdown(Duration::from_secs(5)).await.unwrap();
    relaying.await.unwrap().unwrap();
    let arrived = arrived.lock().unwrap().clone();
    assert_eq!(arrived.len(), keys * per_key, "each once");
    for key in 0..keys {
        let mine: Vec<usize> = arrived
            .iter()
            .filter_map(|m| m.split_once(':'))
            .filter(|(k, _)| *k == key.to_string())
            .map(|(_, n)| n.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..per_key).collect::<Vec<_>>(), "key {key}");
    }
    purge(&[&queue]).await;
}

/// A target that refuses every seventh publish.
struct Collect {
    arrived: Arc<Mutex<Vec<String>>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl msgio::transport::Publish for Collect {
    type Future = std::future::Ready<Result<(), Error>>;

    fn publish(&self, _: &Context, message: msgio::transport::Outgoing) -> Self::Future {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n % 7 == 3 {
            return std::future::ready(Err(Error::other("target down for a moment")));
        }
        let body = String::from_utf8(message.body.to_vec()).unwrap();
        self.arrived.lock().unwrap().push(body);
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_wakes_on_notify_long_before_its_poll_interval() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let server = postgres
        .server(
            QueueOptions::new(&queue).poll_interval(Duration::from_secs(60)),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let received = Recorder::new();
    let running = start(server, received.clone());
    // Let the server settle into waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish(&postgres, &queue, "wake up").await;
    // Well under the 60 s poll: only the notification can have woken it.
    received.wait_for(1, Duration::from_secs(20)).await.unwrap();
    running.stop(Duration::from_secs(5)).await.unwrap();
    purge(&[&queue]).await;
}

/// Rows that commit behind the server's cursor (their ids were drawn before rows it already
/// claimed) are all delivered when they commit, even when they are more than one claim
/// takes: none is left for the sweep, an hour away here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_committed_behind_the_cursor_are_all_delivered_without_the_sweep() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let topic = postgres.topic(&queue);
    // A transaction draws the first five ids and stays open.
    let mut client = raw().await;
    let tx = client.transaction().await.unwrap();
    for n in 0..5 {
        topic
            .publish_in(&tx, Message::new(format!("behind {n}")))
            .await
            .unwrap();
    }
    // A server taking one message a claim moves its cursor past them.
    let server = postgres
        .server(
            QueueOptions::new(&queue).poll_interval(Duration::from_secs(3600)),
            ServerConfig::new().concurrency(1).prefetch(0),
        )
        .await
        .unwrap();
    let received = Recorder::new();
    let running = start(server, received.clone());
    publish(&postgres, &queue, "ahead 0").await;
    publish(&postgres, &queue, "ahead 1").await;
    received.wait_for(2, Duration::from_secs(20)).await.unwrap();
    tx.commit().await.unwrap();
    received.wait_for(7, Duration::from_secs(20)).await.unwrap();
    let mut bodies: Vec<String> = received
        .received()
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "ahead 0", "ahead 1", "behind 0", "behind 1", "behind 2", "behind 3", "behind 4"
        ]
    );
    running.stop(Duration::from_secs(5)).await.unwrap();
    purge(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_keeps_acked_rows_with_their_outcome() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    publish(&postgres, &queue, "keep me").await;
    let server = postgres
        .server(
            QueueOptions::new(&queue)
                .archive(true)
                .poll_interval(Duration::from_millis(50)),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let received = Recorder::new();
    let running = start(server, received.clone());
    received.wait_for(1, WAIT).await.unwrap();
    let client = raw().await;
    let mut tries = 0;
    loop {
        let rows = client
            .query(
                "SELECT body, outcome FROM msgio.archive WHERE queue = $1",
                &[&queue],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            assert_eq!(row.get::<_, Vec<u8>>(0), b"keep me");
            assert_eq!(row.get::<_, String>(1), "acked");
            break;
        }
        tries += 1;
        assert!(tries < 300, "not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(count(&client, &queue).await, 0);
    purge(&[&queue]).await;
}

#[tokio::test]
async fn urls_are_checked_and_never_show_the_password() {
    let e = msgio::open_topic("postgres://user:s3cret@127.0.0.1:5432/test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("queue="), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = msgio::open_topic("postgres://user:s3cret@127.0.0.1:5432/test?queue=q&nope=1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // Nothing answers on port 1: the connection error hides the password too.
    let e = Postgres::connect("postgres://user:s3cret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ConnectionLost(_)), "{e:?}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    if let Some(postgres) = connect().await {
        assert!(!format!("{postgres:?}").contains("s3cret"));
    }
}

// ---- Chaos: a consumer killed with SIGKILL, and a PostgreSQL stopped mid-stream. ----

/// Where the kill test's child consumer finds its queue.
const CHILD_QUEUE: &str = "MSGIO_POSTGRES_CHILD_QUEUE";

fn seq_message(seq: u64) -> Message {
    let mut msg = Message::new(format!("message {seq}"));
    msg.attributes.set("X-Kit-Seq", seq.to_string());
    msg
}

/// Not a test of its own: the consumer process the kill test starts (and kills). It
/// records each message it processed in `<queue>_done` before acking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_killed_consumers_messages_are_taken_back_and_none_is_lost"]
async fn child_consumer() {
    let Ok(queue) = std::env::var(CHILD_QUEUE) else {
        return;
    };
    let postgres = Postgres::connect(&url()).await.unwrap();
    let server = postgres
        .server(
            QueueOptions::new(&queue).lease(Duration::from_secs(1)),
            ServerConfig::new().concurrency(8),
        )
        .await
        .unwrap();
    let client = Arc::new(raw().await);
    let done = done_table(&queue);
    let receiver = ReceiverFunc::new(move |_: Context, msg: Message| {
        let (client, done) = (client.clone(), done.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seq: i64 = msg.attributes.get("X-Kit-Seq").unwrap().parse().unwrap();
            client
                .execute(
                    &format!("INSERT INTO {done} (seq) VALUES ($1) ON CONFLICT DO NOTHING"),
                    &[&seq],
                )
                .await
                .map_err(Error::other)?;
            Ok(())
        }
    });
    server.serve(receiver).await.unwrap();
}

/// What the child processed.
async fn processed(client: &tokio_postgres::Client, done: &str) -> BTreeSet<u64> {
    let rows = client
        .query(&format!("SELECT seq FROM {done}"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect()
}

fn done_table(queue: &str) -> String {
    format!("\"{queue}_done\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_messages_are_taken_back_and_none_is_lost() {
    const N: u64 = 300;
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let done = done_table(&queue);
    let client = raw().await;
    client
        .batch_execute(&format!("CREATE TABLE {done} (seq bigint PRIMARY KEY)"))
        .await
        .unwrap();
    let topic = postgres.topic(&queue);
    let messages = (0..N).map(seq_message).collect();
    topic
        .publish_batch(&Context::background(), messages)
        .await
        .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_consumer", "--nocapture"])
        .env(CHILD_QUEUE, &queue)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while it holds messages: some processed, some leased to it.
    let deadline = std::time::Instant::now() + WAIT;
    while processed(&client, &done).await.len() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child is too slow"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let leased: i64 = client
        .query_one(
            "SELECT count(*) FROM msgio.messages WHERE queue = $1 AND lease_owner IS NOT NULL",
            &[&queue],
        )
        .await
        .unwrap()
        .get(0);
    assert!(leased > 0, "the child held nothing when killed");

    let recorder = Recorder::new();
    let server = postgres
        .server(
            QueueOptions::new(&queue).poll_interval(Duration::from_millis(100)),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    let running = start(server, recorder.clone());
    let by_child = processed(&client, &done).await;
    recorder
        .wait_for_the_rest(&by_child, N as usize, WAIT)
        .await
        .unwrap();
    // What the child held but had processed is in `by_child` too: wait until the queue is
    // empty, which only taking back the child's leases achieves.
    wait_rows(&client, &queue, 0, "the child's leases were not taken back").await;
    running.stop(Duration::from_secs(5)).await.unwrap();
    let taken_back = recorder.received().iter().filter(|r| r.attempt > 1).count();
    assert!(
        taken_back > 0,
        "nothing was taken back from the killed consumer"
    );
    client
        .batch_execute(&format!("DROP TABLE {done}"))
        .await
        .unwrap();
    purge(&[&queue]).await;
}

/// A PostgreSQL cluster of the test's own: `initdb` in a temporary directory, `pg_ctl`
/// on a free loopback port, restarted with `pg_ctl stop -m immediate` (as a crash: only
/// what was committed survives). Run as the `postgres` user when the test runs as root,
/// which PostgreSQL refuses to run as.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> std::io::Result<PrivatePostgres> {
        let initdb = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain(
                std::fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|d| d.path().join("bin")),
            )
            .map(|dir| dir.join("initdb"))
            .find(|p| p.exists())
            .ok_or_else(|| std::io::Error::other("initdb not found"))?;
        let bin = std::fs::canonicalize(initdb)?
            .parent()
            .expect("a directory")
            .to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "msgio-pg-{port}-{}",
            msgio::testing::unique_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        let cluster = PrivatePostgres { bin, dir, port };
        if is_root() {
            let status = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.dir)
                .status()?;
            if !status.success() {
                return Err(std::io::Error::other("chown postgres failed"));
            }
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<()> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        let out = command.args(args).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    fn pg_ctl_start(&self) -> std::io::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }

    /// Stops it as a crash would (`-m immediate`), then starts it again.
    fn restart(&self) -> std::io::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )?;
        self.pg_ctl_start()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_kits_broker_restart_case() {
    let private = match PrivatePostgres::start() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            msgio::testing::skip_or_fail("a private PostgreSQL (initdb, pg_ctl)", "initdb", &e);
            return;
        }
    };
    let postgres = Postgres::connect(&private.url()).await.unwrap();
    postgres.migrate().await.unwrap();
    let restarting = private.clone();
    let caps = Capabilities::new().restart(move || {
        let private = restarting.clone();
        async move {
            tokio::task::spawn_blocking(move || private.restart())
                .await
                .map_err(Error::other)?
                .map_err(Error::other)
        }
    });
    msgio::testing::run_matching(Queue { postgres }, caps, |name| name == "broker_restart")
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_inserts_and_a_bad_message_fails_alone() {
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let topic = postgres.topic(&queue);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut message = Message::new(format!("{n}"));
            if n == 77 {
                message.attributes.set("X-Bad", "nul\0here");
            }
            topic.publish(&Context::background(), message).await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if n == 77 {
            assert!(
                matches!(result, Err(Error::InvalidAttribute { .. })),
                "{result:?}"
            );
        } else {
            result.unwrap();
        }
    }
    let client = raw().await;
    assert_eq!(count(&client, &queue).await, 199);
    // Rows of one transaction share its id (`xmin`): fewer transactions than messages.
    let transactions: i64 = client
        .query_one(
            "SELECT count(DISTINCT xmin::text) FROM msgio.messages WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        transactions < 199,
        "{transactions} inserts for 199 messages"
    );
    purge(&[&queue]).await;
}

/// A transaction held open elsewhere (the xmin horizon stuck, so no dead row can be
/// cleaned up) slows a queue down but never stalls it: every message is consumed while
/// the transaction is still open. (Its cost in throughput is measured by
/// `MSGIO_BENCH_ONLY=long_tx cargo bench --bench postgres`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_elsewhere_does_not_stall_the_queue() {
    const N: usize = 2000;
    let Some(postgres) = connect().await else {
        return;
    };
    let queue = queue_name();
    let mut holder = raw().await;
    let tx = holder
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.query_one("SELECT count(*) FROM msgio.messages", &[])
        .await
        .unwrap();
    let topic = postgres.topic(&queue);
    for chunk in 0..(N / 200) {
        let batch = (chunk * 200..(chunk + 1) * 200)
            .map(|seq| seq_message(seq as u64))
            .collect();
        topic
            .publish_batch(&Context::background(), batch)
            .await
            .unwrap();
    }
    let received = Recorder::new();
    let server = postgres
        .server(
            QueueOptions::new(&queue).poll_interval(Duration::from_millis(100)),
            ServerConfig::new().concurrency(32),
        )
        .await
        .unwrap();
    let running = start(server, received.clone());
    received.wait_for(N, Duration::from_secs(60)).await.unwrap();
    let client = raw().await;
    wait_rows(&client, &queue, 0, "not every message was acked").await;
    // Still open: what was consumed was consumed under it.
    tx.query_one("SELECT 1", &[]).await.unwrap();
    tx.commit().await.unwrap();
    running.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(received.count(), N);
    purge(&[&queue]).await;
}

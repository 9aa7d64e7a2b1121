//! No secret from a broker URL reaches `Debug`, `Display`, an error or a log line — msgio's
//! or a client library's, at TRACE — on any transport: passwords holding `/`, `?`, `#`
//! and `@` (percent-encoded, and not), and a NATS token.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use msgio::testing::Recorder;
use msgio::{Context, Message, ServerConfig, Topic};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber, field};

/// The password every case uses: each character a URL gives a meaning to.
const PASSWORD: &str = "pa/ss?w#rd@1";
/// `PASSWORD` percent-encoded for a URL.
const ENCODED: &str = "pa%2Fss%3Fw%23rd%401";
const TOKEN: &str = "t0ken-s3cr3t";

/// Every line `tracing` was asked to record, at every level, from every crate.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Text<'a>(&'a mut String);

impl field::Visit for Text<'_> {
    fn record_debug(&mut self, field: &field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut text = self.0.lock().unwrap();
        text.push_str(&format!("\nspan {}", span.metadata().target()));
        span.record(&mut Text(&mut text));
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        values.record(&mut Text(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = self.0.lock().unwrap();
        text.push_str(&format!(
            "\n{} {}",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut Text(&mut text));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.clone())
            .expect("the only subscriber of this test binary");
        capture
    })
}

/// Fails when any form of a secret shows in `text`.
#[track_caller]
fn assert_hidden(what: &str, text: &str) {
    for secret in [PASSWORD, ENCODED, "pa/ss", "w#rd", "pa%2F", TOKEN] {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// Checks everything logged so far.
#[track_caller]
fn assert_logs_hidden() {
    let text = capture().0.lock().unwrap().clone();
    assert!(
        !text.is_empty(),
        "nothing was captured: is the subscriber on?"
    );
    assert_hidden("a log line", &text);
}

fn with_password(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit('@').next().unwrap();
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_shows_the_password() {
    capture();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // Refused: an ACL user that does not exist.
    let refused = msgio::redis::Redis::connect(&with_password(&url, "msgio-nobody", ENCODED))
        .await
        .unwrap_err();
    assert_hidden("the error", &refused.to_string());
    assert_hidden("the error's Debug", &format!("{refused:?}"));
    // Not percent-encoded: refused as a URL, without the password.
    let unencoded = msgio::redis::Redis::connect(&with_password(&url, "u", PASSWORD))
        .await
        .unwrap_err();
    assert!(
        unencoded.to_string().contains("percent-encode"),
        "{unencoded}"
    );
    assert_hidden("the error", &unencoded.to_string());
    // Accepted: an ACL user of the test's own, with that password.
    let user = format!("msgio_test_{}", msgio::testing::unique_suffix());
    let mut admin = match redis::Client::open(url.as_str()) {
        Ok(client) => match client.get_multiplexed_async_connection().await {
            Ok(admin) => admin,
            Err(e) => {
                msgio::testing::skip_or_fail("Redis", &url, &e);
                return;
            }
        },
        Err(e) => panic!("{e}"),
    };
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{PASSWORD}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    let redis = msgio::redis::Redis::connect(&with_password(&url, &user, ENCODED))
        .await
        .unwrap();
    assert_hidden("Debug", &format!("{redis:?}"));
    assert_hidden("url()", redis.url());
    let stream = format!("msgio_test_{}", msgio::testing::unique_suffix());
    let topic = redis.topic(&stream);
    topic
        .publish(&Context::background(), Message::new("x"))
        .await
        .unwrap();
    let server = redis
        .server(
            msgio::redis::StreamOptions::new(&stream, "g"),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    assert_hidden("the server's Debug", &format!("{server:?}"));
    let recorder = Recorder::new();
    let running = msgio::testing::start(server, recorder.clone());
    recorder.wait_for(1, Duration::from_secs(30)).await.unwrap();
    running.stop(Duration::from_secs(10)).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_logs_hidden();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_never_shows_the_password_or_the_token() {
    capture();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let refused = msgio::nats::Nats::connect(&with_password("nats://127.0.0.1:1", "u", ENCODED))
        .await
        .unwrap_err();
    assert_hidden("the error", &refused.to_string());
    let refused = msgio::nats::Nats::connect(&format!("nats://{TOKEN}@127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_hidden("the error", &refused.to_string());
    assert_hidden("the error's Debug", &format!("{refused:?}"));
    let unencoded = msgio::nats::Nats::connect(&with_password(&url, "u", PASSWORD))
        .await
        .unwrap_err();
    assert_hidden("the error", &unencoded.to_string());
    // This machine's server has no authorization, so it takes any credentials: the
    // client, and the server's pull connection, send them.
    for url in [
        with_password(&url, "u", ENCODED),
        format!("nats://{TOKEN}@{}", url.rsplit("://").next().unwrap()),
    ] {
        let nats = match msgio::nats::Nats::connect(&url).await {
            Ok(nats) => nats,
            Err(e) => {
                msgio::testing::skip_or_fail("NATS", &url, &e);
                return;
            }
        };
        assert_hidden("Debug", &format!("{nats:?}"));
        assert_hidden("url()", nats.url());
        let stream = format!("msgio_test_{}", msgio::testing::unique_suffix());
        let options = msgio::nats::ConsumerOptions::new(&stream, "d");
        let server = nats.server(options, ServerConfig::new()).await.unwrap();
        assert_hidden("the server's Debug", &format!("{server:?}"));
        nats.topic(format!("{stream}.t"))
            .publish(&Context::background(), Message::new("x"))
            .await
            .unwrap();
        let recorder = Recorder::new();
        let running = msgio::testing::start(server, recorder.clone());
        recorder.wait_for(1, Duration::from_secs(30)).await.unwrap();
        running.stop(Duration::from_secs(10)).await.unwrap();
        nats.delete_stream(&stream).await.unwrap();
    }
    assert_logs_hidden();
}

/// A RabbitMQ user with [`PASSWORD`], made with `rabbitmqctl` and deleted when dropped.
struct RabbitUser(String);

impl RabbitUser {
    fn add() -> RabbitUser {
        let name = format!("msgio_test_{}", msgio::testing::unique_suffix());
        let run = |args: &[&str]| {
            let status = std::process::Command::new("rabbitmqctl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("rabbitmqctl, to add a user");
            assert!(status.success(), "rabbitmqctl {args:?} failed");
        };
        run(&["add_user", &name, PASSWORD]);
        run(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        RabbitUser(name)
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_never_shows_the_password() {
    capture();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let host_and_vhost = url.rsplit('@').next().unwrap().to_owned();
    // Refused: a wrong password.
    let refused = msgio::amqp::Amqp::connect(&format!("amqp://guest:{ENCODED}@{host_and_vhost}"))
        .await
        .unwrap_err();
    assert_hidden("the error", &refused.to_string());
    assert_hidden("the error's Debug", &format!("{refused:?}"));
    let unencoded =
        msgio::amqp::Amqp::connect(&format!("amqp://guest:{PASSWORD}@{host_and_vhost}"))
            .await
            .unwrap_err();
    assert_hidden("the error", &unencoded.to_string());
    if let Err(e) = msgio::amqp::Amqp::connect(&url).await {
        msgio::testing::skip_or_fail("RabbitMQ", &url, &e);
        return;
    }
    // Accepted: a user whose password holds every character a URL gives a meaning to.
    let user = RabbitUser::add();
    let amqp = msgio::amqp::Amqp::connect(&format!("amqp://{}:{ENCODED}@{host_and_vhost}", user.0))
        .await
        .unwrap();
    assert_hidden("Debug", &format!("{amqp:?}"));
    assert_hidden("url()", amqp.url());
    let queue = format!("msgio_test_{}", msgio::testing::unique_suffix());
    let server = amqp
        .server(
            msgio::amqp::QueueOptions::new(&queue).durable(false),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    assert_hidden("the server's Debug", &format!("{server:?}"));
    amqp.queue_topic(&queue)
        .unwrap()
        .publish(&Context::background(), Message::new("x"))
        .await
        .unwrap();
    let recorder = Recorder::new();
    let running = msgio::testing::start(server, recorder.clone());
    recorder.wait_for(1, Duration::from_secs(30)).await.unwrap();
    running.stop(Duration::from_secs(10)).await.unwrap();
    amqp.delete_queue(&queue).await.unwrap();
    assert_logs_hidden();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_never_shows_the_password() {
    capture();
    let url = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (scheme, rest) = url.split_once("://").unwrap();
    let host_and_db = rest.rsplit('@').next().unwrap();
    let user = rest.rsplit_once('@').map_or("postgres", |(userinfo, _)| {
        userinfo.split(':').next().unwrap()
    });
    // Refused: nothing listens on port 1.
    let refused = msgio::postgres::Postgres::connect(&format!(
        "postgres://{user}:{ENCODED}@127.0.0.1:1/test"
    ))
    .await
    .unwrap_err();
    assert_hidden("the error", &refused.to_string());
    assert_hidden("the error's Debug", &format!("{refused:?}"));
    // Not percent-encoded: refused as a URL, without the password.
    let unencoded =
        msgio::postgres::Postgres::connect(&format!("{scheme}://{user}:{PASSWORD}@{host_and_db}"))
            .await
            .unwrap_err();
    assert!(
        unencoded.to_string().contains("percent-encode"),
        "{unencoded}"
    );
    assert_hidden("the error", &unencoded.to_string());
    // In key-value form: the password's value is hidden too.
    let kv = msgio::postgres::Postgres::connect(&format!(
        "host=127.0.0.1 port=1 user={user} password={TOKEN} dbname=test"
    ))
    .await
    .unwrap_err();
    assert_hidden("the error", &kv.to_string());
    // Accepted (this machine's PostgreSQL trusts loopback, so any password does).
    let with = format!("{scheme}://{user}:{ENCODED}@{host_and_db}");
    let postgres = match msgio::postgres::Postgres::connect(&with).await {
        Ok(postgres) => postgres,
        Err(e) => {
            msgio::testing::skip_or_fail("PostgreSQL", &url, &e);
            return;
        }
    };
    postgres.migrate().await.unwrap();
    assert_hidden("Debug", &format!("{postgres:?}"));
    assert_hidden("url()", postgres.url());
    let queue = format!("msgio_test_{}", msgio::testing::unique_suffix());
    let topic = postgres.topic(&queue);
    assert_hidden("the topic's Debug", &format!("{topic:?}"));
    topic
        .publish(&Context::background(), Message::new("x"))
        .await
        .unwrap();
    let server = postgres
        .server(
            msgio::postgres::QueueOptions::new(&queue),
            ServerConfig::new(),
        )
        .await
        .unwrap();
    assert_hidden("the server's Debug", &format!("{server:?}"));
    let recorder = Recorder::new();
    let running = msgio::testing::start(server, recorder.clone());
    recorder.wait_for(1, Duration::from_secs(30)).await.unwrap();
    running.stop(Duration::from_secs(10)).await.unwrap();
    let by_url = msgio::open_topic(&format!("{with}?queue={queue}"))
        .await
        .unwrap();
    assert_hidden("a URL-opened topic's Debug", &format!("{by_url:?}"));
    // tokio-postgres logs through `log`, not `tracing`, and msgio has nothing to say on
    // this path: check whatever was captured.
    assert_hidden("a log line", &capture().0.lock().unwrap());
}
